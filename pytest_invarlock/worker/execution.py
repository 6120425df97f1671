"""How a worker runs one item on real hardware: placement, device map, OOM retries, time limit, memory.

`pipeline.Worker` decides *what* an item computes; this module decides *how* it survives the GPU:

- the item's placement (`placement_devices`) becomes a `DevicePlan` and the load kwargs that spread
  a multi-GPU model over exactly those GPUs (`scheduling.device_map`);
- an evaluate that dies of CUDA OOM is retried after the memory is released, with exponential
  backoff (the seed's `OOM gets fewer retries`: 2); lm-eval is retried with half the batch;
  the last failure is an item error that gives the numbers. A larger placement is the scheduler's
  to give: a worker cannot claim GPUs it was not placed on, so the error says so and the record
  carries `oom_exhausted`;
- every item runs under its suite time limit (`resources.deadline`), and the record of an item that
  ends in error still carries what happened (`oom_retries`, `timed_out`, the memory figures).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.items import Item
from pytest_invarlock.records import base_record
from pytest_invarlock.scheduling.device_map import DevicePlan, device_plan
from pytest_invarlock.worker.resources import backoff_s, is_oom, memory_snapshot, release_memory, smaller_batch

GIB = 2**30
OOM_RETRIES = 2  # evaluate: retries after the first OOM (the seed gives OOM fewer retries than other failures)
BATCH_RETRIES = 4  # lm-eval: halvings of the batch after an OOM
BACKOFF_BASE_S = 5.0


class ItemError(RuntimeError):
    """The item could not be run (OOM after retries, time limit); `record` says what happened."""

    def __init__(self, message: str, record: dict[str, Any]) -> None:
        super().__init__(message)
        self.record = record


@dataclass
class ItemStats:
    """What an item's run cost in retries and memory: merged into its record, also on error."""

    placement: list[int] | None = None
    device_plan_gb: list[float] | None = None
    oom_retries: int = 0
    oom_failures: list[str] = field(default_factory=list)
    lm_eval_batch: str | None = None
    device_map_devices: list[str] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def fields(self) -> dict[str, Any]:
        out: dict[str, Any] = {"oom_retries": self.oom_retries}
        if self.placement is not None:
            out["placement"] = self.placement
        if self.device_plan_gb is not None:
            out["max_memory_gb"] = self.device_plan_gb
        if self.lm_eval_batch is not None:
            out["lm_eval_batch_used"] = self.lm_eval_batch
        if self.device_map_devices is not None:
            out["device_map_devices"] = self.device_map_devices
        return {**out, **self.extra}


def item_device_plan(state: Any, item: Item) -> DevicePlan | None:
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


def _oom_numbers(stats: ItemStats, item: Item) -> str:
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
    item: Item | None,
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
                f"{_oom_numbers(stats, item) if item is not None else ''}. A larger placement is the "
                f"scheduler's to give (this worker cannot claim more GPUs); last error: {(verdict.failure or '')[-300:]}"
            )
            stats.extra["oom_exhausted"] = True
            raise ItemError(message, {})
        stats.oom_retries += 1
        del verdict
        release_memory()
        time.sleep(backoff_s(attempt + 1, BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s))
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
    item: Item,
    stats: ItemStats,
    *,
    retries: int = BATCH_RETRIES,
    backoff_base_s: float | None = None,
) -> Any:
    """Run `score(batch)`; on a CUDA OOM release memory and retry with a smaller batch (the seed's rule)."""
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
            raise ItemError(
                f"CUDA out of memory in lm-eval {item.benchmark} after {stats.oom_retries} retries "
                f"(batch {' -> '.join(tried)}) {_oom_numbers(stats, item)}; last error: {failure[-300:]}",
                {},
            )
        stats.oom_retries += 1
        batch = smaller
        tried.append(str(batch))
        time.sleep(backoff_s(stats.oom_retries, BACKOFF_BASE_S if backoff_base_s is None else backoff_base_s))


def error_record(
    item: Item, message: str, stats: ItemStats, extra: dict[str, Any], environment: dict[str, Any]
) -> dict[str, Any]:
    """The record of an item that ends in error: what it is, why, what it cost, and what produced it
    (`provenance.environment`)."""
    return {**base_record(item), "met": False, "error": message, **stats.fields(), **extra, "environment": environment}
