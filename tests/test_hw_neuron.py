# SPDX-License-Identifier: Apache-2.0
import dataclasses
import gc
import random
from collections import deque

import pytest
import torch

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.surrogate import SURROGATES, Surrogate
from spikeforge.hw.neuron import BPTTUpdate, LIFUpdate
from spikeforge.tb.amaranth import pack_fp16, pack_lanes, simulate, unpack_lanes

TIMESTEPS = 6
PARAMS = {1: {}, 2: {"tau": 3.0, "v_reset": -0.25}, 4: {"tau": 3.0, "v_th": 0.5},
          64: {"tau": 3.0, "v_reset": -0.25}}


def constants(lif, dut):
    c = {name: int(fp16.bits(value)) for name, value in lif.constants(FP16()).items()}
    return [(getattr(dut, f"c_{name}"), value) for name, value in c.items()
            if hasattr(dut, f"c_{name}")]


def drive(dut, consts, groups, steps, initial, issue, retire, seed, idle=0.25):
    """Run ``groups`` sequences of ``steps`` lane vectors through ``dut``, at most one a cycle.

    A group's step ``k`` waits for the result of its step ``k - 1``, whose ``retire`` value is
    fed back to ``issue``; the group issued is drawn among the ready ones, and a cycle stays idle
    (with garbage on the data inputs) with probability ``idle``. ``o_valid`` and ``o_tag`` are
    checked every cycle against the issue log.
    """
    rng = random.Random(seed)
    data_ports = [port for port, _ in issue(0, 0, initial)]
    issued = []

    async def testbench(ctx):
        for port, value in consts:
            ctx.set(port, value)
        step, carry = [0] * groups, [initial] * groups
        ready, log = set(range(groups)), deque()
        cycle = 0
        while ready or log:
            due = bool(log) and log[0][0] == cycle
            assert ctx.get(dut.o_valid) == due
            if due:
                g = log.popleft()[1]
                assert ctx.get(dut.o_tag) == g
                carry[g] = retire(ctx, g, step[g])
                step[g] += 1
                if step[g] < steps:
                    ready.add(g)
            if ready and rng.random() >= idle:
                g = rng.choice(sorted(ready))
                ready.remove(g)
                for port, value in issue(g, step[g], carry[g]):
                    ctx.set(port, value)
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.i_tag, g)
                log.append((cycle + dut.latency, g))
                issued.append(g)
            else:
                for port in data_ports:
                    ctx.set(port, rng.getrandbits(len(port)))
                ctx.set(dut.i_valid, 0)
                ctx.set(dut.i_tag, rng.getrandbits(len(dut.i_tag)))
            await ctx.tick()
            cycle += 1

    simulate(dut, testbench)
    assert sorted(issued) == sorted(list(range(groups)) * steps)


class EpsTap(FP16):
    """FP16 arithmetic that keeps each step's ``ε``: the first addition after ``σ′``."""

    def __init__(self):
        self.eps, self._armed = [], False

    def surrogate_grad(self, surrogate, x):
        self._armed = True
        return super().surrogate_grad(surrogate, x)

    def add(self, a, b):
        result = super().add(a, b)
        if self._armed:
            self.eps.insert(0, result)
            self._armed = False
        return result


def golden(lif, lanes, groups, seed):
    gen = torch.Generator().manual_seed(seed)
    n = lanes * groups
    a = FP16()
    x = a.cast(torch.randn(TIMESTEPS, n, generator=gen) * 1.2 + 0.7 * lif.v_th)
    g = a.cast(torch.randn(TIMESTEPS, n, generator=gen) * 0.5)
    s, h = lif_forward(x, lif, a)
    c = lif.constants(a)
    if lif.reset == "hard":
        v = torch.where(s.bool(), c["v_reset"], h)
    else:
        v = torch.where(s.bool(), a.sub(h, c["v_th"]), h)
    tap = EpsTap()
    dx = lif_backward(g, h, s, lif, tap)
    other = dataclasses.replace(lif, detach_reset=not lif.detach_reset)
    assert 0 < int(s.sum()) < s.numel(), "the raster must hold spikes and silences"
    assert bool(dx.ne(0).any()), "the gradients must not all be zero"
    assert not torch.equal(dx, lif_backward(g, h, s, other, a)), "detach_reset must matter"
    return {"x": x, "g": g, "s": s.int(), "h": fp16.bits(h), "v": fp16.bits(v),
            "eps": fp16.bits(torch.stack(tap.eps)), "dx": fp16.bits(dx)}


def lif_params(lanes, **kwargs):
    return LIFParams(**{**PARAMS[lanes], **kwargs})


