"""What the serving benchmarks share: gunicorn servers on loopback, wrk runs, onnxruntime timings.

Run the scripts beside it (serve_bench.py, serve_images_bench.py); importing this does nothing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
GUNICORN_CONF = REPO_ROOT / "service" / "gunicorn.conf.py"
#: the same settings for the reference app, without the service's model-watching hook
REFERENCE_GUNICORN_CONF = BENCH_DIR / "reference.gunicorn.conf.py"
LUA_SCRIPT = BENCH_DIR / "post_body.lua"
SERVICE_APP = "service.app:create_app()"
REFERENCE_APP = "reference_app:create_app()"
T = TypeVar("T")
START_SECONDS = 90.0
STOP_SECONDS = 30.0
#: a pause before each measured run, so the last run's requests in flight do not count in it
SETTLE_SECONDS = 0.3


@dataclass(frozen=True)
class PostBody:
    """One request body as wrk will send it, over and over."""

    path: str
    content_type: str
    body: bytes
    images: int
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LoadResult:
    """What one bounded wrk run measured."""

    requests: int
    seconds: float
    errors: int
    p50_ms: float
    p99_ms: float
    images_per_request: int
    #: req/s of each interleaved round, in order (measure_rounds fills it)
    round_rates: tuple[float, ...] = ()

    @property
    def requests_per_second(self) -> float:
        return self.requests / self.seconds

    @property
    def images_per_second(self) -> float:
        return self.requests_per_second * self.images_per_request


@dataclass(frozen=True)
class CallTiming:
    """In-process timing of one call repeated: per-call latency and images per second."""

    batch: int
    calls: int
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def images_per_second(self) -> float:
        return self.batch * self.calls / self.seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def mnist_test_digits(data_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` MNIST test images (uint8 [count, 784]) and their labels."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        magic, total, rows, cols = np.frombuffer(handle.read(16), dtype=">u4")
        if magic != 2051 or rows * cols != 784 or count > total:
            raise SystemExit(f"{data_dir}: not the MNIST test images")
        pixels = np.frombuffer(handle.read(count * 784), dtype=np.uint8).reshape(count, 784)
    with gzip.open(data_dir / "t10k-labels-idx1-ubyte.gz", "rb") as handle:
        handle.read(8)
        labels = np.frombuffer(handle.read(count), dtype=np.uint8).astype(np.int64)
    return pixels, labels


def default_data_dir() -> Path:
    """MNIST_DATA_DIR, else ../shared/data/mnist beside the repository (as the tests do)."""
    configured = os.environ.get("MNIST_DATA_DIR")
    return Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "mnist"


def benchmark_parser(description: str) -> argparse.ArgumentParser:
    """The flags every benchmark script takes: model and data folders, duration and rounds."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--duration", type=float, default=12.0, help="measured seconds per row")
    parser.add_argument("--rounds", type=int, default=12, help="interleaved rounds per row")
    return parser


def require_wrk() -> str:
    """The wrk binary, or exit with how to get it."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit("wrk not found: apt-get install -y wrk (or `make system-packages`)")
    return wrk


class GunicornServer:
    """A gunicorn on 127.0.0.1 with the project's gunicorn settings, stopped by ``stop()``."""

    def __init__(self, app: str, env: Mapping[str, str], log_path: Path) -> None:
        config = REFERENCE_GUNICORN_CONF if app == REFERENCE_APP else GUNICORN_CONF
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{self.port}",
            # the reference app lives in bench/; the service is installed in the venv
            "--pythonpath",
            str(BENCH_DIR),
            app,
        ]
        self._process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, path: str, seconds: float = START_SECONDS) -> None:
        """Poll ``path`` until it answers 200; exit with the server's log when it does not."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(self.url + path, timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise SystemExit(f"gunicorn for {self.url} did not get ready:\n{tail}")

    def stop(self) -> None:
        """SIGTERM the server's process group, SIGKILL after STOP_SECONDS."""
        if self._process.poll() is None:
            os.killpg(self._process.pid, signal.SIGTERM)
            try:
                self._process.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(self._process.pid, signal.SIGKILL)
                self._process.wait(timeout=STOP_SECONDS)
        self._log.close()


@contextmanager
def gunicorn_server(
    app: str, env: Mapping[str, str], workdir: Path, ready_path: str
) -> Iterator[GunicornServer]:
    """Start ``app`` under the project's gunicorn config, wait until ready, always stop it."""
    name = app.split(":")[0].replace(".", "_")
    server = GunicornServer(app, env, workdir / f"{name}.log")
    try:
        server.wait_ready(ready_path)
        yield server
    finally:
        server.stop()


@contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary folder for bodies and server logs, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mnist-bench-") as name:
        yield Path(name)


def run_wrk(
    url: str,
    body: PostBody,
    connections: int,
    seconds: float,
    workdir: Path,
    wrk: str = "wrk",
) -> LoadResult:
    """POST ``body`` with wrk for ``seconds`` at ``connections`` concurrency (bounded in time)."""
    body_file = workdir / f"body-{hashlib.sha1(body.body).hexdigest()[:12]}.bin"
    if not body_file.exists():
        body_file.write_bytes(body.body)
    threads = min(connections, 2)  # the machine has 2 cores; more wrk threads only contend
    command = [
        wrk,
        f"--threads={threads}",
        f"--connections={connections}",
        f"--duration={max(1, round(seconds))}s",
        "--timeout=10s",
        f"--script={LUA_SCRIPT}",
        url + body.path,
        "--",
        str(body_file),
        body.content_type,
        *(f"{name}: {value}" for name, value in body.headers),
    ]
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=seconds + 60,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise SystemExit(f"wrk failed ({result.returncode}):\n{result.stderr}{result.stdout}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    errors = sum(
        figures[key]
        for key in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts")
    )
    return LoadResult(
        requests=figures["requests"],
        seconds=figures["duration_us"] / 1e6,
        errors=errors,
        p50_ms=figures["p50_us"] / 1000.0,
        p99_ms=figures["p99_us"] / 1000.0,
        images_per_request=body.images,
    )


