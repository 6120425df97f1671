"""The HF libraries' network switches: set both ways for a block (environment and already-loaded flags), then restored."""

from __future__ import annotations

import os

import pytest

from pytest_invarlock.worker.hub_access import ALLOW_NETWORK_VARIABLE, OFFLINE_VARIABLES, hub_mode, hub_variables


@pytest.mark.parametrize("online", [False, True])
def test_hub_mode_sets_loaded_flags_both_ways_and_restores_them(monkeypatch: pytest.MonkeyPatch, online: bool) -> None:
    import datasets.config
    import huggingface_hub.constants

    for name in (*OFFLINE_VARIABLES, ALLOW_NETWORK_VARIABLE):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", online)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", online)
    with hub_mode(online=online):
        assert all(os.environ[name] == ("0" if online else "1") for name in OFFLINE_VARIABLES)
        assert os.environ[ALLOW_NETWORK_VARIABLE] == ("1" if online else "0")
        assert huggingface_hub.constants.HF_HUB_OFFLINE is (not online) and datasets.config.HF_HUB_OFFLINE is (not online)
    assert not any(name in os.environ for name in (*OFFLINE_VARIABLES, ALLOW_NETWORK_VARIABLE))
    assert huggingface_hub.constants.HF_HUB_OFFLINE is online and datasets.config.HF_HUB_OFFLINE is online


def test_a_subprocess_gets_the_same_switches() -> None:
    assert hub_variables(online=True) == {**dict.fromkeys(OFFLINE_VARIABLES, "0"), ALLOW_NETWORK_VARIABLE: "1"}
    assert hub_variables(online=False) == {**dict.fromkeys(OFFLINE_VARIABLES, "1"), ALLOW_NETWORK_VARIABLE: "0"}
