"""feedback keeps the reject option's decision of the answer it judges

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30

``feedback.accepted`` and ``feedback.reject_reason`` copy ``predictions.accepted`` and
``reject_reason`` (as ``model_version`` and ``predicted_digit`` are copied), so live accuracy
among accepted answers is read from the feedback table alone. Existing feedback is filled in from
its prediction. On PostgreSQL the whole upgrade is one transaction (transactional DDL, under the
store's advisory lock); SQLite commits ``ALTER TABLE`` by itself, so every step here may be
repeated: an upgrade cut short finishes at the next start.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

COLUMNS = (
    ("accepted", sa.Boolean()),
    ("reject_reason", sa.String(64)),
)


def upgrade() -> None:
    present = {column["name"] for column in sa.inspect(op.get_bind()).get_columns("feedback")}
    for name, kind in COLUMNS:
        if name not in present:
            op.add_column("feedback", sa.Column(name, kind, nullable=True))
    for name, _ in COLUMNS:
        op.execute(
            f"UPDATE feedback SET {name} = (SELECT predictions.{name} FROM predictions "
            "WHERE predictions.request_id = feedback.request_id "
            "AND predictions.item = feedback.item) "
            f"WHERE feedback.{name} IS NULL"
        )


def downgrade() -> None:
    with op.batch_alter_table("feedback") as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)
