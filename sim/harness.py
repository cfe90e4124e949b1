# SPDX-License-Identifier: Apache-2.0
"""Run cocotb testbenches under Verilator on Amaranth components.

:func:`run` builds a component with :mod:`spikeforge.gen.verilator` into ``sim_build/<name>/``
and runs cocotb tests on it; the calling pytest test fails unless every requested cocotb test
ran and passed. :class:`Lanes` puts several copies of a fixed-latency unit side by side, so
that each clock cycle of a testbench tests many operands.
"""

from collections.abc import Callable
from pathlib import Path

from amaranth.hdl import Module, Shape
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spikeforge.gen import verilator

__all__ = ["BUILD_ROOT", "Lanes", "run"]

BUILD_ROOT = Path(__file__).resolve().parent.parent / "sim_build"


def run(component: wiring.Component, *, name: str, **kwargs) -> Path:
    """:func:`spikeforge.gen.verilator.run` in ``sim_build/<name>/``."""
    return verilator.run(component, name=name, build_dir=BUILD_ROOT / name, **kwargs)


class Lanes(wiring.Component):
    """``lanes`` copies of a fixed-latency unit side by side, for testbenches.

    Every member of the unit's signature becomes a member ``lanes`` times as wide, lane ``i`` in
    bits ``i * width`` to ``(i + 1) * width``, except ``i_valid`` (shared by all lanes) and
    ``o_valid`` (of lane 0; the lanes run in lockstep).

    Parameters
    ----------
    unit : callable
        Returns a new unit, a :class:`wiring.Component` with a ``latency`` property.
    lanes : int
        Number of copies, 1 to 256.
    """

    def __init__(self, unit: Callable[[], wiring.Component], lanes: int):
        if not isinstance(lanes, int) or not 1 <= lanes <= 256:
            raise ValueError(f"Lane count must be an integer between 1 and 256, not {lanes!r}")
        self._lanes = lanes
        self._units = [unit() for _ in range(lanes)]
        members = {}
        for member_name, member in self._units[0].signature.members.items():
            if not member.is_port:
                raise ValueError(f"Lanes only replicates units whose members are ports, "
                                 f"not {member_name!r}")
            width = Shape.cast(member.shape).width
            if member_name not in ("i_valid", "o_valid"):
                width *= lanes
            members[member_name] = (In if member.flow == wiring.In else Out)(width)
        super().__init__(members)

    @property
    def lanes(self) -> int:
        return self._lanes

    @property
    def latency(self) -> int:
        return self._units[0].latency

    def elaborate(self, platform):
        m = Module()
        for index, unit in enumerate(self._units):
            m.submodules[f"lane{index}"] = unit
            for member_name, member in unit.signature.members.items():
                ours, theirs = getattr(self, member_name), getattr(unit, member_name)
                if member_name == "i_valid":
                    m.d.comb += theirs.eq(ours)
                elif member_name == "o_valid":
                    if index == 0:
                        m.d.comb += ours.eq(theirs)
                else:
                    width = Shape.cast(member.shape).width
                    lane = ours[index * width:(index + 1) * width]
                    if member.flow == wiring.In:
                        m.d.comb += theirs.eq(lane)
                    else:
                        m.d.comb += lane.eq(theirs)
        return m
