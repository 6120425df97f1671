"""A campaign's shared state in its run directory: the manifest, one claim per item, one file per node.

Nodes (pytest sessions started with `--campaign-node K/N`) share a run directory on a filesystem every
node sees and claim each item just before running it; `scheduling.claim_policy` holds the rules that
need no file. On disk:

    <run-dir>/campaign/manifest.json          written once, by the first node: suite, options, node count,
                                              the items in the order of work with their definitions
    <run-dir>/campaign/claims/<item>.lock     a POSIX record lock the claiming node holds while the item runs
    <run-dir>/campaign/claims/<item>.json     who claimed it last, when, and when it finished
    <run-dir>/campaign/nodes/node-<K>.lock    held while node K runs: a second session as node K is refused,
                                              and the merge tells a running node from a dead one
    <run-dir>/campaign/nodes/node-<K>.json    node K's sessions (host, pid, arguments, start, end, why partial,
                                              items it cannot hold) and what it works on now

The locks are `store.ArtifactLock`s (see `store` for why POSIX record locks): the kernel drops them when
their holder dies, SIGKILL included, so a dead node's claims are free at once and the others take those
items; on NFS the server drops them when the dead client's lease expires (90 s by default). An item is
done for the campaign once its claim says `finished`, which its node writes after the item's record.
Torch-free and pytest-free.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.scheduling.claim_policy import Claim, Others, WorkItem, manifest_differences
from pytest_invarlock.store import ArtifactLock, read_json_sealed, write_json_atomic, write_json_sealed

CAMPAIGN_DIR = "campaign"
MANIFEST = "manifest.json"
READ_EVERY_S = 2.0  # a node reads the other nodes' files at most this often


class CampaignError(ValueError):
    """This session cannot join the campaign; the message says why and how to fix it."""


def campaign_dir(run_dir: Path) -> Path:
    return Path(run_dir) / CAMPAIGN_DIR


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """The campaign's manifest, or None when the run directory holds no campaign."""
    try:
        return read_json_sealed(campaign_dir(run_dir) / MANIFEST)
    except FileNotFoundError:
        return None


def manifest_items(manifest: Mapping[str, Any]) -> list[WorkItem]:
    return [WorkItem.from_json(row) for row in manifest.get("items") or ()]


