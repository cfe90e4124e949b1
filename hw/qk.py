# SPDX-License-Identifier: Apache-2.0
"""QKFormer's Q-K attention in spike form, token and channel attention, forward and backward.

The unit computes :func:`spikeforge.golden.qk.qk_attention_forward` and
:func:`~spikeforge.golden.qk.qk_attention_backward` for one sample under ``FP16()`` arithmetic,
bit for bit. Both attention kinds are the same computation on a matrix of the **kept** axis
``i`` (``I`` long) by the **summed** axis ``j`` (``J`` long):

=========  ===============  =================  =====================================
attention  kept axis ``i``  summed axis ``j``  ``A[i] = SN(Σ_j Q[i, j])``
=========  ===============  =================  =====================================
token      token (``N``)    channel (``D``)    masks the rows (tokens) of ``K``
channel    channel (``D``)  token (``N``)      masks the columns (channels) of ``K``
=========  ===============  =================  =====================================

Streams (``amaranth.lib.stream``), ``P`` lanes a beat, lanes past the end of an axis are zero
on the outputs and ignored on the inputs:

``fp_i`` — ``{q, k, last}``: ``P`` spikes of ``Q`` and of ``K`` a beat, **by kept-axis rows**:
    timesteps ascending, then ``i`` ascending, then ``⌈J/P⌉`` chunks of ``j`` (lane ``l`` of
    chunk ``c`` is ``j = cP + l``). ``last`` marks a timestep's final beat.
``fp_o`` — ``{x, last}``: ``X′``, the same layout as ``fp_i``.
``bp_i`` — ``{value, last}``: ``δX′`` in binary16, ``P`` lanes a beat, **by summed-axis rows**:
    timesteps descending, then ``j`` ascending, then ``⌈I/P⌉`` groups of ``i`` (lane ``l`` of
    group ``g`` is ``i = gP + l``).
``dk_o`` — ``δK``, the layout of ``bp_i``, beat for beat (``δX′`` where ``A`` fired, else +0).
``dq_o`` — ``δQ``, the layout of ``bp_i``; a timestep's ``δQ`` follows its last ``δX′`` beat,
    while the ``δX′`` of the timestep before comes in. ``dk_o`` and ``dq_o`` must be read
    concurrently: with ``dq_o`` not read, ``bp_i`` stops after four timesteps.

For token attention ``fp_i`` is row-major ``[N, D]`` and ``bp_i`` column-major; for channel
attention the other way round. The forward order lets each row's attention spike, and with it
the row of ``X′``, follow its ``Q`` and ``K`` beats within a few cycles; the backward order gives
every lane its own ``δA`` accumulation in the golden order (``j`` ascending).

A sample is ``c_timesteps`` timesteps of ``fp_i``; its backward pass (``bp_i``) is accepted once
all of ``X′`` is out (``fp_done``). A new ``fp_i`` beat after that starts the next sample.

Cost: forward ``I·⌈J/P⌉`` cycles a timestep, one beat a cycle; each row of ``X′`` starts
``latency`` cycles after its last input beat (a timestep of fewer beats than the LIF latency
plus 2 waits for the LIF pipeline to drain before the next). Backward ``J·max(⌈I/P⌉, 5)``
cycles a timestep (5: the read, add and write back of a ``δA`` lane vector); after a timestep's
last ``δX′`` beat its attention neurons' BPTT step takes ``I`` cycles, then its ``δQ``
(``J·⌈I/P⌉`` beats) goes out while the ``δX′`` of the timestep before comes in, so a backward
pass takes about a timestep longer than its input. Additions only, apart from the multipliers
of the attention neurons' LIF and BPTT units (one lane each).

The unit wires the blocks of :mod:`spikeforge.hw.qk_parts`: forward, :class:`SpikeRows` (``Q``
counted, ``K`` into :class:`KStore`) → :class:`AttentionNeurons` → a FIFO of spikes →
:class:`MaskedRows` (``X′``); backward, :class:`ColumnScan` (``δK``) → :class:`DeltaAccumulator`
(``δA``) → :class:`BPTTPass` → :class:`DeltaQOut` (``δQ``); :class:`QKSequencer` runs the passes.
"""

