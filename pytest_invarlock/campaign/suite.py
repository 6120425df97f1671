"""Suite files: load, validate and override a validation campaign.

A suite names models, scenarios, run counts and InvarLock settings. It is read on the torch-free
controller (collection must stay fast and must not import torch), so this module is pure: YAML in,
frozen dataclasses out, and every mistake becomes a `SuiteError` that names the file, the key and
the fix.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pytest_invarlock.campaign import eval_data
from pytest_invarlock.campaign.kinds import SCENARIO_KINDS, Kind
from pytest_invarlock.campaign.lm_eval_tasks import LOCAL_TASKS
from pytest_invarlock.campaign.model_files import ModelFiles, ModelFilesError, read_model_files
from pytest_invarlock.campaign.task_index import installed_tasks
from pytest_invarlock.campaign.time_limits import DEFAULT_KEY, LIMIT_KINDS, limit_s
from pytest_invarlock.campaign.tuned import is_tuned, sentinel_problem
from pytest_invarlock.edits.catalogue import SCOPES, SpecError, parse_spec

KINDS = SCENARIO_KINDS
DEFAULT_RUNS: dict[str, int] = {Kind.CALIBRATION: 5, Kind.CLEAN: 3, Kind.STRESS: 2, Kind.ERROR: 1}
DEFAULT_BENCHMARKS = ("mmlu", "hellaswag", "arc_challenge", "winogrande")
DEFAULT_INVARLOCK = {
    "tier": "balanced",
    "dataset": "wikitext2",
    "acceptance_min": 0.90,
    "acceptance_max": 1.20,
    "guard_overhead": True,
    "min_tokens": None,
    "windows": None,
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
# The hub dataset repository InvarLock 0.12.1's provider of each hub dataset loads (WikiText2Provider.load).
HUB_DATASET_REPOS = {"wikitext2": "Salesforce/wikitext"}
GUARDS = ("invariants", "spectral", "rmt", "variance")  # InvarLock 0.12's guard chain members
SNAPSHOT_MODES = ("auto", "bytes", "chunked")  # INVARLOCK_SNAPSHOT_MODE
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("float32", "float16", "bfloat16")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_PINNED_REVISION = re.compile(r"^[0-9a-f]{40}$")
_LM_EVAL_BATCH = re.compile(r"^(auto(:[1-9][0-9]{0,5})?|[1-9][0-9]{0,5})$")
MAX_SUITE_BYTES = 4 * 1024 * 1024
MAX_RUNS = 1000  # per scenario kind: more would collect millions of items
MAX_INT = 2**31 - 1  # any other count: beyond this it is a typo, not a setting
# InvarLock 0.12's tiers (runtime/tiers.yaml) and the bootstrap floors its ci profile enforces per tier
# (invarlock.core.runner_pairing.BOOTSTRAP_COVERAGE_REQUIREMENTS; a test checks both against the installed package).
TIERS = ("balanced", "conservative", "aggressive")
TIER_FLOORS = {
    "conservative": {"preview": 220, "final": 220, "replicates": 1500},
    "balanced": {"preview": 180, "final": 180, "replicates": 1200},
    "aggressive": {"preview": 140, "final": 140, "replicates": 800},
}
# InvarLock 0.12's gate flags (its console labels, as `validation` keys): what a stress scenario may name as detectors.
DETECTORS = (
    "primary_metric_acceptable",
    "preview_final_drift_acceptable",
    "guard_overhead_acceptable",
    "invariants_pass",
    "spectral_stable",
    "rmt_stable",
)
# `timeouts:` keys: item kinds, the shared work items trigger, and "default" (campaign.time_limits).
TIMEOUT_KEYS = (*LIMIT_KINDS, DEFAULT_KEY)
# Informational scenarios are judged only by a minimum signal fraction (the reference names no value;
# this default is verdict.phase0.DEFAULT_MIN_SIGNAL_FRACTION, repeated here to keep campaign/ free of verdict/).
DEFAULT_MIN_SIGNAL_FRACTION = 0.5


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
    timeout_floor_s: float | None = None  # no suite `timeouts:` value below this (size_classes.yaml)
    timeout_s: float | None = None  # the size class's calibration-item limit; other kinds take a share (time_limits)
    windows: str | None = None  # "auto": preview/final counts from campaign.window_planner (local corpora)
    guard_order: tuple[str, ...] | None = None  # InvarLock's guard chain (PACK_GUARDS_ORDER); None: its default
    snapshot_mode: str = "auto"  # how InvarLock snapshots the model between runs (INVARLOCK_SNAPSHOT_MODE)
    eval_data: str | None = None  # a user's JSONL evaluation text (dataset local) instead of the held-out KJV chapters
    eval_text_field: str = "text"


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
        if self.kind == "error" and self.gating:
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
    min_signal_fraction: float = DEFAULT_MIN_SIGNAL_FRACTION  # informational scenarios: signal in at least this share of runs
    invarlock: Mapping[str, Any] = field(default_factory=dict)  # the suite's own `invarlock:` layer, for --models
    timeouts: Mapping[str, float] = field(default_factory=dict)  # `timeouts:` kind (or "default") -> seconds
    gpu_require_idle: bool = True  # leave out GPUs running other processes (the B200 suite's GPU_REQUIRE_IDLE)
    tuned_edit_params: Path | None = None  # the tuned clean-edit parameters (`KIND:clean:SCOPE` specs); None: shipped
    calibration_preset: Path | None = None  # reused presets: one file for every model, or a directory of them

    def timeout_s(
        self, kind: str, model: Model, *, weights_gb: float = 0.0, command_line: Mapping[str, float] | None = None
    ) -> float:
        """The time limit of `kind` work (an item kind or shared work) on `model`; see campaign.time_limits."""
        return limit_s(
            kind,
            class_s=model.settings.timeout_s,
            floor_s=model.settings.timeout_floor_s,
            weights_gb=weights_gb,
            suite=self.timeouts,
            command_line=command_line or {},
        )

    @property
    def tuned_params_file(self) -> Path:
        """Where tuned `KIND:clean:SCOPE` specs take their parameters: the suite's file, else the shipped one."""
        return self.tuned_edit_params or _shipped_file("tuned_edit_params.json")

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
    catalogues = {"models.yaml", "scenarios.yaml", "scenario_sets.yaml", "size_classes.yaml"}
    return sorted(p.stem for p in directory.glob("*.yaml") if p.name not in catalogues)


