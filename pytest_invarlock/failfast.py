"""Failures handled once, on the controller: when shared work fails, every item that needed it ends at once.

An item whose record says it found failed shared work (`failed_work` with `failed_here`: a baseline, a
calibration run, a preset), or the Nth item error of one model (the circuit breaker,
`--invarlock-max-model-failures`; its failure then goes to the failure memory, so items already sent to
workers end too), ends every remaining item that needed that work, each reported as an error naming
the failed item and its cause (a failed edit is not rebuilt by its other items, but those whose
certificate is stored still report it):

- under the GPU scheduler, items not yet sent to a worker are dropped from its policy and reported
  here; items already sent end on their worker within milliseconds (it reads the same memory);
- in a single process, the remaining items are reported now; when their turn comes they run silently
  (fixtures set up and torn down in order, the worker ends them at once), so nothing reports twice.

Items that failed because work they needed had failed do not count towards the breaker: they are
consequences, not new failures of the model. Torch-free: registered on the controller.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from pytest_invarlock.campaign.failures import CircuitBreaker, Failure
from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.compat import runtestprotocol
from pytest_invarlock.failure_memory import FailureMemory
from pytest_invarlock.records import RECORD_PROPERTY, base_record, report_reason
from pytest_invarlock.state import ConfigState

SCHEDULER_PLUGIN = "invarlock-scheduler"


class FailFast:
    def __init__(self, config: pytest.Config, state: ConfigState) -> None:
        self.config, self.state = config, state
        self.memory = FailureMemory(state.run_dir, state.session)
        self.breaker = CircuitBreaker(state.options.limits.max_model_failures)
        self.pending: dict[str, SuiteItem] = {}  # nodeid -> suite item collected to run here and not ended yet
        self.ended_early: set[str] = set()  # reported here before their turn

    # ------------------------------------------------------------------ collection

    @pytest.hookimpl
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self._collected(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if not self.pending:
            self._collected(ids)

    def _collected(self, nodeids: Any) -> None:
        from pytest_invarlock.preflight import runnable

        self.pending.update(runnable(self.state, nodeids))

    # ------------------------------------------------------------------ reports

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = self.pending.get(report.nodeid)
        if report.when == "teardown" or (report.failed and report.when not in ("setup", "call")):
            self.pending.pop(report.nodeid, None)  # ended (a crash report has neither phase)
        if item is None or not report.failed or report.nodeid in self.ended_early:
            return
        record = json.loads(str(dict(report.user_properties).get(RECORD_PROPERTY, "{}")))
        failed_work = record.get("failed_work")
        if failed_work and not record.get("failed_here"):
            return  # a consequence of a failure already handled
        if failed_work:
            self.end(Failure.from_dict(failed_work))
        if report.when == "call":
            return  # a verdict that missed its expectation is a result, not an error of the model
        opened = self.breaker.record(item.model.name, item.param_id, record.get("error") or report_reason(report))
        if opened is not None:
            self.end(self.memory.record(opened))

    def end(self, failure: Failure) -> list[str]:
        """End every pending item that needed the failed work (see the module docstring); returns their nodeids."""
        if not failure.ends_dependents_at_once:
            return []
        affected = [
            nodeid
            for nodeid, item in self.pending.items()
            if failure.affects(item) and item.param_id != failure.item and nodeid not in self.ended_early
        ]
        if not affected:
            return []
        if self.config.pluginmanager.get_plugin("dsession") is not None:
            scheduler = self.config.pluginmanager.get_plugin(SCHEDULER_PLUGIN)
            ended = scheduler.drop(affected, failure.message) if scheduler is not None else []
        else:
            ended = affected
        for nodeid in ended:
            self.ended_early.add(nodeid)
            self._report(nodeid, self.pending.pop(nodeid), failure)
        return ended

    def _report(self, nodeid: str, item: SuiteItem, failure: Failure) -> None:
        message = f"not run: {failure.message}"
        record = {
            **base_record(item),
            "met": False,
            "error": message,
            "failed_work": failure.to_dict(),
            "failed_here": False,
            "ended_by": "controller",
        }
        path = nodeid.split("::")[0]
        location = (path, None, nodeid.split("::", 1)[-1])
        now = time.time()
        report = pytest.TestReport(
            nodeid,
            location,
            keywords={},
            outcome="failed",
            longrepr=message,
            when="setup",
            start=now,
            stop=now,
            user_properties=[(RECORD_PROPERTY, json.dumps(record, default=str))],
        )
        hook = self.config.hook
        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
        hook.pytest_runtest_logreport(report=report)
        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)

    # ------------------------------------------------------------------ single process

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_protocol(self, item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
        """An item already reported here runs without reports (it ends at once; its fixtures unwind in order)."""
        if item.nodeid not in self.ended_early:
            return None
        runtestprotocol(item, nextitem=nextitem, log=False)
        return True
