# SPDX-License-Identifier: Apache-2.0
"""Amaranth gateware of the spikeforge accelerator."""
