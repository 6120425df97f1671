"""The scheduling policy: unit cases by hand, then properties over random task sets, GPUs and crashes."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter, deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.scheduling.inventory import Gpu, parse_gpu_spec
from pytest_invarlock.scheduling.memory import MarginRule
from pytest_invarlock.scheduling.policy import BASE_PRIORITY, Policy, Task, priority


def task(task_id: str, model: str = "m", kind: str = "calibration", mem: float = 10.0, size: float = 10.0, deps=()) -> Task:
    return Task(task_id, model, kind, mem, size, frozenset(deps))


def policy(tasks, spec: str = "1x80", workers: int | None = None, **options) -> Policy:
    """A policy with one worker per GPU named w0, w1, ... (or only the first `workers` GPUs)."""
    gpus = parse_gpu_spec(spec)
    made = Policy(tasks, gpus, **options)
    for gpu in gpus[:workers]:
        made.add_worker(f"w{gpu.index}", gpu.index)
    return made


def placed(assignments) -> list[tuple[str, str, tuple[int, ...]]]:
    return [(a.worker, a.task.id, a.devices) for a in assignments]


# --------------------------------------------------------------------------- dependencies


def test_a_task_waits_for_its_dependencies():
    p = policy([task("cal"), task("edit", kind="clean", deps=["cal"])])
    assert placed(p.schedule()) == [("w0", "cal", (0,))]
    p.finished("w0", "cal")
    assert placed(p.schedule()) == [("w0", "edit", (0,))]
    p.finished("w0", "edit")
    assert p.done and p.schedule() == []


def test_a_failed_dependency_releases_its_dependents():
    p = policy([task("cal"), task("edit", kind="clean", deps=["cal"])])
    p.schedule()
    p.finished("w0", "cal", ok=False)
    assert placed(p.schedule()) == [("w0", "edit", (0,))]
    assert p.stats.failed == 1


def test_dependents_of_failed_work_are_dropped_before_dispatch_and_queued_ones_stay():
    tasks = [task("cal"), *(task(f"edit{i}", kind="clean", deps=["cal"]) for i in range(3)), task("other", model="o")]
    p = policy(tasks)
    assert placed(p.schedule()) == [("w0", "cal", (0,)), ("w0", "other", (0,))]
    assert p.drop(["edit0", "edit1", "other", "unknown"], "calibration failed") == ["edit0", "edit1"]  # other is queued
    p.finished("w0", "cal", ok=False)
    assert placed(p.schedule()) == [("w0", "edit2", (0,))]
    assert p.drop(["edit0"], "again") == []  # dropped once
    assert p.stats.dropped == 2 and p.stats.failed == 3


def test_among_equal_priorities_a_worker_keeps_to_the_edit_it_ran_last():
    """The items of one edited model run together, so its copy on disk is needed for a short time."""
    tasks = [  # by id alone they would run 1-a, 2-b, 3-a, 4-b
        Task(tid, "m", "clean", 10.0, 10.0, frozenset(), f"m|{tid[-1]}") for tid in ("1-a", "2-b", "3-a", "4-b")
    ]
    p = policy(tasks, queue_depth=1)
    order = []
    while not p.done:
        (assignment,) = p.schedule()
        order.append(assignment.task.id)
        p.finished("w0", assignment.task.id)
    assert order == ["1-a", "3-a", "2-b", "4-b"]


def test_dependencies_outside_the_task_set_are_ignored():
    """Deselected calibration items: the preset fixture runs what is missing itself."""
    p = policy([task("edit", kind="clean", deps=["deselected"])])
    assert placed(p.schedule()) == [("w0", "edit", (0,))]


@pytest.mark.parametrize(
    ("tasks", "message"),
    [
        ([task("a", deps=["b"]), task("b", deps=["a"])], "cycle through a, b"),
        ([task("a"), task("a")], "'a' appears twice"),
        ([task("a", kind="warmup")], "unknown kind 'warmup'"),
    ],
)
def test_bad_task_sets_are_refused(tasks, message):
    with pytest.raises(ValueError, match=message):
        Policy(tasks, parse_gpu_spec("1x80"))


def test_bad_driver_calls_are_refused():
    with pytest.raises(ValueError, match="at least one GPU"):
        Policy([task("a")], [])
    with pytest.raises(ValueError, match="queue_depth"):
        Policy([task("a")], parse_gpu_spec("1x80"), queue_depth=0)
    p = policy([task("a")])
    with pytest.raises(ValueError, match="GPU 3.*inventory"):
        p.add_worker("w9", 3)
    with pytest.raises(ValueError, match="already known"):
        p.add_worker("w0", 0)
    with pytest.raises(ValueError, match="not queued"):
        p.finished("w0", "a")
    with pytest.raises(ValueError, match="unknown worker 'w7'"):
        p.worker_lost("w7")


def test_without_workers_nothing_is_dispatched_and_nothing_is_given_up():
    p = policy([task("a")], workers=0)
    assert p.schedule() == [] and not p.done and p.unplaceable == {}


# --------------------------------------------------------------------------- priority


def test_priority_adds_the_seed_boosts_and_caps_them():
    small_calibration = task("a", kind="calibration", size=14)
    # 85 base + 30 (< 30 GB) + 40 (30 dependents, capped) + 3 (1000 s waited) - 15 (6 running, capped)
    assert priority(small_calibration, dependents=30, waited_s=1000, in_flight_same_model=6) == 143
    large_benchmark = task("b", kind="benchmark", size=140)
    # 65 base + 0 (>= 100 GB) + 2 (1 dependent) + 10 (age, capped) - 3 (1 running)
    assert priority(large_benchmark, dependents=1, waited_s=99_999, in_flight_same_model=1) == 74
    assert BASE_PRIORITY["calibration"] > BASE_PRIORITY["clean"] > BASE_PRIORITY["error"]


def test_small_models_go_first():
    p = policy([task("big", model="big", size=140, mem=150), task("small", model="small", size=14)], "1x180", queue_depth=1)
    assert placed(p.schedule()) == [("w0", "small", (0,))]


# --------------------------------------------------------------------------- affinity and stealing


def affinity_case(affinity: bool) -> list[str]:
    """a1 runs first; then a's error item competes with b's higher-priority calibration."""
    p = policy(
        [
            task("a1", model="a", size=60),
            task("a2", model="a", kind="error", size=60),
            task("b1", model="b", size=10, deps=["a1"]),
        ],
        queue_depth=1,
        affinity=affinity,
    )
    order = []
    while not p.done:
        (assignment,) = p.schedule()
        order.append(assignment.task.id)
        p.finished("w0", assignment.task.id)
    return order


def test_a_worker_keeps_to_the_model_it_holds():
    assert affinity_case(affinity=True) == ["a1", "a2", "b1"]


def test_without_affinity_priority_alone_decides():
    assert affinity_case(affinity=False) == ["a1", "b1", "a2"]


def test_a_dry_worker_steals_a_model_new_to_it_before_going_back():
    tasks = [
        task("a1", model="a"),
        task("b1", model="b", deps=["a1"]),
        task("a2", model="a", deps=["b1"]),
        task("c1", model="c", kind="error", deps=["b1"]),
    ]
    p = policy(tasks, queue_depth=1)
    for expected in ("a1", "b1", "c1", "a2"):
        (assignment,) = p.schedule()
        assert assignment.task.id == expected
        p.finished("w0", expected)
    assert p.stats.loads == {"a": {"w0": 2}, "b": {"w0": 1}, "c": {"w0": 1}}


# --------------------------------------------------------------------------- memory


def test_each_task_goes_to_a_gpu_that_holds_it():
    p = policy([task("big", mem=50), task("small", mem=10, kind="error")], "80,24")
    assert sorted(placed(p.schedule())) == [("w0", "big", (0,)), ("w1", "small", (1,))]


def test_queue_depth_bounds_what_a_worker_holds():
    tasks = [task(f"t{i}") for i in range(10)]
    assert Counter(a.worker for a in policy(tasks, "2x80").schedule()) == {"w0": 2, "w1": 2}
    assert Counter(a.worker for a in policy(tasks, "2x80", queue_depth=3).schedule()) == {"w0": 3, "w1": 3}


def test_workers_sharing_a_gpu_share_its_memory():
    p = Policy([task("a", mem=50), task("b", mem=50), task("c", mem=20)], parse_gpu_spec("1x80"), queue_depth=1)
    p.add_worker("x", 0)
    p.add_worker("y", 0)
    assert sorted(a.task.id for a in p.schedule()) == ["a", "c"]  # 50 + 50 > 76 usable


def test_live_free_memory_limits_placement():
    p = policy([task("t1", mem=20), task("t2", mem=20), task("huge", mem=40, kind="error")], queue_depth=1)
    p.observe_free(0, 30)  # another process holds 50 GB: 30 - 4 (margin) - 1 (residue) = 25 GB usable
    assert placed(p.schedule()) == [("w0", "t1", (0,))]
    assert not p.observe_free(0, 5)  # read while our own task runs: ignored
    p.finished("w0", "t1")
    assert placed(p.schedule()) == [("w0", "t2", (0,))]
    p.finished("w0", "t2")
    assert p.schedule() == [] and p.done
    assert p.unplaceable["huge"] == (
        "needs 40.0 GB on 2 GPU(s); this node offers 1 x 25.0 GB free now, with nothing of ours running "
        "(free memory less a 2%-10% safety margin and 1 GB worker residue per GPU; 25.0 GB in all)"
    )


def test_too_large_for_the_node_is_reported_with_the_numbers():
    p = policy([task("huge", mem=300), task("after", kind="clean", deps=["huge"])], "2x80")
    assert p.unplaceable == {
        "huge": "needs 300.0 GB on 4 GPU(s); this node offers 2 x 75.0 GB usable "
        "(free memory less a 2%-10% safety margin and 1 GB worker residue per GPU; 150.0 GB in all)"
    }
    assert [a.task.id for a in p.schedule()] == ["after"]  # its dependency will never run: released


# --------------------------------------------------------------------------- free memory below the total


def test_review_repro_a_gather_that_cannot_complete_skips_only_its_own_item():
    """2 x 80 GB with 79 GB free, a 151 GB item and a 10 GB one: the 10 GB item runs (it used to be skipped)."""
    gpus = parse_gpu_spec("2x80:79")
    p = Policy([task("big", model="y", mem=151, size=75), task("small", model="x", kind="error", mem=10, size=5)], gpus)
    p.add_worker("w0", 0)
    p.add_worker("w1", 1)
    assert [a.task.id for a in p.schedule()] == ["small"]
    assert p.unplaceable["big"].startswith("needs 151.0 GB on 3 GPU(s); this node offers 2 x 74.0 GB usable")
    assert "148.0 GB in all" in p.unplaceable["big"] and "small" not in p.unplaceable


def test_readings_that_drop_under_an_open_gather_dissolve_it_and_the_rest_runs():
    """Planned on the ideal figure, then NVML reads 79 GB on both idle GPUs: the gather can never complete."""
    tasks = [
        task("s1", model="x", size=10),
        task("big", model="y", mem=149.5, size=75),
        task("s2", model="x", kind="error", size=10),
        task("s3", model="x", kind="error", size=10),
    ]
    p = policy(tasks, "2x80", queue_depth=1)
    assert placed(p.schedule()) == [("w0", "s1", (0,))]  # w1 gathers GPU 0 for big (75 + 75 >= 149.5)
    assert p.observe_free(1, 79.0)  # GPU 1 is lent, idle: the reading counts
    p.finished("w0", "s1")
    assert p.observe_free(0, 79.0)
    made = p.schedule()  # the gather is dissolved: both workers take the small items
    assert sorted(a.task.id for a in made) == ["s2", "s3"] and "big" not in p.unplaceable
    for a in made:
        p.finished(a.worker, a.task.id)
    assert p.schedule() == [] and p.done  # idle now, and 74 + 74 < 149.5: big alone is given up
    assert p.unplaceable == {"big": p.unplaceable["big"]} and "2 x 74.0 GB free now" in p.unplaceable["big"]


def test_an_item_the_readings_no_longer_fit_on_one_gpu_runs_on_a_set():
    p = policy([task("a", mem=74.5), task("b", model="n", mem=5, kind="error")], "2x80", queue_depth=1)
    for gpu in (0, 1):
        p.observe_free(gpu, 79.0)  # 74 GB usable each: a no longer fits one GPU
    assert placed(p.schedule()) == [("w0", "a", (0, 1))]


def test_a_lost_workers_gpu_waits_for_its_replacement_while_idle_workers_keep_working():
    tasks = [
        task("big1", model="b", mem=50),
        task("big2", model="b", mem=50, kind="error"),
        *(task(f"s{i}", model="s", mem=10, kind="error") for i in range(3)),
    ]
    p = policy(tasks, "80,24", queue_depth=1)
    assert sorted(placed(p.schedule())) == [("w0", "big1", (0,)), ("w1", "s0", (1,))]
    p.worker_lost("w0")  # big1 crashed; big2 needs GPU 0, whose replacement is coming
    for expected in ("s1", "s2"):
        p.finished("w1", p._queues["w1"][0].task.id)
        assert [a.task.id for a in p.schedule()] == [expected]  # the idle worker keeps receiving work
    p.finished("w1", "s2")
    assert p.schedule() == [] and not p.done and p.unplaceable == {}  # big2 waits, nothing given up
    p.add_worker("w0-new", 0)
    assert placed(p.schedule()) == [("w0-new", "big2", (0,))]


def test_a_worker_lost_between_items_crashed_nothing():
    p = policy([task("a"), task("b")], queue_depth=2)
    p.schedule()
    lost = p.worker_lost("w0", running=False)
    assert lost.crashed is None and [t.id for t in lost.requeued] == ["a", "b"] and p.stats.crashed == 0


# --------------------------------------------------------------------------- sharded tasks


def test_a_sharded_task_owns_its_set_until_it_ends():
    tasks = [task("big", model="y", mem=150, size=75), task("small", model="y", kind="error", mem=10, size=75)]
    p = policy(tasks, "2x80")
    assert placed(p.schedule()) == [("w0", "big", (0, 1)), ("w0", "small", (0,))]
    p.finished("w0", "big")
    p.finished("w0", "small")
    assert p.done and p.stats.loads == {"y": {"w0": 1}}


def test_consecutive_sharded_tasks_keep_their_set():
    tasks = [task(f"big{i}", model="y", mem=150, size=75) for i in range(3)]
    p = policy(tasks, "2x80")
    assert placed(p.schedule()) == [("w0", "big0", (0, 1)), ("w0", "big1", (0, 1))]
    p.finished("w0", "big0")
    assert placed(p.schedule()) == [("w0", "big2", (0, 1))]


def test_a_worker_gathers_gpus_for_a_sharded_task():
    tasks = [
        task("s1", model="x", size=10),
        task("big", model="y", mem=150, size=75),
        task("s2", model="x", kind="error", size=10),
    ]
    p = policy(tasks, "2x80", queue_depth=1)
    assert placed(p.schedule()) == [("w0", "s1", (0,))]  # w1 chose big and now waits for GPU 0
    p.finished("w0", "s1")
    assert placed(p.schedule()) == [("w1", "big", (1, 0))]  # GPU 0 took nothing new meanwhile
    p.finished("w1", "big")
    assert [a.task.id for a in p.schedule()] == ["s2"]


def test_a_gather_takes_the_gpu_whose_work_ends_soonest_by_the_estimates():
    """GPU 0 runs a 500 s task, GPU 1 a 50 s one: the sharded task waits for GPU 1, not for the lower index."""
    timed = [
        Task("long", "x", "calibration", 10.0, 10.0, seconds=500.0),
        Task("short", "x", "calibration", 10.0, 10.0, seconds=50.0),
        Task("big", "y", "calibration", 150.0, 75.0, seconds=100.0),
    ]
    p = policy(timed, "3x80", queue_depth=1)
    assert placed(p.schedule()) == [("w0", "long", (0,)), ("w1", "short", (1,))]  # w2 gathers for big
    p.finished("w1", "short")
    assert placed(p.schedule()) == [("w2", "big", (2, 1))]


# --------------------------------------------------------------------------- crashes


def test_a_lost_worker_reports_its_crash_and_gives_back_its_queue():
    tasks = [task("a"), task("b"), task("c"), task("d", kind="clean", deps=["a"])]
    p = policy(tasks, queue_depth=3)
    assert [a.task.id for a in p.schedule()] == ["a", "b", "c"]
    lost = p.worker_lost("w0")
    assert lost.crashed.id == "a" and [t.id for t in lost.requeued] == ["b", "c"]
    p.add_worker("w0-again", 0)
    assert sorted(a.task.id for a in p.schedule()) == ["b", "c", "d"]  # a is never retried
    assert p.stats.crashed == 1


def test_the_controller_stays_free_of_torch():
    code = "import sys, pytest_invarlock.scheduling.policy, pytest_invarlock.scheduling.inventory, pytest_invarlock.scheduling.memory; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


# --------------------------------------------------------------------------- properties

KINDS = sorted(BASE_PRIORITY)


@st.composite
def scenarios(draw):
    sizes = draw(st.lists(st.sampled_from([24, 48, 80, 180]), min_size=1, max_size=4))
    gpus = [Gpu(i, size, size, 0, "simulated") for i, size in enumerate(sizes)]
    tasks = []
    for i in range(draw(st.integers(1, 14))):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=3)) if i else set()
        tasks.append(
            Task(
                f"t{i}",
                f"m{draw(st.integers(0, 2))}",
                draw(st.sampled_from(KINDS)),
                draw(st.floats(1, 500)),
                draw(st.sampled_from([5.0, 50.0, 150.0])),
                frozenset(f"t{d}" for d in deps),
            )
        )
    workers_per_gpu = draw(st.lists(st.integers(1, 2), min_size=len(gpus), max_size=len(gpus)))
    live = draw(st.booleans())  # also feed live free-memory readings
    return gpus, tasks, workers_per_gpu, draw(st.integers(1, 3)), live, draw(st.randoms(use_true_random=False))


def check_running(gpus, queues) -> None:
    """The heads of the queues run now: no GPU over its usable memory, sharded sets exclusive."""
    usable = {g.index: MarginRule().usable_gb(g.total_gb) for g in gpus}
    heads = [q[0] for q in queues.values() if q]
    for device in usable:
        users = [a for a in heads if device in a.devices]
        if any(len(a.devices) > 1 for a in users):
            assert len(users) == 1, f"GPU {device} shared by a sharded task: {users}"
        else:
            assert sum(a.task.mem_gb for a in users) <= usable[device] + 1e-9
    for a in heads:
        assert a.task.mem_gb <= sum(usable[d] for d in a.devices) + 1e-9


@settings(max_examples=150, deadline=None)
@given(scenarios())
def test_any_run_respects_memory_and_dependencies_and_ends(scenario):
    gpus, tasks, workers_per_gpu, queue_depth, live, rng = scenario
    now = [0.0]
    p = Policy(tasks, gpus, queue_depth=queue_depth, clock=lambda: now[0])
    queues: dict[str, deque] = {}
    home: dict[str, int] = {}
    for gpu, count in zip(gpus, workers_per_gpu):
        for n in range(count):
            home[f"g{gpu.index}w{n}"] = gpu.index
    for worker, gpu_index in home.items():
        queues[worker] = deque()
        p.add_worker(worker, gpu_index)
    by_id = {t.id: t for t in tasks}
    settled, crashed, dispatched, requeued = set(), set(), Counter(), Counter()
    for _ in range(10 * len(tasks) + 10):
        made = p.schedule()
        settled |= set(p.unplaceable)  # given up on during this call, before anything it dispatched
        for a in made:
            assert a.task.deps & set(by_id) <= settled, f"{a.task.id} dispatched before its dependencies ended"
            assert a.devices[0] == home[a.worker], "a task runs on its worker's home GPU"
            dispatched[a.task.id] += 1
            queues[a.worker].append(a)
        assert all(len(q) <= queue_depth for q in queues.values())
        check_running(gpus, queues)
        busy = sorted(w for w, q in queues.items() if q)
        if not busy:
            break
        now[0] += rng.uniform(0, 600)
        if live and rng.random() < 0.3:
            gpu = rng.choice(gpus)
            p.observe_free(gpu.index, rng.uniform(0, gpu.total_gb))
        worker = rng.choice(busy)
        if rng.random() < 0.1:
            lost = p.worker_lost(worker)
            queue = list(queues.pop(worker))
            assert lost.crashed == queue[0].task and list(lost.requeued) == [a.task for a in queue[1:]]
            crashed.add(lost.crashed.id)
            settled.add(lost.crashed.id)
            requeued.update(t.id for t in lost.requeued)
            home[f"{worker}r"] = home[worker]  # a replacement on the same GPU, with a new id
            queues[f"{worker}r"] = deque()
            p.add_worker(f"{worker}r", home[worker])
        else:
            done = queues[worker].popleft().task.id
            p.finished(worker, done, ok=rng.random() < 0.8)
            settled.add(done)
    else:
        pytest.fail("the run did not end")
    assert p.done
    capacity = sum(MarginRule().usable_gb(g.total_gb) for g in gpus)
    too_large = {t.id for t in tasks if t.mem_gb > capacity}
    if live:  # other processes' memory may also have left tasks without room
        assert too_large <= set(p.unplaceable)
    else:
        assert set(p.unplaceable) == too_large
    assert settled == set(by_id)
    for t in tasks:  # once, plus once more each time a crash gave it back unstarted; never after being given up
        assert dispatched[t.id] == requeued[t.id] + (t.id not in p.unplaceable)
    assert p.stats.crashed == len(crashed)


# --------------------------------------------------------------------------- properties on real-looking nodes

NOISE_GB = 1.0  # how far a reading of an idle GPU may fall below its first one (other processes, residue)


@st.composite
def real_nodes(draw):
    """GPUs whose free memory is below the total (driver reserve), tasks around the node's limits."""
    sizes = draw(st.lists(st.sampled_from([24, 48, 80, 141, 180]), min_size=1, max_size=4))
    reserves = draw(st.lists(st.floats(0, 3), min_size=len(sizes), max_size=len(sizes)))
    gpus = [Gpu(i, size, size - reserve, 0, "real") for i, (size, reserve) in enumerate(zip(sizes, reserves))]
    worst = [MarginRule().usable_gb(g.total_gb, g.free_gb - NOISE_GB) for g in gpus]
    edges = [*worst, sum(worst), sum(worst) + 0.5, max(worst) + 0.5]  # items right at the limits
    tasks = []
    for i in range(draw(st.integers(1, 14))):
        deps = draw(st.sets(st.integers(0, i - 1), max_size=2)) if i else set()
        mem = draw(st.sampled_from(edges) | st.floats(1, 600))
        tasks.append(
            Task(
                f"t{i}",
                f"m{draw(st.integers(0, 2))}",
                draw(st.sampled_from(KINDS)),
                mem,
                draw(st.sampled_from([5.0, 50.0, 150.0])),
                frozenset(f"t{d}" for d in deps),
            )
        )
    return gpus, tasks, draw(st.integers(1, 3)), draw(st.randoms(use_true_random=False))


