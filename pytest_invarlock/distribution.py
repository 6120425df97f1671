"""pytest-xdist integration of a validation session: one home GPU per worker, and the GPU scheduler.

Controller: gives every worker a home GPU and its share of the node-wide host-RAM model-cache budget
(`ConfigState.host_cache_bytes`) through `workerinput` (a replacement for a crashed worker gets the GPU
its predecessor freed), re-reads NVML's free memory while dispatching, and schedules with `GpuScheduling` unless the user chose a
`--dist` mode: an explicit `--dist` (even `--dist load`) gets xdist's own scheduler, and `-n` alone
gets ours. Every run writes the per-item memory plan as CSV (analysis/memory_plan.csv); `--gpu-plan`
also prints it, with or without `-n`, and with `--co`.

Worker: sets the visibility variables of its home device (`placement.cuda_env`: CUDA_VISIBLE_DEVICES,
or ROCR_/HIP_VISIBLE_DEVICES on AMD) as soon as xdist hands it `workerinput` (in pytest_cmdline_main,
before any pytest_configure); conftest files are imported earlier still, so they may import torch
but must not touch CUDA at import time. It also adds the spacer item the scheduler uses to release
a held item. A session without xdist binds itself the same way to the probed devices it may use
(all of them, less those --gpu-require-idle left out).

Passive outside a validation session: the module-level hooks act only on what an active controller
put in `workerinput`, or when `state.declared_suite` names a suite; the rest is registered by
`register_session_pieces`. Torch-free: this module is loaded on the controller.
PYTEST_DONT_REWRITE: `plugin` imports this module before pytest reaches its `pytest_plugins` list (for the
options), so pytest < 9 would warn that it is already imported; it has no asserts to rewrite.
"""

from __future__ import annotations

import os
from collections.abc import Generator
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock import campaign_node
from pytest_invarlock.campaign.items import item_from_nodeid
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.compat import runtestprotocol
from pytest_invarlock.failure_memory import FailureMemory
from pytest_invarlock.scheduling.inventory import Gpu, host_cache_share, split_busy
from pytest_invarlock.scheduling.placement import GpuHomes, cuda_env, write_placement
from pytest_invarlock.scheduling.plan_table import PLAN_CSV, PlanRow, format_plan_table, plan_rows, write_plan_csv
from pytest_invarlock.scheduling.probe import probe_gpus
from pytest_invarlock.scheduling.tasks import scheduling_devices, task_id
from pytest_invarlock.scheduling.xdist_adapter import GpuScheduling
from pytest_invarlock.state import (
    GPUS_INPUT,
    HOST_CACHE_INPUT,
    SESSION_INPUT,
    ConfigState,
    declared_suite,
    gpu_require_idle,
    node_gpus,
)
from pytest_invarlock.terminal import VERDICT_PLUGIN, VerdictReporter

HOME_INPUT, SPACER_INPUT = "invarlock_home_gpu", "invarlock_spacer"
SPACER_NAME = "invarlock-spacer"
DIST_CHOSEN_KEY = pytest.StashKey[bool]()


