# SPDX-License-Identifier: Apache-2.0
"""The UART PHY of the host link: 8N1 serial, LSB first, to and from byte streams.

A frame is a start bit (0), eight data bits least significant first and a stop bit (1), each
``divisor`` clock cycles long; the idle line is high. :class:`UARTTx` sends the bytes of its
``i`` stream on ``tx``; :class:`UARTRx` receives from ``rx`` into its ``o`` stream.

There is no oversampling: the receiver counts clock cycles from a start bit's falling edge and
samples each bit once, in its middle (:func:`rx_tolerance`). :func:`baud_divisor` picks the
divisor of a rate at a clock and refuses one whose rate error, or whose divisor, is too large a
share of what the two ends of a link may differ by.

>>> baud_divisor(50, 3_000_000)
17
>>> round(rate_error(50, 3_000_000), 4)
-0.0196
>>> baud_divisor(48, 1_000_000)
48
"""

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.cdc import FFSynchronizer
from amaranth.lib.wiring import In, Out

from spikeforge.errors import ConfigError

__all__ = ["MAX_RATE_ERROR", "MIN_DIVISOR", "TX_LATENCY", "UARTRx", "UARTTx", "baud_divisor",
           "rate_error", "rx_latency", "rx_tolerance"]

COUNTER_WIDTH = 16
TX_LATENCY = 1       # UARTTx: from a transfer on ``i`` to the start bit
# A build's rate may differ from the nominal by this much: the link's two ends together may
# differ by some 4 % (rx_tolerance), and the far end's adapter takes its own share.
MAX_RATE_ERROR = 0.02
# From 8 cycles a bit on, the receiver takes a sender 3.75 % fast (and 5.5 % slow); at 4 only
# 2.5 % fast, which a 2 % rate error would all but use up.
MIN_DIVISOR = 8
STANDARD_RATES = (3_000_000, 2_000_000, 1_500_000, 1_000_000, 921_600, 500_000, 460_800,
                  230_400, 115_200, 57_600, 38_400, 19_200, 9600)


