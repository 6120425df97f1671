"""Coverage of a Phase 0 verdict: which suite items its evidence covers, and how far each criterion was measured.

Pure, standard library only. A verdict is the campaign's only when every criterion of the B200 bash harness's rule was
measured on every item the suite defines for it. `Accounting` says where each suite item went (a verdict,
errored, skipped, not run, not selected by this session) and its role; `Criterion` is one criterion as far
as it was measured: its value on the items measured, the best value the missing items could still give,
and why items are missing. docs/verdict.md gives the status rules built on these.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

# What a suite item is for in the verdict: its kind, with informational stress edits apart (they have their own rule).
ROLES = ("calibration", "clean", "stress", "informational", "error", "benchmark")
UNKNOWN_ROLE = "unknown"  # an item without a record, when the caller gave no item fields
ROLE_NOUNS = {
    "calibration": "calibration (no-op) item",
    "clean": "clean-edit item",
    "stress": "gating stress-edit item",
    "informational": "informational stress-edit item",
    "error": "error-injection item",
    "benchmark": "lm-eval benchmark item",
    UNKNOWN_ROLE: "item of unknown kind",
}


def role_of(kind: object, expectation: object) -> str:
    """The role of an item from its record's (or its suite definition's) kind and expectation."""
    if expectation == "signal":  # informational stress edits and error injections
        return "informational"
    return str(kind) if kind in ROLES else UNKNOWN_ROLE


def plural(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


@dataclass(frozen=True)
class Accounting:
    """Where every suite item went. Lists hold (item id, reason) pairs, sorted by id.

    not_selected: the items of `not_run` that this session did not select (-k, -m, --shard,
    --calibrate-only, --no-benchmarks, a path), or that a merged campaign's options left out; empty
    otherwise. roles: suite item -> role
    (`ROLES`) where known, so a missing item can be charged to the criterion it would have measured.
    """

    suite_items: int
    with_verdict: int
    errored: tuple[tuple[str, str], ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    not_run: tuple[str, ...] = ()
    merged: tuple[tuple[str, str], ...] = ()  # (duplicate item, the item it was merged into)
    merge_key: str = ""  # how duplicates were recognised
    not_selected: tuple[str, ...] = ()
    roles: Mapping[str, str] = field(default_factory=dict)

    @property
    def unmeasured_ids(self) -> tuple[str, ...]:
        """Suite items without a measurement: not run, or skipped."""
        return tuple(sorted({*self.not_run, *(pid for pid, _ in self.skipped)}))

    @property
    def measured(self) -> int:
        return self.suite_items - len(self.unmeasured_ids)

    @property
    def complete(self) -> bool:
        return not self.unmeasured_ids

    def unmeasured(self, role: str) -> tuple[str, ...]:
        return tuple(pid for pid in self.unmeasured_ids if self.roles.get(pid, UNKNOWN_ROLE) == role)

    def why(self, ids: tuple[str, ...]) -> str:
        """Why these items have no measurement: '3 not selected this session, 1 skipped, 2 with no record'."""
        chosen = set(ids)
        skipped = sum(1 for pid, _ in self.skipped if pid in chosen)
        not_selected = len(chosen & set(self.not_selected))
        no_record = len(chosen) - skipped - not_selected
        parts = [
            f"{not_selected} not selected this session" if not_selected else "",
            f"{skipped} skipped" if skipped else "",
            f"{no_record} with no record in the run directory" if no_record else "",
        ]
        return ", ".join(p for p in parts if p)

    def to_dict(self) -> dict[str, object]:
        by_role: dict[str, int] = {}
        for pid in self.unmeasured_ids:
            role = self.roles.get(pid, UNKNOWN_ROLE)
            by_role[role] = by_role.get(role, 0) + 1
        return {
            "suite_items": self.suite_items,
            "measured": self.measured,
            "with_verdict": self.with_verdict,
            "errored": [list(e) for e in self.errored],
            "skipped": [list(s) for s in self.skipped],
            "not_run": list(self.not_run),
            "not_selected": list(self.not_selected),
            "unmeasured_by_role": dict(sorted(by_role.items())),
            "merged": [list(m) for m in self.merged],
            "merge_key": self.merge_key,
        }


@dataclass(frozen=True)
class Criterion:
    """One criterion of the B200 bash harness's rule, as far as it was measured.

    value: on the outcomes measured (None: nothing measured). best: the value if every missing item came
    out right (and every edit whose lm-eval truth waits for items not run turned out right); below the
    limit, the criterion fails whatever the missing items give. missing counts this criterion's suite
    items without a measurement; why says where they went.
    """

    name: str
    limit: float
    measured: int
    missing: int
    value: float | None
    best: float | None
    noun: str  # what its items are ("error-injection item")
    why: str = ""
    unit: str = ""  # what `value` is a share of, for the text

    @property
    def complete(self) -> bool:
        return self.measured > 0 and self.missing == 0

    @property
    def met(self) -> bool | None:
        return None if self.value is None else self.value >= self.limit

    @property
    def certain_fail(self) -> bool:
        return self.best is not None and self.best < self.limit

    def describe(self) -> str:
        rule = f"{self.name} >= {100 * self.limit:.0f}%"
        if self.measured == 0 and self.missing == 0:
            return f"{rule}: not measured: the suite defines no {self.noun}"
        if self.measured == 0:
            return f"{rule}: not measured: no verdict for the suite's {plural(self.missing, self.noun)} ({self.why})"
        value = f"{100 * (self.value or 0.0):.1f}%"
        if self.complete:
            return f"{rule}: {value} {self.unit}: {'met' if self.met else 'NOT met'}"
        outlook = (
            f"fails whatever they give (at best {100 * (self.best or 0.0):.1f}%)"
            if self.certain_fail
            else f"{'met' if self.met else 'not met'} so far"
        )
        return f"{rule}: {value} {self.unit}; {plural(self.missing, self.noun)} not measured ({self.why}): {outlook}"

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "limit": self.limit,
            "measured": self.measured,
            "missing": self.missing,
            "value": self.value,
            "best": self.best,
            "complete": self.complete,
            "met": self.met,
            "certain_fail": self.certain_fail,
            "text": self.describe(),
        }
