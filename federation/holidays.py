"""The official working-day calendar of mainland China, as the legal periods need it.

Why this module exists: the review periods of the linkage mechanism are counted in *working
days* (Administrative Licensing Law art. 82) and the 15-day reply rolls over rest days and
statutory holidays (Civil Code art. 203). Which days are working days is not a weekday rule: every
year the State Council publishes a schedule that turns some Saturdays and Sundays into working
days (调休) and some weekdays into holidays. Two sources feed this calendar:

* the ``chinesecalendar`` package (import name ``chinese_calendar``), which carries the official
  schedules it was released with (2004-2026 for the pinned version) and raises
  ``NotImplementedError`` for any later year;
* schedules an administrator loads for later years (or to correct a year), parsed here by
  :func:`parse_schedule`. A loaded schedule replaces the package data for its year as a whole,
  because the State Council notice is the complete list for that year.

For a year neither source knows, the calendar still answers - Monday to Friday work, Saturday and
Sunday rest - but marks the answer as not ``known``, so that a deadline computed from it is flagged
provisional and recomputed once the year's schedule is loaded (DOMAIN.md §5).

Everything here is pure: no clock, no files, no network. Parsing takes the bytes it is given; a
node stores imported schedules itself and rebuilds its calendar with
:meth:`HolidayCalendar.with_schedule`.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import json
import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePath
from types import MappingProxyType
from typing import Any, Final, Literal

import chinese_calendar

from federation.errors import CalendarError

__all__ = [
    "MAX_SCHEDULE_BYTES",
    "MAX_SCHEDULE_YEAR",
    "MIN_SCHEDULE_YEAR",
    "DayStatus",
    "HolidayCalendar",
    "HolidayEntry",
    "MakeupWorkday",
    "YearDetail",
    "YearSchedule",
    "parse_schedule",
]

MAX_SCHEDULE_BYTES: Final = 1 << 20
"""A real schedule is about 2 KB; anything near a megabyte is the wrong file."""

MIN_SCHEDULE_YEAR: Final = 2000
MAX_SCHEDULE_YEAR: Final = 2199

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_TOP_KEYS: Final = frozenset({"year", "source", "note", "holidays", "workdays"})
_TOP_REQUIRED: Final = ("year", "source", "holidays", "workdays")
_HOLIDAY_KEYS: Final = frozenset({"name", "name_zh", "dates"})
_WORKDAY_KEYS: Final = frozenset({"date", "name", "name_zh"})
_WORKDAY_REQUIRED: Final = ("date", "name_zh")
_WEEKDAY_NAMES: Final = (
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
)

# The package abbreviates three names; the State Council notices use the full ones.
_ZH_FULL_NAME: Final = MappingProxyType({"清明": "清明节", "端午": "端午节", "中秋": "中秋节"})


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True)
class DayStatus:
    """What the official calendar says about one date.

    ``known`` is False when no official data exists for the year; ``is_workday`` then follows the
    weekday rule only and any period that depends on it is provisional.
    """

    date: dt.date
    is_workday: bool
    known: bool
    holiday_name: str | None = None
    holiday_name_zh: str | None = None
    is_makeup_workday: bool = False
    makeup_name_zh: str | None = None

    @property
    def provisional(self) -> bool:
        """True when the answer comes from the weekday rule for a year without official data."""
        return not self.known

    @property
    def kind(self) -> Literal["workday", "makeup_workday", "holiday", "weekend"]:
        """A one-word classification for display and logs."""
        if self.is_makeup_workday:
            return "makeup_workday"
        if self.is_workday:
            return "workday"
        return "holiday" if self.holiday_name is not None else "weekend"


@dataclass(frozen=True, slots=True)
class HolidayEntry:
    """One holiday block of a year (e.g. Spring Festival, Feb 15-23), weekends inside included."""

    name: str
    name_zh: str
    dates: tuple[dt.date, ...]

    def to_dict(self) -> dict[str, Any]:
        """The entry in the schedule file format."""
        return {
            "name": self.name,
            "name_zh": self.name_zh,
            "dates": [d.isoformat() for d in self.dates],
        }


@dataclass(frozen=True, slots=True)
class MakeupWorkday:
    """A Saturday or Sunday that is a working day to make up for a holiday (调休上班)."""

    date: dt.date
    name_zh: str
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry in the schedule file format (``name`` only when present)."""
        out: dict[str, Any] = {"date": self.date.isoformat(), "name_zh": self.name_zh}
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class YearSchedule:
    """A validated official schedule for one year, as an administrator loads it.

    Build it with :func:`parse_schedule`; the constructor does not validate. ``holidays`` and
    ``workdays`` are sorted by date.
    """

    year: int
    source: str
    holidays: tuple[HolidayEntry, ...]
    workdays: tuple[MakeupWorkday, ...]
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The schedule in the file format, so a node can persist exactly what it applied."""
        out: dict[str, Any] = {"year": self.year, "source": self.source}
        if self.note is not None:
            out["note"] = self.note
        out["holidays"] = [h.to_dict() for h in self.holidays]
        out["workdays"] = [w.to_dict() for w in self.workdays]
        return out

    def to_json(self) -> bytes:
        """Canonical UTF-8 JSON of :meth:`to_dict`; :func:`parse_schedule` reads it back."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=2)
        return (text + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class YearDetail:
    """Everything the calendar holds for one year, for ``cccfed calendar show YEAR``.

    ``origin`` says where the data comes from: the ``chinesecalendar`` package, a loaded
    ``schedule``, or ``none`` (weekends only, every deadline in the year provisional).
    """

    year: int
    known: bool
    origin: Literal["package", "schedule", "none"]
    source: str | None
    holidays: tuple[HolidayEntry, ...]
    workdays: tuple[MakeupWorkday, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO dates)."""
        return {
            "year": self.year,
            "known": self.known,
            "origin": self.origin,
            "source": self.source,
            "holidays": [h.to_dict() for h in self.holidays],
            "workdays": [w.to_dict() for w in self.workdays],
        }


# --------------------------------------------------------------------------------------------
# Per-year lookup tables


@dataclass(frozen=True, slots=True)
class _YearData:
    detail: YearDetail
    holiday_by_date: Mapping[dt.date, HolidayEntry]
    workday_by_date: Mapping[dt.date, MakeupWorkday]

    @classmethod
    def build(
        cls,
        *,
        year: int,
        origin: Literal["package", "schedule"],
        source: str,
        holidays: tuple[HolidayEntry, ...],
        workdays: tuple[MakeupWorkday, ...],
    ) -> _YearData:
        detail = YearDetail(
            year=year,
            known=True,
            origin=origin,
            source=source,
            holidays=holidays,
            workdays=workdays,
        )
        by_date = {d: h for h in holidays for d in h.dates}
        makeups = {w.date: w for w in workdays}
        return cls(detail, MappingProxyType(by_date), MappingProxyType(makeups))


def _package_zh_names() -> dict[str, str]:
    names: dict[str, str] = {}
    for member in chinese_calendar.Holiday:
        zh = str(member.chinese)
        names[str(member.value)] = _ZH_FULL_NAME.get(zh, zh)
    return names


@functools.cache
def _package_years() -> Mapping[int, _YearData]:
    """The package's data, regrouped per year into blocks, built once.

    We read the package's public ``holidays``/``workdays`` tables rather than calling
    ``is_workday`` per day: its range check scans the whole table on every call, which makes a
    3650-day period needlessly slow. The tests cross-check every day against ``is_workday``.
    """
    zh_names = _package_zh_names()
    raw_holidays: dict[dt.date, str] = {
        d: str(n) for d, n in dict(chinese_calendar.holidays).items()
    }
    raw_workdays: dict[dt.date, str] = {
        d: str(n) for d, n in dict(chinese_calendar.workdays).items()
    }
    years = sorted({d.year for d in raw_holidays})
    source = f"chinesecalendar {getattr(chinese_calendar, '__version__', '?')}"
    out: dict[int, _YearData] = {}
    for year in range(years[0], years[-1] + 1):
        blocks: list[HolidayEntry] = []
        run: list[dt.date] = []
        run_name = ""
        for d in sorted(d for d in raw_holidays if d.year == year):
            name = raw_holidays[d]
            if run and (name != run_name or d != run[-1] + dt.timedelta(days=1)):
                blocks.append(HolidayEntry(run_name, zh_names.get(run_name, run_name), tuple(run)))
                run = []
            run_name = name
            run.append(d)
        if run:
            blocks.append(HolidayEntry(run_name, zh_names.get(run_name, run_name), tuple(run)))
        makeups = tuple(
            MakeupWorkday(
                date=d,
                name_zh=f"{zh_names.get(raw_workdays[d], raw_workdays[d])}调休",
                name=f"{raw_workdays[d]} make-up workday",
            )
            for d in sorted(d for d in raw_workdays if d.year == year)
        )
        out[year] = _YearData.build(
            year=year, origin="package", source=source, holidays=tuple(blocks), workdays=makeups
        )
    return MappingProxyType(out)


# --------------------------------------------------------------------------------------------
# The calendar


class HolidayCalendar:
    """Answers "is this date a working day?" from the package plus loaded official schedules.

    Immutable: :meth:`with_schedule` returns a new calendar, so a deadline computed from one
    calendar can never change underneath its caller; recomputation is explicit.
    """

    __slots__ = ("_loaded", "_schedules")

    _loaded: Mapping[int, _YearData]
    _schedules: Mapping[int, YearSchedule]

    def __init__(self, schedules: Iterable[YearSchedule] = ()) -> None:
        """Start from the package data; each schedule replaces its year (a later one wins)."""
        by_year: dict[int, YearSchedule] = {}
        for s in schedules:
            by_year[s.year] = s
        loaded = {
            year: _YearData.build(
                year=year,
                origin="schedule",
                source=s.source,
                holidays=s.holidays,
                workdays=s.workdays,
            )
            for year, s in by_year.items()
        }
        object.__setattr__(self, "_schedules", MappingProxyType(by_year))
        object.__setattr__(self, "_loaded", MappingProxyType(loaded))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __repr__(self) -> str:
        return f"HolidayCalendar(loaded_years={sorted(self._loaded)})"

    @property
    def schedules(self) -> tuple[YearSchedule, ...]:
        """The loaded schedules in year order, so a node can persist or list them."""
        return tuple(self._schedules[y] for y in sorted(self._schedules))

    def with_schedule(self, schedule: YearSchedule) -> HolidayCalendar:
        """A new calendar in which ``schedule`` replaces whatever was known for its year."""
        return HolidayCalendar([*self._schedules.values(), schedule])

    def _year(self, year: int) -> _YearData | None:
        data = self._loaded.get(year)
        if data is not None:
            return data
        return _package_years().get(year)

    def known_years(self) -> tuple[int, ...]:
        """Every year with official data (package or loaded), ascending."""
        return tuple(sorted(set(_package_years()) | set(self._loaded)))

    def is_known_year(self, year: int) -> bool:
        """True when ``year`` has official data; otherwise its answers are provisional."""
        return self._year(year) is not None

    def day_status(self, d: dt.date) -> DayStatus:
        """Classify ``d``: working day, make-up working day, holiday or weekend, and how sure."""
        if isinstance(d, dt.datetime):
            raise CalendarError(f"day_status takes a date, not a datetime: {d!r}")
        weekend = d.weekday() >= 5
        data = self._year(d.year)
        if data is None:
            return DayStatus(date=d, is_workday=not weekend, known=False)
        makeup = data.workday_by_date.get(d)
        if makeup is not None:
            return DayStatus(
                date=d,
                is_workday=True,
                known=True,
                is_makeup_workday=weekend,
                makeup_name_zh=makeup.name_zh if weekend else None,
            )
        holiday = data.holiday_by_date.get(d)
        if holiday is not None:
            return DayStatus(
                date=d,
                is_workday=False,
                known=True,
                holiday_name=holiday.name,
                holiday_name_zh=holiday.name_zh,
            )
        return DayStatus(date=d, is_workday=not weekend, known=True)

    def is_workday(self, d: dt.date) -> bool:
        """Shorthand for ``day_status(d).is_workday``."""
        return self.day_status(d).is_workday

    def year_detail(self, year: int) -> YearDetail:
        """The holidays and make-up workdays of ``year``, or an empty ``origin="none"`` detail."""
        data = self._year(year)
        if data is None:
            return YearDetail(
                year=year, known=False, origin="none", source=None, holidays=(), workdays=()
            )
        return data.detail


# --------------------------------------------------------------------------------------------
# Parsing schedule files


class _DuplicateKeyError(ValueError):
    pass


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads silently keeps the last of two equal keys; a schedule with two "holidays"
    # lists would lose half of its data without a word.
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(key)
        out[key] = value
    return out


class _Parser:
    """Carries the file name so every error names the file and the key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename

    def error(self, where: str, message: str) -> CalendarError:
        prefix = f"{self.filename}: {where}: " if where else f"{self.filename}: "
        return CalendarError(prefix + message)

    def load(self, data: bytes, fmt: Literal["json", "toml"] | None) -> Any:
        if not isinstance(data, bytes | bytearray | memoryview):
            raise self.error("", f"expected bytes, got {type(data).__name__}")
        raw = bytes(data)
        if len(raw) > MAX_SCHEDULE_BYTES:
            raise self.error("", f"file is {len(raw)} bytes, more than {MAX_SCHEDULE_BYTES}")
        if fmt is None:
            suffix = PurePath(self.filename).suffix.lower()
            if suffix == ".json":
                fmt = "json"
            elif suffix == ".toml":
                fmt = "toml"
            else:
                raise self.error("", "file name must end in .json or .toml")
        try:
            # utf-8-sig: tolerate the byte-order mark some Windows editors write.
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise self.error("", f"not UTF-8 (byte {e.start}): save the file as UTF-8") from e
        if not text.strip():
            raise self.error("", "file is empty")
        if fmt == "toml":
            try:
                return tomllib.loads(text)
            except tomllib.TOMLDecodeError as e:
                raise self.error("", f"invalid TOML: {e}") from e
            except RecursionError as e:  # arrays or tables nested thousands deep
                raise self.error("", "invalid TOML: nested too deeply") from e
        try:
            return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
        except _DuplicateKeyError as e:
            raise self.error("", f"duplicate key {e.args[0]!r} in one object") from e
        except json.JSONDecodeError as e:
            raise self.error(
                "", f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
            ) from e
        except RecursionError as e:
            raise self.error("", "invalid JSON: nested too deeply") from e

    def table(
        self,
        value: Any,
        where: str,
        allowed: frozenset[str],
        required: Iterable[str],
    ) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where or "top level", f"expected an object, got {_kind(value)}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise self.error(
                _join(where, unknown[0]),
                f"unknown key (allowed: {', '.join(sorted(allowed))})",
            )
        for key in required:
            if key not in value:
                raise self.error(_join(where, key), "required key is missing")
        return value

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise self.error(where, f"expected a string, got {_kind(value)}")
        if not value.strip():
            raise self.error(where, "must not be empty")
        return value.strip()

    def array(self, value: Any, where: str) -> list[Any]:
        if not isinstance(value, list):
            raise self.error(where, f"expected a list, got {_kind(value)}")
        return value

    def year(self, value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(where, f"expected an integer year, got {_kind(value)}")
        if not MIN_SCHEDULE_YEAR <= value <= MAX_SCHEDULE_YEAR:
            raise self.error(where, f"{value} is outside {MIN_SCHEDULE_YEAR}..{MAX_SCHEDULE_YEAR}")
        return value

    def date(self, value: Any, where: str, year: int) -> dt.date:
        if isinstance(value, dt.datetime):
            raise self.error(where, "expected a date without a time of day")
        if isinstance(value, dt.date):  # TOML local dates arrive already parsed
            d = value
        elif isinstance(value, str):
            if not _DATE_RE.fullmatch(value):
                raise self.error(where, f"{value!r} is not a date in YYYY-MM-DD form")
            try:
                d = dt.date.fromisoformat(value)
            except ValueError as e:
                raise self.error(where, f"{value!r} is not a real date: {e}") from e
        else:
            raise self.error(where, f"expected a YYYY-MM-DD date, got {_kind(value)}")
        if d.year != year:
            raise self.error(
                where,
                f"{d.isoformat()} is not in {year}; a schedule covers one calendar year "
                f"(put dates of {d.year} in the {d.year} schedule)",
            )
        return d


def _join(where: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{where}[{key}]"
    return f"{where}.{key}" if where else key


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dt.date):
        return "a date"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)


