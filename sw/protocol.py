# SPDX-License-Identifier: Apache-2.0
"""The host link's frames: one definition for the gateware parser, the driver and the testbenches.

Every command is one frame from the host; the device answers every frame with one reply. All
multi-byte fields are little-endian; the CRC is CRC-16/CCITT-FALSE (polynomial 0x1021, initial
value 0xFFFF, as :func:`binascii.crc_hqx` computes it) over every byte after the sync byte.

Command frame::

    0xA5 | seq | opcode | core | address (4) | length (2) | payload (length) | crc (2)

Reply frame::

    0x5A | seq | status | length (2) | payload (length) | crc (2)

``length`` counts payload bytes, at most :data:`MAX_PAYLOAD`, and is even (payloads are 16-bit
words). ``core`` is a core's index, :data:`BROADCAST` (a ``WRITE`` to every core) or
:data:`SOC` (the link's own registers, :class:`SocReg`).

What each opcode carries:

==============  ====================================  ==========================================
opcode          command payload                       reply payload
==============  ====================================  ==========================================
``IDENTIFY``    none                                  :data:`IDENTITY` words
``READ``        one word: ``count``, 1 .. 512         ``count`` words from ``address`` on
``WRITE``       words for ``address``, ``address+1``  none; all are checked before any is written
``SPIKES_IN``   event words (:func:`event_word`)     none
``SPIKES_OUT``  one word: the most words wanted       the output events waiting, at most that many
``ERRORS_IN``   beats of ``lanes`` binary16 words     none
``ERRORS_OUT``  one word: the most beats wanted       the input-error beats waiting, ``lanes`` words
                                                      each
==============  ====================================  ==========================================

For ``ERRORS_IN``, ``address`` is the number of beats in a timestep: the payload holds whole
timesteps, and the last beat of each closes its timestep. A core's output FIFO holds one whole
sample, so a host that reads a sample's outputs before it sends the next never stalls a core;
a stream that stalls anyway is abandoned after a time-out (:attr:`Status.TIMEOUT`).

The device executes a frame at most once: a frame whose ``seq`` equals that of the frame
it executed last is answered with the stored reply and not executed again, so the host may
resend a frame whose reply it lost. A frame with a bad CRC, length, opcode, core or address
changes nothing and is answered with the matching :class:`Status`; bytes that are not a frame's
start are skipped until the next sync byte.

The gateware takes its shapes from here: the enumerations are :mod:`amaranth.lib.enum`'s, with
``shape=`` where the frame fixes the width (:class:`Opcode`, :class:`Status`: a byte;
:class:`SocReg`: an address), and as wide as their members need where the width follows them
(:class:`QkReg` in :func:`qk_address_layout`, :class:`Link` in :func:`link_bits`); the frame
headers, event words and Q-K registers are layouts (:func:`command_header`,
:func:`reply_header`, :data:`EVENT_WORD`, :func:`qk_unit_layout`).

>>> frame = encode_command(7, Opcode.WRITE, 0, 0x10000003, [0x3C00])
>>> frame.hex()
'a5070300030000100200003ce59a'
>>> decode_command(frame)
Command(seq=7, opcode=<Opcode.WRITE: 3>, core=0, address=268435459, payload=(15360,))
"""

import binascii
import struct
from typing import NamedTuple

from amaranth.hdl import Shape
from amaranth.lib import data, enum

__all__ = [
    "BROADCAST", "COMMAND_SYNC", "EVENT_INDEX", "EVENT_LAST", "EVENT_SPIKE", "EVENT_WORD",
    "IDENTITY", "LINK_BITS", "MAX_PAYLOAD", "QK_REGS", "MAX_WORDS", "REPLY_SYNC", "SOC", "VERSION",
    "Command", "FrameError", "Link", "Opcode", "QkReg", "Reply", "ReplyDecoder", "SocReg",
    "Status", "command_header", "command_size", "crc16", "decode_command", "encode_command",
    "encode_reply", "reply_size",
    "event_word", "link_bits", "qk_address_layout", "qk_unit_layout", "reply_header",
]

