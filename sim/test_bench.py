# SPDX-License-Identifier: Apache-2.0
"""``spikeforge bench`` on a small core, so that the measurement path keeps working."""

import pytest
from harness import BUILD_ROOT

from spikeforge.bench import bench_core, bench_multicore


@pytest.mark.slow
def test_bench_small_core():
    result = bench_core(neurons=16, fan_in=32, lanes=4, timesteps=2, rates=(0.3, 0.1, 1.0),
                        build_root=BUILD_ROOT)
    for engine in ("fp", "bp", "wg"):
        assert 0.3 < result[f"{engine}_utilization"] <= 1.0, engine
    assert 0 < result["sparsity_payoff"] < 0.5
    assert result["sim_cycles_per_second"] > 100
    at_full = result["per_rate"]["1.0"]
    assert at_full["input_spikes"] == 2 * 32 and at_full["wg_ideal"] == 2 * 32 * 16 / 4


@pytest.mark.slow
def test_multicore_bench_small():
    # The hidden layer on one core and split over two: the runs must agree bit for bit (the
    # bench raises otherwise) and the split must save cycles. The cycles are the cores' working
    # cycles, which do not depend on the host's speed (1.26 here); all cycles, the host link's
    # included, do, and are fewer than those.
    result = bench_multicore(cores=(1, 2), hidden=32, inputs=16, outputs=10, lanes=2,
                             timesteps=2, batch=2, seed=1, gain=10.0)
    assert set(result["multicore_speedup"]) == {"1", "2"}
    assert result["runs"]["2"]["cores"] == 3 and result["runs"]["2"]["neurons_per_core"] == 16
    assert result["multicore_speedup"]["2"] > 1.15 and result["forward_speedup"]["2"] > 1.15
    for run in result["runs"].values():
        assert 0 < run["train_cycles_per_sample"] < run["train_link_cycles_per_sample"]
