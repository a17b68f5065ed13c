"""Reconciliation benchmark: one-round frontier reconciliation vs a naive full transfer.

Run with ``python bench/reconcile.py [--memory | --store] [--n N] [--d D]`` (defaults:
``--memory``, n = 1,000,000, d = 10; ``--n 100000`` for a quick run). Not part of ``make test``; a
``make bench-reconcile`` target would run exactly this command.

**Store mode** (``--store``; not the default because filling two stores with a million ~2.6 KB
records takes about 250 s and 5 GB of disk, against 25 s at n = 100,000): two real node stores
(SQLite files in a temporary directory; a two-member federation made by
:func:`node.pki.init_federation`, each member a
:class:`node.runtime.Node` that starts no server) hold the same origin log of n synthetic
inspection results; the lagging one misses the last d. The stores are filled by bulk inserts
(not measured): the rows are exactly those the publish path writes (canonical record bytes,
leaf hashes, the completed subtree hashes :meth:`federation.merkle.CompactRange.append`
returns), but only the two checkpoints used are signed (the origin's at n − d and n). Measured:

* **one round**: :meth:`Recognition.request` on the lagging store → serialized bytes →
  :meth:`Recognition.answer` on the origin store → serialized bytes →
  :meth:`Recognition.apply_answer` on the lagging store (signature, consistency proof, entries
  hashed against the signed root, stored, cosigned) — the real code paths of ``Reconcile``;
* **naive**: every entry read from the origin store, sent in messages of at most 4 MiB (each one
  round trip), and re-verified: the checkpoint signature checked, the root of all n leaves
  recomputed from the entry bytes and compared with it.

**Memory mode** (``--memory``, the default, with ``--entry-bytes``): both sides use **pure
in-memory structures** (:class:`federation.merkle.MemoryTree` for the answering
side, a :class:`~federation.merkle.CompactRange` frontier for the caller), not SQLite stores:
the same comparison without SQLite, a few seconds faster to set up. The messages
are the real protobuf messages of the ``Reconcile`` RPC, and the code paths the node's
:meth:`node.recognition.Recognition.answer` / ``accept_note`` use:

* **one round**: the caller sends its frontier (:class:`ReconcileRequest`); the answerer plans
  with :func:`federation.reconcile.plan`, proves with
  :func:`federation.merkle.consistency_proof_from` and sends its signed checkpoint with the d
  missing entries (:class:`ReconcileResponse`); the caller checks them with
  :func:`federation.reconcile.verify_pulled` (d leaf hashes + O(log n) proof hashes).
* **naive**: the answerer sends every entry (in messages of at most 4 MiB, the default
  ``max_message_bytes``, each one round trip) with its checkpoint; the caller re-hashes all n
  leaves, recomputes the root and compares it with the checkpoint's.

Checkpoint signatures are made once (setup) and verified by neither side here: both methods
verify exactly one, so it changes neither ratio. Measured: bytes on the wire (serialized request
and response sizes), round trips, wall time; goals: at most 32 KB and 2 round trips for d = 10,
and at least 100× less wall time than naive.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import tempfile
import time
import tomllib
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import insert, select
from sqlalchemy.engine import Connection

from cccfed.v1 import recognition_pb2 as pb
from federation import inspection
from federation.checkpoint import make_checkpoint, parse_checkpoint, verify_checkpoint
from federation.crypto import Signer
from federation.merkle import CompactRange, MemoryTree, consistency_proof_from, leaf_hash
from federation.periods import shanghai_date
from federation.reconcile import ActionKind, plan, verify_pulled
from federation.uscc import make_uscc
from node import pki
from node.config import load_config
from node.local import free_ports
from node.recognition import CHECKPOINTS, ENTRIES, NODES, frontiers
from node.runtime import Node

T = TypeVar("T")

ORIGIN = "310000"
#: The lagging member of the store mode (the witness that catches up).
LAGGING = "320000"
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "inspection-result.toml"
#: Rows per ``executemany`` batch when filling a store.
FILL_BATCH = 50_000
#: The default ``[limits] max_message_bytes``: the naive transfer needs one call per message.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
GOAL_BYTES = 32 * 1024
GOAL_ROUND_TRIPS = 2
GOAL_SPEEDUP = 100.0


def entry(i: int, size: int) -> bytes:
    """Synthetic result ``i``: deterministic, distinct, ``size`` bytes."""
    seed = hashlib.sha256(i.to_bytes(8, "big")).digest()
    return (seed * (size // 32 + 1))[:size]


@dataclass(frozen=True)
class Replicas:
    """The answerer's full log, the caller's frontier d entries short, the signed checkpoint."""

    full: MemoryTree
    short: CompactRange
    short_root: bytes
    signed: bytes
    n: int
    d: int
    entry_bytes: int


def setup(n: int, d: int, entry_bytes: int) -> Replicas:
    """Build both replicas (not measured)."""
    full = MemoryTree()
    short = CompactRange()
    for i in range(n):
        if i == n - d:
            short = full.frontier
        full.append(leaf_hash(entry(i, entry_bytes)))
    if d == 0:
        short = full.frontier
    signer = Signer(ec.generate_private_key(ec.SECP256R1()), hashlib.sha256(b"bench").hexdigest())
    signed = make_checkpoint(signer, ORIGIN, n, full.root(), now=datetime.now(UTC))
    return Replicas(full, short, short.root(), signed, n, d, entry_bytes)


@dataclass(frozen=True)
class Measured:
    wire_bytes: int
    round_trips: int
    seconds: float


def one_round(r: Replicas) -> Measured:
    """Frontier exchange plus the proven pull of what is missing, as the node does it."""
    t0 = time.perf_counter()
    req = pb.ReconcileRequest(
        frontiers=[pb.LogFrontier(origin=ORIGIN, size=r.short.size, root=r.short_root)]
    ).SerializeToString()
    # --- answerer
    got = pb.ReconcileRequest.FromString(req)
    theirs = {f.origin: (int(f.size), bytes(f.root)) for f in got.frontiers}
    resp = pb.ReconcileResponse()
    for action in plan({ORIGIN: (r.n, r.full.root())}, theirs):
        note = pb.CheckpointNote(signed_checkpoint=r.signed, old_size=action.their_size)
        if action.kind is ActionKind.BEHIND:
            lo, hi = action.their_size, action.my_size
            note.entries.extend(entry(i, r.entry_bytes) for i in range(lo, hi))
            note.consistency_proof.extend(consistency_proof_from(r.full.hash_range, lo, hi))
        resp.updates.append(note)
    answer = resp.SerializeToString()
    # --- caller
    for note in pb.ReconcileResponse.FromString(answer).updates:
        cp = parse_checkpoint(bytes(note.signed_checkpoint)).checkpoint
        pulled = verify_pulled(
            [bytes(e) for e in note.entries],
            r.short.copy(),
            r.short_root,
            cp,
            [bytes(h) for h in note.consistency_proof],
        )
        assert pulled.frontier.root() == cp.root
    return Measured(len(req) + len(answer), 1, time.perf_counter() - t0)


def _chunks(r: Replicas) -> Iterator[bytes]:
    """The naive answer: every entry, in messages that fit ``MAX_MESSAGE_BYTES``."""
    note = pb.CheckpointNote(signed_checkpoint=r.signed, old_size=0)
    size = note.ByteSize()
    for i in range(r.n):
        e = entry(i, r.entry_bytes)
        if size + len(e) + 6 > MAX_MESSAGE_BYTES:
            yield pb.ReconcileResponse(updates=[note]).SerializeToString()
            note = pb.CheckpointNote(signed_checkpoint=r.signed, old_size=i)
            size = note.ByteSize()
        note.entries.append(e)
        size += len(e) + 6
    yield pb.ReconcileResponse(updates=[note]).SerializeToString()


def naive(r: Replicas) -> Measured:
    """Transfer every entry and re-verify the whole set against the checkpoint."""
    t0 = time.perf_counter()
    req = pb.ReconcileRequest(
        frontiers=[pb.LogFrontier(origin=ORIGIN, size=0, root=CompactRange().root())]
    ).SerializeToString()
    wire, trips = 0, 0
    frontier = CompactRange()
    cp = parse_checkpoint(r.signed).checkpoint
    for raw in _chunks(r):
        wire += len(req) + len(raw)
        trips += 1
        for note in pb.ReconcileResponse.FromString(raw).updates:
            for e in note.entries:
                frontier.append(leaf_hash(bytes(e)))
    if frontier.size != cp.size or frontier.root() != cp.root:
        raise AssertionError("naive transfer does not match the checkpoint")
    return Measured(wire, trips, time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# Store mode: two real node stores


#: Placeholders replaced in the template record's canonical bytes (same length as the values).
_RID = "00000000-0000-4000-8000-00000000b0b0"
_USCC = make_uscc("91310000B0B0B0B0B")


@dataclass(frozen=True)
class Synthetic:
    """Synthetic result ``i`` of the origin: what ``publish`` would store for it."""

    data: bytes
    record_id: str
    business_key: str
    kind: str


class Records:
    """Distinct canonical inspection results of ``ORIGIN``, made fast from one template.

    The example record is parsed once with placeholder ``record_id`` and holder USCC; record
    ``i`` is its canonical bytes with both replaced (a uuid5 and a valid USCC numbered ``i``):
    same length and key order, so the bytes are exactly the canonical form of the record
    :func:`record_data` describes (the smoke test publishes some through the real path).
    """

    def __init__(self) -> None:
        template = inspection.parse_result(record_data(-1), today=shanghai_date(datetime.now(UTC)))
        raw = template.to_canonical_bytes()
        self.parts = raw.split(_RID.encode())
        assert len(self.parts) == 2 and raw.count(_USCC.encode()) == 1
        self.key = str(template.business_key)
        self.kind = template.kind.value

    def __call__(self, i: int) -> Synthetic:
        rid, uscc = record_id(i), holder_uscc(i)
        data = self.parts[0] + rid.encode() + self.parts[1]
        data = data.replace(_USCC.encode(), uscc.encode(), 1)
        return Synthetic(data, rid, self.key.replace(_USCC, uscc, 1), self.kind)


def record_id(i: int) -> str:
    return _RID if i < 0 else str(uuid.uuid5(uuid.NAMESPACE_URL, f"cccfed-bench/{i}"))


def holder_uscc(i: int) -> str:
    return _USCC if i < 0 else make_uscc(f"91310000{i:09d}")


def record_data(i: int) -> dict[str, Any]:
    """The example record as a ``result publish`` file, numbered ``i`` (-1: the template)."""
    data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
    data["record_id"] = record_id(i)
    data["holder"]["uscc"] = holder_uscc(i)
    return data


def node_at(fed_root: Path, code: str, store: Path) -> Node:
    """Member ``code`` of the federation in ``fed_root`` on the SQLite file ``store``."""
    cfg = dataclasses.replace(
        load_config(fed_root / "nodes" / code / "node.toml"), store_url=f"sqlite:///{store}"
    )
    return Node(cfg)


def make_nodes(workdir: Path) -> tuple[Node, Node]:
    """The origin and the lagging member, each on an empty store in ``workdir``."""
    root = workdir / "fed"
    codes = [ORIGIN, LAGGING]
    pki.init_federation(root, codes, ports=dict(zip(codes, free_ports(2), strict=True)))
    return node_at(root, ORIGIN, workdir / "origin.db"), node_at(root, LAGGING, workdir / "lag.db")


def read(node: Node, job: Callable[[Connection], T]) -> T:
    with node.reader.connect() as conn:
        return job(conn)


def write(node: Node, job: Callable[[Connection], T]) -> T:
    """One write transaction on the node's writer (queued messages stay queued)."""
    return asyncio.run(node.run_and_send(job))


