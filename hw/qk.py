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
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal
from amaranth.lib import data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.golden.lif import RESETS
from spikeforge.golden.surrogate import Surrogate

from .core import error_layout
from .fp16 import FP16Adder
from .lanes import FP16Lanes, delay, lane
from .neuron import BPTTUpdate, LIFUpdate

__all__ = ["Attention", "QKAttention", "spike_layout", "spike_pair_layout"]


class Attention(enum.Enum, shape=1):
    """The attention kinds, in the order of :data:`spikeforge.golden.qk.ATTENTIONS`."""
    TOKEN = 0
    CHANNEL = 1


def spike_pair_layout(lanes: int) -> data.StructLayout:
    """A beat of ``lanes`` spikes of ``Q`` and of ``K``."""
    return data.StructLayout({"q": lanes, "k": lanes, "last": 1})


def spike_layout(lanes: int) -> data.StructLayout:
    """A beat of ``lanes`` spikes."""
    return data.StructLayout({"x": lanes, "last": 1})


def _count_to_fp16(m: Module, count, name: str):
    """``count`` (at most 2048) as a binary16 bit pattern; exact."""
    wide = Signal(12, name=f"{name}_wide")
    top = Signal(range(12), name=f"{name}_top")
    m.d.comb += wide.eq(count)
    for k in range(12):
        with m.If(wide[k]):
            m.d.comb += top.eq(k)
    norm = (wide << (C(11, 4) - top)[:4])[:12]
    return Mux(wide == 0, 0, Cat(norm[1:11], (top + 15)[:5], C(0, 1)))


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
        if isinstance(lanes, bool) or lanes not in [1 << k for k in range(7)]:
            raise ValueError(f"Lane count must be a power of two between 1 and 64, not {lanes!r}")
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
        self._lif = LIFUpdate(lanes=1, reset=reset,
                              tag_width=3 * max(timesteps * kept, 2).bit_length())
        self._bptt = BPTTUpdate(lanes=1, reset=reset, detach_reset=detach_reset,
                                surrogate=surrogate, tag_width=max(kept, 2).bit_length())
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
        return 1 + self._lif.latency + 6

    @property
    def k_words(self) -> int:
        """Words of each of the ``P`` one-bit banks holding ``K`` for back-propagation."""
        P = self._lanes
        return self._timesteps * -(-self._tokens // P) * -(-self._channels // P) * P

    def elaborate(self, platform):
        m = Module()
        P, T = self._lanes, self._timesteps
        lb = P.bit_length() - 1
        IM = max(self._tokens, self._channels)   # longest kept or summed axis
        GM = -(-IM // P)                          # its lane groups (chunks)
        KW = self.k_words

        def modp(value):
            return value[:lb] if lb else C(0, 1)

        def rot_down(vector, amount, width):
            """Element ``l`` of the result is element ``(l + amount) mod P``."""
            if P == 1:
                return vector
            return (Cat(vector, vector) >> (amount * width))[:P * width]

        def rot_up(vector, amount, width):
            if P == 1:
                return vector
            return rot_down(vector, (C(P, lb + 1) - amount)[:lb], width)

        def lanes_below(base, limit, name):
            mask = Signal(P, name=name)
            m.d.comb += mask.eq(Cat(*((base + k) < limit for k in range(P))))
            return mask

        def group_base(parity):
            return Mux(parity, GM, 0)

        # ---- configuration ---------------------------------------------------------------
        channel = self.c_kind == Attention.CHANNEL
        n_i = Signal(range(IM + 1))
        n_j = Signal(range(IM + 1))
        groups = Signal(range(GM + 1))     # ⌈I/P⌉
        chunks = Signal(range(GM + 1))     # ⌈J/P⌉
        j_pad = Signal(range(GM * P + 1))  # ⌈J/P⌉·P
        n_t = self.c_timesteps
        m.d.comb += [
            n_i.eq(Mux(channel, self.c_channels, self.c_tokens)),
            n_j.eq(Mux(channel, self.c_tokens, self.c_channels)),
            groups.eq((n_i + P - 1) >> lb),
            chunks.eq((n_j + P - 1) >> lb),
            j_pad.eq(chunks << lb),
        ]

        # ---- memories ----------------------------------------------------------------------
        # K for BP: element (i, j) of timestep t in bank (i + j) mod P at word
        # t·⌈I/P⌉·⌈J/P⌉P + (i div P)·⌈J/P⌉P + j, so that forward rows and backward columns of P
        # spikes each touch every bank once. A bank packs 16 of its one-bit words in a row.
        k_we = Signal()
        k_wa = [Signal(range(KW), name=f"k_wa{b}") for b in range(P)]
        k_wd = Signal(P)
        k_ra = [Signal(range(KW), name=f"k_ra{b}") for b in range(P)]
        k_rd_data = Signal(P)
        for b in range(P):
            bank = memory.Memory(shape=16, depth=-(-KW // 16), init=[])
            m.submodules[f"kmem{b}"] = bank
            wr, rd = bank.write_port(granularity=1), bank.read_port()
            bit = Signal(4, name=f"k_bit{b}")
            m.d.sync += bit.eq(k_ra[b][:4])
            m.d.comb += [
                wr.addr.eq(k_wa[b] >> 4), wr.en.eq(Mux(k_we, C(1, 16) << k_wa[b][:4], 0)),
                wr.data.eq(k_wd[b].replicate(16)),
                rd.addr.eq(k_ra[b] >> 4), rd.en.eq(1), k_rd_data[b].eq(rd.data.bit_select(bit, 1)),
            ]
        m.submodules.amem = amem = memory.Memory(shape=GM * P, depth=T, init=[])
        m.submodules.vmem = vmem = memory.Memory(shape=16, depth=IM, init=[])
        m.submodules.hmem = hmem = memory.Memory(shape=16, depth=T * IM, init=[])
        m.submodules.emem = emem = memory.Memory(shape=16, depth=IM, init=[])
        m.submodules.accmem = accmem = memory.Memory(shape=16 * P, depth=2 * GM, init=[])
        m.submodules.dqmem = dqmem = memory.Memory(shape=16 * P, depth=2 * GM, init=[])
        a_wr = amem.write_port(granularity=1)
        a_rd_bp, a_rd_pass = amem.read_port(), amem.read_port()
        v_wr = vmem.write_port()
        v_rd = vmem.read_port(transparent_for=(v_wr,))
        h_rd, h_wr = hmem.read_port(), hmem.write_port()
        e_wr = emem.write_port()
        e_rd = emem.read_port(transparent_for=(e_wr,))
        acc_wr = accmem.write_port()
        acc_rd = accmem.read_port(transparent_for=(acc_wr,))
        acc_rd_pass = accmem.read_port()
        dq_wr = dqmem.write_port(granularity=16)
        dq_rd = dqmem.read_port()

        m.submodules.lif = lif = self._lif
        m.submodules.bptt = bptt = self._bptt
        da_add = FP16Lanes(m, "da_add", FP16Adder, P)
        la = da_add.latency
        m.d.comb += [
            lif.c_v_th.eq(self.c_v_th), lif.c_v_reset.eq(self.c_v_reset),
            lif.c_inv_tau.eq(self.c_inv_tau),
            bptt.c_v_th.eq(self.c_v_th), bptt.c_v_reset.eq(self.c_v_reset),
            bptt.c_inv_tau.eq(self.c_inv_tau), bptt.c_decay.eq(self.c_decay),
        ]

        fwd_start = Signal()
        bwd_start = Signal()
        fwd_finish = Signal()
        bwd_finish = Signal()
        error = Signal()
        m.d.comb += self.error.eq(error)

        with m.FSM(name="qk") as fsm:
            with m.State("IDLE"):
                with m.If(self.fp_i.valid):
                    m.d.comb += fwd_start.eq(1)
                    m.d.sync += [self.fp_done.eq(0), self.bp_done.eq(0), error.eq(0)]
                    m.next = "FWD"
                with m.Elif(self.bp_i.valid & self.fp_done & ~self.bp_done):
                    m.d.comb += bwd_start.eq(1)
                    m.next = "BWD"
            with m.State("FWD"):
                with m.If(fwd_finish):
                    m.d.sync += self.fp_done.eq(1)
                    m.next = "IDLE"
            with m.State("BWD"):
                with m.If(bwd_finish):
                    m.d.sync += self.bp_done.eq(1)
                    m.next = "IDLE"
        m.d.comb += self.busy.eq(~fsm.ongoing("IDLE"))

        # =====================================================================================
        # Forward: row popcounts, the attention neuron of each row, K stored and masked.
        # =====================================================================================
        lif_lat = lif.latency
        a_depth = lif_lat + 6
        m.submodules.afifo = afifo = fifo.SyncFIFOBuffered(width=1, depth=a_depth)
        m.submodules.xfifo = xfifo = fifo.SyncFIFOBuffered(width=P + 1, depth=4)

        in_t = Signal(range(T + 1))
        in_i = Signal(range(IM))
        in_c = Signal(range(GM))
        in_done = Signal()
        row_count = Signal(range(IM + 1))
        row_base = Signal(range(KW + 1))       # K word of (i div P, j = 0) at timestep in_t
        h_base = Signal(range(T * IM + 1))     # in_t · I
        t_words = Signal(range(KW + 1))        # K words a timestep: ⌈I/P⌉·⌈J/P⌉P
        t_beats = Signal(range(lif_lat + 3))
        short = Signal()
        pending = Signal(range(a_depth + 2))   # rows issued to the LIF, not yet in afifo

        first_beat = (in_i == 0) & (in_c == 0) & (in_t != 0)
        v_hazard = first_beat & short & (pending != 0)
        room = (pending + afifo.level) < a_depth
        m.d.comb += self.fp_i.ready.eq(fsm.ongoing("FWD") & ~in_done & room & ~v_hazard)
        take = self.fp_i.valid & self.fp_i.ready
        row_end = in_c == chunks - 1
        step_end = row_end & (in_i == n_i - 1)
        group_end = (in_i[:lb] == P - 1 if lb else C(1, 1)) | (in_i == n_i - 1)
        j_mask = lanes_below(in_c << lb, n_j, "j_mask")
        q_bits = Signal(P)
        k_bits = Signal(P)
        m.d.comb += [q_bits.eq(self.fp_i.payload.q & j_mask),
                     k_bits.eq(self.fp_i.payload.k & j_mask)]
        popcount = sum(q_bits[k] for k in range(P))

        with m.If(fwd_start):
            m.d.sync += [in_t.eq(0), in_i.eq(0), in_c.eq(0), in_done.eq(0), row_count.eq(0),
                         row_base.eq(0), h_base.eq(0), t_beats.eq(0), short.eq(0)]
        with m.Elif(take):
            with m.If(self.fp_i.payload.last != step_end):
                m.d.sync += error.eq(1)
            with m.If(row_end):
                m.d.sync += [row_count.eq(0), in_c.eq(0), in_i.eq(in_i + 1)]
                with m.If(group_end):
                    m.d.sync += row_base.eq(row_base + j_pad)
            with m.Else():
                m.d.sync += [row_count.eq(row_count + popcount), in_c.eq(in_c + 1)]
            with m.If(step_end):
                m.d.sync += [in_i.eq(0), in_t.eq(in_t + 1), h_base.eq(h_base + n_i),
                             t_beats.eq(0), short.eq(t_beats + 1 < lif_lat + 2)]
                with m.If(in_t == 0):
                    m.d.sync += t_words.eq(row_base + j_pad)
                with m.If(in_t == n_t - 1):
                    m.d.sync += in_done.eq(1)
            with m.Elif(t_beats < lif_lat + 2):
                m.d.sync += t_beats.eq(t_beats + 1)

        m.d.comb += [k_we.eq(take), k_wd.eq(rot_up(k_bits, modp(in_i), 1))]
        for b in range(P):
            m.d.comb += k_wa[b].eq(row_base + (in_c << lb) + modp(C(b, lb + 1) - in_i))

        # The attention neuron of the row, the cycle after its last beat (V is read meanwhile).
        lif_go = Signal()
        lif_count = Signal(range(IM + 1))
        lif_i = Signal(range(IM))
        lif_t = Signal(range(max(T, 2)))
        lif_h = Signal(range(T * IM))
        m.d.sync += [lif_go.eq(take & row_end), lif_count.eq(row_count + popcount),
                     lif_i.eq(in_i), lif_t.eq(in_t), lif_h.eq(h_base + in_i)]
        m.d.comb += [v_rd.addr.eq(in_i), v_rd.en.eq(1)]
        m.d.sync += pending.eq(pending + (take & row_end) - lif.o_valid)
        ib, tb, hb = len(lif_i), len(lif_t), len(lif_h)
        m.d.comb += [
            lif.i_valid.eq(lif_go),
            lif.i_x.eq(_count_to_fp16(m, lif_count, "count")),
            lif.i_v.eq(Mux(lif_t == 0, self.c_v_reset, v_rd.data)),
            lif.i_tag.eq(Cat(lif_i, lif_t, lif_h)),
        ]
        o_i, o_t, o_h = lif.o_tag[:ib], lif.o_tag[ib:ib + tb], lif.o_tag[ib + tb:ib + tb + hb]
        with m.If(lif.o_valid):
            m.d.comb += [
                v_wr.en.eq(1), v_wr.addr.eq(o_i), v_wr.data.eq(lif.o_v),
                h_wr.en.eq(1), h_wr.addr.eq(o_h), h_wr.data.eq(lif.o_h),
                a_wr.en.eq(C(1, GM * P) << o_i), a_wr.addr.eq(o_t),
                a_wr.data.eq(lif.o_s.replicate(GM * P)),
                afifo.w_en.eq(1), afifo.w_data.eq(lif.o_s),
            ]

        # X′: each row of K read back and masked by its attention spike.
        out_t = Signal(range(T + 1))
        out_i = Signal(range(IM))
        out_c = Signal(range(GM))
        out_base = Signal(range(KW + 1))
        out_done = Signal()
        cur_valid = Signal()
        cur_a = Signal()
        x_inflight = Signal(range(3))
        out_issue = Signal()
        out_row_end = out_c == chunks - 1
        out_step_end = out_row_end & (out_i == n_i - 1)
        out_group_end = (out_i[:lb] == P - 1 if lb else C(1, 1)) | (out_i == n_i - 1)
        m.d.comb += out_issue.eq(cur_valid & (xfifo.level + x_inflight < 4))
        with m.If(fwd_start):
            m.d.sync += [out_t.eq(0), out_i.eq(0), out_c.eq(0), out_base.eq(0),
                         out_done.eq(0), cur_valid.eq(0)]
        with m.Elif(out_issue):
            with m.If(out_row_end):
                m.d.sync += [out_c.eq(0), out_i.eq(out_i + 1)]
                with m.If(out_group_end):
                    m.d.sync += out_base.eq(out_base + j_pad)
                with m.If(out_step_end):
                    m.d.sync += [out_i.eq(0), out_t.eq(out_t + 1)]
                    with m.If(out_t == n_t - 1):
                        m.d.sync += out_done.eq(1)
            with m.Else():
                m.d.sync += out_c.eq(out_c + 1)
        next_row = ~cur_valid | (out_issue & out_row_end)
        with m.If(~fwd_start & next_row):
            m.d.comb += afifo.r_en.eq(1)
            m.d.sync += [cur_valid.eq(afifo.r_rdy), cur_a.eq(afifo.r_data)]
        m.d.sync += x_inflight.eq(x_inflight + out_issue - delay(m, out_issue, 1, "x_issue"))
        x_rot = delay(m, modp(out_i), 1, "x_rot")
        x_a = delay(m, cur_a, 1, "x_a")
        x_last = delay(m, out_step_end, 1, "x_last")
        m.d.comb += [
            xfifo.w_en.eq(delay(m, out_issue, 1, "x_write")),
            xfifo.w_data.eq(Cat(rot_down(k_rd_data, x_rot, 1) & x_a.replicate(P), x_last)),
            self.fp_o.valid.eq(xfifo.r_rdy),
            self.fp_o.payload.eq(xfifo.r_data),
            xfifo.r_en.eq(self.fp_o.ready),
        ]
        m.d.comb += fwd_finish.eq(out_done & (x_inflight == 0) & (xfifo.level == 0))

        # =====================================================================================
        # Backward: δK streamed, δA accumulated per lane, BPTT of the attention neurons, δQ.
        # =====================================================================================
        m.submodules.dkfifo = dkfifo = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        m.submodules.dqfifo = dqfifo = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        acc_full = Signal(2)    # δA of a timestep of that parity waits for its BPTT step
        dq_full = Signal(2)     # ∂L/∂(ΣQ) of a timestep of that parity waits to go out
        hazard = la + 1
        slots = Signal(range(max(GM, hazard) + 1))
        m.d.comb += slots.eq(Mux(groups > hazard, groups, hazard))

        # ---- δX′ in, δK out, δA[i] += δX′[i, j] where K[i, j] ----
        b_t = Signal(range(max(T, 2)))
        b_j = Signal(range(IM))
        b_slot = Signal(range(max(GM, hazard) + 1))
        b_kbase = Signal(range(KW + 1))     # K word of (0, 0) at timestep b_t
        b_word = Signal(range(KW + 1))      # K word of (b_slot·P, b_j)
        a_vec = Signal(GM * P)
        pass_wait = Signal(range(la + 4))
        b_run = Signal()
        b_slot_issue = b_slot < groups
        par = b_t[0]
        m.d.comb += self.bp_i.ready.eq(b_run & b_slot_issue & dkfifo.w_rdy)
        b_take = self.bp_i.valid & self.bp_i.ready
        b_last = (b_j == n_j - 1) & (b_slot == groups - 1)
        m.d.comb += [a_rd_bp.addr.eq(b_t), a_rd_bp.en.eq(1)]
        with m.FSM(name="bwd_in"):
            with m.State("IDLE"):
                with m.If(bwd_start):
                    m.d.sync += [b_t.eq(n_t - 1), b_kbase.eq(row_base - t_words),
                                 acc_full.eq(0), pass_wait.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(~acc_full.bit_select(par, 1)):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [a_vec.eq(a_rd_bp.data), b_j.eq(0), b_slot.eq(0),
                             b_word.eq(b_kbase)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += b_run.eq(1)
                with m.If(b_take & b_last):
                    m.d.sync += [acc_full.bit_select(par, 1).eq(1), pass_wait.eq(la + 3)]
                    with m.If(b_t == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [b_t.eq(b_t - 1), b_kbase.eq(b_kbase - t_words)]
                        m.next = "WAIT"
                with m.Elif(~b_slot_issue | b_take):
                    with m.If(b_slot == slots - 1):
                        m.d.sync += [b_slot.eq(0), b_j.eq(b_j + 1),
                                     b_word.eq(b_kbase + b_j + 1)]
                    with m.Else():
                        m.d.sync += [b_slot.eq(b_slot + 1), b_word.eq(b_word + j_pad)]
        with m.If(b_take & (self.bp_i.payload.last != b_last)):
            m.d.sync += error.eq(1)
        with m.If(pass_wait != 0):
            m.d.sync += pass_wait.eq(pass_wait - 1)

        i_mask = lanes_below(b_slot << lb, n_i, "i_mask")
        a_mask = Signal(P)
        m.d.comb += a_mask.eq(a_vec.word_select(b_slot, P) & i_mask)
        g = self.bp_i.payload.value
        m.d.comb += [
            dkfifo.w_en.eq(b_take),
            dkfifo.w_data.eq(Cat(Cat(*(Mux(a_mask[k], lane(g, k), 0) for k in range(P))),
                                 b_last)),
            self.dk_o.valid.eq(dkfifo.r_rdy),
            self.dk_o.payload.eq(dkfifo.r_data),
            dkfifo.r_en.eq(self.dk_o.ready),
        ]
        for b in range(P):
            with m.If(fsm.ongoing("FWD")):
                m.d.comb += k_ra[b].eq(out_base + (out_c << lb) + modp(C(b, lb + 1) - out_i))
            with m.Else():
                m.d.comb += k_ra[b].eq(b_word)
        acc_addr = Signal(range(2 * GM))
        m.d.comb += [acc_addr.eq(group_base(par) + b_slot),
                     acc_rd.addr.eq(acc_addr), acc_rd.en.eq(1)]
        s_valid = delay(m, b_take, 1, "da_valid")
        s_first = delay(m, b_j == 0, 1, "da_first")
        s_g = delay(m, g, 1, "da_g")
        s_rot = delay(m, modp(b_j), 1, "da_rot")
        s_imask = delay(m, i_mask, 1, "da_imask")
        s_addr = delay(m, acc_addr, 1, "da_addr")
        s_old = Signal(16 * P)
        m.d.comb += s_old.eq(Mux(s_first, 0, acc_rd.data))
        k_col = Signal(P)
        m.d.comb += k_col.eq(rot_down(k_rd_data, s_rot, 1) & s_imask)
        total = da_add.issue(m, s_valid, s_old, s_g)
        w_old = delay(m, s_old, la, "da_old")
        w_k = delay(m, k_col, la, "da_k")
        w_addr = delay(m, s_addr, la, "da_waddr")
        m.d.comb += [
            acc_wr.en.eq(da_add.o_valid), acc_wr.addr.eq(w_addr),
            acc_wr.data.eq(Cat(*(Mux(w_k[k], lane(total, k), lane(w_old, k))
                                 for k in range(P)))),
        ]

        # ---- the attention neurons' BPTT step, one neuron a cycle ----
        p_t = Signal(range(max(T, 2)))
        p_hbase = Signal(range(T * IM + 1))
        p_i = Signal(range(IM))
        p_issue = Signal()
        p_inflight = Signal(range(bptt.latency + 3))
        s_vec = Signal(GM * P)
        p_par = p_t[0]
        m.d.comb += [a_rd_pass.addr.eq(p_t), a_rd_pass.en.eq(1)]
        with m.FSM(name="pass"):
            with m.State("IDLE"):
                with m.If(bwd_start):
                    m.d.sync += [p_t.eq(n_t - 1), p_hbase.eq(h_base - n_i), dq_full.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(acc_full.bit_select(p_par, 1) & ~dq_full.bit_select(p_par, 1)
                          & (pass_wait == 0)):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [s_vec.eq(a_rd_pass.data), p_i.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += p_issue.eq(1)
                m.d.sync += p_i.eq(p_i + 1)
                with m.If(p_i == n_i - 1):
                    m.d.sync += acc_full.bit_select(p_par, 1).eq(0)
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If((p_inflight == 0) & ~p_issue):
                    m.d.sync += dq_full.bit_select(p_par, 1).eq(1)
                    with m.If(p_t == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [p_t.eq(p_t - 1), p_hbase.eq(p_hbase - n_i)]
                        m.next = "WAIT"
        m.d.comb += [
            acc_rd_pass.addr.eq(group_base(p_par) + (p_i >> lb)), acc_rd_pass.en.eq(1),
            h_rd.addr.eq(p_hbase + p_i), h_rd.en.eq(1),
            e_rd.addr.eq(p_i), e_rd.en.eq(1),
        ]
        p_valid = delay(m, p_issue, 1, "p_valid")
        p_at = delay(m, p_i, 1, "p_at")
        m.d.sync += p_inflight.eq(p_inflight + p_issue - bptt.o_valid)
        m.d.comb += [
            bptt.i_valid.eq(p_valid),
            bptt.i_g.eq((acc_rd_pass.data >> (modp(p_at) * 16))[:16]),
            bptt.i_h.eq(h_rd.data),
            bptt.i_s.eq(s_vec.bit_select(p_at, 1)),
            bptt.i_eps.eq(Mux(p_t == n_t - 1, 0, e_rd.data)),
            bptt.i_tag.eq(p_at),
        ]
        r_i = bptt.o_tag[:len(p_i)]
        with m.If(bptt.o_valid):
            m.d.comb += [
                e_wr.en.eq(1), e_wr.addr.eq(r_i), e_wr.data.eq(bptt.o_eps),
                dq_wr.en.eq(C(1, P) << modp(r_i)), dq_wr.addr.eq(group_base(p_par) + (r_i >> lb)),
                dq_wr.data.eq(bptt.o_dx.replicate(P)),
            ]

        # ---- δQ out: ∂L/∂(ΣQ) broadcast along the summed axis ----
        q_t = Signal(range(max(T, 2)))
        q_j = Signal(range(IM))
        q_g = Signal(range(GM))
        q_issue = Signal()
        q_inflight = Signal(range(3))
        q_par = q_t[0]
        q_last = (q_j == n_j - 1) & (q_g == groups - 1)
        with m.FSM(name="dq"):
            with m.State("IDLE"):
                with m.If(bwd_start):
                    m.d.sync += q_t.eq(n_t - 1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(dq_full.bit_select(q_par, 1)):
                    m.d.sync += [q_j.eq(0), q_g.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += q_issue.eq(dqfifo.level + q_inflight < 4)
                with m.If(q_issue):
                    with m.If(q_last):
                        m.d.sync += dq_full.bit_select(q_par, 1).eq(0)
                        with m.If(q_t == 0):
                            m.next = "DONE"
                        with m.Else():
                            m.d.sync += q_t.eq(q_t - 1)
                            m.next = "WAIT"
                    with m.Elif(q_g == groups - 1):
                        m.d.sync += [q_g.eq(0), q_j.eq(q_j + 1)]
                    with m.Else():
                        m.d.sync += q_g.eq(q_g + 1)
            with m.State("DONE"):
                with m.If((q_inflight == 0) & (dqfifo.level == 0) & (dkfifo.level == 0)):
                    m.d.comb += bwd_finish.eq(1)
                    m.next = "IDLE"
        q_written = delay(m, q_issue, 1, "q_written")
        m.d.sync += q_inflight.eq(q_inflight + q_issue - q_written)
        m.d.comb += [dq_rd.addr.eq(group_base(q_par) + q_g), dq_rd.en.eq(1)]
        q_mask = delay(m, lanes_below(q_g << lb, n_i, "q_imask"), 1, "q_mask")
        m.d.comb += [
            dqfifo.w_en.eq(q_written),
            dqfifo.w_data.eq(Cat(Cat(*(Mux(q_mask[k], lane(dq_rd.data, k), 0)
                                       for k in range(P))),
                                 delay(m, q_last, 1, "q_lastd"))),
            self.dq_o.valid.eq(dqfifo.r_rdy),
            self.dq_o.payload.eq(dqfifo.r_data),
            dqfifo.r_en.eq(self.dq_o.ready),
        ]
        return m
