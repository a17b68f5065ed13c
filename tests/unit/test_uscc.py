"""Unified social credit codes (GB 32100-2015): check character, normalisation, refusals."""

from __future__ import annotations

import pytest

from federation.errors import ValidationError
from federation.uscc import (
    ALPHABET,
    EXCLUDED_LETTERS,
    WEIGHTS,
    check_char,
    is_valid_uscc,
    make_uscc,
    parse_uscc,
    validate_uscc,
)

# Real, publicly published codes. Most come from the list of numbers "found online" in
# python-stdnum's tests (arthurdejong/python-stdnum, tests/test_cn_uscc.doctest); the last one
# is printed in the footer and privacy policy of a Shanghai trading company's public web site
# (露意膳（上海）贸易有限公司, LuxurEat).
REAL_CODES = [
    "91110000600037341L",  # Beijing (also the example in stdnum/cn/uscc.py)
    "91310000631696382C",  # Shanghai
    "91310000797046224D",  # Shanghai
    "91310115MA1K3BTP2B",  # Shanghai Pudong, new-style "MA" organisation code
    "913205056082348768",  # Suzhou, Jiangsu
    "913304007429141869",  # Jiaxing, Zhejiang
    "91340600MA2PBM9HXD",  # Huaibei, Anhui
    "121200004013590816",  # registration authority 1 (institutions), Tianjin
    "91620105L015101280",  # letter inside the organisation code
    "91310000MAERED2X1W",  # 露意膳（上海）贸易有限公司
]

# A few codes whose every single-character change is tried (one per check-character kind).
MUTATED_CODES = ["91310000631696382C", "913205056082348768", "91340600MA2PBM9HXD"]


def _reason(code: str) -> str:
    with pytest.raises(ValidationError) as excinfo:
        validate_uscc(code)
    return excinfo.value.reason


@pytest.mark.parametrize("code", REAL_CODES)
def test_real_codes_validate(code: str) -> None:
    assert validate_uscc(code) == code
    assert is_valid_uscc(code)
    assert check_char(code[:17]) == code[17]
    assert make_uscc(code[:17]) == code


def test_weights_are_powers_of_three_mod_31() -> None:
    literal = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)  # GB 32100-2015
    assert tuple(pow(3, i, 31) for i in range(17)) == literal
    assert literal == WEIGHTS
    assert len(ALPHABET) == 31
    assert not set(EXCLUDED_LETTERS) & set(ALPHABET)


def test_normalisation_strips_and_uppercases() -> None:
    assert validate_uscc("  91310115ma1k3btp2b\n") == "91310115MA1K3BTP2B"
    assert validate_uscc("\t91310000maered2x1w ") == "91310000MAERED2X1W"
    assert validate_uscc("\u300091310000631696382c\u3000") == "91310000631696382C"
    assert check_char("91310115ma1k3btp2") == "B"


@pytest.mark.parametrize("code", MUTATED_CODES)
def test_each_single_character_change_rejected(code: str) -> None:
    """Every substitution at every position, including excluded and lower-case letters."""
    substitutes = set(ALPHABET) | set(ALPHABET.lower()) | set(EXCLUDED_LETTERS)
    substitutes |= set(EXCLUDED_LETTERS.lower()) | {" ", "-"}
    tried = 0
    for index, original in enumerate(code):
        for char in sorted(substitutes):
            if char.upper() == original:
                # The same character in lower case is the same code.
                if char != original:
                    mutated = code[:index] + char + code[index + 1 :]
                    assert validate_uscc(mutated) == code
                continue
            mutated = code[:index] + char + code[index + 1 :]
            assert not is_valid_uscc(mutated), mutated
            reason = _reason(mutated)
            if char.upper() in ALPHABET and not (2 <= index < 8 and not char.isdigit()):
                assert reason == "USCC_CHECK_DIGIT", mutated
            tried += 1
    # Skipped per position: the character itself, and its lower case for a letter.
    assert tried == 18 * len(substitutes) - sum(2 if c.isalpha() else 1 for c in code)


@pytest.mark.parametrize("code", MUTATED_CODES)
def test_adjacent_transpositions_rejected(code: str) -> None:
    for index in range(17):
        swapped = code[:index] + code[index + 1] + code[index] + code[index + 2 :]
        if swapped != code:
            assert not is_valid_uscc(swapped), swapped


