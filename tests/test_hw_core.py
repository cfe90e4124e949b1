# SPDX-License-Identifier: Apache-2.0
import random

import pytest
import torch
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import fifo

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.linear import linear_backward, linear_forward, linear_weight_grad, sgd_update
from spikeforge.golden.surrogate import Surrogate
from spikeforge.hw.core import Core
from spikeforge.regmap import (
    Command,
    Counter,
    ErrorFlag,
    Reg,
    Region,
    Shortcut,
    Status,
    address,
    state_offset,
    weight_offset,
)
from spikeforge.tb.amaranth import (
    bus_read,
    bus_write,
    get_events,
    get_lanes,
    put_events,
    put_lanes,
    simulate,
    wait_idle,
    wait_status,
)
from spikeforge.testing import LayerCase, check_case


def w_addr(core: Core, region: Region, n: int, i: int) -> int:
    return address(region, weight_offset(n, i, fan_in=core.fan_in))


def s_addr(core: Core, region: Region, t: int, n: int) -> int:
    return address(region, state_offset(t, n, neurons=core.neurons))


def run_sample(case: LayerCase, core: Core, seed: int, idle: float = 0.3, stall: float = 0.3,
               bp_input_error: bool = True):
    """Run one sample (FP, BP, WG, update) on ``core``; return what it produced."""
    rng = random.Random(seed)
    P, T, N, F = core.lanes, case.timesteps, case.neurons, case.fan_in
    chunks, in_chunks = -(-N // P), -(-F // P)
    got = {"events": [[] for _ in range(T)], "grad_in": [[] for _ in range(T)]}
    fp_go, bp_go = [], []

    async def fp_source(ctx):
        while not fp_go:
            await ctx.tick()
        for t in range(T):
            events = case.input_events(t)
            await put_events(ctx, core.fp_i, events, rng=rng, idle=idle,
                             last_on_spike=bool(events) and rng.random() < 0.5)

    async def fp_sink(ctx):
        for events in got["events"]:
            events += await get_events(ctx, core.fp_o, rng=rng, stall=stall)
        ctx.set(core.fp_o.ready, 0)

    async def bp_source(ctx):
        while not bp_go:
            await ctx.tick()
        for t in case.bp_steps():
            g = case.grad_out[t].tolist() + [0.0] * (chunks * P - N)
            await put_lanes(ctx, core.bp_i, fp16.bits(torch.tensor(g)).tolist(), P, rng=rng,
                            idle=idle)

    async def bp_sink(ctx):
        if not bp_input_error:
            return
        for t in case.bp_steps():
            got["grad_in"][t] += await get_lanes(ctx, core.bp_o, in_chunks, P, rng=rng,
                                                 stall=stall)
        ctx.set(core.bp_o.ready, 0)

    async def main(ctx):
        for reg, value in case.registers().items():
            assert not await bus_write(ctx, core, address(Region.REG, reg), value)
        assert not await bus_write(ctx, core, address(Region.REG, Reg.BP_INPUT_ERROR),
                                   int(bp_input_error))
        w_bits = fp16.bits(case.weights)
        for n in range(N):
            for i in range(F):
                addr = w_addr(core, Region.WEIGHT, n, i)
                assert not await bus_write(ctx, core, addr, int(w_bits[n, i]))
        assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND), Command.BEGIN)
        fp_go.append(1)
        await wait_status(ctx, core, Status.FP_DONE)
        got["charges"] = [[await bus_read(ctx, core, s_addr(core, Region.CHARGE, t, n))
                           for n in range(N)] for t in range(T)]
        got["spikes"] = [[await bus_read(ctx, core, s_addr(core, Region.SPIKE, t, n))
                          for n in range(N)] for t in range(T)]
        bp_go.append(1)
        await wait_status(ctx, core, Status.BP_DONE)
        got["dw"] = [[await bus_read(ctx, core, w_addr(core, Region.GRAD, n, i))
                      for i in range(F)] for n in range(N)]
        got["counters"] = {}
        for c in Counter:
            lo = await bus_read(ctx, core, address(Region.COUNTER, 2 * c))
            hi = await bus_read(ctx, core, address(Region.COUNTER, 2 * c + 1))
            got["counters"][c.name.lower()] = hi << 16 | lo
        assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND), Command.UPDATE)
        await wait_idle(ctx, core)
        got["weights"] = [[await bus_read(ctx, core, w_addr(core, Region.WEIGHT, n, i))
                           for i in range(F)] for n in range(N)]
        got["dw_after"] = [await bus_read(ctx, core, w_addr(core, Region.GRAD, n, 0))
                           for n in range(N)]
        got["errors"] = await bus_read(ctx, core, address(Region.REG, Reg.ERRORS))

    simulate(core, main, background=[fp_source, fp_sink, bp_source, bp_sink])
    return got


