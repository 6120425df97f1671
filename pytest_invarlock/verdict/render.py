"""Render a compiled verdict: the terminal tables, final_verdict.{json,txt} and the analysis files.

Pure and torch-free, like `verdict.compile`. `write_reports` writes every file a run leaves under
`reports/` and `analysis/`; the evidence pack includes them and its verifier recompiles the
Phase 0 block from the records to check `final_verdict.json`. Nothing here counts: the confusion
cells of the CSV (`phase0` column) and of correlation_analysis.json are the Phase 0 block's own.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.store import write_json_atomic, write_text_atomic
from pytest_invarlock.verdict.compile import CERTIFY_KINDS, Compiled, finite
from pytest_invarlock.verdict.csv_text import csv_text as _csv
from pytest_invarlock.verdict.summaries import write_summaries

RESULT_COLUMNS = (
    "param_id",
    "model",
    "scenario",
    "kind",
    "run",
    "expectation",
    "outcome",
    "met",
    "phase0",
    "overall_pass",
    "flagged",
    "detected",
    "signal",
    "degraded",
    "invalid",
    "ratio",
    "ci_lo",
    "ci_hi",
    "drift",
    "window_digest",
    "revision",
    "failed_gates",
    "failure",
    "reused",
    "seconds",
)
EVAL_COLUMNS = ("model", "variant", "task", "accuracy", "stderr", "n", "delta", "se", "regressed", "finite_logits", "seconds")


def render_table(compiled: Compiled) -> str:
    header = f"{'model':<18} {'calibration':>11} {'clean':>9} {'stress':>9} {'error':>9} {'bench':>6} {'clean ratio':>11}"
    lines = [header, "-" * len(header)]
    for row in compiled.table:
        cells = [f"{m}/{t}" if t else "-" for m, t in (row[k] for k in CERTIFY_KINDS)]
        ratio = f"{row['clean_ratio']:.4f}" if row["clean_ratio"] is not None else "-"
        lines.append(
            f"{row['model']:<18} {cells[0]:>11} {cells[1]:>9} {cells[2]:>9} {cells[3]:>9} {row['benchmark']:>6} {ratio:>11}"
        )
    lines.append("(cells: items whose InvarLock verdict met the expectation / items run; stress = flagged, error = detected)")
    return "\n".join(lines)


def render_benchmarks(compiled: Compiled) -> str:
    if not compiled.benchmarks:
        return ""
    lines = [f"{'model':<18} {'variant':<24} {'task':<16} {'acc':>7} {'delta':>8} {'2*SE':>7} regressed"]
    for row in compiled.benchmarks:
        delta = f"{row['delta']:+.4f}" if row["delta"] is not None else "-"
        two_se = f"{2 * row['se']:.4f}" if row["se"] is not None else "-"
        regressed = {True: "yes", False: "no", None: "-"}[row["regressed"]]
        lines.append(
            f"{row['model']:<18} {row['variant']:<24} {row['task']:<16} {row['accuracy']:>7.4f} {delta:>8} {two_se:>7} {regressed}"
        )
    return "\n".join(lines)


def result_rows(compiled: Compiled) -> list[dict[str, Any]]:
    rows = []
    for r in sorted(compiled.certify, key=lambda r: (r["model"], CERTIFY_KINDS.index(r["kind"]), r["scenario"], r["run"])):
        ci = r.get("ci") or (None, None)
        rows.append(
            {
                **{k: r.get(k) for k in RESULT_COLUMNS if k not in ("ci_lo", "ci_hi", "failed_gates", "reused", "phase0")},
                "phase0": compiled.labels.get(str(r.get("param_id")), "not counted"),
                "ci_lo": ci[0],
                "ci_hi": ci[1],
                "failed_gates": ";".join(r.get("failed_gates") or []),
                "reused": ";".join(r.get("reused") or []),
            }
        )
    return rows


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    if len(xs) < 3:
        return None

    def ranks(values: list[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    if len(set(rx)) < 2 or len(set(ry)) < 2:
        return None
    return statistics.correlation(rx, ry)


def correlation_analysis(compiled: Compiled) -> dict[str, Any]:
    """Per model: InvarLock ratio vs accuracy delta (Spearman) over its edit runs, and its cells of the Phase 0
    confusion matrix (the same outcomes, so the models' cells sum to the block's)."""
    out: dict[str, Any] = {}
    deltas: dict[tuple[str, str], float] = defaultdict(float)
    for row in compiled.benchmarks:
        if row["delta"] is not None:
            deltas[(row["model"], row["variant"])] += row["delta"]
    for model in sorted({r["model"] for r in compiled.certify}):
        pairs = [
            (r["ratio"], deltas[(model, r["scenario"])])
            for r in compiled.certify
            if r["model"] == model
            and r["kind"] in ("clean", "stress")
            and r.get("outcome") in ("passed", "failed")
            and finite(r.get("ratio"))
            and (model, r["scenario"]) in deltas
        ]
        c = compiled.phase0.confusion_of(model)
        out[model] = {
            "pairs": len(pairs),
            "spearman_ratio_vs_accuracy_delta": _spearman([p[0] for p in pairs], [p[1] for p in pairs]),
            "tp": c.tp,
            "fp": c.fp,
            "tn": c.tn,
            "fn": c.fn,
        }
    return out


def calibration_summary(compiled: Compiled) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for model in sorted({r["model"] for r in compiled.certify}):
        runs = [r for r in compiled.certify if r["model"] == model and r["kind"] == "calibration" and finite(r.get("drift"))]
        drifts = [r["drift"] for r in runs]
        out[model] = {
            "runs": len(runs),
            "drift": drifts,
            "drift_mean": statistics.fmean(drifts) if drifts else None,
            "drift_sd": statistics.stdev(drifts) if len(drifts) > 1 else None,
            "ratios": [r.get("ratio") for r in runs],
            "preset": next((r.get("preset") for r in compiled.certify if r["model"] == model and r.get("preset")), None),
        }
    return out


def _header_text(header: Mapping[str, Any]) -> str:
    """The header of final_verdict.txt: one `key: value` line each; lists and mappings one entry per line."""
    lines = []
    for key, value in header.items():
        if key == "campaign":
            continue
        if isinstance(value, Mapping):
            lines += [f"{key}:", *(f"  {k}: {v}" for k, v in value.items())] if value else []
        elif isinstance(value, list):
            lines += [f"{key}:", *(f"  {v}" for v in value)] if value else []
        else:
            lines.append(f"{key}: {value}")
    return "\n".join(lines)


def write_reports(compiled: Compiled, run_dir: Path, *, header: Mapping[str, Any]) -> list[Path]:
    """reports/final_verdict.{json,txt} and the analysis/ files; returns the paths written."""
    reports, analysis = run_dir / "reports", run_dir / "analysis"
    verdict = {
        **header,
        "phase0": compiled.phase0.to_dict(),
        "models": [{**row, **{k: list(row[k]) for k in CERTIFY_KINDS}} for row in compiled.table],
        "pipeline_errors": [r["param_id"] for r in compiled.pipeline_errors],
        "skipped": [r["param_id"] for r in compiled.skipped],
    }
    text = (
        "\n\n".join(
            part
            for part in (
                _header_text(header),
                render_table(compiled),
                render_benchmarks(compiled),
                compiled.phase0.render_text(),
            )
            if part
        )
        + "\n"
    )
    written = {
        reports / "final_verdict.json": verdict,
        analysis / "calibration_summary.json": calibration_summary(compiled),
        analysis / "correlation_analysis.json": correlation_analysis(compiled),
    }
    for path, data in written.items():
        write_json_atomic(path, data)
    texts = {
        reports / "final_verdict.txt": text,
        analysis / "invarlock_results.csv": _csv(result_rows(compiled), RESULT_COLUMNS),
        analysis / "eval_results.csv": _csv(compiled.benchmarks, EVAL_COLUMNS),
    }
    for path, content in texts.items():
        write_text_atomic(path, content)
    return [*written, *texts, *write_summaries(compiled, run_dir)]
