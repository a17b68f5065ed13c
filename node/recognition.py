"""Recognition of inspection results on a node: the shell around the witnessed Merkle logs.

The rules are pure and live elsewhere: records in :mod:`federation.inspection`, hashing and
proofs in :mod:`federation.merkle`, signed checkpoints in :mod:`federation.checkpoint`, the
witness state machine in :mod:`federation.witness`, frontier comparison and pull verification in
:mod:`federation.reconcile`. This module stores, sends and answers:

* **Publishing.** ``result publish`` parses a record, appends its canonical bytes to this node's
  own log (``log_entries`` + the completed subtree hashes in ``log_nodes``), signs a new
  checkpoint and queues a :class:`~cccfed.v1.recognition_pb2.CheckpointNote` to every other
  member — all in ONE transaction, so the log, its checkpoint and the notes never disagree.
  Notes of one log travel as one outbox conversation per recipient, hence in order: each starts
  from the previous checkpoint, which is what the recipient accepted last unless it missed a
  note (then it ignores it and catches up by reconciliation, the one catch-up mechanism).
* **Witnessing.** A received note goes through :func:`~federation.witness.witness_update`
  (signature as of now, frozen origin, consistency from the last accepted checkpoint, fork
  evidence) and then :func:`~federation.reconcile.verify_pulled` (the entries hash to the signed
  root), and only then are the entries and the checkpoint stored, in the inbox transaction. The
  witness cosigns and sends its cosignature to the origin and to every other member, so that
  every node can tell who recognises what.
* **Recognition.** A record at index ``i`` of origin ``o`` is recognised by the witnesses that
  cosigned any stored checkpoint of ``o`` covering ``i`` with the root this node holds: a
  witness cosigns only checkpoints that extend what it accepted before, so cosigning a larger
  one vouches for every entry below it. It counts once the quorum (every other member) is
  reached and ``o`` is not frozen.
* **Equivocation.** Two validly signed checkpoints of one origin that cannot both hold are kept
  as evidence (``equivocations``), the origin is frozen (nothing of it is accepted or recognised
  any more), the evidence is queued to every member and the operator is told by an ERROR log.
* **Reconciliation.** :meth:`Recognition.answer` serves the ``Reconcile`` RPC from a read
  transaction; :meth:`Recognition.reconcile` sends our frontiers, and applies every origin's
  answer through the very path a note takes (nothing is trusted because it came back from a
  call: the checkpoint signature and the entries are checked the same way).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from google.protobuf.message import DecodeError
from sqlalchemy import and_, insert, select
from sqlalchemy.engine import Connection

from cccfed.v1 import recognition_pb2 as pb
from federation import inspection
from federation.checkpoint import (
    SignedCheckpoint,
    cosign,
    make_checkpoint,
    parse_checkpoint,
    parse_cosignature,
    verified_cosigners,
    verify_checkpoint,
    verify_cosignature,
)
from federation.errors import FederationError, ValidationError, VerificationError
from federation.merkle import (
    EMPTY_ROOT,
    CompactRange,
    SubtreeNode,
    consistency_proof_from,
    hash_range_from_nodes,
    inclusion_proof_from,
    leaf_hash,
)
from federation.periods import shanghai_date
from federation.reconcile import ActionKind, plan, verify_pulled
from federation.witness import (
    Decision,
    Equivocation,
    Outcome,
    WitnessState,
    accept_evidence,
    default_quorum,
    prefix_proof,
    witness_update,
)
from node.faults import failpoint
from node.logs import message_context
from node.store.models import (
    EquivocationRow,
    LogCheckpointRow,
    LogCosignatureRow,
    LogEntryRow,
    LogNodeRow,
    ResultConflictRow,
)

if TYPE_CHECKING:
    from federation.envelope import Opened
    from node.runtime import Node

log = logging.getLogger(__name__)

ENTRIES = LogEntryRow.__table__  # type: ignore[attr-defined]
NODES = LogNodeRow.__table__  # type: ignore[attr-defined]
CHECKPOINTS = LogCheckpointRow.__table__  # type: ignore[attr-defined]
COSIGNATURES = LogCosignatureRow.__table__  # type: ignore[attr-defined]
EQUIVOCATIONS = EquivocationRow.__table__  # type: ignore[attr-defined]
CONFLICTS = ResultConflictRow.__table__  # type: ignore[attr-defined]

#: Cosignatures on a checkpoint this node stored (same origin, size and root): only these count
#: towards recognition.
STORED_COSIGNATURES = COSIGNATURES.join(
    CHECKPOINTS,
    and_(
        CHECKPOINTS.c.origin == COSIGNATURES.c.origin,
        CHECKPOINTS.c.size == COSIGNATURES.c.size,
        CHECKPOINTS.c.root == COSIGNATURES.c.root,
    ),
)

SERVICE: Final = "recognition"
NOTE_KIND: Final = "cccfed.v1.CheckpointNote"
COSIGNATURE_KIND: Final = "cccfed.v1.CheckpointCosignature"
EVIDENCE_KIND: Final = "cccfed.v1.EquivocationEvidence"

#: Bytes kept free in a ``Reconcile`` answer beyond what is counted (framing of the response).
ANSWER_SLACK: Final = 1024
#: Upper bound of the protobuf framing of one note in an answer (tag + length varint).
NOTE_FRAMING: Final = 8
#: Upper bound of the protobuf framing of one entry in a note.
ENTRY_FRAMING: Final = 6
#: Requests for one peer within one ``reconcile`` call when answers are capped (a safety net:
#: every capped answer makes progress or the loop stops anyway).
MAX_CAPPED_ROUNDS: Final = 10_000

#: Result statuses shown by ``result list``.
STATUSES: Final = ("recognized", "pending", "conflict", "frozen")


# --------------------------------------------------------------------------------------------
# Log storage


def _lookup(conn: Connection, origin: str) -> Any:
    """``get_node(level, index)`` over ``log_nodes`` of ``origin`` (for proofs and frontiers)."""

    def get_node(level: int, index: int) -> bytes:
        row = conn.execute(
            select(NODES.c.hash).where(
                NODES.c.origin == origin, NODES.c.level == level, NODES.c.idx == index
            )
        ).first()
        if row is None:
            raise VerificationError(
                f"log of {origin} has no subtree ({level}, {index}) stored", reason="STORE_GAP"
            )
        return bytes(row.hash)

    return get_node


def _hash_range(conn: Connection, origin: str) -> Any:
    get_node = _lookup(conn, origin)
    return lambda lo, hi: hash_range_from_nodes(get_node, lo, hi)


def frontier_of(conn: Connection, origin: str, size: int) -> CompactRange:
    """The compact range of ``origin``'s first ``size`` entries, from the stored subtrees."""
    get_node = _lookup(conn, origin)
    hashes: list[bytes] = []
    pos = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            hashes.append(get_node(level, pos >> level))
            pos += 1 << level
    return CompactRange.from_state(size, hashes)


