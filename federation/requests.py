"""Assistance, verification and lead requests: validation, the lifecycle, and bulletins.

Why this module exists: a request between two provinces carries a legal obligation - the bureau
asked "generally replies within 15 days" (guideline item 16) - so both nodes must agree at every
moment on where a request stands, who owes what, and by when. They agree *by construction*: each
node keeps the same ordered list of lifecycle events and folds it with the same pure
:func:`apply`, so equal lists give equal :class:`RequestState` values (compare their
:meth:`RequestState.to_dict`). Everything here is pure - no clock, no files, no network, no
grpc; the node's shell passes instants from signed data and a :class:`HolidayCalendar`.

Three parts:

1. **Validation of a new request** (:func:`parse_request` from a plain mapping as read from a
   TOML/JSON file or CLI flags; :func:`request_from_message` for a request arriving from a peer;
   both end in :func:`validate_request`). Every refusal is a :class:`FieldError` naming the
   field, e.g. ``holder.uscc: ...check character (position 18) is 'A', expected 'X'...``.
2. **The lifecycle** as a state machine (:data:`TRANSITIONS`, :func:`apply`). Who may send what,
   and from which states:

   =======================  =========  ================================  ========================
   event                    actor      from                              to
   =======================  =========  ================================  ========================
   ``sent``                 requester  DRAFT                             SENT
   ``delivered``            responder  SENT                              DELIVERED; the 15-day
                                                                         period starts at
                                                                         ``received_at``
   ``accepted``             responder  DELIVERED                         ACCEPTED
   ``declined``             responder  DELIVERED, ACCEPTED               DECLINED
   ``withdrawn``            requester  DELIVERED, ACCEPTED               WITHDRAWN
   ``progress_reported``    responder  ACCEPTED                          ACCEPTED
   ``extension_requested``  responder  ACCEPTED, no extension pending    ACCEPTED, pending
   ``extension_decided``    requester  ACCEPTED, extension pending       ACCEPTED; due date
                                                                         moved if granted
   ``replied``              responder  ACCEPTED                          REPLIED
   ``closed``               requester  REPLIED                           CLOSED
   =======================  =========  ================================  ========================

   Everything else is refused with ``ValidationError(reason="INVALID_TRANSITION")`` naming the
   current state, the event and who sent it; an allowed event whose content is wrong (an
   unknown question id, an extension that shortens the period) is refused with
   ``INVALID_EVENT``. A refusal never changes the state: states are immutable values.
3. **Bulletins** (item 18): :class:`Bulletin` and the read acknowledgements of each member,
   :class:`BulletinReads`. No reply is owed.

Why these rules:

* ``delivered`` is the receipt, the responder's signed statement that it committed the request;
  its ``received_at`` starts the reply period (Civil Code arts. 201-203, :func:`day_period`),
  shortened to the requester's ``requested_reply_by`` if that is earlier (:func:`earlier_of`).
  The requester applies it when the receipt arrives; the responder when it commits the request,
  with the instant it puts in the receipt. Both use the same ``received_at``.
* The requester may not withdraw while the request is only SENT: until the receipt arrives it
  cannot know whether the responder already holds the request, and withdrawing before the
  receipt would order "withdrawn" before "delivered" on one side and after it on the other. The
  outbox either delivers (then withdraw) or reports a permanent failure to the operator.
* Declining is possible until the reply, because the assigned city bureau may only then find the
  products used elsewhere. Only the requester closes, after reading the reply.
* An extension is counted from the current due date: ``additional_days`` with the Civil Code
  roll-over, or a fixed ``new_due_date`` taken as agreed. The requester may grant exactly what
  was asked or name another later date. At most one extension request is pending at a time; a
  reply or an end of the request clears it.

What this module does not do: ordering. Equal views need the same event order on both nodes,
and the two parties' events can cross on the wire (a "withdrawn" and a "replied" sent at the same
moment). :mod:`federation.conversation` merges both parties' streams into one causal order that
is identical on both nodes; folding :func:`apply` over that order gives both nodes the same
state, because every refusal - ``INVALID_TRANSITION`` (wrong state or sender) as well as
``INVALID_EVENT`` (content) - is a function of that state and the event only, so an event refused
at its place in the order is refused, and void, on both nodes alike. ``sent`` and
``delivered`` come first: the request and its receipt, before any other event of either side.
Both nodes must also hold the same holiday schedules for equal due dates (a provisional due date
is recomputed when a year's schedule is loaded).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import unicodedata
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, ClassVar, Final, Literal, NoReturn, TypeAlias, TypeVar, assert_never

from google.protobuf.message import Message

from cccfed.v1 import assistance_pb2 as pb
from federation import divisions
from federation.errors import ValidationError
from federation.holidays import HolidayCalendar
from federation.periods import TZ, Due, day_period, earlier_of
from federation.uscc import validate_uscc

__all__ = [
    "ACTORS",
    "DEFAULT_MAX_ATTACHMENT_BYTES",
    "MAX_EXTENSION_DAYS",
    "REPLY_PERIOD_DAYS",
    "TRANSITIONS",
    "Accepted",
    "Actor",
    "Attachment",
    "Bulletin",
    "BulletinReads",
    "Closed",
    "Conclusion",
    "Contact",
    "DeclineReason",
    "Declined",
    "Delivered",
    "Event",
    "ExtensionDecided",
    "ExtensionRequested",
    "FieldError",
    "Finding",
    "FollowUp",
    "FollowUpAction",
    "HistoryEntry",
    "Holder",
    "Product",
    "ProgressReported",
    "Question",
    "Replied",
    "Request",
    "RequestKind",
    "RequestState",
    "RequestStatus",
    "Sent",
    "Transition",
    "UseType",
    "Withdrawn",
    "allowed",
    "allowed_events",
    "apply",
    "bulletin_from_message",
    "event_from_message",
    "event_to_message",
    "linked_request",
    "parse_bulletin",
    "parse_request",
    "replay",
    "request_from_message",
    "start",
    "validate_request",
]

REPLY_PERIOD_DAYS: Final = 15
"""Guideline item 16: "当地市场监管部门一般应在15日内反馈调查结果"."""

DEFAULT_MAX_ATTACHMENT_BYTES: Final = 8 * 1024 * 1024
"""Per attachment. Content travels inside the signed message, so the whole envelope must also
fit the receiver's envelope limit (``envelope.Policy.max_envelope_bytes``)."""

MAX_EXTENSION_DAYS: Final = 365
"""An extension of more than a year is a unit mix-up, not a request for more time."""

_MAX_LINE: Final = 500
_MAX_TEXT: Final = 20_000
_MAX_ITEMS: Final = 1_000
_MAX_QUESTIONS: Final = 100
_MAX_CERTIFICATE_NO: Final = 64
_MAX_QUANTITY: Final = 10**12

_DATE_RE: Final = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")
_HS_RE: Final = re.compile(r"[0-9]{6,10}")
_QUESTION_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_PHONE_RE: Final = re.compile(r"\+?[0-9][0-9 ()-]{4,30}")
_EMAIL_RE: Final = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MEDIA_TYPE_RE: Final = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}"
)


# --------------------------------------------------------------------------------------------
# Vocabulary


class RequestKind(StrEnum):
    """What a request asks for (guideline section 三)."""

    ASSISTANCE = "assistance"
    """协查 (item 16): investigate the use of products in the recipient's province."""
    VERIFICATION = "verification"
    """核实 (item 15): check an application with the place of use."""
    LEAD = "lead"
    """问题线索 (item 19): a problem lead handed to the competent bureau."""


class UseType(StrEnum):
    """The exemption clause under which the products are used (DOMAIN.md §1)."""

    RESEARCH_TESTING = "research_testing"
    REPAIR = "repair"
    PRODUCTION_LINE = "production_line"
    COMMERCIAL_DISPLAY = "commercial_display"
    WHOLE_MACHINE_EXPORT = "whole_machine_export"


class DeclineReason(StrEnum):
    """Why a responder declines a request."""

    WRONG_JURISDICTION = "wrong_jurisdiction"
    OUT_OF_SCOPE = "out_of_scope"
    INSUFFICIENT_INFORMATION = "insufficient_information"
    OTHER = "other"


class Conclusion(StrEnum):
    """The responder's conclusion on one question."""

    CONFIRMED = "confirmed"
    NOT_CONFIRMED = "not_confirmed"
    PARTIALLY_CONFIRMED = "partially_confirmed"
    UNDETERMINED = "undetermined"


class FollowUpAction(StrEnum):
    """Follow-up measures (guideline item 14); NONE says explicitly that none was needed."""

    NONE = "none"
    RECTIFICATION = "rectification"
    INVESTIGATION = "investigation"


class RequestStatus(StrEnum):
    """Where a request stands; the same on both nodes."""

    DRAFT = "draft"
    SENT = "sent"
    DELIVERED = "delivered"
    ACCEPTED = "accepted"
    REPLIED = "replied"
    CLOSED = "closed"
    DECLINED = "declined"
    WITHDRAWN = "withdrawn"


