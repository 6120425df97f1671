"""Evicted artifacts: the weights go, the seal and metadata stay; a rebuild must reproduce the sealed files;
nothing held in use (by this process or another) is evicted; the edit budget and the session's needs decide
what goes first (edit_lifecycle)."""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import time
from pathlib import Path

import pytest

from pytest_invarlock.edit_lifecycle import Needs, edit_id, is_weights, make_room, on_disk_bytes, read_needs, write_needs
from pytest_invarlock.store import EVICTED, RebuildMismatch, Store, verify


def weights(content: bytes, model: str = "m", spec: str = "quant_rtn:8:128:ffn"):
    def build(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(content)
        (tmp / "config.json").write_text("{}")
        (tmp / "edit_metadata.json").write_text(json.dumps({"spec": spec}))
        return {"model": model, "spec": spec}

    return build


def test_an_evicted_artifact_keeps_its_seal_and_is_rebuilt_quietly_with_the_same_bytes(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    made = store.produce("edits", "k", weights(b"x" * 1000))
    assert store.evict(made.path, is_weights, "test") == 1000
    assert not (made.path / "model.safetensors").exists()
    assert (made.path / "edit_metadata.json").is_file() and (made.path / "checksums.json").is_file()
    marker = json.loads((made.path / EVICTED).read_text())
    assert list(marker["files"]) == ["model.safetensors"] and marker["bytes"] == 1000 and marker["reason"] == "test"
    assert verify(made.path) == EVICTED and store.lookup("edits", "k") is None
    again = store.produce("edits", "k", weights(b"x" * 1000))
    assert not again.reused and (again.path / "model.safetensors").read_bytes() == b"x" * 1000
    assert verify(again.path) is None and not (again.path / EVICTED).exists()
    assert store.warnings == []  # an eviction is not damage
    assert store.rebuilt == [f"{tmp_path.name}/edits/e-k"]  # named in the item's record
    assert store.evict(made.path, lambda rel: False, "nothing to remove") == 0


def test_a_rebuild_that_differs_from_the_sealed_copy_is_refused_and_the_stub_kept(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    made = store.produce("edits", "k", weights(b"a" * 64))
    store.evict(made.path, is_weights, "test")
    with pytest.raises(RebuildMismatch, match=r"model.safetensors differs from the copy sealed on .* --recompute"):
        store.produce("edits", "k", weights(b"b" * 64))
    assert verify(made.path) == EVICTED  # the stub is kept: the next try compares again
    assert not list(made.path.parent.glob(".e-k.tmp-*"))
    recompute = Store(tmp_path, session="s2", recompute=frozenset({"edits"}))
    assert recompute.produce("edits", "k", weights(b"b" * 64)).reused is False  # --recompute builds it afresh


def test_nothing_held_in_use_is_evicted(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    made = store.produce("edits", "k", weights(b"x" * 10))
    with contextlib.ExitStack() as holds:
        held = store.produce_in_use("edits", "k", weights(b"x" * 10), holds)
        assert held.path == made.path
        with store.in_use(made.path):  # re-entrant in one process
            pass
        assert store.evict(made.path, is_weights, "test") == 0
    assert store.evict(made.path, is_weights, "test") == 10


def _hold(root: str, ready, release) -> None:
    store = Store(Path(root), session="s1")
    with contextlib.ExitStack() as holds:
        store.produce_in_use("edits", "k", weights(b"x" * 10), holds)
        ready.set()
        release.wait(30)


def test_an_edit_another_process_reads_is_not_evicted_until_it_lets_go(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    made = store.produce("edits", "k", weights(b"x" * 10))
    context = multiprocessing.get_context("fork")
    ready, release = context.Event(), context.Event()
    reader = context.Process(target=_hold, args=(str(tmp_path), ready, release))
    reader.start()
    try:
        assert ready.wait(30)
        assert store.evict(made.path, is_weights, "test") == 0
    finally:
        release.set()
        reader.join(30)
    assert store.evict(made.path, is_weights, "test") == 10


def test_make_room_keeps_the_budget_unneeded_edits_first_then_least_recently_used(tmp_path: Path) -> None:
    store = Store(tmp_path, session="s1")
    paths = {}
    for name in ("a", "b", "c"):
        paths[name] = store.produce("edits", name, weights(b"x" * 100, spec=f"spec-{name}")).path
        time.sleep(0.02)
    with store.in_use(paths["a"]):  # touched last: "a" is the most recently used
        pass
    needs = Needs(budget=250, pending={edit_id("m", "spec-a"): {"m-a-run1"}, edit_id("m", "spec-b"): {"m-b-run1"}})
    write_needs(tmp_path, "s1", needs)
    assert read_needs(tmp_path, "s1") == needs
    assert make_room(store, needs, incoming=0, reason="x") == [paths["c"]]  # unneeded goes first
    assert make_room(store, needs, incoming=100, reason="x") == [paths["b"]]  # then the least recently used
    assert on_disk_bytes(store) == 100
    assert make_room(store, None, incoming=10**9, reason="no needs file: nothing planned") == []
    with store.in_use(paths["a"]):
        assert make_room(store, needs, incoming=10**9, reason="x") == []  # in use: stays, over the budget
