"""expert registry, exchanges, exchange events, bookings

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 11:55:02.376996

The expert registry (private fields stay in this table), the exchanges this node hosts or
provides experts for, both sides' events, and the per-day bookings derived from them, whose
primary key makes the database refuse a double booking.
"""

import sqlalchemy as sa
from alembic import op

import node.store.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "exchange_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("exchange_id", sa.String(length=36), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("void", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("exchange_id", "side", "idx"),
    )
    with op.batch_alter_table("exchange_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_exchange_events_exchange_id"), ["exchange_id"], unique=False
        )

    op.create_table(
        "exchanges",
        sa.Column("exchange_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("host_bureau", sa.String(length=6), nullable=False),
        sa.Column("host_node", sa.String(length=6), nullable=False),
        sa.Column("provider_node", sa.String(length=6), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("host_value", sa.LargeBinary(), nullable=True),
        sa.Column("host_commitment", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("dates", sa.String(), nullable=False),
        sa.Column("first_date", sa.String(length=10), nullable=False),
        sa.Column("last_date", sa.String(length=10), nullable=False),
        sa.Column("assigned", sa.String(), nullable=False),
        sa.Column("audit", sa.String(), nullable=True),
        sa.Column("view", sa.String(), nullable=False),
        sa.Column("received_at", node.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("exchange_id"),
    )
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_exchanges_first_date"), ["first_date"], unique=False)
        batch_op.create_index(batch_op.f("ix_exchanges_host_node"), ["host_node"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_exchanges_provider_node"), ["provider_node"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_exchanges_role"), ["role"], unique=False)
        batch_op.create_index(batch_op.f("ix_exchanges_status"), ["status"], unique=False)

    op.create_table(
        "expert_bookings",
        sa.Column("expert_id", sa.String(length=64), nullable=False),
        sa.Column("day", sa.String(length=10), nullable=False),
        sa.Column("exchange_id", sa.String(length=36), nullable=False),
        sa.Column("tentative", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("expert_id", "day"),
    )
    with op.batch_alter_table("expert_bookings", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_expert_bookings_exchange_id"), ["exchange_id"], unique=False
        )

    op.create_table(
        "experts",
        sa.Column("expert_id", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("bureau", sa.String(length=6), nullable=False),
        sa.Column("categories", sa.String(), nullable=False),
        sa.Column("annual_cap", sa.Integer(), nullable=False),
        sa.Column("unavailable", sa.String(), nullable=False),
        sa.Column("conflict_holders", sa.String(), nullable=False),
        sa.Column("conflict_bureaus", sa.String(), nullable=False),
        sa.Column("phone", sa.String(), nullable=False),
        sa.Column("id_number", sa.String(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("source", sa.String(), nullable=False),
        sa.Column("imported_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("expert_id"),
    )
    with op.batch_alter_table("experts", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_experts_active"), ["active"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("experts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_experts_active"))

    op.drop_table("experts")
    with op.batch_alter_table("expert_bookings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_expert_bookings_exchange_id"))

    op.drop_table("expert_bookings")
    with op.batch_alter_table("exchanges", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_exchanges_status"))
        batch_op.drop_index(batch_op.f("ix_exchanges_role"))
        batch_op.drop_index(batch_op.f("ix_exchanges_provider_node"))
        batch_op.drop_index(batch_op.f("ix_exchanges_host_node"))
        batch_op.drop_index(batch_op.f("ix_exchanges_first_date"))

    op.drop_table("exchanges")
    with op.batch_alter_table("exchange_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_exchange_events_exchange_id"))

    op.drop_table("exchange_events")
