"""Assistance, verification and lead requests on a node: the shell around federation.requests.

What this module adds to the pure rules:

* **Storage.** Every event of a request — the Request itself and each lifecycle message, from
  either party — is kept as its exact message bytes in ``request_events`` with its place in its
  author's stream (``idx``) and what its author had seen of the other party (``seen``). The view
  in ``requests`` is *derived*: :func:`fold_request` merges both streams in one causal order
  (:mod:`federation.conversation`) and applies :func:`federation.requests.apply` over it, so
  both nodes, holding the same events, compute the same view — status, due date, history.
* **Sending.** A local action is checked against the current view (refused with
  ``INVALID_TRANSITION`` and nothing stored), then sealed and queued in the same transaction as
  its event row; the conversation is delivered in order.
* **Receiving.** A peer's event is stored and the view recomputed in the inbox transaction. An
  event the rules refuse is refused back to its sender (nothing stored) — unless its author could
  not have known better because it crossed one of ours on the wire; then both nodes keep it as
  *void*, alike.
* **Time.** The 15-day period starts at the receipt's ``received_at``, the same instant on both
  nodes; event times are the envelopes' signed ``created_at``. Due dates use the node's holiday
  calendar (package data plus imported schedules) and are recomputed when a schedule is imported.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from google.protobuf.message import DecodeError, Message
from sqlalchemy import and_, insert, select, tuple_, update
from sqlalchemy.engine import Connection

from cccfed.v1 import assistance_pb2 as pb
from federation import conversation, requests
from federation.envelope import Opened, VerifiedReceipt
from federation.errors import FederationError, ValidationError
from federation.holidays import HolidayCalendar, YearSchedule
from federation.periods import TZ, Due, days_left, is_overdue, shanghai_date
from node import calendar_store
from node.store.models import BulletinRead, BulletinRow, Reminder, RequestEvent, RequestRow
from node.store.ops import Claimed, insert_conversation_event, outbox_created_at

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger(__name__)

REQUESTS = RequestRow.__table__  # type: ignore[attr-defined]
EVENTS = RequestEvent.__table__  # type: ignore[attr-defined]
REMINDERS = Reminder.__table__  # type: ignore[attr-defined]
BULLETINS = BulletinRow.__table__  # type: ignore[attr-defined]
READS = BulletinRead.__table__  # type: ignore[attr-defined]

SERVICE = "assistance"
REQUEST_KIND = "cccfed.v1.Request"
EVENT_TYPES: dict[str, type[Message]] = {
    m.DESCRIPTOR.full_name: m
    for m in (
        pb.RequestAccepted,
        pb.RequestDeclined,
        pb.RequestWithdrawn,
        pb.ProgressReport,
        pb.ExtensionRequested,
        pb.ExtensionDecided,
        pb.Reply,
        pb.RequestClosed,
    )
}
BULLETIN_KIND = "cccfed.v1.Bulletin"
BULLETIN_READ_KIND = "cccfed.v1.BulletinRead"

#: Reminders: days before the due date, and once overdue.
DEFAULT_REMINDER_DAYS = (3, 1)

Side = conversation.Side


def _other(side: Side) -> Side:
    return "responder" if side == "requester" else "requester"


@dataclass(frozen=True)
class EventRecord:
    side: Side
    idx: int
    seen: int
    kind: str
    message_id: str
    payload: bytes
    created_at: dt.datetime


@dataclass(frozen=True)
class RequestView:
    """A request as this node sees it: the stored row plus the derived state."""

    row: Any
    state: requests.RequestState
    events: tuple[EventRecord, ...]
    void: tuple[EventRecord, ...]

    @property
    def role(self) -> Side:
        return "requester" if self.row.role == "requester" else "responder"

    @property
    def peer(self) -> str:
        return str(self.row.responder_node if self.role == "requester" else self.row.requester_node)


def _event_of(record: EventRecord) -> requests.Event:
    cls = EVENT_TYPES.get(record.kind)
    if cls is None:
        raise ValidationError(f"unknown event kind {record.kind}", reason="INVALID_EVENT")
    msg = cls()
    try:
        msg.ParseFromString(record.payload)
    except DecodeError as e:
        raise ValidationError("stored event does not parse", reason="INVALID_EVENT") from e
    _, event = requests.event_from_message(msg)
    return event


def fold_events(
    request: requests.Request,
    records: Iterable[EventRecord],
    received_at: dt.datetime | None,
    calendar: HolidayCalendar,
) -> conversation.Folded[requests.RequestState, EventRecord]:
    """The view both nodes compute from the same events (see the module docstring)."""

    def step(
        state: requests.RequestState, e: conversation.Event[EventRecord]
    ) -> requests.RequestState:
        rec = e.payload
        if rec.kind == REQUEST_KIND:
            state = requests.apply(
                state, requests.Sent(), actor="requester", at=rec.created_at, calendar=calendar
            )
            if received_at is not None:
                state = requests.apply(
                    state,
                    requests.Delivered(received_at=received_at),
                    actor="responder",
                    at=received_at,
                    calendar=calendar,
                )
            return state
        return requests.apply(
            state, _event_of(rec), actor=e.side, at=rec.created_at, calendar=calendar
        )

    events = [conversation.Event(r.side, r.idx, r.seen, r) for r in records]
    return conversation.fold(requests.start(request), events, step)


#: Statuses in which the responder owes a reply (the request is an open obligation).
OPEN_STATUSES = (requests.RequestStatus.DELIVERED.value, requests.RequestStatus.ACCEPTED.value)


def obligation_of(r: Any, now: dt.datetime) -> dict[str, Any] | None:
    """The obligation a ``requests`` row stands for at ``now``, or None if it owes nothing."""
    if r.status not in OPEN_STATUSES or r.due_date is None or r.due_ends_at is None:
        return None
    due = Due.from_dict(json.loads(r.view)["due"]) if r.view else None
    if due is None:
        return None
    return {
        "request_id": r.request_id,
        "direction": "owed" if r.role == "responder" else "awaiting",
        "counterpart": r.requester_node if r.role == "responder" else r.responder_node,
        "bureau": r.assigned_bureau or r.target_bureau,
        "requesting_bureau": r.requesting_bureau,
        "kind": r.kind,
        "holder": r.holder_name,
        "status": r.status,
        "due_date": r.due_date,
        "due_ends_at": r.due_ends_at,
        "provisional": bool(r.due_provisional),
        "days_left": days_left(due, now),
        "overdue": is_overdue(due, now),
    }


class Assistance:
    """The request capability of one node."""

    @classmethod
    def views_only(cls) -> Assistance:
        """An instance for recomputing stored views, with no node attached."""
        self = cls.__new__(cls)
        self.max_attachment_bytes = requests.DEFAULT_MAX_ATTACHMENT_BYTES
        self.reminder_days = DEFAULT_REMINDER_DAYS
        return self

    def __init__(
        self, node: Node, *, reminder_days: tuple[int, ...] = DEFAULT_REMINDER_DAYS
    ) -> None:
        self.node = node
        self.reminder_days = tuple(sorted(set(reminder_days), reverse=True))
        self.max_attachment_bytes = min(
            requests.DEFAULT_MAX_ATTACHMENT_BYTES, node.cfg.limits.max_message_bytes
        )
        reg = node.registry
        reg.register(SERVICE, REQUEST_KIND, self._on_request, self._on_request_delivered)
        for kind in EVENT_TYPES:
            reg.register(SERVICE, kind, self._on_event)
        reg.register(SERVICE, BULLETIN_KIND, self._on_bulletin)
        reg.register(SERVICE, BULLETIN_READ_KIND, self._on_bulletin_read)

    # --- reading ------------------------------------------------------------------------------

    def calendar(self, conn: Connection) -> HolidayCalendar:
        return calendar_store.load_calendar(conn)

    def _row(self, conn: Connection, request_id: str) -> Any:
        row = conn.execute(select(REQUESTS).where(REQUESTS.c.request_id == request_id)).first()
        if row is None:
            raise ValidationError(f"request {request_id} does not exist here", reason="NOT_FOUND")
        return row

    def _records(self, conn: Connection, request_id: str) -> list[EventRecord]:
        rows = conn.execute(
            select(EVENTS).where(EVENTS.c.request_id == request_id).order_by(EVENTS.c.id)
        ).all()
        return [
            EventRecord(r.side, r.idx, r.seen, r.kind, r.message_id, bytes(r.payload), r.created_at)
            for r in rows
        ]

    def view(self, conn: Connection, request_id: str) -> RequestView:
        row = self._row(conn, request_id)
        request = requests.request_from_message(
            pb.Request.FromString(bytes(row.request)),
            max_attachment_bytes=self.max_attachment_bytes,
        )
        records = self._records(conn, request_id)
        if not records:  # a draft
            return RequestView(row, requests.start(request), (), ())
        folded = fold_events(request, records, row.received_at, self.calendar(conn))
        return RequestView(
            row,
            folded.state,
            tuple(e.payload for e in folded.applied),
            tuple(e.payload for e in folded.void),
        )

    def _refresh(self, conn: Connection, request_id: str, now: dt.datetime) -> RequestView:
        """Recompute the derived view and store it in the request's row."""
        v = self.view(conn, request_id)
        st = v.state
        void_ids = {r.message_id for r in v.void}
        conn.execute(
            update(EVENTS)
            .where(EVENTS.c.request_id == request_id)
            .values(void=EVENTS.c.message_id.in_(void_ids) if void_ids else False)
        )
        conn.execute(
            update(REQUESTS)
            .where(REQUESTS.c.request_id == request_id)
            .values(
                status=st.status.value,
                assigned_bureau=st.assigned_bureau,
                due_date=st.due.due_date.isoformat() if st.due else None,
                due_ends_at=st.due.ends_at if st.due else None,
                due_provisional=bool(st.due and st.due.provisional),
                view=json.dumps(st.to_dict(), ensure_ascii=False, sort_keys=True),
                updated_at=now,
            )
        )
        return v  # state and void set are derived and current; callers read them, not row.status

    # --- creating and sending -------------------------------------------------------------

    def parse_new(self, data: dict[str, Any], *, read_file: Any = None) -> requests.Request:
        node = self.node
        request = requests.parse_request(
            data,
            today=shanghai_date(node.clock()),
            request_id=str(uuid.uuid4()),
            requesting_node=node.code,
            read_file=read_file,
            max_attachment_bytes=self.max_attachment_bytes,
        )
        node.trust.current.node_for_bureau(request.target_bureau)  # a member serves it
        return request

    def create(self, conn: Connection, request: requests.Request, *, send: bool = True) -> str:
        """Store a new request (as a draft, or sent at once) in the caller's transaction."""
        node = self.node
        now = node.clock()
        target_node = node.trust.current.node_for_bureau(request.target_bureau)
        if target_node == node.code:
            raise ValidationError(
                f"target bureau {request.target_bureau} is served by this node itself",
                reason="INVALID_FIELD",
            )
        msg = request.to_message()
        conn.execute(
            insert(REQUESTS).values(
                request_id=request.request_id,
                role="requester",
                kind=request.kind.value,
                requesting_bureau=request.requesting_bureau,
                requester_node=node.code,
                target_bureau=request.target_bureau,
                responder_node=target_node,
                holder_name=request.holder.name,
                holder_uscc=request.holder.uscc,
                request=msg.SerializeToString(deterministic=True),
                status=requests.RequestStatus.DRAFT.value,
                linked_request_id=request.linked_request_id,
                created_at=now,
                updated_at=now,
            )
        )
        if send:
            self._send_request(conn, request.request_id)
        return request.request_id

    def _send_request(self, conn: Connection, request_id: str) -> None:
        node = self.node
        row = self._row(conn, request_id)
        if row.role != "requester" or row.status != requests.RequestStatus.DRAFT.value:
            raise ValidationError(
                f"request {request_id} is {row.status}; only a draft of ours can be sent",
                reason="INVALID_TRANSITION",
            )
        msg = pb.Request.FromString(bytes(row.request))
        mid, _ = node.enqueue_in(
            conn,
            row.responder_node,
            SERVICE,
            msg,
            recipient_bureau=row.target_bureau,
            sender_bureau=row.requesting_bureau,
            correlation_id=request_id,
            claim=True,
        )
        created = self._sent_at(conn, mid)
        self._insert_event(conn, request_id, "requester", 0, 0, REQUEST_KIND, mid, msg, created)
        self._refresh(conn, request_id, node.clock())

    def send_draft(self, conn: Connection, request_id: str) -> None:
        self._send_request(conn, request_id)

    def _sent_at(self, conn: Connection, message_id: str) -> dt.datetime:
        return outbox_created_at(conn, message_id)

    def _insert_event(
        self,
        conn: Connection,
        request_id: str,
        side: Side,
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
            key={"request_id": request_id},
            side=side,
            idx=idx,
            seen=seen,
            kind=kind,
            message_id=message_id,
            payload=msg.SerializeToString(deterministic=True),
            created_at=created_at,
        )

    def act(self, conn: Connection, request_id: str, event: requests.Event) -> RequestView:
        """Apply a local action: check it, store it, send it — or refuse it, changing nothing."""
        node = self.node
        before = self.view(conn, request_id)
        role = before.role
        if not before.events:
            raise ValidationError(
                f"request {request_id} is a draft; send it first", reason="INVALID_TRANSITION"
            )
        # 1. The rules, against what we know now (the same check the peer will make).
        requests.apply(
            before.state, event, actor=role, at=node.clock(), calendar=self.calendar(conn)
        )
        # 2. Our next place in our stream, and how much of theirs we have seen.
        records = self._records(conn, request_id)
        idx = sum(1 for r in records if r.side == role)
        seen = sum(1 for r in records if r.side != role)
        msg = requests.event_to_message(request_id, event)
        msg.index = idx  # type: ignore[attr-defined]
        msg.seen = seen  # type: ignore[attr-defined]
        if isinstance(msg, pb.RequestAccepted) and before.state.due is not None:
            # Our count of the due date, for the requester to compare with its own (§9.5).
            msg.due_date = before.state.due.due_date.isoformat()
        bureau = before.row.requesting_bureau if role == "responder" else before.row.target_bureau
        mid, _ = node.enqueue_in(
            conn,
            before.peer,
            SERVICE,
            msg,
            recipient_bureau=bureau,
            correlation_id=request_id,
            claim=True,
        )
        kind = msg.DESCRIPTOR.full_name
        self._insert_event(
            conn, request_id, role, idx, seen, kind, mid, msg, self._sent_at(conn, mid)
        )
        after = self._refresh(conn, request_id, node.clock())
        if any(r.message_id == mid for r in after.void):
            raise ValidationError(
                f"{event.name} is not allowed on request {request_id} now",
                reason="INVALID_TRANSITION",
            )
        return after

    # --- receiving --------------------------------------------------------------------------

    def _on_request(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        msg = pb.Request()
        opened.parse(msg)
        request = requests.request_from_message(msg, max_attachment_bytes=self.max_attachment_bytes)
        tm = self.node.trust.current
        sender = opened.header.sender_node
        if tm.bureau_to_node.get(request.requesting_bureau) != sender:
            raise ValidationError(
                f"requesting bureau {request.requesting_bureau} is not under {sender}",
                reason="WRONG_PARTY",
            )
        if request.target_bureau != (
            opened.header.recipient_bureau or opened.header.recipient_node
        ):
            raise ValidationError(
                "the request's target bureau differs from the envelope's", reason="INVALID_FIELD"
            )
        exists = conn.execute(
            select(REQUESTS.c.request_id).where(REQUESTS.c.request_id == request.request_id)
        ).first()
        if exists is not None:
            raise ValidationError(
                f"request {request.request_id} already exists", reason="DUPLICATE_CONFLICT"
            )
        conn.execute(
            insert(REQUESTS).values(
                request_id=request.request_id,
                role="responder",
                kind=request.kind.value,
                requesting_bureau=request.requesting_bureau,
                requester_node=sender,
                target_bureau=request.target_bureau,
                responder_node=self.node.code,
                holder_name=request.holder.name,
                holder_uscc=request.holder.uscc,
                request=opened.payload,
                status=requests.RequestStatus.SENT.value,
                received_at=now,  # the receipt's received_at: starts the reply period
                linked_request_id=request.linked_request_id,
                created_at=now,
                updated_at=now,
            )
        )
        self._insert_event(
            conn,
            request.request_id,
            "requester",
            0,
            0,
            REQUEST_KIND,
            opened.message_id,
            msg,
            opened.created_at,
        )
        self._refresh(conn, request.request_id, now)

    def _on_request_delivered(self, conn: Connection, c: Claimed, vr: VerifiedReceipt) -> None:
        request_id = c.conversation
        conn.execute(
            update(REQUESTS)
            .where(REQUESTS.c.request_id == request_id)
            .values(received_at=vr.received_at)
        )
        self._refresh(conn, request_id, self.node.clock())

    def _on_event(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        cls = EVENT_TYPES[opened.kind]
        msg = cls()
        opened.parse(msg)
        request_id, event = requests.event_from_message(
            msg, max_attachment_bytes=self.max_attachment_bytes
        )
        row = conn.execute(select(REQUESTS).where(REQUESTS.c.request_id == request_id)).first()
        if row is None:
            raise ValidationError(f"request {request_id} is unknown here", reason="UNKNOWN_REQUEST")
        sender = opened.header.sender_node
        # Only the other party of this request may write to it.
        if row.role == "requester" and sender == row.responder_node:
            side: Side = "responder"
        elif row.role == "responder" and sender == row.requester_node:
            side = "requester"
        else:
            raise ValidationError(
                f"{sender} is not the other party of request {request_id}", reason="WRONG_PARTY"
            )
        if row.role == "requester" and row.received_at is None:
            # The responder acts on a request whose receipt we have not stored yet (our send
            # is being retried and will get the original receipt): ask it to try again later.
            raise FederationError(
                f"request {request_id}: its receipt is not recorded here yet",
                reason="RECEIPT_PENDING",
            )
        records = self._records(conn, request_id)
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
        self._insert_event(
            conn,
            request_id,
            side,
            index,
            seen,
            opened.kind,
            opened.message_id,
            msg,
            opened.created_at,
        )
        after = self._refresh(conn, request_id, now)
        if any(r.message_id == opened.message_id for r in after.void) and seen == ours:
            # Not crossed by anything of ours: the sender knew what we know; the rules refuse it.
            raise ValidationError(
                f"{event.name} from {side} is not allowed on request {request_id} "
                f"({after.state.status.value})",
                reason="INVALID_TRANSITION",
            )
        if isinstance(event, requests.Declined) and row.role == "requester":
            self._maybe_link(conn, after, now)
        if isinstance(msg, pb.RequestAccepted) and msg.due_date and row.role == "requester":
            self._compare_due_date(after, msg.due_date, sender, opened.message_id)

    def _compare_due_date(self, v: RequestView, theirs: str, peer: str, message_id: str) -> None:
        """Report (not refuse) a responder whose count of the due date differs from ours: the
        two nodes' holiday calendars differ, and each side would hold the other to another
        date. Nothing in the request changes; the operators settle the calendars."""
        due = v.state.due
        ours = due.due_date.isoformat() if due is not None else ""
        if not ours or ours == theirs:
            return
        self.node.metrics.due_date_mismatch(peer)
        log.error(
            "request %s: %s counts the reply due on %s, this node counts %s%s; the holiday "
            "calendars differ: compare `cccfed calendar show YEAR` on both nodes",
            v.row.request_id,
            peer,
            theirs,
            ours,
            " (provisional here)" if due is not None and due.provisional else "",
            extra={"message_id": message_id, "peer": peer, "reason": "DUE_DATE_MISMATCH"},
        )

    def _maybe_link(self, conn: Connection, v: RequestView, now: dt.datetime) -> None:
        """Declined for wrong jurisdiction, naming the right bureau: draft the linked request."""
        st = v.state
        if st.status != requests.RequestStatus.DECLINED or not st.suggested_bureau:
            return
        original = requests.request_from_message(
            pb.Request.FromString(bytes(v.row.request)),
            max_attachment_bytes=self.max_attachment_bytes,
        )
        try:
            linked = requests.linked_request(
                original, st, request_id=str(uuid.uuid4()), today=shanghai_date(now)
            )
            self.create(conn, linked, send=False)
        except FederationError as e:  # e.g. a suggested bureau no member serves: no draft
            log.warning("no linked request drafted for %s: %s", v.row.request_id, e.diagnostics())

    # --- bulletins -------------------------------------------------------------------------

    def send_bulletin(self, conn: Connection, bulletin: requests.Bulletin) -> list[str]:
        node = self.node
        now = node.clock()
        msg = bulletin.to_message()
        members = sorted(c for c in node.trust.current.members if c != node.code)
        conn.execute(
            insert(BULLETINS).values(
                bulletin_id=bulletin.bulletin_id,
                sender_node=node.code,
                title=bulletin.title,
                bulletin=msg.SerializeToString(deterministic=True),
                sent_at=now,
            )
        )
        for code in members:
            node.enqueue_in(
                conn, code, SERVICE, msg, correlation_id=bulletin.bulletin_id, claim=True
            )
        return members

    def _on_bulletin(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        msg = pb.Bulletin()
        opened.parse(msg)
        bulletin = requests.bulletin_from_message(
            msg, max_attachment_bytes=self.max_attachment_bytes
        )
        if conn.execute(
            select(BULLETINS.c.bulletin_id).where(BULLETINS.c.bulletin_id == bulletin.bulletin_id)
        ).first():
            raise ValidationError(
                f"bulletin {bulletin.bulletin_id} already exists", reason="DUPLICATE_CONFLICT"
            )
        conn.execute(
            insert(BULLETINS).values(
                bulletin_id=bulletin.bulletin_id,
                sender_node=opened.header.sender_node,
                title=bulletin.title,
                bulletin=opened.payload,
                sent_at=opened.created_at,
                received_at=now,
            )
        )

    def mark_read(self, conn: Connection, bulletin_id: str) -> None:
        node = self.node
        row = conn.execute(select(BULLETINS).where(BULLETINS.c.bulletin_id == bulletin_id)).first()
        if row is None:
            raise ValidationError(f"bulletin {bulletin_id} does not exist here", reason="NOT_FOUND")
        if row.sender_node == node.code:
            raise ValidationError("this node sent that bulletin", reason="INVALID")
        if row.read_at is not None:
            return  # acknowledged once; again changes nothing
        conn.execute(
            update(BULLETINS)
            .where(BULLETINS.c.bulletin_id == bulletin_id)
            .values(read_at=node.clock())
        )
        node.enqueue_in(
            conn,
            row.sender_node,
            SERVICE,
            pb.BulletinRead(bulletin_id=bulletin_id),
            correlation_id=bulletin_id,
            claim=True,
        )

    def _on_bulletin_read(self, conn: Connection, opened: Opened, now: dt.datetime) -> None:
        msg = pb.BulletinRead()
        opened.parse(msg)
        row = conn.execute(
            select(BULLETINS).where(BULLETINS.c.bulletin_id == msg.bulletin_id)
        ).first()
        if row is None or row.sender_node != self.node.code:
            raise ValidationError(
                f"bulletin {msg.bulletin_id} was not sent by this node", reason="UNKNOWN_BULLETIN"
            )
        sender = opened.header.sender_node
        done = conn.execute(
            select(READS.c.node).where(
                and_(READS.c.bulletin_id == msg.bulletin_id, READS.c.node == sender)
            )
        ).first()
        if done is None:
            conn.execute(
                insert(READS).values(
                    bulletin_id=msg.bulletin_id, node=sender, read_at=opened.created_at
                )
            )

    # --- obligations, reminders, escalation ----------------------------------------------

    def obligations(
        self,
        conn: Connection,
        now: dt.datetime,
        *,
        direction: str | None = None,
        overdue: bool = False,
        due_by: dt.datetime | None = None,
        limit: int | None = None,
        after: tuple[dt.datetime, str] | None = None,
    ) -> list[dict[str, Any]]:
        """Open requests with a due date: what this node owes and what it is owed.

        Ordered by due instant (then request id), most urgent first. ``direction`` ("owed" or
        "awaiting") keeps one side, ``overdue`` only the overdue ones, ``due_by`` those whose
        period ends at or before that instant; ``limit`` and ``after`` (the ``(due_ends_at,
        request_id)`` of the last row of the previous page) page through them. Each (status,
        role) pair is one range of the index ``ix_requests_open_due`` read in order, so a page
        costs the same whatever the number of open requests.
        """
        roles = {"owed": ["responder"], "awaiting": ["requester"]}.get(
            direction or "", ["responder", "requester"]
        )
        bound = now if overdue else due_by
        if overdue and due_by is not None:
            bound = min(now, due_by)
        rows: list[Any] = []
        for status in OPEN_STATUSES:
            for role in roles:
                q = select(REQUESTS).where(
                    REQUESTS.c.status == status,
                    REQUESTS.c.role == role,
                    REQUESTS.c.due_ends_at.is_not(None),
                )
                if bound is not None:
                    q = q.where(REQUESTS.c.due_ends_at <= bound)
                if after is not None:
                    q = q.where(tuple_(REQUESTS.c.due_ends_at, REQUESTS.c.request_id) > after)
                q = q.order_by(REQUESTS.c.due_ends_at, REQUESTS.c.request_id)
                if limit is not None:
                    q = q.limit(limit)
                rows.extend(conn.execute(q).all())
        rows.sort(key=lambda r: (r.due_ends_at, r.request_id))
        out = []
        for r in rows:
            ob = obligation_of(r, now)
            if ob is None or (overdue and not ob["overdue"]):
                continue
            out.append(ob)
            if limit is not None and len(out) == limit:
                break
        return out

    def sweep(self, conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
        """Produce each due reminder once (idempotent: a (request, key, due date) is stored)."""
        produced = []
        # Only periods ending by the end of the furthest reminder day can need one: days_left
        # <= d means the due date is at most today + d, i.e. the period ends by 24:00 of it.
        horizon = max((*self.reminder_days, 0))
        day_after = shanghai_date(now) + dt.timedelta(days=horizon + 1)
        due_by = dt.datetime.combine(day_after, dt.time(0), tzinfo=TZ).astimezone(dt.UTC)
        for ob in self.obligations(conn, now, due_by=due_by):
            # The most urgent reminder that applies now; each once per request and due date.
            if ob["overdue"]:
                keys = ["overdue"]
            else:
                keys = [f"due-in-{d}d" for d in self.reminder_days if ob["days_left"] <= d][-1:]
            for key in keys:
                done = conn.execute(
                    select(REMINDERS.c.key).where(
                        and_(
                            REMINDERS.c.request_id == ob["request_id"],
                            REMINDERS.c.key == key,
                            REMINDERS.c.due_date == ob["due_date"],
                        )
                    )
                ).first()
                if done is not None:
                    continue
                conn.execute(
                    insert(REMINDERS).values(
                        request_id=ob["request_id"],
                        key=key,
                        due_date=ob["due_date"],
                        produced_at=now,
                    )
                )
                log.warning(
                    "reminder %s: request %s (%s, %s) due %s",
                    key,
                    ob["request_id"],
                    ob["direction"],
                    ob["counterpart"],
                    ob["due_date"],
                )
                produced.append({**ob, "reminder": key})
        return produced

    def escalation(self, conn: Connection, now: dt.datetime) -> list[dict[str, Any]]:
        """Overdue obligations per counterpart province: counts, oldest due date, per bureau."""
        groups: dict[tuple[str, str], dict[str, Any]] = {}
        for ob in self.obligations(conn, now, overdue=True):
            if not ob["overdue"]:
                continue
            key = (ob["direction"], ob["counterpart"])
            g = groups.setdefault(
                key,
                {
                    "direction": ob["direction"],
                    "province": ob["counterpart"],
                    "overdue": 0,
                    "oldest_due_date": ob["due_date"],
                    "oldest_request_id": ob["request_id"],
                    "bureaus": {},
                },
            )
            g["overdue"] += 1
            if ob["due_date"] < g["oldest_due_date"]:
                g["oldest_due_date"], g["oldest_request_id"] = ob["due_date"], ob["request_id"]
            g["bureaus"][ob["bureau"]] = g["bureaus"].get(ob["bureau"], 0) + 1
        return sorted(groups.values(), key=lambda g: (g["direction"], g["province"]))

    @staticmethod
    def escalation_csv(report: list[dict[str, Any]]) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(
            ["direction", "province", "bureau", "overdue", "oldest_due_date", "oldest_request_id"]
        )
        for g in report:
            w.writerow(
                [
                    g["direction"],
                    g["province"],
                    "*",
                    g["overdue"],
                    g["oldest_due_date"],
                    g["oldest_request_id"],
                ]
            )
            for bureau, n in sorted(g["bureaus"].items()):
                w.writerow([g["direction"], g["province"], bureau, n, "", ""])
        return buf.getvalue()

    # --- calendar -------------------------------------------------------------------------

    def recompute_open(self, conn: Connection, now: dt.datetime) -> int:
        """Recompute every open request's due date (after a holiday schedule was imported)."""
        open_ids = (
            conn.execute(
                select(REQUESTS.c.request_id).where(
                    REQUESTS.c.status.in_(
                        [
                            requests.RequestStatus.DELIVERED.value,
                            requests.RequestStatus.ACCEPTED.value,
                        ]
                    )
                )
            )
            .scalars()
            .all()
        )
        for request_id in open_ids:
            self._refresh(conn, request_id, now)
        return len(open_ids)


def _recompute_after_import(conn: Connection, schedule: YearSchedule, now: dt.datetime) -> None:
    # Deadlines in the imported year stop being provisional (or move) in the same transaction
    # that stores the schedule; the views only need the store, so no node has to be running.
    Assistance.views_only().recompute_open(conn, now)


calendar_store.recompute_hook.append(_recompute_after_import)
