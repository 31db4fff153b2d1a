"""mnist-serve: run the service under gunicorn with the project's one configuration file.

Everything that can be checked before gunicorn starts is checked here, so a bad setting is one
line and an exit code rather than worker tracebacks: exit 2 a bad flag or environment variable
(the service's, gunicorn's, the store URL's database driver, the tracing exporter), 3 no model to
serve, 4 the address cannot be bound (in use, not an address of this machine).
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import socket
import stat
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from service.command_line import (
    OneLineParser,
    integer_text,
    quiet_on_closed_output,
    whole_number,
)
from service.config import MAX_MODEL_VERSION

GUNICORN_CONF = Path(__file__).with_name("gunicorn.conf.py")
APP = "service.app:create_app()"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: what BIND may hold (gunicorn's forms, one address; HOST alone means port 8000, as in gunicorn)
BIND_FORMS = "one address: HOST:PORT, [IPv6]:PORT, unix:PATH or fd://N"


def build_parser() -> argparse.ArgumentParser:
    """The command line of mnist-serve."""
    parser = OneLineParser(
        prog="mnist-serve",
        description="Serve the MNIST model repository over HTTP (gunicorn + Flask + onnxruntime). "
        "Where it listens: --host/--port when either is given (the other at its default), else "
        f"$BIND ({BIND_FORMS}) when set, else {DEFAULT_HOST}:{DEFAULT_PORT}.",
        epilog="exit codes: 2 bad flag or setting (one line naming it), 3 no model to serve, "
        "4 the address cannot be bound; before anything listens",
    )
    parser.add_argument(
        "--host", default=None, help=f"address to bind (default {DEFAULT_HOST}; overrides $BIND)"
    )
    parser.add_argument(
        "--port",
        type=whole_number(1, 65535),
        default=None,
        help=f"TCP port (default {DEFAULT_PORT}; overrides $BIND)",
    )
    parser.add_argument(
        "--workers",
        type=whole_number(1, MAX_WORKERS),
        default=None,
        help="gunicorn worker processes (default $WEB_CONCURRENCY or 2)",
    )
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="the model repository (default $MODEL_DIR or ./models)",
    )
    parser.add_argument(
        "--model-version",
        type=whole_number(1, MAX_MODEL_VERSION),
        default=None,
        help="pin one version (default: the highest)",
    )
    return parser


def gunicorn_command(
    args: argparse.Namespace, environ: Mapping[str, str]
) -> tuple[list[str], dict[str, str]]:
    """The gunicorn argv and environment that mnist-serve execs."""
    env = dict(environ)
    if args.models_dir is not None:
        env["MODEL_DIR"] = str(args.models_dir.resolve())
    if args.model_version is not None:
        env["MODEL_VERSION"] = str(args.model_version)
    bind = bind_from_environment(args, environ)
    if bind is None:
        host, port = flag_address(args)
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    argv = [sys.executable, "-m", "gunicorn", "--config", str(GUNICORN_CONF), "--bind", bind]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    argv.append(APP)
    return argv, env


#: exit code when the model repository is missing or holds no version (before anything listens)
EXIT_NO_MODELS = 3
#: exit code when a serving setting (an environment variable) holds a bad value, checked before
#: anything listens or forks
EXIT_BAD_SETTING = 2


#: exit code when the address cannot be bound (in use, not an address of this machine)
EXIT_ADDRESS = 4
#: the most worker processes (WEB_CONCURRENCY, --workers): each holds a model session and a
#: slot of the connection balance table; a few per core is all that helps
MAX_WORKERS = 256
#: gunicorn's settings from the environment (service/gunicorn.conf.py): name, default, lowest,
#: highest (threads per worker; a day of silence before a worker counts as hung)
GUNICORN_INTEGERS = (
    ("WEB_CONCURRENCY", 2, 1, MAX_WORKERS),
    ("GUNICORN_THREADS", 4, 1, 1024),
    ("GUNICORN_TIMEOUT", 30, 1, 86_400),
)
GUNICORN_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


class SettingError(ValueError):
    """An environment variable of gunicorn's holds a value it cannot run with."""


