"""The scenario catalogue as weight math: apply an EditSpec to an in-memory Hugging Face causal LM.

Everything happens in place, under no_grad, on the device and in the dtype where each weight
lives. Kernels walk a matrix in row chunks (computing in float32, writing back in the model
dtype), so a 70B model's largest matrix never needs a second full-size copy; the one exception
is low-rank SVD, which holds the matrix once in float32.

Every kernel sees a weight as an [out, in] matrix: GPT-2's Conv1D stores [in, out] and some
fused MoE experts store [E, in, out], so they are handed over as transposed views, and a fused
3-D expert tensor is edited one expert slice at a time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from pytest_invarlock.edits.catalogue import EditSpec, parse_spec

DEFAULT_CHUNK_ELEMS = 2**24
SCOPE_ROLES = {"ffn": ("ffn",), "attn": ("attn",), "all": ("attn", "ffn")}
FP4_GROUP = 32  # OCP MXFP4 block size
AGGRESSIVE_QUANTILE = 0.9  # fp4:aggressive scales rows from this |w| quantile, so the tail saturates
EXACT_SVD_MAX_DIM = 1024  # above this, randomized SVD (seeded) instead of a full decomposition
EXTREME_QUANT_BITS, EXTREME_QUANT_GROUP = 2, 128
EXPLOSION_FACTOR = 100.0
VOCAB_GROWTH = 8
UNTIE_NOISE = 0.01  # relative Gaussian noise on the untied lm_head copy

_FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
_E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
_ATTENTION_CHILDREN = {"attn", "self_attn", "attention", "self_attention", "crossattention", "cross_attn"}
_MLP_CHILDREN = {"mlp", "feed_forward", "ffn", "block_sparse_moe", "moe"}
_MLP_CLASS_MARKERS = ("MLP", "Moe", "MoE", "FeedForward")

# ----------------------------------------------------------------------------------------------
# Module roles


def _decoder_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
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
    if name in _ATTENTION_CHILDREN or "Attention" in cls:
        return "attn"
    if name in _MLP_CHILDREN or any(marker in cls for marker in _MLP_CLASS_MARKERS):
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
    layers_name, layers = _decoder_layers(model)
    roles = {}
    for name, _ in model.named_parameters():
        module_path = name.rpartition(".")[0]
        if module_path.startswith(layers_name + "."):
            index, *path = module_path[len(layers_name) + 1 :].split(".")
            roles[name] = _role_in_block(layers[int(index)], path)
        else:
            roles[name] = _role_outside_blocks(model, module_path)
    return roles


def _matrices(model: nn.Module, name: str) -> Iterator[Tensor]:
    """[out, in] views of one weight: itself, its transpose, or one per expert slice; nothing if not a matrix."""
    param = model.get_parameter(name)
    owner = model.get_submodule(name.rpartition(".")[0])
    transposed = isinstance(owner, Conv1D) or bool(getattr(owner, "is_transposed", False))
    slices = [param] if param.ndim == 2 else list(param) if param.ndim == 3 else []
    for matrix in slices:
        yield matrix.t() if transposed else matrix


def _names_with_role(model: nn.Module, roles: tuple[str, ...], prefix: str = "") -> list[str]:
    """Matrix-shaped parameters (2-D, or 3-D fused experts) whose role is in ``roles``."""
    return [
        name
        for name, role in module_roles(model).items()
        if role in roles and name.startswith(prefix) and model.get_parameter(name).ndim in (2, 3)
    ]


# ----------------------------------------------------------------------------------------------
# Chunked matrix kernels


def _row_slices(matrix: Tensor, chunk_elems: int) -> Iterator[slice]:
    if chunk_elems < 1:
        raise ValueError(f"chunk_elems must be a positive element count, got {chunk_elems}; the default is 2**24")
    rows = max(1, chunk_elems // max(1, matrix.shape[1]))
    for start in range(0, matrix.shape[0], rows):
        yield slice(start, start + rows)


def _rewrite_rows_(matrix: Tensor, chunk_elems: int, transform: Callable[[Tensor], Tensor]) -> None:
    """Replace each row chunk by ``transform(chunk in float32)``, cast back to the matrix dtype."""
    for rows in _row_slices(matrix, chunk_elems):
        block = matrix[rows]
        block.copy_(transform(block.float()))


def _abs_max(matrix: Tensor, chunk_elems: int) -> Tensor:
    peak = torch.zeros((), dtype=torch.float32, device=matrix.device)
    for rows in _row_slices(matrix, chunk_elems):
        peak = torch.maximum(peak, matrix[rows].float().abs().amax())
    return peak


def _grouped(block: Tensor, group: int) -> Tensor:
    """[rows, in] -> [rows, groups, group], zero-padding the last group (zeros never raise a max)."""
    padded = nn.functional.pad(block, (0, -block.shape[1] % group))
    return padded.reshape(block.shape[0], -1, group)


def _ungrouped(groups: Tensor, columns: int) -> Tensor:
    return groups.reshape(groups.shape[0], -1)[:, :columns]


def _usable(scale: Tensor) -> Tensor:
    """Scales of all-zero (or non-finite) groups become 1, so those groups quantize to themselves."""
    return torch.where(torch.isfinite(scale) & (scale > 0), scale, torch.ones_like(scale))


def _pow2_ceil_scale(peak: Tensor, top: float) -> Tensor:
    """Smallest power of two s with peak / s <= top, computed exactly from the binary exponents.

    A power-of-two scale divides without rounding, which makes the FP8/FP4 round trips idempotent.
    """
    top_mantissa, top_exponent = math.frexp(top)
    mantissa, exponent = torch.frexp(peak)
    exponent = exponent - top_exponent + (mantissa > top_mantissa).to(exponent.dtype)
    return _usable(torch.ldexp(torch.ones_like(peak), exponent) * (peak > 0))


@torch.no_grad()
def rtn_quantize_(matrix: Tensor, bits: int, group: int, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Symmetric round-to-nearest, group-wise along the input dim of each output row.

    scale = max|w| / (2^(b-1) - 1) per group; one scale for the whole matrix when in < group.
    """
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def quantize(values: Tensor, scale: Tensor) -> Tensor:
        return torch.clamp(torch.round(values / scale), low, high) * scale

    if matrix.shape[1] < group:
        scale = _usable(_abs_max(matrix, chunk_elems) / high)
        _rewrite_rows_(matrix, chunk_elems, lambda block: quantize(block, scale))
        return

    def per_group(block: Tensor) -> Tensor:
        groups = _grouped(block, group)
        return _ungrouped(quantize(groups, _usable(groups.abs().amax(-1, keepdim=True) / high)), block.shape[1])

    _rewrite_rows_(matrix, chunk_elems, per_group)


