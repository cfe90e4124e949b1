# SPDX-License-Identifier: Apache-2.0
import collections
import gc
import random

import pytest
from amaranth.hdl import Elaboratable, Module, Signal
from amaranth.lib import memory, wiring
from amaranth.sim import Simulator

from spikeforge import protocol as p
from spikeforge.hw.hostlink import (
    EXECUTORS,
    BusAccess,
    CommandDispatcher,
    FrameReceiver,
    FrameTransmitter,
    InputForwarder,
    OutputCollector,
    SocRegisters,
)
from spikeforge.hw.soc import HostInputs, OutputFifos
from spikeforge.protocol import Link, Opcode, QkReg, SocReg, Status


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


async def feed(ctx, port, elements, rng):
    """``elements`` into ``port``, with random idle cycles."""
    for element in elements:
        while rng.random() < 0.3:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, element)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


async def fill(ctx, port, words):
    """``words`` into a buffer through its write ``port`` (enable, address, data)."""
    en, addr, data = port
    for k, word in enumerate(words):
        ctx.set(en, 1)
        ctx.set(addr, k)
        ctx.set(data, word)
        await ctx.tick()
    ctx.set(en, 0)


async def take(ctx, port, rng, limit=10000):
    """One element of ``port``, taken with random backpressure."""
    for _ in range(limit):
        ready = rng.random() < 0.6
        ctx.set(port.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(port.valid, port.payload)
        if valid and ready:
            ctx.set(port.ready, 0)
            return payload
    raise AssertionError("no element")


def test_receiver_parses_frames_and_checks_their_crc():
    dut = FrameReceiver(timeout=64)
    rng = random.Random(1)
    good = p.encode_command(7, Opcode.WRITE, 3, 0x10000003, [0x3C00, 0xBEEF, 0x0102])
    bad = bytearray(p.encode_command(8, Opcode.READ, 1, 5, [4]))
    bad[-1] ^= 0x80
    odd = bytearray(p.encode_command(9, Opcode.READ, 1, 5, [4]))
    odd[8] |= 1

    async def bench(ctx):
        async def frame(data):
            await feed(ctx, dut.i, data, rng)
            header = await take(ctx, dut.o, rng)
            words = []
            for k in range(header.words):
                ctx.set(dut.rd_addr, k)
                await ctx.tick()
                words.append(ctx.get(dut.rd_data))
            ctx.set(dut.release, 1)
            await ctx.tick()
            ctx.set(dut.release, 0)
            return header, words

        header, words = await frame(b"\x00\x17" + good)
        assert (header.seq, header.opcode, header.core, header.address, header.status) == \
            (7, Opcode.WRITE, 3, 0x10000003, Status.OK)
        assert words == [0x3C00, 0xBEEF, 0x0102]
        header, _ = await frame(bytes(bad))
        assert (header.seq, header.status) == (8, Status.BAD_CRC)
        header, _ = await frame(bytes(odd[:10]))     # answered once its header is in
        assert (header.seq, header.status) == (9, Status.BAD_LENGTH)

    simulate(dut, bench)


def test_transmitter_sends_frames_the_host_decodes():
    dut = FrameTransmitter()
    rng = random.Random(2)
    replies = [(5, Status.OK, [0x1234, 0xFFFF, 0]), (6, Status.BAD_ADDRESS, []),
               (7, Status.OK, [rng.randrange(1 << 16) for _ in range(p.MAX_WORDS)])]

    async def bench(ctx):
        decoder = p.ReplyDecoder()
        for seq, status, payload in replies:
            await fill(ctx, (dut.wr_en, dut.wr_addr, dut.wr_data), payload)
            for _ in range(2):      # a reply is sent again from the same buffer
                ctx.set(dut.send.payload, {"seq": seq, "status": status, "words": len(payload)})
                ctx.set(dut.send.valid, 1)
                await ctx.tick().until(dut.send.ready)
                ctx.set(dut.send.valid, 0)
                got = []
                while not got:
                    got = decoder.feed(bytes([await take(ctx, dut.o, rng)]))
                assert got == [p.Reply(seq, status, tuple(payload))]
        assert decoder.dropped == 0

    simulate(dut, bench)


def test_soc_registers_count_and_keep_routing_and_qk_values():
    dut = SocRegisters(cores=3, lanes=2, qk_units=2, qk_limits=(4, 6, 3))

    async def bench(ctx):
        async def read(addr):
            ctx.set(dut.bus.addr, addr)
            return ctx.get(dut.bus.r_data) if ctx.get(dut.bus.r_ok) else None

        async def write(addr, value):
            ctx.set(dut.bus.addr, addr)
            ctx.set(dut.bus.w_data, value)
            ok = ctx.get(dut.bus.w_ok)
            ctx.set(dut.bus.w_en, 1)
            await ctx.tick()
            ctx.set(dut.bus.w_en, 0)
            return ok

        events = [(dut.rx_byte, 5), (dut.tx_byte, 3), (dut.frame, 2), (dut.bad_frame, 1),
                  (dut.active, 7)]
        for k in range(8):
            for port, count in events:
                ctx.set(port, k < count)
            ctx.set(dut.qk_active, 0b11 if k < 2 else 0b10 if k < 3 else 0)
            await ctx.tick()
        for port, _ in events:
            ctx.set(port, 0)
        ctx.set(dut.qk_active, 0)
        assert [await read(a) for a in range(2 * 6 + 1)] == [5, 0, 3, 0, 2, 0, 1, 0, 7, 0,
                                                             5, 0, None]
        assert not await write(SocReg.FRAMES, 9)
        assert await read(SocReg.FRAMES) == 2

        assert [await read(SocReg.LINK + c) for c in range(4)] == [0, 0, 0, None]
        assert await write(SocReg.LINK + 1, Link.FP_TO_NEXT | Link.SPLIT)
        assert not await write(SocReg.LINK + 2, 1 << p.LINK_BITS)
        assert not await write(SocReg.LINK + 3, 1)
        assert [await read(SocReg.LINK + c) for c in range(3)] == [0, 5, 0]
        assert list(ctx.get(dut.link)) == [0, Link.FP_TO_NEXT | Link.SPLIT, 0]

        unit1 = SocReg.QK + p.QK_REGS
        assert [await read(unit1 + r) for r in QkReg] == [0, 4, 6, 3, 0x3800, 0, 0x3800, 0x3800]
        assert await read(SocReg.QK + 2 * p.QK_REGS) is None
        for reg, value, ok in ((QkReg.KIND, 1, True), (QkReg.KIND, 2, False),
                               (QkReg.TOKENS, 0, False), (QkReg.TOKENS, 4, True),
                               (QkReg.TOKENS, 5, False), (QkReg.CHANNELS, 3, False),
                               (QkReg.CHANNELS, 8, False), (QkReg.CHANNELS, 2, True),
                               (QkReg.TIMESTEPS, 4, False), (QkReg.TIMESTEPS, 1, True),
                               (QkReg.V_TH, 0xBC00, True)):
            assert await write(unit1 + reg, value) == ok, (reg, value)
        ctx.set(dut.qk_busy, 0b10)
        assert not await write(unit1 + QkReg.V_RESET, 0x3C00)
        assert await write(SocReg.QK + QkReg.V_RESET, 0x3C00)
        assert [await read(unit1 + r) for r in QkReg] == [1, 4, 2, 1, 0xBC00, 0, 0x3800, 0x3800]
        qk = ctx.get(dut.qk)
        assert [qk[u][r.name.lower()] for u in range(2) for r in QkReg] == [
            0, 4, 6, 3, 0x3800, 0x3C00, 0x3800, 0x3800, 1, 4, 2, 1, 0xBC00, 0, 0x3800, 0x3800]

    simulate(dut, bench)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^SoC register core count must be between 1 and 253, "
                                         r"not 254$"):
        SocRegisters(cores=254, lanes=1)
    with pytest.raises(ValueError, match=r"^Lane count must be a power of two, not 3$"):
        SocRegisters(cores=2, lanes=3)
    with pytest.raises(ValueError, match=r"^Q-K unit count must be a non-negative integer, "
                                         r"not -1$"):
        SocRegisters(cores=2, lanes=1, qk_units=-1)
    with pytest.raises(ValueError, match=r"^Q-K limits must be three integers \(tokens, "
                                         r"channels, timesteps\) between 0 and 65535, "
                                         r"not \(4, 65536, 3\)$"):
        SocRegisters(cores=2, lanes=1, qk_units=1, qk_limits=(4, 65536, 3))
    with pytest.raises(ValueError, match=r"^Bus access core count must be between 1 and 253, "
                                         r"not 0$"):
        BusAccess(cores=0)
    with pytest.raises(ValueError, match=r"^Fan-in must be between 1 and 16384, not 16385$"):
        InputForwarder(lanes=1, fan_in=16385, timeout=10)
    with pytest.raises(ValueError, match=r"^Stream time-out must be a positive integer, "
                                         r"not 0$"):
        InputForwarder(lanes=1, fan_in=8, timeout=0)
    with pytest.raises(ValueError, match=r"^Lane count must be a power of two, not 6$"):
        OutputCollector(cores=2, lanes=6)
    with pytest.raises(ValueError, match=r"^Identity must be 1 to 512 words of 16 bits, "
                                         r"not \(1, 65536\)$"):
        CommandDispatcher(cores=2, lanes=1, identity=(1, 65536))
    with pytest.raises(ValueError, match=r"^Host input core count must be between 1 and 253, "
                                         r"not 0$"):
        HostInputs(cores=0, lanes=1)
    with pytest.raises(ValueError, match=r"^Error FIFO depth must be a positive integer, "
                                         r"not 0$"):
        OutputFifos(cores=1, lanes=1, spike_depth=4, error_depth=0)
    gc.collect()


