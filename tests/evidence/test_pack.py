"""Evidence packs: build, verify, and catch tampering (hypothesis: any byte, deletion, addition, re-signing)."""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_invarlock import cli
from pytest_invarlock.evidence import dsse
from pytest_invarlock.evidence.manifest import ENVELOPE, MANIFEST, dumps, sha256_file
from pytest_invarlock.evidence.pack import PackError, build_pack
from pytest_invarlock.evidence.verify import DIFFERS, OK, USAGE, main, verify_pack
from pytest_invarlock.store import write_json_sealed
from pytest_invarlock.verdict.compile import compile_records
from pytest_invarlock.verdict.render import write_reports

ENV = {"python": "3.12", "packages": {"invarlock": "0.12.1"}, "torch": "2.11.0", "driver": None, "gpus": []}


def record(pid: str, kind: str, scenario: str, run: int, store: Path, **fields) -> dict:
    result = store / "results" / f"r-{pid}"
    (result / "reports" / "eval").mkdir(parents=True)
    (result / "verdict.json").write_text(json.dumps({"overall_pass": not fields.get("flagged")}))
    report = result / "reports" / "eval" / "evaluation.report.json"
    report.write_text(json.dumps({"validation": {"primary_metric_acceptable": True}, "run": run}))
    (result / "evaluate.log").write_text("log lines are not part of the pack\n")
    expectation = {"calibration": "pass", "clean": "pass", "stress": "fail", "error": "detect"}[kind]
    return {
        "param_id": pid,
        "model": "m",
        "scenario": scenario,
        "variant": scenario,
        "kind": kind,
        "run": run,
        "expectation": expectation,
        "definition_key": f"d-{pid}",
        "outcome": "passed",
        "met": True,
        "flagged": False,
        "detected": False,
        "signal": False,
        "ratio": 1.0 + run / 1000,
        "drift": 1.0,
        "degraded": False,
        "invalid": False,
        "report": str(report),
        "window_digest": f"w-{pid}",
        "window_seed": 41 + run,
        **fields,
    }


def make_run(run_dir: Path) -> Path:
    store = run_dir / "store"
    records = [
        record("m-calibration-run1", "calibration", "calibration", 1, store),
        record("m-clean-run1", "clean", "clean", 1, store),
        record("m-stress-run1", "stress", "stress", 1, store, flagged=True, ratio=1.5),
        record("m-nan-run1", "error", "nan", 1, store, flagged=True, detected=True),
    ]
    for r in records:
        write_json_sealed(run_dir / "records" / f"{r['param_id']}.json", r)
    (store / "presets" / "p-1").mkdir(parents=True)
    (store / "presets" / "p-1" / "preset.yaml").write_text("drift_band: [0.95, 1.05]\n")
    (store / "edits" / "e-1").mkdir(parents=True)
    (store / "edits" / "e-1" / "error_metadata.json").write_text('{"error": "nan_injection"}')
    (store / "benchmarks" / "b-1").mkdir(parents=True)
    (store / "benchmarks" / "b-1" / "benchmark.json").write_text('{"accuracy": 0.6}')
    items = {r["param_id"]: r["definition_key"] for r in records}
    compiled = compile_records(records, items=list(items))
    header = {
        "suite": "t",
        "suite_file": "t.yaml",
        "campaign": {"items": items, "min_signal_fraction": 0.5, "options": {"offline": True}, "revisions": {}},
    }
    write_reports(compiled, run_dir, header=header)
    return run_dir


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("keys")
    private, public = dsse.write_keypair(root / "key.pem")
    other, other_public = dsse.write_keypair(root / "other.pem")
    return {"private": private, "public": public, "other": other, "other_public": other_public}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory, keys: dict[str, Path]) -> Path:
    root = tmp_path_factory.mktemp("pack")
    run_dir = make_run(root / "run")
    build_pack(run_dir, root / "pack", signing_key=keys["private"], env=ENV)
    return root / "pack"


def copy(pack: Path, into: Path) -> Path:
    target = into / "pack"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(pack, target)
    return target


