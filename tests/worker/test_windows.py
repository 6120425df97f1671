"""Packed evaluation windows: full seq_len windows as InvarLock tokenises them, disjoint exchangeable draws per run."""

from __future__ import annotations

import json
import random
import statistics
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.assets.tiny_model import build_tiny_assets, heldout_documents, heldout_identity
from pytest_invarlock.store import Store
from pytest_invarlock.worker import windows as w

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

SEQ_LEN = 128


@pytest.fixture(scope="module")
def tokenizer():
    return w.invarlock_tokenizer(build_tiny_assets().model_dir)[0]


@pytest.fixture(scope="module")
def documents() -> list[list[str]]:
    return heldout_documents()[:40]


def test_every_window_is_full_and_is_what_invarlock_tokenises(tokenizer, documents) -> None:
    packed = w.pack(documents, tokenizer, SEQ_LEN)
    assert len(packed) > 50
    for window in packed:
        ids, mask = w.invarlock_ids(tokenizer, window.text, SEQ_LEN)
        assert tuple(ids) == window.ids and len(ids) == SEQ_LEN and all(mask)
        assert ids[0] == tokenizer.bos_token_id
    assert len({window.text for window in packed}) == len(packed)


def test_windows_start_at_a_verse_and_never_share_text(tokenizer, documents) -> None:
    verses = {verse.strip() for document in documents for verse in document}
    packed = w.pack(documents, tokenizer, SEQ_LEN)
    starts = [next((v for v in verses if window.text.startswith(v)), None) for window in packed]
    assert sum(s is not None for s in starts) >= 0.95 * len(packed)  # a verse longer than a window is cut
    first_verses = [s for s in starts if s]
    assert len(set(first_verses)) >= 0.95 * len(first_verses)


def test_documents_are_joined_with_the_tokenizers_separator(tokenizer) -> None:
    assert w.separator(tokenizer) == tokenizer.eos_token == "</s>"
    docs = [
        ["In the beginning God created the heaven and the earth."] * 1,
        ["And the earth was without form, and void."] * 1,
    ] * 30
    docs = [[f"{d[0]} ({i})"] for i, d in enumerate(docs)]
    packed = w.pack(docs, tokenizer, 32)
    assert packed and all("</s>" in window.text for window in packed)


