"""Where suite files are and how their YAML is read: the shipped suites and catalogues, a `--suite` name or path.

Every way a file can be unreadable (too big, not UTF-8, not YAML, a key given twice) becomes a
`SuiteError` that names the file and the fix.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from pytest_invarlock.campaign.suite.checks import SuiteError, user_path

MAX_SUITE_BYTES = 4 * 1024 * 1024
CATALOGUES = ("models.yaml", "scenarios.yaml", "scenario_sets.yaml", "size_classes.yaml")


def shipped_file(name: str) -> Path:
    """A file shipped in the plugin's suites/ directory."""
    return Path(str(resources.files("pytest_invarlock.suites").joinpath(name)))


def shipped_suites() -> list[str]:
    """Names of the suites shipped with the plugin (the YAML files that declare a `name`)."""
    directory = shipped_file("")
    return sorted(p.stem for p in directory.glob("*.yaml") if p.name not in CATALOGUES)


def catalogue(name: str) -> dict[str, Any]:
    """A shipped catalogue (suites/models.yaml, ...) as a mapping."""
    return read_yaml(shipped_file(name), "catalogue") or {}


def read_yaml(path: Path, what: str) -> Any:
    """The file's YAML; every way it can be unreadable is a SuiteError naming the file and the fix."""
    try:
        if path.stat().st_size > MAX_SUITE_BYTES:
            raise SuiteError(
                f"{what} '{path}' is {path.stat().st_size:,} bytes, more than a suite file can be "
                f"({MAX_SUITE_BYTES:,}). Check that the path names the suite YAML, not a data file."
            )
        raw = path.read_bytes()
    except OSError as exc:
        raise SuiteError(f"cannot read {what} '{path}': {exc.strerror or exc}. Check the path and its permissions.") from None
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise SuiteError(f"{what} '{path}' is UTF-16 text. Save it as UTF-8 (e.g. `iconv -f UTF-16 -t UTF-8`).")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SuiteError(
            f"{what} '{path}' is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start}). "
            "Save it as UTF-8, and check that the path names the suite YAML, not a binary file."
        ) from None
    if "\x00" in text:
        raise SuiteError(f"{what} '{path}' contains NUL bytes: it is not a text file. Check the path.")
    try:
        return yaml.load(text, Loader=_SuiteLoader)  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise SuiteError(f"{what} '{path}' is not valid YAML: {exc}. Fix the syntax at the line shown.") from None
    except RecursionError:
        raise SuiteError(f"{what} '{path}' nests too deeply to read. Flatten the YAML structure.") from None
    except (ValueError, OverflowError) as exc:  # e.g. a date such as 2024-13-45, which YAML reads as a timestamp
        raise SuiteError(f"{what} '{path}' holds a value YAML cannot convert: {exc}. Quote the value.") from None


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base class reports it
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark, f"found key {key!r} twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def resolve_suite_path(name_or_path: str) -> Path:
    """A shipped suite name or a path to a YAML file."""
    candidate = user_path(name_or_path, "--suite")
    if candidate.suffix in (".yaml", ".yml") or candidate.exists():
        if candidate.is_dir():
            raise SuiteError(
                f"suite file '{candidate}' is a directory. Pass the suite YAML file inside it, or a shipped suite: {', '.join(shipped_suites())}."
            )
        if not candidate.is_file():
            raise SuiteError(
                f"suite file '{candidate}' does not exist. Check the path, or use a shipped suite: {', '.join(shipped_suites())}."
            )
        return candidate
    if name_or_path in shipped_suites():
        return shipped_file(f"{name_or_path}.yaml")
    hint = difflib.get_close_matches(name_or_path, shipped_suites(), n=1)
    raise SuiteError(
        f"unknown suite '{name_or_path}'. "
        + (f"Did you mean '{hint[0]}'? " if hint else "")
        + f"Shipped suites: {', '.join(shipped_suites())}; or pass a path to a suite YAML file (--suite path/to/suite.yaml)."
    )