_FINAL: Final = frozenset({RequestStatus.CLOSED, RequestStatus.DECLINED, RequestStatus.WITHDRAWN})

Actor: TypeAlias = Literal["requester", "responder"]
"""Which side sent an event: the requesting node or the node asked."""

ACTORS: Final[tuple[Actor, ...]] = ("requester", "responder")

# Domain enum <-> wire enum, by name; building the tables checks that the two agree.
_KIND_PB = {m: pb.RequestKind.Value(f"REQUEST_KIND_{m.name}") for m in RequestKind}
_USE_PB = {m: pb.UseType.Value(f"USE_TYPE_{m.name}") for m in UseType}
_DECLINE_PB = {m: pb.DeclineReason.Value(f"DECLINE_REASON_{m.name}") for m in DeclineReason}
_CONCLUSION_PB = {m: pb.Conclusion.Value(f"CONCLUSION_{m.name}") for m in Conclusion}
_FOLLOW_UP_PB = {m: pb.FollowUpAction.Value(f"FOLLOW_UP_ACTION_{m.name}") for m in FollowUpAction}

_E = TypeVar("_E", bound=StrEnum)


class FieldError(ValidationError):
    """A value that breaks a rule; the message starts with the field's path (``products[1].name``).

    ``reason`` is specific where a caller may act on it (``USCC_CHECK_DIGIT``, ``SAME_PROVINCE``,
    ``ATTACHMENT_TOO_LARGE``...) and ``INVALID_FIELD``, ``MISSING_FIELD`` or ``UNKNOWN_FIELD``
    otherwise.
    """

    reason = "INVALID_FIELD"

    def __init__(self, field: str, problem: str, *, reason: str | None = None) -> None:
        super().__init__(f"{field}: {problem}", reason=reason)
        self.field = field
        """Path of the offending field, e.g. ``holder.uscc`` or ``attachments[0].sha256``."""
        self.problem = problem
        """The message without the path."""


def _fail(field: str, problem: str, reason: str = "INVALID_FIELD") -> NoReturn:
    raise FieldError(field, problem, reason=reason)


@contextmanager
def _as_invalid_event() -> Iterator[None]:
    """Report a field check made on an event's content as ``INVALID_EVENT``: one reason for
    every content refusal of a lifecycle event, distinct from ``INVALID_TRANSITION``."""
    try:
        yield
    except FieldError as e:
        if e.reason == "INVALID_EVENT":
            raise
        raise FieldError(e.field, e.problem, reason="INVALID_EVENT") from e


# --------------------------------------------------------------------------------------------
# Values carried by requests and events


@dataclass(frozen=True, slots=True)
class Contact:
    """A person to contact at a bureau: a name and at least a phone number or an e-mail."""

    name: str
    phone: str = ""
    email: str = ""

    def to_message(self) -> pb.Contact:
        """The wire form."""
        return pb.Contact(name=self.name, phone=self.phone, email=self.email)


@dataclass(frozen=True, slots=True)
class Holder:
    """The certificate holder concerned; ``uscc`` is normalised by :func:`validate_request`."""

    name: str
    uscc: str

    def to_message(self) -> pb.Holder:
        """The wire form."""
        return pb.Holder(name=self.name, uscc=self.uscc)


@dataclass(frozen=True, slots=True)
class Product:
    """One product line: name and model as on the certificate, a positive quantity."""

    name: str
    model: str
    quantity: int
    hs_code: str | None = None
    """6 to 10 digits, or None when not known."""

    def to_message(self) -> pb.Product:
        """The wire form."""
        return pb.Product(
            name=self.name, model=self.model, quantity=self.quantity, hs_code=self.hs_code or ""
        )


@dataclass(frozen=True, slots=True)
class Attachment:
    """A file carried inside the signed message, with its SHA-256 and size for the receiver.

    Build one with :meth:`of`; values read from a file or a peer are checked by the parse
    functions (digest, size, limit), so :func:`apply` can take attachments as given.
    """

    name: str
    media_type: str
    sha256: bytes
    size: int
    content: bytes = field(repr=False)

    @classmethod
    def of(cls, name: str, media_type: str, content: bytes) -> Attachment:
        """An attachment whose digest and size are computed from ``content``."""
        return cls(name, media_type, hashlib.sha256(content).digest(), len(content), content)

    def to_message(self) -> pb.Attachment:
        """The wire form."""
        return pb.Attachment(
            name=self.name,
            media_type=self.media_type,
            sha256=self.sha256,
            size=self.size,
            content=self.content,
        )


@dataclass(frozen=True, slots=True)
class Question:
    """One question to investigate; the reply answers it by ``id``."""

    id: str
    text: str

    def to_message(self) -> pb.Question:
        """The wire form."""
        return pb.Question(id=self.id, text=self.text)


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request (build it with :func:`parse_request` or :func:`request_from_message`)."""

    request_id: str
    """UUID chosen by the requester, the same on both nodes."""
    kind: RequestKind
    requesting_bureau: str
    requester_contact: Contact
    target_bureau: str
    """The bureau asked; the message goes to its province's node (:attr:`target_node`)."""
    holder: Holder
    certificate_nos: tuple[str, ...]
    products: tuple[Product, ...]
    use_type: UseType
    place_of_use: str
    questions: tuple[Question, ...]
    attachments: tuple[Attachment, ...] = ()
    requested_reply_by: dt.date | None = None
    """An earlier reply-by date the requester asks for (a Shanghai date)."""
    linked_request_id: str | None = None
    """The request this one follows from (e.g. declined for wrong jurisdiction)."""
    background: str = ""

    @property
    def requesting_node(self) -> str:
        """Province code of the node that sends the request."""
        return divisions.province_of(self.requesting_bureau)

    @property
    def target_node(self) -> str:
        """Province code of the node the request is routed to."""
        return divisions.province_of(self.target_bureau)

    def to_message(self) -> pb.Request:
        """The wire form (what the ``sent`` envelope carries)."""
        return pb.Request(
            request_id=self.request_id,
            kind=_KIND_PB[self.kind],
            requesting_bureau=self.requesting_bureau,
            requester_contact=self.requester_contact.to_message(),
            target_bureau=self.target_bureau,
            holder=self.holder.to_message(),
            certificate_nos=self.certificate_nos,
            products=[p.to_message() for p in self.products],
            use_type=_USE_PB[self.use_type],
            place_of_use=self.place_of_use,
            questions=[q.to_message() for q in self.questions],
            attachments=[a.to_message() for a in self.attachments],
            requested_reply_by=_date_text(self.requested_reply_by),
            linked_request_id=self.linked_request_id or "",
            background=self.background,
        )


@dataclass(frozen=True, slots=True)
class Finding:
    """The answer to one question."""

    question_id: str
    finding: str
    conclusion: Conclusion


@dataclass(frozen=True, slots=True)
class FollowUp:
    """One follow-up measure taken, with details (case number, rectification deadline)."""

    action: FollowUpAction
    note: str = ""


# --------------------------------------------------------------------------------------------
# Field checks shared by every input path (mapping, wire message, locally built event)


def _check_text(
    value: str,
    field: str,
    *,
    required: bool = True,
    multiline: bool = False,
    max_chars: int | None = None,
) -> str:
    """Refuse empty required text, control characters and overlong text; return it stripped."""
    text = value.strip()
    if not text:
        if required:
            _fail(field, "is required", "MISSING_FIELD")
        return ""
    limit = max_chars if max_chars is not None else (_MAX_TEXT if multiline else _MAX_LINE)
    if len(text) > limit:
        _fail(field, f"has {len(text)} characters; at most {limit} are allowed")
    allowed_controls = "\n\t" if multiline else ""
    for index, char in enumerate(text):
        if unicodedata.category(char) == "Cc" and char not in allowed_controls:
            what = "a line break" if char in "\r\n" else f"control character U+{ord(char):04X}"
            _fail(field, f"contains {what} at position {index + 1}")
    return text


def _check_uuid(value: str, field: str) -> str:
    """A canonical UUID: lowercase hex with dashes, as the envelope's message ids."""
    if not value:
        _fail(field, "is required", "MISSING_FIELD")
    try:
        canonical = str(uuid.UUID(value))
    except ValueError:
        _fail(field, f"{value!r} is not a UUID")
    if canonical != value:
        _fail(field, f"{value!r} is not in canonical form; write {canonical!r}")
    return value


def _check_bureau(value: str, field: str) -> str:
    """A Delta bureau the federation can address; the divisions module's reason is kept."""
    if not value.strip():
        _fail(field, "is required", "MISSING_FIELD")
    try:
        return divisions.bureau(value).code
    except ValidationError as e:
        raise FieldError(field, str(e), reason=e.reason) from e


def _province_label(code: str) -> str:
    node = divisions.PROVINCES[divisions.province_of(code)]
    return f"{node.code} {node.name_en}"


