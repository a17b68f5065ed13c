"""Tests for federation.periods: Civil Code day periods and working-day periods in Shanghai time."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import chinese_calendar
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import CalendarError
from federation.holidays import HolidayCalendar, parse_schedule
from federation.periods import (
    MAX_PERIOD_DAYS,
    TZ,
    Due,
    day_period,
    days_left,
    earlier_of,
    end_of_day,
    is_overdue,
    recompute,
    shanghai_date,
    working_day_period,
)

D = dt.date
UTC = dt.UTC
NEW_YORK = ZoneInfo("America/New_York")
FIXTURE_2027 = Path(__file__).resolve().parents[2] / "tests" / "data" / "holidays-2027.json"

BASE = HolidayCalendar()
WITH_2027 = BASE.with_schedule(
    parse_schedule(FIXTURE_2027.read_bytes(), filename=FIXTURE_2027.name)
)


def sh(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> dt.datetime:
    """An instant given in Shanghai wall-clock time."""
    return dt.datetime(y, m, d, hh, mm, tzinfo=TZ)


def test_calendar_facts_the_table_relies_on() -> None:
    # Checked against the package itself, not trusted from memory.
    assert all(
        chinese_calendar.get_holiday_detail(D(2026, 2, 15) + dt.timedelta(days=i))
        == (True, "Spring Festival")
        for i in range(9)
    )
    assert chinese_calendar.is_workday(D(2026, 2, 24))
    assert all(
        chinese_calendar.get_holiday_detail(D(2026, 10, 1) + dt.timedelta(days=i))
        == (True, "National Day")
        for i in range(7)
    )
    assert chinese_calendar.is_workday(D(2026, 10, 8))
    for makeup in (D(2026, 2, 14), D(2026, 2, 28), D(2026, 9, 20), D(2026, 10, 10), D(2026, 5, 9)):
        assert makeup.weekday() >= 5 and chinese_calendar.is_workday(makeup)
    assert chinese_calendar.is_holiday(D(2026, 9, 25))  # Mid-autumn
    assert D(2026, 12, 31).weekday() == 3 and D(2027, 1, 1).weekday() == 4


PERIODS: list[Any] = [
    # (start, days, kind, expected due date, provisional years)
    pytest.param(sh(2026, 3, 2), 15, "days", D(2026, 3, 17), (), id="ordinary"),
    pytest.param(sh(2026, 3, 6), 15, "days", D(2026, 3, 23), (), id="last-day-saturday"),
    pytest.param(sh(2026, 3, 7), 15, "days", D(2026, 3, 23), (), id="last-day-sunday"),
    pytest.param(sh(2026, 2, 2), 15, "days", D(2026, 2, 24), (), id="inside-spring-festival"),
    pytest.param(sh(2026, 1, 31), 15, "days", D(2026, 2, 24), (), id="first-day-spring-festival"),
    pytest.param(sh(2026, 9, 20), 15, "days", D(2026, 10, 8), (), id="inside-national-day"),
    pytest.param(sh(2026, 9, 10), 15, "days", D(2026, 9, 28), (), id="mid-autumn-then-weekend"),
    pytest.param(sh(2026, 2, 13), 15, "days", D(2026, 2, 28), (), id="makeup-saturday-last-day"),
    pytest.param(sh(2026, 9, 5), 15, "days", D(2026, 9, 20), (), id="makeup-sunday-last-day"),
    pytest.param(sh(2026, 2, 13), 1, "days", D(2026, 2, 14), (), id="one-day-makeup-saturday"),
    pytest.param(
        dt.datetime(2026, 3, 1, 16, 30, tzinfo=UTC),  # 00:30 on 2 March in Shanghai
        15,
        "days",
        D(2026, 3, 17),
        (),
        id="0030-shanghai-is-previous-day-utc",
    ),
    pytest.param(sh(2026, 3, 1, 23, 59), 15, "days", D(2026, 3, 16), (), id="2359-shanghai"),
    pytest.param(
        dt.datetime(2026, 3, 1, 11, 30, tzinfo=NEW_YORK),  # 00:30 on 2 March in Shanghai
        15,
        "days",
        D(2026, 3, 17),
        (),
        id="new-york-clock",
    ),
    pytest.param(sh(2026, 12, 20), 15, "days", D(2027, 1, 4), (2027,), id="into-2027"),
    pytest.param(sh(2027, 1, 22), 15, "days", D(2027, 2, 8), (2027,), id="2027-weekend-rule"),
    pytest.param(sh(2026, 3, 6), 5, "working_days", D(2026, 3, 13), (), id="wd-ordinary"),
    pytest.param(sh(2026, 3, 7), 5, "working_days", D(2026, 3, 13), (), id="wd-from-saturday"),
    pytest.param(sh(2026, 2, 12), 5, "working_days", D(2026, 2, 26), (), id="wd5-spring-festival"),
    pytest.param(sh(2026, 2, 12), 2, "working_days", D(2026, 2, 14), (), id="wd2-makeup-saturday"),
    pytest.param(sh(2026, 2, 13), 2, "working_days", D(2026, 2, 24), (), id="wd2-spring-festival"),
    pytest.param(sh(2026, 2, 26), 2, "working_days", D(2026, 2, 28), (), id="wd2-makeup-sat-feb28"),
    pytest.param(sh(2026, 9, 30), 2, "working_days", D(2026, 10, 9), (), id="wd2-national-day"),
    pytest.param(sh(2026, 9, 30), 5, "working_days", D(2026, 10, 13), (), id="wd5-national-day"),
    pytest.param(sh(2026, 10, 9), 2, "working_days", D(2026, 10, 12), (), id="wd2-makeup-oct10"),
    pytest.param(sh(2026, 9, 24), 2, "working_days", D(2026, 9, 29), (), id="wd2-mid-autumn"),
    pytest.param(sh(2026, 4, 29), 5, "working_days", D(2026, 5, 9), (), id="wd5-labour-day"),
    pytest.param(sh(2026, 12, 28), 5, "working_days", D(2027, 1, 4), (2027,), id="wd5-into-2027"),
]


@pytest.mark.parametrize(("start", "days", "kind", "due_date", "years"), PERIODS)
def test_period_table(
    start: dt.datetime, days: int, kind: str, due_date: dt.date, years: tuple[int, ...]
) -> None:
    fn = day_period if kind == "days" else working_day_period
    due = fn(start, days, BASE)
    assert due.due_date == due_date
    assert due.kind == kind and due.days == days
    assert due.start_date == shanghai_date(start)
    assert due.provisional_years == years
    assert due.provisional is bool(years)
    assert due.ends_at == dt.datetime.combine(due_date + dt.timedelta(days=1), dt.time(), TZ)
    assert due.ends_at.utcoffset() == dt.timedelta(0)
    assert due.ends_at.hour == 16  # 24:00 Shanghai is 16:00 UTC
    assert BASE.is_workday(due.due_date)
    assert due.requested_date is None


def test_receipt_at_0030_shanghai_counts_from_the_shanghai_date() -> None:
    at_0030 = dt.datetime(2026, 3, 1, 16, 30, tzinfo=UTC)
    assert at_0030.date() == D(2026, 3, 1)  # the naive UTC reading would be wrong
    assert shanghai_date(at_0030) == D(2026, 3, 2)
    due = day_period(at_0030, 15, BASE)
    assert due.due_date == D(2026, 3, 17)
    assert due.ends_at == dt.datetime(2026, 3, 17, 16, 0, tzinfo=UTC)
    assert working_day_period(at_0030, 2, BASE).due_date == D(2026, 3, 4)


@pytest.mark.parametrize(
    ("start", "days", "kind", "provisional_date", "official_date"),
    [
        # 6 Feb 2027 (Sat): weekend rule gives Mon 8 Feb; the fixture makes 5-13 Feb Spring
        # Festival and Sun 14 Feb a make-up workday.
        pytest.param(sh(2027, 1, 22), 15, "days", D(2027, 2, 8), D(2027, 2, 14), id="changes"),
        # Mon 4 Jan 2027 is a working day either way.
        pytest.param(sh(2026, 12, 20), 15, "days", D(2027, 1, 4), D(2027, 1, 4), id="same"),
        # Fri 1 Jan 2027 counts provisionally, is New Year's Day in the fixture.
        pytest.param(
            sh(2026, 12, 28), 5, "working_days", D(2027, 1, 4), D(2027, 1, 5), id="wd-changes"
        ),
        # Sun 25 Apr 2027 is a make-up workday in the fixture.
        pytest.param(
            sh(2027, 4, 23), 1, "working_days", D(2027, 4, 26), D(2027, 4, 25), id="wd-earlier"
        ),
    ],
)
def test_provisional_2027_is_recomputed_after_loading_schedule(
    start: dt.datetime,
    days: int,
    kind: str,
    provisional_date: dt.date,
    official_date: dt.date,
) -> None:
    fn = day_period if kind == "days" else working_day_period
    before = fn(start, days, BASE)
    assert before.provisional and before.provisional_years == (2027,)
    assert before.due_date == provisional_date
    after = recompute(before, WITH_2027)
    assert not after.provisional and after.provisional_years == ()
    assert after.due_date == official_date
    assert after == fn(start, days, WITH_2027)


def test_days_validation() -> None:
    start = sh(2026, 3, 2)
    for bad in (0, -1, MAX_PERIOD_DAYS + 1, True, 1.5, "15", None):
        for fn in (day_period, working_day_period):
            with pytest.raises(CalendarError, match="days must be"):
                fn(start, bad, BASE)  # type: ignore[arg-type]
    assert day_period(start, MAX_PERIOD_DAYS, BASE).provisional  # ten years reach past 2026
    assert working_day_period(start, MAX_PERIOD_DAYS, BASE).days == MAX_PERIOD_DAYS


def test_naive_instants_are_refused() -> None:
    naive = dt.datetime(2026, 3, 2, 10, 0)
    due = day_period(sh(2026, 3, 2), 15, BASE)
    with pytest.raises(CalendarError, match="naive"):
        day_period(naive, 15, BASE)
    with pytest.raises(CalendarError, match="naive"):
        working_day_period(naive, 5, BASE)
    with pytest.raises(CalendarError, match="naive"):
        days_left(due, naive)
    with pytest.raises(CalendarError, match="naive"):
        is_overdue(due, naive)
    with pytest.raises(CalendarError, match="expected a datetime"):
        shanghai_date(D(2026, 3, 2))  # type: ignore[arg-type]


def test_days_left_and_overdue_around_the_last_day() -> None:
    due = day_period(sh(2026, 3, 2), 15, BASE)  # last day 17 March
    assert days_left(due, sh(2026, 3, 2)) == 15
    assert days_left(due, sh(2026, 3, 17, 0, 0)) == 0
    assert not is_overdue(due, sh(2026, 3, 17, 23, 59))
    assert days_left(due, sh(2026, 3, 17, 23, 59)) == 0
    assert is_overdue(due, sh(2026, 3, 18, 0, 0))
    assert days_left(due, sh(2026, 3, 18, 0, 0)) == -1
    assert days_left(due, sh(2026, 3, 25)) == -8
    # 23:30 UTC on 17 March is already 18 March in Shanghai.
    late = dt.datetime(2026, 3, 17, 23, 30, tzinfo=UTC)
    assert is_overdue(due, late) and days_left(due, late) == -1


def test_earlier_of() -> None:
    due = day_period(sh(2026, 3, 2), 15, BASE)
    earlier = earlier_of(due, D(2026, 3, 10))
    assert earlier.due_date == D(2026, 3, 10) == earlier.requested_date
    assert earlier.ends_at == end_of_day(D(2026, 3, 10))
    assert (earlier.kind, earlier.days, earlier.start_date) == (due.kind, due.days, due.start_date)
    later = earlier_of(due, D(2026, 4, 1))
    assert later.due_date == due.due_date and later.ends_at == due.ends_at
    assert later.requested_date == D(2026, 4, 1)
    assert earlier_of(earlier, D(2026, 3, 12)).due_date == D(2026, 3, 10)  # keeps the earlier
    assert earlier_of(earlier, D(2026, 3, 5)).due_date == D(2026, 3, 5)
    # A requested Sunday is taken as given: the requester chose it.
    assert earlier_of(due, D(2026, 3, 8)).due_date == D(2026, 3, 8)
    assert recompute(earlier, BASE) == earlier


@pytest.mark.parametrize(
    "bad",
    [D(2026, 3, 2), D(2026, 3, 1), dt.datetime(2026, 3, 10, tzinfo=UTC), "2026-03-10"],
)
def test_earlier_of_rejects(bad: Any) -> None:
    due = day_period(sh(2026, 3, 2), 15, BASE)
    with pytest.raises(CalendarError, match="requested"):
        earlier_of(due, bad)


def test_requested_date_survives_recompute_when_legal_date_moves() -> None:
    provisional = day_period(sh(2027, 1, 22), 15, BASE)  # 8 Feb, provisional
    asked = earlier_of(provisional, D(2027, 2, 10))
    assert asked.due_date == D(2027, 2, 8) and asked.provisional
    official = recompute(asked, WITH_2027)  # legal date becomes 14 Feb
    assert official.due_date == D(2027, 2, 10) and not official.provisional
    assert official.requested_date == D(2027, 2, 10)


def test_to_dict_is_json_and_round_trips() -> None:
    due = earlier_of(day_period(sh(2026, 12, 20), 15, BASE), D(2026, 12, 31))
    data = json.loads(json.dumps(due.to_dict()))
    assert data == {
        "kind": "days",
        "days": 15,
        "start_date": "2026-12-20",
        "due_date": "2026-12-31",
        "ends_at": "2026-12-31T16:00:00+00:00",
        "provisional": True,
        "provisional_years": [2027],
        "requested_date": "2026-12-31",
    }
    assert Due.from_dict(data) == due
    plain = working_day_period(sh(2026, 2, 12), 5, BASE)
    assert Due.from_dict(plain.to_dict()) == plain


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kind": "weeks"}, "unknown kind"),
        ({"days": 0}, "days must be"),
        ({"ends_at": "2026-03-17T16:00:00+00:00"}, "ends_at is not the end"),
        ({"due_date": "2026-03-32"}, "bad value"),
        ({"provisional": False}, "disagrees"),
        ({"provisional": "yes"}, "must be a boolean"),
        ({"provisional_years": [True]}, "integers"),
        ({"requested_date": "2026-12-30"}, "later than requested_date"),
        ({"start_date": "2027-01-05"}, "after start_date"),
    ],
)
def test_from_dict_rejects(change: dict[str, Any], message: str) -> None:
    data = day_period(sh(2026, 12, 20), 15, BASE).to_dict()
    data.update(change)
    with pytest.raises(CalendarError, match=message):
        Due.from_dict(data)


def test_from_dict_missing_key() -> None:
    data = day_period(sh(2026, 3, 2), 15, BASE).to_dict()
    del data["due_date"]
    with pytest.raises(CalendarError, match="missing key 'due_date'") as info:
        Due.from_dict(data)
    assert isinstance(info.value.__cause__, KeyError)


# ---------------------------------------------------------------------------------------------
# Properties

ZONES = st.sampled_from(
    [UTC, TZ, NEW_YORK, ZoneInfo("Pacific/Kiritimati"), ZoneInfo("Pacific/Pago_Pago")]
)
STARTS = st.datetimes(
    min_value=dt.datetime(2004, 1, 2), max_value=dt.datetime(2030, 12, 31), timezones=ZONES
)
DAYS = st.integers(min_value=1, max_value=400)
KINDS = st.sampled_from(["days", "working_days"])
CALENDARS = st.sampled_from([BASE, WITH_2027])


def _period(start: dt.datetime, days: int, kind: str, cal: HolidayCalendar) -> Due:
    return (day_period if kind == "days" else working_day_period)(start, days, cal)


def _dates(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


@settings(deadline=None)
@given(start=STARTS, days=DAYS, kind=KINDS, cal=CALENDARS)
def test_property_definition_holds(
    start: dt.datetime, days: int, kind: str, cal: HolidayCalendar
) -> None:
    due = _period(start, days, kind, cal)
    first = shanghai_date(start)
    assert cal.is_workday(due.due_date)
    assert due.ends_at > start
    assert due.ends_at - start > dt.timedelta(days=days)
    assert due.ends_at == end_of_day(due.due_date)
    if kind == "days":
        nominal = first + dt.timedelta(days=days)
        assert due.due_date >= nominal
        touched = _dates(nominal, due.due_date)
        assert not any(cal.is_workday(d) for d in touched[:-1])
    else:
        touched = _dates(first + dt.timedelta(days=1), due.due_date)
        assert sum(cal.is_workday(d) for d in touched) == days
    # Provisional iff a day of a year without official data was consulted.
    unknown = sorted({d.year for d in touched if not cal.is_known_year(d.year)})
    assert due.provisional_years == tuple(unknown)
    assert due.provisional is bool(unknown)
    last_known = cal.known_years()[-1]
    assert due.provisional is (due.due_date.year > last_known)


@settings(deadline=None)
@given(start=STARTS, days=st.integers(min_value=1, max_value=399), kind=KINDS, cal=CALENDARS)
def test_property_monotone_in_days(
    start: dt.datetime, days: int, kind: str, cal: HolidayCalendar
) -> None:
    shorter = _period(start, days, kind, cal)
    longer = _period(start, days + 1, kind, cal)
    if kind == "working_days":
        assert shorter.due_date < longer.due_date
    else:
        assert shorter.due_date <= longer.due_date


@settings(deadline=None)
@given(start=STARTS, days=DAYS, kind=KINDS, zone=ZONES)
def test_property_same_instant_any_zone_same_due(
    start: dt.datetime, days: int, kind: str, zone: dt.tzinfo
) -> None:
    assert _period(start, days, kind, BASE) == _period(start.astimezone(zone), days, kind, BASE)


@settings(deadline=None)
@given(start=STARTS, days=DAYS, kind=KINDS)
def test_property_recompute_equals_fresh_computation(
    start: dt.datetime, days: int, kind: str
) -> None:
    before = _period(start, days, kind, BASE)
    assert recompute(before, BASE) == before
    assert recompute(before, WITH_2027) == _period(start, days, kind, WITH_2027)
    assert Due.from_dict(json.loads(json.dumps(before.to_dict()))) == before


@settings(deadline=None)
@given(start=STARTS, days=DAYS, kind=KINDS, now=STARTS)
def test_property_days_left_agrees_with_is_overdue(
    start: dt.datetime, days: int, kind: str, now: dt.datetime
) -> None:
    due = _period(start, days, kind, BASE)
    assert is_overdue(due, now) is (days_left(due, now) < 0)


@settings(deadline=None)
@given(start=STARTS, days=DAYS, offset=st.integers(min_value=1, max_value=600))
def test_property_earlier_of_never_later_than_law(
    start: dt.datetime, days: int, offset: int
) -> None:
    legal = day_period(start, days, BASE)
    requested = legal.start_date + dt.timedelta(days=offset)
    result = earlier_of(legal, requested)
    assert result.due_date == min(legal.due_date, requested)
    assert result.due_date <= legal.due_date
    assert result.ends_at == end_of_day(result.due_date)
    assert result.provisional_years == legal.provisional_years
