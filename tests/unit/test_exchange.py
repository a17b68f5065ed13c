"""federation.exchange: the request, matching, and the lifecycle of an expert exchange.

Every exclusion rule is tested on its own (one expert, one rule broken); fairness and the draw
are tested on ties; double booking is tested at the pure level (the first exchange's bookings
are the second match's input). The transition table is written out again here, independently of
``TRANSITIONS``, and every (state, event, actor) combination is checked against it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from typing import Any

import pytest

from federation.draw import DrawRecord, commit, draw, rank_key, seed, verify_draw
from federation.errors import ValidationError, VerificationError
from federation.exchange import (
    ACTORS,
    TRANSITIONS,
    Actor,
    AttendanceConfirmed,
    Booking,
    Cancelled,
    Confirmed,
    Declined,
    DeclineReason,
    Event,
    ExchangeRequest,
    ExchangeState,
    ExchangeStatus,
    Exclusion,
    Proposal,
    Proposed,
    Rescheduled,
    RescheduleRefused,
    RescheduleRequested,
    allowed,
    apply,
    bookings_of,
    exchange_counts,
    last_sent_dates,
    match,
    parse_exchange_request,
    replay,
    reschedule_check,
    start,
    validate_exchange_request,
)
from federation.experts import DateRange, Expert
from federation.requests import FieldError

S = ExchangeStatus
D = dt.date
TODAY = D(2025, 3, 3)
HOST_VALUE = bytes(range(32))
PROVIDER_VALUE = bytes(range(100, 132))
HOLDER = "913304007429141869"
DATES = (D(2025, 4, 8), D(2025, 4, 9))


def at(day: int, hour: int = 2) -> dt.datetime:
    """An instant in March 2025 (UTC), as from a signed envelope."""
    return dt.datetime(2025, 3, day, hour, tzinfo=dt.UTC)


def make_request(**changes: Any) -> ExchangeRequest:
    base = ExchangeRequest(
        request_id=str(uuid.UUID(int=1)),
        host_bureau="330100",
        provider_province="320000",
        dates=DATES,
        place="杭州市滨江区江南大道 1 号",
        holder_uscc=HOLDER,
        categories=frozenset({"LOW_VOLTAGE_APPARATUS"}),
        experts_wanted=1,
        reply_by=D(2025, 3, 20),
        host_commitment=commit(HOST_VALUE),
    )
    return validate_exchange_request(dataclasses.replace(base, **changes), today=TODAY)


def make_expert(expert_id: str, **changes: Any) -> Expert:
    base = Expert(
        expert_id=expert_id,
        name=f"专家{expert_id}",
        bureau="320500",
        categories=frozenset({"LOW_VOLTAGE_APPARATUS", "LIGHTING"}),
        annual_cap=5,
        phone="0512-5550-0100",
        id_number="000000198001010013",
    )
    return dataclasses.replace(base, **changes)


def propose(
    request: ExchangeRequest,
    experts: list[Expert],
    bookings: list[Booking] | None = None,
    year_counts: dict[str, int] | None = None,
    last_sent: dict[str, dt.date] | None = None,
    provider_value: bytes = PROVIDER_VALUE,
) -> Proposal:
    return match(
        request,
        experts,
        bookings or [],
        year_counts or {},
        last_sent or {},
        draw_seed=provider_value,
    )


def drawn(proposal: Proposal, host_value: bytes = HOST_VALUE) -> tuple[str, ...]:
    return tuple(draw(seed(host_value, proposal.provider_value), proposal.tiers, proposal.k))


def proposed_state(
    request: ExchangeRequest | None = None, experts: list[Expert] | None = None
) -> ExchangeState:
    request = request or make_request()
    proposal = propose(request, experts or [make_expert("JS-1"), make_expert("JS-2")])
    return apply(start(request), Proposed(proposal), actor="provider", at=at(4))


def confirmed_state(**kwargs: Any) -> ExchangeState:
    state = proposed_state(**kwargs)
    assert state.proposal is not None
    return apply(state, Confirmed(HOST_VALUE, drawn(state.proposal)), actor="host", at=at(5))


def attended_state(**kwargs: Any) -> ExchangeState:
    return apply(confirmed_state(**kwargs), AttendanceConfirmed(), actor="provider", at=at(6))


# --------------------------------------------------------------------------------------------
# The request


def test_valid_request_is_normalised() -> None:
    request = make_request(
        request_id=str(uuid.UUID(int=1)).upper(),
        dates=(D(2025, 4, 9), D(2025, 4, 8), D(2025, 4, 9)),
        categories=frozenset({"低压电器"}),
        holder_uscc=HOLDER.lower(),
        place="  杭州  ",
    )
    assert request.request_id == str(uuid.UUID(int=1))
    assert request.dates == DATES
    assert request.categories == {"LOW_VOLTAGE_APPARATUS"}
    assert request.holder_uscc == HOLDER
    assert request.place == "杭州"
    assert request.host_province == "330000"


@pytest.mark.parametrize(
    ("changes", "field", "reason"),
    [
        ({"request_id": "not-a-uuid"}, "request_id", "INVALID_FIELD"),
        ({"host_bureau": "110000"}, "host_bureau", "NOT_IN_DELTA"),
        ({"provider_province": "320500"}, "provider_province", "NOT_A_PROVINCE"),
        ({"provider_province": "330000"}, "provider_province", "SAME_PROVINCE"),
        ({"dates": ()}, "dates", "MISSING_FIELD"),
        ({"dates": (TODAY,)}, "dates", "DATE_IN_PAST"),
        ({"dates": tuple(D(2025, 4, d) for d in range(1, 16))}, "dates", "INVALID_FIELD"),
        ({"dates": (D(2025, 4, 1), D(2025, 5, 2))}, "dates", "INVALID_FIELD"),
        ({"place": "  "}, "place", "MISSING_FIELD"),
        ({"place": "a\x00b"}, "place", "INVALID_FIELD"),
        ({"holder_uscc": HOLDER[:-1] + "0"}, "holder_uscc", "USCC_CHECK_DIGIT"),
        ({"categories": frozenset()}, "categories", "MISSING_FIELD"),
        ({"categories": frozenset({"toys"})}, "categories", "UNKNOWN_CATEGORY"),
        ({"experts_wanted": 0}, "experts_wanted", "INVALID_FIELD"),
        ({"experts_wanted": 11}, "experts_wanted", "INVALID_FIELD"),
        ({"reply_by": D(2025, 3, 2)}, "reply_by", "DATE_IN_PAST"),
        ({"reply_by": D(2025, 4, 8)}, "reply_by", "INVALID_FIELD"),
        ({"host_commitment": b"short"}, "host_commitment", "INVALID_FIELD"),
    ],
)
def test_invalid_requests_name_the_field(changes: dict[str, Any], field: str, reason: str) -> None:
    with pytest.raises(FieldError) as e:
        make_request(**changes)
    assert (e.value.field, e.value.reason) == (field, reason)


def test_parse_request_from_a_mapping() -> None:
    data = {
        "host_bureau": "330100",
        "provider_province": "320000",
        "dates": ["2025-04-08", "2025-04-09"],
        "place": "杭州",
        "holder_uscc": HOLDER,
        "categories": ["低压电器"],
        "experts_wanted": 2,
        "reply_by": "2025-03-20",
    }
    request = parse_exchange_request(data, host_commitment=commit(HOST_VALUE), today=TODAY)
    assert request.dates == DATES
    assert uuid.UUID(request.request_id)
    assert json.loads(json.dumps(request.to_dict()))["categories"] == ["LOW_VOLTAGE_APPARATUS"]
    with pytest.raises(FieldError) as e:
        parse_exchange_request(
            {**data, "reply_before": "x"}, host_commitment=commit(HOST_VALUE), today=TODAY
        )
    assert (e.value.field, e.value.reason) == ("reply_before", "UNKNOWN_FIELD")
    with pytest.raises(FieldError) as e:
        parse_exchange_request(
            {**data, "dates": ["2025-04-31"]}, host_commitment=commit(HOST_VALUE), today=TODAY
        )
    assert e.value.field == "dates[0]"
    with pytest.raises(FieldError) as e:
        parse_exchange_request(
            {**data, "dates": [dt.datetime(2025, 4, 8, tzinfo=dt.UTC)]},
            host_commitment=commit(HOST_VALUE),
            today=TODAY,
        )
    assert e.value.field == "dates[0]"
    with pytest.raises(FieldError) as e:
        parse_exchange_request(
            {**data, "experts_wanted": "2"}, host_commitment=commit(HOST_VALUE), today=TODAY
        )
    assert e.value.field == "experts_wanted"


def test_request_and_proposal_round_trip_through_their_json_forms() -> None:
    request = make_request(experts_wanted=2)
    assert (
        ExchangeRequest.from_dict(json.loads(json.dumps(request.to_dict())), today=TODAY) == request
    )
    proposal = propose(request, [make_expert("JS-1"), make_expert("JS-2")])
    wire = json.loads(json.dumps(proposal.to_dict()))
    assert Proposal.from_dict(wire) == proposal
    with pytest.raises(FieldError) as e:
        ExchangeRequest.from_dict({**request.to_dict(), "host_commitment": "zz"}, today=TODAY)
    assert e.value.field == "host_commitment"
    for broken in (
        {**wire, "k": "2"},
        {**wire, "tiers": "JS-1"},
        {**wire, "provider_value": 5},
        {},
    ):
        with pytest.raises(ValidationError) as e2:
            Proposal.from_dict(broken)
        assert e2.value.reason == "INVALID_FIELD"
    with pytest.raises(ValidationError) as e3:  # a peer cannot slip private data in
        Proposal.from_dict({**wire, "candidates": [{**wire["candidates"][0], "phone": "1"}]})
    assert e3.value.reason == "UNKNOWN_FIELD"


# --------------------------------------------------------------------------------------------
# Matching: each exclusion rule on its own

OTHER = str(uuid.UUID(int=2))

EXCLUSION_CASES = [
    ("category", {"categories": frozenset({"LIGHTING"})}, [], {}, Exclusion.CATEGORY),
    (
        "unavailable one day",
        {"unavailable": (DateRange(D(2025, 4, 9), D(2025, 4, 20)),)},
        [],
        {},
        Exclusion.UNAVAILABLE,
    ),
    (
        "booked elsewhere",
        {},
        [Booking("JS-1", frozenset({D(2025, 4, 8)}), OTHER)],
        {},
        Exclusion.BOOKED,
    ),
    (
        "held by a proposal",
        {},
        [Booking("JS-1", frozenset({D(2025, 4, 9)}), OTHER, tentative=True)],
        {},
        Exclusion.BOOKED,
    ),
    (
        "conflict holder",
        {"conflict_holders": frozenset({HOLDER})},
        [],
        {},
        Exclusion.CONFLICT_HOLDER,
    ),
    (
        "conflict host bureau",
        {"conflict_bureaus": frozenset({"330100"})},
        [],
        {},
        Exclusion.CONFLICT_BUREAU,
    ),
    (
        "conflict host province",
        {"conflict_bureaus": frozenset({"330000"})},
        [],
        {},
        Exclusion.CONFLICT_BUREAU,
    ),
    ("cap reached", {"annual_cap": 3}, [], {"JS-1": 3}, Exclusion.CAP_REACHED),
    ("cap zero", {"annual_cap": 0}, [], {}, Exclusion.CAP_REACHED),
]


@pytest.mark.parametrize(
    ("changes", "bookings", "counts", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in EXCLUSION_CASES],
)
def test_each_exclusion_rule_on_its_own(
    changes: dict[str, Any], bookings: list[Booking], counts: dict[str, int], reason: Exclusion
) -> None:
    request = make_request()
    eligible = propose(request, [make_expert("JS-1")])
    assert eligible.candidate_ids == ("JS-1",)
    proposal = propose(request, [make_expert("JS-1", **changes)], bookings, counts)
    assert proposal.candidate_ids == ()
    assert proposal.k == 0
    assert proposal.audit is not None
    assert proposal.audit.excluded == {"JS-1": frozenset({reason})}


@pytest.mark.parametrize(
    ("changes", "bookings", "counts"),
    [
        pytest.param(
            {"unavailable": (DateRange(D(2025, 4, 10), D(2025, 4, 20)),)},
            [],
            {},
            id="unavailable after",
        ),
        pytest.param(
            {}, [Booking("JS-1", frozenset({D(2025, 4, 10)}), OTHER)], {}, id="booked another day"
        ),
        pytest.param(
            {}, [Booking("JS-1", frozenset(DATES), str(uuid.UUID(int=1)))], {}, id="own booking"
        ),
        pytest.param(
            {"conflict_holders": frozenset({"913205056082348768"})}, [], {}, id="other holder"
        ),
        pytest.param(
            {"conflict_bureaus": frozenset({"330200", "310000"})}, [], {}, id="other bureaus"
        ),
        pytest.param({"annual_cap": 3}, [], {"JS-1": 2}, id="under cap"),
    ],
)
def test_near_misses_stay_eligible(
    changes: dict[str, Any], bookings: list[Booking], counts: dict[str, int]
) -> None:
    proposal = propose(make_request(), [make_expert("JS-1", **changes)], bookings, counts)
    assert proposal.candidate_ids == ("JS-1",)


def test_all_reasons_that_apply_are_recorded() -> None:
    expert = make_expert(
        "JS-1", categories=frozenset({"LIGHTING"}), conflict_holders=frozenset({HOLDER})
    )
    proposal = propose(make_request(), [expert], year_counts={"JS-1": 9})
    assert proposal.audit is not None
    assert proposal.audit.excluded["JS-1"] == {
        Exclusion.CATEGORY,
        Exclusion.CONFLICT_HOLDER,
        Exclusion.CAP_REACHED,
    }


def test_cover_means_every_category_by_the_expert_alone() -> None:
    request = make_request(
        categories=frozenset({"LOW_VOLTAGE_APPARATUS", "WIRES_CABLES"}), experts_wanted=2
    )
    half_a = make_expert("JS-1", categories=frozenset({"LOW_VOLTAGE_APPARATUS"}))
    half_b = make_expert("JS-2", categories=frozenset({"WIRES_CABLES"}))
    whole = make_expert(
        "JS-3", categories=frozenset({"LOW_VOLTAGE_APPARATUS", "WIRES_CABLES", "LIGHTING"})
    )
    proposal = propose(request, [half_a, half_b, whole])
    # Together JS-1 and JS-2 cover both categories, but a draw could pick either alone.
    assert proposal.candidate_ids == ("JS-3",)
    assert proposal.k == 1


def test_fairness_tiers_least_recently_sent_first() -> None:
    experts = [make_expert(e) for e in ("JS-A", "JS-B", "JS-C", "JS-D", "JS-E")]
    last_sent = {
        "JS-A": D(2024, 12, 1),
        "JS-C": D(2024, 6, 1),
        "JS-D": D(2024, 6, 1),
        "JS-E": D(2025, 1, 5),
    }
    proposal = propose(make_request(experts_wanted=2), experts, last_sent=last_sent)
    # Never sent (B) first, then C and D (June) tied; A and E can no longer be reached.
    assert proposal.tiers == (("JS-B",), ("JS-C", "JS-D"))
    assert proposal.k == 2
    assert proposal.audit is not None
    assert proposal.audit.reserve == ("JS-A", "JS-E")
    for n in range(20):
        result = drawn(proposal, host_value=bytes([n]) * 32)
        assert result[0] == "JS-B"
        assert result[1] in {"JS-C", "JS-D"}


def test_a_tie_is_resolved_by_the_draw() -> None:
    proposal = propose(make_request(), [make_expert("JS-1"), make_expert("JS-2")])
    assert proposal.tiers == (("JS-1", "JS-2"),)
    assert proposal.k == 1
    winners = set()
    for n in range(20):
        host_value = bytes([n]) * 32
        s = seed(host_value, PROVIDER_VALUE)
        expected = min(("JS-1", "JS-2"), key=lambda e: rank_key(s, e))
        assert drawn(proposal, host_value) == (expected,)
        winners.add(expected)
    assert winners == {"JS-1", "JS-2"}


def test_fewer_candidates_than_wanted_proposes_all() -> None:
    proposal = propose(make_request(experts_wanted=3), [make_expert("JS-1"), make_expert("JS-2")])
    assert proposal.k == 2
    assert set(proposal.candidate_ids) == {"JS-1", "JS-2"}


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"experts": [make_expert("JS-1", bureau="330200")]}, "WRONG_PROVINCE"),
        ({"experts": [make_expert("JS-1"), make_expert("JS-1")]}, "DUPLICATE_EXPERT"),
        ({"draw_seed": b"short"}, "DRAW_VALUE"),
        ({"seen_commitments": {commit(HOST_VALUE)}}, "COMMITMENT_REUSED"),
    ],
)
def test_match_refuses_bad_input(kwargs: dict[str, Any], reason: str) -> None:
    args: dict[str, Any] = {"experts": [make_expert("JS-1")], "draw_seed": PROVIDER_VALUE, **kwargs}
    experts = args.pop("experts")
    with pytest.raises(ValidationError) as e:
        match(make_request(), experts, [], {}, {}, **args)
    assert e.value.reason == reason


def test_proposal_wire_form_carries_no_private_data() -> None:
    expert = make_expert("JS-1", conflict_holders=frozenset({"913205056082348768"}))
    excluded = make_expert("JS-2", conflict_holders=frozenset({HOLDER}))
    proposal = propose(make_request(), [expert, excluded])
    wire = json.dumps(proposal.to_dict(), ensure_ascii=False)
    for secret in (
        expert.phone,
        expert.id_number,
        "913205056082348768",
        HOLDER,
        "conflict",
        "audit",
    ):
        assert secret not in wire
    assert "JS-2" not in wire  # excluded experts are not even named
    assert proposal.to_dict()["candidates"] == [
        {
            "expert_id": "JS-1",
            "name": "专家JS-1",
            "bureau": "320500",
            "categories": ["LIGHTING", "LOW_VOLTAGE_APPARATUS"],
        }
    ]


# --------------------------------------------------------------------------------------------
# Double booking (pure level: the first exchange's bookings are the second's input)


def test_second_request_for_the_same_expert_on_overlapping_dates_cannot_get_them() -> None:
    experts = [make_expert("JS-1")]
    first = proposed_state(make_request(), experts)
    second_request = make_request(
        request_id=OTHER, dates=(D(2025, 4, 9), D(2025, 4, 10)), host_commitment=commit(bytes(32))
    )

    # While the first proposal is open, its candidate is held.
    assert bookings_of(first) == (
        Booking("JS-1", frozenset(DATES), first.request_id, tentative=True),
    )
    blocked = propose(second_request, experts, list(bookings_of(first)))
    assert blocked.candidate_ids == ()
    assert blocked.audit is not None and blocked.audit.excluded == {"JS-1": {Exclusion.BOOKED}}

    # Once confirmed, the drawn expert is booked for good.
    assert first.proposal is not None
    confirmed = apply(first, Confirmed(HOST_VALUE, drawn(first.proposal)), actor="host", at=at(5))
    assert bookings_of(confirmed) == (Booking("JS-1", frozenset(DATES), first.request_id),)
    assert propose(second_request, experts, list(bookings_of(confirmed))).candidate_ids == ()

    # Dates that do not overlap are fine.
    later = dataclasses.replace(second_request, dates=(D(2025, 4, 10),))
    assert propose(later, experts, list(bookings_of(confirmed))).candidate_ids == ("JS-1",)

    # Cancelling frees the dates.
    cancelled = apply(confirmed, Cancelled("inspection called off"), actor="host", at=at(6))
    assert bookings_of(cancelled) == ()
    assert propose(second_request, experts, list(bookings_of(cancelled))).candidate_ids == ("JS-1",)


def test_candidates_not_drawn_are_released_on_confirmation() -> None:
    state = confirmed_state()
    assert state.draw is not None
    (chosen,) = state.draw.result
    assert [b.expert_id for b in bookings_of(state)] == [chosen]


def test_counts_and_last_sent_from_states() -> None:
    open_proposal = proposed_state()
    booked = confirmed_state(request=make_request(request_id=OTHER))
    assert booked.draw is not None
    (chosen,) = booked.draw.result
    counts = exchange_counts([open_proposal, booked], 2025)
    assert counts == {"JS-1": 1 + (chosen == "JS-1"), "JS-2": 1 + (chosen == "JS-2")}
    assert exchange_counts([open_proposal, booked], 2024) == {}
    assert last_sent_dates([open_proposal, booked]) == {chosen: DATES[-1]}


# --------------------------------------------------------------------------------------------
# Lifecycle


def test_happy_path_and_verifiable_record() -> None:
    state = attended_state()
    assert state.status == S.ATTENDANCE_CONFIRMED
    assert [h.event for h in state.history] == ["proposed", "confirmed", "attendance_confirmed"]
    assert state.draw is not None
    assert verify_draw(state.draw)
    assert state.assigned == state.draw.result
    assert DrawRecord.from_dict(json.loads(json.dumps(state.draw.to_dict()))) == state.draw
    assert state.updated_at == at(6)


def test_host_and_provider_replicas_agree() -> None:
    request = make_request()
    proposal = propose(request, [make_expert("JS-1"), make_expert("JS-2")])
    assert proposal.audit is not None
    host_copy = dataclasses.replace(proposal, audit=None)  # what the host receives
    events: list[tuple[Event, Actor, dt.datetime]] = [
        (Confirmed(HOST_VALUE, drawn(proposal)), "host", at(5)),
        (AttendanceConfirmed(), "provider", at(6)),
    ]
    provider_state = replay(request, [(Proposed(proposal), "provider", at(4)), *events])
    host_state = replay(request, [(Proposed(host_copy), "provider", at(4)), *events])
    assert provider_state == host_state
    assert provider_state.proposal is not None and provider_state.proposal.audit is None


def test_reveal_that_does_not_match_is_refused_and_changes_nothing() -> None:
    state = proposed_state()
    assert state.proposal is not None
    wrong = bytes(32)
    with pytest.raises(VerificationError) as e:
        apply(state, Confirmed(wrong, drawn(state.proposal, wrong)), actor="host", at=at(5))
    assert e.value.reason == "REVEAL_MISMATCH"
    assert state.status == S.PROPOSED


def test_confirming_another_result_than_the_draw_is_refused() -> None:
    state = proposed_state()
    assert state.proposal is not None
    (winner,) = drawn(state.proposal)
    loser = next(e for e in ("JS-1", "JS-2") if e != winner)
    with pytest.raises(ValidationError) as e:
        apply(state, Confirmed(HOST_VALUE, (loser,)), actor="host", at=at(5))
    assert e.value.reason == "DRAW_MISMATCH"


def test_host_decline_reveals_and_records_the_refused_draw() -> None:
    state = proposed_state()
    with pytest.raises(ValidationError) as e:
        apply(state, Declined(DeclineReason.TOO_FEW_EXPERTS), actor="host", at=at(5))
    assert e.value.reason == "INVALID_EVENT"
    declined = apply(
        state,
        Declined(DeclineReason.TOO_FEW_EXPERTS, host_value=HOST_VALUE),
        actor="host",
        at=at(5),
    )
    assert declined.status == S.DECLINED
    assert declined.draw is not None and verify_draw(declined.draw)
    assert bookings_of(declined) == ()
    assert declined.assigned == ()


def test_host_cancel_of_a_proposal_must_reveal() -> None:
    state = proposed_state()
    with pytest.raises(ValidationError) as e:
        apply(state, Cancelled("no longer needed"), actor="host", at=at(5))
    assert e.value.reason == "INVALID_EVENT"
    cancelled = apply(
        state, Cancelled("no longer needed", host_value=HOST_VALUE), actor="host", at=at(5)
    )
    assert cancelled.draw is not None and verify_draw(cancelled.draw)


def test_provider_decline_needs_a_reason_text_for_other_and_no_host_value() -> None:
    state = start(make_request())
    with pytest.raises(ValidationError):
        apply(state, Declined(DeclineReason.OTHER), actor="provider", at=at(4))
    with pytest.raises(ValidationError):
        apply(
            state,
            Declined(DeclineReason.NO_ELIGIBLE_EXPERTS, host_value=HOST_VALUE),
            actor="provider",
            at=at(4),
        )
    declined = apply(state, Declined(DeclineReason.NO_ELIGIBLE_EXPERTS), actor="provider", at=at(4))
    assert (declined.status, declined.decline_reason) == (
        S.DECLINED,
        DeclineReason.NO_ELIGIBLE_EXPERTS,
    )


def _bad_proposals() -> list[tuple[str, Any]]:
    request = make_request(experts_wanted=2)
    good = propose(
        request,
        [make_expert("JS-1"), make_expert("JS-2"), make_expert("JS-3")],
        last_sent={"JS-3": D(2025, 1, 1)},
    )
    assert good.tiers == (("JS-1", "JS-2"),)
    view3 = dataclasses.replace(good.candidates[0], expert_id="JS-3")
    r = dataclasses.replace
    return [
        ("other request", r(good, request_id=OTHER)),
        ("other commitment", r(good, host_commitment=commit(bytes(32)))),
        ("short provider value", r(good, provider_value=b"x")),
        ("k too small", r(good, k=1)),
        ("no candidates", r(good, tiers=(), k=0, candidates=())),
        (
            "unreachable tier",
            r(good, tiers=(*good.tiers, ("JS-3",)), candidates=(*good.candidates, view3)),
        ),
        ("views differ", r(good, candidates=tuple(reversed(good.candidates)))),
        ("duplicate", r(good, tiers=(("JS-1", "JS-1"),))),
        (
            "wrong province",
            r(good, candidates=(r(good.candidates[0], bureau="330200"), good.candidates[1])),
        ),
        (
            "missing category",
            r(
                good,
                candidates=(
                    r(good.candidates[0], categories=frozenset({"LIGHTING"})),
                    good.candidates[1],
                ),
            ),
        ),
    ]


@pytest.mark.parametrize(
    ("name", "proposal"), _bad_proposals(), ids=[n for n, _ in _bad_proposals()]
)
def test_malformed_proposals_are_refused(name: str, proposal: Proposal) -> None:
    state = start(make_request(experts_wanted=2))
    with pytest.raises(ValidationError) as e:
        apply(state, Proposed(proposal), actor="provider", at=at(4))
    assert e.value.reason == "INVALID_EVENT", name


def test_naive_instant_and_unknown_actor_are_refused() -> None:
    state = start(make_request())
    proposal = propose(make_request(), [make_expert("JS-1")])
    with pytest.raises(ValidationError):
        apply(state, Proposed(proposal), actor="provider", at=dt.datetime(2025, 3, 4, 10))
    with pytest.raises(ValidationError) as e:
        apply(state, Proposed(proposal), actor="guest", at=at(4))  # type: ignore[arg-type]
    assert e.value.reason == "INVALID_ACTOR"


# Reschedule ---------------------------------------------------------------------------------

NEW_DATES = (D(2025, 4, 15), D(2025, 4, 16))


def test_reschedule_rechecks_availability_and_moves_the_booking() -> None:
    experts = [make_expert("JS-1"), make_expert("JS-2")]
    state = attended_state(experts=experts)
    state = apply(state, RescheduleRequested(NEW_DATES), actor="host", at=at(7))
    assert state.pending_dates == NEW_DATES
    event = reschedule_check(state, experts, list(bookings_of(state)))
    moved = apply(state, event, actor="provider", at=at(8))
    assert (moved.status, moved.dates, moved.revision, moved.pending_dates) == (
        S.CONFIRMED,
        NEW_DATES,
        1,
        None,
    )
    assert {b.dates for b in bookings_of(moved)} == {frozenset(NEW_DATES)}
    again = apply(moved, AttendanceConfirmed(), actor="provider", at=at(9))
    assert again.status == S.ATTENDANCE_CONFIRMED


@pytest.mark.parametrize(
    ("changes", "other_booking"),
    [
        pytest.param(
            {"unavailable": (DateRange(D(2025, 4, 16), D(2025, 4, 16)),)}, False, id="unavailable"
        ),
        pytest.param({}, True, id="booked"),
    ],
)
def test_reschedule_to_dates_an_expert_cannot_make_is_refused(
    changes: dict[str, Any], other_booking: bool
) -> None:
    state = apply(confirmed_state(), RescheduleRequested(NEW_DATES), actor="host", at=at(7))
    (chosen,) = state.assigned
    experts = [make_expert("JS-1"), make_expert("JS-2")]
    experts = [dataclasses.replace(e, **changes) if e.expert_id == chosen else e for e in experts]
    bookings = list(bookings_of(state))
    if other_booking:
        bookings.append(Booking(chosen, frozenset({D(2025, 4, 15)}), OTHER))
    with pytest.raises(ValidationError) as e:
        reschedule_check(state, experts, bookings)
    assert e.value.reason == "EXPERT_UNAVAILABLE"
    assert chosen in str(e.value)
    refused = apply(state, RescheduleRefused("expert on leave"), actor="provider", at=at(8))
    assert (refused.dates, refused.pending_dates, refused.status) == (DATES, None, S.CONFIRMED)


@pytest.mark.parametrize(
    "dates",
    [
        pytest.param(DATES, id="same dates"),
        pytest.param((D(2025, 3, 7),), id="past"),
        pytest.param((), id="none"),
    ],
)
def test_bad_reschedule_requests(dates: tuple[dt.date, ...]) -> None:
    with pytest.raises(ValidationError) as e:
        apply(confirmed_state(), RescheduleRequested(dates), actor="host", at=at(7))
    assert e.value.reason == "INVALID_EVENT"


def test_rescheduled_must_echo_the_pending_dates() -> None:
    state = apply(confirmed_state(), RescheduleRequested(NEW_DATES), actor="host", at=at(7))
    with pytest.raises(ValidationError) as e:
        apply(state, Rescheduled((D(2025, 4, 20),)), actor="provider", at=at(8))
    assert e.value.reason == "INVALID_EVENT"


def test_reschedule_check_without_a_pending_reschedule() -> None:
    with pytest.raises(ValidationError) as e:
        reschedule_check(confirmed_state(), [], [])
    assert e.value.reason == "INVALID_TRANSITION"


# The transition table, restated ------------------------------------------------------------

C, AC = S.CONFIRMED, S.ATTENDANCE_CONFIRMED
EXPECTED: dict[tuple[str, str], set[tuple[ExchangeStatus, bool]]] = {
    ("proposed", "provider"): {(S.REQUESTED, False)},
    ("declined", "provider"): {(S.REQUESTED, False)},
    ("declined", "host"): {(S.PROPOSED, False)},
    ("confirmed", "host"): {(S.PROPOSED, False)},
    ("attendance_confirmed", "provider"): {(C, False)},
    ("cancelled", "host"): {
        (S.REQUESTED, False),
        (S.PROPOSED, False),
        (C, False),
        (C, True),
        (AC, False),
        (AC, True),
    },
    ("cancelled", "provider"): {
        (S.PROPOSED, False),
        (C, False),
        (C, True),
        (AC, False),
        (AC, True),
    },
    ("reschedule_requested", "host"): {(C, False), (AC, False)},
    ("rescheduled", "provider"): {(C, True), (AC, True)},
    ("reschedule_refused", "provider"): {(C, True), (AC, True)},
}


def _states() -> dict[tuple[ExchangeStatus, bool], ExchangeState]:
    requested = start(make_request())
    proposed = proposed_state()
    confirmed = confirmed_state()
    attended = attended_state()
    pending = RescheduleRequested(NEW_DATES)
    return {
        (S.REQUESTED, False): requested,
        (S.PROPOSED, False): proposed,
        (C, False): confirmed,
        (C, True): apply(confirmed, pending, actor="host", at=at(7)),
        (AC, False): attended,
        (AC, True): apply(attended, pending, actor="host", at=at(7)),
        (S.DECLINED, False): apply(
            requested, Declined(DeclineReason.NO_ELIGIBLE_EXPERTS), actor="provider", at=at(4)
        ),
        (S.CANCELLED, False): apply(requested, Cancelled("gone"), actor="host", at=at(4)),
    }


def _sample(name: str, actor: str, state: ExchangeState) -> Event:
    proposal = state.proposal or propose(state.request, [make_expert("JS-1"), make_expert("JS-2")])
    samples: dict[str, Event] = {
        "proposed": Proposed(proposal),
        "declined": Declined(
            DeclineReason.TOO_FEW_EXPERTS, host_value=HOST_VALUE if actor == "host" else None
        ),
        "confirmed": Confirmed(HOST_VALUE, drawn(proposal)),
        "attendance_confirmed": AttendanceConfirmed(),
        "cancelled": Cancelled("why", host_value=HOST_VALUE if actor == "host" else None),
        "reschedule_requested": RescheduleRequested(NEW_DATES),
        "rescheduled": Rescheduled(state.pending_dates or NEW_DATES),
        "reschedule_refused": RescheduleRefused("no"),
    }
    return samples[name]


def test_the_transition_table_matches_the_restated_one() -> None:
    assert {k: {s for s, _ in v} for k, v in EXPECTED.items()} == {
        k: set(v.sources) for k, v in TRANSITIONS.items()
    }


@pytest.mark.parametrize(
    "key", list(_states()), ids=lambda k: f"{k[0].value}{'+pending' if k[1] else ''}"
)
def test_every_event_in_every_state(key: tuple[ExchangeStatus, bool]) -> None:
    state = _states()[key]
    names = {name for name, _ in EXPECTED}
    for name in sorted(names):
        for actor in ACTORS:
            event = _sample(name, actor, state)
            expected = key in EXPECTED.get((name, actor), set())
            assert allowed(state, name, actor) == expected, (name, actor)
            if expected:
                after = apply(state, event, actor=actor, at=at(10))
                assert after.history[-1].event == name
            else:
                with pytest.raises(ValidationError) as e:
                    apply(state, event, actor=actor, at=at(10))
                assert e.value.reason == "INVALID_TRANSITION", (name, actor)
                assert state.status.value in str(e.value)
