"""Discrete-event simulation of GPU scheduling on the shipped suites: no torch, no GPU, seconds.

    .venv/bin/python perf/simulate.py [--seed N]                  # every case below; exit 1 if a target is missed
    .venv/bin/python perf/simulate.py --suite full --gpus 8x80:79 --realistic
    .venv/bin/python perf/simulate.py --suite b200 --gpus 8x180 --nodes 4
    .venv/bin/python perf/simulate.py --suite b200 --cluster 2*8x80+2*8x180 --realistic

It drives the plugin's own `Policy` (the one the xdist adapter drives) with simulated GPUs and item
durations, and compares it on the same workloads with three baselines: the B200 bash harness's small_first greedy
(the same policy with affinity off), pytest-xdist's own `--dist worksteal` (blind to memory and
dependencies) and its static layout (each model owns a GPU, or a GPU group, and runs all its
items there). The workloads are the suites' own items (`load_suite` + `build_items`).

Model of time (`pytest_invarlock.scheduling.cost`, shared with the shard split): an item takes
SECONDS_PER_GB[kind] per GB of weights (benchmarks in proportion to their size); a worker switching
to another model first pays a load. Sharded items take as long as unsharded ones but hold every
GPU of their set.

Ideal mode (realistic=0): free memory = total, log-normal duration noise (sigma 0.15), no failures.
Realistic mode (realistic=1), what a real node does to the scheduler:
- free = total less a driver reserve (1% per GPU) unless the spec gives it (`8x80:79`);
- allocator residue: a worker keeps 0.3-0.9 GB on its GPU after its first item, while it lives;
- NVML re-read at dispatch (every 5 s at most, as the adapter does), each reading up to 0.2 GB low;
- an item's real peak is 80-100% of its plan; durations +-30% (uniform);
- one worker crash at 30% of the item seconds over the GPUs (its running item is lost; a replacement comes 60 s
  later on the same GPU) and one CUDA OOM (an item fails at 40% of its run and is retried once).

Each case prints its table, then one last line per strategy:
`RESULT strategy=<name> suite=<suite> gpus=<spec> realistic=<0|1> makespan_over_bound=<x.xx> skipped=<n>
oversubscribed=<n> ooms=<n> loads=<n> workers=<n>`. Campaigns on several nodes print one line per strategy,
claims at run time (every node's policy in its campaign mode on one shared claim board) and the fixed
`--shard K/N` split: `CLUSTER strategy=claims|shards suite=... nodes=N gpus=<cluster> realistic=<0|1>
makespan_h=... bound_h=... makespan_over_bound=<x.xxx> run_twice=<n> never_run=<n> skipped=<n>
oversubscribed=<n> loads=<n> node_items=... node_makespans_h=...`: the last item's end on any node against
`cluster_bound` of the whole cluster (realistic mode crashes one worker of the first node).
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, SuiteItem, build_items, items_for_test
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.scheduling.claim_policy import Claim
from pytest_invarlock.scheduling.cost import item_seconds, load_seconds, timed_tasks
from pytest_invarlock.scheduling.inventory import Gpu, format_gpu_spec, parse_gpu_spec
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.policy import Assignment, Policy, Task
from pytest_invarlock.scheduling.shards import split_items
from pytest_invarlock.scheduling.tasks import tasks_from_items
from pytest_invarlock.scheduling.xdist_adapter import PROBE_INTERVAL_S

WORKLOADS = (("b200", "8x180"), ("full", "8x80"))
CLUSTERS = (("b200", "2*8x180"), ("b200", "4*8x180"), ("full", "2*8x80"), ("b200", "2*8x80+2*8x180"))
NOISE_SIGMA = 0.15
TARGET_VS_BOUND, TARGET_VS_BOUND_REALISTIC, TARGET_VS_STATIC = 1.10, 1.05, 0.80
RESERVE_FRACTION = 0.01
RESIDUE_GB = (0.3, 0.9)
READ_NOISE_GB = 0.2
PEAK_OF_PLAN = (0.8, 1.0)
DURATION_NOISE = 0.30
CRASH_AT, REPLACEMENT_S = 0.30, 60.0
OOM_AT = 0.40


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    suite: str
    spec: str  # the --gpus spec of the node, free memory included
    realistic: bool
    gpus: list[Gpu]
    tasks: list[Task]  # in pytest's collection order
    seconds: dict[str, float]  # task id -> duration without the model load (OOM retry included)
    load_seconds: dict[str, float]  # model -> load time
    oom_task: str | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        return f"{self.suite} on {self.spec} ({'realistic' if self.realistic else 'ideal'})"

    def width(self, task: Task, margin: MarginRule = MarginRule()) -> int:
        """GPUs the memory plan gives a task on this (homogeneous) node, by the policy's budget rule."""
        return required_gpus(task.mem_gb, max(margin.usable_gb(g.total_gb, g.free_gb) for g in self.gpus))


