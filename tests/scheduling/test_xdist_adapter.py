"""The xdist adapter around the policy, driven by fake xdist nodes; plus the memory plan, homes and placements.

`Cluster` plays pytest-xdist: the DSession (shutdown of every node once `tests_finished`, a
replacement node after a crash) and the workers (a worker starts the head of its queue only once a
second entry or a shutdown has arrived, and runs it to the end).
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import SCHED_SUITE, offline_options
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.distribution import ControllerDistribution
from pytest_invarlock.scheduling.inventory import Gpu, host_cache_share, parse_gpu_spec
from pytest_invarlock.scheduling.memory import MarginRule
from pytest_invarlock.scheduling.placement import GpuHomes, cuda_env, placement_devices, write_placement
from pytest_invarlock.scheduling.plan_table import format_plan_table, plan_rows, write_plan_csv
from pytest_invarlock.scheduling.tasks import item_need_gb, scheduling_devices, task_id, tasks_from_items
from pytest_invarlock.scheduling.xdist_adapter import GpuScheduling
from pytest_invarlock.state import HOST_CACHE_INPUT, ConfigState, node_host_cache_bytes

# Three float32 models of 0.5 B parameters (1.86 GB of weights) whose KV caches make their items
# need about 10, 30 and 140 GB: KV = 2 x layers x batch x seq_len x kv_heads x head_dim x 4 bytes.
SUITE = SCHED_SUITE
WEIGHTS_GB = 0.5e9 * 4 / 2**30
PLAIN = "tests/test_other.py::test_plain"


def make_state(directory: Path, session: str, gpus: list[Gpu] | None = None) -> ConfigState:
    path = directory / "suite.yaml"
    path.write_text(SUITE)
    suite = load_suite(str(path))
    options = offline_options("subprocess")
    return ConfigState(
        suite=suite,
        items=build_items(suite),
        options=options,
        run_dir=directory / "run",
        device="cpu",
        session=session,
        gpus=list(gpus or []),
    )


def unfit_reason(state: ConfigState, item) -> str | None:
    return state.unfit.get(task_id(item))


def scheduler_for(state: ConfigState, devices, homes, **kwargs) -> GpuScheduling:
    """The adapter wired to the state as `distribution` wires it."""
    return GpuScheduling(
        state.index,
        state.skip_reason,
        lambda item, worker, placed: write_placement(state.run_dir, state.session, item, worker, placed),
        devices,
        homes,
        **kwargs,
    )


def nodeid(item) -> str:
    return f"validation/test_certify.py::{item.test}[{item.param_id}]"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scheduling")


# --------------------------------------------------------------------------- fake xdist


@dataclass(eq=False)
class FakeNode:
    worker: str
    queue: list[int] = field(default_factory=list)
    shutting_down: bool = False
    running: int | None = None

    @property
    def gateway(self) -> SimpleNamespace:
        return SimpleNamespace(id=self.worker)

    def send_runtest_some(self, indices) -> None:
        assert not self.shutting_down, f"{self.worker} was sent {indices} after its shutdown"
        self.queue.extend(indices)

    def shutdown(self) -> None:
        self.shutting_down = True

    def can_start(self) -> bool:
        return self.running is None and bool(self.queue) and (len(self.queue) >= 2 or self.shutting_down)


class FakeFallback:
    """Stands for xdist's LoadScheduling: records what reaches it."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.tests_finished = True

    def __getattr__(self, name):
        return lambda *args: self.calls.append((name, *args))


@dataclass
class Event:
    what: str  # start | end | crash
    index: int
    worker: str
    devices: tuple[int, ...] = ()
    home: int | None = None


