"""The witness: which checkpoint of each origin a member has accepted, and proof of forks.

Every member witnesses every other member's log (DESIGN.md §7). For each origin it keeps the
latest checkpoint it accepted and cosigned, and accepts a new one only if it *extends* that one,
as C2SP ``tlog-witness`` and transparency-dev's witness do. Two validly signed checkpoints of one
origin that cannot both be true are kept as evidence, the origin is frozen (nothing of it is
accepted or recognised any more) and every node is told. This module is the pure state machine:
:func:`witness_update` takes the state and the received bytes and returns a new state and a
:class:`Decision`. The shell must load the state, call it and store the result in one transaction
(``BEGIN IMMEDIATE``): tlog-witness explains how a non-atomic check-then-store rolls a witness
back when two submissions race.

The rules, for a validly signed checkpoint ``new`` of an origin whose last accepted checkpoint is
``last`` (``(0, EMPTY_ROOT)`` when there is none):

* ``new.size > last.size`` and the consistency proof verifies: ACCEPTED (store ``new``, cosign);
* ``new.size == last.size``, same root: UNCHANGED (idempotent; cosign again, keep ``last``);
* ``new.size == last.size``, another root: EQUIVOCATION (two signed roots for one size);
* ``new.size > last.size``, the proof fails but, read as a prefix proof, rebuilds ``new.root``
  and gives the first ``last.size`` entries another root than ``last.root``: EQUIVOCATION;
* ``new.size > last.size``, the proof shows neither: REFUSED ``CONSISTENCY_PROOF_INVALID``
  (C2SP: 422); nothing is learnt and nothing is frozen;
* ``new.size < last.size``: REFUSED ``ROLLBACK`` (C2SP: 409 with the size held), unless the proof
  is a prefix proof that rebuilds ``last.root`` and gives ``new.size`` another root than
  ``new.root``: EQUIVOCATION (the symmetric case; without such a proof an old checkpoint is just
  stale).

Why a failed consistency proof is *not* by itself equivocation: the proof is not signed, so
anyone relaying a checkpoint could attach garbage and freeze an honest origin for everyone. What
does prove a fork is a proof that rebuilds the *new* signed root (so its hashes are, barring a
SHA-256 collision, the real nodes of that tree) yet yields a different root for the first
``last.size`` entries: see :func:`prefix_root`. Refusing without freezing is still safe: a
checkpoint that a witness refuses is never cosigned by it, so it never reaches the quorum.

A *prefix proof* is the RFC 6962 consistency proof from ``m`` to ``n``, except that when ``m`` is a
power of two it starts with the hash of the first ``m`` entries (RFC 6962 leaves it out, since a
verifier is meant to know it; a fork prover must say what it is). For other ``m`` the two are the
same list, so an ordinary consistency proof from the forked tree already proves the fork.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Final

from federation.checkpoint import (
    Checkpoint,
    parse_checkpoint,
    verify_checkpoint,
)
from federation.errors import ValidationError, VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    HashRange,
    consistency_proof_from,
    node_hash,
    verify_consistency,
)

__all__ = [
    "Decision",
    "Equivocation",
    "Outcome",
    "WitnessState",
    "accept_evidence",
    "default_quorum",
    "prefix_proof",
    "prefix_root",
    "recognized",
    "verify_equivocation",
    "witness_update",
]

MAX_PROOF_HASHES: Final = 64
"""A proof for trees below 2^63 has at most 63 hashes (tlog-witness), plus one for prefix proofs."""

_EVIDENCE_HEADER: Final = b"cccfed.v1 equivocation\n"


# --------------------------------------------------------------------------------------------
# Prefix proofs: what a fork proof is made of
# --------------------------------------------------------------------------------------------


def prefix_proof(hash_range: HashRange, old_size: int, new_size: int) -> list[bytes]:
    """Prefix proof from ``old_size`` to ``new_size`` in the tree that ``hash_range`` reads.

    Whoever holds the larger of two conflicting trees (the origin, or a member that pulled it)
    makes this to show the first ``old_size`` entries' root; :func:`prefix_root` checks it.

    Raises :class:`ValidationError` (``BAD_SIZE``) unless ``0 < old_size < new_size``.
    """
    if not 0 < old_size < new_size:
        raise ValidationError(
            f"a prefix proof needs 0 < old size < new size, got {old_size} and {new_size}",
            reason="BAD_SIZE",
        )
    proof = consistency_proof_from(hash_range, old_size, new_size)
    if old_size & (old_size - 1) == 0:
        proof.insert(0, hash_range(0, old_size))
    return proof


def prefix_root(old_size: int, new_size: int, new_root: bytes, proof: Sequence[bytes]) -> bytes:
    """Root of the first ``old_size`` entries of the tree ``(new_size, new_root)``, from a proof.

    The RFC 9162 §2.1.4.2 verification loop rebuilds two roots from one list of hashes: ``sr``,
    the new root, and ``fr``, the root of the first ``old_size`` leaves. This runs the same loop
    without being told the old root (step 2 becomes the first proof hash), checks ``sr`` and
    returns ``fr``. If ``sr == new_root`` the hashes are the new tree's own nodes, so ``fr`` *is*
    its prefix: compare it with a signed old root to tell "consistent" from "forked".

    Raises :class:`VerificationError`: ``BAD_SIZE`` unless ``0 < old_size < new_size``;
    ``CONSISTENCY_PROOF_INVALID`` if the proof has the wrong length or hash sizes or does not
    rebuild ``new_root`` (then it proves nothing either way).
    """
    reason = "CONSISTENCY_PROOF_INVALID"
    if not 0 < old_size < new_size:
        raise VerificationError(
            f"a prefix proof needs 0 < old size < new size, got {old_size} and {new_size}",
            reason="BAD_SIZE",
        )
    if not proof or len(proof) > MAX_PROOF_HASHES:
        raise VerificationError(
            f"a prefix proof from {old_size} to {new_size} cannot have {len(proof)} hashes",
            reason=reason,
        )
    if len(new_root) != HASH_SIZE or any(len(h) != HASH_SIZE for h in proof):
        raise VerificationError(f"prefix proof hashes must be {HASH_SIZE} bytes", reason=reason)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = bytes(proof[0])
    for c in proof[1:]:
        if sn == 0:
            raise VerificationError(
                f"the prefix proof from {old_size} to {new_size} is too long", reason=reason
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError(
            f"the prefix proof from {old_size} to {new_size} is too short", reason=reason
        )
    if sr != new_root:
        raise VerificationError(
            f"the prefix proof does not rebuild the root of size {new_size}", reason=reason
        )
    return fr


def _proves_fork(small: Checkpoint, large: Checkpoint, proof: Sequence[bytes]) -> bool:
    """Whether ``proof`` shows that ``small`` is not a prefix of ``large`` (same origin)."""
    if small.size == large.size:
        return small.root != large.root
    if small.size == 0:  # every tree extends the empty one (parse_body pins its root)
        return False
    try:
        return prefix_root(small.size, large.size, large.root, proof) != small.root
    except VerificationError:
        return False


# --------------------------------------------------------------------------------------------
# Evidence
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Equivocation:
    """Two signed checkpoints of one origin that cannot both be true, checkable by anyone.

    ``first`` and ``second`` are signed checkpoint notes exactly as the witness held and received
    them (origin signature only). When their sizes differ, ``proof`` is a prefix proof from the
    smaller size to the larger that rebuilds the larger root but not the smaller one; for equal
    sizes it is empty, the two roots are the whole story.

    Wire form (:meth:`to_bytes`): the line ``cccfed.v1 equivocation``, then one line of standard
    base64 for ``first``, one for ``second``, and one per proof hash; every line ends in ``\\n``.
    """

    origin: str
    first: bytes
    second: bytes
    proof: tuple[bytes, ...] = ()

    def to_bytes(self) -> bytes:
        """The wire form, to hand to every other member."""
        lines = [self.first, self.second, *self.proof]
        return _EVIDENCE_HEADER + b"".join(base64.b64encode(x) + b"\n" for x in lines)

    @classmethod
    def from_bytes(cls, data: bytes) -> Equivocation:
        """Parse the wire form; checks structure only (``EQUIVOCATION_MALFORMED``).

        Use :func:`verify_equivocation` before believing it.
        """
        reason = "EQUIVOCATION_MALFORMED"
        if not data.startswith(_EVIDENCE_HEADER) or not data.endswith(b"\n"):
            raise VerificationError("not a cccfed equivocation record", reason=reason)
        lines = data[len(_EVIDENCE_HEADER) : -1].split(b"\n")
        if not 2 <= len(lines) <= 2 + MAX_PROOF_HASHES:
            raise VerificationError(
                "an equivocation record has two checkpoints and a short proof", reason=reason
            )
        try:
            parts = [base64.b64decode(line, validate=True) for line in lines]
        except (binascii.Error, ValueError) as e:
            raise VerificationError("equivocation record is not base64", reason=reason) from e
        if any(base64.b64encode(p) != line for p, line in zip(parts, lines, strict=True)):
            raise VerificationError("equivocation record is not canonical base64", reason=reason)
        first = parse_checkpoint(parts[0]).checkpoint
        return cls(origin=first.origin, first=parts[0], second=parts[1], proof=tuple(parts[2:]))


def verify_equivocation(
    evidence: Equivocation | bytes, manifest: TrustedManifest, *, at: datetime | None = None
) -> tuple[Checkpoint, Checkpoint]:
    """Check offline that ``evidence`` proves its origin signed two conflicting checkpoints.

    Returns the two checkpoints (smaller size first). Steps:

    1. Parse both notes (``EQUIVOCATION_MALFORMED`` / ``CHECKPOINT_MALFORMED``); both must name
       the evidence's origin (``NOT_EQUIVOCATION``): two logs may differ as they like.
    2. Verify both origin signatures with :func:`verify_checkpoint`. The key's validity is judged
       at ``at`` or, by default, at each checkpoint's own signed ``time``, so that evidence still
       verifies after the key has expired. A key revoked since then no longer convicts its
       member: the manifest has no revocation date, and a stolen key is exactly what revocation
       is for.
    3. They conflict (``NOT_EQUIVOCATION`` otherwise): equal sizes with different roots, or a
       prefix proof that rebuilds the larger root and gives the smaller size a different root.
       Different bodies of one tree head (say, two ``time`` lines) are not a conflict.
    """
    # 1.
    if not isinstance(evidence, Equivocation):
        evidence = Equivocation.from_bytes(evidence)
    a = parse_checkpoint(evidence.first)
    b = parse_checkpoint(evidence.second)
    if not a.checkpoint.origin == b.checkpoint.origin == evidence.origin:
        raise VerificationError(
            "the two checkpoints are not of the evidence's one origin", reason="NOT_EQUIVOCATION"
        )
    # 2.
    checkpoints = [
        verify_checkpoint(s, manifest, at=at if at is not None else s.checkpoint.signed_at)
        for s in (a, b)
    ]
    small, large = sorted(checkpoints, key=lambda c: c.size)
    # 3.
    if not _proves_fork(small, large, evidence.proof):
        raise VerificationError(
            f"checkpoints of sizes {small.size} and {large.size} of {small.origin_line} are not "
            "shown to conflict",
            reason="NOT_EQUIVOCATION",
        )
    return small, large


# --------------------------------------------------------------------------------------------
# State and decisions
# --------------------------------------------------------------------------------------------


class Outcome(StrEnum):
    """What :func:`witness_update` did with a submitted checkpoint."""

    ACCEPTED = "accepted"
    """It extends the last accepted one (or is the first): stored; cosign it."""
    UNCHANGED = "unchanged"
    """Same size and root as the stored one: nothing to store; cosign it again (freshness)."""
    REFUSED = "refused"
    """Not accepted and nothing proven: bad signature, bad proof, rollback, frozen origin."""
    EQUIVOCATION = "equivocation"
    """Proof that the origin signed conflicting checkpoints: evidence kept, origin frozen."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The result of one submission, for the shell to act on and report."""

    outcome: Outcome
    reason: str
    """``ACCEPTED``, ``UNCHANGED``, ``EQUIVOCATION`` or the refusal's reason code."""
    message: str
    origin: str | None = None
    """The checkpoint's origin, once its signature verified (unverified claims are not repeated)."""
    checkpoint: Checkpoint | None = None
    """The submitted checkpoint, once its signature verified."""
    latest_size: int | None = None
    """Size of the checkpoint the witness holds for the origin afterwards (tlog-witness returns
    it on a conflict so that the submitter can send the right proof)."""
    evidence: Equivocation | None = None

    @property
    def cosign(self) -> bool:
        """Whether the witness should now cosign :attr:`checkpoint`."""
        return self.outcome in (Outcome.ACCEPTED, Outcome.UNCHANGED)


