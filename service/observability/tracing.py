"""OpenTelemetry tracing: a span per request, child spans for its steps; off unless asked.

Tracing is on when the standard OpenTelemetry variables ask for it: an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or
``OTEL_TRACES_EXPORTER=otlp``; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` keep it
off. Spans go over OTLP/HTTP (protobuf) through the SDK's batch processor, which reads the other
``OTEL_*`` variables itself (endpoint, headers, timeout, service name, sampler).

The outer WSGI layer (service.observability.wsgi) opens the request's SERVER span, continuing
the caller's W3C ``traceparent``; inside it, :func:`step` opens the child spans ``decode`` (read
and decompress the body), ``preprocess`` (body to the model's float32 input) and ``inference``
(the onnxruntime run). With tracing off, :func:`step` hands back one shared no-op context:
nothing is allocated per request.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

#: the instrumentation scope of the service's spans
SCOPE = "mnist-service"
STEPS = ("decode", "preprocess", "inference")
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()


@dataclass(frozen=True)
class TracingConfig:
    """Whether to trace, read from the standard OpenTelemetry variables."""

    enabled: bool = False
    service_name: str = "mnist-service"

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TracingConfig:
        """On when an OTLP endpoint or OTEL_TRACES_EXPORTER=otlp asks; ValueError for an
        exporter this service does not ship (only otlp and none)."""
        name = environ.get("OTEL_SERVICE_NAME", "").strip() or cls.service_name
        if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls(enabled=False, service_name=name)
        exporter = environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
        if exporter == "none":
            return cls(enabled=False, service_name=name)
        if exporter not in ("", "otlp"):
            raise ValueError(f"OTEL_TRACES_EXPORTER={exporter!r}: this service exports otlp only")
        endpoint = (
            environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
        )
        return cls(enabled=exporter == "otlp" or bool(endpoint), service_name=name)


class RequestTracing:
    """Opens and closes the spans of requests, with one process's tracer."""

    def __init__(self, provider: TracerProvider) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer(SCOPE)
        self.propagator = TraceContextTextMapPropagator()

    def start(self, environ: Mapping[str, Any]) -> tuple[trace.Span, object]:
        """A SERVER span for the request in ``environ`` (continuing its traceparent), made the
        current span; returns it and the token :meth:`finish` needs."""
        carrier: dict[str, str] = {}
        traceparent = environ.get("HTTP_TRACEPARENT")
        if traceparent:
            carrier["traceparent"] = traceparent
            state = environ.get("HTTP_TRACESTATE")
            if state:
                carrier["tracestate"] = state
        parent = self.propagator.extract(carrier) if carrier else None
        method = environ.get("REQUEST_METHOD", "")
        span = self.tracer.start_span(
            method, context=parent, kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": environ.get("PATH_INFO", "")},
        )  # fmt: skip
        token = context.attach(trace.set_span_in_context(span))
        return span, token

    def finish(
        self,
        span: trace.Span,
        token: object,
        method: str,
        route: str,
        status: int,
        request_id: str,
    ) -> None:
        """Name the span after its route, record the outcome, end it, restore the context."""
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("mnist.request_id", request_id)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        context.detach(token)  # type: ignore[arg-type]

    def step(self, name: str) -> AbstractContextManager[None]:
        """A child span of the current request's span (not made current: nothing nests in it)."""
        return _Step(self.tracer, name)


class _Step:
    """The context manager of one child span: a plain class, cheaper than a generator."""

    __slots__ = ("name", "span", "tracer")

    def __init__(self, tracer: trace.Tracer, name: str) -> None:
        self.tracer = tracer
        self.name = name

    def __enter__(self) -> None:
        self.span = self.tracer.start_span(self.name)  # parent: the request's current span

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        if error is not None:
            self.span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        self.span.end()


_tracing: RequestTracing | None = None


def configure(
    config: TracingConfig, processor: SpanProcessor | None = None
) -> RequestTracing | None:
    """Set this process's tracing up (after a fork: the batch processor has a thread).

    ``processor`` replaces the OTLP exporter's batch processor (tests pass the SDK's in-memory
    exporter). Returns None, and traces nothing, when ``config`` is off.
    """
    global _tracing
    if not config.enabled:
        _tracing = None
        return None
    provider = TracerProvider(resource=Resource.create({"service.name": config.service_name}))
    if processor is None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    provider.add_span_processor(processor)
    _tracing = RequestTracing(provider)
    return _tracing


def step(name: str) -> AbstractContextManager[None]:
    """A child span ``name`` of the current request when tracing is on; a no-op otherwise."""
    tracing = _tracing
    if tracing is None:
        return _NOTHING
    return tracing.step(name)


def current_trace_id() -> str | None:
    """The current span's trace id as 32 hex digits, or None outside a traced request."""
    if _tracing is None:
        return None
    span_context = trace.get_current_span().get_span_context()
    return format(span_context.trace_id, "032x") if span_context.is_valid else None
