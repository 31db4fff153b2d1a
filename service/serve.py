"""mnist-serve: run the service under gunicorn with the project's one configuration file."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
APP = "service.app:create_app()"


def build_parser() -> argparse.ArgumentParser:
    """The command line of mnist-serve."""
    parser = argparse.ArgumentParser(
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


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags and replace this process with gunicorn (signals then reach it directly)."""
    args = build_parser().parse_args(argv)
    command, env = gunicorn_command(args, os.environ)
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process


if __name__ == "__main__":
    raise SystemExit(main())
