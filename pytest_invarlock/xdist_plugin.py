"""pytest-xdist integration: the GPU inventory, one home GPU per worker, and the GPU scheduler.

Controller: reads the inventory (`--gpus` to simulate, else NVML), gives every worker a home GPU
through `workerinput` (a replacement for a crashed worker gets the GPU its predecessor freed), and
schedules with `scheduling.GpuScheduling` unless the user chose a `--dist` mode: an explicit
`--dist` (even `--dist load`) gets xdist's own scheduler, and `-n` alone gets ours. `--gpu-plan`
prints the per-item memory plan and writes it as CSV, with or without `-n`, and with `--co`.

Worker: sets CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER as soon as xdist hands it `workerinput`
(in pytest_cmdline_main, before any pytest_configure); conftest files are imported earlier still,
so they may import torch but must not touch CUDA at import time. It also adds the spacer item the
scheduler uses to release a held item.

Torch-free: this module is loaded on the controller.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from functools import partial
from typing import Any

import pytest
from _pytest.runner import runtestprotocol  # the protocol without reports; pytest exports no public alias

from .context import STATE_KEY, ConfigState
from .gpus import Gpu, parse_gpu_spec, probe_gpus
from .scheduling import (
    PLAN_CSV,
    GpuHomes,
    GpuScheduling,
    PlanRow,
    cuda_env,
    format_plan_table,
    plan_rows,
    register_inventory,
    scheduling_devices,
    write_plan_csv,
)

HOME_INPUT, GPUS_INPUT, SPACER_INPUT = "invarlock_home_gpu", "invarlock_gpus", "invarlock_spacer"
SPACER_NAME = "invarlock-spacer"
GPUS_KEY = pytest.StashKey[list[Gpu]]()
HOMES_KEY = pytest.StashKey[GpuHomes]()
DIST_CHOSEN_KEY = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("invarlock", "InvarLock edit-detection validation")
    group.addoption("--gpus", default=None, metavar="SPEC",
                    help="simulate this node's GPUs instead of asking NVML: 8x180, 80,80,24 or 2x80,24 (sizes in GB)")
    group.addoption("--gpu-plan", action="store_true",
                    help="print each item's memory plan (weights, KV cache, peak GB, GPUs) and write "
                         "<run-dir>/analysis/memory_plan.csv; works with --co")


@pytest.hookimpl(wrapper=True)
def pytest_cmdline_main(config: pytest.Config):
    """Bind a worker to its GPU before anything is configured; note whether --dist was given.

    On a worker this runs right after xdist sets `workerinput` and before every pytest_configure;
    on the controller it runs before xdist turns `-n` into `--dist load`.
    """
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(HOME_INPUT) is not None:
        os.environ.update(cuda_env([workerinput[HOME_INPUT]]))
    option = config.option
    config.stash[DIST_CHOSEN_KEY] = getattr(option, "dist", "no") != "no" or bool(getattr(option, "distload", False))
    return (yield)


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """After the plugin built the session state: share the inventory with `skip_reason`, add the helpers."""
    state: ConfigState = config.stash[STATE_KEY]
    gpus = node_gpus(config)
    register_inventory(state, gpus)
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None and workerinput.get(SPACER_INPUT):
        config.pluginmanager.register(WorkerSpacer(), "invarlock-spacer")
    if workerinput is None and config.getoption("gpu_plan"):
        config.pluginmanager.register(MemoryPlanReporter(state, gpus), "invarlock-memory-plan")


def node_gpus(config: pytest.Config) -> list[Gpu]:
    """This node's GPUs: the controller's inventory on a worker (which sees only its home), else --gpus or NVML."""
    if GPUS_KEY not in config.stash:
        workerinput = getattr(config, "workerinput", None)
        spec = config.getoption("gpus")
        if workerinput is not None and GPUS_INPUT in workerinput:
            gpus = [Gpu(**gpu) for gpu in workerinput[GPUS_INPUT]]
        elif spec:
            try:
                gpus = parse_gpu_spec(spec)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
        else:
            gpus = probe_gpus()
        config.stash[GPUS_KEY] = gpus
    return config.stash[GPUS_KEY]


def _worker_count(config: pytest.Config) -> int:
    from xdist.workermanage import parse_tx_spec_config

    return len(parse_tx_spec_config(config))


def _homes(config: pytest.Config) -> GpuHomes:
    if HOMES_KEY not in config.stash:
        devices = scheduling_devices(node_gpus(config), _worker_count(config))
        config.stash[HOMES_KEY] = GpuHomes([d.index for d in devices])
    return config.stash[HOMES_KEY]


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_auto_num_workers(config: pytest.Config) -> int | None:
    """`-n auto`: one worker per GPU where there are GPUs (xdist counts CPUs otherwise)."""
    return len(node_gpus(config)) or None


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    config = node.config
    gpus = node_gpus(config)
    home = _homes(config).assign(node.gateway.id)
    node.workerinput[HOME_INPUT] = home if gpus else None
    node.workerinput[GPUS_INPUT] = [asdict(gpu) for gpu in gpus]
    node.workerinput[SPACER_INPUT] = not config.stash.get(DIST_CHOSEN_KEY, False)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> GpuScheduling | None:
    if config.stash.get(DIST_CHOSEN_KEY, False):
        return None
    from xdist.scheduler import LoadScheduling

    workers = _worker_count(config)
    scheduler = GpuScheduling(
        config.stash[STATE_KEY],
        scheduling_devices(node_gpus(config), workers),
        _homes(config),
        numnodes=workers,
        fallback=LoadScheduling(config, log),
        on_unplaceable=partial(report_unplaceable, config),
        log=log.gpusched,
    )
    config.pluginmanager.register(scheduler, "invarlock-scheduler")
    return scheduler


def report_unplaceable(config: pytest.Config, nodeid: str, reason: str) -> None:
    """Report an item the scheduler gave up on as skipped, as if a worker had skipped it."""
    path = nodeid.split("::")[0]
    location = (path, None, nodeid.split("::", 1)[-1])
    report = pytest.TestReport(nodeid, location, keywords={}, outcome="skipped",
                               longrepr=(path, None, f"Skipped: {reason}"), when="setup")
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
    """--gpu-plan on the controller (or the single process): the collected suite items' plan."""

    def __init__(self, state: ConfigState, gpus: list[Gpu]) -> None:
        self.state, self.gpus = state, gpus
        self.rows: list[PlanRow] | None = None

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._plan([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.rows is None:
            self._plan(ids)

    def _plan(self, nodeids: list[str]) -> None:
        self.rows = plan_rows(self.state, self.gpus, nodeids)
        write_plan_csv(self.rows, self.state.run_dir / PLAN_CSV)

    @pytest.hookimpl
    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.rows is None:
            return
        terminalreporter.write_sep("=", "invarlock memory plan")
        for line in format_plan_table(self.rows, self.gpus):
            terminalreporter.write_line(line)
        terminalreporter.write_line(f"plan written to {self.state.run_dir / PLAN_CSV}")
