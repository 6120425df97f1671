"""GPU inventory for the controller: probed through NVML, or simulated with --gpus. No torch, no CUDA.

The controller must not initialise a CUDA context (that would pin memory on every device and
fix the device order for the whole process), so it asks NVML, which only reads driver state.
`index` is NVML's index, which follows PCI bus order: a worker that pins its device with
CUDA_VISIBLE_DEVICES=<index> must also set CUDA_DEVICE_ORDER=PCI_BUS_ID.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

from pytest_invarlock.scheduling.memory import GIB

_TERM = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)(?:\s*:\s*(\d+(?:\.\d+)?))?$")
MAX_SIMULATED_GPUS, MAX_SIMULATED_GB = 1024, 100_000.0  # beyond these a --gpus spec is a typo
_SPEC_HELP = (
    "Write COUNTxGB (e.g. 8x180), a comma-separated list of sizes in GB (e.g. 80,80,24) or a mix (2x80,24); "
    "add :FREE to give the free memory NVML would report (e.g. 8x80:78.5 or 80:79,80:79,24:23)."
)


@dataclass(frozen=True)
class Gpu:
    index: int
    total_gb: float
    free_gb: float
    processes: int
    name: str


def parse_gpu_spec(spec: str) -> list[Gpu]:
    """Simulated GPUs for --gpus: '8x180' is eight idle 180 GB devices, '80,80,24' three devices.

    A term may end in ':FREE', the free memory NVML would report on the idle device ('8x80:79'):
    a real GPU always reports less than its total (the driver's and the context's reserve), and a
    simulation without it plans on memory no real node has. Without ':FREE' the device is ideal.
    """
    gpus: list[Gpu] = []
    for term in spec.split(","):
        text = term.strip()
        match = _TERM.match(text.lower())
        if not match:
            raise ValueError(f"--gpus {spec!r}: cannot read {text!r} as a GPU count, size and free memory. {_SPEC_HELP}")
        count, size = int(match.group(1) or 1), float(match.group(2))
        free = size if match.group(3) is None else float(match.group(3))
        if count < 1 or size <= 0:
            raise ValueError(
                f"--gpus {spec!r}: {text!r} asks for {count} GPU(s) of {size:g} GB; both must be positive. {_SPEC_HELP}"
            )
        if count + len(gpus) > MAX_SIMULATED_GPUS or size > MAX_SIMULATED_GB:
            raise ValueError(
                f"--gpus {spec!r}: {text!r} asks for {count} GPU(s) of {size:g} GB; a node simulates at most "
                f"{MAX_SIMULATED_GPUS} GPUs of at most {MAX_SIMULATED_GB:g} GB. {_SPEC_HELP}"
            )
        if free > size:
            raise ValueError(
                f"--gpus {spec!r}: {text!r} gives {free:g} GB free on a {size:g} GB GPU; free memory "
                f"cannot exceed the total. {_SPEC_HELP}"
            )
        gpus += [Gpu(len(gpus) + i, size, free, 0, "simulated") for i in range(count)]
    return gpus


def format_gpu_spec(gpus: Sequence[Gpu]) -> str:
    """The --gpus spec that `parse_gpu_spec` reads back as these devices (their sizes and free memory)."""
    terms: list[tuple[float, float, int]] = []
    for gpu in gpus:
        if terms and terms[-1][:2] == (gpu.total_gb, gpu.free_gb):
            terms[-1] = (gpu.total_gb, gpu.free_gb, terms[-1][2] + 1)
        else:
            terms.append((gpu.total_gb, gpu.free_gb, 1))
    return ",".join(f"{f'{n}x' if n > 1 else ''}{total:g}{'' if free == total else f':{free:g}'}" for total, free, n in terms)


HOST_CACHE_FRACTION = 0.5  # of the node's RAM, shared by all workers' model caches
FALLBACK_HOST_RAM = 16 * 2**30


def host_ram_bytes() -> int:
    """Physical RAM of this host (sysconf, else /proc/meminfo's MemTotal, else 16 GiB)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_HOST_RAM


def host_cache_share(workers: int, total_bytes: int | None = None, fraction: float = HOST_CACHE_FRACTION) -> int:
    """Bytes of host RAM one worker's model cache may hold: a node-wide budget split evenly.

    The seed's lesson: host memory while loading, not GPU concurrency, limited small nodes. Half the
    RAM goes to the caches of all workers together; the rest is for loading (a from_pretrained peak
    is about twice the weights), the page cache and the controller. Per-worker fractions of RAM
    (8 workers x a third each) overcommitted the node.
    """
    if workers < 1:
        raise ValueError(f"the host-RAM budget needs at least one worker, got {workers}.")
    total = host_ram_bytes() if total_bytes is None else total_bytes
    return int(total * fraction) // workers


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
            gpus.append(
                Gpu(
                    index=index,
                    total_gb=memory.total / GIB,
                    free_gb=memory.free / GIB,
                    processes=_process_count(pynvml, handle),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                )
            )
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
