# SPDX-License-Identifier: Apache-2.0
import random

import pytest
from amaranth.hdl import Module

from spikeforge.errors import ConfigError
from spikeforge.hw.uart import (
    MAX_RATE_ERROR,
    MIN_DIVISOR,
    UARTRx,
    UARTTx,
    baud_divisor,
    rate_error,
    rx_tolerance,
)
from spikeforge.tb.amaranth import put, simulate, simulator
from spikeforge.tb.serial import drive_line, frame_bits, line_levels, line_segments, read_line

DIVISORS = [4, 7, 16]


async def send(ctx, stream, data, rng, divisor):
    for byte in data:
        if rng.random() < 0.5:
            await ctx.tick().repeat(rng.randrange(1, 3 * divisor))
        await put(ctx, stream, byte)


async def receive(ctx, stream, count, rng=None, limit=1 << 17):
    got = []
    for _ in range(limit):
        if len(got) == count:
            break
        ready = rng is None or rng.random() < 0.5
        ctx.set(stream.ready, ready)
        _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload)
        if valid and ready:
            got.append(payload)
    assert len(got) == count, f"{len(got)} of {count} bytes in {limit} cycles: {got}"
    ctx.set(stream.ready, 0)
    return got


async def receive_all(ctx, rx, data, divisor, rng=None, framing_errors=0):
    """Take ``data`` from ``rx``; then nothing more comes, and no overrun happened."""
    assert await receive(ctx, rx.o, len(data), rng) == data
    await ctx.tick().repeat(12 * divisor)
    assert not ctx.get(rx.o.valid)
    assert ctx.get(rx.o_framing_errors) == framing_errors
    assert ctx.get(rx.o_overruns) == 0


def decode(wave, divisor):
    """(first cycle, byte) of each frame on ``wave``; each bit must last exactly ``divisor``."""
    frames, c = [], 1
    while c < len(wave):
        if wave[c - 1] == 1 and wave[c] == 0:
            cycles = wave[c:c + 10 * divisor]
            bits = cycles[::divisor]
            assert len(cycles) == 10 * divisor, f"frame at {c} cut short"
            assert cycles == [b for b in bits for _ in range(divisor)], f"bit lengths at {c}"
            assert bits[0] == 0 and bits[9] == 1, f"frame at {c}: {bits}"
            frames.append((c, sum(b << k for k, b in enumerate(bits[1:9]))))
            c += 10 * divisor
        else:
            c += 1
    return frames


@pytest.mark.parametrize("unit", [UARTTx, UARTRx])
@pytest.mark.parametrize("divisor", [3, 0, -8, 4.0, True, "8"])
def test_divisor_checked(unit, divisor):
    with pytest.raises(ValueError, match=r"^UART divisor must be an integer of at least 4 clock "
                                         r"cycles per bit \(the receiver samples in the middle "
                                         rf"of a bit\), not {divisor!r}$"):
        unit(divisor)


@pytest.mark.parametrize("divisor", DIVISORS)
def test_tx_waveform(divisor):
    dut = UARTTx(divisor)
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA, 0x01, 0x80] + [rng.randrange(256) for _ in range(24)]
    wave, taken = [], []

    async def record(ctx):
        async for _, _, tx, transfer in ctx.tick().sample(dut.tx, dut.i.valid & dut.i.ready):
            if transfer:
                taken.append(len(wave))
            wave.append(tx)

    async def testbench(ctx):
        await send(ctx, dut.i, data, rng, divisor)
        await ctx.tick().repeat(10 * divisor + 4)
        expected = [(t + dut.latency, b) for t, b in zip(taken, data, strict=True)]
        assert decode(wave, divisor) == expected
        assert wave[0] == 1 and wave[-1] == 1

    simulate(dut, testbench, background=[record])


