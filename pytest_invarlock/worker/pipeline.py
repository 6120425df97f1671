"""Worker side: turn one item into a verdict, reusing every artifact the run directory already has.

One `Worker` per pytest process (per xdist worker). Its methods are the fixtures' bodies:
`baseline(model)`, `baseline_report(model)`, `preset(model)` (which runs missing calibration runs
itself, e.g. after `-k` deselected them), `edited_model(item)`, `certify(item)`, `benchmark(item)`.
Each product is content-addressed in the store (see `store`), produced once under a file lock and
reused by every worker and by the next run. Imports torch (through `models`) only when needed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.items import Item
from pytest_invarlock.campaign.judging import Judgement, judge
from pytest_invarlock.campaign.suite import Model, Scenario
from pytest_invarlock.edits.catalogue import parse_spec
from pytest_invarlock.records import base_record, junit_properties
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import Artifact, StoreError, digest, disk_full_message, is_disk_full, write_json_atomic
from pytest_invarlock.worker import execution, probes
from pytest_invarlock.worker.artifacts import ModelCache, baseline_artifact, default_cache_bytes, edit_artifact

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
        from pytest_invarlock.worker import certifier  # imports invarlock: worker side only

        self.certifier = certifier
        self.state = state
        self.store = state.store
        self.worker_id = worker_id
        self.cache = ModelCache(execution.cache_budget_bytes(state, default_cache_bytes()))
        self.stats = execution.ItemStats()  # the running item's retries and placement (execution.py)
        self._item: Item | None = None  # the running item: shared work it triggers runs on its placement
        self._item_deadline: float | None = None
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
        return self._once(
            "baseline", model.name, lambda: baseline_artifact(model, self.store, offline=self.state.options.offline)
        )

    def window_pool(self, model: Model):
        """The local corpus (or the suite's `eval_data`) packed into full windows for the model's tokenizer."""
        from pytest_invarlock.worker import windows

        baseline = self.baseline(model)
        identity, documents = _evaluation_text(model)
        return self._once(
            "window-pool",
            model.name,
            lambda: windows.pool(self.store, baseline.path, identity, documents, seq_len=model.settings.seq_len),
        )

    def window_plan(self, model: Model):
        """The model's window counts: planned (`windows: auto`) or assessed from a pilot pass of the baseline;
        written to state/window_plan.json; explicit counts that are underpowered warn with the numbers."""
        import warnings

        from pytest_invarlock.campaign.window_planner import UnderpoweredWindows
        from pytest_invarlock.worker import windows

        def make():
            source, baseline = self.window_pool(model), self.baseline(model)
            with self._baseline_on_device(model) as load:
                pilot = windows.pilot(self.store, source, baseline.path.name, load, self.state.device)
            runs = max((self.state.suite.runs_for(s) for s in self.state.suite.scenarios), default=1)
            plan = windows.plan(model.settings, pilot, source.windows, runs)
            windows.record_plan(self.state.run_dir, model.name, plan)
            log.info("window plan of %s: %s", model.name, plan.summary())
            if plan.underpowered:
                warnings.warn(
                    UnderpoweredWindows(
                        f"{model.name}: {plan.preview_n}+{plan.final_n} windows are underpowered: "
                        + "; ".join(plan.problems)
                        + f" [{plan.summary()}]"
                    ),
                    stacklevel=2,
                )
            return plan

        return self._once("window-plan", model.name, make)

    def windows(self, model: Model, run: int):
        """Run `run`'s evaluation windows of a local-corpus model: its own random draw from the packed pool."""
        from pytest_invarlock.worker import windows

        plan = self.window_plan(model)

        def score(ids):
            with self._baseline_on_device(model) as load:
                return windows.window_nll(load(), ids, self.state.device)

        return self._once(
            "windows",
            f"{model.name}/{run}",
            lambda: windows.draw(
                self.store,
                self.window_pool(model),
                plan.preview_n,
                plan.final_n,
                run,
                weights=self.baseline(model).path.name,
                score=score,
            ),
        )

    @contextlib.contextmanager
    def _baseline_on_device(self, model: Model):
        """A loader of the cached baseline on the worker's device (for the pilot and the draws' difficulty scores);
        on a GPU the model goes back to host memory afterwards, leaving the GPU to the evaluates."""
        path, dtype = self.baseline(model).path, self.certifier.evaluation_dtype(model.dtype, self.state.device)

        def load():
            return self.cache.get(path, dtype)[0].to(self.state.device)

        try:
            yield load
        finally:
            if self.state.device != "cpu":
                self.cache.get(path, dtype)[0].to("cpu")

    def window_fields(self, model: Model, run: int) -> dict[str, Any]:
        """What a record stores about run `run`'s windows and seeds (Phase 0 dedupes on weights + window_digest)."""
        from pytest_invarlock.worker.windows import bootstrap_seed

        fields: dict[str, Any] = {"bootstrap_seed": bootstrap_seed(run)}
        if model.settings.dataset == "local":
            return {**fields, **self.windows(model, run).record_fields()}
        return {**fields, "window_digest": None, "window_seed": 41 + run}  # the hub provider draws by seed

    def settings(self, model: Model, *, calibration_run: int | None = None, run: int | None = None):
        """InvarLock settings of one evaluate. Run k (calibration or not) draws its own windows: a random block of
        the packed local corpus (worker.windows), or the hub dataset's seed 41 + k as the seed suite; its own
        bootstrap seed too."""
        from pytest_invarlock.worker.windows import bootstrap_seed

        s = model.settings
        run = calibration_run or run or 1
        dataset_file, seed, preview_n, final_n = None, 41 + run, s.preview_windows, s.final_windows
        if s.dataset == "local":
            draw = self.windows(model, run)
            dataset_file, preview_n, final_n = draw.dataset_file, draw.preview_n, draw.final_n
        return self.certifier.EvaluateSettings(
            dataset_file=dataset_file,
            hub_dataset=s.dataset,
            seed=seed,
            bootstrap_seed=bootstrap_seed(run),
            dtype=self.certifier.evaluation_dtype(model.dtype, self.state.device),
            seq_len=s.seq_len,
            stride=s.seq_len if calibration_run is not None else s.stride,  # the seed: no window overlap in calibration
            preview_n=preview_n,
            final_n=final_n,
            bootstrap_replicates=s.bootstrap_replicates,
            tier=s.tier,
            acceptance_range=(s.acceptance_min, s.acceptance_max),
            device=self.state.device,
            threads=_threads_per_worker(),
            measure_guard_overhead=s.guard_overhead,
            min_tokens=s.min_tokens,
            guard_order=s.guard_order,
            snapshot_mode=s.snapshot_mode,
        )

    def _settings_key(self, settings) -> dict[str, Any]:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items() if k != "threads"}
        if settings.dataset_file is not None:
            data["dataset_sha"] = _file_digest(settings.dataset_file)
        return data

    def evaluate_options(self, item: Item | None) -> dict[str, Any]:
        """How to run evaluate for an item: in-process unless isolation is needed (a multi-GPU placement)."""
        from pytest_invarlock.scheduling.device_map import load_kwargs
        from pytest_invarlock.scheduling.placement import cuda_env

        item = item or self._item
        plan = execution.item_device_plan(self.state, item) if item is not None else None
        devices = list(plan.devices) if plan else None
        mode = self.state.options.certify_mode
        if mode == "auto":
            mode = "subprocess" if plan and plan.multi_gpu else "inprocess"
        options: dict[str, Any] = {
            "mode": mode,
            "env": cuda_env(devices) if devices and mode == "subprocess" else None,
            "load_kwargs": load_kwargs(plan) if mode == "subprocess" else {},
        }
        if mode == "subprocess" and self._item_deadline is not None:  # in-process work is bounded by run()'s deadline
            options["timeout_s"] = max(1.0, round(self._item_deadline - time.monotonic(), 1))
        return options

    def baseline_report(self, model: Model, item: Item | None = None) -> tuple[Path, bool]:
        """The baseline's own report on the item's run's windows (InvarLock checks the window plan strictly)."""
        baseline = self.baseline(model)
        run = item.run if item is not None else 1
        settings = self.settings(model, run=run)
        if settings == self.settings(model, calibration_run=run):
            # A baseline report is the source side of a no-op evaluate of the baseline on these windows, which is
            # exactly calibration run `run`: reuse it (or make it, at run_baseline's cost) instead of a second one.
            verdict, artifact = self._once("calibration-run", f"{model.name}/{run}", lambda: self.calibration(model, run, item))
            reports = sorted((artifact.path / "runs" / "source").glob("*/report.json"))
            if verdict.failure is None and reports:
                return reports[-1], artifact.reused
        key = digest("baseline-report", baseline.path.name, self._settings_key(settings), self.invarlock_version)

        def build(tmp: Path) -> dict[str, Any]:
            report = self.certifier.run_baseline(baseline.path, tmp, settings, **self.evaluate_options(item))
            return {"report": str(report.relative_to(tmp))}

        artifact = self._once("baseline-report", f"{model.name}/{run}", lambda: self.store.produce("reports", key, build))
        return artifact.path / self.store.metadata(artifact.path)["report"], artifact.reused

    def calibration(self, model: Model, run: int, item: Item | None = None) -> tuple[Any, Artifact]:
        """One calibration run: the baseline against itself on run `run`'s windows."""
        baseline = self.baseline(model)
        settings = self.settings(model, calibration_run=run)
        key = digest("calibration", baseline.path.name, run, self._settings_key(settings), self.invarlock_version)
        return self._verdict_artifact(
            key,
            lambda tmp: self.certifier.certify(
                baseline.path, baseline.path, tmp, settings, edit_label="noop", **self.evaluate_options(item)
            ),
        )

    def _verdict_artifact(self, key: str, evaluate, after=None) -> tuple[Any, Artifact]:
        """One evaluate's verdict, stored under `key`; `after(tmp, verdict)` adds files (a probe sidecar) to it."""

        def build(tmp: Path) -> dict[str, Any]:
            verdict = execution.evaluate_with_oom_retries(evaluate, tmp, self.certifier.LOG_FILE, self._item, self.stats)
            if verdict.crashed:  # the pipeline broke: an error of the item, never cached as a verdict
                if _log_says_disk_full(tmp / self.certifier.LOG_FILE):  # InvarLock could not write its outputs
                    raise StoreError(disk_full_message(tmp))
                kept = self.state.run_dir / "logs" / f"crashed-evaluate-{key}.log"
                kept.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(tmp / self.certifier.LOG_FILE, kept)
                raise PipelineError(f"{verdict.failure} (full log: {kept})")
            if verdict.report_path:
                verdict = replace(
                    verdict, report_path=str(self.store.path("results", key) / Path(verdict.report_path).relative_to(tmp))
                )
            if after is not None:
                after(tmp, verdict)
            write_json_atomic(tmp / RESULT_FILE, verdict.to_dict())
            return {}

        artifact = self.store.produce("results", key, build)
        verdict = self.certifier.Verdict.from_dict(json.loads((artifact.path / RESULT_FILE).read_text()))
        return verdict, artifact

    def preset(self, model: Model) -> tuple[dict[str, Any], Path, bool]:
        """The calibrated preset: calibration runs 1..N (running any that are missing), then the seed's derivation."""
        from pytest_invarlock.campaign.presets import derive_preset

        def make() -> tuple[dict[str, Any], Path, bool]:
            if self.state.suite.calibration_preset is not None:  # reused from another run (--preset-dir/--preset-file)
                from pytest_invarlock.campaign.presets import reused_preset

                path, preset = reused_preset(self.state.suite.calibration_preset, model.name)
                return preset, path, True
            runs = max(1, calibration_runs(self.state.suite))
            results = [self.calibration(model, run) for run in range(1, runs + 1)]
            stats = []
            for verdict, artifact in results:
                if verdict.report_path is None:
                    raise RuntimeError(
                        f"calibration run of {model.name} produced no report ({verdict.failure}); see {artifact.path}"
                    )
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
        return self._once(
            "edit",
            f"{model.name}/{scenario.name}",
            lambda: edit_artifact(model, scenario, baseline, self.store, self.cache, device),
        )

    # ----------------------------------------------------------------- items

    def run(self, item: Item) -> ItemResult:
        """One item under its suite time limit, with OOM retries; an error carries its record (`ItemError.record`)."""
        from pytest_invarlock.worker.resources import ItemTimeout, deadline, release_memory, timeout_note

        started, warned = time.perf_counter(), len(self.store.warnings)
        limit = self.state.suite.timeout_s(item.kind, item.model)
        self._item, self._item_deadline = item, time.monotonic() + limit
        plan = execution.item_device_plan(self.state, item)
        self.stats = execution.ItemStats(
            placement=list(plan.devices) if plan else None,
            device_plan_gb=list(plan.max_memory_gb) if plan and plan.multi_gpu else None,
        )
        failure: str | None = None
        try:
            with deadline(limit, f"{item.kind} item {item.param_id}", note=timeout_note(self.state.run_dir, item.param_id)):
                with self.certifier.interrupts_kept():  # a Ctrl-C swallowed by torch/InvarLock still stops the session
                    result = self._benchmark(item) if item.benchmark else self._certify(item)
        except ItemTimeout as timeout:
            failure = f"{timeout} (the suite's limit for {item.kind} items of size class {item.model.size_class})"
        except (PipelineError, execution.ItemError) as error:
            failure = str(error)
        finally:
            self._item, self._item_deadline = None, None
            release_memory()
        if failure is not None:
            extra = {
                "seconds": round(time.perf_counter() - started, 2),
                "worker": self.worker_id,
                "timeout_s": limit,
                "timed_out": "timed out after" in failure,
                **execution.memory_fields(self.cache),
            }
            log.error("item %s: %s", item.param_id, failure)
            raise execution.ItemError(failure, execution.error_record(item, failure, self.stats, extra))
        result.record.update({**self.stats.fields(), **execution.memory_fields(self.cache), "timeout_s": limit})
        result.record["seconds"] = round(time.perf_counter() - started, 2)
        result.record["worker"] = self.worker_id
        if self.store.warnings[warned:]:  # damaged artifacts found and rebuilt: the controller prints them
            result.record["store_warnings"] = self.store.warnings[warned:]
        return result

    def _certify(self, item: Item) -> ItemResult:
        from pytest_invarlock.campaign.presets import edit_preset

        model = item.model
        reused: list[str] = []
        baseline = self.baseline(model)
        if baseline.reused:
            reused.append(f"baseline:{model.name}")
        extra: dict[str, Any] = {"weights": baseline.path.name, "revision": model.revision}
        if item.kind == "calibration":
            verdict, artifact = self.calibration(model, item.run, item)
            preset_path = None
            if item.run >= calibration_runs(self.state.suite):
                # The last calibration run derives the preset (pure math over the runs' reports), so a
                # --calibrate-only session leaves it in the store; runs still missing are made here.
                try:
                    preset_path = self.preset(model)[1]
                except (RuntimeError, ValueError) as exc:
                    extra["preset_error"] = str(exc)
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
            extra["weights"] = edited.path.name
            spec = parse_spec(item.scenario.spec)
            preset = edit_preset(preset, spec.kind)
            settings = self.settings(model, run=item.run)
            key = digest(
                "certify",
                baseline.path.name,
                edited.path.name,
                preset,
                self._settings_key(settings),
                report.parent.name,
                item.run,
                self.invarlock_version,
            )
            sidecar = probes.probe_file(spec.kind)
            if sidecar:  # its probe is part of the result
                key = digest(key, "probe", probes.VERSION)
            verdict, artifact = self._verdict_artifact(
                key,
                lambda tmp: self.certifier.certify(
                    baseline.path,
                    edited.path,
                    tmp,
                    settings,
                    edit_label="custom",
                    preset=preset,
                    baseline_report=report,
                    **self.evaluate_options(item),
                ),
                after=(lambda tmp, _: self._probe(spec.kind, model, baseline.path, edited.path, report, preset, tmp / sidecar))
                if sidecar
                else None,
            )
            if sidecar:
                probe = json.loads((artifact.path / sidecar).read_text())
                extra.update(probe=probe, probe_file=str(artifact.path / sidecar), probe_signal=probes.signal(probe))
        if artifact.reused:
            reused.append(f"result:{item.param_id}")
        extra.update(self.window_fields(model, item.run))
        judgement = judge(item.scenario, verdict, bool(extra.get("probe_signal")))
        return self._result(item, verdict, judgement, reused, preset_path, extra)

    def _probe(self, kind: str, model: Model, baseline: Path, edited: Path, report: Path, preset, out: Path) -> None:
        """Write the probe sidecar of an informational injection (worker.probes) on fresh copies of both models."""
        from transformers import AutoModelForCausalLM

        from pytest_invarlock.worker.artifacts import _torch_dtype

        dtype = _torch_dtype(self.certifier.evaluation_dtype(model.dtype, self.state.device))
        loaded = [
            AutoModelForCausalLM.from_pretrained(str(p), dtype=dtype).eval().to(self.state.device) for p in (baseline, edited)
        ]
        try:
            probe = probes.run(
                kind,
                self.certifier,
                baseline_model=loaded[0],
                subject_model=loaded[1],
                report_path=report,
                preset=preset,
                tier=model.settings.tier,
            )
        finally:
            del loaded
        write_json_atomic(out, probe)

    def _result(
        self,
        item: Item,
        verdict,
        judgement: Judgement,
        reused: list[str],
        preset_path: Path | None,
        extra: dict[str, Any] | None = None,
    ) -> ItemResult:
        record = {
            **base_record(item),
            "invalid": verdict.invalid,
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
            "caps_applied": verdict.spectral_caps_applied,  # the spectral guard remediated (report heatmap)
            "policy_thresholds_hash": verdict.policy_thresholds_hash,  # analysis/policy_digest_summary.json
            "policy_changed": verdict.policy_changed,
            "determinism_level": verdict.determinism_level,  # analysis/determinism_summary.json
            "failure": verdict.failure,
            "report": verdict.report_path,
            "preset": str(preset_path) if preset_path else None,
            "reused": reused,
            **(extra or {}),  # weights: the store key of the evaluated weights; revision: the pinned commit
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
            plan = execution.item_device_plan(self.state, item)
            if plan is not None and plan.multi_gpu:  # this process sees only its home GPU: score in a child that sees all
                loaded = True
                score = lambda batch: self._score_placed(item, directory, plan, batch, tmp)  # noqa: E731
            else:
                hf_model, tokenizer, loaded = self.cache.get(directory, model.dtype)

                def score(batch):
                    hf_model.to(self.state.device)
                    try:
                        return run_benchmark(
                            hf_model,
                            tokenizer,
                            item.benchmark,
                            num_fewshot=suite.benchmarks.num_fewshot,
                            batch_size=batch,
                            limit=suite.benchmarks.limit,
                            device=self.state.device,
                            offline=self.state.options.offline,
                        )
                    finally:
                        hf_model.to("cpu")

            result = execution.benchmark_with_oom_retries(score, model.settings.lm_eval_batch, item, self.stats)
            write_json_atomic(tmp / "benchmark.json", result.to_dict())
            return {}

        artifact = self.store.produce("benchmarks", key, build)
        result = json.loads((artifact.path / "benchmark.json").read_text())
        reused = [f"benchmark:{item.param_id}"] if artifact.reused else []
        accuracy = result["accuracy"]
        met = isinstance(accuracy, (int, float)) and accuracy == accuracy and bool(result.get("finite_logits", True))
        record = {
            **base_record(item),
            **result,
            "met": met,
            "model_loaded_from_disk": loaded,
            "reused": reused,
            "weights": directory.name,
            "revision": model.revision,
        }
        explanation = (
            f"lm-eval {item.benchmark} on {item.variant}: accuracy {accuracy} (stderr {result['stderr']}, n {result['n']})"
            + ("" if result["finite_logits"] else "; the model's logits are not finite")
        )
        return ItemResult(record, met, explanation, junit_properties(record))

    def _score_placed(self, item: Item, directory: Path, plan, batch, tmp: Path):
        """lm-eval in a child process that sees exactly the placed GPUs and loads with their device map."""
        from pytest_invarlock.scheduling.device_map import load_kwargs
        from pytest_invarlock.scheduling.placement import cuda_env
        from pytest_invarlock.worker.lm_eval_scoring import BenchmarkOutOfMemory, run_benchmark_subprocess

        suite = self.state.suite
        remaining = None if self._item_deadline is None else max(1.0, self._item_deadline - time.monotonic())
        try:
            result, load = run_benchmark_subprocess(
                directory,
                item.model.dtype,
                item.benchmark,
                num_fewshot=suite.benchmarks.num_fewshot,
                batch_size=batch,
                limit=suite.benchmarks.limit,
                load_kwargs=load_kwargs(plan),
                env=cuda_env(list(plan.devices)),
                workdir=tmp / "subprocess",
                offline=self.state.options.offline,
                timeout_s=remaining,
            )
        except TimeoutError as error:
            raise PipelineError(str(error)) from None
        except BenchmarkOutOfMemory:  # benchmark_with_oom_retries halves the batch and calls again
            raise
        self.stats.device_map_devices = load["devices"]
        return result


def _evaluation_text(model: Model):
    """(identity, documents) of the text a local-corpus model is evaluated on: its `eval_data`, else the held-out KJV."""
    from functools import partial

    from pytest_invarlock.campaign import eval_data

    if model.settings.eval_data:
        path, field = Path(model.settings.eval_data), model.settings.eval_text_field
        return eval_data.identity(path, field), partial(eval_data.documents, path, field)
    from pytest_invarlock.assets.tiny_model import heldout_documents, heldout_identity

    return heldout_identity(), heldout_documents


def _log_says_disk_full(log_file: Path) -> bool:
    try:
        text = log_file.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return is_disk_full(OSError(text[-20000:])) or "ENOSPC" in text


_CONTENT_DIGESTS: dict[tuple[str, int, int], str] = {}


def _file_digest(path: Path) -> str:
    """sha256 of the file's bytes (memoised per path, size and mtime): a copied or touched corpus keeps
    its digest, and an edited one changes it."""
    import hashlib

    stat = path.stat()
    memo = (str(path), stat.st_size, stat.st_mtime_ns)
    if memo not in _CONTENT_DIGESTS:
        sha = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        _CONTENT_DIGESTS[memo] = sha.hexdigest()
    return _CONTENT_DIGESTS[memo]


def calibration_runs(suite) -> int:
    """Calibration runs of a model: the calibration scenario's own run count (suite default otherwise)."""
    scenario = next((s for s in suite.scenarios if s.kind == "calibration"), None)
    return suite.runs_for(scenario) if scenario is not None else int(suite.runs["calibration"])


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
