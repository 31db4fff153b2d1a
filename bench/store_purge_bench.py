"""CPU of the prediction store's retention purge on a large table: before and after its rework.

Fills a scratch store (SQLite file; ``--postgres``: a database on a private PostgreSQL server
started by tests/postgres.py) with ``--rows`` prediction records written as the writer thread
writes them (``write_prediction_columns``), spread evenly over the last 20 days: the inputs of the
last hour still stored (the default ``STORE_INPUT_RETENTION_SECONDS``), older ones erased (as
earlier purges left them), one record in 1,000 with its input kept on request, one in 500 with
feedback. ``max_rows`` is the number of rows (``--max-rows`` to change it): the table is at its
limit. Then, in ``--rounds`` rounds, each of two purges in turn:

- before: the purge as it was (``old_purge``, its statements: the erasing UPDATE without the
  partial index ``ix_predictions_unkept_input``, which is dropped for it; the newest-kept row
  found by walking ``max_rows`` ids from the top);
- after: ``PredictionStore.purge`` with the index (made again; its build is not timed);

each timed twice: a purge with nothing to do (right after the previous one), and one with a
little to do: ``--added`` new records written and the clock moved on a minute (as between two
of a worker's purges), so about a minute's inputs are erased and ``--added`` rows deleted over
the limit. Prints per case the medians over the rounds: CPU seconds of this process (SQLite runs
in it) plus the PostgreSQL server's processes, and wall seconds, with the rows erased and deleted
(the same before and after: tests/store/test_purge.py runs this on a small table and checks).
Usage: python bench/store_purge_bench.py [--rows 1000000] [--added 1000] [--rounds 3]
       [--max-rows ROWS] [--postgres]
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import loadgen
import sqlalchemy as sa

sys.path.insert(0, str(loadgen.REPO_ROOT))
from service.store.config import sqlalchemy_url
from service.store.database import (
    PREDICTION_COLUMNS,
    STATISTIC_COLUMNS,
    PredictionStore,
    PurgeCounts,
)
from service.store.schema import KEPT_REQUESTED, UNKEPT_INPUT, feedback, predictions

SPAN = timedelta(days=20)
INPUT_RETENTION = timedelta(hours=1)
RETENTION = timedelta(days=30)
STEP = timedelta(minutes=1)  # between two purges of a worker (PURGE_SECONDS)
PIXELS = bytes(range(256)) * 3 + bytes(16)
INDEX = "ix_predictions_unkept_input"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--added", type=int, default=1_000, help="new records between purges")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--max-rows",
        type=int,
        help="STORE_RETENTION_ROWS (default: --rows, the table at its limit)",
    )
    parser.add_argument("--postgres", action="store_true")
    return parser.parse_args(argv)


def fill(store: PredictionStore, rows: int, now: datetime, batch: int = 50_000) -> None:
    """``rows`` records over the ``SPAN`` before ``now``, oldest first (ids in time order)."""
    statistics_values = [[0.1] * batch for _ in STATISTIC_COLUMNS]
    for start in range(0, rows, batch):
        stop = min(start + batch, rows)
        times = [now - SPAN * (rows - i) / rows for i in range(start, stop)]
        kept = [KEPT_REQUESTED if i % 1000 == 7 else None for i in range(start, stop)]
        inputs = [
            PIXELS if k is not None or now - t < INPUT_RETENTION else None
            for t, k in zip(times, kept, strict=True)
        ]
        columns: dict[str, list[object]] = {
            "request_id": [f"r{i}" for i in range(start, stop)],
            "item": [0] * (stop - start),
            "created_at": list(times),
            "model_version": [1] * (stop - start),
            "route": ["/predict"] * (stop - start),
            "digit": [i % 10 for i in range(start, stop)],
            "confidence": [0.9] * (stop - start),
            "accepted": [True] * (stop - start),
            "reject_reason": [None] * (stop - start),
            "input": list(inputs),
            "input_kept": list(kept),
        }
        for name, values in zip(STATISTIC_COLUMNS, statistics_values, strict=True):
            columns[name] = list(values[: stop - start])
        store.write_prediction_columns([columns[name] for name in PREDICTION_COLUMNS])
    with store.engine.begin() as connection:
        connection.execute(
            feedback.insert(),
            [
                {
                    "request_id": f"r{i}",
                    "item": 0,
                    "created_at": now,
                    "model_version": 1,
                    "predicted_digit": i % 10,
                    "label": (i + i // 1000) % 10,
                    "correct": i // 1000 % 10 == 0,
                }
                for i in range(3, rows, 500)
            ],
        )
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE"))


def add(store: PredictionStore, count: int, now: datetime) -> None:
    """``count`` new records answered at ``now``, with their inputs (the writer's columns)."""
    tag = uuid.uuid4().hex[:8]
    columns: dict[str, list[object]] = {
        "request_id": [f"{tag}-{i}" for i in range(count)],
        "item": [0] * count,
        "created_at": [now] * count,
        "model_version": [1] * count,
        "route": ["/predict"] * count,
        "digit": [i % 10 for i in range(count)],
        "confidence": [0.9] * count,
        "accepted": [True] * count,
        "reject_reason": [None] * count,
        "input": [PIXELS] * count,
        "input_kept": [None] * count,
    }
    for name in STATISTIC_COLUMNS:
        columns[name] = [0.1] * count
    store.write_prediction_columns([columns[name] for name in PREDICTION_COLUMNS])


def old_purge(store: PredictionStore, now: datetime, max_rows: int) -> PurgeCounts:
    """The purge as it was before the partial index and the over-limit probe (its statements)."""
    without_feedback = ~sa.exists().where(
        feedback.c.request_id == predictions.c.request_id,
        feedback.c.item == predictions.c.item,
    )
    counts = PurgeCounts()
    with store.engine.begin() as connection:
        counts.inputs_erased = connection.execute(
            predictions.update()
            .where(
                predictions.c.input.is_not(None),
                predictions.c.input_kept.is_(None),
                predictions.c.created_at < now - INPUT_RETENTION,
            )
            .values(input=None)
        ).rowcount
        counts.expired = connection.execute(
            predictions.delete().where(predictions.c.created_at < now - RETENTION, without_feedback)
        ).rowcount
        newest_kept = (
            sa.select(predictions.c.id)
            .order_by(predictions.c.id.desc())
            .offset(max_rows - 1)
            .limit(1)
            .scalar_subquery()
        )
        counts.over_limit = connection.execute(
            predictions.delete().where(predictions.c.id < newest_kept, without_feedback)
        ).rowcount
    return counts


def set_index(store: PredictionStore, present: bool) -> None:
    with store.engine.begin() as connection:
        if present:
            connection.execute(
                sa.text(
                    f"CREATE INDEX IF NOT EXISTS {INDEX} ON predictions (created_at) "
                    f"WHERE {UNKEPT_INPUT.text}"
                )
            )
        else:
            connection.execute(sa.text(f"DROP INDEX IF EXISTS {INDEX}"))
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE predictions"))


def timed(purge: Callable[[], PurgeCounts], server_cpu: Callable[[], float]) -> dict[str, float]:
    wall, cpu, server = time.perf_counter(), time.process_time(), server_cpu()
    counts = purge()
    return {
        "cpu": time.process_time() - cpu + server_cpu() - server,
        "wall": time.perf_counter() - wall,
        "erased": counts.inputs_erased,
        "deleted": counts.expired + counts.over_limit,
    }


@contextlib.contextmanager
def database(postgres: bool, scratch: Path) -> Iterator[tuple[str, Callable[[], float]]]:
    if not postgres:
        yield f"sqlite:///{scratch / 'store.sqlite3'}", lambda: 0.0
        return
    from tests.postgres import start_postgres

    server = start_postgres()
    try:
        pid = server.postmaster_pid()

        def server_cpu() -> float:
            times = (loadgen.process_cpu_seconds(p) for p in loadgen.process_tree(pid))
            return sum(t for t in times if t is not None)

        yield server.create_database(), server_cpu
    finally:
        server.destroy()


def measure(
    store: PredictionStore, args: argparse.Namespace, server_cpu: Callable[[], float]
) -> dict[tuple[str, str], list[dict[str, float]]]:
    """Fill the store, then time the purges: {(purge, case): one figure dict per round}."""
    now = datetime.now(UTC).replace(microsecond=0)
    began = time.perf_counter()
    store.migrate()
    fill(store, args.rows, now)
    max_rows = args.max_rows or args.rows
    print(
        f"{store.dialect}: {args.rows:,} records written in {time.perf_counter() - began:.1f} s; "
        f"max_rows {max_rows:,}, {args.added:,} added per step, {args.rounds} rounds",
        flush=True,
    )
    purges: dict[str, Callable[[datetime], PurgeCounts]] = {
        "before": lambda moment: old_purge(store, moment, max_rows),
        "after": lambda moment: store.purge(moment, INPUT_RETENTION, RETENTION, max_rows),
    }
    set_index(store, present=False)
    began = time.perf_counter()
    set_index(store, present=True)
    print(f"{INDEX} built in {time.perf_counter() - began:.2f} s", flush=True)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    for _ in range(args.rounds):
        for name, purge in purges.items():
            set_index(store, present=name == "after")
            purge(now)  # settle: whatever the previous step left
            moment = now
            results.setdefault((name, "nothing to do"), []).append(
                timed(lambda moment=moment, purge=purge: purge(moment), server_cpu)
            )
            now += STEP
            add(store, args.added, now)
            moment = now
            results.setdefault((name, "a minute's work"), []).append(
                timed(lambda moment=moment, purge=purge: purge(moment), server_cpu)
            )
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="mnist-purge-") as folder,
        database(args.postgres, Path(folder)) as (url, server_cpu),
    ):
        store = PredictionStore.open(sqlalchemy_url(url))
        try:
            results = measure(store, args, server_cpu)
        finally:
            store.close()
    print(f"{'purge':<8} {'case':<16} {'CPU s':>8} {'wall s':>8} {'erased':>7} {'deleted':>8}")
    for (name, case), runs in results.items():
        print(
            f"{name:<8} {case:<16} "
            f"{statistics.median(r['cpu'] for r in runs):8.4f} "
            f"{statistics.median(r['wall'] for r in runs):8.4f} "
            f"{statistics.median(r['erased'] for r in runs):7.0f} "
            f"{statistics.median(r['deleted'] for r in runs):8.0f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
