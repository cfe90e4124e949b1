# SPDX-License-Identifier: Apache-2.0
"""Lane vectors of LIF neurons: the forward update and the BPTT step, in FP16.

Both units are fixed-latency pipelines of :mod:`spikeforge.hw.fp16` units, one unit per lane
and operation. They take one lane vector a cycle; exactly ``latency`` cycles after ``i_valid``
the results are on the outputs with ``o_valid``. There is no backpressure: the caller issues
only when it has room for the results in flight (e.g. by credits).

A lane vector of binary16 values is a plain ``16 × lanes`` bit signal with lane ``k`` in bits
``[16k, 16k + 16)``; a vector of flags (spikes) is a ``lanes`` bit signal with lane ``k`` in bit
``k``. Every input carries a ``tag`` that leaves with its results, so the caller can carry
addresses through. The order of the FP16 operations is that of :mod:`spikeforge.golden.lif`, so
the results are bit-exact with ``lif_forward`` and ``lif_backward`` under ``FP16()`` arithmetic.
"""


from amaranth.hdl import Cat, Module, Mux
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.golden import fp16
from spikeforge.golden.lif import RESETS
from spikeforge.golden.surrogate import Surrogate

from .fp16 import FP16Adder, FP16Compare, FP16Multiplier
from .lanes import FP16Lanes, check_lanes, delay, delay_chain, lane

__all__ = ["BPTTUpdate", "LIFUpdate"]


def _latency(unit) -> int:
    return unit.LATENCY


def _check(lanes, reset, tag_width):
    check_lanes(lanes)
    if reset not in RESETS:
        raise ValueError(f"Reset must be 'hard' or 'soft', not {reset!r}")
    if isinstance(tag_width, bool) or not isinstance(tag_width, int) or tag_width < 1:
        raise ValueError(f"Tag width must be a positive integer, not {tag_width!r}")


class LIFUpdate(wiring.Component):
    """The charge, fire and reset of ``lanes`` LIF neurons a cycle (one timestep each).

    ``a = V - V_reset``; ``b = X - a``; ``c = b · inv_tau``; ``H = V + c``; ``S = H >= V_th``;
    hard reset ``V' = V_reset if S else H``, soft reset ``V' = H - V_th if S else H``. Per lane:
    three adders (four with the soft reset), one multiplier and one compare.

    Parameters
    ----------
    lanes : int
        Neurons a cycle, 1 to 64.
    reset : ``"hard"`` or ``"soft"``
    tag_width : int
        Width of the tag carried alongside, at least 1.

    Members
    -------
    i_valid : In(1)
        Issue a lane vector this cycle.
    i_x, i_v : In(16 × lanes)
        Input currents ``X[t]`` and membranes ``V[t-1]``.
    i_tag : In(tag_width)
    c_v_th, c_v_reset, c_inv_tau : In(16)
        ``V_th``, ``V_reset`` and ``1/τ`` in binary16, static while operations are in flight.
    o_valid : Out(1)
        The outputs hold the results of the vector issued ``latency`` cycles ago.
    o_h : Out(16 × lanes)
        Charges ``H[t]``.
    o_s : Out(lanes)
        Spikes ``S[t]``.
    o_v : Out(16 × lanes)
        Membranes ``V[t]`` after the reset; fed back as ``i_v`` of the next timestep.
    o_tag : Out(tag_width)
        ``i_tag`` of that vector.
    """

    def __init__(self, *, lanes: int, reset: str = "hard", tag_width: int = 1):
        _check(lanes, reset, tag_width)
        self._lanes, self._reset, self._tag_width = lanes, reset, tag_width
        super().__init__({
            "i_valid": In(1),
            "i_x": In(16 * lanes),
            "i_v": In(16 * lanes),
            "i_tag": In(tag_width),
            "c_v_th": In(16),
            "c_v_reset": In(16),
            "c_inv_tau": In(16),
            "o_valid": Out(1),
            "o_h": Out(16 * lanes),
            "o_s": Out(lanes),
            "o_v": Out(16 * lanes),
            "o_tag": Out(tag_width),
        })

    lanes = property(lambda self: self._lanes)
    reset = property(lambda self: self._reset)

    @property
    def _charged(self) -> int:
        """Cycle at which ``H`` is ready: two subtractions, the multiply, the addition."""
        return 3 * _latency(FP16Adder) + _latency(FP16Multiplier)

    @property
    def latency(self) -> int:
        """Cycles from ``i_valid`` to ``o_valid``: the charge, then the compare (and in parallel
        the soft reset's subtraction)."""
        tail = _latency(FP16Compare)
        if self._reset == "soft":
            tail = max(tail, _latency(FP16Adder))
        return self._charged + tail

    def elaborate(self, platform):
        m = Module()
        P = self._lanes

        sub_a = FP16Lanes(m, "sub_a", FP16Adder, P)
        sub_b = FP16Lanes(m, "sub_b", FP16Adder, P)
        mul_c = FP16Lanes(m, "mul_c", FP16Multiplier, P)
        add_h = FP16Lanes(m, "add_h", FP16Adder, P)
        cmp_s = FP16Lanes(m, "cmp_s", FP16Compare, P)
        la, lm = sub_a.latency, mul_c.latency
        t_h, t_out = self._charged, self.latency

        valid = delay_chain(m, self.i_valid, t_out, "valid")
        v_reset = self.c_v_reset.replicate(P)
        v_th = self.c_v_th.replicate(P)

        a = sub_a.issue(m, valid[0], self.i_v, v_reset, sub=1)
        b = sub_b.issue(m, valid[la], delay(m, self.i_x, la, "x"), a, sub=1)
        c = mul_c.issue(m, valid[2 * la], b, self.c_inv_tau.replicate(P))
        h = add_h.issue(m, valid[2 * la + lm], delay(m, self.i_v, 2 * la + lm, "v"), c)
        s = cmp_s.issue(m, valid[t_h], h, v_th)

        h_out = delay(m, h, t_out - t_h, "h")
        s_out = delay(m, s, t_out - t_h - cmp_s.latency, "s")
        if self._reset == "soft":
            sub_r = FP16Lanes(m, "sub_r", FP16Adder, P)
            r = sub_r.issue(m, valid[t_h], h, v_th, sub=1)
            fired = delay(m, r, t_out - t_h - sub_r.latency, "r")
        else:
            fired = v_reset

        m.d.comb += [
            self.o_valid.eq(valid[t_out]),
            self.o_h.eq(h_out),
            self.o_s.eq(s_out),
            self.o_v.eq(Cat(*(Mux(s_out[k], lane(fired, k), lane(h_out, k))
                              for k in range(P)))),
            self.o_tag.eq(delay(m, self.i_tag, t_out, "tag")),
        ]
        return m


