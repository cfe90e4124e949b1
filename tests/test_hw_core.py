# SPDX-License-Identifier: Apache-2.0
import random

import pytest
import torch
from amaranth.sim import Simulator

from spikeforge.golden import fp16
from spikeforge.golden.lif import LIFParams
from spikeforge.golden.surrogate import Surrogate
from spikeforge.hw.core import Core
from spikeforge.regmap import Command, Counter, ErrorFlag, Reg, Region, Status, address
from spikeforge.testing import LayerCase, check_case


async def bus_write(ctx, dut, addr, value):
    ctx.set(dut.bus_en, 1)
    ctx.set(dut.bus_we, 1)
    ctx.set(dut.bus_addr, addr)
    ctx.set(dut.bus_wdata, value)
    await ctx.tick()
    ctx.set(dut.bus_en, 0)
    ctx.set(dut.bus_we, 0)
    (err,) = await ctx.tick().sample(dut.bus_err).until(dut.bus_ack)
    return bool(err)


async def bus_read(ctx, dut, addr, check=True):
    ctx.set(dut.bus_en, 1)
    ctx.set(dut.bus_we, 0)
    ctx.set(dut.bus_addr, addr)
    await ctx.tick()
    ctx.set(dut.bus_en, 0)
    data, err = await ctx.tick().sample(dut.bus_rdata, dut.bus_err).until(dut.bus_ack)
    assert not (check and err), f"bus read of {addr:#x} failed"
    return int(data)


async def wait_status(ctx, dut, flag):
    for _ in range(100000):
        if await bus_read(ctx, dut, address(Region.REG, Reg.STATUS)) & flag:
            return
    raise AssertionError(f"status {flag!r} never set")


def lanes_pack(values, lanes):
    return sum((int(v) & 0xFFFF) << (16 * k) for k, v in enumerate(values))


def lanes_unpack(word, lanes):
    return [(int(word) >> (16 * k)) & 0xFFFF for k in range(lanes)]


