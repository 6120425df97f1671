"""The content-addressed store: built once (threads and real processes), sealed, never trusting damage,
POSIX locks that a SIGKILL releases, and honest about a full disk (a real tmpfs where mount is allowed)."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from helpers import small_filesystem
from pytest_invarlock.store import (
    BUILDS_LOG,
    CHECKSUMS,
    ArtifactLock,
    DamagedError,
    Store,
    StoreError,
    content_sha256,
    digest,
    read_json_sealed,
    verify,
    write_json_atomic,
    write_json_sealed,
)


def test_digest_is_stable_and_order_independent_for_mappings() -> None:
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
    assert digest("x", 1) != digest("x", 2)


def test_content_sha256_is_the_content_whatever_the_path_or_mtime(tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text('{"text": "in the beginning"}\n')
    second.write_text('{"text": "in the beginning"}\n')
    os.utime(second, ns=(1, 1))
    assert content_sha256(first) == content_sha256(second)  # same bytes, other path and mtime
    first.write_text('{"text": "in the beginninG"}\n')  # same size, new content
    assert content_sha256(first) != content_sha256(second)


def test_content_sha256_sees_a_rewrite_in_place_that_keeps_size_and_mtime(tmp_path: Path) -> None:
    """The memo is keyed on (device, inode, size, mtime, ctime): `rsync -t --inplace` or `cp -p` onto the same
    file puts the mtime back, but the kernel moves ctime, so the new bytes are read."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"\x00" * 4096)
    before = content_sha256(weights)
    stat = weights.stat()
    time.sleep(0.01)
    with weights.open("r+b") as handle:
        handle.write(b"\x01" * 16)
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    after = weights.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (stat.st_ino, stat.st_size, stat.st_mtime_ns)
    assert content_sha256(weights) != before


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
    listing = json.loads((first.path / CHECKSUMS).read_text())
    assert set(listing["files"]) == {"weights.bin", "artifact.json"}
    assert listing["files"]["weights.bin"]["size"] == 3
    assert len((tmp_path / BUILDS_LOG).read_text().splitlines()) == 1


def test_concurrent_producers_build_once(tmp_path: Path) -> None:
    store = Store(tmp_path)
    calls = []

    def build(tmp: Path) -> None:
        calls.append(1)
        time.sleep(0.05)
        (tmp / "x").write_text("1")

    threads = [threading.Thread(target=store.produce, args=("results", "same", build)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1


def _weights(tmp: Path) -> dict:
    (tmp / "model.safetensors").write_bytes(os.urandom(4096))
    (tmp / "sub").mkdir()
    (tmp / "sub" / "report.json").write_text('{"ok": true}')
    return {}


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda p: os.truncate(p / "model.safetensors", 100), "model.safetensors has 100 bytes, 4096 expected"),
        (lambda p: (p / "sub" / "report.json").write_text('{"ok": fals'), "report.json has 11 bytes"),
        (lambda p: (p / "sub" / "report.json").write_text('{"ok": 1}   '), "does not match its sha256"),
        (lambda p: (p / "model.safetensors").unlink(), "model.safetensors is missing"),
        (lambda p: (p / CHECKSUMS).unlink(), "checksums.json is missing"),
        (lambda p: (p / CHECKSUMS).write_text((p / CHECKSUMS).read_text()[:40]), "checksums.json does not parse"),
        (lambda p: (p / "extra.bin").write_bytes(b"x"), "unlisted file extra.bin"),
    ],
)
def test_a_damaged_artifact_is_never_trusted_warned_once_and_rebuilt(tmp_path: Path, damage, says: str) -> None:
    store = Store(tmp_path)
    first = store.produce("edits", "k", _weights)
    original = (first.path / "model.safetensors").stat().st_size
    damage(first.path)
    fresh = Store(tmp_path)  # another process: nothing verified yet
    again = fresh.produce("edits", "k", _weights)
    assert not again.reused
    assert len(fresh.warnings) == 1 and says in fresh.warnings[0], fresh.warnings
    assert fresh.warnings[0].endswith("; not trusted, rebuilding it") and "edits/e-k is damaged (" in fresh.warnings[0]
    assert verify(again.path, full=True) is None
    assert (again.path / "model.safetensors").stat().st_size == original
    assert fresh.produce("edits", "k", _weights).reused and len(fresh.warnings) == 1
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == ["e-k", "e-k.lock"]  # nothing set aside is left


