"""How many evaluation windows a model needs, from the spread of its per-window log-perplexity. Pure.

A short *pilot* pass of the baseline estimates the spread of the per-window mean NLLs; from it the planner
takes the smallest equal arms for which a no-op's preview/final drift stays inside the drift gate with
probability ``1 - false_alarm`` (at the pilot's one-sided 90% upper bounds), an edit at the acceptance edge
gets a ratio CI within ``resolution`` of its distance from 1, and the tier's window floor and the token
floor hold. The derivation and the measured figures behind the defaults: docs/windows.md.

``plan_windows`` returns the plan with every number it used; ``assess`` gives the same numbers for explicit
counts, and ``WindowPlan.underpowered`` says which promise they break (the suite then warns).
"""

from __future__ import annotations

import argparse
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

DEFAULT_FALSE_ALARM = 1e-2
DEFAULT_RESOLUTION = 0.25
DEFAULT_EDIT_CV = 1.5
CI_Z = 1.959963984540054  # two-sided 95%, InvarLock's alpha 0.05
# Per-window NLL difference between our batched scoring pass and InvarLock's one-window-at-a-time pass: sd
# 0.0055 nats measured on SmolLM2 in bf16 on CPU (48 windows, batch 8 vs 1); doubled for other kernels and devices.
SCORER_NOISE = 0.011
MAX_WINDOWS = 1_000_000
PLAN_FILE = "window_plan.json"  # under the run directory's state/


class UnderpoweredWindows(UserWarning):
    """Explicit window counts that break a promise of the plan (the message has the numbers)."""


def normal_cdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def drift_sd(sigma: float, preview_n: int, final_n: int, sigma_plain: float | None = None) -> float:
    """Standard deviation of a no-op's log drift under the matched draw (docs/windows.md): ``sigma`` the
    pairs' residual, ``sigma_plain`` the spread of the windows unequal arms leave unpaired (None: ``sigma``, an
    unmatched random split)."""
    if preview_n < 1 or final_n < 1:
        raise ValueError("window counts must be positive")
    plain = sigma if sigma_plain is None else sigma_plain
    small, large = sorted((preview_n, final_n))
    weight = (small + large) / (2 * small * large**2)
    return math.sqrt(weight * (plain**2 * (large - small) + sigma**2 * (large + small)))


def noop_false_alarm(
    sigma: float, preview_n: int, final_n: int, band: tuple[float, float], sigma_plain: float | None = None
) -> float:
    """Probability that a no-op's drift final/preview falls outside ``band`` (``drift_sd``'s arguments)."""
    lo, hi = band
    if not 0 < lo < 1 < hi:
        raise ValueError(f"drift band must satisfy 0 < lo < 1 < hi, got {band}")
    sd = drift_sd(sigma, preview_n, final_n, sigma_plain)
    if sd <= 0:
        return 0.0
    return normal_cdf(math.log(lo) / sd) + normal_cdf(-math.log(hi) / sd)


def drift_quantile_band(
    sigma: float, preview_n: int, final_n: int, coverage: float = 0.95, sigma_plain: float | None = None
) -> tuple[float, float]:
    """The central ``coverage`` interval of a no-op's drift: what five calibration runs should mostly sit in."""
    sd = drift_sd(sigma, preview_n, final_n, sigma_plain)
    z = _normal_quantile(0.5 + coverage / 2)
    return (math.exp(-z * sd), math.exp(z * sd))


def ci_half_width_at_edge(final_n: int, acceptance_max: float, edit_cv: float = DEFAULT_EDIT_CV) -> float:
    """Expected log-space CI half-width of the ratio for an edit whose ratio sits at ``acceptance_max``."""
    return CI_Z * edit_cv * math.log(acceptance_max) / math.sqrt(final_n)


def _normal_quantile(p: float) -> float:
    """Inverse of ``normal_cdf`` by bisection (pure, no scipy)."""
    if not 0 < p < 1:
        raise ValueError(f"p must be in (0, 1), got {p}")
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if normal_cdf(mid) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


@dataclass(frozen=True)
class PlanInputs:
    """What the plan depends on. ``sigma``: the spread a matched draw leaves per window (nats, ``matched_sigma``);
    ``sigma_plain``: the plain per-window spread, which the windows of unequal arms left unpaired add (None:
    ``sigma``, as for an unmatched draw); both from the pilot of ``pilot_windows``."""

    sigma: float
    seq_len: int
    acceptance: tuple[float, float]
    drift_band: tuple[float, float] = (0.95, 1.05)
    min_tokens: int = 50_000
    tier_floor: tuple[int, int] = (180, 180)
    pool_windows: int | None = None  # windows the corpus offers (None: a hub dataset, not ours to count)
    runs: int = 1  # the most runs any scenario of the model has: disjoint draws want runs * n windows
    false_alarm: float = DEFAULT_FALSE_ALARM
    resolution: float = DEFAULT_RESOLUTION
    edit_cv: float = DEFAULT_EDIT_CV
    pilot_windows: int = 0
    pilot_mean_nll: float | None = None
    sigma_estimate: float | None = None  # the pilot's point estimate when ``sigma`` is its 90% upper bound (planned on)
    sigma_plain: float | None = None
    sigma_plain_estimate: float | None = None  # likewise for ``sigma_plain``


