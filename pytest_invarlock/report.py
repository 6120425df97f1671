"""Controller side of the verdict: collect each item's record, keep them on disk, print and write the verdict.

Registered only on the controller (or the single process). Records arrive through the reports that
pytest-xdist forwards (`user_properties`), so the summary is computed from the same data with and
without -n. Records persist under `<run-dir>/records/`, so a `--lf` rerun or a `-k` slice still
reports on the whole campaign: the newest record of every suite item whose definition is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from .items import Item, item_from_nodeid
from .store import StoreError, write_json_atomic
from .summary import compile_records, render_benchmarks, render_table, write_reports

if TYPE_CHECKING:
    from .context import ConfigState

RECORD_PROPERTY = "invarlock"


def base_record(item: Item) -> dict[str, Any]:
    """The fields every record has, whatever happened to the item."""
    return {
        "param_id": item.param_id,
        "test": item.test,
        "model": item.model.name,
        "scenario": item.scenario.name if item.scenario else None,
        "variant": item.variant,
        "kind": item.kind,
        "run": item.run,
        "benchmark": item.benchmark,
        "expectation": item.scenario.expectation if item.scenario and not item.benchmark else None,
        "definition_key": item.definition_key,
    }


def _reason(report: pytest.TestReport) -> str:
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    return (errors[-1][2:] if errors else lines[-1] if lines else "").strip()


class RecordCollector:
    def __init__(self, state: ConfigState) -> None:
        self.state = state
        self.records: dict[str, dict[str, Any]] = {}
        self.records_dir = state.run_dir / "records"

    @pytest.hookimpl
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = item_from_nodeid(report.nodeid, self.state.index)
        if item is None:
            return
        properties = dict(report.user_properties)
        record = {**base_record(item), **json.loads(properties.get(RECORD_PROPERTY, "{}"))}
        if report.when == "call":
            record["outcome"] = report.outcome
        elif report.failed:
            if report.when == "teardown" and item.param_id in self.records:
                return
            record.update(outcome="error", error=_reason(report))
        elif report.skipped:
            record.update(outcome="skipped", reason=_reason(report))
        else:
            return
        if report.failed and report.when == "call":
            record.setdefault("message", _reason(report))
        self.records[item.param_id] = record
        try:
            write_json_atomic(self.records_dir / f"{item.param_id}.json", record)
        except StoreError as exc:
            self.state.warnings.append(str(exc))

    def campaign_records(self) -> tuple[list[dict[str, Any]], int]:
        """This session's records plus earlier ones for the other suite items; and how many came from earlier."""
        records = dict(self.records)
        earlier = 0
        for item in self.state.items:
            if item.param_id in records:
                continue
            path = self.records_dir / f"{item.param_id}.json"
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if old.get("definition_key") == item.definition_key:
                records[item.param_id] = old
                earlier += 1
        return list(records.values()), earlier

    @pytest.hookimpl(trylast=True)
    def pytest_terminal_summary(self, terminalreporter, exitstatus, config) -> None:
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
                  if r.get("kind") == "benchmark" and "model_loaded_from_disk" in r and not r.get("reused")]
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


def _reuse_counts(records) -> dict[str, int]:
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
