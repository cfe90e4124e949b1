# SPDX-License-Identifier: Apache-2.0
import random

import pytest
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spikeforge import regmap
from spikeforge.hw import core_engines as engines
from spikeforge.hw.core_control import BusDecoder, CoreRegisters, Counters, settings_init
from spikeforge.hw.core_datapath import ErrorSums
from spikeforge.hw.core_sequencer import StepCounter
from spikeforge.hw.fp16 import FP16Adder, FP16Multiplier
from spikeforge.regmap import Counter, ErrorFlag, Reg, Region

LA, LM = FP16Adder.LATENCY, FP16Multiplier.LATENCY


def simulate(dut, bench):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()


def lane_of(word, k):
    return (word >> (16 * k)) & 0xFFFF


# ---- CoreRegisters ----

REG_SIZES = [dict(neurons=12, fan_in=8, timesteps=6, lanes=4),
             dict(neurons=5, fan_in=7, timesteps=3, lanes=1)]

FIELDS = {Reg.NEURONS: "neurons", Reg.INPUTS: "inputs", Reg.TIMESTEPS: "timesteps",
          Reg.V_TH: "v_th", Reg.V_RESET: "v_reset", Reg.INV_TAU: "inv_tau", Reg.DECAY: "decay",
          Reg.LR: "lr", Reg.BP_INPUT_ERROR: "bp_input_error", Reg.PARTIAL_IN: "partial_in",
          Reg.TOKENS: "tokens", Reg.IN_TOKENS: "in_tokens", Reg.IN_STRIDE: "in_stride",
          Reg.SHORTCUT: "shortcut"}


def register_ranges(*, neurons, fan_in, timesteps, lanes):
    fp16 = (0, 0xFFFF)
    return {Reg.NEURONS: (1, neurons), Reg.INPUTS: (1, fan_in), Reg.TIMESTEPS: (1, timesteps),
            Reg.V_TH: fp16, Reg.V_RESET: fp16, Reg.INV_TAU: fp16, Reg.DECAY: fp16, Reg.LR: fp16,
            Reg.BP_INPUT_ERROR: (0, 1), Reg.PARTIAL_IN: (0, 1), Reg.TOKENS: (1, timesteps),
            Reg.IN_TOKENS: (1, fan_in), Reg.IN_STRIDE: (1, fan_in),
            Reg.SHORTCUT: (0, max(regmap.Shortcut))}


def register_state(ctx, dut):
    state = {name: int(ctx.get(getattr(dut.settings, name))) for name, _ in dut.settings.shape()}
    state.update(fp_done=ctx.get(dut.fp_done), bp_done=ctx.get(dut.bp_done))
    return state


async def register_access(ctx, dut, offset, value=0, *, we=1, probe=0, error_set=0):
    ctx.set(dut.access, 1)
    ctx.set(dut.we, we)
    ctx.set(dut.probe, probe)
    ctx.set(dut.offset, offset)
    ctx.set(dut.wdata, value)
    ctx.set(dut.error_set, error_set)
    result = (ctx.get(dut.write_ok), ctx.get(dut.read_ok), ctx.get(dut.read_data),
              ctx.get(dut.command), ctx.get(dut.clear_counters))
    await ctx.tick()
    ctx.set(dut.access, 0)
    ctx.set(dut.we, 0)
    ctx.set(dut.probe, 0)
    ctx.set(dut.error_set, 0)
    return result


async def pulse(ctx, *signals, value=1):
    for signal in signals:
        ctx.set(signal, value)
    await ctx.tick()
    for signal in signals:
        ctx.set(signal, 0)


