"""OpenTelemetry tracing: a span per request, child spans for its steps; off unless asked.

Tracing is on when the standard OpenTelemetry variables ask for it: an OTLP endpoint
(``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) or
``OTEL_TRACES_EXPORTER=otlp``; ``OTEL_TRACES_EXPORTER=none`` or ``OTEL_SDK_DISABLED=true`` keep it
off. Spans go over OTLP/HTTP (protobuf) through the SDK's batch processor, which reads the other
``OTEL_*`` variables itself (endpoint, headers, timeout, ``OTEL_BSP_*``); the SDK's
TracerProvider reads the service name and the sampler (``OTEL_TRACES_SAMPLER``).

The outer WSGI layer (service.observability.wsgi) opens the request's SERVER span, continuing
the caller's W3C ``traceparent``; inside it, :func:`step` times the child spans ``decode`` (read
and decompress the body), ``preprocess`` (body to the model's float32 input) and ``inference``
(the onnxruntime run). With tracing off, :func:`step` hands back one shared no-op context:
nothing is allocated per request.

Why the spans are not the SDK's ``Tracer.start_span``: an SDK ``Span`` costs 30-70 us of CPU
in CPython (a lock, bounded attribute and event containers, a sampler call per span) and
leaves garbage for the collector, about 0.4 ms per request of four spans, a third of what the
whole request costs. Here the SDK's sampler decides once per request (children follow it, as
the default ``parentbased_*`` samplers do), the SDK's id generator makes the ids, the steps
only note their start and end times, and when the request ends its four finished spans are
handed to the span processor as the SDK's ``ReadableSpan`` (the type every exporter takes).
The current request is a context variable of this module (:func:`current_trace_id`), not
OpenTelemetry's current span: nothing else in the service starts spans.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from service.command_line import integer_text

#: the instrumentation scope of the service's spans
SCOPE = "mnist-service"
STEPS = ("decode", "preprocess", "inference")
_NOTHING: AbstractContextManager[None] = contextlib.nullcontext()
#: the batch processor's queue and export batch when the operator sets neither OTEL_BSP_ variable:
#: four times the SDK's 2048 and 512, so each OTLP request carries 2048 spans (a quarter of the
#: exports' fixed cost per span) and a busy worker does not drop spans while one is sent
BATCH_QUEUE_SIZE = 8192
EXPORT_BATCH_SIZE = 2048
_UNSET = Status(StatusCode.UNSET)
_ERROR = Status(StatusCode.ERROR)


@dataclass(frozen=True)
class TracingConfig:
    """Whether to trace, read from the standard OpenTelemetry variables."""

    enabled: bool = False
    service_name: str = "mnist-service"
    #: None: the SDK reads OTEL_BSP_MAX_QUEUE_SIZE / OTEL_BSP_MAX_EXPORT_BATCH_SIZE itself
    max_queue_size: int | None = BATCH_QUEUE_SIZE
    max_export_batch_size: int | None = EXPORT_BATCH_SIZE

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> TracingConfig:
        """On when an OTLP endpoint or OTEL_TRACES_EXPORTER=otlp asks; ValueError for an
        exporter this service does not ship (only otlp and none). The batch sizes are ours
        (BATCH_QUEUE_SIZE, EXPORT_BATCH_SIZE) unless either OTEL_BSP_ size variable is set."""
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
        enabled = exporter == "otlp" or bool(endpoint)
        if enabled:
            check_batch_settings(environ)
        if "OTEL_BSP_MAX_QUEUE_SIZE" in environ or "OTEL_BSP_MAX_EXPORT_BATCH_SIZE" in environ:
            return cls(enabled, name, max_queue_size=None, max_export_batch_size=None)
        return cls(enabled=enabled, service_name=name)


#: the OTEL_BSP_ integers: the SDK's default, and the largest value taken (a million spans held;
#: an hour, in milliseconds, between exports or for one export)
BATCH_SETTINGS = {
    "OTEL_BSP_MAX_QUEUE_SIZE": (2048, 1_000_000),
    "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": (512, 1_000_000),
    "OTEL_BSP_SCHEDULE_DELAY": (5000, 3_600_000),
    "OTEL_BSP_EXPORT_TIMEOUT": (30000, 3_600_000),
}


def check_batch_settings(environ: Mapping[str, str]) -> None:
    """ValueError naming the OTEL_BSP_ variable the SDK's batch processor would fail on in every
    worker (not a whole number, under 1, over BATCH_SETTINGS' bound, or an export batch larger
    than the queue)."""
    values = {}
    for name, (default, highest) in BATCH_SETTINGS.items():
        text = environ.get(name, "").strip()
        if not text:
            values[name] = default
            continue
        try:
            values[name] = integer_text(text)
        except ValueError:
            values[name] = 0
        if not 1 <= values[name] <= highest:
            raise ValueError(f"{name}={text!r}: expected a whole number from 1 to {highest:,}")
    queue = values["OTEL_BSP_MAX_QUEUE_SIZE"]
    if values["OTEL_BSP_MAX_EXPORT_BATCH_SIZE"] > queue:
        raise ValueError(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE={values['OTEL_BSP_MAX_EXPORT_BATCH_SIZE']}: "
            f"larger than the queue (OTEL_BSP_MAX_QUEUE_SIZE, {queue})"
        )


class _Resource(Resource):
    """The process's Resource with its hash computed once: the OTLP encoder groups every span
    by its resource, and Resource's own hash serialises its attributes to JSON each time."""

    def __init__(self, resource: Resource) -> None:
        super().__init__(resource.attributes, resource.schema_url)
        self._hash = super().__hash__()

    def __hash__(self) -> int:
        return self._hash


