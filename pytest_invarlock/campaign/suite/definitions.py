"""The frozen dataclasses a loaded suite is made of: `Suite`, its `Model`s with their `Settings`, `Scenario`s, `Benchmarks`.

They are what the rest of the plugin sees of a suite file; `loading.load_suite` builds them, and
`overrides.override_suite` derives new ones from them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.suite.files import shipped_file
from pytest_invarlock.campaign.time_limits import limit_s

_PINNED_REVISION = re.compile(r"^[0-9a-f]{40}$")
# Informational scenarios are judged only by a minimum signal fraction (the reference names no value;
# this default is verdict.phase0.DEFAULT_MIN_SIGNAL_FRACTION, repeated here to keep campaign/ free of verdict/).
DEFAULT_MIN_SIGNAL_FRACTION = 0.5


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
        return self.tuned_edit_params or shipped_file("tuned_edit_params.json")

    def runs_for(self, scenario: Scenario) -> int:
        return scenario.runs if scenario.runs is not None else self.runs[scenario.kind]

    def model(self, name: str) -> Model:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)
