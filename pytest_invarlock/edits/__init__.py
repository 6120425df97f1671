"""Edits: ``catalogue`` (pure: one entry per edit type, the spec grammar, kernels named lazily as
``"module:function"``) and ``kernels/`` (torch, worker side only: ``apply_spec`` and the kernels by family)."""
