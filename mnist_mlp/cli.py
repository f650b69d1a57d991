"""`mnist-mlp`: the command line. Parses arguments and calls the modules; holds no training logic.

Errors of the user's making print one `error: ...` line on stderr and exit 2. TensorFlow is imported
only by the commands that need it, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from mnist_mlp import __version__, import_tensorflow_quietly
from mnist_mlp.errors import GpuFailure, GpuMismatch, UserError, first_line
from mnist_mlp.folder_lock import SWEEP_COMMAND, TRAIN_COMMAND, folder_locked, lock_folder
from mnist_mlp.versions import runtime_versions
from mnist_mlp.write_errors import WriteFailed, as_write_failure

if TYPE_CHECKING:
    from mnist_mlp.config import Config
    from mnist_mlp.data import Mnist
    from mnist_mlp.plot_worker import PlotWorker
    from mnist_mlp.run import RunPlan
    from mnist_mlp.rundir import RunDir

EXIT_USER_ERROR = 2
EXIT_TRAINING_FAILED = 1  # train: the loss diverged, or memory ran out
EXIT_GPU_FAILED = 1  # the GPU failed its self-check, or raised an error: the machine's fault, not the input's
EXIT_PROBLEMS_FOUND = 1  # doctor found something wrong
EXIT_SOME_FILES_FAILED = 1  # predict: some images could not be classified (the others were)
EXIT_BENCH_MISMATCH = 1  # bench: some implementation or device computed a different loss
EXIT_WRITE_FAILED = 1  # a full disk, a read-only or failing one, a folder removed while written: not the input's fault
LATEST_HELP = "latest: the newest finished run in runs/"


def cmd_train(args: argparse.Namespace) -> int:
    """Check everything, then make the run folder, then train: a failed check leaves nothing behind.

    The run's folder is locked for as long as this process writes it (folder_lock.py); runs/latest follows.
    """
    from mnist_mlp.latest import update_latest
    from mnist_mlp.rundir import RUNS

    with contextlib.ExitStack() as held:
        try:
            return _checked_train(args, held)
        finally:
            held.close()  # the locks go first: runs/latest passes over folders being written
            update_latest(of=args.resume or args.out or RUNS / "new")


def _checked_train(args: argparse.Namespace, held: contextlib.ExitStack) -> int:
    from mnist_mlp.data import load_mnist
    from mnist_mlp.plot_worker import PlotWorker
    from mnist_mlp.rundir import RUNS, RunDir, check_out_path

    # 1. Every check that can fail, before anything is made or touched.
    run = None
    if args.resume:
        if args.config or args.out or args.overwrite:
            raise UserError("--resume continues a run with its own config.yaml; drop --config, --out and --overwrite")
        run = RunDir.open(args.resume)
        run.lock(TRAIN_COMMAND)  # one writer per folder: a second one is refused here, before it reads anything
        held.callback(run.unlock)
        config = resumed_config(run, args)
    else:
        config = new_config(args)
        check_out_path(args.out or RUNS, overwrite=args.overwrite)
        if args.overwrite and args.out and args.out.is_dir():
            lock_folder(args.out, TRAIN_COMMAND).release()  # a run in use there: refused now, not after loading
    mnist = load_mnist(config.data)  # bad data fails before TensorFlow starts
    plot_worker = PlotWorker()  # imports matplotlib while TensorFlow starts; draws while the model is exported
    try:
        return _train(args, config, mnist, run, plot_worker, held)
    finally:
        plot_worker.close()  # before the lock is let go: its processes write into the run


def _train(
    args: argparse.Namespace,
    config: Config,
    mnist: Mnist,
    run: RunDir | None,
    plot_worker: PlotWorker,
    held: contextlib.ExitStack,
) -> int:
    """cmd_train once the config and data are known: TensorFlow, the last checks, the run folder, the epochs."""
    from mnist_mlp.latest import update_latest
    from mnist_mlp.rundir import RunDir

    import_tensorflow_quietly()
    from mnist_mlp.run import plan_run

    plan = plan_run(config, mnist)  # device (the GPU's self-check), batch count, memory of the model's tensors
    # 2. The run folder (a new run), then 3. training.
    if not args.resume:
        name = Path(args.config).stem if args.config else "default"
        run = RunDir.create(args.out, name, overwrite=args.overwrite, config=plan.config, lock_as=TRAIN_COMMAND)
        held.callback(run.unlock)
    if args.resume or run.replaces is not None:
        update_latest(of=run.target)  # runs/latest no longer names the run that is about to change
    try:
        status = train_in(run, plan, args, plot_worker)
    except BaseException:
        if not args.resume:
            run.abandon()
        raise
    if args.resume or status == 0:
        return status
    if run.replaces is not None:  # stopped in its first epoch: the run it was to replace stays
        print(f"{run.replaces}: left as it was (the new run did not finish an epoch)", file=sys.stderr)
        run.abandon()
    elif status in (EXIT_TRAINING_FAILED, EXIT_GPU_FAILED):  # a run that recorded nothing (not even a divergence)
        run.abandon()
    return status


def new_config(args: argparse.Namespace) -> Config:
    """--config with --set, and --data-dir as data.dir."""
    from mnist_mlp.config import load_config

    config = load_config(args.config, args.set)
    return config.replace(**{"data.dir": str(args.data_dir)}) if args.data_dir else config


RESUMABLE_KEYS = ("train.epochs", "runtime.device")


def resumed_config(run: RunDir, args: argparse.Namespace) -> Config:
    """The run's own config; --set may change train.epochs (to continue a run) and runtime.device (to go on on
    another device, e.g. the CPU after the GPU failed); --data-dir the data."""
    from mnist_mlp.config import parse_override

    config = run.read_config()
    for item in args.set:
        key, value = parse_override(item)
        if key not in RESUMABLE_KEYS:
            raise UserError(
                f"--set {item}: only {' and '.join(RESUMABLE_KEYS)} can change when resuming (to continue a run)"
            )
        if key == "train.epochs" and config.train.lr_schedule == "cosine" and value != config.train.epochs:
            raise UserError(
                f"--set {item}: the run uses train.lr_schedule=cosine, whose rate follows train.epochs; "
                "continued, it would not equal a straight run of that length (train anew instead)"
            )
        config = config.replace(**{key: value})
    if args.data_dir:
        config = config.replace(**{"data.dir": str(args.data_dir), "data.tfds_version": None})
    return config


def train_in(run: RunDir, plan: RunPlan, args: argparse.Namespace, plot_worker: PlotWorker) -> int:
    """Train `plan` into `run` with the console, plots, TensorBoard and SavedModel; the exit status."""
    import tensorflow as tf

    from mnist_mlp.export import SavedModelWriter
    from mnist_mlp.plot_worker import PlotWriter
    from mnist_mlp.progress import Console
    from mnist_mlp.run import Interrupted, train
    from mnist_mlp.tensorboard import TensorBoardWriter, digits_present
    from mnist_mlp.training import Diverged

    console = Console(plan.config.train.epochs, quiet=args.quiet, batch_size=plan.config.train.batch_size)
    # Plots and TensorBoard first: the console's closing lines name their files.
    tensorboard = TensorBoardWriter(run, digits_present(plan.mnist))
    listeners = [PlotWriter(plot_worker), tensorboard, SavedModelWriter(), console]
    try:
        train(plan, run, listeners, resume=bool(args.resume))
    except Diverged as exc:
        console.end_line()
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_TRAINING_FAILED
    except GpuFailure as exc:  # runtime.device=gpu (auto goes on on the CPU by itself)
        console.end_line()
        kept = run.has_checkpoint()
        then = f"; the run is kept: mnist-mlp train --resume {run.path} --set runtime.device=cpu" if kept else ""
        print(f"error: {exc} while training{then}", file=sys.stderr)
        return EXIT_GPU_FAILED
    except (WriteFailed, OSError, tf.errors.OpError, MemoryError) as exc:
        console.end_line()
        if failure := as_write_failure(exc, run.path):  # a full disk is not memory (TensorFlow says both alike)
            print(f"error: {failure}{failure.then(resume_command(run, args, failure))}", file=sys.stderr)
            return EXIT_WRITE_FAILED
        if not isinstance(exc, (tf.errors.ResourceExhaustedError, MemoryError)):
            raise
        reason = first_line(exc, 160)
        print(f"error: out of memory while training ({reason}); choose smaller model.hidden or train.batch_size",
              file=sys.stderr)  # fmt: skip
        return EXIT_TRAINING_FAILED
    except Interrupted as exc:
        console.end_line()
        if run.replaces is None:
            print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    return 0


def resume_command(run: RunDir, args: argparse.Namespace, failure: WriteFailed) -> str:
    """How to go on after a failed write: resume the run when it holds something to resume from, else start again."""
    if failure.run_is_gone:
        return "train again"
    if args.resume or (run.replaces is None and run.holds_results()):
        return f"mnist-mlp train --resume {run.target}"
    return "run the same command again (nothing of this run was kept)"


def cmd_sweep(args: argparse.Namespace) -> int:
    if args.report:
        return sweep_report(args)
    from mnist_mlp.run import Interrupted
    from mnist_mlp.study import shown, sweep_place
    from mnist_mlp.sweep import run_sweep
    from mnist_mlp.sweep_file import load_sweep

    if args.sweep_file is None:
        raise UserError("sweep: give a sweep file (e.g. configs/sweep.yaml), or --report to report on a study")
    sweep = load_sweep(args.sweep_file, args.set)
    place = sweep_place(args.out or Path("sweeps") / args.sweep_file.stem, args.storage, args.study or sweep.path.stem)
    try:
        with folder_locked(place.out, SWEEP_COMMAND):  # one sweep command per folder; a second is refused in one line
            run_sweep(sweep, place, workers=args.workers)
    except Interrupted as exc:
        print(f"interrupted; finished trials are kept in study {place.study} ({shown(place.url)}): "
              "run the same command to resume", file=sys.stderr)  # fmt: skip
        return 128 + exc.signum
    return 0


def sweep_report(args: argparse.Namespace) -> int:
    """`sweep --report`: the report of a study (the sweep file's, --study's, or the only one there) into --out."""
    from mnist_mlp.study import load_study, open_storage, sweep_place
    from mnist_mlp.sweep_report import report

    if args.set or args.workers != 1:
        raise UserError("--report writes the report of the trials in the study; drop --set and --workers")
    name = args.study or (args.sweep_file.stem if args.sweep_file else None)
    out = args.out or Path("sweeps") / (name or "report")
    place = sweep_place(out, args.storage, name, must_exist=True)
    study = load_study(open_storage(place.url), name)
    report(study, args.out or Path("sweeps") / study.study_name, sys.stdout)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from mnist_mlp.plots import plot_run
    from mnist_mlp.rundir import RunDir

    report = plot_run(args.dir, args.data_dir)
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

    run = RunDir.open(args.dir)
    classify, source = load_classifier(run)
    if source != str(run.saved_model):  # an unfinished run: say which weights answer
        print(f"using {source}", file=sys.stderr, flush=True)
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
        if not server.loopback_only:
            print(f"warning: listening on {args.host}: the page and its API are reachable from the network, "
                  "with no authentication", file=sys.stderr, flush=True)  # fmt: skip
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

    config = new_config(args) if args.config or args.set else None
    report = diagnose(args.data_dir, config)
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
    train.add_argument(
        "--resume", type=Path, metavar="DIR", help="continue the run in DIR (interrupted, or with --set train.epochs=N)"
    )
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--data-dir", type=Path, metavar="PATH", help="MNIST IDX folder (with --resume: if moved)")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(handler=cmd_train)

    sweep = commands.add_parser("sweep", help="search hyperparameters, choosing on a validation split")
    sweep.add_argument(
        "sweep_file", type=Path, nargs="?", metavar="SWEEP.yaml", help="sweep file, e.g. configs/sweep.yaml"
    )
    sweep.add_argument("--out", type=Path, help="sweep folder, resumed if it exists (default: sweeps/<file name>)")
    sweep.add_argument("--workers", type=int, default=1, metavar="N", help="trials in parallel processes (default 1)")
    sweep.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override every trial's base")
    sweep.add_argument(
        "--storage", metavar="URL", help="study database, e.g. postgresql://user@host/db (default: OUT/study.db)"
    )
    sweep.add_argument("--study", metavar="NAME", help="study name in the database (default: the file's name)")
    sweep.add_argument("--report", action="store_true", help="only write the report of the study's trials into OUT")
    sweep.set_defaults(handler=cmd_sweep)

    plot = commands.add_parser("plot", help="redraw a run's plots from its history.csv, without training")
    plot.add_argument("dir", type=Path, metavar="DIR", help=f"run folder, or {LATEST_HELP}")
    plot.add_argument("--data-dir", type=Path, metavar="PATH", help="MNIST IDX folder (default: as in training)")
    plot.set_defaults(handler=cmd_plot)

    evaluate = commands.add_parser("evaluate", help="score a saved run's model on the test set again")
    evaluate.add_argument("dir", type=Path, metavar="DIR", help=f"run folder, or {LATEST_HELP}")
    evaluate.add_argument("--data-dir", type=Path, metavar="PATH", help="MNIST IDX folder (default: as in training)")
    evaluate.add_argument(
        "--checkpoint",
        choices=["last", "best"],
        help="which one (default: the one metrics.json describes: best with train.patience, else last)",
    )
    evaluate.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    evaluate.set_defaults(handler=cmd_evaluate)

    predict = commands.add_parser("predict", help="classify PNG/JPEG digit images with a saved run")
    predict.add_argument(
        "dir", type=Path, metavar="DIR", help=f"run folder (its saved_model, else last checkpoint), or {LATEST_HELP}"
    )
    predict.add_argument("images", nargs="+", metavar="IMAGE", help="PNG or JPEG files: any size, colour or polarity")
    predict.add_argument(
        "--json", action="store_true", help="JSON lines: file, digit, probability, probabilities, error"
    )
    predict.set_defaults(handler=cmd_predict)

    serve = commands.add_parser("serve", help="a local web page: draw a digit, see what the network sees and does")
    serve.add_argument(
        "dir",
        type=Path,
        nargs="?",
        default=Path("latest"),
        metavar="DIR",
        help=f"run folder (its saved_model, else last checkpoint), or {LATEST_HELP} (the default)",
    )
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
    doctor.add_argument("--config", help="check the GPU with this config's settings (default: batch 50 and 512)")
    doctor.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    doctor.add_argument("--json", action="store_true", help="print the report as one JSON object")
    doctor.set_defaults(handler=cmd_doctor)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # train reads its data before TensorFlow's seconds of start-up, so bad data is reported at once;
        # plot needs no TensorFlow at all.
        if args.command not in ("train", "plot") and not getattr(args, "report", False):  # nor sweep --report
            import_tensorflow_quietly()
        if getattr(args, "dir", None) is not None:  # plot, evaluate, predict, serve: `latest` is runs/latest
            from mnist_mlp.latest import resolve_run_dir

            args.dir = resolve_run_dir(args.dir)
        return args.handler(args)
    except (GpuMismatch, GpuFailure) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_GPU_FAILED
    except WriteFailed as exc:  # train says how to resume; here, what to do first
        print(f"error: {exc}{exc.then('run the same command again')}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> NoReturn:
    """The `mnist-mlp` command: main(), then a quick exit.

    Once main() returns every file is written and closed, and the interpreter's own teardown of TensorFlow
    would only cost time (about 0.9 s on a 2-core machine). So after what a normal exit does for the
    program (joining its threads, the atexit handlers, flushing the output), the process ends at once.
    """
    code = main()
    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe (`| head`): nothing more to say there
            stream.flush()
    os._exit(code)
