# SPDX-License-Identifier: Apache-2.0
"""A core's word bus and its control blocks on it: the registers, the counters and the bus
decoder.

The bus (:func:`word_bus`, :mod:`spikeforge.regmap`) takes one access a cycle (``en``) and
acknowledges it two cycles later: the decoder registers the access's result (``err`` and the
read data) one cycle after ``en`` and again on its bus port. Memory regions are reached through
the decoder's request ports, which the core's memory arbiter gives precedence over its engines.
"""

from amaranth.hdl import Array, Cat, Module, Mux, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spikeforge import regmap
from spikeforge.regmap import COUNTERS, Command, Counter, ErrorFlag, Reg, Region, Shortcut

__all__ = ["BusDecoder", "CoreRegisters", "Counters", "settings_layout", "word_bus"]


def word_bus() -> wiring.Signature:
    """The word bus of a core (:mod:`spikeforge.regmap`), as the one that makes the accesses
    sees it.

    Members
    -------
    en : Out(1)
        An access this cycle. ``we``, ``probe``, ``addr`` and ``wdata`` are taken only in the
        cycle of ``en``; a core takes one access a cycle.
    we : Out(1)
        The access is a write.
    probe : Out(1)
        A write that is checked (``err`` as for the write) but changes nothing, so that a host
        link can check every word of a frame before it writes any.
    addr : Out(:func:`~spikeforge.regmap.address_layout`)
        The word's address: a :class:`~spikeforge.regmap.Region` and an offset in it.
    wdata : Out(16)
        The word written.
    ack : In(1)
        The access's answer, high for one cycle: at a core, two cycles after ``en``. A requester
        behind more registers (the SoC's) waits for it.
    err : In(1)
        With ``ack``: the access was refused (an address out of range, a write to a read-only
        region, or a write while the core is busy) and changed nothing.
    rdata : In(16)
        With ``ack``: the word read.
    """
    return wiring.Signature({
        "en": Out(1),
        "we": Out(1),
        "probe": Out(1),
        "addr": Out(regmap.address_layout()),
        "wdata": Out(16),
        "ack": In(1),
        "err": In(1),
        "rdata": In(16),
    })


