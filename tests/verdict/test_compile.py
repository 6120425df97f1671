"""Compiling item records into the verdict (synthetic records, no InvarLock): accounting, coverage, duplicates,
per-edit truth, errored and skipped items, benchmark rows, and the report files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.verdict.compile import (
    KEY_FALLBACK,
    KEY_WINDOWS,
    campaign_options,
    compile_records,
    dedupe,
    duplicate_key,
    lm_eval_truth,
)
from pytest_invarlock.verdict.render import correlation_analysis, render_table, write_reports
from pytest_invarlock.verdict.summaries import write_summaries


def certify(
    model,
    scenario,
    kind,
    run=1,
    *,
    met=True,
    flagged=False,
    detected=False,
    ratio=1.0,
    degraded=False,
    expectation=None,
    outcome=None,
    drift=1.0,
    **extra,
):
    expectation = expectation or {"calibration": "pass", "clean": "pass", "stress": "fail", "error": "detect"}[kind]
    return {
        "param_id": f"{model}-{scenario}-run{run}",
        "model": model,
        "scenario": scenario,
        "variant": "baseline" if kind == "calibration" else scenario,
        "kind": kind,
        "run": run,
        "expectation": expectation,
        "outcome": outcome or ("passed" if met else "failed"),
        "met": met,
        "flagged": flagged,
        "detected": detected,
        "signal": flagged,
        "ratio": ratio,
        "ci": None if ratio is None else [ratio - 0.01, ratio + 0.01],
        "drift": drift,
        "degraded": degraded,
        "flags": {"primary_metric_acceptable": not flagged},
        "reused": [],
        **extra,
    }


def errored(model, scenario, kind, run=1, reason="PipelineError: evaluate crashed"):
    return {
        "param_id": f"{model}-{scenario}-run{run}",
        "model": model,
        "scenario": scenario,
        "variant": scenario,
        "kind": kind,
        "run": run,
        "expectation": "pass",
        "outcome": "error",
        "error": reason,
    }


def bench(model, variant, task, accuracy, n=400, **extra):
    return {
        "param_id": f"{model}-{variant}-{task}",
        "model": model,
        "variant": variant,
        "scenario": None,
        "kind": "benchmark",
        "benchmark": task,
        "run": 1,
        "outcome": "passed",
        "met": True,
        "accuracy": accuracy,
        "stderr": 0.02,
        "n": n,
        "finite_logits": True,
        **extra,
    }


def campaign(with_benchmarks: bool):
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "clean8", "clean", 2, ratio=1.002),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "info8", "stress", 1, expectation="signal", ratio=1.01),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
        certify("m", "zero", "error", 1, met=False, ratio=1.1),
    ]
    if with_benchmarks:
        records += [
            bench("m", "baseline", "t", 0.60),
            bench("m", "clean8", "t", 0.60),
            bench("m", "stress4", "t", 0.40),
            bench("m", "info8", "t", 0.59),
        ]
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


def test_lm_eval_regressions_are_the_truth_where_an_edit_has_scores() -> None:
    compiled = compile_records(campaign(True))
    assert compiled.phase0.truth_source == "lm-eval regression"
    assert compiled.regressions == {("m", "clean8"): False, ("m", "stress4"): True, ("m", "info8"): False}
    stress = next(r for r in compiled.benchmarks if r["variant"] == "stress4")
    assert stress["regressed"] is True and abs(stress["delta"] + 0.2) < 1e-12
    info = next(r for r in compiled.benchmarks if r["variant"] == "info8")
    assert info["regressed"] is False and abs(info["se"] - 0.024495) < 1e-5


def test_an_edit_without_scores_falls_back_to_its_expectation() -> None:
    # Only clean8 has scores: the stress edit's truth is unknown (its task was not run) and it keeps its
    # expectation instead of being excluded (old rule).
    records = [*campaign(False), bench("m", "baseline", "t", 0.60), bench("m", "clean8", "t", 0.60)]
    p0 = compile_records(records).phase0
    assert p0.truth_counts == {
        "regression": {"runs": 2, "edits": 1},
        "expectation": {"runs": 0, "edits": 0},
        "unknown": {"runs": 1, "edits": 1},
    }
    assert (p0.confusion.tp, p0.confusion.tn, p0.confusion.excluded) == (1, 2, 0)
    assert p0.truth_unknown == {"m/stress4": "t on stress4: not run"}


def test_non_finite_benchmark_logits_count_as_regression() -> None:
    rows = [
        {"model": "m", "variant": "baseline", "task": "t", "accuracy": 0.5, "n": 100},
        {"model": "m", "variant": "e", "task": "t", "accuracy": 0.5, "n": 100, "finite_logits": False},
    ]
    assert lm_eval_truth(rows)[("m", "e")].regressed is True


def test_a_failed_non_finite_benchmark_item_still_gives_its_score() -> None:
    # The benchmark item fails on non-finite logits now; its row must still mark the edit as regressed.
    records = [
        bench("m", "baseline", "t", 0.6),
        bench("m", "stress4", "t", 0.6, outcome="failed", met=False, finite_logits=False),
    ]
    assert compile_records(records).regressions == {("m", "stress4"): True}


def test_copies_with_the_same_weights_and_windows_are_counted_once() -> None:
    # Issue 12: run 1 and run 2 of each clean scenario evaluated the same windows, giving bit-identical
    # ratios; Phase 0 counted TN 8 from 4 distinct edits. Merged, it reads TN 4.
    records = []
    for scenario in ("a", "b", "c", "d"):
        for run in (1, 2):
            records.append(
                certify("m", scenario, "clean", run, ratio=1.0001902008411632, window_digest="w0", weights=f"e-{scenario}")
            )
    records.append(certify("m", "s", "stress", 1, flagged=True, ratio=1.5, window_digest="w0", weights="e-s"))
    compiled = compile_records(records)
    assert compiled.phase0.confusion.tn == 4
    accounting = compiled.phase0.accounting
    assert accounting is not None and len(accounting.merged) == 4 and accounting.merge_key == KEY_WINDOWS
    assert ("m-a-run2", "m-a-run1") in accounting.merged
    assert "4 merged (key: model, scenario, weights, window digest)" in compiled.phase0.render_text()


def test_runs_with_their_own_windows_are_all_counted() -> None:
    records = [certify("m", "a", "clean", run, ratio=1.0, window_digest=f"w{run}", weights="e-a") for run in (1, 2, 3)]
    assert compile_records(records).phase0.confusion.tn == 3


def test_records_without_window_digest_fall_back_to_ratio_and_drift_bits() -> None:
    # Calibration runs on different shards all have ratio 1.0 but different drift: not copies.
    records = [certify("m", "calibration", "calibration", run, drift=1.0 + run / 100) for run in (1, 2, 3)]
    records += [certify("m", "a", "clean", run, ratio=1.0169608761014453, drift=1.01) for run in (1, 2)]
    kept, merged, key = dedupe(records)
    assert merged == [("m-a-run2", "m-a-run1")]
    assert key.startswith(KEY_FALLBACK) and "without a window digest" in key
    assert len(kept) == 4


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from("ab"), st.integers(1, 4), st.sampled_from(["w1", "w2", None])),
        max_size=12,
        unique_by=lambda t: (t[0], t[1]),
    )
)
def test_dedupe_keeps_one_record_per_key_and_loses_nothing_else(runs) -> None:
    records = [certify("m", s, "clean", r, ratio=1.0 + r / 10, window_digest=w) for s, r, w in runs]
    kept, merged, _ = dedupe(records)
    assert len(kept) + len(merged) == len(records)
    keys = [(r["scenario"], r["window_digest"]) for r in kept if r["window_digest"]]
    assert len(keys) == len(set(keys))


def test_every_suite_item_is_accounted_for() -> None:
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        errored("m", "clean8", "clean", 2),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
        errored("m", "zero", "error", 1, reason="Timeout >600s"),
        {
            "param_id": "m-svd-run1",
            "model": "m",
            "scenario": "svd",
            "kind": "stress",
            "run": 1,
            "outcome": "skipped",
            "reason": "needs a GPU",
        },
        # a call that failed without recording anything (e.g. a timeout inside the call)
        {
            "param_id": "m-inf-run1",
            "model": "m",
            "scenario": "inf",
            "kind": "error",
            "run": 1,
            "outcome": "failed",
            "message": "Failed: Timeout",
        },
    ]
    items = [r["param_id"] for r in records] + ["m-never-run1"]
    compiled = compile_records(records, items=items)
    p0 = compiled.phase0
    acc = p0.accounting
    assert acc is not None
    assert (acc.suite_items, acc.with_verdict, len(acc.errored), len(acc.skipped), acc.not_run) == (9, 4, 3, 1, ("m-never-run1",))
    # the errored clean run is an FP; the errored error injections are not detected
    assert (p0.confusion.tp, p0.confusion.fp, p0.confusion.tn) == (1, 1, 1)
    assert (p0.error_detected, p0.error_total) == (1, 3)
    text = p0.render_text()
    assert "m-zero-run1: Timeout >600s" in text and "m-svd-run1: needs a GPU" in text and "m-never-run1" in text


def test_the_verdict_does_not_depend_on_the_order_of_items_or_records() -> None:
    """Shards merged by `report` list items and records in another order than one process: same block."""
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        errored("m", "zero", "error", 1, reason="Timeout >600s"),
    ]
    items = [r["param_id"] for r in records] + ["m-b-run1", "m-a-run1"]
    one = compile_records(records, items=items).phase0.to_dict()
    other = compile_records(records[::-1], items=items[::-1]).phase0.to_dict()
    assert one == other and one["accounting"]["not_run"] == ["m-a-run1", "m-b-run1"]


def test_invalid_primary_metric_is_flagged() -> None:
    # The reference's stricter overall pass: invalid counts as flagged even where overall_pass held.
    records = [certify("m", "a", "clean", 1, ratio=1.0, invalid=True), certify("m", "b", "clean", 1, ratio=1.01)]
    c = compile_records(records).phase0.confusion
    assert (c.fp, c.tn) == (1, 1)


def test_calibration_false_alarms_are_counted_with_their_gate() -> None:
    records = [
        certify("m", "calibration", "calibration", 1, drift=1.01),
        certify(
            "m",
            "calibration",
            "calibration",
            2,
            met=False,
            flagged=True,
            drift=1.06,
            failed_gates=["preview_final_drift_acceptable"],
        ),
        errored("m", "calibration", "calibration", 3),
    ]
    p0 = compile_records(records).phase0
    assert (p0.noop_false_alarms, p0.noop_total) == (2, 3)
    assert p0.noop_gates == {"pipeline error": 1, "preview_final_drift_acceptable": 1}


def test_min_signal_fraction_comes_from_the_caller() -> None:
    records = [
        certify("m", "info", "stress", 1, expectation="signal", flagged=False),
        certify("m", "info", "stress", 2, expectation="signal", flagged=True, ratio=1.2),
    ]
    assert compile_records(records, min_signal_fraction=0.5).phase0.informational_met is True
    assert compile_records(records, min_signal_fraction=0.75).phase0.informational_met is False


def test_reports_are_written_and_consistent(tmp_path: Path) -> None:
    compiled = compile_records(campaign(True))
    paths = write_reports(compiled, tmp_path, header={"suite": "x"})
    names = {p.relative_to(tmp_path).as_posix() for p in paths}
    assert names - {p.relative_to(tmp_path).as_posix() for p in write_summaries(compiled, tmp_path)} == {
        "reports/final_verdict.json",
        "reports/final_verdict.txt",
        "analysis/invarlock_results.csv",
        "analysis/eval_results.csv",
        "analysis/calibration_summary.json",
        "analysis/correlation_analysis.json",
    }
    verdict = json.loads((tmp_path / "reports/final_verdict.json").read_text())
    assert verdict["phase0"] == json.loads(json.dumps(compiled.phase0.to_dict()))
    assert compiled.phase0.status in (tmp_path / "reports/final_verdict.txt").read_text()
    rows = list(csv.DictReader((tmp_path / "analysis/invarlock_results.csv").open()))
    assert len(rows) == 7 and {r["kind"] for r in rows} == {"calibration", "clean", "stress", "error"}
    evals = list(csv.DictReader((tmp_path / "analysis/eval_results.csv").open()))
    assert len(evals) == 4
    corr = correlation_analysis(compiled)["m"]
    assert (corr["tp"], corr["fp"], corr["tn"], corr["fn"]) == (1, 0, 2, 0)  # the informational edit is no TN
    assert "calibration" in render_table(compiled)


def test_the_block_does_not_depend_on_record_order() -> None:
    records = campaign(True)
    assert compile_records(records).phase0.to_dict() == compile_records(list(reversed(records))).phase0.to_dict()


# ---------------------------------------------------------------- issue 19


def test_one_errored_task_makes_an_edits_lm_eval_truth_unknown_instead_of_flipping_it() -> None:
    # Two tasks configured. The clean edit's second task errored; on the first alone it drops 0.2: citizen's code
    # judged it on that one task, called it a regression and turned an unflagged clean edit into a miss (FN).
    records = [
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        bench("m", "baseline", "t1", 0.6),
        bench("m", "baseline", "t2", 0.6),
        bench("m", "clean8", "t1", 0.4),
        {**bench("m", "clean8", "t2", None), "outcome": "error", "error": "lm-eval crashed"},
        bench("m", "stress4", "t1", 0.3),
        bench("m", "stress4", "t2", 0.3),
    ]
    compiled = compile_records(records)
    assert compiled.regressions == {("m", "clean8"): None, ("m", "stress4"): True}
    p0 = compiled.phase0
    assert (p0.confusion.tp, p0.confusion.fn, p0.confusion.tn) == (1, 0, 1)  # clean8 by its expectation: TN
    assert p0.truth_counts["unknown"] == {"runs": 1, "edits": 1}
    assert p0.truth_unknown == {"m/clean8": "t2 on clean8: errored (lm-eval crashed)"}
    text = p0.render_text()
    assert "truth unknown   1 edit judged by their expectation (lm-eval incomplete):" in text
    assert "m/clean8: t2 on clean8: errored (lm-eval crashed)" in text
    # every configured task scored for both sides: the truth is lm-eval's again
    records[5] = bench("m", "clean8", "t2", 0.6)
    assert compile_records(records).regressions[("m", "clean8")] is True


def test_the_confusion_matrix_is_counted_once_and_rendered_everywhere(tmp_path: Path) -> None:
    # Two copies of one clean edit, an informational edit, a clean edit whose primary metric is invalid, and
    # lm-eval scores for all: citizen's correlation_analysis.json read TN 4 / FP 0 where Phase 0 read TN 1 / FP 1.
    records = [
        certify("m", "a", "clean", 1, ratio=1.0004, window_digest="w", weights="e-a"),
        certify("m", "a", "clean", 2, ratio=1.0004, window_digest="w", weights="e-a"),
        certify("m", "info", "stress", 1, expectation="signal", ratio=1.01),
        certify("m", "b", "clean", 1, ratio=1.002, invalid=True),
        bench("m", "baseline", "t", 0.6),
        bench("m", "a", "t", 0.6),
        bench("m", "info", "t", 0.6),
        bench("m", "b", "t", 0.6),
    ]
    compiled = compile_records(records)
    c = compiled.phase0.confusion
    assert (c.tp, c.fp, c.tn, c.fn) == (0, 1, 1, 0)
    corr = correlation_analysis(compiled)["m"]
    assert (corr["tp"], corr["fp"], corr["tn"], corr["fn"]) == (0, 1, 1, 0)
    write_reports(compiled, tmp_path, header={"suite": "x"})
    rows = {r["param_id"]: r["phase0"] for r in csv.DictReader((tmp_path / "analysis/invarlock_results.csv").open())}
    assert rows == {
        "m-a-run1": "TN",
        "m-a-run2": "merged into m-a-run1",
        "m-info-run1": "informational: no signal",
        "m-b-run1": "FP",
    }


def test_scenarios_with_identical_weights_and_windows_are_never_merged() -> None:
    # A gating and an informational scenario of the same edit spec: same weights, same windows, different expectations.
    gating = certify("m", "rtn4_gating", "stress", 1, flagged=True, ratio=1.3, window_digest="w", weights="e-same")
    info = certify(
        "m", "rtn4_info", "stress", 1, expectation="signal", flagged=True, ratio=1.3, window_digest="w", weights="e-same"
    )
    assert duplicate_key(gating) != duplicate_key(info)
    kept, merged, _ = dedupe([gating, info])
    assert merged == [] and len(kept) == 2
    p0 = compile_records([gating, info]).phase0
    assert (p0.confusion.tp, p0.informational_total) == (1, 1)


def test_a_degraded_informational_edit_does_not_make_the_campaign_degraded() -> None:
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "info", "stress", 1, expectation="signal", flagged=True, degraded=True, ratio=40.0),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
    ]
    p0 = compile_records(records).phase0
    assert (p0.degraded_count, p0.degraded_informational) == (0, 1)
    assert p0.status == "PHASE0_VALIDATED"
    assert "degraded runs   0 (+1 informational, not counted)" in p0.render_text()
    records[1]["degraded"] = True  # a degraded clean edit still is
    assert compile_records(records).phase0.status == "PHASE0_DEGRADED"


def test_the_informational_rule_is_a_criterion_of_the_status_and_cannot_fail_while_items_are_missing() -> None:
    # The tiny suite on this machine: neither informational scenario shows a signal (0/2 below the 50% minimum).
    records = [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "rtn4", "stress", 1, expectation="signal", ratio=1.0099),
        certify("m", "fp4", "stress", 1, expectation="signal", ratio=1.0853),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
    ]
    p0 = compile_records(records, items=[r["param_id"] for r in records]).phase0
    assert p0.informational_met is False and p0.status == "PHASE0_FAILED"
    assert "signal 0/2 (0.0%); minimum 50.0% per scenario: NOT met" in p0.render_text()
    assert [c.name for c in p0.criteria] == [
        "accuracy",
        "error detection",
        "informational scenarios at the minimum signal fraction",
    ]
    # A second run of one scenario not measured yet could still lift it: not FAILED for certain, INCOMPLETE.
    missing = compile_records(records, items=[*(r["param_id"] for r in records), "m-rtn4-run2"]).phase0
    assert missing.status == "PHASE0_INCOMPLETE"
    # With a signal in every informational scenario the rule is met and the campaign VALIDATED.
    signalled = [{**r, "signal": True} if r.get("expectation") == "signal" else r for r in records]
    assert compile_records(signalled, items=[r["param_id"] for r in records]).phase0.status == "PHASE0_VALIDATED"
    # Without informational scenarios the rule is not a criterion at all.
    gating = [r for r in records if r.get("expectation") != "signal"]
    assert [c.name for c in compile_records(gating, items=[r["param_id"] for r in gating]).phase0.criteria] == [
        "accuracy",
        "error detection",
    ]


def test_campaign_options_take_exactly_the_verdict_inputs() -> None:
    campaign = {"items": {"a": "k1", "b": "k2"}, "min_signal_fraction": 0.25, "options": {"x": 1}, "revisions": {}}
    assert campaign_options(campaign) == {"items": ["a", "b"], "min_signal_fraction": 0.25}
