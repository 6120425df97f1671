"""The model of time: how long an item holds its GPUs. Pure; shared by the shard split, a campaign node's
policy (`timed_tasks`) and perf/simulate.py.

Seconds per GB of weights per kind (create + certify for edits), benchmarks in proportion to their
size (mmlu's 14042 questions: 2.8 s per GB of weights). These are the simulator's figures, scaled from
the B200 bash harness's logs; only their ratios matter to a split, and they never depend on the machine, so
every node of a sharded campaign computes the same costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from pytest_invarlock.campaign.items import Kind, SuiteItem
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.policy import Task
from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile
from pytest_invarlock.verdict.phase0 import benchmark_size

SECONDS_PER_GB = {Kind.CALIBRATION: 2.0, Kind.CLEAN: 2.6, Kind.STRESS: 2.6, Kind.ERROR: 2.4}
BENCHMARK_SECONDS_PER_GB_PER_ITEM = 2.0 / 10_000
REFERENCE_GPU_GB = 80.0  # the GPU size a split assumes when it is given none


def item_seconds(item: SuiteItem) -> float:
    """Estimated run time of an item, without the model load and without noise."""
    if item.kind == Kind.BENCHMARK:
        per_gb = BENCHMARK_SECONDS_PER_GB_PER_ITEM * benchmark_size(item.benchmark or "")
    else:
        per_gb = SECONDS_PER_GB[item.kind]
    return per_gb * model_profile(item.model).weights_gb


def item_width(item: SuiteItem, gpu_gb: float, margin: MarginRule = MarginRule()) -> int:
    """GPUs the item holds on a node of `gpu_gb` GPUs (their total size: free memory moves, totals do not)."""
    return required_gpus(item_need_gb(item), margin.usable_gb(gpu_gb))


def item_cost(item: SuiteItem, gpu_gb: float = REFERENCE_GPU_GB) -> float:
    """GPU-seconds: run time x GPUs held."""
    return item_seconds(item) * item_width(item, gpu_gb)


def load_seconds(weights_gb: float) -> float:
    """A worker switching to a model first loads it: 10 s + 0.5 s per GB."""
    return 10.0 + weights_gb / 2.0


def timed_tasks(tasks: Sequence[Task], items: Sequence[SuiteItem]) -> list[Task]:
    """The tasks of `items` (in the same order) with their estimated run and load times, for a campaign's node."""
    return [
        replace(task, seconds=item_seconds(item), load_seconds=load_seconds(model_profile(item.model).weights_gb))
        for task, item in zip(tasks, items, strict=True)
    ]
