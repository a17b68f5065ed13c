"""The store writer's hand-off per loop turn and its attached mode (ADR 0005), on both backends.

Attached to an event loop, a writer runs jobs on that loop's thread, one transaction per turn;
jobs from other threads are passed to the loop; a failing job still fails alone.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine

from federation.errors import FederationError
from node.store.db import Writer, transaction
from node.store.ops import MANIFESTS, record_manifest


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    w = Writer(engine)
    yield w
    w.detach()
    w.close()


Job = Callable[[Connection], int]


def _job(serial: int, now: datetime, threads: list[int] | None = None) -> Job:
    def job(s: Connection) -> int:
        record_manifest(s, serial=serial, signed=b"m%d" % serial, now=now)
        if threads is not None:
            threads.append(threading.get_ident())
        return serial

    return job


def _stored(engine: Engine) -> set[int]:
    with engine.connect() as conn:
        return {int(r.serial) for r in conn.execute(select(MANIFESTS.c.serial))}


def test_jobs_of_one_turn_reach_the_writer_thread_as_one_batch(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    threads: list[int] = []

    async def main() -> tuple[list[int], int]:
        before = writer.commits
        got = await asyncio.gather(*(writer.run(_job(i, now, threads)) for i in range(1, 6)))
        return list(got), writer.commits - before

    results, commits = asyncio.run(main())
    assert results == [1, 2, 3, 4, 5]
    assert commits == 1  # the whole turn in one transaction
    assert threading.get_ident() not in threads  # not attached: the writer thread ran them
    assert _stored(engine) == {1, 2, 3, 4, 5}


def test_attached_jobs_run_on_the_loop_one_commit_per_turn(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    threads: list[int] = []

    async def main() -> tuple[list[int], int]:
        writer.attach(asyncio.get_running_loop())
        before = writer.commits
        got = await asyncio.gather(*(writer.run(_job(i, now, threads)) for i in range(1, 6)))
        return list(got), writer.commits - before

    results, commits = asyncio.run(main())
    assert results == [1, 2, 3, 4, 5]
    assert commits == 1
    assert set(threads) == {threading.get_ident()}  # asyncio.run's loop runs in this thread
    assert _stored(engine) == {1, 2, 3, 4, 5}  # committed: visible to another connection


def test_attached_failing_job_fails_alone(writer: Writer, engine: Engine, now: datetime) -> None:
    def bad(s: Connection) -> int:
        record_manifest(s, serial=7, signed=b"m7", now=now)
        raise FederationError("refused by the rules", reason="INVALID")

    async def main() -> list[object]:
        writer.attach(asyncio.get_running_loop())
        return await writer.run_many([_job(1, now), bad, _job(2, now)])

    results = asyncio.run(main())
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], FederationError) and results[1].reason == "INVALID"
    assert _stored(engine) == {1, 2}  # nothing of the failing job


def test_attached_submit_from_another_thread_runs_on_the_loop(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    threads: list[int] = []

    async def main() -> int:
        writer.attach(asyncio.get_running_loop())
        # A thread submits and blocks on the result; the loop is free meanwhile and runs it.
        return await asyncio.to_thread(lambda: writer.submit(_job(3, now, threads)).result(10))

    assert asyncio.run(main()) == 3
    assert threads == [threading.get_ident()]
    assert _stored(engine) == {3}


def test_attached_submit_on_the_loop_thread_runs_at_once(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    async def main() -> None:
        writer.attach(asyncio.get_running_loop())
        fut = writer.submit(_job(4, now))
        assert fut.done()  # waiting for the loop from the loop would deadlock
        assert fut.result() == 4

    asyncio.run(main())
    assert _stored(engine) == {4}


def test_detached_writer_goes_back_to_its_thread(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    threads: list[int] = []

    async def main() -> None:
        writer.attach(asyncio.get_running_loop())
        await writer.run(_job(5, now, threads))
        await writer.run(_job(6, now, threads))
        writer.detach()
        await writer.run(_job(8, now, threads))

    asyncio.run(main())
    loop_thread = threading.get_ident()
    assert threads[:2] == [loop_thread, loop_thread]
    assert threads[2] != loop_thread
    assert _stored(engine) == {5, 6, 8}


@pytest.mark.parametrize(
    "at",
    [
        datetime(2026, 11, 28, 8, 0, 0, tzinfo=UTC),  # no microseconds
        datetime(2026, 11, 28, 16, 0, 0, 123456, tzinfo=timezone(timedelta(hours=8))),
    ],
)
def test_raw_bound_instants_read_back_through_the_models(engine: Engine, at: datetime) -> None:
    """The hot statements bind instants themselves (node.store.ops._ts); SQLAlchemy must read
    them back as the same instant, and compare them in SQL, as if it had bound them."""
    from node.store.ops import OUTBOX, outbox_enqueue

    with transaction(engine) as s:
        outbox_enqueue(
            s,
            b"env",
            message_id=str(uuid.uuid4()),
            recipient_node="320000",
            service="federation",
            kind="cccfed.v1.Ping",
            now=at,
        )
    with engine.connect() as conn:
        row = conn.execute(select(OUTBOX.c.created_at, OUTBOX.c.next_attempt_at)).one()
        due = conn.execute(
            select(func.count()).select_from(OUTBOX).where(OUTBOX.c.next_attempt_at <= at)
        ).scalar_one()
    assert row.created_at == at and row.next_attempt_at == at
    assert due == 1
    with pytest.raises(ValueError, match="naive"), transaction(engine) as s:
        outbox_enqueue(
            s,
            b"env",
            message_id=str(uuid.uuid4()),
            recipient_node="320000",
            service="federation",
            kind="cccfed.v1.Ping",
            now=at.replace(tzinfo=None),
        )
