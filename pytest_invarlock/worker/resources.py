"""Worker resources: freeing memory between models, recognising CUDA OOM, and item time limits.

- `release_memory()` drops what Python still holds (gc) and returns the CUDA caching allocator's
  free blocks to the driver, so the next model (ours or another worker's on a shared GPU) and the
  controller's NVML reading see the memory as free. `memory_snapshot()` says what is still held.
- `is_oom(...)` recognises an out-of-memory failure: torch's `OutOfMemoryError`, or InvarLock's log
  of one (its loader wraps the error as MODEL-LOAD-FAILED; the message keeps "out of memory").
- `deadline(seconds, what)` bounds an item; a `deadline` nested inside it bounds a piece of shared
  work the item triggered (a download, an edit build) and pauses the item's own clock meanwhile, so
  shared work is charged to itself. A subprocess evaluate is bounded by its child; in-process work by
  SIGALRM raising `ItemTimeout`; a hang in C code by a watchdog that ends the xdist worker. Why this
  design: docs/reliability.md, "How a time limit is enforced".
"""

from __future__ import annotations

import contextlib
import faulthandler
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pytest_invarlock.campaign.failures import ErrorClass, classify

log = logging.getLogger("pytest_invarlock")

EXIT_TIMED_OUT = 70
HARD_GRACE_S = 60.0


class ItemTimeout(BaseException):  # an interruption, like KeyboardInterrupt
    """Raised in the main thread when an item runs past its limit."""

    def __init__(self, seconds: float, what: str) -> None:
        super().__init__(f"{what} timed out after {seconds:g} s")
        self.seconds = seconds
        self.what = what


# --------------------------------------------------------------------------- memory


