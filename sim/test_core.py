# SPDX-License-Identifier: Apache-2.0
"""cocotb testbenches of a training core under Verilator, bit for bit against the golden model.

Each build of a core runs several samples through FP, BP, WG and the update, with seeded random
idle cycles on the sources and backpressure on the sinks, over active layer sizes 1, a power of
two, a non-power of two and the maximum, and input spike rates 0, 0.05, 0.3 and 1.
"""

import json
import os

import cocotb
import pytest
import torch
from harness import run

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.linear import linear_weight_grad, sgd_update
from spikeforge.golden.surrogate import Surrogate
from spikeforge.hw.core import Core
from spikeforge.regmap import Region
from spikeforge.tb.core import CoreTB
from spikeforge.testing import LayerCase, check_case

SWEEP = [(n, f, rate) for n, f in ((1, 1), (16, 16), (7, 13), (16, 4))
         for rate in (0.0, 0.05, 0.3, 1.0)]


@cocotb.test()
async def core_cases(dut):
    spec = json.loads(os.environ["CORE_SPEC"])
    tb = CoreTB(dut, lanes=spec["lanes"], neurons=spec["max_neurons"],
                fan_in=spec["max_fan_in"], seed=spec["seed"], idle=0.3, stall=0.3)
    await tb.reset()
    lif = LIFParams(reset=spec["reset"], surrogate=Surrogate(spec["surrogate"]),
                    v_reset=spec["v_reset"], tau=spec["tau"])
    compared, tokens = 0, spec["tokens"]
    for k, (neurons, fan_in, rate) in enumerate(spec["cases"]):
        case = LayerCase.random(neurons=neurons, fan_in=fan_in,
                                timesteps=spec["timesteps"] // tokens, tokens=tokens,
                                rate=rate, seed=spec["seed"] * 100 + k, lif=lif)
        await tb.load(case)
        got = await tb.run_case(case)
        check_case(case, got)
        compared += int(case.expected_spikes.sum())
    assert compared > 0, "no output spike in any case"


@cocotb.test()
async def core_batch(dut):
    """Three samples accumulate ΔW in the golden batch order before one update."""
    spec = json.loads(os.environ["CORE_SPEC"])
    tb = CoreTB(dut, lanes=spec["lanes"], neurons=spec["max_neurons"],
                fan_in=spec["max_fan_in"], seed=spec["seed"] + 1, idle=0.2, stall=0.2)
    await tb.reset()
    first = LayerCase.random(neurons=13, fan_in=11, timesteps=spec["timesteps"], rate=0.4,
                             seed=5)
    cases = [first] + [LayerCase(first.weights, other.spikes_in, other.grad_out, first.lif,
                                 first.lr)
                       for other in (LayerCase.random(neurons=13, fan_in=11,
                                                      timesteps=spec["timesteps"], rate=r,
                                                      seed=6 + k)
                                     for k, r in enumerate((0.2, 0.7)))]
    await tb.load(first)
    for case in cases:
        got = await tb.run_case(case, readback=False, update=False)
        for t in range(case.timesteps):
            assert got["events"][t] == case.output_events(t)
    a = FP16()
    x = torch.stack([c.spikes_in for c in cases], 1)
    dx = torch.stack([c.expected_dx for c in cases], 1)
    dw = linear_weight_grad(dx, x, a)
    assert await tb.read_matrix(Region.GRAD, 13, 11) == fp16.bits(dw).tolist()
    await tb.update()
    expected = sgd_update(first.weights, dw, first.lr, a)
    assert await tb.read_matrix(Region.WEIGHT, 13, 11) == fp16.bits(expected).tolist()
    assert (dw != 0).sum() > 50


def _run(name, *, lanes=4, neurons=16, fan_in=16, timesteps=3, reset="hard",
         surrogate="sigmoid", v_reset=0.0, tau=2.0, cases=SWEEP, seed=1, tokens=1,
         testcases=("core_cases",)):
    core = Core(neurons=neurons, fan_in=fan_in, lanes=lanes, timesteps=timesteps, reset=reset,
                surrogate=Surrogate(surrogate))
    spec = {"lanes": lanes, "max_neurons": neurons, "max_fan_in": fan_in,
            "timesteps": timesteps, "reset": reset, "surrogate": surrogate,
            "v_reset": v_reset, "tau": tau, "cases": cases, "seed": seed, "tokens": tokens}
    run(core, name=name, test_module="test_core", testcases=testcases,
        extra_env={"CORE_SPEC": json.dumps(spec)})


@pytest.mark.slow
def test_core_sizes_rates_and_batch():
    _run("core_sweep", testcases=("core_cases", "core_batch"))


@pytest.mark.slow
@pytest.mark.parametrize("reset, surrogate", [
    ("hard", "atan"), ("hard", "rect"), ("hard", "piecewise_quadratic"),
    ("soft", "sigmoid"), ("soft", "rect"),
])
def test_core_surrogates_and_resets(reset, surrogate):
    _run(f"core_{reset}_{surrogate}", lanes=2, neurons=8, fan_in=8, reset=reset,
         surrogate=surrogate, v_reset=-0.25 if reset == "hard" else 0.0, tau=3.0 if
         reset == "soft" else 2.0, cases=[(8, 8, 0.3), (5, 3, 1.0)], seed=7)


@pytest.mark.slow
def test_core_tokens():
    """Token-wise layers, sample after sample: every token's membrane restarts and its BPTT
    carry starts from zero at the ends of the sample, whatever the last sample left."""
    _run("core_tokens", lanes=2, neurons=8, fan_in=8, timesteps=6, tokens=3,
         cases=[(8, 8, 0.4), (7, 5, 1.0), (8, 3, 0.3)], seed=4)
