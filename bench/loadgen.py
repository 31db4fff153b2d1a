"""What the serving benchmarks share: gunicorn servers on loopback, wrk runs, onnxruntime timings.

Run the scripts beside it (serve_bench.py, serve_images_bench.py); importing this does nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import itertools
import json
import math
import os
import re
import resource
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
GUNICORN_CONF = REPO_ROOT / "service" / "gunicorn.conf.py"
#: the same settings for the reference app, without the service's model-watching hook
REFERENCE_GUNICORN_CONF = BENCH_DIR / "reference.gunicorn.conf.py"
LUA_SCRIPT = BENCH_DIR / "post_body.lua"
SERVICE_APP = "service.app:create_app()"
REFERENCE_APP = "reference_app:create_app()"
#: the lower floor: a raw WSGI callable answering a constant, no Flask, no JSON parsing
RAW_APP = "reference_app:raw_wsgi_app"
#: apps in bench/ that run under REFERENCE_GUNICORN_CONF (no model to watch)
FLOOR_APPS = (REFERENCE_APP, RAW_APP)
T = TypeVar("T")
START_SECONDS = 90.0
STOP_SECONDS = 30.0
#: a pause before each measured run, so the last run's requests in flight do not count in it
SETTLE_SECONDS = 0.3
#: after each run, the server's processes are sampled every IDLE_STEP_SECONDS, and the server
#: is idle once they gained at most one clock tick of CPU over the last IDLE_QUIET_SECONDS
#: (longer than the prediction recorder's 0.25 s between flushes): its leftover work is done and
#: will not run during the next row
IDLE_STEP_SECONDS = 0.05
IDLE_QUIET_SECONDS = 0.4
#: the longest wait for that (a server that never goes idle is measured as it is)
IDLE_TIMEOUT_SECONDS = 30.0
#: a round is flagged when one process did more than this share of the server's CPU
WORKER_SHARE_LIMIT = 0.70
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


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
    #: where the CPU went during the run, or during each round (measure_rounds fills it)
    round_cpu: tuple[RunCpu, ...] = ()
    #: how long the server kept working on these requests after the load stopped (wait_idle)
    after_seconds: float = 0.0

    @property
    def requests_per_second(self) -> float:
        """Answered requests over the time of the load (what the clients saw)."""
        return self.requests / self.seconds

    @property
    def kept_up_requests_per_second(self) -> float:
        """Answered requests over the time until the server had done their work: the load,
        then what it left behind (the prediction recorder's backlog). Under a load that never
        stops, a server whose work outlasts the load drops what it cannot keep up with (the
        recorder drops records when its queue is full); this is the rate at which it drops
        nothing."""
        return self.requests / (self.seconds + self.after_seconds)

    @property
    def images_per_second(self) -> float:
        return self.requests_per_second * self.images_per_request

    @property
    def server_cpu_ms_per_request(self) -> float:
        """CPU time of every server process (master and workers) per request, in ms."""
        if not self.round_cpu or not self.requests:
            return math.nan
        return sum(c.server_seconds for c in self.round_cpu) / self.requests * 1000.0

    @property
    def top_shares(self) -> list[float]:
        """Per round, the share of the server's CPU done by its busiest process (0..1)."""
        return [c.top_share for c in self.round_cpu if c.server_seconds > 0]

    def flagged_rounds(self, limit: float = WORKER_SHARE_LIMIT) -> list[int]:
        """The rounds (0-based) in which one server process did more than ``limit`` of the CPU."""
        return [n for n, c in enumerate(self.round_cpu) if c.top_share > limit]

    @property
    def after_share(self) -> float:
        """The share of the server's CPU spent after the runs' last answers (0..1): work the
        requests left behind (the prediction recorder's backlog)."""
        total = sum(c.server_seconds for c in self.round_cpu)
        return sum(c.server_after_seconds for c in self.round_cpu) / total if total else math.nan

    @property
    def other_load(self) -> float:
        """Median over rounds of the CPU (in cores) busy with neither the server nor wrk."""
        if not self.round_cpu:
            return math.nan
        return statistics.median(c.other_cores for c in self.round_cpu)


@dataclass(frozen=True)
class RunCpu:
    """Where the CPU went during one run: each server process, the load generator, the rest.

    From /proc: utime + stime of each process of the server (/proc/<pid>/stat), the load
    generator's from getrusage of waited children, and the machine's busy and steal time
    (/proc/stat), all as deltas over the run. ``other`` is what neither the server nor the load
    generator used: other programs on the machine, the noise that moves throughput figures.
    """

    wall_seconds: float
    server: Mapping[int, float]  # pid -> CPU seconds
    client_seconds: float
    machine_busy_seconds: float
    steal_seconds: float
    #: the server's CPU after the last answer, until it went idle (``wait_idle``)
    server_after_seconds: float = 0.0

    @property
    def server_seconds(self) -> float:
        return sum(self.server.values())

    @property
    def top_share(self) -> float:
        total = self.server_seconds
        return max(self.server.values()) / total if total > 0 else 0.0

    @property
    def other_cores(self) -> float:
        other = self.machine_busy_seconds - self.server_seconds - self.client_seconds
        return max(0.0, other) / self.wall_seconds if self.wall_seconds > 0 else math.nan


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of ``pid`` in seconds (/proc/<pid>/stat), None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces and parentheses: split after its last ")"
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def wait_idle(
    root: int,
    timeout: float = IDLE_TIMEOUT_SECONDS,
    quiet: float = IDLE_QUIET_SECONDS,
    step: float = IDLE_STEP_SECONDS,
) -> float:
    """Wait until ``root`` and its descendants have used at most one clock tick of CPU over the
    last ``quiet`` seconds (at most ``timeout`` seconds); returns how long after the call their
    work was done: the first sample within one tick of the CPU they had used by the end (0: idle
    from the start).

    A server's work does not end with its answers: the prediction recorder writes a request's
    records up to a flush interval later, and one that falls behind works through its queue for
    seconds after the load stops. Without this wait that work ran during the next row's run,
    slowing the other server and charged to neither."""
    tick = 1.0 / CLOCK_TICKS
    started = time.monotonic()
    seen = [(0.0, _tree_cpu_seconds(root))]  # (seconds since the call, CPU seconds)
    while True:
        time.sleep(step)
        now = time.monotonic() - started
        seen.append((now, _tree_cpu_seconds(root)))
        window = [cpu for at, cpu in seen if at >= now - quiet]
        if now >= quiet and seen[-1][1] - min(window) <= tick:
            break
        if now >= timeout:
            print(f"server {root} still busy after {timeout:g} s", file=sys.stderr)
            break
    final = seen[-1][1]
    return next(at for at, cpu in seen if cpu >= final - tick)


def _tree_cpu_seconds(root: int) -> float:
    return sum(process_cpu_seconds(pid) or 0.0 for pid in process_tree(root))


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, from the parent pids in /proc/<pid>/stat."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(text[text.rindex(")") + 2 :].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as handle:
        values = [int(v) for v in handle.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait
    busy = sum(values[:3]) + sum(values[5:8])
    steal = values[7] if len(values) > 7 else 0
    return busy / CLOCK_TICKS, steal / CLOCK_TICKS


def client_cpu_seconds() -> float:
    """CPU seconds used by this process's waited children so far (the wrk runs)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """Samples a server's process tree and the machine before and after a run."""

    def __init__(self, root_pid: int | None) -> None:
        self.root_pid = root_pid
        self._load_ended: dict[int, float] | None = None

    def load_ended(self) -> None:
        """Note the server's CPU now: the rest of the block is after the last answer."""
        self._load_ended = self._sample()[1]

    def _sample(self) -> tuple[float, dict[int, float], float, float, float]:
        pids = process_tree(self.root_pid) if self.root_pid is not None else []
        server = {pid: t for pid in pids if (t := process_cpu_seconds(pid)) is not None}
        busy, steal = machine_cpu_seconds()
        return time.monotonic(), server, client_cpu_seconds(), busy, steal

    @contextmanager
    def measure(self) -> Iterator[list[RunCpu]]:
        """Yields a list that holds the run's RunCpu once the block ends."""
        out: list[RunCpu] = []
        self._load_ended = None
        start = self._sample()
        yield out
        end = self._sample()
        ended = self._load_ended
        after = (
            sum(t - ended.get(pid, start[1].get(pid, 0.0)) for pid, t in end[1].items())
            if ended is not None
            else 0.0
        )
        out.append(
            RunCpu(
                wall_seconds=end[0] - start[0],
                # a process that started during the run counts from 0; one that ended is lost
                server={pid: t - start[1].get(pid, 0.0) for pid, t in end[1].items()},
                client_seconds=end[2] - start[2],
                machine_busy_seconds=end[3] - start[3],
                steal_seconds=end[4] - start[4],
                server_after_seconds=after,
            )
        )


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


class ServerProcess:
    """A server started as its own process group on 127.0.0.1, stopped by ``stop()``."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        port: int,
        cwd: Path = REPO_ROOT,
    ) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._process = subprocess.Popen(
            list(command),
            cwd=cwd,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        """The server's first process; its workers are its descendants (see process_tree)."""
        return self._process.pid

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
        raise SystemExit(f"the server for {self.url} did not get ready:\n{tail}")

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


class GunicornServer(ServerProcess):
    """A gunicorn on 127.0.0.1 with the project's gunicorn settings.

    ``checkout`` serves another copy of the repository (for example today's main, checked out
    with ``git worktree add``) with that copy's own code and gunicorn.conf.py.
    """

    def __init__(
        self, app: str, env: Mapping[str, str], log_path: Path, checkout: Path | None = None
    ) -> None:
        root = REPO_ROOT if checkout is None else checkout.resolve()
        if app in FLOOR_APPS:
            config = REFERENCE_GUNICORN_CONF
        else:
            config = root / "service" / "gunicorn.conf.py"
        port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--config",
            str(config),
            "--bind",
            f"127.0.0.1:{port}",
            # the floor apps live in bench/; the service comes from PYTHONPATH or the venv
            "--pythonpath",
            str(BENCH_DIR),
            app,
        ]
        if checkout is not None:
            env = {**env, "PYTHONPATH": str(root)}
        if "STORE_PATH" not in env and "DATABASE_URL" not in env:
            # a prediction store of its own, new for this run, beside the log: the default file
            # beside the model folder would carry every earlier run's rows (and their retention
            # work) into this one, and be shared with any other server of the same checkout
            env = {**env, "STORE_PATH": str(log_path.with_name(f"store-{port}.sqlite3"))}
        super().__init__(command, env, log_path, port, cwd=root)