class BPTTUpdate(wiring.Component):
    """One reverse-time step of ``lanes`` LIF neurons a cycle: ``ε[t]`` and ``∂L/∂X[t]``.

    ``γ = ε[t+1] · decay``; ``dS = g_S``, without detach_reset ``dS = g_S + γ · ∂V/∂S``
    (``∂V/∂S = V_reset - H`` hard, ``-V_th`` soft); ``sg = table[bits(H - V_th) >> (10 - M)]``;
    ``a = dS · sg``; ``b = +0 if S else γ`` (hard) or ``b = γ`` (soft); ``ε = a + b``;
    ``dx = ε · inv_tau``. Per lane: three multipliers and two adders, one more multiplier and
    adder without detach_reset (and one more adder for the hard reset's ``V_reset - H``), and
    a ``2**(6 + M)`` × 16 bit surrogate ROM with a synchronous read port.

    Parameters
    ----------
    lanes : int
        Neurons a cycle, 1 to 64.
    reset : ``"hard"`` or ``"soft"``
    detach_reset : bool
        Leave the reset out of the gradient (spikingjelly's ``detach_reset``).
    surrogate : Surrogate
        Its ``table()`` fills the ROMs (``M`` is its ``mantissa_bits``); default sigmoid.
    tag_width : int
        Width of the tag carried alongside, at least 1.

    Members
    -------
    i_valid : In(1)
        Issue a lane vector this cycle.
    i_g : In(16 × lanes)
        Errors of the output spikes ``∂L/∂S[t]``.
    i_h : In(16 × lanes)
        Charges ``H[t]`` saved by the forward pass.
    i_s : In(lanes)
        Spikes ``S[t]`` saved by the forward pass.
    i_eps : In(16 × lanes)
        ``ε[t+1]`` (``o_eps`` of the later timestep), ``+0`` at the last timestep.
    i_tag : In(tag_width)
    c_decay, c_inv_tau, c_v_th, c_v_reset : In(16)
        ``1 - 1/τ``, ``1/τ``, ``V_th`` and ``V_reset`` in binary16, static while operations are
        in flight.
    o_valid : Out(1)
        The outputs hold the results of the vector issued ``latency`` cycles ago.
    o_eps : Out(16 × lanes)
        ``ε[t] = ∂L/∂H[t]``.
    o_dx : Out(16 × lanes)
        ``∂L/∂X[t] = ε[t] · inv_tau``.
    o_tag : Out(tag_width)
        ``i_tag`` of that vector.
    """

    def __init__(self, *, lanes: int, reset: str = "hard", detach_reset: bool = True,
                 surrogate: Surrogate | None = None, tag_width: int = 1):
        _check(lanes, reset, tag_width)
        if not isinstance(detach_reset, bool):
            raise ValueError(f"Detach reset must be True or False, not {detach_reset!r}")
        if surrogate is None:
            surrogate = Surrogate()
        if not isinstance(surrogate, Surrogate):
            raise ValueError(f"Surrogate must be a spikeforge Surrogate, not {surrogate!r}")
        self._lanes, self._reset, self._detach = lanes, reset, detach_reset
        self._surrogate, self._tag_width = surrogate, tag_width
        super().__init__({
            "i_valid": In(1),
            "i_g": In(16 * lanes),
            "i_h": In(16 * lanes),
            "i_s": In(lanes),
            "i_eps": In(16 * lanes),
            "i_tag": In(tag_width),
            "c_decay": In(16),
            "c_inv_tau": In(16),
            "c_v_th": In(16),
            "c_v_reset": In(16),
            "o_valid": Out(1),
            "o_eps": Out(16 * lanes),
            "o_dx": Out(16 * lanes),
            "o_tag": Out(tag_width),
        })

    lanes = property(lambda self: self._lanes)
    reset = property(lambda self: self._reset)
    detach_reset = property(lambda self: self._detach)
    surrogate = property(lambda self: self._surrogate)

    def _schedule(self) -> dict:
        """Issue cycles of the operations after ``i_valid``."""
        la, lm = _latency(FP16Adder), _latency(FP16Multiplier)
        t = {"sg": la + 1}                                  # H - V_th, then the ROM read
        if self._detach:
            t["ds"] = 0
        else:
            t["mul_dvds"] = max(lm, la if self._reset == "hard" else 0)
            t["add_ds"] = t["mul_dvds"] + lm
            t["ds"] = t["add_ds"] + la
        t["mul_a"] = max(t["ds"], t["sg"])
        t["add_eps"] = t["mul_a"] + lm
        t["mul_dx"] = t["add_eps"] + la
        t["out"] = t["mul_dx"] + lm
        return t

    @property
    def latency(self) -> int:
        """Cycles from ``i_valid`` to ``o_valid``."""
        return self._schedule()["out"]

    def elaborate(self, platform):
        m = Module()
        P = self._lanes
        t = self._schedule()
        valid = delay_chain(m, self.i_valid, t["out"], "valid")

        mul_gamma = FP16Lanes(m, "mul_gamma", FP16Multiplier, P)
        sub_x = FP16Lanes(m, "sub_x", FP16Adder, P)
        la, lm = sub_x.latency, mul_gamma.latency
        gamma = mul_gamma.issue(m, valid[0], self.i_eps, self.c_decay.replicate(P))
        x = sub_x.issue(m, valid[0], self.i_h, self.c_v_th.replicate(P), sub=1)

        table = fp16.bits(self._surrogate.table()).tolist()
        shift = 10 - self._surrogate.mantissa_bits
        sg = []
        for k in range(P):
            m.submodules[f"sg_rom{k}"] = rom = memory.Memory(shape=16, depth=len(table),
                                                             init=table)
            port = rom.read_port()
            m.d.comb += port.addr.eq(lane(x, k)[shift:])
            sg.append(port.data)
        sg = delay(m, Cat(*sg), t["mul_a"] - t["sg"], "sg")

        if self._detach:
            ds = self.i_g
        else:
            if self._reset == "hard":
                sub_dvds = FP16Lanes(m, "sub_dvds", FP16Adder, P)
                dvds = sub_dvds.issue(m, valid[0], self.c_v_reset.replicate(P), self.i_h, sub=1)
                dvds = delay(m, dvds, t["mul_dvds"] - la, "dvds")
            else:
                dvds = (self.c_v_th ^ 0x8000).replicate(P)
            mul_dvds = FP16Lanes(m, "mul_dvds", FP16Multiplier, P)
            add_ds = FP16Lanes(m, "add_ds", FP16Adder, P)
            p = mul_dvds.issue(m, valid[t["mul_dvds"]],
                               delay(m, gamma, t["mul_dvds"] - lm, "gamma_p"), dvds)
            ds = add_ds.issue(m, valid[t["add_ds"]],
                              delay(m, self.i_g, t["add_ds"], "g"), p)
        ds = delay(m, ds, t["mul_a"] - t["ds"], "ds")

        mul_a = FP16Lanes(m, "mul_a", FP16Multiplier, P)
        a = mul_a.issue(m, valid[t["mul_a"]], ds, sg)
        gamma_b = delay(m, gamma, t["add_eps"] - lm, "gamma_b")
        if self._reset == "hard":
            fired = delay(m, self.i_s, t["add_eps"], "s")
            b = Cat(*(Mux(fired[k], 0, lane(gamma_b, k)) for k in range(P)))
        else:
            b = gamma_b
        add_eps = FP16Lanes(m, "add_eps", FP16Adder, P)
        eps = add_eps.issue(m, valid[t["add_eps"]], a, b)
        mul_dx = FP16Lanes(m, "mul_dx", FP16Multiplier, P)
        dx = mul_dx.issue(m, valid[t["mul_dx"]], eps, self.c_inv_tau.replicate(P))

        m.d.comb += [
            self.o_valid.eq(valid[t["out"]]),
            self.o_eps.eq(delay(m, eps, t["out"] - t["mul_dx"], "eps")),
            self.o_dx.eq(dx),
            self.o_tag.eq(delay(m, self.i_tag, t["out"], "tag")),
        ]
        return m
