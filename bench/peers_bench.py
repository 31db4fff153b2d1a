"""mnist-service beside MLServer, KServe's Python server and BentoML: same model, same bodies.

Each peer runs in its own virtual environment under --cache-dir (made on first use from
bench/peers/requirements-<peer>.txt with pip; later runs reuse it) and serves the same ONNX file
as mnist-service through a small runtime of ours in bench/peers/, with 2 worker processes and one
onnxruntime thread per session:
- MLServer (V2 JSON), twice: parallel_workers 2 (inference in 2 processes behind one HTTP
  process) and parallel_workers 0 (inference in the HTTP process), the faster counts per round;
- KServe's Python model server (V2 JSON), --workers 2;
- BentoML, workers=2, POST /predict with mnist-service's own /predict body.
mnist-service answers the same bodies: V2 JSON for the V2 peers, /predict JSON for BentoML. All
rows run in interleaved rounds at the same concurrency, rotated so each goes first in turn; the
ratios are medians of the per-round ratios. Not part of CI (installs ~1 GB of packages).
Usage: python bench/peers_bench.py [--duration 12] [--rounds 12] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import loadgen
import numpy as np

PEERS_DIR = loadgen.BENCH_DIR / "peers"
DEFAULT_CACHE = Path.home() / ".cache" / "mnist-service" / "peers"
V2_INFER = "/v2/models/mnist/infer"
PEER_WORKERS = 2
#: the targets at the chosen concurrency: mnist-service V2 JSON over each peer
TARGETS = {"KServe V2 JSON": 2.0, "MLServer, fastest setting": 2.5}


@dataclass(frozen=True)
class Peer:
    """A peer server: its virtual environment and how to start it."""

    name: str
    venv: str  # folder under the cache and bench/peers/requirements-<venv>.txt
    ready_path: str
    protocol: str  # "v2" (V2 JSON body) or "predict" (mnist-service's /predict body)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--concurrency", type=int, default=8)
    return parser.parse_args(argv)


def ensure_venv(cache: Path, name: str) -> Path:
    """The peer's virtual environment, made (or remade when its requirements changed)."""
    requirements = PEERS_DIR / f"requirements-{name}.txt"
    stamp_text = hashlib.sha256(requirements.read_bytes()).hexdigest()
    venv = cache / name
    stamp = venv / ".requirements-sha256"
    if stamp.exists() and stamp.read_text() == stamp_text:
        return venv
    print(f"installing {name} into {venv} (once; pip, a few minutes)", flush=True)
    if venv.exists():
        shutil.rmtree(venv)
    cache.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True)
    subprocess.run([*pip, "-r", str(requirements)], check=True)
    stamp.write_text(stamp_text)
    return venv


def v2_json_body(pixels: np.ndarray) -> loadgen.PostBody:
    scaled = (pixels / np.float32(255)).astype(np.float32)
    tensor = {"name": "input", "shape": [len(pixels), 784], "datatype": "FP32"}
    request = {"inputs": [{**tensor, "data": scaled.ravel().tolist()}]}
    return loadgen.PostBody(V2_INFER, "application/json", json.dumps(request).encode(), len(pixels))


def predict_body(pixels: np.ndarray) -> loadgen.PostBody:
    body = json.dumps({"images": pixels.tolist()}).encode()
    return loadgen.PostBody("/predict", "application/json", body, len(pixels))


def answered_digit(payload: bytes) -> int:
    """The first digit in any of the answers: mnist-service, V2, BentoML."""
    answer = json.loads(payload)
    if "predictions" in answer:
        return int(answer["predictions"][0]["digit"])
    if "digits" in answer:
        return int(answer["digits"][0])
    [label] = [o for o in answer["outputs"] if o["name"] == "label"]
    return int(label["data"][0])


def start(
    command: Sequence[str], env: Mapping[str, str], workdir: Path, name: str, port: int, cwd: Path
) -> loadgen.ServerProcess:
    return loadgen.ServerProcess(command, env, workdir / f"{name}.log", port, cwd=cwd)


@contextlib.contextmanager
def running(server: loadgen.ServerProcess, ready_path: str) -> Iterator[loadgen.ServerProcess]:
    try:
        server.wait_ready(ready_path, seconds=180)
        yield server
    finally:
        server.stop()


def mlserver(
    venv: Path, model: Path, workdir: Path, parallel_workers: int
) -> loadgen.ServerProcess:
    """MLServer on a model folder made here: settings, model settings and our runtime."""
    folder = workdir / f"mlserver-{parallel_workers}"
    folder.mkdir()
    shutil.copy(PEERS_DIR / "mlserver_runtime.py", folder)
    port = loadgen.free_port()
    settings = {
        "host": "127.0.0.1",
        "http_port": port,
        "grpc_port": loadgen.free_port(),
        "metrics_port": loadgen.free_port(),
        "parallel_workers": parallel_workers,
        "debug": False,
    }
    (folder / "settings.json").write_text(json.dumps(settings))
    model_settings = {
        "name": "mnist",
        "implementation": "mlserver_runtime.OnnxMnist",
        "parameters": {"uri": str(model)},
    }
    (folder / "model-settings.json").write_text(json.dumps(model_settings))
    command = [str(venv / "bin" / "mlserver"), "start", str(folder)]
    return start(command, {}, workdir, folder.name, port, folder)


