"""Beside other pytest plugins nothing breaks: our options avoid theirs, and sessions start with real peers installed.

All plugins of an environment share argparse's one namespace of option strings and dests, and a clash stops every
pytest session there at start-up (pytest-playwright's `--device`, dest `device`, did that to ours). The survey of
popular plugins' options is tests/data/peer_options.json; the real peers are requirements-peers.lock, installed by
./dev.sh setup into .venv/peers and put on PYTHONPATH only for the sessions started here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers import OFFLINE_ENV, REPO, VALIDATION
from pytest_invarlock.plugin import OPTION_OWNERS

# Every test here starts pytest sessions (through this module's helpers).
pytestmark = pytest.mark.sessions

SURVEY = Path(__file__).parent / "data" / "peer_options.json"
PEERS = REPO / ".venv" / "peers"
DEST_PREFIX = "invarlock_"


class RecordingGroup:
    """Stands in for pytest's OptionGroup: keeps what each owner registers."""

    def __init__(self) -> None:
        self.options: list[tuple[tuple[str, ...], dict[str, Any]]] = []

    def addoption(self, *names: str, **attrs: Any) -> None:
        self.options.append((names, attrs))


def our_options() -> list[tuple[tuple[str, ...], dict[str, Any]]]:
    group = RecordingGroup()
    for owner in OPTION_OWNERS:
        owner.add_options(group)
    return group.options


def peer_names() -> tuple[dict[str, str], dict[str, str]]:
    """Every surveyed option string and dest -> the plugin that registers it."""
    plugins = json.loads(SURVEY.read_text())["plugins"]
    options = {name: plugin for plugin, info in plugins.items() for name in info["options"]}
    dests = {dest: plugin for plugin, info in plugins.items() for dest in info["dests"]}
    return options, dests


def test_every_option_has_an_explicit_dest_in_our_namespace() -> None:
    options = our_options()
    assert len(options) >= 20
    for names, attrs in options:
        assert attrs.get("dest", "").startswith(DEST_PREFIX), names


def test_no_option_string_or_dest_of_a_surveyed_plugin_is_ours() -> None:
    peer_options, peer_dests = peer_names()
    assert len(peer_options) > 1000 and "--device" in peer_options  # the survey is there, with the clash it records
    taken = {name: peer_options[name] for names, _ in our_options() for name in names if name in peer_options}
    assert taken == {}
    ours = {attrs["dest"] for _, attrs in our_options()}
    assert {dest: peer_dests[dest] for dest in ours if dest in peer_dests} == {}


def test_a_real_session_registers_exactly_these_options(pytester: pytest.Pytester) -> None:
    help_text = pytester.runpytest("--help").stdout.str()
    for names, _ in our_options():
        for name in names:
            assert name in help_text


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    if not (PEERS / "pytest_playwright").is_dir():
        pytest.fail(f"the peer plugins are not installed in {PEERS}: run ./dev.sh setup (requirements-peers.lock)")
    env = {**os.environ, **OFFLINE_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), str(PEERS)]))
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unrelated_project_runs_beside_the_peers(tmp_path: Path) -> None:
    (tmp_path / "test_project.py").write_text("def test_one():\n    assert 1 + 1 == 2\n")
    result = _run(["-v"], tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
    loaded = _run(["--help"], tmp_path).stdout
    assert "--device" in loaded and "--invarlock-device" in loaded  # pytest-playwright's option and ours, side by side
    for peer_option in ("--timeout", "--reruns", "--benchmark-skip", "--ds", "--randomly-seed", "--count"):
        assert peer_option in loaded


def test_a_validation_session_collects_beside_the_peers(tmp_path: Path) -> None:
    from pytest_invarlock.campaign.items import build_items
    from pytest_invarlock.campaign.suite import load_suite

    result = _run(["--co", "-q", str(VALIDATION), "--suite", "tiny", "--run-dir", str(tmp_path / "run")], REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert f"{len(build_items(load_suite('tiny')))} tests collected" in result.stdout
