"""examples/slurm without a cluster: fake sbatch, sinfo and scontrol record what the scripts ask of Slurm.

submit.sh from outside the repository: one array task per node, the parameters and their defaults (0 GPUs asks for
none), the environment check and the cluster's refusals before anything is submitted, resubmitting one node;
node.sbatch: the environment check on the node, the exit statuses that tell an environment failure from a verdict,
the time limit's warning that stops pytest and requeues the task alone, a cancel that stops it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO

SLURM = REPO / "examples" / "slurm"
FAKE_SBATCH = """#!/usr/bin/env bash
if [[ " $* " == *" --test-only "* ]]; then
    [[ -z ${REFUSE:-} ]] && { echo "sbatch: Job 3 to start at now" >&2; exit 0; }
    echo "sbatch: error: $REFUSE" >&2; exit 1
fi
echo "$@" >> "$LOG/sbatch"
env | grep ^INVARLOCK_ | sort >> "$LOG/env"
echo $(( $(wc -l < "$LOG/sbatch") + 40 ))
"""
FAKE_SINFO = """#!/usr/bin/env bash
case " $* " in
    *" %P "*) echo "debug*"; echo "long" ;;
    *" %l "*) echo "${LIMIT:-1:00:00}" ;;
esac
"""
FAKE_SCONTROL = """#!/usr/bin/env bash
echo "$@" >> "$LOG/scontrol"
"""


@pytest.fixture
def slurm(tmp_path: Path) -> dict[str, str]:
    """A PATH with fake Slurm commands; what they were asked goes to tmp_path/log."""
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("sinfo", FAKE_SINFO), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log)}


def submit(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    outside = tmp_path / "elsewhere"
    outside.mkdir(exist_ok=True)
    return subprocess.run(
        [str(SLURM / "submit.sh"), "--python", sys.executable, *args], capture_output=True, text=True, env=env, cwd=outside
    )


@pytest.mark.parametrize("script", ["submit.sh", "node.sbatch", "merge.sbatch", "local-cluster.sh"])
def test_the_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(SLURM / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_submit_from_anywhere_one_array_task_per_node_then_the_merge(tmp_path, slurm):
    result = submit(tmp_path, slurm, "--nodes", "3", "tiny", str(tmp_path / "run"), "--", "--runs-clean", "1")
    assert result.returncode == 0, result.stdout + result.stderr
    campaign, merge = (Path(slurm["LOG"]) / "sbatch").read_text().splitlines()
    assert "--array=1-3" in campaign and "--nodes=1" in campaign and "--cpus-per-task=1" in campaign
    assert "--gpus-per-node" not in campaign and "--time" not in campaign and "--partition" not in campaign  # the defaults
    assert "--requeue" in campaign and "--signal=B:USR1@300" in campaign and "--open-mode=append" in campaign
    assert f"--output={tmp_path / 'run'}/slurm/node-%a.log" in campaign
    assert campaign.endswith(f"{SLURM}/node.sbatch --runs-clean 1")
    assert "--dependency=afterany:41" in merge and merge.endswith(f"{SLURM}/merge.sbatch")
    env = (Path(slurm["LOG"]) / "env").read_text()
    assert f"INVARLOCK_REPO={REPO}\n" in env and "INVARLOCK_NODES=3\n" in env and f"INVARLOCK_PYTHON={sys.executable}\n" in env
    assert "scancel 41_K" in result.stdout and "submit.sh --only K --nodes 3" in result.stdout
    marker = env.split("INVARLOCK_MARKER=")[1].split()[0]
    assert (tmp_path / "run" / "slurm" / marker).is_file()  # what each node checks it sees


def test_gpus_time_partition_and_account_are_parameters(tmp_path, slurm):
    args = ["--gpus-per-node", "4", "--time", "0:30:00", "--partition", "long", "--account", "lab", "--signal-margin", "120"]
    result = submit(tmp_path, {**slurm, "LIMIT": "2-00:00:00"}, *args, "b200", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    campaign = (Path(slurm["LOG"]) / "sbatch").read_text().splitlines()[0]
    for expected in (
        "--gpus-per-node=4",
        "--cpus-per-task=32",
        "--time=0:30:00",
        "--partition=long",
        "--account=lab",
        "USR1@120",
    ):
        assert expected in campaign


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--time", "2:00:00"], {}, "--time 2:00:00 is above partition debug's limit (1:00:00)"),
        (["--time", "two hours"], {}, "write it as sbatch does"),
        (["--gpus-per-node", "8"], {"REFUSE": "Invalid generic resource (gres) specification"}, "--gpus-per-node 0 on CPU-only"),
        (["--nodes", "x"], {}, "'x' is not a whole number"),
    ],
)
def test_what_the_cluster_cannot_run_is_refused_at_submission(tmp_path, slurm, args, env, message):
    result = submit(tmp_path, {**slurm, **env}, *args, "tiny", str(tmp_path / "run"))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert not (Path(slurm["LOG"]) / "sbatch").exists()  # nothing submitted


def test_a_run_directory_that_cannot_be_written_is_refused_at_submission(tmp_path, slurm):
    (tmp_path / "file").write_text("")
    result = submit(tmp_path, slurm, "tiny", str(tmp_path / "file" / "run"))
    assert result.returncode == 2 and "cannot create" in result.stderr
    assert not (Path(slurm["LOG"]) / "sbatch").exists()


def test_resubmitting_one_node_submits_that_task_alone(tmp_path, slurm):
    result = submit(tmp_path, slurm, "--only", "2", "--nodes", "3", "tiny", str(tmp_path / "run"))
    assert result.returncode == 0, result.stderr
    (campaign,) = (Path(slurm["LOG"]) / "sbatch").read_text().splitlines()  # no merge
    assert "--array=2" in campaign


# --------------------------------------------------------------------------- node.sbatch

FAKE_PYTHON = """#!/usr/bin/env bash
# node-check passes unless CHECK_FAILS; pytest records its arguments and ends with $RC (or with 2 on USR1/TERM).
if [[ $2 == pytest_invarlock ]]; then [[ -z ${CHECK_FAILS:-} ]] || { echo "node-check: broken"; exit 10; }; exit 0; fi
echo "$PWD $@" > "$LOG/pytest"
trap 'echo stopped-by-usr1 >> "$LOG/pytest"; exit 2' USR1
trap 'echo stopped-by-term >> "$LOG/pytest"; exit 2' TERM
if [[ -n ${WAIT:-} ]]; then touch "$LOG/started"; for _ in $(seq 300); do sleep 0.1; done; fi
exit "${RC:-0}"
"""


def node_task(tmp_path: Path, slurm: dict[str, str], **env: str) -> subprocess.Popen[str]:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    task_env = {
        **slurm,
        "INVARLOCK_REPO": str(REPO),
        "INVARLOCK_PYTHON": str(python),
        "INVARLOCK_SUITE": "tiny",
        "INVARLOCK_RUN_DIR": str(tmp_path / "run"),
        "INVARLOCK_NODES": "3",
        "SLURM_ARRAY_TASK_ID": "2",
        "SLURM_ARRAY_JOB_ID": "41",
        "SLURM_JOB_ID": "43",
        **env,
    }
    return subprocess.Popen(
        ["bash", str(SLURM / "node.sbatch"), "-x"], env=task_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


@pytest.mark.parametrize(
    ("rc", "env", "status"), [("0", {}, 0), ("1", {}, 0), ("4", {}, 4), ("3", {}, 3), ("0", {"CHECK_FAILS": "1"}, 10)]
)
def test_a_node_task_tells_a_broken_environment_from_a_verdict(tmp_path, slurm, rc, env, status):
    task = node_task(tmp_path, slurm, RC=rc, **env)
    output, _ = task.communicate(timeout=60)
    assert task.returncode == status, output
    if not env:
        ran = (Path(slurm["LOG"]) / "pytest").read_text().split()
        assert ran[0] == str(REPO) and ran[1:5] == ["-m", "pytest", "validation/", "--suite"]
        assert "--campaign-node" in ran and ran[ran.index("--campaign-node") + 1] == "2/3" and ran[-1] == "-x"


def test_a_node_task_outside_an_array_is_an_environment_failure(tmp_path, slurm):
    task = node_task(tmp_path, slurm, SLURM_ARRAY_TASK_ID="")
    output, _ = task.communicate(timeout=60)
    assert task.returncode == 10 and "not an array task" in output


@pytest.mark.parametrize(("sig", "status", "requeued"), [(signal.SIGUSR1, 0, "requeue 41_2"), (signal.SIGTERM, 2, None)])
def test_the_time_limit_warning_stops_and_requeues_the_task_alone_a_cancel_only_stops(tmp_path, slurm, sig, status, requeued):
    task = node_task(tmp_path, slurm, WAIT="1")
    deadline = time.monotonic() + 30
    while not (Path(slurm["LOG"]) / "started").exists():
        assert time.monotonic() < deadline and task.poll() is None
        time.sleep(0.1)
    task.send_signal(sig)  # what Slurm sends the batch shell (--signal=B:USR1@S), or scancel
    output, _ = task.communicate(timeout=60)
    assert task.returncode == status, output
    assert ("stopped-by-usr1" if sig == signal.SIGUSR1 else "stopped-by-term") in (Path(slurm["LOG"]) / "pytest").read_text()
    scontrol = Path(slurm["LOG"]) / "scontrol"
    assert (scontrol.read_text().strip() if scontrol.exists() else None) == requeued
