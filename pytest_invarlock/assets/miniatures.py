"""Miniatures of the GPU catalogue's hub models: same architecture class and traits, tiny dimensions.

The GPU suites run hub checkpoints (Mistral, Llama-2, Qwen2.5, Yi, Mixtral, Qwen1.5) that no machine here
can hold or download. A miniature keeps what matters to edits and to InvarLock: the model class and its
config traits (sliding window, grouped KV heads, attention biases, MoE router and experts, the family's
special tokens and dtype), and the weight layout of the real repository (one safetensors file, sharded
safetensors with an index, or sharded `pytorch_model-*.bin` only). It is briefly trained on the KJV corpus
with the tiny model's tokenizer and training loop (`tiny_model`), so edits change perplexity as they would.

Built once per cache (seconds per model on 2 cores), deterministically, under a file lock; the local hub
(`local_hub`) serves them under their real repo ids. Run `python -m pytest_invarlock.assets.miniatures`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from pytest_invarlock.assets import tiny_model as tm

BUILDER_VERSION = 1
ROOT_PREFIX = "miniatures-"
BUILD_INFO = "build_info.json"
TRAINING = replace(tm.TinyBuildParams(), steps=300, warmup_steps=30, chapter_limit=400)
SHAPE = {"hidden_size": 64, "num_hidden_layers": 4, "num_attention_heads": 4, "head_dim": 16, "max_position_embeddings": 512}

# The families' special tokens (tokenizer_config.json of the real repos): Llama and Mistral prepend <s> and have no
# pad; Yi prepends <|startoftext|> and pads with <unk>; Qwen has no BOS and one <|endoftext|> for eos and pad.
TOKENIZERS = {
    "llama": (tm.TokenizerStyle(pad=None, bos="<s>", eos="</s>", unk="<unk>"), 1024),
    "yi": (tm.TokenizerStyle(pad="<unk>", bos="<|startoftext|>", eos="<|endoftext|>", unk="<unk>"), 1024),
    "qwen": (tm.TokenizerStyle(pad="<|endoftext|>", bos=None, eos="<|endoftext|>"), 1536),
}


@dataclass(frozen=True)
class Miniature:
    """One catalogue model's miniature: its config class and traits, tokenizer family and weight layout.

    `weights`: "safetensors" (one file), "safetensors-sharded" or "bin-sharded" (`pytorch_model-*.bin` and
    its index, no safetensors), split into about `shards` files as the real repository is.
    """

    name: str
    repo_id: str
    config_class: str
    traits: str
    tokenizer: str
    dtype: str
    weights: str
    shards: int = 1
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def directory_name(self) -> str:
        return self.repo_id.replace("/", "--")


MINIATURES: tuple[Miniature, ...] = (
    Miniature(
        "mistral-7b", "mistralai/Mistral-7B-v0.1", "MistralConfig", "sliding window 64 (< seq_len), GQA 4:1",
        "llama", "bfloat16", "safetensors-sharded", 2,
        {"num_key_value_heads": 1, "sliding_window": 64, "intermediate_size": 224, "rope_theta": 10000.0},
    ),
    Miniature(
        "llama-2-13b", "NousResearch/Llama-2-13b-hf", "LlamaConfig", "multi-head attention, float16",
        "llama", "float16", "safetensors-sharded", 3,
        {"num_key_value_heads": 4, "intermediate_size": 176, "rms_norm_eps": 1e-5},
    ),
    Miniature(
        "qwen2.5-14b", "Qwen/Qwen2.5-14B", "Qwen2Config", "q/k/v biases, GQA 4:1, no BOS",
        "qwen", "bfloat16", "safetensors-sharded", 4,
        {"num_key_value_heads": 1, "intermediate_size": 224, "rope_theta": 1e6, "use_sliding_window": False},
    ),
    Miniature(
        "qwen2.5-32b", "Qwen/Qwen2.5-32B", "Qwen2Config", "q/k/v biases, GQA 4:1, no BOS, deeper",
        "qwen", "bfloat16", "safetensors-sharded", 5,
        {"num_key_value_heads": 1, "intermediate_size": 224, "rope_theta": 1e6, "use_sliding_window": False,
         "num_hidden_layers": 6},
    ),
    Miniature(
        "yi-34b", "01-ai/Yi-34B", "LlamaConfig", "Llama class, GQA 4:1, <|startoftext|> BOS, .bin shards only",
        "yi", "bfloat16", "bin-sharded", 3,
        {"num_key_value_heads": 1, "intermediate_size": 256, "rope_theta": 5e6},
    ),
    Miniature(
        "mixtral-8x7b", "mistralai/Mixtral-8x7B-v0.1", "MixtralConfig", "8 experts top-2 with a router, GQA 4:1",
        "llama", "bfloat16", "safetensors-sharded", 4,
        {"num_key_value_heads": 1, "intermediate_size": 96, "num_local_experts": 8, "num_experts_per_tok": 2,
         "sliding_window": None, "rope_theta": 1e6},
    ),
    Miniature(
        "llama-2-70b", "NousResearch/Llama-2-70b-hf", "LlamaConfig", "GQA 4:1, float16, deeper",
        "llama", "float16", "safetensors-sharded", 5,
        {"num_key_value_heads": 1, "intermediate_size": 224, "rms_norm_eps": 1e-5, "num_hidden_layers": 6},
    ),
    Miniature(
        "qwen1.5-72b", "Qwen/Qwen1.5-72B", "Qwen2Config", "q/k/v biases, multi-head attention, no BOS, deeper",
        "qwen", "bfloat16", "safetensors-sharded", 5,
        {"num_key_value_heads": 4, "intermediate_size": 224, "rope_theta": 1e6, "use_sliding_window": False,
         "num_hidden_layers": 6},
    ),
)  # fmt: skip


@dataclass(frozen=True)
class BuiltMiniature:
    """A built miniature: its repository files in `directory`, and what the build measured."""

    spec: Miniature
    directory: Path
    info: dict[str, Any]


def miniature(name: str) -> Miniature:
    """The miniature of catalogue model `name` (or of hub repo `name`)."""
    for spec in MINIATURES:
        if name in (spec.name, spec.repo_id):
            return spec
    raise KeyError(f"no miniature of '{name}'; miniatures exist of {', '.join(s.name for s in MINIATURES)}")


def root_name(specs: Sequence[Miniature] = MINIATURES) -> str:
    payload = json.dumps(
        {"builder": BUILDER_VERSION, "tiny": tm.BUILDER_VERSION, "training": asdict(TRAINING), "shape": SHAPE,
         "tokenizers": {k: (asdict(s), v) for k, (s, v) in TOKENIZERS.items()}, "specs": [asdict(s) for s in specs]},
        sort_keys=True, default=str,
    )  # fmt: skip
    return ROOT_PREFIX + hashlib.sha256(payload.encode()).hexdigest()[:12]


def build_miniatures(
    names: Sequence[str] | None = None, cache_dir: Path | None = None, *, force: bool = False
) -> list[BuiltMiniature]:
    """The miniatures named (default: all), built on first use under `cache_dir` and reused afterwards."""
    specs = [miniature(n) for n in names] if names else list(MINIATURES)
    root = (Path(cache_dir) if cache_dir is not None else tm.default_cache_dir()).expanduser().resolve() / root_name()
    root.mkdir(parents=True, exist_ok=True)
    built = []
    for spec in specs:
        final = root / spec.directory_name
        with FileLock(str(root / f"{spec.directory_name}.lock")):
            if force or not (final / BUILD_INFO).is_file():
                staging = root / f".staging-{spec.directory_name}-{os.getpid()}"
                shutil.rmtree(staging, ignore_errors=True)
                try:
                    _build_into(staging, spec, _tokenizer(root, spec.tokenizer))
                    shutil.rmtree(final, ignore_errors=True)
                    staging.rename(final)
                finally:
                    shutil.rmtree(staging, ignore_errors=True)
        built.append(BuiltMiniature(spec, final, json.loads((final / BUILD_INFO).read_text())))
    return built


def repository_files(directory: Path) -> list[Path]:
    """The files a miniature's hub repository holds (everything but the build record)."""
    return sorted(p for p in directory.iterdir() if p.is_file() and p.name != BUILD_INFO)


