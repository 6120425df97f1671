"""A model's InvarLock `Settings`: its size class's defaults, then the suite's and the model's `invarlock:` blocks.

Also the checks that a model's settings can run at all: the tier's window and bootstrap floors
(InvarLock's ci profile aborts below them) and a readable `eval_data` file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign import eval_data
from pytest_invarlock.campaign.suite.checks import Where, show, user_path
from pytest_invarlock.campaign.suite.definitions import Model, Settings
from pytest_invarlock.campaign.suite.size_classes import class_defaults

DEFAULT_INVARLOCK = {
    "tier": "balanced",
    "dataset": "wikitext2",
    "acceptance_min": 0.90,
    "acceptance_max": 1.20,
    "guard_overhead": True,
    "min_tokens": None,
    "windows": None,
}
SIZE_SETTING_KEYS = (
    "seq_len",
    "stride",
    "preview_windows",
    "final_windows",
    "eval_batch",
    "bootstrap_replicates",
    "lm_eval_batch",
)
DATASETS = ("local", "wikitext2")
# The hub dataset repository InvarLock 0.12.1's provider of each hub dataset loads (WikiText2Provider.load).
HUB_DATASET_REPOS = {"wikitext2": "Salesforce/wikitext"}
GUARDS = ("invariants", "spectral", "rmt", "variance")  # InvarLock 0.12's guard chain members
SNAPSHOT_MODES = ("auto", "bytes", "chunked")  # INVARLOCK_SNAPSHOT_MODE
# InvarLock 0.12's tiers (runtime/tiers.yaml) and the bootstrap floors its ci profile enforces per tier
# (invarlock.core.runner_pairing.BOOTSTRAP_COVERAGE_REQUIREMENTS; a test checks both against the installed package).
TIERS = ("balanced", "conservative", "aggressive")
TIER_FLOORS = {
    "conservative": {"preview": 220, "final": 220, "replicates": 1500},
    "balanced": {"preview": 180, "final": 180, "replicates": 1200},
    "aggressive": {"preview": 140, "final": 140, "replicates": 800},
}
FLOOR_FIX = "Raise them in the suite's (or the model's) `invarlock:` block, or pick another tier."
_LM_EVAL_BATCH = re.compile(r"^(auto(:[1-9][0-9]{0,5})?|[1-9][0-9]{0,5})$")
_COUNTS = ("seq_len", "stride", "preview_windows", "final_windows", "eval_batch", "bootstrap_replicates", "min_tokens")
_KNOBS = ("guard_order", "snapshot_mode", "eval_data", "eval_text_field")
INVARLOCK_KEYS = (
    *SIZE_SETTING_KEYS,
    *("tier", "dataset", "acceptance", "guard_overhead", "min_tokens", "windows"),
    *_KNOBS,
)


def invarlock_block(where: Where, block: Any, key: str) -> dict[str, Any]:
    """Validate an `invarlock:` block and flatten `acceptance: [min, max]`."""
    block = where.mapping(block, key)
    where.known_keys(block, INVARLOCK_KEYS, key)
    out: dict[str, Any] = {}
    for name, value in block.items():
        if name == "acceptance":
            out["acceptance_min"], out["acceptance_max"] = _acceptance(where, value, f"{key}.acceptance")
        else:
            out[name] = _setting(where, name, value, f"{key}.{name}")
    return out


def _setting(where: Where, name: str, value: Any, key: str) -> Any:
    """One `invarlock:` value other than `acceptance`, checked."""
    if name in _COUNTS:
        return where.integer(value, key, 1)
    if name == "dataset":
        return where.choice(value, key, DATASETS)
    if name == "guard_overhead":
        return where.boolean(value, key)
    if name == "windows":
        if value != "auto":
            raise where.error(
                key,
                f"expected auto, got {show(value)}",
                "Write windows: auto (the window planner picks the counts), or set preview_windows and final_windows explicitly.",
            )
        return "auto"
    if name == "tier":
        return where.choice(value, key, TIERS)
    if name in _KNOBS:
        return _knob(where, name, value, key)
    # lm_eval_batch: lm-eval's --batch_size
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not _LM_EVAL_BATCH.match(str(value)):
        raise where.error(key, f"expected a batch size, got {show(value)}", "Write a number such as 16, auto or auto:8.")
    return str(value)


def _acceptance(where: Where, value: Any, key: str) -> tuple[float, float]:
    """`acceptance: [min, max]` (or `{min, max}`): the primary-metric ratio's acceptance range."""
    pair = (
        value if isinstance(value, (list, tuple)) else [value.get("min"), value.get("max")] if isinstance(value, dict) else None
    )
    if not pair or len(pair) != 2:
        raise where.error(key, f"expected [min, max], got {show(value)}", "Write e.g. acceptance: [0.90, 1.20].")
    lo, hi = (where.number(v, key) for v in pair)
    if not 0 < lo < 1 < hi:
        raise where.error(key, f"range [{lo}, {hi}] must satisfy 0 < min < 1 < max", "Write e.g. [0.90, 1.20].")
    return lo, hi


