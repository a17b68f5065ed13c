"""``cccfed calendar``: the official holiday calendar and legal due dates, for administrators.

* ``calendar due --from INSTANT --days N [--working]``: when a period ends, in Shanghai dates,
  and whether the answer is provisional (a year without official data, DOMAIN.md §5);
* ``calendar show YEAR``: the holidays and make-up working days (调休上班) of a year and where
  they come from;
* ``calendar import FILE``: validate a State Council schedule and store it in the node's store.

``due`` and ``show`` work without a node: they use the node configuration if one is given
(``--config``, ``$CCCFED_CONFIG``) or ``./node.toml`` exists, and the package data alone
otherwise. ``import`` needs the node configuration.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url

from federation.errors import ValidationError
from federation.holidays import (
    MAX_SCHEDULE_BYTES,
    MAX_SCHEDULE_YEAR,
    MIN_SCHEDULE_YEAR,
    HolidayCalendar,
    HolidayEntry,
    YearDetail,
    YearSchedule,
    parse_schedule,
)
from federation.periods import TZ, Due, day_period, working_day_period
from node import output
from node.calendar_store import StoredSchedule, import_schedule_detailed, stored_schedules
from node.cli import DEFAULT_CONFIG, _config_path, _instant
from node.cli_requests import read_input_file
from node.config import NodeConfig, load_config
from node.store.db import make_engine, migrate

__all__ = ["cmd_calendar_due", "cmd_calendar_import", "cmd_calendar_show", "register"]

AddCommand = Callable[..., argparse.ArgumentParser]

_WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_RULES = {
    "days": (
        "calendar days, Civil Code arts. 201–203: the event day is not counted; a last day "
        "on a rest day or holiday moves to the next working day; it ends at 24:00"
    ),
    "working_days": (
        "working days, Administrative Licensing Law art. 82: official working days after the "
        "event day; make-up working days (调休) count, holidays and weekends do not"
    ),
}


# --- the node's calendar ----------------------------------------------------------------------


def _optional_config(args: argparse.Namespace) -> NodeConfig | None:
    """The node configuration if one was named or ./node.toml exists; otherwise None.

    A configuration named by ``--config`` or ``$CCCFED_CONFIG`` must load (a typo must not
    silently fall back to the package data); the default ./node.toml is used only if present.
    """
    if args.config or os.environ.get("CCCFED_CONFIG"):
        return load_config(_config_path(args))
    default = Path(DEFAULT_CONFIG)
    return load_config(default) if default.is_file() else None


def _read_stored(cfg: NodeConfig | None) -> tuple[StoredSchedule, ...]:
    if cfg is None:
        return ()
    url = make_url(cfg.store_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).exists():
        return ()  # the node never ran: nothing imported, and a read must not create the store
    engine = make_engine(cfg.store_url)
    try:
        return stored_schedules(engine)
    finally:
        engine.dispose()


def _node_calendar(
    args: argparse.Namespace,
) -> tuple[NodeConfig | None, tuple[StoredSchedule, ...], HolidayCalendar]:
    cfg = _optional_config(args)
    stored = _read_stored(cfg)
    return cfg, stored, HolidayCalendar(s.schedule for s in stored)


def _where(cfg: NodeConfig | None) -> str:
    if cfg is None:
        return "no node configuration found, so only the chinesecalendar package was consulted"
    return f"node {cfg.code}'s store and the chinesecalendar package were consulted"


def _origin_text(detail: YearDetail) -> str:
    if detail.origin == "package":
        return f"{detail.year}: {detail.source} (package)"
    if detail.origin == "schedule":
        return f"{detail.year}: imported schedule ({detail.source})"
    return f"{detail.year}: NONE (weekends only)"


def _provisional_text(years: Iterable[int], cfg: NodeConfig | None, *, what: str) -> str:
    ys = ", ".join(str(y) for y in years)
    return (
        f"PROVISIONAL: no official holiday schedule for {ys} ({_where(cfg)}). {what} "
        "weekends only (Monday–Friday working, Saturday–Sunday rest) and will be recomputed when "
        f"the {ys} schedule is imported (cccfed calendar import FILE)."
    )


# --- calendar due -----------------------------------------------------------------------------


def _consulted_years(due: Due) -> range:
    # Day periods consult only the days from the nominal last day on; working-day periods
    # consult every day after the event.
    first = due.start_date + dt.timedelta(days=due.days if due.kind == "days" else 1)
    return range(first.year, due.due_date.year + 1)


def cmd_calendar_due(args: argparse.Namespace) -> int:
    start = _instant(args.start)
    cfg, _, cal = _node_calendar(args)
    compute = working_day_period if args.working else day_period
    due = compute(start, args.days, cal)
    details = [cal.year_detail(y) for y in _consulted_years(due)]
    weekday = _WEEKDAYS[due.due_date.weekday()]
    message = (
        _provisional_text(due.provisional_years, cfg, what="This due date assumes")
        if due.provisional
        else None
    )
    if args.json:
        output.emit_json(
            {
                **due.to_dict(),
                "from": start.isoformat(),
                "time_zone": str(TZ),
                "due_weekday": weekday,
                "ends_at_shanghai": due.ends_at.astimezone(TZ).isoformat(),
                "rule": _RULES[due.kind],
                "calendar": [
                    {"year": d.year, "origin": d.origin, "source": d.source} for d in details
                ],
                "node": cfg.code if cfg else None,
                "provisional_message": message,
            }
        )
        return 0
    if message:
        print(message)
    unit = "calendar days" if due.kind == "days" else "working days"
    rows = [
        ("event", f"{start.astimezone(TZ):%Y-%m-%d %H:%M:%S} Asia/Shanghai"),
        (
            "start date",
            f"{due.start_date.isoformat()} (the event's day, not counted; "
            f"day 1 is {due.start_date + dt.timedelta(days=1)})",
        ),
        ("period", f"{due.days} {unit}"),
        ("rule", _RULES[due.kind]),
        ("due date", f"{due.due_date.isoformat()} ({weekday}), until 24:00 Asia/Shanghai"),
        ("ends at", f"{due.ends_at:%Y-%m-%d %H:%M:%S} UTC (exclusive)"),
        ("calendar", "; ".join(_origin_text(d) for d in details)),
        (
            "status",
            "PROVISIONAL (" + ", ".join(map(str, due.provisional_years)) + " weekends only)"
            if due.provisional
            else "official calendar data",
        ),
    ]
    width = max(output.width(k) for k, _ in rows)
    for key, value in rows:
        print(f"{output.pad(key + ':', width + 1)} {value}")
    return 0


# --- calendar show ----------------------------------------------------------------------------


def _dates_text(h: HolidayEntry) -> str:
    first, last = h.dates[0], h.dates[-1]
    return first.isoformat() if first == last else f"{first.isoformat()} – {last.isoformat()}"


def cmd_calendar_show(args: argparse.Namespace) -> int:
    year: int = args.year
    if not MIN_SCHEDULE_YEAR <= year <= MAX_SCHEDULE_YEAR:
        raise ValidationError(f"YEAR must be between {MIN_SCHEDULE_YEAR} and {MAX_SCHEDULE_YEAR}")
    cfg, stored, cal = _node_calendar(args)
    detail = cal.year_detail(year)
    row = next((s for s in stored if s.year == year), None)
    overrides_package = row is not None and HolidayCalendar().is_known_year(year)
    if args.json:
        output.emit_json(
            {
                **detail.to_dict(),
                "provisional": not detail.known,
                "node": cfg.code if cfg else None,
                "imported_at": row.imported_at if row else None,
                "note": row.schedule.note if row else None,
                "overrides_package": overrides_package,
            }
        )
        return 0
    if detail.origin == "none":
        print(_provisional_text([year], cfg, what=f"Deadlines ending in {year} assume"))
        known = cal.known_years()
        print(f"official data: {known[0]}–{known[-1]}" if known else "official data: none")
        return 0
    if detail.origin == "package":
        print(f"{year}: official schedule from the chinesecalendar package ({detail.source})")
    else:
        assert row is not None
        node = f"node {cfg.code}" if cfg else "the node"
        print(
            f"{year}: official schedule imported into {node}'s store on "
            f"{row.imported_at:%Y-%m-%d %H:%M} UTC"
            + (" (replaces the chinesecalendar package data)" if overrides_package else "")
        )
        print(f"source: {detail.source}")
        if row.schedule.note:
            print(f"note: {row.schedule.note}")
    print()
    output.table(
        ["holiday", "中文名", "dates", "days"],
        [(h.name, h.name_zh, _dates_text(h), len(h.dates)) for h in detail.holidays],
    )
    print()
    print(f"make-up working days (调休上班): {len(detail.workdays)}")
    if detail.workdays:
        output.table(
            ["date", "weekday", "中文名"],
            [(w.date.isoformat(), _WEEKDAYS[w.date.weekday()], w.name_zh) for w in detail.workdays],
        )
    return 0


# --- calendar import --------------------------------------------------------------------------


def _counts(s: YearSchedule) -> dict[str, int]:
    return {
        "holidays": len(s.holidays),
        "holiday_days": sum(len(h.dates) for h in s.holidays),
        "workdays": len(s.workdays),
    }


def cmd_calendar_import(args: argparse.Namespace) -> int:
    cfg = load_config(_config_path(args))
    # A regular file within the schedule limit, never a FIFO or device (which would hang).
    data = read_input_file(args.file, limit=MAX_SCHEDULE_BYTES, too_large="CALENDAR")
    # Validate before touching the store: a refused file changes nothing, not even the schema.
    parse_schedule(data, filename=args.file)
    now = dt.datetime.now(dt.UTC)
    engine = make_engine(cfg.store_url)
    try:
        migrate(engine)  # the table arrives with revision 0002; idempotent
        schedule, outcome, previous = import_schedule_detailed(engine, data, args.file, now)
    finally:
        engine.dispose()
    counts = _counts(schedule)
    overrides_package = HolidayCalendar().is_known_year(schedule.year)
    if args.json:
        result: dict[str, Any] = {
            "node": cfg.code,
            "file": args.file,
            "year": schedule.year,
            "outcome": outcome,
            **counts,
            "source": schedule.source,
            "note": schedule.note,
            "imported_at": previous.imported_at if outcome == "unchanged" and previous else now,
            "replaced_source": previous.source if outcome == "replaced" and previous else None,
            "overrides_package": overrides_package,
        }
        output.emit_json(result)
        return 0
    if outcome == "unchanged":
        assert previous is not None
        print(
            f"{schedule.year} holiday schedule unchanged: node {cfg.code} already holds the same "
            f"schedule (imported {previous.imported_at:%Y-%m-%d %H:%M} UTC)"
        )
    else:
        verb = "imported" if outcome == "added" else "replaced"
        print(f"{schedule.year} holiday schedule {verb} in node {cfg.code}'s store")
    print(
        f"  {counts['holidays']} holidays ({counts['holiday_days']} days), "
        f"{counts['workdays']} make-up working days (调休上班)"
    )
    print(f"  source: {schedule.source}")
    if schedule.note:
        print(f"  note: {schedule.note}")
    if outcome == "replaced" and previous is not None:
        print(
            f"  replaces the schedule imported {previous.imported_at:%Y-%m-%d %H:%M} UTC "
            f"(source: {previous.source})"
        )
    if overrides_package:
        print(f"  it replaces the chinesecalendar package data for {schedule.year}")
    return 0


# --- parser -----------------------------------------------------------------------------------


def register(sub: Any, add: AddCommand) -> None:
    """Add ``calendar show|import|due`` to the ``cccfed`` subcommands (see ``build_parser``)."""
    cal = sub.add_parser(
        "calendar", help="official holiday calendar and legal due dates"
    ).add_subparsers(dest="sub", required=True)
    sp = add(
        cal,
        "due",
        cmd_calendar_due,
        "when a legal period ends (Asia/Shanghai), and whether it is provisional",
        config=True,
    )
    sp.add_argument(
        "--from",
        dest="start",
        required=True,
        metavar="INSTANT",
        help="the event: ISO date or instant (without a zone: Asia/Shanghai)",
    )
    sp.add_argument("--days", type=int, required=True, help="length of the period")
    sp.add_argument(
        "--working", action="store_true", help="count working days (default: calendar days)"
    )
    sp = add(
        cal,
        "show",
        cmd_calendar_show,
        "holidays and make-up working days of a year, and where they come from",
        config=True,
    )
    sp.add_argument("year", type=int)
    sp = add(
        cal,
        "import",
        cmd_calendar_import,
        "validate an official holiday schedule (.json or .toml) and store it in the node",
        config=True,
    )
    sp.add_argument("file")