class RequestSpan:
    """The span of one request while it runs: its context, its start, its steps so far.

    ``steps`` holds (name, start ns, end ns, error type name or None), times since the epoch
    as OpenTelemetry wants them; ``recording`` is the sampler's decision (steps are noted only
    when it records).
    """

    __slots__ = ("attributes", "context", "parent", "recording", "start_ns", "steps", "token")

    def __init__(
        self,
        span_context: SpanContext,
        parent: SpanContext | None,
        recording: bool,
        attributes: dict[str, Any],
    ) -> None:
        self.context = span_context
        self.parent = parent
        self.recording = recording
        self.attributes = attributes
        self.start_ns = time.time_ns()
        self.steps: list[tuple[str, int, int, str | None]] = []
        self.token: object = None  # of the context variable holding the current request

    @property
    def trace_id(self) -> str:
        """The trace id as 32 hex digits (what the log line carries)."""
        return format(self.context.trace_id, "032x")


_current: contextvars.ContextVar[RequestSpan | None] = contextvars.ContextVar(
    "mnist_request_span", default=None
)


class RequestTracing:
    """Opens and closes the spans of requests, with one process's provider and processor.

    ``provider`` gives the sampler, the id generator and the resource (the SDK reads
    ``OTEL_TRACES_SAMPLER``, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` for it);
    ``processor`` receives every finished span (the batch processor of the OTLP exporter).
    """

    def __init__(self, provider: TracerProvider, processor: SpanProcessor) -> None:
        self.provider = provider
        self.processor = processor
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.resource = _Resource(provider.resource)
        self.scope = InstrumentationScope(SCOPE)
        self.propagator = TraceContextTextMapPropagator()

    def start(self, environ: Mapping[str, Any]) -> RequestSpan:
        """The SERVER span of the request in ``environ`` (continuing its traceparent), the
        current request's (for :func:`step`) until :meth:`finish`."""
        parent_context = None
        traceparent = environ.get("HTTP_TRACEPARENT")
        if traceparent:
            carrier = {"traceparent": traceparent}
            state = environ.get("HTTP_TRACESTATE")
            if state:
                carrier["tracestate"] = state
            parent_context = self.propagator.extract(carrier)
        parent: SpanContext | None = trace.get_current_span(parent_context).get_span_context()
        if parent is not None and parent.is_valid:
            trace_id = parent.trace_id
        else:
            parent, trace_id = None, self.ids.generate_trace_id()
        method = environ.get("REQUEST_METHOD", "")
        attributes: dict[str, Any] = {
            "http.request.method": method,
            "url.path": environ.get("PATH_INFO", ""),
        }
        decision = self.sampler.should_sample(
            parent_context, trace_id, method, SpanKind.SERVER, attributes
        )
        if decision.attributes:
            attributes.update(decision.attributes)
        flags = trace.TraceFlags.SAMPLED if decision.decision is Decision.RECORD_AND_SAMPLE else 0
        # W3C level 2's random flag, as the SDK's tracer sets it
        if parent.trace_flags.random_trace_id if parent else self.ids.is_trace_id_random():
            flags |= trace.TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            self.ids.generate_span_id(),
            is_remote=False,
            trace_flags=trace.TraceFlags(flags),
            trace_state=decision.trace_state,
        )
        span = RequestSpan(span_context, parent, decision.decision is not Decision.DROP, attributes)
        span.token = _current.set(span)
        return span

    def finish(
        self,
        span: RequestSpan,
        method: str,
        route: str,
        status: int,
        request_id: str,
    ) -> None:
        """Restore the context; when sampled, hand the request's span (named after its route,
        with its outcome) and its steps' spans to the processor."""
        end_ns = time.time_ns()
        _current.reset(span.token)  # type: ignore[arg-type]
        if not span.recording:
            return
        attributes = span.attributes
        attributes["http.route"] = route
        attributes["http.response.status_code"] = status
        attributes["mnist.request_id"] = request_id
        request_context, resource, scope = span.context, self.resource, self.scope
        on_end = self.processor.on_end
        for name, start_ns, step_end_ns, error in span.steps:
            on_end(
                ReadableSpan(
                    name,
                    SpanContext(
                        request_context.trace_id,
                        self.ids.generate_span_id(),
                        is_remote=False,
                        trace_flags=request_context.trace_flags,
                        trace_state=request_context.trace_state,
                    ),
                    request_context,
                    resource,
                    None,
                    status=_UNSET if error is None else Status(StatusCode.ERROR, error),
                    start_time=start_ns,
                    end_time=step_end_ns,
                    instrumentation_scope=scope,
                )
            )
        on_end(
            ReadableSpan(
                f"{method} {route}",
                request_context,
                span.parent,
                resource,
                attributes,
                kind=SpanKind.SERVER,
                status=_ERROR if status >= 500 else _UNSET,
                start_time=span.start_ns,
                end_time=end_ns,
                instrumentation_scope=scope,
            )
        )


