# SPDX-License-Identifier: Apache-2.0
"""The qk model on the virtual board, bit for bit with the golden model in FP16: the network
compiler places it on a Q-K unit and its four cores, and the device backend trains it. The host
sends input tokens and output errors only; output spikes, losses, every layer's spikes and every
weight after the SGD update are the golden model's, for token and channel attention."""

import pytest
import torch

from spikeforge.device import DeviceBackend
from spikeforge.driver import Board
from spikeforge.errors import ShapeError
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.gen.vboard import VirtualBoard
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.network import QKNet
from spikeforge.lockstep import compare_trace, golden_trace, layer_tokens
from spikeforge.protocol import QK_REGS
from spikeforge.train import GoldenBackend

T, TOKENS, FEATURES, DIM, CLASSES = 2, 3, 5, 4, 3
CONFIG = AcceleratorConfig(cores=4, neurons=8, fan_in=12, lanes=2, timesteps=T * TOKENS,
                           qk_units=1, qk_tokens=TOKENS)


@pytest.fixture(scope="module")
def board():
    with VirtualBoard(CONFIG) as vboard, Board.connect(vboard.url) as board:
        yield board


def network(attention: str) -> QKNet:
    return QKNet(tokens=TOKENS, features=FEATURES, dim=DIM, classes=CLASSES,
                 attention=attention, seed=20, gain=3.0, lif=LIFParams(v_th=0.5),
                 arith=FP16())


def spikes(batch: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(T, batch, TOKENS, FEATURES, generator=g) < 0.6).double()


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["token", "channel"])
def test_the_qk_model_trains_on_the_device_as_the_golden_model(board, attention):
    golden = GoldenBackend(network(attention))
    before = {name: w.clone() for name, w in golden.network.weights.items()}
    device = DeviceBackend(board, network(attention), T)
    assert device.config == CONFIG                  # the board says what it is, Q-K tokens too
    assert board.qk_unit(0) == device.program.unit
    assert device.program.unit[0] == ("token", "channel").index(attention)
    y = torch.tensor([0, 2, 1])
    for step in range(2):
        x = spikes(3, seed=step)
        _, cache = golden.network.forward(x)
        for name in ("s0", "q", "k", "att", "s1", "out"):    # every layer fires
            assert cache[name].any(), (step, name)
        out_d, loss_d = device.train_step(x, y, 0.5)
        out_g, loss_g = golden.train_step(x, y, 0.5)
        assert torch.equal(out_d, out_g) and loss_d == loss_g, step
    after = device.read_weights()
    for name, w in golden.network.weights.items():
        assert torch.equal(fp16.bits(after[name]), fp16.bits(w)), name
        assert not torch.equal(w, before[name]), f"{name} did not train"

    x = spikes(4, seed=9)
    assert torch.equal(device.forward(x), golden.forward(x))
    raster = device.raster(x[:, 0])
    _, c = golden.network.forward(x[:, :1])
    expect = {"embed": c["s0"], "q+k": torch.cat([c["q"], c["k"]], -1), "proj": c["s1"],
              "head": c["out"]}
    for name, s in expect.items():
        assert raster[name] == s[:, 0].reshape(T, -1).int().tolist(), name
    assert raster["input"] == x[:, 0].reshape(T, -1).int().tolist()
    stats = device.stats()
    assert [layer["layer"] for layer in stats["layers"]] == ["embed", "q+k", "proj", "head"]
    assert all(k["fp_events"] > 0 for k in stats["counters"].values())


def test_bad_input_is_refused_and_changes_nothing(board):
    device = DeviceBackend(board, network("token"), T)
    weights = device.read_weights()
    for bad in (torch.ones(T, 2, TOKENS * FEATURES), torch.ones(T, 2, TOKENS + 1, FEATURES),
                torch.ones(T + 1, 2, TOKENS, FEATURES), torch.full((T, 2, TOKENS, FEATURES), 2.)):
        with pytest.raises(ShapeError, match="device input must be"):
            device.train_step(bad, torch.zeros(2, dtype=torch.long), 0.5)
    with pytest.raises(ValueError, match="a Q-K unit has 8 registers"):
        board.set_qk_unit(0, [0] * (QK_REGS - 1))
    with pytest.raises(ValueError, match=r"the board has 1 Q-K unit\(s\): no unit 1"):
        board.set_qk_unit(1, [0] * QK_REGS)
    after = device.read_weights()
    assert all(torch.equal(fp16.bits(weights[k]), fp16.bits(after[k])) for k in weights)
    assert board.qk_unit(0) == device.program.unit


@pytest.mark.slow
@pytest.mark.parametrize("attention", ["token", "channel"])
def test_every_step_of_a_batch_is_the_golden_models(board, attention):
    """Every layer's charges and spikes after each sample, the gradients after its BP and the
    weights after the update, read from the device; a golden model whose K weights are one ulp
    off is caught in K's charges, so the split of [Wq; Wk] and the token steps are checked."""
    net = network(attention)
    device = DeviceBackend(board, net, T)
    x, y = spikes(3, seed=4), torch.tensor([2, 0, 1])
    golden = net.to(FP16())
    assert compare_trace(device.trace(net.state_dict(), x, y, 0.5),
                         golden_trace(golden, x, y, 0.5), layer_tokens(net)) is None
    off = net.to(FP16())
    off.weights["k"] = fp16.from_bits(fp16.bits(off.weights["k"]) ^ 1)
    d = compare_trace(device.trace(net.state_dict(), x, y, 0.5), golden_trace(off, x, y, 0.5),
                      layer_tokens(net))
    assert (d.what, d.layer, d.sample) == ("charge", "k", 0)
    assert d.token is not None and d.device_bits != d.golden_bits
