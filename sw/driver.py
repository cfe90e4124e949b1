# SPDX-License-Identifier: Apache-2.0
"""The host driver: a :class:`Board` speaking the frames of :mod:`spikeforge.protocol` over any
:class:`Transport`.

The same driver code serves a board on a serial port and the virtual board on a TCP socket; only
the URL given to :func:`open_transport` differs:

==================================  ===========================================================
URL                                 transport
==================================  ===========================================================
``tcp://HOST:PORT``                 :class:`TCPTransport` (the virtual board)
``serial:///dev/ttyUSB0?baud=N``    :class:`SerialTransport` on a device path, at ``N`` baud
``serial:///dev/ttyUSB0?target=B``  the same, at the rate board ``B`` is built for by default
                                    (``ulx3s-85f``: 3,000,000; ``orangecrab-25f``: 1,000,000)
``serial:///dev/ttyUSB0``,          the same, at the first rate of :data:`PROBE_RATES` at which
``/dev/ttyUSB0``, ``COM3``          the board answers ``IDENTIFY`` (:func:`probe_baud`)
``loop://``, ``socket://``, ...     :class:`SerialTransport` on a pyserial URL, at
                                    :data:`DEFAULT_BAUD`
==================================  ===========================================================

The rate of a board's UART is a build option (``spikeforge build --baud``), so a serial URL
that names neither the rate nor the board tries the rates boards are built for by default,
fastest first, and then 115,200 (the rate of builds before the option): at each it waits for a
quiet line (:data:`SETTLE`; the device drops a frame it got half of), sends ``IDENTIFY`` and
waits :data:`PROBE_TIMEOUT` for the reply; the first rate that gets one is kept. A wrong rate
only sends the device bytes it skips. ``?baud=N`` always wins, then ``?target=B`` (or
``open_transport(url, baudrate=N)``, ``target=B``). A board reports the rate it was built for
(``IDENTIFY``'s ``baud_100``, :attr:`Board.baud`); :meth:`Board.connect` warns if the serial
port's rate differs from it by more than 2 % (a link that answers at all is within a few
per cent, so this flags a link running at the edge of its tolerance).

Every command gets a fresh sequence number and waits for its reply. A reply that does not
come within ``timeout``, that fails its CRC (the link then quiet for :data:`SETTLE` seconds), or
that says the command's CRC failed
(:attr:`~spikeforge.protocol.Status.BAD_CRC`) makes the driver resend the *same* frame, sequence
number included, up to ``retries`` times: the device executes a frame at most once and answers a
repeated sequence number from its stored reply, so a retried command is never applied twice.
Those decisions are :class:`~spikeforge.session.Session`'s, and the commands are
:class:`~spikeforge.session.Commands`'; a :class:`Board` only moves their bytes and reads the
clock, as :class:`~spikeforge.simlink.SimBoard` does in Amaranth's simulator.

A session with the virtual board (``spikeforge board serve --port 7000``)::

    with Board.connect("tcp://127.0.0.1:7000") as board:
        board.write(0, address(Region.WEIGHT, 0), weights)
        assert board.read(0, address(Region.WEIGHT, 0), len(weights)) == weights
"""

import abc
import json
import random
import time
import urllib.parse
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import ConfigError
from .protocol import Opcode, ReplyDecoder, encode_command
from .regmap import Region, address
from .session import (
    LINK_COUNTERS,
    STATUS_MEANING,
    Action,
    BoardError,
    BoardTimeout,
    Commands,
    Done,
    Failed,
    LinkError,
    Request,
    Send,
    Session,
    Steps,
    advance,
)

__all__ = [
    "DEFAULT_BAUD", "LINK_COUNTERS", "PROBE_RATES", "STATUS_MEANING", "Board", "BoardError",
    "BoardTimeout", "LinkError", "RecordingTransport", "ReplayTransport", "SerialTransport",
    "TCPTransport", "Transport", "link_throughput", "open_transport", "probe_baud",
    "target_baud",
]

DEFAULT_BAUD = 115200
SETTLE = 0.1
PROBE_TIMEOUT = 0.25


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
    """A serial port or a pyserial URL (``/dev/ttyUSB0``, a pty path, ``loop://``, ...) at
    ``baudrate``."""

    def __init__(self, port: str, *, baudrate: int = DEFAULT_BAUD):
        import serial

        self.url = port
        self.baudrate = baudrate
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


def _target_rates() -> tuple[int, ...]:
    from spikeforge.boards.targets import TARGETS

    return tuple(sorted({t.baud for t in TARGETS.values()} | {DEFAULT_BAUD}, reverse=True))


PROBE_RATES = _target_rates()


def target_baud(name: str) -> int:
    """The rate the board target ``name`` is built for by default."""
    from spikeforge.boards.targets import target

    return target(name).baud


