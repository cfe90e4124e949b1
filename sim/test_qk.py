# SPDX-License-Identifier: Apache-2.0
"""cocotb testbenches of the Q-K attention unit under Verilator, bit for bit against the golden
model.

One build of maxima ``64 × 256`` at 8 lanes runs samples of every pair of tokens 1, 7, 16, 64
and channels 1, 8, 33, 256 (runtime sizes), Q and K spike rates 0 to 1 with both attention
kinds, T = 1 to 4: forward ``X′`` and backward ``δK`` and ``δQ``, with seeded random idle cycles
on the sources and backpressure on the sinks, and two long ``64 × 256`` samples; then
``spikeforge bench``'s measurement of the same build. Other lane counts, the soft reset and
other leaks are tested in Amaranth's simulator (``tests/test_hw_qk.py``).
"""

import json
import os

import cocotb
import pytest
from harness import BUILD_ROOT, run

from spikeforge.bench import bench_qk
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.qk import ATTENTIONS
from spikeforge.hw.qk import QKAttention
from spikeforge.tb.qk import QKTB, QKCase, check

TOKENS, CHANNELS, RATES = (1, 7, 16, 64), (1, 8, 33, 256), (0.0, 0.1, 0.5, 1.0)
# (tokens, channels, timesteps, rate, kind): every size pair, every rate with each kind, T 1 to 4.
SWEEP = [(n, d, 1 + (a + 2 * b) % 4, RATES[(a + b) % 4], ATTENTIONS[(a // 2 + b) % 2])
         for a, n in enumerate(TOKENS) for b, d in enumerate(CHANNELS)]
SWEEP += [(64, 256, 4, 0.1, "token"), (64, 256, 4, 0.3, "channel")]


@cocotb.test()
async def qk_cases(dut):
    spec = json.loads(os.environ["QK_SPEC"])
    lanes = spec["lanes"]
    tb = QKTB(dut, lanes=lanes, seed=spec["seed"], idle=0.3, stall=0.3)
    await tb.reset()
    lif = LIFParams(**spec["lif"])
    nonzero = {"x": 0, "dk": 0, "dq": 0}
    for k, (tokens, channels, timesteps, rate, kind) in enumerate(spec["cases"]):
        case = QKCase.random(tokens=tokens, channels=channels, timesteps=timesteps, rate=rate,
                             kind=kind, seed=spec["seed"] * 100 + k, lif=lif)
        got = await tb.run_case(case)
        check(case, got, lanes)
        for key, value in case.nontrivial().items():
            nonzero[key] += value
    assert all(nonzero.values()), f"some stream compared only zeros: {nonzero}"


@pytest.mark.slow
def test_qk_sizes_rates_kinds_and_bench():
    unit = QKAttention(lanes=8, tokens=64, channels=256, timesteps=4)
    spec = {"lanes": 8, "lif": {"v_th": 0.5}, "cases": SWEEP, "seed": 1}
    # The build folder of spikeforge bench's unit: its run below finds the build up to date.
    run(unit, name="qk_n64_d256_p8_t4", test_module="test_qk", testcases=["qk_cases"],
        extra_env={"QK_SPEC": json.dumps(spec)})
    result = bench_qk(tokens=64, channels=256, lanes=8, timesteps=4, build_root=BUILD_ROOT)
    assert result["qk_utilization"] >= 0.85
    for kind in ATTENTIONS:
        assert result["per_kind"][kind]["fp_utilization"] >= 0.95, kind
