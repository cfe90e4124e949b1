# SPDX-License-Identifier: Apache-2.0
"""Whole networks built from the explicit engine functions: forward, BPTT, WG and SGD.

A network here computes exactly what the device computes when it trains: every layer's FP, then
BP and WG from the output error the host streams back, then the SGD update. In ``fp16``
precision its bits are the reference for the gateware; in ``float`` it is the reference
accuracy. The same network trains in both, so the only difference is the arithmetic.

Three networks, all for 8×8 digits by default:

* :class:`SpikingMLP`: ``64 → 128 → 10`` (sizes configurable) Linear + LIF layers.
* :class:`SpikingCNN`: convolutional stages (3×3 convolution, LIF), the pooled ones CML (the
  2×2 max-pooling of the currents between the two), then a Linear + LIF head: by default
  ``8×8 → 32 channels → CML 32 channels 4×4 → 10``.
* :class:`QKNet`: QKFormer's Q-K attention on 8 row tokens of 8 pixels: an embedding
  ``Linear + LIF`` per token, spike Q and K projections, token (or channel) attention, a
  projection whose current is added to the embedding's (Spikingformer's membrane shortcut), an
  LIF, and a Linear + LIF head over all tokens.

>>> net = SpikingMLP([4, 3, 2], seed=0)
>>> out, cache = net.forward(torch.ones(5, 1, 4))
>>> tuple(out.shape), sorted(net.backward(cache, torch.ones_like(out)))
((5, 1, 2), ['fc0', 'fc1'])
"""

import math

import torch

from ..errors import ConfigError, ShapeError
from . import fp16
from .arith import Arith, Float
from .conv import (
    ConvGeometry,
    conv_backward,
    conv_forward,
    conv_weight_grad,
    max_pool_backward,
    max_pool_currents,
)
from .lif import LIFParams, lif_backward, lif_forward
from .linear import linear_backward, linear_forward, linear_weight_grad, sgd_update
from .qk import attention_lif_params, qk_attention_backward, qk_attention_forward

__all__ = ["MODELS", "Network", "QKNet", "SpikingCNN", "SpikingMLP", "build_model",
           "round_once"]

MODELS = ("mlp", "qk", "cnn")


def round_once(w) -> torch.Tensor:
    """``w`` rounded once to binary16, held as float64: the form in which weights from outside
    (a draw, a NIR graph) enter a network.

    Every backend of a run starts from these bits: the FP16 golden model and a device hold them
    as they are, and the float model holds them exactly (binary16 ⊂ float32). Rounding a float64
    weight to float32 first and to binary16 later would round twice and can land one ulp away.

    >>> w = torch.tensor([0.016713, 1 / 3], dtype=torch.float64)
    >>> round_once(w).tolist() == fp16.to_fp16(w).double().tolist()
    True
    """
    return fp16.to_fp16(torch.as_tensor(w, dtype=torch.float64)).to(torch.float64)


def _init(n_out: int, n_in: int, gain: float, gen: torch.Generator) -> torch.Tensor:
    """Weights drawn uniformly from ``±gain/√n_in`` in float64, then :func:`round_once`."""
    return _draw((n_out, n_in), n_in, gain, gen)


def _draw(shape: tuple, fan_in: int, gain: float, gen: torch.Generator) -> torch.Tensor:
    bound = gain / math.sqrt(fan_in)
    return round_once((torch.rand(shape, generator=gen, dtype=torch.float64) * 2 - 1) * bound)


class Network:
    """Weights by name, one LIF configuration, and the arithmetic they are trained in."""

    def __init__(self, weights: dict, lif: LIFParams, arith: Arith):
        self.lif = lif
        self.arith = arith
        self.weights = {name: arith.cast(w) for name, w in weights.items()}

    def to(self, arith: Arith) -> "Network":
        """The same network in another precision (weights rounded once)."""
        new = object.__new__(type(self))
        new.__dict__.update(self.__dict__)
        new.arith = arith
        new.weights = {name: arith.cast(w) for name, w in self.weights.items()}
        return new

    def _layer_forward(self, s_in, name):
        return linear_forward(s_in, self.weights[name], self.arith)

    def update(self, grads: dict, lr: float) -> None:
        """SGD on every weight: ``W = W - lr·ΔW``."""
        for name, dw in grads.items():
            self.weights[name] = sgd_update(self.weights[name], dw, lr, self.arith)

    def state_dict(self) -> dict:
        return {name: w.clone() for name, w in self.weights.items()}

    def load_state_dict(self, state: dict) -> None:
        if set(state) != set(self.weights):
            raise ShapeError(f"checkpoint holds weights {sorted(state)}, the model has "
                             f"{sorted(self.weights)}")
        for name, w in state.items():
            if w.shape != self.weights[name].shape:
                raise ShapeError(f"checkpoint weight {name} is {tuple(w.shape)}, the model "
                                 f"needs {tuple(self.weights[name].shape)}")
            self.weights[name] = self.arith.cast(w)


