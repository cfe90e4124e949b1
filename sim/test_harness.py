# amaranth: UnusedElaboratable=no
# SPDX-License-Identifier: Apache-2.0
import cocotb
import pytest
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles
from harness import Lanes, run

from spikeforge.hw.fp16 import FP16Compare


@cocotb.test()
async def compares(dut):
    cocotb.start_soon(Clock(dut.clk, 2, unit="ns").start())
    dut.i_a.value = 0x3C00_BC00
    dut.i_b.value = 0xBC00_3C00
    dut.i_valid.value = 1
    await ClockCycles(dut.clk, 3)
    assert dut.o_valid.value == 1
    assert dut.o_ge.value == 0b10
    assert dut.o_lt.value == 0b01


@cocotb.test()
async def fails(dut):
    raise AssertionError("deliberate failure")


def test_run_passes_and_fails():
    run(Lanes(FP16Compare, 2), name="harness", test_module="test_harness",
        testcases=["compares"])
    with pytest.raises(AssertionError, match=r"fails: .*deliberate failure"):
        run(Lanes(FP16Compare, 2), name="harness", test_module="test_harness",
            testcases=["compares", "fails"])
    with pytest.raises(AssertionError, match=r"^cocotb ran .*, expected .*'absent'"):
        run(Lanes(FP16Compare, 2), name="harness", test_module="test_harness",
            testcases=["compares", "absent"])


@pytest.mark.parametrize("lanes", [0, 257, 2.0])
def test_lanes_are_checked(lanes):
    with pytest.raises(ValueError,
                       match=rf"^Lane count must be an integer between 1 and 256, not {lanes!r}$"):
        Lanes(FP16Compare, lanes)
