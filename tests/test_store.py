"""The content-addressed store: built once, reused, atomic, and honest about a full disk."""

from __future__ import annotations

import errno
import json
import threading
from pathlib import Path

import pytest

from pytest_invarlock.store import Store, StoreError, digest, write_json_atomic


def test_digest_is_stable_and_order_independent_for_mappings() -> None:
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest("x", 1) != digest("x", 2)


def test_produce_builds_once_then_reuses(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"abc")
        return {"note": "first"}

    first = store.produce("edits", "k1", build)
    second = store.produce("edits", "k1", build)
    assert (first.reused, second.reused) == (False, True)
    assert len(calls) == 1
    assert (first.path / "weights.bin").read_bytes() == b"abc"
    assert store.metadata(first.path)["note"] == "first"
    assert first.path.name == "e-k1"  # neutral names: no model names in paths


def test_concurrent_producers_build_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(1)
        (tmp / "x").write_text("1")

    threads = [threading.Thread(target=store.produce, args=("results", "same", build)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.produce("edits", "k", broken)
    assert store.lookup("edits", "k") is None
    assert [p.name for p in (tmp_path / "edits").iterdir() if not p.name.endswith(".lock")] == []


def test_recompute_ignores_artifacts_from_other_sessions(tmp_path: Path) -> None:
    Store(tmp_path, session="old").produce("results", "k", lambda tmp: {"v": 1})
    fresh = Store(tmp_path, session="new", recompute=frozenset({"results"}))
    artifact = fresh.produce("results", "k", lambda tmp: {"v": 2})
    assert not artifact.reused and fresh.metadata(artifact.path)["v"] == 2
    assert fresh.produce("results", "k", lambda tmp: {"v": 3}).reused


def test_full_disk_is_reported_with_a_fix_and_keeps_finished_work(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = store.produce("results", "done", lambda tmp: (tmp / "r.json").write_text("{}") and None)

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="disk full.*Finished results are kept"):
        store.produce("results", "next", full)
    assert (kept.path / "r.json").exists()


def test_write_json_atomic_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.json"
    write_json_atomic(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
