# SPDX-License-Identifier: Apache-2.0
"""The SoC: the host link and a line of training cores, each with its router.

The routers (:mod:`spikeforge.hw.fabric`) pass core ``c``'s output spikes to core ``c + 1``'s
input, and core ``c + 1``'s input errors to core ``c``'s output errors, where the routing bits
(:class:`~spikeforge.protocol.Link`, set through the link's registers) say so, and join the
cores of a layer split by neurons; otherwise a core's outputs go to its output FIFOs
(:class:`OutputFifos`), which the host reads (``SPIKES_OUT``, ``ERRORS_OUT``), and its inputs
come from the host (``SPIKES_IN``, ``ERRORS_IN``, through :class:`HostInputs`). So a network of
several layers trains with its spikes and errors passed from core to core on the chip, and the
host sees only the first layer's inputs and the last layer's outputs.

Each output FIFO holds one whole sample: ``timesteps · (neurons + 1)`` event words, and
``timesteps · fan_in / lanes`` error beats.

With Q-K units (``AcceleratorConfig.qk_units``), unit ``u``'s
:class:`~spikeforge.hw.attention.AttentionBlock` sits on the link from core ``4u + 1`` (the
``[Wq; Wk]`` layer) to core ``4u + 2`` (the projection): the spikes and errors between them pass
through the attention. A FIFO each way joins the membrane-shortcut streams of core ``4u`` (the
embedding) and core ``4u + 2``, deep enough for every token of a timestep. The units'
registers are the host link's (``SocReg.QK``).
"""

from amaranth.hdl import Array, Cat, Module, Shape
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.gen.config import AcceleratorConfig
from spikeforge.protocol import EVENT_WORD, QkReg

from .attention import AttentionBlock
from .core import Core, error_layout
from .fabric import Router, fabric_event_layout
from .hostlink import HostLink, check_cores, check_lanes, errors_layout, spikes_layout

__all__ = ["HostInputs", "OutputFifos", "SoC"]


