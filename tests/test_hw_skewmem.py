# SPDX-License-Identifier: Apache-2.0
import random

import pytest

from spikeforge.hw.skewmem import SkewedMemory
from spikeforge.tb.amaranth import pack_lanes, simulate, unpack_lanes


@pytest.mark.parametrize("lanes, neurons, inputs", [(1, 3, 2), (2, 6, 4), (4, 8, 12),
                                                    (8, 16, 8)])
def test_rows_and_columns(lanes, neurons, inputs):
    rng = random.Random(lanes)
    init = [rng.randrange(1 << 16) for _ in range(neurons * inputs)]
    matrix = [init[n * inputs:(n + 1) * inputs] for n in range(neurons)]
    dut = SkewedMemory(lanes=lanes, neurons=neurons, inputs=inputs, init=init)

    async def read(ctx, col, major, minor):
        ctx.set(dut.rd_en, 1)
        ctx.set(dut.rd_col, col)
        ctx.set(dut.rd_major, major)
        ctx.set(dut.rd_minor, minor)
        await ctx.tick()
        ctx.set(dut.rd_en, 0)
        return unpack_lanes(ctx.get(dut.rd_data), lanes)

    async def testbench(ctx):
        for i in range(inputs):
            for c in range(neurons // lanes):
                assert await read(ctx, 0, i, c) == \
                    [matrix[c * lanes + k][i] for k in range(lanes)]
        for n in range(neurons):
            for j in range(inputs // lanes):
                assert await read(ctx, 1, n, j) == matrix[n][j * lanes:(j + 1) * lanes]
        row, chunk = inputs - 1, neurons // lanes - 1
        mask = rng.randrange(1, 1 << lanes)
        data = [rng.randrange(1 << 16) for _ in range(lanes)]
        ctx.set(dut.wr_en, 1)
        ctx.set(dut.wr_major, row)
        ctx.set(dut.wr_minor, chunk)
        ctx.set(dut.wr_data, pack_lanes(data))
        ctx.set(dut.wr_mask, mask)
        await ctx.tick()
        ctx.set(dut.wr_en, 0)
        for k in range(lanes):
            if mask >> k & 1:
                matrix[chunk * lanes + k][row] = data[k]
        for n in range(neurons):
            j = row // lanes
            assert await read(ctx, 1, n, j) == matrix[n][j * lanes:(j + 1) * lanes]

    simulate(dut, testbench)


@pytest.mark.parametrize("kwargs, message", [
    ({"lanes": 3}, r"^Lane count must be a power of two between 1 and 64, not 3$"),
    ({"neurons": 6}, r"^Skewed memory neurons must be a positive multiple of the lane count 4, "
                     r"not 6$"),
])
def test_parameters_are_checked(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SkewedMemory(**{"lanes": 4, "neurons": 8, "inputs": 8, **kwargs})
