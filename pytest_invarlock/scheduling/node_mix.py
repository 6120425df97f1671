"""Nodes of different GPUs in one campaign: which work suits which node. Pure: no pytest, no torch.

A 70B model's item holds two 80 GB GPUs and one 180 GB GPU: on the 80 GB nodes it costs twice the
GPU time. The best split of the work (the fractional one `perf/simulate.py`'s cluster bound makes)
gives the largest GPUs the work that is wider elsewhere and the smaller nodes the work of equal
width; the smaller nodes take wide work too when the larger ones could not otherwise finish theirs
by the time the rest is done (`Split.owed_s`). They take it first from the models they load anyway
for their equal-width work (`Split.shared`), and they take it early: those items are the long ones,
and a long item started last decides the makespan. The split is made for two node types; with more,
nothing is owed (each node leaves its wider work to larger nodes until nothing else is left), which
measured better than planning for the smallest and largest alone (perf/README.md).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from pytest_invarlock.scheduling.memory import MarginRule, required_gpus


@dataclass(frozen=True)
class Split:
    """The work left, as the best fractional split gives it to the smallest and the largest nodes."""

    owed_s: float  # GPU-seconds (at the largest nodes' widths) of wide work the smallest nodes should still take
    shared_wide_s: float  # of that kind, the wide work left of the shared models
    shared: frozenset[str]  # models with work of equal width on both (the smallest nodes load them anyway)

    def owes(self, model: str) -> bool:
        """Whether the smallest nodes should take this model's wide work now: any model's while they owe more
        than the shared models' wide work left, else only a shared model's while they owe any."""
        return self.owed_s > (0.0 if model in self.shared else self.shared_wide_s)


@dataclass(frozen=True)
class NodeMix:
    """The GPUs of this node and of the other nodes working now (total GB each), seen from this node."""

    mine: tuple[float, ...]
    others: tuple[tuple[float, ...], ...]
    margin: MarginRule = MarginRule()

    @property
    def _nodes(self) -> list[tuple[float, ...]]:
        return [gpus for gpus in (self.mine, *self.others) if gpus]

    @property
    def _sizes(self) -> set[float]:
        """The nodes' largest GPUs: one per node type."""
        return {max(gpus) for gpus in self._nodes}

    @property
    def mixed(self) -> bool:
        """Whether the nodes' largest GPUs differ (only then does work suit one node more than another)."""
        return len(self._sizes) > 1

    def width(self, mem_gb: float, gpu_gb: float) -> int:
        """GPUs a task holds on a node whose largest GPU has gpu_gb in all (totals: free memory moves)."""
        return required_gpus(mem_gb, self.margin.usable_gb(gpu_gb) or 1e-9)

    def split(self, work: Iterable[tuple[str, float, float]]) -> Split:
        """The split of `work` left ((model, seconds, GB) per task) between two node types: the smaller run the
        equal-width work plus owed_s of the wide work (at `ratio` times its GPU time there), the larger the rest
        (and what only they hold), both ending together. Nothing is owed with one node type, or more than two."""
        nodes, sizes = self._nodes, self._sizes
        if len(sizes) != 2:
            return Split(0.0, 0.0, frozenset())
        smallest, largest = min(sizes), max(sizes)
        small_gpus = sum(len(gpus) for gpus in nodes if max(gpus) == smallest)
        large_gpus = sum(map(len, nodes)) - small_gpus
        most_small = max(len(gpus) for gpus in nodes if max(gpus) == smallest)
        equal = wide = wide_there = 0.0
        shared: set[str] = set()
        wide_of: defaultdict[str, float] = defaultdict(float)
        for model, seconds, mem_gb in work:
            on_small, on_large = self.width(mem_gb, smallest), self.width(mem_gb, largest)
            if on_small == on_large:
                equal += seconds * on_small
                shared.add(model)
                continue
            wide += seconds * on_large
            if on_small <= most_small:  # what only the largest hold counts to them alone
                wide_there += seconds * on_small
                wide_of[model] += seconds * on_large
        holdable = sum(wide_of.values())
        ratio = wide_there / holdable if holdable else 1.0
        owed = (wide * small_gpus - equal * large_gpus) / (small_gpus + ratio * large_gpus)
        return Split(min(owed, holdable), sum((wide_of[model] for model in shared), 0.0), frozenset(shared))

    def rank(self, model: str, mem_gb: float, split: Split) -> int:
        """Lower runs first. Wider here than on another node: first while the smallest nodes owe it (-1), else
        last (2). Narrower here: 0, or 1 for a shared model's work when the smallest nodes owe all of that.
        Of equal width: 1 where smaller nodes are there to run it, else 0."""
        here = self.width(mem_gb, max(self.mine))
        there = [self.width(mem_gb, max(gpus)) for gpus in self.others if gpus]
        if not there:
            return 0
        if here > min(there):
            return -1 if split.owes(model) else 2
        if here < max(there):
            return 1 if model in split.shared and split.owed_s >= split.shared_wide_s else 0
        return 1 if any(max(gpus) < max(self.mine) for gpus in self.others if gpus) else 0
