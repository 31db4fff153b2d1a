"""CPU per recorded prediction of the prediction store's writer path, in process.

The recorder of the app built by ``create_app`` (committed model, SQLite store in a scratch
folder, multiprocess metrics in a scratch folder, drift windows on) is fed single-image records
exactly as ``/predict`` hands them over (one predict and one reject decision per image, done
beforehand; with ``--undecided``, as the Open Inference Protocol route hands them over: without
the decision, which the writer makes from the answering version's option and hidden layer);
then the queue is flushed in batches of ``--batch`` records (what the writer thread takes every
STORE_FLUSH_SECONDS under load) and ``time.process_time`` counts the flushes: statistics, drift
windows, answer metrics and the SQLite transaction. The first batch (schema
migration, first connection) is not counted.

With ``--baseline REV`` the same measurement runs alternately on the tree of git revision REV
(extracted to a scratch folder) and on this tree, ``--rounds`` times each, each in a fresh
process; medians of the rounds and of the paired ratios are printed. ``--profile`` prints the
cProfile of one run of this tree instead. ``--postgres`` writes to a private PostgreSQL server
(tests/postgres.py, a fresh database per run) instead, and adds the CPU of the server's processes
over the flushes (it shares the cores with the service in a single-machine deployment).
Usage: python bench/store_writer_bench.py [--records 20000] [--batch 250] [--rounds 6]
       [--baseline main] [--profile] [--postgres] [--undecided]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=250, help="records per flush")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--baseline", help="git revision to compare with (alternating rounds)")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--postgres",
        action="store_true",
        help="write to a private PostgreSQL server (tests/postgres.py) instead of SQLite, and "
        "count the server's CPU too",
    )
    parser.add_argument(
        "--undecided",
        action="store_true",
        help="records as the V2 route hands them over: the writer makes the reject decision",
    )
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--postmaster-pid", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--models-dir", type=Path, default=REPO_ROOT / "models")
    return parser.parse_args(argv)


def measure(
    records: int,
    batch: int,
    models_dir: Path,
    profile: bool,
    database_url: str | None = None,
    postmaster_pid: int | None = None,
    undecided: bool = False,
) -> dict[str, float]:
    """Feed ``records`` single-image records, flush them in batches; CPU figures in us/record
    (with ``postmaster_pid``, the PostgreSQL server's processes are counted too)."""
    import numpy as np

    sys.path.insert(0, str(BENCH_DIR))
    import loadgen

    from service.app import PREDICTOR_KEY, RECORDER_KEY, create_app
    from service.config import ServiceConfig

    scratch = Path(tempfile.mkdtemp(prefix="store-writer-bench-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(scratch / "metrics")
    (scratch / "metrics").mkdir()
    environ = {
        **os.environ,
        "MODEL_DIR": str(models_dir),
        **(
            {"DATABASE_URL": database_url}
            if database_url
            else {"STORE_PATH": str(scratch / "store.sqlite3")}
        ),
    }
    app = create_app(ServiceConfig.from_env(environ))
    predictor = app.extensions[PREDICTOR_KEY]
    recorder = app.extensions[RECORDER_KEY]
    recorder.autostart = False  # flushed here, in this thread, so that process_time sees it

    pixels, _ = loadgen.mnist_test_digits(loadgen.default_data_dir(), 10_000)
    inputs = (pixels.astype(np.float32) / 255.0).reshape(-1, 784)
    total = records + batch  # the first batch warms up (migration, first connection)
    answered = []
    for index in range(total):
        images = inputs[index % len(inputs)][None, :].copy()
        prediction = predictor.predict(images)
        decision = prediction.reject.decide(images, prediction.probabilities, prediction.hidden)
        answered.append((uuid.uuid4().hex, prediction, images, decision))

    def feed(start: int, stop: int) -> float:
        began = time.process_time()
        for request_id, prediction, images, decision in answered[start:stop]:
            if undecided:
                recorder.record(
                    request_id,
                    "/v2/models/<model>/infer",
                    prediction.model_version,
                    images,
                    prediction.labels,
                    prediction.probabilities,
                    reject=prediction.reject,
                    hidden=prediction.hidden,
                )
                continue
            recorder.record(
                request_id,
                "/predict",
                prediction.model_version,
                images,
                prediction.labels,
                prediction.probabilities,
                accepted=decision.accepted,
                reject_reasons=decision.reasons,
            )
        return time.process_time() - began

    def server_cpu() -> float:
        if postmaster_pid is None:
            return 0.0
        times = (loadgen.process_cpu_seconds(pid) for pid in loadgen.process_tree(postmaster_pid))
        return sum(t for t in times if t is not None)

    feed(0, batch)
    recorder.flush()
    time.sleep(0.5)  # the server's background writers settle after the migration
    server_began = server_cpu()
    record_cpu = flush_cpu = 0.0
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)
    for start in range(batch, total, batch):
        record_cpu += feed(start, min(start + batch, total))
        began = time.process_time()
        if profiler is not None:
            profiler.enable()
        recorder.flush()
        if profiler is not None:
            profiler.disable()
        flush_cpu += time.process_time() - began
    time.sleep(0.5)  # the WAL writer's last flush (synchronous_commit=off) counts too
    server_used = server_cpu() - server_began
    if profiler is not None:
        import pstats

        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(30)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    written, dropped = recorder.written, dict(recorder.dropped)
    expected = total  # STORE=off in the environment: drift windows and answer metrics only
    if recorder.store is not None:
        recorder.store.close()
    else:
        expected = 0
    shutil.rmtree(scratch, ignore_errors=True)
    if written != expected or any(dropped.values()):
        raise SystemExit(f"written {written} of {total}, dropped {dropped}")
    return {
        "flush_us_per_record": flush_cpu / records * 1e6,
        "record_us_per_record": record_cpu / records * 1e6,
        "server_us_per_record": server_used / records * 1e6,
    }


def run_child(tree: Path, args: argparse.Namespace) -> dict[str, float]:
    """One measurement in a fresh process with ``tree`` first on the path."""
    command = [
        sys.executable,
        str(BENCH_DIR / "store_writer_bench.py"),
        "--child",
        f"--records={args.records}",
        f"--batch={args.batch}",
        f"--models-dir={args.models_dir.resolve()}",
        *(["--undecided"] if args.undecided else []),
    ]
    if args.postgres:
        command += [f"--database-url={args.postgres_server.create_database()}"]
        command += [f"--postmaster-pid={args.postgres_server.postmaster_pid()}"]
    env = {**os.environ, "PYTHONPATH": str(tree), "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        command, env=env, cwd=tree, capture_output=True, text=True, check=False, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"{tree}: {done.stderr.strip()[-2000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def extract(revision: str, into: Path) -> Path:
    """The tree of ``revision`` as files in ``into`` (git archive)."""
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", revision], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        figures = measure(
            args.records,
            args.batch,
            args.models_dir,
            args.profile,
            args.database_url,
            args.postmaster_pid,
            args.undecided,
        )
        print(json.dumps(figures))
        return 0
    with contextlib.ExitStack() as stack:
        if args.postgres:
            sys.path.insert(0, str(REPO_ROOT))
            from tests.postgres import start_postgres

            args.postgres_server = start_postgres()
            stack.callback(args.postgres_server.destroy)
        if args.profile:
            return profile_once(args)
        return compare(args)


def profile_once(args: argparse.Namespace) -> int:
    """One run of this tree under cProfile (in this process)."""
    url = pid = None
    if args.postgres:
        url = args.postgres_server.create_database()
        pid = args.postgres_server.postmaster_pid()
    print(
        json.dumps(
            measure(args.records, args.batch, args.models_dir, True, url, pid, args.undecided)
        )
    )
    return 0


def compare(args: argparse.Namespace) -> int:
    """Alternating rounds of this tree (and of --baseline); medians printed."""
    trees = {"this tree": REPO_ROOT}
    with tempfile.TemporaryDirectory(prefix="store-writer-baseline-") as scratch:
        if args.baseline:
            trees = {args.baseline: extract(args.baseline, Path(scratch)), **trees}
        results: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        for number in range(args.rounds):
            order = list(trees) if number % 2 == 0 else list(trees)[::-1]
            for name in order:
                results[name].append(run_child(trees[name], args))
                print(f"round {number + 1} {name}: {results[name][-1]}", flush=True)
    print(
        f"\n{args.records} single-image records, flushed {args.batch} at a time, "
        f"{args.rounds} rounds (medians, us of CPU per record):"
    )
    database = "PostgreSQL" if args.postgres else "SQLite"
    for name, runs in results.items():
        flush = statistics.median(run["flush_us_per_record"] for run in runs)
        record = statistics.median(run["record_us_per_record"] for run in runs)
        server = statistics.median(run.get("server_us_per_record", 0.0) for run in runs)
        print(
            f"  {name:>10}: writer {flush:7.1f}   record() on the request path {record:5.2f}"
            + (f"   {database} server {server:6.1f}" if args.postgres else "")
        )

    def cost(run: dict[str, float]) -> float:  # the writer's and the database server's CPU
        return run["flush_us_per_record"] + run.get("server_us_per_record", 0.0)

    if args.baseline:
        ratios = [
            cost(new) / cost(old)
            for old, new in zip(results[args.baseline], results["this tree"], strict=True)
        ]
        print(
            f"  writer{' + server' if args.postgres else ''} CPU this tree / {args.baseline}: "
            "median of paired ratios "
            f"{statistics.median(ratios):.2f} (from {min(ratios):.2f} to {max(ratios):.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
