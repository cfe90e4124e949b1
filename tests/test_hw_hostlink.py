# SPDX-License-Identifier: Apache-2.0
import random

from amaranth.sim import Simulator

from spikeforge import protocol as p
from spikeforge.hw.hostlink import FrameReceiver, FrameTransmitter
from spikeforge.protocol import Opcode, Status


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
