"""Coverage in the status (issue 19, point 1): a verdict is the campaign's only when every criterion was measured on
every suite item it applies to. Synthetic records through `compile_records`, as the controller compiles them."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st
from test_compile import bench, certify

from pytest_invarlock.verdict.compile import ITEM_FIELDS, campaign_options, compile_records
from pytest_invarlock.verdict.coverage import Accounting, role_of


def fields(record: dict) -> dict:
    return {k: record.get(k) for k in ITEM_FIELDS}


def suite() -> list[dict]:
    """A five-item suite: one calibration, one clean, one gating stress edit, two error injections; all met."""
    return [
        certify("m", "calibration", "calibration", 1),
        certify("m", "clean8", "clean", 1, ratio=1.001),
        certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4),
        certify("m", "nan", "error", 1, flagged=True, detected=True, ratio=None),
        certify("m", "zero", "error", 1, flagged=True, detected=True, ratio=1.2),
    ]


def compiled_over(records: list[dict], ran: set[str], *, selected: set[str] | None = None):
    """Compile the suite's records of the items in `ran` only, as a session that selected `selected` would."""
    everything = suite()
    ids = [r["param_id"] for r in everything]
    chosen = ran if selected is None else selected
    return compile_records(
        [r for r in records if r["param_id"] in ran],
        items=ids,
        item_fields={r["param_id"]: fields(r) for r in everything},
        not_selected=[pid for pid in ids if pid not in chosen],
    )


def test_the_whole_suite_measured_and_met_validates() -> None:
    records = suite()
    p0 = compiled_over(records, {r["param_id"] for r in records}).phase0
    assert p0.status == "PHASE0_VALIDATED" and p0.complete and p0.scope == ""
    assert "scope           the whole campaign: every suite item measured" in p0.render_text()


def test_a_session_that_deselects_the_error_injections_is_incomplete_and_says_why() -> None:
    # Citizen's code: the stress edit and both error injections never ran, yet PHASE0_VALIDATED, with error
    # detection "not measured (no error-injection runs)" as if the suite had none.
    records = suite()
    ran = {"m-calibration-run1", "m-clean8-run1", "m-stress4-run1"}
    p0 = compiled_over(records, ran).phase0
    assert p0.status == "PHASE0_INCOMPLETE" and not p0.passed and p0.verdict_confidence is None
    assert p0.status_line.startswith("PHASE0_INCOMPLETE over 3 of 5 suite items (score ")
    text = p0.render_text()
    assert (
        "error detection >= 80%: not measured: no verdict for the suite's 2 error-injection items "
        "(2 not selected this session)" in text
    )
    assert "not run (2 not selected this session): m-nan-run1, m-zero-run1" in text
    assert "not the campaign's verdict" in text
    data = p0.to_dict()
    assert data["scope"] == {"suite_items": 5, "measured": 3, "text": "over 3 of 5 suite items"}
    assert data["accounting"]["unmeasured_by_role"] == {"error": 2}


def test_a_suite_without_error_scenarios_says_so_and_does_not_validate() -> None:
    records = [r for r in suite() if r["kind"] != "error"]
    p0 = compile_records(records, items=[r["param_id"] for r in records]).phase0
    assert p0.status == "PHASE0_INCOMPLETE" and p0.accounting is not None and p0.accounting.complete
    assert "error detection >= 80%: not measured: the suite defines no error-injection item" in p0.render_text()


def test_a_failure_certain_whatever_the_missing_items_give_reads_failed_with_its_scope() -> None:
    # Both error injections ran and went undetected: even a detected third could not reach 80%.
    records = suite()
    for r in records:
        if r["kind"] == "error":
            r.update(flagged=False, detected=False, met=False, outcome="failed")
    ran = {r["param_id"] for r in records} - {"m-stress4-run1"}
    p0 = compiled_over(records, ran).phase0
    assert p0.status == "PHASE0_FAILED"
    assert p0.status_line.startswith("PHASE0_FAILED over 4 of 5 suite items (score ")
    assert "error detection >= 80%: 0.0% (0/2 detected): NOT met" in p0.status_reason


