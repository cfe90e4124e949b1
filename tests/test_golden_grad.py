# SPDX-License-Identifier: Apache-2.0
"""The explicit FP, BP and WG engines against ``torch.autograd``, in float64.

The spike function is a step, so ``torch.autograd.gradcheck`` (finite differences) does not
apply: the surrogate derivative is a definition, not the derivative of the forward pass. The
gradient check is therefore agreement with autograd through
:func:`~spikeforge.golden.autograd.lif_autograd`, which writes the LIF dynamics as ordinary torch
operations, with the same surrogate in :class:`~spikeforge.golden.autograd.SpikeFunction`.
Every case runs all reset modes, detach_reset settings and surrogates; every case checks that
its spike rasters are neither all 0 nor all 1 and that the expected gradients are not all zero.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from spikeforge.golden.arith import Float
from spikeforge.golden.autograd import lif_autograd
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.linear import linear_backward, linear_forward, linear_weight_grad
from spikeforge.golden.network import QKNet, SpikingCNN, SpikingMLP
from spikeforge.golden.qk import (
    attention_lif_params,
    qk_attention_backward,
    qk_attention_forward,
)
from spikeforge.golden.surrogate import SURROGATES, Surrogate

F64 = Float(torch.float64)
RTOL = 1e-12

CONFIGS = [
    pytest.param(reset, detach, kind, id=f"{reset}-{'detach' if detach else 'attached'}-{kind}")
    for reset, detach, kind in itertools.product(("hard", "soft"), (True, False), SURROGATES)
]


def _lif(reset, detach, kind, **kw):
    return LIFParams(reset=reset, detach_reset=detach, surrogate=Surrogate(kind), **kw)


def _close(got, expected, what):
    assert got.dtype == torch.float64 and expected.dtype == torch.float64, what
    assert got.shape == expected.shape, what
    assert bool(expected.abs().max() > 0), f"{what}: the expected gradient is all zero"
    atol = RTOL * float(expected.abs().max())
    torch.testing.assert_close(got, expected, rtol=RTOL, atol=atol, msg=lambda m: f"{what}: {m}")


def _fires_sometimes(s, what):
    assert bool(((s == 0) | (s == 1)).all()), what
    assert 0 < float(s.mean()) < 1, f"{what}: the spike raster is all {int(s.flatten()[0])}"


def _set_weights(net, gen, mean=0.7):
    for name, w in net.weights.items():
        z = torch.randn(w.shape, generator=gen, dtype=torch.float64)
        net.weights[name] = (z + mean) * 2 / w.shape[1] ** 0.5


def _spikes(shape, rate, gen):
    return (torch.rand(*shape, generator=gen, dtype=torch.float64) < rate).double()


@pytest.mark.parametrize("tau", [2.0, 3.0])
@pytest.mark.parametrize(("reset", "detach", "kind"), CONFIGS)
def test_lif_backward_equals_autograd(reset, detach, kind, tau):
    gen = torch.Generator().manual_seed(11)
    p = _lif(reset, detach, kind, tau=tau, v_reset=-0.25 if tau == 3.0 else 0.0)
    x = torch.rand(10, 3, 7, generator=gen, dtype=torch.float64) * 3.0 - 0.2
    g = torch.randn(10, 3, 7, generator=gen, dtype=torch.float64)
    s, h = lif_forward(x, p, F64)
    _fires_sometimes(s, "LIF spikes")
    rate = s.mean(0)
    assert int(((rate > 0) & (rate < 1)).sum()) >= 15, "too few neurons fire sometimes"
    xa = x.clone().requires_grad_(True)
    sa = lif_autograd(xa, p)
    assert torch.equal(sa.detach(), s)
    (sa * g).sum().backward()
    _close(lif_backward(g, h, s, p, F64), xa.grad, "∂L/∂X")


def _mlp_autograd(x, weights, p):
    s = x
    for w in weights:
        s = lif_autograd(s @ w.T, p)
    return s


@pytest.mark.parametrize(("reset", "detach", "kind"), CONFIGS)
def test_mlp_backward_equals_autograd(reset, detach, kind):
    gen = torch.Generator().manual_seed(1)
    p = _lif(reset, detach, kind)
    net = SpikingMLP([9, 7, 6, 4], lif=p, arith=F64)
    _set_weights(net, gen)
    x = _spikes((8, 3, 9), 0.5, gen)
    g = torch.randn(8, 3, 4, generator=gen, dtype=torch.float64)
    out, cache = net.forward(x)
    for i, (_, _, s_out) in enumerate(cache):
        _fires_sometimes(s_out, f"spikes of layer {i}")
    grads = net.backward(cache, g)
    assert sorted(grads) == ["fc0", "fc1", "fc2"]

    ws = [net.weights[f"fc{i}"].clone().requires_grad_(True) for i in range(3)]
    xa = x.clone().requires_grad_(True)
    outa = _mlp_autograd(xa, ws, p)
    assert torch.equal(outa.detach(), out)
    (outa * g).sum().backward()
    for i, w in enumerate(ws):
        _close(grads[f"fc{i}"], w.grad, f"ΔW of fc{i}")

    gs = g
    for i in reversed(range(3)):
        s_in, h, s_out = cache[i]
        dx = lif_backward(gs, h, s_out, p, F64)
        _close(linear_weight_grad(dx, s_in, F64), ws[i].grad, f"WG of fc{i}")
        gs = linear_backward(dx, net.weights[f"fc{i}"], F64)
    _close(gs, xa.grad, "input error Wᵀδ of fc0")


def _qk_autograd(q, k, kind, p):
    axis = -1 if kind == "token" else -2
    a = lif_autograd(q.sum(axis), p)
    return a.unsqueeze(axis) * k, a


@pytest.mark.parametrize("kind", ["token", "channel"])
@pytest.mark.parametrize(("reset", "detach", "surrogate"), CONFIGS)
def test_qk_attention_backward_equals_autograd(reset, detach, surrogate, kind):
    gen = torch.Generator().manual_seed(7)
    p = attention_lif_params(reset=reset, detach_reset=detach, surrogate=Surrogate(surrogate))
    q = _spikes((6, 2, 5, 4), 0.12, gen)
    k = _spikes((6, 2, 5, 4), 0.5, gen)
    g = torch.randn(6, 2, 5, 4, generator=gen, dtype=torch.float64)
    x, cache = qk_attention_forward(q, k, kind, p, F64)
    _fires_sometimes(cache["a"], "attention spikes")
    _fires_sometimes(x, "attention output")
    qa, ka = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    xa, aa = _qk_autograd(qa, ka, kind, p)
    assert torch.equal(aa.detach(), cache["a"])
    assert torch.equal(xa.detach(), x)
    (xa * g).sum().backward()
    dq, dk = qk_attention_backward(g, cache, F64)
    _close(dq, qa.grad, "δQ")
    _close(dk, ka.grad, "δK")


def _qknet_autograd(net, x, ws):
    p, pa = net.lif, net.attention_lif
    x0 = x @ ws["embed"].T
    s0 = lif_autograd(x0, p)
    q = lif_autograd(s0 @ ws["q"].T, p)
    k = lif_autograd(s0 @ ws["k"].T, p)
    att, a = _qk_autograd(q, k, net.attention, pa)
    x1 = x0 + att @ ws["proj"].T
    s1 = lif_autograd(x1, p)
    out = lif_autograd(s1.flatten(2) @ ws["head"].T, p)
    return out, {"s0": s0, "q": q, "k": k, "att": att, "s1": s1}


@pytest.mark.parametrize("attention", ["token", "channel"])
@pytest.mark.parametrize(("reset", "detach", "kind"), CONFIGS)
def test_qknet_backward_equals_autograd(reset, detach, kind, attention):
    gen = torch.Generator().manual_seed(3)
    p = _lif(reset, detach, kind)
    pa = attention_lif_params(reset=reset, detach_reset=detach, surrogate=Surrogate(kind),
                              v_th=1.0)
    net = QKNet(tokens=4, features=5, dim=6, classes=3, attention=attention, lif=p,
                attention_lif=pa, arith=F64)
    _set_weights(net, gen)
    x = _spikes((6, 2, 4, 5), 0.5, gen)
    g = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    out, cache = net.forward(x)
    for name in ("s0", "q", "k", "att", "s1", "out"):
        _fires_sometimes(cache[name], f"QKNet {name}")
    _fires_sometimes(cache["qk"]["a"], "QKNet attention neurons")
    grads = net.backward(cache, g)
    assert sorted(grads) == sorted(net.weights)

    ws = {name: w.clone().requires_grad_(True) for name, w in net.weights.items()}
    outa, ca = _qknet_autograd(net, x, ws)
    for name, s in ca.items():
        assert torch.equal(s.detach(), cache[name]), name
    assert torch.equal(outa.detach(), out)
    (outa * g).sum().backward()
    for name, w in ws.items():
        _close(grads[name], w.grad, f"ΔW of {name}")


def _cnn_autograd(net, x, ws):
    s, spikes = x, []
    for i, g in enumerate(net.geometries):
        currents = F.conv2d(s.flatten(0, 1), ws[f"conv{i}"], padding=g.padding)
        if net.pool[i]:
            currents = F.max_pool2d(currents, 2)
        s = lif_autograd(currents.unflatten(0, s.shape[:2]), net.lif)
        spikes.append(s)
    return lif_autograd(s.flatten(2) @ ws["fc"].T, net.lif), spikes


@pytest.mark.parametrize(("reset", "detach", "kind", "pool"), [
    *(pytest.param(*config.values, (True, True), id=config.id) for config in CONFIGS),
    pytest.param("hard", True, "sigmoid", (False, True), id="hard-detach-sigmoid-unpooled"),
    pytest.param("soft", False, "atan", (False, True), id="soft-attached-atan-unpooled"),
])
def test_cnn_backward_equals_autograd(reset, detach, kind, pool):
    gen = torch.Generator().manual_seed(5)
    p = _lif(reset, detach, kind)
    net = SpikingCNN(image=(2, 7, 6), channels=(5, 3), classes=4, pool=pool, lif=p, arith=F64)
    _set_weights(net, gen, mean=0.0)
    x = _spikes((6, 3, 2, 7, 6), 0.5, gen)
    g = torch.randn(6, 3, 4, generator=gen, dtype=torch.float64)
    out, cache = net.forward(x)
    states = net.states(cache)
    assert sorted(states) == ["conv0", "conv1", "fc"]
    sizes = [(3, 3), (1, 1)] if pool[0] else [(7, 6), (3, 3)]
    assert states["conv0"][1].shape == (6, 3, 5, *sizes[0])
    assert states["conv1"][1].shape == (6, 3, 3, *sizes[1])
    for name, (_, s) in states.items():
        _fires_sometimes(s, f"CNN {name}")
    grads = net.backward(cache, g)
    assert sorted(grads) == sorted(net.weights)

    ws = {name: w.clone().requires_grad_(True) for name, w in net.weights.items()}
    outa, spikes = _cnn_autograd(net, x, ws)
    for i, s in enumerate(spikes):
        assert torch.equal(s.detach(), states[f"conv{i}"][1]), i
    assert torch.equal(outa.detach(), out)
    (outa * g).sum().backward()
    for name, w in ws.items():
        _close(grads[name], w.grad, f"ΔW of {name}")


def test_float64_linear_engines_are_the_matrix_products():
    gen = torch.Generator().manual_seed(1)
    s = _spikes((3, 2, 5, 6), 0.5, gen)
    w = torch.randn(4, 6, generator=gen, dtype=torch.float64).requires_grad_(True)
    dx = torch.randn(3, 2, 5, 4, generator=gen, dtype=torch.float64)
    sa = s.clone().requires_grad_(True)
    y = sa @ w.T
    (y * dx).sum().backward()
    assert torch.equal(linear_forward(s, w.detach(), F64), y.detach())
    _close(linear_backward(dx, w.detach(), F64), sa.grad, "BP")
    _close(linear_weight_grad(dx, s, F64), w.grad, "WG")
