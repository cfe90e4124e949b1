# SPDX-License-Identifier: Apache-2.0
"""A spiking linear layer's three engines and the SGD update, in the hardware's order.

``W`` has shape ``[out, in]``; inputs are binary spike tensors ``[T, B, in]``. Orders of the
FP16 operations, which the gateware reproduces:

* **FP** (:func:`linear_forward`): each neuron's current starts at +0; the spiking inputs of a
  timestep are taken in ascending index order and each adds its weight (``X = X + W[n, i]``).
  Inputs that did not spike cost nothing and change nothing. No multiplications.
* **BP** (:func:`linear_backward`): the error of each input starts at +0; the output neurons
  are taken in ascending order, those with ``δX == 0`` skipped, and each adds
  ``W[n, i] · δX[n]`` (a rounded product, then a rounded sum; no fused multiply-add).
* **WG** (:func:`linear_weight_grad`): ``ΔW`` accumulates sample after sample (batch order),
  within a sample timestep after timestep in reverse (the order BP produces ``δX``), and within
  a timestep token after token (ascending, for layers applied per token); for every input ``i``
  that spiked, column ``ΔW[:, i] += δX[t]``. Columns of silent inputs are not touched.
* **Update** (:func:`sgd_update`): ``W = W - lr · ΔW``, product rounded, then the difference.

In float precision the same sums are taken as matrix products (order unspecified).

>>> from spikeforge.golden.arith import FP16
>>> w = torch.tensor([[1.0, 2.0, 4.0]])
>>> linear_forward(torch.tensor([[[1.0, 0.0, 1.0]]]), w, FP16()).tolist()
[[[5.0]]]
"""

import torch

from ..errors import ShapeError
from .arith import FLOAT, Arith

__all__ = ["linear_backward", "linear_forward", "linear_weight_grad", "sgd_update"]


def _check(s_in: torch.Tensor, w: torch.Tensor, what: str) -> None:
    if not isinstance(w, torch.Tensor) or w.dim() != 2:
        shape = tuple(getattr(w, "shape", ()))
        raise ShapeError(f"weights must be a matrix [out, in], not {shape}")
    if not isinstance(s_in, torch.Tensor) or s_in.dim() < 2:
        raise ShapeError(f"{what} must be a tensor [T, ..., features], "
                         f"not {tuple(getattr(s_in, 'shape', ()))}")
    if s_in.shape[0] == 0:
        raise ShapeError(f"{what} must hold at least one timestep (T >= 1), got T = 0")


def _check_binary(s_in: torch.Tensor) -> None:
    if not bool(((s_in == 0) | (s_in == 1)).all()):
        raise ShapeError("layer inputs must be spikes (0 or 1); real-valued inputs such as "
                         "the direct encoding's currents run only in float precision")


def _active(mask: torch.Tensor) -> list:
    """Indices of the last axis set anywhere in ``mask``: the only ones whose additions can
    change a sum (adding +0 to a sum that started at +0 leaves it as it is)."""
    return torch.nonzero(mask.reshape(-1, mask.shape[-1]).any(0)).flatten().tolist()


def linear_forward(s_in: torch.Tensor, w: torch.Tensor, arith: Arith = FLOAT) -> torch.Tensor:
    """FP engine: currents ``X[t, ..., n] = Σ_i s_in[t, ..., i]·W[n, i]``."""
    _check(s_in, w, "layer input")
    if s_in.shape[-1] != w.shape[1]:
        raise ShapeError(f"layer input has {s_in.shape[-1]} features, weights expect "
                         f"{w.shape[1]} (shape [T, ..., {w.shape[1]}])")
    w = arith.cast(w)
    if not arith.exact:
        return arith.cast(s_in) @ w.T
    _check_binary(s_in)
    spiked = s_in.bool()
    # A sum that starts at +0 never becomes -0, so adding +0 for a silent input changes
    # nothing: the gated weights are formed at once and added input after input.
    gated = torch.where(spiked[..., None, :], w, torch.zeros((), dtype=w.dtype))
    acc = torch.zeros(*s_in.shape[:-1], w.shape[0], dtype=w.dtype)
    for i in _active(spiked):
        acc = arith.add(acc, gated[..., i])
    return acc


