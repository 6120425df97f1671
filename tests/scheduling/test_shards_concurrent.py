"""Three shard processes of the tiny suite at once on one run directory, then the report command.

Heavy (real InvarLock on CPU, several minutes on 2 cores): marked `slow`, run with `-m slow`.
The merged Phase 0 block equals one process's over the same selection, every item has one record,
and no artifact of the store was built twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from helpers import OFFLINE_ENV, REPO, suite_command

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

# A smaller suite through options (the split is over the suite the options leave, so every shard gets
# work; a -k selection would act after the split): shard 1 runs the 2 calibrations, shards 2 and 3 two
# clean edits each, which need the preset shard 1 is making.
SELECTION = ("--runs-calibration", "2", "--runs-clean", "1", "--runs-stress", "0", "--no-errors", "--no-benchmarks")
SHARDS = 3


def final_phase0(run_dir: Path) -> dict:
    return json.loads((run_dir / "reports" / "final_verdict.json").read_text())["phase0"]


@pytest.mark.slow
def test_three_shards_at_once_merge_into_the_single_process_verdict(tmp_path):
    env = {**os.environ, **OFFLINE_ENV}
    shared, single = tmp_path / "shared", tmp_path / "single"
    shards = [
        subprocess.Popen(
            suite_command(shared, *SELECTION, "--shard", f"{k}/{SHARDS}"),
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(1, SHARDS + 1)
    ]
    outputs = [process.communicate(timeout=3600)[0] for process in shards]
    for process, output in zip(shards, outputs):
        assert process.returncode == 0, output[-3000:]
    alone = subprocess.run(suite_command(single, *SELECTION), cwd=REPO, env=env, capture_output=True, text=True, timeout=3600)
    assert alone.returncode == 0, (alone.stdout + alone.stderr)[-3000:]

    merged = subprocess.run(
        [sys.executable, "-m", "pytest_invarlock", "report", str(shared)],  # the campaign the shards wrote
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert merged.returncode in (0, 1), merged.stdout + merged.stderr
    records = sorted(p.name for p in (shared / "records").glob("*.json"))
    assert records == sorted(p.name for p in (single / "records").glob("*.json")) and records
    assert final_phase0(shared) == final_phase0(single)
    builds = (shared / "store" / "builds.log").read_text().split("\n")
    built = Counter(line.split()[1] for line in builds if line.strip())
    assert built and max(built.values()) == 1, {path: n for path, n in built.items() if n > 1}
