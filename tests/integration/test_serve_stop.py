"""mnist-serve as a user runs it (what `make serve` execs): Ctrl-C stops it within 2 s every time,
without the "Perhaps out of memory?" line; a missing model repository is one line and exit 3
before anything listens."""

from __future__ import annotations

import contextlib
import json
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
from tests.integration.conftest import ReservePort, free_port

#: starts and Ctrl-Cs in a row (about 3 s each); the boot-time race has its own deterministic test
#: below (test_a_stop_signal_during_a_gthread_workers_boot_is_not_lost), so these look for the rest
STOPS = 10
STOP_LIMIT_SECONDS = 2.0


def _serve(
    port: int, log: Path, *extra: str, settings: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``python -m service.serve`` in a session of its own: a terminal's foreground group."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **(settings or {})}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "service.serve", "--port", str(port), *extra],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "mnist-serve exited before it was ready"
        try:
            if requests.get(url + "/v2/health/ready", timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise AssertionError("mnist-serve was not ready in time")


def _stuck_workers(master: int) -> str:
    """What the kernel says of the master's children still alive: state, pending, blocked and
    caught signals, and where each thread waits (for a failure message)."""
    lines = []
    children = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True)
    for pid in children.stdout.split():
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            keep = ("State", "SigPnd", "ShdPnd", "SigBlk", "SigCgt", "Threads")
            lines.append(
                f"worker {pid}: " + "; ".join(row for row in status if row.split(":")[0] in keep)
            )
            for task in sorted(Path(f"/proc/{pid}/task").iterdir()):
                comm = (task / "comm").read_text().strip()
                lines.append(
                    f"  thread {task.name} {comm}: waits in {(task / 'wchan').read_text()}"
                )
    return "\n".join(lines) or "no worker left"


@pytest.mark.slow
def test_ctrl_c_stops_mnist_serve_within_2_s_every_time(
    tmp_path: Path, reserved_port: ReservePort
) -> None:
    log = tmp_path / "serve.log"
    seconds = []
    stuck = []
    for _ in range(STOPS):
        port = reserved_port()
        url = f"http://127.0.0.1:{port}"
        process = _serve(
            port,
            log,
            *("--models-dir", str(COMMITTED_MODELS), "--workers", "2"),
            settings={"STORE_PATH": str(tmp_path / "store.sqlite3")},
        )
        try:
            _wait_ready(url, process)
            # busy the way a user leaves it: requests answered, a keep-alive connection open
            session = requests.Session()
            for _ in range(4):
                assert session.get(url + "/v2/health/live", timeout=5).status_code == 200
            idle = socket.create_connection(("127.0.0.1", port))
            started = time.monotonic()
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does: the whole foreground group
            try:
                try:
                    process.wait(timeout=STOP_LIMIT_SECONDS)
                except subprocess.TimeoutExpired:
                    stuck.append(_stuck_workers(process.pid))
                    process.wait(timeout=30)
            finally:
                seconds.append(time.monotonic() - started)
                idle.close()
                session.close()
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    text = log.read_text(errors="replace")
    print(f"Ctrl-C stops: {', '.join(f'{s:.2f}' for s in seconds)} s; max {max(seconds):.2f} s")
    assert not stuck, "\n".join(stuck)
    assert "SIGKILL" not in text and "out of memory" not in text
    assert max(seconds) < STOP_LIMIT_SECONDS, seconds


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_gunicorns_own_worker_class_stops_too(
    stop: signal.Signals, tmp_path: Path, reserved_port: ReservePort
) -> None:
    """With --worker-class gthread (no init_signals of ours) the workers still get the stop
    signals the master holds across fork(): a stop takes seconds, not graceful_timeout."""
    log = tmp_path / "serve.log"
    port = reserved_port()
    process = _serve(
        port,
        log,
        *("--models-dir", str(COMMITTED_MODELS), "--workers", "2"),
        settings={
            "GUNICORN_CMD_ARGS": "--worker-class gthread",
            "STORE_PATH": str(tmp_path / "store.sqlite3"),
        },
    )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", process)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    _assert_gthread_workers_stop(process, stop, log)


def _assert_gthread_workers_stop(
    process: subprocess.Popen[bytes], stop: signal.Signals, log: Path
) -> None:
    """``stop`` to the whole group: gunicorn and its gthread workers are gone within 10 s
    (graceful_timeout is 20 s), with no SIGKILL; stuck workers are described if not."""
    started = time.monotonic()
    os.killpg(process.pid, stop)
    try:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(_stuck_workers(process.pid)) from None
        seconds = time.monotonic() - started
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    text = log.read_text(errors="replace")
    assert "Using worker: gthread" in text
    assert "SIGKILL" not in text and "out of memory" not in text, text
    assert seconds < 10, seconds


def test_a_stop_signal_during_a_gthread_workers_boot_is_not_lost(
    tmp_path: Path, reserved_port: ReservePort
) -> None:
    """Ctrl-C while gunicorn's own gthread workers are still between fork() and their own signal
    handlers (held there 1.5 s by a post_fork that sleeps, after the service's own): the signal
    waits, held, until post_worker_init lets it in, and the workers leave. A signal let in
    before the worker's init_signals ran the master's inherited handler and was lost: the stop
    then took graceful_timeout (20 s) and a SIGKILL."""
    from service.serve import APP, GUNICORN_CONF

    conf = tmp_path / "slow_boot.gunicorn.conf.py"
    conf.write_text(
        f"exec(compile(open({str(GUNICORN_CONF)!r}).read(), {str(GUNICORN_CONF)!r}, 'exec'))\n"
        "_service_post_fork = post_fork\n"
        "def post_fork(server, worker):\n"
        "    _service_post_fork(server, worker)\n"
        "    import time\n"
        "    time.sleep(1.5)\n"
    )
    log = tmp_path / "serve.log"
    port = reserved_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "PYTHONUNBUFFERED": "1",
        "MODEL_DIR": str(COMMITTED_MODELS),
        "STORE_PATH": str(tmp_path / "store.sqlite3"),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = [sys.executable, "-m", "gunicorn", "--config", str(conf), "--bind"]
    argv += [f"127.0.0.1:{port}", "--workers", "2", "--worker-class", "gthread", APP]
    with log.open("ab") as out:
        process = subprocess.Popen(
            argv,
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while log.read_text(errors="replace").count("Booting worker with pid") < 2:
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.02)
    except BaseException:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise
    # both workers are still in post_fork's sleep
    _assert_gthread_workers_stop(process, signal.SIGINT, log)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--models-dir", "modles"], "--models-dir modles: no such folder"),
        (["--models-dir", "docs"], "--models-dir docs: no model version in"),
        (["--models-dir", str(COMMITTED_MODELS), "--model-version", "99"], "--model-version 99"),
    ],
)
def test_a_missing_model_repository_is_one_line_and_exit_3_before_listening(
    args: list[str], words: str, tmp_path: Path, reserved_port: ReservePort
) -> None:
    port = reserved_port()  # kept ours: nothing else can be listening there at the check
    log = tmp_path / "serve.log"
    process = _serve(port, log, *args)
    assert process.wait(timeout=60) == 3
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mnist-serve: {words}")
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


