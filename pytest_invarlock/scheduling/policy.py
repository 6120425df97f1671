"""Scheduling policy: which worker runs which task next. Pure: no pytest, no xdist, no torch.

One class serves the xdist adapter, the discrete-event simulator and the property tests, so it only
sees task ids, GPUs and workers. Its contract with whoever drives it:

- a worker is one process bound to one home GPU; it runs the tasks it is given one at a time, in
  the order given, and the head of its queue is the task running now. (xdist starts an item only
  once the next one has arrived or a shutdown, so when the policy leaves a worker with a single
  task the adapter must send a spacer item behind it, or a shutdown once `done`.)
- `schedule()` returns every assignment to make now; `finished()` and `worker_lost()` report back.

The choices, in order: dependencies (a task waits until each of its deps has finished); memory fit
against the home GPU's budget (`MarginRule`: its free memory as last read while none of our tasks
ran there, less the safety margin and the allocator residue; the same rule plans and dispatches,
so a plan made on a node whose free memory is below its total holds when dispatching); model
affinity (a worker keeps to the model it holds, so each model is loaded about once per worker);
then work stealing by the B200 bash harness's small_first priority, preferring models the worker has not held
before. A task larger than every single GPU runs sharded on a set of GPUs owned by one worker:
the other GPUs of the set are idle when it is placed and take no work until it ends. MIG slices
are never part of a set (CUDA shows a process one MIG device at most). When no such
set is idle the worker gathers one: it lends itself and the GPUs that will drain soonest (by the
tasks' estimated seconds and loads where they carry them, as a campaign's do; else the shortest
queues), which take nothing new until the set is complete. A gather whose set no longer holds its
task (a later reading came in lower) is dissolved and the task picks a set again.

Giving up: a task larger than the whole node's budget is unplaceable from the start. When nothing
of ours runs, every reading is of an idle GPU: a ready task that the node's budget cannot hold
then is given up, alone and with its numbers; every other ready task stays and is tried again. A
GPU whose worker was lost keeps its tasks waiting for the replacement.

Failure handling: a dependency that failed, crashed or could not be placed still releases its
dependents; when the shared work they need failed for good, the driver drops them (`drop`) before
they are dispatched, and they end at once with that failure. A task that was running when its
worker died is run once more (`worker_lost(retry_running=True)`), on another GPU where there is
one, with a larger memory need when it was given back after an OOM; a second death reports it
crashed. The tasks queued behind it had not started and are scheduled again. Among tasks of equal
priority a worker prefers those of the group (model and variant) it ran last, so the items of one
edited model run together and its copy on disk is needed for a short time.

A node of a campaign (`campaign`: nodes that share a run directory and claim work at run time)
assigns a task only once it claimed it. A task another node holds waits aside (`taken`) until the
driver says that node finished it (settled here too, releasing its dependents) or let it go (ready
again); a task finished elsewhere, or that this node cannot hold, is settled without running. Its
workers queue one task each (queue_depth=1: a claim is taken only by a worker free to run it), and
the order changes, because on a cluster one long item started late decides the makespan: a worker
keeps to its model; switching, it joins the model whose work left per worker (here and on the other
nodes) plus twice the item's own time, less the load, is largest, so large models start first and
end with their short items. Where the nodes' GPUs differ, the rank of a task among the node types
comes before all that (`node_mix`): a node of smaller GPUs starts the work that is wider on it only
as far as the split of the work left (a running task at half its estimate) says it owes some (then
first); a node of larger GPUs starts the work that is narrower on it first. The estimates are the
tasks' `seconds` and `load_seconds` (`cost.timed_tasks`). perf/simulate.py measures it.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from pytest_invarlock.scheduling.claim_policy import Claim
from pytest_invarlock.scheduling.inventory import Gpu, capacity_gb
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.node_mix import NodeMix, Split

# The B200 bash harness's small_first priorities (docs/verdict.md, "The harnesses this project replaces"), keyed by
# item kind. Our kinds map onto its tasks: setup (free tasks) = SETUP 90; calibration = CALIBRATION_RUN 85;
# eval_baseline (an lm-eval benchmark of the baseline) = EVAL_BASELINE 80; clean/stress (create +
# certify an edit) and benchmark (of an edit) = EVAL/CERTIFY_EDIT 65; error (create + certify an
# injected fault) = CERTIFY_ERROR 55. GENERATE_PRESET has no task here (the preset fixture makes it),
# and neither has CREATE_EDITS_BATCH: an item edits a device copy of the baseline kept in host RAM,
# so its peak is weights + 8 GB (memory.item_memory_gb), not the batch's 2 x weights + 8.
BASE_PRIORITY = {
    "setup": 90,
    "calibration": 85,
    "eval_baseline": 80,
    "edit": 65,
    "clean": 65,
    "stress": 65,
    "benchmark": 65,
    "error": 55,
}
SIZE_BOOSTS = ((30.0, 30), (70.0, 20), (100.0, 10))  # model weights below this many GB -> boost
UNBLOCK_BOOST, UNBLOCK_CAP = 2, 40
AGE_STEP_S, AGE_CAP = 300.0, 10
FAIRNESS_PENALTY, FAIRNESS_CAP = 3, 15
TAIL_WEIGHT = 2.0  # a campaign node adds this many times a task's own time to its model's work left per worker
LAGGING_BOOST, LAGGING_RATIO = 15, 0.5  # a model whose settled share is below half the node's gets +15
RUNNING_LEFT = 0.5  # a running task is half done on average: the split of a campaign's work counts half its estimate


@dataclass(frozen=True)
class Task:
    """One schedulable unit; deps are ids of tasks that must have finished first."""

    id: str
    model: str
    kind: str
    mem_gb: float
    model_size_gb: float
    deps: frozenset[str] = frozenset()
    group: str = ""  # tasks that share a product (an edited model): run together when priority ties
    seconds: float = 0.0  # estimated run time and model load (`cost.timed_tasks`); only a campaign's node uses them
    load_seconds: float = 0.0


class Campaign(Protocol):
    """The other nodes of a campaign, as a node's policy sees them (`claims.ClaimBoard`, or the simulator's)."""

    def claim(self, task: Task) -> Claim:
        """Claim `task` for this node (MINE), or say why not."""
        ...

    def workers_on(self, model: str) -> int:
        """Workers of the other nodes running or holding a claim on `model` now."""
        ...

    def node_gpus(self) -> Sequence[Sequence[float]]:
        """The GPUs (total GB each) of every other node working now."""
        ...


@dataclass(frozen=True)
class Assignment:
    """Run `task` on `worker`; devices starts with the worker's home GPU and lists every GPU it may use."""

    worker: str
    task: Task
    devices: tuple[int, ...]


