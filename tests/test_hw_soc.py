# SPDX-License-Identifier: Apache-2.0
import pytest
import torch
from amaranth.sim import Simulator

from spikeforge import protocol as p
from spikeforge.gen.config import AcceleratorConfig
from spikeforge.golden import fp16
from spikeforge.golden.arith import FP16
from spikeforge.golden.lif import LIFParams, lif_backward, lif_forward
from spikeforge.golden.linear import linear_backward, linear_forward, linear_weight_grad, sgd_update
from spikeforge.hw.hostlink import FrameReceiver, HostLink
from spikeforge.hw.soc import SoC
from spikeforge.protocol import Opcode, SocReg, Status
from spikeforge.regmap import Command, Counter, Reg, Region, address, weight_offset
from spikeforge.session import BoardError
from spikeforge.simlink import SimBoard
from spikeforge.testing import LayerCase

CONFIG = AcceleratorConfig(cores=2, neurons=8, fan_in=8, lanes=4, timesteps=3)


def w_addr(region: Region, n: int, i: int) -> int:
    return address(region, weight_offset(n, i, fan_in=CONFIG.fan_in))


async def refused(status: Status, command):
    """The awaitable ``command`` fails with a :class:`BoardError` of ``status``."""
    with pytest.raises(BoardError) as info:
        await command
    assert info.value.status == status, f"{info.value}; expected {status!r}"


async def _weights(board, core, region=Region.WEIGHT, n=8, f=8):
    return [await board.read(core, w_addr(region, i, 0), f) for i in range(n)]


async def _wait(board, core, flag):
    for _ in range(2000):
        if await board.reg(core, Reg.STATUS) & flag:
            return
    raise AssertionError(f"core {core} never reached {flag!r}")


def run(body, config=CONFIG, timeout=2000):
    dut = SoC(config, link_timeout=timeout)
    sim = Simulator(dut)
    sim.add_clock(1e-8)

    async def bench(ctx):
        await body(SimBoard(ctx, dut.rx, dut.tx, seq=1, idle=0.2, identity=config.identity()))

    sim.add_testbench(bench)
    sim.run()


def test_identify_and_registers():
    async def body(board):
        words = await board.command(Opcode.IDENTIFY, 0)
        assert dict(zip(p.IDENTITY, words, strict=True)) == {
            "version": p.VERSION, "cores": 2, "lanes": 4, "neurons": 8, "fan_in": 8,
            "timesteps": 3, "reset": 0, "detach_reset": 1, "surrogate": 0,
            "out_fifo": 3 * 9, "max_words": 512, "qk_units": 0, "qk_tokens": 0, "baud_100": 0}
        await board.write(1, w_addr(Region.WEIGHT, 1, 2), [0x3C00, 0x4000])
        assert await board.read(1, w_addr(Region.WEIGHT, 1, 1), 4) == [0, 0x3C00,
                                                                               0x4000, 0]
        assert await board.read(0, w_addr(Region.WEIGHT, 1, 2), 1) == [0]
        await board.set_reg(p.BROADCAST, Reg.V_TH, 0x3800)
        for core in (0, 1):
            assert await board.reg(core, Reg.V_TH) == 0x3800
        await board.write(p.SOC, SocReg.LINK, [p.Link.FP_TO_NEXT, p.Link.BP_TO_PREV])
        assert await board.read(p.SOC, SocReg.LINK, 2) == [1, 2]
        counters = await board.read(p.SOC, SocReg.RX_BYTES, 12)
        assert counters[0] > 0 and counters[2] > 0 and counters[4] == 9 and counters[6] == 0
        assert counters[8:] == [0, 0, 0, 0]    # no core has run, and there is no Q-K unit
        await refused(Status.BAD_ADDRESS, board.read(p.SOC, SocReg.RX_BYTES, 13))

    run(body)


