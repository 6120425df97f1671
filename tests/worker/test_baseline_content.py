"""Baselines are keyed by content: a local model's weights rewritten in place make the next session rebuild.

Two real pytest sessions of a one-model suite (a small random Llama from helpers.random_small_model, real
InvarLock, real lm-eval) share one run directory. Between them the weights file is rewritten in place: same
inode, same size, other values, and its mtime put back, as `rsync -t --inplace` would leave it. A baseline keyed
on path, revision and dtype (and a seal that records links by path and size) reused every edit, window draw and
certificate of the old weights; here the second session must rebuild them, and every record must carry the
digest of the new files.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest

from helpers import random_small_model, run_suite, small_model_suite

pytestmark = pytest.mark.campaign  # two tiny-suite sessions that run a model

REBUILT_KINDS = ("digests", "baselines", "windows", "edits", "results", "benchmarks")


def sha256sum_digest(directory: Path) -> str:
    """What `sha256sum` over the directory's files (sorted by name) prints, hashed: the documented weights digest."""
    lines = [
        f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n"
        for path in sorted(directory.iterdir())
        if path.is_file()
    ]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def rewrite_weights_in_place(weights: Path) -> None:
    """Negate the first 64 float32 values of the first tensor: same bytes count, same inode, mtime put back."""
    before = weights.stat()
    with weights.open("r+b") as handle:
        header = struct.unpack("<Q", handle.read(8))[0]
        handle.seek(8 + header)
        values = struct.unpack("<64f", handle.read(256))
        handle.seek(8 + header)
        handle.write(struct.pack("<64f", *(-v if v else 1.0 for v in values)))
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (before.st_ino, before.st_size, before.st_mtime_ns)


def records(run_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in sorted((run_dir / "records").glob("*.json"))]


def built_kinds(run_dir: Path, skip_lines: int) -> set[str]:
    lines = (run_dir / "store" / "builds.log").read_text().splitlines()[skip_lines:]
    return {line.split()[1].split("/")[1] for line in lines}


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("rewrite")
    model_dir = random_small_model(root)["m0"]
    suite_file = root / "rewrite.yaml"
    suite_file.write_text(small_model_suite(model_dir, name="rewrite", scenarios="[calibration, quant_rtn_8bit_clean]"))
    run_dir = root / "run"
    first = run_suite(run_dir, suite=str(suite_file), timeout=1800)
    first_records, first_digest = records(run_dir), sha256sum_digest(model_dir)
    first_builds = len((run_dir / "store" / "builds.log").read_text().splitlines())
    rewrite_weights_in_place(model_dir / "model.safetensors")
    second = run_suite(run_dir, suite=str(suite_file), timeout=1800)
    return {
        "run_dir": run_dir,
        "first": first,
        "second": second,
        "first_records": first_records,
        "first_digest": first_digest,
        "second_digest": sha256sum_digest(model_dir),
        "first_builds": first_builds,
    }


def ran(session_records: list[dict]) -> bool:
    """Every item ran to a verdict (InvarLock's or lm-eval's), whatever it was: no pipeline errors, no skips."""
    return len(session_records) == 4 and all(r["outcome"] in ("passed", "failed") for r in session_records)


def test_every_record_carries_the_digest_of_the_files_it_was_made_from(sessions: dict) -> None:
    first = sessions["first_records"]
    assert ran(first), sessions["first"].output[-4000:]
    assert {r["kind"] for r in first} == {"calibration", "clean", "benchmark"}
    assert {r["weights_digest"] for r in first} == {sessions["first_digest"]}
    assert sessions["second_digest"] != sessions["first_digest"]


def test_weights_rewritten_in_place_rebuild_everything_that_depends_on_them(sessions: dict) -> None:
    run_dir = sessions["run_dir"]
    rebuilt = records(run_dir)
    assert ran(rebuilt), sessions["second"].output[-4000:]
    assert {r["session"] for r in rebuilt}.isdisjoint({r["session"] for r in sessions["first_records"]})
    # Nothing of the old weights: the second session reuses exactly what the first, from scratch, reused of its own
    # work (a clean item finds the calibration run's baseline report that this session made).
    assert [r["reused"] for r in rebuilt] == [r["reused"] for r in sessions["first_records"]]
    assert {r["weights"] for r in rebuilt}.isdisjoint({r["weights"] for r in sessions["first_records"]})
    assert set(REBUILT_KINDS) <= built_kinds(run_dir, sessions["first_builds"])
    assert {r["weights_digest"] for r in rebuilt} == {sessions["second_digest"]}
