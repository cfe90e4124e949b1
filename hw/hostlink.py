# SPDX-License-Identifier: Apache-2.0
"""The host link: frames of :mod:`spikeforge.protocol` in, replies out, commands to the cores.

:class:`FrameReceiver` parses command frames from a byte stream (CRC, length and inter-byte
time-out checks) into a payload buffer; :class:`FrameTransmitter` sends a reply frame from a
reply buffer, which keeps the last reply for a resend. :class:`CommandDispatcher` checks each
frame and hands it to its executor: :class:`BusAccess` (``READ``, ``WRITE`` on the cores' word
bus and :class:`SocRegisters`), :class:`InputForwarder` (``SPIKES_IN``, ``ERRORS_IN``) or
:class:`OutputCollector` (``SPIKES_OUT``, ``ERRORS_OUT``), which reads the frame's payload and
writes the reply's. :class:`HostLink` joins them: one frame at a time, each answered.
"""

import functools
import operator

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.crc.catalog import CRC16_CCITT_FALSE
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2, exact_log2

from spikeforge.protocol import (
    BROADCAST,
    COMMAND_SYNC,
    EVENT_INDEX,
    EVENT_WORD,
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
    command_header,
    qk_address_layout,
    qk_unit_layout,
    reply_header,
)

from .core_control import word_bus

__all__ = ["BusAccess", "CommandDispatcher", "FrameReceiver", "FrameTransmitter", "HostLink",
           "InputForwarder", "OutputCollector", "SocRegisters", "errors_layout", "executor_members",
           "header_layout", "job_layout", "register_bus", "reply_layout", "result_layout",
           "spikes_layout"]


def check_cores(cores, what):
    if not isinstance(cores, int) or not 1 <= cores < SOC:
        raise ValueError(f"{what} core count must be between 1 and {SOC - 1}, not {cores!r}")


def check_lanes(lanes):
    if not isinstance(lanes, int) or lanes < 1 or lanes & (lanes - 1):
        raise ValueError(f"Lane count must be a power of two, not {lanes!r}")


def header_layout() -> data.StructLayout:
    """A command frame as :class:`FrameReceiver` gives it: its header, its payload in words
    and its status."""
    command = command_header()
    return data.StructLayout({name: command[name].shape
                              for name in ("seq", "opcode", "core", "address")}
                             | {"words": range(MAX_WORDS + 1),
                                "status": reply_header()["status"].shape})


def reply_layout() -> data.StructLayout:
    """A reply to send: the command's ``seq``, the status and the payload words (in the reply
    buffer)."""
    header = header_layout()
    return data.StructLayout({"seq": header["seq"].shape, "status": header["status"].shape,
                              "words": header["words"].shape})


def job_layout() -> data.StructLayout:
    """A command as the dispatcher hands it to an executor: its frame's header and ``arg``,
    the first word of its payload."""
    header = header_layout()
    return data.StructLayout({name: header[name].shape
                              for name in ("opcode", "core", "address", "words")}
                             | {"arg": 16})


def result_layout() -> data.StructLayout:
    """An executor's answer to a command: the reply's status and its payload words, which the
    executor has written into the reply buffer."""
    header = header_layout()
    return data.StructLayout({"status": header["status"].shape, "words": header["words"].shape})


def spikes_layout() -> data.StructLayout:
    """An input event word for a core's FP engine."""
    return data.StructLayout({"core": header_layout()["core"].shape, "word": EVENT_WORD})


def errors_layout(lanes: int) -> data.StructLayout:
    """An error beat for a core's BP engine; ``last`` closes a timestep."""
    return data.StructLayout({"core": header_layout()["core"].shape, "value": 16 * lanes,
                              "last": 1})


def executor_members() -> dict:
    """The members every executor has, as the executor sees them.

    ``i`` takes a command, and only while the executor is idle; its payload then holds the
    command until the result is taken, so that the executor keeps no copy of it (the
    dispatcher holds one for all its executors). ``o`` gives the result once the command is
    done. ``rd_addr`` / ``rd_data`` read the frame's payload (one cycle latency),
    ``wr_en`` / ``wr_addr`` / ``wr_data`` write the reply's payload. An idle executor drives
    ``rd_addr`` and the reply-buffer members to 0, so that the link can OR those of all its
    executors together.
    """
    return {
        "i": In(stream.Signature(job_layout())),
        "o": Out(stream.Signature(result_layout())),
        "rd_addr": Out(range(MAX_WORDS)),
        "rd_data": In(16),
        "wr_en": Out(1),
        "wr_addr": Out(range(MAX_WORDS)),
        "wr_data": Out(16),
    }


# The executors of the dispatcher's commands, each with the opcodes it executes.
EXECUTORS = {
    "access": (Opcode.READ, Opcode.WRITE),
    "forward": (Opcode.SPIKES_IN, Opcode.ERRORS_IN),
    "collect": (Opcode.SPIKES_OUT, Opcode.ERRORS_OUT),
}


