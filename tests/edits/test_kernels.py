"""Weight math of the scenario catalogue: kernels, module roles, and injections on tiny real models."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable, Iterator

import pytest

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_invarlock.edits.kernels import (  # noqa: E402
    apply_spec,
    fp4_round_trip_,
    fp8_round_trip_,
    lowrank_svd_,
    magnitude_prune_,
    module_roles,
    rank_one_collapse_,
    rtn_quantize_,
)
from pytest_invarlock.edits.catalogue import ERROR_KINDS  # noqa: E402

FAST = settings(max_examples=40, deadline=None)
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


def random_matrix(seed: int, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Gaussian entries with column scales spread over four decades, like real weights with outlier channels."""
    generator = torch.Generator().manual_seed(seed)
    scales = 10.0 ** torch.randint(-3, 1, (cols,), generator=generator)
    return (torch.randn(rows, cols, generator=generator) * scales).to(dtype)


shapes = st.tuples(st.integers(1, 12), st.integers(1, 40))
seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------------------------
# Kernels


def test_rtn_hand_computed() -> None:
    grouped = torch.tensor([[3.0, -1.4, 0.6, 2.2]])
    rtn_quantize_(grouped, bits=3, group=4)  # scale = 3 / 3 = 1
    assert grouped.tolist() == [[3.0, -1.0, 1.0, 2.0]]
    per_tensor = torch.tensor([[6.0, 1.2], [0.4, -2.9]])
    rtn_quantize_(per_tensor, bits=3, group=4)  # in (2) < group: one scale 6 / 3 = 2 for the whole matrix
    assert per_tensor.tolist() == [[6.0, 2.0], [0.0, -2.0]]


@FAST
@given(seeds, shapes, st.integers(2, 8), st.integers(1, 16))
def test_rtn_error_is_at_most_half_a_step_per_group(seed: int, shape: tuple[int, int], bits: int, group: int) -> None:
    original = random_matrix(seed, *shape)
    quantized = original.clone()
    rtn_quantize_(quantized, bits, group)
    qmax = 2 ** (bits - 1) - 1
    cols = shape[1]
    spans = [(0, cols)] if cols < group else [(start, min(start + group, cols)) for start in range(0, cols, group)]
    for row in range(shape[0]):
        for start, stop in spans:
            region = (slice(None), slice(start, stop)) if cols < group else (row, slice(start, stop))
            half_step = original[region].abs().max() / qmax / 2
            error = (quantized[region] - original[region]).abs().max()
            assert error <= half_step * (1 + 1e-5) + 1e-12
            assert quantized[region].unique().numel() <= 2**bits


@FAST
@given(seeds, shapes, st.floats(0.01, 0.99), st.integers(1, 60), st.booleans())
def test_prune_zeroes_exactly_the_k_smallest_with_row_major_ties(
    seed: int, shape: tuple[int, int], fraction: float, chunk_elems: int, with_ties: bool
) -> None:
    generator = torch.Generator().manual_seed(seed)
    original = (
        torch.randint(-3, 4, shape, generator=generator).float() if with_ties else random_matrix(seed, *shape)
    )
    k = round(fraction * original.numel())
    pruned = original.clone()
    assert magnitude_prune_(pruned, fraction, chunk_elems=chunk_elems) == k
    # Oracle: a stable sort by |w| lists equal magnitudes in row-major order.
    expected = original.clone().flatten()
    expected[torch.sort(expected.abs(), stable=True).indices[:k]] = 0
    assert torch.equal(pruned, expected.reshape(shape))
    assert int((pruned == 0).sum()) == max(k, int((original == 0).sum()))


def test_prune_works_on_a_transposed_bf16_view() -> None:
    stored = random_matrix(1, 40, 24, torch.bfloat16)
    magnitude_prune_(stored.t(), 0.25, chunk_elems=30)
    assert int((stored == 0).sum()) == round(0.25 * stored.numel())
    assert stored.dtype == torch.bfloat16


@FAST
@given(seeds, st.integers(2, 16), st.integers(2, 16), st.data())
def test_lowrank_has_the_requested_rank_and_optimal_error(seed: int, rows: int, cols: int, data: st.DataObject) -> None:
    rank = data.draw(st.integers(1, min(rows, cols) - 1) if min(rows, cols) > 1 else st.just(1))
    original = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    approx = original.clone()
    changed = lowrank_svd_(approx, rank, chunk_elems=data.draw(st.integers(1, 64)))
    assert changed == (rank < min(rows, cols))
    if not changed:
        assert torch.equal(approx, original)
        return
    assert int(torch.linalg.matrix_rank(approx, rtol=1e-4)) == rank  # float32 rounding sits far below 1e-4
    singular = torch.linalg.svdvals(original.double())
    eckart_young = singular[rank:].square().sum().sqrt()  # the best possible Frobenius error
    assert float((approx - original).double().norm()) == pytest.approx(float(eckart_young), rel=1e-4, abs=1e-5)


def test_rank_one_collapse_keeps_the_frobenius_norm() -> None:
    original = random_matrix(3, 12, 20)
    collapsed = original.clone()
    rank_one_collapse_(collapsed, chunk_elems=7)
    assert int(torch.linalg.matrix_rank(collapsed)) == 1
    assert float(collapsed.norm()) == pytest.approx(float(original.norm()), rel=1e-5)


