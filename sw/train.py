# SPDX-License-Identifier: Apache-2.0
"""Training and evaluation loops, the same for every backend.

The host's share of training is what it is on the device: encode the inputs as spikes, read the
output spikes, compute the loss from the output firing rates and send back the error of every
output spike, ``∂L/∂S[t]``. A backend does the rest (FP, BP, WG and the SGD update): the golden
model in float or hardware-exact FP16, or a board.

The loss is the squared error between each output neuron's firing rate and the one-hot label,
summed over classes and averaged over the batch (spikingjelly's rate-coded MSE). The gradient a
backend receives is per sample, without the batch mean; the backend's learning rate is divided
by the batch size instead, as the device's lr register is.
"""

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from .checkpoint import load_checkpoint, save_checkpoint
from .data import DATASETS, ENCODERS, IMAGES, encode, load_dataset
from .errors import ConfigError
from .golden.arith import arith_for
from .golden.lif import LIFParams
from .golden.network import MODELS, Network, build_model
from .golden.qk import ATTENTIONS, attention_lif_params
from .golden.surrogate import Surrogate

__all__ = ["GoldenBackend", "TrainConfig", "evaluate", "rate_loss", "train"]


@dataclass
class TrainConfig:
    model: str = "mlp"
    dataset: str = "digits"
    epochs: int = 10
    timesteps: int = 8
    batch_size: int = 16
    lr: float = 1.0
    init_gain: float = 3.0
    encoder: str = "rate"
    precision: str = "float"
    surrogate: str = "sigmoid"
    reset: str = "hard"
    tau: float = 2.0
    attention: str = "token"
    hidden: int = 128
    seed: int = 0

    def __post_init__(self):
        if self.model not in MODELS:
            raise ConfigError(f"model must be one of {', '.join(MODELS)}, not {self.model!r}")
        for name in ("epochs", "timesteps", "batch_size", "hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, not {value!r}")
        for name in ("lr", "init_gain", "tau"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, not {value!r}")
        for name, allowed in (("dataset", DATASETS), ("encoder", ENCODERS),
                              ("attention", ATTENTIONS)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, "
                                  f"not {getattr(self, name)!r}")
        self.lif()
        if self.encoder == "direct" and self.precision != "float":
            raise ConfigError("the direct encoder feeds currents, which only float precision "
                              "takes; use --encoder rate with --precision fp16 or a device")
        arith_for(self.precision)

    def lif(self) -> LIFParams:
        return LIFParams(tau=self.tau, reset=self.reset, surrogate=Surrogate(self.surrogate))

    def build(self) -> Network:
        kwargs = {"lif": self.lif(), "arith": arith_for(self.precision), "seed": self.seed,
                  "gain": self.init_gain}
        channels, height, width = IMAGES[self.dataset]
        if self.model == "mlp":
            return build_model("mlp", sizes=(channels * height * width, self.hidden, 10),
                               **kwargs)
        if self.model == "cnn":
            # Both stages pool an MNIST image (28 → 14 → 7) to keep the head's fan-in small.
            pool = (False, True) if height <= 8 else (True, True)
            return build_model("cnn", image=(channels, height, width), pool=pool, **kwargs)
        # The attention neuron is the network's (time constant, reset, surrogate) with QKFormer's
        # threshold of 0.5.
        attention_lif = replace(kwargs["lif"], v_th=attention_lif_params().v_th)
        return build_model("qk", tokens=height, features=width, attention=self.attention,
                           attention_lif=attention_lif, **kwargs)


def rate_loss(out: torch.Tensor, y: torch.Tensor):
    """Loss of output spikes ``[T, B, classes]`` and its gradient ``∂L_b/∂S[t]`` per sample."""
    rate = out.float().mean(0)
    target = torch.nn.functional.one_hot(y, out.shape[-1]).float()
    err = rate - target
    loss = (err ** 2).sum(1).mean()
    grad = (2 * err / out.shape[0]).expand(out.shape[0], *err.shape)
    return float(loss), grad.contiguous()


class GoldenBackend:
    """Trains a golden :class:`~spikeforge.golden.network.Network` on the host."""

    name = "golden"

    def __init__(self, network: Network):
        self.network = network

    def load_state_dict(self, weights: dict) -> None:
        self.network.load_state_dict(weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.forward(x)[0]

    def trace(self, weights: dict, x: torch.Tensor, y: torch.Tensor, lr: float):
        """Train one batch from ``weights``, yielding each step's results
        (:func:`~spikeforge.lockstep.golden_trace`)."""
        from .lockstep import golden_trace

        self.load_state_dict(weights)
        yield from golden_trace(self.network, x, y, lr)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, lr: float):
        out, cache = self.network.forward(x)
        loss, grad = rate_loss(out, y)
        grads = self.network.backward(cache, self.network.arith.cast(grad))
        self.network.update(grads, lr / len(y))
        return out, loss


def model_input(x: torch.Tensor, model: str, dataset: str = "digits") -> torch.Tensor:
    """Flat samples ``[B, pixels]`` of ``dataset`` as the model takes them: the mlp's as they
    are, the qk model's tokens are an image's rows, the cnn's input is the image."""
    image = IMAGES[dataset]
    if model == "cnn":
        return x.unflatten(-1, image)
    return x if model == "mlp" else x.unflatten(-1, image[1:])


def evaluate(backend, split, cfg: TrainConfig, seed: int = 1) -> float:
    """Accuracy on ``split``, with the rate encoder seeded so every backend sees the same spikes."""
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(split), 64):
        x = encode(model_input(split.x[i:i + 64], cfg.model, cfg.dataset), cfg.timesteps,
                   cfg.encoder, gen)
        counts = backend.forward(x).float().sum(0)
        correct += int((counts.argmax(1) == split.y[i:i + 64]).sum())
    return correct / len(split)


