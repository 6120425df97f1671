"""`python -m pytest_invarlock report RUN_DIR`: compile every record in a run directory into the verdict and report.

Records are per item (`records/<item>.json`), so shards of one campaign that share a run directory
just add files; this command reads all of them (also in subfolders), keeps the newest record of each
item, and writes what a session writes at its end: `reports/final_verdict.{json,txt}`, the
`analysis/` CSVs and JSON (through `verdict.render.write_reports`) and `reports/report.html`. It
says which suite items have no record: not run yet, or their shard is missing or incomplete.

The suite's items come from `--suite` when given (the suite as written: command-line overrides of the
run are not known here), else from the campaign block of an earlier `final_verdict.json` in the run
directory; without either the records define the campaign. Records whose item definition changed
since (a stale `definition_key`) are left out and counted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from pytest_invarlock.records import RECORDS_DIR


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run directory (its records/ folder)")
    parser.add_argument(
        "--suite",
        default=None,
        help="suite name or YAML, to list the items without a record "
        "(default: the campaign of the run directory's final_verdict.json)",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the status line and the paths")


def load_records(run_dir: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Every record under RUN_DIR/records, the newest per item; and one warning per file that could not be used."""
    from pytest_invarlock.store import DamagedError, read_json_sealed

    newest: dict[str, dict[str, Any]] = {}
    warnings = []
    for path in sorted((run_dir / RECORDS_DIR).rglob("*.json")):
        try:
            record = read_json_sealed(path)
        except (DamagedError, OSError) as exc:
            warnings.append(f"record {path} skipped: {exc}")
            continue
        pid = record.get("param_id")
        if not pid:
            warnings.append(f"record {path} skipped: it names no item (param_id)")
            continue
        old = newest.get(pid)
        if old is None or (record.get("ended") or 0) >= (old.get("ended") or 0):
            newest[pid] = record
    return list(newest.values()), warnings


def _campaign(run_dir: Path, suite: str | None) -> tuple[dict[str, Any] | None, str | None, str | None]:
    """(campaign block with items -> definition keys, suite name, suite file) from --suite or an earlier verdict."""
    if suite:
        from pytest_invarlock.campaign.items import build_items
        from pytest_invarlock.campaign.suite import load_suite
        from pytest_invarlock.records import campaign_block

        loaded = load_suite(suite)
        return campaign_block(build_items(loaded), min_signal_fraction=loaded.min_signal_fraction), loaded.name, str(loaded.path)
    try:
        verdict = json.loads((run_dir / "reports" / "final_verdict.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None, None
    campaign = verdict.get("campaign") if isinstance(verdict, dict) else None
    return (
        campaign if isinstance(campaign, dict) and isinstance(campaign.get("items"), dict) else None,
        verdict.get("suite"),
        verdict.get("suite_file"),
    )


def run(args: argparse.Namespace) -> int:
    from pytest_invarlock.campaign.suite import SuiteError
    from pytest_invarlock.report import page_header, write_report
    from pytest_invarlock.store import StoreError
    from pytest_invarlock.verdict.compile import campaign_options, compile_records
    from pytest_invarlock.verdict.render import write_reports

    run_dir = args.run_dir.expanduser().resolve()
    if not (run_dir / RECORDS_DIR).is_dir():
        print(
            f"report: {run_dir} has no {RECORDS_DIR}/ folder: pass the --run-dir of a validation run (e.g. validation-runs/tiny)"
        )
        return 2
    try:
        campaign, suite_name, suite_file = _campaign(run_dir, args.suite)
    except SuiteError as exc:
        print(f"report: {exc}")
        return 2
    records, warnings = load_records(run_dir)
    stale = 0
    if campaign is not None:
        keys = campaign["items"]
        kept = [r for r in records if keys.get(r["param_id"]) in (None, r.get("definition_key")) and r["param_id"] in keys]
        stale = sum(1 for r in records if r["param_id"] in keys and keys[r["param_id"]] != r.get("definition_key"))
        extra = len(records) - len(kept) - stale
        if extra:
            warnings.append(f"{extra} record(s) of items outside the suite left out")
        records = kept
    if stale:
        warnings.append(f"{stale} record(s) from an older definition of their item left out (rerun those items)")
    if not records:
        print(f"report: no usable record in {run_dir / RECORDS_DIR}" + ("".join(f"\n  {w}" for w in warnings)))
        return 1
    if campaign is not None:  # the campaign as a whole, not the session that last wrote its verdict
        campaign = {**campaign, "not_selected": None}
    compiled = compile_records(records, **campaign_options(campaign or {}))
    header: dict[str, Any] = {
        "suite": suite_name or "?",
        "suite_file": suite_file,
        "run_dir": str(run_dir),
        "records": len(records),
        "compiled_by": "python -m pytest_invarlock report",
    }
    if campaign is not None:
        header["campaign"] = campaign
    try:
        paths = write_reports(compiled, run_dir, header=header)
        html = write_report(records, compiled, run_dir=run_dir, header=page_header(header))
    except StoreError as exc:
        print(f"report: could not write the reports: {exc}")
        return 1
    accounting = compiled.phase0.accounting
    if args.quiet:
        print(compiled.phase0.status_line)
    else:
        print(compiled.phase0.render_text())
    if accounting is not None and accounting.not_run:
        print(
            f"{len(accounting.not_run)} suite item(s) have no record (not run, or a shard missing or incomplete): "
            + ", ".join(accounting.not_run[:20])
            + (" ..." if len(accounting.not_run) > 20 else "")
        )
    elif campaign is None:
        print("(no suite known: pass --suite to list the items without a record)")
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"wrote {len(paths)} verdict and analysis files under {run_dir} and {html}")
    return 0