@dataclass(frozen=True)
class Lost:
    """What a dead worker leaves: the task it was running (crashed) and those queued behind it (rescheduled)."""

    crashed: Task | None
    requeued: tuple[Task, ...]


@dataclass(frozen=True)
class PolicyStats:
    loads: dict[str, dict[str, int]]  # model -> worker -> times the worker switched to that model
    failed: int
    crashed: int
    unplaceable: int
    retried: int = 0  # running when their worker died, run once more
    dropped: int = 0  # dropped before dispatch: work they needed had failed


def _index_tasks(tasks: Iterable[Task]) -> dict[str, Task]:
    indexed: dict[str, Task] = {}
    for task in tasks:
        if task.id in indexed:
            raise ValueError(f"task id {task.id!r} appears twice; every task needs its own id.")
        if task.kind not in BASE_PRIORITY:
            raise ValueError(f"task {task.id!r} has unknown kind {task.kind!r}; use one of {', '.join(BASE_PRIORITY)}.")
        indexed[task.id] = task
    return indexed


class _Ranked:
    """Ready tasks of one scheduling round, per model, best first; sharded ones apart."""

    def __init__(self) -> None:
        self.score: dict[str, float] = {}
        self.single: dict[str, list[Task]] = defaultdict(list)
        self.sharded: dict[str, list[Task]] = defaultdict(list)

    def take(self, task: Task) -> None:
        for lists in (self.single, self.sharded):
            if task in lists.get(task.model, ()):
                lists[task.model].remove(task)


