# SPDX-License-Identifier: Apache-2.0
"""``spikeforge bench``: cycles against the ideal, sparsity payoff and simulator speed.

A core is built with Verilator and driven by cocotb (:mod:`spikeforge.tb.bench`); its hardware
counters give the busy cycles of each engine. The ideal for the same work is the number of
additions (FP, WG) or multiply-adds (BP) divided by the lane count ``P``, plus the per-timestep
LIF (or BPTT) pass over all neurons divided by ``P``:

* ``fp_utilization = (input spikes · neurons + T · neurons) / P / FP busy cycles``
* ``bp_utilization = (neurons with δX ≠ 0 · fan_in + T · neurons) / P / BP busy cycles``
* ``wg_utilization = input spikes · neurons / P / WG busy cycles``
* ``sparsity_payoff = (FP + WG cycles at 10 % input rate) / (FP + WG cycles at 100 %)``
* ``sim_cycles_per_second``: clock cycles simulated per second of wall time, cocotb included.
* ``link``: the virtual board's host link (:func:`bench_link`): weights and spike events a
  second, round trips a second, and the Verilated SoC's cycles a second.
* ``multicore_speedup``: one network trained on the virtual board with its wide hidden layer
  on 1, 4 and 20 cores (split by neurons; one more core for the output layer), device cycles of
  a training step (FP, BP, WG, update) on one core over those on ``k``
  (:func:`bench_multicore`). The runs must agree bit for bit, so the speedup is for the same
  work.
* ``uart_link``: the host link over the board's UART (:func:`bench_uart_link`): for a
  ``WRITE`` and a ``READ`` of 64 words, ``link_frames_per_s``, the frames a second the byte
  time allows (:func:`link_frames_per_s`: 10 bits a byte, the reply's bytes included), and
  ``link_ratio``, those ``10 · divisor · bytes`` cycles over the cycles a round trip takes
  in Amaranth's simulator of the SoC behind the UART (:func:`link_frame_cycles`), at the
  ULX3S's rate and clock (3,000,000 baud, 50 MHz; ``spikeforge bench --uart-link`` measures
  115,200 and 3,000,000 baud alone).
* ``qk_utilization``: the Q-K attention unit (:func:`bench_qk`), ideal cycles of a forward and
  a backward pass (``T · tokens · channels / P`` each) over the cycles from a pass's first input
  beat to its last output beat, both passes and both attention kinds together.
"""

import json
import tempfile
from pathlib import Path

__all__ = ["bench_core", "bench_link", "bench_multicore", "bench_qk", "bench_uart_link",
           "link_cycles", "link_frame_bytes", "link_frame_cycles", "link_frames_per_s",
           "print_uart_link", "run_bench"]


