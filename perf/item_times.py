"""Per-item figures of a finished run directory: seconds, windows, ratio with its CI, drift; and the no-op drifts
set against the band the window plan promised.

    .venv/bin/python perf/item_times.py RUN_DIR

Reads only ``records/*.json`` and ``state/window_plan.json`` (torch-free). The seconds are wall time of the item
on the machine that ran it (the worker's, not a sum over machines).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    args = parser.parse_args(argv)
    records = [json.loads(p.read_text()) for p in sorted((args.run_dir / "records").glob("*.json"))]
    if not records:
        print(f"no records under {args.run_dir / 'records'}", file=sys.stderr)
        return 2
    print(f"{'item':<48} {'kind':<11} {'met':<5} {'s':>7} {'windows':>9} {'ratio':>8} {'95% CI':>17} {'drift':>7}")
    for r in sorted(records, key=lambda r: (r.get("kind") or "", r.get("param_id") or "")):
        ci = r.get("ci") or [None, None]
        windows = "+".join(str(n) for n in r.get("windows") or []) or "-"
        print(
            f"{r.get('param_id', '?'):<48} {r.get('kind', '?'):<11} {r.get('met')!s:<5} {r.get('seconds') or 0:>7.1f} "
            f"{windows:>9} {_fmt(r.get('ratio')):>8} {_fmt(ci[0]):>8}-{_fmt(ci[1]):<8} {_fmt(r.get('drift')):>7}"
        )
    seconds = [r["seconds"] for r in records if isinstance(r.get("seconds"), int | float)]
    print(f"\n{len(records)} items, {sum(seconds):.0f} s of item time, median {statistics.median(seconds):.1f} s per item")
    try:
        plans = json.loads((args.run_dir / "state" / "window_plan.json").read_text())
    except (OSError, ValueError):
        plans = {}
    for model, plan in plans.items():
        drifts = [r["drift"] for r in records if r.get("model") == model and r.get("kind") == "calibration" and r.get("drift")]
        lo, hi = plan["drift_95"]
        inside = sum(lo <= d <= hi for d in drifts)
        print(f"\n{model}: {plan['summary']}")
        print(
            f"  no-op drifts {', '.join(f'{d:.5f}' for d in drifts) or 'none'}: {inside} of {len(drifts)} inside the "
            f"planned 95% range [{lo:.4f}, {hi:.4f}], all inside the gate {plan['inputs']['drift_band']}: "
            f"{all(plan['inputs']['drift_band'][0] <= d <= plan['inputs']['drift_band'][1] for d in drifts)}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
