# SPDX-License-Identifier: Apache-2.0
"""The on-chip network: a router beside every core, joined in a line (a 1 × N mesh).

The cores run a network's layers as a pipeline: spikes go forward from layer to layer and
errors backward, so the routers form a line with a link each way between neighbours, and
every stream moves one hop, from core ``c`` to ``c + 1`` (spikes) or ``c - 1`` (errors). Each
link has its own wires for each of its two streams:

* eastward (``c → c + 1``): ``spk``, core ``c``'s output spikes (its own, then those of the
  split partners before it), and ``share``, core ``c``'s input spikes for a partner that holds
  another part of the same layer;
* westward (``c + 1 → c``): ``err``, the errors of core ``c``'s layer's outputs (from the next
  layer's ``Wᵀ·δ``, or a partner's pass-through), and ``psum``, a partner's partial sums
  ``Wᵀ·δ`` that core ``c`` finishes.

Routes are set by each core's :class:`~spikeforge.protocol.Link` bits, written by the host
before a run; nothing is routed by a packet's contents. A layer wider than a core is split by
neurons over neighbouring cores ``c0 < c1 < …``, core ``c1`` holding lower neurons than
``c0`` (``Link.SPLIT``): the input spikes go to all of them, the output spikes come out of the
highest one in ascending order (each router puts the lower partner's events after its own
core's, offset by its core's neuron count), the errors go into the highest one and each
router keeps its core's beats and passes the rest west, and ``Wᵀ·δ`` runs from the highest
core down, each core continuing the partial sums of the one above, so that the sum runs over
the neurons in ascending order as on one core.

Why a line, and why it cannot deadlock: every stream flows one way along the line, so the
channel dependency graph has no cycle; a router never holds one stream waiting for another
except where the order is the layer's own (a split layer's output spikes: the lower neurons'
events of a timestep, then the higher neurons'), and those partners produce their outputs
without waiting on their inputs. A fork sends each element to both its outputs, each once,
as they become ready, without waiting for both together.
"""

from amaranth.hdl import Module, Mux, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.protocol import EVENT_INDEX, LINK_BITS, Link

from .core import error_layout, event_layout

__all__ = ["Router", "fabric_event_layout"]


def fabric_event_layout() -> data.StructLayout:
    """A spike event on the network: the index within the whole layer (the host's 14 bits)."""
    return event_layout(EVENT_INDEX + 1)


