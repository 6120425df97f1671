"""Nodes of one campaign as real pytest sessions over stand-in suite tests (no models run): items claimed at run time
with and without xdist, a node killed or stopped by Slurm's signals, the merge that names what is missing, and the
options a campaign refuses."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import fake_suite_command

# Every test here starts pytest sessions (through this module's helpers).
pytestmark = pytest.mark.sessions

TESTS = """
import time
def test_calibration(invarlock_item): time.sleep({slow})
def test_edit(invarlock_item): time.sleep({slow})
def test_error(invarlock_item): time.sleep({fast})
def test_benchmark(invarlock_item): time.sleep({fast})
def test_plain(): pass
"""
ITEMS = 46  # the tiny suite's


def start(tmp_path: Path, *args: str, slow: float = 0.2, fast: float = 0.05, batch: bool = False) -> subprocess.Popen[str]:
    """A session over the stand-in tests in tmp_path (all sessions share tmp_path/run), running in the background;
    `batch`: started as a batch script's background job is, with SIGINT ignored."""
    (tmp_path / "test_fake_suite.py").write_text(TESTS.format(slow=slow, fast=fast))
    command, env = fake_suite_command(tmp_path, *args)
    ignore_sigint = (lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if batch else None
    return subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, preexec_fn=ignore_sigint
    )


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


def merge(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest_invarlock", "report", str(tmp_path / "run")], capture_output=True, text=True, timeout=300
    )


def claims(tmp_path: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in (tmp_path / "run" / "campaign" / "claims").glob("*.json")}


