"""GPU inventory: --gpus specs, visibility variables, and NVML probing of whole GPUs (faked; no driver here).

MIG slices and AMD GPUs: test_gpu_nodes.py."""

from __future__ import annotations

import re
import sys

import pytest

from helpers import FakeNvml
from pytest_invarlock.scheduling.inventory import (
    Gpu,
    Unit,
    format_gpu_spec,
    host_cache_share,
    host_ram_bytes,
    parse_gpu_spec,
    split_busy,
    visible_devices,
)
from pytest_invarlock.scheduling.memory import GIB
from pytest_invarlock.scheduling.probe import probe_gpus


def test_count_times_size():
    gpus = parse_gpu_spec("8x180")
    assert [g.index for g in gpus] == list(range(8))
    assert {(g.total_gb, g.free_gb, g.processes) for g in gpus} == {(180.0, 180.0, 0)}


def test_list_of_sizes_and_mixes():
    assert [g.total_gb for g in parse_gpu_spec("80,80,24")] == [80, 80, 24]
    mixed = parse_gpu_spec(" 2 x 80 , 40.5 ")
    assert [(g.index, g.total_gb) for g in mixed] == [(0, 80), (1, 80), (2, 40.5)]


@pytest.mark.parametrize("spec", ["8y", "", "x80", "8x", "0x80", "8x0", "-1", "80,,24"])
def test_bad_spec_names_itself_and_the_fix(spec):
    with pytest.raises(ValueError) as excinfo:
        parse_gpu_spec(spec)
    message = str(excinfo.value)
    assert message.startswith(f"--gpus {spec!r}: ") and "8x180" in message


UUIDS = ["GPU-aa11", "GPU-bb22", "GPU-bb33"]
WHOLE = [Unit(i, uuid, (uuid,)) for i, uuid in enumerate(UUIDS)]


@pytest.mark.parametrize(
    ("value", "visible"),
    [
        (None, [0, 1, 2]),  # unset: every device
        ("", []),  # set but empty hides everything
        ("2,0", [2, 0]),  # CUDA keeps the listed order
        ("0,5,1", [0]),  # stops at the first entry that names no device
        ("-1", []),
        ("GPU-aa,2", [0, 2]),  # unique UUID prefixes work
        ("GPU-bb", []),  # an ambiguous prefix names no device
        ("1,1", [1]),  # a repeat ends the list: one device is never listed twice
    ],
)
def test_visible_devices_follow_cuda(value, visible):
    assert visible_devices(value, WHOLE) == visible


# GPU 0 in MIG mode with two slices, GPU 1 whole.
MIXED = [Unit(0, "GPU-mm", ("MIG-s1", "GPU-mm")), Unit(0, "GPU-mm", ("MIG-s2", "GPU-mm")), Unit(1, "GPU-ww", ("GPU-ww",))]


@pytest.mark.parametrize(
    ("value", "visible"),
    [
        ("MIG-s2", [1]),  # Slurm on a MIG node: one slice by its UUID
        ("MIG-s2,MIG-s1", [1, 0]),
        ("0", [0, 1]),  # the GPU's index names all of its slices
        ("GPU-mm,1", [0, 1, 2]),  # so does its UUID
        ("MIG-s", []),  # two slices: ambiguous
        ("MIG-s1,0", [0]),  # the GPU again after one of its slices: a repeat
    ],
)
def test_visible_devices_name_mig_slices(value, visible):
    assert visible_devices(value, MIXED) == visible


def three_gpus(**kwargs) -> FakeNvml:
    """An H100 with two processes, an H100 that cannot list them (as some vGPUs), an A10; bytes names (old bindings)."""
    return FakeNvml(
        [
            dict(uuid=b"GPU-aa11", name=b"NVIDIA H100 80GB HBM3", total=80 * GIB, free=70 * GIB, procs=[1, 2], mig_capable=True),
            dict(uuid="GPU-bb22", name="NVIDIA H100 80GB HBM3", total=80 * GIB, free=80 * GIB, procs=None, mig_capable=True),
            dict(uuid="GPU-cc33", name="NVIDIA A10", total=24 * GIB, free=20 * GIB, procs=[]),
        ],
        **kwargs,
    )


def test_probe_reads_visible_devices(monkeypatch):
    nvml = three_gpus()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-aa")
    assert probe_gpus() == [  # numbered as this process sees them, bound by NVML index
        Gpu(index=0, total_gb=24.0, free_gb=20.0, processes=0, name="NVIDIA A10", bind_id="2"),
        Gpu(index=1, total_gb=80.0, free_gb=70.0, processes=2, name="NVIDIA H100 80GB HBM3", bind_id="0"),
    ]
    assert nvml.shut_down


def test_probe_counts_unlisted_processes_as_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", three_gpus())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = probe_gpus()
    assert [g.processes for g in gpus] == [2, 0, 0]
    assert [(g.index, g.bind_id, g.mig) for g in gpus] == [(0, "0", False), (1, "1", False), (2, "2", False)]


def test_probe_without_a_driver_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", three_gpus(fail_init=True))
    assert probe_gpus() == []


def test_probe_without_nvidia_ml_py_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    assert probe_gpus() == []


def test_probe_on_this_machine_without_a_driver():
    pynvml = pytest.importorskip("pynvml")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        assert probe_gpus() == []
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present: the no-driver path cannot be exercised here")


def test_busy_devices_are_split_off():
    gpus = [Gpu(0, 80, 70, 2, "a"), Gpu(1, 80, 80, 0, "b"), Gpu(2, 24, 20, 0, "c")]
    assert split_busy(gpus) == (gpus[1:], gpus[:1])


def test_free_memory_after_a_colon():
    gpus = parse_gpu_spec("8x80:78.5")
    assert len(gpus) == 8 and {(g.total_gb, g.free_gb) for g in gpus} == {(80.0, 78.5)}
    mixed = parse_gpu_spec("80:79, 80:79,24:23,2x180")
    assert [(g.total_gb, g.free_gb) for g in mixed] == [(80, 79), (80, 79), (24, 23), (180, 180), (180, 180)]
    assert format_gpu_spec(mixed) == "2x80:79,24:23,2x180"
    assert parse_gpu_spec(format_gpu_spec(mixed)) == mixed


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("80:81", "81 GB free on a 80 GB GPU; free memory cannot exceed the total"),
        ("8x80:", "cannot read '8x80:'"),
        ("80:-1", "cannot read '80:-1'"),
        ("80:79:78", "cannot read '80:79:78'"),
    ],
)
def test_bad_free_memory_is_refused_with_the_syntax(spec, message):
    with pytest.raises(ValueError, match=re.escape(message)) as excinfo:
        parse_gpu_spec(spec)
    assert "8x80:78.5" in str(excinfo.value)


def test_host_cache_budget_is_node_wide():
    assert host_cache_share(8, total_bytes=2**40) == 2**40 // 2 // 8
    assert host_cache_share(1, total_bytes=64 * 2**30) == 32 * 2**30
    assert 0 < host_cache_share(2) <= host_ram_bytes() // 4
    with pytest.raises(ValueError, match="at least one worker"):
        host_cache_share(0)
