# SPDX-License-Identifier: Apache-2.0
import pytest
import torch
import torch.nn.functional as F

from spikeforge.errors import ConfigError, ShapeError
from spikeforge.golden import conv, fp16
from spikeforge.golden.arith import FP16, Float
from spikeforge.golden.linear import linear_backward, linear_forward

F64 = Float(torch.float64)

GEOMETRIES = [
    conv.ConvGeometry(in_channels=1, out_channels=1, height=5, width=5, kernel=3),
    conv.ConvGeometry(in_channels=3, out_channels=5, height=6, width=7, kernel=3, padding=1),
    conv.ConvGeometry(in_channels=2, out_channels=4, height=8, width=8, kernel=3, stride=2,
                 padding=1),
    conv.ConvGeometry(in_channels=4, out_channels=3, height=7, width=5, kernel=5, padding=2),
    conv.ConvGeometry(in_channels=5, out_channels=6, height=9, width=6, kernel=5, stride=2),
    conv.ConvGeometry(in_channels=6, out_channels=2, height=4, width=3, kernel=1),
    conv.ConvGeometry(in_channels=3, out_channels=16, height=6, width=6, kernel=1, stride=2),
]


def ids(g: conv.ConvGeometry) -> str:
    return f"c{g.in_channels}k{g.out_channels}_{g.height}x{g.width}_k{g.kernel}s{g.stride}" \
           f"p{g.padding}"


def weights(g: conv.ConvGeometry, seed: int) -> torch.Tensor:
    """binary16 weights whose sums round: the order of the additions shows in the bits."""
    gen = torch.Generator().manual_seed(seed)
    return fp16.to_fp16(torch.randn(g.weight_shape, generator=gen, dtype=torch.float64) * 0.7)


def spikes(shape, rate: float, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).to(torch.float16)


def unrolled(w: torch.Tensor, g: conv.ConvGeometry) -> torch.Tensor:
    """The convolution as a matrix [K·H'·W', C·H·W], column i the response to input i alone."""
    n_in = g.in_channels * g.height * g.width
    basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *g.input_shape)
    out = F.conv2d(basis, w.double(), stride=g.stride, padding=g.padding)
    return out.reshape(n_in, -1).T.to(torch.float16)


def bits(x: torch.Tensor) -> list:
    return fp16.bits(x.contiguous()).flatten().tolist()


@pytest.mark.parametrize("g", GEOMETRIES, ids=ids)
def test_the_float_engines_are_pytorch_s_convolution_and_its_gradients(g):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, *g.input_shape, generator=gen, dtype=torch.float64)
    w = torch.randn(g.weight_shape, generator=gen, dtype=torch.float64)
    xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
    y = F.conv2d(xr.reshape(6, *g.input_shape), wr, stride=g.stride, padding=g.padding)
    grad = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(grad)
    grad = grad.reshape(2, 3, *g.output_shape)
    assert torch.allclose(conv.conv_forward(x, w, g, F64), y.detach().reshape(grad.shape))
    assert torch.allclose(conv.conv_backward(grad, w, g, F64), xr.grad)
    assert torch.allclose(conv.conv_weight_grad(grad, x, g, F64), wr.grad)
    assert torch.allclose(conv.conv_weight_grad(grad, x, g, F64, dw=torch.ones_like(w)),
                          wr.grad + 1)


@pytest.mark.parametrize("g", GEOMETRIES, ids=ids)
@pytest.mark.parametrize("rate", [0.0, 0.15, 0.5, 1.0])
def test_fp16_forward_is_the_unrolled_linear_layer_bit_for_bit(g, rate):
    w = weights(g, 1)
    s = spikes((3, 2, *g.input_shape), rate, 2)
    matrix = unrolled(w, g)
    got = conv.conv_forward(s, w, g, FP16())
    want = linear_forward(s.flatten(-3), matrix, FP16()).reshape(got.shape)
    assert bits(got) == bits(want)
    exact = conv.conv_forward(s.double(), w.double(), g, F64)
    if rate == 0:
        assert not got.any()
    else:
        assert got.count_nonzero() > got.numel() // 4
        assert torch.allclose(got.double(), exact, atol=0.05, rtol=0.02)
    if rate >= 0.5 and g.in_channels * g.kernel ** 2 >= 9:
        backwards = linear_forward(s.flatten(-3).flip(-1), matrix.flip(-1), FP16())
        assert bits(backwards) != bits(want), "stimulus too easy: its sums do not round"


