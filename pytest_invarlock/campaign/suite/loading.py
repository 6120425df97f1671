"""`load_suite`: a suite file's top level (runs, models, scenarios, benchmarks, timeouts, paths) into a `Suite`.

The sections' own checks live beside it (models, scenarios, settings, benchmarks); this module
checks the keys between them and puts the pieces together, in the order the file is validated.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.kinds import Kind
from pytest_invarlock.campaign.suite.benchmarks import BENCHMARK_KEYS, task_names
from pytest_invarlock.campaign.suite.checks import Where, user_path
from pytest_invarlock.campaign.suite.definitions import DEFAULT_MIN_SIGNAL_FRACTION, Benchmarks, Model, Scenario, Suite
from pytest_invarlock.campaign.suite.files import read_yaml, resolve_suite_path
from pytest_invarlock.campaign.suite.models import model_entry
from pytest_invarlock.campaign.suite.scenarios import KINDS, MAX_RUNS, default_scenarios, scenario_entry, scenario_set
from pytest_invarlock.campaign.suite.settings import invarlock_block
from pytest_invarlock.campaign.time_limits import DEFAULT_KEY, LIMIT_KINDS

DEFAULT_RUNS: dict[str, int] = {Kind.CALIBRATION: 5, Kind.CLEAN: 3, Kind.STRESS: 2, Kind.ERROR: 1}
DEVICES = ("auto", "cpu", "cuda")
# `timeouts:` keys: item kinds, the shared work items trigger, and "default" (campaign.time_limits).
TIMEOUT_KEYS = (*LIMIT_KINDS, DEFAULT_KEY)
SUITE_KEYS = (
    "name",
    "description",
    "device",
    "runs",
    "errors",
    "models",
    "scenarios",
    "invarlock",
    "benchmarks",
    "min_signal_fraction",
    "timeouts",
    "gpu_require_idle",
    "tuned_edit_params",
    "calibration_preset",
)


def load_suite(name_or_path: str) -> Suite:
    """The checked `Suite` of a shipped suite name or a suite YAML path; a SuiteError names the first mistake."""
    path = resolve_suite_path(name_or_path)
    where = Where(path)
    data = read_yaml(path, "suite file")
    data = where.mapping(data if data is not None else {}, "")
    where.known_keys(data, SUITE_KEYS, "")
    runs = _runs(where, data.get("runs", {}))
    suite_invarlock = invarlock_block(where, data.get("invarlock", {}), "invarlock")
    models = _models(where, data.get("models"), suite_invarlock)
    scenarios = _scenarios(where, data)
    bench = where.mapping(data.get("benchmarks", {}), "benchmarks")
    where.known_keys(bench, BENCHMARK_KEYS, "benchmarks")
    tasks = task_names(where, bench)
    min_signal = _min_signal_fraction(where, data.get("min_signal_fraction", DEFAULT_MIN_SIGNAL_FRACTION))
    benchmarks = Benchmarks(
        tasks=tasks,
        num_fewshot=where.integer(bench.get("num_fewshot", 5), "benchmarks.num_fewshot", 0),
        limit=None if bench.get("limit") is None else where.integer(bench["limit"], "benchmarks.limit", 1),
    )
    return Suite(
        name=where.slug(data.get("name", path.stem), "name"),
        path=path,
        description=where.text(data.get("description", ""), "description"),
        device=where.choice(data.get("device", "auto"), "device", DEVICES),
        runs=runs,
        models=models,
        scenarios=scenarios,
        benchmarks=benchmarks,
        min_signal_fraction=min_signal,
        invarlock=dict(suite_invarlock),
        timeouts=_timeouts(where, data.get("timeouts", {})),
        gpu_require_idle=where.boolean(data.get("gpu_require_idle", True), "gpu_require_idle"),
        tuned_edit_params=_suite_path(where, data, "tuned_edit_params", must_be="file"),
        calibration_preset=_suite_path(where, data, "calibration_preset", must_be="file or directory"),
    )


def _runs(where: Where, block: Any) -> dict[str, int]:
    """`runs: {KIND: N}` over the default run counts."""
    runs = dict(DEFAULT_RUNS)
    for kind, count in where.mapping(block, "runs").items():
        runs[where.choice(kind, f"runs.{kind}", KINDS)] = where.integer(count, f"runs.{kind}", 0, MAX_RUNS)
    return runs


def _models(where: Where, raw_models: Any, suite_invarlock: Mapping[str, Any]) -> tuple[Model, ...]:
    if not isinstance(raw_models, list) or not raw_models:
        raise where.error(
            "models", "missing or empty", "List at least one model (a catalogue name, a hub id or a local directory)."
        )
    models = [model_entry(where, entry, f"models[{i}]", suite_invarlock) for i, entry in enumerate(raw_models)]
    where.unique([m.name for m in models], "models")
    return tuple(models)


def _scenarios(where: Where, data: Mapping[str, Any]) -> tuple[Scenario, ...]:
    """The suite's scenarios (the catalogue's defaults when it lists none), without error ones under `errors: false`."""
    raw_scenarios = scenario_set(where, data.get("scenarios", default_scenarios()))
    if not isinstance(raw_scenarios, list) or not raw_scenarios:
        raise where.error("scenarios", "must be a non-empty list", "List scenario names or inline {name, spec, kind} entries.")
    scenarios = [scenario_entry(where, entry, f"scenarios[{i}]") for i, entry in enumerate(raw_scenarios)]
    where.unique([s.name for s in scenarios], "scenarios")
    if not where.boolean(data.get("errors", True), "errors"):
        scenarios = [s for s in scenarios if s.kind != "error"]
    return tuple(scenarios)


def _min_signal_fraction(where: Where, value: Any) -> float:
    min_signal = where.number(value, "min_signal_fraction")
    if not 0 <= min_signal <= 1:
        raise where.error("min_signal_fraction", f"{min_signal} is not a fraction", "Use a number between 0 and 1, e.g. 0.5.")
    return min_signal


def _suite_path(where: Where, data: Mapping[str, Any], key: str, *, must_be: str) -> Path | None:
    """A path the suite names (relative to the suite file), which must exist."""
    if data.get(key) is None:
        return None
    path = user_path(where.text(data[key], key), f"suite file '{where.path}': key '{key}'")
    path = path if path.is_absolute() else (where.path.parent / path).resolve()
    if not (path.is_file() or (must_be != "file" and path.is_dir())):
        raise where.error(
            key, f"'{path}' does not exist (or is not a {must_be})", "Fix the path; relative paths start at the suite file."
        )
    return path


def _timeouts(where: Where, block: Any) -> dict[str, float]:
    """`timeouts: {clean: 1800, benchmark: 3600, download: 7200, default: 7200}`: seconds per kind of work."""
    block = where.mapping(block, "timeouts")
    where.known_keys(block, TIMEOUT_KEYS, "timeouts")
    out = {}
    for kind, value in block.items():
        seconds = where.number(value, f"timeouts.{kind}")
        if seconds <= 0:
            raise where.error(f"timeouts.{kind}", f"must be positive, got {value!r}", "Give the limit in seconds, e.g. 3600.")
        out[str(kind)] = seconds
    return out
