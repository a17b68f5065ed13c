"""Requests in the store: reminders, the escalation report, provisional due dates.

In-process :class:`node.runtime.Node` objects without servers, on SQLite stores in ``tmp_path``,
with an injected clock; requests travel through the simulated transport of
``tests/assistance_harness.py`` (the real intake and receipt handling, no network). Each test
makes its federation valid at its own start time, so none depends on today's date.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from cccfed.v1.assistance_pb2 import RequestAccepted
from federation.holidays import HolidayCalendar, parse_schedule
from federation.periods import TZ, day_period
from node import pki
from node.assistance import REMINDERS, REQUESTS, Assistance
from node.calendar_store import import_schedule
from node.local import free_ports
from node.runtime import Node
from tests.assistance_harness import (
    HOLIDAYS_2027,
    JS,
    SH,
    ZJ,
    Clock,
    accept,
    act,
    ask_extension,
    decide_extension,
    deliver_all,
    new_request,
    node_at,
    read,
    reply,
    view,
    write,
)

UTC = dt.UTC


def shanghai(day: dt.date, hour: int = 10) -> dt.datetime:
    """``hour`` o'clock in Shanghai on ``day``, as an aware UTC instant."""
    return dt.datetime.combine(day, dt.time(hour), tzinfo=TZ).astimezone(UTC)


class Nodes:
    """A federation valid from ``start`` and its nodes, on stores kept across restarts."""

    def __init__(self, root: Path, codes: list[str], clock: Clock) -> None:
        self.root = root
        self.clock = clock
        self.nodes: dict[str, Node] = {}
        pki.init_federation(
            root,
            codes,
            ports=dict(zip(codes, free_ports(len(codes)), strict=True)),
            now=clock() - dt.timedelta(hours=1),
        )
        for code in codes:
            self.start(code)

    def store(self, code: str) -> Path:
        return self.root / f"store-{code}.db"

    def start(self, code: str) -> Node:
        self.nodes[code] = node_at(self.root, code, self.store(code), self.clock)
        return self.nodes[code]

    def restart(self, code: str) -> Node:
        self.nodes.pop(code).close()
        return self.start(code)

    def __getitem__(self, code: str) -> Node:
        return self.nodes[code]

    def close(self) -> None:
        for node in self.nodes.values():
            node.close()
        self.nodes.clear()


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Callable[..., Nodes]]:
    made: list[Nodes] = []

    def make(codes: list[str], start: dt.datetime) -> Nodes:
        nodes = Nodes(tmp_path / f"fed{len(made)}", codes, Clock(start))
        made.append(nodes)
        return nodes

    yield make
    for nodes in made:
        nodes.close()


def sweep(node: Node) -> list[dict[str, Any]]:
    now = node.clock()
    return write(node, lambda conn: node.assistance.sweep(conn, now))


def reminders(node: Node) -> list[tuple[str, str, str]]:
    return read(
        node,
        lambda c: [
            (r.request_id, r.key, r.due_date)
            for r in c.execute(select(REMINDERS).order_by(REMINDERS.c.produced_at))
        ],
    )


def obligations(node: Node) -> list[dict[str, Any]]:
    now = node.clock()
    return read(node, lambda c: node.assistance.obligations(c, now))


def request_row(node: Node, rid: str) -> Any:
    return read(
        node, lambda c: c.execute(select(REQUESTS).where(REQUESTS.c.request_id == rid)).one()
    )


# --- reminders ----------------------------------------------------------------------------------

#: A Monday, 10:00 in Shanghai: the request is delivered then; 15 days later is Tuesday 17 March.
MARCH_2 = shanghai(dt.date(2026, 3, 2))


