# SPDX-License-Identifier: Apache-2.0
"""The driver's sans-IO core: frames out, reply bytes in, and its decisions, with no link and
no clock but the numbers given; and the command methods run by a scripted runner."""

import pytest

from spikeforge import protocol as p
from spikeforge import session as sansio
from spikeforge.errors import ConfigError
from spikeforge.protocol import MAX_WORDS, Opcode, Status
from spikeforge.regmap import Reg, Region, address
from spikeforge.session import Done, Failed, Receive, Request, Send


def session(**kwargs) -> sansio.Session:
    args = {"url": "test://", "timeout": 5.0, "retries": 2, "seq": 7, "settle": 0.1} | kwargs
    return sansio.Session(**args)


def reply(seq, status=Status.OK, payload=()):
    return p.encode_reply(seq, status, payload)


WRITE = Request(Opcode.WRITE, 1, 0x10000003, (0x3C00, 0x4000))


def test_frames_are_numbered_and_encoded():
    s = session(seq=254)
    frames = [s.start(Request(Opcode.READ, 0, 5, (1,))).frame for _ in range(3)]
    assert frames == [p.encode_command(seq, Opcode.READ, 0, 5, [1]) for seq in (254, 255, 0)]
    assert s.start(WRITE) == Send(bytes.fromhex("a5010301030000100400003c0040acc8"))
    assert s.seq == 2 and s.frames == 4 and s.resends == 0


def test_a_reply_completes_its_command_in_pieces():
    s = session()
    s.start(WRITE)
    assert s.sent(100.0) == Receive(5.0)
    data = reply(7, payload=(1, 2))
    assert s.received(data[:4], 101.0) == Receive(4.0)
    assert s.received(data[4:], 101.5) == Done((1, 2))


def test_stale_and_duplicate_replies_are_ignored():
    s = session(seq=10)
    s.start(WRITE)
    s.sent(0.0)
    assert s.received(b"", 5.0) == Send(p.encode_command(10, *WRITE))     # resent
    s.sent(5.0)
    assert s.received(reply(10), 6.0) == Done(())
    s.start(Request(Opcode.READ, 0, 0, (1,)))
    s.sent(6.0)
    # the first frame's late reply, the stored reply of a previous host's frame, then ours
    assert s.received(reply(10) + reply(200, Status.BAD_CORE), 6.5) == Receive(4.5)
    assert s.received(reply(10) + reply(11, payload=(42,)) + reply(11), 7.0) == Done((42,))
    assert s.resends == 1


def test_silence_is_resent_then_a_timeout():
    s = session(retries=2)
    frame = s.start(WRITE).frame
    for attempt in range(3):
        s.sent(10.0 * attempt)
        assert s.received(b"", 10.0 * attempt + 4.9) == Receive(pytest.approx(0.1))
        action = s.received(b"", 10.0 * attempt + 5.0)
        if attempt < 2:
            assert action == Send(frame)
    assert isinstance(action, Failed) and isinstance(action.error, sansio.BoardTimeout)
    assert str(action.error) == (
        "the board at test:// did not answer the WRITE of 2 words to core 1 at address "
        "0x10000003 (3 tries, 5 s each); is it running and connected?")
    assert s.resends == 2


def test_an_error_status_fails_at_once():
    s = session()
    s.start(Request(Opcode.READ, p.SOC, 0x100, (3,)))
    s.sent(0.0)
    action = s.received(reply(7, Status.BAD_ADDRESS), 1.0)
    assert isinstance(action, Failed) and s.resends == 0
    error = action.error
    assert isinstance(error, sansio.BoardError)
    assert (error.status, error.opcode, error.core, error.address) == \
        (Status.BAD_ADDRESS, Opcode.READ, p.SOC, 0x100)
    assert str(error).startswith("the board at test:// refused the READ of 1 words to the SoC "
                                 "at address 0x100: BAD_ADDRESS: an address or value")


def test_a_bad_crc_status_is_resent_then_an_error():
    s = session(retries=1)
    frame = s.start(WRITE).frame
    s.sent(0.0)
    assert s.received(reply(7, Status.BAD_CRC), 0.5) == Send(frame)
    s.sent(0.5)
    action = s.received(reply(7, Status.BAD_CRC), 1.0)
    assert isinstance(action, Failed) and action.error.status == Status.BAD_CRC


def test_a_bad_crc_status_then_silence_is_the_status():
    s = session(retries=1)
    s.start(WRITE)
    s.sent(0.0)
    s.received(reply(7, Status.BAD_CRC), 0.5)
    s.sent(0.5)
    action = s.received(b"", 5.5)
    assert isinstance(action.error, sansio.BoardError) and action.error.status == Status.BAD_CRC


def test_a_corrupted_reply_is_resent_once_the_link_settles():
    s = session(settle=0.5)
    frame = s.start(WRITE).frame
    s.sent(0.0)
    corrupt = bytearray(reply(7, payload=(5,)))
    corrupt[-1] ^= 1
    assert s.received(bytes(corrupt), 1.0) == Receive(0.5)
    assert s.received(b"\x00", 1.25) == Receive(0.5)     # not quiet yet
    assert s.received(b"", 1.5) == Receive(0.25)
    assert s.received(b"", 1.75) == Send(frame)
    s.sent(1.75)
    assert s.received(reply(7, payload=(5,)), 2.0) == Done((5,))


