"""Tests for federation.holidays: the package data, loaded schedules, and strict file parsing."""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import chinese_calendar
import pytest

from federation.errors import CalendarError
from federation.holidays import (
    MAX_SCHEDULE_BYTES,
    DayStatus,
    HolidayCalendar,
    YearSchedule,
    parse_schedule,
)

ROOT = Path(__file__).resolve().parents[2]
FIXTURE_2027 = ROOT / "tests" / "data" / "holidays-2027.json"
DOCS_EXAMPLE = ROOT / "docs" / "examples" / "holidays-schedule.example.json"

D = dt.date


def _fixture_2027() -> YearSchedule:
    return parse_schedule(FIXTURE_2027.read_bytes(), filename=FIXTURE_2027.name)


def _base() -> dict[str, Any]:
    """A small valid 2027 schedule; each rejection test breaks exactly one thing in it."""
    return {
        "year": 2027,
        "source": "test",
        "holidays": [
            {
                "name": "Spring Festival",
                "name_zh": "春节",
                "dates": ["2027-02-05", "2027-02-06", "2027-02-07", "2027-02-08"],
            },
            {"name": "National Day", "name_zh": "国庆节", "dates": ["2027-10-01"]},
        ],
        "workdays": [{"date": "2027-02-14", "name_zh": "春节调休"}],
    }


def _encode(doc: Any) -> bytes:
    return json.dumps(doc, ensure_ascii=False).encode("utf-8")


# ---------------------------------------------------------------------------------------------
# Package data


def test_every_package_day_agrees_with_chinese_calendar() -> None:
    cal = HolidayCalendar()
    d = D(2004, 1, 1)
    while d <= D(2026, 12, 31):
        status = cal.day_status(d)
        expected_holiday, expected_name = chinese_calendar.get_holiday_detail(d)
        assert status.known, d
        assert status.is_workday == chinese_calendar.is_workday(d), d
        assert status.is_workday == (not expected_holiday), d
        if status.holiday_name is not None:
            assert status.holiday_name == expected_name, d
        if status.is_makeup_workday:
            assert d.weekday() >= 5 and expected_name is not None, d
        d += dt.timedelta(days=1)


def test_package_ends_where_chinese_calendar_ends() -> None:
    cal = HolidayCalendar()
    assert cal.known_years() == tuple(range(2004, 2027))
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(D(2027, 1, 4))
    assert not cal.is_known_year(2027)


def test_spring_festival_and_national_day_2026_from_the_package() -> None:
    # Verify the facts the period tests rely on against the package itself.
    sf = [D(2026, 2, 15) + dt.timedelta(days=i) for i in range(9)]
    nd = [D(2026, 10, 1) + dt.timedelta(days=i) for i in range(7)]
    for d in sf:
        assert chinese_calendar.get_holiday_detail(d) == (True, "Spring Festival")
    for d in nd:
        assert chinese_calendar.get_holiday_detail(d) == (True, "National Day")
    assert chinese_calendar.is_workday(D(2026, 2, 14))  # Saturday
    assert chinese_calendar.is_workday(D(2026, 2, 28))  # Saturday
    assert chinese_calendar.is_workday(D(2026, 2, 24))

    cal = HolidayCalendar()
    s = cal.day_status(D(2026, 2, 17))
    assert s == DayStatus(
        date=D(2026, 2, 17),
        is_workday=False,
        known=True,
        holiday_name="Spring Festival",
        holiday_name_zh="春节",
    )
    assert s.kind == "holiday"
    sat = cal.day_status(D(2026, 2, 28))
    assert sat.is_workday and sat.is_makeup_workday and sat.makeup_name_zh == "春节调休"
    assert sat.kind == "makeup_workday"
    assert cal.day_status(D(2026, 3, 7)).kind == "weekend"
    assert cal.day_status(D(2026, 3, 9)).kind == "workday"