def simulate(case: LayerCase, core: Core, seed: int, idle: float = 0.3, stall: float = 0.3,
             bp_input_error: bool = True):
    """Run one sample (FP, BP, WG, update) on ``core``; return what it produced."""
    rng = random.Random(seed)
    P, T, N, F = core.lanes, case.timesteps, case.neurons, case.fan_in
    chunks, in_chunks = -(-N // P), -(-F // P)
    got = {"events": [[] for _ in range(T)], "grad_in": [[] for _ in range(T)]}
    sim = Simulator(core)
    sim.add_clock(1e-8)
    fp_go, bp_go = [], []

    async def fp_source(ctx):
        while not fp_go:
            await ctx.tick()
        for t in range(T):
            events = case.input_events(t)
            items = [(i, 1, 0) for i in events] + [(0, 0, 1)]
            if events and rng.random() < 0.5:
                items = [(i, 1, 0) for i in events[:-1]] + [(events[-1], 1, 1)]
            for index, spike, last in items:
                while rng.random() < idle:
                    await ctx.tick()
                ctx.set(core.fp_i.valid, 1)
                ctx.set(core.fp_i.payload, {"index": index, "spike": spike, "last": last})
                await ctx.tick().until(core.fp_i.ready)
                ctx.set(core.fp_i.valid, 0)

    async def fp_sink(ctx):
        t = 0
        while t < T:
            ready = rng.random() >= stall
            ctx.set(core.fp_o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(core.fp_o.valid, core.fp_o.payload)
            if ready and valid:
                if payload.spike:
                    got["events"][t].append(int(payload.index))
                if payload.last:
                    t += 1
        ctx.set(core.fp_o.ready, 0)

    async def bp_source(ctx):
        while not bp_go:
            await ctx.tick()
        for t in case.bp_steps():
            g = case.grad_out[t].tolist() + [0.0] * (chunks * P - N)
            for c in range(chunks):
                while rng.random() < idle:
                    await ctx.tick()
                value = lanes_pack(fp16.bits(torch.tensor(g[c * P:(c + 1) * P])).tolist(), P)
                ctx.set(core.bp_i.valid, 1)
                ctx.set(core.bp_i.payload, {"value": value, "last": int(c == chunks - 1)})
                await ctx.tick().until(core.bp_i.ready)
                ctx.set(core.bp_i.valid, 0)

    async def bp_sink(ctx):
        if not bp_input_error:
            return
        for t in case.bp_steps():
            beats = 0
            while beats < in_chunks:
                ready = rng.random() >= stall
                ctx.set(core.bp_o.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(core.bp_o.valid,
                                                               core.bp_o.payload)
                if ready and valid:
                    got["grad_in"][t] += lanes_unpack(payload.value, P)
                    beats += 1
                    assert bool(payload.last) == (beats == in_chunks)
        ctx.set(core.bp_o.ready, 0)

    async def main(ctx):
        for reg, value in case.registers().items():
            assert not await bus_write(ctx, core, address(Region.REG, reg), value)
        assert not await bus_write(ctx, core, address(Region.REG, Reg.BP_INPUT_ERROR),
                                   int(bp_input_error))
        w_bits = fp16.bits(case.weights)
        for n in range(N):
            for i in range(F):
                addr = address(Region.WEIGHT, n << core.input_bits | i)
                assert not await bus_write(ctx, core, addr, int(w_bits[n, i]))
        assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND), Command.BEGIN)
        fp_go.append(1)
        await wait_status(ctx, core, Status.FP_DONE)
        got["charges"] = [[await bus_read(ctx, core, address(
            Region.CHARGE, t << core.neuron_bits | n)) for n in range(N)] for t in range(T)]
        got["spikes"] = [[await bus_read(ctx, core, address(
            Region.SPIKE, t << core.neuron_bits | n)) for n in range(N)] for t in range(T)]
        bp_go.append(1)
        await wait_status(ctx, core, Status.BP_DONE)
        got["dw"] = [[await bus_read(ctx, core, address(Region.GRAD, n << core.input_bits | i))
                      for i in range(F)] for n in range(N)]
        got["counters"] = {}
        for c in Counter:
            lo = await bus_read(ctx, core, address(Region.COUNTER, 2 * c))
            hi = await bus_read(ctx, core, address(Region.COUNTER, 2 * c + 1))
            got["counters"][c.name.lower()] = hi << 16 | lo
        assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND), Command.UPDATE)
        while await bus_read(ctx, core, address(Region.REG, Reg.STATUS)) & Status.BUSY:
            pass
        got["weights"] = [[await bus_read(ctx, core, address(
            Region.WEIGHT, n << core.input_bits | i)) for i in range(F)] for n in range(N)]
        got["dw_after"] = [await bus_read(ctx, core, address(Region.GRAD, n << core.input_bits))
                           for n in range(N)]
        got["errors"] = await bus_read(ctx, core, address(Region.REG, Reg.ERRORS))

    sim.add_testbench(fp_source, background=True)
    sim.add_testbench(fp_sink, background=True)
    sim.add_testbench(bp_source, background=True)
    sim.add_testbench(bp_sink, background=True)
    sim.add_testbench(main)
    sim.run()
    return got


check = check_case


@pytest.mark.parametrize("neurons, fan_in, lanes, timesteps, rate", [
    (4, 4, 1, 3, 0.5),
    (8, 16, 4, 4, 0.3),
    (12, 8, 4, 3, 1.0),
    (16, 32, 8, 2, 0.05),
    (8, 8, 2, 2, 0.0),
])
def test_core_matches_golden(neurons, fan_in, lanes, timesteps, rate):
    case = LayerCase.random(neurons=neurons, fan_in=fan_in, timesteps=timesteps, rate=rate,
                            seed=neurons * 7 + fan_in)
    core = Core(neurons=neurons, fan_in=fan_in, lanes=lanes, timesteps=timesteps)
    check(case, simulate(case, core, seed=3))


