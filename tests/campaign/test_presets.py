"""GENERATE_PRESET math: hand-computed cases and properties."""

from __future__ import annotations

import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.campaign.presets import (
    DRIFT_BAND_LIMIT,
    CalibrationStats,
    allocate_cap_budget,
    derive_preset,
    drift_band,
    drift_band_derivation,
    edit_preset,
    quantile,
    z_at_cap_budget,
)

BASE = {
    "drift_band": [0.95, 1.05],
    "spectral_kappa": {"ffn": 3.0, "attn": 2.0, "embed": 1.05},
    "spectral_max_caps": 5,
    "rmt_epsilon": {"ffn": 0.01, "attn": 0.01},
    "variance_min_effect_lognll": 0.0,
}
RUN_1 = CalibrationStats(
    drift=1.00,
    spectral_z_at_budget={"ffn": 2.5, "attn": 2.4},
    rmt_epsilon={"ffn": 0.02, "attn": 0.001},
    delta_ci_half_width=0.002,
)
RUN_2 = CalibrationStats(drift=1.02, spectral_z_at_budget={"ffn": 3.2, "attn": 1.0}, rmt_epsilon={"ffn": 0.04, "attn": 0.002})
FAMILIES = st.sampled_from(["ffn", "attn", "embed", "other"])


def test_quantile_interpolates_linearly():
    assert quantile([4.0, 1.0, 3.0, 2.0], 0.9) == pytest.approx(3.7)  # position 2.7: 3 + 0.7 * (4 - 3)
    assert quantile([5.0], 0.9) == 5.0


def test_cap_budget_is_shared_in_proportion_to_module_counts():
    # 5 caps over 58 modules: attn 2.76 -> 3, ffn 2.07 -> 2, embed/other 0.09 -> 0.
    assert allocate_cap_budget({"attn": 32, "ffn": 24, "embed": 1, "other": 1}, 5) == {
        "attn": 3,
        "ffn": 2,
        "embed": 0,
        "other": 0,
    }


def test_cap_budget_rounding_surplus_is_taken_back():
    # 2 caps over three equal families: each rounds 0.67 up to 1, one is taken back.
    assert sorted(allocate_cap_budget({"a": 1, "b": 1, "c": 1}, 2).values()) == [0, 1, 1]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(FAMILIES, st.integers(0, 200), min_size=1), st.integers(0, 40))
def test_cap_budget_always_sums_to_the_budget(counts, budget):
    allocation = allocate_cap_budget(counts, budget)
    assert all(share >= 0 for share in allocation.values())
    assert sum(allocation.values()) == (budget if sum(counts.values()) > 0 else 0)


def test_z_at_cap_budget_takes_the_kth_largest_magnitude():
    # 3 caps: attn (4 modules) gets 2, ffn (2 modules) gets 1.
    z = {"attn": [0.5, -3.0, 2.0, 1.0], "ffn": [1.5, -0.2]}
    assert z_at_cap_budget(z, 3) == {"attn": 2.0, "ffn": 1.5}


def test_z_at_zero_budget_is_the_largest_magnitude():
    assert z_at_cap_budget({"attn": [0.5, -3.0]}, 0) == {"attn": 3.0}


def test_drift_band_is_the_reference_formula():
    # mean 1.0, sample sd 0.01 -> [0.97, 1.03]; the tiny suite's three no-ops: mean 0.99983, sd 0.00097.
    assert drift_band([0.99, 1.00, 1.01]) == pytest.approx((0.97, 1.03), abs=1e-4)
    assert drift_band([1.0009, 0.9990, 0.9996]) == pytest.approx((0.9969, 1.0028), abs=1e-4)


def test_one_outlier_calibration_run_cannot_widen_the_band_silently():
    # Issue 19: citizen's code gave (0.65, 1.52) for these runs and said nothing.
    derivation = drift_band_derivation([0.999, 1.001, 1.25])
    # mean 1.08333, sd 0.14434: 1.08333 -+ 0.43301, rounded outwards
    assert derivation.formula == pytest.approx((0.6503, 1.5164), abs=1e-4)
    assert derivation.band == DRIFT_BAND_LIMIT == (0.95, 1.05) and derivation.limited
    assert derivation.outlier == (3, 1.25)
    summary = derivation.summary()
    assert "the formula gave [0.6503, 1.5164], cut back to the limit [0.95, 1.05]" in summary
    assert "outlier: calibration run 3 (drift 1.2500)" in summary
    assert derive_preset([CalibrationStats(d) for d in (0.999, 1.001, 1.25)], BASE)["drift_band"] == [0.95, 1.05]


def test_runs_that_all_drift_beyond_the_limit_are_judged_by_the_limit():
    derivation = drift_band_derivation([1.058, 1.06, 1.062], runs=[4, 5, 6])
    assert derivation.band == (0.95, 1.05) and derivation.outlier is not None and derivation.outlier[0] in (4, 6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.9, 1.1), min_size=2, max_size=10).filter(lambda d: statistics.stdev(d) > 1e-6))
