"""What a model's own files say about its size, read with the standard library (no torch): the controller's sizes.

A suite declares each model's size (`params_b`, `architecture`) so the plan can be made before any weights exist.
Once the weights are on this machine their files are the truth: `config.json` gives the shape, safetensors
headers (an 8-byte length and a JSON table of dtypes and shapes) give the exact parameter count, and a weights
index (`*.index.json`) its total bytes. `.bin` checkpoints are pickles, unreadable without torch: their size
comes from the config's parameter count (llama, mistral, qwen2, mixtral, gpt2) or from their bytes on disk.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

# model_type -> whether the family ties lm_head to the input embeddings when the config is silent.
DECODER_FAMILIES = {"llama": False, "mistral": False, "qwen2": False, "mixtral": False}
GPT2_FAMILY = "gpt2"
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MAX_HEADER_BYTES = 100 * 2**20  # the format's own limit on a header
# Config keys of the shape fields, per naming convention (Llama-style first, then GPT-2, GPT-NeoX/OPT/Phi...).
SHAPE_KEYS = {
    "layers": ("num_hidden_layers", "n_layer", "num_layers"),
    "hidden": ("hidden_size", "n_embd", "d_model"),
    "heads": ("num_attention_heads", "n_head", "num_heads"),
    "kv_heads": ("num_key_value_heads", "multi_query_group_num"),
    "head_dim": ("head_dim",),
    "vocab": ("vocab_size", "padded_vocab_size"),
}


class ModelFilesError(ValueError):
    """A model directory's files cannot be read as a checkpoint; the message names the file and the fix."""