def _knob(where: Where, name: str, value: Any, key: str) -> Any:
    """The B200 bash harness's environment knobs as settings: guard_order, snapshot_mode, eval_data, eval_text_field."""
    if name == "guard_order":
        if not isinstance(value, list) or not value:
            raise where.error(
                key, f"expected a list of guards, got {show(value)}", "e.g. [invariants, spectral, rmt, variance, invariants]."
            )
        return tuple(where.choice(guard, f"{key}[{i}]", GUARDS) for i, guard in enumerate(value))
    if name == "snapshot_mode":
        return where.choice(value, key, SNAPSHOT_MODES)
    text = where.text(value, key)
    if name == "eval_text_field":
        if not text.strip():
            raise where.error(key, "is empty", "Name the JSONL field that holds the text, e.g. text.")
        return text
    path = user_path(text, f"suite file '{where.path}': key '{key}'")
    path = path if path.is_absolute() else (where.path.parent / path).resolve()
    if not path.is_file():
        raise where.error(
            key,
            f"'{path}' is not a file",
            'Give a JSONL file with one {"text": ...} object per line (relative paths start at the suite file).',
        )
    return str(path)


def model_settings(size_class: str, *layers: Mapping[str, Any]) -> Settings:
    """The size class's defaults overlaid by each checked `invarlock:` layer in turn."""
    merged: dict[str, Any] = dict(DEFAULT_INVARLOCK)
    merged.update(class_defaults(size_class))
    for layer in layers:
        merged.update(layer)
    if not any("stride" in layer for layer in layers):  # a seq_len of one's own keeps the windows apart
        merged["stride"] = merged["seq_len"]
    merged["lm_eval_batch"] = str(merged["lm_eval_batch"])
    if merged.get("eval_data"):  # a user's own text is evaluated through the local windows path
        merged["dataset"] = "local"
    return Settings(**merged)


def eval_data_problem(model: Model) -> str | None:
    """Why the model's `eval_data` file cannot be read as evaluation text (the fix is in the message), or None."""
    if not model.settings.eval_data:
        return None
    try:
        eval_data.documents(Path(model.settings.eval_data), model.settings.eval_text_field)
    except (OSError, UnicodeDecodeError, eval_data.EvalDataError) as exc:
        return f"model {model.name}: {exc}"
    return None


def tier_floor_problem(model: Model) -> str | None:
    """Why InvarLock's ci profile would abort this model's runs at once (too few windows or replicates), or None."""
    settings, floors = model.settings, TIER_FLOORS.get(model.settings.tier)
    if floors is None:
        return None
    if (
        settings.preview_windows < floors["preview"]
        or settings.final_windows < floors["final"]
        or settings.bootstrap_replicates < floors["replicates"]
    ):
        return (
            f"model {model.name}: tier '{settings.tier}' needs at least {floors['preview']}+{floors['final']} windows and "
            f"{floors['replicates']} bootstrap replicates (InvarLock's ci profile aborts below), got "
            f"{settings.preview_windows}+{settings.final_windows} and {settings.bootstrap_replicates}"
        )
    return None
