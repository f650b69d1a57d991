"""`mnist-mlp`: the command line. Parses arguments and calls the modules; holds no training logic.

Errors of the user's making print one `error: ...` line on stderr and exit 2. TensorFlow is imported
only by the commands that need it, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_mlp import __version__, import_tensorflow_quietly
from mnist_mlp.errors import GpuMismatch, UserError
from mnist_mlp.versions import runtime_versions

EXIT_USER_ERROR, EXIT_DIVERGED = 2, 1
EXIT_GPU_MISMATCH = 1  # the GPU failed its self-check: the machine's fault, not the input's
EXIT_PROBLEMS_FOUND = 1  # doctor found something wrong
EXIT_SOME_FILES_FAILED = 1  # predict: some images could not be classified (the others were)
EXIT_BENCH_MISMATCH = 1  # bench: some implementation or device computed a different loss


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_mlp.config import load_config
    from mnist_mlp.data import load_mnist
    from mnist_mlp.plots import PlotWorker
    from mnist_mlp.rundir import RunDir

    run = None
    if args.resume:
        if args.config or args.set or args.out:
            raise UserError("--resume continues a run with its own config.yaml; drop --config, --set and --out")
        run = RunDir.open(args.resume)
        config = run.read_config()
    else:
        config = load_config(args.config, args.set)
    mnist = load_mnist(config.data)  # bad data fails before TensorFlow starts and before any folder is made
    plot_worker = PlotWorker()  # imports matplotlib while TensorFlow starts; draws while the model is exported
    try:
        return _train(args, config, mnist, run, plot_worker)
    finally:
        plot_worker.close()


def _train(args: argparse.Namespace, config, mnist, run, plot_worker) -> int:
    """cmd_train once the config and data are known: TensorFlow, the run folder, the listeners, the epochs."""
    from mnist_mlp.rundir import RunDir

    import_tensorflow_quietly()
    from mnist_mlp.export import SavedModelWriter
    from mnist_mlp.gpu_check import choose_device
    from mnist_mlp.plots import PlotWriter
    from mnist_mlp.progress import Console
    from mnist_mlp.run import Interrupted, train_and_evaluate
    from mnist_mlp.tensorboard import TensorBoardWriter
    from mnist_mlp.training import Diverged

    device = choose_device(config)  # a GPU that fails its self-check stops the run here, before any folder
    if not args.resume:
        name = Path(args.config).stem if args.config else "default"
        run = RunDir.create(args.out, name, overwrite=args.overwrite)
    console = Console(config.train.epochs, quiet=args.quiet, batch_size=config.train.batch_size)
    # Plots and TensorBoard first: the console's closing lines name their files.
    listeners = [PlotWriter(plot_worker), TensorBoardWriter(run.tensorboard), SavedModelWriter(), console]
    try:
        train_and_evaluate(config, run, listeners, resume=bool(args.resume), mnist=mnist, device=device)
    except Diverged as exc:
        console.end_line()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as exc:
        console.end_line()
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    import signal

    from mnist_mlp.run import Interrupted
    from mnist_mlp.sweep import run_sweep
    from mnist_mlp.sweep_file import load_sweep

    sweep = load_sweep(args.sweep_file, args.set)
    out = args.out or Path("sweeps") / args.sweep_file.stem
    try:
        run_sweep(sweep, out, workers=args.workers)
    except (Interrupted, KeyboardInterrupt) as exc:
        print(f"interrupted; finished trials are kept in {out}: run the same command to resume", file=sys.stderr)
        return 128 + getattr(exc, "signum", signal.SIGINT)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from mnist_mlp.plots import plot_run
    from mnist_mlp.rundir import RunDir

    report = plot_run(args.dir)
    print(f"plots in {RunDir(args.dir).plots}: {', '.join(p.name for p in report.written)}")
    for reason in dict.fromkeys(report.skipped.values()):  # one line per reason, in order
        names = [name for name, why in report.skipped.items() if why == reason]
        print(f"skipped {' and '.join(names)}: {reason}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    from mnist_mlp.evaluate import evaluate_run
    from mnist_mlp.rundir import RunDir

    result = evaluate_run(RunDir.open(args.dir), args.checkpoint, args.data_dir)
    print(json.dumps(result.to_dict()) if args.json else result.summary())
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    import json

    from mnist_mlp.predict import load_classifier, predict_files
    from mnist_mlp.rundir import RunDir

    classify, _ = load_classifier(RunDir.open(args.dir))
    predictions = predict_files(args.images, classify)
    for p in predictions:
        if args.json:
            print(json.dumps(p.to_dict()), flush=True)
        elif p.error:
            print(f"error: {p.file}: {p.error}", file=sys.stderr, flush=True)
        else:
            print(f"{p.file}: {p.digit} ({p.probability:.3f})", flush=True)
    return EXIT_SOME_FILES_FAILED if any(p.error for p in predictions) else 0


def cmd_serve(args: argparse.Namespace) -> int:
    from mnist_mlp.rundir import RunDir
    from mnist_mlp.serve import make_server

    with make_server(RunDir.open(args.dir), args.host, args.port) as server:
        print(f"serving {args.dir} ({server.run_info['weights']}) at {server.url}  (Ctrl-C stops)", flush=True)
        server.serve_forever()  # Ctrl-C: KeyboardInterrupt, reported by main as one line, exit 130
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    import json

    from mnist_mlp.bench import QUICK, BenchOptions, bench, prepare_out, report

    out = prepare_out(args.out, overwrite=args.overwrite)
    document = bench(QUICK if args.quick else BenchOptions(), out)
    print(json.dumps(document, indent=2) if args.json else report(document))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}", file=sys.stderr)
    return EXIT_BENCH_MISMATCH if document["mismatches"] else 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import json

    from mnist_mlp.doctor import diagnose, format_report

    report = diagnose(args.data_dir)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return EXIT_PROBLEMS_FOUND if report["problems"] else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-mlp", description="MNIST digit classifier: an MLP with hand-written backprop in TensorFlow."
    )
    # Package metadata only: TensorFlow is not imported, so this answers at once.
    parser.add_argument("--version", action="version", version=f"mnist-mlp {__version__} ({runtime_versions()})")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write its run folder")
    train.add_argument("--config", help="YAML config (default: the built-in defaults, = configs/default.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--out", type=Path, help="run folder (default: runs/<time>-<config name>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(handler=cmd_train)

    sweep = commands.add_parser("sweep", help="search hyperparameters, choosing on a validation split")
    sweep.add_argument("sweep_file", type=Path, metavar="SWEEP.yaml", help="sweep file, e.g. configs/sweep.yaml")
    sweep.add_argument("--out", type=Path, help="sweep folder, resumed if it exists (default: sweeps/<file name>)")
    sweep.add_argument("--workers", type=int, default=1, metavar="N", help="trials in parallel processes (default 1)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every trial's base")
    sweep.set_defaults(handler=cmd_sweep)

    plot = commands.add_parser("plot", help="redraw a run's plots from its history.csv, without training")
    plot.add_argument("dir", type=Path, metavar="DIR", help="run folder")
    plot.set_defaults(handler=cmd_plot)

    evaluate = commands.add_parser("evaluate", help="score a saved run's model on the test set again")
    evaluate.add_argument("dir", type=Path, metavar="DIR", help="run folder")
    evaluate.add_argument("--data-dir", type=Path, metavar="PATH", help="MNIST IDX folder (default: as in training)")
    evaluate.add_argument("--checkpoint", choices=["last", "best"], default="last", help="which one (default: last)")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify PNG/JPEG digit images with a saved run")
    predict.add_argument("dir", type=Path, metavar="DIR", help="run folder (its saved_model, else last checkpoint)")
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files: any size, colour or polarity")
    predict.add_argument(
        "--json", action="store_true", help="JSON lines: file, digit, probability, probabilities, error"
    )
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="a local web page: draw a digit, see what the network sees and does")
    serve.add_argument("dir", type=Path, metavar="DIR", help="run folder (its saved_model, else last checkpoint)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0: any free port)")
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: only this machine)"
    )
    serve.set_defaults(handler=cmd_serve)

    bench = commands.add_parser("bench", help="time training on each device (CPU, Metal GPU) against Keras and NumPy")
    bench.add_argument("--quick", action="store_true", help="a tenth of an epoch per repeat: under a minute")
    bench.add_argument("--out", type=Path, help="folder for bench.json and bench.png (default: runs/bench-<time>)")
    bench.add_argument("--overwrite", action="store_true", help="replace an earlier bench.json in --out")
    bench.add_argument("--json", action="store_true", help="print bench.json instead of the table")
    bench.set_defaults(handler=cmd_bench)

    doctor = commands.add_parser("doctor", help="check versions, devices, data and the GPU; recommend a device")
    doctor.add_argument("--data-dir", type=Path, metavar="PATH", help="MNIST IDX folder to check (default: as train)")
    doctor.add_argument("--json", action="store_true", help="print the report as one JSON object")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # train reads its data before TensorFlow's seconds of start-up, so bad data is reported at once;
        # plot needs no TensorFlow at all.
        if args.command not in ("train", "plot"):
            import_tensorflow_quietly()
        return args.handler(args)
    except GpuMismatch as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GPU_MISMATCH
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
