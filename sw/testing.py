# SPDX-License-Identifier: Apache-2.0
"""Seeded stimulus for one core's layer and what the golden model says it must produce.

Used by the Amaranth-simulator tests, the cocotb testbenches and ``spikeforge bench``, so every
check of a core compares against the same hardware-exact golden computation.

>>> case = LayerCase.random(neurons=8, fan_in=16, timesteps=3, rate=0.3, seed=1)
>>> case.expected_spikes.shape, case.expected_dw.shape
(torch.Size([3, 8]), torch.Size([8, 16]))

A stream beat of ``lanes`` FP16 values packs their bit patterns side by side, lane 0 in the low
bits:

>>> hex(pack_lanes([0x3C00, 0xC000])), hex(pack_fp16(torch.tensor([1.0, -2.0])))
('0xc0003c00', '0xc0003c00')
>>> [hex(v) for v in unpack_lanes(0xC0003C00, 2)]
['0x3c00', '0xc000']
"""

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch

from .errors import ShapeError
from .golden import fp16
from .golden.arith import FP16
from .golden.lif import LIFParams, lif_backward, lif_forward
from .golden.linear import linear_backward, linear_forward, linear_weight_grad, sgd_update

__all__ = ["LayerCase", "check_case", "pack_fp16", "pack_lanes", "unpack_lanes"]


