"""Model lifecycle under a steady load of single-image requests, and what a shadow costs.

Part 1, on one server (2 workers, MODEL_POLL_SECONDS=1) over a scratch repository holding the
committed model (1, stable), the README's quick model (2, ~58 %, trained here with mnist-train)
and a copy of 1 (3): Python threads send single-image /predict requests on fresh connections and
record every answer's status and version while ``mnist-models`` runs, in order,
``shadow 2 --sample 1`` for --shadow-seconds (then the figures of /metrics and
/v2/models/mnist/versions/2/stats), ``promote 3``, ``rollback``, ``canary 3 --percent 20``.
Prints how long each switch took to reach every worker, failed requests, the canary's share.

Part 2: single-image JSON req/s with wrk, shadow off against shadow on at sample rate 1.0, two
servers measured in interleaved paired rounds (loadgen.measure_rounds); the ratio is the median
of the rounds' ratios (target >= 0.85). The machine may be shared: say so with the figures.

Usage: python bench/lifecycle_bench.py [--shadow-seconds 20] [--duration 24] [--rounds 12]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import loadgen

TARGET_RATIO = 0.85
QUICK_TRAINING = [
    "--activation", "tanh", "--solver", "sgd", "--hidden-layers", "64", "--epochs", "3",
    "--train-limit", "5000", "--min-accuracy", "0.5", "--progress", "none",
]  # fmt: skip


class Load:
    """Threads posting single-image requests on fresh connections; every answer recorded."""

    def __init__(self, url: str, bodies: list[bytes], threads: int = 4) -> None:
        self.url = url
        self.bodies = bodies
        self.answers: list[tuple[float, int, int | None]] = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)
        ]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)

    def _run(self, seed: int) -> None:
        turn = seed * 37
        deadline = time.monotonic() + 600
        while not self.stop.is_set() and time.monotonic() < deadline:
            body = self.bodies[turn % len(self.bodies)]
            turn += 1
            sent = time.monotonic()  # a switch is about which version new requests meet
            request = urllib.request.Request(
                self.url + "/predict",
                body,
                {"Content-Type": "application/json", "Connection": "close"},
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer = (
                        sent,
                        response.status,
                        json.load(response)["model"]["version"],
                    )
            except Exception:  # an HTTP error or a refused connection: a failed request
                answer = (sent, 0, None)
            with self.lock:
                self.answers.append(answer)

    def since(self, moment: float) -> list[tuple[float, int, int | None]]:
        with self.lock:
            return [a for a in self.answers if a[0] >= moment]


def mnist_models(models: Path, data_dir: Path, *args: str) -> str:
    command = [sys.executable, "-m", "service.model.cli", "--models-dir", str(models)]
    result = subprocess.run(
        [*command, "--data-dir", str(data_dir), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"mnist-models {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout.strip()


def scrape(url: str) -> str:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        return response.read().decode()


def worker_versions(url: str) -> list[float]:
    return [
        float(line.rsplit(" ", 1)[1])
        for line in scrape(url).splitlines()
        if line.startswith("mnist_model_loaded_version{")
    ]


def switch_seconds(load: Load, url: str, version: int, since: float, workers: int) -> float:
    """Seconds from ``since`` to the last answer from another version, once all switched."""
    deadline = time.monotonic() + 15
    while worker_versions(url) != [float(version)] * workers:
        if time.monotonic() > deadline:
            raise SystemExit(f"workers still report {worker_versions(url)}")
        time.sleep(0.05)
    time.sleep(1.0)
    old = [at for at, _, answered in load.since(since) if answered != version]
    return (max(old) - since) if old else 0.0


def build_repository(root: Path, data_dir: Path) -> Path:
    models = root / "models"
    source = loadgen.REPO_ROOT / "models" / "mnist"
    (models / "mnist").mkdir(parents=True)
    shutil.copytree(source / "1", models / "mnist" / "1")  # the committed model only
    shutil.copy(source / "config.pbtxt", models / "mnist" / "config.pbtxt")
    shutil.copy(source / "labels.json", models / "mnist" / "labels.json")
    command = [sys.executable, "-m", "training", *QUICK_TRAINING, "--data-dir", str(data_dir)]
    trained = subprocess.run(
        [*command, "--models-dir", str(models)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},
    )
    if trained.returncode != 0:
        raise SystemExit(f"mnist-train failed: {trained.stderr}")
    shutil.copytree(models / "mnist" / "1", models / "mnist" / "3")
    card = json.loads((models / "mnist" / "3" / "card.json").read_text())
    card["version"] = 3
    (models / "mnist" / "3" / "card.json").write_text(json.dumps(card))
    return models


def lifecycle_part(args: object, scratch: Path, data_dir: Path, shadow_seconds: float) -> None:
    models = build_repository(scratch, data_dir)
    print(mnist_models(models, data_dir, "list"))
    pixels, _ = loadgen.mnist_test_digits(data_dir, 200)
    bodies = [json.dumps({"images": [row.tolist()]}).encode() for row in pixels]
    env = {"MODEL_DIR": str(models), "MODEL_POLL_SECONDS": "1", "WEB_CONCURRENCY": "2"}
    rows = []
    with (
        loadgen.gunicorn_server(loadgen.SERVICE_APP, env, scratch, "/v2/health/ready") as server,
        Load(server.url, bodies) as load,
    ):
        time.sleep(2)
        print(mnist_models(models, data_dir, "shadow", "2", "--sample", "1"))
        time.sleep(shadow_seconds)
        metrics = [
            line
            for line in scrape(server.url).splitlines()
            if line.startswith("mnist_trial_comparisons_total{")
        ]
        with urllib.request.urlopen(
            server.url + "/v2/models/mnist/versions/2/stats", timeout=10
        ) as response:
            stats = json.load(response)["model_stats"][0]
        print("\n".join(metrics))
        (block,) = stats["agreement"]
        print(
            f"/stats version 2: {block['compared']} compared, agreement "
            f"{block['agreement_rate']:.4f}, mean ms stable {block['mean_inference_ms']['stable']} "
            f"shadow {block['mean_inference_ms']['trial']}; top disagreements "
            + ", ".join(
                f"{d['stable_digit']}->{d['trial_digit']}: {d['count']}"
                for d in sorted(block["disagreements"], key=lambda d: -d["count"])[:5]
            )
        )
        mnist_models(models, data_dir, "end-trial")
        for action, version in ((("promote", "3"), 3), (("rollback",), 1)):
            started = time.monotonic()
            print(mnist_models(models, data_dir, *action))
            written = time.monotonic()  # the command returns once labels.json is written
            took = switch_seconds(load, server.url, version, written, 2)
            rows.append([" ".join(action), f"{written - started:.2f}", f"{took:.2f}"])
        print(mnist_models(models, data_dir, "canary", "3", "--percent", "20"))
        time.sleep(3)
        counting = time.monotonic()
        time.sleep(15)
        shares = Counter(v for _, _, v in load.since(counting))
        mnist_models(models, data_dir, "end-trial")
        failed = sum(1 for _, status, _ in load.answers if status != 200)
        total = len(load.answers)
    loadgen.print_table(
        "Switches under load: the command (its gate included), then the seconds from the write "
        "until the last request sent that the old version answered",
        ["change", "command s", "switch s"],
        rows,
    )
    share = shares[3] / max(1, sum(shares.values()))
    print(
        f"canary 3 at 20%: {share:.1%} of {sum(shares.values())} answers; "
        f"failed requests: {failed} of {total}"
    )


def throughput_part(
    args: object, scratch: Path, data_dir: Path, duration: float, rounds: int
) -> None:
    wrk = loadgen.require_wrk()
    pixels, _ = loadgen.mnist_test_digits(data_dir, 1)
    body = loadgen.PostBody(
        "/predict", "application/json", json.dumps({"images": [pixels[0].tolist()]}).encode(), 1
    )
    repos = {}
    for name in ("off", "on"):
        root = scratch / f"repo-{name}"
        models = build_repository(root, data_dir) if name == "on" else None
        if models is None:
            models = root / "models"
            shutil.copytree(loadgen.REPO_ROOT / "models" / "mnist" / "1", models / "mnist" / "1")
            for extra in ("config.pbtxt", "labels.json"):
                shutil.copy(
                    loadgen.REPO_ROOT / "models" / "mnist" / extra, models / "mnist" / extra
                )
        repos[name] = models
    mnist_models(repos["on"], data_dir, "shadow", "2", "--sample", "1")
    with (
        loadgen.gunicorn_server(
            loadgen.SERVICE_APP, {"MODEL_DIR": str(repos["off"])}, scratch, "/v2/health/ready"
        ) as off,
        loadgen.gunicorn_server(
            loadgen.SERVICE_APP, {"MODEL_DIR": str(repos["on"])}, scratch, "/v2/health/ready"
        ) as on,
    ):
        cases = [
            loadgen.LoadCase("shadow off", off.url, body, 8, off.pid),
            loadgen.LoadCase("shadow on 1.0", on.url, body, 8, on.pid),
        ]
        measured = loadgen.measure_rounds(cases, duration, rounds, scratch, wrk)
        compared = [line for line in scrape(on.url).splitlines() if line.startswith("mnist_trial_")]
    ratio, per_round = loadgen.paired_ratio(measured["shadow on 1.0"], measured["shadow off"])
    loadgen.print_table(
        f"Single-image JSON /predict, wrk, concurrency 8, {duration:g} s per row in {rounds} "
        "interleaved rounds",
        ["server", "req/s", "p50 ms", "p99 ms", "requests"],
        [
            [name, f"{r.requests_per_second:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{r.requests:,}"]
            for name, r in measured.items()
        ],
    )  # fmt: skip
    print("shadow server's trial counters:", *compared[:6], sep="\n  ")
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(
        f"\nshadow on / off: {ratio:.2f} (median of paired rounds: "
        f"{' '.join(f'{r:.2f}' for r in per_round)}), {verdict} the {TARGET_RATIO:.2f} target. "
        f"machine: {loadgen.machine_note()}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--shadow-seconds", type=float, default=20.0)
    parser.add_argument("--skip-lifecycle", action="store_true", help="only the throughput part")
    args = parser.parse_args(argv)
    data_dir = args.data_dir.resolve()
    with loadgen.scratch_dir() as scratch:
        if not args.skip_lifecycle:
            lifecycle_part(args, scratch / "lifecycle", data_dir, args.shadow_seconds)
        throughput_part(args, scratch / "throughput", data_dir, args.duration, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
