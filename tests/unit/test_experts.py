"""federation.experts and federation.ccc_catalogue: the registry, its files, the shared view.

Registry errors are table-driven: each bad file names the line, column and reason it must be
refused with. The privacy rule (no phone or ID number in anything shared) is checked on the
example registry and, with Hypothesis, on arbitrary phone numbers and ID numbers.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.ccc_catalogue import CATEGORIES, category, normalise_categories
from federation.errors import ValidationError
from federation.experts import (
    COLUMNS,
    PRIVATE_FIELDS,
    SHARED_FIELDS,
    DateRange,
    Expert,
    RegistryError,
    SharedExpert,
    parse_registry_csv,
    parse_registry_json,
    shared_view,
    validate_expert,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "experts"
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "experts.csv"
HEADER = ",".join(COLUMNS)
ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def id_number(first17: str) -> str:
    """Complete a resident ID number (GB 11643 MOD 11-2), independently of the module."""
    total = sum(int(d) * w for d, w in zip(first17, ID_WEIGHTS, strict=True))
    return first17 + "10X98765432"[total % 11]


def csv_file(*rows: str, header: str = HEADER) -> bytes:
    return ("\n".join((header, *rows)) + "\n").encode()


GOOD_ROW = "JS-9,周杰,320500,低压电器,3,,,,,"


# --------------------------------------------------------------------------------------------
# Catalogue


def test_catalogue_has_the_17_categories_of_the_2020_edition_in_order() -> None:
    assert len(CATEGORIES) == 17
    assert [c.number for c in CATEGORIES.values()] == list(range(1, 18))
    names = [c.name_zh for c in CATEGORIES.values()]
    assert names[0] == "电线电缆"
    assert names[6] == "家用和类似用途设备"
    assert names[-1] == "家用燃气器具"
    assert len(set(names)) == 17
    assert len({c.name_en for c in CATEGORIES.values()}) == 17
    assert all(code.isascii() and code.isupper() for code in CATEGORIES)


@pytest.mark.parametrize(
    "text",
    [
        "LOW_VOLTAGE_APPARATUS",
        "low_voltage_apparatus",
        " 低压电器 ",
        "low-voltage electrical apparatus",
    ],
)
def test_category_accepts_code_chinese_and_english_names(text: str) -> None:
    assert category(text).code == "LOW_VOLTAGE_APPARATUS"


def test_unknown_category_is_refused_with_the_codes_listed() -> None:
    with pytest.raises(ValidationError) as e:
        category("低压元器件")
    assert e.value.reason == "UNKNOWN_CATEGORY"
    assert "WIRES_CABLES" in str(e.value)


def test_normalise_categories_collapses_spellings() -> None:
    assert normalise_categories(["低压电器", "LOW_VOLTAGE_APPARATUS", "照明电器"]) == {
        "LOW_VOLTAGE_APPARATUS",
        "LIGHTING",
    }


# --------------------------------------------------------------------------------------------
# Example files


def test_csv_and_json_examples_give_the_same_registry() -> None:
    from_csv = parse_registry_csv((DATA / "registry.csv").read_bytes(), "registry.csv")
    from_json = parse_registry_json((DATA / "registry.json").read_bytes(), "registry.json")
    assert from_csv == from_json
    assert from_csv.province == "320000"
    assert [e.expert_id for e in from_csv.experts] == ["JS-0001", "JS-0002", "JS-0003", "JS-0004"]
    first = from_csv.get("JS-0001")
    assert first.categories == {"LOW_VOLTAGE_APPARATUS", "WIRES_CABLES"}
    assert first.unavailable == (DateRange(dt.date(2025, 5, 1), dt.date(2025, 5, 5)),)
    assert first.conflict_holders == {"913205056082348768"}
    assert first.phone == "025-5550-0101"
    third = from_csv.get("JS-0003")  # full-width separator in the CSV
    assert third.categories == {"ELECTRONICS", "LIGHTING"}
    assert third.unavailable == (
        DateRange(dt.date(2025, 6, 10), dt.date(2025, 6, 10)),
        DateRange(dt.date(2025, 7, 1), dt.date(2025, 7, 14)),
    )
    fourth = from_csv.get("JS-0004")
    assert fourth.conflict_bureaus == {"310000"}
    assert fourth.id_number == "00000019850305004X"


def test_documented_example_parses() -> None:
    registry = parse_registry_csv(EXAMPLE.read_bytes(), EXAMPLE.name)
    assert len(registry.experts) == 4
    assert all(not e.phone or e.expert_id == "JS-0001" for e in registry.experts)


def test_csv_with_excel_bom_crlf_and_blank_rows() -> None:
    data = b"\xef\xbb\xbf" + csv_file(GOOD_ROW, ",,,,,,,,,").replace(b"\n", b"\r\n")
    registry = parse_registry_csv(data, "excel.csv")
    assert [e.expert_id for e in registry.experts] == ["JS-9"]


def test_unnamed_empty_columns_are_ignored_but_must_stay_empty() -> None:
    registry = parse_registry_csv(csv_file(GOOD_ROW + ",,", header=HEADER + ",,"), "r.csv")
    assert [e.expert_id for e in registry.experts] == ["JS-9"]
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(csv_file(GOOD_ROW + ",,note", header=HEADER + ",,"), "r.csv")
    assert (e.value.line, e.value.column, e.value.reason) == (2, 12, "REGISTRY_SYNTAX")


def test_columns_in_any_order_and_optional_ones_left_out() -> None:
    data = csv_file(
        "3,低压电器,320500,周杰,JS-9", header="annual_cap,categories,bureau,name,expert_id"
    )
    (expert,) = parse_registry_csv(data, "short.csv").experts
    assert expert == Expert("JS-9", "周杰", "320500", frozenset({"LOW_VOLTAGE_APPARATUS"}), 3)


def test_registry_get_unknown_expert() -> None:
    registry = parse_registry_csv(csv_file(GOOD_ROW), "r.csv")
    with pytest.raises(ValidationError) as e:
        registry.get("JS-404")
    assert e.value.reason == "UNKNOWN_EXPERT"


# --------------------------------------------------------------------------------------------
# CSV errors: (rows after the header, line, column, field, reason)

CSV_ERRORS = [
    ("bad bureau", ["JS-1,张三,999999,低压电器,3,,,,,"], 2, 3, "bureau", "UNKNOWN_BUREAU"),
    ("non-Delta bureau", ["JS-1,张三,110000,低压电器,3,,,,,"], 2, 3, "bureau", "NOT_IN_DELTA"),
    (
        "unknown category",
        ["JS-1,张三,320500,低压元器件,3,,,,,"],
        2,
        4,
        "categories",
        "UNKNOWN_CATEGORY",
    ),
    ("no category", ["JS-1,张三,320500, ; ,3,,,,,"], 2, 4, "categories", "MISSING_FIELD"),
    (
        "cap not a number",
        ["JS-1,张三,320500,低压电器,three,,,,,"],
        2,
        5,
        "annual_cap",
        "INVALID_FIELD",
    ),
    ("cap too large", ["JS-1,张三,320500,低压电器,400,,,,,"], 2, 5, "annual_cap", "INVALID_FIELD"),
    ("cap missing", ["JS-1,张三,320500,低压电器,,,,,,"], 2, 5, "annual_cap", "MISSING_FIELD"),
    (
        "reversed range",
        ["JS-1,张三,320500,低压电器,3,2025-05-09/2025-05-01,,,,"],
        2,
        6,
        "unavailable",
        "INVALID_RANGE",
    ),
    (
        "not a date",
        ["JS-1,张三,320500,低压电器,3,2025-02-30,,,,"],
        2,
        6,
        "unavailable",
        "INVALID_DATE",
    ),
    (
        "bad USCC",
        ["JS-1,张三,320500,低压电器,3,,913205056082348769,,,"],
        2,
        7,
        "conflict_holders",
        "USCC_CHECK_DIGIT",
    ),
    (
        "bad conflict bureau",
        ["JS-1,张三,320500,低压电器,3,,,320581,,"],
        2,
        8,
        "conflict_bureaus",
        "UNKNOWN_BUREAU",
    ),
    ("bad phone", ["JS-1,张三,320500,低压电器,3,,,,call me,"], 2, 9, "phone", "INVALID_FIELD"),
    (
        "bad ID check",
        ["JS-1,张三,320500,低压电器,3,,,,,000000198001010014"],
        2,
        10,
        "id_number",
        "INVALID_ID_NUMBER",
    ),
    (
        "ID birth date",
        ["JS-1,张三,320500,低压电器,3,,,,," + id_number("00000019801301001")],
        2,
        10,
        "id_number",
        "INVALID_ID_NUMBER",
    ),
    ("bad expert id", ["JS 1,张三,320500,低压电器,3,,,,,"], 2, 1, "expert_id", "INVALID_EXPERT_ID"),
    ("empty name", [GOOD_ROW, "JS-1,,320500,低压电器,3,,,,,"], 3, 2, "name", "MISSING_FIELD"),
    (
        "duplicate id",
        [GOOD_ROW, "JS-1,张三,320500,低压电器,3,,,,,", GOOD_ROW],
        4,
        1,
        "expert_id",
        "DUPLICATE_EXPERT",
    ),
    (
        "two provinces",
        [GOOD_ROW, "JS-1,张三,330100,低压电器,3,,,,,"],
        3,
        3,
        "bureau",
        "WRONG_PROVINCE",
    ),
    ("extra cell", [GOOD_ROW + ",surplus"], 2, 11, None, "REGISTRY_SYNTAX"),
]


@pytest.mark.parametrize(
    ("rows", "line", "column", "field", "reason"),
    [pytest.param(*case[1:], id=case[0]) for case in CSV_ERRORS],
)
def test_csv_errors_name_file_line_and_column(
    rows: list[str], line: int, column: int, field: str | None, reason: str
) -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(csv_file(*rows), "jiangsu-experts.csv")
    error = e.value
    assert (error.reason, error.line, error.column, error.field) == (reason, line, column, field)
    assert str(error).startswith(f"jiangsu-experts.csv, line {line}, column {column}")
    assert isinstance(error, ValidationError)


def test_csv_line_numbers_count_physical_lines_of_multiline_cells() -> None:
    data = csv_file(
        'JS-1,张三,320500,"低压电器;\n照明电器",3,,,,,', "JS-2,李四,320500,低压电器,x,,,,,"
    )
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(data, "r.csv")
    assert (e.value.line, e.value.field) == (4, "annual_cap")


def test_name_with_line_break_is_refused() -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(csv_file('JS-1,"张\n三",320500,低压电器,3,,,,,'), "r.csv")
    assert (e.value.line, e.value.field, e.value.reason) == (2, "name", "INVALID_FIELD")


@pytest.mark.parametrize(
    ("data", "line", "column", "reason"),
    [
        pytest.param(
            csv_file(GOOD_ROW, header=HEADER + ",email"), 1, 11, "UNKNOWN_COLUMN", id="unknown"
        ),
        pytest.param(
            csv_file(header="expert_id,name,name"), 1, 3, "DUPLICATE_COLUMN", id="duplicate"
        ),
        pytest.param(
            csv_file("JS-1,张三,3", header="expert_id,name,annual_cap"),
            1,
            None,
            "MISSING_COLUMN",
            id="missing",
        ),
        pytest.param(b"", None, None, "EMPTY_REGISTRY", id="empty file"),
        pytest.param(csv_file(), None, None, "EMPTY_REGISTRY", id="header only"),
        pytest.param(csv_file('JS-1,"unterminated'), 2, None, "REGISTRY_SYNTAX", id="open quote"),
    ],
)
def test_csv_structure_errors(
    data: bytes, line: int | None, column: int | None, reason: str
) -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(data, "r.csv")
    assert (e.value.reason, e.value.line, e.value.column) == (reason, line, column)
    assert str(e.value).startswith("r.csv")


def test_missing_column_names_it() -> None:
    with pytest.raises(RegistryError, match="bureau, categories"):
        parse_registry_csv(csv_file("JS-1,张三,3", header="expert_id,name,annual_cap"), "r.csv")


def test_gbk_file_is_refused_with_a_hint_and_the_line() -> None:
    data = (HEADER + "\n" + GOOD_ROW + "\n").encode("gbk")
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(data, "excel-gbk.csv")
    assert (e.value.reason, e.value.line) == ("REGISTRY_ENCODING", 2)
    assert "CSV UTF-8" in str(e.value)


def test_expected_province_is_enforced() -> None:
    data = csv_file(GOOD_ROW)
    assert parse_registry_csv(data, "r.csv", province="320000").province == "320000"
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(data, "r.csv", province="330000")
    assert (e.value.reason, e.value.line, e.value.field) == ("WRONG_PROVINCE", 2, "bureau")
    with pytest.raises(ValidationError) as e2:
        parse_registry_csv(data, "r.csv", province="320500")
    assert e2.value.reason == "NOT_A_PROVINCE"


def test_oversized_file_is_refused_before_parsing() -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(b"x" * (5 * 1024 * 1024 + 1), "huge.csv")
    assert e.value.reason == "REGISTRY_TOO_LARGE"


def test_id_number_is_never_echoed_in_an_error() -> None:
    wrong = "000000198001010014"
    with pytest.raises(RegistryError) as e:
        parse_registry_csv(csv_file(f"JS-1,张三,320500,低压电器,3,,,,,{wrong}"), "r.csv")
    assert wrong not in str(e.value)


# --------------------------------------------------------------------------------------------
# JSON errors


def json_file(*experts: object, extra: str = "") -> bytes:
    body = ",\n".join("    " + json.dumps(e, ensure_ascii=False) for e in experts)
    return ('{\n  "experts": [\n' + body + "\n  ]" + extra + "\n}\n").encode()


GOOD_JSON = {
    "expert_id": "JS-9",
    "name": "周杰",
    "bureau": "320500",
    "categories": ["低压电器"],
    "annual_cap": 3,
}


def test_json_value_errors_name_line_column_and_path() -> None:
    bad = {**GOOD_JSON, "expert_id": "JS-1", "bureau": "999999"}
    data = json_file(GOOD_JSON, bad)
    with pytest.raises(RegistryError) as e:
        parse_registry_json(data, "experts.json")
    line_text = data.decode().splitlines()[3]
    assert e.value.line == 4
    assert e.value.column == line_text.index('"bureau"') + 1
    assert e.value.field == "experts[1].bureau"
    assert e.value.reason == "UNKNOWN_BUREAU"
    assert str(e.value).startswith(
        f"experts.json, line 4, column {e.value.column} (experts[1].bureau)"
    )


@pytest.mark.parametrize(
    ("entries", "extra", "field", "reason"),
    [
        pytest.param(
            [{**GOOD_JSON, "conflict_holders": ["bad"]}],
            "",
            "experts[0].conflict_holders[0]",
            "USCC_LENGTH",
            id="list item",
        ),
        pytest.param(
            [{**GOOD_JSON, "categories": "低压电器"}],
            "",
            "experts[0].categories",
            "INVALID_FIELD",
            id="not a list",
        ),
        pytest.param(
            [{**GOOD_JSON, "categories": []}],
            "",
            "experts[0].categories",
            "MISSING_FIELD",
            id="empty list",
        ),
        pytest.param(
            [{**GOOD_JSON, "annual_cap": "3"}],
            "",
            "experts[0].annual_cap",
            "INVALID_FIELD",
            id="cap as text",
        ),
        pytest.param(
            [{**GOOD_JSON, "annual_cap": True}],
            "",
            "experts[0].annual_cap",
            "INVALID_FIELD",
            id="cap as bool",
        ),
        pytest.param(
            [{**GOOD_JSON, "conflict_holder": []}],
            "",
            "experts[0].conflict_holder",
            "UNKNOWN_FIELD",
            id="misspelt key",
        ),
        pytest.param(
            [{k: v for k, v in GOOD_JSON.items() if k != "bureau"}],
            "",
            "experts[0]",
            "MISSING_FIELD",
            id="missing key",
        ),
        pytest.param(
            [{**GOOD_JSON, "name": 42}], "", "experts[0].name", "INVALID_FIELD", id="name not text"
        ),
        pytest.param(["JS-9"], "", "experts[0]", "REGISTRY_SYNTAX", id="entry not object"),
        pytest.param(
            [GOOD_JSON], ', "province": "320000"', "province", "UNKNOWN_FIELD", id="top-level key"
        ),
        pytest.param(
            [GOOD_JSON, GOOD_JSON], "", "experts[1].expert_id", "DUPLICATE_EXPERT", id="duplicate"
        ),
    ],
)
def test_json_errors(entries: list[object], extra: str, field: str, reason: str) -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_json(json_file(*entries, extra=extra), "experts.json")
    assert (e.value.field, e.value.reason) == (field, reason)
    assert e.value.line is not None and e.value.line > 1


@pytest.mark.parametrize(
    ("text", "line", "column"),
    [
        pytest.param(
            '{\n  "experts": [\n    {"expert_id": "JS-1",}\n  ]\n}', 3, 26, id="trailing comma"
        ),
        pytest.param('{\n  "experts": [],\n  "experts": []\n}', 3, 3, id="duplicate key"),
        pytest.param('{"experts": [{"annual_cap": NaN}]}', 1, 29, id="NaN"),
        pytest.param('{"experts": []} []', 1, 17, id="extra data"),
        pytest.param("", 1, 1, id="empty"),
    ],
)
def test_json_syntax_errors_point_at_the_character(text: str, line: int, column: int) -> None:
    with pytest.raises(RegistryError) as e:
        parse_registry_json(text.encode(), "experts.json")
    assert (e.value.reason, e.value.line, e.value.column) == ("REGISTRY_SYNTAX", line, column)


def test_json_deep_nesting_is_refused_not_a_recursion_error() -> None:
    data = ('{"experts": ' + "[" * 5000 + "]" * 5000 + "}").encode()
    with pytest.raises(RegistryError) as e:
        parse_registry_json(data, "deep.json")
    assert e.value.reason == "REGISTRY_SYNTAX"


def test_json_top_level_must_be_an_object_with_experts() -> None:
    for text in ("[]", '{"experts": {}}', "{}"):
        with pytest.raises(RegistryError):
            parse_registry_json(text.encode(), "e.json")
    with pytest.raises(RegistryError) as e:
        parse_registry_json(b'{"experts": []}', "e.json")
    assert e.value.reason == "EMPTY_REGISTRY"


# --------------------------------------------------------------------------------------------
# Expert rules and validation


def test_conflict_with_a_province_code_covers_its_bureaus() -> None:
    expert = Expert(
        "JS-1", "张三", "320500", frozenset({"LIGHTING"}), 3, conflict_bureaus=frozenset({"330000"})
    )
    assert expert.conflicts_with_bureau("330100")
    assert expert.conflicts_with_bureau("330000")
    assert not expert.conflicts_with_bureau("310115")
    exact = dataclasses.replace(expert, conflict_bureaus=frozenset({"330100"}))
    assert exact.conflicts_with_bureau("330100")
    assert not exact.conflicts_with_bureau("330200")


def test_unavailable_on_lists_the_blocked_days() -> None:
    expert = Expert(
        "JS-1",
        "张三",
        "320500",
        frozenset({"LIGHTING"}),
        3,
        unavailable=(DateRange(dt.date(2025, 5, 1), dt.date(2025, 5, 3)),),
    )
    days = [dt.date(2025, 4, 30), dt.date(2025, 5, 3), dt.date(2025, 5, 4)]
    assert expert.unavailable_on(days) == (dt.date(2025, 5, 3),)


def test_validate_expert_normalises_and_names_the_field() -> None:
    raw = Expert(
        "JS-1",
        " 张三 ",
        "320500",
        frozenset({"低压电器"}),
        3,
        conflict_holders=frozenset({"913205056082348768"}),
    )
    assert validate_expert(raw) == dataclasses.replace(
        raw, name="张三", categories=frozenset({"LOW_VOLTAGE_APPARATUS"})
    )
    with pytest.raises(ValidationError, match=r"^conflict_holders: ") as e:
        validate_expert(
            dataclasses.replace(raw, conflict_holders=frozenset({"913205056082348769"}))
        )
    assert e.value.reason == "USCC_CHECK_DIGIT"
    with pytest.raises(ValidationError) as e2:
        validate_expert(dataclasses.replace(raw, categories=frozenset()))
    assert e2.value.reason == "MISSING_FIELD"


def test_date_range_refuses_end_before_start() -> None:
    with pytest.raises(ValidationError) as e:
        DateRange(dt.date(2025, 5, 2), dt.date(2025, 5, 1))
    assert e.value.reason == "INVALID_RANGE"


# --------------------------------------------------------------------------------------------
# What is shared


def test_shared_view_has_exactly_the_shared_fields() -> None:
    assert [f.name for f in dataclasses.fields(SharedExpert)] == list(SHARED_FIELDS)
    assert set(PRIVATE_FIELDS).isdisjoint(SHARED_FIELDS)
    assert {"unavailable", "conflict_holders", "conflict_bureaus", "annual_cap"}.isdisjoint(
        SHARED_FIELDS
    )


def test_phone_and_id_number_never_appear_in_the_shared_view_of_the_example() -> None:
    registry = parse_registry_csv((DATA / "registry.csv").read_bytes(), "registry.csv")
    for expert in registry.experts:
        view = shared_view(expert)
        blobs = [
            json.dumps(view.to_dict(), ensure_ascii=False),
            repr(view),
            str(view),
            repr(expert),
        ]
        for secret in (expert.phone, expert.id_number):
            if secret:
                assert all(secret not in blob for blob in blobs)
        conflicts = [*expert.conflict_holders, *expert.conflict_bureaus]
        assert all(c not in json.dumps(view.to_dict()) for c in conflicts)


@settings(max_examples=200, deadline=None)
@given(
    phone=st.from_regex(r"\+?[0-9]{5,15}", fullmatch=True),
    birth=st.dates(dt.date(1940, 1, 1), dt.date(2005, 12, 31)),
    serial=st.integers(0, 999),
)
def test_phone_and_id_number_never_reach_the_shared_view(
    phone: str, birth: dt.date, serial: int
) -> None:
    number = id_number(f"000000{birth:%Y%m%d}{serial:03d}")
    row = f"JS-1,张三,320500,低压电器,3,,,,{phone},{number}"
    (expert,) = parse_registry_csv(csv_file(row), "r.csv").experts
    assert (expert.phone, expert.id_number) == (phone, number)
    view = shared_view(expert)
    # The shared view does not depend on the secrets at all...
    other = id_number("00000019900101001")
    (twin,) = parse_registry_csv(
        csv_file(f"JS-1,张三,320500,低压电器,3,,,,+8613800000000,{other}"), "r.csv"
    ).experts
    assert view.to_dict() == shared_view(twin).to_dict()
    # ...and no text shows them (a short phone may occur inside a public code, e.g. the
    # bureau 320500 contains "20500": only what the public fields explain is allowed).
    public = json.dumps(shared_view(twin).to_dict(), ensure_ascii=False) + repr(shared_view(twin))
    for blob in (json.dumps(view.to_dict()), repr(view), repr(expert)):
        assert phone not in blob or phone in public
        assert number not in blob


def test_shared_view_round_trips_and_refuses_extra_keys() -> None:
    registry = parse_registry_csv((DATA / "registry.csv").read_bytes(), "registry.csv")
    view = registry.shared()[0]
    assert SharedExpert.from_dict(view.to_dict()) == view
    with pytest.raises(ValidationError) as e:
        SharedExpert.from_dict({**view.to_dict(), "phone": "025-5550-0101"})
    assert e.value.reason == "UNKNOWN_FIELD"
    with pytest.raises(ValidationError) as e:
        SharedExpert.from_dict({k: v for k, v in view.to_dict().items() if k != "name"})
    assert e.value.reason == "MISSING_FIELD"
    with pytest.raises(ValidationError) as e:
        SharedExpert.from_dict({**view.to_dict(), "bureau": "110000"})
    assert e.value.reason == "NOT_IN_DELTA"
