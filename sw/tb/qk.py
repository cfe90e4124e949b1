# SPDX-License-Identifier: Apache-2.0
"""Stimulus and cocotb driver of a :class:`~spikeforge.hw.qk.QKAttention` unit.

:class:`QKCase` is one sample of Q-K attention with what the golden model says of it, already
cut into the unit's beats (:mod:`spikeforge.hw.qk` describes the layouts). :class:`QKTB` owns
the clock, reset and configuration of a Verilated unit and a source or sink for each stream,
with seeded random idle cycles and backpressure; :meth:`QKTB.run_case` returns the beats the
unit produced and the cycles it took. ``qk_bench`` is the cocotb test behind
:func:`spikeforge.bench.bench_qk`.
"""

import json
import os
import random
from dataclasses import dataclass, field

import cocotb
import torch
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import RisingEdge

from ..golden import fp16
from ..golden.arith import FP16
from ..golden.lif import LIFParams
from ..golden.qk import (
    ATTENTIONS,
    attention_lif_params,
    qk_attention_backward,
    qk_attention_forward,
)
from ..testing import pack_lanes, unpack_lanes
from .streams import StreamDriver

__all__ = ["BlockTB", "QKTB", "QKCase", "check", "check_block"]

PERIOD_NS = 10


def _kept(x: torch.Tensor, kind: str) -> torch.Tensor:
    """``[T, N, D]`` as ``[T, I, J]``: kept axis, then summed axis."""
    return x if kind == "token" else x.transpose(1, 2)


