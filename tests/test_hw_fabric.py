# SPDX-License-Identifier: Apache-2.0
import random
from collections import deque

import pytest
from amaranth.hdl import Elaboratable, Module, Shape, Signal
from amaranth.lib import wiring

from spikeforge.gen.compiler import compile_network
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.golden.network import SpikingMLP
from spikeforge.hw.fabric import Router
from spikeforge.protocol import LINK_BITS, Link
from spikeforge.tb.amaranth import simulate

CORES = 4
HARDWARE = {
    "p4": {"neurons": 8, "fan_in": 24, "lanes": 4},
    "p2": {"neurons": 6, "fan_in": 20, "lanes": 2},
    "p1": {"neurons": 3, "fan_in": 12, "lanes": 1},
}
NETWORKS = {
    "split-then-layer": [12, 20, 6],
    "layer-then-split": [12, 6, 20],
    "split-to-split": [12, 12, 10],
    "chain": [12, 8, 6, 7, 5],
    "split-to-host": [12, 20],
}
CORE_PORTS = ("core_fp_i", "core_bp_i", "core_psum_i", "host_spk_o", "host_err_o")


class Line(Elaboratable):
    """Routers joined as in the SoC; their core and host ports are the testbench's."""

    def __init__(self, cores: int, **params):
        self.routers = [Router(**params) for _ in range(cores)]
        self.links = [Signal(LINK_BITS, name=f"link{k}") for k in range(cores)]

    def elaborate(self, platform):
        m = Module()
        routers, links = self.routers, self.links
        for k, router in enumerate(routers):
            m.submodules[f"router{k}"] = router
            m.d.comb += [router.link.eq(links[k]),
                         router.west_link.eq(links[k - 1] if k else 0),
                         router.east_link.eq(links[k + 1] if k < len(routers) - 1 else 0)]
            if k:
                west = routers[k - 1]
                wiring.connect(m, west.east_spk, router.west_spk)
                wiring.connect(m, west.east_share, router.west_share)
                wiring.connect(m, router.west_err, west.east_err)
                wiring.connect(m, router.west_psum, west.east_psum)
        for port in (routers[0].west_spk, routers[0].west_share, routers[-1].east_err,
                     routers[-1].east_psum):
            m.d.comb += port.valid.eq(0)
        return m


class Codec:
    """A stream payload as a tuple of its fields, in the layout's order."""

    def __init__(self, port):
        self.fields = [(f.offset, Shape.cast(f.shape).width) for _, f in port.payload.shape()]

    def pack(self, item):
        return sum(v << offset for v, (offset, _) in zip(item, self.fields, strict=True))

    def unpack(self, word):
        return tuple(word >> offset & ((1 << width) - 1) for offset, width in self.fields)


class Source:
    """A producer: after seeded idle cycles it offers its next item and holds it until taken."""

    def __init__(self, name, port, rng, idle, items=()):
        self.name, self.port, self.rng, self.idle = name, port, rng, idle
        self.codec = Codec(port)
        self.queue = deque(items)
        self.holding = self.shown = False

    def drive(self, ctx):
        if not self.holding and self.queue and self.rng.random() >= self.idle:
            ctx.set(self.port.payload.as_value(), self.codec.pack(self.queue[0]))
            self.holding = True
        if self.holding != self.shown:
            ctx.set(self.port.valid, self.holding)
            self.shown = self.holding

    def sampled(self, ready):
        if self.holding and ready:
            self.queue.popleft()
            self.holding = False
            return True
        return False


class Sink:
    """A consumer, ready at random while ``gate``; it records what it takes and checks that
    an item offered is held until taken."""

    def __init__(self, name, port, rng, stall):
        self.name, self.port, self.rng, self.stall = name, port, rng, stall
        self.codec = Codec(port)
        self.got, self.gate, self.shown, self.offered = [], True, False, None

    def drive(self, ctx):
        ready = self.gate and self.rng.random() >= self.stall
        if ready != self.shown:
            ctx.set(self.port.ready, ready)
            self.shown = ready

    def sampled(self, cycle, valid, word):
        if self.offered is not None:
            assert valid and word == self.offered, (
                f"{self.name} withdrew or changed {self.codec.unpack(self.offered)} before it "
                f"was taken (cycle {cycle})")
        self.offered = None
        if valid and self.shown:
            item = self.codec.unpack(word)
            self.got.append(item)
            return item
        if valid:
            self.offered = word
        return None


