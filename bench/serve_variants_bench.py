"""The service against itself under another setting, one request body, paired rounds.

Each variant is the service with a few environment variables changed; the first is the baseline.
Built-in comparisons (``--compare``):
  worker   the buffering worker (default) against gunicorn's own gthread worker
  threads  4 threads per worker (the default GUNICORN_THREADS) against 2 and 1
  tracing  tracing off (default) against tracing on, spans sent over OTLP/HTTP to a local
           receiver started here in a process of its own (bench/otlp_sink.py: it reads and
           drops them); its CPU per traced request is printed apart from the server's
  store    the prediction store on (default: every answer and its input written to SQLite
           for feedback) against STORE=0 (no rows; the drift windows and answer metrics stay)
  inputs   the prediction store keeping every input for feedback (default) against
           STORE_INPUT_RETENTION_SECONDS=0 (rows without their 784-byte input unless asked)
  writer-nice  the prediction writer thread at nice 10 (default STORE_WRITER_NICE: with every
           core busy, answering goes first) against nice 0 (the writer on an equal footing)
  ort-threads  one onnxruntime (and BLAS) thread per worker (default ORT_INTRA_OP_THREADS) against
           two: a worker's batch may use the core its sibling leaves idle
The body (``--body``): one image as JSON to /predict (default, at concurrency 8), a batch of 256
as JSON to /predict, or a batch of 256 as Open Inference Protocol binary FP32 (both at
concurrency 2, as in serve_images_bench.py). Prints req/s, p50/p99, the server's CPU per
request per variant and the median of the paired rounds' ratios.
Usage: python bench/serve_variants_bench.py --compare worker [--body single|json-batch|v2-batch]
       [--duration 12] [--rounds 12] [--concurrency N]
"""

from __future__ import annotations

import math
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import loadgen
import serve_images_bench

BATCH = serve_images_bench.BATCH
#: the request bodies this script can send: title, concurrency by default, images per request
BODIES = {
    "single": ("Single-image JSON /predict", 8, 1),
    "json-batch": (f"JSON batch of {BATCH} /predict", 2, BATCH),
    "v2-batch": (f"Open Inference Protocol binary FP32 batch of {BATCH}", 2, BATCH),
}


@dataclass
class Receiver:
    """The OTLP sink's process and its URL; ``cpu_seconds`` (its CPU from being ready until it
    stops, its interpreter's start left out) is filled in when it stops."""

    process: subprocess.Popen[str]
    url: str
    cpu_seconds: float = math.nan


@contextmanager
def otlp_receiver() -> Iterator[Receiver]:
    """A local OTLP/HTTP endpoint in a process of its own (bench/otlp_sink.py); stopped after."""
    port = loadgen.free_port()
    process = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("otlp_sink.py")), str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    receiver = Receiver(process, f"http://127.0.0.1:{port}")
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit("the OTLP receiver did not start") from None
                time.sleep(0.05)
        started = loadgen.process_cpu_seconds(process.pid) or 0.0
        yield receiver
    finally:
        ended = loadgen.process_cpu_seconds(process.pid)
        receiver.cpu_seconds = math.nan if ended is None else ended - started
        process.terminate()
        process.communicate(timeout=10)


def main(argv: list[str] | None = None) -> int:
    """Run the comparison and print its table; non-zero exit when anything failed."""
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument(
        "--compare",
        choices=["worker", "threads", "tracing", "store", "inputs", "ort-threads", "writer-nice"],
        default="worker",
    )
    parser.add_argument("--body", choices=list(BODIES), default="single")
    parser.add_argument("--concurrency", type=int, default=None, help="default: the body's")
    args = parser.parse_args(argv)
    wrk = loadgen.require_wrk()
    title, concurrency, images = BODIES[args.body]
    concurrency = concurrency if args.concurrency is None else args.concurrency
    pixels, _ = loadgen.mnist_test_digits(args.data_dir, images)
    body = (
        serve_images_bench.v2_binary_body(pixels)
        if args.body == "v2-batch"
        else serve_images_bench.json_body(pixels)
    )
    base = {"MODEL_DIR": str(args.models_dir.resolve())}
    receiver = None
    with ExitStack() as stack:
        if args.compare == "worker":
            variants = {
                "buffering worker": base,
                "gunicorn gthread": {**base, "GUNICORN_CMD_ARGS": "--worker-class gthread"},
            }
        elif args.compare == "threads":
            variants = {
                "4 threads per worker": {**base, "GUNICORN_THREADS": "4"},
                "2 threads per worker": {**base, "GUNICORN_THREADS": "2"},
                "1 thread per worker": {**base, "GUNICORN_THREADS": "1"},
            }
        elif args.compare == "store":
            variants = {"store on": base, "store off (STORE=0)": {**base, "STORE": "0"}}
        elif args.compare == "writer-nice":
            variants = {
                "writer at nice 10": base,
                "writer at nice 0": {**base, "STORE_WRITER_NICE": "0"},
            }
        elif args.compare == "ort-threads":
            variants = {
                "1 onnxruntime thread": base,
                "2 onnxruntime threads": {**base, "ORT_INTRA_OP_THREADS": "2"},
            }
        elif args.compare == "inputs":
            variants = {
                "inputs kept for feedback": base,
                "inputs not kept": {**base, "STORE_INPUT_RETENTION_SECONDS": "0"},
            }
        else:
            receiver = stack.enter_context(otlp_receiver())
            variants = {
                "tracing off": base,
                "tracing on": {
                    **base,
                    "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
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
            loadgen.LoadCase(name, server.url, body, concurrency, server.pid)
            for name, server in servers.items()
        ]
        results = loadgen.measure_rounds(cases, args.duration, args.rounds, scratch, wrk)
        records = {name: loadgen.store_counts(server.url) for name, server in servers.items()}
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
                f"{result.images_per_second:,.0f}",
                f"{result.p50_ms:.2f}",
                f"{result.p99_ms:.2f}",
                f"{result.server_cpu_ms_per_request:.3f}",
                f"{ratio:.3f}",
                " ".join(f"{r:.2f}" for r in per_round),
            ]
        )
    loadgen.print_table(
        f"{title}, concurrency {concurrency}, {args.duration:g} s per variant in {args.rounds} "
        "interleaved rounds",
        ["variant", "req/s", "images/s", "p50 ms", "p99 ms", "server CPU ms/req",
         f"vs {names[0]}", "ratio per round"],
        rows,
    )  # fmt: skip
    loadgen.print_table(
        "The prediction store over the whole run (warm-up included), after each server's "
        "leftover work",
        ["variant", "records written", "records dropped", "dropped share"],
        [
            [
                name,
                f"{written:,.0f}",
                f"{dropped:,.0f}",
                f"{dropped / max(written + dropped, 1):.1%}",
            ]
            for name, (written, dropped) in records.items()
        ],
    )
    if receiver is not None:
        traced = results[names[-1]].requests
        print(
            f"OTLP receiver (another process, not in the server's CPU): "
            f"{receiver.cpu_seconds * 1000.0 / max(traced, 1):.3f} ms CPU per measured traced "
            "request (warm-up requests are traced too)"
        )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