@dataclass(frozen=True)
class ModelFiles:
    """A checkpoint directory's size facts. `parameters` is exact (safetensors headers), counted from the
    config (supported families), or estimated from bytes on disk at `disk_dtype_bytes` per weight."""

    directory: Path
    config: Mapping[str, Any]
    parameters: int
    parameters_from: str  # "safetensors headers" | "config.json" | "bytes on disk"
    weight_bytes: int

    @property
    def params_b(self) -> float:
        return self.parameters / 1e9

    @property
    def is_moe(self) -> bool:
        return bool(self.config.get("num_local_experts") or self.config.get("num_experts"))

    def shape(self) -> dict[str, int]:
        """layers, hidden, heads, kv_heads, head_dim, vocab from whichever config keys the family uses."""
        found = {field: _first(self.config, keys) for field, keys in SHAPE_KEYS.items()}
        shape = {field: value for field, value in found.items() if value}
        if "heads" in shape and "hidden" in shape:
            shape.setdefault("head_dim", shape["hidden"] // shape["heads"])
            shape.setdefault("kv_heads", shape["heads"])
        return shape


def _first(config: Mapping[str, Any], keys: tuple[str, ...]) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's config (multimodal configs nest it under `text_config`)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, Mapping) else config


def read_model_files(directory: Path) -> ModelFiles:
    """The size facts of the checkpoint in `directory` (a ModelFilesError when it has no readable config.json)."""
    directory = Path(directory)
    entries = sorted((p.name, p.stat().st_size) for p in directory.iterdir() if p.suffix in (*WEIGHT_SUFFIXES, ".json"))
    return _read(directory, tuple(entries))


@lru_cache(maxsize=64)
def _read(directory: Path, entries: tuple[tuple[str, int], ...]) -> ModelFiles:
    """Memoised on the directory's file names and sizes: a finished download is read once per process."""
    config_file = directory / "config.json"
    try:
        config = text_config(json.loads(config_file.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ModelFilesError(f"cannot read {config_file}: {exc}. A model directory needs the model's config.json.") from None
    if not isinstance(config, Mapping):
        raise ModelFilesError(f"{config_file} is not a JSON object. Point at the model's own config.json.")
    weights = [directory / name for name, _ in entries if name.endswith(WEIGHT_SUFFIXES)]
    weight_bytes = sum(size for name, size in entries if name.endswith(WEIGHT_SUFFIXES)) or _indexed_bytes(directory)
    safetensors = [p for p in weights if p.suffix == ".safetensors"]
    if safetensors:
        return ModelFiles(
            directory, config, sum(safetensors_parameters(p) for p in safetensors), "safetensors headers", weight_bytes
        )
    if config.get("model_type") in (*DECODER_FAMILIES, GPT2_FAMILY):
        return ModelFiles(directory, config, count_parameters(config), "config.json", weight_bytes)
    disk_bytes = _disk_dtype_bytes(config)
    return ModelFiles(directory, config, weight_bytes // disk_bytes, "bytes on disk", weight_bytes)


def safetensors_parameters(path: Path) -> int:
    """Elements of every tensor a safetensors file holds, from its header alone."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise ModelFilesError(f"{path} is too short to be a safetensors file (truncated download?). Download it again.")
        (length,) = struct.unpack("<Q", prefix)
        if length > MAX_HEADER_BYTES:
            raise ModelFilesError(f"{path}: safetensors header of {length} bytes is not plausible. Download the file again.")
        try:
            header = json.loads(handle.read(length))
        except ValueError:
            raise ModelFilesError(f"{path}: the safetensors header is not JSON (damaged file?). Download it again.") from None
    return sum(math.prod(entry["shape"]) for name, entry in header.items() if name != "__metadata__")


def _indexed_bytes(directory: Path) -> int:
    """Total bytes a weights index declares (`metadata.total_size`), for a directory holding only the index."""
    for index in sorted(directory.glob("*.index.json")):
        try:
            total = json.loads(index.read_text(encoding="utf-8")).get("metadata", {}).get("total_size")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(total, int) and total > 0:
            return total
    return 0


def _disk_dtype_bytes(config: Mapping[str, Any]) -> int:
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return {"float32": 4, "float16": 2, "bfloat16": 2}.get(dtype, 4)


def count_parameters(config: Mapping[str, Any]) -> int:
    """Parameters of a llama/mistral/qwen2/mixtral/gpt2 config; tied embeddings counted once."""
    if config.get("model_type") == GPT2_FAMILY:
        return _gpt2_parameters(config)
    return _decoder_parameters(config)


def _decoder_parameters(config: Mapping[str, Any]) -> int:
    hidden, vocab = config["hidden_size"], config["vocab_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    q_width, kv_width = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_width + 2 * hidden * kv_width + q_width * hidden
    if config["model_type"] == "qwen2":  # Qwen2 always biases q, k and v
        attention += q_width + 2 * kv_width
    elif config.get("attention_bias"):  # llama's option biases all four projections
        attention += q_width + 2 * kv_width + hidden
    mlp = 3 * hidden * config["intermediate_size"]  # gate, up, down
    experts = config.get("num_local_experts") or 0
    if experts:
        mlp = experts * mlp + hidden * experts  # per-expert MLPs plus the router
    per_layer = attention + mlp + 2 * hidden  # two RMSNorm weights
    tied = config.get("tie_word_embeddings", DECODER_FAMILIES[config["model_type"]])
    embeddings = vocab * hidden * (1 if tied else 2)
    return int(config["num_hidden_layers"] * per_layer + embeddings + hidden)  # + final norm


def _gpt2_parameters(config: Mapping[str, Any]) -> int:
    width = config["n_embd"]
    inner = config.get("n_inner") or 4 * width
    attention = width * 3 * width + 3 * width + width * width + width  # c_attn, c_proj (with biases)
    mlp = width * inner + inner + inner * width + width  # c_fc, c_proj (with biases)
    per_layer = attention + mlp + 4 * width  # ln_1, ln_2 (weight and bias)
    embeddings = config["vocab_size"] * width + config["n_positions"] * width  # lm_head is tied
    return int(config["n_layer"] * per_layer + embeddings + 2 * width)  # + ln_f


def weights_directory(source: str, revision: str | None, *, local: bool) -> Path | None:
    """Where a model's files are on this machine: a local directory (whatever it holds), or the local Hugging Face
    cache's snapshot of a hub model at `revision` once its weights have been downloaded; None otherwise."""
    if local:
        directory = Path(source).expanduser()
        return directory if (directory / "config.json").is_file() else None
    from huggingface_hub import try_to_load_from_cache

    config = try_to_load_from_cache(source, "config.json", revision=revision)
    if not isinstance(config, str):
        return None
    snapshot = Path(config).parent
    return snapshot if any(p.suffix in WEIGHT_SUFFIXES for p in snapshot.iterdir()) else None
