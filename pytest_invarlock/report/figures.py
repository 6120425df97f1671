"""The report's pictures: matplotlib figures saved as SVG, each mark carrying its hover text.

Why matplotlib SVG (and not plotly): the report must open offline with everything inlined. Plotly
inlines its 4.5 MB JavaScript bundle into every report (and again into pytest-html's page); an SVG
figure is text of a few to a few hundred KB, needs no script at all to draw, and its marks are DOM
elements a test can count. Hover comes from SVG `<title>` elements, which every browser shows as a
tooltip: each mark is drawn as its own artist with a gid (`timeline-bar-3`, `heat-cell-7`, ...), and
`svg_with_titles` puts the mark's text inside the group matplotlib writes for that gid.

No pyplot: `Figure` objects only, so there is no global state and no GUI backend. Text stays text
(`svg.fonttype: none`), ids are salted per figure (several SVGs share one page) and the output is
deterministic (no date metadata), so two runs over the same records give the same bytes.
"""

from __future__ import annotations

import html
import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

from pytest_invarlock.report.data import (
    EvalPoint,
    Heatmap,
    RatioPanel,
    Timeline,
)

KIND_COLOURS = {"calibration": "#4C72B0", "clean": "#55A868", "stress": "#DD8452", "error": "#8172B3", "benchmark": "#937860"}
OUTCOME_STYLE = {  # edge colour, hatch, line width
    "passed": ("#2b2b2b", "", 0.4),
    "failed": ("#C44E52", "////", 1.6),
    "error": ("#000000", "xxxx", 1.6),
}
MET, NOT_MET = "#2E7D32", "#C62828"
TASK_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf")
MODEL_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=96, layout="constrained")


def svg_with_titles(fig: Any, name: str, titles: Mapping[str, str]) -> str:
    """The figure as an inline `<svg>` element: hover titles added, XML prolog and metadata dropped, shrinks to fit."""
    import matplotlib

    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": f"invarlock-{name}", "font.size": 9}):
        fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    svg = buffer.getvalue()
    svg = svg[svg.index("<svg") :]
    svg = re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)

    def add_title(match: re.Match[str]) -> str:
        gid = match.group(1)
        text = titles.get(gid)
        return match.group(0) if text is None else f"{match.group(0)}<title>{html.escape(text)}</title>"

    svg = re.sub(r'<g id="([^"]+)"[^>]*>', add_title, svg)
    svg = svg.replace("<svg ", f'<svg class="figure" data-figure="{name}" ', 1)
    return svg


# --------------------------------------------------------------------------- confusion matrix


def confusion_svg(tp: int, fp: int, fn: int, tn: int, truth: str) -> str:
    fig = _figure(3.8, 3.2)
    ax = fig.add_subplot()
    cells = ((0, 0, "TP", tp, True), (0, 1, "FP", fp, False), (1, 0, "FN", fn, False), (1, 1, "TN", tn, True))
    peak = max(1, tp, fp, fn, tn)
    titles = {}
    from matplotlib.patches import Rectangle

    for row, col, label, count, good in cells:
        shade = 0.15 + 0.75 * count / peak
        colour = (0.18, 0.49, 0.2, shade) if good else (0.78, 0.16, 0.16, shade if count else 0.08)
        gid = f"confusion-{label.lower()}"
        ax.add_patch(Rectangle((col, 1 - row), 1, 1, facecolor=colour, edgecolor="white", linewidth=2, gid=gid))
        ax.text(col + 0.5, 1.5 - row, f"{label}\n{count}", ha="center", va="center", fontsize=13, weight="bold")
        titles[gid] = f"{label}: {count} scored edit run(s)"
    ax.set_xlim(0, 2)
    ax.set_ylim(0, 2)
    ax.set_xticks([0.5, 1.5], ["regressed", "not regressed"])
    ax.set_yticks([1.5, 0.5], ["flagged", "not flagged"])
    ax.tick_params(length=0)
    ax.set_xlabel(f"truth ({truth})")
    ax.set_ylabel("InvarLock")
    for spine in ax.spines.values():
        spine.set_visible(False)
    return svg_with_titles(fig, "confusion", titles)


# --------------------------------------------------------------------------- timeline


