"""A suite's `models:` entries as checked `Model`s: a catalogue name, a hub id, a local directory or a full mapping.

A model given by hub id or path alone (like the B200 bash harness's MODEL_1..MODEL_8) is sized from
its own files when it is a local checkpoint, else from its name. A model whose settings InvarLock
would refuse (below the tier's floors, overlapping windows, unreadable eval_data) is an error here.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.model_files import ModelFiles, ModelFilesError, read_model_files
from pytest_invarlock.campaign.suite.checks import Where, show, user_path
from pytest_invarlock.campaign.suite.definitions import Model
from pytest_invarlock.campaign.suite.files import catalogue
from pytest_invarlock.campaign.suite.settings import (
    FLOOR_FIX,
    eval_data_problem,
    invarlock_block,
    model_settings,
    tier_floor_problem,
)
from pytest_invarlock.campaign.suite.size_classes import infer_size_class, params_from_name, size_classes

DTYPES = ("float32", "float16", "bfloat16")
MODEL_KEYS = ("name", "source", "revision", "size_class", "dtype", "params_b", "architecture", "invarlock")
ARCHITECTURE_KEYS = ("layers", "hidden", "heads", "kv_heads", "head_dim", "vocab")


def model_from_source(source: str) -> dict[str, Any]:
    """A model entry for a hub id or local path given without a catalogue entry (like MODEL_1..MODEL_8).

    A local checkpoint is sized from its own files (config.json, safetensors headers); a hub id from its name.
    """
    stem = source.rstrip("/").split("/")[-1].lower()
    name = re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-") or "model"
    files = _local_model_files(source)
    if files is not None:
        shape = {key: value for key, value in files.shape().items() if key in ARCHITECTURE_KEYS}
        size_class = "moe" if files.is_moe else infer_size_class(files.params_b, source)
        return {"name": name, "source": source, "params_b": files.params_b, "size_class": size_class, "architecture": shape}
    params_b = params_from_name(source) or 1.0
    return {"name": name, "source": source, "params_b": params_b, "size_class": infer_size_class(params_b, source)}


def _local_model_files(source: str) -> ModelFiles | None:
    try:
        directory = Path(source).expanduser()
        return read_model_files(directory) if (directory / "config.json").is_file() else None
    except (RuntimeError, OSError, ModelFilesError):  # ~nosuchuser, unreadable: the caller's checks say so
        return None


def model_entry(where: Where, entry: Any, key: str, suite_invarlock: Mapping[str, Any]) -> Model:
    """The `Model` of one `models:` entry (or `--models` value), on top of the suite's `invarlock:` block."""
    if isinstance(entry, str):
        entry = _named_entry(where, entry, key)
    entry = where.mapping(entry, key)
    where.known_keys(entry, MODEL_KEYS, key)
    for required in ("name", "source"):
        if required not in entry:
            raise where.error(f"{key}.{required}", "missing", f"Every model needs `{required}`.")
    name = where.slug(entry["name"], f"{key}.name")
    source = where.text(entry["source"], f"{key}.source")
    if not source.strip():
        raise where.error(f"{key}.source", "is empty", "Give a hub id (org/name), a local directory or builtin:<name>.")
    params_b = where.number(entry.get("params_b", params_from_name(source) or 1.0), f"{key}.params_b")
    if params_b <= 0:
        raise where.error(f"{key}.params_b", f"must be positive, got {params_b}", "Give the parameter count in billions.")
    size_class = where.choice(
        entry.get("size_class", infer_size_class(params_b, str(entry["source"]))), f"{key}.size_class", size_classes()
    )
    dtype = where.choice(entry.get("dtype", "bfloat16"), f"{key}.dtype", DTYPES)
    own = invarlock_block(where, entry.get("invarlock", {}), f"{key}.invarlock")
    revision = _revision(where, entry.get("revision"), f"{key}.revision")
    architecture = _architecture(where, entry.get("architecture", {}), f"{key}.architecture")
    model = Model(
        name=name,
        source=source,
        revision=revision,
        size_class=size_class,
        dtype=dtype,
        params_b=params_b,
        settings=model_settings(size_class, suite_invarlock, own),
        architecture=architecture,
    )
    _check_runnable(where, model, key)
    return model


def _named_entry(where: Where, entry: str, key: str) -> dict[str, Any]:
    """A model given by name alone: its catalogue entry, or an entry for a hub id or existing local directory."""
    known = catalogue("models.yaml")
    if entry in known:
        return {"name": entry, **known[entry]}
    if "/" in entry or user_path(entry, f"suite file '{where.path}': key '{key}'").exists():
        return model_from_source(entry)
    hint = difflib.get_close_matches(entry, list(known), n=1)
    raise where.error(
        key,
        f"unknown model '{entry}'",
        (f"Did you mean '{hint[0]}'? " if hint else "")
        + f"Use a catalogue name ({', '.join(known)}), a hub id such as org/name, or an existing local directory.",
    )


def _revision(where: Where, revision: Any, key: str) -> str | None:
    if revision is not None and (isinstance(revision, bool) or not isinstance(revision, (str, int))):
        raise where.error(key, f"expected a commit hash or branch name, got {show(revision)}", "Write revision: <40-hex commit>.")
    return None if revision is None else str(revision)


def _architecture(where: Where, value: Any, key: str) -> dict[str, int]:
    architecture = where.mapping(value, key)
    where.known_keys(architecture, ARCHITECTURE_KEYS, key)
    for field_name, count in architecture.items():
        where.integer(count, f"{key}.{field_name}", 1)
    return dict(architecture)


def _check_runnable(where: Where, model: Model, key: str) -> None:
    """Settings InvarLock would refuse: below the tier's floors, overlapping windows, an unreadable eval_data file."""
    problem = tier_floor_problem(model)
    if problem:
        raise where.error(f"{key}.invarlock", problem, FLOOR_FIX)
    if model.settings.stride < model.settings.seq_len:
        raise where.error(
            f"{key}.invarlock.stride",
            f"stride {model.settings.stride} < seq_len {model.settings.seq_len}: overlapping windows, which InvarLock "
            "0.12's evaluate refuses ([INVARLOCK:E001] PAIRING-SCHEDULE-MISMATCH: window_overlap_fraction > 0)",
            f"Set stride to seq_len ({model.settings.seq_len}) or more.",
        )
    problem = eval_data_problem(model)
    if problem:
        raise where.error(f"{key}.invarlock.eval_data", problem, "Fix the file or point eval_data at another.")