@pytest.mark.parametrize("surrogate", ["sigmoid", "atan", "rect", "piecewise_quadratic"])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_core_surrogates_and_resets(surrogate, reset):
    lif = LIFParams(reset=reset, surrogate=Surrogate(surrogate), v_reset=-0.25 * (reset == "hard"))
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=3, rate=0.4, seed=11, lif=lif)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=4, reset=reset,
                surrogate=Surrogate(surrogate))
    check(case, simulate(case, core, seed=5))


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_core_without_detached_reset(reset):
    lif = LIFParams(reset=reset, detach_reset=False, surrogate=Surrogate("atan"), tau=3.0)
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=4, rate=0.4, seed=17, lif=lif)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=4, reset=reset, detach_reset=False,
                surrogate=Surrogate("atan"))
    check(case, simulate(case, core, seed=8))


@pytest.mark.parametrize("tokens, timesteps, reset, detach", [
    (3, 2, "hard", True),
    (4, 2, "soft", False),
])
def test_core_with_tokens_matches_golden(tokens, timesteps, reset, detach):
    """Token-wise layers: a membrane and a BPTT carry per token, the weight gradient summed
    over tokens and timesteps in the golden model's order."""
    lif = LIFParams(reset=reset, detach_reset=detach, surrogate=Surrogate("atan"), tau=3.0)
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=timesteps, tokens=tokens, rate=0.4,
                            seed=tokens, lif=lif)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=tokens * timesteps + 1, reset=reset,
                detach_reset=detach, surrogate=Surrogate("atan"))
    assert case.expected_spikes.any() and (case.expected_dw != 0).any()
    got = simulate(case, core, seed=tokens)
    check(case, got)
    # The tokens are not one neuron's timesteps: the same stream without them differs.
    flat = LayerCase(case.weights, case.spikes_in, case.grad_out, lif, case.lr)
    assert fp16.bits(flat.expected_charges).tolist() != got["charges"][:case.timesteps]
    assert fp16.bits(flat.expected_dw).tolist() != got["dw"]


def test_core_with_smaller_active_layer():
    case = LayerCase.random(neurons=5, fan_in=6, timesteps=2, rate=0.5, seed=2)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=3)
    check(case, simulate(case, core, seed=9))


def test_core_without_input_error():
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=2, rate=0.5, seed=4)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=2)
    check(case, simulate(case, core, seed=1, bp_input_error=False), bp_input_error=False)


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 3}, r"^Lane count must be a power of two between 1 and 64, not 3$"),
    ({"neurons": 6}, r"^Core neurons must be a positive multiple of the lane count 4, not 6$"),
    ({"fan_in": 0}, r"^Core fan_in must be a positive multiple of the lane count 4, not 0$"),
    ({"timesteps": 0}, r"^Core timesteps must be between 1 and 4096, not 0$"),
    ({"reset": "none"}, r"^Core reset must be 'hard' or 'soft', not 'none'$"),
])
def test_core_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Core(**{"neurons": 8, "fan_in": 8, "lanes": 4, "timesteps": 2, **kwargs})


