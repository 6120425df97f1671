"""Tuned clean edits: the evidence-pack suites' `KIND:clean:SCOPE` specs, resolved per model from a tuned-params file.

The evidence-pack harness runs its four clean edits with parameters tuned per model (RTN bits and group
size, FP8 format, prune level, SVD rank), read from PACK_TUNED_EDIT_PARAMS_FILE; its scenario manifest
writes `quant_rtn:clean:ffn` and resolves the sentinel at run time. Here the file is JSON in the same
shape (`models` by hub id or model name, plus our `defaults`); `suites/tuned_edit_params.json` ships
one, and a suite (`tuned_edit_params:`) or `--tuned-edit-params` names another. Pure: no torch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SENTINEL = "clean"
SCHEMA = "tuned_edit_params_v1"
# Our spec kind -> (the file's key for it, the fields that fill the spec in order)
TUNABLE: Mapping[str, tuple[str, tuple[str, ...]]] = {
    "quant_rtn": ("quant_rtn", ("bits", "group_size")),
    "fp8": ("fp8_quant", ("format",)),
    "magnitude_prune": ("magnitude_prune", ("sparsity",)),
    "lowrank_svd": ("lowrank_svd", ("rank",)),
}
_FIX = "Fix the tuned-params file (see suites/tuned_edit_params.json for the shape) or name another with --tuned-edit-params."


class TunedParamsError(ValueError):
    """A tuned spec or a tuned-params file is wrong; the message says which and how to fix it."""


def is_tuned(spec: str) -> bool:
    """A `KIND:clean:SCOPE` sentinel rather than a concrete spec."""
    parts = spec.strip().split(":")
    return len(parts) == 3 and parts[1] == SENTINEL


def sentinel_problem(spec: str) -> str | None:
    """Why `spec` is not a usable sentinel (unknown kind), or None."""
    kind = spec.strip().split(":")[0]
    if kind not in TUNABLE:
        return f"'{spec}': only {', '.join(f'{k}:clean:SCOPE' for k in TUNABLE)} take tuned parameters"
    return None


def load(path: Path) -> dict[str, Any]:
    """The tuned-params file, checked for its overall shape."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise TunedParamsError(f"cannot read the tuned-params file '{path}': {exc.strerror or exc}. {_FIX}") from None
    except ValueError as exc:
        raise TunedParamsError(f"the tuned-params file '{path}' is not valid JSON: {exc}. {_FIX}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("models", {}), dict)
        or not isinstance(data.get("defaults", {}), dict)
    ):
        raise TunedParamsError(
            f"the tuned-params file '{path}' must be an object with `models` (and `defaults`) mappings. {_FIX}"
        )
    schema = data.get("schema", (data.get("_meta") or {}).get("schema"))
    if schema not in (None, SCHEMA):
        raise TunedParamsError(f"the tuned-params file '{path}' has schema {schema!r}, not {SCHEMA!r}. {_FIX}")
    return data


def resolve(data: Mapping[str, Any], model_keys: Sequence[str], spec: str, *, path: Path) -> str:
    """The concrete spec for the first of `model_keys` (hub id, then model name) the file tunes, else its defaults."""
    kind, _, scope = spec.strip().split(":")
    file_key, fields = TUNABLE[kind]
    entry: Mapping[str, Any] | None = None
    for key in model_keys:
        tuned_model = (data.get("models") or {}).get(key)
        if isinstance(tuned_model, Mapping) and tuned_model.get(file_key) is not None:
            entry = tuned_model[file_key]
            break
    if entry is None:
        entry = (data.get("defaults") or {}).get(file_key)
    where = f"tuned-params file '{path}', {file_key} for {model_keys[0]}"
    if not isinstance(entry, Mapping):
        raise TunedParamsError(f"{where}: no entry (neither under models nor defaults). {_FIX}")
    status = entry.get("status", "selected")
    if status != "selected":
        raise TunedParamsError(f"{where}: status {status!r}: no tuned parameters were selected. {_FIX}")
    if entry.get("scope", scope) != scope:
        raise TunedParamsError(
            f"{where}: scope {entry['scope']!r} differs from the scenario's {scope!r} (scopes here are ffn, attn or all, "
            f"never one layer). {_FIX}"
        )
    missing = [name for name in fields if name not in entry]
    if missing:
        raise TunedParamsError(f"{where}: missing {', '.join(missing)}. {_FIX}")
    return ":".join([kind, *(str(entry[name]) for name in fields), scope])
