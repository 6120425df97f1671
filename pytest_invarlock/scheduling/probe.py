"""This node's GPUs as the driver reports them: NVIDIA's through NVML, else AMD's through ROCm. Torch-free.

NVIDIA comes first (whole GPUs and MIG slices, `nvml`); AMD GPUs are read only where the installed
torch is a ROCm build (`rocm`), so a host whose torch cannot use its AMD graphics card plans on CPU.
"""

from __future__ import annotations

from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.nvml import probe_nvidia
from pytest_invarlock.scheduling.rocm import probe_amd, torch_is_rocm


def probe_gpus() -> list[Gpu]:
    """The GPUs this process's visibility variables show; [] on a host without a usable driver."""
    gpus = probe_nvidia()
    if gpus or not torch_is_rocm():
        return gpus
    return probe_amd()