def settings_layout(*, neurons: int, fan_in: int, timesteps: int,
                    lanes: int) -> data.StructLayout:
    """The registers a core's engines work from (:class:`~spikeforge.regmap.Reg`), with the
    active layer's lane chunks ``⌈neurons / lanes⌉`` and ``⌈inputs / lanes⌉``."""
    N, F, T = neurons, fan_in, timesteps
    return data.StructLayout({
        "neurons": range(N + 1), "inputs": range(F + 1), "timesteps": range(T + 1),
        "chunks": range(N // lanes + 1), "in_chunks": range(F // lanes + 1),
        "v_th": 16, "v_reset": 16, "inv_tau": 16, "decay": 16, "lr": 16,
        "tokens": range(T + 1), "in_tokens": range(F + 1), "in_stride": range(F + 1),
        "bp_input_error": 1, "partial_in": 1, "shortcut": Shortcut,
    })


def settings_init(*, neurons: int, fan_in: int, timesteps: int, lanes: int) -> dict:
    """The registers after reset: the whole configured layer, 1/τ = 1/2, no tokens."""
    return {"neurons": neurons, "inputs": fan_in, "timesteps": timesteps,
            "chunks": neurons // lanes, "in_chunks": fan_in // lanes, "v_th": 0x3C00,
            "v_reset": 0x0000, "inv_tau": 0x3800, "decay": 0x3800, "lr": 0x2000, "tokens": 1,
            "in_tokens": 1, "in_stride": fan_in, "bp_input_error": 1}


class CoreRegisters(wiring.Component):
    """The register region of a core's bus.

    Members
    -------
    access, we, probe, offset, wdata : In
        A bus access to :attr:`~spikeforge.regmap.Region.REG` this cycle. A probe is checked
        (``write_ok``) but changes nothing.
    write_ok, read_ok, read_data : Out, combinational
        Whether the write is valid (the register exists, the core is idle where it must be,
        the value is in range) and what a read returns.
    idle : In
        The core is idle: every register but ``ERRORS`` is written only then.
    settings : Out(:func:`settings_layout`)
        The registers the engines work from.
    command, clear_counters : Out, combinational
        A command written this cycle (``command`` ≠ ``NONE``), and whether it clears the
        counters.
    fp_done_set, bp_done_set, done_clear : In
        The sequencer's changes of the status bits.
    error_set : In
        Error flags raised this cycle (sticky until a write of ``ERRORS`` clears them; one raised
        in the cycle of that write stays).
    """

    def __init__(self, *, neurons: int, fan_in: int, timesteps: int, lanes: int):
        self._sizes = dict(neurons=neurons, fan_in=fan_in, timesteps=timesteps, lanes=lanes)
        super().__init__({
            "access": In(1), "we": In(1), "probe": In(1), "offset": In(regmap.OFFSET_BITS),
            "wdata": In(16),
            "write_ok": Out(1), "read_ok": Out(1), "read_data": Out(16),
            "idle": In(1),
            "settings": Out(settings_layout(**self._sizes), init=settings_init(**self._sizes)),
            "command": Out(Command), "clear_counters": Out(1),
            "fp_done": Out(1), "bp_done": Out(1),
            "fp_done_set": In(1), "bp_done_set": In(1), "done_clear": In(1),
            "error_set": In(len(ErrorFlag)),
        })

    def elaborate(self, platform):
        m = Module()
        N, F, T = self._sizes["neurons"], self._sizes["fan_in"], self._sizes["timesteps"]
        lane_bits = self._sizes["lanes"].bit_length() - 1
        s = self.settings
        fp_done, bp_done, errors = self.fp_done, self.bp_done, Signal(len(ErrorFlag))

        with m.If(self.done_clear):
            m.d.sync += [fp_done.eq(0), bp_done.eq(0)]
        with m.If(self.fp_done_set):
            m.d.sync += fp_done.eq(1)
        with m.If(self.bp_done_set):
            m.d.sync += bp_done.eq(1)
        m.d.sync += errors.eq(errors | self.error_set)

        value, idle, change = self.wdata, self.idle, self.access & self.we & ~self.probe
        in_range = {Reg.NEURONS: (1, N), Reg.INPUTS: (1, F), Reg.TIMESTEPS: (1, T),
                    Reg.TOKENS: (1, T), Reg.IN_TOKENS: (1, F), Reg.IN_STRIDE: (1, F),
                    Reg.SHORTCUT: (0, len(Shortcut) - 1), Reg.BP_INPUT_ERROR: (0, 1),
                    Reg.PARTIAL_IN: (0, 1), Reg.COMMAND: (0, len(Command) - 1)}
        fields = {Reg.NEURONS: s.neurons, Reg.INPUTS: s.inputs, Reg.TIMESTEPS: s.timesteps,
                  Reg.V_TH: s.v_th, Reg.V_RESET: s.v_reset, Reg.INV_TAU: s.inv_tau,
                  Reg.DECAY: s.decay, Reg.LR: s.lr, Reg.BP_INPUT_ERROR: s.bp_input_error,
                  Reg.PARTIAL_IN: s.partial_in, Reg.TOKENS: s.tokens,
                  Reg.IN_TOKENS: s.in_tokens, Reg.IN_STRIDE: s.in_stride,
                  Reg.SHORTCUT: s.shortcut}
        with m.Switch(self.offset):
            for reg, field in fields.items():
                with m.Case(reg):
                    low, high = in_range.get(reg, (None, None))
                    ok = idle if low is None else idle & (value >= low) & (value <= high)
                    m.d.comb += [self.write_ok.eq(ok), self.read_ok.eq(1),
                                 self.read_data.eq(field)]
                    with m.If(change & ok):
                        m.d.sync += field.eq(value)
                        if reg in (Reg.TIMESTEPS, Reg.TOKENS):
                            m.d.sync += [fp_done.eq(0), bp_done.eq(0)]
                        if reg == Reg.NEURONS:
                            m.d.sync += s.chunks.eq((value + (1 << lane_bits) - 1) >> lane_bits)
                        if reg == Reg.INPUTS:
                            m.d.sync += s.in_chunks.eq((value + (1 << lane_bits) - 1)
                                                       >> lane_bits)
            with m.Case(Reg.COMMAND):
                ok = idle & (value < len(Command))
                m.d.comb += [self.write_ok.eq(ok), self.read_ok.eq(1)]
                with m.If(change & ok):
                    m.d.comb += [self.command.eq(value),
                                 self.clear_counters.eq(value == Command.CLEAR_COUNTERS)]
            with m.Case(Reg.STATUS):
                m.d.comb += [self.read_ok.eq(1), self.read_data.eq(Cat(~idle, fp_done, bp_done))]
            with m.Case(Reg.ERRORS):
                m.d.comb += [self.write_ok.eq(1), self.read_ok.eq(1), self.read_data.eq(errors)]
                with m.If(change):
                    m.d.sync += errors.eq((errors & ~value) | self.error_set)
        return m


class Counters(wiring.Component):
    """The core's 32-bit event counters (:class:`~spikeforge.regmap.Counter`).

    ``bump`` counts one for each set bit a cycle; ``clear`` (a command's write) resets them all
    one cycle later, from a flip-flop: the reset fans out to every counter bit. A read of a
    counter's low half (``read`` with ``high`` clear) returns it and keeps its high half for the
    read of ``high`` that follows, so that the two halves are of the same moment.
    """

    def __init__(self):
        super().__init__({
            "bump": In(len(Counter)), "clear": In(1),
            "read": In(1), "index": In(range(len(Counter))), "high": In(1),
            "read_data": Out(16),
        })

    def elaborate(self, platform):
        m = Module()
        counters = Array(Signal(32, name=f"cnt_{name}") for name in COUNTERS)
        cleared = Signal()
        shadow = Signal(32)
        m.d.sync += cleared.eq(self.clear)
        for c in Counter:
            with m.If(cleared):
                m.d.sync += counters[c].eq(0)
            with m.Elif(self.bump[c]):
                m.d.sync += counters[c].eq(counters[c] + 1)
        value = counters[self.index]
        m.d.comb += self.read_data.eq(Mux(self.high, shadow[16:], value[:16]))
        with m.If(self.read & ~self.high):
            m.d.sync += shadow.eq(value)
        return m


def _memory_request(index_shape) -> data.StructLayout:
    return data.StructLayout({"en": 1, "we": 1, "probe": 1, "major": index_shape[0],
                              "minor": index_shape[1], "lane": index_shape[2]})


class BusDecoder(wiring.Component):
    """The word bus of a core: the address decode, the acknowledge and the read data.

    Members
    -------
    bus : In(:func:`word_bus`)
        An access (``en``) is answered two cycles later on ``ack`` with ``err`` and, for a read,
        ``rdata``. Memory and state regions are refused while the core is busy, out of range,
        or written where they are read only.
    idle : In(1)
        The core is idle.
    reg_access : Out(1); reg_write_ok, reg_read_ok, reg_read_data : In
        A register access, to a :class:`CoreRegisters`' bus side, and its answer.
    counter_read, counter_index, counter_high : Out; counter_data : In
        A counter read, to :class:`Counters`, and its answer.
    w_req, g_req : Out
        A weight or gradient access (``major`` = input ``i``, ``minor`` = lane chunk of ``n``,
        ``lane`` its lane).
    state_req : Out
        A charge or spike read (the step's chunk address).
    w_data, g_data, h_data, s_data : In
        The memories' read data, the cycle after a request.
    """

    def __init__(self, *, neurons: int, fan_in: int, timesteps: int, lanes: int):
        self._N, self._F, self._T, self._P = neurons, fan_in, timesteps, lanes
        CH = neurons // lanes
        super().__init__({
            "bus": In(word_bus()),
            "idle": In(1),
            "reg_access": Out(1), "reg_write_ok": In(1), "reg_read_ok": In(1),
            "reg_read_data": In(16),
            "counter_read": Out(1), "counter_index": Out(range(len(Counter))),
            "counter_high": Out(1), "counter_data": In(16),
            "w_req": Out(_memory_request((range(fan_in), range(CH), range(lanes)))),
            "g_req": Out(_memory_request((range(fan_in), range(CH), range(lanes)))),
            "state_req": Out(data.StructLayout({"en": 1, "addr": range(timesteps * CH)})),
            "w_data": In(16 * lanes), "g_data": In(16 * lanes), "h_data": In(16 * lanes),
            "s_data": In(lanes),
        })

    def elaborate(self, platform):
        m = Module()
        N, F, T, P = self._N, self._F, self._T, self._P
        lane_bits = P.bit_length() - 1
        bus = self.bus
        offset, region = bus.addr.offset, bus.addr.region
        nb, ib = regmap.index_bits(N), regmap.index_bits(F)
        w_n, w_i = offset[ib:ib + nb], offset[:ib]
        w_ok = (offset[ib + nb:] == 0) & (w_n < N) & (w_i < F)
        st_n, st_t = offset[:nb], offset[nb:]
        st_ok = (st_n < N) & (st_t < T)
        c_ok = offset < 2 * len(Counter)
        err, pending = Signal(), Signal()
        lane_sel = Signal(range(P))
        kind = Signal(Region)
        reg = Signal(16)
        m.d.sync += [pending.eq(bus.en), bus.ack.eq(pending), bus.err.eq(err), err.eq(0)]
        m.d.comb += [self.reg_access.eq(bus.en & (region == Region.REG)),
                     self.counter_read.eq(bus.en & (region == Region.COUNTER) & c_ok & ~bus.we),
                     self.counter_index.eq(offset[1:]), self.counter_high.eq(offset[0])]
        for req in (self.w_req, self.g_req):
            m.d.comb += [req.we.eq(bus.we), req.probe.eq(bus.probe),
                         req.major.eq(w_i), req.minor.eq(w_n >> lane_bits),
                         req.lane.eq(w_n[:lane_bits] if lane_bits else 0)]
        m.d.comb += self.state_req.addr.eq(st_t * (N // P) + (st_n >> lane_bits))
        with m.If(bus.en):
            m.d.sync += kind.eq(region)
            with m.Switch(region):
                with m.Case(Region.REG):
                    m.d.sync += lane_sel.eq(0)
                    with m.If(bus.we):
                        m.d.sync += err.eq(~self.reg_write_ok)
                    with m.Elif(self.reg_read_ok):
                        m.d.sync += reg.eq(self.reg_read_data)
                    with m.Else():
                        m.d.sync += err.eq(1)
                with m.Case(Region.WEIGHT, Region.GRAD):
                    with m.If(~w_ok | ~self.idle | (bus.we & (region == Region.GRAD))):
                        m.d.sync += err.eq(1)
                    with m.Else():
                        m.d.sync += lane_sel.eq(w_n[:lane_bits] if lane_bits else 0)
                        m.d.comb += [self.w_req.en.eq(region == Region.WEIGHT),
                                     self.g_req.en.eq(region == Region.GRAD)]
                with m.Case(Region.CHARGE, Region.SPIKE):
                    with m.If(~st_ok | ~self.idle | bus.we):
                        m.d.sync += err.eq(1)
                    with m.Else():
                        m.d.sync += lane_sel.eq(st_n[:lane_bits] if lane_bits else 0)
                        m.d.comb += self.state_req.en.eq(1)
                with m.Case(Region.COUNTER):
                    with m.If(~c_ok | bus.we):
                        m.d.sync += err.eq(1)
                    with m.Else():
                        m.d.sync += reg.eq(self.counter_data)
                with m.Default():
                    m.d.sync += err.eq(1)
        with m.Switch(kind):
            with m.Case(Region.WEIGHT):
                m.d.sync += bus.rdata.eq((self.w_data >> (lane_sel * 16))[:16])
            with m.Case(Region.GRAD):
                m.d.sync += bus.rdata.eq((self.g_data >> (lane_sel * 16))[:16])
            with m.Case(Region.CHARGE):
                m.d.sync += bus.rdata.eq((self.h_data >> (lane_sel * 16))[:16])
            with m.Case(Region.SPIKE):
                m.d.sync += bus.rdata.eq((self.s_data >> lane_sel)[0])
            with m.Default():
                m.d.sync += bus.rdata.eq(reg)
        return m