@torch.no_grad()
def fp8_round_trip_(matrix: Tensor, fmt: str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Cast to float8 (e4m3fn or e5m2) and back, with one power-of-two scale per matrix.

    The scale puts max|w| in the format's top binade: without it, typical weights (|w| ~ 0.02)
    would fall into e4m3's subnormals, and no value saturates.
    """
    dtype = _FP8_DTYPES[fmt]
    scale = _pow2_ceil_scale(_abs_max(matrix, chunk_elems), torch.finfo(dtype).max)
    _rewrite_rows_(matrix, chunk_elems, lambda block: (block / scale).to(dtype).float() * scale)


def _round_to_e2m1(scaled: Tensor) -> Tensor:
    """Nearest E2M1 value with sign; magnitudes beyond 6 saturate at 6."""
    grid = torch.tensor(_E2M1_GRID, device=scaled.device)
    index = torch.bucketize(scaled.abs().contiguous(), (grid[1:] + grid[:-1]) / 2)
    return torch.sign(scaled) * grid[index]


def _pow2_floor_scale(reference: Tensor) -> Tensor:
    """Power of two s with reference / s in [4, 8), E2M1's top binade: everything above 6*s saturates."""
    _, exponent = torch.frexp(reference)
    return _usable(torch.ldexp(torch.ones_like(reference), exponent - 3) * (reference > 0))


@torch.no_grad()
def fp4_round_trip_(matrix: Tensor, variant: str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Simulated FP4 E2M1 with power-of-two scales.

    e2m1: one scale per FP4_GROUP inputs, chosen so the group's max does not saturate.
    aggressive: one scale per row, from the AGGRESSIVE_QUANTILE of |w| placed in the top binade,
    so the row's largest weights clip to 6*scale and small ones round to zero.
    """

    def per_group(block: Tensor) -> Tensor:
        groups = _grouped(block, FP4_GROUP)
        scale = _pow2_ceil_scale(groups.abs().amax(-1, keepdim=True), _E2M1_GRID[-1])
        return _ungrouped(_round_to_e2m1(groups / scale) * scale, block.shape[1])

    def per_row(block: Tensor) -> Tensor:
        magnitudes = block.abs()
        rank = max(1, round(AGGRESSIVE_QUANTILE * block.shape[1]))
        reference = magnitudes.kthvalue(rank, dim=1, keepdim=True).values
        reference = torch.where(reference > 0, reference, magnitudes.amax(1, keepdim=True))
        scale = _pow2_floor_scale(reference)
        return _round_to_e2m1(block / scale) * scale

    _rewrite_rows_(matrix, chunk_elems, per_row if variant == "aggressive" else per_group)


def _magnitude_bits(block: Tensor) -> Tensor:
    """|w| in float32 read as int32: non-negative floats order exactly like their bit patterns."""
    return block.float().abs().contiguous().view(torch.int32)


_RADIX_DIGITS = ((20, 11), (10, 10), (0, 10))  # (shift, width): the 31 bits of a non-negative float32


def _digit_histogram(matrix: Tensor, chunk_elems: int, prefix: int, shift: int, width: int) -> Tensor:
    """Counts of digit ``(bits >> shift) & (2^width - 1)`` over the magnitudes whose higher bits equal ``prefix``'s."""
    counts = torch.zeros(1 << width, dtype=torch.int64, device=matrix.device)
    above = shift + width
    for rows in _row_slices(matrix, chunk_elems):
        bits = _magnitude_bits(matrix[rows])
        selected = bits[(bits >> above) == (prefix >> above)]
        counts += torch.bincount((selected >> shift) & ((1 << width) - 1), minlength=1 << width)
    return counts


def _kth_smallest_magnitude_bits(matrix: Tensor, k: int, chunk_elems: int) -> tuple[int, int]:
    """Bit pattern of the k-th smallest |w| (1-based) and the count strictly below it.

    A radix select, one pass per digit: exact, and |w| is never held whole.
    """
    prefix, below = 0, 0
    for shift, width in _RADIX_DIGITS:
        cumulative = _digit_histogram(matrix, chunk_elems, prefix, shift, width).cumsum(0)
        digit = int((cumulative < k - below).sum())  # first digit whose cumulative count reaches the rank
        below += int(cumulative[digit - 1]) if digit else 0
        prefix |= digit << shift
    return prefix, below


@torch.no_grad()
def magnitude_prune_(matrix: Tensor, fraction: float, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> int:
    """Zero exactly round(fraction * numel) smallest-|w| entries; ties fall in row-major order. Returns the count."""
    k = round(fraction * matrix.numel())
    if k == 0:
        return 0
    threshold, below = _kth_smallest_magnitude_bits(matrix, k, chunk_elems)
    ties_left = k - below
    for rows in _row_slices(matrix, chunk_elems):
        block = matrix[rows]
        bits = _magnitude_bits(block)
        drop = bits < threshold
        if ties_left:
            ties = (bits == threshold).flatten().nonzero()[:ties_left, 0]
            drop.view(-1)[ties] = True
            ties_left -= ties.numel()
        block.masked_fill_(drop, 0)
    return k


def _top_singular_triplets(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """U[:, :r], S[:r], Vh[:r] in float32: exact SVD for small matrices, seeded randomized SVD otherwise."""
    full = matrix.float()
    if min(full.shape) <= EXACT_SVD_MAX_DIM:
        u, s, vh = torch.linalg.svd(full, full_matrices=False)
    else:
        devices = [full.device.index or 0] if full.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=full.device.type):
            torch.manual_seed(0)  # same edit, same weights: edited models are cached by content
            u, s, v = torch.svd_lowrank(full, q=min(rank + 16, *full.shape), niter=4)
        vh = v.mT
    return u[:, :rank], s[:rank], vh[:rank]


def _write_product_(matrix: Tensor, left: Tensor, right: Tensor, chunk_elems: int) -> None:
    """matrix = left @ right, row chunk by row chunk.

    BLAS picks kernels by shape, so other chunk sizes can differ in the last float32 bit.
    """
    for rows in _row_slices(matrix, chunk_elems):
        matrix[rows].copy_(left[rows] @ right)


@torch.no_grad()
def lowrank_svd_(matrix: Tensor, rank: int, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> bool:
    """Replace the matrix by its best rank-``rank`` approximation; False (untouched) if already that thin."""
    if rank >= min(matrix.shape):
        return False
    u, s, vh = _top_singular_triplets(matrix, rank)
    _write_product_(matrix, u * s, vh, chunk_elems)
    return True


@torch.no_grad()
def rank_one_collapse_(matrix: Tensor, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Replace the matrix by a rank-1 outer product (top singular pair) with the same Frobenius norm."""
    norm = torch.zeros((), dtype=torch.float32, device=matrix.device)
    for rows in _row_slices(matrix, chunk_elems):
        norm += matrix[rows].float().square().sum()
    u, _, vh = _top_singular_triplets(matrix, 1)
    _write_product_(matrix, u * norm.sqrt(), vh, chunk_elems)


# ----------------------------------------------------------------------------------------------
# Applying specs


def _with_aliases(model: nn.Module, names: list[str]) -> list[str]:
    """State-dict names of the given parameters, tied aliases included (a tied lm_head changes with wte)."""
    targets = {id(model.get_parameter(name)) for name in names}
    return sorted(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in targets)


def _edit_matrices(model: nn.Module, spec: EditSpec, chunk_elems: int) -> dict:
    changed, matrices, elements, zeroed = [], 0, 0, 0
    for name in _names_with_role(model, SCOPE_ROLES[spec.scope]):
        touched = False
        for matrix in _matrices(model, name):
            match spec.kind:
                case "quant_rtn":
                    rtn_quantize_(matrix, spec.bits, spec.group, chunk_elems=chunk_elems)
                case "fp8":
                    fp8_round_trip_(matrix, spec.variant, chunk_elems=chunk_elems)
                case "fp4":
                    fp4_round_trip_(matrix, spec.variant, chunk_elems=chunk_elems)
                case "magnitude_prune":
                    zeroed += magnitude_prune_(matrix, spec.fraction, chunk_elems=chunk_elems)
                case "lowrank_svd":
                    if not lowrank_svd_(matrix, spec.rank, chunk_elems=chunk_elems):
                        continue
            touched, matrices, elements = True, matrices + 1, elements + matrix.numel()
        if touched:
            changed.append(name)
    summary = {"changed": _with_aliases(model, changed), "matrices": matrices, "elements": elements}
    return summary | ({"zeroed": zeroed} if spec.kind == "magnitude_prune" else {})


def _set_first_entry(model: nn.Module, name: str, value: float) -> dict:
    param = model.get_parameter(name)
    old = param[0, 0].item()
    param[0, 0] = value
    return {"changed": _with_aliases(model, [name]), "index": [0, 0], "old_value": old, "new_value": str(value)}


def _inject_nan(model: nn.Module, chunk_elems: int) -> dict:
    block_prefix = _decoder_layers(model)[0] + ".0."
    first = next(n for n, p in model.named_parameters() if n.startswith(block_prefix) and p.ndim == 2)
    return _set_first_entry(model, first, float("nan"))


def _inject_inf(model: nn.Module, chunk_elems: int) -> dict:
    return _set_first_entry(model, _names_with_role(model, ("attn",), _decoder_layers(model)[0] + ".0.")[0], math.inf)


def _extreme_quant(model: nn.Module, chunk_elems: int) -> dict:
    names = [name for name, p in model.named_parameters() if p.ndim in (2, 3)]
    for name in names:
        for matrix in _matrices(model, name):
            rtn_quantize_(matrix, EXTREME_QUANT_BITS, EXTREME_QUANT_GROUP, chunk_elems=chunk_elems)
    return {"changed": _with_aliases(model, names), "bits": EXTREME_QUANT_BITS, "group": EXTREME_QUANT_GROUP}


def _scale_explosion(model: nn.Module, chunk_elems: int) -> dict:
    name = _names_with_role(model, ("ffn",))[0]
    for matrix in _matrices(model, name):
        _rewrite_rows_(matrix, chunk_elems, lambda block: block * EXPLOSION_FACTOR)
    return {"changed": _with_aliases(model, [name]), "factor": EXPLOSION_FACTOR}


def _zero_layer(model: nn.Module, chunk_elems: int) -> dict:
    layers_name, layers = _decoder_layers(model)
    middle = len(layers) // 2
    prefix = f"{layers_name}.{middle}."
    # Parameters that are zero already (fresh biases) are not reported as changed.
    names = [name for name, param in model.named_parameters() if name.startswith(prefix) and bool(param.any())]
    for name in names:
        model.get_parameter(name).zero_()
    return {"changed": _with_aliases(model, names), "layer": middle}


def _fill_rows_with_mean_(weight: Tensor, old_rows: int, chunk_elems: int) -> None:
    total = torch.zeros(weight.shape[1], dtype=torch.float32, device=weight.device)
    for rows in _row_slices(weight[:old_rows], chunk_elems):
        total += weight[rows].float().sum(0)
    weight[old_rows:] = (total / old_rows).to(weight.dtype)


def _shape_mismatch(model: nn.Module, chunk_elems: int) -> dict:
    old_vocab = model.get_input_embeddings().weight.shape[0]
    model.resize_token_embeddings(old_vocab + VOCAB_GROWTH, mean_resizing=False)
    # New rows would be randomly initialised; the old-row mean keeps the edit deterministic.
    resized = {id(m.weight): m.weight for m in (model.get_input_embeddings(), model.get_output_embeddings())}
    for weight in resized.values():
        _fill_rows_with_mean_(weight, old_vocab, chunk_elems)
    changed = sorted(n for n, p in model.named_parameters(remove_duplicate=False) if id(p) in resized)
    return {"changed": changed, "old_vocab": old_vocab, "new_vocab": old_vocab + VOCAB_GROWTH, "new_rows": "mean"}


def _missing_tensors(model: nn.Module, chunk_elems: int) -> dict:
    _, layers = _decoder_layers(model)
    before = set(model.state_dict())
    del layers[len(layers) - 1]
    config = model.config
    config.num_hidden_layers = len(layers)
    if getattr(config, "layer_types", None):  # per-layer attention types must match the layer count
        config.layer_types = list(config.layer_types[: len(layers)])
    removed = sorted(before - set(model.state_dict()))
    return {"changed": [], "removed": removed, "removed_layer": len(layers), "num_hidden_layers": len(layers)}


def _rewrite_attention_(model: nn.Module, kernel: Callable[[Tensor], object]) -> dict:
    """Apply ``kernel`` to every attention matrix of every block."""
    names = _names_with_role(model, ("attn",))
    for name in names:
        for matrix in _matrices(model, name):
            kernel(matrix)
    return {"changed": _with_aliases(model, names)}


def _rank_collapse(model: nn.Module, chunk_elems: int) -> dict:
    return _rewrite_attention_(model, lambda matrix: rank_one_collapse_(matrix, chunk_elems=chunk_elems))


def _norm_collapse(model: nn.Module, chunk_elems: int) -> dict:
    return _rewrite_attention_(model, Tensor.zero_)


def _perturbed_copy(weight: Tensor, chunk_elems: int) -> Tensor:
    perturbed = weight.detach().clone()
    generator = torch.Generator(device=perturbed.device).manual_seed(0)
    for rows in _row_slices(perturbed, chunk_elems):
        block = perturbed[rows]
        noise = torch.randn(block.shape, generator=generator, device=perturbed.device)
        block.copy_(block.float() * (1 + UNTIE_NOISE * noise))
    return perturbed


def _weight_tying_break(model: nn.Module, chunk_elems: int) -> dict:
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


_INJECTIONS: dict[str, Callable[[nn.Module, int], dict]] = {
    "nan_injection": _inject_nan,
    "inf_injection": _inject_inf,
    "extreme_quant": _extreme_quant,
    "scale_explosion": _scale_explosion,
    "zero_layer": _zero_layer,
    "shape_mismatch": _shape_mismatch,
    "missing_tensors": _missing_tensors,
    "rank_collapse": _rank_collapse,
    "norm_collapse": _norm_collapse,
    "weight_tying_break": _weight_tying_break,
}


def apply_spec(model: nn.Module, spec: EditSpec | str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> dict:
    """Apply ``spec`` to ``model`` in place; return JSON-serialisable metadata.

    ``changed`` lists the state-dict names whose values were rewritten (``removed`` those deleted);
    for an error injection the whole dict is what the caller writes as error_metadata.json.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    header = {"spec": str(spec), "family": spec.family}
    with torch.no_grad():
        if spec.family == "noop":
            return header | {"changed": []}
        if spec.family == "error":
            return header | _INJECTIONS[spec.kind](model, chunk_elems)
        return header | {"scope": spec.scope} | _edit_matrices(model, spec, chunk_elems)
