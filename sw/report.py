# SPDX-License-Identifier: Apache-2.0
"""``spikeforge report RUN_DIR``: what a run did on the device, from its hardware counters.

Reads ``RUN_DIR/train.json`` (``spikeforge train --json``) and writes ``report.md``,
``report.json`` and PNG plots in ``RUN_DIR/plots/``: loss and accuracy per epoch, the spike raster
of one test sample per layer, device cycles per training batch against its input spike rate,
and each engine's share of the run's cycles.

Operations are counted from the counters of :mod:`spikeforge.regmap` as the engines do them:

* FP: ``fp_events × neurons`` additions (a spike adds its weight row), plus the LIF pass,
  ``T × neurons`` updates a sample (two additions and a multiplication each);
* BP: ``bp_neurons × inputs`` multiply-adds (``Wᵀ·δ`` over neurons with ``δ ≠ 0``), plus the BPTT
  pass, ``T × neurons`` a training sample (two multiplications and two additions each);
* WG: ``wg_busy × lanes`` additions; the update: ``update_busy × lanes`` multiply-adds;
* memory: ``(w_reads + w_writes + g_reads + g_writes) × lanes`` binary16 words of on-chip SRAM.

Energy is a **model**, not a measurement: operation counts times the energy per operation of
M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014, Fig. 1.1.9
(45 nm, 0.9 V): 16-bit FP add 0.4 pJ, 16-bit FP multiply 1.1 pJ, 64-bit read of an 8 KB SRAM
10 pJ, 64-bit DRAM access 1.3–2.6 nJ; scaled to 28 nm at the same supply by the capacitance, in
proportion to the feature size (28/45).
"""

import json
from pathlib import Path

from .errors import SpikeforgeError

__all__ = ["ENERGY_PJ", "analyse", "report"]

SCALE_28NM = 28 / 45
ENERGY_PJ = {                       # at 28 nm
    "fp16_add": 0.4 * SCALE_28NM,
    "fp16_mul": 1.1 * SCALE_28NM,
    "sram_word": 10.0 / 4 * SCALE_28NM,     # a 16-bit word of a 64-bit 8 KB SRAM access
    "dram_word": 1300.0 / 4 * SCALE_28NM,   # the low end of 1.3-2.6 nJ a 64-bit access
}
CLOCKS_MHZ = (50, 100)


class ReportError(SpikeforgeError):
    """A run folder that cannot be reported on."""


def _load(run_dir: Path) -> dict:
    if not run_dir.is_dir():
        raise ReportError(f"{run_dir} is not a folder; give the folder of a run's train.json")
    path = run_dir / "train.json"
    if not path.is_file():
        raise ReportError(f"{path} does not exist: run spikeforge train --json {path} first")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReportError(f"{path} is not JSON ({error})") from None
    if not isinstance(run, dict) or "history" not in run:
        raise ReportError(f"{path} is not the JSON of spikeforge train")
    return run


