"""Request ids and one structured JSON log line per request (never pixels or bodies).

The id comes from the client's X-Request-ID header when it is a sane token, otherwise it is
32 fresh hex digits; service.observability.wsgi echoes it in the X-Request-ID response header of
every response, errors included, and writes the line.
"""

from __future__ import annotations

import itertools
import logging
import os
import re
import secrets
import sys
import time
from datetime import UTC, datetime
from typing import Any

import orjson

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


_LINE_BREAK_ESCAPES = {0x85: "\\u0085", 0x2028: "\\u2028", 0x2029: "\\u2029"}


_ISO_SECOND = "%Y-%m-%dT%H:%M:%S"
_second_text: tuple[int, str] = (0, "1970-01-01T00:00:00")


def iso_time(created: float) -> str:
    """``created`` (seconds since the epoch) as UTC ISO 8601 with milliseconds."""
    global _second_text
    second = int(created)
    cached = _second_text
    if cached[0] != second:  # formatted once per second, not once per line
        cached = _second_text = (second, datetime.fromtimestamp(second, UTC).strftime(_ISO_SECOND))
    return f"{cached[1]}.{int((created - second) * 1000):03d}+00:00"


def render_line(created: float, level: str, logger: str, event: str, fields: dict[str, Any]) -> str:
    """One log line as JSON: time, level, logger and event first, then ``fields``."""
    line: dict[str, Any] = {
        "ts": iso_time(created),
        "level": level,
        "logger": logger,
        "event": event,
    }
    line.update(fields)
    # default=str: a numpy integer or a Path in a field must not cost the log line
    text = orjson.dumps(line, default=str).decode()
    if not text.isascii():
        # orjson escapes control characters but not these, which str.splitlines() and
        # other line-based readers treat as line ends
        text = text.translate(_LINE_BREAK_ESCAPES)
    return text


class JsonLineFormatter(logging.Formatter):
    """Formats a record as one JSON object: time, level, message and the record's `fields`."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = dict(getattr(record, "fields", {}))
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return render_line(
            record.created, record.levelname.lower(), record.name, record.getMessage(), fields
        )


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time of each record (pytest swaps it per test)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        # StreamHandler.__init__ assigns a stream; the property above always wins.
        pass


def request_logger() -> logging.Logger:
    """The request logger, writing JSON lines to stderr; set up once per process."""
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(handler, StderrHandler) for handler in logger.handlers):
        handler = StderrHandler()
        handler.setFormatter(JsonLineFormatter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        # Its own handler only: the root logger (or gunicorn's) must not print the line again.
        logger.propagate = False
    return logger


_request_logger = logging.getLogger(LOGGER_NAME)  # the same object for the process's lifetime


def _shipped_handler(logger: logging.Logger) -> StderrHandler | None:
    """The logger's one StderrHandler when the logger is configured as request_logger() left it."""
    handlers = logger.handlers
    if len(handlers) != 1 or logger.filters or logger.propagate:
        return None
    handler = handlers[0]
    if type(handler) is not StderrHandler or handler.filters:
        return None
    if type(handler.formatter) is not JsonLineFormatter or handler.level > logging.INFO:
        return None
    return handler


def log_request(fields: dict[str, Any]) -> None:
    """Write the one log line of a finished request (``fields`` as request_fields() makes them).

    With the logger as request_logger() sets it up, the line is rendered and written here: the
    same line the logging module would write, without building a LogRecord on every request
    (that cost ~30 us of a ~150 us request). Any other configuration (more handlers, filters,
    another level) goes through ``logging`` as usual.
    """
    logger = _request_logger
    if not logger.isEnabledFor(logging.INFO):
        return
    handler = _shipped_handler(logger)
    if handler is None:
        logger.info("request", extra={"fields": fields})
        return
    text = render_line(time.time(), "info", LOGGER_NAME, "request", fields)
    try:
        with handler.lock:  # type: ignore[union-attr]  # StreamHandler always has its lock
            stream = handler.stream
            stream.write(text + "\n")
            stream.flush()
    except Exception:
        # a closed or broken stderr must not fail the request: logging reports it its own way
        logger.info("request", extra={"fields": fields})


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
