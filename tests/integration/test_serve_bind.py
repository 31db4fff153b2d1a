"""mnist-serve listens where BIND says when neither --host nor --port is given (a flag wins over
it); a malformed BIND is one line naming it and exit 2 before anything listens."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.integration.conftest import ReservePort


def _serve(log: Path, bind: str, store: Path, *flags: str) -> subprocess.Popen[bytes]:
    """``python -m service.serve`` with BIND and ``flags`` (no --port unless given), in a
    session of its own so that the whole group can be stopped."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "BIND": bind,
        "STORE_PATH": str(store),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.serve", "--models-dir", str(COMMITTED_MODELS), *flags],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_mnist_serve_listens_where_bind_says(tmp_path: Path, reserved_port: ReservePort) -> None:
    port = reserved_port()
    log = tmp_path / "serve.log"
    process = _serve(log, f"127.0.0.1:{port}", tmp_path / "store.sqlite3", "--workers", "1")
    try:
        deadline = time.monotonic() + 90
        while True:
            assert process.poll() is None, log.read_text(errors="replace")
            assert time.monotonic() < deadline, log.read_text(errors="replace")
            try:
                ready = requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2)
            except requests.RequestException:
                time.sleep(0.1)
                continue
            if ready.status_code == 200:
                break
            time.sleep(0.1)
        assert ready.json() == {"ready": True}
    finally:
        _stop(process)
    text = log.read_text(errors="replace")
    assert f"Listening at: http://127.0.0.1:{port} " in text
    assert "127.0.0.1:8000" not in text


def test_a_flag_wins_over_bind(tmp_path: Path, reserved_port: ReservePort) -> None:
    """--port given: BIND's address is not where it listens (a port in use there is no bar)."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        port = reserved_port()
        log = tmp_path / "serve.log"
        process = _serve(log, bind, tmp_path / "store.sqlite3", "--port", str(port))
        try:
            deadline = time.monotonic() + 90
            while f"Listening at: http://127.0.0.1:{port} " not in log.read_text(errors="replace"):
                assert process.poll() is None, log.read_text(errors="replace")
                assert time.monotonic() < deadline, log.read_text(errors="replace")
                time.sleep(0.1)
        finally:
            _stop(process)


@pytest.mark.parametrize("bind", ["127.0.0.1:80a", "127.0.0.1:18601,127.0.0.1:18602"])
def test_a_malformed_bind_is_one_line_and_exit_2_before_listening(
    bind: str, tmp_path: Path
) -> None:
    log = tmp_path / "serve.log"
    process = _serve(log, bind, tmp_path / "store.sqlite3")
    try:
        assert process.wait(timeout=60) == 2
    finally:
        _stop(process)
    lines = log.read_text().strip().splitlines()
    assert lines == [
        f"mnist-serve: BIND={bind!r}: expected one address: HOST:PORT, [IPv6]:PORT, unix:PATH "
        "or fd://N"
    ]


def test_a_bind_address_in_use_is_one_line_naming_bind_and_exit_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        bind = f"127.0.0.1:{taken.getsockname()[1]}"
        log = tmp_path / "serve.log"
        process = _serve(log, bind, tmp_path / "store.sqlite3")
        try:
            assert process.wait(timeout=60) == 4
        finally:
            _stop(process)
    lines = log.read_text().strip().splitlines()
    assert lines == [
        f"mnist-serve: BIND={bind!r}: the address is already in use (another server listens there)"
    ]
