"""Unified social credit codes (统一社会信用代码, GB 32100-2015).

Every holder (免办单位) is identified by an 18-character code drawn from the 31-character alphabet
``0123456789ABCDEFGHJKLMNPQRTUWXY`` (the letters I, O, S, V and Z are never used):

=========  ====================================================================
position   meaning
=========  ====================================================================
1          registration authority code (登记管理部门代码), e.g. ``9`` market regulation
2          entity type code (机构类别代码), e.g. ``1`` enterprise
3–8        division code of the registering authority (GB/T 2260, six digits)
9–17       organisation code (主体标识码, GB 11714)
18         check character (校验码, GB/T 17710 MOD 31-3)
=========  ====================================================================

The check character is ``ALPHABET[(31 - Σ value(cᵢ)·wᵢ mod 31) mod 31]`` over the first 17
characters with the weights in :data:`WEIGHTS`. Because 31 is prime and no weight is a multiple
of 31, every single-character substitution changes the check character.

The division code is only required to be six digits: holders may be registered anywhere in China,
not only in the Yangtze River Delta (see :mod:`federation.divisions` for the Delta's bureaus).

This module is pure: no I/O, no global state.
"""

from __future__ import annotations

from typing import NamedTuple

from federation.errors import ValidationError

__all__ = [
    "ALPHABET",
    "EXCLUDED_LETTERS",
    "LENGTH",
    "WEIGHTS",
    "Uscc",
    "check_char",
    "is_valid_uscc",
    "make_uscc",
    "parse_uscc",
    "validate_uscc",
]

#: The 31 characters a code may contain, in value order (``'0'`` is 0, ``'Y'`` is 30).
ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"

#: Latin letters that GB 32100-2015 leaves out of the alphabet (easily confused with digits).
EXCLUDED_LETTERS = "IOSVZ"

#: Length of a complete code.
LENGTH = 18

#: Weights of characters 1–17 (3**(i-1) mod 31).
WEIGHTS: tuple[int, ...] = (1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28)

_VALUE: dict[str, int] = {char: value for value, char in enumerate(ALPHABET)}
_ACCEPTED = frozenset(ALPHABET + ALPHABET.lower())
_DIVISION = slice(2, 8)


class Uscc(NamedTuple):
    """A validated code split into its GB 32100-2015 fields."""

    code: str
    """The whole normalised code (18 characters, upper case)."""
    registration_authority: str
    """Character 1: registration authority code (``9`` = market regulation)."""
    entity_type: str
    """Character 2: entity type code within that authority."""
    division: str
    """Characters 3–8: GB/T 2260 division code of the registering authority."""
    organisation_code: str
    """Characters 9–17: organisation code (GB 11714)."""
    check: str
    """Character 18: the check character."""


def _describe(char: str) -> str:
    """Show one offending character so that invisible ones are visible in a message."""
    if char.isspace():
        return f"whitespace {char!r}"
    if not char.isprintable() or not char.isascii():
        return f"{char!r} (U+{ord(char):04X})"
    return f"'{char}'"


def _check_charset(code: str) -> None:
    """Refuse the first character outside the alphabet, naming its 1-based position."""
    for index, char in enumerate(code):
        if char in _ACCEPTED:
            continue
        position = index + 1
        shown = _describe(char)
        if char.isspace():
            hint = "; write the code without spaces or separators"
        elif char.upper() in EXCLUDED_LETTERS and char.isascii():
            hint = (
                f"; the letters {', '.join(EXCLUDED_LETTERS)} are never used in a unified "
                "social credit code (they look like 1, 0, 5, U and 2)"
            )
        else:
            hint = f"; allowed characters are {ALPHABET}"
        raise ValidationError(
            f"unified social credit code {code!r}: character {position} is {shown}, "
            f"which is not allowed{hint}",
            reason="USCC_CHARSET",
        )


def _normalise(code: str, *, expected_length: int) -> str:
    """Strip surrounding whitespace, check charset and length, return the upper-case form.

    The charset is checked on the original characters, before upper-casing, so that a
    non-ASCII letter whose upper case is ASCII (``'ı'`` → ``'I'``) or longer (``'ß'`` → ``'SS'``)
    cannot slip through.
    """
    stripped = code.strip()
    if not stripped:
        raise ValidationError(
            f"unified social credit code is empty; expected {expected_length} characters",
            reason="USCC_LENGTH",
        )
    _check_charset(stripped)
    if len(stripped) != expected_length:
        raise ValidationError(
            f"unified social credit code {stripped!r} has {len(stripped)} characters; "
            f"expected {expected_length}",
            reason="USCC_LENGTH",
        )
    normalised = stripped.upper()
    for index in range(_DIVISION.start, _DIVISION.stop):
        char = normalised[index]
        if not char.isdigit():
            raise ValidationError(
                f"unified social credit code {stripped!r}: character {index + 1} is '{char}', "
                "but characters 3-8 are the GB/T 2260 division code and must be digits",
                reason="USCC_DIVISION",
            )
    return normalised


def _compute(first17: str) -> str:
    """Check character of 17 characters already known to be upper-case alphabet characters."""
    total = sum(_VALUE[char] * weight for char, weight in zip(first17, WEIGHTS, strict=True))
    return ALPHABET[(31 - total % 31) % 31]


def check_char(first17: str) -> str:
    """Return the check character (position 18) for the first 17 characters of a code.

    Lower-case letters are accepted and treated as upper case; surrounding whitespace is
    ignored. Raises :class:`~federation.errors.ValidationError` if ``first17`` is not 17
    characters of the alphabet with a six-digit division code.
    """
    return _compute(_normalise(first17, expected_length=LENGTH - 1))


def validate_uscc(code: str) -> str:
    """Validate a unified social credit code and return its normal form.

    The normal form has surrounding whitespace removed and letters in upper case. Inner
    whitespace, separators and the letters I, O, S, V, Z are refused. Raises
    :class:`~federation.errors.ValidationError` with reason ``USCC_LENGTH``, ``USCC_CHARSET``,
    ``USCC_DIVISION`` or ``USCC_CHECK_DIGIT``; the message names the offending position and,
    for a wrong check character, the expected one.
    """
    normalised = _normalise(code, expected_length=LENGTH)
    expected = _compute(normalised[:17])
    actual = normalised[17]
    if actual != expected:
        raise ValidationError(
            f"unified social credit code {normalised!r}: check character (position 18) is "
            f"'{actual}', expected '{expected}'; a character is mistyped somewhere",
            reason="USCC_CHECK_DIGIT",
        )
    return normalised


def is_valid_uscc(code: object) -> bool:
    """Return whether ``code`` is a string :func:`validate_uscc` accepts."""
    if not isinstance(code, str):
        return False
    try:
        validate_uscc(code)
    except ValidationError:
        return False
    return True


def parse_uscc(code: str) -> Uscc:
    """Validate ``code`` (as :func:`validate_uscc`) and split it into its fields."""
    normalised = validate_uscc(code)
    return Uscc(
        code=normalised,
        registration_authority=normalised[0],
        entity_type=normalised[1],
        division=normalised[_DIVISION],
        organisation_code=normalised[8:17],
        check=normalised[17],
    )


def make_uscc(first17: str) -> str:
    """Complete 17 characters with their check character (for tests and fixtures).

    >>> make_uscc("91310000631696382")
    '91310000631696382C'
    """
    normalised = _normalise(first17, expected_length=LENGTH - 1)
    return normalised + _compute(normalised)
