# SPDX-License-Identifier: Apache-2.0
"""The virtual board: its harness around a loopback stand-in (bytes round trip, clients come and
go, no CPU while idle), and the SoC under bad input: every malformed frame gets an error reply or
is skipped, the weights stay as they were, and the link keeps working."""

import random
import socket
import time

import pytest
from configs import BOARD
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spikeforge import protocol as p
from spikeforge.bench import bench_link
from spikeforge.driver import Board
from spikeforge.gen.vboard import Loopback, VirtualBoard
from spikeforge.protocol import Opcode, Status
from spikeforge.regmap import Reg, Region, address, weight_offset

CONFIG = BOARD
WEIGHTS = address(Region.WEIGHT, 0)
COUNT = CONFIG.neurons * CONFIG.fan_in


class Raw:
    """A TCP client that sends arbitrary bytes and collects whole replies."""

    def __init__(self, url: str):
        host, port = url.removeprefix("tcp://").rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.decoder = p.ReplyDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, count: int = 1, timeout: float = 5.0) -> list:
        got = []
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            if not data:
                break
            got += self.decoder.feed(data)
        return got

    def ask(self, seq, opcode, core=0, addr=0, payload=()) -> p.Reply:
        self.send(p.encode_command(seq, opcode, core, addr, payload))
        [reply] = self.replies(1)
        assert reply.seq == seq
        return reply

    def close(self):
        self.sock.close()


