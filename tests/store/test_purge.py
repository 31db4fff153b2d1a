"""The retention purge erases and deletes exactly what its rules say, on a real SQLite file and a
real PostgreSQL server, whatever gaps the ids have: every input nobody kept is erased once its
retention is over; the newest ``max_rows`` rows by id and every row with feedback stay. Each
case is checked against the rules written out in Python (``expected``), not against recorded
results. The erasing UPDATE reads the partial index of unkept inputs (migration 0003)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from service.store.config import sqlalchemy_url
from service.store.database import MIGRATIONS_DIR, PredictionStore, PurgeCounts
from service.store.schema import KEPT_CORRECTED, KEPT_REQUESTED, feedback, predictions
from tests.store.test_database import HEAD, NOW, prediction_row

INPUT_RETENTION = timedelta(hours=1)
RETENTION = timedelta(days=30)
PIXELS = bytes(range(256)) * 3 + bytes(16)
INDEX = "ix_predictions_unkept_input"


@dataclass(frozen=True)
class Row:
    """One stored prediction: its id, its age at ``NOW``, its input, and whether it has feedback."""

    id: int
    age: timedelta
    has_input: bool = False
    kept: str | None = None
    feedback: bool = False


def expected(rows: Sequence[Row], max_rows: int) -> tuple[dict[int, bool], PurgeCounts]:
    """The rules, one by one: {surviving id: input still stored}, and the counts."""
    erased = {r.id for r in rows if r.has_input and r.kept is None and r.age > INPUT_RETENTION}
    expired = {r.id for r in rows if r.age > RETENTION and not r.feedback}
    left = sorted((r for r in rows if r.id not in expired), key=lambda r: r.id, reverse=True)
    over = {r.id for r in left[max_rows:] if not r.feedback}
    survivors = {
        r.id: r.has_input and r.id not in erased for r in rows if r.id not in expired | over
    }
    return survivors, PurgeCounts(len(erased), len(expired), len(over))


def store_rows(store: PredictionStore, rows: Sequence[Row]) -> None:
    with store.engine.begin() as connection:
        connection.execute(sa.delete(feedback))
        connection.execute(sa.delete(predictions))
        records = []
        for row in rows:
            record = prediction_row(
                f"r{row.id}",
                created=NOW - row.age,
                pixels=PIXELS if row.has_input else None,
                kept=row.kept,
            )
            records.append({**record, "id": row.id})
        connection.execute(predictions.insert(), records)
        answered = [
            {
                "request_id": f"r{row.id}",
                "item": 0,
                "created_at": NOW,
                "model_version": 1,
                "predicted_digit": 3,
                "label": 3,
                "correct": True,
            }
            for row in rows
            if row.feedback
        ]
        if answered:
            connection.execute(feedback.insert(), answered)


def stored(store: PredictionStore) -> dict[int, bool]:
    with store.engine.connect() as connection:
        found = connection.execute(
            sa.select(predictions.c.id, predictions.c.input.is_not(None))
        ).all()
    return {int(row_id): bool(has_input) for row_id, has_input in found}


def check(store: PredictionStore, rows: Sequence[Row], max_rows: int) -> PurgeCounts:
    store_rows(store, rows)
    survivors, counts = expected(rows, max_rows)
    done = store.purge(NOW, INPUT_RETENTION, RETENTION, max_rows)
    assert stored(store) == survivors
    assert (done.inputs_erased, done.expired, done.over_limit) == (
        counts.inputs_erased,
        counts.expired,
        counts.over_limit,
    )
    again = store.purge(NOW, INPUT_RETENTION, RETENTION, max_rows)
    assert (again.inputs_erased, again.expired, again.over_limit) == (0, 0, 0)
    assert stored(store) == survivors
    return done


MINUTE = timedelta(minutes=1)


def recent(ids: Sequence[int], **fields: Any) -> list[Row]:
    return [Row(i, MINUTE, **fields) for i in ids]


def test_rows_exactly_at_the_limit_stay_and_one_more_deletes_the_oldest(
    store: PredictionStore,
) -> None:
    rows = recent(range(1, 11))
    assert check(store, rows, max_rows=10).over_limit == 0
    assert check(store, [*rows, Row(11, MINUTE)], max_rows=10).over_limit == 1
    assert 1 not in stored(store) and 2 in stored(store)
    assert check(store, rows, max_rows=1).over_limit == 9
    assert stored(store) == {10: False}


def test_gaps_in_the_ids_move_the_limit_down_to_the_newest_rows_that_exist(
    store: PredictionStore,
) -> None:
    # ids 1..5 and 50..54: the newest 6 are 50..54 and 5, so 1..4 go (and 5 stays although it
    # is below max(id) - max_rows + 1 = 49)
    rows = recent([*range(1, 6), *range(50, 55)])
    assert check(store, rows, max_rows=6).over_limit == 4
    assert sorted(stored(store)) == [5, 50, 51, 52, 53, 54]
    # a gap at the very top (the newest record deleted) and one inside
    rows = recent([1, 2, 3, 4, 6, 7, 9])
    check(store, rows, max_rows=4)
    assert sorted(stored(store)) == [4, 6, 7, 9]


def test_rows_with_feedback_count_towards_the_limit_but_stay(store: PredictionStore) -> None:
    # the oldest rows have feedback: nothing else is over the limit
    rows = [Row(1, MINUTE, feedback=True), *recent(range(50, 55))]
    assert check(store, rows, max_rows=5).over_limit == 0
    # feedback rows far beyond the limit, among rows without feedback that go
    rows = [Row(i, MINUTE, feedback=i % 3 == 0) for i in range(1, 31)]
    assert check(store, rows, max_rows=5).over_limit == 17
    assert sorted(stored(store)) == [3, 6, 9, 12, 15, 18, 21, 24, *range(26, 31)]
    # the newest rows all have feedback: they fill the limit, every older row without goes
    rows = [*recent(range(1, 6)), *[Row(i, MINUTE, feedback=True) for i in range(6, 9)]]
    assert check(store, rows, max_rows=3).over_limit == 5


def test_inputs_nobody_kept_are_erased_once_their_retention_is_over(
    store: PredictionStore,
) -> None:
    over = INPUT_RETENTION + timedelta(microseconds=1)
    rows = [
        Row(1, over, has_input=True),  # erased
        Row(2, INPUT_RETENTION, has_input=True),  # exactly at the end: not yet
        Row(3, over, has_input=True, kept=KEPT_REQUESTED),
        Row(4, timedelta(days=3), has_input=True, kept=KEPT_CORRECTED, feedback=True),
        Row(5, timedelta(days=3), has_input=True, feedback=True),  # feedback keeps no input
        Row(6, MINUTE, has_input=True),
        Row(7, timedelta(days=2)),  # erased long ago
        Row(8, timedelta(days=40), has_input=True, kept=KEPT_REQUESTED),  # expired
    ]
    counts = check(store, rows, max_rows=100)
    assert (counts.inputs_erased, counts.expired) == (2, 1)
    assert stored(store) == {1: False, 2: True, 3: True, 4: True, 5: False, 6: True, 7: False}


def test_expired_rows_go_first_and_the_limit_counts_what_is_left(store: PredictionStore) -> None:
    old = RETENTION + MINUTE
    rows = [Row(1, old), Row(2, old, feedback=True), Row(3, old), *recent(range(4, 8))]
    counts = check(store, rows, max_rows=4)
    assert (counts.expired, counts.over_limit) == (2, 0)
    counts = check(store, rows, max_rows=3)
    assert (counts.expired, counts.over_limit) == (2, 1)


@pytest.mark.parametrize("seed", range(12))
def test_random_tables_are_purged_as_the_rules_say(store: PredictionStore, seed: int) -> None:
    draw = random.Random(seed)
    ids = sorted(draw.sample(range(1, 120), draw.randint(1, 40)))
    rows = [
        Row(
            row_id,
            # times need not follow the ids (workers write their batches in their own order)
            draw.choice([MINUTE, INPUT_RETENTION, 2 * INPUT_RETENTION, timedelta(days=31)])
            + timedelta(seconds=draw.randint(0, 59)),
            has_input=draw.random() < 0.7,
            kept=draw.choice([None, None, None, KEPT_REQUESTED, KEPT_CORRECTED]),
            feedback=draw.random() < 0.25,
        )
        for row_id in ids
    ]
    for max_rows in sorted({1, len(rows) - 1, len(rows), len(rows) + 1, draw.randint(1, 45)}):
        if max_rows >= 1:
            check(store, rows, max_rows)


def test_the_erasing_update_reads_the_partial_index_of_unkept_inputs(
    store: PredictionStore,
) -> None:
    # many rows whose inputs were erased long ago, a few still to erase
    store.write_predictions(
        [
            prediction_row(f"old{i}", created=NOW - timedelta(days=2), pixels=None)
            for i in range(2000)
        ]
        + [prediction_row(f"new{i}", created=NOW - 2 * INPUT_RETENTION) for i in range(5)]
    )
    with store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE predictions"))
    statements: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", remember)
    try:
        assert store.purge(NOW, INPUT_RETENTION, RETENTION, 10_000).inputs_erased == 5
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", remember)
    [(update, parameters)] = [s for s in statements if s[0].startswith("UPDATE predictions")]
    with store.engine.connect() as connection:
        explain = "EXPLAIN QUERY PLAN " if store.dialect == "sqlite" else "EXPLAIN "
        plan = " ".join(
            str(row) for row in connection.exec_driver_sql(explain + update, parameters)
        )
    assert INDEX in plan, plan


def test_an_upgrade_of_a_store_made_by_0002_adds_the_index_and_may_be_repeated(
    database_url: str,
) -> None:
    from alembic import command
    from alembic.config import Config

    store = PredictionStore.open(sqlalchemy_url(database_url))

    def upgrade(connection: Any, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        with store.engine.begin() as connection:
            upgrade(connection, "0002")
            connection.execute(
                predictions.insert(),
                [
                    prediction_row("old", created=NOW - 2 * INPUT_RETENTION),
                    prediction_row("new", created=NOW),
                ],
            )
        assert INDEX not in _indexes(store)
        store.migrate()
        assert store.schema_revision() == HEAD
        where = _indexes(store)[INDEX]
        assert "input IS NOT NULL" in where and "input_kept IS NULL" in where
        counts = store.purge(NOW, INPUT_RETENTION, RETENTION, 10)
        assert counts.inputs_erased == 1
        assert store.predictions_of("old")[0]["input"] is None
        assert store.predictions_of("new")[0]["input"] is not None
        # an upgrade cut short after the index was made (SQLite commits it by itself)
        with store.engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0002'"))
        again = PredictionStore(store.engine)
        again.migrate()
        assert again.schema_revision() == HEAD and INDEX in _indexes(store)
    finally:
        store.close()


def _indexes(store: PredictionStore) -> dict[str, str]:
    """The predictions table's indexes: name -> the WHERE of a partial index ("" for others)."""
    with store.engine.connect() as connection:
        found = sa.inspect(connection).get_indexes("predictions")
    return {
        str(index["name"]): str(index.get("dialect_options", {}).get(f"{store.dialect}_where", ""))
        for index in found
    }
