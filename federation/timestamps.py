"""Fast conversions between ``google.protobuf.Timestamp`` and aware UTC datetimes.

Every message is stamped once and checked several times; protobuf's own ``FromDatetime`` and
``ToDatetime`` go through ``utctimetuple``/``calendar.timegm`` and cost several microseconds each
on the hot path. These give the same results and raise the same ``ValueError`` for the same
out-of-range values (``tests/unit/test_timestamps.py`` checks them against protobuf's).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.timestamp_pb2 import Timestamp

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS_MIN = -62135596800  # 0001-01-01T00:00:00Z
_SECONDS_MAX = 253402300799  # 9999-12-31T23:59:59Z
_NANOS_PER_SECOND = 1_000_000_000


def _check(seconds: int, nanos: int) -> None:
    if seconds < _SECONDS_MIN or seconds > _SECONDS_MAX:
        raise ValueError(
            f"Timestamp is not valid: Seconds {seconds} must be in range "
            f"[{_SECONDS_MIN}, {_SECONDS_MAX}]."
        )
    if nanos < 0 or nanos >= _NANOS_PER_SECOND:
        raise ValueError(f"Timestamp is not valid: Nanos {nanos} must be in a range [0, 999999].")


def to_datetime(ts: Timestamp) -> datetime:
    """``ts.ToDatetime(tzinfo=UTC)``: an aware UTC datetime (microsecond precision)."""
    seconds, nanos = ts.seconds, ts.nanos
    _check(seconds, nanos)
    return EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)


def set_datetime(ts: Timestamp, dt: datetime) -> None:
    """``ts.FromDatetime(dt)``; a naive ``dt`` is taken as UTC, as protobuf does."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    delta = dt - EPOCH
    seconds = delta.days * 86400 + delta.seconds
    nanos = dt.microsecond * 1000
    _check(seconds, nanos)
    ts.seconds = seconds
    ts.nanos = nanos