def read_node_runs(run_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """node -> its sessions, from every node file (a file that cannot be read counts as no session)."""
    runs: dict[int, list[dict[str, Any]]] = {}
    for path in sorted((campaign_dir(run_dir) / "nodes").glob("node-*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            runs[int(data["node"])] = list(data.get("runs") or [])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return runs


def read_claims(run_dir: Path) -> dict[str, dict[str, Any]]:
    """item -> its last claim, from every claim file."""
    claims: dict[str, dict[str, Any]] = {}
    for path in (campaign_dir(run_dir) / "claims").glob("*.json"):
        try:
            claims[path.stem] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
    return claims


def nodes_alive(run_dir: Path, nodes: int, *, besides: int | None = None) -> set[int]:
    """The nodes whose lock someone holds now (running, or on NFS dead for less than a lease)."""
    alive = set()
    for k in range(1, nodes + 1):
        path = campaign_dir(run_dir) / "nodes" / f"node-{k}.lock"
        if k == besides or not path.exists():
            continue
        lock = ArtifactLock(path)
        if lock.acquire(blocking=False):
            lock.release()
        else:
            alive.add(k)
    return alive


class ClaimBoard:
    """Node K's side of the campaign: join it, claim, finish or release items, publish and read what nodes do."""

    def __init__(self, run_dir: Path, node: int, nodes: int, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.root = campaign_dir(run_dir)
        self.run_dir, self.node, self.nodes, self._clock = Path(run_dir), node, nodes, clock
        self._held: dict[str, ArtifactLock] = {}
        self._node_lock: ArtifactLock | None = None
        self._run: dict[str, Any] = {}
        self._running: dict[str, str] = {}  # item -> model, claimed by this node and not finished
        self._finished: set[str] = set()
        self._models: Counter[str] = Counter()
        self._others = Others()

    @property
    def label(self) -> str:
        return f"node {self.node}/{self.nodes}"

    # ------------------------------------------------------------------ joining

    def join(self, manifest: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
        """Take this node's lock, write the manifest if the campaign is new (else check it is this one), and
        record this session in the node file. Returns the campaign's manifest; CampaignError when it differs."""
        for sub in ("claims", "nodes"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        lock = ArtifactLock(self.root / "nodes" / f"node-{self.node}.lock")
        if not lock.acquire(blocking=False):
            raise CampaignError(
                f"--campaign-node {self.node}/{self.nodes}: another session runs as this node ({lock.holder()}). "
                f"Give this session another node number (1-{self.nodes}), or stop the other one first."
            )
        self._node_lock = lock
        try:
            existing = self._write_or_read_manifest(manifest)
            differences = manifest_differences(existing, manifest)
            if differences:
                raise CampaignError(
                    f"--campaign-node {self.node}/{self.nodes}: {self.run_dir} holds another campaign "
                    f"(started by node {existing.get('created_by')} on {existing.get('host')} at {existing.get('created')}):\n  "
                    + "\n  ".join(differences)
                    + "\nRun every node with the same suite and options, or give this one another --run-dir; to start a "
                    f"new campaign here, remove {self.root} (the store and the records stay)."
                )
        except BaseException:
            self.close()
            raise
        self._run = {**run, "host": socket.gethostname(), "pid": os.getpid(), "started": time.time(), "ended": None}
        self._write_node(append=True)
        return existing

    def _write_or_read_manifest(self, manifest: dict[str, Any]) -> dict[str, Any]:
        with ArtifactLock(self.root / "manifest.lock"):
            try:
                return read_json_sealed(self.root / MANIFEST)
            except FileNotFoundError:
                created = {
                    **manifest,
                    "created_by": self.label,
                    "host": socket.gethostname(),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
                }
                write_json_sealed(self.root / MANIFEST, created)
                return created

    # ------------------------------------------------------------------ claims

    def claim(self, item: str, model: str) -> Claim:
        """MINE (this node holds the item's lock and runs it), TAKEN (another node does) or DONE (finished)."""
        if item in self._held:
            return Claim.MINE
        lock = ArtifactLock(self.root / "claims" / f"{item}.lock")
        if not lock.acquire(blocking=False):
            return Claim.TAKEN
        last = self._read_claim(item)
        if last.get("finished"):
            lock.release()
            return Claim.DONE
        self._held[item] = lock
        self._running[item] = model
        self._models[model] += 1
        write_json_atomic(
            self._claim_path(item),
            {
                "item": item,
                "model": model,
                "node": self.node,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "claimed": time.time(),
                "finished": None,
                "attempt": int(last.get("attempt") or 0) + 1,
                "previous": last.get("node"),
            },
        )
        self.publish()
        return Claim.MINE

    def look(self, item: str) -> Claim:
        """FREE, TAKEN or DONE, keeping nothing (never for an item this node holds: that is MINE)."""
        if item in self._held:
            return Claim.MINE
        lock = ArtifactLock(self.root / "claims" / f"{item}.lock")
        if not lock.acquire(blocking=False):
            return Claim.TAKEN
        try:
            return Claim.DONE if self._read_claim(item).get("finished") else Claim.FREE
        finally:
            lock.release()

    def finish(self, item: str, outcome: str) -> None:
        """The item's record is written: its claim is finished for every node."""
        lock = self._held.pop(item, None)
        if lock is None:
            return
        claim = self._read_claim(item)
        write_json_atomic(self._claim_path(item), {**claim, "finished": time.time(), "outcome": outcome})
        lock.release()
        self._forget(item)
        self._finished.add(item)
        self.publish()

    def release(self, item: str) -> None:
        """Let an item go unfinished (this session stops before it ran): another node may take it."""
        lock = self._held.pop(item, None)
        if lock is not None:
            lock.release()
            self._forget(item)

    @property
    def held(self) -> frozenset[str]:
        return frozenset(self._held)

    def _forget(self, item: str) -> None:
        model = self._running.pop(item, None)
        if model is not None:
            self._models[model] -= 1

    def _claim_path(self, item: str) -> Path:
        return self.root / "claims" / f"{item}.json"

    def _read_claim(self, item: str) -> dict[str, Any]:
        try:
            data = json.loads(self._claim_path(item).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    # ------------------------------------------------------------------ what the nodes work on

    def publish(self) -> None:
        """Write what this node runs now and has finished into its node file (after every claim and finish)."""
        self._write_node()

    def others(self) -> Others:
        """The other nodes' files, read at most every READ_EVERY_S: what they run and finished, their workers per
        model and the GPUs of those working now."""
        now = self._clock()
        if now - self._others.read_at < READ_EVERY_S:
            return self._others
        alive = nodes_alive(self.run_dir, self.nodes, besides=self.node)
        seen = Others(read_at=now)
        for path in (self.root / "nodes").glob("node-*.json"):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                k = int(data["node"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if k == self.node:
                continue
            seen.finished.update(data.get("finished") or ())
            if k in alive:
                seen.running.update(dict.fromkeys(data.get("running") or (), k))
                seen.workers.update({m: int(n) for m, n in (data.get("models") or {}).items()})
                runs = data.get("runs") or [{}]
                if runs[-1].get("gpus"):
                    seen.node_gpus.append([float(gb) for gb in runs[-1]["gpus"]])
        self._others = seen
        return seen

    def leave(self, item: str, reason: str) -> None:
        """Note an item this node cannot run (its GPUs cannot hold it): the merge says so if no node runs it."""
        left = self._run.setdefault("left", {})
        if left.get(item) != reason:
            left[item] = reason
            self.publish()

    # ------------------------------------------------------------------ ending

    def end(self, *, partial: str | None, items_run: int) -> None:
        """Record how this session ended (partial: why it stopped before the campaign's work ran out)."""
        if self._run:
            self._run.update(ended=time.time(), partial=partial, items_run=items_run)
            self._write_node()

    def close(self) -> None:
        """Release every claim this session still holds (unfinished) and the node's lock."""
        for item in list(self._held):
            self.release(item)
        if self._node_lock is not None:
            self._node_lock.release()
            self._node_lock = None

    def _node_path(self) -> Path:
        return self.root / "nodes" / f"node-{self.node}.json"

    def _write_node(self, *, append: bool = False) -> None:
        try:
            data = json.loads(self._node_path().read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        runs: list[dict[str, Any]] = list(data.get("runs") or [])
        if append or not runs:
            runs.append(self._run)
        else:
            runs[-1] = self._run
        finished = sorted(set(data.get("finished") or ()) | self._finished)
        write_json_atomic(
            self._node_path(),
            {
                "node": self.node,
                "nodes": self.nodes,
                "runs": runs,
                "running": sorted(self._running),
                "finished": finished,
                "models": {m: n for m, n in self._models.items() if n > 0},
                "updated": time.time(),
            },
        )
