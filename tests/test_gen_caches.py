# SPDX-License-Identifier: Apache-2.0
import importlib.util
from pathlib import Path

from spikeforge.gen import vboard, verilator
from spikeforge.gen.config import AcceleratorConfig

CONFIG = AcceleratorConfig(cores=2, neurons=8, fan_in=8, lanes=4, timesteps=2)


class CountingRunner:
    def __init__(self):
        self.builds = 0

    def build(self, *, sources, hdl_toplevel, build_dir, build_args, log_file):
        self.builds += 1
        (Path(build_dir) / hdl_toplevel).write_text(f"{self.builds}")


def test_a_testbench_folder_is_verilated_again_only_for_other_verilog_or_arguments(tmp_path):
    runner = CountingRunner()
    source = tmp_path / "top.v"
    for text, args, builds in [("module a;", [], 1), ("module a;", [], 1), ("module b;", [], 2),
                               ("module b;", ["-O3"], 3), ("module b;", ["-O3"], 3),
                               ("module a;", [], 4)]:
        source.write_text(text)
        verilator._build(runner, source, name="top", build_args=args)
        assert runner.builds == builds, (text, args)
    (tmp_path / "top").unlink()
    verilator._build(runner, source, name="top", build_args=[])
    assert runner.builds == 5


def test_the_virtual_board_s_key_covers_every_module_the_soc_imports():
    sources = vboard._imported_sources((vboard.__name__, Path(vboard.__file__)))
    root = vboard.ROOT
    for name in ("hw/soc.py", "hw/core_engines.py", "hw/__init__.py", "sw/protocol.py",
                 "sw/regmap.py", "sw/errors.py", "sw/golden/fp16.py", "gen/config.py",
                 "gen/verilator.py", "gen/vboard.py"):
        assert root / name in sources, name
    assert root / "sw/cli.py" not in sources and root / "sw/device.py" not in sources


def load_factory(path: Path, depth: int, comment: str = ""):
    path.write_text(f"from spikeforge.gen.vboard import Loopback\n{comment}\n"
                    f"def fifo(config):\n    return Loopback(config, depth={depth})\n")
    spec = importlib.util.spec_from_file_location(f"fifo_{depth}_{len(comment)}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.fifo


def test_the_virtual_board_is_built_once_per_verilog_and_found_again_by_its_sources(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEFORGE_CACHE", str(tmp_path / "cache"))
    exports, builds = [], []

    def export(component, path):
        exports.append(path)
        return verilator.export_verilog(component, path)

    def build(source, folder):
        builds.append(source.read_text())
        (folder / "vboard").write_text(str(len(builds)))

    monkeypatch.setattr(vboard, "export_verilog", export)
    monkeypatch.setattr(vboard, "_build", build)
    factory = load_factory(tmp_path / "fifo.py", 8)
    first = vboard.build_virtual_board(CONFIG, factory)
    assert first.read_text() == "1" and len(exports) == 1
    assert vboard.build_virtual_board(CONFIG, factory) == first
    assert len(exports) == 1, "found by its sources, without generating the Verilog"
    assert vboard.build_virtual_board(CONFIG.replace(cores=1), factory) == first
    assert len(exports) == 2 and len(builds) == 1, "the same Verilog is not built again"

    factory = load_factory(tmp_path / "fifo.py", 8, comment="# a changed source")
    assert vboard.build_virtual_board(CONFIG, factory) == first
    assert len(exports) == 3 and len(builds) == 1
    factory = load_factory(tmp_path / "fifo.py", 16)
    other = vboard.build_virtual_board(CONFIG, factory)
    assert other != first and other.read_text() == "2" and len(exports) == 4
    assert builds[0] != builds[1]