def analyse(run: dict) -> dict:
    """The report's numbers from a run's JSON."""
    out = {"model": run.get("model"), "backend": run.get("backend"),
           "test_accuracy": run.get("test_accuracy"),
           "golden_test_accuracy": run.get("golden_test_accuracy"),
           "epochs": run.get("epochs")}
    if "counters" not in run:
        out["device"] = False
        return out
    out["device"] = True
    lanes = run["accelerator"]["lanes"]
    samples = run["device_samples"]
    train_samples = sum(b["samples"] for b in run.get("batches", [])) or samples
    layers, energy, ops_total = [], {}, {"add": 0.0, "mul": 0.0}
    sram_words = 0
    for placed in run["layers"]:
        k = run["counters"][placed["layer"]]
        n, f = placed["neurons"], placed["inputs"]
        timesteps = placed.get("steps", run["config"]["timesteps"])   # a step a token
        cycles = max(k["cycles"], 1)
        fp_add = k["fp_events"] * n + samples * timesteps * n * 2
        fp_mul = samples * timesteps * n
        bp_mac = k["bp_neurons"] * f
        bptt = train_samples * timesteps * n
        wg_add = k["wg_busy"] * lanes
        upd = k["update_busy"] * lanes
        adds = fp_add + bp_mac + 2 * bptt + wg_add + upd
        muls = fp_mul + bp_mac + 2 * bptt + upd
        words = (k["w_reads"] + k["w_writes"] + k["g_reads"] + k["g_writes"]) * lanes
        ops_total["add"] += adds
        ops_total["mul"] += muls
        sram_words += words
        layers.append({
            "layer": placed["layer"], "core": placed["core"], "neurons": n, "inputs": f,
            "fp_share": k["fp_busy"] / cycles, "fp_stall": k["fp_stall"] / max(k["fp_busy"], 1),
            "bp_share": k["bp_busy"] / cycles, "bp_stall": k["bp_stall"] / max(k["bp_busy"], 1),
            "wg_share": k["wg_busy"] / cycles, "update_share": k["update_busy"] / cycles,
            "input_sparsity": 1 - k["fp_events"] / max(samples * timesteps * f, 1),
            "output_rate": k["fp_out_events"] / max(samples * timesteps * n, 1),
            "fp_additions_per_sample": fp_add / samples,
            "bp_macs_per_training_sample": bp_mac / train_samples,
            "wg_additions_per_training_sample": wg_add / train_samples,
            "sram_bytes_per_sample": 2 * words / samples,
        })
    energy["arithmetic_pj"] = (ops_total["add"] * ENERGY_PJ["fp16_add"]
                               + ops_total["mul"] * ENERGY_PJ["fp16_mul"]) / samples
    energy["sram_pj"] = sram_words * ENERGY_PJ["sram_word"] / samples
    energy["total_pj"] = energy["arithmetic_pj"] + energy["sram_pj"]
    weights = sum(p["neurons"] * p["inputs"] for p in run["layers"])
    ops_per_sample = (ops_total["add"] + ops_total["mul"]) / samples
    link = run.get("link", {})
    cycles_per_sample = run["device_cycles_per_sample"]
    out.update({
        "samples": samples, "training_samples": train_samples, "layers": layers,
        "operations_per_sample": ops_per_sample,
        "energy_per_sample_pj": energy,
        "pj_per_operation": energy["total_pj"] / max(ops_per_sample, 1),
        "host_link_bytes_per_sample": (link.get("rx_bytes", 0) + link.get("tx_bytes", 0))
        / samples,
        "offchip_bytes_per_sample": 0,
        "program_load_bytes": 2 * weights,
        "device_cycles_per_sample": cycles_per_sample,
        # cycles in which a core worked: the rest waited for the host's spikes or errors
        "device_active_cycles_per_sample": (run["device_active_cycles"] / max(samples, 1)
                                            if "device_active_cycles" in run else None),
        # cycles in which a Q-K unit worked (the qk model's attention)
        "qk_cycles_per_sample": (link["qk_cycles"] / max(samples, 1)
                                 if run["accelerator"].get("qk_units") and "qk_cycles" in link
                                 else None),
        "samples_per_second": {f"{mhz} MHz": mhz * 1e6 / cycles_per_sample
                               for mhz in CLOCKS_MHZ},
        "energy_model": {"source": "Horowitz, ISSCC 2014 (45 nm), scaled 28/45 to 28 nm",
                         "pj": ENERGY_PJ},
    })
    return out


def _table(result: dict) -> list[tuple[str, str]]:
    rows = [("model / backend", f"{result['model']} / {result['backend']}"),
            ("test accuracy", f"{result['test_accuracy']:.4f}")]
    if result.get("golden_test_accuracy") is not None:
        rows.append(("golden float, same settings", f"{result['golden_test_accuracy']:.4f}"))
    if not result["device"]:
        rows.append(("device counters", "none: a golden-model run (train with --backend sim)"))
        return rows
    for layer in result["layers"]:
        name = layer["layer"]
        rows += [
            (f"{name}: core, size", f"{layer['core']}, {layer['neurons']} × {layer['inputs']}"),
            (f"{name}: share of cycles FP / BP / WG / update",
             " / ".join(f"{layer[k]:.3f}" for k in ("fp_share", "bp_share", "wg_share",
                                                     "update_share"))),
            (f"{name}: stalled FP / BP", f"{layer['fp_stall']:.3f} / {layer['bp_stall']:.3f}"),
            (f"{name}: input sparsity, output rate",
             f"{layer['input_sparsity']:.3f}, {layer['output_rate']:.4f}"),
            (f"{name}: FP additions a sample", f"{layer['fp_additions_per_sample']:,.0f}"),
            (f"{name}: BP multiply-adds a training sample",
             f"{layer['bp_macs_per_training_sample']:,.0f}"),
            (f"{name}: WG additions a training sample",
             f"{layer['wg_additions_per_training_sample']:,.0f}"),
            (f"{name}: on-chip SRAM bytes a sample", f"{layer['sram_bytes_per_sample']:,.0f}"),
        ]
    e = result["energy_per_sample_pj"]
    rows += [
        ("operations a sample (FP16 add + mul)", f"{result['operations_per_sample']:,.0f}"),
        ("device cycles a sample", f"{result['device_cycles_per_sample']:,.0f}"),
    ]
    if result.get("device_active_cycles_per_sample") is not None:
        rows.append(("of those, a core working (not waiting for the host)",
                     f"{result['device_active_cycles_per_sample']:,.0f}"))
    if result.get("qk_cycles_per_sample") is not None:
        share = result["qk_cycles_per_sample"] / max(result["device_cycles_per_sample"], 1)
        rows.append(("of those, the Q-K unit working (share)",
                     f"{result['qk_cycles_per_sample']:,.0f} ({share:.3f})"))
    rows += [
        ("samples/s at " + ", ".join(result["samples_per_second"]),
         ", ".join(f"{v:,.0f}" for v in result["samples_per_second"].values())),
        ("host-link bytes a sample", f"{result['host_link_bytes_per_sample']:,.0f}"),
        ("off-chip memory bytes a sample", "0 (weights, gradients and state stay on chip)"),
        ("program load (weight image), once", f"{result['program_load_bytes']:,} bytes"),
        ("modelled energy a sample, 28 nm",
         f"{e['total_pj'] / 1e6:.3f} µJ (arithmetic {e['arithmetic_pj'] / 1e6:.3f}, "
         f"SRAM {e['sram_pj'] / 1e6:.3f})"),
        ("modelled energy an operation", f"{result['pj_per_operation']:.2f} pJ"),
    ]
    return rows