class ExecutorBench(Elaboratable):
    """An executor between a payload buffer the testbench fills (``load_*``) and a reply buffer
    it reads back (``reply_addr`` / ``reply_data``), with ``parts`` beside it."""

    def __init__(self, dut, connect=lambda m, dut: None, **parts):
        self.dut, self._connect, self._parts = dut, connect, parts
        self.load_en, self.load_addr, self.load_data = Signal(), Signal(9), Signal(16)
        self.reply_addr, self.reply_data = Signal(9), Signal(16)

    def elaborate(self, platform):
        m = Module()
        m.submodules.dut = self.dut
        for name, part in self._parts.items():
            m.submodules[name] = part
        self._connect(m, self.dut)
        m.submodules.payload = payload = memory.Memory(shape=16, depth=p.MAX_WORDS, init=[])
        m.submodules.reply = reply = memory.Memory(shape=16, depth=p.MAX_WORDS, init=[])
        load, rd = payload.write_port(), payload.read_port()
        wr, back = reply.write_port(), reply.read_port(domain="comb")
        m.d.comb += [load.en.eq(self.load_en), load.addr.eq(self.load_addr),
                     load.data.eq(self.load_data), rd.addr.eq(self.dut.rd_addr),
                     self.dut.rd_data.eq(rd.data), wr.en.eq(self.dut.wr_en),
                     wr.addr.eq(self.dut.wr_addr), wr.data.eq(self.dut.wr_data),
                     back.addr.eq(self.reply_addr), self.reply_data.eq(back.data)]
        return m


