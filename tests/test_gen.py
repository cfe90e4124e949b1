# SPDX-License-Identifier: Apache-2.0
import json

import pytest
import torch

from spikeforge.cli import main
from spikeforge.errors import ConfigError
from spikeforge.gen.compiler import compile_network
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.gen.generate import TOP, generate
from spikeforge.golden import fp16
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.network import QKNet, SpikingMLP
from spikeforge.hw.soc import SoC
from spikeforge.protocol import VERSION, Link
from spikeforge.regmap import Reg, Shortcut

SMALL = AcceleratorConfig(cores=2, neurons=8, fan_in=8, lanes=4, timesteps=2)
QK_CONFIG = AcceleratorConfig(cores=4, neurons=8, fan_in=16, lanes=2, timesteps=8, qk_units=1)
TINY_QK = {"tokens": 4, "features": 4, "dim": 4, "classes": 3}


@pytest.mark.slow
def test_generation_is_reproducible(tmp_path):
    first = generate(SMALL, tmp_path / "a")
    second = generate(SMALL, tmp_path / "b")
    assert first == second
    text = (tmp_path / "a" / f"{TOP}.v").read_bytes()
    assert text == (tmp_path / "b" / f"{TOP}.v").read_bytes()
    assert f"module {TOP}(" in text.decode()
    assert AcceleratorConfig.load(tmp_path / "a" / "config.json") == SMALL
    assert first["identity"][:6] == [VERSION, 2, 4, 8, 8, 2]
    other = generate(SMALL.replace(cores=3), tmp_path / "c")
    assert other["files"][f"{TOP}.v"] != first["files"][f"{TOP}.v"]


