"""The dress rehearsal: the GPU suites' own path (hub models, InvarLock's WikiText-2, a node's plan) on CPU.

`pytest validation/ -n 8 --suite full` on a GPU node downloads hub checkpoints, evaluates them on InvarLock's
WikiText-2 windows and places items by the node's memory. Here the same sessions run against the local hub
(`local_hub`: the catalogue's miniatures and the dataset under their real ids): the full suite's scenarios on
every miniature, `-n 2`, the node simulated with `--gpus 8x80`; first `--online` (everything downloads, revisions
are resolved into state/model_revisions.json), then `--offline` with the hub still up (everything is reused, the
revisions are pinned, and nothing may be downloaded). Settings that would make CPU evaluates slow are replaced
(`REHEARSAL_SETTINGS`; docs/rehearsal.md says how they differ from a node's and why).

`./dev.sh rehearse` runs it; the last line reads
`REHEARSAL suite=full architectures=N items=N passed=N failed=N errors=N downloads=N offline_rerun=ok|failed minutes=M`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pytest_invarlock.assets import local_hub
from pytest_invarlock.assets import miniatures as mini
from pytest_invarlock.campaign.suite import load_suite

REPO = Path(__file__).resolve().parents[2]
SUITE = "full"
# CPU-sized InvarLock settings for every model (a node uses the size classes' 512-2048-token windows and
# 2000 replicates): short windows at InvarLock's own floors (180+180 windows, 1200 replicates, 50,000 tokens)
# and no guard-overhead pass, which would evaluate every subject twice.
REHEARSAL_SETTINGS: dict[str, Any] = {
    "seq_len": 128,
    "stride": 128,
    "preview_windows": 200,
    "final_windows": 200,
    "bootstrap_replicates": 1200,
    "guard_overhead": False,
}
HUB_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE", "HF_ENDPOINT")
_PLACEMENT = re.compile(r"^placement: .*$", re.MULTILINE)


@dataclass(frozen=True)
class Plan:
    """What to rehearse: catalogue models (each served as its miniature) and scenario names."""

    models: tuple[str, ...] = tuple(m.name for m in mini.MINIATURES)
    scenarios: tuple[str, ...] = tuple(s.name for s in load_suite(SUITE).scenarios)
    workers: int = 2
    gpus: str = "8x80"


@dataclass
class Session:
    """One pytest session of the rehearsal: its command's exit status, output, records and hub traffic."""

    name: str
    returncode: int
    seconds: float
    records: dict[str, dict[str, Any]]
    downloads: list[str]
    placement_line: str = ""

    def counts(self) -> dict[str, int]:
        """passed / failed (a verdict that missed its expectation) / errors (no verdict: an exception or a skip)."""
        outcomes = [_outcome(r) for r in self.records.values()]
        return {o: outcomes.count(o) for o in ("passed", "failed", "errors")}


@dataclass
class Result:
    plan: Plan
    online: Session
    offline: Session
    seconds: float
    build_seconds: float
    revisions: dict[str, str] = field(default_factory=dict)  # state/model_revisions.json after the sessions
    served: dict[str, str] = field(default_factory=dict)  # the hub's repos: "models/ID" -> commit
    problems: list[str] = field(default_factory=list)  # why the offline rerun is not ok

    @property
    def offline_ok(self) -> bool:
        return not self.problems

    def line(self) -> str:
        counts = self.online.counts()
        return (
            f"REHEARSAL suite={SUITE} architectures={len(self.plan.models)} items={len(self.online.records)} "
            f"passed={counts['passed']} failed={counts['failed']} errors={counts['errors']} "
            f"downloads={len(self.online.downloads)} offline_rerun={'ok' if self.offline_ok else 'failed'} "
            f"minutes={self.seconds / 60:.1f}"
        )


def _outcome(record: Mapping[str, Any]) -> str:
    if record.get("outcome") == "passed":
        return "passed"
    if record.get("outcome") == "failed" and "met" in record:
        return "failed"
    return "errors"


def write_suite(plan: Plan, path: Path) -> Path:
    """The rehearsal's suite file: the full suite's scenarios on the plan's models, one run each, no benchmarks."""
    suite = {
        "name": SUITE,
        "description": "Dress rehearsal: the full suite's scenarios on the catalogue's miniatures (local hub, CPU).",
        "device": "auto",
        "runs": {"calibration": 1, "clean": 1, "stress": 1, "error": 1},
        "models": list(plan.models),
        "scenarios": list(plan.scenarios),
        "invarlock": REHEARSAL_SETTINGS,
        "benchmarks": {"tasks": []},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(suite, sort_keys=False), encoding="utf-8")
    return path


