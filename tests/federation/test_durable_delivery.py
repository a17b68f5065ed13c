"""Nothing accepted is lost or applied twice: real node processes killed with SIGKILL."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from cccfed.v1 import federation_pb2, log_pb2
from federation.envelope import verify_receipt
from node.config import load_config
from node.logbundle import verify_store
from node.runtime import Node
from node.store.ops import LOG
from tests.federation.conftest import Federation, MakeFed, wait_until

pytestmark = pytest.mark.slow


def enqueue(config: Path, target: str, n: int, service: str = "federation") -> list[str]:
    """Queue ``n`` signed Pings in the sender's store, as the sender's own code would."""
    node = Node(load_config(config))

    async def run() -> list[str]:
        ids = []
        for i in range(n):
            mid, _ = await node.enqueue(target, service, federation_pb2.Ping(note=f"#{i}"))
            ids.append(mid)
        return ids

    try:
        return asyncio.run(run())
    finally:
        node.close()


def log_counts(
    fed: Federation, code: str, config: Path | None = None
) -> Counter[tuple[str, int, int]]:
    """(message id, direction, type) → number of log records."""
    counts: Counter[tuple[str, int, int]] = Counter()
    with fed.engine(code, config).connect() as c:
        for (raw,) in c.execute(select(LOG.c.record)):
            rec = log_pb2.LogRecord.FromString(raw)
            counts[(rec.message_id, rec.direction, rec.type)] += 1
    return counts


RECEIVED, SENT = log_pb2.LOG_DIRECTION_RECEIVED, log_pb2.LOG_DIRECTION_SENT
ENVELOPE, RECEIPT = log_pb2.LOG_RECORD_TYPE_ENVELOPE, log_pb2.LOG_RECORD_TYPE_RECEIPT


def assert_exactly_once(
    fed: Federation, sender: str, receiver: str, ids: list[str], sender_config: Path | None = None
) -> None:
    # At the receiver: one inbox row and one received-envelope record per message.
    inbox = fed.inbox_ids(receiver)
    assert sorted(inbox) == sorted(ids)
    rlog = log_counts(fed, receiver)
    for mid in ids:
        assert rlog[(mid, RECEIVED, ENVELOPE)] == 1
        assert rlog[(mid, SENT, RECEIPT)] == 1
    # At the sender: every row delivered with exactly one verified receipt.
    cfg = load_config(sender_config or fed.config(sender))
    node = Node(cfg)
    try:
        rows = {r.message_id: r for r in fed.outbox_rows(sender, sender_config)}
        slog = log_counts(fed, sender, sender_config)
        for mid in ids:
            row = rows[mid]
            assert row.state == "delivered", (mid, row.state, row.last_error)
            vr = verify_receipt(
                bytes(row.receipt),
                bytes(row.envelope),
                node.trust.current,
                expected_receiver=receiver,
                at=datetime.now(UTC),
            )
            assert vr.received_at == row.received_at
            assert slog[(mid, RECEIVED, RECEIPT)] == 1
        verify_store(node.engine, node.ca, sender)
        verify_store(fed.engine(receiver), node.ca, receiver)
    finally:
        node.close()


def delivered(fed: Federation, code: str, n: int, config: Path | None = None) -> bool:
    return fed.outbox_states(code, config).get("delivered", 0) == n


@pytest.mark.parametrize("point", ["after_claim=1", "after_send=5"])
def test_sender_killed_between_commit_and_send_or_before_receipt_stored(
    federation: MakeFed, point: str
) -> None:
    fed = federation()
    receiver = fed.node("320000").start()
    ids = enqueue(fed.config("310000"), "320000", 20)
    sender = fed.node("310000").start(CCCFED_FAILPOINTS=point)
    assert sender.wait_exit(60) == -9  # died at the fail point (SIGKILL)
    sender.start()
    wait_until(lambda: delivered(fed, "310000", 20), 60, "delivery after restart")
    sender.terminate()
    receiver.terminate()
    assert_exactly_once(fed, "310000", "320000", ids)


def test_receiver_killed_mid_stream(federation: MakeFed) -> None:
    fed = federation()
    n = 300
    ids = enqueue(fed.config("310000"), "320000", n)
    # First crash: right after committing a message, before its receipt goes back.
    receiver = fed.node("320000").start(CCCFED_FAILPOINTS="after_receive_commit=100")
    sender = fed.node("310000").start()
    assert receiver.wait_exit(60) == -9
    # Second crash: SIGKILL at a random moment while the stream continues.
    receiver.start()
    time.sleep(random.uniform(0.05, 0.5))
    receiver.kill()
    receiver.start()
    wait_until(lambda: delivered(fed, "310000", n), 120, "all messages delivered")
    sender.terminate()
    receiver.terminate()
    assert_exactly_once(fed, "310000", "320000", ids)


def test_recipient_down_then_back_and_permanent_rejection_does_not_block(
    federation: MakeFed,
) -> None:
    fed = federation()
    sender = fed.node("310000").start()
    ids = enqueue(fed.config("310000"), "320000", 20)
    # A Ping sent on the assistance service is refused for good (UNSUPPORTED_KIND).
    [bad] = enqueue(fed.config("310000"), "320000", 1, service="assistance")
    wait_until(lambda: fed.outbox_states("310000").get("retry", 0) >= 1, 30, "messages waiting")
    assert fed.outbox_states("310000").get("delivered", 0) == 0  # nothing got through
    receiver = fed.node("320000").start()
    wait_until(lambda: delivered(fed, "310000", 20), 60, "drain after the recipient returns")
    wait_until(lambda: fed.outbox_states("310000").get("failed", 0) == 1, 30, "permanent failure")
    rows = {r.message_id: r for r in fed.outbox_rows("310000")}
    assert rows[bad].state == "failed"
    assert rows[bad].fail_reason == "UNSUPPORTED_KIND"
    assert "not carried by this service" in rows[bad].last_error
    sender.terminate()
    receiver.terminate()
    assert_exactly_once(fed, "310000", "320000", ids)


def test_two_replicas_on_one_postgresql_database_send_each_message_once(
    federation: MakeFed, pg_schema: str
) -> None:
    fed = federation()
    base = fed.config("310000")
    text = base.read_text()
    store_line = next(line for line in text.splitlines() if line.startswith("store_url"))
    from node.local import free_ports

    configs = []
    for name, port in zip(("a", "b"), free_ports(2), strict=True):
        cfg = base.with_name(f"replica-{name}.toml")
        body = text.replace(store_line, f'store_url = "{pg_schema}"\nreplica = "replica-{name}"')
        listen = next(line for line in body.splitlines() if line.startswith("listen"))
        body = body.replace(listen, f'listen = "127.0.0.1:{port}"')
        body = body.replace("[delivery]\n", "[delivery]\nconcurrency = 4\n")
        cfg.write_text(body)
        configs.append(cfg)
    receiver = fed.node("320000").start()
    reps = [fed.node("310000", cfg).start() for cfg in configs]
    n = 300
    ids: list[str] = []
    for _ in range(3):
        ids += enqueue(configs[0], "320000", n // 3)
    wait_until(lambda: delivered(fed, "310000", n, configs[0]), 120, "both replicas drain")
    for r in reps:
        assert r.terminate() == 0
    receiver.terminate()
    rows = fed.outbox_rows("310000", configs[0])
    assert all(r.attempts == 1 for r in rows), "a row was claimed twice"
    by = Counter(r.claimed_by for r in rows)
    assert set(by) == {"replica-a", "replica-b"}, by
    assert_exactly_once(fed, "310000", "320000", ids, sender_config=configs[0])
