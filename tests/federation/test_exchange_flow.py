"""Expert exchanges between real node processes, driven through the ``cccfed`` CLI.

Every node runs as ``python -m node.cli node serve`` (real TLS, real stores, the delivery
worker); commands run in-process through ``node.cli.main`` as ``cccfed experts|exchange …`` do,
or as separate ``python -m node.cli`` processes where two must run at the same moment. What they
send is queued in the store and delivered by the running node's worker.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from icalendar import Calendar

from cccfed.v1 import expert_exchange_pb2 as pb
from federation import draw as draws
from federation.periods import shanghai_date
from node.config import load_config
from node.runtime import Node
from tests.federation import conftest
from tests.federation.conftest import Federation, MakeFed, wait_until

pytestmark = pytest.mark.slow

SH, ZJ, AH = "310000", "330000", "340000"
ROOT = Path(__file__).resolve().parents[2]
ANHUI_EXPERTS = ROOT / "docs" / "examples" / "experts-anhui.csv"
HOLDER = "913304007429141869"


class Cli(conftest.Cli):
    def wait_show(
        self, code: str, xid: str, pred: Callable[[dict[str, Any]], bool], what: str
    ) -> dict[str, Any]:
        return self.wait_for(code, "exchange", xid, pred, what)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Callable[[Federation], Cli]:
    return lambda fed: Cli(capsys, fed)


def today() -> dt.date:
    return shanghai_date(dt.datetime.now(dt.UTC))


def request_flags(host_bureau: str, offsets: tuple[int, ...], experts: int = 2) -> list[str]:
    flags = [
        "exchange", "request", "--host-bureau", host_bureau, "--provider", AH,
        "--place", "杭州市滨江区江南大道 3888 号", "--holder-uscc", HOLDER,
        "--category", "低压电器", "--experts", str(experts),
        "--reply-by", (today() + dt.timedelta(days=10)).isoformat(),
    ]  # fmt: skip
    for offset in offsets:
        flags += ["--date", (today() + dt.timedelta(days=offset)).isoformat()]
    return flags


def status_is(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda d: d["status"] == status


def all_delivered(fed: Federation, *codes: str) -> None:
    for code in codes:
        wait_until(
            lambda c=code: set(fed.outbox_states(c)) <= {"delivered"},  # type: ignore[misc]
            30,
            f"{code}: outbox delivered",
        )


# --- a. the whole flow ------------------------------------------------------------------------


def test_zhejiang_asks_anhui_for_two_experts_from_request_to_attendance(
    federation: MakeFed, cli: Callable[[Federation], Cli], tmp_path: Path
) -> None:
    fed = federation([ZJ, AH])
    c = cli(fed)
    zj, ah = fed.node(ZJ).start(), fed.node(AH).start()

    imported = c.json(AH, "experts", "import", str(ANHUI_EXPERTS))
    assert len(imported["added"]) == 7
    listed = c.json(AH, "experts", "list")
    assert [e["expert_id"] for e in listed] == [f"AH-000{i}" for i in range(1, 8)]
    assert all("phone" not in e and "id_number" not in e for e in listed)
    shown = c.json(AH, "experts", "show", "AH-0001")
    assert shown["phone"] == "0551-6288-0101"
    assert shown["id_number"] == "3401************12"  # masked even for the local operator

    created = c.json(ZJ, *request_flags("330100", (20, 21)))
    xid = created["exchange_id"]
    assert (created["status"], created["role"], created["provider_node"]) == (
        "requested",
        "host",
        AH,
    )
    c.wait_show(AH, xid, status_is("requested"), "the request")

    proposed = c.json(AH, "exchange", "propose", xid[:8])
    assert proposed["status"] == "proposed" and proposed["k"] == 2
    assert [e["expert_id"] for e in proposed["candidates"]] == ["AH-0001", "AH-0002", "AH-0004"]
    c.wait_show(ZJ, xid, status_is("proposed"), "the proposal")

    confirmed = c.json(ZJ, "exchange", "confirm", xid)
    assert confirmed["status"] == "confirmed" and len(confirmed["drawn"]) == 2
    drawn = [e["expert_id"] for e in confirmed["drawn"]]
    c.wait_show(AH, xid, status_is("confirmed"), "the confirmation")
    attended = c.json(AH, "exchange", "confirm", xid)
    assert attended["status"] == "attendance_confirmed"
    a = c.wait_show(ZJ, xid, status_is("attendance_confirmed"), "attendance")
    b = c.json(AH, "exchange", "show", xid)
    assert a["history"] == b["history"]
    assert [h["event"] for h in a["history"]] == ["proposed", "confirmed", "attendance_confirmed"]
    assert a["draw"] == b["draw"] and a["draw"]["result"] == drawn
    assert "audit" in b and "audit" not in a  # who was excluded for what stays with Anhui
    assert b["audit"]["excluded"]["AH-0007"] == ["conflict_holder"]

    # Anyone holding the record can recompute the draw: from either store, or from a file.
    record = tmp_path / "draw.json"
    for code in (ZJ, AH):
        verified = c.json(code, "exchange", "verify-draw", xid, "--out", str(record))
        assert verified["ok"] is True and verified["recomputed"] == drawn
    offline = c.json(None, "exchange", "verify-draw", "--record", str(record))
    assert offline["recomputed"] == drawn
    data = json.loads(record.read_text(encoding="utf-8"))
    for field, value, reason in (
        ("result", list(reversed(drawn)), "DRAW_MISMATCH"),
        ("host_value", "00" * 32, "REVEAL_MISMATCH"),
    ):
        tampered = tmp_path / f"tampered-{field}.json"
        tampered.write_text(json.dumps({**data, field: value}), encoding="utf-8")
        rc, out, err = c.run(None, "exchange", "verify-draw", "--record", str(tampered))
        assert (rc, out) == (1, "") and err.strip().endswith(f"[{reason}]"), err

    # Calendars: the expert's and the host bureau's, on either node.
    ics = tmp_path / "expert.ics"
    written = c.json(AH, "exchange", "calendar", "--expert", drawn[0], "--out", str(ics))
    assert written["assignments"] == 1
    (event,) = list(Calendar.from_ical(ics.read_bytes()).walk("VEVENT"))
    assert event.decoded("dtstart") == today() + dt.timedelta(days=20)
    assert str(event.get("status")) == "CONFIRMED"
    written = c.json(ZJ, "exchange", "calendar", "--bureau", "330100", "--out", str(ics))
    assert written["assignments"] == 1
    assert HOLDER not in ics.read_text(encoding="utf-8")

    booked = c.json(AH, "experts", "show", drawn[0])["bookings"]
    assert [(x["exchange_id"], x["tentative"]) for x in booked] == [(xid, False)] * 2
    assert c.json(AH, "experts", "show", "AH-0006")["bookings"] == []
    assert [x["status"] for x in c.json(ZJ, "exchange", "list")] == ["attendance_confirmed"]

    all_delivered(fed, ZJ, AH)
    assert zj.terminate() == 0 and ah.terminate() == 0
    for code in (ZJ, AH):
        assert c.json(code, "log", "verify")["ok"] is True


# --- b. two provinces, the same experts, at the same time ----------------------------------------


def test_two_provinces_asking_for_the_same_experts_at_once_only_one_gets_them(
    federation: MakeFed, cli: Callable[[Federation], Cli], tmp_path: Path
) -> None:
    fed = federation([SH, ZJ, AH])
    c = cli(fed)
    for code in fed.codes:
        fed.node(code).start()
    registry = tmp_path / "anhui.json"  # the JSON form of a registry this time
    registry.write_text(
        json.dumps(
            {
                "experts": [
                    {"expert_id": "AH-1", "name": "周海涛", "bureau": "340100",
                     "categories": ["低压电器"], "annual_cap": 5, "phone": "0551-6288-0101"},
                    {"expert_id": "AH-2", "name": "吴静", "bureau": "340200",
                     "categories": ["LOW_VOLTAGE_APPARATUS"], "annual_cap": 5},
                ]
            },
            ensure_ascii=False,
        ),
        encoding="utf-8",
    )  # fmt: skip
    assert c.json(AH, "experts", "import", str(registry))["added"] == ["AH-1", "AH-2"]

    # Zhejiang and Shanghai ask for both experts on overlapping days.
    ids = {
        ZJ: c.json(ZJ, *request_flags("330100", (20, 21)))["exchange_id"],
        SH: c.json(SH, *request_flags("310115", (21, 22)))["exchange_id"],
    }
    for xid in ids.values():
        c.wait_show(AH, xid, status_is("requested"), "both requests")

    # Two operators (two processes) propose for both at the same moment, next to the node.
    procs = {
        host: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node.cli",
                "exchange",
                "propose",
                xid,
                "--config",
                str(fed.config(AH)),
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for host, xid in ids.items()
    }
    results = {host: (p.wait(60), *p.communicate()) for host, p in procs.items()}
    winners = [h for h, (rc, _, _) in results.items() if rc == 0]
    losers = [h for h, (rc, _, _) in results.items() if rc != 0]
    assert len(winners) == 1 and len(losers) == 1, results
    (winner,), (loser,) = winners, losers
    rc, _, err = results[loser]
    assert rc == 1 and err.strip().endswith("[NO_ELIGIBLE_EXPERTS]"), err
    assert "AH-1: booked" in err and "AH-2: booked" in err
    proposal = json.loads(results[winner][1])
    assert sorted(e["expert_id"] for e in proposal["candidates"]) == ["AH-1", "AH-2"]

    # Anhui declines the other; the winner's host confirms and gets both experts.
    declined = c.json(AH, "exchange", "decline", ids[loser], "--reason", "no_eligible_experts")
    assert declined["status"] == "declined"
    c.wait_show(loser, ids[loser], status_is("declined"), "the decline")
    c.wait_show(winner, ids[winner], status_is("proposed"), "the proposal")
    confirmed = c.json(winner, "exchange", "confirm", ids[winner])
    assert sorted(e["expert_id"] for e in confirmed["drawn"]) == ["AH-1", "AH-2"]
    c.wait_show(AH, ids[winner], status_is("confirmed"), "the confirmation")
    for expert in ("AH-1", "AH-2"):
        booked = c.json(AH, "experts", "show", expert)["bookings"]
        assert {x["exchange_id"] for x in booked} == {ids[winner]}
        assert not any(x["tentative"] for x in booked)

    # Cancelling frees the days: a new request for them can now have the experts.
    c.json(winner, "exchange", "cancel", ids[winner], "--text", "检查延期")
    c.wait_show(AH, ids[winner], status_is("cancelled"), "the cancellation")
    assert c.json(AH, "experts", "show", "AH-1")["bookings"] == []
    again = c.json(loser, *request_flags("310115" if loser == SH else "330100", (21, 22)))
    c.wait_show(AH, again["exchange_id"], status_is("requested"), "the new request")
    assert c.json(AH, "exchange", "propose", again["exchange_id"])["k"] == 2
    all_delivered(fed, SH, ZJ, AH)


# --- c. a peer's tampered answer is refused over the wire ---------------------------------------


def test_confirmation_naming_other_experts_than_the_draw_is_refused(
    federation: MakeFed, cli: Callable[[Federation], Cli]
) -> None:
    fed = federation([ZJ, AH])
    c = cli(fed)
    fed.node(ZJ).start()
    fed.node(AH).start()
    c.json(AH, "experts", "import", str(ANHUI_EXPERTS))
    xid = c.json(ZJ, *request_flags("330100", (20, 21)))["exchange_id"]
    c.wait_show(AH, xid, status_is("requested"), "the request")
    c.json(AH, "exchange", "propose", xid)
    c.wait_show(ZJ, xid, status_is("proposed"), "the proposal")
    before = c.json(AH, "exchange", "show", xid)

    # Zhejiang's node reveals its true value but names the drawn experts in another order.
    node = Node(load_config(fed.config(ZJ)))
    try:
        with node.reader.connect() as conn:
            v = node.exchange.view(conn, xid)
        host_value = bytes(v.row.host_value)
        proposal = v.state.proposal
        assert proposal is not None
        result = draws.draw(
            draws.seed(host_value, proposal.provider_value), proposal.tiers, proposal.k
        )
        msg = pb.ExchangeConfirmed(
            request_id=xid, host_value=host_value, result=result[::-1], index=1, seen=1
        )
        mid, _ = asyncio.run(
            node.enqueue(AH, "expert_exchange", msg, correlation_id=xid, recipient_bureau=AH)
        )
    finally:
        node.close()

    def refused() -> bool:
        (row,) = [r for r in fed.outbox_rows(ZJ) if r.message_id == mid]
        assert row.state != "delivered", "the tampered confirmation was accepted"
        return bool(row.state == "failed")

    wait_until(refused, 30, "the refusal")
    (row,) = [r for r in fed.outbox_rows(ZJ) if r.message_id == mid]
    assert row.fail_reason == "DRAW_MISMATCH", row.last_error
    assert mid not in fed.inbox_ids(AH)
    assert c.json(AH, "exchange", "show", xid) == before
