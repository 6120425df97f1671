"""Write an evidence pack from a run directory: DIR (files + manifest + signature) and DIR.tar.gz.

`python -m pytest_invarlock pack RUN_DIR DIR [--signing-key KEY.pem]`, or `--evidence-pack DIR` at the
end of a pytest run. What goes in, under the same relative paths as in the run directory:

- records/*.json                every item's record (also inside the manifest);
- reports/, analysis/           final_verdict.{json,txt} and the analysis files;
- state/model_revisions.json    the pinned hub commits, when the run has them;
- store/results/<key>/**.json   each certificate: our verdict.json and InvarLock's own report JSON;
- store/presets/<key>/preset.*  the calibrated presets;
- store/edits/<key>/*_metadata.json, store/baselines/<key>/model_profile.json
                                edit and error-injection metadata, the baseline profile;
- store/benchmarks/<key>/benchmark.json   lm-eval scores;
- manifest.json + manifest.dsse.json     the manifest and its DSSE envelope (Ed25519).

The pack is staged in a hidden sibling directory and renamed into place when complete, so a failed
build never leaves a partial pack; an older pack at DIR is replaced only when it is one.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.evidence import dsse
from pytest_invarlock.evidence.manifest import ENVELOPE, MANIFEST, build_manifest, dumps, file_entries, strip_seal

FIXED_FILES = ("reports/final_verdict.json", "reports/final_verdict.txt")
OPTIONAL_GLOBS = ("analysis/*.csv", "analysis/*.json", "reports/*_summary.json", "state/model_revisions.json")
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
    signed: bool
    seconds: float


def _records(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted((run_dir / "records").glob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise PackError(f"record {path} cannot be read ({exc}); rerun its item or delete the file") from None
        if isinstance(data, dict):
            out.append((path.relative_to(run_dir).as_posix(), data))
    return out


def _campaign_records(run_dir: Path, verdict: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The records of the campaign the verdict describes: its suite items at their current definition
    (as the terminal summary chose them), or every record when the verdict names no items."""
    records = _records(run_dir)
    items = (verdict.get("campaign") or {}).get("items")
    if items is None:
        return records
    if isinstance(items, dict):
        return [
            (rel, r)
            for rel, r in records
            if r.get("param_id") in items and items[r["param_id"]] in (None, r.get("definition_key"))
        ]
    wanted = set(items)
    return [(rel, r) for rel, r in records if r.get("param_id") in wanted]


def _under(run_dir: Path, path_text: str | None) -> Path | None:
    if not path_text:
        return None
    path = Path(path_text)
    try:
        path.resolve().relative_to(run_dir.resolve())
    except ValueError:
        return None
    return path if path.exists() else None


def collect(run_dir: Path, verdict: dict[str, Any], records: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Relative paths (within run_dir) of every file the pack includes, besides manifest and envelope."""
    rels: set[str] = {rel for rel, _ in records}
    for rel in FIXED_FILES:
        if not (run_dir / rel).is_file():
            raise PackError(
                f"{run_dir / rel} is missing: pack a run directory whose session finished "
                "(its terminal summary writes the verdict)"
            )
        rels.add(rel)
    for pattern in OPTIONAL_GLOBS:
        rels.update(p.relative_to(run_dir).as_posix() for p in run_dir.glob(pattern) if p.is_file())
    store = run_dir / "store"
    for pattern in STORE_GLOBS:
        rels.update(p.relative_to(run_dir).as_posix() for p in store.glob(pattern) if p.is_file())
    for _, record in records:  # each certificate: every JSON file of its results directory
        report = _under(run_dir, record.get("report"))
        if report is None:
            continue
        results = store.resolve() / "results"
        relative = report.resolve().relative_to(results) if report.resolve().is_relative_to(results) else None
        if relative is None:
            rels.add(report.resolve().relative_to(run_dir.resolve()).as_posix())
            continue
        result_dir = results / relative.parts[0]
        rels.update(p.resolve().relative_to(run_dir.resolve()).as_posix() for p in result_dir.rglob("*.json") if p.is_file())
    return sorted(rels)


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


def build_pack(run_dir: Path, out_dir: Path, *, signing_key: Path | None = None, env: dict[str, Any] | None = None) -> Pack:
    started = time.perf_counter()
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    key = dsse.load_private_key(signing_key) if signing_key else None
    verdict_path = run_dir / "reports" / "final_verdict.json"
    try:
        verdict = json.loads(verdict_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PackError(f"{verdict_path} is missing: pack a run directory whose pytest session finished") from None
    except (OSError, ValueError) as exc:
        raise PackError(f"{verdict_path} cannot be read ({exc})") from None
    if out_dir.exists() and not (out_dir / MANIFEST).is_file():
        raise PackError(f"{out_dir} exists and is not an evidence pack; pick another directory")
    records = _campaign_records(run_dir, verdict)
    from pytest_invarlock.evidence.verify import normal, recompute_phase0

    suite = {
        "items": (verdict.get("campaign") or {}).get("items"),
        "min_signal_fraction": (verdict.get("campaign") or {}).get("min_signal_fraction"),
    }
    if recompute_phase0([strip_seal(r) for _, r in records], suite) != normal(verdict.get("phase0")):
        raise PackError(
            f"the records under {run_dir / 'records'} no longer give the Phase 0 block in {verdict_path} "
            "(a later session changed them): rerun pytest on this run directory to refresh the verdict, "
            "then pack it"
        )
    rels = collect(run_dir, verdict, records)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        for rel in rels:
            target = stage / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(run_dir / rel, target)
        revisions = {}
        revisions_file = stage / "state" / "model_revisions.json"
        if revisions_file.is_file():
            revisions = json.loads(revisions_file.read_text(encoding="utf-8")).get("revisions", {})
        revisions = {**(verdict.get("campaign") or {}).get("revisions", {}), **revisions}
        manifest = build_manifest(
            verdict=verdict,
            records=[strip_seal(r) for _, r in records],
            files=file_entries(stage, rels),
            revisions=revisions,
            env=env,
        )
        payload = dumps(manifest)
        (stage / MANIFEST).write_bytes(payload)
        if key is not None:
            (stage / ENVELOPE).write_bytes(dsse.dumps(dsse.sign(payload, key)))
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
    size = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file())
    return Pack(out_dir, archive, len(rels) + 1 + (key is not None), size, key is not None, time.perf_counter() - started)


def describe(pack: Pack) -> str:
    signed = "signed (Ed25519, DSSE)" if pack.signed else "UNSIGNED (no --signing-key): verify can check integrity only"
    return (
        f"evidence pack {pack.directory} ({pack.files} files, {pack.bytes / 1e6:.1f} MB; "
        f"{pack.archive.name} {pack.archive.stat().st_size / 1e6:.1f} MB), {signed}, built in {pack.seconds:.1f} s"
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
    except (PackError, dsse.SignatureError) as exc:
        print(f"pack: {exc}")
        return 2
    print(describe(pack))
    return 0