def suite_items(suite_name: str) -> list[SuiteItem]:
    """The suite's items in pytest's collection order: test function by test function."""
    built = build_items(load_suite(suite_name))
    return [item for test in (*CERTIFY_TESTS, BENCHMARK_TEST) for item in items_for_test(built, test)]


def realistic_gpus(spec: str) -> list[Gpu]:
    """The spec's GPUs; where it gives no free memory, free = total less the driver's reserve."""
    return [
        gpu if gpu.free_gb < gpu.total_gb else replace(gpu, free_gb=round(gpu.total_gb * (1 - RESERVE_FRACTION), 1))
        for gpu in parse_gpu_spec(spec)
    ]


def build_workload(
    suite_name: str, gpu_spec: str, seed: int, *, realistic: bool = False, items: Sequence[SuiteItem] | None = None
) -> Workload:
    items = list(items if items is not None else suite_items(suite_name))
    tasks = tasks_from_items(items)
    gpus = realistic_gpus(gpu_spec) if realistic else parse_gpu_spec(gpu_spec)
    noise = random.Random(seed)
    seconds = {}
    for item, task in zip(items, tasks):
        factor = noise.uniform(1 - DURATION_NOISE, 1 + DURATION_NOISE) if realistic else noise.lognormvariate(0.0, NOISE_SIGMA)
        seconds[task.id] = item_seconds(item) * factor
    oom_task = None
    if realistic:
        candidates = [t.id for t in tasks if t.kind in ("clean", "stress", "error")]
        oom_task = noise.choice(candidates) if candidates else None
        if oom_task:
            seconds[oom_task] *= 1 + OOM_AT  # the failed attempt, then the retry from the start
    loads = {t.model: load_seconds(t.model_size_gb) for t in tasks}
    return Workload(suite_name, format_gpu_spec(gpus), realistic, gpus, tasks, seconds, loads, oom_task, seed)


def lower_bound(workload: Workload) -> float:
    """max(all GPU-seconds / GPUs, longest dependency chain); one load per model counted as work."""
    return cluster_bound(workload, [workload.gpus])


def node_widths(workload: Workload, gpus: Sequence[Gpu], margin: MarginRule = MarginRule()) -> dict[str, int | None]:
    """GPUs each task holds on a node of `gpus` (the policy's budget rule); None where the node cannot hold it."""
    largest = max(margin.usable_gb(g.total_gb, g.free_gb) for g in gpus)
    widths: dict[str, int | None] = {}
    for task in workload.tasks:
        width = required_gpus(task.mem_gb, largest)
        widths[task.id] = width if width <= len(gpus) else None
    return widths


def cluster_bound(workload: Workload, node_gpus: Sequence[Sequence[Gpu]]) -> float:
    """A lower bound on any schedule of the workload on these nodes: max(longest dependency chain, the
    makespan of the best *fractional* split of the GPU-seconds over the node types).

    An item costs its seconds x the GPUs it holds on a node type (items no node type holds are left out: no
    schedule runs them). Loads are counted two ways, each a lower bound on its own, so the makespan must pass
    both: (a) each model's first load, and every GPU its first loads do not hold loading at the cheapest load; (b) a
    worker runs at most makespan - load seconds of a model's items, so items of D seconds need at least
    D / (makespan - load) workers, each of which loads the model: every second of an item carries
    load / (makespan - load) seconds of loading (and each model at least one load). A load holds at least
    the GPUs of the model's narrowest item on that node type. On one node type the split is all GPU-seconds / all GPUs. On
    two (say 8 x 80 and 8 x 180 GB nodes, where a 70B model's items hold two 80 GB GPUs and one 180 GB GPU)
    the best split gives the smaller type the items it runs at the least extra cost: a binary search on
    the makespan, each step filling the first type in order of relative cost (exact for the relaxation).
    """
    kinds: dict[str, tuple[dict[str, int | None], int]] = {}
    for gpus in node_gpus:
        spec = format_gpu_spec(list(gpus))
        widths, count = kinds.get(spec, (node_widths(workload, gpus), 0))
        kinds[spec] = (widths, count + len(gpus))
    if len(kinds) > 2:
        raise ValueError(f"the cluster bound handles one or two node types, got {len(kinds)}: {', '.join(kinds)}.")
    capacity = [count for _, count in kinds.values()]
    by_model: defaultdict[str, list[Task]] = defaultdict(list)
    for task in workload.tasks:
        if any(widths[task.id] for widths, _ in kinds.values()):
            by_model[task.model].append(task)
    narrowest = {  # per model and kind: the fewest GPUs one of its items holds there (its load holds at least those)
        model: [min((widths[t.id] or math.inf for t in tasks), default=1) for widths, _ in kinds.values()]
        for model, tasks in by_model.items()
    }
    loads = {model: workload.load_seconds[model] for model in by_model}
    cheapest_load = min(loads.values(), default=0.0)
    # GPUs beyond those the models' first loads hold (a sharded item's load holds its whole set): each loads too
    first_loads = sum(max((n for n in narrowest[model] if n < math.inf), default=1) for model in by_model)
    other_gpus = max(0, sum(capacity) - first_loads)

    def jobs(makespan: float, amortized: bool) -> list[list[float]]:
        """Per job (an item, or a model's load), its GPU-seconds on each node type (inf: cannot run there)."""
        costs: list[list[float]] = []
        for model, tasks in by_model.items():
            load = loads[model]
            per_second = load / (makespan - load) if amortized else 0.0
            spread = 0.0
            for task in tasks:
                seconds = workload.seconds[task.id]
                spread += seconds * per_second
                costs.append(
                    [
                        seconds * (width + per_second * narrow) if (width := widths[task.id]) else math.inf
                        for (widths, _), narrow in zip(kinds.values(), narrowest[model])
                    ]
                )
            if amortized and spread < load:  # at least one load; its GPUs beyond the first are in `per_second`'s
                costs.append([load - spread] * len(kinds))
            elif not amortized:
                costs.append([load * narrow for narrow in narrowest[model]])
        if not amortized:
            costs.append([other_gpus * cheapest_load] * len(kinds))
        return costs

    fixed = jobs(0.0, amortized=False)  # way (a) does not depend on the makespan

    def fits(makespan: float) -> bool:
        if makespan <= max(loads.values(), default=0.0):
            return False  # every model is loaded before its items run
        return _split_fits(fixed, capacity, makespan) and _split_fits(jobs(makespan, amortized=True), capacity, makespan)

    chain = _longest_chain(workload, (task for tasks in by_model.values() for task in tasks))
    if not by_model:
        return chain
    low, high = 0.0, 1.0
    while not fits(high):
        if high > 1e12:
            raise ValueError("the cluster bound found no makespan that holds the work (a bug in the bound).")
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return max(high, chain)


