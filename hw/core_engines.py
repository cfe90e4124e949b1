# SPDX-License-Identifier: Apache-2.0
"""The engines of a training core (:class:`~spikeforge.hw.core.Core`): the control of its FP, BP,
WG and update work, each a component that issues lane-vector operations to the core's datapath.

``P`` lanes, ``C = ⌈neurons / P⌉`` chunks of neurons, ``F = ⌈inputs / P⌉`` of inputs. An engine's
schedule is the cycle a memory read is issued; the engines also give the later cycles at which
the datapath's units see the operands and write the results (``*_d`` members), from the
latencies of the adders (``la``) and multipliers (``lm``).
"""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import data, fifo, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.regmap import ErrorFlag

from .lanes import Delay, LowestSet

__all__ = ["BeatSender", "ColumnIssuer", "EventIssuer", "EventLog", "GradientSequencer",
           "NonzeroScanner", "RowWalker", "ShortcutLink", "SpikeSerializer", "error_layout",
           "event_layout"]


def event_layout(count: int) -> data.StructLayout:
    """A spike event of ``count`` possible sources."""
    return data.StructLayout({"index": range(max(count, 2)), "spike": 1, "last": 1})


def error_layout(lanes: int) -> data.StructLayout:
    """A beat of ``lanes`` binary16 errors."""
    return data.StructLayout({"value": 16 * lanes, "last": 1})


def chunk_bits(chunks: int) -> int:
    """Bits of a chunk tag through the neuron pipelines."""
    return max(chunks, 2).bit_length()


class EventIssuer(wiring.Component):
    """The FP engine's input: each input spike event becomes one weight-row read a lane chunk.

    ``i`` takes events while ``enable`` is set (the sequencer's accumulate phase), ascending
    ``index`` within a timestep; an event of input token ``r`` (``IN_TOKENS``, ``IN_STRIDE``) is
    input ``r·stride + index``. Each accepted spike holds ``i`` for ``max(C, hazard)`` cycles,
    reading row ``row`` chunk ``chunk`` (``valid``) into the currents, and is logged for WG
    (``log_en``: entry ``count`` of the step is ``log_data``). Out-of-range or out-of-order spikes
    are dropped and raise ``error_set``. ``close`` is set the cycle the timestep's last event is
    done; ``begin`` starts a sample and ``step_done`` a timestep's log.
    """

    def __init__(self, *, fan_in: int, chunks: int, hazard: int):
        F, self._fan_in, self._hazard = fan_in, fan_in, hazard
        super().__init__({
            "i": In(stream.Signature(event_layout(F))),
            "enable": In(1), "begin": In(1), "step_done": In(1),
            "chunks": In(range(chunks + 1)), "inputs": In(range(F + 1)),
            "in_tokens": In(range(F + 1)), "in_stride": In(range(F + 1)),
            "valid": Out(1), "chunk": Out(range(max(chunks, hazard) + 1)), "row": Out(range(F)),
            "busy": Out(1), "close": Out(1), "waiting": Out(1),
            "log_en": Out(1), "log_data": Out(range(F)), "count": Out(range(F + 1)),
            "error_set": Out(len(ErrorFlag)),
        })

    def elaborate(self, platform):
        m = Module()
        F = self._fan_in
        hazard, last_slot = self._hazard, Signal.like(self.chunk)
        m.d.sync += last_slot.eq(Mux(self.chunks > hazard, self.chunks, hazard) - 1)
        active, slot, closing = self.busy, self.chunk, Signal()
        prev, any_ = Signal.like(self.row), Signal()
        in_r, in_base = Signal.like(self.inputs), Signal(range(F * F + F + 1))
        final = in_r + 1 >= self.in_tokens
        at_last = active & (slot == last_slot)
        ev = self.i.payload
        index = Signal(range(F * F + 2 * F + 1))
        m.d.comb += index.eq(in_base + ev.index)
        ok_range = (index < self.inputs) & (ev.index < self.in_stride)
        ok_order = ~any_ | (index > prev)
        with m.If(self.begin):
            m.d.sync += [in_r.eq(0), in_base.eq(0)]
        with m.If(self.begin | self.step_done):
            m.d.sync += [self.count.eq(0), any_.eq(0)]
        with m.If(self.enable):
            m.d.comb += [self.i.ready.eq(~active | (at_last & ~closing)),
                         self.waiting.eq(~active & ~self.i.valid)]
            with m.If(active):
                m.d.sync += slot.eq(slot + 1)
                m.d.comb += self.valid.eq(slot < self.chunks)
                with m.If(at_last):
                    m.d.sync += active.eq(0)
                    with m.If(closing):
                        m.d.sync += closing.eq(0)
                        m.d.comb += self.close.eq(1)
            with m.If(self.i.valid & self.i.ready):
                with m.If(ev.last):
                    m.d.sync += [in_r.eq(Mux(final, 0, in_r + 1)),
                                 in_base.eq(Mux(final, 0, in_base + self.in_stride))]
                with m.If(ev.spike & ok_range & ok_order):
                    m.d.comb += [self.log_en.eq(1), self.log_data.eq(index)]
                    m.d.sync += [self.count.eq(self.count + 1), prev.eq(index), any_.eq(1),
                                 active.eq(1), slot.eq(0), self.row.eq(index),
                                 closing.eq(ev.last & final)]
                with m.Else():
                    m.d.comb += [
                        self.error_set.eq(Mux(ev.spike & ~ok_range, ErrorFlag.EVENT_RANGE, 0)
                                          | Mux(ev.spike & ok_range & ~ok_order,
                                                ErrorFlag.EVENT_ORDER, 0)),
                        self.close.eq(ev.last & final)]
        return m


