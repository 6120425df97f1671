"""The lm-eval task index: names read from task files without importing lm_eval, cached by lm-eval's version."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pytest_invarlock.campaign import task_index
from pytest_invarlock.campaign.suite.benchmarks import DEFAULT_BENCHMARKS


@pytest.fixture
def fresh_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty cache directory, and no index remembered in this process."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PYTEST_INVARLOCK_CACHE", str(cache))
    task_index.installed_tasks.cache_clear()
    yield cache
    task_index.installed_tasks.cache_clear()


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


def test_scan_reads_tasks_groups_and_tags_as_lm_eval_indexes_them(tmp_path: Path) -> None:
    write(tmp_path / "a" / "plain.yaml", "task: plain_task\ndataset_path: x\n")
    write(tmp_path / "a" / "quoted.yaml", '"task": "quoted_task"\n"tag": "quoted_tag"\n')
    write(tmp_path / "b" / "group.yaml", "group: my_group\ntask:\n  - plain_task\n  - task: inline_member\n")
    write(
        tmp_path / "b" / "tags.yaml", "task: tagged\ntag:\n  - tag_one\n  - tag_two  # comment\nmetric_list:\n  - metric: acc\n"
    )
    write(tmp_path / "b" / "flow.yaml", "task: flowed\ntag: [flow_one, 'flow_two']\n")
    write(tmp_path / "c" / "legacy.yaml", "group: legacy_group_name\ntask: legacy_task\n")
    write(tmp_path / "c" / "_template_yaml", "tag: template_tag\ntask: not_a_task\n")
    write(tmp_path / "c" / "README.md", "task: readme_task\n")
    names = task_index.scan_tasks(tmp_path)
    assert names == {
        "plain_task",
        "quoted_task",
        "quoted_tag",
        "my_group",
        "tagged",
        "tag_one",
        "tag_two",
        "flowed",
        "flow_one",
        "flow_two",
        "legacy_task",
        "template_tag",
    }


@pytest.mark.campaign  # walks lm-eval's installed task tree (seconds)
def test_the_installed_lm_eval_tasks_are_indexed_and_cached(fresh_index: Path) -> None:
    if task_index.lm_eval_tasks_dir() is None:
        pytest.skip("lm-eval is not installed")
    names = task_index.installed_tasks()
    assert names is not None and set(DEFAULT_BENCHMARKS) <= names and len(names) > 1000
    assert "no_such_task_xyz" not in names
    caches = list(fresh_index.glob("lm_eval_tasks-*.json"))
    assert len(caches) == 1
    data = json.loads(caches[0].read_text())
    assert data["format"] == task_index.CACHE_FORMAT and set(data["names"]) == names
    # The cache is what a later process reads: change it and the index follows.
    data["names"] = ["only_this"]
    caches[0].write_text(json.dumps(data))
    task_index.installed_tasks.cache_clear()
    assert task_index.installed_tasks() == {"only_this"}
    # A corrupt cache is rebuilt.
    caches[0].write_text("{not json")
    task_index.installed_tasks.cache_clear()
    assert task_index.installed_tasks() == names


def test_an_unwritable_cache_is_not_an_error(fresh_index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if task_index.lm_eval_tasks_dir() is None:
        pytest.skip("lm-eval is not installed")
    blocker = fresh_index.parent / "blocker"
    blocker.write_text("")
    monkeypatch.setenv("PYTEST_INVARLOCK_CACHE", str(blocker / "cache"))
    names = task_index.installed_tasks()
    assert names is not None and "hellaswag" in names


def test_the_index_never_imports_lm_eval(tmp_path: Path) -> None:
    probe = (
        "import sys\n"
        "from pytest_invarlock.campaign.task_index import installed_tasks\n"
        "names = installed_tasks()\n"
        "print(names is None or 'hellaswag' in names, 'lm_eval' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTEST_INVARLOCK_CACHE": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.split() == ["True", "False"], result.stderr