def add_options(group: pytest.OptionGroup) -> None:
    """The node's GPUs and the memory plan."""
    group.addoption(
        "--gpus",
        dest="invarlock_gpus",
        default=None,
        metavar="SPEC",
        help="simulate this node's GPUs instead of asking the driver (NVML, ROCm): 8x180, 80,80,24 or 2x80,24 (sizes in GB), "
        "with the free memory NVML would report after a colon: 8x80:78.5, 80:79,80:79,24:23. "
        "With --invarlock-device auto on a host without GPUs, the plan is that node's (no CPU-size skip)",
    )
    group.addoption(
        "--gpu-require-idle",
        action="store_true",
        default=None,
        dest="invarlock_gpu_require_idle",
        help="leave out GPUs that run other processes when the session starts (the suite's gpu_require_idle; "
        "default on, as the B200 suite's GPU_REQUIRE_IDLE)",
    )
    group.addoption(
        "--no-gpu-require-idle",
        action="store_false",
        dest="invarlock_gpu_require_idle",
        help="share GPUs with other processes wherever their free memory holds an item",
    )
    group.addoption(
        "--gpu-plan",
        dest="invarlock_gpu_plan",
        action="store_true",
        help="print each item's memory plan (weights, KV cache, peak GB, GPUs) and write "
        "<run-dir>/analysis/memory_plan.csv; works with --co",
    )


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config) -> Generator[None, int | pytest.ExitCode, int | pytest.ExitCode]:
    """Bind a worker to its GPU before anything is configured; note whether --dist was given.

    On a worker this runs right after xdist sets `workerinput` and before every pytest_configure;
    on the controller it runs before xdist turns `-n` into `--dist load`.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(HOME_INPUT) is not None:
        os.environ.update(cuda_env([workerinput[HOME_INPUT]], [Gpu(**gpu) for gpu in workerinput[GPUS_INPUT]]))
    option = config.option
    config.stash[DIST_CHOSEN_KEY] = getattr(option, "dist", "no") != "no" or bool(getattr(option, "distload", False))
    return (yield)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto` in a validation session: one worker per GPU it may use (xdist counts CPUs where there is none)."""
    name = declared_suite(config)
    if name is None:
        return None
    gpus = node_gpus(config)
    idle, _busy = split_busy(gpus)
    try:
        require_idle = gpu_require_idle(config, load_suite(name))
    except SuiteError:  # the session reports it with the fix when it builds its state
        require_idle = True
    return len(idle if idle and require_idle else gpus) or None


def register_session_pieces(config: pytest.Config, state: ConfigState) -> None:
    """Called once the session is a validation session: the controller's and the worker's plugins."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput is None:
        if state.gpus and not config.getoption("invarlock_gpus") and not _distributed(config):
            os.environ.update(cuda_env([gpu.index for gpu in state.gpus], state.gpus))
        from pytest_invarlock import evidence_writer, knobs, progress, reliability
        from pytest_invarlock.controller_log import ControllerLog
        from pytest_invarlock.preflight import StorePreflight
        from pytest_invarlock.report.pytest_html import register_pytest_html
        from pytest_invarlock.store_links import StoreLinks

        workers = session_workers(config, state)
        verdict = VerdictReporter(state)
        config.pluginmanager.register(verdict, VERDICT_PLUGIN)
        node = campaign_node.register(config, state, dist_chosen=config.stash.get(DIST_CHOSEN_KEY, False))
        if node is not None:
            verdict.scope = node.scope
        config.pluginmanager.register(StorePreflight(config, state, workers=workers), "invarlock-preflight")
        config.pluginmanager.register(ControllerDistribution(config, state), "invarlock-distribution")
        reliability.register(config, state, workers=workers)
        progress.register(config, state)
        register_pytest_html(config, state, verdict.campaign_verdict)
        evidence_writer.register(config, verdict)
        shown = bool(config.getoption("invarlock_gpu_plan"))
        if shown or not config.getoption("collectonly", False):  # the plan's CSV on every run, the table on request
            plan = MemoryPlanReporter(state, config.getoption("invarlock_shard", None), workers=workers, show=shown)
            config.pluginmanager.register(plan, "invarlock-memory-plan")
        if not config.getoption("collectonly", False):  # what a run writes as it goes (logs/, state/, links)
            config.pluginmanager.register(ControllerLog(config, state), "invarlock-controller-log")
            config.pluginmanager.register(StoreLinks(state, verdict), "invarlock-store-links")
            knobs.record_inputs(state.suite, state.run_dir)
    elif workerinput.get(SPACER_INPUT):
        config.pluginmanager.register(WorkerSpacer(), "invarlock-spacer")


def _distributed(config: pytest.Config) -> bool:
    """Whether xdist runs the items in workers (it has turned `-n`/`--tx` into its options by now)."""
    return getattr(config.option, "dist", "no") != "no" or bool(getattr(config.option, "tx", None))


def session_workers(config: pytest.Config, state: ConfigState) -> int:
    """Processes that run items at once: xdist's workers; one otherwise; for a --co plan, one per GPU (-n auto)."""
    if getattr(config.option, "dist", "no") != "no":
        return max(1, worker_count(config))
    return max(1, len(state.gpus)) if config.getoption("collectonly") else 1