@pytest.mark.parametrize(
    ("day", "workday", "weekend"),
    [
        (D(2027, 2, 8), True, False),  # Monday: provisional working day
        (D(2027, 2, 6), False, True),  # Saturday
        (D(2027, 2, 7), False, True),  # Sunday
        (D(2030, 10, 1), True, False),  # would be National Day, but no data: weekday rule
    ],
)
def test_unknown_year_is_provisional_weekday_rule(
    day: dt.date, workday: bool, weekend: bool
) -> None:
    s = HolidayCalendar().day_status(day)
    assert s.known is False and s.provisional
    assert s.is_workday is workday
    assert s.holiday_name is None and not s.is_makeup_workday
    assert (s.kind == "weekend") is weekend


def test_day_status_refuses_datetime() -> None:
    with pytest.raises(CalendarError):
        HolidayCalendar().day_status(dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_year_detail_2026_lists_holidays_and_makeup_days() -> None:
    detail = HolidayCalendar().year_detail(2026)
    assert detail.known and detail.origin == "package"
    assert detail.source is not None and detail.source.startswith("chinesecalendar")
    by_zh = {h.name_zh: h for h in detail.holidays}
    assert set(by_zh) == {"元旦", "春节", "清明节", "劳动节", "端午节", "中秋节", "国庆节"}
    assert by_zh["春节"].name == "Spring Festival"
    assert by_zh["春节"].dates == tuple(D(2026, 2, 15) + dt.timedelta(days=i) for i in range(9))
    assert by_zh["国庆节"].dates[0] == D(2026, 10, 1) and by_zh["国庆节"].dates[-1] == D(
        2026, 10, 7
    )
    assert [w.date for w in detail.workdays] == [
        D(2026, 1, 4),
        D(2026, 2, 14),
        D(2026, 2, 28),
        D(2026, 5, 9),
        D(2026, 9, 20),
        D(2026, 10, 10),
    ]
    as_json = json.loads(json.dumps(detail.to_dict(), ensure_ascii=False))
    assert as_json["holidays"][1]["name_zh"] == "春节"


def test_year_detail_of_unknown_year_is_empty() -> None:
    detail = HolidayCalendar().year_detail(2027)
    assert not detail.known and detail.origin == "none" and detail.source is None
    assert detail.holidays == () and detail.workdays == ()


# ---------------------------------------------------------------------------------------------
# Loaded schedules


def test_fixture_is_labelled_hypothetical() -> None:
    s = _fixture_2027()
    assert s.year == 2027
    assert s.note is not None and "HYPOTHETICAL" in s.note and "NOT THE OFFICIAL" in s.note


def test_with_schedule_extends_and_is_immutable() -> None:
    base = HolidayCalendar()
    s = _fixture_2027()
    cal = base.with_schedule(s)
    assert cal is not base
    assert not base.is_known_year(2027) and cal.is_known_year(2027)
    assert cal.known_years()[-1] == 2027
    assert cal.schedules == (s,)
    assert base.schedules == ()
    st = cal.day_status(D(2027, 2, 8))  # Monday inside the fixture's Spring Festival
    assert st.known and not st.is_workday and st.holiday_name_zh == "春节"
    assert cal.day_status(D(2027, 2, 14)).is_makeup_workday
    assert cal.year_detail(2027).origin == "schedule"
    assert cal.year_detail(2027).source == s.source
    with pytest.raises(AttributeError):
        cal._loaded = {}


def test_later_schedule_for_same_year_replaces_earlier() -> None:
    first = _fixture_2027()
    doc = _base()
    second = parse_schedule(_encode(doc), filename="corrected-2027.json")
    cal = HolidayCalendar().with_schedule(first).with_schedule(second)
    assert cal.schedules == (second,)
    # 2027-01-01 was a holiday in the first schedule only: now an ordinary (known) Friday.
    assert cal.day_status(D(2027, 1, 1)) == DayStatus(D(2027, 1, 1), is_workday=True, known=True)


def test_docs_example_parses_and_matches_the_package_for_2026() -> None:
    s = parse_schedule(DOCS_EXAMPLE.read_bytes(), filename=DOCS_EXAMPLE.name)
    assert s.year == 2026 and s.note
    overridden = HolidayCalendar([s])
    package = HolidayCalendar()
    assert overridden.year_detail(2026).origin == "schedule"
    d = D(2026, 1, 1)
    while d.year == 2026:
        a, b = overridden.day_status(d), package.day_status(d)
        assert (a.is_workday, a.is_makeup_workday, a.holiday_name) == (
            b.is_workday,
            b.is_makeup_workday,
            b.holiday_name,
        ), d
        d += dt.timedelta(days=1)


def test_to_json_round_trips() -> None:
    s = _fixture_2027()
    again = parse_schedule(s.to_json(), filename="persisted.json")
    assert again == s
    assert json.loads(s.to_json())["note"] == s.note


def test_toml_is_accepted_with_native_and_string_dates() -> None:
    text = """
year = 2027
source = "test"

[[holidays]]
name = "Spring Festival"
name_zh = "春节"
dates = [2027-02-05, "2027-02-06", 2027-02-07, 2027-02-08]

[[holidays]]
name = "National Day"
name_zh = "国庆节"
dates = ["2027-10-01"]

[[workdays]]
date = 2027-02-14
name_zh = "春节调休"
"""
    from_toml = parse_schedule(text.encode(), filename="h.toml")
    from_json = parse_schedule(_encode(_base()), filename="h.json")
    assert from_toml == from_json
    assert parse_schedule(text.encode(), filename="whatever.txt", fmt="toml") == from_toml


def test_utf8_bom_and_unsorted_dates_are_accepted() -> None:
    doc = _base()
    doc["holidays"].reverse()
    doc["holidays"][1]["dates"].reverse()
    s = parse_schedule(b"\xef\xbb\xbf" + _encode(doc), filename="bom.json")
    assert [h.name for h in s.holidays] == ["Spring Festival", "National Day"]
    assert s.holidays[0].dates[0] == D(2027, 2, 5)


def test_optional_keys() -> None:
    doc = _base()
    doc["workdays"] = []
    doc["note"] = "  trimmed  "
    s = parse_schedule(_encode(doc), filename="h.json")
    assert s.workdays == () and s.note == "trimmed"


def test_weekend_only_block_is_accepted_at_new_year() -> None:
    # 2028-01-01/02 are Saturday/Sunday: the weekend part of a New Year block crossing years.
    doc = {
        "year": 2028,
        "source": "test",
        "holidays": [{"name": "New Year's Day", "name_zh": "元旦", "dates": ["2028-01-01"]}],
        "workdays": [],
    }
    s = parse_schedule(_encode(doc), filename="h.json")
    assert s.holidays[0].dates == (D(2028, 1, 1),)


# ---------------------------------------------------------------------------------------------
# Every rejection path


Mutator = Callable[[dict[str, Any]], Any]


def _set(path: tuple[str | int, ...], value: Any) -> Mutator:
    def mutate(doc: dict[str, Any]) -> Any:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc

    return mutate


def _delete(path: tuple[str | int, ...]) -> Mutator:
    def mutate(doc: dict[str, Any]) -> Any:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]
        return doc

    return mutate


