"""What a run writes as it goes, for another shell or a dashboard: state/progress.json, state/errors.json,
logs/main.log, analysis/memory_plan.csv, and the readable links into the store.

The sessions are real validation sessions (--suite tiny) over stand-in test functions that sleep or
raise instead of certifying (no models), so these run in seconds and need no lock.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from helpers import fake_suite_process, fake_suite_session
from pytest_invarlock.controller_log import classify
from pytest_invarlock.store_links import certificate_dir, evals_files, links_of, place_link

SLEEPING = """
import time
def test_calibration(invarlock_item): time.sleep({pause})
def test_edit(invarlock_item): time.sleep({pause})
def test_error(invarlock_item): time.sleep({pause})
def test_benchmark(invarlock_item): time.sleep({pause})
"""

ERRORING = """
import pytest

@pytest.fixture
def loaded(invarlock_item):
    if invarlock_item.param_id == "tiny-kjv-zero_layer-run1":
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    if invarlock_item.param_id == "tiny-kjv-rank_collapse-run1":
        raise RuntimeError("item timed out after 300 s (the suite's limit)")

def test_calibration(invarlock_item): pass
def test_edit(invarlock_item): pass
def test_error(loaded): pass
def test_benchmark(invarlock_item): pass
"""


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def test_progress_json_changes_while_the_run_goes(tmp_path: Path) -> None:
    process = fake_suite_process(tmp_path, SLEEPING.format(pause=0.25), "-q")  # -q: no display, the file anyway
    path = tmp_path / "run" / "state" / "progress.json"
    seen: list[dict[str, Any]] = []
    try:
        while process.poll() is None:
            if path.is_file():
                snapshot = read_json(path)  # written atomically: always a whole document
                if not seen or snapshot != seen[-1]:
                    seen.append(snapshot)
            time.sleep(0.2)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, out[-2000:] + err[-2000:]
    final = read_json(path)
    running = [s for s in seen if not s["finished"]]
    assert len({s["done"] for s in running}) >= 3, [s["done"] for s in seen]  # it moved while items ran
    assert len({s["updated"] for s in running}) >= 2
    assert all(s["total"] == 46 and s["suite"] == "tiny" and 0 <= s["done"] <= 46 for s in seen)
    dones = [s["done"] for s in seen]
    assert dones == sorted(dones)
    assert any(s["running"] and s["running"][0]["item"].startswith("tiny-kjv-") for s in running)
    assert final["finished"] is True and final["done"] == 46 and final["eta_s"] == 0.0
    assert final["outcomes"] == {"passed": 46, "failed": 0, "error": 0, "skipped": 0}
    assert final["queue"] == {"pending": 0, "running": 0, "completed": 46, "failed": 0}
    assert final["controller_pid"] == process.pid


def test_errors_json_and_the_main_log_account_for_every_item(tmp_path: Path) -> None:
    result = fake_suite_session(tmp_path, ERRORING, "-n", "2")
    assert result.returncode == 1, result.stdout[-3000:]
    errors = read_json(tmp_path / "run" / "state" / "errors.json")
    assert errors["total"] == 2 and errors["by_type"] == {"oom": 1, "timeout": 1}
    by_item = {e["item"]: e for e in errors["errors"]}
    assert set(by_item) == {"tiny-kjv-zero_layer-run1", "tiny-kjv-rank_collapse-run1"}
    assert (
        by_item["tiny-kjv-zero_layer-run1"]["phase"] == "setup"
        and "out of memory" in by_item["tiny-kjv-zero_layer-run1"]["message"]
    )
    assert by_item["tiny-kjv-zero_layer-run1"]["worker"] in ("gw0", "gw1")
    log = (tmp_path / "run" / "logs" / "main.log").read_text()
    assert "controller: session " in log and "suite tiny" in log
    assert "worker gw0 up" in log and "worker gw1 up" in log
    assert log.count(" passed in ") == 44
    assert "tiny-kjv-zero_layer-run1 error (oom) on gw" in log
    assert "tiny-kjv-rank_collapse-run1 error (timeout) on gw" in log
    assert "(exit status 1, 2 error(s))" in log
    assert not (tmp_path / "run" / "logs" / "gw0.log").exists()  # the stand-ins start no worker pipeline


def test_a_clean_run_writes_an_empty_errors_file_and_the_memory_plan(tmp_path: Path) -> None:
    result = fake_suite_session(tmp_path, SLEEPING.format(pause=0), "-q")
    assert result.returncode == 0, result.stdout[-2000:]
    assert read_json(tmp_path / "run" / "state" / "errors.json")["total"] == 0
    plan = (tmp_path / "run" / "analysis" / "memory_plan.csv").read_text().splitlines()
    assert len(plan) == 1 + 46 and "tiny-kjv-calibration-run1" in plan[1]
    assert "invarlock memory plan" not in result.stdout  # the table only with --gpu-plan


def test_collect_only_writes_none_of_it(tmp_path: Path) -> None:
    result = fake_suite_session(tmp_path, SLEEPING.format(pause=0), "--co", "-q")
    assert result.returncode == 0, result.stdout[-2000:]
    run = tmp_path / "run"
    for relative in ("state/progress.json", "state/errors.json", "logs/main.log", "analysis/memory_plan.csv"):
        assert not (run / relative).exists(), relative


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("item timed out after 1800 s", "timeout"),
        ("torch.OutOfMemoryError: CUDA out of memory", "oom"),
        ("disk full (ENOSPC, No space left on device) while writing x", "disk_full"),
        ("worker 'gw1' crashed while running 'x'", "crash"),
        ("hub model org/m@abc is not in the local Hugging Face cache and this run is offline", "model_unavailable"),
        ("ValueError: something else", "pipeline"),
    ],
)
def test_errors_are_classified_by_their_message(message: str, kind: str) -> None:
    assert classify(message) == kind


def store_file(run: Path, *parts: str) -> Path:
    path = run.joinpath("store", *parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


def test_links_follow_the_documents_layout(tmp_path: Path) -> None:
    run = tmp_path / "run"
    report = store_file(run, "results", "r-1", "reports", "eval", "evaluation.report.json")
    probe = store_file(run, "results", "r-1", "rmt_probe.json")
    preset = store_file(run, "presets", "p-1", "preset.yaml")
    store_file(run, "presets", "p-1", "preset.json")
    error = {
        "model": "m",
        "kind": "error",
        "scenario": "rmt_norm_noise",
        "run": 1,
        "report": str(report),
        "probe_file": str(probe),
    }
    assert certificate_dir({**error, "run": 2}) == Path("m/certificates/errors/rmt_norm_noise/run_2")
    edit = {"model": "m", "kind": "clean", "scenario": "svd_clean", "run": 3, "report": str(report), "preset": str(preset)}
    calibration = {"model": "m", "kind": "calibration", "scenario": "calibration", "run": 5, "report": str(report)}
    for record in (error, edit, calibration):
        for link, target in links_of(record).items():
            place_link(run, link, target)
    for shown in (
        "m/certificates/errors/rmt_norm_noise/evaluation.report.json",
        "m/certificates/errors/rmt_norm_noise/rmt_probe.json",
        "m/certificates/svd_clean/run_3/evaluation.report.json",
        "m/certificates/calibration/run_5/evaluation.report.json",
        "presets/calibrated_preset_m.yaml",
        "presets/calibrated_preset_m.json",
    ):
        path = run / shown
        assert path.is_symlink() and not os.path.isabs(os.readlink(path)), shown
        assert path.resolve().is_relative_to((run / "store").resolve()) and path.read_text() == "{}"
    place_link(run, Path("m/certificates/svd_clean/run_3/evaluation.report.json"), None)  # the item lost its report
    assert not (run / "m/certificates/svd_clean/run_3/evaluation.report.json").exists()
    assert links_of({**edit, "model": "store"}) == {}  # a model named like a run-directory folder gets no links


def test_evals_files_gather_each_variants_scores_by_task() -> None:
    def bench(variant: str, task: str, accuracy: float | None) -> dict[str, Any]:
        return {"kind": "benchmark", "model": "m", "variant": variant, "benchmark": task, "accuracy": accuracy, "n": 400}

    files = evals_files(
        [bench("baseline", "a", 0.6), bench("baseline", "b", 0.5), bench("svd_clean", "a", 0.4), bench("x", "a", None)]
    )
    assert set(files) == {Path("m/evals/baseline_results.json"), Path("m/evals/svd_clean_results.json")}
    baseline = files[Path("m/evals/baseline_results.json")]
    assert baseline["results"]["a"]["accuracy"] == 0.6 and baseline["results"]["b"]["n"] == 400
