"""What the store's checksums cost: sealing and verifying an artifact, and the estimate for a 7B model.

    .venv/bin/python perf/store_checksums.py [--run-dir RUN_DIR] [--mb 512]

Times `store.seal` and `store.verify` (sizes only, and the full sha256 that runs once per process or
when a file's stat changes) on every edited-weights artifact of RUN_DIR (a warmed tiny-suite run
directory; without one, on a synthetic 8 MB artifact, the size of a tiny-suite edit), then the raw
sha256 rate on a --mb file, and prints the estimate for a 7B model in bf16 (14.5 GB of weights).
Run it on the disk that holds your run directory: the page cache usually holds a fresh artifact, so
the figures are hashing speed; a cold read adds the disk's read time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pytest_invarlock.store import seal, verify

SEVEN_B_BF16_BYTES = 7.24e9 * 2


def _timed(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, default=None)
    parser.add_argument("--mb", type=int, default=512, help="size of the synthetic file for the raw rate")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        if args.run_dir:
            edits = sorted(p for p in (args.run_dir / "store" / "edits").glob("e-*") if p.is_dir())
        else:
            edit = Path(scratch) / "e-synthetic"
            edit.mkdir()
            (edit / "model.safetensors").write_bytes(os.urandom(8 * 2**20))
            seal(edit)
            edits = [edit]
        if edits:
            sizes = [sum(f.stat().st_size for f in e.rglob("*") if f.is_file()) for e in edits]
            full = [_timed(lambda e=e: verify(e, full=True)) for e in edits]
            quick = [_timed(lambda e=e: verify(e, full=False)) for e in edits]
            print(
                f"{len(edits)} edited-weights artifact(s), median {statistics.median(sizes) / 2**20:.1f} MiB: "
                f"verify with sha256 {statistics.median(full) * 1000:.1f} ms, sizes only "
                f"{statistics.median(quick) * 1000:.2f} ms (median per artifact); "
                f"all {len(edits)}: {sum(full):.2f} s hashed"
            )
        big = Path(scratch) / "big"
        big.mkdir()
        (big / "weights.bin").write_bytes(os.urandom(args.mb * 2**20))
        sealing = _timed(lambda: seal(big), repeat=2)
        checking = _timed(lambda: verify(big, full=True), repeat=2)
        rate = args.mb * 2**20 / checking
        print(f"{args.mb} MiB file: seal {sealing:.2f} s, verify {checking:.2f} s -> sha256 at {rate / 1e9:.2f} GB/s")
        print(
            f"7B model in bf16 ({SEVEN_B_BF16_BYTES / 1e9:.1f} GB per edit): ~{SEVEN_B_BF16_BYTES / rate:.0f} s to "
            "seal an edit once, and the same once per worker process that uses it (sizes-only checks after that)"
        )


if __name__ == "__main__":
    main()
