"""Judging a verdict against its scenario: synthetic reports with a gate flipped turn the right item red."""

from __future__ import annotations

import pytest

from helpers import synthetic_report
from pytest_invarlock.campaign.judging import judge
from pytest_invarlock.campaign.suite.definitions import Scenario
from pytest_invarlock.worker.certifier import Verdict

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

CLEAN = Scenario("quant_rtn_8bit_clean", "quant_rtn:8:128:ffn", "clean")
STRESS = Scenario("prune_70pct_stress", "magnitude_prune:0.7:all", "stress", detectors=("primary_metric_acceptable",))
ANY_STRESS = Scenario("svd_rank32_stress", "lowrank_svd:32:all", "stress")
INFO = Scenario("fp4_aggressive_stress", "fp4:aggressive:all", "stress", gating=False)
ERROR = Scenario("nan_injection", "nan_injection", "error")


def verdict(**flags: bool) -> Verdict:
    return Verdict.from_report(synthetic_report(**flags), report_path="/runs/r/evaluation.report.json")


def test_a_passing_clean_edit_meets_its_expectation() -> None:
    judgement = judge(CLEAN, verdict())
    assert judgement.met and not judgement.flagged


def test_a_flipped_gate_turns_a_clean_edit_red_with_a_readable_message() -> None:
    judgement = judge(CLEAN, verdict(primary_metric_acceptable=False))
    assert not judgement.met and judgement.flagged
    text = judgement.explanation
    assert "expected InvarLock passes it; NOT as expected" in text
    assert "InvarLock said FAIL; failed gates: primary_metric_acceptable" in text
    assert "ratio 1.0100 (95% CI [0.9900, 1.0300]), acceptance [0.90, 1.20]" in text
    assert "report: /runs/r/evaluation.report.json" in text


@pytest.mark.parametrize("gate", ["spectral_stable", "rmt_stable", "invariants_pass"])
def test_a_stress_edit_must_hit_one_of_its_detectors(gate: str) -> None:
    assert not judge(STRESS, verdict(**{gate: False})).met  # flagged, but not by the named detector
    assert judge(STRESS, verdict(primary_metric_acceptable=False)).met
    assert judge(ANY_STRESS, verdict(**{gate: False})).met  # no detectors listed: any gate counts
    assert not judge(ANY_STRESS, verdict()).met


def test_an_informational_stress_edit_never_fails_but_records_a_signal() -> None:
    quiet = judge(INFO, verdict())
    assert quiet.met and quiet.signal  # the synthetic report applied one spectral cap: a remediation
    assert judge(INFO, verdict(rmt_stable=False)).met


def test_an_error_is_detected_by_a_gate_or_by_a_non_finite_abort() -> None:
    assert not judge(ERROR, verdict()).met
    assert judge(ERROR, verdict(invariants_pass=False)).met
    aborted = Verdict.from_failure("non-finite model output (detected): 250/250 windows", crashed=False)
    judgement = judge(ERROR, aborted)
    assert judgement.met and judgement.detected
    assert "InvarLock produced no report: non-finite model output" in judgement.explanation


def test_an_invalid_primary_metric_is_flagged_and_fails_a_clean_edit() -> None:
    # Issue 12: the reference's stricter overall pass is not (degraded or invalid); `invalid` was ignored.
    report = synthetic_report()
    report["primary_metric"]["invalid"] = True
    judgement = judge(CLEAN, Verdict.from_report(report))
    assert judgement.flagged and not judgement.met