def _split_fits(costs: Sequence[Sequence[float]], capacity: Sequence[int], makespan: float) -> bool:
    """Whether the jobs fit `capacity` GPUs of each node type for `makespan` seconds, split fractionally: the first
    type takes the jobs it runs at the least relative cost."""
    if len(capacity) == 1:
        return sum(c[0] for c in costs) <= capacity[0] * makespan + 1e-6
    room, rest = capacity[0] * makespan, 0.0
    for first, second in sorted(costs, key=_relative_cost):
        if first == math.inf:
            rest += second
            continue
        share = 1.0 if second == math.inf or first == 0 else min(1.0, max(0.0, room / first))
        room -= share * first
        rest += (1 - share) * second if share < 1 else 0.0  # (0 x inf is nan)
    return room >= -1e-6 and rest <= capacity[1] * makespan + 1e-6


def crash_time(workload: Workload, node_gpus: Sequence[Sequence[Gpu]]) -> float:
    """When realistic mode crashes a worker: CRASH_AT of the item seconds spread over every GPU. Not the bound's
    fraction, so that a better bound measures the same runs."""
    return CRASH_AT * sum(workload.seconds.values()) / sum(map(len, node_gpus))


def _relative_cost(costs: Sequence[float]) -> float:
    """A job's cost on the first node type over its cost on the second (-inf: only the first runs it)."""
    first, second = costs
    if second == math.inf:
        return -math.inf
    return first / second if second > 0 else (math.inf if first > 0 else 1.0)


def _longest_chain(workload: Workload, runnable: Iterable[Task]) -> float:
    """The longest chain of dependencies among the tasks some node runs (an unplaceable one releases the rest)."""
    tasks = {t.id: t for t in runnable}
    finish: dict[str, float] = {}

    def end(task_id: str) -> float:
        if task_id not in finish:
            deps = [d for d in tasks[task_id].deps if d in tasks]
            finish[task_id] = workload.seconds[task_id] + max((end(d) for d in deps), default=0.0)
        return finish[task_id]

    return max(map(end, tasks), default=0.0)


# --------------------------------------------------------------------------- baselines


class Scheduler(Protocol):
    def add_worker(self, worker: str, gpu_index: int) -> None: ...
    def schedule(self) -> list[Assignment]: ...
    def finished(self, worker: str, task_id: str, ok: bool = True) -> None: ...
    def worker_lost(self, worker: str) -> object: ...
    @property
    def done(self) -> bool: ...


