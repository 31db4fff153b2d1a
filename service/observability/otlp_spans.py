"""The OTLP/HTTP span exporter with a faster encoder for the service's own spans.

The SDK's OTLP encoder builds a protobuf object per span, per attribute and per status and
hashes each span's Resource as JSON: about 20 us of CPU per span, most of what tracing costs
once the spans are cheap (docs/observability.md). :func:`encode_spans` writes the same
``ExportTraceServiceRequest`` (opentelemetry-proto's trace.proto and trace_service.proto) in
the protobuf wire format directly, for the spans this service makes: one resource, one scope,
no events or links, string/bool/int/float attributes. Anything else (or an SDK whose exporter
no longer has the internals used here) falls back to the SDK's encoder and export, so the
output is never wrong, only slower. The tests compare the bytes with the SDK encoder's message.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common._internal import (
    _encode_instrumentation_scope,
    _encode_resource,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.trace import SpanKind

_logger = logging.getLogger(__name__)
_FIXED64 = struct.Struct("<Q").pack
_FIXED32 = struct.Struct("<I").pack
_DOUBLE = struct.Struct("<d").pack
#: Span.kind values of trace.proto
_KINDS = {
    SpanKind.INTERNAL: b"\x01",
    SpanKind.SERVER: b"\x02",
    SpanKind.CLIENT: b"\x03",
    SpanKind.PRODUCER: b"\x04",
    SpanKind.CONSUMER: b"\x05",
}
#: SpanFlags: the parent's is-remote bit is known (0x100), and set (0x200)
_LOCAL_PARENT = _FIXED32(0x100)
_REMOTE_PARENT = _FIXED32(0x300)


class Unencodable(Exception):
    """A span this encoder does not write (the SDK's encoder does)."""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: its tag byte(s), the length, the payload."""
    return tag + _varint(len(payload)) + payload


def _any_value(value: object) -> bytes:
    """common.proto AnyValue of a string, bool, int (int64) or float."""
    if isinstance(value, str):
        return _field(b"\x0a", value.encode())
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + _varint(value & 0xFFFFFFFFFFFFFFFF)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    raise Unencodable(f"attribute value {type(value).__name__}")


def _span(span: ReadableSpan) -> bytes:
    """trace.proto Span: ids, trace state, name, kind, times, attributes, status, flags."""
    context, parent = span.context, span.parent
    if context is None or span.start_time is None or span.end_time is None:
        raise Unencodable("an unfinished span")
    if span.events or span.links or span.dropped_attributes:
        raise Unencodable("events, links or dropped attributes")
    parts = [
        b"\x0a\x10",
        context.trace_id.to_bytes(16, "big"),
        b"\x12\x08",
        context.span_id.to_bytes(8, "big"),
    ]
    if context.trace_state:
        parts.append(_field(b"\x1a", context.trace_state.to_header().encode()))
    if parent is not None:
        parts += [b"\x22\x08", parent.span_id.to_bytes(8, "big")]
    parts += [
        _field(b"\x2a", span.name.encode()),
        b"\x30",
        _KINDS[span.kind],
        b"\x39",
        _FIXED64(span.start_time),
        b"\x41",
        _FIXED64(span.end_time),
    ]
    attributes: Mapping[str, Any] = span.attributes or {}
    for key, value in attributes.items():
        parts.append(
            _field(b"\x4a", _field(b"\x0a", key.encode()) + _field(b"\x12", _any_value(value)))
        )
    status = b""
    if span.status.description:
        status += _field(b"\x12", span.status.description.encode())
    if span.status.status_code.value:
        status += b"\x18" + _varint(span.status.status_code.value)
    parts += [_field(b"\x7a", status), b"\x85\x01"]
    parts.append(_REMOTE_PARENT if parent is not None and parent.is_remote else _LOCAL_PARENT)
    return b"".join(parts)


def encode_spans(spans: Sequence[ReadableSpan]) -> bytes:
    """A serialised ExportTraceServiceRequest of ``spans`` (all of one resource and scope, the
    first span's); Unencodable for anything else."""
    if not spans:
        return b""
    resource, scope = spans[0].resource, spans[0].instrumentation_scope
    if scope is None:
        raise Unencodable("a span without an instrumentation scope")
    if any(s.resource is not resource or s.instrumentation_scope is not scope for s in spans):
        raise Unencodable("spans of more than one resource or scope")
    body = b"".join(_field(b"\x12", _span(span)) for span in spans)
    scope_spans = _field(b"\x0a", _encode_instrumentation_scope(scope).SerializeToString()) + body
    if scope.schema_url:
        scope_spans += _field(b"\x1a", scope.schema_url.encode())
    resource_spans = _field(b"\x0a", _encode_resource(resource).SerializeToString())
    resource_spans += _field(b"\x12", scope_spans)
    if resource.schema_url:
        resource_spans += _field(b"\x1a", resource.schema_url.encode())
    return _field(b"\x0a", resource_spans)


class FastOTLPSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP exporter (settings, retries, compression, its HTTP client) with
    :func:`encode_spans`; the SDK's own encoding and export for what that does not write."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        client = getattr(self, "_client", None)
        if self._shutdown or not hasattr(client, "export"):
            return super().export(spans)
        try:
            data = encode_spans(spans)
        except Unencodable:
            return super().export(spans)
        if not data:
            return SpanExportResult.SUCCESS
        result = client.export(data)  # type: ignore[union-attr]
        return SpanExportResult.SUCCESS if result.success else SpanExportResult.FAILURE
