# SPDX-License-Identifier: Apache-2.0
"""LIF sequences worked out by hand, FP16 LIF against an explicitly rounded reference, and the
hardware's surrogate tables."""

import numpy as np
import pytest
import torch

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16, Float
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.surrogate import SURROGATES, Surrogate

F64 = Float(torch.float64)

HAND = {
    "threshold-reached-fires": (
        LIFParams(),
        [2.0, 1.0, 1.0, 0.0, 1.0, 1.5],
        [1.0, 0.5, 0.75, 0.375, 0.6875, 1.09375],
        [1, 0, 0, 0, 0, 1],
    ),
    "threshold-reached-after-charge": (
        LIFParams(),
        [1.0, 1.5, 0.5],
        [0.5, 1.0, 0.25],
        [0, 1, 0],
    ),
    "hard-reset-to-v_reset": (
        LIFParams(v_reset=-0.5),
        [3.0, 0.0, 2.0, 2.0, 1.0],
        [1.0, -0.5, 0.5, 1.0, 0.0],
        [1, 0, 0, 1, 0],
    ),
    "soft-reset-subtracts-v_th": (
        LIFParams(reset="soft"),
        [3.0, 0.0, 2.5, 1.0],
        [1.5, 0.25, 1.375, 0.6875],
        [1, 0, 1, 0],
    ),
    "hard-reset-same-input": (
        LIFParams(reset="hard"),
        [3.0, 0.0, 2.5, 1.0],
        [1.5, 0.0, 1.25, 0.5],
        [1, 0, 1, 0],
    ),
    "soft-reset-v_reset": (
        LIFParams(reset="soft", v_reset=-0.5),
        [3.0, 1.0, -1.0],
        [1.0, 0.25, -0.625],
        [1, 0, 0],
    ),
    "decay-tau-2-below-threshold": (
        LIFParams(tau=2.0),
        [1.0, 1.0, 1.0, 1.0, 1.0, 0.0],
        [0.5, 0.75, 0.875, 0.9375, 0.96875, 0.484375],
        [0, 0, 0, 0, 0, 0],
    ),
    "decay-tau-4": (
        LIFParams(tau=4.0),
        [2.0, 2.0, 2.0, 0.0, 4.0, -2.0],
        [0.5, 0.875, 1.15625, 0.0, 1.0, -0.5],
        [0, 0, 1, 0, 1, 0],
    ),
    "decay-tau-4-below-threshold": (
        LIFParams(tau=4.0, v_th=0.75),
        [0.5, 1.0, 0.0, 0.5],
        [0.125, 0.34375, 0.2578125, 0.318359375],
        [0, 0, 0, 0],
    ),
}


@pytest.mark.parametrize("arith", [F64, FP16()], ids=["float64", "fp16"])
@pytest.mark.parametrize("case", list(HAND))
def test_hand_worked_sequence(case, arith):
    p, x, h_expected, s_expected = HAND[case]
    s, h = lif_forward(torch.tensor(x).reshape(-1, 1), p, arith)
    assert h.dtype == arith.dtype and s.dtype == arith.dtype
    assert h.flatten().tolist() == h_expected
    assert s.flatten().tolist() == s_expected
    if arith.exact:
        expected_bits = fp16.bits(torch.tensor(h_expected, dtype=torch.float16))
        assert torch.equal(fp16.bits(h.flatten()), expected_bits)


def test_fp16_charge_rounds_up_to_threshold_and_fires():
    s, h = lif_forward(torch.ones(13, 1), LIFParams(), FP16())
    expected = [1 - 2.0 ** -k for k in range(1, 12)] + [1.0, 0.5]
    assert h.flatten().tolist() == expected
    assert s.flatten().tolist() == [0.0] * 11 + [1.0, 0.0]
    s64, _ = lif_forward(torch.ones(13, 1), LIFParams(), F64)
    assert not bool(s64.any())


