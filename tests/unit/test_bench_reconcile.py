"""Smoke test of ``bench/reconcile.py`` store mode at small n.

The bulk-filled rows must be those the real publish path writes: the same entries, leaf
hashes, subtree hashes and root, and the lagging member's frontier must match the origin's
checkpoint at n - d; one reconciliation round then brings it level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from bench import reconcile as bench
from node.recognition import ENTRIES, NODES, frontier_of, frontiers


def test_bulk_fill_matches_the_publish_path(tmp_path: Path) -> None:
    n, d = 13, 3
    origin, lagging = bench.make_nodes(tmp_path / "bulk")
    real, _ = bench.make_nodes(tmp_path / "real")
    try:
        bench.fill(origin, lagging, n, d)
        for i in range(n):
            result = real.recognition.parse_new(bench.record_data(i))
            bench.write(real, functools.partial(real.recognition.publish, result=result))

        def rows(c: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            cols = (ENTRIES.c.idx, ENTRIES.c.leaf_hash, ENTRIES.c.data, ENTRIES.c.record_id)
            more = (ENTRIES.c.business_key, ENTRIES.c.supersedes, ENTRIES.c.kind)
            e = c.execute(select(*cols, *more).order_by(ENTRIES.c.idx)).all()
            nodes = c.execute(
                select(NODES.c.level, NODES.c.idx, NODES.c.hash).order_by(
                    NODES.c.level, NODES.c.idx
                )
            ).all()
            return [tuple(r) for r in e], [tuple(r) for r in nodes]

        assert bench.read(origin, rows) == bench.read(real, rows)
        assert bench.read(origin, frontiers) == bench.read(real, frontiers)
        lag_entries, lag_nodes = bench.read(lagging, rows)
        real_entries, real_nodes = bench.read(real, rows)
        assert lag_entries == real_entries[: n - d]
        cut = bench.read(real, lambda c: frontier_of(c, bench.ORIGIN, n - d))
        assert bench.read(lagging, frontiers)[bench.ORIGIN] == (n - d, cut.root())
        assert lag_nodes == [x for x in real_nodes if (int(x[1]) + 1) << int(x[0]) <= n - d]

        fast, lines = bench.store_one_round(origin, lagging)
        assert fast.round_trips == 1 and lines[0]["status"] == "behind"
        assert bench.read(lagging, frontiers) == bench.read(origin, frontiers)
        assert bench.store_naive(origin, lagging).round_trips >= 1
    finally:
        for node in (origin, lagging, real):
            node.close()
