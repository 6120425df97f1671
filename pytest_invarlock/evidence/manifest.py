"""What a pack says about its run: the manifest, and the files it covers.

The manifest holds the suite and options, the seeds, package versions, torch/CUDA/driver/GPU names,
model revisions, every item's record, the Phase 0 block, and the sha256 and size of every other file
in the pack. It is built from the run directory alone (records, reports, the store) and never
imports torch: versions come from `importlib.metadata`, the driver and GPU names from NVML.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import sys
import time
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from pytest_invarlock.store import CHECKSUM_FIELD
from pytest_invarlock.verdict.compile import VERDICT_INPUTS

SCHEMA = "pytest-invarlock.evidence-pack/1"
MANIFEST = "manifest.json"
ENVELOPE = "manifest.dsse.json"
CONTROL_FILES = (MANIFEST, ENVELOPE)  # the files the manifest cannot list (it is one; the other signs it)
PACKAGES = (
    "pytest-invarlock",
    "invarlock",
    "torch",
    "transformers",
    "accelerate",
    "tokenizers",
    "safetensors",
    "lm-eval",
    "pytest",
    "pytest-xdist",
    "cryptography",
    "nvidia-ml-py",
    "huggingface-hub",
    "numpy",
)


def sha256_file(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            sha.update(block)
    return sha.hexdigest()


def file_entries(root: Path, relpaths: Iterable[str]) -> dict[str, dict[str, Any]]:
    return {rel: {"sha256": sha256_file(root / rel), "size": (root / rel).stat().st_size} for rel in sorted(relpaths)}


def strip_seal(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as compiled: without the store's own checksum field."""
    return {k: v for k, v in record.items() if k != CHECKSUM_FIELD}


def package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def cuda_runtime() -> str | None:
    """The CUDA runtime torch was installed with (its nvidia-cuda-runtime wheel, or a +cuXXX tag)."""
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").lower()
        if name.startswith("nvidia-cuda-runtime"):
            return f"{name} {dist.version}"
    try:
        local = metadata.version("torch").partition("+")[2]
    except metadata.PackageNotFoundError:
        return None
    return local or None


def gpu_environment() -> dict[str, Any]:
    """Driver and GPU names through NVML (no CUDA context); empty lists where NVML sees nothing."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return {"driver": None, "gpus": []}
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            gpus.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory_gb": round(pynvml.nvmlDeviceGetMemoryInfo(handle).total / 2**30, 1),
                }
            )
        return {"driver": driver.decode() if isinstance(driver, bytes) else str(driver), "gpus": gpus}
    except Exception as exc:
        return {"driver": None, "gpus": [], "error": str(exc)}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def environment() -> dict[str, Any]:
    versions = package_versions()
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "packages": versions,
        "torch": versions.get("torch"),
        "cuda_runtime": cuda_runtime(),
        **gpu_environment(),
    }


def seeds(records: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Every seed a record names (window and bootstrap seeds, ...), per item."""
    out = {}
    for record in records:
        found = {k: v for k, v in record.items() if "seed" in k.lower()}
        if found:
            out[str(record.get("param_id"))] = found
    return dict(sorted(out.items()))


def build_manifest(
    *,
    verdict: Mapping[str, Any],
    records: list[dict[str, Any]],
    files: Mapping[str, Mapping[str, Any]],
    revisions: Mapping[str, Any],
    env: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest of one pack; `verdict` is the run's final_verdict.json (header + Phase 0 block)."""
    campaign = verdict.get("campaign") or {}
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "suite": {
            "name": verdict.get("suite"),
            "file": verdict.get("suite_file"),
            "options": campaign.get("options"),
            **{key: campaign.get(key) for key in VERDICT_INPUTS},
        },
        "seeds": seeds(records),
        "environment": dict(env) if env is not None else environment(),
        "model_revisions": dict(revisions),
        "records": sorted(records, key=lambda r: str(r.get("param_id"))),
        "phase0": verdict.get("phase0"),
        "files": dict(files),
    }


def dumps(manifest: Mapping[str, Any]) -> bytes:
    """The manifest's bytes (what is signed): sorted keys, so rebuilding the same manifest gives the same bytes."""
    return (json.dumps(manifest, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8")
