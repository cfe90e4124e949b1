# SPDX-License-Identifier: Apache-2.0
import gc
import random

import pytest

from spikeforge.golden.lif import LIFParams
from spikeforge.golden.surrogate import Surrogate
from spikeforge.hw.qk import QKAttention
from spikeforge.tb.amaranth import simulate
from spikeforge.tb.qk import QKCase, check


def run_samples(dut, cases, *, lanes, seed=1, idle=0.3, stall=0.3, forward_only=()):
    """Run ``cases`` one after the other through ``dut`` (those at ``forward_only`` without
    their backward pass); return what came out of each."""
    rng = random.Random(seed)
    results = []

    async def testbench(ctx):
        for n, case in enumerate(cases):
            for name, value in case.config().items():
                ctx.set(getattr(dut, name), value)
            got = {"x": [], "dk": [], "dq": []}
            await run_one(ctx, got, case.fp_beats(lanes), case.bp_beats(lanes),
                          n not in forward_only)
            results.append((case, got))

    async def run_one(ctx, got, fp, bp, backward):
        P = lanes
        queue = [q | k << P | last << 2 * P for q, k, last in fp]
        while len(got["x"]) < len(fp):
            if queue and rng.random() >= idle:
                ctx.set(dut.fp_i.valid, 1)
                ctx.set(dut.fp_i.payload.as_value(), queue[0])
            else:
                ctx.set(dut.fp_i.valid, 0)
            ready = rng.random() >= stall
            ctx.set(dut.fp_o.ready, ready)
            _, _, iv, ir, ov, ow = await ctx.tick().sample(
                dut.fp_i.valid, dut.fp_i.ready, dut.fp_o.valid, dut.fp_o.payload.as_value())
            if iv and ir:
                queue.pop(0)
            if ready and ov:
                got["x"].append((ow & ((1 << P) - 1), ow >> P & 1))
        ctx.set(dut.fp_i.valid, 0)
        ctx.set(dut.fp_o.ready, 0)
        await ctx.tick().until(dut.fp_done)
        got["error"] = ctx.get(dut.error)
        if not backward:
            return
        queue = [w | last << 16 * P for w, last in bp]
        while len(got["dk"]) < len(bp) or len(got["dq"]) < len(bp):
            if queue and rng.random() >= idle:
                ctx.set(dut.bp_i.valid, 1)
                ctx.set(dut.bp_i.payload.as_value(), queue[0])
            else:
                ctx.set(dut.bp_i.valid, 0)
            rk, rq = rng.random() >= stall, rng.random() >= stall
            ctx.set(dut.dk_o.ready, rk)
            ctx.set(dut.dq_o.ready, rq)
            _, _, iv, ir, kv, kw, qv, qw = await ctx.tick().sample(
                dut.bp_i.valid, dut.bp_i.ready, dut.dk_o.valid, dut.dk_o.payload.as_value(),
                dut.dq_o.valid, dut.dq_o.payload.as_value())
            if iv and ir:
                queue.pop(0)
            if rk and kv:
                got["dk"].append((kw & ((1 << 16 * P) - 1), kw >> 16 * P & 1))
            if rq and qv:
                got["dq"].append((qw & ((1 << 16 * P) - 1), qw >> 16 * P & 1))
        ctx.set(dut.bp_i.valid, 0)
        ctx.set(dut.dk_o.ready, 0)
        ctx.set(dut.dq_o.ready, 0)
        await ctx.tick().until(dut.bp_done)
        got["error"] = ctx.get(dut.error)

    simulate(dut, testbench)
    return results


@pytest.mark.parametrize("lanes, tokens, channels", [(1, 3, 2), (2, 5, 3), (4, 4, 9)])
def test_small_cases_bit_exact(lanes, tokens, channels):
    dut = QKAttention(lanes=lanes, tokens=tokens, channels=channels, timesteps=3)
    cases = [QKCase.random(tokens=tokens, channels=channels, timesteps=t, rate=rate, kind=kind,
                           seed=s)
             for s, (t, rate, kind) in enumerate([(3, 0.5, "token"), (2, 0.3, "channel"),
                                                  (1, 1.0, "token"), (3, 0.7, "channel")])]
    nonzero = {"x": 0, "dk": 0, "dq": 0}
    for case, got in run_samples(dut, cases, lanes=lanes):
        check(case, got, lanes)
        for key, value in case.nontrivial().items():
            nonzero[key] += value
    assert all(nonzero.values()), nonzero