def _latest(conn: Connection, origin: str) -> Any:
    return conn.execute(
        select(CHECKPOINTS)
        .where(CHECKPOINTS.c.origin == origin)
        .order_by(CHECKPOINTS.c.size.desc())
        .limit(1)
    ).first()


def _checkpoint_at(conn: Connection, origin: str, size: int) -> Any:
    return conn.execute(
        select(CHECKPOINTS).where(CHECKPOINTS.c.origin == origin, CHECKPOINTS.c.size == size)
    ).first()


def frozen_origins(conn: Connection) -> frozenset[str]:
    """Origins caught equivocating: nothing of theirs is accepted or recognised any more."""
    return frozenset(r.origin for r in conn.execute(select(EQUIVOCATIONS.c.origin)).all())


def frontiers(conn: Connection) -> dict[str, tuple[int, bytes]]:
    """``{origin: (size, root)}`` of the latest checkpoint held for every log, ours included."""
    out: dict[str, tuple[int, bytes]] = {}
    for row in conn.execute(select(CHECKPOINTS.c.origin, CHECKPOINTS.c.size, CHECKPOINTS.c.root)):
        if row.origin not in out or row.size > out[row.origin][0]:
            out[row.origin] = (int(row.size), bytes(row.root))
    return out


def _witness_state(conn: Connection, self_code: str) -> WitnessState:
    latest: dict[str, bytes] = {}
    for origin in frontiers(conn):
        if origin != self_code:
            latest[origin] = bytes(_latest(conn, origin).signed)
    evidence = tuple(
        Equivocation.from_bytes(bytes(r.evidence))
        for r in conn.execute(select(EQUIVOCATIONS.c.evidence).order_by(EQUIVOCATIONS.c.id))
    )
    return WitnessState(latest=latest, frozen=frozen_origins(conn), evidence=evidence)


def _chain(record: str, supersedes: Mapping[str, str | None]) -> set[str]:
    """Every record that ``record`` corrects, directly or through earlier corrections."""
    seen: set[str] = set()
    current = supersedes.get(record)
    while current is not None and current not in seen:
        seen.add(current)
        current = supersedes.get(current)
    return seen


def _flag_conflicts(conn: Connection, key: str, now: datetime) -> None:
    """Flag pairs of records of one business key where neither corrects the other."""
    rows = conn.execute(
        select(ENTRIES.c.record_id, ENTRIES.c.supersedes).where(ENTRIES.c.business_key == key)
    ).all()
    supersedes = {r.record_id: r.supersedes for r in rows}
    ids = sorted(supersedes)
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            if a in _chain(b, supersedes) or b in _chain(a, supersedes):
                continue
            held = conn.execute(
                select(CONFLICTS.c.id).where(CONFLICTS.c.record_a == a, CONFLICTS.c.record_b == b)
            ).first()
            if held is None:
                conn.execute(
                    insert(CONFLICTS).values(
                        business_key=key, record_a=a, record_b=b, flagged_at=now
                    )
                )
                log.warning("records %s and %s of %s conflict (neither supersedes)", a, b, key)


def _store_entries(
    conn: Connection,
    origin: str,
    start: int,
    entries: Sequence[bytes],
    hashes: Sequence[bytes],
    nodes: Iterable[SubtreeNode],
    now: datetime,
) -> None:
    """Store entries ``[start, start + len)`` of ``origin``'s log with their subtree hashes.

    Each entry must be a record of the origin's own province in canonical form: the origin
    signed it, but a log of unreadable or foreign records is refused whole rather than stored
    half (``ENTRY_MALFORMED``, ``ENTRY_WRONG_ORIGIN``).
    """
    keys: set[str] = set()
    for offset, (data, lh) in enumerate(zip(entries, hashes, strict=True)):
        try:
            record = inspection.from_canonical_bytes(data)
        except FederationError as e:
            raise VerificationError(
                f"entry {start + offset} of {origin} is not a canonical inspection result: {e}",
                reason="ENTRY_MALFORMED",
            ) from e
        if record.inspecting_node != origin:
            raise VerificationError(
                f"entry {start + offset} of {origin}'s log is a record of {record.inspecting_node}",
                reason="ENTRY_WRONG_ORIGIN",
            )
        key = str(record.business_key)
        keys.add(key)
        conn.execute(
            insert(ENTRIES).values(
                origin=origin,
                idx=start + offset,
                leaf_hash=lh,
                data=data,
                record_id=record.record_id,
                business_key=key,
                supersedes=record.supersedes,
                kind=record.kind.value,
                stored_at=now,
            )
        )
    node_rows = [
        {"origin": origin, "level": n.level, "idx": n.index, "hash": n.hash} for n in nodes
    ]
    if node_rows:
        conn.execute(insert(NODES), node_rows)
    for key in sorted(keys):
        _flag_conflicts(conn, key, now)


