"""Expert exchange between provinces: the request, the matching, and the lifecycle.

Why this module exists: guideline item 17 has the Delta's bureaus send supervision experts to
each other's inspections, and item 9 wants inspectors drawn at random. A host bureau asks
another province for experts; the providing province proposes people who fit, are free and have
no conflict; both confirm; nobody is double-booked. Both nodes must agree at every step on where
an exchange stands, so — as for assistance requests (:mod:`federation.requests`) — each node folds
the same ordered events with the same pure :func:`apply`.

Three parts, all pure (no clock, no files, no network; instants come from signed data):

1. **The request** (:class:`ExchangeRequest`, :func:`validate_exchange_request`,
   :func:`parse_exchange_request`): host bureau, provider province, inspection dates (Shanghai
   dates), place, holder (USCC, for conflict checks), categories, number of experts wanted,
   reply-by date, and the host's draw commitment.
2. **Matching** by the provider (:func:`match`): who is eligible, in which fairness tier, and the
   provider's draw value; the result is a :class:`Proposal`.
3. **The lifecycle** (:data:`TRANSITIONS`, :func:`apply`):

   ========================  ========  =================================  ===================
   event                     actor     from                               to
   ========================  ========  =================================  ===================
   ``proposed``              provider  REQUESTED                          PROPOSED
   ``declined``              provider  REQUESTED                          DECLINED
   ``declined``              host      PROPOSED (reveals its value)       DECLINED
   ``confirmed``             host      PROPOSED (reveals its value)       CONFIRMED
   ``attendance_confirmed``  provider  CONFIRMED                          ATTENDANCE_CONFIRMED
   ``cancelled``             host      any open state (from PROPOSED:     CANCELLED
                                       reveals its value)
   ``cancelled``             provider  PROPOSED, CONFIRMED,               CANCELLED
                                       ATTENDANCE_CONFIRMED
   ``reschedule_requested``  host      CONFIRMED, ATTENDANCE_CONFIRMED,   unchanged, pending
                                       none pending
   ``rescheduled``           provider  the same, pending                  CONFIRMED, new dates
   ``reschedule_refused``    provider  the same, pending                  unchanged
   ========================  ========  =================================  ===================

   Anything else raises ``ValidationError(reason="INVALID_TRANSITION")``; an allowed event with
   wrong content raises ``INVALID_EVENT`` (or ``REVEAL_MISMATCH`` for a host value that does not
   open its commitment). A refusal never changes anything: states are immutable values.

The draw and its message order are explained in :mod:`federation.draw`; in short: the request
carries the host's commitment, the proposal the provider's value in clear (chosen only after the
commitment arrived), the host's answer its revealed value, and from then on anyone holding the
:class:`~federation.draw.DrawRecord` can recompute who was drawn.

Why these rules:

* **"Cover" means each expert alone.** An expert is a candidate only if their expertise includes
  *every* requested category. The draw may pick any ``k`` of the candidates, so eligibility must
  hold for each person; a union rule ("together they cover it") would make some draws invalid
  and the draw no longer free. A host that needs several specialities asks once per category.
* **Fairness first, chance second.** Candidates are grouped into tiers by the date they were last
  sent (never sent first, then least recently); the draw takes tiers in order and draws within
  a tier. Only the tiers the draw can reach are proposed (up to the one where ``k`` is reached):
  later candidates could never be drawn, so holding or naming them would serve nothing.
* **Proposed candidates are held.** From ``proposed`` until the host answers, every candidate of
  the proposal is booked tentatively for the dates (:func:`bookings_of`), because any of them
  may be drawn; the node passes these holds to later :func:`match` calls, so two open proposals
  never share an expert on overlapping dates. After confirmation only the drawn experts stay
  booked; a decline or cancellation frees the dates.
* **Rescheduling re-checks availability.** Only the provider knows its experts' calendars, so
  the host asks (``reschedule_requested``) and the provider answers: :func:`reschedule_check`
  builds ``rescheduled`` only if every drawn expert is free and unbooked on the new dates,
  and attendance must then be confirmed again.
* **Every host answer to a proposal reveals the host's value** (confirm, decline, cancel), so a
  host that refuses a draw it dislikes leaves the refused outcome on the record
  (:attr:`ExchangeState.draw`).
"""

from __future__ import annotations

import datetime as dt
import re
import unicodedata
import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, NoReturn, TypeAlias

from federation import divisions
from federation import draw as draws
from federation.ccc_catalogue import category
from federation.draw import DrawRecord
from federation.errors import ValidationError
from federation.experts import Expert, SharedExpert, shared_view
from federation.periods import TZ
from federation.requests import FieldError
from federation.uscc import validate_uscc

__all__ = [
    "ACTORS",
    "MAX_EXPERTS_WANTED",
    "MAX_INSPECTION_DATES",
    "MAX_INSPECTION_SPAN_DAYS",
    "TRANSITIONS",
    "Actor",
    "AttendanceConfirmed",
    "Booking",
    "Cancelled",
    "Confirmed",
    "DeclineReason",
    "Declined",
    "Event",
    "ExchangeRequest",
    "ExchangeState",
    "ExchangeStatus",
    "Exclusion",
    "HistoryEntry",
    "MatchAudit",
    "Proposal",
    "Proposed",
    "RescheduleRefused",
    "RescheduleRequested",
    "Rescheduled",
    "Transition",
    "allowed",
    "apply",
    "bookings_of",
    "exchange_counts",
    "last_sent_dates",
    "match",
    "parse_exchange_request",
    "replay",
    "reschedule_check",
    "start",
    "validate_exchange_request",
]

