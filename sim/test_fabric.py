# SPDX-License-Identifier: Apache-2.0
"""Twenty training cores on the chip's chain: a 20-layer network, one layer a core, trains a step
on the virtual board bit for bit as the golden model in FP16. Spikes pass forward and errors
backward through all nineteen links between the cores; the host sees only the first layer's
input and the last layer's output."""

import torch

from spikeforge.device import DeviceBackend
from spikeforge.driver import Board
from spikeforge.gen.compiler import compile_network
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.gen.vboard import VirtualBoard
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import SpikingMLP
from spikeforge.train import GoldenBackend

T = 4
CORES = 20
CONFIG = AcceleratorConfig(cores=CORES, neurons=16, fan_in=16, lanes=1, timesteps=T)


def deep_network() -> SpikingMLP:
    """20 layers of LIF neurons (16 each, 10 in the last) whose spikes reach the last layer."""
    net = SpikingMLP((16,) * CORES + (10,), seed=3)
    g = torch.Generator().manual_seed(5)
    net.weights = {name: torch.randn(w.shape, generator=g, dtype=torch.float64) * 0.5 + 0.25
                   for name, w in net.weights.items()}
    return net.to(FP16())


def test_twenty_cores_train_a_step_bit_exact():
    net = deep_network()
    program = compile_network(net, CONFIG, timesteps=T)
    assert [c.core for c in program.cores] == list(range(CORES))
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(T, 4, 16, generator=g) < 0.5).double()
    y = torch.tensor([3, 7, 0, 9])
    golden = GoldenBackend(deep_network())
    _, cache = golden.network.forward(x)
    rates = [float(s_out.mean()) for _, _, s_out in cache]
    assert min(rates) > 0.1, f"a layer hardly fires ({rates}): the comparison would be weak"
    before = {k: w.clone() for k, w in golden.network.weights.items()}

    with VirtualBoard(CONFIG) as vboard, Board.connect(vboard.url) as board:
        assert board.identify()["cores"] == CORES
        device = DeviceBackend(board, net, T)
        out_d, loss_d = device.train_step(x, y, 0.5)
        out_g, loss_g = golden.train_step(x, y, 0.5)
        assert torch.equal(out_d, out_g) and loss_d == loss_g
        after = device.read_weights()
        stats = device.stats()

    for name, w in golden.network.weights.items():
        assert torch.equal(fp16.bits(after[name]), fp16.bits(w)), name
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == CORES, f"only {changed} trained: errors did not reach every core"
    assert all(stats["counters"][f"fc{k}"]["fp_events"] > 0 for k in range(CORES))