def test_runs_draw_disjoint_blocks_then_reshuffle() -> None:
    pool_size, preview, final = 1000, 150, 150
    draws = [w.candidate_block(pool_size, preview, final, run) for run in range(1, 5)]
    first_three = [set(d[0]) for d in draws[:3]]
    assert all(len(s) == 300 for s in first_three)
    assert not (first_three[0] & first_three[1]) and not (first_three[1] & first_three[2])
    assert draws[3][1] == w.WINDOW_SEED + 1 and draws[3][2] == 0  # epoch 2: a fresh permutation
    assert w.candidate_block(pool_size, preview, final, 2) == draws[1]  # deterministic
    with pytest.raises(w.WindowError, match="holds 100 windows"):
        w.candidate_block(100, 60, 60, 1)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=2, max_size=60, unique=True).filter(lambda v: len(v) % 2 == 0),
    st.integers(0, 50),
)
def test_a_matched_split_pairs_neighbours_in_difficulty_across_the_arms(scores, block) -> None:
    candidates = list(range(100, 100 + len(scores)))
    order = w.matched_split(candidates, scores, len(scores) // 2, w.WINDOW_SEED, block)
    half = len(scores) // 2
    assert sorted(order) == candidates
    by_index = dict(zip(candidates, scores, strict=True))
    ranked = sorted(scores)
    for j, (p, f) in enumerate(zip(order[:half], order[half:], strict=True)):
        assert sorted((by_index[p], by_index[f])) == ranked[2 * j : 2 * j + 2]  # pair j: the j-th two in rank order


def test_matched_halves_are_exchangeable_and_carry_the_same_difficulty() -> None:
    """Across blocks each window lands in preview about half the time, and a no-op's drift (the arms' mean
    difference) is far smaller than random halves give: the spread of the old, unmatched split."""
    rng = random.Random(7)
    scores = [rng.gauss(3.5, 0.4) for _ in range(400)]
    candidates = list(range(400))
    in_preview = [0] * 400
    matched, unmatched = [], []
    for block in range(200):
        order = w.matched_split(candidates, scores, 200, w.WINDOW_SEED, block)
        for i in order[:200]:
            in_preview[i] += 1
        matched.append(sum(scores[i] for i in order[:200]) / 200 - sum(scores[i] for i in order[200:]) / 200)
        shuffled = rng.sample(candidates, 400)
        unmatched.append(sum(scores[i] for i in shuffled[:200]) / 200 - sum(scores[i] for i in shuffled[200:]) / 200)
    assert all(40 <= n <= 160 for n in in_preview) and sum(in_preview) / 400 == 100
    assert abs(statistics.fmean(matched)) < 0.001
    assert statistics.pstdev(matched) < statistics.pstdev(unmatched) / 20


@settings(max_examples=80, deadline=None)
@given(
    st.lists(st.floats(0.0, 10.0, allow_nan=False), min_size=2, max_size=60, unique=True),
    st.data(),
    st.integers(0, 50),
)
def test_unequal_arms_are_matched_too_with_the_extra_windows_unpaired(scores, data, block) -> None:
    """The old draw fell back to a random split for unequal arms, where the plain spread (0.41 nats on SmolLM2)
    enters the drift; now only the |preview - final| extra windows, at random, go unpaired to the larger arm."""
    preview_n = data.draw(st.integers(1, len(scores) - 1))
    final_n = len(scores) - preview_n
    pairs, extra = min(preview_n, final_n), abs(preview_n - final_n)
    candidates = list(range(100, 100 + len(scores)))
    order = w.matched_split(candidates, scores, preview_n, w.WINDOW_SEED, block)
    assert sorted(order) == candidates
    preview, final = order[:preview_n], order[preview_n:]
    larger = preview if preview_n > final_n else final
    unpaired = larger[pairs:]
    assert len(unpaired) == extra
    by_index = dict(zip(candidates, scores, strict=True))
    ranked = sorted(by_index[c] for c in candidates if c not in unpaired)
    for j, (p, f) in enumerate(zip(preview[:pairs], final[:pairs], strict=True)):
        assert sorted((by_index[p], by_index[f])) == ranked[2 * j : 2 * j + 2]  # pair j: the j-th two in rank order
    assert w.matched_split(candidates, scores, preview_n, w.WINDOW_SEED, block) == order  # seeded


def test_which_windows_go_unpaired_is_random_across_blocks() -> None:
    scores = [float(i) for i in range(11)]
    unpaired = {w.matched_split(list(range(11)), scores, 6, w.WINDOW_SEED, block)[5] for block in range(200)}
    assert unpaired == set(range(11))  # every window, easy or hard, is sometimes the extra one


def test_pool_draws_and_pilot_are_cached_in_the_store(tmp_path: Path, documents) -> None:
    from transformers import AutoModelForCausalLM

    assets = build_tiny_assets()
    store = Store(tmp_path / "store")
    calls = []

    def docs():
        calls.append(1)
        return documents

    source = w.pool(store, assets.model_dir, heldout_identity() + "-test40", docs, seq_len=SEQ_LEN)
    again = w.pool(store, assets.model_dir, heldout_identity() + "-test40", docs, seq_len=SEQ_LEN)
    assert calls == [1] and again == source and source.windows > 50
    model = AutoModelForCausalLM.from_pretrained(assets.model_dir).eval()
    scored = []

    def score(ids):
        scored.append(len(ids))
        return w.window_nll(model, ids, "cpu")

    one, two = (w.draw(store, source, 20, 20, run, weights="tiny-weights", score=score) for run in (1, 2))
    assert one.digest != two.digest and one.dataset_file != two.dataset_file
    assert w.draw(store, source, 20, 20, 1, weights="tiny-weights", score=score) == one and scored == [40, 40]
    assert w.draw(store, source, 20, 20, 1, weights="other-weights", score=score) != one  # scores belong to weights
    lines = [json.loads(line)["text"] for line in one.dataset_file.read_text().splitlines()]
    pool = w.read_pool(source.file)
    by_text = {window.text: window for window in pool}
    assert w.window_digest([by_text[t] for t in lines]) == one.digest
    assert one.record_fields()["window_digest"] == one.digest and one.record_fields()["windows"] == [20, 20]
    # the file's preview and final halves carry the same difficulty under the model that scored them
    nll = w.window_nll(model, [by_text[t].ids for t in lines], "cpu")
    assert abs(statistics.fmean(nll[:20]) - statistics.fmean(nll[20:])) < 0.25 * statistics.stdev(nll) / (20**0.5)

    loads = []

    def load():
        loads.append(1)
        return model

    meta = w.pilot(store, source, "tiny-weights", load, "cpu", windows=6)
    assert meta["windows"] == 6 and 0 < meta["sigma"] < 2 and 1 < meta["mean_nll"] < 6
    assert 0 < meta["sigma_drift"] < meta["sigma"]
    assert w.pilot(store, source, "tiny-weights", load, "cpu", windows=6) == meta and loads == [1]


def test_window_nll_matches_a_direct_loss(documents, tokenizer) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(build_tiny_assets().model_dir).eval()
    packed = w.pack(documents[:5], tokenizer, SEQ_LEN)[:3]
    values = w.window_nll(model, [p.ids for p in packed], "cpu", batch=2)
    with torch.no_grad():
        direct = [float(model(input_ids=torch.tensor([p.ids]), labels=torch.tensor([p.ids])).loss) for p in packed]
    assert values == pytest.approx(direct, rel=1e-4)


def test_bootstrap_seed_differs_per_run() -> None:
    assert len({w.bootstrap_seed(run) for run in range(1, 6)}) == 5
    assert random.Random(w.bootstrap_seed(1)).random() != random.Random(w.bootstrap_seed(2)).random()


def test_hub_runs_get_their_own_dataset_and_bootstrap_seeds() -> None:
    from types import SimpleNamespace

    from pytest_invarlock.campaign.suite import load_suite
    from pytest_invarlock.worker import certifier
    from pytest_invarlock.worker.pipeline import Worker

    model = load_suite("ci").models[0]
    fake = SimpleNamespace(certifier=certifier, state=SimpleNamespace(device="cpu"))
    one, two = Worker.settings(fake, model, run=1), Worker.settings(fake, model, run=2)  # type: ignore[arg-type]
    assert (one.seed, two.seed) == (42, 43)
    assert (one.bootstrap_seed, two.bootstrap_seed) == (w.bootstrap_seed(1), w.bootstrap_seed(2))
    assert Worker.settings(fake, model, calibration_run=2).bootstrap_seed == two.bootstrap_seed  # type: ignore[arg-type]


def test_the_invarlock_config_carries_the_bootstrap_seed_and_dtype(tmp_path: Path) -> None:
    import yaml

    from pytest_invarlock.worker import certifier

    settings = certifier.EvaluateSettings(dataset_file=None, bootstrap_seed=44, dtype="bfloat16")
    root = tmp_path / "cfg"
    certifier._write_invarlock_config(root, tmp_path / "preset.yaml", settings, None)
    profile = yaml.safe_load((root / "runtime" / "profiles" / "ci.yaml").read_text())
    assert profile["eval"]["bootstrap"]["seed"] == 44
    assert yaml.safe_load((tmp_path / "preset.yaml").read_text())["model"]["dtype"] == "bfloat16"
    assert certifier.evaluation_dtype("float32", "cpu") == "float32"
    assert certifier.evaluation_dtype("bfloat16", "cuda") == "bfloat16"
    assert certifier.evaluation_dtype("bfloat16", "cpu") in ("bfloat16", "float32")
