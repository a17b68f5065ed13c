"""federation.checklists and federation.inspection: the annexes as data, result records.

The checklists are compared with a verbatim copy of the guideline's annexes
(``tests/data/inspection/annexes-zh.txt``). Records are read from the example files in
``tests/data/inspection/`` and ``docs/examples/``; every refusal path is a row of a table that
mutates a valid record and names the field, the reason and a fragment of the message. Hypothesis
checks the invariants: any one sub-item dropped is named, key order never changes the canonical
bytes, canonical bytes round-trip, and arbitrary bad values surface as the project's own error.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
import random
import tomllib
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation import divisions
from federation.checklists import (
    BUSINESS_CATEGORY_ZH,
    CHECKLISTS,
    CLAUSE_ZH,
    FAST_TRACK_CHECKLIST,
    GENERAL_CHECKLIST,
    OTHER_FINDINGS_PROMPT_ZH,
    BusinessCategory,
    Checklist,
    ChecklistKind,
    checklist,
    kind_of_sub_item,
)
from federation.errors import ValidationError
from federation.inspection import (
    FORMAT,
    BusinessKey,
    InspectionResult,
    WriteOff,
    draft_assistance_requests,
    from_canonical_bytes,
    parse_result,
)
from federation.requests import FieldError, FollowUpAction, RequestKind, UseType, parse_request

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data" / "inspection"
DOC_EXAMPLE = ROOT / "docs" / "examples" / "inspection-result.toml"
TODAY = dt.date(2026, 3, 1)
"""The date the tests parse on; the docs example (inspected 2026-03-10) is parsed later."""
DOC_TODAY = dt.date(2026, 3, 12)
FUZZ = settings(max_examples=150, deadline=None)

Data = dict[str, Any]


def load(name: str) -> Data:
    with (DATA / name).open("rb") as f:
        return tomllib.load(f)


def general() -> Data:
    return load("general-valid.toml")


def fast_track() -> Data:
    return load("fast-track-valid.toml")


def doc_example() -> Data:
    with DOC_EXAMPLE.open("rb") as f:
        return tomllib.load(f)


def parse(data: Data, today: dt.date = TODAY) -> InspectionResult:
    return parse_result(data, today=today)


def refused(data: Data, today: dt.date = TODAY) -> FieldError:
    with pytest.raises(FieldError) as info:
        parse_result(data, today=today)
    return info.value


# --------------------------------------------------------------------------------------------
# The checklists


def test_annex_shapes() -> None:
    assert (GENERAL_CHECKLIST.annex, len(GENERAL_CHECKLIST.items)) == (1, 3)
    assert GENERAL_CHECKLIST.sub_item_ids == ("1.1", "1.2", "2.1", "2.2", "3.1", "3.2")
    assert (FAST_TRACK_CHECKLIST.annex, len(FAST_TRACK_CHECKLIST.items)) == (2, 4)
    assert FAST_TRACK_CHECKLIST.sub_item_ids == (
        *("1.1", "1.2", "1.3", "1.4"),
        *("2.1", "2.2", "3.1", "3.2", "4.1", "4.2"),
    )
    assert dict(CHECKLISTS) == {
        ChecklistKind.GENERAL: GENERAL_CHECKLIST,
        ChecklistKind.FAST_TRACK: FAST_TRACK_CHECKLIST,
    }
    assert kind_of_sub_item("1.3") == (ChecklistKind.FAST_TRACK,)
    assert kind_of_sub_item("2.1") == (ChecklistKind.GENERAL, ChecklistKind.FAST_TRACK)
    assert kind_of_sub_item("5.1") == ()
    with pytest.raises(KeyError):
        GENERAL_CHECKLIST.sub_item("4.1")


def _annex_texts() -> dict[int, str]:
    text = (DATA / "annexes-zh.txt").read_text(encoding="utf-8")
    annex1, annex2 = text.split("附件2")
    return {1: annex1, 2: annex2}


@pytest.mark.parametrize("annex", [GENERAL_CHECKLIST, FAST_TRACK_CHECKLIST], ids=lambda c: c.kind)
def test_annex_text_is_verbatim_and_in_form_order(annex: Checklist) -> None:
    text = _annex_texts()[annex.annex]
    assert annex.title_zh in text
    assert annex.account_label_zh.replace("\n", "") in text.replace("\n", "")
    position = 0
    for item in annex.items:
        position = text.index(item.text_zh, position)
        for sub in item.sub_items:
            position = text.index(sub.label_zh, position)
            position = text.index(sub.points_zh, position)
            assert sub.gloss_en.isascii() and sub.gloss_en
    for zh in CLAUSE_ZH.values():
        assert zh in text
    for label in BUSINESS_CATEGORY_ZH.values():
        assert f"□{label}" in text
    assert OTHER_FINDINGS_PROMPT_ZH in text
    assert list(BUSINESS_CATEGORY_ZH) == list(BusinessCategory)
    assert list(CLAUSE_ZH) == list(UseType)


def test_annexes_differ_where_the_guideline_does() -> None:
    # Same id, different question: an id only means something with its kind.
    assert GENERAL_CHECKLIST.sub_item("2.1").text_zh != FAST_TRACK_CHECKLIST.sub_item("2.1").text_zh
    # The two "不实情况" rows have different check points; item 3 of Annex 2 reads "有否".
    assert GENERAL_CHECKLIST.sub_item("1.2").points_zh != (
        FAST_TRACK_CHECKLIST.sub_item("2.2").points_zh
    )
    assert FAST_TRACK_CHECKLIST.items[2].text_zh.startswith("有否")
    assert GENERAL_CHECKLIST.items[1].text_zh.startswith("是否")
    assert GENERAL_CHECKLIST.describe("3.2").startswith(
        "Annex 1 item 3 sub-item 2: ②是否建立CCC免办进口产品管理台帐"
    )


# --------------------------------------------------------------------------------------------
# Valid records


def test_general_example_parses() -> None:
    result = parse(general())
    assert result.kind is ChecklistKind.GENERAL
    assert result.annex is GENERAL_CHECKLIST
    assert [r.sub_item for r in result.checklist] == list(GENERAL_CHECKLIST.sub_item_ids)
    assert result.nonconforming == ()
    assert result.inspecting_node == "330000"
    assert result.holder.certificates[1].write_off is WriteOff.DESTROYED
    assert result.holder.certificates[1].written_off_on == dt.date(2019, 12, 20)
    assert result.other_findings.used_elsewhere[0].bureau == "341300"
    assert result.follow_up[0].action is FollowUpAction.NONE
    assert result.business_key == BusinessKey("91330100MA27XK9L0C", dt.date(2026, 2, 26), "330100")
    assert str(result.business_key) == "91330100MA27XK9L0C/2026-02-26/330100"


def test_fast_track_example_parses() -> None:
    result = parse(fast_track())
    assert result.kind is ChecklistKind.FAST_TRACK
    assert len(result.checklist) == 10
    assert [r.sub_item for r in result.nonconforming] == ["4.1"]
    assert result.result_for("4.1").evidence == (
        "展会现场照片-01.jpg",
        "展会现场照片-02.jpg",
        "销售单据复印件.pdf",
    )
    assert "\n" in result.result_for("4.1").finding
    assert result.supersedes == "0b1e4f0a-5d2c-4a51-9b7e-0d5e2f3a4b6c"
    expert = result.inspectors[2]
    assert expert.exchanged_expert and expert.expert_province == "340000"
    assert result.holder.business_categories == (
        BusinessCategory.PRODUCTION_PROCESSING,
        BusinessCategory.COMMERCIAL_DISPLAY,
        BusinessCategory.OTHER,
    )
    assert result.holder.clauses == (
        UseType.PRODUCTION_LINE,
        UseType.COMMERCIAL_DISPLAY,
        UseType.WHOLE_MACHINE_EXPORT,
    )  # form order, whatever the input order
    assert [f.action for f in result.follow_up] == [
        FollowUpAction.INVESTIGATION,
        FollowUpAction.RECTIFICATION,
    ]
    with pytest.raises(KeyError):
        result.result_for("5.1")


def test_documented_example_parses() -> None:
    result = parse(doc_example(), DOC_TODAY)
    assert result.kind is ChecklistKind.GENERAL
    assert [r.sub_item for r in result.nonconforming] == ["3.1"]
    assert result.inspectors[2].expert_province == "330000"
    assert len(draft_assistance_requests(result)) == 1


def test_normalisation() -> None:
    data = general()
    data["holder"]["uscc"] = " 91330100ma27xk9l0c "
    data["kind"] = "General"
    data["holder"]["name"] = "  杭州某某检测技术有限公司\t"
    data["checklist"].reverse()
    data["inspected_on"] = "2026-02-26"
    result = parse(data)
    assert result.holder.uscc == "91330100MA27XK9L0C"
    assert result.holder.name == "杭州某某检测技术有限公司"
    assert [r.sub_item for r in result.checklist] == list(GENERAL_CHECKLIST.sub_item_ids)
    assert result.to_canonical_bytes() == parse(general()).to_canonical_bytes()


def test_text_is_nfc_normalised() -> None:
    data = general()
    data["confirmation"]["opinion"] = "Cafe\u0301\r\n无异议"
    assert parse(data).confirmation.opinion == "Caf\u00e9\n无异议"


# --------------------------------------------------------------------------------------------
# Refusals: the example files


INVALID_FILES: dict[str, tuple[str, str, str]] = {
    "invalid-missing-sub-item.toml": (
        "checklist.2.2",
        "MISSING_SUB_ITEM",
        "is missing (Annex 1 item 2 sub-item 2: ②产品不在CCC目录大类内",
    ),
    "invalid-wrong-annex.toml": (
        "checklist[6].sub_item",
        "WRONG_ANNEX",
        "4.1 belongs to Annex 2 (fast track: ①未在CCC免办系统完成核销的产品) but the record "
        "is a general-holder inspection (Annex 1)",
    ),
    "invalid-duplicate-sub-item.toml": (
        "checklist[2].sub_item",
        "DUPLICATE_SUB_ITEM",
        "1.2 is answered again (first in checklist[1])",
    ),
    "invalid-no-evidence.toml": (
        "checklist[8].evidence",
        "EVIDENCE_REQUIRED",
        "sub-item 4.1 does not conform",
    ),
    "invalid-same-province.toml": (
        "other_findings.used_elsewhere[0].bureau",
        "SAME_PROVINCE",
        "330200 宁波市 (Ningbo, Zhejiang) is in Zhejiang (330000), the inspecting bureau's own",
    ),
    "invalid-bad-uscc.toml": ("holder.uscc", "USCC_CHECK_DIGIT", "expected 'G'"),
    "invalid-old-certificate.toml": (
        "holder.certificates[1].issued_on",
        "BEFORE_RECORD_PERIOD",
        "2019-03-31 is before 2019-04-01",
    ),
    "invalid-unknown-key.toml": ("checklist[3].conform", "UNKNOWN_FIELD", "unknown field"),
    "invalid-future-date.toml": (
        "inspected_on",
        "FUTURE_DATE",
        "2026-03-02 is in the future (today is 2026-03-01)",
    ),
}


@pytest.mark.parametrize("name", sorted(INVALID_FILES))
def test_invalid_example_files(name: str) -> None:
    field, reason, fragment = INVALID_FILES[name]
    error = refused(load(name))
    assert (error.field, error.reason) == (field, reason), str(error)
    assert fragment in str(error)
    assert str(error).startswith(f"{field}: ")


def test_every_invalid_file_has_an_expectation() -> None:
    assert sorted(p.name for p in DATA.glob("invalid-*.toml")) == sorted(INVALID_FILES)


# --------------------------------------------------------------------------------------------
# Refusals: one mutation of a valid record per rule

Mutation = Callable[[Data], object]


def _set(path: str, value: object) -> Mutation:
    """Set ``a.b[0].c`` to ``value``."""

    def mutate(data: Data) -> None:
        *parents, last = _split(path)
        target: Any = data
        for part in parents:
            target = target[part]
        target[last] = value

    return mutate


def _drop(path: str) -> Mutation:
    def mutate(data: Data) -> None:
        *parents, last = _split(path)
        target: Any = data
        for part in parents:
            target = target[part]
        del target[last]

    return mutate


def _split(path: str) -> list[str | int]:
    parts: list[str | int] = []
    for piece in path.split("."):
        name, *indices = piece.split("[")
        parts.append(name)
        parts.extend(int(i.rstrip("]")) for i in indices)
    return parts


def _all(*mutations: Mutation) -> Mutation:
    def mutate(data: Data) -> None:
        for m in mutations:
            m(data)

    return mutate


def _append(path: str, value: object) -> Mutation:
    def mutate(data: Data) -> None:
        target: Any = data
        for part in _split(path):
            target = target[part]
        target.append(value)

    return mutate


def _nonconforming_31(data: Data) -> None:
    data["checklist"][4]["conforms"] = False
    data["checklist"][4]["evidence"] = ["photo.jpg"]


G = general
F = fast_track

# (id, base record, mutation, field, reason, fragment of the message)
REFUSALS: list[tuple[str, Callable[[], Data], Mutation, str, str, str]] = [
    ("root-not-table", G, lambda d: d.clear(), "record_id", "MISSING_FIELD", "is required"),
    ("unknown-top-key", G, _set("inspector", []), "inspector", "UNKNOWN_FIELD", "inspectors"),
    ("unknown-holder-key", G, _set("holder.adress", "x"), "holder.adress", "UNKNOWN_FIELD", ""),
    ("format", G, _set("format", "v2"), "format", "INVALID_FIELD", "is not supported"),
    ("record-id", G, _set("record_id", "abc"), "record_id", "INVALID_FIELD", "not a UUID"),
    (
        "record-id-case",
        G,
        _set("record_id", "9F3C6C3D-E341-4124-B4D1-942C97CF2789"),
        "record_id",
        "INVALID_FIELD",
        "canonical form",
    ),
    (
        "supersedes-self",
        G,
        _set("supersedes", "9f3c6c3d-e341-4124-b4d1-942c97cf2789"),
        "supersedes",
        "INVALID_FIELD",
        "cannot supersede itself",
    ),
    ("kind", G, _set("kind", "annex1"), "kind", "INVALID_FIELD", "general, fast_track"),
    ("kind-missing", G, _drop("kind"), "kind", "MISSING_FIELD", "is required"),
    (
        "bureau-outside-delta",
        G,
        _set("inspecting_bureau", "110000"),
        "inspecting_bureau",
        "NOT_IN_DELTA",
        "Beijing",
    ),
    ("bureau-int", G, _set("inspecting_bureau", 330100), "inspecting_bureau", "INVALID_FIELD", ""),
    (
        "bureau-county",
        G,
        _set("inspecting_bureau", "330106"),
        "inspecting_bureau",
        "UNKNOWN_BUREAU",
        "",
    ),
    (
        "inspected-before-2019",
        G,
        _set("inspected_on", dt.date(2019, 3, 1)),
        "inspected_on",
        "BEFORE_RECORD_PERIOD",
        "",
    ),
    (
        "inspected-datetime",
        G,
        _set("inspected_on", dt.datetime(2026, 2, 26, 9, 0)),
        "inspected_on",
        "INVALID_FIELD",
        "not a date and time",
    ),
    ("inspected-text", G, _set("inspected_on", "26/02/2026"), "inspected_on", "INVALID_FIELD", ""),
    (
        "inspected-impossible",
        G,
        _set("inspected_on", "2026-02-30"),
        "inspected_on",
        "INVALID_FIELD",
        "not a valid calendar date",
    ),
    ("holder-missing", G, _drop("holder"), "holder", "MISSING_FIELD", ""),
    ("holder-name", G, _set("holder.name", "  "), "holder.name", "MISSING_FIELD", ""),
    ("uscc-missing", G, _drop("holder.uscc"), "holder.uscc", "MISSING_FIELD", ""),
    (
        "uscc-charset",
        G,
        _set("holder.uscc", "91330100MA27XK9LOC"),
        "holder.uscc",
        "USCC_CHARSET",
        "never used",
    ),
    ("uscc-length", G, _set("holder.uscc", "9133010"), "holder.uscc", "USCC_LENGTH", ""),
    (
        "legal-rep-missing",
        G,
        _drop("holder.legal_representative"),
        "holder.legal_representative",
        "MISSING_FIELD",
        "",
    ),
    (
        "address-missing",
        G,
        _drop("holder.business_address"),
        "holder.business_address",
        "MISSING_FIELD",
        "",
    ),
    ("contacts-empty", G, _set("holder.contacts", []), "holder.contacts", "MISSING_FIELD", ""),
    (
        "contact-phone",
        G,
        _set("holder.contacts[0].phone", "call me"),
        "holder.contacts[0].phone",
        "INVALID_FIELD",
        "not a phone number",
    ),
    (
        "contact-role",
        G,
        _set("holder.contacts[0].role", "boss"),
        "holder.contacts[0].role",
        "INVALID_FIELD",
        "department_head, handler",
    ),
    (
        "category-repeat",
        G,
        _set("holder.business_categories", ["repair", "repair"]),
        "holder.business_categories[1]",
        "INVALID_FIELD",
        "repeats",
    ),
    (
        "category-other-unexplained",
        G,
        _set("holder.business_categories", ["other"]),
        "holder.business_category_other",
        "MISSING_FIELD",
        "其他",
    ),
    (
        "category-other-stray",
        G,
        _set("holder.business_category_other", "贸易"),
        "holder.business_category_other",
        "INVALID_FIELD",
        "",
    ),
    ("clauses-empty", G, _set("holder.clauses", []), "holder.clauses", "MISSING_FIELD", ""),
    (
        "clauses-not-list",
        G,
        _set("holder.clauses", "repair"),
        "holder.clauses",
        "INVALID_FIELD",
        "must be a list",
    ),
    (
        "certificate-clause-not-ticked",
        G,
        _set("holder.certificates[0].clause", "repair"),
        "holder.certificates[0].clause",
        "INVALID_FIELD",
        "is not among holder.clauses",
    ),
    (
        "batches-float",
        G,
        _set("holder.certificate_batches", 4.0),
        "holder.certificate_batches",
        "INVALID_FIELD",
        "whole number",
    ),
    (
        "batches-negative",
        G,
        _set("holder.written_off_batches", -1),
        "holder.written_off_batches",
        "INVALID_FIELD",
        "",
    ),
    (
        "written-off-exceeds",
        G,
        _set("holder.written_off_batches", 5),
        "holder.written_off_batches",
        "INVALID_FIELD",
        "exceeds the 4 certificate batches",
    ),
    (
        "listed-exceeds-batches",
        G,
        _all(_set("holder.certificate_batches", 1), _set("holder.written_off_batches", 1)),
        "holder.certificates",
        "INVALID_FIELD",
        "lists 2 certificates",
    ),
    (
        "listed-written-off-exceeds",
        G,
        _set("holder.written_off_batches", 0),
        "holder.written_off_batches",
        "INVALID_FIELD",
        "1 listed certificates are written off",
    ),
    (
        "certificate-repeat",
        G,
        _set("holder.certificates[1].certificate_no", "2025330000004411"),
        "holder.certificates[1].certificate_no",
        "INVALID_FIELD",
        "repeats holder.certificates[0]",
    ),
    (
        "certificate-space",
        G,
        _set("holder.certificates[0].certificate_no", "2025 3300"),
        "holder.certificates[0].certificate_no",
        "INVALID_FIELD",
        "whitespace",
    ),
    (
        "certificate-after-inspection",
        G,
        _set("holder.certificates[0].issued_on", dt.date(2026, 2, 27)),
        "holder.certificates[0].issued_on",
        "INVALID_FIELD",
        "after the inspection",
    ),
    (
        "certificate-future",
        G,
        _all(
            _set("inspected_on", dt.date(2026, 3, 1)),
            _set("confirmation.signed_on", dt.date(2026, 3, 1)),
            _set("holder.certificates[0].issued_on", dt.date(2026, 3, 2)),
        ),
        "holder.certificates[0].issued_on",
        "FUTURE_DATE",
        "",
    ),
    (
        "write-off-status",
        G,
        _set("holder.certificates[0].write_off", "sold"),
        "holder.certificates[0].write_off",
        "INVALID_FIELD",
        "used, shipped_back, destroyed, open",
    ),
    (
        "write-off-date-on-open",
        G,
        _set("holder.certificates[0].written_off_on", dt.date(2025, 7, 1)),
        "holder.certificates[0].written_off_on",
        "INVALID_FIELD",
        "not written off",
    ),
    (
        "write-off-before-issue",
        G,
        _set("holder.certificates[1].written_off_on", dt.date(2019, 3, 1)),
        "holder.certificates[1].written_off_on",
        "INVALID_FIELD",
        "before issue",
    ),
    (
        "write-off-after-inspection",
        G,
        _set("holder.certificates[1].written_off_on", dt.date(2026, 2, 28)),
        "holder.certificates[1].written_off_on",
        "INVALID_FIELD",
        "as found on the inspection day",
    ),
    ("checklist-missing", G, _drop("checklist"), "checklist", "MISSING_FIELD", ""),
    (
        "sub-item-unknown",
        G,
        _set("checklist[0].sub_item", "2.3"),
        "checklist[0].sub_item",
        "UNKNOWN_SUB_ITEM",
        "'2.3' is not a sub-item of Annex 1; expected one of 1.1, 1.2, 2.1, 2.2, 3.1, 3.2",
    ),
    (
        "sub-item-float",
        G,
        _set("checklist[0].sub_item", 1.1),
        "checklist[0].sub_item",
        "INVALID_FIELD",
        'write "1.1" in quotes',
    ),
    (
        "conforms-text",
        G,
        _set("checklist[0].conforms", "是"),
        "checklist[0].conforms",
        "INVALID_FIELD",
        "true or false",
    ),
    (
        "conforms-missing",
        G,
        _drop("checklist[0].conforms"),
        "checklist[0].conforms",
        "MISSING_FIELD",
        "",
    ),
    (
        "finding-missing",
        G,
        _set("checklist[2].finding", ""),
        "checklist[2].finding",
        "MISSING_FIELD",
        "",
    ),
    (
        "evidence-repeat",
        G,
        _set("checklist[5].evidence", ["a.pdf", "a.pdf"]),
        "checklist[5].evidence[1]",
        "INVALID_FIELD",
        "repeats",
    ),
    (
        "evidence-blank",
        G,
        _all(_nonconforming_31, _set("checklist[4].evidence", [" "])),
        "checklist[4].evidence[0]",
        "MISSING_FIELD",
        "",
    ),
    (
        "used-elsewhere-unknown-certificate",
        G,
        _set("other_findings.used_elsewhere[0].certificate_nos", ["2025330000009999"]),
        "other_findings.used_elsewhere[0].certificate_nos[0]",
        "UNKNOWN_CERTIFICATE",
        "holder.certificates",
    ),
    (
        "used-elsewhere-no-certificate",
        G,
        _set("other_findings.used_elsewhere[0].certificate_nos", []),
        "other_findings.used_elsewhere[0].certificate_nos",
        "MISSING_FIELD",
        "",
    ),
    (
        "used-elsewhere-outside-delta",
        G,
        _set("other_findings.used_elsewhere[0].bureau", "440300"),
        "other_findings.used_elsewhere[0].bureau",
        "NOT_IN_DELTA",
        "Guangdong",
    ),
    (
        "used-elsewhere-use-type",
        G,
        _set("other_findings.used_elsewhere[0].use_type", "sale"),
        "other_findings.used_elsewhere[0].use_type",
        "INVALID_FIELD",
        "repair",
    ),
    (
        "used-elsewhere-no-products",
        G,
        _set("other_findings.used_elsewhere[0].products", []),
        "other_findings.used_elsewhere[0].products",
        "MISSING_FIELD",
        "",
    ),
    (
        "product-quantity",
        G,
        _set("other_findings.used_elsewhere[0].products[0].quantity", 0),
        "other_findings.used_elsewhere[0].products[0].quantity",
        "INVALID_FIELD",
        "between 1 and",
    ),
    (
        "product-quantity-float",
        G,
        _set("other_findings.used_elsewhere[0].products[0].quantity", 1.5),
        "other_findings.used_elsewhere[0].products[0].quantity",
        "INVALID_FIELD",
        "whole number",
    ),
    (
        "product-hs-int",
        G,
        _set("other_findings.used_elsewhere[0].products[0].hs_code", 85044099),
        "other_findings.used_elsewhere[0].products[0].hs_code",
        "INVALID_FIELD",
        "quote it",
    ),
    (
        "product-hs-short",
        G,
        _set("other_findings.used_elsewhere[0].products[0].hs_code", "8504"),
        "other_findings.used_elsewhere[0].products[0].hs_code",
        "INVALID_FIELD",
        "6 to 10 digits",
    ),
    (
        "place-of-use-line-break",
        G,
        _set("other_findings.used_elsewhere[0].place_of_use", "宿州\n实验室"),
        "other_findings.used_elsewhere[0].place_of_use",
        "INVALID_FIELD",
        "a line break at position 3",
    ),
    ("follow-up-missing", G, _drop("follow_up"), "follow_up", "MISSING_FIELD", ""),
    (
        "follow-up-none-combined",
        G,
        _append("follow_up", {"action": "investigation", "case_number": "X-1"}),
        "follow_up",
        "INVALID_FIELD",
        "'none' cannot be combined",
    ),
    (
        "follow-up-none-with-nonconformity",
        G,
        _nonconforming_31,
        "follow_up",
        "FOLLOW_UP_REQUIRED",
        "sub-item 3.1 does not conform; guideline item 14",
    ),
    (
        "rectification-no-deadline",
        G,
        _set("follow_up", [{"action": "rectification"}]),
        "follow_up[0].deadline",
        "MISSING_FIELD",
        "",
    ),
    (
        "rectification-deadline-past",
        G,
        _set("follow_up", [{"action": "rectification", "deadline": dt.date(2026, 2, 26)}]),
        "follow_up[0].deadline",
        "INVALID_FIELD",
        "not after the inspection",
    ),
    (
        "investigation-no-case",
        G,
        _set("follow_up", [{"action": "investigation"}]),
        "follow_up[0].case_number",
        "MISSING_FIELD",
        "case number",
    ),
    (
        "investigation-deadline",
        G,
        _set(
            "follow_up",
            [{"action": "investigation", "case_number": "1", "deadline": "2026-04-01"}],
        ),
        "follow_up[0].deadline",
        "INVALID_FIELD",
        "only a rectification",
    ),
    (
        "none-case-number",
        G,
        _set("follow_up", [{"action": "none", "case_number": "1"}]),
        "follow_up[0].case_number",
        "INVALID_FIELD",
        "only an investigation",
    ),
    ("inspectors-missing", G, _set("inspectors", []), "inspectors", "MISSING_FIELD", ""),
    (
        "inspector-repeat",
        G,
        _set("inspectors[1].name", "吴磊"),
        "inspectors[1].name",
        "INVALID_FIELD",
        "repeats inspectors[0]",
    ),
    (
        "inspector-other-province",
        G,
        _set("inspectors[1].bureau", "320500"),
        "inspectors[1].bureau",
        "INVALID_FIELD",
        "set exchanged_expert = true",
    ),
    (
        "expert-same-province",
        G,
        _set("inspectors[1].exchanged_expert", True),
        "inspectors[1].bureau",
        "SAME_PROVINCE",
        "another Delta province",
    ),
    (
        "expert-province-mismatch",
        F,
        _set("inspectors[2].expert_province", "330000"),
        "inspectors[2].expert_province",
        "INVALID_FIELD",
        "does not match",
    ),
    (
        "expert-province-not-province",
        F,
        _set("inspectors[2].expert_province", "340100"),
        "inspectors[2].expert_province",
        "INVALID_FIELD",
        "not a provincial code",
    ),
    (
        "expert-province-on-local",
        F,
        _set("inspectors[0].expert_province", "320000"),
        "inspectors[0].expert_province",
        "INVALID_FIELD",
        "only for an exchanged expert",
    ),
    (
        "expert-flag-text",
        F,
        _set("inspectors[2].exchanged_expert", "yes"),
        "inspectors[2].exchanged_expert",
        "INVALID_FIELD",
        "true or false",
    ),
    (
        "only-experts",
        F,
        _set("inspectors", [{"name": "马超", "bureau": "340100", "exchanged_expert": True}]),
        "inspectors",
        "INVALID_FIELD",
        "at least one inspector must be of the inspecting bureau's province",
    ),
    (
        "inspector-email",
        G,
        _set("inspectors[0].email", "wulei"),
        "inspectors[0].email",
        "INVALID_FIELD",
        "not an e-mail address",
    ),
    (
        "no-contact-for-drafts",
        G,
        _drop("inspectors[0].email"),
        "inspectors",
        "MISSING_FIELD",
        "assistance requests drafted",
    ),
    ("confirmation-missing", G, _drop("confirmation"), "confirmation", "MISSING_FIELD", ""),
    (
        "confirmation-signer",
        G,
        _drop("confirmation.signed_by"),
        "confirmation.signed_by",
        "MISSING_FIELD",
        "",
    ),
    (
        "confirmation-before-inspection",
        G,
        _set("confirmation.signed_on", dt.date(2026, 2, 25)),
        "confirmation.signed_on",
        "INVALID_FIELD",
        "before the inspection",
    ),
    (
        "confirmation-future",
        G,
        _set("confirmation.signed_on", dt.date(2026, 3, 2)),
        "confirmation.signed_on",
        "FUTURE_DATE",
        "",
    ),
    (
        "control-character",
        G,
        _set("holder.registered_address", "杭州\x07"),
        "holder.registered_address",
        "INVALID_FIELD",
        "control character U+0007",
    ),
    (
        "overlong-line",
        G,
        _set("holder.name", "杭" * 501),
        "holder.name",
        "INVALID_FIELD",
        "at most 500",
    ),
    (
        "lone-surrogate",
        G,
        _set("holder.name", "杭\ud800"),
        "holder.name",
        "INVALID_FIELD",
        "lone surrogate",
    ),
    (
        "nested-not-table",
        G,
        _set("confirmation", "signed"),
        "confirmation",
        "INVALID_FIELD",
        "must be a table",
    ),
    (
        "entry-not-table",
        G,
        _set("checklist[0]", "1.1 ok"),
        "checklist[0]",
        "INVALID_FIELD",
        "must be a table",
    ),
]


@pytest.mark.parametrize(
    ("base", "mutate", "field", "reason", "fragment"),
    [row[1:] for row in REFUSALS],
    ids=[row[0] for row in REFUSALS],
)
def test_refusal(
    base: Callable[[], Data], mutate: Mutation, field: str, reason: str, fragment: str
) -> None:
    data = base()
    mutate(data)
    error = refused(data)
    assert (error.field, error.reason) == (field, reason), str(error)
    assert fragment in error.problem, str(error)
    assert isinstance(error, ValidationError)


def test_refusal_ids_are_unique() -> None:
    assert len({row[0] for row in REFUSALS}) == len(REFUSALS)


def test_root_must_be_a_mapping() -> None:
    with pytest.raises(FieldError, match=r"^record: must be a table, got list"):
        parse_result([], today=TODAY)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Annex mismatches


def test_general_record_labelled_fast_track() -> None:
    data = general()
    data["kind"] = "fast_track"
    error = refused(data)
    assert (error.field, error.reason) == ("checklist.1.3", "MISSING_SUB_ITEM")
    message = str(error)
    assert "Annex 2 item 1 sub-item 3: ③CCC免办业务频次是否符合要求" in message
    assert "also missing: 1.4, 4.1, 4.2" in message
    assert 'exactly those of Annex 1: should kind be "general"?' in message


def test_fast_track_record_labelled_general() -> None:
    data = fast_track()
    data["kind"] = "general"
    error = refused(data)
    assert (error.field, error.reason) == ("checklist[2].sub_item", "WRONG_ANNEX")
    assert "1.3 belongs to Annex 2 (fast track" in str(error)
    assert "but the record is a general-holder inspection (Annex 1)" in str(error)


def test_general_sub_item_in_fast_track_record_is_unknown() -> None:
    data = fast_track()
    data["checklist"][0]["sub_item"] = "4.3"
    error = refused(data)
    assert error.reason == "UNKNOWN_SUB_ITEM"
    assert "expected one of 1.1, 1.2, 1.3, 1.4, 2.1, 2.2, 3.1, 3.2, 4.1, 4.2" in str(error)


@FUZZ
@given(base=st.sampled_from([general, fast_track]), data=st.data())
def test_dropping_any_sub_item_names_it(base: Callable[[], Data], data: st.DataObject) -> None:
    record = base()
    entries: list[Data] = record["checklist"]
    index = data.draw(st.integers(0, len(entries) - 1), label="dropped")
    dropped = entries.pop(index)["sub_item"]
    record["checklist"] = data.draw(st.permutations(entries), label="order")
    annex = checklist(ChecklistKind(record["kind"]))
    error = refused(record)
    assert (error.field, error.reason) == (f"checklist.{dropped}", "MISSING_SUB_ITEM")
    sub = annex.sub_item(dropped)
    assert str(error).startswith(
        f"checklist.{dropped}: is missing (Annex {annex.annex} item {sub.item} "
        f"sub-item {sub.number}: {sub.label_zh}"
    )


@FUZZ
@given(base=st.sampled_from([general, fast_track]), data=st.data())
def test_repeating_any_sub_item_is_refused(base: Callable[[], Data], data: st.DataObject) -> None:
    record = base()
    entries: list[Data] = record["checklist"]
    repeated = copy.deepcopy(data.draw(st.sampled_from(entries)))
    position = data.draw(st.integers(0, len(entries)))
    entries.insert(position, repeated)
    error = refused(record)
    assert error.reason == "DUPLICATE_SUB_ITEM"
    assert error.problem.startswith(f"{repeated['sub_item']} is answered again")


# --------------------------------------------------------------------------------------------
# Canonical bytes


@pytest.mark.parametrize("base", [general, fast_track], ids=["general", "fast_track"])
def test_canonical_round_trip(base: Callable[[], Data]) -> None:
    result = parse(base())
    raw = result.to_canonical_bytes()
    assert from_canonical_bytes(raw) == result
    assert InspectionResult.from_canonical_bytes(raw) == result
    assert raw == parse(base()).to_canonical_bytes()  # same input, same bytes
    decoded = json.loads(raw)
    assert decoded["format"] == FORMAT
    assert raw == json.dumps(
        decoded, ensure_ascii=False, sort_keys=True, separators=(",", ":")
    ).encode("utf-8")
    assert b"\\u" not in raw  # Chinese text written as itself
    assert parse(decoded) == result  # the canonical form is itself a valid input
    assert parse_result(result.to_dict(), today=TODAY) == result


def test_canonical_form_leaves_out_empty_values() -> None:
    decoded = json.loads(parse(general()).to_canonical_bytes())
    assert "supersedes" not in decoded
    assert "evidence" not in decoded["checklist"][0]
    assert "notes" not in decoded["other_findings"]
    assert "phone" not in decoded["holder"]["legal_representative"]
    assert decoded["inspectors"][1] == {
        "bureau": "330000",
        "exchanged_expert": False,
        "name": "郑洁",
    }


def test_canonical_bytes_have_no_floats() -> None:
    def walk(value: object) -> None:
        assert not isinstance(value, float)
        if isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    for base in (general, fast_track):
        walk(json.loads(parse(base()).to_canonical_bytes()))


def test_json_and_toml_spellings_give_the_same_bytes() -> None:
    toml_result = parse(fast_track())
    as_json = json.loads(json.dumps(fast_track(), default=str, ensure_ascii=False))
    as_json["kind"] = "fast-track"
    assert parse(as_json).to_canonical_bytes() == toml_result.to_canonical_bytes()


def _shuffled(value: object, rng: random.Random) -> object:
    """The same value with every mapping's keys in another order (lists keep theirs)."""
    if isinstance(value, dict):
        keys = list(value)
        rng.shuffle(keys)
        return {k: _shuffled(value[k], rng) for k in keys}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@FUZZ
