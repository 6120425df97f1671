"""The edit catalogue: every edit type, defined once. Spec strings (``quant_rtn:8:128:ffn``,
``nan_injection``, ``noop``) parse into typed ``EditSpec`` values against it.

One ``EditType`` entry per kind holds everything the rest of the plugin needs to know about it:

- the spec grammar (its colon-separated ``Param`` fields, each with a converter and a message);
- its family: ``noop`` (calibration), ``edit`` (clean or stress) or ``error`` (an injection that
  must be detected); the suite loader checks a scenario's kind against it;
- its kernel, named lazily as a ``"module:function"`` string (as lm-eval's registry names its
  classes) and imported only when a worker applies the edit. A kernel is called as
  ``kernel(model, chunk_elems=..., **params)`` and returns the JSON-ready metadata of what it changed;
- its spectral cap budget (``max_caps``), which ``campaign.presets.edit_preset`` raises a
  calibrated preset to for this kind of edit;
- its ``code_version``, part of the cache key of the edited weights: bump it when the kernel's
  output changes, and only that type's cached edits are rebuilt. (A change to a helper in
  ``kernels/common.py`` that alters output means bumping every entry that uses it.)

Adding an edit type is one entry in ``CATALOGUE``, one kernel function under ``kernels/`` and
one test (``tests/edits/test_catalogue.py`` checks every entry's kernel resolves with a matching
signature).

Pure: no torch import, because the pytest controller reads the suite and builds item ids without
ever loading a tensor library (an architecture contract and a test check it). The canonical
printed form is what caches and item ids are keyed on, so ``parse_spec(str(spec)) == spec`` holds
for every valid spec.
"""

from __future__ import annotations

import difflib
import importlib
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

SCOPES = ("ffn", "attn", "all")
FP8_FORMATS = ("e4m3", "e5m2")
FP4_VARIANTS = ("e2m1", "aggressive")
FAMILIES = ("noop", "edit", "error")
DEFAULT_MAX_CAPS = 10  # spectral cap budget of an edit type that names none (and of unknown kinds)

_DIGITS = re.compile(r"[0-9]+")
_KERNELS = "pytest_invarlock.edits.kernels"


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
class Param:
    """One colon-separated parameter: the keyword it fills and how to read it."""

    name: str  # the EditSpec attribute and the kernel's keyword argument
    label: str  # how the spec form and error messages show it
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


@dataclass(frozen=True)
class EditType:
    """One kind of edit: grammar, family, kernel, cap budget and code version (see the module docstring)."""

    name: str
    family: str
    kernel: str  # "module:function", imported only by load_kernel()
    summary: str
    params: tuple[Param, ...] = ()
    example: str = ""  # a valid spec; the bare name when empty
    max_caps: int = DEFAULT_MAX_CAPS
    code_version: int = 1

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise ValueError(f"edit type {self.name!r}: family must be one of {FAMILIES}, got {self.family!r}")
        if self.kernel.count(":") != 1:
            raise ValueError(f"edit type {self.name!r}: kernel must read 'module:function', got {self.kernel!r}")

    @property
    def form(self) -> str:
        """The spec's shape with placeholders, e.g. ``quant_rtn:BITS:GROUP:SCOPE``."""
        return ":".join([self.name, *(p.label for p in self.params)])

    @property
    def example_spec(self) -> str:
        return self.example or self.name

    def load_kernel(self) -> Callable[..., dict[str, Any]]:
        """Import the kernel's module (torch and all) and return the function."""
        module_name, _, function = self.kernel.partition(":")
        kernel: Callable[..., dict[str, Any]] = getattr(importlib.import_module(module_name), function)
        return kernel


_SCOPE = Param("scope", "SCOPE", "must be one of " + "|".join(SCOPES), _one_of(SCOPES))
_QUANT_MAX_CAPS, _LOWRANK_MAX_CAPS = 15, 25


def _error(kind: str, summary: str, code_version: int = 1, module: str = "errors") -> EditType:
    return EditType(kind, "error", f"{_KERNELS}.{module}:{kind}", summary, code_version=code_version)


