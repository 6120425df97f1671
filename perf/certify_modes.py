"""Per-item cost of one InvarLock certify, in-process vs subprocess, on the tiny model.

    .venv/bin/python perf/certify_modes.py [--repeat 2]

Builds (or reuses) the tiny model, makes one 8-bit RTN edit, evaluates the baseline once to get a
reusable baseline report, then times `certifier.certify` of the edit in each mode with the tiny
suite's settings. The plugin's `--certify-mode auto` picks in-process unless an item spans GPUs.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

from pytest_invarlock.assets.tiny_model import build_tiny_assets
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.worker import certifier


def make_edit(model_dir: Path, out: Path) -> Path:
    import shutil

    from transformers import AutoModelForCausalLM

    from pytest_invarlock.edits.kernels import apply_spec

    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    apply_spec(model, "quant_rtn:8:128:ffn")
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (model_dir / name).is_file():
            shutil.copyfile(model_dir / name, out / name)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    assets = build_tiny_assets()
    tiny = load_suite("tiny").models[0].settings
    settings = certifier.EvaluateSettings(
        dataset_file=Path(assets.eval_file).resolve(),
        seq_len=tiny.seq_len,
        stride=tiny.stride,
        preview_n=tiny.preview_windows,
        final_n=tiny.final_windows,
        bootstrap_replicates=tiny.bootstrap_replicates,
        acceptance_range=(tiny.acceptance_min, tiny.acceptance_max),
        measure_guard_overhead=tiny.guard_overhead,
        threads=2,
    )
    root = Path(tempfile.mkdtemp(prefix="certify-bench-"))
    edited = make_edit(Path(assets.model_dir), root / "e-0")
    report = certifier.run_baseline(Path(assets.model_dir), root / "base", settings)
    for mode in ("inprocess", "subprocess"):
        for reuse in (True, False):
            times = []
            for i in range(args.repeat):
                started = time.perf_counter()
                verdict = certifier.certify(
                    Path(assets.model_dir),
                    edited,
                    root / f"{mode}-{reuse}-{i}",
                    copy.copy(settings),
                    edit_label="custom",
                    baseline_report=report if reuse else None,
                    mode=mode,
                )
                times.append(time.perf_counter() - started)
            label = "baseline report reused" if reuse else "baseline evaluated too"
            print(f"{mode:10s} {label:23s} {statistics.median(times):6.1f} s  (ratio {verdict.ratio_vs_baseline:.4f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
