"""The GPUs clusters hand out, at the driver API boundary: a MIG node and an 8 x MI300X node.

Fakes of NVML (`helpers.mig_node`: an A100-SXM4-80GB cut into 7 x 1g.10gb slices) and of amdsmi
(`helpers.mi300x_node`: 8 x MI300X, 192 GB each) answer as those nodes' drivers do. From them on
everything is the real code: the inventory, the memory plan (`plan_rows`, the --gpu-plan table),
the policy's placements of the suite's tasks, and the environment each worker or multi-GPU child is
started with (`cuda_env`). Real xdist runs on the same fakes: test_xdist_pytester.py.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import MI300X_VRAM_BYTES, MIB, MIG_SLICE_BYTES, mi300x_node, mig_node, mig_uuid
from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.campaign.suite.checks import SuiteError
from pytest_invarlock.scheduling import probe
from pytest_invarlock.scheduling.inventory import ROCM, Gpu
from pytest_invarlock.scheduling.memory import GIB
from pytest_invarlock.scheduling.placement import GpuHomes, cuda_env
from pytest_invarlock.scheduling.plan_table import format_plan_table, plan_rows
from pytest_invarlock.scheduling.policy import Policy
from pytest_invarlock.scheduling.rocm import probe_amd, sysfs_devices
from pytest_invarlock.scheduling.tasks import task_id, tasks_from_items
from pytest_invarlock.state import gpu_require_idle, idle_gpus

# Four models whose items need about 6 (small), 20 (7B), 137 (70B) and 340 GB (180B) on a GPU.
SUITE = """
name: nodes
device: auto
invarlock: {dataset: local}
runs: {calibration: 2, clean: 1, stress: 0, error: 0}
errors: false
models:
  - {name: small, source: ./small, size_class: small, dtype: float16, params_b: 0.1,
     architecture: {layers: 4, heads: 8, kv_heads: 8, head_dim: 64}, invarlock: {seq_len: 128, eval_batch: 1}}
  - {name: mid, source: ./mid, size_class: 7b, dtype: bfloat16, params_b: 7,
     architecture: {layers: 32, heads: 32, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 1}}
  - {name: large, source: ./large, size_class: 70b, dtype: bfloat16, params_b: 70,
     architecture: {layers: 80, heads: 64, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 1}}
  - {name: huge, source: ./huge, size_class: 70b, dtype: bfloat16, params_b: 180,
     architecture: {layers: 96, heads: 96, kv_heads: 8, head_dim: 128}, invarlock: {seq_len: 1024, eval_batch: 1}}
