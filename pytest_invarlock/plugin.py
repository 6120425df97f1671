"""The pytest plugin: options, markers, parametrization from the suite, and the verdict report.

This module is loaded on the xdist controller, which must never import torch: everything here is
torch-free. Worker-side work (models, edits, InvarLock) lives in `pipeline` and is imported lazily
by the fixtures in `fixtures`.
"""

from __future__ import annotations

import uuid

import pytest

from .context import ConfigState, STATE_KEY, build_state
from .items import BENCHMARK_TEST, CERTIFY_TESTS, Item, items_for_test
from .report import RecordCollector
from .suite import SuiteError

pytest_plugins = ["pytest_invarlock.fixtures", "pytest_invarlock.xdist_plugin"]

KIND_MARKERS = {
    "calibration": "calibration runs: the baseline against itself; must pass and feed the preset",
    "clean": "clean edits: must pass",
    "stress": "stress edits: must be flagged (gating) or record a signal (informational)",
    "error": "error injections: must be detected",
    "benchmark": "lm-eval benchmark items on the baseline and on each edit",
}
SIZE_MARKER_PREFIX = "size_"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("invarlock", "InvarLock edit-detection validation")
    group.addoption("--suite", default="tiny", help="suite name (tiny, smol, ci, subset, showcase, workshop3, full, b200) or path to a suite YAML; default: tiny")
    group.addoption("--models", action="append", default=[], help="override the suite's models: catalogue names, hub ids or local dirs, comma-separated or repeated")
    for kind in ("calibration", "clean", "stress", "error"):
        group.addoption(f"--runs-{kind}", type=int, default=None, metavar="N", help=f"override the number of {kind} runs per scenario")
    group.addoption("--no-errors", action="store_true", help="drop the error-injection scenarios")
    group.addoption("--benchmarks", default=None, help="override the lm-eval tasks, comma-separated")
    group.addoption("--no-benchmarks", action="store_true", help="deselect the lm-eval benchmark items")
    group.addoption("--run-dir", default=None, help="where artifacts, records and reports go; default: validation-runs/<suite> under the rootdir")
    group.addoption("--calibrate-only", action="store_true", help="run the calibration items only (and write the presets)")
    group.addoption("--tier", default=None, help="override the InvarLock tier (balanced, conservative, aggressive)")
    group.addoption("--determinism", choices=("throughput", "strict"), default="throughput", help="throughput: TF32 and cuDNN benchmark on; strict: off, deterministic cuBLAS")
    group.addoption("--offline", action="store_true", default=None, help="never touch a model hub (default when no network is reachable)")
    group.addoption("--online", action="store_false", dest="offline", help="allow hub downloads (default when the hub is reachable)")
    group.addoption("--recompute", action="store_true", help="recompute presets, edits, baseline reports and results instead of reusing them")
    group.addoption("--certify-mode", choices=("auto", "subprocess", "inprocess"), default="auto", help="run invarlock evaluate in the worker process (faster) or a subprocess (isolated); auto: in-process unless an item spans several GPUs")
    group.addoption("--device", choices=("auto", "cpu", "cuda"), default=None, help="override the suite's device")


def pytest_configure(config: pytest.Config) -> None:
    for name, help_text in KIND_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {help_text}")
    config.addinivalue_line("markers", "informational: stress scenarios that record a signal and never fail")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where none is visible")
    config.addinivalue_line("markers", "slow: minutes of CPU time; opt in with -m slow")
    config.addinivalue_line("markers", f"{SIZE_MARKER_PREFIX}<class>: model size class (size_tiny, size_7b, ..., size_70b)")
    try:
        state = build_state(config, session=_session_token(config))
    except SuiteError as exc:
        raise pytest.UsageError(str(exc)) from None
    config.stash[STATE_KEY] = state
    for size_class in {m.size_class for m in state.suite.models}:
        config.addinivalue_line("markers", f"{SIZE_MARKER_PREFIX}{size_class}: model size class {size_class}")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(RecordCollector(state), "invarlock-records")


def _session_token(config: pytest.Config) -> str:
    """One token per pytest session, shared with xdist workers: artifacts made under it are fresh."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput and "invarlock_session" in workerinput:
        return workerinput["invarlock_session"]
    return uuid.uuid4().hex


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:  # xdist controller hook
    node.workerinput["invarlock_session"] = node.config.stash[STATE_KEY].session


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "invarlock_item" not in metafunc.fixturenames:
        return
    state: ConfigState = metafunc.config.stash[STATE_KEY]
    name = metafunc.function.__name__
    if name not in CERTIFY_TESTS and name != BENCHMARK_TEST:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid}: test functions that use `invarlock_item` must be named "
            f"{', '.join([*CERTIFY_TESTS, BENCHMARK_TEST])}."
        )
    params = []
    for item in items_for_test(state.items, name):
        marks = [getattr(pytest.mark, item.kind), getattr(pytest.mark, f"{SIZE_MARKER_PREFIX}{item.model.size_class}")]
        if item.scenario is not None and item.kind == "stress" and not item.scenario.gating:
            marks.append(pytest.mark.informational)
        reason = state.skip_reason(item)
        if reason:
            marks.append(pytest.mark.skip(reason=reason))
        params.append(pytest.param(item, id=item.param_id, marks=marks))
    metafunc.parametrize("invarlock_item", params)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    state: ConfigState = config.stash[STATE_KEY]
    _skip_opt_in_tests(config, items)
    keep, drop = [], []
    for test_item in items:
        kind = _item_kind(test_item)
        excluded = kind is not None and (
            (state.options.calibrate_only and kind != "calibration")
            or (state.options.no_benchmarks and kind == "benchmark")
        )
        (drop if excluded else keep).append(test_item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _skip_opt_in_tests(config: pytest.Config, items: list[pytest.Item]) -> None:
    """`gpu` tests need a GPU that NVML sees (not a --gpus simulation); `slow` ones run only under -m slow."""
    slow_selected = "slow" in (config.getoption("markexpr") or "")
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items:
        from .gpus import probe_gpus

        if not probe_gpus():
            for test_item in gpu_items:
                test_item.add_marker(pytest.mark.skip(reason="gpu test: NVML sees no CUDA GPU on this machine"))
    if not slow_selected:
        for test_item in items:
            if test_item.get_closest_marker("slow"):
                test_item.add_marker(pytest.mark.skip(reason="slow test (minutes of CPU): opt in with -m slow"))


def _item_kind(test_item: pytest.Item) -> str | None:
    callspec = getattr(test_item, "callspec", None)
    item = callspec.params.get("invarlock_item") if callspec else None
    return item.kind if isinstance(item, Item) else None  # an empty parameter set gives NOTSET


def pytest_report_header(config: pytest.Config) -> list[str]:
    state: ConfigState = config.stash[STATE_KEY]
    suite = state.suite
    return [
        f"invarlock suite: {suite.name} ({suite.path}), {len(suite.models)} model(s), "
        f"{len(state.items)} items; run dir: {state.run_dir}; "
        f"{'offline' if state.options.offline else 'online'}, device {state.device}"
    ]