def bench_core(*, neurons: int = 128, fan_in: int = 256, lanes: int = 8, timesteps: int = 4,
               rates=(0.15, 0.10, 1.0), build_root: Path | None = None) -> dict:
    """Measure one core; return the metrics and the raw counters per input rate."""
    from .gen import verilator
    from .hw.core import Core

    core = Core(neurons=neurons, fan_in=fan_in, lanes=lanes, timesteps=timesteps)
    build_root = Path(build_root or Path(tempfile.gettempdir()) / "spikeforge-bench")
    name = f"core_n{neurons}_f{fan_in}_p{lanes}_t{timesteps}"
    out = build_root / name / "bench.json"
    spec = {"lanes": lanes, "neurons": neurons, "fan_in": fan_in, "timesteps": timesteps,
            "cases": [{"rate": r} for r in rates]}
    verilator.run(core, name=name, build_dir=build_root / name, test_module="spikeforge.tb.bench",
                  testcases=["core_bench"],
                  extra_env={"BENCH_SPEC": json.dumps(spec), "BENCH_OUT": str(out)})
    cases = json.loads(out.read_text())
    by_rate = {c["rate"]: c for c in cases}
    per_rate = {}
    for rate, c in by_rate.items():
        k, w = c["counters"], c["work"]
        per_rate[str(rate)] = {
            "fp_cycles": k["fp_busy"], "bp_cycles": k["bp_busy"], "wg_cycles": k["wg_busy"],
            "update_cycles": c["update_cycles"],
            "fp_ideal": (w["fp_additions"] + w["lif_updates"]) / lanes,
            "bp_ideal": (w["bp_macs"] + w["lif_updates"]) / lanes,
            "wg_ideal": w["wg_additions"] / lanes,
            "input_spikes": w["fp_additions"] // neurons,
            "output_spikes": c["output_events"],
            "sim_cycles": k["cycles"], "wall_seconds": c["wall_seconds"],
        }
        assert c["output_events"] == c["expected_output_events"]
    main = per_rate[str(rates[0])]
    fpwg = {r: v["fp_cycles"] + v["wg_cycles"] for r, v in per_rate.items()}
    cycles = sum(v["sim_cycles"] for v in per_rate.values())
    wall = sum(v["wall_seconds"] for v in per_rate.values())

    def util(ideal, busy):
        return ideal / busy if busy else 0.0

    return {
        "core": {"neurons": neurons, "fan_in": fan_in, "lanes": lanes, "timesteps": timesteps,
                 "input_rate": rates[0]},
        "fp_utilization": util(main["fp_ideal"], main["fp_cycles"]),
        "bp_utilization": util(main["bp_ideal"], main["bp_cycles"]),
        "wg_utilization": util(main["wg_ideal"], main["wg_cycles"]),
        "sparsity_payoff": fpwg[str(rates[1])] / fpwg[str(rates[2])],
        "sim_cycles_per_second": cycles / wall,
        "per_rate": per_rate,
    }


def bench_qk(*, tokens: int = 64, channels: int = 256, lanes: int = 8, timesteps: int = 4,
             rate: float = 0.15, build_root: Path | None = None) -> dict:
    """Measure a Q-K attention unit on a sample of each attention kind at spike rate ``rate``
    (the results are checked against the golden model); return the utilizations and cycles."""
    from .gen import verilator
    from .golden.qk import ATTENTIONS
    from .hw.qk import QKAttention

    unit = QKAttention(lanes=lanes, tokens=tokens, channels=channels, timesteps=timesteps)
    build_root = Path(build_root or Path(tempfile.gettempdir()) / "spikeforge-bench").resolve()
    name = f"qk_n{tokens}_d{channels}_p{lanes}_t{timesteps}"
    out = build_root / name / "bench.json"
    spec = {"lanes": lanes, "cases": [{"tokens": tokens, "channels": channels,
                                       "timesteps": timesteps, "rate": rate, "kind": kind}
                                      for kind in ATTENTIONS]}
    verilator.run(unit, name=name, build_dir=build_root / name, test_module="spikeforge.tb.qk",
                  testcases=["qk_bench"],
                  extra_env={"BENCH_SPEC": json.dumps(spec), "BENCH_OUT": str(out)})
    per_kind = {}
    for c in json.loads(out.read_text()):
        ideal = c["ideal_cycles"]
        per_kind[c["kind"]] = {
            "fp_cycles": c["fp_cycles"], "bp_cycles": c["bp_cycles"], "ideal_cycles": ideal,
            "fp_utilization": ideal / c["fp_cycles"], "bp_utilization": ideal / c["bp_cycles"],
            "utilization": 2 * ideal / (c["fp_cycles"] + c["bp_cycles"]),
        }
    ideal = sum(2 * k["ideal_cycles"] for k in per_kind.values())
    cycles = sum(k["fp_cycles"] + k["bp_cycles"] for k in per_kind.values())
    return {
        "unit": {"tokens": tokens, "channels": channels, "lanes": lanes,
                 "timesteps": timesteps, "rate": rate},
        "qk_utilization": ideal / cycles,
        "per_kind": per_kind,
    }


