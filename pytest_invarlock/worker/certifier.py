"""The one module that talks to InvarLock (invarlock[hf] 0.12.x); nothing else imports it.

It knows, as measured on 0.12.1 (host, offline):

- how to run ``invarlock evaluate`` on a host: ``--execution-mode host --assurance off``,
  and online (``--allow-network``, ``INVARLOCK_ALLOW_NETWORK=1``, the HF offline switches off, so its
  provider downloads WikiText-2) or offline (all of them the other way);
  ``--profile ci``, absolute ``--out``/``--report-out``, ``INVARLOCK_EVALUATE_TMP_DIR`` and
  a working directory of its own per call (it writes ``./tmp`` otherwise, and two calls
  sharing an ``--out`` overwrite each other);
- where each knob lives: the preset YAML carries the dataset (``local_jsonl``, one window
  per line), the acceptance range, the drift band and the calibrated guard thresholds
  (a config's ``primary_metric`` block survives the profile merge); window counts and
  bootstrap replicates must go through the profile (``$INVARLOCK_CONFIG_ROOT/runtime/
  profiles/ci.yaml``), which overrides the preset's ``dataset`` block; the token floor
  of the primary-metric gate lives in ``runtime/tiers.yaml``;
- how to read the outcome into plain dataclasses (no InvarLock type leaks out), and how
  to classify an evaluate that died without a report.

Heavy InvarLock imports (torch) happen only when evaluating in-process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from invarlock.core.auto_tuning import clear_tier_policies_cache, get_tier_policies
from invarlock.core.runner_pairing import BOOTSTRAP_COVERAGE_REQUIREMENTS
from invarlock.reporting.report_summary import compute_console_validation_block
from invarlock.security import enforce_network_policy

from pytest_invarlock.campaign.presets import DEFAULT_DRIFT_BAND, CalibrationStats, z_at_cap_budget
from pytest_invarlock.worker.hub_access import hub_mode, hub_variables

EvaluateMode = Literal["inprocess", "subprocess"]

PROFILE = "ci"
NON_FINITE_FAILURE = "non-finite model output (detected)"
REPORT_FILE = Path("reports/eval/evaluation.report.json")
LOG_FILE = "evaluate.log"
# What an offline evaluate that needed the hub logs (datasets' and huggingface_hub's messages, InvarLock's guard).
_OFFLINE_MISS_MARKERS = ("offline", "couldn't reach", "connectionerror", "localentrynotfound", "network access")
OFFLINE_HOW_TO = (
    "this run is offline and InvarLock's hub dataset is not in the local Hugging Face cache: run once with --online "
    "(the first evaluate downloads it), or set `invarlock: {dataset: local}` in the suite"
)
CONFIG_DIR = "invarlock-config"  # the evaluate's INVARLOCK_CONFIG_ROOT, inside its workdir (kept with the certificate)
PRESET_FILE = "preset.yaml"  # the --preset file, inside CONFIG_DIR
_NON_FINITE_EVENTS = frozenset({"non_finite_loss_total", "primary_metric_invalid"})
# Substrings InvarLock's model-family detection looks for in the model *path* (0.12.1
# model_profile.py); one that the model's own config does not also name re-labels the model.
_FAMILY_KEYWORDS = (
    "bert",
    "t5",
    "bart",
    "mixtral",
    "gpt-oss",
    "gpt_oss",
    "mistral",
    "qwen",
    "yi",
    "llama",
    "gemma",
    "olmo",
    "phi",
)
_WORK_SUBDIRS = ("runs", "reports", "tmp", CONFIG_DIR)
_TUPLE_FIELDS = frozenset(
    {"failed_gates", "display_ci", "acceptance_range", "drift_band", "rmt_violations", "invariants_failures"}
)
_FAILURE_TAIL_CHARS = 600
TIMED_OUT_RETURNCODE = -1  # what _run_subprocess returns for a killed evaluate


@dataclass(frozen=True)
class EvaluateSettings:
    """Everything that shapes an evaluation besides the two models.

    ``dataset_file`` is a local JSONL with a ``text`` field, one evaluation window per
    line (the first ``preview_n + final_n`` lines, each cut to ``seq_len`` tokens; the
    ``stride`` is recorded but local_jsonl does not use it). ``dataset_file=None`` uses
    InvarLock's hub provider ``hub_dataset`` (wikitext2, the GPU suites' dataset), whose
    window selection follows ``seed``. Local files come from ``worker.windows``: packed full windows, one
    random draw per run (exchangeable preview/final halves). ``bootstrap_seed`` seeds InvarLock's
    bootstrap (``None``: its default, the dataset seed). ``min_tokens`` overrides the
    tier's token floor of the primary-metric gate (50,000 for balanced, summed over preview
    and final windows); ``None`` keeps it. ``threads`` is the torch thread count InvarLock
    pins (its ci profile forces deterministic, single-threaded CPU runs by default).
    ``measure_guard_overhead=False`` skips InvarLock's extra guard-free evaluation pass
    (about a quarter of a subject run); the overhead gate then drops out of the verdict.
    """

    dataset_file: Path | None
    seq_len: int = 128
    stride: int = 128
    preview_n: int = 180
    final_n: int = 180
    bootstrap_replicates: int = 1200
    tier: str = "balanced"
    acceptance_range: tuple[float, float] = (0.90, 1.20)
    drift_band: tuple[float, float] = DEFAULT_DRIFT_BAND
    min_tokens: int | None = None
    device: str = "cpu"
    threads: int = 1
    measure_guard_overhead: bool = True
    hub_dataset: str = "wikitext2"
    seed: int = 42
    bootstrap_seed: int | None = None
    dtype: str | None = None  # InvarLock's model.dtype for both runs (None: transformers' default, the config's)
    guard_order: tuple[str, ...] | None = None  # the preset's guards.order (None: InvarLock's canonical chain)
    snapshot_mode: str = "auto"  # context.snapshot.mode and INVARLOCK_SNAPSHOT_MODE: auto, bytes or chunked

    def check(self) -> None:
        """Fail early, with a fix, on settings that would make evaluate die half-way."""
        if self.tier not in get_tier_policies():
            raise ValueError(f"Unknown InvarLock tier {self.tier!r}; use one of {sorted(get_tier_policies())}.")
        if self.dataset_file is not None and (not self.dataset_file.is_absolute() or not self.dataset_file.is_file()):
            raise ValueError(
                f"dataset_file must be an existing absolute path, got {str(self.dataset_file)!r}. "
                "InvarLock resolves relative paths against its own working directory; pass "
                "Path(...).resolve() of a JSONL file with one {'text': ...} passage per line."
            )
        floors = BOOTSTRAP_COVERAGE_REQUIREMENTS.get(self.tier) or BOOTSTRAP_COVERAGE_REQUIREMENTS["balanced"]
        if (
            self.preview_n < floors["preview"]
            or self.final_n < floors["final"]
            or self.bootstrap_replicates < floors["replicates"]
        ):
            raise ValueError(
                f"The {PROFILE!r} profile aborts tier {self.tier!r} runs below "
                f"{floors['preview']}+{floors['final']} windows or {floors['replicates']} bootstrap "
                f"replicates (INSUFFICIENT-SAMPLE); got {self.preview_n}+{self.final_n} windows and "
                f"{self.bootstrap_replicates} replicates. Raise them in the suite's InvarLock settings."
            )
        if self.dataset_file is None:
            return
        wanted = self.preview_n + self.final_n
        with self.dataset_file.open(encoding="utf-8") as lines:
            passages = [json.loads(line).get("text") for line in lines if line.strip()][:wanted]
        if len(passages) < wanted:
            raise ValueError(
                f"{self.dataset_file} holds {len(passages)} passages but {self.preview_n}+{self.final_n} "
                "windows were asked for (one window per line). Use a larger corpus or fewer windows."
            )
        if len(set(passages)) < wanted:
            raise ValueError(
                f"The first {wanted} lines of {self.dataset_file} repeat a passage. InvarLock then "
                "shrinks both window arms (by at least 5 per duplicate) until the pair falls out, "
                "which can drop them under the coverage floor; de-duplicate the corpus."
            )


@dataclass(frozen=True)
class Verdict:
    """One evaluation's outcome in plain values; cached on disk through ``to_dict``.

    ``failed_gates`` names the ``validation`` flags that sank ``overall_pass`` (other flags,
    such as ``guard_warnings_present``, are informational and may be False on a pass).
    ``failure`` is None when InvarLock produced a report. Otherwise it says why not:
    ``crashed`` is False when InvarLock itself caught the defect (a NaN model aborts
    the evaluate with no report), True when the pipeline broke.
    """

    overall_pass: bool
    failed_gates: tuple[str, ...] = ()
    flags: dict[str, bool] = field(default_factory=dict)
    metric_kind: str | None = None
    preview: float | None = None
    final: float | None = None
    ratio_vs_baseline: float | None = None
    display_ci: tuple[float, float] | None = None
    degraded: bool = False
    invalid: bool = False
    degraded_reason: str | None = None
    drift: float | None = None
    acceptance_range: tuple[float, float] | None = None
    drift_band: tuple[float, float] | None = None
    tokens: int | None = None
    tokens_floor_met: bool | None = None
    spectral_caps_applied: int | None = None
    spectral_max_caps: int | None = None
    spectral_kappa: dict[str, float] = field(default_factory=dict)
    spectral_max_z: dict[str, float] = field(default_factory=dict)
    rmt_epsilon: dict[str, float] = field(default_factory=dict)
    rmt_edge_growth: dict[str, float] = field(default_factory=dict)
    rmt_violations: tuple[str, ...] = ()
    invariants_failures: tuple[str, ...] = ()
    policy_thresholds_hash: str | None = None  # policy_digest.thresholds_hash: which thresholds judged the run
    policy_changed: bool | None = None  # policy_digest.changed: thresholds differ from the tier's
    determinism_level: str | None = None  # meta.determinism.level: strict, tolerance or off
    report_path: str | None = None
    failure: str | None = None
    crashed: bool = False
    elapsed_s: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Verdict:
        values: dict[str, Any] = {k: tuple(v) if k in _TUPLE_FIELDS and v is not None else v for k, v in data.items()}
        return cls(**values)

    @classmethod
    def from_report(cls, report: Mapping[str, Any], *, report_path: str | None = None, elapsed_s: float | None = None) -> Verdict:
        """Parse an ``evaluation.report.json`` payload (real or synthetic)."""
        pm = _mapping(report.get("primary_metric"))
        spectral = _mapping(report.get("spectral"))
        rmt = _mapping(report.get("rmt"))
        window_plan = _mapping(_mapping(report.get("provenance")).get("window_plan"))
        violations = [v for v in rmt.get("epsilon_violations") or [] if isinstance(v, Mapping)]
        invariant_failures = _mapping(report.get("invariants")).get("failures") or []
        preview, final = _finite(pm.get("preview")), _finite(pm.get("final"))
        gates = compute_console_validation_block(dict(report))
        return cls(
            overall_pass=bool(gates["overall_pass"]),
            failed_gates=tuple(_flag_key(row["label"]) for row in gates["rows"] if not row["ok"]),
            flags={k: v for k, v in _mapping(report.get("validation")).items() if isinstance(v, bool)},
            metric_kind=pm.get("kind"),
            preview=preview,
            final=final,
            ratio_vs_baseline=_finite(pm.get("ratio_vs_baseline")),
            display_ci=_pair(pm.get("display_ci")),
            degraded=bool(pm.get("degraded", False)),
            invalid=bool(pm.get("invalid", False)),
            degraded_reason=pm.get("degraded_reason"),
            drift=final / preview if preview and final is not None else None,
            acceptance_range=_bounds(_mapping(report.get("meta")).get("pm_acceptance_range")),
            drift_band=_bounds(pm.get("drift_band")),
            tokens=_tokens(window_plan),
            tokens_floor_met=window_plan.get("tokens_floor_met"),
            spectral_caps_applied=spectral.get("caps_applied"),
            spectral_max_caps=spectral.get("max_caps"),
            spectral_kappa=_family_values(spectral.get("family_caps"), "kappa"),
            spectral_max_z=_family_values(spectral.get("family_z_quantiles"), "max"),
            rmt_epsilon=_finite_values(rmt.get("epsilon_by_family")),
            rmt_edge_growth=_family_values(rmt.get("families"), "delta"),
            rmt_violations=tuple(str(v.get("family")) for v in violations),
            invariants_failures=tuple(_describe_invariant(f) for f in invariant_failures),
            policy_thresholds_hash=_mapping(report.get("policy_digest")).get("thresholds_hash"),
            policy_changed=_mapping(report.get("policy_digest")).get("changed"),
            determinism_level=_mapping(_mapping(report.get("meta")).get("determinism")).get("level"),
            report_path=report_path,
            elapsed_s=elapsed_s,
        )

    @classmethod
    def from_failure(cls, failure: str, *, crashed: bool, elapsed_s: float | None = None) -> Verdict:
        return cls(overall_pass=False, failure=failure, crashed=crashed, elapsed_s=elapsed_s)


def evaluation_dtype(model_dtype: str, device: str) -> str:
    """The dtype evaluate loads a model in: the suite's on a GPU; on a CPU, half precision only where the CPU
    computes bf16 natively (AMX or AVX512-BF16: measured on SmolLM2-135M here, bf16 forwards faster than
    float32), else float32 (emulated half precision is several times slower than float32)."""
    if device != "cpu" or model_dtype == "float32":
        return model_dtype
    return "bfloat16" if _cpu_has_native_bf16() else "float32"


@functools.cache
def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def tier_preset(tier: str) -> dict[str, Any]:
    """The tier's stock thresholds in ``presets`` vocabulary: the base a calibration raises."""
    policies = get_tier_policies().get(tier)
    if policies is None:
        raise ValueError(f"Unknown InvarLock tier {tier!r}; use one of {sorted(get_tier_policies())}.")
    spectral = policies["spectral"]
    return {
        "drift_band": list(DEFAULT_DRIFT_BAND),
        "spectral_kappa": {f: float(c["kappa"]) for f, c in spectral["family_caps"].items()},
        "spectral_max_caps": int(spectral["max_caps"]),
        "rmt_epsilon": {f: float(e) for f, e in policies["rmt"]["epsilon_by_family"].items()},
        "variance_min_effect_lognll": float(policies["variance"].get("min_effect_lognll") or 0.0),
    }


