"""Calibrated presets: the seed suite's GENERATE_PRESET math, as pure functions.

Pure module: no torch and no invarlock import, so the controller, the unit tests
and hypothesis can use it freely. A preset here is a plain JSON-ready dict in our
own vocabulary (see ``PRESET_KEYS``); ``certifier`` translates it into InvarLock's
preset YAML, so an InvarLock rename never reaches this file.

Derivation, per family and over the calibration (no-op) runs:

- drift band: mean +- 3 sd of final/preview (rounded outwards to 4 decimals), never narrower than
  the stock [0.95, 1.05] (which fewer than 2 runs keep);
- spectral kappa: max(per-run |z| at the cap budget, existing kappa) + 0.05;
- rmt epsilon: 0.90 quantile of the observed edge-risk growth, never below the
  existing epsilon;
- variance min_effect_lognll: 0.95 quantile of the delta-CI half-widths, floor
  0.0009 (the existing value, floored the same way, when no run measured a delta CI);
- per-edit copies raise spectral max_caps to the edit type's ``max_caps`` in
  ``edits.catalogue`` (15 quantisation, 25 low-rank, 10 other).
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
DEFAULT_DRIFT_BAND = (0.95, 1.05)
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
    """Linear-interpolation quantile (numpy's default), as the seed suite computes it."""
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


def drift_band(drifts: Sequence[float]) -> tuple[float, float]:
    """mean +- 3 sd of final/preview over the runs, widened to hold the stock band; the stock band with fewer
    than two runs.

    Calibration widens the band where no-ops drift more than InvarLock's stock band allows (device noise) but
    never narrows it: with windows matched on the baseline's difficulty (``worker.windows``) a no-op drifts by
    ~0.1%, and a band of that width would fail clean edits on their own per-window noise.
    """
    finite = [d for d in drifts if math.isfinite(d)]
    if len(finite) < 2:
        return DEFAULT_DRIFT_BAND
    mean, sd = statistics.mean(finite), statistics.stdev(finite)
    if sd == 0:
        raise ValueError(
            f"All {len(finite)} calibration runs measured the same final/preview drift ({mean}): the runs "
            f"evaluated identical windows, so they are one measurement, not {len(finite)}. Give each calibration "
            "run its own windows."
        )
    # Rounded outwards to 4 decimals, so rounding never narrows the band.
    lo, hi = math.floor((mean - 3 * sd) * 1e4) / 1e4, math.ceil((mean + 3 * sd) * 1e4) / 1e4
    return (min(lo, DEFAULT_DRIFT_BAND[0]), max(hi, DEFAULT_DRIFT_BAND[1]))


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
    return {
        "drift_band": list(drift_band([s.drift for s in stats])),
        "spectral_kappa": _spectral_kappa(stats, base["spectral_kappa"]),
        "spectral_max_caps": int(base["spectral_max_caps"]),
        "rmt_epsilon": _rmt_epsilon(stats, base["rmt_epsilon"]),
        "variance_min_effect_lognll": _variance_min_effect(stats, float(base["variance_min_effect_lognll"])),
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
    half-width the tier's value, still never below the floor (the seed applies it either way)."""
    widths = [s.delta_ci_half_width for s in stats if s.delta_ci_half_width is not None and math.isfinite(s.delta_ci_half_width)]
    if not widths:
        return max(existing, VARIANCE_MIN_EFFECT_FLOOR)
    return max(round(quantile(widths, VARIANCE_QUANTILE), 4), VARIANCE_MIN_EFFECT_FLOOR)


def read_preset(path: Path) -> dict[str, Any]:
    """A calibrated preset written by an earlier run (`presets/calibrated_preset_<model>.yaml|json`), checked.

    What the seeds' PACK_CALIBRATION_PRESET_DIR/FILE reused: the preset replaces the calibration runs.
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
