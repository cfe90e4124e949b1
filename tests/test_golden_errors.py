# SPDX-License-Identifier: Apache-2.0
"""A user's mistake raises a spikeforge error whose message names the parameter and what it
may be."""

import pytest
import torch

from spikeforge import ConfigError, ShapeError, SpikeforgeError
from spikeforge.data import encode, load_dataset
from spikeforge.golden.arith import FP16, Float, arith_for
from spikeforge.golden.autograd import lif_autograd
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.linear import (
    linear_backward,
    linear_forward,
    linear_weight_grad,
    sgd_update,
)
from spikeforge.golden.network import QKNet, SpikingMLP, build_model
from spikeforge.golden.qk import qk_attention_backward, qk_attention_forward
from spikeforge.golden.surrogate import Surrogate
from spikeforge.train import TrainConfig, train

NAN, INF = float("nan"), float("inf")
SURROGATE_LIST = r"one of sigmoid, atan, rect, piecewise_quadratic"


def _z(*shape):
    return torch.zeros(*shape)


def _qk_cache():
    return qk_attention_forward(_z(2, 1, 3, 4), _z(2, 1, 3, 4), "token", LIFParams(v_th=0.5))[1]


def _mlp():
    return SpikingMLP([4, 3, 2])


def _qknet():
    return QKNet(tokens=3, features=4, dim=5, classes=2)


