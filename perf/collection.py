"""Collection time of the largest suite, and proof that collection imports no torch.

    .venv/bin/python perf/collection.py [--suite full] [--repeat 5]

Target (issue 2): `pytest --co validation/ --suite full -q` lists every item in under 3 seconds.
Prints the wall time of each repetition (a fresh interpreter each time) and the median.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PROBE = """
import sys, pytest
rc = pytest.main(["--co", "-q", "-p", "no:cacheprovider", "validation/", "--suite", sys.argv[1]])
print("TORCH_IMPORTED", "torch" in sys.modules)
sys.exit(rc)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="full")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    times = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        result = subprocess.run([sys.executable, "-c", PROBE, args.suite], cwd=REPO, capture_output=True, text=True)
        times.append(time.perf_counter() - started)
        if result.returncode != 0:
            print(result.stdout[-2000:], result.stderr[-2000:])
            return 1
    items = next(line for line in result.stdout.splitlines() if "collected" in line)
    print(f"suite {args.suite}: {items.strip()}")
    print("wall seconds per collection:", ", ".join(f"{t:.2f}" for t in times), f"(median {statistics.median(times):.2f})")
    print(result.stdout.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
