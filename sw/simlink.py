# SPDX-License-Identifier: Apache-2.0
"""The driver in Amaranth's simulator: :class:`SimBoard` runs the driver's commands
(:class:`~spikeforge.session.Commands`, the ones :class:`~spikeforge.driver.Board` runs on a
real link) on the byte streams of a simulated SoC, inside a testbench::

    async def bench(ctx):
        board = SimBoard(ctx, dut.rx, dut.tx, identity=config.identity())
        await board.write(0, address(Region.WEIGHT, 0), [0x3C00])
        assert await board.read(0, address(Region.WEIGHT, 0), 1) == [0x3C00]

    sim.add_testbench(bench)

Time is counted in the simulator's clock cycles; errors are the driver's.
"""

import random

from amaranth.lib import stream

from .protocol import Reply
from .session import (
    Action,
    BoardTimeout,
    Commands,
    Done,
    Failed,
    Request,
    Send,
    Session,
    Steps,
    advance,
)

__all__ = ["SimBoard"]


class SimBoard(Commands):
    """A simulated device's link, driven from a testbench: every command method of
    :class:`~spikeforge.session.Commands` is awaited (``await board.read(...)``).

    Parameters
    ----------
    ctx : amaranth.sim.SimulatorContext
        The testbench's context; the commands tick its default clock domain.
    rx : stream.Interface
        The device's command byte stream (``SoC.rx``); :class:`SimBoard` drives it.
    tx : stream.Interface
        The device's reply byte stream (``SoC.tx``), always taken (from construction on).
    timeout : int
        Cycles to wait for a reply before resending the frame.
    retries : int
        Resends of a frame before :class:`~spikeforge.session.BoardTimeout`.
    seq : int
        The first sequence number.
    idle : float
        The probability of an idle cycle on ``rx`` while a frame goes in (random idle cycles,
        seeded by ``seed``); drawn in every cycle the board ticks.
    identity : dict or None
        The device's identity if known (``AcceleratorConfig.identity()``), so that methods that
        need its lanes or cores do not :meth:`~spikeforge.session.Commands.sync` first.
    settle : int
        Cycles of quiet after bytes that were no valid reply before resending.
    """

    def __init__(self, ctx, rx: stream.Interface, tx: stream.Interface, *,
                 timeout: int = 20000, retries: int = 0, seq: int = 0, idle: float = 0.0,
                 seed: int = 0, identity: dict | None = None, settle: int = 100,
                 url: str = "sim://SoC"):
        if not 0 <= idle < 1:
            raise ValueError(f"idle must be a probability below 1, not {idle!r}")
        super().__init__(Session(url=url, timeout=timeout, retries=retries, seq=seq,
                                 settle=settle, unit="cycles"), identity)
        self._ctx, self._rx, self._tx = ctx, rx, tx
        self._idle = idle
        self._rng = random.Random(seed)
        self.cycles = 0
        ctx.set(tx.ready, 1)

    def __repr__(self):
        return f"SimBoard({self.url!r})"

    @property
    def seq(self) -> int:
        """The sequence number of the next command."""
        return self._session.seq

    async def _run(self, steps: Steps):
        step = advance(steps)
        while isinstance(step, Request):
            step = advance(steps, await self._exchange(self._session.start(step)))
        return step.payload

    async def _exchange(self, action: Action) -> Done | Failed:
        while not isinstance(action, Done | Failed):
            if isinstance(action, Send):
                data = await self._transmit(action.frame)
                action = self._session.sent(self.cycles)
                if data:
                    action = self._session.received(data, self.cycles)
            else:
                data = await self._listen(action.timeout)
                action = self._session.received(data, self.cycles)
        return action

    async def send(self, data: bytes, *, reply: bool = True) -> Reply | None:
        """Send ``data`` as it is, a malformed frame say, outside the driver's numbering and
        retries: the first reply to come, whatever its number, or None as soon as ``data`` is
        in if ``reply`` is false."""
        replies = self._session.decode(await self._transmit(data))
        if not reply:
            return None
        end = self.cycles + self.timeout
        while not replies and self.cycles < end:
            replies = self._session.decode(await self._listen(end - self.cycles))
        if not replies:
            raise BoardTimeout(f"the board at {self.url} did not answer {len(data)} bytes "
                               f"within {self.timeout} cycles")
        return replies[0]

    async def pause(self, cycles: int) -> None:
        """Let ``cycles`` pass with no command going in; replies that come are dropped, as a
        late one is."""
        end = self.cycles + cycles
        while self.cycles < end:
            self._session.decode(await self._listen(end - self.cycles))

    async def _tick(self, byte: int | None = None) -> tuple[bool, bytes]:
        """One cycle, offering ``byte`` unless it is None or the cycle is idle: whether the
        device took it, and the reply byte it sent."""
        offer = self._rng.random() >= self._idle and byte is not None
        self._ctx.set(self._rx.valid, offer)
        if byte is not None:
            self._ctx.set(self._rx.payload, byte)
        *_, ready, valid, out = await self._ctx.tick().sample(
            self._rx.ready, self._tx.valid, self._tx.payload)
        self.cycles += 1
        return bool(offer and ready), bytes([out]) if valid else b""

    async def _transmit(self, frame: bytes) -> bytes:
        """Clock ``frame`` into the device: the reply bytes that came meanwhile."""
        received = b""
        position = 0
        while position < len(frame):
            taken, data = await self._tick(frame[position])
            position += taken
            received += data
        self._ctx.set(self._rx.valid, 0)
        return received

    async def _listen(self, cycles: float) -> bytes:
        """The reply bytes of the first cycle, within ``cycles``, that brings any."""
        end = self.cycles + cycles
        while self.cycles < end:
            _, data = await self._tick()
            if data:
                return data
        return b""
