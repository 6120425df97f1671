"""Ed25519 signing keys for evidence packs, and `python -m pytest_invarlock keygen KEY.pem`.

Keys are PEM files InvarLock's own `evidence-pack keygen` also writes (PKCS8 private key, SPKI public
key), so either tool's keys sign and pin either tool's packs. Only a key (or fingerprint) the *reader*
already trusts proves who signed: the public key inside a pack proves only that the pack is intact.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from pytest_invarlock.evidence.layout import fingerprint

_MAKE_ONE = "Make one with `python -m pytest_invarlock keygen KEY.pem`."


class KeyFileError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key; the message says which and how to fix it."""


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(f"cannot read an unencrypted PEM private key from '{path}' ({exc}). {_MAKE_ONE}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"'{path}' is a {type(key).__name__}, not an Ed25519 key. {_MAKE_ONE}")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise KeyFileError(
            f"cannot read a PEM public key from '{path}' ({exc}). Pass the KEY.pem.pub that keygen wrote "
            "(or InvarLock's KEY.pub.pem)."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"'{path}' is a {type(key).__name__}, not an Ed25519 public key.")
    return key


def write_keypair(path: Path) -> tuple[Path, Path, str]:
    """A new keypair: PATH (private, PKCS8 PEM, mode 0600), PATH.pub (public PEM), and its fingerprint."""
    path = Path(path)
    public_path = path.with_name(path.name + ".pub")
    for existing in (path, public_path):
        if existing.exists():
            raise KeyFileError(f"'{existing}' exists; refusing to overwrite a key. Pick another path.")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
        handle.write(private)
    public_path.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return path, public_path, fingerprint(key.public_key())


# --------------------------------------------------------------------------- CLI: keygen


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", type=Path, help="private key file to create (PEM, mode 0600); the public key goes to KEY.pub")


def run(args: argparse.Namespace) -> int:
    try:
        private, public, signer = write_keypair(args.key)
    except (KeyFileError, OSError) as exc:
        print(f"keygen: {exc}")
        return 2
    print(f"private key {private} (keep it secret; pass it as --signing-key)")
    print(f"public key  {public} (give it to readers: verify PACK --public-key {public.name})")
    print(f"fingerprint {signer} (what readers pin: invarlock advanced evidence-pack verify --expected-fingerprint ...)")
    return 0