@contextmanager
def gunicorn_server(
    app: str,
    env: Mapping[str, str],
    workdir: Path,
    ready_path: str,
    checkout: Path | None = None,
) -> Iterator[GunicornServer]:
    """Start ``app`` under the project's gunicorn config, wait until ready, always stop it."""
    name = app.split(":")[0].replace(".", "_") + ("_" + checkout.name if checkout else "")
    server = GunicornServer(app, env, workdir / f"{name}.log", checkout)
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


class Case(Protocol):
    """One row of a benchmark: something measured for some seconds, round after round."""

    @property
    def name(self) -> str: ...

    def measure(self, seconds: float, workdir: Path, wrk: str) -> LoadResult: ...


@dataclass(frozen=True)
class LoadCase:
    """One thing to measure: a body sent to a server at a concurrency.

    ``server_pid`` is the server's first process: the CPU of it and its descendants is recorded
    for every run.
    """

    name: str
    url: str
    body: PostBody
    connections: int
    server_pid: int | None = None

    def measure(self, seconds: float, workdir: Path, wrk: str) -> LoadResult:
        """One wrk run; its CPU record also covers the server's work left over after the last
        answer (``wait_idle``), which belongs to these requests."""
        meter = CpuMeter(self.server_pid)
        with meter.measure() as cpu:
            result = run_wrk(self.url, self.body, self.connections, seconds, workdir, wrk)
            after = 0.0
            if self.server_pid is not None:
                meter.load_ended()
                after = wait_idle(self.server_pid)
        return dataclasses.replace(result, round_cpu=tuple(cpu), after_seconds=after)


