# SPDX-License-Identifier: Apache-2.0
"""Surrogate derivatives of the spike function, ideal and as the hardware's table computes them.

The forward pass of every surrogate is the Heaviside step ``S = x >= 0`` (``x = H - V_th``);
only the derivative σ′(x) used by back-propagation differs. Conventions and default α are
spikingjelly's (``spikingjelly.activation_based.surrogate``):

========================  ============================================  =======
kind                      σ′(x)                                          α
========================  ============================================  =======
``sigmoid``               α·sig(αx)·(1 − sig(αx))                        4
``atan``                  (α/2) / (1 + (π/2·α·x)²)                       2
``rect``                  α where |x| < 1/(2α), else 0                   1
``piecewise_quadratic``   α − α²·|x| where |x| ≤ 1/α, else 0             1
========================  ============================================  =======

The hardware evaluates σ′ with a lookup table indexed by the top bits of the binary16 argument:
sign, exponent and the ``mantissa_bits`` leading mantissa bits (``2**(6 + mantissa_bits)``
entries; 1024 for the default 4 bits, one ECP5 block RAM). Each entry holds σ′ at the midpoint
of the values its bucket covers, rounded to binary16; the infinity/NaN buckets hold zero. The
table is piecewise constant, so Rect and PiecewiseQuadratic keep their exact zeros wherever
their support ends on a power of two, and the hardware-exact golden model uses the same table.

>>> s = Surrogate("rect")
>>> s.grad(torch.tensor([0.0, 0.49, 0.5]))
tensor([1., 1., 0.])
>>> from spikeforge.golden import fp16
>>> s.grad_fp16(torch.tensor([0.25, -0.75], dtype=torch.float16))
tensor([1., 0.], dtype=torch.float16)
"""

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError
from . import fp16

__all__ = ["SURROGATES", "Surrogate"]

SURROGATES = {"sigmoid": 4.0, "atan": 2.0, "rect": 1.0, "piecewise_quadratic": 1.0}


@dataclass(frozen=True)
class Surrogate:
    """A surrogate gradient: its ``kind``, its ``alpha`` and the hardware table's resolution."""

    kind: str = "sigmoid"
    alpha: float | None = None
    mantissa_bits: int = 4
    _table: list = field(default_factory=list, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.kind not in SURROGATES:
            raise ConfigError(
                f"surrogate must be one of {', '.join(SURROGATES)}, not {self.kind!r}")
        if self.alpha is None:
            object.__setattr__(self, "alpha", SURROGATES[self.kind])
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha)
                and self.alpha > 0):
            raise ConfigError(f"surrogate alpha must be a positive number, not {self.alpha!r}")
        object.__setattr__(self, "alpha", float(self.alpha))
        if self.mantissa_bits not in range(0, 11):
            raise ConfigError(
                f"surrogate table mantissa_bits must be between 0 and 10, "
                f"not {self.mantissa_bits!r}")

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        """The ideal σ′(x), in the dtype of ``x``."""
        a = self.alpha
        if self.kind == "sigmoid":
            sg = torch.sigmoid(a * x)
            return a * sg * (1 - sg)
        if self.kind == "atan":
            return (a / 2) / (1 + (math.pi / 2 * a * x) ** 2)
        if self.kind == "rect":
            return a * (x.abs() < 1 / (2 * a)).to(x.dtype)
        return torch.where(x.abs() <= 1 / a, a - a * a * x.abs(), torch.zeros_like(x))

    def table(self) -> torch.Tensor:
        """The hardware's lookup table: ``2**(6 + mantissa_bits)`` binary16 values."""
        if not self._table:
            shift = 10 - self.mantissa_bits
            codes = torch.arange(0, 1 << 16, dtype=torch.int32)
            values = fp16.from_bits(codes).to(torch.float64)
            buckets = codes >> shift
            lo = values.view(-1, 1 << shift)[:, 0]
            hi = values.view(-1, 1 << shift)[:, -1]
            mid = (lo + hi) / 2
            entries = torch.where(torch.isfinite(mid), self.grad(mid.nan_to_num()), 0.0)
            assert int(buckets[-1]) + 1 == entries.numel()
            self._table.append(fp16.to_fp16(entries))
        return self._table[0]

    def grad_fp16(self, x: torch.Tensor) -> torch.Tensor:
        """σ′(x) as the hardware computes it: the table entry of the bucket holding ``x``."""
        index = fp16.bits(x) >> (10 - self.mantissa_bits)
        return self.table()[index.long()]
