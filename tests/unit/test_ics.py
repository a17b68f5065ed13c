"""federation.ics: calendar files of expert exchanges, read back with the ``icalendar`` package.

Exchanges are built through the real lifecycle (helpers from ``test_exchange``), exported, and
parsed again: the dates must be the Shanghai inspection dates as all-day values, whatever the
instants of the signed events.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import pytest
from icalendar import Calendar, Event

from federation.errors import ValidationError
from federation.exchange import (
    AttendanceConfirmed,
    Cancelled,
    Confirmed,
    Declined,
    DeclineReason,
    ExchangeState,
    RescheduleRequested,
    apply,
    reschedule_check,
)
from federation.ics import Assignment, assignment_of, date_runs, for_bureau, for_expert, to_ics
from tests.unit.test_exchange import (
    DATES,
    HOLDER,
    HOST_VALUE,
    NEW_DATES,
    OTHER,
    at,
    attended_state,
    confirmed_state,
    drawn,
    make_expert,
    make_request,
    proposed_state,
)

D = dt.date


def assignment(state: ExchangeState) -> Assignment:
    result = assignment_of(state)
    assert result is not None
    return result


def parse(data: bytes) -> Calendar:
    calendar = Calendar.from_ical(data)
    assert isinstance(calendar, Calendar)
    return calendar


def events(data: bytes) -> list[Event]:
    return [c for c in parse(data).walk("VEVENT") if isinstance(c, Event)]


def test_attended_exchange_becomes_one_all_day_event_with_shanghai_dates() -> None:
    state = attended_state()
    data = to_ics([assignment(state)], calendar_name="王建国 – 监管专家联动")
    calendar = parse(data)
    assert str(calendar["X-WR-TIMEZONE"]) == "Asia/Shanghai"
    assert str(calendar["X-WR-CALNAME"]) == "王建国 – 监管专家联动"
    (event,) = events(data)
    start, end = event.start, event.end
    assert type(start) is dt.date and type(end) is dt.date  # all-day, no zone to shift them
    assert (start, end) == (D(2025, 4, 8), D(2025, 4, 10))  # DTEND is exclusive
    assert "DTSTART;VALUE=DATE:20250408" in data.decode()
    assert at(6) == event.DTSTAMP
    assert event.status == "CONFIRMED"
    assert event.sequence == 0
    assert event.uid == f"{state.request_id}-1@expert-exchange.cccfed"
    summary = str(event.summary)
    assert "监管专家联动检查" in summary and "Expert exchange inspection" in summary
    assert "杭州市市场监督管理局" in summary and "Hangzhou" in summary
    assert str(event.location) == "杭州市滨江区江南大道 1 号"


def test_event_instants_do_not_move_the_dates() -> None:
    """Events signed at 20:00 UTC are on the next day in Shanghai; the dates stay the same."""
    state = proposed_state()
    assert state.proposal is not None
    late = dt.datetime(2025, 3, 5, 20, 30, tzinfo=dt.UTC)
    state = apply(state, Confirmed(HOST_VALUE, drawn(state.proposal)), actor="host", at=late)
    (event,) = events(to_ics([assignment(state)], calendar_name="x"))
    assert event.start == DATES[0]
    assert late == event.DTSTAMP
    assert event.status == "TENTATIVE"  # attendance not confirmed yet


def test_description_has_people_and_categories_but_no_private_data_or_holder() -> None:
    state = attended_state()
    text = to_ics([assignment(state)], calendar_name="x").decode()
    (event,) = events(text.encode())
    description = str(event.description)
    (chosen,) = state.assigned
    assert f"专家{chosen}" in description
    assert "低压电器" in description and "Low-voltage" in description
    unfolded = text.replace("\r\n ", "")
    for secret in (make_expert("x").phone, make_expert("x").id_number, HOLDER):
        assert secret not in unfolded


def test_non_consecutive_dates_give_one_event_per_run() -> None:
    dates = (D(2025, 4, 8), D(2025, 4, 9), D(2025, 4, 11))
    state = attended_state(request=make_request(dates=dates))
    found = events(to_ics([assignment(state)], calendar_name="x"))
    assert [(e.start, e.end) for e in found] == [
        (D(2025, 4, 8), D(2025, 4, 10)),
        (D(2025, 4, 11), D(2025, 4, 12)),
    ]
    assert [e.uid.split("@")[0][-2:] for e in found] == ["-1", "-2"]
    assert date_runs(dates) == [(D(2025, 4, 8), D(2025, 4, 9)), (D(2025, 4, 11), D(2025, 4, 11))]


def test_uid_is_stable_across_exports_and_reschedules() -> None:
    experts = [make_expert("JS-1"), make_expert("JS-2")]
    state = attended_state(experts=experts)
    first = to_ics([assignment(state)], calendar_name="x")
    assert to_ics([assignment(state)], calendar_name="x") == first  # deterministic bytes
    state = apply(state, RescheduleRequested(NEW_DATES), actor="host", at=at(7))
    state = apply(state, reschedule_check(state, experts, []), actor="provider", at=at(8))
    state = apply(state, AttendanceConfirmed(), actor="provider", at=at(9))
    (before,) = events(first)
    (after,) = events(to_ics([assignment(state)], calendar_name="x"))
    assert after.uid == before.uid
    assert after.sequence == 1
    assert (after.start, after.end) == (NEW_DATES[0], D(2025, 4, 17))
    assert after.DTSTAMP > before.DTSTAMP


def test_cancelled_exchange_is_exported_as_cancelled() -> None:
    state = apply(attended_state(), Cancelled("host closed"), actor="host", at=at(7))
    (event,) = events(to_ics([assignment(state)], calendar_name="x"))
    assert event.status == "CANCELLED"
    assert str(event["TRANSP"]) == "TRANSPARENT"


def test_exchanges_that_never_booked_anyone_have_no_calendar_entry() -> None:
    proposed = proposed_state()
    declined = apply(
        proposed,
        Declined(DeclineReason.TOO_FEW_EXPERTS, host_value=HOST_VALUE),
        actor="host",
        at=at(5),
    )
    cancelled = apply(proposed, Cancelled("x", host_value=HOST_VALUE), actor="host", at=at(5))
    assert assignment_of(proposed) is None
    assert assignment_of(declined) is None
    assert assignment_of(cancelled) is None


def test_calendars_for_an_expert_and_for_a_bureau() -> None:
    one = assignment(attended_state(experts=[make_expert("JS-1")]))
    two = assignment(
        attended_state(
            request=make_request(request_id=OTHER, host_bureau="310115", dates=(D(2025, 4, 1),)),
            experts=[make_expert("JS-2", bureau="320100")],
        )
    )
    both = [two, one]
    assert for_expert(both, "JS-1") == [one]
    assert for_expert(both, "JS-9") == []
    assert for_bureau(both, "330100") == [one]  # host
    assert for_bureau(both, "310115") == [two]  # host
    assert for_bureau(both, "320100") == [two]  # sends JS-2
    assert for_bureau(both, "320000") == both  # the province sees its bureaus' experts
    assert for_bureau(both, "330000") == [one]
    assert for_bureau(both, "340000") == []
    found = events(to_ics(both, calendar_name="江苏省局 – 专家联动"))
    assert [e.start for e in found] == [D(2025, 4, 1), D(2025, 4, 8)]  # by date


def test_output_is_valid_icalendar_text() -> None:
    data = to_ics([assignment(attended_state())], calendar_name="很长的日历名称" * 10)
    lines = data.split(b"\r\n")
    assert lines[0] == b"BEGIN:VCALENDAR"
    assert all(len(line) <= 75 for line in lines)  # folded at 75 octets
    assert b"VERSION:2.0" in lines and b"CALSCALE:GREGORIAN" in lines
    assert data.endswith(b"END:VCALENDAR\r\n")
    assert to_ics([], calendar_name="empty").count(b"VEVENT") == 0


@pytest.mark.parametrize("name", ["", "  ", "a\nb", "x" * 201])
def test_bad_calendar_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError) as e:
        to_ics([], calendar_name=name)
    assert e.value.reason == "INVALID_CALENDAR_NAME"


def test_naive_update_instant_is_refused() -> None:
    bad = dataclasses.replace(assignment(confirmed_state()), updated_at=dt.datetime(2025, 3, 5, 10))
    with pytest.raises(ValidationError) as e:
        to_ics([bad], calendar_name="x")
    assert e.value.reason == "INVALID_ASSIGNMENT"
