"""Rows as CSV text, the one way the verdict's analysis tables are written."""

from __future__ import annotations

import csv
import io
from typing import Any


def csv_text(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A header of `columns`, then one line per row (keys outside `columns` ignored, missing ones empty)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()