class XdistWorksteal:
    """pytest-xdist's --dist worksteal: contiguous chunks of the collection per worker; a worker left
    with one item steals half of the longest queue's tail. Blind to memory and dependencies."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        self._unsent = list(tasks)
        self._pending: dict[str, list[Task]] = {}
        self._handed: Counter[str] = Counter()
        self._home: dict[str, int] = {}

    def add_worker(self, worker: str, gpu_index: int) -> None:
        self._pending[worker], self._home[worker] = [], gpu_index

    def schedule(self) -> list[Assignment]:
        workers = list(self._pending)
        for i, worker in enumerate(workers):
            share = len(self._unsent) // (len(workers) - i)
            self._pending[worker] += self._unsent[:share]
            del self._unsent[:share]
        for worker in workers:
            if len(self._pending[worker]) < 2:
                victim = max(self._pending.values(), key=len)
                steal = min(len(victim) // 2, len(victim) - 2)
                if steal > 0:
                    self._pending[worker] += victim[-steal:]
                    del victim[-steal:]
        made = []
        for worker in workers:
            queue = self._pending[worker]
            while self._handed[worker] < min(2, len(queue)):
                made.append(Assignment(worker, queue[self._handed[worker]], (self._home[worker],)))
                self._handed[worker] += 1
        return made

    def finished(self, worker: str, task_id: str, ok: bool = True) -> None:
        self._pending[worker] = [t for t in self._pending[worker] if t.id != task_id]
        self._handed[worker] -= 1

    def worker_lost(self, worker: str) -> object:
        """xdist reports the running item crashed and hands the rest to the other workers."""
        queue = self._pending.pop(worker)
        del self._home[worker], self._handed[worker]
        self._unsent = queue[1:] + self._unsent
        return queue[0] if queue else None

    @property
    def done(self) -> bool:
        return not self._unsent and not any(self._pending.values())


class StaticPerModel:
    """The B200 bash harness's static layout: each model owns a GPU (a group of them when its largest item needs
    more) and runs its items there one after another; when GPUs run out, a model shares the group
    with the least work so far."""

    def __init__(self, workload: Workload) -> None:
        self._workload = workload
        self._fifo: dict[tuple[int, ...], deque[Task]] = defaultdict(deque)
        self._busy: set[tuple[int, ...]] = set()
        self._worker_on: dict[int, str] = {}
        free = [g.index for g in workload.gpus]
        work: Counter[tuple[int, ...]] = Counter()
        for model in dict.fromkeys(t.model for t in workload.tasks):
            tasks = [t for t in workload.tasks if t.model == model]
            width = max(workload.width(t) for t in tasks)
            if len(free) >= width:
                group = tuple(free[:width])
                del free[:width]
            else:
                group = min((g for g in work if len(g) >= width), key=work.__getitem__)
            self._fifo[group].extend(tasks)
            work[group] += sum(workload.seconds[t.id] for t in tasks)

    def add_worker(self, worker: str, gpu_index: int) -> None:
        self._worker_on[gpu_index] = worker

    def schedule(self) -> list[Assignment]:
        made = []
        for group, fifo in self._fifo.items():
            if fifo and group not in self._busy and group[0] in self._worker_on:
                task = fifo.popleft()
                devices = group if self._workload.width(task) > 1 else group[:1]
                made.append(Assignment(self._worker_on[group[0]], task, devices))
                self._busy.add(group)
        return made

    def finished(self, worker: str, task_id: str, ok: bool = True) -> None:
        self._busy = {g for g in self._busy if self._worker_on.get(g[0]) != worker}

    def worker_lost(self, worker: str) -> object:
        self._busy = {g for g in self._busy if self._worker_on.get(g[0]) != worker}
        self._worker_on = {gpu: w for gpu, w in self._worker_on.items() if w != worker}
        return None

    @property
    def done(self) -> bool:
        return not any(self._fifo.values())


# --------------------------------------------------------------------------- engine


@dataclass
class Outcome:
    makespan: float
    utilisation: float
    loads: dict[str, int]  # model -> loads
    workers: dict[str, int]  # model -> workers that ran it
    worker_count: int  # workers that ran anything, replacements included
    oversubscribed: int  # items started on GPUs without the memory they need
    ooms: int  # CUDA OOMs: the injected one, plus every oversubscription
    early: int  # items started before their dependencies finished
    stuck: int  # items never run (crashed and given-up items excluded)
    skipped: int  # items the scheduler gave up on
    crashed: int
    spacers: int  # items left alone in a queue before the end: xdist needs a spacer behind each
    ran: int = 0  # items this node started (finished or crashed)
    unplaceable: dict[str, str] = field(default_factory=dict)


def simulate(make: Callable[[Callable[[], float]], Scheduler], workload: Workload) -> Outcome:
    """Run a scheduler to completion on the workload's node: one worker per GPU, each running its queue in order."""
    crash_at = crash_time(workload, [workload.gpus]) if workload.realistic else None
    (outcome,) = run_nodes(workload, [workload.gpus], lambda clock, node: make(clock), crash_at=crash_at)
    return outcome


