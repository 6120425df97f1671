"""Worker side: turn one item into a verdict, reusing every artifact the run directory already has.

One `Worker` per pytest process (per xdist worker). `run(item)` turns one test item into its result (a
certificate or a benchmark score); `baseline(model)`, `preset(model)` (which runs missing calibration runs
itself, e.g. after `-k` deselected them) and `edited_model(model, scenario)` are the bodies of the
`invarlock_baseline/preset/edited_model` fixtures. Each product is content-addressed in the store (see
`store`), produced once under a file lock and reused by every worker and by the next run. torch,
InvarLock (`worker.certifier`) and lm-eval (`worker.lm_eval_scoring`) are imported only where used.

Shared work (a model's baseline and evaluation windows, each calibration run, the preset, each edit)
runs through `_shared`: under its own time limit (the item's clock is paused meanwhile), and when it
fails for good its failure goes to the session's failure memory (`failure_memory`), so every item
that needed it fails at once naming the item that failed first and the cause, and nobody reruns it
in this session. Edited weights are made only when a certificate or score has to be computed, held
in use while read, and may be evicted and rebuilt later (`edit_lifecycle`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_invarlock.campaign.failures import TRANSIENT_RETRIES, ErrorClass, Failure, Scope, classify, spec_of
from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.campaign.judging import Judgement, judge
from pytest_invarlock.campaign.suite.definitions import Model, Scenario, Suite
from pytest_invarlock.edit_lifecycle import read_needs
from pytest_invarlock.edits.catalogue import parse_spec
from pytest_invarlock.failure_memory import FailureMemory
from pytest_invarlock.records import base_record, junit_properties
from pytest_invarlock.scheduling.disk_plan import default_headroom, gb
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import (
    Artifact,
    StoreError,
    content_sha256,
    digest,
    disk_full_message,
    existing_ancestor,
    human_bytes,
    is_disk_full,
    verify,
    write_json_atomic,
)
from pytest_invarlock.worker import execution, probes, provenance
from pytest_invarlock.worker.artifacts import (
    ModelCache,
    baseline_artifact,
    default_cache_bytes,
    edit_artifact,
    edit_bytes,
    edit_key,
)
from pytest_invarlock.worker.resources import remaining_s

if TYPE_CHECKING:  # annotations only: at run time these load where used (certifier imports InvarLock, nn torch)
    from torch import nn

    from pytest_invarlock.campaign.window_planner import WindowPlan
    from pytest_invarlock.scheduling.device_map import DevicePlan
    from pytest_invarlock.worker.certifier import EvaluateSettings, Verdict
    from pytest_invarlock.worker.lm_eval_scoring import BenchmarkResult
    from pytest_invarlock.worker.windows import Pool, WindowDraw

log = logging.getLogger("pytest_invarlock")
RESULT_FILE = "verdict.json"


GIB = 2**30
RESULT_ALLOWANCE = 2 * 2**20  # what one certificate or score adds to the disk, at least (preflight's figure)
DISK_POLL_S = 15.0
DISK_NOTICE_S = 300.0


class PipelineError(RuntimeError):
    """The validation pipeline itself broke (not InvarLock's verdict); the item is an error, not a failure."""


class DependencyFailed(PipelineError):
    """Shared work this item needs failed in this session (`failure`); it is not run again."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def describe(error: BaseException) -> str:
    """An error and its causes as one line of text: what classification and messages read."""
    parts, seen = [], 0
    current: BaseException | None = error
    while current is not None and seen < 5:
        parts.append(f"{type(current).__name__}: {current}".strip())
        current, seen = current.__cause__ or current.__context__, seen + 1
    return " <- ".join(parts)[:2000]


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


CERTIFICATE_PACKAGES = ("invarlock", "torch", "transformers")  # what computes a certificate (and a baseline report)
SCORE_PACKAGES = ("lm-eval", "torch", "transformers")  # what computes a benchmark score


def _computed_by(state: ConfigState, packages: tuple[str, ...]) -> dict[str, str]:
    """The part of a certificate's or score's cache key that is not its input: the determinism mode in effect
    (TF32 and cuDNN autotuning change GPU numerics; on CPU it changes nothing) and the versions of `packages`."""
    from importlib.metadata import version

    return {"determinism": state.options.determinism if state.device == "cuda" else "cpu"} | {
        name: version(name) for name in packages
    }


class Worker:
    def __init__(self, state: ConfigState, worker_id: str, *, scheduled: bool = False) -> None:
        """`scheduled`: the GPU scheduler sends this worker its items (it may give one back for more GPUs)."""
        from pytest_invarlock.worker import certifier  # imports invarlock: worker side only

        self.certifier = certifier
        self.state = state
        self.store = state.store
        self.worker_id = worker_id
        self.scheduled = scheduled
        self.cache = ModelCache(execution.cache_budget_bytes(state, default_cache_bytes()))
        self.stats = execution.ItemStats()  # the running item's retries and placement (execution.py)
        self.failures = FailureMemory(state.run_dir, state.session)
        self._item: SuiteItem | None = None  # the running item: shared work it triggers runs on its placement
        self._last_attempt = True  # whether a transient failure now is final (the item's retries are spent)
        self._holds = contextlib.ExitStack()  # artifacts the running item holds in use (closed when it ends)
        self._session_holds = contextlib.ExitStack()  # those fixtures handed out outside items: held until exit
        self.environment = provenance.environment(state.device)  # versions, host, device, driver: in every record
        self._memo: dict[tuple[str, str], Any] = {}
        apply_determinism(state.options.determinism, state.device)
        _log_to(state.run_dir / "logs" / f"{worker_id}.log")
        import torch

        torch.set_num_threads(_threads_per_worker())

    # ----------------------------------------------------------------- shared artifacts

    def _once[T](self, kind: str, name: str, make: Callable[[], T]) -> T:
        """Memoise per worker process; the store already makes it once per run directory."""
        key = (kind, name)
        if key not in self._memo:
            self._memo[key] = make()
        made: T = self._memo[key]
        return made

    def limit_s(self, kind: str, model: Model) -> float:
        """The time limit of `kind` work on `model` (campaign.time_limits; the command line's exact figures win)."""
        from pytest_invarlock.scheduling.tasks import model_profile

        return self.state.suite.timeout_s(
            kind, model, weights_gb=model_profile(model).weights_gb, command_line=self.state.options.limits.timeouts
        )

    def weights_digest(self, model: Model) -> str:
        """The content digest of the baseline's files (``artifacts.weights_digest``): what every record's weights derive from."""
        return str(self.store.metadata(self.baseline(model).path)["weights_digest"])

    @contextlib.contextmanager
    def _shared(self, scope: Scope, model: Model, kind: str, what: str, detail: str = "") -> Iterator[None]:
        """Shared work: refused at once if it already failed in this session; run under its own time limit (the
        item's clock paused); a failure that is not transient (or is, with the item's retries spent) is remembered."""
        from pytest_invarlock.worker.resources import ItemTimeout, deadline

        known = self.failures.find(scope, model.name, detail)
        if known is not None:
            raise DependencyFailed(known)
        started = time.perf_counter()
        try:
            with deadline(self.limit_s(kind, model), f"{what} ({kind} limit)"):
                yield
        except DependencyFailed:
            raise
        except (Exception, ItemTimeout) as error:
            cause = describe(error)
            error_class = ErrorClass.PERMANENT if isinstance(error, ItemTimeout) else classify(cause)
            if error_class in (ErrorClass.OOM, ErrorClass.DISK_FULL) or (
                error_class == ErrorClass.TRANSIENT and not self._last_attempt
            ):
                raise  # not the work's fault for good: the item retries it or ends on its own
            item = self._item.param_id if self._item is not None else f"(outside an item, {self.worker_id})"
            failure = self.failures.record(Failure(scope, model.name, item, cause, error_class, detail))
            log.error("%s failed: %s", failure.what, failure.cause)
            raise DependencyFailed(failure) from error
        finally:
            self.stats.shared_s[kind] = self.stats.shared_s.get(kind, 0.0) + time.perf_counter() - started

    def baseline(self, model: Model) -> Artifact:
        """The model's baseline: its source (downloaded or built, charged to the download limit), whose weights
        must be whole before any item loads them."""

        def make() -> Artifact:
            with self._shared(Scope.BASELINE, model, "download", f"baseline of {model.name}"):
                return baseline_artifact(model, self.store, offline=self.state.options.offline)

        return self._once("baseline", model.name, make)

    def window_pool(self, model: Model) -> Pool:
        """The local corpus (or the suite's `eval_data`) packed into full windows for the model's tokenizer."""
        from pytest_invarlock.worker import windows

        baseline = self.baseline(model)
        identity, documents = _evaluation_text(model)

        def make() -> Pool:
            with self._shared(Scope.BASELINE, model, "prepare", f"evaluation windows of {model.name}"):
                return windows.pool(self.store, baseline.path, identity, documents, seq_len=model.settings.seq_len)

        return self._once("window-pool", model.name, make)

    def window_plan(self, model: Model) -> WindowPlan:
        """The model's window counts: planned (`windows: auto`) or assessed from a pilot pass of the baseline;
        written to state/window_plan.json; explicit counts that are underpowered warn with the numbers."""
        import warnings

        from pytest_invarlock.campaign.window_planner import UnderpoweredWindows
        from pytest_invarlock.worker import windows

        def make() -> WindowPlan:
            source, baseline = self.window_pool(model), self.baseline(model)
            with self._shared(Scope.BASELINE, model, "prepare", f"pilot pass of {model.name}"):
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

    def windows(self, model: Model, run: int) -> WindowDraw:
        """Run `run`'s evaluation windows of a local-corpus model: its own random draw from the packed pool."""
        from pytest_invarlock.worker import windows

        plan = self.window_plan(model)

        def score(ids: Sequence[Sequence[int]]) -> list[float]:
            with self._baseline_on_device(model) as load:
                return windows.window_nll(load(), ids, self.state.device)

        def make() -> WindowDraw:
            pool, weights = self.window_pool(model), self.baseline(model).path.name
            with self._shared(Scope.BASELINE, model, "prepare", f"windows of run {run} of {model.name}"):
                return windows.draw(self.store, pool, plan.preview_n, plan.final_n, run, weights=weights, score=score)

        return self._once("windows", f"{model.name}/{run}", make)

    @contextlib.contextmanager
    def _baseline_on_device(self, model: Model) -> Iterator[Callable[[], nn.Module]]:
        """A loader of the cached baseline on the worker's device (for the pilot and the draws' difficulty scores);
        on a GPU the model goes back to host memory afterwards, leaving the GPU to the evaluates."""
        path, dtype = self.baseline(model).path, self.certifier.evaluation_dtype(model.dtype, self.state.device)

        def load() -> nn.Module:
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

    def settings(self, model: Model, *, calibration_run: int | None = None, run: int | None = None) -> EvaluateSettings:
        """InvarLock settings of one evaluate. Run k (calibration or not) draws its own windows: a random block of
        the packed local corpus (worker.windows), or the hub dataset's seed 41 + k as in the B200 bash harness; its own
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
            stride=s.seq_len if calibration_run is not None else s.stride,  # as the B200 harness: no overlap in calibration
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

    def _settings_key(self, settings: EvaluateSettings) -> dict[str, Any]:
        data = {k: str(v) if isinstance(v, Path) else v for k, v in vars(settings).items() if k != "threads"}
        if settings.dataset_file is not None:
            data["dataset_sha"] = content_sha256(settings.dataset_file)
        return data

    def evaluate_options(self, item: SuiteItem | None) -> dict[str, Any]:
        """How to run evaluate for an item: in-process unless isolation is needed (a multi-GPU placement)."""
        from pytest_invarlock.scheduling.device_map import load_kwargs
        from pytest_invarlock.scheduling.placement import cuda_env

        item = item or self._item
        # On a CPU run (a --gpus simulation of a node) the placement is recorded but the model loads whole here.
        plan = execution.item_device_plan(self.state, item) if item is not None and self.state.device == "cuda" else None
        devices = list(plan.devices) if plan else None
        mode = self.state.options.certify_mode
        if mode == "auto":
            mode = "subprocess" if plan and plan.multi_gpu else "inprocess"
        options: dict[str, Any] = {
            "mode": mode,
            "env": cuda_env(devices, self.state.gpus) if devices and mode == "subprocess" else None,
            "load_kwargs": load_kwargs(plan) if mode == "subprocess" else {},
            "online": not self.state.options.offline,
        }
        left = remaining_s()
        if mode == "subprocess" and left is not None:  # in-process work is bounded by the active deadline itself
            options["timeout_s"] = max(1.0, round(left, 1))
        return options

    def baseline_report(self, model: Model, item: SuiteItem | None = None) -> tuple[Path, bool]:
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
        key = digest(
            "baseline-report", baseline.path.name, self._settings_key(settings), _computed_by(self.state, CERTIFICATE_PACKAGES)
        )

        def build(tmp: Path) -> dict[str, Any]:
            report = self.certifier.run_baseline(baseline.path, tmp, settings, **self.evaluate_options(item))
            return {"report": str(report.relative_to(tmp))}

        def make() -> Artifact:
            with self._shared(Scope.BASELINE, model, "calibration", f"baseline report of run {run} of {model.name}"):
                return self.store.produce("reports", key, build)

        artifact = self._once("baseline-report", f"{model.name}/{run}", make)
        return artifact.path / self.store.metadata(artifact.path)["report"], artifact.reused

    def calibration(self, model: Model, run: int, item: SuiteItem | None = None) -> tuple[Verdict, Artifact]:
        """One calibration run: the baseline against itself on run `run`'s windows. Shared work (the preset and
        run `run`'s baseline report need it): an evaluate that cannot load the baseline fails the baseline."""
        baseline = self.baseline(model)
        settings = self.settings(model, calibration_run=run)
        key = digest(
            "calibration", baseline.path.name, run, self._settings_key(settings), _computed_by(self.state, CERTIFICATE_PACKAGES)
        )
        with self._shared(Scope.CALIBRATION, model, "calibration", f"calibration run {run} of {model.name}", str(run)):
            try:
                return self._verdict_artifact(
                    key,
                    lambda tmp: self.certifier.certify(
                        baseline.path, baseline.path, tmp, settings, edit_label="noop", **self.evaluate_options(item)
                    ),
                )
            except PipelineError as error:
                left = remaining_s()  # a load our own time limit interrupted is the limit's, not the baseline's
                interrupted = left is not None and left <= 0
                if interrupted or "MODEL-LOAD-FAILED" not in str(error) or classify(str(error)) != ErrorClass.PERMANENT:
                    raise
                who = self._item.param_id if self._item is not None else self.worker_id
                raise DependencyFailed(self.failures.record(Failure(Scope.BASELINE, model.name, who, str(error)))) from error

    def _verdict_artifact(
        self,
        key: str,
        evaluate: Callable[[Path], Verdict],
        after: Callable[[Path, Verdict], None] | None = None,
    ) -> tuple[Verdict, Artifact]:
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
        """The calibrated preset: calibration runs 1..N (running any that are missing), then the B200 bash harness's derivation."""
        from pytest_invarlock.campaign.presets import DERIVATION_VERSION, derive_preset

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
            key = digest("preset", [a.path.name for _, a in results], base, DERIVATION_VERSION)

            def build(tmp: Path) -> dict[str, Any]:
                preset = derive_preset(stats, base)
                write_json_atomic(tmp / "preset.json", preset)
                import yaml

                (tmp / "preset.yaml").write_text(yaml.safe_dump(preset, sort_keys=True))
                return {"model": model.name, "calibration_runs": runs}

            artifact = self.store.produce("presets", key, build)
            return json.loads((artifact.path / "preset.json").read_text()), artifact.path / "preset.yaml", artifact.reused

        def make_once() -> tuple[dict[str, Any], Path, bool]:
            with self._shared(Scope.PRESET, model, "prepare", f"preset of {model.name}"):
                return make()

        return self._once("preset", model.name, make_once)

    def edit_dir(self, model: Model, scenario: Scenario) -> Path:
        """Where the scenario's edited weights live in the store (whether or not they are on disk now)."""
        return self.store.path("edits", edit_key(model, scenario, self.baseline(model)))

    def edited_model(self, model: Model, scenario: Scenario, item: SuiteItem | None = None) -> Artifact:
        """The scenario's edited weights, built (or rebuilt from the recipe) if they are not on disk, and held in
        use until the item ends (outside an item: until the session ends). Edits run where the model fits: on the
        worker's GPU, or in host RAM when the item's placement shards the model over several GPUs."""
        from pytest_invarlock.scheduling.placement import placement_devices

        baseline = self.baseline(model)
        devices = placement_devices(self.state.run_dir, self.state.session, item) if item is not None else None
        device = "cpu" if devices and len(devices) > 1 else self.state.device
        spec = str(parse_spec(scenario.spec))
        with self._shared(Scope.EDIT, model, "edit", f"edit {spec} of {model.name}", spec):
            needs = read_needs(self.state.run_dir, self.state.session)
            holds = self._holds if self._item is not None else self._session_holds
            return edit_artifact(model, scenario, baseline, self.store, self.cache, device, holds, needs)

    # ----------------------------------------------------------------- items

    def run(self, item: SuiteItem) -> ItemResult:
        """One item under its time limit, with OOM and transient retries; an error carries its record
        (`ItemError.record`). Work this item needed that already failed in this session fails it at once."""
        from pytest_invarlock.worker.resources import release_memory

        started, warned, rebuilt, built = time.perf_counter(), len(self.store.warnings), len(self.store.rebuilt), self.store.built
        limit = self.limit_s(item.kind, item.model)
        plan = execution.item_device_plan(self.state, item)
        self.stats = execution.ItemStats(
            placement=list(plan.devices) if plan else None,
            device_plan_gb=list(plan.max_memory_gb) if plan and plan.multi_gpu else None,
        )
        failed_work: Failure | None = self.failures.blocking(item)
        failure = f"not run: {failed_work.message}" if failed_work is not None else None
        waited = 0.0
        result: ItemResult | None = None
        if failure is None:
            self._item = item
            self._holds = contextlib.ExitStack()
            try:
                waited = self._wait_for_disk(item)
                result, failure, failed_work = self._attempts(item, limit)
            except execution.ItemError as error:  # no disk space came in time
                result, failure = None, str(error)
            finally:
                self._holds.close()
                self._item = None
                if result is None or self.store.built != built:  # a full collection takes ~0.15 s: not after reused work
                    release_memory()
        extra = {
            "seconds": round(time.perf_counter() - started, 2),
            "worker": self.worker_id,
            "timeout_s": limit,
            **({"disk_wait_s": round(waited, 1)} if waited else {}),
            **({"rebuilt": self.store.rebuilt[rebuilt:]} if self.store.rebuilt[rebuilt:] else {}),
            **execution.memory_fields(self.cache),
        }
        if self.store.warnings[warned:]:  # damaged artifacts found and rebuilt: the controller prints them
            extra["store_warnings"] = self.store.warnings[warned:]
        if failure is not None:
            extra["timed_out"] = "timed out after" in failure
            if failed_work is not None:
                extra["failed_work"] = failed_work.to_dict()
                extra["failed_here"] = failed_work.item == item.param_id
            log.error("item %s: %s", item.param_id, failure)
            raise execution.ItemError(failure, execution.error_record(item, failure, self.stats, extra, self.environment))
        assert result is not None
        result.record.update({**self.stats.fields(), **extra})
        return result

    def _attempts(self, item: SuiteItem, limit: float) -> tuple[ItemResult | None, str | None, Failure | None]:
        """Run the item, again after each transient error (backoff), until it ends: (result, failure, failed work)."""
        from pytest_invarlock.worker.resources import ItemTimeout, deadline

        attempt = 0
        while True:
            self._last_attempt = attempt >= TRANSIENT_RETRIES
            try:
                with deadline(limit, f"{item.kind} item {item.param_id}", note=self._timeout_note(item)):
                    with self.certifier.interrupts_kept():  # a Ctrl-C swallowed by torch/InvarLock still stops the session
                        return (self._benchmark(item) if item.benchmark else self._certify(item)), None, None
            except ItemTimeout as timeout:
                return None, f"{timeout} (the limit for {item.kind} items of size class {item.model.size_class})", None
            except DependencyFailed as error:
                found = error.failure
                return None, found.message if found.item != item.param_id else f"{found.what} failed: {found.cause}", found
            except execution.OomExhausted as error:
                why_not = execution.no_larger_placement(self.state, item, self.stats, self.failures, scheduled=self.scheduled)
                if why_not is None:
                    execution.hand_back(self.failures, item, self.stats, str(error))
                return None, f"{error}; no larger placement to try: {why_not}", None
            except Exception as error:  # noqa: BLE001 - sorted below: retried, or the item's error with its cause
                cause = describe(error)
                error_class = classify(cause)
                wait = execution.transient_wait_s(attempt + 1, self.stats) if error_class == ErrorClass.TRANSIENT else None
                if wait is None:
                    log.error("item %s failed (%s):\n%s", item.param_id, error_class, traceback.format_exc())
                    return None, str(error) if isinstance(error, (PipelineError, execution.ItemError)) else cause, None
                log.warning("item %s: transient error, retry %d in %.0f s: %s", item.param_id, attempt + 1, wait, cause)
                self._holds.close()
                self._holds = contextlib.ExitStack()
                time.sleep(wait)
                attempt += 1

    def _timeout_note(self, item: SuiteItem) -> Callable[[str], None]:
        """What the watchdog leaves before it ends this worker: the reason in logs/timeouts.log, and a note that
        the item must not be re-queued (it would only time out again)."""
        from pytest_invarlock.worker.resources import timeout_note

        write = timeout_note(self.state.run_dir, item.param_id)

        def note(message: str) -> None:
            write(message)
            self.failures.hand_back(item.param_id, {"reason": "timeout", "message": message})

        return note

    def _wait_for_disk(self, item: SuiteItem) -> float:
        """Before an item starts: wait (not charged to it) while its filesystem lacks room for what it adds plus the
        headroom; edits no running item uses are evicted first. Returns the seconds waited; an ItemError after
        the disk_wait limit."""
        from pytest_invarlock.edit_lifecycle import make_room, on_disk_bytes

        need = RESULT_ALLOWANCE + self._edit_need(item)
        headroom = self._headroom()
        waited, started, noticed = 0.0, time.monotonic(), -DISK_NOTICE_S
        while True:
            free = shutil.disk_usage(existing_ancestor(self.state.run_dir)).free
            if free - need >= headroom:
                break
            if waited == 0.0:  # first make room: evict edits no running item holds, as many as the shortfall needs
                make_room(
                    self.store,
                    read_needs(self.state.run_dir, self.state.session),
                    incoming=need,
                    reason="low disk space",
                    budget=on_disk_bytes(self.store) - (need + headroom - free) + need,
                )
                if shutil.disk_usage(existing_ancestor(self.state.run_dir)).free - need >= headroom:
                    break
            waited = time.monotonic() - started
            message = (
                f"{self.worker_id}: pausing before {item.param_id}: {gb(free)} GB free on {self.state.run_dir}, it needs "
                f"{human_bytes(need)} plus {gb(headroom)} GB headroom; waiting for space (free some, or other items' edits "
                f"are removed as they finish), {waited:.0f} s so far"
            )
            if waited > self.limit_s("disk_wait", item.model):
                raise execution.ItemError(f"{message}; gave up after the disk_wait limit", {})
            if waited - noticed >= DISK_NOTICE_S:
                noticed = waited
                log.warning(message)
                print(f"invarlock: {message}", file=sys.__stderr__, flush=True)
                write_json_atomic(self.state.run_dir / "state" / "disk_pressure.json", {"message": message, "at": time.time()})
            time.sleep(DISK_POLL_S)
        if waited:
            with contextlib.suppress(OSError):
                (self.state.run_dir / "state" / "disk_pressure.json").unlink()
            log.info("%s: disk space is back after %.0f s; starting %s", self.worker_id, waited, item.param_id)
        return waited

    def _edit_need(self, item: SuiteItem) -> int:
        """Bytes the item's edit adds if it has to be built: 0 when it needs none or it is on disk (known only
        once this worker has the baseline; before that the suite's declared size counts)."""
        from pytest_invarlock.scheduling.tasks import model_profile

        if item.scenario is None or spec_of(item) is None:
            return 0
        baseline = self._memo.get(("baseline", item.model.name))
        if baseline is None:
            return int(model_profile(item.model).weights_gb * GIB)
        if verify(self.store.path("edits", edit_key(item.model, item.scenario, baseline)), full=False) is None:
            return 0
        return edit_bytes(baseline, item.model.dtype)

    def _headroom(self) -> int:
        limit = self.state.options.limits.disk_headroom_gb
        if limit is not None:
            return int(limit * GIB)
        return default_headroom(shutil.disk_usage(existing_ancestor(self.state.run_dir)).total)

    def _certify(self, item: SuiteItem) -> ItemResult:
        from pytest_invarlock.campaign.presets import edit_preset

        assert item.scenario is not None  # a certify item always has one
        model = item.model
        reused: list[str] = []
        baseline = self.baseline(model)
        if baseline.reused:
            reused.append(f"baseline:{model.name}")
        extra: dict[str, Any] = {
            "weights": baseline.path.name,
            "revision": model.revision,
            "weights_digest": self.weights_digest(model),
        }
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
            edited = self.edit_dir(model, item.scenario)  # made only if the certificate has to be computed
            extra["weights"] = edited.name
            spec = parse_spec(item.scenario.spec)
            preset = edit_preset(preset, spec.type_name)
            settings = self.settings(model, run=item.run)
            key = digest(
                "certify",
                baseline.path.name,
                edited.name,
                preset,
                self._settings_key(settings),
                report.parent.name,
                item.run,
                _computed_by(self.state, CERTIFICATE_PACKAGES),
            )
            sidecar = probes.probe_file(spec.type_name)
            if sidecar:  # its probe is part of the result
                key = digest(key, "probe", probes.VERSION)
            verdict, artifact = self._verdict_artifact(
                key,
                lambda tmp: self.certifier.certify(
                    baseline.path,
                    self._edit_for(item, reused).path,
                    tmp,
                    settings,
                    edit_label="custom",
                    preset=preset,
                    baseline_report=report,
                    **self.evaluate_options(item),
                ),
                after=(
                    lambda tmp, _: self._probe(
                        spec.type_name, model, baseline.path, self._edit_for(item, reused).path, report, preset, tmp / sidecar
                    )
                )
                if sidecar
                else None,
            )
            if sidecar:
                probe = json.loads((artifact.path / sidecar).read_text())
                extra.update(probe=probe, probe_file=str(artifact.path / sidecar), probe_signal=probes.signal(probe))
        if artifact.reused:
            reused.append(f"result:{item.param_id}")
        extra["invarlock_config"] = self._config_files(artifact.path)
        extra.update(self.window_fields(model, item.run))
        judgement = judge(item.scenario, verdict, bool(extra.get("probe_signal")))
        return self._result(item, verdict, judgement, reused, preset_path, extra)

    def _config_files(self, result_dir: Path) -> dict[str, Any]:
        """The exact InvarLock configuration a certificate was made with, kept in its result artifact: the config
        root (INVARLOCK_CONFIG_ROOT: the ci profile the plugin writes, tiers.yaml with a token floor) and the
        --preset file (for an edit, its per-edit copy of the calibrated preset in InvarLock's YAML)."""
        root = result_dir / self.certifier.CONFIG_DIR
        return {
            "root": str(root),
            "preset": str(root / self.certifier.PRESET_FILE),
            "files": sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()),
        }

    def _edit_for(self, item: SuiteItem, reused: list[str]) -> Artifact:
        assert item.scenario is not None
        edited = self.edited_model(item.model, item.scenario, item)
        if edited.reused and f"edit:{item.model.name}/{item.scenario.name}" not in reused:
            reused.append(f"edit:{item.model.name}/{item.scenario.name}")
        return edited

    def _probe(
        self, kind: str, model: Model, baseline: Path, edited: Path, report: Path, preset: Mapping[str, Any], out: Path
    ) -> None:
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
        item: SuiteItem,
        verdict: Verdict,
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
            "preset": str(preset_path) if preset_path else None,  # calibrated; the certificate used invarlock_config
            "reused": reused,
            "environment": self.environment,
            # weights: the store key of the evaluated weights; revision: the pinned commit; weights_digest: the
            # content of the baseline's files they come from
            **(extra or {}),
        }
        return ItemResult(record, judgement.met, judgement.explanation, junit_properties(record))

    def _benchmark(self, item: SuiteItem) -> ItemResult:
        from pytest_invarlock.worker.lm_eval_scoring import run_benchmark

        benchmark = item.benchmark
        assert benchmark is not None  # a benchmark item names its task
        model = item.model
        baseline = self.baseline(model)
        scenario = None if item.variant == "baseline" else item.scenario  # None: scored on the baseline
        on_baseline = scenario is None
        directory = baseline.path if scenario is None else self.edit_dir(model, scenario)  # an edit is made on demand
        suite = self.state.suite
        key = digest(
            "benchmark",
            directory.name,
            item.benchmark,
            suite.benchmarks.num_fewshot,
            suite.benchmarks.limit,
            _computed_by(self.state, SCORE_PACKAGES),
        )
        loaded = False
        reused: list[str] = []

        def build(tmp: Path) -> dict[str, Any]:
            nonlocal loaded, directory
            if not on_baseline:
                directory = self._edit_for(item, reused).path
            plan = execution.item_device_plan(self.state, item)
            if plan is not None and plan.multi_gpu and self.state.device == "cuda":  # a child that sees all placed GPUs
                loaded = True
                score = lambda batch: self._score_placed(item, directory, plan, batch, tmp)  # noqa: E731
            else:
                with contextlib.ExitStack() as loading:
                    if on_baseline:  # a baseline that cannot load fails the model's items once
                        loading.enter_context(self._shared(Scope.BASELINE, model, "prepare", f"loading {model.name}"))
                    hf_model, tokenizer, loaded = self.cache.get(directory, model.dtype)

                def score(batch: int | str) -> BenchmarkResult:
                    hf_model.to(self.state.device)
                    try:
                        return run_benchmark(
                            hf_model,
                            tokenizer,
                            benchmark,
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
        reused += [f"benchmark:{item.param_id}"] if artifact.reused else []
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
            "environment": self.environment,
            "weights_digest": self.weights_digest(model),
        }
        explanation = (
            f"lm-eval {item.benchmark} on {item.variant}: accuracy {accuracy} (stderr {result['stderr']}, n {result['n']})"
            + ("" if result["finite_logits"] else "; the model's logits are not finite")
        )
        return ItemResult(record, met, explanation, junit_properties(record))

    def _score_placed(self, item: SuiteItem, directory: Path, plan: DevicePlan, batch: int | str, tmp: Path) -> BenchmarkResult:
        """lm-eval in a child process that sees exactly the placed GPUs and loads with their device map."""
        from pytest_invarlock.scheduling.device_map import load_kwargs
        from pytest_invarlock.scheduling.placement import cuda_env
        from pytest_invarlock.worker.lm_eval_scoring import BenchmarkOutOfMemory, run_benchmark_subprocess

        assert item.benchmark is not None  # a benchmark item names its task
        suite = self.state.suite
        left = remaining_s()
        remaining = None if left is None else max(1.0, left)
        try:
            result, load = run_benchmark_subprocess(
                directory,
                item.model.dtype,
                item.benchmark,
                num_fewshot=suite.benchmarks.num_fewshot,
                batch_size=batch,
                limit=suite.benchmarks.limit,
                load_kwargs=load_kwargs(plan),
                env=cuda_env(list(plan.devices), self.state.gpus),
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


def _evaluation_text(model: Model) -> tuple[str, Callable[[], list[list[str]]]]:
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


def calibration_runs(suite: Suite) -> int:
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
    """The CPUs this process may use (affinity and cgroup quota, `scheduling.cpus`) shared out between xdist
    workers, so two workers do not fight over each core."""
    from pytest_invarlock.scheduling.cpus import available_cpus

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, available_cpus() // max(1, workers))


def apply_determinism(mode: str, device: str) -> None:
    """The B200 bash harness's modes: throughput (TF32, cuDNN benchmark) or strict (off, deterministic cuBLAS)."""
    if device != "cuda":
        return
    if mode == "strict":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":32768:8")
    import torch

    strict = mode == "strict"
    torch.backends.cuda.matmul.allow_tf32 = not strict
    torch.backends.cudnn.allow_tf32 = not strict
    torch.backends.cudnn.benchmark = not strict
