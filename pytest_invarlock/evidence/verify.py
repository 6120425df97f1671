"""Verify an evidence pack: `python -m pytest_invarlock verify PACK --public-key KEY.pub` (or `invarlock-verify`).

PACK is a pack directory or its .tar.gz. Two layers, both must pass:

1. InvarLock's own verifier, `invarlock advanced evidence-pack verify --strict` in-process: the
   Ed25519 signature over manifest.json, pinned to the signer the reader names (--public-key,
   --expected-fingerprint or --trust-store); manifest.json binding checksums.sha256; every file's
   sha256, and no file it does not list; the digest references; `invarlock verify` of every bundled
   report. The plugin's certificates come from host-mode evaluates (their runtime manifests say
   `host-bypass`), so that nested verify runs with InvarLock's unverified-provenance allowance, and
   the output says so;
2. the campaign checks (`audit`): every record's seal, every record against its certificate, the
   Phase 0 block recomputed from the records.

Without a key it refuses to run (exit 2) unless --integrity-only is given: the public key inside a
pack proves only that the pack is intact, not who made it. Exit status: 0 when everything passes,
1 when something differs (each difference is named), 2 for a usage problem.

This is a CLI: it imports InvarLock and the worker's report parser (no torch), which the controller
never does; `audit` stays pure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.evidence.audit import Findings, audit
from pytest_invarlock.evidence.keys import KeyFileError, load_public_key
from pytest_invarlock.evidence.layout import MANIFEST, fingerprint

OK, DIFFERS, USAGE = 0, 1, 2
NO_KEY = (
    "no signer to check against: pass --public-key KEY.pem.pub (or --expected-fingerprint sha256:..., or "
    "--trust-store FILE) to check who signed the pack, or --integrity-only to check only that it is intact"
)
AUTHENTICITY = {  # InvarLock's `authenticity` of the signer
    "pinned": "the signer you named",
    "mismatch": "NOT the signer you named",
    "unpinned": "NOT checked against a signer you named (--integrity-only)",
}
HOST_PROVENANCE = (
    "(host-mode evaluates: their runtime manifests say host-bypass, not a container; InvarLock's "
    "unverified-provenance allowance was on for its nested verify)"
)


@dataclass
class Outcome:
    status: int
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0


def parse_certificate(path: Path) -> Mapping[str, Any]:
    """A certificate as the worker read it (`Verdict.from_report`) plus the judgement's reactions."""
    from pytest_invarlock.campaign.judging import reactions
    from pytest_invarlock.worker.certifier import Verdict

    verdict = Verdict.from_report(json.loads(path.read_text(encoding="utf-8")))
    reacted = reactions(verdict)
    return {**verdict.to_dict(), "flagged": reacted.flagged, "detected": reacted.detected, "signal": reacted.signal}


def invarlock_verify(root: Path, *, expected_fingerprint: str | None, trust_store: Path | None) -> dict[str, Any]:
    """InvarLock's `evidence-pack verify --strict` payload for the pack directory `root`."""
    from invarlock.evidence_pack import verify_evidence_pack
    from invarlock.runtime_provenance import configure_runtime_security

    with configure_runtime_security(allow_unverified_provenance=True):
        result = verify_evidence_pack(root, strict=True, expected_fingerprint=expected_fingerprint, trust_store_path=trust_store)
    payload: dict[str, Any] = result.payload
    return payload


def _extract(archive: Path, into: Path) -> Path:
    """Safe extraction: regular files and directories only, every path inside one top directory."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            bad = [m.name for m in members if not (m.isfile() or m.isdir())]
            if bad or len(tops) != 1:
                raise ValueError(f"links or special files {bad}" if bad else f"expected one top directory, found {sorted(tops)}")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        raise ValueError(f"{archive.name}: not a pack archive ({exc})") from None
    return into / tops.pop()


def _signer(public_key: Path | None, expected: str | None) -> str | None:
    if public_key is not None:
        return fingerprint(load_public_key(public_key))
    return expected


def _left_out(root: Path) -> list[str]:
    """Why records were left out when packing, as the manifest says (nothing when it cannot be read)."""
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        return [str(entry["reason"]) for entry in manifest.get("records_left_out") or []]
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []  # InvarLock's verifier has said what is wrong with the manifest


def check(root: Path, *, expected_fingerprint: str | None, trust_store: Path | None, integrity_only: bool) -> Outcome:
    """Both layers on the unpacked pack `root`: InvarLock's verifier, then the campaign checks."""
    if not (root / MANIFEST).is_file():
        return Outcome(DIFFERS, [f"DIFFERS: {root}: no {MANIFEST} (not an evidence pack, or it was removed)"])
    native = invarlock_verify(root, expected_fingerprint=expected_fingerprint, trust_store=trust_store)
    findings: Findings = audit(root, parse_certificate)
    lines = [*_native_lines(native), *_campaign_lines(findings)]
    lines += [f"  left out when packed: {reason}" for reason in _left_out(root)]
    if integrity_only:
        lines.append("integrity only: the pack is intact, but who signed it was NOT checked (no --public-key)")
    return Outcome(OK if native.get("ok") and not findings.problems else DIFFERS, lines)