MAX_INSPECTION_DATES: Final = 14
"""An on-site inspection takes days, not weeks; more dates is a unit mix-up."""
MAX_INSPECTION_SPAN_DAYS: Final = 31
"""First to last inspection date of one request, inclusive."""
MAX_EXPERTS_WANTED: Final = 10
"""A supervision team, not a delegation."""

_MAX_PLACE: Final = 200
_MAX_TEXT: Final = 2000
_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

Actor: TypeAlias = Literal["host", "provider"]
"""Which side sent an event: the host bureau's node or the providing province's node."""
ACTORS: Final[tuple[Actor, ...]] = ("host", "provider")


# --------------------------------------------------------------------------------------------
# Small checks


def _fail(field_name: str, problem: str, reason: str = "INVALID_FIELD") -> NoReturn:
    raise FieldError(field_name, problem, reason=reason)


def _text(value: str, field_name: str, *, max_chars: int, multiline: bool = False) -> str:
    text = value.strip()
    if len(text) > max_chars:
        _fail(field_name, f"has {len(text)} characters; at most {max_chars} are allowed")
    allowed_controls = "\n\t" if multiline else ""
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in allowed_controls:
            _fail(field_name, f"contains control character U+{ord(char):04X} at {index + 1}")
    return text


def _shanghai_date(at: dt.datetime, field_name: str) -> dt.date:
    if at.tzinfo is None or at.utcoffset() is None:
        _fail(field_name, "must be an aware datetime (from signed data), not a naive one")
    return at.astimezone(TZ).date()


def _check_dates(
    dates: Iterable[dt.date], field_name: str, *, after: dt.date
) -> tuple[dt.date, ...]:
    """Sorted unique inspection dates: at least one, all after ``after``, within the limits."""
    unique = sorted(set(dates))
    if not unique:
        _fail(field_name, "at least one inspection date is required", "MISSING_FIELD")
    if len(unique) > MAX_INSPECTION_DATES:
        _fail(field_name, f"{len(unique)} dates; at most {MAX_INSPECTION_DATES} are allowed")
    span = (unique[-1] - unique[0]).days + 1
    if span > MAX_INSPECTION_SPAN_DAYS:
        _fail(
            field_name,
            f"dates span {span} days ({unique[0]} to {unique[-1]}); at most "
            f"{MAX_INSPECTION_SPAN_DAYS} are allowed",
        )
    if unique[0] <= after:
        _fail(field_name, f"{unique[0]} is not after {after}", "DATE_IN_PAST")
    return tuple(unique)


def _check_bureau(code: str, field_name: str) -> str:
    try:
        return divisions.bureau(code).code
    except ValidationError as e:
        raise FieldError(field_name, str(e), reason=e.reason) from e


def _check_category(text: str, field_name: str) -> str:
    try:
        return category(text).code
    except ValidationError as e:
        raise FieldError(field_name, str(e), reason=e.reason) from e


# --------------------------------------------------------------------------------------------
# The request