def test_the_band_is_the_formula_within_the_limit_and_never_beyond(drifts):
    derivation = drift_band_derivation(drifts)
    lo, hi = derivation.band
    assert DRIFT_BAND_LIMIT[0] <= lo < hi <= DRIFT_BAND_LIMIT[1]
    assert derivation.formula is not None
    if DRIFT_BAND_LIMIT[0] <= derivation.formula[0] and derivation.formula[1] <= DRIFT_BAND_LIMIT[1]:
        assert derivation.band == derivation.formula and derivation.outlier is None
    else:
        assert derivation.limited and (derivation.outlier is not None or len(drifts) == 2)


def test_drift_band_falls_back_with_fewer_than_two_runs():
    assert drift_band([1.3]) == (0.95, 1.05)
    assert drift_band([]) == (0.95, 1.05)


def test_identical_drifts_are_rejected_with_a_fix():
    with pytest.raises(ValueError, match="its own windows"):
        drift_band([1.01, 1.01, 1.01])


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(0.97, 1.03), min_size=2, max_size=10).filter(lambda d: statistics.stdev(d) > 1e-6))
def test_drift_band_holds_every_calibration_run(drifts):
    # With n <= 10 runs no point lies beyond (n-1)/sqrt(n) < 3 sample sd of the mean; the limit holds them all.
    lo, hi = drift_band(drifts)
    assert lo < hi
    assert all(lo <= d <= hi for d in drifts)


def test_derive_preset_by_hand():
    preset = derive_preset([RUN_1, RUN_2], BASE)
    # drift: mean 1.01, sd 0.014142 -> [0.967574, 1.052426], rounded outwards, cut back to the limit 1.05.
    assert preset["drift_band"] == pytest.approx([0.9675, 1.05])
    assert preset["drift_band_derivation"]["limited"] and preset["drift_band_derivation"]["outlier"] is None
    # kappa: max(observed z, existing) + 0.05; embed never observed keeps its value.
    assert preset["spectral_kappa"] == pytest.approx({"ffn": 3.25, "attn": 2.45, "embed": 1.05})
    # epsilon: q90 of ffn [0.02, 0.04] = 0.038; attn q90 0.0019 stays at the existing 0.01.
    assert preset["rmt_epsilon"] == pytest.approx({"ffn": 0.038, "attn": 0.01})
    # min effect: q95 of the one measured half-width (0.002), above the 0.0009 floor.
    assert preset["variance_min_effect_lognll"] == pytest.approx(0.002)
    assert preset["spectral_max_caps"] == 5


def test_min_effect_has_a_floor_and_keeps_the_base_without_measurements():
    tiny = CalibrationStats(drift=1.0, delta_ci_half_width=0.0001)
    assert derive_preset([tiny], BASE)["variance_min_effect_lognll"] == 0.0009
    assert (
        derive_preset([CalibrationStats(drift=1.0)], {**BASE, "variance_min_effect_lognll": 0.016})["variance_min_effect_lognll"]
        == 0.016
    )


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 8.0), min_size=1, max_size=6), st.lists(st.floats(-0.5, 0.5), min_size=1, max_size=6))
def test_calibration_never_loosens_below_the_base(zs, epsilons):
    runs = [
        CalibrationStats(drift=1.0 + i * 0.01, spectral_z_at_budget={"ffn": z}, rmt_epsilon={"ffn": e})
        for i, (z, e) in enumerate(zip(zs, epsilons, strict=False))
    ]
    preset = derive_preset(runs, BASE)
    assert preset["spectral_kappa"]["ffn"] >= BASE["spectral_kappa"]["ffn"] + 0.05 - 1e-9
    assert preset["rmt_epsilon"]["ffn"] >= BASE["rmt_epsilon"]["ffn"]


def test_derive_preset_rejects_bad_input():
    with pytest.raises(ValueError, match="no calibration runs"):
        derive_preset([], BASE)
    with pytest.raises(ValueError, match="tier_preset"):
        derive_preset([RUN_1], {"drift_band": [0.95, 1.05]})


@pytest.mark.parametrize(
    ("edit_kind", "max_caps"),
    [("quant_rtn", 15), ("fp8", 15), ("lowrank_svd", 25), ("magnitude_prune", 10), ("fp4", 10)],
)
def test_edit_preset_raises_the_cap_budget(edit_kind, max_caps):
    assert edit_preset(BASE, edit_kind)["spectral_max_caps"] == max_caps
    assert BASE["spectral_max_caps"] == 5


def test_edit_preset_never_lowers_the_cap_budget():
    assert edit_preset({**BASE, "spectral_max_caps": 30}, "quant_rtn")["spectral_max_caps"] == 30


def test_calibration_stats_round_trip():
    assert CalibrationStats.from_dict(RUN_1.to_dict()) == RUN_1


def test_min_effect_floor_applies_without_measured_half_widths():
    # Issue 12: the old derivation returned the base value (here 0.0) untouched when no run measured
    # a delta CI; the B200 bash harness's floor 0.0009 applies either way.
    assert (
        derive_preset([CalibrationStats(drift=1.0), CalibrationStats(drift=1.01)], BASE)["variance_min_effect_lognll"] == 0.0009
    )
