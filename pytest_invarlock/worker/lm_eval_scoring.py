"""Score a model a worker already holds on an lm-eval multiple-choice benchmark.

The Phase 0 verdict asks whether an edit costs benchmark accuracy. Workers
have the baseline or edited model in memory, so lm-eval's HFLM wraps that very
object: nothing is reloaded from disk. Local tasks (the tiny suite's, shipped
in `pytest_invarlock.suites/tasks`) run fully offline through a TaskManager
that indexes only them; hub tasks (mmlu, hellaswag, ...) go through lm-eval's
default TaskManager and need a network or a warm HF datasets cache.

torch and lm_eval are imported inside functions; the task table itself lives in
`campaign.lm_eval_tasks`, which the controller reads.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from pytest_invarlock.campaign.lm_eval_tasks import DEFAULT_METRIC, LOCAL_TASKS, TASK_METRICS
from pytest_invarlock.scheduling.device_map import hflm_kwargs
from pytest_invarlock.worker.hub_access import hub_mode

TASK_TEMPLATE = "multiple_choice.yaml"


@dataclass(frozen=True)
class BenchmarkResult:
    """One task's score. finite_logits=False means the model produced NaN/Inf and
    `accuracy` is meaningless (argmax over NaN picks choice 0): treat it as broken."""

    task: str
    accuracy: float
    stderr: float
    n: int
    metric: str
    seconds: float
    finite_logits: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def local_task_data_dir() -> Path:
    """Directory holding the shipped task template and JSONL data."""
    return Path(str(files("pytest_invarlock.suites").joinpath("tasks"))).resolve()


def prepare_local_tasks(dest_dir: Path) -> Path:
    """Render one lm-eval YAML per local task into `dest_dir`; returns it, absolute.

    lm-eval resolves relative `data_files` against the working directory, so the
    rendered YAMLs name the shipped data by absolute path. Output depends only on
    where the package lives and on TASK_METRICS, and each file is replaced
    atomically, so workers sharing a directory never read a half-written YAML.
    """
    data_dir = local_task_data_dir()
    template = Template((data_dir / TASK_TEMPLATE).read_text(encoding="utf-8"))
    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for task in LOCAL_TASKS:
        data_file = json.dumps(str(data_dir / f"{task}.jsonl"))  # a JSON string is a valid YAML scalar
        rendered = template.substitute(task=task, data_file=data_file, metric=TASK_METRICS[task])
        target = dest / f"{task}.yaml"
        if not target.is_file() or target.read_text(encoding="utf-8") != rendered:
            staging = dest / f".{task}.yaml.{os.getpid()}"
            staging.write_text(rendered, encoding="utf-8")
            staging.replace(target)
    return dest


class FiniteLogitsWatch:
    """Forward hook noting whether every batch the model scored had finite logits.

    Only the last position of each row is checked: in a causal model it attends
    to every earlier token, so a NaN or Inf anywhere upstream reaches it, and
    the check costs one batch x vocab slice instead of a copy of all logits.
    """

    def __init__(self, model: Any) -> None:
        self._model = model
        self._handle: Any = None
        self.all_finite = True
        self.batches = 0

    def __enter__(self) -> FiniteLogitsWatch:
        self._handle = self._model.register_forward_hook(self._check)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _check(self, module: Any, args: Any, output: Any) -> None:
        import torch

        logits = output.logits if hasattr(output, "logits") else output[0]
        self.batches += 1
        self.all_finite = self.all_finite and bool(torch.isfinite(logits[:, -1]).all())


@contextmanager
def _ties_left_alone(model: Any) -> Iterator[None]:
    """Stop HFLM's `model.tie_weights()` from re-tying an lm_head an edit untied.

    Re-tying would score a repaired model (hiding weight_tying_break) and change
    the caller's model behind its back.
    """
    model.tie_weights = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del model.tie_weights


@functools.lru_cache(maxsize=1)
def _default_task_manager() -> Any:
    """lm-eval's full task index; built once per process (it takes ~8 s)."""
    from lm_eval.tasks import TaskManager

    return TaskManager()


