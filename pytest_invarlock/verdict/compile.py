"""Compile item records into the Phase 0 outcomes, the per-model table and the benchmark rows.

Pure and torch-free: it runs on the controller over the records that xdist forwards (or that the
single process produced), and `evidence.verify` runs it again over the records inside a pack, so
the same records always give the same block. A record is the plain dict each item stores through
its `invarlock` user property (see `records`).

Every suite item is accounted for (`Accounting`): an item with a verdict enters Phase 0; an item
that errored (the pipeline crashed, timed out or failed to load: no verdict) enters it too, counted
against its expectation; skipped items are listed with their reasons; suite items without any
record are listed as not run, and charged to the criterion their role would have measured
(`item_fields` gives the roles of items without a record; `not_selected` the ones this session left out).

Copies are merged before counting: two results of the same model and scenario with the same weights
and the same evaluation-window digest (`window_digest`, recorded by runs that draw their own windows)
are one piece of evidence, however many items produced them. Records without a window digest (older
runs) fall back to (model, scenario, ratio and drift bits): bit-identical numbers from the same
scenario can only come from the same windows. The block says how many were merged and by which key.

An edit's lm-eval truth is all or nothing: computed only when every configured task scored for both the
edit and its model's baseline; otherwise the edit's truth is unknown and it is judged by its expectation.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_invarlock.verdict.coverage import Accounting, role_of
from pytest_invarlock.verdict.phase0 import (
    DEFAULT_MIN_SIGNAL_FRACTION,
    EditOutcome,
    ErrorOutcome,
    NoopOutcome,
    Phase0,
    is_regression,
    phase0_verdict,
    regressed_tasks,
    regression_se,
)

CERTIFY_KINDS = ("calibration", "clean", "stress", "error")
KEY_WINDOWS = "model, scenario, weights, window digest"
KEY_FALLBACK = "model, scenario, ratio and drift bits"


# The keys of a final_verdict.json `campaign` block that `compile_records` needs to recompute its Phase 0 block.
VERDICT_INPUTS = ("items", "item_fields", "not_selected", "min_signal_fraction")
ITEM_FIELDS = ("kind", "expectation", "model", "variant", "benchmark")  # per suite item, in `item_fields`


@dataclass(frozen=True)
class LmEvalTruth:
    """An edit's lm-eval verdict: regressed (None: unknown or no task configured); the scores that are missing
    ('<task> on <variant>: <why>'); pending: every missing score belongs to an item not run (yet)."""

    regressed: bool | None
    missing: tuple[str, ...] = ()
    pending: bool = False


@dataclass(frozen=True)
class Compiled:
    """Everything the terminal summary and the report files show.

    labels: certify item -> where it went in Phase 0 (`Phase0.labels`, plus 'merged into <item>' for copies):
    the CSV and the HTML render these, so they always agree with the block."""

    phase0: Phase0
    table: list[dict[str, Any]]
    certify: list[dict[str, Any]]
    benchmarks: list[dict[str, Any]]
    lm_eval: dict[tuple[str, str], LmEvalTruth]
    pipeline_errors: list[dict[str, Any]]
    skipped: list[dict[str, Any]]
    labels: dict[str, str]

    @property
    def regressions(self) -> dict[tuple[str, str], bool | None]:
        """Per (model, edit): regressed on any benchmark, None when its lm-eval truth is unknown."""
        return {key: truth.regressed for key, truth in self.lm_eval.items()}


# --------------------------------------------------------------------------- record predicates


def has_verdict(record: Mapping[str, Any]) -> bool:
    """The item ran to a judgement (InvarLock's verdict or an lm-eval score was compared)."""
    return record.get("outcome") in ("passed", "failed") and "met" in record


def is_errored(record: Mapping[str, Any]) -> bool:
    """The pipeline produced no verdict: a setup/teardown error, or a call that failed before the
    item recorded anything (a timeout, a crash)."""
    return record.get("outcome") == "error" or (record.get("outcome") == "failed" and "met" not in record)


def error_reason(record: Mapping[str, Any]) -> str:
    return str(record.get("error") or record.get("message") or "failed without a recorded verdict")


def _flagged(record: Mapping[str, Any]) -> bool:
    """The per-certificate rule: not overall pass, degraded, or (the reference's stricter form) invalid."""
    return bool(record.get("flagged")) or bool(record.get("invalid"))


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# --------------------------------------------------------------------------- duplicates


def duplicate_key(record: Mapping[str, Any]) -> tuple[str, tuple[Any, ...]] | None:
    """(basis, key) under which two certify records are the same evidence; None when it cannot tell.

    The scenario is always part of the key: two scenarios with identical weights (a gating and an
    informational one, say) are judged against different expectations and stay two pieces of evidence."""
    windows = record.get("window_digest")
    if windows:
        weights = record.get("weights") or record.get("variant") or record.get("scenario")
        return KEY_WINDOWS, (record.get("model"), record.get("scenario"), weights, windows)
    ratio: Any = record.get("ratio")
    drift: Any = record.get("drift")
    if finite(ratio):
        return KEY_FALLBACK, (
            record.get("model"),
            record.get("scenario"),
            float(ratio).hex(),
            float(drift).hex() if finite(drift) else None,
        )
    return None


def _order(record: Mapping[str, Any]) -> tuple[Any, ...]:
    kind = record.get("kind")
    return (
        str(record.get("model")),
        CERTIFY_KINDS.index(kind) if kind in CERTIFY_KINDS else 9,
        str(record.get("scenario")),
        int(record.get("run") or 0),
        str(record.get("param_id")),
    )


def dedupe(records: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[tuple[str, str]], str]:
    """Certify records with a verdict, copies merged into the first (lowest run); the merged
    (duplicate, kept) pairs; and the key that recognised them ('' when nothing was merged)."""
    kept: list[dict[str, Any]] = []
    seen: dict[tuple[Any, ...], str] = {}
    merged: list[tuple[str, str]] = []
    bases: set[str] = set()
    for record in sorted(records, key=_order):
        key = duplicate_key(record)
        if key is not None and (record.get("kind"), *key[1]) in seen:
            merged.append((str(record.get("param_id")), seen[(record.get("kind"), *key[1])]))
            bases.add(key[0])
            continue
        if key is not None:
            seen[(record.get("kind"), *key[1])] = str(record.get("param_id"))
        kept.append(dict(record))
    if not merged:
        basis = ""
    elif bases == {KEY_WINDOWS}:
        basis = KEY_WINDOWS
    else:
        basis = (
            f"{KEY_FALLBACK} (fallback: records without a window digest)"
            if bases == {KEY_FALLBACK}
            else f"{KEY_WINDOWS}; {KEY_FALLBACK} for records without a window digest"
        )
    return kept, merged, basis


# --------------------------------------------------------------------------- benchmarks


def benchmark_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per benchmark item that produced a score, with its delta against the model's baseline.

    Items that failed only because their logits were not finite keep their row: the score is then a
    regression (argmax of NaN picks choice 0), not a missing result.
    """
    done = [
        r
        for r in records
        if r.get("kind") == "benchmark" and r.get("outcome") in ("passed", "failed") and r.get("accuracy") is not None
    ]
    baseline = {(r["model"], r["benchmark"]): r for r in done if r["variant"] == "baseline"}
    rows = []
    for r in sorted(done, key=lambda r: (r["model"], r["variant"] != "baseline", r["variant"], r["benchmark"])):
        base = baseline.get((r["model"], r["benchmark"]))
        row = {
            "model": r["model"],
            "variant": r["variant"],
            "task": r["benchmark"],
            "accuracy": r["accuracy"],
            "stderr": r.get("stderr"),
            "n": r.get("n"),
            "finite_logits": r.get("finite_logits", True),
            "seconds": r.get("seconds"),
            "delta": None,
            "se": None,
            "regressed": None,
        }
        if base is not None and r["variant"] != "baseline":
            n = int(r.get("n") or base.get("n") or 0) or None
            row["delta"] = r["accuracy"] - base["accuracy"]
            row["se"] = regression_se(base["accuracy"], n) if n else None
            row["regressed"] = ((not row["finite_logits"]) or is_regression(base["accuracy"], r["accuracy"], n)) if n else None
        rows.append(row)
    return rows


def lm_eval_truth(
    rows: Iterable[Mapping[str, Any]],
    edits: Iterable[tuple[str, str]] = (),
    configured: Mapping[str, set[str]] | None = None,
    absent: Mapping[tuple[str, str, str], tuple[str, bool]] | None = None,
) -> dict[tuple[str, str], LmEvalTruth]:
    """Per (model, edit): regressed on any benchmark (the B200 bash harness's rule) over every configured task, or unknown.

    rows: `benchmark_rows`. edits: (model, edit) pairs to judge besides those with rows. configured: model ->
    the tasks the suite scores on its baseline and on every edit (default: the tasks of its rows). absent:
    (model, variant, task) -> (why it has no score, pending) for benchmark items that produced none; a
    configured score with neither a row nor an entry is 'not run' (pending). An edit whose model has no task
    configured gets regressed None and no missing score: its expectation is its truth by design.
    """
    scores: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sizes: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    broken: set[tuple[str, str]] = set()
    tasks: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        key = (row["model"], row["variant"])
        scores[key][row["task"]] = row["accuracy"]
        tasks[row["model"]].add(row["task"])
        if row.get("n"):
            sizes[key][row["task"]] = int(row["n"])
        if not row.get("finite_logits", True):
            broken.add(key)
    for model, named in (configured or {}).items():
        tasks[model] |= set(named)
    absent = absent or {}
    out: dict[tuple[str, str], LmEvalTruth] = {}
    for model, variant in sorted({*edits, *(k for k in scores if k[1] != "baseline")}):
        missing: list[str] = []
        pending = True
        for task in sorted(tasks.get(model, ())):
            for side in ("baseline", variant):
                if task not in scores.get((model, side), {}):
                    why, not_run = absent.get((model, side, task), ("not run", True))
                    missing.append(f"{task} on {side}: {why}")
                    pending = pending and not_run
        if missing:
            out[(model, variant)] = LmEvalTruth(None, tuple(missing), pending)
        elif tasks.get(model):
            base, mine = scores[(model, "baseline")], scores[(model, variant)]
            regressed = (model, variant) in broken or bool(regressed_tasks(base, mine, sizes[(model, variant)]))
            out[(model, variant)] = LmEvalTruth(regressed)
        else:
            out[(model, variant)] = LmEvalTruth(None)
    return out


def _absent_scores(
    records: Iterable[Mapping[str, Any]], scored: set[tuple[str, str, str]]
) -> dict[tuple[str, str, str], tuple[str, bool]]:
    """(model, variant, task) -> (why no score, pending) for the benchmark records that gave no score."""
    out: dict[tuple[str, str, str], tuple[str, bool]] = {}
    for r in records:
        key = (str(r.get("model")), str(r.get("variant")), str(r.get("benchmark")))
        if r.get("kind") != "benchmark" or key in scored:
            continue
        if r.get("outcome") == "skipped":
            out[key] = (f"skipped ({r.get('reason') or 'no reason given'})", True)
        elif is_errored(r):
            out[key] = (f"errored ({_one_line(error_reason(r))})", False)
        else:
            out[key] = ("no score recorded", False)
    return out


def _one_line(text: str, limit: int = 120) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


# --------------------------------------------------------------------------- outcomes


def _noop_gates(record: Mapping[str, Any]) -> tuple[str, ...]:
    if is_errored(record):
        return ("pipeline error",)
    gates = list(record.get("failed_gates") or [])
    if record.get("failure"):
        gates.append("no report")
    if record.get("degraded"):
        gates.append("degraded")
    if record.get("invalid"):
        gates.append("invalid")
    return tuple(gates)


def outcomes(
    judged: Iterable[Mapping[str, Any]],
    errored: Iterable[Mapping[str, Any]],
    truth: Mapping[tuple[str, str], LmEvalTruth],
) -> tuple[list[EditOutcome], list[ErrorOutcome], list[NoopOutcome]]:
    edits: list[EditOutcome] = []
    errors: list[ErrorOutcome] = []
    noops: list[NoopOutcome] = []
    for failed, group in ((False, judged), (True, errored)):
        for r in group:
            kind, model, scenario, run = r.get("kind"), str(r["model"]), str(r["scenario"]), int(r.get("run") or 0)
            item = str(r.get("param_id") or "")
            degraded = bool(r.get("degraded")) and not failed
            if kind == "calibration":
                alarm = failed or _flagged(r)
                noops.append(NoopOutcome(model, run, alarm, _noop_gates(r) if alarm else (), degraded, item=item))
            elif kind in ("clean", "stress") or (kind == "error" and r.get("expectation") == "signal"):
                flagged = _flagged(r) and not failed
                lm_eval = truth.get((model, scenario), LmEvalTruth(None))
                edits.append(
                    EditOutcome(
                        model=model,
                        scenario=scenario,
                        run=run,
                        flagged=flagged,
                        regressed=lm_eval.regressed,
                        expected_regression=kind != "clean",
                        degraded=degraded,
                        informational=r.get("expectation") == "signal",
                        signal=bool(r.get("signal", flagged)) and not failed,
                        errored=failed,
                        item=item,
                        truth_unknown="; ".join(lm_eval.missing),
                        truth_pending=bool(lm_eval.missing) and lm_eval.pending,
                    )
                )
            elif kind == "error":
                detected = bool(r.get("detected")) and not failed
                errors.append(ErrorOutcome(model, scenario, run, detected, degraded, failed, item=item))
    return edits, errors, noops


def _table(certify: list[dict[str, Any]], bench: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per model: met/total for each certify kind, benchmarks done, mean ratio of clean edits."""
    rows = []
    for model in sorted({r["model"] for r in certify} | {r["model"] for r in bench}):
        row: dict[str, Any] = {"model": model}
        for kind in CERTIFY_KINDS:
            mine = [r for r in certify if r["model"] == model and r["kind"] == kind and r.get("outcome") != "skipped"]
            row[kind] = (sum(bool(r.get("met")) for r in mine), len(mine))
        row["benchmark"] = sum(1 for r in bench if r["model"] == model)
        ratios = [r["ratio"] for r in certify if r["model"] == model and r["kind"] == "clean" and finite(r.get("ratio"))]
        row["clean_ratio"] = statistics.fmean(ratios) if ratios else None
        rows.append(row)
    return rows


def compile_records(
    records: Iterable[Mapping[str, Any]],
    *,
    items: Iterable[str] | None = None,
    item_fields: Mapping[str, Mapping[str, Any]] | None = None,
    not_selected: Iterable[str] | None = None,
    min_signal_fraction: float = DEFAULT_MIN_SIGNAL_FRACTION,
) -> Compiled:
    """The verdict of a campaign. `items`: the suite's item ids (param ids), so items without a record are
    listed as not run; without it, the records define the campaign. `item_fields`: per suite item its
    `ITEM_FIELDS` (kind, expectation, model, variant, benchmark), so an item without a record is charged to
    the criterion it would have measured and an edit's configured lm-eval tasks are known. `not_selected`:
    the suite items this session did not select (they are 'not selected', not merely 'not run')."""
    rows: list[dict[str, Any]] = [dict(r) for r in records]
    records = rows
    fields = dict(item_fields or {})
    certify = [r for r in records if r.get("kind") in CERTIFY_KINDS]
    judged, merged, merge_key = dedupe(r for r in certify if has_verdict(r))
    errored_certify = [r for r in certify if is_errored(r)]
    bench = benchmark_rows(records)
    configured: dict[str, set[str]] = defaultdict(set)
    for r in [*fields.values(), *records]:
        if r.get("kind") == "benchmark" and r.get("benchmark"):
            configured[str(r.get("model"))].add(str(r["benchmark"]))
    edit_keys = {(str(r["model"]), str(r["scenario"])) for r in certify if r.get("kind") in ("clean", "stress")}
    scored = {(row["model"], row["variant"], row["task"]) for row in bench}
    truth = lm_eval_truth(bench, edit_keys, configured, _absent_scores(records, scored))
    edits, errors, noops = outcomes(judged, errored_certify, truth)
    by_id = {str(r.get("param_id")): r for r in records}
    item_ids = list(dict.fromkeys(items)) if items is not None else list(by_id)
    errored_all = sorted((pid, error_reason(r)) for pid, r in by_id.items() if is_errored(r))
    skipped = sorted(
        (pid, str(r.get("reason") or "no reason given")) for pid, r in by_id.items() if r.get("outcome") == "skipped"
    )
    not_run = tuple(sorted(pid for pid in item_ids if pid not in by_id))  # the same for every source of the item list
    roles = {
        pid: role_of(source.get("kind"), source.get("expectation"))
        for pid in item_ids
        if (source := by_id.get(pid) or fields.get(pid)) is not None
    }
    accounting = Accounting(
        suite_items=len(item_ids),
        with_verdict=sum(has_verdict(r) for r in by_id.values()),
        errored=tuple(errored_all),
        skipped=tuple(skipped),
        not_run=not_run,
        merged=tuple(merged),
        merge_key=merge_key,
        not_selected=tuple(sorted(set(not_run) & set(not_selected or ()))),
        roles=roles,
    )
    phase0 = phase0_verdict(edits, errors, noops=noops, min_signal_fraction=min_signal_fraction, accounting=accounting)
    return Compiled(
        phase0=phase0,
        table=_table(certify, bench),
        certify=certify,
        benchmarks=bench,
        lm_eval=truth,
        pipeline_errors=[r for r in records if is_errored(r)],
        skipped=[r for r in records if r.get("outcome") == "skipped"],
        labels={**phase0.labels(), **{dup: f"merged into {kept}" for dup, kept in merged}},
    )


def campaign_options(campaign: Mapping[str, Any]) -> dict[str, Any]:
    """`compile_records` keyword arguments from a final_verdict.json `campaign` block (`VERDICT_INPUTS`), so every
    recompilation of a verdict (the report command, an evidence pack's verifier) uses the inputs it was made with."""
    options: dict[str, Any] = {}
    if campaign.get("items") is not None:
        options["items"] = list(campaign["items"])
    for key in ("item_fields", "not_selected", "min_signal_fraction"):
        if campaign.get(key) is not None:
            options[key] = campaign[key]
    return options
