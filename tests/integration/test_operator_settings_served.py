"""Operator settings on a real gunicorn and mnist-serve: what start-up deletes, what a graceful
stop writes, and start-up checks that only a real process can show (an open descriptor, a file
where the socket goes, a pinned version the repository lacks)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.integration.conftest import GUNICORN_CONF, StartServer

SEVEN = (REPO_ROOT / "docs" / "examples" / "seven.json").read_bytes()


def _stored_request_ids(path: Path) -> set[str]:
    """The request ids of the predictions in the SQLite store at ``path`` (none before the
    first write made its tables)."""
    if not path.exists():
        return set()
    with sqlite3.connect(path) as database:
        try:
            rows = database.execute("SELECT request_id FROM predictions").fetchall()
        except sqlite3.OperationalError:  # no such table yet
            return set()
    return {row[0] for row in rows}


def _predict(url: str, request_id: str) -> None:
    answer = requests.post(
        url + "/predict",
        data=SEVEN,
        headers={"Content-Type": "application/json", "X-Request-ID": request_id},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text


def test_start_up_deletes_only_prometheus_files_never_a_store_beside_them(
    gunicorn_server: StartServer, tmp_path: Path
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    store = shared / "store.db"
    stale = ["counter_4242.db", "gauge_livesum_4242.db", "histogram_17.db", "gauge_all_9.db"]
    for name in stale:
        (shared / name).write_bytes(b"\0" * 16)
    (shared / "notes.db").write_text("an operator's file")
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared), "STORE_PATH": str(store)}
    env["STORE_FLUSH_SECONDS"] = "0.05"
    first = gunicorn_server(env=env, workers=1)
    _predict(first.url, "kept-across-restarts")
    assert first.stop() == 0
    assert "kept-across-restarts" in _stored_request_ids(store)

    second = gunicorn_server(env=env, workers=1)
    try:
        assert "kept-across-restarts" in _stored_request_ids(store)
        assert (shared / "notes.db").read_text() == "an operator's file"
        assert not any((shared / name).exists() for name in stale)
    finally:
        second.stop()


def test_a_graceful_stop_writes_the_answers_of_the_last_flush_interval(
    gunicorn_server: StartServer, tmp_path: Path
) -> None:
    store = tmp_path / "last-interval.sqlite3"
    server = gunicorn_server(env={"STORE_PATH": str(store), "STORE_FLUSH_SECONDS": "5"}, workers=1)
    # the first answer starts the writer thread, which migrates the schema and writes it
    _predict(server.url, "warm-up")
    deadline = time.monotonic() + 30
    while "warm-up" not in _stored_request_ids(store):
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    wanted = {f"last-{n}" for n in range(6)}
    for request_id in sorted(wanted):
        _predict(server.url, request_id)
    assert server.stop() == 0  # SIGTERM at once: well within the 5 s interval
    assert wanted <= _stored_request_ids(store), server.log()


def _gunicorn_errors(env: dict[str, str]) -> tuple[int, list[str], str]:
    """Run gunicorn with the project's configuration and ``env``: its exit code, the events of
    its error lines (one JSON line each) and its whole output."""
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "MODEL_DIR": str(COMMITTED_MODELS)}
    full.pop("PROMETHEUS_MULTIPROC_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(GUNICORN_CONF), "service.app:create_app()"],
        cwd=REPO_ROOT,
        env={**full, "STORE": "off", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = done.stdout + done.stderr
    lines = [json.loads(line) for line in output.splitlines()]
    return done.returncode, [line["event"] for line in lines if line["level"] == "error"], output


def test_a_bind_that_cannot_be_listened_on_is_one_line_and_exit_4(tmp_path: Path) -> None:
    regular = tmp_path / "regular-file"
    regular.write_text("not a socket")
    for bind, words in (
        ("fd://99", "no such open file descriptor"),
        (f"unix:{regular}", "a file that is not a socket is there"),
        (f"unix:{tmp_path}/missing/s.sock", "no folder"),
    ):
        started = time.monotonic()
        code, errors, output = _gunicorn_errors({"BIND": bind})
        assert code == 4, output
        assert len(errors) == 1 and errors[0].startswith(f"BIND={bind!r}: {words}"), output
        assert "Traceback" not in output and "Booting worker" not in output
        assert time.monotonic() - started < 30  # no 5 s of retries per address either


def test_a_prometheus_folder_that_cannot_be_made_is_one_line_and_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    for folder in (str(a_file), "/proc/no-such-folder-here"):
        code, errors, output = _gunicorn_errors({"PROMETHEUS_MULTIPROC_DIR": folder})
        assert code == 2, output
        assert len(errors) == 1 and errors[0].startswith(f"PROMETHEUS_MULTIPROC_DIR={folder!r}")
        assert "Traceback" not in output


def test_mnist_serve_reads_model_version_and_model_dir_as_the_workers_do(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "STORE": "off"}

    def serve(settings: dict[str, str]) -> tuple[int, list[str]]:
        done = subprocess.run(
            [sys.executable, "-m", "service.serve", "--port", "1"],  # never reached: exit 3
            cwd=REPO_ROOT,
            env={**env, **settings},
            capture_output=True,
            text=True,
            timeout=60,
        )
        return done.returncode, done.stderr.strip().splitlines()

    code, lines = serve({"MODEL_DIR": str(COMMITTED_MODELS), "MODEL_VERSION": "7"})
    assert code == 3 and len(lines) == 1 and lines[0].startswith("mnist-serve: MODEL_VERSION=7:")
    # the workers strip MODEL_DIR; so does the check, which then finds the version
    code, lines = serve({"MODEL_DIR": f" {COMMITTED_MODELS} ", "MODEL_VERSION": "7"})
    assert code == 3 and "MODEL_VERSION=7" in lines[0], lines
    code, lines = serve({"MODEL_DIR": " ", "MODEL_VERSION": "7"})  # blank: ./models
    assert code == 3 and "MODEL_VERSION=7" in lines[0], lines