class Router(wiring.Component):
    """Core ``c``'s router: the core's streams, its neighbours' links and the host's streams.

    Parameters
    ----------
    neurons, fan_in, lanes : int
        The core's maximum layer size and lane count (:class:`~spikeforge.hw.core.Core`).

    Members
    -------
    link, east_link, west_link : In(LINK_BITS)
        The Link bits of core ``c``, of core ``c + 1`` and of core ``c - 1`` (0 at the ends).
    n_active : In
        Core ``c``'s active neurons: the offset of the partner's events after its own.
    core_fp_i, core_fp_o, core_bp_i, core_bp_o, core_psum_i
        To and from the core.
    west_spk, west_share, east_err, east_psum : In(stream)
        The links from the neighbours (the same streams as their ``east_*`` / ``west_*``).
    east_spk, east_share, west_err, west_psum : Out(stream)
        The links to the neighbours.
    host_spk, host_err : In(stream)
        Input spikes and errors from the host, for a core whose inputs are not linked.
    host_spk_o, host_err_o : Out(stream)
        Output spikes and input errors that go to the host (the SoC's output FIFOs).
    """

    def __init__(self, *, neurons: int, fan_in: int, lanes: int):
        self._neurons, self._fan_in, self._lanes = neurons, fan_in, lanes
        ev = stream.Signature(fabric_event_layout())
        err = stream.Signature(error_layout(lanes))
        super().__init__({
            "link": In(LINK_BITS), "east_link": In(LINK_BITS), "west_link": In(LINK_BITS),
            "n_active": In(range(neurons + 1)),
            "core_fp_i": Out(stream.Signature(event_layout(fan_in))),
            "core_fp_o": In(stream.Signature(event_layout(neurons))),
            "core_bp_i": Out(err), "core_bp_o": In(err), "core_psum_i": Out(err),
            "west_spk": In(ev), "west_share": In(ev), "east_err": In(err), "east_psum": In(err),
            "east_spk": Out(ev), "east_share": Out(ev), "west_err": Out(err),
            "west_psum": Out(err),
            "host_spk": In(ev), "host_err": In(err),
            "host_spk_o": Out(ev), "host_err_o": Out(err),
        })

    def elaborate(self, platform):
        m = Module()
        P, F = self._lanes, self._fan_in
        lane_bits = P.bit_length() - 1
        split = self.link[Link.SPLIT.bit_length() - 1]
        to_next = self.link[Link.FP_TO_NEXT.bit_length() - 1]
        to_prev = self.link[Link.BP_TO_PREV.bit_length() - 1]
        east_split = self.east_link[Link.SPLIT.bit_length() - 1]
        from_prev = self.west_link[Link.FP_TO_NEXT.bit_length() - 1] & ~split
        from_next = (self.east_link[Link.BP_TO_PREV.bit_length() - 1] | east_split)

        # ---- input spikes: from the host, the previous layer, or shared with the partner ----
        src = stream.Signature(fabric_event_layout()).create()
        with m.If(split):
            m.d.comb += _route(self.west_share, src)
        with m.Elif(from_prev):
            m.d.comb += _route(self.west_spk, src)
        with m.Else():
            m.d.comb += _route(self.host_spk, src)
        # A fork: the core and (for a split partner) the east link each take every element
        # once; an output that took it waits (``sent``) until the other has.
        sent_core, sent_east = Signal(name="sent_core"), Signal(name="sent_east")
        want_east = east_split
        core_done = sent_core | self.core_fp_i.ready
        east_done = ~want_east | sent_east | self.east_share.ready
        fits = src.payload.index < F          # a wider layer's event is dropped, not aliased
        m.d.comb += [
            self.core_fp_i.valid.eq(src.valid & ~sent_core),
            self.core_fp_i.payload.index.eq(src.payload.index),
            self.core_fp_i.payload.spike.eq(src.payload.spike & fits),
            self.core_fp_i.payload.last.eq(src.payload.last),
            self.east_share.valid.eq(src.valid & want_east & ~sent_east),
            self.east_share.payload.eq(src.payload),
            src.ready.eq(core_done & east_done),
        ]
        with m.If(src.valid):
            with m.If(core_done & east_done):
                m.d.sync += [sent_core.eq(0), sent_east.eq(0)]
            with m.Else():
                m.d.sync += [sent_core.eq(core_done), sent_east.eq(east_done & want_east)]

        # ---- output spikes: the core's, then (split) the partner's, offset past its own ----
        out = stream.Signature(fabric_event_layout()).create()
        from_west = Signal()        # after the core's events of this timestep
        own = self.core_fp_o.payload
        with m.If(~from_west):
            close_own = own.last & split      # the partner's events and its `last` follow
            m.d.comb += [
                out.valid.eq(self.core_fp_o.valid & ~close_own),
                out.payload.index.eq(own.index),
                out.payload.spike.eq(own.spike),
                out.payload.last.eq(own.last),
                self.core_fp_o.ready.eq(out.ready | close_own),
            ]
            with m.If(self.core_fp_o.valid & close_own):
                m.d.sync += from_west.eq(1)
        with m.Else():
            west = self.west_spk.payload
            m.d.comb += [
                out.valid.eq(self.west_spk.valid),
                out.payload.index.eq(west.index + self.n_active),
                out.payload.spike.eq(west.spike),
                out.payload.last.eq(west.last),
                self.west_spk.ready.eq(out.ready),
            ]
            with m.If(self.west_spk.valid & out.ready & west.last):
                m.d.sync += from_west.eq(0)
        with m.If(to_next):
            m.d.comb += _route(out, self.east_spk)
        with m.Else():
            m.d.comb += _route(out, self.host_spk_o)

        # ---- errors in: the core's beats of each timestep, the partner's passed on ----
        err = stream.Signature(error_layout(P)).create()
        with m.If(from_next):
            m.d.comb += _route(self.east_err, err)
        with m.Else():
            m.d.comb += _route(self.host_err, err)
        # Registered: the layer size changes only by a bus write while the core is idle, and
        # the adder would otherwise sit in the error stream's ready path through every router.
        chunks = Signal(range(self._neurons // P + 1))
        m.d.sync += chunks.eq((self.n_active + P - 1) >> lane_bits)
        beat = Signal(range(self._neurons // P + 1))      # this core's beats taken this step
        mine = ~split | (beat < chunks)
        passed = stream.Signature(error_layout(P)).create()
        m.d.comb += [
            self.core_bp_i.valid.eq(err.valid & mine),
            self.core_bp_i.payload.value.eq(err.payload.value),
            self.core_bp_i.payload.last.eq(err.payload.last | (beat + 1 == chunks)),
            passed.valid.eq(err.valid & ~mine),
            passed.payload.eq(err.payload),
            err.ready.eq(Mux(mine, self.core_bp_i.ready, passed.ready)),
        ]
        with m.If(err.valid & err.ready):
            with m.If(err.payload.last):
                m.d.sync += beat.eq(0)
            with m.Elif(mine & split):
                m.d.sync += beat.eq(beat + 1)

        # ---- errors out: the core's Wᵀ·δ, or the partner's share of the errors ----
        m.d.comb += _route(self.east_psum, self.core_psum_i)
        with m.If(split):
            m.d.comb += _route(self.core_bp_o, self.west_psum)
            m.d.comb += _route(passed, self.west_err)
        with m.Elif(to_prev):
            m.d.comb += _route(self.core_bp_o, self.west_err)
        with m.Else():
            m.d.comb += _route(self.core_bp_o, self.host_err_o)
        return m


def _route(source, sink) -> list:
    """The statements that join stream ``source`` to ``sink`` (in the condition they are added
    under)."""
    return [sink.valid.eq(source.valid), sink.payload.eq(source.payload),
            source.ready.eq(sink.ready)]
