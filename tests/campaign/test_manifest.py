"""The earlier harnesses' scenario manifests and settings in suite files: scenario sets, tuned clean specs, informational
error injections, the knob settings (guard_order, snapshot_mode, eval_data) and reused presets. Pure."""

from __future__ import annotations

import json
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from pytest_invarlock.campaign import eval_data, tuned
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.presets import read_preset, reused_preset
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError

EVIDENCE_PACK = {
    "calibration": ("calibration", "pass"),
    "quant_rtn_clean": ("clean", "pass"),
    "fp8_clean": ("clean", "pass"),
    "prune_clean": ("clean", "pass"),
    "svd_clean": ("clean", "pass"),
    "quant_rtn_8bit_stress": ("stress", "signal"),
    "fp8_e5m2_stress": ("stress", "signal"),
    "prune_50pct_stress": ("stress", "fail"),
    "svd_rank32_stress": ("stress", "fail"),
    **dict.fromkeys(
        (
            "nan_injection",
            "inf_injection",
            "shape_mismatch",
            "missing_tensors",
            "extreme_quant",
            "scale_explosion",
            "rank_collapse",
            "norm_collapse",
            "weight_tying_break",
        ),
        ("error", "detect"),
    ),
    **dict.fromkeys(("rmt_norm_noise", "spectral_moderate_scale", "ve_mlp_scale_skew"), ("error", "signal")),
}


def write(tmp_path: Path, body: str, name: str = "custom.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize("name", ["subset", "showcase", "workshop3", "full"])
def test_evidence_pack_suites_run_the_documents_scenario_manifest(name: str) -> None:
    suite = load_suite(name)
    assert {s.name: (s.kind, s.expectation) for s in suite.scenarios} == EVIDENCE_PACK
    assert (suite.runs["calibration"], suite.runs["clean"], suite.runs["stress"]) == (5, 3, 2)  # the document's defaults
    specs = {
        item.scenario.name: item.scenario.spec for item in build_items(suite) if item.scenario and item.model.name == "mistral-7b"
    }
    assert specs["quant_rtn_clean"] == "quant_rtn:8:128:ffn" and specs["svd_clean"] == "lowrank_svd:256:ffn"  # tuned defaults
    assert specs["fp8_e5m2_stress"] == "fp8:e5m2:all" and specs["quant_rtn_8bit_stress"] == "quant_rtn:8:128:all"


def test_b200_runs_the_five_error_injections_of_its_documents() -> None:
    errors = [s.name for s in load_suite("b200").scenarios if s.kind == "error"]
    assert errors == ["nan_injection", "inf_injection", "extreme_quant", "scale_explosion", "zero_layer"]


def test_an_unknown_scenario_set_names_the_sets(tmp_path: Path) -> None:
    path = write(tmp_path, "name: x\nmodels: [tiny-kjv]\nscenarios: evidence_pak\n")
    with pytest.raises(SuiteError, match="unknown scenario set 'evidence_pak'.*Did you mean 'evidence_pack'"):
        load_suite(str(path))


def tuned_file(tmp_path: Path, data: dict, name: str = "tuned.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def test_tuned_specs_resolve_per_model_by_hub_id_then_name_then_defaults(tmp_path: Path) -> None:
    params = tuned_file(
        tmp_path,
        {
            "models": {
                "mistralai/Mistral-7B-v0.1": {"quant_rtn": {"bits": 4, "group_size": 32, "status": "selected", "scope": "ffn"}},
                "qwen2.5-14b": {"quant_rtn": {"bits": 6, "group_size": 64}},
            },
            "defaults": {"quant_rtn": {"bits": 8, "group_size": 128}, "magnitude_prune": {"sparsity": 0.12}},
        },
    )
    path = write(
        tmp_path,
        f"""
        name: t
        models: [mistral-7b, qwen2.5-14b, yi-34b]
        tuned_edit_params: {params.name}
        scenarios: [calibration, quant_rtn_clean, prune_clean]
        """,
    )
    suite = load_suite(str(path))
    assert suite.tuned_params_file == params
    specs = {(i.model.name, i.scenario.name): i.scenario.spec for i in build_items(suite) if i.scenario and i.run == 1}
    assert specs[("mistral-7b", "quant_rtn_clean")] == "quant_rtn:4:32:ffn"
    assert specs[("qwen2.5-14b", "quant_rtn_clean")] == "quant_rtn:6:64:ffn"
    assert specs[("yi-34b", "quant_rtn_clean")] == "quant_rtn:8:128:ffn"
    assert specs[("yi-34b", "prune_clean")] == "magnitude_prune:0.12:ffn"
    other = tuned_file(
        tmp_path, {"defaults": {"quant_rtn": {"bits": 7, "group_size": 128}, "magnitude_prune": {"sparsity": 0.12}}}, "other.json"
    )
    keys = {i.param_id: i.definition_key for i in build_items(suite)}
    changed = {i.param_id: i.definition_key for i in build_items(replace(suite, tuned_edit_params=other))}
    assert keys["yi-34b-quant_rtn_clean-run1"] != changed["yi-34b-quant_rtn_clean-run1"]  # new parameters, new item
    assert keys["yi-34b-prune_clean-run1"] == changed["yi-34b-prune_clean-run1"]


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ({"bits": 4}, "missing group_size"),
        ({"bits": 4, "group_size": 32, "status": "rejected"}, "no tuned parameters were selected"),
        ({"bits": 4, "group_size": 32, "scope": "ffn@layer=31"}, "differs from the scenario's 'ffn'"),
        ({"bits": 99, "group_size": 32}, "BITS must be an integer 2..8"),
    ],
)
def test_a_wrong_tuned_entry_is_a_suite_error_naming_the_file(tmp_path: Path, entry: dict, problem: str) -> None:
    params = tuned_file(tmp_path, {"models": {"mistral-7b": {"quant_rtn": entry}}})
    path = write(tmp_path, f"name: t\nmodels: [mistral-7b]\ntuned_edit_params: {params}\nscenarios: [quant_rtn_clean]\n")
    with pytest.raises(SuiteError, match=problem) as raised:
        build_items(load_suite(str(path)))
    assert "quant_rtn_clean" in str(raised.value) and "mistral-7b" in str(raised.value)


