"""Evidence packs on synthetic run directories: what is packed (and what is not), and the campaign checks.

The certificates are synthetic InvarLock reports read by the worker's real parser; the records are
sealed by the store as a session seals them. InvarLock's own verifier runs on a real tiny-suite pack
in test_invarlock_native.py.
"""

from __future__ import annotations

import base64
import json
import socket
import tarfile
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from helpers import synthetic_report
from pytest_invarlock import cli
from pytest_invarlock.campaign.judging import Reactions, expectation_met
from pytest_invarlock.evidence import layout
from pytest_invarlock.evidence.audit import COMPARED, audit, certificate_rel, contradictions
from pytest_invarlock.evidence.keys import write_keypair
from pytest_invarlock.evidence.pack import ENVIRONMENT_FILE, PackError, build_pack, describe
from pytest_invarlock.evidence.verify import DIFFERS, USAGE, main, parse_certificate, verify_pack
from pytest_invarlock.store import CHECKSUM_FIELD, read_json_sealed, seal, write_json_sealed
from pytest_invarlock.verdict.compile import compile_records
from pytest_invarlock.verdict.render import write_reports

VERSIONS = {"invarlock": "0.12.1", "torch": "2.11.0", "pytest-invarlock": "0.1.0"}
EXPECTATIONS = {"calibration": "pass", "clean": "pass", "stress": "fail", "error": "detect"}


def certify_record(run_dir: Path, pid: str, kind: str, report: dict[str, Any] | None, **fields: Any) -> dict[str, Any]:
    """A certify item's record, as the worker writes it from the certificate it parsed (pipeline._result)."""
    record: dict[str, Any] = {
        "param_id": pid,
        "model": "m",
        "scenario": pid.split("-")[1],
        "variant": pid.split("-")[1],
        "kind": kind,
        "run": 1,
        "expectation": EXPECTATIONS[kind],
        "definition_key": f"d-{pid}",
        "window_digest": f"w-{pid}",
        "window_seed": 42,
        "environment": {"host": "gpu-node-7", "versions": VERSIONS},
    }
    if report is None:  # InvarLock aborted the evaluate: no certificate (a NaN model)
        record.update(overall_pass=False, failed_gates=[], flags={}, ratio=None, ci=None, drift=None, degraded=False)
        record.update(invalid=False, caps_applied=None, failure="non-finite model output (detected)", report=None)
        record.update(flagged=True, detected=True, signal=True)
    else:
        result = run_dir / "store" / "results" / f"r-{pid}"
        path = result / "reports" / "eval" / "evaluation.report.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(report))
        (result / "evaluate.log").write_text("evaluate log lines are not packed\n")
        seal(result)
        parsed = parse_certificate(path)
        record.update({name: parsed[source] for name, source in COMPARED.items()}, report=str(path))
    reacted = Reactions(record["flagged"], record["detected"], record["signal"])
    record["met"] = expectation_met(record["expectation"], reacted, None)
    record["outcome"] = "passed" if record["met"] else "failed"
    record.update(fields)
    return json.loads(json.dumps(record))


def write_verdict(run_dir: Path, records: list[dict[str, Any]], items: dict[str, str]) -> None:
    """reports/ and analysis/ as the session's terminal summary writes them."""
    header = {
        "suite": "t",
        "suite_file": "t.yaml",
        "run_dir": str(run_dir),
        "campaign": {"items": items, "min_signal_fraction": 0.5, "options": {"online": False}, "revisions": {}},
    }
    write_reports(compile_records(records, items=list(items)), run_dir, header=header)