def calibration_stats(report: Mapping[str, Any]) -> CalibrationStats:
    """What a calibration (baseline vs itself) evaluation report contributes to a preset."""
    pm = _mapping(report.get("primary_metric"))
    preview, final = _finite(pm.get("preview")), _finite(pm.get("final"))
    if not preview or final is None:
        raise ValueError(
            "The calibration report has no finite preview/final primary metric, so its drift is "
            "unknown; a calibration run must be a healthy no-op evaluation of the baseline."
        )
    guards = {str(g.get("name")): g for g in report.get("guards") or [] if isinstance(g, dict)}
    spectral_guard = _mapping(guards.get("spectral"))
    family_of = _mapping(spectral_guard.get("module_family_map"))
    z_by_family: dict[str, list[float]] = {}
    for module, z in _mapping(spectral_guard.get("final_z_scores")).items():
        if module in family_of and _finite(z) is not None:
            z_by_family.setdefault(str(family_of[module]), []).append(float(z))
    budget = int(_mapping(report.get("spectral")).get("max_caps") or 0)
    variance_metrics = _mapping(_mapping(guards.get("variance")).get("metrics"))
    delta_ci = _pair(_mapping(variance_metrics.get("predictive_gate")).get("delta_ci"))
    return CalibrationStats(
        drift=final / preview,
        spectral_z_at_budget=z_at_cap_budget(z_by_family, budget),
        rmt_epsilon=_family_values(_mapping(report.get("rmt")).get("families"), "delta"),
        delta_ci_half_width=abs(delta_ci[1] - delta_ci[0]) / 2 if delta_ci else None,
    )