class OnnxCase:
    """In-process onnxruntime on a batch, one intra-op thread: the model alone, on one core."""

    def __init__(self, name: str, model_path: Path, batch: np.ndarray) -> None:
        self.name = name
        self.batch = batch
        self._session = onnx_session(model_path)
        self._feed = {self._session.get_inputs()[0].name: batch}

    def measure(self, seconds: float, workdir: Path, wrk: str) -> LoadResult:
        latencies = []
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline or len(latencies) < 5:
            start = time.perf_counter()
            self._session.run(None, self._feed)
            latencies.append(time.perf_counter() - start)
        return LoadResult(
            requests=len(latencies),
            seconds=sum(latencies),
            errors=0,
            p50_ms=statistics.median(latencies) * 1000,
            p99_ms=sorted(latencies)[int(0.99 * (len(latencies) - 1))] * 1000,
            images_per_request=len(self.batch),
        )


def swap_neighbours(items: Sequence[T]) -> list[T]:
    """``items`` with the 1st and 2nd swapped, the 3rd and 4th, ...; an odd last one stays."""
    swapped = list(items)
    for index in range(0, len(swapped) - 1, 2):
        swapped[index], swapped[index + 1] = swapped[index + 1], swapped[index]
    return swapped


def swap_on_odd_rounds(cases: Sequence[T], number: int) -> list[T]:
    """The order of round ``number``: as given, neighbours swapped in odd rounds."""
    return list(cases) if number % 2 == 0 else swap_neighbours(cases)