def _task_manager(task: str, task_dir: Path | None, stack: ExitStack) -> Any:
    if task not in LOCAL_TASKS:
        return _default_task_manager()
    from lm_eval.tasks import TaskManager

    include_dir = task_dir if task_dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
    return TaskManager(include_path=str(prepare_local_tasks(include_dir)), include_defaults=False)


def run_benchmark(
    model: Any,
    tokenizer: Any,
    task: str,
    *,
    num_fewshot: int = 0,
    batch_size: int | str = 16,
    limit: int | None = None,
    device: str | None = None,
    task_dir: Path | None = None,
    offline: bool = True,
) -> BenchmarkResult:
    """Score the in-memory `model` on `task` with lm-eval; nothing is loaded from disk.

    `device` moves the model there first (in place, as `Module.to` does); None
    scores it where it is. `task_dir` is where local task YAMLs are rendered
    (a temporary directory when None). `offline` keeps the HF libraries off the
    network, which local tasks need and hub tasks tolerate once cached.
    The worker's global RNGs are left unseeded by lm-eval.

    One task per call, on purpose: lm-eval 0.4.13's logits cache mis-scores
    requests of different tasks that share a token sequence (run together with
    kjv_next_verse, 51 of 400 kjv_cloze items got wrong log-likelihoods).
    """
    metric = TASK_METRICS.get(task, DEFAULT_METRIC)
    with hub_mode(online=False) if offline else nullcontext(), ExitStack() as stack:
        import lm_eval
        from lm_eval.models.huggingface import HFLM

        task_manager = _task_manager(task, task_dir, stack)
        if device is not None:
            model.to(device)
        watch = stack.enter_context(FiniteLogitsWatch(model))
        started = time.perf_counter()
        with _ties_left_alone(model):
            lm = HFLM(**hflm_kwargs(model, tokenizer, batch_size))
        output = lm_eval.simple_evaluate(
            model=lm,
            tasks=[task],
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=task_manager,
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
        seconds = time.perf_counter() - started
    return _result(output, task, metric, seconds, watch.all_finite)


def _result(output: dict[str, Any], task: str, metric: str, seconds: float, finite_logits: bool) -> BenchmarkResult:
    scores = output["results"][task]
    if f"{metric},none" not in scores:
        reported = sorted(key.split(",")[0] for key in scores if "," in key and "_stderr" not in key)
        raise ValueError(
            f"lm-eval task {task!r} reported no {metric!r} metric (it reported {reported}). "
            "Add the task with one of those metrics to pytest_invarlock.campaign.lm_eval_tasks.TASK_METRICS."
        )
    stderr = scores.get(f"{metric}_stderr,none")
    return BenchmarkResult(
        task=task,
        accuracy=float(scores[f"{metric},none"]),
        stderr=float(stderr) if isinstance(stderr, int | float) else float("nan"),
        n=sum(int(counts["effective"]) for counts in output["n-samples"].values()),
        metric=metric,
        seconds=round(seconds, 3),
        finite_logits=finite_logits,
    )


# --------------------------------------------------------------------------- subprocess (multi-GPU placements)

OOM_EXIT = 3


class BenchmarkOutOfMemory(RuntimeError):
    """The benchmark subprocess ran out of device memory; the message keeps torch's."""


def run_benchmark_subprocess(
    directory: Path,
    dtype: str,
    task: str,
    *,
    num_fewshot: int,
    batch_size: int | str,
    limit: int | None,
    load_kwargs: dict[str, Any],
    env: dict[str, str] | None,
    workdir: Path,
    offline: bool = True,
    timeout_s: float | None = None,
) -> tuple[BenchmarkResult, dict[str, Any]]:
    """Score the model in `directory` in a child process that sees exactly the placement's GPUs.

    The child loads the weights with `load_kwargs` (a device map over its visible GPUs, see
    `scheduling.device_map`) and hands the object to HFLM. Returns the result and what the child
    reports about the load (`load_kwargs`, `devices`: the devices of `hf_device_map`). Raises
    `BenchmarkOutOfMemory` on a device OOM, `TimeoutError` past `timeout_s`, RuntimeError otherwise.
    """
    import subprocess

    workdir.mkdir(parents=True, exist_ok=True)
    request = {
        "directory": str(directory),
        "dtype": dtype,
        "task": task,
        "num_fewshot": num_fewshot,
        "batch_size": batch_size,
        "limit": limit,
        "load_kwargs": _json_keys(load_kwargs),
        "offline": offline,
        "task_dir": str(workdir / "tasks"),
    }
    (workdir / "request.json").write_text(json.dumps(request), encoding="utf-8")
    out, log_path = workdir / "result.json", workdir / "benchmark.log"
    out.unlink(missing_ok=True)
    with log_path.open("w", encoding="utf-8") as log:
        try:
            code = subprocess.run(
                [sys.executable, "-m", "pytest_invarlock.worker.lm_eval_scoring", str(workdir)],
                env={**os.environ, **(env or {})},
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=timeout_s,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            raise TimeoutError(f"lm-eval {task} timed out after {timeout_s:g} s (log: {log_path})") from None
    payload = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else {}
    if code == OOM_EXIT:
        raise BenchmarkOutOfMemory(payload.get("error") or f"out of memory (log: {log_path})")
    if code != 0 or "result" not in payload:
        tail = " ".join(log_path.read_text(encoding="utf-8", errors="replace").split())[-600:]
        raise RuntimeError(f"lm-eval subprocess exited {code}: {tail}")
    return BenchmarkResult(**payload["result"]), payload["load"]


def _json_keys(kwargs: dict[str, Any]) -> dict[str, Any]:
    """JSON object keys are strings: mark integer device keys of max_memory so the child restores them."""
    out = dict(kwargs)
    if isinstance(out.get("max_memory"), dict):
        out["max_memory"] = {f"int:{k}" if isinstance(k, int) else k: v for k, v in out["max_memory"].items()}
    return out


def _from_json_keys(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = dict(kwargs)
    if isinstance(out.get("max_memory"), dict):
        out["max_memory"] = {int(k[4:]) if k.startswith("int:") else k: v for k, v in out["max_memory"].items()}
    return out


def _subprocess_main(workdir: Path) -> int:
    """The child of `run_benchmark_subprocess`: load with the device map, score, write result.json."""
    import traceback

    request = json.loads((workdir / "request.json").read_text(encoding="utf-8"))
    out = workdir / "result.json"
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
        load_kwargs = _from_json_keys(request["load_kwargs"])
        model = AutoModelForCausalLM.from_pretrained(request["directory"], dtype=dtypes[request["dtype"]], **load_kwargs)
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(request["directory"])
        device_map = getattr(model, "hf_device_map", None) or {}  # set by transformers when it spans devices
        devices = sorted({str(p.device) for p in model.parameters()})
        device = None if device_map or "device_map" in load_kwargs else ("cuda" if torch.cuda.is_available() else "cpu")
        result = run_benchmark(
            model,
            tokenizer,
            request["task"],
            num_fewshot=request["num_fewshot"],
            batch_size=request["batch_size"],
            limit=request["limit"],
            device=device,
            task_dir=Path(request["task_dir"]),
            offline=request["offline"],
        )
    except Exception as error:  # noqa: BLE001 - classified for the parent, traceback kept in the log
        traceback.print_exc()
        from pytest_invarlock.worker.resources import is_oom

        out.write_text(json.dumps({"error": f"{type(error).__name__}: {error}"}), encoding="utf-8")
        return OOM_EXIT if is_oom(error) else 1
    load = {"load_kwargs": request["load_kwargs"], "devices": devices}
    out.write_text(json.dumps({"result": result.to_dict(), "load": load}), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(_subprocess_main(Path(sys.argv[1])))
