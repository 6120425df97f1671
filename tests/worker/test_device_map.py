"""Multi-GPU loading on CPU: the placement's device map and max_memory, on meta-initialised big models,
and the exact kwargs that reach InvarLock's loader and lm-eval's HFLM."""

from __future__ import annotations

import pytest

from helpers import random_small_model
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.scheduling.device_map import (
    device_plan,
    hflm_kwargs,
    invarlock_model_block,
    layers_per_device,
    load_kwargs,
)
from pytest_invarlock.scheduling.inventory import Gpu
from pytest_invarlock.scheduling.memory import MarginRule, required_gpus
from pytest_invarlock.scheduling.tasks import item_need_gb, model_profile

# Hub configs written out (no hub here): Mixtral-8x7B-v0.1 and Qwen1.5-72B.
MIXTRAL_8X7B = dict(
    model_type="mixtral",
    hidden_size=4096,
    intermediate_size=14336,
    num_hidden_layers=32,
    num_attention_heads=32,
    num_key_value_heads=8,
    num_local_experts=8,
    num_experts_per_tok=2,
    vocab_size=32000,
    max_position_embeddings=32768,
    rms_norm_eps=1e-5,
    rope_theta=1e6,
    tie_word_embeddings=False,
)
QWEN15_72B = dict(
    model_type="qwen2",
    hidden_size=8192,
    intermediate_size=24576,
    num_hidden_layers=80,
    num_attention_heads=64,
    num_key_value_heads=64,
    vocab_size=152064,
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    rope_theta=1e6,
    tie_word_embeddings=False,
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def _nodes(spec_total: float, spec_free: float, count: int) -> list[Gpu]:
    return [Gpu(i, spec_total, spec_free, 0, "test") for i in range(count)]


def _placed(model_name: str, gpus: list[Gpu], home: int):
    """The suite's clean item of `model_name`, the GPUs the plan needs, starting at NVML index `home`."""
    item = next(i for i in build_items(load_suite("full")) if i.model.name == model_name and i.kind == "clean")
    usable = MarginRule().usable_gb(gpus[0].total_gb, gpus[0].free_gb)
    k = required_gpus(item_need_gb(item), usable)
    devices = [gpus[(home + j) % len(gpus)].index for j in range(k)]
    return item, device_plan(devices, gpus, need_gb=item_need_gb(item), weights_gb=model_profile(item.model).weights_gb)


def test_one_gpu_gets_no_device_map():
    plan = device_plan([3], _nodes(80, 79, 8), need_gb=20, weights_gb=14)
    assert load_kwargs(plan) == {} and load_kwargs(None) == {}


def test_kwargs_name_the_placed_gpus_as_the_child_sees_them():
    plan = device_plan([5, 2], _nodes(80, 79, 8), need_gb=141.0, weights_gb=134.6)
    # what the scheduler may use of a GPU with 79 of 80 GB free, less half of the plan's non-weight 6.4 GB
    budget = int((MarginRule().usable_gb(80, 79) - 3.2) * 10) / 10
    assert plan.devices == (5, 2) and plan.max_memory_gb == (budget, budget)
    assert load_kwargs(plan) == {"device_map": "auto", "max_memory": {0: f"{budget:.1f}GiB", 1: f"{budget:.1f}GiB"}}
    with pytest.raises(ValueError, match=r"placed GPU\(s\) \[9\]"):
        device_plan([9], _nodes(80, 79, 8), need_gb=1, weights_gb=1)


@pytest.mark.parametrize(
    ("name", "config", "model_name", "spec"),
    [
        ("mixtral-8x7b", MIXTRAL_8X7B, "mixtral-8x7b", (80, 79, 8)),
        ("qwen1.5-72b", QWEN15_72B, "qwen1.5-72b", (80, 79, 8)),
        ("qwen1.5-72b on 48 GB GPUs", QWEN15_72B, "qwen1.5-72b", (48, 47, 8)),
    ],
)
def test_meta_model_spreads_over_exactly_the_placed_gpus(name, config, model_name, spec, capsys):
    """What from_pretrained(device_map="auto", max_memory=...) computes (transformers' own _get_device_map)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.integrations.accelerate import _get_device_map

    _, plan = _placed(model_name, _nodes(*spec), home=6)
    kwargs = load_kwargs(plan)
    fields = dict(config)
    hf_config = AutoConfig.for_model(fields.pop("model_type"), **fields)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.bfloat16)
    device_map = _get_device_map(model, kwargs["device_map"], kwargs["max_memory"], None)
    counts = layers_per_device(device_map)
    local = list(range(len(plan.devices)))
    assert len(plan.devices) >= 2
    assert sorted(counts) == local, f"layers per device {counts}"
    assert set(device_map.values()) == set(local)  # embeddings, norm and head too: no cpu, no disk, no other GPU
    assert sum(counts.values()) == config["num_hidden_layers"]
    with capsys.disabled():
        per_gpu = ", ".join(
            f"GPU {plan.devices[d]} (cuda:{d}, max_memory {plan.max_memory_gb[d]} GiB): {counts[d]} layers" for d in local
        )
        print(
            f"\n[device map] {name}: {sum(p.numel() for p in model.parameters()) / 1e9:.1f}B params bf16 on "
            f"{len(local)} x {spec[0]} GB (free {spec[1]}): {per_gpu}"
        )


# --- the kwargs that reach the loaders --------------------------------------------------------------


@pytest.fixture(scope="module")
def small_model(tmp_path_factory) -> dict:
    """A random 2-layer causal LM with a BPE tokenizer, and a corpus of distinct KJV passages."""
    made = random_small_model(tmp_path_factory.mktemp("weights"))
    return {"path": made["m0"], "corpus": made["corpus"]}


def test_invarlock_loader_receives_the_device_map(tmp_path, small_model, monkeypatch):
    """A real evaluate: the kwargs travel preset YAML -> InvarLock's run config -> its HF loader."""
    import invarlock.adapters.hf_loading as hf_loading

    from pytest_invarlock.worker.certifier import EvaluateSettings, certify

    kwargs = load_kwargs(device_plan([5, 2], _nodes(80, 79, 8), need_gb=141.0, weights_gb=134.6))
    seen: list[dict] = []
    stock = hf_loading.apply_memory_efficient_load_defaults

    def spy(model_id, given, *, load_device=None):
        prepared = stock(model_id, given, load_device=load_device)
        seen.append(prepared)
        raise RuntimeError("stop here: the load kwargs were recorded")

    monkeypatch.setattr(hf_loading, "apply_memory_efficient_load_defaults", spy)
    settings = EvaluateSettings(dataset_file=small_model["corpus"], seq_len=32, stride=32, min_tokens=1000)
    verdict = certify(
        small_model["path"], small_model["path"], tmp_path, settings, edit_label="noop", mode="inprocess", load_kwargs=kwargs
    )
    assert verdict.crashed and "MODEL-LOAD-FAILED" in (verdict.failure or "")  # InvarLock's wrap of our stop
    assert seen, "InvarLock never reached its HF loader"
    assert seen[0]["device_map"] == "auto" == kwargs["device_map"]
    assert seen[0]["max_memory"] == kwargs["max_memory"] == invarlock_model_block(kwargs)["max_memory"]
    assert sorted(seen[0]["max_memory"]) == [0, 1]  # the child's CUDA 0 and 1: NVML GPUs 5 and 2


def test_hflm_gets_the_model_object_where_it_lies(small_model, monkeypatch, tmp_path):
    import lm_eval.models.huggingface as huggingface
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from pytest_invarlock.worker.lm_eval_scoring import run_benchmark

    model = AutoModelForCausalLM.from_pretrained(small_model["path"])
    tokenizer = AutoTokenizer.from_pretrained(small_model["path"])
    seen: list[dict] = []

    class SpyHFLM(huggingface.HFLM):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

    monkeypatch.setattr(huggingface, "HFLM", SpyHFLM)
    result = run_benchmark(model, tokenizer, "kjv_cloze", batch_size=4, limit=4, task_dir=tmp_path)
    assert seen == [hflm_kwargs(model, tokenizer, 4)]
    assert set(seen[0]) == {"pretrained", "tokenizer", "batch_size"} and seen[0]["pretrained"] is model
    assert result.n == 4


def test_benchmark_child_loads_with_the_device_map(small_model, tmp_path):
    """The multi-GPU benchmark path on CPU: the child process loads with the kwargs and scores the mapped model."""
    from pytest_invarlock.worker.lm_eval_scoring import run_benchmark_subprocess

    kwargs = {"device_map": "auto", "max_memory": {"cpu": "2GiB"}}
    result, load = run_benchmark_subprocess(
        small_model["path"],
        "float32",
        "kjv_cloze",
        num_fewshot=0,
        batch_size=4,
        limit=4,
        load_kwargs=kwargs,
        env=None,
        workdir=tmp_path,
        timeout_s=300,
    )
    assert load == {"load_kwargs": kwargs, "devices": ["cpu"]}
    assert result.n == 4 and 0 <= result.accuracy <= 1
