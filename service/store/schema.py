"""The store's tables (SQLAlchemy Core). Alembic migrations in ``migrations/`` create them.

The schema never holds client addresses. ``predictions.input`` holds the 28x28 input the model
saw (784 bytes, uint8, row-major, ink high) only while it may be needed: when the client asked
for it to be kept (``input_kept = 'requested'``), when feedback corrected the answer
(``'corrected'``), or, with ``input_kept`` NULL, for the input retention window, after which the
writer erases it. ``predictions.reused`` marks a request id used by more than one request
answered otherwise (a client reusing its X-Request-ID): its feedback cannot say which answer it
judges, so POST /feedback refuses it and live accuracy and training leave it out.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    UniqueConstraint,
)

metadata = MetaData()

#: BIGINT on PostgreSQL, INTEGER (the rowid alias) on SQLite
Identifier = BigInteger().with_variant(Integer(), "sqlite")

#: why a prediction's input is kept beyond the retention window
KEPT_REQUESTED = "requested"
KEPT_CORRECTED = "corrected"

#: the rows of ``ix_predictions_unkept_input``: an input the retention job must erase in time
UNKEPT_INPUT = sa.text("input IS NOT NULL AND input_kept IS NULL")
#: the rows of ``ix_predictions_reused``, as each dialect writes ``WHERE predictions.reused``
#: (SQLite has no boolean type: SQLAlchemy compares with 1), so both planners use the index
REUSED_SQLITE = sa.text("reused = 1")
REUSED_POSTGRESQL = sa.text("reused")

predictions = Table(
    "predictions",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("item", Integer, nullable=False),  # the image's place in its request, from 0
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", Integer, nullable=False),
    Column("route", String(64), nullable=False),
    Column("digit", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    # the reject option's decision as answered: accepted, or why not ("low_confidence",
    # "not_a_digit"); NULL for records written before decisions were recorded
    Column("accepted", Boolean, nullable=True),
    Column("reject_reason", String(64), nullable=True),
    Column("ink_share", Float, nullable=False),
    Column("bbox_height", Float, nullable=False),
    Column("bbox_width", Float, nullable=False),
    Column("centre_row", Float, nullable=False),
    Column("centre_col", Float, nullable=False),
    Column("stroke_thickness", Float, nullable=False),
    Column("input", LargeBinary, nullable=True),
    Column("input_kept", String(16), nullable=True),
    # the request id was used again by a request answered otherwise (migration 0004): set by
    # the writer on the stored row, never written with a record (the database's default)
    Column("reused", Boolean, nullable=False, server_default=sa.false()),
    UniqueConstraint("request_id", "item", name="uq_predictions_request_item"),
    Index("ix_predictions_created_at", "created_at"),
    Index("ix_predictions_version_id", "model_version", "id"),
    # the rows whose input the retention job must still erase, by time (migration 0003): the
    # erasing UPDATE reads only them, not every row past the input retention (whose inputs
    # earlier purges erased); a row leaves the index when its input is erased or kept
    Index(
        "ix_predictions_unkept_input",
        "created_at",
        sqlite_where=UNKEPT_INPUT,
        postgresql_where=UNKEPT_INPUT,
    ),
    # the request ids used by more than one request (migration 0004): read whole by the live
    # figures and training to leave their feedback out
    Index(
        "ix_predictions_reused",
        "request_id",
        sqlite_where=REUSED_SQLITE,
        postgresql_where=REUSED_POSTGRESQL,
    ),
)

feedback = Table(
    "feedback",
    metadata,
    Column("id", Identifier, primary_key=True, autoincrement=True),
    Column("request_id", String(128), nullable=False),
    Column("item", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("model_version", Integer, nullable=False),  # the version that answered
    Column("predicted_digit", SmallInteger, nullable=False),
    Column("label", SmallInteger, nullable=False),
    Column("correct", Boolean, nullable=False),
    # the answer's decision, copied from its prediction (migration 0002)
    Column("accepted", Boolean, nullable=True),
    Column("reject_reason", String(64), nullable=True),
    UniqueConstraint("request_id", "item", name="uq_feedback_request_item"),
    Index("ix_feedback_version_id", "model_version", "id"),
)
