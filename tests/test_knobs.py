"""The earlier harnesses' environment knobs as options: option over variable over suite, each value checked and recorded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pytest_invarlock import knobs
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError

PRESET = {
    "drift_band": [0.97, 1.03],
    "spectral_kappa": {"ffn": 2.5},
    "spectral_max_caps": 5,
    "rmt_epsilon": {"ffn": 0.1},
    "variance_min_effect_lognll": 0.001,
}


class Config:
    """What knobs.apply reads from pytest's config: options and the invocation directory."""

    def __init__(self, cwd: Path, **options: Any) -> None:
        self.options = options
        self.invocation_params = SimpleNamespace(dir=cwd)

    def getoption(self, name: str, default: Any = None) -> Any:
        return self.options.get(name, default)


@pytest.fixture(autouse=True)
def no_seed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for variables in knobs.ENVIRONMENT.values():
        for variable in variables:
            monkeypatch.delenv(variable, raising=False)


def apply(tmp_path: Path, suite: str = "tiny", **options: Any) -> tuple[Any, dict[str, str]]:
    return knobs.apply(Config(tmp_path, **options), load_suite(suite))  # type: ignore[arg-type]


def test_nothing_given_changes_nothing(tmp_path: Path) -> None:
    suite, sources = apply(tmp_path)
    assert suite == load_suite("tiny") and sources == {}


def test_an_option_wins_over_its_variable_and_both_are_recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PACK_GUARDS_ORDER", "invariants,rmt")
    monkeypatch.setenv("INVARLOCK_SNAPSHOT_MODE", "bytes")
    monkeypatch.setenv("INVARLOCK_SKIP_OVERHEAD_CHECK", "1")
    suite, sources = apply(tmp_path, invarlock_guard_order="spectral, invariants")
    settings = suite.models[0].settings
    assert settings.guard_order == ("spectral", "invariants") and settings.snapshot_mode == "bytes"
    assert settings.guard_overhead is False
    assert sources == {
        "guard_order": "option",
        "snapshot_mode": "$INVARLOCK_SNAPSHOT_MODE",
        "skip_overhead_check": "$INVARLOCK_SKIP_OVERHEAD_CHECK",
    }


def test_b200s_guard_order_variable_and_a_false_skip_overhead_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("B200_GUARDS_ORDER", "invariants,spectral,rmt,variance,invariants")
    monkeypatch.setenv("INVARLOCK_SKIP_OVERHEAD_CHECK", "0")
    suite, sources = apply(tmp_path, suite="ci")
    assert all(m.settings.guard_order == ("invariants", "spectral", "rmt", "variance", "invariants") for m in suite.models)
    assert all(m.settings.guard_overhead for m in suite.models) and "skip_overhead_check" not in sources


def test_eval_data_makes_every_model_evaluate_the_users_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "mine.jsonl").write_text('{"content": "Some text. More text."}\n')
    monkeypatch.setenv("INVARLOCK_LOCAL_JSONL_FILE", "mine.jsonl")
    suite, sources = apply(tmp_path, suite="ci", invarlock_eval_text_field="content")
    assert all(m.settings.eval_data == str(tmp_path / "mine.jsonl") and m.settings.dataset == "local" for m in suite.models)
    assert sources == {"eval_text_field": "option", "eval_data": "$INVARLOCK_LOCAL_JSONL_FILE"}
    with pytest.raises(SuiteError, match="no string field 'text'"):
        apply(tmp_path, suite="ci")


def test_a_reused_preset_dir_drops_the_calibration_runs_unless_asked(tmp_path: Path) -> None:
    (tmp_path / "calibrated_preset_tiny-kjv.yaml").write_text(json.dumps(PRESET))
    suite, sources = apply(tmp_path, invarlock_preset_dir=str(tmp_path))
    assert suite.calibration_preset == tmp_path and suite.runs["calibration"] == 0 and sources["calibration_preset"] == "option"
    kept, _ = apply(tmp_path, invarlock_preset_dir=str(tmp_path), invarlock_runs_calibration=2)
    assert kept.runs["calibration"] == load_suite("tiny").runs["calibration"]  # --runs-calibration applies separately
    with pytest.raises(SuiteError, match="no calibrated preset for model gpt2"):
        apply(tmp_path, suite="ci", invarlock_preset_dir=str(tmp_path))


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"invarlock_guard_order": "invariants,spectrum"}, "name guards from invariants, spectral, rmt, variance"),
        ({"invarlock_tuned_edit_params": "nope.json"}, "is not a file"),
        ({"invarlock_eval_data": "nope.jsonl"}, "is not a file"),
        ({"invarlock_preset_file": "nope.yaml"}, "no calibrated preset for model tiny-kjv"),
    ],
)
def test_bad_knobs_are_usage_errors_that_say_what_to_give(tmp_path: Path, options: dict[str, str], problem: str) -> None:
    with pytest.raises(SuiteError, match=problem):
        apply(tmp_path, **options)


def test_a_bad_snapshot_mode_variable_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INVARLOCK_SNAPSHOT_MODE", "fast")
    with pytest.raises(SuiteError, match=r"\$INVARLOCK_SNAPSHOT_MODE.*'fast'"):
        apply(tmp_path)


def test_the_tuned_params_file_is_copied_for_campaigns_with_tuned_specs(tmp_path: Path) -> None:
    knobs.record_inputs(load_suite("tiny"), tmp_path / "tiny")
    assert not (tmp_path / "tiny" / knobs.TUNED_COPY).exists()
    subset = load_suite("subset")
    knobs.record_inputs(subset, tmp_path / "subset")
    assert (tmp_path / "subset" / knobs.TUNED_COPY).read_bytes() == subset.tuned_params_file.read_bytes()
