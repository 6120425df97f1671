"""The xdist adapter on a campaign's node, driven by fake xdist nodes (test_xdist_adapter's) and an in-memory board.

An item is sent only once this node claimed it; what another node holds is never sent, and comes back when that
node lets it go; a node with nothing of its own left waits (looking again) instead of ending while others hold
work; every completed item's claim is finished, and an item this node cannot hold is left, not skipped.
"""

from __future__ import annotations

import random

import test_xdist_adapter
from test_xdist_adapter import Cluster, make_state, suite_collection

from pytest_invarlock.scheduling.claim_policy import Claim, Others


class Board:
    """A node's `claim_policy.Board` over an in-memory run directory shared with a pretend other node."""

    def __init__(self) -> None:
        self.elsewhere: set[str] = set()  # items the other node holds
        self.done_elsewhere: set[str] = set()
        self.mine: list[str] = []
        self.finished: list[str] = []
        self.left: dict[str, str] = {}
        self.read = 0.0

    def claim(self, item: str, model: str) -> Claim:
        if item in self.done_elsewhere or item in self.finished:
            return Claim.DONE
        if item in self.elsewhere:
            return Claim.TAKEN
        self.mine.append(item)
        return Claim.MINE

    def look(self, item: str) -> Claim:
        return Claim.DONE if item in self.done_elsewhere else Claim.TAKEN if item in self.elsewhere else Claim.FREE

    def finish(self, item: str, outcome: str) -> None:
        assert item in self.mine, f"{item} finished without a claim"
        self.finished.append(item)

    def others(self) -> Others:
        self.read += 1.0  # a fresh reading every time
        return Others(running=dict.fromkeys(self.elsewhere, 2), finished=set(self.done_elsewhere), read_at=self.read)

    def leave(self, item: str, reason: str) -> None:
        self.left[item] = reason


def claiming(monkeypatch, state, board: Board, sleep) -> Cluster:
    """test_xdist_adapter's fake cluster, its scheduler a campaign node's on `board`."""
    plain = test_xdist_adapter.scheduler_for
    monkeypatch.setattr(
        test_xdist_adapter,
        "scheduler_for",
        lambda *args, **kwargs: plain(*args, **kwargs, claims=board, sleep=sleep, claim_poll_s=0.5),
    )
    return Cluster(state, [], suite_collection(state), workers=2)


def test_items_are_sent_only_once_claimed_and_every_completed_claim_is_finished(tmp_path, monkeypatch):
    state = make_state(tmp_path, "claims")
    board = Board()
    held = {i.param_id for i in state.items if i.model.name == "mid" and i.kind == "clean"}
    board.elsewhere |= held
    waits: list[float] = []

    def sleep(seconds: float) -> None:  # while this node waits, the other node finishes what it held
        waits.append(seconds)
        board.done_elsewhere |= board.elsewhere
        board.elsewhere.clear()

    cluster = claiming(monkeypatch, state, board, sleep)
    cluster.run(random.Random(0))
    sent = {nodeid.split("[")[1].rstrip("]") for nodeid, _ in cluster.started() if "[" in nodeid}
    assert sent == set(board.mine) and not sent & held and waits
    assert sorted(board.finished) == sorted(board.mine)
    assert {i.param_id for i in state.items} == set(board.finished) | held
    assert cluster.sched.tests_finished


def test_a_node_waits_for_items_held_elsewhere_and_takes_them_when_let_go(tmp_path, monkeypatch):
    state = make_state(tmp_path, "released")
    board = Board()
    board.elsewhere |= {i.param_id for i in state.items}  # another node holds everything

    waits: list[float] = []

    def sleep(seconds: float) -> None:  # that node dies: its claims are free
        waits.append(seconds)
        board.elsewhere.clear()

    cluster = claiming(monkeypatch, state, board, sleep)
    cluster.run(random.Random(1))
    assert waits == [0.5]
    assert sorted(board.finished) == sorted(i.param_id for i in state.items)  # all of them, here, once