def timeline_svg(data: Timeline) -> str:
    from matplotlib.patches import Patch

    lanes = data.lanes or ["(none)"]
    fig = _figure(11, 1.2 + 0.42 * len(lanes))
    ax = fig.add_subplot()
    titles = {}
    lane_y = {lane: i for i, lane in enumerate(lanes)}
    span = max((b.end for b in data.bars), default=1.0) or 1.0
    for i, bar in enumerate(data.bars):
        edge, hatch, width = OUTCOME_STYLE.get(bar.outcome, ("#888888", "..", 1.0))
        gid = f"timeline-bar-{i}"
        ax.barh(
            lane_y[bar.lane],
            max(bar.end - bar.start, span / 2000),
            left=bar.start,
            height=0.72,
            color=KIND_COLOURS.get(bar.kind, "#999999"),
            edgecolor=edge,
            hatch=hatch,
            linewidth=width,
            gid=gid,
        )
        titles[gid] = bar.tooltip
    ax.set_yticks(range(len(lanes)), lanes)
    ax.invert_yaxis()
    ax.set_xlim(0, span * 1.01)
    ax.set_xlabel("seconds since the first item started")
    ax.grid(axis="x", alpha=0.3)
    kinds = [Patch(facecolor=KIND_COLOURS[k], label=k) for k in KIND_COLOURS if any(b.kind == k for b in data.bars)]
    outcomes = [
        Patch(facecolor="white", edgecolor=OUTCOME_STYLE[o][0], hatch=OUTCOME_STYLE[o][1], label=o)
        for o in OUTCOME_STYLE
        if any(b.outcome == o for b in data.bars)
    ]
    if kinds or outcomes:
        ax.legend(handles=kinds + outcomes, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8, frameon=False)
    return svg_with_titles(fig, "timeline", titles)


# --------------------------------------------------------------------------- ratios


def ratio_svg(panels: Sequence[RatioPanel]) -> str:
    from matplotlib.lines import Line2D

    n = max(1, len(panels))
    widest = max((len(p.scenarios) for p in panels), default=1)
    fig = _figure(min(11, 3 + 0.45 * widest), 3.3 * n)
    axes = fig.subplots(n, 1, squeeze=False)[:, 0]
    titles = {}
    index = 0
    for ax, panel in zip(axes, panels):
        xs = {s: i for i, s in enumerate(panel.scenarios)}
        runs = max((p.run for p in panel.points), default=1)
        finite_vals = [v for p in panel.points for v in (p.ratio, p.ci_lo, p.ci_hi) if v is not None and v > 0]
        if panel.band:
            ax.axhspan(*panel.band, color="#9ecae1", alpha=0.45, lw=0, label="acceptance band")
            finite_vals += list(panel.band)
        lo = min(finite_vals, default=0.9) / 1.05
        hi = max(finite_vals, default=1.1) * 1.25
        for point in panel.points:
            x = xs[point.scenario] + (point.run - (runs + 1) / 2) * (0.5 / max(runs, 1))
            colour = MET if point.met else NOT_MET
            gid = f"ratio-pt-{index}"
            if point.ratio is not None:
                if point.ci_lo is not None and point.ci_hi is not None:
                    ax.plot([x, x], [point.ci_lo, point.ci_hi], color=colour, lw=1.6, gid=f"ratio-ci-{index}")
                    titles[f"ratio-ci-{index}"] = point.tooltip
                ax.plot([x], [point.ratio], marker="o", ms=5, color=colour, linestyle="none", gid=gid)
            else:  # no ratio: a cross at the top of the panel
                ax.plot([x], [hi / 1.1], marker="X", ms=8, color=colour, linestyle="none", gid=gid)
            titles[gid] = point.tooltip
            index += 1
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ax.set_xticks(range(len(panel.scenarios)), panel.scenarios, rotation=35, ha="right", fontsize=8)
        for label, scenario in zip(ax.get_xticklabels(), panel.scenarios):
            kind = next((p.kind for p in panel.points if p.scenario == scenario), "")
            label.set_color(KIND_COLOURS.get(kind, "black"))
        ax.set_xlim(-0.6, len(panel.scenarios) - 0.4)
        ax.set_ylabel("InvarLock ratio (log)")
        band = f", acceptance {panel.band[0]:g}-{panel.band[1]:g}" if panel.band else ""
        ax.set_title(f"{panel.model}{band}", loc="left", fontsize=10)
        ax.grid(axis="y", which="both", alpha=0.25)
    handles = [
        Line2D([], [], marker="o", color=MET, linestyle="-", label="met expectation (95% CI)"),
        Line2D([], [], marker="o", color=NOT_MET, linestyle="-", label="did not meet it"),
        Line2D([], [], marker="X", color="#555555", linestyle="none", label="no ratio (evaluate aborted)"),
    ]
    axes[0].legend(handles=handles, loc="upper left", fontsize=8, frameon=False)
    return svg_with_titles(fig, "ratios", titles)