def release_memory() -> None:
    """Collect garbage and hand CUDA's cached free blocks back to the driver (no-op without CUDA)."""
    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def memory_snapshot() -> dict[str, Any]:
    """CUDA memory this process holds and the device's free memory, in bytes ({} without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return {}
    free, total = torch.cuda.mem_get_info()
    return {
        "cuda_allocated_bytes": int(torch.cuda.memory_allocated()),
        "cuda_reserved_bytes": int(torch.cuda.memory_reserved()),
        "cuda_free_bytes": int(free),
        "cuda_total_bytes": int(total),
    }


def is_oom(error: BaseException | str | None) -> bool:
    """Whether an exception (or a failure message / log tail) is a device out-of-memory error."""
    if error is None:
        return False
    if isinstance(error, BaseException):
        torch = sys.modules.get("torch")
        if torch is not None and isinstance(error, torch.OutOfMemoryError):
            return True
        error = f"{type(error).__name__}: {error}"
    return classify(error) == ErrorClass.OOM


def smaller_batch(batch: int | str) -> int | None:
    """The lm-eval batch to retry with after an OOM: half of a fixed batch; 8 after an automatic one.

    None when the batch is already 1 (nothing smaller to try). lm-eval's "auto" batch already probes
    down from its maximum, so an OOM under it happened later, on a longer request: a fixed 8 is the
    B200 bash harness's next step.
    """
    text = str(batch).strip().lower()
    if text.startswith("auto"):
        return 8
    size = int(text)
    return size // 2 if size > 1 else None


# --------------------------------------------------------------------------- time limits


@dataclass
class _Limit:
    """One active time limit: the item's, or a piece of shared work's nested inside it."""

    what: str
    seconds: float
    note: Callable[[str], None] | None
    spent: float = 0.0  # seconds charged before the current stretch
    since: float | None = None  # monotonic start of the current stretch; None while a nested limit runs
    expired: bool = False

    def remaining(self, now: float) -> float:
        return self.seconds - self.spent - (now - self.since if self.since is not None else 0.0)


_LIMITS: list[_Limit] = []  # the main thread's active limits, innermost last
_LIMITS_GUARD = threading.Lock()


def remaining_s() -> float | None:
    """Seconds left under the innermost active limit (None without one): what a subprocess may be given."""
    with _LIMITS_GUARD:
        return _LIMITS[-1].remaining(time.monotonic()) if _LIMITS else None


@contextlib.contextmanager
def deadline(
    seconds: float | None, what: str, *, note: Callable[[str], None] | None = None, grace_s: float | None = None
) -> Iterator[None]:
    """Run the block with a time limit (docs/reliability.md, "How a time limit is enforced"); None or <= 0 means no limit.

    Nested inside another `deadline`, the block is charged to its own limit: the enclosing one is
    paused until it ends. `note(message)` is called by the watchdog before it ends the process (to
    leave the reason on disk); a nested limit without its own note uses the enclosing one's.
    """
    if not seconds or seconds <= 0:
        yield
        return
    in_main = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")
    now = time.monotonic()
    with _LIMITS_GUARD:
        outer = _LIMITS[-1] if _LIMITS else None
        if outer is not None and outer.since is not None:
            outer.spent += now - outer.since
            outer.since = None
        limit = _Limit(what, seconds, note or (outer.note if outer else None), since=now)
        _LIMITS.append(limit)
    previous_handler = None
    if in_main:

        def _interrupt(signum: int, frame: Any) -> None:
            limit.expired = True
            raise ItemTimeout(seconds, what)

        previous_handler = signal.signal(signal.SIGALRM, _interrupt)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    done = threading.Event()
    if outer is None:
        grace = HARD_GRACE_S if grace_s is None else grace_s
        threading.Thread(target=_watchdog, args=(done, grace), daemon=True, name="invarlock-item-watchdog").start()
    try:
        yield
    except ItemTimeout:
        raise
    except BaseException as error:
        if limit.expired:  # the interruption was caught on the way (InvarLock's loader does) and became this
            raise ItemTimeout(seconds, what) from error
        raise
    else:
        if limit.expired:  # caught and carried on: whatever it returned ran past the limit
            raise ItemTimeout(seconds, what)
    finally:
        done.set()
        with _LIMITS_GUARD:
            _LIMITS.remove(limit)
            if outer is not None:
                outer.since = time.monotonic()
                left = outer.remaining(outer.since)
        if in_main:
            signal.setitimer(signal.ITIMER_REAL, max(left, 0.001) if outer is not None and not outer.expired else 0)
            signal.signal(signal.SIGALRM, previous_handler)


def _watchdog(done: threading.Event, grace: float) -> None:
    """Ends an xdist worker whose innermost limit ran out `grace` seconds ago without the block stopping."""
    while not done.wait(0.5):
        with _LIMITS_GUARD:
            if not _LIMITS:
                return
            limit = _LIMITS[-1]
            overdue = -limit.remaining(time.monotonic())
        if overdue < grace:
            continue
        under_xdist = "PYTEST_XDIST_WORKER" in os.environ
        message = f"{limit.what} timed out after {limit.seconds:g} s and did not stop within {grace:g} s more; " + (
            "ending this xdist worker so that a replacement takes the next items"
            if under_xdist
            else "without xdist no process can replace this one, so it keeps waiting"
        )
        log.error(message)
        with contextlib.suppress(Exception):
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        if limit.note is not None:
            with contextlib.suppress(Exception):
                limit.note(message)
        if under_xdist:
            os._exit(EXIT_TIMED_OUT)
        return


def timeout_note(run_dir: Path, item_id: str) -> Callable[[str], None]:
    """A `deadline` note that appends the reason to `<run_dir>/logs/timeouts.log`."""

    def write(message: str) -> None:
        path = run_dir / "logs" / "timeouts.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} pid={os.getpid()} {item_id}: {message}\n")

    return write


# --------------------------------------------------------------------------- seeing an OOM that InvarLock hides

OOM_MARKER = "pytest-invarlock: a torch.OutOfMemoryError was raised during this evaluate"


class OomWatch:
    """Notes every `torch.OutOfMemoryError` raised while active (Python 3.12 `sys.monitoring` RAISE events).

    InvarLock 0.12.1 wraps a failed model load as "[INVARLOCK:E201] MODEL-LOAD-FAILED" and prints
    neither the cause nor a traceback, so its log alone cannot tell an OOM from a broken checkpoint.
    The watch sees the original error where it is raised, whatever catches it later.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self._tool: int | None = None

    def __enter__(self) -> OomWatch:
        monitoring = getattr(sys, "monitoring", None)
        torch = sys.modules.get("torch")
        if monitoring is None or torch is None:
            return self
        for tool in range(6):
            if monitoring.get_tool(tool) is None:
                monitoring.use_tool_id(tool, "pytest-invarlock-oom-watch")
                self._tool = tool
                break
        if self._tool is None:
            return self
        oom_type = torch.OutOfMemoryError

        def on_raise(code: Any, offset: int, exception: BaseException) -> Any:
            if isinstance(exception, oom_type) and len(self.seen) < 10:
                self.seen.append(f"{type(exception).__name__}: {exception}"[:300])

        monitoring.register_callback(self._tool, monitoring.events.RAISE, on_raise)
        monitoring.set_events(self._tool, monitoring.events.RAISE)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._tool is not None:
            monitoring = sys.monitoring
            monitoring.set_events(self._tool, 0)
            monitoring.register_callback(self._tool, monitoring.events.RAISE, None)
            monitoring.free_tool_id(self._tool)
            self._tool = None
