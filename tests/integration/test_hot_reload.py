"""Hot model updates under load on a real gunicorn: every worker switches, no request fails."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from service.model.repository import ModelRepository, sha256_bytes
from tests.integration.conftest import RunningServer
from tests.service.conftest import (
    committed_parts,
    publish_copy,
    renamed_input_model,
    set_state,
)

WORKERS = 2
LOAD_THREADS = 3
POLL_SECONDS = "0.5"
SWITCH_DEADLINE = 10.0


@dataclass
class Answer:
    at: float
    status: int  # 0 when the connection itself failed
    version: int | None


@dataclass
class SteadyLoad:
    """Single-image /predict requests from a few threads, each on fresh connections."""

    url: str
    image: list[int]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, max_seconds: float) -> None:
        deadline = time.monotonic() + max_seconds  # bounded even if the test forgets to stop it
        while not self.stop.is_set() and time.monotonic() < deadline:
            try:
                # no keep-alive: every request may land on any worker
                response = requests.post(
                    self.url + "/predict",
                    json={"images": [self.image]},
                    headers={"Connection": "close"},
                    timeout=10,
                )
                version = response.json()["model"]["version"] if response.ok else None
                answer = Answer(time.monotonic(), response.status_code, version)
            except (requests.RequestException, ValueError):
                answer = Answer(time.monotonic(), 0, None)
            with self.lock:
                self.answers.append(answer)
            time.sleep(0.005)

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.at >= moment]


@pytest.fixture
def steady_load(request: pytest.FixtureRequest) -> Iterator[Any]:
    threads: list[threading.Thread] = []
    loads: list[SteadyLoad] = []

    def start(server: RunningServer, image: list[int]) -> SteadyLoad:
        load = SteadyLoad(server.url, image)
        for _ in range(LOAD_THREADS):
            thread = threading.Thread(target=load.run, args=(120.0,), daemon=True)
            thread.start()
            threads.append(thread)
        loads.append(load)
        return load

    yield start
    for load in loads:
        load.stop.set()
    for thread in threads:
        thread.join(15)


def scrape(server: RunningServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def reload_count(server: RunningServer, outcome: str) -> float:
    rows = scrape(server).get("mnist_model_reloads_total", [])
    return sum(value for labels, value in rows if labels.get("outcome") == outcome)


def worker_versions(server: RunningServer) -> list[float]:
    """The version each live worker reports in the per-worker gauge."""
    return [value for _, value in scrape(server).get("mnist_model_loaded_version", [])]


def publish_mismatched(root: Path) -> int:
    """Publish, atomically as training does, a version whose model.onnx does not match its card."""
    model, card, selftest = committed_parts()
    repository = ModelRepository(root)
    number = max(v.version for v in repository.versions()) + 1
    staging = repository.model_dir / f".staging-{uuid.uuid4().hex}"
    staging.mkdir()
    selftest_bytes = json.dumps(selftest).encode()
    card.update(
        name="mnist",
        version=number,
        sha256=sha256_bytes(model),
        size=len(model),
        selftest={"file": "selftest.json", "sha256": sha256_bytes(selftest_bytes), "count": 10},
    )
    (staging / "card.json").write_text(json.dumps(card))
    (staging / "selftest.json").write_bytes(selftest_bytes)
    (staging / "model.onnx").write_bytes(model[:-1] + bytes([model[-1] ^ 0xFF]))  # one bit off
    os.replace(staging, repository.model_dir / str(number))
    return number


def wait_until(predicate: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_publishing_under_load_switches_every_worker_and_corrupt_versions_change_nothing(
    tmp_path: Path, gunicorn_server: Any, steady_load: Any
) -> None:
    publish_copy(tmp_path)
    server = gunicorn_server(
        {"MODEL_DIR": str(tmp_path), "MODEL_POLL_SECONDS": POLL_SECONDS}, workers=WORKERS
    )
    _, _, selftest = committed_parts()
    load = steady_load(server, selftest["images"][2])
    assert wait_until(lambda: len(load.since(0)) >= 20, 10), "the load never got going"
    assert {a.version for a in load.since(0)} == {1}

    publish_copy(tmp_path)
    time.sleep(4 * float(POLL_SECONDS))
    assert {a.version for a in load.since(0)} == {1}  # published: a candidate, served by nobody
    published_at = time.monotonic()
    set_state(tmp_path, stable=2, history=(1,))  # promoted
    assert wait_until(lambda: worker_versions(server) == [2.0] * WORKERS, SWITCH_DEADLINE), (
        f"workers report versions {worker_versions(server)}"
    )
    switched_at = time.monotonic()
    time.sleep(1.0)  # keep the load on after the switch
    answers = load.since(published_at)
    after_switch = [a for a in answers if a.at > switched_at]
    assert after_switch, "no requests were answered after the switch"
    assert {a.version for a in after_switch} == {2}
    last_old = max((a.at for a in answers if a.version == 1), default=published_at)
    assert last_old - published_at < SWITCH_DEADLINE
    assert reload_count(server, "success") == WORKERS

    # corrupt versions, promoted past the gate: a valid file with the wrong signature, and bytes
    # that miss the card; each worker refuses them and keeps the previous stable
    corrupt_from = time.monotonic()
    publish_copy(tmp_path, onnx_bytes=renamed_input_model())
    publish_mismatched(tmp_path)
    set_state(tmp_path, stable=3, history=(1, 2))
    set_state(tmp_path, stable=4, history=(1, 2, 3))
    assert wait_until(lambda: reload_count(server, "failure") == 2 * WORKERS, 30), (
        f"reload failures: {reload_count(server, 'failure')}"
    )
    time.sleep(4 * float(POLL_SECONDS))  # several polls later: still not retried
    assert reload_count(server, "failure") == 2 * WORKERS
    assert worker_versions(server) == [2.0] * WORKERS
    assert {a.version for a in load.since(corrupt_from)} == {2}

    load.stop.set()
    time.sleep(0.2)
    failures = [a for a in load.since(0) if a.status != 200]
    assert not failures, f"{len(failures)} failed requests, first: {failures[0]}"
    assert len(load.since(0)) > 100
    log = server.log()
    assert "rejected mnist version 3" in log and "rejected mnist version 4" in log
    assert "input is 'pixels'" in log and "sha256" in log


def test_model_version_pins_and_ignores_newer_versions(
    tmp_path: Path, gunicorn_server: Any
) -> None:
    publish_copy(tmp_path)
    publish_copy(tmp_path)
    server = gunicorn_server(
        {"MODEL_DIR": str(tmp_path), "MODEL_VERSION": "1", "MODEL_POLL_SECONDS": "0.2"}, workers=1
    )
    publish_copy(tmp_path)
    time.sleep(1.0)
    _, _, selftest = committed_parts()
    response = requests.post(
        server.url + "/predict", json={"images": [selftest["images"][0]]}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["model"]["version"] == 1


def test_no_valid_model_means_live_not_ready_says_why_and_serves_once_fixed(
    tmp_path: Path, gunicorn_server: Any
) -> None:
    broken = publish_copy(tmp_path)
    card = broken.card_path.read_text()
    broken.card_path.write_text("{not json")
    server = gunicorn_server(
        {"MODEL_DIR": str(tmp_path), "MODEL_POLL_SECONDS": "0.5"}, workers=2, wait=False
    )
    assert wait_until(lambda: "no valid model in" in server.log(), 30), server.log()
    assert requests.get(server.url + "/v2/health/live", timeout=5).status_code == 200
    assert requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 503
    _, _, selftest = committed_parts()
    digit = {"images": [selftest["images"][0]]}
    answer = requests.post(server.url + "/predict", json=digit, timeout=5)
    assert answer.status_code == 503 and "unreadable card.json" in answer.text
    # every worker says so (the second may boot later on a loaded machine), and only once: the
    # count stays put over four more polls
    assert wait_until(lambda: server.log().count("rejected mnist version 1") >= WORKERS, 30)
    time.sleep(4 * float(POLL_SECONDS))
    assert server.alive()
    assert server.log().count("rejected mnist version 1") == WORKERS  # once per worker
    broken.card_path.write_text(card)
    assert wait_until(
        lambda: requests.get(server.url + "/v2/health/ready", timeout=5).status_code == 200, 30
    )


def test_sighup_to_a_worker_reloads_before_the_next_poll(
    tmp_path: Path, gunicorn_server: Any
) -> None:
    publish_copy(tmp_path)
    server = gunicorn_server({"MODEL_DIR": str(tmp_path), "MODEL_POLL_SECONDS": "3600"}, workers=2)
    pids = [int(pid) for pid in re.findall(r"worker (\d+) serving mnist version 1", server.log())]
    assert len(pids) == 2
    publish_copy(tmp_path)
    set_state(tmp_path, stable=2, history=(1,))
    time.sleep(0.5)
    assert worker_versions(server) == [1.0, 1.0]  # the hour-long poll has not come round
    for pid in pids:
        os.kill(pid, signal.SIGHUP)
    # well before the hour's poll: a condition wait, done as soon as both switched
    assert wait_until(lambda: worker_versions(server) == [2.0, 2.0], 30), worker_versions(server)
    assert server.alive()
    assert sorted(int(p) for p in re.findall(r"worker (\d+) swapped in", server.log())) == sorted(
        pids
    )
