"""Command-line overrides of a loaded suite: --models, --runs-*, --no-errors, --benchmarks, --tier.

Like the B200 bash harness's MODEL_1..MODEL_8 variables, they change one run without editing the
suite file; each is checked as strictly as the file's key, and its error names the option.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import replace

from pytest_invarlock.campaign.suite.benchmarks import TASK_FIX, unknown_task_problem
from pytest_invarlock.campaign.suite.checks import SLUG, CommandLine, SuiteError, show, user_path
from pytest_invarlock.campaign.suite.definitions import Model, Suite
from pytest_invarlock.campaign.suite.files import catalogue
from pytest_invarlock.campaign.suite.models import model_entry, model_from_source
from pytest_invarlock.campaign.suite.scenarios import MAX_RUNS
from pytest_invarlock.campaign.suite.settings import FLOOR_FIX, TIERS, tier_floor_problem
from pytest_invarlock.campaign.suite.size_classes import params_from_name

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def override_suite(
    suite: Suite,
    *,
    models: list[str] | None = None,
    runs: Mapping[str, int | None] | None = None,
    errors: bool = True,
    benchmarks: list[str] | None = None,
    tier: str | None = None,
) -> Suite:
    """Command-line overrides (--models, --runs-*, --no-errors, --benchmarks, --tier), applied in that order."""
    if models:
        suite = replace(suite, models=_replacement_models(suite, models))
    if runs:
        suite = replace(suite, runs=_merged_runs(suite.runs, runs))
    if not errors:
        suite = replace(suite, scenarios=tuple(s for s in suite.scenarios if s.kind != "error"))
    if benchmarks is not None:
        suite = replace(suite, benchmarks=replace(suite.benchmarks, tasks=_benchmark_tasks(benchmarks)))
    if tier:
        suite = _with_tier(suite, tier)
    return suite


def _replacement_models(suite: Suite, entries: list[str]) -> tuple[Model, ...]:
    """--models: the suite's own models by name or source, else new ones on the suite's `invarlock:` block."""
    where = CommandLine(suite.path)
    resolved = [_replacement_model(where, suite, entry, i) for i, entry in enumerate(entries)]
    where.unique([m.name for m in resolved], "--models")
    return tuple(resolved)


def _replacement_model(where: CommandLine, suite: Suite, entry: str, i: int) -> Model:
    known = next((m for m in suite.models if m.name == entry or m.source == entry), None)
    if known is not None:
        return known
    _check_model_argument(entry, i)
    key = f"--models[{i}]"
    shared = _shared_class(suite, entry)
    if shared is not None:
        size_class, dtype = shared
        return model_entry(where, {**model_from_source(entry), "size_class": size_class, "dtype": dtype}, key, suite.invarlock)
    return model_entry(where, entry, key, suite.invarlock)


def _shared_class(suite: Suite, entry: str) -> tuple[str, str] | None:
    """The size class and dtype all the suite's models share, for a new model whose id names no size (a local
    directory, say); None when the models differ, or the entry is a catalogue model or names its size."""
    classes = {(m.size_class, m.dtype) for m in suite.models}
    if len(classes) != 1 or entry in catalogue("models.yaml") or params_from_name(entry) is not None:
        return None
    return next(iter(classes))


def _check_model_argument(entry: str, i: int) -> None:
    """A `--models` value names a catalogue model, a hub id (org/name) or an existing local directory."""
    option = f"--models {show(entry)}"
    if "\x00" in entry or not entry.strip():
        raise SuiteError(f"{option}: not a model name. Give a catalogue name, a hub id (org/name) or a local directory.")
    known = catalogue("models.yaml")
    if entry in known:
        return
    path = user_path(entry, option)
    looks_local = entry.startswith((".", "/", "~")) or entry.count("/") > 1 or "\\" in entry
    if looks_local or path.exists():
        if not path.exists():
            raise SuiteError(
                f"{option}: local model directory '{path}' does not exist. "
                "Check the path (relative paths start from the current directory), or give a hub id as org/name."
            )
        if not path.is_dir():
            raise SuiteError(f"{option}: '{path}' is not a directory. Pass the model's directory (with its config.json).")
        return
    if _HUB_ID.match(entry):
        return
    hint = difflib.get_close_matches(entry, list(known), n=1)
    raise SuiteError(
        f"{option}: unknown model '{entry}'. "
        + (f"Did you mean '{hint[0]}'? " if hint else "")
        + f"Use a catalogue name ({', '.join(known)}), a hub id such as org/name, or an existing local directory."
    )


def _merged_runs(current: Mapping[str, int], counts: Mapping[str, int | None]) -> dict[str, int]:
    """--runs-KIND: each count given replaces the suite's."""
    merged = dict(current)
    for kind, count in counts.items():
        if count is None:
            continue
        if not 0 <= count <= MAX_RUNS:
            raise SuiteError(f"--runs-{kind} must be >= 0 and <= {MAX_RUNS}, got {count}. Pass a whole number of runs.")
        merged[kind] = count
    return merged


def _benchmark_tasks(benchmarks: list[str]) -> tuple[str, ...]:
    """--benchmarks: every name a known lm-eval task."""
    for task in benchmarks:
        problem = None if SLUG.match(task) else f"'{task}' is not a task name"
        problem = problem or unknown_task_problem(task)
        if problem:
            raise SuiteError(f"--benchmarks {show(','.join(benchmarks))}: {problem}. {TASK_FIX}")
    return tuple(benchmarks)


def _with_tier(suite: Suite, tier: str) -> Suite:
    """--tier: every model on InvarLock tier `tier`, whose window and bootstrap floors each must still meet."""
    if tier not in TIERS:
        hint = difflib.get_close_matches(tier, TIERS, n=1)
        raise SuiteError(
            f"--tier {show(tier)} is not an InvarLock tier. "
            + (f"Did you mean '{hint[0]}'? " if hint else "")
            + f"Use one of {', '.join(TIERS)}."
        )
    suite = replace(suite, models=tuple(replace(m, settings=replace(m.settings, tier=tier)) for m in suite.models))
    for model in suite.models:
        problem = tier_floor_problem(model)
        if problem:
            raise SuiteError(f"--tier {tier}: {problem}. {FLOOR_FIX}")
    return suite
