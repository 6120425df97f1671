"""Value parsers for our command-line options: argparse turns their ValueError into a usage error that names
the option and, through the parser's name, what it wanted."""

from __future__ import annotations


def non_negative_number(value: str) -> float:
    """A finite number >= 0 (seconds, GB)."""
    number = float(value)
    if not 0 <= number < float("inf"):
        raise ValueError(value)
    return number


def non_negative_count(value: str) -> int:
    """A whole number >= 0."""
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number