class EventLog(wiring.Component):
    """The input spikes of every step, for WG: entry ``index`` of step ``t`` is input ``value``
    (``write``), and ``close`` records the step's ``index`` entries. Reading, ``count`` is the
    number of entries of step ``t`` and ``input`` entry ``entry``'s, a cycle after they are
    given."""

    def __init__(self, *, fan_in: int, timesteps: int):
        self._F, self._T = fan_in, timesteps
        super().__init__({
            "t": In(range(timesteps + 1)), "write": In(1), "index": In(range(fan_in + 1)),
            "value": In(range(fan_in)), "close": In(1), "entry": In(range(fan_in + 1)),
            "count": Out(range(fan_in + 1)), "input": Out(range(fan_in)),
        })

    def elaborate(self, platform):
        m = Module()
        F, T = self._F, self._T
        m.submodules.log = log = memory.Memory(shape=range(F), depth=T * F, init=[])
        m.submodules.counts = counts = memory.Memory(shape=range(F + 1), depth=T, init=[])
        log_rd, log_wr = log.read_port(), log.write_port()
        cnt_rd, cnt_wr = counts.read_port(), counts.write_port()
        m.d.comb += [log_wr.en.eq(self.write), log_wr.addr.eq(self.t * F + self.index),
                     log_wr.data.eq(self.value),
                     cnt_wr.en.eq(self.close), cnt_wr.addr.eq(self.t), cnt_wr.data.eq(self.index),
                     cnt_rd.addr.eq(self.t), log_rd.addr.eq(self.t * F + self.entry),
                     self.count.eq(cnt_rd.data), self.input.eq(log_rd.data)]
        return m