class SimBoard:
    """The claims of a campaign's run directory, as the simulated nodes share them: first come, first served.

    The rules of `pytest_invarlock.claims.ClaimBoard` on disk (an item is claimed once; a finished one is
    done for every node), without files; `Node(k)` is what node k's policy sees of the others (the real
    nodes read it from each other's claim and node files).
    """

    def __init__(self, node_gpus: Sequence[Sequence[Gpu]]) -> None:
        self.holder: dict[str, int] = {}
        self.finished: set[str] = set()
        self.starts: Counter[str] = Counter()
        self.node_gpus = [[g.total_gb for g in gpus] for gpus in node_gpus]
        self._open: dict[int, Counter[str]] = defaultdict(Counter)  # node -> model -> unfinished claims

    def node(self, k: int) -> SimNode:
        return SimNode(self, k)

    def finish(self, node: int, task: Task) -> None:
        self.finished.add(task.id)
        if self.holder.get(task.id) == node:
            self._open[node][task.model] -= 1

    def revisit(self, node: int, policy: Policy) -> None:
        """What a node's adapter does each time it dispatches: settle the tasks finished elsewhere, set aside
        those another node claimed."""
        for task_id in policy.taken:
            if task_id in self.finished:
                policy.taken_ended(task_id, finished=True)
        for task_id, holder in self.holder.items():
            if holder != node and task_id not in self.finished:
                policy.taken_elsewhere(task_id)


@dataclass(frozen=True)
class SimNode:
    """Node k's view of the shared board (the policy's `Campaign`)."""

    board: SimBoard
    k: int

    def claim(self, task: Task) -> Claim:
        if task.id in self.board.finished:
            return Claim.DONE
        holder = self.board.holder.setdefault(task.id, self.k)
        if holder != self.k:
            return Claim.TAKEN
        self.board._open[self.k][task.model] += 1
        return Claim.MINE

    def workers_on(self, model: str) -> int:
        return sum(models[model] for other, models in self.board._open.items() if other != self.k)

    def node_gpus(self) -> list[list[float]]:
        return [gpus for j, gpus in enumerate(self.board.node_gpus) if j != self.k]


