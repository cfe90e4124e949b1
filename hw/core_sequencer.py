# SPDX-License-Identifier: Apache-2.0
"""The sequencer of a training core: which phase of FP, BP, WG and the update it is in."""

from amaranth.hdl import Cat, Module, Mux, Signal
from amaranth.lib import enum, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.regmap import Command, Counter, Shortcut

__all__ = ["CoreSequencer", "Phase", "StepCounter"]


class Phase(enum.Enum, shape=5):
    """What a core is doing; ``IDLE`` between samples and commands."""
    IDLE = 0
    FP_ACC = 1          # input events into the currents
    FP_DRAIN = 2        # the adders empty
    FP_SC_OUT = 3       # the currents out on the membrane shortcut
    FP_SC_ADD = 4       # the shortcut's currents added in
    FP_LIF = 5          # the LIF pass and the output events
    FP_END = 6          # the step's closing event
    BP_RECV = 7         # the output errors, through the BPTT pass
    BP_DRAIN = 8
    BP_SC_ADD = 9       # the shortcut's δX added in
    BP_SC_OUT = 10      # δX out on the shortcut
    BP_PSUM = 11        # a split layer's partial sums in
    BP_WT = 12          # Wᵀ·δX and WG
    BP_OUT = 13         # the input errors out
    UPDATE = 14         # W -= lr·ΔW
    CLEAR = 15          # ΔW = 0
    DRAIN_IDLE = 16     # the update's pipeline empties


