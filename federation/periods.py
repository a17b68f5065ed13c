"""Legal periods of the linkage mechanism, counted the way the law counts them.

Why this module exists: a province that misses a reply deadline is in breach, and two nodes that
compute the same deadline differently will disagree about who is late. The rules are therefore
law, not taste (DOMAIN.md §5):

* **Day periods** (the 15-day reply), Civil Code arts. 201-203: the day of the event is not
  counted; the last day is the event date plus ``days``; if that last day is a rest day or a
  statutory holiday, the period ends on the first working day after it; the last day ends at
  24:00.
* **Working-day periods** (the 5- and 2-day reviews), Administrative Licensing Law art. 82:
  count working days of the official calendar, starting the day after the event; make-up
  Saturdays/Sundays (调休) count, holidays do not.

All of this happens in China Standard Time (``Asia/Shanghai``) whatever zone the server or the
caller uses: an event at 00:30 in Shanghai is on that Shanghai date even though it is the previous
day in UTC. The instant a period ends is returned in UTC, because every stored instant is UTC
(DESIGN.md §6).

A period that touches a year without official holiday data is computed with the weekday rule and
flagged ``provisional``, naming the years, so it can be shown loudly and recomputed with
:func:`recompute` once an administrator loads that year's schedule.

Pure functions: no clock reads (callers pass ``now``), no I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal
from zoneinfo import ZoneInfo

from federation.errors import CalendarError
from federation.holidays import HolidayCalendar

__all__ = [
    "MAX_PERIOD_DAYS",
    "MIN_PERIOD_DAYS",
    "TZ",
    "Due",
    "PeriodKind",
    "day_period",
    "days_left",
    "earlier_of",
    "end_of_day",
    "is_overdue",
    "recompute",
    "shanghai_date",
    "working_day_period",
]

TZ: Final = ZoneInfo("Asia/Shanghai")
"""The zone of every legal date (China Standard Time)."""

MIN_PERIOD_DAYS: Final = 1
MAX_PERIOD_DAYS: Final = 3650
"""Ten years: far beyond any period of the mechanism, small enough to catch unit mix-ups."""

_MAX_REST_RUN: Final = 60
"""No official calendar has two months without a working day; more means broken data."""

PeriodKind = Literal["days", "working_days"]
_KINDS: Final = ("days", "working_days")


@dataclass(frozen=True, slots=True)
class Due:
    """When a legal period ends, and how sure we are.

    ``due_date`` is the last day (a Shanghai date); the period ends at 24:00 of it, i.e. at
    ``ends_at`` (00:00 Shanghai of the next day, as an aware UTC datetime, exclusive).
    ``provisional`` is True when the computation relied on the weekday rule for a year without
    official data (``provisional_years``); such a due date may move when the year's schedule is
    loaded. ``start_date`` is the Shanghai date of the event, kept so the period can be
    recomputed. ``requested_date`` is a requester's reply-by date, if one was given; ``due_date``
    is then the earlier of it and the legal date (see :func:`earlier_of`).
    """

    due_date: dt.date
    ends_at: dt.datetime
    provisional: bool
    provisional_years: tuple[int, ...]
    days: int
    kind: PeriodKind
    start_date: dt.date
    requested_date: dt.date | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form; dates and instants as ISO 8601 strings."""
        return {
            "kind": self.kind,
            "days": self.days,
            "start_date": self.start_date.isoformat(),
            "due_date": self.due_date.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "provisional": self.provisional,
            "provisional_years": list(self.provisional_years),
            "requested_date": (
                self.requested_date.isoformat() if self.requested_date is not None else None
            ),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Due:
        """Inverse of :meth:`to_dict`, checking types and consistency.

        Raises:
            CalendarError: a key is missing or a value has the wrong type or is inconsistent.
        """
        try:
            kind = data["kind"]
            if kind not in _KINDS:
                raise CalendarError(f"due: unknown kind {kind!r}")
            days = data["days"]
            _check_days(days)
            years = data["provisional_years"]
            provisional = data["provisional"]
            if not isinstance(provisional, bool) or not isinstance(years, list | tuple):
                raise CalendarError("due: provisional must be a boolean, provisional_years a list")
            if any(isinstance(y, bool) or not isinstance(y, int) for y in years):
                raise CalendarError("due: provisional_years must hold integers")
            if provisional != bool(years):
                raise CalendarError("due: provisional disagrees with provisional_years")
            raw_requested = data.get("requested_date")
            due = cls(
                due_date=dt.date.fromisoformat(data["due_date"]),
                ends_at=dt.datetime.fromisoformat(data["ends_at"]),
                provisional=provisional,
                provisional_years=tuple(years),
                days=days,
                kind=kind,
                start_date=dt.date.fromisoformat(data["start_date"]),
                requested_date=(
                    dt.date.fromisoformat(raw_requested) if raw_requested is not None else None
                ),
            )
        except KeyError as e:
            raise CalendarError(f"due: missing key {e.args[0]!r}") from e
        except (TypeError, ValueError) as e:
            raise CalendarError(f"due: bad value: {e}") from e
        if due.ends_at != end_of_day(due.due_date):
            raise CalendarError("due: ends_at is not the end of due_date in Asia/Shanghai")
        if due.due_date <= due.start_date:
            raise CalendarError("due: due_date must be after start_date")
        if due.requested_date is not None and due.due_date > due.requested_date:
            raise CalendarError("due: due_date is later than requested_date")
        return due


def shanghai_date(instant: dt.datetime) -> dt.date:
    """The Asia/Shanghai calendar date of an aware instant.

    Naive datetimes are refused: guessing their zone is exactly the bug that makes a midnight
    receipt count from the wrong day.

    Raises:
        CalendarError: ``instant`` is not a datetime or is naive.
    """
    if not isinstance(instant, dt.datetime):
        raise CalendarError(f"expected a datetime, got {type(instant).__name__}")
    if instant.tzinfo is None or instant.utcoffset() is None:
        raise CalendarError(f"naive datetime {instant.isoformat()}: a time zone is required")
    return instant.astimezone(TZ).date()


def end_of_day(d: dt.date) -> dt.datetime:
    """24:00 Asia/Shanghai at the end of ``d`` (= 00:00 of the next day), as an aware UTC time."""
    try:
        midnight = dt.datetime.combine(d + dt.timedelta(days=1), dt.time(0), tzinfo=TZ)
    except OverflowError as e:
        raise CalendarError(f"date out of range: {d.isoformat()}") from e
    return midnight.astimezone(dt.UTC)


def _check_days(days: object) -> int:
    if isinstance(days, bool) or not isinstance(days, int):
        raise CalendarError(f"days must be an integer, got {type(days).__name__}")
    if not MIN_PERIOD_DAYS <= days <= MAX_PERIOD_DAYS:
        raise CalendarError(
            f"days must be between {MIN_PERIOD_DAYS} and {MAX_PERIOD_DAYS}, got {days}"
        )
    return days


def _next_day(d: dt.date) -> dt.date:
    try:
        return d + dt.timedelta(days=1)
    except OverflowError as e:
        raise CalendarError(f"period runs past the last representable date after {d}") from e


def _compute(start_date: dt.date, days: int, kind: PeriodKind, cal: HolidayCalendar) -> Due:
    """The legal due date from the event's Shanghai date; the core of both period kinds."""
    _check_days(days)
    unknown: set[int] = set()
    rest_run = 0
    if kind == "days":
        try:
            last = start_date + dt.timedelta(days=days)
        except OverflowError as e:
            raise CalendarError(f"period of {days} days from {start_date} is out of range") from e
        while True:
            status = cal.day_status(last)
            if not status.known:
                unknown.add(last.year)
            if status.is_workday:
                break
            rest_run += 1
            if rest_run > _MAX_REST_RUN:
                raise CalendarError(f"no working day within {_MAX_REST_RUN} days of {last}")
            last = _next_day(last)
    else:
        last = start_date
        counted = 0
        while counted < days:
            last = _next_day(last)
            status = cal.day_status(last)
            if not status.known:
                unknown.add(last.year)
            if status.is_workday:
                counted += 1
                rest_run = 0
            else:
                rest_run += 1
                if rest_run > _MAX_REST_RUN:
                    raise CalendarError(f"no working day within {_MAX_REST_RUN} days of {last}")
    return Due(
        due_date=last,
        ends_at=end_of_day(last),
        provisional=bool(unknown),
        provisional_years=tuple(sorted(unknown)),
        days=days,
        kind=kind,
        start_date=start_date,
    )


def day_period(start: dt.datetime, days: int, cal: HolidayCalendar) -> Due:
    """A period of ``days`` calendar days after the event at ``start`` (Civil Code 201-203).

    The event's Shanghai date is not counted, the last day is that date plus ``days``, and a last
    day that is a rest day or holiday rolls over to the next working day (a make-up Saturday is a
    working day). Only the days from the nominal last day to the due date are consulted, so only
    their years can make the result provisional.

    Raises:
        CalendarError: ``start`` is naive, or ``days`` is not an integer in 1..3650.
    """
    return _compute(shanghai_date(start), _check_days(days), "days", cal)


def working_day_period(start: dt.datetime, days: int, cal: HolidayCalendar) -> Due:
    """A period of ``days`` working days after the event at ``start`` (Admin. Licensing art. 82).

    Counting starts on the day after the event's Shanghai date; make-up Saturdays/Sundays count,
    statutory holidays and ordinary weekends do not. The due date is the ``days``-th working day.

    Raises:
        CalendarError: ``start`` is naive, or ``days`` is not an integer in 1..3650.
    """
    return _compute(shanghai_date(start), _check_days(days), "working_days", cal)


def recompute(due: Due, cal: HolidayCalendar) -> Due:
    """The same period computed again with ``cal``, e.g. after a year's schedule was loaded.

    A requester's earlier date (``requested_date``) is applied again on top of the new legal due
    date, so the result is never later than the law allows.
    """
    legal = _compute(due.start_date, due.days, due.kind, cal)
    if due.requested_date is None:
        return legal
    return earlier_of(legal, due.requested_date)


def earlier_of(due: Due, requested_date: dt.date) -> Due:
    """Apply a requester's reply-by date: the period ends at the earlier of it and the legal date.

    A requesting province may ask for a reply sooner than the law requires, never later: the
    result ends at 24:00 Shanghai of whichever date is earlier. The requested date is taken as
    given (the requester chose it, so no rest-day roll-over). It is recorded in
    ``requested_date`` even when the legal date is earlier, because a provisional legal date can
    move later once a schedule is loaded, and :func:`recompute` must then apply the request. The
    provisional flags of the legal period are kept for the same reason. Applying two requests
    keeps the earlier one.

    Raises:
        CalendarError: ``requested_date`` is not a date, or is not after the event's date.
    """
    if isinstance(requested_date, dt.datetime) or not isinstance(requested_date, dt.date):
        raise CalendarError(f"requested date must be a date, got {type(requested_date).__name__}")
    if requested_date <= due.start_date:
        raise CalendarError(
            f"requested reply-by date {requested_date} is not after the event date {due.start_date}"
        )
    if due.requested_date is not None:
        requested_date = min(requested_date, due.requested_date)
    if requested_date >= due.due_date:
        return replace(due, requested_date=requested_date)
    return replace(
        due,
        due_date=requested_date,
        ends_at=end_of_day(requested_date),
        requested_date=requested_date,
    )


def days_left(due: Due, now: dt.datetime) -> int:
    """Shanghai calendar days from ``now``'s date to the due date: 0 on the last day itself,
    negative once the period has ended (-1 the day after)."""
    return (due.due_date - shanghai_date(now)).days


def is_overdue(due: Due, now: dt.datetime) -> bool:
    """True once 24:00 Shanghai of the due date has passed at ``now``."""
    shanghai_date(now)  # refuses naive instants
    return now >= due.ends_at
