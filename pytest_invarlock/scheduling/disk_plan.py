"""The disk plan: what a campaign adds to each filesystem at its peak. Pure: plain numbers in, a plan out.

One plan serves `--gpu-plan` (one line per filesystem) and the preflight (which refuses a run whose
peak plus headroom exceeds the free space):

- baselines: the weights still to download, on the filesystem they land on (the Hugging Face cache);
- edits in flight: edited and error-injected models are rebuilt from their recipe and removed when
  no pending item needs them, so at most one edited copy per item that can run at once is on disk.
  That bound is the largest sum of edit sizes over the items the node can run together (a bounded
  knapsack over GPUs and workers), and it is the default edit budget the workers keep to;
- results: each item's certificate or score (reports and logs).

GB means 2**30 bytes, as in the memory plan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

GIB = 2**30
HEADROOM_SHARE = 0.02  # default headroom: 2% of the filesystem ...
HEADROOM_MIN = 1 * GIB  # ... at least 1 GB ...
HEADROOM_MAX = 200 * GIB  # ... at most the B200 document's MIN_FREE_DISK_GB


@dataclass(frozen=True)
class Volume:
    """A filesystem: where the plan says it is, its device id (same id, same filesystem) and its space."""

    path: str
    device: int
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class ModelDisk:
    """What one model of the campaign puts on disk."""

    name: str
    weights_bytes: int  # one copy of its weights: the size of each edited model
    edit_items: int  # selected items that need an edited copy of it (edits, errors, their benchmarks)
    gpus_per_item: int = 1  # GPUs one of those items takes on this node (1 on a CPU run)
    download_bytes: int = 0  # weights still to download
    download_device: int | None = None  # the filesystem they land on


@dataclass(frozen=True)
class VolumePlan:
    volume: Volume
    baselines: int
    edits: int
    results: int
    headroom: int

    @property
    def peak(self) -> int:
        return self.baselines + self.edits + self.results

    @property
    def fits(self) -> bool:
        return self.peak + self.headroom <= self.volume.free_bytes

    def line(self) -> str:
        return (
            f"disk: peak {gb(self.peak)} GB (baselines {gb(self.baselines)} GB, edits in flight {gb(self.edits)} GB, "
            f"results {gb(self.results)} GB) on {self.volume.path} with {gb(self.volume.free_bytes)} GB free"
        )

    def shortfall(self) -> str:
        """Why this filesystem cannot hold the campaign ('' when it can)."""
        if self.fits:
            return ""
        return (
            f"{self.line()}: the peak plus {gb(self.headroom)} GB headroom needs "
            f"{gb(self.peak + self.headroom - self.volume.free_bytes)} GB more"
        )


@dataclass(frozen=True)
class DiskPlan:
    volumes: tuple[VolumePlan, ...]  # the run directory's filesystem first
    edit_budget: int  # bytes of edited weights the workers keep on disk at once

    def lines(self) -> list[str]:
        return [v.line() for v in self.volumes]

    def shortfalls(self) -> list[str]:
        return [v.shortfall() for v in self.volumes if not v.fits]


def gb(nbytes: float) -> str:
    """GB with the precision the size needs: 1234, 56.7, 0.008."""
    value = nbytes / GIB
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.1f}"
    return f"{value:.3f}"


def default_headroom(total_bytes: int) -> int:
    """Free space to keep on a filesystem: 2% of its size, at least 1 GB and at most 200 GB."""
    return int(min(HEADROOM_MAX, max(HEADROOM_MIN, HEADROOM_SHARE * total_bytes)))


def edits_in_flight(models: Sequence[ModelDisk], *, gpus: int, workers: int) -> int:
    """The largest total size of edited copies that items running at once can hold.

    Each running item holds at most one edited copy; a model's items take `gpus_per_item` of the
    node's `gpus` (0 for a CPU run: only `workers` binds) and one of its `workers`; no more of a
    model's items run at once than it has. A bounded knapsack, exact for these small counts.
    """
    workers = max(1, workers)
    capacity = gpus if gpus > 0 else workers
    # best[g][w]: the largest total size with g GPUs and w workers in use
    best = [[0] * (workers + 1) for _ in range(capacity + 1)]
    for model in models:
        width = max(1, model.gpus_per_item) if gpus > 0 else 1
        most = min(model.edit_items, capacity // width, workers)
        if most <= 0 or model.weights_bytes <= 0:
            continue
        previous = [row[:] for row in best]
        for used in range(capacity + 1):
            for busy in range(workers + 1):
                for count in range(1, most + 1):
                    if count * width > used or count > busy:
                        break
                    candidate = previous[used - count * width][busy - count] + count * model.weights_bytes
                    if candidate > best[used][busy]:
                        best[used][busy] = candidate
    return best[capacity][workers]


def plan_disk(
    models: Sequence[ModelDisk],
    *,
    run_volume: Volume,
    volumes: Mapping[int, Volume],
    results_bytes: int,
    gpus: int,
    workers: int,
    edit_budget: int | None = None,
    headroom: int | None = None,
) -> DiskPlan:
    """The campaign's disk plan. `volumes` maps device ids to the filesystems downloads land on.

    `edit_budget` (bytes) replaces the default budget (the edits-in-flight bound): more keeps finished
    edits for later runs; less removes them sooner, but edits that running items use stay, so the
    plan counts the larger of the two. `headroom` (bytes) replaces the default headroom.
    """
    in_flight = edits_in_flight(models, gpus=gpus, workers=workers)
    budget = in_flight if edit_budget is None else max(0, edit_budget)
    downloads: dict[int, int] = {}
    for model in models:
        if model.download_bytes > 0 and model.download_device is not None:
            downloads[model.download_device] = downloads.get(model.download_device, 0) + model.download_bytes

    def volume_plan(volume: Volume, edits: int, results: int) -> VolumePlan:
        room = default_headroom(volume.total_bytes) if headroom is None else max(0, headroom)
        return VolumePlan(volume, downloads.get(volume.device, 0), edits, results, room)

    plans = [volume_plan(run_volume, max(budget, in_flight), max(0, results_bytes))]
    for device, volume in sorted(volumes.items()):
        if device != run_volume.device and downloads.get(device):
            plans.append(volume_plan(volume, 0, 0))
    return DiskPlan(tuple(plans), budget)


@dataclass(frozen=True)
class OnDisk:
    """An edited model on disk, as the eviction rule sees it."""

    name: str
    nbytes: int
    last_used: float  # epoch seconds
    needed: bool  # a pending item of this session still needs it


def eviction_order(on_disk: Sequence[OnDisk]) -> list[OnDisk]:
    """The order to remove edits in when they exceed the budget: edits no pending item needs first, then
    those needed again later (rebuilt from their recipe when that item comes), least recently used first
    within each group. Whoever evicts skips edits held in use and stops once the rest fits."""
    return sorted(on_disk, key=lambda e: (e.needed, e.last_used, e.name))
