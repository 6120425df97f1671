"""Live progress of a validation session, on the controller (or the single process).

`ProgressTracker`, registered in every validation session that runs items, keeps the counts and writes
them to `state/progress.json` every few seconds while items run and at the end: the earlier harnesses' way for
another shell or a dashboard to follow a campaign (`watch cat <run-dir>/state/progress.json`). The
display below reads the tracker.

What it shows: items done/total, failures and errors so far, elapsed time and an ETA, and one line per
worker (one xdist worker per GPU, so one line per GPU; `main` without -n) with its current item and
how long it has been running.

The ETA (a cost-model prior per item, scaled by measured durations), how items are attributed to workers,
and how the terminal block stays out of pytest's way: docs/run-directory.md, "How the progress display
works". `-q` or `--progress-interval 0` turns the display off; state/progress.json is written anyway.
Nothing here changes reports, junit or --lf.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from pytest_invarlock.campaign.items import SuiteItem, item_from_nodeid
from pytest_invarlock.option_types import non_negative_number
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_atomic

PROGRESS_PLUGIN = "invarlock-progress"  # the tracker (the scheduler tells it where items go)
DISPLAY_PLUGIN = "invarlock-progress-display"
PROGRESS_FILE = "state/progress.json"
PROGRESS_FILE_INTERVAL_S = 2.0
DEFAULT_INTERVAL_S = 30.0
STEP_FRACTION = 0.10
REFRESH_S = 1.0
SECONDS_PER_GB = {"calibration": 2.0, "clean": 2.6, "stress": 2.6, "error": 2.4, "benchmark": 2.0}
FLOOR_SECONDS = {"calibration": 16.0, "clean": 9.0, "stress": 9.0, "error": 9.0, "benchmark": 9.0}
PLAIN_TEST_SECONDS = 0.1  # a collected test that is not a suite item
MIN_KIND_SAMPLES = 2


def prior_seconds(item: SuiteItem | None) -> float:
    """The cost model's guess for one item, before anything was measured."""
    if item is None:
        return PLAIN_TEST_SECONDS
    from pytest_invarlock.scheduling.tasks import model_profile

    kind = str(item.kind)
    return max(FLOOR_SECONDS.get(kind, 9.0), SECONDS_PER_GB.get(kind, 2.4) * model_profile(item.model).weights_gb)


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


@dataclass
class Running:
    nodeid: str
    label: str
    started: float
    lane: str


