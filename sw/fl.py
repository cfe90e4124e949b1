# SPDX-License-Identifier: Apache-2.0
"""Federated learning over Flower: one Flower client a board, FedAvg on the host.

``spikeforge fl --workers 5 --rounds R`` starts a Flower server in this process and one client
process a worker. Each worker owns a backend — the golden model, its own virtual board
(``--backend sim``) or a board URL (``--boards URL,URL,...``) — and a non-IID shard of the digits
training set (a Dirichlet split over classes). A round: every client loads the global weights,
trains ``--local-epochs`` epochs on its shard on its backend, and returns its weights and
example count; Flower's FedAvg averages them by examples; the server evaluates the average on
the test set with the golden model in the clients' precision (FP16 for boards: a board rounds
the average to FP16 when it loads it).

Flower's long-running deployment (SuperLink, SuperNodes, ``flwr run`` of a packaged app) needs
configuration files and services; the gRPC server and clients of ``flwr.compat`` run the same
FedAvg strategy from one command, which is what a bench of boards needs.
"""

import contextlib
import json
import logging
import multiprocessing
import os
import queue
import socket
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, SpikeforgeError
from .train import TrainConfig

# Flower reports usage to its servers and checks for updates unless told not to: federated
# training here talks to nothing but its own workers. Set before flwr is imported (it reads them
# at import), and inherited by the worker and server processes.
os.environ["FLWR_TELEMETRY_ENABLED"] = "0"
os.environ["FLWR_DISABLE_UPDATE_CHECK"] = "1"

__all__ = ["FLError", "dirichlet_shards", "run_fl"]


class FLError(SpikeforgeError):
    """Federated learning could not run or a worker failed."""


