"""The GPU scheduler with real pytest-xdist workers, on CPU, with simulated GPUs and no InvarLock.

Each run is a pytest subprocess in a sandbox whose test module defines its own `test_calibration`
and `test_edit` (the plugin parametrizes them from the sandbox suite) that only log who ran what,
where and when. The suite's three models need about 10, 30 and 140 GB per item (their KV caches,
see test_scheduling.SUITE). Usable memory after the safety margin and worker residue: 80 GB -> 75, 24 GB -> 20.6.
"""

from __future__ import annotations

import csv
import json
import os
import re
import xml.etree.ElementTree as ET
from collections import defaultdict

import pytest

from helpers import SCHED_SUITE as SUITE
from helpers import fake_driver_dir, mig_uuid

USABLE_GB = {80: 75.0, 24: 20.6}
SUITE_ITEMS = 12  # 3 models x (2 calibrations + 2 clean edits)

TEST_MODULE = """
import json, os, time
from pytest_invarlock.state import STATE_KEY
from pytest_invarlock.scheduling.placement import placement_devices


def _run(request, item):
    start = time.time()
    if item.param_id == os.environ.get("CRASH_ITEM"):
        os._exit(3)
    if item.param_id == os.environ.get("CRASH_ONCE_ITEM") and not os.path.exists(os.environ["ITEM_LOG"] + ".crashed"):
        open(os.environ["ITEM_LOG"] + ".crashed", "w").write(os.environ.get("CUDA_VISIBLE_DEVICES") or "")
        os._exit(3)
    time.sleep(0.1)
    record = {"worker": os.environ.get("PYTEST_XDIST_WORKER"), "visible": os.environ.get("CUDA_VISIBLE_DEVICES"),
              "order": os.environ.get("CUDA_DEVICE_ORDER"), "item": item.param_id, "model": item.model.name,
              "kind": item.kind, "placement": placement_devices(request.config.stash[STATE_KEY].run_dir, request.config.stash[STATE_KEY].session, item),
              "start": start, "end": time.time()}
    with open(os.environ["ITEM_LOG"], "a") as log:
        log.write(json.dumps(record) + "\\n")
    assert item.param_id != os.environ.get("FAIL_ITEM"), "failing on purpose"


def test_calibration(invarlock_item, request):
    _run(request, invarlock_item)


def test_edit(invarlock_item, request):
    _run(request, invarlock_item)


def test_plain():
    pass
"""

CONFTEST = """
import json, os, sys

import pytest


def pytest_configure(config):
    workerinput = getattr(config, "workerinput", None)
    if workerinput is not None:  # the GPU binding must already be in place here
        names = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
        with open(os.environ["BINDINGS_LOG"], "a") as log:
            log.write(json.dumps([workerinput["workerid"], {n: os.environ.get(n) for n in names}]) + "\\n")


def pytest_runtest_setup(item):
    if item.name == "invarlock-spacer":  # the scheduler released a held item
        with open(os.environ["SPACER_LOG"], "a") as log:
            log.write(item.config.workerinput["workerid"] + "\\n")


@pytest.fixture(scope="module", autouse=True)
def module_resource():
    yield  # a module-scoped fixture: the spacer must tear it down cleanly between items


def pytest_sessionfinish(session):
    if not hasattr(session.config, "workerinput"):
        with open(os.environ["CONTROLLER_MODULES"], "w") as out:
            json.dump(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "invarlock")), out)
"""


