# SPDX-License-Identifier: Apache-2.0
"""Training and inference on a device: the virtual board or an FPGA, through the driver.

:class:`DeviceBackend` is the device twin of :class:`~spikeforge.train.GoldenBackend`. The
network's layers run on the cores of the chain (:func:`~spikeforge.gen.compiler.compile_network`):
the host streams a sample's input spikes to the first core, reads the last core's output spikes,
computes the loss and streams the error of every output spike back; the cores run FP, BP, WG and
the SGD update, passing spikes and errors between them on the chip. A batch accumulates its
gradient on the device and is applied by one update with the learning rate divided by the batch
size, as :class:`~spikeforge.train.GoldenBackend` does, so the device's weights are the golden
model's in FP16, bit for bit. The ``qk`` model runs on a Q-K unit and its four cores: the host
streams a sample's tokens a timestep one after another and sees only the head's output.
"""

import time
from dataclasses import asdict

import torch

from spikeforge.gen.compiler import DEVICE_MODELS, Program, compile_network

from .driver import Board
from .errors import ConfigError, ShapeError
from .golden import fp16
from .golden.arith import FP16
from .golden.network import Network
from .protocol import BROADCAST, EVENT_INDEX, EVENT_LAST, EVENT_SPIKE, MAX_WORDS, event_word
from .regmap import Command, Reg, Region, Status, address, index_bits, state_offset, weight_offset

__all__ = ["DeviceBackend", "accelerator_config", "decode_events", "encode_events",
           "open_backend"]


def encode_events(spikes: torch.Tensor) -> list[int]:
    """Event words of one sample's spikes ``[T, inputs]``: each timestep's spiking inputs in
    ascending order, then an element that closes it.

    >>> encode_events(torch.tensor([[0., 1., 1.], [0., 0., 0.]]))
    [16385, 16386, 32768, 32768]
    """
    words = []
    for row in spikes:
        words += [event_word(int(i)) for i in torch.nonzero(row).flatten()]
        words.append(event_word(0, spike=False, last=True))
    return words


def decode_events(words, timesteps: int, neurons: int) -> torch.Tensor:
    """Spikes ``[T, neurons]`` from output event words (the inverse of :func:`encode_events`)."""
    out = torch.zeros(timesteps, neurons)
    t = 0
    for word in words:
        if t == timesteps:
            raise ShapeError(f"the device sent output events after the last of {timesteps} "
                             f"timesteps")
        if word & EVENT_SPIKE:
            index = word & EVENT_INDEX
            if index >= neurons:
                raise ShapeError(f"the device sent a spike of neuron {index}; the layer has "
                                 f"{neurons}")
            out[t, index] = 1
        if word & EVENT_LAST:
            t += 1
    return out


class _Counter32:
    """The running total of a 32-bit device counter read now and then: its wraps are undone if it
    is read at least once a wrap.

    >>> c = _Counter32()
    >>> c.update(0xFFFF_FFF0), c.update(0x10)
    (4294967280, 4294967312)
    """

    def __init__(self):
        self.total = 0
        self.seen = 0

    def update(self, now: int) -> int:
        self.total += (now - self.seen) % (1 << 32)
        self.seen = now
        return self.total


