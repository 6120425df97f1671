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

from pytest_invarlock import collection
from pytest_invarlock.campaign.kinds import KIND_HELP, SCENARIO_KINDS
from pytest_invarlock.campaign.suite import SuiteError
from pytest_invarlock.state import STATE_KEY, SUITE_INI, ConfigState, build_state, declared_suite

pytest_plugins = ["pytest_invarlock.fixtures", "pytest_invarlock.distribution", "pytest_invarlock.reliability"]

DEFAULT_SUITE = "tiny"
SIZE_MARKER_PREFIX = collection.SIZE_MARKER_PREFIX
USAGE_ERROR_KEY = pytest.StashKey[pytest.UsageError]()  # bad input met while activating at collection (rule 4)
USAGE_ERROR_OUTPUT = "invarlock_usage_error"  # the same, in an xdist worker's workeroutput


def _seconds(value: str) -> float:
    """A non-negative, finite number of seconds (argparse turns the ValueError into a usage error)."""
    seconds = float(value)
    if not 0 <= seconds < float("inf"):
        raise ValueError(value)
    return seconds


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("invarlock", "InvarLock edit-detection validation")
    group.addoption(
        "--suite",
        default=None,
        help="suite name (tiny, smol, ci, subset, showcase, workshop3, full, b200) or path to a suite YAML; naming it makes this a validation session (default suite: tiny)",
    )
    group.addoption(
        "--models",
        action="append",
        default=[],
        help="override the suite's models: catalogue names, hub ids or local dirs, comma-separated or repeated",
    )
    for kind in SCENARIO_KINDS:
        group.addoption(
            f"--runs-{kind}", type=int, default=None, metavar="N", help=f"override the number of {kind} runs per scenario"
        )
    group.addoption("--no-errors", action="store_true", help="drop the error-injection scenarios")
    group.addoption("--benchmarks", default=None, help="override the lm-eval tasks, comma-separated")
    group.addoption("--no-benchmarks", action="store_true", help="deselect the lm-eval benchmark items")
    group.addoption(
        "--run-dir",
        default=None,
        help="where artifacts, records and reports go; default: validation-runs/<suite> under the rootdir",
    )
    group.addoption("--calibrate-only", action="store_true", help="run the calibration items only (and write the presets)")
    group.addoption("--tier", default=None, help="override the InvarLock tier (balanced, conservative, aggressive)")
    group.addoption(
        "--determinism",
        choices=("throughput", "strict"),
        default="throughput",
        help="throughput: TF32 and cuDNN benchmark on; strict: off, deterministic cuBLAS",
    )
    group.addoption(
        "--offline", action="store_true", default=None, help="never touch a model hub (default when no network is reachable)"
    )
    group.addoption(
        "--online", action="store_false", dest="offline", help="allow hub downloads (default when the hub is reachable)"
    )
    group.addoption(
        "--revisions",
        default=None,
        metavar="FILE",
        help="pinned hub commits (model_revisions.json from an online run); default <run-dir>/state/model_revisions.json",
    )
    group.addoption(
        "--evidence-pack",
        default=None,
        metavar="DIR",
        help="at the end of the run, write a signed evidence pack to DIR and DIR.tar.gz (see --signing-key)",
    )
    group.addoption(
        "--signing-key",
        default=None,
        metavar="FILE",
        help="Ed25519 private key (PEM) that signs the evidence pack's manifest; make one with "
        "`python -m pytest_invarlock keygen`",
    )
    group.addoption(
        "--recompute", action="store_true", help="recompute presets, edits, baseline reports and results instead of reusing them"
    )
    group.addoption(
        "--no-disk-preflight",
        action="store_true",
        help="start even when the run directory's filesystem looks too small for the selected items (the preflight estimate is skipped)",
    )
    group.addoption(
        "--certify-mode",
        choices=("auto", "subprocess", "inprocess"),
        default="auto",
        help="run invarlock evaluate in the worker process (faster) or a subprocess (isolated); auto: in-process unless an item spans several GPUs",
    )
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default=None, help="override the suite's device")
    group.addoption(
        "--gpus",
        default=None,
        metavar="SPEC",
        help="simulate this node's GPUs instead of asking NVML: 8x180, 80,80,24 or 2x80,24 (sizes in GB), "
        "with the free memory NVML would report after a colon: 8x80:78.5, 80:79,80:79,24:23. "
        "With --device auto on a host without GPUs, the plan is that node's (no CPU-size skip)",
    )
    group.addoption(
        "--shard",
        default=None,
        metavar="K/N",
        help="run shard K of N (1-based) of the suite's items: a deterministic split balanced on the "
        "memory plan's cost, each model's items kept together where balance allows; "
        "non-suite tests run in shard 1",
    )
    group.addoption(
        "--progress-interval",
        type=_seconds,
        default=30.0,
        metavar="SECONDS",
        help="without a terminal (CI logs, | tee): print a progress line at most this often and at "
        "every further 10%% of the items (default 30); on a terminal the status updates in place; "
        "0 turns progress off (so does -q)",
    )
    group.addoption(
        "--gpu-plan",
        action="store_true",
        help="print each item's memory plan (weights, KV cache, peak GB, GPUs) and write "
        "<run-dir>/analysis/memory_plan.csv; works with --co",
    )
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
    config.addinivalue_line("markers", "informational: stress scenarios that record a signal and never fail")
    for size_class in sorted({m.size_class for m in state.suite.models}):
        config.addinivalue_line("markers", f"{SIZE_MARKER_PREFIX}{size_class}: model size class {size_class}")
    from pytest_invarlock.distribution import register_session_pieces

    register_session_pieces(config, state)
    return state


def pytest_configure(config: pytest.Config) -> None:
    given = config.getoption("suite", None)
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
