"""Failures handled once, with real pytest (single process and real xdist workers) and stand-in items (no models):
failed shared work ends every item that needed it at once, naming the failed item and its cause; the circuit
breaker ends a model after N errors; the other models run on. The stand-ins use the same failure memory the
worker pipeline uses (`failure_memory`), so only the controller's part is under test here."""

from __future__ import annotations

import json

import pytest

from helpers import SCHED_SUITE as SUITE

TEST_MODULE = """
import json, os, time
import pytest
from pytest_invarlock.campaign.failures import Failure, Scope
from pytest_invarlock.failure_memory import FailureMemory
from pytest_invarlock.records import RECORD_PROPERTY, base_record
from pytest_invarlock.state import STATE_KEY


@pytest.fixture
def item_setup(invarlock_item):
    if invarlock_item.model.name == os.environ.get("ERRORING"):
        raise RuntimeError(f"load failed for {invarlock_item.param_id}")  # an item error, in setup


def _run(request, item):
    state = request.config.stash[STATE_KEY]
    memory = FailureMemory(state.run_dir, state.session)
    record = base_record(item)
    failure = memory.blocking(item)
    if failure is None and item.model.name == os.environ.get("BROKEN"):
        failure = memory.record(Failure(Scope.BASELINE, item.model.name, item.param_id, "WeightsUnreadable: truncated"))
    if failure is not None:
        record.update(error=failure.message, failed_work=failure.to_dict(), failed_here=failure.item == item.param_id)
        request.node.user_properties.append((RECORD_PROPERTY, json.dumps(record)))
        raise RuntimeError(failure.message)
    time.sleep(0.3)
    with open(os.environ["ITEM_LOG"], "a") as log:
        log.write(json.dumps({"item": item.param_id, "model": item.model.name}) + "\\n")


def test_calibration(invarlock_item, item_setup, request):
    _run(request, invarlock_item)


def test_edit(invarlock_item, item_setup, request):
    _run(request, invarlock_item)
"""


@pytest.fixture
def sandbox(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytester.makefile(".yaml", suite=SUITE)
    pytester.makepyfile(test_items=TEST_MODULE)
    for name in ("PYTEST_XDIST_WORKER", "BROKEN", "ERRORING"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ITEM_LOG", str(pytester.path / "items.jsonl"))
    return pytester


def records(pytester: pytest.Pytester) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (pytester.path / "run" / "records").glob("*.json")}


def ran(pytester: pytest.Pytester) -> list[str]:
    path = pytester.path / "items.jsonl"
    return [json.loads(line)["item"] for line in path.read_text().splitlines()] if path.exists() else []


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_failed_shared_work_ends_every_item_that_needed_it_at_once(sandbox, monkeypatch, xdist):
    monkeypatch.setenv("BROKEN", "mid")
    result = sandbox.runpytest_subprocess("--suite", "suite.yaml", "--run-dir", "run", "--gpus", "2x80", *xdist, timeout=120)
    found = records(sandbox)
    broken = {k: r for k, r in found.items() if r["model"] == "mid"}
    assert len(broken) == 4 and all(r["outcome"] in ("error", "failed") for r in broken.values()), broken
    (first,) = [r for r in broken.values() if r.get("failed_here")]
    for record in broken.values():
        assert f"baseline of mid failed in item {first['param_id']}: WeightsUnreadable: truncated" in record["error"]
    ended_by_controller = [r for r in broken.values() if r.get("ended_by") == "controller"]
    assert ended_by_controller and all(r["error"].startswith("not run: ") for r in ended_by_controller)
    assert max(r["ended"] for r in broken.values()) - first["ended"] < 3
    others = [r for r in found.values() if r["model"] != "mid"]
    assert len(others) == 8 and all(r["outcome"] == "passed" for r in others)
    assert not {i for i in ran(sandbox) if i.startswith("mid-")}  # nothing of the broken model ran to the end
    assert result.ret == 1


def test_the_circuit_breaker_ends_a_model_after_n_item_errors(sandbox, monkeypatch):
    monkeypatch.setenv("ERRORING", "small")
    sandbox.runpytest_subprocess(
        "--suite", "suite.yaml", "--run-dir", "run", "--invarlock-max-model-failures", "2", "-p", "no:randomly", timeout=120
    )
    found = records(sandbox)
    small = [r for r in found.values() if r["model"] == "small"]
    tripped = [r for r in small if r.get("ended_by") == "controller"]
    assert len(small) == 4 and len(tripped) == 2  # two real errors open the breaker; the other two end at once
    assert all(
        "model small (circuit breaker) failed in item" in r["error"] and "2 items of small failed" in r["error"] for r in tripped
    )
    assert all(r["outcome"] == "passed" for r in found.values() if r["model"] != "small")