def _native_lines(native: Mapping[str, Any]) -> list[str]:
    """InvarLock's verdict on the pack: pass or fail, who signed it, its errors and warnings, its nested verify."""
    lines = [
        "InvarLock evidence-pack verify --strict: " + ("PASS" if native.get("ok") else "FAIL"),
        f"  signer {native.get('signer_fingerprint') or 'unknown'}: {AUTHENTICITY.get(str(native.get('authenticity')), '?')}",
    ]
    lines += [f"  error: {e}" for e in native.get("errors", [])]
    lines += [f"  warning: {w}" for w in native.get("warnings", [])]
    nested = native.get("verify") or {}
    if nested:
        lines.append(_nested_line(nested))
    return lines


def _nested_line(nested: Mapping[str, Any]) -> str:
    """InvarLock's nested `verify` of the bundled reports: ok or why not, and their runtime provenance."""
    summary = nested.get("summary") or {}
    provenance = Counter(
        str(((r.get("verification") or {}).get("runtime_provenance") or {}).get("status")) for r in nested.get("results") or []
    )
    return (
        f"  nested invarlock verify of {(nested.get('evaluation_report') or {}).get('count')} reports: "
        + ("ok" if summary.get("ok") else f"FAILED ({summary.get('reason')})")
        + "; runtime provenance "
        + ", ".join(f"{status} {n}" for status, n in sorted(provenance.items()))
        + (f" {HOST_PROVENANCE}" if provenance.get("skipped") else "")
    )


def _campaign_lines(findings: Findings) -> list[str]:
    """The campaign checks' summary and each difference they found."""
    summary = (
        "campaign checks: "
        + ("PASS" if not findings.problems else f"FAIL ({len(findings.problems)})")
        + f": {findings.records} sealed records, {findings.certificates} certificates compared, "
        f"Phase 0 recomputed: {findings.phase0 or 'n/a'}"
    )
    return [summary, *(f"  DIFFERS: {problem}" for problem in findings.problems)]


def verify_pack(
    pack: Path,
    *,
    public_key: Path | None = None,
    expected_fingerprint: str | None = None,
    trust_store: Path | None = None,
    integrity_only: bool = False,
) -> Outcome:
    started = time.perf_counter()
    pack = Path(pack)
    if not pack.exists():
        return Outcome(USAGE, [f"{pack}: no such pack (give the pack directory or its .tar.gz)"])
    if public_key is None and expected_fingerprint is None and trust_store is None and not integrity_only:
        return Outcome(USAGE, [NO_KEY])
    try:
        signer = _signer(public_key, expected_fingerprint)
    except KeyFileError as exc:
        return Outcome(USAGE, [str(exc)])
    tmp = Path(tempfile.mkdtemp(prefix="invarlock-verify-")) if pack.is_file() else None
    try:
        root = _extract(pack, tmp) if tmp is not None else pack
        outcome = check(root, expected_fingerprint=signer, trust_store=trust_store, integrity_only=integrity_only)
    except ValueError as exc:
        outcome = Outcome(DIFFERS, [f"DIFFERS: {exc}"])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    outcome.seconds = time.perf_counter() - started
    return outcome


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pack", type=Path, help="the pack directory or its .tar.gz")
    signer = parser.add_mutually_exclusive_group()
    signer.add_argument("--public-key", type=Path, default=None, help="the signer's Ed25519 public key (PEM) you trust")
    signer.add_argument("--expected-fingerprint", default=None, help="the signer's fingerprint you trust (sha256:...)")
    signer.add_argument(
        "--trust-store", type=Path, default=None, help="InvarLock's JSON trust store of accepted signer fingerprints"
    )
    signer.add_argument(
        "--integrity-only", action="store_true", help="check that the pack is intact without checking who signed it"
    )


def run(args: argparse.Namespace) -> int:
    outcome = verify_pack(
        args.pack,
        public_key=args.public_key,
        expected_fingerprint=args.expected_fingerprint,
        trust_store=args.trust_store,
        integrity_only=args.integrity_only,
    )
    for line in outcome.lines:
        print(line)
    print(f"verify took {outcome.seconds:.2f} s")
    return outcome.status


def main(argv: Sequence[str] | None = None) -> int:
    """The `invarlock-verify` console script."""
    parser = argparse.ArgumentParser(prog="invarlock-verify", description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
