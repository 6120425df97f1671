"""Write an evidence pack from a run directory, in InvarLock's evidence-pack-v1 layout: DIR and DIR.tar.gz.

`python -m pytest_invarlock pack RUN_DIR DIR [--signing-key KEY.pem]`, or `--evidence-pack DIR` at the
end of a pytest run (`build_pack(run_dir, out_dir, signing_key=...)`). What goes in:

- manifest.json, manifest.signature.json, checksums.sha256   InvarLock's control files (`layout`);
- README.md                           what the pack holds and how to verify it;
- reports/final_verdict.json          the signed subject: the Phase 0 block and the campaign's items;
- reports/final_verdict.txt, reports/report.html, analysis/*.csv, analysis/*.json, state/model_revisions.json;
- records/<param_id>.json             every campaign record whose seal verifies (`store.read_json_sealed`);
- reports/<param_id>/evaluation.report.json (+ runtime.manifest.json when InvarLock wrote one)
                                      each record's certificate, InvarLock's own report, which InvarLock's
                                      verifier re-verifies with `invarlock verify`;
- store/presets/<key>/preset.*, store/edits/<key>/*_metadata.json, store/baselines/<key>/model_profile.json,
  store/benchmarks/<key>/benchmark.json   calibrated presets, edit metadata, baseline profiles, lm-eval scores;
- metadata/environment.json           the hosts, devices, drivers and versions the records name.

A damaged record is left out and named (in the manifest's `records_left_out` and the README); a run
directory whose sealed records no longer give its Phase 0 block, or whose certificate fails its store
seal, is refused with the fix. Without --signing-key the pack is signed with a throwaway key: every
pack then passes InvarLock's `--strict` integrity checks, but only a key readers already trust says
who made it. The pack is staged in a hidden sibling directory and renamed into place when complete.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from pytest_invarlock import __version__
from pytest_invarlock.evidence import layout
from pytest_invarlock.evidence.audit import RECORDS_DIR, VERDICT_FILE, certificate_rel, normal, recompute_phase0
from pytest_invarlock.evidence.environment import package_version, producers
from pytest_invarlock.evidence.keys import KeyFileError, load_private_key
from pytest_invarlock.store import DamagedError, read_json_sealed
from pytest_invarlock.store import verify as store_verify

ENVIRONMENT_FILE = "metadata/environment.json"
README = "README.md"
RUNTIME_MANIFEST = "runtime.manifest.json"  # InvarLock's provenance sidecar next to a report, when it wrote one
FIXED_FILES = ("reports/final_verdict.txt",)
OPTIONAL_GLOBS = (
    "reports/report.html",
    "reports/*_summary.json",
    "analysis/*.csv",
    "analysis/*.json",
    "state/model_revisions.json",
)
STORE_GLOBS = (
    "presets/*/preset.yaml",
    "presets/*/preset.json",
    "edits/*/edit_metadata.json",
    "edits/*/error_metadata.json",
    "baselines/*/model_profile.json",
    "benchmarks/*/benchmark.json",
)


class PackError(RuntimeError):
    """The run directory cannot be packed (missing verdict, bad key, target in the way); the message says why."""


@dataclass(frozen=True)
class Pack:
    directory: Path
    archive: Path
    files: int
    bytes: int
    signed: bool  # with the given --signing-key; False: a throwaway key (integrity only)
    fingerprint: str
    left_out: tuple[str, ...]
    seconds: float


def _stage_records(run_dir: Path, stage: Path, verdict: Mapping[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
    """Copy the campaign's records into the stage and keep the copies whose seal verifies: the records of the
    verdict's items at their current definition (every record when it names none). The campaign's records
    that fail are removed again and returned with why (what is packed is exactly what was checked)."""
    items = (verdict.get("campaign") or {}).get("items")
    (stage / RECORDS_DIR).mkdir()
    records, left_out = [], []
    for path in sorted((run_dir / RECORDS_DIR).glob("*.json")):
        if items is not None and path.stem not in items:
            continue
        rel, copy = f"{RECORDS_DIR}/{path.name}", stage / RECORDS_DIR / path.name
        shutil.copyfile(path, copy)
        try:
            record = read_json_sealed(copy)
        except DamagedError as exc:
            left_out.append({"record": rel, "reason": str(exc).replace(str(copy), rel)})
            copy.unlink()
            continue
        if record.get("param_id") != path.stem:
            left_out.append({"record": rel, "reason": f"{rel} names the item {record.get('param_id')!r}"})
            copy.unlink()
        elif isinstance(items, Mapping) and items[path.stem] not in (None, record.get("definition_key")):
            copy.unlink()  # an older definition of the item: not part of this campaign
        else:
            records.append(record)
    return records, left_out


def _certificate(run_dir: Path, record: Mapping[str, Any]) -> Path | None:
    """The InvarLock report a record points to, once its store artifact passes its seal; None when it names none."""
    if not record.get("report"):
        return None
    pid = record.get("param_id")
    report = Path(str(record["report"]))
    results = (run_dir / "store" / "results").resolve()
    try:
        artifact = results / report.resolve().relative_to(results).parts[0]
    except (ValueError, IndexError):
        raise PackError(
            f"record {pid} names the report {report}, which is not in this run directory's store ({results}); "
            "pack the run directory that produced it"
        ) from None
    problem = store_verify(artifact, full=True)
    if problem is not None:
        raise PackError(
            f"the certificate of {pid} ({artifact}) fails its store seal ({problem}): rerun the item "
            f"(pytest ... -k '{pid}', which rebuilds it) and pack again"
        )
    return report


def collect(run_dir: Path, records: list[dict[str, Any]]) -> dict[str, Path]:
    """pack path -> source file, for the files the pack copies besides the verdict and the records."""
    files: dict[str, Path] = {}
    for rel in FIXED_FILES:
        if not (run_dir / rel).is_file():
            raise PackError(f"{run_dir / rel} is missing: pack a run directory whose session finished (it writes the verdict)")
        files[rel] = run_dir / rel
    for pattern in OPTIONAL_GLOBS:
        files.update({p.relative_to(run_dir).as_posix(): p for p in run_dir.glob(pattern) if p.is_file()})
    for pattern in STORE_GLOBS:
        files.update({p.relative_to(run_dir).as_posix(): p for p in (run_dir / "store").glob(pattern) if p.is_file()})
    for record in records:
        report = _certificate(run_dir, record)
        if report is not None:
            rel = certificate_rel(str(record["param_id"]))
            files[rel] = report
            if (report.parent / RUNTIME_MANIFEST).is_file():
                files[str(Path(rel).with_name(RUNTIME_MANIFEST))] = report.parent / RUNTIME_MANIFEST
    return files


def _readme(
    verdict: Mapping[str, Any], records: int, certificates: int, left_out: list[dict[str, str]], signer: str, signed: bool
) -> str:
    phase0 = verdict.get("phase0") or {}
    lines = [
        f"# Evidence pack: pytest-invarlock suite {verdict.get('suite')}",
        "",
        f"Phase 0: {phase0.get('status')} (score {phase0.get('score', 0):.1f}/100) over {records} records and "
        f"{certificates} InvarLock certificates (reports/<item>/evaluation.report.json).",
        "Subject: reports/final_verdict.json. Records: records/. Where they ran: metadata/environment.json.",
        f"Signer: {signer}"
        + ("" if signed else " (a throwaway key made for this pack: it proves the pack is intact, not who made it)"),
        "",
        "Verify (both check every file; the second adds the campaign checks: record seals, each record",
        "against its certificate, Phase 0 recomputed from the records):",
        "",
        f"    INVARLOCK_ALLOW_UNVERIFIED_PROVENANCE=1 invarlock advanced evidence-pack verify PACK --strict --expected-fingerprint {signer}",
        "    (the allowance: the certificates come from host-mode evaluates; their runtime manifests say host-bypass)",
        "    python -m pytest_invarlock verify PACK --public-key KEY.pem.pub",
        "    sha256sum -c checksums.sha256",
    ]
    if left_out:
        lines += ["", "Records left out (their seal failed when packing; their items count as not run):", ""]
        lines += [f"- {entry['reason']}" for entry in left_out]
    return "\n".join(lines) + "\n"


def _tar(directory: Path, archive: Path) -> None:
    """A reproducible tar.gz of `directory` (sorted names, zeroed owners and times)."""
    tmp = archive.with_name(f".{archive.name}.{time.time_ns()}.tmp")

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
        tar.add(directory, arcname=directory.name, recursive=False, filter=clean)
        for path in sorted(directory.rglob("*")):
            tar.add(path, arcname=f"{directory.name}/{path.relative_to(directory).as_posix()}", recursive=False, filter=clean)
    tmp.replace(archive)


def _manifest(
    verdict: Mapping[str, Any], stage: Path, environment: Mapping[str, Any], records: list[dict[str, Any]], certificates: int
) -> dict[str, Any]:
    campaign = verdict.get("campaign") or {}
    options = campaign.get("options") or {}
    revisions = {**campaign.get("revisions", {})}
    revisions_file = stage / "state" / "model_revisions.json"
    if revisions_file.is_file():
        revisions.update(json.loads(revisions_file.read_text(encoding="utf-8")).get("revisions", {}))
    return {
        "format": layout.FORMAT,
        "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite": str(verdict.get("suite")),
        "network_mode": "online" if options.get("online") else "offline",
        # InvarLock's rule: a subject, bound checksums and clean reports give "medium"; "high" also needs a source repo
        "evidence_level": "medium" if certificates else "low",
        "run_dir": str(verdict.get("run_dir")),
        "invarlock_version": package_version(environment, "invarlock"),
        "builder": {"id": "pytest-invarlock", "name": "pytest-invarlock pack", "version": __version__},
        "subject": {"name": "final_verdict", "path": VERDICT_FILE, "digest": layout.digest_ref(stage / VERDICT_FILE)},
        "environment": {"path": ENVIRONMENT_FILE, "digest": layout.digest_ref(stage / ENVIRONMENT_FILE)},
        "model_list": sorted({str(r.get("model")) for r in records}),
        "models": [{"model_id": str(model), "revision": str(rev)} for model, rev in sorted(revisions.items())],
        "verification": {
            "records": len(records),
            "certificates": certificates,
            "campaign_checks": "python -m pytest_invarlock verify",
        },
    }


def _signing_key(path: Path | None) -> Ed25519PrivateKey:
    try:
        return load_private_key(path) if path is not None else Ed25519PrivateKey.generate()
    except KeyFileError as exc:
        raise PackError(str(exc)) from None


def _stage_verdict(run_dir: Path, stage: Path) -> dict[str, Any]:
    """Copy the subject into the stage and read it from there."""
    (stage / VERDICT_FILE).parent.mkdir(parents=True)
    try:
        shutil.copyfile(run_dir / VERDICT_FILE, stage / VERDICT_FILE)
        verdict: dict[str, Any] = json.loads((stage / VERDICT_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{run_dir / VERDICT_FILE} is missing: pack a run directory whose pytest session finished") from None
    except (OSError, ValueError) as exc:
        raise PackError(f"{run_dir / VERDICT_FILE} cannot be read ({exc})") from None
    return verdict


def _fill(run_dir: Path, stage: Path, key: Ed25519PrivateKey, signed: bool) -> tuple[str, list[dict[str, str]]]:
    """Everything in the stage: checked copies, metadata, checksums, the signed manifest; (signer, left out)."""
    verdict = _stage_verdict(run_dir, stage)
    records, left_out = _stage_records(run_dir, stage, verdict)
    if recompute_phase0(records, verdict) != normal(verdict.get("phase0")):
        damaged = "; ".join(e["reason"] for e in left_out)
        raise PackError(
            f"the sealed records under {run_dir / RECORDS_DIR} no longer give the Phase 0 block in {run_dir / VERDICT_FILE}"
            + (f" (left out as damaged: {damaged})" if damaged else " (a later session changed them)")
            + ": rerun pytest on this run directory (it reruns what is damaged and rewrites the verdict), then pack it"
        )
    files = collect(run_dir, records)
    for rel, source in files.items():
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, stage / rel)
    certificates = sum(certificate_rel(str(r["param_id"])) in files for r in records)
    environment = producers(records)
    (stage / ENVIRONMENT_FILE).parent.mkdir(parents=True, exist_ok=True)
    (stage / ENVIRONMENT_FILE).write_text(json.dumps(environment, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    signer = layout.fingerprint(key.public_key())
    (stage / README).write_text(_readme(verdict, len(records), certificates, left_out, signer, signed), encoding="utf-8")
    hashed = [VERDICT_FILE, *(f"{RECORDS_DIR}/{r['param_id']}.json" for r in records), *files, ENVIRONMENT_FILE, README]
    manifest = _manifest(verdict, stage, environment, records, certificates)
    manifest.update(
        checksums_sha256=layout.CHECKSUMS,
        checksums_sha256_digest=layout.write_checksums(stage, hashed),
        records_left_out=left_out,
        signing_key_fingerprint=signer,
    )
    layout.write_manifest(stage, manifest)
    layout.sign(stage, key)
    return signer, left_out


def build_pack(run_dir: Path, out_dir: Path, *, signing_key: Path | None = None) -> Pack:
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    key = _signing_key(signing_key)
    if out_dir.exists() and not (out_dir / layout.MANIFEST).is_file():
        raise PackError(f"{out_dir} exists and is not an evidence pack; pick another directory")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        signer, left_out = _fill(run_dir, stage, key, signed=signing_key is not None)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old.{time.time_ns()}")
            out_dir.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        stage.rename(out_dir)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    archive = out_dir.with_name(out_dir.name + ".tar.gz")
    _tar(out_dir, archive)
    written = [p for p in out_dir.rglob("*") if p.is_file()]
    return Pack(
        directory=out_dir,
        archive=archive,
        files=len(written),
        bytes=sum(p.stat().st_size for p in written),
        signed=signing_key is not None,
        fingerprint=signer,
        left_out=tuple(e["record"] for e in left_out),
        seconds=time.perf_counter() - started,
    )


def describe(pack: Pack) -> str:
    signed = (
        f"signed by {pack.fingerprint}"
        if pack.signed
        else f"signed with a throwaway key {pack.fingerprint} (no --signing-key: proves integrity, not who packed it)"
    )
    left_out = f"; left out (damaged): {', '.join(pack.left_out)}" if pack.left_out else ""
    return (
        f"evidence pack {pack.directory} ({pack.files} files, {pack.bytes / 1e6:.1f} MB; "
        f"{pack.archive.name} {pack.archive.stat().st_size / 1e6:.1f} MB), InvarLock evidence-pack-v1, {signed}, "
        f"built in {pack.seconds:.1f} s{left_out}"
    )


# --------------------------------------------------------------------------- CLI: pack


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, help="a run directory (--run-dir of a finished session)")
    parser.add_argument("pack_dir", type=Path, help="where to write the pack (and PACK_DIR.tar.gz)")
    parser.add_argument(
        "--signing-key", type=Path, default=None, help="Ed25519 private key (PEM) to sign the manifest; make one with `keygen`"
    )


def run(args: argparse.Namespace) -> int:
    try:
        pack = build_pack(args.run_dir, args.pack_dir, signing_key=args.signing_key)
    except (PackError, OSError) as exc:
        print(f"pack: {exc}")
        return 2
    print(describe(pack))
    return 0