def _fmt_day(d: dt.date) -> str:
    return f"{d.isoformat()} ({_WEEKDAY_NAMES[d.weekday()]})"


def parse_schedule(
    data: bytes,
    *,
    filename: str,
    fmt: Literal["json", "toml"] | None = None,
) -> YearSchedule:
    """Parse and strictly validate an official holiday schedule file.

    A wrong schedule silently moves every legal deadline of a year, so this rejects anything
    doubtful rather than guessing, and every message names ``filename`` and the key path
    (``holidays[1].dates[3]``) so the administrator can fix the file. The format is chosen by
    ``fmt`` or else by the file name's extension (``.json`` or ``.toml``).

    Rejected: non-UTF-8 bytes, bad syntax, duplicate JSON keys, unknown or missing keys, wrong
    types, dates not in ``YYYY-MM-DD`` form or not in the schedule's year, a date listed twice, a
    holiday block whose dates are not one consecutive run, a holiday block with no Monday-Friday
    in it (it would change nothing, so it is a typo - unless it is the part of a block crossing
    New Year, e.g. Dec 30-31 of a New Year's Day holiday running into January), a date that is
    both holiday and make-up workday, and a make-up workday that is not a Saturday or Sunday (a
    weekday is a working day anyway).

    Raises:
        CalendarError: the file is not a valid schedule; the message says where and why.
    """
    p = _Parser(filename)
    doc = p.table(p.load(data, fmt), "", _TOP_KEYS, _TOP_REQUIRED)
    year = p.year(doc["year"], "year")
    source = p.text(doc["source"], "source")
    note = p.text(doc["note"], "note") if "note" in doc else None

    seen: dict[dt.date, str] = {}
    holidays: list[HolidayEntry] = []
    raw_holidays = p.array(doc["holidays"], "holidays")
    if not raw_holidays:
        raise p.error("holidays", "must list at least one holiday")
    for i, raw in enumerate(raw_holidays):
        where = _join("holidays", i)
        entry = p.table(raw, where, _HOLIDAY_KEYS, ("name", "name_zh", "dates"))
        name = p.text(entry["name"], _join(where, "name"))
        name_zh = p.text(entry["name_zh"], _join(where, "name_zh"))
        raw_dates = p.array(entry["dates"], _join(where, "dates"))
        if not raw_dates:
            raise p.error(_join(where, "dates"), "must list at least one date")
        dates: list[dt.date] = []
        for j, raw_date in enumerate(raw_dates):
            at = _join(_join(where, "dates"), j)
            d = p.date(raw_date, at, year)
            if d in seen:
                raise p.error(at, f"{d.isoformat()} is listed twice (also at {seen[d]})")
            seen[d] = at
            dates.append(d)
        dates.sort()
        for prev, cur in itertools.pairwise(dates):
            if cur != prev + dt.timedelta(days=1):
                raise p.error(
                    _join(where, "dates"),
                    f"dates must be one consecutive run, but {prev.isoformat()} is followed by "
                    f"{cur.isoformat()}; list a separate holiday entry for a separate block",
                )
        crosses_new_year = dates[0] == dt.date(year, 1, 1) or dates[-1] == dt.date(year, 12, 31)
        if all(d.weekday() >= 5 for d in dates) and not crosses_new_year:
            raise p.error(
                _join(where, "dates"),
                f"{name!r} falls only on Saturdays/Sundays, so it would change no working day; "
                "list the whole block including the weekdays off",
            )
        holidays.append(HolidayEntry(name=name, name_zh=name_zh, dates=tuple(dates)))

    workdays: list[MakeupWorkday] = []
    for i, raw in enumerate(p.array(doc["workdays"], "workdays")):
        where = _join("workdays", i)
        entry = p.table(raw, where, _WORKDAY_KEYS, _WORKDAY_REQUIRED)
        at = _join(where, "date")
        d = p.date(entry["date"], at, year)
        if d in seen:
            what = "a holiday" if seen[d].startswith("holidays") else "a make-up workday"
            raise p.error(at, f"{d.isoformat()} is already listed as {what} at {seen[d]}")
        if d.weekday() < 5:
            raise p.error(
                at,
                f"{_fmt_day(d)} is a weekday, which is a working day anyway; "
                "a make-up workday must be a Saturday or Sunday",
            )
        seen[d] = at
        name_zh = p.text(entry["name_zh"], _join(where, "name_zh"))
        en = p.text(entry["name"], _join(where, "name")) if "name" in entry else None
        workdays.append(MakeupWorkday(date=d, name_zh=name_zh, name=en))

    holidays.sort(key=lambda h: h.dates[0])
    workdays.sort(key=lambda w: w.date)
    return YearSchedule(
        year=year, source=source, holidays=tuple(holidays), workdays=tuple(workdays), note=note
    )
