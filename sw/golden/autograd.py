# SPDX-License-Identifier: Apache-2.0
"""Autograd versions of the golden functions, for torch users and to check the explicit ones.

:class:`SpikeFunction` is the Heaviside step with a surrogate derivative; :func:`lif_autograd`
writes the LIF dynamics of :mod:`spikeforge.golden.lif` with ordinary torch operations, so that
``torch.autograd`` computes back-propagation through time by itself. The explicit engine
functions (:func:`~spikeforge.golden.lif.lif_backward`, the linear layer's BP and WG) must
agree with it.

>>> x = torch.tensor([[0.5], [2.0]], requires_grad=True)
>>> s = lif_autograd(x, LIFParams(surrogate=Surrogate("rect")))
>>> s.flatten().tolist()
[0.0, 1.0]
"""

import torch

from .lif import LIFParams, _check_steps
from .surrogate import Surrogate

__all__ = ["SpikeFunction", "lif_autograd", "spike"]


class SpikeFunction(torch.autograd.Function):
    """``S = x >= 0`` forward; ``∂S/∂x = σ′(x)`` backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, surrogate: Surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x >= 0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ctx.surrogate.grad(x), None


def spike(x: torch.Tensor, surrogate: Surrogate) -> torch.Tensor:
    return SpikeFunction.apply(x, surrogate)


def lif_autograd(x: torch.Tensor, p: LIFParams) -> torch.Tensor:
    """LIF neurons over ``x`` ``[T, ...]`` with autograd; returns the spikes."""
    _check_steps(x, "LIF input")
    v = torch.full_like(x[0], p.v_reset)
    out = []
    for t in range(x.shape[0]):
        h = v + (x[t] - (v - p.v_reset)) / p.tau
        s = spike(h - p.v_th, p.surrogate)
        sr = s.detach() if p.detach_reset else s
        if p.reset == "hard":
            v = h * (1 - sr) + p.v_reset * sr
        else:
            v = h - p.v_th * sr
        out.append(s)
    return torch.stack(out)
