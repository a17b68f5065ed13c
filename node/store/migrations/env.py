"""Alembic environment: migrations run on the connection the node hands over."""

from alembic import context
from sqlmodel import SQLModel

import node.store.models  # noqa: F401  (registers the tables)

target_metadata = SQLModel.metadata

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - the node always passes a connection
    raise RuntimeError("run migrations through node.store.db.migrate()")
context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
