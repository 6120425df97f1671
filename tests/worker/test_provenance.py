"""What produced a record (issue 19, point 10): package versions, host, device name and driver, once per process."""

from __future__ import annotations

import socket
from importlib import metadata

from pytest_invarlock.worker import provenance


def test_the_environment_names_versions_host_and_device() -> None:
    env = provenance.environment("cpu")
    assert env["versions"] == {name: metadata.version(name) for name in provenance.PACKAGES}
    assert env["versions"]["invarlock"].startswith("0.12")
    assert env["host"] == socket.gethostname() and env["device"] == "cpu"
    assert env["device_name"] and env["driver"] is None  # a CPU run: the CPU's model, no GPU driver


def test_it_is_gathered_once_per_process() -> None:
    assert provenance.environment("cpu") is provenance.environment("cpu")