def _read_yaml(path: Path, what: str) -> Any:
    """The file's YAML; every way it can be unreadable is a SuiteError naming the file and the fix."""
    try:
        if path.stat().st_size > MAX_SUITE_BYTES:
            raise SuiteError(
                f"{what} '{path}' is {path.stat().st_size:,} bytes, more than a suite file can be "
                f"({MAX_SUITE_BYTES:,}). Check that the path names the suite YAML, not a data file."
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"cannot read {what} '{path}': {exc.strerror or exc}. Check the path and its permissions.") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SuiteError(f"{what} '{path}' is UTF-16 text. Save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(
            f"{what} '{path}' is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}). "
            "Save it as UTF-8, and check that the path names the suite YAML, not a binary file."
        ) from None
    if "\x00" in text:
        raise SuiteError(f"{what} '{path}' contains NUL bytes: it is not a text file. Check the path.")
    try:
        return yaml.load(text, Loader=_SuiteLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SuiteError(f"{what} '{path}' is not valid YAML: {exc}. Fix the syntax at the line shown.") from None
    except RecursionError:
        raise SuiteError(f"{what} '{path}' nests too deeply to read. Flatten the YAML structure.") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2024-13-45, which YAML reads as a timestamp
        raise SuiteError(f"{what} '{path}' holds a value YAML cannot convert: {exc}. Quote the value.") from None


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found key {key!r} twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def user_path(text: str, what: str) -> Path:
    """`text` as a path with `~` expanded; a SuiteError naming `what` where `~user` names no one."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser, or no home directory at all
        raise SuiteError(
            f"{what} '{text}': cannot expand '~' (no such user, or no home directory). Write the full path."
        ) from None


def _show(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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

    def integer(self, value: Any, key: str, minimum: int, maximum: int = MAX_INT) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(
                key,
                f"expected an integer >= {minimum} and <= {maximum}, got {_show(value)}",
                f"Use a whole number from {minimum} to {maximum}.",
            )
        return value

    def number(self, value: Any, key: str) -> float:
        number = math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
        if not math.isfinite(number):
            raise self.error(key, f"expected a finite number, got {_show(value)}", "Use a number such as 1.2.")
        return number

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(
                key, f"expected true or false, got {_show(value)}", f"Write {key.rsplit('.', 1)[-1]}: true or false."
            )
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or "\x00" in value:
            raise self.error(
                key,
                f"expected a string, got {_show(value)}",
                "Write it as plain text (quote it if YAML reads it as something else).",
            )
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            raise self.error(
                key,
                f"{_show(value)} is not one of {', '.join(choices)}",
                (f"Did you mean '{hint[0]}'? " if hint else "") + "Pick one of the listed values.",
            )
        return value

    def slug(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not _SLUG.match(value) or len(value) > 100:
            raise self.error(
                key,
                f"name {_show(value)} is not a lowercase slug of at most 100 characters",
                "Use lowercase letters, digits, '.', '_' and '-' (it becomes part of test ids).",
            )
        return value


class _CommandLine(_Where):
    """Error messages for command-line overrides: they name the option rather than a key of the suite file."""

    def error(self, key: str, problem: str, fix: str) -> SuiteError:
        return SuiteError(f"command-line option {key}: {problem}. {fix}")


# --------------------------------------------------------------------------- sections

_SUITE_KEYS = (
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
_MODEL_KEYS = ("name", "source", "revision", "size_class", "dtype", "params_b", "architecture", "invarlock")
ARCHITECTURE_KEYS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")
_SCENARIO_KEYS = ("name", "spec", "kind", "gating", "detectors", "runs", "default")
_INVARLOCK_KEYS = (
    *SIZE_SETTING_KEYS,
    *("tier", "dataset", "acceptance", "guard_overhead", "min_tokens", "windows"),
    *("guard_order", "snapshot_mode", "eval_data", "eval_text_field"),
)
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
            out[name] = where.boolean(value, f"{key}.{name}")
        elif name == "windows":
            if value != "auto":
                raise where.error(
                    f"{key}.windows",
                    f"expected auto, got {_show(value)}",
                    "Write windows: auto (the window planner picks the counts), or set "
                    "preview_windows and final_windows explicitly.",
                )
            out[name] = "auto"
        elif name == "tier":
            out[name] = where.choice(value, f"{key}.{name}", TIERS)
        elif name in ("guard_order", "snapshot_mode", "eval_data", "eval_text_field"):
            out[name] = _knob(where, name, value, f"{key}.{name}")
        elif name == "acceptance":
            pair = (
                value
                if isinstance(value, (list, tuple))
                else [value.get("min"), value.get("max")]
                if isinstance(value, dict)
                else None
            )
            if not pair or len(pair) != 2:
                raise where.error(
                    f"{key}.acceptance", f"expected [min, max], got {_show(value)}", "Write e.g. acceptance: [0.90, 1.20]."
                )
            lo, hi = (where.number(v, f"{key}.acceptance") for v in pair)
            if not 0 < lo < 1 < hi:
                raise where.error(
                    f"{key}.acceptance", f"range [{lo}, {hi}] must satisfy 0 < min < 1 < max", "Write e.g. [0.90, 1.20]."
                )
            out["acceptance_min"], out["acceptance_max"] = lo, hi
        else:  # lm_eval_batch: lm-eval's --batch_size
            if isinstance(value, bool) or not isinstance(value, (str, int)) or not _LM_EVAL_BATCH.match(str(value)):
                raise where.error(
                    f"{key}.{name}", f"expected a batch size, got {_show(value)}", "Write a number such as 16, auto or auto:8."
                )
            out[name] = str(value)
    return out


def _knob(where: _Where, name: str, value: Any, key: str) -> Any:
    """The seeds' environment knobs as settings: guard_order, snapshot_mode, eval_data, eval_text_field."""
    if name == "guard_order":
        if not isinstance(value, list) or not value:
            raise where.error(
                key, f"expected a list of guards, got {_show(value)}", "e.g. [invariants, spectral, rmt, variance, invariants]."
            )
        return tuple(where.choice(guard, f"{key}[{i}]", GUARDS) for i, guard in enumerate(value))
    if name == "snapshot_mode":
        return where.choice(value, key, SNAPSHOT_MODES)
    text = where.text(value, key)
    if name == "eval_text_field":
        if not text.strip():
            raise where.error(key, "is empty", "Name the JSONL field that holds the text, e.g. text.")
        return text
    path = user_path(text, f"suite file '{where.path}': key '{key}'")
    path = path if path.is_absolute() else (where.path.parent / path).resolve()
    if not path.is_file():
        raise where.error(
            key,
            f"'{path}' is not a file",
            'Give a JSONL file with one {"text": ...} object per line (relative paths start at the suite file).',
        )
    return str(path)


def _settings(size_class: str, *layers: Mapping[str, Any]) -> Settings:
    merged: dict[str, Any] = dict(DEFAULT_INVARLOCK)
    merged.update(_catalogue("size_classes.yaml")[size_class])
    for layer in layers:
        merged.update(layer)
    if not any("stride" in layer for layer in layers):  # a seq_len of one's own keeps the windows apart
        merged["stride"] = merged["seq_len"]
    merged["lm_eval_batch"] = str(merged["lm_eval_batch"])
    if merged.get("eval_data"):  # a user's own text is evaluated through the local windows path
        merged["dataset"] = "local"
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
    """A model entry for a hub id or local path given without a catalogue entry (like MODEL_1..MODEL_8).

    A local checkpoint is sized from its own files (config.json, safetensors headers); a hub id from its name.
    """
    stem = source.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-") or "model"
    files = _local_model_files(source)
    if files is not None:
        shape = {key: value for key, value in files.shape().items() if key in ARCHITECTURE_KEYS}
        size_class = "moe" if files.is_moe else infer_size_class(files.params_b, source)
        return {"name": name, "source": source, "params_b": files.params_b, "size_class": size_class, "architecture": shape}
    params_b = _params_from_name(source) or 1.0
    return {"name": name, "source": source, "params_b": params_b, "size_class": infer_size_class(params_b, source)}


def _local_model_files(source: str) -> ModelFiles | None:
    try:
        directory = Path(source).expanduser()
        return read_model_files(directory) if (directory / "config.json").is_file() else None
    except (RuntimeError, OSError, ModelFilesError):  # ~nosuchuser, unreadable: the caller's checks say so
        return None


def _model(where: _Where, entry: Any, key: str, suite_invarlock: Mapping[str, Any]) -> Model:
    catalogue = _catalogue("models.yaml")
    if isinstance(entry, str):
        if entry in catalogue:
            entry = {"name": entry, **catalogue[entry]}
        elif "/" in entry or user_path(entry, f"suite file '{where.path}': key '{key}'").exists():
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
    source = where.text(entry["source"], f"{key}.source")
    if not source.strip():
        raise where.error(f"{key}.source", "is empty", "Give a hub id (org/name), a local directory or builtin:<name>.")
    params_b = where.number(entry.get("params_b", _params_from_name(source) or 1.0), f"{key}.params_b")
    if params_b <= 0:
        raise where.error(f"{key}.params_b", f"must be positive, got {params_b}", "Give the parameter count in billions.")
    size_class = where.choice(
        entry.get("size_class", infer_size_class(params_b, str(entry["source"]))), f"{key}.size_class", _size_classes()
    )
    dtype = where.choice(entry.get("dtype", "bfloat16"), f"{key}.dtype", DTYPES)
    own = _invarlock_block(where, entry.get("invarlock", {}), f"{key}.invarlock")
    revision = entry.get("revision")
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, (str, int))):
        raise where.error(
            f"{key}.revision", f"expected a commit hash or branch name, got {_show(revision)}", "Write revision: <40-hex commit>."
        )
    architecture = where.mapping(entry.get("architecture", {}), f"{key}.architecture")
    where.known_keys(architecture, ARCHITECTURE_KEYS, f"{key}.architecture")
    for field_name, value in architecture.items():
        where.integer(value, f"{key}.architecture.{field_name}", 1)
    model = Model(
        name=name,
        source=source,
        revision=None if revision is None else str(revision),
        size_class=size_class,
        dtype=dtype,
        params_b=params_b,
        settings=_settings(size_class, suite_invarlock, own),
        architecture=dict(architecture),
    )
    problem = tier_floor_problem(model)
    if problem:
        raise where.error(f"{key}.invarlock", problem, _FLOOR_FIX)
    if model.settings.stride < model.settings.seq_len:
        raise where.error(
            f"{key}.invarlock.stride",
            f"stride {model.settings.stride} < seq_len {model.settings.seq_len}: overlapping windows, which InvarLock "
            "0.12's evaluate refuses ([INVARLOCK:E001] PAIRING-SCHEDULE-MISMATCH: window_overlap_fraction > 0)",
            f"Set stride to seq_len ({model.settings.seq_len}) or more.",
        )
    problem = eval_data_problem(model)
    if problem:
        raise where.error(f"{key}.invarlock.eval_data", problem, "Fix the file or point eval_data at another.")
    return model