def bench_multicore(*, cores=(1, 4, 20), hidden: int = 320, inputs: int = 64,
                    outputs: int = 10, lanes: int = 2, timesteps: int = 4, batch: int = 4,
                    seed: int = 0, gain: float = 8.0) -> dict:
    """Train a step of ``[inputs, hidden, outputs]`` on accelerators whose cores hold
    ``hidden / k`` neurons for each ``k`` in ``cores``; return the cycles and the speedups.
    Cycles are the device's active cycles (a core working; see ``SocReg.ACTIVE_CYCLES``), which
    do not depend on how fast the host answers; the ``link_`` cycles are all the device's
    cycles, the host link's transfers and the waits for the host's loss included. ``gain``
    scales the initial weights so that both layers fire (about 20 % and 14 % at the defaults)
    and the comparison of the runs means something."""
    import torch

    from spikeforge.gen.config import AcceleratorConfig
    from spikeforge.gen.vboard import VirtualBoard

    from .device import DeviceBackend
    from .driver import Board
    from .golden import fp16
    from .golden.arith import FP16
    from .golden.network import SpikingMLP

    g = torch.Generator().manual_seed(seed)
    x = (torch.rand(timesteps, batch, inputs, generator=g) < 0.3).double()
    y = torch.randint(0, outputs, (batch,), generator=g)
    runs, reference = {}, None
    for k in cores:
        if hidden % k or (hidden // k) % lanes:
            raise ValueError(f"{hidden} hidden neurons do not split into {k} cores of a "
                             f"multiple of {lanes} lanes")
        config = AcceleratorConfig(cores=k + 1, neurons=hidden // k, fan_in=max(hidden, inputs),
                                   lanes=lanes, timesteps=timesteps)
        net = SpikingMLP([inputs, hidden, outputs], seed=seed + 1, gain=gain).to(FP16())
        before = {name: fp16.bits(w) for name, w in net.weights.items()}
        with VirtualBoard(config) as vboard, Board.connect(vboard.url) as board:
            device = DeviceBackend(board, net, timesteps)
            start, active = device.cycles(), device.active_cycles()
            device.forward(x)
            fp, fp_active = device.cycles() - start, device.active_cycles() - active
            out, _ = device.train_step(x, y, 0.5)
            step = device.cycles() - start - fp
            step_active = device.active_cycles() - active - fp_active
            weights = {name: fp16.bits(w) for name, w in device.read_weights().items()}
        if not out.any() or any(torch.equal(w, before[n]) for n, w in weights.items()):
            raise AssertionError("the output layer did not fire or a layer did not train: "
                                 "the comparison of the runs would prove nothing")
        result = (fp16.bits(out), weights)
        if reference is None:
            reference = result
        elif not (torch.equal(result[0], reference[0])
                  and all(torch.equal(w, reference[1][n]) for n, w in weights.items())):
            raise AssertionError(f"{k} cores did not compute what {cores[0]} did")
        runs[str(k)] = {"cores": k + 1, "neurons_per_core": hidden // k,
                        "forward_cycles_per_sample": fp_active / batch,
                        "train_cycles_per_sample": step_active / batch,
                        "forward_link_cycles_per_sample": fp / batch,
                        "train_link_cycles_per_sample": step / batch}

    def speedup(key):
        return {k: runs[str(cores[0])][key] / r[key] for k, r in runs.items()}

    return {
        "network": [inputs, hidden, outputs], "lanes": lanes, "timesteps": timesteps,
        "batch": batch, "input_rate": float(x.mean()), "output_rate": float(out.mean()),
        "runs": runs,
        "multicore_speedup": speedup("train_cycles_per_sample"),
        "forward_speedup": speedup("forward_cycles_per_sample"),
        "multicore_speedup_with_link": speedup("train_link_cycles_per_sample"),
    }


def bench_link(config=None, seconds: float = 2.0) -> dict:
    """The host link of a virtual board: weights written and read a second, input spike events
    a second through a core's FP engine (every input firing), round trips a second, and the
    Verilated SoC's cycles a second."""
    import time

    from spikeforge.gen.config import AcceleratorConfig
    from spikeforge.gen.vboard import VirtualBoard

    from .driver import Board, link_throughput
    from .protocol import EVENT_LAST, event_word
    from .regmap import Command, Reg

    config = config or AcceleratorConfig()
    with VirtualBoard(config) as vboard, Board.connect(vboard.url) as board:
        result = link_throughput(board, seconds=seconds / 2)
        T, F = config.timesteps, config.fan_in
        for reg, value in ((Reg.INPUTS, F), (Reg.TIMESTEPS, T), (Reg.NEURONS, config.neurons)):
            board.set_reg(0, reg, value)
        board.set_link(0, 0)
        events = [w for _ in range(T) for w in
                  [event_word(i) for i in range(F)] + [event_word(0, spike=False, last=True)]]
        sent, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 2 or not sent:
            board.core_command(0, Command.BEGIN)
            board.spikes_in(0, events)
            closed = 0
            while closed < T:
                closed += sum(1 for w in board.spikes_out(0) if w & EVENT_LAST)
            sent += T * F
        result["spike_events_per_second"] = sent / (time.perf_counter() - start)
        stats = vboard.stats()
    result["vboard_cycles_per_second"] = stats["cycles"] / max(stats["clock_seconds"], 1e-9)
    result["config"] = json.loads(config.to_json())
    return result


def link_frame_bytes(opcode, words: int) -> tuple[int, int]:
    """The bytes of the command and of the reply of a ``READ`` or ``WRITE`` of ``words``.

    >>> from spikeforge.protocol import Opcode
    >>> link_frame_bytes(Opcode.WRITE, 64), link_frame_bytes(Opcode.READ, 64)
    ((140, 7), (14, 135))
    """
    from .protocol import Opcode, command_size, reply_size

    if opcode == Opcode.WRITE:
        return command_size(words), reply_size(0)
    if opcode == Opcode.READ:
        return command_size(1), reply_size(words)
    raise ValueError(f"link frames are READ or WRITE, not {opcode!r}")


def link_frames_per_s(baud: int, opcode, words: int) -> float:
    """Round trips a second of ``opcode`` with ``words`` at ``baud`` if the line never idles:
    10 bits a byte (start, 8 data, stop), the command's and the reply's bytes.

    >>> from spikeforge.protocol import Opcode
    >>> round(link_frames_per_s(3_000_000, Opcode.WRITE, 64), 1)
    2040.8
    """
    return baud / (10 * sum(link_frame_bytes(opcode, words)))


def link_frame_cycles(divisor: int, opcode, words: int, *, config=None) -> dict:
    """Simulate a round trip of ``opcode`` (``READ`` or ``WRITE`` of ``words`` weights) through
    a host's UART, the board's UART at ``divisor`` and the SoC, in Amaranth's simulator.

    Returns ``cycles``, from the falling edge of the command's first start bit to the end of
    the reply's last stop bit, ``model_cycles`` (``10 · divisor · bytes``), the SoC's
    ``turnaround`` (cycles from taking the command's last byte to handing over the reply's
    first), and the ``command_bytes`` and ``reply_bytes``. The host sends its bytes back to back
    from a ROM; a ``READ`` reads the weights a ``WRITE`` of ``1 .. words`` left, which is not
    timed.
    """
    from amaranth.hdl import Module, Signal
    from amaranth.lib import memory

    from spikeforge.gen.config import AcceleratorConfig
    from spikeforge.hw.uart import UARTRx, UARTTx

    from .protocol import Opcode, ReplyDecoder, Status, encode_command, reply_size
    from .regmap import Region, address
    from .tb.amaranth import simulate
    from .tb.serial import UARTSoC

    config = config or AcceleratorConfig(cores=1, neurons=8, fan_in=8, lanes=1, timesteps=4)
    if words > config.neurons * config.fan_in:
        raise ValueError(f"{words} words do not fit the {config.neurons} x {config.fan_in} "
                         f"weights of a core")
    base = address(Region.WEIGHT, 0)
    data = list(range(1, words + 1))
    frames = [encode_command(1, opcode, 0, base, data if opcode == Opcode.WRITE else [words])]
    if opcode == Opcode.READ:
        frames.insert(0, encode_command(0, Opcode.WRITE, 0, base, data))
    command, reply = link_frame_bytes(opcode, words)
    assert len(frames[-1]) == command
    rom = b"".join(frames)

    m = Module()
    m.submodules.board = board = UARTSoC(config, divisor)
    rx, tx = board.uart_rx, board.uart_tx
    m.submodules.host_tx = host_tx = UARTTx(divisor)
    m.submodules.host_rx = host_rx = UARTRx(divisor)
    m.submodules.rom = mem = memory.Memory(shape=8, depth=len(rom), init=list(rom))
    read = mem.read_port(domain="comb")
    index, limit, cycle = Signal(range(len(rom) + 1)), Signal(range(len(rom) + 1)), Signal(32)
    m.d.sync += cycle.eq(cycle + 1)
    m.d.comb += [read.addr.eq(index), host_tx.i.payload.eq(read.data),
                 host_tx.i.valid.eq(index < limit), host_rx.o.ready.eq(1),
                 board.rx.eq(host_tx.tx), host_rx.rx.eq(board.tx)]
    with m.If(host_tx.i.valid & host_tx.i.ready):
        m.d.sync += index.eq(index + 1)
    taken, handed = Signal(), Signal()
    m.d.sync += [taken.eq(rx.o.valid & rx.o.ready), handed.eq(tx.i.valid & tx.i.ready)]
    edges = {"host": [], "taken": [], "handed": []}
    got = bytearray()

    async def wires(ctx):
        """The cycles of the host's first start bit, the bytes the SoC took and the start bits
        of its reply (``handed`` is a cycle late, as a start bit is after its transfer)."""
        last = (1, 0, 0)
        async for now in ctx.changed(host_tx.tx, taken, handed):
            for name, level, before, falls in zip(edges, now, last, (1, 0, 0), strict=True):
                if level != before and level != falls:
                    edges[name].append(ctx.get(cycle))
            last = tuple(now)

    async def bench(ctx):
        end = 0
        for k, f in enumerate(frames):
            for edge in edges.values():
                edge.clear()
            got.clear()
            end += len(f)
            ctx.set(limit, end)
            expected = reply if k == len(frames) - 1 else reply_size(0)
            async for valid, byte in ctx.changed(host_rx.o.valid, host_rx.o.payload):
                if valid:
                    got.append(byte)
                    if len(got) == expected:
                        break
            await ctx.tick().repeat(10 * divisor)

    simulate(m, bench, background=[wires])
    (answer,) = ReplyDecoder().feed(bytes(got))
    if answer.status != Status.OK or (opcode == Opcode.READ and list(answer.payload) != data):
        raise AssertionError(f"the simulated SoC answered {answer}")
    cycles = edges["handed"][-1] + 10 * divisor - edges["host"][0]
    assert len(edges["taken"]) == command and len(edges["handed"]) == reply
    return {"cycles": cycles, "model_cycles": 10 * divisor * (command + reply),
            "turnaround": edges["handed"][0] - edges["taken"][-1],
            "reply_gaps": edges["handed"][-1] - edges["handed"][0] - 10 * divisor * (reply - 1),
            "command_bytes": command, "reply_bytes": reply}


def link_cycles(divisor: int, command: int, reply: int, turnaround: int) -> int:
    """The cycles of a round trip through the UARTs at ``divisor`` whose SoC takes
    ``turnaround`` cycles from the command's last byte to the reply's first: the command's
    bytes but the last, the receiver's latency to its stop bit's middle, the turnaround, the
    transmitter's latency and the reply's bytes. :func:`link_frame_cycles` simulates it."""
    from spikeforge.hw.uart import TX_LATENCY, rx_latency

    return (10 * divisor * (command - 1) + rx_latency(divisor) + turnaround + TX_LATENCY
            + 10 * divisor * reply)


def bench_uart_link(*, mhz: float = 50.0, bauds=(115_200, 3_000_000), words: int = 64,
                    full: bool = False) -> dict:
    """For each of ``bauds`` at ``mhz``, and a ``WRITE`` and a ``READ`` of ``words``: the
    modelled frames a second (:func:`link_frames_per_s`), the cycles of a round trip, their
    ratio ``link_ratio`` (modelled over real cycles) and the frames a second those cycles make
    at ``mhz``.

    Each frame is simulated (:func:`link_frame_cycles`) at the smallest of the rates' divisors;
    the other rates' cycles are :func:`link_cycles` of the SoC's turnaround simulated there,
    which does not depend on the divisor (checked here at the simulated divisor, and by the
    tests at others). With ``full``, every rate is simulated at its own divisor (at 115,200
    baud and 50 MHz some 640,000 cycles a frame: many minutes).
    """
    from spikeforge.hw.uart import baud_divisor

    from .protocol import Opcode

    divisors = {baud: baud_divisor(mhz, baud) for baud in bauds}
    smallest = min(divisors.values())
    trips = {}
    for opcode in (Opcode.WRITE, Opcode.READ):
        trip = link_frame_cycles(smallest, opcode, words)
        if trip["reply_gaps"] or trip["cycles"] != link_cycles(
                smallest, trip["command_bytes"], trip["reply_bytes"], trip["turnaround"]):
            raise AssertionError(f"a {opcode.name} round trip is not the UARTs' and the "
                                 f"turnaround's cycles: {trip}")
        trips[opcode] = trip
    result = {"mhz": mhz, "words": words, "simulated_divisor": smallest, "rates": {}}
    for baud, divisor in divisors.items():
        frames = {}
        for opcode, trip in trips.items():
            if full and divisor != smallest:
                trip = link_frame_cycles(divisor, opcode, words)
                simulated = True
            else:
                simulated = divisor == smallest
            cycles = link_cycles(divisor, trip["command_bytes"], trip["reply_bytes"],
                                 trip["turnaround"]) if not simulated else trip["cycles"]
            model = 10 * divisor * (trip["command_bytes"] + trip["reply_bytes"])
            frames[opcode.name] = {
                "command_bytes": trip["command_bytes"], "reply_bytes": trip["reply_bytes"],
                "turnaround": trip["turnaround"], "cycles": cycles, "model_cycles": model,
                "simulated": simulated,
                "link_frames_per_s": link_frames_per_s(baud, opcode, words),
                "measured_frames_per_s": mhz * 1e6 / cycles,
                "link_ratio": model / cycles,
            }
        result["rates"][str(baud)] = {"baud": baud, "divisor": divisor, "frames": frames}
    return result


def print_uart_link(result: dict, console) -> None:
    from rich import box
    from rich.table import Table

    table = Table(title=f"host link over the UART: {result['words']}-word frames at "
                        f"{result['mhz']:g} MHz (bytes: command + reply; model/s: the byte "
                        f"time's frames a second; ratio: its cycles over the real ones)",
                  box=box.SIMPLE_HEAD)
    for col in ("baud", "divisor", "frame", "bytes", "turnaround", "cycles", "model/s",
                "frames/s", "ratio"):
        table.add_column(col, justify="right")
    for rate in result["rates"].values():
        for name, f in rate["frames"].items():
            table.add_row(f"{rate['baud']:,}", str(rate["divisor"]), name,
                          f"{f['command_bytes']}+{f['reply_bytes']}", str(f["turnaround"]),
                          f"{f['cycles']:,}" + ("" if f["simulated"] else "*"),
                          f"{f['link_frames_per_s']:,.1f}", f"{f['measured_frames_per_s']:,.1f}",
                          f"{f['link_ratio']:.4f}")
    console.print(table)
    if not all(f["simulated"] for r in result["rates"].values() for f in r["frames"].values()):
        console.print(f"* the UARTs' cycles at that divisor and the turnaround simulated at "
                      f"{result['simulated_divisor']} (spikeforge bench --uart-link --full "
                      f"simulates every rate)")


def run_bench(json_path=None, console=None) -> dict:
    """Run every measurement, print a table and write the JSON."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    with console.status("building and simulating a 128 x 256 core with Verilator"):
        result = bench_core()
    table = Table(title="spikeforge core (128 neurons, fan-in 256, 8 lanes, T = 4, 15 % rate)")
    for col in ("engine", "busy cycles", "ideal cycles", "utilization"):
        table.add_column(col, justify="right" if col != "engine" else "left")
    main = result["per_rate"][str(result["core"]["input_rate"])]
    for engine in ("fp", "bp", "wg"):
        table.add_row(engine.upper(), str(main[f"{engine}_cycles"]),
                      f"{main[f'{engine}_ideal']:.0f}", f"{result[f'{engine}_utilization']:.3f}")
    console.print(table)
    console.print(f"sparsity payoff (FP+WG cycles at 10 % / at 100 %): "
                  f"{result['sparsity_payoff']:.3f}")
    console.print(f"Verilated core: {result['sim_cycles_per_second']:,.0f} cycles/s")
    with console.status("building and simulating a 64 x 256 Q-K attention unit with Verilator"):
        qk = bench_qk()
    result["qk"] = qk
    result["qk_utilization"] = qk["qk_utilization"]
    table = Table(title="Q-K attention unit (64 tokens x 256 channels, 8 lanes, T = 4, "
                        "15 % rate)")
    for col in ("attention", "pass", "cycles", "ideal cycles", "utilization"):
        table.add_column(col, justify="right" if col not in ("attention", "pass") else "left")
    for kind, k in qk["per_kind"].items():
        for phase in ("fp", "bp"):
            table.add_row(kind, phase.upper(), str(k[f"{phase}_cycles"]),
                          f"{k['ideal_cycles']:.0f}", f"{k[f'{phase}_utilization']:.3f}")
    console.print(table)
    console.print(f"Q-K attention utilization (forward and backward): "
                  f"{qk['qk_utilization']:.3f}")
    with console.status("building 2-, 5- and 21-core accelerators and training a step on each"):
        multi = bench_multicore()
    result["multicore"] = multi
    result["multicore_speedup"] = multi["multicore_speedup"]
    table = Table(title=f"multi-core: network {multi['network']}, the hidden layer split over "
                        f"k cores, {multi['lanes']} lanes, T = {multi['timesteps']}")
    for col in ("k", "neurons a core", "forward cycles/sample", "train cycles/sample",
                "speedup (train)", "speedup (forward)"):
        table.add_column(col, justify="right")
    for k, r in multi["runs"].items():
        table.add_row(k, str(r["neurons_per_core"]), f"{r['forward_cycles_per_sample']:.0f}",
                      f"{r['train_cycles_per_sample']:.0f}",
                      f"{multi['multicore_speedup'][k]:.2f}", f"{multi['forward_speedup'][k]:.2f}")
    console.print(table)
    with console.status("building and measuring the virtual board's host link"):
        link = bench_link()
    result["link"] = link
    console.print(f"host link of the virtual board: {link['weights_written_per_second']:,.0f} "
                  f"weights/s written, {link['weights_read_per_second']:,.0f} read, "
                  f"{link['spike_events_per_second']:,.0f} input spike events/s, "
                  f"{link['round_trips_per_second']:,.0f} round trips/s; Verilated SoC "
                  f"{link['vboard_cycles_per_second']:,.0f} cycles/s")
    from spikeforge.boards.targets import target

    board = target("ulx3s-85f")
    with console.status(f"simulating round trips over the UART at {board.baud:,} baud"):
        uart = bench_uart_link(mhz=board.target_mhz, bauds=(board.baud,))
    result["uart_link"] = uart
    print_uart_link(uart, console)
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(result, indent=2))
    return result
