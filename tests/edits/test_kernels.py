"""Matrix kernels: properties that a wrong kernel fails, not only an identity-safe invariant.

Each property pairs an invariance (idempotence, 2^k scaling, chunking) with a check that the
kernel did its job (values on the format's grid, k entries zeroed, rank r), so an identity
kernel, a kernel with a per-chunk scale, an unscaled FP8 cast or a mixed-up FP8 format fails.
FP8 and FP4 values are checked against tables of representable values built from the bit layout
(FP4 also per 32-input block, at ties and across block boundaries, so truncation or one scale per
row fails); the randomized-SVD branch runs on a matrix wider than EXACT_SVD_MAX_DIM.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from pytest_invarlock.edits.kernels import lowrank  # noqa: E402
from pytest_invarlock.edits.kernels.lowrank import lowrank_svd_, rank_one_collapse_  # noqa: E402
from pytest_invarlock.edits.kernels.prune import magnitude_prune_  # noqa: E402
from pytest_invarlock.edits.kernels.quant import (  # noqa: E402
    AGGRESSIVE_QUANTILE,
    fp4_round_trip_,
    fp8_round_trip_,
    rtn_quantize_,
)

pytestmark = pytest.mark.campaign  # torch, InvarLock or models: not in ./dev.sh test --fast

FAST = settings(max_examples=40, deadline=None)
MXFP4_BLOCK = 32  # the spec's group size, written here rather than read from the kernel module
Tensor = torch.Tensor


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    # Two-thread LAPACK on shared cores spins for ~0.5 s per tiny SVD; one thread takes microseconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_matrix(seed: int, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """Gaussian entries with column scales spread over four decades, like real weights with outlier channels."""
    generator = torch.Generator().manual_seed(seed)
    scales = 10.0 ** torch.randint(-3, 1, (cols,), generator=generator)
    return (torch.randn(rows, cols, generator=generator) * scales).to(dtype)


def uneven_rows_matrix(seed: int, rows: int, cols: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """random_matrix with row scales over four decades too, so row chunks have different maxima."""
    generator = torch.Generator().manual_seed(seed + 1)
    row_scales = 10.0 ** torch.randint(-3, 1, (rows, 1), generator=generator)
    return (random_matrix(seed, rows, cols) * row_scales).to(dtype)


shapes = st.tuples(st.integers(1, 12), st.integers(1, 40))
seeds = st.integers(0, 2**31 - 1)


# ----------------------------------------------------------------------------------------------
# Grid checks: what each quantiser's output must look like, computed from the input independently


def significand_bits(values: Tensor) -> int:
    """The most significant bits any value needs (0 for all zeros): 1.5 needs 2, 1.25 needs 3."""
    mantissa, _ = torch.frexp(values.double().flatten())
    for bits in range(54):
        scaled = mantissa * 2.0**bits
        if bool((scaled == scaled.round()).all()):
            return bits
    raise AssertionError("not a finite float64")


def assert_rtn_grid(original: Tensor, out: Tensor, bits: int, group: int) -> None:
    """Every value is an integer multiple k*scale of its group's scale max|w|/(2^(b-1)-1), |k| <= 2^(b-1)-1."""
    high = 2 ** (bits - 1) - 1
    before, after = original.double(), out.double()
    cols = before.shape[1]
    spans = [(0, cols)] if cols < group else [(start, min(start + group, cols)) for start in range(0, cols, group)]
    for row in range(before.shape[0]):
        for start, stop in spans:
            region = (slice(None), slice(start, stop)) if cols < group else (row, slice(start, stop))
            scale = float(before[region].abs().max()) / high
            if scale == 0:
                assert not bool(after[region].any())
                continue
            steps = after[region] / scale
            assert float((steps - steps.round()).abs().max()) <= 1e-3, (region, steps)
            assert float(steps.abs().max()) <= high + 1e-3
            assert after[region].unique().numel() <= 2**bits


