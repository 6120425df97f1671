"""After an item the worker collects garbage (and empties CUDA's cache) when the item built something or failed,
not when it only reused cached work: a full collection costs about 0.15 s with torch loaded, and a rerun of the
tiny suite spent 6.7 of its 12.8 s on them (46 reused items)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers import forget, run_suite

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

COUNTING_PLUGIN = """
import json
import os
from pathlib import Path

import pytest_invarlock.worker.resources as resources

calls = []
release = resources.release_memory


def counting_release():
    calls.append(os.environ.get("PYTEST_CURRENT_TEST", ""))
    release()


resources.release_memory = counting_release


def pytest_sessionfinish(session):
    Path({out!r}).write_text(json.dumps(calls))
"""


def test_only_the_item_that_built_something_releases_memory(warm_campaign, tmp_path: Path) -> None:
    run_dir = warm_campaign.restore()
    forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
    out = tmp_path / "calls.json"
    (tmp_path / "count_releases.py").write_text(COUNTING_PLUGIN.format(out=str(out)))
    run = run_suite(run_dir, "-k", "test_edit and quant_rtn_8bit_clean", "-p", "count_releases", plugin_dir=tmp_path)
    assert run.returncode == 0, run.output[-3000:]
    calls = json.loads(out.read_text())
    assert calls, "the item that certified for real released nothing"
    assert all("quant_rtn_8bit_clean-run1]" in call for call in calls), calls  # run2 was reused: no collection