@dataclass(frozen=True)
class WindowPlan:
    preview_n: int
    final_n: int
    chosen_by: str  # "auto" or "explicit"
    inputs: PlanInputs
    false_alarm: float  # P(no-op drift outside the band) per run
    drift_95: tuple[float, float]  # central 95% of a no-op's drift
    ci_half_width_at_edge: float  # log-space, for an edit at the acceptance edge
    tokens: int  # predicted tokens over both arms
    needs: dict[str, int] = field(default_factory=dict)  # per criterion: the windows per arm it asks for
    false_alarm_estimate: float | None = None  # the same probability at the pilot's point estimate of sigma
    problems: tuple[str, ...] = ()  # what explicit counts fail to deliver (empty: adequately powered)
    notes: tuple[str, ...] = ()

    @property
    def underpowered(self) -> bool:
        return bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["underpowered"] = self.underpowered
        return data

    def summary(self) -> str:
        """One line: the counts and why."""
        i = self.inputs
        why = ", ".join(f"{k} {v}" for k, v in self.needs.items())
        if i.pilot_windows and i.sigma_estimate is not None:
            spread = (
                f"matched drift spread {i.sigma_estimate:.4f} nats from a pilot of {i.pilot_windows} windows, planned on its 90% "
                f"upper bound {i.sigma:.4f} (false alarm at the estimate {self.false_alarm_estimate:.2e})"
            )
        elif i.pilot_windows:
            spread = f"drift spread {i.sigma:.4f} nats from a pilot of {i.pilot_windows} windows"
        else:
            spread = f"sigma {i.sigma:.4f} nats (given)"
        unpaired = abs(self.preview_n - self.final_n)
        if unpaired:
            spread += (
                f"; unequal arms: {unpaired} window{'s' if unpaired > 1 else ''} unpaired, at the plain spread "
                f"{i.sigma if i.sigma_plain is None else i.sigma_plain:.4f}"
            )
        return (
            f"{self.preview_n}+{self.final_n} windows ({self.chosen_by}) of {i.seq_len} tokens: {spread}; "
            f"no-op drift false alarm {self.false_alarm:.2e} per run (band {list(i.drift_band)}, 95% of no-op "
            f"drifts in [{self.drift_95[0]:.4f}, {self.drift_95[1]:.4f}]); CI half-width at the acceptance edge "
            f"{i.acceptance[1]} ~ {self.ci_half_width_at_edge:.4f} log "
            f"({self.ci_half_width_at_edge / math.log(i.acceptance[1]):.0%} of its distance from 1); "
            f"{self.tokens} tokens; needs per arm: {why}"
        )


def _needs(inputs: PlanInputs) -> dict[str, int]:
    tokens_per_window = max(1, inputs.seq_len - 1)
    needs = {
        "tier_floor": max(inputs.tier_floor),
        "token_floor": math.ceil(inputs.min_tokens / (2 * tokens_per_window)),
        "drift": _drift_need(inputs),
        "ci_at_edge": math.ceil((CI_Z * inputs.edit_cv / inputs.resolution) ** 2),
    }
    return needs


def _drift_need(inputs: PlanInputs) -> int:
    """Smallest n (both arms) with P_fa <= target; P_fa falls monotonically with n."""
    if noop_false_alarm(inputs.sigma, 1, 1, inputs.drift_band) <= inputs.false_alarm:
        return 1
    lo, hi = 1, 1
    while noop_false_alarm(inputs.sigma, hi, hi, inputs.drift_band) > inputs.false_alarm:
        lo, hi = hi, hi * 2
        if hi > MAX_WINDOWS:
            return MAX_WINDOWS
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if noop_false_alarm(inputs.sigma, mid, mid, inputs.drift_band) <= inputs.false_alarm:
            hi = mid
        else:
            lo = mid
    return hi


def _check(inputs: PlanInputs) -> None:
    for name in ("sigma", "sigma_plain"):
        value = getattr(inputs, name)
        if value is not None and not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be a finite non-negative number, got {value}")
    if inputs.seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {inputs.seq_len}")
    if not 0 < inputs.false_alarm < 1 or not 0 < inputs.resolution < 1 or inputs.edit_cv <= 0:
        raise ValueError("false_alarm and resolution must be in (0, 1) and edit_cv positive")
    if not 0 < inputs.acceptance[0] < 1 < inputs.acceptance[1]:
        raise ValueError(f"acceptance must satisfy 0 < min < 1 < max, got {inputs.acceptance}")


