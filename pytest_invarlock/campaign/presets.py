"""Calibrated presets: the B200 bash harness's GENERATE_PRESET math, as pure functions.

Pure module: no torch and no invarlock import, so the controller, the unit tests
and hypothesis can use it freely. A preset here is a plain JSON-ready dict in our
own vocabulary (see ``PRESET_KEYS``); ``certifier`` translates it into InvarLock's
preset YAML, so an InvarLock rename never reaches this file.

Derivation, per family and over the calibration (no-op) runs (docs/thresholds.md lists
every value that differs from InvarLock's stock ci profile and tier, with its source):

- drift band: the reference formula, mean +- 3 sd of final/preview (rounded outwards to
  4 decimals; the reference's [0.95, 1.05] with fewer than 2 runs), never reaching beyond
  ``DRIFT_BAND_LIMIT``: a band the formula would widen past it is cut back to it, and the
  run that widened it (farthest from the median) is named in ``drift_band_derivation``;
- spectral kappa: max(per-run |z| at the cap budget, existing kappa) + 0.05;
- rmt epsilon: 0.90 quantile of the observed edge-risk growth, never below the
  existing epsilon;
- variance min_effect_lognll: 0.95 quantile of the delta-CI half-widths, floor
  0.0009 (the existing value, floored the same way, when no run measured a delta CI);
- per-edit copies raise spectral max_caps to the edit type's ``max_caps`` in
  ``edits.catalogue`` (15 quantisation, 25 low-rank, 10 other).

``drift_band_derivation`` (how the band came about, for the run's summary) rides along in
the preset; it is no threshold.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_invarlock.edits.catalogue import max_caps_for

PRESET_KEYS = (
    "drift_band",
    "spectral_kappa",
    "spectral_max_caps",
    "rmt_epsilon",
    "variance_min_effect_lognll",
)
DEFAULT_DRIFT_BAND = (0.95, 1.05)  # the reference's band with fewer than 2 calibration runs
# A calibrated band never reaches beyond the band calibration runs are themselves judged by: wider, it would
# accept an edit that drifts more than a no-op is allowed to (docs/thresholds.md).
DRIFT_BAND_LIMIT = (0.95, 1.05)
DRIFT_SIGMAS = 3.0
DERIVATION_VERSION = 2  # part of a stored preset's key: presets derived by other code are never reused
SPECTRAL_MARGIN = 0.05
RMT_QUANTILE = 0.90
VARIANCE_QUANTILE = 0.95
VARIANCE_MIN_EFFECT_FLOOR = 0.0009


@dataclass(frozen=True)
class CalibrationStats:
    """What one calibration (no-op) evaluation contributes to a preset.

    ``spectral_z_at_budget`` is, per module family, the |z| a family would have to
    tolerate to stay within its share of the spectral cap budget; ``rmt_epsilon``
    is the observed relative growth of the activation edge risk; the delta-CI
    half-width is None when the run measured no delta CI.
    """

    drift: float
    spectral_z_at_budget: dict[str, float] = field(default_factory=dict)
    rmt_epsilon: dict[str, float] = field(default_factory=dict)
    delta_ci_half_width: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibrationStats:
        return cls(**data)


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default), as the B200 bash harness computes it."""
    if not values:
        raise ValueError("quantile() needs at least one value.")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    lower, upper = math.floor(position), math.ceil(position)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (position - lower)


def allocate_cap_budget(counts: Mapping[str, int], budget: int) -> dict[str, int]:
    """Split ``budget`` spectral caps over families in proportion to their module counts.

    Rounding leftovers go to the largest fractional shares (or are taken from the
    smallest), so the allocation always sums to the budget.
    """
    total = sum(counts.values())
    if budget <= 0 or total <= 0:
        return dict.fromkeys(counts, 0)
    raw = {family: budget * count / total for family, count in counts.items()}
    allocation = {family: round(share) for family, share in raw.items()}
    surplus = budget - sum(allocation.values())
    for family in sorted(raw, key=raw.__getitem__, reverse=surplus > 0):
        if surplus == 0:
            break
        if surplus > 0:
            allocation[family] += 1
            surplus -= 1
        elif allocation[family] > 0:
            allocation[family] -= 1
            surplus += 1
    return allocation


def z_at_cap_budget(z_by_family: Mapping[str, Sequence[float]], budget: int) -> dict[str, float]:
    """Per family, the k-th largest |z| where k is the family's share of the cap budget.

    A kappa at or above this value keeps the family within its share of caps; a
    family with a zero share is judged on its largest |z|.
    """
    magnitudes = {family: sorted((abs(z) for z in zs), reverse=True) for family, zs in z_by_family.items() if zs}
    allocation = allocate_cap_budget({family: len(zs) for family, zs in magnitudes.items()}, budget)
    return {family: zs[min(max(allocation[family], 1), len(zs)) - 1] for family, zs in magnitudes.items()}


