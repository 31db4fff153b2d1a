"""Tracing with the OpenTelemetry SDK's in-memory exporter: the spans of a request, their
parents, the continued traceparent, the trace id in the log line; and off by default."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from flask.testing import FlaskClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from service.app import create_app
from service.observability import request_log, tracing
from service.observability.tracing import TracingConfig
from tests.service.conftest import MakePredictor

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    ("environ", "enabled"),
    [
        ({}, False),
        ({"OTEL_SERVICE_NAME": "x"}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1"}, False),
    ],
)
def test_tracing_is_off_unless_the_otel_variables_ask(
    environ: dict[str, str], enabled: bool
) -> None:
    assert TracingConfig.from_env(environ).enabled is enabled


def test_an_exporter_this_service_does_not_ship_is_refused() -> None:
    with pytest.raises(ValueError, match="zipkin"):
        TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "zipkin"})


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    yield spans
    tracing.configure(TracingConfig(enabled=False))


@pytest.fixture
def traced_client(
    model_repo: Path, make_predictor: MakePredictor, exporter: InMemorySpanExporter
) -> FlaskClient:
    predictor = make_predictor()
    predictor.load()
    request_tracing = tracing.configure(TracingConfig(enabled=True), SimpleSpanProcessor(exporter))
    return create_app(predictor.config, predictor, request_tracing).test_client()


@pytest.fixture(scope="module")
def digit(mnist_data_dir: Path) -> list[int]:
    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        pixels: list[int] = np.frombuffer(handle.read(784), dtype=np.uint8).tolist()
        return pixels


def _by_name(spans: tuple[ReadableSpan, ...]) -> dict[str, ReadableSpan]:
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


V2_BODY = {"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32"}]}


@pytest.mark.parametrize(
    ("path", "root_name"),
    [("/predict", "POST /predict"), ("/v2/models/mnist/infer", "POST /v2/models/<model>/infer")],
)
def test_one_request_is_one_trace_with_its_steps(
    traced_client: FlaskClient,
    exporter: InMemorySpanExporter,
    digit: list[int],
    path: str,
    root_name: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if path == "/predict":
        body: dict[str, object] = {"images": [digit]}
    else:
        body = {"inputs": [{**V2_BODY["inputs"][0], "data": [p / 255 for p in digit]}]}
    capsys.readouterr()
    response = traced_client.post(path, json=body, headers={"traceparent": TRACEPARENT})
    assert response.status_code == 200, response.get_data(as_text=True)
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {root_name, "decode", "preprocess", "inference"}
    root = spans[root_name]
    assert root.kind == SpanKind.SERVER
    assert root.context is not None and root.parent is not None
    assert format(root.context.trace_id, "032x") == TRACE_ID  # the caller's trace, continued
    assert format(root.parent.span_id, "016x") == "00f067aa0ba902b7"
    times = {}
    for name in ("decode", "preprocess", "inference"):
        step, parent = spans[name].context, spans[name].parent
        assert step is not None and parent is not None
        assert parent.span_id == root.context.span_id, name
        assert step.trace_id == root.context.trace_id
        start, end = spans[name].start_time, spans[name].end_time
        assert start is not None and end is not None
        times[name] = (start, end)
    assert times["decode"][1] <= times["preprocess"][0]
    assert times["preprocess"][1] <= times["inference"][0]
    attributes = root.attributes or {}
    assert attributes["http.response.status_code"] == 200
    assert attributes["mnist.request_id"] == response.headers["X-Request-ID"]
    [line] = [
        json.loads(text)
        for text in capsys.readouterr().err.splitlines()
        if text.startswith("{") and json.loads(text).get("logger") == request_log.LOGGER_NAME
    ]
    assert line["trace_id"] == TRACE_ID


def test_a_request_without_traceparent_starts_a_trace(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    assert traced_client.get("/v2/health/ready").status_code == 200
    [span] = exporter.get_finished_spans()
    assert span.name == "GET /v2/health/ready" and span.parent is None


def test_a_failing_request_is_an_error_span(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    response = traced_client.post(
        "/predict", data=b"{broken", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 400
    spans = _by_name(exporter.get_finished_spans())
    assert (spans["POST /predict"].attributes or {})["http.response.status_code"] == 400


def test_off_by_default_no_span_and_no_trace_id(
    model_repo: Path, make_predictor: MakePredictor, capsys: pytest.CaptureFixture[str]
) -> None:
    predictor = make_predictor()
    predictor.load()
    app = create_app(predictor.config, predictor)  # the environment asks for nothing
    assert app.wsgi_app.tracing is None  # type: ignore[attr-defined]
    assert tracing.step("decode") is tracing.step("inference")  # one shared no-op
    capsys.readouterr()
    assert app.test_client().get("/v2/health/live").status_code == 200
    lines = [json.loads(t) for t in capsys.readouterr().err.splitlines() if t.startswith("{")]
    assert lines and all("trace_id" not in line for line in lines)


def test_a_failing_step_is_an_error_span_inside_a_4xx_request(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    response = traced_client.post("/predict", json={"images": [[0] * 783]})
    assert response.status_code == 422
    spans = _by_name(exporter.get_finished_spans())
    assert set(spans) == {"POST /predict", "decode", "preprocess"}
    assert spans["preprocess"].status.status_code == StatusCode.ERROR
    assert spans["decode"].status.status_code == StatusCode.UNSET
    assert spans["POST /predict"].status.status_code == StatusCode.UNSET  # a 4xx is the caller's


def test_the_standard_sampler_variable_is_obeyed(
    model_repo: Path,
    make_predictor: MakePredictor,
    exporter: InMemorySpanExporter,
    digit: list[int],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")  # read by the SDK's TracerProvider
    predictor = make_predictor()
    predictor.load()
    request_tracing = tracing.configure(TracingConfig(enabled=True), SimpleSpanProcessor(exporter))
    client = create_app(predictor.config, predictor, request_tracing).test_client()
    capsys.readouterr()
    response = client.post(
        "/predict", json={"images": [digit]}, headers={"traceparent": TRACEPARENT}
    )
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()  # nothing recorded, nothing exported
    lines = [json.loads(t) for t in capsys.readouterr().err.splitlines() if t.startswith("{")]
    assert [line["trace_id"] for line in lines if line.get("route") == "/predict"] == [TRACE_ID]


def test_no_step_span_outside_a_request(
    traced_client: FlaskClient, exporter: InMemorySpanExporter
) -> None:
    with tracing.step("inference"):
        pass
    assert exporter.get_finished_spans() == ()
    assert tracing.current_trace_id() is None


@pytest.mark.parametrize(
    ("environ", "sizes"),
    [
        ({}, (tracing.BATCH_QUEUE_SIZE, tracing.EXPORT_BATCH_SIZE)),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "100"}, (None, None)),  # the SDK reads both
        ({"OTEL_BSP_MAX_QUEUE_SIZE": "1000"}, (None, None)),
    ],
)
def test_batch_sizes_are_ours_unless_the_operator_sets_one(
    environ: dict[str, str], sizes: tuple[int | None, int | None]
) -> None:
    config = TracingConfig.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://h:1", **environ})
    assert (config.max_queue_size, config.max_export_batch_size) == sizes
