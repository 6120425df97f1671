"""Live progress on the controller: the corrected cost model, plain lines without a terminal, in place in tmux.

The sessions here are real validation sessions (--suite tiny, real xdist) whose test functions request
`invarlock_item` and sleep instead of certifying, so the display is exercised in seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import fake_suite_session
from pytest_invarlock.progress import Progress, fmt_duration

# Every test here starts pytest sessions (through this module's helpers).
pytestmark = pytest.mark.sessions

FAKE_SUITE_TESTS = """
import time
def test_calibration(invarlock_item): time.sleep({slow})
def test_edit(invarlock_item):
    time.sleep({slow})
    assert "svd_rank96_clean-run1" not in invarlock_item.param_id
def test_error(invarlock_item): time.sleep({fast})
def test_benchmark(invarlock_item): time.sleep({fast})
"""


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_eta_starts_from_the_cost_model_and_follows_measured_durations() -> None:
    clock = Clock()
    priors = {f"edit{i}": ("clean", 10.0) for i in range(6)} | {f"cal{i}": ("calibration", 20.0) for i in range(2)}
    progress = Progress(priors=priors, lanes=["gw0", "gw1"], clock=clock)
    assert progress.eta_seconds() == pytest.approx((6 * 10 + 2 * 20) / 2)  # priors only, two lanes
    for i in range(2):  # edits take half their prior
        progress.start(f"edit{i}", f"edit{i}")
        clock.now += 5
        progress.finish(f"edit{i}", "passed")
    assert progress.scale("clean") == pytest.approx(0.5)
    assert progress.scale("calibration") == pytest.approx(0.5)  # too few of its own kind: the overall scale
    progress.start("edit2", "edit2")
    clock.now += 2
    # 3 unstarted edits at 5 s, 2 s left of the running one, 2 calibrations at 10 s; over two lanes
    assert progress.eta_seconds() == pytest.approx((3 * 5 + 3 + 2 * 10) / 2)
    progress.finish("edit2", "failed")
    assert "3/8 done (38%), 1 failed" in progress.summary()


def test_lanes_follow_placement_then_reports_and_show_idle_workers() -> None:
    clock = Clock()
    progress = Progress(priors={"a": ("clean", 1.0), "b": ("clean", 1.0)}, lanes=["gw0", "gw1"], clock=clock)
    progress.placed["b"] = "gw1"
    progress.start("a", "item-a")  # no placement: the first idle worker
    progress.start("b", "item-b")
    clock.now += 75
    assert progress.lane_rows() == [("gw0", "item-a", "1m15s"), ("gw1", "item-b", "1m15s")]
    progress.seen_on("a", "gw2")  # a report said where it really runs
    assert ("gw2", "item-a", "1m15s") in progress.lane_rows()
    assert ("gw0", "idle", "") in progress.lane_rows()
    assert fmt_duration(3 * 3600 + 120) == "3h02m"


def _session(tmp_path: Path, *args: str, slow: float = 0.2, fast: float = 0.05) -> subprocess.CompletedProcess[str]:
    return fake_suite_session(tmp_path, FAKE_SUITE_TESTS.format(slow=slow, fast=fast), *args)


def test_without_a_terminal_plain_lines_with_an_eta_and_junit_untouched(tmp_path: Path) -> None:
    result = _session(tmp_path, "-n", "2", "--progress-interval", "0.5", "--junitxml", "out.xml")
    assert result.returncode == 1, result.stdout[-3000:]  # the one failing item
    lines = [line for line in result.stdout.splitlines() if line.startswith("[invarlock] ")]
    assert len(lines) >= 5, result.stdout[-3000:]
    assert all(re.search(r"\d+/46 done \(\d+%\), \d+ failed; elapsed \S+, ETA \S+ \| gw[01]", line) for line in lines)
    assert "1 failed" in lines[-1]
    print("\n".join(lines))  # the lines as printed (-s shows them)
    cases = ET.parse(tmp_path / "out.xml").getroot().iter("testcase")
    assert sum(1 for _ in cases) == 46
    assert "1 failed, 45 passed" in result.stdout


def test_quiet_and_single_process(tmp_path: Path) -> None:
    quiet = _session(tmp_path, "-q", "--progress-interval", "0.1", slow=0.01, fast=0.01)
    assert "[invarlock]" not in quiet.stdout and "1 failed, 45 passed" in quiet.stdout
    single = _session(tmp_path, "--progress-interval", "0.1", slow=0.01, fast=0.01)
    lines = [line for line in single.stdout.splitlines() if line.startswith("[invarlock] ")]
    assert lines and all("| main: tiny-kjv-" in line for line in lines), single.stdout[-2000:]


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)")
def test_on_a_terminal_the_status_updates_in_place_and_leaves_pytests_output_intact(tmp_path: Path) -> None:
    (tmp_path / "test_fake_suite.py").write_text(FAKE_SUITE_TESTS.format(slow=0.4, fast=0.15))
    done = tmp_path / "done"
    command = (
        f"cd {tmp_path} && {sys.executable} -m pytest test_fake_suite.py --suite tiny --run-dir {tmp_path / 'run'} "
        f"-p no:cacheprovider -n 2; touch {done}; sleep 60"
    )
    session = f"invarlock-progress-{os.getpid()}"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "60", command], check=True)
    try:
        screens = []
        deadline = time.monotonic() + 240
        while not done.exists() and time.monotonic() < deadline:
            screens.append(subprocess.run(["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True).stdout)
            time.sleep(0.5)
        time.sleep(0.5)
        final = subprocess.run(["tmux", "capture-pane", "-p", "-S", "-200", "-t", session], capture_output=True, text=True).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], check=False)
    live = [s for s in screens if re.search(r"^invarlock \d+/46 done", s, re.M)]
    assert len(live) >= 3, screens[-1:]
    counts = {int(re.search(r"^invarlock (\d+)/46", s, re.M).group(1)) for s in live}  # type: ignore[union-attr]
    assert len(counts) >= 2  # it moved
    assert all(s.count("invarlock ") <= 2 for s in live)  # one status block at a time (plus pytest's header line)
    assert re.search(r"^gw[01] +tiny-kjv-", "\n".join(live), re.M)  # a line per worker with its item
    assert not re.search(r"^invarlock \d+/46 done", final, re.M)  # erased at the end
    assert re.search(r"^\.+F?\.+ +\[100%\]$", final, re.M)  # pytest's progress line reads as without the block
    assert "1 failed, 45 passed" in final