def fill(origin: Node, lagging: Node, n: int, d: int) -> None:
    """Bulk-insert the origin's log: all n entries at the origin, the first n − d at the lagging
    member, each with the subtree hashes completed within its part and its signed checkpoint."""
    records = Records()
    frontier = CompactRange()
    now = origin.clock()
    cut_root = frontier.root()
    with origin.engine.begin() as oc, lagging.engine.begin() as lc:
        for lo in range(0, n, FILL_BATCH):
            entries: list[dict[str, Any]] = []
            nodes: list[dict[str, Any]] = []
            lag_entries = lag_nodes = 0
            for i in range(lo, min(n, lo + FILL_BATCH)):
                rec = records(i)
                lh = leaf_hash(rec.data)
                entries.append(
                    {
                        "origin": ORIGIN,
                        "idx": i,
                        "leaf_hash": lh,
                        "data": rec.data,
                        "record_id": rec.record_id,
                        "business_key": rec.business_key,
                        "supersedes": None,
                        "kind": rec.kind,
                        "stored_at": now,
                    }
                )
                nodes.extend(
                    {"origin": ORIGIN, "level": x.level, "idx": x.index, "hash": x.hash}
                    for x in frontier.append(lh)
                )
                if i < n - d:
                    lag_entries, lag_nodes = len(entries), len(nodes)
                if frontier.size == n - d:
                    cut_root = frontier.root()
            oc.execute(insert(ENTRIES), entries)
            oc.execute(insert(NODES), nodes)
            if lag_entries:
                lc.execute(insert(ENTRIES), entries[:lag_entries])
            if lag_nodes:
                lc.execute(insert(NODES), nodes[:lag_nodes])
        signer = origin.signer
        cut = make_checkpoint(signer, ORIGIN, n - d, cut_root, now=now)
        head = make_checkpoint(signer, ORIGIN, n, frontier.root(), now=now)
        rows = [(n - d, cut_root, cut), (n, frontier.root(), head)]
        for size, root, signed in rows if d else rows[1:]:
            oc.execute(
                insert(CHECKPOINTS).values(
                    origin=ORIGIN, size=size, root=root, signed=signed, stored_at=now
                )
            )
        if n - d:
            lc.execute(
                insert(CHECKPOINTS).values(
                    origin=ORIGIN, size=n - d, root=cut_root, signed=cut, stored_at=now
                )
            )


