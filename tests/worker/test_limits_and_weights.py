"""Shared work is charged to its own time limit (the item's clock pauses meanwhile), and a model directory whose
weights are cut short, overwritten or missing is refused by a header check before anything loads it. No torch."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path

import pytest

from pytest_invarlock.worker.resources import ItemTimeout, deadline, remaining_s
from pytest_invarlock.worker.weights_check import WeightsUnreadable, check_model_directory


def test_nested_work_runs_under_its_own_limit_and_is_not_charged_to_the_item():
    started = time.monotonic()
    with deadline(1.0, "item"):
        with deadline(2.0, "download (shared work)"):
            time.sleep(1.5)  # longer than the item's whole limit: charged to the download
            assert 0.3 < (remaining_s() or 0) < 0.6
        left = remaining_s()
        assert left is not None and 0.9 < left <= 1.0  # the item's clock did not run meanwhile
        time.sleep(0.3)
    assert time.monotonic() - started < 3
    assert remaining_s() is None


def test_nested_work_past_its_own_limit_times_out_as_itself():
    with pytest.raises(ItemTimeout, match=r"edit \(shared work\) timed out after 0.3 s"), deadline(10, "item"):
        with deadline(0.3, "edit (shared work)"):
            time.sleep(5)


def test_the_item_still_times_out_after_the_shared_work():
    with pytest.raises(ItemTimeout, match="item timed out after 0.5 s"), deadline(0.5, "item"):
        with deadline(5, "shared"):
            time.sleep(0.2)
        time.sleep(5)


def safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]], *, cut: int = 0, header: bytes | None = None) -> None:
    """A safetensors file: 8-byte header length, JSON header, the tensors' bytes (zeros)."""
    width = {"F32": 4, "BF16": 2}
    entries, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = width[dtype] * (shape[0] * shape[1] if len(shape) == 2 else shape[0])
        entries[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = header if header is not None else json.dumps({"__metadata__": {"format": "pt"}, **entries}).encode()
    data = struct.pack("<Q", len(raw)) + raw + b"\0" * offset
    path.write_bytes(data[: len(data) - cut] if cut else data)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    safetensors(tmp_path / "model.safetensors", {"a": ("F32", [4, 8]), "b": ("BF16", [16])})
    return tmp_path


def test_a_whole_model_directory_passes(model: Path):
    check_model_directory(model)


@pytest.mark.parametrize(
    ("damage", "says"),
    [
        (
            lambda d: safetensors(d / "model.safetensors", {"a": ("F32", [4, 8])}, cut=5),
            r"describes 128 bytes of tensor data but the file holds 123 \(truncated\)",
        ),
        (
            lambda d: (d / "model.safetensors").write_bytes(b"\x89PNG garbage" * 30),
            r"header claims \d+ bytes but the file has 360 \(corrupted or truncated\)",
        ),
        (lambda d: (d / "model.safetensors").write_bytes(b""), "too short for a safetensors header"),
        (lambda d: safetensors(d / "model.safetensors", {}, header=b"{not json"), "does not parse as JSON"),
        (lambda d: (d / "config.json").write_text("{"), "config.json cannot be read as JSON"),
        (lambda d: (d / "config.json").unlink(), "config.json cannot be read"),
        (lambda d: (d / "model.safetensors").unlink(), "holds no weights"),
        (
            lambda d: (d / "model.safetensors.index.json").write_text(
                json.dumps({"weight_map": {"c": "model-00002.safetensors"}})
            ),
            "names 1 missing weight file",
        ),
        (
            lambda d: safetensors(
                d / "model.safetensors",
                {"a": ("F32", [4, 8])},
                header=json.dumps({"a": {"dtype": "F32", "shape": [4, 8], "data_offsets": [0, 64]}}).encode(),
            ),
            "spans bytes 0-64, 128 expected",
        ),
    ],
    ids=[
        "truncated",
        "overwritten",
        "empty",
        "bad-header",
        "bad-config",
        "no-config",
        "no-weights",
        "missing-shard",
        "bad-shape",
    ],
)
def test_damaged_weights_are_refused_naming_the_file_and_the_numbers(model: Path, damage, says: str):
    damage(model)
    with pytest.raises(WeightsUnreadable, match=says):
        check_model_directory(model)
