"""The probe sidecars on the shipped tiny model: InvarLock's RMT and VE measurements outside compare mode.

Windows come from a synthetic baseline report holding `evaluation_windows` (as InvarLock writes them),
so no evaluate runs; the models are real.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest

for _offline in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_offline, "1")

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from pytest_invarlock.assets.tiny_model import build_tiny_assets, read_texts  # noqa: E402
from pytest_invarlock.edits.kernels import apply_spec  # noqa: E402
from pytest_invarlock.worker import certifier, probes  # noqa: E402

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

PRESET = {"rmt_epsilon": {"attn": 0.01, "ffn": 0.01, "embed": 0.01, "other": 0.01}, "variance_min_effect_lognll": 0.0009}


@pytest.fixture(scope="module")
def tiny() -> tuple[Any, Path]:
    assets = build_tiny_assets()
    model = transformers.AutoModelForCausalLM.from_pretrained(assets.model_dir).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(assets.model_dir)
    texts = read_texts(assets.eval_file, limit=24)
    encoded = [tokenizer(text, truncation=True, max_length=128, padding="max_length") for text in texts]
    windows = {
        arm: {"input_ids": [e["input_ids"] for e in part], "attention_masks": [e["attention_mask"] for e in part]}
        for arm, part in (("preview", encoded[:12]), ("final", encoded[12:]))
    }
    report = assets.root.parent / "probe-test-report.json"
    report.write_text(json.dumps({"evaluation_windows": windows}))
    return model, report


def run(kind: str, baseline: Any, subject: Any, report: Path) -> dict[str, Any]:
    probe = probes.run(
        kind, certifier, baseline_model=baseline, subject_model=subject, report_path=report, preset=PRESET, tier="balanced"
    )
    json.dumps(probe, allow_nan=False)  # the sidecar is plain JSON
    return probe


def test_windows_are_evenly_spaced_over_both_arms(tiny: tuple[Any, Path]) -> None:
    _, report = tiny
    batches = probes.windows(report, 8)
    stored = json.loads(report.read_text())["evaluation_windows"]
    rows = stored["preview"]["input_ids"] + stored["final"]["input_ids"]
    assert len(batches) == 8
    assert batches[0]["input_ids"].tolist() == [rows[0]] and batches[-1]["input_ids"].tolist() == [rows[-1]]
    with pytest.raises(ValueError, match="no evaluation windows"):
        empty = report.with_name("empty.json")
        empty.write_text("{}")
        probes.windows(empty, 8)


def test_rmt_probe_of_a_model_against_itself_is_stable_and_noise_moves_the_edge_risk(tiny: tuple[Any, Path]) -> None:
    model, report = tiny
    same = run("rmt_norm_noise", model, model, report)
    assert same["measured"] and same["stable"] and same["epsilon_violations"] == []
    assert same["edge_risk_baseline"] == same["edge_risk_subject"] and same["windows"] == probes.RMT_WINDOWS
    assert not probes.signal(same)
    noisy = copy.deepcopy(model)
    apply_spec(noisy, "rmt_norm_noise")
    moved = run("rmt_norm_noise", model, noisy, report)
    assert moved["measured"] and moved["modules_changed"] > 0 and same["modules_changed"] == 0
    noised = {f"model.layers.{block}." for block in range(4, 8)}  # the last 4 of 8 blocks, and what follows them
    assert all(module.startswith(tuple(noised)) for module in moved["largest_module_changes"])
    assert moved["stable"] == (moved["epsilon_violations"] == [])
    assert probes.signal(moved) == (not moved["stable"])
    for violation in moved["epsilon_violations"]:  # InvarLock's rule: current edge above (1 + epsilon) x baseline
        assert violation["edge_cur"] > (1 + PRESET["rmt_epsilon"][violation["family"]]) * violation["edge_base"]


def test_ve_probe_records_proposed_scales_and_the_ab_gain(tiny: tuple[Any, Path]) -> None:
    model, report = tiny
    skewed = copy.deepcopy(model)
    apply_spec(skewed, "ve_mlp_scale_skew")
    probe = run("ve_mlp_scale_skew", model, skewed, report)  # (VE may leave its scales in: the pipeline passes copies)
    assert probe["ready"] and probe["target_modules"] > 0 and probe["proposed_scales"] >= 0
    if probe["ppl_no_ve"] is not None and probe["ppl_with_ve"] is not None:
        assert math.isclose(probe["ab_gain"], (probe["ppl_no_ve"] - probe["ppl_with_ve"]) / probe["ppl_no_ve"])
    assert probes.signal(probe) == (probe["signal"] or probe["proposed_scales"] > 0)