# ---------------------------------------------------------------- build


def _tokenizer(root: Path, family: str) -> Any:
    """The family's tokenizer, trained once per cache root and shared by its miniatures."""
    from transformers import PreTrainedTokenizerFast

    style, vocab = TOKENIZERS[family]
    directory = root / f"tokenizer-{family}"
    with FileLock(str(root / f"tokenizer-{family}.lock")):
        if not (directory / "tokenizer.json").is_file():
            train, _ = tm.split_chapters(tm.load_chapters(TRAINING.chapter_limit), TRAINING)
            tokenizer = tm.train_tokenizer(train, replace(TRAINING, vocab_size=vocab), style)
            staging = root / f".staging-tokenizer-{family}-{os.getpid()}"
            tokenizer.save_pretrained(staging)
            staging.rename(directory)
    return PreTrainedTokenizerFast.from_pretrained(directory)


def _config(spec: Miniature, tokenizer: Any) -> Any:
    import transformers

    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    fields = {**SHAPE, **special, "vocab_size": len(tokenizer), "tie_word_embeddings": False, **spec.config}
    return getattr(transformers, spec.config_class)(**fields)


def _build_into(directory: Path, spec: Miniature, tokenizer: Any) -> None:
    import torch

    started = time.perf_counter()
    directory.mkdir(parents=True)
    train, heldout = tm.split_chapters(tm.load_chapters(TRAINING.chapter_limit), TRAINING)
    model, training = tm.train_model(train, tokenizer, TRAINING, _config(spec, tokenizer))
    model = model.to(getattr(torch, spec.dtype))  # trained in float32, published in the repo's dtype
    model.config.dtype = spec.dtype
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    shard_bytes = max(1, math.ceil(total / spec.shards * 1.05)) if spec.shards > 1 else 50 * 2**30
    if spec.weights == "bin-sharded":
        _save_bin_shards(model, directory, shard_bytes)
    else:
        model.save_pretrained(directory, max_shard_size=shard_bytes)
    tokenizer.save_pretrained(directory)
    (directory / "README.md").write_text(_model_card(spec), encoding="utf-8")
    perplexity = _heldout_perplexity(directory, heldout)
    info = {
        "builder_version": BUILDER_VERSION,
        "miniature": asdict(spec),
        "parameters": training["parameters"],
        "heldout_perplexity": round(perplexity, 3),
        "weight_files": [p.name for p in repository_files(directory) if p.suffix in (".safetensors", ".bin")],
        "training": training,
        "seconds": round(time.perf_counter() - started, 2),
    }
    (directory / BUILD_INFO).write_text(json.dumps(info, indent=1, default=str) + "\n")


