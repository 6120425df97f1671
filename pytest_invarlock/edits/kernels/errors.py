"""Error injections: the ten deliberately broken models InvarLock must detect, one kernel each."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from pytest_invarlock.edits.kernels.common import (
    decoder_layers,
    matrices,
    names_with_role,
    rewrite_rows_,
    row_slices,
    with_aliases,
)
from pytest_invarlock.edits.kernels.lowrank import rank_one_collapse_
from pytest_invarlock.edits.kernels.quant import rtn_quantize_

EXTREME_QUANT_BITS, EXTREME_QUANT_GROUP = 2, 128
EXPLOSION_FACTOR = 100.0
VOCAB_GROWTH = 8
UNTIE_NOISE = 0.01  # relative Gaussian noise on the untied lm_head copy


def _set_first_entry(model: nn.Module, name: str, value: float) -> dict[str, Any]:
    param = model.get_parameter(name)
    old = param[0, 0].item()
    param[0, 0] = value
    return {"changed": with_aliases(model, [name]), "index": [0, 0], "old_value": old, "new_value": str(value)}


def nan_injection(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    block_prefix = decoder_layers(model)[0] + ".0."
    first = next(n for n, p in model.named_parameters() if n.startswith(block_prefix) and p.ndim == 2)
    return _set_first_entry(model, first, float("nan"))


def inf_injection(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    return _set_first_entry(model, names_with_role(model, ("attn",), decoder_layers(model)[0] + ".0.")[0], math.inf)


def extreme_quant(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    names = [name for name, p in model.named_parameters() if p.ndim in (2, 3)]
    for name in names:
        for matrix in matrices(model, name):
            rtn_quantize_(matrix, EXTREME_QUANT_BITS, EXTREME_QUANT_GROUP, chunk_elems=chunk_elems)
    return {"changed": with_aliases(model, names), "bits": EXTREME_QUANT_BITS, "group": EXTREME_QUANT_GROUP}


def scale_explosion(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    name = names_with_role(model, ("ffn",))[0]
    for matrix in matrices(model, name):
        rewrite_rows_(matrix, chunk_elems, lambda block: block * EXPLOSION_FACTOR)
    return {"changed": with_aliases(model, [name]), "factor": EXPLOSION_FACTOR}


def zero_layer(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    layers_name, layers = decoder_layers(model)
    middle = len(layers) // 2
    prefix = f"{layers_name}.{middle}."
    # Parameters that are zero already (fresh biases) are not reported as changed.
    names = [name for name, param in model.named_parameters() if name.startswith(prefix) and bool(param.any())]
    for name in names:
        model.get_parameter(name).zero_()
    return {"changed": with_aliases(model, names), "layer": middle}


def _fill_rows_with_mean_(weight: Tensor, old_rows: int, chunk_elems: int) -> None:
    total = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    for rows in row_slices(weight[:old_rows], chunk_elems):
        total += weight[rows].float().sum(0)
    weight[old_rows:] = (total / old_rows).to(weight.dtype)


def shape_mismatch(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    old_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old_vocab + VOCAB_GROWTH, mean_resizing=False)
    # New rows would be randomly initialised; the old-row mean keeps the edit deterministic.
    resized = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    for weight in resized.values():
        _fill_rows_with_mean_(weight, old_vocab, chunk_elems)
    changed = sorted(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in resized)
    return {"changed": changed, "old_vocab": old_vocab, "new_vocab": old_vocab + VOCAB_GROWTH, "new_rows": "mean"}


def missing_tensors(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    _, layers = decoder_layers(model)
    before = set(model.state_dict())
    del layers[len(layers) - 1]
    config = model.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):  # per-layer attention types must match the layer count
        config.layer_types = list(config.layer_types[: len(layers)])
    removed = sorted(before - set(model.state_dict()))
    return {"changed": [], "removed": removed, "removed_layer": len(layers), "num_hidden_layers": len(layers)}


def _rewrite_attention_(model: nn.Module, kernel: Callable[[Tensor], object]) -> dict[str, Any]:
    """Apply ``kernel`` to every attention matrix of every block."""
    names = names_with_role(model, ("attn",))
    for name in names:
        for matrix in matrices(model, name):
            kernel(matrix)
    return {"changed": with_aliases(model, names)}


def rank_collapse(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    return _rewrite_attention_(model, lambda matrix: rank_one_collapse_(matrix, chunk_elems=chunk_elems))


def norm_collapse(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    return _rewrite_attention_(model, Tensor.zero_)


def _perturbed_copy(weight: Tensor, chunk_elems: int) -> Tensor:
    perturbed = weight.detach().clone()
    generator = torch.Generator(device=perturbed.device).manual_seed(0)
    for rows in row_slices(perturbed, chunk_elems):
        block = perturbed[rows]
        noise = torch.randn(block.shape, generator=generator, device=perturbed.device)
        block.copy_(block.float() * (1 + UNTIE_NOISE * noise))
    return perturbed


def weight_tying_break(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    embedding, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head.weight is embedding.weight
    if tied:
        head.weight = nn.Parameter(_perturbed_copy(embedding.weight, chunk_elems), embedding.weight.requires_grad)
    else:
        head.weight = embedding.weight
    model.config.tie_word_embeddings = not tied
    head_name = next(name for name, module in model.named_modules() if module is head)
    action = {"action": "untie", "relative_noise": UNTIE_NOISE} if tied else {"action": "tie"}
    return {"changed": [f"{head_name}.weight"]} | action
