"""Message ids are version 7 UUIDs (RFC 9562 §5.7): canonical, time-ordered, random otherwise."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from federation.envelope import _valid_uuid
from federation.ids import uuid7, uuid7_fields

# RFC 9562 Appendix A.6: Tuesday, February 22, 2022 2:22:22.00 PM GMT-05:00.
RFC_AT = datetime(2022, 2, 22, 14, 22, 22, tzinfo=timezone(timedelta(hours=-5)))

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
)


def test_rfc_9562_example_vector() -> None:
    got = uuid7_fields(0x017F22E279B0, 0xCC3, 0x18C4DC0C0C07398F)
    assert got == "017F22E2-79B0-7CC3-98C4-DC0C0C07398F".lower()


def test_timestamp_field_is_the_instant_in_unix_milliseconds() -> None:
    # The RFC's example instant, given in GMT-05:00, encodes as 0x017F22E279B0.
    assert uuid7(RFC_AT).startswith("017f22e2-79b0-7")
    assert uuid7(RFC_AT.astimezone(UTC))[:14] == uuid7(RFC_AT)[:14]
    # Microseconds are truncated, not rounded: 999 us still belongs to the same millisecond.
    assert uuid7(RFC_AT + timedelta(microseconds=999))[:13] == "017f22e2-79b0"
    assert uuid7(RFC_AT + timedelta(milliseconds=1))[:13] == "017f22e2-79b1"


@given(instants)
def test_every_id_is_a_canonical_version_7_rfc_variant_uuid(at: datetime) -> None:
    mid = uuid7(at)
    u = uuid.UUID(mid)
    assert str(u) == mid and _valid_uuid(mid)  # what receivers accept (PROTOCOL.md §4.2)
    assert u.version == 7
    assert u.variant == uuid.RFC_4122
    delta = at - datetime(1970, 1, 1, tzinfo=UTC)
    assert u.int >> 80 == delta // timedelta(milliseconds=1)


@given(instants, st.integers(min_value=1, max_value=10**9))
def test_a_later_millisecond_sorts_after_as_text(at: datetime, later_ms: int) -> None:
    later = at + timedelta(milliseconds=later_ms)
    if later.year > 9999:
        return
    assert uuid7(at) < uuid7(later)


def test_ids_of_one_instant_differ() -> None:
    at = datetime.now(UTC)
    ids = {uuid7(at) for _ in range(20_000)}
    assert len(ids) == 20_000
    # 74 random bits: both random fields vary, not only a counter.
    assert len({i[15:18] for i in ids}) > 3000  # rand_a: 4096 values
    assert len({i[20:] for i in ids}) == 20_000


def test_naive_instant_is_refused() -> None:
    with pytest.raises(ValueError, match="aware"):
        uuid7(datetime(2026, 1, 1))


def test_instant_before_the_epoch_is_refused() -> None:
    with pytest.raises(ValueError, match="48 bits"):
        uuid7(datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC))


@pytest.mark.parametrize(
    ("ms", "a", "b"),
    [(1 << 48, 0, 0), (-1, 0, 0), (0, 1 << 12, 0), (0, -1, 0), (0, 0, 1 << 62), (0, 0, -1)],
)
def test_fields_out_of_range_are_refused(ms: int, a: int, b: int) -> None:
    with pytest.raises(ValueError):
        uuid7_fields(ms, a, b)
