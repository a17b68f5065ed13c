"""Official holiday schedules stored by a node, and the node's holiday calendar built from them.

Why this module exists: the ``chinesecalendar`` package knows the State Council schedules only up
to the year it was released for, and a legal deadline that falls in a later year is provisional
(weekends only) until an administrator loads that year's schedule (DOMAIN.md §5, DESIGN.md §6).
The schedules an administrator imports live in the node's store (table ``holiday_schedules``,
one row per year), so every process and replica of a node computes the same deadlines:

* :func:`import_schedule` validates a schedule file with
  :func:`federation.holidays.parse_schedule` and stores (or replaces) its year's row;
* :func:`load_calendar` builds the :class:`~federation.holidays.HolidayCalendar` of the node: the
  package data plus every stored schedule (a stored year replaces the package's year as a whole).

A row holds the canonical JSON of the parsed schedule (``YearSchedule.to_json()``), not the
administrator's file, so what is applied does not depend on the file's formatting or format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from sqlalchemy import insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine

from federation.errors import CalendarError
from federation.holidays import HolidayCalendar, YearSchedule, parse_schedule
from node.store.db import reader, transaction
from node.store.models import HolidaySchedule

__all__ = [
    "HOLIDAY_SCHEDULES",
    "ImportOutcome",
    "RecomputeHook",
    "StoredSchedule",
    "import_schedule",
    "import_schedule_detailed",
    "load_calendar",
    "recompute_hook",
    "stored_schedule",
    "stored_schedules",
    "stored_years",
]

HOLIDAY_SCHEDULES = HolidaySchedule.__table__  # type: ignore[attr-defined]

RecomputeHook = Callable[[Connection, YearSchedule, datetime], None]
"""``hook(conn, schedule, now)``: react to a newly stored or replaced schedule."""

recompute_hook: list[RecomputeHook] = []
"""Functions :func:`import_schedule` calls after it stored a new or changed schedule.

Each is called as ``hook(conn, schedule, now)`` inside the importing transaction, after the row
was written, so ``load_calendar(conn)`` in a hook already sees the new schedule, and a hook that
raises rolls the whole import back (a schedule is never stored without its deadlines being
recomputed). They are not called when the same schedule is imported again (nothing changed).

Empty for now: the request store registers the function that recomputes the provisional
deadlines of the schedule's year (``federation.periods.recompute``) when it is added. Register
with ``recompute_hook.append(fn)`` at import time of the registering module.
"""

ImportOutcome = Literal["added", "replaced", "unchanged"]
"""What an import did to the year's row."""


@dataclass(frozen=True, slots=True)
class StoredSchedule:
    """One stored row: the parsed schedule, its source and when it was imported (UTC)."""

    schedule: YearSchedule
    source: str
    imported_at: datetime

    @property
    def year(self) -> int:
        return self.schedule.year


@contextmanager
def _reading(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
    else:
        with reader(bind).connect() as conn:
            yield conn


def _has_table(conn: Connection) -> bool:
    # A store not yet migrated to 0002 cannot hold imported schedules: package data only.
    return bool(inspect(conn).has_table(HOLIDAY_SCHEDULES.name))


def _from_row(year: int, data: bytes, source: str, imported_at: datetime) -> StoredSchedule:
    schedule = parse_schedule(
        bytes(data), filename=f"store holiday_schedules year {year}", fmt="json"
    )
    if schedule.year != year:
        raise CalendarError(
            f"store holiday_schedules year {year}: the stored schedule is for {schedule.year}"
        )
    return StoredSchedule(schedule=schedule, source=source, imported_at=imported_at)


def stored_schedules(bind: Engine | Connection) -> tuple[StoredSchedule, ...]:
    """Every imported schedule of the store, by year (empty if the table does not exist yet).

    Raises:
        CalendarError: a stored row no longer parses (the store was edited by hand).
    """
    t = HOLIDAY_SCHEDULES
    with _reading(bind) as conn:
        if not _has_table(conn):
            return ()
        rows = conn.execute(
            select(t.c.year, t.c.schedule, t.c.source, t.c.imported_at).order_by(t.c.year)
        ).all()
    return tuple(_from_row(r.year, r.schedule, r.source, r.imported_at) for r in rows)


def stored_schedule(bind: Engine | Connection, year: int) -> StoredSchedule | None:
    """The imported schedule of ``year``, or None."""
    t = HOLIDAY_SCHEDULES
    with _reading(bind) as conn:
        if not _has_table(conn):
            return None
        row = conn.execute(
            select(t.c.year, t.c.schedule, t.c.source, t.c.imported_at).where(t.c.year == year)
        ).first()
    return None if row is None else _from_row(row.year, row.schedule, row.source, row.imported_at)


def stored_years(bind: Engine | Connection) -> tuple[int, ...]:
    """The years with an imported schedule, ascending."""
    t = HOLIDAY_SCHEDULES
    with _reading(bind) as conn:
        if not _has_table(conn):
            return ()
        return tuple(conn.execute(select(t.c.year).order_by(t.c.year)).scalars())


def load_calendar(bind: Engine | Connection) -> HolidayCalendar:
    """The node's calendar: the package data plus every schedule imported into the store."""
    return HolidayCalendar(s.schedule for s in stored_schedules(bind))


def _store(
    conn: Connection, schedule: YearSchedule, now: datetime
) -> tuple[ImportOutcome, StoredSchedule | None]:
    t = HOLIDAY_SCHEDULES
    data = schedule.to_json()
    previous = stored_schedule(conn, schedule.year)
    if previous is None:
        conn.execute(
            insert(t).values(
                year=schedule.year, schedule=data, source=schedule.source, imported_at=now
            )
        )
        return "added", None
    if previous.schedule.to_json() == data:
        return "unchanged", previous
    conn.execute(
        update(t)
        .where(t.c.year == schedule.year)
        .values(schedule=data, source=schedule.source, imported_at=now)
    )
    return "replaced", previous


def import_schedule_detailed(
    bind: Engine | Connection, data: bytes, filename: str, now: datetime
) -> tuple[YearSchedule, ImportOutcome, StoredSchedule | None]:
    """Like :func:`import_schedule`, also returning the outcome and the row it replaced."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise CalendarError(f"naive datetime {now.isoformat()}: an aware UTC instant is required")
    schedule = parse_schedule(data, filename=filename)
    if isinstance(bind, Engine):
        with transaction(bind) as conn:
            return _import_in(conn, schedule, now.astimezone(UTC))
    return _import_in(bind, schedule, now.astimezone(UTC))


def _import_in(
    conn: Connection, schedule: YearSchedule, now: datetime
) -> tuple[YearSchedule, ImportOutcome, StoredSchedule | None]:
    outcome, previous = _store(conn, schedule, now)
    if outcome != "unchanged":
        for hook in list(recompute_hook):
            hook(conn, schedule, now)
    return schedule, outcome, previous


def import_schedule(
    bind: Engine | Connection, data: bytes, filename: str, now: datetime
) -> YearSchedule:
    """Validate a schedule file and store it as its year's official schedule.

    ``data`` is the file's content, ``filename`` its name (it selects JSON or TOML by extension
    and is named in every error). The row of the schedule's year is added or replaced; importing
    the same schedule again changes nothing (``imported_at`` is kept, no hook runs). After a
    change, every function in :data:`recompute_hook` runs in the same transaction. With an
    engine the import is its own transaction; with a connection it joins the caller's.

    Raises:
        CalendarError: the file is not a valid schedule (the message names the file and the
            key); nothing is stored.
    """
    return import_schedule_detailed(bind, data, filename, now)[0]
