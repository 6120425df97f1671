"""perf/simulate.py prints its RESULT lines in the agreed format (figures are printed, never asserted here)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULT = re.compile(
    r"^RESULT strategy=(\w+) suite=(\w+) gpus=(\S+) realistic=([01]) makespan_over_bound=\d+\.\d\d "
    r"skipped=\d+ oversubscribed=\d+ ooms=\d+ loads=\d+ workers=\d+$"
)


def test_realistic_simulation_of_a_small_node_prints_one_result_per_strategy():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--gpus", "80:79,24:23", "--realistic"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    matches = [RESULT.match(line) for line in lines]
    assert all(matches) and len(lines) == 4, lines
    assert {m.group(1) for m in matches if m} == {"invarlock", "small_first", "xdist_worksteal", "static_per_model"}
    assert {(m.group(2), m.group(3), m.group(4)) for m in matches if m} == {("tiny", "80:79,24:23", "1")}
    ours = next(line for line in lines if "strategy=invarlock" in line)
    assert " skipped=0 oversubscribed=0 ooms=1 " in ours  # the injected OOM, nothing else


def test_sharded_clusters_print_a_line_per_node_count():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--gpus", "2x80", "--ideal", "--nodes", "2"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    (line,) = [line for line in result.stdout.splitlines() if line.startswith("CLUSTER")]
    assert line.startswith("CLUSTER suite=tiny nodes=2 gpus=2x80 realistic=0 ") and "skipped=0 oversubscribed=0" in line
