"""The validation suite. Everything comes from the pytest-invarlock plugin (installed via its pytest11
entry point): `--suite` picks the campaign, and the plugin parametrizes the tests below with one item
per model x scenario x run (and per model x variant x benchmark).

`INVARLOCK_SUITE` marks this directory as a validation suite, so `pytest validation/` (with or
without -n) is a validation session even without `--suite`; it names the default suite.
"""

INVARLOCK_SUITE = "tiny"