# --------------------------------------------------------------------------- guard heatmap


def heatmap_svg(data: Heatmap) -> str:
    from matplotlib.patches import Rectangle

    cols, rows = max(1, len(data.scenarios)), max(1, len(data.models))
    fig = _figure(min(14, 2.5 + 0.62 * cols), 1.9 + 0.55 * rows)
    ax = fig.add_subplot()
    titles = {}
    for i, cell in enumerate(data.cells):
        row, col = data.models.index(cell.model), data.scenarios.index(cell.scenario)
        face: str | tuple[float, float, float, float]
        if not cell.runs:
            face = "#eeeeee"
        else:
            share = cell.flagged / cell.runs
            face = (0.84, 0.19, 0.15, 0.12 + 0.78 * share) if share else (0.3, 0.69, 0.29, 0.35)
        gid = f"heat-cell-{i}"
        ax.add_patch(Rectangle((col, row), 1, 1, facecolor=face, edgecolor="white", linewidth=1.5, gid=gid))
        ax.text(col + 0.5, row + 0.5, cell.label, ha="center", va="center", fontsize=6.5)
        titles[gid] = cell.tooltip
    ax.set_xlim(0, cols)
    ax.set_ylim(rows, 0)
    ax.set_xticks([c + 0.5 for c in range(len(data.scenarios))], data.scenarios, rotation=40, ha="right", fontsize=8)
    for label, scenario in zip(ax.get_xticklabels(), data.scenarios):
        kind = next((c.kind for c in data.cells if c.scenario == scenario), "")
        label.set_color(KIND_COLOURS.get(kind, "black"))
    ax.set_yticks([r + 0.5 for r in range(len(data.models))], data.models, fontsize=8)
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_title("failed gates per model x scenario (red: share of runs flagged; * a guard remediated)", loc="left", fontsize=9)
    return svg_with_titles(fig, "heatmap", titles)


# --------------------------------------------------------------------------- lm-eval vs ratio


def eval_svg(points: Sequence[EvalPoint]) -> str:
    from matplotlib.lines import Line2D

    fig = _figure(8, 4.4 if points else 1.6)
    ax = fig.add_subplot()
    titles = {}
    tasks = sorted({p.task for p in points})
    models = sorted({p.model for p in points})
    colour = {t: TASK_COLOURS[i % len(TASK_COLOURS)] for i, t in enumerate(tasks)}
    marker = {m: MODEL_MARKERS[i % len(MODEL_MARKERS)] for i, m in enumerate(models)}
    for i, p in enumerate(points):
        gid = f"eval-pt-{i}"
        face = colour[p.task] if p.regressed else "white"
        ax.plot(
            [p.ratio],
            [p.delta],
            marker=marker[p.model],
            ms=7,
            linestyle="none",
            markeredgecolor=colour[p.task],
            markerfacecolor=face,
            markeredgewidth=1.5,
            gid=gid,
        )
        titles[gid] = p.tooltip
    for task in tasks:
        ses = [p.se for p in points if p.task == task]
        level = -2 * sum(ses) / len(ses)
        ax.axhline(level, color=colour[task], linestyle="--", lw=1.2, gid=f"eval-2se-{task}")
        titles[f"eval-2se-{task}"] = f"-2 SE of {task}: {level:+.4f} (below: a regression)"
    ax.axhline(0, color="#888888", lw=0.8)
    if points and min(p.ratio for p in points) > 0:
        ax.set_xscale("log")
    ax.set_xlabel("InvarLock ratio (edited / baseline perplexity, mean over runs; log)")
    ax.set_ylabel("lm-eval accuracy delta vs baseline")
    ax.grid(alpha=0.25, which="both")
    handles = [Line2D([], [], color=colour[t], linestyle="--", label=f"{t}: -2 SE") for t in tasks]
    handles += [
        Line2D([], [], marker=marker[m], color="#444444", linestyle="none", markerfacecolor="white", label=m) for m in models
    ]
    handles.append(Line2D([], [], marker="o", color="#444444", linestyle="none", label="filled: regressed"))
    if points:
        ax.legend(handles=handles, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    else:
        ax.text(0.5, 0.5, "no lm-eval scores of edits in this run", ha="center", va="center", transform=ax.transAxes)
    return svg_with_titles(fig, "lm-eval", titles)
