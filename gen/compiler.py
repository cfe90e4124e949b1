# SPDX-License-Identifier: Apache-2.0
"""The network compiler: a golden network to a program for the accelerator's cores.

A program places the layers of a :class:`~spikeforge.golden.network.SpikingMLP` on the cores
of the line in order, each on as many neighbouring cores as its neurons need (a layer wider
than a core is split by neurons, the higher core holding the lower neurons; see
:mod:`spikeforge.hw.fabric`), and holds what the host writes before a run: every core's
registers, its weight image (binary16 bit patterns, row by row at the bus offsets of
:mod:`spikeforge.regmap`) and the routing bits that pass spikes forward and errors backward
from core to core. A network that does not fit the configuration is refused with what would
make it fit.

>>> from spikeforge.golden.network import SpikingMLP
>>> program = compile_network(SpikingMLP([64, 128, 10]), AcceleratorConfig(), timesteps=8)
>>> [(c.layer, c.core, c.neurons, c.inputs) for c in program.cores], program.links
([('fc0', 0, 128, 64), ('fc1', 1, 10, 128)], [1, 2])
>>> program = compile_network(SpikingMLP([64, 100, 10]), AcceleratorConfig(cores=4, neurons=48,
...                                                                         lanes=8), timesteps=8)
>>> [(c.name, c.core) for c in program.cores], program.links
([('fc0[96:100]', 0), ('fc0[48:96]', 1), ('fc0[0:48]', 2), ('fc1', 3)], [1, 5, 5, 2])
"""

from dataclasses import dataclass

import torch

from spikeforge.errors import ConfigError
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import Network
from spikeforge.protocol import EVENT_INDEX, Link
from spikeforge.regmap import Reg

from .config import AcceleratorConfig

__all__ = ["CoreProgram", "Program", "compile_network", "index_bits"]


def index_bits(count: int) -> int:
    """Bits of an index below ``count`` in a core's bus offsets (``Core.input_bits`` of its
    fan-in, ``Core.neuron_bits`` of its neurons)."""
    return max((count - 1).bit_length(), 1)


@dataclass
class CoreProgram:
    layer: str
    core: int
    neurons: int
    inputs: int
    registers: dict
    weights: torch.Tensor          # [neurons, inputs] binary16
    rows: tuple = None             # the layer's neurons this core holds, [first, end)
    split: bool = False            # the layer is spread over several cores

    @property
    def name(self) -> str:
        """The layer, or the layer and its neurons on this core when it is split."""
        return f"{self.layer}[{self.rows[0]}:{self.rows[1]}]" if self.split else self.layer


@dataclass
class Program:
    config: AcceleratorConfig
    timesteps: int
    cores: list
    links: list                    # Link bits of cores 0 .. len(cores) - 1

    @property
    def first(self) -> int:
        return self.cores[0].core

    @property
    def last(self) -> int:
        return self.cores[-1].core

    def layers(self) -> dict:
        """Each layer's cores, lowest neurons first."""
        layers = {}
        for cp in self.cores:
            layers.setdefault(cp.layer, []).append(cp)
        return {name: sorted(parts, key=lambda cp: cp.rows) for name, parts in layers.items()}

    @property
    def outputs(self) -> int:
        """Neurons of the last layer."""
        last = self.cores[-1].layer
        return max(cp.rows[1] for cp in self.cores if cp.layer == last)

    @property
    def inputs(self) -> int:
        """Inputs of the first layer."""
        return self.cores[0].inputs

    def weight_rows(self, core: CoreProgram) -> list:
        """``(offset, words)`` bus writes of a core's weights: whole padded rows in one run
        when a row's offsets are contiguous, one run a row otherwise."""
        bits = fp16.bits(core.weights).tolist()
        fan_in = self.config.fan_in
        ib = index_bits(fan_in)
        if fan_in == 1 << ib:
            words = [w for row in bits for w in row + [0] * (fan_in - core.inputs)]
            return [(0, words)]
        return [(n << ib, row) for n, row in enumerate(bits)]


