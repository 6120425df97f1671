"""lm-eval accuracy of the baseline and of every edit, per benchmark task.

Each item scores one model variant on one task, in memory on the model the worker already holds.
The scores are the ground truth of the Phase 0 verdict: an edit regressed when its accuracy falls more
than two standard errors below the baseline's.
"""


def test_benchmark(invarlock_result):
    invarlock_result.check()