class DeviceBackend:
    """Trains and runs a :class:`~spikeforge.golden.network.SpikingMLP` or a
    :class:`~spikeforge.golden.network.QKNet` on a board.

    Parameters
    ----------
    board : Board
        A connected board (:meth:`Board.connect`).
    network : Network
        The network, whose weights are loaded into the cores; :attr:`network` reads them back.
    timesteps : int
        Timesteps of every sample.
    """

    precision = "fp16"

    def __init__(self, board: Board, network: Network, timesteps: int, name: str = "device"):
        from spikeforge.gen.config import AcceleratorConfig

        self.board = board
        self.name = name
        self.config = AcceleratorConfig.from_identity(board.identity or board.sync())
        self._network = network.to(FP16())
        self.program: Program = compile_network(self._network, self.config, timesteps=timesteps)
        self.timesteps = timesteps
        self.samples = 0
        self.seconds = 0.0
        self._lr_bits = None
        self._cycles = _Counter32()
        self._active = _Counter32()
        self.batches = []
        self.load()

    # ---- loading and reading back ----------------------------------------------------------
    def load(self) -> None:
        """Write the program: registers, weights and routing; clear gradients and counters."""
        b, prog = self.board, self.program
        for core in range(self.config.cores):
            b.set_reg(core, Reg.ERRORS, 0xFFFF)
        for cp in prog.cores:
            for reg, value in cp.registers.items():
                b.set_reg(cp.core, reg, value)
            for offset, words in prog.weight_rows(cp):
                b.write(cp.core, address(Region.WEIGHT, offset), words)
        self._command_all(Command.CLEAR_GRAD)
        self._wait_idle()
        self._command_all(Command.CLEAR_COUNTERS)
        for cp, link in zip(prog.cores, prog.links, strict=True):
            b.set_link(cp.core, link)
        for core in range(len(prog.cores), self.config.cores):
            b.set_link(core, 0)
        if prog.unit:
            b.set_qk_unit(0, prog.unit)
        self._lr_bits = None
        self._cycles.seen = 0                   # CLEAR_COUNTERS zeroed the cores' counters
        self._active.seen = b.link_counters()["active_cycles"]

    def read_weights(self, region: Region = Region.WEIGHT) -> dict:
        """Every weight matrix as the device holds it (binary16), its cores' rows joined, by
        the network's names; ``Region.GRAD`` gives the gradients accumulated so far."""
        weights = {}
        fan_in = self.config.fan_in
        for layer, parts in self.program.layers().items():
            blocks = []
            for cp in parts:
                if cp.inputs == 1 << index_bits(fan_in):     # whole rows, one after another
                    words = self.board.read(cp.core, address(region),
                                            weight_offset(cp.neurons, 0, fan_in=fan_in))
                else:                           # a row's inputs, row by row: no padding read
                    words = [w for n in range(cp.neurons) for w in self.board.read(
                        cp.core, address(region, weight_offset(n, 0, fan_in=fan_in)),
                        cp.inputs)]
                blocks.append(torch.tensor(words, dtype=torch.int32).reshape(cp.neurons, -1))
            weights[layer] = fp16.from_bits(torch.cat(blocks))
        return self.program.network_weights(weights)

    def read_states(self) -> dict:
        """Every layer's charges and spikes ``(H, S)`` of the last sample, ``[steps, neurons]``
        (binary16, and 0/1), by the network's names: what the cores saved for BP."""
        neurons = self.config.neurons
        state = {Region.CHARGE: {}, Region.SPIKE: {}}
        for region, layers in state.items():
            for layer, parts in self.program.layers().items():
                blocks = []                     # [neurons, steps] a core, lowest neurons first
                for cp in parts:
                    words = [self.board.read(cp.core, address(region, state_offset(
                                 step, 0, neurons=neurons)), cp.neurons)
                             for step in range(cp.registers[Reg.TIMESTEPS])]
                    blocks.append(torch.tensor(words, dtype=torch.int32).T)
                layers[layer] = torch.cat(blocks)
        charges = self.program.network_weights(state[Region.CHARGE])
        spikes = self.program.network_weights(state[Region.SPIKE])
        return {name: (fp16.from_bits(charges[name].T), spikes[name].T.to(torch.float16))
                for name in charges}

    @property
    def network(self) -> Network:
        """The network with the device's current weights."""
        self._network.load_state_dict(self.read_weights())
        return self._network

    def load_state_dict(self, weights: dict) -> None:
        """Load other weights (a checkpoint's) into the network and the device."""
        self._network.load_state_dict(weights)
        self.program = compile_network(self._network, self.config, timesteps=self.timesteps)
        self.load()

    def counters(self) -> dict:
        """Every placed core's performance counters, by layer (and neurons, where split)."""
        return {cp.name: self.board.counters(cp.core) for cp in self.program.cores}

    def cycles(self) -> int:
        """Device cycles since the program was loaded (the 32-bit counter's wraps undone, if
        read at least once a wrap)."""
        return self._cycles.update(self.board.counters(self.program.first)["cycles"])

    def active_cycles(self) -> int:
        """Device cycles since the program was loaded in which a core worked: :meth:`cycles`
        without those in which every core waited for the host (wraps undone as there)."""
        return self._active.update(self.board.link_counters()["active_cycles"])

    def stats(self) -> dict:
        """What a run's report needs from the device."""
        cycles, link = self.cycles(), self.board.link_counters()
        return {"device_cycles": cycles, "device_samples": self.samples,
                "device_cycles_per_sample": cycles / max(self.samples, 1),
                "device_active_cycles": self._active.update(link["active_cycles"]),
                "device_seconds": self.seconds, "counters": self.counters(),
                "link": link, "accelerator": asdict(self.config),
                "layers": [{"layer": cp.name, "core": cp.core, "neurons": cp.neurons,
                            "inputs": cp.inputs, "steps": cp.registers[Reg.TIMESTEPS]}
                           for cp in self.program.cores],
                "batches": self.batches}

    # ---- one sample ------------------------------------------------------------------------
    def _wait(self, core: int, flag: Status, what: str, limit: float = 60.0) -> None:
        deadline = time.monotonic() + limit
        while not self.board.reg(core, Reg.STATUS) & flag:
            if time.monotonic() > deadline:
                raise ConfigError(f"core {core} did not finish {what} within {limit:g} s")

    def _wait_idle(self) -> None:
        deadline = time.monotonic() + 60.0
        for cp in self.program.cores:
            while self.board.reg(cp.core, Reg.STATUS) & Status.BUSY:
                if time.monotonic() > deadline:
                    raise ConfigError(f"core {cp.core} stayed busy for a minute")

    def _command_all(self, command: Command) -> None:
        """``command`` to every placed core: one broadcast when the network fills the chip."""
        if len(self.program.cores) == self.config.cores:
            self.board.core_command(BROADCAST, command)
        else:
            for cp in self.program.cores:
                self.board.core_command(cp.core, command)

    def _forward_sample(self, x: torch.Tensor) -> torch.Tensor:
        """Output spikes ``[T, classes]`` of one sample ``[T, inputs]`` (``[T, tokens,
        features]``: the tokens of a timestep one after another)."""
        prog, b = self.program, self.board
        self._command_all(Command.BEGIN)
        b.spikes_in(prog.first, encode_events(x.reshape(-1, prog.inputs)))
        words, closed = [], 0
        deadline = time.monotonic() + 60.0
        while closed < self.timesteps:
            got = b.spikes_out(prog.last, MAX_WORDS)
            words += got
            closed += sum(1 for w in got if w & EVENT_LAST)
            if not got and time.monotonic() > deadline:
                raise ConfigError(f"the last core produced {closed} of {self.timesteps} "
                                  f"timesteps of output within a minute")
        return decode_events(words, self.timesteps, prog.outputs)

    def _check(self, x: torch.Tensor) -> torch.Tensor:
        prog = self.program
        sample = (prog.inputs,) if prog.tokens == 1 else (prog.tokens, prog.inputs)
        if x.dim() != 2 + len(sample) or x.shape[0] != self.timesteps or \
                tuple(x.shape[2:]) != sample:
            shape = ", ".join(map(str, sample))
            raise ShapeError(f"device input must be spikes [T={self.timesteps}, B, {shape}], "
                             f"not {tuple(x.shape)}")
        if not ((x == 0) | (x == 1)).all():
            raise ShapeError("device input must be binary spikes (use the rate encoder)")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Output spikes ``[T, B, classes]`` of input spikes ``[T, B, inputs]``."""
        x = self._check(x)
        start = time.monotonic()
        out = torch.stack([self._forward_sample(x[:, i]) for i in range(x.shape[1])], 1)
        self.samples += x.shape[1]
        self.seconds += time.monotonic() - start
        return out

    def _set_lr(self, lr: float) -> None:
        lr_bits = int(fp16.bits(FP16().cast(lr)))
        if lr_bits != self._lr_bits:
            for cp in self.program.cores:
                self.board.set_reg(cp.core, Reg.LR, lr_bits)
            self._lr_bits = lr_bits

    def _backward_sample(self, out: torch.Tensor, label: torch.Tensor) -> None:
        """Stream the error of a sample's output spikes ``[T, classes]`` to the last core and
        wait until back-propagation (and WG) have reached the first."""
        from .train import rate_loss

        prog, P = self.program, self.config.lanes
        beats = -(-prog.outputs // P)
        _, grad = rate_loss(out[:, None], label.reshape(1))
        bits = fp16.bits(fp16.to_fp16(grad[:, 0])).tolist()
        words = []
        for t in reversed(range(self.timesteps)):
            words += bits[t] + [0] * (beats * P - prog.outputs)
        self.board.errors_in(prog.last, beats, words)
        self._wait(prog.first, Status.BP_DONE, "back-propagation")

    def trace(self, weights: dict, x: torch.Tensor, y: torch.Tensor, lr: float):
        """Train one batch from ``weights`` sample by sample and yield what the device holds
        after each step (:func:`spikeforge.lockstep.golden_trace` yields the same for the
        golden model): ``("state", i, {name: (H, S)})`` after sample ``i``'s forward pass,
        ``("grad", i, {name: ΔW})`` after its back-propagation and ``("weight", None,
        {name: W})`` after the update. The device's gradients and counters start afresh."""
        x = self._check(x)
        self.load_state_dict(weights)
        self._set_lr(lr / len(y))
        for i in range(x.shape[1]):
            out = self._forward_sample(x[:, i])
            yield "state", i, self.read_states()
            self._backward_sample(out, y[i])
            yield "grad", i, self.read_weights(Region.GRAD)
        self._command_all(Command.UPDATE)
        self._wait_idle()
        yield "weight", None, self.read_weights()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float):
        """One batch: FP, BP and WG per sample on the device, then one SGD update."""
        from .train import rate_loss

        x = self._check(x)
        start = time.monotonic()
        self._set_lr(lr / len(y))
        outs = []
        cycles_before = self.cycles()
        for i in range(x.shape[1]):
            outs.append(self._forward_sample(x[:, i]))
            self._backward_sample(outs[-1], y[i])
        self._command_all(Command.UPDATE)
        self._wait_idle()
        out = torch.stack(outs, 1)
        loss, _ = rate_loss(out, y)
        self.samples += len(y)
        self.batches.append({"samples": len(y), "input_rate": float(x.mean()),
                             "output_rate": float(out.mean()),
                             "cycles": self.cycles() - cycles_before})
        self.seconds += time.monotonic() - start
        return out, loss

    def raster(self, x: torch.Tensor) -> dict:
        """Every layer's spikes ``S[t]`` ``[T, neurons]`` for one input sample ``[T, inputs]``,
        read from the cores' saved state after its forward pass; a layer of tokens gives each
        timestep its tokens' spikes one after another, ``[T, tokens · neurons]``."""
        self._check(x[:, None])
        self._forward_sample(x)
        layers = {"input": x.int().reshape(self.timesteps, -1).tolist()}
        for layer, parts in self.program.layers().items():
            rows = [[] for _ in range(self.timesteps)]
            for cp in parts:
                steps = cp.registers[Reg.TIMESTEPS]
                for step in range(steps):
                    rows[step * self.timesteps // steps] += self.board.read(
                        cp.core, address(Region.SPIKE, state_offset(
                            step, 0, neurons=self.config.neurons)), cp.neurons)
            layers[layer] = rows
        return layers


