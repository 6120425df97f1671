"""Failures handled once (pure): classification, backoff, which items a failure takes down, the breaker."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.campaign.failures import (
    CircuitBreaker,
    ErrorClass,
    Failure,
    Scope,
    backoff_s,
    classify,
    spec_of,
)
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("requests.exceptions.ConnectionError: HTTPSConnectionPool(host='huggingface.co'): Max retries exceeded", "transient"),
        ("huggingface_hub.errors.HfHubHTTPError: 503 Server Error: Service Unavailable for url: ...", "transient"),
        ("502 Server Error: Bad Gateway", "transient"),
        ("429 Client Error: Too Many Requests for url", "transient"),
        ("OSError: [Errno 116] Stale file handle: '/nfs/run/store/edits'", "transient"),
        ("urllib3.exceptions.ReadTimeoutError: Read timed out. (read timeout=10)", "transient"),
        ("socket.gaierror: [Errno -3] Temporary failure in name resolution", "transient"),
        ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", "oom"),
        ("StoreError: disk full (ENOSPC, No space left on device) while writing", "disk_full"),
        ("WeightsUnreadable: model.safetensors: its header claims 9 bytes but the file has 4", "permanent"),
        ("SafetensorError: Error while deserializing header: HeaderTooLarge", "permanent"),
        ("404 Client Error: Repository Not Found", "permanent"),
        ("calibration item tiny-calibration-run1 timed out after 600 s", "permanent"),
        ("RuntimeError: size mismatch for model.layers.0.mlp.up_proj.weight", "permanent"),
    ],
)
def test_errors_are_sorted_into_the_class_that_decides_what_happens(text, expected):
    assert classify(text) == ErrorClass(expected)


def test_out_of_memory_wins_over_transient_words_in_the_same_log():
    assert classify("Resource temporarily unavailable ... torch.OutOfMemoryError: CUDA out of memory") == ErrorClass.OOM


@settings(max_examples=200, deadline=None)
@given(attempt=st.integers(1, 30), seed=st.integers(0, 2**32), base=st.floats(0.1, 10), cap=st.floats(1, 500))
def test_backoff_is_capped_exponential_with_jitter(attempt, seed, base, cap):
    wait = backoff_s(attempt, base_s=base, cap_s=cap, rng=random.Random(seed))
    step = min(cap, base * 2 ** (attempt - 1))
    assert step / 2 <= wait <= step  # never zero, never over the cap


def test_backoff_doubles_until_the_cap_and_the_jitter_spreads_workers():
    floors = [backoff_s(n, base_s=5, cap_s=120, rng=random.Random(0)) for n in range(1, 8)]
    assert [round(min(120, 5 * 2 ** (n - 1)) / 2, 3) for n in range(1, 8)] == [2.5, 5.0, 10.0, 20.0, 40.0, 60.0, 60.0]
    assert all(a < b for a, b in itertools.pairwise(floors[:5]))  # doubling steps: each wait above the last
    spread = {round(backoff_s(3, rng=random.Random(seed)), 6) for seed in range(20)}
    assert len(spread) == 20  # twenty workers retrying after one outage do not retry together
    with pytest.raises(ValueError, match="count from 1"):
        backoff_s(0)


@pytest.fixture(scope="module")
def items():
    return build_items(load_suite("tiny"))


def test_a_failed_baseline_takes_down_every_item_of_its_model_and_no_other(items):
    failure = Failure(Scope.BASELINE, "tiny-kjv", "tiny-kjv-calibration-run1", "WeightsUnreadable: truncated")
    assert all(failure.affects(item) for item in items)
    assert not Failure(Scope.BASELINE, "other", "x", "y").affects(items[0])
    assert failure.message == "baseline of tiny-kjv failed in item tiny-kjv-calibration-run1: WeightsUnreadable: truncated"


def test_a_failed_calibration_takes_down_what_needs_the_preset_not_benchmarks_or_other_runs(items):
    failure = Failure(Scope.CALIBRATION, "tiny-kjv", "tiny-kjv-calibration-run2", "evaluate crashed", detail="2")
    hit = {item.param_id for item in items if failure.affects(item)}
    assert hit == {item.param_id for item in items if item.kind in ("clean", "stress", "error")}
    assert failure.message.startswith("calibration run 2 of tiny-kjv failed in item tiny-kjv-calibration-run2")


def test_a_failed_edit_takes_down_its_certify_and_benchmark_items_only(items):
    failure = Failure(Scope.EDIT, "tiny-kjv", "x", "kernel error", detail="magnitude_prune:0.1:ffn")
    hit = sorted(item.param_id for item in items if failure.affects(item))
    assert hit == [
        "tiny-kjv-prune_10pct_clean-kjv_cloze",
        "tiny-kjv-prune_10pct_clean-kjv_next_verse",
        "tiny-kjv-prune_10pct_clean-run1",
        "tiny-kjv-prune_10pct_clean-run2",
    ]
    assert {spec_of(item) for item in items if item.kind == "calibration"} == {None}
    assert not failure.ends_dependents_at_once  # its items whose certificates are stored do not need the weights
    assert Failure(Scope.CALIBRATION, "tiny-kjv", "x", "y", detail="1").ends_dependents_at_once


def test_failures_round_trip_and_share_a_key_per_piece_of_work():
    failure = Failure(Scope.EDIT, "m", "m-e-run1", "boom", ErrorClass.TRANSIENT, "quant_rtn:8:128:ffn")
    assert Failure.from_dict(failure.to_dict()) == failure
    assert failure.key == Failure(Scope.EDIT, "m", "other-item", "other cause", detail="quant_rtn:8:128:ffn").key
    assert failure.key != Failure(Scope.EDIT, "m", "x", "y", detail="quant_rtn:4:32:all").key


def test_the_breaker_opens_at_the_threshold_once_and_lists_what_failed():
    breaker = CircuitBreaker(3)
    assert breaker.record("m", "m-a", "OOM") is None
    assert breaker.record("other", "o-a", "x") is None
    assert breaker.record("m", "m-b", "crashed") is None
    opened = breaker.record("m", "m-c", "timed out")
    assert opened is not None and opened.scope == Scope.MODEL and opened.item == "m-c"
    assert "3 items of m failed (m-a: OOM; m-b: crashed; m-c: timed out)" in opened.cause
    assert breaker.record("m", "m-d", "again") is None  # open already
    assert CircuitBreaker(0).record("m", "m-a", "x") is None  # 0: never opens
    with pytest.raises(ValueError, match="0 \\(off\\) or more"):
        CircuitBreaker(-1)
