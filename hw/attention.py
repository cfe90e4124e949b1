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

The phases are :class:`~spikeforge.hw.attention_parts.BlockPhases`; their blocks are in
:mod:`spikeforge.hw.attention_parts` (:class:`EventsToBits`, :class:`RowFeeder` and
:class:`BitsToEvents` forward; :class:`TokenRowsIn`, :class:`ColumnFeeder`, :class:`RowsToMemory`
and :class:`TokenRowsOut` backward).
"""

from amaranth.hdl import Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.golden.surrogate import Surrogate

from .attention_parts import (
    BitsToEvents,
    BlockPhases,
    ColumnFeeder,
    EventsToBits,
    RowFeeder,
    RowsToMemory,
    TokenRowsIn,
    TokenRowsOut,
)
from .core import error_layout, event_layout
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
        whole = (D[:lb] == 0) if lb else 1     # D a multiple of P
        sizes = {"lanes": P, "tokens": self._tokens, "channels": self._channels,
                 "padded": (NP, DP)}

        m.submodules.phases = phases = BlockPhases(timesteps=self._timesteps)
        m.submodules.collect = collect = EventsToBits(**sizes)
        m.submodules.feed = feed = RowFeeder(lanes=P, longest=M)
        m.submodules.emit = emit = BitsToEvents(**sizes)
        m.submodules.recv = recv = TokenRowsIn(lanes=P, tokens=self._tokens, longest=M)
        m.submodules.bp_feed = bp_feed = ColumnFeeder(lanes=P, longest=M)
        m.submodules.dk_in = dk_in = RowsToMemory(lanes=P, longest=M)
        m.submodules.dq_in = dq_in = RowsToMemory(lanes=P, longest=M)
        m.submodules.send = send = TokenRowsOut(lanes=P, tokens=self._tokens, longest=M)
        # δX′ (row: token, column: channel), δK and δQ (row: the unit's summed-axis row,
        # column: its lane groups)
        m.submodules.dx_mem = dx_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)
        m.submodules.dk_mem = dk_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)
        m.submodules.dq_mem = dq_mem = SkewedMemory(lanes=P, neurons=M, inputs=M)

        m.d.comb += [
            phases.timesteps.eq(self.c_timesteps), phases.fp_valid.eq(self.fp_i.valid),
            phases.fp_take.eq(self.fp_i.valid & self.fp_i.ready),
            phases.bp_valid.eq(self.bp_i.valid), phases.flag.eq(collect.error),
            phases.collected.eq(collect.done), phases.fed.eq(feed.done),
            phases.emitted.eq(emit.done), phases.received.eq(recv.done),
            phases.bp_fed.eq(bp_feed.done & dk_in.done & dq_in.done),
            phases.sent.eq(send.done),
            self.error.eq(phases.error | unit.error | ~whole),
            self.busy.eq(~(phases.collect | phases.pending) | collect.busy | unit.busy),
            self.waiting.eq((phases.collect & ~self.fp_i.valid & ~unit.busy)
                            | (phases.recv & ~self.bp_i.valid)),
        ]

        # forward: events into bit matrices, through the unit by its rows, X′ out as events
        wiring.connect(m, wiring.flipped(self.fp_i), collect.i)
        wiring.connect(m, feed.o, unit.fp_i)
        wiring.connect(m, unit.fp_o, feed.x)
        wiring.connect(m, feed.x_w, emit.x_w)
        wiring.connect(m, emit.o, wiring.flipped(self.fp_o))
        m.d.comb += [
            collect.enable.eq(phases.collect), collect.tokens.eq(N), collect.channels.eq(D),
            collect.token_kind.eq(token_kind), collect.clear.eq(feed.done),
            collect.rd_i.eq(feed.rd_i), collect.rd_c.eq(feed.rd_c),
            feed.start.eq(collect.done), feed.enable.eq(phases.feed), feed.rows.eq(rows),
            feed.row_chunks.eq(row_chunks), feed.q.eq(collect.rd_q), feed.k.eq(collect.rd_k),
            emit.token_kind.eq(token_kind), emit.start.eq(feed.done), emit.tokens.eq(N),
            emit.d_chunks.eq(d_chunks),
        ]

        # backward: δX′ into memory, through the unit by its summed-axis rows, δK and δQ into
        # memories, [δQ; δK] out by tokens
        wiring.connect(m, wiring.flipped(self.bp_i), recv.i)
        wiring.connect(m, bp_feed.o, unit.bp_i)
        wiring.connect(m, unit.dk_o, dk_in.i)
        wiring.connect(m, unit.dq_o, dq_in.i)
        wiring.connect(m, send.o, wiring.flipped(self.bp_o))
        for block in (recv, send):
            m.d.comb += [block.tokens.eq(N), block.d_chunks.eq(d_chunks)]
        for block in (bp_feed, dk_in, dq_in):
            m.d.comb += [block.cols.eq(cols), block.col_groups.eq(col_groups),
                         block.start.eq(recv.done), block.enable.eq(phases.bp_feed)]
        m.d.comb += [
            recv.enable.eq(phases.recv),
            bp_feed.token_kind.eq(token_kind), bp_feed.rd_data.eq(dx_mem.rd_data),
            send.start.eq(phases.bp_feed & phases.bp_fed), send.enable.eq(phases.bp_send),
            send.token_kind.eq(token_kind),
            send.dq_data.eq(dq_mem.rd_data), send.dk_data.eq(dk_mem.rd_data),
        ]
        for mem, writer in ((dx_mem, recv), (dk_mem, dk_in), (dq_mem, dq_in)):
            for name in ("en", "major", "minor", "data", "mask"):
                m.d.comb += getattr(mem, f"wr_{name}").eq(getattr(writer.wr, name))
        for mem, reader in ((dx_mem, bp_feed), (dk_mem, send), (dq_mem, send)):
            for name in ("en", "col", "major", "minor"):
                m.d.comb += getattr(mem, f"rd_{name}").eq(getattr(reader.rd, name))
        return m
