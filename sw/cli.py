# SPDX-License-Identifier: Apache-2.0
"""The ``spikeforge`` command line."""

import argparse
import contextlib
import json
import sys
from pathlib import Path

from .errors import ConfigError, SpikeforgeError

__all__ = ["main"]

BACKENDS_HELP = ("golden (the PyTorch golden model on this host), sim (a virtual board started "
                 "for the run), tcp://HOST:PORT (a virtual board already serving) or "
                 "serial:///dev/ttyUSB0 (an FPGA board)")


def _first_test_sample(cfg):
    import torch

    from .data import encode, load_dataset
    from .train import model_input

    _, test = load_dataset(cfg.dataset)
    return encode(model_input(test.x[:1], cfg.model, cfg.dataset), cfg.timesteps, cfg.encoder,
                  torch.Generator().manual_seed(1))[:, 0]


def _train(args) -> int:
    import dataclasses

    from rich.console import Console

    from .device import open_backend
    from .driver import LinkError
    from .train import TrainConfig, train

    cfg = TrainConfig(model=args.model, dataset=args.dataset, epochs=args.epochs,
                      timesteps=args.timesteps, batch_size=args.batch_size, lr=args.lr,
                      encoder=args.encoder, precision=args.precision, surrogate=args.surrogate,
                      reset=args.reset, attention=args.attention, seed=args.seed,
                      hidden=args.hidden)
    if args.resume and not args.checkpoint:
        args.checkpoint = args.resume
    cases = None
    if args.check_golden:
        if args.backend == "golden":
            raise ConfigError("--check-golden trains the FP16 golden model beside a device and "
                              "compares them; give --backend sim or a board URL")
        cases = Path(args.json).parent if args.json else Path(".")
    with contextlib.ExitStack() as stack:
        backend = open_backend(args.backend, cfg, stack, args.config)
        resume = args.resume if args.resume and Path(args.resume).is_file() else None
        try:
            result = train(cfg, backend, json_path=None, checkpoint=args.checkpoint,
                           progress=not args.quiet, resume=resume, check_golden=cases)
        except LinkError as error:
            saved = args.checkpoint if args.checkpoint and Path(args.checkpoint).is_file() \
                else None
            hint = (f"the last checkpoint is {saved}: start the board again and rerun with "
                    f"--resume {saved}") if saved else "train with --checkpoint FILE to keep " \
                "what each epoch trained"
            raise LinkError(f"{error}\nTraining stopped; {hint}") from None
        if hasattr(backend, "raster"):
            result["raster"] = backend.raster(_first_test_sample(cfg))
    if backend is not None:
        golden = train(dataclasses.replace(cfg, precision="float"), None, progress=False)
        result["golden_test_accuracy"] = golden["test_accuracy"]
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
    Console(stderr=True, soft_wrap=True).print(
        f"[bold]{result['model']}[/] on {result['dataset']} ({result['backend']}, "
        f"{result['precision']}): test accuracy {result['test_accuracy']:.4f}, "
        f"train accuracy {result['train_accuracy']:.4f}, {result['wall_seconds']:.1f} s")
    if not args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "history"}, indent=2))
    return 0


def _replay(args) -> int:
    from .device import open_backend
    from .golden.arith import arith_for
    from .lockstep import load_case, replay
    from .train import GoldenBackend, TrainConfig

    case = load_case(args.case)
    cfg = TrainConfig(**case["config"])
    with contextlib.ExitStack() as stack:
        if args.backend == "golden":
            backend = GoldenBackend(cfg.build().to(arith_for("fp16")))
        else:
            backend = open_backend(args.backend, cfg, stack, args.config,
                                   accelerator=case.get("accelerator"))
        difference = replay(case, backend)
    if difference is None:
        print(f"{args.case}: every step of the batch is the FP16 golden model's")
        return 0
    print(f"{args.case}: {difference}")
    return 1


