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
from .lanes import Delay, FP16Vector, check_lanes, lane

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

        m.submodules.sub_a = sub_a = FP16Vector(FP16Adder, P)
        m.submodules.sub_b = sub_b = FP16Vector(FP16Adder, P)
        m.submodules.mul_c = mul_c = FP16Vector(FP16Multiplier, P)
        m.submodules.add_h = add_h = FP16Vector(FP16Adder, P)
        m.submodules.cmp_s = cmp_s = FP16Vector(FP16Compare, P)
        la, lm = sub_a.latency, mul_c.latency
        t_h, t_out = self._charged, self.latency

        m.submodules.valid = valid = Delay(1, t_out, taps=True)
        m.submodules.x_late = x_late = Delay(16 * P, la)
        m.submodules.v_late = v_late = Delay(16 * P, 2 * la + lm)
        m.submodules.h_late = h_late = Delay(16 * P, t_out - t_h)
        m.submodules.s_late = s_late = Delay(P, t_out - t_h - cmp_s.latency)
        m.submodules.tag_late = tag_late = Delay(len(self.i_tag), t_out)
        v_reset = self.c_v_reset.replicate(P)
        v_th = self.c_v_th.replicate(P)
        m.d.comb += [valid.i.eq(self.i_valid), x_late.i.eq(self.i_x), v_late.i.eq(self.i_v),
                     h_late.i.eq(add_h.o_result), s_late.i.eq(cmp_s.o_result),
                     tag_late.i.eq(self.i_tag)]

        m.d.comb += [
            *sub_a.issue(valid.taps[0], self.i_v, v_reset, sub=1),
            *sub_b.issue(valid.taps[la], x_late.o, sub_a.o_result, sub=1),
            *mul_c.issue(valid.taps[2 * la], sub_b.o_result, self.c_inv_tau.replicate(P)),
            *add_h.issue(valid.taps[2 * la + lm], v_late.o, mul_c.o_result),
            *cmp_s.issue(valid.taps[t_h], add_h.o_result, v_th),
        ]
        if self._reset == "soft":
            m.submodules.sub_r = sub_r = FP16Vector(FP16Adder, P)
            m.submodules.r_late = r_late = Delay(16 * P, t_out - t_h - sub_r.latency)
            m.d.comb += [*sub_r.issue(valid.taps[t_h], add_h.o_result, v_th, sub=1),
                         r_late.i.eq(sub_r.o_result)]
            fired = r_late.o
        else:
            fired = v_reset

        m.d.comb += [
            self.o_valid.eq(valid.o),
            self.o_h.eq(h_late.o),
            self.o_s.eq(s_late.o),
            self.o_v.eq(Cat(*(Mux(s_late.o[k], lane(fired, k), lane(h_late.o, k))
                              for k in range(P)))),
            self.o_tag.eq(tag_late.o),
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
        m.submodules.valid = valid = Delay(1, t["out"], taps=True)
        m.d.comb += valid.i.eq(self.i_valid)

        m.submodules.mul_gamma = mul_gamma = FP16Vector(FP16Multiplier, P)
        m.submodules.sub_x = sub_x = FP16Vector(FP16Adder, P)
        la, lm = sub_x.latency, mul_gamma.latency
        gamma = mul_gamma.o_result
        m.d.comb += [*mul_gamma.issue(valid.taps[0], self.i_eps, self.c_decay.replicate(P)),
                     *sub_x.issue(valid.taps[0], self.i_h, self.c_v_th.replicate(P), sub=1)]

        table = fp16.bits(self._surrogate.table()).tolist()
        shift = 10 - self._surrogate.mantissa_bits
        m.submodules.sg_late = sg_late = Delay(16 * P, t["mul_a"] - t["sg"])
        for k in range(P):
            m.submodules[f"sg_rom{k}"] = rom = memory.Memory(shape=16, depth=len(table),
                                                             init=table)
            port = rom.read_port()
            m.d.comb += [port.addr.eq(lane(sub_x.o_result, k)[shift:]),
                         lane(sg_late.i, k).eq(port.data)]

        if self._detach:
            ds = self.i_g
        else:
            if self._reset == "hard":
                m.submodules.sub_dvds = sub_dvds = FP16Vector(FP16Adder, P)
                m.submodules.dvds_late = dvds_late = Delay(16 * P, t["mul_dvds"] - la)
                m.d.comb += [*sub_dvds.issue(valid.taps[0], self.c_v_reset.replicate(P),
                                             self.i_h, sub=1),
                             dvds_late.i.eq(sub_dvds.o_result)]
                dvds = dvds_late.o
            else:
                dvds = (self.c_v_th ^ 0x8000).replicate(P)
            m.submodules.mul_dvds = mul_dvds = FP16Vector(FP16Multiplier, P)
            m.submodules.add_ds = add_ds = FP16Vector(FP16Adder, P)
            m.submodules.gamma_p = gamma_p = Delay(16 * P, t["mul_dvds"] - lm)
            m.submodules.g_late = g_late = Delay(16 * P, t["add_ds"])
            m.d.comb += [gamma_p.i.eq(gamma), g_late.i.eq(self.i_g),
                         *mul_dvds.issue(valid.taps[t["mul_dvds"]], gamma_p.o, dvds),
                         *add_ds.issue(valid.taps[t["add_ds"]], g_late.o, mul_dvds.o_result)]
            ds = add_ds.o_result
        m.submodules.ds_late = ds_late = Delay(16 * P, t["mul_a"] - t["ds"])
        m.d.comb += ds_late.i.eq(ds)

        m.submodules.mul_a = mul_a = FP16Vector(FP16Multiplier, P)
        m.submodules.gamma_b = gamma_b = Delay(16 * P, t["add_eps"] - lm)
        m.d.comb += [*mul_a.issue(valid.taps[t["mul_a"]], ds_late.o, sg_late.o),
                     gamma_b.i.eq(gamma)]
        if self._reset == "hard":
            m.submodules.s_late = s_late = Delay(P, t["add_eps"])
            m.d.comb += s_late.i.eq(self.i_s)
            b = Cat(*(Mux(s_late.o[k], 0, lane(gamma_b.o, k)) for k in range(P)))
        else:
            b = gamma_b.o
        m.submodules.add_eps = add_eps = FP16Vector(FP16Adder, P)
        m.submodules.mul_dx = mul_dx = FP16Vector(FP16Multiplier, P)
        m.submodules.eps_late = eps_late = Delay(16 * P, t["out"] - t["mul_dx"])
        m.submodules.tag_late = tag_late = Delay(len(self.i_tag), t["out"])
        m.d.comb += [
            *add_eps.issue(valid.taps[t["add_eps"]], mul_a.o_result, b),
            *mul_dx.issue(valid.taps[t["mul_dx"]], add_eps.o_result, self.c_inv_tau.replicate(P)),
            eps_late.i.eq(add_eps.o_result),
            tag_late.i.eq(self.i_tag),
            self.o_valid.eq(valid.o),
            self.o_eps.eq(eps_late.o),
            self.o_dx.eq(mul_dx.o_result),
            self.o_tag.eq(tag_late.o),
        ]
        return m
