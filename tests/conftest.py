"""Puts this directory on sys.path (pytest's prepend import mode), so every test module imports `helpers`."""

from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import Run, restore_run_dir, run_suite

# What pytest-xdist tells the code of its workers; the sessions our tests start are not those workers' code.
XDIST_WORKER_VARIABLES = ("PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID")


def pytest_configure(config: pytest.Config) -> None:
    # Our own warnings are errors in our tests (a test that expects one says so with pytest.warns).
    config.addinivalue_line("filterwarnings", "error::pytest_invarlock.campaign.window_planner.UnderpoweredWindows")
    # Under `./dev.sh test` (-n 2) this process is an xdist worker: a validation session a test starts must see
    # what a user's terminal gives it, not that it runs inside one.
    for variable in XDIST_WORKER_VARIABLES:
        os.environ.pop(variable, None)


# What a test calls to start a pytest session (helpers.py, pytester) or another process (the stdlib).
STARTERS = ("run_pytest(", "run_suite(", "start_suite(", "fake_suite_", "pytester.", "subprocess.", "Popen(")


def source_of(item: pytest.Item) -> str:
    function = getattr(item, "function", None)
    try:
        return inspect.getsource(function) if function is not None else ""
    except (OSError, TypeError):
        return ""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests that use the warmed tiny campaign run models: they are `campaign` tests. Tests that start processes
    are `sessions` tests (./dev.sh test --fast leaves both out)."""
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        if "warm_campaign" in fixtures:
            item.add_marker(pytest.mark.campaign)
        source = source_of(item)
        if "pytester" in fixtures or any(starter in source for starter in STARTERS):
            item.add_marker(pytest.mark.sessions)


@dataclass(frozen=True)
class WarmCampaign:
    """One uninterrupted tiny-suite run, made once per test session and shared by e2e and fault tests.

    `run_dir` is where tests work (always the same absolute path: InvarLock's baseline report pins the
    baseline's path); `pristine` a copy of it right after the first run; `restore()` puts that copy back.
    """

    root: Path
    run_dir: Path
    pristine: Path
    first: Run

    def restore(self) -> Path:
        return restore_run_dir(self.pristine, self.run_dir)


@pytest.fixture(scope="session")
def warm_campaign(tmp_path_factory: pytest.TempPathFactory) -> WarmCampaign:
    """The tiny suite run once from scratch on two xdist workers (4.4 minutes on 2 cores, against 7.2 in one
    process), then kept as a pristine copy.

    Developers iterating on tests can set INVARLOCK_WARM_RUN_DIR to a finished tiny-suite run directory:
    it is used in place (tests restore it from a copy) instead of warming a new one.
    """
    root = tmp_path_factory.mktemp("campaign")
    existing = os.environ.get("INVARLOCK_WARM_RUN_DIR")
    if existing:
        pristine = restore_run_dir(Path(existing), root / "pristine")
        summary = (Path(existing) / "reports" / "final_verdict.txt").read_text()
        return WarmCampaign(root, Path(existing), pristine, Run(0, summary + "\n46 passed", 0.0))
    run_dir = root / "run"
    first = run_suite(run_dir, "-n", "2", "--junitxml", str(root / "first.xml"))
    print(f"tiny suite, first run from scratch (-n 2): {first.seconds:.0f} s")
    pristine = root / "pristine"
    restore_run_dir(run_dir, pristine)
    return WarmCampaign(root, run_dir, pristine, first)
