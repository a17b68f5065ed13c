"""``make demo``: the local four-province federation and what it can do.

Each step prints what happened. Later capabilities add their flows here.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

from sqlalchemy import select

from cccfed.v1 import federation_pb2
from node import output
from node.config import load_config
from node.local import LocalFederation, config_path, ensure_federation, wait_serving
from node.logbundle import verify_store
from node.runtime import Node
from node.store.ops import OUTBOX

NAMES = {
    "310000": "上海 Shanghai",
    "320000": "江苏 Jiangsu",
    "330000": "浙江 Zhejiang",
    "340000": "安徽 Anhui",
}


def step(title: str) -> None:
    print(f"\n== {title}")


def outbox_row(node: Node, message_id: str) -> dict[str, object]:
    with node.reader.connect() as conn:
        r = conn.execute(select(OUTBOX).where(OUTBOX.c.message_id == message_id)).one()
    return dict(r._mapping)


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

        step("5. Every node's hash-chained message log verifies (chain + every signature)")
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
        step("6. Shutting down (SIGTERM to every node)")
        codes = fed.stop_all()
        output.table(["node", "exit code"], sorted(codes.items()))
        clean = all(rc == 0 for rc in codes.values())
        print("demo", "completed" if ok and clean else "FAILED")
        if created and ok and clean:
            shutil.rmtree(root, ignore_errors=True)
    return 0 if ok and clean else 1
