# SPDX-License-Identifier: Apache-2.0
"""cocotb test that measures a Verilated core on a list of layer cases (``spikeforge bench``).

The specification comes in ``BENCH_SPEC`` (JSON: core geometry and cases) and the counters of
each case go to the JSON file ``BENCH_OUT``.
"""

import json
import os
import time

import cocotb

from ..golden.lif import LIFParams
from ..testing import LayerCase
from .core import CoreTB


@cocotb.test()
async def core_bench(dut):
    spec = json.loads(os.environ["BENCH_SPEC"])
    tb = CoreTB(dut, lanes=spec["lanes"], neurons=spec["neurons"],
                fan_in=spec["fan_in"], seed=1)
    await tb.reset()
    results = []
    for k, case_spec in enumerate(spec["cases"]):
        case = LayerCase.random(neurons=spec["neurons"], fan_in=spec["fan_in"],
                                timesteps=spec["timesteps"], rate=case_spec["rate"],
                                seed=100 + k, lif=LIFParams())
        await tb.load(case)
        start = time.perf_counter()
        got = await tb.run_case(case, readback=False)
        wall = time.perf_counter() - start
        results.append({"rate": case_spec["rate"], "counters": got["counters"],
                        "update_cycles": got["update_cycles"], "work": case.work(),
                        "wall_seconds": wall,
                        "output_events": sum(len(e) for e in got["events"]),
                        "expected_output_events": int(case.expected_spikes.sum())})
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(results, f)
