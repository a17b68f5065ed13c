"""Tables of the node store (SQLModel). Instants are stored as UTC.

Schema changes go through Alembic migrations in ``node/store/migrations``; a test checks that
upgrading an empty database reaches exactly this metadata.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, Index, LargeBinary, TypeDecorator, UniqueConstraint
from sqlalchemy.engine import Dialect
from sqlmodel import Field, SQLModel


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out, on every backend.

    SQLite has no time zone type, so values are normalised to UTC and stored naive; PostgreSQL
    stores ``timestamp with time zone``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the store; instants must be UTC-aware")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utc_field(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None if nullable else ..., sa_type=UTCDateTime, nullable=nullable, index=index
    )


class Inbox(SQLModel, table=True):
    """Every envelope this node accepted, with the receipt it answered (idempotency record)."""

    __tablename__ = "inbox"

    message_id: str = Field(primary_key=True, max_length=36)
    sender_node: str = Field(index=True, max_length=6)
    kind: str = Field(max_length=128)
    envelope_sha256: bytes = Field(sa_type=LargeBinary)
    envelope: bytes = Field(sa_type=LargeBinary)
    receipt: bytes = Field(sa_type=LargeBinary)
    received_at: datetime = utc_field(index=True)


class Outbox(SQLModel, table=True):
    """Envelopes to deliver, committed in the same transaction as the change that sends them."""

    __tablename__ = "outbox"

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(unique=True, max_length=36)
    recipient_node: str = Field(index=True, max_length=6)
    service: str = Field(max_length=32)
    kind: str = Field(max_length=128)
    #: Messages of one conversation (e.g. one request) to one recipient are delivered in order;
    #: empty for messages that need no ordering.
    conversation: str = Field(default="", max_length=64, index=True)
    envelope: bytes = Field(sa_type=LargeBinary)
    #: queued | sending | retry | delivered | failed
    state: str = Field(index=True, max_length=16)
    attempts: int = 0
    created_at: datetime = utc_field()
    next_attempt_at: datetime = utc_field(index=True)
    lease_until: datetime | None = utc_field(nullable=True)
    claimed_by: str | None = Field(default=None, max_length=64)
    last_error: str | None = None
    fail_reason: str | None = Field(default=None, max_length=64)
    delivered_at: datetime | None = utc_field(nullable=True)
    receipt: bytes | None = Field(default=None, sa_type=LargeBinary)
    #: The receiver's receive time from the verified receipt (starts reply periods).
    received_at: datetime | None = utc_field(nullable=True)


class MessageLog(SQLModel, table=True):
    """The hash-chained log of every envelope and receipt sent or received, as exact bytes."""

    __tablename__ = "message_log"

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    #: A serialized cccfed.v1.LogRecord.
    record: bytes = Field(sa_type=LargeBinary)
    record_hash: bytes = Field(sa_type=LargeBinary)
    message_id: str = Field(index=True, max_length=36)
    recorded_at: datetime = utc_field(index=True)


class LogHead(SQLModel, table=True):
    """One row: the last sequence number and hash of the message log (the append lock)."""

    __tablename__ = "log_head"

    id: int = Field(default=1, primary_key=True)
    seq: int = 0
    record_hash: bytes = Field(sa_type=LargeBinary)


class ManifestHistory(SQLModel, table=True):
    """Every manifest this node accepted, kept so old signatures verify offline."""

    __tablename__ = "manifests"

    serial: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    signed: bytes = Field(sa_type=LargeBinary)
    accepted_at: datetime = utc_field()


class HolidaySchedule(SQLModel, table=True):
    """An official holiday schedule an administrator imported (``cccfed calendar import``).

    One row per year; it replaces the ``chinesecalendar`` package data for that year. ``schedule``
    is the canonical JSON of the parsed schedule (``YearSchedule.to_json()``), ``source`` its
    ``source`` field (the State Council notice), kept as a column for listings.
    """

    __tablename__ = "holiday_schedules"

    year: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    schedule: bytes = Field(sa_type=LargeBinary)
    source: str
    imported_at: datetime = utc_field()


class RequestRow(SQLModel, table=True):
    """This node's view of one assistance/verification/lead request (either side of it).

    The view is derived: it is recomputed from ``request_events`` (both parties' events in one
    causal order) whenever one is added, and kept here for listing and obligations.
    """

    __tablename__ = "requests"
    #: Obligation lists page through one (status, role) range in due order (migration 0007);
    #: ``request list`` pages through all requests in creation order.
    __table_args__ = (
        Index("ix_requests_open_due", "status", "role", "due_ends_at", "request_id"),
        Index("ix_requests_created", "created_at", "request_id"),
    )

    request_id: str = Field(primary_key=True, max_length=36)
    #: "requester" or "responder": which side this node is on
    role: str = Field(max_length=10, index=True)
    kind: str = Field(max_length=16)
    requesting_bureau: str = Field(max_length=6)
    requester_node: str = Field(max_length=6, index=True)
    target_bureau: str = Field(max_length=6)
    responder_node: str = Field(max_length=6, index=True)
    assigned_bureau: str | None = Field(default=None, max_length=6)
    holder_name: str
    holder_uscc: str = Field(max_length=18, index=True)
    #: The serialized cccfed.v1.Request exactly as sent or received
    request: bytes = Field(sa_type=LargeBinary)
    status: str = Field(max_length=24, index=True)
    received_at: datetime | None = utc_field(nullable=True)
    due_date: str | None = Field(default=None, max_length=10)
    due_ends_at: datetime | None = utc_field(nullable=True, index=True)
    due_provisional: bool = False
    linked_request_id: str | None = Field(default=None, max_length=36)
    #: JSON of the derived state (history, extension, reply summary) for `request show`
    view: str = ""
    created_at: datetime = utc_field()
    updated_at: datetime = utc_field()


class RequestEvent(SQLModel, table=True):
    """One lifecycle event of a request, from either party, as the exact message bytes."""

    __tablename__ = "request_events"
    __table_args__ = (UniqueConstraint("request_id", "side", "idx"),)

    id: int | None = Field(default=None, primary_key=True)
    request_id: str = Field(max_length=36, index=True)
    #: "requester" or "responder": who wrote it
    side: str = Field(max_length=10)
    #: position in its author's stream (the request itself is requester #0)
    idx: int
    #: how many of the other party's events its author had seen
    seen: int
    kind: str = Field(max_length=64)
    message_id: str = Field(max_length=36)
    payload: bytes = Field(sa_type=LargeBinary)
    created_at: datetime = utc_field()
    #: refused by the rules at its place in the merged order (on both nodes alike)
    void: bool = False


class Reminder(SQLModel, table=True):
    """A reminder produced once per (request, offset, due date) by the idempotent sweep.

    The due date is part of the key: after a granted extension, the reminders count again
    towards the new date.
    """

    __tablename__ = "reminders"

    request_id: str = Field(primary_key=True, max_length=36)
    #: e.g. "due-in-3d", "due-in-1d", "overdue"
    key: str = Field(primary_key=True, max_length=24)
    due_date: str = Field(primary_key=True, max_length=10)
    produced_at: datetime = utc_field()


class BulletinRow(SQLModel, table=True):
    """A circular sent or received (guideline item 18)."""

    __tablename__ = "bulletins"

    bulletin_id: str = Field(primary_key=True, max_length=36)
    sender_node: str = Field(max_length=6)
    title: str
    bulletin: bytes = Field(sa_type=LargeBinary)
    sent_at: datetime = utc_field()
    received_at: datetime | None = utc_field(nullable=True)
    read_at: datetime | None = utc_field(nullable=True)


class BulletinRead(SQLModel, table=True):
    """A member's read acknowledgement of a bulletin this node sent."""

    __tablename__ = "bulletin_reads"

    bulletin_id: str = Field(primary_key=True, max_length=36)
    node: str = Field(primary_key=True, max_length=6)
    read_at: datetime = utc_field()


