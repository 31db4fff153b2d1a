"""``mnist-train``: flags (and an optional TOML file) -> TrainConfig -> the pipeline.

``mnist-train sweep ...`` hands over to ``training.sweep.main``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, get_args

from training.config import (
    Activation,
    ConfigError,
    LearningRate,
    Progress,
    Solver,
    TrainConfig,
    from_mapping,
    load_toml,
    parse_layers,
    validate,
)

_DEFAULTS = TrainConfig()


def _argument_type(parse: Callable[[str], Any]) -> Callable[[str], Any]:
    """Turn a ConfigError into argparse's own error, keeping our message."""

    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = parse.__name__
    return convert


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"batch size must be a positive integer or 'auto', got {text!r}"
        ) from None


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """Add every training knob; each defaults to None, meaning "not given" (file, then default)."""
    d = _DEFAULTS
    model = parser.add_argument_group("model")
    model.add_argument(
        "--hidden-layers",
        dest="hidden_layer_sizes",
        type=_argument_type(parse_layers),
        metavar="N[,N...]",
        help=f"hidden layer sizes, e.g. 512,256 (default "
        f"{','.join(map(str, d.hidden_layer_sizes))})",
    )
    model.add_argument(
        "--activation",
        choices=get_args(Activation),
        help=f"hidden-layer activation (default {d.activation})",
    )
    model.add_argument("--alpha", type=float, help=f"L2 penalty (default {d.alpha})")

    solver = parser.add_argument_group("solver")
    solver.add_argument(
        "--solver", choices=get_args(Solver), help=f"weight optimiser (default {d.solver})"
    )
    solver.add_argument(
        "--batch-size",
        type=_batch_size,
        help=f"minibatch size for sgd/adam, or 'auto' (default {d.batch_size})",
    )
    solver.add_argument(
        "--learning-rate",
        choices=get_args(LearningRate),
        help=f"sgd learning-rate schedule (default {d.learning_rate})",
    )
    solver.add_argument(
        "--learning-rate-init",
        type=float,
        help=f"initial learning rate for sgd/adam (default {d.learning_rate_init})",
    )
    solver.add_argument(
        "--power-t", type=float, help=f"exponent of the invscaling schedule (default {d.power_t})"
    )
    solver.add_argument("--momentum", type=float, help=f"sgd momentum (default {d.momentum})")
    solver.add_argument(
        "--nesterov",
        dest="nesterovs_momentum",
        action=argparse.BooleanOptionalAction,
        help="Nesterov momentum for sgd (default on)",
    )
    solver.add_argument("--beta-1", type=float, help=f"adam beta_1 (default {d.beta_1})")
    solver.add_argument("--beta-2", type=float, help=f"adam beta_2 (default {d.beta_2})")
    solver.add_argument("--epsilon", type=float, help=f"adam epsilon (default {d.epsilon})")
    solver.add_argument(
        "--epochs",
        dest="max_iter",
        type=int,
        help=f"max epochs (sgd/adam) or iterations (lbfgs) (default {d.max_iter})",
    )
    solver.add_argument("--tol", type=float, help=f"improvement tolerance (default {d.tol})")
    solver.add_argument(
        "--shuffle", action=argparse.BooleanOptionalAction, help="shuffle every epoch (default on)"
    )
    solver.add_argument(
        "--seed",
        dest="random_state",
        type=int,
        help=f"random seed: weights, shuffling, split (default {d.random_state})",
    )

    stopping = parser.add_argument_group("validation and early stopping")
    stopping.add_argument(
        "--early-stopping",
        action=argparse.BooleanOptionalAction,
        help="stop when validation accuracy stalls; restore the best weights (default off)",
    )
    stopping.add_argument(
        "--validation-fraction",
        type=float,
        help=f"share of the training images held out for validation "
        f"(default {d.validation_fraction}; 0 = none)",
    )
    stopping.add_argument(
        "--patience",
        dest="n_iter_no_change",
        type=int,
        help=f"epochs without improvement before stopping (default {d.n_iter_no_change})",
    )

    run = parser.add_argument_group("run")
    run.add_argument(
        "--config",
        type=Path,
        metavar="RUN.TOML",
        help="TOML file with any of the TrainConfig keys; flags override it",
    )
    run.add_argument(
        "--train-limit",
        type=int,
        metavar="N",
        help="train on the first N training images only (default all 60,000)",
    )
    run.add_argument(
        "--augment",
        action=argparse.BooleanOptionalAction,
        help="add distorted copies of the training images every epoch (default off)",
    )
    run.add_argument(
        "--augment-copies",
        type=int,
        help=f"distorted copies per image per epoch (default {d.augment_copies})",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help="folder with the four MNIST IDX .gz files (default $MNIST_DATA_DIR, "
        "else the download cache)",
    )
    run.add_argument(
        "--models-dir", type=Path, help=f"model repository to publish into (default {d.models_dir})"
    )
    run.add_argument(
        "--min-accuracy",
        type=float,
        help=f"quality gate: refuse to publish below this test accuracy (default {d.min_accuracy})",
    )
    run.add_argument(
        "--progress",
        choices=get_args(Progress),
        help=f"live bar, one JSON line per epoch on stdout, or nothing (default {d.progress})",
    )


_NOT_CONFIG = ("config",)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """Defaults, then the --config file, then the flags given; checked, scikit-learn included."""
    config = TrainConfig()
    if getattr(args, "config", None) is not None:
        config = from_mapping(load_toml(args.config), base=config)
    given = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name not in _NOT_CONFIG and hasattr(config, name)
    }
    return validate(from_mapping(given, base=config))


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mnist-train``."""
    parser = argparse.ArgumentParser(
        prog="mnist-train",
        description="Train an MLPClassifier on MNIST, export it to ONNX, verify it and publish "
        "it into the model repository. `mnist-train sweep --help` compares activations x solvers.",
    )
    add_train_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnist-train`` and ``python -m training``; returns the exit code."""
    from training.pipeline import EXIT_USAGE, run

    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list and args_list[0] == "sweep":
        from training.sweep import main as sweep_main

        return int(sweep_main(args_list[1:]))
    parser = build_parser()
    args = parser.parse_args(args_list)
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        print(f"mnist-train: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(config, invocation=args_list)