@dataclass(frozen=True)
class WitnessState:
    """What one member has witnessed, for every origin; an immutable value.

    ``latest`` maps an origin's member code to the signed note (origin signature only) of the
    last checkpoint accepted for it; those bytes are what :class:`Equivocation` evidence quotes.
    ``frozen`` are origins caught equivocating, and ``evidence`` the proofs, in order found.
    """

    latest: Mapping[str, bytes] = field(default_factory=dict)
    frozen: frozenset[str] = frozenset()
    evidence: tuple[Equivocation, ...] = ()

    def __post_init__(self) -> None:
        # A read-only copy, so that a state handed out can never change under its holder.
        object.__setattr__(self, "latest", MappingProxyType(dict(self.latest)))

    def checkpoint(self, origin: str) -> Checkpoint | None:
        """The last accepted checkpoint of ``origin`` (it was verified when accepted)."""
        raw = self.latest.get(origin)
        return None if raw is None else parse_checkpoint(raw).checkpoint

    def frontier(self) -> dict[str, tuple[int, bytes]]:
        """``{origin: (size, root)}`` of the accepted checkpoints, for reconciliation."""
        out: dict[str, tuple[int, bytes]] = {}
        for origin in self.latest:
            cp = self.checkpoint(origin)
            if cp is not None:
                out[origin] = (cp.size, cp.root)
        return out


