# SPDX-License-Identifier: Apache-2.0
"""cocotb testbenches of the FP16 units under Verilator, bit for bit against the golden model.

Each unit is tested as :class:`harness.Lanes` of ``LANES`` copies, one operand pair per lane and
cycle: the cross product of ``SPECIALS`` with itself, then ``FP16_PAIRS`` (environment, default
2**20) seeded random pairs drawn to hit the unit's hard cases, with 2 % idle cycles.
"""

import os
import time

import cocotb
import numpy as np
import pytest
import torch
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge
from harness import Lanes, run

from spikeforge.golden import fp16
from spikeforge.hw.fp16 import FP16Adder, FP16Compare, FP16Multiplier

LANES = 16
SEED = 0x5F16

SPECIALS = [
    0x0000, 0x8000,                          # ±0
    0x0001, 0x8001, 0x0002, 0x0003,          # smallest subnormals
    0x0155, 0x0200, 0x03FF, 0x83FF,          # subnormals up to the largest
    0x0400, 0x8400, 0x0401, 0x07FF, 0x0800,  # smallest normals
    0x1000, 0x1400, 0x1C00, 0x2400,          # 2**-11 (half an ulp of 1), 2**-10, ...
    0x3800, 0x3BFF, 0x3C00, 0xBC00, 0x3C01,  # 0.5, 1 - ulp, ±1, 1 + ulp
    0x3E00, 0x4000, 0xC000, 0x3555, 0xB555,  # 1.5, ±2, ±1/3
    0x2E66, 0x4248, 0xC8F6, 0x5640, 0x7800,  # 0.1, pi, -9.92, 100, 2**15
    0x7BFE, 0x7BFF, 0xFBFF,                  # largest finite
    0x7C00, 0xFC00,                          # ±inf
    0x7E00, 0xFE00, 0x7C01, 0x7D00, 0xFFFF,  # quiet, signalling and other NaNs
]


def _random_pairs() -> int:
    return int(os.environ.get("FP16_PAIRS", 1 << 20))


class TB:
    """Clock, reset and drive a :class:`harness.Lanes` of a unit.

    Each cycle's operands of all lanes are one integer per member, packed before the run, and
    each cycle's results are kept as read, unpacked after it: the Python work per cycle is a
    few signal accesses.
    """

    def __init__(self, dut, latency: int):
        self.dut = dut
        self.latency = latency
        self.lanes = len(dut.i_a) // 16
        cocotb.start_soon(Clock(dut.clk, 2, unit="ns").start())

    def _width(self, name: str) -> int:
        return len(getattr(self.dut, name)) // self.lanes

    def _pack(self, values: torch.Tensor, width: int) -> list[int]:
        """Per cycle, the lanes' ``values`` as one integer, lane 0 in the LSBs."""
        pad = -len(values) % self.lanes
        lanes = torch.cat([values, values.new_zeros(pad)]).view(-1, self.lanes).numpy()
        if width == 1:
            rows = np.packbits(lanes.astype(np.uint8), axis=1, bitorder="little")
        else:
            rows = lanes.astype("<u2")
        return [int.from_bytes(row.tobytes(), "little") for row in rows]

    def _unpack(self, words: list[int], width: int, count: int) -> torch.Tensor:
        nbytes = (self.lanes * width + 7) // 8
        raw = np.frombuffer(b"".join(w.to_bytes(nbytes, "little") for w in words), np.uint8)
        if width == 1:
            lanes = np.unpackbits(raw, bitorder="little").reshape(len(words), -1)[:, :self.lanes]
        else:
            lanes = raw.view("<u2")
        return torch.from_numpy(lanes.astype(np.int32)).reshape(-1)[:count]

    async def run(self, inputs: dict[str, torch.Tensor], outputs: list[str], *,
                  idle: float = 0.0, seed: int = 0) -> dict[str, torch.Tensor]:
        """Issue ``inputs`` (member name to one value per operation) with a fraction ``idle`` of
        idle cycles; return ``outputs`` (member names) likewise, checking the latency and that
        every operation gave one result."""
        for name in (*inputs, *outputs):
            assert self._width(name) in (1, 16), f"{name} is neither a bit nor a binary16 lane"
        dut = self.dut
        count = len(next(iter(inputs.values())))
        words = [self._pack(values, self._width(name)) for name, values in inputs.items()]
        cycles = len(words[0])
        handles = [getattr(dut, name) for name in inputs]
        out_handles = [getattr(dut, name) for name in outputs]
        received: list[list[int]] = [[] for _ in outputs]
        generator = torch.Generator().manual_seed(seed)
        idle_at = (torch.rand(2 * cycles, generator=generator) < idle).tolist()
        edge = RisingEdge(dut.clk)

        dut.rst.value = 1
        dut.i_valid.value = 0
        for _ in range(2):
            await edge
        dut.rst.value = 0

        cycle, issued, valid, first_issue, first_result = 0, 0, 0, None, None
        while len(received[0]) < cycles:
            issue = issued < cycles and not idle_at[cycle]
            if issue:
                for handle, column in zip(handles, words, strict=True):
                    handle.value = column[issued]
                if first_issue is None:
                    first_issue = cycle
                issued += 1
            if issue != valid:
                dut.i_valid.value = valid = int(issue)
            await edge
            cycle += 1
            if dut.o_valid.value:
                if first_result is None:
                    first_result = cycle
                for got, handle in zip(received, out_handles, strict=True):
                    got.append(handle.value.to_unsigned())
            assert cycle < len(idle_at), f"{len(received[0])} of {cycles} results in {cycle} cycles"
        for _ in range(self.latency + 2):
            await edge
            assert not dut.o_valid.value, "a result without an operation"
        # A value read as RisingEdge returns is the one from before that edge, hence the + 1.
        assert first_result - first_issue == self.latency + 1, \
            f"first result {first_result - first_issue - 1} cycles after its operands"
        return {name: self._unpack(got, self._width(name), count)
                for name, got in zip(outputs, received, strict=True)}