def test_a_failure_the_missing_items_could_still_undo_is_incomplete() -> None:
    # Five error injections: 3 of the 4 measured detected (75% < 80%); the fifth, not run, could lift it to 80%.
    records = [certify("m", "calibration", "calibration", 1), certify("m", "clean8", "clean", 1, ratio=1.001)]
    records += [certify("m", "stress4", "stress", 1, flagged=True, ratio=1.4)]
    records += [certify("m", f"e{i}", "error", 1, flagged=i < 3, detected=i < 3, met=i < 3) for i in range(5)]
    ids = [r["param_id"] for r in records]
    p0 = compile_records(
        [r for r in records if r["param_id"] != "m-e4-run1"],
        items=ids,
        item_fields={r["param_id"]: fields(r) for r in records},
    ).phase0
    assert p0.status == "PHASE0_INCOMPLETE"
    assert p0.error_criterion.describe() == (
        "error detection >= 80%: 75.0% (3/4 detected); 1 error-injection item not measured "
        "(1 with no record in the run directory): not met so far"
    )
    records[-1].update(flagged=False, detected=False, met=False)  # run, and missed: 3/5
    assert compile_records(records, items=ids).phase0.status == "PHASE0_FAILED"


def test_pending_lm_eval_truth_keeps_a_wrong_edit_from_deciding_the_campaign() -> None:
    # A clean edit flagged by InvarLock is wrong by its expectation, but its benchmark items were not run:
    # lm-eval may yet call it a regression, so accuracy 50% is not a certain failure.
    records = [r for r in suite() if r["kind"] != "error"] + [bench("m", "baseline", "t", 0.6)]
    records[1].update(flagged=True, met=False, outcome="failed")
    everything = [*suite(), bench("m", "baseline", "t", 0.6), bench("m", "clean8", "t", 0.6), bench("m", "stress4", "t", 0.3)]
    ids = [r["param_id"] for r in everything]
    ran = {r["param_id"] for r in records}
    p0 = compile_records(
        records,
        items=ids,
        item_fields={r["param_id"]: fields(r) for r in everything},
        not_selected=[pid for pid in ids if pid not in ran],
    ).phase0
    assert p0.accuracy_criterion.best == 1.0 and p0.status == "PHASE0_INCOMPLETE"
    assert p0.truth_unknown["m/clean8"] == "t on clean8: not run"


def test_campaign_options_round_trip_through_final_verdict_json() -> None:
    records = suite()
    ran = {"m-calibration-run1", "m-clean8-run1"}
    ids = [r["param_id"] for r in records]
    campaign = {
        "items": dict.fromkeys(ids, "k"),
        "item_fields": {r["param_id"]: fields(r) for r in records},
        "not_selected": [pid for pid in ids if pid not in ran],
        "min_signal_fraction": 0.5,
    }
    kept = [r for r in records if r["param_id"] in ran]
    direct = compile_records(kept, **campaign_options(campaign)).phase0.to_dict()
    reloaded = compile_records(kept, **campaign_options(json.loads(json.dumps(campaign)))).phase0.to_dict()
    assert direct == reloaded and direct["status"] == "PHASE0_INCOMPLETE"


def test_roles_come_from_kind_and_expectation() -> None:
    assert role_of("stress", "signal") == "informational" and role_of("stress", "fail") == "stress"
    assert role_of("benchmark", None) == "benchmark" and role_of(None, None) == "unknown"
    acc = Accounting(suite_items=3, with_verdict=1, skipped=(("b", "needs a GPU"),), not_run=("a", "c"), not_selected=("a",))
    assert acc.why(("a", "b", "c")) == "1 not selected this session, 1 skipped, 1 with no record in the run directory"


@settings(max_examples=120, deadline=None)
@given(st.sets(st.sampled_from([r["param_id"] for r in suite()])), st.booleans())
def test_deselecting_any_part_of_the_suite_never_validates(ran: set[str], undetected: bool) -> None:
    records = suite()
    if undetected:
        records[3].update(flagged=False, detected=False, met=False, outcome="failed")
    p0 = compiled_over(records, ran).phase0
    everything = ran == {r["param_id"] for r in records}
    assert (p0.status == "PHASE0_VALIDATED") == (everything and not undetected)
    if not everything:
        assert p0.scope == f" over {len(ran)} of 5 suite items" and p0.status in ("PHASE0_INCOMPLETE", "PHASE0_FAILED")
