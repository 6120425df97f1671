"""Work claimed at run time: the pure rules (claim_policy) and the policy of a campaign's node, on shared boards.

Several `Policy` objects share one in-memory board (first come, first served, as the run directory's locks are);
a property drives them through random finishes and node deaths: every task runs exactly once (or is lost with
the node that ran it, then run by another), never before its dependencies.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.scheduling.claim_policy import (
    Claim,
    WorkItem,
    campaign_status,
    done_items,
    manifest_differences,
    next_claim,
    node_state,
    parse_node,
    work_order,
)
from pytest_invarlock.scheduling.inventory import parse_gpu_spec
from pytest_invarlock.scheduling.policy import Policy, Task


def task(task_id: str, model: str = "m", kind: str = "clean", mem: float = 10.0, deps=(), seconds: float = 10.0) -> Task:
    return Task(task_id, model, kind, mem, 10.0, frozenset(deps), seconds=seconds, load_seconds=5.0)


class Board:
    """The run directory's claims in memory; `view(k)` is node k's `policy.Campaign`."""

    def __init__(self, gpus: dict[int, list[float]] | None = None) -> None:
        self.holder: dict[str, int] = {}
        self.finished: set[str] = set()
        self.claims: Counter[str] = Counter()
        self.gpus = gpus or {}  # node -> its GPUs (total GB)

    def view(self, k: int) -> NodeView:
        return NodeView(self, k)

    def release(self, k: int) -> None:
        """Node k died: the kernel drops its locks."""
        for tid in [t for t, holder in self.holder.items() if holder == k and t not in self.finished]:
            del self.holder[tid]


class NodeView:
    def __init__(self, board: Board, k: int) -> None:
        self.board, self.k = board, k

    def claim(self, task: Task) -> Claim:
        if task.id in self.board.finished:
            return Claim.DONE
        if self.board.holder.setdefault(task.id, self.k) != self.k:
            return Claim.TAKEN
        self.board.claims[task.id] += 1
        return Claim.MINE

    def workers_on(self, model: str) -> int:
        return 0

    def node_gpus(self) -> list[list[float]]:
        return [gpus for k, gpus in self.board.gpus.items() if k != self.k]


def node(board: Board, k: int, tasks: list[Task], spec: str = "2x80") -> Policy:
    made = Policy(tasks, parse_gpu_spec(spec), queue_depth=1, campaign=board.view(k))
    for gpu in parse_gpu_spec(spec):
        made.add_worker(f"n{k}w{gpu.index}", gpu.index)
    return made


def revisit(board: Board, policy: Policy) -> None:
    """What the adapter does with tasks other nodes held: finished, or let go by a dead node."""
    for tid in policy.taken:
        if tid in board.finished:
            policy.taken_ended(tid, finished=True)
        elif tid not in board.holder:
            policy.taken_ended(tid, finished=False)


# --------------------------------------------------------------------------- the pure rules


@pytest.mark.parametrize(("spec", "parsed"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3))])
def test_node_specs(spec, parsed):
    assert parse_node(spec) == parsed


@pytest.mark.parametrize("spec", ["0/2", "3/2", "2", "a/b", ""])
def test_a_bad_node_spec_says_how_to_write_one(spec):
    with pytest.raises(ValueError, match="write K/N"):
        parse_node(spec)


def test_the_order_of_work_puts_the_largest_model_first_and_keeps_each_models_order():
    items = [WorkItem("s-cal", "small", "calibration", cost=1), WorkItem("s-edit", "small", "clean", ("s-cal",), cost=1)]
    items += [WorkItem("l-cal", "large", "calibration", cost=5), WorkItem("l-edit", "large", "clean", ("l-cal",), cost=5)]
    assert [i.id for i in work_order(items)] == ["l-cal", "l-edit", "s-cal", "s-edit"]
    assert WorkItem.from_json(items[1].to_json()) == items[1]


def test_a_node_claims_its_own_model_first_then_one_the_others_leave_alone():
    order = [WorkItem(f"{m}-{i}", m, "clean") for m in ("a", "b", "c") for i in range(2)]
    states = {"a-0": Claim.DONE}
    assert next_claim(order, states, held_model="a", elsewhere={}).id == "a-1"
    assert next_claim(order, {**states, "a-1": Claim.TAKEN}, held_model="a", elsewhere={"b": 3}).id == "c-0"
    assert next_claim(order, {i.id: Claim.DONE for i in order}, held_model=None, elsewhere={}) is None


def test_an_item_waits_for_its_dependencies_held_elsewhere():
    order = [WorkItem("cal", "m", "calibration"), WorkItem("edit", "m", "clean", ("cal",))]
    assert next_claim(order, {"cal": Claim.TAKEN}, held_model="m", elsewhere={}) is None
    assert next_claim(order, {"cal": Claim.DONE}, held_model="m", elsewhere={}).id == "edit"
    assert next_claim(order, {"cal": Claim.NOT_HERE}, held_model="m", elsewhere={}).id == "edit"


def test_manifests_that_differ_say_how():
    mine = {"mode": "claims", "suite": "tiny", "nodes": 2, "options": {"device": "cpu"}, "definitions": {"a": "1", "b": "2"}}
    assert manifest_differences(mine, mine) == []
    other = {**mine, "nodes": 3, "options": {"device": "cuda"}, "definitions": {"a": "1", "b": "9", "c": "3"}}
    text = "\n".join(manifest_differences(other, mine))
    assert "nodes: the campaign has 3, this node 2" in text
    assert "option device: the campaign has 'cuda', this node 'cpu'" in text
    assert "items only the campaign has: 1 (c)" in text and "items defined differently: 1 (b)" in text


def test_an_item_is_done_with_a_current_record_and_in_a_claimed_campaign_a_finished_claim():
    definitions = {"a": "k1", "b": "k2", "c": "k3"}
    records = [
        {"param_id": "a", "definition_key": "k1"},
        {"param_id": "b", "definition_key": "old"},
        {"param_id": "c", "definition_key": "k3"},
    ]
    assert done_items(definitions, records, None) == {"a", "c"}
    assert done_items(definitions, records, {"a": {"finished": 1.0}, "c": {"finished": None}}) == {"a"}  # c: cut short


def test_the_merge_names_each_node_and_who_owned_each_missing_item():
    items = [WorkItem(i, "m", "clean") for i in ("a", "b", "c", "d")]
    runs = {
        1: [{"host": "h1", "pid": 1, "ended": 5.0, "partial": None}],
        2: [{"host": "h2", "pid": 2, "ended": None}],
        3: [
            {
                "host": "h3",
                "pid": 3,
                "ended": 4.0,
                "partial": "stopped before the time limit (SIGUSR1)",
                "left": {"d": "needs 900 GB"},
            }
        ],
    }
    claims = {"a": {"node": 1, "finished": 1}, "b": {"node": 2, "finished": None}, "c": {"node": 3, "finished": None}}
    status = campaign_status(items, 4, runs, alive=[], claims=claims, recorded=["a"])
    assert [(s.node, s.state) for s in status.nodes] == [(1, "finished"), (2, "died"), (3, "stopped"), (4, "never started")]
    missing = dict(status.missing)
    assert missing["b"].startswith("claimed by node 2/4, which died") and "stopped before finishing it" in missing["c"]
    assert missing["d"] == "no node ran it: node 3/4: needs 900 GB" and not status.complete
    assert node_state(2, runs[2], alive=True).state == "running"


# --------------------------------------------------------------------------- a campaign node's policy


def test_a_task_another_node_claimed_is_set_aside_until_that_node_finishes_it():
    tasks = [task("cal", kind="calibration"), task("edit", deps=["cal"])]
    board = Board()
    first, second = node(board, 1, tasks, "1x80"), node(board, 2, tasks, "1x80")
    assert [a.task.id for a in first.schedule()] == ["cal"]
    assert second.schedule() == [] and second.taken == {"cal"} and not second.done
    first.finished("n1w0", "cal")
    board.finished.add("cal")
    revisit(board, second)
    assert [a.task.id for a in second.schedule()] == ["edit"]  # the dependency finished elsewhere releases it
    assert first.schedule() == [] and first.taken == {"edit"}


def test_a_task_let_go_by_a_dead_node_comes_back():
    board = Board()
    first, second = node(board, 1, [task("a")], "1x80"), node(board, 2, [task("a")], "1x80")
    first.schedule()
    assert second.schedule() == [] and second.taken == {"a"}
    board.release(1)
    revisit(board, second)
    assert [a.task.id for a in second.schedule()] == ["a"] and board.claims["a"] == 2


def test_a_node_that_cannot_hold_a_task_leaves_it_to_the_others():
    class Small(NodeView):
        def claim(self, task: Task) -> Claim:
            return Claim.NOT_HERE if task.id == "big" else super().claim(task)

    policy = Policy([task("big"), task("small")], parse_gpu_spec("1x80"), queue_depth=1, campaign=Small(Board(), 1))
    policy.add_worker("w0", 0)
    assert [a.task.id for a in policy.schedule()] == ["small"]
    policy.finished("w0", "small")
    assert policy.done and policy.unplaceable == {}  # left, not given up: another node may run it


def test_a_task_wider_here_than_on_another_node_waits_while_the_larger_nodes_can_take_it():
    tasks = [task("wide", model="big", mem=120.0), task("narrow", model="small", mem=10.0)]
    board = Board(gpus={1: [80.0, 80.0], 2: [180.0, 180.0]})
    policy = node(board, 1, tasks, "2x80")
    assert [a.task.id for a in policy.schedule()][:1] == ["narrow"]


def test_a_smaller_node_starts_the_wide_work_it_owes_first_from_a_model_it_loads_anyway():
    """One 180 GB GPU cannot end 350 s of wide work with the 10 s of equal-width work on two 80 GB GPUs: the
    80 GB node owes some; less than the shared model's wide work, so it starts that, not the other model's."""
    tasks = [
        task("huge-w", model="huge", mem=120.0, seconds=150.0),
        task("mid-eq", model="mid", mem=10.0, seconds=10.0),
        *(task(f"mid-w{i}", model="mid", mem=120.0, seconds=100.0) for i in range(2)),
    ]
    board = Board(gpus={1: [80.0, 80.0], 2: [180.0]})
    first = node(board, 1, tasks, "2x80").schedule()[0]
    assert first.task.id.startswith("mid-w") and first.devices == (0, 1)
    more = [*tasks, *(task(f"huge-w{i}", model="huge", mem=120.0, seconds=100.0) for i in range(2))]
    assert node(Board(gpus=board.gpus), 1, more, "2x80").schedule()[0].task.model == "huge"  # owes more than mid's


def test_work_running_on_another_node_counts_half_in_what_a_smaller_node_owes():
    """Left alone, w2's 100 s on one 180 GB GPU end before the 210 s of equal-width work on two 80 GB GPUs; with
    half of w1 (running on the 180 GB node) still to do, they do not: the 80 GB node starts w2 first."""
    tasks = [
        task("eq", model="small", mem=10.0, seconds=210.0),
        *(task(f"w{i}", model="big", mem=120.0, seconds=100.0) for i in (1, 2)),
    ]
    board = Board(gpus={1: [80.0, 80.0], 2: [180.0]})
    board.holder["w1"] = 2
    policy = node(board, 1, tasks, "2x80")
    policy.taken_elsewhere("w1")  # as the adapter does on reading node 2's file
    assert [(a.task.id, a.devices) for a in policy.schedule()][:1] == [("w2", (0, 1))]


def test_a_worker_switching_models_joins_the_one_with_most_work_left():
    tasks = [task(f"l{i}", model="large", seconds=100.0) for i in range(4)] + [
        task(f"s{i}", model="small", seconds=5.0) for i in range(4)
    ]
    policy = node(Board(), 1, tasks, "1x80")
    assert policy.schedule()[0].task.model == "large"


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    nodes=st.integers(1, 4),
    models=st.integers(1, 3),
    edits=st.integers(0, 5),
    death=st.sampled_from([None, 0.3, 0.6]),
)
def test_nodes_sharing_a_board_run_every_task_once_after_its_dependencies(seed, nodes, models, edits, death):
    rng = random.Random(seed)
    tasks = []
    for m in range(models):
        tasks.append(task(f"m{m}-cal", model=f"m{m}", kind="calibration", seconds=rng.uniform(1, 9)))
        tasks += [task(f"m{m}-e{i}", model=f"m{m}", deps=[f"m{m}-cal"], seconds=rng.uniform(1, 9)) for i in range(edits)]
    board = Board()
    policies = {k: node(board, k, tasks, rng.choice(["1x80", "2x80"])) for k in range(1, nodes + 1)}
    running: dict[tuple[int, str], str] = {}  # (node, worker) -> task id
    ran: Counter[str] = Counter()
    dead: set[int] = set()
    kill_after = int(death * len(tasks)) if death is not None and nodes > 1 else None
    for _ in range(10 * len(tasks) + 50):
        for k, policy in policies.items():
            if k in dead:
                continue
            revisit(board, policy)
            for assignment in policy.schedule():
                assert (k, assignment.worker) not in running
                deps = set(assignment.task.deps)
                assert deps <= board.finished, f"{assignment.task.id} started before {deps - board.finished}"
                running[k, assignment.worker] = assignment.task.id
        if not running:
            break
        (k, worker), tid = rng.choice(sorted(running.items()))
        del running[k, worker]
        if kill_after is not None and len(board.finished) >= kill_after and not dead:
            dead.add(k)  # the node dies with its running tasks; the others take them back
            board.release(k)
            for key in [key for key in running if key[0] == k]:
                del running[key]
            continue
        ran[tid] += 1
        board.finished.add(tid)
        policies[k].finished(worker, tid)
    assert set(board.finished) == {t.id for t in tasks}, "every task ran"
    assert max(ran.values()) == 1, "no task finished twice"
    assert all(policy.done for k, policy in policies.items() if k not in dead)
