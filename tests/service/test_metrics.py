"""Unit tests of service.observability.metrics: /metrics via the test client, multiprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask, request
from prometheus_client import CollectorRegistry, multiprocess
from prometheus_client.parser import text_string_to_metric_families

from service.app import serve_with_layers
from service.config import ServiceConfig
from service.errors import InvalidInput
from service.model.contract import MAX_BATCH_SIZE
from service.observability import metrics, metrics_route, request_log
from service.observability.wsgi import facts_of

REPO_ROOT = Path(__file__).resolve().parents[2]

FAMILIES = (
    "mnist_http_requests",
    "mnist_http_request_duration_seconds",
    "mnist_inference_duration_seconds",
    "mnist_preprocessing_duration_seconds",
    "mnist_batch_size",
    "mnist_predictions",
    "mnist_model_info",
    "mnist_model_loaded_version",
    "mnist_model_reloads",
)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of an exposition, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(text: str, metric: str, **labels: str) -> float:
    """One sample's value, 0 when the series does not exist yet."""
    return samples(text).get((metric, frozenset(labels.items())), 0.0)


def build_app() -> Flask:
    """A small app wired like the service: routes note model_version and batch_size."""
    app = Flask("metrics_test")

    @app.post("/predict")
    def predict() -> dict[str, object]:
        images = request.get_json()["images"]
        facts = facts_of(request.environ)
        facts.model_version = 7
        facts.batch_size = len(images)
        if not images:
            raise InvalidInput("empty batch")
        metrics.observe_inference(0.002, len(images), np.array(images, dtype=np.int64), 7)
        return {"digits": images}

    @app.get("/items/<int:item>")
    def item(item: int) -> dict[str, int]:
        return {"item": item}

    app.register_blueprint(metrics_route.create_blueprint())
    serve_with_layers(app, ServiceConfig(), [])
    return app


@pytest.fixture
def client() -> Any:
    return build_app().test_client()


def scrape(client: Any) -> str:
    response = client.get("/metrics")
    assert response.status_code == 200
    text: str = response.get_data(as_text=True)
    return text


def test_metrics_exposes_every_family(client: Any) -> None:
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    names = {family.name for family in text_string_to_metric_families(response.get_data(True))}
    assert set(FAMILIES) <= names


def test_requests_counted_by_route_template_not_raw_path(client: Any) -> None:
    before = scrape(client)
    for item in range(5):
        assert client.get(f"/items/{item}").status_code == 200
    after = scrape(client)
    route = "/items/<int:item>"
    assert value(after, "mnist_http_requests_total", route=route, status="200", version="") == (
        value(before, "mnist_http_requests_total", route=route, status="200", version="") + 5
    )
    assert not any("/items/3" in dict(labels).get("route", "") for _, labels in samples(after))


def test_unmatched_paths_share_one_series(client: Any) -> None:
    before = scrape(client)
    for n in range(4):
        assert client.get(f"/no/such/path/{n}").status_code == 404
    after = scrape(client)
    labels = {"route": request_log.UNMATCHED_ROUTE, "status": "404", "version": ""}
    assert value(after, "mnist_http_requests_total", **labels) == (
        value(before, "mnist_http_requests_total", **labels) + 4
    )
    assert "/no/such/path" not in after


def test_request_latency_by_route_and_status_including_errors(client: Any) -> None:
    before = scrape(client)
    assert client.post("/predict", json={"images": [3, 3]}).status_code == 200
    assert client.post("/predict", json={"images": []}).status_code == 422
    after = scrape(client)
    for status in ("200", "422"):
        name = "mnist_http_request_duration_seconds_count"
        assert value(after, name, route="/predict", status=status) == (
            value(before, name, route="/predict", status=status) + 1
        )
    # the version the route reported is on the request counter
    assert value(
        after, "mnist_http_requests_total", route="/predict", status="200", version="7"
    ) == (
        value(before, "mnist_http_requests_total", route="/predict", status="200", version="7") + 1
    )


def test_observe_inference_counts_digits_batches_and_latency(client: Any) -> None:
    before = scrape(client)
    started = time.time()
    assert client.post("/predict", json={"images": [1, 1, 1, 9]}).status_code == 200
    answered = time.time()
    after = scrape(client)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("mnist_predictions_total", digit="1", version="7") == 3
    assert delta("mnist_predictions_total", digit="9", version="7") == 1
    assert delta("mnist_predictions_total", digit="0", version="7") == 0
    assert delta("mnist_batch_size_count") == 1
    assert delta("mnist_batch_size_sum") == 4
    assert delta("mnist_batch_size_bucket", le="2.0") == 0
    assert delta("mnist_batch_size_bucket", le="4.0") == 1
    assert delta("mnist_inference_duration_seconds_count", version="7") == 1
    assert delta("mnist_inference_duration_seconds_sum", version="7") == pytest.approx(0.002)
    # the version's last run, batched with the request's other samples
    last_run = value(after, "mnist_last_inference_timestamp_seconds", version="7")
    assert started <= last_run <= answered


