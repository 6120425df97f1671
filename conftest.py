"""This repository's own test conventions (not the plugin's): opt-in `gpu` and `slow` tests, the `campaign` marker.

- `gpu`: needs a CUDA GPU that NVML sees (a --gpus simulation does not count); skipped elsewhere.
- `slow`: minutes of CPU; runs only when selected with `-m slow`.
- `campaign`: imports torch or InvarLock, runs models, lm-eval or a browser; `./dev.sh test --fast` leaves these out.
- `sessions`: starts pytest sessions (pytester, subprocesses) or other processes; `./dev.sh test --fast` leaves
  these out too (tests/conftest.py marks them from what they call, modules whose helpers start them say so).
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped where NVML sees none")
    config.addinivalue_line("markers", "slow: minutes of CPU time; opt in with -m slow")
    config.addinivalue_line(
        "markers", "campaign: imports torch or InvarLock, runs models, lm-eval or a browser (left out of ./dev.sh test --fast)"
    )
    config.addinivalue_line(
        "markers", "sessions: starts pytest sessions or other processes, seconds each (left out of ./dev.sh test --fast)"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    slow_selected = "slow" in (config.getoption("markexpr") or "")
    gpu_items = [i for i in items if i.get_closest_marker("gpu")]
    if gpu_items:
        from pytest_invarlock.scheduling.probe import probe_gpus

        if not probe_gpus():
            for test_item in gpu_items:
                test_item.add_marker(pytest.mark.skip(reason="gpu test: NVML sees no CUDA GPU on this machine"))
    if not slow_selected:
        for test_item in items:
            if test_item.get_closest_marker("slow"):
                test_item.add_marker(pytest.mark.skip(reason="slow test (minutes of CPU): opt in with -m slow"))
