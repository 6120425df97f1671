"""Judge one InvarLock verdict against its scenario's expectation, and explain it in words.

Pure: it reads a `Verdict` (the certifier's plain dataclass) and a `Scenario`. The rules are the
B200 bash harness's per-certificate rules (docs/verdict.md, "The formulas"): a run is flagged when overall pass
is false or the primary metric is degraded or invalid (the suite's stricter overall pass); an error is detected when flagged or invariants fail;
a gating stress edit must be flagged by one of its detectors (any gate when none are listed); an
informational scenario records a signal (a gate flip, a remediation such as spectral caps applied, or
its probe sidecar's signal: rmt_probe.json / ve_probe.json of the informational error injections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_invarlock.campaign.suite.definitions import Scenario

if TYPE_CHECKING:  # the certifier imports invarlock; judging itself stays pure
    from pytest_invarlock.worker.certifier import Verdict


@dataclass(frozen=True)
class Judgement:
    met: bool
    flagged: bool
    detected: bool
    signal: bool
    explanation: str


@dataclass(frozen=True)
class Reactions:
    """What InvarLock's verdict says happened, whatever was expected."""

    flagged: bool
    detected: bool
    signal: bool


def remediations(verdict: Verdict) -> int:
    """Guard interventions that do not flip a gate (spectral caps applied)."""
    return verdict.spectral_caps_applied or 0


def reactions(verdict: Verdict, probe_signal: bool = False) -> Reactions:
    """What InvarLock's certificate shows; `probe_signal`: an informational injection's probe (RMT, VE) saw it."""
    # The reference's stricter overall pass also requires a primary metric that is not invalid.
    flagged = verdict.failure is not None or not verdict.overall_pass or verdict.degraded or verdict.invalid
    detected = flagged or verdict.flags.get("invariants_pass") is False
    return Reactions(flagged, detected, flagged or remediations(verdict) > 0 or probe_signal)


def expectation_met(expectation: str, reacted: Reactions, detector_hit: bool | None) -> bool:
    """Whether the reactions meet the expectation; `detector_hit`: whether one of the scenario's detectors
    is among the failed gates (None when the scenario lists no detectors: any gate will do)."""
    if expectation == "pass":
        return not reacted.flagged
    if expectation == "detect":
        return reacted.detected
    if expectation == "fail":
        return reacted.flagged and detector_hit is not False
    return True


def judge(scenario: Scenario, verdict: Verdict, probe_signal: bool = False) -> Judgement:
    reacted = reactions(verdict, probe_signal)
    hit = any(d in verdict.failed_gates for d in scenario.detectors) if scenario.detectors else None
    met = expectation_met(scenario.expectation, reacted, hit)
    return Judgement(met, reacted.flagged, reacted.detected, reacted.signal, explain(scenario, verdict, met=met))


_EXPECTED = {
    "pass": "InvarLock passes it",
    "fail": "InvarLock flags it",
    "detect": "InvarLock detects it",
    "signal": "nothing (informational: records whether any guard reacts)",
}


def explain(scenario: Scenario, verdict: Verdict, *, met: bool) -> str:
    """A few lines a person can act on: expected, said, which gates, the numbers, where the report is."""
    expected = _EXPECTED[scenario.expectation]
    if scenario.expectation == "fail" and scenario.detectors:
        expected += f" through one of {', '.join(scenario.detectors)}"
    lines = [
        f"{scenario.kind} scenario {scenario.name} ({scenario.spec}): expected {expected}; "
        f"{'as expected' if met else 'NOT as expected'}."
    ]
    if verdict.failure is not None:
        lines.append(f"InvarLock produced no report: {verdict.failure}")
    else:
        said = "PASS" if verdict.overall_pass else "FAIL"
        gates = ", ".join(verdict.failed_gates) or "none"
        lines.append(
            f"InvarLock said {said}; failed gates: {gates}"
            + (f"; primary metric degraded ({verdict.degraded_reason or 'no reason given'})" if verdict.degraded else "")
            + (f"; {remediations(verdict)} spectral cap(s) applied" if remediations(verdict) else "")
        )
        lines.append(_numbers(verdict))
    if verdict.report_path:
        lines.append(f"report: {verdict.report_path}")
    return "\n".join(lines)


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _numbers(verdict: Verdict) -> str:
    lo, hi = verdict.display_ci or (None, None)
    amin, amax = verdict.acceptance_range or (None, None)
    return (
        f"ratio {_fmt(verdict.ratio_vs_baseline)} (95% CI [{_fmt(lo)}, {_fmt(hi)}]), acceptance [{_fmt(amin, '.2f')}, "
        f"{_fmt(amax, '.2f')}]; preview {_fmt(verdict.preview, '.3f')} final {_fmt(verdict.final, '.3f')} "
        f"drift {_fmt(verdict.drift)}"
    )