class StepCounter(wiring.Component):
    """The step ``t`` of a sample and its token ``r`` (``t mod tokens``): forward from 0
    (``begin``, ``fp_next``), then backward (``bp_first``, ``bp_next``) from the last
    timestep's first token, a timestep's tokens in order, ``bt`` the timestep's first step.

    ``fp_last``: ``t`` is the sample's last step; ``bp_token``: the backward step after ``t`` is
    its next token; ``bp_last``: ``t`` is in the first timestep.
    """

    def __init__(self, timesteps: int):
        T = timesteps
        super().__init__({
            "timesteps": In(range(T + 1)), "tokens": In(range(T + 1)),
            "begin": In(1), "fp_next": In(1), "bp_first": In(1), "bp_next": In(1),
            "t": Out(range(T + 1)), "r": Out(range(T)), "bt": Out(range(T + 1)),
            "fp_last": Out(1), "bp_token": Out(1), "bp_last": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        t, r, bt, tokens = self.t, self.r, self.bt, self.tokens
        r_prev = Mux(r == 0, tokens - 1, r - 1)
        m.d.comb += [self.fp_last.eq(t + 1 == self.timesteps), self.bp_last.eq(bt == 0),
                     self.bp_token.eq((r + 1 != tokens) & (t + 1 != self.timesteps))]
        with m.If(self.begin):
            m.d.sync += [t.eq(0), r.eq(0)]
        with m.If(self.fp_next):
            m.d.sync += [t.eq(t + 1), r.eq(Mux(r + 1 == tokens, 0, r + 1))]
        with m.If(self.bp_first):
            m.d.sync += [t.eq(self.timesteps - 1 - r_prev), bt.eq(self.timesteps - 1 - r_prev),
                         r.eq(0)]
        with m.If(self.bp_next):
            with m.If(self.bp_token):
                m.d.sync += [t.eq(t + 1), r.eq(r + 1)]
            with m.Elif(~self.bp_last):
                m.d.sync += [t.eq(bt - tokens), bt.eq(bt - tokens), r.eq(0)]
        return m


class CoreSequencer(wiring.Component):
    """The core's phases and its step counters, from the commands and the engines' handshakes.

    A sample's FP runs ``timesteps`` steps (``t``; ``r`` is its token, ``t mod tokens``): the
    events (``FP_ACC``, until the issuer's ``acc_close``), the adders' drain, the membrane
    shortcut if any, the LIF pass (``lif_issue`` chunk ``lif_chunk``, as the serializer's FIFO of
    ``lif_room``) and the step's closing event (``fp_end``). BP then takes the steps
    from the last timestep back, a timestep's tokens first to last (``bt`` is the timestep's
    first step): the output errors (``rc`` beats), the shortcut, the partial sums,
    ``Wᵀ·δX`` and WG (``wt_start``, ``wg_start``) and the input errors out (``out_issue`` beat
    ``out_j``). ``bump`` counts the stall cycles of :class:`~spikeforge.regmap.Counter` (the busy
    cycles follow from the phase: :meth:`busy`).
    """

    def __init__(self, *, neurons: int, fan_in: int, timesteps: int, lanes: int,
                 fp_drain: int, bp_drain: int, update_drain: int):
        self._drains = fp_drain, bp_drain, update_drain
        T, CH, FCH = timesteps, neurons // lanes, fan_in // lanes
        self._timesteps = T
        super().__init__({
            "command": In(Command), "timesteps": In(range(T + 1)), "tokens": In(range(T + 1)),
            "chunks": In(range(CH + 1)), "in_chunks": In(range(FCH + 1)), "shortcut": In(Shortcut),
            "bp_input_error": In(1), "partial_in": In(1), "fp_done": In(1), "bp_done": In(1),
            "bp_valid": In(1), "fp_ready": In(1), "psum_done": In(1),
            "acc_busy": In(1), "acc_close": In(1), "sc_done": In(1), "sc_stall": In(1),
            "lif_room": In(1), "lif_empty": In(1),
            "wt_done": In(1), "wg_done": In(1), "out_room": In(1), "out_empty": In(1),
            "walk_done": In(1),
            "phase": Out(Phase),
            "t": Out(range(T + 1)), "r": Out(range(T)), "bt": Out(range(T + 1)),
            "rc": Out(range(CH + 1)), "out_j": Out(range(FCH + 1)),
            "lif_chunk": Out(range(CH + 1)), "lif_issue": Out(1), "out_issue": Out(1),
            "psum_start": Out(1), "bp_ready": Out(1), "fp_end": Out(1),
            "wt_start": Out(1), "wg_start": Out(1), "walk_start": Out(1),
            "fp_done_set": Out(1), "bp_done_set": Out(1), "done_clear": Out(1),
            "begin": Out(1), "step_done": Out(1), "sc_restart": Out(1), "count_write": Out(1),
            "waiting": Out(1), "bump": Out(len(Counter)),
        })

    def elaborate(self, platform):
        m = Module()
        rc, out_j = self.rc, self.out_j
        fp_drain, bp_drain, update_drain = self._drains
        drain = Signal(range(64))
        m.submodules.steps = steps = StepCounter(self._timesteps)
        m.d.comb += [steps.timesteps.eq(self.timesteps), steps.tokens.eq(self.tokens),
                     self.t.eq(steps.t), self.r.eq(steps.r), self.bt.eq(steps.bt)]
        bump = self.bump
        fp_stall, bp_stall = bump[Counter.FP_STALL], bump[Counter.BP_STALL]

        def start_wt():
            m.d.comb += self.wg_start.eq(1)
            with m.If(self.bp_input_error & self.partial_in):
                m.d.comb += self.psum_start.eq(1)
                m.next = "BP_PSUM"
            with m.Else():
                m.d.comb += self.wt_start.eq(self.bp_input_error)
                m.next = "BP_WT"

        with m.FSM(name="core") as fsm:
            with m.State("IDLE"):
                with m.If(self.command == Command.BEGIN):
                    m.d.comb += [self.done_clear.eq(1), self.begin.eq(1), steps.begin.eq(1)]
                    m.next = "FP_ACC"
                with m.Elif(self.command == Command.UPDATE):
                    m.d.comb += self.walk_start.eq(1)
                    m.next = "UPDATE"
                with m.Elif(self.command == Command.CLEAR_GRAD):
                    m.d.comb += self.walk_start.eq(1)
                    m.next = "CLEAR"
                with m.Elif(self.bp_valid & self.fp_done & ~self.bp_done):
                    m.d.comb += steps.bp_first.eq(1)
                    m.d.sync += rc.eq(0)
                    m.next = "BP_RECV"

            with m.State("FP_ACC"):
                with m.If(self.acc_close):
                    m.d.sync += drain.eq(fp_drain)
                    m.next = "FP_DRAIN"

            with m.State("FP_DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += [self.count_write.eq(1), self.step_done.eq(1),
                                 self.sc_restart.eq(1)]
                    m.d.sync += self.lif_chunk.eq(0)
                    with m.Switch(self.shortcut):
                        with m.Case(Shortcut.SOURCE):
                            m.next = "FP_SC_OUT"
                        with m.Case(Shortcut.TARGET):
                            m.next = "FP_SC_ADD"
                        with m.Default():
                            m.next = "FP_LIF"

            for state in ("FP_SC_OUT", "FP_SC_ADD"):
                with m.State(state):
                    m.d.comb += fp_stall.eq(self.sc_stall)
                    with m.If(self.sc_done):
                        m.next = "FP_LIF"

            with m.State("FP_LIF"):
                with m.If(self.lif_chunk < self.chunks):
                    with m.If(self.lif_room):
                        m.d.comb += self.lif_issue.eq(1)
                        m.d.sync += self.lif_chunk.eq(self.lif_chunk + 1)
                    with m.Else():
                        m.d.comb += fp_stall.eq(1)
                with m.Elif(self.lif_empty):
                    m.next = "FP_END"

            with m.State("FP_END"):
                m.d.comb += self.fp_end.eq(1)
                with m.If(self.fp_ready):
                    m.d.comb += steps.fp_next.eq(1)
                    with m.If(steps.fp_last):
                        m.d.comb += self.fp_done_set.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "FP_ACC"
                with m.Else():
                    m.d.comb += fp_stall.eq(1)

            with m.State("BP_RECV"):
                m.d.comb += [self.bp_ready.eq(rc < self.chunks),
                             self.waiting.eq((rc < self.chunks) & ~self.bp_valid)]
                with m.If(rc == self.chunks):
                    m.d.sync += drain.eq(bp_drain)
                    m.next = "BP_DRAIN"
                with m.Elif(self.bp_valid):
                    m.d.sync += rc.eq(rc + 1)

            with m.State("BP_DRAIN"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.d.comb += self.sc_restart.eq(1)
                    with m.If(self.shortcut == Shortcut.SOURCE):
                        m.next = "BP_SC_ADD"
                    with m.Elif(self.shortcut == Shortcut.TARGET):
                        m.next = "BP_SC_OUT"
                    with m.Else():
                        start_wt()

            for state in ("BP_SC_ADD", "BP_SC_OUT"):
                with m.State(state):
                    m.d.comb += bp_stall.eq(self.sc_stall)
                    with m.If(self.sc_done):
                        start_wt()

            with m.State("BP_PSUM"):
                with m.If(self.psum_done):
                    m.d.comb += self.wt_start.eq(1)
                    m.next = "BP_WT"

            with m.State("BP_WT"):
                with m.If((self.wt_done | ~self.bp_input_error) & self.wg_done):
                    m.d.sync += [out_j.eq(0), drain.eq(0)]
                    m.next = "BP_OUT"

            with m.State("BP_OUT"):
                with m.If(~self.bp_input_error | ((out_j == self.in_chunks) & self.out_empty)):
                    m.d.sync += rc.eq(0)
                    m.d.comb += steps.bp_next.eq(1)
                    with m.If(~steps.bp_token & steps.bp_last):
                        m.d.comb += self.bp_done_set.eq(1)
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "BP_RECV"
                with m.Elif((out_j < self.in_chunks) & self.out_room):
                    m.d.comb += self.out_issue.eq(1)
                    m.d.sync += out_j.eq(out_j + 1)
                with m.Elif(out_j < self.in_chunks):
                    m.d.comb += bp_stall.eq(1)

            with m.State("UPDATE"):
                with m.If(self.walk_done):
                    m.d.sync += drain.eq(update_drain)
                    m.next = "DRAIN_IDLE"
            with m.State("CLEAR"):
                with m.If(self.walk_done):
                    m.next = "IDLE"
            with m.State("DRAIN_IDLE"):
                m.d.sync += drain.eq(drain - 1)
                with m.If(drain == 0):
                    m.next = "IDLE"

        for phase in Phase:
            with m.If(fsm.ongoing(phase.name)):
                m.d.comb += self.phase.eq(phase)
        return m

    @staticmethod
    def busy(phase, *, acc_busy, bp_input_error, wt_done) -> dict:
        """The busy counters of :class:`~spikeforge.regmap.Counter` in ``phase``: FP and BP
        while they accumulate or wait for a hazard or a stream; not while FP waits for events
        nor while BP's ``Wᵀ·δX`` is done and only WG runs."""
        fp_busy = Cat(*(phase == p for p in Phase if p.name.startswith("FP_"))).any()
        bp_busy = Cat(*(phase == p for p in Phase if p.name.startswith("BP_"))).any()
        return {Counter.FP_BUSY: Mux(phase == Phase.FP_ACC, acc_busy, fp_busy),
                Counter.BP_BUSY: Mux(phase == Phase.BP_WT, bp_input_error & ~wt_done,
                                     Mux(phase == Phase.BP_OUT, bp_input_error, bp_busy)),
                Counter.UPDATE_BUSY: phase == Phase.UPDATE}