def run_baseline(
    model: Path,
    workdir: Path,
    settings: EvaluateSettings,
    *,
    mode: EvaluateMode = "inprocess",
    env: Mapping[str, str] | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    timeout_s: float | None = None,
    online: bool = False,
) -> Path:
    """Evaluate ``model`` against itself once and return its reusable baseline ``report.json``.

    Pass the result as ``certify(baseline_report=...)`` with the same model path and
    settings; InvarLock then skips the baseline side (it checks model path, profile,
    tier and window plan strictly).
    """
    verdict = certify(
        model,
        model,
        workdir,
        settings,
        edit_label="noop",
        mode=mode,
        env=env,
        load_kwargs=load_kwargs,
        timeout_s=timeout_s,
        online=online,
    )
    reports = sorted((workdir / "runs" / "source").glob("*/report.json"))
    if verdict.failure is not None or not reports:
        raise RuntimeError(
            f"The baseline no-op evaluation of {model} produced no baseline report "
            f"({verdict.failure or 'no runs/source/*/report.json'}); see {workdir / LOG_FILE}."
        )
    return reports[-1]


def certify(
    baseline: Path,
    subject: Path,
    workdir: Path,
    settings: EvaluateSettings,
    *,
    edit_label: str,
    preset: Mapping[str, Any] | None = None,
    baseline_report: Path | None = None,
    mode: EvaluateMode = "inprocess",
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    load_kwargs: Mapping[str, Any] | None = None,
    online: bool = False,
) -> Verdict:
    """Run ``invarlock evaluate`` (baseline vs subject) in ``workdir`` and read its verdict.

    ``preset`` is a calibrated preset from ``presets`` (drift band and guard thresholds);
    None keeps the tier's stock thresholds and ``settings.drift_band``. ``edit_label``
    becomes the report's edit name (InvarLock loosens rmt for the name "quant_rtn").
    ``workdir`` is owned by this call: its InvarLock outputs are replaced.

    ``mode="inprocess"`` (measured 15-25% faster on CPU: no interpreter and torch start-up)
    runs evaluate in this process and restores the global state it changes; it is not
    thread-safe (it changes the working directory and environment). ``"subprocess"``
    isolates crashes, returns all GPU memory, and honours ``timeout_s``. ``env`` adds
    variables for the evaluate (e.g. CUDA_VISIBLE_DEVICES of a multi-GPU placement).
    ``load_kwargs`` (e.g. ``device_map``/``max_memory`` from ``scheduling.device_map``) reach
    ``from_pretrained`` through the preset's ``model:`` block, which InvarLock merges into both
    runs' configs; user kwargs win over its own loading defaults. A subprocess that runs past
    ``timeout_s`` is killed and the verdict's failure says "timed out after N s". ``online`` lets
    InvarLock and the HF clients download (the hub dataset, above all); offline they refuse, and a failure
    that came from it says how to get the dataset.
    """
    if mode not in ("subprocess", "inprocess"):
        raise ValueError(f"mode must be 'subprocess' or 'inprocess', got {mode!r}.")
    if timeout_s is not None and mode == "inprocess":
        raise ValueError("timeout_s needs mode='subprocess': an in-process evaluate cannot be interrupted.")
    settings.check()
    baseline, subject = _checked_model_dir(baseline), _checked_model_dir(subject)
    workdir = workdir.resolve()
    for sub in _WORK_SUBDIRS:
        shutil.rmtree(workdir / sub, ignore_errors=True)
    (workdir / "tmp").mkdir(parents=True)
    preset_file = workdir / CONFIG_DIR / PRESET_FILE
    _write_invarlock_config(workdir / CONFIG_DIR, preset_file, settings, preset, load_kwargs)
    options = {
        "baseline": str(baseline),
        "subject": str(subject),
        "baseline_report": str(baseline_report.resolve()) if baseline_report else None,
        "device": settings.device,
        "profile": PROFILE,
        "tier": settings.tier,
        "preset": str(preset_file),
        "out": str(workdir / "runs"),
        "report_out": str(workdir / REPORT_FILE.parent),
        "edit_label": edit_label,
        "execution_mode": "host",
        "assurance": "off",
        "allow_network": online,
    }
    env = {
        **hub_variables(online=online),
        "INVARLOCK_CONFIG_ROOT": str(workdir / CONFIG_DIR),
        "INVARLOCK_EVALUATE_TMP_DIR": str(workdir / "tmp"),
        "INVARLOCK_OMP_THREADS": str(settings.threads),
        "INVARLOCK_SNAPSHOT_MODE": settings.snapshot_mode,  # the recorded setting, never an inherited variable
        **(env or {}),
    }
    started = time.perf_counter()
    if mode == "subprocess":
        returncode = _run_subprocess(options, env, workdir, timeout_s)
    else:
        with interrupts_kept(), hub_mode(online=online):
            returncode = _run_inprocess(options, env, workdir)
    elapsed = round(time.perf_counter() - started, 2)
    if returncode == TIMED_OUT_RETURNCODE:
        return Verdict.from_failure(f"invarlock evaluate timed out after {timeout_s:g} s", crashed=True, elapsed_s=elapsed)
    verdict = read_verdict(workdir, returncode, elapsed_s=elapsed)
    if verdict.crashed and not online and settings.dataset_file is None and _log_mentions_offline(workdir):
        return dataclasses.replace(verdict, failure=f"{OFFLINE_HOW_TO}; {verdict.failure}")
    return verdict