def dirichlet_shards(labels: torch.Tensor, workers: int, alpha: float, seed: int,
                     minimum: int = 10) -> list[list[int]]:
    """Split sample indices over ``workers`` with class proportions drawn from Dir(``alpha``);
    every shard gets at least ``minimum`` samples (draws are repeated until it does).

    >>> shards = dirichlet_shards(torch.arange(100) % 10, 3, 0.5, seed=1)
    >>> sorted(i for s in shards for i in s) == list(range(100))
    True
    """
    if not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be a positive integer, not {workers!r}")
    if not alpha > 0:
        raise ConfigError(f"alpha must be positive, not {alpha!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    if len(labels) < workers * minimum:
        raise ConfigError(f"{len(labels)} samples cannot give {workers} workers "
                          f"{minimum} each")
    for _ in range(1000):
        shards = [[] for _ in range(workers)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            cuts = (np.cumsum(rng.dirichlet([alpha] * workers))[:-1] * len(idx)).astype(int)
            for w, part in enumerate(np.split(idx, cuts)):
                shards[w] += part.tolist()
        if min(len(s) for s in shards) >= minimum:
            return [sorted(s) for s in shards]
    raise ConfigError(f"no Dirichlet split with alpha={alpha} gives every worker {minimum} "
                      f"samples; raise --alpha or lower --workers")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _quiet_flower() -> None:
    from flwr.common.logger import FLOWER_LOGGER as logger

    logger.setLevel(logging.ERROR)
    for handler in logger.handlers:
        handler.setLevel(logging.ERROR)


def _backend(kind: str, url: str | None, cfg: TrainConfig, stack: contextlib.ExitStack):
    from .device import open_backend
    from .train import GoldenBackend

    return open_backend(url if kind == "url" else kind, cfg, stack) or GoldenBackend(cfg.build())


class _Terminated(BaseException):
    """The host stopped this worker."""


def _worker(index: int, port: int, shard: list, kind: str, url: str | None, cfg_fields: dict,
            local_epochs: int, errors) -> None:
    """A client process: its backend, its shard, a Flower NumPyClient."""
    import signal

    def terminated(*_):
        raise _Terminated

    # Terminated by the host, or by Linux when the host dies: unwind, so that a virtual board is
    # stopped with its worker.
    signal.signal(signal.SIGTERM, terminated)
    from spikeforge.gen.vboard import die_with_parent

    die_with_parent()
    try:
        _quiet_flower()
        from flwr.client import NumPyClient
        from flwr.compat.client.app import start_client

        from .data import encode, load_dataset
        from .train import model_input

        cfg = TrainConfig(**cfg_fields)
        train_set, _ = load_dataset(cfg.dataset)
        x_all, y_all = train_set.x[shard], train_set.y[shard]
        with contextlib.ExitStack() as stack:
            backend = _backend(kind, url, cfg, stack)
            names = sorted(backend.network.weights)

            class Client(NumPyClient):
                def get_parameters(self, config):
                    weights = backend.network.state_dict()
                    return [weights[n].double().numpy() for n in names]

                def fit(self, parameters, config):
                    backend.load_state_dict({n: torch.from_numpy(np.array(p)) for n, p in
                                             zip(names, parameters, strict=True)})
                    rnd = int(config.get("round", 0))
                    gen = torch.Generator().manual_seed(cfg.seed * 7919 + rnd * 101 + index)
                    loss_sum = 0.0
                    for _ in range(local_epochs):
                        order = torch.randperm(len(y_all), generator=gen)
                        for start in range(0, len(order), cfg.batch_size):
                            idx = order[start:start + cfg.batch_size]
                            x = encode(model_input(x_all[idx], cfg.model, cfg.dataset),
                                       cfg.timesteps, cfg.encoder, gen)
                            _, loss = backend.train_step(x, y_all[idx], cfg.lr)
                            loss_sum += loss * len(idx)
                    weights = self.get_parameters({})
                    return weights, len(y_all), {
                        "loss": loss_sum / (len(y_all) * local_epochs), "worker": index,
                        "weight_sum": float(sum(w.sum() for w in weights))}

            start_client(server_address=f"127.0.0.1:{port}", client=Client().to_client(),
                         insecure=True, max_retries=20, max_wait_time=60)
    except _Terminated:
        # The board is stopped (the ExitStack has unwound); leave now rather than wait on
        # Flower's gRPC threads, which a stopped host will never end.
        os._exit(0)
    except BaseException as error:  # reported to the host, which names the worker
        errors.put((index, f"{type(error).__name__}: {error}"))
        raise


def _server(port: int, cfg_fields: dict, workers: int, rounds: int, progress: bool,
            results) -> None:
    """The Flower server process: FedAvg, and the global model evaluated every round."""
    from spikeforge.gen.vboard import die_with_parent

    die_with_parent()
    _quiet_flower()
    from flwr.common import ndarrays_to_parameters
    from flwr.compat.server.app import start_server
    from flwr.server import ServerConfig
    from flwr.server.strategy import FedAvg
    from rich.console import Console

    from .data import load_dataset
    from .train import GoldenBackend, evaluate

    cfg = TrainConfig(**cfg_fields)
    _, test_set = load_dataset(cfg.dataset)
    model = cfg.build()
    names = sorted(model.weights)
    history, fits = [], {}
    console = Console(stderr=True)
    start = time.monotonic()

    def evaluate_round(server_round, parameters, config):
        net = cfg.build()
        net.load_state_dict({n: torch.from_numpy(np.array(p)) for n, p in
                             zip(names, parameters, strict=True)})
        acc = evaluate(GoldenBackend(net), test_set, cfg)
        if server_round:
            history.append({"round": server_round, "test_accuracy": acc,
                            "seconds": time.monotonic() - start,
                            "aggregate_weight_sum": float(sum(np.sum(p) for p in parameters)),
                            **fits.get(server_round, {})})
            if progress:
                console.print(f"round {server_round}/{rounds}: test accuracy {acc:.4f}")
        return 0.0, {"accuracy": acc}

    def fit_metrics(results_):
        total = sum(n for n, _ in results_)
        fits[len(fits) + 1] = {
            "train_loss": sum(n * m["loss"] for n, m in results_) / total,
            "clients": [{"worker": m["worker"], "examples": n, "weight_sum": m["weight_sum"]}
                        for n, m in sorted(results_, key=lambda r: r[1]["worker"])]}
        return {"loss": fits[len(fits)]["train_loss"]}

    strategy = FedAvg(
        fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=workers,
        min_evaluate_clients=0, min_available_clients=workers, evaluate_fn=evaluate_round,
        on_fit_config_fn=lambda rnd: {"round": rnd}, accept_failures=False,
        initial_parameters=ndarrays_to_parameters([model.weights[n].double().numpy()
                                                  for n in names]),
        fit_metrics_aggregation_fn=fit_metrics)
    start_server(server_address=f"127.0.0.1:{port}", strategy=strategy,
                 config=ServerConfig(num_rounds=rounds, round_timeout=None))
    results.put(history)


def run_fl(*, workers: int = 5, rounds: int = 10, local_epochs: int = 3,
           backend: str = "golden", boards: list[str] | None = None, alpha: float = 0.5,
           cfg: TrainConfig | None = None, json_path: str | Path | None = None,
           progress: bool = True) -> dict:
    """Federated training of ``cfg``'s model; return (and write) the results."""
    from .data import load_dataset
    from .train import train

    cfg = cfg or TrainConfig()
    for name, value in (("rounds", rounds), ("local_epochs", local_epochs)):
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, not {value!r}")
    if boards is not None:
        if len(boards) != workers:
            raise ConfigError(f"{len(boards)} board URLs for {workers} workers: give one URL a "
                              f"worker, or --workers {len(boards)}")
        kind = "url"
    elif backend in ("golden", "sim"):
        kind = backend
    else:
        raise ConfigError(f"backend must be golden or sim (or give --boards), not {backend!r}")
    if kind != "golden":
        cfg.precision = "fp16"
    train_set, _ = load_dataset(cfg.dataset)
    shards = dirichlet_shards(train_set.y, workers, alpha, cfg.seed)
    start = time.monotonic()
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    errors, results = context.Queue(), context.Queue()
    procs = [context.Process(target=_worker, daemon=True, args=(
        i, port, shards[i], kind, boards[i] if boards else None, asdict(cfg), local_epochs,
        errors)) for i in range(workers)]
    server = context.Process(target=_server, daemon=True, args=(
        port, asdict(cfg), workers, rounds, progress, results))
    history = None
    try:
        server.start()
        for proc in procs:
            proc.start()
        while history is None:
            with contextlib.suppress(queue.Empty):
                history = results.get(timeout=0.5)
            if not server.is_alive() and history is None:
                break
            if any(proc.exitcode not in (None, 0) for proc in procs) or not errors.empty():
                time.sleep(0.5)
                break
    finally:
        for proc in [server, *procs]:
            if proc.pid is None:
                continue
            proc.join(timeout=10 if history is not None else 0)
            if proc.is_alive():
                proc.terminate()
                proc.join()
    history = history or []
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    failures += [(i, f"exited with status {proc.exitcode}") for i, proc in enumerate(procs)
                 if proc.exitcode not in (None, 0, -15) and i not in dict(failures)]
    if failures or len(history) < rounds:
        detail = "; ".join(f"worker {i}: {why}" for i, why in sorted(failures)) or \
            "a worker stopped without saying why"
        raise FLError(f"federated training stopped after {len(history)} of {rounds} rounds: "
                      f"{detail}")
    central_cfg = TrainConfig(**{**asdict(cfg), "epochs": rounds * local_epochs})
    central = train(central_cfg, None, progress=False)
    result = {
        "workers": workers, "rounds": rounds, "local_epochs": local_epochs,
        "backend": kind if kind != "url" else ",".join(boards), "alpha": alpha,
        "rounds_history": history, "test_accuracy": history[-1]["test_accuracy"],
        "centralised_test_accuracy": central["test_accuracy"],
        "gap": central["test_accuracy"] - history[-1]["test_accuracy"],
        "wall_seconds": time.monotonic() - start,
        "shards": [{"samples": len(s), "classes": torch.bincount(train_set.y[s],
                                                                 minlength=10).tolist()}
                   for s in shards],
        "config": asdict(cfg),
    }
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result
