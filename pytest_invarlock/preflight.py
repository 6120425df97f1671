"""Before any work starts (controller or single process): sweep killed builders' leftovers, check the disk.

`campaign_disk_plan` gathers what the pure disk plan (`scheduling.disk_plan`) needs from this node:
per model the size of one copy of its weights (the stored baseline's profile, else the suite's declared
size), how many selected items need an edited copy, how many GPUs one such item takes, and the weights
still to download into the Hugging Face cache (what its snapshot lacks); the results' size (the mean of
the certificates already stored, at least RESULT_ALLOWANCE, per item without a record); the free space
of each filesystem. `--gpu-plan` prints the plan and the preflight refuses, with a usage error (exit 4)
naming every line that does not fit, a run whose peak plus headroom exceeds a filesystem's free space.
`--no-disk-preflight` skips the check. Torch-free: runs on the controller.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.failures import spec_of
from pytest_invarlock.campaign.items import SuiteItem, item_from_nodeid
from pytest_invarlock.campaign.suite.definitions import Model
from pytest_invarlock.records import record_path
from pytest_invarlock.scheduling.disk_plan import DiskPlan, ModelDisk, Volume, plan_disk
from pytest_invarlock.scheduling.memory import GIB, MarginRule, required_gpus
from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import CHECKSUMS, existing_ancestor

RESULT_ALLOWANCE = 2 * 2**20


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


def weights_bytes(state: ConfigState, model: Model) -> int:
    """Bytes of one copy of the model's weights: its stored profile, else its declared size."""
    for directory, meta in _artifacts(state.run_dir / "store", "baselines"):
        if meta.get("model") == model.name:
            try:
                profile = json.loads((directory / "model_profile.json").read_text(encoding="utf-8"))
                return int(profile["weights_bytes_on_disk"])
            except (OSError, ValueError, KeyError, TypeError):
                break
    return int(model_profile(model).weights_gb * GIB)


def hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def missing_download_bytes(model: Model, declared: int, cache: Path) -> int:
    """What a hub model's snapshot in the local cache still lacks (0 for builtins and local directories)."""
    if not model.is_hub:
        return 0
    repo = cache / ("models--" + model.source.replace("/", "--"))
    revision = model.revision
    if revision is None:
        try:
            revision = (repo / "refs" / "main").read_text(encoding="utf-8").strip()
        except OSError:
            return declared
    snapshot = repo / "snapshots" / revision
    present = [p for p in snapshot.glob("*.safetensors") if p.exists()]
    indexes = list(snapshot.glob("*.safetensors.index.json"))
    complete = bool(present)
    for index in indexes:
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            named = {"?"}
        complete = complete and all((snapshot / name).exists() for name in named)
    if complete:
        return 0
    return max(0, declared - sum(p.stat().st_size for p in present))


def _volume(path: Path) -> Volume:
    where = existing_ancestor(path)
    usage = shutil.disk_usage(where)
    return Volume(str(path), os.stat(where).st_dev, usage.free, usage.total)


def campaign_disk_plan(state: ConfigState, items: Sequence[SuiteItem], *, workers: int) -> DiskPlan:
    """The disk plan of `items` on this node (the same function for --gpu-plan and the preflight)."""
    run_volume = _volume(state.run_dir)
    cache = hub_cache()
    cache_volume = _volume(cache)
    budgets = [MarginRule().usable_gb(g.total_gb, g.free_gb) for g in state.gpus]
    largest = max(budgets, default=0.0)
    models: list[ModelDisk] = []
    for model in {item.model.name: item.model for item in items}.values():
        mine = [item for item in items if item.model.name == model.name]
        editing = [item for item in mine if spec_of(item) is not None]
        size = weights_bytes(state, model)
        download = missing_download_bytes(model, int(model_profile(model).weights_gb * GIB), cache)
        models.append(
            ModelDisk(
                model.name,
                size,
                len(editing),
                max((required_gpus(item_need_gb(i), largest) for i in editing), default=1) if largest > 0 else 1,
                download,
                cache_volume.device if download else None,
            )
        )
    store = state.run_dir / "store"
    results = [p for p in (store / "results").glob("r-*") if p.is_dir()][:20]
    per_result = max(RESULT_ALLOWANCE, sum(map(_tree_bytes, results)) // len(results)) if results else RESULT_ALLOWANCE
    new_items = [item for item in items if not record_path(state.run_dir, item).is_file()]
    limits = state.options.limits
    return plan_disk(
        models,
        run_volume=run_volume,
        volumes={cache_volume.device: cache_volume},
        results_bytes=per_result * len(new_items),
        gpus=len(state.gpus),
        workers=workers,
        edit_budget=None if limits.edit_budget_gb is None else int(limits.edit_budget_gb * GIB),
        headroom=None if limits.disk_headroom_gb is None else int(limits.disk_headroom_gb * GIB),
    )


def runnable(state: ConfigState, nodeids: Iterable[str]) -> dict[str, SuiteItem]:
    """nodeid -> suite item, for the suite items among `nodeids` that will run here (not skipped)."""
    found = {nodeid: item_from_nodeid(nodeid, state.index) for nodeid in nodeids}
    return {nodeid: item for nodeid, item in found.items() if item is not None and state.skip_reason(item) is None}


class StorePreflight:
    """Registered on the controller (or the single process) of a validation session."""

    def __init__(self, config: pytest.Config, state: ConfigState, *, workers: int = 1) -> None:
        self.config, self.state, self.workers = config, state, workers
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
        items = list(runnable(self.state, nodeids).values())
        if not items:
            return
        plan = campaign_disk_plan(self.state, items, workers=self.workers)
        if plan.shortfalls():
            raise pytest.UsageError(
                "not enough disk space for this run:\n  "
                + "\n  ".join(plan.shortfalls())
                + "\nFree space, point --run-dir (or HF_HUB_CACHE) at a larger volume, select fewer items (-k), "
                "or lower --invarlock-edit-budget / --invarlock-disk-headroom; --no-disk-preflight starts anyway."
            )
