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
from harness import run

from spikeforge.golden.lif import LIFParams
from spikeforge.golden.surrogate import Surrogate
from spikeforge.hw.core import Core
from spikeforge.tb.core import CoreTB
from spikeforge.testing import LayerCase, check_case

SWEEP = [(n, f, rate) for n, f in ((1, 1), (16, 16), (7, 13), (16, 4))
         for rate in (0.0, 0.05, 0.3, 1.0)]


@cocotb.test()
async def core_cases(dut):
    spec = json.loads(os.environ["CORE_SPEC"])
    tb = CoreTB(dut, lanes=spec["lanes"], neuron_bits=spec["neuron_bits"],
                input_bits=spec["input_bits"], seed=spec["seed"], idle=0.3, stall=0.3)
    await tb.reset()
    lif = LIFParams(reset=spec["reset"], surrogate=Surrogate(spec["surrogate"]),
                    v_reset=spec["v_reset"], tau=spec["tau"])
    compared = 0
    for k, (neurons, fan_in, rate) in enumerate(spec["cases"]):
        case = LayerCase.random(neurons=neurons, fan_in=fan_in, timesteps=spec["timesteps"],
                                rate=rate, seed=spec["seed"] * 100 + k, lif=lif)
        await tb.load(case)
        got = await tb.run_case(case)
        check_case(case, got)
        compared += int(case.expected_spikes.sum())
    assert compared > 0, "no output spike in any case"


def _run(name, *, lanes=4, neurons=16, fan_in=16, timesteps=3, reset="hard",
         surrogate="sigmoid", v_reset=0.0, tau=2.0, cases=SWEEP, seed=1):
    core = Core(neurons=neurons, fan_in=fan_in, lanes=lanes, timesteps=timesteps, reset=reset,
                surrogate=Surrogate(surrogate))
    spec = {"lanes": lanes, "neuron_bits": core.neuron_bits, "input_bits": core.input_bits,
            "timesteps": timesteps, "reset": reset, "surrogate": surrogate,
            "v_reset": v_reset, "tau": tau, "cases": cases, "seed": seed}
    run(core, name=name, test_module="test_core", testcases=["core_cases"],
        extra_env={"CORE_SPEC": json.dumps(spec)})


def test_core_sizes_and_rates():
    _run("core_sweep")


@pytest.mark.parametrize("reset, surrogate", [
    ("hard", "atan"), ("hard", "rect"), ("hard", "piecewise_quadratic"),
    ("soft", "sigmoid"), ("soft", "rect"),
])
def test_core_surrogates_and_resets(reset, surrogate):
    _run(f"core_{reset}_{surrogate}", lanes=2, neurons=8, fan_in=8, reset=reset,
         surrogate=surrogate, v_reset=-0.25 if reset == "hard" else 0.0, tau=3.0 if
         reset == "soft" else 2.0, cases=[(8, 8, 0.3), (5, 3, 1.0)], seed=7)