class ExpertRow(SQLModel, table=True):
    """One supervision expert of this node's province (``cccfed experts import``).

    The whole registry entry, private fields included, stays in this table: only the shared view
    (id, name, bureau, categories) ever goes into a federation message. Experts dropped from a
    later import are kept inactive, not deleted, because exchanges and bookings name them.
    List columns hold JSON arrays (dates ranges as ``"2025-05-01/2025-05-07"``).
    """

    __tablename__ = "experts"

    expert_id: str = Field(primary_key=True, max_length=64)
    name: str = Field(max_length=64)
    bureau: str = Field(max_length=6)
    categories: str
    annual_cap: int
    unavailable: str = "[]"
    conflict_holders: str = "[]"
    conflict_bureaus: str = "[]"
    #: private: never shared, never logged
    phone: str = ""
    #: private: resident ID number, never shared, never logged
    id_number: str = ""
    #: False once a registry import with ``--replace`` no longer lists the expert
    active: bool = Field(default=True, index=True)
    #: file name of the import that last wrote this entry
    source: str = ""
    imported_at: datetime = utc_field()


class ExchangeRow(SQLModel, table=True):
    """This node's view of one expert exchange (host or provider side of it).

    Derived like ``requests``: recomputed from ``exchange_events`` (both sides' events in one
    causal order) whenever one is added, and kept here for listing.
    """

    __tablename__ = "exchanges"

    exchange_id: str = Field(primary_key=True, max_length=36)
    #: "host" or "provider": which side this node is on
    role: str = Field(max_length=10, index=True)
    host_bureau: str = Field(max_length=6)
    host_node: str = Field(max_length=6, index=True)
    provider_node: str = Field(max_length=6, index=True)
    #: The serialized cccfed.v1.ExchangeRequest exactly as sent or received
    request: bytes = Field(sa_type=LargeBinary)
    #: Host only: the secret draw value behind the request's commitment; it leaves the node
    #: only inside the host's answer to a proposal.
    host_value: bytes | None = Field(default=None, sa_type=LargeBinary)
    host_commitment: bytes = Field(sa_type=LargeBinary)
    status: str = Field(max_length=24, index=True)
    #: current inspection dates (JSON array) and the first and last of them
    dates: str
    first_date: str = Field(max_length=10, index=True)
    last_date: str = Field(max_length=10)
    #: drawn expert ids while booked (JSON array)
    assigned: str = "[]"
    #: Provider only: why each registry expert was or was not proposed (JSON; names conflicts)
    audit: str | None = None
    #: JSON of the derived state (proposal, draw, history) for `exchange show`
    view: str = ""
    #: the receiver's receive time of the request (from its receipt)
    received_at: datetime | None = utc_field(nullable=True)
    created_at: datetime = utc_field()
    updated_at: datetime = utc_field()


