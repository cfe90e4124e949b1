# SPDX-License-Identifier: Apache-2.0
"""ECP5 resources of a netlist from ``synth_ecp5``, in total and per block of the design.

Yosys names a mapped cell after the signal it drives, and a flattened signal's name is its
instance path (``soc.core0.datapath.lif.add_ds.s1_a``), so a cell counts in the block whose
signal it drives. :func:`block_cells` groups the cells of the netlist by that path,
:func:`resources_of` turns cell counts into what nextpnr will report:

* LUTs (``TRELLIS_COMB``): a ``LUT4`` each, 2 per ``CCU2C`` carry cell, 6 per
  ``TRELLIS_DPR16X4`` distributed RAM (4 RAM LUTs and 2 for its write port), and 0.41 per
  ``PFUMX``: the LUTs nextpnr's packer adds beyond those (its count before packing is exactly
  the first three), which follow the wide-LUT muxes; fitted to five place and routes (two
  ULX3S 85F and three OrangeCrab builds: within 0.6 % of their ``TRELLIS_COMB``). ``PFUMX``
  and ``L6MUX21`` themselves take no LUT.
* FFs ``TRELLIS_FF``, DSPs ``MULT18X18D``, BRAMs ``DP16KD``: one each.

>>> resources_of({"LUT4": 1000, "CCU2C": 100, "TRELLIS_DPR16X4": 10, "PFUMX": 200,
...               "L6MUX21": 50, "TRELLIS_FF": 700, "MULT18X18D": 2, "DP16KD": 3})
{'luts': 1342, 'ffs': 700, 'dsps': 2, 'brams': 3}
>>> scopes = ["soc", "soc.core0", "soc.core0.lif", "soc.link$135", "soc.link$135.rx"]
>>> netlist = {"modules": {"top": {"cells": {
...     **{name: {"type": "$scopeinfo"} for name in scopes},
...     "beat_TRELLIS_FF_Q": {"type": "TRELLIS_FF"},
...     "soc.core0.lif.h_LUT4_Z": {"type": "LUT4"},
...     "soc.core0.lif.h_LUT4_Z_1": {"type": "LUT4"},
...     "soc.core0.psum_i__payload.data_TRELLIS_FF_Q": {"type": "TRELLIS_FF"},
...     "soc.core0.wmem_DP16KD_DOA0": {"type": "DP16KD"},
...     "soc.link$135.rx.state_TRELLIS_FF_Q": {"type": "TRELLIS_FF"}}}}}
>>> {path: dict(cells) for path, cells in block_cells(netlist).items()}
... # doctest: +NORMALIZE_WHITESPACE
{'top': {'TRELLIS_FF': 1}, 'soc.core0.lif': {'LUT4': 2},
 'soc.core0': {'TRELLIS_FF': 1, 'DP16KD': 1}, 'soc.link.rx': {'TRELLIS_FF': 1}}
>>> blocks(block_cells(netlist), share=0)
... # doctest: +NORMALIZE_WHITESPACE
{'top (own logic)': {'luts': 0, 'ffs': 1, 'dsps': 0, 'brams': 0},
 'soc.core0 (own logic)': {'luts': 0, 'ffs': 1, 'dsps': 0, 'brams': 1},
 'soc.core0.lif': {'luts': 2, 'ffs': 0, 'dsps': 0, 'brams': 0},
 'soc.link.rx': {'luts': 0, 'ffs': 1, 'dsps': 0, 'brams': 0}}
"""

import re
from collections import Counter, defaultdict
from collections.abc import Mapping

__all__ = ["KEYS", "block_cells", "blocks", "over", "resources_of", "table", "total"]

KEYS = ("luts", "ffs", "dsps", "brams")
CELL_OF = {"luts": "TRELLIS_COMB", "ffs": "TRELLIS_FF", "dsps": "MULT18X18D", "brams": "DP16KD"}
LUT_WEIGHTS = {"LUT4": 1, "CCU2C": 2, "TRELLIS_DPR16X4": 6, "PFUMX": 0.41}
TOP = "top"
OWN = " (own logic)"
_UNNAMED = re.compile(r"\$\d+$")


def resources_of(cells: Mapping[str, int]) -> dict:
    """``luts``, ``ffs``, ``dsps``, ``brams`` nextpnr will count for these Yosys cells."""
    luts = sum(weight * cells.get(cell, 0) for cell, weight in LUT_WEIGHTS.items())
    return {"luts": round(luts), "ffs": cells.get("TRELLIS_FF", 0),
            "dsps": cells.get("MULT18X18D", 0), "brams": cells.get("DP16KD", 0)}


def _path(name: str) -> list[str]:
    return [_UNNAMED.sub("", part) for part in name.lstrip("\\").split(".")]


def block_cells(netlist: dict, top: str = "top") -> dict[str, Counter]:
    """The cell types of the flattened module ``top`` of a Yosys JSON netlist, by block path
    (``top`` for the module's own cells; an unnamed submodule's ``$N`` dropped).

    The blocks are the instances Yosys's ``flatten`` left a ``$scopeinfo`` cell for; a cell
    belongs to the deepest one its name starts with. (Without scope cells, every dotted prefix
    of a name is taken for a block.)
    """
    cells = netlist["modules"][top]["cells"]
    scopes = {".".join(_path(name)) for name, cell in cells.items()
              if cell["type"] == "$scopeinfo"}
    out = defaultdict(Counter)
    for name, cell in cells.items():
        if cell["type"].startswith("$"):
            continue
        parts = _path(name)[:-1]
        while scopes and parts and ".".join(parts) not in scopes:
            parts.pop()
        out[".".join(parts) or TOP][cell["type"]] += 1
    return dict(out)


