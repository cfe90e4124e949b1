# SPDX-License-Identifier: Apache-2.0
"""The stream side of a cocotb testbench: ``amaranth.lib.stream`` ports of a Verilated design
(``<prefix>__valid``, ``__ready``, ``__payload``) driven one beat at a time, with seeded random
idle cycles before each source beat and random backpressure on the sinks."""

from cocotb.triggers import ClockCycles, RisingEdge

__all__ = ["StreamDriver"]


class StreamDriver:
    """Mixin of a testbench with ``dut``, ``rng``, ``idle`` and ``stall`` (probabilities).
    ``quiet`` names the inputs held low through :meth:`reset`."""

    quiet: tuple[str, ...] = ()

    async def reset(self):
        d = self.dut
        for name in self.quiet:
            getattr(d, name).value = 0
        d.rst.value = 1
        await ClockCycles(d.clk, 3)
        d.rst.value = 0
        await RisingEdge(d.clk)

    async def _idle(self):
        while self.idle and self.rng.random() < self.idle:
            await RisingEdge(self.dut.clk)

    async def _put(self, prefix: str, payload: int):
        d = self.dut
        await self._idle()
        getattr(d, f"{prefix}__valid").value = 1
        getattr(d, f"{prefix}__payload").value = payload
        while True:
            await RisingEdge(d.clk)
            if int(getattr(d, f"{prefix}__ready").value):
                break
        getattr(d, f"{prefix}__valid").value = 0

    async def _get(self, prefix: str) -> int:
        d = self.dut
        while True:
            ready = not (self.stall and self.rng.random() < self.stall)
            getattr(d, f"{prefix}__ready").value = int(ready)
            await RisingEdge(d.clk)
            if ready and int(getattr(d, f"{prefix}__valid").value):
                getattr(d, f"{prefix}__ready").value = 0
                return int(getattr(d, f"{prefix}__payload").value)