def test_same_size_corruption_is_caught_by_the_hash_when_the_mtime_moves(tmp_path: Path) -> None:
    store = Store(tmp_path)
    artifact = store.produce("edits", "k", _weights)
    assert verify(artifact.path) is None  # verified once in this process
    weights = artifact.path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[100] ^= 0xFF
    time.sleep(0.01)
    weights.write_bytes(bytes(data))
    assert "does not match its sha256" in (verify(artifact.path) or "")


def test_a_symlinked_file_is_checked_by_target_and_size(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x" * 10)
    store = Store(tmp_path / "store")
    artifact = store.produce("baselines", "k", lambda tmp: os.symlink(source, tmp / "w.bin") and None)
    assert verify(artifact.path, full=True) is None
    source.write_bytes(b"x" * 9)
    assert "target has 9 bytes, 10 expected" in (verify(artifact.path) or "")
    source.unlink()
    assert "which is gone" in (verify(artifact.path) or "")


def test_sealed_json_round_trips_and_damage_is_named(tmp_path: Path) -> None:
    path = tmp_path / "records" / "item.json"
    write_json_sealed(path, {"outcome": "passed", "ci": (0.9, 1.1)})
    assert read_json_sealed(path) == {"outcome": "passed", "ci": [0.9, 1.1]}
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DamagedError, match="does not parse as JSON"):
        read_json_sealed(path)
    path.write_text(text.replace("passed", "failed"))
    with pytest.raises(DamagedError, match="does not match its checksum"):
        read_json_sealed(path)
    write_json_atomic(path, {"outcome": "passed"})
    with pytest.raises(DamagedError, match="carries no checksum"):
        read_json_sealed(path)
    with pytest.raises(FileNotFoundError):
        read_json_sealed(tmp_path / "none.json")


def test_earlier_records_skip_a_damaged_record_with_one_warning(tmp_path: Path) -> None:
    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.records import earlier_records, record_path

    items = build_items(load_suite("tiny"))[:3]
    for item in items:
        write_json_sealed(
            record_path(tmp_path, item), {"param_id": item.param_id, "definition_key": item.definition_key, "outcome": "passed"}
        )
    damaged = record_path(tmp_path, items[1])
    damaged.write_text(damaged.read_text()[:30])
    warnings: list[str] = []
    found = earlier_records(tmp_path, items, set(), warnings)
    assert [r["param_id"] for r in found] == [items[0].param_id, items[2].param_id]
    assert len(warnings) == 1 and items[1].param_id in warnings[0] and "does not parse" in warnings[0]


def test_recompute_ignores_artifacts_from_other_sessions(tmp_path: Path) -> None:
    Store(tmp_path, session="old").produce("results", "k", lambda tmp: {"v": 1})
    fresh = Store(tmp_path, session="new", recompute=frozenset({"results"}))
    artifact = fresh.produce("results", "k", lambda tmp: {"v": 2})
    assert not artifact.reused and fresh.metadata(artifact.path)["v"] == 2
    assert fresh.produce("results", "k", lambda tmp: {"v": 3}).reused
    assert fresh.warnings == []  # stale is not damaged


