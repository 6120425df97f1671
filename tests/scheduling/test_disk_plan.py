"""The disk plan (pure): edits in flight, the plan line per filesystem, headroom, eviction order; and the
plan `--gpu-plan` prints for the shipped full and b200 suites."""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import REPO, VALIDATION
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.scheduling.disk_plan import (
    GIB,
    ModelDisk,
    OnDisk,
    Volume,
    default_headroom,
    edits_in_flight,
    eviction_order,
    gb,
    plan_disk,
)

RUN = Volume("/runs/full", 1, 3000 * GIB, 8000 * GIB)
CACHE = Volume("/hf", 2, 500 * GIB, 1000 * GIB)


def test_one_edited_copy_per_item_that_can_run_at_once():
    models = [ModelDisk("7b", 14 * GIB, 30), ModelDisk("72b", 135 * GIB, 30, gpus_per_item=2)]
    assert edits_in_flight(models, gpus=8, workers=8) == 4 * 135 * GIB  # four 72B items fill the node
    assert edits_in_flight(models, gpus=3, workers=3) == (135 + 14) * GIB
    assert edits_in_flight(models, gpus=0, workers=2) == 2 * 135 * GIB  # CPU: workers bind
    assert edits_in_flight([ModelDisk("7b", 14 * GIB, 2)], gpus=8, workers=8) == 2 * 14 * GIB  # no more than it has
    assert edits_in_flight([ModelDisk("7b", 14 * GIB, 0)], gpus=8, workers=8) == 0


@settings(max_examples=150, deadline=None)
@given(
    models=st.lists(st.tuples(st.integers(1, 50), st.integers(0, 4), st.integers(1, 3)), min_size=1, max_size=3),
    gpus=st.integers(0, 5),
    workers=st.integers(1, 5),
)
def test_the_bound_is_the_largest_set_of_items_that_fits_the_node(models, gpus, workers):
    disks = [ModelDisk(f"m{i}", size, count, width) for i, (size, count, width) in enumerate(models)]
    best = 0
    for counts in itertools.product(*(range(d.edit_items + 1) for d in disks)):
        used = sum(c * (d.gpus_per_item if gpus else 1) for c, d in zip(counts, disks))
        if used <= (gpus or workers) and sum(counts) <= workers:
            best = max(best, sum(c * d.weights_bytes for c, d in zip(counts, disks)))
    assert edits_in_flight(disks, gpus=gpus, workers=workers) == best


def test_the_plan_line_per_filesystem_and_what_does_not_fit():
    models = [
        ModelDisk("7b", 14 * GIB, 30, 1, download_bytes=14 * GIB, download_device=2),
        ModelDisk("72b", 135 * GIB, 30, 2, download_bytes=135 * GIB, download_device=2),
    ]
    plan = plan_disk(models, run_volume=RUN, volumes={2: CACHE}, results_bytes=GIB, gpus=8, workers=8)
    assert plan.lines() == [
        "disk: peak 541 GB (baselines 0.000 GB, edits in flight 540 GB, results 1.0 GB) on /runs/full with 3000 GB free",
        "disk: peak 149 GB (baselines 149 GB, edits in flight 0.000 GB, results 0.000 GB) on /hf with 500 GB free",
    ]
    assert plan.edit_budget == 540 * GIB and plan.shortfalls() == []
    local = [dataclasses.replace(m, download_device=1) for m in models]  # the HF cache on the run's filesystem
    same = plan_disk(local, run_volume=RUN, volumes={1: RUN}, results_bytes=GIB, gpus=8, workers=8)
    assert same.lines() == [
        "disk: peak 690 GB (baselines 149 GB, edits in flight 540 GB, results 1.0 GB) on /runs/full with 3000 GB free"
    ]
    small = Volume("/runs/full", 1, 600 * GIB, 8000 * GIB)
    short = plan_disk(local, run_volume=small, volumes={1: small}, results_bytes=GIB, gpus=8, workers=8)
    assert short.shortfalls() == [
        f"{short.lines()[0]}: the peak plus 160 GB headroom needs 250 GB more"  # 2% of 8000 GB
    ]


