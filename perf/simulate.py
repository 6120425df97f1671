"""Discrete-event simulation of GPU scheduling on the shipped suites: no torch, no GPU, seconds.

    .venv/bin/python perf/simulate.py [--seed N]                  # every case below; exit 1 if a target is missed
    .venv/bin/python perf/simulate.py --suite full --gpus 8x80:79 --realistic
    .venv/bin/python perf/simulate.py --suite b200 --gpus 8x180 --nodes 4

It drives the plugin's own `Policy` (the one the xdist adapter drives) with simulated GPUs and item
durations, and compares it on the same workloads with three baselines: the seed's small_first greedy
(the same policy with affinity off), pytest-xdist's own `--dist worksteal` (blind to memory and
dependencies) and the seed's static layout (each model owns a GPU, or a GPU group, and runs all its
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
- one worker crash at 30% of the lower bound (its running item is lost; a replacement comes 60 s
  later on the same GPU) and one CUDA OOM (an item fails at 40% of its run and is retried once).

Each case prints its table, then one last line per strategy:
`RESULT strategy=<name> suite=<suite> gpus=<spec> realistic=<0|1> makespan_over_bound=<x.xx> skipped=<n>
oversubscribed=<n> ooms=<n> loads=<n> workers=<n>`. Sharded cases (N nodes, `--shard K/N` per node)
print `CLUSTER ...` lines: makespan of the slowest node against the cluster's lower bound.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, Item, build_items, items_for_test
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.scheduling.cost import item_seconds, load_seconds
from pytest_invarlock.scheduling.inventory import Gpu, format_gpu_spec, parse_gpu_spec
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.policy import Assignment, Policy, Task
from pytest_invarlock.scheduling.shards import shard_loads, split_items
from pytest_invarlock.scheduling.tasks import tasks_from_items
from pytest_invarlock.scheduling.xdist_adapter import PROBE_INTERVAL_S

WORKLOADS = (("b200", "8x180"), ("full", "8x80"))
CLUSTERS = (("b200", "8x180", (1, 2, 4)), ("full", "8x80", (1, 2)))
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


def suite_items(suite_name: str) -> list[Item]:
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
    suite_name: str, gpu_spec: str, seed: int, *, realistic: bool = False, items: Sequence[Item] | None = None
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
    return cluster_bound([workload], len(workload.gpus))


def cluster_bound(workloads: Sequence[Workload], gpus: int) -> float:
    work = sum(_gpu_seconds(w) for w in workloads)
    return max(work / gpus, max(map(_longest_chain, workloads)))


def _gpu_seconds(workload: Workload) -> float:
    work = sum(workload.seconds[t.id] * workload.width(t) for t in workload.tasks)
    return work + sum(
        load * max(workload.width(t) for t in workload.tasks if t.model == m) for m, load in workload.load_seconds.items()
    )


def _longest_chain(workload: Workload) -> float:
    tasks = {t.id: t for t in workload.tasks}
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
    """The seed's static layout: each model owns a GPU (a group of them when its largest item needs
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
    unplaceable: dict[str, str] = field(default_factory=dict)