COMMAND_SYNC = 0xA5
REPLY_SYNC = 0x5A
MAX_PAYLOAD = 1024
MAX_WORDS = MAX_PAYLOAD // 2
BROADCAST = 0xFF
SOC = 0xFE
VERSION = 6          # 2: Link.SPLIT, SocReg.ACTIVE_CYCLES; 3: Reg.IN_TOKENS, IN_STRIDE;
#                      4: Reg.SHORTCUT, Q-K units (SocReg.QK, identity qk_units);
#                      5: identity qk_tokens, SocReg.QK_CYCLES; 6: identity baud_100
# baud_100: the rate the board's UART was built for, in hundreds of baud (at most 0xFFFF);
# 0 where the link is no UART (the virtual board).
IDENTITY = ("version", "cores", "lanes", "neurons", "fan_in", "timesteps", "reset",
            "detach_reset", "surrogate", "out_fifo", "max_words", "qk_units", "qk_tokens",
            "baud_100")
EVENT_WORD = data.StructLayout({"index": 14, "spike": 1, "last": 1})   # a spike event word
EVENT_SPIKE = 1 << EVENT_WORD["spike"].offset
EVENT_LAST = 1 << EVENT_WORD["last"].offset
EVENT_INDEX = (1 << EVENT_WORD["index"].width) - 1
COMMAND_HEADER = struct.Struct("<BBBBIH")    # sync, seq, opcode, core, address, length
REPLY_HEADER = struct.Struct("<BBBH")        # sync, seq, status, length


class Opcode(enum.IntEnum, shape=8):
    IDENTIFY = 0x01      # reply: configuration words (see the driver)
    READ = 0x02          # payload: one word, the number of words to read from ``address`` on
    WRITE = 0x03         # payload: words written to ``address``, ``address + 1``, ...
    SPIKES_IN = 0x04     # payload: input spike event words for the core's FP engine
    SPIKES_OUT = 0x05    # reply: the output spike event words the core has produced
    ERRORS_IN = 0x06     # payload: output-spike error beats for the core's BP engine
    ERRORS_OUT = 0x07    # reply: the input-error beats the core has produced


class SocReg(enum.IntEnum, shape=32):
    """Registers of core :data:`SOC`: the link's counters (low then high half) and routing,
    at a frame's ``address``."""

    RX_BYTES = 0         # bytes received (2 words)
    TX_BYTES = 2         # bytes sent (2 words)
    FRAMES = 4           # frames executed (2 words)
    BAD_FRAMES = 6       # frames answered with an error status (2 words)
    ACTIVE_CYCLES = 8    # cycles in which a core worked: busy, not waiting for input (2 words)
    QK_CYCLES = 10       # cycles in which a Q-K unit worked, summed over the units (2 words)
    LINK = 0x100         # LINK + c: core c's routing, :class:`Link` bits (read and write)
    QK = 0x200           # QK + 8·u + QkReg: Q-K unit u's configuration (read and write)


class QkReg(enum.IntEnum):
    """A Q-K unit's registers (``SocReg.QK + 8·u + r``), as the cores' (binary16 constants)."""

    KIND = 0             # 0: token attention, 1: channel attention
    TOKENS = 1           # tokens a timestep, 1 .. the unit's maximum (the config's timesteps)
    CHANNELS = 2         # channels D, a multiple of lanes, 1 .. neurons / 2
    TIMESTEPS = 3        # timesteps a sample (not steps), 1 .. the config's timesteps
    V_TH = 4             # the attention neurons' LIF constants
    V_RESET = 5
    INV_TAU = 6
    DECAY = 7


QK_REGS = len(QkReg)
assert QK_REGS == 1 << Shape.cast(QkReg).width, "the Q-K registers fill their address field"


def qk_unit_layout(regs: type = QkReg) -> data.StructLayout:
    """A Q-K unit's registers, one binary16 word each, in the order of ``regs``."""
    assert [int(r) for r in regs] == list(range(len(regs)))
    return data.StructLayout({r.name.lower(): 16 for r in regs})


