"""lm-eval tasks the suite may name: the shipped offline tasks and the metric each task reports.

Pure data, read by the controller (skip reasons, name checks) and by the worker's scorer.
"""

from __future__ import annotations

# Items per shipped local task (the regression SE of the verdict uses n); the
# data is built by `python -m pytest_invarlock.assets.build_tasks`.
LOCAL_TASKS: dict[str, int] = {"kjv_cloze": 400, "kjv_next_verse": 400, "plain_cloze": 205}

# The accuracy each task reports.
# acc: summed log-likelihood of the choice; right when choices are single words or of
# matched length (mmlu, winogrande, kjv_cloze, plain_cloze). acc_norm: per byte, the
# convention where answers differ in length (hellaswag, arc_challenge).
# acc_mutual_info: log P(choice | context) - log P(choice), for kjv_next_verse, whose
# choices are whole verses: how likely a verse is on its own swamps how well it follows
# the context (a trained model scores chance with acc or acc_norm, 0.57 with this).
TASK_METRICS: dict[str, str] = {
    "mmlu": "acc",
    "hellaswag": "acc_norm",
    "arc_challenge": "acc_norm",
    "winogrande": "acc",
    "kjv_cloze": "acc",
    "kjv_next_verse": "acc_mutual_info",
    "plain_cloze": "acc",
}
DEFAULT_METRIC = "acc"