@pytest.mark.parametrize("fields, message", [
    ({"cores": 0}, "cores must be an integer between 1 and 64, not 0"),
    ({"lanes": 3}, "lanes must be a power of two between 1 and 64, not 3"),
    ({"neurons": 12, "lanes": 8}, "neurons must be a multiple of lanes (8), not 12"),
    ({"surrogate": "relu"}, "surrogate must be one of sigmoid, atan, rect, piecewise_quadratic"),
    ({"reset": "none"}, "reset must be 'hard' or 'soft'"),
    ({"timesteps": 1000}, "timesteps must be an integer between 1 and 256"),
    ({"colour": "red"}, "unknown accelerator configuration fields: colour"),
    ({"cores": 3, "qk_units": 1}, "1 Q-K units need 4 cores (four a unit"),
    ({"cores": 4, "qk_units": 1, "qk_tokens": 9}, "qk_tokens must be an integer between 0 "
                                                  "and 8, not 9"),
    ({"cores": 4, "qk_units": 1, "neurons": 24, "lanes": 8},
     "a Q-K unit's channels (neurons / 2 = 12) must be a multiple of lanes (8)"),
])
def test_configuration_errors(fields, message, tmp_path, capsys):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(fields))
    assert main(["gen", "--config", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_compiler_places_layers_along_the_chain():
    net = SpikingMLP([6, 8, 3], seed=1, gain=2.0)
    program = compile_network(net, SMALL, timesteps=2)
    assert [(c.core, c.neurons, c.inputs) for c in program.cores] == [(0, 8, 6), (1, 3, 8)]
    assert program.links == [Link.FP_TO_NEXT, Link.BP_TO_PREV]
    first, second = program.cores
    assert first.registers[Reg.BP_INPUT_ERROR] == 0 and second.registers[Reg.BP_INPUT_ERROR] == 1
    assert first.registers[Reg.INPUTS] == 6 and first.registers[Reg.TIMESTEPS] == 2
    [(offset, words)] = program.weight_rows(first)
    assert offset == 0 and len(words) == 8 * 8
    assert words[8:14] == fp16.bits(first.weights[1]).tolist() and words[14:16] == [0, 0]
    assert torch.equal(first.weights, fp16.to_fp16(net.weights["fc0"]))


def test_compiler_places_the_qk_model_on_a_qk_unit():
    net = QKNet(**TINY_QK, attention="channel", seed=2)
    program = compile_network(net, QK_CONFIG, timesteps=2)
    assert [(c.layer, c.core, c.neurons, c.inputs) for c in program.cores] == [
        ("embed", 0, 4, 4), ("q+k", 1, 8, 4), ("proj", 2, 4, 4), ("head", 3, 3, 16)]
    regs = [c.registers for c in program.cores]
    assert [r[Reg.TIMESTEPS] for r in regs] == [8, 8, 8, 2]
    assert [r[Reg.TOKENS] for r in regs] == [4, 4, 4, 1]
    assert [r[Reg.SHORTCUT] for r in regs] == [Shortcut.SOURCE, 0, Shortcut.TARGET, 0]
    assert (regs[3][Reg.IN_TOKENS], regs[3][Reg.IN_STRIDE]) == (4, 4)
    assert [r[Reg.BP_INPUT_ERROR] for r in regs] == [0, 1, 1, 1]
    assert program.links == [Link.FP_TO_NEXT, Link.FP_TO_NEXT | Link.BP_TO_PREV,
                             Link.FP_TO_NEXT | Link.BP_TO_PREV, Link.BP_TO_PREV]
    assert program.unit[:4] == [1, 4, 4, 2] and program.tokens == 4
    assert program.unit[4] == int(fp16.bits(torch.tensor(0.5)))   # the attention's V_th
    with pytest.raises(ConfigError, match=r"the attention takes 4 tokens a timestep, a Q-K "
                                          r"unit at most 3 \(generate with qk_tokens=4\)"):
        compile_network(net, QK_CONFIG.replace(qk_tokens=3), timesteps=2)
    # [Wq; Wk] on one core, parted again into the network's weights
    layers = {c.layer: c.weights for c in program.cores}
    weights = program.network_weights(layers)
    assert set(weights) == set(net.weights)
    for name, w in net.weights.items():
        assert torch.equal(weights[name], fp16.to_fp16(w)), name


def test_compiler_rows_with_gaps():
    config = AcceleratorConfig(cores=1, neurons=4, fan_in=12, lanes=4, timesteps=2)
    program = compile_network(SpikingMLP([12, 4]), config, timesteps=2)
    rows = program.weight_rows(program.cores[0])
    assert [offset for offset, _ in rows] == [0, 16, 32, 48]
    assert all(len(words) == 12 for _, words in rows)


@pytest.mark.parametrize("network, timesteps, message", [
    (SpikingMLP([8, 8, 8, 8]), 2, "the layers need 3 cores of 8 neurons (1 + 1 + 1), the "
                                  "accelerator has 2 (generate with cores=3 or more, or with "
                                  "neurons=8 and cores=3)"),
    (SpikingMLP([20, 8]), 2, "layer fc0 has 20 inputs, a core at most 8 (generate with "
                             "fan_in=20)"),
    (SpikingMLP([8, 20]), 2, "the layers need 3 cores of 8 neurons (3), the accelerator has 2 "
                             "(generate with cores=3 or more, or with neurons=20 and cores=1)"),
    (SpikingMLP([8, 8]), 3, "3 timesteps take 3 steps a sample, the cores keep BP state for "
                           "at most 2 (generate with timesteps=3 or more)"),
    (SpikingMLP([8, 8], lif=LIFParams(surrogate="atan")), 2, "surrogate is atan"),
    (SpikingMLP([8, 8], lif=LIFParams(reset="soft")), 2,
     "the network's reset is soft, the cores' hard (generate with reset='soft')"),
    (QKNet(), 2, "the qk model needs a Q-K unit and the accelerator has none (generate with "
                 "qk_units=1 and cores=4 or more)"),
    (QKNet(**TINY_QK), 4, "4 timesteps of 4 tokens take 16 steps a sample, the cores keep BP "
                          "state for at most 8 (generate with timesteps=16 or more)"),
    (QKNet(**{**TINY_QK, "dim": 6}), 2, "[Wq; Wk] has 12 neurons, a core at most 8 (generate "
                                        "with neurons=12)"),
    (QKNet(**{**TINY_QK, "dim": 3}), 2, "the attention's 3 channels must be a multiple of "
                                        "lanes (2)"),
    (QKNet(**{**TINY_QK, "classes": 9}), 2, "the head has 9 neurons, a core at most 8"),
    (QKNet(**{**TINY_QK, "tokens": 5}), 1, "the head takes 5 tokens of 4 channels (20 inputs) "
                                           "and the embedding 4, a core at most 16 inputs "
                                           "(generate with fan_in=20)"),
    (QKNet(**TINY_QK, attention_lif=LIFParams(v_th=0.5, surrogate="atan")), 2,
     "the attention neurons' surrogate is atan, the cores' sigmoid"),
])
def test_networks_that_do_not_fit_are_refused(network, timesteps, message):
    config = QK_CONFIG if isinstance(network, QKNet) and network.tokens < 8 else SMALL
    with pytest.raises(ConfigError, match="does not fit") as info:
        compile_network(network, config, timesteps=timesteps)
    assert message in str(info.value)


@pytest.mark.parametrize("model", ["mlp", "qk"])
def test_the_virtual_board_is_built_for_the_training_neurons(model):
    """``--reset soft --surrogate atan --backend sim``: the virtual board's cores (and Q-K unit)
    are generated with that reset and surrogate, and the network — attention neurons included —
    compiles onto them; onto the default board it does not."""
    from spikeforge.device import accelerator_config
    from spikeforge.train import TrainConfig

    cfg = TrainConfig(model=model, reset="soft", surrogate="atan", timesteps=2)
    network = cfg.build()
    if model == "qk":
        assert (network.attention_lif.reset, network.attention_lif.surrogate.kind,
                network.attention_lif.v_th) == ("soft", "atan", 0.5)
    config = accelerator_config(None, cfg.timesteps, model, cfg.lif())
    assert (config.reset, config.surrogate) == ("soft", "atan")
    compile_network(network, config, timesteps=cfg.timesteps)
    with pytest.raises(ConfigError, match="reset is soft, the cores' hard"):
        compile_network(network, accelerator_config(None, cfg.timesteps, model),
                        timesteps=cfg.timesteps)


@pytest.mark.parametrize("config", [
    AcceleratorConfig(),
    AcceleratorConfig(cores=1, neurons=8, fan_in=24, lanes=1, timesteps=1, reset="soft",
                      detach_reset=False, surrogate="piecewise_quadratic"),
    AcceleratorConfig(cores=8, neurons=64, fan_in=256, lanes=8, timesteps=64, qk_units=2,
                      qk_tokens=8, surrogate="atan"),
])
def test_a_configuration_and_its_identity_are_inverses(config):
    from spikeforge.protocol import IDENTITY

    identity = config.identity()
    assert tuple(identity) == IDENTITY
    assert AcceleratorConfig.from_identity(identity) == config
    assert SoC(config).identity() == tuple(identity.values())


def test_an_identity_this_version_cannot_read_is_refused():
    identity = AcceleratorConfig().identity()
    with pytest.raises(ConfigError, match="surrogate 9, which this version does not know"):
        AcceleratorConfig.from_identity({**identity, "surrogate": 9})
    with pytest.raises(ConfigError, match="protocol version 99"):
        AcceleratorConfig.from_identity({**identity, "version": 99})
