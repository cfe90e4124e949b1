# SPDX-License-Identifier: Apache-2.0
"""The blocks of the attention block :class:`~spikeforge.hw.attention.AttentionBlock`.

Names as in :mod:`spikeforge.hw.attention`: ``P`` lanes, ``N`` tokens and ``D`` channels
(``NP`` and ``DP`` their padded maxima, ``M = max(NP, DP)``), the unit's kept axis (``rows`` of
``row_chunks`` beats) and summed axis (``cols`` of ``col_groups`` beats). Each block works in
one phase of a timestep while its ``enable`` is high; a ``start`` pulse readies it for that
phase. The spike matrices hold bit ``n·DP + d`` for token ``n``, channel ``d``.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .core import error_layout, event_layout
from .lanes import LowestSet
from .qk_parts import StreamFIFO, spike_layout, spike_pair_layout

__all__ = ["BitsToEvents", "BlockPhases", "ColumnFeeder", "EventsToBits",
           "ReadBuffer", "RowFeeder", "RowsToMemory", "TokenRowsIn", "TokenRowsOut",
           "skewed_read_signature", "skewed_write_signature", "x_write_signature"]


def skewed_write_signature(lanes: int, major: int, minor: int) -> wiring.Signature:
    """The write port of a :class:`~spikeforge.hw.skewmem.SkewedMemory` (``wr_*``)."""
    return wiring.Signature({"en": Out(1), "major": Out(range(major)), "minor": Out(range(minor)),
                             "data": Out(16 * lanes), "mask": Out(lanes)})


def skewed_read_signature(major: int, minor: int) -> wiring.Signature:
    """The read request of a :class:`~spikeforge.hw.skewmem.SkewedMemory` (``rd_*``)."""
    return wiring.Signature({"en": Out(1), "col": Out(1), "major": Out(range(major)),
                             "minor": Out(range(minor))})


def x_write_signature(lanes: int, longest: int) -> wiring.Signature:
    """A beat of ``X′`` (row ``i``, chunk ``c`` of the unit) into :class:`BitsToEvents`."""
    return wiring.Signature({"en": Out(1), "i": Out(range(longest + 1)),
                             "c": Out(range(longest + 1)), "x": Out(lanes)})


class EventsToBits(wiring.Component):
    """A timestep's ``Q`` and ``K`` spike events into bit matrices, read by the unit's rows.

    Members
    -------
    i : In(stream.Signature(event_layout(2·channels)))
        The ``[Q; K]`` core's events, one step (``last``) per token; ready while ``enable``.
    enable : In(1)
    tokens, channels : In
        ``N`` and ``D``: event ``d < D`` is ``Q``'s channel ``d``, ``D ≤ d < 2D`` ``K``'s
        channel ``d - D``.
    token_kind : In(1), rd_i, rd_c : In, rd_q, rd_k : Out(P)
        Row ``rd_i``, chunk ``rd_c`` of the unit's kept axis (tokens for token attention,
        channels otherwise); combinational.
    clear : In(1)
        Clear both matrices.
    done : Out(1)
        The timestep's last event is taken.
    error : Out(1)
        A spike event out of range is taken.
    busy : Out(1)
        Part of a timestep is in.
    """

    def __init__(self, *, lanes: int, tokens: int, channels: int, padded: tuple):
        self._lanes, self._tokens, self._channels = lanes, tokens, channels
        self._padded = padded
        M = max(padded)
        super().__init__({
            "i": In(stream.Signature(event_layout(2 * channels))),
            "enable": In(1),
            "tokens": In(range(tokens + 1)), "channels": In(range(channels + 1)),
            "token_kind": In(1), "rd_i": In(range(M + 1)), "rd_c": In(range(M + 1)),
            "rd_q": Out(lanes), "rd_k": Out(lanes),
            "clear": In(1), "done": Out(1), "error": Out(1), "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, (NP, DP) = self._lanes, self._padded
        N, D = self.tokens, self.channels
        q_bits = Signal(NP * DP)
        k_bits = Signal(NP * DP)
        r = Signal(range(self._tokens + 1))
        m.d.comb += [self.i.ready.eq(self.enable), self.busy.eq(r != 0)]
        with m.If(self.enable & self.i.valid):
            ev = self.i.payload
            with m.If(ev.spike):
                with m.If(ev.index < D):
                    m.d.sync += q_bits.bit_select(r * DP + ev.index, 1).eq(1)
                with m.Elif(ev.index < 2 * D):
                    k_index = Signal(range(DP))
                    m.d.comb += k_index.eq(ev.index - D)
                    m.d.sync += k_bits.bit_select(r * DP + k_index, 1).eq(1)
                with m.Else():
                    m.d.comb += self.error.eq(1)
            with m.If(ev.last):
                m.d.sync += r.eq(r + 1)
                with m.If(r + 1 == N):
                    m.d.sync += r.eq(0)
                    m.d.comb += self.done.eq(1)
        with m.If(self.clear):
            m.d.sync += [q_bits.eq(0), k_bits.eq(0)]

        def row_chunk(bits, i, c):
            by_token = bits.bit_select(i * DP + c * P, P)
            by_channel = Cat(*(bits.bit_select((c * P + k) * DP + i, 1) for k in range(P)))
            return Mux(self.token_kind, by_token, by_channel)

        m.d.comb += [self.rd_q.eq(row_chunk(q_bits, self.rd_i, self.rd_c)),
                     self.rd_k.eq(row_chunk(k_bits, self.rd_i, self.rd_c))]
        return m


class RowFeeder(wiring.Component):
    """The unit's forward pass of a timestep: its ``Q`` and ``K`` rows out, ``X′`` back.

    Members
    -------
    start, enable : In(1)
    rows, row_chunks : In
        The unit's kept axis and its beats a row.
    rd_i, rd_c : Out, q, k : In(P)
        The row chunk of :class:`EventsToBits`.
    o : Out(stream.Signature(spike_pair_layout(P)))
        To the unit's ``fp_i``, one beat a cycle while ``enable``.
    x : In(stream.Signature(spike_layout(P)))
        The unit's ``fp_o``, ready while ``enable``.
    x_w : Out(x_write_signature)
        Each ``X′`` beat taken, with its row and chunk, to :class:`BitsToEvents`.
    done : Out(1)
        All rows of ``X′`` are in.
    """

    def __init__(self, *, lanes: int, longest: int):
        self._lanes = lanes
        M = longest
        super().__init__({
            "start": In(1), "enable": In(1),
            "rows": In(range(M + 1)), "row_chunks": In(range(M + 1)),
            "rd_i": Out(range(M + 1)), "rd_c": Out(range(M + 1)),
            "q": In(lanes), "k": In(lanes),
            "o": Out(stream.Signature(spike_pair_layout(lanes))),
            "x": In(stream.Signature(spike_layout(lanes))),
            "x_w": Out(x_write_signature(lanes, longest)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        i, c, xi, xc = self.rd_i, self.rd_c, self.x_w.i, self.x_w.c
        rows, row_chunks = self.rows, self.row_chunks
        with m.If(self.start):
            m.d.sync += [i.eq(0), c.eq(0), xi.eq(0), xc.eq(0)]
        with m.If(self.enable & (i != rows)):
            m.d.comb += [
                self.o.valid.eq(1), self.o.payload.q.eq(self.q), self.o.payload.k.eq(self.k),
                self.o.payload.last.eq((i + 1 == rows) & (c + 1 == row_chunks)),
            ]
            with m.If(self.o.ready):
                m.d.sync += c.eq(c + 1)
                with m.If(c + 1 == row_chunks):
                    m.d.sync += [c.eq(0), i.eq(i + 1)]
        with m.If(self.enable & (xi == rows)):
            m.d.comb += self.done.eq(1)
            m.d.sync += c.eq(0)
        m.d.comb += [self.x.ready.eq(self.enable), self.x_w.x.eq(self.x.payload.x)]
        with m.If(self.x.valid & self.x.ready):
            m.d.comb += self.x_w.en.eq(1)
            m.d.sync += xc.eq(xc + 1)
            with m.If(xc + 1 == row_chunks):
                m.d.sync += [xc.eq(0), xi.eq(xi + 1)]
        return m


class BitsToEvents(wiring.Component):
    """``X′`` of a timestep as spike events, one step (``last``) per token.

    Members
    -------
    x_w : In(x_write_signature)
        ``X′`` beats by the unit's rows (tokens for token attention, channels otherwise).
    token_kind : In(1)
    start : In(1)
        Send the timestep (the matrix is complete).
    tokens, d_chunks : In
        ``N`` and ``D/P``.
    o : Out(stream.Signature(event_layout(channels)))
        One event a cycle for each spike of a token, lowest channel first, then its ``last``
        event; a chunk of ``P`` channels takes a cycle to load and one per event.
    done : Out(1)
        The last token's ``last`` event is taken; the matrix is cleared.
    """

    def __init__(self, *, lanes: int, tokens: int, channels: int, padded: tuple):
        self._lanes, self._tokens, self._padded = lanes, tokens, padded
        M = max(padded)
        super().__init__({
            "x_w": In(x_write_signature(lanes, M)),
            "token_kind": In(1), "start": In(1),
            "tokens": In(range(tokens + 1)), "d_chunks": In(range(M + 1)),
            "o": Out(stream.Signature(event_layout(channels))),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, (NP, DP) = self._lanes, self._padded
        x_bits = Signal(NP * DP)
        r = Signal(range(self._tokens + 1))
        c = Signal(range(max(self._padded) + 1))
        mask = Signal(P)
        m.submodules.lowest = lowest = LowestSet(P)
        m.d.comb += lowest.i.eq(mask)
        w = self.x_w
        with m.If(w.en):
            for k in range(P):
                by_token = w.i * DP + w.c * P + k
                by_channel = (w.c * P + k) * DP + w.i
                m.d.sync += x_bits.bit_select(Mux(self.token_kind, by_token, by_channel),
                                              1).eq(w.x[k])
        with m.FSM(name="emit"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += mask.eq(x_bits.bit_select(r * DP + c * P, P))
                m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(mask != 0):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.spike.eq(1),
                                 self.o.payload.index.eq(c * P + lowest.o)]
                    with m.If(self.o.ready):
                        m.d.sync += mask.eq(mask & (mask - 1))
                with m.Elif(c + 1 == self.d_chunks):
                    m.d.comb += [self.o.valid.eq(1), self.o.payload.last.eq(1)]
                    with m.If(self.o.ready):
                        m.d.sync += [c.eq(0), r.eq(r + 1)]
                        with m.If(r + 1 == self.tokens):
                            m.d.sync += [r.eq(0), x_bits.eq(0)]
                            m.d.comb += self.done.eq(1)
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "LOAD"
                with m.Else():
                    m.d.sync += c.eq(c + 1)
                    m.next = "LOAD"
        return m


class TokenRowsIn(wiring.Component):
    """A timestep's ``δX′`` (``D/P`` beats a token) into a skewed memory by token rows.

    Members
    -------
    i : In(stream.Signature(error_layout(P)))
        Ready while ``enable``.
    enable : In(1)
    tokens, d_chunks : In
    wr : Out(skewed_write_signature)
    done : Out(1)
        The timestep's last beat is taken.
    """

    def __init__(self, *, lanes: int, tokens: int, longest: int):
        self._tokens = tokens
        M = longest
        super().__init__({
            "i": In(stream.Signature(error_layout(lanes))),
            "enable": In(1),
            "tokens": In(range(tokens + 1)), "d_chunks": In(range(M + 1)),
            "wr": Out(skewed_write_signature(lanes, M, M // lanes)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        r = Signal(range(self._tokens + 1))
        c = Signal.like(self.d_chunks)
        m.d.comb += self.i.ready.eq(self.enable)
        with m.If(self.enable & self.i.valid):
            m.d.comb += [self.wr.en.eq(1), self.wr.major.eq(r), self.wr.minor.eq(c),
                         self.wr.data.eq(self.i.payload.value), self.wr.mask.eq(-1)]
            m.d.sync += c.eq(c + 1)
            with m.If(c + 1 == self.d_chunks):
                m.d.sync += [c.eq(0), r.eq(r + 1)]
                with m.If(r + 1 == self.tokens):
                    m.d.sync += [r.eq(0), c.eq(0)]
                    m.d.comb += self.done.eq(1)
        return m


class ReadBuffer(wiring.Component):
    """Reads of a memory of one cycle latency, each into a FIFO of 4 as it comes back.

    Members
    -------
    want, last : In(1)
        A read is wanted; it is a pass's last beat.
    issue : Out(1)
        Issue the read now (``want``, with room in the FIFO for it and for those in flight).
    data : In(16·P)
        The read's data, a cycle after ``issue``.
    o : Out(stream.Signature(error_layout(P)))
    idle : Out(1)
        No read in flight and the FIFO empty.
    """

    def __init__(self, *, lanes: int):
        self._lanes = lanes
        super().__init__({
            "want": In(1), "last": In(1), "issue": Out(1), "data": In(16 * lanes),
            "o": Out(stream.Signature(error_layout(lanes))),
            "idle": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = StreamFIFO(error_layout(self._lanes), 4)
        wiring.connect(m, buf.o, wiring.flipped(self.o))
        inflight = Signal(range(4))
        issued = Signal()
        last = Signal()
        m.d.comb += self.issue.eq(self.want & (buf.level + inflight < 3))
        m.d.sync += [issued.eq(self.issue), last.eq(self.last & self.issue),
                     inflight.eq(inflight + self.issue - issued)]
        m.d.comb += [
            buf.i.valid.eq(issued), buf.i.payload.value.eq(self.data), buf.i.payload.last.eq(last),
            self.idle.eq((inflight == 0) & (buf.level == 0)),
        ]
        return m


class _Reader(wiring.Component):
    """A pass of reads from skewed memories into a stream (:class:`ReadBuffer`), for
    :class:`ColumnFeeder` and :class:`TokenRowsOut`."""

    def __init__(self, *, lanes: int, longest: int, members: dict):
        M = longest
        self._lanes = lanes
        super().__init__({
            "start": In(1), "enable": In(1), "token_kind": In(1),
            "rd": Out(skewed_read_signature(M, M // lanes)),
            "o": Out(stream.Signature(error_layout(lanes))),
            "done": Out(1),
            **members,
        })

    def _reads(self, m, major, minor):
        """The read buffer; ``rd`` driven from ``major`` and ``minor`` when it issues."""
        m.submodules.reads = reads = ReadBuffer(lanes=self._lanes)
        wiring.connect(m, reads.o, wiring.flipped(self.o))
        with m.If(reads.issue):
            m.d.comb += [self.rd.en.eq(1), self.rd.col.eq(self.token_kind),
                         self.rd.major.eq(major), self.rd.minor.eq(minor)]
        return reads


class ColumnFeeder(_Reader):
    """The unit's backward input: ``δX′`` read from the skewed memory by the unit's
    summed-axis rows (``cols`` rows of ``col_groups`` beats).

    Members
    -------
    start, enable : In(1)
    token_kind : In(1)
        Read by memory columns (token attention) or rows.
    cols, col_groups : In
    rd : Out(skewed_read_signature), rd_data : In(16·P)
    o : Out(stream.Signature(error_layout(P)))
        To the unit's ``bp_i``, through a FIFO of 4.
    done : Out(1)
        Every beat is out of the FIFO.
    """

    def __init__(self, *, lanes: int, longest: int):
        M = longest
        super().__init__(lanes=lanes, longest=longest, members={
            "cols": In(range(M + 1)), "col_groups": In(range(M + 1)), "rd_data": In(16 * lanes),
        })

    def elaborate(self, platform):
        m = Module()
        i = Signal.like(self.cols)
        c = Signal.like(self.col_groups)
        reads = self._reads(m, i, c)
        m.d.comb += [reads.want.eq(self.enable & (i != self.cols)),
                     reads.last.eq((i + 1 == self.cols) & (c + 1 == self.col_groups)),
                     reads.data.eq(self.rd_data)]
        with m.If(self.start):
            m.d.sync += [i.eq(0), c.eq(0)]
        with m.If(reads.issue):
            m.d.sync += c.eq(c + 1)
            with m.If(c + 1 == self.col_groups):
                m.d.sync += [c.eq(0), i.eq(i + 1)]
        m.d.comb += self.done.eq((i == self.cols) & reads.idle)
        return m


class RowsToMemory(wiring.Component):
    """A unit's output stream of ``cols`` rows of ``col_groups`` beats into a skewed memory.

    Members
    -------
    i : In(stream.Signature(error_layout(P)))
        Ready while ``enable``, until all rows are in.
    start, enable : In(1)
    cols, col_groups : In
    wr : Out(skewed_write_signature)
    done : Out(1)
        All rows are in.
    """

    def __init__(self, *, lanes: int, longest: int):
        M = longest
        super().__init__({
            "i": In(stream.Signature(error_layout(lanes))),
            "start": In(1), "enable": In(1),
            "cols": In(range(M + 1)), "col_groups": In(range(M + 1)),
            "wr": Out(skewed_write_signature(lanes, M, M // lanes)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        j = Signal.like(self.cols)
        g = Signal.like(self.col_groups)
        with m.If(self.start):
            m.d.sync += [j.eq(0), g.eq(0), self.done.eq(0)]
        m.d.comb += self.i.ready.eq(self.enable & ~self.done)
        with m.If(self.i.valid & self.i.ready):
            m.d.comb += [self.wr.en.eq(1), self.wr.major.eq(j), self.wr.minor.eq(g),
                         self.wr.data.eq(self.i.payload.value), self.wr.mask.eq(-1)]
            m.d.sync += g.eq(g + 1)
            with m.If(g + 1 == self.col_groups):
                m.d.sync += [g.eq(0), j.eq(j + 1)]
                with m.If(j + 1 == self.cols):
                    m.d.sync += self.done.eq(1)
        return m


class TokenRowsOut(_Reader):
    """``[δQ; δK]`` of a timestep by tokens: per token ``D/P`` beats of ``δQ``, then ``D/P`` of
    ``δK`` (``last`` on the token's final beat), read from two skewed memories alike.

    Members
    -------
    start, enable : In(1)
    token_kind : In(1)
        Read by memory columns (token attention) or rows.
    tokens, d_chunks : In
    rd : Out(skewed_read_signature)
        The read of both memories; ``dq_data`` and ``dk_data`` a cycle later.
    o : Out(stream.Signature(error_layout(P)))
        Through a FIFO of 4.
    done : Out(1)
        Every beat is out of the FIFO.
    """

    def __init__(self, *, lanes: int, tokens: int, longest: int):
        self._tokens = tokens
        super().__init__(lanes=lanes, longest=longest, members={
            "tokens": In(range(tokens + 1)), "d_chunks": In(range(longest + 1)),
            "dq_data": In(16 * lanes), "dk_data": In(16 * lanes),
        })

    def elaborate(self, platform):
        m = Module()
        r = Signal(range(self._tokens + 1))
        c = Signal.like(self.d_chunks)
        half = Signal()                         # 0 while δQ, 1 while δK
        from_k = Signal()
        reads = self._reads(m, r, c)
        m.d.comb += [reads.want.eq(self.enable & (r != self.tokens)),
                     reads.last.eq(half & (c + 1 == self.d_chunks)),
                     reads.data.eq(Mux(from_k, self.dk_data, self.dq_data))]
        with m.If(self.start):
            m.d.sync += [r.eq(0), c.eq(0), half.eq(0)]
        with m.If(reads.issue):
            m.d.sync += [c.eq(c + 1), from_k.eq(half)]
            with m.If(c + 1 == self.d_chunks):
                m.d.sync += [c.eq(0), half.eq(~half)]
                with m.If(half):
                    m.d.sync += r.eq(r + 1)
        m.d.comb += self.done.eq((r == self.tokens) & reads.idle)
        return m


class BlockPhases(wiring.Component):
    """The attention block's phases of a timestep and the sample's timesteps.

    Forward, for each timestep: COLLECT (events in, until ``collected``), FEED (through the
    unit, until ``fed``), EMIT (``X′`` out, until ``emitted``). After the last timestep,
    backward from the last: BP_RECV (``δX′`` in, until ``received``), BP_FEED (through the
    unit, until ``bp_fed``), BP_SEND (``[δQ; δK]`` out, until ``sent``). In BP_RECV before any
    ``δX′`` of the sample, a valid ``fp_i`` event with no valid ``bp_i`` beat starts the next
    sample (the sample ran forward only).

    Members
    -------
    timesteps : In
        ``T``.
    fp_valid, fp_take, bp_valid : In(1)
        ``fp_i`` valid and taken, ``bp_i`` valid.
    collected, fed, emitted, received, bp_fed, sent : In(1)
        A phase is over.
    flag : In(1)
        Sets ``error``, which the sample's first taken event clears.
    collect, feed, recv, bp_feed, bp_send : Out(1)
        The phase.
    pending : Out(1)
        The forward pass is done and no ``δX′`` is taken yet.
    error : Out(1)
    """

    def __init__(self, *, timesteps: int):
        self._timesteps = timesteps
        super().__init__({
            "timesteps": In(range(timesteps + 1)),
            "fp_valid": In(1), "fp_take": In(1), "bp_valid": In(1),
            "collected": In(1), "fed": In(1), "emitted": In(1), "received": In(1),
            "bp_fed": In(1), "sent": In(1), "flag": In(1),
            "collect": Out(1), "feed": Out(1), "recv": Out(1), "bp_feed": Out(1),
            "bp_send": Out(1), "pending": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        t = Signal(range(self._timesteps + 1))
        fresh = Signal(init=1)                  # no event of this sample taken yet
        with m.If(self.fp_take & fresh):
            m.d.sync += [self.error.eq(0), fresh.eq(0)]
        with m.FSM(name="attention"):
            with m.State("COLLECT"):
                m.d.comb += self.collect.eq(1)
                with m.If(self.collected):
                    m.next = "FEED"
            with m.State("FEED"):
                m.d.comb += self.feed.eq(1)
                with m.If(self.fed):
                    m.next = "EMIT"
            with m.State("EMIT"):
                with m.If(self.emitted):
                    m.d.sync += t.eq(t + 1)
                    with m.If(t + 1 == self.timesteps):
                        m.d.sync += self.pending.eq(1)
                        m.next = "BP_RECV"
                    with m.Else():
                        m.next = "COLLECT"
            with m.State("BP_RECV"):
                m.d.comb += self.recv.eq(1)
                with m.If(~self.bp_valid & self.fp_valid & self.pending):
                    m.d.sync += [t.eq(0), fresh.eq(1), self.pending.eq(0)]
                    m.next = "COLLECT"
                with m.If(self.bp_valid):
                    m.d.sync += self.pending.eq(0)
                with m.If(self.received):
                    m.next = "BP_FEED"
            with m.State("BP_FEED"):
                m.d.comb += self.bp_feed.eq(1)
                with m.If(self.bp_fed):
                    m.next = "BP_SEND"
            with m.State("BP_SEND"):
                m.d.comb += self.bp_send.eq(1)
                with m.If(self.sent):
                    m.d.sync += t.eq(t - 1)
                    with m.If(t == 1):
                        m.d.sync += [t.eq(0), fresh.eq(1)]
                        m.next = "COLLECT"
                    with m.Else():
                        m.next = "BP_RECV"
        with m.If(self.flag):
            m.d.sync += self.error.eq(1)
        return m
