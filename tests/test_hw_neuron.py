# SPDX-License-Identifier: Apache-2.0
import random

import pytest
import torch
from amaranth.sim import Simulator

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.surrogate import SURROGATES, Surrogate
from spikeforge.hw.neuron import BPTTUpdate, LIFUpdate


def pack(values):
    return sum((int(v) & 0xFFFF) << (16 * k) for k, v in enumerate(values))


def unpack(word, lanes):
    return [(int(word) >> (16 * k)) & 0xFFFF for k in range(lanes)]


def flags(bits_):
    return sum(int(b) << k for k, b in enumerate(bits_))


def stimulus(lif, lanes, timesteps, seed):
    gen = torch.Generator().manual_seed(seed)
    x = fp16.to_fp16(torch.randn(timesteps, lanes, generator=gen) * 1.2 + 0.6)
    g = fp16.to_fp16(torch.randn(timesteps, lanes, generator=gen) * 0.5)
    s, h = lif_forward(x, lif, FP16())
    dx = lif_backward(g, h, s, lif, FP16())
    return x, g, s, h, dx


def run_lif(lif, lanes, x, seed):
    """Feed each timestep's lane vector with o_v fed back as the next i_v."""
    dut = LIFUpdate(lanes=lanes, reset=lif.reset, tag_width=4)
    c = {k: int(fp16.bits(v)) for k, v in lif.constants(FP16()).items()}
    rng = random.Random(seed)
    out = {"h": [], "s": [], "v": [], "tags": []}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def testbench(ctx):
        ctx.set(dut.c_v_th, c["v_th"])
        ctx.set(dut.c_v_reset, c["v_reset"])
        ctx.set(dut.c_inv_tau, c["inv_tau"])
        v = [c["v_reset"]] * lanes
        for t in range(x.shape[0]):
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i_valid, 1)
            ctx.set(dut.i_x, pack(fp16.bits(x[t]).tolist()))
            ctx.set(dut.i_v, pack(v))
            ctx.set(dut.i_tag, t % 16)
            await ctx.tick()
            ctx.set(dut.i_valid, 0)
            for _ in range(dut.latency - 1):
                assert not ctx.get(dut.o_valid)
                await ctx.tick()
            assert ctx.get(dut.o_valid)
            out["h"].append(unpack(ctx.get(dut.o_h), lanes))
            out["s"].append([(ctx.get(dut.o_s) >> k) & 1 for k in range(lanes)])
            v = unpack(ctx.get(dut.o_v), lanes)
            out["v"].append(v)
            out["tags"].append(ctx.get(dut.o_tag))

    sim.add_testbench(testbench)
    sim.run()
    return out


def run_bptt(lif, lanes, g, h, s, seed, mantissa_bits=4):
    dut = BPTTUpdate(lanes=lanes, reset=lif.reset, detach_reset=lif.detach_reset,
                     surrogate=lif.surrogate, tag_width=3)
    c = {k: int(fp16.bits(v)) for k, v in lif.constants(FP16()).items()}
    rng = random.Random(seed)
    out = {"eps": [], "dx": []}
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def testbench(ctx):
        for port, key in ((dut.c_v_th, "v_th"), (dut.c_v_reset, "v_reset"),
                          (dut.c_inv_tau, "inv_tau"), (dut.c_decay, "decay")):
            ctx.set(port, c[key])
        eps = [0] * lanes
        for t in reversed(range(g.shape[0])):
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i_valid, 1)
            ctx.set(dut.i_g, pack(fp16.bits(g[t]).tolist()))
            ctx.set(dut.i_h, pack(fp16.bits(h[t]).tolist()))
            ctx.set(dut.i_s, flags(s[t].tolist()))
            ctx.set(dut.i_eps, pack(eps))
            ctx.set(dut.i_tag, t % 8)
            await ctx.tick()
            ctx.set(dut.i_valid, 0)
            for _ in range(dut.latency - 1):
                await ctx.tick()
            assert ctx.get(dut.o_valid) and ctx.get(dut.o_tag) == t % 8
            eps = unpack(ctx.get(dut.o_eps), lanes)
            out["eps"].insert(0, eps)
            out["dx"].insert(0, unpack(ctx.get(dut.o_dx), lanes))

    sim.add_testbench(testbench)
    sim.run()
    return out


CASES = [(reset, detach, surrogate) for reset in ("hard", "soft") for detach in (True, False)
         for surrogate in SURROGATES]


@pytest.mark.parametrize("reset, detach, surrogate", CASES)
@pytest.mark.parametrize("lanes", [1, 3, 4])
def test_lif_and_bptt_match_golden(reset, detach, surrogate, lanes):
    lif = LIFParams(reset=reset, detach_reset=detach, surrogate=Surrogate(surrogate),
                    tau=3.0 if lanes == 3 else 2.0, v_reset=-0.25 if lanes == 4 else 0.0)
    T = 6
    x, g, s, h, dx = stimulus(lif, lanes, T, seed=lanes * 31 + len(surrogate))
    assert 0 < int(s.sum()) < s.numel(), "the raster must hold spikes and silences"
    got = run_lif(lif, lanes, x, seed=1)
    assert got["h"] == fp16.bits(h).tolist()
    assert got["s"] == s.int().tolist()
    got_b = run_bptt(lif, lanes, g, h, s, seed=2)
    assert got_b["dx"] == fp16.bits(dx).tolist()
    assert any(v != 0 for row in got_b["dx"] for v in row)


def test_membranes_follow_the_golden_reset():
    lif = LIFParams(reset="soft")
    x = fp16.to_fp16(torch.tensor([[2.5, 0.25], [2.0, 3.0], [0.0, 1.0]]))
    got = run_lif(lif, 2, x, seed=3)
    v = torch.zeros(2, dtype=torch.float16)
    a = FP16()
    for t in range(3):
        hh = a.add(v, a.mul(a.sub(x[t], v), a.cast(0.5)))
        v = torch.where(hh >= 1, a.sub(hh, a.cast(1.0)), hh)
        assert got["v"][t] == fp16.bits(v).tolist()


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 0}, r"^Lane count must be an integer between 1 and 64, not 0$"),
    ({"reset": "zero"}, r"^Reset must be 'hard' or 'soft', not 'zero'$"),
    ({"tag_width": 0}, r"^Tag width must be a positive integer, not 0$"),
])
def test_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LIFUpdate(**{"lanes": 2, **kwargs})
