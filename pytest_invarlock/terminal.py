"""Controller side of the verdict: collect each item's record, keep them on disk, print and write the verdict.

Registered only on the controller (or the single process) of a validation session. Records arrive
through the reports that pytest-xdist forwards (`user_properties`), so the summary is computed from
the same data with and without -n. Records persist under `<run-dir>/records/`, so a `--lf` rerun or
a `-k` slice still reports on the whole campaign: the newest record of every suite item whose
definition is unchanged. Which suite items this session selected (its collection, or each xdist
worker's) goes to the compile: items neither selected nor recorded earlier are "not selected", and
the verdict is labelled with its scope. The summary also prints the thresholds that differ from
InvarLock's stock profile and tier (`campaign.thresholds`) and each model's calibrated drift band.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.items import item_from_nodeid
from pytest_invarlock.campaign.kinds import Kind
from pytest_invarlock.campaign.thresholds import DOCS, deviations, stock_runtime
from pytest_invarlock.campaign.window_planner import plan_lines
from pytest_invarlock.records import campaign_block, earlier_records, record_from_report, record_path
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_sealed
from pytest_invarlock.verdict.compile import Compiled, campaign_options, compile_records
from pytest_invarlock.verdict.render import render_benchmarks, render_table, write_reports

VERDICT_PLUGIN = "invarlock-verdict"


class VerdictReporter:
    def __init__(self, state: ConfigState) -> None:
        self.state = state
        self.records: dict[str, dict[str, Any]] = {}
        self._setup_started: dict[str, float] = {}
        self.written: Written | None = None
        self.selected: set[str] | None = None  # suite items this session selected; None until collection says
        self.scope: Callable[[], str | None] | None = None  # a campaign node's: why its verdict is not the campaign's

    def _select(self, nodeids: Iterable[str]) -> None:
        items = (item_from_nodeid(nodeid, self.state.index) for nodeid in nodeids)
        self.selected = (self.selected or set()) | {item.param_id for item in items if item is not None}

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        """Without xdist: the items left after -k, -m, --shard, --calibrate-only, --no-benchmarks, paths."""
        self._select(item.nodeid for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        """Under xdist: each worker's collection, after its deselection."""
        self._select(ids)

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

    def campaign_verdict(self) -> tuple[list[dict[str, Any]], Compiled] | None:
        """The campaign's records and compiled verdict, once `pytest_sessionfinish` made them."""
        written = self.written
        return None if written is None or written.compiled is None else (written.records, written.compiled)

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        """Write the verdict files here, not in the terminal summary: they must exist with `-p no:terminal`
        and after an internal error too (as junitxml writes its file). The summary only prints `self.written`."""
        partial = partial_reason(session, exitstatus)
        scope = self.scope() if self.scope else None
        self.written = write_verdict(
            self.state,
            self.records,
            partial=partial or scope,
            args=list(session.config.invocation_params.args),
            selected=session.testscollected,
            selection=self.selected,
        )
        if self.written is not None and partial is None:
            self.written.scope = scope

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, config: pytest.Config) -> None:
        written = self.written
        if written is None:
            return
        write = terminalreporter.write_line
        if written.compiled is None:
            if written.partial:
                write(_resume_line(config, 0, written.selected), yellow=True)
            return
        compiled = written.compiled
        terminalreporter.section("InvarLock validation" + (f" (PARTIAL: {written.partial})" if written.partial else ""))
        write(
            f"suite {self.state.suite.name}: {len(self.records)} item(s) this session"
            + (f", {written.earlier} from earlier sessions in {self.state.run_dir}" if written.earlier else "")
        )
        scope = compiled.phase0.scope
        write(
            f"scope: {scope.strip()}: not the campaign's verdict ({compiled.phase0.status})"
            if scope
            else f"scope: the whole campaign, all {len(self.state.items)} suite items measured",
            yellow=bool(scope),
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
        for plan in plan_lines(self.state.run_dir, [m for m in self.state.suite.models if m.name in ran], recorded_only=True):
            write("windows: " + plan)
        for model, band in written.drift_bands.items():
            write(f"drift band {model}: {band['summary']}", yellow=bool(band.get("limited")))
        if written.thresholds:
            write(f"thresholds that differ from InvarLock's stock ci profile and tier ({DOCS}):")
            for row in written.thresholds:
                write(f"  {row}")
        write("")
        write(render_table(compiled))
        benchmarks = render_benchmarks(compiled)
        if benchmarks:
            write("")
            write(benchmarks)
        write("")
        status = compiled.phase0.status
        for text in compiled.phase0.render_text().splitlines():
            write(
                text,
                green=status == "PHASE0_VALIDATED" and status in text,
                red=status in ("PHASE0_FAILED", "PHASE0_DEGRADED") and status in text,
                yellow=status == "PHASE0_INCOMPLETE" and status in text,
            )
        write("")
        for line in written.lines:
            write(line.text, red=line.problem)
        for warning in self.state.warnings:
            write(f"warning: {warning}", yellow=True)
        if written.partial and written.partial != written.scope:
            write(_resume_line(config, len(self.records), written.selected), yellow=True)


@dataclass(frozen=True)
class Line:
    """A line the summary prints about what was written; `problem` lines are printed red."""

    text: str
    problem: bool = False


@dataclass
class Written:
    """What the session wrote at its end, for the terminal summary to print."""

    compiled: Compiled | None
    records: list[dict[str, Any]]  # the campaign's: this session's and earlier sessions' for the other items
    earlier: int
    partial: str | None
    selected: int
    lines: list[Line] = field(default_factory=list)
    thresholds: list[str] = field(default_factory=list)  # `campaign.thresholds` rows, one line each
    drift_bands: dict[str, dict[str, Any]] = field(default_factory=dict)  # model -> its preset's drift_band_derivation
    scope: str | None = None  # the partial reason when it is only a campaign node's scope (nothing was cut short)


def partial_reason(session: pytest.Session, exitstatus: int) -> str | None:
    """Why this session's verdict covers less than it selected, or None when every selected item ran."""
    if exitstatus == pytest.ExitCode.INTERRUPTED:
        return "interrupted"
    if exitstatus == pytest.ExitCode.INTERNAL_ERROR:
        return "internal error"
    if session.shouldfail or session.shouldstop:
        return "stopped early"
    return None


def write_verdict(
    state: ConfigState,
    records: dict[str, dict[str, Any]],
    *,
    partial: str | None,
    args: list[str],
    selected: int,
    selection: set[str] | None = None,
) -> Written | None:
    """Compile this session's records with earlier ones and write reports/, analysis/ and report.html.

    `selection`: the suite items this session selected (None: unknown). None when the session ran no suite
    item and was not cut short (nothing to say).
    """
    if not records and partial is None:
        return None
    earlier_records_ = earlier_records(state.run_dir, state.items, set(records), state.warnings)
    campaign = [*records.values(), *earlier_records_]
    if not campaign:
        return Written(None, [], 0, partial, selected)
    block = campaign_block(state.items, min_signal_fraction=state.suite.min_signal_fraction, selection=selection)
    compiled = compile_records(campaign, **campaign_options(block))
    thresholds = _threshold_lines(state)
    drift_bands = _drift_bands(campaign)
    header = {
        "suite": state.suite.name,
        "suite_file": str(state.suite.path),
        "run_dir": str(state.run_dir),
        "items_this_session": len(records),
        "items_from_earlier_sessions": len(earlier_records_),
        "partial": partial or False,
        "thresholds": thresholds,
        "drift_bands": {model: band["summary"] for model, band in drift_bands.items()},
        # what `verify` needs to recompute the Phase 0 block from the records of an evidence pack
        "campaign": {
            **block,
            "options": {**vars(state.options), "device": state.device, "args": args},
            "revisions": {m.source: m.revision for m in state.suite.models if m.revision},
        },
    }
    written = Written(
        compiled, campaign, len(earlier_records_), partial, selected, thresholds=thresholds, drift_bands=drift_bands
    )
    try:
        paths = write_reports(compiled, state.run_dir, header=header)
    except StoreError as exc:
        written.lines.append(Line(f"could not write the reports: {exc}", problem=True))
        return written
    written.lines.append(
        Line(
            f"reports: {_common_parent(paths)} (final_verdict.json/.txt, analysis/*.csv, *.json)"
            + (f" marked partial ({partial})" if partial else "")
        )
    )
    written.lines.append(_html_report(campaign, compiled, state.run_dir, header))
    return written


def _threshold_lines(state: ConfigState) -> list[str]:
    """The thresholds of this suite's certificates that differ from InvarLock's stock ci profile and tier."""
    stock = stock_runtime()
    if stock is None:
        return ["(InvarLock's packaged runtime profiles were not found: stock values unknown)"]
    return [row.line() for row in deviations(state.suite, *stock)]


def _drift_bands(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Model -> how its calibrated drift band came about, from the preset its records name (store/presets/*/preset.json)."""
    import json

    found: dict[str, dict[str, Any]] = {}
    for record in sorted(records, key=lambda r: str(r.get("param_id"))):
        model, preset = str(record.get("model")), record.get("preset")
        if model in found or not preset:
            continue
        try:
            derivation = json.loads((Path(preset).parent / "preset.json").read_text(encoding="utf-8")).get(
                "drift_band_derivation"
            )
        except (OSError, ValueError):
            continue
        if isinstance(derivation, dict) and "summary" in derivation:
            found[model] = derivation
    return dict(sorted(found.items()))


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


def _html_report(records: list[dict[str, Any]], compiled: Compiled, run_dir: Path, header: dict[str, Any]) -> Line:
    """reports/report.html; a failure to draw it is reported, never allowed to hide the verdict."""
    from pytest_invarlock.report import page_header, write_report

    try:
        path = write_report(records, compiled, run_dir=run_dir, header=page_header(header))
    except Exception as exc:  # noqa: BLE001 - matplotlib or the filesystem: say so and keep the verdict
        return Line(f"could not write reports/report.html: {type(exc).__name__}: {exc}", problem=True)
    return Line(f"html report: {path}")


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