def store_one_round(origin: Node, lagging: Node) -> tuple[Measured, list[dict[str, Any]]]:
    """One ``Reconcile`` round through the real store code paths; returns the lines applied."""
    t0 = time.perf_counter()
    mine, req = read(
        lagging, lambda c: (frontiers(c), lagging.recognition.request(c).SerializeToString())
    )
    answer = read(origin, lambda c: origin.recognition.answer(c, req))
    lines = write(lagging, lambda c: lagging.recognition.apply_answer(c, ORIGIN, answer, mine))
    return Measured(len(req) + len(answer), 1, time.perf_counter() - t0), lines


def store_naive(origin: Node, lagging: Node) -> Measured:
    """Every entry read from the origin store, sent in 4 MiB messages, re-verified in full."""
    t0 = time.perf_counter()
    req = pb.ReconcileRequest(
        frontiers=[pb.LogFrontier(origin=ORIGIN, size=0, root=CompactRange().root())]
    ).SerializeToString()
    wire, trips = 0, 0
    frontier = CompactRange()
    tm = lagging.trust.current
    cp = None
    for raw in read(origin, lambda c: list(_store_chunks(c))):
        wire += len(req) + len(raw)
        trips += 1
        for note in pb.ReconcileResponse.FromString(raw).updates:
            if cp is None:
                signed = parse_checkpoint(bytes(note.signed_checkpoint))
                cp = verify_checkpoint(signed, tm, at=lagging.clock())
            for e in note.entries:
                frontier.append(leaf_hash(bytes(e)))
    if cp is None or frontier.size != cp.size or frontier.root() != cp.root:
        raise AssertionError("naive transfer does not match the checkpoint")
    return Measured(wire, trips, time.perf_counter() - t0)


