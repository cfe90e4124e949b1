# SPDX-License-Identifier: Apache-2.0
"""IEEE binary16 arithmetic units, bit-exact with :mod:`spikeforge.golden.fp16`.

Every unit is a fixed-latency pipeline that accepts one operation per clock cycle. An operation
is issued by asserting ``i_valid`` with its operands; exactly ``latency`` cycles later its result
is on the outputs with ``o_valid`` asserted. ``o_valid`` is ``i_valid`` delayed by ``latency``
cycles: it marks results, it never stalls the pipeline. There is no backpressure: an issuer whose
consumer can stall must keep room for the results in flight, e.g. issue only while a FIFO behind
the unit has ``latency`` free entries.

The special values are those of the golden model: subnormal operands and results are kept (no
flush to zero), results are rounded once to nearest with ties to even, overflow rounds to
infinity, and every NaN result is the canonical quiet NaN ``0x7E00``.
"""

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["FP16Adder", "FP16Compare", "FP16Multiplier"]

_INF = 0x7C00
_NAN = 0x7E00


class _LeadingZeros(wiring.Component):
    """``count`` is the number of leading zeros of ``value`` (its width when ``value`` is zero);
    combinational."""

    def __init__(self, width: int):
        self._width = width
        super().__init__({"value": In(width), "count": Out(range(width + 1))})

    def elaborate(self, platform):
        m = Module()
        m.d.comb += self.count.eq(self._width)
        for i in range(self._width):
            with m.If(self.value[i]):
                m.d.comb += self.count.eq(self._width - 1 - i)
        return m


def _shift_right_sticky(value: Value, amount: Value, width: int) -> Value:
    """``value >> amount`` to ``width`` bits, the bits shifted out ORed into its LSB.

    ``amount`` must be less than 16 and ``width`` at least ``len(value)``.
    """
    wide = Cat(Const(0, 16), value) >> amount
    shifted = wide[16:16 + width]
    return Cat(shifted[0] | wide[:16].any(), shifted[1:])


def _round_pack(sign: Value, exponent: Value, significand: Value, guard: Value,
                sticky: Value) -> Value:
    """Round a significand with hidden bit to nearest even and pack it with its sign.

    ``exponent`` is the biased exponent (at least 1) of the significand's hidden bit; a zero
    hidden bit with ``exponent == 1`` is a subnormal. Adding the packed exponent and the
    significand with its hidden bit lets a rounding carry renormalize (subnormal to normal,
    significand overflow to the next binade, the largest finite value to infinity) for free.
    """
    round_up = guard & (sticky | significand[0])
    packed = Cat(Const(0, 10), exponent - 1) + significand + round_up
    return Cat(Mux(packed >= _INF, _INF, packed[:15]), sign)


