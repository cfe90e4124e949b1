# SPDX-License-Identifier: Apache-2.0
import json

import pytest
import torch

from spikeforge import ConfigError
from spikeforge.checkpoint import load_checkpoint
from spikeforge.cli import main
from spikeforge.data import load_dataset
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.train import TrainConfig, model_input, rate_loss, train


def test_rate_loss_gradient_matches_autograd():
    out = torch.bernoulli(torch.full((6, 4, 10), 0.3), generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 3, 9, 3])
    loss, grad = rate_loss(out, y)
    x = out.clone().requires_grad_(True)
    ref = ((x.mean(0) - torch.nn.functional.one_hot(y, 10)) ** 2).sum(1).mean()
    ref.backward()
    assert loss == pytest.approx(float(ref.detach()))
    torch.testing.assert_close(grad / len(y), x.grad)


def test_split_is_fixed_and_stratified():
    train_a, test_a = load_dataset("digits")
    train_b, test_b = load_dataset("digits")
    assert torch.equal(train_a.x, train_b.x) and torch.equal(test_a.y, test_b.y)
    assert torch.bincount(test_a.y).min() >= 35


def test_mnist_is_the_wheel_s_5000_images_split_once():
    train_set, test_set = load_dataset("mnist")
    assert train_set.x.shape == (4000, 784) and test_set.x.shape == (1000, 784)
    assert 0 <= float(train_set.x.min()) and float(train_set.x.max()) == 1.0
    assert torch.bincount(test_set.y).min() >= 80
    again, _ = load_dataset("mnist")
    assert torch.equal(again.x, train_set.x) and torch.equal(again.y, train_set.y)


@pytest.mark.parametrize("model, shape, weights", [
    ("mlp", (3, 784), {"fc0": (128, 784), "fc1": (10, 128)}),
    ("qk", (3, 28, 28), {"embed": (32, 28), "head": (10, 28 * 32)}),
    ("cnn", (3, 1, 28, 28), {"conv0": (32, 1, 3, 3), "fc": (10, 32 * 7 * 7)}),
])
def test_every_model_takes_mnist_s_images(model, shape, weights):
    _, test_set = load_dataset("mnist")
    cfg = TrainConfig(model=model, dataset="mnist", timesteps=2)
    x = model_input(test_set.x[:3], model, "mnist")
    assert tuple(x.shape) == shape
    net = cfg.build()
    for name, size in weights.items():
        assert tuple(net.weights[name].shape) == size
    out, _ = net.forward(x.expand(2, *x.shape))
    assert tuple(out.shape) == (2, 3, 10)


@pytest.fixture(scope="module")
def mlp_float():
    return train(TrainConfig(model="mlp", epochs=10), progress=False)


@pytest.mark.slow
def test_mlp_float_accuracy(mlp_float):
    assert mlp_float["test_accuracy"] >= 0.95
    assert mlp_float["train_accuracy"] >= 0.95
    assert len(mlp_float["history"]) == 10


@pytest.mark.slow
def test_mlp_fp16_within_1_5_points_of_float(mlp_float):
    fp16 = train(TrainConfig(model="mlp", epochs=10, precision="fp16"), progress=False)
    assert fp16["precision"] == "fp16"
    assert fp16["test_accuracy"] >= mlp_float["test_accuracy"] - 0.015


@pytest.mark.slow
def test_qk_float_accuracy():
    result = train(TrainConfig(model="qk", epochs=10), progress=False)
    assert result["test_accuracy"] >= 0.93


def test_the_cnn_learns_the_digits_in_two_epochs():
    result = train(TrainConfig(model="cnn", epochs=2), progress=False)
    assert result["test_accuracy"] >= 0.75
    assert result["history"][1]["loss"] < result["history"][0]["loss"]


@pytest.mark.slow
def test_cnn_float_accuracy():
    result = train(TrainConfig(model="cnn", epochs=10), progress=False)
    assert result["test_accuracy"] >= 0.975