def linear_backward(dx: torch.Tensor, w: torch.Tensor, arith: Arith = FLOAT) -> torch.Tensor:
    """BP engine: the error of the inputs, ``g[t, ..., i] = Σ_n W[n, i]·δX[t, ..., n]``."""
    _check(dx, w, "current gradient")
    if dx.shape[-1] != w.shape[0]:
        raise ShapeError(f"current gradient has {dx.shape[-1]} features, weights have "
                         f"{w.shape[0]} outputs")
    w, dx = arith.cast(w), arith.cast(dx)
    if not arith.exact:
        return dx @ w
    nonzero = dx != 0
    products = torch.where(nonzero[..., None], arith.mul(w, dx[..., None]),
                           torch.zeros((), dtype=w.dtype))
    acc = torch.zeros(*dx.shape[:-1], w.shape[1], dtype=w.dtype)
    for n in _active(nonzero):
        acc = arith.add(acc, products[..., n, :])
    return acc


def linear_weight_grad(dx: torch.Tensor, s_in: torch.Tensor, arith: Arith = FLOAT,
                       dw: torch.Tensor | None = None) -> torch.Tensor:
    """WG engine: ``ΔW += Σ δX ⊗ s_in`` over timesteps, samples and tokens; returns ``ΔW``.

    ``dx`` is ``[T, B, ..., out]`` and ``s_in`` is ``[T, B, ..., in]`` (the middle axes, e.g.
    tokens, alike); ``dw`` (``[out, in]``, zeros if not given) is the gradient so far. The sum
    runs as a core's BP does: sample by sample, timesteps from the last and, within one, tokens
    from the first.
    """
    for name, x in (("layer input", s_in), ("current gradient", dx)):
        if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[0] == 0:
            raise ShapeError(f"{name} must be a tensor [T >= 1, B, ..., features], "
                             f"not {tuple(getattr(x, 'shape', ()))}")
    if dx.dim() < 3 or dx.shape[:-1] != s_in.shape[:-1]:
        raise ShapeError(f"current gradient [T, B, ..., out] and input [T, B, ..., in] must "
                         f"agree but in the last axis, got {tuple(dx.shape)} and "
                         f"{tuple(s_in.shape)}")
    n_out, n_in = dx.shape[-1], s_in.shape[-1]
    if dw is None:
        dw = torch.zeros(n_out, n_in, dtype=arith.dtype)
    elif dw.shape != (n_out, n_in):
        raise ShapeError(f"accumulated gradient must be [{n_out}, {n_in}], "
                         f"not {tuple(dw.shape)}")
    dw, dx = arith.cast(dw), arith.cast(dx)
    if not arith.exact:
        return dw + torch.einsum("...o,...i->oi", dx, arith.cast(s_in))
    _check_binary(s_in)
    t_steps, batch = dx.shape[:2]
    dx = dx.reshape(t_steps, batch, -1, n_out)
    spiked = s_in.reshape(t_steps, batch, -1, n_in).bool()
    # The hardware's order: sample by sample, steps from the last, token by token.
    spiked = spiked.flip(0).transpose(0, 1).flatten(0, 2)
    dx = dx.flip(0).transpose(0, 1).flatten(0, 2)
    busy = (spiked.any(1) & (dx != 0).any(1)).tolist()
    for step in (s for s, b in enumerate(busy) if b):
        dw = torch.where(spiked[step], arith.add(dw, dx[step, :, None]), dw)
    return dw


def sgd_update(w: torch.Tensor, dw: torch.Tensor, lr: float, arith: Arith = FLOAT):
    """Update: ``W - lr·ΔW`` (``lr`` rounded to the precision, as the hardware's register)."""
    if w.shape != dw.shape:
        raise ShapeError(f"weights {tuple(w.shape)} and gradient {tuple(dw.shape)} differ")
    return arith.sub(arith.cast(w), arith.mul(arith.cast(lr), arith.cast(dw)))
