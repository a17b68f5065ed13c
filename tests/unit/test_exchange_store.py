"""Expert exchanges in the store: registry, bookings, privacy of messages, peer refusals.

In-process :class:`node.runtime.Node` objects without servers (Shanghai, Zhejiang, Anhui) on
SQLite files, with messages moved by the simulated transport of ``tests/assistance_harness.py``
(the real intake, inbox and receipt handling). Anhui provides experts; Zhejiang (and Shanghai)
host inspections.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message
from icalendar import Calendar
from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from cccfed.v1 import envelope_pb2
from cccfed.v1 import expert_exchange_pb2 as pb
from federation import draw as draws
from federation import exchange as ex
from federation.errors import FederationError, ValidationError
from federation.experts import PRIVATE_FIELDS, SHARED_FIELDS
from node import pki
from node.exchange import (
    BOOKINGS,
    EVENTS,
    EXCHANGES,
    SERVICE,
    event_to_message,
    request_from_message,
    request_to_message,
    state_to_dict,
)
from node.local import free_ports
from node.runtime import Node
from node.store.ops import INBOX, OUTBOX
from tests.assistance_harness import AH, SH, ZJ, deliver_all, deliver_next, node_at, read, write
from tests.exchange_harness import (
    HOLDER,
    bookings,
    cancel,
    confirm,
    counter_random,
    day,
    decline,
    expert_row,
    import_experts,
    new_exchange,
    propose,
    registry_csv,
    request_data,
    xview,
)

Trio = dict[str, Node]

#: Private data of the Anhui example registry that must never leave Anhui's node.
PRIVATE_VALUES = ("0551-6288-0101", "340104198001010012", "0553-5550-0102", "340202198506120025")


@pytest.fixture(scope="module")
def fed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exchange-store") / "fed"
    codes = [SH, ZJ, AH]
    pki.init_federation(root, codes, ports=dict(zip(codes, free_ports(3), strict=True)))
    return root


@pytest.fixture
def nodes(fed_root: Path, tmp_path: Path) -> Iterator[Trio]:
    """Shanghai, Zhejiang and Anhui on brand-new stores (copies of migrated empty ones)."""
    templates = fed_root.parent / "templates"
    templates.mkdir(exist_ok=True)
    made: Trio = {}
    for code in (SH, ZJ, AH):
        template = templates / f"{code}.db"
        if not template.exists():
            node_at(fed_root, code, template).close()
        store = tmp_path / f"{code}.db"
        shutil.copyfile(template, store)
        made[code] = node_at(fed_root, code, store)
    yield made
    for node in made.values():
        node.close()


def proposed_exchange(nodes: Trio, **overrides: Any) -> str:
    """Zhejiang's request, delivered and proposed by Anhui, the proposal delivered back."""
    zj, ah = nodes[ZJ], nodes[AH]
    xid = new_exchange(zj, **overrides)
    assert deliver_all(zj, ah) == []
    propose(ah, xid)
    assert deliver_all(zj, ah) == []
    assert xview(zj, xid).state.status is ex.ExchangeStatus.PROPOSED
    return xid


def attended_exchange(nodes: Trio, **overrides: Any) -> str:
    zj, ah = nodes[ZJ], nodes[AH]
    xid = proposed_exchange(nodes, **overrides)
    confirm(zj, xid)
    assert deliver_all(zj, ah) == []
    confirm(ah, xid)
    assert deliver_all(zj, ah) == []
    return xid


def outbox_payloads(node: Node) -> list[tuple[str, bytes]]:
    """(kind, payload bytes) of every envelope ``node`` queued, in order."""
    rows = read(node, lambda c: c.execute(select(OUTBOX).order_by(OUTBOX.c.id)).all())
    out = []
    for r in rows:
        env = envelope_pb2.Envelope.FromString(bytes(r.envelope))
        out.append((r.kind, bytes(env.payload)))
    return out


def snapshot(node: Node, xid: str) -> tuple[Any, ...]:
    """Everything a refused message must leave unchanged."""
    return read(
        node,
        lambda c: (
            c.execute(select(EXCHANGES).where(EXCHANGES.c.exchange_id == xid)).all(),
            c.execute(select(EVENTS).where(EVENTS.c.exchange_id == xid)).all(),
            c.execute(select(BOOKINGS)).all(),
            c.execute(select(INBOX.c.message_id)).all(),
        ),
    )


