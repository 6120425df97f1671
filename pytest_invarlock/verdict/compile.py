"""Compile item records into the Phase 0 outcomes, the per-model table and the benchmark rows.

Pure and torch-free: it runs on the controller over the records that xdist forwards (or that the
single process produced), and `evidence.verify` runs it again over the records inside a pack, so
the same records always give the same block. A record is the plain dict each item stores through
its `invarlock` user property (see `records`).

Every suite item is accounted for (`Accounting`): an item with a verdict enters Phase 0; an item
that errored (the pipeline crashed, timed out or failed to load: no verdict) enters it too, counted
against its expectation; skipped items are listed with their reasons; suite items without any
record are listed as not run.

Copies are merged before counting: two results of the same model with the same weights and the
same evaluation-window digest (`window_digest`, recorded by runs that draw their own windows) are
one piece of evidence, however many items produced them. Records without a window digest (older
runs) fall back to (model, scenario, ratio and drift bits): bit-identical numbers from the same
scenario can only come from the same windows. The block says how many were merged and by which key.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pytest_invarlock.verdict.phase0 import (
    DEFAULT_MIN_SIGNAL_FRACTION,
    Accounting,
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
KEY_WINDOWS = "model, weights, window digest"
KEY_FALLBACK = "model, scenario, ratio and drift bits"


@dataclass(frozen=True)
class Compiled:
    """Everything the terminal summary and the report files show."""

    phase0: Phase0
    table: list[dict[str, Any]]
    certify: list[dict[str, Any]]
    benchmarks: list[dict[str, Any]]
    regressions: dict[tuple[str, str], bool | None]
    pipeline_errors: list[dict[str, Any]]
    skipped: list[dict[str, Any]]


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
    """(basis, key) under which two certify records are the same evidence; None when it cannot tell."""
    windows = record.get("window_digest")
    if windows:
        weights = record.get("weights") or record.get("variant") or record.get("scenario")
        return KEY_WINDOWS, (record.get("model"), weights, windows)
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


def regressions(rows: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], bool | None]:
    """Per (model, edit): regressed on any benchmark (the seed's rule), None when no benchmark compared it."""
    by_variant: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    sizes: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    broken: set[tuple[str, str]] = set()
    for row in rows:
        key = (row["model"], row["variant"])
        by_variant[key][row["task"]] = row["accuracy"]
        if row.get("n"):
            sizes[key][row["task"]] = int(row["n"])
        if not row.get("finite_logits", True):
            broken.add(key)
    out: dict[tuple[str, str], bool | None] = {}
    for (model, variant), scores in by_variant.items():
        if variant == "baseline":
            continue
        base = by_variant.get((model, "baseline"), {})
        if not base.keys() & scores.keys():
            out[(model, variant)] = None
            continue
        out[(model, variant)] = (model, variant) in broken or bool(regressed_tasks(base, scores, sizes[(model, variant)]))
    return out


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
    regress: Mapping[tuple[str, str], bool | None],
) -> tuple[list[EditOutcome], list[ErrorOutcome], list[NoopOutcome]]:
    edits: list[EditOutcome] = []
    errors: list[ErrorOutcome] = []
    noops: list[NoopOutcome] = []
    for failed, group in ((False, judged), (True, errored)):
        for r in group:
            kind, model, scenario, run = r.get("kind"), str(r["model"]), str(r["scenario"]), int(r.get("run") or 0)
            degraded = bool(r.get("degraded")) and not failed
            if kind == "calibration":
                alarm = failed or _flagged(r)
                noops.append(NoopOutcome(model, run, alarm, _noop_gates(r) if alarm else (), degraded))
            elif kind in ("clean", "stress") or (kind == "error" and r.get("expectation") == "signal"):
                flagged = _flagged(r) and not failed
                edits.append(
                    EditOutcome(
                        model=model,
                        scenario=scenario,
                        run=run,
                        flagged=flagged,
                        regressed=regress.get((model, scenario)),
                        expected_regression=kind != "clean",
                        degraded=degraded,
                        informational=r.get("expectation") == "signal",
                        signal=bool(r.get("signal", flagged)) and not failed,
                        errored=failed,
                    )
                )
            elif kind == "error":
                errors.append(ErrorOutcome(model, scenario, run, bool(r.get("detected")) and not failed, degraded, failed))
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
    min_signal_fraction: float = DEFAULT_MIN_SIGNAL_FRACTION,
) -> Compiled:
    """The verdict of a campaign. `items`: the suite's item ids (param ids), so items without a
    record are listed as not run; without it, the records define the campaign."""
    rows: list[dict[str, Any]] = [dict(r) for r in records]
    records = rows
    certify = [r for r in records if r.get("kind") in CERTIFY_KINDS]
    judged, merged, merge_key = dedupe(r for r in certify if has_verdict(r))
    errored_certify = [r for r in certify if is_errored(r)]
    bench = benchmark_rows(records)
    regress = regressions(bench)
    edits, errors, noops = outcomes(judged, errored_certify, regress)
    by_id = {str(r.get("param_id")): r for r in records}
    item_ids = list(dict.fromkeys(items)) if items is not None else list(by_id)
    errored_all = sorted((pid, error_reason(r)) for pid, r in by_id.items() if is_errored(r))
    skipped = sorted(
        (pid, str(r.get("reason") or "no reason given")) for pid, r in by_id.items() if r.get("outcome") == "skipped"
    )
    accounting = Accounting(
        suite_items=len(item_ids),
        with_verdict=sum(has_verdict(r) for r in by_id.values()),
        errored=tuple(errored_all),
        skipped=tuple(skipped),
        not_run=tuple(sorted(pid for pid in item_ids if pid not in by_id)),  # the same for every source of the item list
        merged=tuple(merged),
        merge_key=merge_key,
    )
    return Compiled(
        phase0=phase0_verdict(edits, errors, noops=noops, min_signal_fraction=min_signal_fraction, accounting=accounting),
        table=_table(certify, bench),
        certify=certify,
        benchmarks=bench,
        regressions=regress,
        pipeline_errors=[r for r in records if is_errored(r)],
        skipped=[r for r in records if r.get("outcome") == "skipped"],
    )