def test_bad_frames_change_nothing():
    async def body(board):
        w = address(Region.WEIGHT, 0)
        await board.write(0, w, [0x1111, 0x2222])
        bad = bytearray(p.encode_command(99, Opcode.WRITE, 0, w, [0x5555]))
        bad[-3] ^= 0x40
        assert (await board.send(bytes(bad))).status == Status.BAD_CRC
        assert (await board.send(p.encode_command(98, 0x7F, 0, w))).status == Status.BAD_OPCODE
        await refused(Status.BAD_CORE, board.read(2, w, 1))
        await refused(Status.BAD_CORE, board.read(p.BROADCAST, w, 1))
        await refused(Status.BAD_CORE, board.spikes_in(7, [1]))
        await refused(Status.BAD_LENGTH, board.command(Opcode.READ, 0, w, [0]))
        await refused(Status.BAD_LENGTH, board.command(Opcode.READ, 0, w, [513]))
        await refused(Status.BAD_LENGTH, board.command(Opcode.READ, 0, w, [1, 1]))
        await refused(Status.BAD_ADDRESS, board.read(0, w_addr(Region.WEIGHT, 8, 0), 1))
        # The last word is past the last neuron: nothing is written.
        await refused(Status.BAD_ADDRESS, board.write(0, w_addr(Region.WEIGHT, 7, 6), [0x3333] * 3))
        await refused(Status.BAD_ADDRESS, board.set_reg(p.BROADCAST, Reg.NEURONS, 9))
        await refused(Status.BAD_ADDRESS, board.write(0, address(Region.GRAD, 0), [1]))
        await refused(Status.BAD_ADDRESS, board.write(p.SOC, SocReg.RX_BYTES, [0]))
        await refused(Status.BAD_ADDRESS, board.write(p.SOC, SocReg.LINK, [8]))
        await refused(Status.BAD_ADDRESS, board.spikes_in(0, [p.event_word(2), p.event_word(8)]))
        await refused(Status.BAD_ADDRESS, board.command(Opcode.ERRORS_IN, 0, 0, [0] * 8))
        await refused(Status.BAD_LENGTH, board.command(Opcode.ERRORS_IN, 0, 2, [0] * 4))
        await refused(Status.BAD_LENGTH, board.command(Opcode.ERRORS_IN, 0, 1, [0] * 6))
        # Oversize and odd lengths are refused as soon as the header is in.
        header = bytes([p.COMMAND_SYNC, 50, Opcode.WRITE, 0, 0, 0, 0, 0x10])
        for length in (p.MAX_PAYLOAD + 2, 3):
            reply = await board.send(header + length.to_bytes(2, "little"))
            assert reply.status == Status.BAD_LENGTH
        # Garbage, then a truncated frame that times out, then a good frame.
        await board.send(bytes([0x00, 0x5A, 0xFF, 0x13]), reply=False)
        await board.send(p.encode_command(60, Opcode.WRITE, 0, w, [0x7777])[:9], reply=False)
        await board.pause(2100)
        assert await board.read(0, w, 2) == [0x1111, 0x2222]
        assert await board.read(0, w_addr(Region.WEIGHT, 7, 6), 2) == [0, 0]
        assert await board.reg(0, Reg.NEURONS) == 8
        assert await board.read(p.SOC, SocReg.LINK, 2) == [0, 0]

    run(body)


def test_repeated_sequence_number_is_answered_not_executed():
    async def body(board):
        w = address(Region.WEIGHT, 3)
        first = p.encode_command(40, Opcode.WRITE, 0, w, [0x1234])
        assert (await board.send(first)).status == Status.OK
        seq = board.seq
        frames = (await board.read(p.SOC, SocReg.FRAMES, 1))[0]
        again = p.encode_command(seq, Opcode.WRITE, 0, w, [0x4321])
        reply = await board.send(again)
        assert reply.seq == seq and reply.status == Status.OK and len(reply.payload) == 1
        assert (await board.read(p.SOC, SocReg.FRAMES, 1))[0] == frames + 1
        assert await board.read(0, w, 1) == [0x1234]

    run(body)


def _events(spikes):
    words = []
    for row in spikes:
        words += [p.event_word(int(i)) for i in torch.nonzero(row).flatten()]
        words.append(p.event_word(0, spike=False, last=True))
    return words


def _beats(errors, lanes):
    words = []
    for t in reversed(range(errors.shape[0])):
        row = fp16.bits(errors[t]).tolist()
        words += row + [0] * (-len(row) % lanes)
    return words


def _decode_events(words, timesteps):
    events, t = [[] for _ in range(timesteps)], 0
    for word in words:
        if word & p.EVENT_SPIKE:
            events[t].append(word & p.EVENT_INDEX)
        if word & p.EVENT_LAST:
            t += 1
    assert t == timesteps
    return events


