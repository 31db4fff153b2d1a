"""The service's OTLP span encoding against the SDK's: the same ExportTraceServiceRequest for the
spans a traced request makes (a continued trace with tracestate, a new trace, error steps,
attributes of every kind), and the SDK's encoder for what it does not write."""

from __future__ import annotations

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from service.observability import otlp_spans, tracing
from service.observability.tracing import TracingConfig


def _request_spans(environ: dict[str, str], status: int) -> tuple[ReadableSpan, ...]:
    exporter = InMemorySpanExporter()
    request_tracing = tracing.configure(TracingConfig(enabled=True), SimpleSpanProcessor(exporter))
    assert request_tracing is not None
    try:
        span = request_tracing.start({"REQUEST_METHOD": "POST", "PATH_INFO": "/p", **environ})
        span.attributes.update({"a.bool": True, "a.float": 0.25, "a.negative": -3})
        with tracing.step("decode"):
            pass
        with pytest.raises(ValueError), tracing.step("preprocess"):
            raise ValueError("an error span")
        request_tracing.finish(span, "POST", "/p", status, "id-1")
    finally:
        tracing.configure(TracingConfig(enabled=False))
    return exporter.get_finished_spans()


@pytest.mark.parametrize(
    ("environ", "status"),
    [
        ({}, 200),
        ({"HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}, 422),
        (
            {
                "HTTP_TRACEPARENT": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                "HTTP_TRACESTATE": "vendor=x1,other=y2",
            },
            503,
        ),
    ],
)
def test_the_same_message_as_the_sdk_encoder(environ: dict[str, str], status: int) -> None:
    spans = _request_spans(environ, status)
    assert len(spans) == 3
    ours = ExportTraceServiceRequest.FromString(otlp_spans.encode_spans(spans))
    assert ours == sdk_encode(spans)
    [resource_spans] = ours.resource_spans
    assert len(resource_spans.scope_spans[0].spans) == 3


def test_what_it_does_not_write_is_refused() -> None:
    [*steps, root] = _request_spans({}, 200)
    with_event = ReadableSpan(
        root.name,
        root.context,
        root.parent,
        root.resource,
        root.attributes,
        events=[Event("e")],
        instrumentation_scope=root.instrumentation_scope,
        start_time=root.start_time,
        end_time=root.end_time,
    )
    with pytest.raises(otlp_spans.Unencodable):
        otlp_spans.encode_spans([*steps, with_event])
    with pytest.raises(otlp_spans.Unencodable):
        otlp_spans.encode_spans([*steps, ReadableSpan("x", root.context, None, root.resource)])


def test_the_fast_path_is_live_with_this_sdk() -> None:
    exporter = otlp_spans.FastOTLPSpanExporter(endpoint="http://127.0.0.1:9/v1/traces")
    assert callable(exporter._client.export)  # else every batch takes the SDK's slower path
