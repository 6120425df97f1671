"""The session's memory of failed shared work, kept in the run directory so every xdist worker shares it.

`<run-dir>/state/failures/<session>/<scope>-<hash>.json` holds one `campaign.failures.Failure` per
failed piece of shared work (a baseline, a calibration run, a preset, an edit, a model whose circuit
breaker opened). The first writer wins (a hard link of a finished temp file, atomic on local and
network filesystems), so every item that needed the work reports the same failed item and cause, and
nobody runs it again in this session. A new session (a rerun, `--lf`) starts with an empty memory.

`handbacks/<item>.json` notes why a worker gave an item back instead of finishing it (its worker
needs a larger placement after an OOM, or the item timed out so hard that its worker had to end):
the controller reads the note when the worker's process goes away. Torch-free.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import suppress
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.failures import Failure, Scope
from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.store import write_json_atomic

FAILURES_DIR = Path("state") / "failures"


class FailureMemory:
    def __init__(self, run_dir: Path, session: str) -> None:
        self.directory = Path(run_dir) / FAILURES_DIR / session
        self._handbacks = self.directory / "handbacks"

    def record(self, failure: Failure) -> Failure:
        """Remember `failure` unless the same work already failed; return the one remembered (the first)."""
        path = self.directory / f"{failure.key}.json"
        existing = self._read(path)
        if existing is not None:
            return existing
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{failure.key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**failure.to_dict(), "at": time.time(), "pid": os.getpid()}) + "\n", encoding="utf-8")
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        except OSError:  # a filesystem without hard links: a rename, which a racing writer may overtake
            if not path.exists():
                os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return self._read(path) or failure

    def find(self, scope: Scope, model: str, detail: str = "") -> Failure | None:
        probe = Failure(scope, model, "", "", detail=detail)
        return self._read(self.directory / f"{probe.key}.json")

    def all(self) -> list[Failure]:
        """Every remembered failure, oldest first."""
        found = []
        for path in self.directory.glob("*.json"):
            failure = self._read(path)
            if failure is not None:
                found.append((_mtime(path), path.name, failure))
        return [failure for *_, failure in sorted(found, key=lambda entry: (entry[0], entry[1]))]

    def blocking(self, item: SuiteItem) -> Failure | None:
        """The first remembered failure that ends `item` before it starts (it cannot succeed in this session);
        a failed edit is met only by items that need its weights (`Failure.ends_dependents_at_once`)."""
        return next((f for f in self.all() if f.ends_dependents_at_once and f.affects(item) and f.item != item.param_id), None)

    def hand_back(self, param_id: str, note: dict[str, Any]) -> None:
        """Leave the controller a note on why this item is given back; `handed_back` stays true for the session."""
        write_json_atomic(self._handbacks / f"{param_id}.json", {**note, "at": time.time(), "pid": os.getpid()})
        write_json_atomic(self._handbacks / f"{param_id}.done", note)

    def handed_back(self, param_id: str) -> bool:
        return (self._handbacks / f"{param_id}.done").is_file()

    def take_handback(self, param_id: str) -> dict[str, Any] | None:
        """The note a worker left for this item (read once: it is removed)."""
        path = self._handbacks / f"{param_id}.json"
        try:
            note: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        with suppress(OSError):
            path.unlink()
        return note

    def take_handback_of(self, item: SuiteItem) -> dict[str, Any] | None:
        return self.take_handback(item.param_id)

    @staticmethod
    def _read(path: Path) -> Failure | None:
        try:
            return Failure.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
