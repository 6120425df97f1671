"""The HTML report in a real browser: headless Chromium (Debian's `chromium`; .ci/run installs it when missing).

The page must load with every host unresolvable (nothing may come from the network), log nothing to
the console (our script never logs, so any message is an error or a blocked load), run its script
(`data-ready="1"`), and carry the marks the records imply. The screenshot lands in the test's tmp dir.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import synthetic_records
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.report import render_report
from pytest_invarlock.verdict.compile import compile_records

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium is not installed here (apt-get install -y chromium; .ci/run does it)"
    ),
    pytest.mark.campaign,  # a browser: not in ./dev.sh test --fast
]


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--enable-logging=stderr",
            "--v=0",
            *args,
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(("suite", "lanes"), [("tiny", 2), ("full", 8)])
def test_report_renders_in_chromium_without_console_errors(tmp_path: Path, suite: str, lanes: int) -> None:
    shape = load_suite(suite)
    models, scenarios = len(shape.models), len(shape.scenarios)
    records = synthetic_records(suite, lanes=lanes)
    compiled = compile_records(records, items=[r["param_id"] for r in records])
    page = tmp_path / "report.html"
    page.write_text(render_report(records, compiled, run_dir=tmp_path, header={"suite": suite}), encoding="utf-8")
    dom = chromium(page, tmp_path, "--dump-dom")
    console = [line for line in dom.stderr.splitlines() if "CONSOLE" in line or "ERR_" in line]
    assert dom.returncode == 0 and not console, console or dom.stderr[-2000:]
    html = dom.stdout
    assert 'data-ready="1"' in html  # the table script ran to its end
    assert len(set(re.findall(r'id="timeline-bar-(\d+)"', html))) == len(records)  # one bar per item run
    heat = set(re.findall(r'id="heat-cell-(\d+)"', html))
    assert len(heat) == models * scenarios  # models x scenarios
    assert f'id="shown">{len(records)}<' in html
    shot = tmp_path / "report.png"
    result = chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1300,2400")
    assert result.returncode == 0 and shot.stat().st_size > 50_000, result.stderr[-2000:]