class ExchangeEvent(SQLModel, table=True):
    """One event of an exchange, from either side, as the exact message bytes."""

    __tablename__ = "exchange_events"
    __table_args__ = (UniqueConstraint("exchange_id", "side", "idx"),)

    id: int | None = Field(default=None, primary_key=True)
    exchange_id: str = Field(max_length=36, index=True)
    #: "host" or "provider": who wrote it
    side: str = Field(max_length=10)
    #: position in its author's stream (the request itself is host #0)
    idx: int
    #: how many of the other side's events its author had seen
    seen: int
    kind: str = Field(max_length=64)
    message_id: str = Field(max_length=36)
    payload: bytes = Field(sa_type=LargeBinary)
    created_at: datetime = utc_field()
    #: refused by the rules at its place in the merged order (on both nodes alike)
    void: bool = False


class ExpertBooking(SQLModel, table=True):
    """One day an expert of this province is booked or held, derived from exchange states.

    Rewritten for an exchange in the transaction that changes its state (``bookings_of``), so it
    never drifts from the events. The primary key (expert, day) makes the database itself refuse
    a double booking, whatever code or replica tries to write one.
    """

    __tablename__ = "expert_bookings"

    expert_id: str = Field(primary_key=True, max_length=64)
    #: Asia/Shanghai date, "YYYY-MM-DD"
    day: str = Field(primary_key=True, max_length=10)
    exchange_id: str = Field(max_length=36, index=True)
    #: held for an open proposal (any candidate may be drawn), not yet confirmed
    tentative: bool = False


