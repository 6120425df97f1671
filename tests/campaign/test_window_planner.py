"""The window planner's math: false-alarm probability, the counts it picks, and what it flags as underpowered."""

from __future__ import annotations

import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.campaign import window_planner as wp

BAND = (0.95, 1.05)


def inputs(**overrides) -> wp.PlanInputs:
    base = {"sigma": 0.3, "seq_len": 128, "acceptance": (0.90, 1.20), "pilot_windows": 48}
    return wp.PlanInputs(**{**base, **overrides})


def test_false_alarm_matches_a_simulation_of_exchangeable_windows() -> None:
    """P(no-op drift outside the band) from the formula agrees with drawing window NLLs at random."""
    sigma, n = 0.4, 60
    rng = random.Random(7)
    trials, outside = 4000, 0
    for _ in range(trials):
        preview = statistics.fmean(rng.gauss(3.0, sigma) for _ in range(n))
        final = statistics.fmean(rng.gauss(3.0, sigma) for _ in range(n))
        drift = math.exp(final - preview)
        outside += not BAND[0] <= drift <= BAND[1]
    predicted = wp.noop_false_alarm(sigma, n, n, BAND)
    assert 0.3 < predicted < 0.6  # a regime where the check has teeth
    assert outside / trials == pytest.approx(predicted, abs=0.03)


def test_known_value_of_the_false_alarm() -> None:
    # sd = 0.1 * sqrt(2/50) = 0.02; P = Phi(ln .95/.02) + Phi(-ln 1.05/.02)
    expected = wp.normal_cdf(math.log(0.95) / 0.02) + wp.normal_cdf(-math.log(1.05) / 0.02)
    assert wp.noop_false_alarm(0.1, 50, 50, BAND) == pytest.approx(expected)
    assert expected == pytest.approx(0.00516 + 0.00735, abs=0.0002)


@settings(max_examples=60, deadline=None)
@given(sigma=st.floats(0.01, 2.0), n=st.integers(1, 5000))
def test_false_alarm_falls_with_more_windows_and_rises_with_spread(sigma: float, n: int) -> None:
    assert wp.noop_false_alarm(sigma, n + 1, n + 1, BAND) <= wp.noop_false_alarm(sigma, n, n, BAND)
    assert wp.noop_false_alarm(sigma * 1.5, n, n, BAND) >= wp.noop_false_alarm(sigma, n, n, BAND)


@settings(max_examples=80, deadline=None)
@given(
    sigma=st.floats(0.01, 1.5),
    seq_len=st.sampled_from([64, 128, 512, 1024]),
    min_tokens=st.integers(0, 200_000),
    target=st.sampled_from([1e-2, 1e-3, 1e-4]),
    hi=st.floats(1.02, 1.5),
)
def test_auto_plan_meets_every_criterion_with_the_fewest_windows(sigma, seq_len, min_tokens, target, hi) -> None:
    plan = wp.plan_windows(inputs(sigma=sigma, seq_len=seq_len, min_tokens=min_tokens, false_alarm=target, acceptance=(0.9, hi)))
    n = plan.preview_n
    assert plan.final_n == n and not plan.problems and not plan.underpowered
    assert n >= 180 and plan.tokens >= min_tokens and plan.false_alarm <= target
    assert plan.ci_half_width_at_edge <= wp.DEFAULT_RESOLUTION * math.log(hi) + 1e-12
    if n > max(plan.needs["tier_floor"], plan.needs["ci_at_edge"], plan.needs["token_floor"]):
        # the drift criterion decided: one window fewer per arm breaks it
        assert wp.noop_false_alarm(sigma, n - 1, n - 1, BAND) > target


def test_explicit_counts_that_are_underpowered_say_why_with_numbers() -> None:
    plan = wp.assess(inputs(sigma=0.6, min_tokens=50_000), 180, 180)
    assert plan.underpowered and plan.chosen_by == "explicit"
    text = " ".join(plan.problems)
    assert "drift gate with probability" in text and "%" in text
    assert f"{plan.needs['drift']}+{plan.needs['drift']} windows would meet it" in text
    good = wp.assess(inputs(sigma=0.05, min_tokens=40_000), 180, 180)
    assert not good.underpowered, good.problems


