# SPDX-License-Identifier: Apache-2.0
"""A Q-K attention block between two token-wise cores: the Q-K unit with the streams of a core.

In QKFormer's attention block, ``Q`` and ``K`` are two token-wise linear + LIF layers of the
same input; on the device they are one core of ``2·D`` neurons holding ``[Wq; Wk]`` with
``Reg.TOKENS`` = ``N`` (neurons ``0 .. D-1`` are ``Q``'s channels, ``D .. 2D-1`` ``K``'s).
The projection after the attention is another token-wise core. This block sits between them
on the cores' own streams and runs a :class:`~spikeforge.hw.qk.QKAttention` unit:

``fp_i`` — the ``[Q; K]`` core's output events (:func:`~spikeforge.hw.core.event_layout`), one
    step per token, ``N`` steps a timestep;
``fp_o`` — ``X′`` as events, one step per token, for the projection core;
``bp_i`` — the projection core's input errors ``δX′``: per step ``D/P`` beats of ``P``
    binary16 errors, timesteps from the last and, within one, tokens from the first (the order
    of a token-wise core's back-propagation);
``bp_o`` — ``[δQ; δK]`` for the ``[Q; K]`` core in the same order: per token ``D/P`` beats of
    ``δQ``, then ``D/P`` of ``δK``, ``last`` on the step's final beat.

The unit wants a timestep's ``Q`` and ``K`` by kept-axis rows and its ``δX′`` by summed-axis
rows (:mod:`spikeforge.hw.qk`), so the block holds a timestep: the spikes of ``Q``, ``K`` and
``X′`` in bit matrices, ``δX′``, ``δK`` and ``δQ`` in skewed memories
(:class:`~spikeforge.hw.skewmem.SkewedMemory`) read by rows or by columns as the attention kind
needs. Each timestep runs in phases — forward: collect the events, feed the unit, emit ``X′``;
backward: collect ``δX′``, feed the unit while taking ``δK`` and ``δQ``, send ``[δQ; δK]`` —
so the block moves data and computes nothing: the results are the unit's bits. A sample run
forward only (inference) has no backward pass: the next sample's first event, arriving before
any ``δX′``, starts that sample; until then the block is not busy (its registers may be
written).

The active channel count ``c_channels`` must be a multiple of ``P`` (then ``δQ`` and ``δK`` fill
whole beats of the stacked core's error stream).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.golden.surrogate import Surrogate

from .core import error_layout, event_layout
from .lanes import lowest_set
from .qk import Attention, QKAttention
from .skewmem import SkewedMemory

__all__ = ["AttentionBlock"]

_CONFIG = ("c_kind", "c_tokens", "c_channels", "c_timesteps", "c_v_th", "c_v_reset", "c_inv_tau",
           "c_decay")    # the unit's configuration, passed through


class AttentionBlock(wiring.Component):
    """Q-K attention of up to ``tokens × channels`` spikes a timestep on token-wise streams.

    Parameters
    ----------
    lanes, tokens, timesteps, reset, detach_reset, surrogate :
        As for :class:`~spikeforge.hw.qk.QKAttention`.
    channels : int
        Maximum ``D``, a multiple of ``lanes``.

    Members
    -------
    fp_i, fp_o, bp_i, bp_o : streams
        See the module.
    c_kind, c_tokens, c_channels, c_timesteps, c_v_th, c_v_reset, c_inv_tau, c_decay : In
        The unit's configuration (:class:`~spikeforge.hw.qk.QKAttention`); ``c_timesteps``
        counts timesteps, not token steps.
    busy : Out(1)
    waiting : Out(1)
        Busy, but only waiting for the next input event or error beat.
    error : Out(1)
        An input event out of range, or the unit's error; cleared by the next sample.
    """

    def __init__(self, *, lanes: int, tokens: int, channels: int, timesteps: int,
                 reset: str = "hard", detach_reset: bool = True,
                 surrogate: Surrogate | None = None):
        self._unit = QKAttention(lanes=lanes, tokens=tokens, channels=channels,
                                 timesteps=timesteps, reset=reset, detach_reset=detach_reset,
                                 surrogate=surrogate)    # checks the parameters
        if channels % lanes:
            raise ValueError(f"Attention block channels must be a multiple of the lane count "
                             f"{lanes}, not {channels!r}")
        self._lanes, self._tokens, self._channels = lanes, tokens, channels
        self._timesteps = timesteps
        super().__init__({
            "fp_i": In(stream.Signature(event_layout(2 * channels))),
            "fp_o": Out(stream.Signature(event_layout(channels))),
            "bp_i": In(stream.Signature(error_layout(lanes))),
            "bp_o": Out(stream.Signature(error_layout(lanes))),
            **{name: self._unit.signature.members[name] for name in _CONFIG},
            "busy": Out(1),
            "waiting": Out(1),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes)
    tokens = property(lambda self: self._tokens)
    channels = property(lambda self: self._channels)
    timesteps = property(lambda self: self._timesteps)

    def elaborate(self, platform):
        m = Module()
        P = self._lanes
        lb = P.bit_length() - 1
        NP = -(-self._tokens // P) * P          # padded token and channel counts
        DP = self._channels
        M = max(NP, DP)
        m.submodules.unit = unit = self._unit
        for name in _CONFIG:
            m.d.comb += getattr(unit, name).eq(getattr(self, name))
        token_kind = self.c_kind == Attention.TOKEN
        N, D = self.c_tokens, self.c_channels
        n_groups = (N + P - 1) >> lb            # ⌈N/P⌉
        d_chunks = D >> lb                      # D/P
        rows = Mux(token_kind, N, D)            # the unit's kept axis
        row_chunks = Mux(token_kind, d_chunks, n_groups)
        cols = Mux(token_kind, D, N)            # its summed axis
        col_groups = Mux(token_kind, n_groups, d_chunks)

        q_bits = Signal(NP * DP)                # bit n·DP + d: token n, channel d
        k_bits = Signal(NP * DP)
        x_bits = Signal(NP * DP)

        def row_chunk(bits, i, c):
            """The unit's kept-axis row ``i``, chunk ``c`` of its summed axis."""
            by_token = bits.bit_select(i * DP + c * P, P)
            by_channel = Cat(*(bits.bit_select((c * P + k) * DP + i, 1) for k in range(P)))
            return Mux(token_kind, by_token, by_channel)

        t = Signal(range(self._timesteps + 1))  # the timestep
        r = Signal(range(self._tokens + 1))     # the token of fp_i / fp_o / bp_i / bp_o
        i = Signal(range(M + 1))                # the unit's row
        c = Signal(range(M + 1))                # its chunk
        xi = Signal(range(M + 1))
        xc = Signal(range(M + 1))
        ser_mask = Signal(P)
        error = Signal()
        whole = (D[:lb] == 0) if lb else 1     # D a multiple of P
        m.d.comb += self.error.eq(error | unit.error | ~whole)

        # ---- backward memories: δX′ (row: token, column: channel), δK and δQ (row: the
        # unit's summed-axis row, column: its lane groups) ----
        m.submodules.dx_mem = dx_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)
        m.submodules.dk_mem = dk_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)
        m.submodules.dq_mem = dq_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)
        m.submodules.feed = feed = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        m.submodules.send = send = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        inflight = Signal(range(4))
        rd_issue = Signal()
        rd_last = Signal()
        m.d.sync += inflight.eq(inflight + rd_issue - (feed.w_en | send.w_en))
        rd_issue_d = Signal()
        rd_last_d = Signal()
        m.d.sync += [rd_issue_d.eq(rd_issue), rd_last_d.eq(rd_last)]
        dk_j = Signal(range(M + 1))
        dk_g = Signal(range(M + 1))
        dq_j = Signal(range(M + 1))
        dq_g = Signal(range(M + 1))
        dk_all = Signal()
        dq_all = Signal()
        half = Signal()                         # bp_o: 0 while δQ, 1 while δK
        send_from_k = Signal()

        # a sample's first event clears the error flag (before anything below may set it)
        fresh = Signal(init=1)                  # no event of this sample taken yet
        pending = Signal()                      # forward done, no δX′ taken yet
        with m.If(self.fp_i.valid & self.fp_i.ready & fresh):
            m.d.sync += [error.eq(0), fresh.eq(0)]
        lowest = lowest_set(m, ser_mask, "lowest")

        with m.FSM(name="attention") as fsm:
            with m.State("COLLECT"):
                m.d.comb += self.fp_i.ready.eq(1)
                with m.If(self.fp_i.valid):
                    ev = self.fp_i.payload
                    with m.If(ev.spike):
                        with m.If(ev.index < D):
                            m.d.sync += q_bits.bit_select(r * DP + ev.index, 1).eq(1)
                        with m.Elif(ev.index < 2 * D):
                            k_index = Signal(range(DP))
                            m.d.comb += k_index.eq(ev.index - D)
                            m.d.sync += k_bits.bit_select(r * DP + k_index, 1).eq(1)
                        with m.Else():
                            m.d.sync += error.eq(1)
                    with m.If(ev.last):
                        m.d.sync += r.eq(r + 1)
                        with m.If(r + 1 == N):
                            m.d.sync += [r.eq(0), i.eq(0), c.eq(0), xi.eq(0), xc.eq(0)]
                            m.next = "FEED"

            with m.State("FEED"):
                with m.If(i != rows):
                    m.d.comb += [
                        unit.fp_i.valid.eq(1),
                        unit.fp_i.payload.q.eq(row_chunk(q_bits, i, c)),
                        unit.fp_i.payload.k.eq(row_chunk(k_bits, i, c)),
                        unit.fp_i.payload.last.eq((i + 1 == rows) & (c + 1 == row_chunks)),
                    ]
                    with m.If(unit.fp_i.ready):
                        m.d.sync += c.eq(c + 1)
                        with m.If(c + 1 == row_chunks):
                            m.d.sync += [c.eq(0), i.eq(i + 1)]
                with m.If(xi == rows):
                    m.d.sync += [q_bits.eq(0), k_bits.eq(0), r.eq(0), c.eq(0)]
                    m.next = "EMIT_LOAD"

            with m.State("EMIT_LOAD"):
                m.d.sync += ser_mask.eq(x_bits.bit_select(r * DP + c * P, P))
                m.next = "EMIT"

            with m.State("EMIT"):
                with m.If(ser_mask != 0):
                    m.d.comb += [self.fp_o.valid.eq(1), self.fp_o.payload.spike.eq(1),
                                 self.fp_o.payload.index.eq(c * P + lowest)]
                    with m.If(self.fp_o.ready):
                        m.d.sync += ser_mask.eq(ser_mask & (ser_mask - 1))
                with m.Elif(c + 1 == d_chunks):
                    m.d.comb += [self.fp_o.valid.eq(1), self.fp_o.payload.last.eq(1)]
                    with m.If(self.fp_o.ready):
                        m.d.sync += [c.eq(0), r.eq(r + 1)]
                        with m.If(r + 1 == N):
                            m.d.sync += [r.eq(0), t.eq(t + 1), x_bits.eq(0)]
                            with m.If(t + 1 == self.c_timesteps):
                                m.d.sync += pending.eq(1)
                                m.next = "BP_RECV"
                            with m.Else():
                                m.next = "COLLECT"
                        with m.Else():
                            m.next = "EMIT_LOAD"
                with m.Else():
                    m.d.sync += c.eq(c + 1)
                    m.next = "EMIT_LOAD"

            with m.State("BP_RECV"):
                m.d.comb += self.bp_i.ready.eq(1)
                with m.If(~self.bp_i.valid & self.fp_i.valid & pending):
                    # the next sample's first event before any δX′ of this one: it ran forward
                    # only (inference), so its backward pass is skipped
                    m.d.sync += [t.eq(0), r.eq(0), c.eq(0), fresh.eq(1), pending.eq(0)]
                    m.next = "COLLECT"
                with m.If(self.bp_i.valid):
                    m.d.sync += pending.eq(0)
                    m.d.comb += [dx_mem.wr_en.eq(1), dx_mem.wr_major.eq(r),
                                 dx_mem.wr_minor.eq(c), dx_mem.wr_data.eq(
                                     self.bp_i.payload.value), dx_mem.wr_mask.eq(-1)]
                    m.d.sync += c.eq(c + 1)
                    with m.If(c + 1 == d_chunks):
                        m.d.sync += [c.eq(0), r.eq(r + 1)]
                        with m.If(r + 1 == N):
                            m.d.sync += [r.eq(0), i.eq(0), c.eq(0), dk_j.eq(0), dk_g.eq(0),
                                         dq_j.eq(0), dq_g.eq(0), dk_all.eq(0), dq_all.eq(0)]
                            m.next = "BP_FEED"

            with m.State("BP_FEED"):
                # i: the unit's summed-axis row j, c: its lane group
                with m.If((i != cols) & (feed.level + inflight < 3)):
                    m.d.comb += [rd_issue.eq(1), rd_last.eq((i + 1 == cols)
                                                            & (c + 1 == col_groups)),
                                 dx_mem.rd_en.eq(1), dx_mem.rd_col.eq(token_kind),
                                 dx_mem.rd_major.eq(i), dx_mem.rd_minor.eq(c)]
                    m.d.sync += c.eq(c + 1)
                    with m.If(c + 1 == col_groups):
                        m.d.sync += [c.eq(0), i.eq(i + 1)]
                with m.If((i == cols) & (inflight == 0) & (feed.level == 0) & dk_all & dq_all):
                    m.d.sync += [r.eq(0), c.eq(0), half.eq(0)]
                    m.next = "BP_SEND"

            with m.State("BP_SEND"):
                # r: the token, c: the chunk of its channels, half: δQ then δK
                with m.If((r != N) & (send.level + inflight < 3)):
                    m.d.comb += [rd_issue.eq(1), rd_last.eq(half & (c + 1 == d_chunks))]
                    for mem in (dq_mem, dk_mem):
                        m.d.comb += [mem.rd_en.eq(1), mem.rd_col.eq(token_kind),
                                     mem.rd_major.eq(r), mem.rd_minor.eq(c)]
                    m.d.sync += [c.eq(c + 1), send_from_k.eq(half)]
                    with m.If(c + 1 == d_chunks):
                        m.d.sync += [c.eq(0), half.eq(~half)]
                        with m.If(half):
                            m.d.sync += r.eq(r + 1)
                with m.If((r == N) & (inflight == 0) & (send.level == 0)):
                    m.d.sync += [r.eq(0), c.eq(0), t.eq(t - 1)]
                    with m.If(t == 1):
                        m.d.sync += [t.eq(0), fresh.eq(1)]
                        m.next = "COLLECT"
                    with m.Else():
                        m.next = "BP_RECV"

        # X′ from the unit into its bit matrix, by the unit's kept-axis rows
        m.d.comb += unit.fp_o.ready.eq(fsm.ongoing("FEED"))
        with m.If(unit.fp_o.valid & unit.fp_o.ready):
            beat = unit.fp_o.payload.x
            for k in range(P):
                by_token = xi * DP + xc * P + k
                by_channel = (xc * P + k) * DP + xi
                m.d.sync += x_bits.bit_select(Mux(token_kind, by_token, by_channel), 1).eq(beat[k])
            m.d.sync += xc.eq(xc + 1)
            with m.If(xc + 1 == row_chunks):
                m.d.sync += [xc.eq(0), xi.eq(xi + 1)]

        # δX′ read out to the unit; δK and δQ into their memories as they come
        m.d.comb += [
            feed.w_en.eq(rd_issue_d & fsm.ongoing("BP_FEED")),
            feed.w_data.eq(Cat(dx_mem.rd_data, rd_last_d)),
            unit.bp_i.valid.eq(feed.r_rdy),
            unit.bp_i.payload.value.eq(feed.r_data[:16 * P]),
            unit.bp_i.payload.last.eq(feed.r_data[16 * P]),
            feed.r_en.eq(unit.bp_i.ready),
        ]
        for stream_, mem, j, g, done in ((unit.dk_o, dk_mem, dk_j, dk_g, dk_all),
                                         (unit.dq_o, dq_mem, dq_j, dq_g, dq_all)):
            m.d.comb += stream_.ready.eq(fsm.ongoing("BP_FEED") & ~done)
            with m.If(stream_.valid & stream_.ready):
                m.d.comb += [mem.wr_en.eq(1), mem.wr_major.eq(j), mem.wr_minor.eq(g),
                             mem.wr_data.eq(stream_.payload.value), mem.wr_mask.eq(-1)]
                m.d.sync += g.eq(g + 1)
                with m.If(g + 1 == col_groups):
                    m.d.sync += [g.eq(0), j.eq(j + 1)]
                    with m.If(j + 1 == cols):
                        m.d.sync += done.eq(1)

        # [δQ; δK] out
        m.d.comb += [
            send.w_en.eq(rd_issue_d & fsm.ongoing("BP_SEND")),
            send.w_data.eq(Cat(Mux(send_from_k, dk_mem.rd_data, dq_mem.rd_data), rd_last_d)),
            self.bp_o.valid.eq(send.r_rdy),
            self.bp_o.payload.value.eq(send.r_data[:16 * P]),
            self.bp_o.payload.last.eq(send.r_data[16 * P]),
            send.r_en.eq(self.bp_o.ready),
        ]
        m.d.comb += [
            self.busy.eq(~(fsm.ongoing("COLLECT") | pending) | (r != 0) | unit.busy),
            self.waiting.eq((fsm.ongoing("COLLECT") & ~self.fp_i.valid & ~unit.busy)
                            | (fsm.ongoing("BP_RECV") & ~self.bp_i.valid)),
        ]
        return m