def _evaluate(
    inputs: PlanInputs, preview_n: int, final_n: int, chosen_by: str, needs: dict[str, int], notes: list[str]
) -> WindowPlan:
    fa = noop_false_alarm(inputs.sigma, preview_n, final_n, inputs.drift_band, inputs.sigma_plain)
    tokens = (preview_n + final_n) * (inputs.seq_len - 1)
    problems = []
    if preview_n < inputs.tier_floor[0] or final_n < inputs.tier_floor[1]:
        problems.append(f"below the tier floor {inputs.tier_floor[0]}+{inputs.tier_floor[1]} (InvarLock aborts the run)")
    if tokens < inputs.min_tokens:
        problems.append(f"{tokens} tokens, under the primary-metric gate's floor of {inputs.min_tokens}")
    if fa > inputs.false_alarm:
        problems.append(
            f"a no-op fails the drift gate with probability {fa:.2%} per run (target {inputs.false_alarm:.2%}; "
            f"{needs['drift']}+{needs['drift']} windows would meet it)"
        )
    half = ci_half_width_at_edge(final_n, inputs.acceptance[1], inputs.edit_cv)
    if half > inputs.resolution * math.log(inputs.acceptance[1]):
        problems.append(
            f"the ratio's CI at the acceptance edge is +-{half:.4f} log, over {inputs.resolution:.0%} of the "
            f"edge's distance from 1 ({needs['ci_at_edge']} final windows would meet it)"
        )
    if inputs.pool_windows is not None and (preview_n + final_n) * inputs.runs > inputs.pool_windows:
        notes.append(
            f"the corpus packs into {inputs.pool_windows} windows: {inputs.runs} runs of {preview_n + final_n} "
            "overlap (each run is still its own random draw)"
        )
    at_estimate = (
        noop_false_alarm(
            inputs.sigma_estimate,
            preview_n,
            final_n,
            inputs.drift_band,
            inputs.sigma_plain if inputs.sigma_plain_estimate is None else inputs.sigma_plain_estimate,
        )
        if inputs.sigma_estimate is not None
        else None
    )
    return WindowPlan(
        preview_n,
        final_n,
        chosen_by,
        inputs,
        fa,
        drift_quantile_band(inputs.sigma, preview_n, final_n, sigma_plain=inputs.sigma_plain),
        half,
        tokens,
        needs,
        at_estimate,
        tuple(problems),
        tuple(notes),
    )


def plan_windows(inputs: PlanInputs) -> WindowPlan:
    """The smallest equal preview/final counts that meet every criterion (capped by the corpus, with a note)."""
    _check(inputs)
    needs = _needs(inputs)
    n = max(needs.values())
    notes: list[str] = []
    if inputs.pool_windows is not None and 2 * n > inputs.pool_windows:
        capped = inputs.pool_windows // 2
        notes.append(f"wanted {n}+{n} windows but the corpus packs into {inputs.pool_windows}: capped at {capped}+{capped}")
        n = capped
    return _evaluate(inputs, n, n, "auto", needs, notes)


def assess(inputs: PlanInputs, preview_n: int, final_n: int) -> WindowPlan:
    """The same numbers for explicit counts; ``problems`` lists what they fail to deliver."""
    _check(inputs)
    return _evaluate(inputs, preview_n, final_n, "explicit", _needs(inputs), [])


def pilot_sigma(window_nll: Sequence[float]) -> tuple[float, float]:
    """(mean, sample std) of per-window mean NLLs; at least 2 finite values."""
    finite = [float(x) for x in window_nll if math.isfinite(x)]
    if len(finite) < 2:
        raise ValueError(f"the pilot needs at least 2 finite window NLLs, got {len(finite)}")
    return statistics.fmean(finite), statistics.stdev(finite)


def paired_sigma(first: Sequence[float], second: Sequence[float]) -> float:
    """The spread that drives a paired draw's drift, whose coin flips give each pair's difference a random sign:
    sqrt(mean((x_a - x_b)^2) / 2) over the pairs (the plain per-window std when a pair's two windows are
    unrelated). The root mean square, not the standard deviation: sorted neighbours always differ with the same
    sign, and the spread around their mean difference understates the draw's (by ~13% on 128 normal windows)."""
    diffs = [a - b for a, b in zip(first, second, strict=True) if math.isfinite(a) and math.isfinite(b)]
    if len(diffs) < 2:
        raise ValueError(f"the pilot needs at least 2 finite window pairs, got {len(diffs)}")
    return math.sqrt(statistics.fmean(d * d for d in diffs) / 2)


