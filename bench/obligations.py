"""Obligation query benchmark: what an operator and the node ask, at 10,000 vs 1,000,000 open.

Run with ``make bench-obligations`` or ``python bench/obligations.py [--n N ...]
[--store-url URL] [--runs R]`` (default: ``--n 10000 --n 1000000`` on SQLite files in a temporary
directory; ``--store-url postgresql+psycopg://postgres@127.0.0.1:5432/test`` fills a scratch
schema of that database instead, dropped at the end). Not part of ``make test``.

**The store.** One real node store per size, made by the node's own migrations (a
:class:`node.runtime.Node` of Shanghai in a four-member federation from
:func:`node.pki.init_federation`; no server is started). It is filled by bulk inserts (timed and
printed, not part of the measurement) with n open requests — half that this node owes (received
from the three other provinces), half that it awaits (sent to them), a third of each accepted and
assigned to a bureau — as the real path stores them: the ``requests`` row (exact request bytes,
status, due date and instant, provisional flag, the derived view JSON computed by the node's own
:func:`node.assistance.fold_events` over the events) and the ``request_events`` rows (the Request
and, when accepted, the RequestAccepted, as exact message bytes). ``tests/unit/
test_bench_obligations.py`` checks these rows against rows written by the real path
(``request new``, delivery and receipt, ``request accept``). Not written: the inbox, outbox and
message-log rows of those messages (their envelopes, receipts and signatures) — no obligation
query reads them.

**Due dates.** Requests were received 1 to 45 days before now (09:00 Shanghai), so their 15-day
periods, computed with the node's holiday calendar, end anywhere from weeks ago to two weeks
ahead. A fixed number of them is actionable at both sizes (``--overdue``, ``--due-soon``: 500
each by default, within the 3-day reminder horizon); the rest are due later. The sweep and the
escalation report are about the actionable ones: their cost should follow those, not the total.

**Measured** (median of ``--runs`` runs after one warm-up, each run in its own connection from the
node's own engine, the read-only one for reads): the first page (50) of ``request list --owed``,
``--awaiting``, ``--overdue`` (:meth:`Assistance.obligations`); the reminder sweep the node runs
every minute (:meth:`Assistance.sweep`, in a transaction rolled back so that each run produces
every due reminder; and "idle", after one committed sweep, when there is nothing new to produce);
the escalation report (:meth:`Assistance.escalation`, overdue counts per province and bureau); one
request's view as ``request show`` finds it from the 8-character prefix the list prints. The same
commands are then timed end to end through ``cccfed`` (``node.cli.main`` in this process: config,
keys, manifest, store opened per command, as an operator runs them). The ratio 1M/10k is printed
for each; goal: at most 3× (a query that scanned the store would cost about 100×). The query plan
(EXPLAIN) of every statement each measured operation runs is checked for full table scans and
sorts. On PostgreSQL the tables are ANALYZEd after the fill (what autovacuum soon does after a bulk
load); SQLite gets no ANALYZE, as a node's store never does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import io
import json
import logging
import statistics
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event, insert, text
from sqlalchemy.engine import Connection, Engine

from cccfed.v1 import assistance_pb2 as pb
from federation import requests
from federation.holidays import HolidayCalendar
from federation.periods import TZ, days_left, shanghai_date
from federation.uscc import make_uscc
from node import calendar_store, pki
from node.assistance import EVENTS, REQUEST_KIND, REQUESTS, EventRecord, fold_events
from node.cli import main as cccfed
from node.cli_requests import PAGE, _find
from node.config import load_config
from node.local import free_ports
from node.runtime import Node

T = TypeVar("T")

NODE = "310000"
PEERS = ("320000", "330000", "340000")
CODES = [NODE, *PEERS]
#: This node's bureaus that requests come from or go to, and two bureaus of each peer.
OWN_BUREAUS = ("310115", "310104")
PEER_BUREAUS = {
    "320000": ("320500", "320100"),
    "330000": ("330100", "330200"),
    "340000": ("340100", "340200"),
}
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "assistance-request.toml"
ACCEPTED_KIND = pb.RequestAccepted.DESCRIPTOR.full_name
ASSIGNEE = ("李强", "0512-6522 1000")
#: Placeholder request id of the view templates (replaced by each row's id).
_PLACEHOLDER = "00000000-0000-4000-8000-0000000b1e55"
#: Rows per ``executemany`` batch (one commit each) when filling a store.
FILL_BATCH = 20_000
GOAL_RATIO = 3.0


# --- what one obligation is ------------------------------------------------------------------


@dataclass(frozen=True)
class Accept:
    """The responder's acceptance: assigned bureau, assignee, its message id and signed time."""

    bureau: str
    name: str
    phone: str
    message_id: str
    at: dt.datetime


