"""A suite's `scenarios:` as checked `Scenario`s: catalogue names, inline {name, spec, kind} entries, or a named set.

A scenario's spec must parse (edits.catalogue) and fit its kind: calibration runs a noop, error an
error injection, clean and stress an edit; `KIND:clean:SCOPE` takes its parameters from the tuned file.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pytest_invarlock.campaign.kinds import SCENARIO_KINDS
from pytest_invarlock.campaign.suite.checks import Where, show
from pytest_invarlock.campaign.suite.definitions import Scenario
from pytest_invarlock.campaign.suite.files import catalogue
from pytest_invarlock.campaign.tuned import is_tuned, sentinel_problem
from pytest_invarlock.edits.catalogue import SCOPES, SpecError, parse_spec

KINDS = SCENARIO_KINDS
MAX_RUNS = 1000  # per scenario kind: more would collect millions of items
# InvarLock 0.12's gate flags (its console labels, as `validation` keys): what a stress scenario may name as detectors.
DETECTORS = (
    "primary_metric_acceptable",
    "preview_final_drift_acceptable",
    "guard_overhead_acceptable",
    "invariants_pass",
    "spectral_stable",
    "rmt_stable",
)
SCENARIO_KEYS = ("name", "spec", "kind", "gating", "detectors", "runs", "default")
_SPEC_FAMILY = {"calibration": "noop", "error": "error"}  # the spec family each kind needs; any other kind: "edit"


def default_scenarios() -> list[str]:
    """The catalogue's scenarios a suite runs when it lists none (those not marked `default: false`)."""
    return [name for name, entry in catalogue("scenarios.yaml").items() if entry.get("default", True)]


def scenario_set(where: Where, value: Any) -> Any:
    """`scenarios: NAME` names a set in suites/scenario_sets.yaml (a B200 bash harness scenario manifest); a list stays."""
    if not isinstance(value, str):
        return value
    sets = catalogue("scenario_sets.yaml")
    if value not in sets:
        hint = difflib.get_close_matches(value, list(sets), n=1)
        raise where.error(
            "scenarios",
            f"unknown scenario set '{value}'",
            (f"Did you mean '{hint[0]}'? " if hint else "") + f"Sets: {', '.join(sets)}; or list the scenarios.",
        )
    return list(sets[value])


def scenario_entry(where: Where, entry: Any, key: str) -> Scenario:
    """The `Scenario` of one `scenarios:` entry: a catalogue name or an inline mapping."""
    if isinstance(entry, str):
        entry = _catalogue_entry(where, entry, key)
    entry = where.mapping(entry, key)
    where.known_keys(entry, SCENARIO_KEYS, key)
    for required in ("name", "spec", "kind"):
        if required not in entry:
            raise where.error(f"{key}.{required}", "missing", "An inline scenario needs name, spec and kind.")
    name = where.slug(entry["name"], f"{key}.name")
    kind = where.choice(entry["kind"], f"{key}.kind", KINDS)
    text = where.text(entry["spec"], f"{key}.spec")
    spec = _tuned_spec(where, text, kind, key) if is_tuned(text) else _concrete_spec(where, text, kind, key)
    return _scenario_of(where, entry, key, name, kind, spec)


def _catalogue_entry(where: Where, name: str, key: str) -> dict[str, Any]:
    known = catalogue("scenarios.yaml")
    if name not in known:
        hint = difflib.get_close_matches(name, list(known), n=1)
        raise where.error(
            key,
            f"unknown scenario '{name}'",
            (f"Did you mean '{hint[0]}'? " if hint else "")
            + "Use a name from the catalogue (suites/scenarios.yaml) or define it inline as {name, spec, kind}.",
        )
    return {"name": name, **known[name]}


def _tuned_spec(where: Where, text: str, kind: str, key: str) -> str:
    """KIND:clean:SCOPE: parameters per model from the tuned-params file (campaign.tuned)."""
    problem = sentinel_problem(text) or (None if kind == "clean" else f"a tuned spec needs kind clean, not {kind}")
    if problem is None:
        scope = text.split(":")[2]
        problem = None if scope in SCOPES else f"scope {scope!r} is not one of {', '.join(SCOPES)}"
    if problem:
        raise where.error(f"{key}.spec", problem, "Write e.g. quant_rtn:clean:ffn, or a concrete spec.")
    return text.strip()


def _concrete_spec(where: Where, text: str, kind: str, key: str) -> str:
    """A spec that parses and whose family fits the scenario's kind, in its canonical spelling."""
    try:
        spec = parse_spec(text)
    except SpecError as exc:
        raise where.error(f"{key}.spec", str(exc), "Fix the spec string.") from None
    expected_family = _SPEC_FAMILY.get(kind, "edit")
    if spec.family != expected_family:
        raise where.error(
            f"{key}.spec",
            f"spec '{spec}' is a {spec.family} spec but the scenario kind is '{kind}'",
            f"A {kind} scenario needs a {expected_family} spec.",
        )
    return str(spec)


def _scenario_of(where: Where, entry: Mapping[str, Any], key: str, name: str, kind: str, spec: str) -> Scenario:
    detectors = entry.get("detectors", [])
    if not isinstance(detectors, list):
        raise where.error(
            f"{key}.detectors", f"expected a list of flag names, got {show(detectors)}", "e.g. [spectral_stable, rmt_stable]."
        )
    for i, detector in enumerate(detectors):
        where.choice(detector, f"{key}.detectors[{i}]", DETECTORS)
    where.boolean(entry.get("default", True), f"{key}.default")
    runs = entry.get("runs")
    return Scenario(
        name=name,
        spec=spec,
        kind=kind,
        gating=where.boolean(entry.get("gating", True), f"{key}.gating"),
        detectors=tuple(detectors),
        runs=None if runs is None else where.integer(runs, f"{key}.runs", 0, MAX_RUNS),
    )
