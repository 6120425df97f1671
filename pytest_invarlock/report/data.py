"""What the HTML report shows, as plain data: timeline bars, ratio points, heatmap cells, lm-eval pairs, table rows.

Pure and torch-free, no plotting import: `figures` draws these, `page` lays them out, and the tests
check the numbers here without a browser. Input is the records of a run directory (see `records`)
and the compiled verdict (`verdict.compile.Compiled`).

Timing: records carry `started`/`ended` (epoch seconds, stamped by the controller from pytest's own
report times: setup start to call stop) plus `worker`, `host`, `session` and `devices` (the GPUs the
scheduler placed the item on). The timeline shows the latest campaign window: the newest session and
every session whose time span overlaps it (the shards of one campaign run side by side); records from
earlier sessions (reused by a --lf rerun) are counted but not drawn.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CERTIFY_KINDS = ("calibration", "clean", "stress", "error")
KIND_ORDER = (*CERTIFY_KINDS, "benchmark")
RAN = ("passed", "failed", "error")  # outcomes of items that ran (a skip never started its work)
GATE_SHORT = {
    "primary_metric_acceptable": "PM",
    "preview_final_drift_acceptable": "drift",
    "invariants_pass": "inv",
    "spectral_stable": "spec",
    "rmt_stable": "rmt",
    "guard_overhead_acceptable": "ovh",
}


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fmt(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if finite(value) else "-"


def short_gate(gate: str) -> str:
    return GATE_SHORT.get(gate, gate.removesuffix("_acceptable").removesuffix("_pass"))


def outcome_of(record: Mapping[str, Any]) -> str:
    """passed / failed / error / skipped; a failed call without a verdict is an error (the pipeline broke)."""
    outcome = str(record.get("outcome") or "unknown")
    if outcome == "failed" and "met" not in record:
        return "error"
    return outcome


def _ci(record: Mapping[str, Any]) -> tuple[float | None, float | None]:
    ci = record.get("ci") or (None, None)
    lo, hi = (ci[0], ci[1]) if len(ci) == 2 else (None, None)
    return (lo if finite(lo) else None, hi if finite(hi) else None)


# --------------------------------------------------------------------------- timeline


@dataclass(frozen=True)
class Bar:
    param_id: str
    lane: str
    kind: str
    outcome: str
    start: float  # seconds since the window's start
    end: float
    tooltip: str


@dataclass(frozen=True)
class Timeline:
    lanes: list[str]
    bars: list[Bar]
    origin: float  # epoch seconds of the window's start
    not_drawn: int  # items ran in earlier sessions (or without times): not on this timeline
    sessions: int


def _lane(record: Mapping[str, Any], multi_host: bool) -> str:
    devices = record.get("devices") or []
    worker = str(record.get("worker") or "main")
    name = f"GPU {devices[0]}" if devices else worker
    return f"{record.get('host')}:{name}" if multi_host else name


def _window(timed: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The latest session plus every session overlapping the window it grows (shards of one campaign)."""
    spans: dict[str, list[float]] = {}
    for r in timed:
        key = str(r.get("session") or "")
        lo, hi = spans.get(key, [math.inf, -math.inf])
        spans[key] = [min(lo, r["started"]), max(hi, r["ended"])]
    order = sorted(spans, key=lambda k: spans[k][1], reverse=True)
    lo, hi = spans[order[0]]
    chosen = {order[0]}
    grew = True
    while grew:
        grew = False
        for key in order:
            s_lo, s_hi = spans[key]
            if key not in chosen and s_lo <= hi and s_hi >= lo:
                chosen.add(key)
                lo, hi = min(lo, s_lo), max(hi, s_hi)
                grew = True
    return [r for r in timed if str(r.get("session") or "") in chosen]


