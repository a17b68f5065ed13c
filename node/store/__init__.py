"""The node's local store: SQLite by default, PostgreSQL in production, through SQLAlchemy."""