def _store_chunks(conn: Connection) -> Iterator[bytes]:
    """The naive answer from the store: the latest checkpoint with every entry, in messages
    that fit ``MAX_MESSAGE_BYTES``."""
    head = conn.execute(
        select(CHECKPOINTS.c.signed)
        .where(CHECKPOINTS.c.origin == ORIGIN)
        .order_by(CHECKPOINTS.c.size.desc())
        .limit(1)
    ).scalar_one()
    note = pb.CheckpointNote(signed_checkpoint=head, old_size=0)
    size, i = note.ByteSize(), 0
    with conn.execute(
        select(ENTRIES.c.data)
        .where(ENTRIES.c.origin == ORIGIN)
        .order_by(ENTRIES.c.idx)
        .execution_options(yield_per=4096)
    ) as rows:
        for (e,) in rows:
            if size + len(e) + 6 > MAX_MESSAGE_BYTES:
                yield pb.ReconcileResponse(updates=[note]).SerializeToString()
                note = pb.CheckpointNote(signed_checkpoint=head, old_size=i)
                size = note.ByteSize()
            note.entries.append(bytes(e))
            size += len(e) + 6
            i += 1
    yield pb.ReconcileResponse(updates=[note]).SerializeToString()


def run_store(n: int, d: int) -> tuple[Measured, Measured]:
    with tempfile.TemporaryDirectory(prefix="cccfed-bench-") as tmp:
        origin, lagging = make_nodes(Path(tmp))
        try:
            t0 = time.perf_counter()
            fill(origin, lagging, n, d)
            print(f"fill (not measured): {time.perf_counter() - t0:.1f} s")
            fast, lines = store_one_round(origin, lagging)
            after = read(lagging, frontiers)[ORIGIN]
            if after != read(origin, frontiers)[ORIGIN]:
                raise AssertionError(f"lagging store did not catch up: {lines}")
            slow = store_naive(origin, lagging)
            return fast, slow
        finally:
            origin.close()
            lagging.close()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1_000_000, help="entries in the origin's log")
    ap.add_argument("--d", type=int, default=10, help="entries the caller misses")
    ap.add_argument(
        "--entry-bytes", type=int, default=256, help="bytes per synthetic entry (--memory)"
    )
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--store", dest="store", action="store_true", default=False, help="two real node stores"
    )
    mode.add_argument(
        "--memory", dest="store", action="store_false", help="in-memory structures (default)"
    )
    args = ap.parse_args(argv)
    if not 0 <= args.d <= args.n or args.n < 1:
        ap.error("need n >= 1 and 0 <= d <= n")
    if args.store:
        print(
            f"reconcile bench: n={args.n:,} d={args.d} synthetic inspection results; "
            "two SQLite node stores, real Recognition.request / answer / apply_answer"
        )
        fast, slow = run_store(args.n, args.d)
    else:
        print(
            f"reconcile bench: n={args.n:,} d={args.d} entries of {args.entry_bytes} B; "
            "in-memory structures (MemoryTree / CompactRange), real protobuf messages"
        )
        t0 = time.perf_counter()
        r = setup(args.n, args.d, args.entry_bytes)
        print(f"setup (not measured): {time.perf_counter() - t0:.1f} s")
        fast = min((one_round(r) for _ in range(5)), key=lambda m: m.seconds)
        slow = naive(r)
    print(f"{'method':<10} {'wire bytes':>14} {'round trips':>12} {'wall time':>12}")
    for name, m in (("one round", fast), ("naive", slow)):
        print(f"{name:<10} {m.wire_bytes:>14,} {m.round_trips:>12} {m.seconds * 1000:>10.2f} ms")
    bytes_ratio = slow.wire_bytes / fast.wire_bytes
    time_ratio = slow.seconds / fast.seconds
    print(f"ratios (naive / one round): bytes {bytes_ratio:,.0f}×, wall time {time_ratio:,.0f}×")
    goals = {
        f"wire bytes <= {GOAL_BYTES:,}": fast.wire_bytes <= GOAL_BYTES,
        f"round trips <= {GOAL_ROUND_TRIPS}": fast.round_trips <= GOAL_ROUND_TRIPS,
        f"wall time >= {GOAL_SPEEDUP:.0f}x less than naive": time_ratio >= GOAL_SPEEDUP,
    }
    for goal, ok in goals.items():
        print(f"goal {goal}: {'met' if ok else 'MISSED'}")
    return 0 if all(goals.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
