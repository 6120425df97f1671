"""Worker side: baseline copies, edited models, and the host-RAM model cache.

Imports torch/transformers lazily, inside functions: the module is imported by the fixtures module,
which the torch-free controller also loads. Every model directory handed to InvarLock is a store
artifact with a neutral hex name (InvarLock infers model family from substrings of the path), so a
baseline and its edits are always read the same way.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.suite.definitions import Model, Scenario
from pytest_invarlock.edit_lifecycle import Needs, make_room
from pytest_invarlock.edits.catalogue import parse_spec
from pytest_invarlock.store import Artifact, Store, content_sha256, digest, stat_signature, verify

log = logging.getLogger("pytest_invarlock")
BASELINE_LAYOUT_VERSION = 1
# What a hub snapshot downloads: config, tokenizer and safetensors weights; a repo published only as
# pytorch_model*.bin gets its .bin shards instead (BIN_PATTERNS). Duplicates in other formats are left out
# (consolidated.* for Mistral's own runtime, original/ for Meta's).
WEIGHT_PATTERNS = ("*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "tokenizer*")
BIN_PATTERNS = ("pytorch_model*.bin",)
IGNORED_PATTERNS = ("consolidated*", "original/*")
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
)


class ModelUnavailable(RuntimeError):
    """A model's weights cannot be obtained here; the message says why and what to do."""


# --------------------------------------------------------------------------- sources


