"""InvarLock's evidence-pack-v1 layout, written without importing InvarLock (the controller packs).

What `invarlock advanced evidence-pack verify --strict` (0.12.1: `invarlock/evidence_pack*.py`) reads:

- `checksums.sha256`: `<sha256>  <path>` for every file but the three control files (`sha256sum -c`
  reads it too); with --strict any other file fails the pack;
- `manifest.json`: format `evidence-pack-v1`, `checksums_sha256_digest` (the sha256 of the checksums
  file, which binds every file to the manifest) and `sha256:` digest references (`subject`,
  `environment`) that are checked against their files;
- `manifest.signature.json`: an Ed25519 signature over the exact bytes of manifest.json, with the
  public key and its fingerprint (`sha256:` + sha256 of the raw 32-byte key, what readers pin);

and, nested, `invarlock verify` of every `reports/**/evaluation.report.json`. The bytes written here
are the ones InvarLock's own `build` writes (sorted JSON, one line); tests check that its verifier
accepts them and rejects every kind of tampering.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

FORMAT = "evidence-pack-v1"
SIGNATURE_FORMAT = "evidence-pack-signature-v1"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.signature.json"
CHECKSUMS = "checksums.sha256"
CONTROL_FILES = (MANIFEST, SIGNATURE, CHECKSUMS)


def sha256_hex(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def digest_ref(path: Path) -> str:
    """A manifest digest reference: `sha256:<hex>`."""
    return f"sha256:{sha256_hex(path)}"


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """The signer's fingerprint as InvarLock prints and pins it."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return f"sha256:{hashlib.sha256(raw).hexdigest()}"


def write_checksums(root: Path, relpaths: Iterable[str]) -> str:
    """Write checksums.sha256 for `relpaths` (sorted); returns the file's own sha256 (hex)."""
    lines = "".join(f"{sha256_hex(root / rel)}  {rel}\n" for rel in sorted(relpaths))
    (root / CHECKSUMS).write_text(lines, encoding="utf-8")
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def write_manifest(root: Path, manifest: Mapping[str, Any]) -> None:
    (root / MANIFEST).write_text(json.dumps(manifest, sort_keys=True) + "\n", encoding="utf-8")


def sign(root: Path, key: Ed25519PrivateKey) -> str:
    """Sign manifest.json into manifest.signature.json; returns the signer's fingerprint."""
    public = key.public_key()
    bundle = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "signing_key_fingerprint": fingerprint(public),
        "public_key": {
            "encoding": "pem",
            "value": public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(
                "ascii"
            ),
        },
        "signature": {"encoding": "base64", "value": base64.b64encode(key.sign((root / MANIFEST).read_bytes())).decode("ascii")},
    }
    (root / SIGNATURE).write_text(json.dumps(bundle, sort_keys=True) + "\n", encoding="utf-8")
    return fingerprint(public)
