# SPDX-License-Identifier: Apache-2.0
"""Accelerator configurations that several test modules share, so that each virtual board is
built once. Not in :mod:`harness`: cocotb's simulator processes import that, and would import
torch with these."""

from spikeforge.gen.config import AcceleratorConfig

__all__ = ["BOARD"]

# The virtual board of the link tests (test_vboard) and of the device tests (test_device).
BOARD = AcceleratorConfig(cores=2, neurons=32, fan_in=64, lanes=8, timesteps=4)
