# SPDX-License-Identifier: Apache-2.0
import random

import pytest
import torch
from amaranth.hdl import Fragment

from spikeforge.golden import fp16
from spikeforge.hw.fp16 import FP16Adder, FP16Compare, FP16Multiplier
from spikeforge.tb.amaranth import simulate

SPECIALS = [
    0x0000, 0x8000,                          # ±0
    0x0001, 0x8001, 0x0002, 0x0003,          # smallest subnormals
    0x0200, 0x03FF, 0x83FF,                  # mid, largest subnormal
    0x0400, 0x8400, 0x0401, 0x07FF,          # smallest normals
    0x1000, 0x1400, 0x1C00,                  # 2**-11 (half an ulp of 1), 2**-10, 2**-8
    0x3800, 0x3BFF, 0x3C00, 0xBC00, 0x3C01,  # 0.5, 1 - ulp, ±1, 1 + ulp
    0x3E00, 0x4000, 0xC000, 0x3555, 0xB555,  # 1.5, ±2, ±1/3
    0x2E66, 0x4248, 0x5640, 0x7800,          # 0.1, pi, 100, 2**15
    0x7BFE, 0x7BFF, 0xFBFF,                  # largest finite
    0x7C00, 0xFC00,                          # ±inf
    0x7E00, 0xFE00, 0x7C01, 0x7D00, 0xFFFF,  # quiet, signalling and other NaNs
]


def _run(unit, inputs, outputs, *, seed=0):
    """Issue ``inputs`` (name -> list of values) one per cycle with random idle cycles between;
    return name -> list of values of ``outputs``, checking ``o_valid`` arrives ``unit.latency``
    cycles after ``i_valid``."""
    count = len(next(iter(inputs.values())))
    results = {name: [] for name in outputs}
    issued = []
    rng = random.Random(seed)

    async def testbench(ctx):
        cycle = 0
        while len(results[outputs[0]]) < count:
            issue = len(issued) < count and rng.random() >= 0.1
            if issue:
                for name, values in inputs.items():
                    ctx.set(getattr(unit, name), values[len(issued)])
                issued.append(cycle)
            ctx.set(unit.i_valid, issue)
            await ctx.tick()
            cycle += 1
            if ctx.get(unit.o_valid):
                assert cycle - issued[len(results[outputs[0]])] == unit.latency
                for name in outputs:
                    results[name].append(ctx.get(getattr(unit, name)))
            else:
                assert not any(cycle - c == unit.latency for c in issued[-unit.latency:])

    simulate(unit, testbench)
    return results


def _special_pairs():
    return [a for a in SPECIALS for _ in SPECIALS], [b for _ in SPECIALS for b in SPECIALS]


def _random_pairs(count, seed, *, close=False):
    rng = random.Random(seed)
    a = [rng.getrandbits(16) for _ in range(count)]
    if close:
        b = [(rng.getrandbits(1) << 15)
             | (max(0, min(30, (x >> 10 & 0x1F) + rng.randint(-2, 2))) << 10)
             | rng.getrandbits(10) for x in a]
    else:
        b = [rng.getrandbits(16) for _ in range(count)]
    return a, b


def _product_edge_pairs(count, seed):
    """Pairs whose product lands near the subnormal range or near overflow."""
    rng = random.Random(seed)
    a, b = [], []
    for _ in range(count):
        ea = rng.randint(0, 30)
        target = rng.choice([rng.randint(-12, 4), rng.randint(26, 34)])
        eb = max(0, min(30, target + 15 - ea + rng.randint(-1, 1)))
        a.append(rng.getrandbits(1) << 15 | ea << 10 | rng.getrandbits(10))
        b.append(rng.getrandbits(1) << 15 | eb << 10 | rng.getrandbits(10))
    return a, b


def _t(values):
    return fp16.from_bits(torch.tensor(values))


def _check(expected, actual, a, b):
    expected = expected.tolist()
    wrong = [(hex(x), hex(y), hex(e), hex(r))
             for x, y, e, r in zip(a, b, expected, actual, strict=True) if e != r]
    assert not wrong, f"{len(wrong)} wrong (a, b, expected, got), first: {wrong[:8]}"


def _check_adder(a, b, sub, seed=0):
    out = _run(FP16Adder(), {"i_a": a, "i_b": b, "i_sub": sub}, ["o_result"], seed=seed)
    ta, tb = _t(a), _t(b)
    expected = torch.where(torch.tensor(sub, dtype=torch.bool),
                           fp16.bits(fp16.sub(ta, tb)), fp16.bits(fp16.add(ta, tb)))
    _check(expected, out["o_result"], a, b)


def _check_multiplier(a, b, seed=0):
    out = _run(FP16Multiplier(), {"i_a": a, "i_b": b}, ["o_result"], seed=seed)
    _check(fp16.bits(fp16.mul(_t(a), _t(b))), out["o_result"], a, b)


def _check_compare(a, b, seed=0):
    out = _run(FP16Compare(), {"i_a": a, "i_b": b}, ["o_ge", "o_lt", "o_eq"], seed=seed)
    ta, tb = _t(a), _t(b)
    _check(fp16.ge(ta, tb).int(), out["o_ge"], a, b)
    _check((ta < tb).int(), out["o_lt"], a, b)
    _check((ta == tb).int(), out["o_eq"], a, b)


