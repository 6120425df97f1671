"""What a long campaign meets on a real node: its options, and the controller's edit bookkeeping.

Options (each with an `invarlock_` dest): `--invarlock-timeout KIND=S` (time limits, campaign.time_limits),
`--invarlock-edit-budget GB` and `--invarlock-disk-headroom GB` (the disk plan), and
`--invarlock-max-model-failures N` (the circuit breaker, failfast). `register` adds, on the controller
of a validation session, `FailFast` and `EditTracker`: after collection the tracker writes the edit
budget and, per edited model, the items of this session that need it (`edit_lifecycle`); as items
end it evicts edits over the budget, those no pending item needs first. Torch-free.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_invarlock.campaign.failures import DEFAULT_MAX_MODEL_FAILURES, spec_of
from pytest_invarlock.campaign.time_limits import LIMIT_KINDS
from pytest_invarlock.edit_lifecycle import Needs, edit_id, make_room, write_needs
from pytest_invarlock.option_types import non_negative_count, non_negative_number
from pytest_invarlock.state import ConfigState


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--invarlock-timeout",
        dest="invarlock_timeouts",
        action="append",
        default=[],
        metavar="KIND=SECONDS",
        help="time limit of one kind of work, taken as given (repeat, or comma-separate); SECONDS alone sets "
        f"every kind. Kinds: {', '.join(LIMIT_KINDS)}. Defaults per kind and size class: docs/reliability.md",
    )
    group.addoption(
        "--invarlock-edit-budget",
        dest="invarlock_edit_budget",
        type=non_negative_number,
        default=None,
        metavar="GB",
        help="disk the edited weights may take at once (default: the disk plan's edits in flight, one edited "
        "copy per item that can run at once); edits are rebuilt from their recipe when needed again",
    )
    group.addoption(
        "--invarlock-disk-headroom",
        dest="invarlock_disk_headroom",
        type=non_negative_number,
        default=None,
        metavar="GB",
        help="free space to keep on each filesystem the run writes to (default: 2%% of its size, 1-200 GB); "
        "below it new items wait for space",
    )
    group.addoption(
        "--invarlock-max-model-failures",
        dest="invarlock_max_model_failures",
        type=non_negative_count,
        default=None,
        metavar="N",
        help=f"after N item errors of one model its remaining items fail at once (default {DEFAULT_MAX_MODEL_FAILURES}; 0: never)",
    )


def register(config: pytest.Config, state: ConfigState, *, workers: int) -> None:
    """The controller's (or the single process's) failure and edit bookkeeping of a validation session;
    `workers`: the processes that run items at once (the edit budget's default counts them)."""
    from pytest_invarlock.failfast import FailFast

    config.pluginmanager.register(FailFast(config, state), "invarlock-failfast")
    config.pluginmanager.register(EditTracker(config, state, workers=workers), "invarlock-edit-tracker")


class EditTracker:
    """Writes this session's edit needs and budget, and evicts edits over the budget as items end."""

    def __init__(self, config: pytest.Config, state: ConfigState, *, workers: int = 1) -> None:
        self.config, self.state, self.workers = config, state, workers
        self.needs: Needs | None = None
        self.by_nodeid: dict[str, tuple[str, str]] = {}  # nodeid -> (the edit it needs, its param id)
        self.planned = False  # whether any item of this session needs an edit

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._start([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self.needs is None:
            self._start(ids)

    def _start(self, nodeids: list[str]) -> None:
        from pytest_invarlock.preflight import campaign_disk_plan, runnable

        items = runnable(self.state, nodeids)
        if self.config.getoption("collectonly") or not items:
            return
        plan = campaign_disk_plan(self.state, list(items.values()), workers=self.workers)
        self.needs = Needs(plan.edit_budget)
        for nodeid, item in items.items():
            spec = spec_of(item)
            if spec is not None:
                name = edit_id(item.model.name, spec)
                self.by_nodeid[nodeid] = (name, item.param_id)
                self.needs.pending.setdefault(name, set()).add(item.param_id)
        self.planned = bool(self.needs.pending)
        write_needs(self.state.run_dir, self.state.session, self.needs)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        entry = self.by_nodeid.get(report.nodeid)
        ended = report.when == "teardown" or (report.failed and report.when != "call")
        if entry is None or self.needs is None or not ended:
            return
        del self.by_nodeid[report.nodeid]
        name, param_id = entry
        pending = self.needs.pending.get(name, set())
        pending.discard(param_id)
        if pending:
            return
        write_needs(self.state.run_dir, self.state.session, self.needs)
        make_room(self.state.store, self.needs, incoming=0, reason=f"{name}: no pending item needs it")

    @pytest.hookimpl
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.needs is not None and self.needs.budget is not None and self.planned:  # a session without edits leaves them
            make_room(self.state.store, self.needs, incoming=0, reason="the session ended")
