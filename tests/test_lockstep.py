# SPDX-License-Identifier: Apache-2.0
import math

import pytest
import torch

from spikeforge import ConfigError
from spikeforge.cli import main
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.network import SpikingMLP
from spikeforge.lockstep import GoldenMismatch, Lockstep, load_case, replay
from spikeforge.train import GoldenBackend, TrainConfig, train

CFG = TrainConfig(hidden=32, timesteps=4, epochs=1, precision="fp16")


class FaultyFP16(FP16):
    """FP16 whose adder is one ulp high whenever the exact result is 1.0."""

    def add(self, a, b):
        s = super().add(a, b)
        return torch.where(fp16.bits(s) == 0x3C00, fp16.from_bits(torch.full_like(
            s, 0x3C01, dtype=torch.int32)), s)


def faulty_backend(cfg: TrainConfig) -> GoldenBackend:
    return GoldenBackend(cfg.build().to(FaultyFP16()))


def test_a_run_in_lockstep_checks_every_batch_and_evaluation(tmp_path):
    result = train(CFG, GoldenBackend(CFG.build()), progress=False, check_golden=tmp_path)
    assert result["golden_checked_batches"] == math.ceil(1437 / CFG.batch_size)
    assert result["test_accuracy"] > 0.5
    assert not list(tmp_path.iterdir())


def test_the_weights_of_a_double_rounded_start_are_refused_before_training():
    """The weights a device was given before they were rounded once: float64 -> float32 ->
    binary16 lands one ulp off in fc1[8, 112] (0x1c56 against 0x1c57)."""
    cfg = TrainConfig(precision="fp16")
    gen = torch.Generator().manual_seed(cfg.seed)
    drawn = {}
    for i, (n_in, n_out) in enumerate([(64, 128), (128, 10)]):
        bound = cfg.init_gain / math.sqrt(n_in)
        w = (torch.rand(n_out, n_in, generator=gen, dtype=torch.float64) * 2 - 1) * bound
        drawn[f"fc{i}"] = w.float().half()
    net = SpikingMLP([64, 128, 10], arith=FP16())
    net.weights = drawn
    with pytest.raises(GoldenMismatch) as info:
        Lockstep(GoldenBackend(net), cfg.build())
    d = info.value.difference
    assert (d.what, d.layer, d.index) == ("weight", "fc1", (8, 112))
    assert (d.device_bits, d.golden_bits) == (0x1C56, 0x1C57)
    assert "before training" in str(info.value) and "0x1c56" in str(info.value)


def test_the_first_difference_is_found_step_by_step_and_saved_for_replay(tmp_path):
    with pytest.raises(GoldenMismatch) as info:
        train(CFG, faulty_backend(CFG), progress=False, check_golden=tmp_path)
    d, case_path = info.value.difference, info.value.case
    assert d.epoch == 1 and d.batch >= 1 and d.sample is not None
    assert d.what in ("charge", "spike", "grad")
    assert d.device_bits != d.golden_bits or d.device != d.golden
    if d.what in ("charge", "spike"):
        assert d.timestep is not None and d.layer in ("fc0", "fc1")
    case = load_case(case_path)
    assert case["batch"] == d.batch and case["x"].shape[1] == CFG.batch_size
    again = replay(case, faulty_backend(CFG))
    assert (again.what, again.layer, again.index, again.sample, again.device_bits) == (
        d.what, d.layer, d.index, d.sample, d.device_bits)
    assert replay(case, GoldenBackend(CFG.build())) is None
    assert main(["replay", str(case_path), "--backend", "golden"]) == 0


def test_replay_refuses_what_is_not_a_case(tmp_path, capsys):
    path = tmp_path / "case.pt"
    torch.save({"format": "something else"}, path)
    assert main(["replay", str(path), "--backend", "golden"]) == 2
    assert "is not a spikeforge replay case" in capsys.readouterr().err
    assert main(["replay", str(tmp_path / "none.pt"), "--backend", "golden"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_difference_is_located_at_its_timestep():
    """A charge that differs only from timestep 2 on is reported there, not at timestep 0."""
    from spikeforge.lockstep import _earliest, first_difference

    golden = torch.zeros(4, 6, dtype=torch.float16)
    device = golden.clone()
    device[2, 5] = 0.5
    later = golden.clone()
    later[3, 0] = 1.0
    d = _earliest([first_difference("charge", "fc1", later, golden),
                   first_difference("charge", "fc0", device, golden)], {})
    assert (d.layer, d.timestep, d.index) == ("fc0", 2, (2, 5))
    d = _earliest([first_difference("charge", "embed", device, golden)], {"embed": 2})
    assert (d.timestep, d.token) == (1, 0)


def test_float_precision_cannot_be_checked():
    cfg = TrainConfig(hidden=32, timesteps=4)
    with pytest.raises(ConfigError, match="compares FP16 bits"):
        Lockstep(GoldenBackend(cfg.build()), cfg.build())


def test_the_cli_refuses_to_check_the_golden_model_against_itself(capsys):
    assert main(["train", "--check-golden", "--epochs", "1", "--quiet"]) == 2
    assert "--check-golden" in capsys.readouterr().err


def test_compare_finds_two_runs_alike_and_names_the_first_different_weight(tmp_path, capsys):
    from spikeforge.checkpoint import load_checkpoint, save_checkpoint

    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    for path in (a, b):
        train(CFG, GoldenBackend(CFG.build()), progress=False, checkpoint=path)
    assert main(["compare", str(a), str(b)]) == 0
    assert "bit for bit" in capsys.readouterr().out
    state = load_checkpoint(b)
    net = CFG.build()
    net.load_state_dict(state["weights"])
    net.weights["fc1"][4, 7] = fp16.from_bits(fp16.bits(net.weights["fc1"][4, 7]) ^ 1)
    save_checkpoint(b, net, CFG, state["epoch"], state["history"], state["rng"])
    assert main(["compare", str(a), str(b)]) == 1
    assert "fc1[4, 7]" in capsys.readouterr().out
