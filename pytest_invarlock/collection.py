"""Collection of a validation session: one parametrized test item per suite item, marks, deselection.

Torch-free. The test functions of `validation/` request `invarlock_item`; each gets one parameter
per suite item of its kinds, with a readable id (`tiny-kjv-quant_rtn_8bit_clean-run2`), kind and
size markers, and a skip mark where the item cannot run here.
"""

from __future__ import annotations

import pytest

from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, Kind, SuiteItem, items_for_test
from pytest_invarlock.scheduling.claim_policy import parse_node
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
        help="run shard K of N (1-based) of the suite's items: a fixed split, the same on every node whatever its "
        "GPUs, balanced on the cost model, each model's items kept together where balance allows; non-suite tests "
        "run in shard 1 (--campaign-node K/N claims work at run time instead)",
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


def suite_item(test_item: pytest.Item) -> SuiteItem | None:
    callspec = getattr(test_item, "callspec", None)
    item = callspec.params.get("invarlock_item") if callspec else None
    return item if isinstance(item, SuiteItem) else None  # an empty parameter set gives NOTSET


def _excluded_by_options(item: SuiteItem, state: ConfigState) -> bool:
    return (state.options.calibrate_only and item.kind != Kind.CALIBRATION) or (
        state.options.no_benchmarks and item.kind == Kind.BENCHMARK
    )


def campaign_items(state: ConfigState) -> list[SuiteItem]:
    """The suite's items that the options keep: what a sharded or claimed campaign divides among its nodes."""
    return [item for item in state.items if not _excluded_by_options(item, state)]


def shard_of(config: pytest.Config, state: ConfigState) -> tuple[int, dict[str, int]] | None:
    """With --shard K/N: (K - 1, param_id -> 0-based shard) over the suite items the options keep; else None.

    The split (`scheduling.shards.split_items`) depends only on the suite and the options, never on the
    node's GPUs (costs are taken at the cost model's reference GPU size), so nodes of different GPU types
    compute the same partition.
    """
    spec = config.getoption("invarlock_shard", None)
    if not spec:
        return None
    try:
        k, n = parse_shard(spec)
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return k - 1, split_items(campaign_items(state), n)


def deselect(config: pytest.Config, items: list[pytest.Item], state: ConfigState) -> None:
    """--calibrate-only and --no-benchmarks deselect (not skip) the other items; --shard K/N those of other shards.

    With --shard (or --campaign-node), tests that are not suite items run in shard (node) 1 only, so the nodes
    together run every test once.
    """
    shard = shard_of(config, state)
    plain_here = shard[0] == 0 if shard is not None else _campaign_node_index(config) in (None, 0)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for test_item in items:
        item = suite_item(test_item)
        if item is None:
            excluded = not plain_here
        else:
            excluded = _excluded_by_options(item, state) or (shard is not None and shard[1][item.param_id] != shard[0])
        (drop if excluded else keep).append(test_item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _campaign_node_index(config: pytest.Config) -> int | None:
    """With --campaign-node K/N: K - 1 (every suite item stays: they are claimed at run time)."""
    spec = config.getoption("invarlock_campaign_node", None)
    if not spec:
        return None
    try:
        return parse_node(str(spec))[0] - 1
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
