# SPDX-License-Identifier: Apache-2.0
"""QKFormer's Q-K attention in spike form: token and channel attention, forward and backward.

``Q`` and ``K`` are spike tensors ``[T, B, N, D]`` (N tokens, D channels). No softmax and no
multiplications:

* **token** attention: ``A_t = SN(Σ_channels Q)`` ``[T, B, N]``; ``X′ = A_t ⊗ K`` keeps the rows
  (tokens) of ``K`` whose attention neuron fired.
* **channel** attention: ``A_c = SN(Σ_tokens Q)`` ``[T, B, D]``; ``X′`` keeps the columns
  (channels) of ``K`` whose attention neuron fired.

``SN`` is an LIF layer of its own (QKFormer uses V_th = 0.5). The sums are spike counts, exact
in binary16 up to 2048 terms.

Backward, given ``δX′``, in the hardware's order:

* ``δK = δX′`` where the attention neuron fired, else +0;
* ``δA = Σ δX′`` over the positions where ``K`` spiked (channels ascending for token attention,
  tokens ascending for channel attention; starts at +0, additions only);
* ``δ(ΣQ)`` from ``δA`` through the attention LIF (:func:`~spikeforge.golden.lif.lif_backward`);
* ``δQ`` is ``δ(ΣQ)`` broadcast along the summed axis.

>>> q = torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]]])   # T = B = 1, N = D = 2
>>> k = torch.tensor([[[[1.0, 0.0], [1.0, 1.0]]]])
>>> x, cache = qk_attention_forward(q, k, "token", LIFParams(v_th=0.5))
>>> x.tolist()
[[[[1.0, 0.0], [0.0, 0.0]]]]
"""

import torch

from ..errors import ConfigError, ShapeError
from .arith import FLOAT, Arith
from .lif import LIFParams, lif_backward, lif_forward

__all__ = ["ATTENTIONS", "attention_lif_params", "qk_attention_backward",
           "qk_attention_forward"]

ATTENTIONS = ("token", "channel")


def attention_lif_params(**overrides) -> LIFParams:
    """QKFormer's attention neuron: the LIF defaults with V_th = 0.5."""
    return LIFParams(**{"v_th": 0.5, **overrides})


def _axis(kind: str) -> int:
    if kind not in ATTENTIONS:
        raise ConfigError(f"attention must be one of token, channel, not {kind!r}")
    return -1 if kind == "token" else -2


def qk_attention_forward(q: torch.Tensor, k: torch.Tensor, kind: str, p: LIFParams,
                         arith: Arith = FLOAT):
    """Return ``X′`` and the cache for :func:`qk_attention_backward`."""
    axis = _axis(kind)
    if not isinstance(q, torch.Tensor) or not isinstance(k, torch.Tensor) or q.dim() != 4 \
            or q.shape != k.shape:
        raise ShapeError(f"Q and K must be spike tensors of one shape [T, B, N, D], got "
                         f"{tuple(getattr(q, 'shape', ()))} and {tuple(getattr(k, 'shape', ()))}")
    if q.shape[0] == 0:
        raise ShapeError("Q and K must hold at least one timestep (T >= 1), got T = 0")
    for name, x in (("Q", q), ("K", k)):
        if not bool(((x == 0) | (x == 1)).all()):
            raise ShapeError(f"{name} must hold spikes (0 or 1)")
    if arith.exact and q.shape[axis] > 2048:
        raise ConfigError(f"attention sums over {q.shape[axis]} spikes; binary16 counts "
                          f"exactly only up to 2048")
    q, k = arith.cast(q), arith.cast(k)
    a, h = lif_forward(q.sum(axis), p, arith)
    mask = a.unsqueeze(axis).bool()
    x = torch.where(mask, k, torch.zeros_like(k))
    return x, {"kind": kind, "k": k, "a": a, "h": h, "p": p}


def qk_attention_backward(g: torch.Tensor, cache: dict, arith: Arith = FLOAT):
    """Return ``(δQ, δK)`` for ``g = δX′``."""
    kind, k, a, h, p = cache["kind"], cache["k"], cache["a"], cache["h"], cache["p"]
    axis = _axis(kind)
    if g.shape != k.shape:
        raise ShapeError(f"attention output gradient must be {tuple(k.shape)}, "
                         f"not {tuple(g.shape)}")
    g = arith.cast(g)
    zero = torch.zeros_like(g)
    dk = torch.where(a.unsqueeze(axis).bool(), g, zero)
    if arith.exact:
        da = torch.zeros_like(a)
        dim = g.dim() + axis
        for j in range(g.shape[axis]):
            da = torch.where(k.select(dim, j).bool(), arith.add(da, g.select(dim, j)), da)
    else:
        da = torch.where(k.bool(), g, zero).sum(axis)
    dsum = lif_backward(da, h, a, p, arith)
    dq = dsum.unsqueeze(axis).expand_as(g).clone()
    return dq, dk
