"""How a worker runs one item on real hardware: placement, device map, OOM and transient retries, memory.

`pipeline.Worker` decides *what* an item computes; this module decides *how* it survives the GPU:

- the item's placement (`placement_devices`) becomes a `DevicePlan` and the load kwargs that spread
  a multi-GPU model over exactly those GPUs (`scheduling.device_map`);
- an evaluate that dies of CUDA OOM is retried after the memory is released, with jittered
  exponential backoff (the GPU cluster notes' `OOM gets fewer retries`: 2; InvarLock 0.12.1 evaluates one window
  per batch, so there is no smaller batch to try); lm-eval is retried with half the batch. When that
  is exhausted, a worker under the GPU scheduler gives the item back for a larger placement once
  (`hand_back`: it leaves a note in the failure memory and ends its process; the scheduler re-queues
  the item on more GPUs and xdist starts a replacement worker); otherwise the item errors with the
  numbers and the record carries `oom_exhausted`;
- a transient error (network, hub 5xx, filesystem hiccup; `campaign.failures.classify`) reruns the
  item after a capped, jittered exponential backoff (`transient_wait_s`), reusing what is finished;
- the record of an item that ends in error still carries what happened (`oom_retries`,
  `transient_retries`, `timed_out`, the memory figures, the seconds spent in shared work).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.failures import TRANSIENT_RETRIES, backoff_s
from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.failure_memory import FailureMemory
from pytest_invarlock.records import base_record
from pytest_invarlock.scheduling.device_map import DevicePlan, device_plan
from pytest_invarlock.worker.resources import is_oom, memory_snapshot, release_memory, smaller_batch

log = logging.getLogger("pytest_invarlock")
GIB = 2**30
OOM_RETRIES = 2  # evaluate: retries after the first OOM (the GPU cluster notes give OOM fewer retries than other failures)
BATCH_RETRIES = 4  # lm-eval: halvings of the batch after an OOM
BACKOFF_BASE_S = 5.0
EXIT_HANDED_BACK = 71  # a worker that gave its item back for a larger placement


class ItemError(RuntimeError):
    """The item could not be run (OOM after retries, time limit); `record` says what happened."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


class OomExhausted(ItemError):
    """Out of memory after every retry on this placement: a larger one may still hold the item."""


@dataclass
class ItemStats:
    """What an item's run cost in retries and memory: merged into its record, also on error."""

    placement: list[int] | None = None
    device_plan_gb: list[float] | None = None
    oom_retries: int = 0
    oom_failures: list[str] = field(default_factory=list)
    lm_eval_batch: str | None = None
    device_map_devices: list[str] | None = None
    transient_retries: int = 0
    shared_s: dict[str, float] = field(default_factory=dict)  # seconds of shared work per kind, not charged to the item
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"oom_retries": self.oom_retries, "transient_retries": self.transient_retries}
        if self.shared_s:
            out["shared_seconds"] = {kind: round(seconds, 2) for kind, seconds in sorted(self.shared_s.items())}
        if self.placement is not None:
            out["placement"] = self.placement
        if self.device_plan_gb is not None:
            out["max_memory_gb"] = self.device_plan_gb
        if self.lm_eval_batch is not None:
            out["lm_eval_batch_used"] = self.lm_eval_batch
        if self.device_map_devices is not None:
            out["device_map_devices"] = self.device_map_devices
        return {**out, **self.extra}


def item_device_plan(state: Any, item: SuiteItem) -> DevicePlan | None:
    """The item's placement as a device plan with per-GPU budgets; None without a placement."""
    from pytest_invarlock.scheduling.placement import placement_devices
    from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile

    devices = placement_devices(state.run_dir, state.session, item)
    if not devices or not state.gpus:
        return None
    return device_plan(devices, state.gpus, need_gb=item_need_gb(item), weights_gb=model_profile(item.model).weights_gb)


def cache_budget_bytes(state: Any, default: int) -> int:
    """This worker's model-cache budget: its share of the node-wide host-RAM budget, which the controller
    computes once for all workers (`state.host_cache_bytes`, already per worker), else `default`."""
    share = getattr(state, "host_cache_bytes", None)
    return max(1, int(share)) if share else default


def memory_fields(cache: Any) -> dict[str, Any]:
    """What the worker keeps after an item: models in its host cache and CUDA memory still reserved."""
    return {
        "host_cache_bytes_used": cache.used_bytes(),
        "host_cache_models": len(cache),
        "host_cache_budget_bytes": cache.max_bytes,
        **memory_snapshot(),
    }


def _oom_numbers(stats: ItemStats, item: SuiteItem) -> str:
    from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile

    where = f"GPU(s) {stats.placement}" if stats.placement else "its device"
    text = f"on {where}; plan {item_need_gb(item):.1f} GB (weights {model_profile(item.model).weights_gb:.1f} GB)"
    if stats.device_plan_gb:
        text += f", max_memory {stats.device_plan_gb} GB per GPU"
    snapshot = memory_snapshot()
    if snapshot:
        text += (
            f"; after release the device has {snapshot['cuda_free_bytes'] / GIB:.1f} of "
            f"{snapshot['cuda_total_bytes'] / GIB:.1f} GiB free"
        )
    return text


