"""The planner's no-op false alarm against a simulation of the real draw (numpy, no torch).

A population of windows with a plain per-window NLL spread of 0.41 nats (SmolLM2 on the KJV pool); InvarLock's
own pass differs from the scoring pass by the planner's scorer noise. Pilots of 128 windows are read with the
planner's own estimators (pooled over many pilots, so the check is about the estimator's bias, not its noise);
draws use ``worker.windows.matched_split``. A pilot of 128 windows pairs them as densely as a draw of 128
candidates does, so for those counts the pilot's residual is the draw's and the two rates must agree.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pytest_invarlock.campaign import window_planner as wp
from pytest_invarlock.worker import windows as w

PLAIN = 0.41
PILOT = 128


def pooled_pilot(rng: np.random.Generator, pilots: int = 300) -> tuple[float, float]:
    """(matched residual, plain spread) as the worker's pilot reads them, pooled in the square over ``pilots``."""
    residual, plain = [], []
    for _ in range(pilots):
        nll = rng.normal(3.5, PLAIN, PILOT).tolist()
        residual.append(wp.matched_sigma(nll) ** 2)
        plain.append(wp.pilot_sigma(nll)[1] ** 2)
    return math.sqrt(float(np.mean(residual))), math.sqrt(float(np.mean(plain)))


def empirical_false_alarm(rng: np.random.Generator, preview_n: int, final_n: int, band: tuple[float, float], draws: int) -> float:
    outside = 0
    for block in range(draws):
        scored = rng.normal(3.5, PLAIN, preview_n + final_n)
        evaluated = scored + rng.normal(0.0, wp.SCORER_NOISE, scored.size)  # InvarLock's own pass
        order = w.matched_split(list(range(scored.size)), scored.tolist(), preview_n, w.WINDOW_SEED, block)
        drift = math.exp(evaluated[order[preview_n:]].mean() - evaluated[order[:preview_n]].mean())
        outside += not band[0] <= drift <= band[1]
    return outside / draws


@pytest.mark.parametrize(
    ("preview_n", "final_n", "band"),
    [
        (64, 64, (0.99, 1.01)),  # equal arms: only the pairs' residual; a narrow band puts the rate near 8%
        (96, 64, (0.95, 1.05)),  # unequal: 32 unpaired windows carry the plain spread, about 7%
        (80, 48, (0.95, 1.05)),  # unequal: about 14%
        (200, 199, (0.95, 1.05)),  # the case: one unpaired window, about 0 (a random split gave 22%)
    ],
)
def test_planned_false_alarm_matches_the_simulated_draw(preview_n: int, final_n: int, band: tuple[float, float]) -> None:
    rng = np.random.default_rng(preview_n * 1000 + final_n)
    residual, plain = pooled_pilot(rng)
    inputs = wp.PlanInputs(sigma=residual, sigma_plain=plain, seq_len=128, acceptance=(0.9, 1.2), drift_band=band, min_tokens=0)
    planned = wp.assess(inputs, preview_n, final_n).false_alarm
    draws = 10_000
    observed = empirical_false_alarm(rng, preview_n, final_n, band, draws)
    tolerance = 4 * math.sqrt(max(planned, 1 / draws) * (1 - planned) / draws) + 0.003
    assert observed == pytest.approx(planned, abs=tolerance), (planned, observed)
