"""The InvarLock boundary: report parsing on synthetic reports, failure classification,
settings checks, and a real `invarlock evaluate` on a tiny random model."""

from __future__ import annotations

import json
import math
import socket
from pathlib import Path
from typing import Any

import pytest

from helpers import GATES, random_small_model, synthetic_report
from pytest_invarlock.campaign.presets import PRESET_KEYS, derive_preset, edit_preset
from pytest_invarlock.worker.certifier import (
    NON_FINITE_FAILURE,
    REPORT_FILE,
    EvaluateSettings,
    Verdict,
    calibration_stats,
    certify,
    read_verdict,
    run_baseline,
    tier_preset,
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def test_from_report_reads_the_numbers():
    verdict = Verdict.from_report(synthetic_report(guard_warnings_present=False), report_path="r.json")
    assert verdict.overall_pass and verdict.failed_gates == ()
    assert verdict.ratio_vs_baseline == 1.01
    assert verdict.display_ci == (0.99, 1.03)
    assert verdict.drift == pytest.approx(1.02)
    assert verdict.acceptance_range == (0.9, 1.2)
    assert verdict.drift_band == (0.95, 1.05)
    assert verdict.tokens == 220
    assert (verdict.spectral_caps_applied, verdict.spectral_max_caps) == (1, 2)
    assert verdict.spectral_kappa == {"ffn": 3.0}
    assert verdict.spectral_max_z == {"ffn": 2.5}
    assert verdict.rmt_edge_growth == {"ffn": 0.004}
    assert verdict.invariants_failures == ("weights_finite: non_finite (error)",)
    assert verdict.failure is None and not verdict.crashed


@pytest.mark.parametrize("gate", [*GATES, "guard_overhead_acceptable"])
def test_any_failed_gate_fails_the_verdict(gate):
    verdict = Verdict.from_report(synthetic_report(**{gate: False}))
    assert not verdict.overall_pass
    assert verdict.failed_gates == (gate,)
    assert verdict.flags[gate] is False


def test_an_unmeasured_guard_overhead_does_not_gate():
    report = {**synthetic_report(guard_overhead_acceptable=False), "guard_overhead": {"evaluated": False}}
    assert Verdict.from_report(report).overall_pass


def test_non_finite_numbers_become_none():
    report = synthetic_report()
    report["primary_metric"].update(ratio_vs_baseline=math.nan, display_ci=[math.nan, 1.0], invalid=True)
    verdict = Verdict.from_report(report)
    assert verdict.ratio_vs_baseline is None and verdict.display_ci is None and verdict.invalid


@pytest.mark.parametrize(
    "verdict",
    [Verdict.from_report(synthetic_report(), elapsed_s=3.5), Verdict.from_failure("boom", crashed=True)],
)
def test_verdict_round_trips_through_json(verdict):
    assert Verdict.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict


def test_calibration_stats_by_hand():
    stats = calibration_stats(synthetic_report())
    assert stats.drift == pytest.approx(1.02)
    # max_caps 2 over attn (2 modules) and ffn (2 modules): one cap each -> the largest |z|.
    assert stats.spectral_z_at_budget == {"attn": 3.0, "ffn": 2.0}
    assert stats.rmt_epsilon == {"ffn": 0.004}
    assert stats.delta_ci_half_width == pytest.approx(0.002)


def test_calibration_stats_needs_a_finite_primary_metric():
    report = synthetic_report()
    report["primary_metric"]["final"] = math.nan
    with pytest.raises(ValueError, match="healthy no-op"):
        calibration_stats(report)


def test_tier_preset_fills_every_preset_key():
    preset = tier_preset("balanced")
    assert set(PRESET_KEYS) <= preset.keys()
    assert preset["spectral_max_caps"] > 0 and preset["spectral_kappa"]
    with pytest.raises(ValueError, match="Unknown InvarLock tier"):
        tier_preset("reckless")


def test_read_verdict_parses_the_report(tmp_path):
    (tmp_path / REPORT_FILE).parent.mkdir(parents=True)
    (tmp_path / REPORT_FILE).write_text(json.dumps(synthetic_report(rmt_stable=False)))
    verdict = read_verdict(tmp_path, 0, elapsed_s=1.0)
    assert not verdict.overall_pass and verdict.failure is None
    assert verdict.report_path == str(tmp_path / REPORT_FILE)


def test_read_verdict_classifies_a_nan_abort_as_detected(tmp_path):
    events = tmp_path / "runs" / "edited" / "20260101_000000" / "events.jsonl"
    events.parent.mkdir(parents=True)
    events.write_text(
        '{"operation": "non_finite_loss", "data": {"loss": NaN}}\n'
        '{"operation": "non_finite_loss_total", "data": {"non_finite_losses": 180, "requested": 180}}\n'
    )
    (tmp_path / "evaluate.log").write_text("[FAIL] Window pairing mismatch detected\n")
    verdict = read_verdict(tmp_path, 1)
    assert verdict.failure == f"{NON_FINITE_FAILURE}: 180/180 windows gave a non-finite loss"
    assert not verdict.crashed and not verdict.overall_pass


def test_read_verdict_keeps_the_message_of_a_crash(tmp_path):
    (tmp_path / "evaluate.log").write_text("loading...\n[FAIL] Baseline report model mismatch.\n")
    verdict = read_verdict(tmp_path, 2)
    assert verdict.crashed
    assert verdict.failure.startswith("invarlock evaluate exited 2")
    assert verdict.failure.endswith("Baseline report model mismatch.")


def test_settings_need_an_absolute_existing_dataset():
    with pytest.raises(ValueError, match="absolute path"):
        EvaluateSettings(dataset_file=Path("eval.jsonl")).check()


def test_settings_below_the_ci_coverage_floor_are_refused(tmp_path):
    corpus = tmp_path / "eval.jsonl"
    corpus.write_text('{"text": "x"}\n' * 400)
    with pytest.raises(ValueError, match="INSUFFICIENT-SAMPLE"):
        EvaluateSettings(dataset_file=corpus, preview_n=100, final_n=100).check()
    with pytest.raises(ValueError, match="holds 400 passages"):
        EvaluateSettings(dataset_file=corpus, preview_n=300, final_n=300).check()


def test_certify_refuses_a_model_path_that_renames_the_family(tmp_path):
    corpus = tmp_path / "eval.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"passage {i}"}) + "\n" for i in range(360)))
    misleading = tmp_path / "roberta-copy"
    misleading.mkdir()
    (misleading / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(ValueError, match="bert"):
        certify(misleading, misleading, tmp_path / "work", EvaluateSettings(dataset_file=corpus), edit_label="noop")


def test_certify_rejects_unsupported_mode_combinations(tmp_path):
    settings = EvaluateSettings(dataset_file=tmp_path / "unused.jsonl")
    with pytest.raises(ValueError, match="mode must be"):
        certify(tmp_path, tmp_path, tmp_path, settings, edit_label="noop", mode="thread")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout_s"):
        certify(tmp_path, tmp_path, tmp_path, settings, edit_label="noop", mode="inprocess", timeout_s=5)


# --- real InvarLock --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_assets(tmp_path_factory) -> dict[str, Any]:
    """A random 2-layer causal LM (seconds to build), a noisy and a NaN copy, a corpus."""
    import torch

    def noisy(model: Any) -> None:
        for weight in (p for n, p in model.named_parameters() if "mlp" in n):
            weight.add_(torch.randn_like(weight) * weight.std() * 0.3)

    def nan(model: Any) -> None:
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")

    made = random_small_model(tmp_path_factory.mktemp("assets"), {"baseline": lambda model: None, "noisy": noisy, "nan": nan})
    paths, corpus = {name: made[name] for name in ("baseline", "noisy", "nan")}, made["corpus"]
    settings = EvaluateSettings(dataset_file=corpus, seq_len=32, stride=32, min_tokens=1000)
    return {**paths, "settings": settings}


def test_real_evaluate_feeds_the_preset_back_and_restores_the_process(tmp_path, tiny_assets):
    import torch

    settings, baseline = tiny_assets["settings"], tiny_assets["baseline"]
    baseline_report = run_baseline(baseline, tmp_path / "baseline", settings, mode="subprocess")
    noop = read_verdict(tmp_path / "baseline", 0)
    assert noop.ratio_vs_baseline == pytest.approx(1.0) and noop.failure is None

    noop_stats = calibration_stats(json.loads(Path(noop.report_path).read_text()))
    calibrated = derive_preset([noop_stats], tier_preset("balanced"))
    preset = {**edit_preset(calibrated, "quant_rtn"), "drift_band": [0.9, 1.1]}
    state = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), socket.socket)
    verdict = certify(
        baseline,
        tiny_assets["noisy"],
        tmp_path / "edit",
        settings,
        edit_label="noise",
        preset=preset,
        baseline_report=baseline_report,
        mode="inprocess",
    )
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(), socket.socket) == state
    assert verdict.failure is None, verdict.failure
    assert verdict.ratio_vs_baseline is not None and verdict.ratio_vs_baseline != 1.0
    assert verdict.display_ci is not None
    assert verdict.spectral_kappa == pytest.approx(preset["spectral_kappa"])
    assert verdict.spectral_max_caps == 15
    assert verdict.drift_band == (0.9, 1.1)
    assert verdict.acceptance_range == (0.9, 1.2)
    assert set(GATES) <= verdict.flags.keys()


