"""/metrics and the request log of a real gunicorn with 2 workers: N requests are N on every scrape,
whichever worker answers, and every request is one parseable JSON log line."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.model.contract import MODEL_NAME
from tests.conftest import COMMITTED_MODELS

WORKERS = 2
#: bound on the load: enough for the kernel to hand requests to both workers many times over
MAX_REQUESTS = 400
ROUND = 16
SCRAPES = 8


def metric_samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include ``labels``."""
    return sum(
        value
        for sample_name, sample_labels, value in samples
        if sample_name == name and labels.items() <= sample_labels.items()
    )


def request_log_lines(log: str) -> list[dict[str, Any]]:
    """The JSON request lines among everything gunicorn and the app wrote."""
    lines = []
    for line in log.splitlines():
        if line.startswith("{") and '"logger":"mnist.requests"' in line:
            lines.append(json.loads(line))
    return lines


@pytest.fixture(scope="module")
def digits() -> list[list[int]]:
    selftest = json.loads((COMMITTED_MODELS / MODEL_NAME / "1" / "selftest.json").read_text())
    images: list[list[int]] = selftest["images"]
    return images


def predict(url: str, image: list[int], request_id: str) -> requests.Response:
    # a new connection per request (no Session): each one may be accepted by either worker
    return requests.post(
        f"{url}/predict",
        json={"images": [image]},
        headers={"X-Request-ID": request_id},
        timeout=30,
    )


def test_metrics_count_every_request_across_workers_and_log_one_line_each(
    gunicorn_server: Any, digits: Any
) -> None:
    server = gunicorn_server(workers=WORKERS)
    started = time.time()
    sent: list[str] = []
    pids: set[int] = set()
    with ThreadPoolExecutor(max_workers=8) as pool:
        # Bounded: stop as soon as both workers have answered predictions.
        while len(pids) < WORKERS and len(sent) < MAX_REQUESTS:
            ids = [f"obs-{len(sent) + i}" for i in range(ROUND)]
            images = [digits[(len(sent) + i) % len(digits)] for i in range(ROUND)]
            responses = list(pool.map(partial(predict, server.url), images, ids))
            assert [response.status_code for response in responses] == [200] * ROUND
            assert [response.headers["X-Request-ID"] for response in responses] == ids
            sent += ids
            lines = {line["request_id"]: line for line in request_log_lines(server.log())}
            pids = {lines[request_id]["pid"] for request_id in sent}
    assert len(pids) == WORKERS, f"{len(sent)} requests all went to one worker {pids}"
    n = len(sent)

    # a bad request is counted and logged with its 4xx status, and serving goes on
    bad = requests.post(
        f"{server.url}/predict",
        data=b"{nope",
        headers={"Content-Type": "application/json", "X-Request-ID": "obs-bad"},
        timeout=30,
    )
    assert bad.status_code == 400
    assert bad.headers["X-Request-ID"] == "obs-bad"

    scrape_pids = set()
    for _ in range(SCRAPES):
        response = requests.get(f"{server.url}/metrics", timeout=30)  # new connection each time
        assert response.status_code == 200
        samples = metric_samples(response.text)
        ok = {"route": "/predict", "status": "200"}
        assert total(samples, "mnist_http_requests_total", **ok) == n
        assert total(samples, "mnist_http_requests_total", route="/predict", status="400") == 1
        assert total(samples, "mnist_http_request_duration_seconds_count", **ok) == n
        assert total(samples, "mnist_predictions_total") == n
        assert total(samples, "mnist_batch_size_count") == n
        assert total(samples, "mnist_inference_duration_seconds_count") >= n
        # every worker says which model it serves: one series per live worker, value 1
        info = [
            labels for name, labels, value in samples if name == "mnist_model_info" and value == 1
        ]
        assert len({labels["pid"] for labels in info}) == WORKERS
        assert {labels["version"] for labels in info} == {
            str(line["model_version"])
            for line in request_log_lines(server.log())
            if line["request_id"] in sent
        }
        scrape_pids |= {
            line["pid"] for line in request_log_lines(server.log()) if line["route"] == "/metrics"
        }

    # one parseable JSON line per request, whichever worker answered it
    log_lines = request_log_lines(server.log())
    per_id = Counter(line["request_id"] for line in log_lines)
    assert all(per_id[request_id] == 1 for request_id in [*sent, "obs-bad"])
    for line in log_lines:
        if line["request_id"] in sent:
            assert line["route"] == "/predict"
            assert line["status"] == 200
            assert line["batch_size"] == 1
            assert isinstance(line["model_version"], int)
            assert line["latency_ms"] > 0
    (bad_line,) = [line for line in log_lines if line["request_id"] == "obs-bad"]
    assert bad_line["status"] == 400
    # never pixels or bodies: no digit row of the requests appears in the log
    assert "images" not in server.log()
    assert json.dumps(digits[0])[:40] not in server.log()
    assert scrape_pids  # the scrapes were logged too

    # the statistics extension's last_inference (Triton: milliseconds since the epoch) is the
    # latest run of either worker, one series per version on /metrics (no pid: the max)
    last = [
        (labels, value)
        for name, labels, value in samples
        if name == "mnist_last_inference_timestamp_seconds"
    ]
    assert [labels for labels, _ in last] == [{"version": "1"}]
    assert started <= last[0][1] <= time.time()
    stats = requests.get(f"{server.url}/v2/models/mnist/versions/1/stats", timeout=30).json()
    assert stats["model_stats"][0]["last_inference"] == int(last[0][1] * 1000)


def test_metrics_forget_a_dead_worker_but_keep_its_counts(
    gunicorn_server: Any, digits: Any
) -> None:
    server = gunicorn_server(workers=WORKERS)
    for i in range(6):
        assert predict(server.url, digits[i], f"dead-{i}").status_code == 200
    before = metric_samples(requests.get(f"{server.url}/metrics", timeout=30).text)
    pids = {labels["pid"] for name, labels, _ in before if name == "mnist_model_info"}
    assert len(pids) == WORKERS
    victim = int(sorted(pids)[0])
    os.kill(victim, signal.SIGKILL)  # gunicorn's child_exit hook must drop its live gauges
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        samples = metric_samples(requests.get(f"{server.url}/metrics", timeout=30).text)
        live = {labels["pid"] for name, labels, _ in samples if name == "mnist_model_info"}
        if str(victim) not in live and len(live) == WORKERS:
            break
        time.sleep(0.2)
    assert str(victim) not in live
    assert len(live) == WORKERS  # gunicorn started a replacement, and it reports its model
    assert total(samples, "mnist_http_requests_total", route="/predict", status="200") == 6
