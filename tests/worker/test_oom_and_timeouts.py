"""OOM and hangs on CPU: a hung evaluate becomes a timed-out item and the worker goes on; an allocation that
raises torch.OutOfMemoryError is retried (smaller lm-eval batch, evaluate after releasing memory) and the
record says how often; the last failure is an item error with the numbers."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import offline_options, random_small_model, small_model_suite
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.state import ConfigState
from pytest_invarlock.worker import execution
from pytest_invarlock.worker.resources import EXIT_TIMED_OUT, ItemTimeout, deadline, is_oom, smaller_batch

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def test_deadline_interrupts_the_main_thread():
    started = time.monotonic()
    with pytest.raises(ItemTimeout, match=r"evaluate timed out after 0.3 s"), deadline(0.3, "evaluate"):
        time.sleep(10)
    assert time.monotonic() - started < 3


def test_watchdog_ends_an_xdist_worker_stuck_where_signals_cannot_reach(tmp_path):
    """SIGALRM blocked stands in for a hang in C code: the watchdog leaves a note and exits, xdist replaces the worker."""
    script = textwrap.dedent(f"""
        import signal, time
        from pathlib import Path
        from pytest_invarlock.worker.resources import deadline, timeout_note
        signal.pthread_sigmask(signal.SIG_BLOCK, {{signal.SIGALRM}})
        with deadline(0.3, "clean item m-x-run1", note=timeout_note(Path({str(tmp_path)!r}), "m-x-run1"), grace_s=0.3):
            time.sleep(30)
    """)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "PYTEST_XDIST_WORKER": "gw3"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == EXIT_TIMED_OUT and time.monotonic() - started < 20
    note = (tmp_path / "logs" / "timeouts.log").read_text()
    assert "m-x-run1: clean item m-x-run1 timed out after 0.3 s" in note and "replacement" in note


def test_oom_recognition_and_batch_steps():
    import torch

    assert is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert is_oom("[INVARLOCK:E201] MODEL-LOAD-FAILED ... pytest-invarlock: a torch.OutOfMemoryError was raised")
    assert not is_oom(RuntimeError("shape mismatch")) and not is_oom(None)
    assert [smaller_batch(b) for b in ("16", 3, "1", "auto:16", "auto")] == [8, 1, None, 8, 8]


# --- a real worker on a small random model -----------------------------------------------------------


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("faults")
    made = random_small_model(root)
    model_dir, corpus = made["m0"], made["corpus"]
    suite_file = root / "faults.yaml"
    suite_file.write_text(small_model_suite(model_dir, name="faults", extra="timeouts: {calibration: 4, benchmark: 120}\n"))
    return {"model": model_dir, "corpus": corpus, "suite": suite_file}


@pytest.fixture
def worker(assets, tmp_path, monkeypatch):
    from pytest_invarlock.worker.pipeline import Worker

    suite = load_suite(str(assets["suite"]))
    # the test's limits are seconds: drop the size class's floor so the suite's figure applies
    model = suite.models[0]
    suite = dataclasses.replace(
        suite, models=(dataclasses.replace(model, settings=dataclasses.replace(model.settings, timeout_floor_s=None)),)
    )
    state = ConfigState(
        suite=suite,
        items=build_items(suite),
        run_dir=tmp_path / "run",
        device="cpu",
        session="s",
        options=offline_options("inprocess"),
    )
    monkeypatch.setattr(execution, "BACKOFF_BASE_S", 0.0)
    w = Worker(state, "gw0")
    # fixed windows from the test's corpus: these tests are about time limits and OOM, not the window plan
    from pytest_invarlock.worker.certifier import EvaluateSettings

    settings = EvaluateSettings(
        dataset_file=assets["corpus"], seq_len=32, stride=32, min_tokens=1000, measure_guard_overhead=False
    )
    monkeypatch.setattr(w, "settings", lambda model, **kwargs: settings)
    monkeypatch.setattr(w, "window_fields", lambda model, run: {}, raising=False)
    return w


def _item(worker, kind):
    return next(i for i in worker.state.items if i.kind == kind)


def test_a_hung_evaluate_times_out_and_the_worker_goes_on(worker, monkeypatch):
    import invarlock.adapters.hf_mixin as hf_mixin

    calls = []

    def hang(*args, **kwargs):  # the first load hangs; InvarLock catches the interruption and tries a second loader
        calls.append(1)
        time.sleep(60 if len(calls) == 1 else 0)
        raise RuntimeError("no weights")

    monkeypatch.setattr(hf_mixin.HFAdapterMixin, "_load_pretrained_model", hang)
    cwd = Path.cwd()
    started = time.monotonic()
    with pytest.raises(execution.ItemError, match=r"timed out after 4 s") as raised:
        worker.run(_item(worker, "calibration"))
    assert time.monotonic() - started < 30 and Path.cwd() == cwd  # interrupted, and the process state restored
    record = raised.value.record
    assert record["timed_out"] is True and record["timeout_s"] == 4 and record["met"] is False
    # the calibration run is shared work (the preset needs it): it timed out under its own limit and is remembered
    assert "calibration run 1 of m (calibration limit) timed out after 4 s" in record["error"]
    assert record["failed_work"]["scope"] == "calibration" and record["failed_here"] is True
    assert record["environment"] == worker.environment and record["environment"]["versions"]["invarlock"]
    # the same worker takes its next item
    result = worker.run(_item(worker, "benchmark"))
    assert result.record["n"] == 4 and result.record["oom_retries"] == 0 and result.record["timeout_s"] == 120
    assert result.record["host_cache_models"] == 1 and result.record["host_cache_bytes_used"] > 0
    assert result.record["environment"]["device"] == "cpu" and result.record["environment"]["host"]


def test_lm_eval_oom_halves_the_batch_and_the_record_counts_it(worker, assets):
    import torch

    model, _, _ = worker.cache.get(worker.baseline(worker.state.suite.models[0]).path, "float32")

    def allocate(module, args, kwargs):
        ids = args[0] if args else kwargs["input_ids"]
        if ids.shape[0] > 2:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {ids.shape[0]} GiB")

    handle = model.register_forward_pre_hook(allocate, with_kwargs=True)
    try:
        result = worker.run(_item(worker, "benchmark"))
    finally:
        handle.remove()
    assert result.met and result.record["oom_retries"] == 2 and result.record["lm_eval_batch_used"] == "2"


def test_an_oom_inside_invarlock_is_retried_then_an_error_with_the_numbers(worker, monkeypatch):
    import invarlock.adapters.hf_mixin as hf_mixin
    import torch

    attempts = []

    def allocate(*args, **kwargs):
        attempts.append(1)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(hf_mixin.HFAdapterMixin, "_load_pretrained_model", allocate)
    with pytest.raises(execution.ItemError, match=r"CUDA out of memory in invarlock evaluate after 2 retries") as raised:
        worker.run(_item(worker, "calibration"))
    record = raised.value.record
    assert len(attempts) >= 3 and record["oom_retries"] == 2 and record["oom_exhausted"] is True  # 3 evaluates
    assert "plan " in record["error"] and "no larger placement to try: only the GPU scheduler" in record["error"]
    assert record["timed_out"] is False


def test_a_hung_evaluate_subprocess_is_killed_at_its_timeout(assets, tmp_path):
    from pytest_invarlock.worker.certifier import EvaluateSettings, certify

    hook = tmp_path / "hang"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text("import time\ntime.sleep(120)\n")  # the child hangs before it answers
    settings = EvaluateSettings(dataset_file=assets["corpus"], seq_len=32, stride=32, min_tokens=1000)
    started = time.monotonic()
    verdict = certify(
        assets["model"],
        assets["model"],
        tmp_path / "w",
        settings,
        edit_label="noop",
        mode="subprocess",
        timeout_s=2,
        env={"PYTHONPATH": str(hook)},
    )
    assert verdict.crashed and verdict.failure == "invarlock evaluate timed out after 2 s"
    assert time.monotonic() - started < 20


def test_the_cache_budget_is_the_share_the_controller_gave(worker):
    assert worker.cache.max_bytes == worker.state.host_cache_bytes
    assert execution.cache_budget_bytes(object(), 123) == 123  # a state without the figure keeps the default
