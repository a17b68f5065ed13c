"""Reconciliation benchmark: one-round frontier reconciliation vs a naive full transfer.

Run with ``python bench/reconcile.py [--n N] [--d D] [--entry-bytes B]`` (defaults: n =
1,000,000, d = 10, 256-byte entries; ``--n 100000`` for a quick run). Not part of ``make test``;
a ``make bench-reconcile`` target would run exactly this command.

Two replicas hold the same origin log of n synthetic results; one misses the last d. Both sides
use **pure in-memory structures** (:class:`federation.merkle.MemoryTree` for the answering
side, a :class:`~federation.merkle.CompactRange` frontier for the caller), not SQLite stores:
filling a store with a million published records (each signed) would take far longer than the
measurement itself, and the store adds the same O(log n) lookups to both methods. The messages
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
import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography.hazmat.primitives.asymmetric import ec

from cccfed.v1 import recognition_pb2 as pb
from federation.checkpoint import make_checkpoint, parse_checkpoint
from federation.crypto import Signer
from federation.merkle import CompactRange, MemoryTree, consistency_proof_from, leaf_hash
from federation.reconcile import ActionKind, plan, verify_pulled

ORIGIN = "310000"
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--n", type=int, default=1_000_000, help="entries in the origin's log")
    ap.add_argument("--d", type=int, default=10, help="entries the caller misses")
    ap.add_argument("--entry-bytes", type=int, default=256, help="bytes per synthetic entry")
    args = ap.parse_args(argv)
    if not 0 <= args.d <= args.n or args.n < 1:
        ap.error("need n >= 1 and 0 <= d <= n")
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