def send_crafted(sender: Node, receiver: Node, msg: Message, xid: str) -> FederationError:
    """Queue ``msg`` as ``sender`` (sealed as any of its messages) and hand it over; returns the
    receiver's refusal."""
    assert deliver_all(sender, receiver) == []
    write(
        sender,
        lambda c: sender.enqueue_in(c, receiver.code, SERVICE, msg, correlation_id=xid, claim=True),
    )
    outcome = deliver_next(sender, receiver)
    assert isinstance(outcome, FederationError), "the receiver accepted it"
    return outcome


# --- the registry ---------------------------------------------------------------------------------


def test_registry_import_keeps_private_fields_local_and_replace_retires(nodes: Trio) -> None:
    ah = nodes[AH]
    first = import_experts(ah)
    assert first["added"] == [f"AH-000{i}" for i in range(1, 8)] and first["retired"] == []
    stored = read(ah, ah.exchange.experts)
    zhou = next(e for e in stored if e.expert_id == "AH-0001")
    assert (zhou.phone, zhou.id_number) == ("0551-6288-0101", "340104198001010012")
    assert zhou.categories == {"LOW_VOLTAGE_APPARATUS", "WIRES_CABLES"}

    # Re-import with two experts only: updated, the rest kept but retired with --replace.
    again = import_experts(
        ah, registry_csv(expert_row("AH-0001", cap=2), expert_row("AH-0100")), replace=True
    )
    assert (again["added"], again["updated"]) == (["AH-0100"], ["AH-0001"])
    assert again["retired"] == ["AH-0002", "AH-0003", "AH-0004", "AH-0005", "AH-0006", "AH-0007"]
    active = read(ah, ah.exchange.experts)
    assert [e.expert_id for e in active] == ["AH-0001", "AH-0100"]
    assert active[0].annual_cap == 2 and active[0].phone == ""
    everyone = read(ah, lambda c: ah.exchange.experts(c, include_inactive=True))
    assert len(everyone) == 8


def test_registry_of_another_province_is_refused_and_nothing_is_stored(nodes: Trio) -> None:
    zj = nodes[ZJ]
    with pytest.raises(ValidationError) as e:
        import_experts(zj)  # the Anhui file into Zhejiang's node
    assert e.value.reason == "WRONG_PROVINCE"
    assert read(zj, lambda c: zj.exchange.experts(c, include_inactive=True)) == []


# --- the whole flow in the store ------------------------------------------------------------------


def assert_bookings_follow_the_state(ah: Node) -> None:
    """The booking table is bookings_of() of every provided exchange, and the counts and dates
    read from it equal the pure functions over the same states."""
    states = [v.state for v in read(ah, ah.exchange.views) if v.role == "provider"]
    expected = sorted(
        (b.expert_id, d.isoformat(), b.exchange_id, b.tentative)
        for s in states
        for b in ex.bookings_of(s)
        for d in b.dates
    )
    assert bookings(ah) == expected
    for year in {s.dates[0].year for s in states}:
        context = read(ah, lambda c, y=year: ah.exchange.booking_context(c, y))  # type: ignore[misc]
        assert context.year_counts == ex.exchange_counts(states, year)
        assert context.last_sent == ex.last_sent_dates(states)


