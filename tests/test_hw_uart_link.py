# SPDX-License-Identifier: Apache-2.0
"""The SoC behind the UART in Amaranth's simulator: round trips against the byte-time model."""

import pytest

from spikeforge.bench import (
    link_cycles,
    link_frame_bytes,
    link_frame_cycles,
    link_frames_per_s,
)
from spikeforge.hw.uart import MIN_DIVISOR
from spikeforge.protocol import Opcode


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
