"""node.store: the group-committing Writer, the hash-chained log, inbox and outbox operations."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError

from cccfed.v1 import envelope_pb2, federation_pb2, log_pb2
from federation import message_log as mlog
from federation.crypto import Signer
from federation.envelope import (
    Opened,
    Policy,
    header_of,
    make_receipt,
    open_envelope,
    seal,
    verify_receipt,
)
from federation.errors import ValidationError
from federation.manifest import TrustedManifest
from node.store.db import StoreError, Writer, transaction
from node.store.ops import (
    DELIVERED,
    FAILED,
    HEAD,
    INBOX,
    LOG,
    MANIFESTS,
    OUTBOX,
    QUEUED,
    RETRY,
    SENDING,
    DuplicateConflict,
    OutboxError,
    PendingReceipt,
    append_log,
    inbox_accept,
    outbox_claim,
    outbox_delivered,
    outbox_enqueue,
    outbox_failed,
    outbox_manual_retry,
    outbox_release_own,
    outbox_retry_later,
    record_manifest,
)

SH, JS = "310000", "320000"
LEASE = timedelta(seconds=60)


# --- helpers -----------------------------------------------------------------------------------


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def peek_count(engine: Engine, table: str) -> int:
    """Count rows outside any transaction of ours (a SQLite reader must not BEGIN IMMEDIATE)."""
    raw = engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        row = cur.fetchone()
        assert row is not None
        raw.rollback()
        return int(row[0])
    finally:
        raw.close()


def log_rows(engine: Engine) -> list[tuple[int, bytes, bytes]]:
    with engine.connect() as conn:
        rows = conn.execute(select(LOG.c.seq, LOG.c.record, LOG.c.record_hash).order_by(LOG.c.seq))
        return [(int(r.seq), bytes(r.record), bytes(r.record_hash)) for r in rows]


def parsed_log(engine: Engine) -> list[log_pb2.LogRecord]:
    return [log_pb2.LogRecord.FromString(raw) for _, raw, _ in log_rows(engine)]


def outbox_row(engine: Engine, row_id: int) -> Any:
    with engine.connect() as conn:
        return conn.execute(select(OUTBOX).where(OUTBOX.c.id == row_id)).one()


def ping(
    signer: Signer,
    sender: str,
    recipient: str,
    at: datetime,
    note: str = "",
    message_id: str | None = None,
) -> bytes:
    return seal(
        signer,
        sender_node=sender,
        recipient_node=recipient,
        payload=federation_pb2.Ping(note=note or f"ping {uuid.uuid4()}"),
        now=at,
        message_id=message_id,
    )


def open_at(
    data: bytes, manifest: TrustedManifest, *, self_node: str, peer: str, at: datetime
) -> Opened:
    return open_envelope(
        data, manifest, self_node=self_node, peer_node=peer, now=at, policy=Policy()
    )


def enqueue(s: Connection, now: datetime, n: int = 1, recipient: str = JS) -> list[int]:
    """Queue ``n`` placeholder envelopes (the outbox does not look inside)."""
    ids = []
    for i in range(n):
        mid = str(uuid.uuid4())
        ids.append(
            outbox_enqueue(
                s,
                f"envelope {i} {mid}".encode(),
                message_id=mid,
                recipient_node=recipient,
                service="Federation",
                kind="cccfed.v1.Ping",
                now=now,
            )
        )
    return ids


@pytest.fixture
def writer(engine: Engine) -> Iterator[Writer]:
    w = Writer(engine)
    yield w
    w.close()


# --- Writer ------------------------------------------------------------------------------------


def _insert_manifest(serial: int, now: datetime) -> Callable[[Connection], tuple[int, int]]:
    def job(s: Connection) -> tuple[int, int]:
        record_manifest(s, serial=serial, signed=b"m%d" % serial, now=now)
        return serial, id(s)

    return job


def test_writer_commits_a_batch_without_failures_in_one_transaction(
    writer: Writer, now: datetime
) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def blocker(s: Connection) -> None:
        entered.set()
        assert gate.wait(10)

    writer.submit(blocker)
    assert entered.wait(10)
    futures = [writer.submit(_insert_manifest(serial, now)) for serial in range(1, 11)]
    gate.set()
    results = [f.result(10) for f in futures]
    assert [serial for serial, _ in results] == list(range(1, 11))
    assert len({conn_id for _, conn_id in results}) == 1  # one batch, one commit


def test_writer_batch_commits_good_jobs_and_isolates_a_failing_one(
    writer: Writer, engine: Engine, other_engine: Engine, now: datetime
) -> None:
    gate = threading.Event()
    entered = threading.Event()

    def blocker(s: Connection) -> str:
        entered.set()
        assert gate.wait(10)
        return "first"

    def failing(s: Connection) -> None:
        record_manifest(s, serial=7, signed=b"never", now=now)  # written, then rolled back
        raise ValidationError("refused by a domain rule", reason="TEST_REFUSED")

    first = writer.submit(blocker)
    assert entered.wait(10)
    # While the writer is busy, queue many jobs: they all go into the next batch.
    futures: list[Future[Any]] = []
    for serial in range(1, 21):
        futures.append(writer.submit(failing if serial == 7 else _insert_manifest(serial, now)))
    seen_at_resolution: list[int] = []
    futures[0].add_done_callback(
        lambda _f: seen_at_resolution.append(count(other_engine, MANIFESTS))
    )
    assert not any(f.done() for f in futures)
    gate.set()

    assert first.result(10) == "first"
    results = {}
    for serial, fut in enumerate(futures, start=1):
        if serial == 7:
            exc = fut.exception(10)
            assert isinstance(exc, ValidationError)
            assert exc.reason == "TEST_REFUSED"
            with pytest.raises(ValidationError):
                fut.result(0)
        else:
            results[serial] = fut.result(10)
    assert sorted(results) == [s for s in range(1, 21) if s != 7]
    # after a failure each job ran again alone: the good ones committed, the bad one did not
    # The future resolved only after the commit: another connection already saw every row.
    assert seen_at_resolution == [19]
    with other_engine.connect() as conn:
        serials = conn.execute(select(MANIFESTS.c.serial).order_by(MANIFESTS.c.serial)).scalars()
        assert list(serials) == [s for s in range(1, 21) if s != 7]


def test_writer_run_from_asyncio(writer: Writer, other_engine: Engine, now: datetime) -> None:
    async def main() -> list[tuple[int, int]]:
        return await asyncio.gather(*(writer.run(_insert_manifest(n, now)) for n in range(1, 6)))

    assert [serial for serial, _ in asyncio.run(main())] == [1, 2, 3, 4, 5]
    assert count(other_engine, MANIFESTS) == 5


def test_writer_returns_store_errors_per_job(writer: Writer, engine: Engine, now: datetime) -> None:
    """An integrity error (duplicate key) in one job fails that job only."""
    a = writer.submit(_insert_manifest(1, now))
    assert a.result(10)[0] == 1
    dup = writer.submit(_insert_manifest(1, now))  # record_manifest checks first: returns False
    assert dup.result(10)[0] == 1

    def raw_duplicate(s: Connection) -> None:
        s.execute(insert(MANIFESTS).values(serial=1, signed=b"x", accepted_at=now))

    bad = writer.submit(raw_duplicate)
    good = writer.submit(_insert_manifest(2, now))
    err = bad.exception(10)
    assert isinstance(err, StoreError) and err.reason == "STORE"  # transient: UNAVAILABLE
    assert isinstance(err.__cause__, IntegrityError)
    assert good.result(10)[0] == 2
    assert count(engine, MANIFESTS) == 2


def _blocked(writer: Writer) -> threading.Event:
    """Hold the writer busy in a batch until the returned event is set."""
    gate = threading.Event()
    entered = threading.Event()

    def blocker(s: Connection) -> None:
        entered.set()
        assert gate.wait(10)

    writer.submit(blocker)
    assert entered.wait(10)
    return gate


def test_writer_survives_an_unexpected_exception(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    def boom(s: Connection) -> None:
        raise RuntimeError("a bug in a job")

    assert writer.submit(boom).exception(10) is not None
    assert writer.submit(_insert_manifest(1, now)).result(10)[0] == 1
    assert count(engine, MANIFESTS) == 1


def test_writer_unexpected_exception_spares_its_batch_neighbours(
    writer: Writer, engine: Engine, now: datetime
) -> None:
    def boom(s: Connection) -> None:
        record_manifest(s, serial=99, signed=b"never", now=now)
        raise KeyError("a bug in a job")

    gate = _blocked(writer)
    before = writer.submit(_insert_manifest(1, now))
    bad = writer.submit(boom)
    after = writer.submit(_insert_manifest(2, now))
    gate.set()
    assert bad.exception(10) is not None
    assert before.result(10)[0] == 1
    assert after.result(10)[0] == 2
    with engine.connect() as conn:
        assert list(
            conn.execute(select(MANIFESTS.c.serial).order_by(MANIFESTS.c.serial)).scalars()
        ) == [1, 2]


def test_writer_drops_cancelled_jobs(writer: Writer, engine: Engine, now: datetime) -> None:
    ran: list[int] = []

    def job(s: Connection) -> None:
        ran.append(1)
        record_manifest(s, serial=1, signed=b"m", now=now)

    gate = _blocked(writer)
    cancelled = writer.submit(job)
    assert cancelled.cancel()
    kept = writer.submit(_insert_manifest(2, now))
    gate.set()
    assert kept.result(10)[0] == 2
    assert ran == []
    with engine.connect() as conn:
        assert list(conn.execute(select(MANIFESTS.c.serial)).scalars()) == [2]


# --- append_log --------------------------------------------------------------------------------


def test_append_log_chain_verifies(
    engine: Engine, sh: Signer, keyring: mlog.Keyring, now: datetime
) -> None:
    n = 12
    envs = [ping(sh, SH, JS, now + timedelta(seconds=i)) for i in range(n)]
    seqs = []
    for i, env in enumerate(envs):
        with transaction(engine) as s:
            seqs.append(
                append_log(
                    s,
                    direction=mlog.SENT,
                    rtype=mlog.ENVELOPE,
                    message_id=header_of(env).message_id,
                    peer_node=JS,
                    data=env,
                    at=now + timedelta(seconds=i),
                )
            )
    assert seqs == list(range(1, n + 1))

    rows = log_rows(engine)
    assert [seq for seq, _, _ in rows] == seqs
    report = mlog.verify_chain(rows, keyring, self_node=SH)
    assert (report.records, report.envelopes, report.receipts) == (n, n, 0)
    assert report.last_seq == n

    with engine.connect() as conn:
        head = conn.execute(select(HEAD.c.id, HEAD.c.seq, HEAD.c.record_hash)).all()
    assert len(head) == 1
    assert (head[0].id, head[0].seq, bytes(head[0].record_hash)) == (1, n, report.last_hash)
    assert report.last_hash == rows[-1][2] == mlog.record_hash(rows[-1][1])

    records = parsed_log(engine)
    assert records[0].prev_hash == mlog.GENESIS
    for prev, rec in zip(rows, records[1:], strict=False):
        assert rec.prev_hash == prev[2]
    assert [r.data for r in records] == envs
    assert records[3].recorded_at.ToDatetime(tzinfo=now.tzinfo) == now + timedelta(seconds=3)


def test_append_log_rolled_back_with_its_transaction(engine: Engine, now: datetime) -> None:
    with pytest.raises(ValidationError), transaction(engine) as s:
        enqueue(s, now, 3)
        raise ValidationError("abort")
    assert count(engine, LOG) == 0
    assert count(engine, OUTBOX) == 0
    with transaction(engine) as s:
        enqueue(s, now, 1)
    assert [seq for seq, _, _ in log_rows(engine)] == [1]


# --- inbox_accept ------------------------------------------------------------------------------


@pytest.fixture
def received(js: Signer, trusted_manifest: TrustedManifest, now: datetime) -> Opened:
    """A ping from Jiangsu, verified by Shanghai."""
    return open_at(ping(js, JS, SH, now), trusted_manifest, self_node=SH, peer=JS, at=now)


def test_inbox_accept_once(
    engine: Engine,
    received: Opened,
    sh: Signer,
    js: Signer,
    keyring: mlog.Keyring,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    with transaction(engine) as s:
        receipt = inbox_accept(s, received, signer=sh, self_node=SH, now=now)
    vr = verify_receipt(
        receipt, received.envelope_bytes, trusted_manifest, expected_receiver=SH, at=now
    )
    assert vr.body.message_id == received.message_id
    assert vr.received_at == now

    with engine.connect() as conn:
        row = conn.execute(select(INBOX)).one()
    assert row.message_id == received.message_id
    assert row.sender_node == JS
    assert row.kind == "cccfed.v1.Ping"
    assert bytes(row.envelope) == received.envelope_bytes
    assert bytes(row.receipt) == receipt
    assert row.received_at == now

    recs = parsed_log(engine)
    assert [(r.direction, r.type, r.data) for r in recs] == [
        (mlog.RECEIVED, mlog.ENVELOPE, received.envelope_bytes),
        (mlog.SENT, mlog.RECEIPT, receipt),
    ]
    assert {r.message_id for r in recs} == {received.message_id}
    assert {r.peer_node for r in recs} == {JS}
    report = mlog.verify_chain(log_rows(engine), keyring, self_node=SH)
    assert (report.envelopes, report.receipts) == (1, 1)

    # Redelivery of the same bytes, even later: the original receipt, nothing added.
    with transaction(engine) as s:
        again = inbox_accept(s, received, signer=sh, self_node=SH, now=now + timedelta(hours=1))
    assert again == receipt
    assert (count(engine, INBOX), count(engine, LOG)) == (1, 2)

    # Same message id, other bytes: refused, nothing added.
    other = open_at(
        ping(js, JS, SH, now, "something else", message_id=received.message_id),
        trusted_manifest,
        self_node=SH,
        peer=JS,
        at=now,
    )
    assert other.message_id == received.message_id
    assert other.envelope_bytes != received.envelope_bytes
    with pytest.raises(DuplicateConflict) as ei, transaction(engine) as s:
        inbox_accept(s, other, signer=sh, self_node=SH, now=now)
    assert ei.value.reason == "DUPLICATE_CONFLICT"
    assert (count(engine, INBOX), count(engine, LOG)) == (1, 2)
    with engine.connect() as conn:
        assert bytes(conn.execute(select(INBOX.c.envelope)).scalar_one()) == received.envelope_bytes


def test_inbox_accept_batch_signs_the_transactions_receipts_once_before_commit(
    engine: Engine,
    sh: Signer,
    js: Signer,
    keyring: mlog.Keyring,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    """``batch=True`` (PROTOCOL.md §7.5): the receipts of one transaction share one signature,
    are written with their inbox rows just before the commit, and verify alone, on both
    backends; a message accepted earlier in the same transaction is answered like a redelivery."""
    got = [
        open_at(ping(js, JS, SH, now), trusted_manifest, self_node=SH, peer=JS, at=now)
        for _ in range(3)
    ]
    with transaction(engine) as s:
        pending = [inbox_accept(s, o, signer=sh, self_node=SH, now=now, batch=True) for o in got]
        assert all(isinstance(p, PendingReceipt) and p.receipt == b"" for p in pending)
        assert inbox_accept(s, got[1], signer=sh, self_node=SH, now=now, batch=True) is pending[1]
        conflict = open_at(
            ping(js, JS, SH, now, "other bytes", message_id=got[0].message_id),
            trusted_manifest,
            self_node=SH,
            peer=JS,
            at=now,
        )
        with pytest.raises(DuplicateConflict):
            inbox_accept(s, conflict, signer=sh, self_node=SH, now=now, batch=True)
    receipts = [p.receipt for p in pending if isinstance(p, PendingReceipt)]
    assert len({envelope_pb2.Receipt.FromString(r).signature for r in receipts}) == 1
    for o, r in zip(got, receipts, strict=True):
        verify_receipt(r, o.envelope_bytes, trusted_manifest, expected_receiver=SH, at=now)
    with engine.connect() as conn:
        stored = {
            str(m): bytes(r) for m, r in conn.execute(select(INBOX.c.message_id, INBOX.c.receipt))
        }
    assert stored == {o.message_id: r for o, r in zip(got, receipts, strict=True)}
    recs = parsed_log(engine)
    assert [(r.direction, r.type) for r in recs] == [(mlog.RECEIVED, mlog.ENVELOPE)] * 3 + [
        (mlog.SENT, mlog.RECEIPT)
    ] * 3
    assert [r.data for r in recs[3:]] == receipts
    report = mlog.verify_chain(log_rows(engine), keyring, self_node=SH)
    assert (report.envelopes, report.receipts) == (3, 3)
    # Later, a redelivery gets the stored batch receipt; a lone batch job gets a single one.
    new = open_at(ping(js, JS, SH, now), trusted_manifest, self_node=SH, peer=JS, at=now)
    with transaction(engine) as s:
        assert inbox_accept(s, got[2], signer=sh, self_node=SH, now=now, batch=True) == receipts[2]
        lone = inbox_accept(s, new, signer=sh, self_node=SH, now=now, batch=True)
    assert isinstance(lone, PendingReceipt)
    assert not envelope_pb2.Receipt.FromString(lone.receipt).HasField("batch")
    verify_receipt(lone.receipt, new.envelope_bytes, trusted_manifest, expected_receiver=SH, at=now)


def test_a_commit_with_unsigned_batch_receipts_is_refused(
    engine: Engine, received: Opened, sh: Signer, now: datetime
) -> None:
    with pytest.raises(StoreError, match="flush_log"), engine.begin() as s:
        inbox_accept(s, received, signer=sh, self_node=SH, now=now, batch=True)
    assert (count(engine, INBOX), count(engine, LOG)) == (0, 0)


def test_inbox_apply_runs_in_the_same_transaction(
    engine: Engine, other_engine: Engine, received: Opened, sh: Signer, now: datetime
) -> None:
    calls: list[tuple[Connection, str, datetime]] = []

    def apply_fails(s: Connection, opened: Opened, at: datetime) -> None:
        enqueue(s, at, 1)  # the domain change queues a reply...
        raise ValidationError("the domain refuses", reason="TEST_APPLY")

    with pytest.raises(ValidationError, match="domain refuses"), transaction(engine) as s:
        inbox_accept(s, received, signer=sh, self_node=SH, now=now, apply=apply_fails)
    # ...which vanished with the refused message: nothing at all was stored.
    assert [count(engine, t) for t in (INBOX, OUTBOX, LOG)] == [0, 0, 0]

    def apply_ok(s: Connection, opened: Opened, at: datetime) -> None:
        calls.append((s, opened.message_id, at))
        enqueue(s, at, 1)
        # Not committed yet: another connection sees nothing of this transaction.
        assert peek_count(other_engine, "outbox") == 0

    with transaction(engine) as s:
        inbox_accept(s, received, signer=sh, self_node=SH, now=now, apply=apply_ok)
        session = s
    assert calls == [(session, received.message_id, now)]
    assert [count(engine, t) for t in (INBOX, OUTBOX, LOG)] == [1, 1, 3]

    # A redelivery does not apply again.
    with transaction(engine) as s:
        inbox_accept(s, received, signer=sh, self_node=SH, now=now, apply=apply_ok)
    assert len(calls) == 1
    assert [count(engine, t) for t in (INBOX, OUTBOX, LOG)] == [1, 1, 3]


def test_inbox_apply_failure_through_the_writer(
    writer: Writer,
    engine: Engine,
    received: Opened,
    sh: Signer,
    now: datetime,
    js: Signer,
    trusted_manifest: TrustedManifest,
) -> None:
    """In a batch, a refused message leaves no trace while its neighbours commit."""

    def refuse(s: Connection, opened: Opened, at: datetime) -> None:
        enqueue(s, at, 1)
        raise ValidationError("no", reason="TEST_APPLY")

    other = open_at(ping(js, JS, SH, now), trusted_manifest, self_node=SH, peer=JS, at=now)
    f1 = writer.submit(
        lambda s: inbox_accept(s, received, signer=sh, self_node=SH, now=now, apply=refuse)
    )
    f2 = writer.submit(lambda s: inbox_accept(s, other, signer=sh, self_node=SH, now=now))
    assert isinstance(f1.exception(10), ValidationError)
    assert f2.result(10)
    with engine.connect() as conn:
        assert list(conn.execute(select(INBOX.c.message_id)).scalars()) == [other.message_id]
    assert count(engine, OUTBOX) == 0
    assert [seq for seq, _, _ in log_rows(engine)] == [1, 2]


# --- outbox ------------------------------------------------------------------------------------


def test_outbox_enqueue_and_claim(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        ids = enqueue(s, now, 3)
    for row_id in ids:
        row = outbox_row(engine, row_id)
        assert (row.state, row.attempts, row.next_attempt_at) == (QUEUED, 0, now)
        assert row.lease_until is None and row.claimed_by is None
    recs = parsed_log(engine)
    assert [(r.direction, r.type, r.peer_node) for r in recs] == [
        (mlog.SENT, mlog.ENVELOPE, JS)
    ] * 3

    with transaction(engine) as s:
        got = outbox_claim(s, replica="a", now=now, limit=2, lease=LEASE)
    assert [c.id for c in got] == ids[:2]  # oldest first, limited
    assert [c.attempts for c in got] == [1, 1]
    assert got[0].envelope == bytes(outbox_row(engine, ids[0]).envelope)
    assert (got[0].recipient_node, got[0].service, got[0].kind) == (
        JS,
        "Federation",
        "cccfed.v1.Ping",
    )
    for c in got:
        row = outbox_row(engine, c.id)
        assert (row.state, row.claimed_by, row.attempts) == (SENDING, "a", 1)
        assert row.lease_until == now + LEASE

    with transaction(engine) as s:
        rest = outbox_claim(s, replica="b", now=now, limit=10, lease=LEASE)
    assert [c.id for c in rest] == ids[2:]


def test_outbox_not_due_before_next_attempt(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        enqueue(s, now, 1)
    with transaction(engine) as s:
        assert (
            outbox_claim(s, replica="a", now=now - timedelta(seconds=1), limit=5, lease=LEASE) == []
        )


def test_outbox_lease(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        (row_id,) = enqueue(s, now, 1)
    with transaction(engine) as s:
        assert [c.id for c in outbox_claim(s, replica="a", now=now, limit=5, lease=LEASE)] == [
            row_id
        ]
    # Under its lease, nobody (not even the same replica) claims it again.
    for replica, at in (("b", now), ("a", now + timedelta(seconds=30)), ("b", now + LEASE)):
        with transaction(engine) as s:
            assert outbox_claim(s, replica=replica, now=at, limit=5, lease=LEASE) == []
    # After the lease expired (the replica died mid-send), another replica takes it over.
    later = now + LEASE + timedelta(seconds=1)
    with transaction(engine) as s:
        again = outbox_claim(s, replica="b", now=later, limit=5, lease=LEASE)
    assert [(c.id, c.attempts) for c in again] == [(row_id, 2)]
    row = outbox_row(engine, row_id)
    assert (row.state, row.claimed_by, row.attempts, row.lease_until) == (
        SENDING,
        "b",
        2,
        later + LEASE,
    )


def _claim_one(engine: Engine, now: datetime) -> int:
    with transaction(engine) as s:
        got = outbox_claim(s, replica="a", now=now, limit=1, lease=LEASE)
    assert len(got) == 1
    return got[0].id


def test_outbox_retry_later(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        (row_id,) = enqueue(s, now, 1)
    _claim_one(engine, now)
    next_at = now + timedelta(minutes=5)
    with transaction(engine) as s:
        outbox_retry_later(
            s, row_id=row_id, error="connection refused " + "x" * 3000, next_at=next_at
        )
    row = outbox_row(engine, row_id)
    assert (row.state, row.next_attempt_at, row.lease_until) == (RETRY, next_at, None)
    assert row.last_error.startswith("connection refused") and len(row.last_error) == 2000

    with transaction(engine) as s:
        assert (
            outbox_claim(s, replica="a", now=next_at - timedelta(seconds=1), limit=5, lease=LEASE)
            == []
        )
    with transaction(engine) as s:
        got = outbox_claim(s, replica="a", now=next_at, limit=5, lease=LEASE)
    assert [(c.id, c.attempts) for c in got] == [(row_id, 2)]


def test_outbox_failed_is_never_claimed(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        (row_id,) = enqueue(s, now, 1)
    _claim_one(engine, now)
    with transaction(engine) as s:
        outbox_failed(s, row_id=row_id, reason="WRONG_RECIPIENT", error="refused by the peer")
    row = outbox_row(engine, row_id)
    assert (row.state, row.fail_reason, row.last_error, row.lease_until) == (
        FAILED,
        "WRONG_RECIPIENT",
        "refused by the peer",
        None,
    )
    with transaction(engine) as s:
        assert (
            outbox_claim(s, replica="a", now=now + timedelta(days=365), limit=5, lease=LEASE) == []
        )


def test_outbox_reports_only_apply_to_sending_rows(engine: Engine, now: datetime) -> None:
    """A late failure report must not move a queued or delivered message."""
    with transaction(engine) as s:
        queued_id, done_id = enqueue(s, now, 2)
    with transaction(engine) as s:
        outbox_claim(s, replica="a", now=now, limit=5, lease=LEASE)
        outbox_delivered(
            s, row_id=done_id, message_id="m", recipient=JS, receipt=b"r", received_at=now, now=now
        )
        outbox_release_own(s, replica="a", now=now)  # queued_id is due again (retry)
    with transaction(engine) as s:
        outbox_retry_later(s, row_id=done_id, error="late", next_at=now)
        outbox_failed(s, row_id=done_id, reason="LATE", error="late")
        outbox_failed(s, row_id=queued_id, reason="LATE", error="late")
    assert outbox_row(engine, done_id).state == DELIVERED
    assert outbox_row(engine, queued_id).state == RETRY


def test_outbox_delivered_records_the_receipt_once(
    engine: Engine,
    sh: Signer,
    js: Signer,
    trusted_manifest: TrustedManifest,
    keyring: mlog.Keyring,
    now: datetime,
) -> None:
    env = ping(sh, SH, JS, now)
    opened_by_js = open_at(env, trusted_manifest, self_node=JS, peer=SH, at=now)
    received_at = now + timedelta(seconds=2)
    receipt = make_receipt(js, opened_by_js, receiver_node=JS, received_at=received_at)
    with transaction(engine) as s:
        row_id = outbox_enqueue(
            s,
            env,
            message_id=opened_by_js.message_id,
            recipient_node=JS,
            service="Federation",
            kind=opened_by_js.kind,
            now=now,
        )
    _claim_one(engine, now)
    done_at = now + timedelta(seconds=3)
    args: dict[str, Any] = dict(
        row_id=row_id,
        message_id=opened_by_js.message_id,
        recipient=JS,
        receipt=receipt,
        received_at=received_at,
        now=done_at,
    )
    with transaction(engine) as s:
        assert outbox_delivered(s, **args) is True
    with transaction(engine) as s:
        assert outbox_delivered(s, **args) is False

    row = outbox_row(engine, row_id)
    assert (row.state, bytes(row.receipt), row.received_at, row.delivered_at) == (
        DELIVERED,
        receipt,
        received_at,
        done_at,
    )
    assert row.lease_until is None
    recs = parsed_log(engine)
    assert [(r.direction, r.type) for r in recs] == [
        (mlog.SENT, mlog.ENVELOPE),
        (mlog.RECEIVED, mlog.RECEIPT),
    ]
    assert recs[1].data == receipt
    report = mlog.verify_chain(log_rows(engine), keyring, self_node=SH)
    assert (report.envelopes, report.receipts) == (1, 1)
    with transaction(engine) as s:
        assert outbox_claim(s, replica="a", now=now + timedelta(days=1), limit=5, lease=LEASE) == []


def test_outbox_manual_retry(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        sending_id, retry_id, failed_id, delivered_id, queued_id = enqueue(s, now, 5)
    with transaction(engine) as s:
        outbox_claim(s, replica="a", now=now, limit=4, lease=LEASE)
        outbox_retry_later(s, row_id=retry_id, error="e", next_at=now + timedelta(hours=1))
        outbox_failed(s, row_id=failed_id, reason="REFUSED", error="e")
        outbox_delivered(
            s,
            row_id=delivered_id,
            message_id="m",
            recipient=JS,
            receipt=b"r",
            received_at=now,
            now=now,
        )
    states = {i: outbox_row(engine, i).state for i in (sending_id, retry_id, queued_id)}
    assert states == {queued_id: QUEUED, sending_id: SENDING, retry_id: RETRY}

    later = now + timedelta(minutes=10)
    with transaction(engine) as s:
        outbox_manual_retry(s, row_id=failed_id, now=later)
    row = outbox_row(engine, failed_id)
    assert (row.state, row.next_attempt_at, row.fail_reason, row.attempts) == (
        QUEUED,
        later,
        None,
        0,
    )

    for row_id in (queued_id, sending_id, retry_id, delivered_id):
        before = outbox_row(engine, row_id)
        with pytest.raises(OutboxError) as ei, transaction(engine) as s:
            outbox_manual_retry(s, row_id=row_id, now=later)
        assert ei.value.reason == "INVALID_STATE"
        assert outbox_row(engine, row_id) == before
    with pytest.raises(OutboxError) as ei, transaction(engine) as s:
        outbox_manual_retry(s, row_id=10_000, now=later)
    assert ei.value.reason == "NOT_FOUND"


def test_outbox_release_own(engine: Engine, now: datetime) -> None:
    with transaction(engine) as s:
        mine, theirs, waiting = enqueue(s, now, 3)
    with transaction(engine) as s:
        assert [c.id for c in outbox_claim(s, replica="r1", now=now, limit=1, lease=LEASE)] == [
            mine
        ]
        assert [c.id for c in outbox_claim(s, replica="r2", now=now, limit=1, lease=LEASE)] == [
            theirs
        ]
    restart = now + timedelta(seconds=5)
    with transaction(engine) as s:
        assert outbox_release_own(s, replica="r1", now=restart) == 1
    row = outbox_row(engine, mine)
    assert (row.state, row.next_attempt_at, row.lease_until) == (RETRY, restart, None)
    other = outbox_row(engine, theirs)
    assert (other.state, other.claimed_by, other.lease_until) == (SENDING, "r2", now + LEASE)
    assert outbox_row(engine, waiting).state == QUEUED
    with transaction(engine) as s:
        assert outbox_release_own(s, replica="r1", now=restart) == 0
    # Due again at once for any replica, and counted as a new attempt.
    with transaction(engine) as s:
        got = outbox_claim(s, replica="r3", now=restart, limit=5, lease=LEASE)
    assert [(c.id, c.attempts) for c in got] == [(mine, 2), (waiting, 1)]