@pytest.mark.parametrize(
    ("spec", "kind", "problem"),
    [
        ("fp4:clean:ffn", "clean", "only quant_rtn:clean:SCOPE"),
        ("quant_rtn:clean:ffn", "stress", "a tuned spec needs kind clean"),
        ("quant_rtn:clean:mlp", "clean", "scope 'mlp'"),
    ],
)
def test_a_wrong_sentinel_is_refused_when_the_suite_loads(tmp_path: Path, spec: str, kind: str, problem: str) -> None:
    path = write(tmp_path, f"name: t\nmodels: [tiny-kjv]\nscenarios: [{{name: s, spec: '{spec}', kind: {kind}}}]\n")
    with pytest.raises(SuiteError, match=problem):
        load_suite(str(path))


def test_tuned_file_problems_are_explained(tmp_path: Path) -> None:
    with pytest.raises(tuned.TunedParamsError, match="not valid JSON"):
        tuned.load(_bad(tmp_path))
    with pytest.raises(tuned.TunedParamsError, match="schema 'other'"):
        tuned.load(tuned_file(tmp_path, {"schema": "other", "models": {}}))
    assert tuned.is_tuned("lowrank_svd:clean:all") and not tuned.is_tuned("lowrank_svd:32:all")


def _bad(tmp_path: Path) -> Path:
    path = tmp_path / "bad.json"
    path.write_text("{not json")
    return path


def test_knob_settings_validate_and_reach_each_model(tmp_path: Path) -> None:
    text = tmp_path / "mine.jsonl"
    text.write_text('{"body": "One sentence. Another one!"}\n\n{"body": "A third."}\n')
    path = write(
        tmp_path,
        """
        name: t
        models: [tiny-kjv]
        scenarios: [calibration]
        invarlock:
          guard_order: [invariants, spectral, rmt, variance, invariants]
          snapshot_mode: chunked
          eval_data: mine.jsonl
          eval_text_field: body
        """,
    )
    settings = load_suite(str(path)).models[0].settings
    assert settings.guard_order == ("invariants", "spectral", "rmt", "variance", "invariants")
    assert settings.snapshot_mode == "chunked" and settings.eval_data == str(text) and settings.dataset == "local"
    assert eval_data.documents(text, "body") == [["One sentence.", "Another one!"], ["A third."]]
    assert eval_data.identity(text, "body") != eval_data.identity(text, "text")


@pytest.mark.parametrize(
    ("block", "problem"),
    [
        ("guard_order: [invariants, spectrall]", "'spectrall' is not one of"),
        ("guard_order: []", "expected a list of guards"),
        ("snapshot_mode: fast", "'fast' is not one of auto, bytes, chunked"),
        ("eval_data: missing.jsonl", "is not a file"),
        ("eval_data: broken.jsonl", r"broken.jsonl:2: not a JSON object"),
        ("{eval_data: mine.jsonl, eval_text_field: body}", r"mine.jsonl:1: no string field 'body'"),
    ],
)
def test_knob_settings_name_what_is_wrong(tmp_path: Path, block: str, problem: str) -> None:
    (tmp_path / "broken.jsonl").write_text('{"text": "fine."}\n{oops\n')
    (tmp_path / "mine.jsonl").write_text('{"text": "fine."}\n')
    body = (
        f"name: t\nmodels: [tiny-kjv]\nscenarios: [calibration]\ninvarlock: {block}\n"
        if block.startswith("{")
        else (f"name: t\nmodels: [tiny-kjv]\nscenarios: [calibration]\ninvarlock:\n  {block}\n")
    )
    with pytest.raises(SuiteError, match=problem):
        load_suite(str(write(tmp_path, body)))


def test_a_reused_preset_is_found_by_model_and_checked(tmp_path: Path) -> None:
    good = {"drift_band": [0.97, 1.03], "spectral_kappa": {"ffn": 2.5}, "spectral_max_caps": 5, "rmt_epsilon": {"ffn": 0.1},
            "variance_min_effect_lognll": 0.001}  # fmt: skip
    (tmp_path / "calibrated_preset_m.json").write_text(json.dumps(good))
    path, preset = reused_preset(tmp_path, "m")
    assert path.name == "calibrated_preset_m.json" and preset == good
    assert reused_preset(path, "anything")[1] == good  # one file for every model
    with pytest.raises(ValueError, match="no calibrated preset for model other"):
        reused_preset(tmp_path, "other")
    (tmp_path / "bad.yaml").write_text(
        "drift_band: [1.1, 1.2]\nspectral_kappa: {}\nspectral_max_caps: 1\nrmt_epsilon: {}\nvariance_min_effect_lognll: 0\n"
    )
    with pytest.raises(ValueError, match="drift_band must be"):
        read_preset(tmp_path / "bad.yaml")
    (tmp_path / "short.yaml").write_text("drift_band: [0.9, 1.1]\n")
    with pytest.raises(ValueError, match="lacks spectral_kappa"):
        read_preset(tmp_path / "short.yaml")
