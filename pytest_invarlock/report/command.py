"""`python -m pytest_invarlock report RUN_DIR`: compile every record in a run directory into the verdict and report.

Records are per item (`records/<item>.json`), so the nodes of one campaign that share a run directory
just add files; this command reads all of them (also in subfolders), keeps the newest record of each
item, and writes what a session writes at its end: `reports/final_verdict.{json,txt}`, the
`analysis/` CSVs and JSON (through `verdict.render.write_reports`) and `reports/report.html`.

It never claims more than it has. The campaign's items come from its manifest (`campaign/manifest.json`,
written by the first node of a `--campaign-node` or `--shard` campaign), else from `--suite` (the suite as
written: command-line overrides of the run are not known here), else from the campaign block of an earlier
`final_verdict.json`. With a manifest it names every node that did not finish (never started, died,
stopped, still running), every item without a record and who owned it, and every node's arguments; in a
claimed campaign an item counts only once its node finished its claim. The last line is COMPLETE or
INCOMPLETE (and why), and the exit status follows it: 0 only for a complete campaign. Records whose item
definition changed since (a stale `definition_key`) are left out and counted.
"""

from __future__ import annotations

import argparse
import json
import shlex
from dataclasses import dataclass
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
    from pytest_invarlock.campaign.suite.checks import SuiteError
    from pytest_invarlock.claims import read_manifest
    from pytest_invarlock.store import DamagedError

    run_dir = args.run_dir.expanduser().resolve()
    try:
        manifest = read_manifest(run_dir)
    except DamagedError as exc:
        print(f"report: the campaign manifest cannot be trusted: {exc}. Rerun one node to rewrite it.")
        return 2
    if manifest is None and not (run_dir / RECORDS_DIR).is_dir():
        print(
            f"report: {run_dir} has no {RECORDS_DIR}/ folder: pass the --run-dir of a validation run (e.g. validation-runs/tiny)"
        )
        return 2
    if manifest is not None:
        if args.suite and args.suite not in (manifest.get("suite"), manifest.get("suite_file")):
            print(
                f"report: {run_dir} holds a campaign of suite {manifest.get('suite')!r}, not {args.suite!r}: leave --suite out."
            )
            return 2
        return _merge(run_dir, _campaign_of(manifest), manifest.get("suite"), manifest.get("suite_file"), args, manifest)
    try:
        campaign, suite_name, suite_file = _campaign(run_dir, args.suite)
    except SuiteError as exc:
        print(f"report: {exc}")
        return 2
    return _merge(run_dir, campaign, suite_name, suite_file, args, None)


