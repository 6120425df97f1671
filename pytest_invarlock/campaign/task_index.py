"""The lm-eval task names installed here, found without importing lm_eval (the controller never does).

lm-eval defines its tasks in YAML files under its package's `tasks/` directory: a `task:` key names a
task (or, holding a list, a group's members), `group:` names a group and `tag:` one or more tags; any
of them is a valid `--tasks` name. Indexing them the way lm-eval does (its `TaskManager` parses every
file, ~14,000 of them, 8 s) is too slow for collection, so this module reads those keys with a regular
expression (~1 s cold) and caches the names on disk, keyed by lm-eval's version and install path:
`$PYTEST_INVARLOCK_CACHE/lm_eval_tasks-<version>-<path digest>.json` (default cache:
~/.cache/pytest-invarlock). A cache that cannot be written is not an error; the index is then rebuilt
in each process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from functools import cache
from importlib import metadata
from importlib.util import find_spec
from pathlib import Path

DISTRIBUTION = "lm_eval"
CACHE_FORMAT = 1
_KEY = re.compile(r"""^["']?(task|group|tag)["']?\s*:[ \t]*(.*?)\s*(?:#.*)?$""")
_ITEM = re.compile(r"^\s*-\s+(.+?)\s*(?:#.*)?$")
_NAME = re.compile(r"^[A-Za-z0-9][\w.()\-]*$")


def cache_dir() -> Path:
    return Path(os.environ.get("PYTEST_INVARLOCK_CACHE") or Path.home() / ".cache" / "pytest-invarlock")


def lm_eval_tasks_dir() -> Path | None:
    """lm-eval's `tasks/` directory, located without importing the package; None when it is not installed."""
    try:
        spec = find_spec(DISTRIBUTION)
    except (ImportError, ValueError):
        return None
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        tasks = Path(location) / "tasks"
        if tasks.is_dir():
            return tasks
    return None


def _scalar(value: str) -> str:
    return value.strip().strip("'\"").strip()


def _names_in(text: str, *, template: bool = False) -> set[str]:
    """Names one task file defines at its top level, as lm-eval's TaskManager indexes them.

    A task config (`task: name`) defines the task and its tags; a group config (`task:` holding a
    list) defines the group and its tags; lm-eval 0.4 ignores `group:` beside a task name. An
    included template (`template=True`: a file without the .yaml suffix) contributes its tags.
    """
    found: dict[str, list[str]] = {"task": [], "group": [], "tag": []}
    lines = text.splitlines()
    for number, line in enumerate(lines):
        match = _KEY.match(line)
        if not match:
            continue
        key, value = match.groups()
        if value.startswith("["):  # a flow list: tag: [a, b]
            found[key] += [_scalar(part) for part in value.strip("[]").split(",")]
        elif value:
            found[key].append(_scalar(value))
        elif key == "tag":  # a block list of tags on the following lines
            for following in lines[number + 1 :]:
                item = _ITEM.match(following)
                if not item:
                    break
                found[key].append(_scalar(item.group(1)))
        # `task:` holding a block list: a group's members, defined in their own files
    names = list(found["tag"])
    if not template:
        names += found["task"] or found["group"]
    return {name for name in names if _NAME.match(name)}


def scan_tasks(tasks_dir: Path) -> frozenset[str]:
    """Every task, group and tag name the task files under `tasks_dir` define."""
    names: set[str] = set()
    for path in tasks_dir.rglob("*"):
        if path.suffix not in (".yaml", ""):
            continue  # README.md, utils.py, data files: not task configs
        template = path.suffix == ""  # included templates: _default_template_yaml, naijarc, ...
        try:
            names |= _names_in(path.read_text(encoding="utf-8", errors="replace"), template=template)
        except OSError:
            continue  # a directory or an unreadable file
    return frozenset(names)


def _cache_file(tasks_dir: Path, version: str) -> Path:
    digest = hashlib.sha256(str(tasks_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir() / f"lm_eval_tasks-{version}-{digest}.json"


def _read_cache(path: Path) -> frozenset[str] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("format") != CACHE_FORMAT or not isinstance(data.get("names"), list):
        return None
    return frozenset(str(name) for name in data["names"])


def _write_cache(path: Path, names: frozenset[str], version: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False, encoding="utf-8") as tmp:
            json.dump({"format": CACHE_FORMAT, "lm_eval": version, "names": sorted(names)}, tmp)
        os.replace(tmp.name, path)
    except OSError:
        return  # a read-only cache is fine: the index is rebuilt next time


@cache
def installed_tasks() -> frozenset[str] | None:
    """The task, group and tag names of the installed lm-eval, or None when lm-eval is not installed."""
    tasks_dir = lm_eval_tasks_dir()
    if tasks_dir is None:
        return None
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    path = _cache_file(tasks_dir, version)
    names = _read_cache(path)
    if names is None:
        names = scan_tasks(tasks_dir)
        _write_cache(path, names, version)
    return names
