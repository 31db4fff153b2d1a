"""Request ids, and the service's logs: every line one JSON object, written by structlog.

The id comes from the client's X-Request-ID header when it is a sane token, otherwise it is
32 hex digits (a random per-process prefix and a counter); service.observability.wsgi echoes it
in the X-Request-ID response header of every response, errors included, and writes one request
line (never pixels or bodies).

Logging is structlog in its documented fast setup (structlog.org, "Performance"): a filtering
bound logger, cached on first use, orjson rendering to bytes, a BytesLogger writing each line
once to stderr. Lines from the standard library's ``logging`` (the service's modules, gunicorn's
error and access logs) go through structlog's ProcessorFormatter with the same renderer, so
every line the service writes has one format: ``ts``, ``level``, ``logger``, ``event``, fields.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import sys
import threading
from typing import Any

import orjson
import structlog
from gunicorn.glogging import Logger as GunicornBaseLogger
from structlog.typing import EventDict, Processor, WrappedLogger

REQUEST_ID_HEADER = "X-Request-ID"
MAX_REQUEST_ID_LENGTH = 128
#: visible ASCII only: safe to echo in a header and to grep in logs, no spaces or control bytes
REQUEST_ID_PATTERN = re.compile(rf"[!-~]{{1,{MAX_REQUEST_ID_LENGTH}}}")
LOGGER_NAME = "mnist.requests"
#: the route of a request that matched no route (404, 405): one value, not one per path
UNMATCHED_ROUTE = "<unmatched>"
MAX_LOGGED_PATH = 256


def valid_request_id(candidate: str | None) -> bool:
    """True when a client-sent id is 1..128 visible ASCII characters."""
    return candidate is not None and REQUEST_ID_PATTERN.fullmatch(candidate) is not None


class _ProcessState:
    """Per-process values, re-made in a forked child: its pid and its request id source."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        # one random 64-bit prefix per process, then a counter: as unique as a UUID4 for log
        # correlation, without a getrandom() call on every request
        self.id_prefix = secrets.token_hex(8)
        self.id_counter = itertools.count()


_process = _ProcessState()


def _after_fork_in_child() -> None:
    global _process
    _process = _ProcessState()


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_request_id() -> str:
    """A fresh id, unique across workers and restarts: 32 hex digits (random prefix + counter)."""
    state = _process
    return f"{state.id_prefix}{next(state.id_counter):016x}"


def request_id_from(sent: str | None) -> str:
    """The id of a request whose X-Request-ID header is ``sent``: that one if valid, else new."""
    return sent if sent is not None and valid_request_id(sent) else new_request_id()


#: code points orjson leaves as they are but that str.splitlines() and other readers end lines at
_LINE_BREAKS = (
    (b"\xc2\x85", b"\\u0085"),
    (b"\xe2\x80\xa8", b"\\u2028"),
    (b"\xe2\x80\xa9", b"\\u2029"),
)


#: the keys every line starts with, in this order; the line's own fields follow
HEAD_KEYS = ("ts", "level", "logger", "event")
#: the integers orjson writes (64 bits, signed or not)
_ORJSON_INTEGERS = range(-(2**63), 2**64)
#: how deep writable() goes into lists and dicts (orjson writes 254 levels); deeper is str()
_WRITABLE_DEPTH = 64


def writable(value: Any, depth: int = 0) -> Any:
    """``value`` with what orjson cannot write made text, for a line that must still be written:
    an integer beyond 64 bits (an absurd Content-Length) as its digits, a string that is not valid
    text (a lone surrogate) with that code point escaped (``\\ud800``), a key that is not a
    string as its str(), and lists and dicts too deep as their str()."""
    if isinstance(value, str):
        return value if value.isascii() else value.encode("utf-8", "backslashreplace").decode()
    if isinstance(value, int) and not isinstance(value, bool):
        if value in _ORJSON_INTEGERS:
            return value
        try:
            return str(value)
        except ValueError:  # more digits than str() writes (sys.get_int_max_str_digits())
            return f"an integer of {value.bit_length()} bits"
    if isinstance(value, dict | list | tuple) and depth >= _WRITABLE_DEPTH:
        return _writable_text(value)
    if isinstance(value, dict):
        return {writable(str(key)): writable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [writable(item, depth + 1) for item in value]
    return value  # None, a bool, a float, or a type orjson writes or default= makes text


def _writable_text(value: Any) -> str:
    text: str = writable(str(value))
    return text


def json_line(event: dict[str, Any], **_options: Any) -> bytes:
    """One log line as JSON bytes (no newline): head keys first, anything unknown as str(), and
    a value orjson cannot write made :func:`writable`, so that the line is always written."""
    line = {key: event[key] for key in HEAD_KEYS if key in event}
    line.update(event)
    try:
        data = orjson.dumps(line, default=str)
    except TypeError:  # orjson.JSONEncodeError is one: a value orjson cannot write
        data = orjson.dumps(writable(line), default=_writable_text)
    if not data.isascii():
        for raw, escaped in _LINE_BREAKS:
            data = data.replace(raw, escaped)
    return data


def _json_text(event: dict[str, Any], **options: Any) -> str:
    return json_line(event, **options).decode()


def _add_pid(_logger: WrappedLogger, _name: str, event: EventDict) -> EventDict:
    event.setdefault("pid", os.getpid())
    return event


#: what every line gets before rendering: its level and its UTC time
_STAMPS: list[Processor] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True, key="ts"),
]