@dataclass
class LayerCase:
    """One sample through one layer: forward, backward, weight gradient and update.

    The streams' steps are timesteps, or with ``tokens > 1`` the tokens of each timestep one
    after another (the core's ``Reg.TOKENS``): step ``k`` is token ``k mod tokens`` of timestep
    ``k div tokens``, and every token has its own membranes.
    """

    weights: torch.Tensor            # [N, F] fp16
    spikes_in: torch.Tensor          # [steps, F] 0/1
    grad_out: torch.Tensor           # [steps, N] fp16, ∂L/∂S
    lif: LIFParams = field(default_factory=LIFParams)
    lr: float = 0.125
    tokens: int = 1

    @classmethod
    def random(cls, *, neurons: int, fan_in: int, timesteps: int, rate: float, seed: int,
               lif: LIFParams | None = None, lr: float = 0.125,
               tokens: int = 1) -> "LayerCase":
        """Weights and errors drawn so that some neurons fire and some errors are zero;
        ``timesteps · tokens`` steps."""
        gen = torch.Generator().manual_seed(seed)
        lif = lif or LIFParams()
        active = max(1.0, rate * fan_in)
        scale = 2.5 / active ** 0.5
        w = torch.randn(neurons, fan_in, generator=gen) * scale + 0.3 * scale / active ** 0.5
        steps = timesteps * tokens
        spikes = (torch.rand(steps, fan_in, generator=gen) < rate).float()
        g = torch.randn(steps, neurons, generator=gen) * 0.25
        g[torch.rand(steps, neurons, generator=gen) < 0.2] = 0
        return cls(fp16.to_fp16(w), spikes, fp16.to_fp16(g), lif, lr, tokens)

    def __post_init__(self):
        a, steps = FP16(), self.spikes_in.shape[0]
        if self.tokens < 1 or steps % self.tokens:
            raise ShapeError(f"{steps} steps are not whole timesteps of {self.tokens} tokens")

        def tokenwise(x):       # [steps, features] -> [T, 1, tokens, features]
            return x.reshape(steps // self.tokens, 1, self.tokens, x.shape[-1])

        def stepwise(x):        # and back
            return x.reshape(steps, x.shape[-1])

        x = tokenwise(self.spikes_in)
        currents = linear_forward(x, self.weights, a)
        s, h = lif_forward(currents, self.lif, a)
        self.expected_spikes, self.expected_charges = stepwise(s), stepwise(h)
        dx = lif_backward(tokenwise(self.grad_out), h, s, self.lif, a)
        self.expected_dx = stepwise(dx)
        self.expected_grad_in = stepwise(linear_backward(dx, self.weights, a))
        self.expected_dw = linear_weight_grad(dx, x, a)
        self.expected_weights = sgd_update(self.weights, self.expected_dw, self.lr, a)

    @property
    def neurons(self) -> int:
        return self.weights.shape[0]

    @property
    def fan_in(self) -> int:
        return self.weights.shape[1]

    @property
    def timesteps(self) -> int:
        """Steps of the streams: timesteps × tokens."""
        return self.spikes_in.shape[0]

    def bp_steps(self) -> list[int]:
        """The steps in the order of back-propagation (of ``bp_i`` and ``bp_o``): timesteps from
        the last and, within one, its tokens from the first.

        >>> case = LayerCase.random(neurons=2, fan_in=2, timesteps=2, tokens=3, rate=0.5, seed=0)
        >>> case.bp_steps()
        [3, 4, 5, 0, 1, 2]
        """
        n = self.tokens
        return [t * n + r for t in reversed(range(self.timesteps // n)) for r in range(n)]

    def registers(self) -> dict:
        """Register values (bit patterns) that configure a core for this case."""
        from .regmap import Reg

        c = self.lif.constants(FP16())
        return {
            Reg.NEURONS: self.neurons, Reg.INPUTS: self.fan_in, Reg.TIMESTEPS: self.timesteps,
            Reg.TOKENS: self.tokens,
            Reg.V_TH: int(fp16.bits(c["v_th"])), Reg.V_RESET: int(fp16.bits(c["v_reset"])),
            Reg.INV_TAU: int(fp16.bits(c["inv_tau"])), Reg.DECAY: int(fp16.bits(c["decay"])),
            Reg.LR: int(fp16.bits(fp16.to_fp16(torch.tensor(self.lr)))),
        }

    def input_events(self, t: int) -> list[int]:
        return [int(i) for i in torch.nonzero(self.spikes_in[t]).flatten()]

    def output_events(self, t: int) -> list[int]:
        return [int(n) for n in torch.nonzero(self.expected_spikes[t]).flatten()]

    def work(self) -> dict:
        """Operation counts of the sample, for the ideal cycle counts of a benchmark."""
        return {
            "fp_additions": int(self.spikes_in.sum()) * self.neurons,
            "lif_updates": self.timesteps * self.neurons,
            "bp_macs": int((self.expected_dx != 0).sum()) * self.fan_in,
            "wg_additions": int(self.spikes_in.sum()) * self.neurons,
        }


def check_case(case: LayerCase, got: dict, bp_input_error: bool = True) -> None:
    """Assert that a core's results are the golden model's bits."""
    T = case.timesteps
    for t in range(T):
        assert got["events"][t] == case.output_events(t), f"output spikes of timestep {t}"
    assert got["charges"] == fp16.bits(case.expected_charges).tolist(), "charges H[t]"
    assert got["spikes"] == case.expected_spikes.int().tolist(), "spikes S[t]"
    if bp_input_error:
        for t in range(T):
            assert got["grad_in"][t][:case.fan_in] == \
                fp16.bits(case.expected_grad_in[t]).tolist(), f"input error of timestep {t}"
    assert got["dw"] == fp16.bits(case.expected_dw).tolist(), "weight gradient"
    assert got["weights"] == fp16.bits(case.expected_weights).tolist(), "updated weights"
    assert got["errors"] == 0, f"error flags {got['errors']:#x}"
    compared = torch.cat([case.expected_charges.flatten(), case.expected_grad_in.flatten(),
                          case.expected_dw.flatten()])
    assert (compared != 0).any(), "the case compares nothing but zeros"


def pack_lanes(values: Iterable[int] | torch.Tensor, width: int = 16) -> int:
    """One word of ``values`` (bit patterns of ``width`` bits), lane 0 in the low bits."""
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    mask = (1 << width) - 1
    return sum((int(v) & mask) << (width * k) for k, v in enumerate(values))


def unpack_lanes(word: int, lanes: int, width: int = 16) -> list[int]:
    """The ``lanes`` bit patterns of ``width`` bits in ``word``, lane 0 first."""
    word, mask = int(word), (1 << width) - 1
    return [(word >> (width * k)) & mask for k in range(lanes)]


def pack_fp16(values: torch.Tensor) -> int:
    """One word of ``values`` rounded to FP16, lane 0 in the low bits."""
    return pack_lanes(fp16.bits(values))
