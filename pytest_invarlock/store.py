"""Content-addressed artifacts in the run directory, shared by xdist workers and by later runs.

Every expensive product (baseline copy, baseline report, preset, edited weights, certify result) is
stored under a key that digests everything that determines it. It is produced once under a file
lock, built in a temporary directory and renamed into place, so a crash or a full disk never leaves
a half-written artifact that a later run would trust. Pure: no torch.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

_META = "artifact.json"


class StoreError(RuntimeError):
    """An artifact could not be written; finished artifacts are untouched."""


def digest(*parts: Any) -> str:
    """A stable hex key over JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file and rename, so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _store_error(path, exc) from exc


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _store_error(path: Path, exc: OSError) -> StoreError:
    if exc.errno == errno.ENOSPC:
        free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free / 2**30
        return StoreError(
            f"disk full while writing '{path}' ({free:.1f} GiB free). Finished results are kept; "
            "free space (or point --run-dir at a larger volume) and rerun: completed work is reused."
        )
    return StoreError(f"cannot write '{path}': {exc.strerror or exc}. Check permissions and free space.")


@dataclass(frozen=True)
class Artifact:
    path: Path
    reused: bool


class Store:
    """Artifacts as `<root>/<kind>/<prefix>-<key>/` directories with an `artifact.json` marker.

    Directory names are neutral hex keys on purpose: InvarLock infers the model family from
    substrings of the model path, so a directory named after a model would change its behaviour.
    `session` marks artifacts made in this pytest session; with `recompute=True` only those count.
    """

    def __init__(self, root: Path, *, session: str = "", recompute: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self.session = session
        self.recompute = recompute

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{kind[0]}-{key}"

    def _valid(self, path: Path, kind: str) -> bool:
        meta = path / _META
        if not meta.is_file():
            return False
        if kind not in self.recompute:
            return True
        try:
            return json.loads(meta.read_text()).get("session") == self.session
        except (OSError, ValueError):
            return False

    def lookup(self, kind: str, key: str) -> Path | None:
        path = self.path(kind, key)
        return path if self._valid(path, kind) else None

    def produce(self, kind: str, key: str, build: Callable[[Path], dict[str, Any] | None]) -> Artifact:
        """Return the artifact, building it once under a lock if it is missing (or stale under recompute).

        `build(tmpdir)` fills a fresh directory and may return metadata to store in artifact.json.
        """
        path = self.path(kind, key)
        if self._valid(path, kind):
            return Artifact(path, reused=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if self._valid(path, kind):
                return Artifact(path, reused=True)
            tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
            try:
                meta = build(tmp) or {}
                write_json_atomic(tmp / _META, {**meta, "key": key, "kind": kind, "session": self.session})
                if path.exists():
                    shutil.rmtree(path)
                os.replace(tmp, path)
            except OSError as exc:
                raise _store_error(path, exc) from exc
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        return Artifact(path, reused=False)

    def metadata(self, artifact_path: Path) -> dict[str, Any]:
        return json.loads((artifact_path / _META).read_text())
