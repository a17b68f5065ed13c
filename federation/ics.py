"""Calendars of expert exchanges as iCalendar (RFC 5545) files, for an expert or a bureau.

Why this module exists: experts and bureau staff live in their calendar programs, not in the
node's CLI. An ``.ics`` file that Outlook, Apple Calendar, Google Calendar or Thunderbird opens
puts each confirmed exchange where people look, and re-importing an updated file moves events in
place instead of duplicating them.

Choices, each for a reason:

* **All-day events with plain dates** (``DTSTART;VALUE=DATE``). Inspection dates are Shanghai
  calendar dates (:mod:`federation.periods`); an all-day event has no time zone, so a client in
  any zone shows the same dates. The calendar says ``X-WR-TIMEZONE:Asia/Shanghai`` for clients
  that want a zone. ``DTEND`` is exclusive (the day after the last date), as RFC 5545 says.
* **One event per run of consecutive dates.** Inspection dates need not be consecutive; one
  event spanning Monday to Wednesday for a Monday+Wednesday inspection would book Tuesday. RDATE
  would keep one event but is ignored by several common clients.
* **Stable UIDs**: ``<exchange id>-<n>@expert-exchange.cccfed`` for the n-th run, so a re-export
  after a change updates the same events; ``SEQUENCE`` is the number of reschedules, and a
  cancelled exchange is exported with ``STATUS:CANCELLED`` so clients remove it.
* **Deterministic output**: ``DTSTAMP`` and ``LAST-MODIFIED`` are the instant of the exchange's
  last event (from signed data), not the time of export — RFC 5545 lets ``DTSTAMP`` be the last
  revision when there is no ``METHOD`` — so the same assignments give the same bytes.
* **No holder in the calendar.** Calendars get synced to phones and cloud services; the place,
  categories and people are what an expert needs to travel, the inspected holder is not.

Pure: values in, bytes out; no clock, no files.
"""

from __future__ import annotations

import datetime as dt
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final, Literal

from icalendar import Calendar, Event

from federation import divisions
from federation.ccc_catalogue import CATEGORIES
from federation.errors import ValidationError
from federation.exchange import ExchangeState, ExchangeStatus
from federation.experts import SharedExpert

__all__ = [
    "PRODID",
    "UID_DOMAIN",
    "Assignment",
    "AssignmentStatus",
    "assignment_of",
    "date_runs",
    "for_bureau",
    "for_expert",
    "to_ics",
]

PRODID: Final = "-//cccfed//Yangtze River Delta expert exchange//ZH"
UID_DOMAIN: Final = "expert-exchange.cccfed"

AssignmentStatus = Literal["tentative", "confirmed", "cancelled"]
"""``tentative``: the host confirmed the draw, attendance not yet confirmed; ``confirmed``:
attendance confirmed; ``cancelled``: it was booked and then called off."""

_ICAL_STATUS: Final[dict[AssignmentStatus, str]] = {
    "tentative": "TENTATIVE",
    "confirmed": "CONFIRMED",
    "cancelled": "CANCELLED",
}
_MAX_CALENDAR_NAME: Final = 200


@dataclass(frozen=True, slots=True)
class Assignment:
    """Experts booked for one exchange, as a calendar shows it (see :func:`assignment_of`)."""

    exchange_id: str
    host_bureau: str
    provider_province: str
    place: str
    dates: tuple[dt.date, ...]
    """Shanghai dates, sorted."""
    categories: frozenset[str]
    experts: tuple[SharedExpert, ...]
    """Shared views only: a calendar leaves the node, so it gets no private data."""
    status: AssignmentStatus
    sequence: int
    """Reschedules so far (iCalendar ``SEQUENCE``)."""
    updated_at: dt.datetime
    """Instant of the exchange's last event, aware (``DTSTAMP``)."""


def assignment_of(state: ExchangeState) -> Assignment | None:
    """The calendar view of an exchange, or None if it never got to booked experts.

    A declined exchange, or one cancelled before the host confirmed, had no one booked and has
    no place in a calendar.
    """
    was_booked = any(
        entry.status in (ExchangeStatus.CONFIRMED, ExchangeStatus.ATTENDANCE_CONFIRMED)
        for entry in state.history
    )
    if not was_booked or state.draw is None or state.proposal is None:
        return None
    status: AssignmentStatus
    if state.status == ExchangeStatus.ATTENDANCE_CONFIRMED:
        status = "confirmed"
    elif state.status == ExchangeStatus.CONFIRMED:
        status = "tentative"
    else:
        status = "cancelled"
    views = {view.expert_id: view for view in state.proposal.candidates}
    updated_at = state.updated_at
    assert updated_at is not None
    request = state.request
    return Assignment(
        exchange_id=request.request_id,
        host_bureau=request.host_bureau,
        provider_province=request.provider_province,
        place=request.place,
        dates=state.dates,
        categories=request.categories,
        experts=tuple(views[expert_id] for expert_id in state.draw.result),
        status=status,
        sequence=state.revision,
        updated_at=updated_at,
    )


def for_expert(assignments: Iterable[Assignment], expert_id: str) -> list[Assignment]:
    """The assignments an expert takes part in (for the expert's own calendar)."""
    return [a for a in assignments if any(e.expert_id == expert_id for e in a.experts)]


