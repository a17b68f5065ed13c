"""One-round reconciliation of the members' logs: compare frontiers, pull what is missing.

Two members exchange their *frontiers* — for every origin, the ``(size, root)`` of the latest
checkpoint each has accepted — in one round trip (DESIGN.md §7), then each pulls only the
entries it lacks, with a consistency proof, and checks them before storing anything. This
module is the pure part: :func:`plan` says what to do per origin, :func:`verify_pulled` checks a
pull, and :func:`estimate_wire_bytes` sizes an exchange for the benchmark. Fetching, storing and
witnessing are the shell's; each frontier value should come from a checkpoint whose signature
was verified (:func:`federation.checkpoint.verify_checkpoint`), since a proof binds leaves to a
root but only a signature binds a root to a size.

A frontier cannot show a fork between *different* sizes: ``(5, a)`` and ``(7, b)`` look like
"pull two entries". The fork shows up when the pull's consistency proof fails; the shell then
hands the signed checkpoint and a prefix proof to :func:`federation.witness.witness_update`,
which decides whether the failure proves equivocation or was just a bad proof.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from federation.checkpoint import MAX_DER_SIGNATURE, MAX_SIZE, ORIGIN_PREFIX, Checkpoint
from federation.errors import ValidationError, VerificationError
from federation.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    SubtreeNode,
    consistency_proof_from,
    leaf_hash,
    verify_consistency,
)

__all__ = [
    "Action",
    "ActionKind",
    "Frontier",
    "Pulled",
    "WireEstimate",
    "estimate_wire_bytes",
    "plan",
    "signed_checkpoint_bytes",
    "verify_pulled",
]

Frontier = Mapping[str, tuple[int, bytes]]
"""``{origin member code: (tree size, root hash)}``; an origin absent is ``(0, EMPTY_ROOT)``."""


class ActionKind(StrEnum):
    """What one origin needs, seen from "mine"."""

    CONVERGED = "converged"
    """Same size and root: nothing to do."""
    PULL = "pull"
    """They have more: pull entries ``[my_size, their_size)`` with a consistency proof."""
    BEHIND = "behind"
    """I have more: they are behind by :attr:`Action.count` entries (they will pull from me)."""
    FORKED = "forked"
    """Same size, different roots: exchange the two signed checkpoints, they are evidence."""


@dataclass(frozen=True, slots=True)
class Action:
    """The plan for one origin."""

    origin: str
    kind: ActionKind
    my_size: int
    my_root: bytes
    their_size: int
    their_root: bytes

    @property
    def start(self) -> int:
        """First entry to pull (my size)."""
        return self.my_size

    @property
    def end(self) -> int:
        """One past the last entry to pull (their size)."""
        return self.their_size

    @property
    def count(self) -> int:
        """Entries to pull (PULL), or by which they are behind (BEHIND); otherwise 0."""
        return abs(self.their_size - self.my_size)


def _checked(frontier: Frontier, side: str) -> dict[str, tuple[int, bytes]]:
    out: dict[str, tuple[int, bytes]] = {}
    for origin, (size, root) in frontier.items():
        if (
            not 0 <= size <= MAX_SIZE
            or len(root) != HASH_SIZE
            or (size == 0 and root != EMPTY_ROOT)
        ):
            raise VerificationError(
                f"{side} frontier for {ORIGIN_PREFIX}{origin} is not a tree head "
                f"(size {size}, {len(root)}-byte root)",
                reason="FRONTIER_MALFORMED",
            )
        out[origin] = (size, bytes(root))
    return out


def plan(mine: Frontier, theirs: Frontier) -> list[Action]:
    """Compare two frontiers origin by origin; one :class:`Action` per origin, sorted by code.

    An origin that one side lacks counts as the empty tree there, so a new member pulls
    everything from 0. Equal sizes need no proof to compare: roots equal is converged, roots
    different is a fork, because one size has one root. Raises :class:`VerificationError`
    (``FRONTIER_MALFORMED``) for a negative size, a root that is not 32 bytes, or a size-0 entry
    whose root is not the empty tree's.
    """
    a, b = _checked(mine, "my"), _checked(theirs, "their")
    empty = (0, EMPTY_ROOT)
    actions: list[Action] = []
    for origin in sorted(a.keys() | b.keys()):
        (my_size, my_root), (their_size, their_root) = a.get(origin, empty), b.get(origin, empty)
        if my_size == their_size:
            kind = ActionKind.CONVERGED if my_root == their_root else ActionKind.FORKED
        else:
            kind = ActionKind.PULL if their_size > my_size else ActionKind.BEHIND
        actions.append(Action(origin, kind, my_size, my_root, their_size, their_root))
    return actions


@dataclass(frozen=True, slots=True)
class Pulled:
    """A verified pull, ready to be stored in one transaction with the new checkpoint."""

    frontier: CompactRange
    """My frontier after appending the pulled entries; its root is the checkpoint's."""
    leaf_hashes: tuple[bytes, ...]
    """``leaf_hash`` of each pulled entry, in order."""
    nodes: tuple[SubtreeNode, ...]
    """Perfect subtrees completed by the pull, for a store that answers proofs."""


