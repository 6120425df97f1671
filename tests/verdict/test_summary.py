"""Compiling item records into the verdict, tables and analysis files (synthetic records, no InvarLock)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from pytest_invarlock.verdict.summary import compile_records, correlation_analysis, regressions, render_table, write_reports


def certify(model, scenario, kind, run=1, *, met=True, flagged=False, detected=False, ratio=1.0, degraded=False,
            expectation=None, outcome=None):
    expectation = expectation or {"calibration": "pass", "clean": "pass", "stress": "fail", "error": "detect"}[kind]
    return {"param_id": f"{model}-{scenario}-run{run}", "model": model, "scenario": scenario, "variant": scenario,
            "kind": kind, "run": run, "expectation": expectation, "outcome": outcome or ("passed" if met else "failed"),
            "met": met, "flagged": flagged, "detected": detected, "ratio": ratio, "ci": None if ratio is None else [ratio - 0.01, ratio + 0.01],
            "drift": 1.0, "degraded": degraded, "flags": {"primary_metric_acceptable": not flagged}, "reused": []}


def bench(model, variant, task, accuracy, n=400):
    return {"param_id": f"{model}-{variant}-{task}", "model": model, "variant": variant, "scenario": None,
            "kind": "benchmark", "benchmark": task, "run": 1, "outcome": "passed", "accuracy": accuracy,
            "stderr": 0.02, "n": n, "finite_logits": True}


def campaign(with_benchmarks: bool):
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "clean8", "clean", 2, ratio=1.001),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "info8", "stress", 1, expectation="signal", ratio=1.01),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
        certify("m", "zero", "error", 1, met=False),
    ]
    if with_benchmarks:
        records += [bench("m", "baseline", "t", 0.60), bench("m", "clean8", "t", 0.60), bench("m", "stress4", "t", 0.40),
                    bench("m", "info8", "t", 0.59)]
    return records


def test_expectation_is_the_truth_without_benchmarks() -> None:
    compiled = compile_records(campaign(False))
    p0 = compiled.phase0
    assert p0.truth_source == "scenario expectation"
    c = p0.confusion
    assert (c.tp, c.fp, c.tn, c.fn) == (1, 0, 2, 0)  # informational excluded; runs counted
    assert (p0.error_detected, p0.error_total) == (1, 2)
    assert p0.status == "PHASE0_FAILED"  # detection 50% < 80%
    assert compiled.table[0]["calibration"] == (1, 1) and compiled.table[0]["error"] == (1, 2)


def test_lm_eval_regressions_become_the_truth() -> None:
    compiled = compile_records(campaign(True))
    assert compiled.phase0.truth_source == "lm-eval regression"
    assert compiled.regressions == {("m", "clean8"): False, ("m", "stress4"): True, ("m", "info8"): False}
    stress = next(r for r in compiled.benchmarks if r["variant"] == "stress4")
    assert stress["regressed"] is True and abs(stress["delta"] + 0.2) < 1e-12
    # SE uses the task's own size: sqrt(0.6*0.4/400) = 0.02449, so -0.01 is not a regression.
    info = next(r for r in compiled.benchmarks if r["variant"] == "info8")
    assert info["regressed"] is False and abs(info["se"] - 0.024495) < 1e-5


def test_non_finite_benchmark_logits_count_as_regression() -> None:
    rows = [{"model": "m", "variant": "baseline", "task": "t", "accuracy": 0.5, "n": 100},
            {"model": "m", "variant": "e", "task": "t", "accuracy": 0.5, "n": 100, "finite_logits": False}]
    assert regressions(rows) == {("m", "e"): True}


def test_reports_are_written_and_consistent(tmp_path: Path) -> None:
    compiled = compile_records(campaign(True))
    paths = write_reports(compiled, tmp_path, header={"suite": "x"})
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert names == {"reports/final_verdict.json", "reports/final_verdict.txt", "analysis/invarlock_results.csv",
                     "analysis/eval_results.csv", "analysis/calibration_summary.json", "analysis/correlation_analysis.json"}
    verdict = json.loads((tmp_path / "reports/final_verdict.json").read_text())
    assert verdict["phase0"]["status"] == compiled.phase0.status
    assert compiled.phase0.status in (tmp_path / "reports/final_verdict.txt").read_text()
    rows = list(csv.DictReader((tmp_path / "analysis/invarlock_results.csv").open()))
    assert len(rows) == 7 and {r["kind"] for r in rows} == {"calibration", "clean", "stress", "error"}
    evals = list(csv.DictReader((tmp_path / "analysis/eval_results.csv").open()))
    assert len(evals) == 4
    corr = correlation_analysis(compiled)["m"]
    assert (corr["tp"], corr["fp"], corr["tn"], corr["fn"]) == (1, 0, 3, 0)
    assert "calibration" in render_table(compiled)
