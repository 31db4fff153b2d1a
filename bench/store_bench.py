"""Single-image JSON /predict with the prediction store on (SQLite, PostgreSQL) against it off.

Three servers under the same gunicorn config (STORE=off; the default SQLite file; a PostgreSQL
database on a private server started here by tests/postgres.py), measured with wrk in interleaved
rounds (each round runs the three back to back, in turn first); the ratios are the medians of
the paired rounds. Prints the store's own figures afterwards: records written and dropped.
Usage: python bench/store_bench.py [--duration 48] [--rounds 8] [--concurrency 8]
(--duration: seconds per setup over all rounds)
"""

from __future__ import annotations

import contextlib
import json
import sys

import loadgen

sys.path.insert(0, str(loadgen.REPO_ROOT))
from tests.postgres import start_postgres

#: the target: with the store on, at least this share of the req/s with it off
TARGET_RATIO = 0.90


def parse_args(argv: list[str] | None = None):  # type: ignore[no-untyped-def]
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.set_defaults(duration=48.0, rounds=8)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its tables."""
    args = parse_args(argv)
    wrk = loadgen.require_wrk()
    models_dir = args.models_dir.resolve()
    pixels, _ = loadgen.mnist_test_digits(args.data_dir, 1)
    body = loadgen.PostBody(
        path="/predict",
        content_type="application/json",
        body=json.dumps({"images": [pixels[0].tolist()]}).encode(),
        images=1,
    )
    print(f"machine: {loadgen.machine_note()}")
    postgres = start_postgres()
    try:
        with loadgen.scratch_dir() as scratch:
            base = {"MODEL_DIR": str(models_dir)}
            setups = {
                "store off": {**base, "STORE": "off"},
                "store on, SQLite": {**base, "STORE_PATH": str(scratch / "store.sqlite3")},
                "store on, PostgreSQL": {**base, "DATABASE_URL": postgres.create_database()},
            }
            for name in setups:
                (scratch / name.split(",")[-1].strip()).mkdir()
            with contextlib.ExitStack() as stack:
                servers = {
                    name: stack.enter_context(
                        loadgen.gunicorn_server(
                            loadgen.SERVICE_APP, env, scratch / name.split(",")[-1].strip(),
                            "/v2/health/ready",
                        )
                    )
                    for name, env in setups.items()
                }  # fmt: skip
                for server in servers.values():
                    loadgen.post(server.url, body)
                cases = [
                    loadgen.LoadCase(name, server.url, body, args.concurrency, server.pid)
                    for name, server in servers.items()
                ]
                results = loadgen.measure_rounds(
                    cases, args.duration, args.rounds, scratch, wrk,
                    arrange=loadgen.rotate_groups(len(cases)),
                )  # fmt: skip
                counts = {
                    name: loadgen.store_counts(server.url) for name, server in servers.items()
                }
    finally:
        postgres.destroy()

    loadgen.print_table(
        f"Single-image JSON /predict, wrk -c {args.concurrency}, {args.duration:g} s per setup in "
        f"{args.rounds} interleaved rounds",
        ["setup", "req/s", "p50 ms", "p99 ms", "written", "dropped"],
        [
            [name, f"{r.requests_per_second:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
             f"{counts[name][0]:,.0f}", f"{counts[name][1]:,.0f}"]
            for name, r in results.items()
        ],
    )  # fmt: skip
    rows = []
    for name in ("store on, SQLite", "store on, PostgreSQL"):
        ratio, per_round = loadgen.paired_ratio(results[name], results["store off"])
        verdict = "meets" if ratio >= TARGET_RATIO else "misses"
        rows.append(
            [f"{name} / store off", f"{ratio:.2f}", " ".join(f"{r:.2f}" for r in per_round),
             f"{verdict} {TARGET_RATIO}"]
        )  # fmt: skip
    loadgen.print_table(
        "Ratios, median of the paired rounds", ["ratio", "median", "per round", "target"], rows
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
