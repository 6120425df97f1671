"""The private pytest and pytest-xdist APIs in `pytest_invarlock.compat` still exist as used.

When an upgrade moves one, this fails by name, instead of a validation session failing mid-campaign.
"""

from __future__ import annotations

import inspect

import pytest

from pytest_invarlock import compat


def test_runtestprotocol_takes_the_item_the_next_item_and_log() -> None:
    parameters = inspect.signature(compat.runtestprotocol).parameters
    assert next(iter(parameters)) == "item"
    assert {"log", "nextitem"} <= parameters.keys()


@pytest.mark.parametrize(
    ("args", "workers"),
    [(("--tx", "popen"), 1), (("--tx", "2*popen", "--tx", "popen"), 3)],
)
def test_worker_count_counts_xdist_transports(pytester: pytest.Pytester, args: tuple[str, ...], workers: int) -> None:
    """(`-n N` becomes N transports in xdist's pytest_cmdline_main, before the plugin asks.)"""
    assert compat.worker_count(pytester.parseconfig(*args)) == workers


def test_the_package_reaches_private_apis_only_through_compat() -> None:
    """Any other module importing `_pytest` or xdist internals would dodge the checks above."""
    from pathlib import Path

    package = Path(compat.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "compat.py"
        and any(marker in path.read_text(encoding="utf-8") for marker in ("from _pytest", "import _pytest", "xdist.workermanage"))
    ]
    assert offenders == []