class _Step:
    """The context manager of one child span: notes its times (and its error) in the request's
    span; a plain class, cheaper than a generator."""

    __slots__ = ("name", "span", "start_ns")

    def __init__(self, span: RequestSpan, name: str) -> None:
        self.span = span
        self.name = name

    def __enter__(self) -> None:
        self.start_ns = time.time_ns()

    def __exit__(self, kind: object, error: object, traceback: object) -> None:
        self.span.steps.append(
            (
                self.name,
                self.start_ns,
                time.time_ns(),
                None if error is None else type(error).__name__,
            )
        )


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
        from service.observability.otlp_spans import FastOTLPSpanExporter

        processor = BatchSpanProcessor(
            FastOTLPSpanExporter(),
            max_queue_size=config.max_queue_size,
            max_export_batch_size=config.max_export_batch_size,
        )
    provider.add_span_processor(processor)  # the provider flushes it at exit
    _tracing = RequestTracing(provider, processor)
    return _tracing


def step(name: str) -> AbstractContextManager[None]:
    """A child span ``name`` of the current request when it is traced and sampled; a no-op
    otherwise."""
    if _tracing is None:
        return _NOTHING
    span = _current.get()
    if span is None or not span.recording:
        return _NOTHING
    return _Step(span, name)


def current_trace_id() -> str | None:
    """The current request's trace id as 32 hex digits, or None outside a traced request."""
    span = _current.get() if _tracing is not None else None
    return None if span is None else span.trace_id