def test_core_refuses_bad_input_and_changes_nothing():
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=2)
    sim = Simulator(core)
    sim.add_clock(1e-8)
    w = address(Region.WEIGHT, 3 << core.input_bits | 2)

    async def testbench(ctx):
        def reg(r):
            return address(Region.REG, r)

        assert not await bus_write(ctx, core, w, 0x3C00)
        assert not await bus_write(ctx, core, reg(Reg.INPUTS), 6)
        for bad_addr, value in [
            (address(Region.WEIGHT, 8 << core.input_bits), 1),   # neuron out of range
            (address(Region.WEIGHT, 1 << 27), 1),                  # offset far out of range
            (address(Region.GRAD, 0), 1),                          # gradients are read only
            (address(Region.CHARGE, 0), 1),                        # state is read only
            (address(Region.COUNTER, 0), 1),
            (address(Region.REG, Reg.NEURONS), 0),                 # neurons 1..8
            (address(Region.REG, Reg.NEURONS), 9),
            (address(Region.REG, Reg.TIMESTEPS), 3),               # timesteps 1..2
            (address(Region.REG, Reg.TOKENS), 0),                  # tokens 1..2
            (address(Region.REG, Reg.TOKENS), 3),
            (address(Region.REG, Reg.IN_TOKENS), 0),               # input tokens 1..8
            (address(Region.REG, Reg.IN_TOKENS), 9),
            (address(Region.REG, Reg.IN_STRIDE), 0),               # inputs a token 1..8
            (address(Region.REG, Reg.IN_STRIDE), 9),
            (address(Region.REG, Reg.COMMAND), 7),                 # no such command
            (address(Region.REG, 99), 0),                          # no such register
            (9 << 28, 0),                                          # no such region
        ]:
            assert await bus_write(ctx, core, bad_addr, value), hex(bad_addr)
        assert await bus_read(ctx, core, w) == 0x3C00
        assert await bus_read(ctx, core, reg(Reg.NEURONS)) == 8
        assert await bus_read(ctx, core, reg(Reg.TIMESTEPS)) == 2
        assert await bus_read(ctx, core, reg(Reg.TOKENS)) == 1
        assert await bus_read(ctx, core, reg(Reg.IN_TOKENS)) == 1
        assert await bus_read(ctx, core, reg(Reg.IN_STRIDE)) == 8
        assert not await bus_write(ctx, core, reg(Reg.COMMAND), Command.BEGIN)
        assert await bus_write(ctx, core, w, 0x4000)                  # busy: refused
        assert await bus_write(ctx, core, reg(Reg.COMMAND), Command.UPDATE)
        ctx.set(core.fp_o.ready, 1)
        for index, spike, last in [(3, 1, 0), (2, 1, 0), (6, 1, 0), (5, 1, 1), (0, 0, 1)]:
            ctx.set(core.fp_i.valid, 1)
            ctx.set(core.fp_i.payload, {"index": index, "spike": spike, "last": last})
            await ctx.tick().until(core.fp_i.ready)
        ctx.set(core.fp_i.valid, 0)
        await wait_status(ctx, core, Status.FP_DONE)
        errors = await bus_read(ctx, core, reg(Reg.ERRORS))
        assert errors == ErrorFlag.EVENT_ORDER | ErrorFlag.EVENT_RANGE
        lo = await bus_read(ctx, core, address(Region.COUNTER, 2 * Counter.FP_EVENTS))
        assert lo == 2                                                # 3 and 5 were taken
        assert not await bus_write(ctx, core, reg(Reg.ERRORS), int(errors))
        assert await bus_read(ctx, core, reg(Reg.ERRORS)) == 0
        assert await bus_read(ctx, core, w) == 0x3C00

        # Two input tokens of three inputs a timestep: an index past its token's three is
        # out of range, the next token's indices follow the first's.
        assert not await bus_write(ctx, core, reg(Reg.IN_TOKENS), 2)
        assert not await bus_write(ctx, core, reg(Reg.IN_STRIDE), 3)
        assert not await bus_write(ctx, core, reg(Reg.COMMAND), Command.BEGIN)
        for index, spike, last in [(1, 1, 0), (3, 1, 0), (2, 1, 1), (0, 1, 0), (2, 1, 1),
                                   (0, 0, 1), (1, 1, 1)]:
            ctx.set(core.fp_i.valid, 1)
            ctx.set(core.fp_i.payload, {"index": index, "spike": spike, "last": last})
            await ctx.tick().until(core.fp_i.ready)
        ctx.set(core.fp_i.valid, 0)
        await wait_status(ctx, core, Status.FP_DONE)
        assert await bus_read(ctx, core, reg(Reg.ERRORS)) == ErrorFlag.EVENT_RANGE
        lo = await bus_read(ctx, core, address(Region.COUNTER, 2 * Counter.FP_EVENTS))
        assert lo == 2 + 5                  # inputs 1, 2, 3 and 5, then 4 in timestep 1

    sim.add_testbench(testbench)
    sim.run()