def test_reminders_as_the_due_date_nears_each_once_and_not_again_after_a_restart(
    federation: Callable[..., Nodes],
) -> None:
    fed = federation([SH, JS], MARCH_2)
    rid = new_request(fed[SH])
    assert deliver_all(fed[SH], fed[JS]) == []
    due = view(fed[SH], rid).state.due
    assert due is not None and due.due_date == dt.date(2026, 3, 17)
    assert view(fed[JS], rid).state.due == due

    # 15 days left: nothing yet.
    assert sweep(fed[SH]) == [] and sweep(fed[JS]) == []

    steps = [
        (due.due_date - dt.timedelta(days=2), "due-in-3d", 2, False),
        (due.due_date, "due-in-1d", 0, False),
        (due.due_date + dt.timedelta(days=1), "overdue", -1, True),
    ]
    for day, key, days_left, overdue in steps:
        fed.clock.set(shanghai(day))
        for code, direction, counterpart in ((SH, "awaiting", JS), (JS, "owed", SH)):
            produced = sweep(fed[code])
            assert [(p["request_id"], p["reminder"]) for p in produced] == [(rid, key)], code
            p = produced[0]
            assert (p["direction"], p["counterpart"], p["due_date"]) == (
                direction,
                counterpart,
                "2026-03-17",
            )
            assert (p["days_left"], p["overdue"]) == (days_left, overdue)
            # Idempotent: a second sweep produces nothing ...
            assert sweep(fed[code]) == []
            # ... nor does a new process on the same store.
            fed.restart(code)
            assert sweep(fed[code]) == []
    for code in (SH, JS):
        assert reminders(fed[code]) == [
            (rid, "due-in-3d", "2026-03-17"),
            (rid, "due-in-1d", "2026-03-17"),
            (rid, "overdue", "2026-03-17"),
        ]


def test_first_sweep_late_produces_only_the_most_urgent_reminder(
    federation: Callable[..., Nodes],
) -> None:
    fed = federation([SH, JS], MARCH_2)
    rid = new_request(fed[SH])
    assert deliver_all(fed[SH], fed[JS]) == []
    fed.clock.set(shanghai(dt.date(2026, 3, 18)))  # the node was down until after the due date
    assert [p["reminder"] for p in sweep(fed[JS])] == ["overdue"]
    assert sweep(fed[JS]) == []
    assert [k for _, k, _ in reminders(fed[JS])] == ["overdue"]
    assert view(fed[JS], rid).state.due is not None


def test_no_reminders_for_requests_that_owe_nothing(federation: Callable[..., Nodes]) -> None:
    fed = federation([SH, JS], MARCH_2)
    sh, js = fed[SH], fed[JS]
    replied = new_request(sh)
    assert deliver_all(sh, js) == []
    act(js, replied, accept())
    act(js, replied, reply())
    assert deliver_all(sh, js) == []
    undelivered = new_request(sh)  # still in the outbox: no receipt, no period yet
    fed.clock.set(shanghai(dt.date(2026, 4, 1)))
    assert sweep(sh) == [] and sweep(js) == []
    assert obligations(sh) == [] and obligations(js) == []
    assert view(sh, undelivered).state.due is None


# --- escalation -----------------------------------------------------------------------------------


