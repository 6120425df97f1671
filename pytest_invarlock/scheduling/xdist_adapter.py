"""pytest-xdist's scheduler protocol around `Policy`: suite items become tasks, assignments become sends.

Free of xdist imports (the fallback scheduler comes in from `distribution`), so the controller
stays light and the adapter is tested with fake nodes. The controller only receives nodeids:
every item's needs come from the suite through the item index, never from markers. What it adds to
the policy (spacer items behind held items, dead workers and hand-back notes, live memory readings,
claims in a campaign) and why: docs/scheduling.md.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from pytest_invarlock.campaign.items import SuiteItem, item_from_nodeid
from pytest_invarlock.scheduling.claim_policy import Board, Claim
from pytest_invarlock.scheduling.cost import timed_tasks
from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.placement import GpuHomes
from pytest_invarlock.scheduling.policy import Policy, Task
from pytest_invarlock.scheduling.tasks import FREE_KIND, FREE_MODEL, tasks_from_items

PROBE_INTERVAL_S = 5.0  # NVML reads take ~10 ms; dispatches come every few seconds on a busy node
CLAIM_POLL_S = 2.0  # an idle node of a campaign looks at the items other nodes hold this often


class Node(Protocol):
    """What the adapter uses of xdist's WorkerController."""

    gateway: Any

    @property
    def shutting_down(self) -> bool: ...

    def send_runtest_some(self, indices: Sequence[int]) -> None: ...


class Scheduling(Protocol):
    """xdist's `xdist.scheduler.protocol.Scheduling`, against `Node`: what the fallback and this adapter provide."""

    @property
    def nodes(self) -> list[Node]: ...

    @property
    def collection_is_completed(self) -> bool: ...

    @property
    def tests_finished(self) -> bool: ...

    @property
    def has_pending(self) -> bool: ...

    def add_node(self, node: Node) -> None: ...

    def add_node_collection(self, node: Node, collection: Sequence[str]) -> None: ...

    def mark_test_complete(self, node: Node, item_index: int, duration: float = 0) -> None: ...

    def mark_test_pending(self, item: str) -> None: ...

    def remove_pending_tests_from_node(self, node: Node, indices: Sequence[int]) -> None: ...

    def remove_node(self, node: Node) -> str | None: ...

    def schedule(self) -> None: ...