class Cluster:
    def __init__(self, state: ConfigState, gpus: list[Gpu], collection: list[str], workers: int | None = None, **options) -> None:
        self.state, self.collection = state, collection
        self.devices = scheduling_devices(gpus, workers or len(gpus))
        self.homes = GpuHomes([d.index for d in self.devices])
        self.skipped: dict[str, str] = {}
        self.fallback = FakeFallback()
        self.sched = scheduler_for(
            state,
            self.devices,
            self.homes,
            numnodes=workers or len(gpus),
            fallback=self.fallback,
            on_unplaceable=self.skipped.__setitem__,
            **options,
        )
        self.nodes: list[FakeNode] = []
        self.events: list[Event] = []
        self.crashed: list[str] = []
        self.arriving: list[FakeNode] = []  # replacements started, their collection not yet in
        self.spawned = 0
        for _ in range(workers or len(gpus)):
            self.spawn()
        for node in self.nodes:
            self.sched.add_node_collection(node, collection)
        self.sched.schedule()

    def spawn(self) -> FakeNode:
        node = FakeNode(f"gw{self.spawned}")
        self.spawned += 1
        self.homes.assign(node.worker)  # what pytest_configure_node does
        self.nodes.append(node)
        self.sched.add_node(node)
        return node

    def start_heads(self) -> None:
        for node in self.nodes:
            if node.can_start():
                node.running = node.queue[0]
                devices = ()
                if node.running < len(self.collection):
                    item = self.sched._items[node.running]
                    devices = tuple(placement_devices(self.state.run_dir, self.state.session, item) or ()) if item else ()
                self.events.append(Event("start", node.running, node.worker, devices, self.homes.home(node.worker)))

    def finish(self, node: FakeNode) -> None:
        index, node.running = node.queue.pop(0), None
        self.events.append(Event("end", index, node.worker))
        self.sched.mark_test_complete(node, index)

    def crash(self, node: FakeNode) -> None:
        """The worker dies mid-item; xdist asks for the crash item, then starts a replacement."""
        self.nodes.remove(node)
        self.events.append(Event("crash", node.running, node.worker))
        self.crashed.append(self.sched.remove_node(node))
        self.arriving.append(self.spawn())

    def arrive(self, node: FakeNode) -> None:
        self.arriving.remove(node)
        self.sched.add_node_collection(node, self.collection)
        self.sched.schedule()

    def run(self, rng: random.Random, crash_at: int | None = None) -> None:
        """Finish (or crash) running items in random order; replacements arrive at random moments."""
        for step in range(10_000):
            if self.sched.tests_finished:
                for node in self.sched.nodes:
                    node.shutdown()
            self.start_heads()
            busy = [n for n in self.nodes if n.running is not None]
            if self.arriving and (not busy or rng.random() < 0.3):
                self.arrive(self.arriving[0])
            elif not busy:
                break
            elif step == crash_at:
                self.crash(rng.choice(busy))
            else:
                self.finish(rng.choice(busy))
        stuck = {n.worker: n.queue for n in self.nodes if n.queue}
        assert not stuck, f"workers still hold items they will never run: {stuck}"

    def started(self) -> list[tuple[str, Event]]:
        return [(self.collection[e.index], e) for e in self.events if e.what == "start" and e.index < len(self.collection)]

    def ran(self) -> list[int]:
        return [e.index for e in self.events if e.what == "end" and e.index < len(self.collection)]


def suite_collection(state: ConfigState) -> list[str]:
    return [PLAIN, *map(nodeid, state.items)]


# --------------------------------------------------------------------------- memory plan


def test_kv_cache_comes_from_the_declared_architecture(workdir):
    """Hand-computed: 2 x 32 layers x 88 x 1024 tokens x 8 x 128 x 4 bytes = 22 GiB on the mid model."""
    state = make_state(workdir, "kv")
    need = {(i.model.name, i.kind): item_need_gb(i) for i in state.items}
    assert need["mid", "calibration"] == pytest.approx(WEIGHTS_GB + 22.0 + 6.0)
    assert need["wide", "clean"] == pytest.approx(WEIGHTS_GB + 132.0 + 6.0)
    assert need["small", "clean"] == pytest.approx(WEIGHTS_GB + 8.0)  # editing outweighs a tiny KV cache


def test_edits_wait_for_their_own_models_calibrations(workdir):
    state = make_state(workdir, "deps")
    tasks = {t.id: t for t in tasks_from_items(state.items)}
    edit = tasks["test_edit[mid-quant_rtn_8bit_clean-run1]"]
    assert edit.deps == {"test_calibration[mid-calibration-run1]", "test_calibration[mid-calibration-run2]"}
    assert tasks["test_calibration[mid-calibration-run1]"].deps == frozenset()
    renamed = tasks_from_items(state.items, [f"n{i}" for i in range(len(state.items))])
    assert all(dep.startswith("n") for t in renamed for dep in t.deps)