def timeline(records: Sequence[Mapping[str, Any]]) -> Timeline:
    """One bar per item that ran in the latest campaign window, on its GPU's (or worker's) lane."""
    ran = [r for r in records if outcome_of(r) in RAN]
    timed = [r for r in ran if finite(r.get("started")) and finite(r.get("ended"))]
    if not timed:
        return Timeline([], [], 0.0, len(ran), 0)
    shown = _window(timed)
    multi_host = len({r.get("host") for r in shown}) > 1
    origin = min(r["started"] for r in shown)
    bars = []
    for r in sorted(shown, key=lambda r: r["started"]):
        seconds = r["ended"] - r["started"]
        parts = [
            f"{r.get('param_id')}",
            f"{r.get('kind')}, {outcome_of(r)}, {seconds:.1f} s",
            f"start +{r['started'] - origin:.1f} s, worker {r.get('worker') or 'main'}",
        ]
        if r.get("devices"):
            parts.append("GPUs " + ",".join(str(d) for d in r["devices"]))
        if finite(r.get("ratio")):
            lo, hi = _ci(r)
            parts.append(f"ratio {fmt(r['ratio'])} (CI {fmt(lo)}-{fmt(hi)})")
        if finite(r.get("accuracy")):
            parts.append(f"accuracy {fmt(r['accuracy'])}")
        bars.append(
            Bar(
                str(r.get("param_id")),
                _lane(r, multi_host),
                str(r.get("kind")),
                outcome_of(r),
                r["started"] - origin,
                r["ended"] - origin,
                "\n".join(parts),
            )
        )
    lanes = sorted({b.lane for b in bars}, key=_lane_key)
    return Timeline(lanes, bars, origin, len(ran) - len(shown), len({r.get("session") for r in shown}))


def _lane_key(lane: str) -> tuple[str, int, str]:
    head, _, tail = lane.rpartition(" ")
    digits = "".join(c for c in tail if c.isdigit())
    return (head, int(digits) if digits else -1, lane)


# --------------------------------------------------------------------------- ratios


@dataclass(frozen=True)
class RatioPoint:
    param_id: str
    model: str
    scenario: str
    kind: str
    run: int
    ratio: float | None  # None: no report (e.g. a NaN model that made evaluate abort)
    ci_lo: float | None
    ci_hi: float | None
    met: bool
    tooltip: str


@dataclass(frozen=True)
class RatioPanel:
    model: str
    scenarios: list[str]  # x positions, in kind order
    band: tuple[float, float] | None  # the acceptance range
    points: list[RatioPoint]


def _acceptance(
    records: Iterable[Mapping[str, Any]], fallback: Mapping[str, tuple[float, float]], model: str
) -> tuple[float, float] | None:
    for r in records:
        band = r.get("acceptance")
        if isinstance(band, (list, tuple)) and len(band) == 2 and all(finite(v) for v in band):
            return (float(band[0]), float(band[1]))
    return fallback.get(model)


def ratio_panels(
    records: Sequence[Mapping[str, Any]], acceptance: Mapping[str, tuple[float, float]] | None = None
) -> list[RatioPanel]:
    """Per model: every certify item with a verdict (or one that said why it has no ratio), by scenario and run."""
    panels = []
    certify = [r for r in records if r.get("kind") in CERTIFY_KINDS and outcome_of(r) in ("passed", "failed")]
    for model in sorted({str(r["model"]) for r in certify}):
        mine = [r for r in certify if r["model"] == model]
        scenarios = sorted(
            {str(r["scenario"]) for r in mine},
            key=lambda s: (min(CERTIFY_KINDS.index(r["kind"]) for r in mine if r["scenario"] == s), s),
        )
        points = []
        for r in sorted(mine, key=lambda r: (scenarios.index(str(r["scenario"])), int(r.get("run") or 0))):
            lo, hi = _ci(r)
            ratio = float(r["ratio"]) if finite(r.get("ratio")) else None
            gates = ", ".join(r.get("failed_gates") or []) or "none"
            text = (
                f"{r.get('param_id')}\nratio {fmt(ratio)} (95% CI {fmt(lo)}-{fmt(hi)})\n"
                f"expectation {r.get('expectation')}, met {bool(r.get('met'))}\nfailed gates: {gates}"
            )
            if ratio is None and r.get("failure"):
                text += f"\nno report: {str(r['failure'])[:120]}"
            points.append(
                RatioPoint(
                    str(r.get("param_id")),
                    model,
                    str(r["scenario"]),
                    str(r["kind"]),
                    int(r.get("run") or 0),
                    ratio,
                    lo,
                    hi,
                    bool(r.get("met")),
                    text,
                )
            )
        panels.append(RatioPanel(model, scenarios, _acceptance(mine, acceptance or {}, model), points))
    return panels


