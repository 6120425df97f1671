"""Pruning kernels: exact magnitude pruning by a chunked radix select (|w| is never held whole)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pytest_invarlock.edits.kernels.common import DEFAULT_CHUNK_ELEMS, edit_matrices, no_grad, row_slices

_RADIX_DIGITS = ((20, 11), (10, 10), (0, 10))  # (shift, width): the 31 bits of a non-negative float32


def _magnitude_bits(block: Tensor) -> Tensor:
    """|w| in float32 read as int32: non-negative floats order exactly like their bit patterns."""
    return block.float().abs().contiguous().view(torch.int32)


def _digit_histogram(matrix: Tensor, chunk_elems: int, prefix: int, shift: int, width: int) -> Tensor:
    """Counts of digit ``(bits >> shift) & (2^width - 1)`` over the magnitudes whose higher bits equal ``prefix``'s."""
    counts = torch.zeros(1 << width, dtype=torch.int64, device=matrix.device)
    above = shift + width
    for rows in row_slices(matrix, chunk_elems):
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


@no_grad
def magnitude_prune_(matrix: Tensor, fraction: float, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> int:
    """Zero exactly round(fraction * numel) smallest-|w| entries; ties fall in row-major order. Returns the count."""
    k: int = round(fraction * matrix.numel())
    if k == 0:
        return 0
    threshold, below = _kth_smallest_magnitude_bits(matrix, k, chunk_elems)
    ties_left = k - below
    for rows in row_slices(matrix, chunk_elems):
        block = matrix[rows]
        bits = _magnitude_bits(block)
        drop = bits < threshold
        if ties_left:
            ties = (bits == threshold).flatten().nonzero()[:ties_left, 0]
            drop.view(-1)[ties] = True
            ties_left -= ties.numel()
        block.masked_fill_(drop, 0)
    return k


# ----------------------------------------------------------------------------------------------
# Catalogue kernels


def magnitude_prune(model: nn.Module, *, fraction: float, scope: str, chunk_elems: int) -> dict[str, Any]:
    zeroed = 0

    def prune(matrix: Tensor) -> None:
        nonlocal zeroed
        zeroed += magnitude_prune_(matrix, fraction, chunk_elems=chunk_elems)

    return edit_matrices(model, scope, prune) | {"zeroed": zeroed}
