# SPDX-License-Identifier: Apache-2.0
"""The driver without its I/O: frames out, reply bytes in, and the commands built on them.

Two layers serve every runner of the driver alike:

* :class:`Session` is the sans-IO core of one link. It numbers and encodes a command's frame,
  decodes the bytes that come back, matches their sequence numbers, and decides when to wait,
  when to resend and when to give up. It never reads, writes or looks at a clock: the runner
  passes in the bytes it read and the time it read them at, and gets back the next
  :data:`Action`.
* :class:`Commands` holds the command-level methods (:meth:`~Commands.read`,
  :meth:`~Commands.write`, :meth:`~Commands.spikes_in`, ...), each written once as a generator
  of requests (:class:`Request`, an :class:`operation`). A runner subclasses it and supplies
  ``_run``, which sends each request through the session and its link, and sends the reply's
  payload back into the generator (or throws the error in).

:class:`spikeforge.driver.Board` runs them synchronously on a :class:`~spikeforge.driver.Transport`
(seconds of a monotonic clock); :class:`spikeforge.simlink.SimBoard` runs them in Amaranth's
simulator, where its methods are awaited and time is counted in clock cycles.

A runner's exchange of one request with a session, in full::

    action = session.start(request)
    while not isinstance(action, Done | Failed):
        if isinstance(action, Send):
            link.write(action.frame)
            action = session.sent(now())
        else:
            action = session.received(link.read(action.timeout), now())
    return action
"""

import abc
import contextlib
import functools
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any, NamedTuple, TypeVar

from .errors import ConfigError, SpikeforgeError
from .protocol import (
    BROADCAST,
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
    "LINK_COUNTERS", "STATUS_MEANING", "Action", "BoardError", "BoardTimeout", "Commands",
    "Done", "Failed", "LinkError", "Receive", "Request", "Send", "Session", "Steps", "advance",
    "operation",
]

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


class Request(NamedTuple):
    """One command for the session to send: what :class:`Commands` generators yield."""

    opcode: Opcode
    core: int
    address: int = 0
    payload: tuple = ()


class Send(NamedTuple):
    """Write ``frame`` whole, then call :meth:`Session.sent`."""

    frame: bytes


class Receive(NamedTuple):
    """Read what arrives within ``timeout`` (``b""`` if nothing does), then call
    :meth:`Session.received` with it."""

    timeout: float


class Done(NamedTuple):
    """The command succeeded; ``payload`` is its reply's. (From :func:`advance`: the method
    returned ``payload``.)"""

    payload: Any


class Failed(NamedTuple):
    """The command failed: ``error`` is the :class:`BoardError` or :class:`BoardTimeout` to
    raise where it was requested."""

    error: SpikeforgeError


Action = Send | Receive | Done | Failed


