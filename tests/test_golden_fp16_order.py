# SPDX-License-Identifier: Apache-2.0
"""The FP16 engines add and multiply in the order their docstrings state, bit for bit.

Each reference loop here rounds to binary16 after every operation (numpy's float64 → float16
conversion rounds once). The stimulus mixes magnitudes such as 1.0 and 2**-11 (half an ulp of
1.0), so that another order gives other bits; every test asserts that it does.
"""

import numpy as np
import pytest
import torch

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16, Float
from spikeforge.golden.lif import lif_backward
from spikeforge.golden.linear import (
    linear_backward,
    linear_forward,
    linear_weight_grad,
    sgd_update,
)
from spikeforge.golden.qk import attention_lif_params, qk_attention_backward, qk_attention_forward

A = FP16()
MIXED = [1.0, -1.0, 2.0 ** -11, 2.0 ** -11, -(2.0 ** -11), 3 * 2.0 ** -12, 0.5, 1.5,
         2.0 ** -12, 1024.0, 0.75, 2.0 ** -10]


def _r(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


def _mixed(shape, seed):
    gen = torch.Generator().manual_seed(seed)
    values = torch.tensor(MIXED, dtype=torch.float16)
    return values[torch.randint(len(MIXED), shape, generator=gen)]


def _spikes(shape, rate, seed):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(shape, generator=gen) < rate).to(torch.float16)


def _bits(x):
    return fp16.bits(torch.as_tensor(np.asarray(x)).to(torch.float16))


def test_to_fp16_rounds_float64_once():
    x = 1 + 2.0 ** -11 + 2.0 ** -40
    assert int(fp16.bits(fp16.to_fp16(torch.tensor([x], dtype=torch.float64)))) == 0x3C01
    assert int(fp16.bits(A.cast(x))) == 0x3C01


def _sum_reference(x, w, order, fused=False):
    """``out[..., j] = Σ_k w[k, j]·x[..., k]`` over the nonzero ``x`` in ``order``, rounded after
    each product (unless ``fused``) and each addition. A spike's product is its weight, exact."""
    x, w = x.double().numpy(), w.double().numpy()
    out = np.zeros(x.shape[:-1] + (w.shape[1],))
    for idx in np.ndindex(*x.shape[:-1]):
        for j in range(w.shape[1]):
            acc = 0.0
            for k in order(w.shape[0]):
                d = x[idx + (k,)]
                if d != 0:
                    acc = _r(acc + w[k, j] * d) if fused else _r(acc + _r(w[k, j] * d))
            out[idx + (j,)] = acc
    return out


def _forward_reference(s, w, order):
    return _sum_reference(s, w.T, order)


def _ascending(n):
    return range(n)


def _descending(n):
    return reversed(range(n))


def test_linear_forward_adds_inputs_in_ascending_order():
    w = _mixed((6, 12), 1)
    s = _spikes((4, 2, 3, 12), 0.6, 2)
    got = linear_forward(s, w, A)
    assert got.dtype == torch.float16 and got.shape == (4, 2, 3, 6)
    assert torch.equal(fp16.bits(got), _bits(_forward_reference(s, w, _ascending)))
    assert not torch.equal(fp16.bits(got), _bits(_forward_reference(s, w, _descending)))


def test_linear_forward_ascending_order_by_hand():
    w = torch.tensor([[1.0, 2.0 ** -11, 2.0 ** -11], [2.0 ** -11, 2.0 ** -11, 1.0]])
    got = linear_forward(torch.ones(1, 1, 3), w, A)
    assert got.flatten().tolist() == [1.0, 1.0 + 2.0 ** -10]


def test_linear_forward_silent_inputs_change_nothing():
    w = torch.tensor([[float("inf"), 1.0, float("nan")]])
    got = linear_forward(torch.tensor([[[0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0]]]), w, A)
    assert fp16.bits(got).flatten().tolist() == [0x3C00, 0x0000]


def test_linear_backward_adds_outputs_in_ascending_order():
    w = _mixed((10, 7), 3)
    dx = _mixed((3, 2, 10), 4)
    dx[torch.rand(dx.shape, generator=torch.Generator().manual_seed(5)) < 0.25] = 0
    got = linear_backward(dx, w, A)
    assert got.dtype == torch.float16 and got.shape == (3, 2, 7)
    assert torch.equal(fp16.bits(got), _bits(_sum_reference(dx, w, _ascending)))
    assert not torch.equal(fp16.bits(got), _bits(_sum_reference(dx, w, _descending)))


