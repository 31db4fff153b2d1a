"""Integration fixtures: a real gunicorn serving the real app on a free 127.0.0.1 port.

`gunicorn_server(env={...}, workers=2)` starts `gunicorn -c service/gunicorn.conf.py
'service.app:create_app()'` and returns a RunningServer (`.url`, `.log()`, `.stop()`); every
server a test starts is stopped after it. `committed_server` is one server on the committed
models/ for the whole session (read-only tests only: do not publish into it).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.integration.chromium import CHROMIUM, CHROMIUM_ARGS, unavailable

GUNICORN_CONF = REPO_ROOT / "service" / "gunicorn.conf.py"
APP = "service.app:create_app()"
READY_PATH = "/v2/health/ready"
#: the line a worker logs once its model passed validation (service.model.predictor)
WORKER_READY_MARK = " serving mnist version "
START_TIMEOUT = 60.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def bound_socket() -> socket.socket:
    """A TCP socket bound to a free 127.0.0.1 port, for gunicorn to inherit (``BIND=fd://N``).

    The port stays ours from the moment it is chosen: with free_port() another process (a
    parallel test run, or a client connection given that ephemeral port) could take it between
    the probe closing and gunicorn binding it. Not listening yet: until gunicorn listens on it,
    a connection is refused, as it would be to a port gunicorn had not bound yet."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.set_inheritable(True)
    return sock


def loopback_sockets(port: int) -> list[list[str]]:
    """The kernel's rows (/proc/net/tcp, split) of the sockets whose local end is
    127.0.0.1:``port``: columns sl, local, remote, state (01 established, 08 close-wait, 0A
    listening), tx_queue:rx_queue (a listener's rx_queue: connections waiting for accept())."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return [row for row in rows if row[1] == wanted]


#: reserved_port(): a port number kept free for the server the test starts
ReservePort = Callable[[], int]


@pytest.fixture
def reserved_port() -> Iterator[ReservePort]:
    """A factory of free 127.0.0.1 ports, each kept bound (never listening) until the test ends.

    For a server started with a port number (mnist-serve --port, gunicorn --bind): it binds with
    SO_REUSEADDR, as gunicorn does, so it can listen there; nothing else can take the port
    meanwhile (a socket without SO_REUSEADDR cannot bind it and the kernel hands it to no
    bind(0) or outgoing connection), and a connection is refused until the server listens."""
    held: list[socket.socket] = []

    def reserve() -> int:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.append(sock)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])

    yield reserve
    for sock in held:
        sock.close()


@dataclass
class RunningServer:
    """A gunicorn master started by a test, its URL and its combined log."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    workers: int
    env: dict[str, str] = field(repr=False)

    def log(self) -> str:
        """Everything gunicorn and the app wrote so far."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def worker_ready_count(self) -> int:
        """How many workers have logged that their model passed validation."""
        return self.log().count(WORKER_READY_MARK)

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """Stop gunicorn gracefully (SIGTERM, then SIGKILL); its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        return int(self.process.returncode)


class ServerFailedToStart(RuntimeError):
    """gunicorn exited or did not become ready; the message carries its log."""


def start_gunicorn(
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    *,
    workers: int = 2,
    threads: int = 4,
    wait: bool = True,
    timeout: float = START_TIMEOUT,
) -> RunningServer:
    """Start gunicorn with the project's config and ``env`` on a free port; wait until ready."""
    log_dir.mkdir(parents=True, exist_ok=True)
    listener = bound_socket()
    port = int(listener.getsockname()[1])
    metrics_dir = log_dir / f"metrics-{port}"
    metrics_dir.mkdir()
    full_env = {
        **os.environ,
        "BIND": f"fd://{listener.fileno()}",  # gunicorn listens on the socket it inherits
        "WEB_CONCURRENCY": str(workers),
        "GUNICORN_THREADS": str(threads),
        "MODEL_DIR": str(COMMITTED_MODELS),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
        "STORE_PATH": str(log_dir / f"store-{port}.sqlite3"),
        "PYTHONUNBUFFERED": "1",
        **(env or {}),
    }
    log_path = log_dir / f"gunicorn-{port}.log"
    bin_dir = Path(sys.executable).parent
    with listener, log_path.open("wb") as log_file:  # gunicorn holds its own copy
        process = subprocess.Popen(
            [str(bin_dir / "gunicorn"), "-c", str(GUNICORN_CONF), APP],
            cwd=REPO_ROOT,
            env=full_env,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            pass_fds=(listener.fileno(),),
        )
    server = RunningServer(
        url=f"http://127.0.0.1:{port}",
        process=process,
        log_path=log_path,
        workers=workers,
        env=full_env,
    )
    if wait:
        try:
            wait_until_ready(server, timeout)
        except ServerFailedToStart:
            server.stop()
            raise
    return server


def wait_until_ready(server: RunningServer, timeout: float = START_TIMEOUT) -> None:
    """Return once every worker has loaded its model and the server answers HTTP."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not server.alive():
            raise ServerFailedToStart(
                f"gunicorn exited with {server.process.returncode}:\n{server.log()}"
            )
        if server.worker_ready_count() >= server.workers and _answers(server.url):
            return
        time.sleep(0.1)
    raise ServerFailedToStart(f"gunicorn was not ready within {timeout:.0f} s:\n{server.log()}")


def _answers(url: str) -> bool:
    try:
        response = requests.get(url + READY_PATH, timeout=2)
    except requests.RequestException:
        return False
    return response.status_code == 200


StartServer = Callable[..., RunningServer]


@pytest.fixture
def gunicorn_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """A factory: gunicorn_server(env={"MODEL_DIR": ...}, workers=2) -> a ready RunningServer."""
    started: list[RunningServer] = []
    log_dir = tmp_path_factory.mktemp("gunicorn")

    def start(env: Mapping[str, str] | None = None, **options: object) -> RunningServer:
        server = start_gunicorn(log_dir, env, **options)  # type: ignore[arg-type]
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def committed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One gunicorn on the committed models/ for the whole session (read-only tests)."""
    server = start_gunicorn(tmp_path_factory.mktemp("committed-server"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module (Debian's, never a downloaded one)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright for Python is not installed (pip install playwright)")
    if not CHROMIUM.exists():
        unavailable(f"no Chromium at {CHROMIUM}: install Debian's chromium package")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield browser
        browser.close()
