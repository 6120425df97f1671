"""Controller side of the verdict: collect each item's record, keep them on disk, print and write the verdict.

Registered only on the controller (or the single process) of a validation session. Records arrive
through the reports that pytest-xdist forwards (`user_properties`), so the summary is computed from
the same data with and without -n. Records persist under `<run-dir>/records/`, so a `--lf` rerun or
a `-k` slice still reports on the whole campaign: the newest record of every suite item whose
definition is unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.items import item_from_nodeid
from pytest_invarlock.campaign.kinds import Kind
from pytest_invarlock.campaign.window_planner import plan_lines
from pytest_invarlock.records import earlier_records, record_from_report, record_path
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_sealed
from pytest_invarlock.verdict.compile import compile_records
from pytest_invarlock.verdict.render import render_benchmarks, render_table, write_reports


class VerdictReporter:
    def __init__(self, state: ConfigState) -> None:
        self.state = state
        self.records: dict[str, dict[str, Any]] = {}
        self._setup_started: dict[str, float] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = item_from_nodeid(report.nodeid, self.state.index)
        if item is None:
            return
        if report.when == "setup":
            self._setup_started[report.nodeid] = report.start
        record = record_from_report(item, report, has_record=item.param_id in self.records)
        if record is None:
            return
        record.update(stamp_where_and_when(self.state, item, report, self._setup_started.get(report.nodeid), record))
        self.records[item.param_id] = record
        for warning in record.get("store_warnings") or []:  # damaged artifacts a worker found and rebuilt
            if warning not in self.state.warnings:
                self.state.warnings.append(warning)
        try:
            write_json_sealed(record_path(self.state.run_dir, item), record)
        except StoreError as exc:
            self.state.warnings.append(str(exc))

    def campaign_records(self) -> tuple[list[dict[str, Any]], int]:
        """This session's records plus earlier ones for the other suite items; and how many came from earlier."""
        earlier = earlier_records(self.state.run_dir, self.state.items, set(self.records), self.state.warnings)
        return [*self.records.values(), *earlier], len(earlier)

    @pytest.hookimpl
    def pytest_keyboard_interrupt(self, excinfo: Any) -> None:
        """After the first Ctrl-C, a second one must not cut the cleanup short (xdist shutting its workers down,
        the partial verdict being written): it only says so; a third one aborts at once."""
        import contextlib
        import signal

        presses = [1]

        def on_sigint(signum: int, frame: Any) -> None:
            presses[0] += 1
            if presses[0] >= 3:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                raise KeyboardInterrupt
            print(
                "\ninvarlock: stopping: shutting workers down and writing the partial verdict (Ctrl-C once more to abort now)",
                flush=True,
            )

        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGINT, on_sigint)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        if not self.records and not interrupted:
            return
        records, earlier = self.campaign_records()
        if not records:
            if interrupted:
                terminalreporter.write_line(_resume_line(config, 0, _selected(terminalreporter)), yellow=True)
            return
        compiled = compile_records(
            records, items=[item.param_id for item in self.state.items], min_signal_fraction=self.state.suite.min_signal_fraction
        )
        header = {
            "suite": self.state.suite.name,
            "suite_file": str(self.state.suite.path),
            "run_dir": str(self.state.run_dir),
            "items_this_session": len(self.records),
            "items_from_earlier_sessions": earlier,
            "partial": interrupted,
            # what `verify` needs to recompute the Phase 0 block from the records of an evidence pack
            "campaign": {
                "items": {item.param_id: item.definition_key for item in self.state.items},
                "min_signal_fraction": self.state.suite.min_signal_fraction,
                "options": {**vars(self.state.options), "device": self.state.device, "args": list(config.invocation_params.args)},
                "revisions": {m.source: m.revision for m in self.state.suite.models if m.revision},
            },
        }
        write = terminalreporter.write_line
        terminalreporter.section("InvarLock validation" + (" (PARTIAL: interrupted)" if interrupted else ""))
        write(
            f"suite {self.state.suite.name}: {len(self.records)} item(s) this session"
            + (f", {earlier} from earlier sessions in {self.state.run_dir}" if earlier else "")
        )
        reused = _reuse_counts(self.records.values())
        if reused:
            write("reused from the run directory: " + ", ".join(f"{n} {what}" for what, n in sorted(reused.items())))
        scored = [
            r
            for r in self.records.values()
            if r.get("kind") == Kind.BENCHMARK and "model_loaded_from_disk" in r and not r.get("reused")
        ]
        if scored:
            loads = sum(bool(r["model_loaded_from_disk"]) for r in scored)
            write(
                f"benchmark items that loaded their model from disk: {loads} of {len(scored)} "
                "(the others used the model their worker already held)"
            )
        ran = {r.get("model") for r in self.records.values()}
        for line in plan_lines(self.state.run_dir, [m for m in self.state.suite.models if m.name in ran], recorded_only=True):
            write("windows: " + line)
        write("")
        write(render_table(compiled))
        benchmarks = render_benchmarks(compiled)
        if benchmarks:
            write("")
            write(benchmarks)
        write("")
        status = compiled.phase0.status
        for line in compiled.phase0.render_text().splitlines():
            write(line, green=status == "PHASE0_VALIDATED" and status in line, red=status == "PHASE0_FAILED" and status in line)
        try:
            paths = write_reports(compiled, self.state.run_dir, header=header)
        except StoreError as exc:
            write(f"could not write the reports: {exc}", red=True)
        else:
            write("")
            write(
                f"reports: {_common_parent(paths)} (final_verdict.json/.txt, analysis/*.csv, *.json)"
                + (" marked partial" if interrupted else "")
            )
            _html_report(records, compiled, self.state.run_dir, header, write)
            _evidence_pack(config, self.state.run_dir, write)
        for warning in self.state.warnings:
            write(f"warning: {warning}", yellow=True)
        if interrupted:
            write(_resume_line(config, len(self.records), _selected(terminalreporter)), yellow=True)


