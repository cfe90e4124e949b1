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

A :class:`~spikeforge.golden.network.QKNet` takes a Q-K unit (``AcceleratorConfig.qk_units``)
and its four cores: the embedding, ``[Wq; Wk]`` as one layer of ``2·D`` neurons, the projection
(whose current starts from the embedding's, the membrane shortcut) and the head over all
tokens. The first three run a token a step, ``T·N`` steps a sample; the unit's registers
(:class:`~spikeforge.protocol.QkReg`) are part of the program.

>>> from spikeforge.golden.network import QKNet
>>> program = compile_network(QKNet(), AcceleratorConfig(
...     cores=4, neurons=64, fan_in=256, timesteps=64, qk_units=1, qk_tokens=8), timesteps=8)
>>> [(c.layer, c.neurons, c.inputs, c.registers[Reg.TIMESTEPS]) for c in program.cores]
[('embed', 32, 8, 64), ('q+k', 64, 32, 64), ('proj', 32, 32, 64), ('head', 10, 256, 8)]
>>> program.links, program.tokens, program.unit[:4]
([1, 3, 3, 2], 8, [0, 8, 32, 8])
"""

from dataclasses import dataclass

import torch

from spikeforge.errors import ConfigError
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import Network
from spikeforge.golden.qk import ATTENTIONS
from spikeforge.protocol import EVENT_INDEX, Link
from spikeforge.regmap import Reg, Shortcut, index_bits, weight_offset

from .config import AcceleratorConfig

__all__ = ["DEVICE_MODELS", "CoreProgram", "Program", "compile_network"]

# The golden models' kinds that the compiler places on cores.
DEVICE_MODELS = ("mlp", "qk")


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
    stack: tuple = ()              # the network's weights stacked in the layer: (name, rows)

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
    tokens: int = 1                # input tokens a timestep: the first core's steps a timestep
    unit: list = None              # the Q-K unit's registers (QkReg order), if one is used

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

    def network_weights(self, layers: dict) -> dict:
        """The network's weights from its layers' (a stacked layer's rows parted again)."""
        weights = {}
        for cp in self.cores:
            w = layers[cp.layer]
            if not cp.stack:
                weights[cp.layer] = w
            for name, (lo, hi) in cp.stack:
                weights[name] = w[lo:hi]
        return weights

    def weight_rows(self, core: CoreProgram) -> list:
        """``(offset, words)`` bus writes of a core's weights: whole padded rows in one run
        when a row's offsets are contiguous, one run a row otherwise."""
        bits = fp16.bits(core.weights).tolist()
        fan_in = self.config.fan_in
        ib = index_bits(fan_in)
        if fan_in == 1 << ib:
            words = [w for row in bits for w in row + [0] * (fan_in - core.inputs)]
            return [(0, words)]
        return [(weight_offset(n, 0, fan_in=fan_in), row) for n, row in enumerate(bits)]


def _lif_registers(network: Network, config: AcceleratorConfig, neurons: int, inputs: int,
                   timesteps: int) -> dict:
    """A core's registers for one layer of ``network``'s LIF neurons: a step a timestep, no
    input tokens, no shortcut, none of them left from an earlier program."""
    c = network.lif.constants(FP16())
    return {
        Reg.NEURONS: neurons, Reg.INPUTS: inputs, Reg.TIMESTEPS: timesteps,
        Reg.V_TH: int(fp16.bits(c["v_th"])), Reg.V_RESET: int(fp16.bits(c["v_reset"])),
        Reg.INV_TAU: int(fp16.bits(c["inv_tau"])), Reg.DECAY: int(fp16.bits(c["decay"])),
        Reg.TOKENS: 1, Reg.IN_TOKENS: 1, Reg.IN_STRIDE: config.fan_in,
        Reg.SHORTCUT: Shortcut.NONE, Reg.PARTIAL_IN: 0,
    }


def _lif_problems(lif, config: AcceleratorConfig, whose: str = "the network's") -> list:
    problems = []
    if lif.surrogate.kind != config.surrogate:
        problems.append(f"{whose} surrogate is {lif.surrogate.kind}, the cores' "
                        f"{config.surrogate} (generate with surrogate={lif.surrogate.kind!r})")
    if lif.reset != config.reset:
        problems.append(f"{whose} reset is {lif.reset}, the cores' {config.reset} (generate "
                        f"with reset={lif.reset!r})")
    if lif.detach_reset != config.detach_reset:
        problems.append(f"{whose} detach_reset is {lif.detach_reset}, the cores' "
                        f"{config.detach_reset}")
    return problems


def _steps_problem(steps: int, config: AcceleratorConfig, what: str) -> list:
    if steps <= config.timesteps:
        return []
    return [f"{what} {steps} steps a sample, the cores keep BP state for at most "
            f"{config.timesteps} (generate with timesteps={steps} or more)"]


def compile_network(network: Network, config: AcceleratorConfig, *, timesteps: int) -> Program:
    """Place ``network`` on ``config``'s cores; raise :class:`ConfigError` if it does not fit."""
    kind = getattr(network, "kind", type(network).__name__)
    if kind == "qk":
        return _compile_qk(network, config, timesteps)
    if kind not in DEVICE_MODELS:
        raise ConfigError(f"the {kind} model does not map onto the accelerator's cores; the "
                          f"compiler places {' and '.join(DEVICE_MODELS)} models")
    problems = _lif_problems(network.lif, config)
    problems += _steps_problem(timesteps, config, f"{timesteps} timesteps take")
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
            registers = _lif_registers(network, config, hi - lo, f, timesteps)
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


def _compile_qk(network, config: AcceleratorConfig, timesteps: int) -> Program:
    """Unit 0 of the Q-K units and its cores 0 .. 3 (see :class:`AcceleratorConfig`)."""
    T, n, d, f, classes = (timesteps, network.tokens, network.dim, network.features,
                           network.classes)
    problems = _lif_problems(network.lif, config)
    problems += _lif_problems(network.attention_lif, config, "the attention neurons'")
    if not config.qk_units:
        problems.append("the qk model needs a Q-K unit and the accelerator has none (generate "
                        "with qk_units=1 and cores=4 or more)")
    problems += _steps_problem(T * n, config, f"{T} timesteps of {n} tokens take")
    tokens = config.qk_args()["tokens"]
    if config.qk_units and n > tokens:
        problems.append(f"the attention takes {n} tokens a timestep, a Q-K unit at most "
                        f"{tokens} (generate with qk_tokens={n})")
    if 2 * d > config.neurons:
        step = 2 * config.lanes
        problems.append(f"[Wq; Wk] has {2 * d} neurons, a core at most {config.neurons} "
                        f"(generate with neurons={-(-2 * d // step) * step})")
    if d % config.lanes:
        problems.append(f"the attention's {d} channels must be a multiple of lanes "
                        f"({config.lanes})")
    if classes > min(config.neurons, EVENT_INDEX + 1):
        problems.append(f"the head has {classes} neurons, a core at most {config.neurons}")
    if max(f, n * d) > config.fan_in:
        problems.append(f"the head takes {n} tokens of {d} channels ({n * d} inputs) and the "
                        f"embedding {f}, a core at most {config.fan_in} inputs (generate with "
                        f"fan_in={-(-max(f, n * d) // config.lanes) * config.lanes})")
    if problems:
        raise ConfigError("the network does not fit the accelerator: " + "; ".join(problems))

    w = network.weights
    steps = {Reg.TIMESTEPS: T * n, Reg.TOKENS: n}
    layers = [  # layer, weights, extra registers, stacked weights
        ("embed", w["embed"], {**steps, Reg.SHORTCUT: Shortcut.SOURCE}, ()),
        ("q+k", torch.cat([w["q"], w["k"]]), steps, (("q", (0, d)), ("k", (d, 2 * d)))),
        ("proj", w["proj"], {**steps, Reg.SHORTCUT: Shortcut.TARGET}, ()),
        ("head", w["head"], {Reg.IN_TOKENS: n, Reg.IN_STRIDE: d}, ()),
    ]
    cores = []
    for core, (name, weights, extra, stack) in enumerate(layers):
        rows, inputs = weights.shape
        registers = _lif_registers(network, config, rows, inputs, T)
        registers.update(extra)
        registers[Reg.BP_INPUT_ERROR] = int(core > 0)
        cores.append(CoreProgram(name, core, rows, inputs, registers, fp16.to_fp16(weights),
                                 (0, rows), stack=stack))
    att = network.attention_lif.constants(FP16())
    unit = [ATTENTIONS.index(network.attention), n, d, T] + [
        int(fp16.bits(att[k])) for k in ("v_th", "v_reset", "inv_tau", "decay")]
    links = [Link.FP_TO_NEXT, Link.FP_TO_NEXT | Link.BP_TO_PREV,
             Link.FP_TO_NEXT | Link.BP_TO_PREV, Link.BP_TO_PREV]
    return Program(config, T, cores, [int(link) for link in links], tokens=n, unit=unit)
