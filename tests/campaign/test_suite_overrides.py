"""Issue 12: `--models` keeps the suite's `invarlock:` block and size class; `min_signal_fraction`."""

from __future__ import annotations

from pathlib import Path

import pytest

from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.suite.overrides import override_suite


def test_a_local_model_dir_keeps_the_tiny_suites_settings(tmp_path: Path) -> None:
    # The old override dropped the suite's block: wikitext2, acceptance [0.90, 1.20], size class 7b.
    local = tmp_path / "my-model"
    local.mkdir()
    suite = load_suite("tiny")
    model = override_suite(suite, models=[str(local)]).models[0]
    assert (model.size_class, model.dtype) == (suite.models[0].size_class, suite.models[0].dtype) == ("tiny", "float32")
    assert model.settings == suite.models[0].settings
    assert model.settings.dataset == "local" and (model.settings.acceptance_min, model.settings.acceptance_max) == (0.95, 1.10)


def test_a_hub_model_with_a_size_in_its_name_keeps_the_block_but_its_own_size() -> None:
    model = override_suite(load_suite("tiny"), models=["org/Some-7B"]).models[0]
    assert model.size_class == "7b"
    assert model.settings.dataset == "local" and model.settings.acceptance_max == 1.10


def test_min_signal_fraction_is_suite_configurable(tmp_path: Path) -> None:
    assert load_suite("tiny").min_signal_fraction == 0.0  # tracked, not required there (suites/tiny.yaml)
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nmodels: [tiny-kjv]\nscenarios: [calibration]\n")
    assert load_suite(str(path)).min_signal_fraction == 0.5  # the default
    path.write_text("name: s\nmodels: [tiny-kjv]\nscenarios: [calibration]\nmin_signal_fraction: 0.8\n")
    assert load_suite(str(path)).min_signal_fraction == 0.8
    path.write_text("name: s\nmodels: [tiny-kjv]\nscenarios: [calibration]\nmin_signal_fraction: 2\n")
    with pytest.raises(SuiteError, match="min_signal_fraction"):
        load_suite(str(path))
