# SPDX-License-Identifier: Apache-2.0
"""The attention block on a token-wise core's streams, bit for bit against the golden model."""
import random

import pytest
import torch

from spikeforge.golden import fp16
from spikeforge.hw.attention import AttentionBlock
from spikeforge.tb.amaranth import (
    get_events,
    get_lanes,
    put,
    put_events,
    put_lanes,
    simulate,
    simulator,
)
from spikeforge.tb.qk import QKCase, check_block


def run_samples(block: AttentionBlock, cases: list[QKCase], seed: int, idle=0.3, stall=0.3,
                max_cycles: int = 40_000, forward_only=()):
    """Run ``cases`` back to back; per case, the events of each step and the [δQ; δK] beats
    (none for the cases numbered in ``forward_only``, which run forward only)."""
    P = block.lanes
    rng = random.Random(seed)
    got = []

    def events(case, t, r):
        D = case.channels
        q = [int(i) for i in torch.nonzero(case.q[t, r]).flatten()]
        k = [D + int(i) for i in torch.nonzero(case.k[t, r]).flatten()]
        return q + k

    def bp_order(case):
        return [(t, r) for t in reversed(range(case.timesteps)) for r in range(case.tokens)]

    done = [0]          # cases whose backward pass has been taken whole

    async def fp_source(ctx):
        for n, case in enumerate(cases):
            while done[0] < n:
                await ctx.tick()
            for name, value in case.config().items():
                ctx.set(getattr(block, name), value)
            got.append({"events": {}, "bp": {}})
            for t in range(case.timesteps):
                for r in range(case.tokens):
                    await put_events(ctx, block.fp_i, events(case, t, r), rng=rng, idle=idle)

    async def fp_sink(ctx):
        for n, case in enumerate(cases):
            for t in range(case.timesteps):
                for r in range(case.tokens):
                    got[n]["events"][t, r] = await get_events(ctx, block.fp_o, rng=rng,
                                                              stall=stall)
            ctx.set(block.fp_o.ready, 0)

    async def bp_source(ctx):
        for n, case in enumerate(cases):
            while len(got) <= n or len(got[n]["events"]) < case.timesteps * case.tokens:
                await ctx.tick()
            if n in forward_only:
                continue
            for t, r in bp_order(case):
                await put_lanes(ctx, block.bp_i, fp16.bits(case.g[t, r]).tolist(), P, rng=rng,
                                idle=idle)

    async def bp_sink(ctx):
        for n, case in enumerate(cases):
            D = case.channels
            if n in forward_only:
                while len(got) <= n or len(got[n]["events"]) < case.timesteps * case.tokens:
                    await ctx.tick()
                got[n]["error"] = ctx.get(block.error)
                done[0] = n + 1
                continue
            for t, r in bp_order(case):
                got[n]["bp"][t, r] = await get_lanes(ctx, block.bp_o, 2 * D // P, P, rng=rng,
                                                     stall=stall)
            ctx.set(block.bp_o.ready, 0)
            for _ in range(3):
                await ctx.tick()
            got[n]["error"] = ctx.get(block.error)
            done[0] = n + 1

    sim = simulator(block, fp_source, fp_sink, bp_source, bp_sink)
    for chunk in range(1, max_cycles // 500 + 1):        # until done, or a deadlock shows
        sim.run_until(5e-6 * chunk)
        if done[0] == len(cases):
            break
    assert done[0] == len(cases), f"{done[0]} of {len(cases)} samples through"
    return got


@pytest.mark.parametrize("kind", ["token", "channel"])
@pytest.mark.parametrize("lanes, tokens, channels, timesteps", [
    (4, 7, 8, 3),
    (2, 5, 6, 2),
    (4, 1, 4, 2),
])
def test_attention_block_matches_golden(kind, lanes, tokens, channels, timesteps):
    block = AttentionBlock(lanes=lanes, tokens=8, channels=8, timesteps=3)
    cases = [QKCase.random(tokens=tokens, channels=channels, timesteps=timesteps, rate=rate,
                           kind=kind, seed=seed)
             for seed, rate in ((1, 0.5), (2, 0.3))]
    results = run_samples(block, cases, seed=tokens * channels)
    for case, got in zip(cases, results, strict=True):
        check_block(case, got)
    assert any(case.expected_x.any() and (case.expected_dq != 0).any()
               and (case.expected_dk != 0).any() for case in cases)


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_attention_block_silent_and_saturated_samples(kind):
    """Spike rates 0 and 1 back to back, after a sample of rate 0.5: nothing left behind."""
    block = AttentionBlock(lanes=4, tokens=8, channels=8, timesteps=3)
    cases = [QKCase.random(tokens=6, channels=8, timesteps=2, rate=rate, kind=kind, seed=seed)
             for seed, rate in ((3, 0.5), (4, 0.0), (5, 1.0))]
    results = run_samples(block, cases, seed=7)
    for case, got in zip(cases, results, strict=True):
        check_block(case, got)
    assert not cases[1].expected_x.any() and cases[2].expected_x.any()


@pytest.mark.parametrize("kind", ["token", "channel"])
def test_attention_block_inference_samples_skip_the_backward_pass(kind):
    """Samples run forward only (inference) between trained ones: the next sample's events
    start it, and the trained samples after them are still the golden model's bits."""
    block = AttentionBlock(lanes=2, tokens=4, channels=4, timesteps=3)
    cases = [QKCase.random(tokens=3, channels=4, timesteps=3, rate=0.5, kind=kind, seed=seed)
             for seed in range(10, 15)]
    results = run_samples(block, cases, seed=3, forward_only={0, 1, 3})
    for n, (case, got) in enumerate(zip(cases, results, strict=True)):
        if n in (0, 1, 3):
            for t in range(case.timesteps):
                for r in range(case.tokens):
                    expected = [int(i) for i in torch.nonzero(case.expected_x[t, r]).flatten()]
                    assert got["events"][t, r] == expected, (n, t, r)
            assert got["error"] == 0
        else:
            check_block(case, got)
    assert all(case.expected_x.any() for case in cases)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_attention_block_flags_an_event_out_of_range_and_refuses_odd_channels():
    block = AttentionBlock(lanes=1, tokens=2, channels=2, timesteps=1)

    async def bench(ctx):
        ctx.set(block.c_tokens, 1)
        ctx.set(block.c_channels, 1)        # events 0 (Q) and 1 (K)
        ctx.set(block.c_timesteps, 1)
        for index, spike, last, error in [(1, 1, 0, 0), (2, 1, 0, 1), (0, 0, 1, 1)]:
            await put(ctx, block.fp_i, {"index": index, "spike": spike, "last": last})
            await ctx.tick()
            assert ctx.get(block.error) == error, (index, spike, last)

    simulate(block, bench)
    with pytest.raises(ValueError, match=r"^Attention block channels must be a multiple of the "
                                         r"lane count 4, not 6$"):
        AttentionBlock(lanes=4, tokens=8, channels=6, timesteps=2)
