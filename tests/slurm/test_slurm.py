"""A campaign on a real Slurm, run as docs/several-nodes.md says: the OS packages (slurmctld, two slurmd, munge),
CPU only, brought up by examples/slurm/local-cluster.sh.

Submitted from outside the repository with examples/slurm/submit.sh (a reduced tiny campaign: 2 calibrations and
4 clean edits); node 1's task is cancelled with scancel while it runs an item, which goes back to node 2; node 1 is
resubmitted alone (submit.sh --only 1); the merge says COMPLETE, and its Phase 0 block equals one process's over the
same items. Nothing is run twice: every store artifact is built once, only the cancelled item is claimed twice.

Slow (the reduced campaign twice on 2 cores) and heavy: run it alone, under the heavy lock. Without Slurm it fails
where Slurm could be installed (root and apt-get) and is skipped, saying how to install it, where it cannot.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import OFFLINE_ENV, REPO, run_suite

pytestmark = [pytest.mark.slow, pytest.mark.campaign]

SLURM = REPO / "examples" / "slurm"
# The edit budget holds every edit: under the disk plan's (one edit in flight on a small machine) a node evicts the
# edit a cancelled node built, and the takeover rebuilds it: correct and logged, but not the "built once" checked here.
SELECTION = ("--runs-calibration", "2", "--runs-clean", "1", "--runs-stress", "0", "--no-errors", "--no-benchmarks")
SELECTION += ("--invarlock-edit-budget", "1")
INSTALL = "apt-get install -y slurm-wlm munge (Debian/Ubuntu; then examples/slurm/local-cluster.sh start)"
DEADLINE_S = 1200


def require_slurm() -> None:
    """Fail where Slurm is missing but could be installed; skip, saying how, where it cannot be."""
    missing = [tool for tool in ("slurmctld", "slurmd", "munged", "sbatch", "scancel") if shutil.which(tool) is None]
    if not missing:
        if os.geteuid() != 0:
            pytest.skip("the local Slurm cluster's daemons run as root: run this test as root")
        return
    if os.geteuid() == 0 and shutil.which("apt-get"):
        pytest.fail(f"Slurm is not installed ({', '.join(missing)} missing): {INSTALL}")
    pytest.skip(
        f"Slurm is not installed ({', '.join(missing)} missing) and cannot be installed here without root and apt-get: {INSTALL}"
    )


def free_ports(count: int = 3) -> int:
    """A first port such that it and the next count - 1 are free (slurmctld, then one slurmd per node)."""
    for base in range(16817, 30000, 10):
        try:
            for port in range(base, base + count):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free ports between 16817 and 30000")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The two-node cluster of examples/slurm/local-cluster.sh; the environment to reach it."""
    require_slurm()
    state = tmp_path_factory.mktemp("slurm")
    env = {**os.environ, **OFFLINE_ENV, "INVARLOCK_SLURM_PORT": str(free_ports())}
    started = subprocess.run([str(SLURM / "local-cluster.sh"), "start", str(state)], capture_output=True, text=True, env=env)
    assert started.returncode == 0, started.stdout + started.stderr
    env["SLURM_CONF"] = str(state / "slurm.conf")
    try:
        yield env
    finally:
        subprocess.run([str(SLURM / "local-cluster.sh"), "stop", str(state)], capture_output=True, env=env)


def run(command: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def wait_for(what: str, check, deadline: float) -> None:
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(2)


def queued(env: dict[str, str], job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], capture_output=True, text=True, env=env).stdout
    return bool(out.strip())


def claims(run_dir: Path) -> list[dict]:
    return [json.loads(path.read_text()) for path in (run_dir / "campaign" / "claims").glob("*.json")]


def test_a_cancelled_node_is_resubmitted_and_the_merge_equals_one_process(cluster: dict[str, str], tmp_path: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    started = time.monotonic()
    single = run_suite(tmp_path / "single", *SELECTION)
    assert single.returncode == 0, single.output[-3000:]

    outside = tmp_path / "elsewhere"  # submitted from outside the repository
    outside.mkdir()
    run_dir = tmp_path / "campaign"
    submit = [str(SLURM / "submit.sh"), "--nodes", "2", "--python", sys.executable, "tiny", str(run_dir), "--", *SELECTION]
    submitted = run(submit, cluster, outside)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    job = submitted.stdout.split("campaign: job ")[1].split(",")[0]
    merge_job = submitted.stdout.split("merge: job ")[1].split()[0]

    # Node 1 finished an item and runs another: cancel its task alone.
    def node_one_mid_run() -> bool:
        mine = [c for c in claims(run_dir) if c["node"] == 1]
        return any(c["finished"] for c in mine) and any(not c["finished"] for c in mine)

    wait_for("node 1 to run its second item", node_one_mid_run, deadline)
    cut = next(c["item"] for c in claims(run_dir) if c["node"] == 1 and not c["finished"])
    cancelled = run(["scancel", f"{job}_1"], cluster, outside)
    assert cancelled.returncode == 0, cancelled.stderr
    wait_for("node 1's task to end", lambda: not queued(cluster, f"{job}_1"), deadline)
    node_log = (run_dir / "slurm" / "node-1.log").read_text()
    assert "PARTIAL: interrupted" in node_log and "stopped (cancelled)" in node_log, node_log[-3000:]

    # Node 2 takes the cancelled item over and finishes the campaign; the merge job runs after both tasks.
    wait_for("the merge job", lambda: not queued(cluster, merge_job), deadline)
    merged = (run_dir / "slurm" / f"merge-{merge_job}.log").read_text()
    assert "COMPLETE: every one of the 6 item(s) has a record" in merged, merged[-3000:]
    assert "node 1/2: stopped" in merged and "cancelled (SIGTERM)" in merged
    assert next(c for c in claims(run_dir) if c["item"] == cut)["node"] == 2

    # Node 1 resubmitted alone: nothing is left to it; the merge by hand now finds every node finished.
    again = run([*submit[:1], "--only", "1", *submit[1:]], cluster, outside)
    assert again.returncode == 0, again.stdout + again.stderr
    rejob = again.stdout.split("campaign: job ")[1].split(",")[0]
    wait_for("the resubmitted node 1", lambda: not queued(cluster, rejob), deadline)
    report = run([sys.executable, "-m", "pytest_invarlock", "report", str(run_dir)], cluster, outside)
    assert report.returncode == 0, report.stdout[-3000:]
    assert "node 1/2: finished" in report.stdout and "node 2/2: finished" in report.stdout
    assert report.stdout.count("    session ") == 3  # node 1 twice, node 2 once, each with its arguments
    print(f"slurm campaign test: {(time.monotonic() - started) / 60:.1f} min")

    verdict = json.loads((run_dir / "reports" / "final_verdict.json").read_text())
    alone = json.loads((tmp_path / "single" / "reports" / "final_verdict.json").read_text())
    assert verdict["phase0"] == alone["phase0"] and verdict["partial"] is False
    assert sorted(p.name for p in (run_dir / "records").glob("*.json")) == sorted(
        p.name for p in (tmp_path / "single" / "records").glob("*.json")
    )
    builds = (run_dir / "store" / "builds.log").read_text().splitlines()
    built = Counter(line.split()[1] for line in builds if line.strip())
    assert built and max(built.values()) == 1, {path: n for path, n in built.items() if n > 1}
    assert [c["item"] for c in claims(run_dir) if c["attempt"] > 1] == [cut]