def run_nodes(
    workload: Workload,
    node_gpus: Sequence[Sequence[Gpu]],
    make: Callable[[Callable[[], float], int], Scheduler],
    *,
    board: SimBoard | None = None,
    crash_at: float | None = None,
) -> list[Outcome]:
    """Run one scheduler per node on a shared clock until every node is done; one Outcome per node.

    Nodes share the workload's items through `board` (claims at run time, or each node its shard).
    Realistic mode crashes one worker (of the first node) at `crash_at` seconds.
    """
    now = 0.0
    realistic = workload.realistic
    rng = random.Random(workload.seed * 7919 + 17)
    schedulers = [make(lambda: now, k) for k in range(len(node_gpus))]
    totals = {(k, g.index): g.total_gb for k, gpus in enumerate(node_gpus) for g in gpus}
    reserve = {(k, g.index): g.total_gb - g.free_gb for k, gpus in enumerate(node_gpus) for g in gpus}
    queues: dict[str, deque[Assignment]] = {}
    node_of: dict[str, int] = {}
    home: dict[str, int] = {}
    for k, gpus in enumerate(node_gpus):
        for gpu in gpus:
            worker = _worker_name(k, gpu.index, len(node_gpus))
            queues[worker], home[worker], node_of[worker] = deque(), gpu.index, k
            schedulers[k].add_worker(worker, gpu.index)
    running: dict[str, tuple[Assignment, float, float]] = {}  # worker -> (assignment, real peak GB, end time)
    residue: dict[str, float] = {}  # worker -> GB it keeps on its home once it ran something
    events: list[tuple[float, int, str, str]] = []  # (time, order, kind, worker or node)
    order = 0
    held: dict[str, str] = {}
    loads: list[Counter[tuple[str, str]]] = [Counter() for _ in node_gpus]
    busy_gpu_seconds = [0.0] * len(node_gpus)
    finished: list[set[str]] = [set() for _ in node_gpus]
    crashed: list[set[str]] = [set() for _ in node_gpus]
    oversubscribed, ooms, early = [0] * len(node_gpus), [0] * len(node_gpus), [0] * len(node_gpus)
    lone: list[set[str]] = [set() for _ in node_gpus]
    probed_at: list[float | None] = [None] * len(node_gpus)
    ended_at = [0.0] * len(node_gpus)
    spawned = [len(gpus) for gpus in node_gpus]

    def push(at: float, kind: str, worker: str) -> None:
        nonlocal order
        heapq.heappush(events, (at, order, kind, worker))
        order += 1

    def used_on(k: int, device: int) -> float:
        used = reserve[k, device] + sum(gb for w, gb in residue.items() if node_of[w] == k and home.get(w) == device)
        return used + sum(peak / len(a.devices) for w, (a, peak, _) in running.items() if node_of[w] == k and device in a.devices)

    def start(worker: str, assignment: Assignment) -> None:
        k, task = node_of[worker], assignment.task
        seconds = workload.seconds[task.id]
        if board is not None:
            board.starts[task.id] += 1
        if held.get(worker) != task.model:
            seconds += workload.load_seconds[task.model]
            held[worker] = task.model
            loads[k][task.model, worker] += 1
        peak = task.mem_gb * (rng.uniform(*PEAK_OF_PLAN) if realistic else 1.0)
        for device in assignment.devices:
            if used_on(k, device) + peak / len(assignment.devices) > totals[k, device] + 1e-9:
                oversubscribed[k] += 1
                ooms[k] += 1
                break
        ooms[k] += task.id == workload.oom_task
        settled = finished[k] | crashed[k] | (board.finished if board is not None else set())
        early[k] += not {d for d in task.deps if d in ids} <= settled
        running[worker] = (assignment, peak, now + seconds)
        busy_gpu_seconds[k] += seconds * len(assignment.devices)
        push(now + seconds, "end", worker)

    def observe(k: int) -> None:
        scheduler = schedulers[k]
        if not realistic or not isinstance(scheduler, Policy):
            return
        last = probed_at[k]
        if last is not None and now - last < PROBE_INTERVAL_S:
            return
        probed_at[k] = now
        for gpu in node_gpus[k]:
            scheduler.observe_free(gpu.index, gpu.total_gb - used_on(k, gpu.index) - rng.uniform(0, READ_NOISE_GB))

    def settle(worker: str, assignment: Assignment) -> None:
        if board is not None:
            board.finish(node_of[worker], assignment.task)

    ids = {t.id for t in workload.tasks}
    if crash_at is not None:
        push(crash_at, "crash", "0")
    while True:
        for k, scheduler in enumerate(schedulers):
            if board is not None and isinstance(scheduler, Policy):
                board.revisit(k, scheduler)
            observe(k)
            for assignment in scheduler.schedule():
                queues[assignment.worker].append(assignment)
            if not scheduler.done:
                lone[k].update(q[0].task.id for w, q in queues.items() if node_of[w] == k and len(q) == 1)
        for worker, queue in queues.items():
            if worker not in running and queue:
                start(worker, queue[0])
        if not events:
            break
        now, _, kind, worker = heapq.heappop(events)
        if kind == "arrive":
            queues[worker] = deque()
            schedulers[node_of[worker]].add_worker(worker, home[worker])
        elif kind == "crash":
            k = int(worker)
            victims = sorted(w for w in running if node_of[w] == k)
            if victims:
                victim = rng.choice(victims)
                assignment, _, ends = running.pop(victim)
                busy_gpu_seconds[k] -= (ends - now) * len(assignment.devices)
                crashed[k].add(assignment.task.id)
                settle(victim, assignment)
                events[:] = [e for e in events if not (e[2] == "end" and e[3] == victim)]
                heapq.heapify(events)
                schedulers[k].worker_lost(victim)
                del queues[victim]
                residue.pop(victim, None)
                replacement = _worker_name(k, spawned[k], len(node_gpus))
                spawned[k] += 1
                home[replacement], node_of[replacement] = home[victim], k
                push(now + REPLACEMENT_S, "arrive", replacement)
        else:
            k = node_of[worker]
            assignment, _, _ = running.pop(worker)
            queues[worker].popleft()
            finished[k].add(assignment.task.id)
            ended_at[k] = now
            settle(worker, assignment)
            if realistic and worker not in residue:
                residue[worker] = rng.uniform(*RESIDUE_GB)
            schedulers[k].finished(worker, assignment.task.id, True)

    outcomes = []
    for k, scheduler in enumerate(schedulers):
        per_model_workers = Counter(model for model, _ in loads[k])
        unplaceable = dict(scheduler.unplaceable) if isinstance(scheduler, Policy) else {}
        makespan = ended_at[k] if board is not None else now
        outcomes.append(
            Outcome(
                makespan=makespan,
                utilisation=busy_gpu_seconds[k] / (len(node_gpus[k]) * makespan) if makespan else 0.0,
                loads={model: sum(n for (m, _), n in loads[k].items() if m == model) for model in per_model_workers},
                workers=dict(per_model_workers),
                worker_count=len({w for _, w in loads[k]}),
                oversubscribed=oversubscribed[k],
                ooms=ooms[k],
                early=early[k],
                stuck=0 if board is not None else len(workload.tasks) - len(finished[k]) - len(crashed[k]) - len(unplaceable),
                skipped=len(unplaceable),
                crashed=len(crashed[k]),
                spacers=len(lone[k]),
                ran=len(finished[k]) + len(crashed[k]),
                unplaceable=unplaceable,
            )
        )
    return outcomes


def _worker_name(node: int, index: int, nodes: int) -> str:
    return f"gw{index}" if nodes == 1 else f"n{node + 1}:gw{index}"