@dataclass
class Progress:
    """Counts, the corrected cost model and what each lane runs. Pure: no pytest, no terminal."""

    priors: dict[str, tuple[str, float]] = field(default_factory=dict)  # nodeid -> (kind, prior seconds)
    lanes: list[str] = field(default_factory=list)
    clock: Callable[[], float] = time.time
    started: float = 0.0
    finished: dict[str, str] = field(default_factory=dict)  # nodeid -> outcome
    measured: dict[str, float] = field(default_factory=dict)  # nodeid -> seconds (items that did work)
    running: dict[str, Running] = field(default_factory=dict)  # nodeid -> running item
    placed: dict[str, str] = field(default_factory=dict)  # nodeid -> lane, from the scheduler

    def __post_init__(self) -> None:
        self.started = self.started or self.clock()

    @property
    def total(self) -> int:
        return len(self.priors)

    @property
    def done(self) -> int:
        return len(self.finished)

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.finished.values() if o == outcome)

    def add_lane(self, lane: str) -> None:
        if lane not in self.lanes:
            self.lanes.append(lane)

    def _idle_lane(self) -> str:
        busy = {r.lane for r in self.running.values()}
        idle = [lane for lane in self.lanes if lane not in busy]
        return idle[0] if idle else (self.lanes[0] if self.lanes else "main")

    def start(self, nodeid: str, label: str) -> None:
        lane = self.placed.get(nodeid) or self._idle_lane()
        self.running[nodeid] = Running(nodeid, label, self.clock(), lane)

    def seen_on(self, nodeid: str, lane: str) -> None:
        """A report named the worker that runs the item: trust it over the guess."""
        self.add_lane(lane)
        if nodeid in self.running:
            self.running[nodeid].lane = lane

    def finish(self, nodeid: str, outcome: str) -> None:
        running = self.running.pop(nodeid, None)
        self.finished[nodeid] = outcome
        if running is not None and outcome != "skipped":
            self.measured[nodeid] = self.clock() - running.started

    def scale(self, kind: str) -> float:
        """measured / prior over finished items: of this kind when there are enough, else of all."""

        def ratio(ids: Iterable[str]) -> float | None:
            ids = list(ids)
            prior = sum(self.priors[i][1] for i in ids if i in self.priors)
            return sum(self.measured[i] for i in ids) / prior if prior and ids else None

        same = [i for i in self.measured if self.priors.get(i, ("", 0))[0] == kind]
        if len(same) >= MIN_KIND_SAMPLES:
            return ratio(same) or 1.0
        return ratio(self.measured) or 1.0

    def eta_seconds(self) -> float | None:
        if not self.total:
            return None
        now = self.clock()
        remaining = 0.0
        for nodeid, (kind, prior) in self.priors.items():
            if nodeid in self.finished:
                continue
            expected = prior * self.scale(kind)
            running = self.running.get(nodeid)
            remaining += max(0.0, expected - (now - running.started)) if running else expected
        return remaining / max(1, len(self.lanes))

    def summary(self) -> str:
        total, done = self.total, self.done
        percent = f" ({100 * done / total:.0f}%)" if total else ""
        parts = [f"{done}/{total} done{percent}", f"{self.count('failed')} failed"]
        if self.count("error"):
            parts.append(f"{self.count('error')} errors")
        if self.count("skipped"):
            parts.append(f"{self.count('skipped')} skipped")
        eta = self.eta_seconds() if done < total else 0.0
        return ", ".join(parts) + f"; elapsed {fmt_duration(self.clock() - self.started)}, ETA {fmt_duration(eta)}"

    def snapshot(self) -> dict[str, Any]:
        """The counts as state/progress.json holds them (the earlier harnesses' queue states: pending, running, completed, failed)."""
        now = self.clock()
        outcomes = {o: self.count(o) for o in ("passed", "failed", "error", "skipped")}
        running = [
            {"lane": r.lane, "item": r.label, "elapsed_s": round(now - r.started, 1)}
            for r in sorted(self.running.values(), key=lambda r: r.lane)
        ]
        return {
            "total": self.total,
            "done": self.done,
            "percent": round(100 * self.done / self.total, 1) if self.total else None,
            "queue": {
                "pending": self.total - self.done - len(self.running),
                "running": len(self.running),
                "completed": outcomes["passed"] + outcomes["skipped"],
                "failed": outcomes["failed"] + outcomes["error"],
            },
            "outcomes": outcomes,
            "elapsed_s": round(now - self.started, 1),
            "eta_s": round(self.eta_seconds() or 0.0, 1) if self.done < self.total else 0.0,
            "running": running,
            "lanes": [{"lane": lane, "item": item if item != "idle" else None} for lane, item, _ in self.lane_rows()],
        }

    def lane_rows(self) -> list[tuple[str, str, str]]:
        """(lane, current item, elapsed) for each lane, idle ones included."""
        now = self.clock()
        by_lane = {r.lane: r for r in self.running.values()}
        lanes = list(self.lanes) + [lane for lane in by_lane if lane not in self.lanes]
        rows = []
        for lane in lanes:
            r = by_lane.get(lane)
            rows.append((lane, r.label, fmt_duration(now - r.started)) if r else (lane, "idle", ""))
        return rows


def _outcome(report: pytest.TestReport) -> str | None:
    """The item's outcome once its last report arrived, or None while it still runs."""
    if report.when == "setup" and not report.passed:
        return "skipped" if report.skipped else "error"
    if report.when == "call":
        return "failed" if report.failed else "skipped" if report.skipped else "passed"
    if report.when == "teardown" and report.failed:
        return "error"
    return None


