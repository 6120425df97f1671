"""Work claimed at run time by the nodes of one campaign: the rules that need no file. Pure.

Nodes that join one campaign share its run directory and claim each item just before running it
(`pytest_invarlock.claims` keeps the claims on disk). This module decides what does not touch the
disk, so the xdist adapter, the single-process loop, the simulator and the tests share it:

- `Claim`: what an attempt to claim an item found;
- `WorkItem` and `work_order`: the campaign's items as its manifest lists them, largest model first;
- `next_claim`: which item a node without xdist tries next: its own model first, then a model
  fewer other nodes work on, then the order of work;
- `manifest_differences`: why a node's campaign is not the one its run directory holds;
- `campaign_status`: what the merge says: missing and incomplete nodes, items without a record
  and who owned them.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

_NODE = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


def parse_node(spec: str) -> tuple[int, int]:
    """'K/N' (--campaign-node) -> (K, N), 1 <= K <= N."""
    match = _NODE.match(spec or "")
    if not match or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise ValueError(
            f"--campaign-node {spec!r}: write K/N, this node's number and the number of nodes of the campaign "
            "(e.g. 2/4: node 2 of 4). Every node of one campaign gives the same N."
        )
    return int(match.group(1)), int(match.group(2))


class Claim(StrEnum):
    """What a node found when it tried to claim an item (or looked at one)."""

    MINE = "mine"  # this node holds the claim now: it runs the item
    FREE = "free"  # nobody holds it and it is not finished (a look, not a claim)
    TAKEN = "taken"  # another node holds it; it comes back if that node stops before finishing it
    DONE = "done"  # a node of the campaign finished it
    NOT_HERE = "not here"  # this node cannot run it (its GPUs cannot hold it): left to the others


SETTLED = frozenset({Claim.DONE, Claim.NOT_HERE})  # nothing left to wait for, from this node's side


@dataclass(frozen=True)
class WorkItem:
    """One item of the campaign as the manifest lists it: its param id, model, kind and what should finish first."""

    id: str
    model: str
    kind: str
    deps: tuple[str, ...] = ()
    cost: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "model": self.model, "kind": self.kind, "deps": list(self.deps), "cost": self.cost}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> WorkItem:
        return cls(
            str(data["id"]), str(data["model"]), str(data["kind"]), tuple(data.get("deps") or ()), float(data.get("cost") or 0.0)
        )


@dataclass
class Others:
    """What a node last read of the other nodes of its campaign (their node files)."""

    running: dict[str, int] = field(default_factory=dict)  # item -> the node running it
    finished: set[str] = field(default_factory=set)
    workers: Counter[str] = field(default_factory=Counter)  # model -> workers of other nodes on it
    node_gpus: list[list[float]] = field(default_factory=list)  # the GPUs (total GB) of each other node working now
    read_at: float = -1e18


class Board(Protocol):
    """A node's claims on the campaign (`pytest_invarlock.claims.ClaimBoard`), as the scheduler uses them."""

    def claim(self, item: str, model: str) -> Claim: ...

    def look(self, item: str) -> Claim: ...

    def finish(self, item: str, outcome: str) -> None: ...

    def others(self) -> Others: ...

    def leave(self, item: str, reason: str) -> None: ...


def work_order(items: Iterable[WorkItem]) -> list[WorkItem]:
    """The campaign's order of work: models by their total cost, largest first (a large model started last
    would end last), each model's items in the order given (calibrations first, as the suite lists them)."""
    items = list(items)
    totals: defaultdict[str, float] = defaultdict(float)
    first: dict[str, int] = {}
    for index, item in enumerate(items):
        totals[item.model] += item.cost
        first.setdefault(item.model, index)
    rank = {model: (-totals[model], first[model]) for model in totals}
    return sorted(items, key=lambda item: rank[item.model])


def is_ready(item: WorkItem, states: Mapping[str, Claim]) -> bool:
    """Every dependency of the item is settled (finished somewhere, or one this node cannot run)."""
    return all(states.get(dep, Claim.FREE) in SETTLED for dep in item.deps)


def next_claim(
    order: Sequence[WorkItem], states: Mapping[str, Claim], *, held_model: str | None, elsewhere: Mapping[str, int]
) -> WorkItem | None:
    """The item a single-process node should try to claim next, or None when nothing free is ready.

    `states`: what this node last learnt of each item (absent: never looked at, taken as free);
    `held_model`: the model this node has loaded; `elsewhere`: model -> how many other nodes work on it now.
    The node's own model first; else the model fewest other nodes work on (a node then loads models the
    others do not); ties in the order of work.
    """
    ready = [item for item in order if states.get(item.id, Claim.FREE) == Claim.FREE and is_ready(item, states)]
    if not ready:
        return None
    own = [item for item in ready if item.model == held_model]
    if own:
        return own[0]
    position = {item.id: index for index, item in enumerate(ready)}
    return min(ready, key=lambda item: (elsewhere.get(item.model, 0), position[item.id]))