class HostInputs(wiring.Component):
    """The host's input spikes and errors to the routers of the cores they are for.

    Parameters
    ----------
    cores, lanes : int
        The routers, and the binary16 values in an error beat.

    Members
    -------
    spikes, errors : In(stream.Signature(...))
        The host link's event words and error beats, each for core ``core``.
    spk, err : Out(stream.Signature(...)).array(cores)
        Core ``c``'s router's ``host_spk`` and ``host_err``.
    pending : Out(1)
        A word or beat is on its way.

    Each stream passes a three-entry FIFO: the link reads its words out of its frame buffer,
    and the routes from there to every core's event checks would otherwise be the longest on
    the chip. Three entries keep one word a cycle flowing; latency two cycles.
    """

    def __init__(self, *, cores: int, lanes: int):
        check_cores(cores, "Host input")
        check_lanes(lanes)
        super().__init__({
            "spikes": In(stream.Signature(spikes_layout())),
            "errors": In(stream.Signature(errors_layout(lanes))),
            "spk": Out(stream.Signature(fabric_event_layout())).array(cores),
            "err": Out(stream.Signature(error_layout(lanes))).array(cores),
            "pending": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        pending = []
        for name, port, outs in (("spikes", self.spikes, self.spk),
                                 ("errors", self.errors, self.err)):
            layout = data.Layout.cast(port.payload.shape())
            m.submodules[name] = buf = fifo.SyncFIFOBuffered(width=layout.size, depth=3)
            head = data.View(layout, buf.r_data)
            m.d.comb += [buf.w_data.eq(port.payload), buf.w_en.eq(port.valid),
                         port.ready.eq(buf.w_rdy),
                         buf.r_en.eq(Array(out.ready for out in outs)[head.core])]
            for k, out in enumerate(outs):
                m.d.comb += out.valid.eq(buf.r_rdy & (head.core == k))
                if name == "spikes":
                    m.d.comb += [out.payload[f].eq(head.word[f]) for f in ("index", "spike",
                                                                           "last")]
                else:
                    m.d.comb += [out.payload.value.eq(head.value), out.payload.last.eq(head.last)]
            pending.append(buf.level != 0)
        m.d.comb += self.pending.eq(Cat(pending).any())
        return m


class OutputFifos(wiring.Component):
    """Every core's output FIFOs of spikes and errors for the host, read one core at a time.

    Parameters
    ----------
    cores, lanes : int
        The cores, and the binary16 values in an error beat.
    spike_depth, error_depth : int
        Event words and error beats a core's FIFOs hold.

    Members
    -------
    spk, err : In(stream.Signature(...)).array(cores)
        Core ``c``'s router's ``host_spk_o`` and ``host_err_o``.
    sel : In(range(max(cores, 2)))
        The core whose FIFOs the host reads.
    spikes_out, errors_out : Out(stream.Signature(...))
        Core ``sel``'s FIFOs: event words (:data:`~spikeforge.protocol.EVENT_WORD`) and error
        beats.
    spikes_level, errors_level : Out(32)
        Their fill levels.
    """

    def __init__(self, *, cores: int, lanes: int, spike_depth: int, error_depth: int):
        check_cores(cores, "Output FIFO")
        check_lanes(lanes)
        for what, depth in (("Spike", spike_depth), ("Error", error_depth)):
            if not isinstance(depth, int) or depth < 1:
                raise ValueError(f"{what} FIFO depth must be a positive integer, not {depth!r}")
        self._depths = spike_depth, error_depth
        super().__init__({
            "spk": In(stream.Signature(fabric_event_layout())).array(cores),
            "err": In(stream.Signature(error_layout(lanes))).array(cores),
            "sel": In(range(max(cores, 2))),
            "spikes_out": Out(stream.Signature(EVENT_WORD.size)),
            "spikes_level": Out(32),
            "errors_out": Out(stream.Signature(16 * lanes)),
            "errors_level": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        for kind, ins, out, level, depth in (
                ("spikes", self.spk, self.spikes_out, self.spikes_level, self._depths[0]),
                ("errors", self.err, self.errors_out, self.errors_level, self._depths[1])):
            fifos = []
            for k, port in enumerate(ins):
                width = Shape.cast(out.payload.shape()).width
                m.submodules[f"{kind}{k}"] = q = fifo.SyncFIFOBuffered(width=width, depth=depth)
                fifos.append(q)
                if kind == "spikes":
                    word = data.View(EVENT_WORD, q.w_data)
                    m.d.comb += [word[f].eq(port.payload[f]) for f in ("index", "spike", "last")]
                else:
                    m.d.comb += q.w_data.eq(port.payload.value)
                m.d.comb += [q.w_en.eq(port.valid), port.ready.eq(q.w_rdy),
                             q.r_en.eq(out.ready & (self.sel == k))]
            m.d.comb += [out.valid.eq(Array(q.r_rdy for q in fifos)[self.sel]),
                         out.payload.eq(Array(q.r_data for q in fifos)[self.sel]),
                         level.eq(Array(q.r_level for q in fifos)[self.sel])]
        return m


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

    ``baud`` is the rate of the UART in front of ``rx`` and ``tx``, reported in the identity
    (``baud_100``) so the host can compare it with its own; 0 where there is none.
    """

    def __init__(self, config: AcceleratorConfig, *, link_timeout: int = 1 << 20,
                 baud: int = 0):
        if not isinstance(config, AcceleratorConfig):
            raise TypeError(f"SoC needs an AcceleratorConfig, not {config!r}")
        if isinstance(baud, bool) or not isinstance(baud, int) or baud < 0:
            raise ValueError(f"The UART's baud rate must be a non-negative integer, not "
                             f"{baud!r}")
        self._config = config
        self._link_timeout = link_timeout
        self._baud = baud
        super().__init__({
            "rx": In(stream.Signature(8)),
            "tx": Out(stream.Signature(8)),
            "busy": Out(1),
        })

    config = property(lambda self: self._config)

    @property
    def spike_fifo_depth(self) -> int:
        return self._config.spike_fifo_depth

    @property
    def error_fifo_depth(self) -> int:
        return self._config.timesteps * (self._config.fan_in // self._config.lanes)

    def identity(self) -> tuple:
        """The words of the ``IDENTIFY`` reply, in the order of ``protocol.IDENTITY``."""
        fields = self._config.identity()
        fields["baud_100"] = min(round(self._baud / 100), 0xFFFF)
        return tuple(fields.values())

    def elaborate(self, platform):
        m = Module()
        c = self._config
        n, P, F = c.cores, c.lanes, c.fan_in
        cores = [Core(**c.core_args()) for _ in range(n)]
        for k, core in enumerate(cores):
            m.submodules[f"core{k}"] = core
        U = c.qk_units
        m.submodules.link = link = HostLink(cores=n, lanes=P, fan_in=F,
                                            identity=self.identity(),
                                            timeout=self._link_timeout, qk_units=U,
                                            qk_limits=(c.qk_args()["tokens"], c.neurons // 2,
                                                       c.timesteps))
        blocks = {}         # the core each unit follows
        for u in range(U):
            m.submodules[f"qk{u}"] = blocks[4 * u + 1] = block = AttentionBlock(**c.qk_args())
            for r in QkReg:
                port = getattr(block, f"c_{r.name.lower()}")
                port = port.as_value() if hasattr(port, "as_value") else port
                m.d.comb += port.eq(link.qk[u][r.name.lower()][:len(port)])
        if U:
            m.d.comb += [link.qk_busy.eq(Cat(b.busy for b in blocks.values())),
                         link.qk_active.eq(Cat(b.busy & ~b.waiting for b in blocks.values()))]

        # Membrane shortcuts: core 4u's sc_o to core 4u + 2's sc_i, and back. Elsewhere the
        # streams are tied off (a core set to a shortcut there sends into nothing and adds +0).
        depth = c.timesteps * c.neurons // P
        joined = set()
        for u in range(U):
            a, b = cores[4 * u], cores[4 * u + 2]
            for name, src, dst in ((f"shortcut{u}_fwd", a.sc_o, b.sc_i),
                                   (f"shortcut{u}_bwd", b.sc_o, a.sc_i)):
                m.submodules[name] = q = fifo.SyncFIFOBuffered(width=16 * P + 1, depth=depth)
                m.d.comb += [q.w_en.eq(src.valid), q.w_data.eq(src.payload),
                             src.ready.eq(q.w_rdy), dst.valid.eq(q.r_rdy),
                             dst.payload.eq(q.r_data), q.r_en.eq(dst.ready)]
            joined |= {4 * u, 4 * u + 2}
        for k, core in enumerate(cores):
            if k not in joined:
                m.d.comb += [core.sc_o.ready.eq(1), core.sc_i.valid.eq(1),
                             core.sc_i.payload.eq(0)]
        wiring.connect(m, wiring.flipped(self.rx), link.i)
        wiring.connect(m, link.o, wiring.flipped(self.tx))

        # The bus is a one-cycle request that the host link waits to see acknowledged, so a
        # register each way between the link and the cores costs two cycles an access and
        # keeps the long routes from the link's frame buffer to every core off the clock's path.
        # Each core's request registers load only when the request is its own: their enables
        # differ, so synthesis keeps one set beside each core rather than merging them into one
        # set that would drive every core's decode across the die.
        for k, core in enumerate(cores):
            selected = link.bus.en & (link.bus_core == k)
            m.d.sync += core.bus.en.eq(selected)
            with m.If(selected):
                m.d.sync += [core.bus.we.eq(link.bus.we), core.bus.probe.eq(link.bus.probe),
                             core.bus.addr.eq(link.bus.addr), core.bus.wdata.eq(link.bus.wdata)]
        m.d.sync += [
            link.bus.ack.eq(Array(core.bus.ack for core in cores)[link.bus_core]),
            link.bus.err.eq(Array(core.bus.err for core in cores)[link.bus_core]),
            link.bus.rdata.eq(Array(core.bus.rdata for core in cores)[link.bus_core]),
        ]

        m.submodules.host_inputs = host = HostInputs(cores=n, lanes=P)
        wiring.connect(m, link.spikes, host.spikes)
        wiring.connect(m, link.errors, host.errors)
        m.submodules.outputs = outputs = OutputFifos(
            cores=n, lanes=P, spike_depth=self.spike_fifo_depth,
            error_depth=self.error_fifo_depth)
        m.d.comb += outputs.sel.eq(link.out_sel)
        wiring.connect(m, outputs.spikes_out, link.spikes_out)
        wiring.connect(m, outputs.errors_out, link.errors_out)
        m.d.comb += [link.spikes_level.eq(outputs.spikes_level),
                     link.errors_level.eq(outputs.errors_level)]

        def sliced(name, source, sink=None):
            """``source``'s elements through a three-entry FIFO: to ``sink``, or the returned
            stream."""
            layout = data.Layout.cast(source.payload.shape())
            m.submodules[name] = buf = fifo.SyncFIFOBuffered(width=layout.size, depth=3)
            out = stream.Signature(layout).create()
            m.d.comb += [buf.w_data.eq(source.payload), buf.w_en.eq(source.valid),
                         source.ready.eq(buf.w_rdy), out.valid.eq(buf.r_rdy),
                         out.payload.eq(buf.r_data), buf.r_en.eq(out.ready)]
            if sink is not None:
                wiring.connect(m, out, sink)
            return out

        links = [link.link[k] for k in range(n)]
        routers = [Router(neurons=c.neurons, fan_in=F, lanes=P) for _ in range(n)]
        for k, (core, router) in enumerate(zip(cores, routers, strict=True)):
            m.submodules[f"router{k}"] = router
            wiring.connect(m, host.spk[k], router.host_spk)
            wiring.connect(m, host.err[k], router.host_err)
            wiring.connect(m, router.host_spk_o, outputs.spk[k])
            wiring.connect(m, router.host_err_o, outputs.err[k])
            m.d.comb += [router.link.eq(links[k]), router.n_active.eq(core.n_active),
                         router.west_link.eq(links[k - 1] if k else 0),
                         router.east_link.eq(links[k + 1] if k < n - 1 else 0)]
            wiring.connect(m, router.core_fp_i, core.fp_i)
            wiring.connect(m, core.fp_o, router.core_fp_o)
            wiring.connect(m, router.core_bp_i, core.bp_i)
            wiring.connect(m, core.bp_o, router.core_bp_o)
            wiring.connect(m, router.core_psum_i, core.psum_i)
            if k > 0:
                # Every stream from core to core passes a three-entry buffer, whose valid and
                # ready are flip-flops: no handshake runs combinationally from one core
                # through the routers into the next.
                west = routers[k - 1]
                spikes = sliced(f"link{k}_spikes", west.east_spk)
                errors = sliced(f"link{k}_errors", router.west_err)
                sliced(f"link{k}_share", west.east_share, router.west_share)
                sliced(f"link{k}_psum", router.west_psum, west.east_psum)
                if k - 1 in blocks:
                    block = blocks[k - 1]
                    for src, dst in ((spikes, block.fp_i), (block.fp_o, router.west_spk)):
                        m.d.comb += [dst.valid.eq(src.valid), src.ready.eq(dst.ready)] + [
                            getattr(dst.payload, f).eq(getattr(src.payload, f))
                            for f in ("index", "spike", "last")]
                    wiring.connect(m, errors, block.bp_i)
                    wiring.connect(m, block.bp_o, west.east_err)
                else:
                    wiring.connect(m, spikes, router.west_spk)
                    wiring.connect(m, errors, west.east_err)
        # The ends of the line: nothing comes in from beyond them.
        for port in (routers[0].west_spk, routers[0].west_share, routers[-1].east_err,
                     routers[-1].east_psum):
            m.d.comb += port.valid.eq(0)

        m.d.comb += [
            link.active.eq(Cat(*(unit.busy & ~unit.waiting
                                 for unit in [*cores, *blocks.values()])).any()),
            self.busy.eq(link.busy | link.active | host.pending),
        ]
        return m