def _log_mentions_offline(workdir: Path) -> bool:
    log = workdir / LOG_FILE
    text = log.read_text(encoding="utf-8", errors="replace").lower() if log.is_file() else ""
    return any(marker in text for marker in _OFFLINE_MISS_MARKERS)


def read_verdict(workdir: Path, returncode: int, *, elapsed_s: float | None = None) -> Verdict:
    """The verdict of the evaluate that ran in ``workdir`` and exited with ``returncode``.

    Without a report, tells a defect InvarLock caught (it logged non-finite losses before
    aborting on "Window pairing mismatch") from a broken pipeline (message tail kept).
    """
    report_path = workdir / REPORT_FILE
    if returncode == 0 and report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        return Verdict.from_report(report, report_path=str(report_path), elapsed_s=elapsed_s)
    non_finite = [e for e in _events(workdir) if e.get("operation") in _NON_FINITE_EVENTS]
    if non_finite:
        totals = next((_mapping(e.get("data")) for e in non_finite if e.get("operation") == "non_finite_loss_total"), {})
        evidence = (
            f"{totals['non_finite_losses']}/{totals['requested']} windows gave a non-finite loss"
            if {"non_finite_losses", "requested"} <= totals.keys()
            else "the primary metric is not finite"
        )
        return Verdict.from_failure(f"{NON_FINITE_FAILURE}: {evidence}", crashed=False, elapsed_s=elapsed_s)
    log_file = workdir / LOG_FILE
    log = log_file.read_text(encoding="utf-8", errors="replace") if log_file.is_file() else ""
    tail = " ".join(log.split())[-_FAILURE_TAIL_CHARS:]
    return Verdict.from_failure(
        f"invarlock evaluate exited {returncode} without a report: {tail}", crashed=True, elapsed_s=elapsed_s
    )


