"""Where items run: each worker's home GPU, and the devices the controller gave each item.

The controller writes an item's devices to `<run-dir>/state/placement/` before sending it; the
worker reads them back (`placement_devices`) and exposes them to the code that runs the item
(`cuda_env`). Torch-free.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.scheduling.inventory import ROCM, Gpu
from pytest_invarlock.store import write_json_atomic

PLACEMENT_DIR = Path("state") / "placement"


def cuda_env(devices: Sequence[int], gpus: Sequence[Gpu]) -> dict[str, str]:
    """Environment that shows a process exactly `devices` (inventory indices), in that order, as its devices 0..k-1.

    NVIDIA: CUDA_VISIBLE_DEVICES names NVML indices (with CUDA_DEVICE_ORDER=PCI_BUS_ID, NVML's order)
    or a MIG slice's MIG-<uuid>. AMD (torch's HIP backend, which also calls its devices "cuda"):
    ROCR_VISIBLE_DEVICES names ROCr's numbers and HIP_/CUDA_VISIBLE_DEVICES count 0..k-1 within
    them, so a value the process inherited (Slurm's) cannot hide them again.
    """
    by_index = {gpu.index: gpu for gpu in gpus}
    missing = [d for d in devices if d not in by_index]
    if missing:
        raise ValueError(f"device(s) {missing} are not in the node's inventory {sorted(by_index)}")
    chosen = [by_index[d] for d in devices]
    ids = ",".join(gpu.binding for gpu in chosen)
    if chosen and all(gpu.platform == ROCM for gpu in chosen):
        local = ",".join(str(i) for i in range(len(chosen)))
        return {"ROCR_VISIBLE_DEVICES": ids, "HIP_VISIBLE_DEVICES": local, "CUDA_VISIBLE_DEVICES": local}
    return {"CUDA_VISIBLE_DEVICES": ids, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


class GpuHomes:
    """Each worker's home device: the least shared one, and after a crash the one the lost worker freed."""

    def __init__(self, devices: Sequence[int]) -> None:
        self._devices = list(devices)
        self._home: dict[str, int] = {}
        self._freed: int | None = None

    def assign(self, worker: str) -> int:
        load = Counter(self._home.values())
        device = min(self._devices, key=lambda d: (load[d], d != self._freed, d))
        self._home[worker] = device
        return device

    def home(self, worker: str) -> int:
        return self._home[worker]

    def release(self, worker: str) -> None:
        self._freed = self._home.pop(worker, None)


def placement_path(run_dir: Path, item: SuiteItem) -> Path:
    return run_dir / PLACEMENT_DIR / f"{item.test}.{item.param_id}.json"


def write_placement(run_dir: Path, session: str, item: SuiteItem, worker: str, devices: Sequence[int]) -> None:
    write_json_atomic(placement_path(run_dir, item), {"session": session, "worker": worker, "devices": list(devices)})


def placement_devices(run_dir: Path, session: str, item: SuiteItem) -> list[int] | None:
    """The GPUs (inventory indices, home first) this session's scheduler gave the item; None when it placed none.

    A multi-GPU item runs in its worker's process, which sees only its home GPU: start the code that
    needs the others with `cuda_env(placement_devices(...), state.gpus)`.
    """
    try:
        placement = json.loads(placement_path(run_dir, item).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return list(placement["devices"]) if placement.get("session") == session else None