# --------------------------------------------------------------------------- guard heatmap


@dataclass(frozen=True)
class Cell:
    model: str
    scenario: str
    runs: int  # certify items with a verdict in this cell
    flagged: int  # of them, flagged by InvarLock (overall fail or degraded) or aborted (no report)
    gates: dict[str, int]  # gate (short name) -> runs in which it failed
    remediated: int  # runs in which a guard remediated (spectral caps applied)
    kind: str
    tooltip: str

    @property
    def label(self) -> str:
        if not self.runs:
            return "-"
        if not self.gates:
            return "ok" + ("*" if self.remediated else "")
        return "\n".join(sorted(self.gates)[:3]) + ("*" if self.remediated else "")


@dataclass(frozen=True)
class Heatmap:
    models: list[str]
    scenarios: list[str]
    cells: list[Cell]  # len(models) * len(scenarios), row-major by model


def heatmap(records: Sequence[Mapping[str, Any]]) -> Heatmap:
    """Model x scenario: which gates failed, in how many runs, and where a guard remediated."""
    certify = [r for r in records if r.get("kind") in CERTIFY_KINDS]
    models = sorted({str(r["model"]) for r in certify})
    kinds = {str(r["scenario"]): str(r["kind"]) for r in certify}
    scenarios = sorted(kinds, key=lambda s: (CERTIFY_KINDS.index(kinds[s]), s))
    grouped: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for r in certify:
        if outcome_of(r) in ("passed", "failed"):
            grouped[(str(r["model"]), str(r["scenario"]))].append(r)
    cells = []
    for model in models:
        for scenario in scenarios:
            runs = grouped.get((model, scenario), [])
            gates: dict[str, int] = defaultdict(int)
            flagged = remediated = 0
            for r in runs:
                failed = [short_gate(g) for g in r.get("failed_gates") or []]
                if r.get("failure") and not finite(r.get("ratio")):
                    failed.append("no report")
                for gate in set(failed):
                    gates[gate] += 1
                flagged += bool(r.get("flagged") or r.get("detected") or failed)
                remediated += bool((r.get("caps_applied") or 0) > 0)
            text = f"{model} / {scenario} ({kinds[scenario]})\n"
            if runs:
                text += f"{flagged}/{len(runs)} run(s) flagged\n" + (
                    "failed: " + ", ".join(f"{g} x{n}" for g, n in sorted(gates.items())) if gates else "no gate failed"
                )
                if remediated:
                    text += f"\nremediated (spectral caps applied) in {remediated} run(s)"
            else:
                text += "no verdict"
            cells.append(Cell(model, scenario, len(runs), flagged, dict(gates), remediated, kinds[scenario], text))
    return Heatmap(models, scenarios, cells)


# --------------------------------------------------------------------------- lm-eval vs ratio


@dataclass(frozen=True)
class EvalPoint:
    model: str
    variant: str
    task: str
    ratio: float
    delta: float
    se: float
    regressed: bool | None
    tooltip: str


def eval_points(benchmarks: Sequence[Mapping[str, Any]], records: Sequence[Mapping[str, Any]]) -> list[EvalPoint]:
    """Each edit's accuracy delta (per task) against its InvarLock ratio (mean over its runs)."""
    ratios: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        if r.get("kind") in ("clean", "stress", "error") and finite(r.get("ratio")):
            ratios[(str(r["model"]), str(r["scenario"]))].append(float(r["ratio"]))
    points = []
    for row in benchmarks:
        key = (str(row["model"]), str(row["variant"]))
        if row.get("delta") is None or row.get("se") is None or key not in ratios:
            continue
        ratio = statistics.fmean(ratios[key])
        text = (
            f"{key[0]} / {key[1]} on {row['task']}\naccuracy delta {row['delta']:+.4f} (2 SE = {2 * row['se']:.4f})\n"
            f"InvarLock ratio {ratio:.4f} (mean of {len(ratios[key])} run(s))\nregressed: {row.get('regressed')}"
        )
        points.append(
            EvalPoint(key[0], key[1], str(row["task"]), ratio, float(row["delta"]), float(row["se"]), row.get("regressed"), text)
        )
    return points


