"""The private pytest API in `pytest_invarlock.compat` still exists as used; the worker count needs none.

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
    """As xdist counts them (its own helper was renamed between 3.6 and 3.8); `-n N` becomes N transports in xdist's
    pytest_cmdline_main, before the plugin asks."""
    from pytest_invarlock.distribution import worker_count

    assert worker_count(pytester.parseconfig(*args)) == workers


PRIVATE = ("from _pytest", "import _pytest", "xdist.workermanage", "xdist.dsession", "xdist.remote", "xdist.looponfail")


def test_the_package_reaches_private_apis_only_through_compat() -> None:
    """Any other module importing `_pytest` or xdist internals would dodge the checks above."""
    from pathlib import Path

    package = Path(compat.__file__).parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if path.name != "compat.py" and any(marker in path.read_text(encoding="utf-8") for marker in PRIVATE)
    ]
    assert offenders == []
