"""NVIDIA devices through NVML: whole GPUs, and the MIG slices of GPUs in MIG mode, each with its own memory.

A GPU in MIG mode runs nothing itself: CUDA sees its slices (MIG devices), one per process at most,
named by `MIG-<uuid>`. Slurm on MIG nodes exports CUDA_VISIBLE_DEVICES=MIG-<uuid>, so the slices
are inventoried one by one (`nvmlDeviceGetMigDeviceHandleByIndex`) with their own memory, UUID and
processes, and a worker is bound by its slice's UUID. Read-only: no CUDA context is created.
"""

from __future__ import annotations

import os
from types import ModuleType
from typing import Any, NamedTuple

from pytest_invarlock.scheduling.inventory import CUDA, Gpu, Unit, visible_devices
from pytest_invarlock.scheduling.memory import GIB


def probe_nvidia() -> list[Gpu]:
    """The devices CUDA_VISIBLE_DEVICES shows, as NVML reports them; [] without NVML (no driver, no nvidia-ml-py)."""
    try:
        import pynvml  # nvidia-ml-py; imported here so a CPU-only controller never needs it
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return []
    try:
        devices = _devices(pynvml)
        visible = visible_devices(os.environ.get("CUDA_VISIBLE_DEVICES"), [d.unit for d in devices])
        gpus = []
        for position, device in enumerate(devices[i] for i in visible):
            memory = pynvml.nvmlDeviceGetMemoryInfo(device.handle)
            gpus.append(
                Gpu(
                    index=position,
                    total_gb=memory.total / GIB,
                    free_gb=memory.free / GIB,
                    processes=_process_count(pynvml, device.handle),
                    name=device.name,
                    bind_id=device.bind_id,
                    platform=CUDA,
                )
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


class _Device(NamedTuple):
    unit: Unit
    handle: Any
    name: str
    bind_id: str  # a whole GPU's NVML index, a slice's MIG-<uuid>


def _devices(pynvml: ModuleType) -> list[_Device]:
    """Every schedulable NVIDIA device in NVML order: a whole GPU, or each slice of a GPU in MIG mode."""
    devices = []
    for ordinal in range(pynvml.nvmlDeviceGetCount()):
        gpu = pynvml.nvmlDeviceGetHandleByIndex(ordinal)
        uuid = _text(pynvml.nvmlDeviceGetUUID(gpu))
        if not _mig_enabled(pynvml, gpu):
            devices.append(_Device(Unit(ordinal, uuid, (uuid,)), gpu, _text(pynvml.nvmlDeviceGetName(gpu)), str(ordinal)))
            continue
        for slot in range(pynvml.nvmlDeviceGetMaxMigDeviceCount(gpu)):
            try:
                mig = pynvml.nvmlDeviceGetMigDeviceHandleByIndex(gpu, slot)
            except pynvml.NVMLError:  # NOT_FOUND: no slice at this slot
                continue
            mig_uuid = _text(pynvml.nvmlDeviceGetUUID(mig))
            devices.append(_Device(Unit(ordinal, uuid, (mig_uuid, uuid)), mig, _text(pynvml.nvmlDeviceGetName(mig)), mig_uuid))
    return devices


def _mig_enabled(pynvml: ModuleType, handle: object) -> bool:
    """Whether the GPU runs in MIG mode now; GPUs without MIG answer NOT_SUPPORTED (older bindings lack the call)."""
    try:
        current, _pending = pynvml.nvmlDeviceGetMigMode(handle)
    except (pynvml.NVMLError, AttributeError):
        return False
    return bool(current == pynvml.NVML_DEVICE_MIG_ENABLE)


def _process_count(pynvml: ModuleType, handle: object) -> int:
    """Compute processes on a device; some virtualised GPUs do not report them (counted as 0)."""
    try:
        return len(pynvml.nvmlDeviceGetComputeRunningProcesses(handle))
    except pynvml.NVMLError:
        return 0


def _text(value: str | bytes) -> str:
    """Older NVML bindings return bytes."""
    return value.decode() if isinstance(value, bytes) else value