# --------------------------------------------------------------------------- report

STRATEGIES: dict[str, Callable[[Workload], Callable[[Callable[[], float]], Scheduler]]] = {
    "invarlock": lambda w: lambda clock: Policy(w.tasks, w.gpus, clock=clock),
    "small_first": lambda w: lambda clock: Policy(w.tasks, w.gpus, clock=clock, affinity=False),
    "xdist_worksteal": lambda w: lambda clock: XdistWorksteal(w.tasks),
    "static_per_model": lambda w: lambda clock: StaticPerModel(w),
}
DESCRIPTIONS = {
    "invarlock": "invarlock policy",
    "small_first": "seed small_first (no affinity)",
    "xdist_worksteal": "xdist worksteal",
    "static_per_model": "seed static (model per GPU)",
}


def result_line(strategy: str, workload: Workload, out: Outcome, bound: float) -> str:
    return (
        f"RESULT strategy={strategy} suite={workload.suite} gpus={workload.spec} realistic={int(workload.realistic)} "
        f"makespan_over_bound={out.makespan / bound:.2f} skipped={out.skipped + out.stuck} "
        f"oversubscribed={out.oversubscribed} ooms={out.ooms} loads={sum(out.loads.values())} workers={out.worker_count}"
    )


def report(workload: Workload) -> tuple[list[str], bool]:
    bound = lower_bound(workload)
    outcomes = {name: simulate(make(workload), workload) for name, make in STRATEGIES.items()}
    static = outcomes["static_per_model"].makespan
    lines = [
        f"### {workload.name}: {len(workload.tasks)} items, {len({t.model for t in workload.tasks})} models, "
        f"lower bound {bound / 3600:.2f} h",
        "",
        "| strategy | makespan h | / bound | / static | GPU util | loads (workers) | extra loads | OOM starts | early starts | crashed | spacers |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, out in outcomes.items():
        extra = sum(out.loads[m] - out.workers[m] for m in out.loads)
        lines.append(
            f"| {DESCRIPTIONS[name]} | {out.makespan / 3600:.2f} | {out.makespan / bound:.2f} | {out.makespan / static:.2f} | "
            f"{out.utilisation:.0%} | {sum(out.loads.values())} ({sum(out.workers.values())}) | {extra} | "
            f"{out.oversubscribed} | {out.early} | {out.crashed} | {out.spacers} |"
        )
    ours = outcomes["invarlock"]
    target = TARGET_VS_BOUND_REALISTIC if workload.realistic else TARGET_VS_BOUND
    checks = {
        f"makespan <= {target:.2f} x lower bound": ours.makespan <= target * bound,
        f"makespan <= {TARGET_VS_STATIC:.2f} x static": ours.makespan <= TARGET_VS_STATIC * static,
        "no oversubscription": ours.oversubscribed == 0,
        "nothing skipped": ours.skipped == 0 and ours.stuck == 0,
        "every item ran once, none early": ours.early == 0 and ours.stuck == 0,
    }
    if not workload.realistic:
        checks["loads per model <= workers that ran it"] = all(ours.loads[m] <= ours.workers[m] for m in ours.loads)
    lines += ["", "targets for the invarlock policy: " + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in checks.items())]
    if ours.unplaceable:
        lines += [f"  given up: {tid}: {why}" for tid, why in sorted(ours.unplaceable.items())[:5]]
    lines += ["", *(result_line(name, workload, out, bound) for name, out in outcomes.items()), ""]
    return lines, all(checks.values())


def parse_cluster(spec: str) -> list[str]:
    """'2*8x80+2*8x180' -> the --gpus spec of each node: ['8x80', '8x80', '8x180', '8x180']."""
    nodes: list[str] = []
    for term in spec.split("+"):
        count, _, node = term.strip().rpartition("*")
        if not node or (count and not count.strip().isdigit()):
            raise ValueError(f"--cluster {spec!r}: write nodes as [COUNT*]GPUS joined by '+', e.g. 2*8x80+2*8x180.")
        parse_gpu_spec(node)  # a bad node spec says what is wrong with it
        nodes += [node.strip()] * int(count or 1)
    return nodes


