"""Offline assets built on first use: the tiny model and its KJV corpus, the SmolLM2 conversion, the tiny lm-eval tasks. Imports torch/transformers (worker side)."""
