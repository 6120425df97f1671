"""Suite files: load, validate and override a validation campaign.

A suite names models, scenarios, run counts and InvarLock settings. It is read on the torch-free
controller (collection must stay fast and must not import torch), so this module is pure: YAML in,
frozen dataclasses out, and every mistake becomes a `SuiteError` that names the file, the key and
the fix.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

import yaml

from pytest_invarlock.campaign.kinds import SCENARIO_KINDS, Kind
from pytest_invarlock.edits.catalogue import SpecError, parse_spec

KINDS = SCENARIO_KINDS
DEFAULT_RUNS = {Kind.CALIBRATION: 5, Kind.CLEAN: 3, Kind.STRESS: 2, Kind.ERROR: 1}
DEFAULT_BENCHMARKS = ("mmlu", "hellaswag", "arc_challenge", "winogrande")
DEFAULT_INVARLOCK = {
    "tier": "balanced",
    "dataset": "wikitext2",
    "acceptance_min": 0.90,
    "acceptance_max": 1.20,
    "guard_overhead": True,
    "min_tokens": None,
}
SIZE_SETTING_KEYS = (
    "seq_len",
    "stride",
    "preview_windows",
    "final_windows",
    "eval_batch",
    "bootstrap_replicates",
    "lm_eval_batch",
)
DATASETS = ("local", "wikitext2")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PINNED_REVISION = re.compile(r"^[0-9a-f]{40}$")


class SuiteError(ValueError):
    """A suite file or a suite override is wrong; the message says where and how to fix it."""


@dataclass(frozen=True)
class Settings:
    """InvarLock settings for one model: size-class defaults, then suite, then model overrides."""

    seq_len: int
    stride: int
    preview_windows: int
    final_windows: int
    eval_batch: int
    bootstrap_replicates: int
    lm_eval_batch: str
    tier: str
    dataset: str
    acceptance_min: float
    acceptance_max: float
    guard_overhead: bool
    min_tokens: int | None  # InvarLock's primary-metric token floor; None keeps the tier's (50,000 for balanced)


@dataclass(frozen=True)
class Model:
    name: str
    source: str
    size_class: str
    dtype: str
    params_b: float
    settings: Settings
    revision: str | None = None
    architecture: Mapping[str, int] = field(default_factory=dict)

    @property
    def is_builtin(self) -> bool:
        return self.source.startswith("builtin:")

    @property
    def is_hub(self) -> bool:
        """A hub id (org/name or bare name) rather than a local directory or a builtin."""
        if self.is_builtin or self.source.startswith((".", "/", "~")):
            return False
        return not Path(self.source).expanduser().exists()

    @property
    def has_pinned_revision(self) -> bool:
        return bool(self.revision and _PINNED_REVISION.match(self.revision))


@dataclass(frozen=True)
class Scenario:
    name: str
    spec: str
    kind: str
    gating: bool = True
    detectors: tuple[str, ...] = ()
    runs: int | None = None

    @property
    def expectation(self) -> str:
        """What the test asserts: pass, fail (flagged), detect, or signal (informational)."""
        if self.kind in ("calibration", "clean"):
            return "pass"
        if self.kind == "error":
            return "detect"
        return "fail" if self.gating else "signal"


@dataclass(frozen=True)
class Benchmarks:
    tasks: tuple[str, ...]
    num_fewshot: int
    limit: int | None


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    description: str
    device: str
    runs: Mapping[str, int]
    models: tuple[Model, ...]
    scenarios: tuple[Scenario, ...]
    benchmarks: Benchmarks

    def runs_for(self, scenario: Scenario) -> int:
        return scenario.runs if scenario.runs is not None else self.runs[scenario.kind]

    def model(self, name: str) -> Model:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)


# --------------------------------------------------------------------------- catalogue files


def _shipped_file(name: str) -> Path:
    return Path(str(resources.files("pytest_invarlock.suites").joinpath(name)))


def shipped_suites() -> list[str]:
    """Names of the suites shipped with the plugin (the YAML files that declare a `name`)."""
    directory = _shipped_file("")
    catalogues = {"models.yaml", "scenarios.yaml", "size_classes.yaml"}
    return sorted(p.stem for p in directory.glob("*.yaml") if p.name not in catalogues)


def _read_yaml(path: Path, what: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SuiteError(f"cannot read {what} '{path}': {exc.strerror}. Check the path.") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SuiteError(f"{what} '{path}' is not valid YAML: {exc}. Fix the syntax at the line shown.") from None


def _catalogue(name: str) -> dict[str, Any]:
    return _read_yaml(_shipped_file(name), "catalogue") or {}


# --------------------------------------------------------------------------- validation helpers


class _Where:
    """Builds error messages that name the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str, fix: str) -> SuiteError:
        return SuiteError(f"suite file '{self.path}': key '{key}': {problem}. {fix}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {type(value).__name__}", "Write it as `key: value` lines.")
        return value

    def known_keys(self, value: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
        for name in value:
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), allowed, n=1)
                suggestion = f"Did you mean '{hint[0]}'? " if hint else ""
                raise self.error(
                    f"{key}.{name}" if key else str(name),
                    "unknown key",
                    f"{suggestion}Allowed keys: {', '.join(allowed)}.",
                )

    def integer(self, value: Any, key: str, minimum: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise self.error(key, f"expected an integer >= {minimum}, got {value!r}", f"Use a whole number >= {minimum}.")
        return value

    def number(self, value: Any, key: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"expected a number, got {value!r}", "Use a number such as 1.2.")
        return float(value)

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.error(key, f"{value!r} is not one of {', '.join(choices)}", "Pick one of the listed values.")
        return str(value)

    def slug(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _SLUG.match(value):
            raise self.error(
                key,
                f"name {value!r} is not a lowercase slug",
                "Use lowercase letters, digits, '.', '_' and '-' (it becomes part of test ids).",
            )
        return value


# --------------------------------------------------------------------------- sections

_SUITE_KEYS = ("name", "description", "device", "runs", "errors", "models", "scenarios", "invarlock", "benchmarks")
_MODEL_KEYS = ("name", "source", "revision", "size_class", "dtype", "params_b", "architecture", "invarlock")
ARCHITECTURE_KEYS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")
_SCENARIO_KEYS = ("name", "spec", "kind", "gating", "detectors", "runs", "default")
_INVARLOCK_KEYS = (*SIZE_SETTING_KEYS, "tier", "dataset", "acceptance", "guard_overhead", "min_tokens")
_BENCHMARK_KEYS = ("tasks", "num_fewshot", "limit")


def _invarlock_block(where: _Where, block: Any, key: str) -> dict[str, Any]:
    """Validate an `invarlock:` block and flatten `acceptance: [min, max]`."""
    block = where.mapping(block, key)
    where.known_keys(block, _INVARLOCK_KEYS, key)
    out: dict[str, Any] = {}
    for name, value in block.items():
        if name in ("seq_len", "stride", "preview_windows", "final_windows", "eval_batch", "bootstrap_replicates", "min_tokens"):
            out[name] = where.integer(value, f"{key}.{name}", 1)
        elif name == "dataset":
            out[name] = where.choice(value, f"{key}.{name}", DATASETS)
        elif name == "guard_overhead":
            if not isinstance(value, bool):
                raise where.error(f"{key}.{name}", f"expected true or false, got {value!r}", "Write guard_overhead: false to skip the measurement.")
            out[name] = value
        elif name == "acceptance":
            pair = value if isinstance(value, (list, tuple)) else [value.get("min"), value.get("max")] if isinstance(value, dict) else None
            if not pair or len(pair) != 2:
                raise where.error(f"{key}.acceptance", f"expected [min, max], got {value!r}", "Write e.g. acceptance: [0.90, 1.20].")
            lo, hi = (where.number(v, f"{key}.acceptance") for v in pair)
            if not 0 < lo < 1 < hi:
                raise where.error(f"{key}.acceptance", f"range [{lo}, {hi}] must satisfy 0 < min < 1 < max", "Write e.g. [0.90, 1.20].")
            out["acceptance_min"], out["acceptance_max"] = lo, hi
        else:
            out[name] = str(value)
    return out


def _settings(size_class: str, *layers: Mapping[str, Any]) -> Settings:
    merged: dict[str, Any] = dict(DEFAULT_INVARLOCK)
    merged.update(_catalogue("size_classes.yaml")[size_class])
    for layer in layers:
        merged.update(layer)
    merged["lm_eval_batch"] = str(merged["lm_eval_batch"])
    return Settings(**merged)


def _size_classes() -> tuple[str, ...]:
    return tuple(_catalogue("size_classes.yaml"))


def infer_size_class(params_b: float, name: str = "") -> str:
    """The seed's size bands, for models given on the command line without a catalogue entry."""
    if re.search(r"mixtral|moe|\d+x\d+b", name.lower()):
        return "moe"
    for limit, size_class in ((1, "small"), (10, "7b"), (20, "13b"), (36, "30b"), (60, "40b")):
        if params_b < limit:
            return size_class
    return "70b"


def _params_from_name(source: str) -> float | None:
    found = re.findall(r"(\d+(?:\.\d+)?)\s*([bm])\b", source.lower().replace("-", " ").replace("_", " "))
    if not found:
        return None
    number, unit = found[-1]
    return float(number) / (1000 if unit == "m" else 1)


def model_from_source(source: str) -> dict[str, Any]:
    """A model entry for a hub id or local path given without a catalogue entry (like MODEL_1..MODEL_8)."""
    stem = source.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-") or "model"
    params_b = _params_from_name(source) or 1.0
    return {"name": name, "source": source, "params_b": params_b, "size_class": infer_size_class(params_b, source)}


def _model(where: _Where, entry: Any, key: str, suite_invarlock: Mapping[str, Any]) -> Model:
    catalogue = _catalogue("models.yaml")
    if isinstance(entry, str):
        if entry in catalogue:
            entry = {"name": entry, **catalogue[entry]}
        elif "/" in entry or Path(entry).expanduser().exists():
            entry = model_from_source(entry)
        else:
            hint = difflib.get_close_matches(entry, list(catalogue), n=1)
            raise where.error(
                key,
                f"unknown model '{entry}'",
                (f"Did you mean '{hint[0]}'? " if hint else "")
                + f"Use a catalogue name ({', '.join(catalogue)}), a hub id such as org/name, or an existing local directory.",
            )
    entry = where.mapping(entry, key)
    where.known_keys(entry, _MODEL_KEYS, key)
    for required in ("name", "source"):
        if required not in entry:
            raise where.error(f"{key}.{required}", "missing", f"Every model needs `{required}`.")
    name = where.slug(entry["name"], f"{key}.name")
    params_b = where.number(entry.get("params_b", _params_from_name(str(entry["source"])) or 1.0), f"{key}.params_b")
    if params_b <= 0:
        raise where.error(f"{key}.params_b", f"must be positive, got {params_b}", "Give the parameter count in billions.")
    size_class = where.choice(entry.get("size_class", infer_size_class(params_b, str(entry["source"]))), f"{key}.size_class", _size_classes())
    dtype = where.choice(entry.get("dtype", "bfloat16"), f"{key}.dtype", DTYPES)
    own = _invarlock_block(where, entry.get("invarlock", {}), f"{key}.invarlock")
    revision = entry.get("revision")
    architecture = where.mapping(entry.get("architecture", {}), f"{key}.architecture")
    where.known_keys(architecture, ARCHITECTURE_KEYS, f"{key}.architecture")
    for field_name, value in architecture.items():
        where.integer(value, f"{key}.architecture.{field_name}", 1)
    return Model(
        name=name,
        source=str(entry["source"]),
        revision=None if revision is None else str(revision),
        size_class=size_class,
        dtype=dtype,
        params_b=params_b,
        settings=_settings(size_class, suite_invarlock, own),
        architecture=dict(architecture),
    )


def _scenario(where: _Where, entry: Any, key: str) -> Scenario:
    catalogue = _catalogue("scenarios.yaml")
    if isinstance(entry, str):
        if entry not in catalogue:
            hint = difflib.get_close_matches(entry, list(catalogue), n=1)
            raise where.error(
                key,
                f"unknown scenario '{entry}'",
                (f"Did you mean '{hint[0]}'? " if hint else "")
                + "Use a name from the catalogue (suites/scenarios.yaml) or define it inline as {name, spec, kind}.",
            )
        entry = {"name": entry, **catalogue[entry]}
    entry = where.mapping(entry, key)
    where.known_keys(entry, _SCENARIO_KEYS, key)
    for required in ("name", "spec", "kind"):
        if required not in entry:
            raise where.error(f"{key}.{required}", "missing", "An inline scenario needs name, spec and kind.")
    name = where.slug(entry["name"], f"{key}.name")
    kind = where.choice(entry["kind"], f"{key}.kind", KINDS)
    try:
        spec = parse_spec(str(entry["spec"]))
    except SpecError as exc:
        raise where.error(f"{key}.spec", str(exc), "Fix the spec string.") from None
    expected_family = {"calibration": "noop", "error": "error"}.get(kind, "edit")
    if spec.family != expected_family:
        raise where.error(
            f"{key}.spec",
            f"spec '{spec}' is a {spec.family} spec but the scenario kind is '{kind}'",
            f"A {kind} scenario needs a {expected_family} spec.",
        )
    detectors = entry.get("detectors", [])
    if not isinstance(detectors, list) or not all(isinstance(d, str) for d in detectors):
        raise where.error(f"{key}.detectors", f"expected a list of flag names, got {detectors!r}", "e.g. [spectral_stable, rmt_stable].")
    runs = entry.get("runs")
    return Scenario(
        name=name,
        spec=str(spec),
        kind=kind,
        gating=bool(entry.get("gating", True)),
        detectors=tuple(detectors),
        runs=None if runs is None else where.integer(runs, f"{key}.runs", 0),
    )


def _default_scenarios() -> list[str]:
    return [name for name, entry in _catalogue("scenarios.yaml").items() if entry.get("default", True)]


def _unique(where: _Where, names: list[str], key: str) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise where.error(key, f"'{name}' appears twice", "Names must be unique within a suite (they become test ids).")
        seen.add(name)


# --------------------------------------------------------------------------- public API


def resolve_suite_path(name_or_path: str) -> Path:
    """A shipped suite name or a path to a YAML file."""
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if not candidate.is_file():
            raise SuiteError(f"suite file '{candidate}' does not exist. Check the path, or use a shipped suite: {', '.join(shipped_suites())}.")
        return candidate
    if name_or_path in shipped_suites():
        return _shipped_file(f"{name_or_path}.yaml")
    hint = difflib.get_close_matches(name_or_path, shipped_suites(), n=1)
    raise SuiteError(
        f"unknown suite '{name_or_path}'. "
        + (f"Did you mean '{hint[0]}'? " if hint else "")
        + f"Shipped suites: {', '.join(shipped_suites())}; or pass a path to a suite YAML file (--suite path/to/suite.yaml)."
    )


def load_suite(name_or_path: str) -> Suite:
    path = resolve_suite_path(name_or_path)
    where = _Where(path)
    data = _read_yaml(path, "suite file")
    data = where.mapping(data if data is not None else {}, "")
    where.known_keys(data, _SUITE_KEYS, "")
    runs = dict(DEFAULT_RUNS)
    for kind, count in where.mapping(data.get("runs", {}), "runs").items():
        runs[where.choice(kind, f"runs.{kind}", KINDS)] = where.integer(count, f"runs.{kind}", 0)
    suite_invarlock = _invarlock_block(where, data.get("invarlock", {}), "invarlock")
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise where.error("models", "missing or empty", "List at least one model (a catalogue name, a hub id or a local directory).")
    models = [_model(where, entry, f"models[{i}]", suite_invarlock) for i, entry in enumerate(raw_models)]
    _unique(where, [m.name for m in models], "models")
    raw_scenarios = data.get("scenarios", _default_scenarios())
    if not isinstance(raw_scenarios, list) or not raw_scenarios:
        raise where.error("scenarios", "must be a non-empty list", "List scenario names or inline {name, spec, kind} entries.")
    scenarios = [_scenario(where, entry, f"scenarios[{i}]") for i, entry in enumerate(raw_scenarios)]
    _unique(where, [s.name for s in scenarios], "scenarios")
    errors = data.get("errors", True)
    if not isinstance(errors, bool):
        raise where.error("errors", f"expected true or false, got {errors!r}", "Write errors: true or errors: false.")
    if not errors:
        scenarios = [s for s in scenarios if s.kind != "error"]
    bench = where.mapping(data.get("benchmarks", {}), "benchmarks")
    where.known_keys(bench, _BENCHMARK_KEYS, "benchmarks")
    tasks = bench.get("tasks", list(DEFAULT_BENCHMARKS))
    if not isinstance(tasks, list) or not all(isinstance(t, str) and _SLUG.match(t) for t in tasks):
        raise where.error("benchmarks.tasks", f"expected a list of task names, got {tasks!r}", "e.g. tasks: [hellaswag, arc_challenge].")
    limit = bench.get("limit")
    benchmarks = Benchmarks(
        tasks=tuple(tasks),
        num_fewshot=where.integer(bench.get("num_fewshot", 5), "benchmarks.num_fewshot", 0),
        limit=None if limit is None else where.integer(limit, "benchmarks.limit", 1),
    )
    return Suite(
        name=where.slug(data.get("name", path.stem), "name"),
        path=path,
        description=str(data.get("description", "")),
        device=where.choice(data.get("device", "auto"), "device", DEVICES),
        runs=runs,
        models=tuple(models),
        scenarios=tuple(scenarios),
        benchmarks=benchmarks,
    )


def override_suite(
    suite: Suite,
    *,
    models: list[str] | None = None,
    runs: Mapping[str, int | None] | None = None,
    errors: bool = True,
    benchmarks: list[str] | None = None,
    tier: str | None = None,
) -> Suite:
    """Command-line overrides (--models, --runs-*, --no-errors, --benchmarks, --tier), like the seed's MODEL_1..MODEL_8."""
    where = _Where(suite.path)
    if models:
        suite_layer: dict[str, Any] = {}
        resolved = []
        for i, entry in enumerate(models):
            known = next((m for m in suite.models if m.name == entry or m.source == entry), None)
            resolved.append(known or _model(where, entry, f"--models[{i}]", suite_layer))
        _unique(where, [m.name for m in resolved], "--models")
        suite = replace(suite, models=tuple(resolved))
    if runs:
        merged = dict(suite.runs)
        for kind, count in runs.items():
            if count is not None:
                if count < 0:
                    raise SuiteError(f"--runs-{kind} must be >= 0, got {count}. Pass a whole number of runs.")
                merged[kind] = count
        suite = replace(suite, runs=merged)
    if not errors:
        suite = replace(suite, scenarios=tuple(s for s in suite.scenarios if s.kind != "error"))
    if benchmarks is not None:
        suite = replace(suite, benchmarks=replace(suite.benchmarks, tasks=tuple(benchmarks)))
    if tier:
        suite = replace(suite, models=tuple(replace(m, settings=replace(m.settings, tier=tier)) for m in suite.models))
    return suite