class FP16Adder(wiring.Component):
    """FP16 adder and subtracter, ``o_result = i_a + i_b`` (``i_a - i_b`` with ``i_sub``).

    Latency 5 cycles, throughput one operation per cycle, no backpressure (see the module).
    The result is rounded once, to nearest with ties to even. An exact zero result is ``+0``
    unless both addends are ``-0`` (``-0 + -0``, ``-0 - +0``). ``inf - inf`` and any NaN operand
    give ``0x7E00``; overflow gives a signed infinity.

    Members
    -------
    i_valid : In(1)
        Issue an operation this cycle.
    i_a, i_b : In(16)
        Operands, binary16 bit patterns.
    i_sub : In(1)
        Subtract ``i_b`` instead of adding it.
    o_valid : Out(1)
        ``o_result`` holds the result of an operation issued ``latency`` cycles ago.
    o_result : Out(16)
        The sum or difference.
    """

    LATENCY = 5

    def __init__(self):
        super().__init__({
            "i_valid": In(1),
            "i_a": In(16),
            "i_b": In(16),
            "i_sub": In(1),
            "o_valid": Out(1),
            "o_result": Out(16),
        })

    @property
    def latency(self) -> int:
        """Cycles from an operation's ``i_valid`` to its ``o_valid``."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()

        # Stage 0: the operands (they come from memories and lane rotations; registering them
        # keeps those paths out of stage 1's magnitude compare).
        a, b_in, sub, s0_valid = Signal(16), Signal(16), Signal(), Signal()
        m.d.sync += [a.eq(self.i_a), b_in.eq(self.i_b), sub.eq(self.i_sub),
                     s0_valid.eq(self.i_valid)]

        # Stage 1: order the operands by magnitude, catch infinities and NaNs.
        b = Cat(b_in[:15], b_in[15] ^ sub)
        swap = b[:15] > a[:15]
        x = Mux(swap, b, a)
        y = Mux(swap, a, b)
        x_exp, y_exp = x[10:15], y[10:15]
        x_nan = x[:15] > _INF
        inf_minus_inf = (y[:15] == _INF) & (x[15] != y[15])

        s1_valid = Signal()
        s1_special = Signal()
        s1_special_value = Signal(16)
        s1_sign = Signal()
        s1_eff_sub = Signal()
        s1_exp = Signal(5)
        s1_sig_x = Signal(11)
        s1_sig_y = Signal(11)
        s1_shift = Signal(4)
        exp_diff = Mux(x_exp.any(), x_exp, 1) - Mux(y_exp.any(), y_exp, 1)
        m.d.sync += [
            s1_valid.eq(s0_valid),
            s1_special.eq(x_exp == 0x1F),
            s1_special_value.eq(Mux(x_nan | inf_minus_inf, _NAN, Cat(Const(_INF, 15), x[15]))),
            s1_sign.eq(x[15]),
            s1_eff_sub.eq(x[15] != y[15]),
            s1_exp.eq(Mux(x_exp.any(), x_exp, 1)),
            s1_sig_x.eq(Cat(x[:10], x_exp.any())),
            s1_sig_y.eq(Cat(y[:10], y_exp.any())),
            s1_shift.eq(Mux(exp_diff > 15, 15, exp_diff)),
        ]

        # Stage 2: align the smaller significand (guard, round, sticky bits below) and add.
        # Three extra bits round correctly: a difference that cancels more than one leading bit
        # only arises from exponents at most one apart, when the alignment loses nothing.
        x_ext = Cat(Const(0, 3), s1_sig_x)
        y_ext = _shift_right_sticky(Cat(Const(0, 3), s1_sig_y), s1_shift, 14)

        s2_valid = Signal()
        s2_special = Signal()
        s2_special_value = Signal(16)
        s2_sign = Signal()
        s2_eff_sub = Signal()
        s2_exp = Signal(5)
        s2_sum = Signal(15)
        m.d.sync += [
            s2_valid.eq(s1_valid),
            s2_special.eq(s1_special),
            s2_special_value.eq(s1_special_value),
            s2_sign.eq(s1_sign),
            s2_eff_sub.eq(s1_eff_sub),
            s2_exp.eq(s1_exp),
            s2_sum.eq(Mux(s1_eff_sub, x_ext - y_ext, x_ext + y_ext)),
        ]

        # Stage 3: normalize so the hidden bit is bit 13, or stop at the subnormal exponent.
        m.submodules.clz = clz = _LeadingZeros(14)
        m.d.comb += clz.value.eq(s2_sum[:14])
        leading_zeros = clz.count
        max_shift = s2_exp - 1
        shift = Mux(leading_zeros < max_shift, leading_zeros, max_shift)
        is_zero = s2_sum == 0

        s3_valid = Signal()
        s3_special = Signal()
        s3_special_value = Signal(16)
        s3_sign = Signal()
        s3_exp = Signal(5)
        s3_sig = Signal(14)
        m.d.sync += [
            s3_valid.eq(s2_valid),
            s3_special.eq(s2_special | is_zero),
            s3_special_value.eq(Mux(s2_special, s2_special_value,
                                    Cat(Const(0, 15), s2_sign & ~s2_eff_sub))),
            s3_sign.eq(s2_sign),
        ]
        with m.If(s2_sum[14]):
            m.d.sync += [
                s3_exp.eq(s2_exp + 1),
                s3_sig.eq(Cat(s2_sum[0] | s2_sum[1], s2_sum[2:15])),
            ]
        with m.Else():
            m.d.sync += [
                s3_exp.eq(s2_exp - shift),
                s3_sig.eq(s2_sum[:14] << shift[:4]),
            ]

        # Stage 4: round and pack.
        result = _round_pack(s3_sign, s3_exp, s3_sig[3:14], s3_sig[2], s3_sig[:2].any())
        m.d.sync += [
            self.o_valid.eq(s3_valid),
            self.o_result.eq(Mux(s3_special, s3_special_value, result)),
        ]

        return m


class FP16Multiplier(wiring.Component):
    """FP16 multiplier, ``o_result = i_a * i_b``.

    Latency 4 cycles, throughput one operation per cycle, no backpressure (see the module).
    The operands are registered first, so that the memory reads and operand multiplexers that
    feed a multiplier are not on the DSP block's path. The 11×11 significand product is a
    plain multiplication, which synthesis maps to one DSP block. The result is rounded once, to
    nearest with ties to even; results below the smallest subnormal round to a signed zero,
    overflow gives a signed infinity. ``0 * inf`` and any NaN operand give ``0x7E00``.

    Members
    -------
    i_valid : In(1)
        Issue an operation this cycle.
    i_a, i_b : In(16)
        Operands, binary16 bit patterns.
    o_valid : Out(1)
        ``o_result`` holds the result of an operation issued ``latency`` cycles ago.
    o_result : Out(16)
        The product.
    """

    LATENCY = 4

    def __init__(self):
        super().__init__({
            "i_valid": In(1),
            "i_a": In(16),
            "i_b": In(16),
            "o_valid": Out(1),
            "o_result": Out(16),
        })

    @property
    def latency(self) -> int:
        """Cycles from an operation's ``i_valid`` to its ``o_valid``."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()

        # Stage 0: the operands.
        a, b, s0_valid = Signal(16), Signal(16), Signal()
        m.d.sync += [a.eq(self.i_a), b.eq(self.i_b), s0_valid.eq(self.i_valid)]

        # Stage 1: significand product, exponent sum, special operands.
        sign = a[15] ^ b[15]
        a_exp, b_exp = a[10:15], b[10:15]
        a_zero, b_zero = a[:15] == 0, b[:15] == 0
        a_inf, b_inf = a[:15] == _INF, b[:15] == _INF
        nan = (a[:15] > _INF) | (b[:15] > _INF) | (a_inf & b_zero) | (a_zero & b_inf)

        s1_valid = Signal()
        s1_special = Signal()
        s1_special_value = Signal(16)
        s1_sign = Signal()
        s1_product = Signal(22)
        # Biased exponent of the product if its leading one were bit 21: -12 to 46.
        s1_exp = Signal(range(-12, 47))
        m.d.sync += [
            s1_valid.eq(s0_valid),
            s1_special.eq(nan | a_inf | b_inf | a_zero | b_zero),
            s1_special_value.eq(Mux(nan, _NAN,
                                    Cat(Mux(a_inf | b_inf, _INF, 0)[:15], sign))),
            s1_sign.eq(sign),
            s1_product.eq(Cat(a[:10], a_exp.any()) * Cat(b[:10], b_exp.any())),
            s1_exp.eq(Mux(a_exp.any(), a_exp, 1) + Mux(b_exp.any(), b_exp, 1) - 14),
        ]

        # Stage 2: normalize the product so its leading one is bit 21, shifting left no further
        # than the subnormal exponent allows, or shift right into the subnormal range.
        m.submodules.clz = clz = _LeadingZeros(len(s1_product))
        m.d.comb += clz.value.eq(s1_product)
        leading_zeros = clz.count
        max_shift = s1_exp - 1

        s2_valid = Signal()
        s2_special = Signal()
        s2_special_value = Signal(16)
        s2_sign = Signal()
        s2_exp = Signal(range(1, 47))
        s2_sig = Signal(22)
        m.d.sync += [
            s2_valid.eq(s1_valid),
            s2_special.eq(s1_special),
            s2_special_value.eq(s1_special_value),
            s2_sign.eq(s1_sign),
        ]
        with m.If(max_shift < 0):
            m.d.sync += [
                s2_exp.eq(1),
                s2_sig.eq(_shift_right_sticky(s1_product, (-max_shift)[:4], 22)),
            ]
        with m.Else():
            shift = Mux(leading_zeros < max_shift, leading_zeros, max_shift)
            m.d.sync += [
                s2_exp.eq(s1_exp - shift),
                s2_sig.eq(s1_product << shift[:5]),
            ]

        # Stage 3: round and pack.
        result = _round_pack(s2_sign, s2_exp, s2_sig[11:22], s2_sig[10], s2_sig[:10].any())
        m.d.sync += [
            self.o_valid.eq(s2_valid),
            self.o_result.eq(Mux(s2_special, s2_special_value, result)),
        ]

        return m