def test_observe_preprocessing(client: Any) -> None:
    before = scrape(client)
    metrics.observe_preprocessing(0.004)
    metrics.observe_preprocessing(0.2)
    after = scrape(client)
    name = "mnist_preprocessing_duration_seconds"
    assert value(after, f"{name}_count") - value(before, f"{name}_count") == 2
    assert (
        value(after, f"{name}_bucket", le="0.005") - value(before, f"{name}_bucket", le="0.005")
        == 1
    )


def test_model_info_marks_the_served_version_and_zeroes_the_previous(client: Any) -> None:
    metrics.set_model_info("mnist", 41, "a" * 64)
    metrics.set_model_info("mnist", 42, "b" * 64)
    text = scrape(client)
    assert value(text, "mnist_model_info", name="mnist", version="42", sha256="b" * 64) == 1
    assert value(text, "mnist_model_info", name="mnist", version="41", sha256="a" * 64) == 0
    assert value(text, "mnist_model_loaded_version") == 42


def test_reloads_counted_by_outcome(client: Any) -> None:
    before = scrape(client)
    metrics.count_reload("success")
    metrics.count_reload("failure")
    metrics.count_reload("failure")
    after = scrape(client)
    name = "mnist_model_reloads_total"
    assert value(after, name, outcome="success") - value(before, name, outcome="success") == 1
    assert value(after, name, outcome="failure") - value(before, name, outcome="failure") == 2


def test_reload_outcome_is_a_closed_set() -> None:
    with pytest.raises(ValueError, match="'maybe'"):
        metrics.count_reload("maybe")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "accept",
    ["application/openmetrics-text; version=abc", "text/plain; version=x.y", ";;;,,", "*/*"],
)
def test_malformed_accept_header_still_gets_text_format(client: Any, accept: Any) -> None:
    response = client.get("/metrics", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.content_type.startswith("text/plain")
    assert "mnist_http_requests_total" in response.get_data(as_text=True)


def test_openmetrics_on_request(client: Any) -> None:
    response = client.get("/metrics", headers={"Accept": "application/openmetrics-text"})
    assert response.status_code == 200
    assert response.content_type.startswith("application/openmetrics-text")
    assert response.get_data(as_text=True).rstrip().endswith("# EOF")


def test_batch_buckets_cover_the_largest_batch() -> None:
    buckets = metrics.batch_buckets()
    assert buckets[0] == 1
    assert buckets[-1] >= MAX_BATCH_SIZE
    assert buckets[-2] < MAX_BATCH_SIZE
    assert metrics.batch_buckets(5) == (1, 2, 4, 8)


def test_metrics_route_is_registered_for_get_only(client: Any) -> None:
    assert client.post("/metrics").status_code == 405


WORKER = """
import json, os, sys
from service.observability import metrics, metrics_route
metrics.set_model_info("mnist", int(sys.argv[1]), "c" * 64)
metrics.observe_inference(0.001, 3, [5, 5, 2], int(sys.argv[1]))
metrics.count_reload("success")
print(json.dumps({"pid": os.getpid()}))
"""


def run_worker(multiproc_dir: Path, version: int) -> int:
    """Run the metrics calls of one worker in a real separate process; return its pid."""
    env = {**os.environ, metrics.MULTIPROC_ENV: str(multiproc_dir)}
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(version)],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(json.loads(done.stdout)["pid"])


def merged(multiproc_dir: Path) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=str(multiproc_dir))
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


def test_multiprocess_mode_merges_workers_and_forgets_dead_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    started = time.time()
    first = run_worker(tmp_path, 3)
    between = time.time()
    second = run_worker(tmp_path, 4)
    merged_samples = merged(tmp_path)

    def sample(metric: str, **labels: str) -> float | None:
        return merged_samples.get((metric, frozenset(labels.items())))

    assert sample("mnist_predictions_total", digit="5", version="3") == 2
    assert sample("mnist_predictions_total", digit="5", version="4") == 2
    assert sample("mnist_model_reloads_total", outcome="success") == 2
    assert sample("mnist_batch_size_count") == 2
    info = {"name": "mnist", "sha256": "c" * 64}
    assert sample("mnist_model_info", pid=str(first), version="3", **info) == 1
    assert sample("mnist_model_info", pid=str(second), version="4", **info) == 1
    # the time of each version's last run, one series per version (the max over workers)
    first_ran = sample("mnist_last_inference_timestamp_seconds", version="3")
    assert first_ran is not None and started <= first_ran <= between
    second_ran = sample("mnist_last_inference_timestamp_seconds", version="4")
    assert second_ran is not None and between <= second_ran <= time.time()

    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    metrics.mark_worker_dead(first)
    after_death = merged(tmp_path)
    pids = {dict(labels).get("pid") for name, labels in after_death if name == "mnist_model_info"}
    assert pids == {str(second)}
    # counters keep what the dead worker counted
    key = ("mnist_predictions_total", frozenset({"digit": "5", "version": "3"}.items()))
    assert after_death[key] == 2
    # and the time of a version's last run outlives the worker that made it
    last = ("mnist_last_inference_timestamp_seconds", frozenset({"version": "3"}.items()))
    assert after_death[last] == first_ran


