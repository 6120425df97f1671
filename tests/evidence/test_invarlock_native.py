"""InvarLock's own verifier on a pack the tiny suite writes, and `python -m pytest_invarlock verify` on top.

`invarlock advanced evidence-pack verify --strict` (InvarLock's CLI, in a subprocess) accepts the pack
and rejects it after each kind of tampering; our verify passes with the signer's key or
--integrity-only, refuses to run without either, and catches a record that contradicts its certificate
where InvarLock's checks (which do not read records) pass. Uses the warmed tiny-suite run
(tests/conftest.py `warm_campaign`: minutes to build once; run these under the heavy lock).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.evidence import layout
from pytest_invarlock.evidence.audit import CERTIFICATE, certificate_rel
from pytest_invarlock.evidence.keys import load_private_key, write_keypair
from pytest_invarlock.evidence.pack import Pack, build_pack
from pytest_invarlock.evidence.verify import DIFFERS, OK, USAGE, verify_pack
from pytest_invarlock.report.command import load_records
from pytest_invarlock.store import CHECKSUM_FIELD, read_json_sealed, write_json_sealed

# InvarLock's exit statuses (invarlock/evidence_pack_support.py EvidencePackStatus)
SIGNATURE, INTEGRITY = 5, 6
# The plugin's certificates come from host-mode evaluates: no container runtime manifest to verify.
HOST_MODE = {"INVARLOCK_ALLOW_UNVERIFIED_PROVENANCE": "1"}


def invarlock_verify(pack: Path, *args: str) -> tuple[int, dict[str, Any], float]:
    """`invarlock advanced evidence-pack verify PACK --strict --json ...`: exit status, payload, seconds."""
    started = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-m", "invarlock", "advanced", "evidence-pack", "verify", str(pack), "--strict", "--json", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **HOST_MODE},
        timeout=600,
    )
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert lines, result.stdout + result.stderr
    return result.returncode, json.loads(lines[-1]), time.perf_counter() - started


@pytest.fixture(scope="module")
def signed(warm_campaign: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Pack, Path]:
    """A pack of the tiny run, signed with a fresh key; and the key's public half."""
    root = tmp_path_factory.mktemp("native")
    private, public, _fingerprint = write_keypair(root / "key.pem")
    pack = build_pack(warm_campaign.restore(), root / "pack", signing_key=private)
    print(f"tiny-suite pack: {pack.files} files, {pack.bytes / 1e6:.2f} MB, built in {pack.seconds:.2f} s")
    return pack, public


def copy(pack: Pack, into: Path) -> Path:
    target = into / "pack"
    shutil.copytree(pack.directory, target)
    return target


def test_invarlock_strict_verify_accepts_the_tiny_suite_pack(signed: tuple[Pack, Path]) -> None:
    pack, _public = signed
    status, payload, seconds = invarlock_verify(pack.directory, "--expected-fingerprint", pack.fingerprint)
    print(f"invarlock evidence-pack verify --strict: exit {status} in {seconds:.1f} s")
    assert status == 0 and payload["ok"] and payload["errors"] == [], payload
    assert payload["authenticity"] == "pinned" and payload["signer_fingerprint"] == pack.fingerprint
    certificates = sorted(pack.directory.glob(f"reports/*/{CERTIFICATE}"))
    assert payload["verify"]["evaluation_report"]["count"] == len(certificates) > 10
    assert payload["verify"]["summary"] == {"ok": True, "reason": "ok"}


def _edit_json(path: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data, sort_keys=True) + "\n")


def _first(root: Path, pattern: str) -> Path:
    return sorted(root.glob(pattern))[0]


def _flip_record_byte(root: Path, _key: Path) -> None:
    record = _first(root, "records/*.json")
    record.write_bytes(record.read_bytes().replace(b"true", b"TRUE", 1))


def _forge_with_another_key(root: Path, key: Path) -> None:
    """Rewrite the manifest and sign it, as a complete forgery by someone holding another key."""
    other = load_private_key(key)
    _edit_json(
        root / layout.MANIFEST, lambda m: m.update(suite="b200", signing_key_fingerprint=layout.fingerprint(other.public_key()))
    )
    layout.sign(root, other)


