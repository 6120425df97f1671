"""perf/simulate.py prints its RESULT lines in the agreed format (figures are printed, never asserted here)."""

from __future__ import annotations

import math
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import perf_script
from pytest_invarlock.scheduling.cost import load_seconds
from pytest_invarlock.scheduling.inventory import parse_gpu_spec
from pytest_invarlock.scheduling.policy import Policy, Task

ROOT = Path(__file__).resolve().parents[2]
RESULT = re.compile(
    r"^RESULT strategy=(\w+) suite=(\w+) gpus=(\S+) realistic=([01]) makespan_over_bound=\d+\.\d\d "
    r"skipped=\d+ oversubscribed=\d+ ooms=\d+ loads=\d+ workers=\d+$"
)


def test_realistic_simulation_of_a_small_node_prints_one_result_per_strategy():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--gpus", "80:79,24:23", "--realistic"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT")]
    matches = [RESULT.match(line) for line in lines]
    assert all(matches) and len(lines) == 4, lines
    assert {m.group(1) for m in matches if m} == {"invarlock", "small_first", "xdist_worksteal", "static_per_model"}
    assert {(m.group(2), m.group(3), m.group(4)) for m in matches if m} == {("tiny", "80:79,24:23", "1")}
    ours = next(line for line in lines if "strategy=invarlock" in line)
    assert " skipped=0 oversubscribed=0 ooms=1 " in ours  # the injected OOM, nothing else


CLUSTER = re.compile(
    r"^CLUSTER strategy=(claims|shards) suite=(\w+) nodes=(\d+) gpus=(\S+) realistic=([01]) makespan_h=\d+\.\d\d "
    r"bound_h=\d+\.\d\d makespan_over_bound=(\d+\.\d\d\d) run_twice=(\d+) never_run=(\d+) skipped=\d+ "
    r"oversubscribed=(\d+) loads=\d+ node_items=[\d,]+ node_makespans_h=[\d.,]+$"
)


def test_a_mixed_cluster_prints_a_line_per_strategy_and_claims_run_every_item_once():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--cluster", "2x80+80,24", "--realistic"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode in (0, 1), result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("CLUSTER")]
    matches = [CLUSTER.match(line) for line in lines]
    assert all(matches) and [m.group(1) for m in matches if m] == ["claims", "shards"], lines
    claims = matches[0]
    assert claims is not None and claims.group(3) == "2" and claims.group(4) == "2x80+80,24"
    assert (claims.group(7), claims.group(8), claims.group(9)) == ("0", "0", "0")  # once each, all of them, fitting


def test_a_bad_cluster_spec_says_how_to_write_one():
    result = subprocess.run(
        [sys.executable, str(ROOT / "perf" / "simulate.py"), "--suite", "tiny", "--cluster", "2*"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert result.returncode == 2 and "e.g. 2*8x80+2*8x180" in result.stderr


def test_the_bound_counts_a_load_for_every_worker_a_model_needs():
    """One model of four 300 s items (a 100 s load) and one of four 30 s items (10 s) on four GPUs. A worker runs
    at most T - 100 s of the first model, so it needs 1200 / (T - 100) workers, each loading it: the bound solves
    4T = 1320 + 10 + 100 x 1200 / (T - 100), T = 424.85 s (the best schedule takes 440 s). Counting one load per
    model and the cheapest load for every other GPU gives only 362.5 s."""
    simulate = perf_script("simulate")
    tasks = [Task(f"a{i}", "a", "clean", 10.0, 10.0) for i in range(4)] + [
        Task(f"b{i}", "b", "clean", 1.0, 1.0) for i in range(4)
    ]
    seconds = {t.id: 300.0 if t.model == "a" else 30.0 for t in tasks}
    gpus = parse_gpu_spec("4x80")
    workload = simulate.Workload("hand", "4x80", False, gpus, tasks, seconds, {"a": 100.0, "b": 10.0})
    bound = simulate.cluster_bound(workload, [gpus])
    assert bound == pytest.approx((1730 + math.sqrt(1730**2 - 16 * 13000)) / 8, abs=0.01)
    ours = simulate.simulate(simulate.STRATEGIES["invarlock"](workload), workload)
    assert ours.makespan >= bound


@pytest.mark.parametrize(("suite", "spec"), [("tiny", "80:79,24:23"), ("ci", "2x80"), ("ci", "4x24")])
@pytest.mark.parametrize("realistic", [False, True])
def test_no_schedule_ends_before_the_bound(suite: str, spec: str, realistic: bool):
    """Every strategy that keeps to memory (xdist's worksteal does not) and claims on two node types end at or
    after the bound: a bound above a real schedule would flatter every ratio printed against it."""
    simulate = perf_script("simulate")
    workload = simulate.build_workload(suite, spec, 3, realistic=realistic)
    bound = simulate.lower_bound(workload)
    for name in ("invarlock", "small_first", "static_per_model"):
        assert simulate.simulate(simulate.STRATEGIES[name](workload), workload).makespan >= bound * (1 - 1e-9), name
    lines, _ = simulate.cluster_report(suite, [spec, "2x180"], 3, realistic=realistic, strategy="claims")
    assert float(re.search(r"makespan_over_bound=(\d+\.\d+)", lines[0]).group(1)) >= 1.0, lines


@settings(max_examples=40, deadline=None)
@given(
    items=st.lists(
        st.tuples(st.integers(0, 3), st.floats(5.0, 400.0), st.sampled_from([10.0, 60.0, 120.0])), min_size=1, max_size=24
    ),
    gpus=st.integers(1, 4),
    second_node=st.sampled_from(["", "2x40", "1x180"]),
)
def test_random_workloads_never_beat_the_bound(items: list[tuple[int, float, float]], gpus: int, second_node: str):
    """Random models, item times and sizes on one node or two of different GPUs: the policy's schedule (sharded
    items included) never ends before the bound."""
    simulate = perf_script("simulate")
    tasks = [Task(f"t{i}", f"m{model}", "clean", mem, mem) for i, (model, _, mem) in enumerate(items)]
    seconds = {task.id: length for task, (_, length, _) in zip(tasks, items)}
    loads = {task.model: load_seconds(task.model_size_gb) for task in tasks}
    spec = f"{gpus}x80"
    workload = simulate.Workload("random", spec, False, parse_gpu_spec(spec), tasks, seconds, loads)
    nodes = [spec, second_node] if second_node else [spec]
    node_gpus = [parse_gpu_spec(node) for node in nodes]
    bound = simulate.cluster_bound(workload, node_gpus)
    if len(nodes) == 1:
        ends = [simulate.simulate(simulate.STRATEGIES["invarlock"](workload), workload).makespan]
    else:
        board = simulate.SimBoard(node_gpus)
        ends = [
            o.makespan
            for o in simulate.run_nodes(
                workload,
                node_gpus,
                lambda clock, k: Policy(tasks, node_gpus[k], clock=clock, queue_depth=1, campaign=board.node(k)),
                board=board,
            )
        ]
    assert max(ends) >= bound * (1 - 1e-9)