def test_items_no_two_gpus_hold_are_unfit_with_the_reason(workdir):
    state = make_state(workdir, "unfit-small", parse_gpu_spec("80,24,24"))
    wide = next(i for i in state.items if i.model.name == "wide")
    reason = unfit_reason(state, wide)
    assert reason.startswith("needs 139.9 GB on 2 GPU(s)") and "1 x 75.0 GB + 2 x 20.6 GB" in reason
    assert state.skip_reason(wide) == reason
    assert unfit_reason(state, next(i for i in state.items if i.model.name == "mid")) is None
    assert unfit_reason(make_state(workdir, "unfit-big", parse_gpu_spec("80,80,24")), wide) is None
    assert unfit_reason(make_state(workdir, "unfit-cpu"), wide) is None


def test_plan_rows_table_and_csv(workdir):
    state = make_state(workdir, "plan", parse_gpu_spec("80,24"))
    rows = plan_rows(state.index, parse_gpu_spec("80,24"), suite_collection(state), state.skip_reason)
    assert len(rows) == len(state.items)  # the plain test has no plan
    by_model = {r.model: r for r in rows if r.kind == "calibration"}
    assert (by_model["small"].gpus, by_model["mid"].gpus, by_model["wide"].gpus) == (1, 1, 2)
    assert by_model["wide"].note.startswith("needs 139.9 GB") and by_model["mid"].note == ""
    lines = format_plan_table(rows, parse_gpu_spec("80,24"))
    assert lines[0] == f"GPUs: 1 x 80 GB, 75.0 GB usable each + 1 x 24 GB, 20.6 GB usable each; {len(rows)} item(s)"
    assert lines[1].split()[:3] == ["item", "kind", "weights"] and len(lines) == len(rows) + 3
    assert lines[-1] == "placement: 8 of 12 item(s) placed (8 on 1 GPU); 4 unplaceable"
    real = format_plan_table(
        plan_rows(state.index, parse_gpu_spec("2x80:79"), suite_collection(state), lambda item: None), parse_gpu_spec("2x80:79")
    )
    assert real[0].startswith("GPUs: 2 x 80 GB (79 GB free), 74.0 GB usable each;")
    assert real[-1] == "placement: 12 of 12 item(s) placed (8 on 1 GPU, 4 on 2 GPUs); 0 unplaceable; across GPUs: wide"
    write_plan_csv(rows, workdir / "plan.csv")
    with (workdir / "plan.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["nodeid"] for r in table] == [r.nodeid for r in rows]
    assert float(table[0]["need_gb"]) == pytest.approx(rows[0].need_gb, abs=1e-3)


# --------------------------------------------------------------------------- homes, placements, env


def test_homes_spread_workers_and_give_a_freed_gpu_to_the_replacement():
    homes = GpuHomes([0, 1, 2])
    assert [homes.assign(w) for w in ("gw0", "gw1", "gw2", "gw3")] == [0, 1, 2, 0]
    homes.release("gw1")
    assert homes.assign("gw4") == 1
    homes.release("gw3")
    assert homes.assign("gw5") == 0  # GPU 0 has gw0 left, like GPU 1 and 2, but it is the freed one


def test_placement_is_read_back_only_in_its_own_session(workdir):
    state = make_state(workdir, "placed")
    item = state.items[0]
    assert placement_devices(state.run_dir, state.session, item) is None
    write_placement(state.run_dir, state.session, item, "gw0", (1, 0))
    assert placement_devices(state.run_dir, state.session, item) == [1, 0]
    later = make_state(workdir, "later-session")
    assert placement_devices(later.run_dir, later.session, item) is None


def test_cuda_env_names_nvml_indices_in_pci_order():
    gpus = [Gpu(i, 80.0, 79.0, 0, "nvml", bind_id=str(7 - i)) for i in range(4)]  # CUDA_VISIBLE_DEVICES=7,6,5,4 here
    assert cuda_env([3, 1], gpus) == {"CUDA_VISIBLE_DEVICES": "4,6", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert cuda_env([1], parse_gpu_spec("2x80")) == {"CUDA_VISIBLE_DEVICES": "1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    with pytest.raises(ValueError, match=r"device\(s\) \[9\] are not in the node's inventory \[0, 1, 2, 3\]"):
        cuda_env([9], gpus)


# --------------------------------------------------------------------------- the adapter


def test_a_lone_last_calibration_gets_a_spacer_and_runs(workdir):
    """One worker, one model: the policy holds the edits back until the calibrations end, so the
    worker's queue would be a single item that xdist never starts without the spacer."""
    state = make_state(workdir, "lone", parse_gpu_spec("80"))
    small = [nodeid(i) for i in state.items if i.model.name == "small"]
    cluster = Cluster(state, parse_gpu_spec("80"), small)
    (node,) = cluster.nodes
    spacer = len(small)
    assert node.queue == [0, 1]  # two calibrations, nothing else is ready
    cluster.finish(node)
    assert node.queue == [1, spacer]
    cluster.run(random.Random(0))
    assert sorted(cluster.ran()) == list(range(len(small)))


def test_memory_fit_multi_gpu_placement_and_dependencies(workdir):
    gpus = parse_gpu_spec("80,80,24")
    state = make_state(workdir, "fit", gpus)
    collection = suite_collection(state)
    cluster = Cluster(state, gpus, collection)
    cluster.run(random.Random(1))
    assert sorted(cluster.ran()) == list(range(len(collection)))
    check_events(cluster, gpus)
    on_small_gpu = {name for name, e in cluster.started() if e.devices == (2,)}
    assert on_small_gpu and all("small" in name for name in on_small_gpu)
    wide = [e.devices for name, e in cluster.started() if "wide" in name]
    assert wide and all({0, 1} <= set(d) for d in wide)  # both 80 GB GPUs (a gathered set may add the 24)


def check_events(cluster: Cluster, gpus: list[Gpu], margin: MarginRule = MarginRule()) -> None:
    """Each item started once; edits after their model's calibrations ended; no device over-committed."""
    items = cluster.sched._items
    ended: set[int] = set()
    running: dict[int, tuple[int, ...]] = {}
    usable = {g.index: margin.usable_gb(g.total_gb) for g in gpus}
    for event in cluster.events:
        if event.index == len(cluster.collection):
            continue  # a spacer
        if event.what in ("end", "crash"):  # a crashed dependency releases its dependents too
            ended.add(event.index)
            running.pop(event.index, None)
            continue
        item = items[event.index]
        if item is None or cluster.state.skip_reason(item):
            continue
        if item.kind == "clean":
            calibrations = {
                i for i, other in enumerate(items) if other and other.model == item.model and other.kind == "calibration"
            }
            assert calibrations <= ended, f"{item.param_id} started before its model's calibrations ended"
        assert event.devices[0] == event.home
        assert sum(usable[d] for d in event.devices) >= item_need_gb(item)
        busy = {d for devices in running.values() for d in devices}
        assert not busy & set(event.devices), f"{item.param_id} placed on busy GPUs {event.devices}"
        running[event.index] = event.devices


@settings(max_examples=25, deadline=None)
@given(
    spec=st.sampled_from(["80,80,24", "2x80", "180,24", "80,24,24", "4x80"]),
    seed=st.integers(0, 10**6),
    crash=st.none() | st.integers(0, 20),
)
def test_every_item_runs_once_in_any_completion_order(workdir, spec, seed, crash):
    gpus = parse_gpu_spec(spec)
    state = make_state(workdir, f"prop-{spec}-{seed}-{crash}", gpus)
    collection = suite_collection(state)
    cluster = Cluster(state, gpus, collection)
    cluster.run(random.Random(seed), crash_at=crash)
    crashed = {collection.index(c) for c in cluster.crashed if c}
    ran = cluster.ran()
    assert len(ran) == len(set(ran)), "an item ran twice"
    assert set(ran) | crashed == set(range(len(collection))) and not set(ran) & crashed
    assert cluster.skipped == {}  # nothing fits in less memory than the static plan says
    check_events(cluster, gpus)


def test_an_item_whose_worker_died_runs_once_more_on_another_gpu_and_a_second_death_reports_it(workdir):
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "crash", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name == "small"]
    cluster = Cluster(state, gpus, collection)
    cluster.start_heads()
    victim = next(n for n in cluster.nodes if n.running is not None)
    index, home = victim.running, cluster.homes.home(victim.worker)
    cluster.crash(victim)
    assert cluster.crashed == [None]  # xdist reports nothing: the item runs once more
    cluster.arrive(cluster.arriving[0])
    assert cluster.homes.home("gw2") == home  # the replacement takes the lost worker's GPU
    while True:  # run until the item starts again
        cluster.start_heads()
        again = next((n for n in cluster.nodes if n.running == index), None)
        if again is not None:
            break
        cluster.finish(next(n for n in cluster.nodes if n.running is not None))
    assert cluster.homes.home(again.worker) != home  # on the other GPU
    cluster.crash(again)
    assert cluster.crashed == [None, collection[index]]  # the second death is reported
    cluster.run(random.Random(2))
    assert sorted([*cluster.ran(), index]) == list(range(len(collection)))
    assert cluster.sched._started.stats.retried == 1


def test_with_worker_restarts_disabled_a_dead_workers_item_is_reported_crashed_at_once(workdir):
    """`--max-worker-restart 0` (rerun_dead=False): xdist reports the item crashed and stops, as it documents."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "crash", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name == "small"]
    cluster = Cluster(state, gpus, collection, rerun_dead=False)
    cluster.start_heads()
    victim = next(n for n in cluster.nodes if n.running is not None)
    index = victim.running
    cluster.crash(victim)
    assert cluster.crashed == [collection[index]]
    assert cluster.sched._started.stats.retried == 0


def test_a_worker_interrupted_while_the_session_stops_is_neither_crashed_nor_rerun_and_nothing_new_starts(workdir):
    """Ctrl-C reaches every worker: xdist marks the session stopping, then hands over the first worker that ended.
    Its item was interrupted, not crashed (the next session runs it), and no other worker may be sent anything,
    or an idle one would run it during the shutdown."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "stop", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name == "small"]
    stopping = [False]
    cluster = Cluster(state, gpus, collection, stopping=lambda: stopping[0])
    cluster.start_heads()
    victim = next(n for n in cluster.nodes if n.running is not None)
    sent = {n.worker: list(n.queue) for n in cluster.nodes if n is not victim}
    stopping[0] = True
    cluster.crash(victim)
    assert cluster.crashed == [None]
    assert cluster.sched._started.stats.retried == 0
    cluster.arrive(cluster.arriving[0])
    assert {n.worker: list(n.queue) for n in cluster.nodes if n.worker in sent} == sent
    assert all(not n.queue for n in cluster.nodes if n.worker not in sent)


@pytest.mark.parametrize("reason", ["oom", "timeout"])
def test_a_note_left_by_a_dead_worker_decides_how_its_item_runs_again(workdir, reason):
    """Given back after an OOM on one GPU: it runs once more on two. Timed out so hard its worker ended: reported."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, f"note-{reason}", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name == "small"]
    notes: dict[str, dict] = {}
    retried: list[tuple[str, str]] = []
    cluster = Cluster(
        state,
        gpus,
        collection,
        handback=lambda item: notes.pop(item.param_id, None),
        on_retry=lambda node, why: retried.append((node, why)),
    )
    cluster.start_heads()
    victim = next(n for n in cluster.nodes if n.running is not None)
    index = victim.running
    notes[cluster.sched._items[index].param_id] = {"reason": reason}
    cluster.crash(victim)
    cluster.run(random.Random(7))
    if reason == "timeout":
        assert cluster.crashed == [collection[index]] and retried == []
        assert index not in cluster.ran()
        return
    assert cluster.crashed == [None] and retried == [(collection[index], retried[0][1])]
    assert "runs once more on a larger placement" in retried[0][1]
    starts = [e for e in cluster.events if e.what == "start" and e.index == index]
    assert [len(e.devices) for e in starts] == [1, 2]  # the second time on both GPUs
    assert sorted(cluster.ran()) == list(range(len(collection)))


def test_items_the_free_memory_cannot_hold_are_skipped_by_the_plan(workdir):
    """One rule for plan and dispatch: the plan already reads free memory, so the workers skip them."""
    busy = [Gpu(0, 80.0, 25.0, 1, "busy"), Gpu(1, 80.0, 80.0, 0, "idle")]  # someone else holds 55 GB of GPU 0
    state = make_state(workdir, "busy", busy)
    collection = [nodeid(i) for i in state.items if i.model.name == "wide"]
    assert all("1 x 75.0 GB + 1 x 20.0 GB usable" in state.skip_reason(i) for i in state.items if i.model.name == "wide")
    cluster = Cluster(state, busy, collection)
    cluster.run(random.Random(3))
    assert cluster.skipped == {} and sorted(cluster.ran()) == list(range(len(collection)))  # free tasks, skipped at setup


def test_items_that_fit_in_no_free_memory_read_later_are_reported_skipped_not_sent(workdir):
    """Readings taken while the node is idle count: a drop below the plan skips only what no longer fits."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "dropped", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name in ("wide", "small")]
    cluster = Cluster(state, gpus, collection)
    cluster.sched._started.observe_free(1, 50.0)  # another process took 30 GB of the idle GPU 1
    cluster.sched.schedule()
    cluster.run(random.Random(3))
    wide = {n for n in collection if "wide" in n}
    assert set(cluster.skipped) == wide and all("free now" in reason for reason in cluster.skipped.values())
    assert sorted(collection[i] for i in cluster.ran()) == sorted(set(collection) - wide)


def test_failed_items_reach_the_policy_as_failed(workdir):
    gpus = parse_gpu_spec("80")
    state = make_state(workdir, "failed", gpus)
    collection = [nodeid(i) for i in state.items if i.model.name == "small"]
    cluster = Cluster(state, gpus, collection)
    cluster.sched.pytest_runtest_logreport(SimpleNamespace(nodeid=collection[0], failed=True))
    cluster.run(random.Random(4))
    assert cluster.sched._policy.stats.failed == 1


def test_skipped_and_plain_items_are_free_tasks(workdir):
    """Workers skip unfit items at setup, so they need no memory and go out first, like plain tests."""
    gpus = parse_gpu_spec("24")
    state = make_state(workdir, "free", gpus)
    collection = suite_collection(state)
    cluster = Cluster(state, gpus, collection)
    cluster.run(random.Random(5))
    assert sorted(cluster.ran()) == list(range(len(collection)))
    assert cluster.skipped == {}  # the worker reports the skip, with the reason from skip_reason


def test_a_session_without_suite_items_goes_to_xdists_scheduler(workdir):
    state = make_state(workdir, "plain")
    cluster = Cluster(state, parse_gpu_spec("2x80"), [PLAIN, "tests/test_other.py::test_more"])
    assert [call[0] for call in cluster.fallback.calls] == ["add_node", "add_node_collection"] * 2 + ["schedule"]
    assert all(node.queue == [] for node in cluster.nodes)
    assert cluster.sched.tests_finished  # answered by the fallback from now on


def test_workers_that_collected_differently_go_to_xdists_scheduler(workdir):
    state = make_state(workdir, "differ")
    fallback = FakeFallback()
    sched = scheduler_for(
        state, parse_gpu_spec("2x80"), GpuHomes([0, 1]), numnodes=2, fallback=fallback, on_unplaceable=lambda *_: None
    )
    first, second = FakeNode("gw0"), FakeNode("gw1")
    for node in (first, second):
        sched.add_node(node)
    sched.add_node_collection(first, suite_collection(state))
    sched.add_node_collection(second, suite_collection(state)[1:])
    sched.schedule()
    assert ("schedule",) in fallback.calls and first.queue == second.queue == []


def test_a_worker_that_finished_before_the_last_collection_is_replayed_to_xdists_scheduler(workdir):
    """A worker with nothing to run can finish (and be removed) before the other worker's collection arrives;
    the fallback must hear of it, or xdist's LoadScheduling waits for a collection that never comes."""
    state = make_state(workdir, "early")
    fallback = FakeFallback()
    sched = scheduler_for(
        state, parse_gpu_spec("2x80"), GpuHomes([0, 1]), numnodes=2, fallback=fallback, on_unplaceable=lambda *_: None
    )
    first, second = FakeNode("gw0"), FakeNode("gw1")
    for node in (first, second):
        sched.add_node(node)
    sched.add_node_collection(first, [])
    assert sched.remove_node(first) is None
    sched.add_node_collection(second, [])
    sched.schedule()
    assert fallback.calls == [
        ("add_node", first),
        ("add_node_collection", first, []),
        ("remove_node", first),
        ("add_node", second),
        ("add_node_collection", second, []),
        ("schedule",),
    ]


def test_nothing_is_sent_after_shutdown(workdir):
    """-x: xdist shuts every node down mid-run; completions after that must send nothing."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "stop", gpus)
    cluster = Cluster(state, gpus, suite_collection(state))
    cluster.start_heads()
    for node in cluster.nodes:
        node.shutdown()
    for node in [n for n in cluster.nodes if n.running is not None]:
        cluster.finish(node)  # FakeNode asserts on any send
    assert not cluster.sched.tests_finished  # work was left undone; xdist ends the session on its own


def test_task_ids_match_the_simulator():
    assert task_id(SimpleNamespace(test="test_edit", param_id="m-s-run1")) == "test_edit[m-s-run1]"


def test_idle_workers_keep_receiving_work_while_a_crashed_worker_is_replaced(workdir):
    """The replacement for gw1 never arrives until gw0 has run everything: gw0 is not left idle meanwhile."""
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "replace", gpus)
    collection = suite_collection(state)
    cluster = Cluster(state, gpus, collection)
    cluster.start_heads()
    victim = next(n for n in cluster.nodes if n.worker == "gw1")
    assert victim.running is not None
    cluster.crash(victim)
    survivor = next(n for n in cluster.nodes if n.worker == "gw0")  # gw2, the replacement, has not arrived
    while survivor.running is not None or survivor.can_start():
        cluster.start_heads()
        cluster.finish(survivor)
    crashed = {collection.index(c) for c in cluster.crashed if c}
    assert set(cluster.ran()) | crashed == set(range(len(collection)))  # wide items borrowed the lost worker's GPU
    cluster.arrive(cluster.arriving[0])
    assert cluster.sched.tests_finished


def test_free_memory_is_re_read_at_dispatch_at_most_once_per_interval(workdir):
    gpus = parse_gpu_spec("2x80")
    state = make_state(workdir, "probe", gpus)
    now, reads = [0.0], []

    def probe():
        reads.append(now[0])
        return [Gpu(0, 80.0, 79.0, 0, "nvml"), Gpu(1, 80.0, 40.0, 0, "nvml"), Gpu(7, 80.0, 1.0, 0, "not ours")]

    homes = GpuHomes([0, 1])
    sched = scheduler_for(
        state,
        gpus,
        homes,
        numnodes=2,
        fallback=FakeFallback(),
        on_unplaceable=lambda *_: None,
        probe=probe,
        probe_interval_s=5.0,
        clock=lambda: now[0],
    )
    nodes = [FakeNode("gw0"), FakeNode("gw1")]
    for node in nodes:
        homes.assign(node.worker)
        sched.add_node(node)
    for node in nodes:
        sched.add_node_collection(node, suite_collection(state))
    sched.schedule()
    assert reads == [0.0]
    policy = sched._started
    assert policy.budget_gb(0) == pytest.approx(74.0) and policy.budget_gb(1) == pytest.approx(35.0)
    now[0] = 3.0
    node = next(n for n in nodes if n.queue)
    sched.mark_test_complete(node, node.queue.pop(0))
    assert reads == [0.0]  # throttled
    now[0] = 6.0
    node = next(n for n in nodes if n.queue)
    sched.mark_test_complete(node, node.queue.pop(0))
    assert reads == [0.0, 6.0]


def test_a_gpus_simulation_plans_as_that_node_but_device_cpu_keeps_the_cpu_size_skip(workdir):
    state = make_state(workdir, "simulated", parse_gpu_spec("8x80:79"))
    large = replace(state.items[0].model, params_b=72.0)
    assert "needs a GPU and none is visible" in state._model_unavailable(large)  # device cpu, no simulation
    state.simulated_gpu_node = True  # --gpus with --invarlock-device auto on a host without NVML GPUs
    assert state._model_unavailable(large) is None


def test_workers_get_a_share_of_a_node_wide_host_ram_budget(workdir):
    state = make_state(workdir, "ram")
    config = SimpleNamespace(
        getoption=lambda name, default=None: {"invarlock_gpus": None}.get(name, default),
        stash={},
        option=SimpleNamespace(numprocesses=4, tx=[], dist="no"),
    )
    distribution = ControllerDistribution(config, state)
    distribution._homes = GpuHomes([0, 1, 2, 3])
    node = SimpleNamespace(gateway=SimpleNamespace(id="gw0"), workerinput={})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pytest_invarlock.distribution.worker_count", lambda config: 4)
        distribution.pytest_configure_node(node)
    assert node.workerinput[HOST_CACHE_INPUT] == host_cache_share(4) == host_cache_share(1) // 4
    worker = SimpleNamespace(workerinput=node.workerinput)
    assert node_host_cache_bytes(worker) == host_cache_share(4)
