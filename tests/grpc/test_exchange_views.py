"""Two provinces asking for the same experts at once; both sides' views of an exchange converge.

Real :class:`node.runtime.Node` objects (keys, manifest, stores, handlers, real signed envelopes
and receipts) without servers, and the simulated transport of ``tests/assistance_harness.py``.

* **No double booking under concurrency.** Zhejiang and Shanghai each ask Anhui for the same two
  experts on overlapping dates; both requests arrive through the intake at the same moment, and
  Anhui proposes for both at the same moment — from two threads of one node, and from two
  separate node instances on one store (two processes on one SQLite file; two replicas on one
  PostgreSQL database). At most one exchange gets the experts; the other finds nobody eligible.
* **Views converge.** Hypothesis interleaves both sides' actions with deliveries in either
  direction; once everything has arrived both nodes hold the same view and the provider's
  booking table is exactly the bookings of its exchanges' states.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from federation import exchange as ex
from federation.draw import verify_draw
from federation.errors import FederationError, ValidationError
from node import pki
from node.config import load_config
from node.exchange import ExchangeView, state_to_dict
from node.local import free_ports
from node.runtime import Node
from node.store.ops import Claimed
from tests.assistance_harness import (
    AH,
    SH,
    ZJ,
    deliver_all,
    deliver_next,
    in_flight,
    node_at,
    read,
    receive,
    record_receipt,
    write,
)
from tests.exchange_harness import (
    bookings,
    cancel,
    confirm,
    day,
    decline,
    expert_row,
    import_experts,
    new_exchange,
    registry_csv,
    xview,
)

CODES = [SH, ZJ, AH]
PG_URL = os.environ.get("CCCFED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="module")
def fed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("exchange-views") / "fed"
    pki.init_federation(root, CODES, ports=dict(zip(CODES, free_ports(3), strict=True)))
    return root


@pytest.fixture(scope="module")
def templates(fed_root: Path) -> dict[str, Path]:
    out = {}
    for code in CODES:
        out[code] = fed_root.parent / f"template-{code}.db"
        node_at(fed_root, code, out[code]).close()
    return out


@pytest.fixture
def new_nodes(fed_root: Path, templates: dict[str, Path], tmp_path: Path) -> Iterator[Any]:
    """``new_nodes(*codes)``: nodes on brand-new SQLite stores; closed at the end."""
    made: list[Node] = []

    def make(*codes: str) -> list[Node]:
        out = []
        for code in codes:
            store = tmp_path / f"{code}-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(templates[code], store)
            out.append(node_at(fed_root, code, store))
        made.extend(out)
        return out

    yield make
    for node in made:
        node.close()


def arrive_together(hosts: list[Node], provider: Node) -> None:
    """Every host's oldest queued message reaches ``provider``'s intake at the same moment."""
    rows = [in_flight(h, provider.code)[0] for h in hosts]
    barrier = threading.Barrier(len(hosts))
    receipts: list[bytes | BaseException] = [b""] * len(hosts)

    def deliver(i: int) -> None:
        barrier.wait()
        try:
            receipts[i] = receive(provider, hosts[i].code, bytes(rows[i].envelope), rows[i].service)
        except BaseException as e:
            receipts[i] = e

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(len(hosts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for host, row, receipt in zip(hosts, rows, receipts, strict=True):
        assert isinstance(receipt, bytes), receipt
        claimed = Claimed(
            row.id, row.message_id, row.recipient_node, row.service, row.kind,
            bytes(row.envelope), 1, row.conversation,
        )  # fmt: skip
        record_receipt(host, claimed, receipt)


def propose_together(provider_nodes: list[Node], exchange_ids: list[str]) -> list[Any]:
    """Each (node, exchange) pair proposes at the same moment; returns views or refusals."""
    barrier = threading.Barrier(len(exchange_ids))
    futures: list[Future[ExchangeView] | None] = [None] * len(exchange_ids)

    def go(i: int) -> None:
        node = provider_nodes[i % len(provider_nodes)]
        barrier.wait()
        futures[i] = node.writer.submit(
            lambda c, x=exchange_ids[i], n=node: n.exchange.propose(c, x)  # type: ignore[misc]
        )

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(exchange_ids))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    outcomes: list[Any] = []
    for f in futures:
        assert f is not None
        try:
            outcomes.append(f.result(timeout=60))
        except FederationError as e:
            outcomes.append(e)
    return outcomes


def assert_never_double_booked(provider: Node) -> None:
    """No expert is assigned to or held by two exchanges on a common day."""
    views = [v for v in read(provider, provider.exchange.views) if v.role == "provider"]
    for a in views:
        for b in views:
            if a.exchange_id >= b.exchange_id:
                continue
            held_a = {(bk.expert_id, d) for bk in ex.bookings_of(a.state) for d in bk.dates}
            held_b = {(bk.expert_id, d) for bk in ex.bookings_of(b.state) for d in bk.dates}
            assert not held_a & held_b, (a.exchange_id, b.exchange_id, held_a & held_b)
    rows = bookings(provider)
    assert len({(e, d) for e, d, _, _ in rows}) == len(rows)


def race(hosts: list[Node], providers: list[Node], *, rounds: int) -> None:
    """Both hosts ask for the same two experts on overlapping days, ``rounds`` times; the
    provider proposes for both at once. Exactly one wins each round."""
    provider = providers[0]
    import_experts(provider, registry_csv(expert_row("AH-1"), expert_row("AH-2")))
    for n in range(rounds):
        base = 20 + 4 * n
        ids = [new_exchange(h, offsets=(base + i, base + i + 1)) for i, h in enumerate(hosts)]
        arrive_together(hosts, provider)
        outcomes = propose_together(providers, ids)
        won = [i for i, o in enumerate(outcomes) if isinstance(o, ExchangeView)]
        lost = [i for i, o in enumerate(outcomes) if isinstance(o, FederationError)]
        assert len(won) == 1, outcomes
        assert [outcomes[i].reason for i in lost] == ["NO_ELIGIBLE_EXPERTS"] * (len(hosts) - 1)
        winner, loser = ids[won[0]], ids[lost[0]]
        assert_never_double_booked(provider)
        # The hosts hear of it: the winner confirms, the loser is declined.
        decline(provider, loser, ex.DeclineReason.NO_ELIGIBLE_EXPERTS)
        for h in hosts:
            assert deliver_all(h, provider) == []
        confirm(hosts[won[0]], winner)
        assert deliver_all(hosts[won[0]], provider) == []
        assert set(xview(provider, winner).state.assigned) == {"AH-1", "AH-2"}
        assert xview(hosts[lost[0]], loser).state.status is ex.ExchangeStatus.DECLINED
        assert_never_double_booked(provider)
        # Free the experts for the next round.
        cancel(hosts[won[0]], winner)
        assert deliver_all(hosts[won[0]], provider) == []
        assert bookings(provider) == []


def test_two_provinces_asking_at_once_from_two_threads_of_one_node(new_nodes: Any) -> None:
    sh, zj, ah = new_nodes(SH, ZJ, AH)
    race([zj, sh], [ah], rounds=4)


def test_two_provinces_asking_at_once_from_two_processes_on_one_store(
    new_nodes: Any, fed_root: Path
) -> None:
    sh, zj, ah = new_nodes(SH, ZJ, AH)
    # A second node instance on the same SQLite file: its own engine and writer thread, as a
    # CLI process next to the running node has.
    other = Node(dataclasses.replace(load_config(fed_root / "nodes" / AH / "node.toml"),
                                     store_url=str(ah.engine.url)))  # fmt: skip
    try:
        race([zj, sh], [ah, other], rounds=4)
    finally:
        other.close()


@pytest.fixture
def pg_store() -> Iterator[str]:
    """A private PostgreSQL schema (dropped afterwards); returns a store URL using it."""
    name = f"t_{uuid.uuid4().hex}"
    admin = create_engine(PG_URL, poolclass=NullPool)
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{name}"
    finally:
        with admin.begin() as c:
            c.execute(text("SET LOCAL lock_timeout = '10s'"))
            c.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_two_provinces_asking_at_once_from_two_replicas_on_postgresql(
    new_nodes: Any, fed_root: Path, pg_store: str
) -> None:
    sh, zj = new_nodes(SH, ZJ)
    cfg = load_config(fed_root / "nodes" / AH / "node.toml")
    replicas = [
        Node(dataclasses.replace(cfg, store_url=pg_store, replica=f"ah-{i}")) for i in (1, 2)
    ]
    try:
        race([zj, sh], replicas, rounds=4)
    finally:
        for r in replicas:
            r.close()


# --- views converge whatever crosses on the wire ------------------------------------------------

Action = Callable[[Node, str], object]

HOST_ACTIONS: dict[str, Action] = {
    "confirm": confirm,
    "decline": lambda n, x: decline(n, x, ex.DeclineReason.TOO_FEW_EXPERTS),
    "cancel": cancel,
    "reschedule": lambda n, x: write(
        n, lambda c: n.exchange.request_reschedule(c, x, [day(n, 40), day(n, 41)])
    ),
}
PROVIDER_ACTIONS: dict[str, Action] = {
    "propose": lambda n, x: write(n, lambda c: n.exchange.propose(c, x)),
    "attend": confirm,
    "decline": lambda n, x: decline(n, x, ex.DeclineReason.NO_ELIGIBLE_EXPERTS),
    "cancel": cancel,
    "move": lambda n, x: write(n, lambda c: n.exchange.answer_reschedule(c, x)),
    "refuse_move": lambda n, x: write(
        n, lambda c: n.exchange.answer_reschedule(c, x, refuse="专家另有安排")
    ),
}
SKIPPED = frozenset(
    {
        "INVALID_TRANSITION",
        "INVALID_EVENT",
        "NOT_FOUND",
        "EXPERT_UNAVAILABLE",
        "NO_ELIGIBLE_EXPERTS",
    }
)
#: The lifecycle event each action sends (to favour actions the author's view allows now).
EVENT_OF = {
    ("host", "confirm"): "confirmed",
    ("host", "decline"): "declined",
    ("host", "cancel"): "cancelled",
    ("host", "reschedule"): "reschedule_requested",
    ("provider", "propose"): "proposed",
    ("provider", "attend"): "attendance_confirmed",
    ("provider", "decline"): "declined",
    ("provider", "cancel"): "cancelled",
    ("provider", "move"): "rescheduled",
    ("provider", "refuse_move"): "reschedule_refused",
}
#: Early ends are drawn rarely, so that most runs reach confirmation and rescheduling; refused
#: actions are still tried; a delivery with something in flight is as likely as an action.
EARLY_ENDS = frozenset({"decline", "cancel"})
W_EARLY_END, W_REFUSED, W_ALLOWED, W_IDLE_DELIVERY, W_DELIVERY = 1, 1, 8, 1, 10


def candidates(zj: Node, ah: Node, xid: str) -> list[tuple[str, str]]:
    """Every step, repeated by its weight now."""
    steps: list[tuple[str, str]] = []
    for (actor, name), event_name in EVENT_OF.items():
        node = zj if actor == "host" else ah
        state = xview(node, xid).state
        if name in EARLY_ENDS:
            weight = W_EARLY_END
        elif ex.allowed(state, event_name, "host" if actor == "host" else "provider"):
            weight = W_ALLOWED
        else:
            weight = W_REFUSED
        steps += [(actor, name)] * weight
    for direction, sender, receiver in (("to_provider", zj, AH), ("to_host", ah, ZJ)):
        busy = bool(in_flight(sender, receiver))
        steps += [("deliver", direction)] * (W_DELIVERY if busy else W_IDLE_DELIVERY)
    return steps


def try_act(action: Action, node: Node, xid: str) -> bool:
    try:
        action(node, xid)
    except ValidationError as e:
        if e.reason not in SKIPPED:
            raise
        return False
    return True


@pytest.fixture(scope="module")
def pair_factory(fed_root: Path, templates: dict[str, Path]) -> Iterator[Callable[[], Any]]:
    stores = fed_root.parent / "pairs"
    stores.mkdir()
    made: list[Node] = []

    def make() -> tuple[Node, Node]:
        pair = []
        for code in (ZJ, AH):
            store = stores / f"{code}-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(templates[code], store)
            pair.append(node_at(fed_root, code, store))
        made.extend(pair)
        return pair[0], pair[1]

    yield make
    for node in made:
        node.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data(), st.integers(4, 30))
def test_random_interleavings_keep_both_views_equal_and_bookings_exact(
    pair_factory: Callable[[], tuple[Node, Node]], data: st.DataObject, n_steps: int
) -> None:
    zj, ah = pair_factory()
    import_experts(ah, registry_csv(expert_row("AH-1"), expert_row("AH-2"), expert_row("AH-3")))
    xid = new_exchange(zj)
    assert deliver_all(zj, ah) == []
    refusals: list[FederationError] = []
    for i in range(n_steps):
        who, what = data.draw(st.sampled_from(candidates(zj, ah, xid)), label=f"step {i}")
        if who == "host":
            try_act(HOST_ACTIONS[what], zj, xid)
        elif who == "provider":
            try_act(PROVIDER_ACTIONS[what], ah, xid)
        else:
            sender, receiver = (zj, ah) if what == "to_provider" else (ah, zj)
            outcome = deliver_next(sender, receiver)
            if isinstance(outcome, FederationError):
                refusals.append(outcome)
    refusals += deliver_all(zj, ah)
    # Each event was allowed by its author's view; one that crossed another on the wire is
    # kept as void on both nodes, never refused back.
    assert [e.diagnostics() for e in refusals] == []
    a, b = xview(zj, xid), xview(ah, xid)
    assert state_to_dict(a.state) == state_to_dict(b.state)
    assert sorted(r.message_id for r in a.void) == sorted(r.message_id for r in b.void)
    assert a.row.status == b.row.status == a.state.status.value
    expected = sorted(
        (bk.expert_id, d.isoformat(), xid, bk.tentative)
        for bk in ex.bookings_of(b.state)
        for d in bk.dates
    )
    assert bookings(ah) == expected
    if b.state.draw is not None:  # the record recomputes, the same on both sides
        assert verify_draw(b.state.draw) and a.state.draw == b.state.draw
    event(f"ends {a.state.status.value}")
    event(f"{len(a.void)} void event(s)")
