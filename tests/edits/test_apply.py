"""apply_spec on tiny real models: the catalogue's kernels resolve, edits stay in their scope, injections do what they claim."""

from __future__ import annotations

import copy
import inspect
import json
import os
from collections.abc import Callable, Iterator

import pytest

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_invarlock.edits.catalogue import CATALOGUE, ERROR_KINDS, parse_spec  # noqa: E402
from pytest_invarlock.edits.kernels import apply_spec  # noqa: E402
from pytest_invarlock.edits.kernels.common import module_roles  # noqa: E402

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2}
CONFIGS: dict[str, Callable[[], object]] = {
    "gpt2": lambda: transformers.GPT2Config(n_layer=3, n_embd=32, n_head=2, vocab_size=96, n_positions=32),
    "llama": lambda: transformers.LlamaConfig(num_hidden_layers=3, vocab_size=96, **SMALL),
    "mistral": lambda: transformers.MistralConfig(num_hidden_layers=3, vocab_size=96, **SMALL),
    "qwen2": lambda: transformers.Qwen2Config(num_hidden_layers=3, vocab_size=96, **SMALL),
    "mixtral": lambda: transformers.MixtralConfig(
        num_hidden_layers=3, vocab_size=96, num_local_experts=4, num_experts_per_tok=2, **SMALL
    ),
}
EDIT_SPECS = (
    "quant_rtn:4:16:all",
    "fp8:e4m3:ffn",
    "fp8:e5m2:attn",
    "fp4:e2m1:all",
    "fp4:aggressive:ffn",
    "magnitude_prune:0.3:all",
    "lowrank_svd:4:attn",
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Two-thread LAPACK on shared cores spins for ~0.5 s per tiny SVD; one thread takes microseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {name: transformers.AutoModelForCausalLM.from_config(make()).eval() for name, make in CONFIGS.items()}


def fresh(tiny_models: dict[str, torch.nn.Module], arch: str) -> torch.nn.Module:
    return copy.deepcopy(tiny_models[arch])  # configs too: injections edit model.config


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# The registry


@pytest.mark.parametrize("kind", CATALOGUE)
def test_every_catalogue_kernel_resolves_with_the_spec_parameters_as_keywords(kind: str) -> None:
    entry = CATALOGUE[kind]
    kernel = entry.load_kernel()
    assert callable(kernel) and entry.kernel.startswith("pytest_invarlock.edits.kernels.")
    parameters = inspect.signature(kernel).parameters
    positional = [p.name for p in parameters.values() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    keywords = {p.name for p in parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert positional == ["model"]
    assert keywords == {"chunk_elems", *(p.name for p in entry.params)}


@pytest.mark.parametrize("kind", CATALOGUE)
def test_every_catalogue_example_applies_and_claims_exactly_its_changes(tiny_models: dict, kind: str) -> None:
    """A new edit type gets this check for free: its example spec, applied to a tiny Llama."""
    spec = parse_spec(CATALOGUE[kind].example_spec)
    model = fresh(tiny_models, "llama")
    before = snapshot(model)
    meta = apply_spec(model, spec, chunk_elems=64)
    json.dumps(meta, allow_nan=False)
    assert (meta["spec"], meta["family"]) == (str(spec), spec.family)
    if meta["changed"] or meta.get("removed"):
        assert_only_claimed_changes(before, model, meta)
    else:  # noop, or an example too big for a tiny model (lowrank_svd:256 of 32-wide matrices)
        assert spec.family == "noop" or meta.get("matrices") == 0
        assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


# ----------------------------------------------------------------------------------------------
# Module roles


def expected_role(arch: str, name: str) -> str:
    """Roles read off each architecture's known parameter names, independent of the module walk."""
    if arch == "gpt2":
        table = ((".attn.", "attn"), (".mlp.", "ffn"), ("ln_", "norm"), ("wte", "embed"), ("wpe", "embed"))
    else:
        table = (
            (".mlp.gate.", "router"),
            (".self_attn.", "attn"),
            (".mlp.", "ffn"),
            ("norm", "norm"),
            ("embed_tokens", "embed"),
            ("lm_head", "head"),
        )
    return next(role for marker, role in table if marker in name)


@pytest.mark.parametrize("arch", CONFIGS)
def test_module_roles_classify_every_parameter(tiny_models: dict, arch: str) -> None:
    model = tiny_models[arch]
    roles = module_roles(model)
    assert set(roles) == {name for name, _ in model.named_parameters()}
    assert {name: expected_role(arch, name) for name in roles} == roles
    assert {"attn", "ffn"} <= set(roles.values())


def test_gpt2_scope_follows_the_module_not_the_c_proj_name(tiny_models: dict) -> None:
    model = fresh(tiny_models, "gpt2")
    meta = apply_spec(model, "quant_rtn:8:16:attn")
    assert "transformer.h.0.attn.c_proj.weight" in meta["changed"]
    assert "transformer.h.0.mlp.c_proj.weight" not in meta["changed"]


def test_gpt2_rtn_groups_run_along_the_real_input_dim(tiny_models: dict) -> None:
    model = fresh(tiny_models, "gpt2")
    weight = model.transformer.h[0].mlp.c_fc.weight  # Conv1D: stored [in=32, out=128]
    with torch.no_grad():
        weight.mul_(10.0 ** (torch.arange(weight.shape[1]) % 3))  # output channels at three scales
    original = weight.detach().clone()
    apply_spec(model, "quant_rtn:3:32:ffn")
    half_steps = original.abs().amax(0) / 3 / 2  # per output channel = per stored column
    assert bool(((weight - original).abs() <= half_steps * (1 + 1e-5)).all())


def test_moe_experts_are_edited_one_checkpoint_matrix_at_a_time(tiny_models: dict) -> None:
    """Each expert's w1 (gate), w3 (up) and w2 (down) is pruned on its own, as the checkpoint holds them,
    though transformers fuses w1 and w3 into one gate_up_proj row block; the router is never an FFN matrix."""
    model = fresh(tiny_models, "mixtral")
    apply_spec(model, "magnitude_prune:0.3:ffn")
    experts = model.model.layers[0].mlp.experts
    matrices = [half for expert in experts.gate_up_proj for half in expert.chunk(2)] + list(experts.down_proj)
    for matrix in matrices:
        assert int((matrix == 0).sum()) == round(0.3 * matrix.numel())
    assert not bool((model.model.layers[0].mlp.gate.weight == 0).any())  # the router is not ffn


def test_moe_gate_and_up_halves_get_their_own_svd(tiny_models: dict) -> None:
    model = fresh(tiny_models, "mixtral")
    apply_spec(model, "lowrank_svd:2:ffn")
    for expert in model.model.layers[1].mlp.experts.gate_up_proj:
        assert [int(torch.linalg.matrix_rank(half.float())) for half in expert.chunk(2)] == [2, 2]
        assert int(torch.linalg.matrix_rank(expert.float())) == 4  # one SVD of the fused pair would leave rank 2


def test_blocks_without_an_mlp_child_still_have_ffn_matrices() -> None:
    """OPT's decoder layer holds fc1 and fc2 itself: they are its FFN, so ffn-scoped edits and scale_explosion reach them."""
    torch.manual_seed(0)
    config = transformers.OPTConfig(
        hidden_size=32, ffn_dim=64, num_attention_heads=4, num_hidden_layers=2, vocab_size=96, word_embed_proj_dim=32
    )
    roles = module_roles(transformers.AutoModelForCausalLM.from_config(config))
    assert roles["model.decoder.layers.0.fc1.weight"] == roles["model.decoder.layers.1.fc2.weight"] == "ffn"
    assert roles["model.decoder.layers.0.self_attn.q_proj.weight"] == "attn"


# ----------------------------------------------------------------------------------------------
# apply_spec on models


def assert_only_claimed_changes(before: dict, model: torch.nn.Module, meta: dict) -> dict[str, torch.Tensor]:
    after = model.state_dict()
    assert set(before) - set(after) == set(meta.get("removed", []))
    assert set(after) <= set(before)
    assert meta["changed"] or meta.get("removed"), "an edit that claims nothing"
    for name, value in after.items():
        same = value.shape == before[name].shape and torch.equal(value, before[name])
        assert same != (name in meta["changed"]), name
    return after


@pytest.mark.parametrize("spec", EDIT_SPECS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_edit_touches_only_its_scope(tiny_models: dict, arch: str, spec: str) -> None:
    model = fresh(tiny_models, arch)
    before = snapshot(model)
    meta = apply_spec(model, spec)
    json.dumps(meta, allow_nan=False)
    assert_only_claimed_changes(before, model, meta)
    roles = module_roles(model)
    wanted = {"attn", "ffn"} if spec.endswith(":all") else {spec.rpartition(":")[2]}
    assert {roles[name] for name in meta["changed"]} == wanted


@pytest.mark.parametrize("spec", ["quant_rtn:4:8:all", "fp8:e4m3:all", "fp4:aggressive:all", "magnitude_prune:0.5:all"])
@pytest.mark.parametrize("arch", ["gpt2", "mixtral"])
def test_model_edit_chunked_equals_unchunked(tiny_models: dict, arch: str, spec: str) -> None:
    whole, chunked = fresh(tiny_models, arch), fresh(tiny_models, arch)
    assert apply_spec(whole, spec) == apply_spec(chunked, spec, chunk_elems=13)
    assert all(torch.equal(a, b) for a, b in zip(whole.state_dict().values(), chunked.state_dict().values()))


def check_injection_claim(kind: str, before: dict, model: torch.nn.Module, meta: dict, arch: str) -> None:
    after = model.state_dict()
    changed = {name: after[name].float() for name in meta["changed"]}
    roles = module_roles(model)
    match kind:
        case "nan_injection" | "inf_injection":
            (name,) = changed
            differs = changed[name] != before[name].float()
            assert int(differs.sum()) == 1 and bool(differs[0, 0])
            poked = changed[name][0, 0]
            assert bool(poked.isnan()) if kind == "nan_injection" else bool(poked.isposinf())
            assert kind == "nan_injection" or roles[name] == "attn"
        case "extreme_quant":
            matrices = {n for n, v in before.items() if v.ndim >= 2}
            assert set(changed) == matrices
            for name, value in changed.items():  # one 2-bit group per row of [out, in] (in <= 128)
                rows = value.t() if arch == "gpt2" and ".h." in name else value.reshape(-1, value.shape[-1])
                assert all(row.unique().numel() <= 4 for row in rows)
        case "scale_explosion":
            (name,) = changed
            assert roles[name] == "ffn" and torch.equal(changed[name], before[name] * 100.0)
        case "zero_layer":
            prefix = ".h.1." if arch == "gpt2" else ".layers.1."
            block = {n for n in before if prefix in n}
            assert set(changed) <= block and all(not bool(after[n].any()) for n in block)
        case "shape_mismatch":
            for name, value in changed.items():
                assert value.shape[0] == before[name].shape[0] + 8 and torch.equal(value[:-8], before[name])
            assert model.config.vocab_size == 104
        case "missing_tensors":
            last = ".h.2." if arch == "gpt2" else ".layers.2."
            assert set(meta["removed"]) == {n for n in before if last in n}
            assert model.config.num_hidden_layers == 2
        case "rank_collapse":
            assert all(roles[name] == "attn" for name in changed)
            for name, value in changed.items():
                assert int(torch.linalg.matrix_rank(value)) == 1
                assert float(value.norm()) == pytest.approx(float(before[name].norm()), rel=1e-5)
        case "norm_collapse":
            assert all(roles[name] == "attn" and not bool(value.any()) for name, value in changed.items())
        case "weight_tying_break":
            embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
            assert list(changed) == ["lm_head.weight"]
            assert (head is embedding) != (arch == "gpt2")  # GPT-2 starts tied, Llama untied
            assert model.config.tie_word_embeddings == (head is embedding)
            if head is not embedding:
                assert torch.allclose(head, embedding, rtol=0.1, atol=0)


@pytest.mark.parametrize("kind", ERROR_KINDS)
@pytest.mark.parametrize("arch", ["gpt2", "llama", "mixtral"])
def test_injection_changes_exactly_what_it_claims(tiny_models: dict, arch: str, kind: str) -> None:
    model = fresh(tiny_models, arch)
    before = snapshot(model)
    meta = apply_spec(model, kind, chunk_elems=50)
    json.dumps(meta, allow_nan=False)
    assert meta["spec"] == kind and meta["family"] == "error"
    assert_only_claimed_changes(before, model, meta)
    check_injection_claim(kind, before, model, meta, arch)


@pytest.mark.parametrize("kind", ["shape_mismatch", "missing_tensors", "weight_tying_break"])
@pytest.mark.parametrize("arch", ["gpt2", "qwen2"])
def test_structural_injections_save_load_and_run(tiny_models: dict, arch: str, kind: str, tmp_path) -> None:
    model = fresh(tiny_models, arch)
    apply_spec(model, kind)
    model.save_pretrained(tmp_path)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    expected, got = model.state_dict(), loaded.state_dict()
    assert set(expected) == set(got) and all(torch.equal(expected[n], got[n]) for n in expected)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert (loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight) == tied
    logits = loaded(torch.arange(8)[None]).logits
    assert bool(logits.isfinite().all())


@pytest.mark.parametrize("spec", ["fp8:e4m3:all", "fp8:e5m2:all", "fp4:e2m1:all", "fp4:aggressive:all"])
def test_bf16_model_keeps_its_dtype_and_a_second_round_trip_is_a_no_op(tiny_models: dict, spec: str) -> None:
    model = fresh(tiny_models, "llama").to(torch.bfloat16)
    apply_spec(model, spec)
    once = snapshot(model)
    apply_spec(model, spec)
    assert all(value.dtype == torch.bfloat16 for value in model.state_dict().values())
    assert all(torch.equal(once[name], value) for name, value in model.state_dict().items())