# --------------------------------------------------------------------------- item table


TABLE_COLUMNS = (
    "item",
    "test",
    "model",
    "variant",
    "kind",
    "run",
    "outcome",
    "met",
    "Phase 0",
    "ratio",
    "CI",
    "failed gates",
    "accuracy",
    "seconds",
    "where",
    "report",
)


@dataclass(frozen=True)
class Row:
    cells: dict[str, str]
    link: str | None  # relative path to the item's InvarLock report
    outcome: str
    kind: str


def _relative(path: Any, base: Path) -> str | None:
    if not path:
        return None
    try:
        return Path(os.path.relpath(Path(str(path)), base)).as_posix()
    except ValueError:  # another drive (Windows)
        return Path(str(path)).as_posix()


def table_rows(records: Sequence[Mapping[str, Any]], reports_dir: Path, labels: Mapping[str, str] | None = None) -> list[Row]:
    """One row per record; `labels` (the compiled verdict's) says where each certify item went in Phase 0."""
    labels = labels or {}
    rows = []
    for r in sorted(
        records,
        key=lambda r: (
            str(r.get("model")),
            KIND_ORDER.index(str(r.get("kind"))) if r.get("kind") in KIND_ORDER else 9,
            str(r.get("param_id")),
        ),
    ):
        lo, hi = _ci(r)
        seconds = (r["ended"] - r["started"]) if finite(r.get("started")) and finite(r.get("ended")) else r.get("seconds")
        devices = r.get("devices") or []
        where = str(r.get("worker") or "") + (f" GPU {','.join(map(str, devices))}" if devices else "")
        met = r.get("met")
        cells = {
            "item": str(r.get("param_id")),
            "test": str(r.get("test") or ""),
            "model": str(r.get("model")),
            "variant": str(r.get("scenario") or r.get("variant") or ""),
            "kind": str(r.get("kind")),
            "run": str(r.get("run") or "") if not r.get("benchmark") else str(r.get("benchmark")),
            "outcome": outcome_of(r),
            "met": "" if met is None else ("yes" if met else "no"),
            "Phase 0": labels.get(str(r.get("param_id")), ""),
            "ratio": fmt(r.get("ratio")),
            "CI": f"{fmt(lo)}-{fmt(hi)}" if lo is not None else "",
            "failed gates": " ".join(short_gate(g) for g in r.get("failed_gates") or []),
            "accuracy": fmt(r.get("accuracy")),
            "seconds": fmt(seconds, 1),
            "where": where.strip(),
            "report": "",
        }
        if outcome_of(r) in ("error", "skipped"):
            cells["failed gates"] = str(r.get("error") or r.get("reason") or r.get("message") or "")[:160]
        rows.append(Row(cells, _relative(r.get("report"), reports_dir), outcome_of(r), str(r.get("kind"))))
    return rows


@dataclass(frozen=True)
class ReportData:
    """Everything the page shows, derived from the records and the compiled verdict."""

    timeline: Timeline
    ratios: list[RatioPanel]
    heatmap: Heatmap
    evals: list[EvalPoint]
    rows: list[Row]
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> items


def report_data(
    records: Sequence[Mapping[str, Any]],
    benchmarks: Sequence[Mapping[str, Any]],
    reports_dir: Path,
    acceptance: Mapping[str, tuple[float, float]] | None = None,
    labels: Mapping[str, str] | None = None,
) -> ReportData:
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        counts[outcome_of(r)] += 1
    return ReportData(
        timeline(records),
        ratio_panels(records, acceptance),
        heatmap(records),
        eval_points(benchmarks, records),
        table_rows(records, reports_dir, labels),
        dict(counts),
    )
