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

The word bus (``bus``, :func:`~spikeforge.hw.core_control.word_bus`) reaches registers, weights,
gradients, the saved state and the counters (:mod:`spikeforge.regmap`); every access is
acknowledged two cycles after ``bus.en``. A write with ``bus.probe`` set is checked (``bus.err``
as for the write) but changes nothing, so that a host link can check every word of a frame
before it writes any.

Engines and their cost in cycles (``P`` lanes, ``C = ⌈neurons/P⌉``, ``F = ⌈fan_in/P⌉``):

* **FP**: each input spike adds its weight row into the currents, ``max(C, hazard)`` cycles;
  then the LIF pass, ``C`` cycles. No multiplier on this path.
* **BP**: per timestep, the BPTT pass (``C`` beats), then ``Wᵀ·δX`` over the neurons with
  ``δX != 0`` only, ``max(F, hazard)`` cycles each, then ``F`` beats out.
* **WG**: alongside ``Wᵀ·δX``, ``ΔW[:, i] += δX`` for each input ``i`` that spiked in that
  timestep, ``C`` cycles each.
* **Update**: ``W = W - lr·ΔW`` and ``ΔW = 0``, one lane vector a cycle.
"""

from amaranth.hdl import Module, Mux
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge import regmap
from spikeforge.golden.surrogate import Surrogate
from spikeforge.regmap import Counter

from .core_control import BusDecoder, CoreRegisters, Counters, word_bus
from .core_datapath import CoreDatapath, ErrorSums, PortSet
from .core_engines import (
    BeatSender,
    ColumnIssuer,
    EventIssuer,
    EventLog,
    GradientSequencer,
    NonzeroScanner,
    RowWalker,
    ShortcutLink,
    SpikeSerializer,
    chunk_bits,
    error_layout,
    event_layout,
)
from .core_sequencer import CoreSequencer, Phase
from .fp16 import FP16Adder, FP16Multiplier
from .lanes import check_lanes
from .neuron import BPTTUpdate, LIFUpdate

__all__ = ["Core", "error_layout", "event_layout"]


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

    Members
    -------
    fp_i, fp_o, bp_i, bp_o, psum_i, sc_o, sc_i : stream.Signature
        The streams (see the module).
    bus : In(:func:`~spikeforge.hw.core_control.word_bus`)
        The word bus (see the module).
    n_active : Out(range(neurons + 1))
        The active neurons (``Reg.NEURONS``).
    busy : Out(1)
        An engine is running (``Status.BUSY``).
    waiting : Out(1)
        The core waits for input on ``fp_i``, ``bp_i`` or ``sc_i``.
    """

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, timesteps: int,
                 reset: str = "hard", detach_reset: bool = True,
                 surrogate: Surrogate | None = None):
        check_lanes(lanes)
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
            "bus": In(word_bus()),
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
        CH = N // P
        sizes = dict(neurons=N, fan_in=F, timesteps=T, lanes=P)
        cb = chunk_bits(CH)
        lif = LIFUpdate(lanes=P, reset=self._reset, tag_width=cb)
        bptt = BPTTUpdate(lanes=P, tag_width=cb, reset=self._reset,
                          detach_reset=self._detach_reset, surrogate=self._surrogate)
        la, lm = FP16Adder.LATENCY, FP16Multiplier.LATENCY
        lif_depth = lif.latency + 4
        m.submodules.regs = regs = CoreRegisters(**sizes)
        m.submodules.counters = counters = Counters()
        m.submodules.bus = decoder = BusDecoder(**sizes)
        m.submodules.seq = seq = CoreSequencer(**sizes, fp_drain=la + 2,
                                               bp_drain=bptt.latency + 2,
                                               update_drain=lm + la + 2)
        m.submodules.issuer = issuer = EventIssuer(fan_in=F, chunks=CH, hazard=la + 2)
        m.submodules.serializer = ser = SpikeSerializer(neurons=N, lanes=P, depth=lif_depth)
        m.submodules.link = link = ShortcutLink(lanes=P, chunks=CH, add_latency=la)
        m.submodules.scanner = scanner = NonzeroScanner(neurons=N, lanes=P)
        m.submodules.columns = columns = ColumnIssuer(neurons=N, fan_in=F, lanes=P,
                                                      mul_latency=lm, add_latency=la)
        m.submodules.wg = wg = GradientSequencer(fan_in=F, chunks=CH, add_latency=la)
        m.submodules.log = log = EventLog(fan_in=F, timesteps=T)
        m.submodules.walker = walker = RowWalker(rows=F, chunks=CH, latency=1 + lm + la)
        m.submodules.out = out = BeatSender(P)
        m.submodules.sums = sums = ErrorSums(fan_in=F, lanes=P)
        s, phase = regs.settings, seq.phase
        parts = dict(seq=seq, issuer=issuer, serializer=ser, link=link, scanner=scanner,
                     columns=columns, wg=wg, walker=walker, out=out, sums=sums, bus=decoder)
        m.submodules.datapath = dp = CoreDatapath(**sizes, lif=lif, bptt=bptt,
                                                  settings=regs.settings.shape(), parts=parts)
        for name, names in CoreDatapath.USES.items():
            wiring.connect(m, PortSet(parts[name], names), getattr(dp, name))
        bp_take = self.bp_i.valid & self.bp_i.ready & (phase == Phase.BP_RECV)
        m.d.comb += [dp.settings.eq(s), dp.wdata.eq(self.bus.wdata),
                     dp.bp_g.eq(self.bp_i.payload.value), dp.bp_take.eq(bp_take)]

        # the bus, the registers, the counters
        wiring.connect(m, wiring.flipped(self.bus), decoder.bus)
        idle = phase == Phase.IDLE
        m.d.comb += [
            decoder.idle.eq(idle), regs.idle.eq(idle), regs.access.eq(decoder.reg_access),
            regs.we.eq(self.bus.we), regs.probe.eq(self.bus.probe),
            regs.offset.eq(self.bus.addr.offset), regs.wdata.eq(self.bus.wdata),
            decoder.reg_write_ok.eq(regs.write_ok), decoder.reg_read_ok.eq(regs.read_ok),
            decoder.reg_read_data.eq(regs.read_data),
            counters.read.eq(decoder.counter_read), counters.index.eq(decoder.counter_index),
            counters.high.eq(decoder.counter_high), decoder.counter_data.eq(counters.read_data),
            counters.clear.eq(regs.clear_counters),
            regs.fp_done_set.eq(seq.fp_done_set), regs.bp_done_set.eq(seq.bp_done_set),
            regs.done_clear.eq(seq.done_clear), regs.error_set.eq(issuer.error_set),
            self.busy.eq(~idle), self.n_active.eq(s.neurons),
        ]
        m.d.comb += counters.bump.eq(seq.bump | dp.bump | (1 << Counter.CYCLES)
                                     | (sums.stall << Counter.BP_STALL)
                                     | (issuer.log_en << Counter.FP_EVENTS)
                                     | ((ser.o.valid & ser.o.ready) << Counter.FP_OUT_EVENTS)
                                     | ((columns.i.valid & columns.i.ready) << Counter.BP_NEURONS)
                                     | (wg.active << Counter.WG_BUSY))
        busy = CoreSequencer.busy(phase, acc_busy=issuer.busy, bp_input_error=s.bp_input_error,
                                  wt_done=columns.done)
        m.d.comb += [counters.bump[c].eq(value) for c, value in busy.items()]
        m.d.comb += counters.bump[Counter.FP_STALL].eq(    # the serializer's stall counts alone
            Mux(ser.stalled, seq.lif_chunk == s.chunks, seq.bump[Counter.FP_STALL]))

        # the sequencer and the engines
        m.d.comb += [
            seq.command.eq(regs.command), seq.timesteps.eq(s.timesteps),
            seq.tokens.eq(s.tokens), seq.chunks.eq(s.chunks), seq.in_chunks.eq(s.in_chunks),
            seq.shortcut.eq(s.shortcut), seq.bp_input_error.eq(s.bp_input_error),
            seq.partial_in.eq(s.partial_in),
            seq.fp_done.eq(regs.fp_done), seq.bp_done.eq(regs.bp_done),
            seq.bp_valid.eq(self.bp_i.valid), seq.fp_ready.eq(self.fp_o.ready),
            self.bp_i.ready.eq(seq.bp_ready), seq.psum_done.eq(sums.received),
            sums.receive.eq(phase == Phase.BP_PSUM), sums.start.eq(seq.psum_start),
            sums.count.eq(s.in_chunks),
            seq.acc_busy.eq(issuer.busy), seq.acc_close.eq(issuer.close),
            seq.sc_done.eq(link.done), seq.sc_stall.eq(link.stall),
            seq.lif_room.eq(ser.room), seq.lif_empty.eq(ser.empty),
            ser.lif_issue.eq(seq.lif_issue), ser.lif_out.eq(dp.lif_out),
            seq.wt_done.eq(columns.done), seq.wg_done.eq(wg.done),
            seq.out_room.eq(out.room), seq.out_empty.eq(out.empty),
            seq.walk_done.eq(walker.done),
            issuer.enable.eq(phase == Phase.FP_ACC), issuer.begin.eq(seq.begin),
            issuer.step_done.eq(seq.step_done), issuer.chunks.eq(s.chunks),
            issuer.inputs.eq(s.inputs), issuer.in_tokens.eq(s.in_tokens),
            issuer.in_stride.eq(s.in_stride),
            ser.enable.eq(phase == Phase.FP_LIF),
            link.send.eq((phase == Phase.FP_SC_OUT) | (phase == Phase.BP_SC_OUT)),
            link.add.eq((phase == Phase.FP_SC_ADD) | (phase == Phase.BP_SC_ADD)),
            link.restart.eq(seq.sc_restart), link.chunks.eq(s.chunks),
            scanner.start.eq(seq.wt_start), scanner.chunks.eq(s.chunks),
            columns.start.eq(seq.wt_start), columns.in_chunks.eq(s.in_chunks),
            columns.scanning.eq(scanner.active), columns.counting.eq(phase == Phase.BP_WT),
            columns.clear.eq(phase == Phase.BP_RECV),
            log.t.eq(seq.t), log.write.eq(issuer.log_en), log.index.eq(issuer.count),
            log.value.eq(issuer.log_data), log.close.eq(seq.count_write),
            log.entry.eq(wg.entry), wg.count_data.eq(log.count), wg.log_data.eq(log.input),
            wg.start.eq(seq.wg_start), wg.chunks.eq(s.chunks),
            wg.counting.eq(phase == Phase.BP_WT), wg.clear.eq(phase == Phase.BP_RECV),
            walker.start.eq(seq.walk_start),
            walker.enable.eq((phase == Phase.UPDATE) | (phase == Phase.CLEAR)),
            walker.rows.eq(Mux(phase == Phase.UPDATE, s.inputs, F)),
            walker.chunks.eq(Mux(phase == Phase.UPDATE, s.chunks, CH)),
            out.issue.eq(seq.out_issue), out.last.eq(seq.out_j + 1 == s.in_chunks),
            self.waiting.eq(issuer.waiting | seq.waiting | link.waiting),
        ]
        wiring.connect(m, wiring.flipped(self.fp_i), issuer.i)
        wiring.connect(m, scanner.o, columns.i)
        wiring.connect(m, wiring.flipped(self.psum_i), sums.psum_i)
        wiring.connect(m, out.o, wiring.flipped(self.bp_o))
        wiring.connect(m, link.sc_o, wiring.flipped(self.sc_o))
        wiring.connect(m, wiring.flipped(self.sc_i), link.sc_i)
        with m.If(phase == Phase.FP_LIF):
            m.d.comb += [self.fp_o.valid.eq(ser.o.valid), self.fp_o.payload.eq(ser.o.payload)]
        with m.Elif(seq.fp_end):
            m.d.comb += [self.fp_o.valid.eq(1), self.fp_o.payload.last.eq(1)]
        m.d.comb += ser.o.ready.eq(self.fp_o.ready)
        return m
