# SPDX-License-Identifier: Apache-2.0
"""``spikeforge.golden.fp16`` against two references that share no code with it, bit for bit.

The first decodes binary16 patterns to exact ``Fraction``s, computes the exact sum or product
and rounds it to binary16 here (ties to even, subnormals, overflow to infinity). The second is
``numpy.float16`` arithmetic. The module's own ``bits`` and ``from_bits`` are checked separately
and not used to feed the other functions.
"""

import functools
import math
import operator
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from spikeforge.golden import fp16

NAN = 0x7E00
ALL = np.arange(1 << 16, dtype=np.uint16)
SPECIAL = [0x0000, 0x0001, 0x03FF, 0x0400, 0x3C00, 0x3C01, 0x7BFF, 0x7C00]
B_FRACTION = SPECIAL + [h | 0x8000 for h in SPECIAL] + [NAN]
B_NUMPY = B_FRACTION + [0xFE00, 0x7C01, 0xFFFF, 0x0200, 0x1000, 0x3800, 0x3555, 0x7800,
                        *np.random.default_rng(7).integers(0, 1 << 16, 12).tolist()]
RANDOM_CHUNKS, CHUNK = 16, 1 << 20


def _value(h: int) -> Fraction | float | None:
    sign = -1 if h & 0x8000 else 1
    exponent, mantissa = h >> 10 & 0x1F, h & 0x3FF
    if exponent == 0x1F:
        return None if mantissa else sign * math.inf
    if exponent == 0:
        return Fraction(sign * mantissa, 1 << 24)
    return sign * Fraction(1024 + mantissa) * Fraction(2) ** (exponent - 25)


_VALUES = [_value(h) for h in range(1 << 16)]


def _round(q: Fraction, zero_sign: int, ties: str = "even") -> int:
    sign = 0x8000 if q < 0 or (q == 0 and zero_sign) else 0
    n, d = abs(q.numerator), q.denominator
    if n == 0:
        return sign
    e = n.bit_length() - d.bit_length()
    if n << max(-e, 0) < d << max(e, 0):
        e -= 1
    e = max(e, -14)
    num, den = n << max(10 - e, 0), d << max(e - 10, 0)
    m, r = divmod(num, den)
    if 2 * r > den or (2 * r == den and (ties == "up" or m & 1)):
        m += 1
    if m == 2048:
        m, e = 1024, e + 1
    if e > 15:
        return sign | 0x7C00
    if m < 1024:
        return sign | m
    return sign | (e + 15) << 10 | (m - 1024)


def _ref_add(a: int, b: int, ties: str = "even") -> int:
    x, y = _VALUES[a], _VALUES[b]
    if x is None or y is None:
        return NAN
    if isinstance(x, float) or isinstance(y, float):
        if isinstance(x, float) and isinstance(y, float) and x != y:
            return NAN
        return 0x7C00 | (a if isinstance(x, float) else b) & 0x8000
    return _round(x + y, a & b & 0x8000, ties)


def _ref_sub(a: int, b: int, ties: str = "even") -> int:
    return _ref_add(a, b ^ 0x8000, ties)


def _ref_mul(a: int, b: int, ties: str = "even") -> int:
    x, y = _VALUES[a], _VALUES[b]
    sign = (a ^ b) & 0x8000
    if x is None or y is None:
        return NAN
    if isinstance(x, float) or isinstance(y, float):
        return NAN if x == 0 or y == 0 else sign | 0x7C00
    return _round(x * y, sign, ties)


def _ref_ge(a: int, b: int) -> bool:
    x, y = _VALUES[a], _VALUES[b]
    return x is not None and y is not None and x >= y


REF = {"add": _ref_add, "sub": _ref_sub, "mul": _ref_mul, "ge": _ref_ge}
OPS = {"add": fp16.add, "sub": fp16.sub, "mul": fp16.mul, "ge": fp16.ge}
NUMPY_OPS = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "ge": np.greater_equal}


def _half(h: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(h, dtype=np.uint16).view(np.int16)).view(
        torch.float16)


def _patterns(x: torch.Tensor) -> np.ndarray:
    return x.view(torch.int16).numpy().view(np.uint16).astype(np.int32)


def _under_test(op: str, a: np.ndarray, b: np.ndarray, fn=None) -> np.ndarray:
    r = (fn or OPS[op])(_half(a), _half(b))
    return r.numpy() if op == "ge" else _patterns(r)