def check_lif(lif, lanes, groups=None):
    dut = LIFUpdate(lanes=lanes, reset=lif.reset, tag_width=5)
    groups = groups or dut.latency + 2
    want = golden(lif, lanes, groups, seed=lanes)
    got = {key: torch.zeros_like(want[key]) for key in ("h", "s", "v")}
    cols = [slice(g * lanes, (g + 1) * lanes) for g in range(groups)]

    def issue(g, t, v):
        return [(dut.i_x, pack_fp16(want["x"][t, cols[g]])), (dut.i_v, v)]

    def retire(ctx, g, t):
        got["h"][t, cols[g]] = torch.tensor(unpack_lanes(ctx.get(dut.o_h), lanes))
        got["s"][t, cols[g]] = torch.tensor(unpack_lanes(ctx.get(dut.o_s), lanes, width=1))
        got["v"][t, cols[g]] = torch.tensor(unpack_lanes(ctx.get(dut.o_v), lanes))
        return ctx.get(dut.o_v)

    v_reset = pack_fp16(lif.constants(FP16())["v_reset"].expand(lanes))
    drive(dut, constants(lif, dut), groups, TIMESTEPS, v_reset, issue, retire,
          seed=lanes + len(lif.reset))
    for key in got:
        assert torch.equal(got[key], want[key]), key


def check_bptt(lif, lanes, groups=None):
    dut = BPTTUpdate(lanes=lanes, reset=lif.reset, detach_reset=lif.detach_reset,
                     surrogate=lif.surrogate, tag_width=5)
    groups = groups or dut.latency + 2
    want = golden(lif, lanes, groups, seed=lanes)
    got = {key: torch.zeros_like(want[key]) for key in ("eps", "dx")}
    cols = [slice(g * lanes, (g + 1) * lanes) for g in range(groups)]
    last = TIMESTEPS - 1

    def issue(g, k, eps):
        t = last - k
        return [(dut.i_g, pack_fp16(want["g"][t, cols[g]])),
                (dut.i_h, pack_lanes(want["h"][t, cols[g]])),
                (dut.i_s, pack_lanes(want["s"][t, cols[g]], width=1)),
                (dut.i_eps, eps)]

    def retire(ctx, g, k):
        got["eps"][last - k, cols[g]] = torch.tensor(unpack_lanes(ctx.get(dut.o_eps), lanes))
        got["dx"][last - k, cols[g]] = torch.tensor(unpack_lanes(ctx.get(dut.o_dx), lanes))
        return ctx.get(dut.o_eps)

    drive(dut, constants(lif, dut), groups, TIMESTEPS, 0, issue, retire,
          seed=lanes + lif.detach_reset)
    for key in got:
        assert torch.equal(got[key], want[key]), key


@pytest.mark.parametrize("lanes", [1, 2, 4])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_lif_update_matches_golden(reset, lanes):
    check_lif(lif_params(lanes, reset=reset), lanes)


@pytest.mark.parametrize("lanes", [1, pytest.param(2, marks=pytest.mark.slow), 4])
@pytest.mark.parametrize("surrogate", list(SURROGATES))
@pytest.mark.parametrize("detach", [True, False])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_bptt_update_matches_golden(reset, detach, surrogate, lanes):
    check_bptt(lif_params(lanes, reset=reset, detach_reset=detach,
                          surrogate=Surrogate(surrogate)), lanes)


@pytest.mark.slow
@pytest.mark.parametrize("check", [check_lif, check_bptt])
def test_widest_lane_vectors(check):
    lif = lif_params(64, reset="soft", detach_reset=False, surrogate=Surrogate("rect"))
    check(lif, 64, groups=2)


@pytest.mark.parametrize("make, kwargs, message", [
    (LIFUpdate, {"lanes": 0}, r"^Lane count must be a power of two between 1 and 64, not 0$"),
    (LIFUpdate, {"lanes": 65}, r"^Lane count must be a power of two between 1 and 64, not 65$"),
    (BPTTUpdate, {"lanes": 3}, r"^Lane count must be a power of two between 1 and 64, not 3$"),
    (LIFUpdate, {"reset": "zero"}, r"^Reset must be 'hard' or 'soft', not 'zero'$"),
    (BPTTUpdate, {"tag_width": 0}, r"^Tag width must be a positive integer, not 0$"),
    (BPTTUpdate, {"detach_reset": 1}, r"^Detach reset must be True or False, not 1$"),
    (BPTTUpdate, {"surrogate": "rect"},
     r"^Surrogate must be a spikeforge Surrogate, not 'rect'$"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_are_checked(make, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make(**{"lanes": 2, **kwargs})
    gc.collect()