async def _check(dut, name: str, inputs: dict[str, torch.Tensor],
                 expected: dict[str, torch.Tensor], *, min_distinct: int,
                 idle: float = 0.0) -> None:
    """Run ``inputs`` through ``dut`` and compare its outputs with ``expected`` bit for bit."""
    for member, values in expected.items():
        distinct = len(torch.unique(values))
        assert distinct >= min_distinct, \
            f"{name} {member}: only {distinct} distinct expected values, the test proves little"
    tb = TB(dut, latency=int(os.environ["FP16_LATENCY"]))
    start = time.perf_counter()
    outputs = await tb.run(inputs, list(expected), idle=idle, seed=SEED)
    elapsed = time.perf_counter() - start
    a, b = inputs["i_a"], inputs["i_b"]
    for member, values in expected.items():
        wrong = (outputs[member] != values).nonzero().flatten().tolist()
        examples = ", ".join(f"{a[i]:04x} {b[i]:04x}: {values[i]:04x} != {outputs[member][i]:04x}"
                             for i in wrong[:8])
        assert not wrong, (f"{name} {member}: {len(wrong)} of {len(values)} wrong "
                           f"(a b: expected != got): {examples}")
    cocotb.log.info("%s: %d operations bit-exact in %.1f s", name, len(a), elapsed)


