"""Inspection result records: the on-site checklists of Annexes 1 and 2 as validated values.

Why this module exists: an inspection result is what the four provinces recognise from each other
(guideline item 19) and what each node appends to its Merkle log (DESIGN.md §7). A result that is
recognised must mean the same thing on every node, so it is checked here once, completely, before
it is signed: every sub-item of the right annex answered, evidence where something does not
conform, a holder identified by a valid unified social credit code, places of use that are real
Delta bureaus. Later parts (the log, recognition, reconciliation) take an
:class:`InspectionResult` as given.

The record follows the paper form (:mod:`federation.checklists`):

* basic data of the holder (基本情况): name, USCC, legal representative, addresses, contacts,
  business categories, clauses involved, the counts of certificates and write-offs since
  2019-04-01 and the certificates reviewed, each with its write-off status;
* the checklist (现场检查情况记录): for every sub-item of the annex a finding and the
  conclusion "conforms: yes/no" (是否符合要求), with evidence references where it does not;
* other findings (其他检查发现的情况), above all products actually used in *another* Delta
  province - each one becomes a ready draft assistance request (item 16,
  :func:`draft_assistance_requests`);
* follow-up (item 14: rectification with a deadline, investigation with a case number, or none);
* the inspectors, among them experts exchanged from other provinces (item 17);
* the holder's confirmation (确认意见).

A record is never edited: a correction is a new record whose ``supersedes`` names the one it
corrects, because the log that carries records is append-only.

Three entry points:

1. :func:`parse_result` validates a plain mapping as read from a TOML or JSON file (see
   ``docs/examples/inspection-result.toml``). Every refusal is a
   :class:`~federation.requests.FieldError` whose message starts with the path of the field,
   e.g. ``checklist.3.2: is missing (Annex 1 item 3 sub-item 2: ②是否建立…)``.
2. :meth:`InspectionResult.to_canonical_bytes` and :func:`from_canonical_bytes`: one byte string
   per record, the Merkle leaf data. See :data:`FORMAT` for the encoding.
3. :func:`draft_assistance_requests` turns "used in another province" findings into mappings that
   :func:`federation.requests.parse_request` accepts.

This module is pure: no clock (``today`` is a parameter), no files, no network.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final, NamedTuple, NoReturn, TypeVar

from federation import divisions
from federation.checklists import (
    CLAUSE_ZH,
    RECORDS_SINCE,
    BusinessCategory,
    Checklist,
    ChecklistKind,
    ExemptionClause,
    checklist,
)
from federation.errors import ValidationError
from federation.requests import FieldError, FollowUpAction, Product, RequestKind, UseType
from federation.uscc import validate_uscc

__all__ = [
    "FORMAT",
    "BusinessKey",
    "Certificate",
    "Confirmation",
    "ContactRole",
    "FollowUpStep",
    "HolderContact",
    "HolderData",
    "InspectionResult",
    "Inspector",
    "OtherFindings",
    "Person",
    "SubItemResult",
    "UsedElsewhere",
    "WriteOff",
    "draft_assistance_requests",
    "from_canonical_bytes",
    "parse_result",
]

FORMAT: Final = "cccfed.inspection-result/1"
"""Identifies the record format inside the canonical bytes, so that a later format can coexist.

The canonical bytes are the UTF-8 encoding of the JSON text of :meth:`InspectionResult.to_dict`
with keys sorted, no insignificant whitespace, non-ASCII characters written as themselves and
keys whose value is empty (``null``, ``""``, ``[]``, ``{}``) left out. All keys are ASCII and all
numbers are integers below 2**53, so this is also the RFC 8785 (JCS) form of the same value and
another implementation can reproduce it byte for byte."""

_MAX_LINE: Final = 500
_MAX_TEXT: Final = 20_000
_MAX_ITEMS: Final = 1_000
_MAX_CERTIFICATES: Final = 10_000
_MAX_CERTIFICATE_NO: Final = 64
_MAX_QUANTITY: Final = 10**12
_MAX_COUNT: Final = 10**9

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HS_RE: Final = re.compile(r"[0-9]{6,10}")
_PHONE_RE: Final = re.compile(r"\+?[0-9][0-9 ()-]{4,30}")
_EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")

_E = TypeVar("_E", bound=StrEnum)


# --------------------------------------------------------------------------------------------
# Vocabulary


class WriteOff(StrEnum):
    """Write-off status (核销) of a certificate or batch as found on the inspection day."""

    USED = "used"
    """Written off as used (使用)."""
    SHIPPED_BACK = "shipped_back"
    """Written off as shipped back out of China (退运出关)."""
    DESTROYED = "destroyed"
    """Written off as destroyed (销毁)."""
    OPEN = "open"
    """Not written off yet (未核销)."""


_WRITE_OFF_ZH: Final = {
    WriteOff.USED: "已使用核销",
    WriteOff.SHIPPED_BACK: "已退运出关核销",
    WriteOff.DESTROYED: "已销毁核销",
    WriteOff.OPEN: "未核销",
}


class ContactRole(StrEnum):
    """The two contact rows of the form besides the legal representative."""

    DEPARTMENT_HEAD = "department_head"
    """部门负责人."""
    HANDLER = "handler"
    """具体经办人: the person who handles the exemption applications."""


# --------------------------------------------------------------------------------------------
# The record


@dataclass(frozen=True, slots=True)
class Person:
    """A named person with an optional phone number (the legal representative)."""

    name: str
    phone: str = ""


@dataclass(frozen=True, slots=True)
class HolderContact:
    """A contact person at the holder, with the phone number the form asks for."""

    role: ContactRole
    name: str
    phone: str


@dataclass(frozen=True, slots=True)
class Certificate:
    """One exemption certificate (免办证明, one batch) since 2019-04-01 and its write-off."""

    certificate_no: str
    issued_on: dt.date
    clause: ExemptionClause
    write_off: WriteOff
    written_off_on: dt.date | None = None
    """Only for a certificate written off; optional even then (not every system shows it)."""


@dataclass(frozen=True, slots=True)
class HolderData:
    """The holder's basic data (基本情况) as recorded on the form."""

    name: str
    uscc: str
    """Normalised unified social credit code (upper case)."""
    legal_representative: Person
    registered_address: str
    """单位登记住所."""
    business_address: str
    """单位经营地地址."""
    contacts: tuple[HolderContact, ...]
    business_categories: tuple[BusinessCategory, ...]
    """In form order, without repeats."""
    clauses: tuple[ExemptionClause, ...]
    """Clauses involved in the holder's applications (涉及申请免办条款), in form order."""
    certificate_batches: int
    """申报免办证明批次数 since 2019-04-01: all certificates, not only those listed."""
    written_off_batches: int
    """免办证明批次核销数量 since 2019-04-01."""
    certificates: tuple[Certificate, ...] = ()
    """The certificates reviewed at the inspection (at least those named by other findings)."""
    business_category_other: str = ""
    """What "other" (其他) means, when that category is ticked."""
    system_account: str = ""
    """The holder's account in the national exemption system (or its fast-track account)."""

    def certificate(self, certificate_no: str) -> Certificate | None:
        """The listed certificate with this number, or None."""
        for cert in self.certificates:
            if cert.certificate_no == certificate_no:
                return cert
        return None