class ProgressTracker:
    """The campaign's progress on the controller: counts, ETA and each lane's item, kept in state/progress.json."""

    def __init__(self, config: pytest.Config, state: ConfigState, *, interval: float = PROGRESS_FILE_INTERVAL_S) -> None:
        self.config, self.state = config, state
        self.progress = Progress()
        self.labels: dict[str, str] = {}
        self.homes: dict[str, Any] = {}
        self.path = state.run_dir / PROGRESS_FILE
        self.interval = interval
        self._finished = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None

    # ------------------------------------------------------------------ the items to expect

    def _expect(self, nodeids: Sequence[str]) -> None:
        if self.progress.priors:
            return
        items = {nodeid: item_from_nodeid(nodeid, self.state.index) for nodeid in nodeids}
        if not any(items.values()):  # no suite item collected (a project's own test_calibration[1]...): stay silent
            return
        for nodeid, item in items.items():
            self.progress.priors[nodeid] = (str(item.kind) if item else "test", prior_seconds(item))
            self.labels[nodeid] = item.param_id if item else nodeid.rsplit("::", 1)[-1]
        self.progress.started = self.progress.clock()

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if getattr(self.config.option, "numprocesses", None) in (None, 0) and not getattr(self.config.option, "tx", None):
            self.progress.add_lane("main")
            self._expect([item.nodeid for item in session.items])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        self._expect(ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self.progress.add_lane(node.gateway.id)

    def placed(self, item: SuiteItem, worker: str, devices: Sequence[int]) -> None:
        """The GPU scheduler sent `item` to `worker` (called before the item is sent)."""
        nodeid = next((n for n in self.progress.priors if n.endswith(f"::{item.test}[{item.param_id}]")), None)
        if nodeid is not None:
            self.progress.placed[nodeid] = worker
        if self.state.gpus:
            self.homes.setdefault(worker, devices[0] if devices else None)

    def wrap_placed(
        self, on_placed: Callable[[SuiteItem, str, Sequence[int]], None]
    ) -> Callable[[SuiteItem, str, Sequence[int]], None]:
        def both(item: SuiteItem, worker: str, devices: Sequence[int]) -> None:
            on_placed(item, worker, devices)
            self.placed(item, worker, devices)

        return both

    # ------------------------------------------------------------------ events

    def pytest_runtest_logstart(self, nodeid: str) -> None:
        if nodeid in self.progress.priors:
            with self._lock:
                self.progress.start(nodeid, self.labels.get(nodeid, nodeid))
            self._start_writer()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        node = getattr(report, "node", None)
        outcome = _outcome(report)
        counted = outcome is not None and report.nodeid in self.progress.priors and report.nodeid not in self.progress.finished
        with self._lock:
            if node is not None:
                self.progress.seen_on(report.nodeid, node.gateway.id)
            if counted and outcome is not None:
                self.progress.finish(report.nodeid, outcome)
        if counted:
            self.write()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stop.set()
        if self.progress.total and not self.config.getoption("collectonly", False):
            self._finished = True
            self.write()

    def pytest_unconfigure(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------ state/progress.json

    def lane_label(self, lane: str) -> str:
        home = self.homes.get(lane)
        return f"{lane} GPU {home}" if home is not None else lane

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            counts, summary = self.progress.snapshot(), self.progress.summary()
        for lane in counts["lanes"]:
            lane["gpu"] = self.homes.get(lane["lane"])
        return {
            "suite": self.state.suite.name,
            "run_dir": str(self.state.run_dir),
            "session": self.state.session,
            "controller_pid": os.getpid(),
            "updated": datetime.now(UTC).isoformat(timespec="seconds"),
            "finished": self._finished,
            **counts,
            "summary": summary,
        }

    def write(self) -> None:
        """Rewrite state/progress.json atomically (a reader never sees half a file)."""
        try:
            write_json_atomic(self.path, self.snapshot())
        except (OSError, StoreError) as exc:  # a full disk must not stop the campaign: say so once
            warning = f"could not write {self.path}: {exc}"
            if warning not in self.state.warnings:
                self.state.warnings.append(warning)

    def _start_writer(self) -> None:
        if self._writer is not None:
            return
        self._writer = threading.Thread(target=self._write_every_interval, name="invarlock-progress-file", daemon=True)
        self._writer.start()

    def _write_every_interval(self) -> None:
        self.write()
        while not self._stop.wait(self.interval):
            self.write()


class ProgressReporter:
    """The controller's progress display over the tracker's counts; docs/run-directory.md says how it is drawn."""

    def __init__(self, config: pytest.Config, tracker: ProgressTracker, *, live: bool, interval: float) -> None:
        self.config, self.tracker = config, tracker
        self.progress = tracker.progress
        self.live, self.interval = live, interval
        self._last_line = 0.0
        self._next_step = STEP_FRACTION
        self._status: LiveStatus | None = None
        self._stopped = False

    # ------------------------------------------------------------------ events (bracketed for the live block)
    # Each event has a tryfirst impl that erases the block before pytest writes, and a trylast one (its own
    # name, pytest's spec through `specname`; pytest only reads `pytest_*` attributes) that redraws it after
    # the tracker (a plain hook) has counted the event.

    def _hide(self) -> None:
        if self._status is not None:
            self._status.hide()

    def _show(self) -> None:
        if self._stopped or not self.live or not self.progress.total:
            return
        if self._status is None:
            self._status = LiveStatus(self.config, self.render)
        self._status.show()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str) -> None:
        self._hide()

    @pytest.hookimpl(trylast=True, specname="pytest_runtest_logstart")
    def pytest_runtest_logstart_last(self, nodeid: str) -> None:
        if nodeid in self.progress.priors:
            self._plain_line()
        self._show()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self._hide()

    @pytest.hookimpl(trylast=True, specname="pytest_runtest_logreport")
    def pytest_runtest_logreport_last(self, report: pytest.TestReport) -> None:
        self._show()

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_logfinish(self, nodeid: str) -> None:
        self._hide()

    @pytest.hookimpl(trylast=True, specname="pytest_runtest_logfinish")
    def pytest_runtest_logfinish_last(self, nodeid: str) -> None:
        self._show()

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        self._hide()

    @pytest.hookimpl(tryfirst=True, optionalhook=True)
    def pytest_handlecrashitem(self, crashitem: str, report: Any, sched: Any) -> None:
        self._hide()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self._stop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self) -> None:
        self._stop()

    def pytest_unconfigure(self) -> None:
        self._stop()

    def _stop(self) -> None:
        self._stopped = True
        if self._status is not None:
            self._status.close()

    # ------------------------------------------------------------------ output

    def lane_label(self, lane: str) -> str:
        return self.tracker.lane_label(lane)

    def render(self) -> Any:
        from rich.table import Table
        from rich.text import Text

        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column(overflow="ellipsis", no_wrap=True)
        table.add_column(justify="right")
        for lane, label, elapsed in self.progress.lane_rows():
            table.add_row(self.lane_label(lane), label, elapsed)
        title = Text.assemble(("invarlock ", "bold cyan"), self.progress.summary())
        from rich.console import Group

        return Group(title, table)

    def plain_line(self) -> str:
        lanes = "; ".join(
            f"{self.lane_label(lane)}: {label}{' ' + elapsed if elapsed else ''}"
            for lane, label, elapsed in self.progress.lane_rows()
        )
        return f"[invarlock] {self.progress.summary()}" + (f" | {lanes}" if lanes else "")

    def _plain_line(self) -> None:
        if self.live or not self.progress.total:
            return
        now = self.progress.clock()
        fraction = self.progress.done / self.progress.total
        due = now - self._last_line >= self.interval or fraction >= self._next_step or fraction >= 1.0
        if not due:
            return
        self._last_line = now
        while self._next_step <= fraction:
            self._next_step += STEP_FRACTION
        reporter = self.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            if self.config.get_terminal_writer().width_of_current_line:  # after xdist's dots: a line of its own
                reporter.write("\n")
            reporter.write_line(self.plain_line())