def _checked_model_dir(model: Path) -> Path:
    """Resolve ``model`` and refuse paths whose name would change InvarLock's family guess."""
    model = model.resolve()
    config_file = model / "config.json"
    if not config_file.is_file():
        raise ValueError(f"{model} is not a Hugging Face model directory (no config.json).")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    declared = " ".join([str(config.get("model_type", "")), *map(str, config.get("architectures") or [])]).lower()
    stray = [k for k in _FAMILY_KEYWORDS if k in str(model).lower() and k not in declared]
    if stray:
        raise ValueError(
            f"The model path {model} contains {stray}, which InvarLock 0.12 reads as a model-family "
            "hint (it would change the tokenizer's BOS handling or the loss). Keep artifact "
            "directory names neutral, e.g. a content hash."
        )
    return model


def _write_invarlock_config(
    config_root: Path,
    preset_file: Path,
    settings: EvaluateSettings,
    preset: Mapping[str, Any] | None,
    load_kwargs: Mapping[str, Any] | None = None,
) -> None:
    """Write the preset YAML and the INVARLOCK_CONFIG_ROOT overrides for one evaluate."""
    profiles = config_root / "runtime" / "profiles"
    profiles.mkdir(parents=True)
    windows = {"preview_n": settings.preview_n, "final_n": settings.final_n}
    bootstrap = {"replicates": settings.bootstrap_replicates, "alpha": 0.05}
    if settings.bootstrap_seed is not None:  # else InvarLock seeds its bootstrap with the dataset seed
        bootstrap["seed"] = settings.bootstrap_seed
    profile = {"dataset": windows, "eval": {"bootstrap": bootstrap}}
    (profiles / f"{PROFILE}.yaml").write_text(yaml.safe_dump(profile), encoding="utf-8")
    if settings.min_tokens is not None:
        stock = resources.files("invarlock._data.runtime").joinpath("tiers.yaml")
        tiers = yaml.safe_load(stock.read_text(encoding="utf-8"))
        tiers[settings.tier]["metrics"]["pm_ratio"]["min_tokens"] = settings.min_tokens
        (config_root / "runtime" / "tiers.yaml").write_text(yaml.safe_dump(tiers), encoding="utf-8")
    drift = preset["drift_band"] if preset else settings.drift_band
    source: dict[str, Any] = (
        {"provider": settings.hub_dataset, "seed": settings.seed}
        if settings.dataset_file is None
        else {
            "provider": "local_jsonl",
            "file": str(settings.dataset_file),
            "text_field": "text",
            "max_samples": settings.preview_n + settings.final_n,
        }
    )
    content: dict[str, Any] = {
        "dataset": {**source, "seq_len": settings.seq_len, "stride": settings.stride, **windows},
        "primary_metric": {
            "acceptance_range": {"min": settings.acceptance_range[0], "max": settings.acceptance_range[1]},
            "drift_band": {"min": drift[0], "max": drift[1]},
        },
        "context": {"run": {"skip_overhead_check": not settings.measure_guard_overhead}},
    }
    if settings.snapshot_mode != "auto":
        content["context"]["snapshot"] = {"mode": settings.snapshot_mode}
    if load_kwargs:
        content["model"] = {k: dict(v) if isinstance(v, Mapping) else v for k, v in load_kwargs.items()}
    if settings.dtype:
        content.setdefault("model", {}).setdefault("dtype", settings.dtype)
    if preset:
        content["guards"] = {
            "spectral": {
                "family_caps": {f: {"kappa": k} for f, k in preset["spectral_kappa"].items()},
                "max_caps": preset["spectral_max_caps"],
            },
            "rmt": {"epsilon_by_family": dict(preset["rmt_epsilon"])},
            "variance": {"min_effect_lognll": preset["variance_min_effect_lognll"]},
        }
    if settings.guard_order:
        content.setdefault("guards", {})["order"] = list(settings.guard_order)
    preset_file.write_text(yaml.safe_dump(content, sort_keys=False), encoding="utf-8")