def worker_count(config: pytest.Config) -> int:
    """The workers a distributed session starts: xdist's `--tx` specs (`-n N` became N of them), `K*spec` counting K."""
    count = 0
    for spec in config.getoption("tx", None) or []:
        multiplier, star, _ = spec.partition("*")
        count += int(multiplier) if star and multiplier.isdigit() else 1
    return count


class ControllerDistribution:
    """The controller's xdist hooks: worker inputs and the scheduler."""

    def __init__(self, config: pytest.Config, state: ConfigState) -> None:
        self.config, self.state = config, state
        self._homes: GpuHomes | None = None

    def homes(self) -> GpuHomes:
        if self._homes is None:
            devices = scheduling_devices(self.state.gpus, worker_count(self.config))
            self._homes = GpuHomes([d.index for d in devices])
        return self._homes

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        """Under -n the controller collects nothing, so a path pytest cannot find would reach the workers, which
        report no items and leave xdist without a collection: say it here, as pytest does without -n (exit 4)."""
        if self.config.getoption("dist", "no") == "no" or self.config.getoption("pyargs", False):
            return
        invoked = Path(self.config.invocation_params.dir)
        for arg in self.config.args:
            path = invoked / arg.partition("[")[0].split("::")[0]
            if not path.exists():
                raise pytest.UsageError(
                    f"file or directory not found: {arg} (relative to {invoked}). Run from the directory that holds "
                    "it, or pass its path (the validation tests live in the project's validation/ directory)."
                )

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        home = self.homes().assign(node.gateway.id)
        node.workerinput[SESSION_INPUT] = self.state.session
        node.workerinput[HOME_INPUT] = home if self.state.gpus else None
        node.workerinput[GPUS_INPUT] = [asdict(gpu) for gpu in self.state.gpus]
        node.workerinput[SPACER_INPUT] = not self.config.stash.get(DIST_CHOSEN_KEY, False)
        node.workerinput[HOST_CACHE_INPUT] = host_cache_share(worker_count(self.config))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> GpuScheduling | None:
        if config.stash.get(DIST_CHOSEN_KEY, False):
            return None
        from xdist.scheduler import LoadScheduling

        state, workers = self.state, worker_count(config)
        node = config.pluginmanager.get_plugin(campaign_node.NODE_PLUGIN)
        scheduler = GpuScheduling(
            state.index,
            state.skip_reason,
            _on_placed(config, partial(write_placement, state.run_dir, state.session)),
            scheduling_devices(state.gpus, workers),
            self.homes(),
            numnodes=workers,
            fallback=LoadScheduling(config, log),
            on_unplaceable=partial(report_unplaceable, config),
            log=log.gpusched,
            probe=probe_gpus if state.gpus and not config.getoption("invarlock_gpus") else None,  # the driver, never a simulation
            handback=FailureMemory(state.run_dir, state.session).take_handback_of,
            rerun_dead=config.getoption("maxworkerrestart", None) not in (0, "0"),  # xdist keeps it as text
            on_retry=partial(report_retry, config, state),
            stopping=partial(_session_stopping, config),
            **_campaign_claims(node, state),
        )
        config.pluginmanager.register(scheduler, "invarlock-scheduler")
        return scheduler


def _session_stopping(config: pytest.Config) -> bool:
    """Whether xdist's controller is stopping the session (a worker's Ctrl-C, -x, --maxfail): it sets `shouldstop`
    before it hands the interrupted worker to the scheduler, and shuts the other workers down only afterwards."""
    return bool(getattr(config.pluginmanager.get_plugin("dsession"), "shouldstop", False))


def _campaign_claims(node: campaign_node.CampaignNode | None, state: ConfigState) -> dict[str, Any]:
    """On a campaign's node: the scheduler claims each item on the node's board; items this node's GPUs cannot
    hold are left to the other nodes."""
    if node is None or not node.claims:
        return {}
    return {"claims": node.board, "not_here": lambda item: state.unfit.get(task_id(item))}