def test_settling_never_outlasts_the_deadline():
    s = session(timeout=1.0, settle=0.5)
    s.start(WRITE)
    s.sent(0.0)
    assert s.received(b"\x00garbage", 0.9) == Receive(pytest.approx(0.1))


def test_raw_replies_outside_a_command():
    s = session()
    assert s.decode(reply(99, Status.BAD_OPCODE)[:3]) == []
    assert s.decode(reply(99, Status.BAD_OPCODE)[3:]) == [p.Reply(99, Status.BAD_OPCODE, ())]
    assert s.seq == 7 and s.frames == 0


@pytest.mark.parametrize("kwargs, message", [
    ({"retries": -1}, r"^retries must be a non-negative integer, not -1$"),
    ({"retries": 1.5}, r"^retries must be a non-negative integer, not 1.5$"),
    ({"timeout": 0}, r"^timeout must be positive, not 0$"),
])
def test_parameters_are_checked(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        session(**kwargs)


class Scripted(sansio.Commands):
    """Runs command methods against a function from requests to outcomes; keeps the
    requests."""

    def __init__(self, answer, identity=None):
        super().__init__(session(), identity)
        self.answer = answer
        self.requests = []

    def _run(self, steps):
        step = sansio.advance(steps)
        while isinstance(step, Request):
            self.requests.append(step)
            step = sansio.advance(steps, self.answer(step))
        return step.payload


IDENTITY = dict(zip(p.IDENTITY, (p.VERSION, 2, 4, 16, 16, 4, 0, 1, 0, 68, MAX_WORDS, 1, 2,
                                 30000),
                    strict=True))


def memory(request):
    if request.opcode == Opcode.IDENTIFY:
        return Done(tuple(IDENTITY.values()))
    if request.opcode == Opcode.READ:
        return Done(tuple(range(request.address, request.address + request.payload[0])))
    return Done(())


def test_commands_split_into_frames():
    board = Scripted(memory)
    assert board.read(0, 0x10, MAX_WORDS + 3) == list(range(0x10, 0x10 + MAX_WORDS + 3))
    board.write(1, 0, range(MAX_WORDS + 1))
    assert board.reg(0, Reg.V_TH) == address(Region.REG, Reg.V_TH)
    assert board.requests == [
        Request(Opcode.READ, 0, 0x10, (MAX_WORDS,)),
        Request(Opcode.READ, 0, 0x10 + MAX_WORDS, (3,)),
        Request(Opcode.WRITE, 1, 0, tuple(range(MAX_WORDS))),
        Request(Opcode.WRITE, 1, MAX_WORDS, (MAX_WORDS,)),
        Request(Opcode.READ, 0, address(Region.REG, Reg.V_TH), (1,)),
    ]


def test_a_method_that_needs_the_identity_syncs_first_unless_given():
    board = Scripted(memory)
    board.errors_in(1, 2, [0] * 16)
    assert [r.opcode for r in board.requests] == [Opcode.IDENTIFY, Opcode.IDENTIFY,
                                                  Opcode.ERRORS_IN]
    assert board.identity == IDENTITY
    given = Scripted(memory, identity=IDENTITY)
    given.errors_in(1, 2, [0] * 16)
    given.set_qk_unit(0, range(p.QK_REGS))
    assert given.requests == [Request(Opcode.ERRORS_IN, 1, 2, (0,) * 16),
                              Request(Opcode.WRITE, p.SOC, p.SocReg.QK, tuple(range(8)))]


def test_errors_are_thrown_into_the_method():
    refused = sansio.BoardError("refused", status=Status.BAD_CORE, opcode=Opcode.IDENTIFY, core=0,
                         address=0)
    answers = iter([Failed(refused), Done(tuple(IDENTITY.values()))])
    board = Scripted(lambda request: next(answers))
    assert board.sync() == IDENTITY           # the first, stale, reply's error is ignored
    silent = Scripted(lambda request: Failed(sansio.BoardTimeout("silence")))
    with pytest.raises(sansio.BoardTimeout, match="^silence$"):
        silent.sync()
    assert len(silent.requests) == 1


def test_a_wrong_answer_is_a_link_error():
    board = Scripted(lambda request: Done((1, 2)))
    with pytest.raises(sansio.LinkError, match="answered a READ of 3 words with 2 words, not 3"):
        board.read(0, 0, 3)
    with pytest.raises(sansio.LinkError, match="answered IDENTIFY with 2 words"):
        board.identify()


def test_a_check_before_any_request_sends_nothing():
    board = Scripted(memory, identity=IDENTITY)
    with pytest.raises(ValueError, match="core 1 is the last"):
        board.set_link(1, p.Link.FP_TO_NEXT)
    with pytest.raises(ConfigError, match="max_words must be between 1 and 512, not 0"):
        board.spikes_out(0, 0)
    assert board.requests == []


def test_operations_keep_their_names_and_documents():
    assert sansio.Commands.read.__name__ == "read"
    assert sansio.Commands.read.__doc__.startswith("``count`` words from ``address`` on")