def simulate(make: Callable[[Callable[[], float]], Scheduler], workload: Workload) -> Outcome:
    """Run a scheduler to completion: one worker per GPU, each running its queue in order."""
    now = 0.0
    realistic = workload.realistic
    rng = random.Random(workload.seed * 7919 + 17)
    scheduler = make(lambda: now)
    totals = {g.index: g.total_gb for g in workload.gpus}
    reserve = {g.index: g.total_gb - g.free_gb for g in workload.gpus}
    queues: dict[str, deque[Assignment]] = {}
    home: dict[str, int] = {}
    for gpu in workload.gpus:
        worker = f"gw{gpu.index}"
        queues[worker], home[worker] = deque(), gpu.index
        scheduler.add_worker(worker, gpu.index)
    running: dict[str, tuple[Assignment, float, float]] = {}  # worker -> (assignment, real peak GB, end time)
    residue: dict[str, float] = {}  # worker -> GB it keeps on its home once it ran something
    events: list[tuple[float, int, str, str]] = []  # (time, order, kind, worker)
    order = 0
    held: dict[str, str] = {}
    loads: Counter[tuple[str, str]] = Counter()
    busy_gpu_seconds = 0.0
    finished: set[str] = set()
    crashed: set[str] = set()
    oversubscribed = ooms = early = 0
    lone: set[str] = set()
    probed_at: float | None = None
    crash_time = CRASH_AT * lower_bound(workload) if realistic else None
    spawned = len(queues)

    def push(at: float, kind: str, worker: str) -> None:
        nonlocal order
        heapq.heappush(events, (at, order, kind, worker))
        order += 1

    def used_on(device: int) -> float:
        used = reserve[device] + sum(gb for w, gb in residue.items() if home.get(w) == device)
        return used + sum(peak / len(a.devices) for a, peak, _ in running.values() if device in a.devices)

    def start(worker: str, assignment: Assignment) -> None:
        nonlocal busy_gpu_seconds, oversubscribed, early, ooms
        task = assignment.task
        seconds = workload.seconds[task.id]
        if held.get(worker) != task.model:
            seconds += workload.load_seconds[task.model]
            held[worker] = task.model
            loads[task.model, worker] += 1
        peak = task.mem_gb * (rng.uniform(*PEAK_OF_PLAN) if realistic else 1.0)
        for device in assignment.devices:
            if used_on(device) + peak / len(assignment.devices) > totals[device] + 1e-9:
                oversubscribed += 1
                ooms += 1
                break
        ooms += task.id == workload.oom_task
        early += not {d for d in task.deps if d in ids} <= finished | crashed
        running[worker] = (assignment, peak, now + seconds)
        busy_gpu_seconds += seconds * len(assignment.devices)
        push(now + seconds, "end", worker)

    def observe() -> None:
        nonlocal probed_at
        if not realistic or not isinstance(scheduler, Policy):
            return
        if probed_at is not None and now - probed_at < PROBE_INTERVAL_S:
            return
        probed_at = now
        for device, total in totals.items():
            scheduler.observe_free(device, total - used_on(device) - rng.uniform(0, READ_NOISE_GB))

    ids = {t.id for t in workload.tasks}
    if crash_time is not None:
        push(crash_time, "crash", "")
    while True:
        observe()
        for assignment in scheduler.schedule():
            queues[assignment.worker].append(assignment)
        if not scheduler.done:
            lone.update(q[0].task.id for q in queues.values() if len(q) == 1)
        for worker, queue in queues.items():
            if worker not in running and queue:
                start(worker, queue[0])
        if not events:
            break
        now, _, kind, worker = heapq.heappop(events)
        if kind == "arrive":
            queues[worker] = deque()
            scheduler.add_worker(worker, home[worker])
        elif kind == "crash":
            victims = sorted(running)
            if victims:
                victim = rng.choice(victims)
                assignment, _, ends = running.pop(victim)
                busy_gpu_seconds -= (ends - now) * len(assignment.devices)
                crashed.add(assignment.task.id)
                events[:] = [e for e in events if not (e[2] == "end" and e[3] == victim)]
                heapq.heapify(events)
                scheduler.worker_lost(victim)
                del queues[victim]
                residue.pop(victim, None)
                replacement = f"gw{spawned}"
                spawned += 1
                home[replacement] = home[victim]
                push(now + REPLACEMENT_S, "arrive", replacement)
        else:
            assignment, _, _ = running.pop(worker)
            queues[worker].popleft()
            finished.add(assignment.task.id)
            if realistic and worker not in residue:
                residue[worker] = rng.uniform(*RESIDUE_GB)
            scheduler.finished(worker, assignment.task.id, True)

    per_model_workers = Counter(model for model, _ in loads)
    unplaceable = dict(scheduler.unplaceable) if isinstance(scheduler, Policy) else {}
    return Outcome(
        makespan=now,
        utilisation=busy_gpu_seconds / (len(workload.gpus) * now) if now else 0.0,
        loads={model: sum(n for (m, _), n in loads.items() if m == model) for model in per_model_workers},
        workers=dict(per_model_workers),
        worker_count=len({w for _, w in loads}),
        oversubscribed=oversubscribed,
        ooms=ooms,
        early=early,
        stuck=len(workload.tasks) - len(finished) - len(crashed) - len(unplaceable),
        skipped=len(unplaceable),
        crashed=len(crashed),
        spacers=len(lone),
        unplaceable=unplaceable,
    )


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


