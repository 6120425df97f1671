"""A real campaign meets a broken model and a spent edit budget (tiny suite, real InvarLock, real xdist).

- Two tiny models, one whose weights are damaged: every item of the broken model ends within seconds of
  the first failure, each naming the failed item and its cause, and the healthy model's items run on.
- After the tiny suite the store holds edited weights only within the budget; a session whose edit build
  fails (a time limit too short for it) errors that item, and `--lf` rebuilds the edit from its recipe,
  checked against its seal, and reaches the campaign's verdict again.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import yaml

from helpers import OFFLINE_ENV, REPO, forget, phase0, record, run_suite, suite_command

BROKEN = "broken-kjv"
HEALTHY_WORK = "tiny-kjv-quant_rtn_8bit_clean-run1"  # its certificate is forgotten under -n 2: evaluated for real meanwhile


def truncate(weights: Path) -> None:
    os.truncate(weights, weights.stat().st_size // 2)


def overwrite_header(weights: Path) -> None:
    with weights.open("r+b") as handle:
        handle.write(struct.pack("<Q", 7) + b"{garbage")


def drop_config(weights: Path) -> None:
    (weights.parent / "config.json").write_text('{"model_type": "llama", "hidden_size": ')


def two_model_suite(tmp_path: Path, damage) -> Path:
    """The tiny suite with a second model: a copy of the tiny model with damaged files."""
    from pytest_invarlock.assets.tiny_model import build_tiny_assets

    broken = tmp_path / "weights-b"  # a neutral name: InvarLock guesses model families from paths
    shutil.copytree(build_tiny_assets().model_dir, broken)
    damage(broken / "model.safetensors")
    suite = yaml.safe_load((REPO / "suites" / "tiny.yaml").read_text())
    suite["models"] = [
        "tiny-kjv",
        {"name": BROKEN, "source": str(broken), "size_class": "tiny", "dtype": "float32", "params_b": 0.003},
    ]
    path = tmp_path / "two.yaml"
    path.write_text(yaml.safe_dump(suite))
    return path


@pytest.mark.parametrize(
    ("damage", "cause", "xdist"),
    [
        (
            truncate,
            r"model.safetensors: the header describes \d+ bytes of tensor data but the file holds \d+ \(truncated\)",
            ["-n", "2"],
        ),
        (overwrite_header, "does not parse as JSON", []),
        (drop_config, "config.json cannot be read as JSON", []),
    ],
    ids=["truncated-xdist", "garbage-header-single", "bad-config-single"],
)
def test_a_broken_model_fails_all_its_items_at_once_and_the_campaign_goes_on(
    warm_campaign, tmp_path: Path, damage, cause: str, xdist: list[str]
) -> None:
    import re

    run_dir = warm_campaign.restore()
    if xdist:  # on two workers, the healthy model's work is done for real while the broken model fails
        forget(run_dir, HEALTHY_WORK)
    run = run_suite(run_dir, *xdist, suite=str(two_model_suite(tmp_path, damage)))
    assert run.returncode == 1, run.output[-3000:]
    records = [json.loads(p.read_text()) for p in (run_dir / "records").glob("*.json")]
    broken = [r for r in records if r["model"] == BROKEN]
    healthy = [r for r in records if r["model"] == "tiny-kjv"]
    assert len(broken) == 46 and all(r["outcome"] == "error" for r in broken), [r["outcome"] for r in broken]
    (first,) = [r for r in broken if r.get("failed_here")]
    assert re.search(cause, first["error"]), first["error"]
    for other in broken:
        if other is not first:  # each names the failed item and its cause
            assert f"baseline of {BROKEN} failed in item {first['param_id']}: " in other["error"], other["error"]
            assert re.search(cause, other["error"]), other["error"]
    spread = max(r["ended"] for r in broken) - first["ended"]
    print(
        f"{damage.__name__} {' '.join(xdist) or 'single process'}: 46 items of {BROKEN} ended {spread:.2f} s after the first failure"
    )
    assert spread < 5
    assert all(r["outcome"] == "passed" for r in healthy) and len(healthy) == 46
    assert record(run_dir, HEALTHY_WORK)["outcome"] == "passed"  # with -n 2: evaluated for real meanwhile
    assert f"{BROKEN}" in run.output and "PHASE0" in run.output  # the verdict is still printed


def lf_command(run_dir: Path, *args: str) -> list[str]:
    """The suite command with pytest's cache (for --lf) in the run directory."""
    command = [a for a in suite_command(run_dir, *args, "-o", f"cache_dir={run_dir}/.cache") if a != "no:cacheprovider"]
    command.remove("-p")
    return command


def test_edits_stay_within_the_budget_and_lf_rebuilds_what_it_needs(warm_campaign, reference: dict) -> None:
    run_dir = warm_campaign.restore()
    needs = [json.loads(p.read_text()) for p in (run_dir / "state" / "edits").glob("*.json")]
    assert needs, "the tiny suite wrote its edit budget"
    on_disk = sum(p.stat().st_size for p in (run_dir / "store" / "edits").glob("e-*/*.safetensors"))
    budget = max(n["budget_bytes"] for n in needs)
    stubs = list((run_dir / "store" / "edits").glob("e-*/evicted.json"))
    print(
        f"after the tiny suite: {on_disk / 2**20:.1f} MiB of edited weights on disk, budget {budget / 2**20:.1f} MiB, {len(stubs)} evicted"
    )
    assert on_disk <= budget and stubs

    forget(run_dir, HEALTHY_WORK)
    edit = next(
        p.parent for p in stubs if json.loads((p.parent / "artifact.json").read_text())["scenario"] == "quant_rtn_8bit_clean"
    )
    env = {**os.environ, **OFFLINE_ENV}
    selection = ["-k", "test_edit and quant_rtn_8bit_clean"]
    first = subprocess.run(
        lf_command(run_dir, *selection, "--invarlock-timeout", "edit=0.05"),
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert first.returncode == 1, first.stdout[-3000:]
    failed = record(run_dir, HEALTHY_WORK)
    assert (
        failed["outcome"] == "error"
        and "edit quant_rtn:8:128:ffn of tiny-kjv" in failed["error"]
        and "timed out after 0.05 s" in failed["error"]
    )
    assert (edit / "evicted.json").is_file()  # nothing half-built replaced the stub

    again = subprocess.run(lf_command(run_dir, "--lf"), cwd=REPO, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stdout[-3000:]
    assert "1 passed" in again.stdout
    rebuilt = record(run_dir, HEALTHY_WORK)
    assert rebuilt["outcome"] == "passed" and rebuilt["rebuilt"] == [f"store/edits/{edit.name}"]
    assert phase0(run_dir) == reference  # the same verdict as the campaign's first run


@pytest.fixture
def reference(warm_campaign) -> dict:
    return phase0(warm_campaign.pristine)