class LiveStatus:
    """A block of lines below pytest's output, drawn and erased with rich; a thread refreshes the clock."""

    def __init__(self, config: pytest.Config, render: Callable[[], Any]) -> None:
        from rich.console import Console

        self.tw = config.get_terminal_writer()
        self.file = sys.stdout
        self.render = render
        self.console = Console(
            file=io.StringIO(), force_terminal=True, width=max(40, self.tw.fullwidth - 1), highlight=False, soft_wrap=False
        )
        self.lock = threading.RLock()
        self.height = 0
        self.column = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._refresh, name="invarlock-progress", daemon=True)
        self._thread.start()

    def show(self) -> None:
        with self.lock:
            if self.height or self._stop.is_set():
                return
            self.file.flush()
            self.column = self.tw.width_of_current_line
            buffer = io.StringIO()
            self.console.file = buffer
            self.console.print(self.render())
            block = buffer.getvalue().rstrip("\n")
            self.file.write(("\n" if self.column else "") + block)
            self.file.flush()
            self.height = block.count("\n") + 1

    def hide(self) -> None:
        from rich.control import Control
        from rich.segment import ControlType

        with self.lock:
            if not self.height:
                return
            codes: list[Any] = [(ControlType.CARRIAGE_RETURN,), (ControlType.ERASE_IN_LINE, 2)]
            for _ in range(self.height - 1):
                codes += [(ControlType.CURSOR_UP, 1), (ControlType.ERASE_IN_LINE, 2)]
            if self.column:
                codes += [(ControlType.CURSOR_UP, 1), (ControlType.CURSOR_MOVE_TO_COLUMN, self.column)]
            self.file.write(str(Control(*codes)))
            self.file.flush()
            self.height = 0

    def _refresh(self) -> None:
        while not self._stop.wait(REFRESH_S):
            with self.lock:
                if self.height:
                    self.hide()
                    self.show()

    def close(self) -> None:
        with self.lock:
            self.hide()
            self._stop.set()


