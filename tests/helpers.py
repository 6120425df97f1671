"""Shared helpers for the plugin's own tests: paths, synthetic reports, the scheduling sandbox suite."""

from __future__ import annotations

from pathlib import Path
from typing import Any


REPO = Path(__file__).resolve().parent.parent
VALIDATION = REPO / "validation"


GATES = [
    "primary_metric_acceptable", "preview_final_drift_acceptable", "invariants_pass", "spectral_stable", "rmt_stable"
]


def synthetic_report(**flags: bool) -> dict[str, Any]:
    """A minimal evaluation.report.json with every gate passing unless overridden."""
    return {
        "validation": {**dict.fromkeys([*GATES, "guard_overhead_acceptable"], True), **flags},
        "guard_overhead": {"evaluated": True},
        "primary_metric": {
            "kind": "ppl_causal", "preview": 10.0, "final": 10.2, "ratio_vs_baseline": 1.01,
            "display_ci": [0.99, 1.03], "degraded": False, "invalid": False,
            "drift_band": {"min": 0.95, "max": 1.05},
        },
        "meta": {"pm_acceptance_range": {"min": 0.9, "max": 1.2}},
        "provenance": {
            "window_plan": {"preview_total_tokens": 100, "final_total_tokens": 120, "tokens_floor_met": True}
        },
        "spectral": {
            "caps_applied": 1, "max_caps": 2, "family_caps": {"ffn": {"kappa": 3.0}},
            "family_z_quantiles": {"ffn": {"max": 2.5}},
        },
        "rmt": {
            "epsilon_by_family": {"ffn": 0.01}, "families": {"ffn": {"delta": 0.004}}, "epsilon_violations": []
        },
        "invariants": {"failures": [{"check": "weights_finite", "type": "non_finite", "severity": "error"}]},
        "guards": [
            {
                "name": "spectral",
                "final_z_scores": {"a1": 3.0, "a2": -1.0, "f1": 0.5, "f2": -2.0},
                "module_family_map": {"a1": "attn", "a2": "attn", "f1": "ffn", "f2": "ffn"},
            },
            {"name": "variance", "metrics": {"predictive_gate": {"delta_ci": [-0.003, 0.001]}}},
        ],
    }


# The scheduling sandbox suite: three small models whose memory needs differ only through seq_len/batch.
SCHED_SUITE = """
name: sched
device: cpu
invarlock: {dataset: local}
runs: {calibration: 2, clean: 2, stress: 0, error: 0}
errors: false
models:
  - {name: small, source: ./small, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 4, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 128, eval_batch: 1}}
  - {name: mid, source: ./mid, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 32, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 88}}
  - {name: wide, source: ./wide, size_class: small, dtype: float32, params_b: 0.5,
     architecture: {layers: 32, heads: 8, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 528}}
scenarios: [calibration, quant_rtn_8bit_clean]
benchmarks: {tasks: []}
"""