def _on_placed(config: pytest.Config, write: Any) -> Any:
    """Write the placement; the progress display (when on) also learns which worker runs the item."""
    from pytest_invarlock.progress import PROGRESS_PLUGIN

    progress = config.pluginmanager.get_plugin(PROGRESS_PLUGIN)
    return write if progress is None else progress.wrap_placed(write)


def report_retry(config: pytest.Config, state: ConfigState, nodeid: str, why: str) -> None:
    """Say on the terminal (and in the summary's warnings) that an item runs once more, and why."""
    line = f"invarlock: {nodeid.split('::')[-1]}: {why}"
    state.warnings.append(line)
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if terminal is not None:
        terminal.write_line(line)


def report_unplaceable(config: pytest.Config, nodeid: str, reason: str) -> None:
    """Report an item the scheduler gave up on as skipped, as if a worker had skipped it."""
    path = nodeid.split("::")[0]
    location = (path, None, nodeid.split("::", 1)[-1])
    # As a skip mark reports it: the `skip` keyword makes -rs fold it by path and reason (no line number).
    report = pytest.TestReport(
        nodeid, location, keywords={"skip": 1}, outcome="skipped", longrepr=(path, 0, f"Skipped: {reason}"), when="setup"
    )
    config.hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
    config.hook.pytest_runtest_logreport(report=report)
    config.hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)


class SpacerItem(pytest.Item):
    """The item past the collection that the scheduler sends behind a lone item; it runs silently."""

    def runtest(self) -> None:
        pass


class WorkerSpacer:
    """Worker side of the spacer: append it after the collection is reported, run it without reports."""

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if session.items:
            session.items.append(SpacerItem.from_parent(session, name=SPACER_NAME))

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        if not isinstance(item, SpacerItem):
            return None
        runtestprotocol(item, nextitem=nextitem, log=False)  # tears down what the next item does not share
        return True


class MemoryPlanReporter:
    """The collected suite items' memory plan on the controller (or the single process): analysis/memory_plan.csv
    on every run (the B200 document's), and with --gpu-plan the table in the terminal summary."""

    def __init__(self, state: ConfigState, shard: str | None = None, *, workers: int = 1, show: bool = True) -> None:
        self.state, self.workers, self.show = state, workers, show
        # Shards share the run directory: each writes its own plan (analysis/memory_plan.shard-2-of-4.csv).
        k_of_n = shard.replace(" ", "").replace("/", "-of-") if shard else None
        self.path = state.run_dir / (PLAN_CSV.with_suffix(f".shard-{k_of_n}.csv") if k_of_n else PLAN_CSV)
        self.rows: list[PlanRow] | None = None
        self.disk_lines: list[str] = []

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._plan([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.rows is None:
            self._plan(ids)

    def _plan(self, nodeids: list[str]) -> None:
        from pytest_invarlock.preflight import campaign_disk_plan

        self.rows = plan_rows(self.state.index, self.state.gpus, nodeids, self.state.skip_reason)
        if self.rows or self.show:  # a session without suite items writes no plan unless asked
            write_plan_csv(self.rows, self.path)
        if self.show:
            # The campaign's disk: every collected item the node can place (skips for other reasons, such as an
            # offline login node, are still the campaign's).
            found = (item_from_nodeid(nodeid, self.state.index) for nodeid in nodeids)
            items = [item for item in found if item is not None and task_id(item) not in self.state.unfit]
            self.disk_lines = campaign_disk_plan(self.state, items, workers=self.workers).lines()

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.rows is None or not self.show:
            return
        terminalreporter.write_sep("=", "invarlock memory plan")
        for line in format_plan_table(self.rows, self.state.gpus):
            terminalreporter.write_line(line)
        for line in self.disk_lines:
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"plan written to {self.path}")
        from pytest_invarlock.campaign.window_planner import plan_lines

        terminalreporter.write_sep("-", "evaluation windows")
        for line in plan_lines(self.state.run_dir, self.state.suite.models):
            terminalreporter.write_line(line)
