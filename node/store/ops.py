"""Store operations that run inside a write transaction (a :class:`~node.store.db.Writer` job).

Each function takes the open :class:`Connection` and does its reads and writes in it, so that a
domain change, the envelope it sends and the log records all commit together or not at all.
SQLAlchemy Core statements keep the hot path cheap.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, overload

from sqlalchemy import and_, bindparam, exists, insert, or_, select, update
from sqlalchemy.engine import Connection

from federation import message_log as mlog
from federation.crypto import Signer, sha256
from federation.envelope import Opened, receipt_body, sign_receipts
from federation.errors import FederationError, VerificationError
from node.store.models import Inbox, LogHead, ManifestHistory, MessageLog, Outbox, UTCDateTime

INBOX = Inbox.__table__  # type: ignore[attr-defined]
OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
LOG = MessageLog.__table__  # type: ignore[attr-defined]
HEAD = LogHead.__table__  # type: ignore[attr-defined]
_UTC_DATETIME = UTCDateTime()
MANIFESTS = ManifestHistory.__table__  # type: ignore[attr-defined]

# Hot-path statements (every message runs them) go straight to the DB-API cursor of the
# transaction's connection: SQLAlchemy Core costs about 50-75 us a statement here, the driver
# 4-14 us (bench/README.md). Each is written once with ``:name`` parameters and translated for
# psycopg; values are bound as the column types would bind them (see :func:`_ts`). Everything
# else, and every read outside the hot path, uses SQLAlchemy Core.


class _Raw:
    """One hot statement, in the paramstyle of each supported driver."""

    __slots__ = ("postgresql", "sqlite")

    def __init__(self, sql: str, *, pg_suffix: str = "") -> None:
        self.sqlite = sql
        self.postgresql = re.sub(r":(\w+)", r"%(\1)s", sql) + pg_suffix


def _pg(s: Connection) -> bool:
    return bool(s.dialect.name == "postgresql")


def _run(s: Connection, stmt: _Raw, params: dict[str, Any]) -> Any:
    """Execute on the driver's cursor inside ``s``'s transaction; returns the cursor."""
    cur = s.connection.cursor()
    cur.execute(stmt.postgresql if _pg(s) else stmt.sqlite, params)
    return cur


def _ts(s: Connection, value: datetime | None) -> Any:
    """Bind an instant as the :class:`~node.store.models.UTCDateTime` column does (its own
    checks and UTC normalisation), then as SQLAlchemy's SQLite dialect stores it: naive UTC
    text with microseconds. PostgreSQL takes the aware datetime."""
    bound = _UTC_DATETIME.process_bind_param(value, s.dialect)
    if bound is None or _pg(s):
        return bound
    return bound.isoformat(" ", "microseconds")


_HEAD_FOR_UPDATE = _Raw(
    "SELECT seq, record_hash FROM log_head WHERE id = 1", pg_suffix=" FOR UPDATE"
)
_HEAD_MOVE = _Raw("UPDATE log_head SET seq = :h_seq, record_hash = :h_hash WHERE id = 1")
_LOG_INSERT = _Raw(
    "INSERT INTO message_log (seq, record, record_hash, message_id, recorded_at) "
    "VALUES (:seq, :record, :record_hash, :message_id, :recorded_at)"
)
_INBOX_FIND = _Raw(
    "SELECT envelope_sha256, receipt, sender_node FROM inbox WHERE message_id = :mid"
)
_INBOX_INSERT = _Raw(
    "INSERT INTO inbox (message_id, sender_node, kind, envelope_sha256, envelope, receipt, "
    "received_at) VALUES (:message_id, :sender_node, :kind, :envelope_sha256, :envelope, "
    ":receipt, :received_at)"
)
_OUTBOX_INSERT = _Raw(
    "INSERT INTO outbox (message_id, recipient_node, service, kind, conversation, envelope, "
    "state, attempts, created_at, next_attempt_at, lease_until, claimed_by) VALUES "
    "(:message_id, :recipient_node, :service, :kind, :conversation, :envelope, :state, "
    ":attempts, :created_at, :next_attempt_at, :lease_until, :claimed_by) RETURNING id"
)
_OUTBOX_DELIVERED = _Raw(
    "UPDATE outbox SET state = 'delivered', lease_until = NULL, last_error = NULL, "
    "receipt = :receipt, received_at = :received_at, delivered_at = :delivered_at "
    "WHERE id = :rid AND state != 'delivered'"
)

QUEUED, SENDING, RETRY, DELIVERED, FAILED = "queued", "sending", "retry", "delivered", "failed"
STATES = (QUEUED, SENDING, RETRY, DELIVERED, FAILED)


class DuplicateConflict(VerificationError):
    reason = "DUPLICATE_CONFLICT"


class OutboxError(FederationError):
    reason = "OUTBOX"


@dataclass
class _LogBuffer:
    """Log records appended in one transaction, written in one statement before it commits."""

    transaction: object
    seq: int
    prev: bytes
    rows: list[dict[str, object]]


def append_log(
    s: Connection,
    *,
    direction: int,
    rtype: int,
    message_id: str,
    peer_node: str,
    data: bytes,
    at: datetime,
) -> int:
    """Append one record to the hash chain (buffered until :func:`flush_log`).

    The head row is read — and locked, on PostgreSQL, so replicas append one at a time — once
    per transaction; records are chained in memory and written together by :func:`flush_log`,
    which every committing path calls (the writer and ``transaction()``); a commit with unwritten
    records is refused (see ``node.store.db``).
    """
    buf = s.info.get("cccfed_log")
    if buf is None or buf.transaction is not s.get_transaction():
        head = _run(s, _HEAD_FOR_UPDATE, {}).fetchone()
        if head is None:
            s.execute(insert(HEAD).values(id=1, seq=0, record_hash=mlog.GENESIS))
            head_seq, head_hash = 0, mlog.GENESIS
        else:
            head_seq, head_hash = int(head[0]), bytes(head[1])
        buf = _LogBuffer(s.get_transaction(), head_seq, head_hash, [])
        s.info["cccfed_log"] = buf
    buf.seq += 1
    raw, h = mlog.make_record(
        seq=buf.seq,
        prev_hash=buf.prev,
        recorded_at=at,
        direction=direction,
        rtype=rtype,
        message_id=message_id,
        peer_node=peer_node,
        data=data,
    )
    buf.rows.append(
        {
            "seq": buf.seq,
            "record": raw,
            "record_hash": h,
            "message_id": message_id,
            "recorded_at": _ts(s, at),
        }
    )
    buf.prev = h
    return buf.seq


def flush_log(s: Connection) -> None:
    """Sign and store the transaction's batch receipts (:func:`inbox_accept` with ``batch``),
    then write the buffered log records and move the head, inside the still-open transaction."""
    _flush_receipts(s)
    buf = s.info.pop("cccfed_log", None)
    if buf is None or not buf.rows or buf.transaction is not s.get_transaction():
        return
    cur = s.connection.cursor()
    cur.executemany(_LOG_INSERT.postgresql if _pg(s) else _LOG_INSERT.sqlite, buf.rows)
    _run(s, _HEAD_MOVE, {"h_seq": buf.seq, "h_hash": buf.prev})


def pending_log(s: Connection) -> bool:
    """Whether the open transaction holds log records or receipts not yet written."""
    tx = s.get_transaction()
    buf = s.info.get("cccfed_log")
    receipts = s.info.get("cccfed_receipts")
    return bool(
        (buf is not None and buf.rows and buf.transaction is tx)
        or (receipts is not None and receipts.items and receipts.transaction is tx)
    )


@dataclass(eq=False)
class PendingReceipt:
    """A received message whose receipt is signed just before its transaction commits,
    together with the others of that transaction (one signature, docs/PROTOCOL.md §7.5).

    :func:`inbox_accept` returns it; ``receipt`` holds the signed bytes once the transaction
    is flushed, that is before its commit, so a caller told of the commit can read them.
    """

    opened: Opened
    digest: bytes
    at: datetime
    receipt: bytes = b""


@dataclass
class _ReceiptBuffer:
    transaction: object
    signer: Signer
    receiver: str
    items: list[PendingReceipt]
    by_id: dict[str, PendingReceipt]


def _flush_receipts(s: Connection) -> None:
    buf = s.info.pop("cccfed_receipts", None)
    if buf is not None and buf.items and buf.transaction is s.get_transaction():
        _store_receipts(s, buf.signer, buf.receiver, buf.items)


def _store_receipts(
    s: Connection, signer: Signer, receiver: str, items: list[PendingReceipt]
) -> None:
    """Sign the receipts of ``items`` (one alone, several under one signature), then write
    their inbox rows and SENT RECEIPT log records."""
    bodies = [
        receipt_body(
            signer, p.opened, receiver_node=receiver, received_at=p.at, envelope_sha256=p.digest
        )
        for p in items
    ]
    rows = []
    for p, receipt in zip(items, sign_receipts(signer, receiver, bodies), strict=True):
        p.receipt = receipt
        rows.append(
            {
                "message_id": p.opened.message_id,
                "sender_node": p.opened.header.sender_node,
                "kind": p.opened.kind,
                "envelope_sha256": p.digest,
                "envelope": p.opened.envelope_bytes,
                "receipt": receipt,
                "received_at": _ts(s, p.at),
            }
        )
    cur = s.connection.cursor()
    cur.executemany(_INBOX_INSERT.postgresql if _pg(s) else _INBOX_INSERT.sqlite, rows)
    for p in items:
        append_log(
            s,
            direction=mlog.SENT,
            rtype=mlog.RECEIPT,
            message_id=p.opened.message_id,
            peer_node=p.opened.header.sender_node,
            data=p.receipt,
            at=p.at,
        )


# --- inbox -------------------------------------------------------------------------------------

Apply = Callable[[Connection, Opened, datetime], None]


@overload
def inbox_accept(
    s: Connection,
    opened: Opened,
    *,
    signer: Signer,
    self_node: str,
    now: datetime,
    apply: Apply | None = None,
    batch: Literal[False] = False,
) -> bytes: ...


@overload
def inbox_accept(
    s: Connection,
    opened: Opened,
    *,
    signer: Signer,
    self_node: str,
    now: datetime,
    apply: Apply | None = None,
    batch: bool,
) -> bytes | PendingReceipt: ...


def inbox_accept(
    s: Connection,
    opened: Opened,
    *,
    signer: Signer,
    self_node: str,
    now: datetime,
    apply: Apply | None = None,
    batch: bool = False,
) -> bytes | PendingReceipt:
    """Apply a verified envelope once and return its signed receipt.

    A redelivery with the same bytes returns the original receipt and changes nothing; the same
    message id with other bytes is refused (DUPLICATE_CONFLICT).

    With ``batch``, the receipt is signed by :func:`flush_log` just before the commit, with the
    other batch receipts of the transaction under one signature (docs/PROTOCOL.md §7.5), and
    the inbox row is written then too: this returns a :class:`PendingReceipt`. Only messages
    accepted here get a leaf: a refused one never appears in a signed batch.
    """
    digest = sha256(opened.envelope_bytes)
    sender = opened.header.sender_node
    row = _run(s, _INBOX_FIND, {"mid": opened.message_id}).fetchone()
    if row is not None:
        original = _exact_receipt(row, digest, sender)
        if original is not None:
            return original
        raise _conflict(opened.message_id)
    buf: _ReceiptBuffer | None = None
    if batch:
        buf = s.info.get("cccfed_receipts")
        if buf is None or buf.transaction is not s.get_transaction():
            buf = _ReceiptBuffer(s.get_transaction(), signer, self_node, [], {})
            s.info["cccfed_receipts"] = buf
        earlier = buf.by_id.get(opened.message_id)  # accepted in this transaction, not stored yet
        if earlier is not None:
            if earlier.digest == digest and earlier.opened.header.sender_node == sender:
                return earlier
            raise _conflict(opened.message_id)
    if apply is not None:
        apply(s, opened, now)
    pending = PendingReceipt(opened, digest, now)
    append_log(
        s,
        direction=mlog.RECEIVED,
        rtype=mlog.ENVELOPE,
        message_id=opened.message_id,
        peer_node=sender,
        data=opened.envelope_bytes,
        at=now,
    )
    if buf is None:  # signed alone, now
        _store_receipts(s, signer, self_node, [pending])
        return pending.receipt
    buf.items.append(pending)
    buf.by_id[opened.message_id] = pending
    return pending


def _conflict(message_id: str) -> DuplicateConflict:
    return DuplicateConflict(f"message {message_id} was already received with different content")


def inbox_receipt_for_exact(
    conn: Connection, *, message_id: str, envelope: bytes, sender_node: str
) -> bytes | None:
    """The receipt of exactly these bytes from this sender, if they were accepted before.

    Lets a redelivery be answered with its original receipt even when re-verifying it now
    would fail for reasons of time alone (too old, key expired or revoked since).
    """
    row = _run(conn, _INBOX_FIND, {"mid": message_id}).fetchone()
    return None if row is None else _exact_receipt(row, sha256(envelope), sender_node)


def _exact_receipt(row: Any, digest: bytes, sender_node: str) -> bytes | None:
    """The stored receipt of an ``_INBOX_FIND`` row, if it was for these bytes from this sender."""
    if bytes(row[0]) == digest and row[2] == sender_node:
        return bytes(row[1])
    return None


# --- outbox ------------------------------------------------------------------------------------


def outbox_enqueue(
    s: Connection,
    envelope: bytes,
    *,
    message_id: str,
    recipient_node: str,
    service: str,
    kind: str,
    now: datetime,
    claim_for: str | None = None,
    lease: timedelta | None = None,
    conversation: str = "",
) -> int:
    """Queue an envelope for delivery (call in the same transaction as the domain change).

    With ``claim_for`` the row is committed already claimed by that replica (``sending`` under a
    lease), saving the separate claim transaction when the caller hands it straight to its
    delivery worker; a crash before delivery releases it like any other claimed row.
    """
    claimed = claim_for is not None and lease is not None
    if claimed and conversation:
        # An earlier message of this conversation still on its way goes first: queue behind it.
        busy = s.execute(
            _CONVERSATION_BUSY, {"recipient": recipient_node, "conversation": conversation}
        ).first()
        claimed = busy is None
    at = _ts(s, now)
    row_id = _run(
        s,
        _OUTBOX_INSERT,
        {
            "message_id": message_id,
            "recipient_node": recipient_node,
            "service": service,
            "kind": kind,
            "envelope": envelope,
            "state": SENDING if claimed else QUEUED,
            "attempts": 1 if claimed else 0,
            "created_at": at,
            "next_attempt_at": at,
            "conversation": conversation,
            "claimed_by": claim_for if claimed else None,
            "lease_until": _ts(s, now + lease) if claimed and lease is not None else None,
        },
    ).fetchone()[0]
    s.info["cccfed_enqueued_claimed"] = claimed
    append_log(
        s,
        direction=mlog.SENT,
        rtype=mlog.ENVELOPE,
        message_id=message_id,
        peer_node=recipient_node,
        data=envelope,
        at=now,
    )
    return int(row_id)


@dataclass(frozen=True)
class Claimed:
    id: int
    message_id: str
    recipient_node: str
    service: str
    kind: str
    envelope: bytes
    attempts: int
    conversation: str = ""


_CONVERSATION_BUSY = (
    select(OUTBOX.c.id)
    .where(
        OUTBOX.c.recipient_node == bindparam("recipient"),
        OUTBOX.c.conversation == bindparam("conversation"),
        OUTBOX.c.state.in_((QUEUED, SENDING, RETRY)),
    )
    .limit(1)
)


def outbox_claim(
    s: Connection, *, replica: str, now: datetime, limit: int, lease: timedelta
) -> list[Claimed]:
    """Claim due messages for this replica (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).

    Due: queued, or waiting to retry with its next attempt reached, or sending under a lease that
    expired (its replica died mid-send; the receiver's inbox makes the resend harmless).
    """
    due = or_(
        and_(OUTBOX.c.state.in_((QUEUED, RETRY)), OUTBOX.c.next_attempt_at <= now),
        and_(OUTBOX.c.state == SENDING, OUTBOX.c.lease_until < now),
    )
    # In order within a conversation: not while an earlier message of it is still on its way.
    earlier = OUTBOX.alias("earlier")
    in_order = or_(
        OUTBOX.c.conversation == "",
        ~exists().where(
            earlier.c.recipient_node == OUTBOX.c.recipient_node,
            earlier.c.conversation == OUTBOX.c.conversation,
            earlier.c.id < OUTBOX.c.id,
            earlier.c.state.in_((QUEUED, SENDING, RETRY)),
        ),
    )
    q = select(OUTBOX).where(due, in_order).order_by(OUTBOX.c.id).limit(limit)
    if s.dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    rows = s.execute(q).all()
    if not rows:
        return []
    ids = [r.id for r in rows]
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id.in_(ids))
        .values(
            state=SENDING,
            claimed_by=replica,
            lease_until=now + lease,
            attempts=OUTBOX.c.attempts + 1,
        )
    )
    return [
        Claimed(
            r.id,
            r.message_id,
            r.recipient_node,
            r.service,
            r.kind,
            bytes(r.envelope),
            r.attempts + 1,
            r.conversation,
        )
        for r in rows
    ]


def outbox_unclaim(s: Connection, *, row_id: int, now: datetime) -> None:
    """Turn a row committed as claimed back into a queued one (no worker in this process)."""
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id)
        .values(state=QUEUED, attempts=0, claimed_by=None, lease_until=None, next_attempt_at=now)
    )


def outbox_release_own(s: Connection, *, replica: str, now: datetime) -> int:
    """At start-up: messages this replica was sending when it stopped are due again now."""
    res = s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.state == SENDING, OUTBOX.c.claimed_by == replica)
        .values(state=RETRY, next_attempt_at=now, lease_until=None)
    )
    return int(res.rowcount or 0)


def outbox_delivered(
    s: Connection,
    *,
    row_id: int,
    message_id: str,
    recipient: str,
    receipt: bytes,
    received_at: datetime,
    now: datetime,
) -> bool:
    """Record a verified receipt once; returns False if it was already recorded."""
    res = _run(
        s,
        _OUTBOX_DELIVERED,
        {
            "rid": row_id,
            "receipt": receipt,
            "received_at": _ts(s, received_at),
            "delivered_at": _ts(s, now),
        },
    )
    if not res.rowcount:
        return False
    append_log(
        s,
        direction=mlog.RECEIVED,
        rtype=mlog.RECEIPT,
        message_id=message_id,
        peer_node=recipient,
        data=receipt,
        at=now,
    )
    return True


def outbox_retry_later(s: Connection, *, row_id: int, error: str, next_at: datetime) -> None:
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state == SENDING)
        .values(state=RETRY, last_error=error[:2000], next_attempt_at=next_at, lease_until=None)
    )


def outbox_failed(s: Connection, *, row_id: int, reason: str, error: str) -> None:
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state == SENDING)
        .values(state=FAILED, fail_reason=reason[:64], last_error=error[:2000], lease_until=None)
    )


def outbox_manual_retry(s: Connection, *, row_id: int, now: datetime) -> None:
    """Operator action after fixing the cause of a permanent failure."""
    row = s.execute(select(OUTBOX.c.state).where(OUTBOX.c.id == row_id)).first()
    if row is None:
        raise OutboxError(f"outbox message {row_id} does not exist", reason="NOT_FOUND")
    if row.state != FAILED:
        raise OutboxError(
            f"outbox message {row_id} is {row.state}; only failed messages can be retried",
            reason="INVALID_STATE",
        )
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id)
        .values(state=QUEUED, next_attempt_at=now, fail_reason=None, attempts=0)
    )


def outbox_created_at(s: Connection, message_id: str) -> datetime:
    """The signed created_at of a message this node queued (the event time both sides use)."""
    from federation.envelope import header_of

    env = s.execute(select(OUTBOX.c.envelope).where(OUTBOX.c.message_id == message_id)).one()
    return header_of(bytes(env.envelope)).created_at.ToDatetime(tzinfo=UTC)


def insert_conversation_event(
    s: Connection,
    table: Any,
    *,
    key: dict[str, str],
    side: str,
    idx: int,
    seen: int,
    kind: str,
    message_id: str,
    payload: bytes,
    created_at: datetime,
) -> None:
    """Store one event of a two-party conversation (a request, an exchange) as exact bytes."""
    s.execute(
        insert(table).values(
            **key,
            side=side,
            idx=idx,
            seen=seen,
            kind=kind,
            message_id=message_id,
            payload=payload,
            created_at=created_at,
            void=False,
        )
    )


# --- manifests ---------------------------------------------------------------------------------


def record_manifest(s: Connection, *, serial: int, signed: bytes, now: datetime) -> bool:
    if s.execute(select(MANIFESTS.c.serial).where(MANIFESTS.c.serial == serial)).first():
        return False
    s.execute(insert(MANIFESTS).values(serial=serial, signed=signed, accepted_at=now))
    return True