@pytest.mark.parametrize("reset, detach_reset, v_reset, surrogate", [
    ("soft", True, 0.0, "atan"), ("soft", False, 0.0, "rect"),
    ("hard", False, -0.25, "piecewise_quadratic"),
])
def test_resets_leaks_and_surrogates(reset, detach_reset, v_reset, surrogate):
    lif = LIFParams(v_th=0.5, tau=3.0, reset=reset, detach_reset=detach_reset, v_reset=v_reset,
                    surrogate=surrogate)
    dut = QKAttention(lanes=2, tokens=3, channels=4, timesteps=4, reset=reset,
                      detach_reset=detach_reset, surrogate=Surrogate(surrogate))
    cases = [QKCase.random(tokens=3, channels=4, timesteps=4, rate=0.4, kind=kind, seed=9,
                           lif=lif) for kind in ("token", "channel")]
    dq = 0
    for case, got in run_samples(dut, cases, lanes=2):
        check(case, got, 2)
        dq += case.nontrivial()["dq"]
    assert dq


def test_forward_only_then_next_sample():
    dut = QKAttention(lanes=4, tokens=5, channels=6, timesteps=3)
    cases = [QKCase.random(tokens=5, channels=6, timesteps=3, rate=0.5, kind="token", seed=1),
             QKCase.random(tokens=4, channels=6, timesteps=2, rate=0.3, kind="channel", seed=2),
             QKCase.random(tokens=5, channels=3, timesteps=3, rate=0.6, kind="token", seed=3)]
    for n, (case, got) in enumerate(run_samples(dut, cases, lanes=4, forward_only=(0, 1))):
        check(case, got, 4, backward=n == 2)


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 3}, r"^Lane count must be a power of two between 1 and 64, not 3$"),
    ({"lanes": True}, r"^Lane count must be a power of two between 1 and 64, not True$"),
    ({"tokens": 0}, r"^Attention tokens must be an integer between 1 and 2048 \(spike counts "
                    r"are exact in binary16 up to 2048\), not 0$"),
    ({"channels": 4096}, r"^Attention channels must be an integer between 1 and 2048"),
    ({"timesteps": 0}, r"^Attention timesteps must be an integer between 1 and 4096, not 0$"),
    ({"reset": "none"}, r"^Attention reset must be 'hard' or 'soft', not 'none'$"),
    ({"detach_reset": 1}, r"^Attention detach_reset must be True or False, not 1$"),
    ({"surrogate": "sigmoid"}, r"^Attention surrogate must be a spikeforge Surrogate, "
                               r"not 'sigmoid'$"),
])
@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_constructor_errors(kwargs, message):
    params = {"lanes": 4, "tokens": 8, "channels": 8, "timesteps": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        QKAttention(**params)
    gc.collect()


def test_one_timestep_at_most():
    dut = QKAttention(lanes=2, tokens=3, channels=3, timesteps=1)
    cases = [QKCase.random(tokens=3, channels=n, timesteps=1, rate=0.6, kind=kind, seed=4)
             for n, kind in ((3, "token"), (2, "channel"))]
    for case, got in run_samples(dut, cases, lanes=2):
        check(case, got, 2)


def run_forward(dut, case, lanes, tamper=False):
    """Drive ``case``'s forward beats back to back into an always-ready sink; return the cycles
    of the accepted input beats, of the first output beat and the error flag."""
    result = {"accepted": []}

    async def testbench(ctx):
        for name, value in case.config().items():
            ctx.set(getattr(dut, name), value)
        ctx.set(dut.fp_o.ready, 1)
        beats = [q | k << lanes | (0 if tamper else last) << 2 * lanes
                 for q, k, last in case.fp_beats(lanes)]
        cycle = 0
        while "first_out" not in result or beats:
            ctx.set(dut.fp_i.valid, bool(beats))
            if beats:
                ctx.set(dut.fp_i.payload.as_value(), beats[0])
            _, _, ready, out = await ctx.tick().sample(dut.fp_i.ready, dut.fp_o.valid)
            cycle += 1
            if beats and ready:
                result["accepted"].append(cycle)
                beats.pop(0)
            if out and "first_out" not in result:
                result["first_out"] = cycle
        ctx.set(dut.fp_i.valid, 0)
        await ctx.tick().until(dut.fp_done)
        result["error"] = ctx.get(dut.error)

    simulate(dut, testbench)
    return result


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_row_latency_and_one_beat_a_cycle(reset):
    dut = QKAttention(lanes=2, tokens=4, channels=16, timesteps=2, reset=reset)
    case = QKCase.random(tokens=4, channels=16, timesteps=2, rate=1.0, kind="token", seed=1)
    result = run_forward(dut, case, 2)
    accepted = result["accepted"]
    assert accepted == list(range(accepted[0], accepted[0] + len(accepted)))
    assert result["first_out"] - accepted[7] == dut.latency
    assert result["error"] == 0


def test_a_wrong_last_is_flagged():
    dut = QKAttention(lanes=2, tokens=3, channels=3, timesteps=2)
    case = QKCase.random(tokens=3, channels=3, timesteps=2, rate=0.5, kind="channel", seed=2)
    assert run_forward(dut, case, 2, tamper=True)["error"] == 1