def rotate_groups(sizes: int | Sequence[int]) -> Callable[[Sequence[T], int], list[T]]:
    """An order for groups of cases compared with each other (e.g. an app and its floors).

    ``sizes``: one size for groups of equal size, or the size of each group in turn. Each group
    stays together; in round n it is rotated by n, so every case of a group runs right after
    every other one and goes first in turn; odd rounds reverse the order of the groups.
    """

    def arrange(cases: Sequence[T], number: int) -> list[T]:
        if isinstance(sizes, int):
            bounds = [*range(0, len(cases), sizes), len(cases)]
        else:
            bounds = [0]
            for size in sizes:
                bounds.append(bounds[-1] + size)
            if bounds[-1] != len(cases):
                raise ValueError(f"group sizes {list(sizes)} do not add up to {len(cases)} cases")
        groups = [list(cases[a:b]) for a, b in itertools.pairwise(bounds) if b > a]
        if number % 2:
            groups.reverse()
        turned = []
        for group in groups:
            shift = number % len(group)
            turned.extend(group[shift:] + group[:shift])
        return turned

    return arrange


def measure_rounds(
    cases: Sequence[Case],
    seconds: float,
    rounds: int,
    workdir: Path,
    wrk: str,
    warmup_seconds: float = 2.0,
    arrange: Callable[[Sequence[Case], int], list[Case]] = swap_on_odd_rounds,
) -> dict[str, LoadResult]:
    """Warm every case up, then run all cases once per round, interleaved, ``seconds`` in total.

    ``arrange`` gives each round's order (by default odd rounds swap neighbouring cases).
    Interleaving spreads a change in background load over every case instead of one; req/s is
    total requests over total time, p50/p99 the medians of the rounds' percentiles, and the CPU
    of every round is kept. Exits if any request failed.
    """
    for case in cases:
        case.measure(warmup_seconds, workdir, wrk)
    per_round = max(1.0, seconds / rounds)
    runs: dict[str, list[LoadResult]] = {case.name: [] for case in cases}
    for number in range(rounds):
        for case in arrange(cases, number):
            time.sleep(SETTLE_SECONDS)  # requests still in flight from the last run finish first
            result = case.measure(per_round, workdir, wrk)
            if result.errors:
                raise SystemExit(f"{case.name}: {result.errors} failed requests under load")
            runs[case.name].append(result)
    return {
        name: LoadResult(
            requests=sum(r.requests for r in results),
            seconds=sum(r.seconds for r in results),
            after_seconds=sum(r.after_seconds for r in results),
            errors=0,
            p50_ms=statistics.median(r.p50_ms for r in results),
            p99_ms=statistics.median(r.p99_ms for r in results),
            images_per_request=results[0].images_per_request,
            round_rates=tuple(r.requests_per_second for r in results),
            round_cpu=tuple(c for r in results for c in r.round_cpu),
        )
        for name, results in runs.items()
    }


