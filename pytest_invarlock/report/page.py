"""Lay the report out as one self-contained HTML page: inline CSS, inline SVG, a few lines of inline JS.

Nothing is loaded from anywhere: no font, stylesheet, script or image URL (a test opens the page in
headless Chromium with every host unresolvable and fails on any console message). The only script
filters the item table and marks the page ready (`<body data-ready="1">`) once it has run.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_invarlock.report.data import TABLE_COLUMNS, ReportData, Row

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d1d1f;background:#fafafa}
header{background:#1f2937;color:#f9fafb;padding:14px 24px}
header h1{margin:0 0 4px;font-size:20px} header .meta{opacity:.85;font-size:12.5px}
nav{padding:6px 24px;background:#e5e7eb;font-size:13px} nav a{margin-right:14px;color:#1f2937}
section{background:#fff;margin:14px 18px;padding:12px 18px;border:1px solid #e5e7eb;border-radius:6px}
h2{font-size:16px;margin:2px 0 10px} .note{color:#555;font-size:12.5px}
.status{display:inline-block;padding:2px 10px;border-radius:4px;font-weight:600}
.PHASE0_VALIDATED{background:#2e7d32;color:#fff} .PHASE0_FAILED{background:#c62828;color:#fff}
.PHASE0_DEGRADED{background:#ef6c00;color:#fff} .PHASE0_INCOMPLETE{background:#6b7280;color:#fff}
.row{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start}
svg.figure{max-width:100%;height:auto}
.metrics td{padding:1px 10px 1px 0} pre{background:#f3f4f6;padding:8px;overflow:auto;font-size:12px}
table.items{border-collapse:collapse;font-size:12px;width:100%}
table.items th,table.items td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;white-space:nowrap}
table.items th{position:sticky;top:0;background:#f3f4f6}
tr.failed td.outcome{color:#c62828;font-weight:600} tr.error td.outcome{color:#000;font-weight:700}
tr.skipped td{color:#888} tr.passed td.outcome{color:#2e7d32}
.filters{margin-bottom:8px} .filters input{width:280px}
"""