def make_run(run_dir: Path) -> Path:
    records = [
        certify_record(run_dir, "m-calibration-run1", "calibration", synthetic_report()),
        certify_record(run_dir, "m-clean-run1", "clean", synthetic_report(), environment={"host": "gpu-node-8"}),
        certify_record(run_dir, "m-stress-run1", "stress", synthetic_report(primary_metric_acceptable=False)),
        certify_record(run_dir, "m-scale-run1", "error", synthetic_report(invariants_pass=False)),
        certify_record(run_dir, "m-nan-run1", "error", None),
    ]
    for record in records:
        write_json_sealed(run_dir / "records" / f"{record['param_id']}.json", record)
    for rel, text in {
        "store/presets/p-1/preset.yaml": "drift_band: [0.95, 1.05]\n",
        "store/edits/e-1/error_metadata.json": '{"error": "nan_injection"}',
        "store/benchmarks/b-1/benchmark.json": '{"accuracy": 0.6}',
        "reports/report.html": "<html></html>\n",
    }.items():
        (run_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (run_dir / rel).write_text(text)
    write_verdict(run_dir, records, {r["param_id"]: r["definition_key"] for r in records})
    return run_dir


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    return make_run(tmp_path / "run")


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    private, _public, _fingerprint = write_keypair(tmp_path_factory.mktemp("keys") / "key.pem")
    return private


def files_of(pack: Path) -> set[str]:
    return {p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file()}


def damage(path: Path, **changes: Any) -> None:
    """Edit a record without resealing it: the checksum no longer matches."""
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def reseal(path: Path, **changes: Any) -> None:
    """Rewrite a record with a valid seal: what a producer that lies would do."""
    data = {k: v for k, v in json.loads(path.read_text()).items() if k != CHECKSUM_FIELD}
    data.update(changes)
    write_json_sealed(path, data)


# --------------------------------------------------------------------------- layout


def test_the_pack_is_invarlocks_layout_with_every_file_checksummed_and_the_manifest_signed(
    run_dir: Path, key: Path, tmp_path: Path
) -> None:
    pack = build_pack(run_dir, tmp_path / "pack", signing_key=key)
    root = pack.directory
    names = files_of(root)
    assert {layout.MANIFEST, layout.SIGNATURE, layout.CHECKSUMS, "README.md", ENVIRONMENT_FILE} <= names
    assert {
        "reports/final_verdict.json",
        "reports/final_verdict.txt",
        "reports/report.html",
        "analysis/invarlock_results.csv",
        "records/m-nan-run1.json",
        "store/presets/p-1/preset.yaml",
        "store/benchmarks/b-1/benchmark.json",
        certificate_rel("m-stress-run1"),
    } <= names
    assert certificate_rel("m-nan-run1") not in names  # InvarLock wrote no report for it
    assert not any(n.endswith(".log") for n in names)
    listed = dict(reversed(line.split("  ", 1)) for line in (root / layout.CHECKSUMS).read_text().splitlines())
    assert set(listed) == names - set(layout.CONTROL_FILES)
    assert all(layout.sha256_hex(root / rel) == digest for rel, digest in listed.items())
    manifest = json.loads((root / layout.MANIFEST).read_text())
    assert manifest["format"] == "evidence-pack-v1" and manifest["checksums_sha256"] == layout.CHECKSUMS
    assert manifest["checksums_sha256_digest"] == layout.sha256_hex(root / layout.CHECKSUMS)
    assert manifest["subject"] == {
        "name": "final_verdict",
        "path": "reports/final_verdict.json",
        "digest": layout.digest_ref(root / "reports/final_verdict.json"),
    }
    assert manifest["environment"]["digest"] == layout.digest_ref(root / ENVIRONMENT_FILE)
    assert manifest["invarlock_version"] == "0.12.1, unknown"  # one record does not say
    assert manifest["verification"]["certificates"] == 4 and manifest["records_left_out"] == []
    signature = json.loads((root / layout.SIGNATURE).read_text())
    public = load_pem_public_key(signature["public_key"]["value"].encode())
    assert isinstance(public, Ed25519PublicKey)
    public.verify(base64.b64decode(signature["signature"]["value"]), (root / layout.MANIFEST).read_bytes())  # raises if wrong
    assert signature["signing_key_fingerprint"] == manifest["signing_key_fingerprint"] == pack.fingerprint
    assert pack.signed and "signed by sha256:" in describe(pack)


def test_the_environment_describes_the_hosts_that_produced_the_records_not_the_packing_host(
    run_dir: Path, tmp_path: Path
) -> None:
    pack = build_pack(run_dir, tmp_path / "pack")
    environment = json.loads((pack.directory / ENVIRONMENT_FILE).read_text())
    assert environment["hosts"] == ["gpu-node-7", "gpu-node-8"]
    by_host = {g["host"]: g for g in environment["producers"]}
    assert by_host["gpu-node-7"]["versions"] == VERSIONS and len(by_host["gpu-node-7"]["items"]) == 4
    assert by_host["gpu-node-8"] == {
        "host": "gpu-node-8",
        "device_name": "unknown",
        "driver": "unknown",
        "python": "unknown",
        "versions": "unknown",
        "items": ["m-clean-run1"],
    }
    assert socket.gethostname() not in json.dumps(environment)


def test_without_a_signing_key_the_pack_is_signed_with_a_throwaway_key_and_says_so(run_dir: Path, tmp_path: Path) -> None:
    pack = build_pack(run_dir, tmp_path / "pack")
    assert not pack.signed and (pack.directory / layout.SIGNATURE).is_file()
    assert "throwaway key" in describe(pack) and "throwaway key" in (pack.directory / "README.md").read_text()


def test_the_archive_is_reproducible_and_rebuilding_replaces_only_a_pack(run_dir: Path, key: Path, tmp_path: Path) -> None:
    pack = build_pack(run_dir, tmp_path / "pack", signing_key=key)
    with tarfile.open(pack.archive) as tar:
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())
    assert build_pack(run_dir, tmp_path / "pack", signing_key=key).directory == pack.directory
    (tmp_path / "other").mkdir()
    with pytest.raises(PackError, match="is not an evidence pack"):
        build_pack(run_dir, tmp_path / "other")


