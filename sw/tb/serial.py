# SPDX-License-Identifier: Apache-2.0
"""A serial line in Amaranth's simulator: 8N1 frames as levels per clock cycle, at a bit time
that need not be a whole number of cycles (a far end whose clock is off), driven onto a
signal, and read back as a receiver with its own bit time would; and the SoC behind a board's
UART (:class:`UARTSoC`)."""

import math

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UARTSoC", "drive_line", "frame_bits", "line_levels", "line_segments", "read_line"]


def frame_bits(byte: int, stop: int = 1) -> list[int]:
    """The ten bits of an 8N1 frame of ``byte``: start, LSB first, stop."""
    return [0, *((byte >> k) & 1 for k in range(8)), stop]


def line_segments(frames, bit_time: float, gaps) -> list[tuple[int, float]]:
    """(level, duration in cycles) of ``frames`` (bit lists) each followed by its gap (in
    bits), with idle line before and after."""
    segments = [(1, 2 * bit_time)]
    for bits, gap in zip(frames, gaps, strict=True):
        segments += [(bit, bit_time) for bit in bits]
        segments.append((1, gap * bit_time))
    return [*segments, (1, 3 * bit_time)]


def line_levels(segments) -> list[int]:
    """Per clock cycle, the level of a line whose ``segments`` start at fractional times."""
    edges, t = [], 0.0
    for level, duration in segments:
        edges.append((t, level))
        t += duration
    out, j, level = [], 0, 1
    for c in range(math.ceil(t)):
        while j < len(edges) and edges[j][0] <= c:
            level = edges[j][1]
            j += 1
        out.append(level)
    return out


async def drive_line(ctx, line, wave) -> None:
    """Set ``line`` to ``wave``'s level in each cycle."""
    c = 0
    while c < len(wave):
        run = 1
        while c + run < len(wave) and wave[c + run] == wave[c]:
            run += 1
        ctx.set(line, wave[c])
        await ctx.tick().repeat(run)
        c += run


def read_line(wave, bit_time: float) -> list[int]:
    """The bytes a receiver with bits of ``bit_time`` cycles reads from ``wave``, sampling each
    bit in its middle after a start bit's falling edge; a frame whose stop bit is 0 is
    dropped."""
    got, c = [], 1
    while c < len(wave):
        if wave[c - 1] == 1 and wave[c] == 0:
            bits = [wave[min(c + math.floor((k + 0.5) * bit_time), len(wave) - 1)]
                    for k in range(10)]
            if bits[9]:
                got.append(sum(b << k for k, b in enumerate(bits[1:9])))
            c += math.floor(9.5 * bit_time)
        else:
            c += 1
    return got


class UARTSoC(wiring.Component):
    """The SoC of ``config`` behind a :class:`~spikeforge.hw.uart.UARTRx` and
    :class:`~spikeforge.hw.uart.UARTTx` at ``divisor``, as a board has it.

    Members
    -------
    rx : In(1)
        The line from the host.
    tx : Out(1)
        The line to the host.

    ``soc``, ``uart_rx`` and ``uart_tx`` are the parts, for probes.
    """

    def __init__(self, config, divisor: int):
        from spikeforge.hw.soc import SoC
        from spikeforge.hw.uart import UARTRx, UARTTx

        self.soc = SoC(config)
        self.uart_rx, self.uart_tx = UARTRx(divisor), UARTTx(divisor)
        super().__init__({"rx": In(1, init=1), "tx": Out(1, init=1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.soc, m.submodules.rx, m.submodules.tx = self.soc, self.uart_rx, self.uart_tx
        wiring.connect(m, self.uart_rx.o, self.soc.rx)
        wiring.connect(m, self.soc.tx, self.uart_tx.i)
        m.d.comb += [self.uart_rx.rx.eq(self.rx), self.tx.eq(self.uart_tx.tx)]
        return m