def env_int(
    environ: Mapping[str, str], name: str, default: int, lowest: int = 1, highest: int = 2**31
) -> int:
    """The integer setting ``name`` (``default`` when unset or empty); SettingError names it."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    expected = f"expected a whole number from {lowest} to {highest}"
    try:
        value = integer_text(text)
    except ValueError:
        raise SettingError(f"{name}={text!r}: {expected}") from None
    if not lowest <= value <= highest:
        raise SettingError(f"{name}={text!r}: {expected}")
    return value


def flag_address(args: argparse.Namespace) -> tuple[str, int]:
    """The host and port of --host and --port, each at its default when not given."""
    host = DEFAULT_HOST if args.host is None else args.host
    port = DEFAULT_PORT if args.port is None else args.port
    return host, port


def bind_from_environment(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """$BIND when it says where to listen: set (not blank) and neither --host nor --port given
    (a flag wins over it); else None."""
    bind = environ.get("BIND", "").strip()
    return bind if bind and args.host is None and args.port is None else None


def parse_bind(text: str) -> tuple[str, int] | None:
    """The host and port of the BIND value ``text`` in one of gunicorn's forms (BIND_FORMS,
    ``tcp://`` in front allowed), or None for a unix socket or an inherited descriptor (nothing
    to probe); SettingError naming the variable when gunicorn could not listen on it as given."""
    value = text.strip()
    malformed = SettingError(f"BIND={value!r}: expected {BIND_FORMS}")
    if re.match(r"unix:(//)?", value):
        if not re.split(r"unix:(//)?", value)[-1]:
            raise malformed
        return None
    if value.startswith("fd://"):
        if not re.fullmatch(r"[0-9]+", value[len("fd://") :]):
            raise malformed
        return None
    value = value.removeprefix("tcp://")
    if not value or re.search(r"[\s,/]", value):
        raise malformed
    if value.startswith("["):
        host, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise malformed
        port_text = rest[1:] if rest else str(DEFAULT_PORT)
    elif ":" in value:
        host, _, port_text = value.partition(":")
    else:
        host, port_text = value, str(DEFAULT_PORT)
    if not host or not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise malformed
    return host, int(port_text)


def check_settings(environ: Mapping[str, str]) -> str | None:
    """Why the serving settings in ``environ`` cannot run (one line naming the variable), or
    None: ServiceConfig's variables, gunicorn's (BIND, GUNICORN_INTEGERS, GUNICORN_LOG_LEVEL), the
    request buffering's deadlines, the store URL (a dialect and driver this install has), the
    OpenTelemetry exporter. Nothing is connected to; importing the checks is all it costs."""
    from service.config import ConfigError, ServiceConfig
    from service.observability.tracing import TracingConfig
    from service.request_buffering import ReadDeadlines
    from service.store.config import usable_database_url

    try:
        for name, default, lowest, highest in GUNICORN_INTEGERS:
            env_int(environ, name, default, lowest, highest)
        if environ.get("BIND", "").strip():
            parse_bind(environ["BIND"])
        check_multiproc_dir(environ)
    except SettingError as error:
        return str(error)
    level = environ.get("GUNICORN_LOG_LEVEL", "").strip()
    if level and level.lower() not in GUNICORN_LOG_LEVELS:
        return f"GUNICORN_LOG_LEVEL={level!r}: expected one of {', '.join(GUNICORN_LOG_LEVELS)}"
    try:
        config = ServiceConfig.from_env(environ)
        if config.store.enabled and config.store.database_url:
            usable_database_url(config.store.database_url)
    except ConfigError as error:
        return str(error)
    try:
        ReadDeadlines.from_env(environ)
    except SystemExit as error:  # it says which variable, for the workers that read it
        return str(error.code)
    try:
        TracingConfig.from_env(environ)
    except ValueError as error:
        return str(error)
    return None


def check_multiproc_dir(environ: Mapping[str, str]) -> None:
    """SettingError naming PROMETHEUS_MULTIPROC_DIR when it is set to something that is not, and
    cannot be made, a folder this process can write in (the metrics' files go there). Creates
    it when missing, as the start would."""
    path = environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not path:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        raise SettingError(f"PROMETHEUS_MULTIPROC_DIR={path!r}: not a folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as error:
        why = error.strerror or str(error)
        raise SettingError(
            f"PROMETHEUS_MULTIPROC_DIR={path!r}: cannot make the folder ({why})"
        ) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise SettingError(f"PROMETHEUS_MULTIPROC_DIR={path!r}: this user cannot write in it")


#: the longest path a unix socket can be bound to on Linux: sockaddr_un's sun_path holds 108
#: bytes with the terminating NUL (unix(7))
UNIX_PATH_MAX = 107


def check_listen_target(bind: str) -> str | None:
    """Why gunicorn could not listen on the BIND value ``bind`` of the forms ``unix:PATH`` and
    ``fd://N`` (one line naming it), or None (also for the TCP forms: check_address probes
    those). A unix socket needs an existing folder and no other file at PATH (gunicorn replaces
    an old socket file only); fd://N must be an open socket this process inherited."""
    value = bind.strip()
    named = f"BIND={value!r}"
    if value.startswith("fd://"):
        try:
            mode = os.fstat(int(value[len("fd://") :])).st_mode
        except (OSError, ValueError, OverflowError):
            return f"{named}: no such open file descriptor (pass the socket to this process)"
        if not stat.S_ISSOCK(mode):
            return f"{named}: the file descriptor is not a socket"
        return None
    if not re.match(r"unix:", value):
        return None
    path = Path(re.split(r"unix:(//)?", value)[-1])
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        return f"{named}: the socket path is {size} bytes; the limit is {UNIX_PATH_MAX}"
    if not path.parent.is_dir():
        why = "is not a folder" if path.parent.exists() else "does not exist"
        return f"{named}: no folder to make the socket in ({str(path.parent)!r} {why})"
    if not os.access(path.parent, os.W_OK | os.X_OK):
        return f"{named}: this user cannot make a socket in {str(path.parent)!r}"
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{named}: {error.strerror}"
    if not stat.S_ISSOCK(mode):
        return f"{named}: a file that is not a socket is there (gunicorn replaces old sockets only)"
    return None


