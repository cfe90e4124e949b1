# SPDX-License-Identifier: Apache-2.0
"""spikeforge: train spiking neural networks on a multi-core neuromorphic accelerator."""

from .errors import ConfigError, ShapeError, SpikeforgeError

__version__ = "0.1.0"
__all__ = ["ConfigError", "ShapeError", "SpikeforgeError", "__version__"]
