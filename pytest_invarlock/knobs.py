"""The earlier harnesses' environment knobs as options and suite settings: recorded, validated, and in the cache keys.

The B200 and evidence-pack harnesses read these from the environment; here each is an option whose
default is that variable, and a suite setting too:

| option | variable | suite | what it changes |
|---|---|---|---|
| --tuned-edit-params FILE | PACK_TUNED_EDIT_PARAMS_FILE | tuned_edit_params | the clean edits' tuned parameters |
| --guard-order A,B,... | PACK_GUARDS_ORDER, B200_GUARDS_ORDER | invarlock.guard_order | InvarLock's guard chain |
| --eval-data FILE | INVARLOCK_LOCAL_JSONL_FILE | invarlock.eval_data | a user's JSONL evaluation text |
| --eval-text-field NAME | INVARLOCK_LOCAL_JSONL_TEXT_FIELD | invarlock.eval_text_field | its text field |
| --preset-dir DIR, --preset-file FILE | PACK_CALIBRATION_PRESET_DIR/FILE | calibration_preset | reuse calibrated presets |
| --skip-overhead-check | INVARLOCK_SKIP_OVERHEAD_CHECK | invarlock.guard_overhead: false | skip the overhead pass |
| --snapshot-mode MODE | INVARLOCK_SNAPSHOT_MODE | invarlock.snapshot_mode | InvarLock's model snapshots |

An option wins over its variable, which wins over the suite. Each value reaches the cache key of
what it shapes (settings enter every evaluate's key, the edit spec the edit's, the preset the
certificate's), and the controller logs where each came from. Reusing presets sets the calibration
runs to 0 unless --runs-calibration says otherwise (the evidence-pack harness skipped preset derivation).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.presets import reused_preset
from pytest_invarlock.campaign.suite.checks import SuiteError, user_path
from pytest_invarlock.campaign.suite.definitions import Suite
from pytest_invarlock.campaign.suite.settings import GUARDS, SNAPSHOT_MODES, eval_data_problem
from pytest_invarlock.campaign.tuned import is_tuned

TRUE_WORDS = ("1", "true", "yes", "on")
# dest -> the environment variables that give its default, first found wins
ENVIRONMENT = {
    "invarlock_tuned_edit_params": ("PACK_TUNED_EDIT_PARAMS_FILE",),
    "invarlock_guard_order": ("PACK_GUARDS_ORDER", "B200_GUARDS_ORDER"),
    "invarlock_eval_data": ("INVARLOCK_LOCAL_JSONL_FILE",),
    "invarlock_eval_text_field": ("INVARLOCK_LOCAL_JSONL_TEXT_FIELD",),
    "invarlock_preset_dir": ("PACK_CALIBRATION_PRESET_DIR",),
    "invarlock_preset_file": ("PACK_CALIBRATION_PRESET_FILE",),
    "invarlock_skip_overhead_check": ("INVARLOCK_SKIP_OVERHEAD_CHECK",),
    "invarlock_snapshot_mode": ("INVARLOCK_SNAPSHOT_MODE",),
}
TUNED_COPY = "state/tuned_edit_params.json"


def add_options(group: pytest.OptionGroup) -> None:
    """The earlier harnesses' environment knobs (defaults: the variables named in each help text)."""
    group.addoption(
        "--tuned-edit-params",
        dest="invarlock_tuned_edit_params",
        default=None,
        metavar="FILE",
        help="tuned clean-edit parameters for KIND:clean:SCOPE scenarios (default $PACK_TUNED_EDIT_PARAMS_FILE, "
        "else the suite's, else suites/tuned_edit_params.json)",
    )
    group.addoption(
        "--guard-order",
        dest="invarlock_guard_order",
        default=None,
        metavar="A,B,...",
        help=f"InvarLock's guard chain, from {', '.join(GUARDS)} (default $PACK_GUARDS_ORDER or $B200_GUARDS_ORDER)",
    )
    group.addoption(
        "--eval-data",
        dest="invarlock_eval_data",
        default=None,
        metavar="FILE",
        help="evaluate on your own JSONL text instead of the suite's dataset (default $INVARLOCK_LOCAL_JSONL_FILE)",
    )
    group.addoption(
        "--eval-text-field",
        dest="invarlock_eval_text_field",
        default=None,
        metavar="NAME",
        help="the JSONL field holding the text (default $INVARLOCK_LOCAL_JSONL_TEXT_FIELD, else text)",
    )
    group.addoption(
        "--preset-dir",
        dest="invarlock_preset_dir",
        default=None,
        metavar="DIR",
        help="reuse calibrated presets (calibrated_preset_<model>.yaml/.json, e.g. another run's presets/) instead "
        "of calibrating (default $PACK_CALIBRATION_PRESET_DIR)",
    )
    group.addoption(
        "--preset-file",
        dest="invarlock_preset_file",
        default=None,
        metavar="FILE",
        help="reuse one calibrated preset for every model (default $PACK_CALIBRATION_PRESET_FILE)",
    )
    group.addoption(
        "--skip-overhead-check",
        dest="invarlock_skip_overhead_check",
        action="store_true",
        default=None,
        help="skip InvarLock's guard-overhead pass, as the suite setting guard_overhead: false (default: "
        "$INVARLOCK_SKIP_OVERHEAD_CHECK set to 1/true)",
    )
    group.addoption(
        "--snapshot-mode",
        dest="invarlock_snapshot_mode",
        choices=SNAPSHOT_MODES,
        default=None,
        help="how InvarLock snapshots the model between its runs (default $INVARLOCK_SNAPSHOT_MODE, else auto)",
    )


