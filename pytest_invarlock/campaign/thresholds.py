"""Every threshold a campaign's certificates use that differs from InvarLock's stock ci profile and tier.

Pure: InvarLock's stock values come in as the plain dicts of its packaged runtime YAML (`stock_runtime`
finds the files without importing invarlock, so the torch-free controller can read them), the campaign's
values from the suite and `campaign.presets`. The run's summary prints these rows; docs/thresholds.md is
the same table with each source argued (a test keeps every row's key in it).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

from pytest_invarlock.campaign.presets import (
    DEFAULT_DRIFT_BAND,
    DRIFT_BAND_LIMIT,
    DRIFT_SIGMAS,
    RMT_QUANTILE,
    SPECTRAL_MARGIN,
    VARIANCE_MIN_EFFECT_FLOOR,
    VARIANCE_QUANTILE,
)
from pytest_invarlock.campaign.suite.definitions import Suite
from pytest_invarlock.campaign.tuned import is_tuned
from pytest_invarlock.edits.catalogue import max_caps_for, parse_spec

PROFILE = "ci"  # the InvarLock profile every evaluate runs under (worker.certifier.PROFILE)
DOCS = "docs/thresholds.md"


@dataclass(frozen=True)
class Deviation:
    """One threshold: its key (docs/thresholds.md), InvarLock's stock value, the campaign's, and the source."""

    key: str
    setting: str
    stock: str
    ours: str
    source: str

    def line(self) -> str:
        return f"{self.setting}: {self.stock} -> {self.ours} ({self.source})"


def stock_runtime() -> tuple[dict[str, Any], dict[str, Any]] | None:
    """InvarLock's packaged (ci profile, tiers) YAML as dicts, read without importing invarlock; None if absent."""
    spec = find_spec("invarlock")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        runtime = Path(location) / "_data" / "runtime"
        profile, tiers = runtime / "profiles" / f"{PROFILE}.yaml", runtime / "tiers.yaml"
        if profile.is_file() and tiers.is_file():
            return yaml.safe_load(profile.read_text(encoding="utf-8")), yaml.safe_load(tiers.read_text(encoding="utf-8"))
    return None


def _band(pair: Iterable[float]) -> str:
    lo, hi = pair
    return f"[{lo:g}, {hi:g}]"


def _per_model(values: Mapping[str, str]) -> str:
    """'x' when every model has x, else 'a: x; b: y'."""
    distinct = set(values.values())
    if len(distinct) == 1:
        return distinct.pop()
    return "; ".join(f"{model}: {value}" for model, value in values.items())


def _get(data: Mapping[str, Any], *path: str) -> Any:
    for key in path:
        data = data.get(key, {}) if isinstance(data, Mapping) else {}
    return data