# name -> (tamper(pack_root, another_private_key), InvarLock's exit status, a phrase of its error)
TAMPERING: dict[str, tuple[Callable[[Path, Path], Any], int, str]] = {
    "changed record byte": (_flip_record_byte, INTEGRITY, "checksum mismatch for records/"),
    "changed certificate": (
        lambda root, _k: _edit_json(
            _first(root, f"reports/*/{CERTIFICATE}"), lambda r: r["primary_metric"].update(ratio_vs_baseline=1.0)
        ),
        INTEGRITY,
        "checksum mismatch for reports/",
    ),
    "added file": (lambda root, _k: (root / "reports" / "extra.json").write_text("{}"), INTEGRITY, "extra files not covered"),
    "removed certificate": (
        lambda root, _k: _first(root, f"reports/*/{CERTIFICATE}").unlink(),
        INTEGRITY,
        "checksums entry missing from pack",
    ),
    "removed signature": (
        lambda root, _k: (root / layout.SIGNATURE).unlink(),
        SIGNATURE,
        "strict mode requires a signed manifest",
    ),
    "edited manifest": (
        lambda root, _k: _edit_json(root / layout.MANIFEST, lambda m: m.update(suite="b200")),
        SIGNATURE,
        "manifest signature verification failed",
    ),
    "altered signature": (
        lambda root, _k: _edit_json(
            root / layout.SIGNATURE, lambda s: s["signature"].update(value=base64.b64encode(b"\0" * 64).decode())
        ),
        SIGNATURE,
        "manifest signature verification failed",
    ),
    "forged with another key": (_forge_with_another_key, SIGNATURE, "manifest signature signer mismatch"),
}


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_invarlock_strict_verify_and_ours_reject_a_tampered_pack(signed: tuple[Pack, Path], tmp_path: Path, tamper: str) -> None:
    pack, public = signed
    root = copy(pack, tmp_path)
    other, _other_public, _ = write_keypair(tmp_path / "other.pem")
    change, expected_status, phrase = TAMPERING[tamper]
    change(root, other)
    status, payload, _seconds = invarlock_verify(root, "--expected-fingerprint", pack.fingerprint)
    assert status == expected_status and not payload["ok"], payload
    assert any(phrase in error for error in payload["errors"]), payload["errors"]
    ours = verify_pack(root, public_key=public)
    assert ours.status == DIFFERS and "InvarLock evidence-pack verify --strict: FAIL" in ours.lines, ours.lines


def test_invarlock_rejects_a_pack_pinned_to_another_signer(signed: tuple[Pack, Path], tmp_path: Path) -> None:
    pack, _public = signed
    _other, other_public, other_fingerprint = write_keypair(tmp_path / "other.pem")
    status, payload, _ = invarlock_verify(pack.directory, "--expected-fingerprint", other_fingerprint)
    assert status == SIGNATURE and payload["authenticity"] == "mismatch", payload
    ours = verify_pack(pack.directory, public_key=other_public)
    assert ours.status == DIFFERS and f"  signer {pack.fingerprint}: NOT the signer you named" in ours.lines


def test_our_verify_passes_with_the_key_or_integrity_only_and_refuses_without(signed: tuple[Pack, Path]) -> None:
    pack, public = signed
    started = time.perf_counter()
    outcome = verify_pack(pack.directory, public_key=public)
    print("\n".join(outcome.lines) + f"\npytest_invarlock verify: {time.perf_counter() - started:.1f} s")
    assert outcome.status == OK, outcome.lines
    assert f"  signer {pack.fingerprint}: the signer you named" in outcome.lines
    assert any(line.startswith("campaign checks: PASS") for line in outcome.lines)
    assert verify_pack(pack.archive, public_key=public).status == OK
    integrity = verify_pack(pack.directory, integrity_only=True)
    assert integrity.status == OK and "who signed it was NOT checked" in integrity.lines[-1]
    assert verify_pack(pack.directory).status == USAGE


def test_a_record_contradicting_its_certificate_passes_invarlock_but_not_our_verify(
    warm_campaign: Any, tmp_path: Path, signed: tuple[Pack, Path]
) -> None:
    # A producer that rewrites a flagged record as "not flagged" with a valid seal, recompiles the verdict from
    # the records (`python -m pytest_invarlock report`) and signs the pack: every checksum and signature holds.
    _pack, public = signed
    run_dir = warm_campaign.restore()
    records, _ = load_records(run_dir)
    flagged = next(r for r in records if r.get("flagged") and r.get("report"))
    pid = flagged["param_id"]
    data = {k: v for k, v in read_json_sealed(run_dir / "records" / f"{pid}.json").items() if k != CHECKSUM_FIELD}
    write_json_sealed(run_dir / "records" / f"{pid}.json", {**data, "flagged": False, "overall_pass": True, "failed_gates": []})
    from pytest_invarlock import cli

    assert cli.main(["report", str(run_dir), "--quiet"]) == 0
    private = public.with_name(public.name.removesuffix(".pub"))
    pack = build_pack(run_dir, tmp_path / "pack", signing_key=private)
    status, payload, _ = invarlock_verify(pack.directory, "--expected-fingerprint", pack.fingerprint)
    assert status == 0 and payload["ok"], payload
    ours = verify_pack(pack.directory, public_key=public)
    assert ours.status == DIFFERS
    assert (
        f"  DIFFERS: records/{pid}.json contradicts {certificate_rel(pid)}: flagged is False in the record, True in the certificate"
        in ours.lines
    )
    warm_campaign.restore()