def test_escalation_groups_overdue_obligations_per_province_and_bureau(
    federation: Callable[..., Nodes],
) -> None:
    fed = federation([SH, JS, ZJ], MARCH_2)
    sh, js, zj = fed[SH], fed[JS], fed[ZJ]
    sent: dict[str, tuple[str, dt.date]] = {}  # name -> (request id, due date)
    # One request a day, so that each has its own due date.
    for name, target in (
        ("suzhou-1", "320500"),
        ("nanjing", "320100"),
        ("suzhou-2", "320500"),
        ("hangzhou", "330100"),
        ("replied", "320500"),
    ):
        rid = new_request(sh, target_bureau=target)
        assert deliver_all(sh, js, zj) == []
        due = view(sh, rid).state.due
        assert due is not None
        sent[name] = (rid, due.due_date)
        fed.clock.advance(days=1)
    # Jiangsu assigns Nanjing's to Wuxi; replied requests owe nothing.
    act(js, sent["nanjing"][0], accept("320200"))
    act(js, sent["replied"][0], accept())
    act(js, sent["replied"][0], reply())
    assert deliver_all(sh, js, zj) == []
    # Due 17, 18, 19, 20 (Hangzhou) and 23 March (Saturday 21 rolls over; replied anyway).
    assert [d.day for _, d in sent.values()] == [17, 18, 19, 20, 23]
    # The report on Sunday 22 March; a request sent that day is not overdue.
    fed.clock.set(shanghai(dt.date(2026, 3, 22)))
    recent = new_request(sh)
    assert deliver_all(sh, js, zj) == []

    now = fed.clock()
    report = read(sh, lambda c: sh.assistance.escalation(c, now))
    assert report == [
        {
            "direction": "awaiting",
            "province": JS,
            "overdue": 3,
            "oldest_due_date": sent["suzhou-1"][1].isoformat(),
            "oldest_request_id": sent["suzhou-1"][0],
            "bureaus": {"320200": 1, "320500": 2},
        },
        {
            "direction": "awaiting",
            "province": ZJ,
            "overdue": 1,
            "oldest_due_date": sent["hangzhou"][1].isoformat(),
            "oldest_request_id": sent["hangzhou"][0],
            "bureaus": {"330100": 1},
        },
    ]
    assert recent not in {g["oldest_request_id"] for g in report}
    # The other side of the same obligations.
    owed = read(js, lambda c: js.assistance.escalation(c, now))
    assert [(g["direction"], g["province"], g["overdue"], g["bureaus"]) for g in owed] == [
        ("owed", SH, 3, {"320200": 1, "320500": 2})
    ]
    assert owed[0]["oldest_due_date"] == sent["suzhou-1"][1].isoformat()

    rows = list(csv.reader(io.StringIO(Assistance.escalation_csv(report))))
    assert rows == [
        ["direction", "province", "bureau", "overdue", "oldest_due_date", "oldest_request_id"],
        [
            "awaiting",
            JS,
            "*",
            "3",
            sent["suzhou-1"][1].isoformat(),
            sent["suzhou-1"][0],
        ],
        ["awaiting", JS, "320200", "1", "", ""],
        ["awaiting", JS, "320500", "2", "", ""],
        ["awaiting", ZJ, "*", "1", sent["hangzhou"][1].isoformat(), sent["hangzhou"][0]],
        ["awaiting", ZJ, "330100", "1", "", ""],
    ]
    # Per province, the bureau rows add up to the province's count.
    for group in report:
        per_bureau = [r for r in rows[1:] if r[1] == group["province"] and r[2] != "*"]
        assert sum(int(r[3]) for r in per_bureau) == group["overdue"]
    assert Assistance.escalation_csv([]).splitlines() == [",".join(rows[0])]


# --- provisional due dates ------------------------------------------------------------------------

SCHEDULE_2027 = parse_schedule(HOLIDAYS_2027.read_bytes(), filename=HOLIDAYS_2027.name)


@pytest.mark.parametrize(
    ("received", "provisional_due", "official_due"),
    [
        # 15 days after 25 December 2026 is Saturday 9 January 2027: Monday either way.
        (dt.date(2026, 12, 25), dt.date(2027, 1, 11), dt.date(2027, 1, 11)),
        # 15 days after 22 January 2027 is Saturday 6 February, in the (test) Spring Festival:
        # weekends only say Monday 8 February; the schedule says Sunday 14 (a make-up workday).
        (dt.date(2027, 1, 22), dt.date(2027, 2, 8), dt.date(2027, 2, 14)),
    ],
)
def test_due_date_in_a_year_without_a_schedule_is_provisional_until_it_is_imported(
    federation: Callable[..., Nodes],
    received: dt.date,
    provisional_due: dt.date,
    official_due: dt.date,
) -> None:
    fed = federation([SH, JS], shanghai(received))
    sh, js = fed[SH], fed[JS]
    rid = new_request(sh)
    assert deliver_all(sh, js) == []
    for node in (sh, js):
        row = request_row(node, rid)
        assert (row.due_date, bool(row.due_provisional)) == (provisional_due.isoformat(), True)
        due = view(node, rid).state.due
        assert due is not None and due.provisional_years == (2027,)
        assert [o["provisional"] for o in obligations(node)] == [True]

    fed.clock.advance(days=1)
    for node in (sh, js):
        import_schedule(node.engine, HOLIDAYS_2027.read_bytes(), HOLIDAYS_2027.name, fed.clock())

    expected = day_period(shanghai(received), 15, HolidayCalendar([SCHEDULE_2027]))
    assert (expected.due_date, expected.provisional) == (official_due, False)
    for node in (sh, js):
        row = request_row(node, rid)
        assert (row.due_date, bool(row.due_provisional)) == (official_due.isoformat(), False)
        assert row.due_ends_at.replace(tzinfo=UTC) == expected.ends_at
        stored = json.loads(row.view)["due"]
        assert (stored["due_date"], stored["provisional"]) == (official_due.isoformat(), False)
        assert view(node, rid).state.due == expected
    assert view(sh, rid).state.to_dict() == view(js, rid).state.to_dict()


