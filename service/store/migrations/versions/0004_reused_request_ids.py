"""predictions remember that their request id was used by more than one request

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

``predictions.reused`` (false for every existing row) is set by the writer when a record arrives
for a (request id, image) already stored with another answer: a client that reused its
X-Request-ID. POST /feedback refuses the id from then on, and live accuracy and training leave
out its feedback, reading the reused ids from the partial index ``ix_predictions_reused`` (the
marked rows only: empty after the upgrade, and about free to keep). SQLite commits ``ALTER
TABLE`` and the index by itself, so each step checks before it acts: an upgrade cut short may
be repeated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "reused" not in present:
        op.add_column(
            "predictions",
            sa.Column("reused", sa.Boolean(), nullable=False, server_default=sa.false()),
        )
    op.create_index(
        "ix_predictions_reused",
        "predictions",
        ["request_id"],
        sqlite_where=sa.text("reused = 1"),
        postgresql_where=sa.text("reused"),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_reused", table_name="predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("reused")
