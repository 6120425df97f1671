"""Wall time of the tiny suite on this machine: a fresh run, the same run again (all reused), and -n 2.

    .venv/bin/python perf/tiny_suite.py [--keep DIR]

Targets (issue 3): first run under 20 minutes on 2 CPU cores, second run at least 3x faster, -n 2
faster than one process with the same verdict. Prints each run's seconds, item counts and verdict line.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run(run_dir: Path, *extra: str) -> tuple[float, str]:
    started = time.perf_counter()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "validation/",
            "--suite",
            "tiny",
            "--run-dir",
            str(run_dir),
            "-p",
            "no:cacheprovider",
            "-q",
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    return time.perf_counter() - started, result.stdout


def summary(output: str) -> str:
    verdict = re.search(r"PHASE0_\w+( over \d+ of \d+ suite items)? \(.*\)", output)
    counts = re.findall(r"^=*\s*(\d+ passed.*?) in ", output, re.M)
    return f"{counts[-1] if counts else '?'}; {verdict.group(0) if verdict else 'no verdict'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, default=None, help="run directory to use (default: a temp dir)")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="tiny-bench-"))
    first_s, first = run(root / "one")
    second_s, second = run(root / "one")
    parallel_s, parallel = run(root / "two", "-n", "2")
    print(f"first run          {first_s:7.1f} s  {summary(first)}")
    print(f"second run (cache) {second_s:7.1f} s  {summary(second)}  ({first_s / second_s:.0f}x faster)")
    print(f"-n 2 from scratch  {parallel_s:7.1f} s  {summary(parallel)}  ({first_s / parallel_s:.2f}x faster)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
