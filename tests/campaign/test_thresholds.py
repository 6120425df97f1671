"""Deviations from InvarLock's stock ci profile and tier (issue 19, point 11): computed from the installed InvarLock's
packaged YAML, listed in docs/thresholds.md, and never mislabelled "stock"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.files import shipped_suites
from pytest_invarlock.campaign.thresholds import DOCS, deviations, stock_runtime

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stock() -> tuple[dict, dict]:
    found = stock_runtime()
    assert found is not None, "InvarLock's packaged runtime YAML was not found"
    return found


def test_the_stock_ci_profile_band_is_not_the_one_calibration_runs_use(stock) -> None:
    profile, tiers = stock
    assert profile["primary_metric"]["drift_band"] == {"min": 0.95, "max": 1.07}  # InvarLock 0.12.1's ci profile
    rows = {row.key: row for row in deviations(load_suite("tiny"), profile, tiers)}
    assert (
        rows["drift_band_calibration"]
        .line()
        .startswith("drift band of calibration runs: [0.95, 1.07] (ci profile) -> [0.95, 1.05]")
    )
    assert rows["spectral_max_caps"].stock == "5" and "15: fp8, quant_rtn" in rows["spectral_max_caps"].ours
    assert rows["variance_min_effect"].stock == "0.0" and "floor 0.0009" in rows["variance_min_effect"].ours
    assert rows["acceptance_range"].ours == "[0.95, 1.1]" and "no lower bound" in rows["acceptance_range"].stock
    assert rows["guard_overhead"].ours == "skipped"
    assert "+ 0.05" in rows["spectral_kappa"].ours


@pytest.mark.parametrize("suite", shipped_suites())
def test_every_deviation_of_every_shipped_suite_is_in_the_docs_table(stock, suite: str) -> None:
    table = (REPO / DOCS).read_text()
    keys = set(re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE))
    for row in deviations(load_suite(suite), *stock):
        assert row.key in keys, f"{row.key} ({row.setting}) is missing from {DOCS}"


def test_no_text_calls_the_reference_band_invarlocks_stock() -> None:
    pages = sorted(path.relative_to(REPO).as_posix() for path in (REPO / "docs").glob("*.md"))
    assert DOCS in pages
    for name in ("README.md", "CHANGELOG.md", *pages):
        text = " ".join((REPO / name).read_text().split())
        assert not re.search(r"InvarLock's stock \[?0\.95, 1\.05", text), name
        assert "stock [0.95, 1.05]" not in text, name