def qk_address_layout(units: int, regs: type = QkReg) -> data.StructLayout:
    """A Q-K register's address less ``SocReg.QK``: its register and its unit's index."""
    return data.StructLayout({"reg": regs, "unit": range(max(units, 2))})


class Link(enum.IntFlag):
    FP_TO_NEXT = 1       # core c's output spikes go to core c + 1's input, not to the host
    BP_TO_PREV = 2       # core c's input errors go to core c - 1's output errors, not the host
    SPLIT = 4            # core c holds the lower neurons of core c - 1's layer: it takes core
    #                      c - 1's input spikes too, puts core c - 1's output spikes after its
    #                      own, passes core c - 1's share of the errors on, and its partial
    #                      sums Wᵀ·δ go to core c - 1 (Reg.PARTIAL_IN), which finishes them


def link_bits(flags: type = Link) -> int:
    """The bits of a core's routing register: as many as the flags of ``flags`` need."""
    return Shape.cast(flags).width


LINK_BITS = link_bits()


def event_word(index: int, spike: bool = True, last: bool = False) -> int:
    """The 16-bit word of a spike event (``SPIKES_IN`` / ``SPIKES_OUT``).

    >>> hex(event_word(5)), hex(event_word(0, spike=False, last=True))
    ('0x4005', '0x8000')
    """
    if not 0 <= index <= EVENT_INDEX:
        raise ValueError(f"event index must be between 0 and {EVENT_INDEX}, not {index!r}")
    return index | EVENT_SPIKE * bool(spike) | EVENT_LAST * bool(last)


class Status(enum.IntEnum, shape=8):
    OK = 0
    BAD_CRC = 1
    BAD_LENGTH = 2
    BAD_OPCODE = 3
    BAD_CORE = 4
    BAD_ADDRESS = 5
    BUSY = 6
    TIMEOUT = 7


def _header_layout(header: struct.Struct, fields: dict) -> data.StructLayout:
    codes = header.format.lstrip("<")
    assert len(codes) == 1 + len(fields) and struct.calcsize(codes[0]) == 1
    layout = {}
    for (name, shape), code in zip(fields.items(), codes[1:], strict=True):
        bits = 8 * struct.calcsize(code)
        if shape is not None and Shape.cast(shape).width != bits:
            raise ValueError(f"A frame's {name} is {bits} bits wide, so {shape.__name__} must be "
                             f"too, not {Shape.cast(shape).width}")
        layout[name] = bits if shape is None else shape
    return data.StructLayout(layout)


def command_header(opcodes: type = Opcode) -> data.StructLayout:
    """A command frame's header after its sync byte, its fields in the order of their bytes."""
    return _header_layout(COMMAND_HEADER, {"seq": None, "opcode": opcodes, "core": None,
                                           "address": None, "length": None})


def reply_header(statuses: type = Status) -> data.StructLayout:
    """A reply frame's header after its sync byte, its fields in the order of their bytes."""
    return _header_layout(REPLY_HEADER, {"seq": None, "status": statuses, "length": None})


class FrameError(ValueError):
    """A byte string is not a well-formed frame; ``status`` says what is wrong with it."""

    def __init__(self, status: Status, message: str):
        super().__init__(message)
        self.status = status


class Command(NamedTuple):
    seq: int
    opcode: Opcode
    core: int
    address: int
    payload: tuple


class Reply(NamedTuple):
    seq: int
    status: Status
    payload: tuple


def crc16(data: bytes) -> int:
    """CRC-16/CCITT-FALSE of ``data``.

    >>> hex(crc16(b"123456789"))
    '0x29b1'
    """
    return binascii.crc_hqx(data, 0xFFFF)


def command_size(words: int) -> int:
    """The bytes of a command frame with ``words`` payload words.

    >>> command_size(64), command_size(1)
    (140, 14)
    """
    return COMMAND_HEADER.size + 2 * words + 2


def reply_size(words: int) -> int:
    """The bytes of a reply frame with ``words`` payload words.

    >>> reply_size(0), reply_size(64)
    (7, 135)
    """
    return REPLY_HEADER.size + 2 * words + 2


