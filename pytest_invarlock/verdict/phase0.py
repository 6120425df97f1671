"""Phase 0 verdict math: confusion matrix, Wilson interval, confidence score, status.

The formulas are the B200 bash harness's result compiler (docs/verdict.md, "The formulas"),
kept as pure functions over plain records so the torch-free controller can
compile the verdict and hypothesis can test it. Standard library only: no torch,
no pytest, no invarlock.

Where this module deliberately differs from the B200 bash harness, the docstring says why:
an empty sample gets the maximal Wilson interval (0, 1) instead of (0, 0); the
truth is chosen per edit (lm-eval where every configured task scored for that edit
and its baseline, its expectation otherwise) instead of one switch for the whole
campaign; a run without a verdict (crash, timeout) counts against its expectation
instead of vanishing; PHASE0_FAILED, PHASE0_DEGRADED and PHASE0_INCOMPLETE carry no
confidence qualifier (the B200 bash harness names one only for VALIDATED); VALIDATED needs every
criterion measured on every suite item it applies to (`verdict.coverage`): otherwise
the status is INCOMPLETE, or FAILED when a criterion fails whatever the missing items
give; and informational scenarios are judged only by their minimum signal fraction, the
evidence-pack harness's rule and a criterion of the status (the B200 formula has no such term).
Runs are counted one per certificate, as the B200 bash harness counts them; `verdict.compile`
merges results that are copies (same scenario, weights and evaluation windows) before
they get here.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from pytest_invarlock.verdict.coverage import UNKNOWN_ROLE, Accounting, Criterion, plural

Truth = Literal["regression", "expectation", "unknown"]
TruthMode = Literal["per-edit", "regression", "expectation"]
TRUTH_MODES = ("per-edit", "regression", "expectation")
TRUTH_SOURCES: tuple[Truth, ...] = ("regression", "expectation", "unknown")

TRUTH_SOURCE_LABELS: dict[str, str] = {
    "regression": "lm-eval regression",
    "expectation": "scenario expectation",
    "unknown": "scenario expectation (lm-eval truth unknown)",
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
    B200 bash harness returned (0, 0), a zero-width interval that awarded an empty run the
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
    """Number of items the B200 bash harness assumed for a benchmark (1000 when unknown)."""
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
    own size, or a --limit); tasks missing from it use the B200 bash harness's sizes.
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
    invalid); regressed is the edit's lm-eval verdict, None when it has none; expected_regression is
    the scenario's expectation (stress True, clean False). truth_unknown says why an edit whose suite
    configures lm-eval tasks has no lm-eval verdict (a task that did not score for it or its baseline;
    empty otherwise); truth_pending: only because benchmark items were not run yet. errored: the
    pipeline produced no verdict (crash, timeout, load failure); the run then counts against its
    expectation (see `predicted`). signal: a gate flip or a remediation (informational scenarios).
    item: the suite item (param id) it came from.
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
    item: str = ""
    truth_unknown: str = ""
    truth_pending: bool = False

    @property
    def truth(self) -> bool:
        """Per edit: the lm-eval regression where it is known, the expectation otherwise."""
        return self.expected_regression if self.regressed is None else self.regressed

    @property
    def truth_source(self) -> Truth:
        if self.regressed is not None:
            return "regression"
        return "unknown" if self.truth_unknown else "expectation"

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
    item: str = ""


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
    item: str = ""


# ---------------------------------------------------------------- confusion


def _ratio(numerator: int, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True)
class Confusion:
    """Confusion matrix with "regression" as the positive class and "flagged" as the prediction.

    excluded counts outcomes that had no truth value (truth="regression" without lm-eval scores) and
    so sit in no cell. Every rate is 0.0 when its denominator is 0, as in the B200 bash harness.
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
        cells[cell(outcome, truth)] += 1
    return Confusion(**cells)


def cell(outcome: EditOutcome, truth: TruthMode = "per-edit") -> str:
    """The cell ('tp', 'fp', 'tn', 'fn' or 'excluded') one outcome lands in against the chosen truth."""
    if truth == "per-edit":
        actual: bool | None = outcome.truth
    else:
        actual = outcome.regressed if truth == "regression" else outcome.expected_regression
    if actual is None:
        return "excluded"
    predicted = (not actual) if outcome.errored else outcome.flagged
    if actual:
        return "tp" if predicted else "fn"
    return "fp" if predicted else "tn"


# ---------------------------------------------------------------- confidence


