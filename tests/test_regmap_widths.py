# SPDX-License-Identifier: Apache-2.0
"""The gateware takes its widths and ranges from the register map's enums: grow one and they
follow."""

import pytest
from amaranth.lib import enum
from amaranth.sim import Simulator

import spikeforge.hw.core_control as control
from spikeforge import regmap
from spikeforge.regmap import Command, Counter, Reg, Region

GrownCommand = enum.IntEnum("Command", [(c.name, c.value) for c in Command]
                            + [("STEP", 5), ("SAVE", 6), ("LOAD", 7), ("FLUSH", 8)])


GrownCounter = enum.IntEnum("Counter", [(c.name, c.value) for c in Counter]
                            + [("EXTRA", len(Counter)), ("MORE", len(Counter) + 1)])


def accepted_commands(regs) -> list[int]:
    """The COMMAND values the registers take from an idle core."""
    taken = []

    async def bench(ctx):
        ctx.set(regs.idle, 1)
        ctx.set(regs.offset, Reg.COMMAND)
        ctx.set(regs.access, 1)
        ctx.set(regs.we, 1)
        for value in range(16):
            ctx.set(regs.wdata, value)
            if ctx.get(regs.write_ok):
                taken.append(value)

    sim = Simulator(regs)
    sim.add_testbench(bench)
    sim.run()
    return taken


def test_the_command_register_follows_the_command_enum(monkeypatch):
    sizes = dict(neurons=8, fan_in=8, timesteps=4, lanes=2)
    regs = control.CoreRegisters(**sizes)
    assert len(regs.command) == Command.as_shape().width == 3
    assert accepted_commands(regs) == list(range(len(Command)))
    monkeypatch.setattr(control, "Command", GrownCommand)
    grown = control.CoreRegisters(**sizes)
    assert len(grown.command) == 4
    assert accepted_commands(grown) == list(range(len(GrownCommand))) == list(range(9))


def test_the_counters_follow_the_counter_enum(monkeypatch):
    assert len(control.Counters().bump) == len(Counter)
    monkeypatch.setattr(control, "Counter", GrownCounter)
    monkeypatch.setattr(control, "COUNTERS", tuple(c.name.lower() for c in GrownCounter))
    counters = control.Counters()
    assert len(counters.bump) == len(Counter) + 2
    assert counters.index.shape().width == (len(Counter) + 1).bit_length()


@pytest.mark.parametrize("region", list(Region))
def test_an_address_is_a_region_and_an_offset(region):
    view = regmap.address_layout().const({"region": region, "offset": 12345})
    assert view.as_value().value == regmap.address(region, 12345)
    assert regmap.address_layout().size == 32 == regmap.OFFSET_BITS + Region.as_shape().width
