"""Multi-GPU loading: the load kwargs that spread one model over exactly the GPUs of its placement. Pure.

The scheduler places an item on k GPUs (`placement.placement_devices`: inventory indices, home first).
The code that runs it starts with the visibility variables set to those devices in that order
(`placement.cuda_env`), so inside it the placed GPUs are CUDA devices 0..k-1 and nothing else is
visible. Loading with `device_map="auto"` and a `max_memory` that names exactly those local indices
(and no "cpu"/"disk" entry) then lets accelerate spread the layers over the placed GPUs only, with
per-device budgets taken from the memory plan. Transformers turns "auto" into accelerate's balanced
map (`get_balanced_memory` + `infer_auto_device_map`), so every placed GPU gets layers.

The same kwargs go to both loaders:

- InvarLock's evaluate: as the `model:` block of the preset YAML (InvarLock 0.12.1 merges it into
  both run configs and hands every key but id/adapter/device to `from_pretrained`; its own
  `device_map="auto"` default applies only to model paths with a size or MoE hint, and user kwargs
  win, see `invarlock/adapters/hf_loading.py`);
- lm-eval: the benchmark subprocess loads the model with them and gives the object to `HFLM`,
  which then scores it where it lies (`hflm_kwargs`).

A single-GPU (or CPU) item gets no kwargs: the model loads whole and moves to the one device, as
before. Torch-free: imported by the worker, tested on the controller's side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.memory import MarginRule

MIN_DEVICE_BUDGET_GB = 1.0
MIN_RESERVE_GB = 2.0  # activations, KV cache and CUDA context per device, at least


@dataclass(frozen=True)
class DevicePlan:
    """Where one item's model goes: placed GPUs (inventory indices, home first) and each one's weight budget."""

    devices: tuple[int, ...]
    max_memory_gb: tuple[float, ...]

    @property
    def multi_gpu(self) -> bool:
        return len(self.devices) > 1


def device_plan(
    devices: Sequence[int], gpus: Sequence[Gpu], *, need_gb: float, weights_gb: float, margin: MarginRule | None = None
) -> DevicePlan:
    """Each placed GPU's budget for weights: what the plan may use there, less its share of the rest.

    `need_gb`/`weights_gb` are the item's memory plan (weights + KV + overhead, and weights alone).
    A device's usable memory follows the scheduler's own rule (`MarginRule.usable_gb`, which takes
    the inventory's free figure when it is below the total); the non-weight part of the plan is
    split evenly over the devices (at least `MIN_RESERVE_GB` each) and kept out of the budget.
    """
    if not devices:
        raise ValueError("a device plan needs at least one placed GPU")
    margin = margin or MarginRule()
    by_index = {gpu.index: gpu for gpu in gpus}
    missing = [d for d in devices if d not in by_index]
    if missing:
        raise ValueError(f"placed GPU(s) {missing} are not in the node's inventory {sorted(by_index)}")
    reserve = max(MIN_RESERVE_GB, (need_gb - weights_gb) / len(devices))
    budgets = []
    for index in devices:
        gpu = by_index[index]
        usable = margin.usable_gb(gpu.total_gb, gpu.free_gb)
        budgets.append(max(MIN_DEVICE_BUDGET_GB, math.floor((usable - reserve) * 10) / 10))
    return DevicePlan(tuple(devices), tuple(budgets))


def load_kwargs(plan: DevicePlan | None) -> dict[str, Any]:
    """`from_pretrained` kwargs for the process that sees exactly `plan.devices` (as CUDA 0..k-1).

    Empty for one device or none: the model loads whole and is moved to the device.
    """
    if plan is None or not plan.multi_gpu:
        return {}
    return {
        "device_map": "auto",
        "max_memory": {local: f"{gb:.1f}GiB" for local, gb in enumerate(plan.max_memory_gb)},
    }


def invarlock_model_block(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The preset YAML's `model:` block carrying `kwargs` to InvarLock's loader (YAML keeps int keys)."""
    return {key: (dict(value) if isinstance(value, Mapping) else value) for key, value in kwargs.items()}


def hflm_kwargs(model: Any, tokenizer: Any, batch_size: int | str) -> dict[str, Any]:
    """What `lm_eval.models.huggingface.HFLM` gets: the loaded object, scored where it lies.

    No `device` and no `parallelize`: with a model object HFLM takes `model.device` (the first
    placed GPU of a device-mapped model) and never moves it, and accelerate's hooks carry each
    layer's inputs to its GPU.
    """
    return {"pretrained": model, "tokenizer": tokenizer, "batch_size": batch_size}


def layers_per_device(device_map: Mapping[str, Any]) -> dict[Any, int]:
    """Decoder layers per device in an accelerate device map (module names ending in `layers.<n>`)."""
    counts: dict[Any, int] = {}
    for module, device in device_map.items():
        parts = module.split(".")
        if len(parts) >= 2 and parts[-2] == "layers" and parts[-1].isdigit():
            counts[device] = counts.get(device, 0) + 1
    return counts
