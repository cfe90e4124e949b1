# SPDX-License-Identifier: Apache-2.0
"""The components of the Q-K unit and of the attention block, each on its own."""
import random
import struct
import zlib

import pytest
import torch
from amaranth.hdl import Elaboratable, Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.hw import attention_parts as block_parts
from spikeforge.hw import qk_parts as unit_parts
from spikeforge.hw.core import error_layout
from spikeforge.hw.lanes import LowestSet


def run(dut, *benches, clock=True):
    sim = Simulator(dut)
    if clock:
        sim.add_clock(1e-8)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


def bits_of(value, count):
    return [value >> k & 1 for k in range(count)]


def half(x):
    return struct.unpack("<H", struct.pack("<e", x))[0]


def fp16_add(a, b):
    return int(fp16.bits(fp16.add(fp16.from_bits(torch.tensor(a)),
                                  fp16.from_bits(torch.tensor(b)))))


def random_half(rng):
    return half(rng.choice([-1, 1]) * rng.uniform(0.01, 4)) if rng.random() > 0.2 else 0


def lanes_of(word, lanes):
    return [word >> 16 * k & 0xFFFF for k in range(lanes)]


def pack(values, width=16):
    return sum(v << width * k for k, v in enumerate(values))


class Bench(Elaboratable):
    """Components side by side, wired by ``wire(m)``; the testbench drives the rest."""

    def __init__(self, wire=None, **parts):
        self.__dict__.update(parts)
        self._parts, self._wire = parts, wire

    def elaborate(self, platform):
        m = Module()
        for name, part in self._parts.items():
            m.submodules[name] = part
        if self._wire:
            self._wire(m)
        return m


# ---- Q-K unit ----------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [1, 4, 5])
def test_stream_fifo_keeps_order_under_backpressure(depth):
    dut = unit_parts.StreamFIFO(error_layout(2), depth)
    rng = random.Random(depth)
    words = [rng.getrandbits(33) for _ in range(150)]
    got = []

    async def source(ctx):
        for word in words:
            while rng.random() < 0.3:
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.as_value(), word)
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def sink(ctx):
        while len(got) < len(words):
            ready = rng.random() >= 0.3
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload, level = await ctx.tick().sample(
                dut.o.valid, dut.o.payload.as_value(), dut.level)
            assert level <= depth
            if ready and valid:
                got.append(payload)

    run(dut, source, sink)
    assert got == words


