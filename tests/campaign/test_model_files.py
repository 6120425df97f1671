"""Model sizes from a checkpoint's own files (config.json, safetensors headers, weights index), torch-free."""

from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from helpers import REPO, VALIDATION
from pytest_invarlock.campaign.model_files import (
    ModelFilesError,
    count_parameters,
    read_model_files,
    safetensors_parameters,
    weights_directory,
)
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.overrides import override_suite
from pytest_invarlock.scheduling.memory import GIB, ModelProfile
from pytest_invarlock.scheduling.tasks import model_profile

# Llama-2-70B's published config.json (the fields that matter here).
LLAMA_2_70B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 8192,
    "intermediate_size": 28672,
    "num_attention_heads": 64,
    "num_hidden_layers": 80,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "torch_dtype": "float16",
}


def write_safetensors(path: Path, tensors: dict[str, list[int]], dtype: str = "BF16") -> None:
    """A valid safetensors file of zeros (2 bytes per element), written with the standard library."""
    header, offset = {}, 0
    for name, shape in tensors.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + bytes(offset))


def model_dir(root: Path, config: dict, **shards: dict[str, list[int]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(config))
    for name, tensors in shards.items():
        write_safetensors(root / f"{name}.safetensors", tensors)
    return root


def test_safetensors_headers_give_the_exact_count_over_every_shard(tmp_path: Path) -> None:
    directory = model_dir(
        tmp_path / "m",
        {"model_type": "gpt_neox", "num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 4, "vocab_size": 50},
        **{"model-00001-of-00002": {"a": [50, 16], "b": [16]}, "model-00002-of-00002": {"c": [3, 4, 5]}},
    )
    files = read_model_files(directory)
    assert files.parameters == 50 * 16 + 16 + 60 == safetensors_parameters(directory / "model-00001-of-00002.safetensors") + 60
    assert files.parameters_from == "safetensors headers"
    assert files.shape() == {"layers": 2, "hidden": 16, "heads": 4, "vocab": 50, "head_dim": 4, "kv_heads": 4}


def test_a_config_only_directory_is_counted_from_its_config(tmp_path: Path) -> None:
    files = read_model_files(model_dir(tmp_path / "m", LLAMA_2_70B))
    assert files.parameters == count_parameters(LLAMA_2_70B) and 68.9e9 < files.parameters < 69.1e9
    assert files.parameters_from == "config.json"


def test_bin_weights_of_an_unknown_family_are_sized_from_their_bytes(tmp_path: Path) -> None:
    directory = model_dir(tmp_path / "m", {"model_type": "opt", "hidden_size": 8, "torch_dtype": "float16"})
    (directory / "pytorch_model.bin").write_bytes(bytes(2000))
    files = read_model_files(directory)
    assert (files.parameters, files.parameters_from, files.weight_bytes) == (1000, "bytes on disk", 2000)


def test_an_index_alone_gives_the_bytes(tmp_path: Path) -> None:
    directory = model_dir(tmp_path / "m", {"model_type": "falcon", "torch_dtype": "bfloat16"})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 6000}, "weight_map": {}}))
    assert read_model_files(directory).parameters == 3000


@pytest.mark.parametrize(
    ("content", "needle"),
    [(b"\x01", "too short"), (struct.pack("<Q", 2**40), "not plausible"), (struct.pack("<Q", 3) + b"{{{", "not JSON")],
)
def test_damaged_safetensors_say_what_to_do(tmp_path: Path, content: bytes, needle: str) -> None:
    directory = model_dir(tmp_path / "m", {"model_type": "llama"})
    (directory / "model.safetensors").write_bytes(content)
    with pytest.raises(ModelFilesError, match=needle):
        read_model_files(directory)


def test_a_local_70b_directory_replacing_the_suites_models_gets_its_real_size_class(tmp_path: Path) -> None:
    directory = model_dir(tmp_path / "l70", LLAMA_2_70B)
    model = override_suite(load_suite("full"), models=[str(directory)]).models[0]
    assert model.size_class == "70b" and model.params_b == pytest.approx(68.98, abs=0.01)
    assert model.architecture == {"layers": 80, "hidden": 8192, "heads": 64, "kv_heads": 8, "head_dim": 128, "vocab": 32000}
    profile = model_profile(model)
    assert profile.params == count_parameters(LLAMA_2_70B)
    assert profile.weights_gb == pytest.approx(count_parameters(LLAMA_2_70B) * 2 / GIB)


def test_a_hub_model_is_planned_at_its_declared_size_until_its_weights_are_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    revision = "a" * 40
    model = replace(next(m for m in load_suite("full").models if m.name == "mistral-7b"), revision=revision)
    repo = tmp_path / "hub" / "models--mistralai--Mistral-7B-v0.1"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    snapshot = model_dir(repo / "snapshots" / revision, {"model_type": "mistral", "num_hidden_layers": 4})
    assert weights_directory(model.source, revision, local=False) is None  # config alone: not downloaded yet
    assert model_profile(model) == ModelProfile.from_declared(7.24, "bfloat16", **model.architecture)
    write_safetensors(snapshot / "model.safetensors", {"w": [1000, 64]})
    assert weights_directory(model.source, revision, local=False) == snapshot
    assert model_profile(model).params == 64000


def test_gpu_plan_places_a_local_70b_checkpoint_across_gpus(tmp_path: Path) -> None:
    """The issue's check: `pytest --co validation/ --suite full --models DIR --gpus 8x80 --gpu-plan`."""
    directory = model_dir(tmp_path / "ckpt", LLAMA_2_70B)
    command = [sys.executable, "-m", "pytest", "--co", "-q", str(VALIDATION), "--suite", "full", "--models", str(directory)]
    command += ["--gpus", "8x80", "--gpu-plan", "--run-dir", str(tmp_path / "run"), "-p", "no:cacheprovider"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("test_calibration[ckpt-calibration-run1]")]
    assert rows and rows[0][2:4] == ["128.5", "0.1"] and rows[0][5] == "2", rows
    placement = next(line for line in result.stdout.splitlines() if line.startswith("placement:"))
    assert "on 2 GPUs" in placement and "across GPUs: ckpt" in placement, placement
