"""``make demo``: the local four-province federation and what it can do.

Each step prints what happened. Later capabilities add their flows here.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import tempfile
import time
import tomllib
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from cccfed.v1 import federation_pb2
from federation import draw as draws
from federation import requests
from federation.errors import FederationError
from federation.experts import parse_registry_csv
from federation.periods import shanghai_date
from node import output
from node.assistance import READS
from node.config import load_config
from node.local import LocalFederation, config_path, ensure_federation, wait_serving
from node.logbundle import verify_store
from node.runtime import Node
from node.store.ops import OUTBOX

EXAMPLES = Path(__file__).resolve().parents[1] / "docs" / "examples"
EXAMPLE_REQUEST = EXAMPLES / "assistance-request.toml"
EXAMPLE_RESULT = EXAMPLES / "inspection-result.toml"
#: The inspecting bureau of each province's example result (a city or district of its own).
RESULT_BUREAU = {"310000": "310115", "320000": "320500", "330000": "330100", "340000": "340100"}
ANHUI_EXPERTS = EXAMPLES / "experts-anhui.csv"
NAMES = {
    "310000": "上海 Shanghai",
    "320000": "江苏 Jiangsu",
    "330000": "浙江 Zhejiang",
    "340000": "安徽 Anhui",
}


def example_result(code: str, n: int = 0) -> dict[str, Any]:
    """The example inspection result moved to province ``code`` (0 <= n < 31).

    A node publishes only its own province's results, so the inspecting bureau and the
    inspectors must be of ``code``, and the place of use of the products must be another
    province; ``n`` shifts the inspection date so that each variant is a distinct record.
    Dates stay ISO strings, so the dict can be written as JSON for ``result publish``.
    """
    data: dict[str, Any] = tomllib.loads(EXAMPLE_RESULT.read_text(encoding="utf-8"))
    bureau = RESULT_BUREAU[code]
    data["record_id"] = str(uuid.uuid4())
    data["inspecting_bureau"] = bureau
    data["inspectors"] = [dict(i, bureau=bureau) for i in data["inspectors"][:2]]
    if code == "320000":
        data["other_findings"]["used_elsewhere"][0]["bureau"] = "310115"
    data["inspected_on"] = data["inspected_on"] + timedelta(days=n)
    data["confirmation"]["signed_on"] = data["inspected_on"]
    out: dict[str, Any] = json.loads(json.dumps(data, default=lambda d: d.isoformat()))
    return out


def step(title: str) -> None:
    print(f"\n== {title}")


def outbox_row(node: Node, message_id: str) -> dict[str, object]:
    with node.reader.connect() as conn:
        r = conn.execute(select(OUTBOX).where(OUTBOX.c.message_id == message_id)).one()
    return dict(r._mapping)


def _mark_read(node: Node, bulletin_id: str, conn: Connection) -> None:
    node.assistance.mark_read(conn, bulletin_id)


async def _wait_status(node: Node, request_id: str, status: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with node.reader.connect() as conn:
            if node.assistance.view(conn, request_id).state.status.value == status:
                return
        await asyncio.sleep(0.2)
    raise RuntimeError(f"request {request_id} did not reach {status} at {node.code}")


async def _assistance_demo(nodes: dict[str, Node]) -> None:
    sh, js = nodes["310000"], nodes["320000"]
    step(
        "5. Shanghai's inspection finds exempted repair parts used in Suzhou: "
        "assistance request (协查) to 320500"
    )
    data = tomllib.loads(EXAMPLE_REQUEST.read_text(encoding="utf-8"))
    request = sh.assistance.parse_new(data)
    rid = await sh.run_and_send(lambda c: sh.assistance.create(c, request))
    print(f"310000 sent request {rid} to bureau 320500 (holder {request.holder.name})")
    await _wait_status(sh, rid, "delivered")
    await _wait_status(js, rid, "delivered")
    with sh.reader.connect() as c:
        due = sh.assistance.view(c, rid).state.due
    assert due is not None
    print(
        f"delivered; the 15-day reply period runs from the receipt: due {due.due_date} "
        f"(until 24:00 Beijing time = {due.ends_at:%Y-%m-%d %H:%M} UTC)"
    )

    step("6. Jiangsu assigns it to Suzhou (320500) and replies with findings and follow-up")
    accepted = requests.Accepted(
        assigned_bureau="320500", assignee=requests.Contact(name="李强", phone="0512-6688 0000")
    )
    await js.run_and_send(lambda c: js.assistance.act(c, rid, accepted))
    await _wait_status(sh, rid, "accepted")
    reply = requests.Replied(
        findings=(
            requests.Finding(
                "q1", "经现场核查，零部件用于最终用户维修。", requests.Conclusion.CONFIRMED
            ),
            requests.Finding(
                "q2", "部分已退运出关，剩余 5 件待销毁。", requests.Conclusion.PARTIALLY_CONFIRMED
            ),
        ),
        follow_ups=(requests.FollowUp(requests.FollowUpAction.RECTIFICATION, "限期 30 日整改"),),
        summary="已责令该单位整改并补办核销。",
    )
    await js.run_and_send(lambda c: js.assistance.act(c, rid, reply))
    await _wait_status(sh, rid, "replied")

    step("7. Shanghai closes it; both nodes hold the same view")
    await sh.run_and_send(lambda c: sh.assistance.act(c, rid, requests.Closed("收悉，谢谢协助")))
    await _wait_status(js, rid, "closed")
    rows = []
    views = {}
    for code, n in (("310000", sh), ("320000", js)):
        with n.reader.connect() as c:
            v = n.assistance.view(c, rid)
        views[code] = v.state.to_dict()
        st = v.state
        rows.append(
            (
                code,
                v.role,
                st.status.value,
                st.assigned_bureau,
                st.due.due_date if st.due else "-",
                len(st.history),
            )
        )
    output.table(["node", "side", "status", "assigned", "due", "events"], rows)
    if views["310000"] != views["320000"]:
        raise RuntimeError("the two nodes disagree about the request")
    print("both views identical (status, due date, history)")

    step("8. A bulletin (通报) to every member; read acknowledgements come back")
    bulletin = requests.parse_bulletin(
        {"title": "关于长三角CCC免办联动协查情况的通报", "body": "本季度协查 1 件，已办结。"},
        bulletin_id=str(uuid.uuid4()),
    )
    await sh.run_and_send(lambda c: sh.assistance.send_bulletin(c, bulletin))
    for code in ("320000", "330000", "340000"):
        n = nodes[code]
        deadline = time.monotonic() + 30
        while True:
            try:
                await n.run_and_send(functools.partial(_mark_read, n, bulletin.bulletin_id))
                break
            except FederationError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)
    deadline = time.monotonic() + 30
    read_by: list[str] = []
    while time.monotonic() < deadline and len(read_by) < 3:
        with sh.reader.connect() as c:
            read_by = sorted(
                r.node
                for r in c.execute(select(READS).where(READS.c.bulletin_id == bulletin.bulletin_id))
            )
        await asyncio.sleep(0.2)
    print(f"bulletin {bulletin.bulletin_id[:8]} read by {', '.join(read_by)}")


async def _wait_exchange(node: Node, exchange_id: str, status: str, within: float = 30) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with node.reader.connect() as conn:
            try:
                if node.exchange.view(conn, exchange_id).state.status.value == status:
                    return
            except FederationError:
                pass  # not arrived yet
        await asyncio.sleep(0.2)
    raise RuntimeError(f"exchange {exchange_id} did not reach {status} at {node.code}")


async def _exchange_demo(nodes: dict[str, Node]) -> None:
    zj, ah = nodes["330000"], nodes["340000"]
    step(
        "9. Zhejiang (Hangzhou 330100) asks Anhui 340000 for two experts; Anhui matches its "
        "registry and proposes"
    )
    registry = parse_registry_csv(ANHUI_EXPERTS.read_bytes(), ANHUI_EXPERTS.name, province="340000")
    imported = await ah.run_and_send(
        lambda c: ah.exchange.import_registry(c, registry, source=ANHUI_EXPERTS.name)
    )
    print(f"340000 imported {len(imported['added'])} experts from {ANHUI_EXPERTS.name}")
    today = shanghai_date(zj.clock())
    data = {
        "host_bureau": "330100",
        "provider_province": "340000",
        "dates": [(today + timedelta(days=d)).isoformat() for d in (21, 22)],
        "place": "杭州市滨江区江南大道 3888 号",
        "holder_uscc": "913304007429141869",
        "categories": ["低压电器"],
        "experts_wanted": 2,
        "reply_by": (today + timedelta(days=10)).isoformat(),
    }
    request, host_value = zj.exchange.parse_new(data)
    xid = await zj.run_and_send(lambda c: zj.exchange.create(c, request, host_value))
    print(
        f"330000 sent exchange {xid[:8]} with commit(h) = {request.host_commitment.hex()[:16]}… "
        "(h stays on Zhejiang's node)"
    )
    await _wait_exchange(ah, xid, "requested")
    proposed = await ah.run_and_send(lambda c: ah.exchange.propose(c, xid))
    proposal = proposed.state.proposal
    assert proposal is not None
    with ah.reader.connect() as c:
        audit = json.loads(ah.exchange.view(c, xid).row.audit or "{}")
    for expert_id, reasons in audit.get("excluded", {}).items():
        print(f"  not eligible: {expert_id} ({', '.join(reasons)})")
    print(
        f"340000 proposed {len(proposal.candidates)} candidates "
        f"({', '.join(f'{e.name} {e.expert_id}' for e in proposal.candidates)}), k={proposal.k}, "
        f"p = {proposal.provider_value.hex()[:16]}…; they are held for those dates"
    )
    await _wait_exchange(zj, xid, "proposed")

    step("10. Zhejiang reveals h and confirms the draw; Anhui confirms attendance; both verify")
    confirmed = await zj.run_and_send(lambda c: zj.exchange.confirm(c, xid))
    record = confirmed.state.draw
    assert record is not None
    names = {e.expert_id: e.name for e in proposal.candidates}
    print(f"drawn: {', '.join(f'{names[i]} ({i})' for i in record.result)}")
    await _wait_exchange(ah, xid, "confirmed")
    await ah.run_and_send(lambda c: ah.exchange.confirm(c, xid))
    await _wait_exchange(zj, xid, "attendance_confirmed")
    rows = []
    states = {}
    for code, n in (("330000", zj), ("340000", ah)):
        with n.reader.connect() as c:
            v = n.exchange.view(c, xid)
            stored = n.exchange.draw_record(c, xid)
        draws.check_draw(stored)  # recomputed from the signed messages each node holds
        states[code] = v.state
        rows.append((code, v.role, v.state.status.value, ", ".join(stored.result), "verified"))
    output.table(["node", "side", "status", "drawn", "draw"], rows)
    if states["330000"] != states["340000"]:
        raise RuntimeError("the two nodes disagree about the exchange")
    print(f"both views identical; anyone can recompute it: cccfed exchange verify-draw {xid[:8]}")


async def _recognition_demo(nodes: dict[str, Node], within: float = 60) -> None:
    """Each province publishes a result; every log converges and each result is recognised.

    Recognition needs the cosignature of every other member, so waiting for it shows the
    whole path: the note to each witness, its checks, its cosignature back to every node.
    """
    step(
        "11. Inspection results: each node publishes one to its witnessed log; "
        "the three others verify, cosign and recognise it"
    )
    for code, node in nodes.items():
        result = node.recognition.parse_new(example_result(code))
        out = await node.run_and_send(functools.partial(node.recognition.publish, result=result))
        print(f"{code} published {out['record_id'][:8]}… as entry {out['index']} of its log")

    def views() -> dict[str, list[dict[str, Any]]]:
        out = {}
        for code, node in nodes.items():
            with node.reader.connect() as conn:
                out[code] = node.recognition.checkpoints(conn)
        return out

    def settled(seen: dict[str, list[dict[str, Any]]]) -> bool:
        heads = {
            json.dumps([(r["origin"], r["size"], r["root"]) for r in v]) for v in seen.values()
        }
        return len(heads) == 1 and all(
            len(v) == len(nodes) and all(len(r["cosigned_by"]) == len(nodes) - 1 for r in v)
            for v in seen.values()
        )

    deadline = time.monotonic() + within
    seen = views()
    while not settled(seen) and time.monotonic() < deadline:
        await asyncio.sleep(0.3)
        seen = views()
    rows = []
    for cp in seen["310000"]:
        # Recognised by a member only if every node sees that member's cosignature.
        by = sorted(set.intersection(*(_recognizers(n, cp["origin"]) for n in nodes.values())))
        rows.append((cp["origin"], cp["size"], cp["root"][:16] + "…", ", ".join(by)))
    output.table(["origin", "size", "root", "recognized by"], rows)
    if not settled(seen):
        raise RuntimeError("the nodes' logs did not converge with every cosignature")
    for code, node in nodes.items():
        with node.reader.connect() as conn:
            pending = [r for r in node.recognition.results(conn) if r["status"] != "recognized"]
        if pending:
            raise RuntimeError(f"{code}: {len(pending)} result(s) not recognised")
    print("all four logs identical on every node; every result recognised by the three others")


def _recognizers(node: Node, origin: str) -> set[str]:
    with node.reader.connect() as conn:
        return {
            c for r in node.recognition.results(conn, origin=origin) for c in r["recognized_by"]
        }


async def _demo(fed: LocalFederation) -> None:
    root = fed.root
    nodes = {code: Node(load_config(config_path(root, code))) for code in fed.codes}
    try:
        sh = nodes["310000"]
        step("1. Every node is up and SERVING (gRPC health over mutual TLS)")
        status = await wait_serving(sh, fed.codes)
        output.table(["node", "name", "health"], [(c, NAMES[c], status[c]) for c in fed.codes])

        step("2. All 12 ordered pairs exchange a signed Ping; each answer is a signed receipt")
        rows = []
        for a in fed.codes:
            for b in fed.codes:
                if a != b:
                    _, res = await nodes[a].ping(b)
                    rows.append(
                        (a, b, res.receipt.body.receiver_node, f"{res.rtt_seconds * 1000:.1f}")
                    )
        output.table(["from", "to", "receipt signed by", "rtt ms"], rows)
        assert all(r[1] == r[2] for r in rows), "a receipt was signed by someone else"

        step("3. Durable delivery: Anhui goes down; Shanghai queues a message for it")
        print("stopping 340000 (SIGTERM) … exit code", fed.stop("340000"))
        mid, _ = await sh.enqueue(
            "340000", "federation", federation_pb2.Ping(note="queued while you were away")
        )
        deadline = time.monotonic() + 20
        row = outbox_row(sh, mid)
        while row["state"] != "retry" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            row = outbox_row(sh, mid)
        print(f"outbox {row['id']} ({mid[:8]}…) state={row['state']} attempts={row['attempts']}")
        print(f"  last error: {str(row['last_error'])[:90]}")

        step("4. Anhui comes back; the Shanghai node's worker delivers the queued message")
        fed.start("340000")
        fed.wait_ready(["340000"])
        deadline = time.monotonic() + 60
        while row["state"] != "delivered" and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            row = outbox_row(sh, mid)
        print(
            f"outbox {row['id']} state={row['state']} after {row['attempts']} attempt(s); "
            f"received by 340000 at {row['received_at']} (signed receipt stored)"
        )
        if row["state"] != "delivered":
            raise RuntimeError("the queued message was not delivered")

        await _assistance_demo(nodes)
        await _exchange_demo(nodes)
        await _recognition_demo(nodes)

        step("12. Every node's hash-chained message log verifies (chain + every signature)")
        vrows = []
        for code, n in nodes.items():
            r = verify_store(n.reader, n.ca, code)
            vrows.append((code, r.records, r.envelopes, r.receipts, r.last_hash[:16] + "…"))
        output.table(["node", "records", "envelopes", "receipts", "head"], vrows)
    finally:
        for n in nodes.values():
            await n.peers.close()
            n.close()


def run_demo(directory: Path | None = None) -> int:
    root = directory or Path(tempfile.mkdtemp(prefix="cccfed-demo-"))
    created = directory is None
    print(f"cccfed demo: a local federation of four provincial nodes in {root}")
    ensure_federation(root)
    fed = LocalFederation(root)
    fed.start_all()
    ok = False
    try:
        fed.wait_ready()
        asyncio.run(_demo(fed))
        ok = True
    finally:
        step("13. Shutting down (SIGTERM to every node)")
        codes = fed.stop_all()
        output.table(["node", "exit code"], sorted(codes.items()))
        clean = all(rc == 0 for rc in codes.values())
        print("demo", "completed" if ok and clean else "FAILED")
        if created and ok and clean:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok and clean else 1