def _compare(args) -> int:
    from .checkpoint import load_checkpoint
    from .lockstep import first_difference

    a, b = load_checkpoint(args.first), load_checkpoint(args.second)
    problems = []
    if set(a["weights"]) != set(b["weights"]):
        problems.append(f"the weights differ in names: {sorted(a['weights'])} against "
                        f"{sorted(b['weights'])}")
    for name in sorted(set(a["weights"]) & set(b["weights"])):
        d = first_difference("weight", name, a["weights"][name].half(),
                             b["weights"][name].half())
        if d is not None:
            problems.append(f"{name}{list(d.index)} is 0x{d.device_bits:04x} in {args.first}, "
                            f"0x{d.golden_bits:04x} in {args.second}")
    for ha, hb in zip(a["history"], b["history"], strict=False):
        if ha != hb:
            problems.append(f"epoch {ha['epoch']}: {ha} against {hb}")
            break
    if len(a["history"]) != len(b["history"]):
        problems.append(f"{len(a['history'])} epochs against {len(b['history'])}")
    if problems:
        print("\n".join(problems))
        return 1
    count = sum(w.numel() for w in a["weights"].values())
    print(f"the same {count} weights bit for bit and the same history of "
          f"{len(a['history'])} epochs (loss, train and test accuracy)")
    return 0


def _infer(args) -> int:
    from .checkpoint import load_checkpoint
    from .data import load_dataset
    from .device import open_backend
    from .golden.arith import arith_for
    from .train import GoldenBackend, TrainConfig, evaluate

    state = load_checkpoint(args.checkpoint)
    cfg = TrainConfig(**state["config"])
    if args.precision:
        cfg.precision = args.precision
    _, test = load_dataset(cfg.dataset)
    with contextlib.ExitStack() as stack:
        backend = open_backend(args.backend, cfg, stack, args.config)
        if backend is None:
            network = cfg.build()
            network.load_state_dict(state["weights"])
            backend = GoldenBackend(network.to(arith_for(cfg.precision)))
        else:
            backend.load_state_dict(state["weights"])
        acc = evaluate(backend, test, cfg)
    print(json.dumps({"model": cfg.model, "dataset": cfg.dataset, "backend": args.backend,
                      "precision": getattr(backend, "precision", cfg.precision),
                      "test_accuracy": acc, "samples": len(test)}, indent=2))
    return 0


def _gen(args) -> int:
    from spikeforge.gen.config import AcceleratorConfig
    from spikeforge.gen.generate import generate

    config = AcceleratorConfig.load(args.config) if args.config else AcceleratorConfig()
    manifest = generate(config, args.out)
    print(json.dumps(manifest, indent=2))
    return 0


def _board(args) -> int:
    from spikeforge.gen.vboard import serve

    from .device import accelerator_config

    config = accelerator_config(args.config)
    if args.cores:
        config = config.replace(cores=args.cores)
    return serve(config, args.port)


def _fl(args) -> int:
    from .fl import run_fl
    from .train import TrainConfig

    cfg = TrainConfig(timesteps=args.timesteps, batch_size=args.batch_size, lr=args.lr,
                      hidden=args.hidden, seed=args.seed)
    boards = [u for u in args.boards.split(",") if u] if args.boards else None
    result = run_fl(workers=args.workers, rounds=args.rounds, local_epochs=args.local_epochs,
                    backend=args.backend, boards=boards, alpha=args.alpha, cfg=cfg,
                    json_path=args.json, progress=not args.quiet)
    print(json.dumps({k: v for k, v in result.items() if k not in ("shards", "config")},
                     indent=2))
    return 0


def _report(args) -> int:
    from .report import report

    report(args.run_dir)
    return 0


