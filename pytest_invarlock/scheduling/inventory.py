"""GPU inventory for the controller: probed through NVML, or simulated with --gpus. No torch, no CUDA.

The controller must not initialise a CUDA context (that would pin memory on every device and
fix the device order for the whole process), so it asks NVML, which only reads driver state.
`index` is NVML's index, which follows PCI bus order: a worker that pins its device with
CUDA_VISIBLE_DEVICES=<index> must also set CUDA_DEVICE_ORDER=PCI_BUS_ID.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from types import ModuleType
from typing import Sequence

from pytest_invarlock.scheduling.memory import GIB

_TERM = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)$")
_SPEC_HELP = "Write COUNTxGB (e.g. 8x180), a comma-separated list of sizes in GB (e.g. 80,80,24), or a mix (2x80,24)."


@dataclass(frozen=True)
class Gpu:
    index: int
    total_gb: float
    free_gb: float
    processes: int
    name: str


def parse_gpu_spec(spec: str) -> list[Gpu]:
    """Simulated GPUs for --gpus: '8x180' is eight idle 180 GB devices, '80,80,24' three devices."""
    gpus: list[Gpu] = []
    for term in spec.split(","):
        match = _TERM.match(term.strip().lower())
        if not match:
            raise ValueError(f"--gpus {spec!r}: cannot read {term.strip()!r} as a GPU count and size. {_SPEC_HELP}")
        count, size = int(match.group(1) or 1), float(match.group(2))
        if count < 1 or size <= 0:
            raise ValueError(f"--gpus {spec!r}: {term.strip()!r} asks for {count} GPU(s) of {size:g} GB; both must be positive. {_SPEC_HELP}")
        gpus += [Gpu(len(gpus) + i, size, size, 0, "simulated") for i in range(count)]
    return gpus


def visible_indices(cuda_visible_devices: str | None, uuids: Sequence[str]) -> list[int]:
    """NVML indices a CUDA_VISIBLE_DEVICES value exposes, given each device's UUID in NVML order.

    Follows CUDA: unset means all; entries are indices or (unique prefixes of) UUIDs; the list
    stops at the first entry that names no device, so '' or '-1' hides every GPU.
    """
    if cuda_visible_devices is None:
        return list(range(len(uuids)))
    visible: list[int] = []
    for entry in (e.strip() for e in cuda_visible_devices.split(",")):
        if entry.isdigit():
            index = int(entry) if int(entry) < len(uuids) else None
        else:
            matches = [i for i, uuid in enumerate(uuids) if entry and uuid.startswith(entry)]
            index = matches[0] if len(matches) == 1 else None
        if index is None or index in visible:
            break
        visible.append(index)
    return visible


def probe_gpus() -> list[Gpu]:
    """The visible GPUs as NVML reports them; [] where there is no NVML (no driver, no nvidia-ml-py)."""
    try:
        import pynvml  # nvidia-ml-py; imported here so a CPU-only controller never needs it
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        gpus = []
        for index in visible_indices(os.environ.get("CUDA_VISIBLE_DEVICES"), uuids):
            handle = handles[index]
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(Gpu(
                index=index,
                total_gb=memory.total / GIB,
                free_gb=memory.free / GIB,
                processes=_process_count(pynvml, handle),
                name=_text(pynvml.nvmlDeviceGetName(handle)),
            ))
        return gpus
    finally:
        pynvml.nvmlShutdown()


def _process_count(pynvml: ModuleType, handle: object) -> int:
    """Compute processes on a device; some virtualised GPUs do not report them (counted as 0)."""
    try:
        return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except pynvml.NVMLError:
        return 0


def _text(value: str | bytes) -> str:
    """Older NVML bindings return bytes."""
    return value.decode() if isinstance(value, bytes) else value