def check_fits_physically(worst_free: dict[int, float], queues) -> None:
    """The heads of the queues run now: on each GPU they need no more than its worst free memory."""
    heads = [q[0] for q in queues.values() if q]
    for device, free in worst_free.items():
        users = [a for a in heads if device in a.devices]
        if any(len(a.devices) > 1 for a in users):
            assert len(users) == 1, f"GPU {device} shared by a sharded task: {users}"
        else:
            assert sum(a.task.mem_gb for a in users) <= free, f"GPU {device} oversubscribed: {users}"
    for a in heads:
        assert a.task.mem_gb <= sum(worst_free[d] for d in a.devices)


@settings(max_examples=200, deadline=None)
@given(real_nodes())
def test_on_real_nodes_what_fits_runs_once_and_no_gpu_is_oversubscribed(node):
    """Free <= total, readings that fall by up to NOISE_GB, crashes whose replacement comes late.

    - no task that fits the node's worst readings is ever given up;
    - the tasks running on a GPU never need more than its worst free memory (the margin covers noise);
    - every task is dispatched once (again only if a crash gave it back unstarted) and the run ends.
    """
    gpus, tasks, queue_depth, rng = node
    now = [0.0]
    p = Policy(tasks, gpus, queue_depth=queue_depth, clock=lambda: now[0])
    home = {f"w{g.index}": g.index for g in gpus}
    queues: dict[str, deque] = {w: deque() for w in home}
    for worker, gpu in home.items():
        p.add_worker(worker, gpu)
    worst_free = {g.index: g.free_gb - NOISE_GB for g in gpus}
    capacity = sum(MarginRule().usable_gb(g.total_gb, worst_free[g.index]) for g in gpus)
    dispatched, requeued, crashes, waiting = Counter(), Counter(), 0, []
    for _ in range(20 * len(tasks) + 20):
        for a in p.schedule():
            dispatched[a.task.id] += 1
            queues[a.worker].append(a)
        check_fits_physically(worst_free, queues)
        busy = [w for w, q in queues.items() if q]
        if not busy and not waiting:
            break
        now[0] += rng.uniform(0, 600)
        for gpu in gpus:  # NVML re-read at dispatch: the policy keeps only idle GPUs' readings
            p.observe_free(gpu.index, gpu.free_gb - rng.uniform(0, NOISE_GB))
        if waiting and (not busy or rng.random() < 0.3):
            worker = waiting.pop(0)
            queues[worker] = deque()
            p.add_worker(worker, home[worker])
            continue
        worker = rng.choice(busy)
        if crashes < 2 and rng.random() < 0.1:
            crashes += 1
            lost = p.worker_lost(worker)
            requeued.update(t.id for t in lost.requeued)
            del queues[worker]
            replacement = f"{worker}r"
            home[replacement] = home[worker]
            waiting.append(replacement)  # arrives later: the others keep working meanwhile
        else:
            p.finished(worker, queues[worker].popleft().task.id)
    else:
        pytest.fail("the run did not end")
    assert p.done
    fits = {t.id for t in tasks if t.mem_gb <= capacity}
    assert not fits & set(p.unplaceable), {t: p.unplaceable[t] for t in fits & set(p.unplaceable)}
    for t in tasks:
        assert dispatched[t.id] == requeued[t.id] + (t.id not in p.unplaceable)


def test_seed_priorities_eval_baseline_and_lagging_models():
    """EVAL_BASELINE 80 sits between calibration and the edits; a model far behind the node gets +15."""
    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.scheduling.policy import lagging_models
    from pytest_invarlock.scheduling.tasks import tasks_from_items

    kinds = Counter(t.kind for t in tasks_from_items(build_items(load_suite("full"))))
    assert kinds["eval_baseline"] == 6 * 4 and kinds["benchmark"] == 6 * 4 * 8  # baseline x 4 tasks; 8 edits x 4
    assert BASE_PRIORITY["calibration"] > BASE_PRIORITY["eval_baseline"] == 80 > BASE_PRIORITY["clean"]
    plain = priority(task("b", kind="benchmark", size=140), dependents=0, waited_s=0, in_flight_same_model=0)
    assert (
        priority(task("b", kind="benchmark", size=140), dependents=0, waited_s=0, in_flight_same_model=0, lagging=True)
        == plain + 15
    )
    assert lagging_models(Counter({"a": 8, "b": 1}), Counter({"a": 10, "b": 10})) == {"b"}  # 10% < half of 45%
    assert lagging_models(Counter(), Counter({"a": 10})) == set()