def given(config: pytest.Config, dest: str) -> tuple[Any, str] | None:
    """(value, where it came from) of a knob set by its option or its environment variable; None if neither."""
    value = config.getoption(dest, None)
    if value is not None:
        return value, "option"
    for variable in ENVIRONMENT[dest]:
        text = os.environ.get(variable, "").strip()
        if text:
            return (text.lower() in TRUE_WORDS if dest == "invarlock_skip_overhead_check" else text), f"${variable}"
    return None


def _path(config: pytest.Config, text: str, what: str) -> Path:
    path = user_path(str(text), what)
    return path if path.is_absolute() else Path(config.invocation_params.dir) / path


def apply(config: pytest.Config, suite: Suite) -> tuple[Suite, dict[str, str]]:
    """The suite with the knobs given on the command line or in the environment; and each knob's source."""
    sources: dict[str, str] = {}
    settings: dict[str, Any] = {}
    if found := given(config, "invarlock_tuned_edit_params"):
        path = _path(config, found[0], f"tuned-edit-params ({found[1]})")
        if not path.is_file():
            raise SuiteError(f"tuned-edit-params ({found[1]}): '{path}' is not a file. Give the JSON file of tuned parameters.")
        suite, sources["tuned_edit_params"] = replace(suite, tuned_edit_params=path), found[1]
    if found := given(config, "invarlock_guard_order"):
        order = tuple(name.strip() for name in str(found[0]).split(",") if name.strip())
        unknown = [name for name in order if name not in GUARDS]
        if not order or unknown:
            raise SuiteError(f"guard order ({found[1]}) {found[0]!r}: name guards from {', '.join(GUARDS)}, comma-separated.")
        settings["guard_order"], sources["guard_order"] = order, found[1]
    if found := given(config, "invarlock_eval_text_field"):
        settings["eval_text_field"], sources["eval_text_field"] = str(found[0]), found[1]
    if found := given(config, "invarlock_eval_data"):
        path = _path(config, found[0], f"eval-data ({found[1]})")
        if not path.is_file():
            raise SuiteError(f"eval-data ({found[1]}): '{path}' is not a file. Give a JSONL file with one object per line.")
        settings.update(eval_data=str(path.resolve()), dataset="local")
        sources["eval_data"] = found[1]
    if (found := given(config, "invarlock_skip_overhead_check")) and found[0]:
        settings["guard_overhead"], sources["skip_overhead_check"] = False, found[1]
    if found := given(config, "invarlock_snapshot_mode"):
        if found[0] not in SNAPSHOT_MODES:
            raise SuiteError(f"snapshot mode ({found[1]}) {found[0]!r}: use one of {', '.join(SNAPSHOT_MODES)}.")
        settings["snapshot_mode"], sources["snapshot_mode"] = found[0], found[1]
    if settings:
        models = tuple(replace(m, settings=replace(m.settings, **settings)) for m in suite.models)
        for model in models:
            problem = eval_data_problem(model)
            if problem:
                raise SuiteError(f"eval-data ({sources['eval_data']}): {problem}")
        suite = replace(suite, models=models)
    preset = given(config, "invarlock_preset_file") or given(config, "invarlock_preset_dir")
    if preset:
        suite, sources["calibration_preset"] = replace(suite, calibration_preset=_path(config, preset[0], "preset")), preset[1]
    if suite.calibration_preset is not None:
        for model in suite.models:  # every model's preset exists and reads
            try:
                reused_preset(suite.calibration_preset, model.name)
            except ValueError as exc:
                raise SuiteError(f"calibrated preset ({sources.get('calibration_preset', 'suite')}): {exc}.") from None
        if config.getoption("invarlock_runs_calibration", None) is None:
            suite = replace(suite, runs={**suite.runs, "calibration": 0})
    return suite, sources


def record_inputs(suite: Suite, run_dir: Path) -> None:
    """state/tuned_edit_params.json: a copy of the tuned-params file a campaign with tuned specs used (the evidence-pack harness's)."""
    if any(is_tuned(scenario.spec) for scenario in suite.scenarios):
        target = run_dir / TUNED_COPY
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(suite.tuned_params_file, target)
