"""The private pytest and pytest-xdist APIs the plugin needs, in one place.

Each has no public equivalent (checked against pytest 8.3-9.x and xdist 3.6-3.8):

- `runtestprotocol`: run an item's setup, call and teardown without reporting it (the scheduler's
  spacer item must tear down what the next item does not share, and stay invisible);
- `parse_tx_spec_config`: how many workers `-n`/`--tx` start (`-n auto`, `2*popen`, ...), as xdist
  counts them.

tests/test_compat.py checks that each still exists with the signature used here, so an upgrade
that moves one fails there, by name, and not in the middle of a campaign.
"""

from __future__ import annotations

import pytest
from _pytest.runner import runtestprotocol

__all__ = ["runtestprotocol", "worker_count"]


def worker_count(config: pytest.Config) -> int:
    """The number of xdist workers this distributed session starts (xdist raises a UsageError without -n/--tx)."""
    from xdist.workermanage import parse_tx_spec_config

    return len(parse_tx_spec_config(config))
