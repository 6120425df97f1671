"""Phase 0 verdict math: confusion matrix, Wilson interval, confidence score, status.

The formulas are the seed suite's result compiler (shared/reference/verdict.md),
kept as pure functions over plain records so the torch-free controller can
compile the verdict and hypothesis can test it. Standard library only: no torch,
no pytest, no invarlock.

Where this module deliberately differs from the seed, the docstring says why:
an empty sample gets the maximal Wilson interval (0, 1) instead of (0, 0); the
truth is chosen per edit (lm-eval where that edit has scores, its expectation
otherwise) instead of one switch for the whole campaign; a run without a verdict
(crash, timeout) counts against its expectation instead of vanishing; PHASE0_FAILED
and PHASE0_DEGRADED carry no confidence qualifier (the seed names one only for
VALIDATED); and a campaign without error-injection runs reports error detection as
"not measured" and does not apply that criterion. Runs are counted one per
certificate, as the seed counts them; `verdict.compile` merges results that are
copies (same weights, same evaluation windows) before they get here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Truth = Literal["regression", "expectation"]
TruthMode = Literal["per-edit", "regression", "expectation"]
TRUTH_MODES = ("per-edit", "regression", "expectation")

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
# The reference judges informational scenarios "only by a minimum signal fraction" without naming
# it; 0.5 (a signal in at least half of a scenario's runs) is this project's default, set per suite
# with `min_signal_fraction:`.
DEFAULT_MIN_SIGNAL_FRACTION = 0.5


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
    """One certificate of an edited model (clean or stress), after deduplication.

    flagged follows the per-certificate rule (overall pass false, the primary metric degraded, or
    invalid); regressed is the edit's lm-eval verdict, None when that edit has no scores;
    expected_regression is the scenario's expectation (stress True, clean False). errored: the
    pipeline produced no verdict (crash, timeout, load failure); the run then counts against its
    expectation (see `predicted`). signal: a gate flip or a remediation (informational scenarios).
    """

    model: str
    scenario: str
    run: int
    flagged: bool
    regressed: bool | None
    expected_regression: bool
    degraded: bool
    informational: bool
    signal: bool = False
    errored: bool = False

    @property
    def truth(self) -> bool:
        """Per edit: the lm-eval regression where this edit has scores, the expectation otherwise."""
        return self.expected_regression if self.regressed is None else self.regressed

    @property
    def truth_source(self) -> Truth:
        return "expectation" if self.regressed is None else "regression"

    @property
    def predicted(self) -> bool:
        """The prediction that enters the matrix: flagged, or for an errored run the wrong answer
        (an error proves nothing, so it can never count as a correct verdict)."""
        return (not self.truth) if self.errored else self.flagged


@dataclass(frozen=True)
class ErrorOutcome:
    """One certificate of an error-injected model.

    An errored run (the pipeline crashed, no verdict) is not detected. degraded is recorded but does
    not make the phase DEGRADED: an injected NaN is expected to break the primary metric.
    """

    model: str
    scenario: str
    run: int
    detected: bool
    degraded: bool
    errored: bool = False


@dataclass(frozen=True)
class NoopOutcome:
    """One calibration run (the baseline against itself): InvarLock failing it is a no-op false alarm.

    gates names what failed (InvarLock's gates, or 'degraded' / 'invalid' / 'no report' / 'pipeline error').
    """

    model: str
    run: int
    false_alarm: bool
    gates: tuple[str, ...] = ()
    degraded: bool = False


@dataclass(frozen=True)
class Accounting:
    """Where every suite item went. Lists hold (item id, reason) pairs, sorted by id."""

    suite_items: int
    with_verdict: int
    errored: tuple[tuple[str, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    not_run: tuple[str, ...] = ()
    merged: tuple[tuple[str, str], ...] = ()  # (duplicate item, the item it was merged into)
    merge_key: str = ""  # how duplicates were recognised

    def to_dict(self) -> dict[str, object]:
        return {
            "suite_items": self.suite_items,
            "with_verdict": self.with_verdict,
            "errored": [list(e) for e in self.errored],
            "skipped": [list(s) for s in self.skipped],
            "not_run": list(self.not_run),
            "merged": [list(m) for m in self.merged],
            "merge_key": self.merge_key,
        }


# ---------------------------------------------------------------- confusion


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix with "regression" as the positive class and "flagged" as the prediction.

    excluded counts outcomes that had no truth value (truth="regression" without lm-eval scores) and
    so sit in no cell. Every rate is 0.0 when its denominator is 0, as in the seed.
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


def confusion(outcomes: Iterable[EditOutcome], truth: TruthMode = "per-edit") -> Confusion:
    """Count the outcomes into the four cells against the chosen truth.

    "per-edit" (what Phase 0 uses): each edit's lm-eval regression where it has scores, its
    expectation otherwise. "regression": lm-eval only, edits without scores excluded.
    "expectation": the scenario expectation only. The caller decides which outcomes are scored
    (phase0_verdict drops informational ones).
    """
    if truth not in TRUTH_MODES:
        raise ValueError(
            f"confusion(truth={truth!r}) is not a truth source. Use 'per-edit' (lm-eval where an edit has "
            "scores, expectation otherwise), 'regression' (lm-eval only) or 'expectation' (scenario only)."
        )
    cells = {"tp": 0, "fp": 0, "tn": 0, "fn": 0, "excluded": 0}
    for outcome in outcomes:
        if truth == "per-edit":
            actual: bool | None = outcome.truth
        else:
            actual = outcome.regressed if truth == "regression" else outcome.expected_regression
        if actual is None:
            cells["excluded"] += 1
            continue
        predicted = (not actual) if outcome.errored else outcome.flagged
        if actual:
            cells["tp" if predicted else "fn"] += 1
        else:
            cells["fp" if predicted else "tn"] += 1
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


def _gate_counts(outcomes: Iterable[NoopOutcome]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for outcome in outcomes:
        if outcome.false_alarm:
            for gate in outcome.gates or ("unknown gate",):
                counts[gate] = counts.get(gate, 0) + 1
    return dict(sorted(counts.items()))


@dataclass(frozen=True)
class Phase0:
    """The outcomes a Phase 0 verdict rests on; every count, rate and the status derive from them."""

    edits: tuple[EditOutcome, ...]
    errors: tuple[ErrorOutcome, ...]
    noops: tuple[NoopOutcome, ...] = ()
    min_signal_fraction: float = DEFAULT_MIN_SIGNAL_FRACTION
    accounting: Accounting | None = None
    degraded_other: int = 0  # degraded runs known only as a count

    # ------------------------------------------------------------ counts

    @property
    def scored(self) -> tuple[EditOutcome, ...]:
        return tuple(e for e in self.edits if not e.informational)

    @property
    def informational(self) -> tuple[EditOutcome, ...]:
        return tuple(e for e in self.edits if e.informational)

    @property
    def confusion(self) -> Confusion:
        return confusion(self.scored, "per-edit")

    @property
    def truth_counts(self) -> dict[str, dict[str, int]]:
        """Scored runs and distinct edits per truth source (lm-eval regression / scenario expectation)."""
        out: dict[str, dict[str, int]] = {}
        for source in ("regression", "expectation"):
            mine = [e for e in self.scored if e.truth_source == source]
            out[source] = {"runs": len(mine), "edits": len({(e.model, e.scenario) for e in mine})}
        return out

    @property
    def truth_source(self) -> str:
        counts = self.truth_counts
        used = [TRUTH_SOURCE_LABELS[s] for s in ("regression", "expectation") if counts[s]["runs"]]
        return " + ".join(used) if used else "none (no scored edits)"

    @property
    def error_total(self) -> int:
        return len(self.errors)

    @property
    def error_detected(self) -> int:
        return sum(e.detected and not e.errored for e in self.errors)

    @property
    def error_measured(self) -> bool:
        """False when no error-injection run was part of the campaign (a suite without them, or
        all deselected/skipped): the detection criterion is then not applied (see `passed`)."""
        return self.error_total > 0

    @property
    def degraded_count(self) -> int:
        return sum(e.degraded for e in self.edits) + sum(n.degraded for n in self.noops) + self.degraded_other

    @property
    def noop_total(self) -> int:
        return len(self.noops)

    @property
    def noop_false_alarms(self) -> int:
        return sum(n.false_alarm for n in self.noops)

    @property
    def noop_gates(self) -> dict[str, int]:
        return _gate_counts(self.noops)

    @property
    def informational_total(self) -> int:
        return len(self.informational)

    @property
    def informational_signal(self) -> int:
        return sum(e.signal and not e.errored for e in self.informational)

    @property
    def signal_fraction(self) -> float | None:
        """Share of informational runs that showed a signal; None when there were none."""
        if not self.informational_total:
            return None
        return self.informational_signal / self.informational_total

    @property
    def signal_by_scenario(self) -> dict[str, dict[str, object]]:
        """Per informational scenario (model/scenario): runs, runs with a signal, fraction, met."""
        groups: dict[str, list[EditOutcome]] = {}
        for e in self.informational:
            groups.setdefault(f"{e.model}/{e.scenario}", []).append(e)
        out: dict[str, dict[str, object]] = {}
        for name in sorted(groups):
            runs = groups[name]
            hits = sum(e.signal and not e.errored for e in runs)
            fraction = hits / len(runs)
            out[name] = {"runs": len(runs), "signal": hits, "fraction": fraction, "met": fraction >= self.min_signal_fraction}
        return out

    @property
    def informational_met(self) -> bool | None:
        """Every informational scenario reached the minimum signal fraction; None without any."""
        by_scenario = self.signal_by_scenario
        return all(bool(s["met"]) for s in by_scenario.values()) if by_scenario else None

    # ------------------------------------------------------------ rates

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
    def error_detection_rate(self) -> float | None:
        """detected / error runs; None when not measured (no error runs)."""
        return self.error_detected / self.error_total if self.error_total else None

    @property
    def error_detection_ci(self) -> tuple[float, float]:
        return wilson_interval(self.error_detected, self.error_total)

    @property
    def score(self) -> float:
        low, high = self.accuracy_ci
        return confidence_score(self.confusion.total, self.error_total, high - low, self.f1)

    @property
    def level(self) -> str:
        return confidence_level(self.score)

    # ------------------------------------------------------------ status

    @property
    def passed(self) -> bool:
        """The seed's rule: accuracy >= 0.6, error detection >= 0.8, no degraded run; and (the evidence-pack
        seed's criterion) every informational scenario at its minimum signal fraction.

        When error detection was not measured (no error-injection run: the `ci` suite, or
        --no-errors) its criterion is not applied; the score still reflects it, as its error part
        is 0 of 25 points, and the block says "not measured". Without informational scenarios
        their criterion is not applied either.
        """
        rate = self.error_detection_rate
        return (
            self.accuracy >= PASS_ACCURACY
            and (rate is None or rate >= PASS_ERROR_DETECTION)
            and self.degraded_count == 0
            and self.informational_met is not False
        )

    @property
    def status(self) -> str:
        if self.degraded_count:
            return "PHASE0_DEGRADED"
        return "PHASE0_VALIDATED" if self.passed else "PHASE0_FAILED"

    @property
    def verdict_confidence(self) -> str | None:
        """The seed's qualifier, which exists only for PHASE0_VALIDATED: HIGH (accuracy >= 0.8 and
        score >= 75), MEDIUM (score >= 60), else LOW. FAILED and DEGRADED carry none."""
        if self.status != "PHASE0_VALIDATED":
            return None
        score = self.score
        if self.accuracy >= 0.8 and score >= 75:
            return "HIGH"
        return "MEDIUM" if score >= 60 else "LOW"

    @property
    def status_line(self) -> str:
        confidence = f"confidence {self.verdict_confidence}, " if self.verdict_confidence else ""
        return f"{self.status} ({confidence}score {self.score:.1f}/100)"

    # ------------------------------------------------------------ output

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary with a fixed key order (final_verdict.json, the evidence pack)."""
        c = self.confusion
        return {
            "status": self.status,
            "verdict_confidence": self.verdict_confidence,
            "passed": self.passed,
            "truth_source": self.truth_source,
            "truth_counts": self.truth_counts,
            "confusion": {
                "tp": c.tp,
                "fp": c.fp,
                "tn": c.tn,
                "fn": c.fn,
                "total": c.total,
                "excluded": c.excluded,
            },
            "accuracy": self.accuracy,
            "accuracy_ci": list(self.accuracy_ci),
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "error_measured": self.error_measured,
            "error_total": self.error_total,
            "error_detected": self.error_detected,
            "error_detection_rate": self.error_detection_rate,
            "error_detection_ci": list(self.error_detection_ci) if self.error_measured else None,
            "degraded_count": self.degraded_count,
            "noop_total": self.noop_total,
            "noop_false_alarms": self.noop_false_alarms,
            "noop_false_alarm_gates": self.noop_gates,
            "informational_total": self.informational_total,
            "informational_signal": self.informational_signal,
            "signal_fraction": self.signal_fraction,
            "min_signal_fraction": self.min_signal_fraction,
            "informational_met": self.informational_met,
            "signal_by_scenario": self.signal_by_scenario,
            "score": self.score,
            "level": self.level,
            "accounting": self.accounting.to_dict() if self.accounting else None,
        }

    def render_text(self, *, max_listed: int = 20) -> str:
        """The block for the pytest terminal summary and final_verdict.txt."""
        c = self.confusion
        low, high = self.accuracy_ci
        counts = self.truth_counts
        truth_parts = [
            f"{TRUTH_SOURCE_LABELS[s]} for {counts[s]['runs']} run(s) of {counts[s]['edits']} edit(s)"
            for s in ("regression", "expectation")
            if counts[s]["runs"]
        ]
        lines = [f"Phase 0 verdict (truth per edit: {'; '.join(truth_parts) or 'no scored edits'})"]
        acc = self.accounting
        if acc is not None:
            lines.append(
                f"  suite items     {acc.suite_items}: {acc.with_verdict} with a verdict, {len(acc.errored)} errored, "
                f"{len(acc.skipped)} skipped, {len(acc.not_run)} not run"
            )
            merged = f"{len(acc.merged)} merged" + (f" (key: {acc.merge_key})" if acc.merge_key else "")
            lines.append(f"  duplicates      {merged}")
        errored_edits = sum(e.errored for e in self.scored)
        lines += [
            f"  {'':<12}{'regressed':>11}{'not regr.':>11}",
            f"  {'flagged':<12}{'TP ' + str(c.tp):>11}{'FP ' + str(c.fp):>11}",
            f"  {'not flagged':<12}{'FN ' + str(c.fn):>11}{'TN ' + str(c.tn):>11}",
            f"  scored edits    {c.total}"
            + (f" ({errored_edits} errored, counted against their expectation)" if errored_edits else ""),
            f"  accuracy        {_percent(self.accuracy)}  (Wilson 95% CI {_percent(low)} - {_percent(high)})",
            f"  precision       {_percent(self.precision)}  recall {_percent(self.recall)}  F1 {_percent(self.f1)}",
        ]
        rate = self.error_detection_rate
        errored_errors = sum(e.errored for e in self.errors)
        lines.append(
            "  error detection not measured (no error-injection runs; criterion not applied, 0/25 score points)"
            if rate is None
            else f"  error detection {self.error_detected}/{self.error_total} ({_percent(rate)})"
            + (f", {errored_errors} errored = not detected" if errored_errors else "")
        )
        gates = ", ".join(f"{g}: {n}" for g, n in self.noop_gates.items())
        lines.append(
            f"  no-op false alarms: {self.noop_false_alarms} of {self.noop_total}" + (f" (gate {gates})" if gates else "")
        )
        lines.append(f"  degraded runs   {self.degraded_count}")
        if self.signal_fraction is None:
            lines.append("  informational   none")
        else:
            met = "met" if self.informational_met else "NOT met"
            lines.append(
                f"  informational   signal {self.informational_signal}/{self.informational_total}"
                f" ({_percent(self.signal_fraction)}); minimum {_percent(self.min_signal_fraction)} per scenario: {met}"
            )
            lines.extend(
                f"    {name}: {s['signal']}/{s['runs']}{'' if s['met'] else ' (below minimum)'}"
                for name, s in self.signal_by_scenario.items()
            )
        lines.append(f"  score           {self.score:.1f}/100 (level {self.level})")
        if acc is not None:
            for title, entries in (("errored", acc.errored), ("skipped", acc.skipped)):
                if entries:
                    lines.append(f"  {title} items:")
                    lines.extend(f"    {pid}: {_short(reason)}" for pid, reason in entries[:max_listed])
                    if len(entries) > max_listed:
                        lines.append(f"    ... and {len(entries) - max_listed} more (final_verdict.json lists all)")
            if acc.not_run:
                shown = ", ".join(acc.not_run[:max_listed])
                more = f" ... and {len(acc.not_run) - max_listed} more" if len(acc.not_run) > max_listed else ""
                lines.append(f"  not run (no record in the run directory): {shown}{more}")
        lines.append(f"  {self.status_line}")
        return "\n".join(lines)