def probe_baud(port: str, rates: Sequence[int] = PROBE_RATES, *, opener=None,
               timeout: float = PROBE_TIMEOUT, settle: float = SETTLE) -> Transport:
    """The transport to ``port`` at the first of ``rates`` at which the device answers
    ``IDENTIFY`` within ``timeout`` seconds, after ``settle`` seconds of quiet line.

    ``opener(port, baudrate=...)`` makes the transports (:class:`SerialTransport`). Raises
    :class:`LinkError` naming the rates tried if none gets an answer.
    """
    opener = opener or SerialTransport
    seq = random.randrange(256)
    for rate in rates:
        transport = opener(port, baudrate=rate)
        try:
            deadline = time.monotonic() + settle
            while time.monotonic() < deadline:
                transport.read(max(deadline - time.monotonic(), 0.0))
            transport.write(encode_command(seq, Opcode.IDENTIFY, 0, 0))
            decoder = ReplyDecoder()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                replies = decoder.feed(transport.read(max(deadline - time.monotonic(), 0.0)))
                if any(r.seq == seq for r in replies):
                    transport.url = f"{port}?baud={rate}"
                    return transport
        except BaseException:
            transport.close()
            raise
        transport.close()
    raise LinkError(f"no spikeforge board answers on {port} at "
                    f"{', '.join(f'{r:,}' for r in rates)} baud; is it plugged in and "
                    f"programmed? Name its rate with serial://{port}?baud=N")


def rate_mismatch(board: int | None, link: int | None) -> str | None:
    """What is wrong if a board built for ``board`` baud is spoken to at ``link`` baud (None:
    nothing, or one of them unknown).

    >>> rate_mismatch(3_000_000, 3_000_000) is None
    True
    >>> print(rate_mismatch(1_000_000, 921_600))  # doctest: +NORMALIZE_WHITESPACE
    the board was built for 1,000,000 baud and the link runs at 921,600 (7.8% off):
    open it with ?baud=1000000
    """
    from spikeforge.hw.uart import MAX_RATE_ERROR

    if not board or not link or abs(link - board) <= MAX_RATE_ERROR * board:
        return None
    return (f"the board was built for {board:,} baud and the link runs at {link:,} "
            f"({abs(link - board) / board:.1%} off): open it with ?baud={board}")


def _url_error(url: str, why: str) -> ConfigError:
    return ConfigError(f"board URL {url!r} {why}; use tcp://HOST:PORT, "
                       f"serial:///dev/ttyUSB0[?baud=N|?target=BOARD] or a serial device path")


def _serial(port: str, baudrate: int | None, target: str | None) -> Transport:
    if baudrate:
        return SerialTransport(port, baudrate=baudrate)
    if target:
        return SerialTransport(port, baudrate=target_baud(target))
    return probe_baud(port)


def open_transport(url: str, *, baudrate: int | None = None,
                   target: str | None = None) -> Transport:
    """The transport a board URL names (see the module's table); a serial port at
    ``baudrate``, else at the default rate of the board ``target``, else at the rate
    :func:`probe_baud` finds (a URL's ``?baud=`` and ``?target=`` come first)."""
    if not isinstance(url, str) or not url:
        raise _url_error(str(url), "is empty")
    if "://" not in url:
        return _serial(url, baudrate, target)
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
        unknown = sorted(set(query) - {"baud", "target"})
        if unknown:
            raise _url_error(url, f"has unknown options {', '.join(unknown)} (only baud and "
                                  f"target)")
        if "baud" in query:
            text = query["baud"][-1]
            if not text.isdigit() or int(text) == 0:
                raise _url_error(url, f"has a baud rate that is not a positive integer: "
                                      f"{text!r}")
            baudrate = int(text)
        if "target" in query:
            target = query["target"][-1]
        return _serial(parts.path, baudrate, target)
    if parts.scheme in ("loop", "socket", "rfc2217", "spy", "alt", "hwgrep", "cp2110"):
        return SerialTransport(url, baudrate=baudrate or DEFAULT_BAUD)
    raise _url_error(url, f"has an unknown scheme {parts.scheme!r}")


class Board(Commands):
    """A spikeforge device behind a :class:`Transport`: the methods of
    :class:`~spikeforge.session.Commands`, each returning its result.

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
        super().__init__(Session(url=transport.url, timeout=timeout, retries=retries,
                                 seq=random.randrange(256) if seq is None else seq,
                                 settle=SETTLE))
        self.transport = transport

    @classmethod
    def connect(cls, url: str | Transport, *, target: str | None = None,
                **kwargs) -> "Board":
        """Open ``url`` (or take a transport), :meth:`sync` and return the board; a serial
        port without a rate runs at the default rate of the board ``target`` if given
        (:func:`open_transport`)."""
        transport = open_transport(url, target=target) if isinstance(url, str) else url
        board = cls(transport, **kwargs)
        try:
            board.sync()
        except BaseException:
            transport.close()
            raise
        mismatch = rate_mismatch(board.baud, getattr(transport, "baudrate", None))
        if mismatch:
            warnings.warn(f"{transport.url}: {mismatch}", RuntimeWarning, stacklevel=2)
        return board

    @property
    def baud(self) -> int | None:
        """The rate the board's UART was built for (after :meth:`sync`); None for a board
        without one (the virtual board) or not yet identified."""
        return (self.identity or {}).get("baud_100", 0) * 100 or None

    def close(self) -> None:
        self.transport.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self):
        return f"Board({self.url!r})"

    def _run(self, steps: Steps):
        step = advance(steps)
        while isinstance(step, Request):
            step = advance(steps, self._exchange(self._session.start(step)))
        return step.payload

    def _exchange(self, action: Action) -> Done | Failed:
        while not isinstance(action, Done | Failed):
            if isinstance(action, Send):
                self.transport.write(action.frame)
                action = self._session.sent(time.monotonic())
            else:
                data = self.transport.read(action.timeout)
                action = self._session.received(data, time.monotonic())
        return action


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