@given(base=st.sampled_from([general, fast_track]), rng=st.randoms(use_true_random=False))
def test_key_order_never_changes_the_bytes(base: Callable[[], Data], rng: random.Random) -> None:
    shuffled = _shuffled(base(), rng)
    assert isinstance(shuffled, dict)
    assert parse(shuffled).to_canonical_bytes() == parse(base()).to_canonical_bytes()


@FUZZ
@given(flags=st.lists(st.booleans(), min_size=10, max_size=10), rng=st.randoms())
def test_round_trip_with_any_conclusions(flags: list[bool], rng: random.Random) -> None:
    record = fast_track()
    for entry, conforms in zip(record["checklist"], flags, strict=True):
        entry["conforms"] = conforms
        if not conforms:
            entry["evidence"] = [f"evidence-{entry['sub_item']}.jpg"]
    if all(flags):
        record["follow_up"] = [{"action": "none"}]
    rng.shuffle(record["checklist"])
    result = parse(record)
    assert [r.conforms for r in result.checklist] == flags
    assert from_canonical_bytes(result.to_canonical_bytes()) == result


def _canonical(value: object) -> bytes:
    return json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode()


NON_CANONICAL: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("indented", lambda raw: json.dumps(json.loads(raw), ensure_ascii=False, indent=1).encode()),
    ("ascii-escaped", lambda raw: json.dumps(json.loads(raw), sort_keys=True).encode()),
    ("trailing-newline", lambda raw: raw + b"\n"),
    ("unsorted", lambda raw: json.dumps(json.loads(raw), ensure_ascii=False).encode()),
    ("empty-written-out", lambda raw: _canonical({**json.loads(raw), "supersedes": ""})),
    ("lower-case-uscc", lambda raw: raw.replace(b"91330100MA27XK9L0C", b"91330100ma27xk9l0c")),
    ("duplicate-key", lambda raw: raw.replace(b'{"checklist"', b'{"kind":"general","checklist"')),
    (
        "float",
        lambda raw: raw.replace(b'"certificate_batches":4', b'"certificate_batches":4.0'),
    ),
    ("nan", lambda raw: raw.replace(b'"certificate_batches":4', b'"certificate_batches":NaN')),
    ("not-utf8", lambda raw: raw.replace("杭州".encode(), "杭州".encode("gb18030"))),
    ("array", lambda raw: b"[" + raw + b"]"),
    (
        "no-format",
        lambda raw: _canonical({k: v for k, v in json.loads(raw).items() if k != "format"}),
    ),
]


