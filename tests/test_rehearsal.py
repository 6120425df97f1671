"""The rehearsal's CI slice: one miniature through the local hub, online then offline (docs/rehearsal.md).

Yi's miniature is published as `pytorch_model-*.bin` shards only, so the slice also covers the `.bin` fallback.
One calibration, one clean, one stress and one error item, with the rehearsal's own code and settings; the
miniature and its git mirror are built once per cache (~/.cache/pytest-invarlock) and shared with
`./dev.sh rehearse`; the run directory and the HF cache are fresh, so everything is downloaded for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_invarlock.assets.rehearsal import Plan, Result, rehearse, report

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

SLICE = Plan(models=("yi-34b",), scenarios=("calibration", "quant_rtn_8bit_clean", "svd_rank32_stress", "nan_injection"))
REPO_ID = "01-ai/Yi-34B"


@pytest.fixture(scope="module")
def rehearsed(tmp_path_factory: pytest.TempPathFactory) -> Result:
    result = rehearse(SLICE, tmp_path_factory.mktemp("rehearsal"), echo=False)
    print(report(result) + result.line())
    return result


def test_every_item_ends_in_a_verdict(rehearsed: Result) -> None:
    assert sorted(r["scenario"] for r in rehearsed.online.records.values()) == sorted(SLICE.scenarios)
    assert rehearsed.online.counts()["errors"] == 0, report(rehearsed)
    nan = next(r for r in rehearsed.online.records.values() if r["scenario"] == "nan_injection")
    assert nan["outcome"] == "passed" and nan["detected"], nan


def test_online_downloads_the_bin_shards_and_invarlocks_dataset_from_the_hub(rehearsed: Result) -> None:
    files = [Path(path).name for path in rehearsed.online.downloads]
    model_files = [Path(p).name for p in rehearsed.online.downloads if p.startswith(f"/{REPO_ID}/resolve/")]
    assert any(re.fullmatch(r"pytorch_model-\d{5}-of-\d{5}\.bin", name) for name in model_files), model_files
    assert {"config.json", "tokenizer.json", "pytorch_model.bin.index.json"} <= set(model_files)
    assert not any(name.endswith(".safetensors") for name in model_files)
    assert "validation-00000-of-00001.parquet" in files and "README.md" in files


def test_the_offline_rerun_is_pinned_reuses_everything_and_downloads_nothing(rehearsed: Result) -> None:
    assert rehearsed.offline_ok, rehearsed.problems
    assert rehearsed.offline.downloads == []
    assert rehearsed.revisions == {REPO_ID: rehearsed.served[f"models/{REPO_ID}"]}
    assert all(r["revision"] == rehearsed.revisions[REPO_ID] for r in rehearsed.offline.records.values())


def test_the_last_line_reads_as_the_rehearsals(rehearsed: Result) -> None:
    pattern = r"REHEARSAL suite=full architectures=1 items=4 passed=\d failed=\d errors=0 downloads=\d+ offline_rerun=ok minutes=\d+\.\d"
    assert re.fullmatch(pattern, rehearsed.line()), rehearsed.line()
