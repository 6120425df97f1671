"""GPU scheduling on the xdist controller: suite items become policy tasks, assignments become sends.

Torch-free, and free of xdist imports (the fallback scheduler comes in from `xdist_plugin`), so the
controller stays light and the adapter is tested with fake nodes. The controller only receives
nodeids: every item's needs come from the suite through `state.index`, never from markers.

Held items: an xdist worker runs an item only once the next one (or a shutdown) has arrived. When
the policy leaves a worker with a single item (its model's last calibration, say, with every edit
waiting on it), the adapter sends a *spacer* behind it: the index one past the collection, which
workers append to their items and run as a silent no-op (`xdist_plugin.WorkerSpacer`). Workers
are never shut down one by one: a crash can hand work back to the policy at any time, so shutdown
comes for all of them at once, from xdist, when `tests_finished` says nothing real is left.

Placement: before sending a suite item, the controller writes its devices to
`<run-dir>/state/placement/`; `placement_devices` reads them back on the worker, which exposes
them to the code that runs the item (`cuda_env`).
"""

from __future__ import annotations

import csv
import json
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Protocol, Sequence

from .gpus import Gpu
from .items import Item, item_from_nodeid
from .memory import MarginRule, ModelProfile, item_memory_gb, kv_cache_gb, required_gpus
from .policy import Policy, Task
from .store import write_json_atomic

if TYPE_CHECKING:
    from .context import ConfigState
    from .suite import Model

AFTER_CALIBRATION = ("clean", "stress", "error")  # items that need their model's calibrated preset
FREE_MODEL, FREE_KIND = "", "setup"  # plain tests and items workers skip: no model, no memory, first
CPU_DEVICE_GB = 1e6  # a CPU worker's stand-in device: deps and affinity still apply, memory never binds
PLACEMENT_DIR = Path("state") / "placement"
PLAN_CSV = Path("analysis") / "memory_plan.csv"

# --------------------------------------------------------------------------- memory plan


def task_id(item: Item) -> str:
    return f"{item.test}[{item.param_id}]"


def model_profile(model: Model) -> ModelProfile:
    """The torch-free profile from the suite's declared size and shape."""
    return ModelProfile.from_declared(model.params_b, model.dtype, is_moe=model.size_class == "moe", **model.architecture)


def item_need_gb(item: Item) -> float:
    settings = item.model.settings
    return item_memory_gb(model_profile(item.model), item.kind, seq_len=settings.seq_len, batch=settings.eval_batch)


def tasks_from_items(items: Sequence[Item], ids: Sequence[str] | None = None) -> list[Task]:
    """One task per item (ids default to test[param_id]); edits and errors wait for their model's calibrations."""
    ids = [task_id(item) for item in items] if ids is None else list(ids)
    calibrations: dict[str, set[str]] = defaultdict(set)
    for tid, item in zip(ids, items):
        if item.kind == "calibration":
            calibrations[item.model.name].add(tid)
    tasks = []
    for tid, item in zip(ids, items):
        deps = frozenset(calibrations[item.model.name]) if item.kind in AFTER_CALIBRATION else frozenset()
        tasks.append(Task(tid, item.model.name, item.kind, item_need_gb(item), model_profile(item.model).weights_gb, deps))
    return tasks


@dataclass(frozen=True)
class PlanRow:
    nodeid: str
    model: str
    kind: str
    dtype: str
    params_b: float
    weights_gb: float
    kv_gb: float
    need_gb: float
    gpus: int | None  # GPUs the item needs on this node; None without an inventory
    note: str  # why it is skipped here, if it is; placement first (a --gpus plan on a CPU host)


def plan_rows(state: ConfigState, gpus: Sequence[Gpu], nodeids: Iterable[str], margin: MarginRule = MarginRule()) -> list[PlanRow]:
    """The memory plan of the suite items among `nodeids`, in their order."""
    largest = max((margin.usable_gb(g.total_gb) for g in gpus), default=0.0)
    rows = []
    for nodeid in nodeids:
        item = item_from_nodeid(nodeid, state.index)
        if item is None:
            continue
        model, need = item.model, item_need_gb(item)
        profile = model_profile(model)
        kv = 0.0 if item.kind == "benchmark" else kv_cache_gb(profile, seq_len=model.settings.seq_len, batch=model.settings.eval_batch)
        rows.append(PlanRow(nodeid, model.name, item.kind, model.dtype, model.params_b, profile.weights_gb, kv, need,
                            required_gpus(need, largest) if largest > 0 else None,
                            unfit_reason(state, item) or state.skip_reason(item) or ""))
    return rows