@pytest.mark.parametrize("mutate", [m for _, m in NON_CANONICAL], ids=[n for n, _ in NON_CANONICAL])
def test_non_canonical_bytes_are_refused(mutate: Callable[[bytes], bytes]) -> None:
    raw = parse(general()).to_canonical_bytes()
    bad = mutate(raw)
    assert bad != raw
    with pytest.raises(ValidationError) as info:
        from_canonical_bytes(bad)
    assert info.value.reason == "NOT_CANONICAL", str(info.value)


def test_canonical_bytes_with_bad_content_are_refused_by_field() -> None:
    decoded = json.loads(parse(general()).to_canonical_bytes())
    del decoded["checklist"][3]
    with pytest.raises(FieldError) as info:
        from_canonical_bytes(_canonical(decoded))
    assert (info.value.field, info.value.reason) == ("checklist.2.2", "MISSING_SUB_ITEM")


def test_canonical_bytes_do_not_depend_on_the_readers_date() -> None:
    # A peer's record is judged by the day it was made, not by the reader's clock.
    raw = parse(doc_example(), DOC_TODAY).to_canonical_bytes()
    assert from_canonical_bytes(raw).inspected_on == dt.date(2026, 3, 10)
    with pytest.raises(FieldError, match="in the future"):
        parse_result(json.loads(raw), today=TODAY)