def _store_pulled(
    conn: Connection,
    signed: SignedCheckpoint,
    note: pb.CheckpointNote,
    my_size: int,
    my_root: bytes,
    now: datetime,
) -> int:
    """Verify the note's entries from ``my_size`` against its signed checkpoint, then store the
    entries, their subtree hashes and the checkpoint; returns how many entries were stored."""
    cp = signed.checkpoint
    entries = [bytes(e) for e in note.entries]
    verified = verify_pulled(
        entries,
        frontier_of(conn, cp.origin, my_size),
        my_root,
        cp,
        _proof_list(note.consistency_proof),
    )
    _store_entries(conn, cp.origin, my_size, entries, verified.leaf_hashes, verified.nodes, now)
    conn.execute(
        insert(CHECKPOINTS).values(
            origin=cp.origin,
            size=cp.size,
            root=cp.root,
            signed=signed.to_bytes(cosignatures=False),
            stored_at=now,
        )
    )
    return len(entries)


def _signed_with_cosignatures(conn: Connection, row: Any) -> bytes:
    """A stored checkpoint with every cosignature held for its exact root."""
    signed = parse_checkpoint(bytes(row.signed))
    lines = conn.execute(
        select(COSIGNATURES.c.line).where(
            COSIGNATURES.c.origin == row.origin,
            COSIGNATURES.c.size == row.size,
            COSIGNATURES.c.root == row.root,
        )
    ).all()
    return signed.with_cosignatures(parse_cosignature(bytes(r.line)) for r in lines).to_bytes()


def _proof_list(values: Iterable[bytes]) -> list[bytes]:
    return [bytes(v) for v in values]


@dataclass(frozen=True)
class _CatchUp:
    """One capped catch-up note and how many entries it carries."""

    note: pb.CheckpointNote
    entries_sent: int


def _merge(before: dict[str, Any] | None, after: dict[str, Any]) -> dict[str, Any]:
    """One origin's line over the rounds of a capped reconciliation: pulls add up."""
    if before is None or before["status"] != "behind":
        return after
    if after["status"] == "behind":
        count = before["count"] + after["count"]
        return dict(after, count=count, pulled=count)
    if after["status"] == "converged":
        return before
    return after


# --------------------------------------------------------------------------------------------
# The capability


