"""Shadow, promote, rollback and canary under a steady load of single-image requests.

One gunicorn (2 workers) on a scratch repository: version 1 (the committed model, stable),
version 2 (the session's tiny model, about 85 %: it disagrees with 1 on some digits) and
version 3 (a copy of 1). Load threads send single-image /predict requests on fresh connections
(any worker may answer) and record the status and the version of every answer. The changes are
made the way an operator makes them: ``mnist-models`` on the command line and the admin routes.
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.integration.conftest import RunningServer
from tests.service.conftest import committed_parts, publish_copy

WORKERS = 2
LOAD_THREADS = 4
SWITCH_SECONDS = 5.0
TOKEN = "lifecycle-test-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class Answer:
    at: float  # when the request was sent: a switch is about which version new requests meet
    status: int  # 0: the connection failed
    version: int | None


@dataclass
class Load:
    url: str
    images: list[list[int]]
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self, seed: int) -> None:
        deadline = time.monotonic() + 300  # bounded even if the test forgets to stop it
        turn = seed
        while not self.stop.is_set() and time.monotonic() < deadline:
            image = self.images[turn % len(self.images)]
            turn += 1
            sent = time.monotonic()
            try:
                response = requests.post(
                    self.url + "/predict",
                    json={"images": [image]},
                    headers={"Connection": "close"},
                    timeout=10,
                )
                version = response.json()["model"]["version"] if response.ok else None
                answer = Answer(sent, response.status_code, version)
            except (requests.RequestException, ValueError):
                answer = Answer(sent, 0, None)
            with self.lock:
                self.answers.append(answer)

    def since(self, moment: float) -> list[Answer]:
        with self.lock:
            return [a for a in self.answers if a.at >= moment]


def worker_versions(server: RunningServer) -> list[float]:
    """The version each live worker reports in the per-worker gauge."""
    families = scrape(server)
    return [value for _, value in families.get("mnist_model_loaded_version", [])]


def scrape(server: RunningServer) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = requests.get(server.url + "/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def mnist_models(models: Path, data_dir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "service.model.cli", "--models-dir", str(models)]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def wait_until(predicate: Any, seconds: float) -> float | None:
    """Seconds until ``predicate()`` held (None if it never did within ``seconds``)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        if predicate():
            return time.monotonic() - started
        time.sleep(0.05)
    return None


def switch(load: Load, server: RunningServer, version: int, since: float) -> float:
    """Wait until every worker serves ``version`` and the answers show it; the seconds it took."""
    took = wait_until(lambda: worker_versions(server) == [float(version)] * WORKERS, 10)
    assert took is not None, f"workers report {worker_versions(server)}"
    time.sleep(1.0)
    answers = load.since(since)
    switched = (
        max(a.at for a in answers if a.version != version)
        if any(a.version != version for a in answers)
        else since
    )
    assert switched - since < SWITCH_SECONDS, f"old answers until {switched - since:.1f} s"
    late = load.since(switched + 0.01)
    assert late and {a.version for a in late} == {version}
    return switched - since


@pytest.mark.slow
def test_shadow_promote_rollback_and_canary_under_steady_load(
    tmp_path: Path,
    gunicorn_server: Any,
    mnist_data_dir: Path,
    mnist_data: Any,
    tiny_trained_run: Any,
) -> None:
    from training.pipeline import publish_run

    models = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, models)
    publish_run(tiny_trained_run, models, min_accuracy=0.0)  # 2: worse, a candidate
    publish_copy(models)  # 3: as good as 1
    server = gunicorn_server(
        {"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "1", "ADMIN_TOKEN": TOKEN},
        workers=WORKERS,
    )
    images = mnist_data.test.images[:200].tolist()
    load = Load(server.url, images)
    threads = [threading.Thread(target=load.run, args=(i * 50,)) for i in range(LOAD_THREADS)]
    for thread in threads:
        thread.start()
    try:
        assert wait_until(lambda: len(load.answers) > 40, 20) is not None
        assert {a.version for a in load.since(0)} == {1}

        # shadow: version 2 runs every request after stable answered; figures everywhere
        mnist_models(models, mnist_data_dir, "shadow", "2", "--sample", "1")

        def enough_compared() -> bool:
            compared = {
                labels["outcome"]: value
                for labels, value in scrape(server).get("mnist_trial_comparisons_total", [])
                if labels["trial_version"] == "2"
            }
            return compared.get("agree", 0) > 50 and compared.get("disagree", 0) > 0

        wait_until(enough_compared, 60)  # as long as it takes the shadow runs (a loaded machine)
        families = scrape(server)
        compared = {
            labels["outcome"]: value
            for labels, value in families["mnist_trial_comparisons_total"]
            if labels["trial_version"] == "2"
        }
        assert compared.get("agree", 0) > 50 and compared.get("disagree", 0) > 0
        assert families["mnist_trial_disagreements_total"]
        stats = requests.get(server.url + "/v2/models/mnist/versions/2/stats", timeout=10).json()
        (entry,) = stats["model_stats"]
        (block,) = entry["agreement"]
        assert block["mode"] == "shadow" and block["stable_version"] == "1"
        assert block["compared"] >= compared["agree"]  # read later: at least as many
        assert 0.5 < block["agreement_rate"] < 1.0
        assert block["disagreements"] and all(
            d["stable_digit"] != d["trial_digit"] for d in block["disagreements"]
        )
        assert block["mean_inference_ms"]["stable"] > 0 and block["mean_inference_ms"]["trial"] > 0
        assert entry["inference_count"] > 0 and entry["execution_count"] > 0
        assert {a.version for a in load.since(0)} == {1}  # the shadow never answered
        mnist_models(models, mnist_data_dir, "end-trial")

        # promote over HTTP, then roll back with the CLI: every worker within 5 s of the change
        # (the promote call returns once labels.json is written: its gate runs first), no failure
        promoted = requests.post(
            server.url + "/v2/repository/models/mnist/promote",
            json={"version": 3},
            headers=ADMIN,
            timeout=60,
        )
        started = time.monotonic()
        assert promoted.status_code == 200, promoted.text
        switch(load, server, 3, started)
        started = time.monotonic()
        assert "stable again" in mnist_models(models, mnist_data_dir, "rollback")
        switch(load, server, 1, started)

        # canary: version 3 answers 20 % of the requests, each drawn at random in the worker:
        # within 5 points, or 5 binomial standard deviations when fewer requests were counted
        # (a 1-in-a-million miss, where a fixed 5 points misses 1 in 13 at 200 requests)
        mnist_models(models, mnist_data_dir, "canary", "3", "--percent", "20")
        trial = "trial: canary 3 (20% of answers)"
        assert wait_until(lambda: server.log().count(trial) == WORKERS, 30), server.log()[-3000:]
        counting_from = time.monotonic()
        time.sleep(8)
        shares = Counter(a.version for a in load.since(counting_from))
        total = sum(shares.values())
        assert total > 200
        tolerance = max(0.05, 5 * math.sqrt(0.2 * 0.8 / total))
        assert abs(shares[3] / total - 0.2) <= tolerance, shares
        mnist_models(models, mnist_data_dir, "end-trial")
    finally:
        load.stop.set()
        for thread in threads:
            thread.join(15)
    failures = [a for a in load.answers if a.status != 200]
    assert not failures, f"{len(failures)} failed requests, first: {failures[0]}"
    _, card, _ = committed_parts()
    assert card["metrics"]["test_accuracy"] > 0.98