async def execute(ctx, bench, rng, opcode, core=0, address=0, payload=(), arg=None):
    """Run one command on ``bench``'s executor: its status and reply words."""
    dut = bench.dut
    await fill(ctx, (bench.load_en, bench.load_addr, bench.load_data), payload)
    assert ctx.get(dut.i.ready)
    assert (ctx.get(dut.rd_addr), ctx.get(dut.wr_en), ctx.get(dut.wr_addr),
            ctx.get(dut.wr_data)) == (0, 0, 0, 0)
    arg = payload[0] if arg is None and payload else arg or 0
    ctx.set(dut.i.payload, {"opcode": opcode, "core": core, "address": address,
                            "words": len(payload), "arg": arg})
    ctx.set(dut.i.valid, 1)
    await ctx.tick()
    ctx.set(dut.i.valid, 0)
    result = await take(ctx, dut.o, rng, limit=20000)
    reply = []
    for k in range(result.words):
        ctx.set(bench.reply_addr, k)
        reply.append(ctx.get(bench.reply_data))
    return Status(result.status), reply


def test_bus_access_reads_and_writes_cores_and_registers():
    cores = 3
    dut = BusAccess(cores=cores)
    regs = SocRegisters(cores=cores, lanes=1)
    bench = ExecutorBench(dut, lambda m, dut: wiring.connect(m, dut.regs, regs.bus), regs=regs)
    rng = random.Random(3)
    memory_ = {(c, a): rng.randrange(1 << 16) for c in range(cores) for a in range(100, 110)}
    refused = {(2, 105)}
    log = []

    async def bus(ctx):
        while True:
            _, _, en, we, probe, core, addr, wdata = await ctx.tick().sample(
                dut.bus.en, dut.bus.we, dut.bus.probe, dut.bus_core, dut.bus.addr.as_value(),
                dut.bus.wdata)
            if not en:
                continue
            log.append((core, addr, we and (wdata, probe)))
            for _ in range(rng.randrange(3)):
                await ctx.tick()
            ok = (core, addr) in memory_ and (core, addr) not in refused
            ctx.set(dut.bus.ack, 1)
            ctx.set(dut.bus.err, not ok)
            ctx.set(dut.bus.rdata, memory_.get((core, addr), 0))
            if ok and we and not probe:
                memory_[core, addr] = wdata
            await ctx.tick()
            ctx.set(dut.bus.ack, 0)

    async def body(ctx):
        run = execute
        assert await run(ctx, bench, rng, Opcode.READ, 1, 102, arg=3) == (
            Status.OK, [memory_[1, 102 + k] for k in range(3)])
        assert log == [(1, 102 + k, False) for k in range(3)]
        assert await run(ctx, bench, rng, Opcode.READ, 0, 108, arg=3) == (Status.BAD_ADDRESS, [])

        log.clear()
        assert await run(ctx, bench, rng, Opcode.WRITE, p.BROADCAST, 103, [7, 8]) == (Status.OK,
                                                                                   [])
        assert log == [(c, 103 + k, (v, probe)) for probe in (1, 0) for c in range(cores)
                       for k, v in enumerate((7, 8))]
        assert [memory_[c, 103 + k] for c in range(cores) for k in range(2)] == [7, 8] * 3

        log.clear()
        before = dict(memory_)
        assert await run(ctx, bench, rng, Opcode.WRITE, p.BROADCAST, 104, [1, 2]) == (
            Status.BAD_ADDRESS, [])
        assert log[-1] == (2, 105, (2, 1)) and all(probe for *_, (_, probe) in log)
        assert memory_ == before

        assert await run(ctx, bench, rng, Opcode.WRITE, p.SOC, SocReg.LINK + 1, [5, 3]) == (
            Status.OK, [])
        assert await run(ctx, bench, rng, Opcode.WRITE, p.SOC, SocReg.LINK, [1, 2, 3, 4]) == (
            Status.BAD_ADDRESS, [])
        assert await run(ctx, bench, rng, Opcode.READ, p.SOC, SocReg.LINK, arg=3) == (
            Status.OK, [0, 5, 3])
        assert await run(ctx, bench, rng, Opcode.READ, p.SOC, SocReg.LINK + 1, arg=3) == (
            Status.BAD_ADDRESS, [])

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_process(bus)
    sim.add_testbench(body)
    sim.run()