@dataclass(frozen=True, slots=True)
class ExchangeRequest:
    """A host bureau's request for experts (build with :func:`validate_exchange_request`)."""

    request_id: str
    """Canonical UUID chosen by the host, the same on both nodes."""
    host_bureau: str
    """The bureau that runs the inspection (any Delta bureau)."""
    provider_province: str
    """The provincial node asked for experts; another province than the host's."""
    dates: tuple[dt.date, ...]
    """Inspection dates (Shanghai calendar dates), sorted, unique."""
    place: str
    """Where the inspection takes place (address or site name)."""
    holder_uscc: str
    """The inspected holder, for conflict checks; never put into calendars."""
    categories: frozenset[str]
    """Catalogue category codes of the products to inspect."""
    experts_wanted: int
    reply_by: dt.date
    """The host wants the proposal by this Shanghai date (before the first inspection date)."""
    host_commitment: bytes
    """``draw.commit(h)`` for the host's secret draw value ``h``."""

    @property
    def host_province(self) -> str:
        """The provincial node of the host bureau."""
        return divisions.province_of(self.host_bureau)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (dates ISO, categories sorted, commitment hex)."""
        return {
            "request_id": self.request_id,
            "host_bureau": self.host_bureau,
            "provider_province": self.provider_province,
            "dates": [d.isoformat() for d in self.dates],
            "place": self.place,
            "holder_uscc": self.holder_uscc,
            "categories": sorted(self.categories),
            "experts_wanted": self.experts_wanted,
            "reply_by": self.reply_by.isoformat(),
            "host_commitment": self.host_commitment.hex(),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, today: dt.date) -> ExchangeRequest:
        """Read :meth:`to_dict` output (from a peer or the store), validated as when sent.

        ``today`` is the Shanghai date the request was sent (the envelope's created_at), so a
        stored request reads back the same later. Raises :class:`FieldError`.
        """
        if "request_id" not in data:
            _fail("request_id", "is required", "MISSING_FIELD")
        commitment = data.get("host_commitment")
        if not isinstance(commitment, str):
            _fail("host_commitment", "is required as hex text", "MISSING_FIELD")
        try:
            host_commitment = bytes.fromhex(commitment)
        except ValueError:
            _fail("host_commitment", "is not hex")
        rest = {key: value for key, value in data.items() if key != "host_commitment"}
        return parse_exchange_request(rest, host_commitment=host_commitment, today=today)


def validate_exchange_request(request: ExchangeRequest, *, today: dt.date) -> ExchangeRequest:
    """Check ``request`` and return it normalised; ``today`` is the Shanghai date of sending.

    Rules, each for a reason: the provider is another Delta province (item 17 is about
    *mutual* dispatch; a province's own experts need no federation); inspection dates lie after
    today; the reply-by date lies between today and the first inspection date (experts need the
    answer before they travel); the holder code is valid (conflicts are checked against it);
    categories come from the catalogue (matching compares codes); the commitment is a SHA-256
    digest.

    Raises :class:`~federation.requests.FieldError` naming the field.
    """
    try:
        request_id = str(uuid.UUID(request.request_id))
    except ValueError:
        _fail("request_id", f"{request.request_id!r} is not a UUID")
    host = _check_bureau(request.host_bureau, "host_bureau")
    provider = _check_bureau(request.provider_province, "provider_province")
    if not divisions.bureau(provider).is_province:
        _fail(
            "provider_province",
            f"{provider} is not a provincial node; experts are asked from a province "
            f"(here {divisions.province_of(provider)})",
            "NOT_A_PROVINCE",
        )
    if divisions.province_of(host) == provider:
        _fail(
            "provider_province",
            f"{provider} is the host's own province; ask another Delta province",
            "SAME_PROVINCE",
        )
    dates = _check_dates(request.dates, "dates", after=today)
    place = _text(request.place, "place", max_chars=_MAX_PLACE)
    if not place:
        _fail("place", "is required", "MISSING_FIELD")
    try:
        holder = validate_uscc(request.holder_uscc)
    except ValidationError as e:
        raise FieldError("holder_uscc", str(e), reason=e.reason) from e
    categories = frozenset(_check_category(c, "categories") for c in request.categories)
    if not categories:
        _fail("categories", "at least one product category is required", "MISSING_FIELD")
    if not 1 <= request.experts_wanted <= MAX_EXPERTS_WANTED:
        _fail("experts_wanted", f"must be 1 to {MAX_EXPERTS_WANTED}, got {request.experts_wanted}")
    if request.reply_by < today:
        _fail("reply_by", f"{request.reply_by} is before today ({today})", "DATE_IN_PAST")
    if request.reply_by >= dates[0]:
        _fail(
            "reply_by",
            f"{request.reply_by} is not before the first inspection date {dates[0]}",
        )
    if len(request.host_commitment) != 32:
        _fail("host_commitment", "must be a 32-byte SHA-256 commitment")
    return ExchangeRequest(
        request_id=request_id,
        host_bureau=host,
        provider_province=provider,
        dates=dates,
        place=place,
        holder_uscc=holder,
        categories=categories,
        experts_wanted=request.experts_wanted,
        reply_by=request.reply_by,
        host_commitment=bytes(request.host_commitment),
    )


def _date_field(value: object, field_name: str) -> dt.date:
    if isinstance(value, dt.datetime):
        _fail(field_name, "must be a date, not a date and time")
    if isinstance(value, dt.date):
        return value
    if isinstance(value, str) and _DATE_RE.fullmatch(value.strip()):
        try:
            return dt.date.fromisoformat(value.strip())
        except ValueError as e:
            _fail(field_name, f"{value!r} is not a date: {e}")
    _fail(field_name, f"{value!r} is not a date YYYY-MM-DD")


def _str_field(data: Mapping[str, Any], name: str) -> str:
    value = data.get(name)
    if value is None:
        _fail(name, "is required", "MISSING_FIELD")
    if not isinstance(value, str):
        _fail(name, f"must be a string, got {type(value).__name__}")
    return value


def _list_field(data: Mapping[str, Any], name: str) -> list[Any]:
    value = data.get(name)
    if value is None:
        _fail(name, "is required", "MISSING_FIELD")
    if isinstance(value, str) or not isinstance(value, Sequence):
        _fail(name, "must be a list")
    return list(value)


_REQUEST_KEYS: Final = frozenset(
    {
        "request_id",
        "host_bureau",
        "provider_province",
        "dates",
        "place",
        "holder_uscc",
        "categories",
        "experts_wanted",
        "reply_by",
    }
)


def parse_exchange_request(
    data: Mapping[str, Any], *, host_commitment: bytes, today: dt.date
) -> ExchangeRequest:
    """Build and validate a request from a plain mapping (a TOML/JSON file, CLI flags).

    The commitment is not part of the mapping: the host's node makes it from a fresh value
    (:func:`federation.draw.new_value`) and keeps the value. ``request_id`` may be omitted for
    a new request; a fresh UUID is then chosen. Unknown keys are refused, so a misspelt
    ``reply_by`` is not silently ignored.
    """
    unknown = sorted(set(data) - _REQUEST_KEYS)
    if unknown:
        _fail(
            unknown[0],
            f"unknown field; the fields are {', '.join(sorted(_REQUEST_KEYS))}",
            "UNKNOWN_FIELD",
        )
    wanted = data.get("experts_wanted")
    if not isinstance(wanted, int) or isinstance(wanted, bool):
        _fail("experts_wanted", "must be a whole number")
    dates = [_date_field(v, f"dates[{i}]") for i, v in enumerate(_list_field(data, "dates"))]
    categories = _list_field(data, "categories")
    for index, value in enumerate(categories):
        if not isinstance(value, str):
            _fail(f"categories[{index}]", "must be a string")
    request = ExchangeRequest(
        request_id=str(data.get("request_id") or uuid.uuid4()),
        host_bureau=_str_field(data, "host_bureau"),
        provider_province=_str_field(data, "provider_province"),
        dates=tuple(dates),
        place=_str_field(data, "place"),
        holder_uscc=_str_field(data, "holder_uscc"),
        categories=frozenset(categories),
        experts_wanted=wanted,
        reply_by=_date_field(data.get("reply_by"), "reply_by"),
        host_commitment=host_commitment,
    )
    return validate_exchange_request(request, today=today)


# --------------------------------------------------------------------------------------------
# Matching


class Exclusion(StrEnum):
    """Why an expert is not a candidate (all that apply are recorded)."""

    CATEGORY = "category"
    """Their expertise does not include every requested category."""
    UNAVAILABLE = "unavailable"
    """They are unavailable on at least one inspection date."""
    BOOKED = "booked"
    """They are booked (or held for an open proposal) on an overlapping date."""
    CONFLICT_HOLDER = "conflict_holder"
    """The inspected holder is among their conflicts."""
    CONFLICT_BUREAU = "conflict_bureau"
    """The host bureau (or its province) is among their conflicts."""
    CAP_REACHED = "cap_reached"
    """They have reached their annual cap of exchanges."""


@dataclass(frozen=True, slots=True)
class Booking:
    """An expert committed (or held) for dates by one exchange."""

    expert_id: str
    dates: frozenset[dt.date]
    exchange_id: str
    tentative: bool = False
    """True for a hold of an open proposal, False once the host confirmed."""


@dataclass(frozen=True, slots=True)
class MatchAudit:
    """Why the provider proposed whom it proposed. Stays with the provider: it names conflicts.

    Never serialised by :meth:`Proposal.to_dict`.
    """

    excluded: Mapping[str, frozenset[Exclusion]]
    """Expert id -> every rule that excluded them."""
    reserve: tuple[str, ...]
    """Eligible experts in tiers the draw cannot reach (not proposed, not held)."""


@dataclass(frozen=True, slots=True)
class Proposal:
    """The provider's answer to a request: the candidates in fairness tiers and its draw value.

    The drawn experts are not in it: they depend on the host's value, which the host reveals
    only in its answer (see :mod:`federation.draw`).
    """

    request_id: str
    host_commitment: bytes
    """Echo of the request's commitment: binds the proposal to that request's draw."""
    tiers: tuple[tuple[str, ...], ...]
    """Candidate ids, least recently sent tier first; ids sorted within a tier."""
    k: int
    """How many will be drawn: ``min(experts_wanted, number of candidates)``."""
    provider_value: bytes
    """The provider's draw value, in clear (chosen after the host's commitment arrived)."""
    candidates: tuple[SharedExpert, ...]
    """Shared views of every candidate, in tier order — what the host may know of them."""
    audit: MatchAudit | None = field(default=None, compare=False, repr=False)
    """Provider-only explanation of the match; ``None`` on the host's side."""

    @property
    def candidate_ids(self) -> tuple[str, ...]:
        """Every candidate id, in tier order."""
        return tuple(expert_id for tier in self.tiers for expert_id in tier)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready wire form; the audit is left out on purpose."""
        return {
            "request_id": self.request_id,
            "host_commitment": self.host_commitment.hex(),
            "tiers": [list(tier) for tier in self.tiers],
            "k": self.k,
            "provider_value": self.provider_value.hex(),
            "candidates": [c.to_dict() for c in self.candidates],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Proposal:
        """Read :meth:`to_dict` output; the shape only (``INVALID_FIELD``).

        Whether the proposal fits its request is checked when it is applied
        (``proposed`` in :func:`apply`).
        """
        try:
            tiers = data["tiers"]
            candidates = data["candidates"]
            k = data["k"]
            if not isinstance(k, int) or isinstance(k, bool):
                raise TypeError("k must be an integer")
            for container in (tiers, candidates, *tiers):
                if isinstance(container, str) or not isinstance(container, Sequence):
                    raise TypeError("tiers and candidates must be lists")
            proposal = cls(
                request_id=str(data["request_id"]),
                host_commitment=bytes.fromhex(data["host_commitment"]),
                tiers=tuple(tuple(str(expert_id) for expert_id in tier) for tier in tiers),
                k=k,
                provider_value=bytes.fromhex(data["provider_value"]),
                candidates=tuple(SharedExpert.from_dict(c) for c in candidates),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValidationError(f"not a proposal: {e!r}", reason="INVALID_FIELD") from e
        return proposal


def _overlaps(booking: Booking, dates: Iterable[dt.date]) -> bool:
    return not booking.dates.isdisjoint(dates)


def _exclusions(
    expert: Expert,
    request: ExchangeRequest,
    dates: Sequence[dt.date],
    booked: Collection[Booking],
    year_count: int,
) -> frozenset[Exclusion]:
    reasons: set[Exclusion] = set()
    if not expert.covers(request.categories):
        reasons.add(Exclusion.CATEGORY)
    if expert.unavailable_on(dates):
        reasons.add(Exclusion.UNAVAILABLE)
    if any(_overlaps(b, dates) for b in booked):
        reasons.add(Exclusion.BOOKED)
    if expert.conflicts_with_holder(request.holder_uscc):
        reasons.add(Exclusion.CONFLICT_HOLDER)
    if expert.conflicts_with_bureau(request.host_bureau):
        reasons.add(Exclusion.CONFLICT_BUREAU)
    if year_count >= expert.annual_cap:
        reasons.add(Exclusion.CAP_REACHED)
    return frozenset(reasons)


def match(
    request: ExchangeRequest,
    experts: Iterable[Expert],
    bookings: Iterable[Booking],
    year_counts: Mapping[str, int],
    last_sent: Mapping[str, dt.date],
    *,
    draw_seed: bytes,
    seen_commitments: Collection[bytes] = (),
) -> Proposal:
    """The provider's proposal for ``request`` from its registry and current bookings.

    * ``experts``: the provider's registry (all of one province: the one asked).
    * ``bookings``: every booking and hold of the provider's experts (:func:`bookings_of` over
      its open exchanges); bookings of this request itself are ignored.
    * ``year_counts``: exchanges per expert in the year of the first inspection date
      (:func:`exchange_counts`, which counts open proposals too, so that a cap cannot be
      exceeded by two proposals drawn at once).
    * ``last_sent``: the date each expert was last sent (:func:`last_sent_dates`); absent means
      never, which comes first.
    * ``draw_seed``: the provider's contribution to the draw seed — its fresh 32-byte value
      (:func:`federation.draw.new_value`), revealed in the proposal. The full seed cannot exist
      yet: it also needs the host's value, still hidden behind the commitment.
    * ``seen_commitments``: host commitments of earlier requests. A repeated commitment means a
      repeated (possibly already revealed) host value, which would let the provider predict
      the seed; it is refused with ``COMMITMENT_REUSED``.

    An expert is a candidate if no :class:`Exclusion` applies. If none is, the proposal has no
    tiers and ``k == 0``: the provider should decline (``NO_ELIGIBLE_EXPERTS``) rather than
    propose. If fewer than wanted are, all are proposed and ``k`` is smaller than wanted; the
    host decides whether that will do.
    """
    if len(draw_seed) != draws.VALUE_BYTES:
        raise ValidationError(
            f"draw_seed must be {draws.VALUE_BYTES} random bytes (the provider's draw value)",
            reason="DRAW_VALUE",
        )
    if request.host_commitment in seen_commitments:
        raise ValidationError(
            f"request {request.request_id} reuses a host draw commitment seen before; the host "
            "must commit to a fresh value for every request",
            reason="COMMITMENT_REUSED",
        )
    by_expert: dict[str, list[Booking]] = {}
    for booking in bookings:
        if booking.exchange_id != request.request_id:
            by_expert.setdefault(booking.expert_id, []).append(booking)
    excluded: dict[str, frozenset[Exclusion]] = {}
    eligible: list[Expert] = []
    seen: set[str] = set()
    for expert in experts:
        if expert.expert_id in seen:
            raise ValidationError(
                f"expert {expert.expert_id!r} appears twice in the registry",
                reason="DUPLICATE_EXPERT",
            )
        seen.add(expert.expert_id)
        if expert.province != request.provider_province:
            raise ValidationError(
                f"expert {expert.expert_id!r} belongs to {expert.province}, but the request "
                f"asks {request.provider_province}",
                reason="WRONG_PROVINCE",
            )
        reasons = _exclusions(
            expert,
            request,
            request.dates,
            by_expert.get(expert.expert_id, ()),
            year_counts.get(expert.expert_id, 0),
        )
        if reasons:
            excluded[expert.expert_id] = reasons
        else:
            eligible.append(expert)

    # Fairness tiers: never sent first, then by the date last sent, oldest first.
    def tier_key(expert: Expert) -> tuple[int, dt.date]:
        sent = last_sent.get(expert.expert_id)
        return (0, dt.date.min) if sent is None else (1, sent)

    grouped: dict[tuple[int, dt.date], list[Expert]] = {}
    for expert in eligible:
        grouped.setdefault(tier_key(expert), []).append(expert)
    tiers: list[tuple[str, ...]] = []
    candidates: list[SharedExpert] = []
    reserve: list[str] = []
    wanted = request.experts_wanted
    for key in sorted(grouped):
        tier = sorted(grouped[key], key=lambda e: e.expert_id)
        if len(candidates) >= wanted:
            reserve.extend(e.expert_id for e in tier)
            continue
        tiers.append(tuple(e.expert_id for e in tier))
        candidates.extend(shared_view(e) for e in tier)
    return Proposal(
        request_id=request.request_id,
        host_commitment=request.host_commitment,
        tiers=tuple(tiers),
        k=min(wanted, len(candidates)),
        provider_value=bytes(draw_seed),
        candidates=tuple(candidates),
        audit=MatchAudit(excluded=excluded, reserve=tuple(reserve)),
    )


# --------------------------------------------------------------------------------------------
# Lifecycle vocabulary


class ExchangeStatus(StrEnum):
    """Where an exchange stands; the same on both nodes."""

    REQUESTED = "requested"
    PROPOSED = "proposed"
    CONFIRMED = "confirmed"
    """The host confirmed the draw; the drawn experts are booked."""
    ATTENDANCE_CONFIRMED = "attendance_confirmed"
    """The provider confirmed the drawn experts will attend."""
    DECLINED = "declined"
    CANCELLED = "cancelled"


_S = ExchangeStatus
_OPEN: Final = frozenset({_S.REQUESTED, _S.PROPOSED, _S.CONFIRMED, _S.ATTENDANCE_CONFIRMED})
_BOOKED: Final = frozenset({_S.CONFIRMED, _S.ATTENDANCE_CONFIRMED})


class DeclineReason(StrEnum):
    """Why a side declines."""

    NO_ELIGIBLE_EXPERTS = "no_eligible_experts"
    """Provider: nobody fits, is free and has no conflict."""
    TOO_FEW_EXPERTS = "too_few_experts"
    """Host: fewer candidates than wanted."""
    OUT_OF_SCOPE = "out_of_scope"
    OTHER = "other"


@dataclass(frozen=True, slots=True)
class Proposed:
    """Provider: here are the candidates and my draw value."""

    name: ClassVar[str] = "proposed"
    proposal: Proposal


@dataclass(frozen=True, slots=True)
class Declined:
    """Either side declines; the host, declining a proposal, reveals its value."""

    name: ClassVar[str] = "declined"
    reason: DeclineReason
    text: str = ""
    host_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Confirmed:
    """Host: here is my value; the draw gives ``result``, which I confirm."""

    name: ClassVar[str] = "confirmed"
    host_value: bytes
    result: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AttendanceConfirmed:
    """Provider: the drawn experts will attend on the (current) dates."""

    name: ClassVar[str] = "attendance_confirmed"


@dataclass(frozen=True, slots=True)
class Cancelled:
    """Either side calls the exchange off; the dates are freed."""

    name: ClassVar[str] = "cancelled"
    text: str = ""
    host_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class RescheduleRequested:
    """Host: please move the inspection to ``dates``."""

    name: ClassVar[str] = "reschedule_requested"
    dates: tuple[dt.date, ...]


@dataclass(frozen=True, slots=True)
class Rescheduled:
    """Provider: the drawn experts are free on the new dates (see :func:`reschedule_check`)."""

    name: ClassVar[str] = "rescheduled"
    dates: tuple[dt.date, ...]


@dataclass(frozen=True, slots=True)
class RescheduleRefused:
    """Provider: the drawn experts cannot make the new dates; the old ones stand."""

    name: ClassVar[str] = "reschedule_refused"
    text: str = ""


Event: TypeAlias = (
    Proposed
    | Declined
    | Confirmed
    | AttendanceConfirmed
    | Cancelled
    | RescheduleRequested
    | Rescheduled
    | RescheduleRefused
)


@dataclass(frozen=True, slots=True)
class Transition:
    """From which states one actor may send one event (a row of the module's table)."""

    sources: frozenset[ExchangeStatus]
    target: ExchangeStatus | None
    """The status after the event; None keeps the current one (or, for ``rescheduled``,
    see :func:`apply`)."""
    pending: bool | None = None
    """True: only while a reschedule is pending; False: only while none is; None: any."""


TRANSITIONS: Final[Mapping[tuple[str, Actor], Transition]] = {
    ("proposed", "provider"): Transition(frozenset({_S.REQUESTED}), _S.PROPOSED),
    ("declined", "provider"): Transition(frozenset({_S.REQUESTED}), _S.DECLINED),
    ("declined", "host"): Transition(frozenset({_S.PROPOSED}), _S.DECLINED),
    ("confirmed", "host"): Transition(frozenset({_S.PROPOSED}), _S.CONFIRMED),
    ("attendance_confirmed", "provider"): Transition(
        frozenset({_S.CONFIRMED}), _S.ATTENDANCE_CONFIRMED, pending=False
    ),
    ("cancelled", "host"): Transition(_OPEN, _S.CANCELLED),
    ("cancelled", "provider"): Transition(_OPEN - {_S.REQUESTED}, _S.CANCELLED),
    ("reschedule_requested", "host"): Transition(_BOOKED, None, pending=False),
    ("rescheduled", "provider"): Transition(_BOOKED, _S.CONFIRMED, pending=True),
    ("reschedule_refused", "provider"): Transition(_BOOKED, None, pending=True),
}
"""(event name, actor) -> allowed source states; :func:`apply` enforces exactly this table."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One applied event, for the audit trail both nodes share."""

    event: str
    actor: Actor
    at: dt.datetime
    """When, per signed data (the envelope's created_at), in UTC."""
    status: ExchangeStatus
    """The status after the event."""


@dataclass(frozen=True, slots=True)
class ExchangeState:
    """Where one exchange stands; build with :func:`start`, advance with :func:`apply`."""

    request: ExchangeRequest
    status: ExchangeStatus
    dates: tuple[dt.date, ...]
    """The current inspection dates (the request's, or the last rescheduled ones)."""
    proposal: Proposal | None = None
    draw: DrawRecord | None = None
    """The draw, once the host revealed its value: the confirmed one, or the one it refused."""
    pending_dates: tuple[dt.date, ...] | None = None
    """New dates the host asked for, awaiting the provider's answer."""
    revision: int = 0
    """How many times the dates were moved (the calendar's SEQUENCE)."""
    decline_reason: DeclineReason | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def request_id(self) -> str:
        """The exchange's id (the request's UUID)."""
        return self.request.request_id

    @property
    def assigned(self) -> tuple[str, ...]:
        """The drawn expert ids while they are booked (CONFIRMED, ATTENDANCE_CONFIRMED)."""
        if self.status in _BOOKED and self.draw is not None:
            return self.draw.result
        return ()

    @property
    def updated_at(self) -> dt.datetime | None:
        """The instant of the last applied event (UTC), None before any."""
        return self.history[-1].at if self.history else None


def start(request: ExchangeRequest) -> ExchangeState:
    """The state of a freshly sent request (both nodes start here)."""
    return ExchangeState(request=request, status=_S.REQUESTED, dates=request.dates)


def allowed(state: ExchangeState, event_name: str, actor: Actor) -> bool:
    """Whether ``actor`` may send ``event_name`` now (state and pending reschedule only)."""
    rule = TRANSITIONS.get((event_name, actor))
    if rule is None or state.status not in rule.sources:
        return False
    pending = state.pending_dates is not None
    return rule.pending is None or rule.pending == pending


def _refuse(state: ExchangeState, event_name: str, actor: Actor) -> ValidationError:
    rule = TRANSITIONS.get((event_name, actor))
    if rule is None:
        hint = f"the {actor} never sends '{event_name}'"
    elif state.status not in rule.sources:
        hint = f"only from {', '.join(sorted(s.value for s in rule.sources))}"
    elif rule.pending:
        hint = "only while a reschedule is pending"
    else:
        hint = "not while a reschedule is pending"
    return ValidationError(
        f"exchange {state.request_id}: '{event_name}' by the {actor} is not allowed in state "
        f"{state.status.value} ({hint})",
        reason="INVALID_TRANSITION",
    )


def _invalid(state: ExchangeState, event_name: str, problem: str) -> NoReturn:
    raise ValidationError(
        f"exchange {state.request_id}: '{event_name}': {problem}", reason="INVALID_EVENT"
    )


def _check_proposal(state: ExchangeState, proposal: Proposal) -> None:
    """Everything the host can check of a proposal without the provider's private data."""
    request = state.request
    name = Proposed.name
    if proposal.request_id != request.request_id:
        _invalid(state, name, f"proposal is for request {proposal.request_id}")
    if proposal.host_commitment != request.host_commitment:
        _invalid(state, name, "proposal does not echo the request's host commitment")
    if len(proposal.provider_value) != draws.VALUE_BYTES:
        _invalid(state, name, f"provider value must be {draws.VALUE_BYTES} bytes")
    try:
        draws.check_tiers(proposal.tiers, proposal.k)
    except ValidationError as e:
        _invalid(state, name, f"malformed tiers: {e}")
    ids = proposal.candidate_ids
    if proposal.k < 1:
        _invalid(state, name, "no candidates; the provider declines instead of proposing none")
    if proposal.k != min(request.experts_wanted, len(ids)):
        _invalid(
            state,
            name,
            f"k is {proposal.k}, but {request.experts_wanted} were wanted from {len(ids)} "
            "candidates; the provider draws as many as it can",
        )
    if sum(len(tier) for tier in proposal.tiers[:-1]) >= proposal.k:
        _invalid(state, name, "proposes a tier the draw cannot reach")
    if tuple(c.expert_id for c in proposal.candidates) != ids:
        _invalid(state, name, "candidate views do not match the tiers")
    for candidate in proposal.candidates:
        if candidate.province != request.provider_province:
            _invalid(state, name, f"candidate {candidate.expert_id} is not from the province asked")
        if not candidate.categories.issuperset(request.categories):
            _invalid(
                state,
                name,
                f"candidate {candidate.expert_id} does not cover "
                f"{', '.join(sorted(request.categories - candidate.categories))}",
            )


def _record(state: ExchangeState, host_value: bytes | None, event_name: str) -> DrawRecord:
    """The draw record once the host reveals; refuses a missing or wrong value."""
    proposal = state.proposal
    assert proposal is not None
    if host_value is None:
        _invalid(state, event_name, "the host must reveal its draw value when answering a proposal")
    draws.check_reveal(state.request.host_commitment, host_value)
    result = draws.draw(draws.seed(host_value, proposal.provider_value), proposal.tiers, proposal.k)
    return DrawRecord(
        request_id=state.request_id,
        host_commitment=state.request.host_commitment,
        host_value=bytes(host_value),
        provider_value=proposal.provider_value,
        tiers=proposal.tiers,
        k=proposal.k,
        result=tuple(result),
    )


def apply(state: ExchangeState, event: Event, *, actor: Actor, at: dt.datetime) -> ExchangeState:
    """The state after ``actor`` sent ``event`` at ``at``; ``state`` itself never changes.

    ``at`` must come from signed data (the envelope's created_at) so that both nodes record the
    same instant. Checks, in order: the actor and ``at``; the transition is in
    :data:`TRANSITIONS`; the event's content.

    Raises:
        ValidationError: ``INVALID_TRANSITION`` (wrong state or actor), ``INVALID_EVENT``
            (content), ``DRAW_MISMATCH`` (the host confirms another result than the draw
            gives), ``INVALID_ACTOR``.
        VerificationError: ``REVEAL_MISMATCH`` (a host value that does not open the commitment).
    """
    if actor not in ACTORS:
        raise ValidationError(
            f"actor must be 'host' or 'provider', got {actor!r}", reason="INVALID_ACTOR"
        )
    day = _shanghai_date(at, f"{event.name}.at")
    if not allowed(state, event.name, actor):
        raise _refuse(state, event.name, actor)
    rule = TRANSITIONS[(event.name, actor)]
    status = rule.target or state.status
    new: ExchangeState
    match event:
        case Proposed(proposal=proposal):
            _check_proposal(state, proposal)
            new = replace(state, status=status, proposal=replace(proposal, audit=None))
        case Declined():
            text = _text(event.text, "declined.text", max_chars=_MAX_TEXT, multiline=True)
            if event.reason == DeclineReason.OTHER and not text:
                _invalid(state, event.name, "a decline for another reason must say why")
            if actor == "host":
                new = replace(
                    state,
                    status=status,
                    decline_reason=event.reason,
                    draw=_record(state, event.host_value, event.name),
                )
            else:
                if event.host_value is not None:
                    _invalid(state, event.name, "only the host has a draw value to reveal")
                new = replace(state, status=status, decline_reason=event.reason)
        case Confirmed():
            record = _record(state, event.host_value, event.name)
            if tuple(event.result) != record.result:
                raise ValidationError(
                    f"exchange {state.request_id}: the host confirms {list(event.result)}, but "
                    f"the draw gives {list(record.result)}",
                    reason="DRAW_MISMATCH",
                )
            new = replace(state, status=status, draw=record)
        case AttendanceConfirmed():
            new = replace(state, status=status)
        case Cancelled():
            _text(event.text, "cancelled.text", max_chars=_MAX_TEXT, multiline=True)
            if actor == "host" and state.status == _S.PROPOSED:
                new = replace(
                    state,
                    status=status,
                    pending_dates=None,
                    draw=_record(state, event.host_value, event.name),
                )
            else:
                if event.host_value is not None and actor == "provider":
                    _invalid(state, event.name, "only the host has a draw value to reveal")
                new = replace(state, status=status, pending_dates=None)
        case RescheduleRequested():
            try:
                dates = _check_dates(event.dates, "reschedule_requested.dates", after=day)
            except FieldError as e:
                _invalid(state, event.name, str(e))
            if dates == state.dates:
                _invalid(state, event.name, "the new dates are the current ones")
            new = replace(state, pending_dates=dates)
        case Rescheduled():
            if tuple(sorted(set(event.dates))) != state.pending_dates:
                _invalid(state, event.name, "the dates are not the ones the host asked for")
            new = replace(
                state,
                status=status,
                dates=state.pending_dates,
                pending_dates=None,
                revision=state.revision + 1,
            )
        case RescheduleRefused():
            _text(event.text, "reschedule_refused.text", max_chars=_MAX_TEXT, multiline=True)
            new = replace(state, pending_dates=None)
    entry = HistoryEntry(event.name, actor, at.astimezone(dt.UTC), new.status)
    return replace(new, history=(*state.history, entry))


def replay(
    request: ExchangeRequest, events: Iterable[tuple[Event, Actor, dt.datetime]]
) -> ExchangeState:
    """Fold ``(event, actor, at)`` triples over :func:`start`; refuses as :func:`apply` does."""
    state = start(request)
    for event, actor, at in events:
        state = apply(state, event, actor=actor, at=at)
    return state


# --------------------------------------------------------------------------------------------
# What the node derives from its states


def bookings_of(state: ExchangeState) -> tuple[Booking, ...]:
    """The bookings an exchange holds now (pass them, of all exchanges, to :func:`match`).

    PROPOSED holds every candidate tentatively (any may be drawn); CONFIRMED and
    ATTENDANCE_CONFIRMED book the drawn experts; every other state holds nothing, which is how
    a decline or cancellation frees the dates.
    """
    dates = frozenset(state.dates)
    if state.status == _S.PROPOSED and state.proposal is not None:
        return tuple(
            Booking(expert_id, dates, state.request_id, tentative=True)
            for expert_id in state.proposal.candidate_ids
        )
    return tuple(Booking(expert_id, dates, state.request_id) for expert_id in state.assigned)


def exchange_counts(states: Iterable[ExchangeState], year: int) -> dict[str, int]:
    """Exchanges per expert whose first current date falls in ``year`` (for ``year_counts``).

    Counts drawn experts of booked exchanges and every candidate of open proposals: a
    candidate may yet be drawn, and counting them keeps two open proposals from pushing an
    expert past the cap together. An exchange counts in the year of its first date.
    """
    counts: dict[str, int] = {}
    for state in states:
        if state.dates[0].year != year:
            continue
        for booking in bookings_of(state):
            counts[booking.expert_id] = counts.get(booking.expert_id, 0) + 1
    return counts


def last_sent_dates(states: Iterable[ExchangeState]) -> dict[str, dt.date]:
    """The last inspection date each expert was (or is to be) sent on, for ``last_sent``.

    Only booked exchanges count (open proposals are not yet a sending; cancelled ones never
    were), including future ones: an expert booked for next week was sent recently enough.
    """
    result: dict[str, dt.date] = {}
    for state in states:
        for expert_id in state.assigned:
            last = state.dates[-1]
            if expert_id not in result or result[expert_id] < last:
                result[expert_id] = last
    return result


def reschedule_check(
    state: ExchangeState, experts: Iterable[Expert], bookings: Iterable[Booking]
) -> Rescheduled:
    """The provider's re-check of a pending reschedule; returns the ``rescheduled`` event.

    Every drawn expert must be available on every new date and not booked there by another
    exchange (this exchange's own bookings are ignored: they move with it). The cap is not
    checked again: moving an exchange within its year does not add one. Raises
    :class:`~federation.errors.ValidationError` ``EXPERT_UNAVAILABLE`` naming who and which
    dates (the provider then sends ``reschedule_refused``), or ``INVALID_TRANSITION`` if no
    reschedule is pending.
    """
    if not allowed(state, Rescheduled.name, "provider") or state.pending_dates is None:
        raise _refuse(state, Rescheduled.name, "provider")
    new_dates = state.pending_dates
    registry = {expert.expert_id: expert for expert in experts}
    others = [b for b in bookings if b.exchange_id != state.request_id]
    problems: list[str] = []
    for expert_id in state.assigned:
        expert = registry.get(expert_id)
        if expert is None:
            problems.append(f"{expert_id} is no longer in the registry")
            continue
        away = expert.unavailable_on(new_dates)
        if away:
            problems.append(f"{expert_id} is unavailable on {', '.join(map(str, away))}")
        clash = sorted(
            {d for b in others if b.expert_id == expert_id for d in b.dates & set(new_dates)}
        )
        if clash:
            problems.append(f"{expert_id} is booked on {', '.join(map(str, clash))}")
    if problems:
        raise ValidationError(
            f"exchange {state.request_id} cannot move to {', '.join(map(str, new_dates))}: "
            + "; ".join(problems),
            reason="EXPERT_UNAVAILABLE",
        )
    return Rescheduled(dates=new_dates)