def accelerator_config(path=None, timesteps: int = 8, model: str = "mlp", lif=None):
    """The accelerator of a virtual board: from a JSON file, or the default one with room for
    ``timesteps`` of ``model`` (the ``qk`` model of the digits: a Q-K unit, four cores, 8
    tokens of 32 channels a timestep) and neurons of ``lif``'s reset and surrogate."""
    from spikeforge.gen.config import AcceleratorConfig

    if path:
        return AcceleratorConfig.load(path)
    neurons = {} if lif is None else {"reset": lif.reset, "detach_reset": lif.detach_reset,
                                      "surrogate": lif.surrogate.kind}
    if model == "qk":
        return AcceleratorConfig(cores=4, neurons=64, fan_in=256, lanes=8,
                                 timesteps=max(8, 8 * timesteps), qk_units=1, qk_tokens=8,
                                 **neurons)
    return AcceleratorConfig(timesteps=max(8, timesteps), **neurons)


def open_backend(name: str, cfg, stack, config_path=None, accelerator: dict | None = None):
    """The backend ``name`` (``golden``, ``sim`` or a board URL) for the training configuration
    ``cfg``: None for the golden model, else a device backend whose board (and virtual board)
    ``stack`` closes. A virtual board is built from ``config_path``, else from the fields of
    ``accelerator``, else for ``cfg``."""
    if name == "golden":
        return None
    if cfg.model not in DEVICE_MODELS:
        raise ConfigError(f"the {cfg.model} model runs on the golden model only: the cores "
                          f"have no convolution yet (device models: {', '.join(DEVICE_MODELS)})")
    if name == "sim":
        from spikeforge.gen.config import AcceleratorConfig
        from spikeforge.gen.vboard import VirtualBoard

        if accelerator and not config_path:
            config = AcceleratorConfig(**accelerator)
        else:
            config = accelerator_config(config_path, cfg.timesteps, cfg.model, cfg.lif())
        url = stack.enter_context(VirtualBoard(config)).url
    elif name.startswith(("tcp://", "serial://", "/dev/")):
        url = name
    else:
        raise ConfigError(f"backend must be golden, sim, tcp://HOST:PORT or "
                          f"serial://DEVICE, not {name!r}")
    board = stack.enter_context(Board.connect(url))
    return DeviceBackend(board, cfg.build(), cfg.timesteps, name=name)
