"""Which work suits which node of a mixed campaign: the split by hand, the ranks, and the balance it promises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_invarlock.scheduling.node_mix import NodeMix, Split

SMALL = NodeMix((80.0, 80.0), ((180.0, 180.0),))  # an 80 GB node's view of a 180 GB one
LARGE = NodeMix((180.0, 180.0), ((80.0, 80.0),))
WORK = [("a", 10.0, 10.0), ("b", 100.0, 120.0), ("c", 50.0, 200.0)]  # equal width; 2 x 80 or 1 x 180; 3 x 80 or 2 x 180


def test_the_split_by_hand():
    """equal 10, wide 100 x 1 + 50 x 2 (c only the 180 GB node holds), b at twice its GPU time on 80 GB:
    (10 + 2 x owed) / 2 GPUs = (200 - owed) / 2 GPUs gives owed = (200 x 2 - 10 x 2) / (2 + 2 x 2)."""
    split = SMALL.split(WORK)
    assert split.owed_s == pytest.approx(380 / 6) and split.shared == {"a"} and split.shared_wide_s == 0.0


def test_ranks_on_each_side():
    split = SMALL.split(WORK)
    assert [SMALL.rank(model, gb, split) for model, _, gb in WORK] == [0, -1, -1]  # owed wide work first
    assert [LARGE.rank(model, gb, split) for model, _, gb in WORK] == [1, 0, 0]  # equal width after its own
    paid = Split(0.0, 0.0, frozenset({"a"}))
    assert SMALL.rank("b", 120.0, paid) == 2  # nothing owed: wide work last


def test_a_shared_models_wide_work_goes_first_and_the_larger_nodes_leave_it_when_it_is_all_owed():
    split = Split(owed_s=50.0, shared_wide_s=80.0, shared=frozenset({"mid"}))
    assert SMALL.rank("mid", 120.0, split) == -1 and SMALL.rank("huge", 120.0, split) == 2
    assert LARGE.rank("mid", 120.0, split) == 0  # the smaller nodes owe less than all of mid's
    owed_all = Split(owed_s=90.0, shared_wide_s=80.0, shared=frozenset({"mid"}))
    assert SMALL.rank("huge", 120.0, owed_all) == -1 and LARGE.rank("mid", 120.0, owed_all) == 1


def test_nodes_of_one_gpu_size_rank_nothing_apart_and_three_sizes_owe_nothing():
    same = NodeMix((80.0,) * 8, ((80.0,) * 8, (80.0,) * 4))
    assert not same.mixed and NodeMix((80.0,), ()).rank("m", 120.0, same.split(WORK)) == 0
    three = NodeMix((80.0, 80.0), ((141.0, 141.0), (180.0, 180.0)))
    assert three.mixed and three.split(WORK) == Split(0.0, 0.0, frozenset())
    assert three.rank("b", 120.0, three.split(WORK)) == 2  # wider here: left to the larger nodes until the end


@settings(max_examples=200, deadline=None)
@given(
    work=st.lists(st.tuples(st.sampled_from("abc"), st.floats(1, 500), st.floats(1, 150)), min_size=1, max_size=30),
    small_nodes=st.integers(1, 3),
    large_nodes=st.integers(1, 3),
)
def test_the_split_ends_both_node_types_together_when_it_moves_work(work, small_nodes, large_nodes):
    """Items up to 150 GB: an 8 x 80 GB node holds each. Where the split moves some wide work but not all, the two
    types' GPU time per GPU comes out equal."""
    mix = NodeMix((80.0,) * 8, ((80.0,) * 8,) * (small_nodes - 1) + ((180.0,) * 8,) * large_nodes)
    split = mix.split(work)
    on_small = [(s * SMALL.width(gb, 80.0), s * SMALL.width(gb, 180.0)) for _, s, gb in work]
    equal = sum(small for small, large in on_small if small == large)
    wide = [(small, large) for small, large in on_small if small != large]
    assert split.owed_s <= sum(large for _, large in wide) + 1e-6
    if 0 < split.owed_s < sum(large for _, large in wide):
        ratio = sum(small for small, _ in wide) / sum(large for _, large in wide)
        small_load = (equal + ratio * split.owed_s) / (8 * small_nodes)
        large_load = (sum(large for _, large in wide) - split.owed_s) / (8 * large_nodes)
        assert small_load == pytest.approx(large_load, rel=1e-6)
