"""Content-addressed artifacts in the run directory, shared by xdist workers, racing pytest processes and later runs.

Every expensive product (baseline copy, baseline report, preset, edited weights, certify result, benchmark
score) is stored under a key that digests everything that determines it, as `<root>/<category>/<k>-<key>/`.

**Built once.** An artifact is built under its lock, in a temporary sibling directory
(`.<name>.tmp-*`), sealed, and renamed into place; whoever waited on the lock then finds it and reuses it.

**Proves itself.** Sealing writes `checksums.json` last: every file's size and sha256 (a symlink's target
and the target's size), plus a checksum of that listing. A reader trusts an artifact only when the
listing parses, every listed file is there with its size, no unlisted file was added, and the hashes
match. Sizes are checked on every use; the full hash once per process and again whenever a file's
mtime, size or inode changed (`_VERIFIED`). A missing, truncated, altered or unparsable artifact is
never used: the store says so in one warning line (`Store.warnings`, the log) and rebuilds it, so the
item ends as it would have. An artifact written by an older version without checksums counts as damaged.
Because a torn write (power loss before the page cache reached the disk) shows up as a size or hash
mismatch, the store does not fsync. Cost (perf/store_checksums.py, measured here): sha256 runs at ~1.4 GB/s
on one core, so a tiny-suite edit (8 MB) costs ~6 ms and a 7B bf16 edit (14.5 GB) ~10 s to seal and
~10 s once per worker process that uses it (a size check, ~0.2 ms, after that); next to the minutes a
7B certify takes, that is a few percent.

**Locks: POSIX record locks (`fcntl.lockf`) on `<artifact>.lock`, chosen over the alternatives:**

- They are released by the kernel when the holder dies in any way, SIGKILL and OOM-kill included, so a
  killed run never leaves a lock that blocks the next one; no pid file, heartbeat or stale-lock guess.
- They are the locks network filesystems implement: NFSv4 natively (the server drops a dead client's
  locks when its lease expires, 90 s by default), NFSv3 through lockd/NLM, Lustre with `-o flock`,
  CephFS and GPFS. `flock()` (what `filelock.UnixFileLock` uses) is emulated with these same locks on
  Linux NFS clients but stays host-local on some other filesystems (and older kernels).
- O_EXCL lock files (`filelock.SoftFileLock`, mkdir locks like the B200 bash harness's) survive a SIGKILL: they need
  stale-lock detection by pid, host and heartbeat, which guesses wrong across hosts and clocks.
- The one trap of POSIX locks, that they belong to the process (a second open of the same file in the
  process, closed, drops the lock; threads of one process never exclude each other), is closed by a
  per-process thread lock per path taken first, and by never opening a lock file anywhere else.
- Lock files are never deleted: deleting one while another process waits on it would let two builders in.
  They hold the current holder's `pid host start-time`, which waiting processes log.
A lock on a filesystem without lock support (some FUSE mounts, NFS without lockd) fails with a
clear StoreError naming the mount, instead of silently not excluding anyone.

**Evicted, rebuilt, checked.** An artifact that can be rebuilt from its recipe (edited weights) may
be *evicted*: its large files are deleted and `evicted.json` lists each one's sha256, while the seal,
metadata and small files stay. It then reads as missing (`EVICTED`); the next `produce` rebuilds it
quietly and checks that every evicted file came back with the same sha256, else the rebuild is refused
(`RebuildMismatch`) and the stub kept. Whoever reads an artifact's files for a while holds it *in use*
(`Store.in_use`): a shared `fcntl.lockf` on `<artifact>.use` plus a per-process count (a second open of
the file in one process would drop the first's lock), taken under the build lock, so `evict` (which
needs the build lock and an exclusive use lock, without waiting) never removes files someone reads.

**Leftovers.** A builder killed mid-build leaves its `.<name>.tmp-*` directory: the next builder of the
same key removes it under the lock, and `Store.sweep()` (run at the start of each session) removes
every one whose lock is free. Readers never look at dot-names.

Pure: no torch.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("pytest_invarlock")

_META = "artifact.json"
CHECKSUMS = "checksums.json"
EVICTED = "evicted.json"  # marks an artifact whose large files were removed; lists their sha256
USE_SUFFIX = ".use"
BUILDS_LOG = "builds.log"
LOCK_SUFFIX = ".lock"
CHECKSUM_FIELD = "checksum"
_LAYOUT = 1
_TMP_MARK = ".tmp-"
_DAMAGED_MARK = ".damaged-"
_WAIT_NOTICE_S = 10.0


class StoreError(RuntimeError):
    """An artifact could not be written (or locked); finished artifacts are untouched."""


class RebuildMismatch(StoreError):
    """An evicted artifact was rebuilt from its recipe and came out different from the copy it sealed."""


class DamagedError(ValueError):
    """A file or artifact failed its checksum, size or parse check; the message says which and how."""


def digest(*parts: Any) -> str:
    """A stable hex key over JSON-serialisable parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:20]