BAD_SETTINGS = {
    "MAX_BATCH": ("0", "MAX_BATCH='0' is not valid"),
    "MODEL_POLL_SECONDS": ("-1", "MODEL_POLL_SECONDS must be > 0"),
    "GUNICORN_THREADS": ("-3", "GUNICORN_THREADS='-3': expected a whole number from 1 to 1024"),
    "DATABASE_URL": ("bogus://x", "DATABASE_URL='bogus://x': the store speaks postgresql"),
    "OTEL_TRACES_EXPORTER": ("bogus", "OTEL_TRACES_EXPORTER='bogus': this service exports otlp"),
    # only empty entries would otherwise leave inference open while it looks closed
    "API_TOKENS": (", ", "API_TOKENS=', ' holds no token"),
    "MIN_CONFIDENCE": ("2", "MIN_CONFIDENCE='2' is not valid: expected a number from 0 to 1"),
    "STORE_WRITER_NICE": ("20", "STORE_WRITER_NICE must be a whole number from 0 to 19, not 20"),
    # refused even where a flag (--port, gunicorn's --bind) overrides it
    "BIND": ("127.0.0.1:80a", "BIND='127.0.0.1:80a': expected one address: HOST:PORT"),
}
#: read by gunicorn itself before its configuration file (a traceback there): mnist-serve only
BAD_SERVE_SETTINGS = {
    **BAD_SETTINGS,
    "WEB_CONCURRENCY": ("x", "WEB_CONCURRENCY='x': expected a whole number from 1 to 256"),
    # int() would take "+30" (and "3_0"); a setting is written in digits
    "GUNICORN_TIMEOUT": ("+30", "GUNICORN_TIMEOUT='+30': expected a whole number from 1 to 86400"),
    "DATABASE_URL": ("mysql://u:secret@h/db", "DATABASE_URL='mysql://u:***@h/db': the store"),
}


