"""The controller's own account of a run: logs/main.log and state/errors.json, written as items finish.

The B200 harness kept `logs/main.log` (its overall execution log) and `state/errors.json` (every task
error, classified, for summary statistics). Here the controller (the single process without -n, whose
worker log shares the file) writes both: the session's start and options, workers coming and going,
every item's outcome and duration, and at the end the verdict's status and files. `errors.json` lists
this session's pipeline errors (items that produced no verdict) with a type: timeout, oom, crash,
disk_full, model_unavailable or pipeline. Registered only in validation sessions, and silent until
the collection holds a suite item (a project's own `test_calibration[1]` activates the controller
under xdist, but writes nothing).
"""

from __future__ import annotations

import logging
import os
import socket
from datetime import UTC, datetime
from typing import Any

import pytest

from pytest_invarlock.campaign.items import item_from_nodeid
from pytest_invarlock.records import report_reason
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_atomic

MAIN_LOG = "logs/main.log"
ERRORS_FILE = "state/errors.json"
LOGGER = "pytest_invarlock.controller"
# (type, lower-case fragments of the message that mark it), first match wins
ERROR_TYPES = (
    ("timeout", ("timed out after",)),
    ("oom", ("out of memory", "outofmemory")),
    ("disk_full", ("enospc", "disk full", "no space left")),
    ("crash", ("crashed", "worker exited", "node down")),
    ("model_unavailable", ("not in the local hugging face cache", "does not exist on", "model unavailable")),
)


def classify(message: str) -> str:
    """The error's type from its message (the B200 fault-tolerance vocabulary, plus disk and model trouble)."""
    lowered = message.lower()
    return next((kind for kind, marks in ERROR_TYPES if any(mark in lowered for mark in marks)), "pipeline")


def _final_outcome(report: pytest.TestReport) -> str | None:
    if report.when == "setup" and not report.passed:
        return "skipped" if report.skipped else "error"
    if report.when == "call":
        return report.outcome
    return "error" if report.when == "teardown" and report.failed else None


class ControllerLog:
    """Writes logs/main.log and state/errors.json on the controller; see the module docstring."""

    def __init__(self, config: pytest.Config, state: ConfigState) -> None:
        self.config, self.state = config, state
        self.errors: list[dict[str, Any]] = []
        self.log = logging.getLogger(LOGGER)
        self.log.propagate = False  # pytest's own log capture and live logging stay out of it
        self.log.setLevel(logging.INFO)
        self.handler: logging.FileHandler | None = None
        self._early: list[tuple[int, str, tuple[Any, ...]]] = []  # lines from before the collection showed suite items

    def _say(self, level: int, message: str, *args: Any) -> None:
        if self.handler is None:
            self._early.append((level, message, args))
        else:
            self.log.log(level, message, *args)

    def _open(self, collected: int) -> None:
        """Start the log once the collection holds suite items: the session line, then what came before."""
        if self.handler is not None:
            return
        path = self.state.run_dir / MAIN_LOG
        path.parent.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(path, encoding="utf-8")
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s controller: %(message)s"))
        self.log.addHandler(self.handler)
        state, suite = self.state, self.state.suite
        self.log.info(
            "session %s: suite %s (%s), %d model(s), %d item(s), %d collected; run dir %s; device %s, %s; pid %d on %s; args: %s",
            state.session,
            suite.name,
            suite.path,
            len(suite.models),
            len(state.items),
            collected,
            state.run_dir,
            state.device,
            "offline" if state.options.offline else "online",
            os.getpid(),
            socket.gethostname(),
            " ".join(self.config.invocation_params.args),
        )
        for knob, source in state.knobs.items():
            self.log.info("setting %s from %s", knob, source)
        for level, message, args in self._early:
            self.log.log(level, message, *args)
        self._early.clear()

    def _suite_items(self, nodeids: list[str]) -> int:
        return sum(item_from_nodeid(nodeid, self.state.index) is not None for nodeid in nodeids)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if self._suite_items([item.nodeid for item in session.items]):
            self._open(len(session.items))

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        if self._suite_items(ids):
            self._open(len(ids))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self._say(logging.INFO, "worker %s up", node.gateway.id)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        if error:
            self._say(logging.ERROR, "worker %s down: %s", node.gateway.id, error)
        else:
            self._say(logging.INFO, "worker %s finished", node.gateway.id)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        outcome = _final_outcome(report)
        item = item_from_nodeid(report.nodeid, self.state.index)
        if outcome is None or item is None:
            return
        self._open(0)  # an item reported without a collection we saw (e.g. the scheduler gave it up)
        node = getattr(report, "node", None)
        worker = node.gateway.id if node is not None else "main"
        if outcome in ("passed", "failed"):
            self.log.info("%s %s in %.1f s on %s", item.param_id, outcome, report.duration, worker)
            return
        reason = report_reason(report)
        if outcome == "skipped":
            self.log.info("%s skipped: %s", item.param_id, reason)
            return
        error = {
            "item": item.param_id,
            "nodeid": report.nodeid,
            "kind": str(item.kind),
            "model": item.model.name,
            "phase": report.when,
            "type": classify(reason),
            "message": reason,
            "worker": worker,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        self.errors.append(error)
        self.log.error("%s error (%s) on %s: %s", item.param_id, error["type"], worker, reason)
        self._write_errors()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.handler is None:  # no suite item in this session: nothing to say
            return
        self._write_errors()
        from pytest_invarlock.terminal import VERDICT_PLUGIN

        verdict = self.config.pluginmanager.get_plugin(VERDICT_PLUGIN)
        written = getattr(verdict, "written", None)
        if written is not None and written.compiled is not None:
            self.log.info("verdict: %s", written.compiled.phase0.status_line)
            for line in written.lines:
                (self.log.error if line.problem else self.log.info)(line.text)
        self.log.info("session %s ended (exit status %s, %d error(s))", self.state.session, int(exitstatus), len(self.errors))

    def pytest_unconfigure(self) -> None:
        if self.handler is not None:
            self.log.removeHandler(self.handler)
            self.handler.close()

    def _write_errors(self) -> None:
        counts: dict[str, int] = {}
        for error in self.errors:
            counts[error["type"]] = counts.get(error["type"], 0) + 1
        payload = {"session": self.state.session, "total": len(self.errors), "by_type": counts, "errors": self.errors}
        try:
            write_json_atomic(self.state.run_dir / ERRORS_FILE, payload)
        except (OSError, StoreError) as exc:
            self.log.error("could not write %s: %s", ERRORS_FILE, exc)
