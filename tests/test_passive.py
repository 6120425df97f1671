"""A pytest11 plugin loads into every session of its environment: outside a validation session it does nothing.

Each case runs an unrelated project twice in real subprocesses, with the plugin and with `-p no:invarlock`,
and compares what a user sees and gets: outcomes, the header (less pytest's own "plugins:" list and pytest-metadata's, which names them too), xdist's
scheduling, worker count under `-n auto`, each test's environment, and the files left behind.
"""

from __future__ import annotations

import json
import re
import runpy
from pathlib import Path

import pytest

PROJECT = {
    "test_project.py": """
import json, os, pathlib
import pytest

def _dump(name):
    out = pathlib.Path(os.environ["ENV_DUMP"]) / f"{name}-{os.environ.get('PYTEST_XDIST_WORKER', 'main')}.json"
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "ENV_DUMP"))}
    out.write_text(json.dumps(keep, sort_keys=True))

def test_plain():
    _dump("plain")

@pytest.mark.slow
def test_slow():
    _dump("slow")

@pytest.mark.gpu
def test_gpu():
    _dump("gpu")

def test_edit():
    assert True

@pytest.mark.parametrize("run", [1, 2])
def test_calibration(run):
    assert run
""",
    "pyproject.toml": "[tool.pytest.ini_options]\nmarkers = ['slow: slow', 'gpu: gpu']\n",
}
# Lines that differ between any two runs whatever the plugin does: timings, pids, paths of the dump.
VOLATILE = re.compile(r"\d+\.\d+s|in \d+\.\d+|rootdir:|cachedir:|plugins:|^metadata: |^platform |\[gw\d\] .*[Pp]ython")
# xdist interleaves workers at random: compare its lines as a sorted list, without worker and progress tags.
XDIST_TAG = re.compile(r"^\[gw\d+\] \[\s*\d+%\] ")


def _pytester_own(relative: Path) -> bool:
    """Files pytester itself leaves in the project (captured output, its basetemp) and bytecode."""
    top = relative.parts[0]
    return top in ("stdout", "stderr") or top.startswith("runpytest-") or "__pycache__" in relative.parts


def _run(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp: Path, *args: str, plugin: bool
) -> tuple[list[str], dict[str, dict], list[str]]:
    dump = tmp / ("with" if plugin else "without")
    dump.mkdir()
    monkeypatch.setenv("ENV_DUMP", str(dump))
    extra = () if plugin else ("-p", "no:invarlock")
    before = set(pytester.path.rglob("*"))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", *extra, *args, timeout=120)
    created = sorted(
        str(p.relative_to(pytester.path))
        for p in set(pytester.path.rglob("*")) - before
        if not _pytester_own(p.relative_to(pytester.path))
    )
    lines = sorted(XDIST_TAG.sub("", line) for line in result.outlines if not VOLATILE.search(line))
    # Keyed by test, not by test and worker: which xdist worker runs which test varies from run to run.
    envs = {p.stem.rsplit("-", 1)[0]: json.loads(p.read_text()) for p in dump.glob("*.json")}
    return lines, envs, created


@pytest.mark.parametrize(
    "args",
    [
        ("-v", "-rs"),
        ("-v", "-rs", "-n", "2"),
        ("-v", "-n", "auto"),
        ("-q", "-m", "slow"),
        ("-v", "--co"),
    ],
    ids=["plain", "xdist-2", "xdist-auto", "select-slow", "collect-only"],
)
def test_an_unrelated_project_behaves_exactly_as_without_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, args: tuple[str, ...]
) -> None:
    pytester.makefile(".toml", pyproject=PROJECT["pyproject.toml"])
    pytester.makepyfile(test_project=PROJECT["test_project.py"])
    with_lines, with_env, with_files = _run(pytester, monkeypatch, tmp_path, *args, plugin=True)
    without_lines, without_env, without_files = _run(pytester, monkeypatch, tmp_path, *args, plugin=False)
    assert with_lines == without_lines
    assert with_env == without_env
    assert with_files == without_files == []
    joined = "\n".join(with_lines)
    assert "invarlock" not in joined.lower() and "GpuScheduling" not in joined


def test_the_plugin_is_loaded_in_those_sessions(pytester: pytest.Pytester) -> None:
    """The comparison above means something only if the plugin was there: its options are."""
    result = pytester.runpytest_subprocess("--help")
    assert "--suite" in result.stdout.str() and "InvarLock" in result.stdout.str()


def test_the_controller_activates_when_a_worker_collects_suite_tests(pytester: pytest.Pytester) -> None:
    """Rule 4 under xdist: no --suite, no ini, no conftest marker; the suite's tests alone make it a validation session."""
    pytester.makepyfile(test_suite="def test_calibration(invarlock_item):\n    assert invarlock_item.kind == 'calibration'\n")
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--co", "-q", "-n", "2", timeout=120)
    assert result.ret == 0, result.stdout.str()
    assert "test_calibration[tiny-kjv-calibration-run1]" in result.stdout.str() or "5 tests collected" in result.stdout.str()


def test_the_validation_directory_declares_itself() -> None:
    """`pytest validation/` without --suite is a validation session through the directory's conftest."""
    declared = runpy.run_path(str(Path(__file__).resolve().parents[1] / "validation" / "conftest.py"))
    assert declared["INVARLOCK_SUITE"] == "tiny"