def test_float64_constants_are_not_rounded_to_float32():
    c = LIFParams(tau=3.0, v_th=0.7, v_reset=0.1).constants(F64)
    assert c["inv_tau"].item() == 1 / 3
    assert c["decay"].item() == 1 - 1 / 3
    assert c["v_th"].item() == 0.7
    assert c["v_reset"].item() == 0.1


def _r(x):
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(x, dtype=np.float64).astype(np.float16).astype(np.float64)


def _reference_forward(x, p):
    inv_tau, v_th, v_reset = _r(1 / p.tau), _r(p.v_th), _r(p.v_reset)
    v = np.full(x.shape[1:], v_reset)
    spikes, charges = [], []
    for t in range(x.shape[0]):
        a = _r(v - v_reset)
        b = _r(x[t] - a)
        c = _r(b * inv_tau)
        h = _r(v + c)
        s = h >= v_th
        v = np.where(s, v_reset, h) if p.reset == "hard" else np.where(s, _r(h - v_th), h)
        spikes.append(s.astype(np.float64))
        charges.append(h)
    return np.stack(spikes), np.stack(charges)


def _reference_backward(g, h, s, p):
    inv_tau, decay = _r(1 / p.tau), _r(1 - 1 / p.tau)
    v_th, v_reset = _r(p.v_th), _r(p.v_reset)
    table = p.surrogate.table().double().numpy()
    eps = np.zeros(h.shape[1:])
    dx = np.zeros_like(h)
    for t in reversed(range(h.shape[0])):
        gamma = _r(eps * decay)
        ds = g[t]
        if not p.detach_reset:
            dv_ds = _r(v_reset - h[t]) if p.reset == "hard" else -v_th
            ds = _r(ds + _r(gamma * dv_ds))
        arg = _r(h[t] - v_th).astype(np.float16)
        sg = table[arg.view(np.uint16).astype(np.int64) >> (10 - p.surrogate.mantissa_bits)]
        a = _r(ds * sg)
        b = np.where(s[t] == 1, 0.0, gamma) if p.reset == "hard" else gamma
        eps = _r(a + b)
        dx[t] = _r(eps * inv_tau)
    return dx


def _bits(x):
    return fp16.bits(torch.as_tensor(np.asarray(x)).to(torch.float16))


LIF_CASES = [
    pytest.param(LIFParams(), id="defaults"),
    pytest.param(LIFParams(tau=3.0, v_th=0.7, surrogate=Surrogate("atan")), id="tau3-vth0.7"),
    pytest.param(LIFParams(tau=4.0, v_reset=-0.5, detach_reset=False,
                           surrogate=Surrogate("rect")), id="tau4-vreset-0.5-attached"),
    pytest.param(LIFParams(tau=1.5, v_th=1.25, v_reset=0.1, reset="soft",
                           surrogate=Surrogate("piecewise_quadratic")), id="tau1.5-soft"),
    pytest.param(LIFParams(tau=5.0, reset="soft", detach_reset=False), id="tau5-soft-attached"),
    pytest.param(LIFParams(tau=1.0, v_th=2.0, v_reset=-1.0, detach_reset=False),
                 id="tau1-hard-attached"),
]


@pytest.mark.parametrize("p", LIF_CASES)
def test_fp16_lif_matches_explicitly_rounded_reference(p):
    gen = torch.Generator().manual_seed(4)
    x = fp16.to_fp16(torch.randn(24, 4, 32, generator=gen) * 1.5 + 0.8)
    x[3, 0, :8] = fp16.to_fp16(torch.tensor([1e-4, -3e-5, 1000.0, 2 ** -14, 2.0, 0.0, -0.0, 7.0]))
    g = fp16.to_fp16(torch.randn(24, 4, 32, generator=gen) * 0.3)
    g[torch.rand(24, 4, 32, generator=gen) < 0.2] = 0
    s, h = lif_forward(x, p, FP16())
    assert 0.02 < float(s.float().mean()) < 0.98
    s_ref, h_ref = _reference_forward(x.double().numpy(), p)
    assert torch.equal(fp16.bits(h), _bits(h_ref))
    assert torch.equal(s, torch.from_numpy(s_ref).to(torch.float16))
    dx = lif_backward(g, h, s, p, FP16())
    assert bool((dx != 0).any())
    dx_ref = _reference_backward(g.double().numpy(), h_ref, s_ref, p)
    assert torch.equal(fp16.bits(dx), _bits(dx_ref))


