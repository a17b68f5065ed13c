"""Engine creation, migrations and the single group-committing writer.

SQLite (the default, one node process): WAL, ``synchronous=FULL``, ``busy_timeout`` and
``BEGIN IMMEDIATE`` on every transaction, so a read-then-write never loses a race
(SQLAlchemy's documented recipe: disable pysqlite's own BEGIN, emit ours).
PostgreSQL (production, possibly several replicas of a node): the same code through psycopg;
queue rows are claimed with ``FOR UPDATE SKIP LOCKED``.

All writes of a node process go through one :class:`Writer` thread that commits many small jobs
in one transaction (each in its own SAVEPOINT, so one failing job does not fail its neighbours)
and answers each job only after the commit: group commit keeps ``synchronous=FULL`` affordable
without ever acknowledging before the data is durable.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from importlib import resources
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from federation.errors import FederationError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(FederationError):
    """The store is unreachable or a transaction failed for a reason other than our rules."""

    reason = "STORE"


def make_engine(url: str) -> Engine:
    """Create an engine with the durability settings of DESIGN.md §5."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None  # we emit BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            # Writers take the lock up front; readers (see reader()) read a WAL snapshot and
            # never queue behind the node's writer.
            if conn.get_execution_options().get("cccfed_readonly"):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_size=8, max_overflow=8, pool_pre_ping=True)


def reader(engine: Engine) -> Engine:
    """The same engine for read-only work (deferred BEGIN on SQLite)."""
    return engine.execution_options(cccfed_readonly=True)


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("node.store") / "migrations"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (idempotent)."""
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                # Replicas of one node may start together: one migrates, the others wait.
                conn.exec_driver_sql("SELECT pg_advisory_xact_lock(4242001)")
            command.upgrade(alembic_config(conn), revision)
    except OperationalError as e:
        raise StoreError(f"cannot migrate the store: {e.orig}") from e


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def transaction(engine: Engine) -> Iterator[Session]:
    """A read-write transaction outside the writer (CLI tools, tests)."""
    with Session(engine, expire_on_commit=False) as s, s.begin():
        yield s


_STOP = object()


class Writer:
    """One thread that runs write jobs in batches, committing each batch once.

    ``await writer.run(fn)`` returns ``fn(session)``'s result after the batch holding it has
    committed. A job that raises is rolled back to its savepoint and its exception is returned to
    its caller; the rest of the batch commits.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 128, name: str = "store-writer") -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._q: queue.Queue[Any] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[Session], T]) -> Future[T]:
        fut: Future[T] = Future()
        self._q.put((fn, fut))
        return fut

    async def run(self, fn: Callable[[Session], T]) -> T:
        return await asyncio.wrap_future(self.submit(fn))

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = [item]
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.append(nxt)
            try:
                self._run_batch(batch)
            except Exception:  # the writer must never die: every later commit depends on it
                log.exception("store writer: unexpected error in a batch")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(StoreError("store writer failed; see the node log"))
            if stop:
                return

    def _run_batch(self, batch: list[tuple[Callable[[Session], Any], Future[Any]]]) -> None:
        # A job whose caller went away before it started (a cancelled RPC) is dropped; once a
        # job runs, its future can no longer be cancelled, so its result is always deliverable.
        batch = [(fn, fut) for fn, fut in batch if fut.set_running_or_notify_cancel()]
        if not batch:
            return
        results: list[tuple[bool, Any]] = []
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                for fn, _ in batch:
                    sp = s.begin_nested()
                    try:
                        value = fn(s)
                        sp.commit()
                        results.append((True, value))
                    except FederationError as e:
                        sp.rollback()
                        results.append((False, e))
                    except SQLAlchemyError as e:
                        # e.g. a unique key taken by a concurrent replica: try again later
                        sp.rollback()
                        err = StoreError(f"store: {type(e).__name__}: {e}".splitlines()[0])
                        err.__cause__ = e
                        results.append((False, err))
                    except Exception as e:
                        sp.rollback()
                        log.exception("store writer: job failed")
                        results.append((False, e))
        except SQLAlchemyError as e:
            err = StoreError(f"store commit failed: {e}")
            err.__cause__ = e
            for _, fut in batch:
                fut.set_exception(err)
            return
        for (ok, value), (_, fut) in zip(results, batch, strict=True):
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)