def manifest_differences(existing: Mapping[str, Any], mine: Mapping[str, Any]) -> list[str]:
    """What differs between the run directory's campaign and the one this node would run (empty: the same).

    Compared: the suite, the options that define the items, the node count and every item's definition.
    """
    differences = []
    for key in ("mode", "suite", "nodes"):
        if existing.get(key) != mine.get(key):
            differences.append(f"{key}: the campaign has {existing.get(key)!r}, this node {mine.get(key)!r}")
    options, own = existing.get("options") or {}, mine.get("options") or {}
    for key in sorted(set(options) | set(own)):
        if options.get(key) != own.get(key):
            differences.append(f"option {key}: the campaign has {options.get(key)!r}, this node {own.get(key)!r}")
    theirs, ours = existing.get("definitions") or {}, mine.get("definitions") or {}
    only_theirs, only_ours = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
    changed = sorted(pid for pid in set(theirs) & set(ours) if theirs[pid] != ours[pid])
    for what, ids in (
        ("items only the campaign has", only_theirs),
        ("items only this node has", only_ours),
        ("items defined differently", changed),
    ):
        if ids:
            differences.append(f"{what}: {len(ids)} ({', '.join(ids[:3])}{' ...' if len(ids) > 3 else ''})")
    return differences


# --------------------------------------------------------------------------- the merge's view


def done_items(
    definitions: Mapping[str, str], records: Iterable[Mapping[str, Any]], claims: Mapping[str, Mapping[str, Any]] | None
) -> set[str]:
    """The campaign's items that are done: a record of the item's current definition and, in a claimed campaign
    (`claims` given), a finished claim; a record left by a node stopped mid-item does not count."""
    recorded = {r.get("param_id") for r in records if definitions.get(str(r.get("param_id"))) == r.get("definition_key")}
    return {pid for pid in definitions if pid in recorded and (claims is None or (claims.get(pid) or {}).get("finished"))}


@dataclass(frozen=True)
class NodeState:
    """One node of the campaign as the merge sees it."""

    node: int
    state: str  # finished | running | stopped | died | never started
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.state == "finished"


@dataclass(frozen=True)
class CampaignStatus:
    nodes: list[NodeState]
    missing: list[tuple[str, str]]  # item id -> why it has no record
    owners: dict[str, int] = field(default_factory=dict)  # item id -> the node that last claimed it

    @property
    def complete(self) -> bool:
        return not self.missing


def node_state(node: int, runs: Sequence[Mapping[str, Any]], alive: bool) -> NodeState:
    """A node from its runs (each session that joined as this node appends one) and whether it holds its lock now."""
    if not runs:
        return NodeState(node, "never started", "(no session joined as this node)")
    last = runs[-1]
    where = f"{last.get('host', '?')} pid {last.get('pid', '?')}"
    if alive:
        return NodeState(node, "running", f"on {where}")
    if not last.get("ended"):
        return NodeState(node, "died", f"on {where}: it ended without a word (killed, or its host went down)")
    if last.get("partial"):
        return NodeState(node, "stopped", f"on {where}: {last['partial']}")
    return NodeState(node, "finished", f"on {where}")


def campaign_status(
    items: Sequence[WorkItem],
    nodes: int,
    runs: Mapping[int, Sequence[Mapping[str, Any]]],
    alive: Iterable[int],
    claims: Mapping[str, Mapping[str, Any]],
    recorded: Iterable[str],
    *,
    sharded: bool = False,
) -> CampaignStatus:
    """Which nodes did not finish and which items have no record, each with the reason the files give.

    `runs`: node -> its sessions (node files); `alive`: nodes holding their lock now; `claims`: item ->
    its last claim (`node`, `finished`), or with `sharded` the shard that owns it; `recorded`: items done.
    """
    alive = set(alive)
    states = [node_state(k, runs.get(k, ()), k in alive) for k in range(1, nodes + 1)]
    by_node = {s.node: s for s in states}
    left: dict[str, list[str]] = defaultdict(list)  # item -> "node K: why it cannot run it"
    for k, sessions in sorted(runs.items()):
        for pid, reason in (sessions[-1].get("left") or {}).items() if sessions else ():
            left[pid].append(f"node {k}/{nodes}: {reason}")
    done = set(recorded)
    missing = []
    owners = {pid: int(claim["node"]) for pid, claim in claims.items() if claim.get("node") is not None}
    for item in items:
        if item.id in done:
            continue
        owner = owners.get(item.id)
        if owner is not None and owner in by_node:
            state = by_node[owner]
            who = f"in shard {owner}/{nodes}" if sharded else f"claimed by node {owner}/{nodes}"
            why = f"{who}, which {_verb(state)}"
        elif left[item.id]:
            why = "no node ran it: " + "; ".join(left[item.id])
        else:
            why = "never claimed: no node reached it"
        missing.append((item.id, why))
    return CampaignStatus(states, missing, owners)


def _verb(state: NodeState) -> str:
    return {
        "running": f"is still running it ({state.detail})",
        "died": f"died before recording it ({state.detail})",
        "stopped": f"stopped before finishing it ({state.detail})",
        "finished": "finished without recording it",
    }.get(state.state, state.state)
