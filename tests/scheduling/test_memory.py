"""The memory plan: parameter counts from config.json dicts, per-item GB, GPU counts, safety margin."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.campaign.model_files import count_parameters
from pytest_invarlock.scheduling.memory import (
    GIB,
    MarginRule,
    ModelProfile,
    item_memory_gb,
    kv_cache_gb,
    required_gpus,
)

# Hand-copied from each model's public config.json (only the fields the count needs); the expected
# totals are the parameter counts the model cards and HF report.
MISTRAL_7B = {
    "model_type": "mistral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
}
LLAMA_2_13B = {
    "model_type": "llama",
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 40,
    "num_attention_heads": 40,
    "num_key_value_heads": 40,
    "vocab_size": 32000,
}
QWEN25_14B = {
    "model_type": "qwen2",
    "hidden_size": 5120,
    "intermediate_size": 13824,
    "num_hidden_layers": 48,
    "num_attention_heads": 40,
    "num_key_value_heads": 8,
    "vocab_size": 152064,
    "tie_word_embeddings": False,
}
MIXTRAL_8X7B = {
    "model_type": "mixtral",
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "vocab_size": 32000,
}
LLAMA_2_70B = {
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_hidden_layers": 80,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
}
GPT2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024, "vocab_size": 50257}


@pytest.mark.parametrize(
    ("config", "published"),
    [
        (MISTRAL_7B, 7_241_732_096),
        (LLAMA_2_13B, 13_015_864_320),
        (QWEN25_14B, 14_770_033_664),
        (MIXTRAL_8X7B, 46_702_792_704),
        (LLAMA_2_70B, 68_976_648_192),
        (GPT2, 124_439_808),
    ],
    ids=["mistral-7b", "llama-2-13b", "qwen2.5-14b", "mixtral-8x7b", "llama-2-70b", "gpt2"],
)
def test_parameter_count_matches_the_published_size(config, published):
    assert count_parameters(config) == published


def test_tied_embeddings_are_counted_once():
    untied = count_parameters(MISTRAL_7B)
    tied = count_parameters({**MISTRAL_7B, "tie_word_embeddings": True})
    assert untied - tied == 32000 * 4096


def test_profile_from_config_reads_the_attention_shape():
    profile = ModelProfile.from_config(MIXTRAL_8X7B, "bfloat16")
    assert (profile.layers, profile.kv_heads, profile.head_dim, profile.vocab) == (32, 8, 128, 32000)
    assert profile.is_moe and not ModelProfile.from_config(MISTRAL_7B, "bfloat16").is_moe
    assert profile.weights_gb == pytest.approx(46_702_792_704 * 2 / GIB)
    gpt2 = ModelProfile.from_config(GPT2, "float32")
    assert (gpt2.layers, gpt2.kv_heads, gpt2.head_dim, gpt2.dtype_bytes) == (12, 12, 64, 4)


def test_unknown_family_and_dtype_say_what_to_do():
    with pytest.raises(ValueError, match="model_type 'bert'.*params_b"):
        ModelProfile.from_config({"model_type": "bert"}, "float32")
    with pytest.raises(ValueError, match="unknown dtype 'int3'.*bfloat16"):
        ModelProfile.from_config(MISTRAL_7B, "int3")
    with pytest.raises(ValueError, match="positive"):
        ModelProfile.from_declared(0, "bfloat16")


def test_declared_profile_never_plans_less_kv_than_the_real_model():
    """Without a config the plan assumes full multi-head attention, so it errs high, never low."""
    for config, params_b in ((MISTRAL_7B, 7.24), (LLAMA_2_13B, 13.0), (LLAMA_2_70B, 69.0), (MIXTRAL_8X7B, 46.7)):
        real = ModelProfile.from_config(config, "bfloat16")
        declared = ModelProfile.from_declared(params_b, "bfloat16")
        assert declared.weights_gb == pytest.approx(real.weights_gb, rel=0.01)
        assert kv_cache_gb(declared, seq_len=1024, batch=8) >= kv_cache_gb(real, seq_len=1024, batch=8)


def test_declared_shape_overrides_the_estimate():
    profile = ModelProfile.from_declared(7.24, "bfloat16", layers=32, hidden=4096, heads=32, kv_heads=8)
    real = ModelProfile.from_config(MISTRAL_7B, "bfloat16")
    assert kv_cache_gb(profile, seq_len=512, batch=96) == kv_cache_gb(real, seq_len=512, batch=96)


def test_item_memory_follows_the_seed_formulas():
    mistral = ModelProfile.from_config(MISTRAL_7B, "bfloat16")
    weights = mistral.weights_gb
    # KV = 2 * 32 layers * 96 batch * 512 seq * 8 kv heads * 128 head_dim * 2 bytes = 6 GiB exactly
    assert kv_cache_gb(mistral, seq_len=512, batch=96) == 6.0
    assert item_memory_gb(mistral, "calibration", seq_len=512, batch=96) == pytest.approx(weights + 6 + 6)
    assert item_memory_gb(mistral, "benchmark", seq_len=512, batch=96) == pytest.approx(weights + 6)
    assert item_memory_gb(mistral, "setup", seq_len=512, batch=96) == pytest.approx(weights + 4)
    assert item_memory_gb(mistral, "preset", seq_len=512, batch=96) == 5.0
    # an edit item creates the edit (weights + 8) then certifies it (weights + KV + 6): the larger peak
    assert item_memory_gb(mistral, "clean", seq_len=512, batch=96) == pytest.approx(weights + 12)
    assert item_memory_gb(mistral, "error", seq_len=128, batch=2) == pytest.approx(weights + 8)
    with pytest.raises(ValueError, match="unknown item kind 'warmup'"):
        item_memory_gb(mistral, "warmup", seq_len=512, batch=96)


@settings(max_examples=60, deadline=None)
@given(
    params_b=st.floats(0.1, 200),
    seq_len=st.integers(16, 4096),
    batch=st.integers(1, 128),
)
def test_item_peaks_are_ordered(params_b, seq_len, batch):
    profile = ModelProfile.from_declared(params_b, "bfloat16")
    peak = {
        kind: item_memory_gb(profile, kind, seq_len=seq_len, batch=batch)
        for kind in ("benchmark", "calibration", "edit", "error")
    }
    assert profile.weights_gb + 6 == pytest.approx(peak["benchmark"]) and peak["benchmark"] <= peak["calibration"]
    assert peak["calibration"] <= peak["edit"] == peak["error"]
    assert item_memory_gb(profile, "calibration", seq_len=2 * seq_len, batch=batch) > peak["calibration"]


@pytest.mark.parametrize(("mem", "capacity", "gpus"), [(10, 76, 1), (76, 76, 1), (76.1, 76, 2), (152, 76, 2), (153, 76, 3)])
def test_required_gpus(mem, capacity, gpus):
    assert required_gpus(mem, capacity) == gpus


def test_required_gpus_rejects_an_empty_device():
    with pytest.raises(ValueError, match="positive"):
        required_gpus(10, 0)


def test_safety_margin_defaults():
    rule = MarginRule()
    assert [rule.fraction(total) for total in (180, 160, 80, 79.9, 24)] == [0.02, 0.02, 0.05, 0.10, 0.10]
    assert rule.usable_gb(80) == pytest.approx(75.0)  # 80 - 4 (5%) - 1 (worker residue)
    assert rule.usable_gb(80, free_gb=79) == pytest.approx(74.0)  # the driver's reserve is in the reading
    assert rule.usable_gb(80, free_gb=50) == pytest.approx(45.0)  # the margin comes off live free memory too
    assert rule.usable_gb(80, free_gb=9.9) == 0.0  # under GPU_MIN_FREE_GB: takes no work
    assert rule.usable_gb(24, free_gb=30) == pytest.approx(20.6)  # free memory never exceeds the device
    assert rule.reserve_gb(180) == pytest.approx(4.6)


def test_safety_margin_is_configurable():
    rule = MarginRule(large_gb=100, large=0.0, min_free_gb=1, residue_gb=0.0)
    assert rule.usable_gb(120) == 120
    assert rule.usable_gb(80, free_gb=20) == pytest.approx(16.0)
    assert rule.usable_gb(80, free_gb=2) == 0.0  # above min_free_gb, but the margin eats it all