def test_token_and_tier_floors_are_reported() -> None:
    plan = wp.assess(inputs(sigma=0.01, min_tokens=100_000), 150, 150)
    assert any("tier floor" in p for p in plan.problems)
    assert any("tokens, under" in p for p in plan.problems)


def test_the_corpus_caps_an_auto_plan_and_says_so() -> None:
    plan = wp.plan_windows(inputs(sigma=1.0, pool_windows=600))
    assert plan.preview_n == plan.final_n == 300
    assert any("capped" in note for note in plan.notes)
    assert plan.underpowered  # the cap cannot keep the drift promise; the plan says so


def test_summary_and_dict_carry_the_numbers() -> None:
    plan = wp.plan_windows(inputs(sigma=0.25, pool_windows=4000, runs=3))
    data = plan.to_dict()
    assert data["preview_n"] == plan.preview_n and data["underpowered"] is False
    assert f"{plan.preview_n}+{plan.final_n} windows (auto)" in plan.summary()
    assert "false alarm" in plan.summary()


def test_drift_quantile_band_holds_95_percent_of_simulated_noops() -> None:
    sigma, n = 0.3, 200
    lo, hi = wp.drift_quantile_band(sigma, n, n)
    rng = random.Random(3)
    inside = sum(
        lo
        <= math.exp(
            statistics.fmean(rng.gauss(0, sigma) for _ in range(n)) - statistics.fmean(rng.gauss(0, sigma) for _ in range(n))
        )
        <= hi
        for _ in range(2000)
    )
    assert inside / 2000 == pytest.approx(0.95, abs=0.015)


@pytest.mark.parametrize(
    "bad", [{"sigma": -1.0}, {"sigma": math.nan}, {"seq_len": 1}, {"acceptance": (1.1, 1.2)}, {"false_alarm": 0.0}]
)
def test_bad_inputs_are_refused(bad) -> None:
    with pytest.raises(ValueError):
        wp.plan_windows(inputs(**bad))


def test_pilot_sigma_and_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert wp.pilot_sigma([1.0, 2.0, 3.0, math.nan]) == (2.0, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        wp.pilot_sigma([1.0])
    assert wp.main(["--sigma", "0.3", "--seq-len", "512", "--windows", "180", "180"]) == 0
    out = capsys.readouterr().out
    assert "180+180 windows (explicit)" in out


def test_paired_sigma_removes_what_neighbours_share() -> None:
    rng = random.Random(11)
    shared = [rng.gauss(3.0, 0.3) for _ in range(4000)]
    first = [s + rng.gauss(0, 0.2) for s in shared]
    second = [s + rng.gauss(0, 0.2) for s in shared]
    assert wp.paired_sigma(first, second) == pytest.approx(0.2, rel=0.05)
    assert wp.pilot_sigma(first + second)[1] == pytest.approx(math.hypot(0.3, 0.2), rel=0.05)


def test_matched_sigma_overestimates_the_drift_spread_of_a_denser_matched_draw() -> None:
    """The pilot pairs its own 128 windows by NLL; a draw pairs hundreds, so neighbours sit closer: the pilot's
    residual (plus the scoring noise) must not understate what a simulated matched draw's drift shows."""
    rng = random.Random(5)
    pilot = [rng.gauss(3.5, 0.4) for _ in range(128)]
    planned = wp.matched_sigma(pilot)
    assert wp.SCORER_NOISE < planned < 0.4 / 4
    assert wp.matched_sigma(pilot, scorer_noise=0.0) < planned
    n, gaps = 200, []
    for _ in range(300):
        # InvarLock's pass differs from the scoring pass by the scorer noise; pairs are matched on the scores
        scored = sorted(rng.gauss(3.5, 0.4) for _ in range(2 * n))
        evaluated = [x + rng.gauss(0, wp.SCORER_NOISE / 2) for x in scored]
        flips = [rng.random() < 0.5 for _ in range(n)]
        preview = [evaluated[2 * j + f] for j, f in enumerate(flips)]
        final = [evaluated[2 * j + 1 - f] for j, f in enumerate(flips)]
        gaps.append(sum(final) / n - sum(preview) / n)
    assert statistics.pstdev(gaps) < planned * math.sqrt(2 / n)


def test_gpu_plan_lines_show_the_recorded_plan_or_what_will_happen(tmp_path) -> None:
    import json
    from types import SimpleNamespace

    def model(name, **settings):
        base = {"dataset": "local", "windows": None, "preview_windows": 260, "final_windows": 260}
        return SimpleNamespace(name=name, settings=SimpleNamespace(**{**base, **settings}))

    models = [model("a", windows="auto"), model("b"), model("c", dataset="wikitext2"), model("d")]
    plan = wp.assess(inputs(sigma=0.6), 180, 180)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / wp.PLAN_FILE).write_text(json.dumps({"d": {**plan.to_dict(), "summary": plan.summary()}}))
    lines = wp.plan_lines(tmp_path, models)
    assert "windows auto: planned from a pilot pass" in lines[0]
    assert "260+260 windows (explicit; assessed" in lines[1]
    assert "hub dataset" in lines[2]
    assert "(recorded) UNDERPOWERED" in lines[3] and "drift gate with probability" in lines[3]
    assert wp.plan_lines(tmp_path, models, recorded_only=True) == lines[3:]  # the session summary's lines