class Session:
    """The sans-IO core of the driver: one command at a time, as the driver's module describes.

    Parameters
    ----------
    url : str
        The link's name, for messages.
    timeout : float
        How long to wait for each reply before resending, in the runner's unit of time.
    retries : int
        Resends of a frame before giving up.
    seq : int
        The first sequence number.
    settle : float
        How long the link must stay quiet after bytes that were no valid reply before the
        frame is resent (a corrupted reply will not come again by waiting).
    unit : str
        The unit of ``timeout``, for messages.

    Members
    -------
    seq : int
        The sequence number of the next command.
    frames, resends : int
        Commands started and frames resent.

    :meth:`start` begins a command and every call after returns the next :data:`Action`, until
    :class:`Done` or :class:`Failed`: with a :class:`BoardError` for an error status (at once,
    or after the retries of :attr:`~spikeforge.protocol.Status.BAD_CRC`), with a
    :class:`BoardTimeout` if no valid reply came. Replies numbered otherwise than the command
    (stale, duplicated) are ignored.
    """

    def __init__(self, *, url: str, timeout: float, retries: int, seq: int, settle: float,
                 unit: str = "s"):
        if not isinstance(retries, int) or retries < 0:
            raise ConfigError(f"retries must be a non-negative integer, not {retries!r}")
        if not timeout > 0:
            raise ConfigError(f"timeout must be positive, not {timeout!r}")
        self.url = url
        self.timeout = timeout
        self.retries = retries
        self.settle = min(settle, timeout)
        self.unit = unit
        self.seq = seq & 0xFF
        self.frames = 0
        self.resends = 0
        self._decoder = ReplyDecoder()
        self._request: Request | None = None

    def decode(self, data: bytes) -> list[Reply]:
        """The replies ``data`` completes, whatever their numbers, outside a command: for a
        runner that sends frames of its own making (malformed ones, in tests)."""
        return self._decoder.feed(data)

    def start(self, request: Request) -> Send:
        """Begin ``request`` (abandoning any command in progress): its frame, numbered with
        :attr:`seq`."""
        self._request = request
        self._frame_seq, self.seq = self.seq, (self.seq + 1) & 0xFF
        self._frame = encode_command(self._frame_seq, *request)
        self._attempt = 0
        self._status: Status | None = None
        self.frames += 1
        return Send(self._frame)

    def sent(self, now: float) -> Receive:
        """The frame went out at ``now``: wait for its reply."""
        self._deadline = self._end = now + self.timeout
        self._dropped = self._decoder.dropped
        return Receive(self.timeout)

    def received(self, data: bytes, now: float) -> Action:
        """``data`` came (or nothing did, ``b""``) by ``now``: what to do next."""
        assert self._request is not None, "received() outside a command"
        for reply in self._decoder.feed(data):
            if reply.seq == self._frame_seq:
                self._status = reply.status
                if reply.status == Status.OK:
                    self._request = None
                    return Done(reply.payload)
                if reply.status != Status.BAD_CRC:
                    return self._failure()
                return self._resend()
        if data and self._decoder.dropped != self._dropped:
            self._end = min(self._deadline, now + self.settle)
        remaining = self._end - now
        if remaining <= 0:
            return self._resend()
        return Receive(remaining)

    def _resend(self) -> Send | Failed:
        if self._attempt == self.retries:
            return self._failure()
        self._attempt += 1
        self.resends += 1
        return Send(self._frame)

    def _failure(self) -> Failed:
        opcode, core, address_, payload = self._request
        self._request = None
        where = {SOC: "the SoC", BROADCAST: "every core"}.get(core, f"core {core}")
        what = f"{opcode.name} of {len(payload)} words to {where} at address {address_:#x}"
        if self._status is None:
            return Failed(BoardTimeout(f"the board at {self.url} did not answer the {what} "
                                       f"({self.retries + 1} tries, {self.timeout:g} "
                                       f"{self.unit} each); is it running and connected?"))
        return Failed(BoardError(f"the board at {self.url} refused the {what}: "
                                 f"{self._status.name}: "
                                 f"{STATUS_MEANING.get(self._status, 'unknown status')}",
                                 status=self._status, opcode=opcode, core=core,
                                 address=address_))


T = TypeVar("T")
Steps = Generator[Request, tuple, T]
"""A command-level method's body: yields requests, is sent each reply's payload, returns the
method's result."""


def advance(steps: Steps, outcome: Done | Failed | None = None) -> Request | Done:
    """Resume a command-level method's ``steps`` with the ``outcome`` of its last request (its
    payload sent in, its error thrown in; nothing to start them): the next :class:`Request`, or
    :class:`Done` with the method's result. What the method raises propagates."""
    try:
        if isinstance(outcome, Failed):
            return steps.throw(outcome.error)
        return steps.send(None if outcome is None else outcome.payload)
    except StopIteration as stop:
        return Done(stop.value)


class operation:
    """A command-level method of :class:`Commands`, written once as a generator of requests
    (:class:`Request`).

    Called on an instance, it hands the generator to the instance's ``_run``, so that it returns
    the result on a synchronous runner and an awaitable on an asynchronous one. Another
    operation's body calls it through ``yield from self.name.steps(...)``. A runner's ``_run``
    is, but for I/O::

        step = advance(steps)
        while isinstance(step, Request):
            step = advance(steps, exchange(session.start(step)))    # Done or Failed
        return step.payload
    """

    def __init__(self, steps: Callable[..., Steps]):
        functools.update_wrapper(self, steps)
        self._steps = steps

    def __get__(self, instance, owner=None):
        if instance is None:
            return self
        return _Bound(self._steps, instance)

    def __call__(self, instance, *args, **kwargs):
        return instance._run(self._steps(instance, *args, **kwargs))


class _Bound:
    __slots__ = ("_instance", "_steps")

    def __init__(self, steps: Callable[..., Steps], instance: "Commands"):
        self._steps = steps
        self._instance = instance

    def __call__(self, *args, **kwargs) -> Any:
        return self._instance._run(self._steps(self._instance, *args, **kwargs))

    def steps(self, *args, **kwargs) -> Steps:
        return self._steps(self._instance, *args, **kwargs)


def _words(values: Iterable, what: str) -> list[int]:
    words = [int(v) for v in values]
    bad = next((w for w in words if not 0 <= w <= 0xFFFF), None)
    if bad is not None:
        raise ConfigError(f"{what} must be 16-bit words (0 to 65535), not {bad}")
    return words


