"""Memory plan: how much GPU memory an item needs, from a model profile. Pure, no torch.

The controller places items before any weights are on its disk and must never import torch, so a
profile comes from the model's files once they are here (`campaign.model_files`: config.json and the
safetensors headers), from a HF `config.json` dict, or, until then, from the size a suite declares. The formulas are the B200 bash harness's
(docs/gpu-nodes.md, "The memory plan").
GB means 2**30 bytes throughout, the unit NVML totals are converted with.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from pytest_invarlock.campaign.model_files import DECODER_FAMILIES, GPT2_FAMILY, ModelFiles, count_parameters

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}

SETUP_OVERHEAD_GB = 4.0
EDIT_OVERHEAD_GB = 8.0  # creating an edit holds the weights plus the edit's scratch tensors
CERTIFY_OVERHEAD_GB = 6.0
OTHER_OVERHEAD_GB = 6.0  # lm-eval benchmarks and anything without a KV term
PRESET_GB = 5.0
# Item kinds the plan knows; clean and stress items are certify-of-an-edit like "edit".
EDIT_KINDS = ("edit", "clean", "stress")
KINDS = ("setup", "calibration", *EDIT_KINDS, "error", "benchmark", "preset")


def dtype_bytes(dtype: str) -> int:
    try:
        return DTYPE_BYTES[dtype]
    except KeyError:
        raise ValueError(
            f"unknown dtype {dtype!r}: the memory plan needs the bytes per weight. "
            f"Use one of {', '.join(DTYPE_BYTES)} (the suite's `dtype:` field)."
        ) from None


@dataclass(frozen=True)
class ModelProfile:
    """What the memory plan needs to know about a model; vocab is 0 when only a size was declared."""

    params: int
    weights_gb: float
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    dtype_bytes: int
    vocab: int
    is_moe: bool = False

    @classmethod
    def from_config(cls, config: Mapping[str, Any], dtype: str) -> ModelProfile:
        """Exact profile from a HF config.json dict (llama, mistral, qwen2, mixtral, gpt2 families)."""
        width = dtype_bytes(dtype)
        model_type = config.get("model_type")
        if model_type == GPT2_FAMILY:
            heads = config["n_head"]
            shape = dict(
                layers=config["n_layer"],
                hidden=config["n_embd"],
                heads=heads,
                kv_heads=heads,
                head_dim=config["n_embd"] // heads,
                vocab=config["vocab_size"],
                is_moe=False,
            )
        elif model_type in DECODER_FAMILIES:
            heads = config["num_attention_heads"]
            shape = dict(
                layers=config["num_hidden_layers"],
                hidden=config["hidden_size"],
                heads=heads,
                kv_heads=config.get("num_key_value_heads") or heads,
                head_dim=config.get("head_dim") or config["hidden_size"] // heads,
                vocab=config["vocab_size"],
                is_moe=bool(config.get("num_local_experts")),
            )
        else:
            raise ValueError(
                f"config.json has model_type {model_type!r}, which the torch-free memory plan cannot count. "
                f"Supported: {', '.join([*DECODER_FAMILIES, GPT2_FAMILY])}; for another family declare the size "
                "in the suite (params_b) so the plan uses ModelProfile.from_declared."
            )
        params = count_parameters(config)
        return cls(params=params, weights_gb=params * width / GIB, dtype_bytes=width, **shape)

    @classmethod
    def from_files(cls, files: ModelFiles, dtype: str) -> ModelProfile:
        """Profile of a checkpoint on disk: its parameter count (safetensors headers first) and config shape,
        any family; `dtype` is the one the suite loads it in."""
        width = dtype_bytes(dtype)
        shape = files.shape()
        missing = [name for name in ("layers", "hidden", "heads") if name not in shape]
        if missing:
            declared = cls.from_declared(files.params_b, dtype, is_moe=files.is_moe, **shape)
            return replace(declared, params=files.parameters, weights_gb=files.parameters * width / GIB)
        return cls(
            params=files.parameters,
            weights_gb=files.parameters * width / GIB,
            layers=shape["layers"],
            hidden=shape["hidden"],
            heads=shape["heads"],
            kv_heads=shape["kv_heads"],
            head_dim=shape["head_dim"],
            dtype_bytes=width,
            vocab=shape.get("vocab", 0),
            is_moe=files.is_moe,
        )

    @classmethod
    def from_declared(
        cls,
        params_b: float,
        dtype: str,
        *,
        is_moe: bool = False,
        layers: int | None = None,
        hidden: int | None = None,
        heads: int | None = None,
        kv_heads: int | None = None,
        head_dim: int | None = None,
        vocab: int = 0,
    ) -> ModelProfile:
        """Profile from a declared size when no config.json is at hand.

        Missing shape fields are estimated from the usual dense scaling (params ~ 12 * layers *
        hidden^2, hidden ~ 128 * layers) and the attention is assumed to be full multi-head (no
        grouped KV heads): the KV estimate then errs high, so an item may get a GPU too many but
        never one too few. Pass the real shape where it is known.
        """
        if params_b <= 0:
            raise ValueError(f"declared size must be positive, got params_b={params_b}. Give the parameter count in billions.")
        params = round(params_b * 1e9)
        hidden = hidden or max(128, 128 * round((params * 128 / 12) ** (1 / 3) / 128))
        layers = layers or max(1, round(params / (12 * hidden**2)))
        heads = heads or max(1, hidden // 128)
        width = dtype_bytes(dtype)
        return cls(
            params=params,
            weights_gb=params * width / GIB,
            layers=layers,
            hidden=hidden,
            heads=heads,
            kv_heads=kv_heads or heads,
            head_dim=head_dim or hidden // heads,
            dtype_bytes=width,
            vocab=vocab,
            is_moe=is_moe,
        )


def kv_cache_gb(profile: ModelProfile, *, seq_len: int, batch: int) -> float:
    return 2 * profile.layers * batch * seq_len * profile.kv_heads * profile.head_dim * profile.dtype_bytes / GIB


def item_memory_gb(profile: ModelProfile, kind: str, *, seq_len: int, batch: int) -> float:
    """Peak GB one item of `kind` needs: weights plus the B200 bash harness's per-kind overhead.

    An edit or error item creates its model once and then certifies it, one after the other, so
    it needs the larger of the two peaks.
    """
    weights = profile.weights_gb
    certify = weights + kv_cache_gb(profile, seq_len=seq_len, batch=batch) + CERTIFY_OVERHEAD_GB
    if kind == "calibration":
        return certify
    if kind in EDIT_KINDS or kind == "error":
        return max(weights + EDIT_OVERHEAD_GB, certify)
    if kind == "benchmark":
        return weights + OTHER_OVERHEAD_GB
    if kind == "setup":
        return weights + SETUP_OVERHEAD_GB
    if kind == "preset":
        return PRESET_GB
    raise ValueError(f"unknown item kind {kind!r} for the memory plan. Use one of {', '.join(KINDS)}.")


def required_gpus(mem_gb: float, device_capacity_gb: float) -> int:
    """GPUs an item of mem_gb needs when sharded over devices of device_capacity_gb each."""
    if device_capacity_gb <= 0:
        raise ValueError(f"device capacity must be positive, got {device_capacity_gb} GB.")
    return max(1, math.ceil(mem_gb / device_capacity_gb))


@dataclass(frozen=True)
class MarginRule:
    """How much of a GPU an item may plan for: one rule for planning and dispatch, from what the GPU reports.

    The budget of a device is its *free* memory as last read (NVML's `free`, or the `:FREE` part of a
    `--gpus` spec; never more than its total) less

    - a safety margin: a fraction of the total, larger on smaller devices (the B200 bash harness's 2% / 5% / 10%),
      for fragmentation and for readings that move while items start;
    - the allocator residue: what an idle worker process keeps on its home GPU between models (CUDA
      context ~0.5 GB, cuBLAS workspaces and what the caching allocator cannot return after
      `torch.cuda.empty_cache()`). A reading taken before the workers started does not show it;
      one taken later does, so it is counted twice there: at most `residue_gb`, on the safe side.

    The driver's own reserve (an idle 80 GB H100 reports ~79.2 GB free) is in the reading, so it is
    never planned for: planning on the total made multi-GPU gathers that no reading could complete.
    A device with less than min_free_gb free (other processes hold it) takes no new work at all; on a
    device smaller than twice that (a 10 GB MIG slice) the floor is half its total, so an idle one works.
    """

    large_gb: float = 160.0
    large: float = 0.02
    medium_gb: float = 80.0
    medium: float = 0.05
    small: float = 0.10
    min_free_gb: float = 10.0
    residue_gb: float = 1.0

    def fraction(self, total_gb: float) -> float:
        if total_gb >= self.large_gb:
            return self.large
        return self.medium if total_gb >= self.medium_gb else self.small

    def reserve_gb(self, total_gb: float) -> float:
        """What the rule keeps back on a device besides what its reading already excludes."""
        return total_gb * self.fraction(total_gb) + self.residue_gb

    def usable_gb(self, total_gb: float, free_gb: float | None = None) -> float:
        """GB an item may plan for on a device: its free memory (the total when unknown) less the reserve."""
        if free_gb is not None and free_gb < min(self.min_free_gb, total_gb / 2):
            return 0.0
        available = total_gb if free_gb is None else min(free_gb, total_gb)
        return max(0.0, available - self.reserve_gb(total_gb))

    def describe(self) -> str:
        return (
            f"free memory less a {self.large:.0%}-{self.small:.0%} safety margin "
            f"and {self.residue_gb:g} GB worker residue per GPU"
        )