# --------------------------------------------------------------------------- only sealed records


def test_a_damaged_record_is_left_out_named_and_the_pack_says_so(run_dir: Path, tmp_path: Path) -> None:
    damaged = run_dir / "records" / "m-clean-run1.json"
    damage(damaged, flagged=True)  # a bit flip on disk: valid JSON, seal broken
    # The session that wrote the verdict refused it too (records.earlier_records): its item counts as not run.
    records = [read_json_sealed(p) for p in sorted((run_dir / "records").glob("*.json")) if p != damaged]
    write_verdict(run_dir, records, {**{r["param_id"]: r["definition_key"] for r in records}, "m-clean-run1": "d-m-clean-run1"})
    pack = build_pack(run_dir, tmp_path / "pack")
    names = files_of(pack.directory)
    assert "records/m-clean-run1.json" not in names and certificate_rel("m-clean-run1") not in names
    assert pack.left_out == ("records/m-clean-run1.json",) and "left out (damaged): records/m-clean-run1.json" in describe(pack)
    manifest = json.loads((pack.directory / layout.MANIFEST).read_text())
    assert manifest["records_left_out"] == [
        {
            "record": "records/m-clean-run1.json",
            "reason": "records/m-clean-run1.json does not match its checksum (edited or corrupted)",
        }
    ]
    assert "- records/m-clean-run1.json does not match its checksum" in (pack.directory / "README.md").read_text()
    assert audit(pack.directory, parse_certificate).problems == []


def test_a_record_damaged_after_the_verdict_was_written_stops_the_pack_with_the_fix(run_dir: Path, tmp_path: Path) -> None:
    (run_dir / "records" / "m-stress-run1.json").write_text('{"param_id": "m-stress-run1", "flag')  # cut short
    with pytest.raises(PackError, match=r"left out as damaged: records/m-stress-run1.json does not parse.*rerun pytest"):
        build_pack(run_dir, tmp_path / "pack")
    assert not (tmp_path / "pack").exists()


def test_a_certificate_that_fails_its_store_seal_stops_the_pack(run_dir: Path, tmp_path: Path) -> None:
    report = run_dir / "store/results/r-m-stress-run1/reports/eval/evaluation.report.json"
    report.write_text(report.read_text().replace("false", "true "))  # same size, other content
    with pytest.raises(PackError, match=r"certificate of m-stress-run1 .* fails its store seal .*sha256.*-k 'm-stress-run1'"):
        build_pack(run_dir, tmp_path / "pack")


# --------------------------------------------------------------------------- campaign checks


def test_records_agree_with_their_certificates_and_contradictions_are_named() -> None:
    certificate = {**dict.fromkeys(COMPARED.values()), "overall_pass": False, "flagged": True, "detected": True}
    record = {name: certificate[source] for name, source in COMPARED.items()} | {"expectation": "fail", "met": True}
    assert contradictions(record, certificate) == []
    assert contradictions({**record, "met": False}, certificate) == []  # a gating edit's detectors are not in the record
    assert contradictions({**record, "overall_pass": True, "flagged": False, "met": True}, certificate) == [
        "overall_pass is True in the record, False in the certificate",
        "flagged is False in the record, True in the certificate",
    ]
    assert contradictions({**record, "expectation": "pass", "met": True}, certificate) == [
        "met is True in the record; the certificate gives [False] for expectation 'pass'"
    ]