class Sink:
    """Takes a stream's elements with random backpressure, or none while ``stalled``."""

    def __init__(self, port, rng):
        self.port, self.rng, self.got, self.stalled = port, rng, [], False

    async def process(self, ctx):
        while True:
            ready = not self.stalled and self.rng.random() < 0.6
            ctx.set(self.port.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(self.port.valid, self.port.payload)
            if valid and ready:
                self.got.append(payload)


def test_input_forwarder_checks_then_streams_spikes_and_error_beats():
    dut = InputForwarder(lanes=2, fan_in=10, timeout=50)
    bench = ExecutorBench(dut)
    rng = random.Random(4)
    spikes, errors = Sink(dut.spikes, rng), Sink(dut.errors, rng)
    events = [p.event_word(3), p.event_word(9), p.event_word(12, spike=False),
              p.event_word(0, spike=False, last=True), p.event_word(1)]

    async def body(ctx):
        run = execute
        assert await run(ctx, bench, rng, Opcode.SPIKES_IN, 2, 0, events) == (Status.OK, [])
        assert [(s.core, s.word.as_value().value) for s in spikes.got] == [(2, w) for w in events]
        spikes.got.clear()
        assert await run(ctx, bench, rng, Opcode.SPIKES_IN, 1, 0,
                         [p.event_word(2), p.event_word(10), p.event_word(4)]) == (
            Status.BAD_ADDRESS, [])

        words = [rng.randrange(1 << 16) for _ in range(8)]
        assert await run(ctx, bench, rng, Opcode.ERRORS_IN, 1, 2, words) == (Status.OK, [])
        assert [(e.core, e.value, e.last) for e in errors.got] == [
            (1, words[2 * k] | words[2 * k + 1] << 16, k % 2) for k in range(4)]
        errors.got.clear()
        assert await run(ctx, bench, rng, Opcode.ERRORS_IN, 1, 2, words[:6]) == (
            Status.BAD_LENGTH, [])
        assert await run(ctx, bench, rng, Opcode.ERRORS_IN, 0, 1, words[:2]) == (Status.OK, [])
        assert [(e.core, e.last) for e in errors.got] == [(0, 1)]

        spikes.stalled = True
        assert await run(ctx, bench, rng, Opcode.SPIKES_IN, 0, 0, events) == (Status.TIMEOUT,
                                                                             [])
        assert await run(ctx, bench, rng, Opcode.ERRORS_IN, 0, 1, words[:2]) == (Status.OK, [])
        assert spikes.got == [] and len(errors.got) == 2

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_process(spikes.process)
    sim.add_process(errors.process)
    sim.add_testbench(body)
    sim.run()


def test_output_collector_takes_only_what_is_waiting():
    lanes = 2
    dut = OutputCollector(cores=3, lanes=lanes)
    bench = ExecutorBench(dut)
    rng = random.Random(5)
    fifos = {"spikes": collections.deque(), "errors": collections.deque()}
    core = [0]

    def fifo_process(name):
        port, level = getattr(dut, f"{name}_out"), getattr(dut, f"{name}_level")

        async def process(ctx):
            while True:
                q = fifos[name]
                ctx.set(port.valid, bool(q))
                ctx.set(port.payload, q[0] if q else 0)
                ctx.set(level, len(q))
                _, _, ready, sel = await ctx.tick().sample(port.ready, dut.out_sel)
                if ready and q:
                    assert sel == core[0]
                    q.popleft()
        return process

    async def body(ctx):
        run = execute
        core[0] = 2
        ctx.set(dut.i.payload.core, 2)
        assert ctx.get(dut.out_sel) == 2
        spikes = [rng.randrange(1 << 16) for _ in range(5)]
        fifos["spikes"].extend(spikes[:3])
        await ctx.tick()
        assert await run(ctx, bench, rng, Opcode.SPIKES_OUT, 2, 0, arg=5) == (Status.OK,
                                                                             spikes[:3])
        fifos["spikes"].extend(spikes[3:])
        await ctx.tick()
        assert await run(ctx, bench, rng, Opcode.SPIKES_OUT, 2, 0, arg=1) == (Status.OK,
                                                                             spikes[3:4])
        assert list(fifos["spikes"]) == spikes[4:]

        core[0] = 1
        beats = [rng.randrange(1 << 16 * lanes) for _ in range(300)]
        fifos["errors"].extend(beats[:2])
        await ctx.tick()
        words = [(b >> 16 * k) & 0xFFFF for b in beats for k in range(lanes)]
        assert await run(ctx, bench, rng, Opcode.ERRORS_OUT, 1, 0, arg=3) == (Status.OK,
                                                                             words[:4])
        fifos["errors"].extend(beats[2:])
        await ctx.tick()
        assert await run(ctx, bench, rng, Opcode.ERRORS_OUT, 1, 0, arg=p.MAX_WORDS) == (
            Status.OK, words[4:4 + p.MAX_WORDS])
        assert len(fifos["errors"]) == 300 - 2 - p.MAX_WORDS // lanes
        fifos["errors"].clear()
        await ctx.tick()
        assert await run(ctx, bench, rng, Opcode.ERRORS_OUT, 1, 0, arg=4) == (Status.OK, [])

    sim = Simulator(bench)
    sim.add_clock(1e-8)
    sim.add_process(fifo_process("spikes"))
    sim.add_process(fifo_process("errors"))
    sim.add_testbench(body)
    sim.run()


def test_dispatcher_checks_hands_over_and_answers_every_frame():
    cores, identity = 3, (5, 3, 2, 9)
    dut = CommandDispatcher(cores=cores, lanes=2, identity=identity)
    rng = random.Random(6)
    jobs, results = [], {name: [] for name in EXECUTORS}
    seen = {"frame": 0, "bad_frame": 0, "writes": {}}

    def executor(name):
        job, result = getattr(dut, name), getattr(dut, f"{name}_result")

        async def process(ctx):
            ctx.set(job.ready, 1)
            while True:
                _, _, valid, payload = await ctx.tick().sample(job.valid, job.payload)
                if not valid:
                    continue
                jobs.append((name, Opcode(payload.opcode), payload.core, payload.address,
                             payload.words, payload.arg))
                ctx.set(job.ready, 0)
                for _ in range(rng.randrange(1, 4)):
                    await ctx.tick()
                status, words = results[name].pop(0) if results[name] else (Status.OK, 0)
                ctx.set(result.payload, {"status": status, "words": words})
                ctx.set(result.valid, 1)
                await ctx.tick().until(result.ready)
                ctx.set(result.valid, 0)
                ctx.set(job.ready, 1)
        return process

    async def monitor(ctx):
        while True:
            _, _, frame, bad, wr_en, wr_addr, wr_data = await ctx.tick().sample(
                dut.frame, dut.bad_frame, dut.wr_en, dut.wr_addr, dut.wr_data)
            seen["frame"] += frame
            seen["bad_frame"] += bad
            if wr_en:
                seen["writes"][wr_addr] = wr_data

    async def body(ctx):
        seq = 0

        async def send(opcode, core=0, address=0, words=1, arg=1, status=Status.OK, again=False):
            nonlocal seq
            seq += not again
            assert not ctx.get(dut.busy)
            ctx.set(dut.rd_data, arg)
            for name, value in (("seq", seq), ("opcode", opcode), ("core", core),
                                ("address", address), ("words", words), ("status", status)):
                ctx.set(dut.i.payload[name], value)     # an opcode need not be an Opcode
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)
            reply = await take(ctx, dut.o, rng)
            assert ctx.get(dut.busy) and not ctx.get(dut.i.ready)
            await ctx.tick().repeat(3)
            ctx.set(dut.sent, 1)
            assert ctx.get(dut.release)
            await ctx.tick()
            ctx.set(dut.sent, 0)
            assert reply.seq == seq
            return Status(reply.status), reply.words

        def counted():
            counts = (seen["frame"], seen["bad_frame"])
            seen["frame"] = seen["bad_frame"] = 0
            return counts

        assert await send(Opcode.IDENTIFY, words=0) == (Status.OK, len(identity))
        assert seen["writes"] == dict(enumerate(identity))
        assert await send(Opcode.READ, status=Status.BAD_CRC) == (Status.BAD_CRC, 0)
        assert await send(0x7F) == (Status.BAD_OPCODE, 0)
        assert counted() == (2, 2)
        for opcode, core, words, arg in ((Opcode.READ, cores, 1, 1),
                                         (Opcode.READ, p.BROADCAST, 1, 1),
                                         (Opcode.SPIKES_IN, p.SOC, 1, 1),
                                         (Opcode.ERRORS_OUT, p.BROADCAST, 1, 1)):
            assert await send(opcode, core, 0, words, arg) == (Status.BAD_CORE, 0)
        for opcode, words, arg in ((Opcode.READ, 2, 1), (Opcode.READ, 1, 0),
                                   (Opcode.SPIKES_OUT, 1, p.MAX_WORDS + 1),
                                   (Opcode.ERRORS_IN, 3, 0)):
            assert await send(opcode, 1, 1, words, arg) == (Status.BAD_LENGTH, 0)
        for address in (0, p.MAX_WORDS + 1):
            assert await send(Opcode.ERRORS_IN, 1, address, 4) == (Status.BAD_ADDRESS, 0)
        assert jobs == [] and counted() == (10, 10)

        results["access"].append((Status.OK, 7))
        assert await send(Opcode.READ, p.SOC, 0x200, 1, 7) == (Status.OK, 7)
        assert await send(Opcode.WRITE, p.BROADCAST, 12, 4, 0xBEEF) == (Status.OK, 0)
        results["forward"].append((Status.TIMEOUT, 0))
        assert await send(Opcode.SPIKES_IN, 2, 0, 6, 3) == (Status.TIMEOUT, 0)
        assert await send(Opcode.ERRORS_IN, 0, 3, 6, 3) == (Status.OK, 0)
        results["collect"].append((Status.OK, 3))
        assert await send(Opcode.ERRORS_OUT, 1, 0, 1, 5) == (Status.OK, 3)
        assert jobs == [("access", Opcode.READ, p.SOC, 0x200, 1, 7),
                        ("access", Opcode.WRITE, p.BROADCAST, 12, 4, 0xBEEF),
                        ("forward", Opcode.SPIKES_IN, 2, 0, 6, 3),
                        ("forward", Opcode.ERRORS_IN, 0, 3, 6, 3),
                        ("collect", Opcode.ERRORS_OUT, 1, 0, 1, 5)]
        assert counted() == (5, 1)

        assert await send(Opcode.SPIKES_IN, 2, again=True) == (Status.OK, 3)
        assert len(jobs) == 5 and counted() == (0, 0)

        jobs.clear()
        ctx.set(dut.link, [0, Link.FP_TO_NEXT | Link.BP_TO_PREV, 0])
        assert await send(Opcode.SPIKES_IN, 2, 0, 2) == (Status.BAD_CORE, 0)
        assert await send(Opcode.ERRORS_IN, 0, 1, 2) == (Status.BAD_CORE, 0)
        assert await send(Opcode.SPIKES_IN, 1, 0, 2) == (Status.OK, 0)
        assert await send(Opcode.ERRORS_IN, 1, 1, 2) == (Status.OK, 0)
        ctx.set(dut.link, [0, 0, Link.SPLIT])
        assert await send(Opcode.SPIKES_IN, 2, 0, 2) == (Status.BAD_CORE, 0)
        assert await send(Opcode.ERRORS_IN, 1, 1, 2) == (Status.BAD_CORE, 0)
        assert [job[:3] for job in jobs] == [("forward", Opcode.SPIKES_IN, 1),
                                             ("forward", Opcode.ERRORS_IN, 1)]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in EXECUTORS:
        sim.add_process(executor(name))
    sim.add_process(monitor)
    sim.add_testbench(body)
    sim.run()