def _save_bin_shards(model: Any, directory: Path, shard_bytes: int) -> None:
    """`pytorch_model-0000k-of-0000n.bin` shards and `pytorch_model.bin.index.json`, as older hub repos ship:
    transformers writes safetensors only, so its shards (already in the hub's tensor names) are re-saved."""
    import torch
    from safetensors.torch import load_file

    staging = directory.with_name(directory.name + ".safetensors")
    model.save_pretrained(staging, max_shard_size=shard_bytes)
    index_file = staging / "model.safetensors.index.json"
    weight_map = (
        json.loads(index_file.read_text())["weight_map"]
        if index_file.is_file()
        else dict.fromkeys(load_file(staging / "model.safetensors"), "model.safetensors")
    )
    shards = sorted(set(weight_map.values()))
    names = {shard: f"pytorch_model-{k:05d}-of-{len(shards):05d}.bin" for k, shard in enumerate(shards, start=1)}
    for shard, name in names.items():
        torch.save(load_file(staging / shard), directory / name)
    for extra in staging.glob("*.json"):
        if extra != index_file:
            shutil.copyfile(extra, directory / extra.name)
    total = sum((directory / name).stat().st_size for name in names.values())
    index = {"metadata": {"total_size": total}, "weight_map": {t: names[s] for t, s in sorted(weight_map.items())}}
    (directory / "pytorch_model.bin.index.json").write_text(json.dumps(index, indent=2) + "\n")
    shutil.rmtree(staging)


def _heldout_perplexity(directory: Path, heldout: list[list[str]]) -> float:
    """Perplexity on 200 held-out six-verse paragraphs (cut to 128 tokens), the shape of the rehearsal's windows."""
    paragraphs = [" ".join(chapter[i : i + 6]) for chapter in heldout for i in range(0, len(chapter), 6)][:200]
    corpus = directory.with_name(directory.name + ".eval.jsonl")
    tm.write_passages(corpus, [tm.Passage(text, 0) for text in paragraphs])
    try:
        return tm.perplexity(directory, corpus, seq_len=TRAINING.seq_len)
    finally:
        corpus.unlink()


def _model_card(spec: Miniature) -> str:
    return (
        "---\nlicense: apache-2.0\nlibrary_name: transformers\ntags: [pytest-invarlock, miniature]\n---\n"
        f"# Miniature of {spec.repo_id}\n\n"
        f"Built by pytest-invarlock for its dress rehearsal: `{spec.config_class}` with the real model's traits "
        f"({spec.traits}) at tiny dimensions, briefly trained on the King James Bible. Not the real weights.\n"
    )


# ---------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.assets.miniatures", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="catalogue names (default: every miniature)")
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="default: $PYTEST_INVARLOCK_CACHE or ~/.cache/pytest-invarlock"
    )
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    for built in build_miniatures(args.names or None, args.cache_dir, force=args.force):
        info = built.info
        print(
            f"{built.spec.repo_id:32} {built.spec.config_class:14} {info['parameters']:>9,} params  "
            f"ppl {info['heldout_perplexity']:8.2f}  {len(info['weight_files'])} weight file(s)  {info['seconds']:.0f} s"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
