# SPDX-License-Identifier: Apache-2.0
"""The host link: frames of :mod:`spikeforge.protocol` in, replies out, commands to the cores.

:class:`FrameReceiver` parses command frames from a byte stream (CRC, length and inter-byte
time-out checks) into a payload buffer; :class:`FrameTransmitter` sends a reply frame from a
reply buffer, which keeps the last reply for a resend; :class:`HostLink` executes one frame at a
time on the cores' word bus and streams, and answers it.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.protocol import (
    BROADCAST,
    COMMAND_SYNC,
    EVENT_INDEX,
    LINK_BITS,
    MAX_PAYLOAD,
    MAX_WORDS,
    QK_REGS,
    REPLY_SYNC,
    SOC,
    Link,
    Opcode,
    QkReg,
    SocReg,
    Status,
)

__all__ = ["FrameReceiver", "FrameTransmitter", "HostLink", "crc16_step"]

HEADER_BYTES = 9   # seq, opcode, core, address (4), length (2)


def crc16_step(crc, byte):
    """The CRC-16/CCITT-FALSE register after one more ``byte`` (most significant bit first)."""
    for k in reversed(range(8)):
        feedback = byte[k] ^ crc[15]
        crc = Cat(Const(0, 1), crc[:15]) ^ Mux(feedback, 0x1021, 0)
    return crc


def header_layout() -> data.StructLayout:
    return data.StructLayout({"seq": 8, "opcode": 8, "core": 8, "address": 32,
                              "words": range(MAX_WORDS + 1), "status": 8})


class FrameReceiver(wiring.Component):
    """Command frames from a byte stream.

    Members
    -------
    i : In(stream.Signature(8))
        Bytes from the host. Bytes outside a frame are skipped until a sync byte.
    o : Out(stream.Signature(header_layout()))
        One element per frame: its header and ``status`` (``OK``, ``BAD_CRC`` or
        ``BAD_LENGTH``; a bad length is reported as soon as the header is in). The payload
        stays in the buffer, read through ``rd_addr`` / ``rd_data`` (one cycle latency), until
        ``release`` is pulsed; no byte is taken before.
    receiving : Out(1)
        A frame is partly received.

    A frame whose next byte does not come within ``timeout`` cycles is dropped.
    """

    def __init__(self, timeout: int):
        if not isinstance(timeout, int) or timeout < 16:
            raise ValueError(f"Frame time-out must be at least 16 cycles, not {timeout!r}")
        self._timeout = timeout
        super().__init__({
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(header_layout())),
            "rd_addr": In(range(MAX_WORDS)),
            "rd_data": Out(16),
            "release": In(1),
            "receiving": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = memory.Memory(shape=16, depth=MAX_WORDS, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port()
        m.d.comb += [rd.addr.eq(self.rd_addr), self.rd_data.eq(rd.data)]

        crc = Signal(16, init=0xFFFF)
        header = Signal(8 * HEADER_BYTES)
        count = Signal(range(MAX_PAYLOAD + HEADER_BYTES + 1))
        low = Signal(8)
        crc_low = Signal(8)
        idle = Signal(range(self._timeout + 1))
        length = header[8 * 7:8 * 9]
        byte = self.i.payload

        m.d.comb += self.o.payload.seq.eq(header[0:8])
        m.d.comb += self.o.payload.opcode.eq(header[8:16])
        m.d.comb += self.o.payload.core.eq(header[16:24])
        m.d.comb += self.o.payload.address.eq(header[24:56])
        m.d.comb += self.o.payload.words.eq(length[1:])

        status = Signal(8)
        m.d.comb += self.o.payload.status.eq(status)
        take = self.i.valid & self.i.ready

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += self.i.ready.eq(1)
                m.d.sync += [count.eq(0), crc.eq(0xFFFF), idle.eq(0)]
                with m.If(take & (byte == COMMAND_SYNC)):
                    m.next = "HEADER"
            def receiving():
                m.d.comb += [self.i.ready.eq(1), self.receiving.eq(1)]
                m.d.sync += idle.eq(idle + 1)
                with m.If(take):
                    m.d.sync += [idle.eq(0), count.eq(count + 1)]
                with m.Elif(idle == self._timeout):
                    m.next = "HUNT"

            with m.State("HEADER"):
                receiving()
                with m.If(take):
                    m.d.sync += [header.eq(Cat(header[8:], byte)), crc.eq(crc16_step(crc, byte))]
                    with m.If(count == HEADER_BYTES - 1):
                        m.d.sync += count.eq(0)
                        bad = (Cat(header[8 * 8:], byte) > MAX_PAYLOAD) | header[8 * 8]
                        with m.If(bad):
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                            m.next = "FRAME"
                        with m.Elif(Cat(header[8 * 8:], byte) == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                receiving()
                with m.If(take):
                    m.d.sync += [low.eq(byte), crc.eq(crc16_step(crc, byte))]
                    m.d.comb += [wr.addr.eq(count[1:]), wr.data.eq(Cat(low, byte)),
                                 wr.en.eq(count[0])]
                    with m.If(count == length - 1):
                        m.d.sync += count.eq(0)
                        m.next = "CRC"
            with m.State("CRC"):
                receiving()
                with m.If(take):
                    m.d.sync += crc_low.eq(byte)
                    with m.If(count[0]):
                        m.d.sync += status.eq(Mux(Cat(crc_low, byte) == crc, Status.OK,
                                                  Status.BAD_CRC))
                        m.next = "FRAME"
            with m.State("FRAME"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "HOLD"
            with m.State("HOLD"):
                with m.If(self.release):
                    m.next = "HUNT"
        return m


class FrameTransmitter(wiring.Component):
    """Reply frames to a byte stream.

    Members
    -------
    wr_en, wr_addr, wr_data : In
        Write a payload word of the next reply into the reply buffer.
    send : In(stream.Signature(...))
        ``{seq, status, words}``: send a reply of ``words`` payload words from the buffer. The
        buffer is not changed by sending, so the same reply can be sent again.
    o : Out(stream.Signature(8))
        Bytes to the host.
    done : Out(1)
        Pulses when the last byte of a reply has been taken.
    """

    def __init__(self):
        super().__init__({
            "wr_en": In(1),
            "wr_addr": In(range(MAX_WORDS)),
            "wr_data": In(16),
            "send": In(stream.Signature(data.StructLayout(
                {"seq": 8, "status": 8, "words": range(MAX_WORDS + 1)}))),
            "o": Out(stream.Signature(8)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = memory.Memory(shape=16, depth=MAX_WORDS, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port()
        m.d.comb += [wr.en.eq(self.wr_en), wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data)]

        seq = Signal(8)
        status = Signal(8)
        words = Signal(range(MAX_WORDS + 1))
        crc = Signal(16)
        index = Signal(range(MAX_WORDS + 1))
        head = Signal(range(5))
        high = Signal()
        m.d.comb += rd.addr.eq(index)

        def emit(value):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(value)]
            return self.o.ready

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.send.ready.eq(1)
                with m.If(self.send.valid):
                    m.d.sync += [seq.eq(self.send.payload.seq),
                                 status.eq(self.send.payload.status),
                                 words.eq(self.send.payload.words), head.eq(0), index.eq(0),
                                 high.eq(0), crc.eq(0xFFFF)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                with m.If(emit(REPLY_SYNC)):
                    m.next = "HEADER"
            with m.State("HEADER"):
                length = Cat(Const(0, 1), words)
                value = Signal(8)
                m.d.comb += value.eq(Array([seq, status, length[:8], length[8:]])[head])
                with m.If(emit(value)):
                    m.d.sync += [head.eq(head + 1), crc.eq(crc16_step(crc, value))]
                    with m.If(head == 3):
                        m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(index == words):
                    m.next = "CRC"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                value = Mux(high, rd.data[8:], rd.data[:8])
                with m.If(emit(value)):
                    m.d.sync += [high.eq(~high), crc.eq(crc16_step(crc, value))]
                    with m.If(high):
                        m.d.sync += index.eq(index + 1)
                        m.next = "CHECK"
            with m.State("CRC"):
                with m.If(emit(Mux(high, crc[8:], crc[:8]))):
                    m.d.sync += high.eq(~high)
                    with m.If(high):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        return m


class HostLink(wiring.Component):
    """Executes command frames on ``cores`` cores and answers each with a reply frame.

    Parameters
    ----------
    cores : int
        Cores behind the link, reached as ``core`` 0 .. ``cores - 1`` of a frame.
    lanes : int
        Binary16 values in a beat of the cores' error streams.
    fan_in : int
        Input events of a ``SPIKES_IN`` frame must have an index below this.
    identity : tuple of int
        The payload of the ``IDENTIFY`` reply.
    timeout : int
        Cycles after which a partly received frame is dropped, and a stream that takes no
        word is abandoned (``TIMEOUT``).

    Members
    -------
    i, o : byte streams from and to the host.
    bus_* : the word bus of core ``bus_core`` (:class:`~spikeforge.hw.core.Core`'s bus).
    spikes : Out(stream) ``{core, word}``: input event words for a core's FP engine.
    errors : Out(stream) ``{core, value, last}``: error beats for a core's BP engine.
    out_sel : Out
        The core whose output FIFOs ``spikes_out`` / ``errors_out`` (with their fill levels)
        are connected.
    link : Out(LINK_BITS · cores)
        The routing bits (:class:`~spikeforge.protocol.Link`) of every core.
    busy : Out(1)
        A frame is being received, executed or answered.
    active : In(1)
        A core is working (busy, and not waiting for input): counted in ``ACTIVE_CYCLES``.
    qk : Out(16 · QK_REGS · qk_units)
        The Q-K units' registers (:class:`~spikeforge.protocol.QkReg`), ``SocReg.QK`` on.
    qk_busy : In(qk_units)
        A Q-K unit is in a sample: its registers refuse writes.
    qk_active : In(qk_units)
        A Q-K unit is working (busy, and not waiting for input): counted in ``QK_CYCLES``.

    A ``WRITE`` is first checked word by word with ``bus_probe`` set on every target core and
    written only if every word passed, so that a bad frame changes nothing.
    """

    def __init__(self, *, cores: int, lanes: int, fan_in: int, identity: tuple,
                 timeout: int = 1 << 20, qk_units: int = 0, qk_limits: tuple = (1, 1, 1)):
        if not isinstance(cores, int) or not 1 <= cores < SOC:
            raise ValueError(f"Host link core count must be between 1 and {SOC - 1}, "
                             f"not {cores!r}")
        if len(identity) > MAX_WORDS:
            raise ValueError("Identity must fit one reply")
        self._cores, self._lanes, self._fan_in = cores, lanes, fan_in
        self._identity = tuple(identity)
        self._timeout = timeout
        self._qk_units, self._qk_limits = qk_units, tuple(qk_limits)   # tokens, channels, T
        qk_ports = {"qk": Out(16 * QK_REGS * qk_units), "qk_busy": In(qk_units),
                    "qk_active": In(qk_units)} if qk_units else {}
        super().__init__({
            **qk_ports,
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "bus_en": Out(1),
            "bus_we": Out(1),
            "bus_probe": Out(1),
            "bus_core": Out(range(max(cores, 2))),
            "bus_addr": Out(32),
            "bus_wdata": Out(16),
            "bus_ack": In(1),
            "bus_err": In(1),
            "bus_rdata": In(16),
            "spikes": Out(stream.Signature(data.StructLayout({"core": 8, "word": 16}))),
            "errors": Out(stream.Signature(data.StructLayout(
                {"core": 8, "value": 16 * lanes, "last": 1}))),
            "out_sel": Out(range(max(cores, 2))),
            "spikes_out": In(stream.Signature(16)),
            "spikes_level": In(32),
            "errors_out": In(stream.Signature(16 * lanes)),
            "errors_level": In(32),
            "link": Out(LINK_BITS * cores),
            "busy": Out(1),
            "active": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, P = self._cores, self._lanes
        lane_bits = P.bit_length() - 1
        m.submodules.rx = rx = FrameReceiver(self._timeout)
        m.submodules.tx = tx = FrameTransmitter()
        wiring.connect(m, wiring.flipped(self.i), rx.i)
        wiring.connect(m, tx.o, wiring.flipped(self.o))

        cmd = Signal(header_layout())
        core = cmd.core
        index = Signal(range(MAX_WORDS + 1))       # payload word
        count = Signal(range(MAX_WORDS + 1))       # reply words, or words to handle
        target = Signal(range(max(n, 2)))          # core of a broadcast
        probe = Signal()
        beat = Signal(16 * P)
        lane_k = Signal(range(P + 1))
        in_step = Signal(range(MAX_WORDS + 1))     # beats into the timestep
        rem = Signal(range(MAX_WORDS + 1))
        watchdog = Signal(range(self._timeout + 1))
        status = Signal(8)
        record = Signal()
        last_seq = Signal(8)
        last_status = Signal(8)
        last_words = Signal(range(MAX_WORDS + 1))
        have_last = Signal()
        L = LINK_BITS
        link = Signal(L * n)
        counters = [Signal(32, name=name) for name in ("rx_bytes", "tx_bytes", "frames",
                                                       "bad_frames", "active_cycles",
                                                       "qk_cycles")]
        m.d.comb += [self.link.eq(link), rx.rd_addr.eq(index),
                     self.out_sel.eq(core), self.bus_core.eq(target)]
        word = rx.rd_data
        m.d.sync += [counters[0].eq(counters[0] + (self.i.valid & self.i.ready)),
                     counters[1].eq(counters[1] + (self.o.valid & self.o.ready)),
                     counters[4].eq(counters[4] + self.active)]
        if self._qk_units:
            m.d.sync += counters[5].eq(counters[5] + sum(self.qk_active))

        is_core = core < n
        links = Array(link[L * c:L * c + L] for c in range(n))
        fp_to_next, bp_to_prev, split = (
            [link[L * c + bit.bit_length() - 1] for c in range(n)]
            for bit in (Link.FP_TO_NEXT, Link.BP_TO_PREV, Link.SPLIT))
        # A core's input spikes come from another core (or are shared with it), or its input
        # errors do: the host may not send them too.
        fp_linked = is_core & Array(
            [split[0]] + [fp_to_next[c - 1] | split[c] for c in range(1, n)])[core]
        bp_linked = is_core & Array(
            [bp_to_prev[c + 1] | split[c + 1] for c in range(n - 1)] + [Const(0, 1)])[core]
        identity = Array(Const(w, 16) for w in self._identity)

        soc_offset = cmd.address + index
        soc_counter = Array(counters)[soc_offset[1:4]]
        soc_counter_ok = soc_offset < 2 * len(counters)
        soc_link_c = soc_offset - SocReg.LINK
        soc_link_ok = (soc_offset >= SocReg.LINK) & (soc_offset < SocReg.LINK + n)

        # The Q-K units' registers: SocReg.QK + 8·u + r.
        U = self._qk_units
        max_tokens, max_channels, max_steps = self._qk_limits
        qk_init = {QkReg.KIND: 0, QkReg.TOKENS: max_tokens, QkReg.CHANNELS: max_channels,
                   QkReg.TIMESTEPS: max_steps, QkReg.V_TH: 0x3800, QkReg.V_RESET: 0,
                   QkReg.INV_TAU: 0x3800, QkReg.DECAY: 0x3800}
        qk_regs = [Signal(16, init=qk_init[r], name=f"qk{u}_{r.name.lower()}")
                   for u in range(U) for r in QkReg]
        if U:
            m.d.comb += self.qk.eq(Cat(*qk_regs))
        soc_qk = soc_offset - SocReg.QK
        soc_qk_ok = (soc_offset >= SocReg.QK) & (soc_offset < SocReg.QK + QK_REGS * U)
        qk_field = soc_qk[:3]
        qk_value_ok = Signal()
        with m.Switch(qk_field):
            with m.Case(QkReg.KIND):
                m.d.comb += qk_value_ok.eq(word < 2)
            with m.Case(QkReg.TOKENS):
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_tokens))
            with m.Case(QkReg.CHANNELS):
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_channels)
                                           & (word[:lane_bits] == 0 if lane_bits else 1))
            with m.Case(QkReg.TIMESTEPS):
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_steps))
            with m.Default():
                m.d.comb += qk_value_ok.eq(1)
        qk_idle = ~self.qk_busy.bit_select(soc_qk[3:8], 1) if U else Const(1)

        def reply(m, value, words=0):
            m.d.sync += [status.eq(value), count.eq(words)]
            m.next = "SEND"

        def put(m, position, value):
            m.d.comb += [tx.wr_en.eq(1), tx.wr_addr.eq(position), tx.wr_data.eq(value)]

        m.d.comb += self.busy.eq(rx.receiving)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += rx.o.ready.eq(1)
                m.d.sync += [index.eq(0), watchdog.eq(0), record.eq(0)]
                with m.If(rx.o.valid):
                    m.d.sync += cmd.eq(rx.o.payload)
                    m.next = "CHECK"

            with m.State("CHECK"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [record.eq(1), target.eq(Mux(is_core, core, 0)), probe.eq(1),
                             rem.eq(cmd.words >> lane_bits), in_step.eq(0)]
                op, words = cmd.opcode, cmd.words
                with m.If(cmd.status != Status.OK):
                    m.d.sync += record.eq(0)
                    reply(m, cmd.status)
                with m.Elif(have_last & (cmd.seq == last_seq)):
                    m.d.sync += record.eq(0)
                    m.next = "REPLAY"
                with m.Elif(~Cat(op == o for o in Opcode).any()):
                    reply(m, Status.BAD_OPCODE)
                with m.Elif(op == Opcode.IDENTIFY):
                    m.next = "IDENTIFY"
                with m.Elif((op == Opcode.READ) & ~is_core & (core != SOC)):
                    reply(m, Status.BAD_CORE)
                with m.Elif((op == Opcode.WRITE) & ~is_core & (core != SOC) &
                            (core != BROADCAST)):
                    reply(m, Status.BAD_CORE)
                with m.Elif((op >= Opcode.SPIKES_IN) & (~is_core |
                            ((op == Opcode.SPIKES_IN) & fp_linked) |
                            ((op == Opcode.ERRORS_IN) & bp_linked))):
                    reply(m, Status.BAD_CORE)
                with m.Elif(((op == Opcode.READ) | (op == Opcode.SPIKES_OUT) |
                             (op == Opcode.ERRORS_OUT)) &
                            ((words != 1) | (word == 0) | (word > MAX_WORDS))):
                    reply(m, Status.BAD_LENGTH)
                with m.Elif(op == Opcode.READ):
                    m.d.sync += count.eq(word)
                    m.next = "READ"
                with m.Elif(op == Opcode.WRITE):
                    m.next = "WRITE_FETCH"
                with m.Elif(op == Opcode.SPIKES_IN):
                    m.next = "SCAN_FETCH"
                with m.Elif(op == Opcode.ERRORS_IN):
                    with m.If((cmd.address == 0) | (cmd.address > MAX_WORDS)):
                        reply(m, Status.BAD_ADDRESS)
                    with m.Elif(words[:lane_bits] != 0 if lane_bits else 0):
                        reply(m, Status.BAD_LENGTH)
                    with m.Else():
                        m.next = "DIVIDE"
                with m.Elif(op == Opcode.SPIKES_OUT):
                    m.d.sync += count.eq(Mux(word < self.spikes_level, word, self.spikes_level))
                    m.next = "SPIKES_OUT"
                with m.Else():
                    limit = Mux(word < self.errors_level, word, self.errors_level)
                    m.d.sync += [rem.eq(Mux(limit > MAX_WORDS // P, MAX_WORDS // P, limit)),
                                 count.eq(0)]
                    m.next = "ERRORS_OUT"

            with m.State("REPLAY"):
                m.d.comb += [tx.send.valid.eq(1), tx.send.payload.seq.eq(last_seq),
                             tx.send.payload.status.eq(last_status),
                             tx.send.payload.words.eq(last_words), self.busy.eq(1)]
                with m.If(tx.send.ready):
                    m.next = "SENDING"

            with m.State("IDENTIFY"):
                m.d.comb += self.busy.eq(1)
                put(m, index, identity[index])
                m.d.sync += index.eq(index + 1)
                with m.If(index == len(self._identity) - 1):
                    reply(m, Status.OK, len(self._identity))

            # READ: one bus read a word, or the link's own registers.
            with m.State("READ"):
                m.d.comb += self.busy.eq(1)
                with m.If(core == SOC):
                    with m.If(soc_counter_ok):
                        put(m, index, Mux(soc_offset[0], soc_counter[16:], soc_counter[:16]))
                    with m.Elif(soc_link_ok):
                        put(m, index, links[soc_link_c[:8]])
                    with m.Elif(soc_qk_ok):
                        put(m, index, Array(qk_regs)[soc_qk[:8]] if U else 0)
                    with m.Else():
                        reply(m, Status.BAD_ADDRESS)
                    with m.If(soc_counter_ok | soc_link_ok | soc_qk_ok):
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == count - 1):
                            reply(m, Status.OK, count)
                with m.Else():
                    m.d.comb += [self.bus_en.eq(1), self.bus_addr.eq(cmd.address + index)]
                    m.next = "READ_WAIT"
            with m.State("READ_WAIT"):
                m.d.comb += [self.busy.eq(1), self.bus_addr.eq(cmd.address + index)]
                with m.If(self.bus_ack):
                    with m.If(self.bus_err):
                        reply(m, Status.BAD_ADDRESS)
                    with m.Else():
                        put(m, index, self.bus_rdata)
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == count - 1):
                            reply(m, Status.OK, count)
                        with m.Else():
                            m.next = "READ"

            # WRITE: a probe pass over every target core, then the write pass.
            with m.State("WRITE_FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(index == cmd.words):
                    with m.If((core == BROADCAST) & (target != n - 1)):
                        m.d.sync += [target.eq(target + 1), index.eq(0)]
                    with m.Elif(probe):
                        m.d.sync += [probe.eq(0), index.eq(0),
                                     target.eq(Mux(core == BROADCAST, 0, target))]
                    with m.Else():
                        reply(m, Status.OK)
                with m.Else():
                    m.next = "WRITE"
            with m.State("WRITE"):
                m.d.comb += self.busy.eq(1)
                with m.If(core == SOC):
                    with m.If(~(soc_link_ok & (word >> L == 0))
                              & ~(soc_qk_ok & qk_value_ok & qk_idle)):
                        reply(m, Status.BAD_ADDRESS)
                    with m.Else():
                        with m.If(~probe & soc_link_ok):
                            for c in range(n):
                                with m.If(soc_link_c == c):
                                    m.d.sync += link[L * c:L * c + L].eq(word)
                        with m.If(~probe & soc_qk_ok):
                            for k, reg in enumerate(qk_regs):
                                with m.If(soc_qk == k):
                                    m.d.sync += reg.eq(word)
                        m.d.sync += index.eq(index + 1)
                        m.next = "WRITE_FETCH"
                with m.Else():
                    m.d.comb += [self.bus_en.eq(1), self.bus_we.eq(1),
                                 self.bus_probe.eq(probe), self.bus_addr.eq(cmd.address + index),
                                 self.bus_wdata.eq(word)]
                    m.next = "WRITE_WAIT"
            with m.State("WRITE_WAIT"):
                m.d.comb += self.busy.eq(1)
                with m.If(self.bus_ack):
                    with m.If(self.bus_err):
                        reply(m, Status.BAD_ADDRESS)
                    with m.Else():
                        m.d.sync += index.eq(index + 1)
                        m.next = "WRITE_FETCH"

            # SPIKES_IN: every event index checked, then the words streamed.
            with m.State("SCAN_FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(index == cmd.words):
                    m.d.sync += index.eq(0)
                    m.next = "PUSH_FETCH"
                with m.Else():
                    m.next = "SCAN"
            with m.State("SCAN"):
                m.d.comb += self.busy.eq(1)
                with m.If(word[14] & ((word & EVENT_INDEX) >= self._fan_in)):
                    reply(m, Status.BAD_ADDRESS)
                with m.Else():
                    m.d.sync += index.eq(index + 1)
                    m.next = "SCAN_FETCH"
            with m.State("PUSH_FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(index == cmd.words):
                    reply(m, Status.OK)
                with m.Else():
                    m.next = "PUSH"
            with m.State("PUSH"):
                m.d.comb += [self.busy.eq(1), self.spikes.valid.eq(1),
                             self.spikes.payload.core.eq(core), self.spikes.payload.word.eq(word)]
                m.d.sync += watchdog.eq(watchdog + 1)
                with m.If(self.spikes.ready):
                    m.d.sync += [index.eq(index + 1), watchdog.eq(0)]
                    m.next = "PUSH_FETCH"
                with m.Elif(watchdog == self._timeout):
                    reply(m, Status.TIMEOUT)

            # ERRORS_IN: the beats must be whole timesteps of ``address`` beats each.
            with m.State("DIVIDE"):
                m.d.comb += self.busy.eq(1)
                with m.If(rem >= cmd.address):
                    m.d.sync += rem.eq(rem - cmd.address)
                with m.Elif(rem != 0):
                    reply(m, Status.BAD_LENGTH)
                with m.Else():
                    m.d.sync += lane_k.eq(0)
                    m.next = "BEAT_FETCH"
            with m.State("BEAT_FETCH"):
                m.d.comb += self.busy.eq(1)
                with m.If(index == cmd.words):
                    reply(m, Status.OK)
                with m.Else():
                    m.next = "BEAT"
            with m.State("BEAT"):
                m.d.comb += self.busy.eq(1)
                m.d.sync += [beat.eq(Cat(beat[16:], word) if P > 1 else word),
                             index.eq(index + 1), lane_k.eq(lane_k + 1)]
                with m.If(lane_k == P - 1):
                    m.next = "BEAT_PUSH"
                with m.Else():
                    m.next = "BEAT_FETCH"
            with m.State("BEAT_PUSH"):
                last = in_step == cmd.address - 1
                m.d.comb += [self.busy.eq(1), self.errors.valid.eq(1),
                             self.errors.payload.core.eq(core),
                             self.errors.payload.value.eq(beat),
                             self.errors.payload.last.eq(last)]
                m.d.sync += watchdog.eq(watchdog + 1)
                with m.If(self.errors.ready):
                    m.d.sync += [lane_k.eq(0), watchdog.eq(0),
                                 in_step.eq(Mux(last, 0, in_step + 1))]
                    m.next = "BEAT_FETCH"
                with m.Elif(watchdog == self._timeout):
                    reply(m, Status.TIMEOUT)

            # SPIKES_OUT / ERRORS_OUT: only what is waiting in the core's FIFO.
            with m.State("SPIKES_OUT"):
                m.d.comb += self.busy.eq(1)
                with m.If(index == count):
                    reply(m, Status.OK, count)
                with m.Else():
                    m.d.comb += self.spikes_out.ready.eq(1)
                    with m.If(self.spikes_out.valid):
                        put(m, index, self.spikes_out.payload)
                        m.d.sync += index.eq(index + 1)
            with m.State("ERRORS_OUT"):
                m.d.comb += self.busy.eq(1)
                with m.If(rem == 0):
                    reply(m, Status.OK, count)
                with m.Else():
                    m.d.comb += self.errors_out.ready.eq(1)
                    with m.If(self.errors_out.valid):
                        m.d.sync += [beat.eq(self.errors_out.payload), lane_k.eq(0)]
                        m.next = "ERRORS_WORDS"
            with m.State("ERRORS_WORDS"):
                m.d.comb += self.busy.eq(1)
                put(m, count, beat[:16])
                m.d.sync += [beat.eq(beat >> 16), count.eq(count + 1), lane_k.eq(lane_k + 1)]
                with m.If(lane_k == P - 1):
                    m.d.sync += rem.eq(rem - 1)
                    m.next = "ERRORS_OUT"

            with m.State("SEND"):
                m.d.comb += [tx.send.valid.eq(1), tx.send.payload.seq.eq(cmd.seq),
                             tx.send.payload.status.eq(status),
                             tx.send.payload.words.eq(count), self.busy.eq(1)]
                with m.If(tx.send.ready):
                    with m.If(record):
                        m.d.sync += [last_seq.eq(cmd.seq), last_status.eq(status),
                                     last_words.eq(count), have_last.eq(1),
                                     counters[2].eq(counters[2] + 1)]
                    with m.If(status != Status.OK):
                        m.d.sync += counters[3].eq(counters[3] + 1)
                    m.next = "SENDING"
            with m.State("SENDING"):
                m.d.comb += self.busy.eq(1)
                with m.If(tx.done):
                    m.d.comb += rx.release.eq(1)
                    m.next = "IDLE"
        return m