def test_host_inputs_reach_the_core_they_name():
    cores, lanes = 3, 2
    dut = HostInputs(cores=cores, lanes=lanes)
    rng = random.Random(8)
    spikes = [{"core": rng.randrange(cores),
               "word": {"index": rng.randrange(100), "spike": 1, "last": rng.random() < 0.2}}
              for _ in range(60)]
    errors = [{"core": rng.randrange(cores), "value": rng.randrange(1 << 32),
               "last": rng.randrange(2)} for _ in range(40)]
    spk_sinks = [Sink(dut.spk[k], rng) for k in range(cores)]
    err_sinks = [Sink(dut.err[k], rng) for k in range(cores)]

    async def body(ctx):
        await feed(ctx, dut.spikes, spikes, rng)
        await feed(ctx, dut.errors, errors, rng)
        await ctx.tick().until(~dut.pending)
        await ctx.tick().repeat(4)
        for k in range(cores):
            assert [{"index": s.index, "spike": s.spike, "last": s.last}
                    for s in spk_sinks[k].got] == [s["word"] for s in spikes if s["core"] == k]
            assert [{"core": k, "value": e.value, "last": e.last}
                    for e in err_sinks[k].got] == [e for e in errors if e["core"] == k]

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for sink in spk_sinks + err_sinks:
        sim.add_process(sink.process)
    sim.add_testbench(body)
    sim.run()


