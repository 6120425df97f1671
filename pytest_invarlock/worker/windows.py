"""Evaluation windows of a local corpus: packed full windows, exchangeable preview/final halves, one draw per run.

The corpus is *packed* into windows of exactly ``seq_len`` tokens, as InvarLock's own tokenizer for the model
produces them (BOS included where it adds one): documents (lists of segments such as verses) are joined
segment by segment with a space, documents with the tokenizer's separator (``sep_token``, else ``eos_token``);
each window starts at a segment start. The pool is cached per tokenizer and ``seq_len`` (``pool``). Why packed
windows and matched halves rather than InvarLock's one padded line per window: docs/windows.md.

A *draw* for run ``k`` takes block k of a seeded permutation of the pool (disjoint across runs while the pool
lasts); the baseline scores the candidates (per-window NLL) and ``matched_split`` pairs them by difficulty
across the two arms, which stay exchangeable. ``window_digest`` is the sha256 of the token ids of preview then
final windows: two results with the same weights and digest are the same evidence. Pure Python apart from the
tokenizer the caller passes in.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pytest_invarlock.store import Store, digest

if TYPE_CHECKING:
    from pytest_invarlock.campaign.window_planner import WindowPlan

PACKER_VERSION = 1
DRAW_VERSION = 3  # 3: unequal arms matched too, pilot residual by root mean square; 2: matched on the baseline's NLL
POOL_FILE = "pool.jsonl"
DRAW_FILE = "windows.jsonl"
SCORES_FILE = "scores.json"
WINDOW_SEED = 20240611  # the permutation seed of epoch 0; epoch e uses WINDOW_SEED + e
BOOTSTRAP_SEED_BASE = 41  # the B200 bash harness's calibration seeds were 41 + run; bootstrap seeds follow it
SEGMENT_JOINER = " "
_MAX_EXTEND = 64  # segments appended to a window whose estimate fell short before giving up on it


class WindowError(ValueError):
    """The corpus cannot supply the windows asked for; the message says how many it can."""


@dataclass(frozen=True)
class Window:
    text: str
    ids: tuple[int, ...]


@dataclass(frozen=True)
class WindowDraw:
    """One run's evaluation windows: the file InvarLock reads and what identifies it."""

    dataset_file: Path
    digest: str
    window_seed: int
    block: int
    run: int
    preview_n: int
    final_n: int
    pool_windows: int
    seq_len: int

    def record_fields(self) -> dict[str, Any]:
        """What an item's record stores about its windows (the Phase 0 dedupe reads ``window_digest``)."""
        return {
            "window_digest": self.digest,
            "window_seed": self.window_seed,
            "window_block": self.block,
            "window_pool": self.pool_windows,
            "windows": [self.preview_n, self.final_n],
        }


def bootstrap_seed(run: int) -> int:
    """InvarLock's bootstrap seed for run ``run`` (1-based): a fresh resampling per run, 41 + run as in the B200 bash harness."""
    return BOOTSTRAP_SEED_BASE + int(run)


def separator(tokenizer: Any) -> str:
    """The string placed between documents: the tokenizer's ``sep_token``, else its ``eos_token``, else a blank line."""
    for name in ("sep_token", "eos_token"):
        token = getattr(tokenizer, name, None)
        if isinstance(token, str) and token:
            return token
    return "\n\n"


def _row(encoded: Any) -> list[int]:
    ids = encoded["input_ids"]
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return [int(i) for i in ids]


def invarlock_ids(tokenizer: Any, text: str, seq_len: int) -> tuple[list[int], list[int]]:
    """Token ids and attention mask of ``text`` exactly as InvarLock's local_jsonl materialises a window."""
    encoded = tokenizer(text, truncation=True, max_length=seq_len, padding="max_length", return_attention_mask=True)
    ids, mask = _row(encoded), encoded.get("attention_mask")
    mask_row = _row({"input_ids": mask}) if mask is not None else [1] * len(ids)
    return ids[:seq_len], mask_row[:seq_len]