class FakeCore:
    """A core's streams. Free-running, it offers all its outputs at once; causal, it works
    like :class:`~spikeforge.hw.core.Core`: a timestep's input spikes, then its output spikes;
    a timestep's errors, the partial sums (if an east partner sends them), then ``Wᵀ·δ``."""

    def __init__(self, sinks, fp_o, bp_o, spikes, errors, *, partner, causal):
        self.fp_i, self.bp_i, self.psum_i = sinks
        self.fp_o, self.bp_o, self.spikes, self.errors = fp_o, bp_o, spikes, errors
        self.partner, self.causal = partner, causal
        self.fp_t = self.bp_t = 0
        self.summing = False
        if not causal:
            fp_o.queue.extend(e for step in spikes for e in step)
            bp_o.queue.extend(b for step in errors for b in step)
        self.gates()

    def gates(self):
        if self.causal:
            self.fp_i.gate = not self.fp_o.queue
            self.bp_i.gate = not self.summing and not self.bp_o.queue
            self.psum_i.gate = self.summing or not self.partner

    def took(self, sink, item):
        if not self.causal or not item[-1]:
            return
        if sink is self.fp_i and self.fp_t < len(self.spikes):
            self.fp_o.queue.extend(self.spikes[self.fp_t])
            self.fp_t += 1
        elif sink is self.bp_i and self.partner:
            self.summing = True
        elif (sink is self.bp_i or sink is self.psum_i and self.partner) \
                and self.bp_t < len(self.errors):
            self.bp_o.queue.extend(self.errors[self.bp_t])
            self.bp_t += 1
            self.summing = False