def test_a_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    store = Store(tmp_path)

    def broken(tmp: Path) -> None:
        (tmp / "half").write_text("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        store.produce("edits", "k", broken)
    assert store.lookup("edits", "k") is None
    assert [p.name for p in (tmp_path / "edits").iterdir() if not p.name.endswith(".lock")] == []


def test_full_disk_is_reported_with_a_fix_and_keeps_finished_work(tmp_path: Path) -> None:
    store = Store(tmp_path)
    kept = store.produce("results", "done", lambda tmp: (tmp / "r.json").write_text("{}") and None)

    def full(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match=r"disk full \(ENOSPC.*Finished results are kept"):
        store.produce("results", "next", full)
    assert (kept.path / "r.json").exists()


def test_a_real_full_filesystem_fails_the_write_names_enospc_and_a_rerun_completes(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "1m") as mount:
        store = Store(mount / "store")
        kept = store.produce("edits", "small", lambda tmp: (tmp / "w").write_bytes(b"1" * 100_000) and None)
        with pytest.raises(StoreError, match=r"disk full \(ENOSPC, No space left on device\)"):
            store.produce("edits", "big", lambda tmp: (tmp / "w").write_bytes(b"2" * 2_000_000) and None)
        assert verify(kept.path, full=True) is None
        assert sorted(p.name for p in (mount / "store" / "edits").iterdir()) == ["e-big.lock", "e-small", "e-small.lock"]
        again = store.produce("edits", "big", lambda tmp: (tmp / "w").write_bytes(b"2" * 500_000) and None)
        assert not again.reused and verify(again.path, full=True) is None


def test_write_json_atomic_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "x.json"
    write_json_atomic(path, {"a": [1, 2]})
    assert json.loads(path.read_text()) == {"a": [1, 2]}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


# --------------------------------------------------------------------------- real processes


def _contend(root: str, start: float, out: str) -> None:
    """One of several processes asking for the same artifact at the same moment."""

    def build(tmp: Path) -> None:
        with open(Path(root) / "builders", "a") as handle:
            handle.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        (tmp / "w.bin").write_bytes(b"w" * 1000)

    time.sleep(max(0.0, start - time.time()))
    artifact = Store(Path(root)).produce("edits", "shared", build)
    Path(out).write_text(json.dumps({"path": str(artifact.path), "reused": artifact.reused}))


def test_processes_contending_for_one_artifact_build_it_once(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    start = time.time() + 1.5
    procs = [context.Process(target=_contend, args=(str(tmp_path), start, str(tmp_path / f"out{i}"))) for i in range(4)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    results = [json.loads((tmp_path / f"out{i}").read_text()) for i in range(4)]
    assert len((tmp_path / "builders").read_text().split()) == 1
    assert sorted(r["reused"] for r in results) == [False, True, True, True]
    assert {r["path"] for r in results} == {str(tmp_path / "edits" / "e-shared")}
    assert len((tmp_path / BUILDS_LOG).read_text().splitlines()) == 1


def _hold_then_hang(root: str, ready) -> None:
    def build(tmp: Path) -> None:
        (tmp / "half.bin").write_bytes(b"h" * 1000)
        ready.set()
        time.sleep(600)

    Store(Path(root)).produce("edits", "k", build)


def test_a_sigkilled_builder_leaves_a_lock_that_blocks_nobody_and_a_leftover_that_is_swept(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    proc = context.Process(target=_hold_then_hang, args=(str(tmp_path), ready))
    proc.start()
    assert ready.wait(60)
    lock = ArtifactLock(tmp_path / "edits" / "e-k.lock")
    assert not lock.acquire(blocking=False)  # held by a live process
    assert f"pid {proc.pid} " in lock.holder()
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    leftovers = [p for p in (tmp_path / "edits").iterdir() if ".tmp-" in p.name]
    assert len(leftovers) == 1
    started = time.monotonic()
    assert lock.acquire(blocking=False)  # the kernel released it with the process
    lock.release()
    assert time.monotonic() - started < 1
    assert Store(tmp_path).sweep() == leftovers
    artifact = Store(tmp_path).produce("edits", "k", lambda tmp: (tmp / "w").write_text("ok") and None)
    assert not artifact.reused
    assert sorted(p.name for p in (tmp_path / "edits").iterdir()) == ["e-k", "e-k.lock"]


def test_sweep_leaves_a_build_in_progress_alone(tmp_path: Path) -> None:
    store = Store(tmp_path)
    seen: list[list[Path]] = []

    def build(tmp: Path) -> None:
        (tmp / "w").write_text("x")
        seen.append(Store(tmp_path).sweep())  # from inside the build: the lock is held (this thread)

    done = threading.Event()

    def sweep_from_another_thread(tmp: Path) -> None:
        (tmp / "w").write_text("x")
        thread = threading.Thread(target=lambda: (seen.append(Store(tmp_path).sweep()), done.set()))
        thread.start()
        thread.join()

    store.produce("edits", "a", sweep_from_another_thread)
    assert done.is_set() and seen == [[]]