def test_full_flow_books_the_drawn_experts_and_both_nodes_agree(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = new_exchange(zj)
    assert xview(zj, xid).state.status is ex.ExchangeStatus.REQUESTED
    assert deliver_all(zj, ah) == []
    assert xview(ah, xid).role == "provider"
    assert bookings(ah) == []

    proposed = propose(ah, xid)
    proposal = proposed.state.proposal
    assert proposal is not None
    # Eligible: AH-0001, AH-0002, AH-0004; the others excluded for the reason the file gives.
    assert proposal.tiers == (("AH-0001", "AH-0002", "AH-0004"),) and proposal.k == 2
    audit = json.loads(proposed.row.audit)
    assert audit["excluded"] == {
        "AH-0003": ["conflict_bureau"],
        "AH-0005": ["category"],
        "AH-0006": ["cap_reached"],
        "AH-0007": ["conflict_holder"],
    }
    held = {(e, d) for e, d, x, tentative in bookings(ah) if tentative and x == xid}
    days = {day(zj, 20).isoformat(), day(zj, 21).isoformat()}
    assert held == {(e, d) for e in ("AH-0001", "AH-0002", "AH-0004") for d in days}
    assert_bookings_follow_the_state(ah)

    assert deliver_all(zj, ah) == []
    confirmed = confirm(zj, xid)
    record = confirmed.state.draw
    assert record is not None and draws.verify_draw(record)
    assert deliver_all(zj, ah) == []
    assert xview(ah, xid).state.status is ex.ExchangeStatus.CONFIRMED
    # Only the drawn stay booked; the third candidate is released.
    assert {(e, t) for e, _, _, t in bookings(ah)} == {(e, False) for e in record.result}
    assert_bookings_follow_the_state(ah)

    confirm(ah, xid)
    assert deliver_all(zj, ah) == []
    a, b = xview(zj, xid), xview(ah, xid)
    assert a.state.status is ex.ExchangeStatus.ATTENDANCE_CONFIRMED
    assert state_to_dict(a.state) == state_to_dict(b.state)
    assert read(ah, lambda c: ah.exchange.draw_record(c, xid)) == record
    assert [h.event for h in a.state.history] == ["proposed", "confirmed", "attendance_confirmed"]
    # The receipt of the request is recorded on the host.
    assert a.row.received_at is not None and b.row.received_at == a.row.received_at


def test_federation_messages_carry_only_shared_views_of_experts(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    attended_exchange(nodes)
    sent = outbox_payloads(ah) + outbox_payloads(zj)
    assert {k for k, _ in sent} >= {
        "cccfed.v1.ExchangeRequest",
        "cccfed.v1.ExchangeProposed",
        "cccfed.v1.ExchangeConfirmed",
        "cccfed.v1.ExchangeAttendanceConfirmed",
    }
    for _, payload in sent:
        for value in PRIVATE_VALUES:
            assert value.encode() not in payload
    (proposed,) = [p for k, p in outbox_payloads(ah) if k == "cccfed.v1.ExchangeProposed"]
    msg = pb.ExchangeProposed.FromString(proposed)
    assert len(msg.candidates) == 3
    for candidate in msg.candidates:
        assert {f.name for f, _ in candidate.ListFields()} == set(SHARED_FIELDS)
    # The wire type itself has no field for private data.
    names = {f.name for f in pb.ExchangeExpert.DESCRIPTOR.fields}
    assert names == set(SHARED_FIELDS) and not names & set(PRIVATE_FIELDS)
    # Nor does the host's store hold any.
    for row in read(zj, lambda c: c.execute(select(EXCHANGES)).all()):
        for value in PRIVATE_VALUES:
            assert value not in row.view


def test_host_value_stays_on_the_host_until_it_answers_the_proposal(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = proposed_exchange(nodes)
    host_value = bytes(read(zj, lambda c: zj.exchange.view(c, xid)).row.host_value)
    assert draws.commit(host_value) == xview(zj, xid).state.request.host_commitment
    assert all(host_value not in p for _, p in outbox_payloads(zj))
    assert read(ah, lambda c: c.execute(select(EXCHANGES.c.host_value)).scalars().all()) == [None]
    with pytest.raises(ValidationError) as e:
        read(ah, lambda c: ah.exchange.draw_record(c, xid))
    assert e.value.reason == "NOT_REVEALED"
    confirm(zj, xid)
    revealed = [p for k, p in outbox_payloads(zj) if k == "cccfed.v1.ExchangeConfirmed"]
    assert len(revealed) == 1 and host_value in revealed[0]


def test_draws_replay_exactly_with_injected_randomness(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    zj.exchange.random_bytes = counter_random("zhejiang")
    ah.exchange.random_bytes = counter_random("anhui")
    import_experts(ah)
    xid = attended_exchange(nodes)
    record = read(zj, lambda c: zj.exchange.draw_record(c, xid))
    assert record.host_value == counter_random("zhejiang")(32)
    assert record.provider_value == counter_random("anhui")(32)
    seed = draws.seed(record.host_value, record.provider_value)
    assert record.result == tuple(draws.draw(seed, record.tiers, record.k))


# --- no double booking ----------------------------------------------------------------------------


def test_a_held_or_booked_expert_is_not_proposed_again_for_overlapping_dates(nodes: Trio) -> None:
    sh, zj, ah = nodes[SH], nodes[ZJ], nodes[AH]
    import_experts(ah, registry_csv(expert_row("AH-1"), expert_row("AH-2")))
    first = proposed_exchange(nodes, offsets=(20, 21))  # holds AH-1 and AH-2
    second = new_exchange(sh, offsets=(21, 22))  # overlaps on day 21
    third = new_exchange(sh, offsets=(23,), experts_wanted=1)  # does not overlap
    assert deliver_all(sh, ah) == []
    before = outbox_payloads(ah)
    with pytest.raises(ValidationError) as e:
        propose(ah, second)
    assert e.value.reason == "NO_ELIGIBLE_EXPERTS"
    assert "AH-1: booked" in str(e.value) and "AH-2: booked" in str(e.value)
    assert outbox_payloads(ah) == before  # nothing sent
    assert xview(ah, second).state.status is ex.ExchangeStatus.REQUESTED
    assert propose(ah, third).state.status is ex.ExchangeStatus.PROPOSED

    # The host confirms: one expert is released, and the second request can have that one.
    confirm(zj, first)
    assert deliver_all(zj, ah) == []
    drawn = xview(ah, first).state.assigned
    assert len(drawn) == 2  # both wanted, both drawn: nothing released
    with pytest.raises(ValidationError):
        propose(ah, second)
    # The host cancels: the dates are freed for the other request.
    cancel(zj, first)
    assert deliver_all(zj, ah) == []
    assert [b for b in bookings(ah) if b[2] == first] == []
    again = propose(ah, second)
    assert again.state.proposal is not None
    assert set(again.state.proposal.candidate_ids) == {"AH-1", "AH-2"}
    assert_bookings_follow_the_state(ah)


def test_experts_sent_recently_come_after_those_never_sent(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    first = attended_exchange(nodes, offsets=(20, 21))
    drawn = xview(ah, first).state.assigned
    (rested,) = {"AH-0001", "AH-0002", "AH-0004"} - set(drawn)
    later = new_exchange(zj, offsets=(30,))
    assert deliver_all(zj, ah) == []
    proposal = propose(ah, later).state.proposal
    assert proposal is not None
    # Never sent first; the two sent on the same last date share the next tier.
    assert proposal.tiers == ((rested,), tuple(sorted(drawn)))
    assert proposal.k == 2


def test_open_proposals_count_towards_the_annual_cap(nodes: Trio) -> None:
    sh, ah = nodes[SH], nodes[AH]
    import_experts(ah, registry_csv(expert_row("AH-1", cap=1), expert_row("AH-2", cap=2)))
    proposed_exchange(nodes, offsets=(20,), experts_wanted=1)  # holds both (one tier)
    other = new_exchange(sh, offsets=(25,), experts_wanted=1)
    assert deliver_all(sh, ah) == []
    proposal = propose(ah, other).state.proposal
    assert proposal is not None and proposal.candidate_ids == ("AH-2",)
    audit = json.loads(xview(ah, other).row.audit)
    assert audit["excluded"] == {"AH-1": ["cap_reached"]}


def test_the_database_refuses_a_double_booking_whatever_writes_it(nodes: Trio) -> None:
    ah = nodes[AH]
    import_experts(ah, registry_csv(expert_row("AH-1")))
    xid = proposed_exchange(nodes, experts_wanted=1)
    held = bookings(ah)[0]

    def second_row(c: Any) -> None:
        c.execute(
            insert(BOOKINGS).values(
                expert_id=held[0], day=held[1], exchange_id=str(uuid.uuid4()), tentative=False
            )
        )

    with pytest.raises(FederationError) as e:
        write(ah, second_row)
    assert e.value.reason == "STORE" and isinstance(e.value.__cause__, IntegrityError)

    # The guard in front of the key names who holds the day.
    other = dataclasses.replace(
        xview(ah, xid).state, request=dataclasses.replace(
            xview(ah, xid).state.request, request_id=str(uuid.uuid4())
        )
    )  # fmt: skip
    with pytest.raises(ValidationError) as g:
        write(ah, lambda c: ah.exchange._sync_bookings(c, other))
    assert g.value.reason == "DOUBLE_BOOKING" and xid in str(g.value)
    assert held in bookings(ah)


# --- reschedule -----------------------------------------------------------------------------------


def test_reschedule_moves_the_bookings_after_a_recheck(nodes: Trio) -> None:
    sh, zj, ah = nodes[SH], nodes[ZJ], nodes[AH]
    import_experts(ah, registry_csv(expert_row("AH-1"), expert_row("AH-2")))
    xid = attended_exchange(nodes, offsets=(20,), experts_wanted=1)
    (drawn,) = xview(ah, xid).state.assigned
    # Another exchange books the other expert on day 30.
    other = new_exchange(sh, offsets=(30,), experts_wanted=1)
    assert deliver_all(sh, ah) == []
    propose(ah, other)
    assert {b[0] for b in bookings(ah) if b[2] == other} == {"AH-1", "AH-2"} - {drawn}

    # Moving to day 30 works for the drawn expert (the other one holds day 30, not them).
    write(zj, lambda c: zj.exchange.request_reschedule(c, xid, [day(zj, 30)]))
    assert deliver_all(zj, ah) == []
    moved = write(ah, lambda c: ah.exchange.answer_reschedule(c, xid))
    assert moved.state.dates == (day(zj, 30),) and moved.state.status is ex.ExchangeStatus.CONFIRMED
    assert [b[1] for b in bookings(ah) if b[2] == xid] == [day(zj, 30).isoformat()]
    assert deliver_all(zj, ah) == []
    assert xview(zj, xid).state.revision == 1
    assert_bookings_follow_the_state(ah)

    # Moving onto a day the drawn expert is booked elsewhere is refused; the operator refuses.
    third = new_exchange(sh, offsets=(35,), experts_wanted=2)
    assert deliver_all(sh, ah) == []
    propose(ah, third)  # holds both on day 35
    write(zj, lambda c: zj.exchange.request_reschedule(c, xid, [day(zj, 35)]))
    assert deliver_all(zj, ah) == []
    with pytest.raises(ValidationError) as e:
        write(ah, lambda c: ah.exchange.answer_reschedule(c, xid))
    assert e.value.reason == "EXPERT_UNAVAILABLE" and drawn in str(e.value)
    refused = write(ah, lambda c: ah.exchange.answer_reschedule(c, xid, refuse="专家已有安排"))
    assert refused.state.dates == (day(zj, 30),) and refused.state.pending_dates is None
    assert deliver_all(zj, ah) == []
    assert state_to_dict(xview(zj, xid).state) == state_to_dict(xview(ah, xid).state)


# --- crossing on the wire -------------------------------------------------------------------------


def test_host_cancel_crossing_the_proposal_ends_cancelled_on_both_and_frees_the_holds(
    nodes: Trio,
) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = new_exchange(zj)
    assert deliver_all(zj, ah) == []
    propose(ah, xid)  # on its way ...
    cancel(zj, xid)  # ... when Zhejiang, not having seen it, cancels
    assert bookings(ah) != []
    assert deliver_all(zj, ah) == []  # both accepted with receipts, neither refused
    a, b = xview(zj, xid), xview(ah, xid)
    assert state_to_dict(a.state) == state_to_dict(b.state)
    assert a.state.status is ex.ExchangeStatus.CANCELLED and a.state.proposal is None
    assert [r.kind for r in a.void] == [r.kind for r in b.void] == ["cccfed.v1.ExchangeProposed"]
    assert bookings(ah) == []


# --- local refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "action", "reason"),
    [
        (ZJ, "propose", "INVALID_TRANSITION"),  # the host does not propose
        (AH, "confirm", "INVALID_TRANSITION"),  # attendance before the host confirmed
        (ZJ, "confirm", "INVALID_TRANSITION"),  # no proposal yet
        (ZJ, "decline", "INVALID_TRANSITION"),  # the host declines proposals only
        (AH, "cancel", "INVALID_TRANSITION"),  # the provider cannot cancel a request
    ],
)
def test_local_actions_the_rules_refuse_store_and_send_nothing(
    nodes: Trio, who: str, action: str, reason: str
) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = new_exchange(zj)
    assert deliver_all(zj, ah) == []
    node = nodes[who]
    before = (snapshot(node, xid), outbox_payloads(node))
    acts: dict[str, Callable[[], object]] = {
        "propose": lambda: propose(node, xid),
        "confirm": lambda: confirm(node, xid),
        "decline": lambda: decline(node, xid),
        "cancel": lambda: cancel(node, xid),
    }
    with pytest.raises(ValidationError) as e:
        acts[action]()
    assert e.value.reason == reason
    assert (snapshot(node, xid), outbox_payloads(node)) == before


# --- refusals of peers' messages ------------------------------------------------------------------


def _proposal_with_private_field(nodes: Trio, xid: str) -> Message:
    msg = pb.ExchangeProposed.FromString(
        event_to_message(xid, ex.Proposed(_a_proposal(nodes, xid))).SerializeToString()
    )
    # A partner's implementation adds a phone number as field 5 of the expert view.
    leaked = pb.ExchangeExpert.FromString(
        msg.candidates[0].SerializeToString() + b"\x2a\x0e0551-6288-0101"
    )
    msg.candidates[0].CopyFrom(leaked)
    msg.index, msg.seen = 0, 1
    assert b"0551-6288-0101" in msg.SerializeToString()
    return msg


def _a_proposal(nodes: Trio, xid: str) -> ex.Proposal:
    request = xview(nodes[AH], xid).state.request
    experts = read(nodes[AH], nodes[AH].exchange.experts)
    return ex.match(request, experts, [], {}, {}, draw_seed=bytes(32))


def _crafted(nodes: Trio, xid: str, case: str) -> tuple[str, str, Message]:
    """(sender, receiver, message) for each refusal case."""
    zj = nodes[ZJ]
    request = xview(zj, xid).state.request
    wire = request_to_message(request)
    proposal = xview(zj, xid).state.proposal
    if case == "commitment_reused":
        return (
            ZJ,
            AH,
            request_to_message(dataclasses.replace(request, request_id=str(uuid.uuid4()))),
        )
    if case == "duplicate_request":
        wire.place = "另一个地点"
        return ZJ, AH, wire
    if case == "wrong_provider":
        fresh = ex.parse_exchange_request(
            {**request_data(zj), "provider_province": "320000"},
            host_commitment=draws.commit(bytes(range(32))),
            today=request.reply_by - dt.timedelta(days=10),
        )
        return ZJ, AH, request_to_message(fresh)
    if case == "host_bureau_not_under_sender":
        fresh = ex.parse_exchange_request(
            request_data(zj),
            host_commitment=draws.commit(bytes(range(1, 33))),
            today=request.reply_by - dt.timedelta(days=10),
        )
        return SH, AH, request_to_message(fresh)
    assert proposal is not None
    host_value = bytes(xview(zj, xid).row.host_value)
    result = draws.draw(draws.seed(host_value, proposal.provider_value), proposal.tiers, proposal.k)
    msg: Message
    if case == "third_party_event":
        msg = event_to_message(xid, ex.Confirmed(host_value, tuple(result)))
        sender = SH
    elif case == "unknown_exchange":
        msg = event_to_message(str(uuid.uuid4()), ex.Confirmed(host_value, tuple(result)))
        sender = ZJ
    elif case == "event_gap":
        msg = event_to_message(xid, ex.Confirmed(host_value, tuple(result)))
        msg.index = 2  # type: ignore[attr-defined]
        sender = ZJ
    elif case == "draw_mismatch":
        others = [i for i in proposal.candidate_ids if i not in result]
        msg = event_to_message(xid, ex.Confirmed(host_value, (others[0], *result[1:])))
        sender = ZJ
    elif case == "reveal_mismatch":
        wrong = bytes(range(32, 64))
        fake = draws.draw(draws.seed(wrong, proposal.provider_value), proposal.tiers, proposal.k)
        msg = event_to_message(xid, ex.Confirmed(wrong, tuple(fake)))
        sender = ZJ
    elif case == "attendance_before_confirmation":
        return AH, ZJ, _indexed(event_to_message(xid, ex.AttendanceConfirmed()), 1, 1)
    elif case == "private_field_in_candidate":
        return AH, ZJ, _proposal_with_private_field(nodes, xid)
    else:  # pragma: no cover
        raise AssertionError(case)
    if case != "event_gap":
        _indexed(msg, 1, 1)
    return sender, AH if sender != AH else ZJ, msg


def _indexed(msg: Message, index: int, seen: int) -> Message:
    msg.index = index  # type: ignore[attr-defined]
    msg.seen = seen  # type: ignore[attr-defined]
    return msg


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("commitment_reused", "COMMITMENT_REUSED"),
        ("duplicate_request", "DUPLICATE_CONFLICT"),
        ("wrong_provider", "WRONG_RECIPIENT"),
        ("host_bureau_not_under_sender", "WRONG_PARTY"),
        ("third_party_event", "WRONG_PARTY"),
        ("unknown_exchange", "UNKNOWN_EXCHANGE"),
        ("event_gap", "EVENT_GAP"),
        ("draw_mismatch", "DRAW_MISMATCH"),
        ("reveal_mismatch", "REVEAL_MISMATCH"),
        ("attendance_before_confirmation", "INVALID_TRANSITION"),
        ("private_field_in_candidate", "UNKNOWN_FIELD"),
    ],
)
def test_peer_messages_the_rules_refuse_change_nothing(nodes: Trio, case: str, reason: str) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = proposed_exchange(nodes)
    sender, receiver, msg = _crafted(nodes, xid, case)
    before = {code: snapshot(nodes[code], xid) for code in (ZJ, AH)}
    refusal = send_crafted(nodes[sender], nodes[receiver], msg, xid)
    assert refusal.reason == reason, refusal.diagnostics()
    assert {code: snapshot(nodes[code], xid) for code in (ZJ, AH)} == before
    # The exchange itself goes on as if nothing had happened.
    confirm(zj, xid)
    assert deliver_all(zj, ah) == []
    assert xview(ah, xid).state.status is ex.ExchangeStatus.CONFIRMED


def test_stored_request_reads_back_with_the_day_it_was_sent(nodes: Trio) -> None:
    """A request is validated against the day it was sent (signed), not the day it is read."""
    zj = nodes[ZJ]
    xid = new_exchange(zj, offsets=(2,), reply_by=day(zj, 1).isoformat())
    raw = pb.ExchangeRequest.FromString(bytes(xview(zj, xid).row.request))
    later = day(zj, 5)
    with pytest.raises(ValidationError):
        request_from_message(raw, today=later)
    zj.clock = lambda: dt.datetime.now(dt.UTC) + dt.timedelta(days=5)
    assert xview(zj, xid).state.request.request_id == xid


# --- calendars ------------------------------------------------------------------------------------


def test_calendars_for_an_expert_and_a_bureau(nodes: Trio) -> None:
    zj, ah = nodes[ZJ], nodes[AH]
    import_experts(ah)
    xid = attended_exchange(nodes)
    drawn = xview(ah, xid).state.assigned
    for node in (zj, ah):
        data, count, _ = read(node, lambda c, n=node: n.exchange.calendar(c, expert=drawn[0]))  # type: ignore[misc]
        assert count == 1
        calendar = Calendar.from_ical(data)
        (event,) = list(calendar.walk("VEVENT"))
        assert event.decoded("dtstart") == day(zj, 20)
        assert event.decoded("dtend") == day(zj, 22)
        assert str(event.get("status")) == "CONFIRMED"
        assert HOLDER not in data.decode()
        for value in PRIVATE_VALUES:
            assert value not in data.decode()
    for bureau in ("330100", "330000", "340000"):
        _, count, _ = read(zj, lambda c, b=bureau: zj.exchange.calendar(c, bureau=b))  # type: ignore[misc]
        assert count == 1, bureau
    _, count, _ = read(zj, lambda c: zj.exchange.calendar(c, bureau="320500"))
    assert count == 0
    _, count, _ = read(ah, lambda c: ah.exchange.calendar(c, expert="AH-0006"))
    assert count == 0
