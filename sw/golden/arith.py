# SPDX-License-Identifier: Apache-2.0
"""The two precisions of the golden model: ideal float, and the hardware's exact FP16.

Every golden function takes an ``Arith`` and does all of its arithmetic through it, so the same
code is the float reference (trainable, in float32 or float64) and the bit-exact model of the
gateware (every add and multiply rounded to binary16 in the engines' order).

>>> a = FP16()
>>> x = a.cast(torch.tensor([1.0]))
>>> a.add(x, a.cast(torch.tensor([2.0 ** -11]))).item()   # half an ulp: ties to even
1.0
>>> Float(torch.float64).add(torch.tensor([1.0]), torch.tensor([2.0 ** -11])).item() > 1
True
"""

import torch

from ..errors import ConfigError
from . import fp16

__all__ = ["FLOAT", "FP16", "PRECISIONS", "Arith", "Float", "arith_for"]


class Arith:
    """How a golden function adds, multiplies, compares and evaluates surrogates."""

    name: str
    dtype: torch.dtype
    exact: bool

    def cast(self, x) -> torch.Tensor:
        return torch.as_tensor(x, dtype=self.dtype)

    def add(self, a, b):
        raise NotImplementedError

    def sub(self, a, b):
        raise NotImplementedError

    def mul(self, a, b):
        raise NotImplementedError

    def ge(self, a, b):
        return a >= b

    def surrogate_grad(self, surrogate, x):
        raise NotImplementedError


class Float(Arith):
    """Ideal arithmetic in ``dtype`` (float32 for training, float64 for gradient checks)."""

    exact = False

    def __init__(self, dtype: torch.dtype = torch.float32):
        if dtype not in (torch.float32, torch.float64):
            raise ConfigError(f"float precision must be float32 or float64, not {dtype}")
        self.dtype = dtype
        self.name = "float" if dtype is torch.float32 else "float64"

    def add(self, a, b):
        return a + b

    def sub(self, a, b):
        return a - b

    def mul(self, a, b):
        return a * b

    def surrogate_grad(self, surrogate, x):
        return surrogate.grad(x)

    def __repr__(self):
        return f"Float({self.dtype})"


class FP16(Arith):
    """The gateware's binary16 arithmetic (see :mod:`spikeforge.golden.fp16`)."""

    name = "fp16"
    dtype = torch.float16
    exact = True

    def cast(self, x):
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x, dtype=torch.float64)
        return fp16.to_fp16(x)

    def add(self, a, b):
        return fp16.add(a, b)

    def sub(self, a, b):
        return fp16.sub(a, b)

    def mul(self, a, b):
        return fp16.mul(a, b)

    def ge(self, a, b):
        return fp16.ge(a, b)

    def surrogate_grad(self, surrogate, x):
        return surrogate.grad_fp16(x)

    def __repr__(self):
        return "FP16()"


PRECISIONS = ("float", "fp16")
FLOAT = Float(torch.float32)


def arith_for(precision: str) -> Arith:
    """The ``Arith`` of a precision name: ``float``, ``float64`` or ``fp16``."""
    if precision == "float":
        return Float(torch.float32)
    if precision == "float64":
        return Float(torch.float64)
    if precision == "fp16":
        return FP16()
    raise ConfigError(f"precision must be one of float, fp16, not {precision!r}")