def check_address(host: str, port: int, setting: str | None = None) -> str | None:
    """Why ``host:port`` cannot be listened on (one line naming it, or ``setting`` that named
    it, e.g. ``BIND='...'``), or None. Binds a socket the way gunicorn does (SO_REUSEADDR) and
    closes it at once."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    named = f"--host {host}" if setting is None else setting
    try:
        found = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE | socket.AI_NUMERICSERV
        )
    except (socket.gaierror, UnicodeError) as error:
        why = error.strerror if isinstance(error, socket.gaierror) else str(error)
        return f"{named}: not an address or a name this machine can resolve ({why})"
    family, kind, protocol, _, address = found[0]
    if setting is not None:
        shown = setting
    with socket.socket(family, kind, protocol) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                return f"{shown}: the address is already in use (another server listens there)"
            return f"{shown}: cannot listen there: {error.strerror}"
    return None


def check_models_dir(args: argparse.Namespace, environ: Mapping[str, str]) -> str | None:
    """Why the model repository cannot be served (one line), or None when it has a version.

    Only the cheap checks: the folder exists and holds a complete version (the pinned one with
    --model-version); the workers validate the version itself.
    """
    from service.config import ServiceConfig
    from service.model.contract import MODEL_NAME
    from service.model.repository import ModelRepository

    # the settings as the workers will read them (ServiceConfig; the flags are in ``environ``
    # by now, gunicorn_command put them there)
    config = ServiceConfig.from_env(environ)
    flag = args.models_dir is not None
    root = config.model_dir
    named = (
        f"--models-dir {args.models_dir}"
        if flag
        else f"MODEL_DIR={root}"
        if environ.get("MODEL_DIR", "").strip()
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
    pinned = config.model_version
    if pinned is not None and pinned not in numbers:
        setting = (
            f"--model-version {pinned}"
            if args.model_version is not None
            else f"MODEL_VERSION={pinned}"
        )
        return f"{setting}: {repository.model_dir} has {numbers}"
    return None


@quiet_on_closed_output
def main(argv: Sequence[str] | None = None) -> int:
    """Parse the flags, check the settings, the model repository and the address, then replace
    this process with gunicorn (signals then reach it directly). Exit 2 with one line naming the
    variable when a setting is bad, 3 when there is nothing to serve, 4 when the address cannot
    be bound (--host/--port, else BIND: see build_parser)."""
    args = build_parser().parse_args(argv)
    command, env = gunicorn_command(args, os.environ)
    problem = check_settings(env)
    if problem is not None:
        print(f"mnist-serve: {problem}", file=sys.stderr)
        return EXIT_BAD_SETTING
    problem = check_models_dir(args, env)
    if problem is not None:
        print(f"mnist-serve: {problem}", file=sys.stderr)
        return EXIT_NO_MODELS
    bind = bind_from_environment(args, os.environ)
    if bind is None:
        problem = check_address(*flag_address(args))
    else:
        address = parse_bind(bind)  # well formed: check_settings said so
        problem = (
            check_listen_target(bind)
            if address is None
            else check_address(*address, setting=f"BIND={bind!r}")
        )
    if problem is not None:
        print(f"mnist-serve: {problem}", file=sys.stderr)
        return EXIT_ADDRESS
    os.execve(command[0], command, env)
    return 0  # not reached: execve replaces the process


if __name__ == "__main__":
    raise SystemExit(main())
