"""node.calendar_store: imported holiday schedules in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Index, Table, UniqueConstraint, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel

from federation.errors import CalendarError
from federation.holidays import HolidayCalendar, HolidayEntry, YearSchedule, parse_schedule
from federation.periods import day_period, recompute
from node import calendar_store
from node.calendar_store import (
    HOLIDAY_SCHEDULES,
    import_schedule,
    import_schedule_detailed,
    load_calendar,
    stored_schedule,
    stored_schedules,
    stored_years,
)
from node.store.db import alembic_config, current_revision, migrate, transaction

FIXTURE_2027 = Path(__file__).resolve().parents[1] / "data" / "holidays-2027.json"
DATA = FIXTURE_2027.read_bytes()
NAME = FIXTURE_2027.name
T0 = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(hours=1)

OTHER_YEAR = YearSchedule(
    year=2028,
    source="another year",
    holidays=(HolidayEntry("National Day", "国庆节", (dt.date(2028, 10, 2),)),),
    workdays=(),
)

Calls = list[tuple[int, str, dt.datetime, tuple[int, ...]]]


@pytest.fixture
def hook_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[Calls]:
    """Register a recompute hook that records its calls and what the calendar saw then."""
    calls: Calls = []

    def hook(conn: Connection, schedule: YearSchedule, now: dt.datetime) -> None:
        calls.append((schedule.year, schedule.source, now, stored_years(conn)))

    monkeypatch.setattr(calendar_store, "recompute_hook", [hook])
    yield calls


def variant(**changes: object) -> bytes:
    doc = json.loads(DATA)
    doc.update(changes)
    return json.dumps(doc, ensure_ascii=False).encode()


# --- schema -------------------------------------------------------------------------------------


def _table_of(diff: Any) -> str | None:
    """The table a compare_metadata item is about (items are tuples, or lists of tuples)."""
    if isinstance(diff, list):
        return _table_of(diff[0])
    for part in diff[1:]:
        if isinstance(part, Table):
            return str(part.name)
        if isinstance(part, Index | UniqueConstraint) and part.table is not None:
            return str(part.table.name)
    return str(diff[2]) if len(diff) > 2 and isinstance(diff[2], str) else None


def test_migration_0002_matches_the_model(engine: Engine) -> None:
    """Upgrading an empty store creates exactly the model's ``holiday_schedules``.

    (tests/store/test_schema.py compares the whole schema; this one looks at this table only.)
    """
    script = ScriptDirectory.from_config(alembic_config()).get_revision("0002")
    assert script is not None
    assert script.down_revision == "0001"
    assert "holiday_schedules" in inspect(engine).get_table_names()
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    assert [d for d in diffs if _table_of(d) in {"holiday_schedules", None}] == []


def test_downgrade_to_0001_drops_the_table(engine: Engine) -> None:
    import_schedule(engine, DATA, NAME, T0)
    with engine.begin() as conn:
        command.downgrade(alembic_config(conn), "0001")

    assert current_revision(engine) == "0001"
    assert "holiday_schedules" not in inspect(engine).get_table_names()
    # A store without the table holds no imported schedules: package data only.
    assert stored_years(engine) == ()
    assert stored_schedule(engine, 2027) is None
    assert not load_calendar(engine).is_known_year(2027)

    migrate(engine)
    assert "holiday_schedules" in inspect(engine).get_table_names()
    assert stored_years(engine) == ()


# --- import and load ----------------------------------------------------------------------------


def test_empty_store_gives_the_package_calendar(engine: Engine) -> None:
    cal = load_calendar(engine)
    assert cal.schedules == ()
    assert cal.is_known_year(2026)
    assert not cal.is_known_year(2027)
    assert stored_years(engine) == ()
    assert stored_schedules(engine) == ()


def test_import_stores_the_canonical_schedule(engine: Engine, hook_calls: Calls) -> None:
    schedule = import_schedule(
        engine, DATA, NAME, T0.astimezone(dt.timezone(dt.timedelta(hours=8)))
    )

    expected = parse_schedule(DATA, filename=NAME)
    assert schedule == expected
    assert stored_years(engine) == (2027,)
    t = HOLIDAY_SCHEDULES
    with engine.connect() as conn:
        row = conn.execute(select(t.c.year, t.c.schedule, t.c.source, t.c.imported_at)).one()
    assert row.year == 2027
    assert bytes(row.schedule) == expected.to_json()
    assert row.source == expected.source
    assert row.imported_at == T0
    assert row.imported_at.tzinfo is dt.UTC

    got = stored_schedule(engine, 2027)
    assert got is not None
    assert (got.year, got.schedule, got.source, got.imported_at) == (
        2027,
        expected,
        expected.source,
        T0,
    )
    assert hook_calls == [(2027, expected.source, T0, (2027,))]


def test_loaded_calendar_recomputes_a_provisional_deadline(engine: Engine) -> None:
    start = dt.datetime(2026, 12, 17, 9, 0, tzinfo=dt.UTC)
    before = day_period(start, 15, load_calendar(engine))
    assert (before.provisional, before.due_date) == (True, dt.date(2027, 1, 1))

    import_schedule(engine, DATA, NAME, T0)
    cal = load_calendar(engine)

    assert cal.year_detail(2027).origin == "schedule"
    after = recompute(before, cal)
    assert (after.provisional, after.due_date) == (False, dt.date(2027, 1, 4))
    assert day_period(start, 15, cal) == after


def test_same_schedule_again_changes_nothing(engine: Engine, hook_calls: Calls) -> None:
    first = import_schedule_detailed(engine, DATA, NAME, T0)
    # The same schedule in another layout is the same schedule.
    pretty = json.dumps(json.loads(DATA), indent=8, ensure_ascii=False).encode()
    second = import_schedule_detailed(engine, pretty, "again.json", T1)

    assert first[1:] == ("added", None)
    assert second[0] == first[0]
    assert second[1] == "unchanged"
    assert second[2] is not None
    assert second[2].imported_at == T0
    got = stored_schedule(engine, 2027)
    assert got is not None
    assert got.imported_at == T0  # not bumped
    assert len(hook_calls) == 1


def test_changed_schedule_replaces_the_year(engine: Engine, hook_calls: Calls) -> None:
    import_schedule(engine, DATA, NAME, T0)
    schedule, outcome, previous = import_schedule_detailed(
        engine, variant(source="corrected notice"), "fixed.json", T1
    )

    assert outcome == "replaced"
    assert previous is not None
    assert previous.source.startswith("HYPOTHETICAL")
    got = stored_schedule(engine, 2027)
    assert got is not None
    assert (got.source, got.imported_at, got.schedule) == ("corrected notice", T1, schedule)
    assert stored_years(engine) == (2027,)
    assert [c[:3] for c in hook_calls] == [
        (2027, previous.source, T0),
        (2027, "corrected notice", T1),
    ]


def test_several_years_and_a_package_year(engine: Engine) -> None:
    doc_2026 = HolidayCalendar().year_detail(2026)
    schedule_2026 = YearSchedule(
        year=2026,
        source="override of 2026",
        holidays=doc_2026.holidays[:-1],  # drop National Day
        workdays=tuple(w for w in doc_2026.workdays if w.date.month != 10),
    )
    import_schedule(engine, DATA, NAME, T0)
    import_schedule(engine, schedule_2026.to_json(), "2026.json", T1)

    assert stored_years(engine) == (2026, 2027)
    cal = load_calendar(engine)
    assert cal.year_detail(2026).origin == "schedule"
    assert cal.year_detail(2026).source == "override of 2026"
    assert cal.is_workday(dt.date(2026, 10, 2))  # the stored year replaces the package's
    assert [s.year for s in stored_schedules(engine)] == [2026, 2027]


def test_import_joins_the_callers_transaction(engine: Engine) -> None:
    with pytest.raises(RuntimeError, match="rolled back"), transaction(engine) as conn:
        import_schedule(conn, DATA, NAME, T0)
        assert stored_years(conn) == (2027,)
        raise RuntimeError("rolled back")
    assert stored_years(engine) == ()

    with transaction(engine) as conn:
        import_schedule(conn, DATA, NAME, T0)
    assert stored_years(engine) == (2027,)


def test_failing_hook_rolls_the_import_back(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(conn: Connection, schedule: YearSchedule, now: dt.datetime) -> None:
        raise CalendarError("cannot recompute")

    monkeypatch.setattr(calendar_store, "recompute_hook", [broken])
    with pytest.raises(CalendarError, match="cannot recompute"):
        import_schedule(engine, DATA, NAME, T0)
    assert stored_years(engine) == ()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (variant(year=2027.0), "holidays-2027.json: year: expected an integer year"),
        (variant(workdays=[{"date": "2027-04-26", "name_zh": "x"}]), "workdays[0].date"),
        (b"\xff\xfe", "holidays-2027.json: not UTF-8"),
    ],
)
def test_bad_file_stores_nothing(
    engine: Engine, hook_calls: Calls, data: bytes, message: str
) -> None:
    import_schedule(engine, DATA, NAME, T0)
    with pytest.raises(CalendarError) as ei:
        import_schedule(engine, data, NAME, T1)
    assert message in str(ei.value)
    got = stored_schedule(engine, 2027)
    assert got is not None
    assert got.imported_at == T0
    assert len(hook_calls) == 1


def test_naive_now_is_refused(engine: Engine) -> None:
    with pytest.raises(CalendarError, match="naive"):
        import_schedule(engine, DATA, NAME, dt.datetime(2026, 11, 28, 10, 0))
    assert stored_years(engine) == ()


def test_corrupt_row_is_reported(engine: Engine) -> None:
    import_schedule(engine, DATA, NAME, T0)
    t = HOLIDAY_SCHEDULES
    with transaction(engine) as conn:
        conn.execute(update(t).values(schedule=OTHER_YEAR.to_json()))
    with pytest.raises(CalendarError, match="year 2027: the stored schedule is for 2028"):
        load_calendar(engine)
    with transaction(engine) as conn:
        conn.execute(update(t).values(schedule=b"{"))
    with pytest.raises(CalendarError, match="store holiday_schedules year 2027: invalid JSON"):
        load_calendar(engine)
