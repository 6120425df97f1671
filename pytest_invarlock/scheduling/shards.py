"""Shards of one campaign: a deterministic split of a suite's items into N parts, one per node. Pure.

`pytest validation/ --suite b200 -n 8 --shard K/N` runs part K; N such processes (Slurm tasks, one per
node) share one run directory and the report command merges their records into one verdict.

The split, a pure function of the items, N and the GPU size (never of free memory, the clock or the
host), so every node computes the same one and the N parts are a partition:

- cost of an item = GPU-seconds from `cost.item_cost` (the memory plan's GPU count x the model of time);
- units: each model whole (a node then loads each model once, and its calibration, preset and edits
  are made where they are used); a model costing more than a fair share (total / N) is cut into
  chunks of about a share, its calibration runs in the first chunk. The other chunks' edits need the
  model's preset: the store's lock makes it once and the other shards wait for it and reuse it;
- longest-processing-time first: units by cost (largest first, then by name) each to the lightest
  shard so far (lowest index on ties);
- while the heaviest shard exceeds the fair share by more than TOLERANCE, its largest unit of more
  than one item is halved and the assignment redone (balance over keeping a model whole).

Tests that are not suite items (a project's own tests in the same run) all go to shard 1.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pytest_invarlock.campaign.items import Kind, SuiteItem
from pytest_invarlock.scheduling.cost import REFERENCE_GPU_GB, item_cost

TOLERANCE = 0.05  # the heaviest shard may exceed total / N by this fraction before models are cut further
MAX_REFINEMENTS = 64
_SPEC = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_shard(spec: str) -> tuple[int, int]:
    """'K/N' -> (K, N), 1 <= K <= N."""
    match = _SPEC.match(spec or "")
    if not match:
        raise ValueError(f"--shard {spec!r}: write K/N, the 1-based shard number and the shard count (e.g. 2/4).")
    k, n = int(match.group(1)), int(match.group(2))
    if n < 1 or not 1 <= k <= n:
        raise ValueError(f"--shard {spec!r}: K must be between 1 and N, and N at least 1 (e.g. 1/4 ... 4/4).")
    return k, n


@dataclass(frozen=True)
class Unit:
    """Items that go to one shard together: a whole model, or a chunk of one."""

    name: str
    items: tuple[SuiteItem, ...]
    cost: float


def split_items(
    items: Sequence[SuiteItem], n: int, gpu_gb: float = REFERENCE_GPU_GB, cost: Callable[[SuiteItem], float] | None = None
) -> dict[str, int]:
    """param_id -> shard (0-based) for every item; see the module docstring for the rule."""
    if n < 1:
        raise ValueError(f"the shard count must be at least 1, got {n}.")
    costs = {item.param_id: (cost or (lambda i: item_cost(i, gpu_gb)))(item) for item in items}
    if len(costs) != len(items):
        raise ValueError("two items share a param id; a split needs every item's own id.")
    by_model: dict[str, list[SuiteItem]] = defaultdict(list)
    for item in items:
        by_model[item.model.name].append(item)
    total = sum(costs.values())
    share = total / n if n else total
    units: list[Unit] = []
    for model, model_items in sorted(by_model.items()):
        ordered = [i for i in model_items if i.kind == Kind.CALIBRATION] + [i for i in model_items if i.kind != Kind.CALIBRATION]
        units += _chunks(model, ordered, costs, share)
    for _ in range(MAX_REFINEMENTS):
        loads, owner = _lpt(units, n)
        heaviest = max(range(n), key=lambda s: (loads[s], -s))
        if n == 1 or loads[heaviest] <= share * (1 + TOLERANCE):
            break
        candidates = [u for u in units if owner[u.name] == heaviest and len(u.items) > 1]
        if not candidates:
            break
        largest = max(candidates, key=lambda u: (u.cost, u.name))
        units.remove(largest)
        units += _halve(largest, costs)
    else:
        loads, owner = _lpt(units, n)
    return {item.param_id: owner[unit.name] for unit in units for item in unit.items}


def shard_loads(items: Sequence[SuiteItem], assignment: dict[str, int], n: int, gpu_gb: float = REFERENCE_GPU_GB) -> list[float]:
    """GPU-seconds per shard under `assignment`."""
    loads = [0.0] * n
    for item in items:
        loads[assignment[item.param_id]] += item_cost(item, gpu_gb)
    return loads


def _chunks(model: str, items: list[SuiteItem], costs: dict[str, float], share: float) -> list[Unit]:
    """The model whole, or cut in collection order (calibrations first) into pieces of about `share`."""
    whole = sum(costs[i.param_id] for i in items)
    if whole <= share or len(items) == 1:
        return [Unit(model, tuple(items), whole)]
    pieces: list[list[SuiteItem]] = []
    current: list[SuiteItem] = []
    acc = 0.0
    for item in items:
        if current and acc + costs[item.param_id] > share:
            pieces.append(current)
            current, acc = [], 0.0
        current.append(item)
        acc += costs[item.param_id]
    pieces.append(current)
    return [Unit(f"{model}#{i}", tuple(p), sum(costs[x.param_id] for x in p)) for i, p in enumerate(pieces)]


def _halve(unit: Unit, costs: dict[str, float]) -> list[Unit]:
    half, acc, cut = unit.cost / 2, 0.0, 1
    for index, item in enumerate(unit.items):
        acc += costs[item.param_id]
        if acc >= half:
            cut = max(1, min(len(unit.items) - 1, index + 1))
            break
    first, second = unit.items[:cut], unit.items[cut:]
    return [
        Unit(f"{unit.name}.0", first, sum(costs[i.param_id] for i in first)),
        Unit(f"{unit.name}.1", second, sum(costs[i.param_id] for i in second)),
    ]


def _lpt(units: list[Unit], n: int) -> tuple[list[float], dict[str, int]]:
    loads = [0.0] * n
    owner: dict[str, int] = {}
    for unit in sorted(units, key=lambda u: (-u.cost, u.name)):
        shard = min(range(n), key=lambda s: (loads[s], s))
        owner[unit.name] = shard
        loads[shard] += unit.cost
    return loads, owner
