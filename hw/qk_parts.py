# SPDX-License-Identifier: Apache-2.0
"""The blocks of the Q-K attention unit :class:`~spikeforge.hw.qk.QKAttention`.

Names as in :mod:`spikeforge.hw.qk`: ``P`` lanes, the kept axis ``i`` (``I`` long, ``⌈I/P⌉``
lane *groups*), the summed axis ``j`` (``J`` long, ``⌈J/P⌉`` *chunks*), ``T`` timesteps; ``IM``
is the longest axis the unit is built for and ``GM = ⌈IM/P⌉``. Every block is sized by the
unit's maxima and runs at the sizes on its ``geo`` port (:data:`geometry_signature`).
"""

from amaranth.hdl import C, Cat, Module, Mux, Shape, Signal
from amaranth.lib import data, enum, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from .core import error_layout
from .fp16 import FP16Adder
from .lanes import Delay, FP16Vector, lane
from .neuron import BPTTUpdate, LIFUpdate

__all__ = [
    "Attention", "AttentionNeurons", "BPTTPass", "ColumnScan", "CountToFP16", "DeltaAccumulator",
    "DeltaQOut", "KStore", "MaskedRows", "QKGeometry", "QKSequencer", "SpikeMatrix", "SpikeRows",
    "StreamFIFO", "geometry_signature", "spike_layout", "spike_pair_layout",
]


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


def _log2(lanes):
    return lanes.bit_length() - 1


def _groups(longest, lanes):
    return -(-longest // lanes)


def _modp(value, lanes):
    """``value mod P``."""
    lb = _log2(lanes)
    return value[:lb] if lb else C(0, 1)


def _rot_down(vector, amount, lanes):
    """Bit ``l`` of the result is bit ``(l + amount) mod P`` of ``vector``."""
    if lanes == 1:
        return vector
    return (Cat(vector, vector) >> amount)[:lanes]


def _rot_up(vector, amount, lanes):
    """Bit ``(l + amount) mod P`` of the result is bit ``l`` of ``vector``."""
    if lanes == 1:
        return vector
    lb = _log2(lanes)
    return _rot_down(vector, (C(lanes, lb + 1) - amount)[:lb], lanes)


def _lanes_below(base, limit, lanes):
    """The lane mask with lane ``l`` set where ``base + l < limit``."""
    return Cat(*((base + k) < limit for k in range(lanes)))


def geometry_signature(*, lanes: int, longest: int, timesteps: int) -> wiring.Signature:
    """The active sizes, from :class:`QKGeometry` to every block: ``n_i`` (``I``), ``n_j``
    (``J``), ``groups`` (``⌈I/P⌉``), ``chunks`` (``⌈J/P⌉``), ``j_pad`` (``⌈J/P⌉·P``) and
    ``n_t`` (``T``)."""
    GM = _groups(longest, lanes)
    return wiring.Signature({
        "n_i": Out(range(longest + 1)),
        "n_j": Out(range(longest + 1)),
        "groups": Out(range(GM + 1)),
        "chunks": Out(range(GM + 1)),
        "j_pad": Out(range(GM * lanes + 1)),
        "n_t": Out(range(timesteps + 1)),
    })


def _k_write_signature(lanes, words):
    return wiring.Signature({"en": Out(1), "base": Out(range(words + 1)),
                             "rot": Out(range(lanes)), "data": Out(lanes)})


def _k_read_signature(lanes, words):
    return wiring.Signature({"base": Out(range(words + 1)), "rot": Out(range(lanes))})


class StreamFIFO(wiring.Component):
    """:class:`amaranth.lib.fifo.SyncFIFOBuffered` with streams of ``shape`` payloads.

    Members
    -------
    i : In(stream.Signature(shape))
    o : Out(stream.Signature(shape))
    level : Out(range(depth + 1))
        Entries held, as the FIFO's ``level``.

    Latency, throughput and backpressure are the FIFO's: a beat written is readable the next
    cycle but one, one beat a cycle, ``i.ready`` low when ``depth`` entries are held.
    """

    def __init__(self, shape, depth: int):
        self._shape, self._depth = shape, depth
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
            "level": Out(range(depth + 1)),
        })

    depth = property(lambda self: self._depth)

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buf = fifo.SyncFIFOBuffered(width=Shape.cast(self._shape).width,
                                                        depth=self._depth)
        w, r = buf.w_stream, buf.r_stream
        m.d.comb += [
            w.payload.eq(self.i.payload), w.valid.eq(self.i.valid), self.i.ready.eq(w.ready),
            self.o.payload.eq(r.payload), self.o.valid.eq(r.valid), r.ready.eq(self.o.ready),
            self.level.eq(buf.level),
        ]
        return m


