"""What produced a record: package versions, host, device name and driver, gathered once per worker process.

Every record a worker writes (a verdict, a benchmark score, an item error) carries it as `environment`, so a
campaign merged from several hosts or shards says which host, device and software produced each result, and
an evidence pack can aggregate them. Device names and the driver come from NVML (no CUDA context is made);
on a CPU run the device name is the CPU's model.
"""

from __future__ import annotations

import functools
import platform
import socket
from importlib import metadata
from pathlib import Path
from typing import Any

# The packages whose versions decide a record's numbers (and the plugin that produced it).
PACKAGES = ("invarlock", "torch", "transformers", "lm_eval", "pytest-invarlock")


@functools.cache
def environment(device: str) -> dict[str, Any]:
    """The record's `environment` block for a worker evaluating on `device` ('cpu' or 'cuda')."""
    gpus, driver = _nvml() if device == "cuda" else ([], None)
    return {
        "host": socket.gethostname(),
        "device": device,
        "device_name": ", ".join(gpus) if gpus else _cpu_name() if device == "cpu" else None,
        "driver": driver,
        "python": platform.python_version(),
        "versions": {name: _version(name) for name in PACKAGES},
    }


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _nvml() -> tuple[list[str], str | None]:
    """(names of the GPUs this process sees, driver version); ([], None) without NVML."""
    from pytest_invarlock.scheduling.probe import probe_gpus

    names = [gpu.name for gpu in probe_gpus() if gpu.name]
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver or no nvidia-ml-py: the record says None
        return names, None
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        return names, driver.decode() if isinstance(driver, bytes) else str(driver)
    except Exception:  # noqa: BLE001
        return names, None
    finally:
        pynvml.nvmlShutdown()
