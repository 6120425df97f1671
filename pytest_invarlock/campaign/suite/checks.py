"""`SuiteError` and the value checks that raise it, so every mistake names the file (or option), the key and the fix.

`Where` checks one value of a suite file and words its error; `CommandLine` does the same for a
command-line override, naming the option instead of a key.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SLUG = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
MAX_INT = 2**31 - 1  # any count without a tighter bound: beyond this it is a typo, not a setting


class SuiteError(ValueError):
    """A suite file or a suite override is wrong; the message says where and how to fix it."""


def show(value: Any, limit: int = 60) -> str:
    """A value for an error message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def user_path(text: str, what: str) -> Path:
    """`text` as a path with `~` expanded; a SuiteError naming `what` where `~user` names no one."""
    try:
        return Path(text).expanduser()
    except RuntimeError:  # ~nosuchuser, or no home directory at all
        raise SuiteError(
            f"{what} '{text}': cannot expand '~' (no such user, or no home directory). Write the full path."
        ) from None


class Where:
    """Builds error messages that name the file and the key path."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def error(self, key: str, problem: str, fix: str) -> SuiteError:
        return SuiteError(f"suite file '{self.path}': key '{key}': {problem}. {fix}")

    def mapping(self, value: Any, key: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key, f"expected a mapping, got {type(value).__name__}", "Write it as `key: value` lines.")
        return value

    def known_keys(self, value: Mapping[str, Any], allowed: tuple[str, ...], key: str) -> None:
        for name in value:
            if name not in allowed:
                hint = difflib.get_close_matches(str(name), allowed, n=1)
                suggestion = f"Did you mean '{hint[0]}'? " if hint else ""
                raise self.error(
                    f"{key}.{name}" if key else str(name),
                    "unknown key",
                    f"{suggestion}Allowed keys: {', '.join(allowed)}.",
                )

    def integer(self, value: Any, key: str, minimum: int, maximum: int = MAX_INT) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.error(
                key,
                f"expected an integer >= {minimum} and <= {maximum}, got {show(value)}",
                f"Use a whole number from {minimum} to {maximum}.",
            )
        return value

    def number(self, value: Any, key: str) -> float:
        number = math.nan
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:  # an integer beyond float range
                number = math.inf
        if not math.isfinite(number):
            raise self.error(key, f"expected a finite number, got {show(value)}", "Use a number such as 1.2.")
        return number

    def boolean(self, value: Any, key: str) -> bool:
        if not isinstance(value, bool):
            raise self.error(key, f"expected true or false, got {show(value)}", f"Write {key.rsplit('.', 1)[-1]}: true or false.")
        return value

    def text(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or "\x00" in value:
            raise self.error(
                key,
                f"expected a string, got {show(value)}",
                "Write it as plain text (quote it if YAML reads it as something else).",
            )
        return value

    def choice(self, value: Any, key: str, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            hint = difflib.get_close_matches(value, choices, n=1) if isinstance(value, str) else []
            raise self.error(
                key,
                f"{show(value)} is not one of {', '.join(choices)}",
                (f"Did you mean '{hint[0]}'? " if hint else "") + "Pick one of the listed values.",
            )
        return value

    def slug(self, value: Any, key: str) -> str:
        if not isinstance(value, str) or not SLUG.match(value) or len(value) > 100:
            raise self.error(
                key,
                f"name {show(value)} is not a lowercase slug of at most 100 characters",
                "Use lowercase letters, digits, '.', '_' and '-' (it becomes part of test ids).",
            )
        return value

    def unique(self, names: list[str], key: str) -> None:
        seen: set[str] = set()
        for name in names:
            if name in seen:
                raise self.error(key, f"'{name}' appears twice", "Names must be unique within a suite (they become test ids).")
            seen.add(name)


class CommandLine(Where):
    """Error messages for command-line overrides: they name the option rather than a key of the suite file."""

    def error(self, key: str, problem: str, fix: str) -> SuiteError:
        return SuiteError(f"command-line option {key}: {problem}. {fix}")
