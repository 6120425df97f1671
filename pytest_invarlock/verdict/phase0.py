"""Phase 0 verdict math: confusion matrix, Wilson interval, confidence score, status.

The formulas are the seed suite's result compiler (shared/reference/verdict.md),
kept as pure functions over plain records so the torch-free controller can
compile the verdict and hypothesis can test it. Standard library only: no torch,
no pytest, no invarlock.

Where this module deliberately differs from the seed, the docstring says why:
an empty sample gets the maximal Wilson interval (0, 1) instead of (0, 0), and
the confusion matrix counts runs (one per certificate) instead of collapsing
the runs of one edit into a single any-flagged row.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Truth = Literal["regression", "expectation"]

TRUTH_SOURCE_LABELS: dict[str, str] = {
    "regression": "lm-eval regression",
    "expectation": "scenario expectation",
}

BENCHMARK_SIZES: dict[str, int] = {
    "mmlu": 14042,
    "hellaswag": 10042,
    "arc_challenge": 2590,
    "winogrande": 1767,
}
DEFAULT_BENCHMARK_SIZE = 1000

WILSON_Z = 1.96
PASS_ACCURACY = 0.6
PASS_ERROR_DETECTION = 0.8


# ---------------------------------------------------------------- statistics


def wilson_interval(successes: int, n: int, z: float = WILSON_Z) -> tuple[float, float]:
    """Wilson score interval for successes/n, clipped to [0, 1].

    n == 0 returns (0.0, 1.0): with no observations every rate is possible. The
    seed returned (0, 0), a zero-width interval that awarded an empty run the
    full 25 "narrow interval" points of the confidence score.
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(
            f"wilson_interval needs 0 <= successes <= n, got successes={successes}, n={n}. "
            "Pass the number of hits and the number of trials (both counts, not rates)."
        )
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt((p * (1 - p) + z2 / (4 * n)) / n)
    denom = 1 + z2 / n
    # In exact arithmetic the interval contains p; min/max keep that true
    # under rounding at p = 0 and p = 1.
    lower = min(max(0.0, (centre - margin) / denom), p)
    upper = max(min(1.0, (centre + margin) / denom), p)
    return (lower, upper)


def regression_se(baseline_acc: float, n: int) -> float:
    """Binomial standard error of a benchmark accuracy, p clamped to [0.001, 0.999].

    The clamp keeps a perfect (or zero) baseline from having SE 0, which would
    turn any rounding difference into a regression.
    """
    if n <= 0:
        raise ValueError(
            f"regression_se needs a positive benchmark size, got n={n}. "
            f"Use benchmark_size(task) (default {DEFAULT_BENCHMARK_SIZE}) for the number of items."
        )
    p = min(max(baseline_acc, 0.001), 0.999)
    return math.sqrt(p * (1 - p) / n)


def benchmark_size(task: str) -> int:
    """Number of items the seed assumed for a benchmark (1000 when unknown)."""
    return BENCHMARK_SIZES.get(task, DEFAULT_BENCHMARK_SIZE)


def is_regression(baseline_acc: float, edited_acc: float, n: int) -> bool:
    """True when the edited accuracy fell more than two standard errors below baseline."""
    return edited_acc - baseline_acc < -2 * regression_se(baseline_acc, n)


def regressed_tasks(
    baseline: Mapping[str, float],
    edited: Mapping[str, float],
    sizes: Mapping[str, int] | None = None,
) -> list[str]:
    """Benchmarks (present in both score maps) on which the edit regressed, sorted.

    An edit regressed when this list is non-empty; when the maps share no task
    there is no lm-eval result to judge by, which callers record as None.
    `sizes` gives the number of items actually scored per task (a local task's
    own size, or a --limit); tasks missing from it use the seed's sizes.
    """
    sizes = sizes or {}
    return sorted(
        task
        for task in baseline.keys() & edited.keys()
        if is_regression(baseline[task], edited[task], sizes.get(task) or benchmark_size(task))
    )


# ---------------------------------------------------------------- outcomes


@dataclass(frozen=True)
class EditOutcome:
    """One certificate of an edited model.

    flagged follows the per-certificate rule (overall pass false, or primary
    metric degraded); regressed is the lm-eval verdict, None without a result;
    expected_regression is the scenario's expectation (stress True, clean False).
    """

    model: str
    scenario: str
    run: int
    flagged: bool
    regressed: bool | None
    expected_regression: bool
    degraded: bool
    informational: bool


@dataclass(frozen=True)
class ErrorOutcome:
    """One certificate of an error-injected model.

    degraded is recorded but does not make the phase DEGRADED: an injected NaN
    is expected to break the primary metric, which is the detection itself.
    """

    model: str
    scenario: str
    run: int
    detected: bool
    degraded: bool


