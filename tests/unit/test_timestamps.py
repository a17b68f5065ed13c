"""federation.timestamps gives protobuf's own Timestamp conversions, faster."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from federation.timestamps import set_datetime, to_datetime

ZONES = st.sampled_from([UTC, timezone(timedelta(hours=8)), timezone(timedelta(hours=-5))])


@given(st.one_of(st.datetimes(timezones=ZONES), st.datetimes()))
def test_set_datetime_equals_protobuf(dt: datetime) -> None:
    """Aware datetimes in any zone, and naive ones (UTC, as protobuf takes them)."""
    ours, theirs = Timestamp(), Timestamp()
    try:
        theirs.FromDatetime(dt)
    except ValueError:
        with pytest.raises(ValueError):
            set_datetime(ours, dt)
        return
    set_datetime(ours, dt)
    assert (ours.seconds, ours.nanos) == (theirs.seconds, theirs.nanos)


@given(
    st.integers(min_value=-62135596800 - 10, max_value=253402300799 + 10),
    st.integers(min_value=-5, max_value=1_000_000_005),
)
def test_to_datetime_equals_protobuf(seconds: int, nanos: int) -> None:
    ts = Timestamp(seconds=seconds, nanos=nanos)
    try:
        expected = ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        with pytest.raises(ValueError):
            to_datetime(ts)
        return
    got = to_datetime(ts)
    assert got == expected
    assert got.tzinfo is UTC


def test_round_trip_keeps_microseconds() -> None:
    dt = datetime(2026, 11, 28, 15, 4, 5, 123456, tzinfo=UTC)
    ts = Timestamp()
    set_datetime(ts, dt)
    assert to_datetime(ts) == dt
