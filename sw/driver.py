# SPDX-License-Identifier: Apache-2.0
"""The host driver: a :class:`Board` speaking the frames of :mod:`spikeforge.protocol` over any
:class:`Transport`.

The same driver code serves a board on a serial port and the virtual board on a TCP socket; only
the URL given to :func:`open_transport` differs:

==================================  ===========================================================
URL                                 transport
==================================  ===========================================================
``tcp://HOST:PORT``                 :class:`TCPTransport` (the virtual board)
``serial:///dev/ttyUSB0?baud=N``    :class:`SerialTransport` on a device path
``/dev/ttyUSB0``, ``COM3``          the same, at the default baud rate
``loop://``, ``socket://``, ...     :class:`SerialTransport` on a pyserial URL
==================================  ===========================================================

Every command gets a fresh sequence number and waits for its reply. A reply that does not
come within ``timeout``, that fails its CRC (the link then quiet for :data:`SETTLE` seconds), or
that says the command's CRC failed
(:attr:`~spikeforge.protocol.Status.BAD_CRC`) makes the driver resend the *same* frame, sequence
number included, up to ``retries`` times: the device executes a frame at most once and answers a
repeated sequence number from its stored reply, so a retried command is never applied twice.

A session with the virtual board (``spikeforge board serve --port 7000``)::

    with Board.connect("tcp://127.0.0.1:7000") as board:
        board.write(0, address(Region.WEIGHT, 0), weights)
        assert board.read(0, address(Region.WEIGHT, 0), len(weights)) == weights
"""

import abc
import contextlib
import json
import random
import time
import urllib.parse
from collections.abc import Iterable, Sequence
from pathlib import Path

from .errors import ConfigError, SpikeforgeError
from .protocol import (
    IDENTITY,
    LINK_BITS,
    MAX_WORDS,
    QK_REGS,
    SOC,
    VERSION,
    Link,
    Opcode,
    Reply,
    ReplyDecoder,
    SocReg,
    Status,
    encode_command,
)
from .regmap import COUNTERS, Command, Reg, Region, address

__all__ = [
    "DEFAULT_BAUD", "Board", "BoardError", "BoardTimeout", "LinkError", "RecordingTransport",
    "ReplayTransport", "SerialTransport", "TCPTransport", "Transport", "link_throughput",
    "open_transport",
]

DEFAULT_BAUD = 115200
SETTLE = 0.1
LINK_COUNTERS = ("rx_bytes", "tx_bytes", "frames", "bad_frames", "active_cycles", "qk_cycles")

STATUS_MEANING = {
    Status.BAD_CRC: "the command's CRC did not match: the link corrupted it",
    Status.BAD_LENGTH: "the payload length does not suit the opcode",
    Status.BAD_OPCODE: "the device does not know this opcode",
    Status.BAD_CORE: "the device has no such core, or the core's input is linked to its "
                     "neighbour's",
    Status.BAD_ADDRESS: "an address or value is out of range, the region is read-only, or "
                        "the core is busy (writes wait until it is idle)",
    Status.BUSY: "the core is busy running an engine; wait until it is idle and retry",
    Status.TIMEOUT: "the core's stream stalled and the device abandoned it",
}


class LinkError(SpikeforgeError):
    """The link to a board failed: it cannot be opened, it closed, or the board answers
    nonsense."""


class BoardTimeout(LinkError):
    """A board stopped answering: a command got no valid reply after every retry."""


class BoardError(SpikeforgeError):
    """A board answered a command with an error status; the command changed nothing.

    Members
    -------
    status : Status
    opcode : Opcode
    core, address : int
    """

    def __init__(self, message: str, *, status: Status, opcode: Opcode, core: int,
                 address: int):
        super().__init__(message)
        self.status = status
        self.opcode = opcode
        self.core = core
        self.address = address


