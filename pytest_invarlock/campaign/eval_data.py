"""A user's own evaluation text (`eval_data`, the earlier harnesses' INVARLOCK_LOCAL_JSONL_FILE): read and checked, torch-free.

Read as InvarLock's `local_jsonl` provider reads such a file (one JSON object per line, the text in
`eval_text_field`). Each line is a document, cut into sentences so that `worker.windows` can start
windows inside long lines; the identity (a digest of the file and the field) keys the packed window
pool, so another file or field gets its own windows. The suite loader checks the file up front.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")


class EvalDataError(ValueError):
    """The evaluation file cannot be used; the message names the line and the fix."""


def identity(path: Path, field: str) -> str:
    return f"jsonl-{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}-{field}"


def documents(path: Path, field: str) -> list[list[str]]:
    """One document per line of `path` (its `field`), cut into sentences; blank lines are skipped."""
    out: list[list[str]] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise EvalDataError(f"{path}:{number}: not a JSON object ({exc}); write one object per line.") from None
        text = row.get(field) if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise EvalDataError(
                f"{path}:{number}: no string field {field!r}; set eval_text_field (--eval-text-field) to the field "
                "that holds the text."
            )
        sentences = [s for s in _SENTENCE_END.split(text.strip()) if s]
        if sentences:
            out.append(sentences)
    if not out:
        raise EvalDataError(f"{path} holds no text in field {field!r}; give a JSONL file with one object per line.")
    return out