def verify_pulled(
    entries: Sequence[bytes],
    mine: CompactRange,
    my_root: bytes,
    their_checkpoint: Checkpoint,
    consistency_proof: Sequence[bytes],
) -> Pulled:
    """Check entries pulled for one origin against its signed checkpoint; nothing is trusted.

    ``mine`` is my frontier of that origin's log (``mine.size`` entries), ``my_root`` the root of
    the checkpoint I accepted for it, ``their_checkpoint`` the verified checkpoint the entries
    lead to, and ``entries`` the raw leaf data ``[mine.size, their_checkpoint.size)``.

    Steps:

    1. My frontier matches my accepted root (``FRONTIER_MISMATCH``): a local store out of step
       with its checkpoint would make every later check meaningless.
    2. Sizes fit (``BAD_SIZE`` if the checkpoint is smaller than mine, ``ENTRY_MISMATCH`` if the
       number of entries is not the difference).
    3. The consistency proof links my checkpoint to theirs (``CONSISTENCY_PROOF_INVALID``), so
       their log extends what I accepted: this is the witness's own check.
    4. Appending the entries' leaf hashes to my frontier gives exactly their root
       (``ENTRY_MISMATCH``): a relayed entry with one altered byte, a dropped, duplicated or
       reordered entry all change the root. Steps 3 and 4 overlap (4 implies consistency), but
       3 tells a forked log from corrupted entries, which the shell handles differently.
    """
    # 1.
    if mine.root() != my_root:
        raise VerificationError(
            f"my frontier of {their_checkpoint.origin_line} (size {mine.size}) does not match "
            "the root of my accepted checkpoint",
            reason="FRONTIER_MISMATCH",
        )
    # 2.
    if their_checkpoint.size < mine.size:
        raise VerificationError(
            f"cannot pull towards size {their_checkpoint.size} from size {mine.size}",
            reason="BAD_SIZE",
        )
    expected = their_checkpoint.size - mine.size
    if len(entries) != expected:
        raise VerificationError(
            f"{len(entries)} entries received for {their_checkpoint.origin_line} "
            f"[{mine.size}, {their_checkpoint.size}), expected {expected}",
            reason="ENTRY_MISMATCH",
        )
    # 3.
    verify_consistency(
        mine.size, their_checkpoint.size, my_root, their_checkpoint.root, consistency_proof
    )
    # 4.
    frontier = mine.copy()
    hashes = tuple(leaf_hash(e) for e in entries)
    nodes = tuple(frontier.extend(hashes))
    if frontier.root() != their_checkpoint.root:
        raise VerificationError(
            f"entries [{mine.size}, {their_checkpoint.size}) of {their_checkpoint.origin_line} "
            "do not hash to the signed root",
            reason="ENTRY_MISMATCH",
        )
    return Pulled(frontier, hashes, nodes)