def test_linear_backward_rounds_the_product_before_the_sum():
    w = torch.tensor([[-(1 + 2.0 ** -9), 0.0], [1 + 2.0 ** -10, 0.0]])
    dx = torch.tensor([[[1.0, 1 + 2.0 ** -10]]])
    got = linear_backward(dx, w, A)
    assert fp16.bits(got).flatten().tolist() == [0x0000, 0x0000]
    assert _sum_reference(dx, w, _ascending, fused=True).flatten()[0] == 2.0 ** -20


def test_linear_backward_skips_zero_errors():
    w = torch.tensor([[float("inf"), 1.0], [2.0, float("nan")], [0.5, 0.25]])
    dx = torch.tensor([[[0.0, -0.0, 2.0]], [[1.0, 0.0, 0.0]]])
    got = linear_backward(dx, w, A)
    assert got.tolist() == [[[1.0, 0.5]], [[float("inf"), 1.0]]]
    assert fp16.bits(linear_backward(torch.zeros(1, 1, 3), w, A)).flatten().tolist() == [0, 0]


def _wg_reference(dx, s, dw0, loops):
    dx = dx.double().numpy().reshape(dx.shape[0], dx.shape[1], -1, dx.shape[-1])
    s = s.double().numpy().reshape(s.shape[0], s.shape[1], -1, s.shape[-1])
    dw = dw0.double().numpy().copy()
    for b, t, r in loops(*dx.shape[:3]):
        for i in range(s.shape[-1]):
            if s[t, b, r, i]:
                dw[:, i] = _r(dw[:, i] + dx[t, b, r])
    return dw


def _hw_order(steps, batch, rows):
    """A core's BP: sample by sample, timesteps from the last, within one tokens from the first."""
    return [(b, t, r) for b in range(batch) for t in reversed(range(steps)) for r in range(rows)]


def _forward_time(steps, batch, rows):
    return [(b, t, r) for b in range(batch) for t in range(steps) for r in range(rows)]


def _time_outer(steps, batch, rows):
    return [(b, t, r) for t in reversed(range(steps)) for b in range(batch) for r in range(rows)]


def _rows_descending(steps, batch, rows):
    return [(b, t, r) for b in range(batch) for t in reversed(range(steps))
            for r in reversed(range(rows))]


@pytest.mark.parametrize("with_dw", [False, True], ids=["fresh", "accumulating"])
def test_linear_weight_grad_order(with_dw):
    dx = _mixed((4, 3, 5, 6), 6)
    s = _spikes((4, 3, 5, 7), 0.5, 7)
    dw0 = _mixed((6, 7), 8) if with_dw else torch.zeros(6, 7, dtype=torch.float16)
    got = linear_weight_grad(dx, s, A, dw0 if with_dw else None)
    assert got.dtype == torch.float16 and got.shape == (6, 7)
    assert torch.equal(fp16.bits(got), _bits(_wg_reference(dx, s, dw0, _hw_order)))
    for other in (_forward_time, _time_outer, _rows_descending):
        assert not torch.equal(fp16.bits(got), _bits(_wg_reference(dx, s, dw0, other))), other


def test_linear_weight_grad_without_token_axis():
    dx = _mixed((5, 4, 6), 9)
    s = _spikes((5, 4, 8), 0.5, 10)
    got = linear_weight_grad(dx, s, A)
    expected = _wg_reference(dx, s, torch.zeros(6, 8), _hw_order)
    assert torch.equal(fp16.bits(got), _bits(expected))
    assert not torch.equal(fp16.bits(got), _bits(_wg_reference(dx, s, torch.zeros(6, 8),
                                                                _forward_time)))


def test_linear_weight_grad_leaves_silent_columns_untouched():
    dw0 = torch.tensor([[-0.0, 1.0], [float("inf"), 2.0]], dtype=torch.float16)
    dx = torch.tensor([[[float("nan"), 3.0]]])
    got = linear_weight_grad(dx, torch.tensor([[[0.0, 0.0]]]), A, dw0)
    assert torch.equal(fp16.bits(got), fp16.bits(dw0))


