"""Scenario spec strings (``quant_rtn:8:128:ffn``, ``nan_injection``, ``noop``) parsed into typed values.

Pure: no torch import, because the pytest controller reads the suite and builds item ids
without ever loading a tensor library. The canonical printed form is what caches and
item ids are keyed on, so ``parse_spec(str(spec)) == spec`` holds for every valid spec.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass

ERROR_KINDS = (
    "nan_injection",
    "inf_injection",
    "extreme_quant",
    "scale_explosion",
    "zero_layer",
    "shape_mismatch",
    "missing_tensors",
    "rank_collapse",
    "norm_collapse",
    "weight_tying_break",
)
SCOPES = ("ffn", "attn", "all")
FP8_FORMATS = ("e4m3", "e5m2")
FP4_VARIANTS = ("e2m1", "aggressive")

_DIGITS = re.compile(r"[0-9]+")


class SpecError(ValueError):
    """A spec string that does not follow the grammar; the message says which field and how to fix it."""

    def __init__(  # noqa: PLR0913 - every part of the message is a separate fact
        self, spec: str, field: str, value: str, problem: str, form: str, example: str, hint: str = ""
    ) -> None:
        self.spec, self.field, self.value = spec, field, value
        self._parts = (spec, field, value, problem, form, example, hint)
        super().__init__(f"edit spec {spec!r}: {problem}, got {value!r}.{hint} Form: {form}, e.g. {example}")

    def __reduce__(self) -> tuple[type[SpecError], tuple[str, ...]]:
        # Exceptions pickle as cls(*args); keep the parts so one raised in a worker process survives the trip.
        return type(self), self._parts


@dataclass(frozen=True)
class _Field:
    """One colon-separated parameter: the EditSpec attribute it fills and how to read it."""

    attr: str
    label: str
    requirement: str
    convert: Callable[[str], object | None]  # None when the text is not acceptable


def _int_in(low: int, high: float) -> Callable[[str], int | None]:
    def convert(text: str) -> int | None:
        value = int(text) if _DIGITS.fullmatch(text) else None
        return value if value is not None and low <= value <= high else None

    return convert


def _open_unit_fraction(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) and 0.0 < value < 1.0 else None


def _one_of(choices: tuple[str, ...]) -> Callable[[str], str | None]:
    return lambda text: text if text in choices else None


_SCOPE = _Field("scope", "SCOPE", "must be one of " + "|".join(SCOPES), _one_of(SCOPES))
_PARAMETERISED: dict[str, tuple[tuple[_Field, ...], str]] = {
    "quant_rtn": (
        (
            _Field("bits", "BITS", "must be an integer 2..8", _int_in(2, 8)),
            _Field("group", "GROUP", "must be an integer >= 1", _int_in(1, math.inf)),
            _SCOPE,
        ),
        "quant_rtn:8:128:ffn",
    ),
    "fp8": ((_Field("variant", "FORMAT", "must be e4m3 or e5m2", _one_of(FP8_FORMATS)), _SCOPE), "fp8:e4m3:ffn"),
    "fp4": (
        (_Field("variant", "VARIANT", "must be e2m1 or aggressive", _one_of(FP4_VARIANTS)), _SCOPE),
        "fp4:e2m1:ffn",
    ),
    "magnitude_prune": (
        (_Field("fraction", "FRACTION", "must be a number with 0 < FRACTION < 1", _open_unit_fraction), _SCOPE),
        "magnitude_prune:0.1:ffn",
    ),
    "lowrank_svd": (
        (_Field("rank", "RANK", "must be an integer >= 1", _int_in(1, math.inf)), _SCOPE),
        "lowrank_svd:256:ffn",
    ),
}
_BARE_KINDS = ("noop", *ERROR_KINDS)
KINDS = (*_BARE_KINDS, *_PARAMETERISED)


@dataclass(frozen=True)
class EditSpec:
    """One scenario's weight change. Only the parameters of ``kind`` are set; the rest stay None."""

    kind: str
    bits: int | None = None
    group: int | None = None
    variant: str | None = None
    fraction: float | None = None
    rank: int | None = None
    scope: str | None = None

    @property
    def family(self) -> str:
        """"noop" (calibration), "error" (injection that must be detected) or "edit" (clean or stress)."""
        if self.kind == "noop":
            return "noop"
        return "error" if self.kind in ERROR_KINDS else "edit"

    def __str__(self) -> str:
        fields = _PARAMETERISED.get(self.kind, ((), ""))[0]
        return ":".join([self.kind, *(_format_value(getattr(self, f.attr)) for f in fields)])


def _format_value(value: object) -> str:
    # repr() of a float is the shortest text that reads back to the same float.
    return repr(value) if isinstance(value, float) else str(value)


def _form(kind: str) -> str:
    return ":".join([kind, *(f.label for f in _PARAMETERISED[kind][0])])


def parse_spec(text: str) -> EditSpec:
    """Read a spec string; raise SpecError naming the bad field, the accepted form and an example."""
    spec = text.strip()
    kind, *values = spec.split(":")
    if kind in _BARE_KINDS:
        if values:
            raise SpecError(spec, "arity", ":".join(values), f"{kind} takes no parameters", kind, kind)
        return EditSpec(kind)
    if kind not in _PARAMETERISED:
        raise _unknown_kind(spec, kind)
    fields, example = _PARAMETERISED[kind]
    form = _form(kind)
    parsed = {}
    # Values are checked by position before the count, so 'quant_rtn:banana:ffn' blames BITS, the
    # field a user has to fix first, and a missing field shows up as the next one being wrong.
    for field, value in zip(fields, values, strict=False):
        converted = field.convert(value)
        if converted is None:
            raise SpecError(spec, field.label, value, f"{field.label} {field.requirement}", form, example)
        parsed[field.attr] = converted
    if len(values) != len(fields):
        labels = ":".join(f.label for f in fields)
        problem = f"{kind} takes {len(fields)} parameters {labels}"
        raise SpecError(spec, "arity", ":".join(values), problem, form, example)
    return EditSpec(kind, **parsed)


def _unknown_kind(spec: str, kind: str) -> SpecError:
    close = difflib.get_close_matches(kind, KINDS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    problem = f"KIND must be one of {', '.join(KINDS)}"
    return SpecError(spec, "KIND", kind, problem, "KIND or KIND:PARAMS", "quant_rtn:8:128:ffn", hint)