# --------------------------------------------------------------------------------------------
# Wire size estimates (for the benchmark)
# --------------------------------------------------------------------------------------------

_CODE_LEN: Final = 6
_DASH_SPACE: Final = len("\u2014 ".encode())
_TAG: Final = 1  # protobuf field tag for field numbers below 16


def _varint_len(n: int) -> int:
    return max(1, math.ceil(n.bit_length() / 7))


def _b64_len(n: int) -> int:
    return 4 * math.ceil(n / 3)


def _field_len(n: int) -> int:
    """A protobuf length-delimited field of ``n`` bytes: tag, length varint, bytes."""
    return _TAG + _varint_len(n) + n


def signed_checkpoint_bytes(size: int, *, timestamp: int = 2**32, cosignatures: int = 0) -> int:
    """Upper bound on a signed checkpoint note's length, with ``cosignatures`` cosignature lines.

    Exact except for the DER signatures, counted at their maximum of 72 bytes (usually 70-72).
    The default timestamp has 10 digits, like every date from 2001 to 2286.
    """
    name = len(ORIGIN_PREFIX) + _CODE_LEN
    body = (name + 1) + (len(str(size)) + 1) + (_b64_len(HASH_SIZE) + 1)
    body += len(f"time {timestamp}") + 1
    origin_sig = _DASH_SPACE + name + 1 + _b64_len(32 + MAX_DER_SIGNATURE) + 1
    cosig = _DASH_SPACE + name + 1 + _b64_len(32 + 8 + MAX_DER_SIGNATURE) + 1
    return body + 1 + origin_sig + cosignatures * cosig


@dataclass(frozen=True, slots=True)
class WireEstimate:
    """Bytes of one reconciliation round, in protobuf framing (HTTP/2, gRPC and TLS excluded)."""

    frontier_bytes: int
    """Both directions of the frontier exchange: each side's signed checkpoints."""
    pull_request_bytes: int
    """The request naming the origin and ``[start, end)``."""
    pull_response_bytes: int
    """The entries and the consistency proof."""
    proof_hashes: int
    """Hashes in the consistency proof."""

    @property
    def total(self) -> int:
        """Everything on the wire for the round."""
        return self.frontier_bytes + self.pull_request_bytes + self.pull_response_bytes


def estimate_wire_bytes(
    origins: int,
    entry_sizes: Sequence[int],
    *,
    old_size: int = 0,
    cosignatures: int = 0,
) -> WireEstimate:
    """Estimate a round: a frontier exchange over ``origins`` logs, then one pull.

    The pull fetches ``len(entry_sizes)`` entries of those byte sizes, from ``old_size`` to
    ``old_size + len(entry_sizes)``; the consistency proof length is computed exactly for those
    sizes. Each side sends ``origins`` signed checkpoints (with ``cosignatures`` lines each),
    sized by :func:`signed_checkpoint_bytes` at the new size. Framing assumed: every checkpoint,
    entry and proof hash is a length-delimited protobuf field; the request is an origin string
    and two integers. A pull of nothing costs nothing.
    """
    if origins < 0 or old_size < 0 or any(s < 0 for s in entry_sizes):
        raise ValidationError("counts and sizes must not be negative", reason="INVALID")
    new_size = old_size + len(entry_sizes)
    note = signed_checkpoint_bytes(new_size, cosignatures=cosignatures)
    frontier = 2 * origins * _field_len(note)
    if not entry_sizes:
        return WireEstimate(frontier, 0, 0, 0)
    proof = len(consistency_proof_from(lambda lo, hi: b"", old_size, new_size))
    request = _field_len(_CODE_LEN) + 2 * _TAG + _varint_len(old_size) + _varint_len(new_size)
    response = sum(_field_len(s) for s in entry_sizes) + proof * _field_len(HASH_SIZE)
    return WireEstimate(frontier, request, response, proof)
