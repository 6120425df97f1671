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


CLUSTER = re.compile(
    r"^CLUSTER strategy=(claims|shards) suite=(\w+) nodes=(\d+) gpus=(\S+) realistic=([01]) makespan_h=\d+\.\d\d "
    r"bound_h=\d+\.\d\d makespan_over_bound=(\d+\.\d\d\d) run_twice=(\d+) never_run=(\d+) skipped=\d+ "
    r"oversubscribed=(\d+) loads=\d+ node_items=[\d,]+ node_makespans_h=[\d.,]+$"
)


def test_a_mixed_cluster_prints_a_line_per_strategy_and_claims_run_every_item_once():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--cluster", "2x80+80,24", "--realistic"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("CLUSTER")]
    matches = [CLUSTER.match(line) for line in lines]
    assert all(matches) and [m.group(1) for m in matches if m] == ["claims", "shards"], lines
    claims = matches[0]
    assert claims is not None and claims.group(3) == "2" and claims.group(4) == "2x80+80,24"
    assert (claims.group(7), claims.group(8), claims.group(9)) == ("0", "0", "0")  # once each, all of them, fitting


def test_a_bad_cluster_spec_says_how_to_write_one():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--cluster", "2*"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "e.g. 2*8x80+2*8x180" in result.stderr
