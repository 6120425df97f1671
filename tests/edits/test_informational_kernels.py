"""The informational injections on tiny real models: each changes exactly its targets, by exactly its rule.

The expected values are recomputed here from the stated rule (seeded Gaussian gains, a factor on the
chosen output projections), so a kernel that picks other matrices, other blocks, another factor,
unseeded noise or additive noise fails.
"""

from __future__ import annotations

import os
import random

import pytest

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_invarlock.edits.kernels import apply_spec  # noqa: E402
from pytest_invarlock.edits.kernels.common import module_roles  # noqa: E402

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
CONFIGS = {
    "gpt2": lambda layers: transformers.GPT2Config(n_layer=layers, n_embd=32, n_head=2, vocab_size=96, n_positions=32),
    "llama": lambda layers: transformers.LlamaConfig(num_hidden_layers=layers, vocab_size=96, **SMALL),
    "mixtral": lambda layers: transformers.MixtralConfig(
        num_hidden_layers=layers, vocab_size=96, num_local_experts=4, num_experts_per_tok=2, **SMALL
    ),
}


def model(arch: str, layers: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    built = transformers.AutoModelForCausalLM.from_config(CONFIGS[arch](layers)).eval()
    with torch.no_grad():  # non-trivial norm gains, so a kernel that ignores the old value shows
        for param in built.parameters():
            if param.ndim == 1:
                param.uniform_(0.5, 1.5)
    return built


def changes(arch: str, kind: str, layers: int = 3) -> tuple[dict, dict, dict, torch.nn.Module]:
    edited = model(arch, layers)
    before = {n: v.detach().clone() for n, v in edited.state_dict().items()}
    meta = apply_spec(edited, kind)
    after = edited.state_dict()
    differ = {n for n in before if not torch.equal(before[n], after[n])}
    assert differ == set(meta["changed"]), "the kernel must report exactly what it changed"
    return before, after, meta, edited


def leaf(name: str) -> str:
    """The module's name (`...o_proj.weight` -> o_proj), or a fused expert tensor's own (`...experts.down_proj`)."""
    parts = name.split(".")
    return parts[-2] if parts[-1] in ("weight", "bias") else parts[-1]


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
@pytest.mark.parametrize("layers", [3, 6])
def test_rmt_norm_noise_multiplies_the_last_four_blocks_norm_gains_by_seeded_gaussian_factors(arch: str, layers: int) -> None:
    before, after, meta, edited = changes(arch, "rmt_norm_noise", layers)
    roles = module_roles(edited)
    blocks = list(range(max(0, layers - 4), layers))
    assert meta["blocks"] == blocks
    block_of = {n: int(n.split(".")[2]) for n in roles if roles[n] == "norm" and n.split(".")[2].isdigit()}
    expected_targets = sorted(n for n, block in block_of.items() if block in blocks and n.endswith("weight"))  # gains
    assert expected_targets and sorted(meta["changed"]) == expected_targets
    generator = torch.Generator().manual_seed(42)
    for name in [n for n, role in roles.items() if role == "norm" and n in expected_targets]:  # the kernel's order
        noise = torch.randn(before[name].shape, generator=generator)
        assert torch.allclose(after[name], before[name] * (1 + 0.05 * noise), rtol=1e-6, atol=0)
    again = changes(arch, "rmt_norm_noise", layers)[1]
    assert all(torch.equal(after[n], again[n]) for n in after)  # seeded: the same bytes every time


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
@pytest.mark.parametrize("layers", [3, 10])
def test_spectral_moderate_scale_scales_a_seeded_eight_attention_outputs_by_one_and_a_half(arch: str, layers: int) -> None:
    before, after, meta, edited = changes(arch, "spectral_moderate_scale", layers)
    roles = module_roles(edited)
    outputs = [n for n, role in roles.items() if role == "attn" and leaf(n) in ("o_proj", "c_proj") and before[n].ndim == 2]
    assert len(outputs) == layers
    expected = sorted(random.Random(42).sample(outputs, min(8, layers)))
    assert meta["changed"] == expected
    for name in expected:
        assert torch.equal(after[name], before[name] * 1.5)


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_ve_mlp_scale_skew_scales_one_seeded_mlp_output_projection_by_nine_tenths(arch: str) -> None:
    before, after, meta, edited = changes(arch, "ve_mlp_scale_skew", 4)
    roles = module_roles(edited)
    (name,) = meta["changed"]
    assert roles[name] == "ffn"
    hidden = edited.config.hidden_size if arch != "gpt2" else edited.config.n_embd
    out_dim = before[name].shape[-1] if arch == "gpt2" else before[name].shape[-2]  # Conv1D stores [in, out]
    assert out_dim == hidden, "an MLP output projection writes back to the hidden size"
    candidates = [n for n, role in roles.items() if role == "ffn" and leaf(n) in ("down_proj", "c_proj") and before[n].ndim >= 2]
    assert name == random.Random(42).choice(candidates)
    assert torch.equal(after[name], before[name] * 0.9)
    logits = edited(torch.arange(8)[None]).logits
    assert bool(logits.isfinite().all())


def test_injections_are_informational_error_specs_of_the_catalogue() -> None:
    from pytest_invarlock.edits.catalogue import CATALOGUE

    for kind in ("rmt_norm_noise", "spectral_moderate_scale", "ve_mlp_scale_skew"):
        assert CATALOGUE[kind].family == "error"
        assert CATALOGUE[kind].kernel == f"pytest_invarlock.edits.kernels.informational:{kind}"