from amaranth.hdl import Module
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.golden.lif import RESETS
from spikeforge.golden.surrogate import Surrogate

from .core import error_layout
from .lanes import check_lanes
from .qk_parts import (
    Attention,
    AttentionNeurons,
    BPTTPass,
    ColumnScan,
    DeltaAccumulator,
    DeltaQOut,
    KStore,
    MaskedRows,
    QKGeometry,
    QKSequencer,
    SpikeMatrix,
    SpikeRows,
    StreamFIFO,
    spike_layout,
    spike_pair_layout,
)

__all__ = ["Attention", "QKAttention", "spike_layout", "spike_pair_layout"]


class QKAttention(wiring.Component):
    """Q-K attention of up to ``tokens × channels`` spikes a timestep, trained on the device.

    Parameters
    ----------
    lanes : int
        Spikes (or binary16 gradients) a beat ``P``: a power of two from 1 to 64.
    tokens, channels : int
        Maximum ``N`` and ``D``, 1 to 2048 (spike counts stay exact in binary16).
    timesteps : int
        Maximum timesteps ``T`` per sample, 1 to 4096 (sizes the memories kept for BP).
    reset, detach_reset, surrogate :
        Of the attention neurons, as for :class:`~spikeforge.hw.neuron.BPTTUpdate`.

    Members
    -------
    fp_i, fp_o, bp_i, dk_o, dq_o : streams
        See the module.
    c_kind : In(Attention)
    c_tokens, c_channels, c_timesteps : In
        Active ``N`` (1 to ``tokens``), ``D`` (1 to ``channels``) and ``T`` (1 to
        ``timesteps``).
    c_v_th, c_v_reset, c_inv_tau, c_decay : In(16)
        The attention neurons' ``V_th`` (QKFormer: 0.5), ``V_reset``, ``1/τ`` and ``1 - 1/τ``
        in binary16.

        All ``c_*`` inputs must hold from a sample's first ``fp_i`` beat to the end of its
        backward pass.
    busy : Out(1)
        A forward or backward pass is under way.
    fp_done, bp_done : Out(1)
        The sample's forward (backward) pass is complete.
    error : Out(1)
        Some ``fp_i`` or ``bp_i`` beat's ``last`` disagreed with the configured sizes; cleared
        by the next sample.
    """

    def __init__(self, *, lanes: int, tokens: int, channels: int, timesteps: int,
                 reset: str = "hard", detach_reset: bool = True,
                 surrogate: Surrogate | None = None):
        check_lanes(lanes)
        for name, value in (("tokens", tokens), ("channels", channels)):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2048:
                raise ValueError(f"Attention {name} must be an integer between 1 and 2048 "
                                 f"(spike counts are exact in binary16 up to 2048), not "
                                 f"{value!r}")
        if isinstance(timesteps, bool) or not isinstance(timesteps, int) \
                or not 1 <= timesteps <= 4096:
            raise ValueError(f"Attention timesteps must be an integer between 1 and 4096, not "
                             f"{timesteps!r}")
        if reset not in RESETS:
            raise ValueError(f"Attention reset must be 'hard' or 'soft', not {reset!r}")
        if not isinstance(detach_reset, bool):
            raise ValueError(f"Attention detach_reset must be True or False, not "
                             f"{detach_reset!r}")
        surrogate = Surrogate() if surrogate is None else surrogate
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"Attention surrogate must be a spikeforge Surrogate, not "
                             f"{surrogate!r}")
        self._lanes, self._tokens, self._channels = lanes, tokens, channels
        self._timesteps, self._reset, self._detach = timesteps, reset, detach_reset
        self._surrogate = surrogate
        kept = max(tokens, channels)
        self._neurons = AttentionNeurons(longest=kept, timesteps=timesteps, reset=reset)
        self._pass = BPTTPass(lanes=lanes, longest=kept, timesteps=timesteps, reset=reset,
                              detach_reset=detach_reset, surrogate=surrogate)
        super().__init__({
            "fp_i": In(stream.Signature(spike_pair_layout(lanes))),
            "fp_o": Out(stream.Signature(spike_layout(lanes))),
            "bp_i": In(stream.Signature(error_layout(lanes))),
            "dk_o": Out(stream.Signature(error_layout(lanes))),
            "dq_o": Out(stream.Signature(error_layout(lanes))),
            "c_kind": In(Attention),
            "c_tokens": In(range(tokens + 1), init=tokens),
            "c_channels": In(range(channels + 1), init=channels),
            "c_timesteps": In(range(timesteps + 1), init=timesteps),
            "c_v_th": In(16, init=0x3800),
            "c_v_reset": In(16, init=0x0000),
            "c_inv_tau": In(16, init=0x3800),
            "c_decay": In(16, init=0x3800),
            "busy": Out(1),
            "fp_done": Out(1),
            "bp_done": Out(1),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes)
    tokens = property(lambda self: self._tokens)
    channels = property(lambda self: self._channels)
    timesteps = property(lambda self: self._timesteps)

    @property
    def latency(self) -> int:
        """Cycles from a kept-axis row's last ``fp_i`` beat to its first ``fp_o`` beat, with
        ``fp_o`` ready."""
        return self._neurons.latency + 6

    @property
    def k_words(self) -> int:
        """Words of each of the ``P`` one-bit banks holding ``K`` for back-propagation."""
        P = self._lanes
        return self._timesteps * -(-self._tokens // P) * -(-self._channels // P) * P

    def elaborate(self, platform):
        m = Module()
        P, T = self._lanes, self._timesteps
        IM = max(self._tokens, self._channels)   # longest kept or summed axis
        GM = -(-IM // P)                          # its lane groups (chunks)
        KW = self.k_words
        sizes = {"lanes": P, "longest": IM, "timesteps": T}
        neurons, bpass = self._neurons, self._pass
        a_depth = neurons.latency + 5

        m.submodules.geometry = geo = QKGeometry(**sizes)
        m.submodules.sequencer = seq = QKSequencer()
        m.submodules.kmem = kmem = KStore(lanes=P, words=KW)
        m.submodules.amem = amem = SpikeMatrix(timesteps=T, width=GM * P)
        m.submodules.hmem = hmem = memory.Memory(shape=16, depth=T * IM, init=[])
        h_rd, h_wr = hmem.read_port(), hmem.write_port()
        m.submodules.rows = rows = SpikeRows(**sizes, words=KW, lif_latency=neurons.latency - 1,
                                             depth=a_depth)
        m.submodules.neurons = neurons
        m.submodules.afifo = afifo = StreamFIFO(1, a_depth)
        m.submodules.xrows = xrows = MaskedRows(**sizes, words=KW)
        m.submodules.xfifo = xfifo = StreamFIFO(spike_layout(P), 4)
        m.submodules.acc = acc = DeltaAccumulator(lanes=P, longest=IM)
        m.submodules.scan = scan = ColumnScan(**sizes, words=KW, acc_latency=acc.latency)
        m.submodules.dkfifo = dkfifo = StreamFIFO(error_layout(P), 4)
        m.submodules.bpass = bpass
        m.submodules.dqout = dqout = DeltaQOut(**sizes)
        m.submodules.dqfifo = dqfifo = StreamFIFO(error_layout(P), 4)

        wiring.connect(m, geo.o, rows.geo, xrows.geo, scan.geo, bpass.geo, dqout.geo)
        m.d.comb += [
            geo.channel.eq(self.c_kind == Attention.CHANNEL), geo.tokens.eq(self.c_tokens),
            geo.channels.eq(self.c_channels), geo.timesteps.eq(self.c_timesteps),
            seq.fp_valid.eq(self.fp_i.valid), seq.bp_valid.eq(self.bp_i.valid),
            seq.fwd_finish.eq(xrows.done & (xfifo.level == 0)),
            seq.bwd_finish.eq(dqout.done), seq.flag.eq(rows.error | scan.error),
            self.busy.eq(seq.busy), self.fp_done.eq(seq.fp_done),
            self.bp_done.eq(seq.bp_done), self.error.eq(seq.error),
        ]
        for name in ("c_v_th", "c_v_reset", "c_inv_tau"):
            m.d.comb += getattr(neurons, name).eq(getattr(self, name))
        for name in ("c_v_th", "c_v_reset", "c_inv_tau", "c_decay"):
            m.d.comb += getattr(bpass, name).eq(getattr(self, name))

        # Forward: row popcounts, the attention neuron of each row, K stored and masked.
        wiring.connect(m, wiring.flipped(self.fp_i), rows.i)
        wiring.connect(m, rows.k, kmem.w)
        wiring.connect(m, rows.o, neurons.i)
        wiring.connect(m, neurons.o, afifo.i)
        wiring.connect(m, afifo.o, xrows.a)
        wiring.connect(m, xrows.k, kmem.row_rd)
        wiring.connect(m, xrows.o, xfifo.i)
        wiring.connect(m, xfifo.o, wiring.flipped(self.fp_o))
        m.d.comb += [
            rows.start.eq(seq.fwd_start), rows.enable.eq(seq.forward),
            rows.a_level.eq(afifo.level), rows.row_done.eq(neurons.o.valid),
            xrows.start.eq(seq.fwd_start), xrows.level.eq(xfifo.level),
            xrows.k_data.eq(kmem.rd_data), kmem.rows.eq(seq.forward),
            h_wr.en.eq(neurons.h_en), h_wr.addr.eq(neurons.h_addr), h_wr.data.eq(neurons.h_data),
            amem.w_en.eq(neurons.a_en), amem.w_t.eq(neurons.a_t), amem.w_i.eq(neurons.a_i),
            amem.w_s.eq(neurons.a_s),
        ]

        # Backward: δK streamed, δA accumulated per lane, BPTT of the attention neurons, δQ.
        wiring.connect(m, wiring.flipped(self.bp_i), scan.i)
        wiring.connect(m, scan.dk, dkfifo.i)
        wiring.connect(m, dkfifo.o, wiring.flipped(self.dk_o))
        wiring.connect(m, scan.k, kmem.col_rd)
        wiring.connect(m, scan.acc, acc.i)
        wiring.connect(m, bpass.dq, dqout.w)
        wiring.connect(m, dqout.o, dqfifo.i)
        wiring.connect(m, dqfifo.o, wiring.flipped(self.dq_o))
        m.d.comb += [
            scan.start.eq(seq.bwd_start), scan.row_base.eq(rows.row_base),
            scan.t_words.eq(rows.t_words), scan.clear.eq(bpass.acc_clear),
            scan.clear_par.eq(bpass.acc_clear_par),
            amem.rd0_addr.eq(scan.a_addr), scan.a_data.eq(amem.rd0_data),
            acc.k.eq(kmem.rd_data),
            bpass.start.eq(seq.bwd_start), bpass.h_base.eq(rows.h_base),
            bpass.acc_full.eq(scan.acc_full), bpass.settling.eq(scan.settling),
            acc.rd_addr.eq(bpass.acc_addr), bpass.acc_data.eq(acc.rd_data),
            h_rd.addr.eq(bpass.h_addr), h_rd.en.eq(1), bpass.h_data.eq(h_rd.data),
            amem.rd1_addr.eq(bpass.a_addr), bpass.a_data.eq(amem.rd1_data),
            bpass.clear.eq(dqout.clear), bpass.clear_par.eq(dqout.clear_par),
            dqout.start.eq(seq.bwd_start), dqout.dq_full.eq(bpass.dq_full),
            dqout.level.eq(dqfifo.level), dqout.dk_empty.eq(dkfifo.level == 0),
        ]
        return m