@pytest.mark.parametrize("g", GEOMETRIES, ids=ids)
@pytest.mark.parametrize("density", [0.0, 0.3, 1.0])
def test_fp16_backward_is_the_unrolled_linear_layer_bit_for_bit(g, density):
    w = weights(g, 4)
    gen = torch.Generator().manual_seed(5)
    shape = (2, 2, *g.output_shape)
    delta = fp16.to_fp16(torch.randn(shape, generator=gen, dtype=torch.float64) * 0.1)
    delta = torch.where(torch.rand(shape, generator=gen) < density, delta, 0).half()
    matrix = unrolled(w, g)
    got = conv.conv_backward(delta, w, g, FP16())
    want = linear_backward(delta.flatten(-3), matrix, FP16()).reshape(got.shape)
    assert got.shape == (2, 2, *g.input_shape)
    assert bits(got) == bits(want)
    if density:
        assert got.count_nonzero() > 0
        exact = conv.conv_backward(delta.double(), w.double(), g, F64)
        assert torch.allclose(got.double(), exact, atol=0.01, rtol=0.02)
    else:
        assert not got.any()


def test_a_zero_error_times_an_infinite_weight_adds_nothing():
    g = conv.ConvGeometry(in_channels=1, out_channels=2, height=3, width=3, kernel=3, padding=1)
    w = torch.ones(g.weight_shape, dtype=torch.float16)
    w[0] = torch.inf
    delta = torch.zeros(1, *g.output_shape, dtype=torch.float16)
    delta[0, 1, 1, 1] = 0.5
    got = conv.conv_backward(delta, w, g, FP16())
    assert not got.isnan().any() and got[0, 0, 1, 1] == 0.5


def reference_weight_grad(delta, s, g: conv.ConvGeometry) -> torch.Tensor:
    """ΔW by the WG engine's loops, one binary16 addition at a time."""
    dw = torch.zeros(g.weight_shape, dtype=torch.float16)
    k, p, st = g.kernel, g.padding, g.stride
    for b in range(s.shape[1]):
        for t in reversed(range(s.shape[0])):
            for c, y, x in torch.nonzero(s[t, b]).tolist():
                for dy in range(k):
                    for dx in range(k):
                        oy, ry = divmod(y + p - dy, st)
                        ox, rx = divmod(x + p - dx, st)
                        if ry or rx or not (0 <= oy < g.out_height and 0 <= ox < g.out_width):
                            continue
                        column = delta[t, b, :, oy, ox]
                        dw[:, c, dy, dx] = fp16.add(dw[:, c, dy, dx], column)
    return dw


@pytest.mark.parametrize("g", [GEOMETRIES[1], GEOMETRIES[2], GEOMETRIES[4]], ids=ids)
def test_fp16_weight_gradient_takes_the_engine_s_order(g):
    gen = torch.Generator().manual_seed(6)
    s = spikes((3, 2, *g.input_shape), 0.4, 7)
    shape = (3, 2, *g.output_shape)
    delta = fp16.to_fp16(torch.randn(shape, generator=gen, dtype=torch.float64))
    delta = torch.where(torch.rand(shape, generator=gen) < 0.6, delta, 0).half()
    got = conv.conv_weight_grad(delta, s, g, FP16())
    want = reference_weight_grad(delta, s, g)
    assert bits(got) == bits(want)
    assert got.count_nonzero() > got.numel() // 2
    forwards = reference_weight_grad(delta.flip(0), s.flip(0), g)
    assert bits(forwards) != bits(want), "stimulus too easy: its sums do not round"
    again = conv.conv_weight_grad(delta, s, g, FP16(), dw=got)
    assert bits(again) == bits(reference_weight_grad(torch.cat([delta, delta], 1),
                                                     torch.cat([s, s], 1), g))