def _resume(path, cfg: TrainConfig, backend, gen: torch.Generator) -> tuple[int, list]:
    state = load_checkpoint(path)
    saved = {k: v for k, v in state["config"].items() if k != "epochs"}
    differ = sorted(k for k, v in saved.items() if getattr(cfg, k, None) != v)
    if differ:
        raise ConfigError(f"checkpoint {path} was trained with other settings ("
                          + ", ".join(f"{k}={saved[k]!r}" for k in differ)
                          + "); resume with the same settings")
    if "rng" not in state:
        raise ConfigError(f"checkpoint {path} has no training state to resume from")
    backend.load_state_dict(state["weights"])
    gen.set_state(state["rng"])
    return state["epoch"], list(state["history"])


def train(cfg: TrainConfig, backend=None, json_path: str | Path | None = None,
          checkpoint: str | Path | None = None, progress: bool = True,
          resume: str | Path | None = None, check_golden: str | Path | None = None) -> dict:
    """Train ``cfg`` on ``backend`` (the golden model by default); return the results.

    With ``checkpoint``, the weights and the state of the run are saved there after every
    epoch; ``resume`` continues from such a checkpoint as if the run had not stopped. With
    ``check_golden`` (a folder for replay cases), the FP16 golden model trains beside the
    backend and every batch is compared bit for bit (:class:`~spikeforge.lockstep.Lockstep`):
    the first difference raises :class:`~spikeforge.lockstep.GoldenMismatch`.
    """
    # The golden model's tensors are small: one thread runs them fastest, and does not slow to
    # a crawl when another process holds the other cores.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(cfg, backend, json_path, checkpoint, progress, resume, check_golden)
    finally:
        torch.set_num_threads(threads)


def _train(cfg: TrainConfig, backend=None, json_path: str | Path | None = None,
          checkpoint: str | Path | None = None, progress: bool = True,
          resume: str | Path | None = None, check_golden: str | Path | None = None) -> dict:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    torch.manual_seed(cfg.seed)
    train_set, test_set = load_dataset(cfg.dataset)
    backend = backend or GoldenBackend(cfg.build())
    if check_golden is not None:
        from .lockstep import Lockstep

        backend = Lockstep(backend, cfg.build(), check_golden, cfg=cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    history = []
    first = 0
    if resume:
        first, history = _resume(resume, cfg, backend, gen)
    start = time.monotonic()
    steps = (len(train_set) + cfg.batch_size - 1) // cfg.batch_size
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[status]}"), disable=not progress) as bar:
        task = bar.add_task("train", total=cfg.epochs * steps, completed=first * steps,
                            status="")
        for epoch in range(first, cfg.epochs):
            order = torch.randperm(len(train_set), generator=gen)
            loss_sum = correct = 0
            for step in range(steps):
                idx = order[step * cfg.batch_size:(step + 1) * cfg.batch_size]
                x = encode(model_input(train_set.x[idx], cfg.model, cfg.dataset), cfg.timesteps,
                           cfg.encoder, gen)
                if hasattr(backend, "at"):
                    backend.at(epoch + 1, step + 1)
                out, loss = backend.train_step(x, train_set.y[idx], cfg.lr)
                loss_sum += loss * len(idx)
                correct += int((out.float().sum(0).argmax(1) == train_set.y[idx]).sum())
                bar.update(task, advance=1, description=f"epoch {epoch + 1}/{cfg.epochs}",
                           status=f"loss {loss:.3f}")
            test_acc = evaluate(backend, test_set, cfg)
            history.append({"epoch": epoch + 1, "loss": loss_sum / len(train_set),
                            "train_accuracy": correct / len(train_set),
                            "test_accuracy": test_acc})
            bar.update(task, status=f"loss {history[-1]['loss']:.3f} test {test_acc:.3f}")
            if checkpoint:
                save_checkpoint(checkpoint, backend.network, cfg, epoch + 1, history,
                                gen.get_state())
    result = {
        "model": cfg.model,
        "dataset": cfg.dataset,
        "backend": getattr(backend, "name", "golden"),
        "precision": getattr(backend, "precision", cfg.precision),
        "epochs": cfg.epochs,
        "test_accuracy": history[-1]["test_accuracy"],
        "train_accuracy": evaluate(backend, train_set, cfg),
        "history": history,
        "wall_seconds": time.monotonic() - start,
        "config": asdict(cfg),
    }
    if hasattr(backend, "stats"):
        result.update(backend.stats())
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result
