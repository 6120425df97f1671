"""Shards of one campaign: the pure split and --shard K/N at collection (the same partition on every node)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.scheduling.cost import item_cost
from pytest_invarlock.scheduling.shards import parse_shard, shard_loads, split_items

ROOT = Path(__file__).resolve().parents[2]
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_EVALUATE_OFFLINE": "1"}


@pytest.mark.parametrize(("spec", "parsed"), [("1/1", (1, 1)), ("2/4", (2, 4)), (" 3 / 3 ", (3, 3))])
def test_shard_specs(spec, parsed):
    assert parse_shard(spec) == parsed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("0/3", "K must be between 1 and N"),
        ("4/3", "K must be between 1 and N"),
        ("1/0", "K must be between 1 and N"),
        ("2", "write K/N"),
        ("a/b", "write K/N"),
        ("", "write K/N"),
    ],
)
def test_bad_shard_specs_say_how_to_write_one(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_shard(spec)


@pytest.mark.parametrize(
    ("suite", "n", "gpu_gb"), [("full", 2, 80), ("full", 3, 80), ("b200", 2, 180), ("b200", 4, 180), ("tiny", 3, 80)]
)
def test_every_item_in_exactly_one_shard_and_the_split_is_balanced(suite, n, gpu_gb):
    items = build_items(load_suite(suite))
    assignment = split_items(items, n, gpu_gb)
    assert set(assignment) == {i.param_id for i in items} and set(assignment.values()) <= set(range(n))
    assert split_items(items, n, gpu_gb) == assignment  # deterministic
    loads = shard_loads(items, assignment, n, gpu_gb)
    assert sum(loads) == pytest.approx(sum(item_cost(i, gpu_gb) for i in items))
    assert max(loads) <= 1.05 * sum(loads) / n


def test_models_stay_whole_where_balance_allows_and_calibrations_lead_a_cut_model():
    items = build_items(load_suite("b200"))
    assignment = split_items(items, 2, 180)
    shards = defaultdict(set)
    for item in items:
        shards[item.model.name].add(assignment[item.param_id])
    assert all(len(s) == 1 for s in shards.values()), shards  # 8 models on 2 nodes: each loaded on one node
    full = build_items(load_suite("full"))
    cut = split_items(full, 2, 80)
    big = [i for i in full if i.model.name == "qwen1.5-72b"]
    calibration_shards = {cut[i.param_id] for i in big if i.kind == "calibration"}
    assert len(calibration_shards) == 1  # a model cut in two keeps its calibration runs together


def test_the_split_does_not_depend_on_the_process(tmp_path):
    """Another interpreter with another hash seed computes the same split (each node runs its own)."""
    code = (
        "from pytest_invarlock.campaign.items import build_items; from pytest_invarlock.campaign.suite import load_suite;"
        "from pytest_invarlock.scheduling.shards import split_items; import json;"
        "print(json.dumps(split_items(build_items(load_suite('full')), 3, 80), sort_keys=True))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={**os.environ, "PYTHONHASHSEED": seed}
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outputs) == 1


def collected(*args: str, cwd: Path = ROOT) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, **OFFLINE},
    )
    assert result.returncode in (0, 5), result.stdout + result.stderr
    return [line for line in result.stdout.splitlines() if "::" in line]


@pytest.mark.sessions  # collects in pytest sessions
def test_collect_only_over_k_lists_a_partition_of_the_suite(tmp_path):
    run_dir = str(tmp_path / "run")
    whole = collected("validation/", "--suite", "tiny", "--run-dir", run_dir)
    parts = [collected("validation/", "--suite", "tiny", "--run-dir", run_dir, "--shard", f"{k}/3") for k in (1, 2, 3)]
    assert sorted(nodeid for part in parts for nodeid in part) == sorted(whole) and all(parts)
    assert parts[1] == collected("validation/", "--suite", "tiny", "--run-dir", run_dir, "--shard", "2/3")  # stable


@pytest.mark.sessions  # collects in pytest sessions
def test_nodes_with_different_gpus_compute_the_same_partition(tmp_path):
    """The split never depends on the node's GPUs: an 8 x 80 GB node and an 8 x 180 GB node agree."""
    run_dir = str(tmp_path / "run")
    for k in (1, 2):
        small = collected("validation/", "--suite", "b200", "--run-dir", run_dir, "--gpus", "8x80", "--shard", f"{k}/2")
        large = collected("validation/", "--suite", "b200", "--run-dir", run_dir, "--gpus", "8x180", "--shard", f"{k}/2")
        assert small == large and small


def test_a_bad_shard_is_a_usage_error(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--co",
            "-q",
            "-p",
            "no:cacheprovider",
            "validation/",
            "--suite",
            "tiny",
            "--run-dir",
            str(tmp_path),
            "--shard",
            "5/4",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
    )
    assert result.returncode == 4 and "--shard '5/4': K must be between 1 and N" in result.stderr
