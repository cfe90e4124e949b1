# SPDX-License-Identifier: Apache-2.0
"""The driver in Amaranth's simulator against a device played by a testbench: resends after a
time-out counted in cycles, error statuses, silence and raw frames."""

import pytest
from amaranth.hdl import ClockDomain, Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from spikeforge import protocol as p
from spikeforge.protocol import Opcode, Status
from spikeforge.session import BoardError, BoardTimeout
from spikeforge.simlink import SimBoard


class Wires(wiring.Component):
    rx: In(stream.Signature(8))
    tx: Out(stream.Signature(8))

    def elaborate(self, platform):
        m = Module()
        m.domains.sync = ClockDomain()
        return m


def play_device(dut, memory, *, drop=(), silent=False, log=None):
    """A testbench that answers frames on ``dut``'s streams as the SoC does (a stored reply
    for a repeated sequence number), but never the first time for a number in ``drop``."""
    drop = set(drop)

    async def device(ctx):
        ctx.set(dut.rx.ready, 1)
        frame, out, last = bytearray(), bytearray(), None
        while True:
            ctx.set(dut.tx.valid, bool(out))
            if out:
                ctx.set(dut.tx.payload, out[0])
            *_, valid, byte, ready = await ctx.tick().sample(dut.rx.valid, dut.rx.payload,
                                                             dut.tx.ready)
            if out and ready:
                del out[0]
            if not valid or not frame and byte != p.COMMAND_SYNC:
                continue
            frame.append(byte)
            if len(frame) < 10 or len(frame) < 12 + int.from_bytes(frame[8:10], "little"):
                continue
            command = p.decode_command(bytes(frame))
            frame.clear()
            if last is None or last[0] != command.seq:
                if log is not None:
                    log.append(command)
                status, payload = Status.OK, ()
                if command.opcode == Opcode.READ:
                    count = command.payload[0]
                    if command.address + count > len(memory):
                        status = Status.BAD_ADDRESS
                    else:
                        payload = memory[command.address:command.address + count]
                elif command.opcode == Opcode.WRITE:
                    memory[command.address:command.address + len(command.payload)] = \
                        command.payload
                last = (command.seq, p.encode_reply(command.seq, status, payload))
                if command.seq in drop:
                    drop.discard(command.seq)
                    continue
            if not silent:
                out += last[1]

    return device


def simulate(body, **device):
    dut = Wires()
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(play_device(dut, **device), background=True)

    async def bench(ctx):
        await body(SimBoard(ctx, dut.rx, dut.tx, timeout=200, retries=1, seq=5, idle=0.3))

    sim.add_testbench(bench)
    sim.run()


def test_a_lost_reply_is_resent_after_the_timeout_not_reexecuted():
    memory, log = [0] * 16, []

    async def body(board):
        await board.write(0, 3, [7, 8])
        assert board.resends == 1 and board.cycles > 200 and len(log) == 1
        assert await board.read(0, 2, 4) == [0, 7, 8, 0]
        assert board.frames == 2 and board.resends == 1 and board.seq == 7

    simulate(body, memory=memory, drop={5}, log=log)
    assert memory[3:5] == [7, 8]


def test_an_error_status_is_a_board_error_and_silence_a_timeout():
    async def body(board):
        with pytest.raises(BoardError, match="refused the READ of 1 words to core 0") as info:
            await board.read(0, 15, 2)
        assert info.value.status == Status.BAD_ADDRESS and board.resends == 0
        assert await board.read(0, 15, 1) == [0]

    simulate(body, memory=[0] * 16)

    async def quiet(board):
        with pytest.raises(BoardTimeout, match=r"\(2 tries, 200 cycles each\)"):
            await board.command(Opcode.IDENTIFY, 0)
        assert 400 <= board.cycles < 500

    simulate(quiet, memory=[], silent=True)


def test_raw_frames_keep_their_own_numbers():
    async def body(board):
        reply = await board.send(p.encode_command(99, Opcode.WRITE, 0, 1, [5]))
        assert reply == p.Reply(99, Status.OK, ())
        assert await board.send(b"\x00\x01", reply=False) is None
        await board.pause(50)
        assert await board.read(0, 0, 2) == [0, 5] and board.frames == 1

    simulate(body, memory=[0] * 4)