def _words(payload) -> bytes:
    payload = list(payload)
    if len(payload) * 2 > MAX_PAYLOAD:
        raise ValueError(f"payload must be at most {MAX_PAYLOAD // 2} words, "
                         f"not {len(payload)}")
    if any(not 0 <= w < 1 << 16 for w in payload):
        raise ValueError("payload words must be between 0 and 65535")
    return struct.pack(f"<{len(payload)}H", *payload)


def encode_command(seq: int, opcode: Opcode, core: int, address: int, payload=()) -> bytes:
    """The bytes of a command frame."""
    for name, value, limit in (("seq", seq, 1 << 8), ("core", core, 1 << 8),
                               ("address", address, 1 << 32), ("opcode", int(opcode), 1 << 8)):
        if not 0 <= value < limit:
            raise ValueError(f"{name} must be between 0 and {limit - 1}, not {value!r}")
    body = _words(payload)
    frame = COMMAND_HEADER.pack(COMMAND_SYNC, seq, int(opcode), core, address, len(body)) + body
    return frame + struct.pack("<H", crc16(frame[1:]))


def decode_command(frame: bytes) -> Command:
    """Parse one whole command frame; raise :class:`FrameError` as the device would answer."""
    if len(frame) < COMMAND_HEADER.size + 2 or frame[0] != COMMAND_SYNC:
        raise FrameError(Status.BAD_LENGTH, "not a whole command frame")
    _, seq, opcode, core, address, length = COMMAND_HEADER.unpack_from(frame)
    if length > MAX_PAYLOAD or length % 2 or len(frame) != COMMAND_HEADER.size + length + 2:
        raise FrameError(Status.BAD_LENGTH, f"payload length {length} does not fit the frame")
    (crc,) = struct.unpack_from("<H", frame, len(frame) - 2)
    if crc != crc16(frame[1:-2]):
        raise FrameError(Status.BAD_CRC, "CRC mismatch")
    if opcode not in Opcode.__members__.values():
        raise FrameError(Status.BAD_OPCODE, f"unknown opcode {opcode:#04x}")
    payload = struct.unpack_from(f"<{length // 2}H", frame, COMMAND_HEADER.size)
    return Command(seq, Opcode(opcode), core, address, payload)


def encode_reply(seq: int, status: Status, payload=()) -> bytes:
    """The bytes of a reply frame."""
    body = _words(payload)
    frame = REPLY_HEADER.pack(REPLY_SYNC, seq, int(status), len(body)) + body
    return frame + struct.pack("<H", crc16(frame[1:]))


class ReplyDecoder:
    """Incremental reply parser: feed it bytes, take whole replies.

    Bytes before a sync byte, and replies whose length or CRC is wrong, are dropped (and
    counted in ``dropped``), so that a host resynchronises on a noisy link.
    """

    def __init__(self):
        self._buffer = bytearray()
        self.dropped = 0

    def feed(self, data: bytes) -> list[Reply]:
        self._buffer += data
        replies = []
        while True:
            start = self._buffer.find(REPLY_SYNC)
            if start < 0:
                self.dropped += len(self._buffer)
                self._buffer.clear()
                return replies
            if start:
                self.dropped += start
                del self._buffer[:start]
            if len(self._buffer) < REPLY_HEADER.size:
                return replies
            _, seq, status, length = REPLY_HEADER.unpack_from(self._buffer)
            if length > MAX_PAYLOAD or length % 2 or status not in Status.__members__.values():
                self.dropped += 1
                del self._buffer[:1]
                continue
            size = REPLY_HEADER.size + length + 2
            if len(self._buffer) < size:
                return replies
            frame = bytes(self._buffer[:size])
            (crc,) = struct.unpack_from("<H", frame, size - 2)
            if crc != crc16(frame[1:-2]):
                self.dropped += 1
                del self._buffer[:1]
                continue
            del self._buffer[:size]
            payload = struct.unpack_from(f"<{length // 2}H", frame, REPLY_HEADER.size)
            replies.append(Reply(seq, Status(status), payload))