def paired_ratio(
    ours: LoadResult, baseline: LoadResult, images: bool = False
) -> tuple[float, list[float]]:
    """The median over rounds of ours / baseline req/s (``images``: images/s), and each round's.

    The two ran back to back in each round, so a round's ratio compares them under the same
    background load. This VM's speed swings several-fold within seconds (the same server did
    2,742 and 462 req/s two runs apart), which moves totals summed over rounds; the median of
    the paired rounds is what such swings cannot move.
    """
    scale = ours.images_per_request / baseline.images_per_request if images else 1.0
    rates = zip(ours.round_rates, baseline.round_rates, strict=True)
    ratios = [a / b * scale for a, b in rates]
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


def served_graph(model_path: Path) -> tuple[bytes, int]:
    """The graph the service serves for ``model_path``: its subnormal weights set to zero
    (service.model.subnormals), and how many there were. onnxruntime alone and the peers run
    this graph too, so that no comparison counts x86's slow path on one side only."""
    from service.model.validation import without_subnormal_weights

    return without_subnormal_weights(model_path.read_bytes())


def served_graph_file(model_path: Path, workdir: Path) -> Path:
    """``served_graph`` written to ``workdir``, for servers that read a file (the peers)."""
    path = workdir / f"served-{model_path.parent.name}.onnx"
    path.write_bytes(served_graph(model_path)[0])
    return path


def onnx_session_of(graph: bytes) -> Any:
    """An onnxruntime session on ONNX bytes with one intra-op thread, as in a worker."""
    import onnxruntime as ort  # only the benchmarks that time it pay for the import

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(graph, sess_options=options, providers=["CPUExecutionProvider"])


def onnx_session(model_path: Path) -> Any:
    """``onnx_session_of`` the graph the service serves for ``model_path`` (``served_graph``)."""
    return onnx_session_of(served_graph(model_path)[0])


def time_onnxruntime(model_path: Path, batch: np.ndarray, seconds: float = 2.0) -> CallTiming:
    """Per-call latency of onnxruntime on ``batch`` (float32), one intra-op thread like a worker,
    on the graph the service serves (``onnx_session``)."""
    session = onnx_session(model_path)
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


CPU_HEADER = [
    "server CPU ms/req",
    "busiest process",
    f"rounds > {WORKER_SHARE_LIMIT:.0%}",
    "after the load",
    "req/s kept up",
    "other load",
]


def cpu_cells(result: LoadResult, flag: bool = True) -> list[str]:
    """The CPU columns of a row.

    Server CPU per request (master and workers), the busiest server process's median share of
    the server's CPU over the rounds (and its largest), the rounds (1-based) in which it was over
    WORKER_SHARE_LIMIT (``flag`` False: not judged, e.g. one keep-alive connection is always one
    worker's), the share of the server's CPU spent after the last answers (``after_share``), the
    req/s counting that time too (``kept_up_requests_per_second``), and the median CPU, in
    cores, that neither the server nor wrk used during the runs (other programs: the machine's
    noise).
    """
    shares = result.top_shares
    if not shares:
        return ["", "", "", "", "", ""]
    share = f"{statistics.median(shares):.0%} (max {max(shares):.0%})"
    flagged = result.flagged_rounds()
    verdict = (" ".join(str(n + 1) for n in flagged) or "none") if flag else "n/a"
    return [
        f"{result.server_cpu_ms_per_request:.3f}",
        share,
        verdict,
        f"{result.after_share:.0%}",
        f"{result.kept_up_requests_per_second:,.0f}",
        f"{result.other_load:.2f}",
    ]


def store_counts(url: str) -> tuple[float, float]:
    """(records written, records dropped) from a server's /metrics."""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    written = dropped = 0.0
    for line in text.splitlines():
        found = re.match(r"^mnist_store_records_(written|dropped)_total(\{[^}]*\})? (\S+)$", line)
        if found:
            if found[1] == "written":
                written += float(found[3])
            else:
                dropped += float(found[3])
    return written, dropped