def test_wrong_check_character_names_expected() -> None:
    with pytest.raises(ValidationError, match=r"position 18\) is 'N', expected 'L'") as excinfo:
        validate_uscc("91110000600037341N")
    assert excinfo.value.reason == "USCC_CHECK_DIGIT"


@pytest.mark.parametrize(
    ("code", "position"),
    [
        ("9111000060003I341L", 14),
        ("9111000060003o341L", 14),
        ("91110000600037S41L", 15),
        ("9111000060003734VL", 17),
        ("91110000600037341Z", 18),
        ("I1110000600037341L", 1),
    ],
)
def test_excluded_letters_refused_with_position(code: str, position: int) -> None:
    with pytest.raises(ValidationError, match=f"character {position} is ") as excinfo:
        validate_uscc(code)
    assert excinfo.value.reason == "USCC_CHARSET"
    assert "I, O, S, V, Z" in str(excinfo.value)


@pytest.mark.parametrize(
    "code",
    [
        "9131 0000631696382C",
        "91310000-631696382C",
        "913100006316963８2C",  # full-width digit
        "913100006316963ß2C",  # upper-cases to two letters
        "91310000631696382ı",  # dotless i upper-cases to I
        "91310000631696382C\x00",
    ],
)
def test_charset_errors(code: str) -> None:
    assert _reason(code) == "USCC_CHARSET"


@pytest.mark.parametrize("code", ["", "   ", "9131000063169638", "91310000631696382CC", "9" * 30])
def test_length_errors(code: str) -> None:
    assert _reason(code) == "USCC_LENGTH"


def test_length_message_gives_count() -> None:
    with pytest.raises(ValidationError, match="has 17 characters; expected 18"):
        validate_uscc("91310000631696382")


def test_division_must_be_digits_but_need_not_be_in_delta() -> None:
    with pytest.raises(ValidationError, match="character 5 is 'A'") as excinfo:
        validate_uscc(make_uscc("91310000631696382")[:4] + "A" + "000631696382C")
    assert excinfo.value.reason == "USCC_DIVISION"
    # Beijing, Guangdong, Gansu: holders can be registered anywhere in China.
    for code in ("91110000600037341L", "91440300568520498A", "91620105MA71T4YW8Q"):
        assert parse_uscc(code).division[:2] not in {"31", "32", "33", "34"}


def test_parse_uscc_fields() -> None:
    parts = parse_uscc(" 91310115ma1k3btp2b ")
    assert parts.code == "91310115MA1K3BTP2B"
    assert parts.registration_authority == "9"
    assert parts.entity_type == "1"
    assert parts.division == "310115"
    assert parts.organisation_code == "MA1K3BTP2"
    assert parts.check == "B"


def test_make_uscc_and_check_char_validate_input() -> None:
    code = make_uscc("91320500MA1MXXXX0")
    assert is_valid_uscc(code)
    with pytest.raises(ValidationError) as excinfo:
        make_uscc("91320500MA1MXXXX")
    assert excinfo.value.reason == "USCC_LENGTH"
    with pytest.raises(ValidationError) as excinfo:
        check_char("91320500MA1MXXXXO")
    assert excinfo.value.reason == "USCC_CHARSET"
    with pytest.raises(ValidationError) as excinfo:
        check_char("9132X500MA1MXXXX0")
    assert excinfo.value.reason == "USCC_DIVISION"


def test_every_check_character_is_reachable() -> None:
    """Changing character 17 through the alphabet yields all 31 check characters."""
    stem = "9131000063169638"
    checks = {check_char(stem + char) for char in ALPHABET}
    assert checks == set(ALPHABET)


@pytest.mark.parametrize("value", [None, 91310000631696382, b"91310000631696382C"])
def test_is_valid_uscc_non_strings(value: object) -> None:
    assert not is_valid_uscc(value)


def test_diagnostics_carry_reason() -> None:
    with pytest.raises(ValidationError) as excinfo:
        validate_uscc("91110000600037341N")
    assert excinfo.value.diagnostics().endswith("[USCC_CHECK_DIGIT]")
