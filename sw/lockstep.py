# SPDX-License-Identifier: Apache-2.0
"""Training in lockstep with the FP16 golden model: every batch compared bit for bit.

:class:`Lockstep` wraps the backend of a run (a device, or any backend that claims the FP16
golden model's bits) and trains an FP16 golden network beside it from the same weights. After
every batch it compares each sample's output spikes, the loss and every weight after the update;
every evaluation's output spikes too. At the first difference it replays the batch from the
weights both held before it, sample by sample, and compares what each step leaves behind: every
layer's charges ``H[t]`` and spikes ``S[t]`` after a sample's forward pass, the gradients
``ΔW`` accumulated after its back-propagation (the errors ``δX`` each layer received, summed
with its input spikes) and the weights after the update. The first of those that differs is
reported as a :class:`Difference` (epoch, batch, sample, layer, timestep and token, the index
and both values with their bit patterns), and the batch is saved as a replay case that
:func:`replay` runs again on any backend.

Both sides yield the same trace (:meth:`~spikeforge.device.DeviceBackend.trace`,
:func:`golden_trace`): ``("state", i, {name: (H, S)})``, ``("grad", i, {name: ΔW})`` for each
sample ``i`` and ``("weight", None, {name: W})`` at the end, with ``H`` and ``S`` as
``[steps, neurons]`` (a token-wise layer's steps are its timesteps' tokens, one after another).

>>> import torch
>>> d = first_difference("weight", "fc0", torch.tensor([[1.0, 2.0]]).half(),
...                      torch.tensor([[1.0, 2.001]]).half())
>>> d.index, hex(d.device_bits), hex(d.golden_bits)
((0, 1), '0x4000', '0x4001')
"""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .checkpoint import load_saved
from .errors import ConfigError, SpikeforgeError
from .golden import fp16
from .golden.arith import FP16
from .golden.network import Network

__all__ = ["Difference", "GoldenMismatch", "Lockstep", "compare_trace", "first_difference",
           "golden_trace", "layer_tokens", "load_case", "replay"]

FORMAT = "spikeforge-replay-1"


@dataclass
class Difference:
    """The first value in which a backend and the golden model part."""

    what: str                   # output, loss, state, charge, spike, grad, weight
    layer: str | None
    index: tuple                # within the layer's tensor ([steps, neurons] or [out, in])
    device: float
    golden: float
    device_bits: int | None = None      # binary16 bit patterns, for FP16 values
    golden_bits: int | None = None
    epoch: int | None = None
    batch: int | None = None
    sample: int | None = None   # within the batch
    timestep: int | None = None
    token: int | None = None

    def where(self) -> str:
        parts = [f"{name} {value}" for name, value in (
            ("epoch", self.epoch), ("batch", self.batch), ("sample", self.sample),
            ("timestep", self.timestep), ("token", self.token)) if value is not None]
        return ", ".join(parts) or "before training"

    def __str__(self) -> str:
        what = {"charge": "the charge H", "spike": "the spike S", "grad": "the gradient ΔW",
                "weight": "the weight", "output": "the output spike", "loss": "the loss"}
        value = f"{what.get(self.what, self.what)}"
        if self.what in ("charge", "spike", "output"):
            value += f" of {self.layer} neuron {self.index[-1]}"
        elif self.layer:
            value += f" of {self.layer}{list(self.index)}"
        if self.device_bits is not None:
            return (f"{self.where()}: {value} is {self.device!r} (0x{self.device_bits:04x}) on "
                    f"the device, {self.golden!r} (0x{self.golden_bits:04x}) in the golden model")
        return (f"{self.where()}: {value} is {self.device!r} on the device, {self.golden!r} in "
                f"the golden model")


class GoldenMismatch(SpikeforgeError):
    """A backend parted from the FP16 golden model; ``difference`` says where, ``case`` is the
    saved replay case (or None)."""

    def __init__(self, difference: Difference, case: Path | None = None, note: str = ""):
        self.difference = difference
        self.case = case
        message = f"the device parted from the FP16 golden model at {difference}"
        if note:
            message += f" ({note})"
        if case:
            message += f"; the batch is saved in {case}: replay it with spikeforge replay {case}"
        super().__init__(message)


