"""Two or more in-process nodes with a simulated transport, for request tests without servers.

Nodes are real :class:`node.runtime.Node` objects (keys, manifest, store, registry) that never
start a server or a delivery worker. Messages they queue stay in their outboxes; the test moves
them one at a time with :func:`deliver_next`, which does exactly what the real path does:

* the receiver's intake as ``node/server.py`` ``EnvelopeIntake`` runs it (``open_envelope`` with
  the service's kinds, then ``inbox_accept`` with the kind's handler in a writer job);
* on the sender, the receipt verified with ``verify_receipt`` and recorded as
  ``DeliveryWorker._deliver`` records it (``outbox_delivered`` plus the kind's delivered hook in
  the same transaction); a refusal marks the row ``failed`` with its reason, as the worker does.

Pending rows (``queued``/``sending``) to one recipient, in id order, are "in flight"; the oldest
goes first, so each conversation is delivered in order, like the real outbox.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tomllib
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import select, update
from sqlalchemy.engine import Connection

from federation import requests
from federation.envelope import open_envelope, verify_receipt
from federation.errors import FederationError
from node.assistance import RequestView
from node.config import load_config
from node.runtime import Node
from node.status import REASON_CODES, TRANSIENT_CODES, TRANSIENT_REASONS
from node.store.ops import (
    OUTBOX,
    QUEUED,
    RETRY,
    SENDING,
    Claimed,
    inbox_accept,
    outbox_delivered,
    outbox_failed,
    outbox_retry_later,
)

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE_REQUEST = ROOT / "docs" / "examples" / "assistance-request.toml"
HOLIDAYS_2027 = ROOT / "tests" / "data" / "holidays-2027.json"

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"


class Clock:
    """An injectable clock: ``Node(cfg, clock=clock)``; move it with :meth:`set`/:meth:`advance`."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at

    def set(self, at: datetime) -> None:
        self.at = at

    def advance(self, **delta: float) -> None:
        self.at += timedelta(**delta)


def node_at(
    fed_root: Path, code: str, store: Path, clock: Callable[[], datetime] | None = None
) -> Node:
    """Node ``code`` of the federation in ``fed_root`` on its own SQLite store file ``store``."""
    cfg = dataclasses.replace(
        load_config(fed_root / "nodes" / code / "node.toml"), store_url=f"sqlite:///{store}"
    )
    return Node(cfg) if clock is None else Node(cfg, clock=clock)


def write(node: Node, job: Callable[[Connection], T]) -> T:
    """One write transaction on the node's writer; messages it queues stay ``queued``."""
    return asyncio.run(node.run_and_send(job))


def read(node: Node, job: Callable[[Connection], T]) -> T:
    with node.reader.connect() as conn:
        return job(conn)


# --- requests ------------------------------------------------------------------------------------


def example_data(**overrides: Any) -> dict[str, Any]:
    """The example request file as ``request new`` reads it, with fields replaced."""
    data = tomllib.loads(EXAMPLE_REQUEST.read_text(encoding="utf-8"))
    data.update(overrides)
    return data


def new_request(node: Node, **overrides: Any) -> str:
    """Create and send the example request from ``node``; returns its id (the row is queued)."""
    request = node.assistance.parse_new(example_data(**overrides))
    return write(node, lambda conn: node.assistance.create(conn, request))


def act(node: Node, request_id: str, event: requests.Event) -> RequestView:
    """A local lifecycle action, as ``cccfed request …`` runs it (refusals raise)."""
    return write(node, lambda conn: node.assistance.act(conn, request_id, event))


def view(node: Node, request_id: str) -> RequestView:
    return read(node, lambda conn: node.assistance.view(conn, request_id))


def accept(bureau: str = "320500") -> requests.Accepted:
    return requests.Accepted(
        assigned_bureau=bureau, assignee=requests.Contact(name="李强", phone="0512-6522 1000")
    )


def progress(text: str = "已联系维修中心，正在核对出库记录。") -> requests.ProgressReported:
    return requests.ProgressReported(text=text)


def ask_extension(days: int = 10) -> requests.ExtensionRequested:
    return requests.ExtensionRequested(reason="需调取海关核销记录", additional_days=days)


def decide_extension(granted: bool) -> requests.ExtensionDecided:
    return requests.ExtensionDecided(granted=granted, reason="" if granted else "时间不宜再延")


def reply(question_ids: tuple[str, ...] = ("q1", "q2")) -> requests.Replied:
    return requests.Replied(
        findings=tuple(
            requests.Finding(
                question_id=q,
                finding=f"{q}: 经现场核查属实",
                conclusion=requests.Conclusion.CONFIRMED,
            )
            for q in question_ids
        ),
        follow_ups=(
            requests.FollowUp(action=requests.FollowUpAction.RECTIFICATION, note="责令整改"),
        ),
        summary="维修中心确有使用上述零部件。",
    )


def decline() -> requests.Declined:
    return requests.Declined(requests.DeclineReason.OTHER, "该单位已注销，无法核查。")


def withdraw() -> requests.Withdrawn:
    return requests.Withdrawn("申请单位已补充材料，无需协查。")


def close() -> requests.Closed:
    return requests.Closed("收到反馈，结案。")