REQUEST = """
import json, os, sys
from service.observability import metrics
from prometheus_client import CollectorRegistry, multiprocess

def merged(name, **labels):
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=os.environ["PROMETHEUS_MULTIPROC_DIR"])
    return sum(
        sample.value
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    )

seen = {}
metrics.request_started()
metrics.observe_preprocessing(0.0003)
metrics.observe_inference(0.001, 2, [7, 1], 3)
seen["in_flight_during"] = merged("mnist_http_requests_in_flight")
seen["predictions_during"] = merged("mnist_predictions_total")
metrics.request_finished("/predict", 200, 3, 0.002)
seen["in_flight_after"] = merged("mnist_http_requests_in_flight")
seen["predictions_after"] = merged("mnist_predictions_total", version="3")
seen["requests_after"] = merged("mnist_http_requests_total", route="/predict", status="200")
seen["latency_le_0_0025"] = merged(
    "mnist_http_request_duration_seconds_bucket", route="/predict", le="0.0025"
)
seen["latency_le_0_001"] = merged(
    "mnist_http_request_duration_seconds_bucket", route="/predict", le="0.001"
)
seen["preprocessing_count"] = merged("mnist_preprocessing_duration_seconds_count")
seen["inference_sum"] = merged("mnist_inference_duration_seconds_sum", version="3")
pid = os.fork()
if pid == 0:  # a forked worker writes its own file, named after its pid
    metrics.observe_request("/child", 200, None, None)
    os._exit(0)
os.waitpid(pid, 0)
seen["child_files"] = sorted(  # <kind>_<pid>.db: the whole pid field, not digits within one
    name
    for name in os.listdir(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    if name.removesuffix(".db").rsplit("_", 1)[-1] == str(pid)
)
seen["child_requests"] = merged("mnist_http_requests_total", route="/child")
print(json.dumps(seen))
"""


def test_a_requests_samples_are_written_together_when_it_is_answered(tmp_path: Path) -> None:
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", REQUEST],
        env=env,
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    seen = json.loads(done.stdout)
    # in flight at once; the request's other samples wait until it is answered
    assert seen["in_flight_during"] == 1
    assert seen["predictions_during"] == 0
    assert seen["in_flight_after"] == 0
    assert seen["predictions_after"] == 2
    assert seen["requests_after"] == 1
    # histogram buckets are cumulative in the exposition: 2 ms is in le=0.0025, not le=0.001
    assert seen["latency_le_0_0025"] == 1
    assert seen["latency_le_0_001"] == 0
    assert seen["preprocessing_count"] == 1
    assert seen["inference_sum"] == pytest.approx(0.001)
    # a forked child writes its own file (its pid renewed at the fork, not read per write)
    assert seen["child_files"]
    assert all(name.startswith("counter_") for name in seen["child_files"])
    assert seen["child_requests"] == 1


def test_observe_many_writes_what_observing_one_by_one_writes() -> None:
    """The writer's bulk observation: the same buckets, count and sum as one observe() per
    value (a value on a bucket's bound, above the last bound, and NaN included)."""
    from prometheus_client import Histogram

    amounts = np.array([0.0, 0.1, 0.25, 0.5, 0.5000001, 0.9, 1.0, 7.0, np.nan, 0.33, 0.99])
    registry = CollectorRegistry()
    one = Histogram("one", "one by one", buckets=(0.25, 0.5, 1.0), registry=registry)
    many = Histogram("many", "all at once", buckets=(0.25, 0.5, 1.0), registry=registry)
    for amount in amounts.tolist():
        one.observe(amount)
    metrics.observe_many(many, amounts)
    metrics.observe_many(many, amounts[:0])  # nothing observed: nothing written

    def samples(name: str) -> dict[str, float]:
        (family,) = [f for f in registry.collect() if f.name == name]
        return {s.name.removeprefix(name) + str(s.labels): s.value for s in family.samples}

    by_one, by_many = samples("one"), samples("many")
    assert np.isnan(by_one["_sum{}"]) and np.isnan(by_many.pop("_sum{}"))
    by_one.pop("_sum{}")
    by_one.pop("_created{}", None), by_many.pop("_created{}", None)
    assert by_many == by_one
    assert by_one["_count{}"] == 10  # NaN: counted in no bucket, as observe() does
