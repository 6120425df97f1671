"""Faults for real on the tiny suite: Ctrl-C, damaged artifacts and records, racing processes, a worker killed
mid-evaluate, a full disk. Each test starts from the session's warmed run directory (`warm_campaign`),
forces real work on a few items (their certificates deleted), injects the fault into real processes, and
checks what the user sees, that nothing damaged is trusted, that no process is left, and that the next
identical command ends with the verdict of the uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import OFFLINE_ENV, REPO, Run, builds, forget, phase0, record, result_dir, run_suite, small_filesystem, suite_command

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

EDIT_ITEMS = "test_edit and (quant_rtn_8bit_clean or prune_10pct_clean)"  # 4 certify items, 2 edits


def leftovers(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "store").glob("*/.*") if ".tmp-" in p.name or ".damaged-" in p.name]


def group_members(pgid: int) -> list[str]:
    """Live processes of a process group, as 'pid command'."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(f"{stat.parent.name} {text[text.index('(') + 1 : text.rindex(')')]}")
    return members


def start_suite(run_dir: Path, *args: str) -> subprocess.Popen:
    """The suite in its own process group and session, as a terminal starts a command."""
    return subprocess.Popen(
        suite_command(run_dir, *args),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, **OFFLINE_ENV},
    )


def wait_for_evaluate(run_dir: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    """Block until an InvarLock evaluate is running in a certificate's build directory; return that directory."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
        for tmp in (run_dir / "store" / "results").glob(".r-*.tmp-*"):
            if (tmp / "evaluate.log").is_file() and (tmp / "evaluate.log").stat().st_size > 0:
                return tmp
        time.sleep(0.1)
    raise AssertionError("no evaluate started")


def finish(proc: subprocess.Popen, timeout: float = 600) -> Run:
    started = time.perf_counter()
    output, _ = proc.communicate(timeout=timeout)
    return Run(proc.returncode, output, time.perf_counter() - started)


def closing_line(output: str) -> str:
    return [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|error)", line)][-1]


@pytest.fixture
def run_dir(warm_campaign) -> Path:
    return warm_campaign.restore()


@pytest.fixture
def reference(warm_campaign) -> dict:
    """The Phase 0 block of the uninterrupted first run."""
    return phase0(warm_campaign.pristine)


# --------------------------------------------------------------------------- Ctrl-C


@pytest.mark.parametrize("xdist", [[], ["-n", "2"]], ids=["single", "xdist"])
def test_ctrl_c_stops_within_seconds_leaves_nothing_and_the_same_command_resumes(
    run_dir: Path, reference: dict, xdist: list[str]
) -> None:
    forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")  # under -n 2 the other worker is idle when Ctrl-C comes
    args = ["-k", EDIT_ITEMS, *xdist]
    proc = start_suite(run_dir, *args)
    wait_for_evaluate(run_dir, proc)
    time.sleep(1.0)
    interrupted = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    if xdist:
        time.sleep(0.5)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # impatient second Ctrl-C
    run = finish(proc, timeout=60)
    stop_s = time.perf_counter() - interrupted
    print(
        f"Ctrl-C ({'-n 2' if xdist else 'single process'}): stopped after {stop_s:.1f} s, exit {run.returncode}\n"
        + "\n".join(run.output.splitlines()[-12:])
    )
    assert stop_s < 30, run.output[-3000:]
    assert run.returncode == pytest.ExitCode.INTERRUPTED, run.output[-3000:]
    time.sleep(0.5)
    assert group_members(proc.pid) == [], "processes left behind"
    assert leftovers(run_dir) == [], "half-written artifacts left in the store"
    assert "InvarLock validation (PARTIAL: interrupted)" in run.output  # the campaign's earlier records at least
    assert json.loads((run_dir / "reports" / "final_verdict.json").read_text())["partial"] == "interrupted"
    assert "interrupted: partial verdict from" in run.output and "Resume with the same command" in run.output

    before = len(builds(run_dir))
    resumed = run_suite(run_dir, *args)
    assert resumed.returncode == 0, resumed.output[-3000:]
    assert "failed" not in closing_line(resumed.output)
    rebuilt = builds(run_dir)[before:]  # the interrupted certificate, and its edit where that was evicted
    results = [b for b in rebuilt if b.startswith("store/results/")]
    assert len(results) == 1 and all(b.startswith(("store/results/", "store/edits/")) for b in rebuilt), rebuilt
    verdict = json.loads((run_dir / "reports" / "final_verdict.json").read_text())
    assert verdict["partial"] is False
    assert verdict["phase0"] == reference


# --------------------------------------------------------------------------- damage


def test_damaged_artifacts_and_records_are_never_trusted_and_the_outcomes_stay(
    run_dir: Path, reference: dict, warm_campaign
) -> None:
    # edits are evicted after the campaign; bring the prune edit back (rebuilt from its recipe) and keep it
    forget(run_dir, "tiny-kjv-prune_10pct_clean-run1")
    kept = run_suite(run_dir, "-k", "test_edit and prune_10pct_clean-run1", "--invarlock-edit-budget", "1")
    assert kept.returncode == 0, kept.output[-3000:]
    edits = sorted((run_dir / "store" / "edits").glob("e-*/model.safetensors"))
    weights = next(w for w in edits if json.loads((w.parent / "artifact.json").read_text())["scenario"] == "prune_10pct_clean")
    os.truncate(weights, weights.stat().st_size // 2)  # cut short
    flipped = result_dir(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1") / "verdict.json"
    text = flipped.read_text()
    assert '"overall_pass": true,' in text
    flipped.write_text(text.replace('"overall_pass": true,', '"overall_pass":false,'))  # same size, new content
    damaged_record = run_dir / "records" / "tiny-kjv-svd_rank96_clean-run1.json"
    damaged_record.write_text(damaged_record.read_text()[:50])
    needing = forget(run_dir, "tiny-kjv-prune_10pct_clean-run2")  # edits are read only when a certificate is made

    before = len(builds(run_dir))
    run = run_suite(run_dir, "-k", EDIT_ITEMS)
    print("\n".join(line for line in run.output.splitlines() if line.startswith("warning:")))
    assert run.returncode == 0, run.output[-3000:]
    assert "4 passed" in closing_line(run.output)
    warnings = [line for line in run.output.splitlines() if line.startswith("warning:")]
    assert any("e-" in w and "model.safetensors has" in w and "not trusted, rebuilding it" in w for w in warnings), warnings
    assert any("verdict.json does not match its sha256" in w for w in warnings), warnings
    assert any("record of tiny-kjv-svd_rank96_clean-run1 not trusted" in w and "does not parse" in w for w in warnings), warnings
    assert len(warnings) == 3, warnings
    built = builds(run_dir)[before:]  # the damaged edit and certificate, the forgotten one, and the evicted edit it needs
    remade = sorted(str(p.relative_to(run_dir)) for p in (flipped.parent, *needing))
    assert sorted(b for b in built if b.startswith("store/results/")) == remade
    assert str(weights.parent.relative_to(run_dir)) in built and all(
        b.startswith(("store/results/", "store/edits/")) for b in built
    )
    assert record(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")["overall_pass"] is True

    # --lf with the damaged record still reports (pytest's own cache; the plugin's record is rebuilt by a rerun)
    command = [a for a in suite_command(run_dir, "--lf", "-o", f"cache_dir={run_dir}/.cache") if a != "no:cacheprovider"]
    command.remove("-p")
    lf = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, **OFFLINE_ENV})
    assert lf.returncode == 0, (lf.stdout + lf.stderr)[-3000:]
    assert "Phase 0 verdict" in lf.stdout
    assert phase0(run_dir) == reference  # the full campaign ran: every record rewritten, nothing damaged left


# --------------------------------------------------------------------------- racing processes


def test_two_racing_processes_build_each_artifact_once_and_agree(run_dir: Path, reference: dict) -> None:
    forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1", "tiny-kjv-prune_10pct_clean-run2")
    for edit in (run_dir / "store" / "edits").glob("e-*"):
        if edit.is_dir() and json.loads((edit / "artifact.json").read_text())["scenario"] == "quant_rtn_8bit_clean":
            shutil.rmtree(edit)
    before = len(builds(run_dir))
    keep = ["--invarlock-edit-budget", "1"]  # no eviction in between: this is about the locks
    first = start_suite(run_dir, "-k", EDIT_ITEMS, *keep)
    second = start_suite(run_dir, "-k", EDIT_ITEMS, "-n", "2", *keep)
    one, two = finish(first), finish(second)
    assert one.returncode == 0, one.output[-3000:]
    assert two.returncode == 0, two.output[-3000:]
    built = builds(run_dir)[before:]
    print(f"racing: {len(built)} artifacts built across both processes: {built}")
    assert len(built) == len(set(built)) == 4, built  # two edits (one rebuilt from its recipe) and two certificates, each once
    block = [o[o.index("Phase 0 verdict") :].splitlines()[:12] for o in (one.output, two.output)]
    assert block[0] == block[1]
    assert phase0(run_dir) == reference


# --------------------------------------------------------------------------- dead workers


def test_a_worker_killed_mid_evaluate_runs_its_item_once_more_and_nothing_else_is_redone(run_dir: Path, reference: dict) -> None:
    forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
    args = ["-k", EDIT_ITEMS, "-n", "2", "-v"]  # -v undoes -q: xdist prints its worker lines at verbosity >= 0
    before = len(builds(run_dir))
    proc = start_suite(run_dir, *args)
    building = wait_for_evaluate(run_dir, proc)
    lock = building.parent / (building.name.split(".tmp-")[0][1:] + ".lock")
    holder = re.search(r"pid (\d+)", lock.read_text())
    assert holder, lock.read_text()
    time.sleep(1.0)
    os.kill(int(holder.group(1)), signal.SIGKILL)  # an xdist worker, in the middle of InvarLock's evaluate
    run = finish(proc)
    print("\n".join(line for line in run.output.splitlines() if "crashed" in line or "worker" in line))
    assert run.returncode == 0, run.output[-3000:]
    again = re.search(r"test_edit\[(.+?)\]: worker gw\d died while running it; it runs once more", run.output)
    assert again, run.output[-3000:]
    victim = again.group(1)
    assert "replacing crashed worker" in run.output and "crashed while running" not in run.output
    assert "4 passed" in closing_line(run.output)
    assert record(run_dir, victim)["outcome"] == "passed"
    assert group_members(proc.pid) == []
    built = [b.split("/")[1] for b in builds(run_dir)[before:]]
    assert built in (["results"], ["edits", "results"])  # only the victim's certificate (and its evicted edit)
    assert phase0(run_dir) == reference


def test_max_worker_restart_zero_stops_as_xdist_documents(run_dir: Path) -> None:
    forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
    proc = start_suite(run_dir, "-k", EDIT_ITEMS, "-n", "2", "-v", "--max-worker-restart", "0")
    building = wait_for_evaluate(run_dir, proc)
    lock = building.parent / (building.name.split(".tmp-")[0][1:] + ".lock")
    os.kill(int(re.search(r"pid (\d+)", lock.read_text()).group(1)), signal.SIGKILL)
    run = finish(proc)
    assert run.returncode != 0
    assert re.search(r"worker gw\d crashed and worker restarting disabled", run.output), run.output[-3000:]
    assert group_members(proc.pid) == []


# --------------------------------------------------------------------------- full disk


def test_a_run_dir_too_small_is_refused_before_work_starts_naming_the_numbers(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "small", "20m") as mount:
        run = run_suite(mount / "run")
        print(run.output.strip().splitlines()[-1])
        assert run.returncode == pytest.ExitCode.USAGE_ERROR, run.output[-3000:]
        assert re.search(
            r"not enough disk space for this run:\n  disk: peak [\d.]+ GB \(baselines [\d.]+ GB, edits in flight "
            r"[\d.]+ GB, results [\d.]+ GB\) on \S+ with [\d.]+ GB free: the peak plus [\d.]+ GB headroom needs",
            run.output,
        ), run.output[-3000:]
        assert not (mount / "run" / "store" / "edits").exists()


def test_a_disk_too_small_for_two_edits_evicts_the_finished_one_and_both_items_pass(warm_campaign, reference: dict) -> None:
    """The run directory on a small tmpfs (at the warmed path), holding the warm store without its edits:
    room for one tiny edit (8 MiB), not two. The second item waits for space, the first edit (no longer
    needed) is evicted to make it, and both pass; without the room, an item waits and then fails naming it."""
    run_dir = warm_campaign.run_dir
    if run_dir.exists():
        shutil.rmtree(run_dir)
    stored = sum(
        -(-p.stat().st_size // 4096) * 4096
        for p in warm_campaign.pristine.rglob("*")  # tmpfs pages
        if p.is_file() and not p.is_symlink() and "/store/edits/" not in str(p)
    )
    room = stored + 12 * 2**20  # one tiny edit (8 MiB) fits, two do not
    with small_filesystem(run_dir, f"{room // 2**20 + 1}m"):
        shutil.copytree(
            warm_campaign.pristine,
            run_dir,
            symlinks=True,
            dirs_exist_ok=True,
            ignore=lambda d, names: [n for n in names if d.endswith("/store/edits")],
        )
        args = ["-k", "test_edit and (quant_rtn_8bit_clean or prune_10pct_clean) and run1", "--invarlock-disk-headroom", "0"]
        forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1", "tiny-kjv-prune_10pct_clean-run1")
        fits = run_suite(run_dir, *args, "--no-disk-preflight")
        assert fits.returncode == 0, fits.output[-3000:]
        assert "2 passed" in closing_line(fits.output)
        assert len(list((run_dir / "store" / "edits").glob("e-*/evicted.json"))) == 1  # the first made room
        assert leftovers(run_dir) == []
        forget(run_dir, "tiny-kjv-quant_rtn_8bit_clean-run1")
        filler = run_dir / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(run_dir).free - 2 * 2**20))  # leave 2 MiB
        started = time.perf_counter()
        waits = run_suite(run_dir, *args, "--no-disk-preflight", "--invarlock-timeout", "disk_wait=3")
        print("\n".join(line for line in waits.output.splitlines() if "pausing" in line)[:2000])
        assert waits.returncode == 1 and time.perf_counter() - started < 120, waits.output[-3000:]
        assert re.search(r"pausing before tiny-kjv-quant_rtn_8bit_clean-run1: [\d.]+ GB free on .* gave up", waits.output)
    warm_campaign.restore()
