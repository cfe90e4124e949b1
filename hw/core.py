# SPDX-License-Identifier: Apache-2.0
"""A training core: one spiking linear layer with its FP, BP and WG engines and the SGD update.

The core holds one layer of LIF neurons: ``neurons × fan_in`` binary16 weights (and as many
accumulated gradients) in skewed banks (:class:`~spikeforge.hw.skewmem.SkewedMemory`), the
membranes, and for back-propagation the charge ``H[t]`` and spike ``S[t]`` of every neuron at
every timestep. All arithmetic is binary16 in the order of :mod:`spikeforge.golden.linear` and
:mod:`spikeforge.golden.lif`, so a core computes the golden model's bits.

Streams (``amaranth.lib.stream``):

``fp_i`` — input spike events ``{index, spike, last}``, ascending ``index`` within a timestep;
    ``last`` closes the timestep (a ``spike = 0, last = 1`` element closes an empty one).
    Out-of-order or out-of-range spikes are dropped and flagged.
``fp_o`` — output spike events, the same layout: after each timestep's LIF pass, the neurons
    that fired in ascending order, then an element with ``spike = 0, last = 1``.
``bp_i`` — the error of the output spikes ``∂L/∂S[t]``, ``lanes`` neurons a beat, timesteps
    from the last to the first, ``last`` on a timestep's final beat.
``bp_o`` — the error of the inputs ``(Wᵀ·δX)[t]``, ``lanes`` inputs a beat, in the same order
    (only when ``Reg.BP_INPUT_ERROR`` is set).
``sc_o``, ``sc_i`` — the two ends of a membrane shortcut ``x_b = x_a + W_b·s`` between a layer
    ``a`` (``Reg.SHORTCUT`` = ``SOURCE``) and a later layer ``b`` (``TARGET``), ``lanes`` values
    a beat, ``last`` on a step's final beat. Forward, after each step's accumulation, ``a``
    sends its currents on ``sc_o`` and ``b`` adds the ones on its ``sc_i`` to its own before the
    LIF pass (``x_b = x_a + I_b``). Backward, after each step's BPTT pass, ``b`` sends its
    ``δX`` on ``sc_o`` and ``a`` adds the ones on its ``sc_i`` to its own before WG and
    ``Wᵀ·δX`` (``δX_a = δX_a + δX_b``: the current gradient flows through the shortcut).
``psum_i`` — with ``Reg.PARTIAL_IN`` set, the partial sums ``Wᵀ·δX`` of the layer's lower
    neurons (another core's ``bp_o``), which this timestep's sum starts from instead of +0: a
    layer split by neurons across cores adds its products in the golden model's order, neuron
    after neuron, so the split is bit for bit the same as one core.

Tokens (``Reg.TOKENS`` = ``n``, for the token-wise layers of an attention block): each timestep
is ``n`` steps of the streams, one per token, token after token, and the core keeps a membrane
(and a BPTT carry) per token. ``Reg.TIMESTEPS`` counts steps, ``n`` per timestep, so the state
memories hold ``timesteps`` steps in all; step ``k`` is token ``k mod n`` of timestep ``k div n``.
Back-propagation takes the timesteps from the last and, within one, its tokens from the first,
so that a consumer over all tokens (below) streams their errors in the order they are needed.

Input tokens (``Reg.IN_TOKENS`` = ``m``, ``Reg.IN_STRIDE`` = ``d``, for a layer over all tokens
of a token-wise producer, such as a classifier head over the flattened tokens): ``m`` steps of
``fp_i`` make one timestep, and an event of the ``r``-th of them is input ``r·d + index``
(``index < d``). The layer's ``Wᵀ·δX`` on ``bp_o`` is then, per timestep, token after token the
errors of the producer's steps in its back-propagation order.

The word bus (``bus_*``) reaches registers, weights, gradients, the saved state and the
counters (:mod:`spikeforge.regmap`); every access is acknowledged two cycles after ``bus_en``.
A write with ``bus_probe`` set is checked (``bus_err`` as for the write) but changes nothing, so
that a host link can check every word of a frame before it writes any.

Engines and their cost in cycles (``P`` lanes, ``C = ⌈neurons/P⌉``, ``F = ⌈fan_in/P⌉``):

* **FP**: each input spike adds its weight row into the currents, ``max(C, hazard)`` cycles;
  then the LIF pass, ``C`` cycles. No multiplier on this path.
* **BP**: per timestep, the BPTT pass (``C`` beats), then ``Wᵀ·δX`` over the neurons with
  ``δX != 0`` only, ``max(F, hazard)`` cycles each, then ``F`` beats out.
* **WG**: alongside ``Wᵀ·δX``, ``ΔW[:, i] += δX`` for each input ``i`` that spiked in that
  timestep, ``C`` cycles each.
* **Update**: ``W = W - lr·ΔW`` and ``ΔW = 0``, one lane vector a cycle.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge import regmap
from spikeforge.golden.surrogate import Surrogate
from spikeforge.regmap import COUNTERS, Command, Counter, ErrorFlag, Reg, Region, Shortcut

from .fp16 import FP16Adder, FP16Multiplier
from .lanes import FP16Lanes, delay, lane, lowest_set
from .neuron import BPTTUpdate, LIFUpdate
from .skewmem import SkewedMemory

__all__ = ["Core", "error_layout", "event_layout"]


def event_layout(count: int) -> data.StructLayout:
    """A spike event of ``count`` possible sources."""
    return data.StructLayout({"index": range(max(count, 2)), "spike": 1, "last": 1})


def error_layout(lanes: int) -> data.StructLayout:
    """A beat of ``lanes`` binary16 errors."""
    return data.StructLayout({"value": 16 * lanes, "last": 1})


class Core(wiring.Component):
    """One layer of ``neurons`` LIF neurons with ``fan_in`` inputs, trained on the device.

    Parameters
    ----------
    neurons, fan_in : int
        Maximum layer size; multiples of ``lanes``. The active size is set by registers.
    lanes : int
        Lane vector width ``P``: weights added or multiplied per cycle (a power of two).
    timesteps : int
        Maximum timesteps per sample (sizes the BP state memory).
    reset : str
        ``"hard"`` or ``"soft"``.
    detach_reset : bool
        Whether BP treats the reset as a constant (QKFormer's default).
    surrogate : Surrogate
        The surrogate whose lookup table the BPTT pass uses.
    """

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, timesteps: int,
                 reset: str = "hard", detach_reset: bool = True,
                 surrogate: Surrogate | None = None):
        if lanes not in [1 << k for k in range(7)]:
            raise ValueError(f"Lane count must be a power of two between 1 and 64, not {lanes!r}")
        for name, value in (("neurons", neurons), ("fan_in", fan_in)):
            if not isinstance(value, int) or value < lanes or value % lanes:
                raise ValueError(f"Core {name} must be a positive multiple of the lane count "
                                 f"{lanes}, not {value!r}")
        if not isinstance(timesteps, int) or not 1 <= timesteps <= 4096:
            raise ValueError(f"Core timesteps must be between 1 and 4096, not {timesteps!r}")
        if reset not in ("hard", "soft"):
            raise ValueError(f"Core reset must be 'hard' or 'soft', not {reset!r}")
        self._neurons, self._fan_in, self._lanes, self._timesteps = neurons, fan_in, lanes, \
            timesteps
        self._reset, self._detach_reset = reset, detach_reset
        self._surrogate = surrogate or Surrogate()
        super().__init__({
            "fp_i": In(stream.Signature(event_layout(fan_in))),
            "fp_o": Out(stream.Signature(event_layout(neurons))),
            "bp_i": In(stream.Signature(error_layout(lanes))),
            "bp_o": Out(stream.Signature(error_layout(lanes))),
            "psum_i": In(stream.Signature(error_layout(lanes))),
            "sc_o": Out(stream.Signature(error_layout(lanes))),
            "sc_i": In(stream.Signature(error_layout(lanes))),
            "n_active": Out(range(neurons + 1)),
            "bus_en": In(1),
            "bus_we": In(1),
            "bus_probe": In(1),
            "bus_addr": In(32),
            "bus_wdata": In(16),
            "bus_ack": Out(1),
            "bus_err": Out(1),
            "bus_rdata": Out(16),
            "busy": Out(1),
            "waiting": Out(1),
        })

    neurons = property(lambda self: self._neurons)
    fan_in = property(lambda self: self._fan_in)
    lanes = property(lambda self: self._lanes)
    timesteps = property(lambda self: self._timesteps)

    @property
    def neuron_bits(self) -> int:
        """Bits of a neuron index in bus offsets (:func:`~spikeforge.regmap.state_offset`)."""
        return regmap.index_bits(self._neurons)

    @property
    def input_bits(self) -> int:
        """Bits of an input index in bus offsets (:func:`~spikeforge.regmap.weight_offset`)."""
        return regmap.index_bits(self._fan_in)

    def elaborate(self, platform):
        m = Module()
        P, N, F, T = self._lanes, self._neurons, self._fan_in, self._timesteps
        CH, FCH = N // P, F // P
        lane_bits = P.bit_length() - 1

        # ---- registers -------------------------------------------------------------------
        n_act = Signal(range(N + 1), init=N)
        f_act = Signal(range(F + 1), init=F)
        t_act = Signal(range(T + 1), init=T)
        chunks = Signal(range(CH + 1), init=CH)       # ⌈n_act / P⌉
        in_chunks = Signal(range(FCH + 1), init=FCH)  # ⌈f_act / P⌉
        v_th = Signal(16, init=0x3C00)
        v_reset = Signal(16, init=0x0000)
        inv_tau = Signal(16, init=0x3800)
        decay = Signal(16, init=0x3800)
        lr = Signal(16, init=0x2000)
        tokens = Signal(range(T + 1), init=1)
        in_tokens = Signal(range(F + 1), init=1)
        in_stride = Signal(range(F + 1), init=F)
        bp_input_error = Signal(init=1)
        partial_in = Signal()
        shortcut = Signal(2)
        errors = Signal(3)
        fp_done = Signal()
        bp_done = Signal()

        # ---- memories --------------------------------------------------------------------
        m.submodules.wmem = wmem = SkewedMemory(lanes=P, neurons=N, inputs=F)
        m.submodules.gmem = gmem = SkewedMemory(lanes=P, neurons=N, inputs=F)
        m.submodules.imem = imem = memory.Memory(shape=16 * P, depth=CH, init=[])
        m.submodules.vmem = vmem = memory.Memory(shape=16 * P, depth=T * CH, init=[])
        m.submodules.hmem = hmem = memory.Memory(shape=16 * P, depth=T * CH, init=[])
        m.submodules.smem = smem = memory.Memory(shape=P, depth=T * CH, init=[])
        m.submodules.emem = emem = memory.Memory(shape=16 * P, depth=T * CH, init=[])
        m.submodules.dmem = dmem = memory.Memory(shape=16 * P, depth=CH, init=[])
        m.submodules.nzmem = nzmem = memory.Memory(shape=P, depth=CH, init=[])
        m.submodules.amem = amem = memory.Memory(shape=16 * P, depth=FCH, init=[])
        m.submodules.logmem = logmem = memory.Memory(shape=range(F), depth=T * F, init=[])
        m.submodules.cntmem = cntmem = memory.Memory(shape=range(F + 1), depth=T, init=[])
        i_rd, i_wr = imem.read_port(), imem.write_port()
        v_rd, v_wr = vmem.read_port(), vmem.write_port()
        h_rd, h_wr = hmem.read_port(), hmem.write_port()
        s_rd, s_wr = smem.read_port(), smem.write_port()
        e_rd, e_wr = emem.read_port(), emem.write_port()
        d_rd_wt, d_rd_wg, d_wr = dmem.read_port(), dmem.read_port(), dmem.write_port()
        nz_rd, nz_wr = nzmem.read_port(), nzmem.write_port()
        a_rd, a_wr = amem.read_port(), amem.write_port()
        log_rd, log_wr = logmem.read_port(), logmem.write_port()
        cnt_rd, cnt_wr = cntmem.read_port(), cntmem.write_port()

        # ---- arithmetic --------------------------------------------------------------------
        acc_add = FP16Lanes(m, "acc_add", FP16Adder, P)     # FP currents, Wᵀδ sums, update
        wg_add = FP16Lanes(m, "wg_add", FP16Adder, P)       # WG
        mul = FP16Lanes(m, "mul", FP16Multiplier, P)        # Wᵀδ products, lr·ΔW
        la, lm = acc_add.latency, mul.latency
        m.submodules.lif = lif = LIFUpdate(lanes=P, reset=self._reset, tag_width=max(CH, 2)
                                           .bit_length())
        m.submodules.bptt = bptt = BPTTUpdate(lanes=P, reset=self._reset,
                                              detach_reset=self._detach_reset,
                                              surrogate=self._surrogate,
                                              tag_width=max(CH, 2).bit_length())
        m.d.comb += [
            lif.c_v_th.eq(v_th), lif.c_v_reset.eq(v_reset), lif.c_inv_tau.eq(inv_tau),
            bptt.c_v_th.eq(v_th), bptt.c_v_reset.eq(v_reset), bptt.c_inv_tau.eq(inv_tau),
            bptt.c_decay.eq(decay),
        ]

        # ---- counters ----------------------------------------------------------------------
        counters = Array(Signal(32, name=f"cnt_{name}") for name in COUNTERS)
        bump = {c: Signal(name=f"bump_{c.name.lower()}") for c in Counter}
        # A clear command is registered before it resets the counters: the reset fans out to
        # every counter bit, so it starts from a flip-flop rather than from the bus decode. The
        # counters are zero when the command's write is acknowledged, as before.
        clear_request = Signal()
        clear_counters = Signal()
        m.d.sync += clear_counters.eq(clear_request)
        for c in Counter:
            with m.If(clear_counters):
                m.d.sync += counters[c].eq(0)
            with m.Elif(bump[c]):
                m.d.sync += counters[c].eq(counters[c] + 1)
        m.d.comb += bump[Counter.CYCLES].eq(1)

        t = Signal(range(T + 1))                # the step
        r = Signal(range(T))                    # its token: t mod tokens
        t_base_ch = Signal(range(T * CH + 1))   # t · CH
        t_base_f = Signal(range(T * F + 1))     # t · F
        r_base_ch = Signal(range(T * CH + 1))   # r · CH: the token's membranes and carries
        r_prev = Signal(range(T))               # the token of step t - 1
        bt = Signal(range(T + 1))               # BP: the first step of t's timestep
        m.d.comb += [t_base_ch.eq(t * CH), t_base_f.eq(t * F), r_base_ch.eq(r * CH),
                     r_prev.eq(Mux(r == 0, tokens - 1, r - 1))]

        def active_mask(chunk):
            base = chunk * P
            return Cat(*((base + k) < n_act for k in range(P)))

        # =====================================================================================
        # FP: accumulate input events, then the LIF pass and the output events.
        # =====================================================================================
        fp_hazard = la + 2
        # An input event's slots: one a chunk, at least the adder's hazard. Registered (the
        # layer size changes only by a bus write while idle): the event input's ready
        # depends on it, and through the routers the previous core's serializer.
        fp_last = Signal(range(max(CH, fp_hazard)))
        m.d.sync += fp_last.eq(Mux(chunks > fp_hazard, chunks, fp_hazard) - 1)
        iss_active = Signal()
        iss_row = Signal(range(F))
        iss_slot = Signal(range(max(CH, fp_hazard) + 1))
        iss_last_slot = Signal()
        iss_close = Signal()      # the event being issued closes the timestep
        ev_count = Signal(range(F + 1))
        ev_prev = Signal(range(F))
        ev_any = Signal()
        in_r = Signal(range(F + 1))             # the input token of this timestep
        in_base = Signal(range(F * F + F + 1))  # its first input, in_r · in_stride
        in_final = Signal()                     # the input token is the timestep's last
        m.d.comb += in_final.eq(in_r + 1 >= in_tokens)
        m.d.comb += iss_last_slot.eq(iss_active & (iss_slot == fp_last))

        acc_valid = Signal()
        acc_chunk = Signal(range(CH))
        lif_issue = Signal()
        lif_chunk = Signal(range(CH + 1))

        # =====================================================================================
        # Main sequencer
        # =====================================================================================
        drain = Signal(range(64))
        fifo_depth = lif.latency + 4
        m.submodules.spk_fifo = spk_fifo = fifo.SyncFIFOBuffered(
            width=P + max(CH, 2).bit_length(), depth=fifo_depth)
        lif_inflight = Signal(range(fifo_depth + 2))
        ser_mask = Signal(P)
        ser_chunk = Signal(range(CH))
        ser_valid = Signal()

        rc = Signal(range(CH + 1))             # BP receive beat counter
        pj = Signal(range(FCH + 1))            # partial sums received
        psum_take = Signal()
        wt_done = Signal()
        wg_done = Signal()
        wt_start = Signal()
        wg_start = Signal()
        out_issue = Signal()
        out_j = Signal(range(FCH + 1))
        m.submodules.out_fifo = out_fifo = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        out_inflight = Signal(range(6))
        up_row = Signal(range(F + 1))
        up_chunk = Signal(range(CH + 1))
        up_issue = Signal()
        clr_issue = Signal()

        command = Signal(range(8))
        command_valid = Signal()

        # The membrane shortcut's phases: a step's CH beats out of the currents (forward) or
        # the δX (backward), or added into them from ``sc_i``.
        sc_j = Signal(range(CH + 1))            # beats issued or taken
        sc_issue = Signal()                     # read beat sc_j for sc_o
        sc_take = Signal()                      # take sc_i's beat for chunk sc_j
        m.submodules.sc_fifo = sc_fifo = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=4)
        sc_inflight = Signal(range(3))
        sc_tail = Signal(range(la + 4))         # cycles until the last sum is written

        def start_wt():
            m.d.comb += wg_start.eq(1)
            with m.If(bp_input_error & partial_in):
                m.d.sync += pj.eq(0)
                m.next = "BP_PSUM"
            with m.Else():
                m.d.comb += wt_start.eq(bp_input_error)
                m.next = "BP_WT"

        def then(state):
            """Go on to ``state`` (None: back-propagation's WG and ``Wᵀ·δX``)."""
            if state is None:
                start_wt()
            else:
                m.next = state

        def sc_send(state):
            stall = Counter.FP_STALL if state else Counter.BP_STALL
            with m.If((sc_j == chunks) & (sc_inflight == 0)):
                then(state)
            with m.Elif((sc_j < chunks) & (sc_fifo.level + sc_inflight < 4)):
                m.d.comb += sc_issue.eq(1)
                m.d.sync += sc_j.eq(sc_j + 1)
            with m.Elif(sc_j < chunks):
                m.d.comb += bump[stall].eq(1)

        def sc_add(state):
            stall = Counter.FP_STALL if state else Counter.BP_STALL
            m.d.comb += self.sc_i.ready.eq(sc_j < chunks)
            with m.If((sc_j == chunks) & (sc_tail == 0)):
                then(state)
            with m.Elif(self.sc_i.valid & (sc_j < chunks)):
                m.d.comb += sc_take.eq(1)
                m.d.sync += sc_j.eq(sc_j + 1)
            with m.Elif(sc_j < chunks):
                m.d.comb += bump[stall].eq(1)

        with m.FSM(name="core") as fsm:
            with m.State("IDLE"):
                with m.If(command_valid & (command == Command.BEGIN)):
                    m.d.sync += [t.eq(0), r.eq(0), fp_done.eq(0), bp_done.eq(0),
                                 ev_count.eq(0), ev_any.eq(0), in_r.eq(0), in_base.eq(0)]
                    m.next = "FP_ACC"
                with m.Elif(command_valid & (command == Command.UPDATE)):
                    m.d.sync += [up_row.eq(0), up_chunk.eq(0)]
                    m.next = "UPDATE"
                with m.Elif(command_valid & (command == Command.CLEAR_GRAD)):
                    m.d.sync += [up_row.eq(0), up_chunk.eq(0)]
                    m.next = "CLEAR"
                with m.Elif(self.bp_i.valid & fp_done & ~bp_done):
                    # the last timestep's first token (r_prev is the token of step t_act - 1)
                    m.d.sync += [t.eq(t_act - 1 - r_prev), bt.eq(t_act - 1 - r_prev), r.eq(0),
                                 rc.eq(0)]
                    m.next = "BP_RECV"

            # ---- FP: accumulate ----
            with m.State("FP_ACC"):
                m.d.comb += bump[Counter.FP_BUSY].eq(iss_active)
                m.d.comb += self.fp_i.ready.eq(~iss_active | (iss_last_slot & ~iss_close))
                with m.If(iss_active):
                    m.d.sync += iss_slot.eq(iss_slot + 1)
                    m.d.comb += [acc_valid.eq(iss_slot < chunks), acc_chunk.eq(iss_slot)]
                    with m.If(iss_last_slot):
                        m.d.sync += iss_active.eq(0)
                        with m.If(iss_close):
                            m.d.sync += [drain.eq(la + 2), iss_close.eq(0)]
                            m.next = "FP_DRAIN"
                with m.If(self.fp_i.valid & self.fp_i.ready):
                    ev = self.fp_i.payload
                    index = Signal(range(F * F + 2 * F + 1))
                    m.d.comb += index.eq(in_base + ev.index)
                    ok_range = (index < f_act) & (ev.index < in_stride)
                    ok_order = ~ev_any | (index > ev_prev)
                    with m.If(ev.last):     # the input token ends, and with the last the step
                        m.d.sync += [in_r.eq(Mux(in_final, 0, in_r + 1)),
                                     in_base.eq(Mux(in_final, 0, in_base + in_stride))]
                    with m.If(ev.spike & ok_range & ok_order):
                        m.d.comb += [
                            log_wr.en.eq(1), log_wr.addr.eq(t_base_f + ev_count),
                            log_wr.data.eq(index),
                            bump[Counter.FP_EVENTS].eq(1),
                        ]
                        m.d.sync += [ev_count.eq(ev_count + 1), ev_prev.eq(index),
                                     ev_any.eq(1), iss_active.eq(1), iss_slot.eq(0),
                                     iss_row.eq(index), iss_close.eq(ev.last & in_final)]
                    with m.Else():
                        with m.If(ev.spike & ~ok_range):
                            m.d.sync += errors.eq(errors | ErrorFlag.EVENT_RANGE)
                        with m.If(ev.spike & ok_range & ~ok_order):
                            m.d.sync += errors.eq(errors | ErrorFlag.EVENT_ORDER)
                        with m.If(ev.last & in_final):
                            m.d.sync += drain.eq(la + 2)
                            m.next = "FP_DRAIN"

            with m.State("FP_DRAIN"):
                m.d.comb += bump[Counter.FP_BUSY].eq(1)
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += [cnt_wr.en.eq(1), cnt_wr.addr.eq(t), cnt_wr.data.eq(ev_count)]
                    m.d.sync += [lif_chunk.eq(0), ev_count.eq(0), ev_any.eq(0), sc_j.eq(0)]
                    with m.If(shortcut == Shortcut.SOURCE):
                        m.next = "FP_SC_OUT"
                    with m.Elif(shortcut == Shortcut.TARGET):
                        m.next = "FP_SC_ADD"
                    with m.Else():
                        m.next = "FP_LIF"

            # ---- FP: a membrane shortcut's currents, out (source) or added in (target) ----
            with m.State("FP_SC_OUT"):
                m.d.comb += bump[Counter.FP_BUSY].eq(1)
                sc_send("FP_LIF")

            with m.State("FP_SC_ADD"):
                m.d.comb += bump[Counter.FP_BUSY].eq(1)
                sc_add("FP_LIF")

            # ---- FP: LIF pass and output events ----
            with m.State("FP_LIF"):
                m.d.comb += bump[Counter.FP_BUSY].eq(1)
                room = (spk_fifo.level + lif_inflight) < fifo_depth
                with m.If(lif_chunk < chunks):
                    with m.If(room):
                        m.d.comb += lif_issue.eq(1)
                        m.d.sync += lif_chunk.eq(lif_chunk + 1)
                    with m.Else():
                        m.d.comb += bump[Counter.FP_STALL].eq(1)
                with m.Elif((lif_inflight == 0) & (spk_fifo.level == 0) & ~ser_valid):
                    m.next = "FP_END"

            with m.State("FP_END"):
                m.d.comb += bump[Counter.FP_BUSY].eq(1)
                m.d.comb += [self.fp_o.valid.eq(1), self.fp_o.payload.last.eq(1)]
                with m.If(self.fp_o.ready):
                    m.d.sync += [t.eq(t + 1), r.eq(Mux(r + 1 == tokens, 0, r + 1))]
                    with m.If(t + 1 == t_act):
                        m.d.sync += fp_done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "FP_ACC"
                with m.Else():
                    m.d.comb += bump[Counter.FP_STALL].eq(1)

            # ---- BP: the BPTT pass over the output errors of timestep t ----
            with m.State("BP_RECV"):
                m.d.comb += bump[Counter.BP_BUSY].eq(1)
                m.d.comb += self.bp_i.ready.eq(rc < chunks)
                with m.If(rc == chunks):
                    m.d.sync += drain.eq(bptt.latency + 2)
                    m.next = "BP_DRAIN"
                with m.Elif(self.bp_i.valid):
                    m.d.sync += rc.eq(rc + 1)

            with m.State("BP_DRAIN"):
                m.d.comb += bump[Counter.BP_BUSY].eq(1)
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.sync += sc_j.eq(0)
                    with m.If(shortcut == Shortcut.SOURCE):
                        m.next = "BP_SC_ADD"
                    with m.Elif(shortcut == Shortcut.TARGET):
                        m.next = "BP_SC_OUT"
                    with m.Else():
                        start_wt()

            # ---- BP: a membrane shortcut's current gradients, added in (source) or out ----
            with m.State("BP_SC_ADD"):
                m.d.comb += bump[Counter.BP_BUSY].eq(1)
                sc_add(None)

            with m.State("BP_SC_OUT"):
                m.d.comb += bump[Counter.BP_BUSY].eq(1)
                sc_send(None)

            # ---- BP: the partial sums of the lower neurons of a split layer, into A ----
            with m.State("BP_PSUM"):
                m.d.comb += [self.psum_i.ready.eq(pj < in_chunks), bump[Counter.BP_BUSY].eq(1)]
                with m.If(pj == in_chunks):
                    m.d.comb += wt_start.eq(1)
                    m.next = "BP_WT"
                with m.Elif(self.psum_i.valid):
                    m.d.comb += psum_take.eq(1)
                    m.d.sync += pj.eq(pj + 1)
                with m.Else():
                    m.d.comb += bump[Counter.BP_STALL].eq(1)

            with m.State("BP_WT"):
                m.d.comb += bump[Counter.BP_BUSY].eq(bp_input_error & ~wt_done)
                with m.If((wt_done | ~bp_input_error) & wg_done):
                    m.d.sync += [out_j.eq(0), drain.eq(0)]
                    m.next = "BP_OUT"

            with m.State("BP_OUT"):
                m.d.comb += bump[Counter.BP_BUSY].eq(bp_input_error)
                with m.If(~bp_input_error | ((out_j == in_chunks) & (out_inflight == 0)
                                              & (out_fifo.level == 0))):
                    m.d.sync += rc.eq(0)
                    with m.If((r + 1 != tokens) & (t + 1 != t_act)):
                        m.d.sync += [t.eq(t + 1), r.eq(r + 1)]    # the next token
                        m.next = "BP_RECV"
                    with m.Elif(bt == 0):
                        m.d.sync += bp_done.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [t.eq(bt - tokens), bt.eq(bt - tokens), r.eq(0)]
                        m.next = "BP_RECV"
                with m.Elif((out_j < in_chunks) & (out_fifo.level + out_inflight < 4)):
                    m.d.comb += out_issue.eq(1)
                    m.d.sync += out_j.eq(out_j + 1)
                with m.Elif(out_j < in_chunks):
                    m.d.comb += bump[Counter.BP_STALL].eq(1)

            # ---- update and clear ----
            with m.State("UPDATE"):
                m.d.comb += bump[Counter.UPDATE_BUSY].eq(1)
                with m.If(up_row == f_act):
                    m.d.sync += drain.eq(lm + la + 2)
                    m.next = "DRAIN_IDLE"
                with m.Else():
                    m.d.comb += up_issue.eq(1)
                    m.d.sync += up_chunk.eq(up_chunk + 1)
                    with m.If(up_chunk + 1 == chunks):
                        m.d.sync += [up_chunk.eq(0), up_row.eq(up_row + 1)]

            with m.State("CLEAR"):
                with m.If(up_row == F):
                    m.next = "IDLE"
                with m.Else():
                    m.d.comb += clr_issue.eq(1)
                    m.d.sync += up_chunk.eq(up_chunk + 1)
                    with m.If(up_chunk + 1 == CH):
                        m.d.sync += [up_chunk.eq(0), up_row.eq(up_row + 1)]

            with m.State("DRAIN_IDLE"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.next = "IDLE"

        idle = fsm.ongoing("IDLE")
        m.d.comb += [self.busy.eq(~idle), self.n_active.eq(n_act)]
        m.d.comb += self.waiting.eq(
            (fsm.ongoing("FP_ACC") & ~iss_active & ~self.fp_i.valid) |
            (fsm.ongoing("BP_RECV") & (rc < chunks) & ~self.bp_i.valid) |
            ((fsm.ongoing("FP_SC_ADD") | fsm.ongoing("BP_SC_ADD")) & (sc_j < chunks)
             & ~self.sc_i.valid))

        # ---- membrane shortcut: a step's currents (FP) or δX (BP), out or added in ----
        sc_fp = fsm.ongoing("FP_SC_OUT") | fsm.ongoing("FP_SC_ADD")
        sc_bp = fsm.ongoing("BP_SC_OUT") | fsm.ongoing("BP_SC_ADD")
        sc_rd = Signal(16 * P)
        m.d.comb += sc_rd.eq(Mux(sc_fp, i_rd.data, d_rd_wt.data))
        sc_issue_d = delay(m, sc_issue, 1, "sc_issue")
        sc_last_d = delay(m, sc_j + 1 == chunks, 1, "sc_last")
        m.d.comb += [
            sc_fifo.w_en.eq(sc_issue_d),
            sc_fifo.w_data.eq(Cat(sc_rd, sc_last_d)),
            self.sc_o.valid.eq(sc_fifo.r_rdy),
            self.sc_o.payload.value.eq(sc_fifo.r_data[:16 * P]),
            self.sc_o.payload.last.eq(sc_fifo.r_data[16 * P]),
            sc_fifo.r_en.eq(self.sc_o.ready),
        ]
        m.d.sync += sc_inflight.eq(sc_inflight + sc_issue - sc_issue_d)
        sc_take_d = delay(m, sc_take, 1, "sc_take")
        sc_beat_d = delay(m, self.sc_i.payload.value, 1, "sc_beat")
        sc_j_out = delay(m, sc_j, 1 + la, "sc_jout")
        with m.If(sc_take):
            m.d.sync += sc_tail.eq(la + 3)
        with m.Elif(sc_tail != 0):
            m.d.sync += sc_tail.eq(sc_tail - 1)
        sc_sum = acc_add.o_valid & (fsm.ongoing("FP_SC_ADD") | fsm.ongoing("BP_SC_ADD"))
        sc_nz = Cat(*((lane(acc_add.o_result, k)[:15] != 0) for k in range(P)))

        # ---- FP accumulate datapath: I[c] += W[i, c] ----
        acc_fp = fsm.ongoing("FP_ACC") | fsm.ongoing("FP_DRAIN")
        acc_valid_d = delay(m, acc_valid, 1, "acc_valid")
        acc_chunk_d = delay(m, acc_chunk, 1 + la, "acc_chunk")

        # ---- FP LIF pass datapath ----
        lif_issue_d = delay(m, lif_issue, 1, "lif_issue")
        lif_chunk_d = delay(m, lif_chunk, 1, "lif_chunk")
        first_step = t < tokens
        m.d.comb += [
            lif.i_valid.eq(lif_issue_d),
            lif.i_x.eq(i_rd.data),
            lif.i_v.eq(Mux(first_step, Cat(*([v_reset] * P)), v_rd.data)),
            lif.i_tag.eq(lif_chunk_d),
        ]
        lif_out_chunk = lif.o_tag[:max(CH, 2).bit_length()]
        lif_mask = Signal(P)
        m.d.comb += lif_mask.eq(lif.o_s & active_mask(lif_out_chunk))
        with m.If(lif.o_valid):
            m.d.comb += [
                v_wr.en.eq(1), v_wr.addr.eq(r_base_ch + lif_out_chunk), v_wr.data.eq(lif.o_v),
                h_wr.en.eq(1), h_wr.addr.eq(t_base_ch + lif_out_chunk), h_wr.data.eq(lif.o_h),
                s_wr.en.eq(1), s_wr.addr.eq(t_base_ch + lif_out_chunk), s_wr.data.eq(lif_mask),
                spk_fifo.w_en.eq(lif_mask.any()),
                spk_fifo.w_data.eq(Cat(lif_mask, lif_out_chunk)),
            ]
        m.d.sync += lif_inflight.eq(lif_inflight + lif_issue - lif.o_valid)

        # Serializer: one output spike event a cycle, lowest neuron first.
        lowest = lowest_set(m, ser_mask, "lowest")
        ser_next_mask = Signal(P)
        m.d.comb += ser_next_mask.eq(ser_mask & (ser_mask - 1))
        with m.If(fsm.ongoing("FP_LIF")):
            m.d.comb += [
                self.fp_o.valid.eq(ser_valid),
                self.fp_o.payload.index.eq(ser_chunk * P + lowest),
                self.fp_o.payload.spike.eq(1),
            ]
        take = ~ser_valid | (self.fp_o.valid & self.fp_o.ready & (ser_next_mask == 0))
        with m.If(self.fp_o.valid & self.fp_o.ready & fsm.ongoing("FP_LIF")):
            m.d.comb += bump[Counter.FP_OUT_EVENTS].eq(1)
            m.d.sync += ser_mask.eq(ser_next_mask)
            with m.If(ser_next_mask == 0):
                m.d.sync += ser_valid.eq(0)
        with m.Elif(ser_valid & fsm.ongoing("FP_LIF")):
            m.d.comb += bump[Counter.FP_STALL].eq(~self.fp_o.ready & (lif_chunk == chunks))
        with m.If(take & spk_fifo.r_rdy):
            m.d.comb += spk_fifo.r_en.eq(1)
            m.d.sync += [ser_mask.eq(spk_fifo.r_data[:P]), ser_chunk.eq(spk_fifo.r_data[P:]),
                         ser_valid.eq(1)]

        # ---- BPTT pass datapath ----
        bp_take = self.bp_i.valid & self.bp_i.ready & fsm.ongoing("BP_RECV")
        bp_g = Signal(16 * P)
        bp_chunk = Signal(range(CH))
        bp_valid = Signal()
        m.d.sync += [bp_valid.eq(bp_take), bp_g.eq(self.bp_i.payload.value), bp_chunk.eq(rc)]
        last_step = bt + tokens >= t_act      # t is in the last timestep: no carry from later
        m.d.comb += [
            bptt.i_valid.eq(bp_valid),
            bptt.i_g.eq(bp_g),
            bptt.i_h.eq(h_rd.data),
            bptt.i_s.eq(s_rd.data),
            bptt.i_eps.eq(Mux(last_step, 0, e_rd.data)),
            bptt.i_tag.eq(bp_chunk),
        ]
        bptt_chunk = bptt.o_tag[:max(CH, 2).bit_length()]
        nz = Cat(*((lane(bptt.o_dx, k)[:15] != 0) for k in range(P)))
        with m.If(bptt.o_valid):
            m.d.comb += [
                e_wr.en.eq(1), e_wr.addr.eq(r_base_ch + bptt_chunk), e_wr.data.eq(bptt.o_eps),
                d_wr.en.eq(1), d_wr.addr.eq(bptt_chunk), d_wr.data.eq(bptt.o_dx),
                nz_wr.en.eq(1), nz_wr.addr.eq(bptt_chunk),
                nz_wr.data.eq(nz & active_mask(bptt_chunk)),
            ]
        with m.Elif(sc_sum & sc_bp):
            m.d.comb += [
                d_wr.en.eq(1), d_wr.addr.eq(sc_j_out), d_wr.data.eq(acc_add.o_result),
                nz_wr.en.eq(1), nz_wr.addr.eq(sc_j_out),
                nz_wr.data.eq(sc_nz & active_mask(sc_j_out)),
            ]

        # ---- Wᵀ·δX: scanner of the neurons with δX != 0, and the column issuer ----
        sc = Signal(range(CH + 1))
        sc_load = Signal()
        sc_loaded = Signal()
        sm = Signal(P)
        sd = Signal(16 * P)
        s_chunk = Signal(range(CH))
        scan_active = Signal()
        cand_valid = Signal()
        cand_n = Signal(range(N))
        cand_d = Signal(16)
        wt_active = Signal()
        wt_n = Signal(range(N))
        wt_d = Signal(16)
        wt_slot = Signal(range(max(FCH, la + 2) + 1))
        bp_hazard = la + 2
        wt_last_slot = Signal(range(max(FCH, bp_hazard)))      # registered, as fp_last
        m.d.sync += wt_last_slot.eq(Mux(in_chunks > bp_hazard, in_chunks, bp_hazard) - 1)
        wt_last = wt_active & (wt_slot == wt_last_slot)
        cand_take = cand_valid & (~wt_active | wt_last)

        m.d.comb += [nz_rd.addr.eq(sc), d_rd_wt.addr.eq(Mux(sc_bp, sc_j, sc)), nz_rd.en.eq(1),
                     d_rd_wt.en.eq(1)]
        s_lowest = lowest_set(m, sm, "s_lowest")
        with m.If(cand_take):
            m.d.comb += bump[Counter.BP_NEURONS].eq(1)
            m.d.sync += [wt_active.eq(1), wt_slot.eq(0), wt_n.eq(cand_n), wt_d.eq(cand_d)]
        with m.Elif(wt_last):
            m.d.sync += wt_active.eq(0)
        with m.Elif(wt_active):
            m.d.sync += wt_slot.eq(wt_slot + 1)
        with m.If(wt_start):
            m.d.sync += [sc.eq(0), scan_active.eq(1), sm.eq(0), sc_loaded.eq(0),
                         cand_valid.eq(0), wt_active.eq(0), wt_done.eq(0)]
        with m.Elif(scan_active):
            with m.If(cand_take):
                m.d.sync += cand_valid.eq(0)
            with m.If(sc_loaded):
                m.d.sync += [sm.eq(nz_rd.data), sd.eq(d_rd_wt.data), s_chunk.eq(sc - 1),
                             sc_loaded.eq(0)]
            with m.Elif(~cand_valid | cand_take):
                with m.If(sm != 0):
                    m.d.sync += [cand_valid.eq(1), cand_n.eq(s_chunk * P + s_lowest),
                                 cand_d.eq((sd >> (s_lowest * 16))[:16]),
                                 sm.eq(sm & (sm - 1))]
                with m.Else():
                    m.d.sync += cand_valid.eq(0)
                    with m.If(sc < chunks):
                        m.d.comb += sc_load.eq(1)
                        m.d.sync += [sc.eq(sc + 1), sc_loaded.eq(1)]
                    with m.Else():
                        m.d.sync += scan_active.eq(0)
        wt_issue = wt_active & (wt_slot < in_chunks)
        wt_pipe_busy = Signal()
        wt_tail = Signal(range(lm + la + 8))
        with m.If(wt_issue):
            m.d.sync += wt_tail.eq(lm + la + 4)
        with m.Elif(wt_tail != 0):
            m.d.sync += wt_tail.eq(wt_tail - 1)
        m.d.comb += wt_pipe_busy.eq(wt_tail != 0)
        with m.If(fsm.ongoing("BP_WT") & ~scan_active & ~wt_active & ~wt_pipe_busy
                  & ~wt_start):
            m.d.sync += wt_done.eq(1)
        with m.If(fsm.ongoing("BP_RECV")):
            m.d.sync += wt_done.eq(0)

        # ---- WG: ΔW[:, i] += δX for every input i logged at timestep t ----
        wg_active = Signal()
        wg_e = Signal(range(F + 1))
        wg_count = Signal(range(F + 1))
        wg_row = Signal(range(F))
        wg_slot = Signal(range(CH + 1))
        wg_phase = Signal(2)   # 0: read count, 1: count ready, 2: row ready, 3: issuing
        wg_issue = Signal()
        wg_tail = Signal(range(la + 8))
        m.d.comb += [cnt_rd.addr.eq(t), log_rd.addr.eq(t_base_f + wg_e)]
        with m.If(wg_start):
            m.d.sync += [wg_active.eq(1), wg_phase.eq(0), wg_e.eq(0), wg_done.eq(0)]
        with m.Elif(wg_active):
            with m.Switch(wg_phase):
                with m.Case(0):
                    m.d.sync += wg_phase.eq(1)
                with m.Case(1):
                    m.d.sync += wg_count.eq(cnt_rd.data)
                    with m.If(cnt_rd.data == 0):
                        m.d.sync += wg_active.eq(0)
                    with m.Else():
                        m.d.sync += wg_phase.eq(2)
                with m.Case(2):
                    m.d.sync += [wg_row.eq(log_rd.data), wg_slot.eq(0), wg_phase.eq(3),
                                 wg_e.eq(wg_e + 1)]
                with m.Case(3):
                    m.d.comb += wg_issue.eq(1)
                    m.d.sync += wg_slot.eq(wg_slot + 1)
                    with m.If(wg_slot + 1 == chunks):
                        with m.If(wg_e == wg_count):
                            m.d.sync += wg_active.eq(0)
                        with m.Elif(chunks == 1):
                            m.d.sync += wg_phase.eq(2)
                        with m.Else():
                            m.d.sync += [wg_row.eq(log_rd.data), wg_slot.eq(0),
                                         wg_e.eq(wg_e + 1)]
        m.d.comb += bump[Counter.WG_BUSY].eq(wg_active)
        with m.If(wg_issue):
            m.d.sync += wg_tail.eq(la + 4)
        with m.Elif(wg_tail != 0):
            m.d.sync += wg_tail.eq(wg_tail - 1)
        with m.If(fsm.ongoing("BP_WT") & ~wg_active & (wg_tail == 0) & ~wg_start):
            m.d.sync += wg_done.eq(1)
        with m.If(fsm.ongoing("BP_RECV")):
            m.d.sync += wg_done.eq(0)

        m.d.comb += [d_rd_wg.addr.eq(wg_slot), d_rd_wg.en.eq(1)]
        wg_valid_d = delay(m, wg_issue, 1, "wg_valid")
        wg_row_d = delay(m, wg_row, 1 + la, "wg_row")
        wg_chunk_d = delay(m, wg_slot, 1 + la, "wg_chunk")
        wg_add.issue(m, wg_valid_d, gmem.rd_data, d_rd_wg.data)

        # ---- BP input-error stream out: A[j] then A[j] = 0 ----
        out_issue_d = delay(m, out_issue, 1, "out_issue")
        out_last_d = delay(m, out_j + 1 == in_chunks, 1, "out_last")
        m.d.comb += [
            out_fifo.w_en.eq(out_issue_d),
            out_fifo.w_data.eq(Cat(a_rd.data, out_last_d)),
            self.bp_o.valid.eq(out_fifo.r_rdy),
            self.bp_o.payload.value.eq(out_fifo.r_data[:16 * P]),
            self.bp_o.payload.last.eq(out_fifo.r_data[16 * P]),
            out_fifo.r_en.eq(self.bp_o.ready),
        ]
        m.d.sync += out_inflight.eq(out_inflight + out_issue - out_issue_d)

        # ---- Update datapath: W = W - lr·ΔW, ΔW = 0 ----
        up_valid_d = delay(m, up_issue, 1, "up_valid")
        up_row_d = delay(m, up_row, 1 + lm + la, "up_row")
        up_chunk_d = delay(m, up_chunk, 1 + lm + la, "up_chunk")

        # ---- shared units and memory ports, by phase ----
        wt_valid_d = delay(m, wt_issue, 1, "wt_valid")
        wt_d_d1 = delay(m, wt_d, 1, "wt_d")
        wt_a_read = delay(m, wt_issue, lm, "wt_aread")
        wt_a_addr = delay(m, wt_slot, lm, "wt_aaddr")
        wt_j_out = delay(m, wt_slot, 1 + lm + la, "wt_jout")
        up_w_d = delay(m, wmem.rd_data, lm, "up_w")
        up_mul_valid = delay(m, up_valid_d, lm, "up_mulv")
        mul_b = Signal(16 * P)
        with m.If(fsm.ongoing("UPDATE") | fsm.ongoing("DRAIN_IDLE")):
            mul.issue(m, up_valid_d, Cat(*([lr] * P)), gmem.rd_data)
            acc_add.issue(m, up_mul_valid, up_w_d, mul.o_result, sub=1)
        with m.Elif(fsm.ongoing("FP_SC_ADD") | fsm.ongoing("BP_SC_ADD")):
            acc_add.issue(m, sc_take_d, sc_rd, sc_beat_d)
        with m.Elif(fsm.ongoing("BP_WT") | fsm.ongoing("BP_OUT")):
            m.d.comb += mul_b.eq(Cat(*([wt_d_d1] * P)))
            mul.issue(m, wt_valid_d, wmem.rd_data, mul_b)
            acc_add.issue(m, mul.o_valid, a_rd.data, mul.o_result)
        with m.Else():
            acc_add.issue(m, acc_valid_d, i_rd.data, wmem.rd_data)

        # weight memory read port
        with m.If(acc_valid & acc_fp):
            m.d.comb += [wmem.rd_en.eq(1), wmem.rd_col.eq(0), wmem.rd_major.eq(iss_row),
                         wmem.rd_minor.eq(acc_chunk), bump[Counter.W_READS].eq(1)]
        with m.Elif(wt_issue):
            m.d.comb += [wmem.rd_en.eq(1), wmem.rd_col.eq(1), wmem.rd_major.eq(wt_n),
                         wmem.rd_minor.eq(wt_slot), bump[Counter.W_READS].eq(1)]
        with m.Elif(up_issue):
            m.d.comb += [wmem.rd_en.eq(1), wmem.rd_col.eq(0), wmem.rd_major.eq(up_row),
                         wmem.rd_minor.eq(up_chunk), bump[Counter.W_READS].eq(1)]

        # current memory
        with m.If(acc_valid & acc_fp):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(acc_chunk)]
        with m.Elif(lif_issue):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(lif_chunk),
                         i_wr.en.eq(1), i_wr.addr.eq(lif_chunk), i_wr.data.eq(0)]
        with m.Elif((sc_issue | sc_take) & sc_fp):
            m.d.comb += [i_rd.en.eq(1), i_rd.addr.eq(sc_j)]
        with m.If(acc_add.o_valid & acc_fp):
            m.d.comb += [i_wr.en.eq(1), i_wr.addr.eq(acc_chunk_d), i_wr.data.eq(acc_add.o_result)]
        with m.Elif(sc_sum & sc_fp):
            m.d.comb += [i_wr.en.eq(1), i_wr.addr.eq(sc_j_out), i_wr.data.eq(acc_add.o_result)]
        m.d.comb += [v_rd.en.eq(1), v_rd.addr.eq(r_base_ch + lif_chunk)]

        # Wᵀδ accumulator memory
        with m.If(wt_a_read):
            m.d.comb += [a_rd.en.eq(1), a_rd.addr.eq(wt_a_addr)]
        with m.Elif(out_issue):
            m.d.comb += [a_rd.en.eq(1), a_rd.addr.eq(out_j),
                         a_wr.en.eq(1), a_wr.addr.eq(out_j), a_wr.data.eq(0)]
        with m.If(acc_add.o_valid & (fsm.ongoing("BP_WT") | fsm.ongoing("BP_OUT"))):
            m.d.comb += [a_wr.en.eq(1), a_wr.addr.eq(wt_j_out), a_wr.data.eq(acc_add.o_result)]
        with m.If(psum_take):
            m.d.comb += [a_wr.en.eq(1), a_wr.addr.eq(pj), a_wr.data.eq(self.psum_i.payload.value)]

        # gradient memory
        with m.If(wg_issue):
            m.d.comb += [gmem.rd_en.eq(1), gmem.rd_col.eq(0), gmem.rd_major.eq(wg_row),
                         gmem.rd_minor.eq(wg_slot), bump[Counter.G_READS].eq(1)]
        with m.Elif(up_issue):
            m.d.comb += [gmem.rd_en.eq(1), gmem.rd_col.eq(0), gmem.rd_major.eq(up_row),
                         gmem.rd_minor.eq(up_chunk), bump[Counter.G_READS].eq(1)]
        with m.If(wg_add.o_valid):
            m.d.comb += [gmem.wr_en.eq(1), gmem.wr_major.eq(wg_row_d),
                         gmem.wr_minor.eq(wg_chunk_d), gmem.wr_data.eq(wg_add.o_result),
                         gmem.wr_mask.eq(-1), bump[Counter.G_WRITES].eq(1)]
        with m.Elif(up_issue | clr_issue):
            m.d.comb += [gmem.wr_en.eq(1), gmem.wr_major.eq(up_row), gmem.wr_minor.eq(up_chunk),
                         gmem.wr_data.eq(0), gmem.wr_mask.eq(-1), bump[Counter.G_WRITES].eq(1)]
        with m.If(acc_add.o_valid & (fsm.ongoing("UPDATE") | fsm.ongoing("DRAIN_IDLE"))):
            m.d.comb += [wmem.wr_en.eq(1), wmem.wr_major.eq(up_row_d),
                         wmem.wr_minor.eq(up_chunk_d), wmem.wr_data.eq(acc_add.o_result),
                         wmem.wr_mask.eq(-1), bump[Counter.W_WRITES].eq(1)]

        # BP state memories
        with m.If(bp_take):
            m.d.comb += [h_rd.en.eq(1), h_rd.addr.eq(t_base_ch + rc),
                         s_rd.en.eq(1), s_rd.addr.eq(t_base_ch + rc),
                         e_rd.en.eq(1), e_rd.addr.eq(r_base_ch + rc)]

        # =====================================================================================
        # Word bus
        # =====================================================================================
        region = self.bus_addr[28:32]
        offset = self.bus_addr[:28]
        nb, ib = self.neuron_bits, self.input_bits
        w_n = offset[ib:ib + nb]
        w_i = offset[:ib]
        w_ok = (offset[ib + nb:] == 0) & (w_n < N) & (w_i < F)
        st_n = offset[:nb]
        st_t = offset[nb:]
        st_ok = (st_n < N) & (st_t < T)
        c_ok = offset < 2 * len(Counter)
        bus_err = Signal()
        bus_lane = Signal(range(P))
        bus_kind = Signal(4)
        bus_reg = Signal(16)
        bus_pending = Signal()
        shadow = Signal(32)
        m.d.sync += [bus_pending.eq(self.bus_en), self.bus_ack.eq(bus_pending),
                     self.bus_err.eq(bus_err), bus_err.eq(0)]
        with m.If(self.bus_en):
            m.d.sync += bus_kind.eq(region)
            with m.Switch(region):
                with m.Case(Region.REG):
                    m.d.sync += bus_lane.eq(0)
                    with m.If(self.bus_we):
                        ok = Signal()
                        value = self.bus_wdata
                        with m.Switch(offset):
                            with m.Case(Reg.COMMAND):
                                m.d.comb += ok.eq(idle & (value < 5))
                                with m.If(ok & ~self.bus_probe):
                                    m.d.comb += [command_valid.eq(value != 0),
                                                 command.eq(value),
                                                 clear_request.eq(
                                                     value == Command.CLEAR_COUNTERS)]
                            with m.Case(Reg.NEURONS):
                                m.d.comb += ok.eq(idle & (value >= 1) & (value <= N))
                                with m.If(ok & ~self.bus_probe):
                                    m.d.sync += [n_act.eq(value),
                                                 chunks.eq((value + P - 1) >> lane_bits)]
                            with m.Case(Reg.INPUTS):
                                m.d.comb += ok.eq(idle & (value >= 1) & (value <= F))
                                with m.If(ok & ~self.bus_probe):
                                    m.d.sync += [f_act.eq(value),
                                                 in_chunks.eq((value + P - 1) >> lane_bits)]
                            for reg, sig in ((Reg.TIMESTEPS, t_act), (Reg.TOKENS, tokens)):
                                with m.Case(reg):
                                    m.d.comb += ok.eq(idle & (value >= 1) & (value <= T))
                                    with m.If(ok & ~self.bus_probe):
                                        m.d.sync += [sig.eq(value), fp_done.eq(0),
                                                     bp_done.eq(0)]
                            with m.Case(Reg.SHORTCUT):
                                m.d.comb += ok.eq(idle & (value < 3))
                                with m.If(ok & ~self.bus_probe):
                                    m.d.sync += shortcut.eq(value)
                            for reg, sig in ((Reg.IN_TOKENS, in_tokens),
                                             (Reg.IN_STRIDE, in_stride)):
                                with m.Case(reg):
                                    m.d.comb += ok.eq(idle & (value >= 1) & (value <= F))
                                    with m.If(ok & ~self.bus_probe):
                                        m.d.sync += sig.eq(value)
                            for reg, sig in ((Reg.V_TH, v_th), (Reg.V_RESET, v_reset),
                                             (Reg.INV_TAU, inv_tau), (Reg.DECAY, decay),
                                             (Reg.LR, lr)):
                                with m.Case(reg):
                                    m.d.comb += ok.eq(idle)
                                    with m.If(ok & ~self.bus_probe):
                                        m.d.sync += sig.eq(value)
                            for reg, sig in ((Reg.BP_INPUT_ERROR, bp_input_error),
                                             (Reg.PARTIAL_IN, partial_in)):
                                with m.Case(reg):
                                    m.d.comb += ok.eq(idle & (value < 2))
                                    with m.If(ok & ~self.bus_probe):
                                        m.d.sync += sig.eq(value[0])
                            with m.Case(Reg.ERRORS):
                                m.d.comb += ok.eq(1)
                                with m.If(~self.bus_probe):
                                    m.d.sync += errors.eq(errors & ~value)
                        m.d.sync += bus_err.eq(~ok)
                    with m.Else():
                        with m.Switch(offset):
                            with m.Case(Reg.STATUS):
                                m.d.sync += bus_reg.eq(Cat(~idle, fp_done, bp_done))
                            with m.Case(Reg.NEURONS):
                                m.d.sync += bus_reg.eq(n_act)
                            with m.Case(Reg.INPUTS):
                                m.d.sync += bus_reg.eq(f_act)
                            with m.Case(Reg.TIMESTEPS):
                                m.d.sync += bus_reg.eq(t_act)
                            for reg, sig in ((Reg.V_TH, v_th), (Reg.V_RESET, v_reset),
                                             (Reg.INV_TAU, inv_tau), (Reg.DECAY, decay),
                                             (Reg.LR, lr), (Reg.BP_INPUT_ERROR, bp_input_error),
                                             (Reg.PARTIAL_IN, partial_in), (Reg.ERRORS, errors),
                                             (Reg.TOKENS, tokens), (Reg.IN_TOKENS, in_tokens),
                                             (Reg.IN_STRIDE, in_stride), (Reg.SHORTCUT, shortcut)):
                                with m.Case(reg):
                                    m.d.sync += bus_reg.eq(sig)
                            with m.Case(Reg.COMMAND):
                                m.d.sync += bus_reg.eq(0)
                            with m.Default():
                                m.d.sync += bus_err.eq(1)
                with m.Case(Region.WEIGHT, Region.GRAD):
                    with m.If(~w_ok | ~idle | (self.bus_we & (region == Region.GRAD))):
                        m.d.sync += bus_err.eq(1)
                    with m.Else():
                        m.d.sync += bus_lane.eq(w_n[:lane_bits] if lane_bits else 0)
                        for sm_, kind in ((wmem, Region.WEIGHT), (gmem, Region.GRAD)):
                            with m.If(region == kind):
                                with m.If(self.bus_we):
                                    m.d.comb += [
                                        sm_.wr_en.eq(~self.bus_probe), sm_.wr_major.eq(w_i),
                                        sm_.wr_minor.eq(w_n >> lane_bits),
                                        sm_.wr_data.eq(Cat(*([self.bus_wdata] * P))),
                                        sm_.wr_mask.eq(1 << (w_n[:lane_bits] if lane_bits
                                                             else 0)),
                                    ]
                                with m.Else():
                                    m.d.comb += [
                                        sm_.rd_en.eq(1), sm_.rd_col.eq(0),
                                        sm_.rd_major.eq(w_i), sm_.rd_minor.eq(w_n >> lane_bits),
                                    ]
                with m.Case(Region.CHARGE, Region.SPIKE):
                    with m.If(~st_ok | ~idle | self.bus_we):
                        m.d.sync += bus_err.eq(1)
                    with m.Else():
                        m.d.sync += bus_lane.eq(st_n[:lane_bits] if lane_bits else 0)
                        m.d.comb += [
                            h_rd.en.eq(1), h_rd.addr.eq(st_t * CH + (st_n >> lane_bits)),
                            s_rd.en.eq(1), s_rd.addr.eq(st_t * CH + (st_n >> lane_bits)),
                        ]
                with m.Case(Region.COUNTER):
                    with m.If(~c_ok | self.bus_we):
                        m.d.sync += bus_err.eq(1)
                    with m.Elif(offset[0] == 0):
                        value = counters[offset[1:5]]
                        m.d.sync += [shadow.eq(value), bus_reg.eq(value[:16])]
                    with m.Else():
                        m.d.sync += bus_reg.eq(shadow[16:])
                with m.Default():
                    m.d.sync += bus_err.eq(1)
        with m.Switch(bus_kind):
            with m.Case(Region.WEIGHT):
                m.d.sync += self.bus_rdata.eq((wmem.rd_data >> (bus_lane * 16))[:16])
            with m.Case(Region.GRAD):
                m.d.sync += self.bus_rdata.eq((gmem.rd_data >> (bus_lane * 16))[:16])
            with m.Case(Region.CHARGE):
                m.d.sync += self.bus_rdata.eq((h_rd.data >> (bus_lane * 16))[:16])
            with m.Case(Region.SPIKE):
                m.d.sync += self.bus_rdata.eq((s_rd.data >> bus_lane)[0])
            with m.Default():
                m.d.sync += self.bus_rdata.eq(bus_reg)
        return m