def test_geometry_follows_the_attention_kind():
    dut = unit_parts.QKGeometry(lanes=4, longest=11, timesteps=5)
    rng = random.Random(2)

    async def bench(ctx):
        for _ in range(40):
            channel, n, d, t = rng.randint(0, 1), rng.randint(1, 11), rng.randint(1, 11), \
                rng.randint(1, 5)
            for port, value in ((dut.channel, channel), (dut.tokens, n), (dut.channels, d),
                                (dut.timesteps, t)):
                ctx.set(port, value)
            i, j = (d, n) if channel else (n, d)
            o = dut.o
            assert (ctx.get(o.n_i), ctx.get(o.n_j), ctx.get(o.groups), ctx.get(o.chunks),
                    ctx.get(o.j_pad), ctx.get(o.n_t)) == (i, j, -(-i // 4), -(-j // 4),
                                                         -(-j // 4) * 4, t)

    run(dut, bench, clock=False)


def test_sequencer_against_a_model():
    dut = unit_parts.QKSequencer()
    rng = random.Random(3)

    async def bench(ctx):
        state, fp_done, bp_done, error = "IDLE", 0, 0, 0
        seen = set()
        for _ in range(2000):
            ins = {name: int(rng.random() < 0.3) for name in
                   ("fp_valid", "bp_valid", "fwd_finish", "bwd_finish", "flag")}
            for name, value in ins.items():
                ctx.set(getattr(dut, name), value)
            fwd_start = state == "IDLE" and ins["fp_valid"]
            bwd_start = state == "IDLE" and not fwd_start and ins["bp_valid"] and fp_done \
                and not bp_done
            assert (ctx.get(dut.fwd_start), ctx.get(dut.bwd_start), ctx.get(dut.busy),
                    ctx.get(dut.forward)) == (fwd_start, bwd_start, state != "IDLE",
                                              state == "FWD")
            assert (ctx.get(dut.fp_done), ctx.get(dut.bp_done), ctx.get(dut.error)) == \
                (fp_done, bp_done, error)
            if fwd_start:
                state, fp_done, bp_done, error = "FWD", 0, 0, 0
            elif bwd_start:
                state = "BWD"
            elif state == "FWD" and ins["fwd_finish"]:
                state, fp_done = "IDLE", 1
            elif state == "BWD" and ins["bwd_finish"]:
                state, bp_done = "IDLE", 1
            error |= ins["flag"]
            seen.add(state)
            await ctx.tick()
        assert seen == {"IDLE", "FWD", "BWD"}

    run(dut, bench)


def k_layout(P, NI, J, t, i, j):
    """The word of element ``(i, j)`` of timestep ``t`` in :class:`KStore`."""
    groups, j_pad = -(-NI // P), -(-J // P) * P
    return t * groups * j_pad + (i // P) * j_pad + j


@pytest.mark.parametrize("P, NI, J", [(1, 3, 2), (4, 6, 7), (8, 9, 17)])
def test_k_store_reads_rows_and_columns(P, NI, J):
    T = 2
    words = T * -(-NI // P) * -(-J // P) * P
    dut = unit_parts.KStore(lanes=P, words=words)
    rng = random.Random(P)
    K = [[[rng.randint(0, 1) for _ in range(J)] for _ in range(NI)] for _ in range(T)]
    chunks = -(-J // P)

    async def bench(ctx):
        for t in range(T):
            for i in range(NI):
                for c in range(chunks):
                    data = [K[t][i][c * P + ln] if c * P + ln < J else 0 for ln in range(P)]
                    ctx.set(dut.w.en, 1)
                    ctx.set(dut.w.base, k_layout(P, NI, J, t, i, c * P))
                    ctx.set(dut.w.rot, i % P)
                    ctx.set(dut.w.data, pack(data, 1))
                    await ctx.tick()
        ctx.set(dut.w.en, 0)
        ctx.set(dut.rows, 1)
        for t in range(T):
            for i in range(NI):
                for c in range(chunks):
                    ctx.set(dut.row_rd.base, k_layout(P, NI, J, t, i, c * P))
                    ctx.set(dut.row_rd.rot, i % P)
                    await ctx.tick()
                    got = bits_of(ctx.get(dut.rd_data), P)
                    assert [b for ln, b in enumerate(got) if c * P + ln < J] == \
                        K[t][i][c * P:c * P + P], (t, i, c)
        ctx.set(dut.rows, 0)
        for t in range(T):
            for j in range(J):
                for g in range(-(-NI // P)):
                    ctx.set(dut.col_rd.base, k_layout(P, NI, J, t, g * P, j))
                    ctx.set(dut.col_rd.rot, j % P)
                    await ctx.tick()
                    got = bits_of(ctx.get(dut.rd_data), P)
                    assert [b for ln, b in enumerate(got) if g * P + ln < NI] == \
                        [K[t][i][j] for i in range(g * P, min(g * P + P, NI))], (t, j, g)

    run(dut, bench)


def test_spike_matrix_writes_bits_and_reads_timesteps():
    T, W = 3, 8
    dut = unit_parts.SpikeMatrix(timesteps=T, width=W)
    rng = random.Random(4)
    model = [[0] * W for _ in range(T)]

    async def bench(ctx):
        for _ in range(100):
            t, i, s = rng.randrange(T), rng.randrange(W), rng.randint(0, 1)
            model[t][i] = s
            for port, value in ((dut.w_en, 1), (dut.w_t, t), (dut.w_i, i), (dut.w_s, s)):
                ctx.set(port, value)
            await ctx.tick()
            ctx.set(dut.w_en, 0)
            a, b = rng.randrange(T), rng.randrange(T)
            ctx.set(dut.rd0_addr, a)
            ctx.set(dut.rd1_addr, b)
            await ctx.tick()
            assert bits_of(ctx.get(dut.rd0_data), W) == model[a]
            assert bits_of(ctx.get(dut.rd1_data), W) == model[b]

    run(dut, bench)


def test_count_to_fp16_is_exact_up_to_2048():
    dut = unit_parts.CountToFP16()

    async def bench(ctx):
        for n in range(2049):
            ctx.set(dut.i, n)
            assert ctx.get(dut.o) == half(float(n)), n

    run(dut, bench, clock=False)


def set_geometry(ctx, geo, P, NI, J, T):
    chunks = -(-J // P)
    for name, value in (("n_i", NI), ("n_j", J), ("groups", -(-NI // P)), ("chunks", chunks),
                        ("j_pad", chunks * P), ("n_t", T)):
        ctx.set(getattr(geo, name), value)


async def pulse(ctx, port):
    ctx.set(port, 1)
    await ctx.tick()
    ctx.set(port, 0)


@pytest.mark.parametrize("P, NI, J", [(1, 3, 2), (2, 5, 3), (4, 6, 9)])
def test_spike_rows_count_rows_and_store_k(P, NI, J):
    T, L = 3, 4
    depth, IM = L + 6, max(NI, J)
    groups, chunks = -(-NI // P), -(-J // P)
    words = T * (-(-IM // P)) ** 2 * P
    dut = unit_parts.SpikeRows(lanes=P, longest=IM, timesteps=T, words=words, lif_latency=L,
                               depth=depth)
    rng = random.Random(NI * J)
    beats, rows, writes = [], [], []
    for t in range(T):
        for i in range(NI):
            count = 0
            for c in range(chunks):
                jmask = sum(1 << k for k in range(P) if c * P + k < J)
                q, k = rng.getrandbits(P), rng.getrandbits(P)
                beats.append(q | k << P | int(i == NI - 1 and c == chunks - 1) << 2 * P)
                count += bin(q & jmask).count("1")
                writes.append((k_layout(P, NI, J, t, i, c * P), i % P, k & jmask))
            rows.append((count, i, t, t * NI + i))

    async def bench(ctx):
        set_geometry(ctx, dut.geo, P, NI, J, T)
        await pulse(ctx, dut.start)
        ctx.set(dut.enable, 1)
        queue, got_rows, got_writes, done_at, cycle, pending = list(beats), [], [], [], 0, 0
        while len(got_rows) < len(rows) or pending:
            ctx.set(dut.i.valid, bool(queue) and rng.random() > 0.2)
            if queue:
                ctx.set(dut.i.payload.as_value(), queue[0])
            a_level = rng.choice([0, 0, depth - 1])
            ctx.set(dut.a_level, a_level)
            ctx.set(dut.row_done, cycle in done_at)
            pending -= cycle in done_at
            _, _, valid, ready, o_valid, o, k_en, base, rot, data, error = \
                await ctx.tick().sample(dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload,
                                        dut.k.en, dut.k.base, dut.k.rot, dut.k.data, dut.error)
            assert not ready or pending + a_level < depth
            assert not error
            if valid and ready:
                queue.pop(0)
                assert k_en
                got_writes.append((base, rot, data))
            if o_valid:
                got_rows.append((o.count, o.i, o.t, o.h))
                done_at.append(cycle + L + 1)
                pending += 1
            cycle += 1
        assert got_rows == rows
        assert got_writes == writes
        assert (ctx.get(dut.row_base), ctx.get(dut.t_words), ctx.get(dut.h_base)) == \
            (T * groups * chunks * P, groups * chunks * P, T * NI)

    run(dut, bench)


def test_spike_rows_flag_a_wrong_last():
    dut = unit_parts.SpikeRows(lanes=2, longest=4, timesteps=1, words=8, lif_latency=4, depth=10)

    async def bench(ctx):
        set_geometry(ctx, dut.geo, 2, 2, 3, 1)
        await pulse(ctx, dut.start)
        ctx.set(dut.enable, 1)
        flags = []
        for last in (0, 1, 0, 0):      # the second beat ends a row, not the timestep
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.last, last)
            _, _, error = await ctx.tick().sample(dut.error)
            flags.append(error)
        assert flags == [0, 1, 0, 1]

    run(dut, bench)


def lif_case(T, NI, J, reset, seed):
    p = LIFParams(v_th=0.5, tau=2.0 if reset == "hard" else 3.0, reset=reset)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, J + 1, (T, NI), generator=gen).double()
    s, h = lif_forward(counts, p, FP16())
    consts = {f"c_{name}": int(fp16.bits(v)) for name, v in p.constants(FP16()).items()}
    return p, counts, s, h, consts


@pytest.mark.parametrize("reset", ["hard", "soft"])
def test_attention_neurons_are_the_golden_lif(reset):
    T, NI, J = 4, 5, 3
    p, counts, s, h, consts = lif_case(T, NI, J, reset, seed=5)
    assert 0 < s.sum() < s.numel()
    dut = unit_parts.AttentionNeurons(longest=NI, timesteps=T, reset=reset)
    got = {"h": {}, "a": {}, "o": []}

    async def source(ctx):
        for name in ("c_v_th", "c_v_reset", "c_inv_tau"):
            ctx.set(getattr(dut, name), consts[name])
        for t in range(T):
            for i in range(NI):
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"count": int(counts[t, i]), "i": i, "t": t,
                                        "h": t * NI + i})
                await ctx.tick()
            ctx.set(dut.i.valid, 0)
            await ctx.tick().repeat(dut.latency + 1)

    async def sink(ctx):
        while len(got["o"]) < T * NI:
            _, _, h_en, h_addr, h_data, a_en, a_t, a_i, a_s, o_valid, o = \
                await ctx.tick().sample(dut.h_en, dut.h_addr, dut.h_data, dut.a_en, dut.a_t,
                                        dut.a_i, dut.a_s, dut.o.valid, dut.o.payload)
            assert h_en == a_en == o_valid
            if h_en:
                got["h"][h_addr] = h_data
                got["a"][a_t, a_i] = a_s
                got["o"].append(o)

    run(dut, source, sink)
    assert got["h"] == {t * NI + i: int(fp16.bits(h[t, i])) for t in range(T) for i in range(NI)}
    assert got["a"] == {(t, i): int(s[t, i]) for t in range(T) for i in range(NI)}
    assert got["o"] == [int(v) for v in s.flatten()]


def write_k(ctx, store, K, P, NI, J):
    """Write ``K[t][i][j]`` into a :class:`KStore` by rows."""
    async def bench():
        for t, rows in enumerate(K):
            for i in range(NI):
                for c in range(-(-J // P)):
                    data = [rows[i][c * P + ln] if c * P + ln < J else 0 for ln in range(P)]
                    ctx.set(store.w.en, 1)
                    ctx.set(store.w.base, k_layout(P, NI, J, t, i, c * P))
                    ctx.set(store.w.rot, i % P)
                    ctx.set(store.w.data, pack(data, 1))
                    await ctx.tick()
        ctx.set(store.w.en, 0)
    return bench()


@pytest.mark.parametrize("P, NI, J", [(1, 2, 3), (4, 6, 9)])
def test_masked_rows_are_k_rows_where_the_attention_fired(P, NI, J):
    T, IM = 3, max(NI, J)
    words = T * (-(-IM // P)) ** 2 * P
    chunks = -(-J // P)
    rng = random.Random(J)
    K = [[[rng.randint(0, 1) for _ in range(J)] for _ in range(NI)] for _ in range(T)]
    A = [[rng.randint(0, 1) for _ in range(NI)] for _ in range(T)]
    expected = [(pack([K[t][i][c * P + ln] * A[t][i] if c * P + ln < J else 0
                       for ln in range(P)], 1), int(i == NI - 1 and c == chunks - 1))
                for t in range(T) for i in range(NI) for c in range(chunks)]

    def wire(m):
        wiring.connect(m, dut.xrows.k, dut.kstore.row_rd)
        wiring.connect(m, dut.xrows.o, dut.fifo.i)
        m.d.comb += [dut.xrows.k_data.eq(dut.kstore.rd_data), dut.xrows.level.eq(dut.fifo.level),
                     dut.kstore.rows.eq(1)]

    dut = Bench(wire, kstore=unit_parts.KStore(lanes=P, words=words),
                xrows=unit_parts.MaskedRows(lanes=P, longest=IM, timesteps=T, words=words),
                fifo=unit_parts.StreamFIFO(unit_parts.spike_layout(P), 4))
    got = []

    async def source(ctx):
        await write_k(ctx, dut.kstore, K, P, NI, J)
        set_geometry(ctx, dut.xrows.geo, P, NI, J, T)
        await pulse(ctx, dut.xrows.start)
        spikes = [a for row in A for a in row]
        while spikes:
            ctx.set(dut.xrows.a.valid, rng.random() > 0.3)
            ctx.set(dut.xrows.a.payload, spikes[0])
            _, _, valid, ready = await ctx.tick().sample(dut.xrows.a.valid, dut.xrows.a.ready)
            if valid and ready:
                spikes.pop(0)
        ctx.set(dut.xrows.a.valid, 0)

    async def sink(ctx):
        while len(got) < len(expected):
            ready = rng.random() > 0.3
            ctx.set(dut.fifo.o.ready, ready)
            _, _, valid, beat = await ctx.tick().sample(dut.fifo.o.valid, dut.fifo.o.payload)
            if ready and valid:
                got.append((beat.x, beat.last))
        await ctx.tick()
        assert ctx.get(dut.xrows.done)

    run(dut, source, sink)
    assert got == expected




@pytest.mark.parametrize("P, NI, J", [(1, 2, 3), (2, 3, 4), (4, 9, 2)])
def test_column_scan_streams_dk_and_issues_the_da_additions(P, NI, J):
    T, IM, la = 3, max(NI, J), unit_parts.DeltaAccumulator.latency.fget(None)
    GM, groups = -(-IM // P), -(-NI // P)
    words = T * GM * GM * P
    rng = random.Random(NI + J)
    K = [[[rng.randint(0, 1) for _ in range(J)] for _ in range(NI)] for _ in range(T)]
    A = [[rng.randint(0, 1) for _ in range(NI)] for _ in range(T)]
    G = {(t, j, g): [random_half(rng) for _ in range(P)]
         for t in range(T) for j in range(J) for g in range(groups)}
    order = [(t, j, g) for t in reversed(range(T)) for j in range(J) for g in range(groups)]

    def real(g):
        return [g * P + ln < NI for ln in range(P)]

    def wire(m):
        wiring.connect(m, dut.scan.k, dut.kstore.col_rd)
        wiring.connect(m, dut.scan.dk, dut.fifo.i)
        m.d.comb += [dut.amem.rd0_addr.eq(dut.scan.a_addr), dut.scan.a_data.eq(dut.amem.rd0_data)]

    dut = Bench(wire, kstore=unit_parts.KStore(lanes=P, words=words),
                amem=unit_parts.SpikeMatrix(timesteps=T, width=GM * P),
                scan=unit_parts.ColumnScan(lanes=P, longest=IM, timesteps=T, words=words,
                                           acc_latency=la),
                fifo=unit_parts.StreamFIFO(error_layout(P), 4))
    got = {"dk": [], "acc": [], "k": []}

    async def source(ctx):
        await write_k(ctx, dut.kstore, K, P, NI, J)
        for t in range(T):
            for i in range(NI):
                for port, value in ((dut.amem.w_en, 1), (dut.amem.w_t, t), (dut.amem.w_i, i),
                                    (dut.amem.w_s, A[t][i])):
                    ctx.set(port, value)
                await ctx.tick()
        ctx.set(dut.amem.w_en, 0)
        set_geometry(ctx, dut.scan.geo, P, NI, J, T)
        t_words = groups * -(-J // P) * P
        ctx.set(dut.scan.row_base, T * t_words)
        ctx.set(dut.scan.t_words, t_words)
        await pulse(ctx, dut.scan.start)
        queue = [(G[key], key[1] == J - 1 and key[2] == groups - 1) for key in order]
        cycle, last_at, clear_at = 0, {}, {}
        while queue or len(got["dk"]) < len(order):
            ctx.set(dut.scan.i.valid, bool(queue) and rng.random() > 0.3)
            if queue:
                ctx.set(dut.scan.i.payload, {"value": pack(queue[0][0]), "last": queue[0][1]})
            ctx.set(dut.scan.clear, cycle in clear_at)
            ctx.set(dut.scan.clear_par, clear_at.get(cycle, 0))
            ready = rng.random() > 0.3
            ctx.set(dut.fifo.o.ready, ready)
            _, _, valid, taken, acc_valid, acc, full, error, o_valid, o = \
                await ctx.tick().sample(dut.scan.i.valid, dut.scan.i.ready, dut.scan.acc.valid,
                                        dut.scan.acc.payload, dut.scan.acc_full,
                                        dut.scan.error, dut.fifo.o.valid, dut.fifo.o.payload)
            assert not error
            if valid and taken:
                queue.pop(0)
            if acc_valid:
                got["acc"].append((acc.first, acc.addr, acc.g, acc.mask))
                assert cycle - last_at.get(int(acc.addr), -la - 1) >= la + 1
                last_at[int(acc.addr)] = cycle
                got["k"].append(ctx.get(dut.kstore.rd_data))
            for par in (0, 1):
                if full >> par & 1 and par not in clear_at.values():
                    clear_at[cycle + rng.randint(2, 9)] = par
            clear_at = {c: p for c, p in clear_at.items() if c > cycle}
            if ready and o_valid:
                got["dk"].append((o.value, o.last))
            cycle += 1

    run(dut, source)
    dk = [(pack([v * A[t][g * P + ln] if r else 0
                 for ln, (v, r) in enumerate(zip(G[t, j, g], real(g), strict=True))]),
           int(j == J - 1 and g == groups - 1)) for t, j, g in order]
    assert got["dk"] == dk
    assert got["acc"] == [(int(j == 0), (t % 2) * GM + g, pack(G[t, j, g]),
                           pack([int(r) for r in real(g)], 1)) for t, j, g in order]
    columns = [[b for b, r in zip(bits_of(k, P), real(g), strict=True) if r]
               for k, (t, j, g) in zip(got["k"], order, strict=True)]
    assert columns == [[K[t][i][j] for i in range(g * P, min(g * P + P, NI))]
                       for t, j, g in order]


@pytest.mark.parametrize("P, groups", [(1, 3), (4, 2), (2, 7)])
def test_delta_accumulator_adds_where_k_fired(P, groups):
    dut = unit_parts.DeltaAccumulator(lanes=P, longest=groups * P)
    la, GM = dut.latency, groups
    rng = random.Random(groups)
    model = [[0] * P for _ in range(2 * GM)]

    async def bench(ctx):
        slots = max(groups, la + 1)
        for par in (0, 1, 0, 1):
            for j in range(3):
                for g in range(slots):
                    addr = par * GM + g
                    if g >= groups:
                        ctx.set(dut.i.valid, 0)
                        await ctx.tick()
                        continue
                    vals = [random_half(rng) for _ in range(P)]
                    mask, k = rng.getrandbits(P), rng.getrandbits(P)
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload, {"first": j == 0, "addr": addr, "g": pack(vals),
                                            "mask": mask})
                    base = [0] * P if j == 0 else model[addr]
                    model[addr] = [fp16_add(b, v) if (k & mask) >> ln & 1 else b
                                   for ln, (b, v) in enumerate(zip(base, vals, strict=True))]
                    await ctx.tick()
                    ctx.set(dut.i.valid, 0)
                    ctx.set(dut.k, k)
        await ctx.tick().repeat(la + 3)
        for addr in range(2 * GM):
            ctx.set(dut.rd_addr, addr)
            await ctx.tick()
            assert lanes_of(ctx.get(dut.rd_data), P) == model[addr], addr
        assert any(any(v) for v in model)

    run(dut, bench)


class MemoryModel:
    """Read ports of one cycle latency answered from Python lists."""

    def __init__(self, *ports):
        self.ports = ports          # (addr signal, data signal, contents)

    def answer(self, ctx, addrs):
        for (_, data, contents), addr in zip(self.ports, addrs, strict=True):
            ctx.set(data, contents(addr))


@pytest.mark.parametrize("P, NI, reset", [(1, 3, "hard"), (4, 6, "soft"), (2, 5, "hard")])
def test_bptt_pass_is_the_golden_bptt(P, NI, reset):
    T, J = 4, 6
    p, counts, s, h, consts = lif_case(T, NI, J, reset, seed=NI)
    gen = torch.Generator().manual_seed(P)
    da = fp16.to_fp16(torch.randn(T, NI, generator=gen))
    expected = fp16.bits(lif_backward(da, h, s, p, FP16()))
    assert expected.any()
    dut = unit_parts.BPTTPass(lanes=P, longest=NI, timesteps=T, reset=reset, detach_reset=True,
                   surrogate=p.surrogate)
    GM = -(-NI // P)
    acc = [[0] * P for _ in range(2 * GM)]
    da_bits = fp16.bits(da)

    def load(t):
        for i in range(NI):
            acc[(t % 2) * GM + i // P][i % P] = int(da_bits[t, i])

    mems = MemoryModel(
        (dut.acc_addr, dut.acc_data, lambda a: pack(acc[a]) if a < 2 * GM else 0),
        (dut.h_addr, dut.h_data, lambda a: int(fp16.bits(h.flatten()[a])) if a < T * NI else 0),
        (dut.a_addr, dut.a_data, lambda a: pack([int(v) for v in s[a]], 1) if a < T else 0))
    got = {}

    async def bench(ctx):
        for name in ("c_v_th", "c_v_reset", "c_inv_tau", "c_decay"):
            ctx.set(getattr(dut, name), consts[name])
        set_geometry(ctx, dut.geo, P, NI, J, T)
        ctx.set(dut.h_base, T * NI)
        await pulse(ctx, dut.start)
        full, events, cycle = 0, {}, 0
        load(T - 1)
        load(T - 2)
        full = 0b11
        todo = list(reversed(range(T - 2)))
        done = []
        writes = {}
        while len(done) < T:
            ctx.set(dut.acc_full, full)
            clear = events.pop(("clear", cycle), None)
            ctx.set(dut.clear, clear is not None)
            ctx.set(dut.clear_par, clear or 0)
            reload = events.pop(("load", cycle), None)
            if reload is not None:
                load(reload)
                full |= 1 << reload % 2
            _, _, acc_addr, h_addr, a_addr, acc_clear, acc_par, en, addr, data, dq_full = \
                await ctx.tick().sample(dut.acc_addr, dut.h_addr, dut.a_addr, dut.acc_clear,
                                        dut.acc_clear_par, dut.dq.en, dut.dq.addr, dut.dq.data,
                                        dut.dq_full)
            mems.answer(ctx, (acc_addr, h_addr, a_addr))
            cycle += 1
            for ln in range(P):
                if en >> ln & 1:
                    writes[(addr % GM) * P + ln] = data >> 16 * ln & 0xFFFF
            if acc_clear:
                full &= ~(1 << acc_par)
                if todo:
                    events["load", cycle + 3] = todo.pop(0)
            t = T - 1 - len(done)
            if dq_full >> (t % 2) & 1 and ("clear", cycle + 2) not in events \
                    and t not in [d for d, _ in done]:
                done.append((t, dict(writes)))
                writes.clear()
                events["clear", cycle + 2] = t % 2
        for t, w in done:
            got[t] = [w.get(i) for i in range(NI)]

    run(dut, bench)
    assert got == {t: [int(v) for v in expected[t]] for t in range(T)}


@pytest.mark.parametrize("P, NI, J", [(1, 2, 3), (4, 6, 2), (2, 5, 4)])
def test_delta_q_out_broadcasts_each_timestep(P, NI, J):
    T, IM = 3, max(NI, J)
    GM, groups = -(-IM // P), -(-NI // P)

    def wire(m):
        wiring.connect(m, dut.dq.o, dut.fifo.i)
        m.d.comb += dut.dq.level.eq(dut.fifo.level)

    dut = Bench(wire, dq=unit_parts.DeltaQOut(lanes=P, longest=IM, timesteps=T),
                fifo=unit_parts.StreamFIFO(error_layout(P), 4))
    rng = random.Random(NI * J)
    values = [[random_half(rng) for _ in range(NI)] for _ in range(T)]
    expected = [(pack([values[t][g * P + ln] if g * P + ln < NI else 0 for ln in range(P)]),
                 int(j == J - 1 and g == groups - 1))
                for t in reversed(range(T)) for j in range(J) for g in range(groups)]
    got, seen_done = [], []

    async def writer(ctx):
        set_geometry(ctx, dut.dq.geo, P, NI, J, T)
        ctx.set(dut.dq.dk_empty, 1)
        await pulse(ctx, dut.dq.start)
        full, todo = [0], list(reversed(range(T)))

        async def step():
            ctx.set(dut.dq.dq_full, full[0])
            _, _, clear, par = await ctx.tick().sample(dut.dq.clear, dut.dq.clear_par)
            if clear:
                full[0] &= ~(1 << par)

        while todo or full[0]:
            if todo and not full[0] >> todo[0] % 2 & 1:
                t = todo.pop(0)
                for i in range(NI):
                    ctx.set(dut.dq.w.en, 1 << i % P)
                    ctx.set(dut.dq.w.addr, (t % 2) * GM + i // P)
                    ctx.set(dut.dq.w.data, values[t][i] << 16 * (i % P))
                    await step()
                ctx.set(dut.dq.w.en, 0)
                full[0] |= 1 << t % 2
            await step()

    async def sink(ctx):
        while len(got) < len(expected) or not seen_done:
            ready = rng.random() > 0.3
            ctx.set(dut.fifo.o.ready, ready)
            _, _, valid, beat, done = await ctx.tick().sample(dut.fifo.o.valid,
                                                              dut.fifo.o.payload, dut.dq.done)
            if ready and valid:
                got.append((beat.value, beat.last))
            if done:
                seen_done.append(len(got))

    run(dut, writer, sink)
    assert got == expected
    assert seen_done == [len(expected)]


# ---- attention block ---------------------------------------------------------------------

def test_lowest_set_is_a_priority_encoder():
    dut = LowestSet(8)
    rng = random.Random(6)

    async def bench(ctx):
        for mask in [0, 1, 128, 255] + [rng.getrandbits(8) for _ in range(60)]:
            ctx.set(dut.i, mask)
            assert ctx.get(dut.o) == ((mask & -mask).bit_length() - 1 if mask else 0), mask

    run(dut, bench, clock=False)


def step_events(rng, N, D, rate=0.4):
    """Per token, the indices of the spike events of ``[Q; K]``."""
    return [[d for d in range(2 * D) if rng.random() < rate] for _ in range(N)]


@pytest.mark.parametrize("kind", [0, 1])
def test_events_to_bits_fill_the_matrices_read_by_rows(kind):
    P, tokens, channels = 2, 5, 4
    NP, DP = 6, 4
    dut = block_parts.EventsToBits(lanes=P, tokens=tokens, channels=channels, padded=(NP, DP))
    rng = random.Random(kind)
    N, D = 5, 3
    steps = step_events(rng, N, D)
    Q = [[int(d in s) for d in range(D)] for s in steps]
    K = [[int(D + d in s) for d in range(D)] for s in steps]

    async def bench(ctx):
        ctx.set(dut.tokens, N)
        ctx.set(dut.channels, D)
        ctx.set(dut.token_kind, 1 - kind)
        ctx.set(dut.enable, 1)
        dones, errors = [], []
        for r, spikes in enumerate(steps):
            for index, spike, last in [(d, 1, 0) for d in spikes] + [(2 * D, 1, 0), (0, 0, 1)]:
                while rng.random() < 0.3:
                    ctx.set(dut.i.valid, 0)
                    await ctx.tick()
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload, {"index": index, "spike": spike, "last": last})
                assert ctx.get(dut.i.ready)
                assert ctx.get(dut.busy) == (r != 0)
                dones.append(ctx.get(dut.done))
                errors.append(ctx.get(dut.error))
                await ctx.tick()
        ctx.set(dut.i.valid, 0)
        assert sum(dones) == 1 and dones[-1]
        assert sum(errors) == N
        rows, axis = (N, D) if kind == 0 else (D, N)
        for i in range(rows):
            for c in range(-(-axis // P)):
                ctx.set(dut.rd_i, i)
                ctx.set(dut.rd_c, c)
                lanes = [c * P + ln for ln in range(P) if c * P + ln < axis]
                for port, M in ((dut.rd_q, Q), (dut.rd_k, K)):
                    got = bits_of(ctx.get(port), P)[:len(lanes)]
                    assert got == [M[i][j] if kind == 0 else M[j][i] for j in lanes], (i, c)
        await pulse(ctx, dut.clear)
        assert ctx.get(dut.rd_q) == ctx.get(dut.rd_k) == 0

    run(dut, bench)


def test_row_feeder_feeds_rows_and_takes_x():
    P, rows, chunks = 2, 5, 3
    dut = block_parts.RowFeeder(lanes=P, longest=8)
    rng = random.Random(7)
    X = [rng.getrandbits(P) for _ in range(rows * chunks)]

    def q_of(i, c):
        return (i * 7 + c * 3) % (1 << P)

    def k_of(i, c):
        return (i * 5 + c) % (1 << P)

    got = {"o": [], "x": []}

    async def bench(ctx):
        ctx.set(dut.rows, rows)
        ctx.set(dut.row_chunks, chunks)
        await pulse(ctx, dut.start)
        ctx.set(dut.enable, 1)
        xs, done = list(X), False
        while not done:
            i, c = ctx.get(dut.rd_i), ctx.get(dut.rd_c)
            ctx.set(dut.q, q_of(i, c))
            ctx.set(dut.k, k_of(i, c))
            ready = rng.random() > 0.3
            ctx.set(dut.o.ready, ready)
            ctx.set(dut.x.valid, bool(xs) and rng.random() > 0.5)
            ctx.set(dut.x.payload.x, xs[0] if xs else 0)
            _, _, valid, beat, x_valid, x_ready, w_en, w_i, w_c, w_x, done = \
                await ctx.tick().sample(dut.o.valid, dut.o.payload, dut.x.valid, dut.x.ready,
                                        dut.x_w.en, dut.x_w.i, dut.x_w.c, dut.x_w.x, dut.done)
            assert x_ready
            if valid and ready:
                got["o"].append((beat.q, beat.k, beat.last))
            if x_valid:
                xs.pop(0)
            if w_en:
                got["x"].append((w_i, w_c, w_x))
        assert not xs

    run(dut, bench)
    assert got["o"] == [(q_of(i, c), k_of(i, c), int(i == rows - 1 and c == chunks - 1))
                        for i in range(rows) for c in range(chunks)]
    assert got["x"] == [(i, c, X[i * chunks + c]) for i in range(rows) for c in range(chunks)]


@pytest.mark.parametrize("kind", [0, 1])
def test_bits_to_events_serializes_tokens(kind):
    P, tokens, channels = 2, 4, 6
    NP, DP = 4, 6
    dut = block_parts.BitsToEvents(lanes=P, tokens=tokens, channels=channels, padded=(NP, DP))
    rng = random.Random(8 + kind)
    N, D = 3, 6
    steps = [[[rng.randint(0, 1) for _ in range(D)] for _ in range(N)] for _ in range(3)]
    got = []

    async def bench(ctx):
        ctx.set(dut.token_kind, 1 - kind)
        ctx.set(dut.tokens, N)
        ctx.set(dut.d_chunks, D // P)
        for X in steps:
            rows, axis = (N, D) if kind == 0 else (D, N)
            for i in range(rows):
                for c in range(-(-axis // P)):
                    lanes = [c * P + ln for ln in range(P)]
                    x = pack([(X[i][j] if kind == 0 else X[j][i]) if j < axis else 0
                              for j in lanes], 1)
                    ctx.set(dut.x_w.en, x != 0)    # the matrix starts cleared
                    ctx.set(dut.x_w.i, i)
                    ctx.set(dut.x_w.c, c)
                    ctx.set(dut.x_w.x, x)
                    await ctx.tick()
            ctx.set(dut.x_w.en, 0)
            await pulse(ctx, dut.start)
            step, events, done = [], [], 0
            while not done:
                ready = rng.random() > 0.3
                ctx.set(dut.o.ready, ready)
                _, _, valid, ev, done = await ctx.tick().sample(dut.o.valid, dut.o.payload,
                                                                dut.done)
                if valid and ready:
                    if ev.spike:
                        step.append(ev.index)
                    if ev.last:
                        events.append(step)
                        step = []
            ctx.set(dut.o.ready, 0)
            got.append(events)

    run(dut, bench)
    assert got == [[[d for d in range(D) if X[n][d]] for n in range(N)] for X in steps]


def test_token_rows_in_writes_rows():
    P, tokens, M = 2, 4, 8
    dut = block_parts.TokenRowsIn(lanes=P, tokens=tokens, longest=M)
    rng = random.Random(9)
    N, chunks = 3, 2
    beats = [rng.getrandbits(32) for _ in range(N * chunks)]

    async def bench(ctx):
        ctx.set(dut.tokens, N)
        ctx.set(dut.d_chunks, chunks)
        ctx.set(dut.enable, 1)
        writes, dones = [], []
        queue = list(beats)
        while queue:
            ctx.set(dut.i.valid, rng.random() > 0.3)
            ctx.set(dut.i.payload.value, queue[0])
            _, _, valid, ready, en, major, minor, data, mask, done = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.wr.en, dut.wr.major, dut.wr.minor, dut.wr.data,
                dut.wr.mask, dut.done)
            assert ready and en == valid and done == (valid and len(queue) == 1)
            if valid:
                queue.pop(0)
                writes.append((major, minor, data, mask))
                dones.append(done)
        assert writes == [(n // chunks, n % chunks, b, 3) for n, b in enumerate(beats)]

    run(dut, bench)


def test_read_buffer_keeps_the_order_of_its_reads():
    dut = block_parts.ReadBuffer(lanes=1)
    rng = random.Random(10)
    count = 120
    got = []

    async def reader(ctx):
        issued = 0
        while issued < count:
            ctx.set(dut.want, rng.random() > 0.2)
            ctx.set(dut.last, issued == count - 1)
            _, _, issue = await ctx.tick().sample(dut.issue)
            ctx.set(dut.data, 1000 + issued if issue else 0)
            issued += issue
        ctx.set(dut.want, 0)

    async def sink(ctx):
        while len(got) < count:
            ready = rng.random() > 0.5
            ctx.set(dut.o.ready, ready)
            _, _, valid, beat = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            if ready and valid:
                got.append((beat.value, beat.last))
        await ctx.tick()
        assert ctx.get(dut.idle)

    run(dut, reader, sink)
    assert got == [(1000 + n, int(n == count - 1)) for n in range(count)]


def memory_word(*key):
    """A word that stands for ``key`` alone, the same in every run."""
    return zlib.crc32(repr(key).encode())


async def read_pass(ctx, dut, rng, answer):
    """Start a reader of skewed memories, answer its reads a cycle later (``answer(ctx,
    address or None)``) and return the beats it sends, with backpressure."""
    await pulse(ctx, dut.start)
    ctx.set(dut.enable, 1)
    got, done = [], 0
    while not done:
        ready = rng.random() > 0.3
        ctx.set(dut.o.ready, ready)
        _, _, en, col, major, minor, valid, beat, done = await ctx.tick().sample(
            dut.rd.en, dut.rd.col, dut.rd.major, dut.rd.minor, dut.o.valid, dut.o.payload,
            dut.done)
        answer(ctx, (col, major, minor) if en else None)
        if ready and valid:
            got.append((beat.value, beat.last))
    return got


@pytest.mark.parametrize("token_kind", [0, 1])
def test_column_feeder_reads_the_unit_rows(token_kind):
    P, M, cols, groups = 2, 8, 5, 3
    dut = block_parts.ColumnFeeder(lanes=P, longest=M)
    rng = random.Random(11)
    got = []

    def answer(ctx, address):
        ctx.set(dut.rd_data, memory_word(*address) if address else 0)

    async def bench(ctx):
        ctx.set(dut.cols, cols)
        ctx.set(dut.col_groups, groups)
        ctx.set(dut.token_kind, token_kind)
        got.extend(await read_pass(ctx, dut, rng, answer))

    run(dut, bench)
    assert got == [(memory_word(token_kind, i, c), int(i == cols - 1 and c == groups - 1))
                   for i in range(cols) for c in range(groups)]


def test_rows_to_memory_takes_a_pass_then_stops():
    P, M, cols, groups = 2, 8, 3, 2
    dut = block_parts.RowsToMemory(lanes=P, longest=M)
    rng = random.Random(12)
    beats = [rng.getrandbits(32) for _ in range(cols * groups + 2)]

    async def bench(ctx):
        ctx.set(dut.cols, cols)
        ctx.set(dut.col_groups, groups)
        await pulse(ctx, dut.start)
        ctx.set(dut.enable, 1)
        writes = []
        for _ in range(60):
            ctx.set(dut.i.valid, rng.random() > 0.3)
            ctx.set(dut.i.payload.value, beats[len(writes)])
            _, _, valid, ready, en, major, minor, data, done = await ctx.tick().sample(
                dut.i.valid, dut.i.ready, dut.wr.en, dut.wr.major, dut.wr.minor, dut.wr.data,
                dut.done)
            assert ready == (not done) and en == (valid and ready)
            if en:
                writes.append((major, minor, data))
        assert writes == [(n // groups, n % groups, b) for n, b in
                          enumerate(beats[:cols * groups])]
        assert ctx.get(dut.done)

    run(dut, bench)


@pytest.mark.parametrize("token_kind", [0, 1])
def test_token_rows_out_sends_dq_then_dk_per_token(token_kind):
    P, tokens, M = 2, 5, 8
    dut = block_parts.TokenRowsOut(lanes=P, tokens=tokens, longest=M)
    rng = random.Random(13)
    N, chunks = 4, 3
    got = []

    def answer(ctx, address):
        ctx.set(dut.dq_data, memory_word("q", *address) if address else 0)
        ctx.set(dut.dk_data, memory_word("k", *address) if address else 0)

    async def bench(ctx):
        ctx.set(dut.tokens, N)
        ctx.set(dut.d_chunks, chunks)
        ctx.set(dut.token_kind, token_kind)
        got.extend(await read_pass(ctx, dut, rng, answer))

    run(dut, bench)
    assert got == [(memory_word(m, token_kind, r, c), int(m == "k" and c == chunks - 1))
                   for r in range(N) for m in "qk" for c in range(chunks)]


def test_block_phases_against_a_model():
    dut = block_parts.BlockPhases(timesteps=4)
    rng = random.Random(14)

    async def bench(ctx):
        T = 3
        ctx.set(dut.timesteps, T)
        state, t, pending, fresh, error = "COLLECT", 0, 0, 1, 0
        seen = set()
        for _ in range(3000):
            ins = {name: int(rng.random() < 0.25) for name in
                   ("fp_valid", "fp_take", "bp_valid", "collected", "fed", "emitted",
                    "received", "bp_fed", "sent", "flag")}
            if ins["received"]:
                ins["bp_valid"] = 1
            for name, value in ins.items():
                ctx.set(getattr(dut, name), value)
            assert {name: ctx.get(getattr(dut, name)) for name in
                    ("collect", "feed", "recv", "bp_feed", "bp_send", "pending", "error")} == {
                "collect": state == "COLLECT", "feed": state == "FEED",
                "recv": state == "BP_RECV", "bp_feed": state == "BP_FEED",
                "bp_send": state == "BP_SEND", "pending": pending, "error": error}
            if ins["fp_take"] and fresh:
                error, fresh = 0, 0
            if state == "COLLECT" and ins["collected"]:
                state = "FEED"
            elif state == "FEED" and ins["fed"]:
                state = "EMIT"
            elif state == "EMIT" and ins["emitted"]:
                t += 1
                if t == T:
                    state, pending = "BP_RECV", 1
                else:
                    state = "COLLECT"
            elif state == "BP_RECV":
                if not ins["bp_valid"] and ins["fp_valid"] and pending:
                    state, t, fresh, pending = "COLLECT", 0, 1, 0
                if ins["bp_valid"]:
                    pending = 0
                if ins["received"]:
                    state = "BP_FEED"
            elif state == "BP_FEED" and ins["bp_fed"]:
                state = "BP_SEND"
            elif state == "BP_SEND" and ins["sent"]:
                t -= 1
                if t == 0:
                    state, fresh = "COLLECT", 1
                else:
                    state = "BP_RECV"
            error |= ins["flag"]
            seen.add(state)
            await ctx.tick()
        assert len(seen) == 6

    run(dut, bench)
