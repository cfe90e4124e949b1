# SPDX-License-Identifier: Apache-2.0
"""The driver and the device backend against the virtual board, bit for bit with the golden
model: inference on every digits test sample, training steps, a NIR graph."""

import threading
import time

import nir
import numpy as np
import pytest
import torch
from configs import BOARD

from spikeforge.checkpoint import load_checkpoint
from spikeforge.data import encode, load_dataset
from spikeforge.device import DeviceBackend
from spikeforge.driver import Board, LinkError
from spikeforge.gen.nir_graph import network_from_nir
from spikeforge.gen.vboard import VirtualBoard
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.lockstep import GoldenMismatch, Lockstep, load_case, replay
from spikeforge.regmap import Region, address, weight_offset
from spikeforge.train import GoldenBackend, TrainConfig, train

CONFIG = BOARD
T = CONFIG.timesteps


@pytest.fixture(scope="module")
def board():
    with VirtualBoard(CONFIG) as vboard, Board.connect(vboard.url) as board:
        yield board


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained():
    """A 64-32-10 network after an epoch of golden training: its outputs fire."""
    cfg = TrainConfig(hidden=32, timesteps=T, epochs=1)
    backend = GoldenBackend(cfg.build())
    train(cfg, backend, progress=False)
    return backend.network


def encoded(x, seed):
    return encode(x, T, "rate", torch.Generator().manual_seed(seed))


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        torch.equal(fp16.bits(a[k]), fp16.bits(b[k])) for k in a)


def test_inference_on_every_test_sample_is_the_golden_models(board, digits, trained):
    _, test = digits
    net = trained
    device = DeviceBackend(board, net, T)
    golden = GoldenBackend(net.to(FP16()))
    x = encoded(test.x, 7)
    out = device.forward(x)
    expected = golden.forward(x)
    for b in range(x.shape[1]):
        assert torch.equal(out[:, b], expected[:, b]), f"test sample {b}"
    assert expected.sum() > x.shape[1], "the outputs hardly fire: the comparison is weak"
    assert 0 < (expected.sum((0, 2)) == 0).sum() < x.shape[1]


def test_training_steps_update_the_weights_as_the_golden_model(board, digits, trained):
    train_set, _ = digits
    net = trained
    device = DeviceBackend(board, net, T)
    golden = GoldenBackend(net.to(FP16()))
    for step in range(3):
        idx = torch.arange(step * 8, step * 8 + 8)
        x = encoded(train_set.x[idx], step)
        out_d, loss_d = device.train_step(x, train_set.y[idx], 0.5)
        out_g, loss_g = golden.train_step(x, train_set.y[idx], 0.5)
        assert out_g.sum() > 0
        assert torch.equal(out_d, out_g) and loss_d == loss_g
        assert same_bits(device.read_weights(), golden.network.weights), f"step {step}"
    assert not same_bits(golden.network.weights, net.to(FP16()).weights), "nothing trained"
    stats = device.stats()
    assert stats["device_samples"] == 24 and len(stats["batches"]) == 3
    assert stats["counters"]["fc0"]["fp_events"] > 0 and stats["link"]["bad_frames"] == 0


def test_a_nir_graph_runs_as_the_golden_model_of_the_same_graph(board, digits, tmp_path):
    rng = np.random.default_rng(4)
    nodes = {
        "in": nir.Input(input_type={"input": np.array([64])}),
        "w0": nir.Linear(weight=rng.normal(0.15, 0.4, size=(24, 64))),
        "n0": nir.LIF(tau=np.full(24, 2.0), r=np.ones(24), v_leak=np.zeros(24),
                      v_threshold=np.ones(24), v_reset=np.zeros(24)),
        "w1": nir.Affine(weight=rng.normal(0.2, 0.5, size=(10, 24)), bias=np.zeros(10)),
        "n1": nir.LIF(tau=np.full(10, 2.0), r=np.ones(10), v_leak=np.zeros(10),
                      v_threshold=np.ones(10), v_reset=np.zeros(10)),
        "out": nir.Output(output_type={"output": np.array([10])}),
    }
    edges = [("in", "w0"), ("w0", "n0"), ("n0", "w1"), ("w1", "n1"), ("n1", "out")]
    path = tmp_path / "mlp.nir"
    nir.write(path, nir.NIRGraph(nodes=nodes, edges=edges))
    device = DeviceBackend(board, network_from_nir(path), T)
    golden = GoldenBackend(network_from_nir(nir.read(path)).to(FP16()))
    _, test = digits
    x = encoded(test.x[:64], 9)
    expected = golden.forward(x)
    assert torch.equal(device.forward(x), expected)
    assert expected.sum() > 0


@pytest.mark.slow
def test_training_resumes_after_the_board_dies(tmp_path):
    """Kill the board during the second epoch, start another, resume from the checkpoint: the
    weights end bit for bit where an uninterrupted run ends."""
    cfg = TrainConfig(hidden=32, timesteps=T, epochs=2, precision="fp16", seed=5)
    checkpoint = tmp_path / "run.pt"
    with VirtualBoard(CONFIG) as first:
        board = Board.connect(first.url, timeout=0.5, retries=2)
        device = DeviceBackend(board, cfg.build(), T)

        def kill_during_second_epoch():
            while not checkpoint.exists():
                time.sleep(0.05)
            time.sleep(1.0)
            first.kill()

        killer = threading.Thread(target=kill_during_second_epoch)
        killer.start()
        with pytest.raises(LinkError):
            train(cfg, device, checkpoint=checkpoint, progress=False)
        killer.join()
        board.close()
    assert load_checkpoint(checkpoint)["epoch"] == 1
    with VirtualBoard(CONFIG) as second, Board.connect(second.url) as board:
        device = DeviceBackend(board, cfg.build(), T)
        resumed = train(cfg, device, checkpoint=checkpoint, progress=False, resume=checkpoint)
        weights = device.read_weights()
    golden = GoldenBackend(cfg.build())
    reference = train(cfg, golden, progress=False)
    assert same_bits(weights, golden.network.weights)
    assert resumed["history"] == reference["history"]
    assert resumed["test_accuracy"] > 0.5


def test_a_run_in_lockstep_with_the_golden_model_replays_a_batch_step_by_step(
        board, digits, trained, tmp_path):
    """Batches checked in lockstep; then a weight is changed on the device behind the host's
    back: the next batch is caught, and its replay from the weights before it compares every
    layer's charges, spikes and gradients after every sample on the device (all equal)."""
    train_set, _ = digits
    device = DeviceBackend(board, trained, T)
    check = Lockstep(device, trained, tmp_path)
    y = train_set.y[:8]
    for step in range(2):
        check.at(1, step + 1)
        check.train_step(encoded(train_set.x[:8], step), y, 0.5)
    assert check.batches == 2
    w = device.read_weights()["fc1"]
    bits = int(fp16.bits(w[3, 5])) ^ 1
    offset = weight_offset(3, 5, fan_in=CONFIG.fan_in)
    board.write(device.program.last, address(Region.WEIGHT, offset), [bits])
    check.at(1, 3)
    with pytest.raises(GoldenMismatch, match="matched step by step") as info:
        check.train_step(encoded(train_set.x[:8], 5), y, 0.5)
    d = info.value.difference
    assert (d.epoch, d.batch) == (1, 3) and d.what in ("output", "loss", "weight")
    if d.what == "weight":
        assert (d.layer, d.index) == ("fc1", (3, 5))
    case = load_case(info.value.case)
    assert replay(case, device, trained) is None
