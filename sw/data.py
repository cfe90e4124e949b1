# SPDX-License-Identifier: Apache-2.0
"""Data sets that ship offline, and spike encoders.

``digits`` is scikit-learn's 8×8 handwritten digits (1797 images, 10 classes, pixel values
0..16 scaled to [0, 1]), split once and for all into 1437 training and 360 test images
(stratified, ``random_state=0``).

Encoders turn images ``[B, ...]`` into ``[T, B, ...]``:

* ``rate``: a seeded Bernoulli spike per pixel and timestep with the pixel's value as its
  probability; binary, so every engine input of the device stays a spike.
* ``direct``: the pixel value as a constant current at every timestep (float precision only:
  the device's layers take spikes).

>>> train, test = load_dataset("digits")
>>> train.x.shape, test.x.shape, int(train.y.max())
(torch.Size([1437, 64]), torch.Size([360, 64]), 9)
>>> spikes = encode(train.x[:2], 4, "rate", torch.Generator().manual_seed(0))
>>> tuple(spikes.shape), sorted(spikes.unique().tolist())
((4, 2, 64), [0.0, 1.0])
"""

from dataclasses import dataclass

import torch

from .errors import ConfigError

__all__ = ["DATASETS", "ENCODERS", "Split", "encode", "load_dataset"]

DATASETS = ("digits",)
ENCODERS = ("rate", "direct")


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(name: str) -> tuple[Split, Split]:
    """Return the ``(train, test)`` splits of a data set that ships offline."""
    if name != "digits":
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, not {name!r}")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x_tr, x_te, y_tr, y_te = train_test_split(
        digits.data / 16.0, digits.target, test_size=360, random_state=0,
        stratify=digits.target)
    return (Split(torch.tensor(x_tr, dtype=torch.float32), torch.tensor(y_tr)),
            Split(torch.tensor(x_te, dtype=torch.float32), torch.tensor(y_te)))


def encode(x: torch.Tensor, timesteps: int, encoder: str = "rate",
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Encode ``x`` ``[B, ...]`` (values in [0, 1]) over ``timesteps`` as ``[T, B, ...]``."""
    if not isinstance(timesteps, int) or timesteps < 1:
        raise ConfigError(f"timesteps must be a positive integer, not {timesteps!r}")
    if encoder == "rate":
        probs = x.clamp(0, 1).expand(timesteps, *x.shape)
        return torch.bernoulli(probs, generator=generator)
    if encoder == "direct":
        return x.expand(timesteps, *x.shape).clone()
    raise ConfigError(f"encoder must be one of {', '.join(ENCODERS)}, not {encoder!r}")
