"""Certificates and benchmark scores are cached under keys that name how they were computed.

A certificate made in throughput mode (TF32, cuDNN autotuning) is not the one `--determinism strict`
asks for, and one made by another InvarLock, torch or transformers (lm-eval for scores) may differ
too. The worker's own key code runs here on a stand-in worker that stops at the store, so each test
reads the key a product would be stored under.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from pathlib import Path
from types import SimpleNamespace

import pytest

from pytest_invarlock.campaign.items import build_items
from pytest_invarlock.campaign.suite import load_suite
from pytest_invarlock.worker.pipeline import Worker

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

ITEMS = build_items(load_suite("tiny"))
MODEL = ITEMS[0].model
EDIT = next(item for item in ITEMS if item.kind == "clean")
BENCHMARK = next(item for item in ITEMS if item.benchmark and item.variant == "baseline")


class Stored(Exception):
    """Raised where the product would be looked up in the store, carrying its key."""

    def __init__(self, key: str) -> None:
        self.key = key


def store_at(key: str, *_: object, **__: object) -> None:
    raise Stored(key)


def stand_in(determinism: str, device: str = "cuda") -> SimpleNamespace:
    """What calibration(), _certify(), baseline_report() and _benchmark() use of a Worker, up to the store."""
    suite = load_suite("tiny")
    return SimpleNamespace(
        state=SimpleNamespace(options=SimpleNamespace(determinism=determinism), device=device, suite=suite),
        baseline=lambda model: SimpleNamespace(path=Path("/store/baselines/b-0123"), reused=False),
        preset=lambda model: ({"spectral_max_caps": 5}, Path("/store/presets/p-4567/preset.yaml"), False),
        baseline_report=lambda model, item: (Path("/store/reports/r-89ab/report.json"), False),
        edited_model=lambda model, scenario, item: SimpleNamespace(path=Path("/store/edits/e-cdef"), reused=False),
        settings=lambda model, **run: SimpleNamespace(seq_len=128, **run),
        _settings_key=lambda settings: dict(vars(settings)),
        edit_dir=lambda model, scenario: Path("/store/edits/e-cdef"),
        weights_digest=lambda model: "0" * 64,
        _shared=lambda *what: contextlib.nullcontext(),
        _once=lambda kind, name, make: make(),
        _verdict_artifact=store_at,
        store=SimpleNamespace(produce=lambda kind, key, build: store_at(key)),
    )


def key_of(method, *args):
    """The key under which the real `Worker.method` would look its product up."""

    def key(determinism: str, device: str = "cuda") -> str:
        with pytest.raises(Stored) as stored:
            method(stand_in(determinism, device), *args)
        return stored.value.key

    key.__name__ = method.__name__
    return key


certificate_key = key_of(Worker.calibration, MODEL, 1)
edit_certificate_key = key_of(Worker._certify, EDIT)
baseline_report_key = key_of(Worker.baseline_report, MODEL, EDIT)
score_key = key_of(Worker._benchmark, BENCHMARK)
CERTIFICATES = [certificate_key, edit_certificate_key, baseline_report_key]


@pytest.mark.parametrize("key", [*CERTIFICATES, score_key])
def test_strict_never_reuses_a_throughput_product_on_a_gpu(key):
    assert key("strict") != key("throughput")
    assert key("strict") == key("strict")  # and the same mode still reuses


@pytest.mark.parametrize("key", [*CERTIFICATES, score_key])
def test_on_cpu_the_mode_changes_nothing_and_the_product_is_reused(key):
    assert key("strict", "cpu") == key("throughput", "cpu")
    assert key("strict", "cpu") != key("strict", "cuda")


def versions(monkeypatch, **changed: str) -> None:
    """importlib.metadata answers `changed` versions (package name with _ for -), the installed ones otherwise."""
    real = importlib.metadata.version
    changed = {name.replace("_", "-"): version for name, version in changed.items()}
    monkeypatch.setattr(importlib.metadata, "version", lambda name: changed.get(name) or real(name))


@pytest.mark.parametrize(
    ("key", "package"),
    [
        *((key, package) for key in CERTIFICATES for package in ("invarlock", "torch", "transformers")),
        *((score_key, package) for package in ("lm_eval", "torch", "transformers")),
    ],
)
def test_another_package_version_is_another_product(monkeypatch, key, package):
    before = key("throughput")
    versions(monkeypatch, **{package: "99.0"})
    assert key("throughput") != before


@pytest.mark.parametrize(("key", "package"), [*((key, "lm_eval") for key in CERTIFICATES), (score_key, "invarlock")])
def test_a_package_that_does_not_compute_a_product_leaves_its_key(monkeypatch, key, package):
    before = key("throughput")
    versions(monkeypatch, **{package: "99.0"})
    assert key("throughput") == before