async def _configure(board, core, case: LayerCase, bp_input_error: int):
    for reg, value in case.registers().items():
        await board.set_reg(core, reg, value)
    await board.set_reg(core, Reg.BP_INPUT_ERROR, bp_input_error)
    for n, row in enumerate(fp16.bits(case.weights).tolist()):
        await board.write(core, w_addr(Region.WEIGHT, n, 0), row)


async def _collect(fetch, core, until):
    words = []
    for _ in range(2000):
        words += await fetch(core, 64)
        if until(words):
            return words
    raise AssertionError(f"core {core} output stopped at {words}")


async def _sample_through_two_cores(board, spikes, spikes_out, errors):
    """One sample into core 0, its output spikes out of core 1 (checked), the output errors
    into core 1, until core 0's back-propagation is done."""
    T = spikes_out.shape[0]
    await board.core_command(p.BROADCAST, Command.BEGIN)
    await board.spikes_in(0, _events(spikes))
    words = await _collect(board.spikes_out, 1, lambda w: sum(v >> 15 for v in w) == T)
    assert _decode_events(words, T) == [
        [int(i) for i in torch.nonzero(spikes_out[t]).flatten()] for t in range(T)]
    await board.errors_in(1, 2, _beats(errors, 4))
    await _wait(board, 0, 4)


def test_one_layer_through_the_link():
    case = LayerCase.random(neurons=7, fan_in=6, timesteps=3, rate=0.5, seed=3)
    T = case.timesteps

    async def body(board):
        await _configure(board, 1, case, 1)
        await board.core_command(1, Command.BEGIN)
        await board.spikes_in(1, _events(case.spikes_in))
        words = await _collect(board.spikes_out, 1, lambda w: sum(x >> 15 for x in w) == T)
        assert _decode_events(words, T) == [case.output_events(t) for t in range(T)]
        await board.errors_in(1, 2, _beats(case.grad_out, 4))
        words = await _collect(board.errors_out, 1, lambda w: len(w) == T * 8)
        for k, t in enumerate(reversed(range(T))):
            assert words[8 * k:8 * k + 6] == fp16.bits(case.expected_grad_in[t]).tolist()
        await _wait(board, 1, 4)
        assert await _weights(board, 1, Region.GRAD, 7, 6) == fp16.bits(case.expected_dw).tolist()
        await board.core_command(1, Command.UPDATE)
        await _wait(board, 1, 0xFFFF)
        while await board.reg(1, Reg.STATUS) & 1:
            pass
        assert await _weights(board, 1, Region.WEIGHT, 7, 6) == \
            fp16.bits(case.expected_weights).tolist()
        assert (case.expected_grad_in != 0).any() and case.expected_spikes.any()

    run(body)


@pytest.mark.slow
def test_two_layers_chained_on_the_chip():
    a = FP16()
    lif = LIFParams()
    gen = torch.Generator().manual_seed(5)
    T = 3
    x = (torch.rand(T, 1, 8, generator=gen) < 0.6).float()
    w0 = fp16.to_fp16(torch.randn(8, 8, generator=gen) * 0.9 + 0.3)
    w1 = fp16.to_fp16(torch.randn(5, 8, generator=gen) * 0.9 + 0.3)
    s1, h1 = lif_forward(linear_forward(x, w0, a), lif, a)
    s2, h2 = lif_forward(linear_forward(s1, w1, a), lif, a)
    g2 = fp16.to_fp16(torch.randn(T, 1, 5, generator=gen) * 0.25)
    dx2 = lif_backward(g2, h2, s2, lif, a)
    g1 = linear_backward(dx2, w1, a)
    dx1 = lif_backward(g1, h1, s1, lif, a)
    dw0, dw1 = linear_weight_grad(dx1, x, a), linear_weight_grad(dx2, s1, a)
    assert s1.any() and s2.any() and (dw0 != 0).any() and (dw1 != 0).any()
    lr = 0.125

    async def body(board):
        async def counter(core, which):
            low, high = await board.read(core, address(Region.COUNTER, 2 * which), 2)
            return low | high << 16

        async def active_cycles():
            low, high = await board.read(p.SOC, SocReg.ACTIVE_CYCLES, 2)
            return low | high << 16

        for core, (w, inputs) in enumerate(((w0, 8), (w1, 8))):
            case = LayerCase(w, torch.zeros(T, inputs), torch.zeros(T, w.shape[0]), lif, lr)
            await _configure(board, core, case, core)
        active, cycles = await active_cycles(), await counter(0, Counter.CYCLES)
        busy = [await counter(c, Counter.FP_BUSY) + await counter(c, Counter.UPDATE_BUSY)
                for c in (0, 1)]
        await board.write(p.SOC, SocReg.LINK, [p.Link.FP_TO_NEXT, p.Link.BP_TO_PREV])
        await refused(Status.BAD_CORE, board.spikes_in(1, [p.event_word(0)]))
        await refused(Status.BAD_CORE, board.errors_in(0, 2, [0] * 8))
        await _sample_through_two_cores(board, x[:, 0], s2[:, 0], g2[:, 0])
        assert await _weights(board, 1, Region.GRAD, 5, 8) == fp16.bits(dw1).tolist()
        assert await _weights(board, 0, Region.GRAD, 8, 8) == fp16.bits(dw0).tolist()
        await board.core_command(p.BROADCAST, Command.UPDATE)
        for core in (0, 1):
            while await board.reg(core, Reg.STATUS) & 1:
                pass
        assert await _weights(board, 0, Region.WEIGHT, 8, 8) == \
            fp16.bits(sgd_update(w0, dw0, lr, a)).tolist()
        assert await _weights(board, 1, Region.WEIGHT, 5, 8) == \
            fp16.bits(sgd_update(w1, dw1, lr, a)).tolist()
        # The cores' working cycles: at least each core's FP and update cycles, and fewer than
        # all cycles, which include the waits for the host's spikes and errors.
        worked = await active_cycles() - active
        for c in (0, 1):
            assert worked >= (await counter(c, Counter.FP_BUSY)
                              + await counter(c, Counter.UPDATE_BUSY) - busy[c]) > 0
        assert worked < await counter(0, Counter.CYCLES) - cycles

    run(body)


