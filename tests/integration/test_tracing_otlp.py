"""Tracing on a real gunicorn, exported over OTLP/HTTP to a receiver this test runs on 127.0.0.1.

The receiver is a few lines of http.server that decode what the SDK's exporter posts to
/v1/traces with OpenTelemetry's own protobuf classes: one request must arrive as one trace
holding the SERVER span and its decode, preprocess and inference children.
"""

from __future__ import annotations

import gzip
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from tests.integration.conftest import StartServer

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE_ID}-b7ad6b7169203331-01"


class Receiver(http.server.ThreadingHTTPServer):
    """Collects the spans posted to /v1/traces as (trace id, span id, parent id, name)."""

    spans: list[tuple[str, str, str, str]]
    paths: list[str]


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.paths.append(self.path)
        export = ExportTraceServiceRequest.FromString(body)
        for resource in export.resource_spans:
            for scope in resource.scope_spans:
                for span in scope.spans:
                    self.server.spans.append(
                        (span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                         span.name)
                    )  # fmt: skip
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(("127.0.0.1", 0), _Handler)
    server.spans, server.paths = [], []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.timeout(120)
def test_one_request_arrives_as_one_trace_over_otlp(
    gunicorn_server: StartServer, receiver: Receiver, mnist_data_dir: Path
) -> None:
    server = gunicorn_server(
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
            "OTEL_SERVICE_NAME": "mnist-service-test",
            "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within 0.2 s instead of 5 s
        },
        workers=1,
    )
    with gzip.open(mnist_data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        digit = np.frombuffer(handle.read(784), dtype=np.uint8).tolist()
    response = requests.post(
        server.url + "/predict",
        json={"images": [digit]},
        headers={"traceparent": TRACEPARENT},
        timeout=10,
    )
    assert response.status_code == 200
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        ours = [span for span in receiver.spans if span[0] == TRACE_ID]
        if len(ours) >= 4:
            break
        time.sleep(0.1)
    assert receiver.paths and set(receiver.paths) == {"/v1/traces"}
    names = {name: (span_id, parent) for _, span_id, parent, name in ours}
    assert set(names) == {"POST /predict", "decode", "preprocess", "inference"}, ours
    root_id, root_parent = names["POST /predict"]
    assert root_parent == "b7ad6b7169203331"  # the caller's span
    assert all(names[step][1] == root_id for step in ("decode", "preprocess", "inference"))
    lines = [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    logged = [line for line in lines if line.get("route") == "/predict"]
    assert [line["trace_id"] for line in logged] == [TRACE_ID]