def test_a_budget_keeps_more_but_running_items_keep_their_edits():
    models = [ModelDisk("7b", 14 * GIB, 30)]
    bigger = plan_disk(models, run_volume=RUN, volumes={}, results_bytes=0, gpus=2, workers=2, edit_budget=100 * GIB)
    smaller = plan_disk(models, run_volume=RUN, volumes={}, results_bytes=0, gpus=2, workers=2, edit_budget=0)
    assert bigger.volumes[0].edits == bigger.edit_budget == 100 * GIB
    assert smaller.edit_budget == 0 and smaller.volumes[0].edits == 28 * GIB
    assert plan_disk(models, run_volume=RUN, volumes={}, results_bytes=0, gpus=2, workers=2, headroom=0).volumes[0].headroom == 0


@pytest.mark.parametrize(("total_gb", "headroom_gb"), [(10, 1), (252, 5.04), (8000, 160), (50_000, 200)])
def test_default_headroom_is_two_percent_within_1_and_200_gb(total_gb, headroom_gb):
    assert default_headroom(int(total_gb * GIB)) == pytest.approx(headroom_gb * GIB, rel=1e-6)


def test_gb_prints_the_precision_the_size_needs():
    assert [gb(x * GIB) for x in (1234.4, 56.78, 0.0078)] == ["1234", "56.8", "0.008"]


def test_eviction_goes_unneeded_first_then_least_recently_used():
    order = eviction_order(
        [
            OnDisk("needed-old", 1, 10.0, True),
            OnDisk("unneeded-new", 1, 30.0, False),
            OnDisk("needed-new", 1, 40.0, True),
            OnDisk("unneeded-old", 1, 20.0, False),
        ]
    )
    assert [e.name for e in order] == ["unneeded-old", "unneeded-new", "needed-old", "needed-new"]


LINE = re.compile(
    r"^disk: peak ([\d.]+) GB \(baselines ([\d.]+) GB, edits in flight ([\d.]+) GB, results ([\d.]+) GB\) on (\S+) with ([\d.]+) GB free$"
)


@pytest.mark.parametrize(("suite", "gpus", "most_gb"), [("full", "8x80", 1000), ("b200", "8x180", 1700)])
def test_gpu_plan_prints_the_disk_line_of_the_shipped_suites(tmp_path, suite, gpus, most_gb):
    """`pytest --co validation/ --suite full --gpus 8x80 --gpu-plan` on a login node: the campaign's disk."""
    command = [sys.executable, "-m", "pytest", str(VALIDATION), "--co", "-q", "--suite", suite, "--gpus", gpus]
    done = subprocess.run([*command, "--gpu-plan", "--run-dir", str(tmp_path)], capture_output=True, text=True, cwd=REPO)
    lines = [LINE.match(line) for line in done.stdout.splitlines() if line.startswith("disk: ")]
    assert lines and all(lines), done.stdout[-3000:] + done.stderr[-2000:]
    print("\n".join(f"{suite} on {gpus}: {m.group(0)}" for m in lines if m))
    peaks = [float(m.group(1)) for m in lines if m]
    parts = [sum(float(m.group(i)) for m in lines if m) for i in (2, 3, 4)]
    assert sum(peaks) == pytest.approx(sum(parts), abs=len(lines))
    assert sum(peaks) < most_gb and parts[0] > 300 and parts[1] > 0  # baselines and edits both counted


def test_perf_edit_disk_replays_the_budget_on_the_schedulers_timeline():
    """perf/edit_disk.py prints its figures; on the simulated timeline the budget holds and every build is counted."""
    done = subprocess.run(
        [sys.executable, str(REPO / "perf" / "edit_disk.py"), "--suite", "full", "--gpus", "8x80"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    found = re.search(
        r"EDITS suite=full gpus=8x80 budget_gb=(\d+) peak_gb=(\d+) keep_all_peak_gb=(\d+) builds=(\d+) rebuilds=(\d+) edits=(\d+)",
        done.stdout,
    )
    assert found, done.stdout + done.stderr
    budget, peak, keep_all, builds, rebuilds, edits = map(int, found.groups())
    print(found.group(0))
    suite_items = build_items(load_suite("full"))
    distinct = {
        (i.model.name, i.scenario.spec) for i in suite_items if i.scenario and i.kind != "calibration" and not i.benchmark
    }
    assert peak <= budget < keep_all and builds == edits + rebuilds and edits == len(distinct)
