"""Edits: a pure catalogue (spec grammar, lazy kernel registry) and the torch kernels that apply them (worker side only)."""