SCRIPT = """
(function () {
  var text = document.getElementById('filter-text');
  var outcome = document.getElementById('filter-outcome');
  var kind = document.getElementById('filter-kind');
  var rows = Array.prototype.slice.call(document.querySelectorAll('#item-table tbody tr'));
  var shown = document.getElementById('shown');
  function apply() {
    var needle = text.value.toLowerCase(), n = 0;
    rows.forEach(function (row) {
      var ok = (!needle || row.textContent.toLowerCase().indexOf(needle) >= 0) &&
               (!outcome.value || row.dataset.outcome === outcome.value) &&
               (!kind.value || row.dataset.kind === kind.value);
      row.hidden = !ok;
      if (ok) { n += 1; }
    });
    shown.textContent = String(n);
  }
  [text, outcome, kind].forEach(function (el) { el.addEventListener('input', apply); });
  apply();
  document.body.dataset.ready = '1';
})();
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def phase0_html(phase0: Any, confusion_svg: str) -> str:
    """The Phase 0 block: the confusion matrix drawn, the headline numbers, the full text block."""
    p = phase0
    lo, hi = p.accuracy_ci
    rate = p.error_detection_rate
    rows = [
        ("status", f'<span class="status {_e(p.status)}">{_e(p.status_line)}</span>'),
        ("scope", _e(p.scope.strip() or "the whole campaign: every suite item measured")),
        ("criteria", "<br>".join(_e(c.describe()) for c in p.criteria)),
        ("truth", _e(p.truth_source)),
        ("accuracy", f"{100 * p.accuracy:.1f}% (Wilson 95% CI {100 * lo:.1f}-{100 * hi:.1f}%)"),
        ("precision / recall / F1", f"{100 * p.precision:.1f}% / {100 * p.recall:.1f}% / {100 * p.f1:.1f}%"),
        ("error detection", "not measured" if rate is None else f"{p.error_detected}/{p.error_total} ({100 * rate:.1f}%)"),
        ("no-op false alarms", f"{p.noop_false_alarms} of {p.noop_total}"),
        ("degraded runs", str(p.degraded_count)),
        ("score", f"{p.score:.1f}/100 (level {_e(p.level)})"),
    ]
    table = "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in rows)
    return (
        f'<div class="row"><div>{confusion_svg}</div><table class="metrics">{table}</table></div>'
        f"<details><summary>the full Phase 0 block</summary><pre>{_e(p.render_text())}</pre></details>"
    )


def _table(rows: Sequence[Row]) -> str:
    head = "".join(f"<th>{_e(c)}</th>" for c in TABLE_COLUMNS)
    body = []
    for row in rows:
        cells = []
        for column in TABLE_COLUMNS:
            value = row.cells.get(column, "")
            value_html = f'<a href="{_e(row.link)}">report</a>' if column == "report" and row.link else _e(value)
            cells.append(f'<td class="{_e(column.replace(" ", "-"))}">{value_html}</td>')
        body.append(
            f'<tr class="{_e(row.outcome)}" data-outcome="{_e(row.outcome)}" data-kind="{_e(row.kind)}">'
            + "".join(cells)
            + "</tr>"
        )
    return f'<table class="items" id="item-table"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _options(values: Sequence[str]) -> str:
    return '<option value="">all</option>' + "".join(f'<option value="{_e(v)}">{_e(v)}</option>' for v in values)


def render_page(
    *, title: str, header: Mapping[str, Any], phase0: Any, data: ReportData, svgs: Mapping[str, str], not_run: Sequence[str]
) -> str:
    meta = " · ".join(f"{_e(k)}: {_e(v)}" for k, v in header.items())
    counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(data.counts.items()))
    missing = ""
    if not_run:
        listed = "".join(f"<li>{_e(pid)}</li>" for pid in not_run)
        missing = (
            f'<p class="note"><b>{len(not_run)} suite item(s) have no record</b> in this run directory '
            f"(not run yet, deselected, or a shard that is missing or incomplete):</p>"
            f"<details><summary>list</summary><ul>{listed}</ul></details>"
        )
    tl = data.timeline
    tl_note = (
        f"{len(tl.bars)} item(s) on {len(tl.lanes)} lane(s) from {tl.sessions} session(s); "
        "colour: kind, outline and hatching: failed / error; hover a bar for its numbers."
    )
    if tl.not_drawn:
        tl_note += f" {tl.not_drawn} item(s) ran in earlier sessions (or have no recorded times) and are not drawn."
    outcomes = sorted({r.outcome for r in data.rows})
    kinds = sorted({r.kind for r in data.rows})
    generated = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width,initial-scale=1">
<title>{_e(title)}</title><style>{STYLE}</style></head>
<body data-ready="0">
<header><h1>{_e(title)}</h1><div class="meta">{meta} · generated {_e(generated)}</div>
<div class="meta">items: {_e(counts or "none")}</div></header>
<nav><a href="#phase0">Phase 0</a><a href="#timeline">timeline</a><a href="#ratios">ratios</a>
<a href="#heatmap">guards</a><a href="#lm-eval">lm-eval</a><a href="#items">items</a></nav>
<section id="phase0"><h2>Phase 0 verdict</h2>{phase0_html(phase0, svgs["confusion"])}{missing}</section>
<section id="timeline"><h2>Timeline per GPU (or worker)</h2><p class="note">{_e(tl_note)}</p>{svgs["timeline"]}</section>
<section id="ratios"><h2>InvarLock ratio per scenario and run, against the acceptance band</h2>
<p class="note">Each point is one certificate: the perplexity ratio edited/baseline with its 95% bootstrap CI;
the shaded band is the model's acceptance range.</p>{svgs["ratios"]}</section>
<section id="heatmap"><h2>Guards: which gates failed where</h2>{svgs["heatmap"]}</section>
<section id="lm-eval"><h2>lm-eval accuracy delta against InvarLock ratio</h2>
<p class="note">Below a task's dashed line (2 standard errors) an edit counts as a regression, the truth of the
Phase 0 block.</p>{svgs["lm-eval"]}</section>
<section id="items"><h2>Items</h2><div class="filters">filter <input id="filter-text" type="search"
placeholder="text in any column"> outcome <select id="filter-outcome">{_options(outcomes)}</select>
kind <select id="filter-kind">{_options(kinds)}</select> <span class="note"><span id="shown">{len(data.rows)}</span>
of {len(data.rows)} shown</span></div>{_table(data.rows)}</section>
<script>{SCRIPT}</script>
</body></html>
"""
