"""Fixtures the validation suite (and users' own tests) build on.

The factories are session-scoped: each xdist worker is its own session, and the run directory's
store makes every product once per run directory anyway. This module is imported on the torch-free
controller, so it defers `pipeline` (torch, invarlock) to the first fixture call.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.campaign.suite.definitions import Model, Scenario, Suite
from pytest_invarlock.state import STATE_KEY, ConfigState

if TYPE_CHECKING:
    from pytest_invarlock.worker.pipeline import ItemResult, Worker


def session_state(request: pytest.FixtureRequest) -> ConfigState:
    """The validation session's state; a plain session has none, and these fixtures say how to get one."""
    state = request.config.stash.get(STATE_KEY, None)
    if state is None:
        pytest.fail(
            "the invarlock fixtures need a validation session: run with --suite NAME (or set the invarlock_suite ini option)",
            pytrace=False,
        )
    return state


@pytest.fixture(scope="session")
def invarlock_worker(request: pytest.FixtureRequest) -> Worker:
    """This process's `pipeline.Worker`: model cache, store access, InvarLock calls."""
    from pytest_invarlock.distribution import SPACER_INPUT
    from pytest_invarlock.worker.pipeline import Worker

    workerinput = getattr(request.config, "workerinput", None) or {}
    # Our GPU scheduler sends this worker its items (it sets the spacer): an item may be given back for more GPUs.
    return Worker(
        session_state(request), os.environ.get("PYTEST_XDIST_WORKER", "main"), scheduled=bool(workerinput.get(SPACER_INPUT))
    )


@pytest.fixture(scope="session")
def invarlock_suite(request: pytest.FixtureRequest) -> Suite:
    """The suite after command-line overrides."""
    return session_state(request).suite


@pytest.fixture(scope="session")
def invarlock_baseline(invarlock_worker: Worker) -> Callable[[Model], Path]:
    """invarlock_baseline(model) -> the baseline artifact: a neutral local directory plus model_profile.json."""
    return lambda model: invarlock_worker.baseline(model).path


@pytest.fixture(scope="session")
def invarlock_preset(invarlock_worker: Worker) -> Callable[[Model], Path]:
    """invarlock_preset(model) -> path of the calibrated preset YAML (runs missing calibration runs itself)."""
    return lambda model: invarlock_worker.preset(model)[1]


@pytest.fixture(scope="session")
def invarlock_edited_model(invarlock_worker: Worker) -> Callable[[Model, Scenario], Path]:
    """invarlock_edited_model(model, scenario) -> directory of the scenario's edited or error-injected weights."""
    return lambda model, scenario: invarlock_worker.edited_model(model, scenario).path


@pytest.fixture
def invarlock_item() -> SuiteItem:
    """The suite item of the test; the plugin parametrizes it for test_calibration/edit/error/benchmark."""
    raise pytest.UsageError(
        "invarlock_item is only available to the validation tests test_calibration, test_edit, test_error "
        "and test_benchmark, which the plugin parametrizes from --suite."
    )


@pytest.fixture
def invarlock_result(invarlock_item: SuiteItem, invarlock_worker: Worker, request: pytest.FixtureRequest) -> ItemResult:
    """Run (or reuse) the item's certify or benchmark and record its numbers for junit and the verdict.

    The numbers go to the item's user_properties, which xdist forwards to the controller and
    --junitxml writes as <property> elements of the testcase (what the `record_property` fixture
    does, without its warning under the default junit_family).
    """
    from pytest_invarlock.records import RECORD_PROPERTY

    properties = request.node.user_properties
    try:
        result = invarlock_worker.run(invarlock_item)
    except Exception as error:  # an item error (OOM after retries, time limit) still reports what happened
        record = getattr(error, "record", None)
        if isinstance(record, dict):
            properties.append((RECORD_PROPERTY, json.dumps(record, default=str)))
        raise
    properties.append((RECORD_PROPERTY, json.dumps(result.record, default=str)))
    properties.extend(result.properties)
    return result