@pytest.mark.parametrize("sizes", REG_SIZES, ids=["lanes4", "lanes1"])
def test_registers_range_checks(sizes):
    rng = random.Random(1)
    dut = CoreRegisters(**sizes)
    ranges = register_ranges(**sizes)
    lanes = sizes["lanes"]

    async def bench(ctx):
        state = register_state(ctx, dut)
        assert state == {**{name: 0 for name in state}, **settings_init(**sizes)}
        for idle in (1, 0):
            ctx.set(dut.idle, idle)
            for reg, (low, high) in ranges.items():
                values = {low, high, rng.randint(low, high), 0xFFFF}
                values |= {low - 1} if low > 0 else set()
                values |= {high + 1} if high < 0xFFFF else set()
                if reg in (Reg.NEURONS, Reg.INPUTS):
                    values |= set(range(low, high + 1))
                for value in sorted(values):
                    for probe in (1, 0):
                        await pulse(ctx, dut.fp_done_set, dut.bp_done_set)
                        before = register_state(ctx, dut)
                        ok, _, _, command, clear = await register_access(ctx, dut, reg, value,
                                                                         probe=probe)
                        taken = bool(idle) and low <= value <= high
                        assert ok == taken, (reg, value, idle)
                        assert command == regmap.Command.NONE and not clear
                        expected = dict(before)
                        if taken and not probe:
                            expected[FIELDS[reg]] = value
                            if reg == Reg.NEURONS:
                                expected["chunks"] = -(-value // lanes)
                            if reg == Reg.INPUTS:
                                expected["in_chunks"] = -(-value // lanes)
                            if reg in (Reg.TIMESTEPS, Reg.TOKENS):
                                expected.update(fp_done=0, bp_done=0)
                        assert register_state(ctx, dut) == expected, (reg, value, idle, probe)
                        _, read_ok, data, _, _ = await register_access(ctx, dut, reg, we=0)
                        assert read_ok and data == expected[FIELDS[reg]]
            for offset in (Reg.STATUS, 17, 31, 32 + Reg.NEURONS, 1 << 27 | Reg.V_TH):
                before = register_state(ctx, dut)
                ok, _, _, _, _ = await register_access(ctx, dut, offset, 1)
                assert not ok and register_state(ctx, dut) == before
                _, read_ok, _, _, _ = await register_access(ctx, dut, offset, we=0)
                assert read_ok == (offset == Reg.STATUS)
            for value in range(8):
                for probe in (1, 0):
                    before = register_state(ctx, dut)
                    ok, _, _, command, clear = await register_access(ctx, dut, Reg.COMMAND, value,
                                                                     probe=probe)
                    taken = bool(idle) and value < len(regmap.Command)
                    assert ok == taken
                    assert command == (value if taken and not probe else regmap.Command.NONE)
                    assert clear == (command == regmap.Command.CLEAR_COUNTERS)
                    assert register_state(ctx, dut) == before
            _, read_ok, _, _, _ = await register_access(ctx, dut, Reg.COMMAND, we=0)
            assert read_ok

    simulate(dut, bench)


def test_registers_status_and_errors():
    dut = CoreRegisters(**REG_SIZES[0])

    async def read(ctx, offset):
        _, read_ok, data, _, _ = await register_access(ctx, dut, offset, we=0)
        assert read_ok
        return data

    async def bench(ctx):
        ctx.set(dut.idle, 1)
        assert await read(ctx, Reg.STATUS) == 0
        await pulse(ctx, dut.fp_done_set)
        assert await read(ctx, Reg.STATUS) == 0b010
        await pulse(ctx, dut.bp_done_set)
        assert await read(ctx, Reg.STATUS) == 0b110
        ctx.set(dut.idle, 0)
        assert await read(ctx, Reg.STATUS) == 0b111
        await pulse(ctx, dut.done_clear)
        assert await read(ctx, Reg.STATUS) == 0b001

        assert await read(ctx, Reg.ERRORS) == 0
        await pulse(ctx, dut.error_set, value=ErrorFlag.EVENT_ORDER)
        await ctx.tick().repeat(3)
        assert await read(ctx, Reg.ERRORS) == ErrorFlag.EVENT_ORDER
        await pulse(ctx, dut.error_set, value=ErrorFlag.EVENT_RANGE | ErrorFlag.BUS)
        assert await read(ctx, Reg.ERRORS) == 0b111
        ok, _, _, _, _ = await register_access(ctx, dut, Reg.ERRORS, ErrorFlag.BUS, probe=1)
        assert ok and await read(ctx, Reg.ERRORS) == 0b111
        ok, _, _, _, _ = await register_access(ctx, dut, Reg.ERRORS, ErrorFlag.EVENT_ORDER)
        assert ok and await read(ctx, Reg.ERRORS) == ErrorFlag.EVENT_RANGE | ErrorFlag.BUS
        await register_access(ctx, dut, Reg.ERRORS, ErrorFlag.BUS | ErrorFlag.EVENT_ORDER,
                              error_set=ErrorFlag.EVENT_ORDER)    # raised as it is cleared: stays
        assert await read(ctx, Reg.ERRORS) == ErrorFlag.EVENT_RANGE | ErrorFlag.EVENT_ORDER
        await register_access(ctx, dut, Reg.ERRORS, 0xFFFF)
        assert await read(ctx, Reg.ERRORS) == 0

    simulate(dut, bench)


def test_registers_error_raised_while_others_are_cleared_sticks():
    dut = CoreRegisters(**REG_SIZES[0])

    async def bench(ctx):
        await pulse(ctx, dut.error_set, value=ErrorFlag.EVENT_RANGE)
        await register_access(ctx, dut, Reg.ERRORS, ErrorFlag.EVENT_RANGE,
                              error_set=ErrorFlag.EVENT_ORDER)
        _, _, data, _, _ = await register_access(ctx, dut, Reg.ERRORS, we=0)
        assert data == ErrorFlag.EVENT_ORDER

    simulate(dut, bench)


# ---- Counters ----

def test_counters_count_clear_and_read():
    rng = random.Random(2)
    dut = Counters()
    K = len(Counter)

    async def bench(ctx):
        model, cleared, shadow = [0] * K, False, None
        for _ in range(500):
            bump, clear = rng.getrandbits(K), rng.random() < 0.04
            read, high = rng.random() < 0.8, shadow is not None and rng.random() < 0.5
            index = rng.randrange(K)
            for name, value in (("bump", bump), ("clear", clear), ("read", read),
                                ("index", index), ("high", high)):
                ctx.set(getattr(dut, name), value)
            data = ctx.get(dut.read_data)
            if high:
                assert data == shadow >> 16
            else:
                assert data == model[index] & 0xFFFF
                if read:
                    shadow = model[index]
            await ctx.tick()
            model = [0] * K if cleared else [v + (bump >> c & 1) for c, v in enumerate(model)]
            cleared = clear
        assert any(model)

    simulate(dut, bench)


def test_counters_high_half_is_of_the_low_half_moment():
    dut = Counters()

    async def read(ctx, counter, high):
        ctx.set(dut.read, 1)
        ctx.set(dut.index, counter)
        ctx.set(dut.high, high)
        data = ctx.get(dut.read_data)
        await ctx.tick()
        ctx.set(dut.read, 0)
        return data

    async def bench(ctx):
        ctx.set(dut.bump, (1 << len(Counter)) - 1)
        await ctx.tick().repeat(0xFFFC)
        assert await read(ctx, Counter.W_READS, 0) == 0xFFFC
        await ctx.tick().repeat(6)
        assert await read(ctx, Counter.W_READS, 1) == 0x0000
        assert await read(ctx, Counter.G_READS, 0) == 0x0004
        assert await read(ctx, Counter.G_READS, 1) == 0x0001
        await pulse(ctx, dut.clear)
        ctx.set(dut.bump, 0)
        await ctx.tick()
        assert await read(ctx, Counter.G_READS, 0) == 0
        assert await read(ctx, Counter.G_READS, 1) == 0

    simulate(dut, bench)


# ---- BusDecoder ----

BUS_SIZES = [dict(neurons=12, fan_in=12, timesteps=3, lanes=4),
             dict(neurons=6, fan_in=5, timesteps=2, lanes=1)]


@pytest.mark.parametrize("sizes", BUS_SIZES, ids=["lanes4", "lanes1"])
def test_bus_decoder(sizes):
    N, F, T, P = sizes["neurons"], sizes["fan_in"], sizes["timesteps"], sizes["lanes"]
    CH, nb, ib = N // P, regmap.index_bits(N), regmap.index_bits(F)
    rng = random.Random(3)
    dut = BusDecoder(**sizes)
    regions = [Region.REG, Region.WEIGHT, Region.GRAD, Region.CHARGE, Region.SPIKE,
               Region.COUNTER, 6, 15]

    def new_access():
        region, we = rng.choice(regions), rng.random() < 0.4
        probe = we and rng.random() < 0.3
        acc = dict(region=region, we=we, probe=probe, offset=rng.getrandbits(20))
        if region == Region.REG:
            acc["offset"] = rng.randrange(40)
        elif region in (Region.WEIGHT, Region.GRAD):
            n, i = rng.randrange(1 << nb), rng.randrange(1 << ib)
            high = 1 << (nb + ib + rng.randrange(4)) if rng.random() < 0.1 else 0
            acc.update(n=n, i=i, offset=regmap.weight_offset(n, i, fan_in=F) | high,
                       ok=n < N and i < F and not high)
        elif region in (Region.CHARGE, Region.SPIKE):
            t, n = rng.randrange(T + 2), rng.randrange(1 << nb)
            acc.update(t=t, n=n, offset=regmap.state_offset(t, n, neurons=N), ok=n < N and t < T)
        elif region == Region.COUNTER:
            acc["offset"] = rng.randrange(2 * len(Counter) + 3)
        return acc

    async def bench(ctx):
        answers, mem_reads = {}, {}
        for cycle in range(700):
            inputs = dict(idle=rng.random() < 0.8, reg_write_ok=rng.random() < 0.7,
                          reg_read_ok=rng.random() < 0.7, reg_read_data=rng.getrandbits(16),
                          counter_data=rng.getrandbits(16), w_data=rng.getrandbits(16 * P),
                          g_data=rng.getrandbits(16 * P), h_data=rng.getrandbits(16 * P),
                          s_data=rng.getrandbits(P))
            for name, value in inputs.items():
                ctx.set(getattr(dut, name), value)
            if cycle - 1 in mem_reads:
                region, k = mem_reads.pop(cycle - 1)
                source = {Region.WEIGHT: "w_data", Region.GRAD: "g_data",
                          Region.CHARGE: "h_data", Region.SPIKE: "s_data"}[region]
                word = inputs[source]
                answers[cycle + 1] = (False, word >> k & 1 if region == Region.SPIKE
                                      else lane_of(word, k))
            expected = answers.pop(cycle, None)
            assert ctx.get(dut.bus.ack) == (expected is not None)
            if expected is not None:
                err, rdata = expected
                assert ctx.get(dut.bus.err) == err
                if rdata is not None:
                    assert ctx.get(dut.bus.rdata) == rdata

            acc = new_access() if rng.random() < 0.8 else None
            ctx.set(dut.bus.en, acc is not None)
            region = acc["region"] if acc else None
            if acc:
                ctx.set(dut.bus.we, acc["we"])
                ctx.set(dut.bus.probe, acc["probe"])
                ctx.set(dut.bus.addr.as_value(), regmap.address(region, acc["offset"]))
                ctx.set(dut.bus.wdata, rng.getrandbits(16))
            req = dict(reg=False, counter=False, w=False, g=False, state=False)
            err, rdata = True, None
            if region == Region.REG:
                req["reg"] = True
                ok = inputs["reg_write_ok"] if acc["we"] else inputs["reg_read_ok"]
                err, rdata = not ok, None if acc["we"] else inputs["reg_read_data"]
            elif region in (Region.WEIGHT, Region.GRAD):
                err = (not acc["ok"] or not inputs["idle"]
                       or (acc["we"] and region == Region.GRAD))
                req["w" if region == Region.WEIGHT else "g"] = not err
                if not err and not acc["we"]:
                    mem_reads[cycle] = (region, acc["n"] % P)
            elif region in (Region.CHARGE, Region.SPIKE):
                err = not acc["ok"] or not inputs["idle"] or acc["we"]
                req["state"] = not err
                if not err:
                    mem_reads[cycle] = (region, acc["n"] % P)
            elif region == Region.COUNTER:
                err = acc["offset"] >= 2 * len(Counter) or acc["we"]
                req["counter"] = not err
                rdata = None if err else inputs["counter_data"]
            if acc:
                answers[cycle + 2] = (err, None if err else rdata)
            assert ctx.get(dut.reg_access) == req["reg"]
            assert ctx.get(dut.counter_read) == req["counter"]
            if req["counter"]:
                assert ctx.get(dut.counter_index) == acc["offset"] >> 1
                assert ctx.get(dut.counter_high) == acc["offset"] & 1
            for name, port in (("w", dut.w_req), ("g", dut.g_req)):
                assert ctx.get(port.en) == req[name]
                if req[name]:
                    assert (ctx.get(port.major), ctx.get(port.minor), ctx.get(port.lane),
                            ctx.get(port.we), ctx.get(port.probe)) == \
                        (acc["i"], acc["n"] // P, acc["n"] % P, acc["we"], acc["probe"])
            assert ctx.get(dut.state_req.en) == req["state"]
            if req["state"]:
                assert ctx.get(dut.state_req.addr) == acc["t"] * CH + acc["n"] // P
            await ctx.tick()

    simulate(dut, bench)


# ---- engines.EventIssuer ----

ISSUER_CASES = {
    "hazard": dict(fan_in=12, max_chunks=3, hazard=7, chunks=3, inputs=10, in_tokens=1,
                   in_stride=12),
    "chunks": dict(fan_in=12, max_chunks=8, hazard=3, chunks=8, inputs=12, in_tokens=1,
                   in_stride=12),
    "fewer": dict(fan_in=12, max_chunks=4, hazard=4, chunks=3, inputs=12, in_tokens=1,
                  in_stride=12),
    "one": dict(fan_in=5, max_chunks=1, hazard=1, chunks=1, inputs=5, in_tokens=1,
                in_stride=5),
    "tokens": dict(fan_in=12, max_chunks=2, hazard=3, chunks=2, inputs=11, in_tokens=3,
                   in_stride=4),
}


def issuer_stimulus(rng, case):
    F, stride = case["fan_in"], case["in_stride"]
    limit = min(F, stride + 1)
    step = []
    for r in range(case["in_tokens"]):
        for x in sorted(rng.sample(range(limit), rng.randint(0, min(limit, 5)))):
            step.append([r, x, 1, 0])
            roll = rng.random()
            if roll < 0.15:
                step.append([r, rng.randint(0, x), 1, 0])
            elif roll < 0.25:
                step.append([r, rng.randrange(limit), 0, 0])
        if step and step[-1][0] == r and step[-1][2] and rng.random() < 0.6:
            step[-1][3] = 1
        else:
            step.append([r, rng.randrange(limit), 0, 1])
    return step


def issuer_model(step, case):
    """Each event's fate: ``("spike", input)``, ``("error", input, flag)`` or ``None``."""
    fates, prev = [], -1
    for r, x, spike, _ in step:
        index = r * case["in_stride"] + x
        if not spike:
            fates.append(None)
        elif index >= case["inputs"] or x >= case["in_stride"]:
            fates.append(("error", index, ErrorFlag.EVENT_RANGE))
        elif index <= prev:
            fates.append(("error", index, ErrorFlag.EVENT_ORDER))
        else:
            fates.append(("spike", index))
            prev = index
    return fates


@pytest.mark.parametrize("idle", [0.0, 0.4], ids=["busy", "idle"])
@pytest.mark.parametrize("name", list(ISSUER_CASES))
def test_event_issuer(name, idle):
    case = ISSUER_CASES[name]
    rng = random.Random(f"{name}{idle}")
    C, S = case["chunks"], max(case["chunks"], case["hazard"])
    while True:
        samples = [[issuer_stimulus(rng, case) for _ in range(rng.randint(2, 4))]
                   for _ in range(2)]
        kinds = {fate[0] for sample in samples for step in sample
                 for fate in issuer_model(step, case) if fate}
        if kinds == {"spike", "error"}:
            break
    dut = engines.EventIssuer(fan_in=case["fan_in"], chunks=case["max_chunks"],
                              hazard=case["hazard"])

    async def bench(ctx):
        for field in ("chunks", "inputs", "in_tokens", "in_stride"):
            ctx.set(getattr(dut, field), case[field])
        await ctx.tick().repeat(2)
        cycle = 2
        def offer(event):
            for field, value in zip(("index", "spike", "last"), event[1:], strict=True):
                ctx.set(getattr(dut.i.payload, field), value)

        for sample in samples:
            await pulse(ctx, dut.begin)
            cycle += 1
            events = [(s, event) for s, step in enumerate(sample) for event in step]
            pos, offered = 0, False
            for s, step in enumerate(sample):
                fates, first = issuer_model(step, case), pos
                ctx.set(dut.enable, 1)
                taken, slots, logs, closes = [], [], [], []
                for _ in range(len(step) * (S + 10) + 10):
                    if not offered and pos < len(events) and rng.random() >= idle:
                        offered = True
                        offer(events[pos][1])
                    ctx.set(dut.i.valid, offered)
                    busy, valid = ctx.get(dut.busy), ctx.get(dut.valid)
                    assert ctx.get(dut.waiting) == (not busy and not offered)
                    if busy:
                        slots.append((cycle, ctx.get(dut.row), ctx.get(dut.chunk), valid))
                    else:
                        assert not valid
                    error = ctx.get(dut.error_set)
                    if offered and ctx.get(dut.i.ready):
                        assert events[pos][0] == s
                        fate = fates[pos - first]
                        taken.append(cycle)
                        assert error == (fate[2] if fate and fate[0] == "error" else 0)
                        assert ctx.get(dut.log_en) == (fate is not None and fate[0] == "spike")
                        if ctx.get(dut.log_en):
                            logs.append((ctx.get(dut.log_data), ctx.get(dut.count)))
                        pos, offered = pos + 1, False
                    else:
                        assert not error and not ctx.get(dut.log_en)
                    close = ctx.get(dut.close)
                    if close:
                        closes.append(cycle)
                    await ctx.tick()
                    cycle += 1
                    if close:
                        break
                ctx.set(dut.enable, 0)
                assert pos - first == len(step) and len(closes) == 1
                spikes = [(when, fate[1]) for when, fate in zip(taken, fates, strict=True)
                          if fate and fate[0] == "spike"]
                assert logs == [(index, k) for k, (_, index) in enumerate(spikes)]
                assert slots == [(when + 1 + s, index, s, s < C) for when, index in spikes
                                 for s in range(S)]
                last_fate = fates[-1]
                assert closes[0] == (taken[-1] + S if last_fate and last_fate[0] == "spike"
                                     else taken[-1])
                if idle == 0:
                    for k in range(len(taken) - 1):
                        gap = S if fates[k] and fates[k][0] == "spike" else 1
                        assert taken[k + 1] == taken[k] + gap
                assert ctx.get(dut.count) == len(spikes)
                if not offered and pos < len(events):
                    offered = True
                    offer(events[pos][1])
                ctx.set(dut.i.valid, offered)
                for _ in range(3):
                    assert not ctx.get(dut.i.ready) and not ctx.get(dut.busy)
                    assert not ctx.get(dut.waiting)
                    await ctx.tick()
                await pulse(ctx, dut.step_done)
                assert ctx.get(dut.count) == 0
                cycle += 4

    simulate(dut, bench)


def test_event_log():
    rng = random.Random(4)
    F, T = 6, 4
    dut = engines.EventLog(fan_in=F, timesteps=T)
    logs = [sorted(rng.sample(range(F), rng.randint(0, F))) for _ in range(T)]

    async def bench(ctx):
        for t, log in enumerate(logs):
            ctx.set(dut.t, t)
            for k, value in enumerate(log):
                ctx.set(dut.index, k)
                ctx.set(dut.value, value)
                await pulse(ctx, dut.write)
            ctx.set(dut.index, len(log))
            await pulse(ctx, dut.close)
        for t in reversed(range(T)):
            ctx.set(dut.t, t)
            for k in range(len(logs[t])):
                ctx.set(dut.entry, k)
                await ctx.tick()
                assert ctx.get(dut.count) == len(logs[t])
                assert ctx.get(dut.input) == logs[t][k]

    simulate(dut, bench)


# ---- engines.SpikeSerializer ----

SERIALIZER_CASES = [dict(neurons=32, lanes=4, depth=5), dict(neurons=12, lanes=1, depth=6),
                    dict(neurons=16, lanes=4, depth=3)]


@pytest.mark.parametrize("case", SERIALIZER_CASES, ids=["lanes4", "lanes1", "shallow"])
def test_spike_serializer(case):
    N, P, depth = case["neurons"], case["lanes"], case["depth"]
    CH, latency = N // P, 4
    rng = random.Random(f"ser{N}{P}{depth}")
    dut = engines.SpikeSerializer(**case)

    async def bench(ctx):
        ctx.set(dut.enable, 1)
        cycle, pipe, pending, held = 0, [], 0, None
        for step in range(5):
            if step == 0:
                masks = [rng.randrange(1, 1 << P) for _ in range(CH)]
            else:
                masks = [rng.getrandbits(P) if rng.random() < 0.7 else 0 for _ in range(CH)]
            expected = [c * P + k for c, mask in enumerate(masks) for k in range(P)
                        if mask >> k & 1]
            stall_until = cycle + 30 if step == 0 else -1
            chunk, got, in_stall = 0, [], 0
            for _ in range(CH * (P + latency) * 8 + 60):
                out = pipe.pop(0) if pipe and pipe[0][0] == cycle else None
                ctx.set(dut.lif_out, out is not None)
                ctx.set(dut.i.valid, out is not None and out[2] != 0)
                if out:
                    ctx.set(dut.i.payload.mask, out[2])
                    ctx.set(dut.i.payload.chunk, out[1])
                empty = ctx.get(dut.empty)
                assert empty == (not pipe and out is None and pending == 0)
                if chunk == CH and empty:
                    break
                issue = chunk < CH and ctx.get(dut.room) and (cycle < stall_until
                                                              or rng.random() < 0.8)
                ctx.set(dut.lif_issue, issue)
                ready = cycle >= stall_until and rng.random() < 0.6
                ctx.set(dut.o.ready, ready)
                if out and out[2]:
                    assert ctx.get(dut.i.ready)
                valid = ctx.get(dut.o.valid)
                payload = (ctx.get(dut.o.payload.index), ctx.get(dut.o.payload.spike),
                           ctx.get(dut.o.payload.last))
                assert ctx.get(dut.stalled) == (valid and not ready)
                if held is not None:
                    assert valid and payload == held
                held = payload if valid and not ready else None
                if valid and ready:
                    assert payload[1:] == (1, 0)
                    got.append(payload[0])
                    pending -= 1
                if issue:
                    pipe.append((cycle + latency, chunk, masks[chunk]))
                    chunk += 1
                    in_stall += cycle < stall_until
                if out:
                    pending += bin(out[2]).count("1")
                await ctx.tick()
                cycle += 1
            else:
                raise AssertionError("the serializer never emptied")
            assert got == expected
            if step == 0:
                assert in_stall >= depth
            ctx.set(dut.lif_issue, 0)
            ctx.set(dut.o.ready, 0)

    simulate(dut, bench)


# ---- engines.BeatSender, engines.ShortcutLink ----

class StreamSink:
    """Takes beats at random, checking that a beat once offered holds until it is taken."""

    def __init__(self, rng, stream, p_ready=0.6):
        self.rng, self.stream, self.p_ready = rng, stream, p_ready
        self.held, self.got, self.blocked = None, [], False

    def cycle(self, ctx):
        ready = not self.blocked and self.rng.random() < self.p_ready
        ctx.set(self.stream.ready, ready)
        valid = ctx.get(self.stream.valid)
        beat = (ctx.get(self.stream.payload.value), ctx.get(self.stream.payload.last))
        if self.held is not None:
            assert valid and beat == self.held
        self.held = beat if valid and not ready else None
        if valid and ready:
            self.got.append(beat)


@pytest.mark.parametrize("lanes", [1, 4])
def test_beat_sender(lanes):
    rng = random.Random(5 + lanes)
    dut = engines.BeatSender(lanes)
    beats = [(rng.getrandbits(16 * lanes), int(rng.random() < 0.25)) for _ in range(150)]
    sink = StreamSink(rng, dut.o)

    async def bench(ctx):
        sent, data, prev_issue, in_stall = 0, None, False, 0
        sink.blocked = True
        for cycle in range(3000):
            if cycle == 25:
                sink.blocked = False
            ctx.set(dut.data, rng.getrandbits(16 * lanes) if data is None else data)
            assert ctx.get(dut.drained) == (not prev_issue)
            assert ctx.get(dut.empty) == (sent == len(sink.got))
            issue = (sent < len(beats) and ctx.get(dut.room)
                     and (sink.blocked or rng.random() < 0.7))
            ctx.set(dut.issue, issue)
            ctx.set(dut.last, beats[sent][1] if issue else rng.getrandbits(1))
            sink.cycle(ctx)
            data, prev_issue = beats[sent][0] if issue else None, issue
            if issue:
                sent += 1
                in_stall += sink.blocked
            await ctx.tick()
            if len(sink.got) == len(beats):
                break
        assert in_stall == 4
        assert sink.got == beats

    simulate(dut, bench)


LINK_CASES = [dict(lanes=4, max_chunks=4, chunks=3), dict(lanes=1, max_chunks=3, chunks=3),
              dict(lanes=4, max_chunks=4, chunks=1)]


@pytest.mark.parametrize("case", LINK_CASES, ids=["lanes4", "lanes1", "one"])
def test_shortcut_link_send(case):
    P, n = case["lanes"], case["chunks"]
    rng = random.Random(f"send{P}{n}")
    dut = engines.ShortcutLink(lanes=P, chunks=case["max_chunks"], add_latency=LA)
    sink = StreamSink(rng, dut.sc_o)
    steps = [[rng.getrandbits(16 * P) for _ in range(n)] for _ in range(4)]

    async def cycle(ctx):
        sink.cycle(ctx)
        await ctx.tick()

    async def bench(ctx):
        ctx.set(dut.chunks, n)
        for step, memory in enumerate(steps):
            sink.blocked = step == 1
            ctx.set(dut.data, rng.getrandbits(16 * P))
            ctx.set(dut.restart, 1)
            await cycle(ctx)
            ctx.set(dut.restart, 0)
            ctx.set(dut.send, 1)
            issued, data = 0, None
            for k in range(200):
                sink.blocked = sink.blocked and k < 15
                ctx.set(dut.data, rng.getrandbits(16 * P) if data is None else data)
                issue, done = ctx.get(dut.issue), ctx.get(dut.done)
                if issue:
                    assert ctx.get(dut.j) == issued
                assert ctx.get(dut.stall) == (issued < n and not issue)
                if done:
                    assert issued == n and data is None
                    break
                data = memory[issued] if issue else None
                issued += issue
                await cycle(ctx)
            else:
                raise AssertionError("the link never finished sending")
            ctx.set(dut.send, 0)
            await cycle(ctx)
            assert not ctx.get(dut.issue)
        sink.blocked = False
        for _ in range(100):
            ctx.set(dut.data, rng.getrandbits(16 * P))
            await cycle(ctx)
        assert sink.got == [(value, int(j == n - 1)) for memory in steps
                            for j, value in enumerate(memory)]

    simulate(dut, bench)


@pytest.mark.parametrize("case", LINK_CASES, ids=["lanes4", "lanes1", "one"])
def test_shortcut_link_add(case):
    P, n = case["lanes"], case["chunks"]
    rng = random.Random(f"add{P}{n}")
    dut = engines.ShortcutLink(lanes=P, chunks=case["max_chunks"], add_latency=LA)
    steps = 4
    beats = [rng.getrandbits(16 * P) for _ in range(n * steps)]

    async def bench(ctx):
        ctx.set(dut.chunks, n)
        cycle, offered, pos, prev_take, j_outs = 0, False, 0, None, {}

        async def tick():
            nonlocal cycle
            await ctx.tick()
            cycle += 1

        for step in range(steps):
            ctx.set(dut.add, 0)
            await pulse(ctx, dut.restart)
            cycle += 1
            prev_take = None
            ctx.set(dut.add, 1)
            taken, last_take = 0, None
            for _ in range(n * 20 + LA + 20):
                if not offered and pos < len(beats) and rng.random() < 0.6:
                    offered = True
                    ctx.set(dut.sc_i.payload.value, beats[pos])
                    ctx.set(dut.sc_i.payload.last, 0)
                ctx.set(dut.sc_i.valid, offered)
                take = ctx.get(dut.take)
                assert ctx.get(dut.sc_i.ready) == (taken < n)
                assert take == (offered and taken < n)
                assert ctx.get(dut.stall) == ctx.get(dut.waiting) == (taken < n and not offered)
                assert ctx.get(dut.take_d) == (prev_take is not None)
                if prev_take is not None:
                    assert ctx.get(dut.beat_d) == prev_take
                if cycle in j_outs:
                    assert ctx.get(dut.j_out) == j_outs.pop(cycle)
                done = ctx.get(dut.done)
                if done:
                    assert taken == n and cycle >= last_take + 1 + LA and not j_outs
                    break
                prev_take = None
                if take:
                    assert ctx.get(dut.j) == taken
                    j_outs[cycle + 1 + LA] = taken
                    prev_take, last_take = beats[pos], cycle
                    taken, pos, offered = taken + 1, pos + 1, False
                await tick()
            else:
                raise AssertionError("the link never finished adding")
            assert pos == (step + 1) * n
            await tick()

    simulate(dut, bench)


# ---- engines.NonzeroScanner and engines.ColumnIssuer ----

class ColumnPath(Elaboratable):
    def __init__(self, *, neurons, fan_in, lanes):
        self.scanner = engines.NonzeroScanner(neurons=neurons, lanes=lanes)
        self.columns = engines.ColumnIssuer(neurons=neurons, fan_in=fan_in, lanes=lanes,
                                    mul_latency=LM, add_latency=LA)

    def elaborate(self, platform):
        m = Module()
        m.submodules.scanner, m.submodules.columns = self.scanner, self.columns
        wiring.connect(m, self.scanner.o, self.columns.i)
        m.d.comb += [self.columns.start.eq(self.scanner.start),
                     self.columns.scanning.eq(self.scanner.active)]
        return m


COLUMN_CASES = {
    "wide": dict(neurons=16, fan_in=40, lanes=4, chunks=3, in_chunks=10),
    "narrow": dict(neurons=16, fan_in=40, lanes=4, chunks=4, in_chunks=2),
    "lanes1": dict(neurons=5, fan_in=3, lanes=1, chunks=5, in_chunks=3),
    "lanes1_one": dict(neurons=5, fan_in=3, lanes=1, chunks=4, in_chunks=1),
}


@pytest.mark.parametrize("name", list(COLUMN_CASES))
def test_scanner_and_column_issuer(name):
    case = COLUMN_CASES[name]
    N, P, chunks, F = case["neurons"], case["lanes"], case["chunks"], case["in_chunks"]
    CH, S = N // P, max(F, LA + 2)
    rng = random.Random(name)
    dut = ColumnPath(neurons=N, fan_in=case["fan_in"], lanes=P)
    sc, col = dut.scanner, dut.columns

    async def bench(ctx):
        ctx.set(sc.chunks, chunks)
        ctx.set(col.in_chunks, F)
        state = dict(cycle=0, addr=0)
        trace = dict(o=[], issue=[], mul=[], a_read=[], a_write=[], done=[])

        async def cycle(masks, ds):
            addr = state["addr"]
            ctx.set(sc.nz_data, masks[addr] if addr < CH else rng.getrandbits(P))
            ctx.set(sc.d_data, ds[addr] if addr < CH else rng.getrandbits(16 * P))
            now = state["cycle"]
            if ctx.get(sc.o.valid) and ctx.get(col.i.ready):
                trace["o"].append((ctx.get(sc.o.payload.n), ctx.get(sc.o.payload.d)))
            if ctx.get(col.issue):
                trace["issue"].append((now, ctx.get(col.n), ctx.get(col.slot)))
            if ctx.get(col.mul_valid):
                trace["mul"].append((now, ctx.get(col.mul_d)))
            if ctx.get(col.a_read):
                trace["a_read"].append((now, ctx.get(col.a_addr)))
            trace["a_write"].append(ctx.get(col.a_write_addr))
            trace["done"].append(ctx.get(col.done))
            state["addr"] = ctx.get(sc.addr)
            await ctx.tick()
            state["cycle"] += 1

        for step in range(5):
            masks = [rng.getrandbits(P) if step != 2 else 0 for _ in range(CH)]
            ds = [rng.getrandbits(16 * P) for _ in range(CH)]
            expected = [(c * P + k, lane_of(ds[c], k)) for c in range(chunks) for k in range(P)
                        if masks[c] >> k & 1]
            if step != 1:
                ctx.set(col.clear, 1)
                await cycle(masks, ds)
                ctx.set(col.clear, 0)
                assert not ctx.get(col.done)
            for key in trace:
                trace[key].clear()
            base = state["cycle"]
            ctx.set(sc.start, 1)
            await cycle(masks, ds)
            ctx.set(sc.start, 0)
            ctx.set(col.counting, 1)
            for _ in range((len(expected) + 1) * (S + 4) + 3 * CH + LM + LA + 20):
                if ctx.get(col.done):
                    break
                await cycle(masks, ds)
            else:
                raise AssertionError("Wᵀ·δX never finished")
            done_at = state["cycle"]
            for _ in range(3):
                await cycle(masks, ds)
            ctx.set(col.counting, 0)
            assert trace["done"][done_at - base:] == [1] * 3
            assert not any(trace["done"][1:done_at - base])
            assert trace["o"] == expected
            issues = trace["issue"]
            assert [(n, j) for _, n, j in issues] == [(n, j) for n, _ in expected
                                                      for j in range(F)]
            firsts = issues[::F]
            for k, (when, _, _) in enumerate(firsts):
                assert [w for w, _, _ in issues[k * F:(k + 1) * F]] == list(range(when,
                                                                                   when + F))
                if k:
                    assert when - firsts[k - 1][0] >= S
            d_of = dict(expected)
            assert trace["mul"] == [(when + 1, d_of[n]) for when, n, _ in issues]
            assert trace["a_read"] == [(when + LM, j) for when, _, j in issues]
            for when, _, j in issues:
                assert trace["a_write"][when + 1 + LM + LA - base] == j
            if issues:
                assert done_at >= issues[-1][0] + 1 + LM + LA

    simulate(dut, bench)


def test_scanner_throughput():
    N, P, chunks = 16, 4, 4
    rng = random.Random(6)
    masks = [rng.getrandbits(P) for _ in range(chunks)]
    dut = engines.NonzeroScanner(neurons=N, lanes=P)

    async def bench(ctx):
        ctx.set(dut.chunks, chunks)
        ctx.set(dut.o.ready, 1)
        await pulse(ctx, dut.start)
        addr, cycles, got = 0, 0, []
        while ctx.get(dut.active):
            ctx.set(dut.nz_data, masks[addr] if addr < chunks else 0)
            if ctx.get(dut.o.valid):
                got.append(ctx.get(dut.o.payload.n))
            addr = ctx.get(dut.addr)
            await ctx.tick()
            cycles += 1
            assert cycles < 100
        ones = sum(bin(mask).count("1") for mask in masks)
        assert got == [c * P + k for c in range(chunks) for k in range(P) if masks[c] >> k & 1]
        assert cycles <= 2 * chunks + ones + 1

    simulate(dut, bench)


# ---- engines.GradientSequencer, engines.RowWalker ----

WG_CASES = {"full": dict(fan_in=6, max_chunks=4, chunks=4),
            "fewer": dict(fan_in=6, max_chunks=4, chunks=3),
            "two": dict(fan_in=7, max_chunks=2, chunks=2),
            "one": dict(fan_in=5, max_chunks=1, chunks=1)}


@pytest.mark.parametrize("name", list(WG_CASES))
def test_gradient_sequencer(name):
    case = WG_CASES[name]
    F, C = case["fan_in"], case["chunks"]
    rng = random.Random(name)
    dut = engines.GradientSequencer(fan_in=F, chunks=case["max_chunks"], add_latency=LA)

    async def bench(ctx):
        ctx.set(dut.chunks, C)
        cycle, entry = 0, 0
        for step, k in enumerate([rng.randint(1, F), 0, F, 1, rng.randint(0, F)]):
            log = sorted(rng.sample(range(F), k))
            issues, valid_d, late, done_at = [], [], {}, None
            if step != 1:
                await pulse(ctx, dut.clear)
                cycle += 1
                assert not ctx.get(dut.done)
            start = cycle
            ctx.set(dut.start, 1)
            for _ in range(k * (C + 2) + LA + 20):
                ctx.set(dut.count_data, rng.randrange(F + 1) if cycle == start else k)
                ctx.set(dut.log_data, log[entry] if entry < k else rng.randrange(F))
                if ctx.get(dut.issue):
                    issues.append((cycle, ctx.get(dut.row), ctx.get(dut.slot)))
                if ctx.get(dut.valid_d):
                    valid_d.append(cycle)
                late[cycle] = (ctx.get(dut.row_d), ctx.get(dut.chunk_d))
                if cycle > start and ctx.get(dut.done):
                    done_at = cycle
                    break
                entry = ctx.get(dut.entry)
                await ctx.tick()
                cycle += 1
                ctx.set(dut.start, 0)
                ctx.set(dut.counting, 1)
            assert done_at is not None
            assert not ctx.get(dut.active)
            ctx.set(dut.counting, 0)
            assert [(row, slot) for _, row, slot in issues] == [(i, c) for i in log
                                                                for c in range(C)]
            assert valid_d == [when + 1 for when, _, _ in issues]
            for when, row, slot in issues:
                assert late[when + 1 + LA] == (row, slot)
            if issues:
                assert done_at >= issues[-1][0] + 1 + LA
                if C > 1:
                    assert [when for when, _, _ in issues] == list(range(issues[0][0],
                                                                         issues[0][0] + k * C))
            else:
                assert done_at - start <= 4

    simulate(dut, bench)


WALKER_CASES = {"update": dict(rows=5, chunks=3, latency=1 + LM + LA, sizes=[(5, 3), (2, 2)]),
                "one": dict(rows=4, chunks=1, latency=1, sizes=[(4, 1), (3, 1)]),
                "fewer": dict(rows=6, chunks=4, latency=3, sizes=[(6, 2), (6, 4)])}


@pytest.mark.parametrize("name", list(WALKER_CASES))
def test_row_walker(name):
    case = WALKER_CASES[name]
    L = case["latency"]
    rng = random.Random(name)
    dut = engines.RowWalker(rows=case["rows"], chunks=case["chunks"], latency=L)

    async def bench(ctx):
        cycle = 0
        for rows, chunks in case["sizes"]:
            ctx.set(dut.rows, rows)
            ctx.set(dut.chunks, chunks)
            await pulse(ctx, dut.start)
            cycle += 1
            issues, issue_d, late, finished = [], [], {}, None
            for _ in range(rows * chunks * 4 + L + 20):
                enable = rng.random() < 0.7
                ctx.set(dut.enable, enable)
                issue, done = ctx.get(dut.issue), ctx.get(dut.done)
                assert done == (len(issues) == rows * chunks)
                assert issue == (enable and not done)
                if issue:
                    issues.append((cycle, ctx.get(dut.row), ctx.get(dut.chunk)))
                if ctx.get(dut.issue_d):
                    issue_d.append(cycle)
                late[cycle] = (ctx.get(dut.row_d), ctx.get(dut.chunk_d))
                if done and finished is None:
                    finished = cycle
                if finished is not None and cycle > finished + L:
                    break
                await ctx.tick()
                cycle += 1
            ctx.set(dut.enable, 0)
            assert [(r, c) for _, r, c in issues] == [(r, c) for r in range(rows)
                                                      for c in range(chunks)]
            assert issue_d == [when + 1 for when, _, _ in issues]
            for when, row, chunk in issues:
                assert late[when + L] == (row, chunk)

    simulate(dut, bench)


# ---- StepCounter ----

def step_order(timesteps, tokens):
    """The steps of a sample forward, and backward: timesteps from the last, a timestep's
    tokens first to last."""
    backward = [k for ts in reversed(range(-(-timesteps // tokens)))
                for k in range(ts * tokens, min((ts + 1) * tokens, timesteps))]
    return list(range(timesteps)), backward


@pytest.mark.parametrize("max_steps, timesteps, tokens", [
    (1, 1, 1), (8, 8, 1), (8, 6, 2), (8, 6, 3), (8, 5, 2), (8, 7, 7), (8, 8, 4), (8, 8, 8),
    (9, 7, 3)])
def test_step_counter(max_steps, timesteps, tokens):
    rng = random.Random(f"{max_steps}{timesteps}{tokens}")
    dut = StepCounter(max_steps)
    forward, backward = step_order(timesteps, tokens)

    def at(ctx):
        return ctx.get(dut.t), ctx.get(dut.r), ctx.get(dut.bt)

    async def idle(ctx):
        for _ in range(rng.randrange(3)):
            await ctx.tick()

    async def bench(ctx):
        ctx.set(dut.timesteps, timesteps)
        ctx.set(dut.tokens, tokens)
        for _ in range(2):
            await idle(ctx)
            await pulse(ctx, dut.begin)
            seen = []
            for _ in range(timesteps):
                await idle(ctx)
                t, r, _ = at(ctx)
                assert r == t % tokens
                seen.append(t)
                last = ctx.get(dut.fp_last)
                assert last == (t == timesteps - 1)
                await pulse(ctx, dut.fp_next)
                if last:
                    break
            assert seen == forward
            await idle(ctx)
            await pulse(ctx, dut.bp_first)
            seen = []
            for _ in range(timesteps):
                await idle(ctx)
                t, r, bt = at(ctx)
                assert (r, bt) == (t % tokens, t - t % tokens)
                seen.append(t)
                token, last = ctx.get(dut.bp_token), ctx.get(dut.bp_last)
                assert last == (bt == 0)
                assert token == (r + 1 < tokens and t + 1 < timesteps)
                await pulse(ctx, dut.bp_next)
                if last and not token:
                    break
            assert seen == backward

    simulate(dut, bench)


# ---- ErrorSums ----

@pytest.mark.parametrize("fan_in, lanes, count", [(12, 4, 3), (12, 4, 2), (5, 1, 5)])
def test_error_sums(fan_in, lanes, count):
    rng = random.Random(f"{fan_in}{lanes}{count}")
    FCH = fan_in // lanes
    dut = ErrorSums(fan_in=fan_in, lanes=lanes)

    async def read(ctx, addr):
        ctx.set(dut.read, 1)
        ctx.set(dut.read_addr, addr)
        await ctx.tick()
        ctx.set(dut.read, 0)
        return ctx.get(dut.data)

    async def bench(ctx):
        ctx.set(dut.count, count)
        model = [0] * FCH
        for _ in range(3):
            beats = [rng.getrandbits(16 * lanes) for _ in range(count + 1)]
            await pulse(ctx, dut.start)
            ctx.set(dut.receive, 1)
            pos, offered = 0, False
            for cycle in range(count * 12 + 20):
                if not offered and (cycle > 8 or pos) and rng.random() < 0.4:
                    offered = True
                    ctx.set(dut.psum_i.payload.value, beats[pos])
                ctx.set(dut.psum_i.valid, offered)
                waiting = pos < count
                assert ctx.get(dut.psum_i.ready) == waiting
                assert ctx.get(dut.stall) == (waiting and not offered)
                assert ctx.get(dut.received) == (not waiting)
                if not waiting:
                    break
                if offered:
                    model[pos], pos, offered = beats[pos], pos + 1, False
                await ctx.tick()
            else:
                raise AssertionError("the partial sums were never received")
            await ctx.tick()
            ctx.set(dut.receive, 0)
            ctx.set(dut.psum_i.valid, 0)
            for j in range(FCH):
                assert await read(ctx, j) == model[j]
            j, value = rng.randrange(FCH), rng.getrandbits(16 * lanes)
            ctx.set(dut.sum_valid, 1)
            ctx.set(dut.sum_addr, j)
            ctx.set(dut.sum, value)
            await ctx.tick()
            ctx.set(dut.sum_valid, 0)
            model[j] = value
            for j in range(FCH):
                ctx.set(dut.send, 1)
                ctx.set(dut.send_addr, j)
                await ctx.tick()
                ctx.set(dut.send, 0)
                assert ctx.get(dut.data) == model[j]
            for j in range(FCH):
                assert await read(ctx, j) == 0
            model = [0] * FCH

    simulate(dut, bench)
