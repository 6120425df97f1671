"""Edited models on disk: kept while pending items need them, within the edit budget, rebuilt on demand.

Edits are deterministic, so an edited (or error-injected) model is a cache, not a result: the store
can evict its weights (keeping its seal and metadata) and rebuild them from the recipe, checking the
rebuilt files against the sealed sha256 (`store.Store.evict`, `RebuildMismatch`).

- The controller (or the single process) writes `state/edits/<session>.json` once the items are
  collected: the edit budget in bytes (`--invarlock-edit-budget`, else the disk plan's edits in
  flight) and, per edit (model and spec), the items of this session that still need it. As items end
  it rewrites the file and, when an edit's last item ended, evicts edits over the budget.
- A worker calls `make_room` before it builds an edit: edits on disk plus the new one must fit the
  budget; the eviction order is `scheduling.disk_plan.eviction_order` (no longer needed first, then
  least recently used), and edits that a running item holds in use are never touched.

Torch-free: the controller uses it too.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from pytest_invarlock.scheduling.disk_plan import OnDisk, eviction_order
from pytest_invarlock.store import Store, human_bytes, write_json_atomic

log = logging.getLogger("pytest_invarlock")
EDITS = "edits"
NEEDS_DIR = Path("state") / "edits"


def is_weights(rel: str) -> bool:
    """The files eviction removes: the weights. Config, tokenizer, metadata and the seal stay."""
    return rel.endswith((".safetensors", ".bin"))


def edit_id(model: str, spec: str) -> str:
    """How the controller and the workers name one edited model (its store key digests more than this)."""
    return f"{model}|{spec}"


@dataclass
class Needs:
    """This session's edit budget (None: keep every edit) and the items still needing each edit."""

    budget: int | None
    pending: dict[str, set[str]] = field(default_factory=dict)

    def needed(self) -> set[str]:
        return {name for name, items in self.pending.items() if items}


def needs_path(run_dir: Path, session: str) -> Path:
    return Path(run_dir) / NEEDS_DIR / f"{session}.json"


def write_needs(run_dir: Path, session: str, needs: Needs) -> None:
    write_json_atomic(
        needs_path(run_dir, session),
        {"budget_bytes": needs.budget, "pending": {k: sorted(v) for k, v in sorted(needs.pending.items()) if v}},
    )


def read_needs(run_dir: Path, session: str) -> Needs | None:
    try:
        data = json.loads(needs_path(run_dir, session).read_text(encoding="utf-8"))
        budget = data.get("budget_bytes")
        return Needs(None if budget is None else int(budget), {k: set(v) for k, v in data.get("pending", {}).items()})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def on_disk_bytes(store: Store) -> int:
    return sum(held.nbytes for held in store.held(EDITS, is_weights))


def make_room(store: Store, needs: Needs | None, *, incoming: int, reason: str, budget: int | None = None) -> list[Path]:
    """Evict edits until those on disk plus `incoming` bytes fit the budget; return what was evicted.

    `budget` replaces the session's (low disk space asks for more room); without either (no needs file:
    a session that planned none) nothing is evicted.
    """
    limit = budget if budget is not None else (needs.budget if needs is not None else None)
    if limit is None:
        return []
    held = store.held(EDITS, is_weights)
    total = sum(h.nbytes for h in held) + incoming
    if total <= limit:
        return []
    needed = needs.needed() if needs is not None else set()
    by_name = {str(h.path): h for h in held}
    candidates = [
        OnDisk(str(h.path), h.nbytes, h.last_used, edit_id(str(h.meta.get("model")), str(h.meta.get("spec"))) in needed)
        for h in held
    ]
    evicted = []
    for candidate in eviction_order(candidates):
        if total <= limit:
            break
        freed = store.evict(by_name[candidate.name].path, is_weights, reason)
        if freed:
            total -= freed
            evicted.append(by_name[candidate.name].path)
    if total > limit:
        log.info(
            "edits on disk stay %s over the %s budget: the rest are in use by running items",
            human_bytes(total - limit),
            human_bytes(max(0, limit)),
        )
    return evicted
