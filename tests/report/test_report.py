"""The HTML report from records: figure data, the page's marks and self-containment, the report command (shards)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from helpers import synthetic_records
from pytest_invarlock.cli import main
from pytest_invarlock.report import render_report
from pytest_invarlock.report.data import heatmap, report_data, timeline
from pytest_invarlock.store import write_json_sealed
from pytest_invarlock.verdict.compile import compile_records

ALLOWED_URLS = {"http://www.w3.org/2000/svg", "http://www.w3.org/1999/xlink"}  # XML namespaces, never fetched


def _page(records: list[dict], run_dir: Path = Path("/runs/x")) -> str:
    compiled = compile_records(records, items=[r["param_id"] for r in records])
    return render_report(records, compiled, run_dir=run_dir, header={"suite": "tiny", "run_dir": str(run_dir)})


def test_timeline_draws_the_latest_campaign_window_one_bar_per_item() -> None:
    records = synthetic_records("tiny", lanes=2)
    earlier = synthetic_records("tiny", lanes=2, start=1.6e9, session="old")[:5]
    for r in earlier:
        r["param_id"] += "-old"
    skipped = {**records[0], "param_id": "skipped-one", "outcome": "skipped", "reason": "no GPU"}
    data = timeline([*records, *earlier, skipped])
    assert len(data.bars) == 46 and data.not_drawn == 5 and data.lanes == ["GPU 0", "GPU 1"]
    assert all(b.end > b.start >= 0 for b in data.bars)
    shard = [{**r, "session": "shard2", "host": "node2", "param_id": r["param_id"] + "-s2"} for r in records[:10]]
    merged = timeline([*records, *shard])  # shards running at the same time share the window, lanes per host
    assert len(merged.bars) == 56 and "node2:GPU 0" in merged.lanes and merged.sessions == 2


def test_heatmap_has_a_cell_per_model_and_scenario_with_the_failed_gates() -> None:
    records = synthetic_records("full", lanes=8)
    data = heatmap(records)
    assert len(data.models) == 6 and len(data.cells) == len(data.models) * len(data.scenarios)
    svd = next(c for c in data.cells if c.scenario.startswith("svd") and c.kind == "clean")
    assert svd.gates == {"spec": 1} and svd.flagged == 1 and svd.remediated == 1 and "spec" in svd.label
    nan = next(c for c in data.cells if c.scenario == "nan_injection")
    assert "no report" in nan.gates


def test_page_is_self_contained_and_carries_every_mark() -> None:
    records = synthetic_records("tiny", lanes=2)
    page = _page(records)
    urls = set(re.findall(r"""(?:https?:)?//[^\s"'<>)]+""", page))
    assert urls <= ALLOWED_URLS, urls - ALLOWED_URLS
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=", page)
    assert len(set(re.findall(r'id="timeline-bar-(\d+)"', page))) == 46
    assert len(set(re.findall(r'id="heat-cell-(\d+)"', page))) == 20  # 1 model x 20 scenarios
    certify = [r for r in records if r["kind"] != "benchmark"]
    assert len(set(re.findall(r'id="ratio-pt-(\d+)"', page))) == len(certify)
    assert all(f'id="confusion-{c}"' in page for c in ("tp", "fp", "fn", "tn"))
    assert page.count("<tr class=") == 46 and "<title>tiny-kjv-calibration-run1" in page  # table rows, hover text
    data = report_data(records, compile_records(records).benchmarks, Path("/runs/x/reports"))
    assert data.rows[0].link == "../store/results/r-tiny-kjv-calibration-run1/reports/eval/evaluation.report.json"
    print(f"report size, tiny suite (46 items): {len(page.encode()) / 1024:.0f} KiB")


def test_report_size_for_a_simulated_full_suite() -> None:
    records = synthetic_records("full", lanes=8)
    page = _page(records)
    assert len(records) == 438 and len(set(re.findall(r'id="timeline-bar-(\d+)"', page))) == 438
    size = len(page.encode())
    print(f"report size, full suite (438 items, synthetic): {size / 1024:.0f} KiB")
    assert size < 3_000_000  # no bundled library: the SVG marks and the table are all there is


def test_report_command_merges_shards_and_names_the_missing_items(tmp_path: Path, capsys) -> None:
    records = synthetic_records("tiny", lanes=2)
    for i, record in enumerate(records):
        if i % 3 == 2:
            continue  # a shard that never ran
        record["session"] = f"shard{i % 3}"
        write_json_sealed(tmp_path / "records" / f"{record['param_id']}.json", record)
    (tmp_path / "records" / "junk.json").write_text("{not json")
    assert main(["report", str(tmp_path), "--suite", "tiny"]) == 1  # incomplete: never a success
    out = capsys.readouterr().out
    missing = [r["param_id"] for i, r in enumerate(records) if i % 3 == 2]
    assert f"{len(missing)} suite item(s) have no record" in out and missing[0] in out
    assert out.rstrip().endswith(f"INCOMPLETE: {len(missing)} of 46 item(s) have no record")
    assert "junk.json skipped" in out
    verdict = json.loads((tmp_path / "reports" / "final_verdict.json").read_text())
    assert sorted(verdict["phase0"]["accounting"]["not_run"]) == sorted(missing)
    page = (tmp_path / "reports" / "report.html").read_text()
    assert len(set(re.findall(r'id="timeline-bar-(\d+)"', page))) == 46 - len(missing)
    assert (tmp_path / "analysis" / "invarlock_results.csv").is_file()
    # the next call finds the suite's items in the verdict it wrote
    assert main(["report", str(tmp_path), "--quiet"]) == 1
    assert f"{len(missing)} suite item(s) have no record" in capsys.readouterr().out
    for record in records:  # the missing items arrive: complete
        write_json_sealed(tmp_path / "records" / f"{record['param_id']}.json", record)
    assert main(["report", str(tmp_path), "--quiet"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("COMPLETE: every one of the 46 item(s) has a record")


def test_report_command_without_a_known_campaign_says_it_cannot_tell_what_is_missing(tmp_path: Path, capsys) -> None:
    for record in synthetic_records("tiny", lanes=2)[:3]:
        write_json_sealed(tmp_path / "records" / f"{record['param_id']}.json", record)
    assert main(["report", str(tmp_path)]) == 1
    assert "INCOMPLETE: unknown campaign" in capsys.readouterr().out


def test_report_command_on_a_directory_without_records_says_what_to_pass(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 2
    assert "has no records/ folder" in capsys.readouterr().out
