"""What the kernel families share: module roles (which matrices a scope selects) and row-chunked rewriting.

A change here that alters any edited weight must bump the ``code_version`` of every catalogue
entry whose kernel uses it, or cached edits go stale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, cast

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

DEFAULT_CHUNK_ELEMS = 2**24
SCOPE_ROLES = {"ffn": ("ffn",), "attn": ("attn",), "all": ("attn", "ffn")}

_ATTENTION_CHILDREN = {"attn", "self_attn", "attention", "self_attention", "crossattention", "cross_attn"}
_MLP_CHILDREN = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe"}
_MLP_CLASS_MARKERS = ("MLP", "Moe", "MoE", "FeedForward")
# Blocks that hold their projections directly, without an attention or MLP child (OPT's decoder layer: fc1, fc2).
_MLP_PROJECTIONS = {
    "fc1",
    "fc2",
    "fc_in",
    "fc_out",
    "c_fc",
    "dense_h_to_4h",
    "dense_4h_to_h",
    "up_proj",
    "down_proj",
    "gate_proj",
}
_ATTENTION_PROJECTIONS = {"q_proj", "k_proj", "v_proj", "o_proj", "out_proj", "qkv_proj", "query_key_value", "c_attn"}
FUSED_EXPERT_PAIRS = {"gate_up_proj"}  # 3-D fused experts whose rows are two checkpoint matrices (see `matrices`)

# ----------------------------------------------------------------------------------------------
# Module roles


def decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The ModuleList holding the most parameters: the decoder blocks, whatever the model calls it."""
    lists = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no ModuleList of decoder blocks; cannot locate layers")
    return max(lists, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or "Norm" in type(module).__name__


def _is_router(name: str, module: nn.Module) -> bool:
    # Mixtral 4.x: mlp.gate (Linear); 5.x: mlp.gate (MixtralTopKRouter); Qwen-MoE: shared_expert_gate.
    return name in ("gate", "router") or name.endswith("_gate") or "Router" in type(module).__name__


def _block_child_role(name: str, module: nn.Module) -> str:
    cls = type(module).__name__
    if name in _ATTENTION_CHILDREN or "Attention" in cls or name in _ATTENTION_PROJECTIONS:
        return "attn"
    if name in _MLP_CHILDREN or any(marker in cls for marker in _MLP_CLASS_MARKERS) or name in _MLP_PROJECTIONS:
        return "ffn"
    return "norm" if _is_norm(module) else "other"


def _role_in_block(block: nn.Module, path: list[str]) -> str:
    """Role of a parameter at ``path`` (module names below the block): which block child it sits under."""
    if not path:
        return "other"
    module = block.get_submodule(path[0])
    role = _block_child_role(path[0], module)
    if role == "ffn":
        for name in path[1:]:
            module = module.get_submodule(name)
            if _is_router(name, module):
                return "router"
    return role


def _role_outside_blocks(model: nn.Module, module_path: str) -> str:
    module = model.get_submodule(module_path)
    if isinstance(module, nn.Embedding):
        return "embed"
    if module is model.get_output_embeddings():
        return "head"
    return "norm" if _is_norm(module) else "other"


def module_roles(model: nn.Module) -> dict[str, str]:
    """Map every parameter name (tied weights once) to attn | ffn | embed | head | norm | router | other.

    The role comes from the module tree, not from the parameter's name: which child of its decoder
    block it sits under (GPT-2's ``c_proj`` is attention under ``.attn`` and MLP under ``.mlp``).
    """
    layers_name, layers = decoder_layers(model)
    roles = {}
    for name, _ in model.named_parameters():
        module_path = name.rpartition(".")[0]
        if module_path.startswith(layers_name + "."):
            index, *path = module_path[len(layers_name) + 1 :].split(".")
            roles[name] = _role_in_block(layers[int(index)], path)
        else:
            roles[name] = _role_outside_blocks(model, module_path)
    return roles


def matrices(model: nn.Module, name: str) -> Iterator[Tensor]:
    """[out, in] views of one weight: itself, its transpose, or one per expert slice; nothing if not a matrix.

    A fused expert ``gate_up_proj`` is two matrices per expert, gate (w1) and up (w3): the published checkpoints
    (Mixtral's ``experts.N.w1``/``w3``) and the B200 harness's models hold them apart, and transformers 5
    concatenates them on load; so each half is its own matrix (its own scale, pruning threshold and SVD).
    """
    param = model.get_parameter(name)
    owner = model.get_submodule(name.rpartition(".")[0])
    transposed = isinstance(owner, Conv1D) or bool(getattr(owner, "is_transposed", False))
    slices = [param] if param.ndim == 2 else list(param) if param.ndim == 3 else []
    if param.ndim == 3 and name.rpartition(".")[2] in FUSED_EXPERT_PAIRS:
        slices = [half for matrix in slices for half in matrix.chunk(2, dim=1 if transposed else 0)]
    for matrix in slices:
        yield matrix.t() if transposed else matrix


def names_with_role(model: nn.Module, roles: tuple[str, ...], prefix: str = "") -> list[str]:
    """Matrix-shaped parameters (2-D, or 3-D fused experts) whose role is in ``roles``."""
    return [
        name
        for name, role in module_roles(model).items()
        if role in roles and name.startswith(prefix) and model.get_parameter(name).ndim in (2, 3)
    ]


def with_aliases(model: nn.Module, names: list[str]) -> list[str]:
    """State-dict names of the given parameters, tied aliases included (a tied lm_head changes with wte)."""
    targets = {id(model.get_parameter(name)) for name in names}
    return sorted(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in targets)


def edit_matrices(model: nn.Module, scope: str, kernel: Callable[[Tensor], object]) -> dict[str, Any]:
    """Apply a matrix kernel to every [out, in] matrix that ``scope`` selects; summarise what changed.

    A kernel that returns False left its matrix untouched (low-rank of an already thin matrix).
    """
    changed, count, elements = [], 0, 0
    for name in names_with_role(model, SCOPE_ROLES[scope]):
        touched = False
        for matrix in matrices(model, name):
            if kernel(matrix) is False:
                continue
            touched, count, elements = True, count + 1, elements + matrix.numel()
        if touched:
            changed.append(name)
    return {"scope": scope, "changed": with_aliases(model, changed), "matrices": count, "elements": elements}


def noop(model: nn.Module, *, chunk_elems: int) -> dict[str, Any]:
    """Calibration: change nothing."""
    return {"changed": []}


# ----------------------------------------------------------------------------------------------
# Row chunks


def no_grad[**P, R](kernel: Callable[P, R]) -> Callable[P, R]:
    """``@torch.no_grad()`` with the kernel's signature kept for mypy (which does not follow torch)."""
    return cast("Callable[P, R]", torch.no_grad()(kernel))


def row_slices(matrix: Tensor, chunk_elems: int) -> Iterator[slice]:
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be a positive element count, got {chunk_elems}; the default is 2**24")
    rows = max(1, chunk_elems // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], rows):
        yield slice(start, start + rows)


def rewrite_rows_(matrix: Tensor, chunk_elems: int, transform: Callable[[Tensor], Tensor]) -> None:
    """Replace each row chunk by ``transform(chunk in float32)``, cast back to the matrix dtype."""
    for rows in row_slices(matrix, chunk_elems):
        block = matrix[rows]
        block.copy_(transform(block.float()))


def abs_max(matrix: Tensor, chunk_elems: int) -> Tensor:
    peak = torch.zeros((), dtype=torch.float32, device=matrix.device)
    for rows in row_slices(matrix, chunk_elems):
        peak = torch.maximum(peak, matrix[rows].float().abs().amax())
    return peak


def grouped(block: Tensor, group: int) -> Tensor:
    """[rows, in] -> [rows, groups, group], zero-padding the last group (zeros never raise a max)."""
    padded = nn.functional.pad(block, (0, -block.shape[1] % group))
    return padded.reshape(block.shape[0], -1, group)


def ungrouped(groups: Tensor, columns: int) -> Tensor:
    return groups.reshape(groups.shape[0], -1)[:, :columns]


def usable_scale(scale: Tensor) -> Tensor:
    """Scales of all-zero (or non-finite) groups become 1, so those groups quantize to themselves."""
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))
