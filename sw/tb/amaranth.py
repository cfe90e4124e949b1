# SPDX-License-Identifier: Apache-2.0
"""Helpers of the tests that run gateware in Amaranth's simulator: one call that builds and runs
a simulation, beats on ``amaranth.lib.stream`` ports with seeded idle cycles and backpressure,
the cores' word bus, and lane vectors (FP16 bit patterns side by side in one word; the packing
itself lives in :mod:`spikeforge.testing`, shared with the cocotb drivers).
"""

import os
import random
from collections.abc import Callable, Iterable

from amaranth.sim import Simulator

from ..regmap import Reg, Region, Status, address
from ..testing import pack_fp16, pack_lanes, unpack_lanes

__all__ = ["bus_read", "bus_write", "get", "get_events", "get_lanes", "pack_fp16", "pack_lanes",
           "put", "put_events", "put_lanes", "simulate", "simulator", "unpack_lanes", "wait_idle",
           "wait_status"]

Testbench = Callable[..., object]


def simulator(dut, *testbenches: Testbench, background: Iterable[Testbench] = (),
              period: float = 1e-8) -> Simulator:
    """A simulator of ``dut`` clocked every ``period`` seconds, with the ``background``
    testbenches added first and then ``testbenches``."""
    sim = Simulator(dut)
    sim.add_clock(period)
    for bench in background:
        sim.add_testbench(bench, background=True)
    for bench in testbenches:
        sim.add_testbench(bench)
    return sim


def simulate(dut, *testbenches: Testbench, background: Iterable[Testbench] = (),
             period: float = 1e-8, vcd: str | os.PathLike | None = None) -> None:
    """Run ``dut`` until ``testbenches`` return (see :func:`simulator`); with ``vcd``, write the
    waveforms to that file."""
    sim = simulator(dut, *testbenches, background=background, period=period)
    if vcd is None:
        sim.run()
    else:
        with sim.write_vcd(os.fspath(vcd)):
            sim.run()


async def put(ctx, stream, payload, *, rng: random.Random | None = None,
              idle: float = 0.0) -> None:
    """Send one beat on ``stream``: idle cycles while ``rng`` draws below ``idle``, then
    ``valid`` with ``payload`` held until the sink takes it."""
    while rng is not None and rng.random() < idle:
        await ctx.tick()
    ctx.set(stream.valid, 1)
    ctx.set(stream.payload, payload)
    await ctx.tick().until(stream.ready)
    ctx.set(stream.valid, 0)


async def get(ctx, stream, *, rng: random.Random | None = None, stall: float = 0.0):
    """Take one beat from ``stream`` and return its payload; ``ready`` is low in a cycle whose
    draw from ``rng`` falls below ``stall``. ``ready`` stays as it was last set."""
    while True:
        ready = rng is None or rng.random() >= stall
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if ready and valid:
            return payload


async def bus_write(ctx, dut, addr: int, value: int) -> bool:
    """Write a word on ``dut``'s word bus (``dut.bus``, a
    :func:`~spikeforge.hw.core_control.word_bus`); return whether it answered with an error."""
    bus = dut.bus
    ctx.set(bus.en, 1)
    ctx.set(bus.we, 1)
    ctx.set(bus.addr.as_value(), addr)
    ctx.set(bus.wdata, value)
    await ctx.tick()
    ctx.set(bus.en, 0)
    ctx.set(bus.we, 0)
    (err,) = await ctx.tick().sample(bus.err).until(bus.ack)
    return bool(err)


async def bus_read(ctx, dut, addr: int, *, check: bool = True) -> int:
    """Read a word on ``dut``'s word bus (``dut.bus``); with ``check``, an error answer fails
    the test."""
    bus = dut.bus
    ctx.set(bus.en, 1)
    ctx.set(bus.we, 0)
    ctx.set(bus.addr.as_value(), addr)
    await ctx.tick()
    ctx.set(bus.en, 0)
    data, err = await ctx.tick().sample(bus.rdata, bus.err).until(bus.ack)
    assert not (check and err), f"bus read of {addr:#x} failed"
    return int(data)


async def wait_status(ctx, dut, flag: Status, *, polls: int = 100_000) -> None:
    """Poll a core's ``Reg.STATUS`` until ``flag`` is set."""
    for _ in range(polls):
        if await bus_read(ctx, dut, address(Region.REG, Reg.STATUS)) & flag:
            return
    raise AssertionError(f"status {flag!r} never set")


async def wait_idle(ctx, dut) -> None:
    """Poll a core's ``Reg.STATUS`` until ``Status.BUSY`` is clear."""
    while await bus_read(ctx, dut, address(Region.REG, Reg.STATUS)) & Status.BUSY:
        pass


async def put_events(ctx, stream, indices: Iterable[int], *, rng: random.Random | None = None,
                     idle: float = 0.0, last_on_spike: bool = False) -> None:
    """Send one step of an event stream (payload ``index``, ``spike``, ``last``): a spike event
    per index, then a closing non-spike ``last`` event, or with ``last_on_spike`` the last spike
    marked ``last`` instead."""
    indices = list(indices)
    items = [(i, 1, 0) for i in indices] + [(0, 0, 1)]
    if indices and last_on_spike:
        items = [(i, 1, 0) for i in indices[:-1]] + [(indices[-1], 1, 1)]
    for index, spike, last in items:
        await put(ctx, stream, {"index": index, "spike": spike, "last": last}, rng=rng,
                  idle=idle)


async def get_events(ctx, stream, *, rng: random.Random | None = None,
                     stall: float = 0.0) -> list[int]:
    """Take one step of an event stream; return the indices of its spike events."""
    spikes = []
    while True:
        payload = await get(ctx, stream, rng=rng, stall=stall)
        if payload.spike:
            spikes.append(int(payload.index))
        if payload.last:
            return spikes


async def put_lanes(ctx, stream, patterns: list[int], lanes: int, *,
                    rng: random.Random | None = None, idle: float = 0.0) -> None:
    """Send ``patterns`` (16-bit) as beats of ``lanes`` (payload ``value``, ``last``), the
    last beat marked ``last``."""
    beats = len(patterns) // lanes
    for c in range(beats):
        value = pack_lanes(patterns[c * lanes:(c + 1) * lanes])
        await put(ctx, stream, {"value": value, "last": int(c == beats - 1)}, rng=rng, idle=idle)


async def get_lanes(ctx, stream, beats: int, lanes: int, *, rng: random.Random | None = None,
                    stall: float = 0.0) -> list[int]:
    """Take ``beats`` beats of ``lanes`` 16-bit patterns (payload ``value``, ``last``); only the
    last of them may be marked ``last``. Return the patterns, lane 0 of the first beat first."""
    patterns = []
    for c in range(beats):
        payload = await get(ctx, stream, rng=rng, stall=stall)
        assert bool(payload.last) == (c == beats - 1), f"last on beat {c} of {beats}"
        patterns += unpack_lanes(payload.value, lanes)
    return patterns
