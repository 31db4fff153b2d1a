"""The one gunicorn configuration: mnist-serve, make serve, the tests and the Docker image use it.

Settings come from the environment (BIND, WEB_CONCURRENCY, GUNICORN_THREADS, GUNICORN_TIMEOUT;
the worker reads REQUEST_HEAD_TIMEOUT, REQUEST_BODY_TIMEOUT and MAX_BODY_BYTES itself);
flags on gunicorn's command line (e.g. --bind 0.0.0.0:8000 in Docker) override them.
"""

import gc
import os
import re
import shutil
import signal
import sys
import tempfile
from typing import Any

from service.observability.request_log import logging_config
from service.serve import GUNICORN_INTEGERS, GUNICORN_LOG_LEVELS, SettingError, env_int


def _env_int(name: str) -> int:
    """A bad value is reported by on_starting (check_settings: one line, exit 2); until then the
    default stands in."""
    _, default, lowest, highest = next(row for row in GUNICORN_INTEGERS if row[0] == name)
    try:
        return env_int(os.environ, name, default, lowest, highest)
    except SettingError:
        return default


# onnxruntime (1.29 and later) starts a telemetry uploader that warns in the log when it cannot
# write its device id (the image's user has no home); the service sends nothing anywhere
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

bind = [os.environ.get("BIND", "").strip() or "127.0.0.1:8000"]
workers = _env_int("WEB_CONCURRENCY")
# threads let one worker overlap JSON parsing and I/O; onnxruntime runs are thread-safe.
# gthread that reads each request whole in the event loop, within REQUEST_HEAD_TIMEOUT and
# REQUEST_BODY_TIMEOUT, before a thread sees it: slow or idle clients hold no thread; and that
# accepts only while the worker holds the fewest open connections, so keep-alive connections
# spread evenly over the workers (service/connection_balance.py).
worker_class = "service.connection_balance.BalancedThreadWorker"
threads = _env_int("GUNICORN_THREADS")
timeout = _env_int("GUNICORN_TIMEOUT")
graceful_timeout = 20
keepalive = 5
# no preload: every worker creates its own onnxruntime session after the fork
preload_app = False
limit_request_line = 4094
limit_request_fields = 64
limit_request_field_size = 8190
# the app logs one JSON line per request itself (service.observability.request_log)
accesslog = None
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "").strip().lower() or "info"
if loglevel not in GUNICORN_LOG_LEVELS:
    loglevel = "info"  # on_starting stops the start, naming the variable
# every line in one JSON format: gunicorn's own error (and, if switched on, access) lines and
# every logger of the service and its libraries, as the request lines are written
logconfig_dict = logging_config(loglevel, access=accesslog is not None)
# builds the access log's fields only when there is an access log (request_log.GunicornLogger)
logger_class = "service.observability.request_log.GunicornLogger"
proc_name = "mnist-serve"
# gunicorn's control socket has one default path per user: two servers would fight over it
control_socket_disable = True
# heartbeat files in RAM: a worker busy on a slow disk is not mistaken for a hung one
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None

_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_created_multiproc_dir: list[str] = []
#: the names prometheus_client gives its multiprocess files (values.MultiProcessValue, and
#: service.observability.metric_files): ``<type>_<pid>.db``, a gauge's type with its mode
#: (gauge_all, gauge_livesum, gauge_mostrecent, ...); nothing else in the folder is ours
METRIC_FILE = re.compile(
    r"(counter|histogram|summary|gauge_(live)?(all|min|max|sum|mostrecent))_[0-9]+\.db"
)


def prepare_multiproc_dir(path: str) -> None:
    """Make the metrics folder ``path`` and delete the sample files a previous run left there
    (they would add old counts to this one): prometheus_client's files only (METRIC_FILE), never
    another file that shares the folder, such as a SQLite store."""
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if METRIC_FILE.fullmatch(name):
            os.unlink(os.path.join(path, name))


def _prepare_multiproc_dir() -> None:
    path = os.environ.get(_MULTIPROC_ENV, "").strip()
    if not path:
        path = tempfile.mkdtemp(prefix="mnist-metrics-")
        _created_multiproc_dir.append(path)
        os.environ[_MULTIPROC_ENV] = path  # the workers inherit it at fork
    prepare_multiproc_dir(path)