@pytest.mark.parametrize("mismatch", [-0.02, 0.0, 0.02])
@pytest.mark.parametrize("divisor", DIVISORS)
def test_rx_from_model(divisor, mismatch):
    dut = UARTRx(divisor)
    rng = random.Random(divisor * 100 + round(mismatch * 100))
    data = [0x00, 0xFF, 0x55, 0xAA] + [rng.randrange(256) for _ in range(26)]
    gaps = [rng.choice([0, 0, 0.3, 1, 2.5]) for _ in data]
    wave = line_levels(line_segments([frame_bits(b) for b in data], divisor * (1 + mismatch), gaps))

    async def sender(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def sink(ctx):
        await receive_all(ctx, dut, data, divisor)

    simulate(dut, sender, sink)


@pytest.mark.parametrize("divisor", DIVISORS)
def test_rx_latency(divisor):
    dut = UARTRx(divisor)

    async def sender(ctx):
        await ctx.tick().repeat(5)
        for bit in frame_bits(0x5A):
            ctx.set(dut.rx, bit)
            await ctx.tick().repeat(divisor)

    async def sink(ctx):
        ticks = 0
        while True:
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            ticks += 1
            if valid:
                break
        assert payload == 0x5A
        assert ticks == 6 + dut.latency

    simulate(dut, sender, sink)


@pytest.mark.parametrize("divisor", DIVISORS)
def test_rx_framing_error(divisor):
    dut = UARTRx(divisor)
    segments = [(1, 2 * divisor), *((b, divisor) for b in frame_bits(0x3C)),
                *((b, divisor) for b in frame_bits(0xA5, stop=0)), (1, divisor),
                (0, 1), (1, 2 * divisor),
                (0, 25 * divisor), (1, divisor),
                *((b, divisor) for b in frame_bits(0xC3)), (1, 3 * divisor)]
    wave = line_levels(segments)

    async def sender(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def sink(ctx):
        await receive_all(ctx, dut, [0x3C, 0xC3], divisor, framing_errors=2)

    simulate(dut, sender, sink)


@pytest.mark.parametrize("divisor", DIVISORS)
def test_rx_overrun(divisor):
    dut = UARTRx(divisor)
    wave = line_levels(line_segments([frame_bits(b) for b in (0x11, 0x22, 0x33)], divisor,
                                     [0, 0, 0]))
    last = line_levels(line_segments([frame_bits(0x44)], divisor, [0]))

    async def testbench(ctx):
        await drive_line(ctx, dut.rx, wave)
        assert ctx.get(dut.o.valid) and ctx.get(dut.o.payload) == 0x11
        assert ctx.get(dut.o_overruns) == 2
        assert await receive(ctx, dut.o, 1) == [0x11]
        await ctx.tick()
        assert not ctx.get(dut.o.valid)
        await drive_line(ctx, dut.rx, last)
        assert await receive(ctx, dut.o, 1) == [0x44]
        assert ctx.get(dut.o_overruns) == 2
        assert ctx.get(dut.o_framing_errors) == 0

    simulate(dut, testbench)


@pytest.mark.parametrize("backpressure", [False, True], ids=["ready", "random_ready"])
@pytest.mark.parametrize("divisor", DIVISORS)
def test_tx_to_rx(divisor, backpressure):
    m = Module()
    m.submodules.tx = tx = UARTTx(divisor)
    m.submodules.rx = rx = UARTRx(divisor)
    m.d.comb += rx.rx.eq(tx.tx)
    rng = random.Random(divisor + 1000 * backpressure)
    data = [rng.randrange(256) for _ in range(200)]

    async def source(ctx):
        await send(ctx, tx.i, data, rng, divisor)

    async def sink(ctx):
        await receive_all(ctx, rx, data, divisor, random.Random(divisor) if backpressure else None)

    simulate(m, source, sink)


def rx_back_to_back(divisor, mismatch, count=64):
    """What :class:`UARTRx` at ``divisor`` receives of ``count`` bytes sent back to back by a
    sender whose bits are ``mismatch`` longer (negative: shorter)."""
    dut = UARTRx(divisor)
    rng = random.Random(divisor)
    data = [0x00, 0xFF, 0x55, 0xAA, 0x80, 0x01] + [rng.randrange(256) for _ in range(count - 6)]
    wave = line_levels(line_segments([frame_bits(b) for b in data], divisor * (1 + mismatch),
                                     [0] * len(data)))
    got = []

    async def sender(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def sink(ctx):
        ctx.set(dut.o.ready, 1)
        async for _, _, valid, payload in ctx.tick().sample(dut.o.valid, dut.o.payload):
            if valid:
                got.append(payload)

    sim = simulator(dut, sender, background=[sink])
    sim.run()
    return data, got


LINK_DIVISORS = [MIN_DIVISOR, 16, 17, 33]    # the smallest a build allows; 3 Mbaud at 48, 50, 100


@pytest.mark.parametrize("mismatch", [-MAX_RATE_ERROR, MAX_RATE_ERROR])
@pytest.mark.parametrize("divisor", LINK_DIVISORS)
def test_rx_at_the_allowed_rate_error(divisor, mismatch):
    data, got = rx_back_to_back(divisor, mismatch)
    assert got == data


@pytest.mark.parametrize("side", [0, 1], ids=["fast", "slow"])
@pytest.mark.parametrize("divisor", [4, MIN_DIVISOR, 17])
def test_rx_tolerance_is_the_receivers(divisor, side):
    edge = rx_tolerance(divisor)[side] * (1 if side else -1)
    for mismatch, fits in ((0.95 * edge, True), (edge + (0.01 if side else -0.01), False)):
        data, got = rx_back_to_back(divisor, mismatch)
        assert (got == data) == fits, (mismatch, got)


@pytest.mark.parametrize("mismatch", [-MAX_RATE_ERROR, 0.0, MAX_RATE_ERROR, -0.06, 0.06])
@pytest.mark.parametrize("divisor", LINK_DIVISORS)
def test_tx_back_to_back_to_an_offset_receiver(divisor, mismatch):
    dut = UARTTx(divisor)
    rng = random.Random(divisor)
    data = [rng.randrange(256) for _ in range(64)]
    wave = []

    async def record(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            wave.append(tx)

    async def testbench(ctx):
        for byte in data:
            await put(ctx, dut.i, byte)
        await ctx.tick().repeat(11 * divisor)

    simulate(dut, testbench, background=[record])
    frames = decode(wave, divisor)
    assert [b for _, b in frames] == data
    starts = [c for c, _ in frames]
    assert all(b - a == 10 * divisor for a, b in zip(starts, starts[1:], strict=False))
    got = read_line(wave, divisor * (1 + mismatch))
    assert (got == data) == (abs(mismatch) <= MAX_RATE_ERROR)


@pytest.mark.parametrize("mhz, baud, divisor", [
    (50, 3_000_000, 17), (48, 3_000_000, 16), (100, 3_000_000, 33), (48, 1_000_000, 48),
    (50, 115_200, 434), (48, 115_200, 417)])
def test_baud_divisor(mhz, baud, divisor):
    assert baud_divisor(mhz, baud) == divisor
    assert abs(rate_error(mhz, baud)) <= MAX_RATE_ERROR


@pytest.mark.parametrize("mhz, baud, message", [
    (50, 3_500_000, r"^3,500,000 baud at 50 MHz: the nearest divisor, 14, makes 3,571,429 "
                    r"baud, 2.04% off, more than 2%; build with --baud 3000000 or at --mhz 49$"),
    (50, 8_000_000, r"^8,000,000 baud at 50 MHz: 6.2 clock cycles a bit, fewer than the 8 the "
                    r"receiver needs; build with --baud 3000000 or at --mhz 64$"),
    (25, 3_000_000, r"^3,000,000 baud at 25 MHz: the nearest divisor, 8, makes 3,125,000 baud, "
                    r"4.17% off, more than 2%; build with --baud 1500000 or at --mhz 24$"),
    (50, 0, r"^the baud rate must be a positive integer, not 0$"),
])
def test_baud_divisor_refuses(mhz, baud, message):
    with pytest.raises(ConfigError, match=message):
        baud_divisor(mhz, baud)