_FLOOR_FIX = "Raise them in the suite's (or the model's) `invarlock:` block, or pick another tier."


def eval_data_problem(model: Model) -> str | None:
    """Why the model's `eval_data` file cannot be read as evaluation text (the fix is in the message), or None."""
    if not model.settings.eval_data:
        return None
    try:
        eval_data.documents(Path(model.settings.eval_data), model.settings.eval_text_field)
    except (OSError, UnicodeDecodeError, eval_data.EvalDataError) as exc:
        return f"model {model.name}: {exc}"
    return None


def tier_floor_problem(model: Model) -> str | None:
    """Why InvarLock's ci profile would abort this model's runs at once (too few windows or replicates), or None."""
    settings, floors = model.settings, TIER_FLOORS.get(model.settings.tier)
    if floors is None:
        return None
    if (
        settings.preview_windows < floors["preview"]
        or settings.final_windows < floors["final"]
        or settings.bootstrap_replicates < floors["replicates"]
    ):
        return (
            f"model {model.name}: tier '{settings.tier}' needs at least {floors['preview']}+{floors['final']} windows and "
            f"{floors['replicates']} bootstrap replicates (InvarLock's ci profile aborts below), got "
            f"{settings.preview_windows}+{settings.final_windows} and {settings.bootstrap_replicates}"
        )
    return None


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
    text = where.text(entry["spec"], f"{key}.spec")
    if is_tuned(text):  # KIND:clean:SCOPE: parameters per model from the tuned-params file (campaign.tuned)
        problem = sentinel_problem(text) or (None if kind == "clean" else f"a tuned spec needs kind clean, not {kind}")
        if problem is None:
            scope = text.split(":")[2]
            problem = None if scope in SCOPES else f"scope {scope!r} is not one of {', '.join(SCOPES)}"
        if problem:
            raise where.error(f"{key}.spec", problem, "Write e.g. quant_rtn:clean:ffn, or a concrete spec.")
        return _scenario_of(where, entry, key, name, kind, text.strip())
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        raise where.error(f"{key}.spec", str(exc), "Fix the spec string.") from None
    expected_family = {"calibration": "noop", "error": "error"}.get(kind, "edit")
    if spec.family != expected_family:
        raise where.error(
            f"{key}.spec",
            f"spec '{spec}' is a {spec.family} spec but the scenario kind is '{kind}'",
            f"A {kind} scenario needs a {expected_family} spec.",
        )
    return _scenario_of(where, entry, key, name, kind, str(spec))