def session_command(plan: Plan, suite_file: Path, run_dir: Path, *, online: bool) -> list[str]:
    """The session's pytest command. The disk preflight is off: before the download it sizes every edit at the
    real model's declared size (~10 TB for these models), which the miniatures' few MB never need."""
    return [
        sys.executable, "-m", "pytest", str(REPO / "validation"), "--suite", str(suite_file), "--run-dir", str(run_dir),
        "-n", str(plan.workers), "--gpus", plan.gpus, "--online" if online else "--offline", "--gpu-plan",
        "--no-disk-preflight", "-p", "no:cacheprovider", "-q", "-rfEs", "--progress-interval", "60",
    ]  # fmt: skip


def session_environment(hub: local_hub.LocalHub, hf_home: Path, *, online: bool) -> dict[str, str]:
    """The environment of a session: the local hub as HF_ENDPOINT, its own HF cache, online or offline."""
    env = {k: v for k, v in os.environ.items() if k not in HUB_VARIABLES and k != "PYTEST_ADDOPTS"}
    env.update(hub.environment(), HF_HOME=str(hf_home))
    if not online:
        env.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_EVALUATE_OFFLINE="1")
    return env


def run_session(
    name: str, plan: Plan, suite_file: Path, workdir: Path, hub: local_hub.LocalHub, *, online: bool, echo: bool
) -> Session:
    run_dir, log = workdir / "run", workdir / f"{name}.log"
    served = len(hub.downloads())
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        process = subprocess.Popen(
            session_command(plan, suite_file, run_dir, online=online),
            cwd=REPO,
            env=session_environment(hub, workdir / "hf-home", online=online),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        for line in process.stdout:
            out.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
        returncode = process.wait()
    output = log.read_text(encoding="utf-8")
    placement = _PLACEMENT.findall(output)
    return Session(
        name=name,
        returncode=returncode,
        seconds=time.perf_counter() - started,
        records=read_records(run_dir),
        downloads=hub.downloads()[served:],
        placement_line=placement[-1] if placement else "",
    )


def read_records(run_dir: Path) -> dict[str, dict[str, Any]]:
    """param id -> the item's record (records/*.json; the seal is the store's business, not the report's)."""
    records = {}
    for path in sorted((run_dir / "records").glob("*.json")):
        record = json.loads(path.read_text(encoding="utf-8"))
        records[str(record["param_id"])] = record
    return records


def offline_problems(online: Session, offline: Session) -> list[str]:
    """Why the offline rerun did not reproduce the online one from the cache alone; empty when it did."""
    problems = []
    if offline.downloads:
        problems.append(f"{len(offline.downloads)} download(s) offline, first {offline.downloads[0]}")
    if set(offline.records) != set(online.records):
        problems.append(f"items differ: {sorted(set(online.records) ^ set(offline.records))[:5]}")
    for key, record in sorted(offline.records.items()):
        before = online.records.get(key, {})
        if _outcome(record) != _outcome(before) or record.get("ratio") != before.get("ratio"):
            problems.append(
                f"{key}: {_outcome(before)} ratio {before.get('ratio')} online, {_outcome(record)} ratio {record.get('ratio')} offline"
            )
        elif _outcome(record) != "errors" and not any(str(r).startswith("result:") for r in record.get("reused") or []):
            problems.append(f"{key}: recomputed offline instead of reusing its result")
        if not record.get("revision") and record.get("kind") != "benchmark":
            problems.append(f"{key}: ran offline without a pinned revision")
    return problems


def rehearse(plan: Plan, workdir: Path, *, echo: bool = True, cache_dir: Path | None = None) -> Result:
    """Build (or reuse) the miniatures, serve them, run the online and the offline session; a fresh run dir and
    HF cache every time, so the online session downloads and computes everything."""
    started = time.perf_counter()
    for stale in ("run", "hf-home", "hub"):
        shutil.rmtree(workdir / stale, ignore_errors=True)
    built = mini.build_miniatures(plan.models, cache_dir)
    mirrors = local_hub.build_mirrors(built)
    build_seconds = time.perf_counter() - started
    suite_file = write_suite(plan, workdir / "rehearsal-suite.yaml")
    with local_hub.LocalHub(mirrors, workdir / "hub") as hub:
        online = run_session("online", plan, suite_file, workdir, hub, online=True, echo=echo)
        offline = run_session("offline", plan, suite_file, workdir, hub, online=False, echo=echo)
    revisions_file = workdir / "run" / "state" / "model_revisions.json"
    revisions = json.loads(revisions_file.read_text())["revisions"] if revisions_file.is_file() else {}
    result = Result(plan, online, offline, time.perf_counter() - started, build_seconds, revisions, dict(hub.repos))
    result.problems = offline_problems(online, offline)
    for model in plan.models:
        repo = mini.miniature(model).repo_id
        if revisions.get(repo) != hub.repos.get(f"models/{repo}"):
            result.problems.append(f"{repo}: pinned {revisions.get(repo)}, the hub serves {hub.repos.get(f'models/{repo}')}")
    return result


# ---------------------------------------------------------------- report


def report(result: Result) -> str:
    """The rehearsal's report: sessions, plan and placements, every architecture's ratio per scenario."""
    models, scenarios = result.plan.models, result.plan.scenarios
    by_cell = {(r["model"], r["scenario"]): r for r in result.online.records.values()}
    lines = [
        f"# Dress rehearsal: suite {SUITE}, {len(models)} miniatures x {len(scenarios)} scenarios, {result.plan.gpus} simulated",
        "",
        f"build/reuse of miniatures and mirrors: {result.build_seconds:.0f} s",
    ]
    for session in (result.online, result.offline):
        counts = session.counts()
        lines.append(
            f"{session.name}: exit {session.returncode}, {session.seconds / 60:.1f} min, {len(session.records)} items "
            f"({counts['passed']} passed, {counts['failed']} failed, {counts['errors']} errors), "
            f"{len(session.downloads)} download(s); {session.placement_line or 'no plan line'}"
        )
    lines += ["", "revisions pinned: " + ", ".join(f"{repo}@{sha[:12]}" for repo, sha in sorted(result.revisions.items()))]
    placed = {}
    for record in result.online.records.values():
        if record.get("placement") and len(record["placement"]) > 1:
            placed[record["model"]] = record["placement"]
    lines.append(
        "multi-GPU placements (online plan, declared sizes): "
        + (", ".join(f"{m} on GPUs {g}" for m, g in sorted(placed.items())) or "none")
    )
    lines += ["", "InvarLock ratio per scenario (online session; `!` = expectation not met, `E` = error):", ""]
    lines.append("| scenario | " + " | ".join(models) + " |")
    lines.append("|---|" + "---|" * len(models))
    for scenario in scenarios:
        cells = [_cell(by_cell.get((model, scenario))) for model in models]
        lines.append(f"| {scenario} | " + " | ".join(cells) + " |")
    errors = [r for r in result.online.records.values() if _outcome(r) == "errors"]
    if errors:
        lines += ["", "errors:"] + [f"- {r['param_id']}: {r.get('error') or r.get('reason') or r.get('failure')}" for r in errors]
    lines += ["", "offline rerun: " + ("ok (everything reused, pinned, nothing downloaded)" if result.offline_ok else "FAILED")]
    lines += [f"- {problem}" for problem in result.problems[:20]]
    return "\n".join(lines) + "\n"


def _cell(record: Mapping[str, Any] | None) -> str:
    if record is None:
        return "-"
    outcome = _outcome(record)
    if outcome == "errors":
        return "E"
    ratio = record.get("ratio")
    text = f"{ratio:.4g}" if isinstance(ratio, (int, float)) else ("non-finite" if record.get("failure") else "?")
    return text + ("" if outcome == "passed" else " !")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pytest_invarlock.assets.rehearsal", description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=REPO / "validation-runs" / "rehearsal")
    parser.add_argument("--models", default=None, help="comma-separated catalogue names (default: every miniature)")
    parser.add_argument("--quiet", action="store_true", help="do not echo the pytest sessions")
    args = parser.parse_args(argv)
    plan = Plan(models=tuple(args.models.split(","))) if args.models else Plan()
    result = rehearse(plan, args.workdir.resolve(), echo=not args.quiet)
    text = report(result)
    (args.workdir / "rehearsal_report.md").write_text(text, encoding="utf-8")
    print(text)
    print(result.line())
    counts = result.online.counts()
    return 0 if counts["errors"] == 0 and result.offline_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
