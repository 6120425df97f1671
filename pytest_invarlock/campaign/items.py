"""Test items: one per model x scenario x run, plus one per model x (baseline + edit) x benchmark.

Pure and torch-free. The same function builds the items on xdist workers (to parametrize the test
functions) and on the controller (which only ever receives nodeids): the controller maps a nodeid
back to its item through `item_from_nodeid`, never through markers.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign import tuned
from pytest_invarlock.campaign.kinds import AFTER_CALIBRATION, EDIT_KINDS, Kind
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.campaign.suite.definitions import Model, Scenario, Suite
from pytest_invarlock.edits.catalogue import SpecError, parse_spec

__all__ = ["AFTER_CALIBRATION", "BENCHMARK_TEST", "CERTIFY_TESTS", "Kind", "SuiteItem", "build_items", "item_from_nodeid"]

# Certify test function name -> the scenario kinds it runs; benchmark items go to BENCHMARK_TEST.
CERTIFY_TESTS = {
    "test_calibration": (Kind.CALIBRATION,),
    "test_edit": EDIT_KINDS,
    "test_error": (Kind.ERROR,),
}
BENCHMARK_TEST = "test_benchmark"
BASELINE = "baseline"
_PARAM = re.compile(r"::(test_\w+)\[(.+)\]$")


@dataclass(frozen=True)
class SuiteItem:
    """One item of the suite: a test function for a model, a scenario and a run (pytest's `Item` runs it)."""

    test: str
    model: Model
    scenario: Scenario | None
    run: int = 1
    benchmark: str | None = None

    @property
    def kind(self) -> Kind:
        """calibration | clean | stress | error | benchmark (also the marker name)."""
        if self.benchmark or self.scenario is None:
            return Kind.BENCHMARK
        return Kind(self.scenario.kind)

    @property
    def variant(self) -> str:
        """The model variant the item needs: 'baseline' or the scenario name."""
        if self.scenario is None or self.scenario.kind == Kind.CALIBRATION:
            return BASELINE
        return self.scenario.name

    @property
    def param_id(self) -> str:
        if self.benchmark:
            return f"{self.model.name}-{self.variant}-{self.benchmark}"
        scenario = self.scenario.name if self.scenario else BASELINE  # a certify item always has one
        return f"{self.model.name}-{scenario}-run{self.run}"

    @property
    def definition_key(self) -> str:
        """Digest of everything in the suite that defines this item; records from an older definition are stale."""
        payload = {
            "model": asdict(self.model),
            "scenario": asdict(self.scenario) if self.scenario else None,
            "run": self.run,
            "benchmark": self.benchmark,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@functools.cache
def _tuned_file(path: Path, mtime_ns: int) -> dict[str, Any]:
    return tuned.load(path)


def as_run_by(suite: Suite, model: Model, scenario: Scenario) -> Scenario:
    """The scenario as `model` runs it: a tuned `KIND:clean:SCOPE` spec becomes that model's concrete spec."""
    if not tuned.is_tuned(scenario.spec):
        return scenario
    path = suite.tuned_params_file
    try:
        spec = tuned.resolve(_tuned_file(path, path.stat().st_mtime_ns), (model.source, model.name), scenario.spec, path=path)
        parse_spec(spec)
    except OSError as exc:
        raise SuiteError(f"cannot read the tuned-params file '{path}': {exc.strerror or exc}. Check the path.") from None
    except (tuned.TunedParamsError, SpecError) as exc:
        raise SuiteError(f"scenario {scenario.name} ({scenario.spec}) of model {model.name}: {exc}") from None
    return replace(scenario, spec=spec)


def build_items(suite: Suite) -> list[SuiteItem]:
    """All items of a suite, in a stable order: per model, calibration first, then edits, errors, benchmarks."""
    items: list[SuiteItem] = []
    for model in suite.models:
        scenarios = [as_run_by(suite, model, scenario) for scenario in suite.scenarios]
        for test, kinds in CERTIFY_TESTS.items():
            for scenario in scenarios:
                if scenario.kind in kinds:
                    items.extend(SuiteItem(test, model, scenario, run) for run in range(1, suite.runs_for(scenario) + 1))
        edits = [s for s in scenarios if s.kind in EDIT_KINDS and suite.runs_for(s) > 0]
        for edited in [None, *edits]:
            items.extend(SuiteItem(BENCHMARK_TEST, model, edited, 1, task) for task in suite.benchmarks.tasks)
    return items


def items_for_test(items: list[SuiteItem], test: str) -> list[SuiteItem]:
    return [item for item in items if item.test == test]


def item_from_nodeid(nodeid: str, index: dict[tuple[str, str], SuiteItem]) -> SuiteItem | None:
    """Map a nodeid such as 'validation/test_certify.py::test_edit[m-s-run2]' to its item, or None."""
    match = _PARAM.search(nodeid)
    return index.get((match.group(1), match.group(2))) if match else None


def index_items(items: list[SuiteItem]) -> dict[tuple[str, str], SuiteItem]:
    return {(item.test, item.param_id): item for item in items}
