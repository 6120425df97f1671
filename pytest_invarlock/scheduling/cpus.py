"""The CPUs this process may use: its affinity, capped by its cgroup's CPU quota. Not os.cpu_count().

Inside a Slurm step or a container os.cpu_count() still counts the whole machine. Slurm and `taskset`
restrict the process's affinity (a cpuset); a container runtime or systemd may instead set a CPU
quota (cgroup v2 `cpu.max`, v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`), which throttles a process
that runs more threads than it allows. The quota of the process's cgroup and of each cgroup above it
counts (the smallest wins); a fractional quota rounds up, as Go's and Java's runtimes do.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

PROC_CGROUP = Path("/proc/self/cgroup")
MOUNTINFO = Path("/proc/self/mountinfo")


def available_cpus(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = MOUNTINFO) -> int:
    """CPUs this process may keep busy: len(sched_getaffinity), capped by the cgroup quota; at least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(proc_cgroup, mountinfo)
    return max(1, min(cpus, math.ceil(quota)) if quota is not None else cpus)


def cgroup_cpu_quota(proc_cgroup: Path = PROC_CGROUP, mountinfo: Path = MOUNTINFO) -> float | None:
    """CPUs the cgroup quota allows this process (e.g. 2.5), or None when no quota applies or none can be read."""
    try:
        memberships = proc_cgroup.read_text(encoding="ascii").splitlines()
        mounts = mountinfo.read_text(encoding="ascii").splitlines()
    except OSError:
        return None
    quotas = []
    for line in memberships:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        version = 2 if hierarchy == "0" and not controllers else 1 if "cpu" in controllers.split(",") else None
        if version is None:
            continue
        for mount_root, mount_point in _cgroup_mounts(mounts, version):
            directory = _directory(Path(mount_point), mount_root, path)
            if directory is not None:
                readings = [_quota(level, version) for level in _up_to(directory, Path(mount_point))]
                quotas += [q for q in readings if q is not None]
                break
    return min(quotas, default=None)


def _cgroup_mounts(mounts: list[str], version: int) -> list[tuple[str, str]]:
    """(root, mount point) of each cgroup2 mount, or of each v1 mount carrying the cpu controller."""
    found = []
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        mount, described = fields.split(), tail.split()
        if len(mount) < 5 or len(described) < 3:
            continue
        fstype, options = described[0], described[2]
        if (version == 2 and fstype == "cgroup2") or (version == 1 and fstype == "cgroup" and "cpu" in options.split(",")):
            found.append((mount[3], mount[4]))
    return found


def _directory(mount_point: Path, mount_root: str, path: str) -> Path | None:
    """The process's cgroup directory under a mount: its path relative to the mount's root (a container's
    cgroup namespace mounts its own cgroup as the root)."""
    relative = os.path.relpath(path, mount_root) if path.startswith(mount_root) else "."
    directory = Path(os.path.normpath(mount_point / relative))
    return directory if directory.is_dir() and mount_point in (directory, *directory.parents) else None


def _up_to(directory: Path, top: Path) -> list[Path]:
    """`directory` and each parent up to `top`, the mount point."""
    chain = [directory]
    while chain[-1] != top and top in chain[-1].parents:
        chain.append(chain[-1].parent)
    return chain


def _quota(directory: Path, version: int) -> float | None:
    """One cgroup's quota in CPUs, or None when it sets none."""
    try:
        if version == 2:
            limit, period = (directory / "cpu.max").read_text(encoding="ascii").split()[:2]
            return None if limit == "max" else int(limit) / int(period)
        limit = (directory / "cpu.cfs_quota_us").read_text(encoding="ascii").strip()
        period = (directory / "cpu.cfs_period_us").read_text(encoding="ascii").strip()
        return None if int(limit) < 0 else int(limit) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None