SHAPE_ERRORS = {
    "cnn-input": (lambda: build_model("cnn").forward(torch.zeros(2, 1, 64)),
                  r"^CNN input must be \[T, B, 1, 8, 8\], not \(2, 1, 64\)$"),
    "lif-scalar": (lambda: lif_forward(torch.tensor(1.0), LIFParams()),
                   r"^LIF input must be a tensor of shape \[T, \.\.\.\]"),
    "lif-list": (lambda: lif_forward([1.0, 2.0], LIFParams()),
                 r"^LIF input must be a tensor of shape \[T, \.\.\.\], not list$"),
    "lif-T0": (lambda: lif_forward(_z(0, 3), LIFParams()),
               r"^LIF input must hold at least one timestep \(T >= 1\), got T = 0$"),
    "lif-T0-fp16": (lambda: lif_forward(_z(0, 3), LIFParams(), FP16()), r"T >= 1"),
    "lif-autograd-T0": (lambda: lif_autograd(_z(0, 3), LIFParams()), r"T >= 1"),
    "lif-backward-shapes": (
        lambda: lif_backward(_z(4, 3), _z(4, 2), _z(4, 2), LIFParams()),
        r"^spike gradient, charges and spikes must have one shape, "
        r"got \(4, 3\), \(4, 2\) and \(4, 2\)$"),
    "lif-backward-spikes": (lambda: lif_backward(_z(4, 2), _z(4, 2), _z(3, 2), LIFParams()),
                            r"must have one shape"),
    "lif-backward-T0": (lambda: lif_backward(_z(0, 2), _z(0, 2), _z(0, 2), LIFParams()),
                        r"^spike gradient must hold at least one timestep \(T >= 1\)"),
    "forward-weights-vector": (lambda: linear_forward(_z(2, 1, 3), _z(3)),
                               r"^weights must be a matrix \[out, in\], not \(3,\)$"),
    "forward-input-vector": (lambda: linear_forward(_z(3), _z(2, 3)),
                             r"^layer input must be a tensor \[T, \.\.\., features\], not \(3,\)$"),
    "forward-features": (lambda: linear_forward(_z(2, 1, 4), _z(2, 3)),
                         r"^layer input has 4 features, weights expect 3 "
                         r"\(shape \[T, \.\.\., 3\]\)$"),
    "forward-features-fp16": (lambda: linear_forward(_z(2, 1, 4), _z(2, 3), FP16()),
                              r"layer input has 4 features, weights expect 3"),
    "forward-T0": (lambda: linear_forward(_z(0, 1, 3), _z(2, 3)),
                   r"^layer input must hold at least one timestep \(T >= 1\), got T = 0$"),
    "forward-non-binary-fp16": (lambda: linear_forward(torch.full((2, 1, 3), 0.5), _z(2, 3),
                                                       FP16()),
                                r"^layer inputs must be spikes \(0 or 1\); .*float precision"),
    "forward-non-binary-2": (lambda: linear_forward(torch.full((2, 1, 3), 2.0), _z(2, 3),
                                                    FP16()),
                             r"spikes \(0 or 1\)"),
    "backward-features": (lambda: linear_backward(_z(2, 1, 3), _z(2, 3)),
                          r"^current gradient has 3 features, weights have 2 outputs$"),
    "backward-T0": (lambda: linear_backward(_z(0, 1, 2), _z(2, 3)),
                    r"^current gradient must hold at least one timestep \(T >= 1\)"),
    "backward-weights": (lambda: linear_backward(_z(2, 1, 2), _z(2, 3, 1)),
                         r"^weights must be a matrix \[out, in\], not \(2, 3, 1\)$"),
    "wg-dims": (lambda: linear_weight_grad(_z(2, 3), _z(2, 4)),
                r"^layer input must be a tensor \[T >= 1, B, \.\.\., features\], not \(2, 4\)$"),
    "wg-T0": (lambda: linear_weight_grad(_z(0, 1, 3), _z(0, 1, 4)),
              r"must be a tensor \[T >= 1, B, \.\.\., features\], not \(0, 1, 4\)$"),
    "wg-mismatch": (lambda: linear_weight_grad(_z(2, 1, 3), _z(3, 1, 4)),
                    r"^current gradient \[T, B, \.\.\., out\] and input \[T, B, \.\.\., in\] "
                    r"must agree but in the last axis, got \(2, 1, 3\) and \(3, 1, 4\)$"),
    "wg-dw": (lambda: linear_weight_grad(_z(2, 1, 3), _z(2, 1, 4), dw=_z(4, 3)),
              r"^accumulated gradient must be \[3, 4\], not \(4, 3\)$"),
    "wg-non-binary-fp16": (lambda: linear_weight_grad(_z(2, 1, 3), torch.full((2, 1, 4), 0.5),
                                                      FP16()),
                           r"spikes \(0 or 1\)"),
    "sgd": (lambda: sgd_update(_z(2, 3), _z(3, 2), 0.1),
            r"^weights \(2, 3\) and gradient \(3, 2\) differ$"),
    "qk-shapes": (lambda: qk_attention_forward(_z(2, 1, 3, 4), _z(2, 1, 4, 3), "token",
                                               LIFParams()),
                  r"^Q and K must be spike tensors of one shape \[T, B, N, D\], "
                  r"got \(2, 1, 3, 4\) and \(2, 1, 4, 3\)$"),
    "qk-dims": (lambda: qk_attention_forward(_z(2, 3, 4), _z(2, 3, 4), "channel", LIFParams()),
                r"one shape \[T, B, N, D\], got \(2, 3, 4\)"),
    "qk-T0": (lambda: qk_attention_forward(_z(0, 1, 3, 4), _z(0, 1, 3, 4), "token", LIFParams()),
              r"^Q and K must hold at least one timestep \(T >= 1\), got T = 0$"),
    "qk-non-binary-q": (lambda: qk_attention_forward(torch.full((1, 1, 2, 2), 0.5),
                                                     _z(1, 1, 2, 2), "token", LIFParams()),
                        r"^Q must hold spikes \(0 or 1\)$"),
    "qk-non-binary-k": (lambda: qk_attention_forward(_z(1, 1, 2, 2), torch.full((1, 1, 2, 2), 3.),
                                                     "token", LIFParams()),
                        r"^K must hold spikes \(0 or 1\)$"),
    "qk-backward": (lambda: qk_attention_backward(_z(2, 1, 4, 3), _qk_cache()),
                    r"^attention output gradient must be \(2, 1, 3, 4\), not \(2, 1, 4, 3\)$"),
    "mlp-forward": (lambda: _mlp().forward(_z(2, 1, 5)),
                    r"^MLP input must be \[T, B, 4\], not \(2, 1, 5\)$"),
    "mlp-forward-dims": (lambda: _mlp().forward(_z(2, 4)), r"MLP input must be \[T, B, 4\]"),
    "mlp-forward-T0": (lambda: _mlp().forward(_z(0, 1, 4)), r"T >= 1"),
    "qknet-forward": (lambda: _qknet().forward(_z(2, 1, 4, 3)),
                      r"^QK input must be \[T, B, 3, 4\], not \(2, 1, 4, 3\)$"),
    "qknet-forward-T0": (lambda: _qknet().forward(_z(0, 1, 3, 4)), r"T >= 1"),
    "checkpoint-names": (lambda: _mlp().load_state_dict({"fc0": _z(3, 4)}),
                         r"^checkpoint holds weights \['fc0'\], the model has \['fc0', 'fc1'\]$"),
    "checkpoint-shape": (lambda: _mlp().load_state_dict({"fc0": _z(3, 4), "fc1": _z(3, 2)}),
                         r"^checkpoint weight fc1 is \(3, 2\), the model needs \(2, 3\)$"),
}


