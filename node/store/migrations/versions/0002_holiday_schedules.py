"""holiday schedules imported by the administrator

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:05:37.118402
"""

import sqlalchemy as sa
from alembic import op

import node.store.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holiday_schedules",
        sa.Column("year", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("schedule", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("imported_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("year"),
    )


def downgrade() -> None:
    op.drop_table("holiday_schedules")
