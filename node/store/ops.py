"""Store operations that run inside a write transaction (a :class:`~node.store.db.Writer` job).

Each function takes the open :class:`Session` and does its reads and writes in it, so that a
domain change, the envelope it sends and the log records all commit together or not at all.
SQLAlchemy Core statements keep the hot path cheap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import and_, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from federation import message_log as mlog
from federation.crypto import Signer, sha256
from federation.envelope import Opened, make_receipt
from federation.errors import FederationError, VerificationError
from node.store.models import Inbox, LogHead, ManifestHistory, MessageLog, Outbox

INBOX = Inbox.__table__  # type: ignore[attr-defined]
OUTBOX = Outbox.__table__  # type: ignore[attr-defined]
LOG = MessageLog.__table__  # type: ignore[attr-defined]
HEAD = LogHead.__table__  # type: ignore[attr-defined]
MANIFESTS = ManifestHistory.__table__  # type: ignore[attr-defined]

QUEUED, SENDING, RETRY, DELIVERED, FAILED = "queued", "sending", "retry", "delivered", "failed"
STATES = (QUEUED, SENDING, RETRY, DELIVERED, FAILED)


class DuplicateConflict(VerificationError):
    reason = "DUPLICATE_CONFLICT"


class OutboxError(FederationError):
    reason = "OUTBOX"


def append_log(
    s: Session,
    *,
    direction: int,
    rtype: int,
    message_id: str,
    peer_node: str,
    data: bytes,
    at: datetime,
) -> int:
    """Append one record to the hash chain; the head row is the append lock across replicas."""
    head = s.execute(
        select(HEAD.c.seq, HEAD.c.record_hash).where(HEAD.c.id == 1).with_for_update()
    ).first()
    if head is None:
        s.execute(insert(HEAD).values(id=1, seq=0, record_hash=mlog.GENESIS))
        seq, prev = 0, mlog.GENESIS
    else:
        seq, prev = int(head.seq), bytes(head.record_hash)
    seq += 1
    raw, h = mlog.make_record(
        seq=seq,
        prev_hash=prev,
        recorded_at=at,
        direction=direction,
        rtype=rtype,
        message_id=message_id,
        peer_node=peer_node,
        data=data,
    )
    s.execute(
        insert(LOG).values(
            seq=seq, record=raw, record_hash=h, message_id=message_id, recorded_at=at
        )
    )
    s.execute(update(HEAD).where(HEAD.c.id == 1).values(seq=seq, record_hash=h))
    return seq


# --- inbox -------------------------------------------------------------------------------------

Apply = Callable[[Session, Opened, datetime], None]


def inbox_accept(
    s: Session,
    opened: Opened,
    *,
    signer: Signer,
    self_node: str,
    now: datetime,
    apply: Apply | None = None,
) -> bytes:
    """Apply a verified envelope once and return its signed receipt.

    A redelivery with the same bytes returns the original receipt and changes nothing; the same
    message id with other bytes is refused (DUPLICATE_CONFLICT).
    """
    digest = sha256(opened.envelope_bytes)
    row = s.execute(
        select(INBOX.c.envelope_sha256, INBOX.c.receipt, INBOX.c.sender_node).where(
            INBOX.c.message_id == opened.message_id
        )
    ).first()
    if row is not None:
        if bytes(row.envelope_sha256) == digest and row.sender_node == opened.header.sender_node:
            return bytes(row.receipt)
        raise DuplicateConflict(
            f"message {opened.message_id} was already received with different content"
        )
    if apply is not None:
        apply(s, opened, now)
    receipt = make_receipt(signer, opened, receiver_node=self_node, received_at=now)
    s.execute(
        insert(INBOX).values(
            message_id=opened.message_id,
            sender_node=opened.header.sender_node,
            kind=opened.kind,
            envelope_sha256=digest,
            envelope=opened.envelope_bytes,
            receipt=receipt,
            received_at=now,
        )
    )
    peer = opened.header.sender_node
    append_log(
        s,
        direction=mlog.RECEIVED,
        rtype=mlog.ENVELOPE,
        message_id=opened.message_id,
        peer_node=peer,
        data=opened.envelope_bytes,
        at=now,
    )
    append_log(
        s,
        direction=mlog.SENT,
        rtype=mlog.RECEIPT,
        message_id=opened.message_id,
        peer_node=peer,
        data=receipt,
        at=now,
    )
    return receipt


def inbox_receipt_for_exact(
    conn: Connection, *, message_id: str, envelope: bytes, sender_node: str
) -> bytes | None:
    """The receipt of exactly these bytes from this sender, if they were accepted before.

    Lets a redelivery be answered with its original receipt even when re-verifying it now
    would fail for reasons of time alone (too old, key expired or revoked since).
    """
    row = conn.execute(
        select(INBOX.c.envelope_sha256, INBOX.c.receipt, INBOX.c.sender_node).where(
            INBOX.c.message_id == message_id
        )
    ).first()
    if (
        row is None
        or row.sender_node != sender_node
        or bytes(row.envelope_sha256) != sha256(envelope)
    ):
        return None
    return bytes(row.receipt)


# --- outbox ------------------------------------------------------------------------------------


def outbox_enqueue(
    s: Session,
    envelope: bytes,
    *,
    message_id: str,
    recipient_node: str,
    service: str,
    kind: str,
    now: datetime,
) -> int:
    """Queue an envelope for delivery (call in the same transaction as the domain change)."""
    row_id = s.execute(
        insert(OUTBOX)
        .values(
            message_id=message_id,
            recipient_node=recipient_node,
            service=service,
            kind=kind,
            envelope=envelope,
            state=QUEUED,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
        .returning(OUTBOX.c.id)
    ).scalar_one()
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


def outbox_claim(
    s: Session, *, replica: str, now: datetime, limit: int, lease: timedelta
) -> list[Claimed]:
    """Claim due messages for this replica (``FOR UPDATE SKIP LOCKED`` on PostgreSQL).

    Due: queued, or waiting to retry with its next attempt reached, or sending under a lease that
    expired (its replica died mid-send; the receiver's inbox makes the resend harmless).
    """
    due = or_(
        and_(OUTBOX.c.state.in_((QUEUED, RETRY)), OUTBOX.c.next_attempt_at <= now),
        and_(OUTBOX.c.state == SENDING, OUTBOX.c.lease_until < now),
    )
    q = select(OUTBOX).where(due).order_by(OUTBOX.c.id).limit(limit)
    if s.get_bind().dialect.name == "postgresql":
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
        )
        for r in rows
    ]


def outbox_release_own(s: Session, *, replica: str, now: datetime) -> int:
    """At start-up: messages this replica was sending when it stopped are due again now."""
    res = s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.state == SENDING, OUTBOX.c.claimed_by == replica)
        .values(state=RETRY, next_attempt_at=now, lease_until=None)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def outbox_delivered(
    s: Session,
    *,
    row_id: int,
    message_id: str,
    recipient: str,
    receipt: bytes,
    received_at: datetime,
    now: datetime,
) -> bool:
    """Record a verified receipt once; returns False if it was already recorded."""
    res = s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state != DELIVERED)
        .values(
            state=DELIVERED,
            receipt=receipt,
            received_at=received_at,
            delivered_at=now,
            lease_until=None,
            last_error=None,
        )
    )
    if not res.rowcount:  # type: ignore[attr-defined]
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


def outbox_retry_later(s: Session, *, row_id: int, error: str, next_at: datetime) -> None:
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state == SENDING)
        .values(state=RETRY, last_error=error[:2000], next_attempt_at=next_at, lease_until=None)
    )


def outbox_failed(s: Session, *, row_id: int, reason: str, error: str) -> None:
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id, OUTBOX.c.state == SENDING)
        .values(state=FAILED, fail_reason=reason[:64], last_error=error[:2000], lease_until=None)
    )


def outbox_manual_retry(s: Session, *, row_id: int, now: datetime) -> None:
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


# --- manifests ---------------------------------------------------------------------------------


def record_manifest(s: Session, *, serial: int, signed: bytes, now: datetime) -> bool:
    if s.execute(select(MANIFESTS.c.serial).where(MANIFESTS.c.serial == serial)).first():
        return False
    s.execute(insert(MANIFESTS).values(serial=serial, signed=signed, accepted_at=now))
    return True
