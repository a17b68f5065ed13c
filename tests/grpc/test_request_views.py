"""Both nodes' views of a request stay equal, whatever order the two parties' events travel in.

Two real :class:`node.runtime.Node` objects (keys, manifest, store, handlers) without servers or
workers, and a simulated transport driven step by step (``tests/assistance_harness.py``): a
delivery runs the receiver's intake exactly as ``EnvelopeIntake`` does and records the receipt
on the sender exactly as ``DeliveryWorker._deliver`` does. Hypothesis interleaves the parties'
actions with deliveries in either direction; whatever crossed on the wire, once everything has
arrived both nodes hold the same view, the same void events, the same status and due date.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from federation import requests
from federation.errors import FederationError, ValidationError
from node import pki
from node.assistance import REQUESTS
from node.local import free_ports
from node.runtime import Node
from tests.assistance_harness import (
    JS,
    SH,
    accept,
    act,
    ask_extension,
    close,
    decide_extension,
    decline,
    deliver_all,
    deliver_next,
    in_flight,
    new_request,
    node_at,
    outbox_row,
    progress,
    read,
    record_receipt,
    reply,
    send_next,
    view,
    withdraw,
)

Pair = tuple[Node, Node]

Action = tuple[str, Callable[[], requests.Event]]  # (lifecycle event name, event maker)

#: What each party may try; the local view refuses what is not allowed now (then skipped).
ACTIONS: dict[requests.Actor, dict[str, Action]] = {
    "requester": {
        "withdraw": ("withdrawn", withdraw),
        "grant": ("extension_decided", lambda: decide_extension(True)),
        "refuse": ("extension_decided", lambda: decide_extension(False)),
        "close": ("closed", close),
    },
    "responder": {
        "accept": ("accepted", accept),
        "progress": ("progress_reported", progress),
        "ask_extension": ("extension_requested", ask_extension),
        "reply": ("replied", reply),
        "decline": ("declined", decline),
    },
}
SKIPPED = frozenset({"INVALID_TRANSITION", "INVALID_EVENT", "NOT_FOUND"})
#: Weights of the steps drawn: an action its author's view allows now is favoured, except the
#: early ends (withdraw, decline), so most runs get far into the lifecycle; refused actions are
#: still tried, and a delivery with something in flight is as likely as an action.
EARLY_ENDS = frozenset({"withdraw", "decline"})
W_EARLY_END, W_REFUSED, W_ALLOWED, W_IDLE_DELIVERY, W_DELIVERY = 1, 2, 8, 2, 10

Step = tuple[str, str]  # ("requester" | "responder", action) or ("deliver", direction)


def candidates(sh: Node, js: Node, rid: str) -> list[Step]:
    """Every step, repeated by its weight now (``sampled_from`` then favours the heavy ones)."""
    steps: list[Step] = []
    parties: tuple[tuple[requests.Actor, Node], ...] = (("requester", sh), ("responder", js))
    for actor, node in parties:
        try:
            state: requests.RequestState | None = view(node, rid).state
        except ValidationError:
            state = None  # Jiangsu does not hold the request yet
        for name, (event_name, _) in ACTIONS[actor].items():
            if name in EARLY_ENDS:
                weight = W_EARLY_END
            elif state is not None and requests.allowed(state, event_name, actor):
                weight = W_ALLOWED
            else:
                weight = W_REFUSED
            steps += [(actor, name)] * weight
    for direction, sender, receiver in (("to_responder", sh, JS), ("to_requester", js, SH)):
        busy = bool(in_flight(sender, receiver))
        steps += [("deliver", direction)] * (W_DELIVERY if busy else W_IDLE_DELIVERY)
    return steps


@pytest.fixture(scope="module")
def fed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("views") / "fed"
    pki.init_federation(root, [SH, JS], ports=dict(zip([SH, JS], free_ports(2), strict=True)))
    return root


@pytest.fixture(scope="module")
def new_pair(fed_root: Path) -> Iterator[Callable[[], Pair]]:
    """``new_pair()``: Shanghai and Jiangsu on brand-new stores (copies of migrated empty ones)."""
    stores = fed_root.parent / "stores"
    stores.mkdir()
    templates = {}
    for code in (SH, JS):
        templates[code] = stores / f"template-{code}.db"
        node_at(fed_root, code, templates[code]).close()
    made: list[Node] = []

    def make() -> Pair:
        pair = []
        for code in (SH, JS):
            store = stores / f"{code}-{uuid.uuid4().hex[:8]}.db"
            shutil.copyfile(templates[code], store)
            pair.append(node_at(fed_root, code, store))
            made.append(pair[-1])
        return pair[0], pair[1]

    yield make
    for node in made:
        node.close()


def try_act(node: Node, rid: str, event: requests.Event) -> bool:
    """The action if the local view allows it; False when it is refused (nothing changes)."""
    try:
        act(node, rid, event)
    except ValidationError as e:
        if e.reason not in SKIPPED:
            raise
        return False
    return True


def void_ids(node: Node, rid: str) -> list[str]:
    return sorted(r.message_id for r in view(node, rid).void)


def row_of(node: Node, rid: str) -> tuple[str, str | None, bool]:
    r = read(node, lambda c: c.execute(select(REQUESTS).where(REQUESTS.c.request_id == rid)).one())
    return str(r.status), r.due_date, bool(r.due_provisional)


def assert_same_views(sh: Node, js: Node, rid: str) -> None:
    a, b = view(sh, rid), view(js, rid)
    assert a.state.to_dict() == b.state.to_dict()
    assert [r.message_id for r in a.events] == [r.message_id for r in b.events]
    assert void_ids(sh, rid) == void_ids(js, rid)
    assert row_of(sh, rid) == row_of(js, rid)
    assert row_of(sh, rid)[0] == a.state.status.value


def close_pair(pair: Pair) -> None:
    for node in pair:
        node.close()


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data(), st.integers(5, 40))
def test_random_sequences_keep_both_nodes_views_equal(
    new_pair: Callable[[], Pair], data: st.DataObject, n_steps: int
) -> None:
    sh, js = new_pair()
    try:
        rid = new_request(sh)
        refusals: list[FederationError] = []
        for i in range(n_steps):
            who, what = data.draw(st.sampled_from(candidates(sh, js, rid)), label=f"step {i}")
            if who == "requester":
                try_act(sh, rid, ACTIONS["requester"][what][1]())
            elif who == "responder":
                try_act(js, rid, ACTIONS["responder"][what][1]())
            else:
                sender, receiver = (sh, js) if what == "to_responder" else (js, sh)
                outcome = deliver_next(sender, receiver)
                if isinstance(outcome, FederationError):
                    refusals.append(outcome)
        refusals += deliver_all(sh, js)
        # Each event was allowed by its author's view; one that crossed another on the wire is
        # kept as void on both nodes, never refused back (which would leave the views apart).
        assert [e.diagnostics() for e in refusals] == []
        assert_same_views(sh, js, rid)
        final = view(sh, rid)
        assert final.state.status is not requests.RequestStatus.SENT
        event(f"ends {final.state.status.value}")
        event(f"{len(final.void)} void event(s)")
    finally:
        close_pair((sh, js))


# --- hand-written crossings -------------------------------------------------------------------


def accepted_request(sh: Node, js: Node) -> str:
    """A request delivered, accepted, and the acceptance delivered back."""
    rid = new_request(sh)
    assert deliver_all(sh, js) == []
    act(js, rid, accept())
    assert deliver_all(sh, js) == []
    assert view(sh, rid).state.status is requests.RequestStatus.ACCEPTED
    return rid


@pytest.mark.parametrize("first", ["withdrawal", "reply"])
def test_withdrawal_crossing_the_reply_ends_withdrawn_on_both(
    new_pair: Callable[[], Pair], first: str
) -> None:
    sh, js = new_pair()
    try:
        rid = accepted_request(sh, js)
        replied = act(js, rid, reply())  # the reply is on its way ...
        withdrawn = act(sh, rid, withdraw())  # ... when Shanghai withdraws
        # Each side applied its own event first.
        assert replied.state.status is requests.RequestStatus.REPLIED
        assert withdrawn.state.status is requests.RequestStatus.WITHDRAWN
        reply_id = replied.events[-1].message_id
        withdrawal_id = withdrawn.events[-1].message_id
        if first == "withdrawal":
            assert deliver_next(sh, js) is True
            assert deliver_next(js, sh) is True
        else:
            assert deliver_next(js, sh) is True
            assert deliver_next(sh, js) is True
        assert deliver_all(sh, js) == []
        # Neither had seen the other's: the requester's goes first, the reply is void on both.
        assert_same_views(sh, js, rid)
        assert view(sh, rid).state.status is requests.RequestStatus.WITHDRAWN
        assert void_ids(sh, rid) == void_ids(js, rid) == [reply_id]
        assert withdrawal_id in [r.message_id for r in view(js, rid).events]
        # Both deliveries were accepted with a receipt, not refused.
        assert outbox_row(js, reply_id).state == "delivered"
        assert outbox_row(sh, withdrawal_id).state == "delivered"
    finally:
        close_pair((sh, js))


def test_extension_granted_while_the_reply_crosses_it_moves_the_due_date_on_both(
    new_pair: Callable[[], Pair],
) -> None:
    sh, js = new_pair()
    try:
        rid = accepted_request(sh, js)
        act(js, rid, ask_extension(10))
        assert deliver_all(sh, js) == []
        before = view(sh, rid).state.due
        assert before is not None
        act(sh, rid, decide_extension(True))
        act(js, rid, reply())  # had not seen the grant
        assert deliver_all(js, sh) == []
        assert_same_views(sh, js, rid)
        st_ = view(js, rid).state
        assert st_.status is requests.RequestStatus.REPLIED
        assert st_.due is not None and st_.due.due_date > before.due_date
        assert void_ids(js, rid) == []
    finally:
        close_pair((sh, js))


def test_responder_event_arriving_before_the_requests_receipt_is_stored(
    new_pair: Callable[[], Pair],
) -> None:
    sh, js = new_pair()
    try:
        rid = new_request(sh)
        # The request is committed by Jiangsu, but its receipt is lost on the way back
        # (timeout, or Shanghai stopped before storing it): Shanghai's worker will retry.
        sent = send_next(sh, js)
        assert sent is not None
        claimed, receipt = sent
        assert isinstance(receipt, bytes)
        act(js, rid, accept())
        refused = deliver_next(js, sh)  # the acceptance arrives first: "try again later"
        assert isinstance(refused, FederationError) and refused.reason == "RECEIPT_PENDING"
        # The retry is answered with the original receipt, which Shanghai now stores; then
        # Jiangsu's acceptance, waiting to retry, goes through.
        record_receipt(sh, claimed, receipt)
        assert deliver_all(sh, js) == []
        assert_same_views(sh, js, rid)
        assert view(sh, rid).state.status is requests.RequestStatus.ACCEPTED
    finally:
        close_pair((sh, js))


def _linked_drafts(node: Node, rid: str) -> list[str]:
    return [
        str(r[0])
        for r in read(
            node,
            lambda c: c.execute(
                select(REQUESTS.c.request_id, REQUESTS.c.status).where(
                    REQUESTS.c.linked_request_id == rid
                )
            ).all(),
        )
    ]


@pytest.mark.parametrize(("members", "drafted"), [((SH, JS, "330000"), True), ((SH, JS), False)])
def test_wrong_jurisdiction_decline_drafts_a_linked_request(
    tmp_path: Path, members: tuple[str, ...], drafted: bool
) -> None:
    """A decline for wrong jurisdiction naming Hangzhou (330100) drafts a linked request to it at
    the requester when a member serves Hangzhou; when none does, nothing is drafted and the
    decline is still accepted on both sides."""
    root = tmp_path / "fed"
    pki.init_federation(
        root, list(members), ports=dict(zip(members, free_ports(len(members)), strict=True))
    )
    sh, js = node_at(root, SH, tmp_path / "sh.db"), node_at(root, JS, tmp_path / "js.db")
    try:
        rid = new_request(sh)
        assert deliver_all(sh, js) == []
        declined = requests.Declined(
            requests.DeclineReason.WRONG_JURISDICTION, "产品实际在杭州使用", "330100"
        )
        act(js, rid, declined)
        assert deliver_all(js, sh) == []
        assert_same_views(sh, js, rid)
        assert view(sh, rid).state.status is requests.RequestStatus.DECLINED
        drafts = _linked_drafts(sh, rid)
        assert len(drafts) == (1 if drafted else 0)
        if drafted:
            d = view(sh, drafts[0])
            assert d.row.status == "draft" and d.row.target_bureau == "330100"
            assert d.row.responder_node == "330000"
    finally:
        close_pair((sh, js))