def ceil_div(a, b):
    return -(-a // b)


def beats(rng, count, P):
    """A timestep of ``count`` random error beats, ``last`` on the final one."""
    return [(rng.getrandbits(16 * P), int(b == count - 1)) for b in range(count)]


def stimulus(program, hw, rng, T):
    """The host's input spikes and output errors, and every core's output spikes and ``Wᵀ·δ``,
    each a list of timesteps."""
    P, F = hw["lanes"], hw["fan_in"]
    host_spk = []
    for t in range(T):
        idx = set(rng.sample(range(F + 8), 0 if t == 2 else rng.randint(t == 0, 10)))
        if t == 1:
            idx |= {F - 1, F}
        step = [(i, 1, 0) for i in sorted(idx)]
        if step and rng.random() < 0.3:
            step[-1] = (step[-1][0], 1, 1)
        else:
            step.append((0, 0, 1))
        host_spk.append(step)
    fired = {cp.core: [sorted(rng.sample(range(cp.neurons),
                                         0 if t == T - 2 and cp.core % 2
                                         else rng.randint(t == 0, cp.neurons)))
                       for t in range(T)]
             for cp in program.cores}
    spikes = {c: [[(i, 1, 0) for i in f] + [(0, 0, 1)] for f in steps]
              for c, steps in fired.items()}
    errors = {cp.core: [beats(rng, ceil_div(cp.inputs, P), P) for _ in range(T)]
              for cp in program.cores}
    outputs = sum(cp.neurons for cp in program.cores if cp.layer == program.cores[-1].layer)
    host_err = [beats(rng, ceil_div(outputs, P), P) for _ in range(T)]
    return host_spk, host_err, spikes, errors


def expectations(program, hw, host_spk, host_err, spikes, errors):
    """Every stream at the routers' core, host and line-end ports, as the module docstring
    describes them."""
    P, F = hw["lanes"], hw["fan_in"]
    layers = list(program.layers().values())       # each layer's cores, lowest neurons first
    expected = {f"{name}[{k}]": [] for k in range(CORES) for name in CORE_PORTS}
    expected.update({"west_err[0]": [], "west_psum[0]": [], f"east_spk[{CORES - 1}]": [],
                     f"east_share[{CORES - 1}]": []})
    index_mask = (1 << (max(F, 2) - 1).bit_length()) - 1
    into = host_spk
    for n, parts in enumerate(layers):
        for cp in parts:
            expected[f"core_fp_i[{cp.core}]"] = [(i & index_mask, int(s and i < F), last)
                                                 for step in into for i, s, last in step]
        offsets = [sum(lower.neurons for lower in parts[:j]) for j in range(len(parts))]
        into = [[(o + i, s, 0) for cp, o in zip(parts, offsets, strict=True)
                 for i, s, _ in spikes[cp.core][t][:-1]] + [(offsets[-1], 0, 1)]
                for t in range(len(host_spk))]
        if n == len(layers) - 1:
            expected[f"host_spk_o[{parts[0].core}]"] = [e for step in into for e in step]

    into = host_err
    for n, parts in reversed(list(enumerate(layers))):
        for step in into:
            rest = step
            for j, cp in enumerate(parts):
                keep = len(rest) if j == len(parts) - 1 else ceil_div(cp.neurons, P)
                mine, rest = rest[:keep], rest[keep:]
                expected[f"core_bp_i[{cp.core}]"] += [(v, int(b == keep - 1))
                                                      for b, (v, _) in enumerate(mine)]
        for cp in parts[:-1]:
            expected[f"core_psum_i[{cp.core - 1}]"] = [b for step in errors[cp.core]
                                                       for b in step]
        west = errors[parts[-1].core]
        if n:
            into = west
        else:
            expected[f"host_err_o[{parts[-1].core}]"] = [b for step in west for b in step]
    return expected


def check_nontrivial(program, expected, T):
    """Stimulus that would let a broken router pass is a broken test."""
    layers = list(program.layers().values())
    for cp in program.cores:
        fp_i, bp_i = expected[f"core_fp_i[{cp.core}]"], expected[f"core_bp_i[{cp.core}]"]
        assert sum(e[2] for e in fp_i) == T and sum(e[1] for e in fp_i) > 0
        assert sum(b[1] for b in bp_i) == T and len(bp_i) >= T
    assert any(not e[1] and not e[2] for e in expected[f"core_fp_i[{layers[0][0].core}]"])
    out = expected[f"host_spk_o[{layers[-1][0].core}]"]
    assert sum(e[2] for e in out) == T
    for parts in layers:
        for cp in parts[:-1]:
            assert len(expected[f"core_psum_i[{cp.core - 1}]"]) >= T
    lo = 0
    for cp in layers[-1]:
        assert any(e[1] and lo <= e[0] < lo + cp.neurons for e in out)
        lo += cp.neurons


def run_line(sizes, hw, *, seed, idle, stall, causal, timesteps=5):
    """Run a scenario through a line of routers; return the expected and received streams."""
    config = AcceleratorConfig(cores=CORES, timesteps=timesteps, **hw)
    program = compile_network(SpikingMLP(sizes), config, timesteps=timesteps)
    rng = random.Random(seed)
    host_spk, host_err, spikes, errors = stimulus(program, hw, rng, timesteps)
    expected = expectations(program, hw, host_spk, host_err, spikes, errors)
    check_nontrivial(program, expected, timesteps)
    line = Line(CORES, **hw)
    routers = line.routers
    links = program.links + [0] * (CORES - len(program.links))

    sinks = {}
    for k, router in enumerate(routers):
        for name in CORE_PORTS:
            sinks[f"{name}[{k}]"] = Sink(f"{name}[{k}]", getattr(router, name), rng, stall)
    for name, port in (("west_err[0]", routers[0].west_err),
                       ("west_psum[0]", routers[0].west_psum),
                       (f"east_spk[{CORES - 1}]", routers[-1].east_spk),
                       (f"east_share[{CORES - 1}]", routers[-1].east_share)):
        sinks[name] = Sink(name, port, rng, stall)

    layers = list(program.layers().values())
    first, last = layers[0][-1].core, layers[-1][0].core
    sources = [Source(f"host_spk[{first}]", routers[first].host_spk, rng, idle,
                      [e for step in host_spk for e in step]),
               Source(f"host_err[{last}]", routers[last].host_err, rng, idle,
                      [b for step in host_err for b in step])]
    decoys = []
    for k, router in enumerate(routers):
        east = links[k + 1] if k < CORES - 1 else 0
        if links[k] & Link.SPLIT or k and links[k - 1] & Link.FP_TO_NEXT:
            decoys.append(Source(f"host_spk[{k}]", router.host_spk, rng, 0, [(0x1555, 1, 1)]))
        if east & (Link.BP_TO_PREV | Link.SPLIT):
            decoys.append(Source(f"host_err[{k}]", router.host_err, rng, 0,
                                 [((1 << 16 * hw["lanes"]) - 3, 1)]))
    cores, owner = [], {}
    for cp in program.cores:
        k, router = cp.core, routers[cp.core]
        fp_o = Source(f"core_fp_o[{k}]", router.core_fp_o, rng, idle)
        bp_o = Source(f"core_bp_o[{k}]", router.core_bp_o, rng, idle)
        sources += [fp_o, bp_o]
        core_sinks = [sinks[f"{name}[{k}]"] for name in CORE_PORTS[:3]]
        core = FakeCore(core_sinks, fp_o, bp_o, spikes[k], errors[k], causal=causal,
                        partner=k < CORES - 1 and bool(links[k + 1] & Link.SPLIT))
        cores.append(core)
        owner.update({id(s): core for s in core_sinks})
    sources += decoys

    total = sum(len(v) for v in expected.values())
    slow = 1 / (1 - max(idle, stall))
    limit, patience = int(200 + 5 * total * slow), int(50 + 50 * slow)
    watched = [s.port.ready for s in sources]
    for s in sinks.values():
        watched += [s.port.valid, s.port.payload.as_value()]
    sink_list = list(sinks.values())

    def finished():
        return (all(len(s.got) >= len(expected[s.name]) for s in sink_list)
                and not any(s.queue for s in sources if s not in decoys))

    async def bench(ctx):
        for signal, link in zip(line.links, links, strict=True):
            ctx.set(signal, link)
        for cp in program.cores:
            ctx.set(routers[cp.core].n_active, cp.neurons)
        await ctx.tick()
        extra, quiet = None, 0
        for cycle in range(limit):
            for s in sources:
                s.drive(ctx)
            for s in sink_list:
                s.drive(ctx)
            values = (await ctx.tick().sample(*watched))[2:]
            moved = False
            for s, ready in zip(sources, values, strict=False):
                moved |= s.sampled(ready)
            at = len(sources)
            for n, s in enumerate(sink_list):
                item = s.sampled(cycle, values[at + 2 * n], values[at + 2 * n + 1])
                if item is not None:
                    moved = True
                    if id(s) in owner:
                        owner[id(s)].took(s, item)
            quiet = 0 if moved else quiet + 1
            if quiet == patience:
                break
            for core in cores:
                core.gates()
            if extra is None and finished():
                extra = cycle + 40
                for core in cores:
                    core.causal = False
                for s in sink_list:
                    s.gate, s.stall = True, 0
            if cycle == extra:
                return
        pending = [f"{s.name} took {len(s.got)} of {len(expected[s.name])}" for s in sink_list
                   if len(s.got) < len(expected[s.name])]
        pending += [f"{s.name} holds {len(s.queue)}" for s in sources
                    if s.queue and s not in decoys]
        raise AssertionError(f"the streams stopped at cycle {cycle} (nothing moved for "
                             f"{quiet} cycles, at most {limit} cycles a run): "
                             + "; ".join(pending))

    simulate(line, bench)
    for d in decoys:
        assert d.queue, f"{d.name} was taken though the core's input is linked"
    return expected, {name: s.got for name, s in sinks.items()}


def check(expected, got):
    for name, want in expected.items():
        have = got[name]
        if have != want:
            at = next((i for i, (a, b) in enumerate(zip(have, want, strict=False)) if a != b),
                      min(len(have), len(want)))
            raise AssertionError(f"{name}: {len(have)} elements, {len(want)} expected; from "
                                 f"element {at}: got {have[at:at + 4]}, expected "
                                 f"{want[at:at + 4]}")


@pytest.mark.parametrize("causal", [False, True], ids=["free", "causal"])
@pytest.mark.parametrize("network", list(NETWORKS))
@pytest.mark.parametrize(("idle", "stall", "seed"),
                         [(0, 0, 1), (0.3, 0.3, 2), (0.8, 0.8, 3), (0, 0.8, 4), (0.8, 0, 5)])
def test_line_of_routers(network, idle, stall, seed, causal):
    check(*run_line(NETWORKS[network], HARDWARE["p4"], seed=seed, idle=idle, stall=stall,
                    causal=causal))


@pytest.mark.parametrize("causal", [False, True], ids=["free", "causal"])
@pytest.mark.parametrize(("hw", "sizes"), [
    ("p2", [12, 16, 5]), ("p2", [12, 6, 12]), ("p1", [10, 8, 3]), ("p1", [10, 5, 6])],
    ids=["p2-split-then-layer", "p2-layer-then-split", "p1-split-then-layer", "p1-split-to-split"])
def test_lanes_and_core_sizes(hw, sizes, causal):
    check(*run_line(sizes, HARDWARE[hw], seed=7, idle=0.5, stall=0.5, causal=causal))


def test_long_run():
    check(*run_line(NETWORKS["split-to-split"], HARDWARE["p4"], seed=11, idle=0.5, stall=0.5,
                    causal=True, timesteps=60))


@pytest.mark.parametrize("seed", [21, 22, 23])
@pytest.mark.parametrize("network", ["split-then-layer", "split-to-split"])
def test_seeds(network, seed):
    rng = random.Random(seed)
    check(*run_line(NETWORKS[network], HARDWARE["p4"], seed=seed, idle=rng.random() * 0.9,
                    stall=rng.random() * 0.9, causal=bool(seed % 2)))
