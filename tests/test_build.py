# SPDX-License-Identifier: Apache-2.0
"""Bitstream builds: board targets, PLLs, report parsing, baselines, fit and timing messages, and
one real build of the small board with the yowasp toolchain."""

import json
import zlib

import pytest

from spikeforge.boards import build as b
from spikeforge.boards.netlist import total
from spikeforge.boards.targets import TARGETS, target
from spikeforge.boards.top import BoardTop, pll_verilog
from spikeforge.errors import ConfigError

ECP5_REPORT = {
    "fmax": {"$glbnet$sync_clk": {"achieved": 61.3, "constraint": 50.0}},
    "utilization": {"TRELLIS_COMB": {"used": 30000, "available": 83640},
                    "TRELLIS_FF": {"used": 12000, "available": 83640},
                    "MULT18X18D": {"used": 40, "available": 156},
                    "DP16KD": {"used": 60, "available": 208}},
}


def test_targets_and_configs():
    assert target("ulx3s-85f").device == "LFE5U-85F-BG381"
    assert TARGETS["orangecrab-25f"].device == "LFE5U-25F-MG285"
    assert target("ulx3s-85f").config(cores=6, lanes=None).cores == 6
    with pytest.raises(ConfigError, match="unknown board 'nope'"):
        target("nope")
    with pytest.raises(ConfigError, match="cores must be"):
        target("orangecrab-25f").config(cores=0)


@pytest.mark.parametrize("osc, mhz", [(25, 50), (25, 100), (48, 48), (48, 50), (25, 73)])
def test_pll_from_ecppll(osc, mhz):
    text, achieved = pll_verilog(osc, mhz)
    assert "module spikeforge_pll" in text and "EHXPLLL" in text
    assert abs(achieved - mhz) < 1.5


def test_pll_out_of_range_says_so():
    with pytest.raises(ConfigError, match="cannot make 2000 MHz"):
        pll_verilog(25, 2000)


def test_top_elaborates_with_uart_and_leds(tmp_path):
    t = target("ulx3s-85f")
    platform = t.make_platform()
    text, mhz = pll_verilog(25, 50)
    platform.add_file("spikeforge_pll.v", text)
    plan = platform.build(BoardTop(t, t.config(cores=1, lanes=1, neurons=8), mhz), name="top",
                          build_dir=str(tmp_path), do_build=False)
    plan.extract(str(tmp_path))
    lpf = (tmp_path / "top.lpf").read_text()
    for pin in ("G2", "M1", "L4", "B2", "H3"):   # clock, UART rx/tx, led 0 and 7
        assert f'"{pin}"' in lpf, pin
    assert "FREQUENCY NET" in lpf and "50000000" in lpf
    prelude, commands = b._steps((tmp_path / "build_top.sh").read_text())
    assert [c.split()[0] for c in commands] == ['"$YOSYS"', '"$NEXTPNR_ECP5"', '"$ECPPACK"']
    assert "top.lpf" in commands[1]


@pytest.mark.parametrize("board, mhz, baud, divisor", [
    ("ulx3s-85f", 50, None, 17), ("orangecrab-25f", 48, None, 48),
    ("ulx3s-85f", 50, 115_200, 434), ("ulx3s-85f", 100, None, 33)])
def test_the_uart_runs_at_the_targets_rate_or_the_given_one(board, mhz, baud, divisor):
    t = target(board)
    top = BoardTop(t, t.config(), mhz, baud=baud)
    assert top.baud == (baud or t.baud) and top.divisor == divisor


def test_default_rates():
    assert target("ulx3s-85f").baud == 3_000_000
    assert target("orangecrab-25f").baud == 1_000_000


def test_a_rate_the_clock_cannot_make_is_refused_before_building(monkeypatch):
    def no_tools(*args, **kwargs):
        raise AssertionError("a tool ran")

    monkeypatch.setattr("spikeforge.boards.top.pll_verilog", no_tools)
    with pytest.raises(ConfigError, match=r"^3,500,000 baud at 50 MHz: .* build with --baud "
                                          r"3000000 or at --mhz 49$"):
        b.build("ulx3s-85f", baud=3_500_000)
    with pytest.raises(ConfigError, match=r"fewer than the 8 the receiver needs"):
        BoardTop(target("orangecrab-25f"), target("orangecrab-25f").config(), 48,
                 baud=12_000_000)


def test_the_rate_is_part_of_the_cache_key():
    args = ("ulx3s-85f", "{}", 50.0)
    assert b.cache_key(*args, 3_000_000, 1, {}) != b.cache_key(*args, 115_200, 1, {})
    assert b.cache_key(*args, 3_000_000, 1, {}) == b.cache_key(*args, 3_000_000, 1, {})


def test_cli_refuses_a_rate_with_a_workable_one(capsys):
    from spikeforge.cli import main

    assert main(["build", "--board", "ulx3s-85f", "--baud", "8000000"]) == 2
    assert capsys.readouterr().err == (
        "spikeforge: error: 8,000,000 baud at 50 MHz: 6.2 clock cycles a bit, fewer than the 8 "
        "the receiver needs; build with --baud 3000000 or at --mhz 64\n")


