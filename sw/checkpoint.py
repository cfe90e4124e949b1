# SPDX-License-Identifier: Apache-2.0
"""Checkpoints: a network's weights, its training configuration and progress, in one file.

Written atomically (a temporary file renamed over the old one), so a run killed while saving
keeps the previous checkpoint whole.
"""

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .errors import SpikeforgeError

__all__ = ["load_checkpoint", "load_saved", "save_checkpoint"]

FORMAT = "spikeforge-checkpoint-1"


def save_checkpoint(path, network, config, epoch: int, history: list,
                    rng: torch.Tensor | None = None) -> None:
    """Save ``network``'s weights after ``epoch``; ``rng`` is the state of the training run's
    random generator, with which a resumed run draws what the uninterrupted one would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    state = {"format": FORMAT, "weights": network.state_dict(), "config": asdict(config),
             "epoch": epoch, "history": history}
    if rng is not None:
        state["rng"] = rng
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path) -> dict:
    return load_saved(path, FORMAT, "checkpoint",
                      f"train with --checkpoint {path} first")


def load_saved(path, fmt: str, what: str, hint: str) -> dict:
    """A dictionary saved with ``torch.save`` whose ``format`` is ``fmt``: a ``what`` (for the
    messages; ``hint`` says how to make one)."""
    path = Path(path)
    if not path.is_file():
        raise SpikeforgeError(f"{what} {path} does not exist; {hint}")
    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:
        raise SpikeforgeError(f"{what} {path} cannot be read ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise SpikeforgeError(f"{path} is not a spikeforge {what}")
    return state