def evaluate_with_oom_retries(
    evaluate: Callable[[Path], Any],
    tmp: Path,
    log_name: str,
    item: SuiteItem | None,
    stats: ItemStats,
    *,
    retries: int = OOM_RETRIES,
    backoff_base_s: float | None = None,
) -> Any:
    """Run `evaluate(tmp)`; on a CUDA OOM (torch's error in its log, or InvarLock's report of one)
    release memory, wait, and run it again, `retries` times at most."""
    for attempt in range(retries + 1):
        release_memory()
        verdict = evaluate(tmp)
        if not verdict.crashed or not _verdict_is_oom(verdict, tmp / log_name):
            return verdict
        stats.oom_failures.append(verdict.failure or "")
        if attempt == retries:
            message = (
                f"CUDA out of memory in invarlock evaluate after {stats.oom_retries} retries "
                f"{_oom_numbers(stats, item) if item is not None else ''}; last error: {(verdict.failure or '')[-300:]}"
            )
            stats.extra["oom_exhausted"] = True
            raise OomExhausted(message, {})
        stats.oom_retries += 1
        del verdict
        release_memory()
        time.sleep(backoff_s(attempt + 1, base_s=BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s))
    raise AssertionError("unreachable")


def _verdict_is_oom(verdict: Any, log_file: Path) -> bool:
    if is_oom(verdict.failure):
        return True
    try:
        return is_oom(log_file.read_text(encoding="utf-8", errors="replace")[-20000:])
    except OSError:
        return False


def benchmark_with_oom_retries(
    score: Callable[[int | str], Any],
    batch: int | str,
    item: SuiteItem,
    stats: ItemStats,
    *,
    retries: int = BATCH_RETRIES,
    backoff_base_s: float | None = None,
) -> Any:
    """Run `score(batch)`; on a CUDA OOM release memory and retry with a smaller batch (the GPU cluster notes' rule)."""
    tried = [str(batch)]
    while True:
        failure = None
        try:
            result = score(batch)
            stats.lm_eval_batch = str(batch)
            return result
        except Exception as error:  # noqa: BLE001 - only OOM is retried; anything else goes up unchanged
            if not is_oom(error):
                raise
            failure = f"{type(error).__name__}: {error}"
        release_memory()  # the traceback that held the batch's tensors is gone now
        stats.oom_failures.append(failure)
        smaller = smaller_batch(batch)
        if smaller is None or stats.oom_retries >= retries:
            stats.extra["oom_exhausted"] = True
            raise OomExhausted(
                f"CUDA out of memory in lm-eval {item.benchmark} after {stats.oom_retries} retries "
                f"(batch {' -> '.join(tried)}) {_oom_numbers(stats, item)}; last error: {failure[-300:]}",
                {},
            )
        stats.oom_retries += 1
        batch = smaller
        tried.append(str(batch))
        time.sleep(backoff_s(stats.oom_retries, base_s=BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s))


def error_record(
    item: SuiteItem, message: str, stats: ItemStats, extra: dict[str, Any], environment: dict[str, Any]
) -> dict[str, Any]:
    """The record of an item that ends in error: what it is, why, what it cost, and what produced it
    (`provenance.environment`)."""
    return {**base_record(item), "met": False, "error": message, **stats.fields(), **extra, "environment": environment}


def transient_wait_s(attempt: int, stats: ItemStats, *, retries: int = TRANSIENT_RETRIES) -> float | None:
    """The wait before rerunning an item after its `attempt`-th transient error; None once retries are spent."""
    if attempt > retries:
        return None
    stats.transient_retries = attempt
    return backoff_s(attempt, base_s=BACKOFF_BASE_S)


def no_larger_placement(state: Any, item: SuiteItem, stats: ItemStats, memory: FailureMemory, *, scheduled: bool) -> str | None:
    """Why the GPU scheduler cannot give this item more GPUs than it has, or None when it can."""
    placed = len(stats.placement or ()) or 1
    if not scheduled or "PYTEST_XDIST_WORKER" not in os.environ:
        return "only the GPU scheduler (pytest -n, no --dist) places items on more GPUs"
    if len(state.gpus) <= placed:
        return f"it already had all {len(state.gpus)} GPU(s) of this node"
    if memory.handed_back(item.param_id):
        return "it was given a larger placement once already"
    return None


def hand_back(memory: FailureMemory, item: SuiteItem, stats: ItemStats, reason: str) -> None:
    """Give the item back for a larger placement: leave the note, end this worker (xdist replaces it)."""
    memory.hand_back(item.param_id, {"reason": "oom", "placement": stats.placement or [], "message": reason[-500:]})
    message = (
        f"item {item.param_id} ran out of GPU memory on GPU(s) {stats.placement or '(home)'} after every retry: "
        "giving it back to the scheduler for a larger placement (this worker ends; xdist starts a replacement)"
    )
    log.error(message)
    print(f"invarlock: {message}", file=sys.__stderr__, flush=True)
    logging.shutdown()
    os._exit(EXIT_HANDED_BACK)
