"""``mnist-train``: flags (and an optional TOML file) -> TrainConfig -> the pipeline.

Every flag comes from the table of settings in ``training.config``.

``mnist-train sweep ...`` hands over to ``training.sweep.main``.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from service.command_line import OneLineParser, quiet_on_closed_output
from training.config import (
    BY_NAME,
    SETTINGS,
    ConfigError,
    Setting,
    TrainConfig,
    from_mapping,
    ignored_settings,
    load_toml,
    parse_text,
    validate,
)


def _argument_type(setting: Setting) -> Callable[[str], Any]:
    """The setting's parser, turning a ConfigError into argparse's own error (our message)."""

    def convert(text: str) -> Any:
        try:
            return parse_text(setting, text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from exc

    convert.__name__ = setting.name
    return convert


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per setting of the table (training.config); each defaults to None, meaning "not
    given" (then the --config file, then the table's default)."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    for setting in SETTINGS:
        group = groups.get(setting.group) or parser.add_argument_group(setting.group)
        groups[setting.group] = group
        if setting.is_switch:
            group.add_argument(
                setting.flag,
                dest=setting.name,
                action=argparse.BooleanOptionalAction,
                help=setting.describe(),
            )
        elif setting.choices is not None:
            group.add_argument(
                setting.flag, dest=setting.name, choices=setting.choices, help=setting.describe()
            )
        else:
            group.add_argument(
                setting.flag,
                dest=setting.name,
                type=_argument_type(setting),
                metavar=setting.metavar or _metavar(setting),
                help=setting.describe(),
            )
    groups["run"].add_argument(
        "--config",
        type=Path,
        metavar="RUN.TOML",
        help="TOML file whose keys are the flags' names (epochs = 30, batch_size = 256, ...); "
        "flags override it",
    )


def _metavar(setting: Setting) -> str:
    if setting.name == "batch_size":
        return "N|auto"
    if setting.type is float:
        return "X"
    if setting.type is int:
        return "N"
    return "DIR"


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The settings set by a flag (not None), by name."""
    return {
        name: value for name, value in vars(args).items() if value is not None and name in BY_NAME
    }


def config_from_args(args: argparse.Namespace, *, strict_solver: bool = True) -> TrainConfig:
    """Defaults, then the --config file, then the flags given; checked, scikit-learn included.

    With ``strict_solver``, a setting given explicitly that the solver ignores is a ConfigError.
    """
    config = TrainConfig()
    given: set[str] = set()
    if getattr(args, "config", None) is not None:
        values = load_toml(args.config)
        config = from_mapping(values, base=config)
        given |= {key.replace("-", "_") for key in values}
    flags = given_settings(args)
    given |= set(flags)
    config = validate(from_mapping(flags, base=config))
    if strict_solver:
        ignored = ignored_settings(config, given)
        if ignored:
            setting = ignored[0]
            users = "/".join(setting.solvers)
            raise ConfigError(
                f"{setting.flag}: scikit-learn's {config.solver} ignores it ({users} only); "
                f"drop {setting.flag} or choose --solver {setting.solvers[-1]}"
            )
    if config.feedback is not None:
        _check_feedback_url(config.feedback)
    return config


def _check_feedback_url(url: str) -> None:
    """ConfigError unless --feedback names a database and driver this install has (nothing is
    connected to yet; an unreachable database is exit 3 later, when the data is read)."""
    from service.config import ConfigError as ServiceConfigError
    from service.store.config import usable_database_url

    try:
        usable_database_url(url, name="--feedback")
    except ServiceConfigError as exc:
        raise ConfigError(str(exc)) from None


#: the modules of the training extra; a serve-only install lacks them
TRAIN_EXTRA_MODULES = (
    "sklearn",
    "skl2onnx",
    "onnx",
    "scipy",
    "matplotlib",
    "tqdm",
    "threadpoolctl",
)


def missing_train_extra() -> str | None:
    """The first module of the training extra that is not installed, or None."""
    for name in TRAIN_EXTRA_MODULES:
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return name
    return None


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``mnist-train``."""
    parser = OneLineParser(
        prog="mnist-train",
        description="Train an MLPClassifier on MNIST, export it to ONNX, verify it and publish "
        "it into the model repository. `mnist-train sweep --help` compares activations x solvers.",
        epilog="Exit codes: "
        + "; ".join(f"{code} {meaning}" for code, meaning in _exit_codes().items())
        + ".",
    )
    add_train_arguments(parser)
    parser.add_argument(
        "--promote",
        action="store_true",
        help="after publishing, promote the new version to stable if it passes the promote gate "
        "(mnist-models promote); without it the version is a candidate that nothing serves",
    )
    return parser


def _exit_codes() -> dict[int, str]:
    from training.pipeline import EXIT_CODES

    return EXIT_CODES


@quiet_on_closed_output
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``mnist-train`` and ``python -m training``; returns the exit code."""
    from training.pipeline import EXIT_INTERRUPTED, EXIT_USAGE

    missing = missing_train_extra()
    if missing is not None:
        print(
            f"mnist-train: {missing} is not installed: this install has the serving extra only; "
            "install the training extra: pip install 'mnist-service[train]' (or `make install`)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("mnist-train: interrupted; nothing was published", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(args_list: list[str]) -> int:
    from training.pipeline import EXIT_USAGE, run

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
    return run(config, promote=bool(getattr(args, "promote", False)), invocation=args_list)