class SpikingMLP(Network):
    """Fully connected LIF layers; input ``[T, B, sizes[0]]`` spikes (or currents, float)."""

    kind = "mlp"

    def __init__(self, sizes=(64, 128, 10), lif: LIFParams | None = None,
                 arith: Arith | None = None, seed: int = 0, gain: float = 1.0):
        if len(sizes) < 2 or any(not isinstance(n, int) or n < 1 for n in sizes):
            raise ConfigError(f"MLP sizes must be two or more positive integers, not {sizes!r}")
        gen = torch.Generator().manual_seed(seed)
        weights = {f"fc{i}": _init(n_out, n_in, gain, gen)
                   for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:], strict=False))}
        self.sizes = tuple(sizes)
        super().__init__(weights, lif or LIFParams(), arith or Float())

    def forward(self, x: torch.Tensor):
        """Return the output spikes ``[T, B, sizes[-1]]`` and the cache for :meth:`backward`."""
        if x.dim() != 3 or x.shape[-1] != self.sizes[0]:
            raise ShapeError(f"MLP input must be [T, B, {self.sizes[0]}], not {tuple(x.shape)}")
        cache, s = [], x
        for i in range(len(self.sizes) - 1):
            s_out, h = lif_forward(self._layer_forward(s, f"fc{i}"), self.lif, self.arith)
            cache.append((s, h, s_out))
            s = s_out
        return s, cache

    def states(self, cache) -> dict:
        """Each layer's charges and spikes ``(H, S)``, ``[T, B, neurons]``, by weight name."""
        return {f"fc{i}": (h, s_out) for i, (_, h, s_out) in enumerate(cache)}

    def backward(self, cache, g_out: torch.Tensor) -> dict:
        """BP and WG from ``g_out = ∂L/∂S_out``; return ``ΔW`` per weight."""
        grads, g = {}, g_out
        for i in reversed(range(len(cache))):
            s_in, h, s_out = cache[i]
            dx = lif_backward(g, h, s_out, self.lif, self.arith)
            grads[f"fc{i}"] = linear_weight_grad(dx, s_in, self.arith)
            if i:
                g = linear_backward(dx, self.weights[f"fc{i}"], self.arith)
        return grads