class Transport(abc.ABC):
    """A byte pipe to a device. ``url`` names it in messages."""

    url: str = "?"

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Send all of ``data``; raise :class:`LinkError` if the link is gone."""

    @abc.abstractmethod
    def read(self, timeout: float) -> bytes:
        """Return the bytes that arrive within ``timeout`` seconds (at least one), or ``b""``
        if none do; raise :class:`LinkError` if the link is gone."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the link; further reads and writes fail."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class TCPTransport(Transport):
    """A TCP connection, to the virtual board (``tcp://127.0.0.1:PORT``)."""

    def __init__(self, host: str, port: int, *, connect_timeout: float = 5.0):
        import socket

        self.url = f"tcp://{host}:{port}"
        try:
            self._socket = socket.create_connection((host, port), timeout=connect_timeout)
        except OSError as error:
            raise LinkError(f"cannot connect to {self.url} ({error}); is a virtual board "
                            f"serving there (spikeforge board serve --port {port})?") from None
        self._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def write(self, data: bytes) -> None:
        try:
            self._socket.sendall(data)
        except OSError as error:
            raise LinkError(f"the connection to {self.url} failed ({error})") from None

    def read(self, timeout: float) -> bytes:

        self._socket.settimeout(max(timeout, 0.0))
        try:
            data = self._socket.recv(1 << 16)
        except (TimeoutError, BlockingIOError):
            return b""
        except OSError as error:
            raise LinkError(f"the connection to {self.url} failed ({error})") from None
        if not data:
            raise LinkError(f"{self.url} closed the connection")
        return data

    def close(self) -> None:
        self._socket.close()


class SerialTransport(Transport):
    """A serial port or a pyserial URL (``/dev/ttyUSB0``, a pty path, ``loop://``, ...)."""

    def __init__(self, port: str, *, baudrate: int = DEFAULT_BAUD):
        import serial

        self.url = port
        try:
            self._serial = serial.serial_for_url(port, baudrate=baudrate, timeout=0,
                                                 write_timeout=10)
        except (serial.SerialException, ValueError, OSError) as error:
            raise LinkError(f"cannot open serial port {port} ({error}); is the board "
                            f"plugged in and the path right?") from None
        self._error = serial.SerialException

    def write(self, data: bytes) -> None:
        try:
            self._serial.write(data)
            self._serial.flush()
        except (self._error, OSError) as error:
            raise LinkError(f"writing to {self.url} failed ({error})") from None

    def read(self, timeout: float) -> bytes:
        try:
            self._serial.timeout = max(timeout, 0.0)
            first = self._serial.read(1)
            if not first:
                return b""
            self._serial.timeout = 0
            return first + self._serial.read(1 << 16)
        except (self._error, OSError) as error:
            raise LinkError(f"reading from {self.url} failed ({error})") from None

    def close(self) -> None:
        self._serial.close()


class RecordingTransport(Transport):
    """Passes everything to ``inner`` and records it, for a replayable fixture (:meth:`save`).

    The record is a list of ``["w", hex]`` (bytes written) and ``["r", hex]`` (bytes read; an
    empty string is a read that timed out).
    """

    def __init__(self, inner: Transport):
        self.inner = inner
        self.url = inner.url
        self.events: list[list[str]] = []

    def write(self, data: bytes) -> None:
        self.events.append(["w", bytes(data).hex()])
        self.inner.write(data)

    def read(self, timeout: float) -> bytes:
        data = self.inner.read(timeout)
        self.events.append(["r", data.hex()])
        return data

    def close(self) -> None:
        self.inner.close()

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"url": self.url, "events": self.events}, indent=1)
                              + "\n")


class ReplayTransport(Transport):
    """Plays a device from a record of :class:`RecordingTransport`: every write must be the
    recorded one (else :class:`AssertionError`), every read returns the recorded bytes."""

    def __init__(self, events: Sequence[Sequence[str]], url: str = "replay://"):
        self.url = url
        self._events = [(kind, bytes.fromhex(data)) for kind, data in events]
        self._next = 0

    @classmethod
    def load(cls, path: str | Path) -> "ReplayTransport":
        record = json.loads(Path(path).read_text())
        return cls(record["events"], url=f"replay://{Path(path).name}")

    @property
    def done(self) -> bool:
        return self._next == len(self._events)

    def _take(self, kind: str) -> bytes:
        assert self._next < len(self._events), f"{self.url}: no recorded event left for {kind}"
        recorded, data = self._events[self._next]
        assert recorded == kind, \
            f"{self.url}: event {self._next} is {recorded!r}, the driver did {kind!r}"
        self._next += 1
        return data

    def write(self, data: bytes) -> None:
        expected = self._take("w")
        assert bytes(data) == expected, \
            f"{self.url}: event {self._next - 1}: wrote {bytes(data).hex()}, " \
            f"recorded {expected.hex()}"

    def read(self, timeout: float) -> bytes:
        return self._take("r")

    def close(self) -> None:
        pass


