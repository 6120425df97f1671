"""Discrete-event simulation of GPU scheduling on the shipped suites: no torch, no GPU, under a minute.

    python benchmarks/simulate.py [--seed N]

It drives the plugin's own `Policy` (the one the xdist adapter drives) with simulated GPUs and item
durations, and compares it on the same workloads with three baselines: the seed's small_first
greedy (the same policy with affinity off), pytest-xdist's own `--dist worksteal` (blind to memory
and dependencies) and the seed's static layout (each model owns a GPU, or a GPU group, and runs
all its items there). The workloads are the suites' own items (`load_suite` + `build_items`).

Model of time: an item takes SECONDS_PER_GB[kind] per GB of weights (benchmarks in proportion to
their size), times seeded log-normal noise; a worker that switches to another model first pays a
load. Sharded items take as long as unsharded ones but hold every GPU of their set.
"""

from __future__ import annotations

import argparse
import heapq
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass
from typing import Callable, Iterable, Protocol, Sequence

from pytest_invarlock.scheduling.inventory import Gpu, parse_gpu_spec
from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, build_items, items_for_test
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.verdict.phase0 import benchmark_size
from pytest_invarlock.scheduling.policy import Assignment, Policy, Task
from pytest_invarlock.scheduling.xdist_adapter import tasks_from_items
from pytest_invarlock.campaign.suite import load_suite

WORKLOADS = (("b200", "8x180"), ("full", "8x80"))
SECONDS_PER_GB = {"calibration": 2.0, "clean": 2.6, "stress": 2.6, "error": 2.4}  # edits: create + certify
BENCHMARK_SECONDS_PER_GB_PER_ITEM = 2.0 / 10_000  # mmlu (14042 items): 2.8 s per GB of weights
LOAD_SECONDS, LOAD_GB_PER_S = 10.0, 2.0
NOISE_SIGMA = 0.15
TARGET_VS_BOUND, TARGET_VS_STATIC = 1.10, 0.80


# --------------------------------------------------------------------------- workload


@dataclass(frozen=True)
class Workload:
    name: str
    gpus: list[Gpu]
    tasks: list[Task]  # in pytest's collection order
    seconds: dict[str, float]  # task id -> duration without the model load
    load_seconds: dict[str, float]  # model -> load time

    def width(self, task: Task, margin: MarginRule = MarginRule()) -> int:
        """GPUs the memory plan gives a task on this (homogeneous) node."""
        return required_gpus(task.mem_gb, max(margin.usable_gb(g.total_gb) for g in self.gpus))


def build_workload(suite_name: str, gpu_spec: str, seed: int) -> Workload:
    """The suite's items in pytest's collection order: test function by test function."""
    suite_items = build_items(load_suite(suite_name))
    items = [item for test in (*CERTIFY_TESTS, BENCHMARK_TEST) for item in items_for_test(suite_items, test)]
    tasks = tasks_from_items(items)
    noise = random.Random(seed)
    seconds = {}
    for item, task in zip(items, tasks):
        per_gb = BENCHMARK_SECONDS_PER_GB_PER_ITEM * benchmark_size(item.benchmark) if item.benchmark else SECONDS_PER_GB[item.kind]
        seconds[task.id] = per_gb * task.model_size_gb * noise.lognormvariate(0.0, NOISE_SIGMA)
    loads = {t.model: LOAD_SECONDS + t.model_size_gb / LOAD_GB_PER_S for t in tasks}
    return Workload(f"{suite_name} on {gpu_spec}", parse_gpu_spec(gpu_spec), tasks, seconds, loads)


def lower_bound(workload: Workload) -> float:
    """max(all GPU-seconds / GPUs, longest dependency chain); one load per model counted as work."""
    tasks = {t.id: t for t in workload.tasks}
    work = sum(workload.seconds[t.id] * workload.width(t) for t in workload.tasks)
    work += sum(load * max(workload.width(t) for t in workload.tasks if t.model == m) for m, load in workload.load_seconds.items())
    chain: dict[str, float] = {}

    def finish(task_id: str) -> float:
        if task_id not in chain:
            task = tasks[task_id]
            chain[task_id] = workload.seconds[task_id] + max((finish(d) for d in task.deps), default=0.0)
        return chain[task_id]

    return max(work / len(workload.gpus), max(map(finish, tasks)))


# --------------------------------------------------------------------------- baselines


class Scheduler(Protocol):
    def add_worker(self, worker: str, gpu_index: int) -> None: ...
    def schedule(self) -> list[Assignment]: ...
    def finished(self, worker: str, task_id: str, ok: bool = True) -> None: ...
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
            if fifo and group not in self._busy:
                task = fifo.popleft()
                devices = group if self._workload.width(task) > 1 else group[:1]
                made.append(Assignment(self._worker_on[group[0]], task, devices))
                self._busy.add(group)
        return made

    def finished(self, worker: str, task_id: str, ok: bool = True) -> None:
        self._busy = {g for g in self._busy if self._worker_on[g[0]] != worker}

    @property
    def done(self) -> bool:
        return not any(self._fifo.values())


# --------------------------------------------------------------------------- engine


@dataclass(frozen=True)
class Outcome:
    makespan: float
    utilisation: float
    loads: dict[str, int]  # model -> loads
    workers: dict[str, int]  # model -> workers that ran it
    oversubscribed: int  # items started on GPUs without the memory they need
    early: int  # items started before their dependencies finished
    stuck: int  # items never run
    spacers: int  # items left alone in a queue before the end: xdist needs a spacer behind each


