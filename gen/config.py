# SPDX-License-Identifier: Apache-2.0
"""The configuration of a generated accelerator, checked when it is made.

>>> cfg = AcceleratorConfig(cores=2, neurons=128, fan_in=128, lanes=8, timesteps=8)
>>> cfg.digest() == AcceleratorConfig.from_json(cfg.to_json()).digest()
True
>>> AcceleratorConfig(cores=0)
Traceback (most recent call last):
...
spikeforge.errors.ConfigError: cores must be an integer between 1 and 64, not 0
"""

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from spikeforge.errors import ConfigError
from spikeforge.golden.lif import RESETS
from spikeforge.golden.surrogate import SURROGATES, Surrogate
from spikeforge.hw.lanes import check_lanes

__all__ = ["AcceleratorConfig"]


@dataclass(frozen=True)
class AcceleratorConfig:
    """What the generator builds.

    Parameters
    ----------
    cores : int
        Training cores, chained in index order (core ``c`` feeds core ``c + 1``).
    neurons, fan_in : int
        Largest layer a core holds: output neurons and inputs, multiples of ``lanes``.
    lanes : int
        Lane vector width of every core, a power of two.
    timesteps : int
        Largest number of timesteps per sample (sizes the BP state and the output FIFOs).
    reset, detach_reset, surrogate
        The LIF reset, whether BP detaches it, and the surrogate of every core.
    qk_units : int
        Q-K attention units (:class:`~spikeforge.hw.attention.AttentionBlock`). Unit ``u``
        makes cores ``4u .. 4u + 3`` a QKFormer block: it sits between core ``4u + 1`` (the
        ``[Wq; Wk]`` layer, ``2·D`` neurons) and core ``4u + 2`` (the projection), and a
        membrane shortcut joins core ``4u`` (the embedding) to core ``4u + 2``. Each unit
        takes up to ``qk_tokens`` tokens of up to ``neurons / 2`` channels.
    qk_tokens : int
        Most tokens a timestep a Q-K unit takes, 1 .. ``timesteps`` (its cores run a token a
        step); 0, the default: ``timesteps``. The unit holds a timestep's ``Q``, ``K`` and
        ``X′`` as ``tokens × channels`` bit matrices, so a unit sized to the tokens of the
        network is much smaller than one sized to all the steps of the cores.
    """

    cores: int = 2
    neurons: int = 128
    fan_in: int = 128
    lanes: int = 8
    timesteps: int = 8
    reset: str = "hard"
    detach_reset: bool = True
    surrogate: str = "sigmoid"
    qk_units: int = 0
    qk_tokens: int = 0

    def __post_init__(self):
        def integer(name, low, high):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
                raise ConfigError(f"{name} must be an integer between {low} and {high}, "
                                  f"not {value!r}")

        integer("cores", 1, 64)
        check_lanes(self.lanes, ConfigError, "lanes")
        for name in ("neurons", "fan_in"):
            integer(name, 1, 8192)
            if getattr(self, name) % self.lanes:
                raise ConfigError(f"{name} must be a multiple of lanes ({self.lanes}), not "
                                  f"{getattr(self, name)}")
        integer("timesteps", 1, 256)
        if self.reset not in RESETS:
            raise ConfigError(f"reset must be 'hard' or 'soft', not {self.reset!r}")
        if not isinstance(self.detach_reset, bool):
            raise ConfigError(f"detach_reset must be true or false, not {self.detach_reset!r}")
        integer("qk_units", 0, 16)
        if 4 * self.qk_units > self.cores:
            raise ConfigError(f"{self.qk_units} Q-K units need {4 * self.qk_units} cores (four "
                              f"a unit: embedding, [Wq; Wk], projection, next layer), not "
                              f"{self.cores}")
        if self.qk_units and (self.neurons // 2) % self.lanes:
            raise ConfigError(f"a Q-K unit's channels (neurons / 2 = {self.neurons // 2}) must be "
                              f"a multiple of lanes ({self.lanes}): set neurons to a multiple "
                              f"of {2 * self.lanes}")
        integer("qk_tokens", 0, self.timesteps)
        if self.surrogate not in SURROGATES:
            raise ConfigError(f"surrogate must be one of {', '.join(SURROGATES)}, not "
                              f"{self.surrogate!r}")

    def core_args(self) -> dict:
        """Keyword arguments of :class:`~spikeforge.hw.core.Core` for every core."""
        return {"neurons": self.neurons, "fan_in": self.fan_in, "lanes": self.lanes,
                "timesteps": self.timesteps, "reset": self.reset,
                "detach_reset": self.detach_reset, "surrogate": Surrogate(self.surrogate)}

    def qk_args(self) -> dict:
        """Keyword arguments of :class:`~spikeforge.hw.attention.AttentionBlock`."""
        return {"lanes": self.lanes, "tokens": self.qk_tokens or self.timesteps,
                "channels": self.neurons // 2,
                "timesteps": self.timesteps, "reset": self.reset,
                "detach_reset": self.detach_reset, "surrogate": Surrogate(self.surrogate)}

    @property
    def spike_fifo_depth(self) -> int:
        """Events a core's output FIFO on the host link holds: a whole sample's."""
        return self.timesteps * (self.neurons + 1)

    def identity(self) -> dict:
        """The fields of a board's ``IDENTIFY`` reply (:data:`~spikeforge.protocol.IDENTITY`),
        by name; :meth:`from_identity` is its inverse. ``baud_100`` is the SoC's, 0 here
        (:class:`~spikeforge.hw.soc.SoC`).

        >>> cfg = AcceleratorConfig(cores=4, surrogate="rect", qk_units=1, neurons=64)
        >>> AcceleratorConfig.from_identity(cfg.identity()) == cfg
        True
        """
        from spikeforge.protocol import IDENTITY, MAX_WORDS, VERSION

        fields = {
            "version": VERSION, "cores": self.cores, "lanes": self.lanes,
            "neurons": self.neurons, "fan_in": self.fan_in, "timesteps": self.timesteps,
            "reset": RESETS.index(self.reset), "detach_reset": int(self.detach_reset),
            "surrogate": list(SURROGATES).index(self.surrogate),
            "out_fifo": min(self.spike_fifo_depth, 0xFFFF), "max_words": MAX_WORDS,
            "qk_units": self.qk_units, "qk_tokens": self.qk_tokens, "baud_100": 0,
        }
        assert tuple(fields) == IDENTITY
        return fields

    @classmethod
    def from_identity(cls, identity: dict) -> "AcceleratorConfig":
        """The configuration a board reports in its ``IDENTIFY`` reply (fields by name)."""
        from spikeforge.protocol import VERSION

        if identity.get("version") != VERSION:
            raise ConfigError(f"the device speaks protocol version {identity.get('version')}, "
                              f"this spikeforge {VERSION}")
        names = list(SURROGATES)
        for name, allowed in (("reset", RESETS), ("surrogate", names)):
            if not 0 <= identity[name] < len(allowed):
                raise ConfigError(f"the device reports {name} {identity[name]}, which this "
                                  f"version does not know; update spikeforge")
        return cls(cores=identity["cores"], neurons=identity["neurons"],
                   fan_in=identity["fan_in"], lanes=identity["lanes"],
                   timesteps=identity["timesteps"], reset=RESETS[identity["reset"]],
                   detach_reset=bool(identity["detach_reset"]),
                   surrogate=names[identity["surrogate"]], qk_units=identity["qk_units"],
                   qk_tokens=identity["qk_tokens"])

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "AcceleratorConfig":
        try:
            fields = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(f"accelerator configuration is not JSON: {error}") from None
        if not isinstance(fields, dict):
            raise ConfigError("accelerator configuration must be a JSON object")
        unknown = sorted(set(fields) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(f"unknown accelerator configuration fields: {', '.join(unknown)}")
        return cls(**fields)

    @classmethod
    def load(cls, path: str | Path) -> "AcceleratorConfig":
        try:
            return cls.from_json(Path(path).read_text())
        except OSError as error:
            raise ConfigError(f"cannot read accelerator configuration {path}: {error}") from None

    def replace(self, **changes) -> "AcceleratorConfig":
        return dataclasses.replace(self, **changes)

    def digest(self) -> str:
        """A short hash of the configuration, for build caches."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:16]
