"""federation.requests: request validation, the lifecycle state machine, and bulletins.

The transition table is written out again here, independently of ``TRANSITIONS``, and every
(state, event, actor) combination is checked against it: 16 allowed, the rest refused with
INVALID_TRANSITION. Hypothesis then drives random event sequences through two replicas.
"""

from __future__ import annotations

import copy
import datetime as dt
import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cccfed.v1 import assistance_pb2 as pb
from federation.errors import ValidationError
from federation.holidays import HolidayCalendar
from federation.periods import TZ, day_period, recompute
from federation.requests import (
    ACTORS,
    MAX_EXTENSION_DAYS,
    REPLY_PERIOD_DAYS,
    TRANSITIONS,
    Accepted,
    Actor,
    Attachment,
    Bulletin,
    BulletinReads,
    Closed,
    Conclusion,
    Contact,
    Declined,
    DeclineReason,
    Delivered,
    Event,
    ExtensionDecided,
    ExtensionRequested,
    FieldError,
    Finding,
    FollowUp,
    FollowUpAction,
    ProgressReported,
    Replied,
    Request,
    RequestKind,
    RequestState,
    RequestStatus,
    Sent,
    UseType,
    Withdrawn,
    allowed,
    allowed_events,
    apply,
    bulletin_from_message,
    event_from_message,
    event_to_message,
    linked_request,
    parse_bulletin,
    parse_request,
    replay,
    request_from_message,
    start,
    validate_request,
)
from federation.uscc import ALPHABET, make_uscc

CAL = HolidayCalendar()
D = dt.date
TODAY = D(2026, 3, 1)
RID = "0b1e4f0a-5d2c-4a51-9b7e-0d5e2f3a4b6c"
OTHER_ID = "7c9d2b1e-3f4a-4c5d-8e6f-1a2b3c4d5e6f"
BULLETIN_ID = "5f0c8f3e-2a1b-4c3d-9e8f-7a6b5c4d3e2f"
USCC = make_uscc("91320594MA1MNQTH4")
PDF = b"%PDF-1.7 inspection record"


def sh(y: int, m: int, d: int, hh: int = 10, mm: int = 0) -> dt.datetime:
    """An instant given in Shanghai wall-clock time."""
    return dt.datetime(y, m, d, hh, mm, tzinfo=TZ)


RECEIVED = sh(2026, 3, 2)  # a Monday; 15 days later is Tuesday 2026-03-17, a working day
AT = sh(2026, 3, 3)


def valid_data() -> dict[str, Any]:
    """A complete, valid assistance request from Shanghai Pudong to Suzhou (a fresh copy)."""
    return copy.deepcopy(
        {
            "request_id": RID,
            "kind": "assistance",
            "requesting_bureau": "310115",
            "requester_contact": {"name": "张敏", "phone": "021-5087 1234"},
            "target_bureau": "320500",
            "holder": {"name": "苏州示例电子有限公司", "uscc": USCC},
            "certificate_nos": ["2025310000123", "2025310000124"],
            "products": [
                {"name": "服务器主板", "model": "SV-9000", "quantity": 20, "hs_code": "847330"},
                {"name": "电源模块", "model": "PW-12", "quantity": 5},
            ],
            "use_type": "repair",
            "place_of_use": "苏州工业园区星湖街 328 号",
            "questions": [
                "Are the parts used only for end-user repair?",
                {"id": "stock", "text": "How many parts remain in stock?"},
            ],
            "attachments": [
                {"name": "record.pdf", "media_type": "application/pdf", "content": PDF}
            ],
            "requested_reply_by": "2026-03-12",
            "background": "Found during the 2026 double-random inspection of the holder.",
        }
    )


def make_request(**changes: Any) -> Request:
    data = valid_data()
    data.update(changes)
    return parse_request(data, today=TODAY)


REQUEST = make_request(requested_reply_by=None)


# --------------------------------------------------------------------------------------------
# Validation of a new request


def test_valid_request_is_parsed_and_normalised() -> None:
    data = valid_data()
    data["holder"]["uscc"] = f"  {USCC.lower()} "
    request = parse_request(data, today=TODAY)
    assert request.holder.uscc == USCC
    assert request.kind is RequestKind.ASSISTANCE and request.use_type is UseType.REPAIR
    assert [q.id for q in request.questions] == ["q1", "stock"]
    assert request.products[1].hs_code is None
    assert request.attachments[0].sha256 == hashlib.sha256(PDF).digest()
    assert request.attachments[0].size == len(PDF)
    assert request.requested_reply_by == D(2026, 3, 12)
    assert request.requesting_node == "310000" and request.target_node == "320000"


def test_request_id_and_requesting_bureau_may_come_from_the_node() -> None:
    data = valid_data()
    del data["request_id"], data["requesting_bureau"]
    request = parse_request(data, today=TODAY, request_id=RID, requesting_node="310000")
    assert request.request_id == RID and request.requesting_bureau == "310000"


def test_verification_request_needs_no_certificate() -> None:
    request = make_request(kind="verification", certificate_nos=[])
    assert request.kind is RequestKind.VERIFICATION and request.certificate_nos == ()


def test_spelling_variants_of_enums_and_toml_dates_are_accepted() -> None:
    request = make_request(
        use_type="Commercial-Display", kind="LEAD", requested_reply_by=D(2026, 3, 9)
    )
    assert request.use_type is UseType.COMMERCIAL_DISPLAY and request.kind is RequestKind.LEAD
    assert request.requested_reply_by == D(2026, 3, 9)


def test_attachment_read_through_injected_reader() -> None:
    data = valid_data()
    data["attachments"] = [{"path": "docs/photo-1.jpg", "media_type": "image/jpeg"}]
    files = {"docs/photo-1.jpg": b"\xff\xd8jpeg"}
    request = parse_request(data, today=TODAY, read_file=files.__getitem__)
    assert request.attachments[0].name == "photo-1.jpg"
    assert request.attachments[0].content == b"\xff\xd8jpeg"

    def unreadable(path: str) -> bytes:
        raise FileNotFoundError(2, "No such file or directory", path)

    with pytest.raises(FieldError) as exc:
        parse_request(data, today=TODAY, read_file=unreadable)
    assert exc.value.field == "attachments[0].path"
    assert "No such file or directory" in str(exc.value)


Mutation = Callable[[dict[str, Any]], None]