def _numpy(op: str, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    x, y = a.view(np.float16), b.view(np.float16)
    with np.errstate(all="ignore"):
        r = NUMPY_OPS[op](x, y)
    if op == "ge":
        return r
    return np.where(np.isnan(r), NAN, r.view(np.uint16).astype(np.int32))


def _assert_bits(call, got, expected) -> None:
    got, expected = np.asarray(got), np.asarray(expected)
    bad = np.flatnonzero(got != expected)
    assert bad.size == 0, f"{bad.size} mismatches: " + ", ".join(
        f"{call(i)} = {int(got[i]):#06x}, expected {int(expected[i]):#06x}" for i in bad[:8])


def _assert_op(op: str, a, b, got, expected) -> None:
    _assert_bits(lambda i: f"{op}({int(a[i]):#06x}, {int(b[i]):#06x})", got, expected)


@functools.cache
def _fraction_row(op: str, b: int) -> np.ndarray:
    if op == "sub":
        return _fraction_row("add", b ^ 0x8000)
    return np.array([REF[op](a, b) for a in range(1 << 16)])


def _grid(bs):
    return np.tile(ALL, len(bs)), np.repeat(np.array(bs, dtype=np.uint16), ALL.size)


def _check_fraction(op: str, bs, fn=None) -> None:
    a, b = _grid(bs)
    expected = np.concatenate([_fraction_row(op, h) for h in bs])
    _assert_op(op, a, b, _under_test(op, a, b, fn), expected)


def test_decoder_matches_numpy():
    special = (ALL & 0x7C00) == 0x7C00
    finite = ALL[~special].tolist()
    as_float = ALL[~special].view(np.float16).astype(np.float64).tolist()
    assert all(_VALUES[h] == Fraction(v) for h, v in zip(finite, as_float, strict=True))
    assert _VALUES[0x7C00] == math.inf and _VALUES[0xFC00] == -math.inf
    assert all(_VALUES[h] is None for h in ALL[special & ((ALL & 0x3FF) > 0)].tolist())


def test_bits_from_bits_canonical_neg_all_patterns():
    h = torch.from_numpy(ALL.astype(np.int32))
    assert torch.equal(fp16.bits(fp16.from_bits(h)), h)
    assert np.array_equal(_patterns(fp16.from_bits(h)), ALL)
    assert np.array_equal(fp16.bits(_half(ALL)).numpy(), ALL)
    nan = ((ALL & 0x7C00) == 0x7C00) & ((ALL & 0x3FF) != 0)
    assert nan.sum() == 2046
    assert np.array_equal(_patterns(fp16.canonical(_half(ALL))), np.where(nan, NAN, ALL))
    assert np.array_equal(_patterns(fp16.neg(_half(ALL))), np.where(nan, NAN, ALL ^ 0x8000))


@pytest.mark.parametrize("op", ["add", "sub", "mul", "ge"])
def test_every_pattern_against_specials_matches_fraction(op):
    _check_fraction(op, B_FRACTION)


@pytest.mark.slow
@pytest.mark.parametrize("op", ["add", "sub", "mul", "ge"])
def test_every_pattern_against_random_matches_fraction(op):
    _check_fraction(op, np.random.default_rng(11).integers(0, 1 << 16, 48).tolist())


@pytest.mark.parametrize("op", ["add", "sub", "mul", "ge"])
def test_every_pattern_against_specials_matches_numpy(op):
    a, b = _grid(B_NUMPY)
    _assert_op(op, a, b, _under_test(op, a, b), _numpy(op, a, b))


def test_random_pairs_match_numpy():
    rng = np.random.default_rng(2026)
    for chunk in range(RANDOM_CHUNKS):
        a = rng.integers(0, 1 << 16, CHUNK, dtype=np.uint16)
        if chunk % 2:
            b = a ^ rng.integers(0, 0x1000, CHUNK, dtype=np.uint16) ^ (
                rng.integers(0, 2, CHUNK, dtype=np.uint16) << 15)
        else:
            b = rng.integers(0, 1 << 16, CHUNK, dtype=np.uint16)
        for op in OPS:
            _assert_op(op, a, b, _under_test(op, a, b), _numpy(op, a, b))


_SIGN = st.sampled_from([0, 0x8000])
HALVES = st.one_of(
    st.integers(0, 0xFFFF),
    st.builds(operator.or_, _SIGN, st.integers(0, 0x3FF)),
    st.builds(operator.or_, _SIGN, st.integers(0x7C00, 0x7FFF)),
    st.sampled_from(B_NUMPY),
)
PAIRS = st.one_of(
    st.tuples(HALVES, HALVES),
    st.builds(lambda a, s, d: (a, a ^ s ^ d), HALVES, _SIGN, st.integers(0, 0xFFF)),
)


@settings(max_examples=500, deadline=None)
@given(PAIRS)
@example((0x8000, 0x8000))
@example((0x3C00, 0xBC00))
@example((0x7C00, 0xFC00))
@example((0x0000, 0xFC00))
@example((0x7C01, 0x3C00))
def test_pairs_match_fraction(pair):
    a, b = pair
    for op in OPS:
        got = _under_test(op, np.array([a], np.uint16), np.array([b], np.uint16))[0]
        assert got == REF[op](a, b), f"{op}({a:#06x}, {b:#06x}) = {int(got):#06x}"


@pytest.mark.parametrize(("op", "a", "b", "expected"), [
    ("add", 0x8000, 0x8000, 0x8000), ("add", 0x0000, 0x8000, 0x0000),
    ("add", 0x3C00, 0xBC00, 0x0000), ("add", 0xBC00, 0x3C00, 0x0000),
    ("sub", 0x8000, 0x0000, 0x8000), ("sub", 0x8000, 0x8000, 0x0000),
    ("sub", 0x3C01, 0x3C01, 0x0000), ("sub", 0x7C00, 0x7C00, NAN),
    ("add", 0x7C00, 0xFC00, NAN), ("add", 0xFC00, 0x7BFF, 0xFC00),
    ("add", 0x7BFF, 0x4C00, 0x7C00), ("add", 0x7BFF, 0x4BFF, 0x7BFF),
    ("mul", 0x8000, 0x3C00, 0x8000), ("mul", 0x8000, 0x8000, 0x0000),
    ("mul", 0x0000, 0xFC00, NAN), ("mul", 0xFC00, 0x8001, 0x7C00),
    ("mul", 0x0001, 0x0001, 0x0000), ("mul", 0x8001, 0x0001, 0x8000),
    ("mul", 0x0001, 0x3A00, 0x0001), ("mul", 0x5BFF, 0x5BFF, 0x7BFE),
    ("mul", 0x5C00, 0x5C00, 0x7C00),
    ("mul", 0xFE00, 0x3C00, NAN), ("add", 0x7C01, 0x7C00, NAN), ("sub", 0xFFFF, 0x0000, NAN),
])
def test_special_values(op, a, b, expected):
    assert REF[op](a, b) == expected
    assert _under_test(op, np.array([a], np.uint16), np.array([b], np.uint16))[0] == expected


@pytest.mark.parametrize(("a", "b", "expected"), [
    (0x8000, 0x0000, True), (0x0000, 0x8000, True), (0x7E00, 0x7E00, False),
    (0x7E00, 0xFC00, False), (0xFC00, 0x7E00, False), (0x7C00, 0x7C00, True),
    (0xFC00, 0xFBFF, False), (0x0001, 0x8001, True), (0x8001, 0x0000, False),
    (0x3C01, 0x3C00, True), (0x3C00, 0x3C01, False), (0x7C01, 0x7C01, False),
])
def test_ge_ordered_comparison(a, b, expected):
    assert _ref_ge(a, b) is expected
    assert _under_test("ge", np.array([a], np.uint16), np.array([b], np.uint16))[0] == expected


def _to_fp16_patterns(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return _patterns(fp16.to_fp16(torch.from_numpy(x)))


def _assert_to_fp16(x: np.ndarray, expected) -> None:
    _assert_bits(lambda i: f"to_fp16({x[i]!r})", _to_fp16_patterns(x), expected)


def _fraction_round(x: float) -> int:
    if math.isnan(x):
        return NAN
    if math.isinf(x):
        return 0x7C00 | (0x8000 if x < 0 else 0)
    return _round(Fraction(x), math.copysign(1.0, x) < 0)


def test_to_fp16_ties_and_double_rounding_traps():
    h = np.arange(0x7C00)
    lo = [_VALUES[i] for i in range(0x7C00)]
    mid = [(x + y) / 2 for x, y in zip(lo, lo[1:] + [Fraction(65536)], strict=True)]
    even = h + (h & 1)
    cases = {"tie": (Fraction(1), even), "above": (1 + Fraction(1, 1 << 40), h + 1),
             "below": (1 - Fraction(1, 1 << 40), h)}
    for name, (scale, expected) in cases.items():
        exact = [m * scale for m in mid]
        x = np.array([float(q) for q in exact])
        assert all(Fraction(v) == q for v, q in zip(x.tolist(), exact, strict=True))
        for sign in (0, 0x8000):
            xs = -x if sign else x
            want = expected | sign
            assert np.array_equal([_fraction_round(v) for v in xs.tolist()], want), name
            _assert_to_fp16(xs, want)
            with np.errstate(over="ignore"):
                assert np.array_equal(xs.astype(np.float16).view(np.uint16), want), name
                via32 = xs.astype(np.float32).astype(np.float16).view(np.uint16)
            trap = {"tie": np.zeros(h.size, bool), "above": h % 2 == 0, "below": h % 2 == 1}[name]
            assert np.array_equal(via32 != want, trap), name


@pytest.mark.parametrize(("x", "expected"), [
    (0.0, 0x0000), (-0.0, 0x8000), (math.inf, 0x7C00), (-math.inf, 0xFC00),
    (math.nan, NAN), (-math.nan, NAN), (np.uint64(0x7FF0000000000001).view(np.float64), NAN),
    (np.uint64(0xFFF8000000000123).view(np.float64), NAN),
    (65519.99999999999, 0x7BFF), (65520.0, 0x7C00), (-65520.0, 0xFC00), (1e300, 0x7C00),
    (5e-324, 0x0000), (-5e-324, 0x8000), (2.0 ** -25, 0x0000), (-(2.0 ** -25), 0x8000),
    (3 * 2.0 ** -26, 0x0001), (2.0 ** -24, 0x0001), (2.0 ** -14 - 2.0 ** -26, 0x0400),
    (2.0 ** -14 - 2.0 ** -24, 0x03FF), (0.1, 0x2E66), (1 / 3, 0x3555), (-2049.0, 0xE800),
    (2051.0, 0x6802), (1 + 2.0 ** -11 + 2.0 ** -52, 0x3C01),
])
def test_to_fp16_special_values(x, expected):
    x = np.array([x], dtype=np.float64)
    assert _fraction_round(float(x[0])) == expected
    assert _to_fp16_patterns(x)[0] == expected


def test_to_fp16_random_float64_and_float32():
    rng = np.random.default_rng(5)
    n = 1 << 16
    x = (1 + rng.random(n)) * np.exp2(rng.integers(-27, 18, n)) * rng.choice([-1.0, 1.0], n)
    want = np.array([_fraction_round(v) for v in x.tolist()])
    with np.errstate(over="ignore"):
        _assert_to_fp16(x, want)
        assert np.array_equal(x.astype(np.float16).view(np.uint16), want)
        x32 = x.astype(np.float32)
    want32 = np.array([_fraction_round(v) for v in x32.astype(np.float64).tolist()])
    assert np.array_equal(_to_fp16_patterns(x32), want32)


TIES = [
    ("add", 0x3C00, 0x1000, 0x3C00, 0x3C01),
    ("add", 0xBC00, 0x9000, 0xBC00, 0xBC01),
    ("add", 0x6800, 0x3C00, 0x6800, 0x6801),
    ("sub", 0x3C00, 0x9000, 0x3C00, 0x3C01),
    ("mul", 0x0005, 0x3800, 0x0002, 0x0003),
    ("mul", 0x0001, 0xB800, 0x8000, 0x8001),
]


@pytest.mark.parametrize(("op", "a", "b", "even", "up"), TIES)
def test_half_up_rounding_disagrees_on_ties(op, a, b, even, up):
    assert REF[op](a, b) == even
    assert REF[op](a, b, ties="up") == up != even
    assert _under_test(op, np.array([a], np.uint16), np.array([b], np.uint16))[0] == even


def test_half_up_reference_disagrees_with_exhaustive_add():
    half_up = np.array([_ref_add(a, 0x3C01, ties="up") for a in range(1 << 16)])
    differ = np.count_nonzero(half_up != _fraction_row("add", 0x3C01))
    a, b = _grid([0x3C01])
    assert differ > 100
    assert np.count_nonzero(_under_test("add", a, b) != half_up) == differ


def _flush(r: torch.Tensor) -> torch.Tensor:
    return torch.where(r.abs() < 2.0 ** -14, r * 0, r)


MUTANTS = {
    "flush subnormal results": ("add", lambda x, y: _flush(fp16.add(x, y))),
    "subnormal operands as zero": ("mul", lambda x, y: fp16.mul(_flush(x), _flush(y))),
    "NaN payload kept": ("add", operator.add),
    "sign of results dropped": ("sub", lambda x, y: fp16.sub(x, y).abs()),
    "unordered ge": ("ge", lambda x, y: ~(x < y)),
    "ge on bit patterns": ("ge", lambda x, y: x.view(torch.int16) >= y.view(torch.int16)),
}


@pytest.mark.parametrize("mutant", MUTANTS)
def test_exhaustive_check_catches_mutant(mutant):
    op, fn = MUTANTS[mutant]
    with pytest.raises(AssertionError, match="mismatches"):
        _check_fraction(op, B_FRACTION, fn)