def for_bureau(assignments: Iterable[Assignment], bureau: str) -> list[Assignment]:
    """The assignments a bureau hosts or sends experts to; a province sees all of its bureaus'."""
    code = divisions.bureau(bureau).code
    is_province = divisions.bureau(code).is_province

    def concerns(a: Assignment) -> bool:
        involved = {a.host_bureau, *(e.bureau for e in a.experts)}
        if code in involved:
            return True
        if is_province:
            return code == a.provider_province or any(
                divisions.province_of(b) == code for b in involved
            )
        return False

    return [a for a in assignments if concerns(a)]


def date_runs(dates: Iterable[dt.date]) -> list[tuple[dt.date, dt.date]]:
    """Consecutive runs of ``dates`` as (first, last) pairs, in order."""
    runs: list[tuple[dt.date, dt.date]] = []
    for day in sorted(set(dates)):
        if runs and day == runs[-1][1] + dt.timedelta(days=1):
            runs[-1] = (runs[-1][0], day)
        else:
            runs.append((day, day))
    return runs


def _summary(a: Assignment) -> str:
    host = divisions.bureau(a.host_bureau)
    prefix = "[已取消 Cancelled] " if a.status == "cancelled" else ""
    english = f"Expert exchange inspection · {host.label_en}"
    return f"{prefix}监管专家联动检查 · {host.bureau_zh} / {english}"


def _description(a: Assignment) -> str:
    host = divisions.bureau(a.host_bureau)
    provider = divisions.bureau(a.provider_province)
    lines = [
        f"检查地点 Place: {a.place}",
        f"检查日期 Dates: {', '.join(d.isoformat() for d in a.dates)} (Asia/Shanghai)",
        f"邀请单位 Host: {host.bureau_zh} ({host.label_en}, {host.code})",
        f"派出单位 Sending province: {provider.bureau_zh} ({provider.label_en})",
        "产品类别 Product categories: "
        + "; ".join(str(CATEGORIES[c]) for c in sorted(a.categories, key=_category_order)),
        "监管专家 Experts: "
        + "; ".join(
            f"{e.name} ({divisions.bureau(e.bureau).bureau_zh}, {e.expert_id})" for e in a.experts
        ),
        f"联动编号 Exchange: {a.exchange_id}",
    ]
    return "\n".join(lines)


def _category_order(code: str) -> int:
    return CATEGORIES[code].number


def _check_name(calendar_name: str) -> str:
    name = calendar_name.strip()
    if not name or len(name) > _MAX_CALENDAR_NAME:
        raise ValidationError(
            f"calendar name must be 1 to {_MAX_CALENDAR_NAME} characters",
            reason="INVALID_CALENDAR_NAME",
        )
    if any(unicodedata.category(char) == "Cc" for char in name):
        raise ValidationError(
            "calendar name contains a control character", reason="INVALID_CALENDAR_NAME"
        )
    return name


def _events(a: Assignment) -> list[Event]:
    if a.updated_at.tzinfo is None or a.updated_at.utcoffset() is None:
        raise ValidationError(
            f"assignment {a.exchange_id}: updated_at must be an aware datetime",
            reason="INVALID_ASSIGNMENT",
        )
    if not a.dates:
        raise ValidationError(
            f"assignment {a.exchange_id} has no dates", reason="INVALID_ASSIGNMENT"
        )
    stamp = a.updated_at.astimezone(dt.UTC)
    summary = _summary(a)
    description = _description(a)
    events: list[Event] = []
    for number, (first, last) in enumerate(date_runs(a.dates), start=1):
        event = Event()
        event.add("uid", f"{a.exchange_id}-{number}@{UID_DOMAIN}")
        event.add("dtstamp", stamp)
        event.add("last-modified", stamp)
        event.add("sequence", a.sequence)
        event.add("dtstart", first)
        event.add("dtend", last + dt.timedelta(days=1))
        event.add("summary", summary)
        event.add("location", a.place)
        event.add("description", description)
        event.add("status", _ICAL_STATUS[a.status])
        event.add("transp", "TRANSPARENT" if a.status == "cancelled" else "OPAQUE")
        events.append(event)
    return events


def to_ics(assignments: Sequence[Assignment], *, calendar_name: str) -> bytes:
    """An iCalendar file (UTF-8 bytes) with all-day events for ``assignments``.

    Use :func:`for_expert` or :func:`for_bureau` to pick an expert's or a bureau's
    assignments, and name the calendar accordingly ("张三 – 监管专家联动", "苏州市局 – 专家联动").
    Events are ordered by first date, then exchange id, so equal input gives equal bytes.
    """
    name = _check_name(calendar_name)
    calendar = Calendar()
    calendar.add("version", "2.0")
    calendar.add("prodid", PRODID)
    calendar.add("calscale", "GREGORIAN")
    calendar.add("name", name)
    calendar.add("x-wr-calname", name)
    calendar.add("x-wr-timezone", "Asia/Shanghai")
    ordered = sorted(assignments, key=lambda a: (min(a.dates, default=dt.date.min), a.exchange_id))
    for assignment in ordered:
        for event in _events(assignment):
            calendar.add_component(event)
    data: bytes = calendar.to_ical()
    return data