class Recognition:
    """Publishing, witnessing, recognition and reconciliation of inspection results."""

    def __init__(self, node: Node) -> None:
        self.node = node
        #: peer -> when the last reconciliation round with it completed (for metrics)
        self.last_reconciled: dict[str, datetime] = {}
        node.registry.register(SERVICE, NOTE_KIND, self._on_note)
        node.registry.register(SERVICE, COSIGNATURE_KIND, self._on_cosignature)
        node.registry.register(SERVICE, EVIDENCE_KIND, self._on_evidence)

    @property
    def code(self) -> str:
        return self.node.code

    def _others(self) -> list[str]:
        return sorted(c for c in self.node.trust.current.members if c != self.code)

    # --- publishing -------------------------------------------------------------------------

    def parse_new(self, data: Mapping[str, Any]) -> inspection.InspectionResult:
        """Validate a record file for publishing by this node (``NOT_OWN_RESULT`` otherwise)."""
        result = inspection.parse_result(data, today=shanghai_date(self.node.clock()))
        if result.inspecting_node != self.code:
            raise ValidationError(
                f"inspecting_bureau {result.inspecting_bureau} is not under this node "
                f"({self.code}); each node publishes only its own province's results",
                reason="NOT_OWN_RESULT",
            )
        return result

    def publish(self, conn: Connection, result: inspection.InspectionResult) -> dict[str, Any]:
        """Append ``result`` to our log, sign the new checkpoint and queue it to every member.

        Refuses a record id already held (``DUPLICATE_RECORD``: corrections are new records)
        and a correction of a record that is not ours (``UNKNOWN_RECORD``).
        """
        now = self.node.clock()
        if (
            conn.execute(
                select(ENTRIES.c.idx).where(ENTRIES.c.record_id == result.record_id)
            ).first()
            is not None
        ):
            raise ValidationError(
                f"record {result.record_id} is already published; a correction is a new record "
                "with its own record_id and supersedes",
                reason="DUPLICATE_RECORD",
            )
        if (
            result.supersedes is not None
            and conn.execute(
                select(ENTRIES.c.idx).where(
                    ENTRIES.c.record_id == result.supersedes, ENTRIES.c.origin == self.code
                )
            ).first()
            is None
        ):
            raise ValidationError(
                f"supersedes {result.supersedes}: no such record of {self.code}",
                reason="UNKNOWN_RECORD",
            )
        latest = _latest(conn, self.code)
        old_size = 0 if latest is None else int(latest.size)
        old_root = EMPTY_ROOT if latest is None else bytes(latest.root)
        frontier = frontier_of(conn, self.code, old_size)
        if frontier.root() != old_root:
            raise VerificationError(
                f"own log of {self.code} does not match its checkpoint", reason="STORE_GAP"
            )
        data = result.to_canonical_bytes()
        lh = leaf_hash(data)
        nodes = frontier.append(lh)
        _store_entries(conn, self.code, old_size, [data], [lh], nodes, now)
        size, root = frontier.size, frontier.root()
        signed = make_checkpoint(self.node.signer, self.code, size, root, now=now)
        conn.execute(
            insert(CHECKPOINTS).values(
                origin=self.code, size=size, root=root, signed=signed, stored_at=now
            )
        )
        hr = _hash_range(conn, self.code)
        note = pb.CheckpointNote(
            signed_checkpoint=signed,
            old_size=old_size,
            entries=[data],
            consistency_proof=consistency_proof_from(hr, old_size, size),
            prefix_proof=self._prefix(hr, old_size, size),
        )
        for member in self._others():
            self.node.enqueue_in(
                conn, member, SERVICE, note, correlation_id=f"log/{self.code}", claim=True
            )
        return {"record_id": result.record_id, "origin": self.code, "index": old_size, "size": size}

    @staticmethod
    def _prefix(hr: Any, old: int, new: int) -> list[bytes]:
        """The prefix proof when it differs from the consistency proof (old a power of two)."""
        if old == 0 or old >= new or old & (old - 1):
            return []
        return prefix_proof(hr, old, new)

    # --- witnessing ---------------------------------------------------------------------------

    def _on_note(self, conn: Connection, opened: Opened, now: datetime) -> None:
        try:
            note = pb.CheckpointNote.FromString(opened.payload)
        except DecodeError as e:
            raise ValidationError("CheckpointNote does not parse", reason="MALFORMED") from e
        with message_context(opened.message_id):
            self.accept_note(conn, note, source=opened.header.sender_node, now=now)

    def accept_note(
        self, conn: Connection, note: pb.CheckpointNote, *, source: str, now: datetime
    ) -> dict[str, Any]:
        """Witness one origin's checkpoint with its entries; returns what happened.

        Raises :class:`VerificationError` (nothing stored) for a refused checkpoint (its
        :func:`witness_update` reason, e.g. ``REVOKED_KEY``, ``CONSISTENCY_PROOF_INVALID``,
        ``ORIGIN_FROZEN``) or entries that do not hash to the signed root (``ENTRY_MISMATCH``).
        An equivocation is not an error: it is stored, frozen and broadcast.
        """
        signed = parse_checkpoint(bytes(note.signed_checkpoint))
        cp = signed.checkpoint
        origin = cp.origin
        origin_only = signed.to_bytes(cosignatures=False)
        if origin == self.code:
            mine = _checkpoint_at(conn, origin, cp.size)
            if mine is not None and bytes(mine.root) == cp.root:
                # Our own log coming back (a reconciliation answer): take its cosignatures.
                self._take_cosignatures(conn, signed, now)
                return {"origin": origin, "status": "own", "size": cp.size}
            return self._own_log_elsewhere(conn, signed, note, source, now)
        latest = _latest(conn, origin)
        my_size = 0 if latest is None else int(latest.size)
        my_root = EMPTY_ROOT if latest is None else bytes(latest.root)
        state = _witness_state(conn, self.code)
        if cp.size < my_size or (cp.size > my_size and note.old_size != my_size):
            return self._out_of_step(conn, state, signed, origin_only, source, my_size, now)
        proof = _proof_list(note.consistency_proof)
        _, decision = witness_update(state, origin_only, proof, self.node.trust.current, at=now)
        if (
            decision.outcome is Outcome.REFUSED
            and decision.reason == "CONSISTENCY_PROOF_INVALID"
            and note.prefix_proof
        ):
            retry = witness_update(
                state, origin_only, _proof_list(note.prefix_proof), self.node.trust.current, at=now
            )
            if retry[1].outcome is Outcome.EQUIVOCATION:
                decision = retry[1]
        return self._act(conn, decision, signed, note, source, my_size, my_root, now)

    def _own_log_elsewhere(
        self,
        conn: Connection,
        signed: SignedCheckpoint,
        note: pb.CheckpointNote,
        source: str,
        now: datetime,
    ) -> dict[str, Any]:
        """A checkpoint of our own log that this store does not hold.

        Signed by one of our listed keys and *beyond* our latest checkpoint, it is what we
        published after the backup this store was restored from: the peers kept it. If the
        note carries the missing entries from our size, they are verified against it like any
        pulled entries and stored, so our log continues where it really stood and the next
        publication cannot fork it. Without them, the line says ``behind`` and nothing is
        stored. At or below our latest size with another root, it is a fork of our own log (a
        stolen key, or a publication made after a restore before reconciling): refused and
        logged at ERROR.
        """
        cp = signed.checkpoint
        verify_checkpoint(signed, self.node.trust.current, at=now)  # our key, listed, valid
        latest = _latest(conn, self.code)
        my_size = 0 if latest is None else int(latest.size)
        my_root = EMPTY_ROOT if latest is None else bytes(latest.root)
        if cp.size <= my_size:
            log.error(
                "a checkpoint of our own log (size %d) with a root we did not sign came from %s",
                cp.size,
                source,
            )
            return {"origin": cp.origin, "status": "refused", "reason": "NOT_OURS"}
        if note.old_size != my_size or len(note.entries) != cp.size - my_size:
            log.warning(
                "our own log is at %d but %s holds our checkpoint at %d (restored from a "
                "backup?): reconcile with it to recover the entries before publishing",
                my_size,
                source,
                cp.size,
            )
            return {"origin": cp.origin, "status": "own_behind", "size": cp.size}
        pulled = _store_pulled(conn, signed, note, my_size, my_root, now)
        self._take_cosignatures(conn, signed, now)
        log.warning(
            "recovered %d entries of our own log (%d to %d) from %s: this store was behind "
            "what we had published (restored from a backup?)",
            pulled,
            my_size,
            cp.size,
            source,
        )
        return {"origin": cp.origin, "status": "accepted", "pulled": pulled, "size": cp.size}

    def _out_of_step(
        self,
        conn: Connection,
        state: WitnessState,
        signed: SignedCheckpoint,
        origin_only: bytes,
        source: str,
        my_size: int,
        now: datetime,
    ) -> dict[str, Any]:
        """A note that does not start where we are: compare it with what we hold at its size.

        An older checkpoint that differs from the one we accepted at that size is still proof
        of a fork; otherwise the note is stale (or we missed one) and reconciliation catches up.
        """
        cp = signed.checkpoint
        held = _checkpoint_at(conn, cp.origin, cp.size)
        if held is not None:
            probe = WitnessState(latest={cp.origin: bytes(held.signed)}, frozen=state.frozen)
            _, decision = witness_update(probe, origin_only, [], self.node.trust.current, at=now)
            if decision.outcome is Outcome.EQUIVOCATION:
                assert decision.evidence is not None
                self._record_equivocation(conn, decision.evidence, source=self.code, now=now)
                return {"origin": cp.origin, "status": "forked", "reason": "EQUIVOCATION"}
            if decision.outcome is Outcome.REFUSED:
                raise VerificationError(decision.message, reason=decision.reason)
            self._take_cosignatures(conn, signed, now)
        else:
            verify_checkpoint(signed, self.node.trust.current, at=now)
        log.info(
            "checkpoint %d of %s from %s does not start at our size %d: left to reconciliation",
            cp.size,
            cp.origin,
            source,
            my_size,
        )
        return {"origin": cp.origin, "status": "out_of_step", "size": my_size}

    def _act(
        self,
        conn: Connection,
        decision: Decision,
        signed: SignedCheckpoint,
        note: pb.CheckpointNote,
        source: str,
        my_size: int,
        my_root: bytes,
        now: datetime,
    ) -> dict[str, Any]:
        cp = signed.checkpoint
        origin = cp.origin
        if decision.outcome is Outcome.REFUSED:
            raise VerificationError(
                f"checkpoint {cp.size} of {origin}: {decision.message}", reason=decision.reason
            )
        if decision.outcome is Outcome.EQUIVOCATION:
            assert decision.evidence is not None
            self._record_equivocation(conn, decision.evidence, source=self.code, now=now)
            return {"origin": origin, "status": "forked", "reason": "EQUIVOCATION"}
        pulled = 0
        if decision.outcome is Outcome.ACCEPTED:
            pulled = _store_pulled(conn, signed, note, my_size, my_root, now)
        elif note.entries and note.old_size < my_size:
            # A stale answer: the same entries came by a note while the answer was on its way.
            # The checkpoint is the one we hold, so there is nothing left to take from it.
            log.info(
                "entries of %s up to %d already held: %s's copy ignored", origin, my_size, source
            )
        elif note.entries:
            raise VerificationError(
                f"{len(note.entries)} entries sent with an unchanged checkpoint of {origin}",
                reason="ENTRY_MISMATCH",
            )
        self._take_cosignatures(conn, signed, now)
        self._cosign(conn, signed, now)
        return {"origin": origin, "status": "accepted", "pulled": pulled, "size": cp.size}

    def _take_cosignatures(self, conn: Connection, signed: SignedCheckpoint, now: datetime) -> None:
        """Store the cosignatures carried by a checkpoint that verify; ignore the others."""
        cp = signed.checkpoint
        good = verified_cosigners(signed, self.node.trust.current, at=now)
        for c in signed.cosignatures:
            if c.witness in good:
                self._store_cosignature(
                    conn, cp.origin, cp.size, cp.root, c.to_line(), c.witness, now
                )

    def _store_cosignature(
        self,
        conn: Connection,
        origin: str,
        size: int,
        root: bytes,
        line: bytes,
        witness: str,
        now: datetime,
    ) -> bool:
        held = conn.execute(
            select(COSIGNATURES.c.root).where(
                COSIGNATURES.c.origin == origin,
                COSIGNATURES.c.size == size,
                COSIGNATURES.c.witness == witness,
            )
        ).first()
        if held is not None:
            return False
        conn.execute(
            insert(COSIGNATURES).values(
                origin=origin, size=size, witness=witness, root=root, line=line, stored_at=now
            )
        )
        return True

    def _cosign(self, conn: Connection, signed: SignedCheckpoint, now: datetime) -> None:
        """Cosign an accepted checkpoint once and tell the origin and every other member."""
        cp = signed.checkpoint
        c = cosign(self.node.signer, self.code, cp, now=now)
        if not self._store_cosignature(
            conn, cp.origin, cp.size, cp.root, c.to_line(), self.code, now
        ):
            return
        msg = pb.CheckpointCosignature(
            signed_checkpoint=signed.to_bytes(cosignatures=False), cosignature=c.to_line()
        )
        for member in self._others():
            self.node.enqueue_in(conn, member, SERVICE, msg, claim=True)

    def _on_cosignature(self, conn: Connection, opened: Opened, now: datetime) -> None:
        """A witness's cosignature: verify it and keep it with the root it covers.

        Refused (nothing stored): a checkpoint or cosignature that does not verify, or a
        cosignature that is not the sender's own (``COSIGNER_MISMATCH``).
        """
        try:
            msg = pb.CheckpointCosignature.FromString(opened.payload)
        except DecodeError as e:
            raise ValidationError("CheckpointCosignature does not parse", reason="MALFORMED") from e
        tm = self.node.trust.current
        signed = parse_checkpoint(bytes(msg.signed_checkpoint))
        cp = verify_checkpoint(signed, tm, at=now)
        witness = verify_cosignature(bytes(msg.cosignature), cp, tm, at=now)
        if witness != opened.header.sender_node:
            raise VerificationError(
                f"cosignature of {witness} sent by {opened.header.sender_node}",
                reason="COSIGNER_MISMATCH",
            )
        held = _checkpoint_at(conn, cp.origin, cp.size)
        if held is not None and bytes(held.root) != cp.root and cp.origin != self.code:
            probe = WitnessState(latest={cp.origin: bytes(held.signed)}, frozen=frozenset())
            _, decision = witness_update(probe, signed.to_bytes(cosignatures=False), [], tm, at=now)
            if decision.outcome is Outcome.EQUIVOCATION and cp.origin not in frozen_origins(conn):
                assert decision.evidence is not None
                with message_context(opened.message_id):
                    self._record_equivocation(conn, decision.evidence, source=self.code, now=now)
            return
        self._store_cosignature(
            conn, cp.origin, cp.size, cp.root, bytes(msg.cosignature), witness, now
        )

    # --- equivocation ---------------------------------------------------------------------------

    def _record_equivocation(
        self, conn: Connection, evidence: Equivocation, *, source: str, now: datetime
    ) -> None:
        """Keep the evidence, freeze its origin and, if we found it, tell every member."""
        if evidence.origin in frozen_origins(conn):
            return
        conn.execute(
            insert(EQUIVOCATIONS).values(
                origin=evidence.origin, evidence=evidence.to_bytes(), source=source, found_at=now
            )
        )
        log.error(
            "EQUIVOCATION: %s signed two conflicting checkpoints (evidence from %s); "
            "recognition of its results is frozen",
            evidence.origin,
            source,
        )
        if source == self.code:
            msg = pb.EquivocationEvidence(evidence=evidence.to_bytes())
            for member in self._others():
                self.node.enqueue_in(conn, member, SERVICE, msg, claim=True)

    def accept_evidence(
        self, conn: Connection, raw: bytes, *, source: str, now: datetime
    ) -> Decision:
        """Evidence found by another member: verify it, keep it, freeze the origin."""
        state = _witness_state(conn, self.code)
        _, decision = accept_evidence(state, raw, self.node.trust.current)
        if decision.outcome is Outcome.EQUIVOCATION:
            assert decision.evidence is not None
            self._record_equivocation(conn, decision.evidence, source=source, now=now)
        elif decision.reason != "ORIGIN_FROZEN":
            raise VerificationError(decision.message, reason=decision.reason)
        return decision

    def _on_evidence(self, conn: Connection, opened: Opened, now: datetime) -> None:
        try:
            msg = pb.EquivocationEvidence.FromString(opened.payload)
        except DecodeError as e:
            raise ValidationError("EquivocationEvidence does not parse", reason="MALFORMED") from e
        with message_context(opened.message_id):
            self.accept_evidence(
                conn, bytes(msg.evidence), source=opened.header.sender_node, now=now
            )

    # --- views ----------------------------------------------------------------------------------

    def _recognizers(self, conn: Connection, origin: str, index: int) -> list[str]:
        """Witnesses that cosigned a stored checkpoint of ``origin`` covering ``index``."""
        rows = conn.execute(
            select(COSIGNATURES.c.witness)
            .select_from(STORED_COSIGNATURES)
            .where(COSIGNATURES.c.origin == origin, COSIGNATURES.c.size > index)
            .distinct()
        ).all()
        return sorted(r.witness for r in rows if r.witness != origin)

    def _summary(self, conn: Connection, row: Any, frozen: frozenset[str]) -> dict[str, Any]:
        record = inspection.from_canonical_bytes(bytes(row.data))
        quorum = default_quorum(self.node.trust.current, row.origin)
        by = self._recognizers(conn, row.origin, int(row.idx))
        conflicts = conn.execute(
            select(CONFLICTS.c.record_a, CONFLICTS.c.record_b).where(
                (CONFLICTS.c.record_a == row.record_id) | (CONFLICTS.c.record_b == row.record_id)
            )
        ).all()
        if row.origin in frozen:
            status = "frozen"
        elif conflicts:
            status = "conflict"
        elif quorum <= set(by):
            status = "recognized"
        else:
            status = "pending"
        return {
            "record_id": row.record_id,
            "origin": row.origin,
            "index": int(row.idx),
            "kind": row.kind,
            "business_key": row.business_key,
            "holder": record.holder.uscc,
            "inspected_on": record.inspected_on.isoformat(),
            "inspecting_bureau": record.inspecting_bureau,
            "supersedes": row.supersedes,
            "status": status,
            "recognized_by": by,
            "quorum": sorted(quorum),
            "conflicts_with": sorted(
                {c.record_a for c in conflicts} | {c.record_b for c in conflicts} - {row.record_id}
            ),
        }

    def results(
        self, conn: Connection, *, origin: str | None = None, status: str | None = None
    ) -> list[dict[str, Any]]:
        """Every record held (ours and witnessed), in (origin, index) order."""
        if status is not None and status not in STATUSES:
            raise ValidationError(
                f"status {status!r} is not one of {', '.join(STATUSES)}", reason="INVALID"
            )
        query = select(ENTRIES).order_by(ENTRIES.c.origin, ENTRIES.c.idx)
        if origin is not None:
            query = query.where(ENTRIES.c.origin == origin)
        frozen = frozen_origins(conn)
        out = [self._summary(conn, row, frozen) for row in conn.execute(query).all()]
        return [r for r in out if status is None or r["status"] == status]

    def show(self, conn: Connection, record_id: str) -> dict[str, Any]:
        """One record with its inclusion proof in the latest checkpoint and who recognised it."""
        row = conn.execute(select(ENTRIES).where(ENTRIES.c.record_id == record_id)).first()
        if row is None:
            raise ValidationError(f"no inspection result {record_id}", reason="NOT_FOUND")
        out = self._summary(conn, row, frozen_origins(conn))
        latest = _latest(conn, row.origin)
        proof = inclusion_proof_from(_hash_range(conn, row.origin), int(row.idx), int(latest.size))
        out["record"] = inspection.from_canonical_bytes(bytes(row.data)).to_dict()
        out["leaf_hash"] = bytes(row.leaf_hash).hex()
        out["inclusion_proof"] = {
            "tree_size": int(latest.size),
            "root": bytes(latest.root).hex(),
            "hashes": [h.hex() for h in proof],
        }
        out["checkpoint"] = _signed_with_cosignatures(conn, latest).decode("utf-8")
        return out

    def checkpoints(self, conn: Connection, origin: str | None = None) -> list[dict[str, Any]]:
        """The latest checkpoint of each log held (or of ``origin``), with its cosigners."""
        frozen = frozen_origins(conn)
        out = []
        for code, (size, root) in sorted(frontiers(conn).items()):
            if origin is not None and code != origin:
                continue
            row = _latest(conn, code)
            signed = _signed_with_cosignatures(conn, row)
            out.append(
                {
                    "origin": code,
                    "size": size,
                    "root": root.hex(),
                    "cosigned_by": sorted(c.witness for c in parse_checkpoint(signed).cosignatures),
                    "frozen": code in frozen,
                    "checkpoint": signed.decode("utf-8"),
                }
            )
        if origin is not None and not out:
            raise ValidationError(f"no checkpoint of {origin} held", reason="NOT_FOUND")
        return out

    # --- reconciliation ---------------------------------------------------------------------

    def request(self, conn: Connection) -> pb.ReconcileRequest:
        """Our frontier of every log, for one reconciliation round."""
        return pb.ReconcileRequest(
            frontiers=[
                pb.LogFrontier(origin=o, size=s, root=r)
                for o, (s, r) in sorted(frontiers(conn).items())
            ]
        )

    def answer(self, conn: Connection, raw: bytes, *, max_bytes: int | None = None) -> bytes:
        """Serve ``Reconcile``: for every log we hold, our checkpoint (with its cosignatures),
        and where the caller is behind, the entries it lacks with a proof from its size.

        The answer must fit ``max_bytes`` (default: our ``[limits] max_message_bytes``, which
        the caller's channel enforces too): a catch-up that does not fit stops at the largest
        stored checkpoint whose entries still fit, or is left out, and its origin is listed in
        ``more`` so that the caller asks again. A checkpoint is needed at the cut because the
        caller verifies entries only against a signed root.

        Refuses a request that does not parse or whose frontiers are not tree heads
        (``MALFORMED``, ``FRONTIER_MALFORMED``).
        """
        try:
            req = pb.ReconcileRequest.FromString(raw)
        except DecodeError as e:
            raise ValidationError("ReconcileRequest does not parse", reason="MALFORMED") from e
        theirs: dict[str, tuple[int, bytes]] = {}
        for f in req.frontiers:
            if f.origin in theirs:
                raise VerificationError(
                    f"two frontiers for {f.origin}", reason="FRONTIER_MALFORMED"
                )
            theirs[f.origin] = (int(f.size), bytes(f.root))
        limit = self.node.cfg.limits.max_message_bytes if max_bytes is None else max_bytes
        resp = pb.ReconcileResponse()
        resp.evidence.extend(
            bytes(r.evidence)
            for r in conn.execute(select(EQUIVOCATIONS.c.evidence).order_by(EQUIVOCATIONS.c.id))
        )
        # Checkpoint-only notes first: they are small and every caller needs them (cosignatures,
        # fork detection); the entries share what is left.
        budget = limit - resp.ByteSize() - ANSWER_SLACK
        mine = frontiers(conn)
        behind = []
        for action in plan(mine, theirs):
            if action.origin not in mine:
                continue
            if action.kind is ActionKind.BEHIND:
                behind.append(action)
                continue
            note = pb.CheckpointNote(
                signed_checkpoint=_signed_with_cosignatures(conn, _latest(conn, action.origin)),
                old_size=action.their_size,
            )
            budget -= note.ByteSize() + NOTE_FRAMING
            resp.updates.append(note)
        for action in behind:
            capped = self._catch_up(conn, action.origin, action.their_size, action.my_size, budget)
            if capped is None or capped.entries_sent < action.my_size - action.their_size:
                resp.more.append(action.origin)
            if capped is not None:
                budget -= capped.note.ByteSize() + NOTE_FRAMING
                resp.updates.append(capped.note)
        return resp.SerializeToString()

    def _catch_up(
        self, conn: Connection, origin: str, lo: int, hi: int, budget: int
    ) -> _CatchUp | None:
        """The note taking a caller from ``lo`` towards ``hi`` within ``budget`` bytes.

        Entries are read in order only as far as they can fit, so a caller far behind costs
        one bounded read, not its whole backlog. ``None``: not even the nearest stored
        checkpoint's entries fit (the caller gets them from a later answer or another peer).
        """
        latest = _latest(conn, origin)
        head = _signed_with_cosignatures(conn, latest)
        # Room for the checkpoint, two proofs of at most 2·log2(hi) hashes, and field framing.
        overhead = len(head) + 2 * (2 * hi.bit_length() + 2) * (32 + 2) + 64
        room = budget - overhead
        data: list[bytes] = []
        with conn.execute(
            select(ENTRIES.c.data)
            .where(ENTRIES.c.origin == origin, ENTRIES.c.idx >= lo, ENTRIES.c.idx < hi)
            .order_by(ENTRIES.c.idx)
            .execution_options(yield_per=256)
        ) as rows:
            for entry in rows:
                cost = len(entry.data) + ENTRY_FRAMING
                if cost > room:
                    break
                room -= cost
                data.append(bytes(entry.data))
        end = lo + len(data)
        row: Any = latest
        if end < hi:
            row = conn.execute(
                select(CHECKPOINTS)
                .where(
                    CHECKPOINTS.c.origin == origin,
                    CHECKPOINTS.c.size > lo,
                    CHECKPOINTS.c.size <= end,
                )
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            end = int(row.size)
        hr = _hash_range(conn, origin)
        note = pb.CheckpointNote(
            signed_checkpoint=head if end == hi else _signed_with_cosignatures(conn, row),
            old_size=lo,
            entries=data[: end - lo],
            consistency_proof=consistency_proof_from(hr, lo, end),
            prefix_proof=self._prefix(hr, lo, end),
        )
        return _CatchUp(note, end - lo)

    def apply_answer(
        self, conn: Connection, peer: str, raw: bytes, mine: Mapping[str, tuple[int, bytes]]
    ) -> list[dict[str, Any]]:
        """Apply a whole ``Reconcile`` answer from ``peer`` in one transaction (tests, bench).

        :meth:`reconcile` applies it origin by origin instead, so that one refused log does
        not hold the others back. See :meth:`apply_update` for the lines returned.
        """
        resp = self._parse_answer(raw)
        now = self.node.clock()
        self._apply_evidence(conn, peer, resp, now)
        lines = {}
        for note in resp.updates:
            line = self.apply_update(conn, peer, note, mine)
            lines[line["origin"]] = line
        return self._finish(conn, lines, mine)

    @staticmethod
    def _parse_answer(raw: bytes) -> pb.ReconcileResponse:
        try:
            return pb.ReconcileResponse.FromString(raw)
        except DecodeError as e:
            raise ValidationError("ReconcileResponse does not parse", reason="MALFORMED") from e

    def _apply_evidence(
        self, conn: Connection, peer: str, resp: pb.ReconcileResponse, now: datetime
    ) -> None:
        for ev in resp.evidence:
            try:
                self.accept_evidence(conn, bytes(ev), source=peer, now=now)
            except FederationError as e:
                log.warning("evidence from %s refused: %s", peer, e.diagnostics())

    def apply_update(
        self,
        conn: Connection,
        peer: str,
        note: pb.CheckpointNote,
        mine: Mapping[str, tuple[int, bytes]],
    ) -> dict[str, Any]:
        """Apply one origin's part of an answer; raises (nothing stored) when refused.

        The line's ``status`` is ``converged`` (same tree head), ``behind`` (we pulled
        ``pulled`` entries and now match), ``ahead`` (the peer is behind by ``count``; it
        catches up when it reconciles) or ``forked`` (equivocation proven, origin frozen).
        """
        their = parse_checkpoint(bytes(note.signed_checkpoint)).checkpoint
        size_before = mine.get(their.origin, (0, EMPTY_ROOT))[0]
        result = self.accept_note(conn, note, source=peer, now=self.node.clock())
        return self._line(their.origin, result, size_before, their.size)

    def _finish(
        self,
        conn: Connection,
        lines: dict[str, dict[str, Any]],
        mine: Mapping[str, tuple[int, bytes]],
    ) -> list[dict[str, Any]]:
        for origin, (size, _) in mine.items():
            if origin not in lines:
                lines[origin] = {"origin": origin, "status": "ahead", "count": size}
        frozen = frozen_origins(conn)
        for origin, line in lines.items():
            if origin in frozen and line["status"] != "forked":
                line["status"] = "frozen"
        return [lines[o] for o in sorted(lines)]

    @staticmethod
    def _line(
        origin: str, result: Mapping[str, Any], size_before: int, their_size: int
    ) -> dict[str, Any]:
        status = result["status"]
        if status == "forked":
            return {"origin": origin, "status": "forked"}
        if status == "refused":
            return {"origin": origin, "status": "refused", "reason": result.get("reason", "")}
        if status == "own_behind":  # our own log is behind what a peer holds of it; see log
            return {"origin": origin, "status": "own_behind", "count": their_size - size_before}
        if their_size < size_before:
            return {"origin": origin, "status": "ahead", "count": size_before - their_size}
        pulled = int(result.get("pulled", 0))
        if pulled:
            return {"origin": origin, "status": "behind", "count": pulled, "pulled": pulled}
        return {"origin": origin, "status": "converged", "size": their_size}

    async def reconcile(self, peer: str) -> list[dict[str, Any]]:
        """One round with ``peer``: send our frontiers, verify and store what comes back.

        Each origin is applied in its own transaction: a node killed half way keeps whole
        origins only, and the next round pulls the rest. When the answer was capped to the
        message size limit (``more``), we ask again from where we now are, within this call,
        as long as every answer makes progress: still one round trip whenever it fits.
        """
        with self.node.reader.connect() as conn:
            mine = frontiers(conn)
        lines: dict[str, dict[str, Any]] = {}
        for _ in range(MAX_CAPPED_ROUNDS):
            more, progress = await self._round(peer, lines)
            if not more:
                break
            if not progress:
                for origin in more:
                    if lines.get(origin, {}).get("status") not in ("refused", "frozen", "forked"):
                        lines[origin] = {
                            "origin": origin,
                            "status": "refused",
                            "reason": "ANSWER_TOO_LARGE",
                        }
                log.warning(
                    "reconcile with %s: %s could not be sent within the message size limit",
                    peer,
                    ", ".join(more),
                )
                break
        self.last_reconciled[peer] = self.node.clock()
        with self.node.reader.connect() as conn:
            return self._finish(conn, lines, mine)

    async def _round(self, peer: str, lines: dict[str, dict[str, Any]]) -> tuple[list[str], bool]:
        """One request and answer, merged into ``lines``: (origins with more, progress made)."""
        with self.node.reader.connect() as conn:
            now_mine = frontiers(conn)
            req = self.request(conn)
        raw = await self.node.peers.call_with_retry(
            lambda: self.node.peers.reconcile(peer, req.SerializeToString())
        )
        resp = self._parse_answer(raw)
        now = self.node.clock()
        await self.node.run_and_send(lambda conn: self._apply_evidence(conn, peer, resp, now))
        progress = False
        for note in resp.updates:
            try:
                origin = parse_checkpoint(bytes(note.signed_checkpoint)).checkpoint.origin
            except FederationError as e:
                log.warning("reconcile answer from %s: %s", peer, e.diagnostics())
                continue
            try:
                line = await self.node.run_and_send(
                    functools.partial(self.apply_update, peer=peer, note=note, mine=now_mine)
                )
            except FederationError as e:
                status = "frozen" if e.reason == "ORIGIN_FROZEN" else "refused"
                line = {"origin": origin, "status": status, "reason": e.reason}
                log.warning("reconcile with %s: %s refused: %s", peer, origin, e.diagnostics())
            if line["status"] == "behind":
                failpoint("reconcile_after_origin")
                progress = True
            lines[origin] = _merge(lines.get(origin), line)
        more = [o for o in resp.more if lines.get(o, {}).get("status") not in ("refused", "frozen")]
        return more, progress

    async def reconcile_all(self, peers: Sequence[str] | None = None) -> dict[str, Any]:
        """Reconcile with each peer (default: every other member); a peer down is reported."""
        out: dict[str, Any] = {}
        for peer in peers or self._others():
            try:
                out[peer] = await self.reconcile(peer)
            except FederationError as e:
                out[peer] = {"error": e.reason, "message": str(e)}
        return out


__all__ = [
    "COSIGNATURE_KIND",
    "EVIDENCE_KIND",
    "NOTE_KIND",
    "SERVICE",
    "STATUSES",
    "Recognition",
    "frontier_of",
    "frontiers",
    "frozen_origins",
]
