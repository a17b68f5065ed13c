"""Smoke test of ``bench/obligations.py``.

The bulk-filled rows must be those the real request path writes: requests created with the
example file, delivered with their receipts, some accepted and assigned (through the simulated
transport of ``tests/assistance_harness.py``: the real intake, receipt and delivered-hook code),
then the same requests bulk-filled into a fresh store of the same node. Every column of
``requests`` and of ``request_events`` (but the autoincrement id) must be equal, and so must
what the obligation queries answer on both. Then the benchmark itself runs at tiny sizes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Connection

from bench import obligations as bench
from cccfed.v1 import assistance_pb2 as pb
from federation.uscc import make_uscc
from node import pki
from node.assistance import EVENTS, REQUESTS
from node.calendar_store import load_calendar
from node.config import load_config
from node.local import free_ports
from node.runtime import Node
from tests.assistance_harness import (
    JS,
    SH,
    ZJ,
    Clock,
    accept,
    act,
    deliver_all,
    new_request,
    node_at,
    read,
)

HOLDER = "上海某某精密设备有限公司"
#: Sent at 09:00:00 Shanghai, received a second later; accepted at 09:30:00, the acceptance
#: received a second later: the conventions of ``bench.population``.
SENT = bench.at(dt.date(2026, 3, 2), 9)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[Clock, dict[str, Node]]]:
    clock = Clock(SENT)
    codes = [SH, JS, ZJ]
    root = tmp_path / "fed"
    pki.init_federation(
        root,
        codes,
        ports=dict(zip(codes, free_ports(3), strict=True)),
        now=SENT - dt.timedelta(hours=1),
    )
    made = {c: node_at(root, c, tmp_path / f"{c}.db", clock) for c in codes}
    made["bulk"] = node_at(root, SH, tmp_path / "bulk.db", clock)
    yield clock, made
    for node in made.values():
        node.close()


def rows(conn: Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    reqs = conn.execute(select(REQUESTS).order_by(REQUESTS.c.request_id)).all()
    cols = [c for c in EVENTS.c if c.name != "id"]
    evs = conn.execute(
        select(*cols).order_by(EVENTS.c.request_id, EVENTS.c.side, EVENTS.c.idx)
    ).all()
    return [tuple(r) for r in reqs], [tuple(r) for r in evs]


def test_bulk_fill_matches_the_request_path(nodes: tuple[Clock, dict[str, Node]]) -> None:
    clock, n = nodes
    sh, js, zj, bulk = n[SH], n[JS], n[ZJ], n["bulk"]
    uscc = [make_uscc(f"91310000{i:09d}") for i in range(4)]

    def holder(i: int) -> dict[str, str]:
        return {"name": HOLDER, "uscc": uscc[i]}

    # Shanghai asks Jiangsu and Zhejiang (awaited here); Jiangsu and Zhejiang ask Shanghai (owed).
    asked = [
        (new_request(sh, target_bureau="320500", holder=holder(0)), "requester", JS),
        (
            new_request(sh, requesting_bureau="310104", target_bureau="330100", holder=holder(1)),
            "requester",
            ZJ,
        ),
        (
            new_request(js, requesting_bureau="320100", target_bureau="310115", holder=holder(2)),
            "responder",
            JS,
        ),
        (
            new_request(zj, requesting_bureau="330200", target_bureau="310104", holder=holder(3)),
            "responder",
            ZJ,
        ),
    ]
    clock.advance(seconds=1)
    assert deliver_all(sh, js, zj) == []
    # Jiangsu accepts Shanghai's request; Shanghai accepts Zhejiang's.
    clock.set(SENT + dt.timedelta(minutes=30))
    act(js, asked[0][0], accept("320500"))
    act(sh, asked[3][0], accept("310104"))
    clock.advance(seconds=1)
    assert deliver_all(sh, js, zj) == []

    real_reqs, real_evs = read(sh, rows)
    assert len(real_reqs) == 4 and len(real_evs) == 6

    def events(rid: str) -> list[Any]:
        return [e for e in real_evs if e[0] == rid]

    specs = []
    for i, (rid, role, peer) in enumerate(asked):
        evs = events(rid)
        request_mid = next(e[5] for e in evs if e[1] == "requester")
        accepted = [e for e in evs if e[1] == "responder"]
        acc = None
        if accepted:
            msg = pb.RequestAccepted.FromString(bytes(accepted[0][6]))
            acc = bench.Accept(
                msg.assigned_bureau,
                msg.assignee.name,
                msg.assignee.phone,
                accepted[0][5],
                SENT + dt.timedelta(minutes=30),
            )
        row = next(r for r in real_reqs if r[0] == rid)
        received = SENT + dt.timedelta(seconds=1)
        if role == "responder":
            created, updated = received, acc.at if acc else received
        else:
            created = SENT
            updated = acc.at + dt.timedelta(seconds=1) if acc else received
        specs.append(
            bench.Spec(
                request_id=rid,
                role=role,
                requesting_bureau=row[3],
                target_bureau=row[5],
                counterpart=peer,
                holder_uscc=uscc[i],
                message_id=request_mid,
                sent_at=SENT,
                received_at=received,
                created_at=created,
                updated_at=updated,
                accept=acc,
            )
        )
    assert bench.fill(bulk.engine, SH, specs) == 4

    bulk_reqs, bulk_evs = read(bulk, rows)
    assert bulk_reqs == real_reqs
    assert bulk_evs == real_evs

    # The queries answer alike on both stores, now and once everything is overdue.
    for at in (SENT + dt.timedelta(days=13), SENT + dt.timedelta(days=20)):

        def answers(node: Node, at: dt.datetime = at) -> Any:
            def q(c: Connection) -> Any:
                a = node.assistance
                return (
                    a.obligations(c, at),
                    a.obligations(c, at, direction="owed", limit=1),
                    a.escalation(c, at),
                    [a.view(c, rid).state.to_dict() for rid, _, _ in asked],
                )

            return read(node, q)

        assert answers(bulk) == answers(sh)

        def sweep(node: Node, at: dt.datetime = at) -> list[dict[str, Any]]:
            return bench.rolled_back(node.engine, lambda c: node.assistance.sweep(c, at))

        assert sweep(bulk) == sweep(sh)


def test_population_makes_the_actionable_set_it_promises(tmp_path: Path) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    root = tmp_path / "fed"
    bench.make_federation(root, now)
    config = bench.node_config(root, f"sqlite:///{tmp_path / 'pop.db'}", "pop")
    node = Node(load_config(config), clock=lambda: now)
    try:
        calendar = read(node, load_calendar)
        n = bench.fill(node.engine, SH, bench.population(300, now, calendar, overdue=20, soon=30))
        assert n == 300
        obs = read(node, lambda c: node.assistance.obligations(c, now))
        assert len(obs) == 300
        assert sum(o["overdue"] for o in obs) == 20
        assert sum(not o["overdue"] and o["days_left"] <= 3 for o in obs) == 30
        assert {o["direction"] for o in obs} == {"owed", "awaiting"}
        assert {o["status"] for o in obs} == {"delivered", "accepted"}
        assert len(bench.rolled_back(node.engine, lambda c: node.assistance.sweep(c, now))) == 50
    finally:
        node.close()


def test_the_benchmark_runs_at_tiny_sizes() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = bench.main(
            ["--n", "60", "--n", "120", "--runs", "1", "--overdue", "5", "--due-soon", "5"]
        )
    text = out.getvalue()
    assert "query plans: no full table scan and no sort" in text, text
    assert "n=60: sweep produces 10 reminders" in text
    assert "n=120: sweep produces 10 reminders" in text
    assert rc in (0, 1)  # timings of a tiny store are noise; the plans are what is checked