def test_reminders_follow_a_due_date_moved_by_an_extension(
    federation: Callable[..., Nodes],
) -> None:
    fed = federation([SH, JS], MARCH_2)
    sh, js = fed[SH], fed[JS]
    rid = new_request(sh)
    assert deliver_all(sh, js) == []
    act(js, rid, accept())
    assert deliver_all(sh, js) == []
    fed.clock.set(shanghai(dt.date(2026, 3, 15)))  # due 17 March: two days left
    assert [p["reminder"] for p in sweep(js)] == ["due-in-3d"]
    act(js, rid, ask_extension(10))
    assert deliver_all(sh, js) == []
    act(sh, rid, decide_extension(True))
    assert deliver_all(sh, js) == []
    due = view(js, rid).state.due
    assert due is not None and due.due_date == dt.date(2026, 3, 27)
    assert view(sh, rid).state.due == due
    fed.clock.set(shanghai(dt.date(2026, 3, 25)))  # two days before the new due date
    assert [(p["reminder"], p["due_date"]) for p in sweep(js)] == [("due-in-3d", "2026-03-27")]


@pytest.mark.parametrize("calendars", ["differ", "agree"])
def test_acceptance_states_the_responders_due_date_and_a_difference_is_reported(
    federation: Callable[..., Nodes], caplog: pytest.LogCaptureFixture, calendars: str
) -> None:
    """The responder says in its acceptance which due date it counts. The requester compares it
    with its own and reports a difference (the holiday calendars differ); nothing else changes."""
    received = dt.date(2027, 1, 22)  # due 8 Feb by weekends only, 14 Feb by the 2027 schedule
    fed = federation([SH, JS], shanghai(received))
    sh, js = fed[SH], fed[JS]
    import_schedule(sh.engine, HOLIDAYS_2027.read_bytes(), HOLIDAYS_2027.name, fed.clock())
    if calendars == "agree":
        import_schedule(js.engine, HOLIDAYS_2027.read_bytes(), HOLIDAYS_2027.name, fed.clock())
    rid = new_request(sh)
    assert deliver_all(sh, js) == []
    act(js, rid, accept())
    caplog.clear()
    with caplog.at_level("ERROR", logger="node.assistance"):
        assert deliver_all(sh, js) == []
    stated = read(
        js,
        lambda c: [
            r for r in js.assistance._records(c, rid) if r.kind == "cccfed.v1.RequestAccepted"
        ],
    )
    assert len(stated) == 1
    # The acceptance carries the responder's own count (stored as the exact bytes sent).
    accepted = RequestAccepted.FromString(stated[0].payload)
    assert accepted.due_date == view(js, rid).state.due.due_date.isoformat()  # type: ignore[union-attr]
    mismatches = [r for r in caplog.records if getattr(r, "reason", "") == "DUE_DATE_MISMATCH"]
    counted = sh.metrics.registry.get_sample_value("cccfed_due_date_mismatches_total", {"peer": JS})
    if calendars == "differ":
        assert view(js, rid).state.due.due_date == dt.date(2027, 2, 8)  # type: ignore[union-attr]
        assert view(sh, rid).state.due.due_date == dt.date(2027, 2, 14)  # type: ignore[union-attr]
        assert len(mismatches) == 1
        assert "2027-02-08" in mismatches[0].getMessage()
        assert "2027-02-14" in mismatches[0].getMessage()
        assert counted == 1
    else:
        assert mismatches == [] and not counted
    # Either way the request itself is the same on both sides: accepted.
    assert view(sh, rid).state.status == view(js, rid).state.status
