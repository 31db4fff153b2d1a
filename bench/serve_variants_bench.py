"""The service against itself under another setting: single-image JSON /predict, paired rounds.

Each variant is the service with a few environment variables changed; the first is the baseline.
Built-in comparisons (``--compare``):
  worker   the buffering worker (default) against gunicorn's own gthread worker
  tracing  tracing off (default) against tracing on, spans sent over OTLP/HTTP to a local
           receiver started here (it accepts and drops them)
Prints req/s, p50/p99 per variant and the median of the paired rounds' ratios.
Usage: python bench/serve_variants_bench.py --compare worker [--duration 12] [--rounds 12]
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import loadgen


class _DropSpans(http.server.BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that reads and drops what it gets (the exporter's cost is measured)."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        """Silent."""


@contextmanager
def otlp_receiver() -> Iterator[str]:
    """A local OTLP/HTTP endpoint, its base URL; stopped afterwards."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DropSpans)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print its table; non-zero exit when anything failed."""
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--compare", choices=["worker", "tracing"], default="worker")
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args(argv)
    wrk = loadgen.require_wrk()
    pixels, _ = loadgen.mnist_test_digits(args.data_dir, 1)
    body = loadgen.PostBody(
        path="/predict",
        content_type="application/json",
        body=json.dumps({"images": [pixels[0].tolist()]}).encode(),
        images=1,
    )
    base = {"MODEL_DIR": str(args.models_dir.resolve())}
    with ExitStack() as stack:
        if args.compare == "worker":
            variants = {
                "buffering worker": base,
                "gunicorn gthread": {**base, "GUNICORN_CMD_ARGS": "--worker-class gthread"},
            }
        else:
            receiver = stack.enter_context(otlp_receiver())
            variants = {
                "tracing off": base,
                "tracing on": {
                    **base,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver,
                    "OTEL_SERVICE_NAME": "mnist-service",
                },
            }
        scratch = stack.enter_context(loadgen.scratch_dir())
        servers = {
            name: stack.enter_context(
                loadgen.gunicorn_server(loadgen.SERVICE_APP, env, scratch, "/v2/health/ready")
            )
            for name, env in variants.items()
        }
        cases = [
            loadgen.LoadCase(name, server.url, body, args.concurrency)
            for name, server in servers.items()
        ]
        results = loadgen.measure_rounds(cases, args.duration, args.rounds, scratch, wrk)
    names = list(variants)
    baseline = results[names[0]]
    rows = []
    for name in names:
        result = results[name]
        ratio, per_round = loadgen.paired_ratio(result, baseline)
        rows.append(
            [
                name,
                f"{result.requests_per_second:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                f"{ratio:.3f}",
                " ".join(f"{r:.2f}" for r in per_round),
            ]
        )
    loadgen.print_table(
        f"Single-image JSON /predict, concurrency {args.concurrency}, {args.duration:g} s per "
        f"variant in {args.rounds} interleaved rounds",
        ["variant", "req/s", "p50 ms", "p99 ms", f"vs {names[0]}", "ratio per round"],
        rows,
    )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