def test_a_fresh_pack_verifies_with_the_signers_key(pristine: Path, keys: dict[str, Path]) -> None:
    outcome = verify_pack(pristine, keys["public"])
    assert outcome.status == OK, outcome.message
    assert outcome.signature == "verified with the given public key" and not outcome.notes
    names = {p.relative_to(pristine).as_posix() for p in pristine.rglob("*") if p.is_file()}
    assert {
        MANIFEST,
        ENVELOPE,
        "reports/final_verdict.json",
        "records/m-nan-run1.json",
        "store/presets/p-1/preset.yaml",
        "store/edits/e-1/error_metadata.json",
        "store/benchmarks/b-1/benchmark.json",
        "store/results/r-m-clean-run1/reports/eval/evaluation.report.json",
    } <= names
    assert not any(n.endswith(".log") for n in names)
    manifest = json.loads((pristine / MANIFEST).read_text())
    assert len(manifest["records"]) == 4 and manifest["phase0"]["status"]
    assert manifest["seeds"]["m-clean-run1"] == {"window_seed": 42}
    envelope = json.loads((pristine / ENVELOPE).read_text())
    assert envelope["payloadType"] == "application/vnd.pytest-invarlock.manifest+json"


def test_without_a_public_key_it_says_integrity_only(pristine: Path) -> None:
    outcome = verify_pack(pristine)
    assert outcome.status == OK
    assert "NOT checked" in outcome.signature and "integrity only" in outcome.notes[0]


def test_the_tarball_verifies_and_is_reproducible(pristine: Path, keys: dict[str, Path]) -> None:
    archive = pristine.with_name("pack.tar.gz")
    assert verify_pack(archive, keys["public"]).status == OK
    with tarfile.open(archive) as tar:
        assert all(m.mtime == 0 and m.uid == 0 for m in tar.getmembers())


def test_pae_matches_the_dsse_spec_example() -> None:
    # From the DSSE protocol document: PAE("http://example.com/HelloWorld", "hello world").
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def pack_files(pack: Path) -> list[str]:
    return sorted(p.relative_to(pack).as_posix() for p in pack.rglob("*") if p.is_file())


FILES = st.integers(0, 10_000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=FILES, position=st.integers(0, 1 << 30), flip=st.integers(1, 255))
def test_any_one_byte_change_is_caught(
    pristine: Path, keys: dict[str, Path], tmp_path: Path, which: int, position: int, flip: int
) -> None:
    pack = copy(pristine, tmp_path)
    files = pack_files(pack)
    target = pack / files[which % len(files)]
    data = bytearray(target.read_bytes())
    data[position % len(data)] ^= flip
    target.write_bytes(bytes(data))
    outcome = verify_pack(pack, keys["public"])
    assert outcome.status == DIFFERS, (target, outcome.message)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=FILES)
def test_deleting_any_file_is_caught(pristine: Path, keys: dict[str, Path], tmp_path: Path, which: int) -> None:
    pack = copy(pristine, tmp_path)
    files = pack_files(pack)
    victim = files[which % len(files)]
    (pack / victim).unlink()
    outcome = verify_pack(pack, keys["public"])
    assert outcome.status == DIFFERS and victim.split("/")[0] in outcome.message, outcome.message


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    where=FILES,
    name=st.text("abcdefghij._-", min_size=1, max_size=12).filter(lambda n: n not in (".", "..")),
    content=st.binary(max_size=64),
    as_dir=st.booleans(),
)
def test_adding_any_file_or_directory_is_caught(
    pristine: Path, keys: dict[str, Path], tmp_path: Path, where: int, name: str, content: bytes, as_dir: bool
) -> None:
    pack = copy(pristine, tmp_path)
    dirs = sorted({pack, *(p for p in pack.rglob("*") if p.is_dir())})
    target = dirs[where % len(dirs)] / name
    if target.exists():
        target = target.with_name(target.name + "x")
    if as_dir:
        target.mkdir()
    else:
        target.write_bytes(content)
    outcome = verify_pack(pack, keys["public"])
    assert outcome.status == DIFFERS and target.name in outcome.message, outcome.message