def pack(documents: Sequence[Sequence[str]], tokenizer: Any, seq_len: int) -> list[Window]:
    """Full ``seq_len``-token windows from ``documents`` (each a list of segments), in corpus order.

    Segment lengths are estimated by tokenising ``joiner + segment`` (minus the special tokens the
    tokenizer adds to an empty text); each window's text is then tokenised as InvarLock does and kept
    only when all ``seq_len`` positions are real tokens. Repeated window texts are dropped (InvarLock
    refuses duplicate windows).
    """
    if seq_len < 8:
        raise WindowError(f"seq_len {seq_len} is too short for packed windows (need at least 8 tokens).")
    sep = separator(tokenizer)
    overhead = len(_row(tokenizer("")))
    # each segment with what precedes it in the stream: nothing, the joiner, or the separator (a new document)
    pieces: list[tuple[str, str]] = []
    for document in documents:
        segments = [segment.strip() for segment in document if segment.strip()]
        for s, segment in enumerate(segments):
            pieces.append(("" if not pieces else sep if s == 0 else SEGMENT_JOINER, segment))
    if not pieces:
        raise WindowError("The corpus has no text to pack into windows.")
    lengths = [max(0, len(_row(tokenizer(lead + segment))) - overhead) for lead, segment in pieces]
    body = seq_len - overhead
    windows: list[Window] = []
    seen: set[str] = set()
    start = 0
    while start < len(pieces):
        end, used = start, 0
        while end < len(pieces) and used < body + 2:  # a couple of spare tokens: truncation trims them
            used += lengths[end]
            end += 1
        if used < body:
            break  # the corpus tail is shorter than a window
        text = _window_text(pieces, start, end)
        ids, mask = invarlock_ids(tokenizer, text, seq_len)
        extra = 0
        while sum(mask) < seq_len and end < len(pieces) and extra < _MAX_EXTEND:
            end, extra = end + 1, extra + 1
            text = _window_text(pieces, start, end)
            ids, mask = invarlock_ids(tokenizer, text, seq_len)
        if sum(mask) == seq_len and len(ids) == seq_len and text not in seen:
            seen.add(text)
            windows.append(Window(text, tuple(ids)))
        # the next window starts after the segment this window's end cuts (never inside this window's text)
        covered, cut = overhead, start
        while cut < len(pieces) and covered + lengths[cut] <= seq_len:
            covered += lengths[cut]
            cut += 1
        start = max(cut + 1, start + 1)
    return windows


def _window_text(pieces: Sequence[tuple[str, str]], start: int, end: int) -> str:
    """A window's text: its first segment without what precedes it, then the following pieces as in the stream."""
    return pieces[start][1] + "".join(lead + segment for lead, segment in pieces[start + 1 : end])