check = check_case


@pytest.mark.parametrize("neurons, fan_in, lanes, timesteps, rate", [
    (4, 4, 1, 3, 0.5),
    (8, 16, 4, 4, 0.3),
    (12, 8, 4, 3, 1.0),
    pytest.param(16, 32, 8, 2, 0.05, marks=pytest.mark.slow),
    (8, 8, 2, 2, 0.0),
])
def test_core_matches_golden(neurons, fan_in, lanes, timesteps, rate):
    case = LayerCase.random(neurons=neurons, fan_in=fan_in, timesteps=timesteps, rate=rate,
                            seed=neurons * 7 + fan_in)
    core = Core(neurons=neurons, fan_in=fan_in, lanes=lanes, timesteps=timesteps)
    check(case, run_sample(case, core, seed=3))


@pytest.mark.parametrize("surrogate", ["sigmoid", *(pytest.param(s, marks=pytest.mark.slow)
                                                     for s in ("atan", "rect",
                                                               "piecewise_quadratic"))])
@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_core_surrogates_and_resets(surrogate, reset):
    lif = LIFParams(reset=reset, surrogate=Surrogate(surrogate), v_reset=-0.25 * (reset == "hard"))
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=3, rate=0.4, seed=11, lif=lif)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=4, reset=reset,
                surrogate=Surrogate(surrogate))
    check(case, run_sample(case, core, seed=5))


@pytest.mark.parametrize("reset", ["hard", pytest.param("soft", marks=pytest.mark.slow)])
def test_core_without_detached_reset(reset):
    lif = LIFParams(reset=reset, detach_reset=False, surrogate=Surrogate("atan"), tau=3.0)
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=4, rate=0.4, seed=17, lif=lif)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=4, reset=reset, detach_reset=False,
                surrogate=Surrogate("atan"))
    check(case, run_sample(case, core, seed=8))