def source_directory(model: Model, *, offline: bool) -> Path:
    """A local directory holding the model's weights, config and tokenizer."""
    if model.source == "builtin:tiny":
        from pytest_invarlock.assets.tiny_model import build_tiny_assets

        return Path(build_tiny_assets().model_dir)
    if model.source == "builtin:smollm2-135m":
        from pytest_invarlock.assets.smol_model import SmolUnavailable, build_smol_model

        try:
            return build_smol_model()
        except SmolUnavailable as exc:
            raise ModelUnavailable(str(exc)) from None
    if model.is_builtin:
        raise ModelUnavailable(f"unknown builtin model '{model.source}'; builtins are builtin:tiny and builtin:smollm2-135m")
    local = Path(model.source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise ModelUnavailable(
                f"local model directory '{local}' has no config.json; point the suite at a Hugging Face model folder"
            )
        return local.resolve()
    if model.source.startswith((".", "/", "~")):  # a path, not a hub id: say so instead of a hub-cache miss
        raise ModelUnavailable(
            f"local model directory '{local}' does not exist on {socket.gethostname()} (relative paths start from "
            f"{Path.cwd()}); fix the suite's source or run where the directory is"
        )
    return _hub_snapshot(model, offline=offline)


def _hub_snapshot(model: Model, *, offline: bool) -> Path:
    """The model's snapshot in the local HF cache (downloaded first when online): safetensors, else .bin weights."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    def download(patterns: tuple[str, ...]) -> Path:
        return Path(
            snapshot_download(
                model.source,
                revision=model.revision,
                allow_patterns=list(patterns),
                ignore_patterns=list(IGNORED_PATTERNS),
                local_files_only=offline,
            )
        )

    try:
        snapshot = download(WEIGHT_PATTERNS)
        if not any(snapshot.glob("*.safetensors")):  # published only as pytorch_model*.bin
            snapshot = download((*WEIGHT_PATTERNS, *BIN_PATTERNS))
        if not any(p.suffix in (".safetensors", ".bin") for p in snapshot.iterdir()):
            raise ModelUnavailable(
                f"hub model {model.source}@{model.revision or 'main'} has neither *.safetensors nor pytorch_model*.bin "
                "weights at its top level; pick a revision that has them"
            )
        return snapshot
    except LocalEntryNotFoundError:
        raise ModelUnavailable(
            f"hub model {model.source}@{model.revision or 'main'} is not in the local Hugging Face cache and this run is "
            "offline; download it once with network access (or run with --online)"
        ) from None


def model_profile(directory: Path, dtype: str) -> dict[str, Any]:
    """model_profile.json: the memory plan's torch-free profile of the config, plus bytes on disk.

    Families the plan cannot count (neither llama-like nor gpt2) keep only the bytes on disk.
    """
    from dataclasses import asdict

    from pytest_invarlock.scheduling.memory import ModelProfile

    config = json.loads((directory / "config.json").read_text())
    weights = sum(p.stat().st_size for p in directory.iterdir() if p.suffix in (".safetensors", ".bin"))
    try:
        profile = asdict(ModelProfile.from_config(config.get("text_config", config), dtype))
    except (ValueError, KeyError) as exc:
        profile = {"unprofiled": str(exc)}
    return {
        "model_type": config.get("model_type"),
        "dtype": dtype,
        **profile,
        "weights_bytes_on_disk": weights,
        "weights_gb_on_disk": weights / 2**30,
    }


def _model_files(source: Path) -> list[Path]:
    """The files of a model directory that its baseline links (and its content digest covers), by name."""
    return sorted(entry for entry in source.iterdir() if entry.is_file())


def weights_digest(source: Path, store: Store) -> str:
    """The content of a model directory: sha256 of a ``sha256sum``-style listing (``<sha256>  <name>`` per line,
    names sorted) of every file its baseline links, weights, config and tokenizer alike.

    Hub snapshots are hashed too: their path already names the commit, but one meaning for every record is worth
    one read (docs/run-directory.md, "Content-addressed baselines", has the cost).
    """
    listing = "".join(f"{_file_sha256(path, store)}  {path.name}\n" for path in _model_files(source))
    return hashlib.sha256(listing.encode()).hexdigest()


def _file_sha256(path: Path, store: Store) -> str:
    """A file's sha256, read once per version of the file: the store keeps it under the file's stat signature
    (``store.stat_signature``: device, inode, size, mtime, ctime), so later sessions only stat the file, and a
    file rewritten in place (same size, mtime put back or not) is read again, alone."""
    signature = stat_signature(path)
    key = digest("file-sha256", str(path.resolve()), *signature)

    def build(tmp: Path) -> dict[str, Any]:
        sha = content_sha256(path)
        if stat_signature(path) != signature:
            raise ModelUnavailable(f"'{path}' changed while it was being hashed (a copy still running?); rerun once it stays put")
        return {"file": str(path.resolve()), "sha256": sha}

    return str(store.metadata(store.produce("digests", key, build).path)["sha256"])


def baseline_artifact(model: Model, store: Store, *, offline: bool) -> Artifact:
    """The baseline as a neutral directory of links to the source files, plus model_profile.json.

    Keyed on the files' content (``weights_digest``, also in its artifact.json) besides their path: weights
    replaced in place make a new baseline, and with it new windows, edits and certificates, whose keys all
    include the baseline's. Weights that are cut short, overwritten or missing are refused before anything
    reads them (`weights_check`).
    """
    from pytest_invarlock.worker.weights_check import check_model_directory

    source = source_directory(model, offline=offline)
    check_model_directory(source)
    content = weights_digest(source, store)
    key = digest("baseline", BASELINE_LAYOUT_VERSION, str(source), model.revision, model.dtype, content)

    def build(tmp: Path) -> dict[str, Any]:
        for entry in _model_files(source):
            os.symlink(entry.resolve(), tmp / entry.name)
        profile = model_profile(tmp, model.dtype)
        (tmp / "model_profile.json").write_text(json.dumps(profile, indent=2) + "\n")
        return {
            "model": model.name,
            "source": model.source,
            "resolved": str(source),
            "revision": model.revision,
            "weights_digest": content,
        }

    return store.produce("baselines", key, build)


# --------------------------------------------------------------------------- model cache


@dataclass
class _Entry:
    model: Any
    tokenizer: Any
    nbytes: int


class ModelCache:
    """Models a worker holds in host RAM, least recently used first out, bounded in bytes.

    Nothing stays on the GPU between items: callers move a model to the device for the duration of
    one item and back to host RAM, so the scheduler's memory plan holds. `loads` counts disk
    loads per directory, the figure that model affinity is meant to keep near one per worker.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self.loads: dict[str, int] = {}

    def get(self, directory: Path, dtype: str) -> tuple[Any, Any, bool]:
        """(model, tokenizer, loaded_from_disk)."""
        key = str(directory)
        if key in self._entries:
            self._entries.move_to_end(key)
            entry = self._entries[key]
            return entry.model, entry.tokenizer, False
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from pytest_invarlock.worker.resources import release_memory

        self._make_room(_bytes_on_disk(directory))
        release_memory()  # what the evicted models and the last item held goes back before the next load
        started = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(str(directory), dtype=_torch_dtype(dtype))
        model.eval()
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
        self.loads[key] = self.loads.get(key, 0) + 1
        log.info("model load from disk: %s (%.1f s)", directory, time.perf_counter() - started)
        self.put(directory, model, tokenizer)
        return model, tokenizer, True

    def put(self, directory: Path, model: Any, tokenizer: Any) -> None:
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self._entries[str(directory)] = _Entry(model, tokenizer, nbytes)
        self._entries.move_to_end(str(directory))
        while len(self._entries) > 1 and sum(e.nbytes for e in self._entries.values()) > self.max_bytes:
            self._entries.popitem(last=False)

    def _make_room(self, incoming: int) -> None:
        """Evict least recently used models until `incoming` more bytes fit the budget (or none is left)."""
        while self._entries and self.used_bytes() + incoming > self.max_bytes:
            self._entries.popitem(last=False)

    def used_bytes(self) -> int:
        """Host RAM the cached models' parameters take."""
        return sum(e.nbytes for e in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


def _bytes_on_disk(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).glob("*") if p.suffix in (".safetensors", ".bin"))


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def default_cache_bytes() -> int:
    """A third of host RAM: the GPU cluster notes' lesson is that host memory, not the GPU, limits small nodes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 3
    except (ValueError, OSError):
        return 8 * 2**30


# --------------------------------------------------------------------------- edits


def _copy_tokenizer_files(source: Path, target: Path) -> None:
    """The baseline's tokenizer files, byte for byte: a re-saved tokenizer could tokenise differently."""
    import shutil

    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def edit_key(model: Model, scenario: Scenario, baseline: Artifact) -> str:
    """The store key of a scenario's edited weights: the edit type's code version (a changed kernel rebuilds only
    its edits), the baseline, the canonical spec and the dtype. Known without building the edit."""
    spec = parse_spec(scenario.spec)
    return digest("edit", spec.edit_type.code_version, baseline.path.name, str(spec), model.dtype)


def edit_bytes(baseline: Artifact, dtype: str) -> int:
    """The size of one edited copy: parameters x the edit's dtype, from the baseline's profile (else its files)."""
    from pytest_invarlock.scheduling.memory import dtype_bytes

    try:
        profile = json.loads((baseline.path / "model_profile.json").read_text())
    except (OSError, ValueError):
        return _bytes_on_disk(baseline.path)
    params = profile.get("params")
    return int(params) * dtype_bytes(dtype) if params else int(profile.get("weights_bytes_on_disk") or 0)


def edit_artifact(
    model: Model,
    scenario: Scenario,
    baseline: Artifact,
    store: Store,
    cache: ModelCache,
    device: str,
    holds: ExitStack,
    needs: Needs | None,
) -> Artifact:
    """The edited (or error-injected) weights of a scenario, held in use until `holds` closes.

    Made once per baseline and spec; when its weights were evicted it is rebuilt from the recipe (the store
    checks the rebuild against the sealed sha256). Room is made under the edit budget before a build.
    """
    import copy

    import torch

    from pytest_invarlock.edits.kernels import apply_spec

    spec = parse_spec(scenario.spec)
    key = edit_key(model, scenario, baseline)
    if verify(store.path("edits", key), full=False) is not None:
        make_room(store, needs, incoming=edit_bytes(baseline, model.dtype), reason=f"room for {spec} of {model.name}")

    def build(tmp: Path) -> dict[str, Any]:
        base_model, tokenizer, _ = cache.get(baseline.path, model.dtype)
        edited = copy.deepcopy(base_model).to(device)
        with torch.no_grad():
            metadata = apply_spec(edited, spec)
        edited.to("cpu")
        edited.save_pretrained(tmp)
        _copy_tokenizer_files(baseline.path, tmp)
        name = "error_metadata.json" if spec.family == "error" else "edit_metadata.json"
        (tmp / name).write_text(
            json.dumps({"spec": str(spec), "scenario": scenario.name, **metadata}, indent=2, default=str) + "\n"
        )
        cache.put(store.path("edits", key), edited, tokenizer)
        return {"model": model.name, "scenario": scenario.name, "spec": str(spec)}

    return store.produce_in_use("edits", key, build, holds)