def _command_line(options: Mapping[str, Any]) -> list[str]:
    # InvarLock's own CLI, run through a launcher that logs an OOM InvarLock's message would hide
    argv = [sys.executable, "-m", "pytest_invarlock.worker.evaluate_child", "evaluate", "--no-color", "--no-progress"]
    for key, value in options.items():
        if value is True:  # a flag (--allow-network)
            argv.append(f"--{key.replace('_', '-')}")
        elif value is not None and value is not False:
            argv += [f"--{key.replace('_', '-')}", str(value)]
    return argv


def _run_subprocess(options: Mapping[str, Any], env: Mapping[str, str], workdir: Path, timeout_s: float | None) -> int:
    with (workdir / LOG_FILE).open("w", encoding="utf-8") as log:
        try:
            # Same process group, so Ctrl-C reaches it; subprocess.run kills it when this process is interrupted;
            # and the kernel kills it when this process dies (SIGKILL, OOM), so it never outlives its worker.
            return subprocess.run(
                _command_line(options),
                cwd=workdir,
                env={**os.environ, **env},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
                preexec_fn=functools.partial(_die_with_parent, os.getpid()),
            ).returncode
        except subprocess.TimeoutExpired:
            log.write(f"\ninvarlock evaluate timed out after {timeout_s} s\n")
            return TIMED_OUT_RETURNCODE


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGKILL me when my parent dies (Linux prctl PR_SET_PDEATHSIG); no-op elsewhere."""
    if sys.platform != "linux":
        return
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


@contextlib.contextmanager
def interrupts_kept() -> Iterator[None]:
    """Ctrl-C during an item (an in-process evaluate above all) stops the session, even when it is swallowed.

    Measured: a SIGINT that lands while torch lazily imports ``_inductor``/``_dynamo`` inside evaluate
    came back as an ImportError (then an AttributeError in the next item) instead of KeyboardInterrupt.
    So the SIGINT is noted here and re-raised once the block ends, whatever it returned or raised.
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    seen: list[int] = []
    previous = signal.getsignal(signal.SIGINT)

    def on_sigint(signum: int, frame: Any) -> None:
        seen.append(signum)
        if callable(previous):
            previous(signum, frame)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    except Exception:
        if seen:  # e.g. the ImportError of an interrupted lazy import
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if seen:
        raise KeyboardInterrupt


