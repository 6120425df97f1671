"""`python -m pytest_invarlock node-check RUN_DIR`: can this host take part in a campaign on RUN_DIR?

Run by examples/slurm/submit.sh at submission (`--mark`) and by every node's task before it starts pytest
(`--expect`), so a broken environment ends the task at once with its own exit status instead of a job that
looks finished with nothing run. It checks that pytest, pytest-xdist and the worker's packages are installed
(found, not imported), that RUN_DIR can be created and written and takes POSIX record locks (the campaign's
claims and the store need them), and that the node sees the marker written at submission: the proof that
RUN_DIR is the same directory on every node. Exit status 0, or NODE_CHECK_FAILED with one line per problem.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from importlib.util import find_spec
from pathlib import Path

NODE_CHECK_FAILED = 10
NEEDED = ("pytest", "xdist", "torch", "transformers", "invarlock", "lm_eval")
LOCAL_FILESYSTEMS = {"ext2", "ext3", "ext4", "xfs", "btrfs", "tmpfs", "overlay", "zfs", "f2fs", "vfat"}
MARKS = "slurm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the campaign's run directory")
    parser.add_argument("--mark", metavar="NAME", help="write the marker NAME (at submission)")
    parser.add_argument("--expect", metavar="NAME", help="check that the marker NAME written at submission is visible here")


def problems(run_dir: Path, *, expect: str | None = None) -> list[str]:
    """What stops this host from taking part; empty when nothing does."""
    from pytest_invarlock.state import run_dir_problem
    from pytest_invarlock.store import ArtifactLock, StoreError

    found = [f"{name} is not installed in {sys.executable}" for name in NEEDED if find_spec(name) is None]
    problem = run_dir_problem(run_dir)
    if problem:
        return [*found, f"{run_dir}: {problem}"]
    probe = run_dir / MARKS / f".lock-probe-{socket.gethostname()}-{os.getpid()}"
    try:
        probe.parent.mkdir(parents=True, exist_ok=True)
        lock = ArtifactLock(probe)
        if lock.acquire(blocking=False):
            lock.release()
        probe.unlink(missing_ok=True)
    except (OSError, StoreError) as exc:
        found.append(f"{run_dir}: {exc}")
    if expect and not (run_dir / MARKS / expect).is_file():
        found.append(
            f"{run_dir} is not the directory the campaign was submitted with: this host ({socket.gethostname()}) does not "
            f"see {run_dir / MARKS / expect}, written at submission. Put --run-dir on a filesystem every node mounts "
            "at the same path (NFS, Lustre, GPFS)."
        )
    return found


def filesystem(path: Path) -> str | None:
    """The type of the filesystem holding `path` (from /proc/mounts), or None where that cannot be read."""
    try:
        mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    resolved = str(path.resolve())
    best = max(
        (m for m in mounts if len(m) > 2 and (resolved + "/").startswith(m[1].rstrip("/") + "/")),
        key=lambda m: len(m[1]),
        default=None,
    )
    return best[2] if best else None


def run(args: argparse.Namespace) -> int:
    run_dir = args.run_dir.expanduser().absolute()
    found = problems(run_dir, expect=args.expect)
    for problem in found:
        print(f"node-check: {problem}")
    if found:
        return NODE_CHECK_FAILED
    if args.mark:
        (run_dir / MARKS / args.mark).write_text(json.dumps({"host": socket.gethostname(), "at": time.time()}) + "\n")
        kind = filesystem(run_dir)
        if kind in LOCAL_FILESYSTEMS:
            print(
                f"node-check: note: {run_dir} is on a local filesystem ({kind}); nodes on other hosts will not see it "
                "(each node's task checks, and stops with status 10 if it does not)"
            )
    print(f"node-check: {socket.gethostname()} can take part in the campaign on {run_dir}")
    return 0