@dataclass(frozen=True)
class DriftBand:
    """A calibrated drift band and how it came about.

    formula: the reference's mean +- 3 sd, rounded outwards (None with fewer than 2 runs); band: what the
    preset uses (the formula cut back to ``DRIFT_BAND_LIMIT`` where it reaches beyond); outlier: (run, drift)
    of the run farthest from the runs' median, named when the band was cut back (from three runs on).
    """

    band: tuple[float, float]
    formula: tuple[float, float] | None
    runs: int
    mean: float | None = None
    sd: float | None = None
    outlier: tuple[int, float] | None = None

    @property
    def limited(self) -> bool:
        return self.formula is not None and self.formula != self.band

    def summary(self) -> str:
        band = f"[{self.band[0]:.4f}, {self.band[1]:.4f}]"
        if self.formula is None:
            return f"{band}: the reference's band for fewer than 2 calibration runs ({self.runs} run)"
        text = f"{band}: mean {self.mean:.5f} +- {DRIFT_SIGMAS:g} sd (sd {self.sd:.5f}) of {self.runs} calibration runs (the reference formula)"
        if self.limited:
            text += (
                f"; the formula gave [{self.formula[0]:.4f}, {self.formula[1]:.4f}], cut back to the limit "
                f"[{DRIFT_BAND_LIMIT[0]}, {DRIFT_BAND_LIMIT[1]}]"
            )
            if self.outlier is not None:
                text += f"; outlier: calibration run {self.outlier[0]} (drift {self.outlier[1]:.4f})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "limited": self.limited, "summary": self.summary()}


def drift_band_derivation(drifts: Sequence[float], runs: Sequence[int] | None = None) -> DriftBand:
    """The reference formula over the calibration runs' final/preview drifts (``runs`` numbers them, 1.. by
    default), limited to ``DRIFT_BAND_LIMIT``; non-finite drifts are left out."""
    numbered = [(run, d) for run, d in zip(runs or range(1, len(drifts) + 1), drifts, strict=True) if math.isfinite(d)]
    finite = [d for _, d in numbered]
    if len(finite) < 2:
        return DriftBand(DEFAULT_DRIFT_BAND, None, len(finite))
    mean, sd = statistics.mean(finite), statistics.stdev(finite)
    if sd == 0:
        raise ValueError(
            f"All {len(finite)} calibration runs measured the same final/preview drift ({mean}): the runs "
            f"evaluated identical windows, so they are one measurement, not {len(finite)}. Give each calibration "
            "run its own windows."
        )
    # Rounded outwards to 4 decimals, so rounding never narrows the band.
    formula = (
        math.floor((mean - DRIFT_SIGMAS * sd) * 1e4) / 1e4,
        math.ceil((mean + DRIFT_SIGMAS * sd) * 1e4) / 1e4,
    )
    lo, hi = max(formula[0], DRIFT_BAND_LIMIT[0]), min(formula[1], DRIFT_BAND_LIMIT[1])
    band = (lo, hi) if lo < hi else DRIFT_BAND_LIMIT  # runs that all drift beyond the limit: judge by the limit
    outlier = None
    if band != formula and len(finite) > 2:  # of two runs neither is the odd one out
        median = statistics.median(finite)
        outlier = max(numbered, key=lambda pair: (abs(pair[1] - median), -pair[0]))
    return DriftBand(band, formula, len(finite), mean, sd, outlier)


def drift_band(drifts: Sequence[float]) -> tuple[float, float]:
    """The preset's drift band: the reference formula limited to ``DRIFT_BAND_LIMIT`` (see ``drift_band_derivation``)."""
    return drift_band_derivation(drifts).band


def derive_preset(stats: Sequence[CalibrationStats], base: Mapping[str, Any]) -> dict[str, Any]:
    """Calibrate ``base`` (the tier's existing thresholds, same keys) from no-op runs.

    Families the runs never observed keep their base values, which is what
    InvarLock would apply for them anyway.
    """
    if not stats:
        raise ValueError(
            "derive_preset() got no calibration runs. Run at least one calibration (no-op) "
            "evaluation of the baseline and pass its CalibrationStats."
        )
    missing = [key for key in PRESET_KEYS if key not in base]
    if missing:
        raise ValueError(
            f"derive_preset() base preset lacks {missing}. Start from "
            "certifier.tier_preset(tier), which fills every key with the tier's thresholds."
        )
    drift = drift_band_derivation([s.drift for s in stats])
    return {
        "drift_band": list(drift.band),
        "spectral_kappa": _spectral_kappa(stats, base["spectral_kappa"]),
        "spectral_max_caps": int(base["spectral_max_caps"]),
        "rmt_epsilon": _rmt_epsilon(stats, base["rmt_epsilon"]),
        "variance_min_effect_lognll": _variance_min_effect(stats, float(base["variance_min_effect_lognll"])),
        "drift_band_derivation": drift.to_dict(),
    }