def _scenario_of(where: _Where, entry: Mapping[str, Any], key: str, name: str, kind: str, spec: str) -> Scenario:
    detectors = entry.get("detectors", [])
    if not isinstance(detectors, list):
        raise where.error(
            f"{key}.detectors", f"expected a list of flag names, got {_show(detectors)}", "e.g. [spectral_stable, rmt_stable]."
        )
    for i, detector in enumerate(detectors):
        where.choice(detector, f"{key}.detectors[{i}]", DETECTORS)
    where.boolean(entry.get("default", True), f"{key}.default")
    runs = entry.get("runs")
    return Scenario(
        name=name,
        spec=spec,
        kind=kind,
        gating=where.boolean(entry.get("gating", True), f"{key}.gating"),
        detectors=tuple(detectors),
        runs=None if runs is None else where.integer(runs, f"{key}.runs", 0, MAX_RUNS),
    )


_TASK_FIX = (
    f"Use one of the shipped offline tasks ({', '.join(LOCAL_TASKS)}) or an lm-eval task name (`lm-eval ls tasks` lists them)."
)


def unknown_task_problem(task: str) -> str | None:
    """Why `task` is no lm-eval task here (checked against the installed lm-eval's task files), or None."""
    if task in LOCAL_TASKS:
        return None
    known = installed_tasks()
    if known is None or task in known:  # without lm-eval installed there is nothing to check against
        return None
    hint = difflib.get_close_matches(task, [*LOCAL_TASKS, *known], n=1)
    return f"unknown lm-eval task '{task}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")


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
    candidate = user_path(name_or_path, "--suite")
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if candidate.is_dir():
            raise SuiteError(
                f"suite file '{candidate}' is a directory. Pass the suite YAML file inside it, or a shipped suite: {', '.join(shipped_suites())}."
            )
        if not candidate.is_file():
            raise SuiteError(
                f"suite file '{candidate}' does not exist. Check the path, or use a shipped suite: {', '.join(shipped_suites())}."
            )
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
        runs[where.choice(kind, f"runs.{kind}", KINDS)] = where.integer(count, f"runs.{kind}", 0, MAX_RUNS)
    suite_invarlock = _invarlock_block(where, data.get("invarlock", {}), "invarlock")
    raw_models = data.get("models")
    if not isinstance(raw_models, list) or not raw_models:
        raise where.error(
            "models", "missing or empty", "List at least one model (a catalogue name, a hub id or a local directory)."
        )
    models = [_model(where, entry, f"models[{i}]", suite_invarlock) for i, entry in enumerate(raw_models)]
    _unique(where, [m.name for m in models], "models")
    raw_scenarios = _scenario_set(where, data.get("scenarios", _default_scenarios()))
    if not isinstance(raw_scenarios, list) or not raw_scenarios:
        raise where.error("scenarios", "must be a non-empty list", "List scenario names or inline {name, spec, kind} entries.")
    scenarios = [_scenario(where, entry, f"scenarios[{i}]") for i, entry in enumerate(raw_scenarios)]
    _unique(where, [s.name for s in scenarios], "scenarios")
    if not where.boolean(data.get("errors", True), "errors"):
        scenarios = [s for s in scenarios if s.kind != "error"]
    bench = where.mapping(data.get("benchmarks", {}), "benchmarks")
    where.known_keys(bench, _BENCHMARK_KEYS, "benchmarks")
    tasks = bench.get("tasks", list(DEFAULT_BENCHMARKS))
    if not isinstance(tasks, list) or not all(isinstance(t, str) and _SLUG.match(t) for t in tasks):
        raise where.error(
            "benchmarks.tasks", f"expected a list of task names, got {_show(tasks)}", "e.g. tasks: [hellaswag, arc_challenge]."
        )
    for i, task in enumerate(tasks):
        problem = unknown_task_problem(task)
        if problem:
            raise where.error(f"benchmarks.tasks[{i}]", problem, _TASK_FIX)
    limit = bench.get("limit")
    min_signal = where.number(data.get("min_signal_fraction", DEFAULT_MIN_SIGNAL_FRACTION), "min_signal_fraction")
    if not 0 <= min_signal <= 1:
        raise where.error("min_signal_fraction", f"{min_signal} is not a fraction", "Use a number between 0 and 1, e.g. 0.5.")
    benchmarks = Benchmarks(
        tasks=tuple(tasks),
        num_fewshot=where.integer(bench.get("num_fewshot", 5), "benchmarks.num_fewshot", 0),
        limit=None if limit is None else where.integer(limit, "benchmarks.limit", 1),
    )
    return Suite(
        name=where.slug(data.get("name", path.stem), "name"),
        path=path,
        description=where.text(data.get("description", ""), "description"),
        device=where.choice(data.get("device", "auto"), "device", DEVICES),
        runs=runs,
        models=tuple(models),
        scenarios=tuple(scenarios),
        benchmarks=benchmarks,
        min_signal_fraction=min_signal,
        invarlock=dict(suite_invarlock),
        timeouts=_timeouts(where, data.get("timeouts", {})),
        gpu_require_idle=where.boolean(data.get("gpu_require_idle", True), "gpu_require_idle"),
        tuned_edit_params=_suite_path(where, data, "tuned_edit_params", must_be="file"),
        calibration_preset=_suite_path(where, data, "calibration_preset", must_be="file or directory"),
    )


