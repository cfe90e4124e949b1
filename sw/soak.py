# SPDX-License-Identifier: Apache-2.0
"""Long runs in lockstep: whole epochs of several configurations on virtual boards, each batch
compared with the FP16 golden model bit for bit (:class:`~spikeforge.lockstep.Lockstep`).

A difference that shows only after many batches (a rounding corner, a rare spike) is found
here rather than by a user. ``spikeforge bench --soak`` runs :func:`soak_cases` at full size;
the suite runs the small set for one epoch (``sim/test_soak.py``).

>>> [case.name for case in soak_cases(small=True)]
['lanes1-hard-sigmoid', 'lanes8-soft-rect', 'split-piecewise_quadratic', 'qk-token-atan']
"""

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from spikeforge.gen.config import AcceleratorConfig

from .train import TrainConfig

__all__ = ["SoakCase", "run_soak", "soak_cases"]


@dataclass(frozen=True)
class SoakCase:
    name: str
    train: TrainConfig
    accelerator: AcceleratorConfig


def soak_cases(epochs: int = 1, small: bool = False) -> list[SoakCase]:
    """Lanes 1 and 8, both resets, the compact-support surrogates, a hidden layer split over
    three cores and the qk model; ``small`` networks (T = 4, 32 hidden neurons) for the suite."""
    T = 4 if small else 8
    hidden = 32 if small else 128

    def mlp(name, lanes=8, reset="hard", surrogate="sigmoid", neurons=None, cores=2, width=None):
        train = TrainConfig(epochs=epochs, timesteps=T, hidden=width or hidden, reset=reset,
                            surrogate=surrogate)
        fan_in = max(64, width or hidden)
        accelerator = AcceleratorConfig(cores=cores, neurons=neurons or max(width or hidden, 16),
                                        fan_in=fan_in, lanes=lanes, timesteps=T, reset=reset,
                                        surrogate=surrogate)
        return SoakCase(name, train, accelerator)

    split = 16 if small else 48
    tokens = 8
    qk = SoakCase("qk-token-atan", TrainConfig(model="qk", epochs=epochs, timesteps=T // 2 if
                                               small else T, surrogate="atan"),
                  AcceleratorConfig(cores=4, neurons=64, fan_in=256, lanes=8,
                                    timesteps=tokens * (T // 2 if small else T), qk_units=1,
                                    qk_tokens=tokens, surrogate="atan"))
    return [
        mlp("lanes1-hard-sigmoid", lanes=1),
        mlp("lanes8-soft-rect", reset="soft", surrogate="rect"),
        mlp("split-piecewise_quadratic", surrogate="piecewise_quadratic", neurons=split,
            cores=4, width=split * 2 + split // 2),
        qk,
    ]


def run_soak(cases=None, *, epochs: int = 1, small: bool = False, folder=None,
             json_path=None, progress: bool = True) -> dict:
    """Train every case on a virtual board of its accelerator in lockstep with the golden model;
    return each case's result, or its first difference. Replay cases go to ``folder``."""
    from rich.console import Console

    from spikeforge.gen.vboard import VirtualBoard

    from .device import DeviceBackend
    from .driver import Board
    from .lockstep import GoldenMismatch
    from .train import train

    console = Console(stderr=True)
    folder = Path(folder or "runs/soak")
    results = {}
    for case in cases or soak_cases(epochs, small):
        start = time.monotonic()
        with VirtualBoard(case.accelerator) as vboard, Board.connect(vboard.url) as board:
            backend = DeviceBackend(board, case.train.build(), case.train.timesteps)
            try:
                run = train(case.train, backend, progress=progress,
                            check_golden=folder / case.name)
                result = {"matched": True, "test_accuracy": run["test_accuracy"],
                          "batches": run["golden_checked_batches"],
                          "history": run["history"]}
            except GoldenMismatch as mismatch:
                result = {"matched": False, "difference": str(mismatch.difference),
                          "case": str(mismatch.case)}
        result.update(seconds=time.monotonic() - start, config=asdict(case.train),
                      accelerator=asdict(case.accelerator))
        results[case.name] = result
        verdict = (f"{result['batches']} batches bit-exact, test accuracy "
                   f"{result['test_accuracy']:.3f}" if result["matched"] else
                   f"DIFFERS: {result['difference']}")
        console.print(f"{case.name}: {verdict} ({result['seconds']:.0f} s)")
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    return results