@pytest.mark.parametrize("name", sorted(BAD_SERVE_SETTINGS))
def test_a_bad_setting_is_one_line_naming_it_and_exit_2_before_listening(
    name: str, tmp_path: Path, reserved_port: ReservePort
) -> None:
    value, words = BAD_SERVE_SETTINGS[name]
    port = reserved_port()  # kept ours: nothing else can be listening there at the check
    log = tmp_path / "serve.log"
    process = _serve(port, log, "--models-dir", str(COMMITTED_MODELS), settings={name: value})
    assert process.wait(timeout=60) == 2
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mnist-serve: {words}"), lines
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


@pytest.mark.parametrize("name", sorted(BAD_SETTINGS))
def test_gunicorn_with_a_bad_setting_stops_before_listening_with_one_json_line(
    name: str, tmp_path: Path, reserved_port: ReservePort
) -> None:
    value, words = BAD_SETTINGS[name]
    port = reserved_port()
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), name: value}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [
            *(sys.executable, "-m", "gunicorn", "-c", "service/gunicorn.conf.py"),
            *("--bind", f"127.0.0.1:{port}", "service.app:create_app()"),
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = [json.loads(line) for line in (done.stdout + done.stderr).decode().splitlines()]
    errors = [line for line in lines if line["level"] == "error"]
    assert len(errors) == 1 and errors[0]["event"].startswith(words), lines
    assert not any("Booting worker" in line["event"] for line in lines)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--port", "99999"], "mnist-serve: error: argument --port: '99999' is not an integer"),
        (["--workers", "0"], "mnist-serve: error: argument --workers: '0' is not an integer"),
    ],
)
def test_a_bad_flag_is_one_line_and_exit_2(args: list[str], words: str, tmp_path: Path) -> None:
    log = tmp_path / "serve.log"
    process = _serve(free_port(), log, "--models-dir", str(COMMITTED_MODELS), *args)
    assert process.wait(timeout=60) == 2
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(words), lines


def test_an_address_that_cannot_be_bound_is_one_line_and_exit_4(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        log = tmp_path / "in-use.log"
        process = _serve(port, log, "--models-dir", str(COMMITTED_MODELS))
        assert process.wait(timeout=60) == 4
        lines = log.read_text().strip().splitlines()
        assert lines == [
            f"mnist-serve: 127.0.0.1:{port}: the address is already in use "
            "(another server listens there)"
        ]
    log = tmp_path / "foreign.log"
    # an address of no interface here (TEST-NET-1, RFC 5737): numeric, so no name lookup
    process = _serve(free_port(), log, "--models-dir", str(COMMITTED_MODELS), "--host", "192.0.2.1")
    assert process.wait(timeout=60) == 4
    lines = log.read_text().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mnist-serve: 192.0.2.1:"), lines
    assert "cannot listen there" in lines[0]
