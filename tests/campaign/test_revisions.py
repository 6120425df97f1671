"""Pinned hub revisions: resolved online into state/model_revisions.json, read offline, refused unpinned."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import offline_options
from pytest_invarlock.campaign.revisions import REVISIONS_FILE, read_revisions, resolve_revisions
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.state import ConfigState

SHA = "607a30d783dfa663caf39e06633721c8d4cfcd7e"
OTHER = "1" * 40


def fake_hub(calls: list[str]):
    def resolve(repo: str) -> str:
        calls.append(repo)
        return {"gpt2": SHA, "gpt2-medium": OTHER}[repo]

    return resolve


def test_online_resolves_each_hub_model_and_writes_the_file(tmp_path: Path) -> None:
    path = tmp_path / REVISIONS_FILE
    calls: list[str] = []
    suite, resolved = resolve_revisions(load_suite("ci"), path, online=True, resolver=fake_hub(calls))
    assert resolved == {"gpt2": SHA, "gpt2-medium": OTHER} and sorted(calls) == ["gpt2", "gpt2-medium"]
    assert [m.revision for m in suite.models] == [SHA, OTHER]
    assert json.loads(path.read_text())["revisions"] == {"gpt2": SHA, "gpt2-medium": OTHER}
    # A second (online or offline) session reads the file and asks the hub nothing.
    again: list[str] = []
    suite2, resolved2 = resolve_revisions(load_suite("ci"), path, online=True, resolver=fake_hub(again))
    assert resolved2 == {} and again == [] and suite2.models == suite.models


def test_offline_reads_the_file_and_leaves_unknown_models_unpinned(tmp_path: Path) -> None:
    path = tmp_path / "revs.json"
    path.write_text(json.dumps({"revisions": {"gpt2": SHA}}))
    suite, _ = resolve_revisions(load_suite("ci"), path, online=False, resolver=fake_hub([]))
    assert [m.revision for m in suite.models] == [SHA, None]


def test_a_suite_pin_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "revs.json"
    path.write_text(json.dumps({"revisions": {"gpt2": OTHER}}))
    suite_file = tmp_path / "s.yaml"
    suite_file.write_text(
        f"name: s\nmodels: [{{name: g, source: gpt2, revision: '{SHA}', params_b: 0.1}}]\nscenarios: [calibration]\n"
    )
    suite, _ = resolve_revisions(load_suite(str(suite_file)), path, online=True, resolver=fake_hub([]))
    assert suite.models[0].revision == SHA


@pytest.mark.parametrize("content", ["not json", '{"revisions": {"gpt2": "main"}}', "[]"])
def test_a_bad_revisions_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    path = tmp_path / "revs.json"
    path.write_text(content)
    with pytest.raises(SuiteError, match="revisions file"):
        read_revisions(path)


def test_offline_refuses_an_unpinned_hub_model_and_says_how_to_pin(tmp_path: Path) -> None:
    suite = load_suite("ci")
    state = ConfigState(
        suite=suite,
        items=[],
        options=offline_options(),
        run_dir=tmp_path,
        device="cuda",
        session="s",
        revisions_file=tmp_path / REVISIONS_FILE,
    )
    reason = state._model_unavailable(suite.models[0])
    assert reason is not None and "without a pinned revision" in reason
    assert "--online" in reason and "--revisions FILE" in reason and "model_revisions.json" in reason