def first_difference(what: str, layer: str | None, device: torch.Tensor,
                     golden: torch.Tensor) -> Difference | None:
    """The first element (row-major) in which two tensors differ, by bits for binary16 ones."""
    if device.shape != golden.shape:
        raise ConfigError(f"{what} of {layer} is {tuple(device.shape)} on the device and "
                          f"{tuple(golden.shape)} in the golden model")
    half = golden.dtype == torch.float16
    a, b = (fp16.bits(device), fp16.bits(golden)) if half else (device, golden)
    differ = torch.nonzero((a != b).reshape(-1))
    if not len(differ):
        return None
    flat = int(differ[0])
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), golden.shape))
    return Difference(what, layer, index, float(device.reshape(-1)[flat]),
                      float(golden.reshape(-1)[flat]),
                      int(a.reshape(-1)[flat]) if half else None,
                      int(b.reshape(-1)[flat]) if half else None)


def _earliest(differences: list, tokens: dict) -> Difference | None:
    """Of each layer's first difference in a sample's state, the one that comes first in the
    device's time: earliest timestep, then the layer nearest the input."""
    best = None
    for order, d in enumerate(differences):
        if d is None:
            continue
        steps = tokens.get(d.layer, 1)
        d.timestep, token = divmod(d.index[0], steps)
        d.token = token if steps > 1 else None
        key = (d.timestep, order, d.token or 0, d.index[1])
        if best is None or key < best[0]:
            best = (key, d)
    return best and best[1]


def compare_trace(device_trace, golden_trace_, tokens: dict) -> Difference | None:
    """The first difference between two traces (see the module's docstring), or None."""
    for (kind, i, dev), (_, j, gold) in zip(device_trace, golden_trace_, strict=True):
        assert i == j
        if kind == "state":
            found = []
            for name in gold:
                for what, d, g in (("charge", dev[name][0], gold[name][0]),
                                   ("spike", dev[name][1], gold[name][1])):
                    found.append(first_difference(what, name, d, g))
            d = _earliest(found, tokens)
        else:
            # BP runs from the output layer back: its gradients are the first to go wrong.
            d = next((d for name in reversed(list(gold))
                      if (d := first_difference(kind, name, dev[name], gold[name]))), None)
        if d is not None:
            d.sample = i
            return d
    return None


def golden_trace(network: Network, x: torch.Tensor, y: torch.Tensor, lr: float):
    """What a device holds after each step of a batch (see the module's docstring), as the
    golden ``network`` computes it; ``network`` is updated as by the batch."""
    from .train import rate_loss

    out, cache = network.forward(x)
    for i in range(x.shape[1]):
        states = {}
        for name, (h, s) in network.states(cache).items():
            states[name] = (h[:, i].reshape(-1, h.shape[-1]), s[:, i].reshape(-1, s.shape[-1]))
        yield "state", i, states
        # The gradients accumulate sample after sample: those of the samples up to i.
        _, prefix = network.forward(x[:, :i + 1])
        _, grad = rate_loss(out[:, :i + 1], y[:i + 1])
        yield "grad", i, network.backward(prefix, network.arith.cast(grad))
    _, grad = rate_loss(out, y)
    network.update(network.backward(cache, network.arith.cast(grad)), lr / len(y))
    yield "weight", None, network.state_dict()


def layer_tokens(network: Network) -> dict:
    """Steps a timestep of each token-wise layer's state."""
    if getattr(network, "kind", "") == "qk":
        return dict.fromkeys(("embed", "q", "k", "proj"), network.tokens)
    return {}


