"""A local model of an architecture outside the catalogue runs every tiny-suite scenario with no item in error.

The catalogue's families have miniatures (the dress rehearsal); any other causal LM given with `--models DIR`
must still go through every edit, injection and InvarLock evaluate, ending in a verdict each. GPT-NeoX runs in
CI (fused query_key_value, parallel residual, its own head name); OPT (projections held directly by the block,
learned positions), Phi and Gemma (tied embeddings, soft RMSNorm) with `-m slow`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from helpers import random_small_model, run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

SMALL = {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 4, "max_position_embeddings": 256}


def _config(arch: str, vocab: int) -> Any:
    import transformers

    common = {**SMALL, "vocab_size": vocab, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}
    if arch == "gpt_neox":
        return transformers.GPTNeoXConfig(intermediate_size=64, **common)
    if arch == "opt":
        return transformers.OPTConfig(ffn_dim=64, word_embed_proj_dim=32, **common)
    if arch == "phi":
        return transformers.PhiConfig(intermediate_size=64, **common)
    return transformers.GemmaConfig(intermediate_size=64, head_dim=8, num_key_value_heads=2, **common)


@pytest.mark.parametrize(
    "arch", ["gpt_neox", pytest.param("opt", marks=pytest.mark.slow), pytest.param("phi", marks=pytest.mark.slow),
             pytest.param("gemma", marks=pytest.mark.slow)],
)  # fmt: skip
def test_every_tiny_scenario_ends_in_a_verdict(tmp_path: Path, arch: str) -> None:
    model = random_small_model(tmp_path / "model", config=lambda vocab: _config(arch, vocab))["m0"]
    run_dir = tmp_path / "run"
    settings = ("--no-benchmarks", "--runs-calibration", "1", "--runs-clean", "1")
    run = run_suite(run_dir, "--models", str(model), *settings, "-n", "2")  # two workers: 2 cores, as a GPU node runs it
    records = [json.loads(path.read_text()) for path in (run_dir / "records").glob("*.json")]
    assert len(records) == 20, run.output[-3000:]  # the tiny suite's 20 scenarios, one run each
    errors = {r["param_id"]: r.get("error") or r.get("reason") for r in records if r["outcome"] not in ("passed", "failed")}
    assert not errors, errors
    assert all("met" in r for r in records)  # each ended in a judged verdict