class Commands(abc.ABC):
    """The command-level methods of a board, for any runner (see the module).

    Members
    -------
    identity : dict or None
        The :data:`~spikeforge.protocol.IDENTITY` fields, once :meth:`sync` ran (or as given).
    frames, resends : int
        Commands sent and frames resent.
    """

    def __init__(self, session: Session, identity: dict | None = None):
        self._session = session
        self.identity = identity

    url = property(lambda self: self._session.url)
    timeout = property(lambda self: self._session.timeout)
    retries = property(lambda self: self._session.retries)
    frames = property(lambda self: self._session.frames)
    resends = property(lambda self: self._session.resends)

    @abc.abstractmethod
    def _run(self, steps: Steps):
        """Run ``steps`` to their end, exchanging each request through :attr:`_session`; the
        method's result (or an awaitable of it)."""

    def _expect(self, payload: tuple, count: int, what: str) -> tuple:
        if len(payload) != count:
            raise LinkError(f"the board at {self.url} answered {what} with {len(payload)} "
                            f"words, not {count}")
        return payload

    @operation
    def command(self, opcode: Opcode, core: int, address: int = 0,
                payload: Sequence[int] = ()) -> Steps[tuple[int, ...]]:
        """Send one frame, resending it as the driver's module describes; the reply's payload.

        Raises :class:`BoardError` on an error status, :class:`BoardTimeout` if no valid reply
        comes.
        """
        return (yield Request(opcode, core, address, tuple(payload)))

    @operation
    def identify(self) -> Steps[dict]:
        """The device's :data:`~spikeforge.protocol.IDENTITY` fields, by name."""
        payload = yield from self.command.steps(Opcode.IDENTIFY, 0)
        if len(payload) < len(IDENTITY):
            why = ("is it a spikeforge device?" if not payload or payload[0] == VERSION else
                   f"it speaks protocol version {payload[0]}, this driver version {VERSION}: "
                   f"update the bitstream or spikeforge")
            raise LinkError(f"the board at {self.url} answered IDENTIFY with {len(payload)} "
                            f"words, not {len(IDENTITY)}: {why}")
        return dict(zip(IDENTITY, payload, strict=False))

    @operation
    def sync(self) -> Steps[dict]:
        """Identify twice with consecutive sequence numbers, so that a reply the device stored
        for a previous host's frame of the same number is never taken for a fresh one; check
        the protocol version and keep :attr:`identity`. The first reply may be such a stale
        one, of any opcode and status, and is ignored."""
        with contextlib.suppress(BoardError):
            yield from self.command.steps(Opcode.IDENTIFY, 0)
        identity = yield from self.identify.steps()
        if identity["version"] != VERSION:
            raise LinkError(f"the board at {self.url} speaks protocol version "
                            f"{identity['version']}, this driver version {VERSION}: update "
                            f"the bitstream or spikeforge")
        self.identity = identity
        return identity

    @operation
    def _identity(self) -> Steps[dict]:
        if self.identity is not None:
            return self.identity
        return (yield from self.sync.steps())

    @operation
    def read(self, core: int, address: int, count: int) -> Steps[list[int]]:
        """``count`` words from ``address`` on, in frames of at most ``MAX_WORDS``."""
        words: list[int] = []
        for offset in range(0, count, MAX_WORDS):
            n = min(MAX_WORDS, count - offset)
            payload = yield from self.command.steps(Opcode.READ, core, address + offset, [n])
            words += self._expect(payload, n, f"a READ of {n} words")
        return words

    @operation
    def write(self, core: int, address: int, words: Iterable[int]) -> Steps[None]:
        """Write ``words`` to ``address`` on, in frames of at most ``MAX_WORDS``."""
        words = _words(words, "written values")
        for offset in range(0, len(words), MAX_WORDS):
            yield from self.command.steps(Opcode.WRITE, core, address + offset,
                                          words[offset:offset + MAX_WORDS])

    @operation
    def spikes_in(self, core: int, events: Iterable[int]) -> Steps[None]:
        """Send input spike event words (:func:`~spikeforge.protocol.event_word`)."""
        events = _words(events, "spike events")
        for offset in range(0, len(events), MAX_WORDS):
            yield from self.command.steps(Opcode.SPIKES_IN, core, 0,
                                          events[offset:offset + MAX_WORDS])

    @operation
    def spikes_out(self, core: int, max_words: int = MAX_WORDS) -> Steps[list[int]]:
        """The output spike event words waiting, at most ``max_words`` (1 to ``MAX_WORDS``)."""
        if not 1 <= max_words <= MAX_WORDS:
            raise ConfigError(f"max_words must be between 1 and {MAX_WORDS}, not {max_words!r}")
        return list((yield from self.command.steps(Opcode.SPIKES_OUT, core, 0, [max_words])))

    @operation
    def errors_in(self, core: int, beats_per_timestep: int,
                  words: Iterable[int]) -> Steps[None]:
        """Send output-spike errors: whole timesteps of ``beats_per_timestep`` beats of
        ``lanes`` binary16 words, as many timesteps a frame as fit."""
        lanes = (yield from self._identity.steps())["lanes"]
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
            yield from self.command.steps(Opcode.ERRORS_IN, core, beats_per_timestep,
                                          words[offset:offset + chunk])

    @operation
    def errors_out(self, core: int, max_beats: int) -> Steps[list[int]]:
        """The input-error beats waiting, at most ``max_beats``, as ``lanes`` words each."""
        lanes = (yield from self._identity.steps())["lanes"]
        if not 1 <= max_beats * lanes <= MAX_WORDS:
            raise ConfigError(f"max_beats must be between 1 and {MAX_WORDS // lanes}, not "
                              f"{max_beats!r}")
        payload = yield from self.command.steps(Opcode.ERRORS_OUT, core, 0, [max_beats])
        if len(payload) % lanes:
            raise LinkError(f"the board at {self.url} answered ERRORS_OUT with {len(payload)} "
                            f"words, not whole beats of {lanes}")
        return list(payload)

    @operation
    def reg(self, core: int, reg: Reg) -> Steps[int]:
        return (yield from self.read.steps(core, address(Region.REG, reg), 1))[0]

    @operation
    def set_reg(self, core: int, reg: Reg, value: int) -> Steps[None]:
        yield from self.write.steps(core, address(Region.REG, reg), [value])

    @operation
    def core_command(self, core: int, command: Command) -> Steps[None]:
        """Write ``command`` to a core's ``COMMAND`` register."""
        yield from self.set_reg.steps(core, Reg.COMMAND, command)

    @operation
    def counters(self, core: int) -> Steps[dict]:
        """A core's performance counters (:data:`~spikeforge.regmap.COUNTERS`)."""
        words = yield from self.read.steps(core, address(Region.COUNTER, 0), 2 * len(COUNTERS))
        return {name: words[2 * i] | words[2 * i + 1] << 16 for i, name in enumerate(COUNTERS)}

    @operation
    def link_counters(self) -> Steps[dict]:
        """The link's counters: bytes received and sent, frames executed and refused, the
        cycles in which a core worked (not counting its waits for input from the host) and
        those in which a Q-K unit worked (summed over the units)."""
        words = yield from self.read.steps(SOC, SocReg.RX_BYTES, 2 * len(LINK_COUNTERS))
        return {name: words[2 * i] | words[2 * i + 1] << 16
                for i, name in enumerate(LINK_COUNTERS)}

    @operation
    def link(self, core: int) -> Steps[Link]:
        return Link((yield from self.read.steps(SOC, SocReg.LINK + core, 1))[0])

    @operation
    def set_link(self, core: int, link: Link) -> Steps[None]:
        """Route core ``core``'s streams (:class:`~spikeforge.protocol.Link`). A route to a
        core that does not exist is refused: core 0 has no core before it to take errors from
        or share a layer with, the last core none after it to send spikes to."""
        cores = (yield from self._identity.steps())["cores"]
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
        yield from self.write.steps(SOC, SocReg.LINK + core, [int(link)])

    @operation
    def qk_unit(self, unit: int) -> Steps[list[int]]:
        """Q-K unit ``unit``'s registers (:class:`~spikeforge.protocol.QkReg` order)."""
        yield from self._check_unit.steps(unit)
        return (yield from self.read.steps(SOC, SocReg.QK + QK_REGS * unit, QK_REGS))

    @operation
    def set_qk_unit(self, unit: int, values: Sequence[int]) -> Steps[None]:
        """Write Q-K unit ``unit``'s registers (:class:`~spikeforge.protocol.QkReg` order). The
        device refuses a kind, token count, channel count or timestep count it cannot take."""
        yield from self._check_unit.steps(unit)
        if len(values) != QK_REGS:
            raise ValueError(f"a Q-K unit has {QK_REGS} registers, not {len(values)}")
        yield from self.write.steps(SOC, SocReg.QK + QK_REGS * unit, [int(v) for v in values])

    @operation
    def _check_unit(self, unit: int) -> Steps[None]:
        units = (yield from self._identity.steps()).get("qk_units", 0)
        if not 0 <= unit < units:
            raise ValueError(f"the board has {units} Q-K unit(s): no unit {unit!r}")
