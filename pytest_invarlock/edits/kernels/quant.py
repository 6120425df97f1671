"""Quantisation kernels: integer round-to-nearest (quant_rtn), float8 (fp8) and FP4 E2M1 (fp4) round trips."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from pytest_invarlock.edits.kernels.common import (
    DEFAULT_CHUNK_ELEMS,
    abs_max,
    edit_matrices,
    grouped,
    no_grad,
    rewrite_rows_,
    ungrouped,
    usable_scale,
)

FP4_GROUP = 32  # OCP MXFP4 block size
AGGRESSIVE_QUANTILE = 0.9  # fp4:aggressive scales rows from this |w| quantile, so the tail saturates
E2M1_GRID = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)

_FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def _pow2_ceil_scale(peak: Tensor, top: float) -> Tensor:
    """Smallest power of two s with peak / s <= top, computed exactly from the binary exponents.

    A power-of-two scale divides without rounding, which makes the FP8/FP4 round trips idempotent.
    """
    top_mantissa, top_exponent = math.frexp(top)
    mantissa, exponent = torch.frexp(peak)
    exponent = exponent - top_exponent + (mantissa > top_mantissa).to(exponent.dtype)
    return usable_scale(torch.ldexp(torch.ones_like(peak), exponent) * (peak > 0))


@no_grad
def rtn_quantize_(matrix: Tensor, bits: int, group: int, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Symmetric round-to-nearest, group-wise along the input dim of each output row.

    scale = max|w| / (2^(b-1) - 1) per group; one scale for the whole matrix when in < group.
    """
    low, high = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1

    def quantize(values: Tensor, scale: Tensor) -> Tensor:
        return torch.clamp(torch.round(values / scale), low, high) * scale

    if matrix.shape[1] < group:
        scale = usable_scale(abs_max(matrix, chunk_elems) / high)
        rewrite_rows_(matrix, chunk_elems, lambda block: quantize(block, scale))
        return

    def per_group(block: Tensor) -> Tensor:
        groups = grouped(block, group)
        return ungrouped(quantize(groups, usable_scale(groups.abs().amax(-1, keepdim=True) / high)), block.shape[1])

    rewrite_rows_(matrix, chunk_elems, per_group)


@no_grad
def fp8_round_trip_(matrix: Tensor, fmt: str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Cast to float8 (e4m3fn or e5m2) and back, with one power-of-two scale per matrix.

    The scale puts max|w| in the format's top binade: without it, typical weights (|w| ~ 0.02)
    would fall into e4m3's subnormals, and no value saturates.
    """
    dtype = _FP8_DTYPES[fmt]
    scale = _pow2_ceil_scale(abs_max(matrix, chunk_elems), torch.finfo(dtype).max)
    rewrite_rows_(matrix, chunk_elems, lambda block: (block / scale).to(dtype).float() * scale)


def _round_to_e2m1(scaled: Tensor) -> Tensor:
    """Nearest E2M1 value with sign, ties to the even code (IEEE round-to-nearest-even, as hardware FP4
    conversions do); magnitudes beyond 6 saturate at 6. E2M1 steps by 0.5 below 2, by 1 up to 4 and by 2 up
    to 6, and within each binade an even multiple of the step is an even code, so ``torch.round`` (half to
    even) of the magnitude in steps is exactly that rounding."""
    magnitude = scaled.abs().clamp(max=E2M1_GRID[-1])
    step = torch.where(magnitude < 2, 0.5, torch.where(magnitude < 4, 1.0, 2.0))
    return torch.sign(scaled) * torch.round(magnitude / step) * step


def _pow2_floor_scale(reference: Tensor) -> Tensor:
    """Power of two s with reference / s in [4, 8), E2M1's top binade: everything above 6*s saturates."""
    _, exponent = torch.frexp(reference)
    return usable_scale(torch.ldexp(torch.ones_like(reference), exponent - 3) * (reference > 0))


@no_grad
def fp4_round_trip_(matrix: Tensor, variant: str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Simulated FP4 E2M1 with power-of-two scales.

    e2m1: one scale per FP4_GROUP inputs, chosen so the group's max does not saturate.
    aggressive: one scale per row, from the AGGRESSIVE_QUANTILE of |w| placed in the top binade,
    so the row's largest weights clip to 6*scale and small ones round to zero.
    """

    def per_group(block: Tensor) -> Tensor:
        groups = grouped(block, FP4_GROUP)
        scale = _pow2_ceil_scale(groups.abs().amax(-1, keepdim=True), E2M1_GRID[-1])
        return ungrouped(_round_to_e2m1(groups / scale) * scale, block.shape[1])

    def per_row(block: Tensor) -> Tensor:
        magnitudes = block.abs()
        rank = max(1, round(AGGRESSIVE_QUANTILE * block.shape[1]))
        reference = magnitudes.kthvalue(rank, dim=1, keepdim=True).values
        reference = torch.where(reference > 0, reference, magnitudes.amax(1, keepdim=True))
        scale = _pow2_floor_scale(reference)
        return _round_to_e2m1(block / scale) * scale

    rewrite_rows_(matrix, chunk_elems, per_row if variant == "aggressive" else per_group)


# ----------------------------------------------------------------------------------------------
# Catalogue kernels


def quant_rtn(model: nn.Module, *, bits: int, group: int, scope: str, chunk_elems: int) -> dict[str, Any]:
    return edit_matrices(model, scope, lambda matrix: rtn_quantize_(matrix, bits, group, chunk_elems=chunk_elems))


def fp8(model: nn.Module, *, variant: str, scope: str, chunk_elems: int) -> dict[str, Any]:
    return edit_matrices(model, scope, lambda matrix: fp8_round_trip_(matrix, variant, chunk_elems=chunk_elems))


def fp4(model: nn.Module, *, variant: str, scope: str, chunk_elems: int) -> dict[str, Any]:
    return edit_matrices(model, scope, lambda matrix: fp4_round_trip_(matrix, variant, chunk_elems=chunk_elems))