# --------------------------------------------------------------------------- disk full


def is_disk_full(exc: BaseException | None) -> bool:
    """True when `exc` (or what caused it) is ENOSPC/EDQUOT, also when a library re-raised it as text."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if "No space left on device" in str(exc) or "Disk quota exceeded" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def existing_ancestor(path: Path) -> Path:
    """`path`, or its nearest ancestor that exists: where free space is measured for a path not yet made."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def disk_full_message(path: Path) -> str:
    free = shutil.disk_usage(existing_ancestor(path)).free
    return (
        f"disk full (ENOSPC, No space left on device) while writing '{path}' ({_human(free)} free). "
        "Finished results are kept; free space (or point --run-dir at a larger volume) and rerun: "
        "completed work is reused."
    )


def _store_error(path: Path, exc: BaseException) -> StoreError:
    if is_disk_full(exc):
        return StoreError(disk_full_message(path))
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return StoreError(f"cannot write '{path}': {reason}. Check permissions and free space.")


def _human(nbytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024
    return f"{nbytes:.1f} GiB"


human_bytes = _human


# --------------------------------------------------------------------------- atomic and sealed files


def write_text_atomic(path: Path, text: str) -> None:
    """Write through a temp file and rename, so readers never see a partial file."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _store_error(path, exc) from exc
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise _store_error(path, exc) from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, default=str, separators=(",", ":")).encode()


def seal_json(data: dict[str, Any]) -> dict[str, Any]:
    """`data` plus a `checksum` field: sha256 of its canonical JSON without that field."""
    body = {k: v for k, v in data.items() if k != CHECKSUM_FIELD}
    # Round-trip first so the checksum covers what a reader will parse (tuples become lists, ...).
    body = json.loads(json.dumps(body, default=str))
    return {**body, CHECKSUM_FIELD: hashlib.sha256(_canonical(body)).hexdigest()}


def write_json_sealed(path: Path, data: dict[str, Any]) -> None:
    """Atomically write a JSON object that carries its own checksum (records)."""
    write_json_atomic(path, seal_json(data))


def read_json_sealed(path: Path) -> dict[str, Any]:
    """The object `write_json_sealed` wrote, or DamagedError saying what is wrong with the file.

    FileNotFoundError passes through: a missing file is not a damaged one.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise DamagedError(f"{path} cannot be read ({exc})") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise DamagedError(f"{path} does not parse as JSON ({len(text)} bytes: truncated or overwritten)") from None
    if not isinstance(data, dict) or CHECKSUM_FIELD not in data:
        raise DamagedError(f"{path} carries no checksum (written by an older version, or edited by hand)")
    body = {k: v for k, v in data.items() if k != CHECKSUM_FIELD}
    if hashlib.sha256(_canonical(body)).hexdigest() != data[CHECKSUM_FIELD]:
        raise DamagedError(f"{path} does not match its checksum (edited or corrupted)")
    return body


# --------------------------------------------------------------------------- locks


_THREAD_LOCKS: dict[str, threading.Lock] = {}
_THREAD_LOCKS_GUARD = threading.Lock()


def _thread_lock(path: Path) -> threading.Lock:
    with _THREAD_LOCKS_GUARD:
        return _THREAD_LOCKS.setdefault(str(path.absolute()), threading.Lock())


class ArtifactLock:
    """An exclusive POSIX record lock (`fcntl.lockf`) on `path`, safe across threads, processes and NFS hosts.

    See the module docstring for why this lock type. `acquire(blocking=False)` returns False when another
    thread or process holds it. While waiting it polls (so Ctrl-C is never stuck in a syscall) and logs
    who holds it after `_WAIT_NOTICE_S`.
    """

    def __init__(self, path: Path, *, poll_s: float = 0.05, on_wait: Callable[[str], None] | None = None) -> None:
        self.path = Path(path)
        self.poll_s = poll_s
        self.on_wait = on_wait
        self._thread_lock = _thread_lock(self.path)
        self._fd: int | None = None

    def holder(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip() or "unknown"
        except OSError:
            return "unknown"

    def acquire(self, blocking: bool = True) -> bool:
        if not self._thread_lock.acquire(blocking=blocking):
            return False
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            self._thread_lock.release()
            raise _store_error(self.path, exc) from exc
        started, noticed, delay = time.monotonic(), False, self.poll_s
        try:
            while True:
                try:
                    fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES):
                        raise StoreError(
                            f"cannot lock '{self.path}': {exc.strerror}. The run directory's filesystem must "
                            "support POSIX (fcntl) locks; on NFS mount with lock support (NFSv4, or NFSv3 "
                            "with lockd running), or put --run-dir on a local disk."
                        ) from exc
                if not blocking:
                    os.close(fd)
                    self._thread_lock.release()
                    return False
                if not noticed and time.monotonic() - started > _WAIT_NOTICE_S:
                    noticed = True
                    message = f"waiting for {self.path.name} (held by {self.holder()})"
                    log.info(message)
                    if self.on_wait:
                        self.on_wait(message)
                time.sleep(delay)
                delay = min(delay * 1.5, 1.0)
        except BaseException:
            if self._fd is None:
                os.close(fd)
                self._thread_lock.release()
            raise
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(
                fd, f"pid {os.getpid()} host {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S')}\n".encode(), 0
            )
        except OSError:
            pass  # the holder note is informational; a full disk must not stop the lock
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with suppress(OSError):
            os.ftruncate(fd, 0)
        try:
            fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)
            self._thread_lock.release()

    def __enter__(self) -> ArtifactLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