@dataclass(frozen=True, slots=True)
class SubItemResult:
    """The answer to one sub-item: what was found and whether it conforms (是否符合要求)."""

    sub_item: str
    """The sub-item's id in the record's annex, e.g. ``"2.1"``."""
    finding: str
    """现场检查情况描述."""
    conforms: bool
    evidence: tuple[str, ...] = ()
    """References to the evidence kept with the record (file names, ledger pages); at least one
    where the sub-item does not conform, as the form requires ("随附相关证据材料")."""


@dataclass(frozen=True, slots=True)
class UsedElsewhere:
    """Products of a batch found actually used in another Delta province (item 16)."""

    certificate_nos: tuple[str, ...]
    """The batch: certificates listed in the holder's data."""
    bureau: str
    """The Delta bureau of the place of use (city, Shanghai district, or province when the city
    is not known); always in another province than the inspecting bureau."""
    place_of_use: str
    """Address or description of the place of use."""
    use_type: UseType
    write_off: WriteOff
    products: tuple[Product, ...]
    note: str = ""


@dataclass(frozen=True, slots=True)
class OtherFindings:
    """其他检查发现的情况."""

    used_elsewhere: tuple[UsedElsewhere, ...] = ()
    notes: str = ""
    """Anything else found, as free text."""


@dataclass(frozen=True, slots=True)
class FollowUpStep:
    """One follow-up measure (item 14)."""

    action: FollowUpAction
    deadline: dt.date | None = None
    """Rectification deadline (整改期限), after the inspection day; only for rectification."""
    case_number: str = ""
    """Case number of the investigation opened (立案调查); only for investigation."""
    note: str = ""


@dataclass(frozen=True, slots=True)
class Inspector:
    """An inspector; an exchanged expert (item 17) comes from a bureau of another province."""

    name: str
    bureau: str
    exchanged_expert: bool = False
    expert_province: str | None = None
    """The expert's provincial node; None for an inspector of the inspecting province."""
    phone: str = ""
    email: str = ""


@dataclass(frozen=True, slots=True)
class Confirmation:
    """The holder's confirmation of the record (确认意见, signed and sealed)."""

    signed_by: str
    signed_on: dt.date
    opinion: str = ""


class BusinessKey(NamedTuple):
    """What makes two records describe the same inspection, whatever their ids.

    Two records with one key and neither superseding the other conflict; recognition flags them.
    """

    uscc: str
    inspected_on: dt.date
    inspecting_bureau: str

    def __str__(self) -> str:
        return f"{self.uscc}/{self.inspected_on.isoformat()}/{self.inspecting_bureau}"


@dataclass(frozen=True, slots=True)
class InspectionResult:
    """A validated inspection result record; build it with :func:`parse_result`."""

    record_id: str
    """Canonical UUID chosen by the inspecting node."""
    kind: ChecklistKind
    inspecting_bureau: str
    inspected_on: dt.date
    holder: HolderData
    checklist: tuple[SubItemResult, ...]
    """One result per sub-item of the annex, in form order."""
    other_findings: OtherFindings
    follow_up: tuple[FollowUpStep, ...]
    inspectors: tuple[Inspector, ...]
    confirmation: Confirmation
    supersedes: str | None = None
    """The record this one corrects; corrections are new records, never edits."""

    @property
    def annex(self) -> Checklist:
        """The checklist the record follows."""
        return checklist(self.kind)

    @property
    def inspecting_node(self) -> str:
        """Province code of the node that owns the record."""
        return divisions.province_of(self.inspecting_bureau)

    @property
    def business_key(self) -> BusinessKey:
        """(holder USCC, inspection date, inspecting bureau)."""
        return BusinessKey(self.holder.uscc, self.inspected_on, self.inspecting_bureau)

    @property
    def nonconforming(self) -> tuple[SubItemResult, ...]:
        """Sub-items found not to conform, in form order."""
        return tuple(r for r in self.checklist if not r.conforms)

    def result_for(self, sub_item: str) -> SubItemResult:
        """The result of one sub-item; ``KeyError`` if the annex has no such sub-item."""
        for result in self.checklist:
            if result.sub_item == sub_item:
                return result
        raise KeyError(sub_item)

    def to_dict(self) -> dict[str, Any]:
        """The record as a plain mapping that :func:`parse_result` accepts (dates as text)."""
        holder = self.holder
        return _compact(
            {
                "format": FORMAT,
                "record_id": self.record_id,
                "supersedes": self.supersedes,
                "kind": self.kind.value,
                "inspecting_bureau": self.inspecting_bureau,
                "inspected_on": self.inspected_on.isoformat(),
                "holder": {
                    "name": holder.name,
                    "uscc": holder.uscc,
                    "system_account": holder.system_account,
                    "legal_representative": {
                        "name": holder.legal_representative.name,
                        "phone": holder.legal_representative.phone,
                    },
                    "registered_address": holder.registered_address,
                    "business_address": holder.business_address,
                    "contacts": [
                        {"role": c.role.value, "name": c.name, "phone": c.phone}
                        for c in holder.contacts
                    ],
                    "business_categories": [c.value for c in holder.business_categories],
                    "business_category_other": holder.business_category_other,
                    "clauses": [c.value for c in holder.clauses],
                    "certificate_batches": holder.certificate_batches,
                    "written_off_batches": holder.written_off_batches,
                    "certificates": [
                        {
                            "certificate_no": c.certificate_no,
                            "issued_on": c.issued_on.isoformat(),
                            "clause": c.clause.value,
                            "write_off": c.write_off.value,
                            "written_off_on": _iso(c.written_off_on),
                        }
                        for c in holder.certificates
                    ],
                },
                "checklist": [
                    {
                        "sub_item": r.sub_item,
                        "finding": r.finding,
                        "conforms": r.conforms,
                        "evidence": list(r.evidence),
                    }
                    for r in self.checklist
                ],
                "other_findings": {
                    "notes": self.other_findings.notes,
                    "used_elsewhere": [
                        {
                            "certificate_nos": list(u.certificate_nos),
                            "bureau": u.bureau,
                            "place_of_use": u.place_of_use,
                            "use_type": u.use_type.value,
                            "write_off": u.write_off.value,
                            "products": [_product_dict(p) for p in u.products],
                            "note": u.note,
                        }
                        for u in self.other_findings.used_elsewhere
                    ],
                },
                "follow_up": [
                    {
                        "action": f.action.value,
                        "deadline": _iso(f.deadline),
                        "case_number": f.case_number,
                        "note": f.note,
                    }
                    for f in self.follow_up
                ],
                "inspectors": [
                    {
                        "name": i.name,
                        "bureau": i.bureau,
                        "exchanged_expert": i.exchanged_expert,
                        "expert_province": i.expert_province,
                        "phone": i.phone,
                        "email": i.email,
                    }
                    for i in self.inspectors
                ],
                "confirmation": {
                    "signed_by": self.confirmation.signed_by,
                    "signed_on": self.confirmation.signed_on.isoformat(),
                    "opinion": self.confirmation.opinion,
                },
            }
        )

    def to_canonical_bytes(self) -> bytes:
        """The one byte string of this record (see :data:`FORMAT`): the Merkle leaf data.

        Equal records give equal bytes, whatever the key order or spelling of the input they
        were parsed from (``"fast-track"`` and ``"fast_track"``, a TOML date or its text).
        """
        return _canonical_json(self.to_dict())

    @classmethod
    def from_canonical_bytes(cls, data: bytes) -> InspectionResult:
        """Same as :func:`from_canonical_bytes`."""
        return from_canonical_bytes(data)


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value is not None else None


