"""The earlier harnesses' analysis summaries, from the compiled records: what their users look for.

B200 result compiler (analysis/): `guard_sensitivity_matrix.csv` (per scenario, how often each guard's
gate held), `policy_digest_summary.json` (per model, which threshold sets judged its certificates) and
`determinism_summary.json` (determinism levels InvarLock recorded). Evidence-pack verdict sidecars
(reports/): `category_summary.json`, `guard_signal_summary.json`, `guard_intervention_summary.json` and
`scenario_signal_summary.json` (per scenario: reports, gate flips, signals, and the minimum signal
fraction that informational scenarios are judged by). Pure and torch-free, like `verdict.render`.

Copies count once (`compile.dedupe`); an item without a report (InvarLock aborted, or the pipeline
broke) is counted as such rather than dropped. The confusion matrix stays `phase0`'s own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.store import write_json_atomic, write_text_atomic
from pytest_invarlock.verdict.compile import CERTIFY_KINDS, Compiled, dedupe, has_verdict
from pytest_invarlock.verdict.csv_text import csv_text

SENSITIVITY_GATES = (
    "spectral_stable",
    "rmt_stable",
    "invariants_pass",
    "primary_metric_acceptable",
    "preview_final_drift_acceptable",
)
SENSITIVITY_COLUMNS = ("edit_type", "kind", "runs", "without_report", *(f"{gate}_pass_rate" for gate in SENSITIVITY_GATES))
CORE_GUARDS = ("invariants", "spectral", "rmt", "variance", "primary_metric")
INTERVENTIONS = ("spectral_caps", "ve_signal")
CATEGORIES = {"calibration": "calibration", "clean": "clean", "stress": "stress", "error": "error_injection"}
STRICTNESS = {"pass": "must_pass", "fail": "must_fail", "detect": "must_detect", "signal": "informational"}
DETERMINISM_LEVELS = ("strict", "tolerance", "off", "unknown")


def evidence(compiled: Compiled) -> list[dict[str, Any]]:
    """Certify records with a verdict, copies merged (one per piece of evidence)."""
    return dedupe(r for r in compiled.certify if has_verdict(r))[0]


def errored(compiled: Compiled) -> list[Mapping[str, Any]]:
    """Certify items whose pipeline produced no verdict (crash, timeout, load failure)."""
    return [r for r in compiled.pipeline_errors if r.get("kind") in CERTIFY_KINDS]


def _has_report(record: Mapping[str, Any]) -> bool:
    return not record.get("failure") and bool(record.get("flags"))


def guard_flags(record: Mapping[str, Any]) -> dict[str, bool]:
    """Which guard signalled on one certificate (the evidence-pack harness's vocabulary)."""
    flags = record.get("flags") or {}
    probe = record.get("probe") or {}
    return {
        "invariants": flags.get("invariants_pass") is False,
        "spectral": flags.get("spectral_stable") is False,
        "rmt": flags.get("rmt_stable") is False or (probe.get("measured") is True and probe.get("stable") is False),
        "variance": bool(probe.get("signal")) or int(probe.get("proposed_scales") or 0) > 0,
        "primary_metric": flags.get("primary_metric_acceptable") is False
        or bool(record.get("degraded"))
        or bool(record.get("invalid")),
    }


def interventions(record: Mapping[str, Any]) -> dict[str, bool]:
    """Remediations that need not flip a gate: spectral caps applied, variance equalisation proposing scales."""
    return {"spectral_caps": int(record.get("caps_applied") or 0) > 0, "ve_signal": guard_flags(record)["variance"]}


def _rate(values: list[bool]) -> float | None:
    return sum(values) / len(values) if values else None


def guard_sensitivity_rows(compiled: Compiled) -> list[dict[str, Any]]:
    """Per scenario (edit_type): runs, runs without a report, and the share of runs in which each gate held."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in [*evidence(compiled), *errored(compiled)]:
        groups.setdefault((str(record.get("scenario")), str(record.get("kind"))), []).append(record)
    rows = []
    for (scenario, kind), records in sorted(groups.items(), key=lambda g: (CERTIFY_KINDS.index(g[0][1]), g[0][0])):
        row: dict[str, Any] = {
            "edit_type": scenario,
            "kind": kind,
            "runs": len(records),
            "without_report": sum(not _has_report(r) for r in records),
        }
        for gate in SENSITIVITY_GATES:
            held = [bool(r["flags"][gate]) for r in records if _has_report(r) and gate in r["flags"]]
            row[f"{gate}_pass_rate"] = _rate(held)
        rows.append(row)
    return rows


def policy_digest_summary(compiled: Compiled) -> dict[str, Any]:
    """Per model: the distinct threshold sets (policy_digest.thresholds_hash) its certificates were judged by."""
    out: dict[str, Any] = {}
    for record in evidence(compiled):
        entry = out.setdefault(
            str(record["model"]),
            {"unique_thresholds_hashes": set(), "policy_changed_true": 0, "total_certs": 0, "without_digest": 0},
        )
        entry["total_certs"] += 1
        digest = record.get("policy_thresholds_hash")
        if digest:
            entry["unique_thresholds_hashes"].add(str(digest))
        else:
            entry["without_digest"] += 1
        entry["policy_changed_true"] += record.get("policy_changed") is True
    for entry in out.values():
        entry["unique_thresholds_hashes"] = sorted(entry["unique_thresholds_hashes"])
        entry["unique_hash_count"] = len(entry["unique_thresholds_hashes"])
    return dict(sorted(out.items()))


def determinism_summary(compiled: Compiled) -> dict[str, Any]:
    """Determinism levels InvarLock recorded (meta.determinism.level), per model and overall."""
    by_model: dict[str, Counter[str]] = {}
    for record in evidence(compiled):
        level = str(record.get("determinism_level") or "unknown").lower()
        by_model.setdefault(str(record["model"]), Counter())[level if level in DETERMINISM_LEVELS else "unknown"] += 1
    overall: Counter[str] = sum(by_model.values(), Counter())
    return {
        "by_model": {model: {level: counts[level] for level in DETERMINISM_LEVELS} for model, counts in sorted(by_model.items())},
        "overall": {level: overall[level] for level in DETERMINISM_LEVELS},
    }


def _signal_counts(records: Iterable[Mapping[str, Any]], flags_of: Any, names: tuple[str, ...]) -> dict[str, Any]:
    records = list(records)
    signals = {}
    for name in names:
        hits = [flags_of(r) for r in records if flags_of(r)[name]]
        signals[name] = {"flagged": len(hits), "unique": sum(sum(flags.values()) == 1 for flags in hits)}
    return {"records_total": len(records), "signals": signals}


def guard_signal_summary(compiled: Compiled) -> dict[str, Any]:
    """Per guard: certificates it flagged, and those it alone flagged (edits and error injections)."""
    records = [r for r in evidence(compiled) if r.get("kind") != "calibration"]
    return _signal_counts(records, guard_flags, CORE_GUARDS)


def guard_intervention_summary(compiled: Compiled) -> dict[str, Any]:
    """Per remediation (spectral caps, VE scales): certificates that showed it, and those that showed only it."""
    records = [r for r in evidence(compiled) if r.get("kind") != "calibration"]
    return _signal_counts(records, interventions, INTERVENTIONS)


def category_summary(compiled: Compiled) -> dict[str, Any]:
    """Per category: scenarios, reports, items without a verdict, gate flips, and items that met their expectation."""
    records, broken = evidence(compiled), errored(compiled)
    out = {}
    for kind, category in CATEGORIES.items():
        mine = [r for r in records if r.get("kind") == kind]
        flags = [guard_flags(r) for r in mine]
        out[category] = {
            "scenarios": len({r.get("scenario") for r in [*mine, *(b for b in broken if b.get("kind") == kind)]}),
            "reports": sum(_has_report(r) for r in mine),
            "without_report": sum(not _has_report(r) for r in mine),
            "errored": sum(b.get("kind") == kind for b in broken),
            "primary_metric_fail": sum(f["primary_metric"] for f in flags),
            "invariants_fail": sum(f["invariants"] for f in flags),
            "any_flag": sum(bool(r.get("flagged")) or any(f.values()) for r, f in zip(mine, flags, strict=True)),
            "met": sum(bool(r.get("met")) for r in mine),
        }
    return out


def scenario_signal_summary(compiled: Compiled) -> list[dict[str, Any]]:
    """Per model and scenario: strictness, runs, InvarLock passes, signals and whether the expectation held;
    informational scenarios carry their signal fraction and the minimum they are judged by (phase0's)."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for record in [*evidence(compiled), *errored(compiled)]:
        groups.setdefault((str(record["model"]), str(record.get("scenario"))), []).append(record)
    informational = compiled.phase0.signal_by_scenario
    rows = []
    order = {kind: i for i, kind in enumerate(CERTIFY_KINDS)}
    for (model, scenario), records in sorted(
        groups.items(), key=lambda g: (g[0][0], order.get(str(g[1][0].get("kind")), 9), g[0][1])
    ):
        first = records[0]
        judged = [r for r in records if has_verdict(r)]
        row: dict[str, Any] = {
            "model": model,
            "id": scenario,
            "category": CATEGORIES.get(str(first.get("kind")), str(first.get("kind"))),
            "strictness": STRICTNESS.get(str(first.get("expectation")), str(first.get("expectation"))),
            "runs": len(records),
            "errored": len(records) - len(judged),
            "passed": sum(bool(r.get("overall_pass")) for r in judged),
            "flagged": sum(bool(r.get("flagged")) for r in judged),
            "signaled": sum(bool(r.get("signal")) for r in judged),
            "probe_signaled": sum(bool(r.get("probe_signal")) for r in judged),
            "met": sum(bool(r.get("met")) for r in judged),
        }
        shown = informational.get(f"{model}/{scenario}")
        if shown is not None:
            row.update(
                signal_fraction=shown["fraction"],
                min_signal_fraction=compiled.phase0.min_signal_fraction,
                signal_met=shown["met"],
            )
        rows.append(row)
    return rows


def write_summaries(compiled: Compiled, run_dir: Path) -> list[Path]:
    """Write every summary above; returns the paths."""
    analysis, reports = run_dir / "analysis", run_dir / "reports"
    documents: dict[Path, Any] = {
        analysis / "policy_digest_summary.json": policy_digest_summary(compiled),
        analysis / "determinism_summary.json": determinism_summary(compiled),
        reports / "category_summary.json": category_summary(compiled),
        reports / "guard_signal_summary.json": guard_signal_summary(compiled),
        reports / "guard_intervention_summary.json": guard_intervention_summary(compiled),
        reports / "scenario_signal_summary.json": scenario_signal_summary(compiled),
    }
    for path, data in documents.items():
        write_json_atomic(path, data)
    matrix = analysis / "guard_sensitivity_matrix.csv"
    write_text_atomic(matrix, csv_text(guard_sensitivity_rows(compiled), SENSITIVITY_COLUMNS))
    return [*documents, matrix]
