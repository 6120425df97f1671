"""The one vocabulary of item kinds, shared by the suite, the scheduler, the worker and the verdict.

`Kind` is a `StrEnum`: records and CSVs store the plain value ("clean"), and a kind read back from
JSON compares equal to its member.
"""

from __future__ import annotations

from enum import StrEnum


class Kind(StrEnum):
    CALIBRATION = "calibration"  # the baseline against itself: must pass, feeds the preset
    CLEAN = "clean"  # a mild edit: must pass
    STRESS = "stress"  # a harsh edit: must be flagged (gating) or record a signal (informational)
    ERROR = "error"  # an injected fault: must be detected
    BENCHMARK = "benchmark"  # an lm-eval score of the baseline or of an edit


SCENARIO_KINDS = (Kind.CALIBRATION, Kind.CLEAN, Kind.STRESS, Kind.ERROR)  # kinds a scenario can have
EDIT_KINDS = (Kind.CLEAN, Kind.STRESS)  # scenarios that produce an edited model worth scoring
AFTER_CALIBRATION = (Kind.CLEAN, Kind.STRESS, Kind.ERROR)  # items that need their model's calibrated preset

KIND_HELP = {
    Kind.CALIBRATION: "calibration runs: the baseline against itself; must pass and feed the preset",
    Kind.CLEAN: "clean edits: must pass",
    Kind.STRESS: "stress edits: must be flagged (gating) or record a signal (informational)",
    Kind.ERROR: "error injections: must be detected",
    Kind.BENCHMARK: "lm-eval benchmark items on the baseline and on each edit",
}