CATALOGUE: Mapping[str, EditType] = {
    entry.name: entry
    for entry in (
        EditType("noop", "noop", f"{_KERNELS}.common:noop", "no change: calibration certifies the baseline against itself"),
        EditType(
            "quant_rtn",
            "edit",
            f"{_KERNELS}.quant:quant_rtn",
            "symmetric round-to-nearest integer quantisation, one scale per GROUP inputs",
            (
                Param("bits", "BITS", "must be an integer 2..8", _int_in(2, 8)),
                Param("group", "GROUP", "must be an integer >= 1", _int_in(1, math.inf)),
                _SCOPE,
            ),
            "quant_rtn:8:128:ffn",
            max_caps=_QUANT_MAX_CAPS,
            code_version=2,
        ),
        EditType(
            "fp8",
            "edit",
            f"{_KERNELS}.quant:fp8",
            "float8 round trip (e4m3fn or e5m2), one power-of-two scale per matrix",
            (Param("variant", "FORMAT", "must be e4m3 or e5m2", _one_of(FP8_FORMATS)), _SCOPE),
            "fp8:e4m3:ffn",
            max_caps=_QUANT_MAX_CAPS,
            code_version=2,
        ),
        EditType(
            "fp4",
            "edit",
            f"{_KERNELS}.quant:fp4",
            "simulated FP4 E2M1, per 32-input group (e2m1) or per row from the 0.9 |w| quantile (aggressive)",
            (Param("variant", "VARIANT", "must be e2m1 or aggressive", _one_of(FP4_VARIANTS)), _SCOPE),
            "fp4:e2m1:ffn",
            code_version=2,  # 2: ties round to the even code (1 rounded them toward zero)
        ),
        EditType(
            "magnitude_prune",
            "edit",
            f"{_KERNELS}.prune:magnitude_prune",
            "zero the FRACTION smallest-|w| entries of each matrix",
            (Param("fraction", "FRACTION", "must be a number with 0 < FRACTION < 1", _open_unit_fraction), _SCOPE),
            "magnitude_prune:0.1:ffn",
            code_version=2,
        ),
        EditType(
            "lowrank_svd",
            "edit",
            f"{_KERNELS}.lowrank:lowrank_svd",
            "best rank-RANK approximation of each matrix (truncated SVD)",
            (Param("rank", "RANK", "must be an integer >= 1", _int_in(1, math.inf)), _SCOPE),
            "lowrank_svd:256:ffn",
            max_caps=_LOWRANK_MAX_CAPS,
            code_version=2,
        ),
        _error("nan_injection", "one NaN in the first matrix of the first block"),
        _error("inf_injection", "one +inf in the first attention matrix of the first block"),
        _error("extreme_quant", "2-bit RTN (group 128) of every matrix", code_version=2),
        _error("scale_explosion", "the first MLP matrix times 100"),
        _error("zero_layer", "every parameter of the middle block set to zero"),
        _error("shape_mismatch", "vocabulary grown by 8 rows (old-row mean)"),
        _error("missing_tensors", "the last block deleted"),
        _error("rank_collapse", "every attention matrix replaced by a rank-1 matrix of the same norm"),
        _error("norm_collapse", "every attention matrix zeroed"),
        _error("weight_tying_break", "lm_head untied from the embeddings (or tied, if it was untied)"),
        # Informational injections (evidence-pack suites): mild, each aimed at one guard.
        _error("rmt_norm_noise", "norm gains of the last 4 blocks times (1 + 0.05 z), seeded", module="informational"),
        _error("spectral_moderate_scale", "up to 8 attention output projections times 1.5, seeded", module="informational"),
        _error("ve_mlp_scale_skew", "one MLP output projection times 0.9, seeded", module="informational"),
    )
}
KINDS = tuple(CATALOGUE)
ERROR_KINDS = tuple(kind for kind, entry in CATALOGUE.items() if entry.family == "error")


def edit_type(kind: str) -> EditType:
    """The catalogue entry of ``kind``; SpecError (with the closest kind) if there is none."""
    try:
        return CATALOGUE[kind]
    except KeyError:
        raise _unknown_kind(kind, kind) from None


