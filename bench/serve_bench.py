"""Single-image JSON predictions: the service against two floors under the same gunicorn config.

The floors (bench/reference_app.py): a Flask app that parses the same JSON and answers a constant,
and a raw WSGI callable that answers a constant. Prints req/s, p50/p99, the server's CPU per
request and how it split over the worker processes, at concurrency 1 and 8, then the service's
ratio to each floor as the median of the paired rounds (each round runs the three apps back to
back, in turn first). A round in which one process did more than 70 % of the server's CPU is
flagged (at concurrency >= 2; one keep-alive connection is always one worker's). Bounded in time:
about 6 x (duration + 2 s) plus start-up.
With --previous-models DIR a fourth server in every round serves the same code on the model
repository DIR (e.g. the committed model before a retrain, from ``git archive``), and the ratio of
the current model's req/s to it is printed the same way.
Usage: python bench/serve_bench.py [--duration 12] [--rounds 12] [--previous-models DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path

import loadgen
import numpy as np

#: the targets at the highest concurrency: service / Flask-parse floor, service / raw WSGI floor
TARGET_FLASK_RATIO = 0.90
TARGET_RAW_RATIO = 0.55
APPS = (
    ("service /predict", loadgen.SERVICE_APP, "/v2/health/ready"),
    ("Flask-parse floor", loadgen.REFERENCE_APP, "/ready"),
    ("raw WSGI floor", loadgen.RAW_APP, "/ready"),
)
#: the row of --previous-models: the service's code on another model repository
PREVIOUS = "service, previous model"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8", help="comma-separated connection counts")
    parser.add_argument(
        "--previous-models",
        type=Path,
        help="a model repository to serve beside the current one (same code), for a paired ratio",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables; non-zero exit when anything failed."""
    args = parse_args(argv)
    wrk = loadgen.require_wrk()
    models_dir = args.models_dir.resolve()
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    pixels, labels = loadgen.mnist_test_digits(args.data_dir, 1)
    body = loadgen.PostBody(
        path="/predict",
        content_type="application/json",
        body=json.dumps({"images": [pixels[0].tolist()]}).encode(),
        images=1,
    )

    model = loadgen.latest_model(models_dir)
    ort = loadgen.time_onnxruntime(model, (pixels[:1] / np.float32(255)).astype(np.float32))
    print(f"machine: {loadgen.machine_note()}; model {model.relative_to(models_dir)}")

    env = {"MODEL_DIR": str(models_dir)}
    apps = [(name, app, ready, env) for name, app, ready in APPS]
    if args.previous_models:
        previous = {"MODEL_DIR": str(args.previous_models.resolve())}
        apps.append((PREVIOUS, loadgen.SERVICE_APP, "/v2/health/ready", previous))
    with loadgen.scratch_dir() as scratch, contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(loadgen.gunicorn_server(app, app_env, scratch, ready))
            for name, app, ready, app_env in apps
        }
        _, answer = loadgen.post(servers["service /predict"].url, body)
        digit = json.loads(answer)["predictions"][0]["digit"]
        if digit != labels[0]:
            raise SystemExit(f"the service answered {digit} for a {labels[0]}")
        # every concurrency is a group of the three apps, rotated each round
        cases = [
            loadgen.LoadCase(f"{name} {c}", server.url, body, c, server.pid)
            for c in concurrencies
            for name, server in servers.items()
        ]
        arrange = loadgen.rotate_groups(len(apps))
        results = loadgen.measure_rounds(
            cases, args.duration, args.rounds, scratch, wrk, arrange=arrange
        )

    rows = []
    for c in concurrencies:
        for name, *_ in apps:
            result = results[f"{name} {c}"]
            rows.append(
                [
                    name,
                    str(c),
                    f"{result.requests_per_second:,.0f}",
                    f"{result.p50_ms:.2f}",
                    f"{result.p99_ms:.2f}",
                    *loadgen.cpu_cells(result, flag=c >= 2),
                ]
            )
    loadgen.print_table(
        f"Single-image JSON, wrk, {args.duration:g} s per row in {args.rounds} interleaved rounds",
        ["app", "concurrency", "req/s", "p50 ms", "p99 ms", *loadgen.CPU_HEADER],
        rows,
    )
    ratio_rows = []
    verdicts = {}
    for c in concurrencies:
        ours = results[f"service /predict {c}"]
        for floor, *_ in apps[1:]:
            ratio, per_round = loadgen.paired_ratio(ours, results[f"{floor} {c}"])
            verdicts[floor, c] = ratio
            ratio_rows.append(
                [
                    f"service / {floor}",
                    str(c),
                    f"{ratio:.2f}",
                    " ".join(f"{r:.2f}" for r in per_round),
                ]
            )
    loadgen.print_table(
        "Ratios, median of the paired rounds",
        ["ratio", "concurrency", "median", "per round"],
        ratio_rows,
    )
    loadgen.print_table(
        "In-process onnxruntime, batch 1, one intra-op thread",
        ["batch", "calls", "p50 ms", "p99 ms", "images/s"],
        [[str(ort.batch), f"{ort.calls:,}", f"{ort.p50_ms:.3f}", f"{ort.p99_ms:.3f}",
          f"{ort.images_per_second:,.0f}"]],
    )  # fmt: skip
    top = max(concurrencies)
    print()
    for floor, target in (
        ("Flask-parse floor", TARGET_FLASK_RATIO),
        ("raw WSGI floor", TARGET_RAW_RATIO),
    ):
        ratio = verdicts[floor, top]
        verdict = "meets" if ratio >= target else "MISSES"
        print(
            f"concurrency {top}: service at {ratio:.2f} of the {floor}, {verdict} the "
            f"{target:.2f} target"
        )
    flagged = {
        key: result.flagged_rounds()
        for key, result in results.items()
        if int(key.rsplit(" ", 1)[1]) >= 2 and result.flagged_rounds()
    }
    if flagged:
        print(
            f"ROUNDS WHERE ONE PROCESS DID > {loadgen.WORKER_SHARE_LIMIT:.0%} OF THE SERVER'S CPU: "
            + "; ".join(f"{k}: {' '.join(str(n + 1) for n in v)}" for k, v in flagged.items())
        )
    else:
        print(
            f"no round at concurrency >= 2 in which one process did > "
            f"{loadgen.WORKER_SHARE_LIMIT:.0%} of a server's CPU"
        )
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