def cluster_report(suite_name: str, gpu_spec: str, nodes: int, seed: int, *, realistic: bool) -> tuple[list[str], float]:
    """N nodes, each running `--shard K/N` of the suite with the policy; the slowest node sets the makespan."""
    items = suite_items(suite_name)
    gpus = realistic_gpus(gpu_spec) if realistic else parse_gpu_spec(gpu_spec)
    gpu_gb = round(max(g.total_gb for g in gpus))
    assignment = split_items(items, nodes, gpu_gb)
    shard_work = shard_loads(items, assignment, nodes, gpu_gb)
    workloads = [
        build_workload(
            suite_name, gpu_spec, seed * 101 + k, realistic=realistic, items=[i for i in items if assignment[i.param_id] == k]
        )
        for k in range(nodes)
    ]
    outcomes = [simulate(STRATEGIES["invarlock"](w), w) for w in workloads]
    bound = cluster_bound(workloads, nodes * len(gpus))
    makespan = max(o.makespan for o in outcomes)
    balance = max(shard_work) / (sum(shard_work) / nodes)
    spec = workloads[0].spec
    line = (
        f"CLUSTER suite={suite_name} nodes={nodes} gpus={spec} realistic={int(realistic)} makespan_h={makespan / 3600:.2f} "
        f"bound_h={bound / 3600:.2f} makespan_over_bound={makespan / bound:.2f} shard_balance={balance:.3f} "
        f"skipped={sum(o.skipped + o.stuck for o in outcomes)} oversubscribed={sum(o.oversubscribed for o in outcomes)} "
        f"node_makespans_h={','.join(f'{o.makespan / 3600:.2f}' for o in outcomes)}"
    )
    return [line], makespan / bound


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise, the crash and the OOM (default 0)")
    parser.add_argument("--suite", help="one suite instead of the default cases (needs --gpus)")
    parser.add_argument("--gpus", help="the node, in --gpus syntax (8x80, 8x80:79, 80:79,24:23)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--realistic", action="store_true", help="realistic mode only")
    mode.add_argument("--ideal", action="store_true", help="ideal mode only")
    parser.add_argument("--nodes", type=int, default=None, help="simulate N nodes with --shard K/N instead of one node")
    args = parser.parse_args(argv)
    if bool(args.suite) != bool(args.gpus):
        parser.error("--suite and --gpus go together")
    modes = [True] if args.realistic else [False] if args.ideal else [False, True]
    began = time.perf_counter()
    all_met = True
    cases = [(args.suite, args.gpus)] if args.suite else list(WORKLOADS)
    if args.nodes is None:
        for suite_name, gpu_spec in cases:
            for realistic in modes:
                lines, met = report(build_workload(suite_name, gpu_spec, args.seed, realistic=realistic))
                print("\n".join(lines))
                all_met &= met
    clusters = (
        [(args.suite, args.gpus, (args.nodes,))]
        if args.suite and args.nodes
        else ([(s, g, (args.nodes,)) for s, g in WORKLOADS] if args.nodes else list(CLUSTERS) if not args.suite else [])
    )
    if clusters:
        print("### sharded campaigns: N nodes, each runs --shard K/N with the invarlock policy\n")
        for suite_name, gpu_spec, node_counts in clusters:
            for realistic in modes:
                for nodes in node_counts:
                    lines, _ = cluster_report(suite_name, gpu_spec, nodes, args.seed, realistic=realistic)
                    print("\n".join(lines))
    print(f"\nsimulated in {time.perf_counter() - began:.1f} s (seed {args.seed})")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