@dataclass(frozen=True)
class Spec:
    """One request on this node, as the real path would have stored it.

    ``sent_at`` is the Request envelope's signed ``created_at``; ``received_at`` the receipt's;
    ``created_at`` / ``updated_at`` the row's (creation, last recomputation of the view).
    """

    request_id: str
    role: str
    requesting_bureau: str
    target_bureau: str
    counterpart: str
    holder_uscc: str
    message_id: str
    sent_at: dt.datetime
    received_at: dt.datetime
    created_at: dt.datetime
    updated_at: dt.datetime
    accept: Accept | None = None


def example_data() -> dict[str, Any]:
    """The example request file, as ``request new`` reads it."""
    return tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))


class Filler:
    """Makes the rows of :class:`Spec` s: the example request with each spec's id, bureaus and
    holder, and views folded once per distinct history by the node's own code."""

    def __init__(self, self_node: str, calendar: HolidayCalendar) -> None:
        self.node = self_node
        self.calendar = calendar
        data = example_data()
        data["request_id"] = _PLACEHOLDER
        base = requests.parse_request(data, today=dt.date(2026, 1, 1))
        self.base = base.to_message()
        self.holder_name = base.holder.name
        self.kind = base.kind.value
        self._views: dict[tuple[Any, ...], tuple[requests.RequestState, str]] = {}

    def request_bytes(self, s: Spec) -> bytes:
        m = pb.Request()
        m.CopyFrom(self.base)
        m.request_id = s.request_id
        m.requesting_bureau = s.requesting_bureau
        m.target_bureau = s.target_bureau
        m.holder.uscc = s.holder_uscc
        return m.SerializeToString(deterministic=True)

    @staticmethod
    def accepted_bytes(request_id: str, a: Accept, due_date: str) -> bytes:
        msg = requests.event_to_message(
            request_id,
            requests.Accepted(
                assigned_bureau=a.bureau, assignee=requests.Contact(name=a.name, phone=a.phone)
            ),
        )
        assert isinstance(msg, pb.RequestAccepted)
        msg.due_date = due_date  # the responder's count, as Assistance.act states it
        msg.index = 0  # the responder's first event
        msg.seen = 1  # it had seen the request
        return msg.SerializeToString(deterministic=True)

    def records(self, s: Spec, request: bytes, due_date: str = "") -> list[EventRecord]:
        """The stored events; ``due_date`` only fills the acceptance's informational field,
        which the fold ignores."""
        out = [EventRecord("requester", 0, 0, REQUEST_KIND, s.message_id, request, s.sent_at)]
        if s.accept is not None:
            a = s.accept
            payload = self.accepted_bytes(s.request_id, a, due_date)
            out.append(EventRecord("responder", 0, 1, ACCEPTED_KIND, a.message_id, payload, a.at))
        return out

    def view(self, s: Spec) -> tuple[requests.RequestState, str]:
        """The folded state and the view JSON, computed once per distinct history."""
        a = s.accept
        key = (
            s.requesting_bureau,
            s.target_bureau,
            s.sent_at,
            s.received_at,
            None if a is None else (a.bureau, a.at),
        )
        got = self._views.get(key)
        if got is None:
            tmpl = dataclasses.replace(
                s,
                request_id=_PLACEHOLDER,
                message_id=_PLACEHOLDER,
                holder_uscc=self.base.holder.uscc,
            )
            if a is not None:
                tmpl = dataclasses.replace(
                    tmpl, accept=dataclasses.replace(a, message_id=_PLACEHOLDER)
                )
            raw = self.request_bytes(tmpl)
            request = requests.request_from_message(pb.Request.FromString(raw))
            state = fold_events(
                request, self.records(tmpl, raw), s.received_at, self.calendar
            ).state
            view = json.dumps(state.to_dict(), ensure_ascii=False, sort_keys=True)
            assert view.count(_PLACEHOLDER) == 1
            got = self._views[key] = (state, view)
        return got

    def rows(self, s: Spec) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The ``requests`` row and the ``request_events`` rows of one spec."""
        request = self.request_bytes(s)
        state, view = self.view(s)
        due = state.due
        requester = s.role == "requester"
        row = {
            "request_id": s.request_id,
            "role": s.role,
            "kind": self.kind,
            "requesting_bureau": s.requesting_bureau,
            "requester_node": self.node if requester else s.counterpart,
            "target_bureau": s.target_bureau,
            "responder_node": s.counterpart if requester else self.node,
            "assigned_bureau": state.assigned_bureau,
            "holder_name": self.holder_name,
            "holder_uscc": s.holder_uscc,
            "request": request,
            "status": state.status.value,
            "received_at": s.received_at,
            "due_date": due.due_date.isoformat() if due else None,
            "due_ends_at": due.ends_at if due else None,
            "due_provisional": bool(due and due.provisional),
            "linked_request_id": None,
            "view": view.replace(_PLACEHOLDER, s.request_id),
            "created_at": s.created_at,
            "updated_at": s.updated_at,
        }
        events = [
            {
                "request_id": s.request_id,
                "side": r.side,
                "idx": r.idx,
                "seen": r.seen,
                "kind": r.kind,
                "message_id": r.message_id,
                "payload": r.payload,
                "created_at": r.created_at,
                "void": False,
            }
            for r in self.records(s, request, state.due.due_date.isoformat() if state.due else "")
        ]
        return row, events


def fill(engine: Engine, self_node: str, specs: Iterable[Spec]) -> int:
    """Bulk-insert the rows of ``specs`` (a commit per batch); returns how many."""
    with engine.connect() as conn:
        calendar = calendar_store.load_calendar(conn)
    filler = Filler(self_node, calendar)
    n = 0
    batch: list[Spec] = []

    def flush() -> None:
        rows: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for s in batch:
            row, evs = filler.rows(s)
            rows.append(row)
            events.extend(evs)
        with engine.begin() as conn:
            if conn.dialect.name == "sqlite":
                # A large page cache for this connection: random-order primary keys of a million
                # rows otherwise thrash the default 2 MB (the rows are the same either way).
                conn.exec_driver_sql("PRAGMA cache_size=-1048576")
            conn.execute(insert(REQUESTS), rows)
            conn.execute(insert(EVENTS), events)
        batch.clear()

    for s in specs:
        batch.append(s)
        n += 1
        if len(batch) >= FILL_BATCH:
            flush()
    if batch:
        flush()
    return n


# --- the synthetic population ----------------------------------------------------------------


def received_days(now: dt.datetime, calendar: HolidayCalendar) -> dict[str, list[dt.date]]:
    """Receive days 1..45 days before ``now``, grouped by what their reply period is at now
    (as the node's own fold computes it): ``overdue``, ``soon`` (0 to 3 days left: a reminder is
    due) or ``later``."""
    filler = Filler(NODE, calendar)
    today = shanghai_date(now)
    out: dict[str, list[dt.date]] = {"overdue": [], "soon": [], "later": []}
    for back in range(1, 46):
        day = today - dt.timedelta(days=back)
        probe = Spec(
            request_id=_PLACEHOLDER,
            role="responder",
            requesting_bureau=PEER_BUREAUS[PEERS[0]][0],
            target_bureau=OWN_BUREAUS[0],
            counterpart=PEERS[0],
            holder_uscc=filler.base.holder.uscc,
            message_id=_PLACEHOLDER,
            sent_at=at(day, 9),
            received_at=at(day, 9, 0, 1),
            created_at=at(day, 9, 0, 1),
            updated_at=at(day, 9, 0, 1),
        )
        due = filler.view(probe)[0].due
        assert due is not None
        left = days_left(due, now)
        out["overdue" if left < 0 else "soon" if left <= 3 else "later"].append(day)
    return out


def at(day: dt.date, hour: int, minute: int = 0, second: int = 0) -> dt.datetime:
    """``hour:minute:second`` in Shanghai on ``day``, as an aware UTC instant."""
    return dt.datetime.combine(day, dt.time(hour, minute, second), tzinfo=TZ).astimezone(dt.UTC)


def request_id(i: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cccfed-bench/obligation/{i}"))


def message_id(i: int, what: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"cccfed-bench/message/{what}/{i}"))


def population(
    n: int, now: dt.datetime, calendar: HolidayCalendar, *, overdue: int, soon: int
) -> Iterator[Spec]:
    """n open obligations of ``NODE``: ``overdue`` overdue, ``soon`` due within 3 days, the rest
    due later; even i owed (a peer asked us), odd i awaited (we asked a peer); a third accepted."""
    days = received_days(now, calendar)
    for cat in ("overdue", "soon", "later"):
        if not days[cat]:  # e.g. a week-long holiday: no period ends in that window
            raise SystemExit(f"no receive day gives a '{cat}' due date at {now:%Y-%m-%d}")
    for i in range(n):
        cat = "overdue" if i < overdue else "soon" if i < overdue + soon else "later"
        day = days[cat][i % len(days[cat])]
        peer = PEERS[(i // 2) % 3]
        own = OWN_BUREAUS[(i // 6) % 2]
        theirs = PEER_BUREAUS[peer][(i // 12) % 2]
        owed = i % 2 == 0
        sent, received = at(day, 9), at(day, 9, 0, 1)
        accept = None
        if i % 3 == 2:
            bureau = own if owed else theirs
            accept = Accept(bureau, *ASSIGNEE, message_id(i, "accept"), at(day, 9, 30))
        if owed:  # a peer's bureau asked one of ours
            created, updated = received, accept.at if accept else received
        else:  # created and sent at once; updated when the receipt, then the acceptance came
            created = sent
            updated = accept.at + dt.timedelta(seconds=1) if accept else received
        yield Spec(
            request_id=request_id(i),
            role="responder" if owed else "requester",
            requesting_bureau=theirs if owed else own,
            target_bureau=own if owed else theirs,
            counterpart=peer,
            holder_uscc=make_uscc(f"91310000{i:09d}"),
            message_id=message_id(i, "request"),
            sent_at=sent,
            received_at=received,
            created_at=created,
            updated_at=updated,
            accept=accept,
        )


# --- the node and its store ------------------------------------------------------------------


def make_federation(root: Path, now: dt.datetime) -> None:
    pki.init_federation(
        root,
        CODES,
        ports=dict(zip(CODES, free_ports(len(CODES)), strict=True)),
        now=now - dt.timedelta(hours=1),
    )


def node_config(root: Path, store_url: str, name: str) -> Path:
    """A copy of the node's configuration with its store at ``store_url``."""
    src = root / "nodes" / NODE / "node.toml"
    lines = src.read_text(encoding="utf-8").splitlines(keepends=True)
    path = src.with_name(f"{name}.toml")  # beside the original: its relative paths still hold
    path.write_text(
        "".join(
            f"store_url = {json.dumps(store_url)}\n" if line.startswith("store_url =") else line
            for line in lines
        ),
        encoding="utf-8",
    )
    assert load_config(path).store_url == store_url
    return path


