"""The pytest11 entry point: options, and the pieces of a validation session, registered only in one.

A pytest11 plugin is loaded into every pytest session of its environment, so this one stays
passive until used. A session is a *validation session* when

1. `--suite` is given on the command line, or
2. the `invarlock_suite` ini option is set, or
3. an initial conftest (one pytest loads before configuring, e.g. `validation/conftest.py` for
   `pytest validation/`) sets the module attribute `INVARLOCK_SUITE = "<suite>"`, or
4. a collected test requests the `invarlock_item` fixture (the suite's own tests): the session
   then activates at collection with the default suite. Under xdist the controller activates
   when a worker reports such tests; GPU scheduling needs rule 1-3, since xdist picks its
   scheduler before any collection.

Everywhere else the plugin adds its options and fixtures and does nothing: no header, no suite
loading, no markers or skips, no scheduler, no `-n auto` override, no environment change, no file.
This module is loaded on the xdist controller, which never imports torch.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_invarlock import campaign_node, collection, distribution, evidence_writer, knobs, preflight, progress, reliability
from pytest_invarlock import state as session_state
from pytest_invarlock.campaign.kinds import KIND_HELP
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.state import STATE_KEY, SUITE_INI, ConfigState, build_state, declared_suite

pytest_plugins = ["pytest_invarlock.fixtures", "pytest_invarlock.distribution"]

DEFAULT_SUITE = "tiny"
SIZE_MARKER_PREFIX = collection.SIZE_MARKER_PREFIX
USAGE_ERROR_KEY = pytest.StashKey[pytest.UsageError]()  # bad input met while activating at collection (rule 4)
USAGE_ERROR_OUTPUT = "invarlock_usage_error"  # the same, in an xdist worker's workeroutput


# The modules that own options, each registering its own in `add_options(group)`.
OPTION_OWNERS = (
    session_state,
    knobs,
    collection,
    campaign_node,
    distribution,
    preflight,
    progress,
    evidence_writer,
    reliability,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    """Every concern registers its own options. Their names avoid the option names of popular plugins
    (tests/test_citizenship.py keeps the survey) and every `dest` starts with `invarlock_`, because all
    plugins of an environment share argparse's one namespace."""
    group = parser.getgroup("invarlock", "InvarLock edit-detection validation")
    for owner in OPTION_OWNERS:
        owner.add_options(group)
    parser.addini(
        SUITE_INI, "make every session of this project a validation session with this suite (name or YAML path)", default=None
    )


def state_of(config: pytest.Config) -> ConfigState | None:
    """The validation state, or None in a passive session."""
    return config.stash.get(STATE_KEY, None)


def activate(config: pytest.Config, suite_name: str) -> ConfigState:
    """Build the state (once) and register the session's pieces. Bad input is a usage error (exit 4)."""
    state = state_of(config)
    if state is not None:
        return state
    try:
        state = build_state(config, suite_name)
    except SuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = state
    for kind, help_text in KIND_HELP.items():
        config.addinivalue_line("markers", f"{kind}: {help_text}")
    config.addinivalue_line("markers", "informational: stress edits and error injections that record a signal and never fail")
    for size_class in sorted({m.size_class for m in state.suite.models}):
        config.addinivalue_line("markers", f"{SIZE_MARKER_PREFIX}{size_class}: model size class {size_class}")
    from pytest_invarlock.distribution import register_session_pieces

    register_session_pieces(config, state)
    return state


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("invarlock_suite", None)
    if given is not None and not str(given).strip():  # e.g. `--suite "$SUITE"` with SUITE unset
        raise pytest.UsageError(
            "--suite was given an empty name. Name a suite (tiny, smol, ci, subset, showcase, workshop3, full, b200) "
            "or a suite YAML file, or leave --suite out."
        )
    suite = declared_suite(config)
    if suite is not None:
        activate(config, suite)


def pytest_report_header(config: pytest.Config) -> list[str]:
    state = state_of(config)
    if state is None:
        return []
    suite = state.suite
    return [
        f"invarlock suite: {suite.name} ({suite.path}), {len(suite.models)} model(s), "
        f"{len(state.items)} items; run dir: {state.run_dir}; "
        f"{'offline' if state.options.offline else 'online'}, device {state.device}"
    ]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "invarlock_item" not in metafunc.fixturenames:
        return
    if USAGE_ERROR_KEY in metafunc.config.stash:
        return
    try:
        state = state_of(metafunc.config) or activate(metafunc.config, DEFAULT_SUITE)
    except pytest.UsageError as exc:
        # Rule 4 activates inside a module's collection, where pytest would report any exception as a
        # collection error with a traceback; raised again after collection it is a usage error (exit 4).
        # An xdist worker also hands the message to the controller (see pytest_testnodedown).
        metafunc.config.stash[USAGE_ERROR_KEY] = exc
        workeroutput: dict[str, Any] | None = getattr(metafunc.config, "workeroutput", None)
        if workeroutput is not None:
            workeroutput[USAGE_ERROR_OUTPUT] = str(exc)
        return
    collection.parametrize(metafunc, state)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if USAGE_ERROR_KEY in config.stash:
        raise config.stash[USAGE_ERROR_KEY]
    state = state_of(config)
    if state is not None:
        collection.deselect(config, items, state)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """A worker met bad input while activating at collection (rule 4): the controller exits with its usage error."""
    message = (getattr(node, "workeroutput", None) or {}).get(USAGE_ERROR_OUTPUT)
    if message:
        raise pytest.UsageError(message)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    """Rule 4 on the controller: a worker collected the suite's tests."""
    config = node.config
    if state_of(config) is None and any(collection.is_suite_nodeid(nodeid) for nodeid in ids):
        activate(config, DEFAULT_SUITE)
