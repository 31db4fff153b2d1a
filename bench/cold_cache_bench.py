"""Where one single-image /predict goes inside the app, with warm CPU caches and with cold ones.

In this process (no gunicorn, no sockets): the service's WSGI app, and the Flask-parse floor's
(bench/reference_app.py), answer one MNIST test digit sent as JSON, call after call. Each call's
CPU on its thread (``time.thread_time``) is measured whole and in parts: the body's parse, the
model's ``session.run``, the reject option, the request's metrics and its log line (the prediction
store's writer runs on its own thread and is not counted). In "cold" rounds a buffer of
``--evict-mib`` MiB is written between two calls (not timed), which pushes the app's code and data
out of the CPU caches as the other processes, threads and the kernel of a loaded server do
between two requests; "warm" rounds call back to back. Rounds alternate (warm first, then cold
first); the figures are medians of rounds. Bounded in time: about 2 x duration plus start-up.
Usage: python bench/cold_cache_bench.py [--duration 8] [--rounds 8] [--evict-mib 64]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import loadgen
import numpy as np

#: the parts timed inside the service's call: (label, module, attribute path)
PARTS = (
    ("body parse (JSON to float32)", "service.api", "images_from_request"),
    ("model (session.run)", "onnxruntime", "InferenceSession.run"),
    ("reject option", "service.model.reject", "RejectOption.decide"),
    ("metrics (request, inference)", "service.observability.metrics", "request_finished"),
    ("metrics (request, inference)", "service.observability.metrics", "observe_inference"),
    ("request log line", "service.observability.wsgi", "log_request"),
)
WHOLE = "whole call"


def timed_parts(spent: Counter[str]) -> None:
    """Wrap each of PARTS so that its thread CPU adds up in ``spent`` (the calls go through)."""
    import importlib

    for label, module_name, path in PARTS:
        owner: Any = importlib.import_module(module_name)
        *outer, name = path.split(".")
        for attribute in outer:
            owner = getattr(owner, attribute)
        inner = getattr(owner, name)

        def wrapper(*args: Any, _inner: Any = inner, _label: str = label, **kwargs: Any) -> Any:
            started = time.thread_time()
            try:
                return _inner(*args, **kwargs)
            finally:
                spent[_label] += time.thread_time() - started

        setattr(owner, name, wrapper)


def wsgi_caller(app: Callable[..., Iterable[bytes]], body: bytes) -> Callable[[], int]:
    """One POST /predict of ``body`` to ``app``; returns the answer's status code."""
    statuses: list[str] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> None:
        statuses.append(status)

    def call() -> int:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/predict",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "8000",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.input": io.BytesIO(body),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.version": (1, 0),
        }
        answer = app(environ, start_response)
        b"".join(answer)
        close = getattr(answer, "close", None)
        if close is not None:
            close()
        return int(statuses[-1].split()[0])

    return call


def run_round(
    call: Callable[[], int], spent: Counter[str], seconds: float, evict: np.ndarray | None
) -> dict[str, float]:
    """Calls for ``seconds`` of wall time; ms of thread CPU per call, whole and per part."""
    spent.clear()
    calls, deadline = 0, time.perf_counter() + seconds
    while time.perf_counter() < deadline or calls < 20:
        if evict is not None:
            evict += 1.0  # every cache line of the buffer written: the caches hold it now
        started = time.thread_time()
        status = call()
        spent[WHOLE] += time.thread_time() - started
        if status != 200:
            raise SystemExit(f"the app answered {status}; not measuring")
        calls += 1
    return {label: value * 1000 / calls for label, value in spent.items()}


def main(argv: list[str] | None = None) -> int:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.set_defaults(duration=8.0, rounds=8)
    parser.add_argument(
        "--evict-mib", type=float, default=64.0, help="MiB written between calls in cold rounds"
    )
    args: argparse.Namespace = parser.parse_args(argv)
    with loadgen.scratch_dir() as scratch:
        # as under gunicorn: metrics in multiprocess files, a prediction store of this run's own
        os.environ.update(
            MODEL_DIR=str(args.models_dir.resolve()),
            STORE_PATH=str(scratch / "store.sqlite3"),
            PROMETHEUS_MULTIPROC_DIR=str(scratch),
        )
        os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
        import reference_app

        from service.app import create_app

        spent: Counter[str] = Counter()
        timed_parts(spent)
        pixels, _ = loadgen.mnist_test_digits(args.data_dir, 1)
        body = json.dumps({"images": [pixels[0].tolist()]}).encode()
        apps = {
            "service": wsgi_caller(create_app(), body),
            "Flask-parse floor": wsgi_caller(reference_app.create_app(), body),
        }
        evict = np.zeros(int(args.evict_mib * 1024 * 1024) // 8)
        for call in apps.values():  # warm-up: first calls, the store's schema
            for _ in range(200):
                call()
        time.sleep(1.0)
        print(f"machine: {loadgen.machine_note()}; evicting {args.evict_mib:g} MiB between calls")
        seconds = args.duration / args.rounds / 2 / len(apps)
        figures: dict[tuple[str, str], list[dict[str, float]]] = {}
        for number in range(args.rounds):
            states = ["warm", "cold"] if number % 2 == 0 else ["cold", "warm"]
            for state in states:
                for name, call in apps.items():
                    buffer = evict if state == "cold" else None
                    figures.setdefault((name, state), []).append(
                        run_round(call, spent, seconds, buffer)
                    )
    print_figures(figures)
    return 0


def median_of(rounds: list[dict[str, float]], label: str) -> float:
    return statistics.median(values.get(label, 0.0) for values in rounds)


def print_figures(figures: dict[tuple[str, str], list[dict[str, float]]]) -> None:
    rows = []
    labels = [WHOLE, *dict.fromkeys(label for label, _, _ in PARTS)]
    for label in labels:
        warm = median_of(figures["service", "warm"], label)
        cold = median_of(figures["service", "cold"], label)
        rows.append([f"service: {label}", f"{warm:.3f}", f"{cold:.3f}", f"{cold / warm:.2f}"])
    warm = median_of(figures["Flask-parse floor", "warm"], WHOLE)
    cold = median_of(figures["Flask-parse floor", "cold"], WHOLE)
    rows.append([f"Flask-parse floor: {WHOLE}", f"{warm:.3f}", f"{cold:.3f}", f"{cold / warm:.2f}"])
    loadgen.print_table(
        "thread CPU per call, ms (median of rounds)", ["", "warm", "cold", "cold / warm"], rows
    )


if __name__ == "__main__":
    raise SystemExit(main())
