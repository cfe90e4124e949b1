# SPDX-License-Identifier: Apache-2.0
"""Lane vectors of binary16 values and the FP16 units that work on them side by side.

A lane vector is a plain signal with lane ``k`` in bits ``[16k, 16k + 16)``.
"""

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .fp16 import FP16Compare

__all__ = ["LANE_COUNTS", "FP16Lanes", "LowestSet", "check_lanes", "delay", "delay_chain", "lane"]


def lane(vector: Value, k: int) -> Value:
    """Lane ``k`` of a lane vector."""
    return vector[16 * k:16 * k + 16]


class LowestSet(wiring.Component):
    """The index of the lowest set bit of ``i`` (0 when none is set); combinational.

    Members
    -------
    i : In(width)
    o : Out(range(width))
    """

    def __init__(self, width: int):
        self._width = width
        super().__init__({"i": In(width), "o": Out(range(width))})

    def elaborate(self, platform):
        m = Module()
        for k in reversed(range(self._width)):
            with m.If(self.i[k]):
                m.d.comb += self.o.eq(k)
        return m


def delay_chain(m: Module, value: Value, cycles: int, name: str) -> list[Value]:
    """``value`` and its copies delayed by 1 to ``cycles`` cycles: ``chain[d]`` is ``d`` late."""
    chain = [value]
    for d in range(1, cycles + 1):
        reg = Signal.like(value, name=f"{name}_d{d}")
        m.d.sync += reg.eq(chain[-1])
        chain.append(reg)
    return chain


def delay(m: Module, value: Value, cycles: int, name: str) -> Value:
    """``value`` delayed by ``cycles`` clock cycles."""
    assert cycles >= 0
    return delay_chain(m, value, cycles, name)[-1]


class FP16Lanes:
    """One FP16 unit per lane, issued together with lane-vector operands."""

    def __init__(self, m: Module, name: str, unit, lanes: int):
        self.units = [unit() for _ in range(lanes)]
        for k, u in enumerate(self.units):
            m.submodules[f"{name}{k}"] = u
        self.latency = self.units[0].latency
        self.o_valid = self.units[0].o_valid
        if isinstance(self.units[0], FP16Compare):
            self.o_result = Cat(*(u.o_ge for u in self.units))
        else:
            self.o_result = Cat(*(u.o_result for u in self.units))

    def issue(self, m: Module, valid: Value, a: Value, b: Value, sub=None) -> Value:
        """Drive the units; return the lane vector of their results (``o_ge`` of compares)."""
        for k, u in enumerate(self.units):
            m.d.comb += [u.i_valid.eq(valid), u.i_a.eq(lane(a, k)), u.i_b.eq(lane(b, k))]
            if sub is not None:
                m.d.comb += u.i_sub.eq(sub)
        return self.o_result


LANE_COUNTS = tuple(1 << k for k in range(7))


def check_lanes(lanes: int, error: type[Exception] = ValueError, what: str = "Lane count") -> int:
    """``lanes`` if it is a lane count the units are built for (a power of two up to 64);
    otherwise ``error`` says so of ``what``. The one rule for every block and configuration."""
    if isinstance(lanes, bool) or lanes not in LANE_COUNTS:
        raise error(f"{what} must be a power of two between 1 and 64, not {lanes!r}")
    return lanes
