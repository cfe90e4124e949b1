# SPDX-License-Identifier: Apache-2.0
"""cocotb driver of one :class:`~spikeforge.hw.core.Core` exported to Verilog.

:class:`CoreTB` owns the clock and reset, the word bus, and a source and a sink for each stream
with seeded random idle cycles and backpressure. :meth:`CoreTB.run_case` runs a
:class:`~spikeforge.testing.LayerCase` through FP, BP, WG and the update and returns what the
core produced, in the golden model's terms (bit patterns).
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import RisingEdge

from ..golden import fp16
from ..regmap import (
    Command,
    Counter,
    Reg,
    Region,
    Status,
    address,
    state_offset,
    weight_offset,
)
from ..testing import LayerCase, pack_lanes, unpack_lanes
from .streams import StreamDriver

__all__ = ["CoreTB"]


class CoreTB(StreamDriver):
    quiet = ("bus__en", "bus__we", "fp_i__valid", "fp_o__ready", "bp_i__valid", "bp_o__ready")

    def __init__(self, dut, *, lanes: int, neurons: int, fan_in: int, seed: int = 1,
                 idle: float = 0.0, stall: float = 0.0):
        """``neurons`` and ``fan_in``: the core's configured maxima, which set its offsets."""
        self.dut = dut
        self.lanes = lanes
        self.neurons, self.fan_in = neurons, fan_in
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())

    def weight_address(self, region: Region, n: int, i: int) -> int:
        return address(region, weight_offset(n, i, fan_in=self.fan_in))

    def state_address(self, region: Region, t: int, n: int) -> int:
        return address(region, state_offset(t, n, neurons=self.neurons))

    async def _bus(self, addr: int, we: int, value: int = 0):
        d = self.dut
        d.bus__en.value = 1
        d.bus__we.value = we
        d.bus__addr.value = addr
        d.bus__wdata.value = value
        await RisingEdge(d.clk)
        d.bus__en.value = 0
        d.bus__we.value = 0
        while True:
            await RisingEdge(d.clk)
            if int(d.bus__ack.value):
                return int(d.bus__rdata.value), bool(int(d.bus__err.value))

    async def write(self, addr: int, value: int) -> bool:
        """Write a word; return whether the core flagged an error."""
        return (await self._bus(addr, 1, value))[1]

    async def read(self, addr: int) -> int:
        data, err = await self._bus(addr, 0)
        assert not err, f"bus read of {addr:#x} failed"
        return data

    async def wait_status(self, flag: Status, limit: int = 10_000_000):
        for _ in range(limit):
            if await self.read(address(Region.REG, Reg.STATUS)) & flag:
                return
        raise AssertionError(f"status {flag!r} never set")

    async def counters(self) -> dict:
        result = {}
        for c in Counter:
            lo = await self.read(address(Region.COUNTER, 2 * c))
            hi = await self.read(address(Region.COUNTER, 2 * c + 1))
            result[c.name.lower()] = hi << 16 | lo
        return result

    async def update(self):
        """Apply the accumulated gradient (``W -= lr·ΔW``, ``ΔW = 0``) and wait for it."""
        assert not await self.write(address(Region.REG, Reg.COMMAND), Command.UPDATE)
        while await self.read(address(Region.REG, Reg.STATUS)) & Status.BUSY:
            pass

    async def read_matrix(self, region: Region, neurons: int, fan_in: int) -> list:
        return [[await self.read(self.weight_address(region, n, i))
                 for i in range(fan_in)] for n in range(neurons)]

    async def load(self, case: LayerCase, bp_input_error: bool = True):
        for reg, value in case.registers().items():
            assert not await self.write(address(Region.REG, reg), value)
        assert not await self.write(address(Region.REG, Reg.BP_INPUT_ERROR), int(bp_input_error))
        bits = fp16.bits(case.weights).tolist()
        for n, row in enumerate(bits):
            for i, value in enumerate(row):
                assert not await self.write(self.weight_address(Region.WEIGHT, n, i),
                                            value)

    async def run_case(self, case: LayerCase, bp_input_error: bool = True,
                       readback: bool = True, update: bool = True) -> dict:
        """Run ``case`` (weights already loaded) and return what the core produced.

        Without ``update`` the gradient stays accumulated for the next sample (a batch).
        """
        P, T, N, F = self.lanes, case.timesteps, case.neurons, case.fan_in
        chunks, in_chunks = -(-N // P), -(-F // P)
        index_bits = len(self.dut.fp_i__payload) - 2
        out_bits = len(self.dut.fp_o__payload) - 2
        got = {"events": [[] for _ in range(T)], "grad_in": [[] for _ in range(T)]}
        assert not await self.write(address(Region.REG, Reg.COMMAND), Command.CLEAR_COUNTERS)
        assert not await self.write(address(Region.REG, Reg.COMMAND), Command.BEGIN)

        async def fp_source():
            for t in range(T):
                events = case.input_events(t)
                items = [(i, 1, 0) for i in events] + [(0, 0, 1)]
                if events and self.rng.random() < 0.5:
                    items = [(i, 1, 0) for i in events[:-1]] + [(events[-1], 1, 1)]
                for index, spike, last in items:
                    await self._put("fp_i", index | spike << index_bits | last << index_bits + 1)

        async def fp_sink():
            t = 0
            while t < T:
                word = await self._get("fp_o")
                if word >> out_bits & 1:
                    got["events"][t].append(word & ((1 << out_bits) - 1))
                if word >> out_bits + 1 & 1:
                    t += 1

        source = cocotb.start_soon(fp_source())
        await fp_sink()
        await source
        await self.wait_status(Status.FP_DONE)
        if readback:
            got["charges"] = [[await self.read(self.state_address(Region.CHARGE, t, n))
                               for n in range(N)] for t in range(T)]
            got["spikes"] = [[await self.read(self.state_address(Region.SPIKE, t, n))
                              for n in range(N)] for t in range(T)]

        async def bp_source():
            for t in case.bp_steps():
                g = fp16.bits(case.grad_out[t]).tolist() + [0] * (chunks * P - N)
                for c in range(chunks):
                    value = pack_lanes(g[c * P:(c + 1) * P])
                    await self._put("bp_i", value | int(c == chunks - 1) << 16 * P)

        async def bp_sink():
            for t in case.bp_steps():
                for beat in range(in_chunks):
                    word = await self._get("bp_o")
                    got["grad_in"][t] += unpack_lanes(word, P)
                    assert bool(word >> 16 * P & 1) == (beat == in_chunks - 1)

        sink = cocotb.start_soon(bp_sink()) if bp_input_error else None
        await bp_source()
        if sink:
            await sink
        await self.wait_status(Status.BP_DONE)
        got["counters"] = await self.counters()
        if readback:
            got["dw"] = [[await self.read(self.weight_address(Region.GRAD, n, i))
                          for i in range(F)] for n in range(N)]
        if not update:
            return got
        await self.update()
        got["update_cycles"] = (await self.counters())["update_busy"]
        if readback:
            got["weights"] = [[await self.read(self.weight_address(Region.WEIGHT, n, i))
                               for i in range(F)] for n in range(N)]
            got["errors"] = await self.read(address(Region.REG, Reg.ERRORS))
        return got