# --------------------------------------------------------------------------- checksums


# artifact directory -> the stat signature its full hash was last verified at, in this process
_VERIFIED: dict[str, tuple[Any, ...]] = {}
_VERIFIED_GUARD = threading.Lock()


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# a file's stat signature -> the sha256 of its bytes, in this process
_CONTENT_SHA256: dict[tuple[int, ...], str] = {}


def stat_signature(path: Path) -> tuple[int, int, int, int, int]:
    """(device, inode, size, mtime, ctime) of a file, links followed. A rewrite in place changes ctime even when
    the size stays and the mtime is put back (`cp -p`, `rsync -t --inplace`); the kernel sets ctime, nobody else."""
    stat = path.stat()
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def content_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read once per process and again whenever its `stat_signature` changed: a copied
    or touched file keeps its digest, an edited one changes it. A file that changed while it was read is not
    memoised (the next call reads it again)."""
    before = stat_signature(path)
    if before not in _CONTENT_SHA256:
        sha = _sha256(path)
        if stat_signature(path) != before:
            return sha
        _CONTENT_SHA256[before] = sha
    return _CONTENT_SHA256[before]


def _walk(root: Path) -> Iterator[tuple[str, Path]]:
    """(relative path, path) of every file and symlink under root; the checksum file itself excluded."""
    for directory, dirnames, filenames in os.walk(root):
        base = Path(directory)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                yield str((base / name).relative_to(root)), base / name
        for name in sorted(filenames):
            path = base / name
            rel = str(path.relative_to(root))
            if rel != CHECKSUMS:
                yield rel, path


def _listing_checksum(files: dict[str, Any]) -> str:
    return hashlib.sha256(_canonical(files)).hexdigest()


def seal(directory: Path) -> dict[str, Any]:
    """Write `checksums.json` for every file under `directory` (last, atomically); return the listing."""
    files: dict[str, Any] = {}
    for rel, path in _walk(directory):
        if path.is_symlink():
            target = os.readlink(path)
            files[rel] = {"link": target, "size": path.stat().st_size if path.exists() else None}
        else:
            files[rel] = {"size": path.stat().st_size, "sha256": _sha256(path)}
    listing = {"layout": _LAYOUT, "files": files, "listing_sha256": _listing_checksum(files)}
    write_json_atomic(directory / CHECKSUMS, listing)
    with _VERIFIED_GUARD:
        _VERIFIED.pop(str(directory.absolute()), None)
    return listing


def verify(directory: Path, *, full: bool | None = None) -> str | None:
    """None when `directory` is a sealed, intact artifact; else why not ("missing" when there is none).

    Sizes, links and the file set are checked every time; the hashes when `full` is True, or (None) when
    this process has not verified the directory at its current stat signature.
    """
    if not directory.is_dir():
        return "missing"
    if (directory / EVICTED).is_file():
        return EVICTED
    try:
        files = _listed_files(directory / CHECKSUMS)
        present = dict(_walk(directory))
        _check_file_set(files, present)
        signature = _checked_sizes(files, present)
        _check_hashes(directory, files, present, signature, full=full)
    except DamagedError as exc:
        return str(exc)
    return None


def _listed_files(checksums: Path) -> dict[str, Any]:
    """The `files` listing of `checksums.json`, once it parses and matches its own checksum."""
    try:
        text = checksums.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DamagedError(f"{CHECKSUMS} is missing (unfinished, or written by a version without checksums)") from None
    except OSError as exc:
        raise DamagedError(f"{CHECKSUMS} cannot be read ({exc.strerror})") from None
    try:
        listing = json.loads(text)
        files: dict[str, Any] = listing["files"]
        intact = listing.get("listing_sha256") == _listing_checksum(files)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise DamagedError(f"{CHECKSUMS} does not parse ({len(text)} bytes)") from None
    if not intact:
        raise DamagedError(f"{CHECKSUMS} does not match its own checksum")
    return files


def _check_file_set(files: dict[str, Any], present: dict[str, Path]) -> None:
    """No file was added that the listing does not name."""
    extra = sorted(set(present) - set(files))
    if extra:
        raise DamagedError(f"unlisted file {extra[0]}" + (f" (+{len(extra) - 1} more)" if len(extra) > 1 else ""))


def _checked_sizes(files: dict[str, Any], present: dict[str, Path]) -> tuple[Any, ...]:
    """Every listed file there with its size, every link to its target; the files' stat signature."""
    signature: list[Any] = []
    for rel, entry in sorted(files.items()):
        path = present.get(rel)
        if path is None:
            raise DamagedError(f"{rel} is missing")
        if "link" in entry:
            _check_link(rel, entry, path)
        else:
            signature.append(_checked_size(rel, entry, path))
    return tuple(signature)