def _url_error(url: str, why: str) -> ConfigError:
    return ConfigError(f"board URL {url!r} {why}; use tcp://HOST:PORT, "
                       f"serial:///dev/ttyUSB0[?baud=N] or a serial device path")


def open_transport(url: str, *, baudrate: int | None = None) -> Transport:
    """The transport a board URL names (see the module's table)."""
    if not isinstance(url, str) or not url:
        raise _url_error(str(url), "is empty")
    if "://" not in url:
        return SerialTransport(url, baudrate=baudrate or DEFAULT_BAUD)
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "tcp":
        if parts.path not in ("", "/") or parts.query or not parts.hostname:
            raise _url_error(url, "must be tcp://HOST:PORT")
        try:
            port = parts.port
        except ValueError:
            port = None
        if not port:
            raise _url_error(url, "lacks a port number between 1 and 65535")
        return TCPTransport(parts.hostname, port)
    if parts.scheme == "serial":
        if parts.netloc or not parts.path:
            raise _url_error(url, "must name a device path after serial://, as in "
                                  "serial:///dev/ttyUSB0")
        query = urllib.parse.parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"baud"})
        if unknown:
            raise _url_error(url, f"has unknown options {', '.join(unknown)} (only baud)")
        if "baud" in query:
            text = query["baud"][-1]
            if not text.isdigit() or int(text) == 0:
                raise _url_error(url, f"has a baud rate that is not a positive integer: "
                                      f"{text!r}")
            baudrate = int(text)
        return SerialTransport(parts.path, baudrate=baudrate or DEFAULT_BAUD)
    if parts.scheme in ("loop", "socket", "rfc2217", "spy", "alt", "hwgrep", "cp2110"):
        return SerialTransport(url, baudrate=baudrate or DEFAULT_BAUD)
    raise _url_error(url, f"has an unknown scheme {parts.scheme!r}")


def _words(values: Iterable, what: str) -> list[int]:
    words = [int(v) for v in values]
    bad = next((w for w in words if not 0 <= w <= 0xFFFF), None)
    if bad is not None:
        raise ConfigError(f"{what} must be 16-bit words (0 to 65535), not {bad}")
    return words


