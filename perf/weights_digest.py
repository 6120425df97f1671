"""What content-addressed baselines cost: the weights digest of a model directory, first and later sessions.

    .venv/bin/python perf/weights_digest.py [--mb 1024] [--files 4] [--model-dir DIR]

Times `worker.artifacts.weights_digest` on a synthetic model directory of --files safetensors-sized files
(--mb MiB in all; or on --model-dir, read-only) in a scratch store: the first call reads and hashes every file;
a later session (a fresh process memo, the same run directory) only stats the files and finds the digest in the
store; a file rewritten in place (same size, mtime put back) is read again. Prints seconds per GB and the
estimate for 140 GB of weights (a 70B model in bf16). The page cache usually holds a file just written, so
the first figure is hashing speed; a cold read adds the disk's read time.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from pytest_invarlock import store as store_module
from pytest_invarlock.store import Store
from pytest_invarlock.worker.artifacts import weights_digest

SEVENTY_B_BF16_BYTES = 140e9


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=1024, help="synthetic weights in MiB, over --files files")
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--model-dir", type=Path, default=None, help="time a real model directory instead (read only)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = args.model_dir
        if model is None:
            model = Path(scratch) / "model"
            model.mkdir()
            for index in range(args.files):
                (model / f"model-{index:05d}.safetensors").write_bytes(os.urandom(args.mb * 2**20 // args.files))
            (model / "config.json").write_text('{"model_type": "llama"}\n')
        nbytes = sum(f.stat().st_size for f in model.iterdir() if f.is_file())
        store = Store(Path(scratch) / "store")
        first = _timed(lambda: weights_digest(model, store))
        store_module._CONTENT_SHA256.clear()  # a later session: a new process, the same run directory
        later = _timed(lambda: weights_digest(model, Store(Path(scratch) / "store")))
        print(f"{nbytes / 1e9:.2f} GB in {sum(1 for f in model.iterdir() if f.is_file())} files")
        print(f"first session: {first:.2f} s ({first / (nbytes / 1e9):.2f} s per GB, {nbytes / first / 1e9:.2f} GB/s)")
        print(f"later session: {later * 1000:.1f} ms (stat every file, find the digest in the store)")
        if args.model_dir is None:
            target = next(model.glob("*.safetensors"))
            stat = target.stat()
            with target.open("r+b") as handle:
                handle.write(os.urandom(64))
            os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
            again = _timed(lambda: weights_digest(model, store))
            print(f"one file rewritten in place (same size, mtime put back): {again:.2f} s (only that file read again)")
        per_gb = first / (nbytes / 1e9)
        print(f"140 GB of weights (70B in bf16): ~{per_gb * SEVENTY_B_BF16_BYTES / 1e9:.0f} s once per run directory")


if __name__ == "__main__":
    main()
