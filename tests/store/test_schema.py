"""node.store.db / models: migrations reach the models, SQLite durability settings, UTC instants."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError, StatementError
from sqlmodel import SQLModel

from node.store.db import alembic_config, current_revision, make_engine, migrate, transaction
from node.store.ops import MANIFESTS, record_manifest

TABLES = {
    "log_entries",
    "log_nodes",
    "log_checkpoints",
    "log_cosignatures",
    "equivocations",
    "result_conflicts",
    "inbox",
    "outbox",
    "message_log",
    "log_head",
    "manifests",
    "holiday_schedules",
    "requests",
    "request_events",
    "reminders",
    "bulletins",
    "bulletin_reads",
    "experts",
    "exchanges",
    "exchange_events",
    "expert_bookings",
}
HEAD = "0007"
#: Composite indexes the obligation queries and ``request list`` rely on (migration 0007).
REQUEST_INDEXES = {
    "ix_requests_open_due": ["status", "role", "due_ends_at", "request_id"],
    "ix_requests_created": ["created_at", "request_id"],
}


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def schema_diff(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


# --- migrations --------------------------------------------------------------------------------


def test_head_is_0001() -> None:
    assert head_revision() == HEAD


def test_migrate_empty_database_reaches_models(bare_engine: Engine) -> None:
    assert current_revision(bare_engine) is None
    assert set(inspect(bare_engine).get_table_names()) == set()

    migrate(bare_engine)

    assert current_revision(bare_engine) == head_revision() == HEAD
    assert set(inspect(bare_engine).get_table_names()) == {*TABLES, "alembic_version"}
    assert schema_diff(bare_engine) == []


def test_request_indexes_for_paged_obligation_queries(engine: Engine) -> None:
    indexes = {i["name"]: i["column_names"] for i in inspect(engine).get_indexes("requests")}
    for name, columns in REQUEST_INDEXES.items():
        assert indexes.get(name) == columns, name


def test_downgrade_0007_drops_only_its_indexes(engine: Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0006")
    assert current_revision(engine) == "0006"
    names = {i["name"] for i in inspect(engine).get_indexes("requests")}
    assert not names & set(REQUEST_INDEXES)
    assert "ix_requests_due_ends_at" in names
    migrate(engine)
    assert current_revision(engine) == HEAD
    assert schema_diff(engine) == []


def test_migrate_twice_is_a_noop(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        record_manifest(s, serial=7, signed=b"kept", now=now)

    migrate(engine)
    migrate(engine)

    assert current_revision(engine) == HEAD
    assert schema_diff(engine) == []
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
        rows = conn.execute(select(MANIFESTS.c.serial, MANIFESTS.c.signed)).all()
    assert [(r.serial, bytes(r.signed)) for r in rows] == [(7, b"kept")]


def test_downgrade_to_base_and_up_again(engine: Engine) -> None:
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "base")
    assert current_revision(engine) is None
    assert set(inspect(engine).get_table_names()) <= {"alembic_version"}

    migrate(engine)
    assert current_revision(engine) == HEAD
    assert schema_diff(engine) == []


# --- SQLite durability settings ----------------------------------------------------------------


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path}/pragmas.db")
    migrate(engine)
    yield engine
    engine.dispose()


def test_sqlite_pragmas_in_force(sqlite_engine: Engine) -> None:
    with sqlite_engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar_one() == 2  # FULL
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar_one() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1


def test_sqlite_transactions_begin_immediate(sqlite_engine: Engine) -> None:
    """A second writer cannot even *begin* while the first holds a transaction.

    With a deferred BEGIN the second ``begin()`` would succeed at once and only a later write
    would wait; with BEGIN IMMEDIATE the write lock is taken at BEGIN, so a read-then-write
    transaction can never lose its race after reading.
    """
    first = sqlite_engine.connect()
    second = sqlite_engine.connect()
    try:
        first.begin()
        first.execute(text("SELECT count(*) FROM outbox")).scalar_one()  # a read only
        # Lower the wait on the second connection only, below the transaction layer
        # (a PRAGMA through SQLAlchemy would itself begin, and wait the full 30 s).
        raw = second.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout=200")
        t0 = time.monotonic()
        with pytest.raises(OperationalError, match="locked"):
            second.begin()
        assert 0.15 < time.monotonic() - t0 < 10
        second.invalidate()  # do not return a connection with a short timeout to the pool

        first.rollback()
        with sqlite_engine.connect() as third:  # once released, the next writer proceeds
            third.begin()
            third.rollback()
    finally:
        first.close()
        second.close()


# --- UTC instants ------------------------------------------------------------------------------

ZONES = [
    UTC,
    ZoneInfo("Asia/Shanghai"),
    ZoneInfo("America/New_York"),
    ZoneInfo("Europe/London"),
    timezone(timedelta(hours=5, minutes=45)),
    timezone(timedelta(hours=-9, minutes=-30)),
]


def test_aware_datetimes_round_trip_as_utc(engine: Engine) -> None:
    base = datetime(2026, 11, 28, 10, 45, 12, 531115, tzinfo=UTC)
    # Distinct instants, each written in another zone (one across a DST change).
    instants = [
        (base + timedelta(days=150 * i, minutes=7 * i)).astimezone(z) for i, z in enumerate(ZONES)
    ]
    with transaction(engine) as s:
        for serial, at in enumerate(instants, start=1):
            record_manifest(s, serial=serial, signed=b"m", now=at)

    with engine.connect() as conn:
        rows = conn.execute(
            select(MANIFESTS.c.serial, MANIFESTS.c.accepted_at).order_by(MANIFESTS.c.serial)
        ).all()
    assert len(rows) == len(instants)
    for (_, got), sent in zip(rows, instants, strict=True):
        assert isinstance(got, datetime)
        assert got.tzinfo is UTC
        assert got == sent
        assert got == sent.astimezone(UTC)  # same wall clock once normalised

    # Comparisons in SQL use the instant, whatever zone the bound value was written in.
    pivot = instants[3].astimezone(ZoneInfo("Asia/Shanghai"))
    with engine.connect() as conn:
        before = conn.execute(
            select(MANIFESTS.c.serial)
            .where(MANIFESTS.c.accepted_at < pivot)
            .order_by(MANIFESTS.c.accepted_at)
        ).scalars()
        assert list(before) == [1, 2, 3]
        ordered = conn.execute(select(MANIFESTS.c.serial).order_by(MANIFESTS.c.accepted_at))
        assert list(ordered.scalars()) == [1, 2, 3, 4, 5, 6]


def test_sqlite_stores_utc_wall_clock(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path}/utc.db")
    try:
        migrate(engine)
        at = datetime(2026, 11, 28, 18, 0, tzinfo=ZoneInfo("Asia/Shanghai"))
        with transaction(engine) as s:
            record_manifest(s, serial=1, signed=b"m", now=at)
        with engine.connect() as conn:
            stored = conn.exec_driver_sql("SELECT accepted_at FROM manifests").scalar_one()
        assert str(stored).startswith("2026-11-28 10:00:00")
    finally:
        engine.dispose()


def test_naive_datetime_is_refused(engine: Engine) -> None:
    with pytest.raises(StatementError) as ei, transaction(engine) as s:
        record_manifest(s, serial=1, signed=b"m", now=datetime(2026, 11, 28, 10, 0))
    assert isinstance(ei.value.orig, ValueError)
    assert "naive" in str(ei.value.orig)
    with engine.connect() as conn:
        assert conn.execute(select(MANIFESTS.c.serial)).all() == []


def test_naive_datetime_refused_in_a_where_clause(engine: Engine) -> None:
    with pytest.raises(StatementError, match="naive"), engine.connect() as conn:
        conn.execute(select(MANIFESTS).where(MANIFESTS.c.accepted_at < datetime(2026, 1, 1)))
