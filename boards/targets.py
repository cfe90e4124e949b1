# SPDX-License-Identifier: Apache-2.0
"""The boards spikeforge builds bitstreams for, and the accelerator each one carries by default.

>>> sorted(TARGETS)
['orangecrab-25f', 'ulx3s-85f']
>>> target("ulx3s-85f").config(cores=4).cores
4
>>> target("de10")
Traceback (most recent call last):
...
spikeforge.errors.ConfigError: unknown board 'de10'; the boards are orangecrab-25f, ulx3s-85f
"""

from dataclasses import dataclass, field

from spikeforge.errors import ConfigError
from spikeforge.gen.config import AcceleratorConfig

__all__ = ["TARGETS", "Target", "target"]


@dataclass(frozen=True)
class Target:
    """A board: its amaranth-boards platform, clocks, pins and default accelerator.

    Parameters
    ----------
    name : str
        The name ``spikeforge build --board`` takes.
    platform : str
        ``module:Class`` of the amaranth-boards platform.
    clock : str
        The oscillator's resource; its frequency comes from the platform.
    target_mhz : float
        The default core clock, made by the PLL from the oscillator.
    leds : tuple of (resource, number, subsignal or None)
        Status LEDs, in the order heartbeat, PLL lock, busy, host-link receive, host-link send.
    baud : int
        The host link's default rate (``spikeforge build --baud`` changes it).
    uart : tuple of amaranth resources, optional
        A UART the platform lacks, added to it (its resource is then ``uart`` 0).
    accelerator : AcceleratorConfig
        The default accelerator; ``--cores`` and friends change it.
    """

    name: str
    platform: str
    clock: str
    target_mhz: float
    leds: tuple
    baud: int = 115_200
    accelerator: AcceleratorConfig = field(default_factory=AcceleratorConfig)
    uart: tuple = ()

    def make_platform(self):
        import importlib

        module, cls = self.platform.split(":")
        platform = getattr(importlib.import_module(module), cls)()
        if self.uart:
            from amaranth.build import Attrs
            from amaranth_boards.resources import UARTResource

            rx, tx, conn = self.uart
            platform.add_resources([UARTResource(0, rx=rx, tx=tx, conn=conn,
                                                 attrs=Attrs(IO_TYPE="LVCMOS33", PULLMODE="UP"))])
        return platform

    @property
    def device(self) -> str:
        cls = self.make_platform()
        return f"{cls.device}-{cls.package}"

    def config(self, **changes) -> AcceleratorConfig:
        """The board's accelerator with ``changes`` (``None`` values keep the default)."""
        return self.accelerator.replace(**{k: v for k, v in changes.items() if v is not None})


TARGETS = {t.name: t for t in (
    # Radiona ULX3S with the LFE5U-85F: 84k LUT4s, 156 18×18 multipliers, 208 DP16KD block
    # RAMs, a 25 MHz oscillator and an FT231X USB-UART bridge, which makes 3 Mbaud exactly
    # (48 MHz / 16); at 50 MHz the UART's 17 cycles a bit make 2,941,176 baud, 1.96 % slow.
    Target("ulx3s-85f", "amaranth_boards.ulx3s:ULX3S_85F_Platform", "clk25", 50.0,
           leds=(("led", 0, None), ("led", 7, None), ("led", 1, None), ("led", 2, None),
                 ("led", 3, None)),
           baud=3_000_000,
           accelerator=AcceleratorConfig(cores=4, neurons=64, fan_in=64, lanes=1, timesteps=8)),
    # 1BitSquared OrangeCrab r0.2 with the LFE5U-25F: 24k LUT4s, 28 18×18 multipliers, 56
    # DP16KD block RAMs and a 48 MHz oscillator. Its USB connector goes to the FPGA itself, not to
    # a UART bridge, so the host link is a UART on the Feather header (pin 0 RX, pin 1 TX) for a
    # 3.3 V USB-serial adapter, at 1 Mbaud: exact at 48 MHz (48 cycles a bit), and a rate the
    # FT232R, CH340, CP2102N and CP2104 make exactly (the first CP2102 stops at 921,600: build
    # with --baud 921600 for it). (The iCE40UP5K of the iCEBreaker is too small for a core: one
    # core of one lane needs about 10,500 of its 5,280 logic cells.)
    Target("orangecrab-25f", "amaranth_boards.orangecrab_r0_2:OrangeCrabR0_2_25FPlatform",
           "clk", 48.0,
           leds=(("rgb_led", 0, "g"), ("rgb_led", 0, "b"), ("rgb_led", 0, "r")),
           baud=1_000_000, uart=("0", "1", ("io", 0)),
           accelerator=AcceleratorConfig(cores=1, neurons=32, fan_in=32, lanes=2, timesteps=8)),
)}


def target(name: str) -> Target:
    """The board called ``name``."""
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(f"unknown board {name!r}; the boards are "
                          f"{', '.join(sorted(TARGETS))}") from None
