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
from pytest_invarlock.records import earlier_records, record_from_report, record_path
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_atomic
from pytest_invarlock.verdict.summary import compile_records, render_benchmarks, render_table, write_reports


class VerdictReporter:
    def __init__(self, state: ConfigState) -> None:
        self.state = state
        self.records: dict[str, dict[str, Any]] = {}

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = item_from_nodeid(report.nodeid, self.state.index)
        if item is None:
            return
        record = record_from_report(item, report, has_record=item.param_id in self.records)
        if record is None:
            return
        self.records[item.param_id] = record
        try:
            write_json_atomic(record_path(self.state.run_dir, item), record)
        except StoreError as exc:
            self.state.warnings.append(str(exc))

    def campaign_records(self) -> tuple[list[dict[str, Any]], int]:
        """This session's records plus earlier ones for the other suite items; and how many came from earlier."""
        earlier = earlier_records(self.state.run_dir, self.state.items, set(self.records))
        return [*self.records.values(), *earlier], len(earlier)

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if not self.records:
            return
        records, earlier = self.campaign_records()
        compiled = compile_records(records)
        header = {
            "suite": self.state.suite.name,
            "suite_file": str(self.state.suite.path),
            "run_dir": str(self.state.run_dir),
            "items_this_session": len(self.records),
            "items_from_earlier_sessions": earlier,
        }
        write = terminalreporter.write_line
        terminalreporter.section("InvarLock validation")
        write(f"suite {self.state.suite.name}: {len(self.records)} item(s) this session"
              + (f", {earlier} from earlier sessions in {self.state.run_dir}" if earlier else ""))
        reused = _reuse_counts(self.records.values())
        if reused:
            write("reused from the run directory: " + ", ".join(f"{n} {what}" for what, n in sorted(reused.items())))
        scored = [r for r in self.records.values()
                  if r.get("kind") == Kind.BENCHMARK and "model_loaded_from_disk" in r and not r.get("reused")]
        if scored:
            loads = sum(bool(r["model_loaded_from_disk"]) for r in scored)
            write(f"benchmark items that loaded their model from disk: {loads} of {len(scored)} "
                  "(the others used the model their worker already held)")
        write("")
        write(render_table(compiled))
        benchmarks = render_benchmarks(compiled)
        if benchmarks:
            write("")
            write(benchmarks)
        for record in compiled.pipeline_errors:
            write(f"pipeline error  {record['param_id']}: {record.get('error', '')}", red=True)
        write("")
        status = compiled.phase0.status
        for line in compiled.phase0.render_text().splitlines():
            write(line, green=status == "PHASE0_VALIDATED" and status in line, red=status == "PHASE0_FAILED" and status in line)
        try:
            paths = write_reports(compiled, self.state.run_dir, header=header)
        except StoreError as exc:
            write(f"could not write the reports: {exc}", red=True)
            return
        write("")
        write(f"reports: {_common_parent(paths)} (final_verdict.json/.txt, analysis/*.csv, *.json)")
        for warning in self.state.warnings:
            write(f"warning: {warning}", yellow=True)


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