def add_options(group: pytest.OptionGroup) -> None:
    group.addoption(
        "--progress-interval",
        dest="invarlock_progress_interval",
        type=non_negative_number,
        default=DEFAULT_INTERVAL_S,
        metavar="SECONDS",
        help="without a terminal (CI logs, | tee): print a progress line at most this often and at "
        "every further 10%% of the items (default 30); on a terminal the status updates in place; "
        "0 turns progress off (so does -q)",
    )


def progress_mode(config: pytest.Config) -> tuple[bool, float] | None:
    """(live, interval) for this session, or None when progress is off (-q, --progress-interval 0)."""
    interval = config.getoption("invarlock_progress_interval", DEFAULT_INTERVAL_S)
    if config.get_verbosity() < 0 or interval is None or interval <= 0:
        return None
    stream = sys.stdout
    live = (
        hasattr(stream, "isatty")
        and stream.isatty()
        and os.environ.get("TERM", "") not in ("", "dumb")
        and config.getoption("capture", "fd") != "no"
        and not config.getini("log_cli")
        and not config.getoption("log_cli_level", None)
    )
    return bool(live), float(interval)


def register(config: pytest.Config, state: ConfigState) -> ProgressTracker:
    """Register the tracker on the controller, and the display when the session wants one."""
    tracker = ProgressTracker(config, state)
    config.pluginmanager.register(tracker, PROGRESS_PLUGIN)
    mode = progress_mode(config)
    if mode is not None:
        config.pluginmanager.register(ProgressReporter(config, tracker, live=mode[0], interval=mode[1]), DISPLAY_PLUGIN)
    return tracker
