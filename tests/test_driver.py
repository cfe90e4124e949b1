# SPDX-License-Identifier: Apache-2.0
"""The driver without a board: the serial transport against a pseudo-terminal that plays a
device, and a transaction recorded from the virtual board, replayed."""

import os
import struct
import threading
import time
from pathlib import Path

import pytest

from spikeforge import protocol as p
from spikeforge.driver import (
    Board,
    BoardError,
    BoardTimeout,
    LinkError,
    RecordingTransport,
    ReplayTransport,
    SerialTransport,
    open_transport,
)
from spikeforge.errors import ConfigError
from spikeforge.protocol import Opcode, Status
from spikeforge.regmap import Region, address

FIXTURE = Path(__file__).parent / "fixtures" / "vboard_session.json"
IDENTITY = (p.VERSION, 2, 4, 16, 16, 4, 0, 1, 0, 68, p.MAX_WORDS, 0, 0, 30000)


class PtyDevice:
    """A device on the far end of a pseudo-terminal: frames in, replies out, as the SoC does
    (memory of 16 × 16 words a core, replay of a repeated sequence number)."""

    def __init__(self, drop_first_reply_of=(), corrupt_first_reply_of=(), silent=False):
        self.master, slave = os.openpty()
        self.path = os.ttyname(slave)
        self._slave = slave
        self.memory = {c: [0] * 256 for c in range(2)}
        self.memory[p.SOC] = [0] * (p.SocReg.LINK + 2)     # the link's counters and routing
        self.executed = 0
        self.drop = set(drop_first_reply_of)
        self.corrupt = set(corrupt_first_reply_of)
        self.silent = silent
        self._last = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _execute(self, cmd: p.Command):
        self.executed += 1
        if cmd.opcode == Opcode.IDENTIFY:
            return Status.OK, IDENTITY
        if cmd.core not in self.memory:
            return Status.BAD_CORE, ()
        offset = cmd.address & 0xFFFFFFF
        if cmd.opcode == Opcode.READ:
            count = cmd.payload[0]
            if offset + count > len(self.memory[cmd.core]):
                return Status.BAD_ADDRESS, ()
            return Status.OK, tuple(self.memory[cmd.core][offset:offset + count])
        if cmd.opcode == Opcode.WRITE:
            if offset + len(cmd.payload) > len(self.memory[cmd.core]):
                return Status.BAD_ADDRESS, ()
            self.memory[cmd.core][offset:offset + len(cmd.payload)] = cmd.payload
            return Status.OK, ()
        return Status.BAD_OPCODE, ()

    def _run(self):
        buffer = bytearray()
        while not self._stop:
            try:
                data = os.read(self.master, 4096)
            except OSError:
                return
            buffer += data
            while True:
                start = buffer.find(p.COMMAND_SYNC)
                if start < 0:
                    buffer.clear()
                    break
                del buffer[:start]
                if len(buffer) < 10:
                    break
                (length,) = struct.unpack_from("<H", buffer, 8)
                if len(buffer) < 12 + length:
                    break
                frame = bytes(buffer[:12 + length])
                del buffer[:12 + length]
                cmd = p.decode_command(frame)
                if self._last and self._last[0] == cmd.seq:
                    reply = self._last[1]
                else:
                    status, payload = self._execute(cmd)
                    reply = p.encode_reply(cmd.seq, status, payload)
                    self._last = (cmd.seq, reply)
                    if cmd.seq in self.drop:
                        self.drop.discard(cmd.seq)
                        continue
                    if cmd.seq in self.corrupt:
                        self.corrupt.discard(cmd.seq)
                        os.write(self.master, reply[:-1] + bytes([reply[-1] ^ 1]))
                        continue
                if not self.silent:
                    os.write(self.master, reply)

    def close(self):
        self._stop = True
        os.close(self._slave)
        os.close(self.master)


@pytest.fixture
def device():
    dev = PtyDevice()
    yield dev
    dev.close()


