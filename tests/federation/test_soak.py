"""The short soak: four real nodes under SIGKILL restarts and link cuts keep every promise.

The same harness as ``make soak`` (:mod:`bench.soak`), with a short run phase and a denser fault
schedule: a node is killed every few seconds and links are cut or black-holed all the time.
Every invariant of the settle phase must hold: exactly-once delivery with verified receipts,
both sides of every request and exchange alike, every message log verifying, every origin log
converged and every result recognised, no equivocation, and no node exiting by itself.
``CCCFED_SOAK_SEED`` replays a given schedule.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import pytest

from bench.soak import SoakOptions, plan_faults, recheck, run_soak

SEED = int(os.environ.get("CCCFED_SOAK_SEED", "20261128"))

SHORT = SoakOptions(
    seconds=25.0,
    seed=SEED,
    rate=4.0,
    kill_gap=(4.0, 8.0),
    down_for=(0.3, 3.0),
    term_share=0.5,
    cut_gap=(0.8, 2.5),
    cut_for=(0.5, 5.0),
    drain_seconds=60.0,
    progress_every=0.0,
)


def test_the_fault_schedule_is_a_function_of_the_seed() -> None:
    a, b = plan_faults(SHORT), plan_faults(SHORT)
    assert a == b
    assert plan_faults(replace(SHORT, seed=SEED + 1)) != a
    kills = [f for f in a if f.kind in ("kill", "term")]
    cuts = [f for f in a if f.kind == "cut"]
    assert len(kills) >= 3 and len(cuts) >= 5
    # Every kill is followed by the restart of that node, every cut by the restore of the link.
    for f in kills:
        assert any(g.kind == "restart" and g.node == f.node and g.at > f.at for g in a)
    for f in cuts:
        assert any(g.kind == "restore" and g.link == f.link and g.at > f.at for g in a)
    # A node is not killed again while it is down, nor a link cut again while it is cut.
    down: set[str] = set()
    cut: set[tuple[str, str]] = set()
    for f in a:
        if f.kind in ("kill", "term"):
            assert f.node not in down
            down.add(f.node)
        elif f.kind == "restart":
            down.remove(f.node)
        elif f.kind == "cut":
            assert f.link not in cut
            cut.add(f.link)
        else:
            cut.remove(f.link)
    longer = plan_faults(replace(SHORT, seconds=300.0))
    assert {f.mode for f in longer if f.kind == "cut"} == {"reset", "blackhole"}
    assert {f.kind for f in longer} == {"kill", "term", "restart", "cut", "restore"}


@pytest.mark.slow
def test_short_soak_keeps_every_promise(tmp_path: Path) -> None:
    report = run_soak(replace(SHORT, directory=tmp_path / "soak"))
    failed = [
        f"{c.name}: {c.detail}\n  " + "\n  ".join(c.problems) for c in report.checks if not c.ok
    ]
    assert not failed, f"seed {SEED}: " + "\n".join(failed)
    names = {c.name for c in report.checks}
    assert {
        "1 delivered exactly once",
        "2 requests alike on both sides",
        "2 exchanges alike on both sides",
        "2 bulletins and acks arrived",
        "3 message logs verify",
        "4 logs converged, results recognised",
        "5 no equivocation",
        "nodes: no crash, clean stops",
        "node logs: no ERROR",
    } <= names
    # Every fault of the schedule was played, and the workload got through them.
    planned = [f for f in plan_faults(SHORT) if f.at < SHORT.seconds]
    assert report.counts["kills (SIGKILL)"] == sum(f.kind == "kill" for f in planned) >= 2
    assert report.counts["graceful stops during the run (SIGTERM)"] == sum(
        f.kind == "term" for f in planned
    )
    cuts = [f for f in planned if f.kind == "cut"]
    assert report.counts["link cuts (reset)"] == sum(f.mode == "reset" for f in cuts)
    assert report.counts["link cuts (blackhole)"] == sum(f.mode == "blackhole" for f in cuts)
    assert report.counts["messages sent more than once (attempts > 1)"] > 0
    assert report.counts["messages"] >= 50
    assert report.counts["results published"] >= 1
    assert report.counts["requests"] >= 5
    assert report.counts["drained after reconcile"] == "yes"

    # The checks are not vacuous: break each promise in a store and check again.
    root = tmp_path / "soak"

    @contextmanager
    def store(code: str) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(root / "nodes" / code / "store.db")
        try:
            with db:  # one transaction, committed
                yield db
        finally:
            db.close()

    with store("320000") as db:  # a message lost by its recipient
        (lost,) = db.execute("SELECT message_id FROM inbox ORDER BY message_id LIMIT 1").fetchone()
        db.execute("DELETE FROM inbox WHERE message_id = ?", (lost,))
    with store("330000") as db:  # one side of a request sees another reply period
        (moved,) = db.execute(
            "SELECT request_id FROM requests WHERE received_at IS NOT NULL "
            "ORDER BY request_id LIMIT 1"
        ).fetchone()
        db.execute(
            "UPDATE requests SET received_at = datetime(received_at, '-20 days') "
            "WHERE request_id = ?",
            (moved,),
        )
    with store("310000") as db:  # a message-log record no longer chained
        db.execute("UPDATE message_log SET record_hash = zeroblob(32) WHERE seq = 2")
    with store("340000") as db:  # no cosignature held, and equivocation evidence
        db.execute("DELETE FROM log_cosignatures")
        db.execute(
            "INSERT INTO equivocations (origin, evidence, source, found_at) "
            "VALUES ('310000', x'00', '340000', '2026-01-01 00:00:00.000000')"
        )
    broken = recheck(root)
    assert lost in "\n".join(broken.check("1 delivered exactly once").problems)
    assert moved in "\n".join(broken.check("2 requests alike on both sides").problems)
    assert not broken.check("3 message logs verify").ok
    assert not broken.check("4 logs converged, results recognised").ok
    assert not broken.check("5 no equivocation").ok
    assert broken.check("2 bulletins and acks arrived").ok  # untouched
