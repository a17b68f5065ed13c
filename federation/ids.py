"""Message ids: time-ordered UUIDs (RFC 9562 §5.7, version 7).

A message id is the key of the busiest indexes a node writes: the outbox's and the inbox's
unique keys and the message log's lookup index. A random (version 4) id lands on a random leaf
of each of them, so every commit dirtied one leaf per index per message, and every one of those
pages went to the write-ahead log and its fsync. A version 7 id begins with its Unix time in
milliseconds: new ids sort after older ones and land on the rightmost leaves, which the previous
commit has just written (ADR 0006, bench/README.md).

The 74 remaining bits are random (``os.urandom``), so ids stay unguessable and do not collide;
the millisecond they reveal is already in the signed header as ``created_at``. Receivers accept
any UUID version (docs/PROTOCOL.md §4.2): this changes only what this node chooses.
"""

from __future__ import annotations

import os
from datetime import datetime

#: The largest 48-bit millisecond count (the year 10889).
_MAX_MS = (1 << 48) - 1


def uuid7_fields(unix_ms: int, rand_a: int, rand_b: int) -> str:
    """The canonical text of the version 7 UUID with these fields (RFC 9562 §5.7).

    ``unix_ms`` is 48 bits, ``rand_a`` 12 and ``rand_b`` 62; the version (7) and variant (0b10)
    bits are set here.
    """
    if not 0 <= unix_ms <= _MAX_MS:
        raise ValueError(f"unix_ts_ms {unix_ms} does not fit in 48 bits")
    if not 0 <= rand_a < 1 << 12 or not 0 <= rand_b < 1 << 62:
        raise ValueError("rand_a is 12 bits and rand_b 62 bits")
    value = unix_ms << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7(at: datetime) -> str:
    """A new version 7 UUID for the instant ``at`` (aware), with 74 fresh random bits."""
    if at.tzinfo is None:
        raise ValueError("a message id needs an aware instant")
    # Whole milliseconds since the epoch, by integer arithmetic (a float would round).
    delta = at - _EPOCH
    unix_ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    r = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    return uuid7_fields(unix_ms, r >> 68, r & ((1 << 62) - 1))


_EPOCH = datetime.fromisoformat("1970-01-01T00:00:00+00:00")