def stamp_where_and_when(
    state: ConfigState, item: Any, report: pytest.TestReport, setup_started: float | None, record: dict[str, Any]
) -> dict[str, Any]:
    """When and where the item ran, from pytest's own report times (epoch seconds, taken in the process that
    ran it and forwarded by xdist): setup start to this report's stop; the worker, host, session, and the
    GPUs the scheduler placed it on. Stamped here on the controller, so skips and errors get them too."""
    import socket

    from pytest_invarlock.scheduling.placement import placement_devices

    node = getattr(report, "node", None)
    stamp: dict[str, Any] = {
        "started": setup_started if setup_started is not None else report.start,
        "ended": report.stop,
        "worker": record.get("worker") or (node.gateway.id if node is not None else "main"),
        "host": socket.gethostname(),
        "session": state.session,
    }
    if state.gpus:
        stamp["devices"] = placement_devices(state.run_dir, state.session, item) or []
    return stamp


def _html_report(records: list[dict[str, Any]], compiled: Any, run_dir: Path, header: dict[str, Any], write: Any) -> None:
    """reports/report.html; a failure to draw it is reported, never allowed to hide the verdict above."""
    from pytest_invarlock.report import page_header, write_report

    try:
        path = write_report(records, compiled, run_dir=run_dir, header=page_header(header))
    except Exception as exc:  # noqa: BLE001 - matplotlib or the filesystem: say so and keep the verdict
        write(f"could not write reports/report.html: {type(exc).__name__}: {exc}", red=True)
    else:
        write(f"html report: {path}")


def _evidence_pack(config: pytest.Config, run_dir: Path, write: Any) -> None:
    """--evidence-pack DIR: pack the run directory now that its verdict is written."""
    target = config.getoption("evidence_pack", None)
    if not target:
        return
    from pytest_invarlock.evidence.pack import PackError, build_pack, describe

    key = config.getoption("signing_key", None)
    base = Path(config.invocation_params.dir)
    try:
        pack = build_pack(run_dir, base / Path(target).expanduser(), signing_key=base / Path(key).expanduser() if key else None)
    except (PackError, OSError) as exc:
        write(f"evidence pack not written: {exc}", red=True)
        return
    write(describe(pack), green=pack.signed, yellow=not pack.signed)


def _selected(terminalreporter: Any) -> int | None:
    session = getattr(terminalreporter, "_session", None)
    return getattr(session, "testscollected", None)


def _resume_line(config: pytest.Config, finished: int, selected: int | None) -> str:
    """What an interrupted run prints last: how far it got and the command that resumes it."""
    import shlex

    command = shlex.join(["pytest", *config.invocation_params.args])
    of = f" of {selected}" if selected else ""
    return (
        f"interrupted: partial verdict from {finished}{of} item(s) finished this session. Resume with the same "
        f"command ({command}): finished items and stored artifacts are reused, only the rest runs."
    )


def _reuse_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Distinct reused artifacts per type; records list them as 'type:identity' (e.g. 'edit:tiny-kjv/prune_50pct')."""
    distinct = {what for record in records for what in record.get("reused") or []}
    counts: dict[str, int] = {}
    for what in distinct:
        kind = what.split(":", 1)[0]
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def _common_parent(paths: list[Path]) -> Path:
    parents = {p.parent.parent for p in paths}
    return parents.pop() if len(parents) == 1 else paths[0].parent
