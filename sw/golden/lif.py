# SPDX-License-Identifier: Apache-2.0
"""Leaky integrate-and-fire neurons: forward over T timesteps and back-propagation through time.

The spikingjelly multi-step convention (``[T, ...]`` tensors, ``decay_input=True``):

* charge   ``H[t] = V[t-1] + (X[t] - (V[t-1] - V_reset)) / τ``
* fire     ``S[t] = H[t] >= V_th``
* reset    hard: ``V[t] = V_reset if S[t] else H[t]``;  soft: ``V[t] = H[t] - V_th·S[t]``

``V[-1] = V_reset``. The hardware evaluates the charge in exactly this order, rounding after each
operation: ``a = V - V_reset``, ``b = X - a``, ``c = b · (1/τ)``, ``H = V + c`` (with τ = 2 the
multiply is an exact exponent decrement). The soft reset is ``H - V_th`` where ``S[t]``, else
``H``.

Back-propagation (``ε[t] = ∂L/∂H[t]``, ``γ[t] = ε[t+1]·(1 - 1/τ)``, ``ε[T] = 0``), per neuron in
reverse time; the hardware order is:

* ``γ = ε[t+1] · decay``                       (``decay = 1 - 1/τ`` rounded to the precision)
* ``dS = g_S[t]``, plus ``γ · ∂V/∂S`` when the reset is not detached
  (``∂V/∂S = V_reset - H[t]`` hard, ``-V_th`` soft), added after that product
* ``a = dS · σ′(H[t] - V_th)``
* ``b = 0 if S[t] else γ`` (hard reset) or ``b = γ`` (soft reset)
* ``ε[t] = a + b``;  ``∂L/∂X[t] = ε[t] · (1/τ)``

>>> p = LIFParams()
>>> s, h = lif_forward(torch.tensor([[2.0], [1.0], [1.0], [0.0]]), p)
>>> s.flatten().tolist(), h.flatten().tolist()   # reaching V_th exactly fires
([1.0, 0.0, 0.0, 0.0], [1.0, 0.5, 0.75, 0.375])
"""

import math
from dataclasses import dataclass, field

import torch

from ..errors import ConfigError, ShapeError
from .arith import FLOAT, Arith
from .surrogate import Surrogate

__all__ = ["RESETS", "LIFParams", "lif_backward", "lif_forward"]

RESETS = ("hard", "soft")


@dataclass(frozen=True)
class LIFParams:
    """Parameters of one layer of LIF neurons (QKFormer's defaults)."""

    tau: float = 2.0
    v_th: float = 1.0
    v_reset: float = 0.0
    reset: str = "hard"
    detach_reset: bool = True
    surrogate: Surrogate = field(default_factory=Surrogate)

    def __post_init__(self):
        for name in ("tau", "v_th", "v_reset"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not math.isfinite(value):
                raise ConfigError(f"LIF {name} must be a finite number, not {value!r}")
        if self.tau < 1:
            raise ConfigError(f"LIF tau must be at least 1 (1 means no leak), not {self.tau!r}")
        if self.reset not in RESETS:
            raise ConfigError(f"LIF reset must be one of hard, soft, not {self.reset!r}")
        if isinstance(self.surrogate, str):
            object.__setattr__(self, "surrogate", Surrogate(self.surrogate))
        if not isinstance(self.surrogate, Surrogate):
            raise ConfigError(f"LIF surrogate must be a Surrogate, not {self.surrogate!r}")

    def constants(self, arith: Arith) -> dict:
        """τ-derived constants rounded once to the precision of ``arith``."""
        return {
            "inv_tau": arith.cast(1.0 / self.tau),
            "decay": arith.cast(1.0 - 1.0 / self.tau),
            "v_th": arith.cast(self.v_th),
            "v_reset": arith.cast(self.v_reset),
        }


def _check_steps(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ShapeError(f"{name} must be a tensor of shape [T, ...], not {type(x).__name__}")
    if x.shape[0] == 0:
        raise ShapeError(f"{name} must hold at least one timestep (T >= 1), got T = 0")


def lif_forward(x: torch.Tensor, p: LIFParams, arith: Arith = FLOAT):
    """Run LIF neurons over ``x`` of shape ``[T, ...]``; return spikes ``S`` and charges ``H``.

    ``S`` holds 0/1 in the precision's dtype; ``H`` is what back-propagation needs.
    """
    _check_steps(x, "LIF input")
    x = arith.cast(x)
    c = p.constants(arith)
    v = torch.full_like(x[0], float(c["v_reset"]))
    spikes, charges = [], []
    for t in range(x.shape[0]):
        a = arith.sub(v, c["v_reset"])
        b = arith.sub(x[t], a)
        h = arith.add(v, arith.mul(b, c["inv_tau"]))
        s = arith.ge(h, c["v_th"])
        if p.reset == "hard":
            v = torch.where(s, c["v_reset"], h)
        else:
            v = torch.where(s, arith.sub(h, c["v_th"]), h)
        spikes.append(s.to(x.dtype))
        charges.append(h)
    return torch.stack(spikes), torch.stack(charges)


def lif_backward(g_s: torch.Tensor, h: torch.Tensor, s: torch.Tensor, p: LIFParams,
                 arith: Arith = FLOAT) -> torch.Tensor:
    """Back-propagate ``g_s = ∂L/∂S`` through the LIF neurons; return ``∂L/∂X``.

    ``h`` and ``s`` are what :func:`lif_forward` returned; all three have the same shape.
    """
    _check_steps(g_s, "spike gradient")
    if g_s.shape != h.shape or s.shape != h.shape:
        raise ShapeError(f"spike gradient, charges and spikes must have one shape, got "
                         f"{tuple(g_s.shape)}, {tuple(h.shape)} and {tuple(s.shape)}")
    g_s, h = arith.cast(g_s), arith.cast(h)
    fired = s.bool()
    c = p.constants(arith)
    eps = torch.zeros_like(h[0])
    dx = [None] * h.shape[0]
    for t in reversed(range(h.shape[0])):
        gamma = arith.mul(eps, c["decay"])
        ds = g_s[t]
        if not p.detach_reset:
            dv_ds = arith.sub(c["v_reset"], h[t]) if p.reset == "hard" else -c["v_th"]
            ds = arith.add(ds, arith.mul(gamma, dv_ds))
        sg = arith.surrogate_grad(p.surrogate, arith.sub(h[t], c["v_th"]))
        a = arith.mul(ds, sg)
        b = torch.where(fired[t], torch.zeros_like(gamma), gamma) if p.reset == "hard" else gamma
        eps = arith.add(a, b)
        dx[t] = arith.mul(eps, c["inv_tau"])
    return torch.stack(dx)