@contextlib.contextmanager
def store(workdir: Path, base_url: str | None, n: int) -> Iterator[str]:
    """An empty store for size n: a new SQLite file, or a new schema of ``base_url``."""
    if base_url is None:
        path = workdir / f"obligations-{n}.db"
        try:
            yield f"sqlite:///{path}"
        finally:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        return
    name = f"bench_obligations_{n}_{uuid.uuid4().hex[:8]}"
    admin = create_engine(base_url)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        sep = "&" if "?" in base_url else "?"
        yield f"{base_url}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


# --- measuring ------------------------------------------------------------------------------


def median_ms(fn: Callable[[], Any], runs: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def rolled_back(engine: Engine, job: Callable[[Connection], T]) -> T:
    """Run a write job in a transaction that is rolled back (so every run does the same work)."""
    with engine.connect() as conn:
        tx = conn.begin()
        try:
            return job(conn)
        finally:
            tx.rollback()


def read(engine: Engine, job: Callable[[Connection], T]) -> T:
    with engine.connect() as conn:
        return job(conn)


@dataclass
class Operation:
    name: str
    run: Callable[[], Any]
    #: True: the node's code (EXPLAIN-checked); False: a whole ``cccfed`` command.
    query: bool = True


def operations(node: Node, config: Path, now: dt.datetime, probe: str) -> list[Operation]:
    a, rd = node.assistance, node.reader
    page = PAGE + 1  # what the list commands read: one page and one row to know there is more

    def cli(*argv: str) -> Callable[[], None]:
        def run() -> None:
            with contextlib.redirect_stdout(io.StringIO()):
                rc = cccfed([*argv, "--config", str(config), "--json"])
            if rc != 0:
                raise AssertionError(f"cccfed {' '.join(argv)} exited {rc}")

        return run

    def show(conn: Connection) -> Any:
        return a.view(conn, _find(conn, probe[:8]))

    return [
        Operation(
            "owed, first page",
            lambda: read(rd, lambda c: a.obligations(c, now, direction="owed", limit=page)),
        ),
        Operation(
            "awaiting, first page",
            lambda: read(rd, lambda c: a.obligations(c, now, direction="awaiting", limit=page)),
        ),
        Operation(
            "overdue, first page",
            lambda: read(rd, lambda c: a.obligations(c, now, overdue=True, limit=page)),
        ),
        Operation("reminder sweep", lambda: rolled_back(node.engine, lambda c: a.sweep(c, now))),
        Operation("escalation report", lambda: read(rd, lambda c: a.escalation(c, now))),
        Operation("one request's view", lambda: read(rd, show)),
        Operation("cccfed request list --owed", cli("request", "list", "--owed"), query=False),
        Operation(
            "cccfed request list --overdue", cli("request", "list", "--overdue"), query=False
        ),
        Operation("cccfed request list", cli("request", "list"), query=False),
        Operation("cccfed obligations --report", cli("obligations", "--report"), query=False),
        Operation("cccfed request show ID8", cli("request", "show", probe[:8]), query=False),
    ]


#: Small tables a full scan of which does not depend on the number of requests.
SMALL_TABLES = ("holiday_schedules", "manifests", "alembic_version", "log_head")


def statements(fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The SELECT statements (with parameters) ``fn`` runs, on any engine of this process."""
    seen: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, params: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT") and not any(
            t in statement for t in SMALL_TABLES
        ):
            seen.append((statement, params))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        fn()
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    return seen


def plan(engine: Engine, statement: str, params: Any) -> list[str]:
    """The plan lines that show a full scan of a table or a sort of a scanned table.

    SQLite: ``SCAN t`` (not an index walked in order under a LIMIT) and ``USE TEMP B-TREE``.
    PostgreSQL: a ``Seq Scan`` of a table (not a catalog or small table), and a ``Sort`` above one
    (a sort of the few rows an index lookup found, e.g. one request's events, is not flagged).
    """
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", params).all()
            lines = [str(r[-1]).strip() for r in rows]
            return [
                s for s in lines if (s.startswith("SCAN ") and " INDEX " not in s) or "TEMP B" in s
            ]
        (doc,) = conn.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {statement}", params).one()
    plan_ = (json.loads(doc) if isinstance(doc, str) else doc)[0]["Plan"]
    bad: list[str] = []

    def walk(node: dict[str, Any]) -> bool:
        """Flag what is bad under ``node``; True if a table is scanned in full under it."""
        scanned = False
        for child in node.get("Plans", []):
            scanned |= walk(child)
        rel = str(node.get("Relation Name", ""))
        if (
            node["Node Type"] == "Seq Scan"
            and rel not in SMALL_TABLES
            and not rel.startswith("pg_")
        ):
            bad.append(f"Seq Scan on {rel}")
            scanned = True
        if node["Node Type"] == "Sort" and scanned:
            bad.append(f"Sort ({', '.join(node.get('Sort Key', []))}) of a scanned table")
        return scanned

    walk(plan_)
    return bad


def explain(node: Node, ops: list[Operation]) -> dict[str, list[str]]:
    """For each measured operation, the plan lines of its statements that scan or sort."""
    out: dict[str, list[str]] = {}
    for op in ops:
        found: list[str] = []
        for statement, params in statements(op.run):
            for line in plan(node.engine, statement, params):
                if line not in found:
                    found.append(line)
        out[op.name] = found
    return out


@dataclass
class SizeResult:
    n: int
    fill_seconds: float
    ms: dict[str, float]
    reminders: int
    overdue_groups: int
    bad_plans: dict[str, list[str]]
    idle_sweep_ms: float


def run_size(
    root: Path, workdir: Path, base_url: str | None, n: int, args: argparse.Namespace
) -> SizeResult:
    now = args.now
    with store(workdir, base_url, n) as url:
        config = node_config(root, url, f"bench-{n}")
        node = Node(load_config(config), clock=lambda: now)
        try:
            calendar = read(node.engine, calendar_store.load_calendar)
            t0 = time.perf_counter()
            filled = fill(
                node.engine,
                NODE,
                population(n, now, calendar, overdue=args.overdue, soon=args.due_soon),
            )
            fill_seconds = time.perf_counter() - t0
            if node.engine.dialect.name == "postgresql":
                # What autovacuum does soon after a bulk load: statistics for the planner.
                with node.engine.begin() as conn:
                    conn.exec_driver_sql("ANALYZE requests, request_events, reminders")
            print(f"n={n:,}: filled {filled:,} open obligations in {fill_seconds:.1f} s")
            probe = request_id(n // 2)
            ops = operations(node, config, now, probe)
            ms = {op.name: median_ms(op.run, args.runs) for op in ops}
            reminders = len(rolled_back(node.engine, lambda c: node.assistance.sweep(c, now)))
            groups = len(read(node.reader, lambda c: node.assistance.escalation(c, now)))
            bad = explain(node, ops)
            # Idle sweep: every due reminder produced already (what the node runs each minute).
            asyncio.run(node.writer.run(lambda c: node.assistance.sweep(c, now)))
            idle = median_ms(
                lambda: rolled_back(node.engine, lambda c: node.assistance.sweep(c, now)),
                args.runs,
            )
            return SizeResult(n, fill_seconds, ms, reminders, groups, bad, idle)
        finally:
            node.close()


def report(results: list[SizeResult]) -> bool:
    small, large = results[0], results[-1]
    names = [*small.ms, "reminder sweep, idle"]
    for r in results:
        r.ms["reminder sweep, idle"] = r.idle_sweep_ms
    head = f"{'query':<32}" + "".join(f"{f'n={r.n:,} (ms)':>20}" for r in results)
    ratio_head = f"ratio {large.n // max(small.n, 1):,}x n" if len(results) > 1 else ""
    print()
    print(head + f"{ratio_head:>20}")
    ok = True
    for name in names:
        line = f"{name:<32}" + "".join(f"{r.ms[name]:>20.2f}" for r in results)
        if len(results) > 1:
            ratio = large.ms[name] / small.ms[name]
            ok &= ratio <= GOAL_RATIO
            line += f"{ratio:>19.2f}x"
        print(line)
    print()
    for r in results:
        print(
            f"n={r.n:,}: sweep produces {r.reminders:,} reminders; escalation report "
            f"{r.overdue_groups} province group(s)"
        )
    plans_ok = True
    for r in results:
        for name, lines in r.bad_plans.items():
            for line in lines:
                plans_ok = False
                print(f"n={r.n:,} {name}: plan shows {line}")
    if plans_ok:
        print("query plans: no full table scan and no sort in any measured query")
    if len(results) > 1:
        print(
            f"goal every query at most {GOAL_RATIO:.0f}x slower at n={large.n:,} than at "
            f"n={small.n:,}: {'met' if ok else 'MISSED'}"
        )
    return ok and plans_ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--n",
        type=int,
        action="append",
        help="open obligations in a store (repeatable; default: 10000 and 1000000)",
    )
    ap.add_argument("--store-url", help="a PostgreSQL database URL (default: SQLite files)")
    ap.add_argument("--runs", type=int, default=7, help="runs per query (median; default 7)")
    ap.add_argument("--overdue", type=int, default=500, help="overdue obligations (default 500)")
    ap.add_argument(
        "--due-soon", type=int, default=500, help="obligations due within 3 days (default 500)"
    )
    args = ap.parse_args(argv)
    sizes = sorted(set(args.n or [10_000, 1_000_000]))
    if sizes[0] < args.overdue + args.due_soon or args.runs < 1:
        ap.error("every --n must hold --overdue + --due-soon obligations; --runs >= 1")
    if args.store_url and not args.store_url.startswith("postgresql"):
        ap.error("--store-url: a postgresql:// or postgresql+psycopg:// URL")
    args.now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    logging.getLogger("node.assistance").setLevel(logging.ERROR)  # one warning per reminder
    print(
        f"obligations bench: n = {', '.join(f'{n:,}' for n in sizes)} open obligations of "
        f"{NODE} ({args.overdue} overdue, {args.due_soon} due within 3 days); "
        f"{'PostgreSQL' if args.store_url else 'SQLite'} store; median of {args.runs} runs"
    )
    with tempfile.TemporaryDirectory(prefix="cccfed-bench-") as tmp:
        root = Path(tmp) / "fed"
        make_federation(root, args.now)
        results = [run_size(root, Path(tmp), args.store_url, n, args) for n in sizes]
    return 0 if report(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