def _run_inprocess(options: Mapping[str, Any], env: Mapping[str, str], workdir: Path) -> int:
    """Call ``evaluate_command`` in this process, undoing the global state it leaves behind."""
    import typer
    from invarlock.cli.commands.evaluate import evaluate_command

    from pytest_invarlock.worker.resources import OOM_MARKER, OomWatch

    clear_tier_policies_cache()  # cached per INVARLOCK_CONFIG_ROOT path; a rerun may change tiers.yaml
    with (workdir / LOG_FILE).open("w", encoding="utf-8") as log, _preserved_process_state(env, workdir):
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log), _oom_noted(OomWatch(), log, OOM_MARKER):
            try:
                given = {k: v for k, v in options.items() if v is not None}
                evaluate_command(**given, progress=False, no_color=True)
            except typer.Exit as exit_:
                return int(exit_.exit_code)
            except SystemExit as exit_:
                return exit_.code if isinstance(exit_.code, int) else 1
            except Exception as error:  # noqa: BLE001 - the CLI would exit 1 with this traceback
                log.write(f"\n{type(error).__name__}: {error}\n")
                return 1
    return 0


@contextlib.contextmanager
def _oom_noted(watch: Any, log: Any, marker: str) -> Iterator[None]:
    """Write `marker` to the log when a torch.OutOfMemoryError was raised inside (InvarLock may hide it)."""
    with watch:
        try:
            yield
        finally:
            if watch.seen:
                log.write(f"\n{marker}: {watch.seen[0]}\n")


@contextlib.contextmanager
def _preserved_process_state(env: Mapping[str, str], workdir: Path) -> Iterator[None]:
    """Run with ``env`` and ``workdir``; restore what evaluate changes process-wide.

    evaluate caps torch threads at 1, turns deterministic algorithms on, reseeds every
    RNG, exports thread variables, adds warning filters and patches ``socket`` to block
    the network for the rest of the process. torch's inter-op thread count cannot be
    reset once set.
    """
    import numpy
    import torch

    saved_environ, saved_cwd = dict(os.environ), Path.cwd()
    saved_sockets = (socket.socket, socket.create_connection)
    saved_threads = torch.get_num_threads()
    saved_determinism = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    saved_backends = (cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32)
    saved_rngs = (random.getstate(), numpy.random.get_state(), torch.get_rng_state())
    saved_cuda_rngs = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    os.environ.update(env)
    os.chdir(workdir)
    try:
        with warnings.catch_warnings():
            yield
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_environ)
        enforce_network_policy(True)
        vars(socket).update(socket=saved_sockets[0], create_connection=saved_sockets[1])  # undo InvarLock's patch
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_determinism[0], warn_only=saved_determinism[1])
        cudnn.deterministic, cudnn.benchmark, cudnn.allow_tf32, matmul.allow_tf32 = saved_backends
        random.setstate(saved_rngs[0])
        numpy.random.set_state(saved_rngs[1])
        torch.set_rng_state(saved_rngs[2])
        if saved_cuda_rngs is not None:
            torch.cuda.set_rng_state_all(saved_cuda_rngs)