@pytest.fixture(scope="module")
def loopback():
    with VirtualBoard(CONFIG, component_factory=Loopback) as board:
        yield board


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("tcp://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=5)


def take(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(1 << 16)
        assert chunk, "the virtual board closed the connection"
        data += chunk
    return data


def echo(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    return take(sock, len(data))


def test_loopback_round_trips_bytes(loopback):
    data = random.Random(5).randbytes(200_000)
    before = loopback.stats()
    with connect(loopback.url) as sock:
        assert echo(sock, b"\x00") == b"\x00"
        assert echo(sock, data) == data
    after = loopback.stats()
    assert after["rx_bytes"] - before["rx_bytes"] == len(data) + 1
    assert after["cycles"] - before["cycles"] >= len(data)


def test_loopback_serves_the_next_client_after_one_leaves_mid_stream(loopback):
    first = connect(loopback.url)
    first.sendall(bytes(range(256)) * 64)
    first.recv(10)
    first.close()
    second = connect(loopback.url)
    assert echo(second, b"fresh bytes") == b"fresh bytes"
    waiting = connect(loopback.url)
    waiting.sendall(b"queued")
    assert echo(second, b"still mine") == b"still mine"
    second.close()
    assert take(waiting, 6) == b"queued"
    waiting.close()


def test_loopback_idles_without_cpu(loopback):
    with connect(loopback.url) as sock:
        assert echo(sock, b"wake") == b"wake"
        before = loopback.stats()
        time.sleep(1.0)
        after = loopback.stats()
    assert after["cpu_seconds"] - before["cpu_seconds"] < 0.2
    assert after["cycles"] - before["cycles"] < 10_000


def test_loopback_restarts_on_its_port_and_reports_at_exit():
    board = VirtualBoard(CONFIG, component_factory=Loopback).start()
    try:
        url = board.url
        board.kill()
        assert not board.running
        board.start()
        assert board.url == url
        board.restart()
        assert board.url == url
        with connect(url) as sock:
            assert echo(sock, b"again") == b"again"
    finally:
        board.stop()
    assert board._process.returncode == 0
    assert board.stats()["rx_bytes"] == 5


@pytest.fixture(scope="module")
def vboard():
    with VirtualBoard(CONFIG) as board:
        yield board


@pytest.fixture(scope="module")
def reference(vboard):
    rng = random.Random(3)
    words = [rng.randrange(0x10000) & 0x7BFF for _ in range(COUNT)]
    with Board.connect(vboard.url) as board:
        board.write(0, WEIGHTS, words)
        board.write(1, WEIGHTS, words[::-1])
    return words


def wait_taken(vboard: VirtualBoard, count: int, timeout: float = 5.0) -> None:
    """Wait until the SoC has taken ``count`` bytes since the board started, or ``timeout``
    seconds have passed."""
    deadline = time.monotonic() + timeout
    while vboard.stats()["rx_bytes"] < count and time.monotonic() < deadline:
        pass


def unchanged(url: str, words: list) -> None:
    with Board.connect(url) as board:
        assert board.read(0, WEIGHTS, COUNT) == words
        assert board.read(1, WEIGHTS, COUNT) == words[::-1]
        assert board.reg(0, Reg.NEURONS) == CONFIG.neurons


def test_each_kind_of_bad_frame(vboard, reference):
    raw = Raw(vboard.url)
    bad_crc = bytearray(p.encode_command(10, Opcode.WRITE, 0, WEIGHTS, [1, 2, 3]))
    bad_crc[12] ^= 0x10
    raw.send(bytes(bad_crc))
    assert raw.replies()[0].status == Status.BAD_CRC
    assert raw.ask(11, 0x42).status == Status.BAD_OPCODE
    assert raw.ask(12, Opcode.WRITE, 9, WEIGHTS, [1]).status == Status.BAD_CORE
    past = address(Region.WEIGHT, weight_offset(CONFIG.neurons, 0, fan_in=CONFIG.fan_in))
    assert raw.ask(13, Opcode.WRITE, 0, past, [1]).status == Status.BAD_ADDRESS
    assert raw.ask(14, Opcode.WRITE, 0, address(Region.REG, Reg.NEURONS),
                   [CONFIG.neurons + 1]).status == Status.BAD_ADDRESS
    assert raw.ask(15, Opcode.SPIKES_IN, 0, 0, [p.event_word(CONFIG.fan_in)]).status == \
        Status.BAD_ADDRESS
    header = bytes([p.COMMAND_SYNC, 16, Opcode.WRITE, 0, 0, 0, 0, 0x10])
    raw.send(header + (p.MAX_PAYLOAD + 2).to_bytes(2, "little"))
    assert raw.replies()[0].status == Status.BAD_LENGTH
    raw.send(bytes(random.Random(1).randrange(256) for _ in range(300)).replace(b"\xa5", b""))
    raw.send(p.encode_command(17, Opcode.WRITE, 0, WEIGHTS, [9] * 8)[:11])
    time.sleep(1.0)
    assert raw.ask(18, Opcode.IDENTIFY).status == Status.OK
    raw.close()
    unchanged(vboard.url, reference)


def test_a_client_that_disconnects_mid_frame(vboard, reference):
    raw = Raw(vboard.url)
    raw.send(p.encode_command(20, Opcode.WRITE, 0, WEIGHTS, [7] * 64)[:50])
    raw.close()
    unchanged(vboard.url, reference)


def test_a_resent_frame_is_executed_once(vboard, reference):
    raw = Raw(vboard.url)
    raw.ask(30, Opcode.IDENTIFY)
    frames = raw.ask(31, Opcode.READ, p.SOC, p.SocReg.FRAMES, [1]).payload[0]
    write = p.encode_command(32, Opcode.WRITE, 0, address(Region.REG, Reg.V_TH), [0x3A00])
    raw.send(write)
    raw.send(write)
    assert [r.status for r in raw.replies(2)] == [Status.OK, Status.OK]
    assert raw.ask(33, Opcode.READ, p.SOC, p.SocReg.FRAMES, [1]).payload[0] == frames + 2
    assert raw.ask(34, Opcode.WRITE, 0, address(Region.REG, Reg.V_TH), [0x3C00]).status == \
        Status.OK
    raw.close()
    unchanged(vboard.url, reference)


def valid_frames():
    return st.builds(
        p.encode_command, st.integers(0, 255), st.sampled_from(list(Opcode)),
        st.integers(0, 255), st.integers(0, (1 << 32) - 1),
        st.lists(st.integers(0, 0xFFFF), max_size=8))


@st.composite
def mutated(draw):
    frame = bytearray(draw(valid_frames()))
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert"]))
        at = draw(st.integers(0, max(len(frame) - 1, 0)))
        if kind == "flip" and frame:
            frame[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del frame[at:]
        else:
            frame[at:at] = draw(st.binary(min_size=1, max_size=4))
    return bytes(frame)


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(garbage=st.lists(st.one_of(st.binary(max_size=40), mutated()), min_size=1, max_size=4))
def test_fuzz_keeps_the_link_and_the_weights(vboard, reference, garbage):
    raw = Raw(vboard.url)
    taken = vboard.stats()["rx_bytes"]
    for chunk in garbage:
        # A mutated frame may write only where it is well-formed: keep the weights' region out.
        if len(chunk) > 8 and chunk[0] == p.COMMAND_SYNC and chunk[2] == Opcode.WRITE:
            continue
        raw.send(chunk)
        taken += len(chunk)
    wait_taken(vboard, taken)
    raw.close()
    with Board.connect(vboard.url) as board:
        assert board.identify()["cores"] == CONFIG.cores
        assert board.read(0, WEIGHTS, 16) == reference[:16]


def test_link_throughput():
    result = bench_link(CONFIG, seconds=0.5)
    assert result["weights_written_per_second"] > 1000
    assert result["weights_read_per_second"] > 1000
    assert result["spike_events_per_second"] > 1000
    assert result["round_trips_per_second"] > 50
    assert result["vboard_cycles_per_second"] > 1000


def test_board_serve_from_the_command_line(tmp_path):
    import subprocess
    import sys

    config = tmp_path / "accel.json"
    config.write_text(CONFIG.replace(cores=1).to_json())
    serve = subprocess.Popen(
        [sys.executable, "-m", "spikeforge.cli", "board", "serve", "--port", "0", "--config",
         str(config), "--cores", str(CONFIG.cores)], stdout=subprocess.PIPE, text=True)
    try:
        line = serve.stdout.readline()
        assert line.startswith("listening 127.0.0.1:")
        with Board.connect("tcp://" + line.split()[1]) as board:
            assert board.identity["cores"] == CONFIG.cores
            assert board.identity["fan_in"] == CONFIG.fan_in
    finally:
        serve.terminate()
        serve.wait(10)