def _scenario_set(where: _Where, value: Any) -> Any:
    """`scenarios: NAME` names a set in suites/scenario_sets.yaml (a seed's scenario manifest); a list stays."""
    if not isinstance(value, str):
        return value
    sets = _catalogue("scenario_sets.yaml")
    if value not in sets:
        hint = difflib.get_close_matches(value, list(sets), n=1)
        raise where.error(
            "scenarios",
            f"unknown scenario set '{value}'",
            (f"Did you mean '{hint[0]}'? " if hint else "") + f"Sets: {', '.join(sets)}; or list the scenarios.",
        )
    return list(sets[value])


def _suite_path(where: _Where, data: Mapping[str, Any], key: str, *, must_be: str) -> Path | None:
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


def _timeouts(where: _Where, block: Any) -> dict[str, float]:
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
    where = _CommandLine(suite.path)
    if models:
        # A replacement model keeps the suite's `invarlock:` block; one whose id names no size (a local
        # directory, say) also keeps the size class and dtype the suite's models share.
        classes = {(m.size_class, m.dtype) for m in suite.models}
        resolved = []
        for i, entry in enumerate(models):
            known = next((m for m in suite.models if m.name == entry or m.source == entry), None)
            if known is None:
                _check_model_argument(entry, i)
            if (
                known is None
                and len(classes) == 1
                and entry not in _catalogue("models.yaml")
                and _params_from_name(entry) is None
            ):
                size_class, dtype = next(iter(classes))
                known = _model(
                    where,
                    {**model_from_source(entry), "size_class": size_class, "dtype": dtype},
                    f"--models[{i}]",
                    suite.invarlock,
                )
            resolved.append(known or _model(where, entry, f"--models[{i}]", suite.invarlock))
        _unique(where, [m.name for m in resolved], "--models")
        suite = replace(suite, models=tuple(resolved))
    if runs:
        merged = dict(suite.runs)
        for kind, count in runs.items():
            if count is not None:
                if not 0 <= count <= MAX_RUNS:
                    raise SuiteError(f"--runs-{kind} must be >= 0 and <= {MAX_RUNS}, got {count}. Pass a whole number of runs.")
                merged[kind] = count
        suite = replace(suite, runs=merged)
    if not errors:
        suite = replace(suite, scenarios=tuple(s for s in suite.scenarios if s.kind != "error"))
    if benchmarks is not None:
        for task in benchmarks:
            problem = None if _SLUG.match(task) else f"'{task}' is not a task name"
            problem = problem or unknown_task_problem(task)
            if problem:
                raise SuiteError(f"--benchmarks {_show(','.join(benchmarks))}: {problem}. {_TASK_FIX}")
        suite = replace(suite, benchmarks=replace(suite.benchmarks, tasks=tuple(benchmarks)))
    if tier:
        if tier not in TIERS:
            hint = difflib.get_close_matches(tier, TIERS, n=1)
            raise SuiteError(
                f"--tier {_show(tier)} is not an InvarLock tier. "
                + (f"Did you mean '{hint[0]}'? " if hint else "")
                + f"Use one of {', '.join(TIERS)}."
            )
        suite = replace(suite, models=tuple(replace(m, settings=replace(m.settings, tier=tier)) for m in suite.models))
        for model in suite.models:
            problem = tier_floor_problem(model)
            if problem:
                raise SuiteError(f"--tier {tier}: {problem}. {_FLOOR_FIX}")
    return suite


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def _check_model_argument(entry: str, i: int) -> None:
    """A `--models` value names a catalogue model, a hub id (org/name) or an existing local directory."""
    option = f"--models {_show(entry)}"
    if "\x00" in entry or not entry.strip():
        raise SuiteError(f"{option}: not a model name. Give a catalogue name, a hub id (org/name) or a local directory.")
    catalogue = _catalogue("models.yaml")
    if entry in catalogue:
        return
    path = user_path(entry, option)
    looks_local = entry.startswith((".", "/", "~")) or entry.count("/") > 1 or "\\" in entry
    if looks_local or path.exists():
        if not path.exists():
            raise SuiteError(
                f"{option}: local model directory '{path}' does not exist. "
                "Check the path (relative paths start from the current directory), or give a hub id as org/name."
            )
        if not path.is_dir():
            raise SuiteError(f"{option}: '{path}' is not a directory. Pass the model's directory (with its config.json).")
        return
    if _HUB_ID.match(entry):
        return
    hint = difflib.get_close_matches(entry, list(catalogue), n=1)
    raise SuiteError(
        f"{option}: unknown model '{entry}'. "
        + (f"Did you mean '{hint[0]}'? " if hint else "")
        + f"Use a catalogue name ({', '.join(catalogue)}), a hub id such as org/name, or an existing local directory."
    )
