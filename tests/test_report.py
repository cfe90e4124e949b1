# SPDX-License-Identifier: Apache-2.0
import json

import pytest

from spikeforge.cli import main
from spikeforge.regmap import COUNTERS
from spikeforge.report import ENERGY_PJ, ReportError, analyse, report

T, LANES, SAMPLES, TRAIN = 4, 8, 10, 6


def counters(**values):
    k = dict.fromkeys(COUNTERS, 0)
    k.update(values)
    return k


def device_run():
    return {
        "model": "mlp", "backend": "sim", "test_accuracy": 0.9, "golden_test_accuracy": 0.91,
        "epochs": 2, "config": {"timesteps": T},
        "history": [{"epoch": 1, "loss": 0.5, "train_accuracy": 0.6, "test_accuracy": 0.7},
                    {"epoch": 2, "loss": 0.3, "train_accuracy": 0.8, "test_accuracy": 0.9}],
        "accelerator": {"lanes": LANES},
        "layers": [{"layer": "fc0", "core": 0, "neurons": 16, "inputs": 8},
                   {"layer": "fc1", "core": 1, "neurons": 4, "inputs": 16}],
        "counters": {
            "fc0": counters(cycles=10000, fp_busy=3000, fp_stall=300, fp_events=100,
                            fp_out_events=64, bp_busy=1000, wg_busy=200, update_busy=40,
                            w_reads=500, w_writes=40, g_reads=200, g_writes=200),
            "fc1": counters(cycles=10000, fp_busy=500, fp_events=64, fp_out_events=16,
                            bp_busy=2000, bp_stall=1000, bp_neurons=30, wg_busy=100,
                            update_busy=16, w_reads=100, g_reads=50, g_writes=50),
        },
        "link": {"rx_bytes": 5000, "tx_bytes": 3000, "frames": 100, "bad_frames": 0},
        "device_samples": SAMPLES, "device_cycles_per_sample": 1000.0,
        "device_active_cycles": 4200,
        "batches": [{"samples": 3, "input_rate": 0.2, "output_rate": 0.1, "cycles": 3000},
                    {"samples": 3, "input_rate": 0.3, "output_rate": 0.1, "cycles": 3600}],
        "raster": {"input": [[1, 0] * 4] * T, "fc0": [[0, 1] * 8] * T, "fc1": [[1, 0, 0, 1]] * T},
    }


def test_numbers_follow_from_the_counters():
    result = analyse(device_run())
    fc0, fc1 = result["layers"]
    assert fc0["fp_share"] == 0.3 and fc0["fp_stall"] == 0.1 and fc1["bp_stall"] == 0.5
    assert fc0["input_sparsity"] == 1 - 100 / (SAMPLES * T * 8)
    assert fc0["output_rate"] == 64 / (SAMPLES * T * 16)
    assert fc0["fp_additions_per_sample"] == (100 * 16 + SAMPLES * T * 16 * 2) / SAMPLES
    assert fc1["bp_macs_per_training_sample"] == 30 * 16 / TRAIN
    assert fc0["wg_additions_per_training_sample"] == 200 * LANES / TRAIN
    assert fc0["sram_bytes_per_sample"] == 2 * (500 + 40 + 200 + 200) * LANES / SAMPLES
    adds = muls = 0
    for n, f, k in ((16, 8, device_run()["counters"]["fc0"]),
                    (4, 16, device_run()["counters"]["fc1"])):
        bptt = TRAIN * T * n
        adds += (k["fp_events"] * n + SAMPLES * T * n * 2 + k["bp_neurons"] * f + 2 * bptt
                 + k["wg_busy"] * LANES + k["update_busy"] * LANES)
        muls += SAMPLES * T * n + k["bp_neurons"] * f + 2 * bptt + k["update_busy"] * LANES
    words = (500 + 40 + 200 + 200 + 100 + 50 + 50) * LANES
    energy = (adds * ENERGY_PJ["fp16_add"] + muls * ENERGY_PJ["fp16_mul"]
              + words * ENERGY_PJ["sram_word"]) / SAMPLES
    assert result["energy_per_sample_pj"]["total_pj"] == pytest.approx(energy, rel=1e-12)
    assert result["operations_per_sample"] == (adds + muls) / SAMPLES
    assert result["host_link_bytes_per_sample"] == 800
    assert result["samples_per_second"]["100 MHz"] == 100_000
    assert result["device_active_cycles_per_sample"] == 4200 / SAMPLES
    assert ENERGY_PJ["fp16_add"] == pytest.approx(0.4 * 28 / 45)
    assert result["qk_cycles_per_sample"] is None          # no Q-K unit


def test_the_q_k_unit_s_cycles_are_reported(tmp_path):
    run = device_run()
    run["accelerator"]["qk_units"] = 1
    run["link"]["qk_cycles"] = 2500
    assert analyse(run)["qk_cycles_per_sample"] == 250
    (tmp_path / "train.json").write_text(json.dumps(run))
    assert main(["report", str(tmp_path)]) == 0
    assert "| of those, the Q-K unit working (share) | 250 (0.250) |" in \
        (tmp_path / "report.md").read_text()


def test_report_writes_a_table_and_plots(tmp_path):
    import matplotlib.image

    (tmp_path / "train.json").write_text(json.dumps(device_run()))
    assert main(["report", str(tmp_path)]) == 0
    table = (tmp_path / "report.md").read_text()
    assert "| modelled energy a sample, 28 nm |" in table
    assert f"| of those, a core working (not waiting for the host) | {4200 // SAMPLES:,} |" \
        in table
    assert json.loads((tmp_path / "report.json").read_text())["device"]
    for name in ("curves", "raster", "cycles_vs_rate"):
        image = matplotlib.image.imread(tmp_path / "plots" / f"{name}.png")
        assert image.shape[0] > 200 and image[..., :3].std() > 0.05, name


def test_a_golden_run_has_curves_only(tmp_path):
    run = {k: v for k, v in device_run().items()
           if k in ("model", "backend", "test_accuracy", "epochs", "history", "config")}
    (tmp_path / "train.json").write_text(json.dumps(run))
    result = report(tmp_path)
    assert not result["device"] and [p.rsplit("/", 1)[1] for p in result["plots"]] == \
        ["curves.png"]
    assert "a golden-model run" in (tmp_path / "report.md").read_text()


def test_bad_run_folders(tmp_path):
    with pytest.raises(ReportError, match="is not a folder"):
        report(tmp_path / "missing")
    with pytest.raises(ReportError, match="does not exist: run spikeforge train --json"):
        report(tmp_path)
    (tmp_path / "train.json").write_text("{")
    with pytest.raises(ReportError, match="is not JSON"):
        report(tmp_path)
    (tmp_path / "train.json").write_text("[]")
    with pytest.raises(ReportError, match="is not the JSON of spikeforge train"):
        report(tmp_path)
