"""Suite items as policy tasks: memory need, dependencies, and which items no GPU set can hold.

Pure and torch-free: the controller plans from the model's files once they are here, from the suite's
declared sizes before that.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from pytest_invarlock.campaign.items import AFTER_CALIBRATION, BASELINE, Kind, SuiteItem
from pytest_invarlock.campaign.model_files import ModelFilesError, read_model_files, weights_directory
from pytest_invarlock.campaign.suite.definitions import Model
from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.memory import ModelProfile, item_memory_gb
from pytest_invarlock.scheduling.policy import Policy, Task

EVAL_BASELINE = "eval_baseline"  # the policy's kind for an lm-eval benchmark of the baseline (B200 priority 80)
FREE_MODEL, FREE_KIND = "", "setup"  # plain tests and items workers skip: no model, no memory, first
CPU_DEVICE_GB = 1e6  # a CPU worker's stand-in device: deps and affinity still apply, memory never binds


def task_id(item: SuiteItem) -> str:
    return f"{item.test}[{item.param_id}]"


def model_profile(model: Model) -> ModelProfile:
    """The torch-free profile: from the model's files once they are on this machine (a local directory always,
    a hub model once its weights are in the local cache at its revision), else the suite's declared size."""
    directory = None if model.is_builtin else weights_directory(model.source, model.revision, local=not model.is_hub)
    if directory is not None:
        try:
            return ModelProfile.from_files(read_model_files(directory), model.dtype)
        except ModelFilesError:  # unreadable files: the worker's load says what is wrong; plan as declared
            pass
    return ModelProfile.from_declared(model.params_b, model.dtype, is_moe=model.size_class == "moe", **model.architecture)


def item_need_gb(item: SuiteItem) -> float:
    settings = item.model.settings
    return item_memory_gb(model_profile(item.model), item.kind, seq_len=settings.seq_len, batch=settings.eval_batch)


def tasks_from_items(items: Sequence[SuiteItem], ids: Sequence[str] | None = None) -> list[Task]:
    """One task per item (ids default to test[param_id]); edits and errors wait for their model's calibrations."""
    ids = [task_id(item) for item in items] if ids is None else list(ids)
    calibrations: dict[str, set[str]] = defaultdict(set)
    for tid, item in zip(ids, items):
        if item.kind == Kind.CALIBRATION:
            calibrations[item.model.name].add(tid)
    tasks = []
    for tid, item in zip(ids, items):
        deps = frozenset(calibrations[item.model.name]) if item.kind in AFTER_CALIBRATION else frozenset()
        kind = EVAL_BASELINE if item.kind == Kind.BENCHMARK and item.variant == BASELINE else str(item.kind)
        group = f"{item.model.name}|{item.variant}"  # the items of one edited model run together where priority allows
        tasks.append(Task(tid, item.model.name, kind, item_need_gb(item), model_profile(item.model).weights_gb, deps, group))
    return tasks


def unplaceable_items(items: Sequence[SuiteItem], gpus: Sequence[Gpu]) -> dict[str, str]:
    """Task id -> why no set of these GPUs can hold the item (the policy's own rule); empty without GPUs."""
    if not gpus:
        return {}
    return Policy(tasks_from_items(items), gpus).unplaceable


def scheduling_devices(gpus: Sequence[Gpu], workers: int) -> list[Gpu]:
    """The devices the policy places on: the GPUs, or on a CPU run one unbounded stand-in per worker."""
    if gpus:
        return list(gpus)
    return [Gpu(i, CPU_DEVICE_GB, CPU_DEVICE_GB, 0, "cpu") for i in range(max(1, workers))]
