# SPDX-License-Identifier: Apache-2.0
"""IEEE binary16 arithmetic exactly as the spikeforge FP16 units compute it.

Every operation takes and returns ``torch.float16`` tensors and rounds its result once, to
nearest with ties to even. PyTorch evaluates a half-precision add or multiply in binary32 and
rounds the result to binary16; binary32 carries 24 >= 2*11 + 2 significand bits, so that double
rounding is innocuous (Figueroa, "When is double rounding innocuous?", 1995) and the result is
the correctly rounded one the gateware produces.

Special values, the same in the gateware:

* Subnormal operands and results are kept (no flush to zero).
* Overflow rounds to infinity; ``inf - inf``, ``0 * inf`` and any NaN operand give NaN.
* Every NaN result is the canonical quiet NaN ``0x7E00`` (payloads are not propagated).
* ``ge`` is the IEEE ordered comparison: ``-0 >= +0`` holds and NaN compares false.

>>> a = from_bits(torch.tensor([0x3C00], dtype=torch.int16))   # 1.0
>>> b = from_bits(torch.tensor([0x1400], dtype=torch.int16))   # 2**-10, one ulp of 1.0
>>> bits(add(a, b / 2)).item() == 0x3C00                       # tie: rounds to even
True
>>> hex(bits(mul(a, torch.tensor([float("nan")], dtype=torch.float16))).item())
'0x7e00'
"""

import numpy as np
import torch

__all__ = [
    "CANONICAL_NAN",
    "add",
    "bits",
    "canonical",
    "from_bits",
    "ge",
    "mul",
    "neg",
    "sub",
    "to_fp16",
]

CANONICAL_NAN = 0x7E00


def bits(x: torch.Tensor) -> torch.Tensor:
    """The binary16 bit patterns of ``x`` as ``int32`` values in 0..65535."""
    return x.to(torch.float16).view(torch.int16).to(torch.int32) & 0xFFFF


def from_bits(b: torch.Tensor) -> torch.Tensor:
    """The ``float16`` tensor whose bit patterns are ``b`` (any integer dtype, 0..65535)."""
    b = torch.as_tensor(b).to(torch.int32) & 0xFFFF
    return torch.where(b >= 0x8000, b - 0x10000, b).to(torch.int16).view(torch.float16)


_NAN = from_bits(torch.tensor(CANONICAL_NAN))


def canonical(x: torch.Tensor) -> torch.Tensor:
    """``x`` with every NaN replaced by the canonical quiet NaN."""
    nan = torch.isnan(x)
    return torch.where(nan, _NAN, x) if bool(nan.any()) else x


def to_fp16(x: torch.Tensor) -> torch.Tensor:
    """Round ``x`` (any float dtype) once to binary16, NaNs canonical.

    PyTorch converts float64 to float16 through float32, rounding twice; numpy rounds once.
    """
    x = torch.as_tensor(x)
    if x.dtype == torch.float64:
        x = torch.from_numpy(x.detach().cpu().numpy().astype(np.float16))
    return canonical(x.to(torch.float16))


def add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` rounded once to binary16."""
    return canonical(a.to(torch.float16) + b.to(torch.float16))


def sub(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a - b`` rounded once to binary16 (the adder with the sign of ``b`` flipped)."""
    return canonical(a.to(torch.float16) - b.to(torch.float16))


def neg(a: torch.Tensor) -> torch.Tensor:
    """``-a``: the sign bit flipped, exact."""
    return canonical(-a.to(torch.float16))


def mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a * b`` rounded once to binary16."""
    return canonical(a.to(torch.float16) * b.to(torch.float16))


def ge(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a >= b`` as a bool tensor (IEEE ordered comparison)."""
    return a.to(torch.float16) >= b.to(torch.float16)