def _events(workdir: Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for path in sorted((workdir / "runs").glob("*/*/events.jsonl")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                events.append(json.loads(line))
    return events


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _pair(value: Any) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = _finite(value[0]), _finite(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _bounds(value: Any) -> tuple[float, float] | None:
    band = _mapping(value)
    return _pair([band.get("min"), band.get("max")]) if band else _pair(value)


def _finite_values(values: Any) -> dict[str, float]:
    finite = {name: _finite(value) for name, value in _mapping(values).items()}
    return {name: value for name, value in finite.items() if value is not None}


def _family_values(families: Any, key: str) -> dict[str, float]:
    return _finite_values({family: _mapping(entry).get(key) for family, entry in _mapping(families).items()})


def _tokens(window_plan: Mapping[str, Any]) -> int | None:
    preview, final = window_plan.get("preview_total_tokens"), window_plan.get("final_total_tokens")
    return int(preview) + int(final) if isinstance(preview, int) and isinstance(final, int) else None


def _flag_key(gate_label: str) -> str:
    """InvarLock's console label for a gate, as its ``validation`` flag name."""
    return gate_label.strip().lower().replace(" ", "_")


def _describe_invariant(failure: Any) -> str:
    entry = _mapping(failure)
    check, kind = entry.get("check", "invariant"), entry.get("type", "violation")
    return f"{check}: {kind} ({entry.get('severity', 'warning')})"


# --------------------------------------------------------------------------- guard probes (informational injections)


def rmt_edge_risk_probe(
    baseline_model: Any, subject_model: Any, batches: list[Any], epsilon_by_family: Mapping[str, float]
) -> dict[str, Any]:
    """RMT's delta policy across two models: activation edge risk per family on the same windows, each family
    allowed (1 + epsilon) times the baseline's (InvarLock's own measurement and rule, outside compare mode)."""
    from invarlock.guards.rmt import RMTGuard
    from invarlock.guards.rmt_policy import compute_epsilon_violations

    guard = RMTGuard(epsilon_by_family=dict(epsilon_by_family))
    base = guard._compute_activation_edge_risk(baseline_model, batches) or {}
    current = guard._compute_activation_edge_risk(subject_model, batches) or {}
    guard.baseline_edge_risk_by_family = dict(base.get("edge_risk_by_family") or {})
    guard.edge_risk_by_family = dict(current.get("edge_risk_by_family") or {})
    violations = compute_epsilon_violations(guard)
    base_modules, current_modules = base.get("edge_risk_by_module") or {}, current.get("edge_risk_by_module") or {}
    changes = {
        module: current_modules[module] / base_modules[module] - 1.0
        for module in base_modules.keys() & current_modules.keys()
        if base_modules[module] > 0 and current_modules[module] != base_modules[module]
    }
    largest = sorted(changes, key=lambda module: -abs(changes[module]))[:10]
    return {
        "stable": not violations and bool(guard.baseline_edge_risk_by_family) and bool(guard.edge_risk_by_family),
        "measured": bool(base) and bool(current),
        "epsilon_by_family": dict(guard.epsilon_by_family),
        "edge_risk_baseline": guard.baseline_edge_risk_by_family,
        "edge_risk_subject": guard.edge_risk_by_family,
        "epsilon_violations": violations,
        "modules_changed": len(changes),  # RMT's rule sees only each family's largest edge risk
        "largest_module_changes": {module: changes[module] for module in largest},
        "windows": int(current.get("batches_used") or 0),
    }


def variance_probe(subject_model: Any, batches: list[Any], *, tier: str, min_effect_lognll: float) -> dict[str, Any]:
    """Variance equalisation's calibration on the subject: the scales it proposes and its A/B gain on the windows."""
    from invarlock.guards.policies import get_variance_policy
    from invarlock.guards.variance import VarianceGuard

    policy = {**dict(get_variance_policy(tier)), "min_effect_lognll": float(min_effect_lognll)}
    guard = VarianceGuard(policy)
    prepared = guard.prepare(subject_model, calib=batches, policy=policy)
    metrics = _mapping(prepared.get("baseline_metrics"))
    gate = dict(_mapping(guard._stats.get("predictive_gate")))
    ab = _mapping(guard._stats.get("ab_point_estimates"))
    no_ve, with_ve = _finite(ab.get("ppl_no_ve")), _finite(ab.get("ppl_with_ve"))
    proposed = int(metrics.get("proposed_scales") or 0)
    return {
        "ready": bool(prepared.get("ready")),
        "proposed_scales": proposed,
        "target_modules": int(metrics.get("target_modules") or 0),
        "ppl_no_ve": no_ve,
        "ppl_with_ve": with_ve,
        "ab_gain": (no_ve - with_ve) / no_ve if no_ve and with_ve is not None else None,
        "predictive_gate": {k: list(v) if isinstance(v, tuple) else v for k, v in gate.items()},
        "would_enable": proposed > 0 and bool(gate.get("passed")),
        "signal": proposed > 0 and bool(gate.get("passed")),
        "error": prepared.get("error") or prepared.get("warning"),
    }