def _frozen_with(state: WitnessState, evidence: Equivocation) -> WitnessState:
    return WitnessState(
        latest=state.latest,
        frozen=state.frozen | {evidence.origin},
        evidence=(*state.evidence, evidence),
    )


def witness_update(
    state: WitnessState,
    signed_new: bytes,
    consistency_proof: Sequence[bytes],
    manifest: TrustedManifest,
    *,
    at: datetime,
) -> tuple[WitnessState, Decision]:
    """Consider a submitted checkpoint with a proof from the last accepted one; pure.

    ``consistency_proof`` is the RFC 6962 proof from the size the witness holds (0 if none) to
    the new size, or a prefix proof when the submitter means to show a fork (module docstring).
    The state is returned unchanged unless the outcome is ACCEPTED or EQUIVOCATION.

    Steps:

    1. Verify the checkpoint's signature as of ``at`` (:func:`verify_checkpoint`); refuse with
       its reason otherwise. An unsigned or badly signed checkpoint proves nothing, not even
       misbehaviour, so it is never kept.
    2. Refuse (``ORIGIN_FROZEN``) if the origin is frozen: after a proven fork no view of it can
       be trusted, and recognising more of it would pick a side.
    3. Compare with the last accepted checkpoint (``(0, EMPTY_ROOT)`` if none), by the table in
       the module docstring.
    """
    # 1.
    try:
        signed = parse_checkpoint(signed_new)
        new = verify_checkpoint(signed, manifest, at=at)
    except VerificationError as e:
        return state, Decision(Outcome.REFUSED, e.reason, str(e))
    origin = new.origin
    new_bytes = signed.to_bytes(cosignatures=False)
    held = state.latest.get(origin)
    last = None if held is None else parse_checkpoint(held).checkpoint
    last_size = 0 if last is None else last.size
    last_root = EMPTY_ROOT if last is None else last.root

    def refuse(reason: str, message: str) -> tuple[WitnessState, Decision]:
        return state, Decision(Outcome.REFUSED, reason, message, origin, new, last_size)

    def equivocation(proof: Sequence[bytes], message: str) -> tuple[WitnessState, Decision]:
        assert held is not None  # a conflict needs something held
        evidence = Equivocation(origin, held, new_bytes, tuple(proof))
        return _frozen_with(state, evidence), Decision(
            Outcome.EQUIVOCATION, "EQUIVOCATION", message, origin, new, last_size, evidence
        )

    # 2.
    if origin in state.frozen:
        return refuse("ORIGIN_FROZEN", f"{new.origin_line} is frozen after an equivocation")
    if len(consistency_proof) > MAX_PROOF_HASHES:
        return refuse("CONSISTENCY_PROOF_INVALID", "the consistency proof is too long")
    # 3.
    if last is not None and new.size < last.size:
        if _proves_fork(new, last, consistency_proof):
            return equivocation(
                consistency_proof,
                f"{new.origin_line} signed size {new.size} with a root that is not the first "
                f"{new.size} entries of its size {last.size}",
            )
        return refuse(
            "ROLLBACK",
            f"{new.origin_line}: size {new.size} is older than the accepted size {last.size}",
        )
    if last is not None and new.size == last.size:
        if new.root == last.root:
            return state, Decision(
                Outcome.UNCHANGED,
                "UNCHANGED",
                f"{new.origin_line} size {new.size} was already accepted",
                origin,
                new,
                last_size,
            )
        return equivocation((), f"{new.origin_line} signed two different roots for size {new.size}")
    try:
        verify_consistency(last_size, new.size, last_root, new.root, consistency_proof)
    except VerificationError as e:
        if last is not None and _proves_fork(last, new, consistency_proof):
            return equivocation(
                consistency_proof,
                f"{new.origin_line} size {new.size} does not extend the accepted size {last.size}",
            )
        return refuse(e.reason, f"{new.origin_line}: {e}")
    accepted = WitnessState(
        latest={**state.latest, origin: new_bytes}, frozen=state.frozen, evidence=state.evidence
    )
    return accepted, Decision(
        Outcome.ACCEPTED,
        "ACCEPTED",
        f"{new.origin_line} grew from {last_size} to {new.size}",
        origin,
        new,
        new.size,
    )


