# SPDX-License-Identifier: Apache-2.0
"""A spiking convolution's three engines and CML's max-pooling of currents, in the hardware's
order.

``W`` has shape ``[K, C, k, k]`` (output channels, input channels, kernel rows, kernel columns;
no bias); inputs are binary spike tensors ``[T, ..., C, H, W]`` and currents
``[T, ..., K, H', W']`` with ``H' = (H + 2·padding - k) // stride + 1``. Zero padding: a position
outside the image never spikes. Orders of the FP16 operations, which the gateware reproduces:

* **FP** (:func:`conv_forward`): each output neuron's current starts at +0; the input spikes of
  a timestep are taken in ascending ``(c, y, x)`` order and each adds ``W[:, c, dy, dx]`` into
  every output position ``(oy, ox)`` it reaches (``y = oy·stride + dy - padding``): a
  scatter-accumulate, no multiplications. For one output neuron that is its reached inputs in
  ascending ``(c, dy, dx)``: the order of a linear layer whose weight matrix is the unrolled
  convolution.
* **BP** (:func:`conv_backward`): the error of each input position starts at +0; the output
  neurons are taken in ascending ``(k, oy, ox)`` order, those with ``δX == 0`` skipped, and each
  adds ``W[k, c, dy, dx] · δX[k, oy, ox]`` (a rounded product, then a rounded sum) into every
  input it reaches: the transposed convolution, in a linear layer's BP order.
* **WG** (:func:`conv_weight_grad`): ``ΔW`` accumulates sample after sample, within a sample
  timestep after timestep in reverse (the order BP produces ``δX``); within a timestep every
  input spike ``(c, y, x)``, in ascending order, adds ``δX[:, oy, ox]`` into ``ΔW[:, c, dy, dx]``
  for each output position it reaches. One weight is shared by many positions, so one element
  of ``ΔW`` takes its additions in ascending ``(oy, ox)``. Additions only.
* **CML max-pooling** (:func:`max_pool_currents`): 2×2 windows, stride 2, over the *currents*
  before the LIF neurons (trailing odd rows and columns are left out). The window's four
  currents are taken in raster order, ``(0, 0), (0, 1), (1, 0), (1, 1)``; a candidate replaces
  the running maximum unless ``maximum >= candidate`` (the FP16 compare), so of equal currents
  (``-0`` and ``+0`` included) the first wins. Backward (:func:`max_pool_backward`), ``δX`` of a
  pooled neuron goes to its window's winner and every other position gets +0. No rounding.

In float precision the same sums are PyTorch's convolutions (order unspecified).

>>> from spikeforge.golden.arith import FP16
>>> g = ConvGeometry(in_channels=1, out_channels=1, height=3, width=3, kernel=3, padding=1)
>>> w = torch.arange(9.0).reshape(1, 1, 3, 3)
>>> s = torch.zeros(1, 1, 3, 3); s[0, 0, 1, 1] = 1      # one spike in the middle
>>> conv_forward(s, w, g, FP16())[0, 0].tolist()       # the flipped kernel around it
[[8.0, 7.0, 6.0], [5.0, 4.0, 3.0], [2.0, 1.0, 0.0]]
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError
from .arith import FLOAT, Arith
from .linear import _check_binary

__all__ = ["KERNELS", "STRIDES", "ConvGeometry", "conv_backward", "conv_forward",
           "conv_weight_grad", "max_pool_backward", "max_pool_currents"]

KERNELS = (1, 3, 5)
STRIDES = (1, 2)


@dataclass(frozen=True)
class ConvGeometry:
    """The shape of a convolution: channels, image size, kernel, stride and zero padding."""

    in_channels: int
    out_channels: int
    height: int
    width: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0

    def __post_init__(self):
        for name in ("in_channels", "out_channels", "height", "width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"convolution {name} must be a positive integer, not {value!r}")
        if self.kernel not in KERNELS:
            raise ConfigError(f"convolution kernel must be one of {KERNELS}, not {self.kernel!r}")
        if self.stride not in STRIDES:
            raise ConfigError(f"convolution stride must be one of {STRIDES}, not {self.stride!r}")
        if isinstance(self.padding, bool) or not isinstance(self.padding, int) \
                or not 0 <= self.padding < self.kernel:
            raise ConfigError(f"convolution padding must be an integer from 0 to kernel - 1 = "
                              f"{self.kernel - 1}, not {self.padding!r}")
        for name, size in (("height", self.height), ("width", self.width)):
            if size + 2 * self.padding < self.kernel:
                raise ConfigError(
                    f"a {self.kernel}×{self.kernel} kernel is larger than the image's {name} "
                    f"{size} with padding {self.padding}: use a smaller kernel or pad by at "
                    f"least {(self.kernel - size + 1) // 2}")

    @property
    def out_height(self) -> int:
        return (self.height + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def out_width(self) -> int:
        return (self.width + 2 * self.padding - self.kernel) // self.stride + 1

    @property
    def weight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels, self.kernel, self.kernel)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.in_channels, self.height, self.width)

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.out_channels, self.out_height, self.out_width)

    def _window(self, padded: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
        """The positions of ``padded`` (``[..., H + 2p, W + 2p]``) that kernel offset
        ``(dy, dx)`` of every output position reads: ``[..., H', W']``."""
        s = self.stride
        return padded[..., dy:dy + s * (self.out_height - 1) + 1:s,
                      dx:dx + s * (self.out_width - 1) + 1:s]

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        return F.pad(x, (p, p, p, p)) if p else x

    def _crop(self, x: torch.Tensor) -> torch.Tensor:
        p = self.padding
        return x[..., p:p + self.height, p:p + self.width] if p else x


def _check_weights(w, geometry: ConvGeometry) -> None:
    if not isinstance(w, torch.Tensor) or tuple(w.shape) != geometry.weight_shape:
        raise ShapeError(f"convolution weights must be {list(geometry.weight_shape)} "
                         f"[out channels, in channels, k, k], not "
                         f"{list(getattr(w, 'shape', ()))}")


def _check_maps(x, shape: tuple, what: str, axes: str) -> None:
    if not isinstance(x, torch.Tensor) or x.dim() < 4 or tuple(x.shape[-3:]) != shape \
            or x.shape[0] == 0:
        raise ShapeError(f"{what} must be a tensor [T >= 1, ..., {axes}] = "
                         f"[T, ..., {', '.join(map(str, shape))}], not "
                         f"{list(getattr(x, 'shape', ()))}")


def _images(x: torch.Tensor) -> tuple[torch.Tensor, tuple]:
    """``x`` as a batch of images ``[N, C, H, W]``, and its leading axes."""
    return x.reshape(-1, *x.shape[-3:]), tuple(x.shape[:-3])


def conv_forward(s_in: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry,
                 arith: Arith = FLOAT) -> torch.Tensor:
    """FP engine: currents ``X[t, ..., k, oy, ox] = Σ W[k, c, dy, dx]·s_in[t, ..., c, y, x]``."""
    _check_weights(w, geometry)
    _check_maps(s_in, geometry.input_shape, "convolution input", "C, H, W")
    w = arith.cast(w)
    if not arith.exact:
        images, lead = _images(arith.cast(s_in))
        out = F.conv2d(images, w, stride=geometry.stride, padding=geometry.padding)
        return out.reshape(*lead, *out.shape[1:])
    _check_binary(s_in)
    padded = geometry._pad(s_in.bool())
    zero = torch.zeros((), dtype=w.dtype)
    acc = torch.zeros(*s_in.shape[:-3], *geometry.output_shape, dtype=w.dtype)
    k = geometry.kernel
    for c in range(geometry.in_channels):
        for dy in range(k):
            for dx in range(k):
                reached = geometry._window(padded[..., c, :, :], dy, dx)
                if bool(reached.any()):
                    gated = torch.where(reached[..., None, :, :], w[:, c, dy, dx, None, None],
                                        zero)
                    acc = arith.add(acc, gated)
    return acc


def conv_backward(dx: torch.Tensor, w: torch.Tensor, geometry: ConvGeometry,
                  arith: Arith = FLOAT) -> torch.Tensor:
    """BP engine: the error of the input positions,
    ``g[t, ..., c, y, x] = Σ W[k, c, dy, dx]·δX[t, ..., k, oy, ox]``."""
    _check_weights(w, geometry)
    _check_maps(dx, geometry.output_shape, "current gradient", "K, H', W'")
    w, dx = arith.cast(w), arith.cast(dx)
    if not arith.exact:
        images, lead = _images(dx)
        g = torch.nn.grad.conv2d_input((images.shape[0], *geometry.input_shape), w, images,
                                       stride=geometry.stride, padding=geometry.padding)
        return g.reshape(*lead, *g.shape[1:])
    p, k = geometry.padding, geometry.kernel
    lead = dx.shape[:-3]
    acc = torch.zeros(*lead, geometry.in_channels, geometry.height + 2 * p,
                      geometry.width + 2 * p, dtype=w.dtype)
    zero = torch.zeros((), dtype=w.dtype)
    nonzero = dx != 0
    # Output neurons in ascending (k, oy, ox): for one input position, oy rises as dy falls.
    for n in range(geometry.out_channels):
        if not bool(nonzero[..., n, :, :].any()):
            continue
        delta, live = dx[..., n, None, :, :], nonzero[..., n, None, :, :]
        for dy in reversed(range(k)):
            for dx_ in reversed(range(k)):
                products = torch.where(live, arith.mul(w[n, :, dy, dx_, None, None], delta), zero)
                window = geometry._window(acc, dy, dx_)
                window.copy_(arith.add(window, products))
    return geometry._crop(acc)


def conv_weight_grad(dx: torch.Tensor, s_in: torch.Tensor, geometry: ConvGeometry,
                     arith: Arith = FLOAT, dw: torch.Tensor | None = None) -> torch.Tensor:
    """WG engine: ``ΔW += Σ δX[k, oy, ox]·s_in[c, y, x]`` over positions, timesteps and samples;
    returns ``ΔW``.

    ``dx`` is ``[T, B, K, H', W']`` and ``s_in`` ``[T, B, C, H, W]``; ``dw``
    (``[K, C, k, k]``, zeros if not given) is the gradient so far.
    """
    _check_maps(dx, geometry.output_shape, "current gradient", "K, H', W'")
    _check_maps(s_in, geometry.input_shape, "convolution input", "C, H, W")
    if dx.dim() != 5 or s_in.dim() != 5 or dx.shape[:2] != s_in.shape[:2]:
        raise ShapeError(f"current gradient [T, B, K, H', W'] and input [T, B, C, H, W] must "
                         f"have the same T and B, got {list(dx.shape)} and {list(s_in.shape)}")
    if dw is None:
        dw = torch.zeros(geometry.weight_shape, dtype=arith.dtype)
    else:
        _check_weights(dw, geometry)
    dw, dx = arith.cast(dw), arith.cast(dx)
    if not arith.exact:
        images, _ = _images(arith.cast(s_in))
        grads, _ = _images(dx)
        return dw + torch.nn.grad.conv2d_weight(images, geometry.weight_shape, grads,
                                                stride=geometry.stride,
                                                padding=geometry.padding)
    _check_binary(s_in)
    padded = geometry._pad(s_in.bool())
    k, s = geometry.kernel, geometry.stride
    steps, batch = dx.shape[:2]
    nonzero = (dx != 0).any(2)
    for b in range(batch):
        for t in reversed(range(steps)):
            for oy, ox in torch.nonzero(nonzero[t, b]).tolist():
                reached = padded[t, b, :, oy * s:oy * s + k, ox * s:ox * s + k]
                if bool(reached.any()):
                    dw = torch.where(reached, arith.add(dw, dx[t, b, :, oy, ox, None, None, None]),
                                     dw)
    return dw


def max_pool_currents(x: torch.Tensor, arith: Arith = FLOAT) -> tuple[torch.Tensor,
                                                                      torch.Tensor]:
    """CML's 2×2, stride-2 max-pooling of currents ``[..., K, H', W']``: the pooled currents
    ``[..., K, H'//2, W'//2]`` and each window's winner (0 to 3 in raster order; ties to the
    first)."""
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ShapeError(f"max-pooling needs currents [..., K, H, W] with H, W >= 2, not "
                         f"{list(getattr(x, 'shape', ()))}")
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = arith.cast(x)[..., :h, :w]
    candidates = [x[..., dy::2, dx::2] for dy in (0, 1) for dx in (0, 1)]
    best, winner = candidates[0], torch.zeros(candidates[0].shape, dtype=torch.uint8)
    for j, candidate in enumerate(candidates[1:], 1):
        take = ~arith.ge(best, candidate)
        best = torch.where(take, candidate, best)
        winner = torch.where(take, torch.tensor(j, dtype=torch.uint8), winner)
    return best, winner


def max_pool_backward(dpool: torch.Tensor, winner: torch.Tensor,
                      size: tuple[int, int]) -> torch.Tensor:
    """The error of the currents before pooling: ``dpool`` at each window's ``winner``, +0
    elsewhere (and in the odd rows and columns pooling left out); ``size`` is ``(H', W')``."""
    if not isinstance(dpool, torch.Tensor) or dpool.shape != winner.shape \
            or dpool.dim() < 3:
        raise ShapeError(f"the pooled error {list(getattr(dpool, 'shape', ()))} and the "
                         f"winners {list(getattr(winner, 'shape', ()))} must be alike "
                         f"[..., K, H'//2, W'//2]")
    height, width = size
    if (height // 2, width // 2) != tuple(dpool.shape[-2:]):
        raise ShapeError(f"pooled error {list(dpool.shape)} does not come from currents of "
                         f"{height}×{width}")
    out = torch.zeros(*dpool.shape[:-2], height, width, dtype=dpool.dtype)
    for j, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        window = out[..., dy:height // 2 * 2:2, dx:width // 2 * 2:2]
        window.copy_(torch.where(winner == j, dpool, window))
    return out
