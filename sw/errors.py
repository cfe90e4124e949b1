# SPDX-License-Identifier: Apache-2.0
"""Errors a user of spikeforge can act on."""

__all__ = ["SpikeforgeError", "ConfigError", "ShapeError"]


class SpikeforgeError(Exception):
    """Base class of every error spikeforge raises for a user's mistake or a failed device."""


class ConfigError(SpikeforgeError, ValueError):
    """A parameter is out of its allowed range; the message names it and the allowed values."""


class ShapeError(SpikeforgeError, ValueError):
    """A tensor has the wrong shape or contents; the message names the expected shape."""
