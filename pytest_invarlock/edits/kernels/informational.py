"""Informational injections: mild faults aimed at one guard each (rmt, spectral, variance).

The evidence-pack suites run them beside the must-detect errors and judge them only by whether the
targeted guard (or its probe sidecar) shows a signal: each keeps the primary metric and the
invariants healthy on purpose. Deterministic: every choice and every noise draw is seeded.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import nn

from pytest_invarlock.edits.kernels.common import decoder_layers, matrices, module_roles, names_with_role, with_aliases

SEED = 42
RMT_NOISE_SCALE = 0.05  # relative Gaussian noise on the norm gains
RMT_LAST_BLOCKS = 4
SPECTRAL_FACTOR = 1.5
SPECTRAL_MAX_MATRICES = 8
VE_FACTOR = 0.90
# The matrix a block's attention (or MLP) writes its output through, by the names transformers uses.
ATTENTION_OUTPUTS = ("o_proj", "out_proj", "c_proj", "dense", "wo")
MLP_OUTPUTS = ("down_proj", "c_proj", "fc2", "w2", "dense_4h_to_h", "wo")


def _output_matrices(model: nn.Module, role: str, suffixes: tuple[str, ...]) -> list[str]:
    """Per block, the matrices of `role` (attn or ffn) named like an output projection (o_proj, down_proj, ...).

    The name is the module's (`...self_attn.o_proj.weight`) or, for fused MoE experts, the parameter's own
    (`...mlp.experts.down_proj`)."""

    def leaf(name: str) -> str:
        parts = name.split(".")
        return parts[-2] if parts[-1] in ("weight", "bias") and len(parts) > 1 else parts[-1]

    return [name for name in names_with_role(model, (role,)) if leaf(name) in suffixes]


def rmt_norm_noise(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    """Multiply every norm gain (weight, not bias) of the last blocks by (1 + 0.05 z), z standard normal (seeded)."""
    layers_name, layers = decoder_layers(model)
    first = max(0, len(layers) - RMT_LAST_BLOCKS)
    prefixes = tuple(f"{layers_name}.{index}." for index in range(first, len(layers)))
    roles = module_roles(model)
    names = [name for name, role in roles.items() if role == "norm" and name.startswith(prefixes) and name.endswith("weight")]
    generator = torch.Generator().manual_seed(SEED)
    for name in names:
        param = model.get_parameter(name)
        noise = torch.randn(param.shape, generator=generator).to(param.device)
        param.copy_(param.float() * (1 + RMT_NOISE_SCALE * noise))
    return {
        "changed": with_aliases(model, names),
        "relative_noise": RMT_NOISE_SCALE,
        "blocks": list(range(first, len(layers))),
        "seed": SEED,
    }


def spectral_moderate_scale(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    """Scale at most eight attention output projections (a seeded choice) by 1.5."""
    candidates = _output_matrices(model, "attn", ATTENTION_OUTPUTS)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no attention output projection ({', '.join(ATTENTION_OUTPUTS)}) to scale")
    chosen = sorted(random.Random(SEED).sample(candidates, min(SPECTRAL_MAX_MATRICES, len(candidates))))
    for name in chosen:
        for matrix in matrices(model, name):
            matrix.mul_(SPECTRAL_FACTOR)
    return {"changed": with_aliases(model, chosen), "factor": SPECTRAL_FACTOR, "seed": SEED}


def ve_mlp_scale_skew(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    """Scale one MLP output projection (a seeded choice) by 0.9: a variance skew VE can propose to undo."""
    candidates = _output_matrices(model, "ffn", MLP_OUTPUTS)
    if not candidates:
        raise ValueError(f"{type(model).__name__} has no MLP output projection ({', '.join(MLP_OUTPUTS)}) to skew")
    name = random.Random(SEED).choice(candidates)
    for matrix in matrices(model, name):
        matrix.mul_(VE_FACTOR)
    return {"changed": with_aliases(model, [name]), "factor": VE_FACTOR, "seed": SEED}