def cluster_report(suite_name: str, nodes: Sequence[str], seed: int, *, realistic: bool, strategy: str) -> tuple[list[str], bool]:
    """A campaign on several nodes: every node claims work at run time (`claims`), or runs `--shard K/N` (`shards`).

    One workload (the same duration for an item wherever it runs), one policy per node; the makespan is
    the last item's end on any node, against `cluster_bound` of the whole cluster.
    """
    items = suite_items(suite_name)
    workload = build_workload(suite_name, nodes[0], seed, realistic=realistic, items=items)
    node_gpus = [realistic_gpus(spec) if realistic else parse_gpu_spec(spec) for spec in nodes]
    bound = cluster_bound(workload, node_gpus)
    board = SimBoard(node_gpus)
    if strategy == "claims":
        timed = timed_tasks(workload.tasks, items)

        def make(clock: Callable[[], float], k: int) -> Scheduler:
            return Policy(timed, node_gpus[k], clock=clock, queue_depth=1, campaign=board.node(k))

    else:
        split = split_items(items, len(nodes))  # what every node computes for --shard K/N

        def make(clock: Callable[[], float], k: int) -> Scheduler:
            return Policy([t for t, i in zip(workload.tasks, items) if split[i.param_id] == k], node_gpus[k], clock=clock)

    outcomes = run_nodes(workload, node_gpus, make, board=board, crash_at=crash_time(workload, node_gpus) if realistic else None)
    makespan = max(o.makespan for o in outcomes)
    twice = sum(n - 1 for n in board.starts.values() if n > 1)
    skipped = sum(o.skipped for o in outcomes)
    never = len(workload.tasks) - len(board.starts) - skipped
    target = TARGET_VS_BOUND_REALISTIC if realistic else TARGET_VS_BOUND
    met = makespan <= target * bound and twice == 0 and never == 0 and not any(o.oversubscribed for o in outcomes)
    line = (
        f"CLUSTER strategy={strategy} suite={suite_name} nodes={len(nodes)} gpus={'+'.join(_counted(nodes))} "
        f"realistic={int(realistic)} makespan_h={makespan / 3600:.2f} bound_h={bound / 3600:.2f} "
        f"makespan_over_bound={makespan / bound:.3f} run_twice={twice} never_run={never} skipped={skipped} "
        f"oversubscribed={sum(o.oversubscribed for o in outcomes)} loads={sum(sum(o.loads.values()) for o in outcomes)} "
        f"node_items={','.join(str(o.ran) for o in outcomes)} node_makespans_h={','.join(f'{o.makespan / 3600:.2f}' for o in outcomes)}"
    )
    return [line], met or strategy != "claims"


def _counted(nodes: Sequence[str]) -> list[str]:
    """['8x80', '8x80', '8x180'] -> ['2*8x80', '8x180']: the --cluster spelling."""
    runs: list[tuple[str, int]] = []
    for node in nodes:
        if runs and runs[-1][0] == node:
            runs[-1] = (node, runs[-1][1] + 1)
        else:
            runs.append((node, 1))
    return [f"{n}*{node}" if n > 1 else node for node, n in runs]


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the crash and the OOM (default 0)")
    parser.add_argument("--suite", help="one suite instead of the default cases (needs --gpus or --cluster)")
    parser.add_argument("--gpus", help="the node, in --gpus syntax (8x80, 8x80:79, 80:79,24:23)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--realistic", action="store_true", help="realistic mode only")
    mode.add_argument("--ideal", action="store_true", help="ideal mode only")
    parser.add_argument("--nodes", type=int, default=None, help="a campaign on N nodes of --gpus instead of one node")
    parser.add_argument("--cluster", help="a campaign on these nodes: [COUNT*]GPUS joined by '+', e.g. 2*8x80+2*8x180")
    args = parser.parse_args(argv)
    if args.suite and not (args.gpus or args.cluster):
        parser.error("--suite needs --gpus (one node, or --nodes N of them) or --cluster")
    if args.cluster and (args.gpus or args.nodes):
        parser.error("--cluster names every node: leave --gpus and --nodes out")
    try:
        cluster = parse_cluster(args.cluster) if args.cluster else None
    except ValueError as exc:
        parser.error(str(exc))
    modes = [True] if args.realistic else [False] if args.ideal else [False, True]
    began = time.perf_counter()
    all_met = True
    if args.nodes is None and cluster is None:
        for suite_name, gpu_spec in [(args.suite, args.gpus)] if args.suite else list(WORKLOADS):
            for realistic in modes:
                lines, met = report(build_workload(suite_name, gpu_spec, args.seed, realistic=realistic))
                print("\n".join(lines))
                all_met &= met
    if cluster is not None:
        clusters = [(args.suite or "b200", cluster)]
    elif args.nodes is not None:
        clusters = [(s, [g] * args.nodes) for s, g in ([(args.suite, args.gpus)] if args.suite else WORKLOADS)]
    else:
        clusters = [] if args.suite else [(s, parse_cluster(c)) for s, c in CLUSTERS]
    if clusters:
        print("### campaigns on several nodes: work claimed at run time (claims), or --shard K/N per node (shards)\n")
        for suite_name, nodes in clusters:
            for realistic in modes:
                for strategy in ("claims", "shards"):
                    lines, met = cluster_report(suite_name, nodes, args.seed, realistic=realistic, strategy=strategy)
                    print("\n".join(lines))
                    all_met &= met
    print(f"\nsimulated in {time.perf_counter() - began:.1f} s (seed {args.seed})")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