def test_sgd_update_rounds_lr_then_product_then_difference():
    w = _mixed((8, 9), 11) * 3
    dw = fp16.to_fp16(torch.randn(8, 9, generator=torch.Generator().manual_seed(12)) * 7)
    lr = 0.1
    got = sgd_update(w, dw, lr, A)
    wd, dwd = w.double().numpy(), dw.double().numpy()
    expected = _r(wd - _r(_r(lr) * dwd))
    assert torch.equal(fp16.bits(got), _bits(expected))
    assert not torch.equal(fp16.bits(got), _bits(_r(wd - _r(lr * dwd))))
    assert not torch.equal(fp16.bits(got), _bits(_r(wd - _r(lr) * dwd)))


def _da_reference(g, k, kind, order):
    g, k = g.double().numpy(), k.double().numpy()
    axis = 3 if kind == "token" else 2
    da = np.zeros(np.delete(np.array(g.shape), axis))
    for j in order(g.shape[axis]):
        kj, gj = np.take(k, j, axis), np.take(g, j, axis)
        da = np.where(kj == 1, _r(da + gj), da)
    return da


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_qk_backward_accumulates_da_in_ascending_order(kind):
    q = _spikes((5, 2, 6, 7), 0.15, 13)
    k = _spikes((5, 2, 6, 7), 0.6, 14)
    g = _mixed((5, 2, 6, 7), 15)
    p = attention_lif_params(surrogate="rect", v_th=1.0)
    x, cache = qk_attention_forward(q, k, kind, p, A)
    a = cache["a"]
    assert 0 < float(a.float().mean()) < 1
    x64, _ = qk_attention_forward(q.double(), k.double(), kind, p, Float(torch.float64))
    assert torch.equal(fp16.bits(x), fp16.bits(x64))
    dq, dk = qk_attention_backward(g, cache, A)
    axis = -1 if kind == "token" else -2
    fired = a.unsqueeze(axis).bool().expand_as(g)
    assert torch.equal(fp16.bits(dk), torch.where(fired, fp16.bits(g), 0))
    dq_ref = {}
    for order in (_ascending, _descending):
        da = torch.from_numpy(_da_reference(g, k, kind, order)).half()
        dsum = lif_backward(da, cache["h"], a, p, A)
        assert bool((dsum != 0).any())
        dq_ref[order] = fp16.bits(dsum.unsqueeze(axis).expand_as(g))
    assert torch.equal(fp16.bits(dq), dq_ref[_ascending])
    assert not torch.equal(fp16.bits(dq), dq_ref[_descending])


def test_qknet_error_of_the_embedding_is_one_sum_over_q_then_k():
    from spikeforge.golden.network import QKNet

    net = QKNet(tokens=3, features=5, dim=6, classes=4, arith=A, seed=1, gain=4.0)
    x = _spikes((4, 2, 3, 5), 0.5, 21)
    out, c = net.forward(x)
    g_out = _mixed(tuple(out.shape), 22)
    grads = net.backward(c, g_out)
    w, p = net.weights, net.lif
    dxo = lif_backward(g_out, c["hout"], c["out"], p, A)
    g1 = linear_backward(dxo, w["head"], A).unflatten(2, (3, 6))
    dx1 = lif_backward(g1, c["h1"], c["s1"], p, A)
    dq, dk = qk_attention_backward(linear_backward(dx1, w["proj"], A), c["qk"], A)
    dxq, dxk = lif_backward(dq, c["hq"], c["q"], p, A), lif_backward(dk, c["hk"], c["k"], p, A)
    assert bool((dxq != 0).any()) and bool((dxk != 0).any())

    def embed_grad(g0):
        dx0 = A.add(lif_backward(g0, c["h0"], c["s0"], p, A), dx1)
        return fp16.bits(linear_weight_grad(dx0, x, A))

    stacked = linear_backward(torch.cat([dxq, dxk], -1), torch.cat([w["q"], w["k"]]), A)
    split = A.add(linear_backward(dxq, w["q"], A), linear_backward(dxk, w["k"], A))
    assert torch.equal(fp16.bits(grads["embed"]), embed_grad(stacked))
    assert not torch.equal(embed_grad(stacked), embed_grad(split))
