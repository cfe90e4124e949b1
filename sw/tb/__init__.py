# SPDX-License-Identifier: Apache-2.0
"""cocotb testbench drivers, shared by the testbenches under sim/ and by ``spikeforge bench``."""
