# SPDX-License-Identifier: Apache-2.0
"""A network across twenty cores trains a step on the virtual board bit for bit as the golden
model in FP16: eight layers, each wider than a core but one, split by neurons across two and
three cores, whose input spikes are shared, output spikes merged in order and partial sums
``Wᵀ·δ`` carried from core to core; spikes go forward and errors backward through all nineteen
links. The host sees only the first layer's input and the last layer's output."""

import pytest
import torch

from spikeforge.device import DeviceBackend
from spikeforge.driver import Board
from spikeforge.gen.compiler import compile_network
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.gen.vboard import VirtualBoard
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import SpikingMLP
from spikeforge.protocol import Link
from spikeforge.train import GoldenBackend

T = 4
CORES = 20
CONFIG = AcceleratorConfig(cores=CORES, neurons=8, fan_in=24, lanes=1, timesteps=T)
# Cores a layer: 3, 3, 3, 2, 1, 3, 3, 2 (the last part of a layer may be short).
SIZES = (20, 24, 17, 24, 16, 8, 24, 20, 10)


def network(sizes, seed) -> SpikingMLP:
    """LIF layers of ``sizes`` with weights large enough that spikes reach the last layer."""
    net = SpikingMLP(sizes, seed=seed)
    g = torch.Generator().manual_seed(seed + 2)
    net.weights = {name: torch.randn(w.shape, generator=g, dtype=torch.float64) * 0.5 + 0.25
                   for name, w in net.weights.items()}
    return net.to(FP16())


def train_step_matches(config, sizes, seed, batch=4):
    """One training step on the device and in the golden model; the program and the stats."""
    net = network(sizes, seed)
    program = compile_network(net, config, timesteps=T)
    g = torch.Generator().manual_seed(11)
    x = (torch.rand(T, batch, sizes[0], generator=g) < 0.5).double()
    y = torch.tensor([3, 7, 0, 9, 1, 5][:batch])
    golden = GoldenBackend(network(sizes, seed))
    _, cache = golden.network.forward(x)
    rates = [float(s_out.mean()) for _, _, s_out in cache]
    assert min(rates) > 0.1, f"a layer hardly fires ({rates}): the comparison would be weak"
    before = {k: w.clone() for k, w in golden.network.weights.items()}

    with VirtualBoard(config) as vboard, Board.connect(vboard.url) as board:
        assert board.identify()["cores"] == config.cores
        device = DeviceBackend(board, net, T)
        out_d, loss_d = device.train_step(x, y, 0.5)
        out_g, loss_g = golden.train_step(x, y, 0.5)
        assert torch.equal(out_d, out_g) and loss_d == loss_g
        after = device.read_weights()
        stats = device.stats()
        raster = device.raster(x[:, 0])

    for name, w in golden.network.weights.items():
        assert torch.equal(fp16.bits(after[name]), fp16.bits(w)), name
    changed = [name for name in before if not torch.equal(before[name], after[name])]
    assert len(changed) == len(before), f"only {changed} trained: errors did not reach every core"
    assert all(k["fp_events"] > 0 for k in stats["counters"].values())
    _, cache = golden.network.forward(x[:, :1])        # the raster was taken after the step
    for (name, _), (_, _, s_out) in zip(before.items(), cache, strict=True):
        assert raster[name] == s_out[:, 0].int().tolist(), name
    return program, stats


@pytest.mark.slow
def test_twenty_cores_train_a_network_with_split_layers_a_step_bit_exact():
    program, stats = train_step_matches(CONFIG, SIZES, seed=4)
    assert [c.core for c in program.cores] == list(range(CORES))
    assert [c.name for c in program.cores[:7]] == [
        "fc0[16:24]", "fc0[8:16]", "fc0[0:8]", "fc1[16:17]", "fc1[8:16]", "fc1[0:8]",
        "fc2[16:24]"]
    assert [bool(link & Link.SPLIT) for link in program.links[:7]] == [
        False, True, True, False, True, True, False]
    assert all(program.links[k] & Link.BP_TO_PREV for k in (3, 6))
    # The partial sums went from core to core: every part past the first layer multiplied its
    # own neurons' weight columns.
    assert all(stats["counters"][c.name]["bp_neurons"] > 0 for c in program.cores[3:])