def edit_preset(preset: Mapping[str, Any], edit_kind: str) -> dict[str, Any]:
    """A copy of ``preset`` whose spectral cap budget fits the edit kind (never lowered)."""
    suggested = max_caps_for(edit_kind)
    return {**preset, "spectral_max_caps": max(int(preset["spectral_max_caps"]), suggested)}


def _spectral_kappa(stats: Sequence[CalibrationStats], existing: Mapping[str, float]) -> dict[str, float]:
    kappa = {family: float(value) for family, value in existing.items()}
    observed: dict[str, list[float]] = {}
    for run in stats:
        for family, z in run.spectral_z_at_budget.items():
            observed.setdefault(family, []).append(z)
    for family, zs in observed.items():
        kappa[family] = round(max(max(zs), existing.get(family, 0.0)) + SPECTRAL_MARGIN, 3)
    return kappa


def _rmt_epsilon(stats: Sequence[CalibrationStats], existing: Mapping[str, float]) -> dict[str, float]:
    epsilon = {family: float(value) for family, value in existing.items()}
    observed: dict[str, list[float]] = {}
    for run in stats:
        for family, eps in run.rmt_epsilon.items():
            if math.isfinite(eps):
                observed.setdefault(family, []).append(eps)
    for family, samples in observed.items():
        epsilon[family] = max(round(quantile(samples, RMT_QUANTILE), 6), existing.get(family, 0.0))
    return epsilon


def _variance_min_effect(stats: Sequence[CalibrationStats], existing: float) -> float:
    """q95 of the measured delta-CI half-widths, never below the floor 0.0009; without any measured
    half-width the tier's value, still never below the floor (the B200 bash harness applies it either way)."""
    widths = [s.delta_ci_half_width for s in stats if s.delta_ci_half_width is not None and math.isfinite(s.delta_ci_half_width)]
    if not widths:
        return max(existing, VARIANCE_MIN_EFFECT_FLOOR)
    return max(round(quantile(widths, VARIANCE_QUANTILE), 4), VARIANCE_MIN_EFFECT_FLOOR)


def read_preset(path: Path) -> dict[str, Any]:
    """A calibrated preset written by an earlier run (`presets/calibrated_preset_<model>.yaml|json`), checked.

    What the evidence-pack harness's PACK_CALIBRATION_PRESET_DIR/FILE reused: the preset replaces the calibration runs.
    ValueError names the file and what is wrong.
    """
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ValueError(f"cannot read the calibrated preset '{path}': {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"the calibrated preset '{path}' is not a mapping of {', '.join(PRESET_KEYS)}")
    missing = [key for key in PRESET_KEYS if key not in data]
    if missing:
        raise ValueError(
            f"the calibrated preset '{path}' lacks {', '.join(missing)}; use a presets/calibrated_preset_<model>.yaml "
            "(or .json) that a pytest-invarlock run wrote"
        )
    band = data["drift_band"]
    if not (
        isinstance(band, list) and len(band) == 2 and all(isinstance(v, int | float) for v in band) and band[0] < 1 < band[1]
    ):
        raise ValueError(f"the calibrated preset '{path}': drift_band must be [low, high] around 1, got {band!r}")
    return {key: data[key] for key in PRESET_KEYS}


def reused_preset(source: Path, model: str) -> tuple[Path, dict[str, Any]]:
    """The preset reused for `model` and its path: `source` itself (one file for every model) or
    `source/calibrated_preset_<model>.yaml|json` (a run's presets/ directory). ValueError says what is missing."""
    candidates = (
        [source] if source.is_file() else [source / f"calibrated_preset_{model}{suffix}" for suffix in (".yaml", ".json")]
    )
    found = next((path for path in candidates if path.is_file()), None)
    if found is None:
        raise ValueError(
            f"no calibrated preset for model {model}: none of {', '.join(map(str, candidates))} exists. Point --preset-dir "
            "at a run's presets/ directory, or --preset-file at one preset, or calibrate (leave both out)"
        )
    return found, read_preset(found)
