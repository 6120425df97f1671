"""Worker side: turn one item into a verdict, reusing every artifact the run directory already has.

One `Worker` per pytest process (per xdist worker). Its methods are the fixtures' bodies:
`baseline(model)`, `baseline_report(model)`, `preset(model)` (which runs missing calibration runs
itself, e.g. after `-k` deselected them), `edited_model(item)`, `certify(item)`, `benchmark(item)`.
Each product is content-addressed in the store (see `store`), produced once under a file lock and
reused by every worker and by the next run. Imports torch (through `models`) only when needed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_invarlock.state import ConfigState
from pytest_invarlock.campaign.items import Item
from pytest_invarlock.campaign.judging import Judgement, judge
from pytest_invarlock.worker.artifacts import ModelCache, baseline_artifact, default_cache_bytes, edit_artifact
from pytest_invarlock.records import base_record, junit_properties
from pytest_invarlock.edits.catalogue import parse_spec
from pytest_invarlock.store import Artifact, digest, write_json_atomic
from pytest_invarlock.campaign.suite import Model, Scenario

log = logging.getLogger("pytest_invarlock")
RESULT_FILE = "verdict.json"


class PipelineError(RuntimeError):
    """The validation pipeline itself broke (not InvarLock's verdict); the item is an error, not a failure."""


@dataclass
class ItemResult:
    """What an item produced: the record (for the verdict and junit) and whether it met its expectation."""

    record: dict[str, Any]
    met: bool
    explanation: str
    properties: list[tuple[str, Any]] = field(default_factory=list)

    def check(self) -> None:
        if not self.met:
            import pytest

            pytest.fail(self.explanation, pytrace=False)


def _invarlock_version() -> str:
    from importlib.metadata import version

    return version("invarlock")


class Worker:
    def __init__(self, state: ConfigState, worker_id: str) -> None:
        from pytest_invarlock import certifier  # imports invarlock: worker side only

        self.certifier = certifier
        self.state = state
        self.store = state.store
        self.worker_id = worker_id
        self.cache = ModelCache(default_cache_bytes())
        self.invarlock_version = _invarlock_version()
        self._memo: dict[tuple[str, str], Any] = {}
        apply_determinism(state.options.determinism, state.device)
        _log_to(state.run_dir / "logs" / f"{worker_id}.log")
        import torch

        torch.set_num_threads(_threads_per_worker())

    # ----------------------------------------------------------------- shared artifacts

    def _once(self, kind: str, name: str, make):
        """Memoise per worker process; the store already makes it once per run directory."""
        key = (kind, name)
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    def baseline(self, model: Model) -> Artifact:
        return self._once("baseline", model.name, lambda: baseline_artifact(model, self.store, offline=self.state.options.offline))

    def corpus(self, model: Model) -> tuple[Path, tuple[Path, ...]]:
        """(evaluation file, calibration shards) of the model's local dataset."""
        from pytest_invarlock.assets.tiny_model import build_tiny_assets

        assets = self._once("corpus", "tiny", build_tiny_assets)
        return Path(assets.eval_file), tuple(Path(p) for p in assets.calibration_files)

    def settings(self, model: Model, *, calibration_run: int | None = None):
        """InvarLock settings of one evaluate. Calibration runs vary by corpus shard (local) or by seed (hub),
        the seed suite's 41 + run."""
        s = model.settings
        dataset_file, seed = None, 41 + (calibration_run or 1)
        if s.dataset == "local":
            eval_file, shards = self.corpus(model)
            dataset_file = (eval_file if calibration_run is None else shards[(calibration_run - 1) % len(shards)]).resolve()
        return self.certifier.EvaluateSettings(
            dataset_file=dataset_file,
            hub_dataset=s.dataset,
            seed=seed,
            seq_len=s.seq_len,
            stride=s.stride,
            preview_n=s.preview_windows,
            final_n=s.final_windows,
            bootstrap_replicates=s.bootstrap_replicates,
            tier=s.tier,
            acceptance_range=(s.acceptance_min, s.acceptance_max),
            device=self.state.device,
            threads=_threads_per_worker(),
            measure_guard_overhead=s.guard_overhead,
            min_tokens=s.min_tokens,
        )

    def _settings_key(self, settings) -> dict[str, Any]:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items() if k != "threads"}
        if settings.dataset_file is not None:
            data["dataset_sha"] = _file_digest(settings.dataset_file)
        return data

    def evaluate_options(self, item: Item | None) -> dict[str, Any]:
        """How to run evaluate for an item: in-process unless isolation is needed (a multi-GPU placement)."""
        from pytest_invarlock.scheduling.placement import cuda_env, placement_devices

        devices = placement_devices(self.state.run_dir, self.state.session, item) if item is not None else None
        mode = self.state.options.certify_mode
        if mode == "auto":
            mode = "subprocess" if devices and len(devices) > 1 else "inprocess"
        return {"mode": mode, "env": cuda_env(devices) if devices and mode == "subprocess" else None}

    def baseline_report(self, model: Model, item: Item | None = None) -> tuple[Path, bool]:
        baseline = self.baseline(model)
        settings = self.settings(model)
        key = digest("baseline-report", baseline.path.name, self._settings_key(settings), self.invarlock_version)

        def build(tmp: Path) -> dict[str, Any]:
            report = self.certifier.run_baseline(baseline.path, tmp, settings, **self.evaluate_options(item))
            return {"report": str(report.relative_to(tmp))}

        artifact = self._once("baseline-report", model.name, lambda: self.store.produce("reports", key, build))
        return artifact.path / self.store.metadata(artifact.path)["report"], artifact.reused

    def calibration(self, model: Model, run: int, item: Item | None = None) -> tuple[Any, Artifact]:
        """One calibration run: the baseline against itself on calibration shard `run`."""
        baseline = self.baseline(model)
        settings = self.settings(model, calibration_run=run)
        key = digest("calibration", baseline.path.name, run, self._settings_key(settings), self.invarlock_version)
        return self._verdict_artifact(key, lambda tmp: self.certifier.certify(
            baseline.path, baseline.path, tmp, settings, edit_label="noop", **self.evaluate_options(item)))

    def _verdict_artifact(self, key: str, evaluate) -> tuple[Any, Artifact]:
        def build(tmp: Path) -> dict[str, Any]:
            verdict = evaluate(tmp)
            if verdict.crashed:  # the pipeline broke: an error of the item, never cached as a verdict
                kept = self.state.run_dir / "logs" / f"crashed-evaluate-{key}.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp / self.certifier.LOG_FILE, kept)
                raise PipelineError(f"{verdict.failure} (full log: {kept})")
            if verdict.report_path:
                verdict = replace(verdict, report_path=str(self.store.path("results", key) / Path(verdict.report_path).relative_to(tmp)))
            write_json_atomic(tmp / RESULT_FILE, verdict.to_dict())
            return {}

        artifact = self.store.produce("results", key, build)
        verdict = self.certifier.Verdict.from_dict(json.loads((artifact.path / RESULT_FILE).read_text()))
        return verdict, artifact

    def preset(self, model: Model) -> tuple[dict[str, Any], Path, bool]:
        """The calibrated preset: calibration runs 1..N (running any that are missing), then the seed's derivation."""
        from pytest_invarlock.campaign.presets import derive_preset

        def make() -> tuple[dict[str, Any], Path, bool]:
            runs = max(1, self.state.suite.runs["calibration"])
            results = [self.calibration(model, run) for run in range(1, runs + 1)]
            stats = []
            for verdict, artifact in results:
                if verdict.report_path is None:
                    raise RuntimeError(f"calibration run of {model.name} produced no report ({verdict.failure}); see {artifact.path}")
                stats.append(self.certifier.calibration_stats(json.loads(Path(verdict.report_path).read_text())))
            base = self.certifier.tier_preset(model.settings.tier)
            key = digest("preset", [a.path.name for _, a in results], base)

            def build(tmp: Path) -> dict[str, Any]:
                preset = derive_preset(stats, base)
                write_json_atomic(tmp / "preset.json", preset)
                import yaml

                (tmp / "preset.yaml").write_text(yaml.safe_dump(preset, sort_keys=True))
                return {"model": model.name, "calibration_runs": runs}

            artifact = self.store.produce("presets", key, build)
            return json.loads((artifact.path / "preset.json").read_text()), artifact.path / "preset.yaml", artifact.reused

        return self._once("preset", model.name, make)

    def edited_model(self, model: Model, scenario: Scenario, item: Item | None = None) -> Artifact:
        """The scenario's edited weights. Edits run where the model fits: on the worker's GPU, or in host
        RAM when the item's placement shards the model over several GPUs."""
        from pytest_invarlock.scheduling.placement import placement_devices

        baseline = self.baseline(model)
        devices = placement_devices(self.state.run_dir, self.state.session, item) if item is not None else None
        device = "cpu" if devices and len(devices) > 1 else self.state.device
        return self._once("edit", f"{model.name}/{scenario.name}",
                          lambda: edit_artifact(model, scenario, baseline, self.store, self.cache, device))

    # ----------------------------------------------------------------- items

    def run(self, item: Item) -> ItemResult:
        started = time.perf_counter()
        if item.benchmark:
            result = self._benchmark(item)
        else:
            result = self._certify(item)
        result.record["seconds"] = round(time.perf_counter() - started, 2)
        result.record["worker"] = self.worker_id
        return result

    def _certify(self, item: Item) -> ItemResult:
        from pytest_invarlock.campaign.presets import edit_preset

        model = item.model
        reused: list[str] = []
        baseline = self.baseline(model)
        if baseline.reused:
            reused.append(f"baseline:{model.name}")
        if item.kind == "calibration":
            verdict, artifact = self.calibration(model, item.run, item)
            preset_path = None
        else:
            preset, preset_path, preset_reused = self.preset(model)
            if preset_reused:
                reused.append(f"preset:{model.name}")
            report, report_reused = self.baseline_report(model, item)
            if report_reused:
                reused.append(f"baseline-report:{model.name}")
            edited = self.edited_model(model, item.scenario, item)
            if edited.reused:
                reused.append(f"edit:{model.name}/{item.scenario.name}")
            spec = parse_spec(item.scenario.spec)
            preset = edit_preset(preset, spec.kind)
            settings = self.settings(model)
            key = digest("certify", baseline.path.name, edited.path.name, preset, self._settings_key(settings),
                         report.parent.name, item.run, self.invarlock_version)
            verdict, artifact = self._verdict_artifact(key, lambda tmp: self.certifier.certify(
                baseline.path, edited.path, tmp, settings, edit_label="custom", preset=preset, baseline_report=report,
                **self.evaluate_options(item)))
        if artifact.reused:
            reused.append(f"result:{item.param_id}")
        judgement = judge(item.scenario, verdict)
        return self._result(item, verdict, judgement, reused, preset_path)

    def _result(self, item: Item, verdict, judgement: Judgement, reused: list[str], preset_path: Path | None) -> ItemResult:
        record = {
            **base_record(item),
            "met": judgement.met,
            "flagged": judgement.flagged,
            "detected": judgement.detected,
            "signal": judgement.signal,
            "overall_pass": verdict.overall_pass,
            "degraded": verdict.degraded,
            "ratio": verdict.ratio_vs_baseline,
            "ci": list(verdict.display_ci) if verdict.display_ci else None,
            "drift": verdict.drift,
            "flags": verdict.flags,
            "failed_gates": list(verdict.failed_gates),
            "failure": verdict.failure,
            "report": verdict.report_path,
            "preset": str(preset_path) if preset_path else None,
            "reused": reused,
        }
        return ItemResult(record, judgement.met, judgement.explanation, junit_properties(record))

    def _benchmark(self, item: Item) -> ItemResult:
        from pytest_invarlock.worker.lm_eval_scoring import run_benchmark

        model = item.model
        baseline = self.baseline(model)
        directory = baseline.path if item.variant == "baseline" else self.edited_model(model, item.scenario, item).path
        suite = self.state.suite
        key = digest("benchmark", directory.name, item.benchmark, suite.benchmarks.num_fewshot, suite.benchmarks.limit)
        loaded = False

        def build(tmp: Path) -> dict[str, Any]:
            nonlocal loaded
            hf_model, tokenizer, loaded = self.cache.get(directory, model.dtype)
            hf_model.to(self.state.device)
            try:
                result = run_benchmark(hf_model, tokenizer, item.benchmark, num_fewshot=suite.benchmarks.num_fewshot,
                                       batch_size=model.settings.lm_eval_batch, limit=suite.benchmarks.limit,
                                       device=self.state.device, offline=self.state.options.offline)
            finally:
                hf_model.to("cpu")
            write_json_atomic(tmp / "benchmark.json", result.to_dict())
            return {}

        artifact = self.store.produce("benchmarks", key, build)
        result = json.loads((artifact.path / "benchmark.json").read_text())
        reused = [f"benchmark:{item.param_id}"] if artifact.reused else []
        accuracy = result["accuracy"]
        met = isinstance(accuracy, (int, float)) and accuracy == accuracy
        record = {**base_record(item), **result, "met": met, "model_loaded_from_disk": loaded, "reused": reused}
        explanation = (f"lm-eval {item.benchmark} on {item.variant}: accuracy {accuracy} (stderr {result['stderr']}, n {result['n']})"
                       + ("" if result["finite_logits"] else "; the model's logits are not finite"))
        return ItemResult(record, met, explanation, junit_properties(record))


def _file_digest(path: Path) -> str:
    stat = path.stat()
    return digest(str(path), stat.st_size, stat.st_mtime_ns)


def _log_to(path: Path) -> None:
    """The worker's run log (model loads, artifacts built): one file per worker, appended across runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)


def _threads_per_worker() -> int:
    """The host's cores shared out between xdist workers, so two workers do not fight over each core."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def apply_determinism(mode: str, device: str) -> None:
    """The seed's modes: throughput (TF32, cuDNN benchmark) or strict (off, deterministic cuBLAS)."""
    if device != "cuda":
        return
    if mode == "strict":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":32768:8")
    import torch

    strict = mode == "strict"
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = not strict
