# SPDX-License-Identifier: Apache-2.0
"""Whole epochs on virtual boards in lockstep with the FP16 golden model (small networks):
lanes 1 and 8, both resets, the compact-support surrogates, a split layer and the qk model."""

import pytest

from spikeforge.soak import run_soak, soak_cases


@pytest.mark.slow
@pytest.mark.parametrize("case", soak_cases(small=True), ids=lambda case: case.name)
def test_a_whole_epoch_is_the_golden_models_bit_for_bit(case, tmp_path):
    result = run_soak([case], folder=tmp_path, progress=False)[case.name]
    assert result["matched"], result.get("difference")
    assert result["batches"] == 90
    assert result["test_accuracy"] > 0.5