# --- the simulated transport ----------------------------------------------------------------------


def in_flight(sender: Node, recipient: str) -> list[Any]:
    """The sender's rows on their way to ``recipient``, oldest first."""
    return read(
        sender,
        lambda conn: list(
            conn.execute(
                select(OUTBOX)
                .where(
                    OUTBOX.c.recipient_node == recipient,
                    OUTBOX.c.state.in_((QUEUED, SENDING, RETRY)),
                )
                .order_by(OUTBOX.c.id)
            ).all()
        ),
    )


def outbox_row(node: Node, message_id: str) -> Any:
    return read(
        node,
        lambda conn: conn.execute(select(OUTBOX).where(OUTBOX.c.message_id == message_id)).one(),
    )


def _claim(s: Connection, row_id: int, replica: str, now: datetime) -> None:
    # What outbox_claim does to the row the worker takes.
    s.execute(
        update(OUTBOX)
        .where(OUTBOX.c.id == row_id)
        .values(
            state=SENDING,
            claimed_by=replica,
            lease_until=now + timedelta(seconds=30),
            attempts=OUTBOX.c.attempts + 1,
        )
    )


def receive(receiver: Node, sender_code: str, envelope: bytes, service: str) -> bytes:
    """The receiver's intake, as ``EnvelopeIntake`` runs it; returns the receipt or raises."""
    opened = open_envelope(
        envelope,
        receiver.trust.current,
        self_node=receiver.code,
        peer_node=sender_code,
        now=receiver.clock(),
        policy=receiver.policy,
        allowed_kinds=receiver.kinds_for(service),
    )
    apply = receiver.handler_for(opened.kind)
    receipt: bytes = receiver.writer.submit(
        lambda s: inbox_accept(
            s,
            opened,
            signer=receiver.signer,
            self_node=receiver.code,
            now=receiver.clock(),
            apply=apply,
        )
    ).result()
    return receipt


def record_receipt(sender: Node, c: Claimed, receipt: bytes) -> None:
    """The sender's side of a delivery, as ``DeliveryWorker._deliver`` records it."""
    vr = verify_receipt(
        receipt,
        c.envelope,
        sender.trust.current,
        expected_receiver=c.recipient_node,
        at=sender.clock(),
    )
    hook = sender.registry.delivered_hooks.get(c.kind)

    def record(s: Connection) -> None:
        first = outbox_delivered(
            s,
            row_id=c.id,
            message_id=c.message_id,
            recipient=c.recipient_node,
            receipt=vr.receipt_bytes,
            received_at=vr.received_at,
            now=sender.clock(),
        )
        if first and hook is not None:
            hook(s, c, vr)

    sender.writer.submit(record).result()


def send_next(sender: Node, receiver: Node) -> tuple[Claimed, bytes | FederationError] | None:
    """Take the oldest row in flight to ``receiver`` and hand it over, without the receipt coming
    back: returns (the claimed row, the receipt or the receiver's refusal), or None if idle. A
    refusal marks the row ``failed`` as the worker does."""
    rows = in_flight(sender, receiver.code)
    if not rows:
        return None
    r = rows[0]
    sender.writer.submit(lambda s: _claim(s, r.id, sender.replica, sender.clock())).result()
    c = Claimed(
        r.id,
        r.message_id,
        r.recipient_node,
        r.service,
        r.kind,
        bytes(r.envelope),
        r.attempts + 1,
        r.conversation,
    )
    try:
        receipt = receive(receiver, sender.code, c.envelope, c.service)
    except FederationError as e:
        reason, error = e.reason, str(e)
        if REASON_CODES.get(reason) in TRANSIENT_CODES or reason in TRANSIENT_REASONS:
            # As the worker does: a transient refusal waits and is sent again later.
            sender.writer.submit(
                lambda s: outbox_retry_later(s, row_id=c.id, error=error, next_at=sender.clock())
            ).result()
        else:
            sender.writer.submit(
                lambda s: outbox_failed(s, row_id=c.id, reason=reason, error=error)
            ).result()
        return c, e
    return c, receipt


def deliver_next(sender: Node, receiver: Node) -> FederationError | bool:
    """One delivery step: False if nothing was in flight, True if delivered and the receipt
    recorded, or the receiver's refusal (the sender's row is then ``failed``)."""
    sent = send_next(sender, receiver)
    if sent is None:
        return False
    c, outcome = sent
    if isinstance(outcome, FederationError):
        return outcome
    record_receipt(sender, c, outcome)
    return True


def deliver_all(*nodes: Node) -> list[FederationError]:
    """Deliver everything in flight between ``nodes`` until all outboxes are idle; returns the
    refusals met on the way."""
    refusals: list[FederationError] = []
    progress_made = True
    while progress_made:
        progress_made = False
        for sender in nodes:
            for receiver in nodes:
                if receiver is sender:
                    continue
                while (outcome := deliver_next(sender, receiver)) is not False:
                    if isinstance(outcome, FederationError):
                        refusals.append(outcome)
                        if outcome.reason == "RECEIPT_PENDING":
                            break  # waits for the other direction; try again next round
                    progress_made = True
    return refusals
