"""InvarLock's verdict on every model x scenario x run of the suite.

Each item certifies one model variant against its baseline with the model's calibrated preset and
asserts the scenario's expectation: calibration runs and clean edits pass, gating stress edits are
flagged, error injections are detected. The work (baseline, preset, edit, certificate) is cached in
the run directory, so a rerun only recomputes what changed.
"""


def test_calibration(invarlock_result):
    invarlock_result.check()


def test_edit(invarlock_result):
    invarlock_result.check()


def test_error(invarlock_result):
    invarlock_result.check()