def write_pool(path: Path, windows: Sequence[Window]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for window in windows:
            handle.write(json.dumps({"text": window.text, "ids": list(window.ids)}, ensure_ascii=False) + "\n")


def read_pool(path: Path) -> list[Window]:
    windows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            windows.append(Window(entry["text"], tuple(entry["ids"])))
    return windows


def candidate_block(pool_size: int, preview_n: int, final_n: int, run: int) -> tuple[list[int], int, int]:
    """(pool indices, window_seed, block) of run ``run``'s (1-based) candidate windows: block k of a seeded
    permutation of the pool, so the first ``pool // (preview_n + final_n)`` runs see disjoint windows (later runs
    reshuffle with the next seed)."""
    if run < 1:
        raise ValueError(f"run must be >= 1, got {run}")
    per_block = preview_n + final_n
    if per_block > pool_size or preview_n < 1 or final_n < 1:
        raise WindowError(
            f"The packed corpus holds {pool_size} windows but {preview_n}+{final_n} were asked for. "
            "Ask for fewer windows (or a shorter seq_len), or use a larger corpus."
        )
    epoch, block = divmod(run - 1, pool_size // per_block)
    seed = WINDOW_SEED + epoch
    order = list(range(pool_size))
    random.Random(seed).shuffle(order)
    return order[block * per_block : (block + 1) * per_block], seed, block


def matched_split(candidates: Sequence[int], scores: Sequence[float], preview_n: int, seed: int, block: int) -> list[int]:
    """``candidates`` in preview-then-final order, matched on the baseline's difficulty.

    InvarLock's own WikiText-2 provider stratifies its windows the same way (``stratify_wikitext_candidates``:
    sort by a difficulty score, pair neighbours, one of each pair to each arm); here the score is the baseline's
    own per-window NLL (``scores``, one per candidate), so the two arms carry the same difficulty and a no-op's
    final/preview drift is left with the pairs' small residual instead of the spread between windows (SmolLM2:
    0.41 nats per window unmatched, 0.04 matched in the pilot). A coin flip per pair picks which of its two windows goes to
    preview, so the arms stay exchangeable and the drift unbiased. Unequal arms: ``|preview_n - final_n|``
    candidates picked at random go to the larger arm unpaired and the rest are matched as above, so only those
    few carry the plain spread into the drift (``campaign.window_planner.drift_sd`` counts them).
    """
    flips = random.Random(f"{seed}-{block}")
    final_n = len(candidates) - preview_n
    extra = abs(preview_n - final_n)
    unpaired = set(flips.sample(range(len(candidates)), extra)) if extra else set()
    ranked = sorted(
        ((c, s) for i, (c, s) in enumerate(zip(candidates, scores, strict=True)) if i not in unpaired),
        key=lambda c: (_finite_or_inf(c[1]), c[0]),
    )
    preview, final = [], []
    for first, second in zip(ranked[0::2], ranked[1::2], strict=True):
        if flips.random() < 0.5:
            first, second = second, first
        preview.append(first[0])
        final.append(second[0])
    (preview if preview_n > final_n else final).extend(candidates[i] for i in sorted(unpaired))
    return preview + final


def _finite_or_inf(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def window_digest(windows: Sequence[Window]) -> str:
    payload = json.dumps([list(w.ids) for w in windows], separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()


def write_draw(
    directory: Path,
    pool: Sequence[Window],
    preview_n: int,
    final_n: int,
    run: int,
    score: Callable[[Sequence[Sequence[int]]], Sequence[float]],
) -> dict[str, Any]:
    """Write run ``run``'s draw file into ``directory`` (with ``scores.json``: the baseline's NLL of every
    candidate); return its metadata (digest, seed, block, the baseline's mean NLL on each arm)."""
    candidates, seed, block = candidate_block(len(pool), preview_n, final_n, run)
    scores = [float(x) for x in score([pool[i].ids for i in candidates])]
    indices = matched_split(candidates, scores, preview_n, seed, block)
    chosen = [pool[i] for i in indices]
    with (directory / DRAW_FILE).open("w", encoding="utf-8") as handle:
        for window in chosen:
            handle.write(json.dumps({"text": window.text}, ensure_ascii=False) + "\n")
    by_index = dict(zip(candidates, scores, strict=True))
    (directory / SCORES_FILE).write_text(json.dumps({"indices": indices, "nll": [by_index[i] for i in indices]}) + "\n")
    preview_nll, final_nll = [by_index[i] for i in indices[:preview_n]], [by_index[i] for i in indices[preview_n:]]
    return {
        "window_digest": window_digest(chosen),
        "window_seed": seed,
        "window_block": block,
        "pool_windows": len(pool),
        "preview_n": preview_n,
        "final_n": final_n,
        "run": run,
        "baseline_nll": [_mean(preview_nll), _mean(final_nll)],  # what the baseline's drift will be, to rounding
    }


def _mean(values: Sequence[float]) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else None


def invarlock_tokenizer(model_dir: Path) -> tuple[Any, str]:
    """InvarLock's own tokenizer for ``model_dir`` (the one its evaluate will use) and its hash."""
    from invarlock.model_profile import detect_model_profile, resolve_tokenizer

    tokenizer, tokenizer_hash = resolve_tokenizer(detect_model_profile(str(model_dir), adapter="hf_auto"))
    return tokenizer, str(tokenizer_hash)


@dataclass(frozen=True)
class Pool:
    """A packed window pool in the store: ``key`` (corpus, tokenizer, seq_len), its file and size."""

    key: str
    file: Path
    windows: int
    seq_len: int


def pool(store: Store, model_dir: Path, corpus: str, documents: Callable[[], Sequence[Sequence[str]]], *, seq_len: int) -> Pool:
    """The corpus packed for the tokenizer of the model in ``model_dir``, built once per run directory.

    ``corpus`` names the documents' content (a digest: it keys the pool with the tokenizer's hash and
    ``seq_len``); ``documents()`` returns them and is called only when the pool is built.
    """
    tokenizer, tokenizer_hash = invarlock_tokenizer(model_dir)
    key = digest("window-pool", PACKER_VERSION, corpus, tokenizer_hash, seq_len)

    def build(tmp: Path) -> dict[str, Any]:
        windows = pack(documents(), tokenizer, seq_len)
        write_pool(tmp / POOL_FILE, windows)
        return {
            "windows": len(windows),
            "corpus": corpus,
            "seq_len": seq_len,
            "tokenizer": tokenizer_hash,
            "separator": separator(tokenizer),
        }

    artifact = store.produce("windows", key, build)
    return Pool(key, artifact.path / POOL_FILE, int(store.metadata(artifact.path)["windows"]), seq_len)


def draw(
    store: Store,
    source: Pool,
    preview_n: int,
    final_n: int,
    run: int,
    *,
    weights: str,
    score: Callable[[Sequence[Sequence[int]]], Sequence[float]],
) -> WindowDraw:
    """Run ``run``'s draw from ``source`` (store kind ``windows``), matched on the difficulty ``score`` gives (the
    baseline ``weights``' per-window NLL, computed only when the draw is first built): the file InvarLock reads
    and its digest."""
    key = digest("window-draw", DRAW_VERSION, source.key, weights, preview_n, final_n, run, WINDOW_SEED)
    artifact = store.produce("windows", key, lambda tmp: write_draw(tmp, read_pool(source.file), preview_n, final_n, run, score))
    meta = store.metadata(artifact.path)
    return WindowDraw(
        dataset_file=(artifact.path / DRAW_FILE).resolve(),
        digest=meta["window_digest"],
        window_seed=int(meta["window_seed"]),
        block=int(meta["window_block"]),
        run=run,
        preview_n=preview_n,
        final_n=final_n,
        pool_windows=source.windows,
        seq_len=source.seq_len,
    )


PILOT_WINDOWS = 128  # random windows of the pool; 24 pairs once read 0.17 on the tiny model where 300 read 0.26
PILOT_SEED = WINDOW_SEED - 1


def window_nll(model: Any, ids: Sequence[Sequence[int]], device: str, batch: int = 8) -> list[float]:
    """Mean next-token NLL (nats) of each full window under ``model`` (float32 logits)."""
    import torch

    values: list[float] = []
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            chunk = torch.tensor([list(row) for row in ids[start : start + batch]], dtype=torch.long, device=device)
            logits = model(input_ids=chunk).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), chunk[:, 1:], reduction="none")
            values.extend(float(v) for v in nll.mean(dim=1))
    return values


def pilot(
    store: Store, source: Pool, weights: str, load_model: Callable[[], Any], device: str, windows: int = PILOT_WINDOWS
) -> dict[str, Any]:
    """Per-window mean NLL of the baseline on ``windows`` random windows of the pool (cached per pool and
    weights): ``sigma`` is their plain spread (what unequal arms' unpaired windows add), ``sigma_drift`` the spread
    left in a matched draw's drift (``campaign.window_planner.matched_sigma``: the pilot's own neighbours in
    difficulty, coarser than a draw's)."""
    key = digest("window-pilot", DRAW_VERSION, source.key, weights, windows, PILOT_SEED)

    def build(tmp: Path) -> dict[str, Any]:
        from pytest_invarlock.campaign.window_planner import matched_sigma, pilot_sigma

        entries = read_pool(source.file)
        chosen = random.Random(PILOT_SEED).sample(range(len(entries)), min(windows, len(entries)))
        nll = window_nll(load_model(), [entries[i].ids for i in chosen], device)
        mean, sigma = pilot_sigma(nll)
        (tmp / "pilot.json").write_text(json.dumps({"indices": chosen, "nll": nll}) + "\n")
        return {
            "windows": len(nll),
            "mean_nll": mean,
            "sigma": sigma,
            "sigma_drift": matched_sigma(nll),
            "weights": weights,
        }

    return store.metadata(store.produce("windows", key, build).path)


def plan(settings: Any, pilot_meta: dict[str, Any], pool_windows: int | None, runs: int) -> WindowPlan:
    """The model's window plan (``campaign.window_planner``): planned under ``windows: auto``, else assessed."""
    from invarlock.core.auto_tuning import get_tier_policies

    from pytest_invarlock.campaign.presets import DEFAULT_DRIFT_BAND
    from pytest_invarlock.campaign.suite.settings import TIER_FLOORS
    from pytest_invarlock.campaign.window_planner import PlanInputs, assess, plan_windows, sigma_upper_bound

    floors = TIER_FLOORS.get(settings.tier, {"preview": 1, "final": 1})
    windows = int(pilot_meta["windows"])
    estimate, plain = float(pilot_meta["sigma_drift"]), float(pilot_meta["sigma"])
    stock_tokens = get_tier_policies().get(settings.tier, {}).get("metrics", {}).get("pm_ratio", {}).get("min_tokens", 0)
    inputs = PlanInputs(
        sigma=sigma_upper_bound(estimate, max(2, windows // 2)),
        sigma_estimate=estimate,
        sigma_plain=sigma_upper_bound(plain, max(2, windows)),
        sigma_plain_estimate=plain,
        seq_len=settings.seq_len,
        acceptance=(settings.acceptance_min, settings.acceptance_max),
        drift_band=DEFAULT_DRIFT_BAND,
        min_tokens=int(settings.min_tokens if settings.min_tokens is not None else stock_tokens or 0),
        tier_floor=(floors["preview"], floors["final"]),
        pool_windows=pool_windows,
        runs=max(1, runs),
        pilot_windows=windows,
        pilot_mean_nll=float(pilot_meta["mean_nll"]),
    )
    if getattr(settings, "windows", None) == "auto":
        return plan_windows(inputs)
    return assess(inputs, settings.preview_windows, settings.final_windows)


def record_plan(run_dir: Path, model_name: str, window_plan: WindowPlan) -> Path:
    """Add the model's plan to ``state/window_plan.json`` (read by ``--gpu-plan`` and the report)."""
    from pytest_invarlock.campaign.window_planner import PLAN_FILE
    from pytest_invarlock.store import ArtifactLock, write_json_atomic

    path = Path(run_dir) / "state" / PLAN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with ArtifactLock(path.with_name(path.name + ".lock")):
        try:
            plans = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            plans = {}
        plans[model_name] = {**window_plan.to_dict(), "summary": window_plan.summary()}
        write_json_atomic(path, plans)
    return path