def on_starting(server: Any) -> None:
    """In the master, before any worker: the metrics folder and the connection balance table,
    inherited at fork; and the import child_exit needs, done now rather than while Ctrl-C waits
    (it takes seconds on a busy host). First the settings: a bad one stops the start here, before
    anything listens or forks, with one line naming the variable (exit 2, as mnist-serve)."""
    from service.connection_balance import create_board
    from service.request_buffering import hold_stop_signals_across_fork
    from service.serve import (
        EXIT_ADDRESS,
        EXIT_BAD_SETTING,
        MAX_WORKERS,
        check_listen_target,
        check_settings,
    )

    problem = check_settings(os.environ)
    if problem is None and not 1 <= server.cfg.workers <= MAX_WORKERS:
        problem = f"--workers {server.cfg.workers}: expected a whole number from 1 to {MAX_WORKERS}"
    if problem is not None:
        server.log.error(problem)
        sys.exit(EXIT_BAD_SETTING)
    for bind in server.cfg.bind:  # unix: and fd:// ones; gunicorn itself retries TCP ones
        problem = check_listen_target(bind)
        if problem is not None:
            server.log.error(problem)
            sys.exit(EXIT_ADDRESS)

    try:
        _prepare_multiproc_dir()
    except OSError as error:
        server.log.error(f"{_MULTIPROC_ENV}: cannot prepare the metrics folder ({error})")
        sys.exit(EXIT_BAD_SETTING)
    create_board(server.cfg.workers)
    hold_stop_signals_across_fork()
    import service.observability.metrics  # noqa: F401


def when_ready(server: Any) -> None:
    """In the master, once its own handlers are in place: a master started by a re-exec (USR2)
    inherits the stop signals blocked by the fork it came from; let them in."""
    from service.request_buffering import STOP_SIGNALS

    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def pre_fork(server: Any, worker: Any) -> None:
    """In the master, before each worker's fork: its slot in the connection balance table."""
    from service.connection_balance import assign_slot

    assign_slot(worker)


def post_fork(server: Any, worker: Any) -> None:
    """In each new worker: gunicorn answers malformed HTTP itself, in HTML unless told otherwise;
    the service's writer answers in JSON, with an X-Request-ID and a request log line."""
    from gunicorn import util

    from service.request_buffering import write_error

    # the one function gunicorn's Worker.handle_error writes with; every other path is Flask's
    util.write_error = write_error


def freeze_loaded_heap() -> None:
    """In a worker, once its app is loaded: everything allocated so far (modules, the app, the
    model's session) lives as long as the worker, so it leaves the cyclic collector's view
    (``gc.freeze``, Python 3.7+). Full collections, which the request path's short-lived objects
    (spans, log fields, metric samples) trigger now and then, then walk only what came later
    instead of the whole heap again; nothing is ever freed early or late by it."""
    gc.collect()
    gc.freeze()


def post_worker_init(worker: Any) -> None:
    """In each worker's main thread: start hot reload and its SIGHUP handler; report capacity;
    freeze the loaded heap; the stop signals in (SIGINT and SIGQUIT:
    service.request_buffering.leave_now, from the worker's init_signals)."""
    from service.app import watch_models
    from service.observability.metrics import set_capacity

    watch_models(worker.wsgi)
    set_capacity(worker.cfg.threads)
    freeze_loaded_heap()
    let_stop_signals_in(worker)


def let_stop_signals_in(worker: Any) -> None:
    """A worker of gunicorn's own class (e.g. ``--worker-class gthread``): SIGINT and SIGQUIT
    exit at once (service.request_buffering.leave_now, as BufferingThreadWorker has them), then
    the stop signals the master held across the fork (hold_stop_signals_across_fork) are let in.

    gunicorn's gthread ``handle_quit`` first shuts its thread pool down, taking the pool's lock: a
    Ctrl-C that lands while the main thread is inside ``submit()`` (holding that lock) waits for
    itself, and the worker hangs until graceful_timeout. The signals are let in here, from
    post_worker_init, after the worker's init_signals: letting them in any earlier (post_fork)
    reopens the window the hold closes, where a Ctrl-C runs the master's inherited handler and
    is lost. (BufferingThreadWorker does both from its own init_signals.)"""
    from service.request_buffering import STOP_SIGNALS, BufferingThreadWorker, leave_now

    if not isinstance(worker, BufferingThreadWorker):
        signal.signal(signal.SIGINT, leave_now)
        signal.signal(signal.SIGQUIT, leave_now)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def worker_int(worker: Any) -> None:
    """gunicorn's hook for a worker's SIGINT/SIGQUIT, in case its own handler runs: exit now."""
    from service.request_buffering import leave_now

    leave_now(signal.SIGQUIT, None)


def worker_exit(server: Any, worker: Any) -> None:
    """In a worker, last, once a graceful stop (SIGTERM) let its requests finish: write what the
    prediction recorder still holds (the answers of the last flush interval), within the
    graceful timeout, so that nothing answered is lost."""
    from service.app import stop_recording

    stop_recording(getattr(worker, "wsgi", None), timeout=max(1.0, worker.cfg.graceful_timeout / 2))


def child_exit(server: Any, worker: Any) -> None:
    """In the master: drop the dead worker's live gauges from /metrics, free its balance slot."""
    from service.connection_balance import release_slot
    from service.observability.metrics import mark_worker_dead

    mark_worker_dead(worker.pid)
    release_slot(worker)


def on_exit(server: Any) -> None:
    """In the master, last: remove the metrics folder if this run created it."""
    for path in _created_multiproc_dir:
        shutil.rmtree(path, ignore_errors=True)
