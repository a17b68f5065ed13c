"""requests, request events, reminders, bulletins

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-28 11:27:00.399495
"""

import sqlalchemy as sa
from alembic import op

import node.store.models

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bulletin_reads",
        sa.Column("bulletin_id", sa.String(length=36), nullable=False),
        sa.Column("node", sa.String(length=6), nullable=False),
        sa.Column("read_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("bulletin_id", "node"),
    )
    op.create_table(
        "bulletins",
        sa.Column("bulletin_id", sa.String(length=36), nullable=False),
        sa.Column("sender_node", sa.String(length=6), nullable=False),
        sa.Column("title", sa.String(), nullable=False),
        sa.Column("bulletin", sa.LargeBinary(), nullable=False),
        sa.Column("sent_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", node.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("read_at", node.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("bulletin_id"),
    )
    op.create_table(
        "reminders",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("key", sa.String(length=24), nullable=False),
        sa.Column("due_date", sa.String(length=10), nullable=False),
        sa.Column("produced_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id", "key", "due_date"),
    )
    op.create_table(
        "request_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("side", sa.String(length=10), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("seen", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("message_id", sa.String(length=36), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("void", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("request_id", "side", "idx"),
    )
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_request_events_request_id"), ["request_id"], unique=False
        )

    op.create_table(
        "requests",
        sa.Column("request_id", sa.String(length=36), nullable=False),
        sa.Column("role", sa.String(length=10), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("requesting_bureau", sa.String(length=6), nullable=False),
        sa.Column("requester_node", sa.String(length=6), nullable=False),
        sa.Column("target_bureau", sa.String(length=6), nullable=False),
        sa.Column("responder_node", sa.String(length=6), nullable=False),
        sa.Column("assigned_bureau", sa.String(length=6), nullable=True),
        sa.Column("holder_name", sa.String(), nullable=False),
        sa.Column("holder_uscc", sa.String(length=18), nullable=False),
        sa.Column("request", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=24), nullable=False),
        sa.Column("received_at", node.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_date", sa.String(length=10), nullable=True),
        sa.Column("due_ends_at", node.store.models.UTCDateTime(timezone=True), nullable=True),
        sa.Column("due_provisional", sa.Boolean(), nullable=False),
        sa.Column("linked_request_id", sa.String(length=36), nullable=True),
        sa.Column("view", sa.String(), nullable=False),
        sa.Column("created_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", node.store.models.UTCDateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("request_id"),
    )
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_requests_due_ends_at"), ["due_ends_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_holder_uscc"), ["holder_uscc"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_requests_requester_node"), ["requester_node"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_requests_responder_node"), ["responder_node"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_requests_role"), ["role"], unique=False)
        batch_op.create_index(batch_op.f("ix_requests_status"), ["status"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_requests_status"))
        batch_op.drop_index(batch_op.f("ix_requests_role"))
        batch_op.drop_index(batch_op.f("ix_requests_responder_node"))
        batch_op.drop_index(batch_op.f("ix_requests_requester_node"))
        batch_op.drop_index(batch_op.f("ix_requests_holder_uscc"))
        batch_op.drop_index(batch_op.f("ix_requests_due_ends_at"))

    op.drop_table("requests")
    with op.batch_alter_table("request_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_request_events_request_id"))

    op.drop_table("request_events")
    op.drop_table("reminders")
    op.drop_table("bulletins")
    op.drop_table("bulletin_reads")