ALL_FP16 = np.arange(1 << 16, dtype=np.uint16).view(np.float16)


@pytest.mark.parametrize("mantissa_bits", [0, 1, 4, 7, 10])
@pytest.mark.parametrize("kind", list(SURROGATES))
def test_table_holds_rounded_ideal_at_bucket_midpoints(kind, mantissa_bits):
    s = Surrogate(kind, mantissa_bits=mantissa_bits)
    table = s.table()
    assert table.dtype == torch.float16
    assert table.numel() == 2 ** (6 + mantissa_bits)
    buckets = ALL_FP16.astype(np.float64).reshape(table.numel(), -1)
    with np.errstate(invalid="ignore"):
        mid = (buckets[:, 0] + buckets[:, -1]) / 2
    finite = np.isfinite(mid)
    ideal = s.grad(torch.from_numpy(np.where(finite, mid, 0.0))).numpy()
    expected = np.where(finite, ideal, 0.0).astype(np.float16)
    wrong = np.flatnonzero(expected.view(np.uint16) != table.numpy().view(np.uint16))
    assert wrong.size == 0, [(int(i), mid[i], ideal[i], float(expected[i]), float(table[i]))
                             for i in wrong[:4]]
    index = torch.arange(1 << 16) >> (10 - mantissa_bits)
    assert torch.equal(s.grad_fp16(torch.from_numpy(ALL_FP16.copy())), table[index])


def test_table_is_zero_for_infinity_and_nan():
    for kind in SURROGATES:
        x = torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=torch.float16)
        assert Surrogate(kind).grad_fp16(x).tolist() == [0.0, 0.0, 0.0]


MAX_ERROR = {"sigmoid": 0.02, "atan": 0.015, "rect": 0.0, "piecewise_quadratic": 0.016}


@pytest.mark.parametrize("kind", list(SURROGATES))
def test_table_error_against_ideal_is_small(kind):
    s = Surrogate(kind)
    v = ALL_FP16[np.isfinite(ALL_FP16) & (np.abs(ALL_FP16.astype(np.float64)) <= 4)]
    x = torch.from_numpy(v.copy())
    assert x.numel() > 30000
    peak = float(s.grad(torch.zeros(1, dtype=torch.float64)))
    assert peak == pytest.approx(1.0)
    err = float((s.grad_fp16(x).double() - s.grad(x.double())).abs().max()) / peak
    assert err < 0.05
    assert err <= MAX_ERROR[kind]


@pytest.mark.parametrize(("kind", "edge"), [("rect", 0.5), ("piecewise_quadratic", 1.0)])
def test_compact_support_is_exactly_zero_outside(kind, edge):
    s = Surrogate(kind)
    x = torch.from_numpy(ALL_FP16.copy())
    outside = torch.isfinite(x) & (x.double().abs() >= edge)
    inside = x.double().abs() < edge
    assert int(outside.sum()) > 1000 and int(inside.sum()) > 1000
    assert bool((s.grad_fp16(x[outside]) == 0).all())
    assert bool((s.grad(x[outside].double()) == 0).all())
    assert bool((s.grad_fp16(x[inside]) > 0).all())
    if kind == "rect":
        assert torch.equal(s.grad_fp16(x[inside]), torch.ones(int(inside.sum()),
                                                               dtype=torch.float16))


@pytest.mark.parametrize("kind", list(SURROGATES))
def test_ideal_surrogate_is_zero_at_infinity(kind):
    x = torch.tensor([float("inf"), float("-inf")], dtype=torch.float64)
    assert Surrogate(kind).grad(x).tolist() == [0.0, 0.0]