def priority(task: Task, *, dependents: int, waited_s: float, in_flight_same_model: int, lagging: bool = False) -> float:
    """small_first: kind base + size boost + unblock boost + age boost + lagging boost - fairness penalty (capped)."""
    size_boost = next((boost for limit, boost in SIZE_BOOSTS if task.model_size_gb < limit), 0)
    return (
        BASE_PRIORITY[task.kind]
        + size_boost
        + min(UNBLOCK_CAP, UNBLOCK_BOOST * dependents)
        + min(AGE_CAP, waited_s // AGE_STEP_S)
        + (LAGGING_BOOST if lagging else 0)
        - min(FAIRNESS_CAP, FAIRNESS_PENALTY * in_flight_same_model)
    )


def lagging_models(settled: Counter[str], totals: Counter[str]) -> set[str]:
    """Models whose share of settled tasks is below LAGGING_RATIO x the node-wide share (none before any settles)."""
    done, total = sum(settled.values()), sum(totals.values())
    if not done or not total:
        return set()
    overall = done / total
    return {model for model, n in totals.items() if settled[model] / n < LAGGING_RATIO * overall}


class Policy:
    def __init__(
        self,
        tasks: Iterable[Task],
        gpus: Sequence[Gpu],
        *,
        queue_depth: int = 2,
        clock: Callable[[], float] = time.monotonic,
        margin: MarginRule = MarginRule(),
        affinity: bool = True,
        campaign: Campaign | None = None,
    ) -> None:
        """`affinity=False` is the B200 bash harness's plain small_first greedy, kept to benchmark against; `campaign`:
        this node shares its tasks with other nodes (see the module docstring; pass queue_depth=1)."""
        if queue_depth < 1:
            raise ValueError(f"queue_depth must be at least 1, got {queue_depth}.")
        if not gpus:
            raise ValueError("the policy needs at least one GPU; pass the probed inventory or a --gpus spec such as 8x80.")
        self._tasks = _index_tasks(tasks)
        self._gpus = {gpu.index: gpu for gpu in gpus}
        self._free = {gpu.index: gpu.free_gb for gpu in gpus}
        self._margin, self._depth, self._clock, self._affinity = margin, queue_depth, clock, affinity
        self._campaign = campaign
        self._mix = NodeMix(tuple(gpu.total_gb for gpu in gpus), ())  # a campaign's node reads the others' each round
        self._split = Split(0.0, 0.0, frozenset())
        self._taken: set[str] = set()  # held by another node of the campaign: neither ready nor waiting
        self._mine: set[str] = set()  # claimed by this node (a gather keeps its claim until it is placed)
        self._aside = 0  # tasks claims set aside so far (a round that sets one aside ranks again)
        self._left_s: defaultdict[str, float] = defaultdict(
            float
        )  # model -> estimated seconds of its tasks neither settled nor taken
        for task in self._tasks.values():
            self._left_s[task.model] += task.seconds
        self._queues: dict[str, list[Assignment]] = {}
        self._busy_until: dict[str, float] = {}  # worker -> when its queue should be done, by the tasks' estimates
        self._home: dict[str, int] = {}
        self._holding: dict[str, str] = {}
        self._history: dict[str, set[str]] = defaultdict(set)
        self._gathers: dict[str, tuple[str, tuple[int, ...]]] = {}  # primary worker -> (task id, devices)
        self._in_flight: Counter[str] = Counter()  # model -> tasks queued on workers
        self._loads: dict[str, Counter[str]] = defaultdict(Counter)
        self._failed: set[str] = set()
        self._crashed: set[str] = set()
        self._unplaceable: dict[str, str] = {}
        self._settled: set[str] = set()
        self._dependents: dict[str, list[str]] = defaultdict(list)
        self._waiting: dict[str, set[str]] = {}  # blocked task -> its unsettled dependencies
        self._link_dependencies()
        self._ready: set[str] = set()
        self._since: dict[str, float] = {}
        self._orphaned: set[int] = set()  # GPUs whose workers were all lost: their replacement is coming
        self._retried: dict[str, int] = {}  # task run once more after its worker died -> the GPU it died on
        self._dropped: dict[str, str] = {}
        self._last_group: dict[str, str] = {}
        self._model_totals: Counter[str] = Counter(t.model for t in self._tasks.values())
        self._model_settled: Counter[str] = Counter()
        now = clock()
        for task_id in [t for t, deps in self._waiting.items() if not deps]:
            self._make_ready(task_id, now)
        self._wide: set[str] = set()  # ready tasks no single home GPU holds now; recomputed each round
        node_capacity = self._capacity()
        for task in self._tasks.values():
            if task.mem_gb > node_capacity:
                self._give_up(task.id, self._shortfall(task, live=False))

    # ------------------------------------------------------------------ driver API

    def add_worker(self, worker: str, gpu_index: int) -> None:
        if worker in self._queues:
            raise ValueError(f"worker {worker!r} is already known; a replacement needs a new id.")
        if gpu_index not in self._gpus:
            raise ValueError(f"worker {worker!r} asks for GPU {gpu_index}, which is not in the inventory ({sorted(self._gpus)}).")
        self._queues[worker] = []
        self._home[worker] = gpu_index
        self._orphaned.discard(gpu_index)

    def schedule(self) -> list[Assignment]:
        """Every assignment to make now; queues are filled up to queue_depth."""
        made: list[Assignment] = []
        if self._campaign is not None:
            self._see_node_mix(self._campaign)
        while True:
            aside = self._aside
            made += self._complete_gathers()
            made += self._fill_queues()
            made += self._complete_gathers()  # a gather opened on idle GPUs completes at once
            if self._aside != aside:
                continue  # claims set tasks aside, and settling some readied others: rank again
            if any(self._queues.values()) or not self._queues or self.done:
                return made
            # Nothing of ours runs: the readings are of idle GPUs. Give up on what they cannot hold, alone.
            if self._give_up_on_unfit():
                continue
            if self._orphaned or not (self._ready or self._gathers):
                return made  # what is left waits for the worker replacing a lost one, or for other nodes
            self._give_up_on_ready()  # cannot happen by the rules above; ends the run rather than hang it

    def finished(self, worker: str, task_id: str, ok: bool = True) -> None:
        queue = self._queue_of(worker)
        position = next((i for i, a in enumerate(queue) if a.task.id == task_id), None)
        if position is None:
            raise ValueError(f"worker {worker!r} reports task {task_id!r}, which is not queued on it.")
        task = queue.pop(position).task
        self._in_flight[task.model] -= 1
        if not ok:
            self._failed.add(task_id)
        self._settle(task_id)

    def worker_lost(
        self, worker: str, *, running: bool = True, retry_running: bool = False, need_gb: float | None = None
    ) -> Lost:
        """Forget a dead worker. `running`: whether the head of its queue had started (False when the
        worker died between items, e.g. in the spacer): then nothing crashed and its whole queue is given back.
        `retry_running`: the running task is run once more instead of being reported crashed, on another
        GPU where there is one; `need_gb` first raises its memory need (given back for a larger placement)."""
        queue = self._queue_of(worker)
        home = self._home[worker]
        del self._queues[worker], self._home[worker]
        if not self._workers_on(home):
            self._orphaned.add(home)
        self._holding.pop(worker, None)
        gather = self._gathers.pop(worker, None)
        if gather:
            self._ready.add(gather[0])
        for assignment in queue:
            self._in_flight[assignment.task.model] -= 1
        head = queue[0].task if queue and running else None
        crashed = head if head is not None and not retry_running else None
        if crashed:
            self._failed.add(crashed.id)
            self._crashed.add(crashed.id)
            self._settle(crashed.id)
        if head is not None and retry_running:
            self._retried[head.id] = home
            if need_gb is not None and need_gb > head.mem_gb:
                self._tasks[head.id] = replace(head, mem_gb=need_gb)
        requeued = tuple(self._tasks[a.task.id] for a in queue[1 if crashed else 0 :])
        now = self._clock()
        for task in requeued:
            self._ready.add(task.id)
            self._since.setdefault(task.id, now)
        return Lost(crashed, requeued)

    def was_retried(self, task_id: str) -> bool:
        """Whether the task already ran once more after its worker died (a second death reports it crashed)."""
        return task_id in self._retried

    def drop(self, task_ids: Iterable[str], reason: str) -> list[str]:
        """Drop tasks not yet dispatched (waiting or ready): work they need failed. Returns the ids dropped;
        tasks already queued on a worker stay there (they end at once on their own)."""
        dropped = []
        for task_id in task_ids:
            if task_id not in self._tasks or task_id in self._settled or task_id in self._queued():
                continue
            for primary, (gathered, _) in list(self._gathers.items()):
                if gathered == task_id:
                    del self._gathers[primary]
            self._waiting.pop(task_id, None)
            self._ready.discard(task_id)
            self._dropped[task_id] = reason
            self._failed.add(task_id)
            self._settle(task_id)
            dropped.append(task_id)
        return dropped

    def _queued(self) -> set[str]:
        return {a.task.id for queue in self._queues.values() for a in queue}

    def observe_free(self, gpu_index: int, free_gb: float) -> bool:
        """Live free memory on a GPU; taken into account (True) only while none of our tasks use the GPU."""
        if gpu_index not in self._gpus:
            raise ValueError(f"GPU {gpu_index} is not in the inventory ({sorted(self._gpus)}).")
        if not self._idle(gpu_index):
            return False
        self._free[gpu_index] = min(max(0.0, free_gb), self._gpus[gpu_index].total_gb)
        return True

    def budget_gb(self, gpu_index: int) -> float:
        """What an item may plan for on this GPU now (`MarginRule.usable_gb` of its last idle reading)."""
        return self._budget(gpu_index)

    @property
    def done(self) -> bool:
        """Nothing is left to dispatch (workers may still be running their queues)."""
        return not self._ready and not self._gathers and not self._waiting and not self._taken

    @property
    def unplaceable(self) -> dict[str, str]:
        """Task id -> why it can never run here."""
        return dict(self._unplaceable)

    @property
    def stats(self) -> PolicyStats:
        return PolicyStats(
            loads={model: dict(per_worker) for model, per_worker in self._loads.items()},
            failed=len(self._failed),
            crashed=len(self._crashed),
            unplaceable=len(self._unplaceable),
            retried=len(self._retried),
            dropped=len(self._dropped),
        )

    # ------------------------------------------------------------------ task states

    def _link_dependencies(self) -> None:
        """Index who waits on whom; refuse cycles, which would block their tasks forever."""
        for task in self._tasks.values():
            known = {dep for dep in task.deps if dep in self._tasks}  # deselected deps: the fixtures cover them
            for dep in known:
                self._dependents[dep].append(task.id)
            self._waiting[task.id] = known
        indegree = {t: len(deps) for t, deps in self._waiting.items()}
        frontier = [t for t, n in indegree.items() if n == 0]
        while frontier:
            for dependent in self._dependents[frontier.pop()]:
                indegree[dependent] -= 1
                if indegree[dependent] == 0:
                    frontier.append(dependent)
        cycle = sorted(t for t, n in indegree.items() if n > 0)
        if cycle:
            raise ValueError(f"task dependencies form a cycle through {', '.join(cycle[:5])}; no order can satisfy them.")

    def _make_ready(self, task_id: str, now: float) -> None:
        del self._waiting[task_id]
        self._ready.add(task_id)
        self._since[task_id] = now

    def _settle(self, task_id: str) -> None:
        self._settled.add(task_id)
        self._model_settled[self._tasks[task_id].model] += 1
        self._left_s[self._tasks[task_id].model] -= self._tasks[task_id].seconds
        now = self._clock()
        for dependent in self._dependents[task_id]:
            waiting = self._waiting.get(dependent)
            if waiting is not None:
                waiting.discard(task_id)
                if not waiting:
                    self._make_ready(dependent, now)

    def _give_up(self, task_id: str, reason: str) -> None:
        self._waiting.pop(task_id, None)
        self._ready.discard(task_id)
        self._unplaceable[task_id] = reason
        self._settle(task_id)

    def _give_up_on_unfit(self) -> bool:
        """With nothing of ours running: give up on each ready task the node's budget cannot hold; True if any.

        Open gathers were completed or dissolved just before (`_complete_gathers`), so none holds a
        GPU here; the ready tasks that fit stay ready, and the caller tries them again.
        """
        capacity = self._capacity()
        unfit = sorted(t for t in self._ready if self._tasks[t].mem_gb > capacity)
        for task_id in unfit:
            self._give_up(task_id, self._shortfall(self._tasks[task_id], live=True))
        return bool(unfit)

    def _give_up_on_ready(self) -> None:
        for primary, (task_id, _) in list(self._gathers.items()):
            del self._gathers[primary]
            self._ready.add(task_id)
        for task_id in sorted(self._ready):
            self._give_up(
                task_id,
                "the scheduler found no placement although the node's budget holds it "
                f"(a scheduler bug: please report it): {self._shortfall(self._tasks[task_id], live=True)}",
            )

    def _queue_of(self, worker: str) -> list[Assignment]:
        try:
            return self._queues[worker]
        except KeyError:
            raise ValueError(f"unknown worker {worker!r}; add it with add_worker() first.") from None

    # ------------------------------------------------------------------ other nodes (a campaign)

    @property
    def taken(self) -> frozenset[str]:
        """Tasks another node of the campaign holds: the driver looks at them again from time to time."""
        return frozenset(self._taken)

    def taken_elsewhere(self, task_id: str) -> None:
        """The driver read that another node claimed `task_id`: set it aside (no claim attempt needed)."""
        if task_id in self._taken or task_id in self._settled or task_id in self._mine:
            return
        self._ready.discard(task_id)
        self._waiting.pop(task_id, None)
        self._set_taken(task_id)

    def finished_elsewhere(self, task_id: str) -> None:
        """The driver read that another node finished `task_id`: settle it here too (releasing its dependents)."""
        if task_id in self._settled or task_id in self._mine:
            return
        if task_id in self._taken:
            self.taken_ended(task_id, finished=True)
            return
        self._ready.discard(task_id)
        self._waiting.pop(task_id, None)
        self._settle(task_id)

    def taken_ended(self, task_id: str, *, finished: bool) -> None:
        """The node holding `task_id` finished it (settled here too) or let it go unfinished (back in line)."""
        if task_id not in self._taken:
            raise ValueError(f"task {task_id!r} is not held by another node; only a taken task can end elsewhere.")
        task = self._tasks[task_id]
        self._taken.discard(task_id)
        self._left_s[task.model] += task.seconds
        if finished:
            self._settle(task_id)
            return
        self._waiting[task_id] = {d for d in task.deps if d in self._tasks and d not in self._settled}
        if not self._waiting[task_id]:
            self._make_ready(task_id, self._clock())

    def _set_taken(self, task_id: str) -> None:
        self._taken.add(task_id)
        self._left_s[self._tasks[task_id].model] -= self._tasks[task_id].seconds

    def _claimed(self, task: Task) -> bool:
        """Whether this node may run `task` now (always, outside a campaign); a task it may not run is set aside."""
        verdict = Claim.MINE if self._campaign is None or task.id in self._mine else self._campaign.claim(task)
        if verdict == Claim.MINE:
            self._mine.add(task.id)
            return True
        self._aside += 1
        self._ready.discard(task.id)
        if verdict == Claim.TAKEN:
            self._set_taken(task.id)
        else:  # finished elsewhere, or not for this node: nothing left to do here
            self._settle(task.id)
        return False

    def _see_node_mix(self, campaign: Campaign) -> None:
        """Read the other nodes' GPUs and, where they differ from ours, split the work left between the node types."""
        self._mix = NodeMix(
            tuple(gpu.total_gb for gpu in self._gpus.values()), tuple(map(tuple, campaign.node_gpus())), self._margin
        )
        if self._mix.mixed:
            running = self._taken | self._queued()
            self._split = self._mix.split(
                (task.model, task.seconds * (RUNNING_LEFT if task_id in running else 1.0), task.mem_gb)
                for task_id, task in self._tasks.items()
                if task_id not in self._settled
            )

    def _campaign_key(self, campaign: Campaign, worker: str, task: Task, tier: int) -> tuple[float, ...]:
        """A campaign node's order: the task's rank among node types (`node_mix.NodeMix.rank`); then the
        worker's own model; then the most work left per worker."""
        others = sum(1 for w, queue in self._queues.items() if w != worker and queue and self._holding.get(w) == task.model)
        per_worker = self._left_s[task.model] / (1 + others + campaign.workers_on(task.model))
        need = per_worker + TAIL_WEIGHT * task.seconds - (task.load_seconds if tier else 0.0)
        rank = self._mix.rank(task.model, task.mem_gb, self._split) if self._mix.mixed else 0
        return (float(rank), float(min(tier, 1)), -need)

    # ------------------------------------------------------------------ devices

    def _budget(self, device: int) -> float:
        return self._margin.usable_gb(self._gpus[device].total_gb, self._free[device])

    def _capacity(self) -> float:
        return capacity_gb(list(self._gpus.values()), [self._budget(d) for d in self._gpus])

    def _workers_on(self, device: int) -> list[str]:
        return [w for w, home in self._home.items() if home == device]

    def _claim_owner(self, device: int) -> str | None:
        """The worker whose queued sharded task uses `device`, if any."""
        for worker, queue in self._queues.items():
            if any(len(a.devices) > 1 and device in a.devices for a in queue):
                return worker
        return None

    def _lender_to(self, device: int) -> str | None:
        """The gathering worker `device` is lent to, if any."""
        return next((p for p, (_, devices) in self._gathers.items() if device in devices), None)

    def _idle(self, device: int) -> bool:
        return not any(self._queues[w] for w in self._workers_on(device)) and self._claim_owner(device) is None

    def _single_load(self, device: int, *, besides: str) -> float:
        """Worst-case GB the other workers on `device` may be running: the largest task in each queue."""
        return sum(max((a.task.mem_gb for a in self._queues[w]), default=0.0) for w in self._workers_on(device) if w != besides)

    def _fits_alone(self, worker: str, task: Task) -> bool:
        home = self._home[worker]
        return task.mem_gb <= self._budget(home) - self._single_load(home, besides=worker)

    def _grow_set(self, home: int, candidates: Iterable[int], mem_gb: float) -> tuple[int, ...] | None:
        """Home plus as few of `candidates` (taken in the order given) as reach mem_gb, or None."""
        chosen, total = [home], self._budget(home)
        for device in candidates:
            if total >= mem_gb:
                break
            chosen.append(device)
            total += self._budget(device)
        return tuple(chosen) if total >= mem_gb else None

    def _shortfall(self, task: Task, *, live: bool) -> str:
        budgets = sorted(map(self._budget, self._gpus), reverse=True)
        sizes = Counter(round(b, 1) for b in budgets)
        offer = " + ".join(f"{n} x {size:.1f} GB" for size, n in sorted(sizes.items(), reverse=True))
        state = "free now, with nothing of ours running" if live else "usable"
        gpus = f" on {required_gpus(task.mem_gb, budgets[0])} GPU(s)" if budgets[0] > 0 else ""
        mig = (
            "; MIG slices are never combined (CUDA shows a process one slice)" if any(g.mig for g in self._gpus.values()) else ""
        )
        return (
            f"needs {task.mem_gb:.1f} GB{gpus}; this node offers {offer} {state} "
            f"({self._margin.describe()}; {sum(budgets):.1f} GB in all{mig})"
        )

    # ------------------------------------------------------------------ placement

    def _can_receive(self, worker: str) -> bool:
        home = self._home[worker]
        return (
            len(self._queues[worker]) < self._depth
            and worker not in self._gathers
            and self._lender_to(home) is None
            and self._claim_owner(home) in (None, worker)
        )

    def _place_sharded(self, worker: str, task: Task) -> tuple[int, ...] | None:
        """A set of GPUs for a sharded task on `worker`: the set it already holds, or idle GPUs."""
        queue, home = self._queues[worker], self._home[worker]
        if self._gpus[home].mig:
            return None
        if queue and len(queue[-1].devices) > 1 and sum(map(self._budget, queue[-1].devices)) >= task.mem_gb:
            return queue[-1].devices
        if any(self._queues[w] for w in self._workers_on(home) if w != worker):
            return None
        idle = [d for d in self._gpus if d != home and not self._gpus[d].mig and self._idle(d) and self._lender_to(d) is None]
        idle.sort(key=lambda d: (bool(self._workers_on(d)), -self._budget(d), d))
        return self._grow_set(home, idle, task.mem_gb)

    def _drain_s(self, device: int, now: float) -> float:
        """Estimated seconds until the workers on `device` have run their queues (0 where tasks carry no estimates)."""
        return max((max(0.0, self._busy_until[w] - now) for w in self._workers_on(device) if self._queues[w]), default=0.0)

    def _open_gather(self, worker: str, task: Task) -> bool:
        """Reserve the GPUs that drain soonest for `task`; they take nothing new until it is placed."""
        home = self._home[worker]
        if self._gpus[home].mig:
            return False
        spare = [
            d
            for d in self._gpus
            if d != home and not self._gpus[d].mig and self._lender_to(d) is None and self._claim_owner(d) is None
        ]
        now = self._clock()
        spare.sort(
            key=lambda d: (self._drain_s(d, now), sum(len(self._queues[w]) for w in self._workers_on(d)), -self._budget(d), d)
        )
        devices = self._grow_set(home, spare, task.mem_gb)
        if devices is None:
            return False
        self._ready.discard(task.id)
        self._gathers[worker] = (task.id, devices)
        return True

    def _complete_gathers(self) -> list[Assignment]:
        made = []
        for primary, (task_id, devices) in list(self._gathers.items()):
            home, task = self._home[primary], self._tasks[task_id]
            if sum(map(self._budget, devices)) < task.mem_gb:  # a reading came in lower: pick a set again
                del self._gathers[primary]
                self._ready.add(task_id)
                continue
            others_idle = all(self._idle(d) for d in devices[1:])
            home_free = not any(self._queues[w] for w in self._workers_on(home) if w != primary)
            if others_idle and home_free and sum(map(self._budget, devices)) >= task.mem_gb:
                del self._gathers[primary]
                made.append(self._assign(primary, task, devices))
        return made

    def _fill_queues(self) -> list[Assignment]:
        """Round-robin over workers, emptiest queue first, one task each per pass."""
        ready = self._rank_ready()
        made: list[Assignment] = []
        progress = True
        while progress:
            progress = False
            for worker in sorted(self._queues, key=lambda w: (len(self._queues[w]), w)):
                if not self._can_receive(worker):
                    continue
                choice = self._pick(worker, ready)
                if choice:
                    task, devices = choice
                    ready.take(task)
                    made.append(self._assign(worker, task, devices))
                    progress = True
        return made

    def _rank_ready(self) -> _Ranked:
        """Ready tasks per model, best first, scored without the fairness term (which moves as we assign).

        A task is sharded when no home GPU (nor one whose replacement worker is coming) holds it by the
        current readings, so a task the readings no longer fit on one GPU still runs, on a set.
        """
        now = self._clock()
        ranked = _Ranked()
        homes = set(self._home.values()) | self._orphaned or set(self._gpus)
        largest = max(map(self._budget, homes))
        self._wide = {t for t in self._ready if self._tasks[t].mem_gb > largest}
        lagging = lagging_models(self._model_settled, self._model_totals)
        for task_id in self._ready:
            ranked.score[task_id] = priority(
                self._tasks[task_id],
                dependents=sum(1 for d in self._dependents[task_id] if d not in self._settled),
                waited_s=now - self._since[task_id],
                in_flight_same_model=0,
                lagging=self._tasks[task_id].model in lagging,
            )
        if self._campaign is None:
            order = sorted(self._ready, key=lambda t: (-ranked.score[t], self._tasks[t].model_size_gb, t))
        else:  # a model's calibrations first (they unblock the rest), then its longest tasks: its short ones end it
            order = sorted(self._ready, key=lambda t: (self._tasks[t].kind != "calibration", -self._tasks[t].seconds, t))
        for task_id in order:
            task = self._tasks[task_id]
            (ranked.sharded if task.id in self._wide else ranked.single)[task.model].append(task)
        return ranked

    def _tier(self, worker: str, model: str) -> int:
        """0: the model the worker holds; 1: a model new to it; 2: one it held before (a reload)."""
        if not self._affinity or self._holding.get(worker) == model:
            return 0
        return 2 if model in self._history[worker] else 1

    def _pick(self, worker: str, ready: _Ranked) -> tuple[Task, tuple[int, ...]] | None:
        """The best task for `worker` and its GPUs; None when it has nothing to take or starts gathering.

        A task another node holds (or finished) is set aside and the options are drawn again: its model
        may offer the next one."""
        while True:
            for task in self._options(worker, ready):
                if not self._claimed(task):
                    ready.take(task)
                    break
                if task.id not in self._wide:
                    return task, (self._home[worker],)
                devices = self._place_sharded(worker, task)
                if devices:
                    return task, devices
                if self._open_gather(worker, task):
                    ready.take(task)
                    return None
            else:
                return None

    def _options(self, worker: str, ready: _Ranked) -> list[Task]:
        """Each model's best single-GPU task that fits the worker and its best sharded task, best first."""
        options = []
        for model in {*ready.single, *ready.sharded}:
            fairness = min(FAIRNESS_CAP, FAIRNESS_PENALTY * self._in_flight[model])
            single = self._best_single(worker, ready, model)
            sharded = next((t for t in ready.sharded[model] if self._may_take(worker, t)), None)
            for task in filter(None, (single, sharded)):
                tier = self._tier(worker, model)
                first = (float(tier),) if self._campaign is None else self._campaign_key(self._campaign, worker, task, tier)
                key = (*first, fairness - ready.score[task.id], self._other_group(worker, task))
                options.append(((*key, task.model_size_gb, task.id), task))
        return [task for _, task in sorted(options, key=lambda option: option[0])]

    def _best_single(self, worker: str, ready: _Ranked, model: str) -> Task | None:
        """The model's best ready task that fits this worker alone: the highest score, then its last group (a
        campaign's node takes the first that fits: its order is its own, see `_rank_ready`)."""
        best: Task | None = None
        for task in ready.single[model]:  # best first
            if best is not None and (self._campaign is not None or ready.score[task.id] < ready.score[best.id]):
                break
            if not self._fits_alone(worker, task) or not self._may_take(worker, task):
                continue
            if best is None or (self._other_group(worker, task), task.model_size_gb, task.id) < (
                self._other_group(worker, best),
                best.model_size_gb,
                best.id,
            ):
                best = task
        return best

    def _other_group(self, worker: str, task: Task) -> bool:
        return bool(task.group) and task.group != self._last_group.get(worker)

    def _may_take(self, worker: str, task: Task) -> bool:
        """A task run once more after its worker died goes to another GPU while another worker's GPU holds it."""
        died_on = self._retried.get(task.id)
        if died_on is None or self._home[worker] != died_on or task.id in self._wide:
            return True
        return not any(home != died_on and task.mem_gb <= self._budget(home) for home in self._home.values())

    def _assign(self, worker: str, task: Task, devices: tuple[int, ...]) -> Assignment:
        self._ready.discard(task.id)
        assignment = Assignment(worker, task, devices)
        now = self._clock()
        start = max(now, self._busy_until.get(worker, now)) if self._queues[worker] else now
        switch = self._holding.get(worker) != task.model
        self._busy_until[worker] = start + task.seconds + (task.load_seconds if switch else 0.0)
        self._queues[worker].append(assignment)
        self._in_flight[task.model] += 1
        self._last_group[worker] = task.group
        if switch:
            self._loads[task.model][worker] += 1
            self._holding[worker] = task.model
            self._history[worker].add(task.model)
        return assignment
