# SPDX-License-Identifier: Apache-2.0
"""A weight matrix in ``lanes`` block-RAM banks, readable by rows and by columns.

The forward and weight-gradient engines walk the weight matrix ``W[n, i]`` (``neurons ×
inputs``) by input rows, ``lanes`` neurons at a time; the back-propagation engine walks it by
neuron columns, ``lanes`` inputs at a time (``Wᵀ·δ``). Skewed storage serves both without a
second copy: element ``(n, i)`` lives in bank ``(n + i) mod lanes`` at word
``i · chunks + n // lanes`` (``chunks = neurons // lanes``), so the ``lanes`` elements of a row
chunk and those of a column chunk always sit in distinct banks. A barrel rotation puts them in
lane order.
"""

from amaranth.hdl import C, Cat, Module, Mux, Signal
from amaranth.lib import memory, wiring
from amaranth.lib.wiring import In, Out

from .lanes import check_lanes

__all__ = ["SkewedMemory"]


class SkewedMemory(wiring.Component):
    """``neurons × inputs`` binary16 matrix in ``lanes`` skewed banks.

    Parameters
    ----------
    lanes : int
        Elements per access, a power of two from 1 to 64.
    neurons, inputs : int
        Matrix size; multiples of ``lanes``.
    init : list of int, optional
        Initial bit patterns, row-major over ``[n][i]``.

    Members
    -------
    rd_en, rd_col, rd_major, rd_minor : In
        Read lane vector: a row chunk (``rd_col`` low: input ``rd_major``, neurons
        ``rd_minor·lanes + k``) or a column chunk (``rd_col`` high: neuron ``rd_major``, inputs
        ``rd_minor·lanes + k``).
    rd_data : Out(16 · lanes)
        Lane ``k`` in bits ``[16k, 16k + 16)``, ``latency`` cycles after ``rd_en``.
    wr_en, wr_major, wr_minor, wr_data, wr_mask : In
        Write a row chunk (input ``wr_major``, neurons ``wr_minor·lanes + k``) where
        ``wr_mask[k]``.

    A read and a write may be issued in the same cycle; a read of a word written in the same
    cycle returns the old value.
    """

    def __init__(self, *, lanes: int, neurons: int, inputs: int, init=None):
        check_lanes(lanes)
        for name, value in (("neurons", neurons), ("inputs", inputs)):
            if not isinstance(value, int) or value < lanes or value % lanes:
                raise ValueError(f"Skewed memory {name} must be a positive multiple of the lane "
                                 f"count {lanes}, not {value!r}")
        self._lanes, self._neurons, self._inputs = lanes, neurons, inputs
        self._chunks = neurons // lanes
        self._init = init
        major = max(neurons, inputs)
        minor = max(neurons, inputs) // lanes
        super().__init__({
            "rd_en": In(1),
            "rd_col": In(1),
            "rd_major": In(range(major)),
            "rd_minor": In(range(minor)),
            "rd_data": Out(16 * lanes),
            "wr_en": In(1),
            "wr_major": In(range(inputs)),
            "wr_minor": In(range(self._chunks)),
            "wr_data": In(16 * lanes),
            "wr_mask": In(lanes),
        })

    @property
    def latency(self) -> int:
        """Cycles from ``rd_en`` to ``rd_data``."""
        return 1

    @property
    def depth(self) -> int:
        """Words per bank."""
        return self._inputs * self._chunks

    def bank_init(self) -> list:
        """Initial contents of every bank (from ``init``)."""
        banks = [[0] * self.depth for _ in range(self._lanes)]
        if self._init is not None:
            for n in range(self._neurons):
                for i in range(self._inputs):
                    bank, word = self.locate(n, i)
                    banks[bank][word] = self._init[n * self._inputs + i]
        return banks

    def locate(self, n: int, i: int) -> tuple[int, int]:
        """The bank and word of element ``(n, i)``."""
        return (n + i) % self._lanes, i * self._chunks + n // self._lanes

    def elaborate(self, platform):
        m = Module()
        lanes, chunks = self._lanes, self._chunks
        lane_bits = lanes.bit_length() - 1

        def mod_lanes(value):
            return value[:lane_bits] if lane_bits else C(0, 1)

        def rotate_down(vector, amount, width):
            """Element ``k`` of the result is element ``(k + amount) mod lanes``."""
            if lanes == 1:
                return vector
            return (Cat(vector, vector) >> (amount * width))[:lanes * width]

        wr_rot = mod_lanes(C(lanes, lane_bits + 1) - mod_lanes(self.wr_major))
        wr_data = rotate_down(self.wr_data, wr_rot, 16)
        wr_mask = rotate_down(self.wr_mask, wr_rot, 1)
        banks_out = []
        for b, contents in enumerate(self.bank_init()):
            bank = memory.Memory(shape=16, depth=self.depth, init=contents)
            m.submodules[f"bank{b}"] = bank
            rd = bank.read_port()
            wr = bank.write_port()
            k = mod_lanes(C(b, lane_bits + 1) - self.rd_major)
            col_addr = (self.rd_minor * lanes + k) * chunks + (self.rd_major >> lane_bits)
            row_addr = self.rd_major * chunks + self.rd_minor
            m.d.comb += [
                rd.en.eq(self.rd_en),
                rd.addr.eq(Mux(self.rd_col, col_addr, row_addr)),
                wr.en.eq(self.wr_en & wr_mask[b]),
                wr.addr.eq(self.wr_major * chunks + self.wr_minor),
                wr.data.eq(wr_data[16 * b:16 * b + 16]),
            ]
            banks_out.append(rd.data)
        rd_rot = Signal(max(lane_bits, 1))
        with m.If(self.rd_en):
            m.d.sync += rd_rot.eq(mod_lanes(self.rd_major))
        m.d.comb += self.rd_data.eq(rotate_down(Cat(*banks_out), rd_rot, 16))
        return m
