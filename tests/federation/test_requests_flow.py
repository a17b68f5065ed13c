"""Requests and bulletins between real node processes, driven through the ``cccfed`` CLI.

Every node runs as ``python -m node.cli node serve`` (real TLS, real stores, the delivery worker);
the commands run in-process through ``node.cli.main``, each opening the node's store from its
configuration as ``cccfed request …`` does, and queue what they send for the running node's
worker. Messages no honest node would send are sealed with the Node API on the sender's store
and delivered by its running worker, so the receiver's refusal comes back over the wire.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.message import Message

from cccfed.v1 import assistance_pb2 as pb
from federation.envelope import verify_receipt
from federation.holidays import HolidayCalendar
from federation.periods import day_period
from node.config import load_config
from node.runtime import Node
from tests.federation import conftest
from tests.federation.conftest import Federation, MakeFed, wait_until

pytestmark = pytest.mark.slow

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "assistance-request.toml"


class Cli(conftest.Cli):
    def show(self, code: str, rid: str) -> dict[str, Any]:
        data: dict[str, Any] = self.json(code, "request", "show", rid)
        return data

    def wait_show(
        self, code: str, rid: str, pred: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        return self.wait_for(code, "request", rid, pred, what)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Federation], Cli]:
    return lambda fed: Cli(capsys, fed)


def outbox_row(fed: Federation, code: str, message_id: str) -> Any:
    rows = [r for r in fed.outbox_rows(code) if r.message_id == message_id]
    assert len(rows) == 1, (code, message_id)
    return rows[0]


def enqueue_crafted(fed: Federation, code: str, to: str, msg: Message, **kw: Any) -> str:
    """Seal and queue ``msg`` in ``code``'s store as its own code would; its running worker
    delivers it. Returns the message id."""
    node = Node(load_config(fed.config(code)))
    try:
        mid, _ = asyncio.run(node.enqueue(to, "assistance", msg, **kw))
        return mid
    finally:
        node.close()


def wait_failed(fed: Federation, code: str, message_id: str, reason: str) -> None:
    def failed() -> bool:
        row = outbox_row(fed, code, message_id)
        assert row.state not in ("delivered",), f"{message_id} was accepted"
        return bool(row.state == "failed")

    wait_until(failed, 30, f"{code}: message {message_id} refused")
    row = outbox_row(fed, code, message_id)
    assert row.fail_reason == reason, row.last_error


def new_request(c: Cli, code: str = SH) -> str:
    created = c.json(code, "request", "new", str(EXAMPLE))
    assert (created["status"], created["target_bureau"], created["responder_node"]) == (
        "sent",
        "320500",
        JS,
    )
    assert created["due"] is None
    return str(created["request_id"])


def delivered_request(c: Cli) -> str:
    rid = new_request(c)
    c.wait_show(SH, rid, lambda d: d["status"] == "delivered", "receipt stored")
    c.wait_show(JS, rid, lambda d: d["status"] == "delivered", "request stored")
    return rid


def events(d: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(h["event"], h["actor"], h["status"]) for h in d["history"]]


def assert_log_verifies(c: Cli, code: str) -> None:
    result = c.json(code, "log", "verify")
    assert result["ok"] is True
    assert result["records"] > 0


# --- a. the whole lifecycle -------------------------------------------------------------------


def test_full_lifecycle_shanghai_to_suzhou_ends_closed_alike_on_both_nodes(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation()
    c = cli(fed)
    sh, js = fed.node(SH).start(), fed.node(JS).start()
    rid = delivered_request(c)
    first_due = c.show(SH, rid)["due"]
    assert c.show(JS, rid)["due"] == first_due

    # Jiangsu assigns it to the Suzhou bureau.
    accepted = c.json(
        JS, "request", "assign", rid, "--bureau", "320500", "--contact-name", "李强",
        "--contact-phone", "0512-6522 1000",
    )  # fmt: skip
    assert (accepted["status"], accepted["assigned_bureau"]) == ("accepted", "320500")
    c.wait_show(SH, rid, lambda d: d["status"] == "accepted", "acceptance")
    assert c.show(SH, rid)["assigned_bureau"] == "320500"

    # Progress, then a request for ten more days, which Shanghai grants.
    c.json(JS, "request", "progress", rid, "--text", "已联系维修中心，正在核对出库记录。")
    c.json(JS, "request", "extend", rid, "--days", "10", "--reason", "需调取海关核销记录")
    pending = c.wait_show(SH, rid, lambda d: d["extension_pending"], "extension request")
    assert [e for e, _, _ in events(pending)][-2:] == ["progress_reported", "extension_requested"]
    granted = c.json(SH, "request", "extend", rid, "--grant")
    assert granted["extension_pending"] is False
    new_due = granted["due"]["due_date"]
    expected = day_period(
        datetime.fromisoformat(first_due["due_date"] + "T12:00:00+08:00"), 10, HolidayCalendar()
    )
    assert new_due == expected.due_date.isoformat() > first_due["due_date"]
    c.wait_show(JS, rid, lambda d: d["due"]["due_date"] == new_due, "the extended due date")

    # The reply: findings for both questions, rectification as follow-up.
    replied = c.json(
        JS, "request", "reply", rid,
        "--finding", "q1=confirmed:零部件确在苏州工业园区维修中心用于最终用户维修",
        "--finding", "q2=partially_confirmed:剩余 12 件尚未退运或销毁",
        "--follow-up", "rectification",
        "--summary", "已责令限期核销。",
    )  # fmt: skip
    assert replied["status"] == "replied"
    c.wait_show(SH, rid, lambda d: d["status"] == "replied", "the reply")

    # Shanghai closes it.
    closed = c.json(SH, "request", "close", rid, "--note", "收到反馈，结案。")
    assert closed["status"] == "closed"
    c.wait_show(JS, rid, lambda d: d["status"] == "closed", "closing")

    a, b = c.show(SH, rid), c.show(JS, rid)
    assert (a["role"], b["role"]) == ("requester", "responder")
    assert a["status"] == b["status"] == "closed"
    assert a["due"] == b["due"]
    assert a["due"]["due_date"] == new_due
    assert len(a["history"]) == len(b["history"]) == 8
    assert a["history"] == b["history"]
    assert events(a) == [
        ("sent", "requester", "sent"),
        ("delivered", "responder", "delivered"),
        ("accepted", "responder", "accepted"),
        ("progress_reported", "responder", "accepted"),
        ("extension_requested", "responder", "accepted"),
        ("extension_decided", "requester", "accepted"),
        ("replied", "responder", "replied"),
        ("closed", "requester", "closed"),
    ]
    assert a["void_events"] == b["void_events"] == []
    assert a["received_at"] == b["received_at"]
    for code in (SH, JS):
        assert set(fed.outbox_states(code)) == {"delivered"}, fed.outbox_rows(code)
    assert sh.terminate() == 0 and js.terminate() == 0
    assert_log_verifies(c, SH)
    assert_log_verifies(c, JS)


# --- b. the recipient is down when the request is sent ----------------------------------------


def test_request_sent_while_the_recipient_is_down_arrives_when_it_starts(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation()
    c = cli(fed)
    fed.node(SH).start()
    rid = new_request(c)
    (row,) = fed.outbox_rows(SH)
    assert row.kind == "cccfed.v1.Request" and row.conversation == rid

    def retrying() -> bool:
        r = outbox_row(fed, SH, row.message_id)
        return bool(r.state == "retry" and r.attempts >= 1 and r.last_error)

    wait_until(retrying, 30, "a failed attempt, to be retried")
    waiting = c.show(SH, rid)
    assert (waiting["status"], waiting["due"], waiting["received_at"]) == ("sent", None, None)

    fed.node(JS).start()
    a = c.wait_show(SH, rid, lambda d: d["status"] == "delivered", "delivery after the start")
    b = c.show(JS, rid)
    assert b["status"] == "delivered"
    assert a["due"] == b["due"] and a["due"] is not None

    # The period starts at the receipt's received_at, not when Shanghai sent the request.
    row = outbox_row(fed, SH, row.message_id)
    node = Node(load_config(fed.config(SH)))
    try:
        vr = verify_receipt(
            bytes(row.receipt),
            bytes(row.envelope),
            node.trust.current,
            expected_receiver=JS,
            at=datetime.now(UTC),
        )
    finally:
        node.close()
    assert datetime.fromisoformat(a["received_at"]) == vr.received_at
    assert datetime.fromisoformat(b["received_at"]) == vr.received_at
    sent_at = datetime.fromisoformat(a["history"][0]["at"])
    assert vr.received_at > sent_at
    assert a["history"][1] == {
        "event": "delivered",
        "actor": "responder",
        "at": vr.received_at.isoformat(),
        "status": "delivered",
        "due_date": a["due"]["due_date"],
    }
    expected = day_period(vr.received_at, 15, HolidayCalendar())
    assert a["due"]["due_date"] == expected.due_date.isoformat()
    assert datetime.fromisoformat(a["due"]["ends_at"]) == expected.ends_at
    assert a["history"] == b["history"]


# --- c. only the other party writes to a request ----------------------------------------------


def test_reply_from_a_third_node_is_refused_and_changes_nothing(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation([SH, JS, ZJ])
    c = cli(fed)
    for code in (SH, JS, ZJ):
        fed.node(code).start()
    rid = delivered_request(c)
    before_sh, before_js = c.show(SH, rid), c.show(JS, rid)

    # Zhejiang answers a request that was sent to Jiangsu.
    forged = pb.Reply(
        request_id=rid,
        summary="浙江代为反馈",
        findings=[
            pb.Finding(question_id=q, finding="未发现", conclusion=pb.CONCLUSION_NOT_CONFIRMED)
            for q in ("q1", "q2")
        ],
        follow_ups=[pb.FollowUp(action=pb.FOLLOW_UP_ACTION_NONE)],
        index=0,
        seen=1,
    )
    mid = enqueue_crafted(fed, ZJ, SH, forged, correlation_id=rid)
    wait_failed(fed, ZJ, mid, "WRONG_PARTY")

    assert mid not in fed.inbox_ids(SH)
    assert c.show(SH, rid) == before_sh
    assert c.show(JS, rid) == before_js


# --- d. transitions the rules do not allow ------------------------------------------------------


def test_closing_by_the_responder_is_refused_by_the_requester(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation()
    c = cli(fed)
    fed.node(SH).start()
    fed.node(JS).start()
    rid = delivered_request(c)
    before_sh, before_js = c.show(SH, rid), c.show(JS, rid)

    # Jiangsu's store: what it holds of each side gives the next index and what it has seen.
    node = Node(load_config(fed.config(JS)))
    try:
        with node.reader.connect() as conn:
            held = node.assistance.view(conn, rid).events
    finally:
        node.close()
    index = sum(1 for r in held if r.side == "responder")
    seen = sum(1 for r in held if r.side == "requester")
    assert (index, seen) == (0, 1)
    close = pb.RequestClosed(request_id=rid, note="由我方结案", index=index, seen=seen)
    mid = enqueue_crafted(fed, JS, SH, close, correlation_id=rid, recipient_bureau="310115")
    wait_failed(fed, JS, mid, "INVALID_TRANSITION")

    assert mid not in fed.inbox_ids(SH)
    assert c.show(SH, rid) == before_sh
    assert c.show(JS, rid) == before_js


@pytest.mark.parametrize(("code", "role"), [(SH, "requester"), (JS, "responder")])
def test_close_before_the_reply_is_refused_locally_and_queues_nothing(
    federation: MakeFed, cli: Callable[[Federation], Cli], code: str, role: str
) -> None:
    fed = federation()
    c = cli(fed)
    fed.node(SH).start()
    fed.node(JS).start()
    rid = delivered_request(c)
    before = c.show(code, rid)
    assert before["role"] == role
    queued = fed.outbox_rows(code)

    rc, out, err = c.run(code, "request", "close", rid)
    assert (rc, out) == (1, "")
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("cccfed: error: ")
    assert lines[0].endswith("[INVALID_TRANSITION]")
    assert "closed" in lines[0] and "DELIVERED" in lines[0]

    assert fed.outbox_rows(code) == queued
    assert c.show(code, rid) == before


# --- e. bulletins --------------------------------------------------------------------------------


def test_bulletin_to_every_member_with_read_acknowledgements(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation([SH, JS, ZJ, AH])
    c = cli(fed)
    for code in fed.codes:
        fed.node(code).start()
    sent = c.json(
        SH, "bulletin", "send", "--title", "2026年第三季度免办联动检查问题通报",
        "--body", "检查中发现维修用零部件跨省使用未核销的问题，请各地关注。",
    )  # fmt: skip
    bid = sent["bulletin_id"]
    assert sent["to"] == [JS, ZJ, AH]

    def listed(code: str) -> dict[str, Any] | None:
        items = c.json(code, "bulletin", "list")
        mine = [i for i in items if i["bulletin_id"] == bid]
        return mine[0] if mine else None

    for code in (JS, ZJ, AH):
        wait_until(lambda: listed(code) is not None, 30, f"{code}: the bulletin")  # noqa: B023
        item = listed(code)
        assert item is not None
        assert (item["from"], item["title"], item["read_at"]) == (
            SH,
            "2026年第三季度免办联动检查问题通报",
            None,
        )
    item = listed(SH)
    assert item is not None
    assert (item["read_by"], item["unread_by"]) == ([], [JS, ZJ, AH])

    for code in (JS, ZJ):
        assert c.json(code, "bulletin", "read", bid) == {"bulletin_id": bid, "read": True}

    def acknowledged() -> bool:
        i = listed(SH)
        return i is not None and i["read_by"] == [JS, ZJ]

    wait_until(acknowledged, 30, "both acknowledgements")
    item = listed(SH)
    assert item is not None
    assert item["unread_by"] == [AH]
    for code, read in ((JS, True), (ZJ, True), (AH, False)):
        mine = listed(code)
        assert mine is not None and (mine["read_at"] is not None) is read, code

    # Acknowledging again changes nothing and sends nothing.
    queued = fed.outbox_rows(JS)
    assert c.json(JS, "bulletin", "read", bid) == {"bulletin_id": bid, "read": True}
    assert fed.outbox_rows(JS) == queued
    for code in fed.codes:
        assert set(fed.outbox_states(code)) <= {"delivered"}, code