scenarios: [calibration, quant_rtn_8bit_clean]
benchmarks: {tasks: []}
"""


@pytest.fixture
def items(tmp_path: Path):
    path = tmp_path / "nodes.yaml"
    path.write_text(SUITE)
    return build_items(load_suite(str(path)))


@pytest.fixture
def no_visibility(monkeypatch):
    for name in ("CUDA_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def on_mig_node(monkeypatch, **node) -> list[Gpu]:
    monkeypatch.setitem(sys.modules, "pynvml", mig_node(**node))
    return probe.probe_gpus()


def on_mi300x_node(monkeypatch, **node) -> list[Gpu]:
    monkeypatch.setitem(sys.modules, "pynvml", None)  # no NVIDIA driver there
    monkeypatch.setitem(sys.modules, "amdsmi", mi300x_node(**node))
    monkeypatch.setattr(probe, "torch_is_rocm", lambda: True)
    return probe.probe_gpus()


def run_policy(items, gpus: list[Gpu], workers: int):
    """Every assignment the policy makes when each task ends as soon as it is placed, and what it gives up on."""
    policy = Policy(tasks_from_items(items), gpus)
    homes = GpuHomes([gpu.index for gpu in gpus])
    for n in range(workers):
        policy.add_worker(f"gw{n}", homes.assign(f"gw{n}"))
    placed, queued = {}, []
    while True:
        made = policy.schedule()
        queued += made
        placed.update({a.task.id: a for a in made})
        if not queued:
            break
        head = queued.pop(0)
        policy.finished(head.worker, head.task.id)
    assert policy.done
    return placed, policy.unplaceable


# --------------------------------------------------------------------------- a MIG node


def test_mig_slices_are_inventoried_one_by_one_with_their_own_memory(no_visibility):
    gpus = on_mig_node(no_visibility)
    assert [(g.index, g.bind_id, g.total_gb, round(g.free_gb, 3), g.processes) for g in gpus] == [
        (slot, mig_uuid(slot), MIG_SLICE_BYTES / GIB, 9.487, 0) for slot in range(7)
    ]
    assert all(g.mig and g.name == "NVIDIA A100-SXM4-80GB MIG 1g.10gb" for g in gpus)
    assert max(g.total_gb for g in gpus) == 9.5  # never the parent GPU's 80 GB


@pytest.mark.parametrize(
    ("visible", "slots"),
    [
        (mig_uuid(4), [4]),  # what Slurm exports on a MIG node
        (f"{mig_uuid(6)},{mig_uuid(2)}", [6, 2]),
        ("0", list(range(7))),  # the parent GPU's index: all of its slices
        ("GPU-5e2a", list(range(7))),  # its UUID too
        ("MIG-nosuchslice", []),
    ],
)
def test_a_mig_node_honours_cuda_visible_devices(no_visibility, visible, slots):
    no_visibility.setenv("CUDA_VISIBLE_DEVICES", visible)
    gpus = on_mig_node(no_visibility)
    assert [(g.index, g.bind_id) for g in gpus] == [(i, mig_uuid(slot)) for i, slot in enumerate(slots)]


def test_empty_mig_slots_are_skipped(no_visibility):
    gpus = on_mig_node(no_visibility, empty_slots=(1, 5))
    assert [g.bind_id for g in gpus] == [mig_uuid(slot) for slot in (0, 2, 3, 4, 6)]


def test_the_plan_on_a_mig_node_fits_slices_and_never_combines_them(no_visibility, items):
    gpus = on_mig_node(no_visibility)
    index = {(item.test, item.param_id): item for item in items}
    nodeids = [f"validation/test_certify.py::{item.test}[{item.param_id}]" for item in items]
    rows = plan_rows(index, gpus, nodeids, lambda item: None)
    lines = format_plan_table(rows, gpus)
    assert lines[0] == f"GPUs: 7 x 9.5 GB MIG slice, 7.5 GB usable each; {len(items)} item(s)"
    fits = {row.nodeid.split("::")[-1]: row.fits for row in rows}
    assert fits == {f"{item.test}[{item.param_id}]": item.model.name == "small" and item.kind == "calibration" for item in items}
    assert lines[-1].startswith("placement: 2 of 12 item(s) placed (2 on 1 GPU); 10 unplaceable")
    mid = [row for row in rows if row.model == "mid"]
    assert format_plan_table(mid, gpus)[-1] == "placement: 0 of 3 item(s) placed; 3 unplaceable"

    placed, unplaceable = run_policy(items, gpus, workers=7)
    assert sorted(placed) == sorted(task_id(i) for i in items if i.model.name == "small" and i.kind == "calibration")
    assert all(len(a.devices) == 1 for a in placed.values())
    edit = next(task_id(i) for i in items if i.model.name == "small" and i.kind != "calibration")
    assert unplaceable[edit].startswith("needs 8.2 GB on 2 GPU(s); this node offers 7 x 7.5 GB usable")
    assert "MIG slices are never combined" in unplaceable[edit]
    assert len(unplaceable) == len(items) - 2  # 7B and larger do not fit a 10 GB slice, nor any two of them


def test_each_worker_on_a_mig_node_is_bound_to_its_own_slice(no_visibility):
    gpus = on_mig_node(no_visibility)
    homes = GpuHomes([g.index for g in gpus])
    envs = [cuda_env([homes.assign(f"gw{n}")], gpus) for n in range(7)]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == [mig_uuid(slot) for slot in range(7)]


# --------------------------------------------------------------------------- an 8 x MI300X node


def test_mi300x_gpus_are_read_from_amdsmi_in_hip_order(no_visibility):
    gpus = on_mi300x_node(no_visibility)
    assert [(g.index, g.bind_id, g.platform, g.processes) for g in gpus] == [(i, str(i), ROCM, 0) for i in range(8)]
    assert {(g.total_gb, round(g.free_gb, 2), g.name) for g in gpus} == {(MI300X_VRAM_BYTES / GIB, 191.71, "AMD Instinct MI300X")}


def test_without_hip_ids_amdsmi_order_numbers_the_gpus(no_visibility):
    no_visibility.setenv("HIP_VISIBLE_DEVICES", "8a1b2c3d4e5f6003")  # a torch-style UUID: the serial of HIP id 3
    gpus = on_mi300x_node(no_visibility, enumeration=False)
    assert [(g.index, g.bind_id) for g in gpus] == [(0, "1")]  # amdsmi lists HIP id 3 second


@pytest.mark.parametrize(
    ("env", "bound"),
    [
        ({"ROCR_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),  # what Slurm exports for a job's GPUs
        ({"ROCR_VISIBLE_DEVICES": "2,3", "HIP_VISIBLE_DEVICES": "1"}, ["3"]),  # HIP counts within ROCr's list
        ({"CUDA_VISIBLE_DEVICES": "7,6"}, ["7", "6"]),  # HIP honours CUDA_VISIBLE_DEVICES when HIP_ is unset
        ({"HIP_VISIBLE_DEVICES": "GPU-51a2b3c4d5e6f705"}, ["5"]),
    ],
)
def test_an_mi300x_node_honours_rocm_visibility(no_visibility, env, bound):
    for name, value in env.items():
        no_visibility.setenv(name, value)
    gpus = on_mi300x_node(no_visibility)
    assert [(g.index, g.bind_id) for g in gpus] == list(enumerate(bound))


def test_the_plan_on_an_mi300x_node_and_how_a_two_gpu_item_is_bound(no_visibility, items):
    gpus = on_mi300x_node(no_visibility)
    index = {(item.test, item.param_id): item for item in items}
    nodeids = [f"validation/test_certify.py::{item.test}[{item.param_id}]" for item in items]
    lines = format_plan_table(plan_rows(index, gpus, nodeids, lambda item: None), gpus)
    assert lines[0] == f"GPUs: 8 x 191.984 GB ROCm (191.7 GB free), 186.9 GB usable each; {len(items)} item(s)"
    assert lines[-1] == "placement: 12 of 12 item(s) placed (9 on 1 GPU, 3 on 2 GPUs); 0 unplaceable; across GPUs: huge"

    placed, unplaceable = run_policy(items, gpus, workers=8)
    assert not unplaceable and len(placed) == len(items)
    width = {i.model.name: len(placed[task_id(i)].devices) for i in items}
    assert width == {"small": 1, "mid": 1, "large": 1, "huge": 2}  # 70B in bf16 fits one MI300X
    huge = next(a for a in placed.values() if a.task.model == "huge")
    first, second = (str(d) for d in huge.devices)
    assert cuda_env(list(huge.devices), gpus) == {
        "ROCR_VISIBLE_DEVICES": f"{first},{second}",
        "HIP_VISIBLE_DEVICES": "0,1",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }


def test_a_worker_on_an_mi300x_node_is_bound_through_rocr(no_visibility):
    no_visibility.setenv("ROCR_VISIBLE_DEVICES", "4,5,6,7")  # a Slurm job's half of the node
    gpus = on_mi300x_node(no_visibility)
    homes = GpuHomes([g.index for g in gpus])
    envs = [cuda_env([homes.assign(f"gw{n}")], gpus) for n in range(4)]
    assert envs == [
        {"ROCR_VISIBLE_DEVICES": str(4 + n), "HIP_VISIBLE_DEVICES": "0", "CUDA_VISIBLE_DEVICES": "0"} for n in range(4)
    ]


def test_amd_gpus_count_only_under_a_rocm_torch(no_visibility):
    no_visibility.setitem(sys.modules, "pynvml", None)
    no_visibility.setitem(sys.modules, "amdsmi", mi300x_node())
    no_visibility.setattr(probe, "torch_is_rocm", lambda: False)  # a CUDA or CPU build cannot use them
    assert probe.probe_gpus() == []


def test_without_amdsmi_the_driver_sysfs_gives_vram_in_pci_order(tmp_path, no_visibility):
    drm = tmp_path / "drm"
    cards = {"card0": ("0000:03:00.0", "0x1a03", None), "card1": ("0000:c1:00.0", "0x1002", 206_141_652_992),
             "card2": ("0000:0c:00.0", "0x1002", 206_141_652_992)}  # fmt: skip
    for card, (address, vendor, total) in cards.items():
        device = tmp_path / "pci" / address
        device.mkdir(parents=True)
        (device / "vendor").write_text(vendor + "\n")
        if total:
            (device / "mem_info_vram_total").write_text(f"{total}\n")
            (device / "mem_info_vram_used").write_text(f"{(300 if card == 'card1' else 200) * MIB}\n")
        (drm / card).mkdir(parents=True)
        (drm / card / "device").symlink_to(device)
    (drm / "card1-DP-1").mkdir()  # a connector, not a card
    assert [(d.ordinal, d.used_bytes // MIB) for d in sysfs_devices(drm)] == [(0, 200), (1, 300)]  # 0c:00.0 first
    no_visibility.setitem(sys.modules, "amdsmi", None)
    no_visibility.setenv("ROCR_VISIBLE_DEVICES", "1")
    assert [(g.index, g.bind_id, g.platform, g.processes) for g in probe_amd(drm=drm)] == [(0, "1", ROCM, 0)]


# --------------------------------------------------------------------------- GPUs with other processes


def test_gpus_with_other_processes_are_left_out_and_said_so(no_visibility):
    gpus = on_mi300x_node(no_visibility, busy=(5,))
    warnings: list[str] = []
    kept = idle_gpus(gpus, warnings)
    assert [g.bind_id for g in kept] == ["0", "1", "2", "3", "4", "6", "7"]
    assert warnings == [
        "left out GPU(s) running other processes (--gpu-require-idle): GPU 5 (AMD Instinct MI300X, 1 process); "
        "--no-gpu-require-idle shares them"
    ]


def test_a_node_whose_every_gpu_is_busy_is_a_usage_error_with_the_fix(no_visibility):
    no_visibility.setenv("CUDA_VISIBLE_DEVICES", mig_uuid(3))
    gpus = on_mig_node(no_visibility, busy_slots=(3,))
    with pytest.raises(
        SuiteError, match=r"every GPU visible here runs other processes \(GPU 0 \(NVIDIA A100.*--no-gpu-require-idle"
    ):
        idle_gpus(gpus, [])


def test_a_run_without_xdist_binds_itself_to_the_idle_slices(pytester, no_visibility):
    """The process that runs the items itself sees only the devices it may use, as a worker would."""
    no_visibility.setitem(sys.modules, "pynvml", mig_node(busy_slots=(0,)))
    no_visibility.setenv("CUDA_VISIBLE_DEVICES", "0")  # GPU 0: all of its slices (and restored after the test)
    pytester.makefile(".yaml", suite=SUITE)
    result = pytester.runpytest_inprocess("--suite", "suite.yaml", "--run-dir", "run", "--co", "-q", "-p", "no:cacheprovider")
    assert result.ret == pytest.ExitCode.NO_TESTS_COLLECTED  # the suite's test modules are not in this directory
    assert os.environ["CUDA_VISIBLE_DEVICES"] == ",".join(mig_uuid(slot) for slot in range(1, 7))


def test_the_option_wins_over_the_suite_setting(tmp_path):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE + "gpu_require_idle: false\n")
    suite = load_suite(str(path))
    given = lambda value: SimpleNamespace(getoption=lambda name, default=None: value)  # noqa: E731
    assert [gpu_require_idle(given(value), suite) for value in (None, True, False)] == [False, True, False]
    path.write_text(SUITE + "gpu_require_idle: sometimes\n")
    with pytest.raises(
        SuiteError,
        match="key 'gpu_require_idle': expected true or false, got 'sometimes'. Write gpu_require_idle: true or false.",
    ):
        load_suite(str(path))