class SpikeSerializer(wiring.Component):
    """The LIF pass's spike masks out as spike events, one a cycle, lowest neuron first.

    ``i`` takes a chunk's mask of fired neurons (only non-empty ones) into a FIFO of ``depth``;
    while ``enable`` is set, ``o`` gives their events (``spike = 1``, ``last = 0``).
    ``stalled``: an event waits for ``o.ready``. The LIF pass issues a chunk (``lif_issue``) only
    with ``room`` for its mask, counting the chunks in its pipeline until they come out
    (``lif_out``); ``empty``: none in the pipeline, in the FIFO or waiting.
    """

    def __init__(self, *, neurons: int, lanes: int, depth: int):
        self._lanes, self._depth = lanes, depth
        chunk = chunk_bits(neurons // lanes)
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"mask": lanes, "chunk": chunk}))),
            "o": Out(stream.Signature(event_layout(neurons))),
            "enable": In(1), "stalled": Out(1),
            "lif_issue": In(1), "lif_out": In(1), "room": Out(1), "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P = self._lanes
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self.i.payload.shape().size,
                                                      depth=self._depth)
        wiring.connect(m, wiring.flipped(self.i), q.w_stream)
        mask, chunk = Signal(P), Signal.like(self.i.payload.chunk)
        m.submodules.lowest = lowest_set = LowestSet(P)
        lowest = lowest_set.o
        m.d.comb += lowest_set.i.eq(mask)
        rest = Signal(P)
        valid, fire = Signal(), self.o.valid & self.o.ready
        inflight = Signal(range(self._depth + 2))
        m.d.sync += inflight.eq(inflight + self.lif_issue - self.lif_out)
        m.d.comb += [self.room.eq(q.level + inflight < self._depth),
                     self.empty.eq((inflight == 0) & (q.level == 0) & ~valid)]
        m.d.comb += [rest.eq(mask & (mask - 1)),
                     self.o.valid.eq(valid & self.enable),
                     self.o.payload.index.eq(chunk * P + lowest), self.o.payload.spike.eq(1),
                     self.stalled.eq(valid & self.enable & ~self.o.ready)]
        with m.If(fire):
            m.d.sync += mask.eq(rest)
            with m.If(rest == 0):
                m.d.sync += valid.eq(0)
        with m.If((~valid | (fire & (rest == 0))) & q.r_stream.valid):
            m.d.comb += q.r_stream.ready.eq(1)
            payload = data.View(self.i.payload.shape(), q.r_stream.payload)
            m.d.sync += [mask.eq(payload.mask), chunk.eq(payload.chunk), valid.eq(1)]
        return m