class Lockstep:
    """``backend`` trained with an FP16 golden network beside it, compared every batch.

    Parameters
    ----------
    backend
        The backend under test: ``train_step``, ``forward``, ``network``, ``load_state_dict``
        and ``trace`` (a :class:`~spikeforge.device.DeviceBackend`, or a
        :class:`~spikeforge.train.GoldenBackend` in FP16).
    network : Network
        The run's golden network, in any precision: rounded once to FP16 it is the golden
        model, and ``backend`` must start from its weights.
    cases : path
        Folder for the replay case saved at a difference.
    cfg : TrainConfig, optional
        The run's configuration, saved with a replay case so that :func:`replay` can build
        the network again.
    """

    def __init__(self, backend, network: Network, cases: str | Path = ".", cfg=None):
        from .train import GoldenBackend

        precision = getattr(backend, "precision", None) or backend.network.arith.name
        if precision != "fp16":
            raise ConfigError("the golden check compares FP16 bits: check a device, or the "
                              "golden model in fp16 precision, not one in " + precision)
        self.backend = backend
        self.cfg = cfg
        self.golden = GoldenBackend(network.to(FP16()))
        self.cases = Path(cases)
        self.epoch = self.batch = None
        self.batches = 0
        self.name = getattr(backend, "name", "golden")
        self.precision = precision
        self.check_weights("before training")

    @property
    def reference(self) -> Network:
        return self.golden.network

    # ---- what train() uses -----------------------------------------------------------------
    @property
    def network(self) -> Network:
        return self.backend.network

    def load_state_dict(self, weights: dict) -> None:
        self.backend.load_state_dict(weights)
        self.golden.load_state_dict(weights)
        self.check_weights("after loading a checkpoint")

    def stats(self) -> dict:
        stats = self.backend.stats() if hasattr(self.backend, "stats") else {}
        return {**stats, "golden_checked_batches": self.batches}

    def raster(self, x):
        return self.backend.raster(x)

    def at(self, epoch: int, batch: int) -> None:
        """Where the next batch stands in the run (1-based), for the reports."""
        self.epoch, self.batch = epoch, batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.backend.forward(x)
        d = _output_difference(out, self.golden.forward(x))
        if d is not None:
            self._fail(d, note="in an evaluation, with the weights of the last batch")
        return out

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float):
        before = self.reference.state_dict()
        out, loss = self.backend.train_step(x, y, lr)
        expected, expected_loss = self.golden.train_step(x, y, lr)
        d = _output_difference(out, expected)
        if d is None and loss != expected_loss:
            d = Difference("loss", None, (), loss, expected_loss)
        if d is None:
            d = self._weight_difference()
        if d is not None:
            self._localize(d, before, x, y, lr)
        self.batches += 1
        return out, loss

    def check_weights(self, when: str) -> None:
        """Compare the backend's weights with the golden model's now."""
        d = self._weight_difference()
        if d is not None:
            self._fail(d, note=when)

    # ---- at a difference -------------------------------------------------------------------
    def _weight_difference(self) -> Difference | None:
        weights = self.backend.network.state_dict()
        # From the output layer back, as BP produces the gradients.
        for name, w in reversed(self.reference.weights.items()):
            d = first_difference("weight", name, weights[name].to(torch.float16), w)
            if d is not None:
                return d
        return None

    def _fail(self, d: Difference, case: Path | None = None, note: str = ""):
        if self.epoch is not None:
            d.epoch, d.batch = self.epoch, self.batch
        raise GoldenMismatch(d, case, note)

    def _localize(self, found: Difference, before: dict, x, y, lr: float):
        """Replay the batch from ``before`` on both sides, step by step, and fail at the first
        difference (``found`` if the replay shows none)."""
        network = self.reference.to(FP16())
        network.load_state_dict(before)
        d = compare_trace(self.backend.trace(before, x, y, lr),
                          golden_trace(network, x, y, lr), layer_tokens(network))
        note = "" if d is not None else (
            f"the batch replayed from the weights before it matched step by step; the run "
            f"first differed in {found.what}")
        case = self._save_case(d or found, before, x, y, lr)
        self._fail(d or found, case, note)

    def _save_case(self, d: Difference, before: dict, x, y, lr: float) -> Path:
        self.cases.mkdir(parents=True, exist_ok=True)
        path = self.cases / f"mismatch-epoch{self.epoch}-batch{self.batch}.pt"
        accelerator = getattr(self.backend, "config", None)
        config = asdict(self.cfg) if self.cfg is not None else None
        torch.save({"format": FORMAT, "config": config, "weights": before,
                    "x": x.to(torch.uint8), "y": y, "lr": lr, "epoch": self.epoch,
                    "batch": self.batch, "difference": asdict(d),
                    "accelerator": asdict(accelerator) if accelerator else None}, path)
        return path


def _output_difference(out: torch.Tensor, expected: torch.Tensor) -> Difference | None:
    d = first_difference("output", "output", out.to(expected.dtype), expected)
    if d is not None:
        d.timestep, d.sample = d.index[0], d.index[1]
        d.index = d.index[2:]
    return d


def load_case(path) -> dict:
    """A replay case saved by :class:`Lockstep`."""
    return load_saved(path, FORMAT, "replay case", "train with --check-golden to make one")


def replay(case: dict, backend, network: Network | None = None) -> Difference | None:
    """Train a saved case's batch on ``backend`` beside the golden model (``network``, or the
    one the case's training configuration builds), step by step; return the first difference,
    or None if every step is the golden model's."""
    from .train import TrainConfig

    if network is None:
        if case["config"] is None:
            raise ConfigError("the replay case holds no training configuration; give the "
                              "network it was trained with")
        network = TrainConfig(**case["config"]).build()
    network = network.to(FP16())
    network.load_state_dict(case["weights"])
    x = case["x"].to(torch.float32)
    d = compare_trace(backend.trace(case["weights"], x, case["y"], case["lr"]),
                      golden_trace(network, x, case["y"], case["lr"]), layer_tokens(network))
    if d is not None:
        d.epoch, d.batch = case["epoch"], case["batch"]
    return d
