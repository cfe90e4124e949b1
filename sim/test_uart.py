# SPDX-License-Identifier: Apache-2.0
"""cocotb testbenches of the UART PHY under Verilator: a transmitter looped into a receiver.

``UART_BYTES`` (environment, default 1000) seeded random bytes go round the loop with random idle
cycles on the source and random backpressure on the sink; then the testbench takes over the
receiver's line and injects a frame with a bad stop bit, a glitch and a good frame.
"""

import os
import random

import cocotb
from amaranth.hdl import Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, RisingEdge
from harness import run

from spikeforge.hw.uart import COUNTER_WIDTH, UARTRx, UARTTx

DIVISOR = 8
SEED = 0x0A27


class UARTLoop(wiring.Component):
    """:class:`UARTTx` into :class:`UARTRx`, or ``line`` into the receiver while ``line_sel``."""

    def __init__(self, divisor: int):
        self._divisor = divisor
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "tx": Out(1),
            "line_sel": In(1),
            "line": In(1, init=1),
            "framing_errors": Out(COUNTER_WIDTH),
            "overruns": Out(COUNTER_WIDTH),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_tx = uart_tx = UARTTx(self._divisor)
        m.submodules.uart_rx = uart_rx = UARTRx(self._divisor)
        wiring.connect(m, wiring.flipped(self.i), uart_tx.i)
        wiring.connect(m, uart_rx.o, wiring.flipped(self.o))
        m.d.comb += [
            self.tx.eq(uart_tx.tx),
            uart_rx.rx.eq(Mux(self.line_sel, self.line, uart_tx.tx)),
            self.framing_errors.eq(uart_rx.o_framing_errors),
            self.overruns.eq(uart_rx.o_overruns),
        ]
        return m


class TB:
    """Clock, reset, a byte source on ``i``, a byte sink on ``o`` and a driver of ``line``."""

    def __init__(self, dut, seed: int):
        self.dut = dut
        self.rng = random.Random(seed)
        self.divisor = int(os.environ["UART_DIVISOR"])
        cocotb.start_soon(Clock(dut.clk, 2, unit="ns").start())

    async def reset(self):
        d = self.dut
        d.rst.value = 1
        d.i__valid.value = 0
        d.o__ready.value = 0
        d.line_sel.value = 0
        d.line.value = 1
        await ClockCycles(d.clk, 2)
        d.rst.value = 0

    async def send(self, data: list[int], idle: float = 0.3):
        d, edge = self.dut, RisingEdge(self.dut.clk)
        for byte in data:
            if self.rng.random() < idle:
                await ClockCycles(d.clk, self.rng.randrange(1, 3 * self.divisor))
            d.i__payload.value = byte
            d.i__valid.value = 1
            await edge
            while not d.i__ready.value:
                await edge
            d.i__valid.value = 0

    async def receive(self, count: int, stall: float = 0.5, limit: int = 1 << 20) -> list[int]:
        d, edge = self.dut, RisingEdge(self.dut.clk)
        got = []
        for _ in range(limit):
            if len(got) == count:
                break
            ready = self.rng.random() >= stall
            d.o__ready.value = ready
            await edge
            if ready and d.o__valid.value:
                got.append(int(d.o__payload.value))
        assert len(got) == count, f"{len(got)} of {count} bytes in {limit} cycles"
        d.o__ready.value = 0
        return got

    async def drive_line(self, bits: list[int]):
        self.dut.line.value = 1
        for bit in bits:
            self.dut.line.value = bit
            await ClockCycles(self.dut.clk, self.divisor)
        self.dut.line.value = 1


def _frame(byte: int, stop: int = 1) -> list[int]:
    return [0, *((byte >> k) & 1 for k in range(8)), stop]


@cocotb.test()
async def uart_roundtrip(dut):
    tb = TB(dut, SEED)
    await tb.reset()
    data = [tb.rng.randrange(256) for _ in range(int(os.environ.get("UART_BYTES", 1000)))]
    source = cocotb.start_soon(tb.send(data))
    assert await tb.receive(len(data)) == data
    await source
    await ClockCycles(dut.clk, 12 * tb.divisor)
    assert not dut.o__valid.value
    assert int(dut.overruns.value) == 0
    assert int(dut.framing_errors.value) == 0


@cocotb.test()
async def uart_framing_error(dut):
    tb = TB(dut, SEED + 1)
    await tb.reset()
    dut.line_sel.value = 1
    await ClockCycles(dut.clk, 2 * tb.divisor)
    await tb.drive_line(_frame(0xA5, stop=0) + [1])
    dut.line.value = 0
    await RisingEdge(dut.clk)
    dut.line.value = 1
    await ClockCycles(dut.clk, 2 * tb.divisor)
    assert int(dut.framing_errors.value) == 1
    assert not dut.o__valid.value
    receiver = cocotb.start_soon(tb.receive(1, stall=0.0))
    await tb.drive_line(_frame(0x3C) + [1])
    assert await receiver == [0x3C]
    dut.line_sel.value = 0
    data = [tb.rng.randrange(256) for _ in range(8)]
    source = cocotb.start_soon(tb.send(data))
    assert await tb.receive(len(data)) == data
    await source
    assert int(dut.framing_errors.value) == 1
    assert int(dut.overruns.value) == 0


def test_uart():
    run(UARTLoop(DIVISOR), name="uart_loop", test_module="test_uart",
        testcases=["uart_roundtrip", "uart_framing_error"],
        extra_env={"UART_DIVISOR": str(DIVISOR)})