def wait_for(check, what: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


@pytest.mark.parametrize("workers", [(), ("-n", "2")], ids=["one-process", "xdist"])
def test_two_nodes_claim_every_item_exactly_once_and_the_merge_is_complete(tmp_path, workers):
    nodes = [start(tmp_path, "--campaign-node", f"{k}/2", *workers) for k in (1, 2)]
    results = [finish(node) for node in nodes]
    for code, output in results:
        assert code == 0, output[-3000:]
    ran = [int(output.split(" ran ")[1].split()[0]) for _, output in results]
    assert sum(ran) == ITEMS + 1  # every suite item once, and the plain test on node 1 only
    if not workers:  # under xdist the workers deselect and the controller does not count them
        assert "1 deselected" in results[1][1]  # node 2 leaves the plain test to node 1
    assert len(claims(tmp_path)) == ITEMS and all(c["finished"] and c["attempt"] == 1 for c in claims(tmp_path).values())
    merged = merge(tmp_path)
    assert merged.returncode == 0, merged.stdout[-3000:]
    assert "node 1/2: finished" in merged.stdout and "node 2/2: finished" in merged.stdout
    assert merged.stdout.rstrip().endswith(f"COMPLETE: every one of the {ITEMS} item(s) has a record")


def test_a_killed_node_leaves_its_item_to_the_other_which_finishes_the_campaign(tmp_path):
    first = start(tmp_path, "--campaign-node", "1/2", slow=0.5, fast=0.1)

    def mid_run() -> bool:
        mine = [c for c in claims(tmp_path).values() if c["node"] == 1] if (tmp_path / "run" / "campaign").is_dir() else []
        return any(c["finished"] for c in mine) and any(not c["finished"] for c in mine)

    wait_for(mid_run, "node 1 to run its second item")
    second = start(tmp_path, "--campaign-node", "2/2", slow=0.5, fast=0.1)
    cut = next(item for item, c in claims(tmp_path).items() if c["node"] == 1 and not c["finished"])
    first.send_signal(signal.SIGKILL)  # no cleanup at all: only the kernel releases its locks
    first.wait(30)
    code, output = finish(second)
    assert code == 0, output[-3000:]
    assert claims(tmp_path)[cut]["node"] == 2 and claims(tmp_path)[cut]["attempt"] == 2
    merged = merge(tmp_path)
    assert merged.returncode == 0 and "node 1/2: died" in merged.stdout, merged.stdout[-3000:]


@pytest.mark.parametrize(
    ("sig", "why", "workers"),
    [
        (signal.SIGUSR1, "stopped before the time limit (SIGUSR1)", ()),
        (signal.SIGUSR1, "stopped before the time limit (SIGUSR1)", ("-n", "2")),
        (signal.SIGTERM, "cancelled (SIGTERM)", ("-n", "2")),
    ],
    ids=["usr1-one-process", "usr1-xdist", "term-xdist"],
)
def test_a_stopped_node_writes_its_partial_verdict_and_the_merge_says_what_is_missing(tmp_path, sig, why, workers):
    """Started as node.sbatch starts pytest (a background job: SIGINT ignored), stopped as Slurm stops it."""
    node = start(tmp_path, "--campaign-node", "1/2", *workers, slow=1.0, fast=0.5, batch=True)
    wait_for(
        lambda: (tmp_path / "run" / "campaign").is_dir() and sum(bool(c["finished"]) for c in claims(tmp_path).values()) >= 2,
        "two items",
    )
    node.send_signal(sig)
    code, output = finish(node)
    assert code == pytest.ExitCode.INTERRUPTED, output[-3000:]
    assert "InvarLock validation (PARTIAL: interrupted)" in output and why in output
    verdict = json.loads((tmp_path / "run" / "reports" / "final_verdict.json").read_text())
    assert verdict["partial"] == "interrupted"
    runs = json.loads((tmp_path / "run" / "campaign" / "nodes" / "node-1.json").read_text())["runs"]
    assert runs[-1]["partial"] == why and runs[-1]["ended"]
    merged = merge(tmp_path)
    assert merged.returncode == 1, merged.stdout[-3000:]
    done = sum(bool(c["finished"]) for c in claims(tmp_path).values())
    last = merged.stdout.rstrip().splitlines()[-1]
    assert (
        last
        == f"INCOMPLETE: {ITEMS - done} of {ITEMS} item(s) have no record; nodes not finished: 1/2 (stopped), 2/2 (never started)"
    )
    assert (
        "node 1/2: stopped on" in merged.stdout and why in merged.stdout and "never claimed: no node reached it" in merged.stdout
    )
    # Every item's role comes from the manifest, so the items without a record are charged to what they measure.
    fields = json.loads((tmp_path / "run" / "reports" / "final_verdict.json").read_text())["campaign"]["item_fields"]
    assert len(fields) == ITEMS and {f["kind"] for f in fields.values()} == {
        "calibration",
        "clean",
        "stress",
        "error",
        "benchmark",
    }
    cut = [item for item, c in claims(tmp_path).items() if not c["finished"]]
    for item in cut:  # items it was running when it stopped: no record counts for them
        assert f"{item}: claimed by node 1/2, which stopped before finishing it" in merged.stdout


def test_a_node_of_another_campaign_is_refused_and_so_are_options_a_campaign_cannot_take(tmp_path):
    code, output = finish(start(tmp_path, "--campaign-node", "1/2", "--no-benchmarks", slow=0, fast=0))
    assert code == 0, output[-3000:]
    code, output = finish(start(tmp_path, "--campaign-node", "2/2", slow=0, fast=0))
    assert code == pytest.ExitCode.USAGE_ERROR and "holds another campaign" in output, output[-3000:]
    assert "option no_benchmarks: the campaign has True, this node False" in output
    assert "items only the campaign has" not in output and "items only this node has: 20" in output
    for args, message in [
        (("-k", "calibration"), "cannot be combined with -k"),
        (("--shard", "1/2"), "cannot be combined with --shard"),
        (("-n", "2", "--dist", "load"), "needs the plugin's GPU scheduler"),
        (("--campaign-node", "3/2"), "write K/N"),
    ]:
        node = ("--campaign-node", "1/2") if "--campaign-node" not in args else ()
        code, output = finish(start(tmp_path, *node, *args, slow=0, fast=0))
        assert code == pytest.ExitCode.USAGE_ERROR and message in output, (args, output[-2000:])


def test_collect_only_joins_nothing(tmp_path):
    code, output = finish(start(tmp_path, "--campaign-node", "2/2", "--co", "-q"))
    assert code == 0 and f"{ITEMS}/{ITEMS + 1} tests collected (1 deselected)" in output, output[-2000:]
    assert not (tmp_path / "run" / "campaign").exists()


def test_a_shard_alone_says_its_verdict_is_partial_and_the_merge_names_the_missing_shard(tmp_path):
    code, output = finish(start(tmp_path, "--shard", "1/2", slow=0, fast=0))
    assert code == 0, output[-3000:]
    assert "InvarLock validation (PARTIAL: campaign shard 1/2: " in output and "not finished on any node yet" in output
    assert "interrupted:" not in output  # nothing was cut short: no resume line
    merged = merge(tmp_path)
    assert merged.returncode == 1 and "shard 2/2: never started" in merged.stdout, merged.stdout[-3000:]
    owners = json.loads((tmp_path / "run" / "campaign" / "manifest.json").read_text())["owners"]
    missing = sorted(item for item, shard in owners.items() if shard == 2)
    assert f"{missing[0]}: in shard 2/2, which never started" in merged.stdout
    assert merged.stdout.rstrip().endswith(
        f"INCOMPLETE: {len(missing)} of {ITEMS} item(s) have no record; nodes not finished: 2/2 (never started)"
    )


def test_a_campaign_whose_options_leave_items_out_is_complete_but_its_verdict_is_not_the_whole_suite(tmp_path):
    """--no-benchmarks leaves the benchmark items out of the work: the merge says the campaign is complete, and its
    verdict is over part of the suite (never VALIDATED), as a --no-benchmarks session's is."""
    code, output = finish(start(tmp_path, "--campaign-node", "1/1", "--no-benchmarks"))
    assert code == 0, output[-3000:]
    manifest = json.loads((tmp_path / "run" / "campaign" / "manifest.json").read_text())
    left_out = manifest["left_out"]
    kinds = {pid: fields["kind"] for pid, fields in manifest["item_fields"].items()}
    assert left_out and {kinds[pid] for pid in left_out} == {"benchmark"} and not set(left_out) & set(manifest["definitions"])
    work = ITEMS - len(left_out)
    merged = merge(tmp_path)
    assert merged.returncode == 0, merged.stdout[-3000:]
    assert merged.stdout.rstrip().endswith(f"COMPLETE: every one of the {work} item(s) has a record")
    verdict = json.loads((tmp_path / "run" / "reports" / "final_verdict.json").read_text())
    assert verdict["phase0"]["scope"]["suite_items"] == ITEMS and verdict["phase0"]["scope"]["measured"] == work
    assert verdict["phase0"]["status"] != "PHASE0_VALIDATED"