def test_serial_board_reads_and_writes(device):
    with Board.connect(f"serial://{device.path}?baud=3000000", timeout=0.5) as board:
        assert board.identity["cores"] == 2 and board.identity["lanes"] == 4
        board.write(1, address(Region.WEIGHT, 3), [0x1234, 0x5678])
        assert board.read(1, address(Region.WEIGHT, 2), 4) == [0, 0x1234, 0x5678, 0]
        assert device.memory[1][3:5] == [0x1234, 0x5678]


def test_a_lost_reply_is_resent_not_reexecuted():
    dev = PtyDevice(drop_first_reply_of={12})
    try:
        board = Board(SerialTransport(dev.path), timeout=0.3, seq=10)
        board.sync()
        before = dev.executed
        board.write(0, address(Region.WEIGHT, 0), [7])
        assert board.resends == 1 and dev.executed == before + 1
        assert board.read(0, address(Region.WEIGHT, 0), 1) == [7]
        board.close()
    finally:
        dev.close()


@pytest.mark.parametrize("status, payload", [(Status.OK, (5,)), (Status.BAD_CORE, ())])
def test_a_stale_stored_reply_does_not_spoil_the_sync(device, status, payload):
    device._last = (40, p.encode_reply(40, status, payload))
    board = Board(SerialTransport(device.path), timeout=0.5, seq=40)
    assert board.sync()["cores"] == 2
    board.write(0, address(Region.WEIGHT, 0), [9])
    assert device.memory[0][0] == 9
    board.close()


def test_a_corrupted_reply_is_resent_at_once_not_reexecuted():
    dev = PtyDevice(corrupt_first_reply_of={12, 13})
    try:
        board = Board(SerialTransport(dev.path), timeout=3.0, seq=10)
        board.sync()
        before, start = dev.executed, time.monotonic()
        board.write(0, address(Region.WEIGHT, 0), [5, 6])
        assert board.read(0, address(Region.WEIGHT, 0), 2) == [5, 6]
        assert time.monotonic() - start < 1.5
        assert board.resends == 2 and dev.executed == before + 2
        board.close()
    finally:
        dev.close()


def test_error_statuses_and_silence_are_errors(device):
    board = Board.connect(device.path, timeout=0.3)
    with pytest.raises(BoardError, match="BAD_ADDRESS") as info:
        board.read(0, address(Region.WEIGHT, 250), 10)
    assert info.value.status == Status.BAD_ADDRESS
    with pytest.raises(BoardError, match="BAD_CORE"):
        board.write(5, 0, [1])
    board.close()
    quiet = PtyDevice(silent=True)
    try:
        with pytest.raises(BoardTimeout, match=f"the board at {quiet.path} did not answer"):
            Board.connect(f"serial://{quiet.path}?baud=115200", timeout=0.1, retries=1)
        with pytest.raises(LinkError, match=f"no spikeforge board answers on {quiet.path}"):
            Board.connect(quiet.path, timeout=0.1, retries=1)
    finally:
        quiet.close()


@pytest.mark.parametrize("url, message", [
    ("tcp://localhost", "lacks a port number"),
    ("tcp://:80", "must be tcp://HOST:PORT"),
    ("serial://", "must name a device path"),
    ("serial:///dev/ttyUSB0?baud=fast", "baud rate that is not a positive integer"),
    ("serial:///dev/ttyUSB0?parity=E", "unknown options parity \\(only baud and target\\)"),
    ("ftp://board", "unknown scheme 'ftp'"),
    ("", "is empty"),
])
def test_bad_urls(url, message):
    with pytest.raises(ConfigError, match=message):
        open_transport(url)


def test_a_missing_serial_port_is_named():
    with pytest.raises(Exception, match="cannot open serial port /dev/nonexistent-tty"):
        open_transport("serial:///dev/nonexistent-tty")


