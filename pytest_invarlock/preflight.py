"""Before any work starts (controller or single process): sweep killed builders' leftovers, check the disk.

The disk preflight estimates what the selected items will add to the run directory and stops the
session with a usage error (exit 4) naming the numbers when its filesystem has less free space:

- edited weights: one copy per distinct (model, edit spec) that the selected items need and the store
  does not hold yet, each the size of the model's weights (the baseline's `model_profile.json` when it
  exists, else parameters x dtype bytes from the suite);
- certificates and scores: per item without an earlier record, the mean size of the results already
  stored (InvarLock's reports and run logs), at least RESULT_ALLOWANCE;
- a margin of 5% plus MARGIN_BYTES.

It cannot know every key the workers will compute (they digest InvarLock's version and settings), so
it reads what the store's `artifact.json` files say they hold. `--no-disk-preflight` skips it.
A disk that fills anyway fails only the items that could not write (StoreError, ENOSPC named).
Torch-free: runs on the controller.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.items import Item, item_from_nodeid
from pytest_invarlock.campaign.kinds import Kind
from pytest_invarlock.records import record_path
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import CHECKSUMS, human_bytes

RESULT_ALLOWANCE = 2 * 2**20
MARGIN_BYTES = 64 * 2**20
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--no-disk-preflight",
        dest="invarlock_no_disk_preflight",
        action="store_true",
        help="start even when the run directory's filesystem looks too small for the selected items (the preflight estimate is skipped)",
    )


def _artifacts(store: Path, kind: str) -> Iterable[tuple[Path, dict[str, Any]]]:
    for directory in sorted((store / kind).glob("?-*")):
        if not (directory / CHECKSUMS).is_file():
            continue
        try:
            yield directory, json.loads((directory / "artifact.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def weights_bytes(state: ConfigState, model: Any) -> int:
    """Bytes of one copy of the model's weights: its stored profile, else parameters x dtype size."""
    for directory, meta in _artifacts(state.run_dir / "store", "baselines"):
        if meta.get("model") == model.name:
            try:
                profile = json.loads((directory / "model_profile.json").read_text(encoding="utf-8"))
                return int(profile["weights_bytes_on_disk"])
            except (OSError, ValueError, KeyError, TypeError):
                break
    return int(model.params_b * 1e9 * DTYPE_BYTES.get(model.dtype, 2))


def disk_need(state: ConfigState, items: list[Item]) -> tuple[int, str]:
    """(bytes the selected items will add, how that was counted)."""
    from pytest_invarlock.edits.catalogue import parse_spec

    store = state.run_dir / "store"
    stored = {(meta.get("model"), meta.get("spec")) for _, meta in _artifacts(store, "edits")}
    needed: dict[tuple[str, str], int] = {}
    for item in items:
        if item.scenario is None or item.variant == "baseline" or item.kind == Kind.CALIBRATION:
            continue
        spec = str(parse_spec(item.scenario.spec))
        if (item.model.name, spec) not in stored:
            needed[(item.model.name, spec)] = weights_bytes(state, item.model)
    results = [p for p in (store / "results").glob("r-*") if p.is_dir()][:20]
    per_result = max(RESULT_ALLOWANCE, sum(map(_tree_bytes, results)) // len(results)) if results else RESULT_ALLOWANCE
    new_items = [item for item in items if not record_path(state.run_dir, item).is_file()]
    edits = sum(needed.values())
    reports = per_result * len(new_items)
    total = int((edits + reports) * 1.05) + MARGIN_BYTES
    how = (
        f"{len(needed)} edited model(s) not yet stored, {human_bytes(edits)} of weights"
        + (f" ({human_bytes(max(needed.values()))} each)" if needed else "")
        + f"; {len(new_items)} item(s) without results x {human_bytes(per_result)} of reports; "
        f"+5% and {human_bytes(MARGIN_BYTES)} margin"
    )
    return total, how


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


class StorePreflight:
    """Registered on the controller (or the single process) of a validation session."""

    def __init__(self, config: pytest.Config, state: ConfigState) -> None:
        self.config, self.state = config, state
        self.checked = False

    @pytest.hookimpl
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        removed = self.state.store.sweep()
        if removed:
            self.state.warnings.append(
                f"removed {len(removed)} unfinished artifact build(s) left by an interrupted or "
                f"killed run: {', '.join(p.name for p in removed[:3])}" + (" ..." if len(removed) > 3 else "")
            )

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.check([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self.check(ids)

    def check(self, nodeids: list[str]) -> None:
        if self.checked or self.config.getoption("invarlock_no_disk_preflight", False) or self.config.getoption("collectonly"):
            return
        self.checked = True
        items = [item for item in (item_from_nodeid(n, self.state.index) for n in nodeids) if item is not None]
        if not items:
            return
        need, how = disk_need(self.state, items)
        where = _existing(self.state.run_dir)
        free = shutil.disk_usage(where).free
        if need > free:
            raise pytest.UsageError(
                f"not enough disk space for this run: it needs about {human_bytes(need)} in {self.state.run_dir} "
                f"({how}) and that filesystem ({where}) has {human_bytes(free)} free. Free space, point --run-dir at "
                "a larger volume, or select fewer items (-k); --no-disk-preflight starts anyway."
            )
