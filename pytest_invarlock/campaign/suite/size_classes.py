"""Size classes (suites/size_classes.yaml): their names, their InvarLock defaults, and which one a model falls in.

A model given without a catalogue entry is placed by its parameter count (read from its files, or
from a size in its name such as `7b` or `350m`) in the B200 bash harness's size bands.
"""

from __future__ import annotations

import re
from typing import Any

from pytest_invarlock.campaign.suite.files import catalogue

_SIZE_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*([bm])\b")
_MOE_NAME = re.compile(r"mixtral|moe|\d+x\d+b")
_BANDS = ((1, "small"), (10, "7b"), (20, "13b"), (36, "30b"), (60, "40b"))  # (params_b below, class)


def size_classes() -> tuple[str, ...]:
    """The size classes' names, as the catalogue lists them."""
    return tuple(catalogue("size_classes.yaml"))


def class_defaults(size_class: str) -> dict[str, Any]:
    """The size class's settings (window counts, batch sizes, time limits) from the catalogue."""
    defaults: dict[str, Any] = catalogue("size_classes.yaml")[size_class]
    return defaults


def infer_size_class(params_b: float, name: str = "") -> str:
    """The B200 bash harness's size bands, for models given on the command line without a catalogue entry."""
    if _MOE_NAME.search(name.lower()):
        return "moe"
    for limit, size_class in _BANDS:
        if params_b < limit:
            return size_class
    return "70b"


def params_from_name(source: str) -> float | None:
    """The parameter count (billions) a model id spells out, such as `7b` or `350m` (the last one); None if none."""
    found = _SIZE_IN_NAME.findall(source.lower().replace("-", " ").replace("_", " "))
    if not found:
        return None
    number, unit = found[-1]
    return float(number) / (1000 if unit == "m" else 1)
