"""Single-image JSON predictions: the service against a trivial Flask app, same gunicorn config.

Prints req/s and p50/p99 at concurrency 1 and 8 for both, the ratio service/reference (target:
>= 0.80 at concurrency 8), and in-process onnxruntime latency for batch 1. Bounded in time:
about 4 x (duration + 2 s) plus start-up.
The rows are measured in interleaved rounds; the ratio is the median of the rounds' ratios, each
comparing the two apps measured back to back (see loadgen.paired_ratio).
Usage: python bench/serve_bench.py [--duration 12] [--rounds 12]
"""

from __future__ import annotations

import argparse
import json

import loadgen
import numpy as np

TARGET_RATIO = 0.80


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8", help="comma-separated connection counts")
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

    results: dict[tuple[str, int], loadgen.LoadResult] = {}
    env = {"MODEL_DIR": str(models_dir)}
    with (
        loadgen.scratch_dir() as scratch,
        loadgen.gunicorn_server(loadgen.SERVICE_APP, env, scratch, "/v2/health/ready") as service,
        loadgen.gunicorn_server(loadgen.REFERENCE_APP, env, scratch, "/ready") as reference,
    ):
        _, answer = loadgen.post(service.url, body)
        digit = json.loads(answer)["predictions"][0]["digit"]
        if digit != labels[0]:
            raise SystemExit(f"the service answered {digit} for a {labels[0]}")
        # Both apps at every concurrency, interleaved: a change in background load hits all.
        cases = [
            loadgen.LoadCase(f"{name} {connections}", server.url, body, connections)
            for connections in concurrencies
            for name, server in (("service", service), ("reference", reference))
        ]
        measured = loadgen.measure_rounds(cases, args.duration, args.rounds, scratch, wrk)
        for connections in concurrencies:
            for name in ("service", "reference"):
                results[name, connections] = measured[f"{name} {connections}"]

    rows = []
    for connections in concurrencies:
        ours, ref = results["service", connections], results["reference", connections]
        for name, result in (("service /predict", ours), ("reference Flask app", ref)):
            rows.append(
                [
                    name,
                    str(connections),
                    f"{result.requests_per_second:,.0f}",
                    f"{result.p50_ms:.2f}",
                    f"{result.p99_ms:.2f}",
                    f"{result.requests:,}",
                ]
            )
        ratio, per_round = loadgen.paired_ratio(ours, ref)
        rounds = " ".join(f"{r:.2f}" for r in per_round)
        rows.append(["ratio, median of rounds", str(connections), f"{ratio:.2f}", "", "", rounds])
    loadgen.print_table(
        f"Single-image JSON predictions, wrk, {args.duration:g} s per row in {args.rounds} "
        "interleaved rounds",
        ["app", "concurrency", "req/s", "p50 ms", "p99 ms", "requests / ratio per round"],
        rows,
    )
    loadgen.print_table(
        "In-process onnxruntime, batch 1, one intra-op thread",
        ["batch", "calls", "p50 ms", "p99 ms", "images/s"],
        [[str(ort.batch), f"{ort.calls:,}", f"{ort.p50_ms:.3f}", f"{ort.p99_ms:.3f}",
          f"{ort.images_per_second:,.0f}"]],
    )  # fmt: skip
    top = max(concurrencies)
    ratio, _ = loadgen.paired_ratio(results["service", top], results["reference", top])
    verdict = "meets" if ratio >= TARGET_RATIO else "MISSES"
    print(f"\nconcurrency {top}: service at {ratio:.0%} of the reference app (median of the "
          f"paired rounds), {verdict} the "
          f"{TARGET_RATIO:.0%} target. machine: {loadgen.machine_note()}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
