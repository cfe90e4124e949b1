# SPDX-License-Identifier: Apache-2.0
"""Generator (configuration to Verilog) and network compiler."""