def assert_fp4_grid(out: Tensor, variant: str) -> None:
    """E2M1 times a power of two: 2 significant bits, and within one scale group max/min nonzero <= 6/0.5."""
    rows = out.double()
    width = MXFP4_BLOCK if variant == "e2m1" else max(1, rows.shape[1])
    assert significand_bits(rows) <= 2
    for start in range(0, rows.shape[1], width):
        for group in rows[:, start : start + width].abs():
            nonzero = group[group > 0]
            if nonzero.numel():
                assert float(nonzero.max() / nonzero.min()) <= 12.0


FP8_LAYOUT = {"e4m3": (4, 3, 7), "e5m2": (5, 2, 15)}  # exponent bits, mantissa bits, bias
FP8_MAX = {"e4m3": 448.0, "e5m2": 57344.0}


def fp8_table(fmt: str) -> Tensor:
    """Every non-negative finite value of the format, ascending, from the bit layout (index = code)."""
    exponent_bits, mantissa_bits, bias = FP8_LAYOUT[fmt]
    values = []
    for exponent in range(2**exponent_bits):
        for mantissa in range(2**mantissa_bits):
            if fmt == "e5m2" and exponent == 2**exponent_bits - 1:
                continue  # e5m2 keeps IEEE inf/NaN in the top exponent
            if fmt == "e4m3" and (exponent, mantissa) == (15, 7):
                continue  # e4m3fn: only S.1111.111 is NaN, no inf
            fraction = mantissa / 2**mantissa_bits
            if exponent == 0:
                values.append(fraction * 2.0 ** (1 - bias))
            else:
                values.append((1 + fraction) * 2.0 ** (exponent - bias))
    return torch.tensor(values, dtype=torch.float64)


def fp8_reference(matrix: Tensor, fmt: str) -> Tensor:
    """The documented FP8 round trip, computed without a float8 cast.

    Scale: the smallest power of two s with max|w| / s <= the format's max. Each w/s goes to the
    nearest table value, ties to the even code; the result is that value times s.
    """
    table = fp8_table(fmt)
    values = matrix.double()
    peak = float(values.abs().max())
    scale = 1.0
    if peak > 0:
        exponent = math.frexp(peak / FP8_MAX[fmt])[1]  # peak/max < 2^exponent
        while peak / 2.0 ** (exponent - 1) <= FP8_MAX[fmt]:
            exponent -= 1
        scale = 2.0**exponent
    magnitude = (values / scale).abs().flatten()
    upper = torch.searchsorted(table, magnitude).clamp(max=len(table) - 1)
    lower = (upper - 1).clamp(min=0)
    low_gap, high_gap = magnitude - table[lower], table[upper] - magnitude
    pick_upper = (high_gap < low_gap) | ((high_gap == low_gap) & (upper % 2 == 0))
    rounded = torch.where(pick_upper, table[upper], table[lower])
    return (torch.sign(values.flatten()) * rounded * scale).reshape(matrix.shape)


def test_fp8_table_matches_torch_float8_dtypes() -> None:
    # The table is built from the bit layout; torch's float8 dtypes decode the same 256 codes.
    for fmt, dtype, count in (("e4m3", torch.float8_e4m3fn, 127), ("e5m2", torch.float8_e5m2, 124)):
        decoded = torch.arange(256, dtype=torch.uint8).view(dtype).double()
        finite = decoded[decoded.isfinite() & (decoded >= 0)].unique()
        table = fp8_table(fmt)
        assert len(table) == count and torch.equal(finite, table)
        assert float(table[-1]) == FP8_MAX[fmt] == torch.finfo(dtype).max


E2M1_LAYOUT = (2, 1, 1)  # exponent bits, mantissa bits, bias: OCP MX E2M1, no inf or NaN


def e2m1_table() -> Tensor:
    """Every non-negative E2M1 value, ascending (index = code): 0, 0.5, 1, 1.5, 2, 3, 4, 6."""
    exponent_bits, mantissa_bits, bias = E2M1_LAYOUT
    values = []
    for exponent in range(2**exponent_bits):
        for mantissa in range(2**mantissa_bits):
            fraction = mantissa / 2**mantissa_bits
            values.append(fraction * 2.0 ** (1 - bias) if exponent == 0 else (1 + fraction) * 2.0 ** (exponent - bias))
    return torch.tensor(values, dtype=torch.float64)