def rx_tolerance(divisor: int) -> tuple[float, float]:
    """How much shorter and how much longer than ``divisor`` cycles a sender's bit may be, as
    fractions, for :class:`UARTRx` to sample all ten bits of a frame inside their bits.

    The receiver sees a start bit's edge up to one cycle late and samples bit ``k`` at
    ``divisor // 2 + k · divisor`` cycles after it; the stop bit (``k = 9``) is the first to
    slip out of its bit.

    >>> [round(t, 4) for t in rx_tolerance(16)]
    [0.0437, 0.0556]
    """
    d = _check_divisor(divisor)
    return (d - d // 2 - 1) / (10 * d), (d // 2) / (9 * d)


def rx_latency(divisor: int) -> int:
    """:attr:`UARTRx.latency` of a receiver at ``divisor``: 2 cycles to synchronise,
    ``divisor // 2 + 9 · divisor`` to the middle of the stop bit, 1 to register the byte."""
    d = _check_divisor(divisor)
    return 2 + d // 2 + 9 * d + 1


def rate_error(mhz: float, baud: int) -> float:
    """The relative error of the rate the UART makes at ``mhz`` for ``baud`` (negative: slow)."""
    divisor = max(round(mhz * 1e6 / baud), 1)
    return (mhz * 1e6 / divisor - baud) / baud


def baud_divisor(mhz: float, baud: int) -> int:
    """The clock cycles a bit of ``baud`` at ``mhz``; :class:`ConfigError` (naming a rate that
    works at this clock, and a clock that makes this rate exactly) if the divisor is below
    :data:`MIN_DIVISOR` or the rate misses ``baud`` by more than :data:`MAX_RATE_ERROR`."""
    if isinstance(baud, bool) or not isinstance(baud, int) or baud <= 0:
        raise ConfigError(f"the baud rate must be a positive integer, not {baud!r}")
    clock = mhz * 1e6
    divisor = round(clock / baud)
    error = rate_error(mhz, baud)
    if divisor >= MIN_DIVISOR and abs(error) <= MAX_RATE_ERROR:
        return divisor
    workable = [r for r in STANDARD_RATES
                if round(clock / r) >= MIN_DIVISOR and abs(rate_error(mhz, r)) <= MAX_RATE_ERROR]
    below = [r for r in workable if r < baud]
    rate = (below or workable)[0] if workable else f"{int(clock // MIN_DIVISOR)} or less"
    exact = max(round(clock / baud), MIN_DIVISOR) * baud / 1e6
    why = (f"{clock / baud:.1f} clock cycles a bit, fewer than the {MIN_DIVISOR} the receiver "
           f"needs" if divisor < MIN_DIVISOR else
           f"the nearest divisor, {divisor}, makes {clock / divisor:,.0f} baud, "
           f"{abs(error):.2%} off, more than {MAX_RATE_ERROR:.0%}")
    raise ConfigError(f"{baud:,} baud at {mhz:g} MHz: {why}; build with --baud {rate} "
                      f"or at --mhz {exact:g}")


def _check_divisor(divisor) -> int:
    if isinstance(divisor, bool) or not isinstance(divisor, int) or divisor < 4:
        raise ValueError(f"UART divisor must be an integer of at least 4 clock cycles per bit "
                         f"(the receiver samples in the middle of a bit), not {divisor!r}")
    return divisor


class UARTTx(wiring.Component):
    """8N1 UART transmitter.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes to send. ``i.ready`` is high while the transmitter is idle and in the last cycle
        of a stop bit, and does not depend on ``i.valid``.
    tx : Out(1)
        Serial output; high when idle (also out of reset).

    The start bit of a byte begins ``latency`` (1) cycle after its transfer on ``i``, and each
    bit lasts exactly ``divisor`` cycles. Back-to-back bytes follow each other without idle
    time: the throughput is one byte per ``10 · divisor`` cycles.
    """

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__({
            "i": In(stream.Signature(8)),
            "tx": Out(1, init=1),
        })

    @property
    def divisor(self) -> int:
        return self._divisor

    @property
    def latency(self) -> int:
        """Cycles from a transfer on ``i`` to the start bit on ``tx``."""
        return TX_LATENCY

    def elaborate(self, platform):
        m = Module()
        shift = Signal(9)
        bits_left = Signal(range(10))
        count = Signal(range(self._divisor))

        m.d.comb += self.i.ready.eq((bits_left == 0) & (count == 0))
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [
                self.tx.eq(0),
                shift.eq(Cat(self.i.payload, 1)),
                bits_left.eq(9),
                count.eq(self._divisor - 1),
            ]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.Elif(bits_left != 0):
            m.d.sync += [
                self.tx.eq(shift[0]),
                shift.eq(shift >> 1),
                bits_left.eq(bits_left - 1),
                count.eq(self._divisor - 1),
            ]
        return m


class UARTRx(wiring.Component):
    """8N1 UART receiver.

    Parameters
    ----------
    divisor : int
        Clock cycles per bit, at least 4. The sender's bit time may differ from it by a few
        percent: the middle of the stop bit is sampled ``divisor // 2 + 9 · divisor`` cycles
        (plus up to one) after the start bit's edge, which bounds the sender's bit time to
        −2.5 % … +5.5 % at a divisor of 4 and −4.4 % … +5.5 % at 16 (tested at ±2 %).

    Members
    -------
    rx : In(1)
        Serial input, asynchronous to the clock: it passes a 2-flop synchroniser.
    o : Out(stream.Signature(8))
        Bytes received. A byte is offered ``latency`` cycles after the falling edge of its
        start bit on ``rx``, and held until taken.
    o_framing_errors : Out(16)
        Count of frames whose stop bit was 0 (saturating). Such a byte is dropped.
    o_overruns : Out(16)
        Count of bytes dropped because the previous byte was still not taken (saturating).

    Backpressure: there is none on the wire. A received byte waits in a one-byte register for
    the sink, which thus has one frame time (about ``10 · divisor`` cycles) to take it; a byte
    that completes while the register is still full is dropped and counted in ``o_overruns``.
    A sink that can stall longer puts a FIFO behind ``o``.

    Reception starts on a high-to-low edge of the synchronised line and samples each bit in
    its middle, ``divisor // 2`` cycles after the edge and every ``divisor`` cycles from there.
    A start bit that is high in its middle is a glitch: it is ignored, and not counted. After
    a frame, the receiver waits for the next high-to-low edge, so a line held low (a break)
    counts as one framing error.
    """

    def __init__(self, divisor: int):
        self._divisor = _check_divisor(divisor)
        super().__init__({
            "rx": In(1, init=1),
            "o": Out(stream.Signature(8)),
            "o_framing_errors": Out(COUNTER_WIDTH),
            "o_overruns": Out(COUNTER_WIDTH),
        })

    @property
    def divisor(self) -> int:
        return self._divisor

    @property
    def latency(self) -> int:
        """Cycles from the start bit's falling edge on ``rx`` to ``o.valid``
        (:func:`rx_latency`)."""
        return rx_latency(self._divisor)

    def elaborate(self, platform):
        m = Module()
        d = self._divisor
        line = Signal(init=1)
        m.submodules.sync = FFSynchronizer(self.rx, line, init=1)
        previous = Signal(init=1)
        m.d.sync += previous.eq(line)

        busy = Signal()
        bit = Signal(range(10))
        count = Signal(range(d))
        shift = Signal(8)

        with m.If(self.o.valid & self.o.ready):
            m.d.sync += self.o.valid.eq(0)

        with m.If(~busy):
            with m.If(previous & ~line):
                m.d.sync += [busy.eq(1), bit.eq(0), count.eq(d // 2 - 1)]
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        with m.Else():
            m.d.sync += [bit.eq(bit + 1), count.eq(d - 1)]
            with m.If(bit == 0):
                with m.If(line):
                    m.d.sync += busy.eq(0)
            with m.Elif(bit != 9):
                m.d.sync += shift.eq(Cat(shift[1:], line))
            with m.Else():
                m.d.sync += busy.eq(0)
                with m.If(~line):
                    with m.If(~self.o_framing_errors.all()):
                        m.d.sync += self.o_framing_errors.eq(self.o_framing_errors + 1)
                with m.Elif(self.o.valid & ~self.o.ready):
                    with m.If(~self.o_overruns.all()):
                        m.d.sync += self.o_overruns.eq(self.o_overruns + 1)
                with m.Else():
                    m.d.sync += [self.o.payload.eq(shift), self.o.valid.eq(1)]
        return m
