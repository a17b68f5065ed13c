"""Engine creation, migrations and the single group-committing writer.

SQLite (the default, one node process): WAL, ``synchronous=FULL``, ``busy_timeout`` and
``BEGIN IMMEDIATE`` on every transaction, so a read-then-write never loses a race
(SQLAlchemy's documented recipe: disable pysqlite's own BEGIN, emit ours).
PostgreSQL (production, possibly several replicas of a node): the same code through psycopg;
queue rows are claimed with ``FOR UPDATE SKIP LOCKED``.

All writes of a node process go through one :class:`Writer` thread that commits many small jobs
in one transaction (if one fails, each is re-run alone, so it does not fail its neighbours)
and answers each job only after the commit: group commit keeps ``synchronous=FULL`` affordable
without ever acknowledging before the data is durable.
"""

from __future__ import annotations

import asyncio
import contextlib
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

from federation.errors import FederationError

log = logging.getLogger(__name__)
T = TypeVar("T")


class StoreError(FederationError):
    """The store is unreachable or a transaction failed for a reason other than our rules."""

    reason = "STORE"


def _guard_log_buffer(engine: Engine) -> None:
    from node.store.ops import pending_log

    @event.listens_for(engine, "commit")
    def _on_commit(conn: Connection) -> None:
        # Message-log records are buffered per transaction; committing without writing them
        # would lose them silently, so it is refused.
        if pending_log(conn):
            raise StoreError(
                "commit with unwritten message-log records or receipts (call flush_log first)"
            )

    @event.listens_for(engine, "rollback")
    def _on_rollback(conn: Connection) -> None:
        conn.info.pop("cccfed_log", None)
        conn.info.pop("cccfed_receipts", None)


def make_engine(url: str) -> Engine:
    """Create an engine with the durability settings of DESIGN.md §5."""
    engine = _make_engine(url)
    _guard_log_buffer(engine)
    return engine


def _make_engine(url: str) -> Engine:
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
        detail = str(e.orig).strip().splitlines()[0]
        raise StoreError(f"cannot migrate the store: {detail}") from e


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A read-write transaction outside the writer (CLI tools, tests)."""
    with engine.begin() as conn:
        yield conn
        flush_log(conn)


def flush_log(conn: Connection) -> None:
    """Write the message-log records buffered in this transaction (see ops.append_log)."""
    from node.store.ops import flush_log as _flush

    _flush(conn)


_STOP = object()


def _start(fut: Any) -> bool:
    """Mark a job's future as started; False if its caller already went away."""
    if isinstance(fut, Future):
        return bool(fut.set_running_or_notify_cancel())
    return not fut.done()  # an asyncio future: read-only check from the writer thread


def _finish(batch: list[tuple[Any, Any]], results: list[tuple[bool, Any]]) -> None:
    """Hand each job's result to its caller. Thread futures are set here; the asyncio futures
    of one loop are set together: at once on that loop's own thread (an attached writer), else
    in one callback on that loop."""
    try:
        here: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        here = None
    threaded: list[tuple[Any, bool, Any]] = []
    by_loop: dict[asyncio.AbstractEventLoop, list[tuple[Any, bool, Any]]] = {}
    for (ok, value), (_, fut) in zip(results, batch, strict=True):
        if isinstance(fut, Future):
            threaded.append((fut, ok, value))
        else:
            by_loop.setdefault(fut.get_loop(), []).append((fut, ok, value))
    _settle(threaded)
    for loop, settled in by_loop.items():
        if loop is here:
            _settle(settled)
            continue
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(_settle, settled)


def _settle(settled: list[tuple[Any, bool, Any]]) -> None:
    """Deliver results to their futures, skipping callers that went away. Asyncio futures
    only on their own loop; thread futures from anywhere."""
    for fut, ok, value in settled:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
        else:
            fut.set_exception(value)


