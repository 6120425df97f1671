"""Suite files: every shipped suite loads; every kind of mistake names the file, the key and the fix."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.campaign.items import build_items, index_items, item_from_nodeid
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.suite.files import shipped_suites
from pytest_invarlock.campaign.suite.loading import DEFAULT_RUNS
from pytest_invarlock.campaign.suite.models import model_from_source
from pytest_invarlock.campaign.suite.overrides import override_suite
from pytest_invarlock.campaign.suite.size_classes import infer_size_class


def write_suite(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "custom.yaml"
    path.write_text(textwrap.dedent(body))
    return path


def test_every_shipped_suite_loads_with_the_seed_shapes() -> None:
    assert set(shipped_suites()) >= {"tiny", "smol", "ci", "subset", "showcase", "workshop3", "full", "b200"}
    b200 = load_suite("b200")
    assert [m.name for m in b200.models][:3] == ["mistral-7b", "llama-2-13b", "qwen2.5-14b"]
    assert len(b200.models) == 8
    # The B200 documents' ~71 tasks per model: 5 calibration, 4x3 clean, 4x2 stress, 5 errors, 4 x (1 + 8) benchmarks.
    assert len(build_items(b200)) == 8 * (5 + 12 + 8 + 5 + 36)
    assert [s.name for s in b200.scenarios if s.kind == "error"] == [
        "nan_injection", "inf_injection", "extreme_quant", "scale_explosion", "zero_layer",
    ]  # fmt: skip
    ci = load_suite("ci")
    assert ci.runs["calibration"] == 2 and all(s.kind != "error" for s in ci.scenarios)
    seventy = load_suite("full").model("qwen1.5-72b").settings
    assert (seventy.seq_len, seventy.stride, seventy.eval_batch) == (128, 128, 2)  # stride: no overlap (InvarLock 0.12)
    # InvarLock 0.12's balanced-tier floors (180+180 windows, 1200 replicates) bind every size class.
    for model in load_suite("b200").models:
        assert model.settings.preview_windows >= 180 and model.settings.bootstrap_replicates >= 1200


def test_item_ids_are_readable_and_map_back_from_nodeids() -> None:
    items = build_items(load_suite("full"))
    ids = [i.param_id for i in items]
    assert "mistral-7b-quant_rtn_clean-run2" in ids
    assert "qwen2.5-14b-prune_clean-hellaswag" in ids
    assert len(set(ids)) == len(ids)
    index = index_items(items)
    item = item_from_nodeid("validation/test_certify.py::test_edit[mistral-7b-quant_rtn_clean-run2]", index)
    assert item is not None and item.run == 2 and item.scenario.spec == "quant_rtn:8:128:ffn"  # the tuned default
    assert item_from_nodeid("validation/test_certify.py::test_edit[nope-run1]", index) is None


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        (
            "models: [tiny-kjv]\nscenarios: [{name: bad, spec: 'quant_rtn:banana:ffn', kind: clean}]\n",
            ["scenarios[0].spec", "banana", "BITS"],
        ),
        ("models: [tiny-kjv]\nscenarios: [quant_rtn_8bit_clen]\n", ["scenarios[0]", "quant_rtn_8bit_clean"]),
        ("models: [no-such-model]\n", ["models[0]", "no-such-model"]),
        ("models: []\n", ["models", "at least one model"]),
        ("models: [tiny-kjv]\nruns: {clean: -1}\n", ["runs.clean", ">= 0"]),
        ("models: [tiny-kjv]\nmodles: []\n", ["modles", "models"]),
        ("models: [tiny-kjv]\nscenarios: [{name: x, spec: nan_injection, kind: clean}]\n", ["error spec", "clean"]),
        ("models: [tiny-kjv]\ninvarlock: {acceptance: [1.1, 0.9]}\n", ["acceptance", "min < 1 < max"]),
        ("models: [tiny-kjv]\nscenarios: [calibration, calibration]\n", ["appears twice"]),
        ("models: [tiny-kjv\n", ["not valid YAML"]),
    ],
)
def test_bad_suites_say_where_and_how_to_fix(tmp_path: Path, body: str, needles: list[str]) -> None:
    path = write_suite(tmp_path, body)
    with pytest.raises(SuiteError) as info:
        load_suite(str(path))
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_unknown_suite_names_the_shipped_ones() -> None:
    with pytest.raises(SuiteError, match="unknown suite 'tinny'.*Did you mean 'tiny'"):
        load_suite("tinny")
    with pytest.raises(SuiteError, match="does not exist"):
        load_suite("/nonexistent/suite.yaml")


def test_overrides_replace_models_runs_errors_and_tier() -> None:
    suite = load_suite("full")
    custom = override_suite(
        suite, models=["mistral-7b", "someorg/Other-13B-v2"], runs={"clean": 1, "stress": None}, errors=False, tier="aggressive"
    )
    assert [m.name for m in custom.models] == ["mistral-7b", "other-13b-v2"]
    assert custom.models[1].size_class == "13b" and custom.models[1].params_b == 13
    assert custom.runs["clean"] == 1 and custom.runs["stress"] == DEFAULT_RUNS["stress"]
    assert not any(s.kind == "error" for s in custom.scenarios)
    assert {m.settings.tier for m in custom.models} == {"aggressive"}
    with pytest.raises(SuiteError, match="--runs-clean must be >= 0"):
        override_suite(suite, runs={"clean": -2})


def test_inline_models_and_scenarios_override_size_class_settings(tmp_path: Path) -> None:
    path = write_suite(
        tmp_path,
        """
        name: mine
        models:
          - {name: local-one, source: /tmp, size_class: 7b, params_b: 7, invarlock: {seq_len: 256}}
        scenarios:
          - calibration
          - {name: q6, spec: "quant_rtn:6:64:attn", kind: stress, gating: false}
        invarlock: {stride: 512, acceptance: [0.95, 1.10]}
    """,
    )
    suite = load_suite(str(path))
    settings_ = suite.models[0].settings
    assert (settings_.seq_len, settings_.stride, settings_.acceptance_min, settings_.acceptance_max) == (256, 512, 0.95, 1.10)
    assert suite.scenarios[1].expectation == "signal"
    assert suite.scenarios[0].expectation == "pass"


@given(st.floats(min_value=0.01, max_value=500))
@settings(max_examples=50, deadline=None)
def test_size_classes_grow_with_parameters(params_b: float) -> None:
    order = ["small", "7b", "13b", "30b", "40b", "70b"]
    assert order.index(infer_size_class(params_b)) <= order.index(infer_size_class(params_b * 3))


def test_model_from_source_reads_sizes_from_hub_ids() -> None:
    assert model_from_source("mistralai/Mixtral-8x7B-v0.1")["size_class"] == "moe"
    assert model_from_source("Qwen/Qwen2.5-0.5B")["params_b"] == 0.5
    assert model_from_source("HuggingFaceTB/SmolLM2-135M")["params_b"] == 0.135


def test_a_seq_len_of_ones_own_strides_by_itself_and_a_shorter_stride_is_a_usage_error(tmp_path: Path) -> None:
    path = write_suite(tmp_path, "name: own\nmodels: [gpt2]\nscenarios: [calibration]\ninvarlock: {seq_len: 768}\n")
    assert load_suite(str(path)).models[0].settings.stride == 768
    path = write_suite(
        tmp_path, "name: overlap\nmodels: [gpt2]\nscenarios: [calibration]\ninvarlock: {seq_len: 1024, stride: 512}\n"
    )
    with pytest.raises(SuiteError, match=r"stride 512 < seq_len 1024: overlapping windows.*Set stride to seq_len \(1024\)"):
        load_suite(str(path))
