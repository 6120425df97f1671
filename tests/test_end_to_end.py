"""The tiny suite end to end on CPU: real tiny model, real InvarLock, real lm-eval, real xdist workers.

One campaign per test session (the `warm_campaign` fixture of tests/conftest.py, shared with tests/faults):
the first run (-n 2) certifies everything; the second, in one process, must reuse every artifact and reach the same
verdict; then a cached certificate is rewritten (a gate flipped in its report, and resealed as InvarLock
would have written it) and the item it belongs to must turn red with a readable message.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from helpers import Run, flip_gate, run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


@pytest.fixture(scope="module")
def campaign(warm_campaign) -> dict:
    root, run_dir = warm_campaign.root, warm_campaign.restore()
    second = run_suite(run_dir, "--junitxml", str(root / "second.xml"))
    print(
        f"tiny suite: first run (-n 2) {warm_campaign.first.seconds:.0f} s, second run (one process, cached) {second.seconds:.0f} s"
    )
    return {"root": root, "run_dir": run_dir, "first": warm_campaign.first, "second": second}


def test_first_run_passes_every_item_and_validates(campaign: dict) -> None:
    first: Run = campaign["first"]
    assert first.returncode == 0, first.output[-6000:]
    assert "PHASE0_VALIDATED" in first.output
    # the planner's choice and why, with the no-op drift promise, next to the verdict
    plan = json.loads((campaign["run_dir"] / "state" / "window_plan.json").read_text())["tiny-kjv"]
    windows_line = next(line for line in first.output.splitlines() if line.startswith("windows: tiny-kjv: "))
    assert f"{plan['preview_n']}+{plan['final_n']} windows (auto)" in windows_line and "no-op drift false alarm" in windows_line
    drifts = [
        json.loads(p.read_text())["drift"] for p in (campaign["run_dir"] / "records").glob("tiny-kjv-calibration-run*.json")
    ]
    assert len(drifts) == 3 and all(plan["drift_95"][0] / 1.01 <= d <= plan["drift_95"][1] * 1.01 for d in drifts)
    closing = [line for line in first.output.splitlines() if re.search(r"\d+ passed", line)][-1]
    assert "failed" not in closing and "error" not in closing and "skipped" not in closing
    verdict = json.loads((campaign["run_dir"] / "reports" / "final_verdict.json").read_text())
    assert verdict["phase0"]["status"] == "PHASE0_VALIDATED"
    assert verdict["phase0"]["truth_source"] == "lm-eval regression"
    for name in ("invarlock_results.csv", "eval_results.csv", "calibration_summary.json", "correlation_analysis.json"):
        assert (campaign["run_dir"] / "analysis" / name).is_file()


def test_junit_carries_each_items_numbers(campaign: dict) -> None:
    for xml in ("first.xml", "second.xml"):  # the first comes from xdist workers, the second from one process
        cases = ET.parse(campaign["root"] / xml).getroot().iter("testcase")
        certify = [c for c in cases if c.get("name", "").startswith(("test_edit[", "test_calibration["))]
        assert certify
        for case in certify:
            properties = {p.get("name"): p.get("value") for p in case.iter("property")}
            assert {"ratio", "ci_lo", "ci_hi", "overall_pass", "failed_gates", "invarlock"} <= properties.keys()
            assert float(properties["ratio"]) > 0


def test_second_run_reuses_everything_and_agrees(campaign: dict) -> None:
    first: Run = campaign["first"]
    second: Run = campaign["second"]
    assert second.returncode == 0, second.output[-6000:]
    assert "reused from the run directory:" in second.output
    records = [json.loads(p.read_text()) for p in (campaign["run_dir"] / "records").glob("*.json")]
    assert records and all(r["reused"] for r in records if r["outcome"] == "passed")
    first_verdict = first.output[first.output.index("Phase 0 verdict") :].splitlines()[:12]
    second_verdict = second.output[second.output.index("Phase 0 verdict") :].splitlines()[:12]
    assert first_verdict == second_verdict
    # Speed is measured, not asserted (README and docs/tiny-model.md quote the figures); the fixture prints both run times.


def test_user_tests_get_the_campaigns_artifacts_from_the_fixtures(campaign: dict, tmp_path: Path) -> None:
    """invarlock_baseline/preset/edited_model serve users' own tests from the store."""
    test_file = tmp_path / "test_mine.py"
    test_file.write_text(
        "def test_fixtures(invarlock_baseline, invarlock_preset, invarlock_edited_model, invarlock_suite):\n"
        "    model = invarlock_suite.models[0]\n"
        "    scenario = next(s for s in invarlock_suite.scenarios if s.name == 'prune_70pct_stress')\n"
        "    assert (invarlock_baseline(model) / 'model_profile.json').is_file()\n"
        "    assert invarlock_preset(model).name == 'preset.yaml'\n"
        "    assert (invarlock_edited_model(model, scenario) / 'edit_metadata.json').is_file()\n"
    )
    store = campaign["run_dir"] / "store"
    before = sorted(p.name for p in store.glob("*/*") if p.is_dir())
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(test_file),
            "--suite",
            "tiny",
            "--run-dir",
            str(campaign["run_dir"]),
            "-p",
            "no:cacheprovider",
            "-q",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert sorted(p.name for p in store.glob("*/*") if p.is_dir()) == before  # all reused, nothing recomputed


def test_a_tampered_certificate_turns_its_item_red(campaign: dict) -> None:
    """Flip a gate in a cached clean-edit report: the item must fail and say which gate and the numbers."""
    run_dir = campaign["run_dir"]
    flip_gate(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
    rerun = run_suite(run_dir, "-k", "quant_rtn_8bit_clean-run1 and test_edit")
    assert rerun.returncode == 1
    assert "1 failed" in rerun.output
    assert "NOT as expected" in rerun.output
    assert "failed gates: primary_metric_acceptable" in rerun.output
    assert "ratio 1.0" in rerun.output and "acceptance [0.95, 1.10]" in rerun.output
