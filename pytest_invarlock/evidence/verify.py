"""Verify an evidence pack: `python -m pytest_invarlock verify PACK --public-key KEY.pub` (or `invarlock-verify`).

PACK is a pack directory or its .tar.gz. Checked, in this order, stopping at the first difference
(which is named):

1. the signature: with --public-key, manifest.dsse.json must carry an Ed25519 signature by that key
   over exactly manifest.json (DSSE PAE); without it the signature is NOT checked and the output says
   so plainly: a key shipped inside the pack would prove only that the pack is self-consistent;
2. every file: each file the manifest lists exists with its sha256 and size, and no file, directory
   or link exists that the manifest does not list;
3. the records: records/*.json equal the records inside the manifest;
4. the verdict: the Phase 0 block recomputed from the records (`verdict.compile`) equals the block in
   the manifest and in reports/final_verdict.json.

Exit status: 0 when everything matches, 1 when something differs, 2 for a usage problem (no such
pack, unreadable key).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from pytest_invarlock.evidence import dsse
from pytest_invarlock.evidence.manifest import CONTROL_FILES, ENVELOPE, MANIFEST, sha256_file, strip_seal
from pytest_invarlock.verdict.compile import campaign_options, compile_records

OK, DIFFERS, USAGE = 0, 1, 2


class Differs(Exception):
    """The first thing in the pack that does not match; str() names the file."""


@dataclass
class Outcome:
    status: int
    message: str
    signature: str = "not checked"
    files: int = 0
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def normal(value: Any) -> Any:
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def recompute_phase0(records: Sequence[dict[str, Any]], suite: dict[str, Any]) -> dict[str, Any]:
    compiled = compile_records(records, **campaign_options(suite))
    block: dict[str, Any] = normal(compiled.phase0.to_dict())
    return block


def _extract(archive: Path, into: Path) -> Path:
    """Safe extraction: regular files and directories only, every path inside one top directory."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = tar.getmembers()
            tops = {m.name.split("/", 1)[0] for m in members}
            for member in members:
                if not (member.isfile() or member.isdir()):
                    raise Differs(f"{member.name}: not a regular file or directory (links are refused)")
                if member.name.startswith("/") or ".." in Path(member.name).parts:
                    raise Differs(f"{member.name}: path escapes the pack")
            if len(tops) != 1:
                raise Differs(f"{archive.name}: expected one top directory, found {sorted(tops)}")
            tar.extractall(into, filter="data")
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise Differs(f"{archive.name}: not a readable tar.gz ({exc})") from None
    return into / tops.pop()


def _listing(root: Path) -> tuple[set[str], set[str], list[str]]:
    """(files, directories, other entries) under root, as relative POSIX paths."""
    files, dirs, other = set(), set(), []
    for path in root.rglob("*"):
        rel = path.relative_to(root).as_posix()
        if path.is_symlink():
            other.append(rel)
        elif path.is_file():
            files.add(rel)
        elif path.is_dir():
            dirs.add(rel)
        else:
            other.append(rel)
    return files, dirs, sorted(other)