@pytest.mark.parametrize("unit, latency", [
    (FP16Adder, 5), (FP16Multiplier, 4), (FP16Compare, 1),
])
def test_latency_is_read_only(unit, latency):
    dut = unit()
    Fragment.get(dut, None)
    assert dut.latency == latency
    with pytest.raises(AttributeError):
        dut.latency = 0


@pytest.mark.parametrize("a, b, sub, result", ids=hex, argvalues=[
    (0x3C00, 0x1000, 0, 0x3C00),  # 1 + half an ulp: tie, stays even
    (0x3C01, 0x1000, 0, 0x3C02),  # odd + half an ulp: tie, rounds up to even
    (0x3C00, 0x0C00, 1, 0x3C00),  # 1 - a quarter ulp below 1: rounds back to 1
    (0x7BFF, 0x7BFF, 0, 0x7C00),  # overflow
    (0xFBFF, 0x5000, 1, 0xFC00),  # negative overflow
    (0x7BFF, 0x4BFF, 0, 0x7BFF),  # just below the overflow threshold
    (0x7BFF, 0x4C00, 0, 0x7C00),  # on it: a tie, rounds to even, which is inf
    (0x4248, 0x4248, 1, 0x0000),  # x - x is +0
    (0xC248, 0x4248, 0, 0x0000),  # -x + x is +0
    (0x8000, 0x8000, 0, 0x8000),  # -0 + -0 is -0
    (0x8000, 0x0000, 1, 0x8000),  # -0 - +0 is -0
    (0x0000, 0x8000, 0, 0x0000),  # +0 + -0 is +0
    (0x03FF, 0x0001, 0, 0x0400),  # largest subnormal + smallest: smallest normal
    (0x0400, 0x0001, 1, 0x03FF),  # and back
    (0x0401, 0x0400, 1, 0x0001),  # normal - normal: subnormal, exact
    (0x7C00, 0x7C00, 1, 0x7E00),  # inf - inf
    (0x7C00, 0xFBFF, 0, 0x7C00),
    (0x7C01, 0x3C00, 0, 0x7E00),  # NaN payloads are not propagated
])
def test_adder_known_answers(a, b, sub, result):
    out = _run(FP16Adder(), {"i_a": [a], "i_b": [b], "i_sub": [sub]}, ["o_result"])
    assert out["o_result"] == [result]


@pytest.mark.parametrize("a, b, result", ids=hex, argvalues=[
    (0x3E00, 0x3C01, 0x3E02),  # 1.5 * (1 + ulp) = 1.5 + 1.5 ulp: tie, rounds to even
    (0x0001, 0x3800, 0x0000),  # smallest subnormal / 2: tie, to even zero
    (0x0003, 0x3800, 0x0002),  # 3 / 2 subnormal ulps: tie, to even
    (0x8001, 0x3800, 0x8000),  # signed zero from underflow
    (0x0001, 0x3C00, 0x0001),
    (0x0001, 0x7800, 0x1800),  # subnormal times 2**15 is normal
    (0x03FF, 0x4000, 0x07FE),
    (0x7BFF, 0x4000, 0x7C00),  # overflow
    (0x7BFF, 0xBC00, 0xFBFF),
    (0x0000, 0x7C00, 0x7E00),  # 0 * inf
    (0x8000, 0x3C00, 0x8000),
    (0xFC00, 0xBC00, 0x7C00),
])
def test_multiplier_known_answers(a, b, result):
    out = _run(FP16Multiplier(), {"i_a": [a], "i_b": [b]}, ["o_result"])
    assert out["o_result"] == [result]


@pytest.mark.parametrize("a, b, ge, lt, eq", ids=hex, argvalues=[
    (0x8000, 0x0000, 1, 0, 1),  # -0 == +0
    (0x0000, 0x8000, 1, 0, 1),
    (0x0001, 0x8001, 1, 0, 0),
    (0x8001, 0x0000, 0, 1, 0),
    (0xFC00, 0xFBFF, 0, 1, 0),
    (0x7E00, 0x7E00, 0, 0, 0),  # NaN is unordered, even with itself
    (0x3C00, 0x7D00, 0, 0, 0),
])
def test_compare_known_answers(a, b, ge, lt, eq):
    out = _run(FP16Compare(), {"i_a": [a], "i_b": [b]}, ["o_ge", "o_lt", "o_eq"])
    assert (out["o_ge"], out["o_lt"], out["o_eq"]) == ([ge], [lt], [eq])


@pytest.mark.parametrize("sub", [0, 1])
def test_adder_specials(sub):
    a, b = _special_pairs()
    _check_adder(a, b, [sub] * len(a), seed=sub)


@pytest.mark.parametrize("close", [False, True])
def test_adder_random(close):
    a, b = _random_pairs(4000, seed=10 + close, close=close)
    rng = random.Random(12)
    _check_adder(a, b, [rng.getrandbits(1) for _ in a], seed=close)


def test_multiplier_specials():
    _check_multiplier(*_special_pairs())


def test_multiplier_random():
    a, b = _random_pairs(4000, seed=20)
    c, d = _product_edge_pairs(4000, seed=21)
    _check_multiplier(a + c, b + d)


def test_compare_specials():
    _check_compare(*_special_pairs())


def test_compare_random():
    a, b = _random_pairs(4000, seed=30)
    c, d = _random_pairs(2000, seed=31, close=True)
    rng = random.Random(32)
    near = [(x + rng.choice([0, 0, 1, -1, 2, 0x8000])) & 0xFFFF for x in a[:2000]]
    _check_compare(a + c + a[:2000], b + d + near)
