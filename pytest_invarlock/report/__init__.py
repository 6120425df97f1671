"""The run's HTML report: `<run-dir>/reports/report.html`, one self-contained page with pictures.

Controller side and torch-free (matplotlib is imported only when a picture is drawn). Written at the
end of every validation session (`terminal.VerdictReporter`) and by `python -m pytest_invarlock report
RUN_DIR` (`report.command`), which compiles every record under `RUN_DIR/records` (all shards' included).
`report.pytest_html` puts the same summary and pictures into pytest-html's report when `--html` is given.

    data.py     records -> plain figure data (timeline bars, ratio points, heatmap cells, table rows)
    figures.py  matplotlib SVG, one hover title per mark
    page.py     the HTML page around them
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytest_invarlock.report.data import ReportData, report_data

REPORT_FILE = Path("reports") / "report.html"


PAGE_HEADER_KEYS = ("suite", "suite_file", "run_dir", "items_this_session", "items_from_earlier_sessions", "partial")


def page_header(header: Mapping[str, Any]) -> dict[str, Any]:
    """The verdict header's lines worth showing atop the page (not the campaign's item list)."""
    return {k: header[k] for k in PAGE_HEADER_KEYS if k in header and header[k] not in (None, False)}


def pictures(data: ReportData, phase0: Any) -> dict[str, str]:
    """Every picture of the report as an inline SVG string, by section name."""
    from pytest_invarlock.report import figures as fig  # the module (this function is `pictures`)

    c = phase0.confusion
    return {
        "confusion": fig.confusion_svg(c.tp, c.fp, c.fn, c.tn, phase0.truth_source),
        "timeline": fig.timeline_svg(data.timeline),
        "ratios": fig.ratio_svg(data.ratios),
        "heatmap": fig.heatmap_svg(data.heatmap),
        "lm-eval": fig.eval_svg(data.evals),
    }


def render_report(
    records: Sequence[Mapping[str, Any]],
    compiled: Any,
    *,
    run_dir: Path,
    header: Mapping[str, Any],
    acceptance: Mapping[str, tuple[float, float]] | None = None,
) -> str:
    """The page for these records and their compiled verdict (`verdict.compile.compile_records`)."""
    from pytest_invarlock.report.page import render_page

    data = report_data(records, compiled.benchmarks, run_dir / REPORT_FILE.parent, acceptance, compiled.labels)
    accounting = compiled.phase0.accounting
    suite = header.get("suite", "")
    return render_page(
        title=f"InvarLock validation: {suite}",
        header=header,
        phase0=compiled.phase0,
        data=data,
        svgs=pictures(data, compiled.phase0),
        not_run=list(accounting.not_run) if accounting else [],
    )


def write_report(
    records: Sequence[Mapping[str, Any]],
    compiled: Any,
    *,
    run_dir: Path,
    header: Mapping[str, Any],
    acceptance: Mapping[str, tuple[float, float]] | None = None,
) -> Path:
    """Write `<run-dir>/reports/report.html` atomically; returns its path."""
    from pytest_invarlock.store import write_text_atomic

    path = run_dir / REPORT_FILE
    write_text_atomic(path, render_report(records, compiled, run_dir=run_dir, header=header, acceptance=acceptance))
    return path
