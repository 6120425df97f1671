"""The session writes the verdict files at its end, whatever prints (or does not print) the summary.

Each case reruns the warmed tiny campaign (everything reused: seconds) after removing its reports, in a
way that used to leave no files: without the terminal reporter, quiet, stopped at the first failure, and
ending in an internal error. The files must be there, and a cut-short session must say it is partial.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpers import flip_gate, run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

INTERNAL_ERROR_PLUGIN = """
def pytest_runtest_logfinish(nodeid, location):
    if "prune_70pct_stress" in nodeid:
        raise RuntimeError("an internal error of another plugin")
"""


@pytest.fixture
def run_dir(warm_campaign) -> Path:
    run_dir = warm_campaign.restore()
    shutil.rmtree(run_dir / "reports")
    return run_dir


def _verdict(run_dir: Path) -> dict:
    assert (run_dir / "reports" / "report.html").is_file()
    return json.loads((run_dir / "reports" / "final_verdict.json").read_text())


@pytest.mark.parametrize("args", [("-p", "no:terminal"), ("-q", "-q")], ids=["no-terminal", "quiet"])
def test_the_verdict_is_written_without_a_summary(run_dir: Path, args: tuple[str, ...]) -> None:
    run = run_suite(run_dir, *args)
    assert run.returncode == 0, run.output[-3000:]
    verdict = _verdict(run_dir)
    assert verdict["partial"] is False
    assert verdict["phase0"]["status"] == "PHASE0_VALIDATED"


def test_a_session_stopped_at_the_first_failure_writes_a_partial_verdict(run_dir: Path) -> None:
    flip_gate(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
    run = run_suite(run_dir, "-x", "-k", "test_edit")
    assert run.returncode == pytest.ExitCode.TESTS_FAILED, run.output[-3000:]
    assert "stopping after 1 failures" in run.output
    verdict = _verdict(run_dir)
    assert verdict["partial"] == "stopped early"


def test_an_internal_error_still_writes_the_verdict_marked_partial(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "crash_after_one_item.py").write_text(INTERNAL_ERROR_PLUGIN)
    run = run_suite(run_dir, "-p", "crash_after_one_item", plugin_dir=tmp_path)
    assert run.returncode == pytest.ExitCode.INTERNAL_ERROR, run.output[-3000:]
    assert "INTERNALERROR" in run.output and "an internal error of another plugin" in run.output
    verdict = _verdict(run_dir)
    assert verdict["partial"] == "internal error"
