# SPDX-License-Identifier: Apache-2.0
import gc
import random

import pytest
from amaranth.sim import Simulator

from spikeforge import protocol as p
from spikeforge.hw.hostlink import FrameReceiver, FrameTransmitter, SocRegisters
from spikeforge.protocol import Link, Opcode, QkReg, SocReg, Status


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


async def send_bytes(ctx, port, data, rng):
    for byte in data:
        while rng.random() < 0.3:
            ctx.set(port.valid, 0)
            await ctx.tick()
        ctx.set(port.payload, byte)
        ctx.set(port.valid, 1)
        await ctx.tick().until(port.ready)
    ctx.set(port.valid, 0)


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
            await send_bytes(ctx, dut.i, data, rng)
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
            for k, word in enumerate(payload):
                ctx.set(dut.wr_en, 1)
                ctx.set(dut.wr_addr, k)
                ctx.set(dut.wr_data, word)
                await ctx.tick()
            ctx.set(dut.wr_en, 0)
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
        assert ctx.get(dut.link) == 5 << p.LINK_BITS

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
        assert [(qk >> 16 * k) & 0xFFFF for k in range(2 * p.QK_REGS)] == [
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
                                         r"channels, timesteps\) between 1 and 65535, "
                                         r"not \(4, 0, 3\)$"):
        SocRegisters(cores=2, lanes=1, qk_units=1, qk_limits=(4, 0, 3))
    gc.collect()
