# SPDX-License-Identifier: Apache-2.0
"""The router's handshake properties proven with Yosys's SAT solver, and refuted for routers
with one fault each."""

import importlib.util
import re
import sys
from pathlib import Path

import pytest

import spikeforge.hw.fabric as fabric
from spikeforge.gen.formal import FormalError, prove_router

SOURCE = Path(fabric.__file__).read_text()

# One fault each: the text replaced in hw/fabric.py, and the property the proof must find broken.
FAULTS = {
    "fork offers the core an element twice": (
        "self.core_fp_i.valid.eq(src.valid & ~sent_core)",
        "self.core_fp_i.valid.eq(src.valid)",
        "the core was offered an element twice"),
    "fork forgets the partner took an element": (
        "east_done = ~want_east | sent_east | self.east_share.ready",
        "east_done = ~want_east | self.east_share.ready",
        "the fork held an element both outputs had taken"),
    "fork lets an element go before the partner took it": (
        "src.ready.eq(core_done & east_done)",
        "src.ready.eq(core_done)",
        "before the split partner took it"),
    "an index past the core's inputs keeps its spike": (
        "self.core_fp_i.payload.spike.eq(src.payload.spike & fits)",
        "self.core_fp_i.payload.spike.eq(src.payload.spike)",
        "the core's input element differs"),
    "merge holds back the core's last when not split": (
        "close_own = own.last & split",
        "close_own = own.last",
        "an output event was lost or invented"),
    "merge forgets the offset of the partner's events": (
        "out.payload.index.eq(west.index + self.n_active)",
        "out.payload.index.eq(west.index)",
        "offset by the core's neurons"),
    "merge stays in the partner's turn": (
        "west.last):\n                m.d.sync += from_west.eq(0)",
        "west.last):\n                m.d.sync += from_west.eq(1)",
        "the merge's turn disagrees"),
    "demux gives the core one beat too many": (
        "mine = ~split | (beat < chunks)",
        "mine = ~split | (beat <= chunks)",
        "the core took a partner's error beat"),
    "demux does not mark the core's last beat": (
        "self.core_bp_i.payload.last.eq(err.payload.last | (beat + 1 == chunks))",
        "self.core_bp_i.payload.last.eq(err.payload.last)",
        "its last is not marked"),
    "a route takes elements its sink did not": (
        "source.ready.eq(sink.ready)",
        "source.ready.eq(1)",
        "withdrew or changed an element"),
    "a route offers elements its source did not": (
        "sink.valid.eq(source.valid)",
        "sink.valid.eq(1)",
        "withdrew or changed an element"),
}


def _faulty_router(old: str, new: str):
    assert SOURCE.count(old) == 1, old
    spec = importlib.util.spec_from_loader("spikeforge.hw._faulty_fabric", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "spikeforge.hw"
    sys.modules[spec.name] = module
    try:
        exec(compile(SOURCE.replace(old, new), fabric.__file__, "exec"), module.__dict__)
    finally:
        del sys.modules[spec.name]
    return module.Router


@pytest.mark.parametrize("neurons, fan_in, lanes", [(8, 8, 1), (8, 12, 2), (12, 8, 4)])
def test_router_properties_hold(neurons, fan_in, lanes):
    log = prove_router(neurons=neurons, fan_in=fan_in, lanes=lanes)
    assert "Base case for induction length 1 proven." in log
    assert "Induction step proven: SUCCESS!" in log


@pytest.mark.parametrize("fault", FAULTS)
def test_a_faulty_router_is_refuted(fault):
    old, new, broken = FAULTS[fault]
    with pytest.raises(FormalError, match=r"do not hold \(from the reset state, cycle \d+\): .*"
                       + re.escape(broken)):
        prove_router(neurons=8, fan_in=6, lanes=2, router=_faulty_router(old, new))