def _cross(values: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    t = torch.tensor(values, dtype=torch.int32)
    return t.repeat_interleave(len(t)), t.repeat(len(t))


def _bits(count: int, generator: torch.Generator, high: int = 1 << 16) -> torch.Tensor:
    return torch.randint(0, high, (count,), generator=generator, dtype=torch.int32)


def _fields(sign: torch.Tensor, exponent: torch.Tensor, mantissa: torch.Tensor) -> torch.Tensor:
    return (sign << 15) | (exponent.clamp(0, 30) << 10) | mantissa


def _adder_pairs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform bit patterns (3/8); exponents at most 3 apart (3/8); the same exponent and a
    mantissa at most 8 away (1/4: massive cancellation, exact zeros)."""
    n = count // 8
    a = _bits(count, generator)
    exp_a, mant_a = (a >> 10) & 0x1F, a & 0x3FF
    near = exp_a + torch.randint(-3, 4, (count,), generator=generator)
    close = _fields(_bits(count, generator, 2), near, _bits(count, generator, 1 << 10))
    nudge = torch.randint(-8, 9, (count,), generator=generator)
    same = _fields(_bits(count, generator, 2), exp_a, (mant_a + nudge) & 0x3FF)
    return a, torch.cat([_bits(3 * n, generator), close[3 * n:6 * n], same[6 * n:]])


def _multiplier_pairs(count: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform bit patterns (1/2); exponents whose sum puts the product near or into the
    subnormal range or near overflow (1/4); a subnormal ``b`` (1/4)."""
    n = count // 4
    a = _bits(count, generator)
    exp_a = (a >> 10) & 0x1F
    target = torch.where(torch.rand(count, generator=generator) < 0.5,
                         torch.randint(-12, 5, (count,), generator=generator),
                         torch.randint(26, 35, (count,), generator=generator))
    edge = _fields(_bits(count, generator, 2), target + 15 - exp_a,
                   _bits(count, generator, 1 << 10))
    subnormal = _bits(count, generator) & 0x83FF
    return a, torch.cat([_bits(2 * n, generator), edge[2 * n:3 * n], subnormal[3 * n:]])


def _compare_pairs(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform bit patterns (1/2); the same sign and exponent (1/4); ``b`` equal to ``a``, an
    ulp or two away, or ``a`` with its sign flipped (1/4)."""
    n = count // 4
    a = _bits(count, generator)
    same = (a & 0xFC00) | _bits(count, generator, 1 << 10)
    nudge = torch.tensor([0, 0, 1, -1, 2, 0x8000], dtype=torch.int32)
    near = (a + nudge[torch.randint(0, len(nudge), (count,), generator=generator)]) & 0xFFFF
    return a, torch.cat([_bits(2 * n, generator), same[2 * n:3 * n], near[3 * n:]])


def _adder_expected(a, b, sub):
    ta, tb = fp16.from_bits(a), fp16.from_bits(b)
    return {"o_result": torch.where(sub.bool(), fp16.bits(fp16.sub(ta, tb)),
                                    fp16.bits(fp16.add(ta, tb)))}


def _multiplier_expected(a, b):
    return {"o_result": fp16.bits(fp16.mul(fp16.from_bits(a), fp16.from_bits(b)))}


def _compare_expected(a, b):
    ta, tb = fp16.from_bits(a), fp16.from_bits(b)
    expected = {"o_ge": fp16.ge(ta, tb), "o_lt": ta < tb, "o_eq": ta == tb}
    for member, values in expected.items():
        share = values.float().mean().item()
        assert 0.01 < share < 0.99, f"{member} is true for {share:.1%} of the pairs only"
    return {member: values.int() for member, values in expected.items()}


@cocotb.test()
async def adder_specials(dut):
    a, b = _cross(SPECIALS)
    a, b = torch.cat([a, a]), torch.cat([b, b])
    sub = (torch.arange(len(a)) >= len(a) // 2).int()
    await _check(dut, "adder specials", {"i_a": a, "i_b": b, "i_sub": sub},
                 _adder_expected(a, b, sub), min_distinct=200)


@cocotb.test()
async def adder_random(dut):
    generator = torch.Generator().manual_seed(SEED)
    a, b = _adder_pairs(_random_pairs(), generator)
    sub = _bits(len(a), generator, 2)
    await _check(dut, "adder random", {"i_a": a, "i_b": b, "i_sub": sub},
                 _adder_expected(a, b, sub), min_distinct=20000, idle=0.02)


@cocotb.test()
async def multiplier_specials(dut):
    a, b = _cross(SPECIALS)
    await _check(dut, "multiplier specials", {"i_a": a, "i_b": b}, _multiplier_expected(a, b),
                 min_distinct=200)


@cocotb.test()
async def multiplier_random(dut):
    a, b = _multiplier_pairs(_random_pairs(), torch.Generator().manual_seed(SEED + 1))
    await _check(dut, "multiplier random", {"i_a": a, "i_b": b}, _multiplier_expected(a, b),
                 min_distinct=20000, idle=0.02)


@cocotb.test()
async def compare_specials(dut):
    a, b = _cross(SPECIALS)
    await _check(dut, "compare specials", {"i_a": a, "i_b": b}, _compare_expected(a, b),
                 min_distinct=2)


@cocotb.test()
async def compare_random(dut):
    a, b = _compare_pairs(_random_pairs(), torch.Generator().manual_seed(SEED + 2))
    await _check(dut, "compare random", {"i_a": a, "i_b": b}, _compare_expected(a, b),
                 min_distinct=2, idle=0.02)


@pytest.mark.slow
@pytest.mark.parametrize("unit", [FP16Adder, FP16Multiplier, FP16Compare],
                         ids=["adder", "multiplier", "compare"])
def test_fp16(unit):
    dut = Lanes(unit, LANES)
    prefix = unit.__name__.removeprefix("FP16").lower()
    run(dut, name=f"fp16_{prefix}", test_module="test_fp16",
        testcases=[f"{prefix}_specials", f"{prefix}_random"],
        extra_env={"FP16_LATENCY": str(dut.latency)})