def _check_contact(contact: Contact, field: str) -> Contact:
    name = _check_text(contact.name, f"{field}.name")
    phone = _check_text(contact.phone, f"{field}.phone", required=False)
    email = _check_text(contact.email, f"{field}.email", required=False)
    if not phone and not email:
        _fail(field, "give a phone number or an e-mail address", "MISSING_FIELD")
    if phone and _PHONE_RE.fullmatch(phone) is None:
        _fail(f"{field}.phone", f"{phone!r} is not a phone number (digits, spaces, +, -, ())")
    if email and _EMAIL_RE.fullmatch(email) is None:
        _fail(f"{field}.email", f"{email!r} is not an e-mail address")
    return Contact(name, phone, email)


def _check_attachment(att: Attachment, field: str, max_bytes: int) -> None:
    """Name, media type, size limit, declared size and digest - the limit before hashing."""
    name = _check_text(att.name, f"{field}.name", max_chars=255)
    if name != att.name:
        _fail(f"{field}.name", "must not start or end with whitespace")
    if "/" in name or "\\" in name or name in {".", ".."}:
        _fail(f"{field}.name", f"{name!r} must be a plain file name without directories")
    if _MEDIA_TYPE_RE.fullmatch(att.media_type) is None:
        _fail(f"{field}.media_type", f"{att.media_type!r} is not a media type like application/pdf")
    actual = len(att.content)
    if actual > max_bytes:
        _fail(
            f"{field}.content",
            f"{actual} bytes exceeds the limit of {max_bytes} bytes per attachment",
            "ATTACHMENT_TOO_LARGE",
        )
    if att.size != actual:
        _fail(
            f"{field}.size",
            f"declares {att.size} bytes but the content has {actual}",
            "ATTACHMENT_SIZE_MISMATCH",
        )
    if len(att.sha256) != 32:
        _fail(f"{field}.sha256", f"must be 32 bytes (SHA-256), got {len(att.sha256)}")
    digest = hashlib.sha256(att.content).digest()
    if digest != att.sha256:
        _fail(
            f"{field}.sha256",
            f"{att.sha256.hex()} does not match the content, which hashes to {digest.hex()}",
            "ATTACHMENT_DIGEST_MISMATCH",
        )


def _check_attachments(atts: Sequence[Attachment], field: str, max_bytes: int) -> None:
    if len(atts) > _MAX_ITEMS:
        _fail(field, f"has {len(atts)} entries; at most {_MAX_ITEMS} are allowed")
    seen: dict[str, int] = {}
    for index, att in enumerate(atts):
        _check_attachment(att, f"{field}[{index}]", max_bytes)
        if att.name in seen:
            _fail(f"{field}[{index}].name", f"{att.name!r} repeats {field}[{seen[att.name]}]")
        seen[att.name] = index


