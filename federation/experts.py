"""The registry of supervision experts (监管专家) a province can send to another's inspections.

Why this module exists: guideline item 17 has the Delta's bureaus send supervision experts to
each other's inspections, and item 9 has inspectors drawn at random. A province can only propose
experts who fit, are free and have no conflict if it keeps, for each expert, what they know
(:mod:`federation.ccc_catalogue` categories), when they cannot travel, how many exchanges a year
they may take, and whom they must not inspect. This module holds that record (:class:`Expert`),
reads it from the files bureaus keep (:func:`parse_registry_csv`, :func:`parse_registry_json`),
and decides what of it may leave the province (:func:`shared_view`).

What is shared, and why so little
---------------------------------
A partner needs to know whom to expect and why they fit: id, name, bureau, expertise
(:data:`SHARED_FIELDS`). Everything else stays with the providing province:

* phone number and ID number — personal information (PIPL: collect and pass on only what the
  purpose needs); bureaus arrange contact with each other, not with the expert's phone;
* unavailable dates and the annual cap — the provider applies them itself when matching;
* conflicts — a list of the holders an expert must not inspect says who the expert has ties with.

:class:`SharedExpert` has no field for any of these, so no code path can put them into a
federation message by accident; :meth:`SharedExpert.from_dict` refuses unknown keys, so a peer
cannot push them into our store either. :class:`Expert` also keeps the phone and ID number out of
its ``repr`` so they do not end up in logs.

Registry files
--------------
CSV (UTF-8, as Excel's "CSV UTF-8" writes it; a header row with these column names, in any order)
and JSON (``{"experts": [{...}, ...]}`` with the same names as keys)::

    expert_id         required  letters, digits, ``_ . -``; stable, chosen by the province
    name              required
    bureau            required  GB/T 2260 code of the expert's bureau (320500)
    categories        required  catalogue codes or Chinese names; CSV: separated by ``;``
    annual_cap        required  exchanges a calendar year (0 = not available this year)
    unavailable       optional  ``2025-05-01`` or ``2025-05-01/2025-05-07`` (inclusive)
    conflict_holders  optional  unified social credit codes of holders to avoid
    conflict_bureaus  optional  bureau codes to avoid (a province code covers its bureaus)
    phone             optional  private
    id_number         optional  private; resident ID number, check digit verified

In CSV, list cells separate items with ``;`` (or the full-width ``；``); in JSON they are arrays.
Every error names the file, the line (in a spreadsheet: the row number) and the column, e.g.
``experts.csv, line 4, column 3 (bureau): ...``. All experts of one registry belong to one
province.

Pure: functions take bytes and return values; no file or network access.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NoReturn, TypeVar

from federation import divisions
from federation.ccc_catalogue import category
from federation.errors import ValidationError
from federation.uscc import validate_uscc

__all__ = [
    "COLUMNS",
    "MAX_ANNUAL_CAP",
    "MAX_REGISTRY_BYTES",
    "PRIVATE_FIELDS",
    "REQUIRED_COLUMNS",
    "SHARED_FIELDS",
    "DateRange",
    "Expert",
    "Registry",
    "RegistryError",
    "SharedExpert",
    "parse_registry_csv",
    "parse_registry_json",
    "shared_view",
    "validate_expert",
]

COLUMNS: Final = (
    "expert_id",
    "name",
    "bureau",
    "categories",
    "annual_cap",
    "unavailable",
    "conflict_holders",
    "conflict_bureaus",
    "phone",
    "id_number",
)
"""Every column (CSV) or key (JSON) of a registry entry."""

REQUIRED_COLUMNS: Final = frozenset({"expert_id", "name", "bureau", "categories", "annual_cap"})
"""Columns without which an entry is refused."""

SHARED_FIELDS: Final = ("expert_id", "name", "bureau", "categories")
"""What a partner province sees of an expert (:class:`SharedExpert`)."""

PRIVATE_FIELDS: Final = ("phone", "id_number")
"""Personal data that never leaves the province, not even in the shared view."""

MAX_ANNUAL_CAP: Final = 366
"""More than one exchange a day is a typo, not a cap."""

MAX_REGISTRY_BYTES: Final = 5 * 1024 * 1024
"""A province has hundreds of experts, not millions; a larger file is the wrong file."""

_MAX_EXPERTS: Final = 10_000
_MAX_NAME: Final = 64
_MAX_JSON_DEPTH: Final = 16
_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PHONE_RE: Final = re.compile(r"\+?[0-9][0-9 ()-]{4,30}")
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_LIST_SEPARATORS: Final = re.compile(r"[;；]")
_ID_NUMBER_WEIGHTS: Final = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_NUMBER_CHECK: Final = "10X98765432"
"""GB 11643-1999 (ISO 7064 MOD 11-2): check character by weighted sum mod 11."""

_T = TypeVar("_T")


# --------------------------------------------------------------------------------------------
# Values


@dataclass(frozen=True, slots=True, order=True)
class DateRange:
    """An inclusive range of Shanghai dates (one day when ``start == end``)."""

    start: dt.date
    end: dt.date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValidationError(
                f"date range ends ({self.end}) before it starts ({self.start})",
                reason="INVALID_RANGE",
            )

    def __contains__(self, day: object) -> bool:
        return isinstance(day, dt.date) and self.start <= day <= self.end

    def __str__(self) -> str:
        if self.start == self.end:
            return self.start.isoformat()
        return f"{self.start.isoformat()}/{self.end.isoformat()}"


@dataclass(frozen=True, slots=True)
class Expert:
    """One supervision expert as the providing province keeps them (private and shared data).

    Build from files with :func:`parse_registry_csv` / :func:`parse_registry_json`, or in code
    followed by :func:`validate_expert`. Only :func:`shared_view` of it leaves the province.
    """

    expert_id: str
    """Stable id chosen by the province (letters, digits, ``_ . -``; at most 64)."""
    name: str
    bureau: str
    """GB/T 2260 code of the expert's bureau."""
    categories: frozenset[str]
    """Catalogue category codes (:data:`federation.ccc_catalogue.CATEGORIES`) they can judge."""
    annual_cap: int
    """How many exchanges a calendar year they may take (0: none this year)."""
    unavailable: tuple[DateRange, ...] = ()
    """Dates they cannot travel (leave, other duties), sorted."""
    conflict_holders: frozenset[str] = frozenset()
    """Unified social credit codes of holders they must not inspect (former employer, kin...)."""
    conflict_bureaus: frozenset[str] = frozenset()
    """Bureaus whose inspections they must not join; a province code covers its bureaus."""
    phone: str = field(default="", repr=False)
    """Private: never shared, never logged."""
    id_number: str = field(default="", repr=False)
    """Private: resident ID number (GB 11643); never shared, never logged."""

    @property
    def province(self) -> str:
        """The provincial node this expert belongs to."""
        return divisions.province_of(self.bureau)

    def covers(self, categories: Iterable[str]) -> bool:
        """Whether this expert alone can judge every one of ``categories``."""
        return self.categories.issuperset(categories)

    def unavailable_on(self, days: Iterable[dt.date]) -> tuple[dt.date, ...]:
        """The ones of ``days`` on which this expert is unavailable, sorted."""
        return tuple(sorted(d for d in set(days) if any(d in r for r in self.unavailable)))

    def conflicts_with_holder(self, holder_uscc: str) -> bool:
        """Whether this expert must not inspect the holder with this code."""
        return holder_uscc in self.conflict_holders

    def conflicts_with_bureau(self, bureau: str) -> bool:
        """Whether this expert must not join inspections of ``bureau``.

        A conflict with a provincial bureau code covers every bureau of that province, so that
        "not Jiangsu" need not list 14 codes.
        """
        if bureau in self.conflict_bureaus:
            return True
        return divisions.province_of(bureau) in self.conflict_bureaus


