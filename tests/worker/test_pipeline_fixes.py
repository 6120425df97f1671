"""Issue 12 deviations in the worker pipeline, each checked against the behaviour it replaced."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.worker import certifier
from pytest_invarlock.worker.pipeline import Worker, calibration_runs

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def test_calibration_runs_use_stride_equal_to_seq_len() -> None:
    # The B200 bash harness's CALIBRATION_RUN uses stride = seq_len (no window overlap), whatever the model's own stride;
    # certify runs take the model's (never shorter than seq_len: InvarLock 0.12 refuses overlapping windows).
    model = load_suite("ci").models[0]
    model = replace(model, settings=replace(model.settings, stride=2 * model.settings.seq_len))
    fake = SimpleNamespace(certifier=certifier, state=SimpleNamespace(device="cpu"))
    calibration = Worker.settings(fake, model, calibration_run=2)  # type: ignore[arg-type]
    certify = Worker.settings(fake, model)  # type: ignore[arg-type]
    assert calibration.stride == model.settings.seq_len
    assert certify.stride == model.settings.stride


def test_preset_uses_the_calibration_scenarios_own_run_count() -> None:
    suite = load_suite("tiny")
    scenario = next(s for s in suite.scenarios if s.kind == "calibration")
    assert calibration_runs(suite) == suite.runs["calibration"] == 3
    # A scenario-level `runs:` wins, as it does for the items the suite builds.
    suite = replace(suite, scenarios=tuple(replace(s, runs=2) if s is scenario else s for s in suite.scenarios))
    assert calibration_runs(suite) == 2 != suite.runs["calibration"]


def test_a_missing_local_model_directory_is_named_as_such(tmp_path: Path, monkeypatch) -> None:
    """Not a confusing hub-cache miss for './model': the item's error names the path and where it was looked for."""
    import pytest

    from pytest_invarlock.worker.artifacts import ModelUnavailable, source_directory

    monkeypatch.chdir(tmp_path)
    model = replace(load_suite("tiny").models[0], source="./no-such-model")
    with pytest.raises(
        ModelUnavailable, match=r"local model directory 'no-such-model' does not exist on .*relative paths start from"
    ):
        source_directory(model, offline=True)
