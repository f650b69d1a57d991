"""`mnist-mlp`: the command line. Parses arguments and calls the modules; holds no training logic.

Errors of the user's making print one `error: ...` line on stderr and exit 2. TensorFlow is imported
only by the commands that need it, so `--help` and argument errors answer at once.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mnist_mlp import import_tensorflow_quietly
from mnist_mlp.errors import UserError

EXIT_USER_ERROR, EXIT_DIVERGED = 2, 1


def cmd_train(args: argparse.Namespace) -> int:
    from mnist_mlp.config import load_config
    from mnist_mlp.data import load_mnist
    from mnist_mlp.progress import Console
    from mnist_mlp.run import Interrupted, train_and_evaluate
    from mnist_mlp.rundir import RunDir
    from mnist_mlp.training import Diverged

    if args.resume:
        if args.config or args.set or args.out:
            raise UserError("--resume continues a run with its own config.yaml; drop --config, --set and --out")
        run = RunDir.open(args.resume)
        config = run.read_config()
    else:
        config = load_config(args.config, args.set)
    mnist = load_mnist(config.data)  # bad data fails before any folder is made
    if not args.resume:
        name = Path(args.config).stem if args.config else "default"
        run = RunDir.create(args.out, name, overwrite=args.overwrite)
    console = Console(config.train.epochs, quiet=args.quiet)
    try:
        train_and_evaluate(config, run, [console], resume=bool(args.resume), mnist=mnist)
    except Diverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mnist-mlp", description="MNIST digit classifier: an MLP with hand-written backprop in TensorFlow."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a model and write its run folder")
    train.add_argument("--config", help="YAML config (default: the built-in defaults, = configs/default.yaml)")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
    train.add_argument("--out", type=Path, help="run folder (default: runs/<time>-<config name>)")
    train.add_argument("--resume", type=Path, metavar="DIR", help="continue an interrupted run in DIR")
    train.add_argument("--overwrite", action="store_true", help="replace an existing run in --out")
    train.add_argument("--quiet", action="store_true", help="print only the final summary")
    train.set_defaults(handler=cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import_tensorflow_quietly()
    try:
        return args.handler(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