CONFIG_ERRORS = {
    "tau-negative": (lambda: LIFParams(tau=-2.0),
                     r"^LIF tau must be at least 1 \(1 means no leak\), not -2\.0$"),
    "tau-zero": (lambda: LIFParams(tau=0), r"^LIF tau must be at least 1"),
    "tau-below-1": (lambda: LIFParams(tau=0.5), r"^LIF tau must be at least 1 .*not 0\.5$"),
    "tau-nan": (lambda: LIFParams(tau=NAN), r"^LIF tau must be a finite number, not nan$"),
    "tau-inf": (lambda: LIFParams(tau=INF), r"^LIF tau must be a finite number, not inf$"),
    "tau-bool": (lambda: LIFParams(tau=True), r"^LIF tau must be a finite number, not True$"),
    "v_th-nan": (lambda: LIFParams(v_th=NAN), r"^LIF v_th must be a finite number, not nan$"),
    "v_th-str": (lambda: LIFParams(v_th="1"), r"^LIF v_th must be a finite number, not '1'$"),
    "v_reset-inf": (lambda: LIFParams(v_reset=-INF),
                    r"^LIF v_reset must be a finite number, not -inf$"),
    "reset": (lambda: LIFParams(reset="zero"),
              r"^LIF reset must be one of hard, soft, not 'zero'$"),
    "surrogate": (lambda: Surrogate("relu"), rf"^surrogate must be {SURROGATE_LIST}, not 'relu'$"),
    "surrogate-in-lif": (lambda: LIFParams(surrogate="relu"),
                         rf"^surrogate must be {SURROGATE_LIST}, not 'relu'$"),
    "surrogate-object": (lambda: LIFParams(surrogate=3),
                         r"^LIF surrogate must be a Surrogate, not 3$"),
    "surrogate-alpha": (lambda: Surrogate("atan", alpha=0.0),
                        r"^surrogate alpha must be a positive number, not 0\.0$"),
    "surrogate-alpha-nan": (lambda: Surrogate("sigmoid", alpha=NAN),
                            r"^surrogate alpha must be a positive number, not nan$"),
    "surrogate-bits": (lambda: Surrogate("rect", mantissa_bits=11),
                       r"^surrogate table mantissa_bits must be between 0 and 10, not 11$"),
    "attention": (lambda: qk_attention_forward(_z(1, 1, 2, 2), _z(1, 1, 2, 2), "spatial",
                                               LIFParams()),
                  r"^attention must be one of token, channel, not 'spatial'$"),
    "attention-qknet": (lambda: QKNet(attention="spatial"),
                        r"^attention must be one of token, channel, not 'spatial'$"),
    "attention-backward": (lambda: qk_attention_backward(_z(2, 1, 3, 4),
                                                         {**_qk_cache(), "kind": "rows"}),
                           r"^attention must be one of token, channel, not 'rows'$"),
    "qk-fp16-count": (lambda: qk_attention_forward(_z(1, 1, 1, 2049), _z(1, 1, 1, 2049), "token",
                                                   LIFParams(), FP16()),
                      r"^attention sums over 2049 spikes; binary16 counts exactly only up to "
                      r"2048$"),
    "dataset": (lambda: load_dataset("cifar10"),
                r"^dataset must be one of digits, mnist, not 'cifar10'$"),
    "encoder": (lambda: encode(_z(2, 4), 3, "poisson"),
                r"^encoder must be one of rate, direct, not 'poisson'$"),
    "timesteps-0": (lambda: encode(_z(2, 4), 0), r"^timesteps must be a positive integer, not 0$"),
    "timesteps-float": (lambda: encode(_z(2, 4), 2.0),
                        r"^timesteps must be a positive integer, not 2\.0$"),
    "model": (lambda: build_model("rnn"), r"^model must be one of mlp, qk, cnn, not 'rnn'$"),
    "cnn-stages": (lambda: build_model("cnn", image=(1, 3, 3), channels=(4, 4), pool=None),
                   r"^a 3×3 image is 1×1 before stage 1; its 2×2 pooling needs 2×2 or more: "
                   r"pool fewer stages$"),
    "cnn-pool": (lambda: build_model("cnn", channels=(4, 4), pool=(True,)),
                 r"^CNN pool must be a True or False for each of the 2 stages, not \(True,\)$"),
    "mlp-sizes": (lambda: SpikingMLP([4]),
                  r"^MLP sizes must be two or more positive integers, not \[4\]$"),
    "mlp-sizes-zero": (lambda: SpikingMLP([4, 0, 2]), r"^MLP sizes must be two or more"),
    "qknet-tokens": (lambda: QKNet(tokens=0),
                     r"^QK model tokens must be a positive integer, not 0$"),
    "qknet-dim": (lambda: QKNet(dim=2.5), r"^QK model dim must be a positive integer, not 2\.5$"),
    "precision": (lambda: arith_for("fp8"), r"^precision must be one of float, fp16, not 'fp8'$"),
    "float-dtype": (lambda: Float(torch.float16),
                    r"^float precision must be float32 or float64, not torch\.float16$"),
    "config-model": (lambda: TrainConfig(model="rnn"),
                     r"^model must be one of mlp, qk, cnn, not 'rnn'"),
    "config-precision": (lambda: TrainConfig(precision="fp8"),
                         r"^precision must be one of float, fp16, not 'fp8'$"),
    "config-timesteps": (lambda: TrainConfig(timesteps=0),
                         r"^timesteps must be a positive integer, not 0$"),
    "config-epochs": (lambda: TrainConfig(epochs=-1), r"^epochs must be a positive integer"),
    "config-lr": (lambda: TrainConfig(lr=NAN), r"^lr must be a positive number, not nan$"),
    "config-direct-fp16": (lambda: TrainConfig(encoder="direct", precision="fp16"),
                           r"^the direct encoder feeds currents, which only float precision "
                           r"takes; use --encoder rate with --precision fp16 or a device$"),
    "config-surrogate": (lambda: TrainConfig(surrogate="relu").build(),
                         rf"^surrogate must be {SURROGATE_LIST}, not 'relu'$"),
    "config-reset": (lambda: TrainConfig(reset="zero").build(),
                     r"^LIF reset must be one of hard, soft, not 'zero'$"),
    "config-tau": (lambda: TrainConfig(tau=0.5).build(), r"^LIF tau must be at least 1"),
    "config-attention": (lambda: TrainConfig(model="qk", attention="spatial").build(),
                         r"^attention must be one of token, channel, not 'spatial'$"),
    "config-dataset": (lambda: train(TrainConfig(dataset="cifar10"), progress=False),
                       r"^dataset must be one of digits, mnist, not 'cifar10'$"),
}


def _check(make, cls, match):
    with pytest.raises(cls, match=match) as info:
        make()
    assert isinstance(info.value, SpikeforgeError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("case", list(SHAPE_ERRORS))
def test_shape_errors(case):
    make, match = SHAPE_ERRORS[case]
    _check(make, ShapeError, match)


@pytest.mark.parametrize("case", list(CONFIG_ERRORS))
def test_config_errors(case):
    make, match = CONFIG_ERRORS[case]
    _check(make, ConfigError, match)


def test_error_classes():
    assert issubclass(ConfigError, SpikeforgeError) and issubclass(ConfigError, ValueError)
    assert issubclass(ShapeError, SpikeforgeError) and issubclass(ShapeError, ValueError)
    assert not issubclass(ConfigError, ShapeError) and not issubclass(ShapeError, ConfigError)


def test_unknown_encoder_stops_training(tmp_path):
    with pytest.raises(ConfigError, match=r"^encoder must be one of rate, direct, not 'poisson'$"):
        train(TrainConfig(encoder="poisson", epochs=1, hidden=4), progress=False,
              json_path=tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()
