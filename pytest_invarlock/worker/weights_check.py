"""Is a model directory readable? A fast check of config.json and every weight file's header and size.

Run once per baseline before anything loads it, so weights that are cut short, overwritten or missing
fail the model's baseline at once, with the file and the numbers, instead of crashing inside each of
its items' loads. A safetensors file is an 8-byte header length, a JSON header naming every tensor's
dtype, shape and byte range, then the data: the check reads the header only (milliseconds for any
size) and proves that the ranges match the shapes, do not overlap the end, and that the file holds
exactly the bytes the header promises. Bit flips inside the data cannot be seen without a reference
digest; those load and show up in the numbers.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

SAFETENSORS_DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip
MAX_HEADER = 100 * 2**20  # safetensors' own limit


class WeightsUnreadable(ValueError):
    """The model directory cannot be loaded; the message names the file and what is wrong with it."""


def check_model_directory(directory: Path) -> None:
    """Raise `WeightsUnreadable` unless config.json parses and every weight file is whole."""
    directory = Path(directory)
    config = directory / "config.json"
    try:
        if not isinstance(json.loads(config.read_text(encoding="utf-8")), dict):
            raise WeightsUnreadable(f"{config} is not a JSON object")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        if isinstance(exc, WeightsUnreadable):
            raise
        raise WeightsUnreadable(f"{config} cannot be read as JSON ({exc})") from None
    shards = sorted(directory.glob("*.safetensors"))
    for index in sorted(directory.glob("*.safetensors.index.json")):
        try:
            named = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise WeightsUnreadable(f"{index} does not parse as a safetensors index ({exc})") from None
        missing = sorted(name for name in named if not (directory / name).is_file())
        if missing:
            raise WeightsUnreadable(f"{index} names {len(missing)} missing weight file(s): {', '.join(missing[:3])}")
    for shard in shards:
        check_safetensors(shard)
    pickles = sorted(directory.glob("*.bin"))
    for pickle in pickles:
        if pickle.stat().st_size == 0:
            raise WeightsUnreadable(f"{pickle} is empty")
    if not shards and not pickles:
        raise WeightsUnreadable(f"{directory} holds no weights (*.safetensors or *.bin)")


def check_safetensors(path: Path) -> None:
    """Raise `WeightsUnreadable` unless `path` is a whole safetensors file."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise WeightsUnreadable(f"{path} has {size} bytes: too short for a safetensors header (truncated or empty)")
        (length,) = struct.unpack("<Q", head)
        if length > MAX_HEADER or 8 + length > size:
            raise WeightsUnreadable(f"{path}: its header claims {length} bytes but the file has {size} (corrupted or truncated)")
        raw = handle.read(length)
    try:
        header = json.loads(raw.decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("not an object")
    except (UnicodeDecodeError, ValueError) as exc:
        raise WeightsUnreadable(f"{path}: the safetensors header does not parse as JSON ({exc}); the file is corrupted") from None
    data = size - 8 - length
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (start, stop) = entry["dtype"], entry["shape"], entry["data_offsets"]
            width = SAFETENSORS_DTYPE_BYTES[dtype]
            expected = math.prod(int(n) for n in shape) * width
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsUnreadable(f"{path}: tensor {name!r} has an unreadable header entry ({exc!r})") from None
        if not 0 <= start <= stop or stop - start != expected:
            raise WeightsUnreadable(f"{path}: tensor {name!r} ({dtype} {shape}) spans bytes {start}-{stop}, {expected} expected")
        end = max(end, stop)
    if end != data:
        raise WeightsUnreadable(
            f"{path}: the header describes {end} bytes of tensor data but the file holds {data} "
            f"({'truncated' if data < end else 'extra bytes appended'})"
        )