class QKNet(Network):
    """A QKFormer block for ``[T, B, tokens, features]`` input spikes and ``classes`` outputs."""

    kind = "qk"

    def __init__(self, tokens: int = 8, features: int = 8, dim: int = 32, classes: int = 10,
                 attention: str = "token", lif: LIFParams | None = None,
                 attention_lif: LIFParams | None = None, arith: Arith | None = None,
                 seed: int = 0, gain: float = 1.0):
        for name, value in (("tokens", tokens), ("features", features), ("dim", dim),
                            ("classes", classes)):
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"QK model {name} must be a positive integer, not {value!r}")
        self.tokens, self.features, self.dim, self.classes = tokens, features, dim, classes
        self.attention = attention
        self.attention_lif = attention_lif or attention_lif_params()
        gen = torch.Generator().manual_seed(seed)
        weights = {
            "embed": _init(dim, features, gain, gen),
            "q": _init(dim, dim, gain, gen),
            "k": _init(dim, dim, gain, gen),
            "proj": _init(dim, dim, gain, gen),
            "head": _init(classes, tokens * dim, gain, gen),
        }
        super().__init__(weights, lif or LIFParams(), arith or Float())
        qk_attention_forward(torch.zeros(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), attention,
                             self.attention_lif)

    def forward(self, x: torch.Tensor):
        if x.dim() != 4 or x.shape[2:] != (self.tokens, self.features):
            raise ShapeError(f"QK input must be [T, B, {self.tokens}, {self.features}], "
                             f"not {tuple(x.shape)}")
        a, lif = self.arith, self.lif
        c = {"x": x}
        c["x0"] = self._layer_forward(x, "embed")
        c["s0"], c["h0"] = lif_forward(c["x0"], lif, a)
        c["q"], c["hq"] = lif_forward(self._layer_forward(c["s0"], "q"), lif, a)
        c["k"], c["hk"] = lif_forward(self._layer_forward(c["s0"], "k"), lif, a)
        c["att"], c["qk"] = qk_attention_forward(c["q"], c["k"], self.attention,
                                                 self.attention_lif, a)
        x1 = a.add(c["x0"], self._layer_forward(c["att"], "proj"))
        c["s1"], c["h1"] = lif_forward(x1, lif, a)
        c["flat"] = c["s1"].flatten(2)
        out, c["hout"] = lif_forward(self._layer_forward(c["flat"], "head"), lif, a)
        c["out"] = out
        return out, c

    def states(self, c) -> dict:
        """Each layer's charges and spikes ``(H, S)`` by weight name: ``[T, B, tokens, dim]``,
        the head's ``[T, B, classes]``."""
        return {"embed": (c["h0"], c["s0"]), "q": (c["hq"], c["q"]), "k": (c["hk"], c["k"]),
                "proj": (c["h1"], c["s1"]), "head": (c["hout"], c["out"])}

    def backward(self, c, g_out: torch.Tensor) -> dict:
        a, lif, w = self.arith, self.lif, self.weights
        grads = {}
        dxo = lif_backward(g_out, c["hout"], c["out"], lif, a)
        grads["head"] = linear_weight_grad(dxo, c["flat"], a)
        g1 = linear_backward(dxo, w["head"], a).unflatten(2, (self.tokens, self.dim))
        dx1 = lif_backward(g1, c["h1"], c["s1"], lif, a)
        grads["proj"] = linear_weight_grad(dx1, c["att"], a)
        dq, dk = qk_attention_backward(linear_backward(dx1, w["proj"], a), c["qk"], a)
        dxq = lif_backward(dq, c["hq"], c["q"], lif, a)
        dxk = lif_backward(dk, c["hk"], c["k"], lif, a)
        grads["q"] = linear_weight_grad(dxq, c["s0"], a)
        grads["k"] = linear_weight_grad(dxk, c["s0"], a)
        # Q and K are one layer of 2·dim neurons on the device ([Wq; Wk] on one core), so the
        # error of s0 is one sum over both, Q's neurons first.
        g0 = linear_backward(torch.cat([dxq, dxk], -1), torch.cat([w["q"], w["k"]]), a)
        dx0 = a.add(lif_backward(g0, c["h0"], c["s0"], lif, a), dx1)
        grads["embed"] = linear_weight_grad(dx0, c["x"], a)
        return grads