def write_plan_csv(rows: Sequence[PlanRow], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[f.name for f in fields(PlanRow)])
        writer.writeheader()
        for row in rows:
            writer.writerow({key: round(value, 3) if isinstance(value, float) else value for key, value in asdict(row).items()})


def format_plan_table(rows: Sequence[PlanRow], gpus: Sequence[Gpu]) -> list[str]:
    """The plan as aligned text lines: an inventory line, a header, one line per item."""
    sizes = Counter(g.total_gb for g in gpus)
    inventory = " + ".join(f"{n} x {size:g} GB" for size, n in sorted(sizes.items(), reverse=True)) or "no GPU (CPU run)"
    table = [("item", "kind", "weights GB", "KV GB", "peak GB", "GPUs", "note")]
    for row in rows:
        table.append((row.nodeid.split("::")[-1], row.kind, f"{row.weights_gb:.1f}", f"{row.kv_gb:.1f}", f"{row.need_gb:.1f}",
                      "-" if row.gpus is None else str(row.gpus), row.note))
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() for line in table]
    return [f"GPUs: {inventory}; {len(rows)} item(s)", *lines]


# --------------------------------------------------------------------------- inventory and devices



def register_inventory(state: ConfigState, gpus: Sequence[Gpu]) -> None:
    """The node's GPUs for `unfit_reason`; the xdist plugin registers them in every process at configure."""
    state.gpus = list(gpus)
    state.unfit = None


def unfit_reason(state: ConfigState, item: Item) -> str | None:
    """Why no set of this node's GPUs can hold the item (the policy's own rule), or None; None without GPUs."""
    if not state.gpus:
        return None
    if state.unfit is None:
        state.unfit = Policy(tasks_from_items(state.items), state.gpus).unplaceable
    return state.unfit.get(task_id(item))


def scheduling_devices(gpus: Sequence[Gpu], workers: int) -> list[Gpu]:
    """The devices the policy places on: the GPUs, or on a CPU run one unbounded stand-in per worker."""
    if gpus:
        return list(gpus)
    return [Gpu(i, CPU_DEVICE_GB, CPU_DEVICE_GB, 0, "cpu") for i in range(max(1, workers))]