@dataclass
class QKCase:
    """One sample: spikes ``q``, ``k`` and output error ``g`` (``[T, N, D]``), golden results."""

    q: torch.Tensor
    k: torch.Tensor
    g: torch.Tensor
    kind: str = "token"
    lif: LIFParams = field(default_factory=attention_lif_params)

    @classmethod
    def random(cls, *, tokens: int, channels: int, timesteps: int, rate: float, kind: str,
               seed: int, lif: LIFParams | None = None) -> "QKCase":
        """Q and K spikes at ``rate``; errors of a few magnitudes, a fifth of them zero."""
        gen = torch.Generator().manual_seed(seed)
        shape = (timesteps, tokens, channels)
        q = (torch.rand(shape, generator=gen) < rate).float()
        k = (torch.rand(shape, generator=gen) < rate).float()
        g = torch.randn(shape, generator=gen) * 2.0 ** torch.randint(-6, 2, shape, generator=gen)
        g[torch.rand(shape, generator=gen) < 0.2] = 0
        return cls(q, k, fp16.to_fp16(g), kind, lif or attention_lif_params())

    def __post_init__(self):
        a = FP16()
        x, cache = qk_attention_forward(self.q[:, None], self.k[:, None], self.kind, self.lif, a)
        dq, dk = qk_attention_backward(self.g[:, None], cache, a)
        self.expected_x, self.expected_dq, self.expected_dk = x[:, 0], dq[:, 0], dk[:, 0]
        self.expected_a = cache["a"][:, 0]

    timesteps = property(lambda self: self.q.shape[0])
    tokens = property(lambda self: self.q.shape[1])
    channels = property(lambda self: self.q.shape[2])

    def config(self) -> dict:
        """Values of the unit's ``c_*`` inputs for this case."""
        c = {name: int(fp16.bits(v)) for name, v in self.lif.constants(FP16()).items()}
        return {"c_kind": ATTENTIONS.index(self.kind), "c_tokens": self.tokens,
                "c_channels": self.channels, "c_timesteps": self.timesteps,
                "c_v_th": c["v_th"], "c_v_reset": c["v_reset"], "c_inv_tau": c["inv_tau"],
                "c_decay": c["decay"]}

    def _rows(self, x: torch.Tensor, lanes: int, width: int) -> list:
        """Forward layout: per timestep, kept-axis rows in chunks of ``lanes``."""
        m = _kept(x, self.kind)
        T, n_i, n_j = m.shape
        chunks = -(-n_j // lanes)
        beats = []
        for t in range(T):
            for i in range(n_i):
                row = m[t, i].tolist() + [0] * (chunks * lanes - n_j)
                for c in range(chunks):
                    part = row[c * lanes:(c + 1) * lanes]
                    word = sum(int(v) << width * n for n, v in enumerate(part))
                    beats.append((word, int(i == n_i - 1 and c == chunks - 1)))
        return beats

    def _columns(self, x: torch.Tensor, lanes: int) -> list:
        """Backward layout: timesteps descending, summed-axis rows, lane groups of kept axis."""
        m = _kept(fp16.bits(x), self.kind)
        T, n_i, n_j = m.shape
        groups = -(-n_i // lanes)
        beats = []
        for t in reversed(range(T)):
            for j in range(n_j):
                col = m[t, :, j].tolist() + [0] * (groups * lanes - n_i)
                for g in range(groups):
                    part = col[g * lanes:(g + 1) * lanes]
                    word = sum(int(v) << 16 * n for n, v in enumerate(part))
                    beats.append((word, int(j == n_j - 1 and g == groups - 1)))
        return beats

    def fp_beats(self, lanes: int) -> list:
        """``(q, k, last)`` of every ``fp_i`` beat."""
        q, k = self._rows(self.q, lanes, 1), self._rows(self.k, lanes, 1)
        return [(qw, kw, last) for (qw, last), (kw, _) in zip(q, k, strict=True)]

    def x_beats(self, lanes: int) -> list:
        return self._rows(self.expected_x, lanes, 1)

    def bp_beats(self, lanes: int) -> list:
        return self._columns(self.g, lanes)

    def dk_beats(self, lanes: int) -> list:
        return self._columns(self.expected_dk, lanes)

    def dq_beats(self, lanes: int) -> list:
        return self._columns(self.expected_dq, lanes)

    def ideal_cycles(self, lanes: int) -> float:
        """Cycles of one pass (forward or backward) at ``tokens · channels / lanes`` a
        timestep."""
        return self.timesteps * self.tokens * self.channels / lanes

    def nontrivial(self) -> dict:
        """How many of the compared values are not zero."""
        return {"x": int(self.expected_x.sum()),
                "dk": int((self.expected_dk != 0).sum()),
                "dq": int((self.expected_dq != 0).sum())}


class QKTB(StreamDriver):
    """Clock, reset, configuration and streams of a Verilated ``QKAttention``."""

    quiet = ("fp_i__valid", "fp_o__ready", "bp_i__valid", "dk_o__ready", "dq_o__ready")

    def __init__(self, dut, *, lanes: int, seed: int = 1, idle: float = 0.0,
                 stall: float = 0.0):
        self.dut, self.lanes = dut, lanes
        self.rng = random.Random(seed)
        self.idle, self.stall = idle, stall
        cocotb.start_soon(Clock(dut.clk, PERIOD_NS, unit="ns").start())

    def cycle(self) -> int:
        return round(get_sim_time("ns") / PERIOD_NS)

    async def _source(self, prefix: str, words: list, stamps: list):
        for word in words:
            await self._put(prefix, word)
            stamps.append(self.cycle())

    async def _sink(self, prefix: str, count: int, width: int, got: list, stamps: list):
        for _ in range(count):
            word = await self._get(prefix)
            got.append((word & ((1 << width) - 1), word >> width & 1))
            stamps.append(self.cycle())

    async def run_case(self, case: QKCase, backward: bool = True) -> dict:
        """Configure the unit for ``case``, run its forward (and backward) pass and return the
        beats of ``fp_o`` (``dk_o``, ``dq_o``) as ``(word, last)`` and the cycles taken."""
        d, P = self.dut, self.lanes
        for name, value in case.config().items():
            getattr(d, name).value = value
        got = {"x": [], "dk": [], "dq": []}
        t_in, t_out = [], []
        fp = [q | k << P | last << 2 * P for q, k, last in case.fp_beats(P)]
        source = cocotb.start_soon(self._source("fp_i", fp, t_in))
        await self._sink("fp_o", len(fp), P, got["x"], t_out)
        await source
        got["fp_cycles"] = t_out[-1] - t_in[0] + 1
        while not int(d.fp_done.value):
            await RisingEdge(d.clk)
        if backward:
            bp = [w | last << 16 * P for w, last in case.bp_beats(P)]
            b_in, b_k, b_q = [], [], []
            source = cocotb.start_soon(self._source("bp_i", bp, b_in))
            dk = cocotb.start_soon(self._sink("dk_o", len(bp), 16 * P, got["dk"], b_k))
            await self._sink("dq_o", len(bp), 16 * P, got["dq"], b_q)
            await dk
            await source
            got["bp_cycles"] = max(b_k[-1], b_q[-1]) - b_in[0] + 1
            while not int(d.bp_done.value):
                await RisingEdge(d.clk)
        got["error"] = int(d.error.value)
        return got


class BlockTB(QKTB):
    """Clock, reset, configuration and streams of a Verilated
    :class:`~spikeforge.hw.attention.AttentionBlock`: a ``[Q; K]`` core's events in, ``X′``
    events out, ``δX′`` per token in and ``[δQ; δK]`` per token out."""

    quiet = ("fp_i__valid", "fp_o__ready", "bp_i__valid", "bp_o__ready")

    async def run_case(self, case: QKCase) -> dict:
        """Run ``case`` through the block; the output events of each step ``(t, token)``, the
        ``[δQ; δK]`` bit patterns of each step, and the cycles of each direction."""
        d, P = self.dut, self.lanes
        T, N, D = case.timesteps, case.tokens, case.channels
        for name, value in case.config().items():
            getattr(d, name).value = value
        in_bits, out_bits = len(d.fp_i__payload) - 2, len(d.fp_o__payload) - 2
        words = []
        for t in range(T):
            for r in range(N):
                spikes = [int(i) for i in torch.nonzero(case.q[t, r]).flatten()]
                spikes += [D + int(i) for i in torch.nonzero(case.k[t, r]).flatten()]
                words += [i | 1 << in_bits for i in spikes] + [1 << in_bits + 1]
        got = {"events": {}, "bp": {}}
        t_in = []
        source = cocotb.start_soon(self._source("fp_i", words, t_in))
        for t in range(T):
            for r in range(N):
                step = got["events"][t, r] = []
                while True:
                    word = await self._get("fp_o")
                    if word >> out_bits & 1:
                        step.append(word & ((1 << out_bits) - 1))
                    if word >> out_bits + 1 & 1:
                        break
        fp_end = self.cycle()
        await source
        got["fp_cycles"] = fp_end - t_in[0] + 1
        order = [(t, r) for t in reversed(range(T)) for r in range(N)]
        beats = []
        for t, r in order:
            g = fp16.bits(case.g[t, r]).tolist()
            for c in range(D // P):
                value = pack_lanes(g[c * P:(c + 1) * P])
                beats.append(value | int(c == D // P - 1) << 16 * P)
        b_in = []
        source = cocotb.start_soon(self._source("bp_i", beats, b_in))
        for t, r in order:
            values = []
            for beat in range(2 * D // P):
                word = await self._get("bp_o")
                assert bool(word >> 16 * P & 1) == (beat == 2 * D // P - 1), (t, r, beat)
                values += unpack_lanes(word, P)
            got["bp"][t, r] = values
        await source
        got["bp_cycles"] = self.cycle() - b_in[0] + 1
        for _ in range(3):
            await RisingEdge(d.clk)
        got["error"] = int(d.error.value)
        return got


def check_block(case: QKCase, got: dict) -> None:
    """Assert that an attention block's events and ``[δQ; δK]`` are the golden model's bits."""
    for t in range(case.timesteps):
        for r in range(case.tokens):
            expected = [int(i) for i in torch.nonzero(case.expected_x[t, r]).flatten()]
            assert got["events"][t, r] == expected, f"X′ of token {r}, timestep {t}"
            dq = fp16.bits(case.expected_dq[t, r]).tolist()
            dk = fp16.bits(case.expected_dk[t, r]).tolist()
            assert got["bp"][t, r] == dq + dk, f"[δQ; δK] of token {r}, timestep {t}"
    assert got["error"] == 0, "error flag"


def check(case: QKCase, got: dict, lanes: int, backward: bool = True) -> None:
    """Assert that the unit's beats are the golden model's bits and ``last`` flags."""
    assert got["x"] == case.x_beats(lanes), "forward X′"
    if backward:
        assert got["dk"] == case.dk_beats(lanes), "δK"
        assert got["dq"] == case.dq_beats(lanes), "δQ"
    assert got["error"] == 0, "the unit flagged a last that disagrees with the sizes"


@cocotb.test()
async def qk_bench(dut):
    """Cycles of the forward and backward passes of the cases in ``BENCH_SPEC``."""
    spec = json.loads(os.environ["BENCH_SPEC"])
    tb = QKTB(dut, lanes=spec["lanes"])
    await tb.reset()
    results = []
    for k, c in enumerate(spec["cases"]):
        case = QKCase.random(tokens=c["tokens"], channels=c["channels"],
                             timesteps=c["timesteps"], rate=c["rate"], kind=c["kind"],
                             seed=100 + k)
        got = await tb.run_case(case)
        check(case, got, spec["lanes"])
        results.append({**c, "fp_cycles": got["fp_cycles"], "bp_cycles": got["bp_cycles"],
                        "ideal_cycles": case.ideal_cycles(spec["lanes"])})
    with open(os.environ["BENCH_OUT"], "w") as f:
        json.dump(results, f)