def check(root: Path, public_key: Ed25519PublicKey | None) -> Outcome:
    manifest_path = root / MANIFEST
    try:
        payload = manifest_path.read_bytes()
        manifest = json.loads(payload)
    except FileNotFoundError:
        raise Differs(f"{MANIFEST}: missing") from None
    except (OSError, ValueError) as exc:
        raise Differs(f"{MANIFEST}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise Differs(f"{MANIFEST}: not a pack manifest (no `files` mapping)")

    # 1. signature
    envelope_path = root / ENVELOPE
    if envelope_path.exists():
        try:
            raw = envelope_path.read_bytes()
            envelope = json.loads(raw)
            if not isinstance(envelope, dict) or dsse.dumps(envelope) != raw:
                raise dsse.SignatureError("not in the canonical form the pack writes (edited by hand?)")
            signed = dsse.verify(envelope, public_key) if public_key is not None else dsse.payload_of(envelope)
        except (ValueError, dsse.SignatureError) as exc:
            raise Differs(f"{ENVELOPE}: {exc}") from None
        if signed != payload:
            raise Differs(f"{MANIFEST}: differs from the payload signed in {ENVELOPE}")
        signature = "verified with the given public key" if public_key is not None else "present, NOT checked (no --public-key)"
    elif public_key is not None:
        raise Differs(f"{ENVELOPE}: missing (the pack is unsigned), so no signature can be checked")
    else:
        signature = "absent (unsigned pack)"

    # 2. files: every listed file matches; nothing unlisted
    listed: dict[str, Any] = manifest["files"]
    files, dirs, other = _listing(root)
    if other:
        raise Differs(f"{other[0]}: not a regular file (links and special files are refused)")
    parents = {p.as_posix() for rel in listed for p in Path(rel).parents if p.as_posix() != "."}
    for rel in sorted((files - set(CONTROL_FILES)) | set(listed) | (dirs - parents)):
        if rel in dirs:
            raise Differs(f"{rel}/: directory not listed in the manifest")
        if rel not in listed:
            raise Differs(f"{rel}: not listed in the manifest")
        if rel not in files:
            raise Differs(f"{rel}: listed in the manifest but missing")
        entry = listed[rel]
        path = root / rel
        if not isinstance(entry, dict) or path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            raise Differs(f"{rel}: sha256 differs from the manifest")

    # 3. records
    records = []
    for rel in sorted(r for r in listed if r.startswith("records/")):
        try:
            records.append(strip_seal(json.loads((root / rel).read_text(encoding="utf-8"))))
        except ValueError as exc:
            raise Differs(f"{rel}: not JSON ({exc})") from None
    in_manifest = {str(r.get("param_id")): normal(r) for r in manifest.get("records") or []}
    on_disk = {str(r.get("param_id")): normal(r) for r in records}
    for pid in sorted(in_manifest.keys() | on_disk.keys()):
        if in_manifest.get(pid) != on_disk.get(pid):
            raise Differs(f"records/{pid}.json: differs from its copy in {MANIFEST}")

    # 4. the Phase 0 block, recomputed
    suite = manifest.get("suite") or {}
    block = recompute_phase0(list(in_manifest.values()), suite)
    if normal(manifest.get("phase0")) != block:
        raise Differs(f"{MANIFEST}: its Phase 0 block differs from the one recomputed from the records")
    verdict_file = root / "reports" / "final_verdict.json"
    if verdict_file.is_file():
        stored = json.loads(verdict_file.read_text(encoding="utf-8")).get("phase0")
        if normal(stored) != block:
            raise Differs("reports/final_verdict.json: its Phase 0 block differs from the one recomputed from the records")
    phase0 = block
    status = f"{phase0.get('status')} (score {phase0.get('score', 0):.1f}/100)"
    return Outcome(
        OK,
        f"pack matches: {len(listed)} files, {len(in_manifest)} records, Phase 0 {status}",
        signature=signature,
        files=len(listed),
    )


def verify_pack(pack: Path, public_key: Path | None = None) -> Outcome:
    started = time.perf_counter()
    pack = Path(pack)
    if not pack.exists():
        return Outcome(USAGE, f"{pack}: no such pack (give the pack directory or its .tar.gz)")
    try:
        key = dsse.load_public_key(public_key) if public_key is not None else None
    except dsse.SignatureError as exc:
        return Outcome(USAGE, str(exc))
    tmp = None
    try:
        root = pack
        if pack.is_file():
            tmp = Path(tempfile.mkdtemp(prefix="invarlock-verify-"))
            root = _extract(pack, tmp)
        outcome = check(root, key)
    except Differs as exc:
        outcome = Outcome(DIFFERS, f"DIFFERS: {exc}")
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    if key is None and outcome.status == OK:
        outcome.notes.append(
            "integrity only: checksums, file list, records and Phase 0 were checked, but NOT who "
            "signed the pack. Pass --public-key FILE (the signer's KEY.pem.pub) to check the signature."
        )
    outcome.seconds = time.perf_counter() - started
    return outcome


# --------------------------------------------------------------------------- CLI


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pack", type=Path, help="the pack directory or its .tar.gz")
    parser.add_argument(
        "--public-key",
        type=Path,
        default=None,
        help="the signer's Ed25519 public key (PEM) you trust; without it only integrity is checked",
    )


def run(args: argparse.Namespace) -> int:
    outcome = verify_pack(args.pack, args.public_key)
    print(outcome.message)
    if outcome.status == OK:
        print(f"signature: {outcome.signature}")
    for note in outcome.notes:
        print(note)
    print(f"verify took {outcome.seconds:.2f} s")
    return outcome.status


def main(argv: Sequence[str] | None = None) -> int:
    """The `invarlock-verify` console script."""
    parser = argparse.ArgumentParser(prog="invarlock-verify", description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
