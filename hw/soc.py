# SPDX-License-Identifier: Apache-2.0
"""The SoC: the host link and a chain of training cores.

Core ``c``'s output spikes go to core ``c + 1``'s input, and core ``c + 1``'s input errors to
core ``c``'s output errors, where the routing bits (:class:`~spikeforge.protocol.Link`, set
through the link's registers) say so; otherwise they go to the core's output FIFOs, which the
host reads (``SPIKES_OUT``, ``ERRORS_OUT``), and the core's inputs come from the host
(``SPIKES_IN``, ``ERRORS_IN``). So a network of several layers trains with its spikes and errors
passed from core to core on the chip, and the host sees only the first layer's inputs and the
last layer's outputs.

Each output FIFO holds one whole sample: ``timesteps · (neurons + 1)`` event words, and
``timesteps · fan_in / lanes`` error beats.
"""

from amaranth.hdl import Array, Cat, Const, Module, Mux
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.gen.config import AcceleratorConfig
from spikeforge.golden.surrogate import SURROGATES
from spikeforge.protocol import EVENT_INDEX, MAX_WORDS, VERSION

from .core import Core
from .hostlink import HostLink

__all__ = ["SoC"]


class SoC(wiring.Component):
    """The accelerator behind a byte-stream host link.

    Members
    -------
    rx : In(stream.Signature(8))
        Command frames from the host (:mod:`spikeforge.protocol`).
    tx : Out(stream.Signature(8))
        Reply frames to the host.
    busy : Out(1)
        A frame is in progress or a core is running (not counting a core that waits for the
        host's next spikes or errors): while it is low, the SoC only changes on host input.
    """

    def __init__(self, config: AcceleratorConfig, *, link_timeout: int = 1 << 20):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"SoC needs an AcceleratorConfig, not {config!r}")
        self._config = config
        self._link_timeout = link_timeout
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    config = property(lambda self: self._config)

    @property
    def spike_fifo_depth(self) -> int:
        return self._config.timesteps * (self._config.neurons + 1)

    @property
    def error_fifo_depth(self) -> int:
        return self._config.timesteps * (self._config.fan_in // self._config.lanes)

    def identity(self) -> tuple:
        """The words of the ``IDENTIFY`` reply, in the order of ``protocol.IDENTITY``."""
        c = self._config
        return (VERSION, c.cores, c.lanes, c.neurons, c.fan_in, c.timesteps,
                int(c.reset == "soft"), int(c.detach_reset), list(SURROGATES).index(c.surrogate),
                min(self.spike_fifo_depth, 0xFFFF), MAX_WORDS)

    def elaborate(self, platform):
        m = Module()
        c = self._config
        n, P, F = c.cores, c.lanes, c.fan_in
        cores = [Core(**c.core_args()) for _ in range(n)]
        for k, core in enumerate(cores):
            m.submodules[f"core{k}"] = core
        m.submodules.link = link = HostLink(cores=n, lanes=P, fan_in=F,
                                            identity=self.identity(),
                                            timeout=self._link_timeout)
        wiring.connect(m, wiring.flipped(self.rx), link.i)
        wiring.connect(m, link.o, wiring.flipped(self.tx))

        # The bus is a one-cycle request that the host link waits to see acknowledged, so a
        # register each way between the link and the cores costs two cycles an access and
        # keeps the long routes from the link's frame buffer to every core off the clock's path.
        for k, core in enumerate(cores):
            selected = link.bus_core == k
            m.d.sync += [core.bus_en.eq(link.bus_en & selected), core.bus_we.eq(link.bus_we),
                         core.bus_probe.eq(link.bus_probe), core.bus_addr.eq(link.bus_addr),
                         core.bus_wdata.eq(link.bus_wdata)]
        m.d.sync += [
            link.bus_ack.eq(Array(core.bus_ack for core in cores)[link.bus_core]),
            link.bus_err.eq(Array(core.bus_err for core in cores)[link.bus_core]),
            link.bus_rdata.eq(Array(core.bus_rdata for core in cores)[link.bus_core]),
        ]

        fp_next = [link.link[2 * k] if k < n - 1 else Const(0) for k in range(n)]
        bp_prev = [link.link[2 * k + 1] if k > 0 else Const(0) for k in range(n)]
        fp_from_prev = [Const(0)] + fp_next[:-1]
        bp_from_next = bp_prev[1:] + [Const(0)]
        spike_fifos, error_fifos = [], []
        host_word = link.spikes.payload.word
        for k, core in enumerate(cores):
            m.submodules[f"spikes{k}"] = sf = fifo.SyncFIFOBuffered(width=16,
                                                                   depth=self.spike_fifo_depth)
            m.submodules[f"errors{k}"] = ef = fifo.SyncFIFOBuffered(width=16 * P,
                                                                   depth=self.error_fifo_depth)
            spike_fifos.append(sf)
            error_fifos.append(ef)

            out = core.fp_o.payload
            m.d.comb += [
                sf.w_en.eq(core.fp_o.valid & ~fp_next[k]),
                sf.w_data.eq(Cat(out.index[:14], Const(0, 14 - min(len(out.index), 14)),
                                 out.spike, out.last)),
                ef.w_en.eq(core.bp_o.valid & ~bp_prev[k]),
                ef.w_data.eq(core.bp_o.payload.value),
            ]
            if k < n - 1:
                nxt = cores[k + 1]
                m.d.comb += core.fp_o.ready.eq(Mux(fp_next[k], nxt.fp_i.ready, sf.w_rdy))
            else:
                m.d.comb += core.fp_o.ready.eq(sf.w_rdy)
            if k > 0:
                prv = cores[k - 1]
                m.d.comb += core.bp_o.ready.eq(Mux(bp_prev[k], prv.bp_i.ready, ef.w_rdy))
            else:
                m.d.comb += core.bp_o.ready.eq(ef.w_rdy)

            host_spike = link.spikes.valid & (link.spikes.payload.core == k)
            host_error = link.errors.valid & (link.errors.payload.core == k)
            if k > 0:
                prev_out = cores[k - 1].fp_o
                # An event of a wider layer than this core takes is dropped, not aliased.
                fits = prev_out.payload.index < F
                with m.If(fp_from_prev[k]):
                    m.d.comb += [core.fp_i.valid.eq(prev_out.valid),
                                 core.fp_i.payload.index.eq(prev_out.payload.index),
                                 core.fp_i.payload.spike.eq(prev_out.payload.spike & fits),
                                 core.fp_i.payload.last.eq(prev_out.payload.last)]
                with m.Else():
                    m.d.comb += core.fp_i.valid.eq(host_spike)
            else:
                m.d.comb += core.fp_i.valid.eq(host_spike)
            with m.If(~fp_from_prev[k]):
                m.d.comb += [core.fp_i.payload.index.eq(host_word & EVENT_INDEX),
                             core.fp_i.payload.spike.eq(host_word[14]),
                             core.fp_i.payload.last.eq(host_word[15])]
            if k < n - 1:
                next_err = cores[k + 1].bp_o
                with m.If(bp_from_next[k]):
                    m.d.comb += [core.bp_i.valid.eq(next_err.valid),
                                 core.bp_i.payload.eq(next_err.payload)]
                with m.Else():
                    m.d.comb += [core.bp_i.valid.eq(host_error),
                                 core.bp_i.payload.value.eq(link.errors.payload.value),
                                 core.bp_i.payload.last.eq(link.errors.payload.last)]
            else:
                m.d.comb += [core.bp_i.valid.eq(host_error),
                             core.bp_i.payload.value.eq(link.errors.payload.value),
                             core.bp_i.payload.last.eq(link.errors.payload.last)]

        m.d.comb += [
            link.spikes.ready.eq(Array(core.fp_i.ready & ~fp_from_prev[k]
                                       for k, core in enumerate(cores))[link.spikes.payload.core]),
            link.errors.ready.eq(Array(core.bp_i.ready & ~bp_from_next[k]
                                       for k, core in enumerate(cores))[link.errors.payload.core]),
            link.spikes_out.valid.eq(Array(f.r_rdy for f in spike_fifos)[link.out_sel]),
            link.spikes_out.payload.eq(Array(f.r_data for f in spike_fifos)[link.out_sel]),
            link.spikes_level.eq(Array(f.r_level for f in spike_fifos)[link.out_sel]),
            link.errors_out.valid.eq(Array(f.r_rdy for f in error_fifos)[link.out_sel]),
            link.errors_out.payload.eq(Array(f.r_data for f in error_fifos)[link.out_sel]),
            link.errors_level.eq(Array(f.r_level for f in error_fifos)[link.out_sel]),
            self.busy.eq(link.busy | Cat(core.busy & ~core.waiting for core in cores).any()),
        ]
        for k, (sf, ef) in enumerate(zip(spike_fifos, error_fifos, strict=True)):
            m.d.comb += [sf.r_en.eq(link.spikes_out.ready & (link.out_sel == k)),
                         ef.r_en.eq(link.errors_out.ready & (link.out_sel == k))]
        return m
