"""CPUs a worker may use: the process's affinity and its cgroup's CPU quota (cgroup trees built in tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pytest_invarlock.scheduling.cpus import available_cpus, cgroup_cpu_quota


def cgroup_files(tmp_path: Path, memberships: str, mounts: str) -> tuple[Path, Path]:
    proc_cgroup, mountinfo = tmp_path / "cgroup", tmp_path / "mountinfo"
    proc_cgroup.write_text(memberships)
    mountinfo.write_text(mounts.format(root=tmp_path))
    return proc_cgroup, mountinfo


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


V2_MOUNT = "30 24 0:26 / {root}/fs rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "31 24 0:27 / {root}/fs/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
    "32 24 0:28 / {root}/fs/memory rw,nosuid - cgroup cgroup rw,memory\n"
)


def test_a_slurm_step_under_cgroup_v2_takes_the_smallest_quota_up_its_tree(tmp_path):
    step = "/system.slice/slurmstepd.scope/job_42/step_0"
    write(tmp_path / "fs" / "system.slice" / "slurmstepd.scope" / "job_42" / "cpu.max", "300000 100000\n")  # the job: 3 CPUs
    write(tmp_path / "fs" / step.lstrip("/") / "cpu.max", "max 100000\n")  # the step sets none of its own
    write(tmp_path / "fs" / "cpu.max", "max 100000\n")
    files = cgroup_files(tmp_path, f"0::{step}\n", V2_MOUNT)
    assert cgroup_cpu_quota(*files) == 3.0
    assert available_cpus(*files) == min(len(os.sched_getaffinity(0)), 3)


def test_a_container_in_its_own_cgroup_namespace_reads_the_mount_root(tmp_path):
    write(tmp_path / "fs" / "cpu.max", "250000 100000\n")  # docker --cpus 2.5
    files = cgroup_files(tmp_path, "0::/\n", V2_MOUNT)
    assert cgroup_cpu_quota(*files) == 2.5


def test_cgroup_v1_reads_cfs_quota_and_period(tmp_path):
    write(tmp_path / "fs" / "cpu,cpuacct" / "kubepods" / "pod1" / "cpu.cfs_quota_us", "150000\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "kubepods" / "pod1" / "cpu.cfs_period_us", "100000\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_quota_us", "-1\n")
    write(tmp_path / "fs" / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    files = cgroup_files(tmp_path, "5:memory:/kubepods/pod1\n4:cpu,cpuacct:/kubepods/pod1\n", V1_MOUNTS)
    assert cgroup_cpu_quota(*files) == 1.5
    assert available_cpus(*files) == min(len(os.sched_getaffinity(0)), 2)  # 1.5 CPUs: two threads, as Go and Java do


@pytest.mark.parametrize(
    ("memberships", "cpu_max"),
    [
        ("0::/user.slice\n", "max 100000\n"),  # no quota anywhere
        ("0::/user.slice\n", None),  # no cpu.max file (the cpu controller is not enabled there)
        ("0::/gone\n", "100000 100000\n"),  # a cgroup directory that does not exist under the mount
    ],
)
def test_no_quota_leaves_the_affinity(tmp_path, memberships, cpu_max):
    (tmp_path / "fs" / "user.slice").mkdir(parents=True)
    if cpu_max:
        write(tmp_path / "fs" / "user.slice" / "cpu.max", cpu_max)
    files = cgroup_files(tmp_path, memberships, V2_MOUNT)
    assert cgroup_cpu_quota(*files) is None
    assert available_cpus(*files) == len(os.sched_getaffinity(0))


def test_a_quota_never_leaves_a_worker_without_a_thread(tmp_path):
    write(tmp_path / "fs" / "cpu.max", "10000 100000\n")  # a tenth of a CPU
    files = cgroup_files(tmp_path, "0::/\n", V2_MOUNT)
    assert cgroup_cpu_quota(*files) == pytest.approx(0.1)
    assert available_cpus(*files) == 1


def test_the_affinity_mask_counts_not_the_machine(tmp_path):
    files = cgroup_files(tmp_path, "", "")
    original = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(original)})  # what `taskset -c N` or a Slurm cpuset gives the process
    try:
        assert available_cpus(*files) == 1
    finally:
        os.sched_setaffinity(0, original)