def test_a_suite_accepts_windows_auto_and_refuses_anything_else(tmp_path) -> None:
    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.campaign.suite.checks import SuiteError

    assert load_suite("tiny").models[0].settings.windows == "auto"
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nmodels: [tiny-kjv]\nscenarios: [calibration]\ninvarlock: {dataset: local, windows: 300}\n")
    with pytest.raises(SuiteError, match="windows"):
        load_suite(str(bad))


def test_sigma_upper_bound_covers_the_truth_about_90_percent_of_the_time() -> None:
    rng = random.Random(5)
    trials, covered = 1500, 0
    for _ in range(trials):
        sample = [rng.gauss(0, 1.0) for _ in range(64)]
        covered += wp.sigma_upper_bound(statistics.stdev(sample), 64) >= 1.0
    assert covered / trials == pytest.approx(0.90, abs=0.025)
    plan = wp.plan_windows(inputs(sigma=0.3, sigma_estimate=0.25))
    assert plan.false_alarm_estimate is not None and plan.false_alarm_estimate < plan.false_alarm <= 0.01
    assert "planned on its 90% upper bound 0.3000" in plan.summary()


# --------------------------------------------------------------------------- unequal arms and the pilot's residual


@settings(max_examples=200, deadline=None)
@given(
    # Spreads in nats: zero or at least 1e-9 (squares of ~1e-159 underflow, and no corpus is that even).
    sigma=st.one_of(st.just(0.0), st.floats(1e-9, 1.0)),
    plain=st.one_of(st.just(0.0), st.floats(1e-9, 1.0)),
    preview_n=st.integers(1, 2000),
    final_n=st.integers(1, 2000),
)
def test_drift_sd_reduces_to_the_matched_and_the_unmatched_draw(sigma, plain, preview_n, final_n) -> None:
    sd = wp.drift_sd(sigma, preview_n, final_n, plain)
    assert sd == pytest.approx(wp.drift_sd(sigma, final_n, preview_n, plain))  # which arm is larger does not matter
    unmatched = math.sqrt(1 / preview_n + 1 / final_n)
    assert wp.drift_sd(sigma, preview_n, final_n) == pytest.approx(sigma * unmatched)  # no plain spread: random halves
    assert wp.drift_sd(plain, preview_n, final_n, plain) == pytest.approx(plain * unmatched)
    if preview_n == final_n:  # every window paired: the plain spread does not enter
        assert sd == pytest.approx(sigma * unmatched)
    else:  # the unpaired windows carry the plain spread: more drift as it grows, never more than random halves
        assert wp.drift_sd(sigma, preview_n, final_n, plain * 2) >= sd
        if sigma <= plain:
            assert sd <= plain * unmatched * (1 + 1e-12)


