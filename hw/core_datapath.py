# SPDX-License-Identifier: Apache-2.0
"""The datapath of a training core: its memories, its FP16 units and the LIF and BPTT passes,
driven by the schedules of the core's engines (:mod:`spikeforge.hw.core_engines`).

The datapath executes what the engines issue. Its memory ports are shared by phase (the
sequencer's :class:`~spikeforge.hw.core_sequencer.Phase`) and by engine, in a fixed order of
precedence, and the bus decoder's accesses (only while the core is idle) take precedence over
all; the adders and multipliers are shared the same way: the FP accumulation, a shortcut's sum,
``Wᵀ·δX`` and the update each use them in their own phases.
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.regmap import Counter

from .core_engines import chunk_bits, error_layout
from .core_sequencer import Phase
from .fp16 import FP16Adder, FP16Multiplier
from .lanes import Delay, FP16Vector, lane
from .neuron import BPTTUpdate, LIFUpdate
from .skewmem import SkewedMemory

__all__ = ["CoreDatapath", "ErrorSums", "PortSet", "StepState", "WeightStore", "ports_of"]


def _phase(phase, *phases):
    return Cat(*(phase == p for p in phases)).any()


def ports_of(component: wiring.Component, names) -> wiring.Signature:
    """The signature of the members ``names`` of ``component``, as the component has them."""
    members = component.signature.members
    return wiring.Signature({name: members[name] for name in names})


class PortSet:
    """The members ``names`` of ``component`` as an interface of their own, to
    :func:`~amaranth.lib.wiring.connect` with a port of signature :func:`ports_of`."""

    def __init__(self, component: wiring.Component, names):
        self.signature = ports_of(component, names)
        for name in names:
            setattr(self, name, getattr(component, name))


class WeightStore(wiring.Component):
    """The weights and accumulated gradients of a core, and who reads and writes them when.

    Reads of ``W``: the FP accumulation's rows, ``Wᵀ·δX``'s columns, the update's rows; of
    ``ΔW``: WG's rows, the update's. Writes of ``ΔW``: WG's sums, then the update's and the
    clear's zeros; of ``W``: the update's results. A bus access overrides them all.
    ``bump``: the reads and writes of :class:`~spikeforge.regmap.Counter`.

    ``phase`` is the sequencer's; ``issuer``, ``columns``, ``wg`` and ``walker`` are the
    engines' schedules (``schedules``: their signatures, :attr:`CoreDatapath.USES`), ``w_req`` and
    ``g_req`` the bus decoder's requests (``requests``: their layouts).
    """

    SCHEDULES = ("issuer", "columns", "wg", "walker")

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, schedules: dict,
                 requests: dict):
        self._sizes = dict(lanes=lanes, neurons=neurons, inputs=fan_in)
        CH = neurons // lanes
        super().__init__({
            "phase": In(Phase),
            **{name: In(schedules[name]) for name in self.SCHEDULES},
            **{name: In(requests[name]) for name in ("w_req", "g_req")},
            "wg_valid": In(1), "wg_value": In(16 * lanes),
            "up_valid": In(1), "up_row": In(range(fan_in + 1)), "up_chunk": In(range(CH + 1)),
            "up_value": In(16 * lanes),
            "wdata": In(16), "w_data": Out(16 * lanes), "g_data": Out(16 * lanes),
            "bump": Out(len(Counter)),
        })

    def elaborate(self, platform):
        m = Module()
        p = self
        P = self._sizes["lanes"]
        m.submodules.wmem = wmem = SkewedMemory(**self._sizes)
        m.submodules.gmem = gmem = SkewedMemory(**self._sizes)
        m.d.comb += [self.w_data.eq(wmem.rd_data), self.g_data.eq(gmem.rd_data)]
        phase = self.phase
        acc_fp = _phase(phase, Phase.FP_ACC, Phase.FP_DRAIN)
        up_issue = p.walker.issue & (phase == Phase.UPDATE)
        clr_issue = p.walker.issue & (phase == Phase.CLEAR)
        bump = self.bump

        def read(mem, counter, col, major, minor):
            m.d.comb += [mem.rd_en.eq(1), mem.rd_col.eq(col), mem.rd_major.eq(major),
                         mem.rd_minor.eq(minor), bump[counter].eq(1)]

        def write(mem, counter, major, minor, value):
            m.d.comb += [mem.wr_en.eq(1), mem.wr_major.eq(major), mem.wr_minor.eq(minor),
                         mem.wr_data.eq(value), mem.wr_mask.eq(-1), bump[counter].eq(1)]

        with m.If(p.issuer.valid & acc_fp):
            read(wmem, Counter.W_READS, 0, p.issuer.row, p.issuer.chunk)
        with m.Elif(p.columns.issue):
            read(wmem, Counter.W_READS, 1, p.columns.n, p.columns.slot)
        with m.Elif(up_issue):
            read(wmem, Counter.W_READS, 0, p.walker.row, p.walker.chunk)
        with m.If(p.wg.issue):
            read(gmem, Counter.G_READS, 0, p.wg.row, p.wg.slot)
        with m.Elif(up_issue):
            read(gmem, Counter.G_READS, 0, p.walker.row, p.walker.chunk)
        with m.If(self.wg_valid):
            write(gmem, Counter.G_WRITES, p.wg.row_d, p.wg.chunk_d, self.wg_value)
        with m.Elif(up_issue | clr_issue):
            write(gmem, Counter.G_WRITES, p.walker.row, p.walker.chunk, 0)
        with m.If(self.up_valid):
            write(wmem, Counter.W_WRITES, self.up_row, self.up_chunk, self.up_value)

        for mem, req in ((wmem, self.w_req), (gmem, self.g_req)):
            with m.If(req.en & req.we):
                m.d.comb += [mem.wr_en.eq(~req.probe), mem.wr_major.eq(req.major),
                             mem.wr_minor.eq(req.minor), mem.wr_data.eq(Cat(*([self.wdata] * P))),
                             mem.wr_mask.eq(1 << req.lane)]
            with m.Elif(req.en):
                m.d.comb += [mem.rd_en.eq(1), mem.rd_col.eq(0), mem.rd_major.eq(req.major),
                             mem.rd_minor.eq(req.minor)]
        return m


class StepState(wiring.Component):
    """What back-propagation needs of each step, ``chunks`` lane vectors a step (addresses
    ``step · chunks + chunk``): the charges ``H`` and spikes ``S`` of every step, and of every
    token its membranes ``V`` and BPTT carries ``ε``.

    The LIF pass reads ``V`` at ``v_addr`` (``v_data`` a cycle later) and writes ``V``, ``H``
    and ``S`` (``lif_valid``); the BPTT pass reads ``H``, ``S`` and ``ε`` (``bp_read``) and
    writes ``ε`` (``eps_valid``); a bus read of ``H`` and ``S`` (``bus_read``) goes first.
    """

    def __init__(self, *, neurons: int, lanes: int, timesteps: int):
        P, self._P = lanes, lanes
        self._depth = timesteps * (neurons // lanes)
        addr = range(self._depth + neurons // lanes + 1)
        super().__init__({
            "v_addr": In(addr), "v_data": Out(16 * P),
            "lif_valid": In(1), "lif_step": In(addr), "lif_token": In(addr),
            "v": In(16 * P), "h": In(16 * P), "s": In(P),
            "bp_read": In(1), "bp_step": In(addr), "bp_token": In(addr),
            "h_data": Out(16 * P), "s_data": Out(P), "e_data": Out(16 * P),
            "eps_valid": In(1), "eps_addr": In(addr), "eps": In(16 * P),
            "bus_read": In(1), "bus_addr": In(addr),
        })

    def elaborate(self, platform):
        m = Module()
        P, depth = self._P, self._depth
        ports = {}
        for name, shape in (("v", 16 * P), ("h", 16 * P), ("s", P), ("e", 16 * P)):
            m.submodules[f"{name}mem"] = store = memory.Memory(shape=shape, depth=depth, init=[])
            ports[name] = store.read_port(), store.write_port()
        (v_rd, v_wr), (h_rd, h_wr), (s_rd, s_wr), (e_rd, e_wr) = ports.values()
        m.d.comb += [v_rd.en.eq(1), v_rd.addr.eq(self.v_addr), self.v_data.eq(v_rd.data),
                     self.h_data.eq(h_rd.data), self.s_data.eq(s_rd.data),
                     self.e_data.eq(e_rd.data)]
        with m.If(self.lif_valid):
            m.d.comb += [v_wr.en.eq(1), v_wr.addr.eq(self.lif_token), v_wr.data.eq(self.v),
                         h_wr.en.eq(1), h_wr.addr.eq(self.lif_step), h_wr.data.eq(self.h),
                         s_wr.en.eq(1), s_wr.addr.eq(self.lif_step), s_wr.data.eq(self.s)]
        with m.If(self.eps_valid):
            m.d.comb += [e_wr.en.eq(1), e_wr.addr.eq(self.eps_addr), e_wr.data.eq(self.eps)]
        with m.If(self.bus_read):
            m.d.comb += [h_rd.en.eq(1), h_rd.addr.eq(self.bus_addr),
                         s_rd.en.eq(1), s_rd.addr.eq(self.bus_addr)]
        with m.Elif(self.bp_read):
            m.d.comb += [h_rd.en.eq(1), h_rd.addr.eq(self.bp_step),
                         s_rd.en.eq(1), s_rd.addr.eq(self.bp_step),
                         e_rd.en.eq(1), e_rd.addr.eq(self.bp_token)]
        return m


class ErrorSums(wiring.Component):
    """The sums ``Wᵀ·δX`` of a step's input errors, ``⌈inputs / lanes⌉`` lane vectors.

    ``read`` chunk ``read_addr`` (``data`` a cycle later) for a sum; ``send`` reads chunk
    ``send_addr`` out and clears it; a sum's result (``sum_valid``) is written to ``sum_addr``.
    A split layer's sums start from another core's partial sums: while ``receive``, ``psum_i``'s
    beats are written to the chunks in order from the first (``start``) until ``count`` are
    (``received``); ``stall``: waiting for one.
    """

    def __init__(self, *, fan_in: int, lanes: int):
        FCH = fan_in // lanes
        self._lanes, self._FCH = lanes, FCH
        super().__init__({
            "read": In(1), "read_addr": In(range(FCH + 8)), "send": In(1),
            "send_addr": In(range(FCH + 1)), "sum_valid": In(1), "sum_addr": In(range(FCH + 8)),
            "sum": In(16 * lanes), "data": Out(16 * lanes),
            "psum_i": In(stream.Signature(error_layout(lanes))), "receive": In(1), "start": In(1),
            "count": In(range(FCH + 1)), "received": Out(1), "stall": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.sums = sums = memory.Memory(shape=16 * self._lanes, depth=self._FCH,
                                                 init=[])
        rd, wr = sums.read_port(), sums.write_port()
        m.d.comb += self.data.eq(rd.data)
        with m.If(self.read):
            m.d.comb += [rd.en.eq(1), rd.addr.eq(self.read_addr)]
        with m.Elif(self.send):
            m.d.comb += [rd.en.eq(1), rd.addr.eq(self.send_addr),
                         wr.en.eq(1), wr.addr.eq(self.send_addr), wr.data.eq(0)]
        with m.If(self.sum_valid):
            m.d.comb += [wr.en.eq(1), wr.addr.eq(self.sum_addr), wr.data.eq(self.sum)]
        j = Signal.like(self.count)
        with m.If(self.start):
            m.d.sync += j.eq(0)
        with m.If(self.receive):
            m.d.comb += self.psum_i.ready.eq(j < self.count)
            with m.If(j == self.count):
                m.d.comb += self.received.eq(1)
            with m.Elif(self.psum_i.valid):
                m.d.comb += [wr.en.eq(1), wr.addr.eq(j), wr.data.eq(self.psum_i.payload.value)]
                m.d.sync += j.eq(j + 1)
            with m.Else():
                m.d.comb += self.stall.eq(1)
        return m


class CoreDatapath(wiring.Component):
    """The memories and FP16 units of a core and its ``lif`` and ``bptt`` passes, run by the
    core's engines. It answers the engines on their data inputs (the LIF pass's spikes to
    ``serializer.i``, the memories' read data).

    Members
    -------
    settings : In(settings_layout)
        The registers' settings.
    seq, issuer, serializer, link, scanner, columns, wg, walker, out, sums, bus : In
        The members :attr:`USES` names of the sequencer, the engines, the input-error sums and
        the bus decoder, with the signatures they have there (``parts``: those components, for
        their signatures; connect them with :class:`PortSet`).
    bp_take : In(1)
        The core's ``bp_i`` takes a beat; ``bp_g`` its value.
    wdata : In(16)
        The word of a bus write.
    bump : Out(len(Counter))
        The memory counters of :class:`~spikeforge.regmap.Counter`.
    lif_out : Out(1)
        The LIF pass has a result.
    """

    #: What the datapath uses of each part: the members of the part's own signature.
    USES = {
        "seq": ("phase", "t", "r", "rc", "bt", "lif_issue", "lif_chunk", "out_issue", "out_j"),
        "issuer": ("valid", "row", "chunk"),
        "serializer": ("i",),
        "link": ("issue", "take", "take_d", "beat_d", "j", "j_out", "data"),
        "scanner": ("addr", "nz_data", "d_data"),
        "columns": ("issue", "n", "slot", "mul_valid", "mul_d", "a_read", "a_addr",
                    "a_write_addr"),
        "wg": ("issue", "row", "slot", "valid_d", "row_d", "chunk_d"),
        "walker": ("issue", "row", "chunk", "issue_d", "row_d", "chunk_d"),
        "out": ("data",),
        "sums": ("read", "read_addr", "send", "send_addr", "sum_valid", "sum_addr", "sum",
                 "data"),
        "bus": ("w_req", "g_req", "state_req", "w_data", "g_data", "h_data", "s_data"),
    }

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, timesteps: int,
                 lif: LIFUpdate, bptt: BPTTUpdate, settings, parts: dict):
        self._N, self._F, self._P, self._T = neurons, fan_in, lanes, timesteps
        self._lif, self._bptt = lif, bptt
        schedules = {name: ports_of(parts[name], names) for name, names in self.USES.items()}
        self._schedules = schedules
        self._requests = {name: parts["bus"].signature.members[name].shape
                          for name in ("w_req", "g_req")}
        super().__init__({
            "settings": In(settings),
            **{name: In(sig) for name, sig in schedules.items()},
            "bp_take": In(1), "bp_g": In(16 * lanes), "wdata": In(16),
            "bump": Out(len(Counter)), "lif_out": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        p, s = self, self.settings
        P, N, F, T = self._P, self._N, self._F, self._T
        CH, cb = N // P, chunk_bits(N // P)
        seq, phase = p.seq, p.seq.phase

        m.submodules.imem = i_mem = memory.Memory(shape=16 * P, depth=CH, init=[])
        m.submodules.dmem = d_mem = memory.Memory(shape=16 * P, depth=CH, init=[])
        m.submodules.nzmem = nz_mem = memory.Memory(shape=P, depth=CH, init=[])
        i_rd, i_wr = i_mem.read_port(), i_mem.write_port()
        d_rd_wt, d_rd_wg, d_wr = d_mem.read_port(), d_mem.read_port(), d_mem.write_port()
        nz_rd, nz_wr = nz_mem.read_port(), nz_mem.write_port()

        m.submodules.acc_add = acc_add = FP16Vector(FP16Adder, P)  # FP currents, Wᵀδ, update
        m.submodules.wg_add = wg_add = FP16Vector(FP16Adder, P)    # WG
        m.submodules.mul = mul = FP16Vector(FP16Multiplier, P)     # Wᵀδ products, lr·ΔW
        la, lm = acc_add.latency, mul.latency
        m.submodules.lif = lif = self._lif
        m.submodules.bptt = bptt = self._bptt
        for unit in (lif, bptt):
            m.d.comb += [unit.c_v_th.eq(s.v_th), unit.c_v_reset.eq(s.v_reset),
                         unit.c_inv_tau.eq(s.inv_tau)]
        m.d.comb += bptt.c_decay.eq(s.decay)
        m.submodules.weights = ws = WeightStore(neurons=N, fan_in=F, lanes=P,
                                                schedules=self._schedules, requests=self._requests)
        for name in WeightStore.SCHEDULES:
            wiring.connect(m, wiring.flipped(getattr(self, name)), getattr(ws, name))
        m.d.comb += [ws.phase.eq(seq.phase), ws.w_req.eq(self.bus.w_req),
                     ws.g_req.eq(self.bus.g_req)]
        sums = self.sums
        m.submodules.state = state = StepState(neurons=N, lanes=P, timesteps=T)

        t_base_ch, r_base_ch = seq.t * CH, seq.r * CH

        def active_mask(chunk):
            return Cat(*((chunk * P + k) < s.neurons for k in range(P)))

        # ---- FP: the currents, the LIF pass ----
        acc_fp = _phase(phase, Phase.FP_ACC, Phase.FP_DRAIN)
        m.submodules.acc_chunk_d = acc_chunk_d = Delay(p.issuer.chunk.shape(), 1 + la)
        m.d.comb += acc_chunk_d.i.eq(p.issuer.chunk)
        sc_fp = _phase(phase, Phase.FP_SC_OUT, Phase.FP_SC_ADD)
        sc_bp = _phase(phase, Phase.BP_SC_OUT, Phase.BP_SC_ADD)
        sc_rd = Signal(16 * P)
        m.d.comb += [sc_rd.eq(Mux(sc_fp, i_rd.data, d_rd_wt.data)), p.link.data.eq(sc_rd)]
        sc_sum = acc_add.o_valid & _phase(phase, Phase.FP_SC_ADD, Phase.BP_SC_ADD)
        sc_nz = Cat(*((lane(acc_add.o_result, k)[:15] != 0) for k in range(P)))

        acc_valid_d, lif_issue_d, lif_chunk_d = Signal(), Signal(), Signal.like(seq.lif_chunk)
        m.d.sync += [acc_valid_d.eq(p.issuer.valid), lif_issue_d.eq(seq.lif_issue),
                     lif_chunk_d.eq(seq.lif_chunk)]
        m.d.comb += [lif.i_valid.eq(lif_issue_d), lif.i_x.eq(i_rd.data),
                     lif.i_v.eq(Mux(seq.t < s.tokens, Cat(*([s.v_reset] * P)), state.v_data)),
                     lif.i_tag.eq(lif_chunk_d), self.lif_out.eq(lif.o_valid)]
        lif_chunk = lif.o_tag[:cb]
        lif_mask = Signal(P)
        m.d.comb += lif_mask.eq(lif.o_s & active_mask(lif_chunk))
        m.d.comb += [state.lif_valid.eq(lif.o_valid), state.lif_token.eq(r_base_ch + lif_chunk),
                     state.lif_step.eq(t_base_ch + lif_chunk), state.v.eq(lif.o_v),
                     state.h.eq(lif.o_h), state.s.eq(lif_mask)]
        with m.If(lif.o_valid):
            m.d.comb += [
                p.serializer.i.valid.eq(lif_mask.any()),
                p.serializer.i.payload.mask.eq(lif_mask),
                p.serializer.i.payload.chunk.eq(lif_chunk),
            ]

        # ---- BP: the BPTT pass, δX and its nonzero masks ----
        bp_take = self.bp_take
        bp_g, bp_chunk, bp_valid = Signal(16 * P), Signal(range(CH)), Signal()
        m.d.sync += [bp_valid.eq(bp_take), bp_g.eq(self.bp_g), bp_chunk.eq(seq.rc)]
        last_step = seq.bt + s.tokens >= s.timesteps   # no carry from a later timestep
        m.d.comb += [bptt.i_valid.eq(bp_valid), bptt.i_g.eq(bp_g), bptt.i_h.eq(state.h_data),
                     bptt.i_s.eq(state.s_data), bptt.i_eps.eq(Mux(last_step, 0, state.e_data)),
                     bptt.i_tag.eq(bp_chunk)]
        bptt_chunk = bptt.o_tag[:cb]
        nz = Cat(*((lane(bptt.o_dx, k)[:15] != 0) for k in range(P)))
        m.d.comb += [state.eps_valid.eq(bptt.o_valid),
                     state.eps_addr.eq(r_base_ch + bptt_chunk), state.eps.eq(bptt.o_eps)]
        with m.If(bptt.o_valid):
            m.d.comb += [
                d_wr.en.eq(1), d_wr.addr.eq(bptt_chunk), d_wr.data.eq(bptt.o_dx),
                nz_wr.en.eq(1), nz_wr.addr.eq(bptt_chunk),
                nz_wr.data.eq(nz & active_mask(bptt_chunk)),
            ]
        with m.Elif(sc_sum & sc_bp):
            m.d.comb += [
                d_wr.en.eq(1), d_wr.addr.eq(p.link.j_out), d_wr.data.eq(acc_add.o_result),
                nz_wr.en.eq(1), nz_wr.addr.eq(p.link.j_out),
                nz_wr.data.eq(sc_nz & active_mask(p.link.j_out)),
            ]
        m.d.comb += [nz_rd.addr.eq(p.scanner.addr), nz_rd.en.eq(1), d_rd_wt.en.eq(1),
                     d_rd_wt.addr.eq(Mux(sc_bp, p.link.j, p.scanner.addr)),
                     p.scanner.nz_data.eq(nz_rd.data), p.scanner.d_data.eq(d_rd_wt.data)]

        # ---- WG, the input errors out, the update ----
        m.d.comb += [d_rd_wg.addr.eq(p.wg.slot), d_rd_wg.en.eq(1), p.out.data.eq(sums.data)]
        m.d.comb += wg_add.issue(p.wg.valid_d, ws.g_data, d_rd_wg.data)
        update = _phase(phase, Phase.UPDATE, Phase.DRAIN_IDLE)
        up_valid_d = p.walker.issue_d
        m.submodules.up_w_d = up_w_d = Delay(16 * P, lm)
        m.submodules.up_mul_valid = up_mul_valid = Delay(1, lm)
        m.d.comb += [up_w_d.i.eq(ws.w_data), up_mul_valid.i.eq(up_valid_d)]
        m.d.comb += [ws.wg_valid.eq(wg_add.o_valid), ws.wg_value.eq(wg_add.o_result),
                     ws.up_valid.eq(acc_add.o_valid & update), ws.up_value.eq(acc_add.o_result),
                     ws.up_row.eq(p.walker.row_d), ws.up_chunk.eq(p.walker.chunk_d),
                     ws.wdata.eq(p.wdata), p.bus.w_data.eq(ws.w_data),
                     p.bus.g_data.eq(ws.g_data), self.bump.eq(ws.bump)]

        # ---- the shared units, by phase ----
        mul_b = Signal(16 * P)
        with m.If(update):
            m.d.comb += [*mul.issue(up_valid_d, Cat(*([s.lr] * P)), ws.g_data),
                         *acc_add.issue(up_mul_valid.o, up_w_d.o, mul.o_result, sub=1)]
        with m.Elif(_phase(phase, Phase.FP_SC_ADD, Phase.BP_SC_ADD)):
            m.d.comb += acc_add.issue(p.link.take_d, sc_rd, p.link.beat_d)
        with m.Elif(_phase(phase, Phase.BP_WT, Phase.BP_OUT)):
            m.d.comb += mul_b.eq(Cat(*([p.columns.mul_d] * P)))
            m.d.comb += [*mul.issue(p.columns.mul_valid, ws.w_data, mul_b),
                         *acc_add.issue(mul.o_valid, sums.data, mul.o_result)]
        with m.Else():
            m.d.comb += acc_add.issue(acc_valid_d, i_rd.data, ws.w_data)

        # ---- the currents, the Wᵀδ sums, the saved state ----
        link = p.link
        with m.If(p.issuer.valid & acc_fp):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(p.issuer.chunk)]
        with m.Elif(seq.lif_issue):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(seq.lif_chunk),
                         i_wr.en.eq(1), i_wr.addr.eq(seq.lif_chunk), i_wr.data.eq(0)]
        with m.Elif((link.issue | link.take) & sc_fp):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(link.j)]
        with m.If(acc_add.o_valid & acc_fp):
            m.d.comb += [i_wr.en.eq(1), i_wr.addr.eq(acc_chunk_d.o), i_wr.data.eq(acc_add.o_result)]
        with m.Elif(sc_sum & sc_fp):
            m.d.comb += [i_wr.en.eq(1), i_wr.addr.eq(link.j_out), i_wr.data.eq(acc_add.o_result)]
        m.d.comb += state.v_addr.eq(r_base_ch + seq.lif_chunk)

        m.d.comb += [
            sums.read.eq(p.columns.a_read), sums.read_addr.eq(p.columns.a_addr),
            sums.send.eq(seq.out_issue), sums.send_addr.eq(seq.out_j),
            sums.sum_valid.eq(acc_add.o_valid & _phase(phase, Phase.BP_WT, Phase.BP_OUT)),
            sums.sum_addr.eq(p.columns.a_write_addr), sums.sum.eq(acc_add.o_result)]

        m.d.comb += [state.bus_read.eq(p.bus.state_req.en),
                     state.bus_addr.eq(p.bus.state_req.addr), state.bp_read.eq(bp_take),
                     state.bp_step.eq(t_base_ch + seq.rc), state.bp_token.eq(r_base_ch + seq.rc),
                     p.bus.h_data.eq(state.h_data), p.bus.s_data.eq(state.s_data)]
        return m