def simulate(make: Callable[[Callable[[], float]], Scheduler], workload: Workload) -> Outcome:
    """Run a scheduler to completion: one worker per GPU, each running its queue in order."""
    now = 0.0
    scheduler = make(lambda: now)
    totals = {g.index: g.total_gb for g in workload.gpus}
    queues: dict[str, deque[Assignment]] = {}
    for gpu in workload.gpus:
        queues[f"gw{gpu.index}"] = deque()
        scheduler.add_worker(f"gw{gpu.index}", gpu.index)
    running: dict[str, Assignment] = {}
    events: list[tuple[float, str]] = []
    held: dict[str, str] = {}
    loads: Counter[tuple[str, str]] = Counter()
    busy_gpu_seconds = 0.0
    finished: set[str] = set()
    oversubscribed = early = 0
    lone: set[str] = set()

    def start(worker: str, assignment: Assignment) -> None:
        nonlocal busy_gpu_seconds, oversubscribed, early
        task = assignment.task
        seconds = workload.seconds[task.id]
        if held.get(worker) != task.model:
            seconds += workload.load_seconds[task.model]
            held[worker] = task.model
            loads[task.model, worker] += 1
        for device in assignment.devices:
            share = task.mem_gb / len(assignment.devices)
            used = sum(a.task.mem_gb / len(a.devices) for a in running.values() if device in a.devices)
            if share + used > totals[device]:
                oversubscribed += 1
                break
        early += not task.deps <= finished
        running[worker] = assignment
        busy_gpu_seconds += seconds * len(assignment.devices)
        heapq.heappush(events, (now + seconds, worker))

    while True:
        for assignment in scheduler.schedule():
            queues[assignment.worker].append(assignment)
        if not scheduler.done:
            lone.update(q[0].task.id for q in queues.values() if len(q) == 1)
        for worker, queue in queues.items():
            if worker not in running and queue:
                start(worker, queue[0])
        if not events:
            break
        now, worker = heapq.heappop(events)
        task = running.pop(worker).task
        queues[worker].popleft()
        finished.add(task.id)
        scheduler.finished(worker, task.id, True)

    per_model_workers = Counter(model for model, _ in loads)
    return Outcome(
        makespan=now,
        utilisation=busy_gpu_seconds / (len(workload.gpus) * now) if now else 0.0,
        loads={model: sum(n for (m, _), n in loads.items() if m == model) for model in per_model_workers},
        workers=dict(per_model_workers),
        oversubscribed=oversubscribed,
        early=early,
        stuck=len(workload.tasks) - len(finished),
        spacers=len(lone),
    )


# --------------------------------------------------------------------------- report

STRATEGIES: dict[str, Callable[[Workload], Callable[[Callable[[], float]], Scheduler]]] = {
    "invarlock policy": lambda w: lambda clock: Policy(w.tasks, w.gpus, clock=clock),
    "seed small_first (no affinity)": lambda w: lambda clock: Policy(w.tasks, w.gpus, clock=clock, affinity=False),
    "xdist worksteal": lambda w: lambda clock: XdistWorksteal(w.tasks),
    "seed static (model per GPU)": lambda w: lambda clock: StaticPerModel(w),
}


def report(workload: Workload) -> tuple[list[str], bool]:
    bound = lower_bound(workload)
    outcomes = {name: simulate(make(workload), workload) for name, make in STRATEGIES.items()}
    static = outcomes["seed static (model per GPU)"].makespan
    lines = [
        f"### {workload.name}: {len(workload.tasks)} items, {len({t.model for t in workload.tasks})} models, "
        f"lower bound {bound / 3600:.2f} h",
        "",
        "| strategy | makespan h | / bound | / static | GPU util | loads (workers) | extra loads | OOM starts | early starts | spacers |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, out in outcomes.items():
        extra = sum(out.loads[m] - out.workers[m] for m in out.loads)
        lines.append(
            f"| {name} | {out.makespan / 3600:.2f} | {out.makespan / bound:.2f} | {out.makespan / static:.2f} | "
            f"{out.utilisation:.0%} | {sum(out.loads.values())} ({sum(out.workers.values())}) | {extra} | "
            f"{out.oversubscribed} | {out.early} | {out.spacers} |"
        )
    ours = outcomes["invarlock policy"]
    checks = {
        f"makespan <= {TARGET_VS_BOUND:.2f} x lower bound": ours.makespan <= TARGET_VS_BOUND * bound,
        f"makespan <= {TARGET_VS_STATIC:.2f} x static": ours.makespan <= TARGET_VS_STATIC * static,
        "no oversubscription": ours.oversubscribed == 0,
        "loads per model <= workers that ran it": all(ours.loads[m] <= ours.workers[m] for m in ours.loads),
        "every item ran, none early": ours.stuck == 0 and ours.early == 0,
    }
    lines += ["", "targets for the invarlock policy: " + "; ".join(f"{k}: {'ok' if v else 'MISSED'}" for k, v in checks.items()), ""]
    return lines, all(checks.values())


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0, help="seed of the duration noise (default 0)")
    args = parser.parse_args(argv)
    began = time.perf_counter()
    all_met = True
    for suite_name, gpu_spec in WORKLOADS:
        lines, met = report(build_workload(suite_name, gpu_spec, args.seed))
        print("\n".join(lines))
        all_met &= met
    print(f"simulated in {time.perf_counter() - began:.1f} s (seed {args.seed})")
    return 0 if all_met else 1


if __name__ == "__main__":
    raise SystemExit(main())
