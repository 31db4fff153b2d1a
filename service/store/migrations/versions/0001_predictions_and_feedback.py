"""predictions and feedback

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Identifier = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "predictions",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("route", sa.String(64), nullable=False),
        sa.Column("digit", sa.SmallInteger, nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
        sa.Column("accepted", sa.Boolean, nullable=True),
        sa.Column("reject_reason", sa.String(64), nullable=True),
        sa.Column("ink_share", sa.Float, nullable=False),
        sa.Column("bbox_height", sa.Float, nullable=False),
        sa.Column("bbox_width", sa.Float, nullable=False),
        sa.Column("centre_row", sa.Float, nullable=False),
        sa.Column("centre_col", sa.Float, nullable=False),
        sa.Column("stroke_thickness", sa.Float, nullable=False),
        sa.Column("input", sa.LargeBinary, nullable=True),
        sa.Column("input_kept", sa.String(16), nullable=True),
        sa.UniqueConstraint("request_id", "item", name="uq_predictions_request_item"),
    )
    op.create_index("ix_predictions_created_at", "predictions", ["created_at"])
    op.create_index("ix_predictions_version_id", "predictions", ["model_version", "id"])
    op.create_table(
        "feedback",
        sa.Column("id", Identifier, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(128), nullable=False),
        sa.Column("item", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.Integer, nullable=False),
        sa.Column("predicted_digit", sa.SmallInteger, nullable=False),
        sa.Column("label", sa.SmallInteger, nullable=False),
        sa.Column("correct", sa.Boolean, nullable=False),
        sa.UniqueConstraint("request_id", "item", name="uq_feedback_request_item"),
    )
    op.create_index("ix_feedback_version_id", "feedback", ["model_version", "id"])


def downgrade() -> None:
    op.drop_table("feedback")
    op.drop_table("predictions")