class SpikingCNN(Network):
    """CML stages and a head, for input spikes ``[T, B, C, H, W]``.

    Stage ``i`` is ``conv{i}``: a 3×3 convolution with zero padding 1 to ``channels[i]``
    channels, then, where ``pool[i]`` (None: every stage), CML's 2×2 max-pooling of its
    currents (:func:`~.conv.max_pool_currents`), which halves the image (odd sizes round down),
    and LIF neurons. ``fc`` is a Linear + LIF head from the last stage's flattened spikes
    (channel, row, column) to ``classes`` neurons. No batch normalisation: the cores have none
    (a trained BN folds into the weights before it).
    """

    kind = "cnn"

    def __init__(self, image=(1, 8, 8), channels=(32, 32), classes: int = 10,
                 pool=(False, True),
                 lif: LIFParams | None = None, arith: Arith | None = None, seed: int = 0,
                 gain: float = 1.0):
        if len(image) != 3 or any(not isinstance(n, int) or n < 1 for n in image):
            raise ConfigError(f"CNN image must be (channels, height, width), positive "
                              f"integers, not {image!r}")
        if not channels or any(not isinstance(n, int) or n < 1 for n in channels):
            raise ConfigError(f"CNN channels must be one or more positive integers, not "
                              f"{channels!r}")
        if not isinstance(classes, int) or classes < 1:
            raise ConfigError(f"CNN classes must be a positive integer, not {classes!r}")
        pool = (True,) * len(channels) if pool is None else tuple(pool)
        if len(pool) != len(channels) or any(not isinstance(p, bool) for p in pool):
            raise ConfigError(f"CNN pool must be a True or False for each of the "
                              f"{len(channels)} stages, not {pool!r}")
        c, h, w = image
        self.geometries = []
        for i, (k, pooled) in enumerate(zip(channels, pool, strict=True)):
            if pooled and (h < 2 or w < 2):
                raise ConfigError(f"a {image[1]}×{image[2]} image is {h}×{w} before stage {i}; "
                                  f"its 2×2 pooling needs 2×2 or more: pool fewer stages")
            self.geometries.append(ConvGeometry(in_channels=c, out_channels=k, height=h,
                                                width=w, kernel=3, padding=1))
            c, h, w = (k, h // 2, w // 2) if pooled else (k, h, w)
        self.image, self.channels, self.classes = tuple(image), tuple(channels), classes
        self.pool = pool
        self.features = c * h * w
        gen = torch.Generator().manual_seed(seed)
        weights = {f"conv{i}": _draw(g.weight_shape, g.in_channels * 9, gain, gen)
                   for i, g in enumerate(self.geometries)}
        weights["fc"] = _init(classes, self.features, gain, gen)
        super().__init__(weights, lif or LIFParams(), arith or Float())

    def forward(self, x: torch.Tensor):
        """Return the output spikes ``[T, B, classes]`` and the cache for :meth:`backward`."""
        if x.dim() != 5 or tuple(x.shape[2:]) != self.image:
            raise ShapeError(f"CNN input must be [T, B, {', '.join(map(str, self.image))}], "
                             f"not {tuple(x.shape)}")
        a, cache, s = self.arith, [], x
        for i, g in enumerate(self.geometries):
            x, winner = conv_forward(s, self.weights[f"conv{i}"], g, a), None
            if self.pool[i]:
                x, winner = max_pool_currents(x, a)
            s_out, h = lif_forward(x, self.lif, a)
            cache.append((s, winner, h, s_out))
            s = s_out
        flat = s.flatten(2)
        out, h = lif_forward(linear_forward(flat, self.weights["fc"], a), self.lif, a)
        cache.append((flat, None, h, out))
        return out, cache

    def states(self, cache) -> dict:
        """Each layer's charges and spikes ``(H, S)`` by weight name: ``[T, B, K, H', W']`` (after
        the pooling of a pooled stage), ``[T, B, classes]`` for the head."""
        names = [*(f"conv{i}" for i in range(len(self.geometries))), "fc"]
        return {name: (h, s_out) for name, (_, _, h, s_out) in zip(names, cache, strict=True)}

    def backward(self, cache, g_out: torch.Tensor) -> dict:
        """BP and WG from ``g_out = ∂L/∂S_out``; return ``ΔW`` per weight."""
        a, lif, w = self.arith, self.lif, self.weights
        flat, _, h, out = cache[-1]
        dx = lif_backward(g_out, h, out, lif, a)
        grads = {"fc": linear_weight_grad(dx, flat, a)}
        g = linear_backward(dx, w["fc"], a).unflatten(2, cache[-2][3].shape[2:])
        for i in reversed(range(len(self.geometries))):
            geometry, (s_in, winner, h, s_out) = self.geometries[i], cache[i]
            dx = lif_backward(g, h, s_out, lif, a)
            if winner is not None:
                dx = max_pool_backward(dx, winner, (geometry.out_height, geometry.out_width))
            grads[f"conv{i}"] = conv_weight_grad(dx, s_in, geometry, a)
            if i:
                g = conv_backward(dx, w[f"conv{i}"], geometry, a)
        return grads


def build_model(kind: str, **kwargs) -> Network:
    """A network by name: ``mlp``, ``qk`` or ``cnn``."""
    if kind == "mlp":
        return SpikingMLP(**kwargs)
    if kind == "qk":
        return QKNet(**kwargs)
    if kind == "cnn":
        return SpikingCNN(**kwargs)
    raise ConfigError(f"model must be one of {', '.join(MODELS)}, not {kind!r}")