def nearest_even_code(magnitude: Tensor, table: Tensor) -> Tensor:
    """The table value nearest each magnitude, ties to the even code (the last value saturates)."""
    upper = torch.searchsorted(table, magnitude).clamp(max=len(table) - 1)
    lower = (upper - 1).clamp(min=0)
    low_gap, high_gap = magnitude - table[lower], table[upper] - magnitude
    pick_upper = (high_gap < low_gap) | ((high_gap == low_gap) & (upper % 2 == 0))
    return torch.where(pick_upper, table[upper], table[lower])


def fp4_reference(matrix: Tensor, variant: str) -> Tensor:
    """The documented FP4 round trip, computed in float64 one row (aggressive) or one 32-input block (e2m1) at a time.

    e2m1: the block's scale is the smallest power of two s with max|w| / s <= 6 (1 for an all-zero block).
    aggressive: the row's scale s puts its round(0.9 * in)-th smallest |w| (the max when that is 0) in [4, 8)
    times s. Each w/s goes to the nearest E2M1 value, ties to the even code, magnitudes above 6 to 6.
    """
    table, values = e2m1_table(), matrix.double()
    out = torch.empty_like(values)
    width = MXFP4_BLOCK if variant == "e2m1" else max(1, values.shape[1])
    for row in range(values.shape[0]):
        for start in range(0, values.shape[1], width):
            block = values[row, start : start + width]
            magnitudes = block.abs()
            if variant == "e2m1":
                reference = float(magnitudes.max())
            else:
                rank = max(1, round(AGGRESSIVE_QUANTILE * block.numel()))
                reference = float(magnitudes.sort().values[rank - 1]) or float(magnitudes.max())
            scale = 1.0
            if reference > 0:
                exponent = math.frexp(reference)[1] - 3  # reference / 2^exponent in [4, 8)
                if variant == "e2m1" and reference / 2.0**exponent > 6:
                    exponent += 1  # the smallest power of two that keeps the block's max at or below 6
                scale = 2.0**exponent
            rounded = nearest_even_code((magnitudes / scale).clamp(max=float(table[-1])), table)
            out[row, start : start + width] = torch.sign(block) * rounded * scale
    return out


# ----------------------------------------------------------------------------------------------
# Hand-computed values


def test_rtn_hand_computed() -> None:
    grouped = torch.tensor([[3.0, -1.4, 0.6, 2.2]])
    rtn_quantize_(grouped, bits=3, group=4)  # scale = 3 / 3 = 1
    assert grouped.tolist() == [[3.0, -1.0, 1.0, 2.0]]
    per_tensor = torch.tensor([[6.0, 1.2], [0.4, -2.9]])
    rtn_quantize_(per_tensor, bits=3, group=4)  # in (2) < group: one scale 6 / 3 = 2 for the whole matrix
    assert per_tensor.tolist() == [[6.0, 2.0], [0.0, -2.0]]


def test_fp8_hand_computed() -> None:
    values = torch.tensor([[448.0, 1.0, 0.3]])
    fp8_round_trip_(values, "e4m3")  # 448 is e4m3's top: scale 1; 0.3 -> 1.25 * 2^-2
    assert values.tolist() == [[448.0, 1.0, 0.3125]]
    values = torch.tensor([[57344.0, 1.125, 3.3, 448.0]])
    fp8_round_trip_(values, "e5m2")  # e5m2 keeps 2 mantissa bits: 1.125 ties to 1.0 (even), 3.3 -> 1.75 * 2
    assert values.tolist() == [[57344.0, 1.0, 3.5, 448.0]]
    values = torch.tensor([[1.0, 1.125]])
    fp8_round_trip_(values, "e4m3")  # scale 2^-8 puts 1.125 in the top binade, where it is representable
    assert values.tolist() == [[1.0, 1.125]]


