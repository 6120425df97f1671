"""Time limits per kind and size class, for items and for the shared work they trigger. Pure.

An item's limit covers its own work only. Shared work it triggers (its model's download, an edit
build, evaluation windows, a calibration run made for the preset) runs under a limit of its own and
is not charged to the item, so the first item of a 72B model does not pay for a 144 GB download.

Where a limit comes from, first match wins: `--invarlock-timeout KIND=S` (exact), then the command
line's bare `--invarlock-timeout S`, then the suite's `timeouts: {KIND: S}` and its `default:` (never
below the size class's `timeout_floor_s`), then the size class's `timeout_s` (a calibration item's
limit, `suites/size_classes.yaml`) times the kind's share below. Downloads scale with the weights.
The B200 document's `TASK_TIMEOUT_DEFAULT` (21600 s, one value for every task of 7B-72B models) is
the 70b class's figure; docs/time-limits.md gives the measured reasons for the shares.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from pytest_invarlock.campaign.kinds import Kind

ITEM_KINDS = tuple(str(k) for k in Kind)
SHARED_KINDS = ("download", "edit", "prepare", "disk_wait")
LIMIT_KINDS = (*ITEM_KINDS, *SHARED_KINDS)
DEFAULT_KEY = "default"
REFERENCE_S = 21600.0  # the B200 document's TASK_TIMEOUT_DEFAULT
FALLBACK_CLASS_S = REFERENCE_S  # a size class that names no timeout_s
# A kind's share of its size class's timeout_s. A calibration item evaluates both sides (baseline and
# subject: 16.1 s against 8.2 s for an edit item on the tiny suite), an edit item one side (the baseline
# report is calibration run k's, charged to that run); an lm-eval task can take as long as an evaluate.
SHARE: Mapping[str, float] = {
    Kind.CALIBRATION: 1.0,
    Kind.CLEAN: 0.5,
    Kind.STRESS: 0.5,
    Kind.ERROR: 0.5,
    Kind.BENCHMARK: 1.0,
    "edit": 0.25,  # load (host RAM), apply, save and seal one copy of the weights
    "prepare": 0.5,  # evaluation windows: pool, pilot pass, a run's difficulty scores
}
DOWNLOAD_BASE_S = 1800.0  # the tiny model's offline build takes ~4.5 min on 2 cores
DOWNLOAD_S_PER_GB = 40.0  # 25 MiB/s, a fifth of the 114 MB/s measured on a cluster (slurm findings)
DISK_WAIT_S = 3600.0  # how long an item waits for free disk before it fails


def parse_command_line(values: Iterable[str]) -> dict[str, float]:
    """`--invarlock-timeout` values (`KIND=SECONDS` or a bare `SECONDS` for every kind) as kind -> seconds.

    ValueError names the bad value and the accepted forms.
    """
    out: dict[str, float] = {}
    for value in values:
        for part in (p.strip() for p in str(value).split(",")):
            if not part:
                continue
            kind, _, seconds = part.rpartition("=")
            kind = kind.strip() or DEFAULT_KEY
            if kind not in (*LIMIT_KINDS, DEFAULT_KEY):
                raise ValueError(
                    f"--invarlock-timeout {part!r}: unknown kind {kind!r}; use one of {', '.join(LIMIT_KINDS)} "
                    "(KIND=SECONDS), or SECONDS alone for every kind"
                )
            try:
                number = float(seconds)
            except ValueError:
                number = -1.0
            if not 0 < number < float("inf"):
                raise ValueError(
                    f"--invarlock-timeout {part!r}: the limit must be a positive number of seconds, e.g. {kind}=3600"
                )
            out[kind] = number
    return out


def limit_s(
    kind: str,
    *,
    class_s: float | None,
    floor_s: float | None,
    weights_gb: float,
    suite: Mapping[str, float],
    command_line: Mapping[str, float],
) -> float:
    """The limit in seconds for work of `kind` on a model of this size class (see the module docstring)."""
    kind = str(kind)
    if kind not in LIMIT_KINDS:
        raise ValueError(f"no time limit is defined for {kind!r}; kinds are {', '.join(LIMIT_KINDS)}")
    given = command_line.get(kind, command_line.get(DEFAULT_KEY))
    if given is not None:
        return float(given)
    chosen = suite.get(kind, suite.get(DEFAULT_KEY))
    if chosen is not None:
        return max(float(chosen), float(floor_s or 0.0))
    return default_s(kind, class_s=class_s, weights_gb=weights_gb)


def default_s(kind: str, *, class_s: float | None, weights_gb: float) -> float:
    """The built-in limit: the size class's figure times the kind's share; downloads scale with the weights."""
    if kind == "download":
        return DOWNLOAD_BASE_S + DOWNLOAD_S_PER_GB * max(0.0, weights_gb)
    if kind == "disk_wait":
        return DISK_WAIT_S
    return float(class_s or FALLBACK_CLASS_S) * SHARE[kind]