class LogEntryRow(SQLModel, table=True):
    """One entry of a member's inspection-result log (ours or a witnessed one), as signed bytes.

    ``data`` is the record's canonical bytes, the exact leaf data the origin hashed; the other
    columns are read from it when it is stored, for listing and conflict detection.
    """

    __tablename__ = "log_entries"

    origin: str = Field(primary_key=True, max_length=6)
    idx: int = Field(primary_key=True)
    leaf_hash: bytes = Field(sa_type=LargeBinary)
    data: bytes = Field(sa_type=LargeBinary)
    record_id: str = Field(max_length=36, index=True)
    #: "USCC/YYYY-MM-DD/bureau" (federation.inspection.BusinessKey)
    business_key: str = Field(max_length=64, index=True)
    supersedes: str | None = Field(default=None, max_length=36)
    kind: str = Field(max_length=16)
    stored_at: datetime = utc_field()


class LogNodeRow(SQLModel, table=True):
    """A perfect-subtree hash of a log (level 0 = leaf hashes), so proofs cost O(log² n)."""

    __tablename__ = "log_nodes"

    origin: str = Field(primary_key=True, max_length=6)
    level: int = Field(primary_key=True)
    idx: int = Field(primary_key=True)
    hash: bytes = Field(sa_type=LargeBinary)


class LogCheckpointRow(SQLModel, table=True):
    """A checkpoint of a log that this node signed (its own) or accepted as a witness."""

    __tablename__ = "log_checkpoints"

    origin: str = Field(primary_key=True, max_length=6)
    size: int = Field(primary_key=True)
    root: bytes = Field(sa_type=LargeBinary)
    #: the signed note with the origin's signature only, exactly as signed
    signed: bytes = Field(sa_type=LargeBinary)
    stored_at: datetime = utc_field()


class LogCosignatureRow(SQLModel, table=True):
    """A verified cosignature of a witness on the checkpoint ``(origin, size, root)``.

    Kept with the root it covers, so that a cosignature arriving before its checkpoint is
    counted only once a checkpoint with that very root is stored here.
    """

    __tablename__ = "log_cosignatures"

    origin: str = Field(primary_key=True, max_length=6)
    size: int = Field(primary_key=True)
    witness: str = Field(primary_key=True, max_length=6)
    root: bytes = Field(sa_type=LargeBinary)
    line: bytes = Field(sa_type=LargeBinary)
    stored_at: datetime = utc_field()


class EquivocationRow(SQLModel, table=True):
    """Evidence that an origin signed two conflicting checkpoints; its origin is frozen."""

    __tablename__ = "equivocations"

    id: int | None = Field(default=None, primary_key=True)
    origin: str = Field(max_length=6, index=True)
    evidence: bytes = Field(sa_type=LargeBinary)
    #: member whose message or answer revealed it (ourselves when we found it)
    source: str = Field(max_length=6)
    found_at: datetime = utc_field()


class ResultConflictRow(SQLModel, table=True):
    """Two records of one business key, neither superseding the other (flagged, not resolved)."""

    __tablename__ = "result_conflicts"
    __table_args__ = (UniqueConstraint("record_a", "record_b"),)

    id: int | None = Field(default=None, primary_key=True)
    business_key: str = Field(max_length=64, index=True)
    record_a: str = Field(max_length=36)
    record_b: str = Field(max_length=36)
    flagged_at: datetime = utc_field()
