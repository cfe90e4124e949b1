# SPDX-License-Identifier: Apache-2.0
"""Testbench helpers: cocotb drivers, shared by the testbenches under sim/ and by
``spikeforge bench``, and the Amaranth-simulator helpers of the tests (:mod:`.amaranth`)."""