def test_max_pooling_of_currents_is_pytorch_s_forward_and_backward():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 4, 7, 9, generator=gen, dtype=torch.float64)
    xr = x.clone().requires_grad_()
    pooled, index = F.max_pool2d(xr.reshape(-1, 7, 9), 2, return_indices=True)
    grad = torch.randn(pooled.shape, generator=gen, dtype=torch.float64)
    pooled.backward(grad)
    got, winner = conv.max_pool_currents(x, F64)
    assert torch.equal(got, pooled.detach().reshape(got.shape))
    back = conv.max_pool_backward(grad.reshape(got.shape), winner, (7, 9))
    assert torch.equal(back, xr.grad)
    assert back[..., 6, :].eq(0).all() and back[..., :, 8].eq(0).all()


def test_max_pooling_compares_in_fp16_and_gives_ties_to_the_first():
    rows = [[1.0, 2.0, 2.0, 1.0], [0.0, -0.0, 3.0, 3.0], [-0.0, 0.0, -1.0, -2.0],
            [0.0, 0.0, 0.0, 0.0], [-2.0, -1.0, -1.0, -3.0], [65504.0, 65504.0, 1.0, -1.0]]
    x = torch.tensor(rows, dtype=torch.float16).reshape(6, 1, 2, 2)
    got, winner = conv.max_pool_currents(x, FP16())
    assert winner.flatten().tolist() == [1, 2, 0, 0, 1, 0]
    assert bits(got) == bits(torch.tensor([2.0, 3.0, -0.0, 0.0, -1.0, 65504.0]).half())
    assert fp16.bits(got[2]).item() == 0x8000, "-0 came first and +0 does not beat it"
    half = torch.full((6, 1, 1, 1), 0.5, dtype=torch.float16)
    back = conv.max_pool_backward(half, winner, (2, 2))
    assert back.reshape(6, 4).argmax(1).tolist() == [1, 2, 0, 0, 1, 0]
    assert back.sum().item() == 3.0


def test_the_kernel_larger_than_the_image_says_what_to_change():
    with pytest.raises(ConfigError, match=r"5×5 kernel is larger than the image's height 3 "
                                          r"with padding 0: .* pad by at least 1"):
        conv.ConvGeometry(in_channels=1, out_channels=1, height=3, width=8, kernel=5)
    conv.ConvGeometry(in_channels=1, out_channels=1, height=3, width=8, kernel=5, padding=1)


@pytest.mark.parametrize("change, message", [
    ({"kernel": 2}, r"kernel must be one of \(1, 3, 5\), not 2"),
    ({"stride": 3}, r"stride must be one of \(1, 2\), not 3"),
    ({"padding": 3}, r"padding must be an integer from 0 to kernel - 1 = 2, not 3"),
    ({"in_channels": 0}, r"in_channels must be a positive integer, not 0"),
    ({"width": True}, r"width must be a positive integer, not True"),
])
def test_bad_geometries_are_refused(change, message):
    with pytest.raises(ConfigError, match=message):
        conv.ConvGeometry(**{"in_channels": 2, "out_channels": 2, "height": 6, "width": 6,
                             **change})


def test_wrong_shapes_and_values_are_refused():
    g = conv.ConvGeometry(in_channels=2, out_channels=3, height=5, width=5)
    w = torch.zeros(g.weight_shape)
    with pytest.raises(ShapeError, match=r"weights must be \[3, 2, 3, 3\]"):
        conv.conv_forward(torch.zeros(1, 1, 2, 5, 5), torch.zeros(3, 2, 5, 5), g)
    with pytest.raises(ShapeError, match=r"input must be a tensor \[T >= 1, ..., C, H, W\] = "
                                         r"\[T, ..., 2, 5, 5\], not \[1, 2, 5, 4\]"):
        conv.conv_forward(torch.zeros(1, 2, 5, 4), w, g)
    with pytest.raises(ShapeError, match=r"spikes \(0 or 1\)"):
        conv.conv_forward(torch.full((1, 1, 2, 5, 5), 0.5), w, g, FP16())
    with pytest.raises(ShapeError, match=r"gradient must be a tensor .* \[T, ..., 3, 3, 3\]"):
        conv.conv_backward(torch.zeros(1, 1, 3, 5, 5), w, g)
    with pytest.raises(ShapeError, match=r"same T and B"):
        conv.conv_weight_grad(torch.zeros(2, 1, 3, 3, 3), torch.zeros(1, 1, 2, 5, 5), g)
    with pytest.raises(ShapeError, match=r"H, W >= 2"):
        conv.max_pool_currents(torch.zeros(1, 1, 5))
