"""`python -m pytest_invarlock keygen KEY.pem`: a new Ed25519 keypair for signing evidence packs."""

from __future__ import annotations

import argparse
from pathlib import Path

from pytest_invarlock.evidence import dsse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("key", type=Path, help="private key file to create (PEM, mode 0600); the public key goes to KEY.pub")


def run(args: argparse.Namespace) -> int:
    try:
        private, public = dsse.write_keypair(args.key)
    except dsse.SignatureError as exc:
        print(f"keygen: {exc}")
        return 2
    print(f"private key {private} (keep it secret; pass it as --signing-key)")
    print(f"public key  {public} (give it to readers: verify PACK --public-key {public.name})")
    return 0