def _lif_registers(network: Network, neurons: int, inputs: int, timesteps: int) -> dict:
    c = network.lif.constants(FP16())
    return {
        Reg.NEURONS: neurons, Reg.INPUTS: inputs, Reg.TIMESTEPS: timesteps,
        Reg.V_TH: int(fp16.bits(c["v_th"])), Reg.V_RESET: int(fp16.bits(c["v_reset"])),
        Reg.INV_TAU: int(fp16.bits(c["inv_tau"])), Reg.DECAY: int(fp16.bits(c["decay"])),
    }


def compile_network(network: Network, config: AcceleratorConfig, *, timesteps: int) -> Program:
    """Place ``network`` on ``config``'s cores; raise :class:`ConfigError` if it does not fit."""
    kind = getattr(network, "kind", type(network).__name__)
    if kind != "mlp":
        raise ConfigError(f"the {kind} model does not map onto a chain of training cores: "
                          f"the compiler does not yet place its Q-K attention on a Q-K unit; "
                          f"use --model mlp")
    lif = network.lif
    problems = []
    if lif.surrogate.kind != config.surrogate:
        problems.append(f"the network's surrogate is {lif.surrogate.kind}, the cores' "
                        f"{config.surrogate} (generate with surrogate={lif.surrogate.kind!r})")
    if lif.reset != config.reset:
        problems.append(f"the network uses {lif.reset} reset, the cores {config.reset} reset")
    if lif.detach_reset != config.detach_reset:
        problems.append(f"the network has detach_reset={lif.detach_reset}, the cores "
                        f"{config.detach_reset}")
    if timesteps > config.timesteps:
        problems.append(f"{timesteps} timesteps, the cores keep BP state for at most "
                        f"{config.timesteps} (generate with timesteps={timesteps} or more)")
    layers = list(network.weights.items())
    parts = [-(-w.shape[0] // config.neurons) for _, w in layers]
    if sum(parts) > config.cores:
        widest = max(w.shape[0] for _, w in layers)
        problems.append(
            f"the layers need {sum(parts)} cores of {config.neurons} neurons "
            f"({' + '.join(map(str, parts))}), the accelerator has {config.cores} (generate "
            f"with cores={sum(parts)} or more, or with neurons="
            f"{-(-widest // config.lanes) * config.lanes} and cores={len(layers)})")
    for name, w in layers:
        n, f = w.shape
        if n > EVENT_INDEX + 1:
            problems.append(f"layer {name} has {n} neurons, the network's spike events at most "
                            f"{EVENT_INDEX + 1}")
        if f > config.fan_in:
            problems.append(f"layer {name} has {f} inputs, a core at most {config.fan_in} "
                            f"(generate with fan_in={-(-f // config.lanes) * config.lanes})")
    if problems:
        raise ConfigError("the network does not fit the accelerator: " + "; ".join(problems))

    cores, links, base = [], [], 0
    for k, ((name, w), count) in enumerate(zip(layers, parts, strict=True)):
        n, f = w.shape
        # Core base + j holds neurons [lo, hi) of part count - 1 - j: the lowest neurons on
        # the highest core, where the errors come in and Wᵀ·δ starts.
        for j in range(count):
            lo = (count - 1 - j) * config.neurons
            hi = min(lo + config.neurons, n)
            registers = _lif_registers(network, hi - lo, f, timesteps)
            registers[Reg.BP_INPUT_ERROR] = int(k > 0)
            registers[Reg.PARTIAL_IN] = int(k > 0 and j < count - 1)
            cores.append(CoreProgram(name, base + j, hi - lo, f, registers,
                                     fp16.to_fp16(w[lo:hi]), (lo, hi), count > 1))
            link = Link(0)
            if k < len(layers) - 1 or j < count - 1:
                link |= Link.FP_TO_NEXT
            if j > 0:
                link |= Link.SPLIT
            elif k > 0:
                link |= Link.BP_TO_PREV
            links.append(int(link))
        base += count
    return Program(config, timesteps, cores, links)