def _product_dict(product: Product) -> dict[str, Any]:
    return _compact(
        {
            "name": product.name,
            "model": product.model,
            "quantity": product.quantity,
            "hs_code": product.hs_code,
        }
    )


def _is_empty(value: object) -> bool:
    return value is None or (isinstance(value, str | list | dict) and not value)


def _compact(value: dict[str, Any]) -> dict[str, Any]:
    """Drop empty values from mappings, recursively, so that "absent" has one spelling."""
    out = {k: _compact_value(v) for k, v in value.items()}
    return {k: v for k, v in out.items() if not _is_empty(v)}


def _compact_value(value: object) -> object:
    if isinstance(value, dict):
        return _compact(value)
    if isinstance(value, list):
        return [_compact_value(v) for v in value]
    return value


def _canonical_json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(
        value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


# --------------------------------------------------------------------------------------------
# Reading a plain mapping


def _fail(field: str, problem: str, reason: str = "INVALID_FIELD") -> NoReturn:
    raise FieldError(field, problem, reason=reason)


def _kind_label(kind: ChecklistKind) -> str:
    if kind is ChecklistKind.GENERAL:
        return "a general-holder inspection (Annex 1)"
    return "a fast-track-holder inspection (Annex 2)"


def _clean_text(value: str, field: str, *, multiline: bool, max_chars: int | None) -> str:
    """NFC, stripped, CRLF read as LF; refuse control characters (but newline and tab in
    multi-line text), lone surrogates (not encodable as UTF-8) and overlong text. One spelling
    per text, so that the same record typed on two systems gives the same canonical bytes."""
    text = unicodedata.normalize("NFC", value).strip()
    if multiline:
        text = text.replace("\r\n", "\n")
    limit = max_chars if max_chars is not None else (_MAX_TEXT if multiline else _MAX_LINE)
    if len(text) > limit:
        _fail(field, f"has {len(text)} characters; at most {limit} are allowed")
    allowed_controls = "\n\t" if multiline else ""
    for index, char in enumerate(text):
        category = unicodedata.category(char)
        if category == "Cs":
            _fail(field, f"contains a lone surrogate U+{ord(char):04X} at position {index + 1}")
        if category == "Cc" and char not in allowed_controls:
            what = "a line break" if char in "\r\n" else f"control character U+{ord(char):04X}"
            _fail(field, f"contains {what} at position {index + 1}")
    return text


class _Fields:
    """A mapping read key by key: every value is checked as it is read, every error names its
    path, and keys the record does not know are refused (a typo must not drop a field)."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(data, Mapping):
            _fail(path or "record", f"must be a table, got {type(data).__name__}")
        self._path = path
        self._data: Mapping[object, object] = data
        unknown = sorted(str(key) for key in data if key not in allowed)
        if unknown:
            _fail(
                self.at(unknown[0]),
                f"unknown field; expected one of {', '.join(sorted(allowed))}",
                "UNKNOWN_FIELD",
            )

    def at(self, key: str) -> str:
        """The path of ``key`` for messages."""
        return f"{self._path}.{key}" if self._path else key

    def raw(self, key: str) -> object:
        """The value, or None when absent."""
        return self._data.get(key)

    def text(
        self,
        key: str,
        *,
        required: bool = True,
        multiline: bool = False,
        max_chars: int | None = None,
    ) -> str:
        """Checked text; "" when absent and not required."""
        return _text_value(
            self._data.get(key),
            self.at(key),
            required=required,
            multiline=multiline,
            max_chars=max_chars,
        )

    def code(self, key: str) -> str:
        """A Delta bureau code (the divisions module's reason is kept)."""
        field = self.at(key)
        value = self._data.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            _fail(field, f'must be a string: write "{value}" in quotes')
        text = self.text(key)
        try:
            return divisions.bureau(text).code
        except ValidationError as e:
            raise FieldError(field, str(e), reason=e.reason) from e

    def boolean(self, key: str, *, default: bool | None = None) -> bool:
        """``true`` or ``false``; nothing else reads as a conclusion."""
        value = self._data.get(key)
        if value is None and default is not None:
            return default
        if value is None:
            _fail(self.at(key), "is required: true or false", "MISSING_FIELD")
        if not isinstance(value, bool):
            _fail(self.at(key), f"must be true or false, got {value!r}")
        return value

    def count(self, key: str) -> int:
        """A whole number of at least zero (batches)."""
        value = self._data.get(key)
        if value is None:
            _fail(self.at(key), "is required", "MISSING_FIELD")
        if isinstance(value, bool) or not isinstance(value, int):
            _fail(self.at(key), f"must be a whole number, got {value!r}")
        if not 0 <= value <= _MAX_COUNT:
            _fail(self.at(key), f"must be between 0 and {_MAX_COUNT}, got {value}")
        return value

    def date(self, key: str, *, required: bool = True) -> dt.date | None:
        """A date: a TOML date or text ``YYYY-MM-DD``."""
        field = self.at(key)
        value = self._data.get(key)
        if _is_empty(value):
            if required:
                _fail(field, "is required (YYYY-MM-DD)", "MISSING_FIELD")
            return None
        if isinstance(value, dt.datetime):
            _fail(field, "must be a date (YYYY-MM-DD), not a date and time")
        if isinstance(value, dt.date):
            return value
        if not isinstance(value, str) or _DATE_RE.fullmatch(value.strip()) is None:
            _fail(field, f"{value!r} is not a date written YYYY-MM-DD")
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError:
            _fail(field, f"{value!r} is not a valid calendar date")

    def required_date(self, key: str) -> dt.date:
        """A date that must be given."""
        value = self.date(key)
        assert value is not None
        return value

    def enum(self, key: str, enum: type[_E]) -> _E:
        """One member of ``enum`` by value; ``-`` and spaces read as ``_``."""
        return _enum_value(self._data.get(key), enum, self.at(key))

    def items(self, key: str, *, required: bool = False, limit: int = _MAX_ITEMS) -> list[object]:
        """A list; [] when absent and not required."""
        field = self.at(key)
        value = self._data.get(key)
        if value is None:
            value = []
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            _fail(field, f"must be a list, got {type(value).__name__}")
        if required and not value:
            _fail(field, "at least one entry is required", "MISSING_FIELD")
        if len(value) > limit:
            _fail(field, f"has {len(value)} entries; at most {limit} are allowed")
        return list(value)

    def table(self, key: str, allowed: frozenset[str], *, required: bool = True) -> _Fields:
        """A nested table; an empty one when absent and not required."""
        value = self._data.get(key)
        if value is None:
            if required:
                _fail(self.at(key), "is required", "MISSING_FIELD")
            value = {}
        return _Fields(value, self.at(key), allowed)

    def tables(
        self, key: str, allowed: frozenset[str], *, required: bool = False, limit: int = _MAX_ITEMS
    ) -> list[_Fields]:
        """A list of tables, each read with its index in the path."""
        return [
            _Fields(item, f"{self.at(key)}[{index}]", allowed)
            for index, item in enumerate(self.items(key, required=required, limit=limit))
        ]

    def texts(self, key: str, *, required: bool = False, max_chars: int = _MAX_LINE) -> list[str]:
        """A list of distinct non-empty single-line texts."""
        out: list[str] = []
        for index, item in enumerate(self.items(key, required=required)):
            where = f"{self.at(key)}[{index}]"
            text = _text_value(item, where, required=True, multiline=False, max_chars=max_chars)
            if text in out:
                _fail(where, f"{text!r} repeats {self.at(key)}[{out.index(text)}]")
            out.append(text)
        return out


def _text_value(
    value: object, field: str, *, required: bool, multiline: bool, max_chars: int | None
) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        _fail(field, f"must be a string, got {type(value).__name__}")
    text = _clean_text(value, field, multiline=multiline, max_chars=max_chars)
    if not text and required:
        _fail(field, "is required", "MISSING_FIELD")
    return text


def _enum_value(value: object, enum: type[_E], field: str) -> _E:
    choices = ", ".join(m.value for m in enum)
    if _is_empty(value):
        _fail(field, f"is required; one of {choices}", "MISSING_FIELD")
    if not isinstance(value, str):
        _fail(field, f"must be a string, got {type(value).__name__}")
    key = value.strip().lower().replace("-", "_").replace(" ", "_")
    for member in enum:
        if member.value == key:
            return member
    _fail(field, f"{value!r} is not one of {choices}")


def _enum_set(fields: _Fields, key: str, enum: type[_E]) -> tuple[_E, ...]:
    """A non-empty set of enum members given as a list, returned in the enum's (form) order."""
    seen: dict[_E, int] = {}
    for index, item in enumerate(fields.items(key, required=True)):
        where = f"{fields.at(key)}[{index}]"
        member = _enum_value(item, enum, where)
        if member in seen:
            _fail(where, f"{member.value!r} repeats {fields.at(key)}[{seen[member]}]")
        seen[member] = index
    return tuple(m for m in enum if m in seen)


def _uuid(value: str, field: str) -> str:
    """A canonical UUID: lowercase hex with dashes, as every id in the federation."""
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        _fail(field, f"{value!r} is not a UUID")
    if canonical != value:
        _fail(field, f"{value!r} is not in canonical form; write {canonical!r}")
    return value


def _phone(fields: _Fields, key: str, *, required: bool) -> str:
    phone = fields.text(key, required=required)
    if phone and _PHONE_RE.fullmatch(phone) is None:
        _fail(fields.at(key), f"{phone!r} is not a phone number (digits, spaces, +, -, ())")
    return phone


def _certificate_no(value: object, field: str) -> str:
    number = _text_value(
        value, field, required=True, multiline=False, max_chars=_MAX_CERTIFICATE_NO
    )
    if any(char.isspace() for char in number):
        _fail(field, f"{number!r} must not contain whitespace")
    return number


def _province_name(code: str) -> str:
    node = divisions.PROVINCES[divisions.province_of(code)]
    return f"{node.name_en} ({node.code})"


class _Check:
    """Date rules of one record: nothing after ``today`` (when known), nothing before the form's
    2019-04-01 start, and what the inspection day bounds."""

    __slots__ = ("today",)

    def __init__(self, today: dt.date | None) -> None:
        self.today = today

    def not_future(self, value: dt.date, field: str) -> None:
        if self.today is not None and value > self.today:
            _fail(
                field,
                f"{value.isoformat()} is in the future (today is {self.today.isoformat()})",
                "FUTURE_DATE",
            )

    @staticmethod
    def since_2019(value: dt.date, field: str) -> None:
        if value < RECORDS_SINCE:
            _fail(
                field,
                f"{value.isoformat()} is before {RECORDS_SINCE.isoformat()}; the form records "
                "certificates and write-offs since that day (2019年4月1日以来)",
                "BEFORE_RECORD_PERIOD",
            )


_RECORD_KEYS: Final = frozenset(
    {
        "format",
        "record_id",
        "supersedes",
        "kind",
        "inspecting_bureau",
        "inspected_on",
        "holder",
        "checklist",
        "other_findings",
        "follow_up",
        "inspectors",
        "confirmation",
    }
)
_HOLDER_KEYS: Final = frozenset(
    {
        "name",
        "uscc",
        "system_account",
        "legal_representative",
        "registered_address",
        "business_address",
        "contacts",
        "business_categories",
        "business_category_other",
        "clauses",
        "certificate_batches",
        "written_off_batches",
        "certificates",
    }
)
_PERSON_KEYS: Final = frozenset({"name", "phone"})
_CONTACT_KEYS: Final = frozenset({"role", "name", "phone"})
_CERTIFICATE_KEYS: Final = frozenset(
    {"certificate_no", "issued_on", "clause", "write_off", "written_off_on"}
)
_SUB_ITEM_KEYS: Final = frozenset({"sub_item", "finding", "conforms", "evidence"})
_OTHER_KEYS: Final = frozenset({"notes", "used_elsewhere"})
_USED_KEYS: Final = frozenset(
    {"certificate_nos", "bureau", "place_of_use", "use_type", "write_off", "products", "note"}
)
_PRODUCT_KEYS: Final = frozenset({"name", "model", "quantity", "hs_code"})
_FOLLOW_UP_KEYS: Final = frozenset({"action", "deadline", "case_number", "note"})
_INSPECTOR_KEYS: Final = frozenset(
    {"name", "bureau", "exchanged_expert", "expert_province", "phone", "email"}
)
_CONFIRMATION_KEYS: Final = frozenset({"signed_by", "signed_on", "opinion"})


def _parse_holder(fields: _Fields, inspected_on: dt.date, check: _Check) -> HolderData:
    name = fields.text("name")
    uscc_text = fields.text("uscc")
    try:
        uscc = validate_uscc(uscc_text)
    except ValidationError as e:
        raise FieldError(fields.at("uscc"), str(e), reason=e.reason) from e
    rep = fields.table("legal_representative", _PERSON_KEYS)
    legal_representative = Person(rep.text("name"), _phone(rep, "phone", required=False))
    registered = fields.text("registered_address")
    business = fields.text("business_address")
    contacts = tuple(
        HolderContact(
            c.enum("role", ContactRole), c.text("name"), _phone(c, "phone", required=True)
        )
        for c in fields.tables("contacts", _CONTACT_KEYS, required=True)
    )
    categories = _enum_set(fields, "business_categories", BusinessCategory)
    other = fields.text("business_category_other", required=False)
    if BusinessCategory.OTHER in categories and not other:
        _fail(
            fields.at("business_category_other"),
            "is required when the category 'other' (其他) is ticked: say what the business is",
            "MISSING_FIELD",
        )
    if other and BusinessCategory.OTHER not in categories:
        _fail(
            fields.at("business_category_other"),
            "is only for the category 'other' (其他), which is not in business_categories",
        )
    clauses = _enum_set(fields, "clauses", UseType)
    batches = fields.count("certificate_batches")
    written_off = fields.count("written_off_batches")
    if written_off > batches:
        _fail(
            fields.at("written_off_batches"),
            f"{written_off} written off exceeds the {batches} certificate batches",
        )

    certificates: list[Certificate] = []
    numbers: dict[str, int] = {}
    path = fields.at("certificates")
    for index, cert in enumerate(
        fields.tables("certificates", _CERTIFICATE_KEYS, limit=_MAX_CERTIFICATES)
    ):
        number = _certificate_no(cert.raw("certificate_no"), cert.at("certificate_no"))
        if number in numbers:
            _fail(cert.at("certificate_no"), f"{number!r} repeats {path}[{numbers[number]}]")
        numbers[number] = index
        issued = cert.required_date("issued_on")
        check.since_2019(issued, cert.at("issued_on"))
        check.not_future(issued, cert.at("issued_on"))
        if issued > inspected_on:
            _fail(
                cert.at("issued_on"),
                f"{issued.isoformat()} is after the inspection ({inspected_on.isoformat()})",
            )
        clause = cert.enum("clause", UseType)
        if clause not in clauses:
            _fail(
                cert.at("clause"),
                f"{clause.value!r} ({CLAUSE_ZH[clause]}) is not among {fields.at('clauses')} "
                f"({', '.join(c.value for c in clauses)}); tick it in 涉及申请免办条款",
            )
        status = cert.enum("write_off", WriteOff)
        closed_on = cert.date("written_off_on", required=False)
        if closed_on is not None:
            where = cert.at("written_off_on")
            if status is WriteOff.OPEN:
                _fail(where, "a certificate that is not written off (open) has no write-off date")
            if closed_on < issued:
                _fail(where, f"{closed_on.isoformat()} is before issue ({issued.isoformat()})")
            if closed_on > inspected_on:
                _fail(
                    where,
                    f"{closed_on.isoformat()} is after the inspection ({inspected_on.isoformat()});"
                    " the record states the write-off as found on the inspection day",
                )
        certificates.append(Certificate(number, issued, clause, status, closed_on))
    if len(certificates) > batches:
        _fail(
            path,
            f"lists {len(certificates)} certificates but certificate_batches is {batches}",
        )
    listed_closed = sum(1 for c in certificates if c.write_off is not WriteOff.OPEN)
    if listed_closed > written_off:
        _fail(
            fields.at("written_off_batches"),
            f"is {written_off} but {listed_closed} listed certificates are written off",
        )
    return HolderData(
        name=name,
        uscc=uscc,
        legal_representative=legal_representative,
        registered_address=registered,
        business_address=business,
        contacts=contacts,
        business_categories=categories,
        clauses=clauses,
        certificate_batches=batches,
        written_off_batches=written_off,
        certificates=tuple(certificates),
        business_category_other=other,
        system_account=fields.text("system_account", required=False),
    )


def _sub_item_id(fields: _Fields, kind: ChecklistKind) -> str:
    """The entry's sub-item id, refused with the annex it belongs to if it is not this one's."""
    field = fields.at("sub_item")
    value = fields.raw("sub_item")
    if isinstance(value, float | int) and not isinstance(value, bool):
        _fail(field, f'must be a string like "1.1": write "{value}" in quotes')
    sub_id = fields.text("sub_item")
    own = checklist(kind)
    if sub_id in own.sub_item_ids:
        return sub_id
    for other_kind in ChecklistKind:
        other = checklist(other_kind)
        if other_kind is not kind and sub_id in other.sub_item_ids:
            _fail(
                field,
                f"{sub_id} belongs to Annex {other.annex} ({other_kind.value.replace('_', ' ')}: "
                f"{other.sub_item(sub_id).label_zh}) but the record is {_kind_label(kind)}",
                "WRONG_ANNEX",
            )
    _fail(
        field,
        f"{sub_id!r} is not a sub-item of Annex {own.annex}; expected one of "
        f"{', '.join(own.sub_item_ids)}",
        "UNKNOWN_SUB_ITEM",
    )


def _parse_checklist(fields: _Fields, kind: ChecklistKind) -> tuple[SubItemResult, ...]:
    own = checklist(kind)
    path = fields.at("checklist")
    entries = fields.tables("checklist", _SUB_ITEM_KEYS, required=True)
    found: dict[str, tuple[int, SubItemResult]] = {}
    for index, entry in enumerate(entries):
        sub_id = _sub_item_id(entry, kind)
        if sub_id in found:
            _fail(
                entry.at("sub_item"),
                f"{sub_id} is answered again (first in {path}[{found[sub_id][0]}])",
                "DUPLICATE_SUB_ITEM",
            )
        finding = entry.text("finding", multiline=True)
        conforms = entry.boolean("conforms")
        evidence = entry.texts("evidence")
        if not conforms and not evidence:
            _fail(
                entry.at("evidence"),
                f"sub-item {sub_id} does not conform, so the record must reference the evidence "
                "kept with it (不符合情况的记录，随附相关证据材料)",
                "EVIDENCE_REQUIRED",
            )
        found[sub_id] = (index, SubItemResult(sub_id, finding, conforms, tuple(evidence)))
    missing = [sub_id for sub_id in own.sub_item_ids if sub_id not in found]
    if missing:
        problem = f"is missing ({own.describe(missing[0])})"
        if len(missing) > 1:
            problem += f"; also missing: {', '.join(missing[1:])}"
        for other_kind in ChecklistKind:
            if other_kind is not kind and set(found) == set(checklist(other_kind).sub_item_ids):
                problem += (
                    f"; the sub-items given are exactly those of Annex "
                    f'{checklist(other_kind).annex}: should kind be "{other_kind.value}"?'
                )
        _fail(f"{path}.{missing[0]}", problem, "MISSING_SUB_ITEM")
    return tuple(found[sub_id][1] for sub_id in own.sub_item_ids)


def _parse_product(fields: _Fields) -> Product:
    quantity = fields.raw("quantity")
    if quantity is None:
        _fail(fields.at("quantity"), "is required", "MISSING_FIELD")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        _fail(fields.at("quantity"), f"must be a whole number, got {quantity!r}")
    if not 0 < quantity <= _MAX_QUANTITY:
        _fail(fields.at("quantity"), f"must be between 1 and {_MAX_QUANTITY}, got {quantity}")
    hs_raw = fields.raw("hs_code")
    if isinstance(hs_raw, int) and not isinstance(hs_raw, bool):
        _fail(fields.at("hs_code"), "must be a string (quote it, so leading zeros are kept)")
    hs_code = fields.text("hs_code", required=False)
    if hs_code and _HS_RE.fullmatch(hs_code) is None:
        _fail(fields.at("hs_code"), f"{hs_code!r} is not an HS code of 6 to 10 digits")
    return Product(fields.text("name"), fields.text("model"), quantity, hs_code or None)


def _parse_other(fields: _Fields, inspecting_bureau: str, holder: HolderData) -> OtherFindings:
    own_province = divisions.province_of(inspecting_bureau)
    used: list[UsedElsewhere] = []
    for entry in fields.tables("used_elsewhere", _USED_KEYS):
        numbers = tuple(entry.texts("certificate_nos", required=True, max_chars=64))
        for index, number in enumerate(numbers):
            where = f"{entry.at('certificate_nos')}[{index}]"
            _certificate_no(number, where)
            if holder.certificate(number) is None:
                _fail(
                    where,
                    f"{number!r} is not among the holder's certificates listed in "
                    "holder.certificates; list the batch there first",
                    "UNKNOWN_CERTIFICATE",
                )
        bureau = entry.code("bureau")
        if divisions.province_of(bureau) == own_province:
            _fail(
                entry.at("bureau"),
                f"{divisions.bureau(bureau)} is in {_province_name(bureau)}, the inspecting "
                f"bureau's own province; other_findings.used_elsewhere records use in another "
                "Delta province (inside one province the bureau acts directly)",
                "SAME_PROVINCE",
            )
        used.append(
            UsedElsewhere(
                certificate_nos=numbers,
                bureau=bureau,
                place_of_use=entry.text("place_of_use"),
                use_type=entry.enum("use_type", UseType),
                write_off=entry.enum("write_off", WriteOff),
                products=tuple(
                    _parse_product(p)
                    for p in entry.tables("products", _PRODUCT_KEYS, required=True)
                ),
                note=entry.text("note", required=False, multiline=True),
            )
        )
    return OtherFindings(tuple(used), fields.text("notes", required=False, multiline=True))


def _parse_follow_up(
    fields: _Fields, inspected_on: dt.date, checklist_results: Sequence[SubItemResult]
) -> tuple[FollowUpStep, ...]:
    path = fields.at("follow_up")
    steps: list[FollowUpStep] = []
    for entry in fields.tables("follow_up", _FOLLOW_UP_KEYS, required=True):
        action = entry.enum("action", FollowUpAction)
        deadline = entry.date("deadline", required=False)
        case_number = entry.text("case_number", required=False)
        if action is FollowUpAction.RECTIFICATION:
            if deadline is None:
                _fail(entry.at("deadline"), "a rectification needs a deadline", "MISSING_FIELD")
            if deadline <= inspected_on:
                _fail(
                    entry.at("deadline"),
                    f"{deadline.isoformat()} is not after the inspection "
                    f"({inspected_on.isoformat()})",
                )
        elif deadline is not None:
            _fail(entry.at("deadline"), f"only a rectification has a deadline, not {action.value}")
        if action is FollowUpAction.INVESTIGATION and not case_number:
            _fail(
                entry.at("case_number"),
                "an investigation opened (立案调查) needs its case number",
                "MISSING_FIELD",
            )
        if action is not FollowUpAction.INVESTIGATION and case_number:
            _fail(
                entry.at("case_number"),
                f"only an investigation has a case number, not {action.value}",
            )
        steps.append(
            FollowUpStep(action, deadline, case_number, entry.text("note", required=False))
        )
    actions = [s.action for s in steps]
    if FollowUpAction.NONE in actions and len(actions) > 1:
        _fail(path, "'none' cannot be combined with other follow-up")
    failed = [r.sub_item for r in checklist_results if not r.conforms]
    if failed and actions == [FollowUpAction.NONE]:
        _fail(
            path,
            f"sub-item {', '.join(failed)} does not conform; guideline item 14 requires "
            "rectification (整改) or an investigation (立案调查), not 'none'",
            "FOLLOW_UP_REQUIRED",
        )
    return tuple(steps)


def _parse_inspectors(fields: _Fields, inspecting_bureau: str) -> tuple[Inspector, ...]:
    own_province = divisions.province_of(inspecting_bureau)
    path = fields.at("inspectors")
    inspectors: list[Inspector] = []
    names: dict[str, int] = {}
    for index, entry in enumerate(fields.tables("inspectors", _INSPECTOR_KEYS, required=True)):
        name = entry.text("name")
        if name in names:
            _fail(entry.at("name"), f"{name!r} repeats {path}[{names[name]}]")
        names[name] = index
        bureau = entry.code("bureau")
        province = divisions.province_of(bureau)
        expert = entry.boolean("exchanged_expert", default=False)
        stated = entry.text("expert_province", required=False)
        expert_province: str | None = None
        if not expert:
            if stated:
                _fail(entry.at("expert_province"), "is only for an exchanged expert")
            if province != own_province:
                _fail(
                    entry.at("bureau"),
                    f"{divisions.bureau(bureau)} is in {_province_name(bureau)}, not the "
                    f"inspecting bureau's {_province_name(own_province)}; an inspector from "
                    "another province is an exchanged expert (set exchanged_expert = true)",
                )
        else:
            if province == own_province:
                _fail(
                    entry.at("bureau"),
                    f"an exchanged expert comes from another Delta province, but "
                    f"{divisions.bureau(bureau)} is in the inspecting bureau's "
                    f"{_province_name(own_province)}",
                    "SAME_PROVINCE",
                )
            if stated:
                stated_code = entry.code("expert_province")
                if not divisions.bureau(stated_code).is_province:
                    _fail(entry.at("expert_province"), f"{stated_code} is not a provincial code")
                if stated_code != province:
                    _fail(
                        entry.at("expert_province"),
                        f"{stated_code} does not match the expert's bureau "
                        f"{divisions.bureau(bureau)}, which is in {_province_name(bureau)}",
                    )
            expert_province = province
        phone = _phone(entry, "phone", required=False)
        email = entry.text("email", required=False)
        if email and _EMAIL_RE.fullmatch(email) is None:
            _fail(entry.at("email"), f"{email!r} is not an e-mail address")
        inspectors.append(Inspector(name, bureau, expert, expert_province, phone, email))
    if all(i.exchanged_expert for i in inspectors):
        _fail(
            path,
            "at least one inspector must be of the inspecting bureau's province; exchanged "
            "experts join an inspection, they do not conduct it (item 17)",
        )
    return tuple(inspectors)


def _contact_inspector(result: InspectionResult) -> Inspector | None:
    """The inspector the drafted assistance requests name as contact."""
    for inspector in result.inspectors:
        if not inspector.exchanged_expert and (inspector.phone or inspector.email):
            return inspector
    return None


def _parse(data: Mapping[str, Any], today: dt.date | None) -> InspectionResult:
    check = _Check(today)
    fields = _Fields(data, "", _RECORD_KEYS)
    format_ = fields.text("format", required=False)
    if format_ and format_ != FORMAT:
        _fail("format", f"{format_!r} is not supported; this node reads {FORMAT!r}")
    record_id = _uuid(fields.text("record_id"), "record_id")
    supersedes_text = fields.text("supersedes", required=False)
    supersedes = _uuid(supersedes_text, "supersedes") if supersedes_text else None
    if supersedes == record_id:
        _fail("supersedes", "a record cannot supersede itself")
    kind = fields.enum("kind", ChecklistKind)
    bureau = fields.code("inspecting_bureau")
    inspected_on = fields.required_date("inspected_on")
    check.since_2019(inspected_on, "inspected_on")
    check.not_future(inspected_on, "inspected_on")
    holder = _parse_holder(fields.table("holder", _HOLDER_KEYS), inspected_on, check)
    results = _parse_checklist(fields, kind)
    other = _parse_other(
        fields.table("other_findings", _OTHER_KEYS, required=False), bureau, holder
    )
    follow_up = _parse_follow_up(fields, inspected_on, results)
    inspectors = _parse_inspectors(fields, bureau)
    conf = fields.table("confirmation", _CONFIRMATION_KEYS)
    signed_on = conf.required_date("signed_on")
    check.not_future(signed_on, conf.at("signed_on"))
    if signed_on < inspected_on:
        _fail(
            conf.at("signed_on"),
            f"{signed_on.isoformat()} is before the inspection ({inspected_on.isoformat()})",
        )
    confirmation = Confirmation(
        conf.text("signed_by"), signed_on, conf.text("opinion", required=False, multiline=True)
    )
    result = InspectionResult(
        record_id=record_id,
        kind=kind,
        inspecting_bureau=bureau,
        inspected_on=inspected_on,
        holder=holder,
        checklist=results,
        other_findings=other,
        follow_up=follow_up,
        inspectors=inspectors,
        confirmation=confirmation,
        supersedes=supersedes,
    )
    if other.used_elsewhere and _contact_inspector(result) is None:
        _fail(
            "inspectors",
            "give a phone or e-mail for an inspector of the inspecting province: the assistance "
            "requests drafted for other_findings.used_elsewhere name them as contact",
            "MISSING_FIELD",
        )
    return result


def parse_result(data: Mapping[str, Any], *, today: dt.date) -> InspectionResult:
    """Validate an inspection result given as a plain mapping (a TOML or JSON file).

    ``today`` is the inspecting node's Shanghai date: no date of the record may lie after it
    (except a rectification deadline). The keys are those of
    ``docs/examples/inspection-result.toml``; unknown keys are refused. Text is NFC-normalised
    and stripped, codes are normalised (USCC upper case), sets (business categories, clauses) and
    the checklist are put in form order, so that equal records give equal canonical bytes.

    Raises:
        FieldError: the first rule broken; the message starts with the field's path and
            ``reason`` is specific where a caller may act on it (``MISSING_SUB_ITEM``,
            ``WRONG_ANNEX``, ``DUPLICATE_SUB_ITEM``, ``EVIDENCE_REQUIRED``, ``FUTURE_DATE``,
            ``BEFORE_RECORD_PERIOD``, ``SAME_PROVINCE``, ``USCC_CHECK_DIGIT``...), otherwise
            ``INVALID_FIELD``, ``MISSING_FIELD`` or ``UNKNOWN_FIELD``.
    """
    return _parse(data, today)


class _DuplicateKeyError(ValueError):
    pass


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKeyError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _no_floats(text: str) -> Any:
    raise ValueError(f"number {text} is not an integer; the format has no fractions")


def from_canonical_bytes(data: bytes) -> InspectionResult:
    """The record whose canonical bytes are ``data`` (a Merkle leaf from any node's log).

    The record is validated as :func:`parse_result` does, except for the rules that depend on
    the reader's date (a peer's record is judged by the date it was made on). The bytes must be
    exactly what :meth:`InspectionResult.to_canonical_bytes` gives for the record: a leaf has one
    spelling, so that two nodes hashing the "same" record always agree.

    Raises:
        ValidationError: ``NOT_CANONICAL`` for bytes that are not UTF-8 JSON in canonical form
            (duplicate keys, fractions, NaN, extra whitespace, other key order, empty values
            written out); :class:`FieldError` as :func:`parse_result` for content.
    """
    try:
        text = data.decode("utf-8")
        value = json.loads(
            text,
            object_pairs_hook=_no_duplicates,
            parse_float=_no_floats,
            parse_constant=_no_floats,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise ValidationError(
            f"inspection record bytes are not canonical JSON: {e}", reason="NOT_CANONICAL"
        ) from e
    except RecursionError as e:
        # A leaf comes from a peer (signed by its origin, but still hostile input): nesting
        # deeper than the parser's stack is a refusal, never an exception of another kind.
        raise ValidationError(
            "inspection record bytes are nested too deeply to be a record", reason="NOT_CANONICAL"
        ) from e
    if not isinstance(value, dict):
        raise ValidationError(
            f"inspection record bytes hold a JSON {type(value).__name__}, not an object",
            reason="NOT_CANONICAL",
        )
    if value.get("format") != FORMAT:
        raise ValidationError(
            f"inspection record format is {value.get('format')!r}, expected {FORMAT!r}",
            reason="NOT_CANONICAL",
        )
    result = _parse(value, None)
    again = result.to_canonical_bytes()
    if again != data:
        at = next(
            (i for i, (a, b) in enumerate(zip(again, data, strict=False)) if a != b),
            min(len(again), len(data)),
        )
        raise ValidationError(
            f"inspection record bytes are valid but not in canonical form (first difference at "
            f"byte {at}); a leaf must be exactly InspectionResult.to_canonical_bytes()",
            reason="NOT_CANONICAL",
        )
    return result


# --------------------------------------------------------------------------------------------
# Assistance requests drafted from "used in another province" findings (item 16)


def _date_zh(day: dt.date) -> str:
    return f"{day.year}年{day.month}月{day.day}日"


def _draft_questions(finding: UsedElsewhere) -> list[dict[str, str]]:
    clause = CLAUSE_ZH[finding.use_type]
    return [
        {
            "id": "q1",
            "text": "上述免办产品是否在贵辖区实际使用？请核实实际使用地点、使用单位及使用情况。",
        },
        {
            "id": "q2",
            "text": f"实际用途是否与免办条款（{clause}）及后续管理承诺一致？",
        },
        {
            "id": "q3",
            "text": "上述免办证明项下产品的核销情况如何（已使用、退运出关或销毁）？"
            "是否存在应核销未核销的情况？",
        },
    ]


def draft_assistance_requests(result: InspectionResult) -> list[dict[str, Any]]:
    """One draft assistance request (协查函) per "used in another Delta province" finding.

    Item 16: when an inspection finds exempted products actually used in another Delta province,
    the bureau may write to the bureau of the place of use, which generally replies within 15
    days. Each draft is a plain mapping that :func:`federation.requests.parse_request` accepts
    with a fresh ``request_id`` and the inspecting province as ``requesting_node``; the operator
    may edit it (questions, attachments such as the signed record) before sending. The requester
    contact is the first inspector of the inspecting province with a phone or e-mail
    (:func:`parse_result` makes sure there is one).
    """
    if not result.other_findings.used_elsewhere:
        return []
    contact = _contact_inspector(result)
    assert contact is not None  # guaranteed by parse_result
    inspecting = divisions.bureau(result.inspecting_bureau)
    drafts: list[dict[str, Any]] = []
    for finding in result.other_findings.used_elsewhere:
        place = divisions.bureau(finding.bureau)
        background = (
            f"{inspecting.bureau_zh}于{_date_zh(result.inspected_on)}对"
            f"{result.holder.name}（统一社会信用代码{result.holder.uscc}）开展CCC免办后续监管"
            f"现场检查（{result.annex.title_zh}，检查记录编号{result.record_id}），发现下列免办"
            f"产品实际使用地在{place.place_zh}（{finding.place_of_use}），"
            f"核销情况：{_WRITE_OFF_ZH[finding.write_off]}。"
            "根据《长三角CCC免办联动机制工作指引》第16条，请协助调查核实。"
        )
        if finding.note:
            background += "\n" + finding.note
        draft: dict[str, Any] = {
            "kind": RequestKind.ASSISTANCE.value,
            "requesting_bureau": result.inspecting_bureau,
            "target_bureau": finding.bureau,
            "requester_contact": _compact(
                {"name": contact.name, "phone": contact.phone, "email": contact.email}
            ),
            "holder": {"name": result.holder.name, "uscc": result.holder.uscc},
            "certificate_nos": list(finding.certificate_nos),
            "products": [_product_dict(p) for p in finding.products],
            "use_type": finding.use_type.value,
            "place_of_use": finding.place_of_use,
            "questions": _draft_questions(finding),
            "background": background,
        }
        drafts.append(draft)
    return drafts