@dataclass(frozen=True, slots=True)
class SharedExpert:
    """What a partner province may know of an expert (:data:`SHARED_FIELDS`, nothing else)."""

    expert_id: str
    name: str
    bureau: str
    categories: frozenset[str]

    @property
    def province(self) -> str:
        """The provincial node that sends this expert."""
        return divisions.province_of(self.bureau)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (categories sorted, so equal views give equal bytes)."""
        return {
            "expert_id": self.expert_id,
            "name": self.name,
            "bureau": self.bureau,
            "categories": sorted(self.categories),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SharedExpert:
        """Read a shared view received from a peer; refuses unknown keys (``UNKNOWN_FIELD``).

        Refusing rather than ignoring extra keys means a partner that sends private data
        (a phone number) gets an error instead of having it silently stored here.
        """
        extra = sorted(set(data) - set(SHARED_FIELDS))
        if extra:
            raise ValidationError(
                f"shared expert view has fields {extra} beyond {list(SHARED_FIELDS)}",
                reason="UNKNOWN_FIELD",
            )
        missing = [name for name in SHARED_FIELDS if name not in data]
        if missing:
            raise ValidationError(f"shared expert view lacks {missing}", reason="MISSING_FIELD")
        cats = data["categories"]
        if isinstance(cats, str) or not isinstance(cats, Sequence):
            raise ValidationError(
                "shared expert view: categories must be a list", reason="INVALID_FIELD"
            )
        view = cls(
            expert_id=_parse_expert_id(_need_str(data["expert_id"], "expert_id")),
            name=_parse_name(_need_str(data["name"], "name")),
            bureau=_parse_bureau(_need_str(data["bureau"], "bureau")),
            categories=frozenset(_parse_category(_need_str(c, "categories")) for c in cats),
        )
        if not view.categories:
            raise ValidationError("shared expert view: categories is empty", reason="MISSING_FIELD")
        return view


def shared_view(expert: Expert) -> SharedExpert:
    """The part of ``expert`` a partner province may see (no phone, ID, dates or conflicts)."""
    return SharedExpert(
        expert_id=expert.expert_id,
        name=expert.name,
        bureau=expert.bureau,
        categories=expert.categories,
    )


# --------------------------------------------------------------------------------------------
# Field checks: one function per column, on one text item. Each raises ValidationError with a
# message about the value only; callers add where it was (file, line, column or field name).


def _need_str(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise ValidationError(
            f"{what} must be a string, got {type(value).__name__}", reason="INVALID_FIELD"
        )
    return value


def _check_line(text: str, what: str, max_chars: int) -> str:
    value = text.strip()
    if not value:
        raise ValidationError(f"{what} is empty", reason="MISSING_FIELD")
    if len(value) > max_chars:
        raise ValidationError(
            f"{what} has {len(value)} characters; at most {max_chars} are allowed",
            reason="INVALID_FIELD",
        )
    for index, char in enumerate(value):
        if unicodedata.category(char) in ("Cc", "Cf"):
            raise ValidationError(
                f"{what} contains control character U+{ord(char):04X} at position {index + 1}",
                reason="INVALID_FIELD",
            )
    return value


def _parse_expert_id(text: str) -> str:
    value = text.strip()
    if not _ID_RE.fullmatch(value):
        raise ValidationError(
            f"expert id {text!r} must be 1-64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
            reason="INVALID_EXPERT_ID",
        )
    return value


def _parse_name(text: str) -> str:
    return _check_line(text, "name", _MAX_NAME)


def _parse_bureau(text: str) -> str:
    return divisions.bureau(text).code


def _parse_category(text: str) -> str:
    return category(text).code


def _parse_date(text: str) -> dt.date:
    value = text.strip()
    if not _DATE_RE.fullmatch(value):
        raise ValidationError(f"{text!r} is not a date YYYY-MM-DD", reason="INVALID_DATE")
    try:
        return dt.date.fromisoformat(value)
    except ValueError as e:
        raise ValidationError(f"{text!r} is not a date: {e}", reason="INVALID_DATE") from e


def _parse_range(text: str) -> DateRange:
    start_text, slash, end_text = text.strip().partition("/")
    start = _parse_date(start_text)
    end = _parse_date(end_text) if slash else start
    return DateRange(start, end)


def _parse_cap(value: int) -> int:
    if not 0 <= value <= MAX_ANNUAL_CAP:
        raise ValidationError(
            f"annual cap {value} is outside 0-{MAX_ANNUAL_CAP}", reason="INVALID_FIELD"
        )
    return value


def _parse_cap_text(text: str) -> int:
    value = text.strip()
    if not (value.isascii() and value.isdigit()):
        raise ValidationError(f"annual cap {text!r} is not a whole number", reason="INVALID_FIELD")
    return _parse_cap(int(value))


def _parse_phone(text: str) -> str:
    value = text.strip()
    if value and not _PHONE_RE.fullmatch(value):
        raise ValidationError(
            "phone number must be digits, optionally with a leading '+', spaces, '-' or ()",
            reason="INVALID_FIELD",
        )
    return value


def _parse_id_number(text: str) -> str:
    """A resident ID number (GB 11643-1999): 17 digits, a birth date inside, a check char.

    The value is never echoed in an error, because error messages end up in logs.
    """
    value = text.strip().upper()
    if not value:
        return ""
    if (
        len(value) != 18
        or not value[:17].isdigit()
        or not (value[17].isdigit() or value[17] == "X")
    ):
        raise ValidationError(
            f"ID number must be 17 digits and a digit or X ({len(value)} characters given)",
            reason="INVALID_ID_NUMBER",
        )
    try:
        dt.date(int(value[6:10]), int(value[10:12]), int(value[12:14]))
    except ValueError as e:
        raise ValidationError(
            "ID number: characters 7-14 are not a valid birth date", reason="INVALID_ID_NUMBER"
        ) from e
    total = sum(int(d) * w for d, w in zip(value[:17], _ID_NUMBER_WEIGHTS, strict=True))
    if _ID_NUMBER_CHECK[total % 11] != value[17]:
        raise ValidationError(
            "ID number: check character (position 18) does not match; a digit is mistyped",
            reason="INVALID_ID_NUMBER",
        )
    return value


# Item parsers of the list columns, and of the single-valued text columns.
_LIST_ITEM: Final[Mapping[str, Callable[[str], object]]] = {
    "categories": _parse_category,
    "unavailable": _parse_range,
    "conflict_holders": validate_uscc,
    "conflict_bureaus": _parse_bureau,
}
_TEXT: Final[Mapping[str, Callable[[str], object]]] = {
    "expert_id": _parse_expert_id,
    "name": _parse_name,
    "bureau": _parse_bureau,
    "phone": _parse_phone,
    "id_number": _parse_id_number,
}


def _build(values: Mapping[str, object]) -> Expert:
    """An :class:`Expert` from already-checked values (lists as lists, the cap as int)."""

    def items(name: str, kind: type[_T]) -> list[_T]:
        raw = values.get(name, [])
        assert isinstance(raw, list)
        return [item for item in raw if isinstance(item, kind)]

    cap = values["annual_cap"]
    assert isinstance(cap, int)
    return Expert(
        expert_id=str(values["expert_id"]),
        name=str(values["name"]),
        bureau=str(values["bureau"]),
        categories=frozenset(items("categories", str)),
        annual_cap=cap,
        unavailable=tuple(sorted(set(items("unavailable", DateRange)))),
        conflict_holders=frozenset(items("conflict_holders", str)),
        conflict_bureaus=frozenset(items("conflict_bureaus", str)),
        phone=str(values.get("phone", "")),
        id_number=str(values.get("id_number", "")),
    )


def validate_expert(expert: Expert) -> Expert:
    """Check an :class:`Expert` built in code as a registry file would be; return it normalised.

    Raises :class:`~federation.errors.ValidationError` whose message starts with the field name.
    """

    def check(name: str, fn: Callable[[], _T]) -> _T:
        try:
            return fn()
        except ValidationError as e:
            raise ValidationError(f"{name}: {e}", reason=e.reason) from e

    categories = check("categories", lambda: frozenset(map(_parse_category, expert.categories)))
    if not categories:
        raise ValidationError("categories: at least one is required", reason="MISSING_FIELD")
    return Expert(
        expert_id=check("expert_id", lambda: _parse_expert_id(expert.expert_id)),
        name=check("name", lambda: _parse_name(expert.name)),
        bureau=check("bureau", lambda: _parse_bureau(expert.bureau)),
        categories=categories,
        annual_cap=check("annual_cap", lambda: _parse_cap(expert.annual_cap)),
        unavailable=tuple(sorted(set(expert.unavailable))),
        conflict_holders=check(
            "conflict_holders", lambda: frozenset(map(validate_uscc, expert.conflict_holders))
        ),
        conflict_bureaus=check(
            "conflict_bureaus", lambda: frozenset(map(_parse_bureau, expert.conflict_bureaus))
        ),
        phone=check("phone", lambda: _parse_phone(expert.phone)),
        id_number=check("id_number", lambda: _parse_id_number(expert.id_number)),
    )


# --------------------------------------------------------------------------------------------
# Registry files


class RegistryError(ValidationError):
    """A registry file is wrong; the message names the file, line, column and field."""

    reason = "INVALID_REGISTRY"

    def __init__(
        self,
        filename: str,
        problem: str,
        *,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
        reason: str | None = None,
    ) -> None:
        where = filename
        if line is not None:
            where += f", line {line}"
        if column is not None:
            where += f", column {column}"
        if field is not None:
            where += f" ({field})"
        super().__init__(f"{where}: {problem}", reason=reason)
        self.filename = filename
        self.line = line
        """1-based line of the file (for CSV: the spreadsheet row number)."""
        self.column = column
        """1-based column: CSV column number, or JSON character column."""
        self.field = field
        """Column name (CSV) or path (JSON), e.g. ``experts[2].bureau``."""
        self.problem = problem


@dataclass(frozen=True, slots=True)
class Registry:
    """The experts of one province, as read from a registry file."""

    province: str
    experts: tuple[Expert, ...]

    def get(self, expert_id: str) -> Expert:
        """The expert with this id; ``UNKNOWN_EXPERT`` if there is none."""
        for expert in self.experts:
            if expert.expert_id == expert_id:
                return expert
        raise ValidationError(
            f"no expert {expert_id!r} in the registry of {self.province}",
            reason="UNKNOWN_EXPERT",
        )

    def shared(self) -> tuple[SharedExpert, ...]:
        """The shared views of every expert."""
        return tuple(shared_view(expert) for expert in self.experts)


@dataclass(frozen=True, slots=True)
class _Located:
    """An expert read from a file, with where each field was, for registry-level errors."""

    expert: Expert
    line: int
    where: Mapping[str, tuple[int | None, int | None, str]]
    """field -> (line, column, label) for the error message."""


def _decode(data: bytes, filename: str) -> str:
    if len(data) > MAX_REGISTRY_BYTES:
        raise RegistryError(
            filename,
            f"file has {len(data)} bytes; a registry may have at most {MAX_REGISTRY_BYTES}",
            reason="REGISTRY_TOO_LARGE",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise RegistryError(
            filename,
            f"is not UTF-8 (byte 0x{data[e.start]:02X}); save it as 'CSV UTF-8' or UTF-8 text",
            line=line,
            reason="REGISTRY_ENCODING",
        ) from e


def _finish(located: list[_Located], filename: str, province: str | None) -> Registry:
    """Registry-level rules: not empty, unique ids, one province (the expected one if given)."""
    if not located:
        raise RegistryError(filename, "contains no experts", reason="EMPTY_REGISTRY")
    if province is not None:
        expected = divisions.bureau(province)
        if not expected.is_province:
            raise ValidationError(f"{province} is not a provincial node", reason="NOT_A_PROVINCE")
    seen: dict[str, int] = {}
    first_province: tuple[str, int] | None = None
    for item in located:
        expert = item.expert
        line, column, label = item.where["expert_id"]
        if expert.expert_id in seen:
            raise RegistryError(
                filename,
                f"expert id {expert.expert_id!r} was already used on line {seen[expert.expert_id]}",
                line=line,
                column=column,
                field=label,
                reason="DUPLICATE_EXPERT",
            )
        seen[expert.expert_id] = item.line
        line, column, label = item.where["bureau"]
        if province is not None and expert.province != province:
            raise RegistryError(
                filename,
                f"bureau {expert.bureau} belongs to {expert.province}, but this is the "
                f"registry of {province}",
                line=line,
                column=column,
                field=label,
                reason="WRONG_PROVINCE",
            )
        if first_province is None:
            first_province = (expert.province, item.line)
        elif expert.province != first_province[0]:
            raise RegistryError(
                filename,
                f"bureau {expert.bureau} belongs to {expert.province}, but the expert on line "
                f"{first_province[1]} belongs to {first_province[0]}; a registry holds one "
                "province's experts",
                line=line,
                column=column,
                field=label,
                reason="WRONG_PROVINCE",
            )
    assert first_province is not None
    return Registry(first_province[0], tuple(item.expert for item in located))


def parse_registry_csv(data: bytes, filename: str, *, province: str | None = None) -> Registry:
    """Read a CSV registry (see the module docstring for its columns).

    ``province``, if given, is the provincial node the registry must belong to. Raises
    :class:`RegistryError` naming file, line, column and column name; the ``reason`` says what
    kind of error (``REGISTRY_SYNTAX``, ``UNKNOWN_COLUMN``, ``MISSING_COLUMN``,
    ``DUPLICATE_EXPERT``, ``WRONG_PROVINCE``, ``EMPTY_REGISTRY``, or that of the cell's check
    such as ``USCC_CHECK_DIGIT``).
    """
    text = _decode(data, filename)
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows: list[tuple[int, list[str]]] = []
    line_before = 0
    try:
        for row in reader:
            rows.append((line_before + 1, row))
            line_before = reader.line_num
            if len(rows) > _MAX_EXPERTS + 1:
                raise RegistryError(
                    filename,
                    f"more than {_MAX_EXPERTS} rows",
                    line=line_before,
                    reason="REGISTRY_TOO_LARGE",
                )
    except csv.Error as e:
        # The line where the broken record starts: that is where an unbalanced quote opens.
        raise RegistryError(
            filename, f"not valid CSV: {e}", line=line_before + 1, reason="REGISTRY_SYNTAX"
        ) from e
    rows = [(line, row) for line, row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise RegistryError(filename, "is empty; expected a header row", reason="EMPTY_REGISTRY")
    header_line, header_row = rows[0]
    header = _csv_header(header_row, header_line, filename)
    located: list[_Located] = []
    for line, row in rows[1:]:
        located.append(_csv_row(row, line, header, filename))
    return _finish(located, filename, province)


def _csv_header(row: list[str], line: int, filename: str) -> list[str]:
    header = [cell.strip() for cell in row]
    for index, name in enumerate(header, start=1):
        if not name:
            continue  # spreadsheets leave unnamed empty columns; their cells must stay empty
        if name not in COLUMNS:
            raise RegistryError(
                filename,
                f"unknown column {name!r}; the columns are {', '.join(COLUMNS)}",
                line=line,
                column=index,
                reason="UNKNOWN_COLUMN",
            )
        if header.index(name) != index - 1:
            raise RegistryError(
                filename,
                f"column {name!r} appears twice",
                line=line,
                column=index,
                reason="DUPLICATE_COLUMN",
            )
    missing = [name for name in COLUMNS if name in REQUIRED_COLUMNS and name not in header]
    if missing:
        raise RegistryError(
            filename,
            f"header lacks the required column(s) {', '.join(missing)}",
            line=line,
            reason="MISSING_COLUMN",
        )
    return header


def _csv_row(row: list[str], line: int, header: list[str], filename: str) -> _Located:
    if len(row) > len(header) and any(cell.strip() for cell in row[len(header) :]):
        raise RegistryError(
            filename,
            f"row has {len(row)} cells but the header names {len(header)} columns",
            line=line,
            column=len(header) + 1,
            reason="REGISTRY_SYNTAX",
        )
    values: dict[str, object] = {}
    where: dict[str, tuple[int | None, int | None, str]] = {}
    for index, name in enumerate(header):
        cell = row[index] if index < len(row) else ""
        if not name:
            if cell.strip():
                raise RegistryError(
                    filename,
                    "cell in a column without a header name",
                    line=line,
                    column=index + 1,
                    reason="REGISTRY_SYNTAX",
                )
            continue
        where[name] = (line, index + 1, name)

        def fail(problem: str, reason: str, *, name: str = name, index: int = index) -> NoReturn:
            raise RegistryError(
                filename, problem, line=line, column=index + 1, field=name, reason=reason
            )

        try:
            if name == "annual_cap":
                if not cell.strip():
                    fail("annual_cap is required", "MISSING_FIELD")
                values[name] = _parse_cap_text(cell)
            elif name in _LIST_ITEM:
                parts = [part for part in _LIST_SEPARATORS.split(cell) if part.strip()]
                values[name] = [_LIST_ITEM[name](part) for part in parts]
                if name == "categories" and not parts:
                    fail("at least one category is required", "MISSING_FIELD")
            else:
                if name in REQUIRED_COLUMNS and not cell.strip():
                    fail(f"{name} is required", "MISSING_FIELD")
                values[name] = _TEXT[name](cell)
        except RegistryError:
            raise
        except ValidationError as e:
            fail(str(e), e.reason)
    return _Located(_build(values), line, where)


# JSON ------------------------------------------------------------------------------------------

_Path = tuple[str | int, ...]


class _JsonSyntax(Exception):
    """A syntax error at an offset (converted to a RegistryError with line and column)."""

    def __init__(self, problem: str, offset: int) -> None:
        super().__init__(problem)
        self.problem = problem
        self.offset = offset


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not allowed in JSON")


class _LocatedJson:
    """A JSON reader that remembers where each value starts.

    Why not ``json.loads``: it gives positions for syntax errors only, but a registry error must
    name the line of the offending *value* too ("line 14: bureau 999999 ..."). Containers are
    walked here; strings, numbers and literals are decoded by the standard decoder.
    """

    _WS: Final = " \t\r\n"

    def __init__(self, text: str) -> None:
        self.text = text
        self.positions: dict[_Path, int] = {}
        self._decoder = json.JSONDecoder(parse_constant=_refuse_constant)

    def parse(self) -> object:
        value, end = self._value(0, ())
        end = self._skip(end)
        if end != len(self.text):
            raise _JsonSyntax("extra data after the JSON value", end)
        return value

    def _skip(self, i: int) -> int:
        while i < len(self.text) and self.text[i] in self._WS:
            i += 1
        return i

    def _expect(self, i: int, char: str, what: str) -> int:
        i = self._skip(i)
        if self.text[i : i + 1] != char:
            raise _JsonSyntax(f"expecting {what}", i)
        return i + 1

    def _value(self, i: int, path: _Path) -> tuple[object, int]:
        i = self._skip(i)
        self.positions.setdefault(path, i)
        if len(path) > _MAX_JSON_DEPTH:
            raise _JsonSyntax("nested too deeply", i)
        char = self.text[i : i + 1]
        if char == "{":
            return self._object(i + 1, path)
        if char == "[":
            return self._array(i + 1, path)
        try:
            return self._decoder.raw_decode(self.text, i)
        except json.JSONDecodeError as e:
            raise _JsonSyntax(e.msg, e.pos) from e
        except ValueError as e:
            raise _JsonSyntax(str(e), i) from e

    def _object(self, i: int, path: _Path) -> tuple[object, int]:
        result: dict[str, object] = {}
        i = self._skip(i)
        if self.text[i : i + 1] == "}":
            return result, i + 1
        while True:
            i = self._skip(i)
            if self.text[i : i + 1] != '"':
                raise _JsonSyntax("expecting a property name in double quotes", i)
            key_at = i
            try:
                key, i = self._decoder.raw_decode(self.text, i)
            except json.JSONDecodeError as e:  # e.g. a property name without its closing quote
                raise _JsonSyntax(e.msg, e.pos) from e
            assert isinstance(key, str)
            if key in result:
                raise _JsonSyntax(f"key {key!r} appears twice in one object", key_at)
            self.positions[(*path, key)] = key_at
            i = self._expect(i, ":", "':' after a property name")
            result[key], i = self._value(i, (*path, key))
            i = self._skip(i)
            char = self.text[i : i + 1]
            if char == ",":
                i += 1
            elif char == "}":
                return result, i + 1
            else:
                raise _JsonSyntax("expecting ',' or '}'", i)

    def _array(self, i: int, path: _Path) -> tuple[object, int]:
        result: list[object] = []
        i = self._skip(i)
        if self.text[i : i + 1] == "]":
            return result, i + 1
        while True:
            value, i = self._value(i, (*path, len(result)))
            result.append(value)
            i = self._skip(i)
            char = self.text[i : i + 1]
            if char == ",":
                i += 1
            elif char == "]":
                return result, i + 1
            else:
                raise _JsonSyntax("expecting ',' or ']'", i)

    def line_column(self, offset: int) -> tuple[int, int]:
        """1-based line and column of a character offset."""
        line = self.text.count("\n", 0, offset) + 1
        column = offset - (self.text.rfind("\n", 0, offset) + 1) + 1
        return line, column


def _path_label(path: _Path) -> str:
    label = ""
    for part in path:
        label += f"[{part}]" if isinstance(part, int) else (f".{part}" if label else part)
    return label


def parse_registry_json(data: bytes, filename: str, *, province: str | None = None) -> Registry:
    """Read a JSON registry: ``{"experts": [{"expert_id": ..., ...}, ...]}``.

    Keys are the CSV column names; list columns are arrays of strings, ``annual_cap`` an
    integer. Unknown keys are refused (a misspelt ``conflict_holder`` must not silently drop a
    conflict). Raises :class:`RegistryError` naming the file, line, column and the path of the
    value (``experts[2].bureau``).
    """
    text = _decode(data, filename)
    reader = _LocatedJson(text)
    try:
        document = reader.parse()
    except _JsonSyntax as e:
        line, column = reader.line_column(e.offset)
        raise RegistryError(
            filename,
            f"not valid JSON: {e.problem}",
            line=line,
            column=column,
            reason="REGISTRY_SYNTAX",
        ) from e

    def fail(path: _Path, problem: str, reason: str) -> NoReturn:
        offset = reader.positions.get(path)
        while offset is None and path:
            path = path[:-1]
            offset = reader.positions.get(path)
        line, column = reader.line_column(offset or 0)
        raise RegistryError(
            filename,
            problem,
            line=line,
            column=column,
            field=_path_label(path) or None,
            reason=reason,
        )

    if not isinstance(document, dict):
        fail((), 'expected an object {"experts": [...]}', "REGISTRY_SYNTAX")
    for key in document:
        if key != "experts":
            fail((key,), f'unknown key {key!r}; the only key is "experts"', "UNKNOWN_FIELD")
    entries = document.get("experts")
    if not isinstance(entries, list):
        fail(("experts",), '"experts" must be an array of objects', "REGISTRY_SYNTAX")
    if len(entries) > _MAX_EXPERTS:
        fail(("experts",), f"more than {_MAX_EXPERTS} experts", "REGISTRY_TOO_LARGE")
    located = [
        _json_entry(entry, ("experts", index), reader, fail) for index, entry in enumerate(entries)
    ]
    return _finish(located, filename, province)


def _json_entry(
    entry: object,
    path: _Path,
    reader: _LocatedJson,
    fail: Callable[[_Path, str, str], NoReturn],
) -> _Located:
    if not isinstance(entry, dict):
        fail(path, "each expert must be an object", "REGISTRY_SYNTAX")
    for key in entry:
        if key not in COLUMNS:
            fail(
                (*path, key),
                f"unknown key {key!r}; the keys are {', '.join(COLUMNS)}",
                "UNKNOWN_FIELD",
            )
    for name in COLUMNS:
        if name in REQUIRED_COLUMNS and name not in entry:
            fail(path, f"{name} is required", "MISSING_FIELD")
    values: dict[str, object] = {}
    where: dict[str, tuple[int | None, int | None, str]] = {}
    for name, raw in entry.items():
        at = (*path, name)
        line, column = reader.line_column(reader.positions[at])
        where[name] = (line, column, _path_label(at))
        try:
            if name == "annual_cap":
                if not isinstance(raw, int) or isinstance(raw, bool):
                    fail(at, "annual_cap must be a whole number", "INVALID_FIELD")
                values[name] = _parse_cap(raw)
            elif name in _LIST_ITEM:
                if not isinstance(raw, list):
                    fail(at, f"{name} must be an array of strings", "INVALID_FIELD")
                items: list[object] = []
                for index, item in enumerate(raw):
                    try:
                        items.append(_LIST_ITEM[name](_need_str(item, name)))
                    except ValidationError as e:
                        fail((*at, index), str(e), e.reason)
                values[name] = items
                if name == "categories" and not items:
                    fail(at, "at least one category is required", "MISSING_FIELD")
            else:
                values[name] = _TEXT[name](_need_str(raw, name))
        except RegistryError:
            raise
        except ValidationError as e:
            fail(at, str(e), e.reason)
    first_line = reader.line_column(reader.positions[path])[0]
    where.setdefault("expert_id", (first_line, None, _path_label(path)))
    where.setdefault("bureau", (first_line, None, _path_label(path)))
    return _Located(_build(values), first_line, where)