def _check_link(rel: str, entry: dict[str, Any], path: Path) -> None:
    if not path.is_symlink() or os.readlink(path) != entry["link"]:
        raise DamagedError(f"{rel} no longer links to {entry['link']}")
    if entry.get("size") is None:
        return
    if not path.exists():
        raise DamagedError(f"{rel} links to {entry['link']}, which is gone")
    if path.stat().st_size != entry["size"]:
        raise DamagedError(f"{rel}'s target has {path.stat().st_size} bytes, {entry['size']} expected")


def _checked_size(rel: str, entry: dict[str, Any], path: Path) -> tuple[str, int, int, int]:
    """(rel, size, mtime, inode) of a listed regular file whose size is the sealed one."""
    try:
        stat = path.stat()
    except OSError:
        raise DamagedError(f"{rel} cannot be read") from None
    if path.is_symlink() or stat.st_size != entry["size"]:
        raise DamagedError(f"{rel} has {stat.st_size} bytes, {entry['size']} expected (truncated or replaced)")
    return (rel, stat.st_size, stat.st_mtime_ns, stat.st_ino)


def _check_hashes(
    directory: Path, files: dict[str, Any], present: dict[str, Path], signature: tuple[Any, ...], *, full: bool | None
) -> None:
    """Every file's sha256, when `full` (None: unless this process verified `directory` at `signature`)."""
    key = str(directory.absolute())
    if full is None:
        with _VERIFIED_GUARD:
            full = _VERIFIED.get(key) != signature
    if not full:
        return
    for rel, entry in files.items():
        if "sha256" in entry and _sha256(present[rel]) != entry["sha256"]:
            raise DamagedError(f"{rel} does not match its sha256 (corrupted or edited)")
    with _VERIFIED_GUARD:
        _VERIFIED[key] = signature


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class Artifact:
    path: Path
    reused: bool


