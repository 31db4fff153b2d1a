"""Health answers, the in-flight gauge and the drain at SIGTERM, on a real gunicorn."""

from __future__ import annotations

import gzip
import http.client
import json
import signal
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests

from tests.integration.conftest import RunningServer, StartServer, loopback_sockets


def _gauge(text: str, name: str) -> float:
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert len(values) == 1, f"{name} not exposed once:\n{text[:2000]}"
    return values[0]


def test_health_routes_answer_json(committed_server: RunningServer) -> None:
    live = requests.get(committed_server.url + "/v2/health/live", timeout=10)
    ready = requests.get(committed_server.url + "/v2/health/ready", timeout=10)
    model = requests.get(committed_server.url + "/v2/models/mnist/ready", timeout=10)
    assert (live.status_code, live.json()) == (200, {"live": True})
    assert (ready.status_code, ready.json()) == (200, {"ready": True})
    assert (model.status_code, model.json()) == (200, {"name": "mnist", "ready": True})
    assert live.headers["Content-Type"] == "application/json"


def test_in_flight_and_capacity_are_exported(committed_server: RunningServer) -> None:
    capacity = committed_server.workers * 4  # gunicorn threads per worker
    deadline = time.monotonic() + 20  # each worker reports its threads once it has started
    while True:
        text = requests.get(committed_server.url + "/metrics", timeout=10).text
        if _gauge(text, "mnist_http_request_capacity") == capacity or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert _gauge(text, "mnist_http_request_capacity") == capacity
    # the scrape itself is in flight while /metrics is rendered
    assert _gauge(text, "mnist_http_requests_in_flight") >= 1
    after = requests.get(committed_server.url + "/metrics", timeout=10).text
    assert _gauge(after, "mnist_http_requests_in_flight") < 2 + 1  # nothing leaks


def _wait_until_accepted(port: int, seconds: float = 20.0) -> None:
    """Until the kernel's accept queue of the listener on 127.0.0.1:``port`` is empty: every
    connection made so far is the worker's. A connection still queued when the server stops is
    reset (gunicorn closes its listeners first), which is not what the drain is about."""
    deadline = time.monotonic() + seconds
    while True:
        # a listener's rx_queue: the connections waiting for accept()
        [queued] = [int(r[4].split(":")[1], 16) for r in loopback_sockets(port) if r[3] == "0A"]
        if queued == 0:
            return
        assert time.monotonic() < deadline, f"{queued} connection(s) still not accepted"
        time.sleep(0.005)


@pytest.fixture(scope="module")
def large_batch(mnist_data_dir: Path) -> bytes:
    """A /predict JSON body of 1024 MNIST test digits (a request that takes a while)."""
    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        pixels = np.frombuffer(handle.read(1024 * 784), dtype=np.uint8).reshape(1024, 784)
    return json.dumps({"images": pixels.tolist()}).encode()


@pytest.mark.timeout(90)
def test_sigterm_turns_readiness_false_and_answers_what_is_held(
    gunicorn_server: StartServer, large_batch: bytes
) -> None:
    server = gunicorn_server(workers=1)
    url = urlsplit(server.url)
    with requests.Session() as session:  # one kept-alive connection, opened before the SIGTERM
        assert session.get(server.url + "/v2/health/ready", timeout=10).status_code == 200
        held = http.client.HTTPConnection(url.hostname or "", url.port, timeout=30)
        held.request("POST", "/predict", large_batch, {"Content-Type": "application/json"})
        _wait_until_accepted(url.port or 80)
        server.process.send_signal(signal.SIGTERM)  # the whole batch was sent: it is held
        # asked at once and again every few ms until the worker has the signal (the master passes
        # it on: a moment, longer on a loaded machine), while the held batch is still being run
        deadline = time.monotonic() + 10
        while True:
            ready = session.get(server.url + "/v2/health/ready", timeout=10)
            if ready.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.005)
        answer = held.getresponse()
        predictions = json.loads(answer.read())["predictions"]
        held.close()
    assert (ready.status_code, ready.json()) == (503, {"ready": False})
    assert ready.headers.get("Connection", "").lower() == "close"
    assert answer.status == 200 and len(predictions) == 1024
    assert server.process.wait(30) == 0
