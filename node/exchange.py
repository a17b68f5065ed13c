"""Expert exchanges on a node: the shell around federation.exchange, draw and experts.

What this module adds to the pure rules (:mod:`federation.exchange`, :mod:`federation.draw`,
:mod:`federation.experts`):

* **The registry in the store.** ``cccfed experts import`` writes the province's experts into
  ``experts``, private fields included; they never leave it. Only :func:`shared_view` of an
  expert is put into a message (:class:`~cccfed.v1.expert_exchange_pb2.ExchangeExpert` has no
  field for anything else), and a received view with extra fields is refused.
* **Events and the derived view.** As for assistance requests (:mod:`node.assistance`), every
  event of an exchange — the request itself and each lifecycle message, from either side — is
  kept as its exact message bytes in ``exchange_events`` with its place in its author's stream
  (``idx``) and what its author had seen of the other side (``seen``). The view in ``exchanges``
  is derived by merging both streams in one causal order (:mod:`federation.conversation`; the
  host plays the conversation's "requester", so concurrent events order host first) and folding
  :func:`federation.exchange.apply` over it. A peer's event the rules refuse is refused back
  (nothing stored) unless it crossed one of ours on the wire; then both nodes keep it as void.
* **Bookings without double booking.** On the providing node, ``expert_bookings`` holds one row
  per (expert, day) booked or held, rewritten from :func:`federation.exchange.bookings_of` in
  the very transaction that changes an exchange's state, so it cannot drift from the events.
  Matching (:meth:`ExpertExchange.propose`) runs in ONE write transaction that reads these rows,
  matches, stores the proposal and queues it. The node's single store writer (and ``BEGIN
  IMMEDIATE`` on SQLite, for other processes on the same file) serialises such transactions;
  on PostgreSQL every transaction that writes bookings first locks the registry rows
  (``SELECT … FOR UPDATE``, in key order), so replicas of one node serialise too. Whatever
  slips past all of that meets the primary key (expert, day): the database itself refuses a
  second booking of an expert on a day.
* **The draw.** The host draws its secret value ``h`` when it creates a request
  (``random_bytes``, injectable), stores it only in its own ``exchanges.host_value`` and sends
  ``commit(h)``; ``h`` leaves the node only inside the host's answer to a proposal. The provider
  draws ``p`` when it proposes. See :mod:`federation.draw` for the message order and why.

The proposal is made by the operator (``cccfed exchange propose``), not automatically on
arrival: the providing bureau may want to update its registry first (leave, new conflicts), and a
proposal holds every candidate until the host answers.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import DecodeError, Message
from google.protobuf.unknown_fields import UnknownFieldSet
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Connection

from cccfed.v1 import expert_exchange_pb2 as pb
from federation import conversation, divisions, ics
from federation import draw as draws
from federation import exchange as ex
from federation.draw import DrawRecord
from federation.errors import ValidationError
from federation.experts import DateRange, Expert, Registry, SharedExpert
from federation.periods import shanghai_date
from federation.requests import FieldError
from node.store.models import ExchangeEvent, ExchangeRow, ExpertBooking, ExpertRow
from node.store.ops import insert_conversation_event, outbox_created_at

if TYPE_CHECKING:
    from federation.envelope import Opened, VerifiedReceipt
    from node.runtime import Node
    from node.store.ops import Claimed

log = logging.getLogger(__name__)

EXPERTS = ExpertRow.__table__  # type: ignore[attr-defined]
EXCHANGES = ExchangeRow.__table__  # type: ignore[attr-defined]
EVENTS = ExchangeEvent.__table__  # type: ignore[attr-defined]
BOOKINGS = ExpertBooking.__table__  # type: ignore[attr-defined]

SERVICE: Final = "expert_exchange"
REQUEST_KIND: Final = "cccfed.v1.ExchangeRequest"
EVENT_TYPES: Final[dict[str, type[Message]]] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        pb.ExchangeProposed,
        pb.ExchangeDeclined,
        pb.ExchangeConfirmed,
        pb.ExchangeAttendanceConfirmed,
        pb.ExchangeCancelled,
        pb.ExchangeRescheduleRequested,
        pb.ExchangeRescheduled,
        pb.ExchangeRescheduleRefused,
    )
}

Role = ex.Actor
#: The host opens the conversation, as the requester of an assistance request does; on events
#: that cross on the wire the host's goes first, on both nodes alike.
_SIDE: Final[dict[Role, conversation.Side]] = {"host": "requester", "provider": "responder"}
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_DECLINE_PREFIX: Final = "EXCHANGE_DECLINE_REASON_"


# --------------------------------------------------------------------------------------------
# Wire form <-> domain values


def _date_in(text: str, field: str) -> dt.date:
    if not _DATE_RE.fullmatch(text):
        raise FieldError(field, f"{text!r} is not a date YYYY-MM-DD")
    try:
        return dt.date.fromisoformat(text)
    except ValueError as e:
        raise FieldError(field, f"{text!r} is not a date: {e}") from e


def _dates_in(texts: Iterable[str], field: str) -> tuple[dt.date, ...]:
    return tuple(_date_in(t, f"{field}[{i}]") for i, t in enumerate(texts))


def request_to_message(request: ex.ExchangeRequest) -> pb.ExchangeRequest:
    """The wire form of a validated request."""
    return pb.ExchangeRequest(
        request_id=request.request_id,
        host_bureau=request.host_bureau,
        provider_province=request.provider_province,
        dates=[d.isoformat() for d in request.dates],
        place=request.place,
        holder_uscc=request.holder_uscc,
        categories=sorted(request.categories),
        experts_wanted=request.experts_wanted,
        reply_by=request.reply_by.isoformat(),
        host_commitment=request.host_commitment,
    )


def request_from_message(msg: pb.ExchangeRequest, *, today: dt.date) -> ex.ExchangeRequest:
    """Read and validate a request; ``today`` is the Shanghai date it was sent (signed).

    Validated exactly as when it was made, so a stored request reads back the same later.
    Raises :class:`~federation.requests.FieldError`.
    """
    request = ex.ExchangeRequest(
        request_id=msg.request_id,
        host_bureau=msg.host_bureau,
        provider_province=msg.provider_province,
        dates=_dates_in(msg.dates, "dates"),
        place=msg.place,
        holder_uscc=msg.holder_uscc,
        categories=frozenset(msg.categories),
        experts_wanted=int(msg.experts_wanted),
        reply_by=_date_in(msg.reply_by, "reply_by"),
        host_commitment=bytes(msg.host_commitment),
    )
    validated = ex.validate_exchange_request(request, today=today)
    if validated.request_id != msg.request_id:
        raise FieldError("request_id", "must be a lowercase UUID with dashes")
    return validated


def expert_to_message(view: SharedExpert) -> pb.ExchangeExpert:
    """The wire form of a shared view (the only form of an expert that leaves a node)."""
    return pb.ExchangeExpert(
        expert_id=view.expert_id,
        name=view.name,
        bureau=view.bureau,
        categories=sorted(view.categories),
    )


def expert_from_message(msg: pb.ExchangeExpert, field: str) -> SharedExpert:
    """Read a shared view; refuses one that carries fields beyond the shared ones.

    Protobuf would keep unknown fields silently (and we store messages as received), so a
    partner that put a phone number into field 5 would have it stored here: refused instead,
    as :meth:`SharedExpert.from_dict` refuses extra keys.
    """
    if len(UnknownFieldSet(msg)):
        raise FieldError(
            field, "expert view carries fields beyond the shared ones", reason="UNKNOWN_FIELD"
        )
    try:
        return SharedExpert.from_dict(
            {
                "expert_id": msg.expert_id,
                "name": msg.name,
                "bureau": msg.bureau,
                "categories": list(msg.categories),
            }
        )
    except ValidationError as e:
        raise FieldError(field, str(e), reason=e.reason) from e


def _host_value(raw: bytes) -> bytes | None:
    return bytes(raw) or None


def _decline_reason(value: pb.ExchangeDeclineReason.ValueType) -> ex.DeclineReason:
    try:
        name = pb.ExchangeDeclineReason.Name(value)
        return ex.DeclineReason(name.removeprefix(_DECLINE_PREFIX).lower())
    except ValueError:
        raise FieldError("reason", f"{int(value)} is not a decline reason") from None


def event_to_message(exchange_id: str, event: ex.Event) -> Message:
    """The wire form of a lifecycle event (``index`` and ``seen`` are set by the sender)."""
    match event:
        case ex.Proposed(proposal=p):
            return pb.ExchangeProposed(
                request_id=exchange_id,
                host_commitment=p.host_commitment,
                tiers=[pb.ExchangeTier(expert_ids=list(tier)) for tier in p.tiers],
                k=p.k,
                provider_value=p.provider_value,
                candidates=[expert_to_message(c) for c in p.candidates],
            )
        case ex.Declined():
            return pb.ExchangeDeclined(
                request_id=exchange_id,
                reason=pb.ExchangeDeclineReason.Value(_DECLINE_PREFIX + event.reason.value.upper()),
                text=event.text,
                host_value=event.host_value or b"",
            )
        case ex.Confirmed():
            return pb.ExchangeConfirmed(
                request_id=exchange_id, host_value=event.host_value, result=list(event.result)
            )
        case ex.AttendanceConfirmed():
            return pb.ExchangeAttendanceConfirmed(request_id=exchange_id)
        case ex.Cancelled():
            return pb.ExchangeCancelled(
                request_id=exchange_id, text=event.text, host_value=event.host_value or b""
            )
        case ex.RescheduleRequested():
            return pb.ExchangeRescheduleRequested(
                request_id=exchange_id, dates=[d.isoformat() for d in event.dates]
            )
        case ex.Rescheduled():
            return pb.ExchangeRescheduled(
                request_id=exchange_id, dates=[d.isoformat() for d in event.dates]
            )
        case ex.RescheduleRefused():
            return pb.ExchangeRescheduleRefused(request_id=exchange_id, text=event.text)
    raise AssertionError(f"unknown event {event!r}")  # pragma: no cover - the union is closed


def event_from_message(msg: Message) -> tuple[str, ex.Event]:
    """The exchange id and domain event of a received lifecycle message (shape only).

    Whether the event fits the exchange is decided by :func:`federation.exchange.apply`.
    """
    event: ex.Event
    match msg:
        case pb.ExchangeProposed():
            candidates = tuple(
                expert_from_message(c, f"candidates[{i}]") for i, c in enumerate(msg.candidates)
            )
            event = ex.Proposed(
                ex.Proposal(
                    request_id=msg.request_id,
                    host_commitment=bytes(msg.host_commitment),
                    tiers=tuple(tuple(t.expert_ids) for t in msg.tiers),
                    k=int(msg.k),
                    provider_value=bytes(msg.provider_value),
                    candidates=candidates,
                )
            )
        case pb.ExchangeDeclined():
            event = ex.Declined(
                reason=_decline_reason(msg.reason),
                text=msg.text,
                host_value=_host_value(msg.host_value),
            )
        case pb.ExchangeConfirmed():
            event = ex.Confirmed(host_value=bytes(msg.host_value), result=tuple(msg.result))
        case pb.ExchangeAttendanceConfirmed():
            event = ex.AttendanceConfirmed()
        case pb.ExchangeCancelled():
            event = ex.Cancelled(text=msg.text, host_value=_host_value(msg.host_value))
        case pb.ExchangeRescheduleRequested():
            event = ex.RescheduleRequested(dates=_dates_in(msg.dates, "dates"))
        case pb.ExchangeRescheduled():
            event = ex.Rescheduled(dates=_dates_in(msg.dates, "dates"))
        case pb.ExchangeRescheduleRefused():
            event = ex.RescheduleRefused(text=msg.text)
        case _:
            raise ValidationError(
                f"{msg.DESCRIPTOR.full_name} is not an exchange event", reason="INVALID_EVENT"
            )
    request_id: str = msg.request_id
    return request_id, event


# --------------------------------------------------------------------------------------------
# Registry rows


def _json_list(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list)
    return [str(v) for v in value]


def expert_of(row: Any) -> Expert:
    """The :class:`Expert` of a stored registry row (private fields included)."""
    ranges = []
    for text in _json_list(row.unavailable):
        start, _, end = text.partition("/")
        ranges.append(DateRange(dt.date.fromisoformat(start), dt.date.fromisoformat(end or start)))
    return Expert(
        expert_id=row.expert_id,
        name=row.name,
        bureau=row.bureau,
        categories=frozenset(_json_list(row.categories)),
        annual_cap=int(row.annual_cap),
        unavailable=tuple(sorted(ranges)),
        conflict_holders=frozenset(_json_list(row.conflict_holders)),
        conflict_bureaus=frozenset(_json_list(row.conflict_bureaus)),
        phone=row.phone,
        id_number=row.id_number,
    )


def _expert_values(expert: Expert) -> dict[str, Any]:
    return {
        "name": expert.name,
        "bureau": expert.bureau,
        "categories": json.dumps(sorted(expert.categories)),
        "annual_cap": expert.annual_cap,
        "unavailable": json.dumps([str(r) for r in expert.unavailable]),
        "conflict_holders": json.dumps(sorted(expert.conflict_holders)),
        "conflict_bureaus": json.dumps(sorted(expert.conflict_bureaus)),
        "phone": expert.phone,
        "id_number": expert.id_number,
    }


# --------------------------------------------------------------------------------------------
# Events and views


@dataclass(frozen=True)
class EventRecord:
    """One stored event of an exchange (the request is the host's event 0)."""

    side: Role
    idx: int
    seen: int
    kind: str
    message_id: str
    payload: bytes
    created_at: dt.datetime


@dataclass(frozen=True)
class ExchangeView:
    """An exchange as this node sees it: the stored row plus the derived state."""

    row: Any
    state: ex.ExchangeState
    events: tuple[EventRecord, ...]
    void: tuple[EventRecord, ...]

    @property
    def role(self) -> Role:
        return "host" if self.row.role == "host" else "provider"

    @property
    def peer(self) -> str:
        return str(self.row.provider_node if self.role == "host" else self.row.host_node)

    @property
    def exchange_id(self) -> str:
        return str(self.row.exchange_id)


def _event_of(record: EventRecord) -> ex.Event:
    cls = EVENT_TYPES.get(record.kind)
    if cls is None:
        raise ValidationError(f"unknown event kind {record.kind}", reason="INVALID_EVENT")
    msg = cls()
    try:
        msg.ParseFromString(record.payload)
    except DecodeError as e:
        raise ValidationError("stored event does not parse", reason="INVALID_EVENT") from e
    return event_from_message(msg)[1]


def fold_events(
    request: ex.ExchangeRequest, records: Sequence[EventRecord]
) -> conversation.Folded[ex.ExchangeState, EventRecord]:
    """The state both nodes compute from the same events (see the module docstring)."""

    def step(state: ex.ExchangeState, e: conversation.Event[EventRecord]) -> ex.ExchangeState:
        rec = e.payload
        if rec.kind == REQUEST_KIND:
            return state  # the request is the starting state itself
        return ex.apply(state, _event_of(rec), actor=rec.side, at=rec.created_at)

    events = [conversation.Event(_SIDE[r.side], r.idx, r.seen, r) for r in records]
    return conversation.fold(ex.start(request), events, step, first="requester")


def state_to_dict(state: ex.ExchangeState) -> dict[str, Any]:
    """JSON-ready form of a derived state, the same on both nodes for the same events."""
    return {
        "request": state.request.to_dict(),
        "status": state.status.value,
        "dates": [d.isoformat() for d in state.dates],
        "pending_dates": (
            [d.isoformat() for d in state.pending_dates] if state.pending_dates else None
        ),
        "revision": state.revision,
        "decline_reason": state.decline_reason.value if state.decline_reason else None,
        "proposal": state.proposal.to_dict() if state.proposal else None,
        "draw": state.draw.to_dict() if state.draw else None,
        "assigned": list(state.assigned),
        "history": [
            {
                "event": h.event,
                "actor": h.actor,
                "at": h.at.isoformat(),
                "status": h.status.value,
            }
            for h in state.history
        ],
    }


def _audit_dict(audit: ex.MatchAudit | None) -> dict[str, Any]:
    if audit is None:
        return {"excluded": {}, "reserve": []}
    return {
        "excluded": {k: sorted(r.value for r in v) for k, v in sorted(audit.excluded.items())},
        "reserve": list(audit.reserve),
    }


@dataclass(frozen=True)
class BookingContext:
    """What matching needs to know of the bookings of this province's experts."""

    bookings: tuple[ex.Booking, ...]
    year_counts: dict[str, int]
    """Exchanges per expert in the year asked for (:func:`federation.exchange.exchange_counts`)."""
    last_sent: dict[str, dt.date]
    """Last date each expert was sent (:func:`federation.exchange.last_sent_dates`)."""


class ExpertExchange:
    """The expert-exchange capability of one node."""

    def __init__(
        self, node: Node, *, random_bytes: Callable[[int], bytes] = secrets.token_bytes
    ) -> None:
        self.node = node
        #: The source of both sides' draw values; a test injects its own to replay a draw.
        self.random_bytes = random_bytes
        reg = node.registry
        reg.register(SERVICE, REQUEST_KIND, self._on_request, self._on_request_delivered)
        for kind in EVENT_TYPES:
            reg.register(SERVICE, kind, self._on_event)

    # --- the registry ---------------------------------------------------------------------

    def _lock_registry(self, conn: Connection) -> None:
        """Serialise every transaction that books experts (PostgreSQL replicas).

        Row locks in key order, so two transactions never wait for each other's second row.
        SQLite renders no ``FOR UPDATE``; its ``BEGIN IMMEDIATE`` already holds the write lock.
        """
        conn.execute(
            select(EXPERTS.c.expert_id).order_by(EXPERTS.c.expert_id).with_for_update()
        ).all()

    def import_registry(
        self, conn: Connection, registry: Registry, *, source: str, replace: bool = False
    ) -> dict[str, Any]:
        """Store a parsed registry file: add new experts, update listed ones.

        With ``replace``, experts the file no longer lists become inactive (never proposed
        again); they are kept because exchanges and bookings name them.
        """
        node = self.node
        if registry.province != node.code:
            raise ValidationError(
                f"{source}: the registry is of {registry.province}, but this node is {node.code}",
                reason="WRONG_PROVINCE",
            )
        self._lock_registry(conn)
        now = node.clock()
        existing = {
            r.expert_id: r
            for r in conn.execute(select(EXPERTS.c.expert_id, EXPERTS.c.active)).all()
        }
        added, updated = [], []
        for expert in registry.experts:
            values = {
                **_expert_values(expert),
                "active": True,
                "source": source,
                "imported_at": now,
            }
            if expert.expert_id in existing:
                conn.execute(
                    update(EXPERTS).where(EXPERTS.c.expert_id == expert.expert_id).values(**values)
                )
                updated.append(expert.expert_id)
            else:
                conn.execute(insert(EXPERTS).values(expert_id=expert.expert_id, **values))
                added.append(expert.expert_id)
        retired: list[str] = []
        if replace:
            listed = {e.expert_id for e in registry.experts}
            retired = sorted(k for k, r in existing.items() if r.active and k not in listed)
            if retired:
                conn.execute(
                    update(EXPERTS)
                    .where(EXPERTS.c.expert_id.in_(retired))
                    .values(active=False, imported_at=now)
                )
        return {
            "province": registry.province,
            "source": source,
            "added": added,
            "updated": updated,
            "retired": retired,
        }

    def experts(self, conn: Connection, *, include_inactive: bool = False) -> list[Expert]:
        """This province's experts (active ones unless asked), by id."""
        q = select(EXPERTS).order_by(EXPERTS.c.expert_id)
        if not include_inactive:
            q = q.where(EXPERTS.c.active.is_(True))
        return [expert_of(r) for r in conn.execute(q).all()]

    def expert_row(self, conn: Connection, expert_id: str) -> Any:
        row = conn.execute(select(EXPERTS).where(EXPERTS.c.expert_id == expert_id)).first()
        if row is None:
            raise ValidationError(
                f"no expert {expert_id!r} in this node's registry", reason="NOT_FOUND"
            )
        return row

    def booking_context(self, conn: Connection, year: int) -> BookingContext:
        """Bookings, counts for ``year`` and last-sent dates, from ``expert_bookings``.

        The rows are :func:`federation.exchange.bookings_of` of every exchange this node
        provides for, so the counts and dates equal :func:`~federation.exchange.exchange_counts`
        and :func:`~federation.exchange.last_sent_dates` over the same states.
        """
        rows = conn.execute(
            select(
                BOOKINGS.c.expert_id,
                BOOKINGS.c.day,
                BOOKINGS.c.exchange_id,
                BOOKINGS.c.tentative,
                EXCHANGES.c.first_date,
            ).join(EXCHANGES, EXCHANGES.c.exchange_id == BOOKINGS.c.exchange_id)
        ).all()
        grouped: dict[tuple[str, str], tuple[set[dt.date], bool, str]] = {}
        for r in rows:
            days, _, _ = grouped.setdefault(
                (r.exchange_id, r.expert_id), (set(), bool(r.tentative), r.first_date)
            )
            days.add(dt.date.fromisoformat(r.day))
        bookings: list[ex.Booking] = []
        counts: dict[str, int] = {}
        last_sent: dict[str, dt.date] = {}
        for (exchange_id, expert_id), (days, tentative, first) in sorted(grouped.items()):
            bookings.append(ex.Booking(expert_id, frozenset(days), exchange_id, tentative))
            if dt.date.fromisoformat(first).year == year:
                counts[expert_id] = counts.get(expert_id, 0) + 1
            if not tentative:
                last = max(days)
                if expert_id not in last_sent or last_sent[expert_id] < last:
                    last_sent[expert_id] = last
        return BookingContext(tuple(bookings), counts, last_sent)

    def _sync_bookings(self, conn: Connection, state: ex.ExchangeState) -> None:
        """Rewrite this exchange's booking rows from its state (provider side only)."""
        self._lock_registry(conn)
        exchange_id = state.request_id
        conn.execute(delete(BOOKINGS).where(BOOKINGS.c.exchange_id == exchange_id))
        rows = [
            {
                "expert_id": b.expert_id,
                "day": day.isoformat(),
                "exchange_id": exchange_id,
                "tentative": b.tentative,
            }
            for b in ex.bookings_of(state)
            for day in sorted(b.dates)
        ]
        if not rows:
            return
        clash = conn.execute(
            select(BOOKINGS.c.expert_id, BOOKINGS.c.day, BOOKINGS.c.exchange_id).where(
                BOOKINGS.c.expert_id.in_({r["expert_id"] for r in rows}),
                BOOKINGS.c.day.in_({r["day"] for r in rows}),
            )
        ).all()
        wanted = {(r["expert_id"], r["day"]) for r in rows}
        taken = sorted((c.expert_id, c.day, c.exchange_id) for c in clash)
        taken = [t for t in taken if (t[0], t[1]) in wanted]
        if taken:
            # Matching never proposes a booked expert; reaching this is a bug, refused loudly.
            raise ValidationError(
                f"exchange {exchange_id} would double-book "
                + ", ".join(f"{e} on {d} (held by {x})" for e, d, x in taken),
                reason="DOUBLE_BOOKING",
            )
        conn.execute(insert(BOOKINGS), rows)

    # --- reading ------------------------------------------------------------------------------

    def _row(self, conn: Connection, exchange_id: str) -> Any:
        row = conn.execute(select(EXCHANGES).where(EXCHANGES.c.exchange_id == exchange_id)).first()
        if row is None:
            raise ValidationError(f"exchange {exchange_id} does not exist here", reason="NOT_FOUND")
        return row

    def find(self, conn: Connection, prefix: str) -> str:
        """The full id of the one exchange whose id starts with ``prefix``."""
        ids = (
            conn.execute(
                select(EXCHANGES.c.exchange_id).where(
                    EXCHANGES.c.exchange_id.like(prefix.replace("%", "").replace("_", "") + "%")
                )
            )
            .scalars()
            .all()
        )
        if len(ids) != 1 or not prefix:
            raise ValidationError(
                f"exchange {prefix!r}: "
                + ("no such exchange" if not ids else "ambiguous; give more of the id"),
                reason="NOT_FOUND",
            )
        return str(ids[0])

    def _records(self, conn: Connection, exchange_id: str) -> list[EventRecord]:
        rows = conn.execute(
            select(EVENTS).where(EVENTS.c.exchange_id == exchange_id).order_by(EVENTS.c.id)
        ).all()
        return [
            EventRecord(
                "host" if r.side == "host" else "provider",
                r.idx,
                r.seen,
                r.kind,
                r.message_id,
                bytes(r.payload),
                r.created_at,
            )
            for r in rows
        ]

    def view(self, conn: Connection, exchange_id: str) -> ExchangeView:
        """Fold the stored events of an exchange into its current state."""
        row = self._row(conn, exchange_id)
        records = self._records(conn, exchange_id)
        request = request_from_message(
            pb.ExchangeRequest.FromString(bytes(row.request)),
            today=shanghai_date(records[0].created_at),
        )
        folded = fold_events(request, records)
        return ExchangeView(
            row,
            folded.state,
            tuple(e.payload for e in folded.applied),
            tuple(e.payload for e in folded.void),
        )

    def views(self, conn: Connection) -> list[ExchangeView]:
        """Every exchange this node takes part in, by first date."""
        ids = (
            conn.execute(
                select(EXCHANGES.c.exchange_id).order_by(
                    EXCHANGES.c.first_date, EXCHANGES.c.exchange_id
                )
            )
            .scalars()
            .all()
        )
        return [self.view(conn, i) for i in ids]

    def _refresh(self, conn: Connection, exchange_id: str, now: dt.datetime) -> ExchangeView:
        """Recompute the derived view, store it in the row and (provider) rewrite bookings."""
        v = self.view(conn, exchange_id)
        st = v.state
        void_ids = {r.message_id for r in v.void}
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.exchange_id == exchange_id)
            .values(void=EVENTS.c.message_id.in_(void_ids) if void_ids else False)
        )
        conn.execute(
            update(EXCHANGES)
            .where(EXCHANGES.c.exchange_id == exchange_id)
            .values(
                status=st.status.value,
                dates=json.dumps([d.isoformat() for d in st.dates]),
                first_date=st.dates[0].isoformat(),
                last_date=st.dates[-1].isoformat(),
                assigned=json.dumps(list(st.assigned)),
                view=json.dumps(state_to_dict(st), ensure_ascii=False, sort_keys=True),
                updated_at=now,
            )
        )
        if v.role == "provider":
            self._sync_bookings(conn, st)
        return v  # state and void set are derived and current; callers read them, not the row

    # --- the host: creating and sending a request -------------------------------------------

    def parse_new(self, data: dict[str, Any]) -> tuple[ex.ExchangeRequest, bytes]:
        """A new request from a mapping (file, flags) and the host's fresh secret draw value.

        ``host_bureau`` defaults to this node's own code. The value is returned, never stored
        here: :meth:`create` stores it with the request in one transaction.
        """
        node = self.node
        data = {"host_bureau": node.code, **data}
        host_value = draws.new_value(self.random_bytes)
        request = ex.parse_exchange_request(
            data, host_commitment=draws.commit(host_value), today=shanghai_date(node.clock())
        )
        tm = node.trust.current
        if tm.node_for_bureau(request.host_bureau) != node.code:
            raise FieldError(
                "host_bureau",
                f"{request.host_bureau} is served by {tm.node_for_bureau(request.host_bureau)}, "
                f"not by this node ({node.code})",
                reason="WRONG_PARTY",
            )
        tm.member(request.provider_province)  # a member of the federation must be asked
        return request, host_value

    def create(self, conn: Connection, request: ex.ExchangeRequest, host_value: bytes) -> str:
        """Store a new request with the host's secret value and queue it, in one transaction."""
        node = self.node
        if draws.commit(host_value) != request.host_commitment:
            raise ValidationError(
                "the host value does not open the request's commitment", reason="DRAW_VALUE"
            )
        now = node.clock()
        msg = request_to_message(request)
        conn.execute(
            insert(EXCHANGES).values(
                exchange_id=request.request_id,
                role="host",
                host_bureau=request.host_bureau,
                host_node=node.code,
                provider_node=request.provider_province,
                request=msg.SerializeToString(deterministic=True),
                host_value=host_value,
                host_commitment=request.host_commitment,
                status=ex.ExchangeStatus.REQUESTED.value,
                dates=json.dumps([d.isoformat() for d in request.dates]),
                first_date=request.dates[0].isoformat(),
                last_date=request.dates[-1].isoformat(),
                created_at=now,
                updated_at=now,
            )
        )
        mid, _ = node.enqueue_in(
            conn,
            request.provider_province,
            SERVICE,
            msg,
            recipient_bureau=request.provider_province,
            sender_bureau=request.host_bureau,
            correlation_id=request.request_id,
            claim=True,
        )
        self._insert_event(
            conn, request.request_id, "host", 0, 0, REQUEST_KIND, mid, msg, self._sent_at(conn, mid)
        )
        self._refresh(conn, request.request_id, now)
        return request.request_id

    def _sent_at(self, conn: Connection, message_id: str) -> dt.datetime:
        return outbox_created_at(conn, message_id)

    def _insert_event(
        self,
        conn: Connection,
        exchange_id: str,
        side: Role,
        idx: int,
        seen: int,
        kind: str,
        message_id: str,
        msg: Message,
        created_at: dt.datetime,
    ) -> None:
        insert_conversation_event(
            conn,
            EVENTS,
            key={"exchange_id": exchange_id},
            side=side,
            idx=idx,
            seen=seen,
            kind=kind,
            message_id=message_id,
            payload=msg.SerializeToString(deterministic=True),
            created_at=created_at,
        )

    # --- local actions -----------------------------------------------------------------------

    def act(self, conn: Connection, exchange_id: str, event: ex.Event) -> ExchangeView:
        """Apply a local action: check it, store it, send it — or refuse it, changing nothing."""
        node = self.node
        before = self.view(conn, exchange_id)
        role = before.role
        # 1. The rules, against what we know now (the same check the peer will make).
        ex.apply(before.state, event, actor=role, at=node.clock())
        # 2. Our next place in our stream, and how much of theirs we have seen.
        records = self._records(conn, exchange_id)
        idx = sum(1 for r in records if r.side == role)
        seen = len(records) - idx
        msg = event_to_message(exchange_id, event)
        msg.index = idx  # type: ignore[attr-defined]
        msg.seen = seen  # type: ignore[attr-defined]
        row = before.row
        own_bureau = row.host_bureau if role == "host" else row.provider_node
        peer_bureau = row.provider_node if role == "host" else row.host_bureau
        mid, _ = node.enqueue_in(
            conn,
            before.peer,
            SERVICE,
            msg,
            recipient_bureau=peer_bureau,
            sender_bureau=own_bureau,
            correlation_id=exchange_id,
            claim=True,
        )
        kind = msg.DESCRIPTOR.full_name
        self._insert_event(
            conn, exchange_id, role, idx, seen, kind, mid, msg, self._sent_at(conn, mid)
        )
        after = self._refresh(conn, exchange_id, node.clock())
        if any(r.message_id == mid for r in after.void):
            raise ValidationError(
                f"{event.name} is not allowed on exchange {exchange_id} now",
                reason="INVALID_TRANSITION",
            )
        return after

    def _expect(self, v: ExchangeView, role: Role, action: str) -> None:
        if v.role != role:
            raise ValidationError(
                f"exchange {v.exchange_id}: only the {role} can {action}; this node is the "
                f"{v.role}",
                reason="INVALID_TRANSITION",
            )

    def propose(self, conn: Connection, exchange_id: str) -> ExchangeView:
        """Provider: match, draw ``p``, store the proposal and queue it — one transaction.

        Raises ``NO_ELIGIBLE_EXPERTS`` (nothing stored, nothing sent) when nobody fits; the
        message says who was excluded for what, and the operator then declines.
        """
        v = self.view(conn, exchange_id)
        self._expect(v, "provider", "propose experts")
        if not ex.allowed(v.state, ex.Proposed.name, "provider"):
            raise ValidationError(
                f"exchange {exchange_id} is {v.state.status.value}; experts are proposed only "
                "for a new request",
                reason="INVALID_TRANSITION",
            )
        self._lock_registry(conn)  # before reading bookings: see the module docstring
        request = v.state.request
        experts = self.experts(conn)
        context = self.booking_context(conn, request.dates[0].year)
        seen_commitments = set(
            conn.execute(
                select(EXCHANGES.c.host_commitment).where(
                    EXCHANGES.c.exchange_id != exchange_id, EXCHANGES.c.role == "provider"
                )
            )
            .scalars()
            .all()
        )
        proposal = ex.match(
            request,
            experts,
            context.bookings,
            context.year_counts,
            context.last_sent,
            draw_seed=draws.new_value(self.random_bytes),
            seen_commitments={bytes(c) for c in seen_commitments},
        )
        audit = _audit_dict(proposal.audit)
        if proposal.k == 0:
            why = "; ".join(f"{k}: {', '.join(r)}" for k, r in audit["excluded"].items())
            raise ValidationError(
                f"exchange {exchange_id}: no expert of {self.node.code} is eligible "
                f"({why or 'the registry is empty'}); decline it with reason "
                "no_eligible_experts",
                reason="NO_ELIGIBLE_EXPERTS",
            )
        # The audit names conflicts: it stays in this node's row, never in the proposal.
        conn.execute(
            update(EXCHANGES)
            .where(EXCHANGES.c.exchange_id == exchange_id)
            .values(audit=json.dumps(audit, ensure_ascii=False, sort_keys=True))
        )
        return self.act(conn, exchange_id, ex.Proposed(proposal))

    def confirm(self, conn: Connection, exchange_id: str) -> ExchangeView:
        """Host: reveal ``h`` and confirm the draw. Provider: confirm the drawn will attend."""
        v = self.view(conn, exchange_id)
        if v.role == "provider":
            return self.act(conn, exchange_id, ex.AttendanceConfirmed())
        proposal = v.state.proposal
        if v.state.status is not ex.ExchangeStatus.PROPOSED or proposal is None:
            raise ValidationError(
                f"exchange {exchange_id} is {v.state.status.value}; the host confirms a proposal",
                reason="INVALID_TRANSITION",
            )
        host_value = self._host_value(v)
        result = draws.draw(
            draws.seed(host_value, proposal.provider_value), proposal.tiers, proposal.k
        )
        return self.act(conn, exchange_id, ex.Confirmed(host_value, tuple(result)))

    def _host_value(self, v: ExchangeView) -> bytes:
        value = v.row.host_value
        if value is None:  # pragma: no cover - every host row is created with its value
            raise ValidationError(
                f"exchange {v.exchange_id}: the host's draw value is missing", reason="DRAW_VALUE"
            )
        return bytes(value)

    def decline(
        self, conn: Connection, exchange_id: str, reason: ex.DeclineReason, text: str = ""
    ) -> ExchangeView:
        """Provider: decline a request. Host: decline a proposal (revealing ``h``)."""
        v = self.view(conn, exchange_id)
        host_value = self._host_value(v) if v.role == "host" else None
        return self.act(conn, exchange_id, ex.Declined(reason, text, host_value))

    def cancel(self, conn: Connection, exchange_id: str, text: str = "") -> ExchangeView:
        """Either side calls the exchange off; the host reveals ``h`` if a proposal is open."""
        v = self.view(conn, exchange_id)
        reveal = v.role == "host" and v.state.status is ex.ExchangeStatus.PROPOSED
        return self.act(
            conn, exchange_id, ex.Cancelled(text, self._host_value(v) if reveal else None)
        )

    def request_reschedule(
        self, conn: Connection, exchange_id: str, dates: Iterable[dt.date]
    ) -> ExchangeView:
        """Host: ask to move a confirmed exchange to ``dates``."""
        v = self.view(conn, exchange_id)
        self._expect(v, "host", "ask to reschedule")
        return self.act(conn, exchange_id, ex.RescheduleRequested(tuple(sorted(set(dates)))))

    def answer_reschedule(
        self, conn: Connection, exchange_id: str, *, refuse: str | None = None
    ) -> ExchangeView:
        """Provider: move to the pending dates after re-checking availability, or refuse.

        The re-check (:func:`federation.exchange.reschedule_check`) reads the bookings in this
        transaction, so a move cannot double-book either. ``EXPERT_UNAVAILABLE`` names who
        cannot make which date; the operator may then refuse with a reason.
        """
        v = self.view(conn, exchange_id)
        self._expect(v, "provider", "answer a reschedule")
        if refuse is not None:
            return self.act(conn, exchange_id, ex.RescheduleRefused(refuse))
        self._lock_registry(conn)
        pending = v.state.pending_dates
        year = pending[0].year if pending else v.state.dates[0].year
        context = self.booking_context(conn, year)
        event = ex.reschedule_check(v.state, self.experts(conn), context.bookings)
        return self.act(conn, exchange_id, event)

    def draw_record(self, conn: Connection, exchange_id: str) -> DrawRecord:
        """The draw of an exchange, once the host revealed its value (``NOT_REVEALED`` before).

        Built from the stored signed messages (request, proposal, host's answer), so checking
        it checks what the two nodes actually exchanged.
        """
        v = self.view(conn, exchange_id)
        if v.state.draw is None:
            raise ValidationError(
                f"exchange {exchange_id} is {v.state.status.value}: the host has not revealed its "
                "draw value yet, so the draw cannot be computed",
                reason="NOT_REVEALED",
            )
        return v.state.draw

    def calendar(
        self, conn: Connection, *, expert: str | None = None, bureau: str | None = None
    ) -> tuple[bytes, int, str]:
        """An iCalendar file of the assignments of ``expert`` or ``bureau``.

        Returns (bytes, number of assignments, calendar name). Experts are looked up among
        every exchange this node holds (ours as provider, others' as host).
        """
        if (expert is None) == (bureau is None):
            raise ValidationError("give an expert id or a bureau code", reason="INVALID")
        assignments = [a for v in self.views(conn) if (a := ics.assignment_of(v.state))]
        if expert is not None:
            picked = ics.for_expert(assignments, expert)
            names = [e.name for a in picked for e in a.experts if e.expert_id == expert]
            who = names[0] if names else expert
            name = f"{who} – 监管专家联动 expert exchange"
        else:
            assert bureau is not None
            code = divisions.bureau(bureau).code
            picked = ics.for_bureau(assignments, code)
            name = f"{divisions.bureau(code).bureau_zh} – 专家联动 expert exchange"
        return ics.to_ics(picked, calendar_name=name), len(picked), name

    # --- receiving ------------------------------------------------------------------------------

    def _on_request(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        msg = pb.ExchangeRequest()
        opened.parse(msg)
        request = request_from_message(msg, today=shanghai_date(opened.created_at))
        node = self.node
        sender = opened.header.sender_node
        if node.trust.current.bureau_to_node.get(request.host_bureau) != sender:
            raise ValidationError(
                f"host bureau {request.host_bureau} is not under {sender}", reason="WRONG_PARTY"
            )
        if request.provider_province != node.code:
            raise ValidationError(
                f"the request asks {request.provider_province} for experts, not {node.code}",
                reason="WRONG_RECIPIENT",
            )
        if conn.execute(
            select(EXCHANGES.c.exchange_id).where(EXCHANGES.c.exchange_id == request.request_id)
        ).first():
            raise ValidationError(
                f"exchange {request.request_id} already exists", reason="DUPLICATE_CONFLICT"
            )
        if conn.execute(
            select(EXCHANGES.c.exchange_id).where(
                EXCHANGES.c.host_commitment == request.host_commitment
            )
        ).first():
            # A repeated commitment is a repeated host value, possibly already revealed: the
            # draw could be predicted (federation.draw). Refused before anything is stored.
            raise ValidationError(
                f"exchange {request.request_id} reuses a host draw commitment seen before",
                reason="COMMITMENT_REUSED",
            )
        conn.execute(
            insert(EXCHANGES).values(
                exchange_id=request.request_id,
                role="provider",
                host_bureau=request.host_bureau,
                host_node=sender,
                provider_node=node.code,
                request=opened.payload,
                host_commitment=request.host_commitment,
                status=ex.ExchangeStatus.REQUESTED.value,
                dates=json.dumps([d.isoformat() for d in request.dates]),
                first_date=request.dates[0].isoformat(),
                last_date=request.dates[-1].isoformat(),
                received_at=now,
                created_at=now,
                updated_at=now,
            )
        )
        conn.execute(
            insert(EVENTS).values(
                exchange_id=request.request_id,
                side="host",
                idx=0,
                seen=0,
                kind=REQUEST_KIND,
                message_id=opened.message_id,
                payload=opened.payload,
                created_at=opened.created_at,
                void=False,
            )
        )
        self._refresh(conn, request.request_id, now)
        log.info(
            "exchange %s: %s asks for %d expert(s) on %s; answer with `cccfed exchange propose` "
            "or `decline`",
            request.request_id,
            request.host_bureau,
            request.experts_wanted,
            ", ".join(d.isoformat() for d in request.dates),
        )

    def _on_request_delivered(self, conn: Connection, c: Claimed, vr: VerifiedReceipt) -> None:
        conn.execute(
            update(EXCHANGES)
            .where(EXCHANGES.c.exchange_id == c.conversation)
            .values(received_at=vr.received_at)
        )

    def _on_event(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        msg = EVENT_TYPES[opened.kind]()
        opened.parse(msg)
        exchange_id, event = event_from_message(msg)
        row = conn.execute(select(EXCHANGES).where(EXCHANGES.c.exchange_id == exchange_id)).first()
        if row is None:
            raise ValidationError(
                f"exchange {exchange_id} is unknown here", reason="UNKNOWN_EXCHANGE"
            )
        sender = opened.header.sender_node
        # Only the other party of this exchange may write to it.
        if row.role == "host" and sender == row.provider_node:
            side: Role = "provider"
        elif row.role == "provider" and sender == row.host_node:
            side = "host"
        else:
            raise ValidationError(
                f"{sender} is not the other party of exchange {exchange_id}", reason="WRONG_PARTY"
            )
        records = self._records(conn, exchange_id)
        theirs = sum(1 for r in records if r.side == side)
        ours = len(records) - theirs
        index, seen = int(msg.index), int(msg.seen)  # type: ignore[attr-defined]
        if index != theirs:
            raise ValidationError(
                f"event {index} of the {side} arrived, expected {theirs}", reason="EVENT_GAP"
            )
        if seen > ours:
            raise ValidationError(
                f"the event claims to have seen {seen} of our events; we sent {ours}",
                reason="EVENT_GAP",
            )
        if seen == ours:
            # Not crossed by anything of ours: its author knew what we know, so it lands last
            # in the merged order, right after our current state. Refuse it with the precise
            # reason (INVALID_TRANSITION, INVALID_EVENT, REVEAL_MISMATCH, DRAW_MISMATCH).
            ex.apply(self.view(conn, exchange_id).state, event, actor=side, at=opened.created_at)
        self._insert_event(
            conn, exchange_id, side, index, seen, opened.kind, opened.message_id, msg,
            opened.created_at,
        )  # fmt: skip
        self._refresh(conn, exchange_id, now)


def summary(v: ExchangeView) -> dict[str, Any]:
    """What ``exchange show``/``list`` print about one exchange (shared views only)."""
    st = v.state
    request = st.request
    proposal = st.proposal
    views = {c.expert_id: c.to_dict() for c in proposal.candidates} if proposal else {}
    drawn = st.draw.result if st.draw else ()
    return {
        "exchange_id": v.exchange_id,
        "role": v.role,
        "status": st.status.value,
        "host_bureau": request.host_bureau,
        "host_node": v.row.host_node,
        "provider_node": v.row.provider_node,
        "dates": [d.isoformat() for d in st.dates],
        "pending_dates": [d.isoformat() for d in st.pending_dates] if st.pending_dates else None,
        "place": request.place,
        "holder_uscc": request.holder_uscc,
        "categories": sorted(request.categories),
        "experts_wanted": request.experts_wanted,
        "reply_by": request.reply_by.isoformat(),
        "candidates": [views[i] for i in proposal.candidate_ids] if proposal else None,
        "k": proposal.k if proposal else None,
        "drawn": [views[i] for i in drawn],
        "assigned": list(st.assigned),
        "decline_reason": st.decline_reason.value if st.decline_reason else None,
        "revision": st.revision,
        "received_at": v.row.received_at,
        "history": state_to_dict(st)["history"],
        "void_events": [r.kind for r in v.void],
    }


__all__ = [
    "BOOKINGS",
    "EVENTS",
    "EVENT_TYPES",
    "EXCHANGES",
    "EXPERTS",
    "REQUEST_KIND",
    "SERVICE",
    "BookingContext",
    "EventRecord",
    "ExchangeView",
    "ExpertExchange",
    "event_from_message",
    "event_to_message",
    "expert_from_message",
    "expert_of",
    "expert_to_message",
    "fold_events",
    "request_from_message",
    "request_to_message",
    "state_to_dict",
    "summary",
]
