# SPDX-License-Identifier: Apache-2.0
"""The lane-vector building blocks: :class:`Delay` against a shift register in Python, and
:class:`FP16Vector` lane by lane against the golden FP16 operations, with its latency."""

import random

import pytest
import torch
from amaranth.hdl import ClockDomain, Module, Value
from amaranth.lib import data

from spikeforge.golden import fp16
from spikeforge.hw.fp16 import FP16Adder, FP16Compare, FP16Multiplier
from spikeforge.hw.lanes import Delay, FP16Vector, lane_vector
from spikeforge.tb.amaranth import simulate
from spikeforge.testing import pack_lanes, unpack_lanes


@pytest.mark.parametrize("cycles", [0, 1, 3])
@pytest.mark.parametrize("shape", [1, 7, data.ArrayLayout(4, 3)])
def test_delay_taps_are_the_input_of_earlier_cycles(shape, cycles):
    dut = Delay(shape, cycles, taps=True)
    top = Module()                      # a clock domain even for a delay of no registers
    top.domains.sync = ClockDomain()
    top.submodules.dut = dut
    width = len(Value.cast(dut.i))
    rng = random.Random(cycles * 31 + width)
    drawn = [rng.getrandbits(width) for _ in range(40)]

    async def bench(ctx):
        for n, value in enumerate(drawn):
            ctx.set(Value.cast(dut.i), value)
            taps = [ctx.get(Value.cast(dut.taps[d])) for d in range(cycles + 1)]
            assert taps == [drawn[n - d] if n >= d else 0 for d in range(cycles + 1)]
            assert ctx.get(Value.cast(dut.o)) == taps[-1]
            await ctx.tick()

    simulate(top, bench)
    assert sum(a != b for a, b in zip(drawn, drawn[1:], strict=False)) > 10   # changes


def test_delay_has_taps_only_when_asked():
    assert "taps" not in Delay(1024, 14).signature.members
    assert len(Value.cast(Delay(3, 2, taps=True).taps)) == 9


def test_delay_refuses_a_negative_or_fractional_length():
    for cycles in (-1, 1.5, True):
        with pytest.raises(ValueError, match="whole number of cycles"):
            Delay(4, cycles)


def _operand(rng: random.Random) -> int:
    """A binary16 pattern: mostly normal values, with zeros, subnormals, infinities and NaNs."""
    kind = rng.random()
    sign = rng.getrandbits(1) << 15
    if kind < 0.05:
        return sign
    if kind < 0.10:
        return sign | rng.randrange(1, 0x400)
    if kind < 0.13:
        return sign | 0x7C00
    if kind < 0.15:
        return sign | 0x7C00 | rng.randrange(1, 0x400)
    return sign | rng.randrange(0x0400, 0x7C00)


def _golden(unit, sub, a: list[int], b: list[int]) -> list[int]:
    ta, tb = (fp16.from_bits(torch.tensor(x, dtype=torch.int32)) for x in (a, b))
    if unit is FP16Compare:
        return [int(v) for v in fp16.ge(ta, tb).tolist()]
    if unit is FP16Multiplier:
        result = fp16.mul(ta, tb)
    else:
        result = fp16.sub(ta, tb) if sub else fp16.add(ta, tb)
    return [int(v) & 0xFFFF for v in fp16.bits(result).tolist()]


@pytest.mark.parametrize("lanes", [1, 4])
@pytest.mark.parametrize("unit,sub", [(FP16Adder, 0), (FP16Adder, 1), (FP16Multiplier, None),
                                      (FP16Compare, None)])
def test_fp16_vector_is_the_golden_operation_in_every_lane(unit, sub, lanes):
    dut = FP16Vector(unit, lanes)
    assert dut.latency == unit.LATENCY
    assert dut.i_a.shape() == lane_vector(lanes)
    rng = random.Random(lanes * 7 + (sub or 0))
    ops = [([_operand(rng) for _ in range(lanes)], [_operand(rng) for _ in range(lanes)])
           for _ in range(60)]
    issued = [rng.random() < 0.7 for _ in ops]
    want = [_golden(unit, sub, a, b) for a, b in ops]
    got = {}

    async def bench(ctx):
        for n in range(len(ops) + dut.latency):
            if n < len(ops):
                a, b = ops[n]
                ctx.set(dut.i_valid, int(issued[n]))
                ctx.set(Value.cast(dut.i_a), pack_lanes(a))
                ctx.set(Value.cast(dut.i_b), pack_lanes(b))
                if sub is not None:
                    ctx.set(dut.i_sub, sub)
            else:
                ctx.set(dut.i_valid, 0)
            await ctx.tick()
            k = n + 1 - dut.latency
            valid = ctx.get(dut.o_valid)
            assert valid == (0 <= k < len(ops) and issued[k])
            if valid:
                word = ctx.get(Value.cast(dut.o_result))
                got[k] = ([(word >> i) & 1 for i in range(lanes)] if unit is FP16Compare
                          else unpack_lanes(word, lanes))

    simulate(dut, bench)
    assert got == {k: want[k] for k in range(len(ops)) if issued[k]}
    assert len(got) > 20
    assert len({tuple(v) for v in got.values()}) > 1        # not one value over and over