class FP16Compare(wiring.Component):
    """FP16 comparator: ``o_ge = i_a >= i_b``, ``o_lt = i_a < i_b``, ``o_eq = i_a == i_b``.

    Latency 1 cycle, throughput one comparison per cycle, no backpressure (see the module).
    IEEE ordered comparisons: ``-0`` equals ``+0``, and a NaN operand makes all three outputs
    false (so ``o_ge`` is not the negation of ``o_lt``).

    Members
    -------
    i_valid : In(1)
        Issue a comparison this cycle.
    i_a, i_b : In(16)
        Operands, binary16 bit patterns.
    o_valid : Out(1)
        ``o_ge``, ``o_lt`` and ``o_eq`` hold a comparison issued ``latency`` cycles ago.
    o_ge, o_lt, o_eq : Out(1)
        ``i_a >= i_b``, ``i_a < i_b``, ``i_a == i_b``.
    """

    LATENCY = 1

    def __init__(self):
        super().__init__({
            "i_valid": In(1),
            "i_a": In(16),
            "i_b": In(16),
            "o_valid": Out(1),
            "o_ge": Out(1),
            "o_lt": Out(1),
            "o_eq": Out(1),
        })

    @property
    def latency(self) -> int:
        """Cycles from a comparison's ``i_valid`` to its ``o_valid``."""
        return self.LATENCY

    def elaborate(self, platform):
        m = Module()

        a, b = self.i_a, self.i_b
        unordered = (a[:15] > _INF) | (b[:15] > _INF)
        both_zero = (a[:15] | b[:15]) == 0

        # Sign-magnitude to an unsigned key that orders like the values (+0 just above -0).
        def key(x):
            return Mux(x[15], ~x, x | 0x8000)

        lt = ~unordered & ~both_zero & (key(a) < key(b))
        m.d.sync += [
            self.o_valid.eq(self.i_valid),
            self.o_ge.eq(~unordered & ~lt),
            self.o_lt.eq(lt),
            self.o_eq.eq(~unordered & (both_zero | (a == b))),
        ]

        return m
