"""mnist-serve: run the service under gunicorn with the project's one configuration file."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.command_line import OneLineParser

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
APP = "service.app:create_app()"


def build_parser() -> argparse.ArgumentParser:
    """The command line of mnist-serve."""
    parser = OneLineParser(
        prog="mnist-serve",
        description="Serve the MNIST model repository over HTTP (gunicorn + Flask + onnxruntime).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    parser.add_argument(
        "--workers", type=int, default=None, help="gunicorn worker processes (default 2)"
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="the model repository (default $MODEL_DIR or ./models)",
    )
    parser.add_argument(
        "--model-version", type=int, default=None, help="pin one version (default: the highest)"
    )
    return parser


def gunicorn_command(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The gunicorn argv and environment that mnist-serve execs."""
    if not 0 < args.port < 65536:
        raise SystemExit(f"mnist-serve: --port {args.port} is not a TCP port")
    if args.workers is not None and args.workers < 1:
        raise SystemExit("mnist-serve: --workers must be at least 1")
    env = dict(environ)
    if args.models_dir is not None:
        env["MODEL_DIR"] = str(args.models_dir.resolve())
    if args.model_version is not None:
        env["MODEL_VERSION"] = str(args.model_version)
    host = f"[{args.host}]" if ":" in args.host else args.host
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--config",
        str(GUNICORN_CONF),
        "--bind",
        f"{host}:{args.port}",
    ]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    argv.append(APP)
    return argv, env


#: exit code when the model repository is missing or holds no version (before anything listens)
EXIT_NO_MODELS = 3
#: exit code when a serving setting (an environment variable) holds a bad value, checked before
#: anything listens or forks
EXIT_BAD_SETTING = 2


def check_settings(environ: Mapping[str, str]) -> str | None:
    """Why the serving settings in ``environ`` cannot run (one line naming the variable), or
    None when ServiceConfig accepts them."""
    from service.config import ConfigError, ServiceConfig

    try:
        ServiceConfig.from_env(environ)
    except ConfigError as error:
        return str(error)
    return None


def check_models_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """Why the model repository cannot be served (one line), or None when it has a version.

    Only the cheap checks: the folder exists and holds a complete version (the pinned one with
    --model-version); the workers validate the version itself.
    """
    from service.model.contract import MODEL_NAME
    from service.model.repository import ModelRepository

    flag = args.models_dir is not None
    root = args.models_dir if flag else Path(environ.get("MODEL_DIR") or "models")
    named = (
        f"--models-dir {root}"
        if flag
        else f"MODEL_DIR={root}"
        if "MODEL_DIR" in environ
        else f"the default model repository {root}"
    )
    if not root.exists():
        return (
            f"{named}: no such folder; point --models-dir at a model repository "
            f"(it holds {MODEL_NAME}/<version>/)"
        )
    if not root.is_dir():
        return f"{named}: not a folder; point --models-dir at a model repository"
    repository = ModelRepository(root)
    versions = repository.versions()
    if not versions:
        return (
            f"{named}: no model version in {repository.model_dir} (a folder <N>/ holding "
            f"model.onnx and card.json); train one with mnist-train --models-dir {root}"
        )
    numbers = [v.version for v in versions]
    if args.model_version is not None and args.model_version not in numbers:
        return f"--model-version {args.model_version}: {repository.model_dir} has {numbers}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, check the model repository, then replace this process with gunicorn
    (signals then reach it directly). Exit 2 with one line naming the variable when a setting
    is bad, 3 when there is nothing to serve."""
    args = build_parser().parse_args(argv)
    command, env = gunicorn_command(args, os.environ)
    problem = check_settings(env)
    if problem is not None:
        print(f"mnist-serve: {problem}", file=sys.stderr)
        return EXIT_BAD_SETTING
    problem = check_models_dir(args, os.environ)
    if problem is not None:
        print(f"mnist-serve: {problem}", file=sys.stderr)
        return EXIT_NO_MODELS
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process


if __name__ == "__main__":
    raise SystemExit(main())