def cuda_env(devices: Sequence[int]) -> dict[str, str]:
    """Environment that shows a process exactly `devices` (NVML indices, hence PCI bus order)."""
    return {"CUDA_VISIBLE_DEVICES": ",".join(str(d) for d in devices), "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}


class GpuHomes:
    """Each worker's home device: the least shared one, and after a crash the one the lost worker freed."""

    def __init__(self, devices: Sequence[int]) -> None:
        self._devices = list(devices)
        self._home: dict[str, int] = {}
        self._freed: int | None = None

    def assign(self, worker: str) -> int:
        load = Counter(self._home.values())
        device = min(self._devices, key=lambda d: (load[d], d != self._freed, d))
        self._home[worker] = device
        return device

    def home(self, worker: str) -> int:
        return self._home[worker]

    def release(self, worker: str) -> None:
        self._freed = self._home.pop(worker, None)


def placement_path(state: ConfigState, item: Item) -> Path:
    return state.run_dir / PLACEMENT_DIR / f"{item.test}.{item.param_id}.json"


def write_placement(state: ConfigState, item: Item, worker: str, devices: Sequence[int]) -> None:
    write_json_atomic(placement_path(state, item), {"session": state.session, "worker": worker, "devices": list(devices)})


def placement_devices(state: ConfigState, item: Item) -> list[int] | None:
    """The GPUs (NVML indices, home first) this session's scheduler gave the item; None when it placed none.

    A multi-GPU item runs in its worker's process, which sees only its home GPU: start the code that
    needs the others with `cuda_env(placement_devices(...))`.
    """
    try:
        placement = json.loads(placement_path(state, item).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return list(placement["devices"]) if placement.get("session") == state.session else None


# --------------------------------------------------------------------------- the xdist adapter


class Node(Protocol):
    """What the adapter uses of xdist's WorkerController."""

    gateway: Any

    @property
    def shutting_down(self) -> bool: ...

    def send_runtest_some(self, indices: Sequence[int]) -> None: ...


class GpuScheduling:
    """pytest-xdist's scheduler protocol around `Policy`; xdist's own scheduler where there is no suite item.

    The decision waits for the collection: a session without suite items (the plugin's own tests,
    say), or whose workers collected differently, goes to `fallback` untouched.
    """

    def __init__(
        self,
        state: ConfigState,
        devices: Sequence[Gpu],
        homes: GpuHomes,
        *,
        numnodes: int,
        fallback: Any,
        on_unplaceable: Callable[[str, str], None],
        log: Callable[..., None] = lambda *args: None,
    ) -> None:
        self._state, self._devices, self._homes = state, list(devices), homes
        self._numnodes, self._fallback, self._on_unplaceable, self._log = numnodes, fallback, on_unplaceable, log
        self._delegate: Any = None
        self._collections: dict[Node, list[str]] = {}
        self._pending: dict[Node, list[int]] = {}  # indices sent and not completed, spacers included
        self._admitted: dict[str, Node] = {}  # worker id -> node the policy knows
        self._collection: list[str] = []
        self._items: list[Item | None] = []  # suite item per index
        self._ids: list[str] = []  # task id per index
        self._index: dict[str, int] = {}
        self._policy: Policy | None = None
        self._failed: set[str] = set()
        self._reported: set[str] = set()
        self._replacements = 0  # workers lost and not yet replaced

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
            self._policy.finished(node.gateway.id, self._ids[item_index], ok=ok)
        self._dispatch()

    def mark_test_pending(self, item: str) -> None:
        if self._delegate:
            return self._delegate.mark_test_pending(item)
        raise NotImplementedError(
            f"cannot rerun {item}: the GPU scheduler never retries an item whose worker crashed. "
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
        if self._admitted.pop(worker, None) is None:
            return None
        self._policy.worker_lost(worker)
        self._replacements += 1  # xdist starts one, unless its restart limit is reached and the session ends
        self._dispatch()
        running = next((index for index in pending if index != self._spacer), None)
        return None if running is None else self._collection[running]

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

    def _holds_work(self, pending: list[int]) -> bool:
        return any(index != self._spacer for index in pending)

    def _start(self) -> None:
        collections = list(self._collections.values())
        collection = collections[0] if collections else []
        items = [item_from_nodeid(nodeid, self._state.index) for nodeid in collection]
        if not any(items) or any(other != collection for other in collections):
            self._log("no suite items or differing collections: handing over to", type(self._fallback).__name__)
            self._delegate = self._fallback
            for node in self._pending:
                self._delegate.add_node(node)
                if node in self._collections:
                    self._delegate.add_node_collection(node, self._collections[node])
            return
        self._collection, self._items = collection, items
        seen: Counter[str] = Counter()
        for index, nodeid in enumerate(collection):
            seen[nodeid] += 1
            self._ids.append(nodeid if seen[nodeid] == 1 else f"{nodeid}#{index}")
        self._index = {tid: index for index, tid in enumerate(self._ids)}
        self._policy = Policy(self._tasks(), self._devices)
        for node in self._collections:
            self._admit(node)

    def _tasks(self) -> list[Task]:
        """Planned tasks for the suite items that will run here; free tasks for the rest."""
        runs = [(tid, item) for tid, item in zip(self._ids, self._items) if item is not None and self._state.skip_reason(item) is None]
        planned = {tid for tid, _ in runs}
        free = [Task(tid, FREE_MODEL, FREE_KIND, 0.0, 0.0) for tid in self._ids if tid not in planned]
        return tasks_from_items([item for _, item in runs], [tid for tid, _ in runs]) + free

    def _admit(self, node: Node) -> None:
        worker = node.gateway.id
        self._replacements = max(0, self._replacements - 1)
        if self._collections[node] != self._collection:
            self._log(f"worker {worker} collected other items than the first workers; it gets no work")
            return
        self._policy.add_worker(worker, self._homes.home(worker))
        self._admitted[worker] = node

    def _dispatch(self) -> None:
        """Send what the policy assigns; report what it gives up on; keep no worker holding a lone item."""
        if self._replacements and not any(map(self._holds_work, self._pending.values())):
            return  # nothing runs, so the policy would give up on work that only the coming replacement can take
        batches: dict[Node, list[int]] = defaultdict(list)
        for assignment in self._policy.schedule():
            node = self._admitted[assignment.worker]
            if node.shutting_down:  # the session is stopping (-x, Ctrl-C): nothing new starts
                continue
            index = self._index[assignment.task.id]
            item = self._items[index]
            if item is not None:
                write_placement(self._state, item, assignment.worker, assignment.devices)
            batches[node].append(index)
        for tid, reason in self._policy.unplaceable.items():
            if tid not in self._reported:
                self._reported.add(tid)
                self._on_unplaceable(self._collection[self._index[tid]], reason)
        for node, pending in self._pending.items():
            if node.shutting_down:
                continue
            batch = batches.get(node, [])
            if len(pending) + len(batch) == 1 and self._holds_work(pending + batch):
                batch.append(self._spacer)
            if batch:
                pending.extend(batch)
                node.send_runtest_some(batch)
