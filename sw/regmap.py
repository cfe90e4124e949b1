# SPDX-License-Identifier: Apache-2.0
"""The register map of a spikeforge core: one definition for gateware, driver and testbenches.

A core is reached through a word bus of 16-bit data. A bus address is ``region << 28 |
offset``:

==============  =========================================================================
region          offset
==============  =========================================================================
``REG``         a :class:`Reg`
``WEIGHT``      ``n << index_bits(fan_in) | i``: weight ``W[n, i]`` (read and write)
``GRAD``        the same: accumulated gradient ``ΔW[n, i]`` (read only)
``CHARGE``      ``t << index_bits(neurons) | n``: the charge ``H[t]`` of neuron ``n`` (read
                only)
``SPIKE``       the same: its spike ``S[t]``, 0 or 1 (read only)
``COUNTER``     ``2 · c`` and ``2 · c + 1``: low and high half of counter ``c`` (:class:`Counter`)
==============  =========================================================================

``fan_in`` and ``neurons`` are the core's configured maxima; :func:`weight_offset` and
:func:`state_offset` are the one definition of these offsets.

>>> weight_offset(3, 5, fan_in=100), state_offset(2, 7, neurons=128)
(389, 263)

Writes are taken only while the core is idle (:attr:`Status.BUSY` clear), but for ``ERRORS``'s
write-1-to-clear, which is taken at any time; a write while it is busy, an offset out of range
or a write to a read-only region sets the bus error flag and changes nothing. Registers holding
binary16 values are marked ``(fp16)``.
"""

import enum

from amaranth.lib import data
from amaranth.lib import enum as hdl_enum

__all__ = ["COUNTERS", "OFFSET_BITS", "Command", "Counter", "ErrorFlag", "Reg", "Region",
           "Shortcut", "Status", "address", "address_layout", "index_bits", "state_offset",
           "weight_offset"]

OFFSET_BITS = 28


class Region(hdl_enum.IntEnum, shape=32 - OFFSET_BITS):
    REG = 0
    WEIGHT = 1
    GRAD = 2
    CHARGE = 3
    SPIKE = 4
    COUNTER = 5


class Reg(hdl_enum.IntEnum, shape=5):
    COMMAND = 0      # write a Command
    STATUS = 1       # Status bits (read only)
    NEURONS = 2      # active neurons, 1 .. configured maximum
    INPUTS = 3       # active inputs (fan-in), 1 .. configured maximum
    TIMESTEPS = 4    # steps per sample (timesteps × TOKENS), 1 .. configured maximum
    V_TH = 5         # (fp16) threshold
    V_RESET = 6      # (fp16) reset potential
    INV_TAU = 7      # (fp16) 1/τ
    DECAY = 8        # (fp16) 1 - 1/τ
    LR = 9           # (fp16) learning rate of the update
    BP_INPUT_ERROR = 10  # 1: BP streams the error of the inputs (Wᵀ·δ); 0: skip it
    ERRORS = 11      # sticky error flags (ErrorFlag), write 1s to clear
    PARTIAL_IN = 12  # 1: each timestep's Wᵀ·δ starts from the partial sums on psum_i, not +0
    TOKENS = 13      # steps per timestep, one per token, each with its own membranes (1 .. T)
    IN_TOKENS = 14   # input steps per timestep: the input tokens of a layer over all of them
    IN_STRIDE = 15   # inputs per input token: token r's event i is input r·IN_STRIDE + i
    SHORTCUT = 16    # a Shortcut: this layer's end of a membrane shortcut (sc_o, sc_i)


class Shortcut(hdl_enum.IntEnum, shape=2):
    """A membrane shortcut ``x_b = x_a + W_b·s``: layer b's current starts from layer a's."""

    NONE = 0
    SOURCE = 1       # a: its currents out on sc_o after each step; δX_b in on sc_i, added to δX
    TARGET = 2       # b: a's currents in on sc_i, added before the LIF; its δX out on sc_o


class Command(hdl_enum.IntEnum, shape=3):
    NONE = 0
    BEGIN = 1        # start a sample: t = 0, membranes at V_reset, input log cleared
    UPDATE = 2       # W = W - lr·ΔW, then ΔW = 0
    CLEAR_GRAD = 3   # ΔW = 0
    CLEAR_COUNTERS = 4


class Status(enum.IntFlag):
    BUSY = 1         # an engine is running: FP, BP, WG, update or clear
    FP_DONE = 2      # the forward pass of the sample has run all its timesteps
    BP_DONE = 4      # back-propagation (and WG) reached timestep 0


class ErrorFlag(enum.IntFlag):
    EVENT_ORDER = 1  # an input spike not in ascending order within its timestep (dropped)
    EVENT_RANGE = 2  # an input spike index >= INPUTS (dropped)
    BUS = 4          # a bus access out of range, to a read-only region, or while busy


class Counter(hdl_enum.IntEnum, shape=4):
    CYCLES = 0
    FP_BUSY = 1      # cycles the FP engine is accumulating or running the LIF pass
    FP_STALL = 2     # of those, cycles waiting for the output stream or a hazard
    FP_EVENTS = 3    # input spike events accumulated
    FP_OUT_EVENTS = 4  # output spike events emitted
    BP_BUSY = 5      # cycles of the BPTT pass, Wᵀ·δ and the input-error stream
    BP_STALL = 6
    BP_NEURONS = 7   # neurons with δX != 0 whose weight column was multiplied
    WG_BUSY = 8      # cycles the WG engine adds δX rows into ΔW
    UPDATE_BUSY = 9
    W_READS = 10     # lane-vector reads of the weight memory
    W_WRITES = 11
    G_READS = 12     # lane-vector reads of the gradient memory
    G_WRITES = 13


COUNTERS = tuple(c.name.lower() for c in Counter)


def address_layout() -> data.StructLayout:
    """A bus address: an offset within a :class:`Region`."""
    return data.StructLayout({"offset": OFFSET_BITS, "region": Region})


def address(region: Region, offset: int = 0) -> int:
    """The bus address of ``offset`` in ``region``."""
    if not 0 <= offset < 1 << OFFSET_BITS:
        raise ValueError(f"offset must be between 0 and 2**{OFFSET_BITS} - 1, not {offset!r}")
    return int(region) << OFFSET_BITS | offset


def index_bits(count: int) -> int:
    """Bits of an index below ``count`` in a bus offset (at least one)."""
    return max((count - 1).bit_length(), 1)


def weight_offset(n: int, i: int, *, fan_in: int) -> int:
    """The offset of ``W[n, i]`` (and ``ΔW[n, i]``) in a core of ``fan_in`` inputs."""
    return n << index_bits(fan_in) | i


def state_offset(step: int, n: int, *, neurons: int) -> int:
    """The offset of neuron ``n``'s ``H`` (and ``S``) at ``step`` in a core of ``neurons``."""
    return step << index_bits(neurons) | n
