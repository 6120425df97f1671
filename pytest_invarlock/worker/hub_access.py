"""Whether the HF libraries (huggingface_hub, transformers, datasets, evaluate) and InvarLock may use the network.

An offline session must never reach a hub; an online one must let InvarLock's evaluate download its dataset
(InvarLock blocks sockets unless INVARLOCK_ALLOW_NETWORK is set). huggingface_hub, datasets and evaluate read
their offline variables once, at import, and a worker imported them long before, so `hub_mode` sets the loaded
flags as well as the environment, both ways, and restores them afterwards. A subprocess gets `hub_variables`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_EVALUATE_OFFLINE")
ALLOW_NETWORK_VARIABLE = "INVARLOCK_ALLOW_NETWORK"


def hub_variables(*, online: bool) -> dict[str, str]:
    """The environment of a process that may (online) or must not (offline) download from the hub."""
    return {**dict.fromkeys(OFFLINE_VARIABLES, "0" if online else "1"), ALLOW_NETWORK_VARIABLE: "1" if online else "0"}


@contextmanager
def hub_mode(*, online: bool) -> Iterator[None]:
    """Run the block with the hub allowed (online) or forbidden, in the environment and the loaded flags."""
    import datasets.config
    import huggingface_hub.constants

    flags = [
        (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_HUB_OFFLINE"),
        (datasets.config, "HF_DATASETS_OFFLINE"),
    ]
    if "evaluate.config" in sys.modules:
        flags.append((sys.modules["evaluate.config"], "HF_EVALUATE_OFFLINE"))
    variables = hub_variables(online=online)
    saved_flags = [(module, name, getattr(module, name)) for module, name in flags]
    saved_env = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    for module, name, _ in saved_flags:
        setattr(module, name, not online)
    try:
        yield
    finally:
        for module, name, value in saved_flags:
            setattr(module, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
