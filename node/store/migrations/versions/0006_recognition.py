"""recognition: inspection-result logs, checkpoints, cosignatures, evidence, conflicts

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 12:30:00

Each member's append-only log of inspection results (its own and every one it witnesses) with
the perfect-subtree hashes that answer proofs, the checkpoints signed or accepted, witnesses'
cosignatures, equivocation evidence (which freezes its origin) and flagged business-key
conflicts.
"""

import sqlalchemy as sa
from alembic import op

import node.store.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _at(name: str) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, node.store.models.UTCDateTime(timezone=True), nullable=False)


def upgrade() -> None:
    op.create_table(
        "log_entries",
        sa.Column("origin", sa.String(length=6), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("leaf_hash", sa.LargeBinary(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("record_id", sa.String(length=36), nullable=False),
        sa.Column("business_key", sa.String(length=64), nullable=False),
        sa.Column("supersedes", sa.String(length=36), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        _at("stored_at"),
        sa.PrimaryKeyConstraint("origin", "idx"),
    )
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_log_entries_record_id"), ["record_id"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_log_entries_business_key"), ["business_key"], unique=False
        )
    op.create_table(
        "log_nodes",
        sa.Column("origin", sa.String(length=6), nullable=False),
        sa.Column("level", sa.Integer(), nullable=False),
        sa.Column("idx", sa.Integer(), nullable=False),
        sa.Column("hash", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("origin", "level", "idx"),
    )
    op.create_table(
        "log_checkpoints",
        sa.Column("origin", sa.String(length=6), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("signed", sa.LargeBinary(), nullable=False),
        _at("stored_at"),
        sa.PrimaryKeyConstraint("origin", "size"),
    )
    op.create_table(
        "log_cosignatures",
        sa.Column("origin", sa.String(length=6), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("witness", sa.String(length=6), nullable=False),
        sa.Column("root", sa.LargeBinary(), nullable=False),
        sa.Column("line", sa.LargeBinary(), nullable=False),
        _at("stored_at"),
        sa.PrimaryKeyConstraint("origin", "size", "witness"),
    )
    op.create_table(
        "equivocations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("origin", sa.String(length=6), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.Column("source", sa.String(length=6), nullable=False),
        _at("found_at"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("equivocations", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_equivocations_origin"), ["origin"], unique=False)
    op.create_table(
        "result_conflicts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("business_key", sa.String(length=64), nullable=False),
        sa.Column("record_a", sa.String(length=36), nullable=False),
        sa.Column("record_b", sa.String(length=36), nullable=False),
        _at("flagged_at"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("record_a", "record_b"),
    )
    with op.batch_alter_table("result_conflicts", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_result_conflicts_business_key"), ["business_key"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("result_conflicts", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_result_conflicts_business_key"))
    op.drop_table("result_conflicts")
    with op.batch_alter_table("equivocations", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_equivocations_origin"))
    op.drop_table("equivocations")
    op.drop_table("log_cosignatures")
    op.drop_table("log_checkpoints")
    op.drop_table("log_nodes")
    with op.batch_alter_table("log_entries", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_log_entries_business_key"))
        batch_op.drop_index(batch_op.f("ix_log_entries_record_id"))
    op.drop_table("log_entries")