@pytest.mark.parametrize("tokens, timesteps, reset, detach", [
    (3, 2, "hard", True),
    pytest.param(4, 2, "soft", False, marks=pytest.mark.slow),
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
    got = run_sample(case, core, seed=tokens)
    check(case, got)
    # The tokens are not one neuron's timesteps: the same stream without them differs.
    flat = LayerCase(case.weights, case.spikes_in, case.grad_out, lif, case.lr)
    assert fp16.bits(flat.expected_charges).tolist() != got["charges"][:case.timesteps]
    assert fp16.bits(flat.expected_dw).tolist() != got["dw"]


def test_core_with_smaller_active_layer():
    case = LayerCase.random(neurons=5, fan_in=6, timesteps=2, rate=0.5, seed=2)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=3)
    check(case, run_sample(case, core, seed=9))


def test_core_without_input_error():
    case = LayerCase.random(neurons=8, fan_in=8, timesteps=2, rate=0.5, seed=4)
    core = Core(neurons=8, fan_in=8, lanes=4, timesteps=2)
    check(case, run_sample(case, core, seed=1, bp_input_error=False), bp_input_error=False)


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
    w = w_addr(core, Region.WEIGHT, 3, 2)

    async def testbench(ctx):
        def reg(r):
            return address(Region.REG, r)

        async def burst(events):
            """Events back to back (``valid`` held high), then the forward pass's end."""
            for index, spike, last in events:
                ctx.set(core.fp_i.valid, 1)
                ctx.set(core.fp_i.payload, {"index": index, "spike": spike, "last": last})
                await ctx.tick().until(core.fp_i.ready)
            ctx.set(core.fp_i.valid, 0)
            await wait_status(ctx, core, Status.FP_DONE)

        assert not await bus_write(ctx, core, w, 0x3C00)
        assert not await bus_write(ctx, core, reg(Reg.INPUTS), 6)
        for bad_addr, value in [
            (w_addr(core, Region.WEIGHT, 8, 0), 1),   # neuron out of range
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
            (address(Region.REG, Reg.SHORTCUT), 3),                # none, source or target
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
        assert await bus_read(ctx, core, reg(Reg.SHORTCUT)) == Shortcut.NONE
        assert not await bus_write(ctx, core, reg(Reg.COMMAND), Command.BEGIN)
        assert await bus_write(ctx, core, w, 0x4000)                  # busy: refused
        assert await bus_write(ctx, core, reg(Reg.COMMAND), Command.UPDATE)
        ctx.set(core.fp_o.ready, 1)
        await burst([(3, 1, 0), (2, 1, 0), (6, 1, 0), (5, 1, 1), (0, 0, 1)])
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
        await burst([(1, 1, 0), (3, 1, 0), (2, 1, 1), (0, 1, 0), (2, 1, 1), (0, 0, 1), (1, 1, 1)])
        assert await bus_read(ctx, core, reg(Reg.ERRORS)) == ErrorFlag.EVENT_RANGE
        lo = await bus_read(ctx, core, address(Region.COUNTER, 2 * Counter.FP_EVENTS))
        assert lo == 2 + 5                  # inputs 1, 2, 3 and 5, then 4 in timestep 1

    simulate(core, testbench)


class _ShortcutPair(Elaboratable):
    """Core ``a`` feeding core ``b``, with the membrane shortcut from ``a`` to ``b`` through a
    FIFO each way (as the SoC joins them)."""

    def __init__(self, a: Core, b: Core, depth: int):
        self.a, self.b, self.depth = a, b, depth

    def elaborate(self, platform):
        m = Module()
        m.submodules.a, m.submodules.b = a, b = self.a, self.b
        for name, src, dst in (("fwd", a.sc_o, b.sc_i), ("bwd", b.sc_o, a.sc_i)):
            m.submodules[name] = q = fifo.SyncFIFOBuffered(width=16 * a.lanes + 1,
                                                           depth=self.depth)
            m.d.comb += [q.w_en.eq(src.valid), q.w_data.eq(src.payload), src.ready.eq(q.w_rdy),
                         dst.valid.eq(q.r_rdy), dst.payload.eq(q.r_data), q.r_en.eq(dst.ready)]
        m.d.comb += [b.fp_i.valid.eq(a.fp_o.valid), b.fp_i.payload.eq(a.fp_o.payload),
                     a.fp_o.ready.eq(b.fp_i.ready),
                     a.bp_i.valid.eq(b.bp_o.valid), a.bp_i.payload.eq(b.bp_o.payload),
                     b.bp_o.ready.eq(a.bp_i.ready)]
        return m


@pytest.mark.parametrize("tokens, timesteps, lanes, seed", [
    (3, 2, 2, 1), pytest.param(1, 3, 4, 2, marks=pytest.mark.slow)])
def test_membrane_shortcut_between_two_cores(tokens, timesteps, lanes, seed):
    """``x1 = x0 + W_b·s0``: b's current starts from a's, and a's δX gets b's. Forward spikes,
    b's charges, both gradients and both updated weights bit-exact."""
    a16, lif, lr = FP16(), LIFParams(), 0.125
    D, F, T, R = 8, 6, timesteps, tokens
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(T, 1, R, F, generator=gen) < 0.5).float()
    wa = fp16.to_fp16(torch.randn(D, F, generator=gen) * 0.6 + 0.1)
    wb = fp16.to_fp16(torch.randn(D, D, generator=gen) * 0.5)
    x0 = linear_forward(x, wa, a16)
    s0, h0 = lif_forward(x0, lif, a16)
    s1, h1 = lif_forward(a16.add(x0, linear_forward(s0, wb, a16)), lif, a16)
    g1 = fp16.to_fp16(torch.randn(T, 1, R, D, generator=gen) * 0.25)
    dx1 = lif_backward(g1, h1, s1, lif, a16)
    dx0_own = lif_backward(linear_backward(dx1, wb, a16), h0, s0, lif, a16)
    dx0 = a16.add(dx0_own, dx1)
    dwa, dwb = linear_weight_grad(dx0, x, a16), linear_weight_grad(dx1, s0, a16)
    # stimulus under which the shortcut shows, both ways
    assert s0.any() and s1.any() and (dx1 != 0).any() and (dx0_own != 0).any()
    assert not torch.equal(s1, lif_forward(linear_forward(s0, wb, a16), lif, a16)[0])
    assert not torch.equal(fp16.bits(dwa), fp16.bits(linear_weight_grad(dx0_own, x, a16)))
    steps = T * R

    def stepwise(v):
        return v.reshape(steps, v.shape[-1])

    a = Core(neurons=D, fan_in=8, lanes=lanes, timesteps=steps)     # 6 of 8 inputs active
    b = Core(neurons=D, fan_in=D, lanes=lanes, timesteps=steps)
    dut = _ShortcutPair(a, b, depth=R * D // lanes)
    rng = random.Random(seed)
    got = [[] for _ in range(steps)]
    go = []

    async def fp_source(ctx):
        while not go:
            await ctx.tick()
        for t in range(steps):
            events = [int(i) for i in torch.nonzero(stepwise(x)[t]).flatten()]
            await put_events(ctx, a.fp_i, events, rng=rng, idle=0.3)

    async def fp_sink(ctx):
        for events in got:
            events += await get_events(ctx, b.fp_o, rng=rng, stall=0.3)
        ctx.set(b.fp_o.ready, 0)

    async def main(ctx):
        for core, w, fan_in, role in ((a, wa, F, Shortcut.SOURCE), (b, wb, D, Shortcut.TARGET)):
            case = LayerCase(w, torch.zeros(steps, fan_in), torch.zeros(steps, D), lif, lr, R)
            regs = {**case.registers(), Reg.SHORTCUT: role, Reg.BP_INPUT_ERROR: int(core is b)}
            for reg, value in regs.items():
                assert not await bus_write(ctx, core, address(Region.REG, reg), value)
            assert await bus_read(ctx, core, address(Region.REG, Reg.SHORTCUT)) == role
            for (n, i), value in zip(torch.cartesian_prod(torch.arange(D), torch.arange(fan_in))
                                     .tolist(), fp16.bits(w).flatten().tolist(), strict=True):
                assert not await bus_write(ctx, core, w_addr(core, Region.WEIGHT, n, i), value)
            assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND),
                                       Command.BEGIN)
        go.append(1)
        await wait_status(ctx, a, Status.FP_DONE)
        await wait_status(ctx, b, Status.FP_DONE)
        charges = [[await bus_read(ctx, b, s_addr(b, Region.CHARGE, t, n))
                    for n in range(D)] for t in range(steps)]
        assert charges == fp16.bits(stepwise(h1)).tolist()
        for t in case.bp_steps():
            await put_lanes(ctx, b.bp_i, fp16.bits(stepwise(g1)[t]).tolist(), lanes, rng=rng,
                            idle=0.3)
        await wait_status(ctx, a, Status.BP_DONE)
        for core, dw, w, fan_in in ((a, dwa, wa, F), (b, dwb, wb, D)):
            grads = [[await bus_read(ctx, core, w_addr(core, Region.GRAD, n, i))
                      for i in range(fan_in)] for n in range(D)]
            assert grads == fp16.bits(dw).tolist()
            assert not await bus_write(ctx, core, address(Region.REG, Reg.COMMAND),
                                       Command.UPDATE)
            await wait_idle(ctx, core)
            weights = [[await bus_read(ctx, core, w_addr(core, Region.WEIGHT, n, i))
                        for i in range(fan_in)] for n in range(D)]
            assert weights == fp16.bits(sgd_update(w, dw, lr, a16)).tolist()
            assert await bus_read(ctx, core, address(Region.REG, Reg.ERRORS)) == 0

    simulate(dut, main, background=[fp_source, fp_sink])
    assert got == [[int(n) for n in torch.nonzero(s).flatten()] for s in stepwise(s1)]