class QKGeometry(wiring.Component):
    """The active sizes of a sample, for the attention kind: combinational.

    Members
    -------
    channel : In(1)
        Channel attention (the kept axis is the channels).
    tokens, channels, timesteps : In
        ``N``, ``D`` and ``T``.
    o : Out(geometry_signature)
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int):
        self._lanes = lanes
        super().__init__({
            "channel": In(1),
            "tokens": In(range(longest + 1)),
            "channels": In(range(longest + 1)),
            "timesteps": In(range(timesteps + 1)),
            "o": Out(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
        })

    def elaborate(self, platform):
        m = Module()
        P, lb, o = self._lanes, _log2(self._lanes), self.o
        m.d.comb += [
            o.n_i.eq(Mux(self.channel, self.channels, self.tokens)),
            o.n_j.eq(Mux(self.channel, self.tokens, self.channels)),
            o.groups.eq((o.n_i + P - 1) >> lb),
            o.chunks.eq((o.n_j + P - 1) >> lb),
            o.j_pad.eq(o.chunks << lb),
            o.n_t.eq(self.timesteps),
        ]
        return m


class QKSequencer(wiring.Component):
    """The unit's phases: idle, a forward pass, idle, a backward pass.

    A valid ``fp_i`` beat in IDLE starts a sample (``fwd_start``, clearing ``fp_done``,
    ``bp_done`` and ``error``); a valid ``bp_i`` beat in IDLE after a forward pass not yet run
    backward starts its backward pass (``bwd_start``). ``fwd_finish`` (``bwd_finish``) ends the
    pass and sets ``fp_done`` (``bp_done``) the next cycle. ``flag`` sets ``error``.
    """

    def __init__(self):
        super().__init__({
            "fp_valid": In(1), "bp_valid": In(1), "fwd_finish": In(1), "bwd_finish": In(1),
            "flag": In(1),
            "fwd_start": Out(1), "bwd_start": Out(1), "forward": Out(1), "busy": Out(1),
            "fp_done": Out(1), "bp_done": Out(1), "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        with m.FSM(name="qk") as fsm:
            with m.State("IDLE"):
                with m.If(self.fp_valid):
                    m.d.comb += self.fwd_start.eq(1)
                    m.d.sync += [self.fp_done.eq(0), self.bp_done.eq(0), self.error.eq(0)]
                    m.next = "FWD"
                with m.Elif(self.bp_valid & self.fp_done & ~self.bp_done):
                    m.d.comb += self.bwd_start.eq(1)
                    m.next = "BWD"
            with m.State("FWD"):
                with m.If(self.fwd_finish):
                    m.d.sync += self.fp_done.eq(1)
                    m.next = "IDLE"
            with m.State("BWD"):
                with m.If(self.bwd_finish):
                    m.d.sync += self.bp_done.eq(1)
                    m.next = "IDLE"
        with m.If(self.flag):
            m.d.sync += self.error.eq(1)
        m.d.comb += [self.busy.eq(~fsm.ongoing("IDLE")), self.forward.eq(fsm.ongoing("FWD"))]
        return m


class KStore(wiring.Component):
    """``K`` of every timestep for back-propagation: ``P`` one-bit banks, rows and columns.

    Element ``(i, j)`` of a timestep lies in bank ``(i + j) mod P`` at word ``base + j``, where
    ``base`` is the timestep's and lane group's (``i div P``) first word, so that a row chunk
    (``P`` consecutive ``j`` of one ``i``) and a column group (``P`` consecutive ``i`` of one
    ``j``) each touch every bank once. A bank packs 16 of its one-bit words in a row.

    Members
    -------
    w : In(``{en, base, rot, data}``)
        Write ``data`` (lane ``l``: ``j = base' + l``) as row ``i`` with ``rot = i mod P`` at
        ``base`` (``base'`` plus the chunk's first ``j``).
    row_rd : In(``{base, rot}``)
        Read a row chunk like it, while ``rows``.
    col_rd : In(``{base, rot}``)
        Read a column group: the word ``base`` of every bank, ``rot = j mod P``, while not
        ``rows``.
    rd_data : Out(P)
        The read's spikes, lane ``l`` the ``l``-th of the chunk or group, one cycle after its
        address.
    """

    def __init__(self, *, lanes: int, words: int):
        self._lanes, self._words = lanes, words
        super().__init__({
            "w": In(_k_write_signature(lanes, words)),
            "row_rd": In(_k_read_signature(lanes, words)),
            "col_rd": In(_k_read_signature(lanes, words)),
            "rows": In(1),
            "rd_data": Out(lanes),
        })

    def elaborate(self, platform):
        m = Module()
        P, KW, lb = self._lanes, self._words, _log2(self._lanes)
        rot = Signal(range(P))
        m.d.sync += rot.eq(Mux(self.rows, self.row_rd.rot, self.col_rd.rot))
        data_in = _rot_up(self.w.data, self.w.rot, P)
        raw = Signal(P)
        for b in range(P):
            bank = memory.Memory(shape=16, depth=-(-KW // 16), init=[])
            m.submodules[f"bank{b}"] = bank
            wr, rd = bank.write_port(granularity=1), bank.read_port()
            wa = Signal(range(KW), name=f"wa{b}")
            ra = Signal(range(KW), name=f"ra{b}")
            bit = Signal(4, name=f"bit{b}")
            m.d.comb += [
                wa.eq(self.w.base + _modp(C(b, lb + 1) - self.w.rot, P)),
                ra.eq(Mux(self.rows, self.row_rd.base + _modp(C(b, lb + 1) - self.row_rd.rot, P),
                          self.col_rd.base)),
            ]
            m.d.sync += bit.eq(ra[:4])
            m.d.comb += [
                wr.addr.eq(wa >> 4), wr.en.eq(Mux(self.w.en, C(1, 16) << wa[:4], 0)),
                wr.data.eq(data_in[b].replicate(16)),
                rd.addr.eq(ra >> 4), rd.en.eq(1), raw[b].eq(rd.data.bit_select(bit, 1)),
            ]
        m.d.comb += self.rd_data.eq(_rot_down(raw, rot, P))
        return m


class SpikeMatrix(wiring.Component):
    """The attention spikes ``A[t, i]``, written one at a time, read a timestep at a time.

    Members
    -------
    w_en, w_t, w_i, w_s : In
        Write ``A[w_t, w_i] = w_s``.
    rd0_addr, rd1_addr : In(range(max(T, 2)))
    rd0_data, rd1_data : Out(width)
        Two read ports: ``A[t, ·]`` one cycle after ``t``.
    """

    def __init__(self, *, timesteps: int, width: int):
        self._timesteps, self._width = timesteps, width
        super().__init__({
            "w_en": In(1), "w_t": In(range(max(timesteps, 2))), "w_i": In(range(width)),
            "w_s": In(1),
            "rd0_addr": In(range(max(timesteps, 2))), "rd0_data": Out(width),
            "rd1_addr": In(range(max(timesteps, 2))), "rd1_data": Out(width),
        })

    def elaborate(self, platform):
        m = Module()
        W = self._width
        m.submodules.mem = mem = memory.Memory(shape=W, depth=self._timesteps, init=[])
        wr = mem.write_port(granularity=1)
        rd0, rd1 = mem.read_port(), mem.read_port()
        with m.If(self.w_en):
            m.d.comb += [wr.en.eq(C(1, W) << self.w_i), wr.addr.eq(self.w_t),
                         wr.data.eq(self.w_s.replicate(W))]
        m.d.comb += [rd0.addr.eq(self.rd0_addr), rd0.en.eq(1), self.rd0_data.eq(rd0.data),
                     rd1.addr.eq(self.rd1_addr), rd1.en.eq(1), self.rd1_data.eq(rd1.data)]
        return m


class CountToFP16(wiring.Component):
    """A count up to 2048 as a binary16 bit pattern, exact; combinational.

    Members
    -------
    i : In(12)
    o : Out(16)
    """

    def __init__(self):
        super().__init__({"i": In(12), "o": Out(16)})

    def elaborate(self, platform):
        m = Module()
        top = Signal(range(12))
        for k in range(12):
            with m.If(self.i[k]):
                m.d.comb += top.eq(k)
        norm = (self.i << (C(11, 4) - top)[:4])[:12]
        m.d.comb += self.o.eq(Mux(self.i == 0, 0, Cat(norm[1:11], (top + 15)[:5], C(0, 1))))
        return m


def row_layout(longest: int, timesteps: int) -> data.StructLayout:
    """A kept-axis row's ``Q`` spike count, its ``i`` and ``t``, and ``h = t·I + i``."""
    return data.StructLayout({"count": range(longest + 1), "i": range(longest),
                              "t": range(max(timesteps, 2)), "h": range(timesteps * longest)})


class SpikeRows(wiring.Component):
    """The forward input: ``Q`` and ``K`` by kept-axis rows, ``K`` stored, ``Q`` counted.

    Members
    -------
    i : In(stream.Signature(spike_pair_layout(P)))
        The unit's ``fp_i``; one beat a cycle while ``enable``, until ``n_t`` timesteps are in.
    start, enable : In(1)
        Start a sample; take beats.
    geo : In(geometry_signature)
    a_level : In(range(depth + 1)), row_done : In(1)
        The fill of the attention spike FIFO (``depth`` entries) and a row leaving the
        attention neurons: a row is taken only with room in the FIFO for it and for every row
        in the neurons, and the first beat after a timestep of fewer than ``lif_latency`` plus
        2 beats waits for that timestep's rows to leave the neurons (their ``V``).
    k : Out(``{en, base, rot, data}``)
        ``K`` to :class:`KStore`, the cycle a beat is taken.
    o : Out(stream.Signature(row_layout), always ready)
        A row's ``Q`` count, the cycle its last beat is taken.
    error : Out(1)
        A taken beat's ``last`` disagrees with the sizes.
    row_base, t_words, h_base : Out
        After a sample: ``K``'s words in all (``T·t_words``), a timestep's (``⌈I/P⌉·⌈J/P⌉P``)
        and ``T·I``.
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int, words: int,
                 lif_latency: int, depth: int):
        self._lanes, self._longest, self._timesteps = lanes, longest, timesteps
        self._latency, self._depth = lif_latency, depth
        super().__init__({
            "i": In(stream.Signature(spike_pair_layout(lanes))),
            "start": In(1), "enable": In(1),
            "geo": In(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
            "a_level": In(range(depth + 1)), "row_done": In(1),
            "k": Out(_k_write_signature(lanes, words)),
            "o": Out(stream.Signature(row_layout(longest, timesteps), always_ready=True)),
            "error": Out(1),
            "row_base": Out(range(words + 1)),
            "t_words": Out(range(words + 1)),
            "h_base": Out(range(timesteps * longest + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        P, T, IM, L = self._lanes, self._timesteps, self._longest, self._latency
        lb, geo, beat = _log2(P), self.geo, self.i.payload
        row_base, h_base, t_words = self.row_base, self.h_base, self.t_words
        in_t = Signal(range(T + 1))
        in_i = Signal(range(IM))
        in_c = Signal(range(_groups(IM, P)))
        in_done = Signal()
        row_count = Signal(range(IM + 1))
        t_beats = Signal(range(L + 3))
        short = Signal()
        pending = Signal(range(self._depth + 2))   # rows in the neurons, not yet in the FIFO

        first_beat = (in_i == 0) & (in_c == 0) & (in_t != 0)
        v_hazard = first_beat & short & (pending != 0)
        room = (pending + self.a_level) < self._depth
        m.d.comb += self.i.ready.eq(self.enable & ~in_done & room & ~v_hazard)
        take = self.i.valid & self.i.ready
        row_end = in_c == geo.chunks - 1
        step_end = row_end & (in_i == geo.n_i - 1)
        group_end = (in_i[:lb] == P - 1 if lb else C(1, 1)) | (in_i == geo.n_i - 1)
        j_mask = _lanes_below(in_c << lb, geo.n_j, P)
        q_bits = Signal(P)
        m.d.comb += q_bits.eq(beat.q & j_mask)
        popcount = sum(q_bits[k] for k in range(P))

        with m.If(self.start):
            m.d.sync += [in_t.eq(0), in_i.eq(0), in_c.eq(0), in_done.eq(0), row_count.eq(0),
                         row_base.eq(0), h_base.eq(0), t_beats.eq(0), short.eq(0)]
        with m.Elif(take):
            m.d.comb += self.error.eq(beat.last != step_end)
            with m.If(row_end):
                m.d.sync += [row_count.eq(0), in_c.eq(0), in_i.eq(in_i + 1)]
                with m.If(group_end):
                    m.d.sync += row_base.eq(row_base + geo.j_pad)
            with m.Else():
                m.d.sync += [row_count.eq(row_count + popcount), in_c.eq(in_c + 1)]
            with m.If(step_end):
                m.d.sync += [in_i.eq(0), in_t.eq(in_t + 1), h_base.eq(h_base + geo.n_i),
                             t_beats.eq(0), short.eq(t_beats + 1 < L + 2)]
                with m.If(in_t == 0):
                    m.d.sync += t_words.eq(row_base + geo.j_pad)
                with m.If(in_t == geo.n_t - 1):
                    m.d.sync += in_done.eq(1)
            with m.Elif(t_beats < L + 2):
                m.d.sync += t_beats.eq(t_beats + 1)
        m.d.sync += pending.eq(pending + (take & row_end) - self.row_done)

        m.d.comb += [
            self.k.en.eq(take), self.k.base.eq(row_base + (in_c << lb)),
            self.k.rot.eq(_modp(in_i, P)), self.k.data.eq(beat.k & j_mask),
            self.o.valid.eq(take & row_end), self.o.payload.count.eq(row_count + popcount),
            self.o.payload.i.eq(in_i), self.o.payload.t.eq(in_t),
            self.o.payload.h.eq(h_base + in_i),
        ]
        return m


class AttentionNeurons(wiring.Component):
    """The attention neurons' forward step: ``A[t, i] = LIF(Σ_j Q[t, i, j])``, one row a cycle.

    Members
    -------
    i : In(stream.Signature(row_layout), always ready)
        A row's ``Q`` count (:class:`SpikeRows`); rows of a timestep in ``i`` order, a row's
        ``V`` of the timestep before written back before its next row comes in.
    c_v_th, c_v_reset, c_inv_tau : In(16)
    h_en, h_addr, h_data : Out
        ``H[t, i]`` to the memory kept for back-propagation, at ``h``.
    a_en, a_t, a_i, a_s : Out
        ``A[t, i]``, to :class:`SpikeMatrix`.
    o : Out(stream.Signature(1))
        ``A[t, i]`` again, to the attention spike FIFO; ``o.ready`` is not looked at (the
        FIFO has room by :class:`SpikeRows`'s count).

    A row's outputs follow its input ``latency`` cycles later.
    """

    def __init__(self, *, longest: int, timesteps: int, reset: str):
        T, IM = timesteps, longest
        self._longest, self._timesteps = longest, timesteps
        self._lif = LIFUpdate(lanes=1, reset=reset, tag_width=3 * max(T * IM, 2).bit_length())
        super().__init__({
            "i": In(stream.Signature(row_layout(longest, timesteps), always_ready=True)),
            "c_v_th": In(16), "c_v_reset": In(16), "c_inv_tau": In(16),
            "h_en": Out(1), "h_addr": Out(range(T * IM)), "h_data": Out(16),
            "a_en": Out(1), "a_t": Out(range(max(T, 2))), "a_i": Out(range(IM)), "a_s": Out(1),
            "o": Out(stream.Signature(1)),
        })

    @property
    def latency(self) -> int:
        """Cycles from a row in to its spike out."""
        return 1 + self._lif.latency

    def elaborate(self, platform):
        m = Module()
        m.submodules.lif = lif = self._lif
        m.submodules.count = count = CountToFP16()
        m.submodules.vmem = vmem = memory.Memory(shape=16, depth=self._longest, init=[])
        v_wr = vmem.write_port()
        v_rd = vmem.read_port(transparent_for=(v_wr,))
        row = Signal(self.i.payload.shape())
        go = Signal()
        m.d.sync += [go.eq(self.i.valid), row.eq(self.i.payload)]
        m.d.comb += [v_rd.addr.eq(self.i.payload.i), v_rd.en.eq(1)]
        m.d.comb += [
            lif.c_v_th.eq(self.c_v_th), lif.c_v_reset.eq(self.c_v_reset),
            lif.c_inv_tau.eq(self.c_inv_tau),
            count.i.eq(row.count),
            lif.i_valid.eq(go),
            lif.i_x.eq(count.o),
            lif.i_v.eq(Mux(row.t == 0, self.c_v_reset, v_rd.data)),
            lif.i_tag.eq(Cat(row.i, row.t, row.h)),
        ]
        ib, tb, hb = len(row.i), len(row.t), len(row.h)
        o_i, o_t, o_h = lif.o_tag[:ib], lif.o_tag[ib:ib + tb], lif.o_tag[ib + tb:ib + tb + hb]
        with m.If(lif.o_valid):
            m.d.comb += [
                v_wr.en.eq(1), v_wr.addr.eq(o_i), v_wr.data.eq(lif.o_v),
                self.h_en.eq(1), self.h_addr.eq(o_h), self.h_data.eq(lif.o_h),
                self.a_en.eq(1), self.a_t.eq(o_t), self.a_i.eq(o_i), self.a_s.eq(lif.o_s),
                self.o.valid.eq(1), self.o.payload.eq(lif.o_s),
            ]
        return m


class MaskedRows(wiring.Component):
    """``X′``: each row of ``K`` read back from :class:`KStore` and masked by its attention
    spike.

    Members
    -------
    a : In(stream.Signature(1))
        The rows' attention spikes, in the order of the rows.
    start : In(1)
        Start a sample (drops a spike held).
    geo : In(geometry_signature)
    k : Out(``{base, rot}``), k_data : In(P)
        The row chunk read from :class:`KStore` and its spikes a cycle later.
    o : Out(stream.Signature(spike_layout(P)))
        ``X′`` beats, one a cycle, into a FIFO of 4 whose ``level`` comes back: a beat is
        issued only with room for it (``o.ready`` is not looked at).
    done : Out(1)
        All of the sample's beats are out.
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int, words: int):
        self._lanes, self._longest, self._timesteps = lanes, longest, timesteps
        super().__init__({
            "a": In(stream.Signature(1)),
            "start": In(1),
            "geo": In(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
            "k": Out(_k_read_signature(lanes, words)),
            "k_data": In(lanes),
            "o": Out(stream.Signature(spike_layout(lanes))),
            "level": In(range(5)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, IM, geo = self._lanes, self._longest, self.geo
        lb = _log2(P)
        out_t = Signal(range(self._timesteps + 1))
        out_i = Signal(range(IM))
        out_c = Signal(range(_groups(IM, P)))
        out_base = Signal(len(self.k.base))
        out_done = Signal()
        cur_valid = Signal()
        cur_a = Signal()
        inflight = Signal(range(3))
        issue = Signal()
        row_end = out_c == geo.chunks - 1
        step_end = row_end & (out_i == geo.n_i - 1)
        group_end = (out_i[:lb] == P - 1 if lb else C(1, 1)) | (out_i == geo.n_i - 1)
        m.d.comb += issue.eq(cur_valid & (self.level + inflight < 4))
        with m.If(self.start):
            m.d.sync += [out_t.eq(0), out_i.eq(0), out_c.eq(0), out_base.eq(0),
                         out_done.eq(0), cur_valid.eq(0)]
        with m.Elif(issue):
            with m.If(row_end):
                m.d.sync += [out_c.eq(0), out_i.eq(out_i + 1)]
                with m.If(group_end):
                    m.d.sync += out_base.eq(out_base + geo.j_pad)
                with m.If(step_end):
                    m.d.sync += [out_i.eq(0), out_t.eq(out_t + 1)]
                    with m.If(out_t == geo.n_t - 1):
                        m.d.sync += out_done.eq(1)
            with m.Else():
                m.d.sync += out_c.eq(out_c + 1)
        next_row = ~cur_valid | (issue & row_end)
        with m.If(~self.start & next_row):
            m.d.comb += self.a.ready.eq(1)
            m.d.sync += [cur_valid.eq(self.a.valid), cur_a.eq(self.a.payload)]
        written, a_d, last_d = Signal(), Signal.like(cur_a), Signal()
        m.d.sync += [written.eq(issue), a_d.eq(cur_a), last_d.eq(step_end),
                     inflight.eq(inflight + issue - written)]
        m.d.comb += [
            self.k.base.eq(out_base + (out_c << lb)), self.k.rot.eq(_modp(out_i, P)),
            self.o.valid.eq(written),
            self.o.payload.x.eq(self.k_data & a_d.replicate(P)),
            self.o.payload.last.eq(last_d),
            self.done.eq(out_done & (inflight == 0)),
        ]
        return m


def accumulate_layout(lanes: int, longest: int) -> data.StructLayout:
    """A ``δX′`` beat to add into the ``δA`` lane vector at ``addr``; ``first`` starts it from
    zero, ``mask`` marks the lanes of real rows."""
    return data.StructLayout({"first": 1, "addr": range(2 * _groups(longest, lanes)),
                              "g": 16 * lanes, "mask": lanes})


class ColumnScan(wiring.Component):
    """The backward input: ``δX′`` by summed-axis rows, ``δK`` out, ``δA`` additions issued.

    Timesteps descending; each timestep waits until its parity's ``δA`` vectors are free
    (``acc_full``), loads ``A[t]`` and takes ``δX′[·, j]`` for ``j`` ascending, one lane group
    ``g`` a cycle. A column has at least ``acc_latency + 1`` slots, so that the ``δA`` of a
    group is written back before the next column reads it.

    Members
    -------
    i : In(stream.Signature(error_layout(P)))
        The unit's ``bp_i``; taken only with room in ``dk`` and ``acc_full`` clear.
    dk : Out(stream.Signature(error_layout(P)))
        ``δK``: ``δX′`` where ``A`` fired, else +0, the cycle a beat is taken.
    start : In(1)
        Start a backward pass.
    geo : In(geometry_signature)
    row_base, t_words : In
        From :class:`SpikeRows`: ``K``'s words after the last timestep and a timestep's.
    a_addr : Out, a_data : In
        ``A[t]`` from :class:`SpikeMatrix`.
    k : Out(``{base, rot}``)
        The column group of ``K`` of the beat, to :class:`KStore`.
    acc : Out(stream.Signature(accumulate_layout), always ready)
        The beat, to :class:`DeltaAccumulator`.
    acc_full : Out(2)
        ``δA`` of a timestep of that parity is complete; ``clear`` with ``clear_par`` clears it.
    settling : Out(1)
        The last ``δA`` additions are still being written back.
    error : Out(1)
        A taken beat's ``last`` disagrees with the sizes.
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int, words: int,
                 acc_latency: int):
        self._lanes, self._longest, self._timesteps = lanes, longest, timesteps
        self._acc_latency = acc_latency
        GM = _groups(longest, lanes)
        super().__init__({
            "i": In(stream.Signature(error_layout(lanes))),
            "dk": Out(stream.Signature(error_layout(lanes))),
            "start": In(1),
            "geo": In(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
            "row_base": In(range(words + 1)), "t_words": In(range(words + 1)),
            "a_addr": Out(range(max(timesteps, 2))), "a_data": In(GM * lanes),
            "k": Out(_k_read_signature(lanes, words)),
            "acc": Out(stream.Signature(accumulate_layout(lanes, longest), always_ready=True)),
            "acc_full": Out(2), "clear": In(1), "clear_par": In(1),
            "settling": Out(1),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, IM, geo, la = self._lanes, self._longest, self.geo, self._acc_latency
        lb, GM = _log2(P), _groups(IM, P)
        hazard = la + 1
        words = len(self.k.base)
        t = Signal(range(max(self._timesteps, 2)))
        j = Signal(range(IM))
        slot = Signal(range(max(GM, hazard) + 1))
        kbase = Signal(words)               # K word of (0, 0) at timestep t
        word = Signal(words)                # K word of (slot·P, j)
        a_vec = Signal(GM * P)
        wait = Signal(range(la + 4))
        run = Signal()
        slots = Signal(range(max(GM, hazard) + 1))
        m.d.comb += slots.eq(Mux(geo.groups > hazard, geo.groups, hazard))
        slot_issue = slot < geo.groups
        par = t[0]
        full = self.acc_full
        m.d.comb += self.i.ready.eq(run & slot_issue & self.dk.ready)
        take = self.i.valid & self.i.ready
        last = (j == geo.n_j - 1) & (slot == geo.groups - 1)
        m.d.comb += self.a_addr.eq(t)
        with m.FSM(name="bwd_in"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(geo.n_t - 1), kbase.eq(self.row_base - self.t_words),
                                 full.eq(0), wait.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(~full.bit_select(par, 1)):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [a_vec.eq(self.a_data), j.eq(0), slot.eq(0), word.eq(kbase)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += run.eq(1)
                with m.If(take & last):
                    m.d.sync += [full.bit_select(par, 1).eq(1), wait.eq(la + 3)]
                    with m.If(t == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [t.eq(t - 1), kbase.eq(kbase - self.t_words)]
                        m.next = "WAIT"
                with m.Elif(~slot_issue | take):
                    with m.If(slot == slots - 1):
                        m.d.sync += [slot.eq(0), j.eq(j + 1), word.eq(kbase + j + 1)]
                    with m.Else():
                        m.d.sync += [slot.eq(slot + 1), word.eq(word + geo.j_pad)]
        m.d.comb += self.error.eq(take & (self.i.payload.last != last))
        with m.If(wait != 0):
            m.d.sync += wait.eq(wait - 1)
        with m.If(self.clear):
            m.d.sync += full.bit_select(self.clear_par, 1).eq(0)
        m.d.comb += self.settling.eq(wait != 0)

        i_mask = _lanes_below(slot << lb, geo.n_i, P)
        a_mask = Signal(P)
        m.d.comb += a_mask.eq(a_vec.word_select(slot, P) & i_mask)
        g = self.i.payload.value
        m.d.comb += [
            self.dk.valid.eq(self.i.valid & run & slot_issue),
            self.dk.payload.value.eq(Cat(*(Mux(a_mask[k], lane(g, k), 0) for k in range(P)))),
            self.dk.payload.last.eq(last),
            self.k.base.eq(word), self.k.rot.eq(_modp(j, P)),
            self.acc.valid.eq(take), self.acc.payload.first.eq(j == 0),
            self.acc.payload.addr.eq(Mux(par, GM, 0) + slot), self.acc.payload.g.eq(g),
            self.acc.payload.mask.eq(i_mask),
        ]
        return m


class DeltaAccumulator(wiring.Component):
    """``δA[i] += δX′[i, j]`` where ``K[i, j]``, ``P`` lanes side by side, in two banks of
    ``⌈I/P⌉`` lane vectors (one for each timestep parity).

    Members
    -------
    i : In(stream.Signature(accumulate_layout), always ready)
        A beat to add at ``addr``.
    k : In(P)
        The lanes' ``K`` spikes, one cycle after the beat (from :class:`KStore`): lanes
        without one keep their old value.
    rd_addr : In, rd_data : Out(16·P)
        A second read port for the BPTT pass, one cycle latency.

    A beat's sum is written back ``latency + 1`` cycles after it came in; a beat at the same
    ``addr`` may come in after that, not before.
    """

    def __init__(self, *, lanes: int, longest: int):
        self._lanes, self._longest = lanes, longest
        GM = _groups(longest, lanes)
        super().__init__({
            "i": In(stream.Signature(accumulate_layout(lanes, longest), always_ready=True)),
            "k": In(lanes),
            "rd_addr": In(range(2 * GM)), "rd_data": Out(16 * lanes),
        })

    @property
    def latency(self) -> int:
        """The adders' latency."""
        return FP16Adder.LATENCY

    def elaborate(self, platform):
        m = Module()
        P, GM = self._lanes, _groups(self._longest, self._lanes)
        m.submodules.mem = mem = memory.Memory(shape=16 * P, depth=2 * GM, init=[])
        wr = mem.write_port()
        rd = mem.read_port(transparent_for=(wr,))
        rd_pass = mem.read_port()
        m.submodules.add = add = FP16Vector(FP16Adder, P)
        la, beat = add.latency, self.i.payload
        assert la == self.latency
        m.d.comb += [rd.addr.eq(beat.addr), rd.en.eq(1)]
        s_valid, s_first = Signal(), Signal()
        s_g, s_mask, s_addr = Signal.like(beat.g), Signal.like(beat.mask), Signal.like(beat.addr)
        m.d.sync += [s_valid.eq(self.i.valid), s_first.eq(beat.first), s_g.eq(beat.g),
                     s_mask.eq(beat.mask), s_addr.eq(beat.addr)]
        s_old = Signal(16 * P)
        m.d.comb += s_old.eq(Mux(s_first, 0, rd.data))
        k_col = Signal(P)
        m.d.comb += k_col.eq(self.k & s_mask)
        m.submodules.w_old = w_old = Delay(16 * P, la)
        m.submodules.w_k = w_k = Delay(P, la)
        m.submodules.w_addr = w_addr = Delay(s_addr.shape(), la)
        m.d.comb += [
            *add.issue(s_valid, s_old, s_g),
            w_old.i.eq(s_old), w_k.i.eq(k_col), w_addr.i.eq(s_addr),
            wr.en.eq(add.o_valid), wr.addr.eq(w_addr.o),
            wr.data.eq(Cat(*(Mux(w_k.o[k], lane(add.o_result, k), lane(w_old.o, k))
                             for k in range(P)))),
            rd_pass.addr.eq(self.rd_addr), rd_pass.en.eq(1), self.rd_data.eq(rd_pass.data),
        ]
        return m


def dq_write_signature(lanes: int, longest: int) -> wiring.Signature:
    """A write of ``∂L/∂(ΣQ)`` into :class:`DeltaQOut`'s lane vectors: ``en`` a lane mask."""
    return wiring.Signature({"en": Out(lanes), "addr": Out(range(2 * _groups(longest, lanes))),
                             "data": Out(16 * lanes)})


class BPTTPass(wiring.Component):
    """The attention neurons' BPTT step, one neuron a cycle, a timestep at a time.

    Timesteps descending; a timestep starts once its ``δA`` is complete (``acc_full``, not
    ``settling``) and its parity's ``δQ`` vectors have gone out (``dq_full`` clear), runs
    ``I`` neurons in ``I`` cycles (then clears ``acc_full``), and sets ``dq_full`` when the
    last result is written.

    Members
    -------
    start : In(1)
    geo : In(geometry_signature)
    h_base : In
        ``T·I`` (:class:`SpikeRows`).
    c_v_th, c_v_reset, c_inv_tau, c_decay : In(16)
    acc_full : In(2), settling : In(1), acc_clear, acc_clear_par : Out(1)
        From and to :class:`ColumnScan`.
    acc_addr : Out, acc_data : In
        ``δA`` (:class:`DeltaAccumulator`), ``h_addr``/``h_data`` ``H``, ``a_addr``/``a_data``
        ``A[t]`` (:class:`SpikeMatrix`): read ports of one cycle latency.
    dq : Out(dq_write_signature)
        ``∂L/∂(ΣQ)[i]``, to :class:`DeltaQOut`.
    dq_full : Out(2), clear, clear_par : In(1)
        ``δQ`` of a timestep of that parity is ready; cleared by :class:`DeltaQOut`.
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int, reset: str,
                 detach_reset: bool, surrogate):
        self._lanes, self._longest, self._timesteps = lanes, longest, timesteps
        self._bptt = BPTTUpdate(lanes=1, reset=reset, detach_reset=detach_reset,
                                surrogate=surrogate, tag_width=max(longest, 2).bit_length())
        T, IM, GM = timesteps, longest, _groups(longest, lanes)
        super().__init__({
            "start": In(1),
            "geo": In(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
            "h_base": In(range(T * IM + 1)),
            "c_v_th": In(16), "c_v_reset": In(16), "c_inv_tau": In(16), "c_decay": In(16),
            "acc_full": In(2), "settling": In(1), "acc_clear": Out(1), "acc_clear_par": Out(1),
            "acc_addr": Out(range(2 * GM)), "acc_data": In(16 * lanes),
            "h_addr": Out(range(T * IM)), "h_data": In(16),
            "a_addr": Out(range(max(T, 2))), "a_data": In(GM * lanes),
            "dq": Out(dq_write_signature(lanes, longest)),
            "dq_full": Out(2), "clear": In(1), "clear_par": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, T, IM, geo = self._lanes, self._timesteps, self._longest, self.geo
        lb, GM = _log2(P), _groups(IM, P)
        m.submodules.bptt = bptt = self._bptt
        m.submodules.emem = emem = memory.Memory(shape=16, depth=IM, init=[])
        e_wr = emem.write_port()
        e_rd = emem.read_port(transparent_for=(e_wr,))
        m.d.comb += [bptt.c_v_th.eq(self.c_v_th), bptt.c_v_reset.eq(self.c_v_reset),
                     bptt.c_inv_tau.eq(self.c_inv_tau), bptt.c_decay.eq(self.c_decay)]
        t = Signal(range(max(T, 2)))
        hbase = Signal(range(T * IM + 1))
        i = Signal(range(IM))
        issue = Signal()
        inflight = Signal(range(bptt.latency + 3))
        s_vec = Signal(GM * P)
        par = t[0]
        full = self.dq_full
        m.d.comb += self.a_addr.eq(t)
        with m.FSM(name="pass"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [t.eq(geo.n_t - 1), hbase.eq(self.h_base - geo.n_i), full.eq(0)]
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(self.acc_full.bit_select(par, 1) & ~full.bit_select(par, 1)
                          & ~self.settling):
                    m.next = "LOAD"
            with m.State("LOAD"):
                m.d.sync += [s_vec.eq(self.a_data), i.eq(0)]
                m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += issue.eq(1)
                m.d.sync += i.eq(i + 1)
                with m.If(i == geo.n_i - 1):
                    m.d.comb += [self.acc_clear.eq(1), self.acc_clear_par.eq(par)]
                    m.next = "DRAIN"
            with m.State("DRAIN"):
                with m.If((inflight == 0) & ~issue):
                    m.d.sync += full.bit_select(par, 1).eq(1)
                    with m.If(t == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [t.eq(t - 1), hbase.eq(hbase - geo.n_i)]
                        m.next = "WAIT"
        with m.If(self.clear):
            m.d.sync += full.bit_select(self.clear_par, 1).eq(0)
        m.d.comb += [
            self.acc_addr.eq(Mux(par, GM, 0) + (i >> lb)),
            self.h_addr.eq(hbase + i),
            e_rd.addr.eq(i), e_rd.en.eq(1),
        ]
        valid, at = Signal(), Signal.like(i)
        m.d.sync += [valid.eq(issue), at.eq(i), inflight.eq(inflight + issue - bptt.o_valid)]
        m.d.comb += [
            bptt.i_valid.eq(valid),
            bptt.i_g.eq((self.acc_data >> (_modp(at, P) * 16))[:16]),
            bptt.i_h.eq(self.h_data),
            bptt.i_s.eq(s_vec.bit_select(at, 1)),
            bptt.i_eps.eq(Mux(t == geo.n_t - 1, 0, e_rd.data)),
            bptt.i_tag.eq(at),
        ]
        r_i = bptt.o_tag[:len(i)]
        with m.If(bptt.o_valid):
            m.d.comb += [
                e_wr.en.eq(1), e_wr.addr.eq(r_i), e_wr.data.eq(bptt.o_eps),
                self.dq.en.eq(C(1, P) << _modp(r_i, P)),
                self.dq.addr.eq(Mux(par, GM, 0) + (r_i >> lb)),
                self.dq.data.eq(bptt.o_dx.replicate(P)),
            ]
        return m


class DeltaQOut(wiring.Component):
    """``δQ``: ``∂L/∂(ΣQ)`` of a timestep broadcast along the summed axis.

    Holds the ``∂L/∂(ΣQ)`` lane vectors of two timesteps (by parity, written through ``w``);
    timesteps descending, once a timestep's are ready (``dq_full``) sends ``J·⌈I/P⌉`` beats
    (``j`` ascending, then lane groups), one a cycle with room in the FIFO of 4 behind ``o``
    (whose ``level`` comes back; ``o.ready`` is not looked at), then clears ``dq_full``.

    Members
    -------
    start : In(1)
    geo : In(geometry_signature)
    dq_full : In(2), clear, clear_par : Out(1)
        From and to :class:`BPTTPass`.
    w : In(dq_write_signature)
    o : Out(stream.Signature(error_layout(P)))
    level : In(range(5))
    dk_empty : In(1)
    done : Out(1)
        The backward pass is over: every beat is out and both FIFOs (``δQ`` and ``δK``) are
        empty.
    """

    def __init__(self, *, lanes: int, longest: int, timesteps: int):
        self._lanes, self._longest, self._timesteps = lanes, longest, timesteps
        super().__init__({
            "start": In(1),
            "geo": In(geometry_signature(lanes=lanes, longest=longest, timesteps=timesteps)),
            "dq_full": In(2), "clear": Out(1), "clear_par": Out(1),
            "w": In(dq_write_signature(lanes, longest)),
            "o": Out(stream.Signature(error_layout(lanes))),
            "level": In(range(5)), "dk_empty": In(1),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, IM, geo = self._lanes, self._longest, self.geo
        lb, GM = _log2(P), _groups(IM, P)
        m.submodules.mem = mem = memory.Memory(shape=16 * P, depth=2 * GM, init=[])
        wr = mem.write_port(granularity=16)
        rd = mem.read_port()
        m.d.comb += [wr.en.eq(self.w.en), wr.addr.eq(self.w.addr), wr.data.eq(self.w.data)]
        t = Signal(range(max(self._timesteps, 2)))
        j = Signal(range(IM))
        g = Signal(range(GM))
        issue = Signal()
        inflight = Signal(range(3))
        par = t[0]
        last = (j == geo.n_j - 1) & (g == geo.groups - 1)
        with m.FSM(name="dq"):
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += t.eq(geo.n_t - 1)
                    m.next = "WAIT"
            with m.State("WAIT"):
                with m.If(self.dq_full.bit_select(par, 1)):
                    m.d.sync += [j.eq(0), g.eq(0)]
                    m.next = "RUN"
            with m.State("RUN"):
                m.d.comb += issue.eq(self.level + inflight < 4)
                with m.If(issue):
                    with m.If(last):
                        m.d.comb += [self.clear.eq(1), self.clear_par.eq(par)]
                        with m.If(t == 0):
                            m.next = "DONE"
                        with m.Else():
                            m.d.sync += t.eq(t - 1)
                            m.next = "WAIT"
                    with m.Elif(g == geo.groups - 1):
                        m.d.sync += [g.eq(0), j.eq(j + 1)]
                    with m.Else():
                        m.d.sync += g.eq(g + 1)
            with m.State("DONE"):
                with m.If((inflight == 0) & (self.level == 0) & self.dk_empty):
                    m.d.comb += self.done.eq(1)
                    m.next = "IDLE"
        written, mask, last_d = Signal(), Signal(P), Signal()
        m.d.sync += [written.eq(issue), mask.eq(_lanes_below(g << lb, geo.n_i, P)),
                     last_d.eq(last), inflight.eq(inflight + issue - written)]
        m.d.comb += [rd.addr.eq(Mux(par, GM, 0) + g), rd.en.eq(1)]
        m.d.comb += [
            self.o.valid.eq(written),
            self.o.payload.value.eq(Cat(*(Mux(mask[k], lane(rd.data, k), 0)
                                          for k in range(P)))),
            self.o.payload.last.eq(last_d),
        ]
        return m