def test_cli_train_writes_json_and_checkpoint(tmp_path, capsys):
    out, ck = tmp_path / "run.json", tmp_path / "run.pt"
    assert main(["train", "--epochs", "1", "--quiet", "--json", str(out),
                 "--checkpoint", str(ck)]) == 0
    result = json.loads(out.read_text())
    for key in ("test_accuracy", "train_accuracy", "epochs", "model", "backend", "precision"):
        assert key in result
    assert result["backend"] == "golden" and result["epochs"] == 1
    state = load_checkpoint(ck)
    assert state["epoch"] == 1 and set(state["weights"]) == {"fc0", "fc1"}
    assert main(["infer", "--checkpoint", str(ck)]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == result["test_accuracy"]


@pytest.mark.parametrize("argv, message", [
    (["train", "--epochs", "0"], "epochs must be a positive integer"),
    (["train", "--timesteps", "0"], "timesteps must be a positive integer"),
    (["train", "--backend", "tcp://127.0.0.1:1"], "cannot connect to tcp://127.0.0.1:1"),
    (["train", "--backend", "ftp://board"], "backend must be golden, sim, tcp://HOST:PORT"),
    (["train", "--encoder", "direct", "--precision", "fp16"], "only float precision"),
    (["infer", "--checkpoint", "/nonexistent.pt"], "does not exist"),
    (["train", "--model", "cnn", "--backend", "sim"],
     "the cnn model runs on the golden model only: the cores have no convolution yet"),
])
def test_cli_errors_are_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bad_checkpoint_is_refused(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(Exception, match="cannot be read"):
        load_checkpoint(bad)


def test_config_rejects_unknown_model():
    with pytest.raises(ConfigError, match="model must be one of mlp, qk, cnn, not 'snn'"):
        TrainConfig(model="snn")


@pytest.mark.parametrize("kwargs, message", [
    ({"surrogate": "relu"}, r"surrogate must be one of sigmoid, atan, rect"),
    ({"reset": "none"}, r"LIF reset must be one of hard, soft, not 'none'"),
    ({"attention": "spatial"}, r"attention must be one of token, channel, not 'spatial'"),
    ({"encoder": "latency"}, r"encoder must be one of rate, direct, not 'latency'"),
    ({"dataset": "cifar10"}, r"dataset must be one of digits, mnist, not 'cifar10'"),
    ({"tau": 0.5}, r"LIF tau must be at least 1"),
])
def test_config_is_checked_when_made(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("model, shape", [("mlp", (8, 64)), ("qk", (8, 8, 8)),
                                          ("cnn", (8, 1, 8, 8))])
def test_the_raster_sample_has_the_models_input_shape(model, shape):
    from spikeforge.cli import _first_test_sample

    x = _first_test_sample(TrainConfig(model=model))
    assert tuple(x.shape) == shape and x.any() and not x.all()


@pytest.mark.parametrize("model", ["mlp", "qk", "cnn"])
def test_every_backend_starts_from_the_same_binary16_weights(model):
    """A device is handed the float network and rounds it to binary16 (DeviceBackend); the FP16
    golden model rounds its own draw. Both must hold the same bits, and the float model those
    values exactly: one rounding from one draw."""
    float_net = TrainConfig(model=model).build()
    exact = TrainConfig(model=model, precision="fp16").build()
    on_device = float_net.to(FP16())
    assert set(on_device.weights) == set(exact.weights)
    for name, w in exact.weights.items():
        assert torch.equal(fp16.bits(on_device.weights[name]), fp16.bits(w)), name
        assert torch.equal(float_net.weights[name].double(), w.double()), name
        assert w.abs().max() > 0 and len(w.unique()) > w.numel() // 4


def test_a_nir_graph_is_rounded_once(tmp_path):
    import nir
    import numpy as np

    from spikeforge.gen.nir_graph import network_from_nir

    w = np.random.default_rng(3).normal(0, 0.3, size=(40, 64))
    ones = np.ones(40)
    graph = nir.NIRGraph(nodes={
        "in": nir.Input(input_type={"input": np.array([64])}),
        "fc": nir.Linear(weight=w),
        "lif": nir.LIF(tau=ones * 2, r=ones, v_leak=ones * 0, v_threshold=ones, v_reset=ones * 0),
        "out": nir.Output(output_type={"output": np.array([40])}),
    }, edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    got = fp16.bits(network_from_nir(graph).to(FP16()).weights["fc0"])
    want = fp16.bits(torch.from_numpy(w.astype(np.float16)))
    assert torch.equal(got, want)
    assert not torch.equal(got, fp16.bits(torch.from_numpy(w).float().half()))