def register_bus() -> wiring.Signature:
    """The port of :class:`SocRegisters`, as the one that reads and writes them sees it.

    ``addr`` is the offset of a register (a :class:`~spikeforge.protocol.SocReg`), as wide as a
    frame's ``address`` plus a word's index in it, so that no offset past the end wraps round.
    ``r_data`` is the register there and ``r_ok`` says it exists; ``w_ok`` says a write of
    ``w_data`` there would be taken. These follow ``addr`` and ``w_data`` in the same cycle;
    ``w_en`` makes the write at the end of the cycle.
    """
    return wiring.Signature({
        "addr": Out(range((1 << header_layout()["address"].width) + MAX_WORDS)),
        "r_data": In(16),
        "r_ok": In(1),
        "w_data": Out(16),
        "w_ok": In(1),
        "w_en": Out(1),
    })


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

    A frame whose next byte does not come within ``timeout`` cycles is dropped. The CRC
    (:data:`~amaranth.lib.crc.catalog.CRC16_CCITT_FALSE`) takes a byte a cycle as it arrives.
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

        m.submodules.crc = crc = CRC16_CCITT_FALSE(data_width=8).create()
        layout = command_header()
        header = Signal(layout)
        header_bytes = layout.size // 8
        count = Signal(range(MAX_PAYLOAD + header_bytes + 1))
        low = Signal(8)
        crc_low = Signal(8)
        idle = Signal(range(self._timeout + 1))
        length = header.length
        byte = self.i.payload
        shifted = Cat(header.as_value()[8:], byte)      # the header with this byte in
        m.d.comb += crc.data.eq(byte)

        for name in ("seq", "opcode", "core", "address"):
            m.d.comb += self.o.payload[name].eq(header[name])
        m.d.comb += self.o.payload.words.eq(length[1:])

        status = Signal.like(self.o.payload.status)
        m.d.comb += self.o.payload.status.eq(status)
        take = self.i.valid & self.i.ready

        with m.FSM():
            with m.State("HUNT"):
                m.d.comb += self.i.ready.eq(1)
                m.d.comb += crc.start.eq(1)
                m.d.sync += [count.eq(0), idle.eq(0)]
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
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += header.eq(shifted)
                    with m.If(count == header_bytes - 1):
                        m.d.sync += count.eq(0)
                        arrived = layout(shifted).length
                        with m.If((arrived > MAX_PAYLOAD) | arrived[0]):
                            m.d.sync += status.eq(Status.BAD_LENGTH)
                            m.next = "FRAME"
                        with m.Elif(arrived == 0):
                            m.next = "CRC"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                receiving()
                with m.If(take):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += low.eq(byte)
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
                        m.d.sync += status.eq(Mux(Cat(crc_low, byte) == crc.crc, Status.OK,
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

    The CRC (:data:`~amaranth.lib.crc.catalog.CRC16_CCITT_FALSE`) takes a byte a cycle as it
    is sent.
    """

    def __init__(self):
        super().__init__({
            "wr_en": In(1),
            "wr_addr": In(range(MAX_WORDS)),
            "wr_data": In(16),
            "send": In(stream.Signature(reply_layout())),
            "o": Out(stream.Signature(8)),
            "done": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buffer = buffer = memory.Memory(shape=16, depth=MAX_WORDS, init=[])
        wr = buffer.write_port()
        rd = buffer.read_port()
        m.d.comb += [wr.en.eq(self.wr_en), wr.addr.eq(self.wr_addr), wr.data.eq(self.wr_data)]

        header = Signal(reply_header())
        header_bytes = header.shape().size // 8
        words = Signal(range(MAX_WORDS + 1))
        m.submodules.crc = crc = CRC16_CCITT_FALSE(data_width=8).create()
        index = Signal(range(MAX_WORDS + 1))
        head = Signal(range(header_bytes + 1))
        high = Signal()
        m.d.comb += rd.addr.eq(index)

        def emit(value):
            m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(value), crc.data.eq(value)]
            return self.o.ready

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.send.ready.eq(1), crc.start.eq(1)]
                with m.If(self.send.valid):
                    m.d.sync += [header.seq.eq(self.send.payload.seq),
                                 header.status.eq(self.send.payload.status),
                                 header.length.eq(self.send.payload.words << 1),
                                 words.eq(self.send.payload.words), head.eq(0), index.eq(0),
                                 high.eq(0)]
                    m.next = "SYNC"
            with m.State("SYNC"):
                with m.If(emit(REPLY_SYNC)):
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(emit(header.as_value().word_select(head, 8))):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += head.eq(head + 1)
                    with m.If(head == header_bytes - 1):
                        m.next = "CHECK"
            with m.State("CHECK"):
                with m.If(index == words):
                    m.next = "CRC"
                with m.Else():
                    m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                value = rd.data.word_select(high, 8)
                with m.If(emit(value)):
                    m.d.comb += crc.valid.eq(1)
                    m.d.sync += high.eq(~high)
                    with m.If(high):
                        m.d.sync += index.eq(index + 1)
                        m.next = "CHECK"
            with m.State("CRC"):
                with m.If(emit(crc.crc.word_select(high, 8))):
                    m.d.sync += high.eq(~high)
                    with m.If(high):
                        m.d.comb += self.done.eq(1)
                        m.next = "IDLE"
        return m


class SocRegisters(wiring.Component):
    """The registers of core :data:`~spikeforge.protocol.SOC`: the link's counters, the cores'
    routing bits and the Q-K units' configuration (:class:`~spikeforge.protocol.SocReg`).

    Parameters
    ----------
    cores : int
        Routing registers, ``SocReg.LINK`` on, one a core.
    lanes : int
        Binary16 values in a beat: a Q-K unit's ``CHANNELS`` must be a multiple of it.
    qk_units : int
        Q-K units, each with :data:`~spikeforge.protocol.QK_REGS` registers, ``SocReg.QK`` on.
    qk_limits : tuple of int
        The most ``TOKENS``, ``CHANNELS`` and ``TIMESTEPS`` a Q-K unit takes (and its reset
        values).

    Members
    -------
    bus : In(:func:`register_bus`)
        Reads and writes. The counters are read only; a routing register takes
        :class:`~spikeforge.protocol.Link` bits; a Q-K register takes a value in its range, and
        only while its unit is not busy. A write is made at the end of the cycle of ``w_en``.
    rx_byte, tx_byte, frame, bad_frame, active : In(1)
        Each cycle one is high, ``RX_BYTES``, ``TX_BYTES``, ``FRAMES``, ``BAD_FRAMES`` or
        ``ACTIVE_CYCLES`` counts one (modulo 2**32).
    link : Out(data.ArrayLayout(Link, cores))
        The routing registers.
    qk : Out(data.ArrayLayout(qk_unit_layout(), qk_units))
        The Q-K units' registers.
    qk_busy : In(qk_units)
        A Q-K unit is in a sample: its registers refuse writes.
    qk_active : In(qk_units)
        The Q-K units working this cycle, each counted in ``QK_CYCLES``.
    """

    def __init__(self, *, cores: int, lanes: int, qk_units: int = 0,
                 qk_limits: tuple = (1, 1, 1)):
        check_cores(cores, "SoC register")
        check_lanes(lanes)
        if not isinstance(qk_units, int) or qk_units < 0:
            raise ValueError(f"Q-K unit count must be a non-negative integer, not {qk_units!r}")
        if qk_units and (len(qk_limits) != 3 or
                         any(not isinstance(v, int) or not 0 <= v < 1 << 16 for v in qk_limits)):
            raise ValueError("Q-K limits must be three integers (tokens, channels, timesteps) "
                             f"between 0 and 65535, not {qk_limits!r}")
        self._cores, self._lanes = cores, lanes
        self._qk_units, self._qk_limits = qk_units, tuple(qk_limits)
        qk_ports = {"qk": Out(data.ArrayLayout(qk_unit_layout(), qk_units)),
                    "qk_busy": In(qk_units), "qk_active": In(qk_units)} if qk_units else {}
        super().__init__({
            "bus": In(register_bus()),
            "rx_byte": In(1),
            "tx_byte": In(1),
            "frame": In(1),
            "bad_frame": In(1),
            "active": In(1),
            "link": Out(data.ArrayLayout(Link, cores)),
            **qk_ports,
        })

    def elaborate(self, platform):
        m = Module()
        n, U, L = self._cores, self._qk_units, LINK_BITS
        bus, word = self.bus, self.bus.w_data

        counted = [r for r in SocReg if r < SocReg.LINK]
        counters = {r: Signal(32, name=r.name.lower()) for r in counted}
        events = {SocReg.RX_BYTES: self.rx_byte, SocReg.TX_BYTES: self.tx_byte,
                  SocReg.FRAMES: self.frame, SocReg.BAD_FRAMES: self.bad_frame,
                  SocReg.ACTIVE_CYCLES: self.active,
                  SocReg.QK_CYCLES: sum(self.qk_active) if U else 0}
        m.d.sync += [counters[r].eq(counters[r] + events[r]) for r in counted]
        halves = [counters[r].word_select(h, 16) for r in counted for h in range(2)]
        assert [2 * k for k in range(len(counted))] == counted
        counter_ok = bus.addr < len(halves)

        link = Signal.like(self.link)
        m.d.comb += self.link.eq(link)
        links = [link[c] for c in range(n)]
        link_c = bus.addr - SocReg.LINK
        link_ok = (bus.addr >= SocReg.LINK) & (bus.addr < SocReg.LINK + n)

        # The Q-K units' registers: SocReg.QK + QK_REGS·u + r.
        max_tokens, max_channels, max_steps = self._qk_limits
        qk_init = {QkReg.KIND: 0, QkReg.TOKENS: max_tokens, QkReg.CHANNELS: max_channels,
                   QkReg.TIMESTEPS: max_steps, QkReg.V_TH: 0x3800, QkReg.V_RESET: 0,
                   QkReg.INV_TAU: 0x3800, QkReg.DECAY: 0x3800}
        qk_regs = [Signal(16, init=qk_init[r], name=f"qk{u}_{r.name.lower()}")
                   for u in range(U) for r in QkReg]
        if U:
            m.d.comb += self.qk.eq(Cat(*qk_regs))
        qk_r = bus.addr - SocReg.QK
        qk_ok = (bus.addr >= SocReg.QK) & (bus.addr < SocReg.QK + QK_REGS * U)
        where = qk_address_layout(U)
        where = where(qk_r[:where.size])
        qk_value_ok = Signal()
        with m.Switch(where.reg):
            with m.Case(QkReg.KIND):
                m.d.comb += qk_value_ok.eq(word < 2)
            with m.Case(QkReg.TOKENS):
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_tokens))
            with m.Case(QkReg.CHANNELS):
                lane_bits = exact_log2(self._lanes)
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_channels)
                                           & (word[:lane_bits] == 0 if lane_bits else 1))
            with m.Case(QkReg.TIMESTEPS):
                m.d.comb += qk_value_ok.eq((word >= 1) & (word <= max_steps))
            with m.Default():
                m.d.comb += qk_value_ok.eq(1)
        qk_idle = ~self.qk_busy.bit_select(where.unit, 1) if U else Const(1)

        with m.If(counter_ok):
            m.d.comb += [bus.r_ok.eq(1),
                         bus.r_data.eq(Array(halves)[bus.addr[:ceil_log2(len(halves))]])]
        with m.Elif(link_ok):
            m.d.comb += [bus.r_ok.eq(1), bus.r_data.eq(Array(links)[link_c[:ceil_log2(n)]])]
        with m.Elif(qk_ok):
            m.d.comb += bus.r_ok.eq(1)
            if U:
                m.d.comb += bus.r_data.eq(Array(qk_regs)[qk_r[:ceil_log2(len(qk_regs))]])
        m.d.comb += bus.w_ok.eq((link_ok & (word >> L == 0)) | (qk_ok & qk_value_ok & qk_idle))
        with m.If(bus.w_en & bus.w_ok & link_ok):
            for c in range(n):
                with m.If(link_c == c):
                    m.d.sync += links[c].eq(word)
        with m.If(bus.w_en & bus.w_ok & qk_ok):
            for k, reg in enumerate(qk_regs):
                with m.If(qk_r == k):
                    m.d.sync += reg.eq(word)
        return m


class BusAccess(wiring.Component):
    """Executes ``READ`` and ``WRITE`` commands on the cores' word bus and the SoC registers.

    Parameters
    ----------
    cores : int
        Cores on the bus; a ``BROADCAST`` write goes to each of them in turn.

    Members
    -------
    i, o, rd_addr, rd_data, wr_en, wr_addr, wr_data : see :func:`executor_members`
        A command's ``core`` is a core, ``BROADCAST`` (``WRITE`` only) or ``SOC``; a ``READ``
        reads ``arg`` words from ``address`` on, a ``WRITE`` writes the payload's ``words``
        words there. The dispatcher has checked core and lengths. The result is ``OK`` (with
        the words read) or ``BAD_ADDRESS`` at the first word refused.
    bus : Out(:func:`~spikeforge.hw.core_control.word_bus`)
        The word bus of core ``bus_core``; it waits for each access's ``ack``, however late.
    bus_core : Out(range(max(cores, 2)))
        The core of the access, held from its ``en`` to its ``ack``.
    regs : Out(:func:`register_bus`)
        The SoC registers, for core ``SOC``.

    A ``WRITE`` is first checked word by word, with ``bus.probe`` set on every target core, or
    with ``w_ok`` of the registers, and written only if every word passed, so that a bad frame
    changes nothing. A core's word takes a request cycle (and a fetch cycle when written) and
    the bus's answer; a register's word one cycle to read and two to write.
    """

    def __init__(self, *, cores: int):
        check_cores(cores, "Bus access")
        self._cores = cores
        super().__init__({
            **executor_members(),
            "bus": Out(word_bus()),
            "bus_core": Out(range(max(cores, 2))),
            "regs": Out(register_bus()),
        })

    def elaborate(self, platform):
        m = Module()
        n = self._cores
        job = self.i.payload
        core, word = job.core, self.rd_data
        index = Signal(range(MAX_WORDS + 1))
        count = Signal(range(MAX_WORDS + 1))        # words to read, then words read
        target = Signal(range(max(n, 2)))           # core of a broadcast
        probe = Signal()
        status = Signal.like(self.o.payload.status)
        bus = self.bus
        m.d.comb += [self.rd_addr.eq(index), self.bus_core.eq(target),
                     self.regs.addr.eq(job.address + index), self.regs.w_data.eq(word),
                     self.o.payload.status.eq(status), self.o.payload.words.eq(count)]

        def reply(value, words=0):
            m.d.sync += [status.eq(value), count.eq(words)]
            m.next = "REPLY"

        def put(value):
            m.d.comb += [self.wr_en.eq(1), self.wr_addr.eq(index), self.wr_data.eq(value)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [index.eq(0), probe.eq(1),
                                 count.eq(self.i.payload.arg),
                                 target.eq(Mux(self.i.payload.core < n, self.i.payload.core, 0))]
                    with m.If(self.i.payload.opcode == Opcode.READ):
                        m.next = "READ"
                    with m.Else():
                        m.next = "WRITE_FETCH"

            with m.State("READ"):
                with m.If(core == SOC):
                    with m.If(self.regs.r_ok):
                        put(self.regs.r_data)
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == count - 1):
                            reply(Status.OK, count)
                    with m.Else():
                        reply(Status.BAD_ADDRESS)
                with m.Else():
                    m.d.comb += [bus.en.eq(1), bus.addr.eq(job.address + index)]
                    m.next = "READ_WAIT"
            with m.State("READ_WAIT"):
                m.d.comb += bus.addr.eq(job.address + index)
                with m.If(bus.ack):
                    with m.If(bus.err):
                        reply(Status.BAD_ADDRESS)
                    with m.Else():
                        put(bus.rdata)
                        m.d.sync += index.eq(index + 1)
                        with m.If(index == count - 1):
                            reply(Status.OK, count)
                        with m.Else():
                            m.next = "READ"

            # A probe pass over every target core, then the write pass.
            with m.State("WRITE_FETCH"):
                with m.If(index == job.words):
                    with m.If((core == BROADCAST) & (target != n - 1)):
                        m.d.sync += [target.eq(target + 1), index.eq(0)]
                    with m.Elif(probe):
                        m.d.sync += [probe.eq(0), index.eq(0),
                                     target.eq(Mux(core == BROADCAST, 0, target))]
                    with m.Else():
                        reply(Status.OK)
                with m.Else():
                    m.next = "WRITE"
            with m.State("WRITE"):
                with m.If(core == SOC):
                    with m.If(~self.regs.w_ok):
                        reply(Status.BAD_ADDRESS)
                    with m.Else():
                        m.d.comb += self.regs.w_en.eq(~probe)
                        m.d.sync += index.eq(index + 1)
                        m.next = "WRITE_FETCH"
                with m.Else():
                    m.d.comb += [bus.en.eq(1), bus.we.eq(1),
                                 bus.probe.eq(probe), bus.addr.eq(job.address + index),
                                 bus.wdata.eq(word)]
                    m.next = "WRITE_WAIT"
            with m.State("WRITE_WAIT"):
                with m.If(bus.ack):
                    with m.If(bus.err):
                        reply(Status.BAD_ADDRESS)
                    with m.Else():
                        m.d.sync += index.eq(index + 1)
                        m.next = "WRITE_FETCH"

            with m.State("REPLY"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += index.eq(0)
                    m.next = "IDLE"
        return m


class InputForwarder(wiring.Component):
    """Executes ``SPIKES_IN`` and ``ERRORS_IN`` commands: their payload to a core's input
    streams.

    Parameters
    ----------
    lanes : int
        Binary16 values in an error beat.
    fan_in : int
        Spike events must have an index below this.
    timeout : int
        Cycles a stream may leave a word untaken before the command is abandoned.

    Members
    -------
    i, o, rd_addr, rd_data, wr_en, wr_addr, wr_data : see :func:`executor_members`
        ``SPIKES_IN``: the payload's event words, every one checked first: an event with an
        index of ``fan_in`` or more is answered with ``BAD_ADDRESS`` and nothing is sent.
        ``ERRORS_IN``: the payload's words, ``lanes`` to a beat, in timesteps of ``address``
        beats: a payload of no whole number of timesteps is answered with ``BAD_LENGTH`` and
        nothing is sent. The dispatcher has checked that ``address`` is 1 .. ``MAX_WORDS``
        and the words a multiple of ``lanes``. Replies have no payload.
    spikes : Out(stream.Signature(...))
        ``{core, word}``: an event word for core ``core``'s FP engine, one a payload word.
    errors : Out(stream.Signature(...))
        ``{core, value, last}``: an error beat for core ``core``'s BP engine, the first word in
        the lowest lane; ``last`` on the last beat of each timestep.

    A word that the stream does not take within ``timeout`` cycles is withdrawn and the
    command answered with ``TIMEOUT``; the words before it have been sent.
    """

    def __init__(self, *, lanes: int, fan_in: int, timeout: int):
        check_lanes(lanes)
        if not isinstance(fan_in, int) or not 1 <= fan_in <= EVENT_INDEX + 1:
            raise ValueError(f"Fan-in must be between 1 and {EVENT_INDEX + 1}, not {fan_in!r}")
        if not isinstance(timeout, int) or timeout < 1:
            raise ValueError(f"Stream time-out must be a positive integer, not {timeout!r}")
        self._lanes, self._fan_in, self._timeout = lanes, fan_in, timeout
        super().__init__({
            **executor_members(),
            "spikes": Out(stream.Signature(spikes_layout())),
            "errors": Out(stream.Signature(errors_layout(lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        P = self._lanes
        job = self.i.payload
        word = self.rd_data
        index = Signal(range(MAX_WORDS + 1))
        beat = Signal(16 * P)
        lane_k = Signal(range(P + 1))
        in_step = Signal(range(MAX_WORDS + 1))      # beats into the timestep
        rem = Signal(range(MAX_WORDS + 1))          # beats not yet divided into timesteps
        watchdog = Signal(range(self._timeout + 1))
        status = Signal.like(self.o.payload.status)
        m.d.comb += [self.rd_addr.eq(index), self.o.payload.status.eq(status),
                     self.spikes.payload.core.eq(job.core),
                     self.spikes.payload.word.eq(word),
                     self.errors.payload.core.eq(job.core),
                     self.errors.payload.value.eq(beat),
                     self.errors.payload.last.eq(in_step == job.address - 1)]

        def reply(value):
            m.d.sync += status.eq(value)
            m.next = "REPLY"

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += [index.eq(0), watchdog.eq(0),
                                 rem.eq(self.i.payload.words >> exact_log2(P)), in_step.eq(0)]
                    with m.If(self.i.payload.opcode == Opcode.SPIKES_IN):
                        m.next = "SCAN_FETCH"
                    with m.Else():
                        m.next = "DIVIDE"

            # SPIKES_IN: every event index checked, then the words streamed.
            with m.State("SCAN_FETCH"):
                with m.If(index == job.words):
                    m.d.sync += index.eq(0)
                    m.next = "PUSH_FETCH"
                with m.Else():
                    m.next = "SCAN"
            with m.State("SCAN"):
                event = EVENT_WORD(word)
                with m.If(event.spike & (event.index >= self._fan_in)):
                    reply(Status.BAD_ADDRESS)
                with m.Else():
                    m.d.sync += index.eq(index + 1)
                    m.next = "SCAN_FETCH"
            with m.State("PUSH_FETCH"):
                with m.If(index == job.words):
                    reply(Status.OK)
                with m.Else():
                    m.next = "PUSH"
            with m.State("PUSH"):
                m.d.comb += self.spikes.valid.eq(1)
                m.d.sync += watchdog.eq(watchdog + 1)
                with m.If(self.spikes.ready):
                    m.d.sync += [index.eq(index + 1), watchdog.eq(0)]
                    m.next = "PUSH_FETCH"
                with m.Elif(watchdog == self._timeout):
                    reply(Status.TIMEOUT)

            # ERRORS_IN: the beats must be whole timesteps of ``address`` beats each.
            with m.State("DIVIDE"):
                with m.If(rem >= job.address):
                    m.d.sync += rem.eq(rem - job.address)
                with m.Elif(rem != 0):
                    reply(Status.BAD_LENGTH)
                with m.Else():
                    m.d.sync += lane_k.eq(0)
                    m.next = "BEAT_FETCH"
            with m.State("BEAT_FETCH"):
                with m.If(index == job.words):
                    reply(Status.OK)
                with m.Else():
                    m.next = "BEAT"
            with m.State("BEAT"):
                m.d.sync += [beat.eq(Cat(beat[16:], word) if P > 1 else word),
                             index.eq(index + 1), lane_k.eq(lane_k + 1)]
                with m.If(lane_k == P - 1):
                    m.next = "BEAT_PUSH"
                with m.Else():
                    m.next = "BEAT_FETCH"
            with m.State("BEAT_PUSH"):
                m.d.comb += self.errors.valid.eq(1)
                m.d.sync += watchdog.eq(watchdog + 1)
                with m.If(self.errors.ready):
                    m.d.sync += [lane_k.eq(0), watchdog.eq(0),
                                 in_step.eq(Mux(self.errors.payload.last, 0, in_step + 1))]
                    m.next = "BEAT_FETCH"
                with m.Elif(watchdog == self._timeout):
                    reply(Status.TIMEOUT)

            with m.State("REPLY"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.d.sync += index.eq(0)
                    m.next = "IDLE"
        return m


class OutputCollector(wiring.Component):
    """Executes ``SPIKES_OUT`` and ``ERRORS_OUT`` commands: a core's output FIFO into the
    reply.

    Parameters
    ----------
    cores : int
        Cores whose output FIFOs ``out_sel`` selects.
    lanes : int
        Binary16 values in an error beat.

    Members
    -------
    i, o, rd_addr, rd_data, wr_en, wr_addr, wr_data : see :func:`executor_members`
        The reply holds what is waiting in core ``core``'s FIFO when the command is taken, but
        at most ``arg`` words (``SPIKES_OUT``) or beats (``ERRORS_OUT``, ``lanes`` words each,
        the lowest lane first) and at most a reply's payload. The result is always ``OK``.
    out_sel : Out
        The core whose FIFOs are connected: that of the command on ``i``, whose fill levels
        the command is taken with.
    spikes_out, spikes_level, errors_out, errors_level : In
        Core ``out_sel``'s output FIFOs of event words and error beats, and their fill levels.
    """

    def __init__(self, *, cores: int, lanes: int):
        check_cores(cores, "Output collector")
        check_lanes(lanes)
        self._lanes = lanes
        super().__init__({
            **executor_members(),
            "out_sel": Out(range(max(cores, 2))),
            "spikes_out": In(stream.Signature(16)),
            "spikes_level": In(32),
            "errors_out": In(stream.Signature(16 * lanes)),
            "errors_level": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        P = self._lanes
        job = self.i.payload
        arg = job.arg
        index = Signal(range(MAX_WORDS + 1))
        count = Signal(range(MAX_WORDS + 1))        # words to take, or words taken
        rem = Signal(range(MAX_WORDS + 1))          # beats to take
        beat = Signal(16 * P)
        lane_k = Signal(range(P + 1))
        m.d.comb += [self.o.payload.status.eq(Status.OK), self.o.payload.words.eq(count),
                     self.out_sel.eq(job.core)]

        def put(position, value):
            m.d.comb += [self.wr_en.eq(1), self.wr_addr.eq(position), self.wr_data.eq(value)]

        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += self.i.ready.eq(1)
                with m.If(self.i.valid):
                    m.d.sync += index.eq(0)
                    with m.If(self.i.payload.opcode == Opcode.SPIKES_OUT):
                        m.d.sync += count.eq(Mux(arg < self.spikes_level, arg,
                                                 self.spikes_level))
                        m.next = "SPIKES_OUT"
                    with m.Else():
                        limit = Mux(arg < self.errors_level, arg, self.errors_level)
                        m.d.sync += [rem.eq(Mux(limit > MAX_WORDS // P, MAX_WORDS // P, limit)),
                                     count.eq(0)]
                        m.next = "ERRORS_OUT"
            with m.State("SPIKES_OUT"):
                with m.If(index == count):
                    m.next = "REPLY"
                with m.Else():
                    m.d.comb += self.spikes_out.ready.eq(1)
                    with m.If(self.spikes_out.valid):
                        put(index, self.spikes_out.payload)
                        m.d.sync += index.eq(index + 1)
            with m.State("ERRORS_OUT"):
                with m.If(rem == 0):
                    m.next = "REPLY"
                with m.Else():
                    m.d.comb += self.errors_out.ready.eq(1)
                    with m.If(self.errors_out.valid):
                        m.d.sync += [beat.eq(self.errors_out.payload), lane_k.eq(0)]
                        m.next = "ERRORS_WORDS"
            with m.State("ERRORS_WORDS"):
                put(count, beat[:16])
                m.d.sync += [beat.eq(beat >> 16), count.eq(count + 1), lane_k.eq(lane_k + 1)]
                with m.If(lane_k == P - 1):
                    m.d.sync += rem.eq(rem - 1)
                    m.next = "ERRORS_OUT"
            with m.State("REPLY"):
                m.d.comb += self.o.valid.eq(1)
                with m.If(self.o.ready):
                    m.next = "IDLE"
        return m


class CommandDispatcher(wiring.Component):
    """Checks each command frame, hands it to the executor of its opcode and answers it.

    Parameters
    ----------
    cores : int
        Cores behind the link, reached as ``core`` 0 .. ``cores - 1`` of a frame.
    lanes : int
        Binary16 values in an error beat: an ``ERRORS_IN`` payload is whole beats.
    identity : tuple of int
        The payload of the ``IDENTIFY`` reply.

    Members
    -------
    i : In(stream.Signature(header_layout()))
        Frames from :class:`FrameReceiver`, one at a time: the next is taken once the reply
        to this one has been sent, and ``release`` then pulses.
    rd_data : In(16)
        The frame's first payload word, as ``i`` is offered (the executors keep the payload
        buffer's address at 0 while they are idle).
    access, forward, collect : Out(stream.Signature(job_layout()))
        Commands for :class:`BusAccess` (``READ``, ``WRITE``), :class:`InputForwarder`
        (``SPIKES_IN``, ``ERRORS_IN``) and :class:`OutputCollector` (``SPIKES_OUT``,
        ``ERRORS_OUT``), once their core, lengths and addresses are checked. Their payload,
        one register, holds until the executor's result is taken.
    access_result, forward_result, collect_result : In(stream.Signature(result_layout()))
        Their answers.
    o : Out(stream.Signature(reply_layout()))
        The reply to send (:class:`FrameTransmitter`'s ``send``); ``sent`` pulses when it
        has been sent.
    wr_en, wr_addr, wr_data : Out
        The ``IDENTIFY`` reply's payload into the reply buffer; 0 otherwise.
    link : In(data.ArrayLayout(Link, cores))
        The routing bits: a core whose input spikes or errors come from another core takes
        none from the host (``BAD_CORE``).
    frame, bad_frame : Out(1)
        Pulse as a reply is taken: ``frame`` for a frame with a good CRC and length (not a
        repeat), ``bad_frame`` for a reply with an error status.
    busy : Out(1)
        A frame is being checked, executed or answered.

    A frame with a bad status, opcode, core, length or address is answered here and reaches
    no executor. A frame whose ``seq`` is that of the last frame with a good CRC and length is
    answered with the last reply again (its payload is still in the reply buffer), and is not
    executed or counted.
    """

    def __init__(self, *, cores: int, lanes: int, identity: tuple):
        check_cores(cores, "Dispatcher")
        check_lanes(lanes)
        if (not 1 <= len(identity) <= MAX_WORDS or
                any(not isinstance(w, int) or not 0 <= w < 1 << 16 for w in identity)):
            raise ValueError(f"Identity must be 1 to {MAX_WORDS} words of 16 bits, "
                             f"not {identity!r}")
        self._cores, self._lanes, self._identity = cores, lanes, tuple(identity)
        jobs = {name: Out(stream.Signature(job_layout())) for name in EXECUTORS}
        results = {f"{name}_result": In(stream.Signature(result_layout()))
                   for name in EXECUTORS}
        super().__init__({
            "i": In(stream.Signature(header_layout())),
            "release": Out(1),
            "rd_data": In(16),
            **jobs,
            **results,
            "o": Out(stream.Signature(reply_layout())),
            "sent": In(1),
            "wr_en": Out(1),
            "wr_addr": Out(range(MAX_WORDS)),
            "wr_data": Out(16),
            "link": In(data.ArrayLayout(Link, cores)),
            "frame": Out(1),
            "bad_frame": Out(1),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, P = self._cores, self._lanes
        cmd = Signal(header_layout())
        word = Signal(16)                           # the first payload word
        op, core, words = cmd.opcode, cmd.core, cmd.words
        index = Signal(range(MAX_WORDS + 1))        # identity word
        count = Signal(range(MAX_WORDS + 1))        # reply words
        status = Signal.like(cmd.status)
        record = Signal()
        last = Signal(reply_layout())
        have_last = Signal()
        for name in EXECUTORS:
            job = getattr(self, name).payload
            m.d.comb += [job.opcode.eq(op), job.core.eq(core), job.address.eq(cmd.address),
                         job.words.eq(words), job.arg.eq(word)]

        is_core = core < n
        links = [self.link[c] for c in range(n)]

        def routed(c, flag):
            return (links[c] & flag).any()

        # A core's input spikes come from another core (or are shared with it), or its input
        # errors do: the host may not send them too.
        fp_linked = is_core & Array(
            [routed(0, Link.SPLIT)] +
            [routed(c - 1, Link.FP_TO_NEXT) | routed(c, Link.SPLIT) for c in range(1, n)])[core]
        bp_linked = is_core & Array(
            [routed(c + 1, Link.BP_TO_PREV) | routed(c + 1, Link.SPLIT) for c in range(n - 1)]
            + [Const(0, 1)])[core]

        def reply(value, words=0):
            m.d.sync += [status.eq(value), count.eq(words)]
            m.next = "SEND"

        def answer(valid, value, words, recorded):
            m.d.comb += [self.o.valid.eq(valid), self.o.payload.seq.eq(cmd.seq),
                         self.o.payload.status.eq(value), self.o.payload.words.eq(words)]
            with m.If(self.o.valid & self.o.ready):
                with m.If(recorded):
                    m.d.comb += self.frame.eq(1)
                    m.d.sync += [last.eq(self.o.payload), have_last.eq(1)]
                m.d.comb += self.bad_frame.eq(value != Status.OK)
                m.next = "SENDING"

        m.d.comb += self.busy.eq(1)
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += [self.busy.eq(0), self.i.ready.eq(1)]
                m.d.sync += [index.eq(0), record.eq(0)]
                with m.If(self.i.valid):
                    m.d.sync += [cmd.eq(self.i.payload), word.eq(self.rd_data)]
                    m.next = "CHECK"

            with m.State("CHECK"):
                m.d.sync += record.eq(1)
                with m.If(cmd.status != Status.OK):
                    m.d.sync += record.eq(0)
                    reply(cmd.status)
                with m.Elif(have_last & (cmd.seq == last.seq)):
                    m.d.sync += record.eq(0)
                    m.next = "REPLAY"
                with m.Elif(~op.matches(*Opcode)):
                    reply(Status.BAD_OPCODE)
                with m.Elif(op == Opcode.IDENTIFY):
                    m.next = "IDENTIFY"
                with m.Elif((op == Opcode.READ) & ~is_core & (core != SOC)):
                    reply(Status.BAD_CORE)
                with m.Elif((op == Opcode.WRITE) & ~is_core & (core != SOC) &
                            (core != BROADCAST)):
                    reply(Status.BAD_CORE)
                with m.Elif(op.matches(*EXECUTORS["forward"], *EXECUTORS["collect"]) &
                            (~is_core | ((op == Opcode.SPIKES_IN) & fp_linked) |
                             ((op == Opcode.ERRORS_IN) & bp_linked))):
                    reply(Status.BAD_CORE)
                with m.Elif(op.matches(Opcode.READ, *EXECUTORS["collect"]) &
                            ((words != 1) | (word == 0) | (word > MAX_WORDS))):
                    reply(Status.BAD_LENGTH)
                with m.Elif((op == Opcode.ERRORS_IN) &
                            ((cmd.address == 0) | (cmd.address > MAX_WORDS))):
                    reply(Status.BAD_ADDRESS)
                with m.Elif((op == Opcode.ERRORS_IN) & words[:exact_log2(P)].any()):
                    reply(Status.BAD_LENGTH)
                for name, ops in EXECUTORS.items():
                    with m.Elif(op.matches(*ops)):
                        m.d.comb += getattr(self, name).valid.eq(1)
                        with m.If(getattr(self, name).ready):
                            m.next = "EXECUTE"

            with m.State("IDENTIFY"):
                identity = Array(Const(w, 16) for w in self._identity)
                m.d.comb += [self.wr_en.eq(1), self.wr_addr.eq(index),
                             self.wr_data.eq(identity[index])]
                m.d.sync += index.eq(index + 1)
                with m.If(index == len(self._identity) - 1):
                    reply(Status.OK, len(self._identity))

            with m.State("EXECUTE"):
                with m.Switch(op):
                    for name, ops in EXECUTORS.items():
                        with m.Case(*ops):
                            result = getattr(self, f"{name}_result")
                            m.d.comb += result.ready.eq(self.o.ready)
                            answer(result.valid, result.payload.status, result.payload.words, 1)

            with m.State("SEND"):
                answer(1, status, count, record)

            with m.State("REPLAY"):
                m.d.comb += [self.o.valid.eq(1), self.o.payload.eq(last)]
                with m.If(self.o.ready):
                    m.next = "SENDING"

            with m.State("SENDING"):
                with m.If(self.sent):
                    m.d.comb += self.release.eq(1)
                    m.next = "IDLE"
        return m


class HostLink(wiring.Component):
    """Executes command frames on ``cores`` cores and answers each with a reply frame.

    The frames pass :class:`FrameReceiver`, :class:`CommandDispatcher` and one of its
    executors, the replies :class:`FrameTransmitter`; the link's own registers are
    :class:`SocRegisters`.

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
    bus, bus_core : the word bus (:func:`~spikeforge.hw.core_control.word_bus`) of core
        ``bus_core``, as :class:`BusAccess`'s.
    spikes : Out(stream) ``{core, word}``: input event words for a core's FP engine.
    errors : Out(stream) ``{core, value, last}``: error beats for a core's BP engine.
    out_sel : Out
        The core whose output FIFOs ``spikes_out`` / ``errors_out`` (with their fill levels)
        are connected.
    link : Out(data.ArrayLayout(Link, cores))
        The routing bits (:class:`~spikeforge.protocol.Link`) of every core.
    busy : Out(1)
        A frame is being received, executed or answered.
    active : In(1)
        A core is working (busy, and not waiting for input): counted in ``ACTIVE_CYCLES``.
    qk : Out(data.ArrayLayout(qk_unit_layout(), qk_units))
        The Q-K units' registers (:class:`~spikeforge.protocol.QkReg`), ``SocReg.QK`` on.
    qk_busy : In(qk_units)
        A Q-K unit is in a sample: its registers refuse writes.
    qk_active : In(qk_units)
        A Q-K unit is working (busy, and not waiting for input): counted in ``QK_CYCLES``.

    A ``WRITE`` is first checked word by word with ``bus.probe`` set on every target core and
    written only if every word passed, so that a bad frame changes nothing.
    """

    def __init__(self, *, cores: int, lanes: int, fan_in: int, identity: tuple,
                 timeout: int = 1 << 20, qk_units: int = 0, qk_limits: tuple = (1, 1, 1)):
        check_cores(cores, "Host link")
        check_lanes(lanes)
        if len(identity) > MAX_WORDS:
            raise ValueError("Identity must fit one reply")
        self._cores, self._lanes, self._fan_in = cores, lanes, fan_in
        self._identity = tuple(identity)
        self._timeout = timeout
        self._qk_units, self._qk_limits = qk_units, tuple(qk_limits)   # tokens, channels, T
        qk_ports = {"qk": Out(data.ArrayLayout(qk_unit_layout(), qk_units)),
                    "qk_busy": In(qk_units), "qk_active": In(qk_units)} if qk_units else {}
        super().__init__({
            **qk_ports,
            "i": In(stream.Signature(8)),
            "o": Out(stream.Signature(8)),
            "bus": Out(word_bus()),
            "bus_core": Out(range(max(cores, 2))),
            "spikes": Out(stream.Signature(spikes_layout())),
            "errors": Out(stream.Signature(errors_layout(lanes))),
            "out_sel": Out(range(max(cores, 2))),
            "spikes_out": In(stream.Signature(16)),
            "spikes_level": In(32),
            "errors_out": In(stream.Signature(16 * lanes)),
            "errors_level": In(32),
            "link": Out(data.ArrayLayout(Link, cores)),
            "busy": Out(1),
            "active": In(1),
        })

    def elaborate(self, platform):
        m = Module()
        n, P, U = self._cores, self._lanes, self._qk_units
        m.submodules.rx = rx = FrameReceiver(self._timeout)
        m.submodules.tx = tx = FrameTransmitter()
        m.submodules.dispatcher = dispatcher = CommandDispatcher(cores=n, lanes=P,
                                                                 identity=self._identity)
        m.submodules.regs = regs = SocRegisters(cores=n, lanes=P, qk_units=U,
                                                qk_limits=self._qk_limits)
        executors = {
            "access": BusAccess(cores=n),
            "forward": InputForwarder(lanes=P, fan_in=self._fan_in, timeout=self._timeout),
            "collect": OutputCollector(cores=n, lanes=P),
        }
        assert executors.keys() == EXECUTORS.keys()
        for name, executor in executors.items():
            m.submodules[name] = executor
            wiring.connect(m, getattr(dispatcher, name), executor.i)
            wiring.connect(m, executor.o, getattr(dispatcher, f"{name}_result"))
            m.d.comb += executor.rd_data.eq(rx.rd_data)

        wiring.connect(m, wiring.flipped(self.i), rx.i)
        wiring.connect(m, rx.o, dispatcher.i)
        wiring.connect(m, dispatcher.o, tx.send)
        wiring.connect(m, tx.o, wiring.flipped(self.o))
        m.d.comb += [dispatcher.rd_data.eq(rx.rd_data), rx.release.eq(dispatcher.release),
                     dispatcher.sent.eq(tx.done), self.busy.eq(rx.receiving | dispatcher.busy)]

        # Only one part at a time reads the payload or writes the reply, and the others hold
        # their ports at 0: the ports are ORed together.
        def any_of(values):
            return functools.reduce(operator.or_, values)

        writers = [dispatcher, *executors.values()]
        m.d.comb += [rx.rd_addr.eq(any_of(e.rd_addr for e in executors.values())),
                     tx.wr_en.eq(any_of(w.wr_en for w in writers)),
                     tx.wr_addr.eq(any_of(w.wr_addr for w in writers)),
                     tx.wr_data.eq(any_of(w.wr_data for w in writers))]

        access, forward, collect = executors.values()
        wiring.connect(m, access.regs, regs.bus)
        wiring.connect(m, access.bus, wiring.flipped(self.bus))
        m.d.comb += self.bus_core.eq(access.bus_core)
        wiring.connect(m, forward.spikes, wiring.flipped(self.spikes))
        wiring.connect(m, forward.errors, wiring.flipped(self.errors))
        wiring.connect(m, wiring.flipped(self.spikes_out), collect.spikes_out)
        wiring.connect(m, wiring.flipped(self.errors_out), collect.errors_out)
        m.d.comb += [self.out_sel.eq(collect.out_sel),
                     collect.spikes_level.eq(self.spikes_level),
                     collect.errors_level.eq(self.errors_level)]

        m.d.comb += [dispatcher.link.eq(regs.link), self.link.eq(regs.link),
                     regs.rx_byte.eq(self.i.valid & self.i.ready),
                     regs.tx_byte.eq(self.o.valid & self.o.ready),
                     regs.frame.eq(dispatcher.frame), regs.bad_frame.eq(dispatcher.bad_frame),
                     regs.active.eq(self.active)]
        if U:
            m.d.comb += [self.qk.eq(regs.qk), regs.qk_busy.eq(self.qk_busy),
                         regs.qk_active.eq(self.qk_active)]
        return m