@dataclass(frozen=True)
class Held:
    """An intact artifact on disk: its removable bytes, when it was last used (epoch s), its artifact.json."""

    path: Path
    nbytes: int
    last_used: float
    meta: dict[str, Any]


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


# --------------------------------------------------------------------------- in use

# `<artifact>.use` path -> [fd holding a shared lock, holds in this process]
_USES: dict[str, list[int]] = {}
_USES_GUARD = threading.Lock()


class UseHold:
    """A shared hold on an artifact (see the module docstring); re-entrant within a process."""

    def __init__(self, use_file: Path) -> None:
        self.key = str(use_file.absolute())
        self.use_file = use_file

    def __enter__(self) -> UseHold:
        with _USES_GUARD:
            entry = _USES.get(self.key)
            if entry is not None:
                entry[1] += 1
                return self
            try:
                fd = os.open(self.use_file, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _store_error(self.use_file, exc) from exc
            _USES[self.key] = [fd, 1]
        delay = 0.01
        while True:  # only an evictor's brief exclusive hold can be in the way
            try:
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    self.__exit__()
                    raise _store_error(self.use_file, exc) from exc
                time.sleep(delay)
                delay = min(delay * 2, 0.5)
        with suppress(OSError):
            os.utime(self.use_file)  # last use, for least-recently-used eviction
        return self

    def __exit__(self, *exc: object) -> None:
        with _USES_GUARD:
            entry = _USES.get(self.key)
            if entry is None:
                return
            entry[1] -= 1
            if entry[1] > 0:
                return
            del _USES[self.key]
        with suppress(OSError):
            fcntl.lockf(entry[0], fcntl.LOCK_UN)
        os.close(entry[0])


@contextmanager
def _exclusive_use(use_file: Path) -> Iterator[bool]:
    """Whether nobody holds `use_file` in use; while True, nobody can start to (until the block ends)."""
    with _USES_GUARD:
        if str(use_file.absolute()) in _USES:  # held in this process: never open it again here
            yield False
            return
        try:
            fd = os.open(use_file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            yield False
            return
        try:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                yield False
                return
            try:
                yield True
            finally:
                with suppress(OSError):
                    fcntl.lockf(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


class Store:
    """Artifacts as `<root>/<category>/<prefix>-<key>/` directories with `artifact.json` and `checksums.json`.

    Directory names are neutral hex keys on purpose: InvarLock infers the model family from
    substrings of the model path, so a directory named after a model would change its behaviour.
    `session` marks artifacts made in this pytest session; with `recompute=True` only those count.
    `warnings` collects one line per damaged artifact this process found (and rebuilt); `rebuilt` the
    evicted artifacts it rebuilt from their recipe; `built` counts the artifacts it built.
    """

    def __init__(self, root: Path, *, session: str = "", recompute: frozenset[str] = frozenset()) -> None:
        self.root = Path(root)
        self.session = session
        self.recompute = recompute
        self.warnings: list[str] = []
        self.rebuilt: list[str] = []
        self.built = 0

    def path(self, category: str, key: str) -> Path:
        return self.root / category / f"{category[0]}-{key}"

    def lock(self, path: Path) -> ArtifactLock:
        return ArtifactLock(path.parent / (path.name + LOCK_SUFFIX))

    def _problem(self, path: Path, category: str) -> str | None:
        """None when the artifact can be reused; "missing"; EVICTED; "stale" (recompute); else what is damaged."""
        problem = verify(path)
        if problem not in (None, EVICTED) or category not in self.recompute:
            return problem
        try:
            session = json.loads((path / _META).read_text()).get("session")
        except (OSError, ValueError):
            return f"{_META} does not parse"
        return None if session == self.session else "stale"

    def _warn(self, message: str) -> None:
        log.warning(message)
        self.warnings.append(message)

    def _rel(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.root.parent))
        except ValueError:
            return str(path)

    def lookup(self, category: str, key: str) -> Path | None:
        path = self.path(category, key)
        return path if self._problem(path, category) is None else None

    def produce(self, category: str, key: str, build: Callable[[Path], dict[str, Any] | None]) -> Artifact:
        """Return the artifact, building it once under its lock if it is missing, damaged (or stale under recompute).

        `build(tmpdir)` fills a fresh directory and may return metadata to store in artifact.json.
        """
        path = self.path(category, key)
        if self._problem(path, category) is None:
            return Artifact(path, reused=True)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise _store_error(path, exc) from exc
        lock = self.lock(path)
        lock.on_wait = lambda message: log.info("%s: %s", self._rel(path), message)
        with lock:
            problem = self._problem(path, category)  # another process may have built or repaired it meanwhile
            if problem is None:
                return Artifact(path, reused=True)
            if problem not in ("missing", "stale", EVICTED):
                self._warn(f"{self._rel(path)} is damaged ({problem}); not trusted, rebuilding it")
            self._remove_leftovers(path)
            started = time.monotonic()
            tmp: Path | None = None
            try:
                tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}{_TMP_MARK}"))
                meta = build(tmp) or {}
                write_json_atomic(tmp / _META, {**meta, "key": key, "kind": category, "session": self.session})
                listing = seal(tmp)
                if problem == EVICTED:
                    self._check_rebuild(path, listing)
                if path.exists():
                    aside = path.parent / f".{path.name}{_DAMAGED_MARK}{os.getpid()}"
                    os.replace(path, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                os.replace(tmp, path)
                tmp = None
            except Exception as exc:
                if is_disk_full(exc) or isinstance(exc, OSError):
                    raise _store_error(path, exc) from exc
                raise
            finally:
                if tmp is not None:
                    shutil.rmtree(tmp, ignore_errors=True)
            with _VERIFIED_GUARD:  # built and hashed by this process just now
                _VERIFIED.pop(str(path.absolute()), None)
            verify(path, full=False)
            self._log_build(path, time.monotonic() - started)
            self.built += 1
            if problem == EVICTED:
                self.rebuilt.append(self._rel(path))
        return Artifact(path, reused=False)

    def _check_rebuild(self, path: Path, listing: dict[str, Any]) -> None:
        """An evicted artifact's rebuild must reproduce every evicted file bit for bit (call under its lock)."""
        try:
            evicted = json.loads((path / EVICTED).read_text(encoding="utf-8"))
            sealed: dict[str, str] = evicted["files"]
        except (OSError, ValueError, KeyError, TypeError):
            return  # an unreadable marker: nothing to compare with, the rebuild stands on its own seal
        for rel, sha in sorted(sealed.items()):
            now = listing["files"].get(rel, {}).get("sha256")
            if now != sha:
                raise RebuildMismatch(
                    f"{self._rel(path)} was rebuilt from its recipe, but {rel} differs from the copy sealed on "
                    f"{evicted.get('sealed', 'an earlier run')} (sha256 {sha[:12]}, now {(now or 'missing')[:12]}): this "
                    "build is not reproducible here, and results made on the sealed copy cannot be matched to it. "
                    "Rerun the model's items with --recompute to rebuild them all on this machine."
                )

    # ----------------------------------------------------------------- use and eviction

    def in_use(self, path: Path) -> UseHold:
        """Hold `path` in use (a context manager): `evict` leaves it alone until the hold ends."""
        return UseHold(path.parent / (path.name + USE_SUFFIX))

    def produce_in_use(
        self, category: str, key: str, build: Callable[[Path], dict[str, Any] | None], holds: ExitStack
    ) -> Artifact:
        """`produce`, then hold the artifact in use (until `holds` closes), checked intact under its build lock."""
        while True:
            artifact = self.produce(category, key, build)
            with self.lock(artifact.path):
                if verify(artifact.path, full=False) is None:
                    holds.enter_context(self.in_use(artifact.path))
                    return artifact
            # evicted between produce and the hold: make it again

    def evict(self, path: Path, removable: Callable[[str], bool], reason: str) -> int:
        """Remove the artifact's removable files, keep its seal and small files; return the bytes freed.

        0 when it is being built, held in use by anyone, already evicted, missing or damaged.
        """
        lock = self.lock(path)
        if not path.is_dir() or not lock.acquire(blocking=False):
            return 0
        try:
            if verify(path, full=False) is not None:
                return 0
            with _exclusive_use(path.parent / (path.name + USE_SUFFIX)) as free:
                if not free:
                    return 0
                listing = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
                files = {rel: e for rel, e in listing["files"].items() if "sha256" in e and removable(rel)}
                if not files:
                    return 0
                write_json_atomic(
                    path / EVICTED,
                    {
                        "files": {rel: e["sha256"] for rel, e in files.items()},
                        "bytes": sum(e["size"] for e in files.values()),
                        "reason": reason,
                        "sealed": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime((path / CHECKSUMS).stat().st_mtime)),
                        "evicted": time.strftime("%Y-%m-%dT%H:%M:%S"),
                        "pid": os.getpid(),
                        "host": socket.gethostname(),
                    },
                )
                for rel in files:
                    (path / rel).unlink(missing_ok=True)
                with _VERIFIED_GUARD:
                    _VERIFIED.pop(str(path.absolute()), None)
                log.info("%s: evicted %s (%s)", self._rel(path), human_bytes(sum(e["size"] for e in files.values())), reason)
                return int(sum(e["size"] for e in files.values()))
        finally:
            lock.release()

    def held(self, category: str, removable: Callable[[str], bool]) -> list[Held]:
        """The intact artifacts of `category` on disk: their removable bytes, when last used, and metadata."""
        out: list[Held] = []
        for path in sorted((self.root / category).glob("?-*")):
            if not path.is_dir() or (path / EVICTED).exists():
                continue
            try:
                listing = json.loads((path / CHECKSUMS).read_text(encoding="utf-8"))
                meta = json.loads((path / _META).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            size = sum(int(e.get("size") or 0) for rel, e in listing.get("files", {}).items() if "sha256" in e and removable(rel))
            use = path.parent / (path.name + USE_SUFFIX)
            used = max(_mtime(use), _mtime(path / CHECKSUMS))
            out.append(Held(path, size, used, meta))
        return out

    def _log_build(self, path: Path, seconds: float) -> None:
        """One line per artifact built, appended to `<root>/builds.log` (what 'built once' is checked against)."""
        line = f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {self._rel(path)} pid {os.getpid()} host {socket.gethostname()} {seconds:.1f}s\n"
        try:
            fd = os.open(self.root / BUILDS_LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode())
            finally:
                os.close(fd)
        except OSError:
            pass

    def _remove_leftovers(self, path: Path) -> None:
        """Temporary and set-aside directories of this artifact (a killed builder's); call under its lock."""
        for leftover in path.parent.glob(f".{path.name}.*"):
            if (_TMP_MARK in leftover.name or _DAMAGED_MARK in leftover.name) and leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)

    def sweep(self) -> list[Path]:
        """Remove leftovers of killed builders whose lock is free (session start); returns what was removed."""
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for category_dir in self.root.iterdir():
            if not category_dir.is_dir():
                continue
            for leftover in category_dir.glob(".*"):
                if not leftover.is_dir() or (_TMP_MARK not in leftover.name and _DAMAGED_MARK not in leftover.name):
                    continue
                name = leftover.name[1:].split(_TMP_MARK)[0].split(_DAMAGED_MARK)[0]
                lock = self.lock(category_dir / name)
                if not lock.acquire(blocking=False):
                    continue  # being built right now by another process
                try:
                    shutil.rmtree(leftover, ignore_errors=True)
                    removed.append(leftover)
                finally:
                    lock.release()
        return removed

    def metadata(self, artifact_path: Path) -> dict[str, Any]:
        meta: dict[str, Any] = json.loads((artifact_path / _META).read_text())
        return meta
