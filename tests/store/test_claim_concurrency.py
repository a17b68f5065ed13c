"""Outbox claims under concurrency: every row is claimed by exactly one worker.

PostgreSQL: two *processes* (replicas of one node sharing one database) claim with
``FOR UPDATE SKIP LOCKED``. SQLite: two threads with their own connections, serialised by
``BEGIN IMMEDIATE``. Each worker marks what it claims as delivered, which also appends to the
shared hash chain, so the log must come out contiguous and linked as well.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from cccfed.v1 import log_pb2
from federation import message_log as mlog
from node.store.db import make_engine, migrate, transaction
from node.store.ops import (
    DELIVERED,
    HEAD,
    LOG,
    OUTBOX,
    outbox_claim,
    outbox_delivered,
    outbox_enqueue,
)

ROWS = 300
BATCH = 5
LEASE = timedelta(minutes=10)
ROOT = Path(__file__).resolve().parents[2]

# One replica: claim batches until nothing is due, marking each batch delivered.
WORKER = r"""
import json, sys
from datetime import datetime, timedelta
from node.store.db import make_engine, transaction
from node.store.ops import outbox_claim, outbox_delivered

url, replica, now_iso, batch = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
now = datetime.fromisoformat(now_iso)
engine = make_engine(url)
with engine.connect():
    pass
print("ready", flush=True)
sys.stdin.readline()
claimed = []
while True:
    with transaction(engine) as s:
        got = outbox_claim(s, replica=replica, now=now, limit=batch, lease=timedelta(minutes=10))
    if not got:
        break
    with transaction(engine) as s:
        for c in got:
            assert outbox_delivered(
                s, row_id=c.id, message_id=c.message_id, recipient=c.recipient_node,
                receipt=b"receipt " + c.message_id.encode(), received_at=now, now=now,
            )
    claimed += [c.id for c in got]
engine.dispose()
print(json.dumps(claimed), flush=True)
"""


def fill_outbox(engine: Engine, now: datetime) -> set[int]:
    ids = set()
    with transaction(engine) as s:
        for i in range(ROWS):
            mid = str(uuid.uuid4())
            ids.add(
                outbox_enqueue(
                    s,
                    b"envelope %d" % i,
                    message_id=mid,
                    recipient_node="320000" if i % 2 else "330000",
                    service="Federation",
                    kind="cccfed.v1.Ping",
                    now=now,
                )
            )
    assert len(ids) == ROWS
    return ids


def check_outcome(engine: Engine, ids: set[int], a: list[int], b: list[int]) -> None:
    assert len(a) == len(set(a)) and len(b) == len(set(b)), "a worker claimed a row twice"
    assert set(a) & set(b) == set(), "rows claimed by both workers"
    assert set(a) | set(b) == ids, "rows never claimed"
    with engine.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.id, OUTBOX.c.state, OUTBOX.c.attempts)).all()
        assert {(r.state, r.attempts) for r in rows} == {(DELIVERED, 1)}
        log = conn.execute(select(LOG.c.seq, LOG.c.record, LOG.c.record_hash).order_by(LOG.c.seq))
        chain = [(int(r.seq), bytes(r.record), bytes(r.record_hash)) for r in log]
        head = conn.execute(select(HEAD.c.seq, HEAD.c.record_hash)).one()
    # One record per enqueue and one per receipt, appended by both workers into one chain.
    assert [seq for seq, _, _ in chain] == list(range(1, 2 * ROWS + 1))
    prev = mlog.GENESIS
    for seq, raw, h in chain:
        rec = log_pb2.LogRecord.FromString(raw)
        assert (rec.seq, rec.prev_hash) == (seq, prev)
        assert mlog.record_hash(raw) == h
        prev = h
    assert (head.seq, bytes(head.record_hash)) == (2 * ROWS, prev)


@pytest.mark.postgres
def test_two_processes_claim_each_row_once(
    pg_schema_factory: Callable[[], tuple[str, str]], now: datetime
) -> None:
    _, url = pg_schema_factory()
    engine = make_engine(url)
    try:
        migrate(engine)
        ids = fill_outbox(engine, now)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, url, f"replica-{n}", now.isoformat(), str(BATCH)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=ROOT,
                env=env,
            )
            for n in (1, 2)
        ]
        try:
            for p in procs:  # both connected before either starts claiming
                assert p.stdout is not None
                assert p.stdout.readline().strip() == "ready", p.communicate(timeout=30)[1]
            for p in procs:
                assert p.stdin is not None
                p.stdin.write("go\n")
                p.stdin.flush()
            outputs = [p.communicate(timeout=60) for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        for p, (_, err) in zip(procs, outputs, strict=True):
            assert p.returncode == 0, err
        a, b = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)
        assert a and b, f"no overlap to test: {len(a)} / {len(b)} rows"
        check_outcome(engine, ids, a, b)
        with engine.connect() as conn:
            by = conn.execute(select(OUTBOX.c.id, OUTBOX.c.claimed_by)).all()
        assert {r.id for r in by if r.claimed_by == "replica-1"} == set(a)
        assert {r.id for r in by if r.claimed_by == "replica-2"} == set(b)
    finally:
        engine.dispose()


def test_two_threads_claim_each_row_once_on_sqlite(tmp_path: Path, now: datetime) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'claims.db'}")
    try:
        migrate(engine)
        ids = fill_outbox(engine, now)
        start = threading.Barrier(2, timeout=30)
        claimed: dict[str, list[int]] = {"t1": [], "t2": []}
        errors: list[BaseException] = []

        def worker(replica: str) -> None:
            try:
                start.wait()
                while True:
                    with transaction(engine) as s:
                        got = outbox_claim(s, replica=replica, now=now, limit=BATCH, lease=LEASE)
                    if not got:
                        return
                    with transaction(engine) as s:
                        for c in got:
                            assert outbox_delivered(
                                s,
                                row_id=c.id,
                                message_id=c.message_id,
                                recipient=c.recipient_node,
                                receipt=b"r",
                                received_at=now,
                                now=now,
                            )
                    claimed[replica] += [c.id for c in got]
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(r,)) for r in claimed]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not any(t.is_alive() for t in threads)
        assert errors == []
        check_outcome(engine, ids, claimed["t1"], claimed["t2"])
    finally:
        engine.dispose()