def confidence_score(total: int, error_total: int, accuracy_ci_width: float, f1: float) -> float:
    """The B200 bash harness's confidence score, 0-100: four 25-point parts.

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

    def confusion_of(self, model: str) -> Confusion:
        """The matrix of one model's scored edits: the same outcomes, so the models' cells sum to `confusion`."""
        return confusion((e for e in self.scored if e.model == model), "per-edit")

    @property
    def truth_counts(self) -> dict[str, dict[str, int]]:
        """Scored runs and distinct edits per truth source: lm-eval regression, scenario expectation (no lm-eval
        configured), and unknown (lm-eval configured but incomplete for the edit: judged by its expectation)."""
        out: dict[str, dict[str, int]] = {}
        for source in TRUTH_SOURCES:
            mine = [e for e in self.scored if e.truth_source == source]
            if mine or source != "unknown":
                out[source] = {"runs": len(mine), "edits": len({(e.model, e.scenario) for e in mine})}
        return out

    @property
    def truth_source(self) -> str:
        counts = self.truth_counts
        used = [TRUTH_SOURCE_LABELS[s] for s in TRUTH_SOURCES if s in counts and counts[s]["runs"]]
        return " + ".join(used) if used else "none (no scored edits)"

    @property
    def truth_unknown(self) -> dict[str, str]:
        """Edit (model/scenario) -> why its lm-eval truth is unknown, for every scored edit judged by its
        expectation although its suite configures lm-eval tasks."""
        return {f"{e.model}/{e.scenario}": e.truth_unknown for e in sorted(self.scored, key=_edit_order) if e.truth_unknown}

    @property
    def error_total(self) -> int:
        return len(self.errors)

    @property
    def error_detected(self) -> int:
        return sum(e.detected and not e.errored for e in self.errors)

    @property
    def error_measured(self) -> bool:
        """Error detection was measured on every error-injection item of the suite (and it has some)."""
        return self.error_criterion.complete

    @property
    def degraded_count(self) -> int:
        """Degraded gating runs: scored edits and calibration runs. Informational edits count only through their
        signal fraction, and error injections are expected to break the primary metric."""
        return sum(e.degraded for e in self.scored) + sum(n.degraded for n in self.noops) + self.degraded_other

    @property
    def degraded_informational(self) -> int:
        """Degraded informational runs: shown, never a reason for DEGRADED."""
        return sum(e.degraded for e in self.informational)

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
        """detected / error runs; None when no error-injection run was measured."""
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

    # ------------------------------------------------------------ coverage

    def _missing(self, *roles: str) -> tuple[int, str]:
        """(suite items of these roles without a measurement, why); items of unknown role could be any."""
        acc = self.accounting
        if acc is None:
            return 0, ""
        ids = tuple(sorted({pid for role in (*roles, UNKNOWN_ROLE) for pid in acc.unmeasured(role)}))
        return len(ids), acc.why(ids)

    def _rate(
        self,
        name: str,
        limit: float,
        hits: int,
        measured: int,
        roles: tuple[str, ...],
        noun: str,
        unit: str,
        *,
        may_turn: int = 0,
    ) -> Criterion:
        """A criterion on a rate hits/measured; at best every missing item (and `may_turn` wrong ones) comes out right."""
        missing, why = self._missing(*roles)
        total = measured + missing
        return Criterion(
            name=name,
            limit=limit,
            measured=measured,
            missing=missing,
            value=hits / measured if measured else None,
            best=(hits + may_turn + missing) / total if total else None,
            noun=noun,
            why=why,
            unit=unit,
        )

    @property
    def accuracy_criterion(self) -> Criterion:
        c = self.confusion
        # A wrong edit whose lm-eval truth waits for benchmark items not run yet may still turn out right.
        pending_wrong = sum(1 for e in self.scored if e.truth_pending and not e.errored and cell(e) in ("fp", "fn"))
        return self._rate(
            "accuracy",
            PASS_ACCURACY,
            c.tp + c.tn,
            c.total,
            ("clean", "stress"),
            "clean or gating-stress edit item",
            f"of {plural(c.total, 'measured scored edit')}",
            may_turn=pending_wrong,
        )

    @property
    def error_criterion(self) -> Criterion:
        return self._rate(
            "error detection",
            PASS_ERROR_DETECTION,
            self.error_detected,
            self.error_total,
            ("error",),
            "error-injection item",
            f"({self.error_detected}/{self.error_total} detected)",
        )

    @property
    def informational_criterion(self) -> Criterion:
        """The evidence-pack harness's rule: every informational scenario shows a signal in at least the minimum
        fraction of its runs. While any informational item is unmeasured it cannot fail for certain (its
        runs may lift a scenario that is below the minimum so far)."""
        by_scenario = self.signal_by_scenario
        met = sum(bool(s["met"]) for s in by_scenario.values())
        missing, why = self._missing("informational")
        value = met / len(by_scenario) if by_scenario else None
        return Criterion(
            name="informational scenarios at the minimum signal fraction",
            limit=1.0,
            measured=len(by_scenario),
            missing=missing,
            value=value,
            best=1.0 if missing else value,
            noun="informational item",
            why=why,
            unit=f"of {plural(len(by_scenario), 'scenario')} (minimum {_percent(self.min_signal_fraction)} each)",
        )

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        """The B200 harness's Phase 0 criteria, and the evidence-pack harness's informational rule when the suite
        has informational scenarios (the only way an informational edit changes the status)."""
        acc = self.accounting
        has_informational = bool(self.informational) or (acc is not None and bool(acc.unmeasured("informational")))
        rates = (self.accuracy_criterion, self.error_criterion)
        return (*rates, self.informational_criterion) if has_informational else rates

    @property
    def complete(self) -> bool:
        """Every criterion measured on all of its suite items, and every suite item measured."""
        acc = self.accounting
        return all(c.complete for c in self.criteria) and (acc is None or acc.complete)

    # ------------------------------------------------------------ status

    @property
    def status(self) -> str:
        """DEGRADED (a degraded gating run: certain however many items are missing); FAILED (a criterion fails on
        what was measured, whatever the missing items give); INCOMPLETE (an item or a criterion not measured);
        VALIDATED (every criterion measured on every suite item it applies to, and met)."""
        if self.degraded_count:
            return "PHASE0_DEGRADED"
        if any(c.certain_fail for c in self.criteria):
            return "PHASE0_FAILED"
        return "PHASE0_VALIDATED" if self.complete else "PHASE0_INCOMPLETE"

    @property
    def passed(self) -> bool:
        return self.status == "PHASE0_VALIDATED"

    @property
    def status_reason(self) -> str:
        """Why the status is not VALIDATED, in one line ('' when it is)."""
        status = self.status
        if status == "PHASE0_DEGRADED":
            return f"{plural(self.degraded_count, 'degraded gating run')} (clean/stress edits or calibration runs)"
        if status == "PHASE0_FAILED":
            return "; ".join(c.describe() for c in self.criteria if c.certain_fail)
        if status == "PHASE0_INCOMPLETE":
            parts = [c.describe() for c in self.criteria if not c.complete]
            acc = self.accounting
            if acc is not None and not acc.complete and not parts:
                ids = acc.unmeasured_ids
                parts.append(f"{plural(len(ids), 'suite item')} not measured ({acc.why(ids)})")
            return "; ".join(parts)
        return ""

    @property
    def verdict_confidence(self) -> str | None:
        """The B200 bash harness's qualifier, which exists only for PHASE0_VALIDATED: HIGH (accuracy >= 0.8 and
        score >= 75), MEDIUM (score >= 60), else LOW. The other statuses carry none."""
        if self.status != "PHASE0_VALIDATED":
            return None
        score = self.score
        if self.accuracy >= 0.8 and score >= 75:
            return "HIGH"
        return "MEDIUM" if score >= 60 else "LOW"

    @property
    def scope(self) -> str:
        """' over K of N suite items' when the evidence covers part of the suite, else ''."""
        acc = self.accounting
        if acc is None or acc.complete:
            return ""
        return f" over {acc.measured} of {acc.suite_items} suite items"

    @property
    def status_line(self) -> str:
        confidence = f"confidence {self.verdict_confidence}, " if self.verdict_confidence else ""
        return f"{self.status}{self.scope} ({confidence}score {self.score:.1f}/100)"

    def labels(self) -> dict[str, str]:
        """Suite item -> where its outcome went in this verdict (TP/FP/TN/FN, detected, signal, no-op pass, ...):
        the one place that counts, so the CSV and the HTML show exactly the matrix of the block."""
        out: dict[str, str] = {}
        for e in self.edits:
            if e.informational:
                label = "informational: " + ("signal" if e.signal and not e.errored else "no signal")
            else:
                label = cell(e).upper()
            out[e.item] = label + (" (errored)" if e.errored else "")
        for r in self.errors:
            out[r.item] = ("detected" if r.detected and not r.errored else "not detected") + (" (errored)" if r.errored else "")
        for n in self.noops:
            out[n.item] = "no-op false alarm" if n.false_alarm else "no-op pass"
        out.pop("", None)  # outcomes built without an item id
        return out

    # ------------------------------------------------------------ output

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary with a fixed key order (final_verdict.json, the evidence pack)."""
        c = self.confusion
        acc = self.accounting
        return {
            "status": self.status,
            "verdict_confidence": self.verdict_confidence,
            "passed": self.passed,
            "truth_source": self.truth_source,
            "truth_counts": self.truth_counts,
            "status_reason": self.status_reason,
            "complete": self.complete,
            "scope": {
                "suite_items": acc.suite_items if acc else None,
                "measured": acc.measured if acc else None,
                "text": self.scope.strip() or "the whole campaign",
            },
            "criteria": [criterion.to_dict() for criterion in self.criteria],
            "truth_unknown": self.truth_unknown,
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
            "error_detection_ci": list(self.error_detection_ci) if self.error_total else None,
            "degraded_count": self.degraded_count,
            "degraded_informational": self.degraded_informational,
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
            "accounting": acc.to_dict() if acc else None,
        }

    def render_text(self, *, max_listed: int = 20) -> str:
        """The block for the pytest terminal summary and final_verdict.txt."""
        c = self.confusion
        low, high = self.accuracy_ci
        counts = self.truth_counts
        truth_parts = [
            f"{TRUTH_SOURCE_LABELS[s]} for {counts[s]['runs']} run(s) of {counts[s]['edits']} edit(s)"
            for s in TRUTH_SOURCES
            if s in counts and counts[s]["runs"]
        ]
        lines = [f"Phase 0 verdict (truth per edit: {'; '.join(truth_parts) or 'no scored edits'})"]
        acc = self.accounting
        if acc is not None:
            lines.append(
                f"  suite items     {acc.suite_items}: {acc.with_verdict} with a verdict, {len(acc.errored)} errored, "
                f"{len(acc.skipped)} skipped, {len(acc.not_run)} not run"
            )
            unmeasured = acc.unmeasured_ids
            lines.append(
                "  scope           the whole campaign: every suite item measured"
                if not unmeasured
                else f"  scope           {acc.measured} of {acc.suite_items} suite items measured, {len(unmeasured)} not "
                f"({acc.why(unmeasured)}): not the campaign's verdict"
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
        unknown = self.truth_unknown
        if unknown:
            lines.append(f"  truth unknown   {plural(len(unknown), 'edit')} judged by their expectation (lm-eval incomplete):")
            lines.extend(f"    {name}: {_short(why)}" for name, why in list(unknown.items())[:max_listed])
        rate = self.error_detection_rate
        errored_errors = sum(e.errored for e in self.errors)
        lines.append(
            "  error detection not measured"
            if rate is None
            else f"  error detection {self.error_detected}/{self.error_total} ({_percent(rate)})"
            + (f", {errored_errors} errored = not detected" if errored_errors else "")
        )
        gates = ", ".join(f"{g}: {n}" for g, n in self.noop_gates.items())
        lines.append(
            f"  no-op false alarms: {self.noop_false_alarms} of {self.noop_total}" + (f" (gate {gates})" if gates else "")
        )
        informational_degraded = self.degraded_informational
        lines.append(
            f"  degraded runs   {self.degraded_count}"
            + (f" (+{informational_degraded} informational, not counted)" if informational_degraded else "")
        )
        info_missing = acc.unmeasured("informational") if acc is not None else ()
        if self.signal_fraction is None:
            lines.append(
                f"  informational   not measured: no verdict for the suite's {plural(len(info_missing), 'informational item')} "
                f"({acc.why(info_missing)})"
                if acc is not None and info_missing
                else "  informational   none"
            )
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
        lines.append("  criteria        " + "\n                  ".join(c.describe() for c in self.criteria))
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
                lines.append(f"  not run ({acc.why(acc.not_run)}): {shown}{more}")
        lines.append(f"  {self.status_line}")
        return "\n".join(lines)


def _edit_order(e: EditOutcome) -> tuple[str, str, int]:
    return (e.model, e.scenario, e.run)


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
    against min_signal_fraction. The truth is chosen per edit (lm-eval regression where it is known,
    the scenario expectation otherwise). Every degraded scored edit or no-op run counts towards
    DEGRADED (as in the B200 bash harness); degraded_other adds runs described by a count only. Without
    `accounting` the outcomes define the campaign: a criterion without outcomes is not measured.
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