def test_a_rewritten_manifest_resigned_with_another_key_is_caught(pristine: Path, keys: dict[str, Path], tmp_path: Path) -> None:
    pack = copy(pristine, tmp_path)
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["environment"]["gpus"] = [{"name": "NVIDIA B200"}]  # a claim the signer never made
    payload = dumps(manifest)
    (pack / MANIFEST).write_bytes(payload)
    (pack / ENVELOPE).write_bytes(dsse.dumps(dsse.sign(payload, dsse.load_private_key(keys["other"]))))
    caught = verify_pack(pack, keys["public"])
    assert caught.status == DIFFERS and ENVELOPE in caught.message and "no signature verifies" in caught.message
    # Without the reader's key the forgery is self-consistent: which is exactly what the output warns about.
    unchecked = verify_pack(pack)
    assert unchecked.status == OK and "integrity only" in unchecked.notes[0]


@pytest.mark.parametrize("edit", ["keyid", "whitespace"])
def test_edits_to_the_envelope_that_keep_its_meaning_are_caught(
    pristine: Path, keys: dict[str, Path], tmp_path: Path, edit: str
) -> None:
    pack = copy(pristine, tmp_path)
    raw = (pack / ENVELOPE).read_text()
    if edit == "keyid":
        envelope = json.loads(raw)
        envelope["signatures"][0]["keyid"] = "0" * 64
        (pack / ENVELOPE).write_bytes(dsse.dumps(envelope))
    else:
        (pack / ENVELOPE).write_text(raw.replace("\n", "\r\n", 1))
    assert verify_pack(pack, keys["public"]).status == DIFFERS


def test_a_phase0_block_that_does_not_follow_from_the_records_is_caught(
    pristine: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    # A producer that flips a record but keeps the old block, with every checksum redone and signed.
    pack = copy(pristine, tmp_path)
    rel = "records/m-nan-run1.json"
    data = json.loads((pack / rel).read_text())
    data.update(detected=False, flagged=False)
    (pack / rel).write_text(json.dumps(data))
    manifest = json.loads((pack / MANIFEST).read_text())
    manifest["files"][rel] = {"sha256": sha256_file(pack / rel), "size": (pack / rel).stat().st_size}
    manifest["records"] = [
        ({k: v for k, v in data.items() if k != "checksum"} if r["param_id"] == "m-nan-run1" else r) for r in manifest["records"]
    ]
    payload = dumps(manifest)
    (pack / MANIFEST).write_bytes(payload)
    (pack / ENVELOPE).write_bytes(dsse.dumps(dsse.sign(payload, dsse.load_private_key(keys["private"]))))
    outcome = verify_pack(pack, keys["public"])
    assert outcome.status == DIFFERS and "Phase 0 block differs" in outcome.message


def test_an_unsigned_pack_cannot_pass_a_signature_check(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    build_pack(run_dir, tmp_path / "pack", env=ENV)
    assert verify_pack(tmp_path / "pack").status == OK
    _private, public = dsse.write_keypair(tmp_path / "k.pem")
    outcome = verify_pack(tmp_path / "pack", public)
    assert outcome.status == DIFFERS and "unsigned" in outcome.message


def test_pack_refuses_records_that_no_longer_give_the_verdict(tmp_path: Path) -> None:
    run_dir = make_run(tmp_path / "run")
    path = run_dir / "records" / "m-stress-run1.json"
    data = json.loads(path.read_text())
    data["flagged"] = False
    write_json_sealed(path, {k: v for k, v in data.items() if k != "checksum"})
    with pytest.raises(PackError, match="rerun pytest"):
        build_pack(run_dir, tmp_path / "pack", env=ENV)
    assert not (tmp_path / "pack").exists()


def test_cli_keygen_pack_verify(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = make_run(tmp_path / "run")
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 0
    assert cli.main(["keygen", str(tmp_path / "k.pem")]) == 2  # never overwrites a key
    assert cli.main(["pack", str(run_dir), str(tmp_path / "p"), "--signing-key", str(tmp_path / "k.pem")]) == 0
    assert cli.main(["verify", str(tmp_path / "p"), "--public-key", str(tmp_path / "k.pem.pub")]) == 0
    assert main([str(tmp_path / "p.tar.gz")]) == 0
    out = capsys.readouterr().out
    assert "signed (Ed25519, DSSE)" in out and "integrity only" in out
    assert main([str(tmp_path / "missing")]) == USAGE
    assert main([str(tmp_path / "p"), "--public-key", str(tmp_path / "k.pem")]) == USAGE  # a private key is no public key