def matched_sigma(window_nll: Sequence[float], scorer_noise: float = SCORER_NOISE) -> float:
    """The spread left in a matched draw's drift: windows sorted by NLL, neighbours paired (``paired_sigma``),
    combined with ``scorer_noise`` (the scoring pass is not InvarLock's own pass to the last bit)."""
    ranked = sorted(float(x) for x in window_nll if math.isfinite(x))
    pairs = len(ranked) // 2
    return math.hypot(paired_sigma(ranked[0::2][:pairs], ranked[1::2][:pairs]), scorer_noise)


def sigma_upper_bound(sigma: float, samples: int, confidence: float = 0.90) -> float:
    """One-sided upper confidence bound on a standard deviation estimated from ``samples`` values (chi-square,
    Wilson-Hilferty approximation): sigma * sqrt((k - 1) / chi2_{1-confidence}(k - 1))."""
    k = samples - 1
    if k < 1:
        raise ValueError(f"need at least 2 samples, got {samples}")
    z = _normal_quantile(1 - confidence)
    chi2 = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    return sigma * math.sqrt(k / max(chi2, 1e-12))


def scaled_sigma(sigma: float, from_seq_len: int, to_seq_len: int) -> float:
    """A sigma measured at one window length carried to another as if token NLLs were independent
    (sigma ~ 1/sqrt(seq_len)); real text is positively correlated, so this is optimistic for longer windows."""
    return sigma * math.sqrt(from_seq_len / to_seq_len)


def plan_lines(run_dir: Any, models: Sequence[Any], *, recorded_only: bool = False) -> list[str]:
    """What ``--gpu-plan`` prints about windows: each model's recorded plan (``state/window_plan.json``, written by
    the worker after its pilot pass), else the settings the pilot will plan or assess (``recorded_only``: the
    recorded plans alone, as the end-of-session summary shows them)."""
    import json
    from pathlib import Path

    try:
        recorded = json.loads((Path(run_dir) / "state" / PLAN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        recorded = {}
    lines = []
    for model in models:
        settings, entry = model.settings, recorded.get(model.name)
        if recorded_only and not (isinstance(entry, dict) and "summary" in entry):
            continue
        if settings.dataset != "local":
            lines.append(
                f"{model.name}: {settings.preview_windows}+{settings.final_windows} windows of "
                f"{settings.dataset} (hub dataset: not planned, seed 41 + run)"
            )
        elif isinstance(entry, dict) and "summary" in entry:
            flag = " UNDERPOWERED: " + "; ".join(entry.get("problems") or []) if entry.get("underpowered") else ""
            lines.append(f"{model.name}: {entry['summary']} (recorded){flag}")
        elif settings.windows == "auto":
            lines.append(
                f"{model.name}: windows auto: planned from a pilot pass of the baseline "
                f"({PILOT_WINDOWS_DOC} windows) on first use"
            )
        else:
            lines.append(
                f"{model.name}: {settings.preview_windows}+{settings.final_windows} windows (explicit; "
                "assessed against a pilot pass on first use)"
            )
    return lines


PILOT_WINDOWS_DOC = 128  # worker.windows.PILOT_WINDOWS (the worker's pilot size), repeated to stay torch-free


def main(argv: Sequence[str] | None = None) -> int:
    """Print a plan: ``python -m pytest_invarlock.campaign.window_planner --sigma 0.3 --seq-len 512``."""
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.campaign.window_planner", description=main.__doc__)
    parser.add_argument("--sigma", type=float, required=True, help="per-window spread of mean NLL a matched draw leaves (nats)")
    parser.add_argument(
        "--sigma-plain",
        type=float,
        default=None,
        help="plain per-window spread, which unequal arms' unpaired windows add (default: --sigma, an unmatched draw)",
    )
    parser.add_argument("--seq-len", type=int, required=True)
    parser.add_argument("--acceptance", type=float, nargs=2, default=(0.90, 1.20))
    parser.add_argument("--drift-band", type=float, nargs=2, default=(0.95, 1.05))
    parser.add_argument("--min-tokens", type=int, default=50_000)
    parser.add_argument("--tier-floor", type=int, nargs=2, default=(180, 180))
    parser.add_argument("--false-alarm", type=float, default=DEFAULT_FALSE_ALARM)
    parser.add_argument("--windows", type=int, nargs=2, default=None, help="assess explicit preview/final counts")
    args = parser.parse_args(argv)
    inputs = PlanInputs(
        sigma=args.sigma,
        sigma_plain=args.sigma_plain,
        seq_len=args.seq_len,
        acceptance=tuple(args.acceptance),
        drift_band=tuple(args.drift_band),
        min_tokens=args.min_tokens,
        tier_floor=tuple(args.tier_floor),
        false_alarm=args.false_alarm,
    )
    plan = assess(inputs, *args.windows) if args.windows else plan_windows(inputs)
    print(plan.summary())
    for problem in plan.problems:
        print(f"  underpowered: {problem}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