def _plots(run: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    history = run["history"]
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["loss"] for h in history], "o-")
    ax_loss.set(xlabel="epoch", ylabel="training loss (rate MSE)", title="loss")
    ax_acc.plot(epochs, [h["train_accuracy"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["test_accuracy"] for h in history], "s-", label="test")
    if run.get("golden_test_accuracy") is not None:
        ax_acc.axhline(run["golden_test_accuracy"], color="gray", ls="--",
                       label="golden float, test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"accuracy ({run.get('backend')})")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    written.append(folder / "curves.png")
    fig.savefig(written[-1], dpi=120)
    plt.close(fig)

    if run.get("raster"):
        raster = run["raster"]
        fig, axes = plt.subplots(1, len(raster), figsize=(4 * len(raster), 4), squeeze=False)
        for ax, (name, spikes) in zip(axes[0], raster.items(), strict=True):
            points = [(t, i) for t, row in enumerate(spikes) for i, s in enumerate(row) if s]
            if points:
                ts, idx = zip(*points, strict=True)
                ax.scatter(ts, idx, marker="|", s=60, color="black")
            ax.set(xlabel="timestep", ylabel="neuron" if name != "input" else "input",
                   title=f"{name}: {len(points)} spikes", xlim=(-0.5, len(spikes) - 0.5),
                   ylim=(-1, len(spikes[0])))
        fig.suptitle("spike raster of one test sample")
        fig.tight_layout()
        written.append(folder / "raster.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)

    if run.get("batches"):
        import numpy as np

        rate = np.array([b["input_rate"] for b in run["batches"]])
        cyc = np.array([b["cycles"] / b["samples"] for b in run["batches"]])
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(rate, cyc, s=8, alpha=0.5)
        if len(rate) > 1 and np.ptp(rate) > 0:
            slope, icept = np.polyfit(rate, cyc, 1)
            xs = np.linspace(rate.min(), rate.max(), 2)
            ax.plot(xs, slope * xs + icept, color="red",
                    label=f"fit: {icept:,.0f} + {slope:,.0f} × rate")
            ax.legend()
        ax.set(xlabel="input spike rate of the batch", ylabel="device cycles a training sample",
               title="cycles against spike rate")
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(folder / "cycles_vs_rate.png")
        fig.savefig(written[-1], dpi=120)
        plt.close(fig)
    return written


def report(run_dir: str | Path, console=None) -> dict:
    """Write the report of ``run_dir``; return its numbers."""
    from rich.console import Console
    from rich.table import Table

    run_dir = Path(run_dir)
    run = _load(run_dir)
    result = analyse(run)
    rows = _table(result)
    result["plots"] = [str(p) for p in _plots(run, run_dir / "plots")]
    table = Table(title=f"spikeforge run {run_dir}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for row in rows:
        table.add_row(*row)
    (console or Console()).print(table)
    lines = ["| quantity | value |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows]
    lines += ["", "Energy is a model" + __doc__.split("Energy is a **model**")[1].split(
        "\n\n")[0].replace("\n", " ").strip(), ""]
    lines += [f"![{Path(p).stem}](plots/{Path(p).name})" for p in result["plots"]]
    (run_dir / "report.md").write_text("# Run report\n\n" + "\n".join(lines) + "\n")
    (run_dir / "report.json").write_text(json.dumps(result, indent=2))
    return result