def kserve(venv: Path, model: Path, workdir: Path) -> loadgen.ServerProcess:
    port = loadgen.free_port()
    command = [
        str(venv / "bin" / "python"),
        str(PEERS_DIR / "kserve_server.py"),
        "--model_path", str(model),
        "--model_name", "mnist",
        "--http_port", str(port),
        "--grpc_port", str(loadgen.free_port()),
        "--workers", str(PEER_WORKERS),
        "--enable_grpc", "false",
    ]  # fmt: skip
    return start(command, {}, workdir, "kserve", port, PEERS_DIR)


def bentoml(venv: Path, model: Path, workdir: Path) -> loadgen.ServerProcess:
    port = loadgen.free_port()
    command = [
        str(venv / "bin" / "bentoml"), "serve", "bentoml_service:Mnist",
        "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip
    env = {
        "MNIST_ONNX": str(model),
        "PEER_WORKERS": str(PEER_WORKERS),
        "BENTOML_HOME": str(workdir / "bentoml-home"),
        "BENTOML_DO_NOT_TRACK": "true",
    }
    return start(command, env, workdir, "bentoml", port, PEERS_DIR)


def main(argv: list[str] | None = None) -> int:
    """Install the peers when needed, run every row in rounds, print the table and the ratios."""
    args = parse_args(argv)
    wrk = loadgen.require_wrk()
    models_dir = args.models_dir.resolve()
    model = loadgen.latest_model(models_dir)
    pixels, labels = loadgen.mnist_test_digits(args.data_dir, 1)
    v2_body, json_body = v2_json_body(pixels), predict_body(pixels)
    cache = args.cache_dir.expanduser().resolve()
    venvs = {name: ensure_venv(cache, name) for name in ("mlserver", "kserve", "bentoml")}
    print(f"machine: {loadgen.machine_note()}; model {model.relative_to(models_dir)}")

    env = {"MODEL_DIR": str(models_dir)}
    with loadgen.scratch_dir() as scratch, contextlib.ExitStack() as stack:
        # the peers run the graph the service serves (subnormal weights as zero): the same model
        model = loadgen.served_graph_file(model, scratch)
        service = stack.enter_context(
            loadgen.gunicorn_server(loadgen.SERVICE_APP, env, scratch, "/v2/health/ready")
        )
        v2_ready = "/v2/models/mnist/ready"

        def up(server: loadgen.ServerProcess, ready_path: str) -> loadgen.ServerProcess:
            return stack.enter_context(running(server, ready_path))

        servers = {
            "mnist-service /predict JSON": (service, json_body),
            "mnist-service V2 JSON": (service, v2_body),
            "MLServer V2 JSON, parallel_workers 2": (
                up(mlserver(venvs["mlserver"], model, scratch, 2), v2_ready),
                v2_body,
            ),
            "MLServer V2 JSON, parallel_workers 0": (
                up(mlserver(venvs["mlserver"], model, scratch, 0), v2_ready),
                v2_body,
            ),
            "KServe V2 JSON": (up(kserve(venvs["kserve"], model, scratch), v2_ready), v2_body),
            "BentoML /predict JSON": (
                up(bentoml(venvs["bentoml"], model, scratch), "/readyz"),
                json_body,
            ),
        }
        for name, (server, body) in servers.items():
            digit = answered_digit(loadgen.post(server.url, body)[1])
            if digit != labels[0]:
                raise SystemExit(f"{name} answered {digit} for a {labels[0]}; not measuring")
        cases = [
            loadgen.LoadCase(name, server.url, body, args.concurrency, server.pid)
            for name, (server, body) in servers.items()
        ]
        results = loadgen.measure_rounds(
            cases,
            args.duration,
            args.rounds,
            scratch,
            wrk,
            arrange=loadgen.rotate_groups(len(cases)),
        )

    rows = [
        [
            name,
            f"{result.requests_per_second:,.0f}",
            f"{result.p50_ms:.2f}",
            f"{result.p99_ms:.2f}",
            *loadgen.cpu_cells(result, flag=False),
        ]
        for name, result in results.items()
    ]
    loadgen.print_table(
        f"Single image, concurrency {args.concurrency}, wrk, {args.duration:g} s per row in "
        f"{args.rounds} interleaved rounds (2 worker processes each)",
        ["server and body", "req/s", "p50 ms", "p99 ms", *loadgen.CPU_HEADER],
        rows,
    )
    ours_v2 = results["mnist-service V2 JSON"].round_rates
    ours_json = results["mnist-service /predict JSON"].round_rates
    mlserver_fastest = [
        max(a, b)
        for a, b in zip(
            results["MLServer V2 JSON, parallel_workers 2"].round_rates,
            results["MLServer V2 JSON, parallel_workers 0"].round_rates,
            strict=True,
        )
    ]
    comparisons = {
        "KServe V2 JSON": (ours_v2, results["KServe V2 JSON"].round_rates),
        "MLServer, fastest setting": (ours_v2, mlserver_fastest),
        "BentoML /predict JSON": (ours_json, results["BentoML /predict JSON"].round_rates),
    }
    ratio_rows = []
    medians = {}
    for peer, (ours, theirs) in comparisons.items():
        per_round = [a / b for a, b in zip(ours, theirs, strict=True)]
        medians[peer] = statistics.median(per_round)
        target = TARGETS.get(peer)
        verdict = "" if target is None else ("meets" if medians[peer] >= target else "MISSES")
        ratio_rows.append(
            [
                f"mnist-service / {peer}",
                f"{medians[peer]:.2f}",
                f"{verdict} {target:.1f}x" if target else "",
                " ".join(f"{r:.2f}" for r in per_round),
            ]
        )
    loadgen.print_table(
        "Ratios, median of the paired rounds (same body on both sides)",
        ["ratio", "median", "target", "per round"],
        ratio_rows,
    )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