def test_orangecrab_uart_on_the_feather_header(tmp_path):
    t = target("orangecrab-25f")
    platform = t.make_platform()
    text, mhz = pll_verilog(48, 48)
    platform.add_file("spikeforge_pll.v", text)
    plan = platform.build(BoardTop(t, t.config(lanes=1, neurons=8), mhz), name="top",
                          build_dir=str(tmp_path), do_build=False)
    plan.extract(str(tmp_path))
    lpf = (tmp_path / "top.lpf").read_text()
    for pin in ("A9", "N17", "M18", "K4", "M3", "J3"):   # clock, header 0/1, RGB LED
        assert f'"{pin}"' in lpf, pin


def test_resources_of_a_report():
    got = b.resources(ECP5_REPORT)
    assert got == {"luts": 30000, "ffs": 12000, "dsps": 40, "brams": 60, "fmax_mhz": 61.3}
    assert b.resources({})["fmax_mhz"] is None


def test_does_not_fit_names_the_resource_and_the_change(tmp_path):
    (tmp_path / "top.tim").write_text(
        "Info: Device utilisation:\n"
        "Info:          TRELLIS_COMB: 99000/  83640   118%\n"
        "Info:                DP16KD:    20/    208     9%\n"
        "ERROR: Unable to place cell 'x', no BELs remaining to implement cell type "
        "'TRELLIS_COMB'\n")
    with pytest.raises(b.BuildError, match=r"TRELLIS_COMB 99000 of 83640 \(118%\): fewer cores"):
        b._fail(tmp_path, "place and route (nextpnr)", "")
    (tmp_path / "top.tim").write_text("ERROR: something else broke\n")
    with pytest.raises(b.BuildError, match="something else broke"):
        b._fail(tmp_path, "place and route (nextpnr)", "")


def test_baseline_check_passes_and_fails():
    base = {"luts": 1000, "ffs": 500, "dsps": 4, "brams": 10, "fmax_mhz": 60.0}
    assert b.check_baseline(dict(base), base) == []
    worse = dict(base, luts=1100, fmax_mhz=50.0, dsps=5)
    problems = b.check_baseline(worse, base)
    assert len(problems) == 3
    assert any(p.startswith("luts: 1100") for p in problems)
    assert any(p.startswith("fmax_mhz: 50.0") for p in problems)
    assert b.check_baseline(dict(base, fmax_mhz=70.0, luts=1040), base) == []


def test_dfu_suffix(tmp_path):
    path = tmp_path / "x.bit"
    path.write_bytes(b"123456789")
    b.dfu_suffix(path, 0x1209, 0x5AF0)
    data = path.read_bytes()
    assert len(data) == 9 + 16 and data[:9] == b"123456789"
    assert data[9:25 - 4] == bytes.fromhex("ffff f05a 0912 0001 554644 10")
    # dfu-util's CRC-32: the standard polynomial and start, no final inversion
    assert zlib.crc32(b"123456789") == 0xCBF43926
    assert zlib.crc32(data[:-4]) ^ 0xFFFFFFFF == int.from_bytes(data[-4:], "little")


def test_cli_refuses_an_unknown_board(capsys):
    from spikeforge.cli import main

    with pytest.raises(SystemExit):
        main(["build", "--board", "nope"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_small_board_bitstream(tmp_path, monkeypatch):
    """A small core of the OrangeCrab through Yosys, nextpnr and ecppack, then from cache; its
    blocks (from synthesis) add up to about nextpnr's totals."""
    monkeypatch.setenv("SPIKEFORGE_CACHE", str(tmp_path / "cache"))
    lines = []
    small = {"lanes": 1, "neurons": 8, "timesteps": 4}
    report = b.build("orangecrab-25f", out=tmp_path / "out", progress=lines.append, **small)
    assert lines[-1].startswith("[4/4] DFU suffix done")   # the OrangeCrab's bootloader's
    bitstream = tmp_path / "out" / "top.bit"
    data = bitstream.read_bytes()
    assert str(bitstream) == report["bitstream"] and len(data) > 50_000
    assert data[-8:-5] == b"UFD" and data[-14:-10] == bytes.fromhex("f05a0912")
    assert report["device"] == "LFE5U-25F-MG285" and report["cores"] == 1
    assert 0 < report["luts"] <= 24288 and report["ffs"] > 0 and report["brams"] > 0
    assert report["fmax_mhz"] >= report["target_mhz"] and report["timing_met"]
    blocks = total(report["blocks"])
    assert any(path.startswith("soc.core0.") for path in report["blocks"])
    assert abs(blocks["luts"] - report["luts"]) < 0.02 * report["luts"]
    assert {key: blocks[key] for key in ("dsps", "brams")} == \
        {key: report[key] for key in ("dsps", "brams")}
    assert report["baud"] == 1_000_000 and report["uart_divisor"] == 48
    baseline = b.find_baseline(report)
    if baseline is not None:
        assert b.check_baseline(report, baseline) == []
    lines.clear()
    again = b.build("orangecrab-25f", progress=lines.append, **small)
    assert lines[0].startswith("orangecrab-25f: cached build")
    assert {k: again[k] for k in b.TOLERANCES} == {k: report[k] for k in b.TOLERANCES}
    json.dumps(report)