def test_a_single_unpaired_window_costs_almost_nothing_and_many_are_flagged() -> None:
    """200 + 199 windows at a plain spread of 0.41 and a pilot residual of 0.03: one window goes unpaired, so the
    drift stays matched (sd ~0.0036); 400 + 180 leaves 220 windows unpaired and breaks the 1% promise."""
    sd = wp.drift_sd(0.03, 200, 199, 0.41)
    assert sd == pytest.approx(math.sqrt(399 / (2 * 199 * 200**2) * (0.41**2 * 1 + 0.03**2 * 399)))
    assert 0.003 < sd < 0.004
    near = wp.assess(inputs(sigma=0.03, sigma_plain=0.41, min_tokens=0), 200, 199)
    assert near.false_alarm == pytest.approx(wp.noop_false_alarm(0.03, 200, 199, BAND, 0.41)) and not near.underpowered
    assert "unequal arms: 1 window unpaired, at the plain spread 0.4100" in near.summary()
    far = wp.assess(inputs(sigma=0.03, sigma_plain=0.41, min_tokens=0), 400, 180)
    assert far.underpowered and any("drift gate with probability" in p for p in far.problems)
    assert wp.assess(inputs(sigma=0.03, min_tokens=0), 400, 180).false_alarm < far.false_alarm  # plain spread matters


@settings(max_examples=100, deadline=None)
@given(
    pairs=st.lists(st.tuples(st.floats(-5, 5), st.floats(-5, 5)), min_size=2, max_size=60),
    swaps=st.lists(st.booleans(), min_size=60, max_size=60),
)
def test_paired_sigma_ignores_which_window_of_a_pair_comes_first(pairs, swaps) -> None:
    """The draw flips a coin per pair, so only |x_a - x_b| matters: the root mean square of the differences.
    The old standard deviation read sorted neighbours' same-sign differences around their mean, ~13% low."""
    first, second = [a for a, _ in pairs], [b for _, b in pairs]
    swapped = [(b, a) if swap else (a, b) for (a, b), swap in zip(pairs, swaps, strict=False)]
    expected = math.sqrt(statistics.fmean((a - b) ** 2 for a, b in pairs) / 2)
    assert wp.paired_sigma(first, second) == pytest.approx(expected, abs=1e-12)
    assert wp.paired_sigma([a for a, _ in swapped], [b for _, b in swapped]) == pytest.approx(expected, abs=1e-12)


def test_matched_sigma_of_evenly_spaced_windows_is_not_zero() -> None:
    # Neighbours 1 nat apart: every pair's difference is -1, whose standard deviation is 0 (the old reading: no
    # spread at all); a coin flip per pair makes the drift's per-window spread sqrt(1/2).
    assert wp.matched_sigma([3.0, 0.0, 2.0, 1.0, 5.0, 4.0], scorer_noise=0.0) == pytest.approx(math.sqrt(0.5))
    assert wp.matched_sigma([0.0, 1.0, 2.0, 3.0]) == pytest.approx(math.hypot(math.sqrt(0.5), wp.SCORER_NOISE))


def test_the_cli_takes_the_plain_spread_for_unequal_arms(capsys: pytest.CaptureFixture[str]) -> None:
    assert wp.main(["--sigma", "0.03", "--sigma-plain", "0.41", "--seq-len", "128", "--windows", "200", "199"]) == 0
    out = capsys.readouterr().out
    assert "200+199 windows (explicit)" in out and "1 window unpaired, at the plain spread 0.4100" in out