def test_fp4_hand_computed() -> None:
    row = torch.tensor([[100.0] + [1.0] * 9])
    e2m1 = row.clone()
    fp4_round_trip_(e2m1, "e2m1")  # one group: scale 32 keeps 100 below 6*scale; 1/32 rounds to 0
    assert e2m1.tolist() == [[96.0] + [0.0] * 9]
    aggressive = row.clone()
    fp4_round_trip_(aggressive, "aggressive")  # scale from the 0.9 quantile (1.0) -> 0.25: 100 saturates at 1.5
    assert AGGRESSIVE_QUANTILE == 0.9 and aggressive.tolist() == [[1.5] + [1.0] * 9]
    grid = torch.tensor([[6.0, 3.2, -0.7, 0.2]])
    fp4_round_trip_(grid, "e2m1")
    assert grid.tolist() == [[6.0, 3.0, -0.5, 0.0]]


def test_e2m1_table_is_the_grid_the_kernel_documents() -> None:
    from pytest_invarlock.edits.kernels.quant import E2M1_GRID

    assert e2m1_table().tolist() == list(E2M1_GRID) == [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def test_fp4_hand_computed_block_boundary() -> None:
    """40 inputs: a full block whose max is 6 and a partial block of 8 small values with its own scale; a block of
    zeros stays zero. One scale per row would flush the second block to zero; truncation would turn 0.9 into 0.5."""
    row = torch.zeros(2, 40)
    row[0, :4] = torch.tensor([6.0, 0.9, -2.6, 0.2])
    row[0, 32:36] = torch.tensor([0.03, -0.011, 0.0045, 0.02])  # max 0.03: scale 2^-7, 0.03 / 2^-7 = 3.84 -> 4
    row[1, 32:34] = torch.tensor([-5.0, 2.5])  # block 0 of row 1 is all zeros (scale 1); 5 and 2.5 are ties -> 4, 2
    out = row.clone()
    fp4_round_trip_(out, "e2m1")
    assert out[0, :4].tolist() == [6.0, 1.0, -3.0, 0.0]
    assert out[0, 32:36].tolist() == [4 * 2.0**-7, -1.5 * 2.0**-7, 0.5 * 2.0**-7, 3 * 2.0**-7]
    assert not bool(out[0, 4:32].any()) and not bool(out[0, 36:].any())
    assert out[1].tolist() == [0.0] * 32 + [-4.0, 2.0] + [0.0] * 6


def matrix_with_blocks(seed: int, rows: int, cols: int, zero_blocks: list[bool]) -> Tensor:
    """random_matrix with each 32-input block scaled by its own power of ten (or zeroed): blocks of one row differ."""
    generator = torch.Generator().manual_seed(seed + 2)
    matrix = random_matrix(seed, rows, cols)
    for block, start in enumerate(range(0, cols, MXFP4_BLOCK)):
        factor = 0.0 if zero_blocks[block % len(zero_blocks)] else 10.0 ** int(torch.randint(-3, 3, (), generator=generator))
        matrix[:, start : start + MXFP4_BLOCK] *= factor
    return matrix


fp4_variants = st.sampled_from(("e2m1", "aggressive"))
fp4_shapes = st.tuples(st.integers(1, 6), st.integers(1, 130))  # in_features across several blocks, mostly not x32


@settings(max_examples=80, deadline=None)
@given(seeds, fp4_shapes, fp4_variants, st.lists(st.booleans(), min_size=1, max_size=5))
def test_fp4_equals_the_reference_per_block(seed: int, shape: tuple[int, int], variant: str, zero_blocks: list[bool]) -> None:
    """Bit-exact against the float64 reference: one scale per 32-input block (e2m1) or per row (aggressive), round to
    the nearest E2M1 value. Blocks of a row sit decades apart and some are all zeros, so a per-row e2m1 scale, a
    per-block aggressive one, truncation or a NaN from a zero block all differ from it."""
    original = matrix_with_blocks(seed, *shape, zero_blocks)
    out = original.clone()
    fp4_round_trip_(out, variant)
    expected = fp4_reference(original, variant)
    assert torch.equal(out.double(), expected), (original, out, expected)
    assert not bool(out.isnan().any())


@settings(max_examples=60, deadline=None)
@given(seeds, st.integers(33, 130), st.integers(1, 4))
def test_fp4_e2m1_blocks_are_quantised_independently(seed: int, cols: int, rows: int) -> None:
    """A row's result is the concatenation of its 32-input blocks' results, each quantised alone (the last one
    shorter when in_features is not a multiple of 32)."""
    original = matrix_with_blocks(seed, rows, cols, [False])
    whole = original.clone()
    fp4_round_trip_(whole, "e2m1")
    for start in range(0, cols, MXFP4_BLOCK):
        alone = original[:, start : start + MXFP4_BLOCK].clone()
        fp4_round_trip_(alone, "e2m1")
        assert torch.equal(whole[:, start : start + MXFP4_BLOCK], alone)


TIES = {0.25: 0.0, 0.75: 1.0, 1.25: 1.0, 1.75: 2.0, 2.5: 2.0, 3.5: 4.0, 5.0: 4.0}  # halfway -> the even code's value


@settings(max_examples=60, deadline=None)
@given(
    st.integers(-20, 20),
    st.lists(st.tuples(st.sampled_from(sorted(TIES)), st.booleans()), min_size=1, max_size=31),
    st.integers(0, 40),
    fp4_variants,
)
def test_fp4_values_halfway_between_grid_points_round_to_the_even_code(
    k: int, ties: list[tuple[float, bool]], offset: int, variant: str
) -> None:
    """Halfway values, either sign, at scale 2^k: e2m1 blocks whose max is 6 * 2^k, aggressive rows whose 0.9
    quantile is 4 * 2^k (both scales are then 2^k). Truncation, and ties away from or toward zero, differ."""
    scale = 2.0**k
    values = [(-tie if negative else tie) * scale for tie, negative in ties]
    expected = [(-TIES[tie] if negative else TIES[tie]) * scale for tie, negative in ties]
    if variant == "e2m1":  # the block starts at a multiple of 32; what precedes it is another block
        anchor = [6.0 * scale]
        row = [0.001 * scale] * (offset // MXFP4_BLOCK * MXFP4_BLOCK) + anchor + values
        first = len(row) - len(values)
    else:
        anchor = [4.0 * scale] * (9 * len(values) + 10)  # the 0.9 quantile falls among these
        row, first = values + anchor, 0
    out = torch.tensor([row], dtype=torch.float32)
    fp4_round_trip_(out, variant)
    assert out[0, first : first + len(values)].tolist() == expected


@settings(max_examples=40, deadline=None)
@given(seeds, fp4_shapes, fp4_variants)
def test_fp4_negative_values_mirror_positive_ones(seed: int, shape: tuple[int, int], variant: str) -> None:
    original = matrix_with_blocks(seed, *shape, [False])
    plus, minus = original.clone(), -original
    fp4_round_trip_(plus, variant)
    fp4_round_trip_(minus, variant)
    assert torch.equal(minus, -plus)  # rounding is by magnitude: no floor toward -inf, no sign-dependent scale


# ----------------------------------------------------------------------------------------------
# Quantisers


@FAST
@given(seeds, shapes, st.integers(2, 8), st.integers(1, 16))
def test_rtn_lands_on_the_group_grid_within_half_a_step(seed: int, shape: tuple[int, int], bits: int, group: int) -> None:
    original = random_matrix(seed, *shape)
    quantized = original.clone()
    rtn_quantize_(quantized, bits, group)
    assert_rtn_grid(original, quantized, bits, group)
    qmax = 2 ** (bits - 1) - 1
    cols = shape[1]
    spans = [(0, cols)] if cols < group else [(start, min(start + group, cols)) for start in range(0, cols, group)]
    for row in range(shape[0]):
        for start, stop in spans:
            region = (slice(None), slice(start, stop)) if cols < group else (row, slice(start, stop))
            half_step = original[region].abs().max() / qmax / 2
            error = (quantized[region] - original[region]).abs().max()
            assert error <= half_step * (1 + 1e-5) + 1e-12


@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@FAST
@given(seeds, shapes)
def test_fp8_equals_the_representable_value_table(fmt: str, seed: int, shape: tuple[int, int]) -> None:
    original = random_matrix(seed, *shape)
    out = original.clone()
    fp8_round_trip_(out, fmt)
    expected = fp8_reference(original, fmt)
    assert torch.equal(out.double(), expected), (out, expected)


def fp8(fmt: str) -> Callable[..., object]:
    return lambda m, **kw: fp8_round_trip_(m, fmt, **kw)


def fp4(variant: str) -> Callable[..., object]:
    return lambda m, **kw: fp4_round_trip_(m, variant, **kw)


def rtn(bits: int, group: int) -> Callable[..., object]:
    return lambda m, **kw: rtn_quantize_(m, bits, group, **kw)


def check_fp8(fmt: str) -> Callable[[Tensor, Tensor], None]:
    def check(original: Tensor, out: Tensor) -> None:
        # On the format's grid: the table value nearest each w/s, times the power-of-two scale.
        assert torch.equal(out.double(), fp8_reference(original.float(), fmt))

    return check


def check_fp8_bits(fmt: str) -> Callable[[Tensor, Tensor], None]:
    # For dtypes that round the float32 result again (bf16, fp16) only the significand width is exact.
    return lambda original, out: _assert_at_most(significand_bits(out), FP8_LAYOUT[fmt][1] + 1)


def _assert_at_most(value: int, bound: int) -> None:
    assert value <= bound, f"{value} > {bound}"


# name -> (kernel, check of the result against the input)
ROUND_TRIPS: dict[str, tuple[Callable[..., object], Callable[[Tensor, Tensor], None]]] = {
    "fp8:e4m3": (fp8("e4m3"), check_fp8_bits("e4m3")),
    "fp8:e5m2": (fp8("e5m2"), check_fp8_bits("e5m2")),
    "fp4:e2m1": (fp4("e2m1"), lambda original, out: assert_fp4_grid(out, "e2m1")),
    "fp4:aggressive": (fp4("aggressive"), lambda original, out: assert_fp4_grid(out, "aggressive")),
}


@pytest.mark.parametrize("kind", ROUND_TRIPS)
@FAST
@given(seeds, shapes, st.sampled_from((torch.float32, torch.bfloat16, torch.float16)))
def test_round_trips_land_on_the_grid_and_are_idempotent(
    kind: str, seed: int, shape: tuple[int, int], dtype: torch.dtype
) -> None:
    kernel, check = ROUND_TRIPS[kind]
    original = random_matrix(seed, *shape, dtype)
    once = original.clone()
    kernel(once)
    check(original, once)
    twice = once.clone()
    kernel(twice)
    assert torch.equal(once, twice)


SCALED: dict[str, tuple[Callable[..., object], Callable[[Tensor, Tensor], None]]] = {
    "fp8:e4m3": (fp8("e4m3"), check_fp8("e4m3")),
    "fp8:e5m2": (fp8("e5m2"), check_fp8("e5m2")),
    "fp4:e2m1": ROUND_TRIPS["fp4:e2m1"],
    "fp4:aggressive": ROUND_TRIPS["fp4:aggressive"],
    "rtn:4:8": (rtn(4, 8), lambda original, out: assert_rtn_grid(original, out, 4, 8)),
    "rtn:3:64": (rtn(3, 64), lambda original, out: assert_rtn_grid(original, out, 3, 64)),  # per-tensor scale
}


@pytest.mark.parametrize("kind", SCALED)
@FAST
@given(seeds, shapes, st.integers(-20, 20))
def test_quantisers_commute_with_power_of_two_scaling(kind: str, seed: int, shape: tuple[int, int], k: int) -> None:
    kernel, check = SCALED[kind]
    original = random_matrix(seed, *shape)
    plain, scaled = original.clone(), original * 2.0**k
    kernel(plain)
    kernel(scaled)
    check(original, plain)  # it quantised (an identity kernel commutes with everything)
    assert torch.equal(plain * 2.0**k, scaled)


# ----------------------------------------------------------------------------------------------
# Pruning


@FAST
@given(seeds, shapes, st.floats(0.01, 0.99), st.integers(1, 60), st.booleans())
def test_prune_zeroes_exactly_the_k_smallest_with_row_major_ties(
    seed: int, shape: tuple[int, int], fraction: float, chunk_elems: int, with_ties: bool
) -> None:
    generator = torch.Generator().manual_seed(seed)
    original = torch.randint(-3, 4, shape, generator=generator).float() if with_ties else random_matrix(seed, *shape)
    k = round(fraction * original.numel())
    pruned = original.clone()
    assert magnitude_prune_(pruned, fraction, chunk_elems=chunk_elems) == k
    # Oracle: a stable sort by |w| lists equal magnitudes in row-major order.
    expected = original.clone().flatten()
    expected[torch.sort(expected.abs(), stable=True).indices[:k]] = 0
    assert torch.equal(pruned, expected.reshape(shape))
    assert int((pruned == 0).sum()) == max(k, int((original == 0).sum()))


def test_prune_works_on_a_transposed_bf16_view() -> None:
    stored = random_matrix(1, 40, 24, torch.bfloat16)
    magnitude_prune_(stored.t(), 0.25, chunk_elems=30)
    assert int((stored == 0).sum()) == round(0.25 * stored.numel())
    assert stored.dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------
# Low rank


def assert_best_rank_r(original: Tensor, approx: Tensor, rank: int, *, rel: float = 1e-4) -> None:
    """rank(approx) == rank and its Frobenius error equals the Eckart-Young optimum (exact SVD in float64)."""
    assert int(torch.linalg.matrix_rank(approx, rtol=1e-4)) == rank  # float32 rounding sits far below 1e-4
    singular = torch.linalg.svdvals(original.double())
    eckart_young = singular[rank:].square().sum().sqrt()  # the best possible Frobenius error
    assert float((approx - original).double().norm()) == pytest.approx(float(eckart_young), rel=rel, abs=1e-5)


@contextlib.contextmanager
def svd_branch(branch: str) -> Iterator[None]:
    """Run through either SVD branch: "randomized" lowers the exact-SVD size threshold to 1."""
    saved = lowrank.EXACT_SVD_MAX_DIM
    lowrank.EXACT_SVD_MAX_DIM = 1 if branch == "randomized" else saved
    try:
        yield
    finally:
        lowrank.EXACT_SVD_MAX_DIM = saved


@pytest.mark.parametrize("branch", ["exact", "randomized"])
@FAST
@given(seeds, st.integers(2, 16), st.integers(2, 16), st.data())
def test_lowrank_has_the_requested_rank_and_optimal_error(
    branch: str, seed: int, rows: int, cols: int, data: st.DataObject
) -> None:
    # Below rank + oversampling columns the randomized sketch spans the whole range, so it is exact too.
    rank = data.draw(st.integers(1, min(rows, cols) - 1))
    original = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    approx = original.clone()
    with svd_branch(branch):
        assert lowrank_svd_(approx, rank, chunk_elems=data.draw(st.integers(1, 64)))
    assert_best_rank_r(original, approx, rank)


def test_lowrank_leaves_a_matrix_that_is_already_thin() -> None:
    original = random_matrix(4, 3, 10)
    approx = original.clone()
    assert lowrank_svd_(approx, 3) is False
    assert torch.equal(approx, original)


def spectrum_matrix(rows: int, cols: int, singular: Tensor, seed: int) -> Tensor:
    """U diag(singular) V^T with random orthonormal U, V: a matrix whose exact SVD is known by construction."""
    generator = torch.Generator().manual_seed(seed)
    u, _ = torch.linalg.qr(torch.randn(rows, len(singular), generator=generator, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(cols, len(singular), generator=generator, dtype=torch.float64))
    return ((u * singular) @ v.T).float()


def test_randomized_svd_branch_on_a_matrix_above_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    """A 1100 x 1040 matrix (both dims > EXACT_SVD_MAX_DIM) takes the seeded randomized SVD.

    Its spectrum is known by construction (48 singular values decaying by 0.8), so the exact
    Eckart-Young error needs no full SVD. Checks: the branch ran, rank r, error at the optimum,
    same weights on a second run (seeded), and the caller's RNG stream untouched.
    """
    rows, cols, rank = lowrank.EXACT_SVD_MAX_DIM + 76, lowrank.EXACT_SVD_MAX_DIM + 16, 6
    singular = 10.0 * 0.8 ** torch.arange(48, dtype=torch.float64)
    original = spectrum_matrix(rows, cols, singular, seed=5)
    calls = []
    real = torch.svd_lowrank
    monkeypatch.setattr(torch, "svd_lowrank", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    approx, again = original.clone(), original.clone()
    torch.manual_seed(123)
    rng_before = torch.random.get_rng_state()
    assert lowrank_svd_(approx, rank, chunk_elems=50_000)
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # the caller's stream is untouched
    torch.manual_seed(456)  # and the result does not depend on it
    assert lowrank_svd_(again, rank)
    assert len(calls) == 2
    assert torch.equal(approx, again)
    sketch = approx.double() @ torch.randn(cols, 2 * rank, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert int(torch.linalg.matrix_rank(sketch, rtol=1e-5)) == rank
    eckart_young = float(singular[rank:].square().sum().sqrt())
    error = float((approx.double() - original.double()).norm())
    assert error == pytest.approx(eckart_young, rel=1e-3)


def test_rank_one_collapse_keeps_the_frobenius_norm() -> None:
    original = random_matrix(3, 12, 20)
    collapsed = original.clone()
    rank_one_collapse_(collapsed, chunk_elems=7)
    assert int(torch.linalg.matrix_rank(collapsed)) == 1
    assert float(collapsed.norm()) == pytest.approx(float(original.norm()), rel=1e-5)
    top = torch.linalg.svd(original.double())
    expected = torch.outer(top.U[:, 0], top.Vh[0]) * float(original.double().norm())
    torch.testing.assert_close(collapsed.double(), expected, rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# Chunking


def check_prune(fraction: float) -> Callable[[Tensor, Tensor], None]:
    def check(original: Tensor, out: Tensor) -> None:
        assert int((out == 0).sum()) >= round(fraction * out.numel())

    return check


# Bit-exact whatever the chunking; checks run on the unchunked result against the input.
KERNELS: dict[str, tuple[Callable[..., object], Callable[[Tensor, Tensor], None]]] = {
    **ROUND_TRIPS,
    "rtn:4:8": SCALED["rtn:4:8"],
    "rtn:8:64": (rtn(8, 64), lambda original, out: assert_rtn_grid(original, out, 8, 64)),  # wider than the matrix
    "prune": (lambda m, **kw: magnitude_prune_(m, 0.4, **kw), check_prune(0.4)),
}
PRODUCT_KERNELS: dict[str, tuple[Callable[..., object], Callable[[Tensor, Tensor], None]]] = {
    # chunked matmuls may differ in the last float32 bit
    "lowrank": (lambda m, **kw: lowrank_svd_(m, 3, **kw), lambda original, out: assert_best_rank_r(original, out, 3, rel=1e-3)),
    "rank_one": (
        lambda m, **kw: rank_one_collapse_(m, **kw),
        lambda original, out: assert_best_rank_r(
            original, out * float(torch.linalg.svdvals(original.double())[0] / original.double().norm()), 1, rel=1e-3
        ),
    ),
}


@pytest.mark.parametrize("kind", [*KERNELS, *PRODUCT_KERNELS])
@settings(max_examples=15, deadline=None)
@given(seeds, st.integers(1, 300), st.booleans(), st.sampled_from((torch.float32, torch.bfloat16)))
def test_chunked_equals_unchunked_in_place(kind: str, seed: int, chunk_elems: int, transposed: bool, dtype: torch.dtype) -> None:
    """Row chunks of 1..33 rows over rows whose scales differ by up to 10^3: a per-chunk scale or threshold shows."""
    kernel, check = KERNELS.get(kind) or PRODUCT_KERNELS[kind]
    original = uneven_rows_matrix(seed, 9, 30, dtype)
    whole, chunked = original.clone(), original.clone()
    view = chunked.t() if transposed else chunked
    pointer = chunked.data_ptr()
    kernel(whole.t() if transposed else whole)
    kernel(view, chunk_elems=chunk_elems)
    if dtype == torch.float32:
        check(original.t() if transposed else original, whole.t() if transposed else whole)
    if kind in KERNELS:
        assert torch.equal(whole, chunked)
    else:
        torch.testing.assert_close(whole, chunked, rtol=1e-5 if dtype == torch.float32 else 1e-2, atol=1e-6)
    assert chunked.data_ptr() == pointer and chunked.dtype == dtype
