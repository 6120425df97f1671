"""DSSE envelopes signed with Ed25519: the in-toto convention (https://github.com/secure-systems-lab/dsse).

The signature covers PAE(payloadType, payload), the spec's pre-authentication encoding:

    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body

with LEN the decimal byte length, so neither the type nor the body can be swapped or extended. The
envelope is `{"payload": b64(body), "payloadType": type, "signatures": [{"keyid": ..., "sig": b64(sig)}]}`;
keyid is the sha256 of the raw 32-byte public key. Only a public key the *reader* trusts proves who
signed: a key carried inside the same pack proves nothing but self-consistency.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PAYLOAD_TYPE = "application/vnd.pytest-invarlock.manifest+json"


class SignatureError(ValueError):
    """The envelope is malformed, or no signature in it verifies with the given key."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding."""
    kind = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(kind), kind, len(payload), payload)


def keyid(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()


def sign(payload: bytes, private_key: Ed25519PrivateKey, payload_type: str = PAYLOAD_TYPE) -> dict[str, Any]:
    signature = private_key.sign(pae(payload_type, payload))
    return {
        "payload": base64.b64encode(payload).decode("ascii"),
        "payloadType": payload_type,
        "signatures": [{"keyid": keyid(private_key.public_key()), "sig": base64.b64encode(signature).decode("ascii")}],
    }


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError(f"envelope {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:
        raise SignatureError(f"envelope {what} is not valid base64") from None


def payload_of(envelope: Any, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The envelope's payload bytes, after checking its shape and type (no signature check)."""
    if not isinstance(envelope, dict) or set(envelope) != {"payload", "payloadType", "signatures"}:
        raise SignatureError("not a DSSE envelope (expected exactly payload, payloadType, signatures)")
    if envelope["payloadType"] != payload_type:
        raise SignatureError(f"payloadType is {envelope['payloadType']!r}, expected {payload_type!r}")
    signatures = envelope["signatures"]
    if not isinstance(signatures, list) or not signatures:
        raise SignatureError("envelope carries no signature")
    return _b64(envelope["payload"], "payload")


def verify(envelope: Any, public_key: Ed25519PublicKey, payload_type: str = PAYLOAD_TYPE) -> bytes:
    """The payload when a signature in the envelope verifies with `public_key`; SignatureError otherwise."""
    payload = payload_of(envelope, payload_type)
    message = pae(payload_type, payload)
    expected = keyid(public_key)
    for entry in envelope["signatures"]:
        if not isinstance(entry, dict) or set(entry) != {"keyid", "sig"}:
            raise SignatureError("envelope signature entry is not {keyid, sig}")
        if entry["keyid"] != expected:
            continue
        try:
            public_key.verify(_b64(entry.get("sig"), "signature"), message)
            return payload
        except InvalidSignature:
            continue
    ids = ", ".join(str(e.get("keyid", "?"))[:16] for e in envelope["signatures"] if isinstance(e, dict))
    raise SignatureError(
        f"no signature verifies with the given public key (key {keyid(public_key)[:16]}; envelope signed by {ids})"
    )


# --------------------------------------------------------------------------- keys


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(
            f"cannot read an unencrypted PEM private key from '{path}' ({exc}). "
            "Make one with `python -m pytest_invarlock keygen KEY.pem`."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(
            f"'{path}' is a {type(key).__name__}, not an Ed25519 key. Make one with `python -m pytest_invarlock keygen KEY.pem`."
        )
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as exc:
        raise SignatureError(
            f"cannot read a PEM public key from '{path}' ({exc}). Pass the KEY.pem.pub that "
            "`python -m pytest_invarlock keygen KEY.pem` wrote."
        ) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"'{path}' is a {type(key).__name__}, not an Ed25519 public key.")
    return key


def write_keypair(path: Path) -> tuple[Path, Path]:
    """A new Ed25519 keypair: PATH (private, PKCS8 PEM, mode 0600) and PATH.pub (public PEM)."""
    import os

    path = Path(path)
    if path.exists():
        raise SignatureError(f"'{path}' exists; refusing to overwrite a key. Pick another path.")
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(private)
    public_path = path.with_name(path.name + ".pub")
    public_path.write_bytes(public)
    return path, public_path


def dumps(envelope: dict[str, Any]) -> bytes:
    return (json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode("utf-8")
