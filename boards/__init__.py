# SPDX-License-Identifier: Apache-2.0
"""Board platforms and bitstream builds."""