def test_recording_replays(device, tmp_path):
    recorder = RecordingTransport(SerialTransport(device.path))
    board = Board(recorder, timeout=0.5, seq=200)
    board.sync()
    board.write(0, address(Region.WEIGHT, 0), [1, 2, 3])
    assert board.read(0, address(Region.WEIGHT, 0), 3) == [1, 2, 3]
    path = tmp_path / "session.json"
    recorder.save(path)
    replay = ReplayTransport.load(path)
    again = Board(replay, timeout=0.5, seq=200)
    again.sync()
    again.write(0, address(Region.WEIGHT, 0), [1, 2, 3])
    assert again.read(0, address(Region.WEIGHT, 0), 3) == [1, 2, 3]
    assert replay.done
    with pytest.raises(AssertionError, match="wrote"):
        other = Board(ReplayTransport.load(path), timeout=0.5, seq=201)
        other.sync()


def test_a_session_recorded_from_the_virtual_board_replays():
    """Recorded with ``Board(RecordingTransport(...), seq=0)`` against
    ``spikeforge board serve`` of the configuration in the fixture (see tests/fixtures)."""
    replay = ReplayTransport.load(FIXTURE)
    board = Board(replay, seq=0)
    identity = board.sync()
    assert identity["cores"] == 2 and identity["neurons"] == 16
    board.write(1, address(Region.WEIGHT, 0), [0x3C00, 0xBC00, 0x0001])
    assert board.read(1, address(Region.WEIGHT, 0), 4) == [0x3C00, 0xBC00, 0x0001, 0]
    with pytest.raises(BoardError, match="BAD_ADDRESS"):
        board.write(1, address(Region.WEIGHT, 16 << 4), [1])
    assert board.counters(1)["cycles"] > 0
    assert replay.done


@pytest.mark.parametrize("core, link, message", [
    (2, 0, r"core must be between 0 and 1, not 2"),
    (-1, 0, r"core must be between 0 and 1, not -1"),
    (0, p.Link.SPLIT, r"core 0 has no core before it"),
    (0, p.Link.BP_TO_PREV, r"core 0 has no core before it"),
    (1, p.Link.FP_TO_NEXT, r"core 1 is the last"),
    (1, 8, r"link must be Link bits \(0 to 7\), not 8"),
])
def test_a_route_to_a_missing_core_is_refused(device, core, link, message):
    board = Board(SerialTransport(device.path), timeout=0.5)
    board.sync()
    executed = device.executed
    with pytest.raises(ValueError, match=message):
        board.set_link(core, link)
    assert device.executed == executed      # nothing was sent
    board.set_link(1, p.Link.BP_TO_PREV | p.Link.SPLIT)
    assert device.executed == executed + 1
    assert board.link(1) == p.Link.BP_TO_PREV | p.Link.SPLIT


def test_the_board_and_the_simulator_run_the_same_command_methods():
    from spikeforge.session import Commands
    from spikeforge.simlink import SimBoard

    for name in ("command", "sync", "read", "write", "spikes_in", "spikes_out", "errors_in",
                 "errors_out", "reg", "set_reg", "counters", "set_link", "set_qk_unit"):
        assert getattr(Board, name) is getattr(SimBoard, name) is getattr(Commands, name)


def test_a_late_duplicate_reply_is_not_taken_for_the_next_command():
    dev = PtyDevice(drop_first_reply_of={12})
    try:
        board = Board(SerialTransport(dev.path), timeout=0.3, seq=10)
        board.sync()
        board.write(0, address(Region.WEIGHT, 0), [3, 4])
        dev.drop.add(13)
        board.transport.write(p.encode_command(12, Opcode.READ, 0, 0, [1]))     # a stale copy
        assert board.read(0, address(Region.WEIGHT, 0), 2) == [3, 4]
        assert board.resends == 2
        board.close()
    finally:
        dev.close()


