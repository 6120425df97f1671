"""Edited models on disk over a simulated campaign: the peak the budget allows and the rebuilds it costs.

    .venv/bin/python perf/edit_disk.py                       # full on 8x80 and b200 on 8x180
    .venv/bin/python perf/edit_disk.py --suite full --gpus 8x80 --budget-gb 300

It runs the plugin's `Policy` through `perf/simulate.py`'s discrete-event node (no torch, no GPU), records
when each item starts and ends on its worker, and replays the edit lifecycle of `edit_lifecycle` on that
timeline: an item holds its edited model from its start to its end; a missing edit is built, or rebuilt when it was evicted before; edits
over the budget go in `scheduling.disk_plan.eviction_order` (no pending item needs it first, then least
recently used), never one an item holds. Edit sizes are the models' declared weights; the default budget is
the disk plan's edits in flight. Prints one line per case:
`EDITS suite=<s> gpus=<spec> budget_gb=<b> peak_gb=<p> keep_all_peak_gb=<k> builds=<n> rebuilds=<r> edits=<e>`.
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from simulate import build_workload, simulate, suite_items

from pytest_invarlock.campaign.failures import spec_of
from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.scheduling.disk_plan import GIB, ModelDisk, OnDisk, edits_in_flight, eviction_order
from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.policy import Assignment, Policy, Task
from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile

CASES = (("full", "8x80"), ("b200", "8x180"))


class Recording(Policy):
    """The policy, noting when each task is dispatched and when it ends."""

    def __init__(self, tasks: list[Task], gpus: list[Gpu], *, clock: Callable[[], float]) -> None:
        super().__init__(tasks, gpus, clock=clock)
        self.clock = clock
        self.sent: dict[str, float] = {}
        self.ended: dict[str, float] = {}
        self.order: dict[str, list[str]] = defaultdict(list)  # worker -> its tasks in the order it runs them

    def schedule(self) -> list[Assignment]:
        made = super().schedule()
        for assignment in made:
            self.sent.setdefault(assignment.task.id, self.clock())
            self.order[assignment.worker].append(assignment.task.id)
        return made

    def started(self) -> dict[str, float]:
        """When each task started: once sent, and once its worker finished the task before it."""
        out = {}
        for tasks in self.order.values():
            free = 0.0
            for task in tasks:
                out[task] = max(self.sent[task], free)
                free = self.ended.get(task, out[task])
        return out

    def finished(self, worker: str, task_id: str, ok: bool = True) -> None:
        self.ended[task_id] = self.clock()
        super().finished(worker, task_id, ok)


def replay(items: dict[str, SuiteItem], recording: Recording, budget: int) -> dict[str, int]:
    """The edit lifecycle on the recorded timeline: peak bytes on disk, builds and rebuilds."""
    edit_of = {tid: spec for tid, item in items.items() if (spec := spec_of(item)) is not None}
    name_of = {tid: f"{items[tid].model.name}|{spec}" for tid, spec in edit_of.items()}
    size = {name_of[tid]: int(model_profile(items[tid].model).weights_gb * GIB) for tid in edit_of}
    pending: dict[str, set[str]] = defaultdict(set)
    for tid, name in name_of.items():
        pending[name].add(tid)
    started = recording.started()
    events = sorted(
        [(started[t], 1, "start", t) for t in name_of if t in started]
        + [(recording.ended[t], 0, "end", t) for t in name_of if t in recording.ended]
    )
    on_disk: dict[str, float] = {}  # edit -> last used
    in_use: dict[str, int] = defaultdict(int)
    built: set[str] = set()
    builds = rebuilds = peak = keep_all = 0
    open_edits: set[str] = set()
    for at, _, kind, tid in events:
        name = name_of[tid]
        if kind == "start":
            if name not in on_disk:
                total = sum(size[e] for e in on_disk) + size[name]
                candidates = [OnDisk(e, size[e], used, bool(pending[e])) for e, used in on_disk.items() if not in_use[e]]
                for victim in eviction_order(candidates):
                    if total <= budget:
                        break
                    del on_disk[victim.name]
                    total -= victim.nbytes
                builds += 1
                rebuilds += name in built
                built.add(name)
            on_disk[name] = at
            in_use[name] += 1
            open_edits.add(name)
        else:
            in_use[name] -= 1
            pending[name].discard(tid)
            on_disk[name] = at
            if not pending[name]:
                open_edits.discard(name)
        peak = max(peak, sum(size[e] for e in on_disk))
        keep_all = max(keep_all, sum(size[e] for e in open_edits))
    return {"peak": peak, "keep_all": keep_all, "builds": builds, "rebuilds": rebuilds, "edits": len(built)}


def run_case(suite: str, spec: str, budget_gb: float | None, seed: int) -> str:
    listed = suite_items(suite)
    workload = build_workload(suite, spec, seed, items=listed)
    items = {task.id: item for task, item in zip(workload.tasks, listed, strict=True)}
    largest = max(MarginRule().usable_gb(g.total_gb, g.free_gb) for g in workload.gpus)
    models = []
    for name in {item.model.name for item in items.values()}:
        editing = [i for i in items.values() if i.model.name == name and spec_of(i) is not None]
        if editing:
            width = max(required_gpus(item_need_gb(i), largest) for i in editing)
            models.append(ModelDisk(name, int(model_profile(editing[0].model).weights_gb * GIB), len(editing), width))
    budget = (
        edits_in_flight(models, gpus=len(workload.gpus), workers=len(workload.gpus))
        if budget_gb is None
        else int(budget_gb * GIB)
    )
    holder: list[Recording] = []

    def make(clock: Callable[[], float]) -> Recording:
        holder.append(Recording(workload.tasks, workload.gpus, clock=clock))
        return holder[-1]

    simulate(make, workload)
    figures = replay(items, holder[0], budget)
    return (
        f"EDITS suite={suite} gpus={spec} budget_gb={budget / GIB:.0f} peak_gb={figures['peak'] / GIB:.0f} "
        f"keep_all_peak_gb={figures['keep_all'] / GIB:.0f} builds={figures['builds']} rebuilds={figures['rebuilds']} "
        f"edits={figures['edits']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite")
    parser.add_argument("--gpus")
    parser.add_argument("--budget-gb", type=float, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    cases = [(args.suite, args.gpus)] if args.suite and args.gpus else list(CASES)
    for suite, spec in cases:
        print(run_case(suite, spec, args.budget_gb, args.seed), flush=True)


if __name__ == "__main__":
    main()