def deviations(suite: Suite, profile: Mapping[str, Any], tiers: Mapping[str, Any]) -> list[Deviation]:
    """The thresholds of `suite`'s certificates that differ from the stock `ci` profile and each model's tier."""
    models = suite.models
    tier_of = {m.name: m.settings.tier for m in models}
    tier = _per_model(tier_of)
    stock_band = _get(profile, "primary_metric", "drift_band")
    stock_drift = _band((stock_band.get("min", 0.95), stock_band.get("max", 1.05))) if stock_band else "[0.95, 1.05]"
    rows = [
        Deviation(
            "drift_band_calibration",
            "drift band of calibration runs",
            f"{stock_drift} (ci profile)",
            _band(DEFAULT_DRIFT_BAND),
            "reference: the B200 bash harness's band before calibration; the plugin writes its own ci profile",
        ),
        Deviation(
            "drift_band_calibrated",
            "drift band of edits and error injections",
            f"{stock_drift} (ci profile)",
            f"mean +- {DRIFT_SIGMAS:g} sd of the calibration drifts, within {_band(DRIFT_BAND_LIMIT)}",
            "reference formula; the limit is a choice: the band calibration runs are judged by",
        ),
    ]
    limits = {m.name: _get(tiers, m.settings.tier, "metrics", "pm_ratio", "ratio_limit_base") for m in models}
    acceptance = {m.name: _band((m.settings.acceptance_min, m.settings.acceptance_max)) for m in models}
    rows.append(
        Deviation(
            "acceptance_range",
            "primary-metric acceptance range",
            f"no lower bound, ratio <= {_per_model({k: f'{v:g}' for k, v in limits.items()})} (tier {tier})",
            _per_model(acceptance),
            "the suite's `acceptance:` (reference [0.9, 1.2]; tiny [0.95, 1.1], measured: docs/tiny-model.md)",
        )
    )
    stock_windows = f"{_get(profile, 'dataset', 'preview_n')} + {_get(profile, 'dataset', 'final_n')}"
    windows = {
        m.name: "auto (campaign.window_planner)"
        if m.settings.windows == "auto"
        else f"{m.settings.preview_windows} + {m.settings.final_windows}"
        for m in models
    }
    if set(windows.values()) != {stock_windows}:
        rows.append(
            Deviation(
                "windows",
                "preview + final windows",
                f"{stock_windows} (ci profile)",
                _per_model(windows),
                "reference size-class settings, raised to the tier's floors; auto: planned from a pilot (docs/tiny-model.md)",
            )
        )
    stock_replicates = _get(profile, "eval", "bootstrap", "replicates")
    replicates = {m.name: str(m.settings.bootstrap_replicates) for m in models}
    if set(replicates.values()) != {str(stock_replicates)}:
        rows.append(
            Deviation(
                "bootstrap_replicates",
                "bootstrap replicates",
                f"{stock_replicates} (ci profile)",
                _per_model(replicates),
                "reference: 2000, 1000 for models >= 30B",
            )
        )
    tokens = {
        m.name: str(m.settings.min_tokens)
        for m in models
        if m.settings.min_tokens is not None
        and m.settings.min_tokens != _get(tiers, m.settings.tier, "metrics", "pm_ratio", "min_tokens")
    }
    if tokens:
        stock_tokens = {m: str(_get(tiers, tier_of[m], "metrics", "pm_ratio", "min_tokens")) for m in tokens}
        rows.append(
            Deviation(
                "min_tokens",
                "primary-metric token floor",
                _per_model(stock_tokens),
                _per_model(tokens),
                "the suite's `min_tokens:`",
            )
        )
    kappas = {m.name: _get(tiers, m.settings.tier, "spectral_guard", "family_caps") for m in models}
    rows += [
        Deviation(
            "spectral_kappa",
            "spectral kappa per family (edits, error injections)",
            _per_model({k: ", ".join(f"{f} {c:g}" for f, c in v.items()) for k, v in kappas.items()}),
            f"max(observed |z| at the cap budget, stock) + {SPECTRAL_MARGIN:g}",
            "reference formula (GENERATE_PRESET)",
        ),
        Deviation(
            "spectral_max_caps",
            "spectral max_caps (edits, error injections)",
            _per_model({m.name: str(_get(tiers, m.settings.tier, "spectral_guard", "max_caps")) for m in models}),
            _max_caps(suite),
            "reference: per-edit preset copies (15 quant/fp8, 25 svd, 10 other)",
        ),
        Deviation(
            "rmt_epsilon",
            "rmt epsilon per family (edits, error injections)",
            _per_model(
                {m.name: str(_get(tiers, m.settings.tier, "rmt_guard", "epsilon_default") or "per family") for m in models}
            ),
            f"q{100 * RMT_QUANTILE:.0f} of the observed edge-risk growth, never below stock",
            "reference formula (GENERATE_PRESET)",
        ),
        Deviation(
            "variance_min_effect",
            "variance min_effect_lognll (edits, error injections)",
            _per_model({m.name: f"{_get(tiers, m.settings.tier, 'variance_guard', 'min_effect_lognll')}" for m in models}),
            f"q{100 * VARIANCE_QUANTILE:.0f} of the delta-CI half-widths, floor {VARIANCE_MIN_EFFECT_FLOOR:g}",
            "reference formula (GENERATE_PRESET)",
        ),
    ]
    skipped = [m.name for m in models if not m.settings.guard_overhead]
    if skipped:
        rows.append(
            Deviation(
                "guard_overhead",
                "guard overhead check",
                f"measured, overhead <= {_get(profile, 'primary_metric', 'overhead_threshold') or 0.01:g} (ci profile)",
                "skipped" if len(skipped) == len(models) else f"skipped for {', '.join(skipped)}",
                "choice, the suite's `guard_overhead: false`: it evaluates every subject twice (halves a CPU run)",
            )
        )
    return rows


def _max_caps(suite: Suite) -> str:
    """The cap budgets of the suite's per-edit preset copies, by budget: '15: fp8, quant_rtn; 25: lowrank_svd'."""
    kinds: dict[int, set[str]] = {}
    for scenario in suite.scenarios:
        if scenario.kind != "calibration":
            kind = scenario.spec.split(":")[0] if is_tuned(scenario.spec) else parse_spec(scenario.spec).type_name
            kinds.setdefault(max_caps_for(kind), set()).add(kind)
    return "; ".join(f"{caps}: {', '.join(sorted(names))}" for caps, names in sorted(kinds.items())) or "-"
