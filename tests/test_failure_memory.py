"""The session's failure memory in the run directory: the first writer wins across processes, items see what
they needed, a new session starts empty; hand-back notes are read once."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

from pytest_invarlock.campaign.failures import Failure, Scope
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.failure_memory import FailureMemory


def _record(root: str, n: int, start) -> None:
    start.wait(30)
    FailureMemory(Path(root), "s1").record(Failure(Scope.BASELINE, "tiny-kjv", f"item-{n}", f"cause {n}"))


def test_racing_workers_remember_one_failure_and_all_report_the_first(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    start = context.Event()
    workers = [context.Process(target=_record, args=(str(tmp_path), n, start)) for n in range(6)]
    for worker in workers:
        worker.start()
    start.set()
    for worker in workers:
        worker.join(30)
    memory = FailureMemory(tmp_path, "s1")
    (only,) = memory.all()
    again = memory.record(Failure(Scope.BASELINE, "tiny-kjv", "late-item", "late cause"))
    assert again == only and only.item.startswith("item-")  # the first writer's item and cause, for everyone
    assert memory.find(Scope.BASELINE, "tiny-kjv") == only
    assert FailureMemory(tmp_path, "s2").all() == []  # a new session (a rerun, --lf) tries again


def test_an_item_sees_the_failures_it_needed_and_not_its_own(tmp_path: Path) -> None:
    items = build_items(load_suite("tiny"))
    memory = FailureMemory(tmp_path, "s1")
    calibration = memory.record(Failure(Scope.CALIBRATION, "tiny-kjv", "tiny-kjv-calibration-run2", "crashed", detail="2"))
    by_id = {item.param_id: item for item in items}
    assert memory.blocking(by_id["tiny-kjv-quant_rtn_8bit_clean-run1"]) == calibration
    assert memory.blocking(by_id["tiny-kjv-calibration-run1"]) is None
    assert memory.blocking(by_id["tiny-kjv-baseline-kjv_cloze"]) is None
    baseline = memory.record(Failure(Scope.BASELINE, "tiny-kjv", "tiny-kjv-calibration-run1", "truncated"))
    assert memory.blocking(by_id["tiny-kjv-calibration-run1"]) is None  # its own failure: it already reported it
    assert memory.blocking(by_id["tiny-kjv-baseline-kjv_cloze"]) == baseline
    assert memory.blocking(by_id["tiny-kjv-quant_rtn_8bit_clean-run1"]) == calibration  # the oldest first
    other = FailureMemory(tmp_path, "s2")
    other.record(Failure(Scope.EDIT, "tiny-kjv", "tiny-kjv-quant_rtn_8bit_clean-run1", "kernel", detail="quant_rtn:8:128:ffn"))
    assert other.blocking(by_id["tiny-kjv-quant_rtn_8bit_clean-run2"]) is None  # found only when the weights are needed


def test_a_handback_note_is_read_once_and_remembered_for_the_session(tmp_path: Path) -> None:
    memory = FailureMemory(tmp_path, "s1")
    assert memory.take_handback("m-x-run1") is None and not memory.handed_back("m-x-run1")
    memory.hand_back("m-x-run1", {"reason": "oom", "placement": [0]})
    assert memory.handed_back("m-x-run1")
    note = memory.take_handback("m-x-run1")
    assert note is not None and note["reason"] == "oom" and note["placement"] == [0]
    assert memory.take_handback("m-x-run1") is None and memory.handed_back("m-x-run1")