def max_caps_for(kind: str) -> int:
    """The spectral cap budget an edit of ``kind`` gets; DEFAULT_MAX_CAPS for a kind not in the catalogue."""
    entry = CATALOGUE.get(kind.strip().lower())
    return entry.max_caps if entry else DEFAULT_MAX_CAPS


class EditSpec:
    """One scenario's weight change: a catalogue kind and its parameters, by name.

    ``EditSpec("quant_rtn", bits=4, group=32, scope="all")``; parameters read as attributes
    (``spec.bits``) or as the ``arguments`` mapping handed to the kernel. Immutable, hashable,
    equal by value; ``str()`` is the canonical spec string.
    """

    __slots__ = ("params", "type_name")
    type_name: str
    params: tuple[tuple[str, object], ...]  # (name, value) in the catalogue's field order

    def __init__(self, kind: str, **params: object) -> None:
        entry = edit_type(kind)
        names = [p.name for p in entry.params]
        if set(params) != set(names):
            raise TypeError(f"EditSpec({kind!r}) takes parameters {names}, got {sorted(params)}")
        object.__setattr__(self, "type_name", kind)
        object.__setattr__(self, "params", tuple((name, params[name]) for name in names))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"EditSpec is immutable; build a new one instead of setting {name!r}")

    def __getattr__(self, name: str) -> object:
        # Only called when normal lookup fails: parameter names (and, never in practice, an unset slot).
        if name != "params":
            for key, value in self.params:
                if key == name:
                    return value
        raise AttributeError(f"EditSpec has no parameter {name!r}")

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_spec, (self.type_name, self.params)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EditSpec) and (self.type_name, self.params) == (other.type_name, other.params)

    def __hash__(self) -> int:
        return hash((self.type_name, self.params))

    def __repr__(self) -> str:
        args = "".join(f", {name}={value!r}" for name, value in self.params)
        return f"EditSpec({self.type_name!r}{args})"

    def __str__(self) -> str:
        return ":".join([self.type_name, *(_format_value(value) for _, value in self.params)])

    @property
    def edit_type(self) -> EditType:
        return CATALOGUE[self.type_name]

    @property
    def family(self) -> str:
        """The catalogue family: "noop" (calibration), "edit" (clean or stress) or "error" (must be detected)."""
        return self.edit_type.family

    @property
    def arguments(self) -> dict[str, object]:
        """The parameters as keyword arguments for the kernel."""
        return dict(self.params)


def _rebuild_spec(kind: str, params: tuple[tuple[str, object], ...]) -> EditSpec:
    return EditSpec(kind, **dict(params))


def _format_value(value: object) -> str:
    # repr() of a float is the shortest text that reads back to the same float.
    return repr(value) if isinstance(value, float) else str(value)


def parse_spec(text: str) -> EditSpec:
    """Read a spec string; raise SpecError naming the bad field, the accepted form and an example."""
    spec = text.strip()
    kind, *values = spec.split(":")
    entry = CATALOGUE.get(kind)
    if entry is None:
        raise _unknown_kind(spec, kind)
    if not entry.params:
        if values:
            raise SpecError(spec, "arity", ":".join(values), f"{kind} takes no parameters", kind, kind)
        return EditSpec(kind)
    parsed = {}
    # Values are checked by position before the count, so 'quant_rtn:banana:ffn' blames BITS, the
    # field a user has to fix first, and a missing field shows up as the next one being wrong.
    for param, value in zip(entry.params, values, strict=False):
        converted = param.convert(value)
        if converted is None:
            problem = f"{param.label} {param.requirement}"
            raise SpecError(spec, param.label, value, problem, entry.form, entry.example_spec)
        parsed[param.name] = converted
    if len(values) != len(entry.params):
        labels = ":".join(p.label for p in entry.params)
        problem = f"{kind} takes {len(entry.params)} parameters {labels}"
        raise SpecError(spec, "arity", ":".join(values), problem, entry.form, entry.example_spec)
    return EditSpec(kind, **parsed)


def _unknown_kind(spec: str, kind: str) -> SpecError:
    close = difflib.get_close_matches(kind, KINDS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    problem = f"KIND must be one of {', '.join(KINDS)}"
    return SpecError(spec, "KIND", kind, problem, "KIND or KIND:PARAMS", "quant_rtn:8:128:ffn", hint)
