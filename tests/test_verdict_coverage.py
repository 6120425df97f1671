"""The tiny campaign's verdict in every place it is written, and what a session that selects part of it says.

One warmed tiny-suite run directory (`warm_campaign`): its Phase 0 block (terminal, final_verdict.txt/.json),
the CSV, correlation_analysis.json and report.html must show the same counts, because only the Phase 0
compile counts (issue 19, point 7). Then sessions that select part of the suite on that directory, with the
records of the other part removed, must never read VALIDATED (point 1): everything they run is reused, so
each takes seconds.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from helpers import run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

CELLS = ("tp", "fp", "tn", "fn")


def _verdict(run_dir: Path) -> dict:
    return json.loads((run_dir / "reports" / "final_verdict.json").read_text())


def test_the_block_the_csv_the_json_and_the_html_show_the_same_counts(warm_campaign) -> None:
    run_dir = warm_campaign.restore()
    p0 = _verdict(run_dir)["phase0"]
    matrix = {cell: p0["confusion"][cell] for cell in CELLS}
    assert sum(matrix.values()) == p0["confusion"]["total"] > 0
    # CSV: one row per certify item, its Phase 0 cell beside it
    rows = list(csv.DictReader((run_dir / "analysis" / "invarlock_results.csv").open()))
    labels = Counter(r["phase0"].split(" (")[0] for r in rows)  # "FP (errored)" is an FP
    assert {cell: labels[cell.upper()] for cell in CELLS} == matrix
    assert (labels["detected"], labels["detected"] + labels["not detected"]) == (p0["error_detected"], p0["error_total"])
    assert labels["no-op pass"] + labels["no-op false alarm"] == p0["noop_total"]
    # correlation_analysis.json: the models' cells sum to the block's
    corr = json.loads((run_dir / "analysis" / "correlation_analysis.json").read_text())
    assert {cell: sum(model[cell] for model in corr.values()) for cell in CELLS} == matrix
    # final_verdict.txt and the terminal: the same block
    text = (run_dir / "reports" / "final_verdict.txt").read_text()
    for cell, count in matrix.items():
        assert f"{cell.upper()} {count}" in text and f"{cell.upper()} {count}" in warm_campaign.first.output
    assert p0["status"] in text and p0["status"] in warm_campaign.first.output
    # report.html: the drawn matrix, its status, and the item table's Phase 0 column
    page = (run_dir / "reports" / "report.html").read_text()
    for cell, count in matrix.items():
        assert f"{cell.upper()}: {count} scored edit run(s)" in page
    column = Counter(re.findall(r'<td class="Phase-0">([A-Z]{2})</td>', page))
    assert {cell: column[cell.upper()] for cell in CELLS} == matrix
    assert f'class="status {p0["status"]}"' in page


def test_the_summary_prints_the_thresholds_and_the_calibrated_drift_band(warm_campaign) -> None:
    run = run_suite(warm_campaign.restore())  # everything reused: seconds
    assert run.returncode == 0, run.output[-3000:]
    output = run.output
    assert "thresholds that differ from InvarLock's stock ci profile and tier (docs/thresholds.md):" in output
    assert "drift band of calibration runs: [0.95, 1.07] (ci profile) -> [0.95, 1.05]" in output
    band = re.search(r"drift band tiny-kjv: \[(\d\.\d{4}), (\d\.\d{4})\]: mean .* of 3 calibration runs", output)
    assert band is not None, output[-4000:]
    assert 0.95 <= float(band.group(1)) < 1 < float(band.group(2)) <= 1.05


def test_every_certify_record_names_the_invarlock_configuration_and_what_produced_it(warm_campaign) -> None:
    run_dir = warm_campaign.restore()
    records = [json.loads(p.read_text()) for p in (run_dir / "records").glob("*.json")]
    certify = [r for r in records if r["kind"] != "benchmark" and r.get("report")]
    assert certify
    for record in certify:
        config = record["invarlock_config"]
        assert Path(config["preset"]).is_file() and Path(config["root"], "runtime/profiles/ci.yaml").is_file()
        assert Path(config["root"]).parent == Path(record["report"]).parents[2]  # inside the certificate's artifact
    edit = next(r for r in certify if r["scenario"] == "svd_rank96_clean")
    assert "max_caps: 25" in Path(edit["invarlock_config"]["preset"]).read_text()  # the per-edit copy, not max_caps 5
    for record in records:
        environment = record["environment"]
        assert set(environment["versions"]) == {"invarlock", "torch", "transformers", "lm_eval", "pytest-invarlock"}
        assert environment["versions"]["invarlock"] and environment["host"] and environment["device"] == "cpu"
        assert environment["device_name"]


@pytest.mark.parametrize(
    ("selection", "removed", "missing"),
    [
        (("-k", "not test_error"), ("error",), "error detection >= 80%: not measured: no verdict for the suite's 10"),
        (("--no-benchmarks",), ("benchmark",), "not run"),
        (
            ("--calibrate-only",),
            ("clean", "error"),
            "accuracy >= 60%: 100.0% of 3 measured scored edits; 8 clean or gating-stress edit items",
        ),
    ],
    ids=["k-not-errors", "no-benchmarks", "calibrate-only"],
)
def test_a_session_over_part_of_the_suite_never_validates(warm_campaign, selection, removed, missing) -> None:
    """The records of the kinds `removed` are deleted (never run), then a session selects the rest: INCOMPLETE."""
    run_dir = warm_campaign.restore()
    gone = [p for p in (run_dir / "records").glob("*.json") if json.loads(p.read_text())["kind"] in removed]
    assert gone
    for path in gone:
        path.unlink()
    shutil.rmtree(run_dir / "reports")
    run = run_suite(run_dir, *selection)
    assert run.returncode == 0, run.output[-3000:]
    p0 = _verdict(run_dir)["phase0"]
    assert p0["status"] == "PHASE0_INCOMPLETE" and not p0["passed"] and p0["verdict_confidence"] is None
    measured, suite_items = p0["scope"]["measured"], p0["scope"]["suite_items"]
    assert measured == suite_items - len(gone)
    line = f"PHASE0_INCOMPLETE over {measured} of {suite_items} suite items"
    assert line in run.output and line in (run_dir / "reports" / "final_verdict.txt").read_text()
    assert line in (run_dir / "reports" / "report.html").read_text()
    assert f"({len(gone)} not selected this session)" in run.output
    assert missing in p0["status_reason"] + json.dumps(p0["truth_unknown"])
    assert "PHASE0_VALIDATED" not in run.output
