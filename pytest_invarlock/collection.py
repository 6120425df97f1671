"""Collection of a validation session: one parametrized test item per suite item, marks, deselection.

Torch-free. The test functions of `validation/` request `invarlock_item`; each gets one parameter
per suite item of its kinds, with a readable id (`tiny-kjv-quant_rtn_8bit_clean-run2`), kind and
size markers, and a skip mark where the item cannot run here.
"""

from __future__ import annotations

import pytest

from pytest_invarlock.campaign.items import BENCHMARK_TEST, CERTIFY_TESTS, Item, Kind, items_for_test
from pytest_invarlock.state import ConfigState

SIZE_MARKER_PREFIX = "size_"
SUITE_TESTS = (*CERTIFY_TESTS, BENCHMARK_TEST)


def is_suite_nodeid(nodeid: str) -> bool:
    """Whether a nodeid names a parametrized suite test (test_calibration[...], ...)."""
    return any(f"::{name}[" in nodeid for name in SUITE_TESTS)


def parametrize(metafunc: pytest.Metafunc, state: ConfigState) -> None:
    name = metafunc.function.__name__
    if name not in SUITE_TESTS:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: test functions that use `invarlock_item` must be named "
            f"{', '.join(SUITE_TESTS)}."
        )
    params = []
    for item in items_for_test(state.items, name):
        marks = [getattr(pytest.mark, str(item.kind)), getattr(pytest.mark, f"{SIZE_MARKER_PREFIX}{item.model.size_class}")]
        if item.scenario is not None and item.kind == Kind.STRESS and not item.scenario.gating:
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


def deselect(config: pytest.Config, items: list[pytest.Item], state: ConfigState) -> None:
    """--calibrate-only and --no-benchmarks deselect (not skip) the other items."""
    keep, drop = [], []
    for test_item in items:
        item = suite_item(test_item)
        excluded = item is not None and (
            (state.options.calibrate_only and item.kind != Kind.CALIBRATION)
            or (state.options.no_benchmarks and item.kind == Kind.BENCHMARK)
        )
        (drop if excluded else keep).append(test_item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