class BeatSender(wiring.Component):
    """Lane vectors read from a memory, out as a stream through a FIFO of four beats.

    ``issue`` a read in a cycle when ``room`` is set; its data arrives on ``data`` the next
    cycle and goes out on ``o`` with the ``last`` given at issue. ``drained``: no read in
    flight; ``empty``: nor a beat in the FIFO.
    """

    def __init__(self, lanes: int):
        super().__init__({
            "issue": In(1), "last": In(1), "data": In(16 * lanes),
            "o": Out(stream.Signature(error_layout(lanes))),
            "room": Out(1), "drained": Out(1), "empty": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = q = fifo.SyncFIFOBuffered(width=self.o.payload.shape().size, depth=4)
        issued, last, inflight = Signal(), Signal(), Signal(range(3))
        m.d.sync += [issued.eq(self.issue), last.eq(self.last),
                     inflight.eq(inflight + self.issue - issued)]
        m.d.comb += [q.w_stream.valid.eq(issued), q.w_stream.payload.eq(Cat(self.data, last)),
                     self.o.valid.eq(q.r_stream.valid), self.o.payload.eq(q.r_stream.payload),
                     q.r_stream.ready.eq(self.o.ready),
                     self.room.eq(q.level + inflight < 4), self.drained.eq(inflight == 0),
                     self.empty.eq((inflight == 0) & (q.level == 0))]
        return m


class ShortcutLink(wiring.Component):
    """A step's end of a membrane shortcut: ``C`` lane vectors out on ``sc_o`` (``send``) or
    taken from ``sc_i`` to be added in (``add``).

    Sending, ``issue`` reads beat ``j`` (its data on ``data`` a cycle later); adding, ``take``
    takes ``sc_i``'s beat for chunk ``j``, which reaches the adder a cycle later (``take_d``,
    ``beat_d``) and whose sum is written to chunk ``j_out``. ``done``: all beats read into the
    output FIFO (up to four may still wait for ``sc_o.ready``), or all sums written; ``stall``:
    waiting for the stream. ``restart`` begins a step.
    """

    def __init__(self, *, lanes: int, chunks: int, add_latency: int):
        self._la = add_latency
        super().__init__({
            "sc_o": Out(stream.Signature(error_layout(lanes))),
            "sc_i": In(stream.Signature(error_layout(lanes))),
            "send": In(1), "add": In(1), "restart": In(1), "chunks": In(range(chunks + 1)),
            "data": In(16 * lanes),
            "issue": Out(1), "take": Out(1), "j": Out(range(chunks + 1)),
            "done": Out(1), "stall": Out(1), "waiting": Out(1),
            "take_d": Out(1), "beat_d": Out(16 * lanes), "j_out": Out(range(chunks + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        la, j, n = self._la, self.j, self.chunks
        m.submodules.out = out = BeatSender(len(self.data) // 16)
        wiring.connect(m, out.o, wiring.flipped(self.sc_o))
        m.d.comb += [out.issue.eq(self.issue), out.last.eq(j + 1 == n), out.data.eq(self.data)]
        tail = Signal(range(la + 4))
        with m.If(self.restart):
            m.d.sync += j.eq(0)
        with m.If(self.send):
            with m.If((j == n) & out.drained):
                m.d.comb += self.done.eq(1)
            with m.Elif((j < n) & out.room):
                m.d.comb += self.issue.eq(1)
                m.d.sync += j.eq(j + 1)
            with m.Elif(j < n):
                m.d.comb += self.stall.eq(1)
        with m.If(self.add):
            m.d.comb += [self.sc_i.ready.eq(j < n), self.waiting.eq((j < n) & ~self.sc_i.valid)]
            with m.If((j == n) & (tail == 0)):
                m.d.comb += self.done.eq(1)
            with m.Elif(self.sc_i.valid & (j < n)):
                m.d.comb += self.take.eq(1)
                m.d.sync += j.eq(j + 1)
            with m.Elif(j < n):
                m.d.comb += self.stall.eq(1)
        with m.If(self.take):
            m.d.sync += tail.eq(la + 3)
        with m.Elif(tail != 0):
            m.d.sync += tail.eq(tail - 1)
        m.submodules.j_late = j_late = Delay(j.shape(), 1 + la)
        m.d.comb += [j_late.i.eq(j), self.j_out.eq(j_late.o)]
        m.d.sync += [self.take_d.eq(self.take), self.beat_d.eq(self.sc_i.payload.value)]
        return m


class NonzeroScanner(wiring.Component):
    """The neurons whose error ``δX`` is not zero, lowest first, from the step's ``δX`` chunks.

    After ``start``, reads chunk ``addr`` of the nonzero masks (``nz_data``) and of ``δX``
    (``d_data``) a cycle later, and gives each neuron ``n`` with its ``d`` on ``o``; ``active``
    until all ``chunks`` are scanned. A chunk costs two cycles (its read, then its load), and a
    neuron one.
    """

    def __init__(self, *, neurons: int, lanes: int):
        self._lanes = lanes
        CH = neurons // lanes
        super().__init__({
            "start": In(1), "chunks": In(range(CH + 1)),
            "addr": Out(range(CH + 1)), "nz_data": In(lanes), "d_data": In(16 * lanes),
            "o": Out(stream.Signature(data.StructLayout({"n": range(neurons), "d": 16}))),
            "active": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        P, sc = self._lanes, self.addr
        loaded, mask, values = Signal(), Signal(P), Signal(16 * P)
        chunk = Signal.like(sc)
        m.submodules.lowest = lowest_set = LowestSet(P)
        lowest = lowest_set.o
        m.d.comb += lowest_set.i.eq(mask)
        take = self.o.valid & self.o.ready
        with m.If(self.start):
            m.d.sync += [sc.eq(0), self.active.eq(1), mask.eq(0), loaded.eq(0),
                         self.o.valid.eq(0)]
        with m.Elif(self.active):
            with m.If(take):
                m.d.sync += self.o.valid.eq(0)
            with m.If(loaded):
                m.d.sync += [mask.eq(self.nz_data), values.eq(self.d_data), chunk.eq(sc - 1),
                             loaded.eq(0)]
            with m.Elif(~self.o.valid | take):
                with m.If(mask != 0):
                    m.d.sync += [self.o.valid.eq(1), self.o.payload.n.eq(chunk * P + lowest),
                                 self.o.payload.d.eq((values >> (lowest * 16))[:16]),
                                 mask.eq(mask & (mask - 1))]
                with m.Else():
                    m.d.sync += self.o.valid.eq(0)
                    with m.If(sc < self.chunks):
                        m.d.sync += [sc.eq(sc + 1), loaded.eq(1)]
                    with m.Else():
                        m.d.sync += self.active.eq(0)
        return m


class ColumnIssuer(wiring.Component):
    """``Wᵀ·δX``: for each neuron from ``i``, its weight column times its ``d``, added into the
    input errors, one lane chunk of inputs a cycle for ``max(F, hazard)`` cycles.

    ``issue`` reads weight column ``n`` chunk ``slot``; the products start a cycle later
    (``mul_valid``, ``mul_d``), the accumulator chunk is read ``lm`` cycles after issue
    (``a_read``, ``a_addr``) and written ``1 + lm + la`` after (``a_write_addr``). ``done`` once
    the scan (``scanning``) and the pipeline are empty in the sequencer's ``Wᵀ·δX`` phase
    (``counting``), cleared by ``start`` and ``clear``.
    """

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, mul_latency: int,
                 add_latency: int):
        self._lm, self._la = mul_latency, add_latency
        self._FCH = FCH = fan_in // lanes
        self._hazard = add_latency + 2
        super().__init__({
            "i": In(stream.Signature(data.StructLayout({"n": range(neurons), "d": 16}))),
            "start": In(1), "in_chunks": In(range(FCH + 1)), "scanning": In(1),
            "counting": In(1), "clear": In(1),
            "issue": Out(1), "n": Out(range(neurons)), "slot": Out(range(max(FCH, self._hazard)
                                                                          + 1)),
            "done": Out(1),
            "mul_valid": Out(1), "mul_d": Out(16), "a_read": Out(1),
            "a_addr": Out(range(max(FCH, self._hazard) + 1)),
            "a_write_addr": Out(range(max(FCH, self._hazard) + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        lm, la, hazard = self._lm, self._la, self._hazard
        active, d, slot = Signal(), Signal(16), self.slot
        last_slot = Signal(range(max(self._FCH, hazard)))
        m.d.sync += last_slot.eq(Mux(self.in_chunks > hazard, self.in_chunks, hazard) - 1)
        last = active & (slot == last_slot)
        m.d.comb += self.i.ready.eq(~active | last)
        with m.If(self.i.valid & self.i.ready):
            m.d.sync += [active.eq(1), slot.eq(0), self.n.eq(self.i.payload.n),
                         d.eq(self.i.payload.d)]
        with m.Elif(last):
            m.d.sync += active.eq(0)
        with m.Elif(active):
            m.d.sync += slot.eq(slot + 1)
        with m.If(self.start):
            m.d.sync += [active.eq(0), self.done.eq(0)]
        m.d.comb += self.issue.eq(active & (slot < self.in_chunks))
        tail = Signal(range(lm + la + 8))
        with m.If(self.issue):
            m.d.sync += tail.eq(lm + la + 4)
        with m.Elif(tail != 0):
            m.d.sync += tail.eq(tail - 1)
        with m.If(self.counting & ~self.scanning & ~active & (tail == 0) & ~self.start):
            m.d.sync += self.done.eq(1)
        with m.If(self.clear):
            m.d.sync += self.done.eq(0)
        m.submodules.issue_late = issue_late = Delay(1, lm)
        m.submodules.slot_late = slot_late = Delay(slot.shape(), 1 + lm + la, taps=True)
        m.d.sync += [self.mul_valid.eq(self.issue), self.mul_d.eq(d)]
        m.d.comb += [issue_late.i.eq(self.issue), slot_late.i.eq(slot),
                     self.a_read.eq(issue_late.o), self.a_addr.eq(slot_late.taps[lm]),
                     self.a_write_addr.eq(slot_late.o)]
        return m


class GradientSequencer(wiring.Component):
    """WG: ``ΔW[:, i] += δX`` for every input ``i`` logged at the step, ``C`` cycles each
    (two when ``C = 1``: the next row is read first).

    After ``start``, reads the step's event count (``count_data``, a cycle after) and its log
    entries ``entry`` (``log_data``), and ``issue``\\ s gradient row ``row`` chunk ``slot``
    reads; the sum of a read is written ``1 + la`` cycles later (``valid_d``, ``row_d``,
    ``chunk_d``). ``done`` as :class:`ColumnIssuer`'s.
    """

    def __init__(self, *, fan_in: int, chunks: int, add_latency: int):
        self._la = add_latency
        super().__init__({
            "start": In(1), "chunks": In(range(chunks + 1)), "counting": In(1), "clear": In(1),
            "count_data": In(range(fan_in + 1)), "log_data": In(range(fan_in)),
            "entry": Out(range(fan_in + 1)), "issue": Out(1), "row": Out(range(fan_in)),
            "slot": Out(range(chunks + 1)), "active": Out(1), "done": Out(1),
            "valid_d": Out(1), "row_d": Out(range(fan_in)), "chunk_d": Out(range(chunks + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        la, entry, slot, row = self._la, self.entry, self.slot, self.row
        count, phase = Signal.like(self.count_data), Signal(2)
        with m.If(self.start):
            m.d.sync += [self.active.eq(1), phase.eq(0), entry.eq(0), self.done.eq(0)]
        with m.Elif(self.active):
            with m.Switch(phase):
                with m.Case(0):         # the count's read
                    m.d.sync += phase.eq(1)
                with m.Case(1):         # the count
                    m.d.sync += count.eq(self.count_data)
                    with m.If(self.count_data == 0):
                        m.d.sync += self.active.eq(0)
                    with m.Else():
                        m.d.sync += phase.eq(2)
                with m.Case(2):         # the row
                    m.d.sync += [row.eq(self.log_data), slot.eq(0), phase.eq(3),
                                 entry.eq(entry + 1)]
                with m.Case(3):         # its chunks
                    m.d.comb += self.issue.eq(1)
                    m.d.sync += slot.eq(slot + 1)
                    with m.If(slot + 1 == self.chunks):
                        with m.If(entry == count):
                            m.d.sync += self.active.eq(0)
                        with m.Elif(self.chunks == 1):
                            m.d.sync += phase.eq(2)
                        with m.Else():
                            m.d.sync += [row.eq(self.log_data), slot.eq(0), entry.eq(entry + 1)]
        tail = Signal(range(la + 8))
        with m.If(self.issue):
            m.d.sync += tail.eq(la + 4)
        with m.Elif(tail != 0):
            m.d.sync += tail.eq(tail - 1)
        with m.If(self.counting & ~self.active & (tail == 0) & ~self.start):
            m.d.sync += self.done.eq(1)
        with m.If(self.clear):
            m.d.sync += self.done.eq(0)
        m.submodules.row_late = row_late = Delay(row.shape(), 1 + la)
        m.submodules.slot_late = slot_late = Delay(slot.shape(), 1 + la)
        m.d.sync += self.valid_d.eq(self.issue)
        m.d.comb += [row_late.i.eq(row), slot_late.i.eq(slot),
                     self.row_d.eq(row_late.o), self.chunk_d.eq(slot_late.o)]
        return m


class RowWalker(wiring.Component):
    """Every lane vector of a ``rows × chunks`` memory, one a cycle (the update and the clear of
    the gradients): while ``enable``, ``issue`` chunk ``chunk`` of row ``row`` until ``done``.
    ``start`` goes back to the first. ``issue_d`` is ``issue`` a cycle later, ``row_d`` and
    ``chunk_d`` the chunk issued ``latency`` cycles before."""

    def __init__(self, *, rows: int, chunks: int, latency: int):
        self._latency = latency
        super().__init__({
            "issue_d": Out(1), "row_d": Out(range(rows + 1)), "chunk_d": Out(range(chunks + 1)),
            "start": In(1), "enable": In(1),
            "rows": In(range(rows + 1)), "chunks": In(range(chunks + 1)),
            "issue": Out(1), "done": Out(1),
            "row": Out(range(rows + 1)), "chunk": Out(range(chunks + 1)),
        })

    def elaborate(self, platform):
        m = Module()
        row, chunk = self.row, self.chunk
        m.d.comb += [self.done.eq(row == self.rows), self.issue.eq(self.enable & ~self.done)]
        with m.If(self.start):
            m.d.sync += [row.eq(0), chunk.eq(0)]
        with m.Elif(self.issue):
            m.d.sync += chunk.eq(chunk + 1)
            with m.If(chunk + 1 == self.chunks):
                m.d.sync += [chunk.eq(0), row.eq(row + 1)]
        m.submodules.row_late = row_late = Delay(row.shape(), self._latency)
        m.submodules.chunk_late = chunk_late = Delay(chunk.shape(), self._latency)
        m.d.sync += self.issue_d.eq(self.issue)
        m.d.comb += [row_late.i.eq(row), chunk_late.i.eq(chunk),
                     self.row_d.eq(row_late.o), self.chunk_d.eq(chunk_late.o)]
        return m