def _subtrees(cells: Mapping[str, Counter]) -> dict[str, Counter]:
    subtree = defaultdict(Counter)
    for path, counts in cells.items():
        parts = [] if path == TOP else path.split(".")
        for k in range(len(parts) + 1):
            subtree[".".join(parts[:k]) or TOP] += counts
    return subtree


def blocks(cells: Mapping[str, Counter], *, share: float = 0.05, depth: int = 5) -> dict:
    """The resources of the design in blocks that add up to the whole.

    A block with sub-blocks is split into them while it holds at least ``share`` of the LUTs
    and its path has fewer than ``depth`` parts; its own logic (outside its sub-blocks) is
    then the block ``"<path> (own logic)"``. Each block is counted with everything inside it;
    blocks of no resources are left out.
    """
    subtree = _subtrees(cells)
    children = defaultdict(list)
    for path in subtree:
        if path != TOP:
            children[path.rpartition(".")[0] or TOP].append(path)
    whole = resources_of(subtree[TOP])["luts"]
    out = {}

    def visit(path: str, level: int) -> None:
        split = path == TOP or (level < depth and children[path] and
                                resources_of(subtree[path])["luts"] >= share * whole)
        res = resources_of(subtree[path] if not split else cells.get(path, {}))
        if any(res.values()):
            out[path if not split else path + OWN] = res
        if not split:
            return
        for child in sorted(children[path]):
            visit(child, level + 1)

    visit(TOP, 0)
    return out


def total(parts: Mapping[str, Mapping[str, int]]) -> dict:
    """The sum of the blocks' resources."""
    return {key: sum(part[key] for part in parts.values()) for key in KEYS}


def over(used: Mapping[str, int], available: Mapping[str, int]) -> list:
    """``(cell, used, available)`` of every resource of ``used`` beyond the device's.

    >>> over({"luts": 30000, "ffs": 9000, "dsps": 5, "brams": 60},
    ...      {"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "MULT18X18D": 28, "DP16KD": 56})
    [('TRELLIS_COMB', 30000, 24288), ('DP16KD', 60, 56)]
    """
    return [(CELL_OF[key], used[key], available[CELL_OF[key]]) for key in KEYS
            if used[key] > available[CELL_OF[key]]]


def _order(path: str) -> list[str]:
    block = path.removesuffix(OWN)
    return [] if block == TOP else block.split(".")


def table(parts: Mapping[str, Mapping[str, int]], available: Mapping[str, int] | None = None
          ) -> str:
    """The blocks as an indented tree (each line with everything inside it), the total and the
    device's cells.

    >>> print(table({"top (own logic)": {"luts": 10, "ffs": 20, "dsps": 0, "brams": 0},
    ...              "soc.core0 (own logic)": {"luts": 5, "ffs": 0, "dsps": 0, "brams": 0},
    ...              "soc.core0.lif": {"luts": 500, "ffs": 200, "dsps": 1, "brams": 0},
    ...              "soc.core0.wmem": {"luts": 40, "ffs": 10, "dsps": 0, "brams": 4}},
    ...             {"TRELLIS_COMB": 24288, "TRELLIS_FF": 24288, "MULT18X18D": 28,
    ...              "DP16KD": 56}))
    block               LUTs      FFs   DSPs  BRAMs
    top (own logic)       10       20      0      0
    soc                  545      210      1      4
      core0              545      210      1      4
        (own logic)        5        0      0      0
        lif              500      200      1      0
        wmem              40       10      0      4
    total                555      230      1      4
    available         24,288   24,288     28     56
    used                  2%       1%     4%     7%
    """
    rows, seen = [], set()
    for path, res in sorted(parts.items(), key=lambda item: _order(item[0])):
        block = path.removesuffix(OWN)
        if block == TOP:
            rows.append((path, res))
            continue
        names = block.split(".")
        heads = len(names) if path.endswith(OWN) else len(names) - 1
        for k in range(1, heads + 1):
            prefix = ".".join(names[:k])
            if prefix not in seen:
                seen.add(prefix)
                inside = {p: r for p, r in parts.items()
                          if p.removesuffix(OWN) == prefix or p.startswith(prefix + ".")}
                rows.append(("  " * (k - 1) + names[k - 1], total(inside)))
        name = OWN.strip() if path.endswith(OWN) else names[-1]
        rows.append(("  " * heads + name, res))
    whole = total(parts)
    rows.append(("total", whole))
    if available:
        rows.append(("available", {key: available[CELL_OF[key]] for key in KEYS}))
    width = max(len(name) for name, _ in rows) + 2
    lines = [f"{'block':<{width}}{'LUTs':>7}{'FFs':>9}{'DSPs':>7}{'BRAMs':>7}"]
    lines += [f"{name:<{width}}{r['luts']:>7,}{r['ffs']:>9,}{r['dsps']:>7,}{r['brams']:>7,}"
              for name, r in rows]
    if available:
        use = [whole[key] / available[CELL_OF[key]] for key in KEYS]
        lines.append(f"{'used':<{width}}{use[0]:>7.0%}{use[1]:>9.0%}{use[2]:>7.0%}{use[3]:>7.0%}")
    return "\n".join(lines)
