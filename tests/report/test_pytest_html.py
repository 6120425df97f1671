"""pytest-html integration, in real validation sessions (test functions that sleep instead of certifying).

With pytest-html and --html: the summary and the pictures appear in its page and each item's row has
the InvarLock columns. Without it (-p no:html): nothing changes. Either way report.html is written,
from records the controller stamped with real start/end times.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from helpers import fake_suite_session

# Every test here starts pytest sessions (through this module's helpers).
pytestmark = pytest.mark.sessions

pytest.importorskip("pytest_html", reason="pytest-html is a test dependency (requirements.lock)")

TESTS = """
import json
def _numbers(record_property, invarlock_item, ratio):
    record_property("invarlock", json.dumps({"ratio": ratio, "ci": [ratio - 0.01, ratio + 0.01], "met": True,
                                             "failed_gates": [], "report": None}))
def test_calibration(invarlock_item, record_property): _numbers(record_property, invarlock_item, 1.0)
def test_edit(invarlock_item, record_property): _numbers(record_property, invarlock_item, 1.234)
def test_error(invarlock_item, record_property): _numbers(record_property, invarlock_item, 9.5)
def test_benchmark(invarlock_item): pass
"""


def _session(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return fake_suite_session(tmp_path, TESTS, "-W", "ignore::pytest.PytestWarning", *args)


def test_pytest_html_page_carries_the_summary_pictures_and_each_items_numbers(tmp_path: Path) -> None:
    result = _session(tmp_path, "-n", "2", "--html", "out.html")
    assert result.returncode == 0, result.stdout[-3000:]
    page = (tmp_path / "out.html").read_text()
    assert "InvarLock validation: tiny" in page and "PHASE0_" in page
    for figure in ("confusion", "timeline", "ratios", "heatmap", "lm-eval"):
        assert f'data-figure="{figure}"' in page
    assert "InvarLock ratio (95% CI)" in page
    assert "1.2340 (1.2240-1.2440)" in page  # an edit's row carries its numbers
    report = (tmp_path / "run" / "reports" / "report.html").read_text()
    assert len(set(re.findall(r'id="timeline-bar-(\d+)"', report))) == 46  # real start/end times, stamped
    assert re.search(r"46 item\(s\) on 2 lane\(s\)", report)


def test_without_pytest_html_nothing_changes(tmp_path: Path) -> None:
    result = _session(tmp_path, "-p", "no:html")
    assert result.returncode == 0, result.stdout[-3000:]
    assert "html report: " in result.stdout and "Generated html report" not in result.stdout
    assert not list(tmp_path.glob("*.html")) and (tmp_path / "run" / "reports" / "report.html").is_file()
