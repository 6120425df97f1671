"""One node of a campaign: `--campaign-node K/N` joins the run directory's campaign and claims work at run time.

Every node runs the same command on a run directory they all see; none is told which items to run.
On the controller (or the single process) of such a session:

- at session start the node joins (`claims.ClaimBoard.join`): the first node writes the campaign's
  manifest (suite, options, node count, the items in the order of work), every later one must match
  it, and node K's lock keeps a second session from running as node K. A mismatch is a usage error;
- with -n the GPU scheduler claims each item before it sends it (`scheduling.xdist_adapter`); without,
  this module runs the items itself, claiming each just before it runs (`claim_policy.next_claim`:
  its own model first, then one the others leave alone) and waiting, at the end, for items other nodes
  hold, which come back if their node dies;
- SIGTERM and SIGUSR1 (what Slurm sends on `scancel` and, with `--signal`, before the time limit) stop
  the session as Ctrl-C does: no new item starts, the partial verdict is written, the claims of items
  that did not finish are released for the other nodes;
- at the end the node records how it ended in its node file and the verdict says it is one node's view
  until the campaign is complete (`python -m pytest_invarlock report RUN_DIR` merges).

Plain tests collected beside the suite run on node 1 only. Torch-free (controller side).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.claims import CampaignError, ClaimBoard, manifest_items, read_claims
from pytest_invarlock.collection import campaign_items, suite_item
from pytest_invarlock.records import item_fields
from pytest_invarlock.report.command import load_records
from pytest_invarlock.scheduling.claim_policy import Claim, WorkItem, done_items, next_claim, parse_node, work_order
from pytest_invarlock.scheduling.shards import parse_shard, split_items
from pytest_invarlock.scheduling.tasks import task_id
from pytest_invarlock.state import ConfigState

NODE_PLUGIN = "invarlock-campaign-node"
CRASH_WHEN = "???"  # the phase of the report xdist makes for an item whose worker crashed
POLL_S = 2.0  # a node waiting for items other nodes hold looks again this often
STOP_SIGNALS = {"SIGTERM": "cancelled (SIGTERM)", "SIGUSR1": "stopped before the time limit (SIGUSR1)"}


def add_options(group: pytest.OptionGroup) -> None:
    """Joining a campaign of several nodes."""
    group.addoption(
        "--campaign-node",
        dest="invarlock_campaign_node",
        default=None,
        metavar="K/N",
        help="run as node K of N of one campaign in the shared --run-dir: every node runs the same command and "
        "claims items at run time, so faster or larger nodes take more and a node that stops leaves its items to "
        "the others; merge with `python -m pytest_invarlock report RUN_DIR` (see README, Several nodes)",
    )


def check_options(config: pytest.Config) -> tuple[str, int, int]:
    """(mode, K, N): "claims" for --campaign-node K/N, "shards" for --shard K/N; the options a node of a
    claimed campaign cannot take are usage errors that say why."""
    shard = config.getoption("invarlock_shard", None)
    spec = config.getoption("invarlock_campaign_node", None)
    try:
        k, n = parse_node(str(spec)) if spec else parse_shard(str(shard))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    if not spec:
        return "shards", k, n
    clashes = {
        "--shard": shard,
        "-k": config.getoption("keyword", ""),
        "-m": config.getoption("markexpr", ""),
        "--lf/--ff": config.getoption("lf", False) or config.getoption("failedfirst", False),
    }
    given = [name for name, value in clashes.items() if value]
    if given:
        raise pytest.UsageError(
            f"--campaign-node {k}/{n} cannot be combined with {', '.join(given)}: the campaign is the suite's items "
            "after the suite options, run once across all nodes. Narrow it with suite options instead (--models, "
            "--runs-*, --no-errors, --no-benchmarks, --calibrate-only), the same on every node."
        )
    return "claims", k, n


def manifest(state: ConfigState, mode: str, nodes: int) -> dict[str, Any]:
    """This node's idea of the campaign: what `claims.ClaimBoard.join` writes or compares. A sharded one also
    says which shard owns each item (the split every shard computes)."""
    from pytest_invarlock.scheduling.cost import item_cost
    from pytest_invarlock.scheduling.tasks import tasks_from_items

    items = campaign_items(state)
    tasks = tasks_from_items(items, [item.param_id for item in items])
    rows = [_work_item(item, task.deps, item_cost(item)) for item, task in zip(items, tasks)]
    options = state.options
    definitions = {item.param_id: item.definition_key for item in items}
    made: dict[str, Any] = {
        "mode": mode,
        "suite": state.suite.name,
        "suite_file": str(state.suite.path),
        "nodes": nodes,
        "min_signal_fraction": state.suite.min_signal_fraction,
        "options": {
            "device": state.device,
            "determinism": options.determinism,
            "offline": options.offline,
            "recompute": options.recompute,
            "calibrate_only": options.calibrate_only,
            "no_benchmarks": options.no_benchmarks,
        },
        "definitions": definitions,
        # The suite's items the options leave out: outside the work, inside the verdict's scope (a --no-benchmarks
        # campaign is not the whole suite, as a --no-benchmarks session is not).
        "left_out": {item.param_id: item.definition_key for item in state.items if item.param_id not in definitions},
        "item_fields": item_fields(state.items),
        "items": [row.to_json() for row in work_order(rows)],
    }
    if mode == "shards":
        made["owners"] = {pid: shard + 1 for pid, shard in split_items(items, nodes).items()}
    return made


def _work_item(item: SuiteItem, deps: frozenset[str], cost: float) -> WorkItem:
    return WorkItem(item.param_id, item.model.name, str(item.kind), tuple(sorted(deps)), round(cost, 3))


class BoundaryItem(pytest.Item):
    """Passed as `nextitem` while the next claim is unknown: an item at the session's level, never run, so an
    item's teardown keeps the session's fixtures (the worker's model cache) and drops the rest."""

    def runtest(self) -> None:
        raise AssertionError("the campaign's boundary item is never run")


class CampaignNode:
    """The node's pytest side: join, claim (without -n), stop on Slurm's signals, end, and say it is partial."""

    def __init__(self, config: pytest.Config, state: ConfigState, *, dist_chosen: bool) -> None:
        self.config, self.state, self.dist_chosen = config, state, dist_chosen
        self.mode, self.node, self.nodes = check_options(config)
        self.manifest = manifest(state, self.mode, self.nodes)
        self.board = ClaimBoard(state.run_dir, self.node, self.nodes)
        self.stopped_by: str | None = None
        self.ran = 0
        self._joined = False
        self._previous: dict[int, Any] = {}

    @property
    def label(self) -> str:
        return f"{'node' if self.mode == 'claims' else 'shard'} {self.node}/{self.nodes}"

    @property
    def claims(self) -> bool:
        """Whether this node claims its items at run time (else it runs its fixed shard)."""
        return self.mode == "claims"

    # ------------------------------------------------------------------ joining and ending

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.config.getoption("collectonly"):
            return  # --co lists what the node would run; it joins nothing
        if self.dist_chosen and self.claims:
            raise pytest.UsageError(
                f"--campaign-node {self.node}/{self.nodes} needs the plugin's GPU scheduler, which claims each item "
                "before it sends it: use -n N (or -n auto) without --dist."
            )
        run = {
            "args": list(self.config.invocation_params.args),
            "gpus": [gpu.total_gb for gpu in self.state.gpus],
            "cwd": str(self.config.invocation_params.dir),
        }
        try:
            self.board.join(self.manifest, run)
        except CampaignError as exc:
            raise pytest.UsageError(str(exc)) from None
        self._joined = True
        for name, reason in STOP_SIGNALS.items():
            number = getattr(signal, name, None)
            if number is not None:
                with suppress(ValueError):  # not the main thread
                    self._previous[number] = signal.signal(number, self._stop(reason))

    def _stop(self, reason: str) -> Callable[[int, Any], None]:
        """A handler that acts as Ctrl-C: it calls the SIGINT handler in place (so an interrupt swallowed inside an
        in-process evaluate is raised again, as for Ctrl-C), then raises KeyboardInterrupt itself."""

        def handler(signum: int, frame: Any) -> None:
            self.stopped_by = self.stopped_by or reason
            current = signal.getsignal(signal.SIGINT)
            if callable(current):  # pytest's, or interrupts_kept's during an in-process evaluate: it raises
                current(signal.SIGINT, frame)
            raise KeyboardInterrupt(reason)  # SIGINT ignored (a batch script's background job starts so)

        return handler

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """After the verdict is written (the reporter runs first): record how this session ended, free its claims."""
        for number, previous in self._previous.items():
            with suppress(ValueError, TypeError):
                signal.signal(number, previous)
        if not self._joined:
            return
        partial = self.stopped_by
        if partial is None and exitstatus == pytest.ExitCode.INTERRUPTED:
            partial = "interrupted"
        elif partial is None and (session.shouldfail or session.shouldstop):
            partial = "stopped early"
        elif partial is None and exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            partial = f"ended with pytest exit status {int(exitstatus)}"
        self.board.end(partial=partial, items_run=self.ran)
        self.board.close()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """A worker that crashed mid-item (xdist's report has `when` '???'): the item ended with that error record,
        unless this node is being stopped (then the item was cut short: its claim goes back to the others)."""
        if report.when == "teardown" and self._joined:
            self.ran += 1
        if str(report.when) != CRASH_WHEN or self.stopped_by is not None or not self._joined:
            return
        item = _item_of(self.state, report.nodeid)
        if item is not None:
            self.board.finish(item.param_id, "crashed")

    def scope(self) -> str | None:
        """Why this node's verdict is not the campaign's yet (None once every item of the campaign finished)."""
        if not self._joined:
            return None
        definitions: dict[str, str] = self.manifest["definitions"]
        records, _ = load_records(self.state.run_dir)
        done = done_items(definitions, records, read_claims(self.state.run_dir) if self.claims else None)
        missing = [pid for pid in definitions if pid not in done]
        if not missing:
            return None
        return (
            f"campaign {self.label}: {len(missing)} of {len(definitions)} item(s) not finished on any node yet; "
            f"the campaign's verdict: python -m pytest_invarlock report {self.state.run_dir}"
        )

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self._joined:
            terminalreporter.write_line(
                f"campaign {self.label}: ran {self.ran} item(s) here"
                + (f"; {self.stopped_by}: the items it had not finished go back to the other nodes" if self.stopped_by else "")
            )

    # ------------------------------------------------------------------ running without -n

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        """Without -n: run plain tests, then claim and run items one at a time until none is left to this node."""
        if self.config.getoption("dist", "no") != "no" or not self._joined or not self.claims:
            return None  # xdist's loop (its scheduler claims), or pytest's (a fixed shard)
        if session.testsfailed and not self.config.getoption("continue_on_collection_errors"):
            raise session.Interrupted(f"{session.testsfailed} error(s) during collection")
        if self.config.getoption("collectonly"):
            return True
        boundary = BoundaryItem.from_parent(session, name="invarlock-campaign-boundary")
        by_id = {suite.param_id: test for test in session.items if (suite := suite_item(test)) is not None}
        for test in [test for test in session.items if suite_item(test) is None]:
            self._run(session, test, boundary)
        for test in self._claimed(by_id):
            self._run(session, test, boundary)
            suite = suite_item(test)
            if suite is not None:
                self.board.finish(suite.param_id, "ran")
        from pytest_invarlock.compat import runtestprotocol

        runtestprotocol(boundary, nextitem=None, log=False)  # tears down what the last item set up
        return True

    def _run(self, session: pytest.Session, test: pytest.Item, boundary: pytest.Item) -> None:
        test.config.hook.pytest_runtest_protocol(item=test, nextitem=boundary)
        if session.shouldfail:
            raise session.Failed(session.shouldfail)
        if session.shouldstop:
            raise session.Interrupted(session.shouldstop)

    def _claimed(self, by_id: dict[str, pytest.Item]) -> Iterator[pytest.Item]:
        """The collected items this node claims, one at a time, in `next_claim`'s order; waits for items other
        nodes hold until each is finished or let go (then claims it)."""
        order = [row for row in manifest_items(self.manifest) if row.id in by_id]
        states: dict[str, Claim] = {}
        held: str | None = None
        while True:
            others = self.board.others()
            for pid in others.finished:
                states[pid] = Claim.DONE
            row = next_claim(order, states, held_model=held, elsewhere=others.workers)
            if row is None:
                waiting = [r.id for r in order if states.get(r.id) == Claim.TAKEN]
                if not waiting and all(states.get(r.id) in (Claim.DONE, Claim.NOT_HERE) for r in order):
                    return
                time.sleep(POLL_S)
                for pid in waiting:
                    states[pid] = self.board.look(pid)
                continue
            suite = suite_item(by_id[row.id])
            reason = self.state.unfit.get(task_id(suite)) if suite is not None else None
            if reason:
                self.board.leave(row.id, reason)
                states[row.id] = Claim.NOT_HERE
                continue
            states[row.id] = self.board.claim(row.id, row.model)
            if states[row.id] == Claim.MINE:
                yield by_id[row.id]
                states[row.id], held = Claim.DONE, row.model


def _item_of(state: ConfigState, nodeid: str) -> SuiteItem | None:
    from pytest_invarlock.campaign.items import item_from_nodeid

    return item_from_nodeid(nodeid, state.index)


def register(config: pytest.Config, state: ConfigState, *, dist_chosen: bool) -> CampaignNode | None:
    """The node plugin, with --campaign-node or --shard (on the controller, or the single process)."""
    if not (config.getoption("invarlock_campaign_node", None) or config.getoption("invarlock_shard", None)):
        return None
    node = CampaignNode(config, state, dist_chosen=dist_chosen)
    config.pluginmanager.register(node, NODE_PLUGIN)
    return node
