"""Judge one InvarLock verdict against its scenario's expectation, and explain it in words.

Pure: it reads a `Verdict` (the certifier's plain dataclass) and a `Scenario`. The rules are the
seed suite's per-certificate rules (shared/reference/verdict.md): a run is flagged when overall pass
is false or the primary metric is degraded or invalid (the suite's stricter overall pass); an error is detected when flagged or invariants fail;
a gating stress edit must be flagged by one of its detectors (any gate when none are listed); an
informational scenario records a signal (a gate flip, a remediation such as spectral caps applied, or
its probe sidecar's signal: rmt_probe.json / ve_probe.json of the informational error injections).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pytest_invarlock.campaign.suite import Scenario

if TYPE_CHECKING:  # the certifier imports invarlock; judging itself stays pure
    from pytest_invarlock.worker.certifier import Verdict


@dataclass(frozen=True)
class Judgement:
    met: bool
    flagged: bool
    detected: bool
    signal: bool
    explanation: str


def remediations(verdict: Verdict) -> int:
    """Guard interventions that do not flip a gate (spectral caps applied)."""
    return verdict.spectral_caps_applied or 0


def judge(scenario: Scenario, verdict: Verdict, probe_signal: bool = False) -> Judgement:
    failed = list(verdict.failed_gates)
    # The reference's stricter overall pass also requires a primary metric that is not invalid.
    flagged = verdict.failure is not None or not verdict.overall_pass or verdict.degraded or verdict.invalid
    detected = flagged or verdict.flags.get("invariants_pass") is False
    signal = flagged or remediations(verdict) > 0 or probe_signal
    expectation = scenario.expectation
    if expectation == "pass":
        met = verdict.failure is None and verdict.overall_pass and not verdict.degraded and not verdict.invalid
    elif expectation == "detect":
        met = detected
    elif expectation == "fail":
        hit = [d for d in scenario.detectors if d in failed] if scenario.detectors else failed
        met = flagged and (bool(hit) or not scenario.detectors)
    else:
        met = True
    return Judgement(met, flagged, detected, signal, explain(scenario, verdict, met=met))


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
