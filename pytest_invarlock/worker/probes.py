"""The probe sidecars of two informational injections: rmt_probe.json and ve_probe.json.

Compare-mode evaluation can hide what these injections aim at (the evidence-pack document): RMT may keep
`rmt_stable` true, and variance equalisation (a remediation guard) is muted when the subject run is a
no-op edit. So, beside the evaluate of `rmt_norm_noise`, RMT's activation edge risk is measured on the
baseline and on the edited model over the same windows (the baseline report's) and judged by the
preset's epsilon per family; beside `ve_mlp_scale_skew`, VE's calibration runs on the edited model and
records the scales it proposes and their A/B gain. The sidecar lies next to the evaluation report in
the result's store artifact; its signal counts towards the scenario's minimum signal fraction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

VERSION = 1  # part of the result's cache key: bump when a probe's measurement changes
PROBE_FILES = {"rmt_norm_noise": "rmt_probe.json", "ve_mlp_scale_skew": "ve_probe.json"}
RMT_WINDOWS = 8  # RMT's own activation sampling: 8 evenly spaced windows
VE_WINDOWS = 16  # enough for the tier's calibration request (12 balanced, 16 conservative)


def probe_file(kind: str) -> str | None:
    """The sidecar an injection of `kind` writes, or None."""
    return PROBE_FILES.get(kind)


def signal(probe: Mapping[str, Any] | None) -> bool:
    """The probe's signal: RMT's delta policy violated, or VE proposing scales (or enabling)."""
    if not probe:
        return False
    if "stable" in probe:
        return probe.get("measured") is True and probe.get("stable") is False
    return bool(probe.get("signal")) or int(probe.get("proposed_scales") or 0) > 0


def windows(report_path: Path, limit: int) -> list[dict[str, Any]]:
    """Up to `limit` evenly spaced windows of the baseline report (preview then final), as model inputs."""
    import torch

    evaluation = json.loads(report_path.read_text(encoding="utf-8")).get("evaluation_windows") or {}
    rows: list[tuple[list[int], list[int] | None]] = []
    for arm in ("preview", "final"):
        block = evaluation.get(arm) or {}
        masks = block.get("attention_masks") or []
        for i, ids in enumerate(block.get("input_ids") or []):
            rows.append((ids, masks[i] if i < len(masks) else None))
    if not rows:
        raise ValueError(f"{report_path} stores no evaluation windows (evaluation_windows.*.input_ids) to probe on")
    picks = sorted({round(k * (len(rows) - 1) / max(1, limit - 1)) for k in range(min(limit, len(rows)))})
    return [
        {
            "input_ids": torch.tensor([rows[i][0]], dtype=torch.long),
            "attention_mask": torch.tensor([rows[i][1] if rows[i][1] is not None else [1] * len(rows[i][0])], dtype=torch.long),
        }
        for i in picks
    ]


def run(
    kind: str,
    certifier: Any,
    *,
    baseline_model: Any,
    subject_model: Any,
    report_path: Path,
    preset: Mapping[str, Any],
    tier: str,
) -> dict[str, Any]:
    """The probe of an injection of `kind` (see PROBE_FILES), as the JSON its sidecar holds.

    VE's calibration may leave its scales in `subject_model`: pass a copy that nothing else uses."""
    import torch

    with torch.no_grad():
        if kind == "rmt_norm_noise":
            batches = windows(report_path, RMT_WINDOWS)
            result = certifier.rmt_edge_risk_probe(baseline_model, subject_model, batches, preset["rmt_epsilon"])
        else:
            batches = windows(report_path, VE_WINDOWS)
            result = certifier.variance_probe(
                subject_model, batches, tier=tier, min_effect_lognll=preset["variance_min_effect_lognll"]
            )
    return {"probe": PROBE_FILES[kind].removesuffix(".json"), "scenario_kind": kind, "version": VERSION, **result}
