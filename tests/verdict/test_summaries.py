"""The earlier harnesses' analysis summaries from synthetic records: every number traced to the records that make it."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from test_compile import certify, errored

from pytest_invarlock.verdict.compile import compile_records
from pytest_invarlock.verdict.render import write_reports
from pytest_invarlock.verdict.summaries import (
    category_summary,
    determinism_summary,
    guard_intervention_summary,
    guard_sensitivity_rows,
    guard_signal_summary,
    policy_digest_summary,
    scenario_signal_summary,
)

GATES = ("spectral_stable", "rmt_stable", "invariants_pass", "primary_metric_acceptable", "preview_final_drift_acceptable")


def flags(**failed: bool) -> dict[str, bool]:
    return {gate: not failed.get(gate, False) for gate in GATES}


def probed(scenario: str, ratio: float, probe: dict[str, Any]) -> dict[str, Any]:
    """An informational error injection whose probe sidecar signalled."""
    return certify(
        "m", scenario, "error", 1, ratio=ratio, expectation="signal", flags=flags(), signal=True, probe_signal=True, probe=probe
    )


def campaign() -> list[dict[str, Any]]:
    return [
        certify("m", "calibration", "calibration", 1, flags=flags(), policy_thresholds_hash="h1", determinism_level="strict"),
        certify("m", "clean_a", "clean", 1, flags=flags(), policy_thresholds_hash="h2", determinism_level="strict"),
        certify(
            "m",
            "clean_a",
            "clean",
            2,
            ratio=1.01,
            flags=flags(rmt_stable=True),
            flagged=True,
            met=False,
            policy_thresholds_hash="h2",
            policy_changed=True,
            determinism_level="tolerance",
        ),
        certify(
            "m",
            "stress_a",
            "stress",
            1,
            ratio=2.0,
            flagged=True,
            flags=flags(primary_metric_acceptable=True, spectral_stable=True),
        ),
        certify("m", "stress_i", "stress", 1, ratio=1.02, expectation="signal", flags=flags(), caps_applied=2, signal=True),
        certify("m", "stress_i", "stress", 2, ratio=1.03, expectation="signal", flags=flags(), signal=False),
        certify("m", "nan", "error", 1, ratio=None, flagged=True, detected=True, flags={}, failure="non-finite model output"),
        probed("rmt_noise", 1.001, {"measured": True, "stable": False}),
        probed("ve_skew", 1.002, {"signal": False, "proposed_scales": 3}),
        errored("m", "zero", "error"),
    ]


def test_guard_sensitivity_gives_each_gates_pass_rate_per_scenario_and_counts_runs_without_report() -> None:
    rows = {r["edit_type"]: r for r in guard_sensitivity_rows(compile_records(campaign()))}
    assert rows["clean_a"]["runs"] == 2 and rows["clean_a"]["rmt_stable_pass_rate"] == 0.5
    assert rows["clean_a"]["spectral_stable_pass_rate"] == 1.0
    assert rows["stress_a"]["primary_metric_acceptable_pass_rate"] == 0.0
    assert rows["nan"]["runs"] == 1 and rows["nan"]["without_report"] == 1 and rows["nan"]["spectral_stable_pass_rate"] is None
    assert rows["zero"]["runs"] == 1 and rows["zero"]["without_report"] == 1  # the crashed item is not dropped
    assert next(iter(rows)) == "calibration"


def test_policy_and_determinism_summaries_count_each_certificate_once() -> None:
    records = campaign()
    copy = {**records[1], "param_id": "m-clean_a-run9", "run": 9}  # the same evidence again
    compiled = compile_records([*records, copy])
    policy = policy_digest_summary(compiled)["m"]
    assert policy["unique_thresholds_hashes"] == ["h1", "h2"] and policy["unique_hash_count"] == 2
    assert policy["total_certs"] == 9 and policy["policy_changed_true"] == 1 and policy["without_digest"] == 6
    determinism = determinism_summary(compiled)
    assert determinism["by_model"]["m"] == {"strict": 2, "tolerance": 1, "off": 0, "unknown": 6}
    assert determinism["overall"] == determinism["by_model"]["m"]


def test_guard_signals_and_interventions_name_which_guard_flagged_and_which_alone() -> None:
    compiled = compile_records(campaign())
    signals = guard_signal_summary(compiled)
    assert signals["records_total"] == 8  # edits and error injections with a verdict; calibration apart
    assert signals["signals"]["rmt"] == {"flagged": 2, "unique": 2}  # clean_a run 2 and the RMT probe
    assert signals["signals"]["spectral"] == {"flagged": 1, "unique": 0}  # stress_a, with the primary metric
    assert signals["signals"]["primary_metric"] == {"flagged": 1, "unique": 0}
    assert signals["signals"]["variance"] == {"flagged": 1, "unique": 1}
    interventions = guard_intervention_summary(compiled)["signals"]
    assert interventions == {"spectral_caps": {"flagged": 1, "unique": 1}, "ve_signal": {"flagged": 1, "unique": 1}}


def test_category_and_scenario_summaries_carry_the_minimum_signal_fraction() -> None:
    compiled = compile_records(campaign(), min_signal_fraction=0.75)
    categories = category_summary(compiled)
    assert categories["clean"] == {
        "scenarios": 1, "reports": 2, "without_report": 0, "errored": 0,
        "primary_metric_fail": 0, "invariants_fail": 0, "any_flag": 1, "met": 1,
    }  # fmt: skip
    assert categories["error_injection"]["errored"] == 1 and categories["error_injection"]["without_report"] == 1
    rows = {r["id"]: r for r in scenario_signal_summary(compiled)}
    assert rows["stress_i"]["strictness"] == "informational" and rows["stress_i"]["signal_fraction"] == 0.5
    assert rows["stress_i"]["signal_met"] is False and rows["stress_i"]["min_signal_fraction"] == 0.75
    assert rows["rmt_noise"]["category"] == "error_injection" and rows["rmt_noise"]["probe_signaled"] == 1
    assert rows["zero"]["errored"] == 1 and rows["zero"]["strictness"] == "must_pass"  # errored() says pass
    assert "signal_fraction" not in rows["clean_a"]
    assert compiled.phase0.informational_met is False and compiled.phase0.status == "PHASE0_FAILED"
    # informational error injections are judged by their signal, not counted as detections
    assert compiled.phase0.error_total == 2 and compiled.phase0.informational_total == 4
    assert compiled.phase0.signal_by_scenario["m/rmt_noise"] == {"runs": 1, "signal": 1, "fraction": 1.0, "met": True}


def test_write_reports_writes_every_summary(tmp_path: Path) -> None:
    paths = write_reports(compile_records(campaign()), tmp_path, header={"suite": "s"})
    for name in (
        "analysis/guard_sensitivity_matrix.csv",
        "analysis/policy_digest_summary.json",
        "analysis/determinism_summary.json",
        "reports/category_summary.json",
        "reports/guard_signal_summary.json",
        "reports/guard_intervention_summary.json",
        "reports/scenario_signal_summary.json",
    ):
        assert tmp_path / name in paths and (tmp_path / name).is_file(), name
    header = next(csv.reader((tmp_path / "analysis/guard_sensitivity_matrix.csv").open()))
    assert header[:1] == ["edit_type"] and "spectral_stable_pass_rate" in header and "invariants_pass_pass_rate" in header
    assert json.loads((tmp_path / "reports/scenario_signal_summary.json").read_text())[0]["id"] == "calibration"