# ---------------------------------------------------------------- confusion


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix with "regression" as the positive class and "flagged" as the prediction.

    excluded counts outcomes that had no truth value (no lm-eval result) and so
    sit in no cell. Every rate is 0.0 when its denominator is 0, as in the seed.
    """

    tp: int
    fp: int
    tn: int
    fn: int
    excluded: int = 0

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.tn + self.fn

    @property
    def accuracy(self) -> float:
        return _ratio(self.tp + self.tn, self.total)

    @property
    def precision(self) -> float:
        return _ratio(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return _ratio(self.tp, self.tp + self.fn)

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


def confusion(outcomes: Iterable[EditOutcome], truth: Truth) -> Confusion:
    """Count the outcomes into the four cells against the chosen truth.

    truth="regression" uses each outcome's lm-eval verdict and excludes those
    without one; truth="expectation" uses the scenario expectation. The caller
    decides which outcomes are scored (phase0_verdict drops informational ones).
    """
    if truth not in TRUTH_SOURCE_LABELS:
        raise ValueError(
            f"confusion(truth={truth!r}) is not a truth source. Use 'regression' to judge by "
            "the lm-eval results or 'expectation' to judge by the scenario expectations."
        )
    cells = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "excluded": 0}
    for outcome in outcomes:
        actual = outcome.regressed if truth == "regression" else outcome.expected_regression
        if actual is None:
            cells["excluded"] += 1
        elif actual:
            cells["tp" if outcome.flagged else "fn"] += 1
        else:
            cells["fp" if outcome.flagged else "tn"] += 1
    return Confusion(**cells)


# ---------------------------------------------------------------- confidence


def confidence_score(total: int, error_total: int, accuracy_ci_width: float, f1: float) -> float:
    """Seed confidence score, 0-100: four 25-point parts.

    Sample size (log-scaled, full at 64 scored edits), error runs (full at 16),
    narrowness of the accuracy interval, and F1.
    """
    sample = 25 * min(math.log1p(max(total, 0)) / math.log(65), 1.0)
    errors = 25 * min(math.log1p(max(error_total, 0)) / math.log(17), 1.0)
    narrow = 25 * (1 - min(max(accuracy_ci_width, 0.0), 1.0))
    balance = 25 * min(max(f1, 0.0), 1.0)
    return sample + errors + narrow + balance


def confidence_level(score: float) -> str:
    """HIGH >= 85, MEDIUM >= 70, LOW >= 50, else VERY_LOW."""
    for floor, level in ((85, "HIGH"), (70, "MEDIUM"), (50, "LOW")):
        if score >= floor:
            return level
    return "VERY_LOW"


# ---------------------------------------------------------------- verdict


def _percent(value: float) -> str:
    return f"{100 * value:.1f}%"


@dataclass(frozen=True)
class Phase0:
    """The counts a Phase 0 verdict rests on; every rate and the status derive from them."""

    confusion: Confusion
    truth_source: str
    error_total: int
    error_detected: int
    degraded_count: int
    informational_total: int
    informational_flagged: int

    @property
    def accuracy(self) -> float:
        return self.confusion.accuracy

    @property
    def precision(self) -> float:
        return self.confusion.precision

    @property
    def recall(self) -> float:
        return self.confusion.recall

    @property
    def f1(self) -> float:
        return self.confusion.f1

    @property
    def accuracy_ci(self) -> tuple[float, float]:
        c = self.confusion
        return wilson_interval(c.tp + c.tn, c.total)

    @property
    def error_detection_rate(self) -> float:
        """detected / error runs; 0.0 without error runs, so the phase cannot pass
        without having shown that it catches errors (as in the seed)."""
        return _ratio(self.error_detected, self.error_total)

    @property
    def error_detection_ci(self) -> tuple[float, float]:
        return wilson_interval(self.error_detected, self.error_total)

    @property
    def signal_fraction(self) -> float | None:
        """Share of informational runs that were flagged; None when there were none."""
        if not self.informational_total:
            return None
        return self.informational_flagged / self.informational_total

    @property
    def score(self) -> float:
        low, high = self.accuracy_ci
        return confidence_score(self.confusion.total, self.error_total, high - low, self.f1)

    @property
    def level(self) -> str:
        return confidence_level(self.score)

    @property
    def passed(self) -> bool:
        return (
            self.accuracy >= PASS_ACCURACY
            and self.error_detection_rate >= PASS_ERROR_DETECTION
            and self.degraded_count == 0
        )

    @property
    def status(self) -> str:
        if self.degraded_count:
            return "PHASE0_DEGRADED"
        return "PHASE0_VALIDATED" if self.passed else "PHASE0_FAILED"

    @property
    def verdict_confidence(self) -> str:
        """The seed's qualifier on the status, a rule of its own besides `level`."""
        score = self.score
        if self.status == "PHASE0_DEGRADED":
            return "LOW"
        if self.status == "PHASE0_FAILED":
            return "HIGH" if score >= 60 else "LOW"
        if self.accuracy >= 0.8 and score >= 75:
            return "HIGH"
        return "MEDIUM" if score >= 60 else "LOW"

    @property
    def status_line(self) -> str:
        return f"{self.status} (confidence {self.verdict_confidence}, score {self.score:.1f}/100)"

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary with a fixed key order (final_verdict.json)."""
        c = self.confusion
        return {
            "status": self.status,
            "verdict_confidence": self.verdict_confidence,
            "passed": self.passed,
            "truth_source": self.truth_source,
            "confusion": {
                "tp": c.tp, "fp": c.fp, "tn": c.tn, "fn": c.fn,
                "total": c.total, "excluded": c.excluded,
            },
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "error_total": self.error_total,
            "error_detected": self.error_detected,
            "error_detection_rate": self.error_detection_rate,
            "error_detection_ci": list(self.error_detection_ci),
            "degraded_count": self.degraded_count,
            "informational_total": self.informational_total,
            "informational_flagged": self.informational_flagged,
            "signal_fraction": self.signal_fraction,
            "score": self.score,
            "level": self.level,
        }

    def render_text(self) -> str:
        """Compact block for the pytest terminal summary and final_verdict.txt."""
        c = self.confusion
        low, high = self.accuracy_ci
        excluded = f", {c.excluded} excluded without lm-eval result" if c.excluded else ""
        signal = (
            "none"
            if self.signal_fraction is None
            else f"{self.informational_flagged}/{self.informational_total}"
            f" ({_percent(self.signal_fraction)})"
        )
        lines = [
            f"Phase 0 verdict (truth: {self.truth_source})",
            f"  {'':<12}{'regressed':>11}{'not regr.':>11}",
            f"  {'flagged':<12}{'TP ' + str(c.tp):>11}{'FP ' + str(c.fp):>11}",
            f"  {'not flagged':<12}{'FN ' + str(c.fn):>11}{'TN ' + str(c.tn):>11}",
            f"  scored edits    {c.total}{excluded}",
            f"  accuracy        {_percent(self.accuracy)}"
            f"  (Wilson 95% CI {_percent(low)} - {_percent(high)})",
            f"  precision       {_percent(self.precision)}"
            f"  recall {_percent(self.recall)}  F1 {_percent(self.f1)}",
            f"  error detection {self.error_detected}/{self.error_total}"
            f" ({_percent(self.error_detection_rate)})",
            f"  degraded runs   {self.degraded_count}",
            f"  informational   signal {signal}",
            f"  score           {self.score:.1f}/100 (level {self.level})",
            f"  {self.status_line}",
        ]
        return "\n".join(lines)


def phase0_verdict(
    edits: Iterable[EditOutcome],
    errors: Iterable[ErrorOutcome],
    *,
    degraded_other: int = 0,
) -> Phase0:
    """Compile the Phase 0 verdict from edit and error-injection outcomes.

    Informational edits are kept out of the confusion matrix (they never fail
    the run) and reported as a signal fraction. When any scored edit carries an
    lm-eval result, regression is the truth and edits without one are excluded;
    otherwise the scenario expectation stands in. Every degraded edit run counts
    towards DEGRADED, informational ones included (as in the seed), and so do
    degraded_other runs outside the matrix (calibration).
    """
    if degraded_other < 0:
        raise ValueError(
            f"degraded_other must be a count of degraded runs (>= 0), got {degraded_other}. "
            "Pass the number of calibration runs whose primary metric was degraded."
        )
    edits = list(edits)
    errors = list(errors)
    scored = [e for e in edits if not e.informational]
    informational = [e for e in edits if e.informational]
    truth: Truth = "regression" if any(e.regressed is not None for e in scored) else "expectation"
    return Phase0(
        confusion=confusion(scored, truth),
        truth_source=TRUTH_SOURCE_LABELS[truth],
        error_total=len(errors),
        error_detected=sum(e.detected for e in errors),
        degraded_count=sum(e.degraded for e in edits) + degraded_other,
        informational_total=len(informational),
        informational_flagged=sum(e.flagged for e in informational),
    )