@FUZZ
@given(data=st.data())
def test_mangled_bytes_raise_only_validation_errors(data: st.DataObject) -> None:
    raw = bytearray(parse(general()).to_canonical_bytes())
    for _ in range(data.draw(st.integers(1, 3))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    try:
        result = from_canonical_bytes(bytes(raw))
    except ValidationError:
        return
    assert result.to_canonical_bytes() == bytes(raw)  # accepted only if still canonical


def _paths(value: object, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out: list[tuple[str | int, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(_paths(v, (*prefix, i)))
    return out


JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**15), 10**15),
    st.floats(allow_nan=True),
    st.text(max_size=8),
    st.dates().map(lambda d: d.isoformat()),
    st.lists(st.text(max_size=3), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


@FUZZ
@given(base=st.sampled_from([general, fast_track]), data=st.data())
def test_any_bad_value_raises_only_field_errors(
    base: Callable[[], Data], data: st.DataObject
) -> None:
    record = base()
    path = data.draw(st.sampled_from(_paths(record)), label="path")
    target: Any = record
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = data.draw(JUNK, label="value")
    try:
        result = parse(record)
    except FieldError:
        return
    assert from_canonical_bytes(result.to_canonical_bytes()) == result


# --------------------------------------------------------------------------------------------
# Business key and corrections


def test_business_key_ignores_the_record_id() -> None:
    first = parse(general())
    correction = general()
    correction["record_id"] = str(uuid.UUID(int=7))
    correction["supersedes"] = first.record_id
    correction["checklist"][0]["finding"] = "更正：抽查 3 个批次。"
    second = parse(correction)
    assert second.business_key == first.business_key
    assert second.supersedes == first.record_id
    assert second.to_canonical_bytes() != first.to_canonical_bytes()
    other_day = general()
    other_day["inspected_on"] = dt.date(2026, 2, 25)
    other_day["confirmation"]["signed_on"] = dt.date(2026, 2, 25)
    assert parse(other_day).business_key != first.business_key


# --------------------------------------------------------------------------------------------
# Draft assistance requests (item 16)


def _requests(result: InspectionResult) -> list[Any]:
    node = divisions.province_of(result.inspecting_bureau)
    return [
        parse_request(
            draft, today=TODAY, request_id=str(uuid.UUID(int=n + 1)), requesting_node=node
        )
        for n, draft in enumerate(draft_assistance_requests(result))
    ]


@pytest.mark.parametrize("base", [general, fast_track], ids=["general", "fast_track"])
def test_drafts_parse_as_assistance_requests(base: Callable[[], Data]) -> None:
    result = parse(base())
    requests = _requests(result)
    findings = result.other_findings.used_elsewhere
    assert len(requests) == len(findings) > 0
    for request, finding in zip(requests, findings, strict=True):
        assert request.kind is RequestKind.ASSISTANCE
        assert request.requesting_bureau == result.inspecting_bureau
        assert request.target_bureau == finding.bureau
        assert request.target_node != request.requesting_node
        assert (request.holder.name, request.holder.uscc) == (
            result.holder.name,
            result.holder.uscc,
        )
        assert request.certificate_nos == finding.certificate_nos
        assert request.products == finding.products
        assert request.use_type is finding.use_type
        assert request.place_of_use == finding.place_of_use
        assert [q.id for q in request.questions] == ["q1", "q2", "q3"]
        assert "核销" in request.questions[2].text
        assert "实际使用" in request.questions[0].text
        assert result.record_id in request.background


def test_draft_contact_and_background() -> None:
    general_drafts = draft_assistance_requests(parse(general()))
    assert general_drafts[0]["requester_contact"] == {
        "name": "吴磊",
        "email": "wulei@example.gov.cn",
    }
    assert "2026年2月26日" in general_drafts[0]["background"]
    assert "宿州市" in general_drafts[0]["background"]
    assert "企业提供了合作实验室的样品接收单。" in general_drafts[0]["background"]
    fast_drafts = draft_assistance_requests(parse(fast_track()))
    assert [d["target_bureau"] for d in fast_drafts] == ["310104", "330000"]
    assert fast_drafts[1]["certificate_nos"] == ["2025320000077001", "2025320000077002"]
    assert fast_drafts[0]["products"][1] == {"name": "示教器", "model": "TP-12", "quantity": 2}
    json.dumps(fast_drafts, ensure_ascii=False)  # plain data, ready for a file


def test_no_drafts_without_use_elsewhere() -> None:
    data = general()
    del data["other_findings"]
    del data["inspectors"][0]["email"]  # no contact needed without drafts
    result = parse(data)
    assert result.other_findings.used_elsewhere == ()
    assert draft_assistance_requests(result) == []


def test_documented_example_draft_parses() -> None:
    result = parse(doc_example(), DOC_TODAY)
    (request,) = [
        parse_request(
            draft,
            today=DOC_TODAY,
            request_id=str(uuid.uuid4()),
            requesting_node=result.inspecting_node,
        )
        for draft in draft_assistance_requests(result)
    ]
    assert request.target_bureau == "320500"
    assert request.use_type is UseType.REPAIR
