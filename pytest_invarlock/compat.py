"""The private pytest and pytest-xdist APIs the plugin needs, in one place.

It has no public equivalent (checked against pytest 8.3-9.x): `runtestprotocol` runs an item's setup,
call and teardown without reporting it (the scheduler's spacer item must tear down what the next item
does not share, and stay invisible). tests/test_compat.py checks that it still exists with the
signature used here, so an upgrade that moves it fails there, by name, not in the middle of a campaign.
(xdist's worker-count helper is not used: it was renamed between 3.6 and 3.8; `distribution.worker_count`
counts the public `--tx` specs itself.)
"""

from __future__ import annotations

from _pytest.runner import runtestprotocol

__all__ = ["runtestprotocol"]
