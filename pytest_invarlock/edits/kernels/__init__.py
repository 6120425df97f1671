"""The catalogue as weight math: apply an EditSpec to an in-memory Hugging Face causal LM (worker side only).

``apply_spec`` looks the spec's kind up in ``edits.catalogue`` and imports its kernel from the
``"module:function"`` string there, so only the family module an edit needs is loaded. Kernels
are grouped by family: ``quant`` (quant_rtn, fp8, fp4), ``prune``, ``lowrank``, ``errors`` (the ten
must-detect injections), ``informational`` (three mild ones aimed at one guard each); ``common``
holds what they share (module roles by scope, row-chunked rewriting).

Conventions every kernel follows: everything happens in place, under no_grad, on the device and
in the dtype where each weight lives. Matrix kernels walk a matrix in row chunks of at most
``chunk_elems`` elements (computing in float32, writing back in the model dtype), so a 70B model's
largest matrix never needs a second full-size copy; the one exception is low-rank SVD, which holds
the matrix once in float32. Every kernel sees a weight as an [out, in] matrix: GPT-2's Conv1D
stores [in, out] and some fused MoE experts store [E, in, out], so they are handed over as
transposed views, and a fused 3-D expert tensor is edited one expert slice at a time.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pytest_invarlock.edits.catalogue import EditSpec, parse_spec
from pytest_invarlock.edits.kernels.common import DEFAULT_CHUNK_ELEMS

__all__ = ["DEFAULT_CHUNK_ELEMS", "apply_spec"]


def apply_spec(model: nn.Module, spec: EditSpec | str, *, chunk_elems: int = DEFAULT_CHUNK_ELEMS) -> dict[str, Any]:
    """Apply ``spec`` to ``model`` in place; return JSON-serialisable metadata.

    ``changed`` lists the state-dict names whose values were rewritten (``removed`` those deleted);
    for an error injection the whole dict is what the caller writes as error_metadata.json.
    """
    spec = parse_spec(spec) if isinstance(spec, str) else spec
    kernel = spec.edit_type.load_kernel()
    with torch.no_grad():
        return {"spec": str(spec), "family": spec.family} | kernel(model, chunk_elems=chunk_elems, **spec.arguments)