class FakeSerialBoard:
    """A board whose UART runs at ``rate``: transports opened at that rate get its replies to
    whole frames; at another rate it hears noise and the host hears noise back."""

    def __init__(self, rate: int | None):
        self.rate = rate
        self.opened = []

    def open(self, port, *, baudrate):
        self.opened.append(baudrate)
        return FakeSerial(self, port, baudrate)


class FakeSerial:
    def __init__(self, board, port, baudrate):
        self.board, self.url, self.baudrate = board, port, baudrate
        self.pending = bytearray()
        self.closed = False

    def write(self, data):
        if self.baudrate != self.board.rate:
            self.pending += bytes([0x5A, 0x00, 0xFF, 0x5A])
            return
        cmd = p.decode_command(bytes(data))
        assert cmd.opcode == Opcode.IDENTIFY
        self.pending += p.encode_reply(cmd.seq, Status.OK, IDENTITY)

    def read(self, timeout):
        data, self.pending = bytes(self.pending), bytearray()
        return data

    def close(self):
        self.closed = True


@pytest.mark.parametrize("rate", [3_000_000, 1_000_000, 115_200])
def test_the_rate_is_found_by_identify(rate):
    from spikeforge.driver import PROBE_RATES, probe_baud

    fake = FakeSerialBoard(rate)
    transport = probe_baud("/dev/ttyUSB0", opener=fake.open, timeout=0.01, settle=0.0)
    assert transport.baudrate == rate and not transport.closed
    assert transport.url == f"/dev/ttyUSB0?baud={rate}"
    assert fake.opened == list(PROBE_RATES[:PROBE_RATES.index(rate) + 1])
    assert PROBE_RATES == (3_000_000, 1_000_000, 115_200)


def test_no_answer_at_any_rate_is_a_link_error():
    from spikeforge.driver import LinkError, probe_baud

    fake = FakeSerialBoard(None)
    with pytest.raises(LinkError, match=r"no spikeforge board answers on /dev/ttyUSB0 at "
                                        r"3,000,000, 1,000,000, 115,200 baud; .*\?baud=N$"):
        probe_baud("/dev/ttyUSB0", opener=fake.open, timeout=0.01, settle=0.0)
    assert fake.opened == [3_000_000, 1_000_000, 115_200]


@pytest.mark.parametrize("url, target, rate", [
    ("serial:///dev/ttyUSB0?baud=921600", None, 921_600),
    ("serial:///dev/ttyUSB0?baud=921600&target=ulx3s-85f", None, 921_600),
    ("serial:///dev/ttyUSB0?target=ulx3s-85f", None, 3_000_000),
    ("serial:///dev/ttyUSB0?target=orangecrab-25f", None, 1_000_000),
    ("serial:///dev/ttyUSB0", "orangecrab-25f", 1_000_000),
    ("/dev/ttyUSB0", "ulx3s-85f", 3_000_000),
    ("serial:///dev/ttyUSB0", None, "probe"),
    ("/dev/ttyUSB0", None, "probe"),
])
def test_the_rate_a_serial_url_opens_at(monkeypatch, url, target, rate):
    import spikeforge.driver as d

    opened = []
    monkeypatch.setattr(d, "SerialTransport", lambda port, baudrate: opened.append(baudrate))
    monkeypatch.setattr(d, "probe_baud", lambda port: opened.append("probe"))
    open_transport(url, target=target)
    assert opened == [rate]


def test_an_unknown_target_is_named():
    with pytest.raises(ConfigError, match="unknown board 'de10'"):
        open_transport("serial:///dev/ttyUSB0?target=de10")


@pytest.mark.filterwarnings("error")
def test_a_board_built_for_another_rate_is_reported(device):
    with Board.connect(f"serial://{device.path}?baud=3000000", timeout=0.5) as board:
        assert board.baud == 3_000_000
    with pytest.warns(RuntimeWarning, match=r"built for 3,000,000 baud and the link runs at "
                                            r"115,200 \(96.2% off\): open it with "
                                            r"\?baud=3000000$"):
        Board.connect(f"serial://{device.path}?baud=115200", timeout=0.5).close()