class GpuScheduling:
    """pytest-xdist's scheduler protocol around `Policy`; xdist's own scheduler where there is no suite item.

    The decision waits for the collection: a session without suite items (the plugin's own tests,
    say), or whose workers collected differently, goes to `fallback` untouched.
    """

    def __init__(
        self,
        index: dict[tuple[str, str], SuiteItem],
        skip_reason: Callable[[SuiteItem], str | None],
        on_placed: Callable[[SuiteItem, str, Sequence[int]], None],
        devices: Sequence[Gpu],
        homes: GpuHomes,
        *,
        numnodes: int,
        fallback: Scheduling,
        on_unplaceable: Callable[[str, str], None],
        log: Callable[..., None] = lambda *args: None,
        probe: Callable[[], Sequence[Gpu]] | None = None,
        probe_interval_s: float = PROBE_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        handback: Callable[[SuiteItem], dict[str, Any] | None] = lambda item: None,
        rerun_dead: bool = True,
        on_retry: Callable[[str, str], None] = lambda nodeid, why: None,
        claims: Board | None = None,
        not_here: Callable[[SuiteItem], str | None] = lambda item: None,
        claim_poll_s: float = CLAIM_POLL_S,
        sleep: Callable[[float], None] = time.sleep,
        stopping: Callable[[], bool] = lambda: False,
    ) -> None:
        self._handback, self._on_retry, self._rerun_dead = handback, on_retry, rerun_dead
        self._index_of, self._skip_reason, self._on_placed = index, skip_reason, on_placed
        self._devices, self._homes = list(devices), homes
        self._numnodes, self._fallback, self._on_unplaceable, self._log = numnodes, fallback, on_unplaceable, log
        self._delegate: Scheduling | None = None
        self._collections: dict[Node, list[str]] = {}
        self._departed: list[Node] = []  # workers that finished before the collection was complete
        self._pending: dict[Node, list[int]] = {}  # indices sent and not completed, spacers included
        self._admitted: dict[str, Node] = {}  # worker id -> node the policy knows
        self._collection: list[str] = []
        self._items: list[SuiteItem | None] = []  # suite item per index
        self._ids: list[str] = []  # task id per index
        self._index: dict[str, int] = {}
        self._policy: Policy | None = None
        self._failed: set[str] = set()
        self._reported: set[str] = set()
        self._placements: dict[str, tuple[int, ...]] = {}  # task id -> the GPUs it was last sent with
        self._probe, self._probe_interval_s, self._clock = probe, probe_interval_s, clock
        self._probed_at: float | None = None
        self._claims, self._not_here, self._claim_poll_s, self._sleep = claims, not_here, claim_poll_s, sleep
        self._others_read_at: float | None = None
        self._stopping = stopping

    @property
    def _started(self) -> Policy:
        """The policy; every caller runs after `_start` made it (work is only sent, finished or lost after that)."""
        if self._policy is None:
            raise RuntimeError("GpuScheduling: the policy is used before the collection started it")
        return self._policy

    @property
    def _spacer(self) -> int:
        return len(self._collection)

    # ------------------------------------------------------------------ xdist protocol

    @property
    def nodes(self) -> list[Node]:
        return self._delegate.nodes if self._delegate else list(self._pending)

    @property
    def collection_is_completed(self) -> bool:
        return self._delegate.collection_is_completed if self._delegate else len(self._collections) >= self._numnodes

    @property
    def tests_finished(self) -> bool:
        if self._delegate:
            return self._delegate.tests_finished
        return self._policy is not None and self._policy.done and not any(map(self._holds_work, self._pending.values()))

    @property
    def has_pending(self) -> bool:
        if self._delegate:
            return self._delegate.has_pending
        return any(map(self._holds_work, self._pending.values())) or (self._policy is not None and not self._policy.done)

    def add_node(self, node: Node) -> None:
        if self._delegate:
            return self._delegate.add_node(node)
        self._pending[node] = []

    def add_node_collection(self, node: Node, collection: Sequence[str]) -> None:
        if self._delegate:
            return self._delegate.add_node_collection(node, collection)
        self._collections[node] = list(collection)
        if self._policy is not None:  # a replacement for a crashed worker
            self._admit(node)

    def mark_test_complete(self, node: Node, item_index: int, duration: float = 0) -> None:
        if self._delegate:
            return self._delegate.mark_test_complete(node, item_index, duration)
        self._pending[node].remove(item_index)
        if item_index != self._spacer:
            ok = self._collection[item_index] not in self._failed
            self._started.finished(node.gateway.id, self._ids[item_index], ok=ok)
            self._finish_claim(item_index, ok)
        self._dispatch()

    def mark_test_pending(self, item: str) -> None:
        if self._delegate:
            return self._delegate.mark_test_pending(item)
        raise NotImplementedError(
            f"cannot rerun {item} on request: the GPU scheduler reruns an item whose worker died once by itself. "
            "Rerun the failures with --lf, or pass --dist load to use xdist's own scheduler."
        )

    def remove_pending_tests_from_node(self, node: Node, indices: Sequence[int]) -> None:
        if self._delegate:
            return self._delegate.remove_pending_tests_from_node(node, indices)
        raise NotImplementedError("the GPU scheduler never steals items, so no worker gives any back.")

    def remove_node(self, node: Node) -> str | None:
        """Forget a finished or crashed worker; return the item it was running, if any."""
        if self._delegate:
            return self._delegate.remove_node(node)
        worker = node.gateway.id
        self._homes.release(worker)
        pending = self._pending.pop(node)  # KeyError for a node never added, which xdist expects
        if self._policy is None:
            self._departed.append(node)  # a fallback chosen later must hear of it too
        if self._admitted.pop(worker, None) is None:
            return None
        if self._stopping():  # Ctrl-C or -x: the item was interrupted, not crashed; it runs in the next session
            self._started.worker_lost(worker, running=False)
            return None
        # A worker runs its pending items in order: the head is what ran, unless it was the spacer.
        running = pending[0] if pending and pending[0] != self._spacer else None
        retry, need_gb = self._retry_plan(worker, running)
        self._started.worker_lost(worker, running=running is not None, retry_running=retry, need_gb=need_gb)
        # xdist starts a replacement (unless its restart limit ends the session); until it arrives the
        # policy keeps the lost GPU's work waiting and the idle workers keep receiving theirs.
        self._dispatch()
        return None if running is None or retry else self._collection[running]

    def drop(self, nodeids: Sequence[str], reason: str) -> list[str]:
        """Drop suite items not yet sent to a worker (work they need failed); the caller reports them.
        Returns the nodeids dropped; items already sent end on their worker."""
        if self._policy is None or self._delegate:
            return []
        ids = [self._ids[self._index[nodeid]] for nodeid in nodeids if nodeid in self._index]
        dropped = [self._collection[self._index[tid]] for tid in self._policy.drop(ids, reason)]
        self._failed.update(dropped)
        return dropped

    def schedule(self) -> None:
        if self._delegate is None and self._policy is None:
            self._start()
        if self._delegate:
            return self._delegate.schedule()
        self._dispatch()

    # ------------------------------------------------------------------ controller-side reports

    def pytest_runtest_logreport(self, report: Any) -> None:
        """Failed items reach the policy as not ok (reports arrive before their completion)."""
        if report.failed:
            self._failed.add(report.nodeid)

    # ------------------------------------------------------------------ internals

    def _retry_plan(self, worker: str, running: int | None) -> tuple[bool, float | None]:
        """Whether the item its dead worker was running runs once more, and with which memory need (never with
        `--max-worker-restart 0`: xdist then reports it crashed and stops, as it documents)."""
        if running is None or not self._rerun_dead:
            return False, None
        item, task_id, nodeid = self._items[running], self._ids[running], self._collection[running]
        note = self._handback(item) if item is not None else None
        reason = (note or {}).get("reason")
        if reason == "timeout":
            return False, None
        if reason == "oom":
            placed = self._placements.get(task_id, ())
            need = sum(self._started.budget_gb(d) for d in placed) + 1.0 if placed else None
            self._on_retry(nodeid, f"out of GPU memory on GPU(s) {list(placed)}; it runs once more on a larger placement")
            return True, need
        if self._started.was_retried(task_id):
            return False, None
        self._on_retry(nodeid, f"worker {worker} died while running it; it runs once more, on another GPU where there is one")
        return True, None

    def _holds_work(self, pending: list[int]) -> bool:
        return any(index != self._spacer for index in pending)

    def _start(self) -> None:
        collections = list(self._collections.values())
        collection = collections[0] if collections else []
        items = [item_from_nodeid(nodeid, self._index_of) for nodeid in collection]
        if not any(items) or any(other != collection for other in collections):
            self._log("no suite items or differing collections: handing over to", type(self._fallback).__name__)
            self._delegate = self._fallback
            self._replay_to(self._fallback)
            return
        self._collection, self._items = collection, items
        seen: Counter[str] = Counter()
        for index, nodeid in enumerate(collection):
            seen[nodeid] += 1
            self._ids.append(nodeid if seen[nodeid] == 1 else f"{nodeid}#{index}")
        self._index = {tid: index for index, tid in enumerate(self._ids)}
        if self._claims is None:
            self._policy = Policy(self._tasks(), self._devices)
        else:  # a campaign's node: one queued item per worker, each claimed before it is sent
            campaign = NodeCampaign(self._claims, self._index, self._items, self._not_here)
            self._policy = Policy(self._tasks(), self._devices, queue_depth=1, campaign=campaign)
        for node in self._collections:
            self._admit(node)

    def _replay_to(self, fallback: Scheduling) -> None:
        """Tell the fallback what xdist told this adapter so far: every worker, its collection, and the workers
        that already finished (a worker with nothing to run can finish before the last collection arrives)."""
        for node in [*self._collections, *(n for n in self._pending if n not in self._collections)]:
            fallback.add_node(node)
            if node in self._collections:
                fallback.add_node_collection(node, self._collections[node])
            if node in self._departed:
                fallback.remove_node(node)

    def _tasks(self) -> list[Task]:
        """Planned tasks for the suite items that will run here; free tasks for the rest."""
        runs = [(tid, item) for tid, item in zip(self._ids, self._items) if item is not None and self._skip_reason(item) is None]
        planned = {tid for tid, _ in runs}
        free = [Task(tid, FREE_MODEL, FREE_KIND, 0.0, 0.0) for tid in self._ids if tid not in planned]
        items = [item for _, item in runs]
        tasks = tasks_from_items(items, [tid for tid, _ in runs])
        return (tasks if self._claims is None else timed_tasks(tasks, items)) + free

    def _admit(self, node: Node) -> None:
        worker = node.gateway.id
        if self._collections[node] != self._collection:
            self._log(f"worker {worker} collected other items than the first workers; it gets no work")
            return
        self._started.add_worker(worker, self._homes.home(worker))
        self._admitted[worker] = node

    def _observe_free(self) -> None:
        """Hand the policy fresh free-memory readings, at most once per probe interval."""
        now = self._clock()
        if self._probe is None or (self._probed_at is not None and now - self._probed_at < self._probe_interval_s):
            return
        self._probed_at = now
        known = {device.index for device in self._devices}
        for gpu in self._probe():
            if gpu.index in known:
                self._started.observe_free(gpu.index, gpu.free_gb)

    def _dispatch(self) -> None:
        """Send what the policy assigns; report what it gives up on; keep no worker holding a lone item.
        Once the session is stopping (Ctrl-C, -x), nothing new is sent: xdist shuts each worker down only after
        the event that stopped it, and a worker runs what it was sent before its shutdown."""
        if self._stopping():
            return
        self._observe_free()
        self._watch_other_nodes()
        batches: dict[Node, list[int]] = defaultdict(list)
        for assignment in self._started.schedule():
            node = self._admitted[assignment.worker]
            if node.shutting_down:  # the session is stopping (-x, Ctrl-C): nothing new starts
                continue
            index = self._index[assignment.task.id]
            self._placements[assignment.task.id] = assignment.devices
            item = self._items[index]
            if item is not None:
                self._on_placed(item, assignment.worker, assignment.devices)
            batches[node].append(index)
        for tid, reason in self._started.unplaceable.items():
            if tid not in self._reported:
                self._reported.add(tid)
                self._give_up(tid, reason)
        for node, pending in self._pending.items():
            if node.shutting_down:
                continue
            batch = batches.get(node, [])
            if len(pending) + len(batch) == 1 and self._holds_work(pending + batch):
                batch.append(self._spacer)
            if batch:
                pending.extend(batch)
                node.send_runtest_some(batch)
        self._wait_for_other_nodes()

    def _give_up(self, tid: str, reason: str) -> None:
        """An item the policy cannot place: reported as skipped; on a campaign's node, left to the other nodes."""
        item = self._items[self._index[tid]]
        if self._claims is not None and item is not None:
            self._claims.leave(item.param_id, reason)
            return
        self._on_unplaceable(self._collection[self._index[tid]], reason)

    # ------------------------------------------------------------------ a campaign's other nodes

    def _watch_other_nodes(self) -> None:
        """Tell the policy what the other nodes run and finished since the last reading (read at most every few
        seconds); look again at each item they held: finished, or let go by a node that stopped."""
        if self._claims is None:
            return
        others = self._claims.others()
        if others.read_at == self._others_read_at:
            return
        self._others_read_at = others.read_at
        policy = self._started
        for index, item in enumerate(self._items):
            if item is None:
                continue
            tid = self._ids[index]
            if item.param_id in others.finished:
                policy.finished_elsewhere(tid)
            elif item.param_id in others.running:
                policy.taken_elsewhere(tid)
        for tid in policy.taken:  # a node file can be late: the item's lock says whether it is still held
            item = self._items[self._index[tid]]
            if item is None:
                continue
            state = self._claims.look(item.param_id)
            if state in (Claim.DONE, Claim.FREE):
                policy.taken_ended(tid, finished=state == Claim.DONE)

    def _finish_claim(self, index: int, ok: bool) -> None:
        """The item completed here and its record is written: finished for the whole campaign."""
        item = self._items[index]
        if self._claims is not None and item is not None:
            self._claims.finish(item.param_id, "passed" if ok else "failed")

    def _wait_for_other_nodes(self) -> None:
        """Nothing of this node runs and all that is left is held by other nodes: look again every claim_poll_s
        until one of those items is finished or let go (a dead node's), then dispatch again."""
        if self._claims is None:
            return
        policy = self._started
        while (
            policy.taken
            and not any(map(self._holds_work, self._pending.values()))
            and not any(node.shutting_down for node in self._pending)
        ):
            before = policy.taken
            self._sleep(self._claim_poll_s)
            self._watch_other_nodes()
            if policy.taken != before:
                self._dispatch()
                return


class NodeCampaign:
    """The policy's view of the campaign (`policy.Campaign`) for this node: claims keyed by item, not task id."""

    def __init__(
        self, board: Board, index: dict[str, int], items: Sequence[SuiteItem | None], not_here: Callable[[SuiteItem], str | None]
    ) -> None:
        self._board, self._index, self._items, self._not_here = board, index, items, not_here

    def claim(self, task: Task) -> Claim:
        item = self._items[self._index[task.id]]
        if item is None:  # a plain test: only node 1 collects those
            return Claim.MINE
        reason = self._not_here(item)
        if reason is not None:
            self._board.leave(item.param_id, reason)
            return Claim.NOT_HERE
        return self._board.claim(item.param_id, item.model.name)

    def workers_on(self, model: str) -> int:
        return self._board.others().workers[model]

    def node_gpus(self) -> Sequence[Sequence[float]]:
        return self._board.others().node_gpus