@dataclass(frozen=True)
class LoadCase:
    """One thing to measure: a body sent to a server at a concurrency."""

    name: str
    url: str
    body: PostBody
    connections: int


def swap_neighbours(items: Sequence[T]) -> list[T]:
    """``items`` with the 1st and 2nd swapped, the 3rd and 4th, ...; an odd last one stays."""
    swapped = list(items)
    for index in range(0, len(swapped) - 1, 2):
        swapped[index], swapped[index + 1] = swapped[index + 1], swapped[index]
    return swapped


def measure_rounds(
    cases: Sequence[LoadCase],
    seconds: float,
    rounds: int,
    workdir: Path,
    wrk: str,
    warmup_seconds: float = 2.0,
) -> dict[str, LoadResult]:
    """Warm every case up, then run all cases once per round, interleaved, ``seconds`` in total.

    Odd rounds swap neighbouring cases. Interleaving spreads a change in background load
    over every case instead of one; req/s is total requests over total time, p50/p99 the medians
    of the rounds' percentiles. Exits if any request failed.
    """
    for case in cases:
        run_wrk(case.url, case.body, case.connections, warmup_seconds, workdir, wrk)
    per_round = max(1.0, seconds / rounds)
    runs: dict[str, list[LoadResult]] = {case.name: [] for case in cases}
    swapped = swap_neighbours(cases)
    for number in range(rounds):
        # every other round swaps the neighbours (1st and 2nd, 3rd and 4th, ...): the two cases
        # a target compares stay side by side, neither always goes first, and each follows the
        # same case in both orders
        for case in cases if number % 2 == 0 else swapped:
            time.sleep(SETTLE_SECONDS)  # requests still in flight from the last run finish first
            result = run_wrk(case.url, case.body, case.connections, per_round, workdir, wrk)
            if result.errors:
                raise SystemExit(f"{case.name}: {result.errors} failed requests under load")
            runs[case.name].append(result)
    return {
        name: LoadResult(
            requests=sum(r.requests for r in results),
            seconds=sum(r.seconds for r in results),
            errors=0,
            p50_ms=statistics.median(r.p50_ms for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            images_per_request=results[0].images_per_request,
            round_rates=tuple(r.requests_per_second for r in results),
        )
        for name, results in runs.items()
    }


def paired_ratio(ours: LoadResult, baseline: LoadResult) -> tuple[float, list[float]]:
    """The median over rounds of ours / baseline req/s, and the ratio of every round.

    The two ran back to back in each round, so a round's ratio compares them under the same
    background load. This VM's speed swings several-fold within seconds (the same server did
    2,742 and 462 req/s two runs apart), which moves totals summed over rounds; the median of
    the paired rounds is what such swings cannot move.
    """
    ratios = [a / b for a, b in zip(ours.round_rates, baseline.round_rates, strict=True)]
    return statistics.median(ratios), ratios


def post(url: str, body: PostBody) -> tuple[dict[str, str], bytes]:
    """One request with ``body``; returns the response headers and bytes (raises on non-2xx)."""
    request = urllib.request.Request(
        url + body.path,
        data=body.body,
        headers={"Content-Type": body.content_type, **dict(body.headers)},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return dict(response.headers.items()), response.read()


def time_onnxruntime(model_path: Path, batch: np.ndarray, seconds: float = 2.0) -> CallTiming:
    """Per-call latency of onnxruntime on ``batch`` (float32), one intra-op thread like a worker."""
    import onnxruntime as ort  # only the benchmarks that time it pay for the import

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(
        str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
    )
    feed = {session.get_inputs()[0].name: batch}
    for _ in range(20):
        session.run(None, feed)
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(latencies) < 50:
        start = time.perf_counter()
        session.run(None, feed)
        latencies.append(time.perf_counter() - start)
    cuts = statistics.quantiles(latencies, n=100)
    return CallTiming(
        batch=len(batch),
        calls=len(latencies),
        seconds=sum(latencies),
        p50_ms=cuts[49] * 1000,
        p99_ms=cuts[98] * 1000,
    )


def latest_model(models_dir: Path) -> Path:
    """model.onnx of the highest version under ``models_dir``/mnist (what the service serves)."""
    versions = sorted(
        (int(p.name), p) for p in (models_dir / "mnist").iterdir() if p.name.isdigit()
    )
    if not versions:
        raise SystemExit(f"no model versions under {models_dir / 'mnist'}")
    return versions[-1][1] / "model.onnx"


def machine_note() -> str:
    """CPU count and load average, printed with every table: figures under load are pessimistic."""
    one, five, _ = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {one:.2f} (1 min) / {five:.2f} (5 min)"


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A Markdown table, so the output can be pasted into docs/benchmarks.md as it is."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    print(f"\n### {title}\n")
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    sys.stdout.flush()