def test_real_nan_model_is_detected_not_crashed(tmp_path, tiny_assets):
    settings, baseline = tiny_assets["settings"], tiny_assets["baseline"]
    verdict = certify(baseline, tiny_assets["nan"], tmp_path, settings, edit_label="nan", mode="inprocess")
    assert verdict.failure is not None and verdict.failure.startswith(NON_FINITE_FAILURE)
    assert not verdict.crashed and not verdict.overall_pass


def test_hub_dataset_settings_write_the_provider_and_seed(tmp_path):
    import yaml

    from pytest_invarlock.worker.certifier import _write_invarlock_config

    settings = EvaluateSettings(dataset_file=None, seed=44, seq_len=512, stride=512)
    settings.check()  # no local file to validate
    preset_file = tmp_path / "preset.yaml"
    _write_invarlock_config(tmp_path / "root", preset_file, settings, None)
    dataset = yaml.safe_load(preset_file.read_text())["dataset"]
    assert dataset["provider"] == "wikitext2" and dataset["seed"] == 44
    assert (dataset["seq_len"], dataset["preview_n"], dataset["final_n"]) == (512, 180, 180)
    assert "file" not in dataset


@pytest.mark.parametrize("online", [True, False])
def test_the_command_line_allows_the_network_only_online(online):
    from pytest_invarlock.worker.certifier import _command_line

    argv = _command_line({"baseline": "/m", "allow_network": online, "baseline_report": None})
    options = argv[argv.index("--baseline") :]
    assert options == (["--baseline", "/m", "--allow-network"] if online else ["--baseline", "/m"])


def test_offline_evaluate_without_the_hub_dataset_says_how_to_get_it(tmp_path, tiny_assets, monkeypatch):
    """InvarLock's wikitext2 provider, offline, with an empty HF cache: the item's failure names the fix."""
    import datasets.config
    import huggingface_hub.constants

    from pytest_invarlock.worker.certifier import OFFLINE_HOW_TO

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    settings = EvaluateSettings(dataset_file=None, seq_len=32, stride=32, min_tokens=1000)
    baseline = tiny_assets["baseline"]
    verdict = certify(baseline, baseline, tmp_path / "work", settings, edit_label="noop", mode="inprocess", online=False)
    assert verdict.crashed and verdict.failure is not None
    assert verdict.failure.startswith(OFFLINE_HOW_TO), verdict.failure
