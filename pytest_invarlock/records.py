"""The item record: one vocabulary for the worker that writes it and the controller that reads it.

A record is a flat JSON object per suite item: what the item is (`base_record`), what happened
(outcome, numbers from InvarLock or lm-eval) and what was reused. The worker attaches it to the
test report as the `invarlock` user property, which pytest-xdist forwards to the controller; the
headline numbers also go to junit as separate properties (`junit_properties`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.items import SuiteItem

RECORD_PROPERTY = "invarlock"
RECORDS_DIR = "records"
JUNIT_FIELDS = (
    "ratio",
    "ci_lo",
    "ci_hi",
    "overall_pass",
    "failed_gates",
    "flagged",
    "degraded",
    "accuracy",
    "stderr",
    "n",
    "reused",
)


def base_record(item: SuiteItem) -> dict[str, Any]:
    """The fields every record has, whatever happened to the item."""
    return {
        "param_id": item.param_id,
        "test": item.test,
        "model": item.model.name,
        "scenario": item.scenario.name if item.scenario else None,
        "variant": item.variant,
        "kind": str(item.kind),
        "run": item.run,
        "benchmark": item.benchmark,
        "expectation": item.scenario.expectation if item.scenario and not item.benchmark else None,
        "definition_key": item.definition_key,
        "acceptance": [item.model.settings.acceptance_min, item.model.settings.acceptance_max],
    }


def item_fields(items: list[SuiteItem]) -> dict[str, dict[str, Any]]:
    """Per item what it is for (`verdict.compile.ITEM_FIELDS`): the roles of items that have no record yet."""
    from pytest_invarlock.verdict.compile import ITEM_FIELDS

    return {item.param_id: {k: base_record(item)[k] for k in ITEM_FIELDS} for item in items}


def campaign_block(items: list[SuiteItem], *, min_signal_fraction: float, selection: set[str] | None = None) -> dict[str, Any]:
    """The verdict inputs of a campaign (`verdict.compile.VERDICT_INPUTS`): its items with their definition keys and
    the fields that say what each is for, the items a session did not select (None outside a session), and the
    informational minimum. final_verdict.json keeps it, so the report command and a pack's verifier recompile alike."""
    return {
        "items": {item.param_id: item.definition_key for item in items},
        "item_fields": item_fields(items),
        "not_selected": None if selection is None else sorted(i.param_id for i in items if i.param_id not in selection),
        "min_signal_fraction": min_signal_fraction,
    }


def junit_properties(record: dict[str, Any]) -> list[tuple[str, Any]]:
    """The record's headline numbers as junit properties: lists comma-joined, the CI split in two."""
    ci = record.get("ci") or (None, None)
    flat = {**record, "ci_lo": ci[0], "ci_hi": ci[1]} if "ci" in record else record
    return [(name, ",".join(flat[name]) if isinstance(flat[name], list) else flat[name]) for name in JUNIT_FIELDS if name in flat]


def report_reason(report: pytest.TestReport) -> str:
    """The one line that says why an item failed, errored or was skipped."""
    if isinstance(report.longrepr, tuple):
        return str(report.longrepr[2])
    text = getattr(report, "longreprtext", "") or ""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("E ")]
    return (errors[-1][2:] if errors else lines[-1] if lines else "").strip()


def record_from_report(item: SuiteItem, report: pytest.TestReport, *, has_record: bool) -> dict[str, Any] | None:
    """The item's record after this report phase, or None when the phase adds nothing.

    `has_record`: the item already has a record this session (a teardown error then keeps the call's).
    """
    properties = dict(report.user_properties)
    record = {**base_record(item), **json.loads(str(properties.get(RECORD_PROPERTY, "{}")))}
    if report.when == "call":
        record["outcome"] = report.outcome
    elif report.failed:
        if report.when == "teardown" and has_record:
            return None
        record.update(outcome="error", error=report_reason(report))
    elif report.skipped:
        record.update(outcome="skipped", reason=report_reason(report))
    else:
        return None
    if report.failed and report.when == "call":
        record.setdefault("message", report_reason(report))
    return record


def record_path(run_dir: Path, item: SuiteItem) -> Path:
    return run_dir / RECORDS_DIR / f"{item.param_id}.json"


def earlier_records(
    run_dir: Path, items: list[SuiteItem], skip: set[str], warnings: list[str] | None = None
) -> list[dict[str, Any]]:
    """Records of earlier sessions for the items not in `skip`, where the item's definition is unchanged.

    A record that is cut short, does not parse or fails its checksum is never used: one line per such
    record goes to `warnings`, and the item counts as not run (rerunning it rebuilds the record from the
    store, which is cheap).
    """
    from pytest_invarlock.store import DamagedError, read_json_sealed

    found = []
    for item in items:
        if item.param_id in skip:
            continue
        path = record_path(run_dir, item)
        try:
            old = read_json_sealed(path)
        except FileNotFoundError:
            continue
        except DamagedError as exc:
            if warnings is not None:
                warnings.append(
                    f"record of {item.param_id} not trusted: {exc}; the verdict leaves the item out "
                    f"until it runs again (pytest ... -k '{item.param_id}', reusing the store)"
                )
            continue
        if old.get("definition_key") == item.definition_key:
            found.append(old)
    return found
