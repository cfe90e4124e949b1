# SPDX-License-Identifier: Apache-2.0
import pytest
from amaranth.hdl import Shape
from amaranth.lib import enum
from hypothesis import given
from hypothesis import strategies as st

from spikeforge import protocol as p
from spikeforge.protocol import (
    MAX_PAYLOAD,
    FrameError,
    Link,
    Opcode,
    QkReg,
    Reply,
    ReplyDecoder,
    SocReg,
    Status,
    command_header,
    decode_command,
    encode_command,
    encode_reply,
    reply_header,
)

words = st.lists(st.integers(0, 0xFFFF), max_size=MAX_PAYLOAD // 2)
commands = st.tuples(st.integers(0, 255), st.sampled_from(list(Opcode)), st.integers(0, 255),
                     st.integers(0, 2 ** 32 - 1), words)


@given(commands)
def test_command_round_trip(cmd):
    seq, opcode, core, address, payload = cmd
    decoded = decode_command(encode_command(seq, opcode, core, address, payload))
    assert decoded == (seq, opcode, core, address, tuple(payload))


@given(commands, st.data())
def test_any_corrupted_byte_is_caught(cmd, data):
    frame = bytearray(encode_command(*cmd))
    pos = data.draw(st.integers(1, len(frame) - 1))
    frame[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(FrameError) as error:
        decode_command(bytes(frame))
    assert error.value.status in (Status.BAD_CRC, Status.BAD_LENGTH)


def test_unknown_opcode_and_truncation():
    frame = bytearray(encode_command(1, Opcode.READ, 0, 0, [1]))
    frame[2] = 0x7F
    from spikeforge.protocol import crc16
    frame[-2:] = crc16(bytes(frame[1:-2])).to_bytes(2, "little")
    with pytest.raises(FrameError, match="unknown opcode 0x7f") as error:
        decode_command(bytes(frame))
    assert error.value.status == Status.BAD_OPCODE
    with pytest.raises(FrameError) as error:
        decode_command(encode_command(1, Opcode.READ, 0, 0, [1])[:-3])
    assert error.value.status == Status.BAD_LENGTH


@pytest.mark.parametrize("kwargs, message", [
    ({"seq": 256}, r"seq must be between 0 and 255, not 256"),
    ({"core": -1}, r"core must be between 0 and 255, not -1"),
    ({"address": 2 ** 32}, r"address must be between 0 and 4294967295"),
    ({"payload": [0] * (MAX_PAYLOAD // 2 + 1)}, r"payload must be at most 512 words"),
    ({"payload": [70000]}, r"payload words must be between 0 and 65535"),
])
def test_encode_checks_fields(kwargs, message):
    args = {"seq": 0, "opcode": Opcode.READ, "core": 0, "address": 0, "payload": (), **kwargs}
    with pytest.raises(ValueError, match=message):
        encode_command(**args)


@given(st.lists(st.tuples(st.integers(0, 255), st.sampled_from(list(Status)), words),
                max_size=5),
       st.binary(max_size=64), st.integers(1, 17))
def test_reply_decoder_resynchronises(replies, garbage, chunk):
    stream = garbage.replace(b"\x5a", b"\x00")
    for seq, status, payload in replies:
        stream += encode_reply(seq, status, payload)
    decoder = ReplyDecoder()
    got = []
    for i in range(0, len(stream), chunk):
        got += decoder.feed(stream[i:i + chunk])
    assert got == [Reply(seq, status, tuple(payload)) for seq, status, payload in replies]


def test_reply_decoder_drops_corrupt_reply_and_keeps_next():
    bad = bytearray(encode_reply(1, Status.OK, [1, 2, 3]))
    bad[6] ^= 0xFF
    good = encode_reply(2, Status.BUSY)
    decoder = ReplyDecoder()
    assert decoder.feed(bytes(bad) + good) == [Reply(2, Status.BUSY, ())]
    assert decoder.dropped > 0


def test_gateware_widths_follow_the_enums():
    assert command_header()["opcode"].shape is Opcode and reply_header()["status"].shape is Status
    assert Shape.cast(Opcode).width == 8 and Shape.cast(SocReg).width == 32
    assert p.LINK_BITS == p.link_bits(Link) == 3
    grown_links = enum.IntFlag("Links", {**{f.name: int(f) for f in Link}, "EXTRA": 8})
    assert p.link_bits(grown_links) == 4
    grown_regs = enum.IntEnum("QkRegs", {**{r.name: int(r) for r in QkReg}, "EXTRA": 8})
    assert [(f, p.qk_address_layout(5, regs)[f].width) for regs in (QkReg, grown_regs)
            for f in ("reg", "unit")] == [("reg", 3), ("unit", 3), ("reg", 4), ("unit", 3)]
    assert p.qk_unit_layout().size == 16 * p.QK_REGS and p.qk_unit_layout(grown_regs).size == 144
    assert (p.EVENT_INDEX, p.EVENT_SPIKE, p.EVENT_LAST) == (0x3FFF, 0x4000, 0x8000)

    class Wide(enum.IntEnum, shape=9):
        NEW = 0x100

    with pytest.raises(ValueError, match=r"^A frame's opcode is 8 bits wide, so Wide must be too, "
                                         r"not 9$"):
        command_header(Wide)
