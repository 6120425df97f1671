"""Readable paths into the content-addressed store, where the earlier harnesses' documents send people looking.

    presets/calibrated_preset_<model>.{yaml,json}
    <model>/certificates/calibration/run_<k>/evaluation.report.json
    <model>/certificates/<scenario>/run_<k>/evaluation.report.json
    <model>/certificates/errors/<scenario>/evaluation.report.json   (+ rmt_probe.json / ve_probe.json; run_<k>/ from run 2)
    <model>/reports -> certificates                                 (the evidence-pack document's name for the tree)
    <model>/evals/<variant>_results.json                            (written: the variant's lm-eval scores by task)

Relative symbolic links into `store/` (the run directory can move), made as each item's record arrives
and refreshed from the campaign's records at the end of the session, so they show what the verdict used;
an item without a report loses its stale link. For people only: InvarLock never sees these paths, which
name models (the store's hex keys exist because InvarLock guesses a model's family from its path).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest

from pytest_invarlock.campaign.items import item_from_nodeid
from pytest_invarlock.state import ConfigState
from pytest_invarlock.store import StoreError, write_json_atomic
from pytest_invarlock.terminal import VerdictReporter

REPORT_NAME = "evaluation.report.json"
# Top-level names of the run directory: a model with one of these names gets no tree of links.
RESERVED = frozenset({"store", "records", "reports", "analysis", "state", "logs", "presets", "models", "queue", "workers"})
BENCHMARK_FIELDS = ("accuracy", "stderr", "n", "finite_logits", "seconds", "weights", "revision")


def certificate_dir(record: Mapping[str, Any]) -> Path | None:
    """Where a certify record's report is shown, relative to the run directory; None for other records."""
    model, scenario, run, kind = record.get("model"), record.get("scenario"), int(record.get("run") or 1), record.get("kind")
    if kind not in ("calibration", "clean", "stress", "error") or not model or str(model) in RESERVED:
        return None
    base = Path(str(model)) / "certificates"
    if kind == "calibration":
        return base / "calibration" / f"run_{run}"
    if kind == "error":
        return base / "errors" / str(scenario) / ("" if run == 1 else f"run_{run}")
    return base / str(scenario) / f"run_{run}"


def links_of(record: Mapping[str, Any]) -> dict[Path, Path | None]:
    """Link (relative to the run directory) -> store file it points at (None: remove a stale link)."""
    links: dict[Path, Path | None] = {}
    where = certificate_dir(record)
    if where is not None:
        report = record.get("report")
        links[where / REPORT_NAME] = Path(report) if report else None
        probe = record.get("probe_file")
        if probe:
            links[where / Path(probe).name] = Path(probe)
    preset = record.get("preset")
    if preset and record.get("model") and str(record["model"]) not in RESERVED:
        for suffix in (".yaml", ".json"):
            links[Path("presets") / f"calibrated_preset_{record['model']}{suffix}"] = Path(preset).with_suffix(suffix)
    return links


def evals_files(records: Iterable[Mapping[str, Any]]) -> dict[Path, dict[str, Any]]:
    """<model>/evals/<variant>_results.json: every scored benchmark of that variant, by task."""
    files: dict[Path, dict[str, Any]] = {}
    for record in records:
        if record.get("kind") != "benchmark" or record.get("accuracy") is None or str(record.get("model")) in RESERVED:
            continue
        path = Path(str(record["model"])) / "evals" / f"{record['variant']}_results.json"
        entry = files.setdefault(path, {"model": record["model"], "variant": record["variant"], "results": {}})
        entry["results"][str(record["benchmark"])] = {k: record.get(k) for k in BENCHMARK_FIELDS}
    return files


def place_link(run_dir: Path, link: Path, target: Path | None) -> None:
    """Point `run_dir/link` at `target` (relative, replaced atomically); remove it when `target` is None or
    lies outside the run directory (a shard's record from a host that mounts it elsewhere)."""
    path = run_dir / link
    if target is not None and not target.is_relative_to(run_dir):
        target = target.resolve()
    if target is None or not target.is_relative_to(run_dir) or not target.exists():
        if path.is_symlink():
            path.unlink()
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    relative = os.path.relpath(target, path.parent)
    if path.is_symlink() and os.readlink(path) == relative:
        return
    staging = path.with_name(f".{path.name}.{os.getpid()}.link")
    staging.unlink(missing_ok=True)
    staging.symlink_to(relative)
    staging.replace(path)


class StoreLinks:
    """Keeps the links and evals files current on the controller; see the module docstring."""

    def __init__(self, state: ConfigState, verdict: VerdictReporter) -> None:
        self.state = state
        self.verdict = verdict  # its records (this session's, by param id) and, at the end, the campaign's

    def update(self, records: Iterable[Mapping[str, Any]], *, evals_from: Iterable[Mapping[str, Any]] = ()) -> None:
        run_dir = self.state.run_dir.resolve()
        try:
            model_dirs = {Path(str(r["model"])) for r in records if r.get("model") and str(r["model"]) not in RESERVED}
            for record in records:
                for link, target in links_of(record).items():
                    place_link(run_dir, link, target)
            for model_dir in model_dirs:
                if (run_dir / model_dir / "certificates").is_dir() and not (run_dir / model_dir / "reports").exists():
                    (run_dir / model_dir / "reports").symlink_to("certificates")
            for path, content in evals_files(evals_from).items():
                write_json_atomic(run_dir / path, content)
        except (OSError, StoreError) as exc:  # the links are a convenience: never let them fail a run
            warning = f"could not update the readable links in {run_dir}: {exc}"
            if warning not in self.state.warnings:
                self.state.warnings.append(warning)

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        item = item_from_nodeid(report.nodeid, self.state.index)
        records = self.verdict.records
        record = records.get(item.param_id) if item is not None else None
        if record is None:
            return
        same = [r for r in records.values() if (r.get("model"), r.get("variant")) == (record.get("model"), record.get("variant"))]
        self.update([record], evals_from=same if record.get("kind") == "benchmark" else ())

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Refresh from the campaign's records (this session's and earlier ones) once the verdict is written."""
        written = self.verdict.written
        if written is not None:
            self.update(written.records, evals_from=written.records)
