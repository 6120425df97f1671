"""Phase 0 verdict math against hand-computed cases and its invariants (hypothesis)."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.verdict.phase0 import (
    BENCHMARK_SIZES,
    Accounting,
    Confusion,
    EditOutcome,
    ErrorOutcome,
    NoopOutcome,
    benchmark_size,
    confidence_level,
    confidence_score,
    confusion,
    is_regression,
    phase0_verdict,
    regressed_tasks,
    regression_se,
    wilson_interval,
)


def edit(
    flagged: bool,
    expected: bool,
    regressed: bool | None = None,
    *,
    degraded: bool = False,
    informational: bool = False,
    run: int = 0,
) -> EditOutcome:
    return EditOutcome(
        model="tiny",
        scenario="stress" if expected else "clean",
        run=run,
        flagged=flagged,
        regressed=regressed,
        expected_regression=expected,
        degraded=degraded,
        informational=informational,
        signal=flagged,
    )


def cells(tp: int = 0, fp: int = 0, tn: int = 0, fn: int = 0) -> list[EditOutcome]:
    """Edits judged by expectation that land tp/fp/tn/fn times in each cell."""
    spec = [(True, True)] * tp + [(True, False)] * fp + [(False, False)] * tn + [(False, True)] * fn
    return [edit(flagged, expected, run=i) for i, (flagged, expected) in enumerate(spec)]


def errors(detected: int, total: int, *, degraded: bool = False) -> list[ErrorOutcome]:
    return [ErrorOutcome(model="tiny", scenario="nan", run=i, detected=i < detected, degraded=degraded) for i in range(total)]


# ---------------------------------------------------------------- Wilson


def test_wilson_eight_of_ten_by_hand() -> None:
    # p = 0.8, z^2 = 3.8416, z^2/n = 0.38416, denominator 1.38416,
    # centre = 0.8 + 0.19208 = 0.99208,
    # margin = 1.96 * sqrt((0.16 + 0.09604) / 10) = 1.96 * 0.1600125 = 0.3136245,
    # lower = 0.6784555 / 1.38416 = 0.49016, upper = 1.3057045 / 1.38416 = 0.94332.
    low, high = wilson_interval(8, 10)
    assert low == pytest.approx(0.49016, abs=1e-5)
    assert high == pytest.approx(0.94332, abs=1e-5)


def test_wilson_all_successes_reaches_one() -> None:
    # p = 1: upper = (1 + z^2/2n + z^2/2n) / (1 + z^2/n) = 1 exactly.
    low, high = wilson_interval(64, 64)
    assert high == 1.0
    assert low == pytest.approx(1 / (1 + 1.96**2 / 64), abs=1e-9)  # 0.94337


def test_wilson_empty_sample_is_maximally_uncertain() -> None:
    assert wilson_interval(0, 0) == (0.0, 1.0)


@pytest.mark.parametrize(("successes", "n"), [(-1, 5), (6, 5), (0, -1)])
def test_wilson_rejects_impossible_counts(successes: int, n: int) -> None:
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(successes, n)


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))))
def test_wilson_contains_p_within_unit_interval(case: tuple[int, int]) -> None:
    successes, n = case
    low, high = wilson_interval(successes, n)
    assert 0.0 <= low <= successes / n <= high <= 1.0


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.integers(0, n), st.just(n))), st.integers(2, 50))
def test_wilson_narrows_as_n_grows_at_fixed_p(case: tuple[int, int], factor: int) -> None:
    successes, n = case
    low, high = wilson_interval(successes, n)
    big_low, big_high = wilson_interval(successes * factor, n * factor)
    assert big_high - big_low < high - low


# ---------------------------------------------------------------- lm-eval regression


def test_regression_threshold_on_winogrande_by_hand() -> None:
    # SE = sqrt(0.5 * 0.5 / 1767) = 0.0118947; 2 SE = 0.0237893.
    n = BENCHMARK_SIZES["winogrande"]
    assert regression_se(0.5, n) == pytest.approx(0.0118947, abs=1e-7)
    assert not is_regression(0.5, 0.48, n)  # delta -0.02 is within 2 SE
    assert is_regression(0.5, 0.47, n)  # delta -0.03 is beyond


def test_regression_se_clamps_a_perfect_baseline() -> None:
    # p = 0.999: SE = sqrt(0.999 * 0.001 / 1000) = 0.0009995, so a drop of 0.003 counts.
    assert regression_se(1.0, 1000) == pytest.approx(0.0009995, abs=1e-7)
    assert regression_se(0.0, 1000) == pytest.approx(regression_se(1.0, 1000))
    assert is_regression(1.0, 0.997, 1000)
    assert not is_regression(1.0, 0.999, 1000)


def test_regression_se_rejects_empty_benchmark() -> None:
    with pytest.raises(ValueError, match="positive benchmark size"):
        regression_se(0.5, 0)


def test_benchmark_size_defaults_to_1000() -> None:
    assert benchmark_size("mmlu") == 14042
    assert benchmark_size("kjv_cloze") == 1000


def test_regressed_tasks_judges_shared_tasks_with_their_sizes() -> None:
    # winogrande delta -0.03 < -0.0238 regresses; mmlu 2 SE = 2 * sqrt(0.25 / 14042) = 0.00844,
    # so delta -0.005 does not; tasks only on one side are ignored.
    baseline = {"winogrande": 0.5, "mmlu": 0.5, "only_baseline": 0.9}
    edited = {"winogrande": 0.47, "mmlu": 0.495, "only_edited": 0.0}
    assert regressed_tasks(baseline, edited) == ["winogrande"]


# ---------------------------------------------------------------- confusion


def test_confusion_fills_every_cell() -> None:
    matrix = confusion(cells(tp=3, fp=1, tn=4, fn=2), "expectation")
    assert (matrix.tp, matrix.fp, matrix.tn, matrix.fn) == (3, 1, 4, 2)
    assert matrix.total == 10
    assert matrix.accuracy == pytest.approx(0.7)
    assert matrix.precision == pytest.approx(0.75)
    assert matrix.recall == pytest.approx(0.6)
    assert matrix.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)  # 0.6667


def test_confusion_without_positives_has_zero_rates() -> None:
    matrix = confusion(cells(tn=5), "expectation")
    assert matrix.accuracy == 1.0
    assert (matrix.precision, matrix.recall, matrix.f1) == (0.0, 0.0, 0.0)


def test_confusion_without_predictions_has_zero_precision() -> None:
    matrix = confusion(cells(fn=2, tn=2), "expectation")
    assert (matrix.precision, matrix.recall, matrix.f1) == (0.0, 0.0, 0.0)
    assert matrix.accuracy == 0.5


def test_empty_confusion_is_all_zero() -> None:
    matrix = Confusion(0, 0, 0, 0)
    assert (matrix.accuracy, matrix.precision, matrix.recall, matrix.f1) == (0.0, 0.0, 0.0, 0.0)


def test_confusion_by_regression_excludes_missing_results() -> None:
    outcomes = [edit(True, False, regressed=True), edit(False, True, regressed=None)]
    matrix = confusion(outcomes, "regression")
    assert (matrix.tp, matrix.fp, matrix.tn, matrix.fn, matrix.excluded) == (1, 0, 0, 0, 1)


def test_confusion_rejects_unknown_truth() -> None:
    with pytest.raises(ValueError, match="not a truth source"):
        confusion([], "lm-eval")  # type: ignore[arg-type]


outcome_strategy = st.builds(
    EditOutcome,
    model=st.just("m"),
    scenario=st.sampled_from(["clean", "stress"]),
    run=st.integers(0, 5),
    flagged=st.booleans(),
    regressed=st.none() | st.booleans(),
    expected_regression=st.booleans(),
    degraded=st.booleans(),
    informational=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(outcome_strategy, max_size=30), st.sampled_from(["regression", "expectation"]))
def test_confusion_cells_sum_to_included_outcomes(outcomes: list[EditOutcome], truth: str) -> None:
    matrix = confusion(outcomes, truth)  # type: ignore[arg-type]
    assert matrix.total + matrix.excluded == len(outcomes)
    if truth == "expectation":
        assert matrix.excluded == 0


# ---------------------------------------------------------------- confidence


def test_confidence_score_by_hand() -> None:
    # 10 scored edits at 7/10 correct, 5 error runs, F1 2/3:
    # 25 ln 11 / ln 65 = 14.3608; 25 ln 6 / ln 17 = 15.8103;
    # Wilson 7/10 = (0.39677, 0.89221), 25 (1 - 0.49544) = 12.6140; 25 * 2/3 = 16.6667.
    assert confidence_score(10, 5, 0.89221 - 0.39677, 2 / 3) == pytest.approx(59.4518, abs=1e-3)


def test_confidence_score_saturates_at_100() -> None:
    assert confidence_score(10_000, 10_000, 0.0, 1.0) == 100.0
    assert confidence_score(0, 0, 1.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("score", "level"),
    [
        (100, "HIGH"),
        (85, "HIGH"),
        (84.99, "MEDIUM"),
        (70, "MEDIUM"),
        (69.99, "LOW"),
        (50, "LOW"),
        (49.99, "VERY_LOW"),
        (0, "VERY_LOW"),
    ],
)
def test_confidence_level_boundaries(score: float, level: str) -> None:
    assert confidence_level(score) == level


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10_000),
    st.integers(0, 10_000),
    st.floats(-1.0, 2.0, allow_nan=False),
    st.floats(0.0, 1.0),
)
def test_confidence_score_stays_within_0_100(total: int, error_total: int, width: float, f1: float) -> None:
    assert 0.0 <= confidence_score(total, error_total, width, f1) <= 100.0


# ---------------------------------------------------------------- verdict


def test_validated_high() -> None:
    # 64/64 correct: sample 25, Wilson (0.94337, 1) -> 23.584, F1 25; 16 errors -> 25. Score 98.58.
    verdict = phase0_verdict(cells(tp=32, tn=32), errors(16, 16))
    assert verdict.score == pytest.approx(98.584, abs=1e-3)
    assert (verdict.status, verdict.verdict_confidence, verdict.level) == ("PHASE0_VALIDATED", "HIGH", "HIGH")
    assert verdict.passed


def test_validated_medium_when_accuracy_below_08() -> None:
    # Accuracy 0.7 rules out HIGH; 14.3608 + 25 + 12.6140 + 16.6667 = 68.64 >= 60.
    verdict = phase0_verdict(cells(tp=3, fp=1, tn=4, fn=2), errors(16, 16))
    assert verdict.score == pytest.approx(68.641, abs=1e-3)
    assert (verdict.status, verdict.verdict_confidence) == ("PHASE0_VALIDATED", "MEDIUM")


def test_validated_low_below_score_60() -> None:
    # Same edits with 5/5 errors: 59.45 (see test_confidence_score_by_hand).
    verdict = phase0_verdict(cells(tp=3, fp=1, tn=4, fn=2), errors(5, 5))
    assert (verdict.status, verdict.verdict_confidence) == ("PHASE0_VALIDATED", "LOW")


def test_failed_on_error_detection_below_08() -> None:
    verdict = phase0_verdict(cells(tp=32, tn=32), errors(12, 16))
    assert verdict.error_detection_rate == 0.75
    # The reference names a confidence only for VALIDATED; the old code invented HIGH here.
    assert (verdict.status, verdict.verdict_confidence) == ("PHASE0_FAILED", None)
    assert verdict.status_line == f"PHASE0_FAILED (score {verdict.score:.1f}/100)"


def test_failed_on_accuracy_below_06() -> None:
    verdict = phase0_verdict(cells(tp=1, fp=2, tn=1, fn=1), errors(5, 5))
    assert verdict.accuracy == 0.4
    assert verdict.status == "PHASE0_FAILED"


def test_nothing_run_is_incomplete_without_a_confidence_qualifier() -> None:
    verdict = phase0_verdict([], [])
    assert verdict.score == 0.0
    assert (verdict.status, verdict.verdict_confidence, verdict.level) == ("PHASE0_INCOMPLETE", None, "VERY_LOW")


def test_degraded_edit_overrides_a_passing_run() -> None:
    outcomes = cells(tp=32, tn=32)
    outcomes[0] = edit(True, True, degraded=True)
    verdict = phase0_verdict(outcomes, errors(16, 16))
    assert verdict.degraded_count == 1
    assert not verdict.passed
    assert (verdict.status, verdict.verdict_confidence) == ("PHASE0_DEGRADED", None)


def test_degraded_calibration_counts_but_degraded_error_does_not() -> None:
    assert phase0_verdict(cells(tp=32, tn=32), errors(16, 16), degraded_other=1).status == "PHASE0_DEGRADED"
    verdict = phase0_verdict(cells(tp=32, tn=32), errors(16, 16, degraded=True))
    assert verdict.status == "PHASE0_VALIDATED"


def test_negative_degraded_other_is_rejected() -> None:
    with pytest.raises(ValueError, match="degraded_other"):
        phase0_verdict([], [], degraded_other=-1)


def test_truth_is_chosen_per_edit() -> None:
    # A flagged clean edit that lm-eval says regressed is a TP; an unscored stress edit that was not
    # flagged is judged by its expectation (FN), not dropped. The old code let the one lm-eval result
    # switch the whole campaign to regression truth and excluded the unscored edit.
    disputed = edit(True, False, regressed=True)
    unscored = edit(False, True, regressed=None)
    verdict = phase0_verdict([disputed, unscored], [])
    assert (verdict.confusion.tp, verdict.confusion.fn, verdict.confusion.excluded) == (1, 1, 0)
    assert verdict.truth_counts == {"regression": {"runs": 1, "edits": 1}, "expectation": {"runs": 1, "edits": 1}}
    assert verdict.truth_source == "lm-eval regression + scenario expectation"
    text = verdict.render_text()
    assert "lm-eval regression for 1 run(s) of 1 edit(s); scenario expectation for 1 run(s) of 1 edit(s)" in text
    assert phase0_verdict([edit(True, False)], []).truth_source == "scenario expectation"


def test_informational_edits_stay_out_of_the_matrix() -> None:
    informational = [
        edit(True, True, regressed=False, informational=True, run=0),
        edit(False, True, regressed=True, informational=True, run=1),
    ]
    verdict = phase0_verdict(cells(tp=2, tn=2) + informational, [])
    assert verdict.confusion == Confusion(tp=2, fp=0, tn=2, fn=0)
    assert verdict.truth_source == "scenario expectation"  # informational results do not enter the truth counts
    assert verdict.signal_fraction == 0.5
    assert phase0_verdict(cells(tn=1), []).signal_fraction is None


def test_to_dict_is_json_ready_in_stable_order() -> None:
    verdict = phase0_verdict(cells(tp=3, fp=1, tn=4, fn=2), errors(16, 16))
    data = verdict.to_dict()
    assert list(data)[:5] == ["status", "verdict_confidence", "passed", "truth_source", "truth_counts"]
    assert json.loads(json.dumps(data)) == data
    assert data["confusion"] == {"tp": 3, "fp": 1, "tn": 4, "fn": 2, "total": 10, "excluded": 0}
    assert data["accuracy_ci"] == pytest.approx([0.39677, 0.89221], abs=1e-5)


def test_render_text_shows_the_verdict_compactly() -> None:
    verdict = phase0_verdict(cells(tp=3, fp=1, tn=4, fn=2), errors(16, 16))
    text = verdict.render_text()
    assert len(text.splitlines()) <= 16
    for fragment in (
        "TP 3",
        "FP 1",
        "FN 2",
        "TN 4",
        "70.0%",
        "39.7% - 89.2%",
        "16/16 (100.0%)",
        "F1 66.7%",
        "truth per edit: scenario expectation for 10 run(s) of 2 edit(s)",
        "no-op false alarms: 0 of 0",
        "PHASE0_VALIDATED (confidence MEDIUM, score 68.6/100)",
    ):
        assert fragment in text
    assert text.splitlines()[-1].strip() == verdict.status_line


@settings(max_examples=150, deadline=None)
@given(
    st.lists(outcome_strategy, max_size=30),
    st.lists(st.booleans(), max_size=20),
    st.integers(0, 3),
)
def test_verdict_invariants(edits: list[EditOutcome], detections: list[bool], degraded_other: int) -> None:
    error_runs = [ErrorOutcome("m", "nan", i, detected, False) for i, detected in enumerate(detections)]
    verdict = phase0_verdict(edits, error_runs, degraded_other=degraded_other)
    scored = [e for e in edits if not e.informational]
    assert 0.0 <= verdict.score <= 100.0
    assert verdict.confusion.total + verdict.confusion.excluded == len(scored)
    assert verdict.passed == (verdict.status == "PHASE0_VALIDATED")
    low, high = verdict.accuracy_ci
    assert low <= verdict.accuracy <= high or verdict.confusion.total == 0
    if detections:
        assert verdict.error_detection_rate is not None
        assert math.isclose(verdict.error_detection_rate * len(detections), sum(detections))
    else:
        assert verdict.error_detection_rate is None and not verdict.error_measured


# ---------------------------------------------------------------- completeness (issue 12)


def test_errored_edits_count_against_their_expectation() -> None:
    # A clean edit and a stress edit whose pipeline crashed: no verdict, so each lands in the wrong
    # cell (FP, FN). The old verdict dropped them and read 4/4 correct.
    crashed_clean = EditOutcome("m", "clean", 9, False, None, False, False, False, errored=True)
    crashed_stress = EditOutcome("m", "stress", 9, False, None, True, False, False, errored=True)
    verdict = phase0_verdict([*cells(tp=2, tn=2), crashed_clean, crashed_stress], errors(16, 16))
    assert (verdict.confusion.tp, verdict.confusion.fp, verdict.confusion.tn, verdict.confusion.fn) == (2, 1, 2, 1)
    assert "(2 errored, counted against their expectation)" in verdict.render_text()


def test_a_crashed_error_injection_is_not_detected() -> None:
    crashed = ErrorOutcome("m", "nan", 1, detected=True, degraded=False, errored=True)
    verdict = phase0_verdict(cells(tp=32, tn=32), [*errors(3, 3), crashed])
    assert (verdict.error_detected, verdict.error_total) == (3, 4)
    assert verdict.status == "PHASE0_FAILED"  # 75% < 80%
    assert "3/4 (75.0%), 1 errored = not detected" in verdict.render_text()


def test_without_error_runs_detection_is_not_measured_and_the_campaign_not_validated() -> None:
    # The ci suite has no error injections: the B200 bash harness's rule read 0% detection and always FAILED; citizen's code
    # skipped the criterion and read VALIDATED. A criterion not measured is never VALIDATED: INCOMPLETE, saying why.
    verdict = phase0_verdict(cells(tp=32, tn=32), [])
    assert verdict.error_detection_rate is None and not verdict.error_measured
    assert verdict.status == "PHASE0_INCOMPLETE" and not verdict.passed
    assert verdict.score == pytest.approx(98.584 - 25, abs=1e-3)  # the error part of the score stays 0
    text = verdict.render_text()
    assert "error detection >= 80%: not measured: the suite defines no error-injection item" in text
    assert verdict.to_dict()["error_detection_rate"] is None


def test_informational_scenarios_are_judged_by_the_minimum_signal_fraction() -> None:
    def info(scenario: str, run: int, signal: bool) -> EditOutcome:
        return EditOutcome("m", scenario, run, False, None, True, False, True, signal=signal)

    runs = [info("a", 1, True), info("a", 2, False), info("b", 1, False), info("b", 2, False)]
    verdict = phase0_verdict(cells(tp=1, tn=1) + runs, [], min_signal_fraction=0.5)
    assert verdict.signal_by_scenario["m/a"]["met"] and not verdict.signal_by_scenario["m/b"]["met"]
    assert verdict.informational_met is False
    text = verdict.render_text()
    assert "signal 1/4 (25.0%); minimum 50.0% per scenario: NOT met" in text
    assert "m/b: 0/2 (below minimum)" in text
    assert phase0_verdict(runs, [], min_signal_fraction=0.0).informational_met is True
    with pytest.raises(ValueError, match="min_signal_fraction"):
        phase0_verdict([], [], min_signal_fraction=1.5)


def test_an_informational_scenario_below_its_minimum_fails_the_campaign() -> None:
    # The evidence-pack harness's criterion: informational scenarios are judged by a minimum signal fraction.
    quiet = [EditOutcome("m", "info", run, False, None, True, False, True, signal=False) for run in (1, 2)]
    assert phase0_verdict(cells(tp=32, tn=32), errors(16, 16)).status == "PHASE0_VALIDATED"
    verdict = phase0_verdict(cells(tp=32, tn=32) + quiet, errors(16, 16), min_signal_fraction=0.5)
    assert verdict.informational_met is False and not verdict.passed and verdict.status == "PHASE0_FAILED"
    assert phase0_verdict(cells(tp=32, tn=32) + quiet, errors(16, 16), min_signal_fraction=0.0).status == "PHASE0_VALIDATED"


def test_noop_false_alarms_are_reported_with_their_gates() -> None:
    noops = [
        NoopOutcome("m", 1, False),
        NoopOutcome("m", 2, True, ("preview_final_drift_acceptable",)),
        NoopOutcome("m", 3, False),
    ]
    verdict = phase0_verdict(cells(tp=1, tn=1), [], noops=noops)
    assert (verdict.noop_false_alarms, verdict.noop_total) == (1, 3)
    assert "no-op false alarms: 1 of 3 (gate preview_final_drift_acceptable: 1)" in verdict.render_text()


def test_accounting_is_rendered_and_serialised() -> None:
    accounting = Accounting(
        suite_items=5,
        with_verdict=2,
        errored=(("m-x-run1", "boom"),),
        skipped=(("m-y-run1", "needs a GPU"),),
        not_run=("m-z-run1",),
        merged=(("m-c-run2", "m-c-run1"),),
        merge_key="model, scenario, weights, window digest",
    )
    verdict = phase0_verdict(cells(tp=1, tn=1), [], accounting=accounting)
    text = verdict.render_text()
    for fragment in (
        "suite items     5: 2 with a verdict, 1 errored, 1 skipped, 1 not run",
        "1 merged (key: model, scenario, weights, window digest)",
        "m-x-run1: boom",
        "m-y-run1: needs a GPU",
        "not run (1 with no record in the run directory): m-z-run1",
        "scope           3 of 5 suite items measured, 2 not (1 skipped, 1 with no record in the run directory)",
    ):
        assert fragment in text
    assert json.loads(json.dumps(verdict.to_dict()))["accounting"]["merged"] == [["m-c-run2", "m-c-run1"]]
