"""A campaign's claims on disk: the manifest written once and checked, one node per number, claims as POSIX record
locks that a killed node's kernel releases, and what the nodes publish for each other."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pytest_invarlock.claims import CampaignError, ClaimBoard, nodes_alive, read_claims, read_manifest, read_node_runs
from pytest_invarlock.scheduling.claim_policy import Claim

MANIFEST = {
    "mode": "claims",
    "suite": "tiny",
    "nodes": 2,
    "options": {"device": "cpu"},
    "definitions": {"a": "k1", "b": "k2"},
    "items": [{"id": "a", "model": "m", "kind": "calibration"}, {"id": "b", "model": "m", "kind": "clean", "deps": ["a"]}],
}


def board(run_dir: Path, node: int, manifest: dict | None = None, **run) -> ClaimBoard:
    made = ClaimBoard(run_dir, node, 2)
    made.join(manifest or MANIFEST, {"args": [f"--campaign-node {node}/2"], **run})
    return made


def test_the_first_node_writes_the_manifest_and_a_different_campaign_is_refused(tmp_path):
    first = board(tmp_path, 1)
    assert read_manifest(tmp_path)["created_by"] == "node 1/2"
    second = board(tmp_path, 2)  # the same campaign joins
    third = ClaimBoard(tmp_path, 2, 2)
    other = {**MANIFEST, "options": {"device": "cuda"}, "definitions": {"a": "k1", "b": "changed"}}
    with pytest.raises(CampaignError, match="another session runs as this node"):
        third.join(MANIFEST, {})
    second.close()
    with pytest.raises(CampaignError) as refused:
        ClaimBoard(tmp_path, 2, 2).join(other, {})
    message = str(refused.value)
    assert "option device: the campaign has 'cpu', this node 'cuda'" in message and "items defined differently: 1 (b)" in message
    assert f"remove {tmp_path / 'campaign'}" in message
    first.close()


def test_an_item_is_claimed_once_and_finished_for_every_node(tmp_path):
    one, two = board(tmp_path, 1), board(tmp_path, 2)
    assert one.claim("a", "m") == Claim.MINE and one.claim("a", "m") == Claim.MINE
    assert two.claim("a", "m") == Claim.TAKEN and two.look("a") == Claim.TAKEN
    one.finish("a", "passed")
    assert two.claim("a", "m") == Claim.DONE and two.look("a") == Claim.DONE
    assert one.claim("b", "m") == Claim.MINE
    one.release("b")  # let go unfinished: the other node takes it, a second attempt
    assert two.look("b") == Claim.FREE and two.claim("b", "m") == Claim.MINE
    claims = read_claims(tmp_path)
    assert claims["a"]["finished"] and claims["a"]["node"] == 1 and claims["a"]["outcome"] == "passed"
    assert (claims["b"]["node"], claims["b"]["attempt"], claims["b"]["previous"]) == (2, 2, 1)
    one.close(), two.close()


def test_a_killed_node_frees_its_claims_and_its_node(tmp_path):
    """SIGKILL: no cleanup runs, the kernel drops the locks; the other node takes the item, the merge sees it died."""
    code = textwrap.dedent(
        f"""
        import sys, time
        from pytest_invarlock.claims import ClaimBoard
        board = ClaimBoard({str(tmp_path)!r}, 1, 2)
        board.join({MANIFEST!r}, {{"args": []}})
        board.claim("a", "m")
        print("claimed", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "claimed"
        two = board(tmp_path, 2)
        assert two.claim("a", "m") == Claim.TAKEN and nodes_alive(tmp_path, 2) == {1, 2}
        child.send_signal(signal.SIGKILL)
        child.wait(30)
        assert two.claim("a", "m") == Claim.MINE and nodes_alive(tmp_path, 2, besides=2) == set()
        assert read_node_runs(tmp_path)[1][-1]["ended"] is None  # died without a word
    finally:
        child.kill()


def test_nodes_publish_what_they_run_and_finished_and_how_they_ended(tmp_path):
    one = board(tmp_path, 1, gpus=[80.0, 80.0])
    two = board(tmp_path, 2, gpus=[180.0])
    one.claim("a", "m")  # published at once
    seen = two.others()
    assert seen.running == {"a": 1} and seen.workers["m"] == 1 and seen.node_gpus == [[80.0, 80.0]]
    one.finish("a", "passed")
    two._others.read_at = -1e18  # read again now, not after the publish interval
    seen = two.others()
    assert seen.finished == {"a"} and seen.running == {}
    one.leave("b", "needs 900 GB")
    one.end(partial="stopped before the time limit (SIGUSR1)", items_run=1)
    one.close()
    two._others.read_at = -1e18
    assert two.others().running == {}  # a node that is not running publishes nothing running
    last = json.loads((tmp_path / "campaign" / "nodes" / "node-1.json").read_text())["runs"][-1]
    assert last["partial"].startswith("stopped before") and last["left"] == {"b": "needs 900 GB"} and last["ended"]
    two.close()
