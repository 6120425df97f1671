"""GPU inventory: --gpus specs, CUDA_VISIBLE_DEVICES, and NVML probing (faked; no driver here)."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest

from pytest_invarlock.scheduling.inventory import (
    Gpu,
    format_gpu_spec,
    host_cache_share,
    host_ram_bytes,
    parse_gpu_spec,
    probe_gpus,
    visible_indices,
)
from pytest_invarlock.scheduling.memory import GIB


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
def test_visible_indices_follow_cuda(value, visible):
    assert visible_indices(value, UUIDS) == visible


class FakeNvml(SimpleNamespace):
    """Just enough of pynvml for probe_gpus; device 1 cannot list its processes (as on some vGPUs)."""

    class NVMLError(Exception):
        pass

    def __init__(self, fail_init: bool = False) -> None:
        super().__init__(shut_down=False)
        self.fail_init = fail_init
        self.devices = [
            dict(uuid=b"GPU-aa11", name=b"NVIDIA H100 80GB HBM3", total=80 * GIB, free=70 * GIB, procs=[1, 2]),
            dict(uuid="GPU-bb22", name="NVIDIA H100 80GB HBM3", total=80 * GIB, free=80 * GIB, procs=None),
            dict(uuid="GPU-cc33", name="NVIDIA A10", total=24 * GIB, free=20 * GIB, procs=[]),
        ]

    def nvmlInit(self):
        if self.fail_init:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index):
        return self.devices[index]

    def nvmlDeviceGetUUID(self, handle):
        return handle["uuid"]

    def nvmlDeviceGetName(self, handle):
        return handle["name"]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle["total"], free=handle["free"], used=handle["total"] - handle["free"])

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        if handle["procs"] is None:
            raise self.NVMLError("Not Supported")
        return handle["procs"]


def test_probe_reads_visible_devices(monkeypatch):
    nvml = FakeNvml()
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,GPU-aa")
    assert probe_gpus() == [
        Gpu(index=2, total_gb=24.0, free_gb=20.0, processes=0, name="NVIDIA A10"),
        Gpu(index=0, total_gb=80.0, free_gb=70.0, processes=2, name="NVIDIA H100 80GB HBM3"),
    ]
    assert nvml.shut_down


def test_probe_counts_unlisted_processes_as_none(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml())
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert [g.processes for g in probe_gpus()] == [2, 0, 0]


def test_probe_without_a_driver_is_empty(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml(fail_init=True))
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
