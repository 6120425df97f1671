"""AMD GPUs for the controller through ROCm, torch-free: AMD's SMI library (amdsmi), else the driver's sysfs.

Torch's ROCm build runs on AMD GPUs through HIP and calls them "cuda" devices. The controller never
imports torch, so it reads memory and processes from `amdsmi` (ROCm 6+) or, without it, total and used
VRAM from /sys/class/drm/card*/device/mem_info_vram_{total,used} (no processes: --gpu-require-idle
then sees none). Devices are numbered as ROCr enumerates them: amdsmi's `hip_id` where it reports
one (ROCm 6.4+; torch maps devices the same way), else amdsmi's order, and sysfs cards in PCI bus
order. A worker is bound with ROCR_VISIBLE_DEVICES=<that number> (`placement.cuda_env`). Visibility
this process inherited (Slurm exports ROCR_VISIBLE_DEVICES) is applied as HIP does: ROCR_VISIBLE_DEVICES
first, then HIP_VISIBLE_DEVICES (else CUDA_VISIBLE_DEVICES) counting within what ROCr shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, NamedTuple

from pytest_invarlock.scheduling.inventory import ROCM, Gpu, Unit, visible_devices
from pytest_invarlock.scheduling.memory import GIB

DRM = Path("/sys/class/drm")
AMD_VENDOR = "0x1002"


class AmdDevice(NamedTuple):
    ordinal: int  # ROCr's number for it: what ROCR_VISIBLE_DEVICES names
    names: tuple[str, ...]  # UUIDs a visibility variable may name it by (HIP's UUID, the ASIC serial as torch uses it)
    total_bytes: int
    used_bytes: int
    processes: int
    name: str


def torch_is_rocm() -> bool:
    """Whether the installed torch is a ROCm build (its version carries '+rocm'), read without importing torch."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return "rocm" in version("torch")
    except PackageNotFoundError:
        return False


def probe_amd(environ: Mapping[str, str] = os.environ, drm: Path = DRM) -> list[Gpu]:
    """The AMD GPUs this process's visibility variables show: amdsmi's reading, else sysfs; [] on a host without."""
    devices = amdsmi_devices()
    if devices is None:
        devices = sysfs_devices(drm)
    units = [Unit(d.ordinal, str(d.ordinal), d.names) for d in devices]
    rocr = visible_devices(environ.get("ROCR_VISIBLE_DEVICES"), units)
    within = [Unit(position, units[i].group, units[i].names) for position, i in enumerate(rocr)]
    hip = environ.get("HIP_VISIBLE_DEVICES", environ.get("CUDA_VISIBLE_DEVICES"))
    shown = [devices[rocr[i]] for i in visible_devices(hip, within)]
    return [
        Gpu(
            index=position,
            total_gb=device.total_bytes / GIB,
            free_gb=max(0, device.total_bytes - device.used_bytes) / GIB,
            processes=device.processes,
            name=device.name,
            bind_id=str(device.ordinal),
            platform=ROCM,
        )
        for position, device in enumerate(shown)
    ]


def amdsmi_devices() -> list[AmdDevice] | None:
    """Every AMD GPU as amdsmi reports it, in ROCr's order; None without amdsmi, its driver, or a full reading."""
    try:
        import amdsmi  # AMD's SMI bindings (ROCm 6+); imported here so other hosts never need it
    except ImportError:
        return None
    try:
        amdsmi.amdsmi_init()
    except amdsmi.AmdSmiException:
        return None
    try:
        devices = [
            _amdsmi_device(amdsmi, handle, position) for position, handle in enumerate(amdsmi.amdsmi_get_processor_handles())
        ]
    except amdsmi.AmdSmiException:
        return None  # a device whose memory cannot be read: sysfs may still read it
    finally:
        amdsmi.amdsmi_shut_down()
    return sorted(devices, key=lambda d: d.ordinal)


def _amdsmi_device(amdsmi: ModuleType, handle: Any, position: int) -> AmdDevice:
    enumeration = _optional(amdsmi, "amdsmi_get_gpu_enumeration_info", handle) or {}  # ROCm 6.4+
    asic = _optional(amdsmi, "amdsmi_get_gpu_asic_info", handle) or {}
    hip_id, hip_uuid = enumeration.get("hip_id"), enumeration.get("hip_uuid")
    serial = str(asic.get("asic_serial", "")).lower().removeprefix("0x")
    market_name = asic.get("market_name")
    vram = amdsmi.AmdSmiMemoryType.VRAM
    return AmdDevice(
        ordinal=hip_id if isinstance(hip_id, int) else position,
        names=tuple(n for n in (hip_uuid, serial) if isinstance(n, str) and n and n != "n/a"),
        total_bytes=int(amdsmi.amdsmi_get_gpu_memory_total(handle, vram)),
        used_bytes=int(amdsmi.amdsmi_get_gpu_memory_usage(handle, vram)),
        processes=len(_optional(amdsmi, "amdsmi_get_gpu_process_list", handle) or ()),
        name=market_name if isinstance(market_name, str) and market_name not in ("", "N/A") else "AMD GPU",
    )


def _optional(amdsmi: ModuleType, call: str, handle: Any) -> Any:
    """A reading that older amdsmi releases lack or some devices do not support: None then."""
    function: Callable[[Any], Any] | None = getattr(amdsmi, call, None)
    if function is None:
        return None
    try:
        return function(handle)
    except amdsmi.AmdSmiException:
        return None


def sysfs_devices(drm: Path = DRM) -> list[AmdDevice]:
    """AMD GPUs the amdgpu driver lists under `drm`, in PCI bus order, with their VRAM (processes unknown)."""
    found = []
    for card in drm.glob("card*"):
        if not card.name.removeprefix("card").isdigit():  # connectors such as card0-DP-1
            continue
        device = card / "device"
        try:
            if _read(device / "vendor") != AMD_VENDOR:
                continue
            total, used = int(_read(device / "mem_info_vram_total")), int(_read(device / "mem_info_vram_used"))
        except (OSError, ValueError):
            continue  # not a GPU with its own VRAM (or a driver without these files)
        try:
            name = _read(device / "product_name") or "AMD GPU"
        except OSError:
            name = "AMD GPU"
        found.append((device.resolve().name, total, used, name))  # resolves to the PCI address, 0000:0c:00.0
    return [AmdDevice(ordinal, (), total, used, 0, name) for ordinal, (_, total, used, name) in enumerate(sorted(found))]


def _read(path: Path) -> str:
    return path.read_text(encoding="ascii").strip()