class Board:
    """A spikeforge device behind a :class:`Transport`.

    Parameters
    ----------
    transport : Transport
    timeout : float
        Seconds to wait for each reply before resending the frame (generous: a virtual board
        shares the host's CPUs, and a frame a board never got is rare on TCP or USB).
    retries : int
        Resends of a frame before :class:`BoardTimeout`.
    seq : int or None
        First sequence number; random if None.

    Members
    -------
    identity : dict or None
        The :data:`~spikeforge.protocol.IDENTITY` fields, once :meth:`sync` ran.
    frames, resends : int
        Commands sent and frames resent.

    Use :meth:`connect` to open a URL and synchronise in one step. A multi-frame :meth:`write`
    that fails leaves its earlier frames written; each frame is checked whole by the device.
    """

    def __init__(self, transport: Transport, *, timeout: float = 5.0, retries: int = 3,
                 seq: int | None = None):
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a non-negative integer, not {retries!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be positive, not {timeout!r}")
        self.transport = transport
        self.timeout = timeout
        self.retries = retries
        self._seq = random.randrange(256) if seq is None else seq & 0xFF
        self._decoder = ReplyDecoder()
        self.identity: dict | None = None
        self.frames = 0
        self.resends = 0

    @classmethod
    def connect(cls, url: str | Transport, **kwargs) -> "Board":
        """Open ``url`` (or take a transport), :meth:`sync` and return the board."""
        transport = open_transport(url) if isinstance(url, str) else url
        board = cls(transport, **kwargs)
        try:
            board.sync()
        except BaseException:
            transport.close()
            raise
        return board

    @property
    def url(self) -> str:
        return self.transport.url

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Board({self.url!r})"

    def _describe(self, opcode: Opcode, core: int, address: int, payload: Sequence) -> str:
        where = {SOC: "the SoC", 0xFF: "every core"}.get(core, f"core {core}")
        return f"{opcode.name} of {len(payload)} words to {where} at address {address:#x}"

    def _await(self, seq: int, deadline: float) -> Reply | None:
        """The reply numbered ``seq``; None at ``deadline``, or sooner: once the link has been
        quiet for :data:`SETTLE` seconds after bytes that were no valid reply (a corrupted
        reply will not come again by waiting, but by resending)."""
        dropped = self._decoder.dropped
        end = deadline
        while True:
            remaining = end - time.monotonic()
            if remaining <= 0:
                return None
            data = self.transport.read(remaining)
            for reply in self._decoder.feed(data):
                if reply.seq == seq:
                    return reply
            if data and self._decoder.dropped != dropped:
                end = min(deadline, time.monotonic() + min(SETTLE, self.timeout))

    def command(self, opcode: Opcode, core: int, address: int = 0,
                payload: Sequence[int] = ()) -> tuple[int, ...]:
        """Send one frame, resending it as the module describes; return the reply's payload.

        Raises :class:`BoardError` on an error status, :class:`BoardTimeout` if no valid reply
        comes.
        """
        seq, self._seq = self._seq, (self._seq + 1) & 0xFF
        frame = encode_command(seq, opcode, core, address, payload)
        self.frames += 1
        status = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.resends += 1
            self.transport.write(frame)
            reply = self._await(seq, time.monotonic() + self.timeout)
            if reply is None:
                continue
            status = reply.status
            if status == Status.OK:
                return reply.payload
            if status != Status.BAD_CRC:
                break
        what = self._describe(opcode, core, address, payload)
        if status is None:
            raise BoardTimeout(f"the board at {self.url} did not answer the {what} "
                               f"({self.retries + 1} tries, {self.timeout:g} s each); is it "
                               f"running and connected?")
        raise BoardError(f"the board at {self.url} refused the {what}: {status.name}: "
                         f"{STATUS_MEANING.get(status, 'unknown status')}", status=status,
                         opcode=opcode, core=core, address=address)

    def _expect(self, payload: tuple, count: int, what: str) -> tuple:
        if len(payload) != count:
            raise LinkError(f"the board at {self.url} answered {what} with {len(payload)} "
                            f"words, not {count}")
        return payload

    def identify(self) -> dict:
        """The device's :data:`~spikeforge.protocol.IDENTITY` fields, by name."""
        payload = self.command(Opcode.IDENTIFY, 0)
        if len(payload) < len(IDENTITY):
            raise LinkError(f"the board at {self.url} answered IDENTIFY with {len(payload)} "
                            f"words, not {len(IDENTITY)}: is it a spikeforge device?")
        return dict(zip(IDENTITY, payload, strict=False))

    def sync(self) -> dict:
        """Identify twice with consecutive sequence numbers, so that a reply the device stored
        for a previous host's frame of the same number is never taken for a fresh one; check
        the protocol version and keep :attr:`identity`. The first reply may be such a stale
        one, of any opcode and status, and is ignored."""
        with contextlib.suppress(BoardError):
            self.command(Opcode.IDENTIFY, 0)
        identity = self.identify()
        if identity["version"] != VERSION:
            raise LinkError(f"the board at {self.url} speaks protocol version "
                            f"{identity['version']}, this driver version {VERSION}: update "
                            f"the bitstream or spikeforge")
        self.identity = identity
        return identity

    def _identity(self) -> dict:
        return self.identity if self.identity is not None else self.sync()

    def read(self, core: int, address: int, count: int) -> list[int]:
        """``count`` words from ``address`` on, in frames of at most ``MAX_WORDS``."""
        words: list[int] = []
        for offset in range(0, count, MAX_WORDS):
            n = min(MAX_WORDS, count - offset)
            payload = self.command(Opcode.READ, core, address + offset, [n])
            words += self._expect(payload, n, f"a READ of {n} words")
        return words

    def write(self, core: int, address: int, words: Iterable[int]) -> None:
        """Write ``words`` to ``address`` on, in frames of at most ``MAX_WORDS``."""
        words = _words(words, "written values")
        for offset in range(0, len(words), MAX_WORDS):
            self.command(Opcode.WRITE, core, address + offset, words[offset:offset + MAX_WORDS])

    def spikes_in(self, core: int, events: Iterable[int]) -> None:
        """Send input spike event words (:func:`~spikeforge.protocol.event_word`)."""
        events = _words(events, "spike events")
        for offset in range(0, len(events), MAX_WORDS):
            self.command(Opcode.SPIKES_IN, core, 0, events[offset:offset + MAX_WORDS])

    def spikes_out(self, core: int, max_words: int = MAX_WORDS) -> list[int]:
        """The output spike event words waiting, at most ``max_words`` (1 to ``MAX_WORDS``)."""
        if not 1 <= max_words <= MAX_WORDS:
            raise ConfigError(f"max_words must be between 1 and {MAX_WORDS}, not {max_words!r}")
        return list(self.command(Opcode.SPIKES_OUT, core, 0, [max_words]))

    def errors_in(self, core: int, beats_per_timestep: int, words: Iterable[int]) -> None:
        """Send output-spike errors: whole timesteps of ``beats_per_timestep`` beats of
        ``lanes`` binary16 words, as many timesteps a frame as fit."""
        lanes = self._identity()["lanes"]
        words = _words(words, "error words")
        step = beats_per_timestep * lanes
        if not 1 <= step <= MAX_WORDS:
            raise ConfigError(f"a timestep of {beats_per_timestep} beats of {lanes} words must "
                              f"fit one frame of {MAX_WORDS} words")
        if len(words) % step:
            raise ConfigError(f"errors must be whole timesteps of {step} words "
                              f"({beats_per_timestep} beats of {lanes}), not {len(words)} words")
        chunk = MAX_WORDS // step * step
        for offset in range(0, len(words), chunk):
            self.command(Opcode.ERRORS_IN, core, beats_per_timestep,
                         words[offset:offset + chunk])

    def errors_out(self, core: int, max_beats: int) -> list[int]:
        """The input-error beats waiting, at most ``max_beats``, as ``lanes`` words each."""
        lanes = self._identity()["lanes"]
        if not 1 <= max_beats * lanes <= MAX_WORDS:
            raise ConfigError(f"max_beats must be between 1 and {MAX_WORDS // lanes}, not "
                              f"{max_beats!r}")
        payload = self.command(Opcode.ERRORS_OUT, core, 0, [max_beats])
        if len(payload) % lanes:
            raise LinkError(f"the board at {self.url} answered ERRORS_OUT with {len(payload)} "
                            f"words, not whole beats of {lanes}")
        return list(payload)

    def reg(self, core: int, reg: Reg) -> int:
        return self.read(core, address(Region.REG, reg), 1)[0]

    def set_reg(self, core: int, reg: Reg, value: int) -> None:
        self.write(core, address(Region.REG, reg), [value])

    def core_command(self, core: int, command: Command) -> None:
        """Write ``command`` to a core's ``COMMAND`` register."""
        self.set_reg(core, Reg.COMMAND, command)

    def counters(self, core: int) -> dict:
        """A core's performance counters (:data:`~spikeforge.regmap.COUNTERS`)."""
        words = self.read(core, address(Region.COUNTER, 0), 2 * len(COUNTERS))
        return {name: words[2 * i] | words[2 * i + 1] << 16 for i, name in enumerate(COUNTERS)}

    def link_counters(self) -> dict:
        """The link's counters: bytes received and sent, frames executed and refused, the
        cycles in which a core worked (not counting its waits for input from the host) and
        those in which a Q-K unit worked (summed over the units)."""
        words = self.read(SOC, SocReg.RX_BYTES, 2 * len(LINK_COUNTERS))
        return {name: words[2 * i] | words[2 * i + 1] << 16
                for i, name in enumerate(LINK_COUNTERS)}

    def link(self, core: int) -> Link:
        return Link(self.read(SOC, SocReg.LINK + core, 1)[0])

    def set_link(self, core: int, link: Link) -> None:
        """Route core ``core``'s streams (:class:`~spikeforge.protocol.Link`). A route to a
        core that does not exist is refused: core 0 has no core before it to take errors from
        or share a layer with, the last core none after it to send spikes to."""
        cores = self._identity()["cores"]
        if not 0 <= core < cores:
            raise ValueError(f"core must be between 0 and {cores - 1}, not {core!r}")
        if not 0 <= int(link) < 1 << LINK_BITS:
            raise ValueError(f"link must be Link bits (0 to {(1 << LINK_BITS) - 1}), "
                             f"not {link!r}")
        link = Link(link)
        if core == 0 and link & (Link.BP_TO_PREV | Link.SPLIT):
            raise ValueError(f"core 0 has no core before it: {link!r} cannot route it")
        if core == cores - 1 and link & Link.FP_TO_NEXT:
            raise ValueError(f"core {core} is the last: {link!r} cannot route it")
        self.write(SOC, SocReg.LINK + core, [int(link)])

    def qk_unit(self, unit: int) -> list[int]:
        """Q-K unit ``unit``'s registers (:class:`~spikeforge.protocol.QkReg` order)."""
        self._check_unit(unit)
        return self.read(SOC, SocReg.QK + QK_REGS * unit, QK_REGS)

    def set_qk_unit(self, unit: int, values: Sequence[int]) -> None:
        """Write Q-K unit ``unit``'s registers (:class:`~spikeforge.protocol.QkReg` order). The
        device refuses a kind, token count, channel count or timestep count it cannot take."""
        self._check_unit(unit)
        if len(values) != QK_REGS:
            raise ValueError(f"a Q-K unit has {QK_REGS} registers, not {len(values)}")
        self.write(SOC, SocReg.QK + QK_REGS * unit, [int(v) for v in values])

    def _check_unit(self, unit: int) -> None:
        units = self._identity().get("qk_units", 0)
        if not 0 <= unit < units:
            raise ValueError(f"the board has {units} Q-K unit(s): no unit {unit!r}")


def link_throughput(board: Board, *, core: int = 0, seconds: float = 1.0) -> dict:
    """Measure ``board``'s link: weights written and read back a second, round trips a second.

    Writes random words over the whole weight matrix of ``core`` (``neurons · fan_in``, from
    :attr:`Board.identity`), reads them back and checks them, repeating for about ``seconds``;
    then times single-word reads. Leaves random weights in the core.
    """
    identity = board._identity()
    count = identity["neurons"] * identity["fan_in"]
    base = address(Region.WEIGHT, 0)
    rng = random.Random(1)
    written = read = 0
    write_time = read_time = 0.0
    while write_time + read_time < seconds or not read:
        words = [rng.randrange(0x10000) for _ in range(count)]
        start = time.perf_counter()
        board.write(core, base, words)
        middle = time.perf_counter()
        back = board.read(core, base, count)
        write_time += middle - start
        read_time += time.perf_counter() - middle
        if back != words:
            bad = next(i for i, (a, b) in enumerate(zip(back, words, strict=True)) if a != b)
            raise LinkError(f"the board at {board.url} read back weight {bad} as "
                            f"{back[bad]:#06x}, written {words[bad]:#06x}")
        written += count
        read += count
    trips = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds / 4 or trips < 10:
        board.read(core, base, 1)
        trips += 1
    trip_time = time.perf_counter() - start
    return {
        "weights_written_per_second": written / write_time,
        "weights_read_per_second": read / read_time,
        "payload_bytes_per_second": 2 * (written + read) / (write_time + read_time),
        "round_trips_per_second": trips / trip_time,
        "weights": count,
    }
