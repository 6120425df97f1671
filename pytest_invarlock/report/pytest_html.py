"""pytest-html integration: the verdict and the pictures in pytest-html's report, each item's numbers in its row.

Registered on the controller of a validation session only when pytest-html is loaded and `--html` is
given; its hooks are optional, so without pytest-html nothing of this exists. pytest-html builds its
page in its own (trylast) `pytest_sessionfinish`, after the verdict reporter's (tryfirst) wrote the
verdict, so the section shows that same compiled verdict.
"""

from __future__ import annotations

import html
import json
from collections.abc import Callable
from typing import Any

import pytest

from pytest_invarlock.state import ConfigState
from pytest_invarlock.verdict.compile import Compiled

# The verdict this session compiled: its campaign's records and their compiled verdict (None before that).
CampaignVerdict = Callable[[], tuple[list[dict[str, Any]], Compiled] | None]

PLUGIN_NAME = "invarlock-pytest-html"
COLUMNS = ("InvarLock ratio (95% CI)", "gates / accuracy")


def register_pytest_html(config: pytest.Config, state: ConfigState, verdict: CampaignVerdict) -> None:
    if config.pluginmanager.hasplugin("html") and getattr(config.option, "htmlpath", None):
        config.pluginmanager.register(PytestHtmlSection(state, verdict), PLUGIN_NAME)


def _record(report: Any) -> dict[str, Any] | None:
    from pytest_invarlock.records import RECORD_PROPERTY

    for name, value in getattr(report, "user_properties", ()):
        if name == RECORD_PROPERTY:
            try:
                record = json.loads(str(value))
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None


def row_cells(record: dict[str, Any] | None) -> list[str]:
    """The two extra cells of an item's row (empty for other tests and phases)."""
    from pytest_invarlock.report.data import fmt, short_gate

    if record is None:
        return ['<td class="col-invarlock-ratio"></td>', '<td class="col-invarlock-gates"></td>']
    ratio = ""
    ci = record.get("ci") or []
    if record.get("ratio") is not None:
        ratio = fmt(record.get("ratio")) + (f" ({fmt(ci[0])}-{fmt(ci[1])})" if len(ci) == 2 else "")
    elif record.get("failure"):
        ratio = "no report"
    if record.get("accuracy") is not None:
        detail = f"accuracy {fmt(record.get('accuracy'))} (n {record.get('n')})"
    else:
        detail = " ".join(short_gate(g) for g in record.get("failed_gates") or []) or ("ok" if ratio else "")
    return [
        f'<td class="col-invarlock-ratio">{html.escape(ratio)}</td>',
        f'<td class="col-invarlock-gates">{html.escape(detail)}</td>',
    ]


class PytestHtmlSection:
    def __init__(self, state: ConfigState, verdict: CampaignVerdict) -> None:
        self.state, self.verdict = state, verdict

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_header(self, cells: list[str]) -> None:
        cells.extend(f'<th class="col-invarlock">{html.escape(name)}</th>' for name in COLUMNS)

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_table_row(self, report: Any, cells: list[str]) -> None:
        cells.extend(row_cells(_record(report)))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list[str], summary: list[str], postfix: list[str], session: Any) -> None:
        campaign = self.verdict()
        if campaign is None:
            return
        from pytest_invarlock.report import REPORT_FILE, pictures
        from pytest_invarlock.report.data import report_data
        from pytest_invarlock.report.page import phase0_html

        records, compiled = campaign
        data = report_data(records, compiled.benchmarks, self.state.run_dir / REPORT_FILE.parent, labels=compiled.labels)
        svgs = pictures(data, compiled.phase0)
        path = self.state.run_dir / REPORT_FILE
        parts = [
            f'<div class="invarlock-summary"><h2>InvarLock validation: {html.escape(self.state.suite.name)}</h2>',
            f'<p>The full report with the item table: <a href="{html.escape(path.as_uri())}">{html.escape(str(path))}</a></p>',
            "<style>.invarlock-summary svg{max-width:100%;height:auto}.invarlock-summary pre{white-space:pre-wrap}</style>",
            phase0_html(compiled.phase0, svgs["confusion"]),
            "<h3>Timeline per GPU (or worker)</h3>",
            svgs["timeline"],
            "<h3>InvarLock ratio per scenario and run</h3>",
            svgs["ratios"],
            "<h3>Guards</h3>",
            svgs["heatmap"],
            "<h3>lm-eval accuracy delta against InvarLock ratio</h3>",
            svgs["lm-eval"],
            "</div>",
        ]
        prefix.append("".join(parts))
