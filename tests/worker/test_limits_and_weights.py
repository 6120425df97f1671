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


def test_an_item_out_of_memory_everywhere_is_given_back_once_and_its_worker_ends(tmp_path: Path, monkeypatch):
    """Under the GPU scheduler, on a node with GPUs to spare: a note for the controller, then the process ends."""
    import os
    import subprocess
    import sys
    import textwrap
    from types import SimpleNamespace

    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.failure_memory import FailureMemory
    from pytest_invarlock.scheduling.inventory import parse_gpu_spec
    from pytest_invarlock.worker.execution import EXIT_HANDED_BACK, ItemStats, no_larger_placement

    script = textwrap.dedent(f"""
        from pathlib import Path
        from types import SimpleNamespace
        from pytest_invarlock.campaign.items import build_items
        from pytest_invarlock.campaign.suite import load_suite
        from pytest_invarlock.failure_memory import FailureMemory
        from pytest_invarlock.scheduling.inventory import parse_gpu_spec
        from pytest_invarlock.worker import execution

        item = build_items(load_suite("tiny"))[0]
        memory = FailureMemory(Path({str(tmp_path)!r}), "s1")
        stats = execution.ItemStats(placement=[0])
        state = SimpleNamespace(gpus=parse_gpu_spec("2x80"))
        assert "only the GPU scheduler" in execution.no_larger_placement(state, item, stats, memory, scheduled=False)
        alone = SimpleNamespace(gpus=parse_gpu_spec("80"))
        assert "all 1 GPU(s)" in execution.no_larger_placement(alone, item, stats, memory, scheduled=True)
        assert execution.no_larger_placement(state, item, stats, memory, scheduled=True) is None
        execution.hand_back(memory, item, stats, "CUDA out of memory after 2 retries")
    """)
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTEST_XDIST_WORKER": "gw0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_HANDED_BACK, done.stderr
    assert "giving it back to the scheduler for a larger placement" in done.stderr
    memory = FailureMemory(tmp_path, "s1")
    param_id = "tiny-kjv-calibration-run1"
    assert memory.handed_back(param_id)
    note = memory.take_handback(param_id)
    assert note is not None and note["reason"] == "oom" and note["placement"] == [0]
    stats = ItemStats(placement=[0])
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")  # the replacement worker
    item = next(i for i in build_items(load_suite("tiny")) if i.param_id == param_id)
    assert "once already" in no_larger_placement(
        SimpleNamespace(gpus=parse_gpu_spec("2x80")), item, stats, memory, scheduled=True
    )