def validate_request(
    request: Request,
    *,
    today: dt.date | None = None,
    requesting_node: str | None = None,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Request:
    """Check every rule of a request and return it normalised (USCC upper case, text stripped).

    ``today`` (the requester's Shanghai date) enables the rule that ``requested_reply_by`` lies
    in the future; it is left out for a request arriving from a peer, whose date was checked
    when it was made and which :func:`apply` handles if it has passed since. ``requesting_node``
    is the node that sends the request: the requesting bureau must be under it.

    Raises:
        FieldError: the first rule broken, naming the field.
    """
    _check_uuid(request.request_id, "request_id")
    requesting = _check_bureau(request.requesting_bureau, "requesting_bureau")
    if requesting_node is not None and divisions.province_of(requesting) != requesting_node:
        _fail(
            "requesting_bureau",
            f"{requesting} is under {_province_label(requesting)}, not this node {requesting_node}",
            "WRONG_NODE",
        )
    contact = _check_contact(request.requester_contact, "requester_contact")
    target = _check_bureau(request.target_bureau, "target_bureau")
    if divisions.province_of(target) == divisions.province_of(requesting):
        _fail(
            "target_bureau",
            f"{target} is under {_province_label(target)}, the requester's own province; a "
            "request goes to a bureau of another Delta province (inside one province the "
            "bureau acts directly)",
            "SAME_PROVINCE",
        )
    holder_name = _check_text(request.holder.name, "holder.name")
    if not request.holder.uscc.strip():
        _fail("holder.uscc", "is required", "MISSING_FIELD")
    try:
        uscc = validate_uscc(request.holder.uscc)
    except ValidationError as e:
        raise FieldError("holder.uscc", str(e), reason=e.reason) from e

    certificates = _check_certificates(request.certificate_nos, request.kind)
    products = _check_products(request.products)
    place = _check_text(request.place_of_use, "place_of_use")
    questions = _check_questions(request.questions)
    _check_attachments(request.attachments, "attachments", max_attachment_bytes)
    if (
        today is not None
        and request.requested_reply_by is not None
        and request.requested_reply_by <= today
    ):
        _fail(
            "requested_reply_by",
            f"{request.requested_reply_by.isoformat()} is not after today ({today.isoformat()})",
        )
    if request.linked_request_id is not None:
        _check_uuid(request.linked_request_id, "linked_request_id")
        if request.linked_request_id == request.request_id:
            _fail("linked_request_id", "a request cannot be linked to itself")
    background = _check_text(request.background, "background", required=False, multiline=True)
    return replace(
        request,
        requesting_bureau=requesting,
        requester_contact=contact,
        target_bureau=target,
        holder=Holder(holder_name, uscc),
        certificate_nos=certificates,
        products=products,
        place_of_use=place,
        questions=questions,
        background=background,
    )


def _check_certificates(numbers: Sequence[str], kind: RequestKind) -> tuple[str, ...]:
    # A verification request (item 15) is made while an application is under review, when no
    # certificate exists yet; assistance and leads concern certificates already issued.
    if not numbers and kind is not RequestKind.VERIFICATION:
        _fail(
            "certificate_nos",
            f"at least one certificate number is required for a {kind.value} request",
            "MISSING_FIELD",
        )
    if len(numbers) > _MAX_ITEMS:
        _fail("certificate_nos", f"has {len(numbers)} entries; at most {_MAX_ITEMS} are allowed")
    out: list[str] = []
    for index, raw in enumerate(numbers):
        where = f"certificate_nos[{index}]"
        number = _check_text(raw, where, max_chars=_MAX_CERTIFICATE_NO)
        if any(char.isspace() for char in number):
            _fail(where, f"{number!r} must not contain whitespace")
        if number in out:
            _fail(where, f"{number!r} repeats certificate_nos[{out.index(number)}]")
        out.append(number)
    return tuple(out)


def _check_products(products: Sequence[Product]) -> tuple[Product, ...]:
    if not products:
        _fail("products", "at least one product is required", "MISSING_FIELD")
    if len(products) > _MAX_ITEMS:
        _fail("products", f"has {len(products)} entries; at most {_MAX_ITEMS} are allowed")
    out: list[Product] = []
    for index, product in enumerate(products):
        where = f"products[{index}]"
        name = _check_text(product.name, f"{where}.name")
        model = _check_text(product.model, f"{where}.model")
        quantity = product.quantity
        if isinstance(quantity, bool) or not isinstance(quantity, int):
            _fail(f"{where}.quantity", f"must be a whole number, got {type(quantity).__name__}")
        if quantity <= 0:
            _fail(f"{where}.quantity", f"must be positive, got {quantity}")
        if quantity > _MAX_QUANTITY:
            _fail(f"{where}.quantity", f"{quantity} is implausibly large (max {_MAX_QUANTITY})")
        hs_code = product.hs_code.strip() if product.hs_code else None
        if hs_code is not None and _HS_RE.fullmatch(hs_code) is None:
            _fail(f"{where}.hs_code", f"{hs_code!r} is not an HS code of 6 to 10 digits")
        out.append(Product(name, model, quantity, hs_code or None))
    return tuple(out)


def _check_questions(questions: Sequence[Question]) -> tuple[Question, ...]:
    if not questions:
        _fail("questions", "at least one question is required", "MISSING_FIELD")
    if len(questions) > _MAX_QUESTIONS:
        _fail("questions", f"has {len(questions)} entries; at most {_MAX_QUESTIONS} are allowed")
    out: list[Question] = []
    seen: dict[str, int] = {}
    for index, question in enumerate(questions):
        where = f"questions[{index}]"
        qid = question.id.strip()
        if not qid:
            _fail(f"{where}.id", "is required", "MISSING_FIELD")
        if _QUESTION_ID_RE.fullmatch(qid) is None:
            _fail(f"{where}.id", f"{qid!r} must be letters, digits, '_', '.', '-' (at most 64)")
        if qid in seen:
            _fail(f"{where}.id", f"{qid!r} repeats questions[{seen[qid]}]")
        seen[qid] = index
        out.append(Question(qid, _check_text(question.text, f"{where}.text", multiline=True)))
    return tuple(out)


# --------------------------------------------------------------------------------------------
# Reading plain mappings (TOML, JSON, CLI flags)


_REQUEST_KEYS: Final = frozenset(
    {
        "request_id",
        "kind",
        "requesting_bureau",
        "requester_contact",
        "target_bureau",
        "holder",
        "certificate_nos",
        "products",
        "use_type",
        "place_of_use",
        "questions",
        "attachments",
        "requested_reply_by",
        "linked_request_id",
        "background",
    }
)
_CONTACT_KEYS: Final = frozenset({"name", "phone", "email"})
_HOLDER_KEYS: Final = frozenset({"name", "uscc"})
_PRODUCT_KEYS: Final = frozenset({"name", "model", "quantity", "hs_code"})
_QUESTION_KEYS: Final = frozenset({"id", "text"})
_ATTACHMENT_KEYS: Final = frozenset({"name", "media_type", "content", "path", "sha256", "size"})
_BULLETIN_KEYS: Final = frozenset({"bulletin_id", "title", "body", "attachments"})

ReadFile: TypeAlias = Callable[[str], bytes]
"""Reads an attachment's ``path`` (injected, so that parsing stays free of I/O)."""


class _Table:
    """A mapping read key by key, so that every error names its path and typos are refused."""

    __slots__ = ("_data", "_path")

    def __init__(self, data: object, path: str, allowed: frozenset[str]) -> None:
        if not isinstance(data, Mapping):
            _fail(path or "request", f"must be a table, got {type(data).__name__}")
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

    def text(self, key: str) -> str:
        """A string (stripped later by the checks); "" when absent."""
        value = self._data.get(key)
        if value is None:
            return ""
        if not isinstance(value, str):
            _fail(self.at(key), f"must be a string, got {type(value).__name__}")
        return value

    def items(self, key: str) -> list[object]:
        """A list; [] when absent."""
        value = self._data.get(key)
        if value is None:
            return []
        if isinstance(value, str | bytes) or not isinstance(value, Sequence):
            _fail(self.at(key), f"must be a list, got {type(value).__name__}")
        return list(value)

    def table(self, key: str, allowed: frozenset[str]) -> _Table:
        """A nested table; an empty one when absent (the checks then report missing fields)."""
        value = self._data.get(key)
        return _Table({} if value is None else value, self.at(key), allowed)


def _enum_from_text(value: object, enum: type[_E], field: str) -> _E:
    if value is None or value == "":
        _fail(field, f"is required; one of {', '.join(m.value for m in enum)}", "MISSING_FIELD")
    if isinstance(value, enum):
        return value
    if not isinstance(value, str):
        _fail(field, f"must be a string, got {type(value).__name__}")
    key = value.strip().lower().replace("-", "_").replace(" ", "_")
    for member in enum:
        if member.value == key:
            return member
    _fail(field, f"{value!r} is not one of {', '.join(m.value for m in enum)}")


def _date_from_text(value: object, field: str) -> dt.date | None:
    """A date from TOML (a date value) or text ("YYYY-MM-DD"); None when absent or empty."""
    if value is None or value == "":
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


def _date_text(value: dt.date | None) -> str:
    return value.isoformat() if value is not None else ""


def _optional_id(value: object, field: str) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        _fail(field, f"must be a string, got {type(value).__name__}")
    return value.strip()


def _contact_from_table(table: _Table) -> Contact:
    return Contact(table.text("name"), table.text("phone"), table.text("email"))


def _product_from_table(table: _Table) -> Product:
    quantity = table.raw("quantity")
    if quantity is None:
        _fail(table.at("quantity"), "is required", "MISSING_FIELD")
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        _fail(table.at("quantity"), f"must be a whole number, got {quantity!r}")
    hs_code = table.raw("hs_code")
    if isinstance(hs_code, int) and not isinstance(hs_code, bool):
        _fail(table.at("hs_code"), "must be a string (quote it, so leading zeros are kept)")
    return Product(table.text("name"), table.text("model"), quantity, table.text("hs_code") or None)


def _question_from_item(item: object, index: int) -> Question:
    # Questions may be written as plain strings; they are then numbered q1, q2, ...
    if isinstance(item, str):
        return Question(f"q{index + 1}", item)
    table = _Table(item, f"questions[{index}]", _QUESTION_KEYS)
    return Question(table.text("id") or f"q{index + 1}", table.text("text"))


def _digest_from_value(value: object, field: str) -> bytes | None:
    if value is None or value == "":
        return None
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    if isinstance(value, str):
        try:
            return bytes.fromhex(value.strip())
        except ValueError:
            _fail(field, "must be 64 hexadecimal digits")
    _fail(field, f"must be hex text or bytes, got {type(value).__name__}")


def _attachment_from_item(item: object, field: str, read_file: ReadFile | None) -> Attachment:
    table = _Table(item, field, _ATTACHMENT_KEYS)
    content = table.raw("content")
    path = table.text("path").strip()
    name = table.text("name")
    if content is not None and path:
        _fail(field, "give either content or path, not both")
    if content is None:
        if not path:
            _fail(table.at("content"), "is required (or give a path)", "MISSING_FIELD")
        if read_file is None:
            _fail(table.at("path"), "files cannot be read here; give the content")
        try:
            content = read_file(path)
        except OSError as e:
            raise FieldError(table.at("path"), f"cannot read {path!r}: {e.strerror or e}") from e
        name = name or re.split(r"[\\/]", path)[-1]
    if not isinstance(content, bytes | bytearray):
        _fail(table.at("content"), f"must be bytes, got {type(content).__name__}")
    content = bytes(content)
    digest = _digest_from_value(table.raw("sha256"), table.at("sha256"))
    size = table.raw("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        _fail(table.at("size"), f"must be a whole number, got {size!r}")
    return Attachment(
        name=name,
        media_type=table.text("media_type").strip(),
        sha256=digest if digest is not None else hashlib.sha256(content).digest(),
        size=size if size is not None else len(content),
        content=content,
    )


def _attachments_from_table(table: _Table, read_file: ReadFile | None) -> tuple[Attachment, ...]:
    return tuple(
        _attachment_from_item(item, f"{table.at('attachments')}[{index}]", read_file)
        for index, item in enumerate(table.items("attachments"))
    )


def parse_request(
    data: Mapping[str, Any],
    *,
    today: dt.date,
    request_id: str | None = None,
    requesting_node: str | None = None,
    read_file: ReadFile | None = None,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Request:
    """Validate a new request given as a plain mapping, as a TOML/JSON file or CLI flags give it.

    Keys are the field names of the wire ``Request`` (``holder = {name, uscc}``, ``products =
    [{name, model, quantity, hs_code}]``, ``questions`` as strings or ``{id, text}``,
    ``attachments = [{name, media_type, content | path, sha256?, size?}]``); unknown keys are
    refused so that a typo does not silently drop a field. ``request_id`` and
    ``requesting_bureau`` may come from the arguments (a fresh UUID, the node's own code) when
    the mapping leaves them out. An attachment given by ``path`` is read with ``read_file``; a
    ``sha256`` or ``size`` given in the file must match the content.

    Raises:
        FieldError: the first rule broken, naming the field.
    """
    table = _Table(data, "", _REQUEST_KEYS)
    raw_id = table.text("request_id") or (request_id or "")
    questions = tuple(
        _question_from_item(item, index) for index, item in enumerate(table.items("questions"))
    )
    holder = table.table("holder", _HOLDER_KEYS)
    certificates: list[str] = []
    for index, item in enumerate(table.items("certificate_nos")):
        if not isinstance(item, str):
            _fail(f"certificate_nos[{index}]", f"must be a string, got {type(item).__name__}")
        certificates.append(item)
    request = Request(
        request_id=raw_id.strip(),
        kind=_enum_from_text(table.raw("kind"), RequestKind, "kind"),
        requesting_bureau=table.text("requesting_bureau") or (requesting_node or ""),
        requester_contact=_contact_from_table(table.table("requester_contact", _CONTACT_KEYS)),
        target_bureau=table.text("target_bureau"),
        holder=Holder(holder.text("name"), holder.text("uscc")),
        certificate_nos=tuple(certificates),
        products=tuple(
            _product_from_table(_Table(item, f"products[{index}]", _PRODUCT_KEYS))
            for index, item in enumerate(table.items("products"))
        ),
        use_type=_enum_from_text(table.raw("use_type"), UseType, "use_type"),
        place_of_use=table.text("place_of_use"),
        questions=questions,
        attachments=_attachments_from_table(table, read_file),
        requested_reply_by=_date_from_text(table.raw("requested_reply_by"), "requested_reply_by"),
        linked_request_id=_optional_id(table.raw("linked_request_id"), "linked_request_id"),
        background=table.text("background"),
    )
    return validate_request(
        request,
        today=today,
        requesting_node=requesting_node,
        max_attachment_bytes=max_attachment_bytes,
    )


# --------------------------------------------------------------------------------------------
# Reading wire messages from a peer


def _enum_from_pb(value: int, table: Mapping[_E, int], field: str) -> _E:
    for member, number in table.items():
        if number == value:
            return member
    if value == 0:
        _fail(field, "is required", "MISSING_FIELD")
    _fail(field, f"unknown value {value}")


def _contact_from_pb(message: pb.Contact) -> Contact:
    return Contact(message.name, message.phone, message.email)


def _attachments_from_pb(
    messages: Iterable[pb.Attachment], field: str, max_bytes: int
) -> tuple[Attachment, ...]:
    atts = tuple(
        Attachment(a.name, a.media_type, bytes(a.sha256), a.size, bytes(a.content))
        for a in messages
    )
    _check_attachments(atts, field, max_bytes)
    return atts


def request_from_message(
    message: pb.Request, *, max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
) -> Request:
    """Validate a request that arrived from a peer, with the same rules as a local one.

    Attachments must carry their SHA-256 and size, which are compared with the content. Whether
    the requesting bureau is under the sending node is the shell's check (it knows the
    envelope's verified sender).

    Raises:
        FieldError: the first rule broken, naming the field.
    """
    request = Request(
        request_id=message.request_id,
        kind=_enum_from_pb(message.kind, _KIND_PB, "kind"),
        requesting_bureau=message.requesting_bureau,
        requester_contact=_contact_from_pb(message.requester_contact),
        target_bureau=message.target_bureau,
        holder=Holder(message.holder.name, message.holder.uscc),
        certificate_nos=tuple(message.certificate_nos),
        products=tuple(
            Product(p.name, p.model, p.quantity, p.hs_code or None) for p in message.products
        ),
        use_type=_enum_from_pb(message.use_type, _USE_PB, "use_type"),
        place_of_use=message.place_of_use,
        questions=tuple(Question(q.id, q.text) for q in message.questions),
        attachments=_attachments_from_pb(message.attachments, "attachments", max_attachment_bytes),
        requested_reply_by=_date_from_text(message.requested_reply_by, "requested_reply_by"),
        linked_request_id=message.linked_request_id or None,
        background=message.background,
    )
    return validate_request(request, max_attachment_bytes=max_attachment_bytes)


# --------------------------------------------------------------------------------------------
# Lifecycle events


@dataclass(frozen=True, slots=True)
class Sent:
    """The requester sent the request (the ``Request`` message; ``at`` is its created_at)."""

    name: ClassVar[str] = "sent"


@dataclass(frozen=True, slots=True)
class Delivered:
    """The responder committed the request; ``received_at`` is the receipt's, and starts the
    15-day reply period."""

    received_at: dt.datetime
    name: ClassVar[str] = "delivered"


@dataclass(frozen=True, slots=True)
class Accepted:
    """The responder accepted and assigned the request to a bureau of its province."""

    assigned_bureau: str
    assignee: Contact
    name: ClassVar[str] = "accepted"


@dataclass(frozen=True, slots=True)
class Declined:
    """The responder declines; for a wrong jurisdiction it may name the right bureau."""

    reason_code: DeclineReason
    reason: str
    suggested_bureau: str | None = None
    name: ClassVar[str] = "declined"


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The requester withdraws the request."""

    reason: str = ""
    name: ClassVar[str] = "withdrawn"


@dataclass(frozen=True, slots=True)
class ProgressReported:
    """An interim report from the responder; changes nothing but the history."""

    text: str
    attachments: tuple[Attachment, ...] = ()
    name: ClassVar[str] = "progress_reported"


@dataclass(frozen=True, slots=True)
class ExtensionRequested:
    """The responder asks for more time: exactly one of ``additional_days`` (counted from the
    current due date with the Civil Code roll-over) or a fixed ``new_due_date``."""

    reason: str
    additional_days: int | None = None
    new_due_date: dt.date | None = None
    name: ClassVar[str] = "extension_requested"


@dataclass(frozen=True, slots=True)
class ExtensionDecided:
    """The requester decides the pending extension; a granted ``new_due_date`` overrides what
    was asked (None grants exactly that)."""

    granted: bool
    new_due_date: dt.date | None = None
    reason: str = ""
    name: ClassVar[str] = "extension_decided"


@dataclass(frozen=True, slots=True)
class Replied:
    """The reply: one finding per question, evidence, and the follow-up taken."""

    findings: tuple[Finding, ...]
    follow_ups: tuple[FollowUp, ...]
    evidence: tuple[Attachment, ...] = ()
    summary: str = ""
    name: ClassVar[str] = "replied"


@dataclass(frozen=True, slots=True)
class Closed:
    """The requester closes the request after reading the reply."""

    note: str = ""
    name: ClassVar[str] = "closed"


Event: TypeAlias = (
    Sent
    | Delivered
    | Accepted
    | Declined
    | Withdrawn
    | ProgressReported
    | ExtensionRequested
    | ExtensionDecided
    | Replied
    | Closed
)
"""Every lifecycle event :func:`apply` understands."""


def event_from_message(
    message: Message, *, max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
) -> tuple[str, Event]:
    """Translate a lifecycle message from a peer into ``(request_id, event)``.

    Only types and attachments are checked here; whether the event is allowed, and its content
    against the request, is :func:`apply`'s job, which runs the same checks for local events.

    Raises:
        FieldError: a field has the wrong form (request id, enum, date, attachment).
        ValidationError: ``UNSUPPORTED_KIND`` for a message that is not a lifecycle event
            (the ``Request`` itself goes through :func:`request_from_message`).
    """
    event: Event
    request_id = ""
    match message:
        case pb.RequestAccepted():
            request_id = message.request_id
            event = Accepted(message.assigned_bureau, _contact_from_pb(message.assignee))
        case pb.RequestDeclined():
            request_id = message.request_id
            event = Declined(
                _enum_from_pb(message.reason_code, _DECLINE_PB, "declined.reason_code"),
                message.reason,
                message.suggested_bureau or None,
            )
        case pb.RequestWithdrawn():
            request_id = message.request_id
            event = Withdrawn(message.reason)
        case pb.ProgressReport():
            request_id = message.request_id
            event = ProgressReported(
                message.text,
                _attachments_from_pb(
                    message.attachments, "progress_reported.attachments", max_attachment_bytes
                ),
            )
        case pb.ExtensionRequested():
            request_id = message.request_id
            which = message.WhichOneof("extension")
            event = ExtensionRequested(
                message.reason,
                additional_days=message.additional_days if which == "additional_days" else None,
                new_due_date=_date_from_text(
                    message.new_due_date, "extension_requested.new_due_date"
                ),
            )
        case pb.ExtensionDecided():
            request_id = message.request_id
            event = ExtensionDecided(
                message.granted,
                _date_from_text(message.new_due_date, "extension_decided.new_due_date"),
                message.reason,
            )
        case pb.Reply():
            request_id = message.request_id
            event = Replied(
                findings=tuple(
                    Finding(
                        f.question_id,
                        f.finding,
                        _enum_from_pb(
                            f.conclusion, _CONCLUSION_PB, f"replied.findings[{i}].conclusion"
                        ),
                    )
                    for i, f in enumerate(message.findings)
                ),
                follow_ups=tuple(
                    FollowUp(
                        _enum_from_pb(u.action, _FOLLOW_UP_PB, f"replied.follow_ups[{i}].action"),
                        u.note,
                    )
                    for i, u in enumerate(message.follow_ups)
                ),
                evidence=_attachments_from_pb(
                    message.evidence, "replied.evidence", max_attachment_bytes
                ),
                summary=message.summary,
            )
        case pb.RequestClosed():
            request_id = message.request_id
            event = Closed(message.note)
        case _:
            raise ValidationError(
                f"{message.DESCRIPTOR.full_name} is not a request lifecycle event",
                reason="UNSUPPORTED_KIND",
            )
    return _check_uuid(request_id, f"{event.name}.request_id"), event


def event_to_message(request_id: str, event: Event) -> Message:
    """The wire message for an event, to seal in an envelope.

    Raises:
        ValidationError: ``INVALID_EVENT`` for ``sent`` and ``delivered``, which travel as the
            ``Request`` message and its receipt.
    """
    match event:
        case Sent() | Delivered():
            raise ValidationError(
                f"{event.name!r} has no message of its own: it is the Request and its receipt",
                reason="INVALID_EVENT",
            )
        case Accepted():
            return pb.RequestAccepted(
                request_id=request_id,
                assigned_bureau=event.assigned_bureau,
                assignee=event.assignee.to_message(),
            )
        case Declined():
            return pb.RequestDeclined(
                request_id=request_id,
                reason_code=_DECLINE_PB[event.reason_code],
                reason=event.reason,
                suggested_bureau=event.suggested_bureau or "",
            )
        case Withdrawn():
            return pb.RequestWithdrawn(request_id=request_id, reason=event.reason)
        case ProgressReported():
            return pb.ProgressReport(
                request_id=request_id,
                text=event.text,
                attachments=[a.to_message() for a in event.attachments],
            )
        case ExtensionRequested():
            message = pb.ExtensionRequested(request_id=request_id, reason=event.reason)
            if event.additional_days is not None:
                message.additional_days = event.additional_days
            if event.new_due_date is not None:
                message.new_due_date = event.new_due_date.isoformat()
            return message
        case ExtensionDecided():
            return pb.ExtensionDecided(
                request_id=request_id,
                granted=event.granted,
                new_due_date=_date_text(event.new_due_date),
                reason=event.reason,
            )
        case Replied():
            return pb.Reply(
                request_id=request_id,
                findings=[
                    pb.Finding(
                        question_id=f.question_id,
                        finding=f.finding,
                        conclusion=_CONCLUSION_PB[f.conclusion],
                    )
                    for f in event.findings
                ],
                evidence=[a.to_message() for a in event.evidence],
                follow_ups=[
                    pb.FollowUp(action=_FOLLOW_UP_PB[u.action], note=u.note)
                    for u in event.follow_ups
                ],
                summary=event.summary,
            )
        case Closed():
            return pb.RequestClosed(request_id=request_id, note=event.note)
        case _:
            assert_never(event)


# --------------------------------------------------------------------------------------------
# The state machine


@dataclass(frozen=True, slots=True)
class Transition:
    """Who may send an event and from which states (one row of the table in the docstring)."""

    actor: Actor
    sources: frozenset[RequestStatus]
    target: RequestStatus | None
    """The state after the event; None keeps the current one."""
    pending: bool | None = None
    """True: only while an extension request is pending; False: only while none is; None: any."""


_S = RequestStatus
TRANSITIONS: Final[Mapping[str, Transition]] = {
    Sent.name: Transition("requester", frozenset({_S.DRAFT}), _S.SENT),
    Delivered.name: Transition("responder", frozenset({_S.SENT}), _S.DELIVERED),
    Accepted.name: Transition("responder", frozenset({_S.DELIVERED}), _S.ACCEPTED),
    Declined.name: Transition("responder", frozenset({_S.DELIVERED, _S.ACCEPTED}), _S.DECLINED),
    Withdrawn.name: Transition("requester", frozenset({_S.DELIVERED, _S.ACCEPTED}), _S.WITHDRAWN),
    ProgressReported.name: Transition("responder", frozenset({_S.ACCEPTED}), None),
    ExtensionRequested.name: Transition("responder", frozenset({_S.ACCEPTED}), None, pending=False),
    ExtensionDecided.name: Transition("requester", frozenset({_S.ACCEPTED}), None, pending=True),
    Replied.name: Transition("responder", frozenset({_S.ACCEPTED}), _S.REPLIED),
    Closed.name: Transition("requester", frozenset({_S.REPLIED}), _S.CLOSED),
}
"""Event name -> who may send it and from where; :func:`apply` enforces exactly this table."""


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    """One applied event, for the audit trail both nodes share."""

    event: str
    actor: Actor
    at: dt.datetime
    """When it happened per signed data (the envelope's created_at, the receipt's received_at),
    in UTC."""
    status: RequestStatus
    """The status after the event."""
    due_date: dt.date | None
    """The due date after the event (None before delivery)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "event": self.event,
            "actor": self.actor,
            "at": self.at.isoformat(),
            "status": self.status.value,
            "due_date": _date_text(self.due_date) or None,
        }


@dataclass(frozen=True, slots=True)
class RequestState:
    """Where one request stands, as both nodes see it; build with :func:`start`, advance with
    :func:`apply`.

    Only what the lifecycle rules need is kept (the request's content and the events' texts are
    stored by the shell with the message bytes).
    """

    request_id: str
    kind: RequestKind
    requesting_bureau: str
    target_bureau: str
    question_ids: tuple[str, ...]
    """The reply must answer exactly these."""
    requested_reply_by: dt.date | None = None
    status: RequestStatus = RequestStatus.DRAFT
    received_at: dt.datetime | None = None
    """The receipt's instant (UTC) that started the reply period."""
    due: Due | None = None
    """When the reply is due; set on delivery, moved by a granted extension."""
    assigned_bureau: str | None = None
    pending_extension: ExtensionRequested | None = None
    decline_reason: DeclineReason | None = None
    suggested_bureau: str | None = None
    history: tuple[HistoryEntry, ...] = ()

    @property
    def extension_pending(self) -> bool:
        """Whether the responder's extension request awaits the requester's decision."""
        return self.pending_extension is not None

    @property
    def version(self) -> int:
        """Number of events applied; equal on both nodes when their views are equal."""
        return len(self.history)

    @property
    def is_final(self) -> bool:
        """Closed, declined or withdrawn: no event is allowed any more."""
        return self.status in _FINAL

    @property
    def awaiting_reply(self) -> bool:
        """Whether the responder owes a reply (delivered or accepted, not yet replied)."""
        return self.status in {RequestStatus.DELIVERED, RequestStatus.ACCEPTED}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for storage and for comparing the two nodes' views."""
        pending = self.pending_extension
        return {
            "request_id": self.request_id,
            "kind": self.kind.value,
            "requesting_bureau": self.requesting_bureau,
            "target_bureau": self.target_bureau,
            "question_ids": list(self.question_ids),
            "requested_reply_by": _date_text(self.requested_reply_by) or None,
            "status": self.status.value,
            "received_at": self.received_at.isoformat() if self.received_at else None,
            "due": self.due.to_dict() if self.due is not None else None,
            "assigned_bureau": self.assigned_bureau,
            "pending_extension": (
                None
                if pending is None
                else {
                    "reason": pending.reason,
                    "additional_days": pending.additional_days,
                    "new_due_date": _date_text(pending.new_due_date) or None,
                }
            ),
            "decline_reason": self.decline_reason.value if self.decline_reason else None,
            "suggested_bureau": self.suggested_bureau,
            "history": [h.to_dict() for h in self.history],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RequestState:
        """Inverse of :meth:`to_dict`, checking every type.

        Raises:
            ValidationError: ``INVALID_STATE_RECORD`` when a key is missing or a value is wrong.
        """
        try:
            pending_raw = data["pending_extension"]
            pending = None
            if pending_raw is not None:
                days = pending_raw["additional_days"]
                pending = ExtensionRequested(
                    reason=_str(pending_raw["reason"]),
                    additional_days=None if days is None else _int(days),
                    new_due_date=_opt_date(pending_raw["new_due_date"]),
                )
            decline = data["decline_reason"]
            state = cls(
                request_id=_str(data["request_id"]),
                kind=RequestKind(data["kind"]),
                requesting_bureau=_str(data["requesting_bureau"]),
                target_bureau=_str(data["target_bureau"]),
                question_ids=tuple(_str(q) for q in _list(data["question_ids"])),
                requested_reply_by=_opt_date(data["requested_reply_by"]),
                status=RequestStatus(data["status"]),
                received_at=_opt_instant(data["received_at"]),
                due=None if data["due"] is None else Due.from_dict(data["due"]),
                assigned_bureau=_opt_str(data["assigned_bureau"]),
                pending_extension=pending,
                decline_reason=None if decline is None else DeclineReason(decline),
                suggested_bureau=_opt_str(data["suggested_bureau"]),
                history=tuple(
                    HistoryEntry(
                        event=_str(h["event"]),
                        actor=_actor(h["actor"]),
                        at=_instant(h["at"]),
                        status=RequestStatus(h["status"]),
                        due_date=_opt_date(h["due_date"]),
                    )
                    for h in _list(data["history"])
                ),
            )
        except KeyError as e:
            raise ValidationError(
                f"request state record: missing key {e.args[0]!r}", reason="INVALID_STATE_RECORD"
            ) from e
        except (TypeError, ValueError, AttributeError) as e:
            raise ValidationError(
                f"request state record: bad value: {e}", reason="INVALID_STATE_RECORD"
            ) from e
        except ValidationError as e:
            raise ValidationError(
                f"request state record: {e}", reason="INVALID_STATE_RECORD"
            ) from e
        return state


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__}")
    return value


def _opt_str(value: object) -> str | None:
    return None if value is None else _str(value)


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"expected an integer, got {type(value).__name__}")
    return value


def _list(value: object) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


def _opt_date(value: object) -> dt.date | None:
    return None if value is None else dt.date.fromisoformat(_str(value))


def _instant(value: object) -> dt.datetime:
    instant = dt.datetime.fromisoformat(_str(value))
    if instant.tzinfo is None:
        raise ValueError(f"instant {value!r} has no time zone")
    return instant.astimezone(dt.UTC)


def _opt_instant(value: object) -> dt.datetime | None:
    return None if value is None else _instant(value)


def _actor(value: object) -> Actor:
    if value == "requester":
        return "requester"
    if value == "responder":
        return "responder"
    raise ValueError(f"unknown actor {value!r}")


def start(request: Request) -> RequestState:
    """The DRAFT state of a validated request; both nodes start here.

    The responder builds it from the received ``Request`` and applies ``sent`` (at the
    envelope's created_at) and ``delivered`` (at its receipt's received_at), the same two
    events the requester applies when it sends and when the receipt comes back.
    """
    return RequestState(
        request_id=request.request_id,
        kind=request.kind,
        requesting_bureau=request.requesting_bureau,
        target_bureau=request.target_bureau,
        question_ids=tuple(q.id for q in request.questions),
        requested_reply_by=request.requested_reply_by,
    )


def allowed(state: RequestState, event_name: str, actor: Actor) -> bool:
    """Whether ``actor`` may send the event named ``event_name`` now (content aside)."""
    rule = TRANSITIONS.get(event_name)
    if rule is None:
        return False
    return (
        rule.actor == actor
        and state.status in rule.sources
        and (rule.pending is None or rule.pending == state.extension_pending)
    )


def allowed_events(state: RequestState) -> tuple[tuple[str, Actor], ...]:
    """Every ``(event name, actor)`` allowed now, in table order (for the CLI's hints)."""
    return tuple(
        (name, rule.actor) for name, rule in TRANSITIONS.items() if allowed(state, name, rule.actor)
    )


_STATUS_ORDER: Final = tuple(RequestStatus)


def _refuse(state: RequestState, name: str, actor: Actor) -> ValidationError:
    rule = TRANSITIONS[name]
    now = state.status.name
    if state.status is RequestStatus.ACCEPTED:
        now += " with an extension request pending" if state.extension_pending else ""
    sources = " or ".join(s.name for s in _STATUS_ORDER if s in rule.sources)
    condition = {
        True: " with an extension request pending",
        False: " with no extension request pending",
        None: "",
    }[rule.pending]
    return ValidationError(
        f"request {state.request_id}: {name!r} from the {actor} is not allowed in state {now}; "
        f"only the {rule.actor} sends {name!r}, in state {sources}{condition}",
        reason="INVALID_TRANSITION",
    )


def _invalid(field: str, problem: str) -> NoReturn:
    raise FieldError(field, problem, reason="INVALID_EVENT")


def _aware_utc(value: object, field: str) -> dt.datetime:
    if not isinstance(value, dt.datetime) or value.tzinfo is None or value.utcoffset() is None:
        _invalid(field, f"must be a time-zone-aware datetime, got {value!r}")
    return value.astimezone(dt.UTC)


def _noon(day: dt.date) -> dt.datetime:
    """An instant on ``day`` in Shanghai, to count a period from that date."""
    return dt.datetime.combine(day, dt.time(12), tzinfo=TZ)


def _current_due(state: RequestState) -> Due:
    if state.due is None:  # every status that allows extensions was reached through delivery
        raise ValidationError(
            f"request {state.request_id}: no due date in state {state.status.name}",
            reason="INVALID_STATE_RECORD",
        )
    return state.due


def _reply_due(received_at: dt.datetime, requested: dt.date | None, cal: HolidayCalendar) -> Due:
    """15 days after the receipt's Shanghai date, or the requester's earlier date.

    A requested date that is not after the delivery date (the request travelled longer than
    planned) cannot be honoured and is dropped: the legal period applies.
    """
    legal = day_period(received_at, REPLY_PERIOD_DAYS, cal)
    if requested is None or requested <= legal.start_date:
        return legal
    return earlier_of(legal, requested)


def _extended_due(
    current: Due, days: int | None, date: dt.date | None, cal: HolidayCalendar, field: str
) -> Due:
    """The due date moved by an extension, counted from the current due date.

    A fixed date is recorded as a period of the same length whose requested date is that day,
    so :func:`federation.periods.recompute` keeps it where the parties agreed.
    """
    if date is not None:
        days = (date - current.due_date).days
        if days < 1:
            _invalid(
                field,
                f"{date.isoformat()} is not after the current due date "
                f"{current.due_date.isoformat()}",
            )
        if days > MAX_EXTENSION_DAYS:
            _invalid(field, f"{date.isoformat()} is more than {MAX_EXTENSION_DAYS} days later")
        return earlier_of(day_period(_noon(current.due_date), days, cal), date)
    if days is None or not 1 <= days <= MAX_EXTENSION_DAYS:
        _invalid(field, f"must be between 1 and {MAX_EXTENSION_DAYS} days, got {days}")
    return day_period(_noon(current.due_date), days, cal)


def _check_accepted(state: RequestState, event: Accepted) -> str:
    where = "accepted.assigned_bureau"
    with _as_invalid_event():
        assigned = _check_bureau(event.assigned_bureau, where)
    if divisions.province_of(assigned) != divisions.province_of(state.target_bureau):
        _invalid(
            where,
            f"{assigned} is under {_province_label(assigned)}; the request is for "
            f"{_province_label(state.target_bureau)}, which assigns it to one of its own bureaus",
        )
    with _as_invalid_event():
        _check_contact(event.assignee, "accepted.assignee")
    return assigned


def _check_declined(state: RequestState, event: Declined) -> str | None:
    _event_text(event.reason, "declined.reason", multiline=True)
    if event.suggested_bureau is None:
        return None
    where = "declined.suggested_bureau"
    if event.reason_code is not DeclineReason.WRONG_JURISDICTION:
        _invalid(where, f"may only be given with reason_code {DeclineReason.WRONG_JURISDICTION}")
    with _as_invalid_event():
        suggested = _check_bureau(event.suggested_bureau, where)
    if divisions.province_of(suggested) == divisions.province_of(state.target_bureau):
        _invalid(
            where,
            f"{suggested} is under the same node as the target ({_province_label(suggested)}): "
            "accept the request and assign it there instead",
        )
    return suggested


def _check_replied(state: RequestState, event: Replied) -> None:
    expected = set(state.question_ids)
    seen: dict[str, int] = {}
    for index, finding in enumerate(event.findings):
        where = f"replied.findings[{index}]"
        if finding.question_id not in expected:
            _invalid(
                f"{where}.question_id",
                f"{finding.question_id!r} is not a question of this request "
                f"({', '.join(state.question_ids)})",
            )
        if finding.question_id in seen:
            _invalid(
                f"{where}.question_id",
                f"{finding.question_id!r} is answered again (first in findings"
                f"[{seen[finding.question_id]}])",
            )
        seen[finding.question_id] = index
        _event_text(finding.finding, f"{where}.finding", multiline=True)
    missing = [qid for qid in state.question_ids if qid not in seen]
    if missing:
        _invalid("replied.findings", f"no finding for question {', '.join(missing)}")
    if not event.follow_ups:
        _invalid("replied.follow_ups", "say what follow-up was taken (or 'none')")
    actions = [u.action for u in event.follow_ups]
    if FollowUpAction.NONE in actions and len(actions) > 1:
        _invalid("replied.follow_ups", "'none' cannot be combined with other follow-up")
    for index, follow_up in enumerate(event.follow_ups):
        _event_text(
            follow_up.note, f"replied.follow_ups[{index}].note", required=False, multiline=True
        )
    _event_text(event.summary, "replied.summary", required=False, multiline=True)


def _event_text(value: str, field: str, *, required: bool = True, multiline: bool = False) -> None:
    with _as_invalid_event():
        _check_text(value, field, required=required, multiline=multiline)


def apply(
    state: RequestState,
    event: Event,
    *,
    actor: Actor,
    at: dt.datetime,
    calendar: HolidayCalendar,
) -> RequestState:
    """The state after ``actor`` sent ``event`` at ``at``; ``state`` itself never changes.

    ``at`` must come from signed data (the envelope's created_at; for ``delivered`` the
    receipt's received_at) so that both nodes record the same instant; ``calendar`` must hold
    the same schedules on both nodes. Checks, in order: the actor is known and ``at`` is aware;
    the transition is in :data:`TRANSITIONS`; the event's content is valid for this request.

    Raises:
        ValidationError: ``INVALID_TRANSITION`` (wrong state or actor; the message names the
            state, the event and the sender), ``INVALID_EVENT`` (content), ``INVALID_ACTOR``.
    """
    if actor not in ACTORS:
        raise ValidationError(
            f"actor must be 'requester' or 'responder', got {actor!r}", reason="INVALID_ACTOR"
        )
    at_utc = _aware_utc(at, f"{event.name}.at")
    if not allowed(state, event.name, actor):
        raise _refuse(state, event.name, actor)
    rule = TRANSITIONS[event.name]
    status = rule.target or state.status
    new: RequestState
    match event:
        case Sent():
            new = replace(state, status=status)
        case Delivered():
            received = _aware_utc(event.received_at, "delivered.received_at")
            due = _reply_due(received, state.requested_reply_by, calendar)
            new = replace(state, status=status, received_at=received, due=due)
        case Accepted():
            new = replace(state, status=status, assigned_bureau=_check_accepted(state, event))
        case Declined():
            suggested = _check_declined(state, event)
            new = replace(
                state,
                status=status,
                decline_reason=event.reason_code,
                suggested_bureau=suggested,
                pending_extension=None,
            )
        case Withdrawn():
            _event_text(event.reason, "withdrawn.reason", required=False, multiline=True)
            new = replace(state, status=status, pending_extension=None)
        case ProgressReported():
            _event_text(event.text, "progress_reported.text", multiline=True)
            new = state
        case ExtensionRequested():
            _event_text(event.reason, "extension_requested.reason", multiline=True)
            if (event.additional_days is None) == (event.new_due_date is None):
                _invalid("extension_requested", "give either additional_days or new_due_date")
            # Computed only to refuse an impossible request now rather than at the decision.
            _extended_due(
                _current_due(state),
                event.additional_days,
                event.new_due_date,
                calendar,
                "extension_requested.additional_days"
                if event.additional_days is not None
                else "extension_requested.new_due_date",
            )
            new = replace(state, pending_extension=event)
        case ExtensionDecided():
            _event_text(event.reason, "extension_decided.reason", required=False, multiline=True)
            pending = state.pending_extension
            assert pending is not None  # guaranteed by the transition table
            due = _current_due(state)
            if not event.granted:
                if event.new_due_date is not None:
                    _invalid("extension_decided.new_due_date", "must be empty when refused")
            elif event.new_due_date is not None:
                due = _extended_due(
                    due, None, event.new_due_date, calendar, "extension_decided.new_due_date"
                )
            else:
                due = _extended_due(
                    due,
                    pending.additional_days,
                    pending.new_due_date,
                    calendar,
                    "extension_decided",
                )
            new = replace(state, due=due, pending_extension=None)
        case Replied():
            _check_replied(state, event)
            new = replace(state, status=status, pending_extension=None)
        case Closed():
            _event_text(event.note, "closed.note", required=False, multiline=True)
            new = replace(state, status=status)
        case _:
            assert_never(event)
    entry = HistoryEntry(
        event=event.name,
        actor=actor,
        at=at_utc,
        status=new.status,
        due_date=new.due.due_date if new.due is not None else None,
    )
    return replace(new, history=(*state.history, entry))


def replay(
    state: RequestState,
    events: Iterable[tuple[Event, Actor, dt.datetime]],
    calendar: HolidayCalendar,
) -> RequestState:
    """Apply ``(event, actor, at)`` in order; how a node rebuilds a view from its stored events.

    Raises:
        ValidationError: as :func:`apply`, on the first event refused.
    """
    for event, actor, at in events:
        state = apply(state, event, actor=actor, at=at, calendar=calendar)
    return state


def linked_request(
    original: Request,
    state: RequestState,
    *,
    request_id: str,
    today: dt.date,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Request:
    """A new request to the bureau a wrong-jurisdiction decline suggested, linked to the first.

    The requested reply-by date is dropped: it was chosen against the first delivery, and the
    new request gets its own 15-day period.

    Raises:
        ValidationError: ``INVALID_TRANSITION`` unless ``state`` is ``original`` declined with a
            suggested bureau; :class:`FieldError` if the new request breaks a rule (e.g. the
            suggested bureau is in the requester's own province).
    """
    if (
        state.request_id != original.request_id
        or state.status is not RequestStatus.DECLINED
        or state.suggested_bureau is None
    ):
        raise ValidationError(
            f"request {state.request_id} is {state.status.name} without a suggested bureau; "
            "a linked request follows a decline for wrong jurisdiction that names one",
            reason="INVALID_TRANSITION",
        )
    return validate_request(
        replace(
            original,
            request_id=request_id,
            target_bureau=state.suggested_bureau,
            linked_request_id=original.request_id,
            requested_reply_by=None,
        ),
        today=today,
        max_attachment_bytes=max_attachment_bytes,
    )


# --------------------------------------------------------------------------------------------
# Bulletins (item 18)


@dataclass(frozen=True, slots=True)
class Bulletin:
    """A circular to every member node; no reply is owed, only read acknowledgements."""

    bulletin_id: str
    title: str
    body: str
    attachments: tuple[Attachment, ...] = ()

    def to_message(self) -> pb.Bulletin:
        """The wire form."""
        return pb.Bulletin(
            bulletin_id=self.bulletin_id,
            title=self.title,
            body=self.body,
            attachments=[a.to_message() for a in self.attachments],
        )


def _validate_bulletin(bulletin: Bulletin, max_attachment_bytes: int) -> Bulletin:
    _check_uuid(bulletin.bulletin_id, "bulletin_id")
    title = _check_text(bulletin.title, "title")
    body = _check_text(bulletin.body, "body", multiline=True)
    _check_attachments(bulletin.attachments, "attachments", max_attachment_bytes)
    return replace(bulletin, title=title, body=body)


def parse_bulletin(
    data: Mapping[str, Any],
    *,
    bulletin_id: str | None = None,
    read_file: ReadFile | None = None,
    max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES,
) -> Bulletin:
    """Validate a bulletin given as a plain mapping (``title``, ``body``, ``attachments``).

    Raises:
        FieldError: the first rule broken, naming the field.
    """
    table = _Table(data, "", _BULLETIN_KEYS)
    bulletin = Bulletin(
        bulletin_id=(table.text("bulletin_id") or (bulletin_id or "")).strip(),
        title=table.text("title"),
        body=table.text("body"),
        attachments=_attachments_from_table(table, read_file),
    )
    return _validate_bulletin(bulletin, max_attachment_bytes)


def bulletin_from_message(
    message: pb.Bulletin, *, max_attachment_bytes: int = DEFAULT_MAX_ATTACHMENT_BYTES
) -> Bulletin:
    """Validate a bulletin that arrived from a peer.

    Raises:
        FieldError: the first rule broken, naming the field.
    """
    bulletin = Bulletin(
        bulletin_id=message.bulletin_id,
        title=message.title,
        body=message.body,
        attachments=_attachments_from_pb(message.attachments, "attachments", max_attachment_bytes),
    )
    return _validate_bulletin(bulletin, max_attachment_bytes)


def _node_code(code: str, field: str) -> str:
    try:
        found = divisions.bureau(code)
    except ValidationError as e:
        raise FieldError(field, str(e), reason=e.reason) from e
    if not found.is_province:
        _fail(field, f"{found} is not a member node (a provincial code)", "NOT_A_MEMBER")
    return found.code


@dataclass(frozen=True, slots=True)
class BulletinReads:
    """Who has acknowledged reading a bulletin: every member except its sender must.

    The recipients are fixed when the bulletin is sent (the manifest's members at that moment),
    so a member joining later owes no acknowledgement. The first acknowledgement of a member is
    kept; a redelivered or repeated one changes nothing.
    """

    bulletin_id: str
    sender: str
    recipients: frozenset[str]
    reads: tuple[tuple[str, dt.datetime], ...] = ()
    """``(member, read_at)`` pairs in member order; read_at in UTC."""

    @classmethod
    def new(cls, bulletin_id: str, *, sender: str, members: Iterable[str]) -> BulletinReads:
        """The record of a bulletin just sent by ``sender`` to the other ``members``.

        Raises:
            FieldError: a code is not a provincial node, or there is no recipient.
        """
        _check_uuid(bulletin_id, "bulletin_id")
        sender = _node_code(sender, "sender")
        recipients = frozenset(_node_code(m, "members") for m in members) - {sender}
        if not recipients:
            _fail("members", "a bulletin needs at least one member other than its sender")
        return cls(bulletin_id, sender, recipients)

    def record_read(self, member: str, at: dt.datetime) -> BulletinReads:
        """The record with ``member``'s acknowledgement at ``at`` (its envelope's created_at).

        Raises:
            ValidationError: ``NOT_A_RECIPIENT`` for the sender or a node the bulletin was not
                sent to; ``INVALID_EVENT`` for a naive ``at``.
        """
        at_utc = _aware_utc(at, "bulletin_read.at")
        if member not in self.recipients:
            raise ValidationError(
                f"bulletin {self.bulletin_id}: {member!r} is not one of its recipients "
                f"({', '.join(sorted(self.recipients))})",
                reason="NOT_A_RECIPIENT",
            )
        if self.read_at(member) is not None:
            return self
        return replace(self, reads=tuple(sorted((*self.reads, (member, at_utc)))))

    def read_at(self, member: str) -> dt.datetime | None:
        """When ``member`` acknowledged reading, or None."""
        for who, when in self.reads:
            if who == member:
                return when
        return None

    @property
    def unread(self) -> tuple[str, ...]:
        """Recipients that have not acknowledged yet, in code order."""
        read = {who for who, _ in self.reads}
        return tuple(sorted(self.recipients - read))

    @property
    def complete(self) -> bool:
        """Whether every recipient has acknowledged."""
        return not self.unread

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "bulletin_id": self.bulletin_id,
            "sender": self.sender,
            "recipients": sorted(self.recipients),
            "reads": [{"member": who, "at": when.isoformat()} for who, when in self.reads],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BulletinReads:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValidationError: ``INVALID_STATE_RECORD`` when a key is missing or a value is wrong.
        """
        try:
            record = cls(
                bulletin_id=_str(data["bulletin_id"]),
                sender=_str(data["sender"]),
                recipients=frozenset(_str(m) for m in _list(data["recipients"])),
                reads=tuple(
                    sorted((_str(r["member"]), _instant(r["at"])) for r in _list(data["reads"]))
                ),
            )
        except KeyError as e:
            raise ValidationError(
                f"bulletin record: missing key {e.args[0]!r}", reason="INVALID_STATE_RECORD"
            ) from e
        except (TypeError, ValueError) as e:
            raise ValidationError(
                f"bulletin record: bad value: {e}", reason="INVALID_STATE_RECORD"
            ) from e
        stray = {who for who, _ in record.reads} - record.recipients
        if stray:
            raise ValidationError(
                f"bulletin record: reads by non-recipients {sorted(stray)}",
                reason="INVALID_STATE_RECORD",
            )
        return record
