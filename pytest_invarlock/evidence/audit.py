"""The campaign checks on a pack, on top of InvarLock's: record seals, records against certificates, Phase 0.

Run on a pack whose files InvarLock's verifier has accepted (so each is the file that was signed):

1. every `records/*.json` passes the store's seal check (`store.read_json_sealed`) and is named
   after its `param_id`;
2. every record with an InvarLock verdict agrees with its certificate, `reports/<param_id>/
   evaluation.report.json`, read as the worker read it: overall pass, failed gates, validation flags,
   ratio, CI, drift, degraded, invalid, spectral caps applied, no failure, and the flagged / detected /
   signal / met judgement `campaign.judging` derives from them. A record without a certificate must carry the
   failure that explains it (InvarLock wrote no report) and be flagged; a certificate without a record
   is refused too;
3. the Phase 0 block recomputed from the records (`verdict.compile`) equals the one in
   `reports/final_verdict.json`, the pack's signed subject.

Pure: the certificate parser is passed in (the CLI passes the worker's, which imports InvarLock).
`pack` uses the Phase 0 recomputation to refuse a run directory whose records no longer give its verdict.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.judging import Reactions, expectation_met
from pytest_invarlock.store import DamagedError, read_json_sealed
from pytest_invarlock.verdict.compile import campaign_options, compile_records

RECORDS_DIR = "records"
VERDICT_FILE = "reports/final_verdict.json"
CERTIFICATE = "evaluation.report.json"
# record field -> the field of the verdict parsed from its certificate (worker.certifier.Verdict)
COMPARED = {
    "overall_pass": "overall_pass",
    "failed_gates": "failed_gates",
    "flags": "flags",
    "ratio": "ratio_vs_baseline",
    "ci": "display_ci",
    "drift": "drift",
    "degraded": "degraded",
    "invalid": "invalid",
    "caps_applied": "spectral_caps_applied",
    "flagged": "flagged",
    "detected": "detected",
    "signal": "signal",
    "failure": "failure",
}

# A certificate parsed into the worker's verdict fields plus flagged/detected/signal.
ParseCertificate = Callable[[Path], Mapping[str, Any]]


@dataclass
class Findings:
    problems: list[str] = field(default_factory=list)
    records: int = 0
    certificates: int = 0
    phase0: str = ""


def normal(value: Any) -> Any:
    """JSON-normal form (tuples as lists, keys as strings), so values parsed twice compare equal."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def certificate_rel(param_id: str) -> str:
    return f"reports/{param_id}/{CERTIFICATE}"


def recompute_phase0(records: Sequence[Mapping[str, Any]], verdict: Mapping[str, Any]) -> dict[str, Any]:
    """The Phase 0 block of `records`, compiled with the inputs final_verdict.json says it was made with."""
    compiled = compile_records(list(records), **campaign_options(verdict.get("campaign") or {}))
    block: dict[str, Any] = normal(compiled.phase0.to_dict())
    return block


def contradictions(record: Mapping[str, Any], certificate: Mapping[str, Any]) -> list[str]:
    """Where a record says something its certificate does not (empty when they agree). An informational
    injection's probe (its RMT or VE sidecar, `probe_signal`) adds a signal no certificate shows."""
    if record.get("probe_signal"):
        certificate = {**certificate, "signal": True}
    found = [
        f"{name} is {normal(record.get(name))!r} in the record, {normal(certificate.get(source))!r} in the certificate"
        for name, source in COMPARED.items()
        if normal(record.get(name)) != normal(certificate.get(source))
    ]
    reacted = Reactions(bool(certificate.get("flagged")), bool(certificate.get("detected")), bool(certificate.get("signal")))
    # Records do not name the scenario's detectors: a gating stress edit's `met` may go either way when flagged.
    possible = {expectation_met(str(record.get("expectation")), reacted, hit) for hit in (None, True, False)}
    if record.get("met") not in possible:
        found.append(
            f"met is {record.get('met')!r} in the record; the certificate gives {sorted(possible)} for expectation {record.get('expectation')!r}"
        )
    return found


def _read_records(root: Path, findings: Findings) -> tuple[list[dict[str, Any]], set[str]]:
    """The records whose seal holds, and the param_ids of those refused (each refusal is a finding)."""
    records, refused = [], set()
    for path in sorted((root / RECORDS_DIR).glob("*.json")):
        rel = path.relative_to(root).as_posix()
        try:
            record = read_json_sealed(path)
        except DamagedError as exc:
            findings.problems.append(str(exc).replace(str(path), rel))
            refused.add(path.stem)
            continue
        if record.get("param_id") != path.stem:
            findings.problems.append(f"{rel}: names param_id {record.get('param_id')!r}, not {path.stem!r}")
            refused.add(path.stem)
            continue
        records.append(record)
    findings.records = len(records)
    return records, refused


def _check_certificates(
    root: Path, records: Sequence[Mapping[str, Any]], refused: set[str], parse: ParseCertificate, findings: Findings
) -> None:
    expected = {certificate_rel(pid) for pid in refused}  # already reported through their record
    for record in records:
        if "overall_pass" not in record:
            continue  # no InvarLock verdict: a benchmark, an errored or a skipped item
        pid = str(record["param_id"])
        rel = certificate_rel(pid)
        if not record.get("report"):
            if record.get("failure") is None or not record.get("flagged"):
                findings.problems.append(f"records/{pid}.json: has a verdict but no certificate, and no failure that explains it")
            continue
        expected.add(rel)
        if not (root / rel).is_file():
            findings.problems.append(f"{rel}: missing (records/{pid}.json names a report)")
            continue
        try:
            certificate = parse(root / rel)
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            findings.problems.append(f"{rel}: cannot be read as an InvarLock report ({type(exc).__name__}: {exc})")
            continue
        findings.certificates += 1
        findings.problems.extend(f"records/{pid}.json contradicts {rel}: {line}" for line in contradictions(record, certificate))
    for orphan in sorted({p.relative_to(root).as_posix() for p in root.glob(f"reports/*/{CERTIFICATE}")} - expected):
        findings.problems.append(f"{orphan}: a certificate without a record that names it")


def audit(root: Path, parse: ParseCertificate) -> Findings:
    """All campaign checks on the unpacked pack at `root`."""
    findings = Findings()
    records, refused = _read_records(root, findings)
    _check_certificates(root, records, refused, parse, findings)
    try:
        verdict = json.loads((root / VERDICT_FILE).read_text(encoding="utf-8"))
        block = recompute_phase0(records, verdict)
    except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
        findings.problems.append(f"{VERDICT_FILE}: the Phase 0 block cannot be recomputed ({type(exc).__name__}: {exc})")
        return findings
    findings.phase0 = f"{block.get('status')} (score {block.get('score', 0):.1f}/100)"
    if normal(verdict.get("phase0")) != block:
        findings.problems.append(f"{VERDICT_FILE}: its Phase 0 block differs from the one recomputed from the records")
    return findings