def test_a_sealed_record_contradicting_its_certificate_fails_the_campaign_checks(run_dir: Path, tmp_path: Path) -> None:
    # A producer whose record says "not flagged, met" beside a certificate with overall_pass false, with a
    # verdict compiled from that record and everything sealed and signed: the checksums all hold.
    lying = run_dir / "records" / "m-stress-run1.json"
    reseal(lying, overall_pass=True, failed_gates=[], flagged=False, detected=False, met=True, outcome="passed")
    records = [read_json_sealed(p) for p in sorted((run_dir / "records").glob("*.json"))]
    write_verdict(run_dir, records, {r["param_id"]: r["definition_key"] for r in records})
    pack = build_pack(run_dir, tmp_path / "pack")
    findings = audit(pack.directory, parse_certificate)
    rel = certificate_rel("m-stress-run1")
    assert findings.problems == [
        f"records/m-stress-run1.json contradicts {rel}: overall_pass is True in the record, False in the certificate",
        f"records/m-stress-run1.json contradicts {rel}: failed_gates is [] in the record, ['primary_metric_acceptable'] in the certificate",
        f"records/m-stress-run1.json contradicts {rel}: flagged is False in the record, True in the certificate",
        f"records/m-stress-run1.json contradicts {rel}: detected is False in the record, True in the certificate",
    ]  # met may be either for a flagged gating edit (its detectors are not in the record)


def test_the_campaign_checks_catch_broken_seals_missing_and_orphan_certificates_and_phase0(run_dir: Path, tmp_path: Path) -> None:
    root = build_pack(run_dir, tmp_path / "pack").directory
    clean = audit(root, parse_certificate)
    assert clean.problems == [] and clean.records == 5 and clean.certificates == 4 and clean.phase0.startswith("PHASE0_")
    damage(root / "records" / "m-calibration-run1.json", ratio=0.5)
    (root / certificate_rel("m-scale-run1")).unlink()
    (root / "reports" / "m-ghost-run1").mkdir()
    (root / certificate_rel("m-ghost-run1")).write_text(json.dumps(synthetic_report()))
    verdict = json.loads((root / "reports/final_verdict.json").read_text())
    verdict["phase0"]["score"] = 100.0
    (root / "reports/final_verdict.json").write_text(json.dumps(verdict))
    assert audit(root, parse_certificate).problems == [
        "records/m-calibration-run1.json does not match its checksum (edited or corrupted)",
        f"{certificate_rel('m-scale-run1')}: missing (records/m-scale-run1.json names a report)",
        f"{certificate_rel('m-ghost-run1')}: a certificate without a record that names it",
        "reports/final_verdict.json: its Phase 0 block differs from the one recomputed from the records",
    ]


# --------------------------------------------------------------------------- verify fails closed; keygen


def test_verify_without_a_key_fails_closed_unless_integrity_only(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = build_pack(run_dir, tmp_path / "pack").directory
    assert cli.main(["verify", str(root)]) == USAGE
    assert main([str(root.with_name("pack.tar.gz"))]) == USAGE
    assert "--integrity-only to check only that it is intact" in capsys.readouterr().out
    # With --integrity-only both layers run: InvarLock's nested `invarlock verify` rejects these synthetic
    # reports (a real pack passes: test_invarlock_native.py), the campaign checks pass.
    outcome = verify_pack(root, integrity_only=True)
    assert outcome.status == DIFFERS and outcome.lines[0] == "InvarLock evidence-pack verify --strict: FAIL"
    assert "  error: invarlock verify reported report verification failures." in outcome.lines
    assert any(line.startswith("campaign checks: PASS: 5 sealed records, 4 certificates") for line in outcome.lines)


def test_a_pack_with_a_garbled_manifest_or_archive_fails_with_the_reason(run_dir: Path, key: Path, tmp_path: Path) -> None:
    pack = build_pack(run_dir, tmp_path / "pack", signing_key=key)
    (pack.directory / layout.MANIFEST).write_text("{not json")
    outcome = verify_pack(pack.directory, integrity_only=True)
    assert outcome.status == DIFFERS and any("manifest is not valid JSON" in line for line in outcome.lines), outcome.lines
    pack.archive.write_bytes(pack.archive.read_bytes()[:100])
    cut = verify_pack(pack.archive, integrity_only=True)
    assert cut.status == DIFFERS and cut.lines[0].startswith("DIFFERS: pack.tar.gz: not a pack archive"), cut.lines


def test_keygen_writes_a_keypair_that_signs_packs_and_never_overwrites(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 0
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 2
    out = capsys.readouterr().out
    fingerprint = out.split("fingerprint ")[1].split()[0]
    assert (tmp_path / "k.pem").stat().st_mode & 0o777 == 0o600 and "refusing to overwrite" in out
    assert cli.main(["pack", str(run_dir), str(tmp_path / "p"), "--signing-key", str(tmp_path / "k.pem")]) == 0
    assert json.loads((tmp_path / "p" / layout.MANIFEST).read_text())["signing_key_fingerprint"] == fingerprint
    assert cli.main(["pack", str(run_dir), str(tmp_path / "q"), "--signing-key", str(tmp_path / "k.pem.pub")]) == 2
    assert "pack: cannot read an unencrypted PEM private key from" in capsys.readouterr().out
