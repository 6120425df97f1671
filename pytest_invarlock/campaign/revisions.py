"""Pinned hub revisions: which commit of each hub model a campaign evaluated.

The evidence-pack harness writes `state/model_revisions.json` when it runs online and refuses
offline runs without it. Same here, torch-free (the controller resolves revisions before any worker
starts, so every worker and every record agree):

- a model's `revision:` in the suite (or `suites/models.yaml`) is a pin and always wins;
- an online session resolves every other hub model's current commit
  (`huggingface_hub.HfApi().model_info(repo).sha`) and records it in `<run-dir>/state/model_revisions.json`;
- any session reads that file (or `--revisions FILE`) and applies the commits it lists;
- an offline session refuses a hub model that is still unpinned (see `state.ConfigState.skip_reason`),
  and says how to get a pin.

The file maps hub ids to 40-hex commits: `{"revisions": {"gpt2": "607a...", ...}, "resolved_at": ...}`.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.suite.definitions import Suite

REVISIONS_FILE = Path("state") / "model_revisions.json"
_COMMIT = re.compile(r"^[0-9a-f]{40}$")

HOW_TO_PIN = (
    "run once with --online (it writes <run-dir>/state/model_revisions.json), pass --revisions FILE with a "
    "file from an online run, or add `revision: <40-hex commit>` to the model in the suite"
)


def read_revisions(path: Path) -> dict[str, str]:
    """Hub id -> commit from a revisions file; {} when the file does not exist."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SuiteError(
            f"revisions file '{path}' cannot be read ({exc}). Delete it and run with --online, "
            "or point --revisions at a valid file."
        ) from None
    revisions = data.get("revisions") if isinstance(data, dict) else None
    if not isinstance(revisions, dict):
        raise SuiteError(
            f'revisions file \'{path}\' has no `revisions` mapping. Expected {{"revisions": {{"org/name": "<40-hex commit>"}}}}.'
        )
    bad = sorted(repo for repo, sha in revisions.items() if not (isinstance(sha, str) and _COMMIT.match(sha)))
    if bad:
        raise SuiteError(
            f"revisions file '{path}': {', '.join(bad)} not pinned to a 40-hex commit. "
            "Fix the entries, or delete the file and run with --online."
        )
    return {str(repo): str(sha) for repo, sha in revisions.items()}


def write_revisions(path: Path, revisions: Mapping[str, str]) -> None:
    """Merge `revisions` into the file (atomically); existing entries for other models are kept."""
    from pytest_invarlock.store import write_json_atomic

    merged = {**read_revisions(path), **revisions}
    write_json_atomic(
        path, {"revisions": dict(sorted(merged.items())), "resolved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    )


def hub_commit(repo_id: str) -> str:
    """The hub's current commit of a model repository (network)."""
    from huggingface_hub import HfApi

    sha = HfApi().model_info(repo_id).sha
    if not sha or not _COMMIT.match(sha):
        raise SuiteError(f"the hub returned no commit for '{repo_id}' ({sha!r}). Check the model id.")
    return str(sha)


def unpinned_hub_sources(suite: Suite) -> list[str]:
    return sorted({m.source for m in suite.models if m.is_hub and not m.has_pinned_revision})


def resolve_revisions(
    suite: Suite,
    path: Path,
    *,
    online: bool,
    resolver: Callable[[str], str] = hub_commit,
) -> tuple[Suite, dict[str, str]]:
    """The suite with every hub model pinned where a commit is known, and the commits newly resolved.

    Known: the suite's own pin, then the revisions file. Online, the rest are resolved with
    `resolver` and written to the file. Offline, they stay unpinned (and are refused later).
    """
    known = read_revisions(path)
    missing = [source for source in unpinned_hub_sources(suite) if source not in known]
    resolved: dict[str, str] = {}
    if online and missing:
        for source in missing:
            resolved[source] = resolver(source)
        write_revisions(path, resolved)
    pins = {**known, **resolved}
    return apply_revisions(suite, pins), resolved


def apply_revisions(suite: Suite, revisions: Mapping[str, str]) -> Suite:
    models = tuple(
        replace(m, revision=revisions[m.source]) if m.is_hub and not m.has_pinned_revision and m.source in revisions else m
        for m in suite.models
    )
    return replace(suite, models=models)


def revisions_of(models: Iterable[Any]) -> dict[str, str | None]:
    """Model name -> the revision it runs at (None for local and builtin models): for reports and packs."""
    return {m.name: m.revision for m in models}
