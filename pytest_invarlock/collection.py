"""Collection of a validation session: one parametrized test item per suite item, marks, deselection.

Torch-free. The test functions of `validation/` request `invarlock_item`; each gets one parameter
per suite item of its kinds, with a readable id (`tiny-kjv-quant_rtn_8bit_clean-run2`), kind and
size markers, and a skip mark where the item cannot run here.
"""

from __future__ import annotations

import pytest

from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, Item, Kind, items_for_test
from pytest_invarlock.scheduling.cost import REFERENCE_GPU_GB
from pytest_invarlock.scheduling.shards import parse_shard, split_items
from pytest_invarlock.state import ConfigState

SIZE_MARKER_PREFIX = "size_"
SUITE_TESTS = (*CERTIFY_TESTS, BENCHMARK_TEST)


def add_options(group: pytest.OptionGroup) -> None:
    """Which suite items this session runs."""
    group.addoption(
        "--calibrate-only",
        dest="invarlock_calibrate_only",
        action="store_true",
        help="run the calibration items only (and write the presets)",
    )
    group.addoption(
        "--no-benchmarks", dest="invarlock_no_benchmarks", action="store_true", help="deselect the lm-eval benchmark items"
    )
    group.addoption(
        "--shard",
        dest="invarlock_shard",
        default=None,
        metavar="K/N",
        help="run shard K of N (1-based) of the suite's items: a deterministic split balanced on the "
        "memory plan's cost, each model's items kept together where balance allows; "
        "non-suite tests run in shard 1",
    )


def is_suite_nodeid(nodeid: str) -> bool:
    """Whether a nodeid names a parametrized suite test (test_calibration[...], ...)."""
    return any(f"::{name}[" in nodeid for name in SUITE_TESTS)


def parametrize(metafunc: pytest.Metafunc, state: ConfigState) -> None:
    name = metafunc.function.__name__
    if name not in SUITE_TESTS:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: test functions that use `invarlock_item` must be named {', '.join(SUITE_TESTS)}."
        )
    params = []
    for item in items_for_test(state.items, name):
        marks = [getattr(pytest.mark, str(item.kind)), getattr(pytest.mark, f"{SIZE_MARKER_PREFIX}{item.model.size_class}")]
        if item.scenario is not None and item.scenario.expectation == "signal" and not item.benchmark:
            marks.append(pytest.mark.informational)
        reason = state.skip_reason(item)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(item, id=item.param_id, marks=marks))
    metafunc.parametrize("invarlock_item", params)


def suite_item(test_item: pytest.Item) -> Item | None:
    callspec = getattr(test_item, "callspec", None)
    item = callspec.params.get("invarlock_item") if callspec else None
    return item if isinstance(item, Item) else None  # an empty parameter set gives NOTSET


def _excluded_by_options(item: Item, state: ConfigState) -> bool:
    return (state.options.calibrate_only and item.kind != Kind.CALIBRATION) or (
        state.options.no_benchmarks and item.kind == Kind.BENCHMARK
    )


def shard_of(config: pytest.Config, state: ConfigState) -> tuple[int, dict[str, int]] | None:
    """With --shard K/N: (K - 1, param_id -> 0-based shard) over the suite items the options keep; else None.

    The split (`scheduling.shards.split_items`) depends only on the suite, the options and the GPUs'
    total size, so every shard process computes the same one (run all shards on one GPU model).
    """
    spec = config.getoption("invarlock_shard", None)
    if not spec:
        return None
    try:
        k, n = parse_shard(spec)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    gpu_gb = round(max(g.total_gb for g in state.gpus)) if state.gpus else REFERENCE_GPU_GB
    kept = [item for item in state.items if not _excluded_by_options(item, state)]
    return k - 1, split_items(kept, n, gpu_gb)


def deselect(config: pytest.Config, items: list[pytest.Item], state: ConfigState) -> None:
    """--calibrate-only and --no-benchmarks deselect (not skip) the other items; --shard K/N those of other shards.

    With --shard, tests that are not suite items run in shard 1 only, so the shards together run every test once.
    """
    shard = shard_of(config, state)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for test_item in items:
        item = suite_item(test_item)
        excluded = item is not None and _excluded_by_options(item, state)
        if shard is not None and not excluded:
            mine, assignment = shard
            excluded = assignment.get(item.param_id, 0) != mine if item is not None else mine != 0
        (drop if excluded else keep).append(test_item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