class Writer:
    """Runs write jobs in batches, committing each batch once.

    ``await writer.run(fn)`` returns ``fn(connection)``'s result after the transaction holding it
    has committed. A job that raises has its exception returned to its caller and nothing of it
    stored; the other jobs of its batch commit.

    Where the jobs run:

    - by default on the writer's own thread, so the event loop never waits for the store (the
      mode for PostgreSQL, where every statement is a network round trip, and for processes
      without a loop);
    - once attached to an event loop (:meth:`attach`; a serving node on SQLite), on that loop
      itself, at the end of each loop turn: one transaction for the turn's jobs. SQLite
      statements are in-process calls of microseconds, so handing them to a thread cost more
      than it saved: the thread and the loop fought for the GIL on every batch (bench/README.md:
      about 15-20 % more throughput attached, at less CPU per message). The loop does wait for
      the commit's fsync; jobs from other threads (:meth:`submit`) are passed to the loop, so
      the store still has exactly one writer.
    """

    def __init__(self, engine: Engine, *, max_batch: int = 128, name: str = "store-writer") -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._q: queue.Queue[Any] = queue.Queue()
        #: Jobs queued from an event loop in its current turn, handed over together at its end.
        self._turn: dict[asyncio.AbstractEventLoop, list[tuple[Any, Any]]] = {}
        #: Transactions committed and jobs run (for metrics and benchmarks).
        self.commits = 0
        self.jobs = 0
        #: The event loop jobs run on when attached (see the class docstring), and its thread.
        self._attached: asyncio.AbstractEventLoop | None = None
        self._attached_thread: int | None = None
        self._conn: Connection | None = None
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Run jobs on ``loop`` (call from that loop's thread) until :meth:`detach`."""
        self._attached = loop
        self._attached_thread = threading.get_ident()

    def detach(self) -> None:
        """Back to the writer thread (jobs still waiting for their turn go there)."""
        self._attached = None
        self._attached_thread = None
        kept, self._conn = self._conn, None
        if kept is not None:
            kept.close()

    @contextmanager
    def _transaction(self) -> Iterator[Connection]:
        """One write transaction. Attached, on the loop's thread, it runs on a connection kept
        for the purpose (checking one out of the pool and back for every small batch showed in
        profiles); otherwise on a pooled one."""
        if self._attached is None or threading.get_ident() != self._attached_thread:
            with self.engine.begin() as conn:
                yield conn
            return
        kept = self._conn
        if kept is None or kept.closed or kept.invalidated:
            if kept is not None:
                kept.close()
            kept = self._conn = self.engine.connect()
        with kept.begin():
            yield kept

    def submit(self, fn: Callable[[Connection], T]) -> Future[T]:
        """Queue a job from any thread; the returned future settles after its commit."""
        fut: Future[T] = Future()
        loop = self._attached
        if loop is None:
            self._q.put([(fn, fut)])
        elif threading.get_ident() == self._attached_thread:
            self._run_jobs([(fn, fut)])  # on the loop itself: at once (waiting would deadlock)
        else:
            try:
                loop.call_soon_threadsafe(self._queue_on_loop, loop, fn, fut)
            except RuntimeError:  # the loop has closed meanwhile: the thread takes it
                self._q.put([(fn, fut)])
        return fut

    def _queue_on_loop(
        self, loop: asyncio.AbstractEventLoop, fn: Callable[[Connection], Any], fut: Any
    ) -> None:
        self._add(loop, [(fn, fut)])

    def _add(self, loop: asyncio.AbstractEventLoop, jobs: list[tuple[Any, Any]]) -> None:
        """Add jobs to ``loop``'s current batch (from that loop's thread); the first of a batch
        schedules its hand-over."""
        turn = self._turn.get(loop)
        if turn is None:
            turn = self._turn[loop] = []
            loop.call_soon(self._linger, loop)
        turn.extend(jobs)

    async def run(self, fn: Callable[[Connection], T]) -> T:
        """Queue a job from the event loop and wait for its commit.

        The jobs an event loop queues in one turn (say, every item of one ``DeliverBatch``), and
        in the turn after it (say, the producers woken by a batch of receipts), reach the writer
        together, so they share one transaction instead of the first leaving alone; their
        futures are settled together. Cheaper than :meth:`submit` + ``wrap_future``, too: one
        hand-off per batch, no thread lock per job.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[T] = loop.create_future()
        self._add(loop, [(fn, fut)])
        return await fut

    async def run_many(self, fns: list[Callable[[Connection], Any]]) -> list[Any]:
        """:meth:`run` for several jobs at once: each result, or the exception its job raised,
        in order (one future each, no task per job)."""
        if not fns:
            return []
        loop = asyncio.get_running_loop()
        futs: list[asyncio.Future[Any]] = [loop.create_future() for _ in fns]
        self._add(loop, list(zip(fns, futs, strict=True)))
        return list(await asyncio.gather(*futs, return_exceptions=True))

    def _linger(self, loop: asyncio.AbstractEventLoop) -> None:
        """One more loop turn before the batch closes: callbacks scheduled by this turn (say,
        producers woken by the receipts whose records were just queued) join the same
        transaction instead of paying for a commit of their own."""
        loop.call_soon(self._hand_over, loop)

    def _hand_over(self, loop: asyncio.AbstractEventLoop) -> None:
        """At the end of a loop turn: run its jobs as one batch here (attached), or pass them
        to the writer thread as one."""
        jobs = self._turn.pop(loop, None)
        if not jobs:
            return
        if loop is self._attached:
            self._run_jobs(jobs)
        else:
            self._q.put(jobs)

    def _run_jobs(self, batch: list[tuple[Callable[[Connection], Any], Any]]) -> None:
        try:
            self._run_batch(batch)
        except Exception:  # the writer must never die: every later commit depends on it
            log.exception("store writer: unexpected error in a batch")
            err = StoreError("store writer failed; see the node log")
            _finish(batch, [(False, err)] * len(batch))

    def close(self) -> None:
        self._q.put(_STOP)
        self._thread.join(timeout=30)

    def _loop(self) -> None:
        while True:
            item = self._q.get()
            if item is _STOP:
                return
            batch = list(item)
            stop = False
            while len(batch) < self.max_batch:
                try:
                    nxt = self._q.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stop = True
                    break
                batch.extend(nxt)
            self._run_jobs(batch)
            if stop:
                return

    def _run_alone(self, fn: Callable[[Connection], Any]) -> tuple[bool, Any]:
        try:
            with self._transaction() as conn:
                value = fn(conn)
                flush_log(conn)
            self.commits += 1
            return True, value
        except FederationError as e:
            return False, e
        except SQLAlchemyError as e:
            # e.g. the store is down, or a key taken by a concurrent replica: try again later
            err = StoreError(f"store: {type(e).__name__}: {e}".splitlines()[0])
            err.__cause__ = e
            return False, err
        except Exception as e:  # a bug in one job must reach its caller, not the others
            log.exception("store writer: job failed")
            return False, e

    def _run_batch(self, batch: list[tuple[Callable[[Connection], Any], Any]]) -> None:
        # A job whose caller went away before it started (a cancelled RPC) is dropped. Once a
        # job runs it commits whatever happens to its caller; a result for a caller that went
        # away meanwhile is discarded (see _settle).
        batch = [(fn, fut) for fn, fut in batch if _start(fut)]
        if not batch:
            return
        self.jobs += len(batch)
        # Optimistic: every job in one transaction, one commit. If any job fails, the whole
        # transaction is rolled back and each job runs again in a transaction of its own, so a
        # failing job never takes its neighbours with it (jobs are functions of the store).
        results: list[tuple[bool, Any]] | None = None
        if len(batch) > 1:
            try:
                with self._transaction() as conn:
                    values = [fn(conn) for fn, _ in batch]
                    flush_log(conn)
                self.commits += 1
                results = [(True, v) for v in values]
            except Exception:  # noqa: BLE001 - any failure: retry the jobs one by one
                results = None
        if results is None:
            results = [self._run_alone(fn) for fn, _ in batch]
        _finish(batch, results)