@pytest.mark.slow
def test_token_wise_layer_and_a_head_over_all_its_tokens_on_the_chip():
    """QKFormer's classifier: a token-wise layer (one set of weights, a membrane per token) and
    a head over the flattened tokens, chained core to core. The head counts the producer's
    token steps of a timestep as one input vector, and its input errors come out per timestep
    token after token, the order in which the producer takes them."""
    a, lif, lr = FP16(), LIFParams(), 0.125
    gen = torch.Generator().manual_seed(11)
    T, n, d, f, classes = 3, 2, 8, 6, 5
    config = AcceleratorConfig(cores=2, neurons=8, fan_in=16, lanes=4, timesteps=T * n)
    x = (torch.rand(T, 1, n, f, generator=gen) < 0.6).float()
    w0 = fp16.to_fp16(torch.randn(d, f, generator=gen) * 0.9 + 0.3)
    w1 = fp16.to_fp16(torch.randn(classes, n * d, generator=gen) * 0.6 + 0.2)
    s1, h1 = lif_forward(linear_forward(x, w0, a), lif, a)
    flat = s1.flatten(2)
    s2, h2 = lif_forward(linear_forward(flat, w1, a), lif, a)
    g2 = fp16.to_fp16(torch.randn(T, 1, classes, generator=gen) * 0.25)
    dx2 = lif_backward(g2, h2, s2, lif, a)
    g1 = linear_backward(dx2, w1, a).unflatten(2, (n, d))
    dx1 = lif_backward(g1, h1, s1, lif, a)
    dw0, dw1 = linear_weight_grad(dx1, x, a), linear_weight_grad(dx2, flat, a)
    assert s1.any() and s2.any() and (dw0 != 0).any() and (dw1 != 0).any()
    # every token of a timestep differs somewhere, so a head that mixed them up would fail
    assert all(not torch.equal(s1[t, 0, 0], s1[t, 0, 1]) for t in range(T))

    async def body(board):
        async def weights(core, region, rows, cols):
            return [await board.read(core, address(region, i << 4), cols) for i in range(rows)]

        producer = LayerCase(w0, torch.zeros(T * n, f), torch.zeros(T * n, d), lif, lr, tokens=n)
        head = LayerCase(w1, torch.zeros(T, n * d), torch.zeros(T, classes), lif, lr)
        for core, case in enumerate((producer, head)):
            for reg, value in case.registers().items():
                await board.set_reg(core, reg, value)
            await board.set_reg(core, Reg.BP_INPUT_ERROR, core)
            for i, row in enumerate(fp16.bits(case.weights).tolist()):
                await board.write(core, address(Region.WEIGHT, i << 4), row)
        await board.set_reg(1, Reg.IN_TOKENS, n)
        await board.set_reg(1, Reg.IN_STRIDE, d)
        # an input token longer than the producer's fan-in is refused and changes nothing
        await refused(Status.BAD_ADDRESS, board.set_reg(1, Reg.IN_STRIDE, 17))
        assert await board.read(1, address(Region.REG, Reg.IN_TOKENS), 2) == [n, d]
        await board.write(p.SOC, SocReg.LINK, [p.Link.FP_TO_NEXT, p.Link.BP_TO_PREV])
        await _sample_through_two_cores(board, x[:, 0].flatten(0, 1), s2[:, 0], g2[:, 0])
        assert await weights(1, Region.GRAD, classes, n * d) == fp16.bits(dw1).tolist()
        assert await weights(0, Region.GRAD, d, f) == fp16.bits(dw0).tolist()
        assert await board.reg(0, Reg.ERRORS) == 0
        assert await board.reg(1, Reg.ERRORS) == 0
        await board.core_command(p.BROADCAST, Command.UPDATE)
        for core in (0, 1):
            while await board.reg(core, Reg.STATUS) & 1:
                pass
        assert await weights(0, Region.WEIGHT, d, f) == \
            fp16.bits(sgd_update(w0, dw0, lr, a)).tolist()
        assert await weights(1, Region.WEIGHT, classes, n * d) == \
            fp16.bits(sgd_update(w1, dw1, lr, a)).tolist()

    run(body, config, timeout=4000)


