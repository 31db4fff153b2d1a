"""A full or vanished metrics folder costs samples, never requests (real gunicorn, real tmpfs).

The rel-metrics-disk-full case: the multiprocess folder on a 96 KiB tmpfs, filled up once the
server runs; new label sets then need file space that is not there. Before, every worker died
of SIGBUS in a loop. Mounting a tmpfs needs root: CI runs as root; elsewhere the test is skipped
with the reason (and fails under CI=true).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.deploy.conftest import unavailable
from tests.integration.conftest import RunningServer, StartServer

FAILURE_LOG = "writing metrics failed"


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 96 KiB tmpfs mounted on a fresh folder, unmounted afterwards."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    folder = tmp_path / "metrics"
    folder.mkdir()
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        unavailable(f"cannot mount a tmpfs here: {mount.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


def _fill(folder: Path) -> None:
    """Write zeros into ``folder`` until its file system is full."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)


def _malformed_predictions(server: RunningServer, count: int) -> list[int]:
    statuses = []
    for _ in range(count):
        response = requests.post(
            server.url + "/predict",
            data=b'{"images":[1,2',
            headers={"Content-Type": "application/json"},
            timeout=5,
        )
        assert response.json()["error"]["code"], response.text
        statuses.append(response.status_code)
    return statuses


def _live_answers(server: RunningServer, count: int) -> int:
    answered = 0
    for _ in range(count):
        with contextlib.suppress(requests.RequestException):
            answered += requests.get(server.url + "/v2/health/live", timeout=3).status_code == 200
    return answered


def _failures_reported(server: RunningServer, scrapes: int) -> float:
    """The largest mnist_metrics_write_failures_total any answering worker reported."""
    seen = 0.0
    for _ in range(scrapes):
        response = requests.get(server.url + "/metrics", timeout=5)
        assert response.status_code == 200
        for line in response.text.splitlines():
            if line.startswith("mnist_metrics_write_failures_total{"):
                seen = max(seen, float(line.rsplit(" ", 1)[1]))
    return seen


@pytest.mark.timeout(120)
def test_full_metrics_folder_drops_samples_and_keeps_answering(
    small_tmpfs: Path, gunicorn_server: StartServer
) -> None:
    # small_tmpfs first: the server stops before the file system is unmounted
    server = gunicorn_server(env={"PROMETHEUS_MULTIPROC_DIR": str(small_tmpfs)}, workers=2)
    _fill(small_tmpfs)
    # a 400 on /predict is a label set no worker has written yet: it needs a new file page
    assert _malformed_predictions(server, 6) == [400] * 6
    assert _live_answers(server, 5) == 5
    assert _failures_reported(server, 6) >= 1
    log = server.log()
    assert "SIGBUS" not in log and "Worker (pid" not in log, log[-3000:]
    assert 1 <= log.count(FAILURE_LOG) <= server.workers, log[-3000:]  # once per process


@pytest.mark.timeout(120)
def test_vanished_metrics_folder_drops_samples_and_keeps_answering(
    gunicorn_server: StartServer, tmp_path: Path
) -> None:
    folder = tmp_path / "metrics-vanishing"
    folder.mkdir()
    server = gunicorn_server(env={"PROMETHEUS_MULTIPROC_DIR": str(folder)}, workers=1)
    shutil.rmtree(folder)  # the files stay mapped; new ones cannot be created
    assert _malformed_predictions(server, 3) == [400] * 3
    assert _live_answers(server, 3) == 3
    response = requests.get(server.url + "/metrics", timeout=5)
    assert response.status_code == 200
    assert "mnist_metrics_write_failures_total" in response.text
    assert server.log().count(FAILURE_LOG) == 1