def setting(path: str, value: Any) -> Mutation:
    """A mutation that sets ``a.b[0].c``-style ``path`` to ``value`` (or deletes it for ...)."""

    def mutate(data: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value is ...:
            del target[last]
        else:
            target[last] = value

    return mutate


BAD_USCC = USCC[:17] + ALPHABET[(ALPHABET.index(USCC[17]) + 1) % 31]
DIGEST_OF_OTHER = hashlib.sha256(b"other").hexdigest()

FIELD_RULES: list[Any] = [
    # (mutation, field, reason, fragment of the message)
    pytest.param(
        setting("request_id", ...), "request_id", "MISSING_FIELD", "is required", id="id-missing"
    ),
    pytest.param(
        setting("request_id", "not-a-uuid"),
        "request_id",
        "INVALID_FIELD",
        "is not a UUID",
        id="id-not-uuid",
    ),
    pytest.param(
        setting("request_id", RID.upper()),
        "request_id",
        "INVALID_FIELD",
        "canonical form",
        id="id-upper",
    ),
    pytest.param(
        setting("kind", "inspection"),
        "kind",
        "INVALID_FIELD",
        "is not one of assistance, verification, lead",
        id="kind-unknown",
    ),
    pytest.param(setting("kind", ...), "kind", "MISSING_FIELD", "is required", id="kind-missing"),
    pytest.param(
        setting("requesting_bureau", "110000"),
        "requesting_bureau",
        "NOT_IN_DELTA",
        "Beijing",
        id="requester-beijing",
    ),
    pytest.param(
        setting("requester_contact.phone", ...),
        "requester_contact",
        "MISSING_FIELD",
        "phone number or an e-mail",
        id="contact-unreachable",
    ),
    pytest.param(
        setting("requester_contact.phone", "call me"),
        "requester_contact.phone",
        "INVALID_FIELD",
        "is not a phone number",
        id="contact-phone",
    ),
    pytest.param(
        setting("requester_contact.email", "nobody"),
        "requester_contact.email",
        "INVALID_FIELD",
        "is not an e-mail address",
        id="contact-email",
    ),
    pytest.param(
        setting("requester_contact.name", " "),
        "requester_contact.name",
        "MISSING_FIELD",
        "is required",
        id="contact-name",
    ),
    pytest.param(
        setting("target_bureau", "440300"),
        "target_bureau",
        "NOT_IN_DELTA",
        "Guangdong",
        id="target-foreign",
    ),
    pytest.param(
        setting("target_bureau", "320581"),
        "target_bureau",
        "UNKNOWN_BUREAU",
        "through their prefecture",
        id="target-county",
    ),
    pytest.param(
        setting("target_bureau", "329900"),
        "target_bureau",
        "UNKNOWN_BUREAU",
        "not a bureau known",
        id="target-unknown",
    ),
    pytest.param(
        setting("target_bureau", "32050"),
        "target_bureau",
        "DIVISION_FORMAT",
        "six digits",
        id="target-format",
    ),
    pytest.param(
        setting("target_bureau", "310101"),
        "target_bureau",
        "SAME_PROVINCE",
        "requester's own province",
        id="target-same-province",
    ),
    pytest.param(
        setting("target_bureau", ""),
        "target_bureau",
        "MISSING_FIELD",
        "is required",
        id="target-missing",
    ),
    pytest.param(
        setting("holder.name", ""), "holder.name", "MISSING_FIELD", "is required", id="holder-name"
    ),
    pytest.param(
        setting("holder.uscc", BAD_USCC),
        "holder.uscc",
        "USCC_CHECK_DIGIT",
        f"expected '{USCC[17]}'",
        id="uscc-check",
    ),
    pytest.param(
        setting("holder.uscc", USCC[:9] + "I" + USCC[10:]),
        "holder.uscc",
        "USCC_CHARSET",
        "never used",
        id="uscc-letter-i",
    ),
    pytest.param(
        setting("holder.uscc", USCC[:17]),
        "holder.uscc",
        "USCC_LENGTH",
        "expected 18",
        id="uscc-short",
    ),
    pytest.param(
        setting("holder.uscc", ...),
        "holder.uscc",
        "MISSING_FIELD",
        "is required",
        id="uscc-missing",
    ),
    pytest.param(
        setting("certificate_nos", []),
        "certificate_nos",
        "MISSING_FIELD",
        "required for a assistance request",
        id="certs-empty",
    ),
    pytest.param(
        setting("certificate_nos", [""]),
        "certificate_nos[0]",
        "MISSING_FIELD",
        "is required",
        id="cert-empty",
    ),
    pytest.param(
        setting("certificate_nos", [2025]),
        "certificate_nos[0]",
        "INVALID_FIELD",
        "must be a string",
        id="cert-int",
    ),
    pytest.param(
        setting("certificate_nos", ["2025 31"]),
        "certificate_nos[0]",
        "INVALID_FIELD",
        "whitespace",
        id="cert-space",
    ),
    pytest.param(
        setting("certificate_nos", ["A1", "A1"]),
        "certificate_nos[1]",
        "INVALID_FIELD",
        "repeats certificate_nos[0]",
        id="cert-duplicate",
    ),
    pytest.param(
        setting("certificate_nos", "A1"),
        "certificate_nos",
        "INVALID_FIELD",
        "must be a list",
        id="certs-string",
    ),
    pytest.param(
        setting("products", []),
        "products",
        "MISSING_FIELD",
        "at least one product",
        id="products-empty",
    ),
    pytest.param(
        setting("products[0].quantity", 0),
        "products[0].quantity",
        "INVALID_FIELD",
        "must be positive, got 0",
        id="quantity-zero",
    ),
    pytest.param(
        setting("products[1].quantity", -3),
        "products[1].quantity",
        "INVALID_FIELD",
        "must be positive, got -3",
        id="quantity-negative",
    ),
    pytest.param(
        setting("products[0].quantity", 1.5),
        "products[0].quantity",
        "INVALID_FIELD",
        "whole number",
        id="quantity-float",
    ),
    pytest.param(
        setting("products[0].quantity", True),
        "products[0].quantity",
        "INVALID_FIELD",
        "whole number",
        id="quantity-bool",
    ),
    pytest.param(
        setting("products[0].quantity", ...),
        "products[0].quantity",
        "MISSING_FIELD",
        "is required",
        id="quantity-missing",
    ),
    pytest.param(
        setting("products[0].hs_code", "8473"),
        "products[0].hs_code",
        "INVALID_FIELD",
        "6 to 10 digits",
        id="hs-short",
    ),
    pytest.param(
        setting("products[0].hs_code", "84733012345"),
        "products[0].hs_code",
        "INVALID_FIELD",
        "6 to 10 digits",
        id="hs-long",
    ),
    pytest.param(
        setting("products[0].hs_code", "8473a0"),
        "products[0].hs_code",
        "INVALID_FIELD",
        "6 to 10 digits",
        id="hs-letter",
    ),
    pytest.param(
        setting("products[0].hs_code", 847330),
        "products[0].hs_code",
        "INVALID_FIELD",
        "leading zeros",
        id="hs-int",
    ),
    pytest.param(
        setting("products[0].name", ""),
        "products[0].name",
        "MISSING_FIELD",
        "is required",
        id="product-name",
    ),
    pytest.param(
        setting("products[0].model", ...),
        "products[0].model",
        "MISSING_FIELD",
        "is required",
        id="product-model",
    ),
    pytest.param(
        setting("products[0].brand", "x"),
        "products[0].brand",
        "UNKNOWN_FIELD",
        "unknown field",
        id="product-unknown-key",
    ),
    pytest.param(
        setting("use_type", "sale"),
        "use_type",
        "INVALID_FIELD",
        "is not one of research_testing",
        id="use-unknown",
    ),
    pytest.param(
        setting("use_type", ...), "use_type", "MISSING_FIELD", "is required", id="use-missing"
    ),
    pytest.param(
        setting("place_of_use", ""),
        "place_of_use",
        "MISSING_FIELD",
        "is required",
        id="place-missing",
    ),
    pytest.param(
        setting("place_of_use", "a\nb"),
        "place_of_use",
        "INVALID_FIELD",
        "a line break",
        id="place-newline",
    ),
    pytest.param(
        setting("place_of_use", "x" * 501),
        "place_of_use",
        "INVALID_FIELD",
        "at most 500",
        id="place-long",
    ),
    pytest.param(
        setting("questions", []),
        "questions",
        "MISSING_FIELD",
        "at least one question",
        id="questions-empty",
    ),
    pytest.param(
        setting("questions[1].id", "q1"),
        "questions[1].id",
        "INVALID_FIELD",
        "repeats questions[0]",
        id="question-duplicate",
    ),
    pytest.param(
        setting("questions[1].id", "q 2"),
        "questions[1].id",
        "INVALID_FIELD",
        "letters, digits",
        id="question-id",
    ),
    pytest.param(
        setting("questions[1].text", ""),
        "questions[1].text",
        "MISSING_FIELD",
        "is required",
        id="question-text",
    ),
    pytest.param(
        setting("attachments[0].sha256", DIGEST_OF_OTHER),
        "attachments[0].sha256",
        "ATTACHMENT_DIGEST_MISMATCH",
        "does not match the content",
        id="att-digest",
    ),
    pytest.param(
        setting("attachments[0].sha256", "zz"),
        "attachments[0].sha256",
        "INVALID_FIELD",
        "64 hexadecimal",
        id="att-digest-hex",
    ),
    pytest.param(
        setting("attachments[0].size", 3),
        "attachments[0].size",
        "ATTACHMENT_SIZE_MISMATCH",
        "declares 3 bytes",
        id="att-size",
    ),
    pytest.param(
        setting("attachments[0].name", "../etc/passwd"),
        "attachments[0].name",
        "INVALID_FIELD",
        "plain file name",
        id="att-name-path",
    ),
    pytest.param(
        setting("attachments[0].name", ""),
        "attachments[0].name",
        "MISSING_FIELD",
        "is required",
        id="att-name-missing",
    ),
    pytest.param(
        setting("attachments[0].media_type", "pdf"),
        "attachments[0].media_type",
        "INVALID_FIELD",
        "is not a media type",
        id="att-media-type",
    ),
    pytest.param(
        setting("attachments[0].content", "text"),
        "attachments[0].content",
        "INVALID_FIELD",
        "must be bytes",
        id="att-content-str",
    ),
    pytest.param(
        setting("attachments[0].content", ...),
        "attachments[0].content",
        "MISSING_FIELD",
        "or give a path",
        id="att-content-missing",
    ),
    pytest.param(
        setting("attachments[0].path", "a.pdf"),
        "attachments[0]",
        "INVALID_FIELD",
        "not both",
        id="att-content-and-path",
    ),
    pytest.param(
        setting("requested_reply_by", "2026-03-01"),
        "requested_reply_by",
        "INVALID_FIELD",
        "is not after today (2026-03-01)",
        id="reply-by-today",
    ),
    pytest.param(
        setting("requested_reply_by", "2026-02-20"),
        "requested_reply_by",
        "INVALID_FIELD",
        "is not after today",
        id="reply-by-past",
    ),
    pytest.param(
        setting("requested_reply_by", "2026/03/10"),
        "requested_reply_by",
        "INVALID_FIELD",
        "YYYY-MM-DD",
        id="reply-by-format",
    ),
    pytest.param(
        setting("requested_reply_by", "2026-02-30"),
        "requested_reply_by",
        "INVALID_FIELD",
        "not a valid calendar date",
        id="reply-by-invalid",
    ),
    pytest.param(
        setting("requested_reply_by", dt.datetime(2026, 3, 9, tzinfo=TZ)),
        "requested_reply_by",
        "INVALID_FIELD",
        "not a date and time",
        id="reply-by-datetime",
    ),
    pytest.param(
        setting("linked_request_id", RID),
        "linked_request_id",
        "INVALID_FIELD",
        "linked to itself",
        id="linked-self",
    ),
    pytest.param(
        setting("linked_request_id", "x"),
        "linked_request_id",
        "INVALID_FIELD",
        "is not a UUID",
        id="linked-not-uuid",
    ),
    pytest.param(
        setting("holdr", {}), "holdr", "UNKNOWN_FIELD", "expected one of", id="unknown-key"
    ),
    pytest.param(
        setting("holder.code", "x"),
        "holder.code",
        "UNKNOWN_FIELD",
        "unknown field",
        id="holder-unknown-key",
    ),
    pytest.param(
        setting("holder", "acme"),
        "holder",
        "INVALID_FIELD",
        "must be a table",
        id="holder-not-table",
    ),
    pytest.param(
        setting("background", "x\x00y"),
        "background",
        "INVALID_FIELD",
        "control character U+0000",
        id="background-control",
    ),
]


@pytest.mark.parametrize(("mutate", "field", "reason", "fragment"), FIELD_RULES)
def test_each_field_rule_is_refused_with_a_specific_message(
    mutate: Mutation, field: str, reason: str, fragment: str
) -> None:
    data = valid_data()
    mutate(data)
    with pytest.raises(FieldError) as exc:
        parse_request(data, today=TODAY)
    assert exc.value.field == field
    assert exc.value.reason == reason
    assert str(exc.value).startswith(f"{field}: ")
    assert fragment in str(exc.value)


def test_attachment_size_limit() -> None:
    with pytest.raises(FieldError) as exc:
        parse_request(valid_data(), today=TODAY, max_attachment_bytes=10)
    assert exc.value.field == "attachments[0].content"
    assert exc.value.reason == "ATTACHMENT_TOO_LARGE"
    assert f"{len(PDF)} bytes exceeds the limit of 10 bytes" in str(exc.value)


def test_duplicate_attachment_names_are_refused() -> None:
    data = valid_data()
    data["attachments"].append(dict(data["attachments"][0]))
    with pytest.raises(FieldError, match=r"attachments\[1\]\.name: 'record.pdf' repeats"):
        parse_request(data, today=TODAY)


def test_attachment_path_needs_a_reader() -> None:
    data = valid_data()
    data["attachments"] = [{"path": "a.pdf", "media_type": "application/pdf"}]
    with pytest.raises(FieldError, match=r"attachments\[0\]\.path: files cannot be read here"):
        parse_request(data, today=TODAY)


def test_requesting_bureau_must_be_under_the_sending_node() -> None:
    with pytest.raises(FieldError) as exc:
        parse_request(valid_data(), today=TODAY, requesting_node="330000")
    assert exc.value.field == "requesting_bureau" and exc.value.reason == "WRONG_NODE"


def test_not_a_mapping_is_refused() -> None:
    with pytest.raises(FieldError, match="request: must be a table, got list"):
        parse_request([], today=TODAY)  # type: ignore[arg-type]


@settings(max_examples=150, deadline=None)
@given(position=st.integers(0, 17), shift=st.integers(1, 30))
def test_uscc_with_one_character_changed_is_refused(position: int, shift: int) -> None:
    changed = ALPHABET[(ALPHABET.index(USCC[position]) + shift) % 31]
    data = valid_data()
    data["holder"]["uscc"] = USCC[:position] + changed + USCC[position + 1 :]
    with pytest.raises(FieldError) as exc:
        parse_request(data, today=TODAY)
    assert exc.value.field == "holder.uscc"
    assert exc.value.reason in {"USCC_CHECK_DIGIT", "USCC_DIVISION"}


def test_validation_errors_are_validation_errors() -> None:
    # The shell catches the project's family only; nothing here may leak a raw ValueError.
    for bad in ({"kind": 3}, {"requested_reply_by": 20260310}, {"questions": [7]}):
        data = valid_data()
        data.update(bad)
        with pytest.raises(ValidationError):
            parse_request(data, today=TODAY)


# --------------------------------------------------------------------------------------------
# Requests on the wire


def test_request_round_trips_through_the_wire_message() -> None:
    request = make_request()
    assert request_from_message(request.to_message()) == request
    wire = pb.Request.FromString(request.to_message().SerializeToString(deterministic=True))
    assert request_from_message(wire) == request


def test_peer_request_gets_the_same_rules() -> None:
    message = make_request().to_message()
    message.holder.uscc = BAD_USCC
    with pytest.raises(FieldError) as exc:
        request_from_message(message)
    assert exc.value.field == "holder.uscc" and exc.value.reason == "USCC_CHECK_DIGIT"


def test_peer_request_with_passed_reply_date_is_still_accepted() -> None:
    # The date was checked when the request was made; apply() drops it if it has passed.
    message = make_request().to_message()
    message.requested_reply_by = "2026-01-05"
    assert request_from_message(message).requested_reply_by == D(2026, 1, 5)


@pytest.mark.parametrize(
    ("mutate", "field", "fragment"),
    [
        pytest.param(lambda m: setattr(m, "kind", 0), "kind", "is required", id="kind-unspecified"),
        pytest.param(
            lambda m: setattr(m, "kind", 99), "kind", "unknown value 99", id="kind-unknown"
        ),
        pytest.param(
            lambda m: setattr(m, "use_type", 0), "use_type", "is required", id="use-unspecified"
        ),
        pytest.param(
            lambda m: setattr(m.attachments[0], "sha256", b""),
            "attachments[0].sha256",
            "must be 32 bytes",
            id="att-digest-missing",
        ),
        pytest.param(
            lambda m: setattr(m.attachments[0], "content", PDF + b"!"),
            "attachments[0].size",
            "declares",
            id="att-tampered",
        ),
        pytest.param(
            lambda m: setattr(m.products[0], "quantity", 0),
            "products[0].quantity",
            "must be positive",
            id="quantity-zero",
        ),
        pytest.param(
            lambda m: setattr(m, "target_bureau", "310104"),
            "target_bureau",
            "own province",
            id="same-province",
        ),
    ],
)
def test_peer_request_refusals(
    mutate: Callable[[pb.Request], None], field: str, fragment: str
) -> None:
    message = make_request().to_message()
    mutate(message)
    with pytest.raises(FieldError) as exc:
        request_from_message(message)
    assert exc.value.field == field and fragment in str(exc.value)


# --------------------------------------------------------------------------------------------
# The transition table, exhaustively

ASSIGNEE = Contact("王伟", phone="0512-6868 0000")
FINDINGS = (
    Finding("q1", "All 20 boards were installed in customers' servers.", Conclusion.CONFIRMED),
    Finding("stock", "None left.", Conclusion.NOT_CONFIRMED),
)
SAMPLES: dict[str, Event] = {
    "sent": Sent(),
    "delivered": Delivered(RECEIVED),
    "accepted": Accepted("320500", ASSIGNEE),
    "declined": Declined(DeclineReason.OUT_OF_SCOPE, "Not covered by the mechanism."),
    "withdrawn": Withdrawn("Holder rectified on its own."),
    "progress_reported": ProgressReported("Visited the site on 5 March."),
    "extension_requested": ExtensionRequested(
        "The holder's warehouse is closed.", additional_days=10
    ),
    "extension_decided": ExtensionDecided(granted=True),
    "replied": Replied(findings=FINDINGS, follow_ups=(FollowUp(FollowUpAction.NONE),)),
    "closed": Closed("Thank you."),
}
R: Actor = "requester"
P: Actor = "responder"

# How each state variant is reached from DRAFT: (event, actor) steps.
PATHS: dict[str, list[tuple[str, Actor]]] = {
    "DRAFT": [],
    "SENT": [("sent", R)],
    "DELIVERED": [("sent", R), ("delivered", P)],
    "ACCEPTED": [("sent", R), ("delivered", P), ("accepted", P)],
    "ACCEPTED+pending": [
        ("sent", R),
        ("delivered", P),
        ("accepted", P),
        ("extension_requested", P),
    ],
    "REPLIED": [("sent", R), ("delivered", P), ("accepted", P), ("replied", P)],
    "CLOSED": [("sent", R), ("delivered", P), ("accepted", P), ("replied", P), ("closed", R)],
    "DECLINED": [("sent", R), ("delivered", P), ("declined", P)],
    "WITHDRAWN": [("sent", R), ("delivered", P), ("withdrawn", R)],
}

# The specification, written independently of TRANSITIONS: (from, event, actor) -> to.
ALLOWED: dict[tuple[str, str, Actor], str] = {
    ("DRAFT", "sent", R): "SENT",
    ("SENT", "delivered", P): "DELIVERED",
    ("DELIVERED", "accepted", P): "ACCEPTED",
    ("DELIVERED", "declined", P): "DECLINED",
    ("ACCEPTED", "declined", P): "DECLINED",
    ("ACCEPTED+pending", "declined", P): "DECLINED",
    ("DELIVERED", "withdrawn", R): "WITHDRAWN",
    ("ACCEPTED", "withdrawn", R): "WITHDRAWN",
    ("ACCEPTED+pending", "withdrawn", R): "WITHDRAWN",
    ("ACCEPTED", "progress_reported", P): "ACCEPTED",
    ("ACCEPTED+pending", "progress_reported", P): "ACCEPTED+pending",
    ("ACCEPTED", "extension_requested", P): "ACCEPTED+pending",
    ("ACCEPTED+pending", "extension_decided", R): "ACCEPTED",
    ("ACCEPTED", "replied", P): "REPLIED",
    ("ACCEPTED+pending", "replied", P): "REPLIED",
    ("REPLIED", "closed", R): "CLOSED",
}


def variant(state: RequestState) -> str:
    name = state.status.name
    return name + "+pending" if state.extension_pending else name


def reach(name: str, request: Request = REQUEST) -> RequestState:
    state = start(request)
    for index, (event, actor) in enumerate(PATHS[name]):
        state = apply(
            state, SAMPLES[event], actor=actor, at=AT + dt.timedelta(minutes=index), calendar=CAL
        )
    assert variant(state) == name
    return state


COMBINATIONS = [(s, e, a) for s in PATHS for e in SAMPLES for a in ACTORS]


def test_table_sizes() -> None:
    assert len(COMBINATIONS) == 9 * 10 * 2
    assert len(ALLOWED) == 16
    assert set(TRANSITIONS) == set(SAMPLES)


@pytest.mark.parametrize(
    ("source", "target", "key"), [(k[0], v, k) for k, v in ALLOWED.items()], ids=str
)
def test_every_allowed_transition(source: str, target: str, key: tuple[str, str, Actor]) -> None:
    _, event, actor = key
    before = reach(source)
    after = apply(before, SAMPLES[event], actor=actor, at=AT + dt.timedelta(hours=1), calendar=CAL)
    assert variant(after) == target
    assert after.version == before.version + 1
    last = after.history[-1]
    assert (last.event, last.actor, last.status) == (event, actor, after.status)
    assert last.at == (AT + dt.timedelta(hours=1)).astimezone(dt.UTC)


DISALLOWED = [c for c in COMBINATIONS if c not in ALLOWED]


@pytest.mark.parametrize(
    ("source", "event", "actor"), DISALLOWED, ids=["-".join(c) for c in DISALLOWED]
)
def test_every_disallowed_transition_is_refused(source: str, event: str, actor: Actor) -> None:
    before = reach(source)
    snapshot = before.to_dict()
    with pytest.raises(ValidationError) as exc:
        apply(before, SAMPLES[event], actor=actor, at=AT + dt.timedelta(hours=1), calendar=CAL)
    assert exc.value.reason == "INVALID_TRANSITION"
    message = str(exc.value)
    assert f"in state {before.status.name}" in message
    assert f"'{event}' from the {actor}" in message
    assert RID in message
    assert before.to_dict() == snapshot
    assert not allowed(before, event, actor)


def test_allowed_events_lists_exactly_the_table() -> None:
    for name in PATHS:
        expected = {(e, a) for (s, e, a) in ALLOWED if s == name}
        assert set(allowed_events(reach(name))) == expected, name


def test_final_states_allow_nothing() -> None:
    for name in ("CLOSED", "DECLINED", "WITHDRAWN"):
        state = reach(name)
        assert state.is_final and allowed_events(state) == ()


def test_refusal_message_says_who_may_send_it_and_when() -> None:
    with pytest.raises(ValidationError) as exc:
        apply(
            reach("ACCEPTED+pending"), SAMPLES["extension_requested"], actor=P, at=AT, calendar=CAL
        )
    assert str(exc.value) == (
        f"request {RID}: 'extension_requested' from the responder is not allowed in state "
        "ACCEPTED with an extension request pending; only the responder sends "
        "'extension_requested', in state ACCEPTED with no extension request pending"
    )


def test_unknown_actor_and_naive_time_are_refused() -> None:
    state = reach("DRAFT")
    with pytest.raises(ValidationError) as exc:
        apply(state, Sent(), actor="customs", at=AT, calendar=CAL)  # type: ignore[arg-type]
    assert exc.value.reason == "INVALID_ACTOR"
    with pytest.raises(ValidationError) as exc:
        apply(state, Sent(), actor=R, at=dt.datetime(2026, 3, 3, 10), calendar=CAL)
    assert exc.value.reason == "INVALID_EVENT" and "time-zone-aware" in str(exc.value)
    with pytest.raises(ValidationError) as exc:
        apply(reach("SENT"), Delivered(dt.datetime(2026, 3, 2)), actor=P, at=AT, calendar=CAL)
    assert exc.value.reason == "INVALID_EVENT" and "delivered.received_at" in str(exc.value)


# --------------------------------------------------------------------------------------------
# Event content


def refused(state: RequestState, event: Event, actor: Actor) -> FieldError:
    snapshot = state.to_dict()
    with pytest.raises(FieldError) as exc:
        apply(state, event, actor=actor, at=AT, calendar=CAL)
    assert exc.value.reason == "INVALID_EVENT"
    assert state.to_dict() == snapshot
    return exc.value


@pytest.mark.parametrize(
    ("source", "event", "actor", "field", "fragment"),
    [
        pytest.param(
            "DELIVERED",
            Accepted("330100", ASSIGNEE),
            P,
            "accepted.assigned_bureau",
            "330000 Zhejiang",
            id="assign-other-province",
        ),
        pytest.param(
            "DELIVERED",
            Accepted("440300", ASSIGNEE),
            P,
            "accepted.assigned_bureau",
            "Guangdong",
            id="assign-foreign",
        ),
        pytest.param(
            "DELIVERED",
            Accepted("320500", Contact("王伟")),
            P,
            "accepted.assignee",
            "phone number or an e-mail",
            id="assignee-unreachable",
        ),
        pytest.param(
            "DELIVERED",
            Declined(DeclineReason.OTHER, " "),
            P,
            "declined.reason",
            "is required",
            id="decline-no-reason",
        ),
        pytest.param(
            "DELIVERED",
            Declined(DeclineReason.OUT_OF_SCOPE, "No.", "330100"),
            P,
            "declined.suggested_bureau",
            "only be given with reason_code wrong_jurisdiction",
            id="suggest-wrong-code",
        ),
        pytest.param(
            "DELIVERED",
            Declined(DeclineReason.WRONG_JURISDICTION, "Wuxi.", "320200"),
            P,
            "declined.suggested_bureau",
            "assign it there instead",
            id="suggest-same-node",
        ),
        pytest.param(
            "DELIVERED",
            Declined(DeclineReason.WRONG_JURISDICTION, "No.", "999999"),
            P,
            "declined.suggested_bureau",
            "not a GB/T 2260",
            id="suggest-unknown",
        ),
        pytest.param(
            "ACCEPTED",
            ProgressReported(""),
            P,
            "progress_reported.text",
            "is required",
            id="progress-empty",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("busy"),
            P,
            "extension_requested",
            "either additional_days or new_due_date",
            id="extension-neither",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("busy", 5, D(2026, 4, 1)),
            P,
            "extension_requested",
            "either additional_days or new_due_date",
            id="extension-both",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("busy", additional_days=0),
            P,
            "extension_requested.additional_days",
            "between 1 and 365",
            id="extension-zero-days",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("busy", additional_days=MAX_EXTENSION_DAYS + 1),
            P,
            "extension_requested.additional_days",
            "between 1 and 365",
            id="extension-too-long",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("busy", new_due_date=D(2026, 3, 17)),
            P,
            "extension_requested.new_due_date",
            "is not after the current due date 2026-03-17",
            id="extension-not-later",
        ),
        pytest.param(
            "ACCEPTED",
            ExtensionRequested("", additional_days=5),
            P,
            "extension_requested.reason",
            "is required",
            id="extension-no-reason",
        ),
        pytest.param(
            "ACCEPTED+pending",
            ExtensionDecided(False, D(2026, 4, 1)),
            R,
            "extension_decided.new_due_date",
            "must be empty when refused",
            id="refused-with-date",
        ),
        pytest.param(
            "ACCEPTED+pending",
            ExtensionDecided(True, D(2026, 3, 16)),
            R,
            "extension_decided.new_due_date",
            "not after the current due date",
            id="granted-earlier",
        ),
        pytest.param(
            "ACCEPTED",
            Replied((Finding("q1", "x", Conclusion.CONFIRMED),), (FollowUp(FollowUpAction.NONE),)),
            P,
            "replied.findings",
            "no finding for question stock",
            id="reply-missing-question",
        ),
        pytest.param(
            "ACCEPTED",
            Replied(
                (
                    Finding("q1", "x", Conclusion.CONFIRMED),
                    Finding("q9", "x", Conclusion.CONFIRMED),
                ),
                (FollowUp(FollowUpAction.NONE),),
            ),
            P,
            "replied.findings[1].question_id",
            "'q9' is not a question of this request (q1, stock)",
            id="reply-unknown-question",
        ),
        pytest.param(
            "ACCEPTED",
            Replied(
                (
                    Finding("q1", "x", Conclusion.CONFIRMED),
                    Finding("q1", "y", Conclusion.CONFIRMED),
                ),
                (FollowUp(FollowUpAction.NONE),),
            ),
            P,
            "replied.findings[1].question_id",
            "answered again",
            id="reply-twice",
        ),
        pytest.param(
            "ACCEPTED",
            Replied(
                (
                    Finding("q1", "", Conclusion.CONFIRMED),
                    Finding("stock", "x", Conclusion.CONFIRMED),
                ),
                (FollowUp(FollowUpAction.NONE),),
            ),
            P,
            "replied.findings[0].finding",
            "is required",
            id="reply-empty-finding",
        ),
        pytest.param(
            "ACCEPTED",
            Replied(FINDINGS, ()),
            P,
            "replied.follow_ups",
            "what follow-up was taken",
            id="reply-no-follow-up",
        ),
        pytest.param(
            "ACCEPTED",
            Replied(
                FINDINGS,
                (
                    FollowUp(FollowUpAction.NONE),
                    FollowUp(FollowUpAction.INVESTIGATION, "case 2026-17"),
                ),
            ),
            P,
            "replied.follow_ups",
            "'none' cannot be combined",
            id="reply-none-and-more",
        ),
    ],
)
def test_event_content_is_checked(
    source: str, event: Event, actor: Actor, field: str, fragment: str
) -> None:
    error = refused(reach(source), event, actor)
    assert error.field == field
    assert fragment in str(error)


def test_reply_with_investigation_and_rectification() -> None:
    state = apply(
        reach("ACCEPTED"),
        Replied(
            FINDINGS,
            (
                FollowUp(FollowUpAction.RECTIFICATION, "by 2026-04-30"),
                FollowUp(FollowUpAction.INVESTIGATION, "case 2026-17"),
            ),
            evidence=(Attachment.of("photo.jpg", "image/jpeg", b"\xff\xd8"),),
        ),
        actor=P,
        at=AT,
        calendar=CAL,
    )
    assert state.status is RequestStatus.REPLIED and not state.awaiting_reply


def test_accept_may_assign_another_bureau_of_the_same_province() -> None:
    state = apply(reach("DELIVERED"), Accepted("320200", ASSIGNEE), actor=P, at=AT, calendar=CAL)
    assert state.assigned_bureau == "320200"


# --------------------------------------------------------------------------------------------
# Due dates


@pytest.mark.parametrize(
    ("received_at", "due"),
    [
        pytest.param(sh(2026, 3, 2), D(2026, 3, 17), id="ordinary"),
        pytest.param(sh(2026, 3, 6), D(2026, 3, 23), id="last-day-saturday-rolls-to-monday"),
        pytest.param(sh(2026, 9, 20), D(2026, 10, 8), id="last-day-in-national-day"),
        pytest.param(
            dt.datetime(2026, 3, 1, 17, 30, tzinfo=dt.UTC),
            D(2026, 3, 17),
            id="utc-evening-is-next-shanghai-day",
        ),
        pytest.param(sh(2026, 3, 2, 23, 59), D(2026, 3, 17), id="late-evening"),
    ],
)
def test_reply_is_due_15_days_after_the_receipt(received_at: dt.datetime, due: D) -> None:
    state = apply(reach("SENT"), Delivered(received_at), actor=P, at=received_at, calendar=CAL)
    assert state.due is not None and state.due.due_date == due
    assert state.due == day_period(received_at, REPLY_PERIOD_DAYS, CAL)
    assert state.received_at == received_at.astimezone(dt.UTC)
    assert state.awaiting_reply


@pytest.mark.parametrize(
    ("requested", "due", "recorded"),
    [
        pytest.param(D(2026, 3, 10), D(2026, 3, 10), D(2026, 3, 10), id="earlier-date-honoured"),
        pytest.param(D(2026, 3, 31), D(2026, 3, 17), D(2026, 3, 31), id="later-date-has-no-effect"),
        pytest.param(D(2026, 3, 2), D(2026, 3, 17), None, id="date-passed-before-delivery"),
    ],
)
def test_requested_reply_date(requested: D, due: D, recorded: D | None) -> None:
    request = validate_request(replace(REQUEST, requested_reply_by=requested))
    state = reach("DELIVERED", request)
    assert state.due is not None
    assert state.due.due_date == due
    assert state.due.requested_date == recorded


def extended(event: ExtensionRequested, decision: ExtensionDecided) -> RequestState:
    state = apply(reach("ACCEPTED"), event, actor=P, at=AT, calendar=CAL)
    assert state.extension_pending and state.pending_extension == event
    return apply(state, decision, actor=R, at=AT, calendar=CAL)


@pytest.mark.parametrize(
    ("event", "decision", "due"),
    [
        pytest.param(
            ExtensionRequested("busy", additional_days=10),
            ExtensionDecided(True),
            D(2026, 3, 27),
            id="days",
        ),
        pytest.param(
            ExtensionRequested("busy", additional_days=11),
            ExtensionDecided(True),
            D(2026, 3, 30),
            id="days-roll-over-weekend",
        ),
        pytest.param(
            ExtensionRequested("busy", new_due_date=D(2026, 4, 1)),
            ExtensionDecided(True),
            D(2026, 4, 1),
            id="fixed-date",
        ),
        pytest.param(
            ExtensionRequested("busy", new_due_date=D(2026, 3, 28)),
            ExtensionDecided(True),
            D(2026, 3, 28),
            id="fixed-saturday-as-agreed",
        ),
        pytest.param(
            ExtensionRequested("busy", additional_days=30),
            ExtensionDecided(True, D(2026, 3, 25)),
            D(2026, 3, 25),
            id="granted-other-date",
        ),
        pytest.param(
            ExtensionRequested("busy", additional_days=10),
            ExtensionDecided(False, reason="No."),
            D(2026, 3, 17),
            id="refused",
        ),
    ],
)
def test_extension_moves_the_due_date(
    event: ExtensionRequested, decision: ExtensionDecided, due: D
) -> None:
    state = extended(event, decision)
    assert not state.extension_pending
    assert state.due is not None and state.due.due_date == due
    assert state.history[-1].due_date == due
    # A granted date survives recomputation (e.g. after a schedule is loaded).
    assert recompute(state.due, CAL).due_date == due


def test_extension_is_counted_from_the_requested_earlier_date() -> None:
    request = make_request(requested_reply_by=D(2026, 3, 10))
    state = reach("ACCEPTED", request)
    state = apply(
        state, ExtensionRequested("busy", additional_days=5), actor=P, at=AT, calendar=CAL
    )
    state = apply(state, ExtensionDecided(True), actor=R, at=AT, calendar=CAL)
    assert state.due is not None and state.due.due_date == D(2026, 3, 16)


def test_both_sides_see_the_same_new_due_date() -> None:
    # The requester applies its own events and the responder's as they arrive; the responder
    # does the same from the received request: the same events in the same order.
    events: list[tuple[Event, Actor, dt.datetime]] = [
        (Sent(), R, sh(2026, 3, 2, 9)),
        (Delivered(RECEIVED), P, RECEIVED),
        (SAMPLES["accepted"], P, sh(2026, 3, 3)),
        (ExtensionRequested("busy", additional_days=10), P, sh(2026, 3, 12)),
        (ExtensionDecided(True), R, sh(2026, 3, 13)),
    ]
    requester = replay(start(make_request(requested_reply_by=None)), events, CAL)
    responder = replay(start(request_from_message(REQUEST.to_message())), events, CAL)
    assert requester == responder
    assert requester.to_dict() == responder.to_dict()
    assert responder.due is not None and responder.due.due_date == D(2026, 3, 27)


# --------------------------------------------------------------------------------------------
# Declines and linked requests


def test_wrong_jurisdiction_creates_a_linked_request() -> None:
    declined = apply(
        reach("DELIVERED"),
        Declined(DeclineReason.WRONG_JURISDICTION, "Used in Hangzhou.", "330100"),
        actor=P,
        at=AT,
        calendar=CAL,
    )
    assert declined.suggested_bureau == "330100"
    assert declined.decline_reason is DeclineReason.WRONG_JURISDICTION
    new = linked_request(REQUEST, declined, request_id=OTHER_ID, today=TODAY)
    assert new.target_bureau == "330100" and new.linked_request_id == RID
    assert new.request_id == OTHER_ID and new.requested_reply_by is None
    assert new.questions == REQUEST.questions


def test_linked_request_needs_a_suggestion_and_another_province() -> None:
    with pytest.raises(ValidationError) as exc:
        linked_request(REQUEST, reach("DECLINED"), request_id=OTHER_ID, today=TODAY)
    assert exc.value.reason == "INVALID_TRANSITION"
    home = apply(
        reach("DELIVERED"),
        Declined(DeclineReason.WRONG_JURISDICTION, "Used in Shanghai itself.", "310104"),
        actor=P,
        at=AT,
        calendar=CAL,
    )
    with pytest.raises(FieldError) as field_exc:
        linked_request(REQUEST, home, request_id=OTHER_ID, today=TODAY)
    assert field_exc.value.reason == "SAME_PROVINCE"


# --------------------------------------------------------------------------------------------
# Events on the wire


WIRE_EVENTS: list[Event] = [
    SAMPLES["accepted"],
    Declined(DeclineReason.WRONG_JURISDICTION, "Used in Hangzhou.", "330100"),
    SAMPLES["declined"],
    SAMPLES["withdrawn"],
    ProgressReported("Visited.", (Attachment.of("visit.pdf", "application/pdf", PDF),)),
    ExtensionRequested("busy", additional_days=10),
    ExtensionRequested("busy", new_due_date=D(2026, 4, 1)),
    ExtensionDecided(True, D(2026, 4, 1), "ok"),
    ExtensionDecided(False),
    Replied(
        FINDINGS,
        (FollowUp(FollowUpAction.INVESTIGATION, "case 17"),),
        (Attachment.of("photo.jpg", "image/jpeg", b"\xff\xd8"),),
        "Summary.",
    ),
    SAMPLES["closed"],
]


@pytest.mark.parametrize("event", WIRE_EVENTS, ids=lambda e: e.name)
def test_events_round_trip_through_wire_messages(event: Event) -> None:
    message = event_to_message(RID, event)
    parsed = type(message).FromString(message.SerializeToString(deterministic=True))
    assert event_from_message(parsed) == (RID, event)


def test_sent_and_delivered_have_no_message_of_their_own() -> None:
    for event in (Sent(), Delivered(RECEIVED)):
        with pytest.raises(ValidationError, match="has no message of its own"):
            event_to_message(RID, event)


def test_peer_event_refusals() -> None:
    with pytest.raises(ValidationError) as exc:
        event_from_message(pb.Bulletin(bulletin_id=BULLETIN_ID))
    assert exc.value.reason == "UNSUPPORTED_KIND"
    with pytest.raises(FieldError, match=r"accepted\.request_id: 'x' is not a UUID"):
        event_from_message(pb.RequestAccepted(request_id="x", assigned_bureau="320500"))
    with pytest.raises(FieldError, match=r"declined\.reason_code: is required"):
        event_from_message(pb.RequestDeclined(request_id=RID, reason="x"))
    tampered = event_to_message(RID, WIRE_EVENTS[4])
    assert isinstance(tampered, pb.ProgressReport)
    tampered.attachments[0].sha256 = hashlib.sha256(b"other").digest()
    with pytest.raises(FieldError) as field_exc:
        event_from_message(tampered)
    assert field_exc.value.field == "progress_reported.attachments[0].sha256"
    assert field_exc.value.reason == "ATTACHMENT_DIGEST_MISMATCH"
    with pytest.raises(FieldError, match="exceeds the limit of 4 bytes"):
        event_from_message(event_to_message(RID, WIRE_EVENTS[4]), max_attachment_bytes=4)


def test_peer_extension_without_an_amount_is_refused_by_apply() -> None:
    rid, event = event_from_message(pb.ExtensionRequested(request_id=RID, reason="busy"))
    assert rid == RID
    error = refused(reach("ACCEPTED"), event, P)
    assert "either additional_days or new_due_date" in str(error)


# --------------------------------------------------------------------------------------------
# Serialisation


@pytest.mark.parametrize("name", list(PATHS))
def test_state_round_trips_through_json(name: str) -> None:
    state = reach(name)
    assert RequestState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


@pytest.mark.parametrize(
    ("mutate", "fragment"),
    [
        (lambda d: d.pop("status"), "missing key 'status'"),
        (lambda d: d.update(status="lost"), "bad value"),
        (lambda d: d.update(question_ids="q1"), "expected a list"),
        (lambda d: d["history"][0].update(actor="customs"), "unknown actor"),
        (lambda d: d["history"][0].update(at="2026-03-03T10:00:00"), "no time zone"),
        (lambda d: d["due"].update(due_date="2026-03-01"), "ends_at is not the end of due_date"),
    ],
)
def test_corrupt_state_records_are_refused(
    mutate: Callable[[dict[str, Any]], Any], fragment: str
) -> None:
    data = reach("ACCEPTED").to_dict()
    mutate(data)
    with pytest.raises(ValidationError) as exc:
        RequestState.from_dict(data)
    assert exc.value.reason == "INVALID_STATE_RECORD"
    assert fragment in str(exc.value)


# --------------------------------------------------------------------------------------------
# Property-based: random event sequences on two replicas

INSTANTS = st.datetimes(
    min_value=dt.datetime(2026, 1, 1), max_value=dt.datetime(2026, 12, 1), timezones=st.just(TZ)
)
DATES = st.dates(min_value=D(2026, 1, 1), max_value=D(2027, 2, 1))


STATIC_EVENTS: dict[str, st.SearchStrategy[Event]] = {
    "sent": st.just(Sent()),
    "delivered": st.builds(Delivered, INSTANTS),
    "accepted": st.sampled_from(
        [Accepted("320500", ASSIGNEE), Accepted("321000", ASSIGNEE), Accepted("330100", ASSIGNEE)]
    ),
    "declined": st.sampled_from(
        [
            SAMPLES["declined"],
            Declined(DeclineReason.WRONG_JURISDICTION, "Hangzhou.", "330100"),
            Declined(DeclineReason.WRONG_JURISDICTION, "Wuxi.", "320200"),
        ]
    ),
    "withdrawn": st.just(SAMPLES["withdrawn"]),
    "progress_reported": st.sampled_from([SAMPLES["progress_reported"], ProgressReported("")]),
    "replied": st.sampled_from([SAMPLES["replied"], Replied((), (FollowUp(FollowUpAction.NONE),))]),
    "closed": st.just(SAMPLES["closed"]),
}


def event_strategy(name: str, state: RequestState) -> st.SearchStrategy[Event]:
    """Events named ``name``, valid and invalid; extension dates lie near the current due date."""
    if name in STATIC_EVENTS:
        return STATIC_EVENTS[name]
    due = state.due.due_date if state.due is not None else D(2026, 6, 1)
    near = st.integers(-3, 40).map(lambda days: due + dt.timedelta(days=days))
    if name == "extension_requested":
        return st.one_of(
            st.integers(0, 40).map(lambda days: ExtensionRequested("busy", additional_days=days)),
            near.map(lambda date: ExtensionRequested("busy", new_due_date=date)),
        )
    return st.builds(ExtensionDecided, st.booleans(), st.none() | near)


ENDINGS = frozenset({RequestStatus.DECLINED, RequestStatus.WITHDRAWN})


@settings(max_examples=250, deadline=None)
@given(data=st.data(), requested=st.none() | DATES)
def test_replicas_applying_the_same_events_agree(data: st.DataObject, requested: D | None) -> None:
    request = replace(REQUEST, requested_reply_by=requested)
    state = start(request)
    accepted: list[tuple[Event, Actor, dt.datetime]] = []
    first_due: dt.date | None = None
    for _ in range(data.draw(st.integers(0, 30), label="steps")):
        # Mostly events the table allows now (so sequences reach every state), sometimes any
        # event from anyone (so refusals are exercised everywhere).
        options = allowed_events(state)
        ongoing = [o for o in options if TRANSITIONS[o[0]].target not in ENDINGS]
        if ongoing and data.draw(st.integers(0, 5)) > 1:
            name, actor = data.draw(st.sampled_from(ongoing))
        elif len(options) > 0 and data.draw(st.booleans()):
            name, actor = data.draw(st.sampled_from(options))
        else:
            name = data.draw(st.sampled_from(sorted(TRANSITIONS)))
            actor = data.draw(st.sampled_from(ACTORS))
        event = data.draw(event_strategy(name, state))
        at = data.draw(INSTANTS)
        snapshot = state.to_dict()
        permitted = allowed(state, event.name, actor)
        try:
            new = apply(state, event, actor=actor, at=at, calendar=CAL)
        except ValidationError as e:
            # A refused event changes nothing, and is refused for the reason the table gives.
            assert state.to_dict() == snapshot
            assert e.reason == ("INVALID_EVENT" if permitted else "INVALID_TRANSITION")
            continue
        assert permitted
        assert new.version == state.version + 1
        if state.due is not None:
            assert new.due is not None
            assert new.due.due_date >= state.due.due_date  # extensions only lengthen
        state = new
        accepted.append((event, actor, at))
        if state.is_final and data.draw(st.booleans()):
            break
        if first_due is None and state.due is not None:
            first_due = state.due.due_date
            assert state.received_at is not None
            legal = day_period(state.received_at, REPLY_PERIOD_DAYS, CAL)
            assert first_due <= legal.due_date
    event_names = [e.name for e, _, _ in accepted]
    other = replay(start(request_from_message(request.to_message())), accepted, CAL)
    assert other == state
    assert other.to_dict() == state.to_dict()
    assert RequestState.from_dict(json.loads(json.dumps(state.to_dict()))) == state
    assert [h.event for h in state.history] == event_names


@settings(max_examples=200, deadline=None)
@given(received=INSTANTS, offset=st.integers(-5, 30))
def test_due_date_is_the_earlier_of_the_legal_and_requested_dates(
    received: dt.datetime, offset: int
) -> None:
    received_date = received.astimezone(TZ).date()
    requested = received_date + dt.timedelta(days=offset)
    request = replace(REQUEST, requested_reply_by=requested)
    state = apply(
        apply(start(request), Sent(), actor=R, at=received, calendar=CAL),
        Delivered(received),
        actor=P,
        at=received,
        calendar=CAL,
    )
    legal = day_period(received, REPLY_PERIOD_DAYS, CAL).due_date
    assert state.due is not None
    expected = min(legal, requested) if requested > received_date else legal
    assert state.due.due_date == expected


# --------------------------------------------------------------------------------------------
# Bulletins

MEMBERS = ("310000", "320000", "330000", "340000")


def test_bulletin_reads_are_recorded_once_per_member() -> None:
    reads = BulletinReads.new(BULLETIN_ID, sender="320000", members=MEMBERS)
    assert reads.recipients == {"310000", "330000", "340000"}
    assert reads.unread == ("310000", "330000", "340000") and not reads.complete
    first = reads.record_read("330000", sh(2026, 3, 2))
    again = first.record_read("330000", sh(2026, 3, 5))
    assert again == first and again.read_at("330000") == sh(2026, 3, 2).astimezone(dt.UTC)
    done = again.record_read("310000", sh(2026, 3, 3)).record_read("340000", sh(2026, 3, 4))
    assert done.complete and done.unread == ()
    assert reads.unread == ("310000", "330000", "340000")  # the original is unchanged
    assert BulletinReads.from_dict(json.loads(json.dumps(done.to_dict()))) == done


@pytest.mark.parametrize(
    ("member", "reason"),
    [("320000", "NOT_A_RECIPIENT"), ("440000", "NOT_A_RECIPIENT"), ("330100", "NOT_A_RECIPIENT")],
)
def test_bulletin_read_by_a_non_recipient_is_refused(member: str, reason: str) -> None:
    reads = BulletinReads.new(BULLETIN_ID, sender="320000", members=MEMBERS)
    with pytest.raises(ValidationError) as exc:
        reads.record_read(member, sh(2026, 3, 2))
    assert exc.value.reason == reason


def test_bulletin_record_refusals() -> None:
    with pytest.raises(FieldError) as exc:
        BulletinReads.new(BULLETIN_ID, sender="320000", members=["320000"])
    assert exc.value.field == "members"
    with pytest.raises(FieldError) as exc:
        BulletinReads.new(BULLETIN_ID, sender="320000", members=["330100"])
    assert exc.value.reason == "NOT_A_MEMBER"
    data = BulletinReads.new(BULLETIN_ID, sender="320000", members=MEMBERS).to_dict()
    data["reads"] = [{"member": "320000", "at": "2026-03-02T02:00:00+00:00"}]
    with pytest.raises(ValidationError, match="non-recipients") as state_exc:
        BulletinReads.from_dict(data)
    assert state_exc.value.reason == "INVALID_STATE_RECORD"


def test_bulletin_parse_and_wire() -> None:
    bulletin = parse_bulletin(
        {
            "title": "2026 第一季度长三角 CCC 免办监督检查问题通报",
            "body": "Problems found in Q1:\n1. ...",
            "attachments": [
                {"name": "circular.pdf", "media_type": "application/pdf", "content": PDF}
            ],
        },
        bulletin_id=BULLETIN_ID,
    )
    assert isinstance(bulletin, Bulletin)
    assert bulletin_from_message(bulletin.to_message()) == bulletin
    with pytest.raises(FieldError, match="title: is required"):
        parse_bulletin({"body": "x"}, bulletin_id=BULLETIN_ID)
    with pytest.raises(FieldError, match="bulletin_id: is required"):
        parse_bulletin({"title": "t", "body": "x"})
    message = bulletin.to_message()
    message.attachments[0].content = b"changed"
    with pytest.raises(FieldError) as exc:
        bulletin_from_message(message)
    assert exc.value.field == "attachments[0].size"
