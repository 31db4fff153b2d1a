"""A request id used by more than one request, on a real SQLite file and a real PostgreSQL
server: the stored record stays the first one and is marked ``reused`` when the repeat answered
otherwise (SQLite's insert, PostgreSQL's COPY and its row-by-row fallback alike); feedback on
the id is refused, and feedback recorded before the reuse leaves live figures and training."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from service.errors import AmbiguousRequestId
from service.store.config import sqlalchemy_url
from service.store.database import MIGRATIONS_DIR, FeedbackItem
from service.store.database import PredictionStore as Store
from service.store.examples import heldout_accuracy, load_feedback
from service.store.schema import KEPT_CORRECTED, predictions
from tests.store.test_database import HEAD, prediction_row
from tests.store.test_purge import _indexes

IMAGE = np.arange(784, dtype=np.uint8).tobytes()


def reused(store: Store, request_id: str) -> list[bool]:
    return [bool(row["reused"]) for row in store.predictions_of(request_id)]


@pytest.mark.parametrize(
    "change",
    [{"digit": 9}, {"version": 2}, {"ink_share": 0.25}, {"stroke_thickness": 2.5}],
    ids=["digit", "version", "image", "stroke"],
)
def test_a_repeat_answered_otherwise_marks_the_first_record(
    store: Store, change: dict[str, Any]
) -> None:
    store.write_predictions([prediction_row("a", digit=3), prediction_row("keep", digit=3)])
    row = prediction_row("a", digit=change.get("digit", 3), version=change.get("version", 1))
    row.update({k: v for k, v in change.items() if k not in ("digit", "version")})
    store.write_predictions([row])
    (stored,) = store.predictions_of("a")
    assert stored["digit"] == 3 and stored["model_version"] == 1 and stored["ink_share"] == 1.0
    assert stored["reused"] is True
    assert reused(store, "keep") == [False]


def test_the_same_answer_again_is_a_retry_not_a_reuse(store: Store) -> None:
    store.write_predictions([prediction_row("retry"), prediction_row("retry", 1, digit=4)])
    # the same request again, later, with its input erased meanwhile or not asked to be kept
    store.write_predictions([prediction_row("retry", pixels=None, kept="requested")])
    store.write_predictions([prediction_row("retry", 1, digit=4)])
    assert reused(store, "retry") == [False, False]
    assert store.add_feedback([FeedbackItem("retry", 3)])[0].correct


def test_a_request_id_repeated_within_one_batch_is_marked(store: Store) -> None:
    store.write_predictions(
        [prediction_row("b"), prediction_row("twice", digit=1), prediction_row("twice", digit=2)]
    )
    assert [r["digit"] for r in store.predictions_of("twice")] == [1]
    assert reused(store, "twice") == [True] and reused(store, "b") == [False]


def test_every_later_reuse_is_marked_too(store: Store) -> None:
    """PostgreSQL: the first reuse fails a COPY; the next batch goes in row by row (the COPY
    pause); SQLite inserts every batch the same way. Both mark each reuse."""
    store.write_predictions([prediction_row("x"), prediction_row("y"), prediction_row("z")])
    store.write_predictions([prediction_row("x", digit=5), prediction_row("new1")])
    store.write_predictions([prediction_row("y", digit=6), prediction_row("new2")])
    assert reused(store, "x") == reused(store, "y") == [True]
    assert reused(store, "z") == reused(store, "new1") == reused(store, "new2") == [False]


def test_feedback_on_a_reused_id_is_refused_whole_for_every_image(store: Store) -> None:
    store.write_predictions([prediction_row("batch", i, digit=i) for i in range(3)])
    store.write_predictions([prediction_row("batch", digit=8), prediction_row("fine")])
    assert reused(store, "batch") == [True, False, False]  # only image 0 was answered twice
    for index in (0, 2):  # the id is ambiguous, whichever image the feedback names
        with pytest.raises(AmbiguousRequestId) as refused:
            store.add_feedback([FeedbackItem("fine", 3), FeedbackItem("batch", 2, item=index)])
        assert refused.value.status == 409 and refused.value.code == "ambiguous_request_id"
        assert "'batch' was used by more than one request" in refused.value.message
        assert "unique X-Request-ID" in refused.value.message
    assert store.feedback_figures(10) == {}  # the whole list was refused
    assert store.add_feedback([FeedbackItem("fine", 3)])[0].correct


def test_feedback_before_the_reuse_stays_but_leaves_live_figures_and_training(
    store: Store, database_url: str
) -> None:
    store.write_predictions(
        [prediction_row(name, digit=7, pixels=IMAGE) for name in ("early", "other")]
    )
    # both corrected (label 2 for a 7): their inputs are kept for training
    outcomes = store.add_feedback([FeedbackItem("early", 2), FeedbackItem("other", 2)])
    assert [o.input_kept for o in outcomes] == [True, True]
    assert store.feedback_figures(10)[1].feedback_total == 2
    assert {e.request_id for e in store.labelled_examples()} == {"early", "other"}
    train, test = load_feedback(database_url, share=1.0)
    assert (len(train), len(test)) == (0, 2)

    store.write_predictions([prediction_row("early", digit=2, pixels=IMAGE[::-1])])  # reused
    figures = store.feedback_figures(10)[1]
    assert (figures.feedback_total, figures.window, figures.correct) == (1, 1, 0)
    assert figures.per_class[2] == (1, 0)
    assert [e.request_id for e in store.labelled_examples()] == ["other"]
    train, test = load_feedback(database_url, share=1.0)
    assert (len(train), len(test)) == (0, 1)
    assert heldout_accuracy(lambda x: np.full(len(x), 2), database_url, 1.0) == (1.0, 1)
    # kept in the tables: the delete of the request removes the record and its mark
    (row,) = store.predictions_of("early")
    assert row["input_kept"] == KEPT_CORRECTED and row["digit"] == 7 and row["reused"]
    assert store.delete_request("early") == (1, 1)
    store.write_predictions([prediction_row("early", digit=2)])  # a new request of that id
    assert reused(store, "early") == [False]
    assert store.add_feedback([FeedbackItem("early", 2)])[0].correct


def test_the_upgrade_marks_no_stored_row_and_may_be_repeated(database_url: str) -> None:
    from alembic import command
    from alembic.config import Config

    store = Store.open(sqlalchemy_url(database_url))

    def upgrade(connection: Any, revision: str) -> None:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    try:
        with store.engine.begin() as connection:  # a store made before the reuse mark
            upgrade(connection, "0003")
            columns = {c["name"] for c in sa.inspect(connection).get_columns("predictions")}
            connection.execute(predictions.insert(), [prediction_row("old")])
        assert "reused" not in columns
        store.migrate()
        assert store.schema_revision() == HEAD
        assert reused(store, "old") == [False]
        assert "ix_predictions_reused" in _indexes(store)
        # an upgrade cut short after the column was added (SQLite commits it by itself)
        with store.engine.begin() as connection:
            connection.execute(sa.text("UPDATE alembic_version SET version_num = '0003'"))
        again = Store(store.engine)
        try:
            again.migrate()
            assert again.schema_revision() == HEAD and "ix_predictions_reused" in _indexes(store)
            again.write_predictions([prediction_row("old", digit=9)])
            assert reused(again, "old") == [True]
        finally:
            again.close()  # its own writer connection (PostgreSQL's COPY) too
    finally:
        store.close()


def test_live_figures_read_the_reused_ids_from_their_partial_index(store: Store) -> None:
    store.write_predictions([prediction_row(f"r{i}") for i in range(2000)])
    store.write_predictions([prediction_row("r7", digit=9), prediction_row("r8", digit=9)])
    store.add_feedback([FeedbackItem(f"r{i}", 3) for i in range(20) if i not in (7, 8)])
    with store.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("ANALYZE predictions"))
    statements: list[tuple[str, Any]] = []

    def remember(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", remember)
    try:
        assert store.feedback_figures(10)[1].feedback_total == 18
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", remember)
    reading = [s for s in statements if "NOT IN" in s[0]]
    assert len(reading) == 2  # the totals and the window
    with store.engine.connect() as connection:
        if store.dialect == "sqlite":
            explain = "EXPLAIN QUERY PLAN "
        else:  # whether the planner can use it, whatever it prefers on a small table
            connection.execute(sa.text("SET enable_seqscan = off"))
            explain = "EXPLAIN "
        for statement, parameters in reading:
            plan = " ".join(
                str(row) for row in connection.exec_driver_sql(explain + statement, parameters)
            )
            assert "ix_predictions_reused" in plan, plan