def _estimate(args, write) -> int:
    from spikeforge.boards.build import does_not_fit, estimate
    from spikeforge.boards.netlist import table

    report = estimate(args.board, cores=args.cores, lanes=args.lanes, neurons=args.neurons,
                      timesteps=args.timesteps, mhz=args.mhz, baud=args.baud,
                      use_cache=not args.no_cache)
    write(report)
    print(table(report["blocks"], report["available"]))
    print(f"{report['board']} ({report['device']}): {report['cores']} core(s), estimated from "
          f"synthesis ({report['seconds']} s): {report['luts']} LUTs, {report['ffs']} FFs, "
          f"{report['dsps']} DSPs, {report['brams']} BRAMs")
    if not report["fits"]:
        print(f"does not fit the {report['device']}: {does_not_fit(report)}")
        return 1
    print(f"fits the {report['device']}")
    return 0


def _build(args) -> int:
    from spikeforge.boards.build import (
        BuildError,
        build,
        check_baseline,
        find_baseline,
        record_baseline,
    )

    def write(report):
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")

    if args.estimate:
        if args.out or args.check or args.record_baseline:
            raise ConfigError("--estimate stops before place and route: it makes no bitstream "
                              "and no baseline; leave out --out, --check and --record-baseline")
        return _estimate(args, write)
    try:
        report = build(args.board, cores=args.cores, lanes=args.lanes, neurons=args.neurons,
                       timesteps=args.timesteps, mhz=args.mhz, baud=args.baud, seed=args.seed,
                       out=args.out, use_cache=not args.no_cache)
    except BuildError as error:
        if getattr(error, "report", None):
            write(error.report)
        raise
    print(f"{report['board']} ({report['device']}): {report['cores']} core(s), "
          f"{report['luts']} LUTs, {report['ffs']} FFs, {report['dsps']} DSPs, "
          f"{report['brams']} BRAMs, Fmax {report['fmax_mhz']} MHz "
          f"(target {report['target_mhz']:g} MHz)")
    print(f"host link: {report['baud']:,} baud ({report['uart_divisor']} cycles a bit, "
          f"{report['baud_error']:+.2%})")
    print(f"bitstream: {report['bitstream']}")
    if args.record_baseline:
        print(f"baseline recorded in {record_baseline(report)}")
    if args.check:
        baseline = find_baseline(report)
        if baseline is None:
            report["baseline"] = "none"
            write(report)
            raise BuildError(f"no baseline for {report['board']} with this configuration and "
                             f"these tool versions; --record-baseline stores one")
        problems = check_baseline(report, baseline)
        report["baseline"] = "fail" if problems else "pass"
        write(report)
        if problems:
            raise BuildError("the build differs from its baseline: " + "; ".join(problems))
        print("within the baseline's tolerances")
    write(report)
    return 0


