"""lm-eval on an in-memory model: task rendering, offline loading, scoring, NaN detection; the task builder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.assets import build_tasks
from pytest_invarlock.worker import lm_eval_scoring as benchmarks
from pytest_invarlock.worker.hub_access import hub_mode
from pytest_invarlock.worker.lm_eval_scoring import (
    LOCAL_TASKS,
    TASK_METRICS,
    local_task_data_dir,
    prepare_local_tasks,
    run_benchmark,
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")


def read_items(task: str) -> list[dict]:
    lines = (local_task_data_dir() / f"{task}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


# ---------------------------------------------------------------- task files


def test_rendered_yamls_name_existing_data_by_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rendered = prepare_local_tasks(Path("include"))
    assert rendered.is_absolute()
    assert sorted(path.stem for path in rendered.glob("*.yaml")) == sorted(LOCAL_TASKS)
    for task in LOCAL_TASKS:
        config = yaml.safe_load((rendered / f"{task}.yaml").read_text())
        data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
        assert config["task"] == task
        assert [entry["metric"] for entry in config["metric_list"]] == [TASK_METRICS[task]]
        assert data_file.is_absolute() and data_file.is_file()


def test_rendering_is_deterministic_and_idempotent(tmp_path: Path) -> None:
    first = prepare_local_tasks(tmp_path / "a")
    second = prepare_local_tasks(tmp_path / "b")
    prepare_local_tasks(first)  # again, over its own output
    for task in LOCAL_TASKS:
        assert (first / f"{task}.yaml").read_bytes() == (second / f"{task}.yaml").read_bytes()
    assert sorted(p.name for p in first.iterdir()) == sorted(f"{task}.yaml" for task in LOCAL_TASKS)


def test_rendered_tasks_load_through_task_manager_from_another_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lm_eval.tasks import TaskManager

    include = prepare_local_tasks(tmp_path / "include")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    with hub_mode(online=False):
        loaded = TaskManager(include_path=str(include), include_defaults=False).load(list(LOCAL_TASKS))["tasks"]
        sizes = {name: len(list(task.test_docs())) for name, task in loaded.items()}
    assert sizes == LOCAL_TASKS


@pytest.mark.parametrize("task", sorted(LOCAL_TASKS))
def test_shipped_items_are_well_formed(task: str) -> None:
    items = read_items(task)
    assert len(items) == LOCAL_TASKS[task]
    assert len({item["context"] for item in items}) == len(items)
    for item in items:
        assert len(item["choices"]) == build_tasks.CHOICES == len(set(item["choices"]))
        assert 0 <= item["label"] < build_tasks.CHOICES
    labels = [item["label"] for item in items]
    assert min(labels.count(k) for k in range(build_tasks.CHOICES)) > len(items) / build_tasks.CHOICES / 2


def test_kjv_items_use_only_heldout_verses() -> None:
    heldout = {verse for chapter in build_tasks.heldout_chapters() for verse in chapter}
    for item in read_items("kjv_cloze"):
        assert f"{item['context']} {item['choices'][item['label']]}" in heldout
    for item in read_items("kjv_next_verse"):
        assert item["context"] in heldout
        assert set(item["choices"]) <= heldout


def test_builder_reproduces_the_shipped_data(tmp_path: Path) -> None:
    counts = build_tasks.build_tasks(tmp_path)
    assert counts == LOCAL_TASKS
    for task in LOCAL_TASKS:
        assert (tmp_path / f"{task}.jsonl").read_bytes() == (local_task_data_dir() / f"{task}.jsonl").read_bytes()


@settings(max_examples=50, deadline=None)
@given(choices=st.lists(st.text(min_size=1, max_size=8), min_size=4, max_size=4, unique=True), seed=st.integers(0, 2**16))
def test_multiple_choice_labels_the_answer(choices: list[str], seed: int) -> None:
    import random

    item = build_tasks.multiple_choice("context", choices[0], choices[1:], random.Random(seed))
    assert sorted(item["choices"]) == sorted(choices)
    assert item["choices"][item["label"]] == choices[0]


@settings(max_examples=50, deadline=None)
@given(
    pool=st.lists(st.text(alphabet="ab", min_size=1, max_size=12), min_size=8, max_size=40, unique=True),
    target=st.text(alphabet="ab", min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_similar_length_picks_are_distinct_and_exclude_the_target(pool: list[str], target: str, seed: int) -> None:
    import random

    pool = sorted(pool, key=lambda text: (len(text), text))
    excluded = set(pool[:2])
    candidates = [text for text in pool if text not in excluded and text != target]
    if len(candidates) < build_tasks.CHOICES - 1:
        return
    picks = build_tasks.similar_length_picks(pool, target, excluded, random.Random(seed))
    assert len(picks) == len(set(picks)) == build_tasks.CHOICES - 1
    assert target not in picks and not excluded & set(picks)


# ---------------------------------------------------------------- scoring


@pytest.fixture(scope="module")
def tokenizer():
    from pytest_invarlock.assets.tiny_model import TinyBuildParams, load_chapters, train_tokenizer

    return train_tokenizer(load_chapters(limit=30), TinyBuildParams(vocab_size=400))


def random_llama(tokenizer, *, tie: bool = False):
    """~85 K parameters, built from a config: no weights are read from disk."""
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=tie,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture
def no_disk_loads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every from_pretrained lm-eval could reach records its caller and fails."""
    calls: list[str] = []
    for owner in ("PreTrainedModel", "AutoModelForCausalLM", "AutoTokenizer", "AutoConfig", "PreTrainedTokenizerBase"):

        def refuse(*args, _owner=owner, **kwargs):
            calls.append(_owner)
            raise AssertionError(f"{_owner}.from_pretrained was called")

        monkeypatch.setattr(getattr(transformers, owner), "from_pretrained", refuse)
    return calls


@pytest.mark.parametrize("task", sorted(LOCAL_TASKS))
def test_run_benchmark_scores_the_model_object_without_loading(
    task: str, tokenizer, no_disk_loads: list[str], tmp_path: Path
) -> None:
    result = run_benchmark(random_llama(tokenizer), tokenizer, task, limit=20, batch_size=8, task_dir=tmp_path)
    assert no_disk_loads == []
    assert result.task == task and result.n == 20 and result.metric == TASK_METRICS[task]
    assert 0.0 <= result.accuracy <= 1.0
    assert result.stderr > 0.0
    assert result.finite_logits
    assert json.loads(json.dumps(result.to_dict())) == result.to_dict()


def test_nan_model_is_reported_as_non_finite(tokenizer) -> None:
    model = random_llama(tokenizer)
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight[0, 0] = float("nan")
    result = run_benchmark(model, tokenizer, "plain_cloze", limit=20)
    assert not result.finite_logits
    assert 0.0 <= result.accuracy <= 1.0  # scored anyway: argmax over NaN picks choice 0


def test_untied_head_stays_untied(tokenizer) -> None:
    model = random_llama(tokenizer, tie=True)
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 2)
    run_benchmark(model, tokenizer, "plain_cloze", limit=4)
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert "tie_weights" not in vars(model)


def test_missing_metric_error_names_what_the_task_reported() -> None:
    output = {"results": {"hellaswag": {"acc,none": 0.3, "acc_stderr,none": 0.01}}, "n-samples": {"hellaswag": {"effective": 10}}}
    with pytest.raises(ValueError, match=r"no 'acc_norm' metric.*\['acc'\].*TASK_METRICS"):
        benchmarks._result(output, "hellaswag", "acc_norm", 1.0, True)
