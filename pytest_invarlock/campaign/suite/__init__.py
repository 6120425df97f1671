"""Suite files: load, validate and override a validation campaign, one concern per module.

A suite names models, scenarios, run counts and InvarLock settings. It is read on the torch-free
controller (collection must stay fast and must not import torch), so this package is pure: YAML in,
frozen dataclasses out (`definitions`), and every mistake becomes a `checks.SuiteError` that names the
file, the key and the fix. `loading.load_suite` reads a file, `overrides.override_suite` applies the
command line; `files`, `settings`, `size_classes`, `models`, `scenarios` and `benchmarks` check
their parts. `load_suite` is also importable from here, as most callers use it alone.
"""

from pytest_invarlock.campaign.suite.loading import load_suite

__all__ = ["load_suite"]
