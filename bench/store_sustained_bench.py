"""The prediction store under sustained batch load: answers against records, by writer priority.

One server per writer nice value (``--nice``, default 10 then 0: STORE_WRITER_NICE), started in
turn; each takes Open Inference Protocol binary FP32 batches of 256 at ``--concurrency`` (default
2: both workers busy; 1 leaves a core mostly to the other worker's writer) for
``--duration`` seconds (default 60) after a 3 s warm-up, then its leftover work is awaited
(loadgen.wait_idle). Prints per setting the images answered per second during the load, the
records written during the load and by the end, and the share of the load's records dropped
(``queue_full``). Not paired: each setting runs once, in turn; the store's queue holds up to
STORE_QUEUE_IMAGES per worker, so short runs hide what a sustained load drops.
Usage: python bench/store_sustained_bench.py [--duration 60] [--nice 10 0] [--concurrency 2]
"""

from __future__ import annotations

import loadgen
import serve_images_bench

WARM_UP_SECONDS = 3.0


def main(argv: list[str] | None = None) -> int:
    """Run each setting once and print the table."""
    parser = loadgen.benchmark_parser(__doc__.splitlines()[0])
    parser.add_argument("--nice", type=int, nargs="+", default=[10, 0])
    parser.add_argument("--concurrency", type=int, default=2)
    parser.set_defaults(duration=60.0)
    args = parser.parse_args(argv)
    wrk = loadgen.require_wrk()
    pixels, _ = loadgen.mnist_test_digits(args.data_dir, serve_images_bench.BATCH)
    body = serve_images_bench.v2_binary_body(pixels)
    rows = []
    with loadgen.scratch_dir() as scratch:
        for nice in args.nice:
            env = {"MODEL_DIR": str(args.models_dir.resolve()), "STORE_WRITER_NICE": str(nice)}
            with loadgen.gunicorn_server(
                loadgen.SERVICE_APP, env, scratch, "/v2/health/ready"
            ) as server:
                loadgen.run_wrk(server.url, body, args.concurrency, WARM_UP_SECONDS, scratch, wrk)
                loadgen.wait_idle(server.pid)
                written_before, dropped_before = loadgen.store_counts(server.url)
                result = loadgen.run_wrk(
                    server.url, body, args.concurrency, args.duration, scratch, wrk
                )
                written_during, _ = loadgen.store_counts(server.url)
                after = loadgen.wait_idle(server.pid)
                written_after, dropped_after = loadgen.store_counts(server.url)
            answered = result.requests * body.images
            dropped = dropped_after - dropped_before
            rows.append(
                [
                    str(nice),
                    f"{answered / result.seconds:,.0f}",
                    f"{answered:,}",
                    f"{written_during - written_before:,.0f}",
                    f"{written_after - written_before:,.0f}",
                    f"{after:.1f}",
                    f"{dropped / max(answered, 1):.1%}",
                    f"{result.p50_ms:.2f}",
                    f"{result.p99_ms:.2f}",
                ]
            )
    loadgen.print_table(
        f"Open Inference Protocol binary FP32 batches of 256, concurrency {args.concurrency}, "
        f"{args.duration:g} s per setting, the store on SQLite",
        ["STORE_WRITER_NICE", "images/s answered", "records answered", "written during",
         "written by the end", "leftover s", "dropped", "p50 ms", "p99 ms"],
        rows,
    )  # fmt: skip
    print(f"machine: {loadgen.machine_note()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