def test_output_fifos_hold_each_cores_outputs_for_the_host():
    cores, lanes = 3, 2
    dut = OutputFifos(cores=cores, lanes=lanes, spike_depth=8, error_depth=4)
    rng = random.Random(9)

    async def body(ctx):
        sent = {k: [] for k in range(cores)}
        for k in range(cores):
            for j in range(k + 2):
                ctx.set(dut.spk[k].payload, {"index": 10 * k + j, "spike": 1, "last": j == k + 1})
                ctx.set(dut.err[k].payload, {"value": 1000 * k + j, "last": 0})
                ctx.set(dut.spk[k].valid, 1)
                ctx.set(dut.err[k].valid, j < 2)
                await ctx.tick()
                sent[k].append(p.event_word(10 * k + j, last=j == k + 1))
            ctx.set(dut.spk[k].valid, 0)
            ctx.set(dut.err[k].valid, 0)
        await ctx.tick()
        for k in reversed(range(cores)):
            ctx.set(dut.sel, k)
            assert (ctx.get(dut.spikes_level), ctx.get(dut.errors_level)) == (k + 2, 2)
            got = [await take(ctx, dut.spikes_out, rng) for _ in range(k + 2)]
            assert got == sent[k]
            assert [await take(ctx, dut.errors_out, rng) for _ in range(2)] == [
                1000 * k, 1000 * k + 1]
            assert not ctx.get(dut.spikes_out.valid) and not ctx.get(dut.errors_out.valid)

    simulate(dut, bench=body)