def _bench(args) -> int:
    if args.soak:
        from .soak import run_soak

        results = run_soak(epochs=args.epochs, small=args.small, json_path=args.json,
                           folder=Path(args.json).parent / "soak" if args.json else None)
        return 0 if all(r["matched"] for r in results.values()) else 1
    if args.uart_link:
        from rich.console import Console

        from .bench import bench_uart_link, print_uart_link

        result = bench_uart_link(mhz=args.mhz, bauds=args.baud or (115_200, 3_000_000),
                                 full=args.full)
        print_uart_link(result, Console())
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(result, indent=2))
        return 0
    from .bench import run_bench

    run_bench(args.json)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data import DATASETS, ENCODERS
    from .golden.arith import PRECISIONS
    from .golden.lif import RESETS
    from .golden.network import MODELS
    from .golden.qk import ATTENTIONS
    from .golden.surrogate import SURROGATES

    parser = argparse.ArgumentParser(
        prog="spikeforge",
        description="Train spiking neural networks on a multi-core neuromorphic accelerator.")
    sub = parser.add_subparsers(dest="command", required=True)

    train = sub.add_parser("train", help="train a network")
    train.add_argument("--backend", default="golden", help=f"where to train: {BACKENDS_HELP}")
    train.add_argument("--model", default="mlp", choices=MODELS)
    train.add_argument("--dataset", default="digits", choices=DATASETS)
    train.add_argument("--epochs", type=int, default=10)
    train.add_argument("--timesteps", "-T", type=int, default=8)
    train.add_argument("--batch-size", type=int, default=16)
    train.add_argument("--lr", type=float, default=1.0)
    train.add_argument("--hidden", type=int, default=128, help="hidden neurons of the mlp")
    train.add_argument("--encoder", default="rate", choices=ENCODERS)
    train.add_argument("--precision", default="float", choices=PRECISIONS,
                       help="float: ideal arithmetic; fp16: the hardware's exact FP16")
    train.add_argument("--surrogate", default="sigmoid", choices=tuple(SURROGATES))
    train.add_argument("--reset", default="hard", choices=RESETS)
    train.add_argument("--attention", default="token", choices=ATTENTIONS,
                       help="attention kind of the qk model")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--json", metavar="FILE", help="write the results as JSON")
    train.add_argument("--checkpoint", metavar="FILE", help="save the weights after every epoch")
    train.add_argument("--resume", metavar="FILE",
                       help="continue from this checkpoint if it exists (and keep saving there)")
    train.add_argument("--config", metavar="FILE",
                       help="accelerator configuration (JSON) of the virtual board of --backend "
                            "sim")
    train.add_argument("--check-golden", action="store_true",
                       help="train the FP16 golden model beside the device and compare every "
                            "batch bit for bit; stop at the first difference and save the "
                            "batch as a replay case (beside --json)")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(func=_train)

    rep = sub.add_parser("replay", help="train a replay case saved by --check-golden again, "
                                        "step by step beside the golden model")
    rep.add_argument("case", metavar="CASE", help="the .pt file --check-golden saved")
    rep.add_argument("--backend", default="sim", help=f"where to run: {BACKENDS_HELP}")
    rep.add_argument("--config", metavar="FILE",
                     help="accelerator configuration (JSON) of the virtual board of --backend "
                          "sim; the case's own by default")
    rep.set_defaults(func=_replay)

    cmp = sub.add_parser("compare", help="compare two checkpoints: their weights bit for bit "
                                         "and their histories")
    cmp.add_argument("first", metavar="CHECKPOINT")
    cmp.add_argument("second", metavar="CHECKPOINT")
    cmp.set_defaults(func=_compare)

    infer = sub.add_parser("infer", help="classify the test set with a trained checkpoint")
    infer.add_argument("--backend", default="golden", help=f"where to run: {BACKENDS_HELP}")
    infer.add_argument("--checkpoint", metavar="FILE", required=True)
    infer.add_argument("--precision", choices=PRECISIONS,
                       help="override the checkpoint's precision")
    infer.add_argument("--config", metavar="FILE",
                       help="accelerator configuration (JSON) of the virtual board of --backend "
                            "sim")
    infer.set_defaults(func=_infer)

    gen = sub.add_parser("gen", help="write the Verilog of a configured accelerator")
    gen.add_argument("--config", metavar="FILE", help="accelerator configuration (JSON); "
                     "the default is 2 cores of 128 neurons × 128 inputs, 8 lanes, T ≤ 8")
    gen.add_argument("--out", metavar="DIR", required=True, help="output folder")
    gen.set_defaults(func=_gen)

    board = sub.add_parser("board", help="run a virtual board")
    board_sub = board.add_subparsers(dest="board_command", required=True)
    serve = board_sub.add_parser("serve", help="serve the Verilated SoC on a TCP port of "
                                               "127.0.0.1 until interrupted")
    serve.add_argument("--port", type=int, default=0, help="TCP port (0: a free one)")
    serve.add_argument("--config", metavar="FILE", help="accelerator configuration (JSON)")
    serve.add_argument("--cores", type=int, help="override the configuration's core count")
    serve.set_defaults(func=_board)

    fl = sub.add_parser("fl", help="federated learning over Flower, one worker a board")
    fl.add_argument("--workers", type=int, default=5)
    fl.add_argument("--rounds", type=int, default=10)
    fl.add_argument("--local-epochs", type=int, default=3)
    fl.add_argument("--backend", default="golden",
                    help="golden (the golden model in each worker) or sim (a virtual board each)")
    fl.add_argument("--boards", metavar="URL,URL,...", help="one board URL a worker "
                    "(tcp://HOST:PORT or serial:///dev/ttyUSBn) instead of --backend")
    fl.add_argument("--alpha", type=float, default=0.5,
                    help="Dirichlet concentration of the non-IID split (smaller: more skewed)")
    fl.add_argument("--timesteps", "-T", type=int, default=8)
    fl.add_argument("--batch-size", type=int, default=16)
    fl.add_argument("--lr", type=float, default=1.0)
    fl.add_argument("--hidden", type=int, default=128)
    fl.add_argument("--seed", type=int, default=0)
    fl.add_argument("--json", metavar="FILE", help="write the results as JSON")
    fl.add_argument("--quiet", action="store_true", help="no per-round lines")
    fl.set_defaults(func=_fl)

    rep = sub.add_parser("report", help="tables and plots of a run from its hardware counters")
    rep.add_argument("run_dir", metavar="RUN_DIR", help="the folder of the run's train.json")
    rep.set_defaults(func=_report)

    from spikeforge.boards.targets import TARGETS

    build = sub.add_parser("build", help="build a bitstream with the yowasp toolchain and report "
                                         "resources and Fmax")
    build.add_argument("--board", required=True, choices=sorted(TARGETS))
    build.add_argument("--cores", type=int, help="override the board's core count")
    build.add_argument("--lanes", type=int, help="override the lanes per core")
    build.add_argument("--neurons", type=int, help="override the neurons (and inputs) per core")
    build.add_argument("--timesteps", "-T", type=int, help="override the largest T")
    build.add_argument("--mhz", type=float, help="core clock (the PLL's nearest); the board's "
                                                 "default otherwise")
    build.add_argument("--baud", type=int,
                       help="the host link UART's rate; the board's default otherwise "
                            "(ulx3s-85f: 3000000, its FT231X's most; orangecrab-25f: 1000000, "
                            "for a USB-serial adapter on its header)")
    build.add_argument("--seed", type=int, default=1, help="placement seed of nextpnr")
    build.add_argument("--out", metavar="DIR", help="copy the bitstream here")
    build.add_argument("--json", metavar="FILE", help="write the report as JSON")
    build.add_argument("--check", action="store_true",
                       help="compare with the stored baseline of this board and tool versions")
    build.add_argument("--record-baseline", action="store_true",
                       help="store this build as the baseline")
    build.add_argument("--estimate", action="store_true",
                       help="synthesis only: resources per block and whether they fit the "
                            "device, in minutes instead of place and route's tens of minutes")
    build.add_argument("--no-cache", action="store_true", help="build even if cached")
    build.set_defaults(func=_build)

    bench = sub.add_parser("bench", help="measure the gateware in RTL simulation")
    bench.add_argument("--json", metavar="FILE", help="write the measurements as JSON")
    bench.add_argument("--soak", action="store_true",
                       help="instead: train several configurations (lanes 1 and 8, both "
                            "resets, compact-support surrogates, a split layer, the qk model) "
                            "on virtual boards in lockstep with the FP16 golden model")
    bench.add_argument("--uart-link", action="store_true",
                       help="instead: only the host link over the UART, frames a second "
                            "modelled from the byte time against round trips simulated in "
                            "Amaranth")
    bench.add_argument("--baud", type=int, action="append",
                       help="a rate of --uart-link (again for more); 115200 and 3000000 "
                            "otherwise")
    bench.add_argument("--mhz", type=float, default=50.0, help="the clock of --uart-link")
    bench.add_argument("--full", action="store_true",
                       help="--uart-link simulates every rate at its own divisor, not only "
                            "the fastest")
    bench.add_argument("--epochs", type=int, default=1, help="epochs of each --soak run")
    bench.add_argument("--small", action="store_true",
                       help="--soak with small networks (T = 4, 32 hidden neurons)")
    bench.set_defaults(func=_bench)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except SpikeforgeError as exc:
        print(f"spikeforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spikeforge: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