class Sandbox:
    def __init__(self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
        self.pytester, self.path = pytester, pytester.path
        pytester.makefile(".yaml", suite=SUITE)
        pytester.makepyfile(test_items=TEST_MODULE, conftest=CONFTEST)
        for name in (
            "PYTEST_XDIST_WORKER",
            "PYTEST_XDIST_TESTRUNUID",
            "CUDA_VISIBLE_DEVICES",
            "CUDA_DEVICE_ORDER",
            "ROCR_VISIBLE_DEVICES",
            "HIP_VISIBLE_DEVICES",
            "FAIL_ITEM",
            "CRASH_ITEM",
            "CRASH_ONCE_ITEM",
        ):
            monkeypatch.delenv(name, raising=False)
        for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
            monkeypatch.setenv(name, "1")
        monkeypatch.setenv("ITEM_LOG", str(self.path / "items.jsonl"))
        monkeypatch.setenv("BINDINGS_LOG", str(self.path / "bindings.jsonl"))
        monkeypatch.setenv("SPACER_LOG", str(self.path / "spacers.txt"))
        monkeypatch.setenv("CONTROLLER_MODULES", str(self.path / "controller_modules.json"))
        self.monkeypatch = monkeypatch

    def run(self, *args: str, **env: str) -> pytest.RunResult:
        for log in ("items.jsonl", "bindings.jsonl", "spacers.txt"):
            (self.path / log).unlink(missing_ok=True)
        with self.monkeypatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            return self.pytester.runpytest_subprocess("--suite", "suite.yaml", "--run-dir", "run", *args, timeout=120)

    def log(self) -> list[dict]:
        path = self.path / "items.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def spacers(self) -> int:
        path = self.path / "spacers.txt"
        return len(path.read_text().split()) if path.exists() else 0

    def bindings(self) -> dict[str, str]:
        """Worker -> its CUDA_VISIBLE_DEVICES."""
        return {worker: env["CUDA_VISIBLE_DEVICES"] for worker, env in self.binding_envs().items()}

    def binding_envs(self) -> dict[str, dict[str, str | None]]:
        """Worker -> its visibility variables when pytest_configure ran."""
        return dict(json.loads(line) for line in (self.path / "bindings.jsonl").read_text().splitlines())

    def with_drivers(self, node: str, **options: object) -> str:
        """PYTHONPATH that puts a fake GPU driver (helpers.fake_driver_dir) before everything else."""
        drivers = fake_driver_dir(self.path / "drivers", node, **options)
        return os.pathsep.join(filter(None, [str(drivers), os.environ.get("PYTHONPATH")]))

    def need_gb(self) -> dict[str, float]:
        """param_id -> peak GB, from the --gpu-plan CSV."""
        with (self.path / "run" / "analysis" / "memory_plan.csv").open() as handle:
            return {re.search(r"\[(.+)\]$", row["nodeid"]).group(1): float(row["need_gb"]) for row in csv.DictReader(handle)}


@pytest.fixture
def sandbox(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Sandbox:
    return Sandbox(pytester, monkeypatch)


def test_memory_fit_two_gpu_placement_order_and_a_torch_free_controller(sandbox):
    result = sandbox.run("-n", "3", "--gpus", "80,80,24", "--gpu-plan", "-v")
    result.assert_outcomes(passed=SUITE_ITEMS + 1)
    result.stdout.fnmatch_lines(["*scheduling tests via GpuScheduling*", "*invarlock memory plan*"])
    sizes, need, log = {"0": 80, "1": 80, "2": 24}, sandbox.need_gb(), sandbox.log()
    assert len(log) == SUITE_ITEMS and {r["order"] for r in log} == {"PCI_BUS_ID"}
    assert sandbox.bindings() == {"gw0": "0", "gw1": "1", "gw2": "2"}
    on_24 = [r["item"] for r in log if r["visible"] == "2"]
    assert on_24 and all(need[item] <= USABLE_GB[24] for item in on_24), on_24
    for record in log:
        home = int(record["visible"])
        assert record["placement"][0] == home
        assert sum(USABLE_GB[sizes[str(d)]] for d in record["placement"]) >= need[record["item"]]
        if record["model"] == "wide":
            assert {0, 1} <= set(record["placement"]), record  # both 80 GB GPUs
        else:
            assert record["placement"] == [home]
    ends, starts = defaultdict(list), defaultdict(list)
    for record in log:
        (ends if record["kind"] == "calibration" else starts)[record["model"]].append(record)
    for model, edits in starts.items():
        assert max(r["end"] for r in ends[model]) <= min(r["start"] for r in edits), model
    assert json.loads((sandbox.path / "controller_modules.json").read_text()) == []
    assert sandbox.spacers() > 0  # held items were released, without setup errors (assert_outcomes above)


def test_an_item_no_two_gpus_can_hold_is_skipped_with_the_reason(sandbox):
    result = sandbox.run("-n", "2", "--gpus", "80,24,24", "-rs")
    result.assert_outcomes(passed=SUITE_ITEMS - 4 + 1, skipped=4)
    result.stdout.fnmatch_lines(["*SKIPPED*needs 139.9 GB on 2 GPU(s); this node offers 1 x 75.0 GB + 2 x 20.6 GB usable*"])
    assert {r["model"] for r in sandbox.log()} == {"small", "mid"}


def test_an_item_whose_worker_dies_runs_once_more_on_the_other_gpu(sandbox):
    item = "mid-quant_rtn_8bit_clean-run1"
    result = sandbox.run("-n", "2", "--gpus", "2x80", "-v", CRASH_ONCE_ITEM=item)
    result.assert_outcomes(passed=SUITE_ITEMS + 1)
    first = re.search(rf"test_edit\[{item}\]: worker (gw\d) died while running it; it runs once more", result.stdout.str())
    assert first, result.stdout.str()
    died_on = (sandbox.path / "items.jsonl.crashed").read_text()
    rerun = next(r for r in sandbox.log() if r["item"] == item)
    assert rerun["visible"] != died_on  # on the other GPU
    bindings = sandbox.bindings()
    assert bindings["gw2"] == bindings[first.group(1)]  # the replacement got the GPU the crash freed


def test_an_item_whose_worker_dies_twice_is_reported_crashed_and_the_rest_runs(sandbox):
    result = sandbox.run("-n", "2", "--gpus", "2x80", "-v", CRASH_ITEM="mid-quant_rtn_8bit_clean-run1")
    result.assert_outcomes(passed=SUITE_ITEMS, failed=1)
    output = result.stdout.str()
    assert re.search(r"test_edit\[mid-quant_rtn_8bit_clean-run1\]: worker gw\d died while running it", output), output
    assert re.search(r"worker 'gw\d' crashed while running '.*test_edit\[mid-quant_rtn_8bit_clean-run1\]'", output), output
    assert output.count("replacing crashed worker") == 2
    assert len(sandbox.log()) == SUITE_ITEMS - 1


def test_junitxml_k_and_lf_with_two_workers(sandbox):
    failing = "small-quant_rtn_8bit_clean-run2"
    result = sandbox.run("-n", "2", "--gpus", "2x80", "-k", "not wide", "--junitxml=out.xml", FAIL_ITEM=failing)
    result.assert_outcomes(passed=SUITE_ITEMS - 4, failed=1)  # xdist does not count the workers' deselections
    assert {r["model"] for r in sandbox.log()} == {"small", "mid"}
    cases = ET.parse(sandbox.path / "out.xml").getroot().iter("testcase")
    failed = {case.get("name") for case in cases if case.find("failure") is not None}
    assert failed == {f"test_edit[{failing}]"}
    rerun = sandbox.run("-n", "2", "--gpus", "2x80", "--lf")
    rerun.assert_outcomes(passed=1)
    assert [r["item"] for r in sandbox.log()] == [failing]


def test_exitfirst_then_failed_first_with_two_workers(sandbox):
    stopped = sandbox.run("-n", "2", "--gpus", "2x80", "-x", FAIL_ITEM="small-calibration-run1")
    assert stopped.ret == pytest.ExitCode.INTERRUPTED  # what -x gives under xdist's own schedulers too
    stopped.stdout.fnmatch_lines(["*stopping after 1 failures*"])
    assert len(sandbox.log()) < SUITE_ITEMS
    again = sandbox.run("-n", "2", "--gpus", "2x80", "--ff")  # the policy, not the collection order, says what goes first
    again.assert_outcomes(passed=SUITE_ITEMS + 1)


def test_an_explicit_dist_mode_gets_xdists_scheduler(sandbox):
    result = sandbox.run("-n", "2", "--gpus", "2x80", "--dist", "loadfile", "-v", "-k", "test_calibration")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*scheduling tests via LoadFileScheduling*"])
    assert sandbox.bindings() == {"gw0": "0", "gw1": "1"}  # workers are bound to GPUs whatever schedules them


def test_gpu_plan_with_collect_only(sandbox):
    result = sandbox.run("--co", "-q", "--gpus", "80,24,24", "--gpu-plan", "-p", "no:cacheprovider")
    result.stdout.fnmatch_lines(
        [
            "*invarlock memory plan*",
            "GPUs: 1 x 80 GB, 75.0 GB usable each + 2 x 24 GB, 20.6 GB usable each; 12 item(s)",
            "test_calibration?wide-calibration-run1?*139.9*2*needs 139.9 GB on 2 GPU(s)*",
            "placement: 8 of 12 item(s) placed (8 on 1 GPU); 4 unplaceable",
        ]
    )
    assert len(sandbox.need_gb()) == SUITE_ITEMS


def test_an_item_the_scheduler_gives_up_on_is_reported_skipped(pytester):
    """The controller-side report (used when live memory never frees up) reaches the summary and junit."""
    pytester.makeconftest("""
from pytest_invarlock.distribution import report_unplaceable

def pytest_collection_finish(session):
    report_unplaceable(session.config, "test_gone.py::test_big[x]", "needs 99.0 GB on 2 GPU(s); too little free")
""")
    pytester.makepyfile(test_gone="def test_small(): pass")
    result = pytester.runpytest_inprocess("-rs", "--junitxml=out.xml", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [1] test_gone.py: needs 99.0 GB on 2 GPU(s); too little free"])
    skipped = ET.parse(pytester.path / "out.xml").getroot().find(".//testcase[@name='test_big[x]']/skipped")
    assert skipped is not None and "needs 99.0 GB" in skipped.get("message")


# The sandbox suite's `small` model cut to a size whose calibrations fit a 10 GB MIG slice (its edits do not).
MIG_SUITE = SUITE.split("  - {name: mid")[0].replace("params_b: 0.5", "params_b: 0.1").replace("float32", "float16") + (
    "scenarios: [calibration, quant_rtn_8bit_clean]\nbenchmarks: {tasks: []}\n"
)


def test_real_xdist_on_a_mig_node_binds_workers_to_idle_slices(sandbox):
    """The fake NVML of a 7 x 1g.10gb node, slice 2 busy with another process: `-n auto` starts a worker on
    each of the 6 other slices, bound by its UUID."""
    (sandbox.path / "suite.yaml").write_text(MIG_SUITE)
    result = sandbox.run("-n", "auto", "-rs", PYTHONPATH=sandbox.with_drivers("mig", busy_slots=(2,)))
    result.assert_outcomes(passed=2 + 1, skipped=2)  # the calibrations and test_plain; the edits need 8.2 GB
    result.stdout.fnmatch_lines(
        [
            "*left out GPU(s) running other processes (--gpu-require-idle): GPU 2 (NVIDIA A100-SXM4-80GB MIG 1g.10gb, 1 process)*",
            "*SKIPPED*needs 8.2 GB on 2 GPU(s); this node offers 6 x 7.5 GB usable*MIG slices are never combined*",
        ]
    )
    idle = [mig_uuid(slot) for slot in (0, 1, 3, 4, 5, 6)]
    assert sandbox.bindings() == {f"gw{n}": uuid for n, uuid in enumerate(idle)}
    assert {r["visible"] for r in sandbox.log()} <= set(idle)
    assert all(len(r["placement"]) == 1 for r in sandbox.log())


def test_real_xdist_on_an_mi300x_node_binds_workers_through_rocr(sandbox):
    """The fake amdsmi of an 8 x MI300X node, of which Slurm gave this job GPUs 4-7: a 140 GB item fits one GPU."""
    result = sandbox.run("-n", "3", PYTHONPATH=sandbox.with_drivers("mi300x"), ROCR_VISIBLE_DEVICES="4,5,6,7")
    result.assert_outcomes(passed=SUITE_ITEMS + 1)
    assert sandbox.binding_envs() == {
        f"gw{n}": {"ROCR_VISIBLE_DEVICES": str(4 + n), "HIP_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "0"} for n in range(3)
    }
    assert {len(r["placement"]) for r in sandbox.log()} == {1}
