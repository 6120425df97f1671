"""lm-eval task names, from a suite's `benchmarks.tasks` or `--benchmarks`: the shipped offline tasks or installed ones.

A name is checked against the installed lm-eval's task files (campaign.task_index), so a typo fails
at collection rather than hours later in a benchmark item.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from pytest_invarlock.campaign.lm_eval_tasks import LOCAL_TASKS
from pytest_invarlock.campaign.suite.checks import SLUG, Where, show
from pytest_invarlock.campaign.task_index import installed_tasks

DEFAULT_BENCHMARKS = ("mmlu", "hellaswag", "arc_challenge", "winogrande")
BENCHMARK_KEYS = ("tasks", "num_fewshot", "limit")
TASK_FIX = (
    f"Use one of the shipped offline tasks ({', '.join(LOCAL_TASKS)}) or an lm-eval task name (`lm-eval ls tasks` lists them)."
)


def unknown_task_problem(task: str) -> str | None:
    """Why `task` is no lm-eval task here (checked against the installed lm-eval's task files), or None."""
    if task in LOCAL_TASKS:
        return None
    known = installed_tasks()
    if known is None or task in known:  # without lm-eval installed there is nothing to check against
        return None
    hint = difflib.get_close_matches(task, [*LOCAL_TASKS, *known], n=1)
    return f"unknown lm-eval task '{task}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")


def task_names(where: Where, bench: Mapping[str, Any]) -> tuple[str, ...]:
    """The `benchmarks:` block's `tasks` (the default four when absent), each a known task."""
    tasks = bench.get("tasks", list(DEFAULT_BENCHMARKS))
    if not isinstance(tasks, list) or not all(isinstance(t, str) and SLUG.match(t) for t in tasks):
        raise where.error(
            "benchmarks.tasks", f"expected a list of task names, got {show(tasks)}", "e.g. tasks: [hellaswag, arc_challenge]."
        )
    for i, task in enumerate(tasks):
        problem = unknown_task_problem(task)
        if problem:
            raise where.error(f"benchmarks.tasks[{i}]", problem, TASK_FIX)
    return tuple(tasks)