def _append_workday(entry: Any) -> Mutator:
    def mutate(doc: dict[str, Any]) -> Any:
        doc["workdays"].append(entry)
        return doc

    return mutate


def _append_holiday(entry: Any) -> Mutator:
    def mutate(doc: dict[str, Any]) -> Any:
        doc["holidays"].append(entry)
        return doc

    return mutate


REJECTIONS: list[tuple[str, Mutator, str]] = [
    ("top-level list", lambda doc: [doc], "top level: expected an object"),
    ("unknown top key", _set(("comment",), "x"), "comment: unknown key"),
    ("missing year", _delete(("year",)), "year: required key is missing"),
    ("missing source", _delete(("source",)), "source: required key is missing"),
    ("missing holidays", _delete(("holidays",)), "holidays: required key is missing"),
    ("missing workdays", _delete(("workdays",)), "workdays: required key is missing"),
    ("year as string", _set(("year",), "2027"), "year: expected an integer year"),
    ("year as bool", _set(("year",), True), "year: expected an integer year"),
    ("year as float", _set(("year",), 2027.0), "year: expected an integer year"),
    ("year too early", _set(("year",), 1999), "year: 1999 is outside"),
    ("year too late", _set(("year",), 2200), "year: 2200 is outside"),
    ("source empty", _set(("source",), "  "), "source: must not be empty"),
    ("source not string", _set(("source",), 7), "source: expected a string"),
    ("note not string", _set(("note",), ["x"]), "note: expected a string"),
    ("holidays not list", _set(("holidays",), {}), "holidays: expected a list"),
    ("holidays empty", _set(("holidays",), []), "holidays: must list at least one holiday"),
    ("holiday not object", _set(("holidays", 0), "春节"), "holidays[0]: expected an object"),
    (
        "holiday unknown key",
        _set(("holidays", 1, "days"), 3),
        "holidays[1].days: unknown key",
    ),
    ("holiday no name", _delete(("holidays", 0, "name")), "holidays[0].name: required key"),
    (
        "holiday no name_zh",
        _delete(("holidays", 0, "name_zh")),
        "holidays[0].name_zh: required key",
    ),
    ("holiday no dates", _delete(("holidays", 0, "dates")), "holidays[0].dates: required key"),
    ("holiday empty name", _set(("holidays", 0, "name"), ""), "holidays[0].name: must not be"),
    ("dates not list", _set(("holidays", 1, "dates"), "2027-10-01"), "dates: expected a list"),
    ("dates empty", _set(("holidays", 1, "dates"), []), "holidays[1].dates: must list at least"),
    (
        "slashes",
        _set(("holidays", 1, "dates", 0), "2027/10/01"),
        "holidays[1].dates[0]: '2027/10/01' is not a date in YYYY-MM-DD form",
    ),
    (
        "no padding",
        _set(("holidays", 1, "dates", 0), "2027-10-1"),
        "holidays[1].dates[0]: '2027-10-1' is not a date in YYYY-MM-DD form",
    ),
    (
        "basic ISO form",
        _set(("holidays", 1, "dates", 0), "20271001"),
        "is not a date in YYYY-MM-DD form",
    ),
    (
        "impossible date",
        _set(("holidays", 1, "dates", 0), "2027-02-30"),
        "holidays[1].dates[0]: '2027-02-30' is not a real date",
    ),
    (
        "date as number",
        _set(("holidays", 1, "dates", 0), 20271001),
        "holidays[1].dates[0]: expected a YYYY-MM-DD date, got an integer",
    ),
    (
        "holiday in wrong year",
        _set(("holidays", 1, "dates", 0), "2026-10-01"),
        "holidays[1].dates[0]: 2026-10-01 is not in 2027",
    ),
    (
        "duplicate date in block",
        _set(("holidays", 0, "dates", 3), "2027-02-05"),
        "holidays[0].dates[3]: 2027-02-05 is listed twice (also at holidays[0].dates[0])",
    ),
    (
        "duplicate date across blocks",
        _set(("holidays", 1, "dates", 0), "2027-02-06"),
        "holidays[1].dates[0]: 2027-02-06 is listed twice (also at holidays[0].dates[1])",
    ),
    (
        "gap in block",
        _set(("holidays", 0, "dates", 3), "2027-02-18"),
        "holidays[0].dates: dates must be one consecutive run, but 2027-02-07 is followed by "
        "2027-02-18",
    ),
    (
        "weekend-only block",
        _append_holiday({"name": "X", "name_zh": "某节", "dates": ["2027-03-06", "2027-03-07"]}),
        "holidays[2].dates: 'X' falls only on Saturdays/Sundays",
    ),
    ("workdays not list", _set(("workdays",), None), "workdays: expected a list, got null"),
    ("workday not object", _set(("workdays", 0), "2027-02-14"), "workdays[0]: expected an object"),
    (
        "workday unknown key",
        _set(("workdays", 0, "holiday"), "春节"),
        "workdays[0].holiday: unknown key",
    ),
    ("workday no date", _delete(("workdays", 0, "date")), "workdays[0].date: required key"),
    (
        "workday no name_zh",
        _delete(("workdays", 0, "name_zh")),
        "workdays[0].name_zh: required key",
    ),
    ("workday empty name", _set(("workdays", 0, "name"), ""), "workdays[0].name: must not be"),
    (
        "workday in wrong year",
        _set(("workdays", 0, "date"), "2026-12-26"),
        "workdays[0].date: 2026-12-26 is not in 2027",
    ),
    (
        "workday is also a holiday",
        _set(("workdays", 0, "date"), "2027-02-06"),
        "workdays[0].date: 2027-02-06 is already listed as a holiday at holidays[0].dates[1]",
    ),
    (
        "duplicate workday",
        _append_workday({"date": "2027-02-14", "name_zh": "春节调休"}),
        "workdays[1].date: 2027-02-14 is already listed as a make-up workday at workdays[0].date",
    ),
    (
        "workday on a weekday",
        _set(("workdays", 0, "date"), "2027-02-15"),
        "workdays[0].date: 2027-02-15 (Monday) is a weekday",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [pytest.param(m, msg, id=name) for name, m, msg in REJECTIONS],
)
def test_rejections_name_file_and_key(mutate: Mutator, message: str) -> None:
    doc = mutate(copy.deepcopy(_base()))
    with pytest.raises(CalendarError) as info:
        parse_schedule(_encode(doc), filename="holidays-2027.json")
    text = str(info.value)
    assert text.startswith("holidays-2027.json: "), text
    assert message in text, text
    assert info.value.reason == "CALENDAR"


def test_base_document_is_valid() -> None:
    # Guards the rejection table: each case must fail because of its one mutation.
    assert parse_schedule(_encode(_base()), filename="h.json").year == 2027


def test_impossible_date_is_chained() -> None:
    doc = _set(("holidays", 1, "dates", 0), "2027-02-30")(_base())
    with pytest.raises(CalendarError) as info:
        parse_schedule(_encode(doc), filename="h.json")
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("data", "filename", "message", "cause"),
    [
        pytest.param(b"\xff\xfe{}", "h.json", "h.json: not UTF-8 (byte 0)", UnicodeDecodeError),
        pytest.param(
            '{"year": 2027}'.encode("utf-16"), "h.json", "not UTF-8", UnicodeDecodeError, id="u16"
        ),
        pytest.param(
            '{"source": "国务院"}'.encode("gb18030"),
            "h.json",
            "not UTF-8",
            UnicodeDecodeError,
            id="gbk",
        ),
        pytest.param(b"", "h.json", "h.json: file is empty", None, id="empty"),
        pytest.param(b"  \n", "h.json", "h.json: file is empty", None, id="blank"),
        pytest.param(
            b'{"year": 2027,}',
            "h.json",
            "h.json: invalid JSON at line 1 column 15",
            json.JSONDecodeError,
            id="json-syntax",
        ),
        pytest.param(
            b'{"year": 2027, "year": 2028}',
            "h.json",
            "h.json: duplicate key 'year'",
            ValueError,
            id="json-duplicate-key",
        ),
        pytest.param(b"year = = 2027", "h.toml", "h.toml: invalid TOML", ValueError, id="toml"),
        pytest.param(b"{}", "holidays.yaml", "must end in .json or .toml", None, id="extension"),
        pytest.param(
            b" " * (MAX_SCHEDULE_BYTES + 1), "h.json", "more than 1048576", None, id="too-big"
        ),
    ],
)
def test_byte_level_rejections(
    data: bytes, filename: str, message: str, cause: type[BaseException] | None
) -> None:
    with pytest.raises(CalendarError) as info:
        parse_schedule(data, filename=filename)
    assert message in str(info.value)
    if cause is None:
        assert info.value.__cause__ is None
    else:
        assert isinstance(info.value.__cause__, cause)


def test_text_instead_of_bytes_is_rejected() -> None:
    with pytest.raises(CalendarError, match="expected bytes, got str"):
        parse_schedule("{}", filename="h.json")  # type: ignore[arg-type]


def test_toml_datetime_is_rejected() -> None:
    text = """
year = 2027
source = "test"
workdays = []
[[holidays]]
name = "National Day"
name_zh = "国庆节"
dates = [2027-10-01T00:00:00]
"""
    with pytest.raises(CalendarError, match=r"holidays\[0\]\.dates\[0\]: expected a date without"):
        parse_schedule(text.encode(), filename="h.toml")


def test_toml_duplicate_table_key_is_rejected() -> None:
    with pytest.raises(CalendarError, match="invalid TOML") as info:
        parse_schedule(b"year = 2027\nyear = 2028\n", filename="h.toml")
    assert info.value.__cause__ is not None
