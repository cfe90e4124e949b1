# SPDX-License-Identifier: Apache-2.0
"""The SoC behind the UART in Amaranth's simulator: round trips against the byte-time model, and
a host whose clock is off."""

import pytest

from spikeforge.bench import (
    link_cycles,
    link_frame_bytes,
    link_frame_cycles,
    link_frames_per_s,
)
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.hw.uart import MAX_RATE_ERROR, MIN_DIVISOR, rx_tolerance
from spikeforge.protocol import Opcode, ReplyDecoder, Status, encode_command, reply_size
from spikeforge.regmap import Region, address
from spikeforge.tb.amaranth import simulate
from spikeforge.tb.serial import (
    UARTSoC,
    drive_line,
    frame_bits,
    line_levels,
    line_segments,
    read_line,
)


def test_the_byte_time_model():
    assert link_frame_bytes(Opcode.WRITE, 64) == (140, 7)
    assert link_frame_bytes(Opcode.READ, 64) == (14, 135)
    assert link_frames_per_s(3_000_000, Opcode.WRITE, 64) == pytest.approx(3e6 / 1470)
    assert link_frames_per_s(115_200, Opcode.READ, 64) == pytest.approx(115_200 / 1490)
    with pytest.raises(ValueError, match="READ or WRITE, not"):
        link_frame_bytes(Opcode.IDENTIFY, 0)


@pytest.mark.parametrize("opcode", [Opcode.WRITE, Opcode.READ])
def test_a_round_trip_at_the_smallest_divisor(opcode):
    trip = link_frame_cycles(MIN_DIVISOR, opcode, 8)
    assert trip["model_cycles"] == 10 * MIN_DIVISOR * sum(link_frame_bytes(opcode, 8))
    assert trip["model_cycles"] < trip["cycles"] < trip["model_cycles"] + 20 * MIN_DIVISOR


@pytest.mark.parametrize("opcode", [Opcode.WRITE, Opcode.READ])
def test_a_round_trip_is_the_uarts_and_the_turnaround(opcode):
    trips = [link_frame_cycles(d, opcode, 8) for d in (MIN_DIVISOR, MIN_DIVISOR + 1)]
    assert trips[0]["turnaround"] == trips[1]["turnaround"]
    for d, trip in zip((MIN_DIVISOR, MIN_DIVISOR + 1), trips, strict=True):
        assert trip["reply_gaps"] == 0
        assert trip["cycles"] == link_cycles(d, trip["command_bytes"], trip["reply_bytes"],
                                             trip["turnaround"])


def talk_to_the_soc(divisor, mismatch):
    """The replies of the SoC behind UARTs at ``divisor`` to a ``WRITE`` and a ``READ`` of 8
    words from a host whose bits are ``mismatch`` longer, each command's bytes back to back,
    read by the host at its own bit time."""
    config = AcceleratorConfig(cores=1, neurons=8, fan_in=8, lanes=1, timesteps=4)
    dut = UARTSoC(config, divisor)
    base = address(Region.WEIGHT, 0)
    data = [0x3C00, 0xFFFF, 0x0001, 0x8000, 0x5555, 0xAAAA, 0x00FF, 0x7BFF]
    commands = [encode_command(1, Opcode.WRITE, 0, base, data),
                encode_command(2, Opcode.READ, 0, base, [len(data)])]
    frames, gaps = [], []
    for command, reply in zip(commands, (reply_size(0), reply_size(len(data))), strict=True):
        frames += [frame_bits(b) for b in command]
        gaps += [0] * (len(command) - 1) + [10 * reply + 40]
    wave = line_levels(line_segments(frames, divisor * (1 + mismatch), gaps))
    line = []

    async def host(ctx):
        await drive_line(ctx, dut.rx, wave)

    async def record(ctx):
        async for _, _, tx in ctx.tick().sample(dut.tx):
            line.append(tx)

    simulate(dut, host, background=[record])
    replies = ReplyDecoder().feed(bytes(read_line(line, divisor * (1 + mismatch))))
    return replies, data


@pytest.mark.parametrize("mismatch", [-MAX_RATE_ERROR, MAX_RATE_ERROR])
def test_the_soc_behind_the_uart_with_the_host_off_by_the_allowed_error(mismatch):
    replies, data = talk_to_the_soc(MIN_DIVISOR, mismatch)
    assert [(r.seq, r.status) for r in replies] == [(1, Status.OK), (2, Status.OK)]
    assert list(replies[1].payload) == data


def test_the_soc_behind_the_uart_with_the_host_too_fast():
    replies, data = talk_to_the_soc(MIN_DIVISOR, -rx_tolerance(MIN_DIVISOR)[0] - 0.01)
    assert [(r.seq, r.status, r.payload) for r in replies] != [(1, Status.OK, ()),
                                                               (2, Status.OK, tuple(data))]
