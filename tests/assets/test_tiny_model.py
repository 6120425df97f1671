"""Tests of the tiny model and corpus builder, on a seconds-long miniature build."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.assets import tiny_model as tm

SMALL = tm.TinyBuildParams(
    vocab_size=512,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    steps=5,
    batch_size=4,
    warmup_steps=2,
    chapter_limit=40,
    eval_passages=12,
    calibration_passages=4,
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast


@pytest.fixture(scope="module")
def twin_builds(tmp_path_factory: pytest.TempPathFactory) -> tuple[tm.TinyAssets, tm.TinyAssets]:
    first = tm.build_assets_with(SMALL, tmp_path_factory.mktemp("cache_a"))
    second = tm.build_assets_with(SMALL, tmp_path_factory.mktemp("cache_b"))
    return first, second


@pytest.fixture(scope="module")
def assets(twin_builds: tuple[tm.TinyAssets, tm.TinyAssets]) -> tm.TinyAssets:
    return twin_builds[0]


def test_two_builds_give_identical_weights_and_files(twin_builds: tuple[tm.TinyAssets, tm.TinyAssets]) -> None:
    first, second = twin_builds
    assert first.root != second.root
    assert first.weights_sha256 == second.weights_sha256
    assert first.weights_sha256 == tm.sha256_file(first.model_dir / tm.WEIGHTS_FILE)
    for path in (first.model_dir / "tokenizer.json", first.eval_file, first.corpus_dir / tm.TRAIN_FILE, *first.calibration_files):
        relative = path.relative_to(first.root)
        assert path.read_bytes() == (second.root / relative).read_bytes(), relative


def test_second_call_reuses_the_cache_without_building(assets: tm.TinyAssets, monkeypatch: pytest.MonkeyPatch) -> None:
    info_mtime = (assets.root / tm.BUILD_INFO).stat().st_mtime_ns

    def refuse_to_build(root: Path, params: tm.TinyBuildParams) -> None:
        raise AssertionError("a cached asset was rebuilt")

    monkeypatch.setattr(tm, "_build_into", refuse_to_build)
    again = tm.build_assets_with(SMALL, assets.root.parent)
    assert again.root == assets.root
    assert again.weights_sha256 == assets.weights_sha256
    assert (assets.root / tm.BUILD_INFO).stat().st_mtime_ns == info_mtime


def test_build_leaves_torch_settings_as_it_found_them(tmp_path: Path) -> None:
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    tm.build_assets_with(SMALL, tmp_path)
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == (threads, deterministic)


def test_evaluation_and_calibration_passages_are_disjoint_and_nonempty(assets: tm.TinyAssets) -> None:
    files = (assets.eval_file, *assets.calibration_files)
    assert len(assets.calibration_files) == SMALL.calibration_sets
    texts = {path.name: tm.read_texts(path) for path in files}
    assert len(texts[tm.EVAL_FILE]) >= SMALL.eval_passages
    assert all(len(texts[path.name]) >= SMALL.calibration_passages for path in assets.calibration_files)
    every_passage = [text for passages in texts.values() for text in passages]
    assert all(text.strip() for text in every_passage)
    assert len(set(every_passage)) == len(every_passage)


def test_passages_fit_the_window_and_match_recorded_token_counts(assets: tm.TinyAssets) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    for path in (assets.eval_file, *assets.calibration_files):
        lengths = [len(tokenizer(text)["input_ids"]) for text in tm.read_texts(path)]
        assert lengths == assets.info["passage_tokens"][path.name]
        assert max(lengths) <= SMALL.seq_len


def test_tokenizer_adds_bos_and_has_a_pad_token(assets: tm.TinyAssets) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    ids = tokenizer("In the beginning")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.pad_token_id is not None and tokenizer.pad_token_id != tokenizer.bos_token_id
    tokenizer.add_bos_token = True  # what InvarLock does for Llama-config models
    assert tokenizer("In the beginning")["input_ids"] == ids


def test_created_names_hold_no_model_family_hint(assets: tm.TinyAssets) -> None:
    created = [path.relative_to(assets.root.parent).as_posix() for path in assets.root.rglob("*")]
    assert created
    assert [name for name in created if tm.family_markers_in(name)] == []
    assert tm.family_markers_in(tm.asset_name(tm.TinyBuildParams())) == []


def test_asset_name_changes_with_any_parameter() -> None:
    assert tm.asset_name(SMALL) != tm.asset_name(tm.TinyBuildParams(**{**SMALL.__dict__, "steps": 6}))
    assert tm.asset_name(SMALL) == tm.asset_name(tm.TinyBuildParams(**SMALL.__dict__))


def test_perplexity_of_one_passage_equals_the_model_loss(assets: tm.TinyAssets) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(assets.model_dir)
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir)
    ids = tokenizer(tm.read_texts(assets.eval_file, limit=1)[0], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = float(torch.exp(model(input_ids=ids, labels=ids).loss))
    assert tm.perplexity(assets.model_dir, assets.eval_file, limit=1) == pytest.approx(expected, rel=1e-4)


def test_cache_dir_with_a_non_causal_family_hint_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="model-family hint"):
        tm.build_assets_with(SMALL, tmp_path / "my-bert-cache")


def test_cli_prints_the_asset_and_its_hash(
    assets: tm.TinyAssets, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(tm, "build_tiny_assets", lambda cache_dir, force: assets)
    assert tm.main(["--cache-dir", str(assets.root.parent)]) == 0
    printed = capsys.readouterr().out
    assert str(assets.root) in printed and assets.weights_sha256 in printed


def test_split_holds_out_chapters_by_index_residue() -> None:
    chapters = [[f"chapter {i}"] for i in range(10)]
    train, heldout = tm.split_chapters(chapters, tm.TinyBuildParams(heldout_modulus=5, heldout_residues=(1, 3)))
    assert heldout == [["chapter 1"], ["chapter 3"], ["chapter 6"], ["chapter 8"]]
    assert len(train) == 6


def _passages(n: int) -> list[tm.Passage]:
    return [tm.Passage(f"p{i}", 10) for i in range(n)]


def test_passages_are_dealt_round_robin_by_quota_then_shuffled_by_seed() -> None:
    params = tm.TinyBuildParams(eval_passages=4, calibration_sets=2, calibration_passages=2)
    evaluation, calibration = tm.assign_passages(_passages(9), params)
    assert sorted(p.text for p in evaluation) == ["p0", "p1", "p4", "p5", "p8"]
    assert [sorted(p.text for p in s) for s in calibration] == [["p2", "p6"], ["p3", "p7"]]
    assert (evaluation, calibration) == tm.assign_passages(_passages(9), params)


def test_repeated_passages_are_dealt_once() -> None:
    params = tm.TinyBuildParams(eval_passages=1, calibration_sets=1, calibration_passages=1)
    evaluation, calibration = tm.assign_passages(_passages(2) + _passages(2), params)
    assert sorted(p.text for p in [*evaluation, *calibration[0]]) == ["p0", "p1"]


def test_too_few_passages_is_an_explained_error() -> None:
    params = tm.TinyBuildParams(eval_passages=4, calibration_sets=2, calibration_passages=2)
    with pytest.raises(ValueError, match="Hold out more chapters"):
        tm.assign_passages(_passages(7), params)


class WordTokenizer:
    """One token per word, BOS prepended unless told not to: lengths easy to reason about."""

    def __call__(self, text: Any, add_special_tokens: bool = True) -> dict[str, Any]:
        if isinstance(text, list):
            return {"input_ids": [self(t, add_special_tokens)["input_ids"] for t in text]}
        return {"input_ids": ([1] if add_special_tokens else []) + [7] * len(text.split())}


verse_lengths = st.lists(st.lists(st.integers(1, 12), min_size=1, max_size=8), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(chapters_lengths=verse_lengths, seq_len=st.integers(4, 24))
def test_packing_is_greedy_ordered_and_within_the_window(chapters_lengths: list[list[int]], seq_len: int) -> None:
    chapters = [[" ".join([f"c{c}v{v}"] * n) for v, n in enumerate(lengths)] for c, lengths in enumerate(chapters_lengths)]
    passages = tm.pack_passages(chapters, WordTokenizer(), seq_len)
    assert all(1 < p.n_tokens <= seq_len for p in passages)
    assert all(p.n_tokens == 1 + len(p.text.split()) for p in passages)
    kept = [verse for chapter in chapters for verse in chapter if len(verse.split()) <= seq_len - 1]
    assert " ".join(p.text for p in passages) == " ".join(kept)
    verse_runs = [_verse_labels(p) for p in passages]
    for run in verse_runs:  # one chapter, consecutive verses
        assert {c for c, _ in run} == {run[0][0]}
        assert [v for _, v in run] == list(range(run[0][1], run[0][1] + len(run)))
    for current, run, next_run in zip(passages, verse_runs, verse_runs[1:], strict=False):
        if next_run[0] == (run[-1][0], run[-1][1] + 1):  # greedy: the next verse did not fit
            assert current.n_tokens + len(chapters[next_run[0][0]][next_run[0][1]].split()) > seq_len


def _verse_labels(passage: tm.Passage) -> list[tuple[int, int]]:
    labels = dict.fromkeys(passage.text.split())
    return [(int(c), int(v)) for c, v in (label[1:].split("v") for label in labels)]


def test_installing_the_shipped_model_copies_its_bytes_and_measures_its_perplexity(tmp_path: Path) -> None:
    manifest = tm.shipped_manifest()
    assets = tm.build_tiny_assets(tmp_path)
    assert assets.weights_sha256 == manifest["weights_sha256"] == tm.sha256_file(assets.model_dir / tm.WEIGHTS_FILE)
    assert assets.info["source"].startswith("shipped")
    assert assets.info["heldout_perplexity"] == pytest.approx(manifest["heldout_perplexity"], rel=1e-3)
    assert assets.root.name == tm.asset_name(tm.TinyBuildParams(), manifest["weights_sha256"])
    assert len(tm.read_texts(assets.eval_file)) >= tm.TinyBuildParams().eval_passages


def test_a_damaged_shipped_file_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = tmp_path / "shipped"
    fake.mkdir()
    for name in (*tm.SHIPPED_FILES, tm.SHIPPED_MANIFEST):
        (fake / name).write_bytes((tm.shipped_dir() / name).read_bytes())
    with (fake / tm.WEIGHTS_FILE).open("r+b") as handle:
        handle.seek(-1, 2)
        last = handle.read(1)[0]
        handle.seek(-1, 2)
        handle.write(bytes([last ^ 0xFF]))
    monkeypatch.setattr(tm, "shipped_dir", lambda: fake)
    with pytest.raises(tm.ShippedWeightsError, match="damaged"):
        tm.build_tiny_assets(tmp_path / "cache")