def _short(text: str, limit: int = 160) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def phase0_verdict(
    edits: Iterable[EditOutcome],
    errors: Iterable[ErrorOutcome],
    *,
    noops: Iterable[NoopOutcome] = (),
    degraded_other: int = 0,
    min_signal_fraction: float = DEFAULT_MIN_SIGNAL_FRACTION,
    accounting: Accounting | None = None,
) -> Phase0:
    """Compile the Phase 0 verdict from edit, error-injection and calibration (no-op) outcomes.

    Informational edits are kept out of the confusion matrix and judged by their signal fraction
    against min_signal_fraction. The truth is chosen per edit (lm-eval regression where the edit
    has scores, the scenario expectation otherwise). Every degraded edit or no-op run counts
    towards DEGRADED (as in the seed); degraded_other adds runs described by a count only.
    """
    if degraded_other < 0:
        raise ValueError(
            f"degraded_other must be a count of degraded runs (>= 0), got {degraded_other}. "
            "Pass the number of calibration runs whose primary metric was degraded."
        )
    if not 0.0 <= min_signal_fraction <= 1.0:
        raise ValueError(f"min_signal_fraction must lie in [0, 1], got {min_signal_fraction}.")
    return Phase0(
        edits=tuple(edits),
        errors=tuple(errors),
        noops=tuple(noops),
        degraded_other=degraded_other,
        min_signal_fraction=min_signal_fraction,
        accounting=accounting,
    )