class _Stderr:
    """stderr's bytes as they are at each write (a test may swap sys.stderr)."""

    def write(self, data: bytes) -> None:
        sys.stderr.buffer.write(data)

    def flush(self) -> None:
        sys.stderr.flush()


_configured = threading.Lock()


def configure_logging() -> None:
    """structlog's fast setup, writing JSON lines to stderr (idempotent; call at the edge)."""
    with _configured:
        if structlog.is_configured():
            return
        structlog.configure(
            processors=[*_STAMPS, structlog.processors.JSONRenderer(serializer=json_line)],
            wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
            logger_factory=structlog.BytesLoggerFactory(file=_Stderr()),  # type: ignore[arg-type]
            cache_logger_on_first_use=True,
        )


def json_formatter() -> structlog.stdlib.ProcessorFormatter:
    """A ``logging`` formatter that writes records as the same JSON lines (with ``pid``)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_logger_name,
            *_STAMPS,
            _add_pid,
            structlog.processors.format_exc_info,
        ],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.JSONRenderer(serializer=_json_text),
        ],
    )


def logging_config(level: str = "info", *, access: bool = False) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` dict: the root logger, gunicorn's error log and every
    library's logger write JSON lines to stderr (gunicorn's ``logconfig_dict``).

    gunicorn's access log is written only when ``access`` is true: the request line of
    service.observability.wsgi already says more about every request.
    """
    formatter = {"()": json_formatter}
    handler = {"class": "logging.StreamHandler", "formatter": "json", "stream": "ext://sys.stderr"}
    gunicorn_logger = {"level": level.upper(), "handlers": ["stderr"], "propagate": False}
    access_logger = {**gunicorn_logger, "level": "INFO", "handlers": ["stderr"] if access else []}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": formatter},
        "handlers": {"stderr": handler},
        "root": {"level": "INFO", "handlers": ["stderr"]},
        "loggers": {
            "gunicorn.error": {**gunicorn_logger, "qualname": "gunicorn.error"},
            "gunicorn.access": {**access_logger, "qualname": "gunicorn.access"},
        },
    }


class GunicornLogger(GunicornBaseLogger):  # type: ignore[misc]  # gunicorn is untyped
    """gunicorn's logger (its ``logger_class``), writing the access log only when asked for.

    gunicorn counts its access log as on whenever a logging config is given (``logconfig_dict``
    is, for the JSON lines), and then builds every request's access-log atoms (a dict of some
    twenty fields, a formatted time) and a log record before the access logger, which has no
    handler here, drops them: a tenth of a worker's CPU under single-image load, for nothing.
    With no ``accesslog`` setting (``--access-logfile``) there is no access log to write, so
    nothing is built; with one, gunicorn's own access log runs as before."""

    @property
    def access_log_enabled(self) -> bool:
        """True only with an ``accesslog`` setting (read by gunicorn's protocol handlers)."""
        return bool(self.cfg.accesslog)

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        """gunicorn's access-log line of one request, when ``accesslog`` is set."""
        if self.cfg.accesslog:
            super().access(resp, req, environ, request_time)


_request_log: Any = None


def log_request(fields: dict[str, Any]) -> None:
    """Write the one log line of a finished request (``fields`` as line_fields() makes them)."""
    global _request_log
    if _request_log is None:  # once per process: the bound logger of the configured setup
        configure_logging()
        _request_log = structlog.get_logger().bind(logger=LOGGER_NAME)
    try:
        _request_log.info("request", **fields)
    except Exception:  # a closed or broken stderr must not fail the request
        logging.getLogger(LOGGER_NAME).exception("the request line could not be written")


def line_fields(
    *,
    request_id: str,
    method: str,
    route: str,
    path: str,
    status: int,
    latency_ms: float | None,
    model_version: int | None,
    batch_size: int | None,
    request_bytes: int | None,
) -> dict[str, Any]:
    """What the log line says about one finished request: ids, route, outcome, sizes, timing."""
    return {
        "request_id": request_id,
        "method": method,
        "route": route,
        "path": path[:MAX_LOGGED_PATH],
        "status": status,
        "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        "model_version": model_version,
        "batch_size": batch_size,
        "request_bytes": request_bytes,
        "pid": _process.pid,  # which gunicorn worker answered
    }
