# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench of the attention block under Verilator, bit for bit against the golden
model: the Q-K unit on a token-wise ``[Q; K]`` core's events and the projection core's errors.

One build of maxima 16 tokens × 32 channels at 4 lanes runs samples back to back of tokens 1,
7 and 16, channels 4, 8 and 32, spike rates 0 to 1, both attention kinds, T = 1 to 4, with
seeded random idle cycles on the sources and backpressure on the sinks.
"""

import json
import os

import cocotb
import pytest
from harness import run

from spikeforge.golden.qk import ATTENTIONS
from spikeforge.hw.attention import AttentionBlock
from spikeforge.tb.qk import BlockTB, QKCase, check_block

RATES = (0.0, 0.2, 0.5, 1.0)
SWEEP = [(n, d, 1 + (a + b) % 4, RATES[(a + 2 * b) % 4], ATTENTIONS[(a + b) % 2])
         for a, n in enumerate((1, 7, 16)) for b, d in enumerate((4, 8, 32))]


@cocotb.test()
async def attention_cases(dut):
    spec = json.loads(os.environ["ATTENTION_SPEC"])
    tb = BlockTB(dut, lanes=spec["lanes"], seed=spec["seed"], idle=0.3, stall=0.3)
    await tb.reset()
    compared = {"x": 0, "dq": 0, "dk": 0}
    for k, (tokens, channels, timesteps, rate, kind) in enumerate(spec["cases"]):
        case = QKCase.random(tokens=tokens, channels=channels, timesteps=timesteps, rate=rate,
                             kind=kind, seed=spec["seed"] * 100 + k)
        got = await tb.run_case(case)
        check_block(case, got)
        for key, value in case.nontrivial().items():
            compared[key] += value
        dut._log.info(f"{kind} N={tokens} D={channels} T={timesteps} rate={rate}: "
                      f"forward {got['fp_cycles']} cycles, backward {got['bp_cycles']}, "
                      f"unit ideal {case.ideal_cycles(spec['lanes']):.0f} a pass")
    assert all(compared.values()), f"some stream compared only zeros: {compared}"


@pytest.mark.slow
def test_attention_block_sizes_rates_kinds():
    block = AttentionBlock(lanes=4, tokens=16, channels=32, timesteps=4)
    spec = {"lanes": 4, "cases": SWEEP, "seed": 2}
    run(block, name="attention_n16_d32_p4_t4", test_module="test_attention",
        testcases=["attention_cases"], extra_env={"ATTENTION_SPEC": json.dumps(spec)})
