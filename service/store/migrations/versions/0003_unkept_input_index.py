"""a partial index of the predictions whose input the retention job must still erase

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

``ix_predictions_unkept_input`` indexes ``created_at`` of the rows with ``input IS NOT NULL AND
input_kept IS NULL`` only. The purge's erasing UPDATE has exactly these terms in its WHERE, so
SQLite and PostgreSQL read the index's few rows (those written within the input retention, plus
any not yet erased) instead of walking every row older than the retention through
``ix_predictions_created_at``. Building it reads the table once. ``IF NOT EXISTS``: SQLite
commits the index by itself, so an upgrade cut short may be repeated.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

UNKEPT_INPUT = "input IS NOT NULL AND input_kept IS NULL"


def upgrade() -> None:
    op.create_index(
        "ix_predictions_unkept_input",
        "predictions",
        ["created_at"],
        sqlite_where=sa.text(UNKEPT_INPUT),
        postgresql_where=sa.text(UNKEPT_INPUT),
        if_not_exists=True,
    )


def downgrade() -> None:
    op.drop_index("ix_predictions_unkept_input", table_name="predictions")