@pytest.mark.filterwarnings("ignore::amaranth.hdl.UnusedElaboratable")
def test_parameters_are_checked():
    with pytest.raises(ValueError, match=r"^Frame time-out must be at least 16 cycles, not 3$"):
        FrameReceiver(3)
    with pytest.raises(ValueError, match=r"^Host link core count must be between 1 and 253"):
        HostLink(cores=0, lanes=4, fan_in=8, identity=())
    with pytest.raises(TypeError, match=r"^SoC needs an AcceleratorConfig"):
        SoC({"cores": 2})
    with pytest.raises(ValueError, match=r"^The UART's baud rate must be a non-negative "
                                         r"integer, not -1$"):
        SoC(CONFIG, baud=-1)


@pytest.mark.parametrize("baud, word", [(0, 0), (115_200, 1152), (3_000_000, 30000),
                                        (12_500_000, 0xFFFF)])
def test_the_identity_carries_the_uarts_rate(baud, word):
    identity = dict(zip(p.IDENTITY, SoC(CONFIG, baud=baud).identity(), strict=True))
    assert identity["baud_100"] == word
    assert identity == {**CONFIG.identity(), "baud_100": word}


@pytest.mark.slow
def test_the_qk_model_trains_a_sample_on_the_chip():
    """QKNet on four cores and a Q-K unit: embedding → [Wq; Wk] → attention → projection (its
    current starting from the embedding's, the membrane shortcut) → head over all tokens.
    The host sends the input spikes and the output errors only; the output spikes, every
    layer's gradient and every updated weight are the golden model's bits."""
    from spikeforge.golden.network import QKNet
    from spikeforge.protocol import QkReg
    from spikeforge.regmap import Shortcut

    a, lr = FP16(), 0.125
    T, R, Fe, D, C = 2, 2, 4, 4, 3
    net = QKNet(tokens=R, features=Fe, dim=D, classes=C, arith=a, seed=20, gain=3.0,
                lif=LIFParams(v_th=0.5))
    gen = torch.Generator().manual_seed(20)
    x = (torch.rand(T, 1, R, Fe, generator=gen) < 0.6).half()
    out, c = net.forward(x)
    g_out = fp16.to_fp16(torch.randn(T, 1, C, generator=gen) * 0.5)
    grads = net.backward(c, g_out)
    for name in ("s0", "q", "k", "att", "s1", "out"):
        assert c[name].any(), name
    assert all(bool((dw != 0).any()) for dw in grads.values())
    w = net.weights
    layers = [  # core: weights, gradient, registers
        (w["embed"], grads["embed"], {Reg.TIMESTEPS: T * R, Reg.TOKENS: R,
                                      Reg.SHORTCUT: Shortcut.SOURCE, Reg.BP_INPUT_ERROR: 0}),
        (torch.cat([w["q"], w["k"]]), torch.cat([grads["q"], grads["k"]]),
         {Reg.TIMESTEPS: T * R, Reg.TOKENS: R}),
        (w["proj"], grads["proj"], {Reg.TIMESTEPS: T * R, Reg.TOKENS: R,
                                    Reg.SHORTCUT: Shortcut.TARGET}),
        (w["head"], grads["head"], {Reg.TIMESTEPS: T, Reg.IN_TOKENS: R, Reg.IN_STRIDE: D}),
    ]
    config = AcceleratorConfig(cores=4, neurons=2 * D, fan_in=R * D, lanes=2,
                               timesteps=T * R, qk_units=1)
    lif = net.lif.constants(a)
    att = net.attention_lif.constants(a)

    async def body(board):
        async def matrix(core, region, rows, cols):
            return [await board.read(core, address(region, i << 3), cols) for i in range(rows)]

        for core, (weights, _, extra) in enumerate(layers):
            n, f = weights.shape
            regs = {Reg.NEURONS: n, Reg.INPUTS: f, Reg.BP_INPUT_ERROR: 1,
                    Reg.V_TH: int(fp16.bits(lif["v_th"])),
                    Reg.V_RESET: int(fp16.bits(lif["v_reset"])),
                    Reg.INV_TAU: int(fp16.bits(lif["inv_tau"])),
                    Reg.DECAY: int(fp16.bits(lif["decay"])),
                    Reg.LR: int(fp16.bits(fp16.to_fp16(torch.tensor(lr)))), **extra}
            for reg, value in regs.items():
                await board.set_reg(core, reg, value)
            for i, row in enumerate(fp16.bits(weights).tolist()):
                await board.write(core, address(Region.WEIGHT, i << 3), row)
        unit = [0, R, D, T] + [int(fp16.bits(att[k]))
                               for k in ("v_th", "v_reset", "inv_tau", "decay")]
        await board.set_qk_unit(0, unit)
        assert await board.qk_unit(0) == unit
        # the unit's registers refuse what it cannot do, and change nothing
        for reg, value in ((QkReg.KIND, 2), (QkReg.TOKENS, T * R + 1), (QkReg.CHANNELS, 3),
                           (QkReg.TIMESTEPS, 0)):
            await refused(Status.BAD_ADDRESS, board.write(p.SOC, SocReg.QK + reg, [value]))
        await refused(Status.BAD_ADDRESS, board.write(p.SOC, SocReg.QK + len(QkReg), [0]))
        assert await board.qk_unit(0) == unit
        await board.write(p.SOC, SocReg.LINK, [p.Link.FP_TO_NEXT,
                                              p.Link.FP_TO_NEXT | p.Link.BP_TO_PREV,
                                              p.Link.FP_TO_NEXT | p.Link.BP_TO_PREV,
                                              p.Link.BP_TO_PREV])
        async def cycles(which):
            low, high = await board.read(p.SOC, which, 2)
            return low | high << 16

        assert await cycles(SocReg.QK_CYCLES) == 0          # nothing for the unit yet
        start = await cycles(SocReg.ACTIVE_CYCLES)
        await board.core_command(p.BROADCAST, Command.BEGIN)
        await board.spikes_in(0, _events(x[:, 0].flatten(0, 1)))
        words = await _collect(board.spikes_out, 3, lambda w: sum(v >> 15 for v in w) == T)
        assert _decode_events(words, T) == [
            [int(i) for i in torch.nonzero(out[t, 0]).flatten()] for t in range(T)]
        await board.errors_in(3, 2, _beats(g_out[:, 0], 2))
        await _wait(board, 0, 4)
        # The unit worked at least its ideal, a cycle a row of lanes forward and backward, and
        # only while some core did.
        worked = await cycles(SocReg.QK_CYCLES)
        assert 2 * T * R * D // config.lanes <= worked < await cycles(SocReg.ACTIVE_CYCLES) - start
        for core, (weights, dw, _) in enumerate(layers):
            n, f = weights.shape
            assert await matrix(core, Region.GRAD, n, f) == fp16.bits(dw).tolist(), core
            assert await board.reg(core, Reg.ERRORS) == 0
        await board.core_command(p.BROADCAST, Command.UPDATE)
        for core, (weights, dw, _) in enumerate(layers):
            while await board.reg(core, Reg.STATUS) & 1:
                pass
            n, f = weights.shape
            assert await matrix(core, Region.WEIGHT, n, f) == \
                fp16.bits(sgd_update(weights, dw, lr, a)).tolist()

    run(body, config, timeout=4000)
