"""Low-rank kernels: truncated SVD (lowrank_svd) and the rank-1 collapse used by the rank_collapse injection."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from pytest_invarlock.edits.kernels.common import DEFAULT_CHUNK_ELEMS, edit_matrices, no_grad, row_slices

EXACT_SVD_MAX_DIM = 1024  # above this, randomized SVD (seeded) instead of a full decomposition
RANDOMIZED_OVERSAMPLING, RANDOMIZED_POWER_ITERATIONS = 16, 4


def top_singular_triplets(matrix: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """U[:, :r], S[:r], Vh[:r] in float32: exact SVD for small matrices, seeded randomized SVD otherwise.

    "Small" means min(shape) <= EXACT_SVD_MAX_DIM: a 4096 x 64 matrix still gets the exact SVD.
    """
    full = matrix.float()
    if min(full.shape) <= EXACT_SVD_MAX_DIM:
        u, s, vh = torch.linalg.svd(full, full_matrices=False)
    else:
        devices = [full.device.index or 0] if full.device.type != "cpu" else []
        with torch.random.fork_rng(devices=devices, device_type=full.device.type):
            torch.manual_seed(0)  # same edit, same weights: edited models are cached by content
            q = min(rank + RANDOMIZED_OVERSAMPLING, *full.shape)
            u, s, v = torch.svd_lowrank(full, q=q, niter=RANDOMIZED_POWER_ITERATIONS)
        vh = v.mT
    return u[:, :rank], s[:rank], vh[:rank]


def _write_product_(matrix: Tensor, left: Tensor, right: Tensor, chunk_elems: int) -> None:
    """matrix = left @ right, row chunk by row chunk.

    BLAS picks kernels by shape, so other chunk sizes can differ in the last float32 bit.
    """
    for rows in row_slices(matrix, chunk_elems):
        matrix[rows].copy_(left[rows] @ right)


@no_grad
def lowrank_svd_(matrix: Tensor, rank: int, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> bool:
    """Replace the matrix by its best rank-``rank`` approximation; False (untouched) if already that thin."""
    if rank >= min(matrix.shape):
        return False
    u, s, vh = top_singular_triplets(matrix, rank)
    _write_product_(matrix, u * s, vh, chunk_elems)
    return True


@no_grad
def rank_one_collapse_(matrix: Tensor, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> None:
    """Replace the matrix by a rank-1 outer product (top singular pair) with the same Frobenius norm."""
    norm = torch.zeros((), dtype=torch.float32, device=matrix.device)
    for rows in row_slices(matrix, chunk_elems):
        norm += matrix[rows].float().square().sum()
    u, _, vh = top_singular_triplets(matrix, 1)
    _write_product_(matrix, u * norm.sqrt(), vh, chunk_elems)


# ----------------------------------------------------------------------------------------------
# Catalogue kernels


def lowrank_svd(model: nn.Module, *, rank: int, scope: str, chunk_elems: int) -> dict[str, Any]:
    return edit_matrices(model, scope, lambda matrix: lowrank_svd_(matrix, rank, chunk_elems=chunk_elems))
