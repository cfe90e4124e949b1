# SPDX-License-Identifier: Apache-2.0
"""Lane vectors of binary16 values and the FP16 units that work on them side by side.

A lane vector holds lane ``k`` in bits ``[16k, 16k + 16)``; its layout is :func:`lane_vector`.
"""

from amaranth.hdl import Cat, Module, Signal, Value
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .fp16 import FP16Compare

__all__ = ["LANE_COUNTS", "Delay", "FP16Vector", "LowestSet", "check_lanes", "lane", "lane_vector"]


def lane(vector, k: int) -> Value:
    """Lane ``k`` of a lane vector (a plain value or a :func:`lane_vector` view)."""
    return Value.cast(vector)[16 * k:16 * k + 16]


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


class Delay(wiring.Component):
    """``i`` delayed by ``cycles`` clock cycles: a chain of ``cycles`` registers.

    Members
    -------
    i : In(shape)
    o : Out(shape)
        ``i`` of ``cycles`` cycles ago (``i`` itself when ``cycles`` is 0).
    taps : Out(ArrayLayout(shape, cycles + 1))
        Only with ``taps``: ``taps[d]`` is ``i`` of ``d`` cycles ago (``taps[0]`` is ``i``).

    Costs ``cycles`` registers of the shape; no logic.
    """

    def __init__(self, shape, cycles: int, *, taps: bool = False):
        if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 0:
            raise ValueError(f"A delay is a whole number of cycles, not {cycles!r}")
        self._cycles, self._shape = cycles, shape
        members = {"i": In(shape), "o": Out(shape)}
        if taps:
            members["taps"] = Out(data.ArrayLayout(shape, cycles + 1))
        super().__init__(members)

    cycles = property(lambda self: self._cycles)

    def elaborate(self, platform):
        m = Module()
        chain = [self.i]
        for d in range(1, self._cycles + 1):
            reg = Signal(self._shape, name=f"d{d}")
            m.d.sync += reg.eq(chain[-1])
            chain.append(reg)
        m.d.comb += self.o.eq(chain[-1])
        if "taps" in self.signature.members:
            m.d.comb += [self.taps[d].eq(value) for d, value in enumerate(chain)]
        return m


def lane_vector(lanes: int) -> data.ArrayLayout:
    """The layout of ``lanes`` binary16 values side by side, lane ``k`` in ``[16k, 16k+16)``."""
    return data.ArrayLayout(16, lanes)


class FP16Vector(wiring.Component):
    """``lanes`` FP16 units of one kind (:mod:`~spikeforge.hw.fp16`) side by side, issued together
    on lane vectors: lane ``k`` of the result is ``unit(i_a[k], i_b[k])``.

    Members
    -------
    i_valid : In(1)
    i_a, i_b : In(lane_vector(lanes))
    i_sub : In(1)
        Only for :class:`~spikeforge.hw.fp16.FP16Adder`: subtract in every lane.
    o_valid : Out(1)
        ``i_valid`` of ``latency`` cycles ago.
    o_result : Out(lane_vector(lanes)), or Out(lanes) for a compare
        The results (a compare's ``o_ge`` bits) of the operation issued ``latency`` cycles ago.

    Accepts one operation a cycle; costs ``lanes`` units.
    """

    def __init__(self, unit: type, lanes: int):
        self._units = [unit() for _ in range(check_lanes(lanes))]
        sample = self._units[0]
        self._compare = isinstance(sample, FP16Compare)
        self._subtracts = "i_sub" in sample.signature.members
        self._latency = sample.latency
        members = {"i_valid": In(1), "i_a": In(lane_vector(lanes)), "i_b": In(lane_vector(lanes))}
        if self._subtracts:
            members["i_sub"] = In(1)
        members["o_valid"] = Out(1)
        members["o_result"] = Out(lanes if self._compare else lane_vector(lanes))
        super().__init__(members)

    lanes = property(lambda self: len(self._units))
    latency = property(lambda self: self._latency)

    def issue(self, valid, a, b, sub=None) -> list:
        """The statements that issue ``a`` op ``b`` when ``valid`` (subtracting with ``sub``);
        add them to the domain and condition the operands hold in."""
        stmts = [self.i_valid.eq(valid), self.i_a.eq(a), self.i_b.eq(b)]
        if sub is not None:
            stmts.append(self.i_sub.eq(sub))
        return stmts

    def elaborate(self, platform):
        m = Module()
        results = []
        for k, u in enumerate(self._units):
            m.submodules[f"lane{k}"] = u
            m.d.comb += [u.i_valid.eq(self.i_valid), u.i_a.eq(self.i_a[k]),
                         u.i_b.eq(self.i_b[k])]
            if self._subtracts:
                m.d.comb += u.i_sub.eq(self.i_sub)
            results.append(u.o_ge if self._compare else u.o_result)
            if k == 0:
                m.d.comb += self.o_valid.eq(u.o_valid)
        m.d.comb += self.o_result.eq(Cat(*results))
        return m


LANE_COUNTS = tuple(1 << k for k in range(7))


def check_lanes(lanes: int, error: type[Exception] = ValueError, what: str = "Lane count") -> int:
    """``lanes`` if it is a lane count the units are built for (a power of two up to 64);
    otherwise ``error`` says so of ``what``. The one rule for every block and configuration."""
    if isinstance(lanes, bool) or lanes not in LANE_COUNTS:
        raise error(f"{what} must be a power of two between 1 and 64, not {lanes!r}")
    return lanes
