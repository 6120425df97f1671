"""Failures handled once: what a failure belongs to, which items it takes down, and whether to retry it.

Pure. A `Failure` is a piece of shared work that broke in this session (a model's baseline, one
calibration run, the preset, one edit) or a model whose circuit breaker opened; `affects(item)` says
which items needed it, and `message` is what each of them reports (the failed item's id and its
cause). `classify` sorts an error's text into transient (network, hub 5xx/429, filesystem hiccups:
retried with `backoff_s`), out of memory, disk full, or permanent (everything else: never retried
within the session). The retry counts and the breaker's default are explained in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from pytest_invarlock.campaign.items import SuiteItem
from pytest_invarlock.campaign.kinds import AFTER_CALIBRATION
from pytest_invarlock.edits.catalogue import SpecError, parse_spec

TRANSIENT_RETRIES = 4  # after the first attempt: waits of about 5, 10, 20, 40 s (see backoff_s)
BACKOFF_BASE_S = 5.0
BACKOFF_CAP_S = 120.0
DEFAULT_MAX_MODEL_FAILURES = 3  # item errors of one model before its remaining items fail fast


class ErrorClass(StrEnum):
    TRANSIENT = "transient"  # retried with backoff
    OOM = "oom"  # retried with a smaller batch, then on a larger placement (worker.execution)
    DISK_FULL = "disk_full"  # the item fails; free space is waited for before the next item starts
    PERMANENT = "permanent"  # never retried within the session


class Scope(StrEnum):
    BASELINE = "baseline"  # the model's weights (download, integrity, load, evaluation windows): every item of it
    CALIBRATION = "calibration"  # one calibration run: every item that needs the calibrated preset
    PRESET = "preset"  # the preset derived from the runs: the same items
    EDIT = "edit"  # one edited (or error-injected) model: its certify and benchmark items that must compute
    MODEL = "model"  # the circuit breaker: every remaining item of the model


_OOM = re.compile(r"OutOfMemoryError|out of memory|CUBLAS_STATUS_ALLOC_FAILED", re.IGNORECASE)
_DISK_FULL = re.compile(r"ENOSPC|No space left on device|Disk quota exceeded|EDQUOT|disk full", re.IGNORECASE)
_TRANSIENT = re.compile(
    "|".join(
        (
            # network
            r"ConnectionError",
            r"ConnectTimeout",
            r"ReadTimeout",
            r"Read timed out",
            r"Connection (reset|aborted|refused)",
            r"RemoteDisconnected",
            r"IncompleteRead",
            r"ChunkedEncodingError",
            r"Temporary failure in name resolution",
            r"Max retries exceeded",
            r"Network is unreachable",
            r"\[Errno (101|104|110|111|113)\]",
            # the hub: server errors and rate limits
            r"\b50[0234]\b[^\n]{0,40}(Server Error|Bad Gateway|Service Unavailable|Gateway Time-?out)",
            r"\b429\b[^\n]{0,40}Too Many Requests",
            # filesystem hiccups (NFS and friends)
            r"Stale file handle",
            r"Resource temporarily unavailable",
            r"Device or resource busy",
            r"Interrupted system call",
            r"\[Errno (4|5|11|16|116)\]",
        )
    ),
    re.IGNORECASE,
)


def classify(text: str) -> ErrorClass:
    """Sort an error (its type, message and log tail as text) into the class that decides what happens next.

    Out of memory and disk full win over transient words in the same text (an OOM log often also says
    "Resource temporarily unavailable" on its way down); anything unrecognised is permanent.
    """
    if _OOM.search(text):
        return ErrorClass.OOM
    if _DISK_FULL.search(text):
        return ErrorClass.DISK_FULL
    if _TRANSIENT.search(text):
        return ErrorClass.TRANSIENT
    return ErrorClass.PERMANENT


def backoff_s(
    attempt: int, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None
) -> float:
    """The wait before retry `attempt` (1-based): capped exponential with equal jitter.

    The step is min(cap, base * 2^(attempt-1)); the wait is half of it plus a uniform share of the
    other half, so retries of many workers after one outage spread out but never retry at once.
    """
    if attempt < 1:
        raise ValueError(f"retry attempts count from 1, got {attempt}")
    step = min(cap_s, base_s * 2.0 ** (attempt - 1))
    jitter = rng.uniform(0, step / 2) if rng is not None else random.uniform(0, step / 2)
    return step / 2 + jitter


def spec_of(item: SuiteItem) -> str | None:
    """The canonical spec of the edited model an item needs (None: it needs the baseline only)."""
    if item.scenario is None or item.variant == "baseline":
        return None
    try:
        return str(parse_spec(item.scenario.spec))
    except SpecError:
        return item.scenario.spec


@dataclass(frozen=True)
class Failure:
    """A piece of shared work that failed in this session, and the item whose run found it."""

    scope: Scope
    model: str
    item: str  # param_id of the item that failed first
    cause: str
    error_class: ErrorClass = ErrorClass.PERMANENT
    detail: str = ""  # the calibration run ("2") or the edit's spec

    @property
    def key(self) -> str:
        """A file-name-safe key, the same for every worker that meets this failure."""
        tail = hashlib.sha256(f"{self.model}\0{self.detail}".encode()).hexdigest()[:12]
        return f"{self.scope}-{tail}"

    @property
    def what(self) -> str:
        if self.scope == Scope.CALIBRATION:
            return f"calibration run {self.detail} of {self.model}"
        if self.scope == Scope.EDIT:
            return f"edit {self.detail} of {self.model}"
        if self.scope == Scope.MODEL:
            return f"model {self.model} (circuit breaker)"
        return f"{self.scope} of {self.model}"

    @property
    def ends_dependents_at_once(self) -> bool:
        """Whether every item that needs this work ends as soon as it fails. Not for an edit: an item of the edit
        whose certificate or score is already stored does not need the weights, so each finds out when it does."""
        return self.scope != Scope.EDIT

    @property
    def message(self) -> str:
        """What every item that needed this work reports."""
        return f"{self.what} failed in item {self.item}: {self.cause}"

    def affects(self, item: SuiteItem) -> bool:
        """Whether `item` needed the failed work (and so cannot succeed in this session)."""
        if item.model.name != self.model:
            return False
        if self.scope in (Scope.BASELINE, Scope.MODEL):
            return True
        if self.scope in (Scope.CALIBRATION, Scope.PRESET):
            return item.kind in AFTER_CALIBRATION
        return spec_of(item) == self.detail

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Failure:
        return cls(
            scope=Scope(data["scope"]),
            model=str(data["model"]),
            item=str(data["item"]),
            cause=str(data["cause"]),
            error_class=ErrorClass(data.get("error_class", ErrorClass.PERMANENT)),
            detail=str(data.get("detail", "")),
        )


class CircuitBreaker:
    """Counts item errors per model; at `threshold` the model's breaker opens (0 never opens it).

    Only root errors count: an item that failed because work it needed had already failed is a
    consequence, not a new failure of the model.
    """

    def __init__(self, threshold: int = DEFAULT_MAX_MODEL_FAILURES) -> None:
        if threshold < 0:
            raise ValueError(f"the circuit breaker threshold must be 0 (off) or more, got {threshold}")
        self.threshold = threshold
        self._errors: dict[str, list[tuple[str, str]]] = {}
        self._open: set[str] = set()

    def record(self, model: str, item: str, cause: str) -> Failure | None:
        """Count one error; return the model's failure when this error opens its breaker."""
        if not self.threshold or model in self._open:
            return None
        errors = self._errors.setdefault(model, [])
        errors.append((item, cause))
        if len(errors) < self.threshold:
            return None
        self._open.add(model)
        listed = "; ".join(f"{i}: {c[:160]}" for i, c in errors)
        return Failure(
            Scope.MODEL,
            model,
            item,
            f"{len(errors)} items of {model} failed ({listed}); its remaining items are not run in this session",
        )
