"""requests: indexes for paged obligation lists, the reminder sweep and request listing

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 14:00:00

``ix_requests_open_due`` (status, role, due_ends_at, request_id): the owed/awaiting/overdue
lists, the reminder sweep and the escalation report read one range of it per (open status, role)
in due order, so a page or the due-soon set costs the same with 10,000 or 1,000,000 open
requests (see ``bench/obligations.py``). ``ix_requests_created`` (created_at, request_id):
``request list`` pages through all requests in creation order.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index(
            "ix_requests_open_due", ["status", "role", "due_ends_at", "request_id"], unique=False
        )
        batch_op.create_index("ix_requests_created", ["created_at", "request_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_created")
        batch_op.drop_index("ix_requests_open_due")