def test_fp4_hand_computed() -> None:
    row = torch.tensor([[100.0] + [1.0] * 9])
    e2m1 = row.clone()
    fp4_round_trip_(e2m1, "e2m1")  # one group: scale 32 keeps 100 below 6*scale; 1/32 rounds to 0
    assert e2m1.tolist() == [[96.0] + [0.0] * 9]
    aggressive = row.clone()
    fp4_round_trip_(aggressive, "aggressive")  # scale from the 0.9 quantile (1.0) -> 0.25: 100 saturates at 1.5
    assert aggressive.tolist() == [[1.5] + [1.0] * 9]
    grid = torch.tensor([[6.0, 3.2, -0.7, 0.2]])
    fp4_round_trip_(grid, "e2m1")
    assert grid.tolist() == [[6.0, 3.0, -0.5, 0.0]]


def test_fp8_hand_computed() -> None:
    values = torch.tensor([[448.0, 1.0, 0.3]])
    fp8_round_trip_(values, "e4m3")  # 448 is e4m3's top: scale 1; 0.3 -> 1.25 * 2^-2
    assert values.tolist() == [[448.0, 1.0, 0.3125]]


ROUND_TRIPS: dict[str, Callable[..., object]] = {
    "fp8:e4m3": lambda m, **kw: fp8_round_trip_(m, "e4m3", **kw),
    "fp8:e5m2": lambda m, **kw: fp8_round_trip_(m, "e5m2", **kw),
    "fp4:e2m1": lambda m, **kw: fp4_round_trip_(m, "e2m1", **kw),
    "fp4:aggressive": lambda m, **kw: fp4_round_trip_(m, "aggressive", **kw),
}


@pytest.mark.parametrize("kind", ROUND_TRIPS)
@FAST
@given(seeds, shapes, st.sampled_from((torch.float32, torch.bfloat16, torch.float16)))
def test_round_trips_are_idempotent(kind: str, seed: int, shape: tuple[int, int], dtype: torch.dtype) -> None:
    once = random_matrix(seed, *shape, dtype)
    ROUND_TRIPS[kind](once)
    twice = once.clone()
    ROUND_TRIPS[kind](twice)
    assert torch.equal(once, twice)


@pytest.mark.parametrize("kind", ROUND_TRIPS)
@FAST
@given(seeds, shapes, st.integers(-20, 20))
def test_round_trips_commute_with_power_of_two_scaling(kind: str, seed: int, shape: tuple[int, int], k: int) -> None:
    plain, scaled = random_matrix(seed, *shape), random_matrix(seed, *shape) * 2.0**k
    ROUND_TRIPS[kind](plain)
    ROUND_TRIPS[kind](scaled)
    assert torch.equal(plain * 2.0**k, scaled)


KERNELS: dict[str, Callable[..., object]] = {
    **ROUND_TRIPS,
    "rtn:4:8": lambda m, **kw: rtn_quantize_(m, 4, 8, **kw),
    "rtn:8:64": lambda m, **kw: rtn_quantize_(m, 8, 64, **kw),  # wider than the matrix: per-tensor scale
    "prune": lambda m, **kw: magnitude_prune_(m, 0.4, **kw),
}
PRODUCT_KERNELS: dict[str, Callable[..., object]] = {  # chunked matmuls may differ in the last float32 bit
    "lowrank": lambda m, **kw: lowrank_svd_(m, 3, **kw),
    "rank_one": lambda m, **kw: rank_one_collapse_(m, **kw),
}


@pytest.mark.parametrize("kind", [*KERNELS, *PRODUCT_KERNELS])
@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 50), st.booleans(), st.sampled_from((torch.float32, torch.bfloat16)))
def test_chunked_equals_unchunked_in_place(
    kind: str, seed: int, chunk_elems: int, transposed: bool, dtype: torch.dtype
) -> None:
    kernel = KERNELS.get(kind) or PRODUCT_KERNELS[kind]
    whole = random_matrix(seed, 9, 30, dtype)
    chunked = whole.clone()
    view = chunked.t() if transposed else chunked
    pointer = chunked.data_ptr()
    kernel(whole.t() if transposed else whole)
    kernel(view, chunk_elems=chunk_elems)
    if kind in KERNELS:
        assert torch.equal(whole, chunked)
    else:
        torch.testing.assert_close(whole, chunked, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)
    assert chunked.data_ptr() == pointer and chunked.dtype == dtype


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


def test_moe_experts_are_edited_one_slice_at_a_time(tiny_models: dict) -> None:
    model = fresh(tiny_models, "mixtral")
    apply_spec(model, "magnitude_prune:0.3:ffn")
    experts = model.model.layers[0].mlp.experts
    for fused in (experts.gate_up_proj, experts.down_proj):
        for expert in fused:
            assert int((expert == 0).sum()) == round(0.3 * expert.numel())
    assert not bool((model.model.layers[0].mlp.gate.weight == 0).any())  # the router is not ffn


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


def test_noop_changes_nothing(tiny_models: dict) -> None:
    model = fresh(tiny_models, "llama")
    before = snapshot(model)
    assert apply_spec(model, "noop") == {"spec": "noop", "family": "noop", "changed": []}
    assert all(torch.equal(before[name], value) for name, value in model.state_dict().items())


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
