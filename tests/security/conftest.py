"""Fixtures of the hostile-input tests: the gRPC fixtures of ``tests/grpc`` and store snapshots.

Every test here runs the real code: envelopes sealed with the federation's real keys, calls over
real mutual TLS to real :class:`node.runtime.Node` servers, real SQLite stores, and the real
``cccfed`` command line. A refusal must be clear (a reason code) *and* leave nothing behind:
:func:`snapshot` takes the row count of every table of a store and its message-log head, so a
test can compare before and after.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, inspect, select, table
from sqlalchemy.engine import Engine

from node.store.ops import HEAD
from tests.grpc.conftest import new_federation, runner

__all__ = ["Snapshot", "new_federation", "runner", "snapshot"]


@dataclass(frozen=True)
class Snapshot:
    """Row counts of every table of a store, and the head (seq, hash) of its message log."""

    counts: dict[str, int]
    head: tuple[int, bytes] | None

    def changed_tables(self, other: Snapshot) -> list[str]:
        names = set(self.counts) | set(other.counts)
        return sorted(n for n in names if self.counts.get(n) != other.counts.get(n))


def snapshot(engine: Engine) -> Snapshot:
    names = sorted(inspect(engine).get_table_names())
    with engine.connect() as conn:
        counts = {
            n: int(conn.execute(select(func.count()).select_from(table(n))).scalar_one())
            for n in names
        }
        row = conn.execute(select(HEAD.c.seq, HEAD.c.record_hash)).first()
    head = None if row is None else (int(row.seq), bytes(row.record_hash))
    return Snapshot(counts, head)
