"""GPU inventory for the controller: the device records, --gpus simulations and which devices a process sees.

The controller must not initialise a CUDA or HIP context (that would pin memory on every device and
fix the device order for the whole process), so it reads driver state only: `probe` asks NVML or
ROCm's SMI and builds the `Gpu` records defined here. A record's `index` is the campaign's number for
the device (its position among the devices this process sees); `bind_id` is what a worker's
visibility variable names to see it (`placement.cuda_env`): a whole NVIDIA GPU's NVML index (with
CUDA_DEVICE_ORDER=PCI_BUS_ID), a MIG slice's `MIG-<uuid>`, an AMD GPU's ROCr index.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

_TERM = re.compile(r"^(?:(\d+)\s*x\s*)?(\d+(?:\.\d+)?)(?:\s*:\s*(\d+(?:\.\d+)?))?$")
MAX_SIMULATED_GPUS, MAX_SIMULATED_GB = 1024, 100_000.0  # beyond these a --gpus spec is a typo
_SPEC_HELP = (
    "Write COUNTxGB (e.g. 8x180), a comma-separated list of sizes in GB (e.g. 80,80,24) or a mix (2x80,24); "
    "add :FREE to give the free memory NVML would report (e.g. 8x80:78.5 or 80:79,80:79,24:23)."
)
CUDA, ROCM = "cuda", "rocm"  # the platforms: NVIDIA (whole GPUs and MIG slices) and AMD through HIP
MIG_PREFIX = "MIG-"


@dataclass(frozen=True)
class Gpu:
    index: int  # the campaign's number for the device: its position among the devices this process sees
    total_gb: float
    free_gb: float
    processes: int  # compute processes on it when read (at the session's start none of them is ours)
    name: str
    bind_id: str = ""  # what a visibility variable names to show the device; "" for a simulated one (its index)
    platform: str = CUDA

    @property
    def binding(self) -> str:
        return self.bind_id or str(self.index)

    @property
    def mig(self) -> bool:
        """A MIG slice: CUDA shows a process one MIG device at most, so a model never spans slices."""
        return self.binding.startswith(MIG_PREFIX)


def capacity_gb(gpus: Sequence[Gpu], budgets: Sequence[float]) -> float:
    """The most one item may use given each device's budget: the largest device, or all the devices one
    placement may combine (MIG slices never are)."""
    return max(max(budgets, default=0.0), sum(b for gpu, b in zip(gpus, budgets, strict=True) if not gpu.mig))


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

    The GPU cluster notes' lesson: host memory while loading, not GPU concurrency, limited small nodes. Half the
    RAM goes to the caches of all workers together; the rest is for loading (a from_pretrained peak
    is about twice the weights), the page cache and the controller. Per-worker fractions of RAM
    (8 workers x a third each) overcommitted the node.
    """
    if workers < 1:
        raise ValueError(f"the host-RAM budget needs at least one worker, got {workers}.")
    total = host_ram_bytes() if total_bytes is None else total_bytes
    return int(total * fraction) // workers


@dataclass(frozen=True)
class Unit:
    """One device a visibility variable can name: its ordinal, the physical GPU it belongs to, its UUIDs.

    A whole GPU is its own `group`; the MIG slices of one GPU share the GPU's UUID as their group (and
    list it among their names), so naming the GPU names all its slices.
    """

    ordinal: int
    group: str
    names: tuple[str, ...]


def visible_devices(value: str | None, units: Sequence[Unit]) -> list[int]:
    """Positions in `units` of the devices a CUDA_/HIP_/ROCR_VISIBLE_DEVICES value shows, in its order.

    Follows CUDA: unset means all; entries are ordinals or unique prefixes of UUIDs; the list stops at
    the first entry that names no device (or one already listed), so '' or '-1' hides every GPU. An
    ordinal or UUID of a GPU in MIG mode names all of its slices.
    """
    if value is None:
        return list(range(len(units)))
    visible: list[int] = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.isdigit():
            chosen = [i for i, unit in enumerate(units) if unit.ordinal == int(entry)]
        else:
            chosen = [i for i, unit in enumerate(units) if entry and any(n.startswith(entry) for n in unit.names)]
            groups = {units[i].group for i in chosen}
            if len(chosen) > 1 and not (len(groups) == 1 and groups.pop().startswith(entry)):
                chosen = []  # an ambiguous prefix names no device (a GPU's own UUID names all its slices)
        if not chosen or any(i in visible for i in chosen):
            break
        visible += chosen
    return visible


def split_busy(gpus: Sequence[Gpu]) -> tuple[list[Gpu], list[Gpu]]:
    """The devices without compute processes, and those with some (read before any worker of ours starts)."""
    return [g for g in gpus if not g.processes], [g for g in gpus if g.processes]