def accept_evidence(
    state: WitnessState,
    evidence: Equivocation | bytes,
    manifest: TrustedManifest,
    *,
    at: datetime | None = None,
) -> tuple[WitnessState, Decision]:
    """Take equivocation evidence found by another member: verify it, keep it, freeze the origin.

    This is how "tell every node" lands: a member that saw neither checkpoint still freezes the
    origin, because the evidence convinces anyone (:func:`verify_equivocation`). Evidence for an
    origin already frozen is not kept twice. Refusals leave the state unchanged.
    """
    try:
        if not isinstance(evidence, Equivocation):
            evidence = Equivocation.from_bytes(evidence)
        _, large = verify_equivocation(evidence, manifest, at=at)
    except VerificationError as e:
        return state, Decision(Outcome.REFUSED, e.reason, str(e))
    origin = evidence.origin
    if origin in state.frozen:
        return state, Decision(
            Outcome.REFUSED, "ORIGIN_FROZEN", f"{large.origin_line} is already frozen", origin
        )
    return _frozen_with(state, evidence), Decision(
        Outcome.EQUIVOCATION,
        "EQUIVOCATION",
        f"{large.origin_line} equivocated (evidence from another member)",
        origin,
        evidence=evidence,
    )


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


def default_quorum(manifest: TrustedManifest, origin: str) -> frozenset[str]:
    """Every member but the origin: the witnesses whose cosignatures recognition needs."""
    return frozenset(code for code in manifest.members if code != origin)


def recognized(
    leaf_index: int,
    checkpoint: Checkpoint,
    cosigners: Collection[str],
    quorum: Collection[str],
    *,
    threshold: int | None = None,
    frozen: Collection[str] = (),
) -> bool:
    """Whether entry ``leaf_index`` of ``checkpoint``'s log is recognised by the federation.

    It is once a checkpoint that covers it (``leaf_index < size``) carries cosignatures from
    ``threshold`` members of ``quorum`` (default: all of them; see :func:`default_quorum`) and its
    origin is not ``frozen``. ``cosigners`` must be members whose cosignatures on *this*
    checkpoint verified (:func:`federation.checkpoint.verified_cosigners`). Coverage is about
    positions: that the entry the caller holds *is* entry ``leaf_index`` must come from an
    inclusion proof or from :func:`federation.reconcile.verify_pulled`.
    """
    needed = len(quorum) if threshold is None else threshold
    if not 0 <= needed <= len(quorum):
        raise ValidationError(
            f"threshold {needed} is outside 0..{len(quorum)} (the quorum's size)",
            reason="INVALID",
        )
    if checkpoint.origin in frozen or not 0 <= leaf_index < checkpoint.size:
        return False
    return len(set(quorum) & set(cosigners)) >= needed
