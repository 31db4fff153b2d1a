"""The store on a real SQLite file and a real PostgreSQL server: one schema, the same behaviour."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from service.errors import DuplicateFeedback, StoreUnavailable, UnknownPrediction
from service.model.drift import SCALAR_STATISTICS
from service.store.config import sqlalchemy_url
from service.store.database import (
    PREDICTION_COLUMNS,
    STATISTIC_COLUMNS,
    FeedbackItem,
    PredictionStore,
    wait_for_feedback,
)
from service.store.schema import KEPT_CORRECTED, KEPT_REQUESTED, predictions

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
HEAD = "0004"


def prediction_row(
    request_id: str,
    item: int = 0,
    *,
    digit: int = 3,
    version: int = 1,
    created: datetime = NOW,
    pixels: bytes | None = bytes(range(256)) * 3 + bytes(16),
    kept: str | None = None,
    accepted: bool | None = None,
) -> dict[str, object]:
    row: dict[str, object] = {
        "request_id": request_id,
        "item": item,
        "created_at": created,
        "model_version": version,
        "route": "/predict",
        "digit": digit,
        "confidence": 0.9,
        "accepted": accepted,
        "reject_reason": None if accepted is not False else "low_confidence",
        "input": pixels,
        "input_kept": kept,
    }
    row.update(dict.fromkeys(STATISTIC_COLUMNS, 1.0))
    return row


def test_statistic_columns_follow_the_drift_contract() -> None:
    assert STATISTIC_COLUMNS == SCALAR_STATISTICS


def test_prediction_columns_are_every_column_but_the_id_and_the_reuse_mark() -> None:
    # ``reused`` is the database's default on every write; only a repeated request id sets it
    assert sorted(PREDICTION_COLUMNS) == sorted(
        c.name for c in predictions.c if c.name not in ("id", "reused")
    )


def test_rows_as_tuples_or_columns_are_stored_as_rows_as_mappings(store: PredictionStore) -> None:
    rows = [prediction_row("m", digit=5), prediction_row("m", 1, accepted=False)]
    store.write_predictions(rows)
    tuples = [
        tuple({**row, "request_id": "t"}.get(name) for name in PREDICTION_COLUMNS) for row in rows
    ]
    store.write_prediction_tuples(tuples)
    columns = [
        [{**row, "request_id": "c"}.get(name) for row in rows] for name in PREDICTION_COLUMNS
    ]
    assert store.write_prediction_columns(columns) == 2
    mapped, tupled = store.predictions_of("m"), store.predictions_of("t")
    by_columns = store.predictions_of("c")
    assert len(mapped) == len(tupled) == len(by_columns) == 2
    for a, b, c in zip(mapped, tupled, by_columns, strict=True):
        assert (
            {k: v for k, v in a.items() if k not in ("id", "request_id")}
            == {k: v for k, v in b.items() if k not in ("id", "request_id")}
            == {k: v for k, v in c.items() if k not in ("id", "request_id")}
        )
    assert mapped[1]["accepted"] is False and mapped[0]["accepted"] is None


def test_migrate_is_idempotent_and_reaches_head(store: PredictionStore) -> None:
    assert store.schema_revision() == HEAD
    store.migrate()  # a second worker starting does nothing
    assert store.schema_revision() == HEAD
    columns = {c["name"] for c in sa.inspect(store.engine).get_columns("predictions")}
    assert not columns & {"client", "address", "ip", "remote_addr", "user_agent"}


def test_write_and_read_back_keeps_the_first_of_a_repeated_request_id(
    store: PredictionStore,
) -> None:
    store.write_predictions([prediction_row("a", digit=3), prediction_row("a", 1, digit=4)])
    store.write_predictions([prediction_row("a", digit=9)])  # a client reused its request id
    rows = store.predictions_of("a")
    assert [(r["item"], r["digit"]) for r in rows] == [(0, 3), (1, 4)]
    assert bytes(rows[0]["input"])[:5] == bytes([0, 1, 2, 3, 4])


def test_a_batch_repeating_a_stored_request_id_keeps_the_rest_of_the_batch(
    store: PredictionStore,
) -> None:
    store.write_predictions([prediction_row("a", digit=3)])
    # PostgreSQL: the COPY fails whole on "a"; the batch goes in row by row, and so does the next
    assert store.write_predictions([prediction_row("b"), prediction_row("a", digit=9)]) == 2
    store.write_predictions([prediction_row("c"), prediction_row("a", digit=8)])
    store.write_predictions([prediction_row("d")])
    assert [r["digit"] for r in store.predictions_of("a")] == [3]
    assert sorted(r.request_id for r in _all(store)) == ["a", "b", "c", "d"]


def test_feedback_is_tied_to_the_answering_version_and_keeps_corrected_inputs(
    store: PredictionStore,
) -> None:
    store.write_predictions(
        [
            prediction_row("wrong", digit=3, version=2),
            prediction_row("right", digit=5, version=1),
            prediction_row("asked", digit=5, version=1, kept=KEPT_REQUESTED),
        ]
    )
    outcomes = store.add_feedback(
        [FeedbackItem("wrong", 8), FeedbackItem("right", 5), FeedbackItem("asked", 5)], NOW
    )
    assert [(o.model_version, o.correct, o.input_kept) for o in outcomes] == [
        (2, False, True),
        (1, True, False),
        (1, True, True),
    ]
    assert store.predictions_of("wrong")[0]["input_kept"] == KEPT_CORRECTED
    assert store.predictions_of("right")[0]["input_kept"] is None


def test_unknown_and_duplicate_feedback_are_refused_whole(store: PredictionStore) -> None:
    store.write_predictions([prediction_row("a"), prediction_row("b")])
    with pytest.raises(UnknownPrediction, match="'nope'"):
        store.add_feedback([FeedbackItem("a", 1), FeedbackItem("nope", 2)])
    with pytest.raises(UnknownPrediction, match="image 1"):
        store.add_feedback([FeedbackItem("a", 1, item=1)])
    assert store.feedback_figures(10) == {}  # nothing of the refused batch was recorded
    store.add_feedback([FeedbackItem("a", 1)])
    with pytest.raises(DuplicateFeedback):
        store.add_feedback([FeedbackItem("b", 1), FeedbackItem("a", 2)])
    with pytest.raises(DuplicateFeedback):
        store.add_feedback([FeedbackItem("b", 1), FeedbackItem("b", 2)])
    assert store.feedback_figures(10)[1].feedback_total == 1


def test_feedback_waits_for_a_record_still_on_its_way(store: PredictionStore) -> None:
    calls = []

    def sleep(seconds: float) -> None:
        calls.append(seconds)
        if len(calls) == 3:
            store.write_predictions([prediction_row("late")])

    clock = iter(range(100))
    outcome = wait_for_feedback(store, [FeedbackItem("late", 3)], 10, sleep, lambda: next(clock))
    assert outcome[0].correct and len(calls) == 3
    with pytest.raises(UnknownPrediction):
        wait_for_feedback(store, [FeedbackItem("never", 3)], 2, lambda s: None, lambda: next(clock))


def test_live_figures_per_version_over_the_window(store: PredictionStore) -> None:
    rows = [prediction_row(f"r{i}", digit=i % 10, version=1 + i % 2) for i in range(40)]
    store.write_predictions(rows)
    labels = {}
    for i in range(40):
        label = i % 10 if i % 3 else (i + 1) % 10  # every third answer was wrong
        labels[f"r{i}"] = label
        store.add_feedback([FeedbackItem(f"r{i}", label)], NOW + timedelta(seconds=i))
    figures = store.feedback_figures(window=10)
    for version in (1, 2):
        recent = [i for i in range(40) if 1 + i % 2 == version][-10:]
        right = sum(labels[f"r{i}"] == i % 10 for i in recent)
        assert figures[version].feedback_total == 20
        assert figures[version].window == 10
        assert figures[version].accuracy == right / 10
        by_label: dict[int, list[bool]] = {}
        for i in recent:
            by_label.setdefault(labels[f"r{i}"], []).append(labels[f"r{i}"] == i % 10)
        assert figures[version].recall() == {d: sum(v) / len(v) for d, v in by_label.items()}


def test_feedback_keeps_the_answers_decision_and_live_accuracy_counts_accepted_answers(
    store: PredictionStore,
) -> None:
    # r0..r9 accepted, r10..r14 refused as low_confidence; every third answer wrong
    store.write_predictions(
        [prediction_row(f"r{i}", digit=i % 10, accepted=i < 10) for i in range(15)]
    )
    labels = {f"r{i}": i % 10 if i % 3 else (i + 1) % 10 for i in range(15)}
    outcomes = store.add_feedback([FeedbackItem(rid, label) for rid, label in labels.items()], NOW)
    assert [(o.accepted, o.reject_reason) for o in outcomes[9:11]] == [
        (True, None),
        (False, "low_confidence"),
    ]
    assert outcomes[10].to_json()["reject_reason"] == "low_confidence"
    figures = store.feedback_figures(window=100)[1]
    accepted_right = sum(labels[f"r{i}"] == i % 10 for i in range(10))
    assert figures.window == 15 and figures.accepted_window == 10
    assert figures.accepted_accuracy == accepted_right / 10
    assert figures.accuracy == sum(labels[f"r{i}"] == i % 10 for i in range(15)) / 15
    assert figures.to_json()["accepted_live_accuracy"] == accepted_right / 10


def test_the_decision_migration_fills_in_existing_feedback(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from service.store.database import MIGRATIONS_DIR

    store = PredictionStore.open(sqlalchemy_url(database_url))
    try:
        with store.engine.begin() as connection:  # a store made before decisions were kept
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = connection
            command.upgrade(config, "0001")
            row = prediction_row("old", accepted=False)
            connection.execute(sa.text("SELECT 1"))
            from service.store.schema import feedback, predictions

            connection.execute(predictions.insert(), [row])
            connection.execute(
                feedback.insert().values(
                    request_id="old",
                    item=0,
                    created_at=NOW,
                    model_version=1,
                    predicted_digit=3,
                    label=3,
                    correct=True,
                )
            )
        assert store.schema_revision() == "0001"
        store.migrate()
        assert store.schema_revision() == HEAD
        figures = store.feedback_figures(window=10)[1]
        assert figures.window == 1 and figures.accepted_window == 0  # it was refused
        with store.engine.connect() as connection:
            reason = connection.execute(sa.text("SELECT reject_reason FROM feedback")).scalar()
        assert reason == "low_confidence"
    finally:
        store.close()


def test_prediction_figures_count_digits_confidence_and_rejections(store: PredictionStore) -> None:
    store.write_predictions(
        [prediction_row(f"p{i}", digit=i % 2, accepted=i % 4 != 0) for i in range(8)]
    )
    figures = store.prediction_figures(version=1, window=100)
    assert figures.window == 8 and figures.digits[:2] == (4, 4)
    assert figures.mean_confidence == pytest.approx(0.9)
    assert figures.to_json()["rejection_rate"] == 0.25


def test_retention_erases_unkept_inputs_and_old_rows_but_keeps_feedback(
    store: PredictionStore,
) -> None:
    old = NOW - timedelta(days=40)
    store.write_predictions(
        [
            prediction_row("fresh", created=NOW),
            prediction_row("hour-old", created=NOW - timedelta(hours=2)),
            prediction_row("asked", created=NOW - timedelta(hours=2), kept=KEPT_REQUESTED),
            prediction_row("old", created=old),
            prediction_row("old-corrected", created=old, digit=1),
        ]
    )
    store.add_feedback([FeedbackItem("old-corrected", 7)])
    counts = store.purge(NOW, timedelta(hours=1), timedelta(days=30), max_rows=1000)
    assert counts.expired == 1
    assert store.predictions_of("old") == []
    assert store.predictions_of("hour-old")[0]["input"] is None
    assert store.predictions_of("asked")[0]["input"] is not None
    assert store.predictions_of("fresh")[0]["input"] is not None
    assert store.predictions_of("old-corrected")[0]["input"] is not None
    counts = store.purge(NOW, timedelta(hours=1), timedelta(days=30), max_rows=2)
    kept = {r.request_id for r in _all(store)}
    # the two written last survive (rows are capped in the order they were written); so
    # would a row with feedback, however old
    assert kept == {"asked", "old-corrected"}
    assert counts.over_limit == 2


def test_delete_by_request_id_removes_predictions_and_feedback(store: PredictionStore) -> None:
    store.write_predictions([prediction_row("x"), prediction_row("x", 1), prediction_row("y")])
    store.add_feedback([FeedbackItem("x", 2)])
    assert store.delete_request("x") == (2, 1)
    assert store.predictions_of("x") == [] and store.delete_request("x") == (0, 0)
    assert store.feedback_figures(10) == {}
    assert len(store.predictions_of("y")) == 1


def test_labelled_examples_are_feedback_with_a_kept_input(store: PredictionStore) -> None:
    image = np.arange(784, dtype=np.uint8).tobytes()
    store.write_predictions(
        [
            prediction_row("c", digit=1, pixels=image),
            prediction_row("gone", digit=1, pixels=None),
            prediction_row("ok", digit=2, pixels=image),
            prediction_row("asked", digit=3, pixels=image, kept=KEPT_REQUESTED),
        ]
    )
    store.add_feedback(
        [
            FeedbackItem("c", 7),
            FeedbackItem("gone", 4),
            FeedbackItem("ok", 2),
            FeedbackItem("asked", 3),
        ]
    )
    examples = store.labelled_examples()
    # "ok" keeps its input only for the retention window (no correction, not asked for)
    assert [(e.request_id, e.label, e.predicted_digit) for e in examples] == [
        ("c", 7, 1),
        ("asked", 3, 3),
    ]
    assert examples[0].pixels == image and examples[0].created_at.tzinfo is not None


def test_an_unreachable_database_raises_store_unavailable(tmp_path: Any) -> None:
    missing = PredictionStore.open(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.sqlite3'}")
    with pytest.raises(StoreUnavailable, match="prediction store failed"):
        missing.migrate()
    down = PredictionStore.open("postgresql+psycopg://postgres@127.0.0.1:1/none")
    with pytest.raises(StoreUnavailable):
        down.write_predictions([prediction_row("a")])


def test_a_postgresql_restart_between_writes_costs_no_write(postgres_server: Any) -> None:
    store = PredictionStore.open(sqlalchemy_url(postgres_server.create_database()))
    store.write_predictions([prediction_row("before")])  # the writer's connection is pooled
    postgres_server.stop()
    postgres_server.start()
    try:
        assert store.write_predictions([prediction_row("after")]) == 1
        assert sorted(r.request_id for r in _all(store)) == ["after", "before"]
    finally:
        store.close()


def _all(store: PredictionStore) -> list[Any]:
    from service.store.schema import predictions

    with store.engine.connect() as connection:
        return list(connection.execute(sa.select(predictions.c.request_id)))


def test_the_cli_deletes_by_request_id(database_url: str, monkeypatch: Any, capsys: Any) -> None:
    from service.store.cli import EXIT_NOT_FOUND, EXIT_OK, EXIT_UNAVAILABLE, main

    store = PredictionStore.open(sqlalchemy_url(database_url))
    store.migrate()
    store.write_predictions([prediction_row("gone"), prediction_row("stays")])
    store.add_feedback([FeedbackItem("gone", 5)])
    monkeypatch.setenv("DATABASE_URL", database_url)
    assert main(["delete", "gone"]) == EXIT_OK
    assert "deleted 1 prediction and 1 feedback records" in capsys.readouterr().out
    assert store.predictions_of("gone") == [] and len(store.predictions_of("stays")) == 1
    assert main(["delete", "gone"]) == EXIT_NOT_FOUND
    assert main(["migrate"]) == EXIT_OK and f"revision {HEAD}" in capsys.readouterr().out
    store.close()
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:1/none")
    assert main(["purge"]) == EXIT_UNAVAILABLE
    assert capsys.readouterr().err.startswith("mnist-store: the prediction store failed")