def _campaign_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The verdict header's campaign block from a campaign's manifest: the suite's items the campaign's options
    left out count as not selected (the verdict's scope), not as missing work."""
    left_out = dict(manifest.get("left_out") or {})
    return {
        "items": {**manifest["definitions"], **left_out},
        "item_fields": manifest.get("item_fields"),
        "not_selected": sorted(left_out),
        "min_signal_fraction": manifest.get("min_signal_fraction"),
    }


def _merge(
    run_dir: Path,
    campaign: dict[str, Any] | None,
    suite_name: str | None,
    suite_file: str | None,
    args: argparse.Namespace,
    manifest: dict[str, Any] | None,
) -> int:
    """Compile the campaign's records, write the reports, print the verdict and whether the campaign is complete."""
    from pytest_invarlock.report import page_header, write_report
    from pytest_invarlock.store import StoreError
    from pytest_invarlock.verdict.compile import campaign_options, compile_records
    from pytest_invarlock.verdict.render import write_reports

    records, warnings = load_records(run_dir) if (run_dir / RECORDS_DIR).is_dir() else ([], [])
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
    nodes = node_lines(run_dir, manifest, records) if manifest is not None else None
    if nodes is not None:
        records = [r for r in records if r["param_id"] in nodes.done]
    if not records:
        print(f"report: no usable record in {run_dir / RECORDS_DIR}" + "".join(f"\n  {w}" for w in warnings))
        if nodes is not None:
            print("\n".join(nodes.lines))
        print(f"INCOMPLETE: {len(campaign['items']) if campaign else 'all'} item(s) have no record.")
        return 1
    if campaign is not None and manifest is None:  # the campaign as a whole, not the session that last wrote its verdict
        campaign = {**campaign, "not_selected": None}
    compiled = compile_records(records, **campaign_options(campaign or {}))
    accounting = compiled.phase0.accounting
    missing = (
        [pid for pid in accounting.not_run if pid not in accounting.not_selected]
        if accounting is not None and campaign is not None
        else []
    )
    status = _status_line(campaign, missing, nodes)
    header: dict[str, Any] = {
        "suite": suite_name or "?",
        "suite_file": suite_file,
        "run_dir": str(run_dir),
        "records": len(records),
        "compiled_by": "python -m pytest_invarlock report",
        "partial": False if status.startswith("COMPLETE") else status,
    }
    if campaign is not None:
        header["campaign"] = {**campaign, **(nodes.header if nodes is not None else {})}
    try:
        paths = write_reports(compiled, run_dir, header=header)
        html = write_report(records, compiled, run_dir=run_dir, header=page_header(header))
    except StoreError as exc:
        print(f"report: could not write the reports: {exc}")
        return 1
    print(compiled.phase0.status_line if args.quiet else compiled.phase0.render_text())
    if nodes is not None:
        print("\n".join(nodes.lines))
    elif missing:
        print(
            f"{len(missing)} suite item(s) have no record (not run, or a shard missing or incomplete): "
            + ", ".join(missing[:20])
            + (" ..." if len(missing) > 20 else "")
        )
    for warning in warnings:
        print(f"warning: {warning}")
    print(f"wrote {len(paths)} verdict and analysis files under {run_dir} and {html}")
    print(status)
    return 0 if status.startswith("COMPLETE") else 1


def _status_line(campaign: dict[str, Any] | None, missing: list[str], nodes: NodeReport | None) -> str:
    """The last line: COMPLETE, or INCOMPLETE and why (the exit status follows it)."""
    if campaign is None:
        return (
            "INCOMPLETE: unknown campaign: the run directory holds no campaign manifest and no earlier verdict, so the "
            "records alone cannot say what is missing; pass --suite (and the options the run used)"
        )
    work = len(campaign["items"]) - len(campaign.get("not_selected") or ())
    if missing:
        unfinished = f"; nodes not finished: {', '.join(nodes.unfinished)}" if nodes is not None and nodes.unfinished else ""
        return f"INCOMPLETE: {len(missing)} of {work} item(s) have no record{unfinished}"
    return f"COMPLETE: every one of the {work} item(s) has a record"


@dataclass(frozen=True)
class NodeReport:
    """What the merge says about a campaign's nodes and the items they did not finish."""

    lines: list[str]
    done: set[str]
    unfinished: list[str]
    header: dict[str, Any]


def node_lines(run_dir: Path, manifest: dict[str, Any], records: list[dict[str, Any]]) -> NodeReport:
    """Every node's state and arguments, and each item without a record with who owned it and why."""
    from pytest_invarlock.claims import manifest_items, nodes_alive, read_claims, read_node_runs
    from pytest_invarlock.scheduling.claim_policy import campaign_status, done_items

    mode, count = manifest.get("mode", "claims"), int(manifest["nodes"])
    claims = (
        read_claims(run_dir)
        if mode == "claims"
        else {pid: {"node": owner} for pid, owner in (manifest.get("owners") or {}).items()}
    )
    done = done_items(manifest["definitions"], records, claims if mode == "claims" else None)
    runs = read_node_runs(run_dir)
    status = campaign_status(
        manifest_items(manifest), count, runs, nodes_alive(run_dir, count), claims, done, sharded=mode == "shards"
    )
    what = "node" if mode == "claims" else "shard"
    how = "items claimed at run time" if mode == "claims" else "a fixed split (--shard)"
    lines = [
        f"campaign: {count} {what}(s), {how}; manifest written by {manifest.get('created_by')} on {manifest.get('host')} "
        f"at {manifest.get('created')}; {len(done)} of {len(manifest['definitions'])} item(s) done"
    ]
    for state in status.nodes:
        sessions = runs.get(state.node, [])
        lines.append(f"  {what} {state.node}/{count}: {state.state} {state.detail}".rstrip())
        lines += [f"    session {i}: {shlex.join(str(a) for a in run.get('args') or [])}" for i, run in enumerate(sessions, 1)]
    if status.missing:
        lines.append(f"items without a record ({len(status.missing)}):")
        lines += [f"  {pid}: {why}" for pid, why in status.missing]
    header = {
        "mode": mode,
        "nodes": count,
        "node_states": {str(s.node): f"{s.state} {s.detail}".strip() for s in status.nodes},
        "node_args": {str(k): [run.get("args") for run in sessions] for k, sessions in sorted(runs.items())},
        "missing": dict(status.missing),
    }
    unfinished = [f"{s.node}/{count} ({s.state})" for s in status.nodes if not s.complete]
    return NodeReport(lines, done, unfinished, header)
