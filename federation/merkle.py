"""RFC 6962 / RFC 9162 Merkle trees for the append-only inspection logs (DESIGN.md §7).

Every node keeps its inspection results in an append-only log and signs checkpoints
``(origin, size, root)``. Peers accept a new checkpoint only with a consistency proof from the last
one they accepted, and check single entries with inclusion proofs. This module is the pure,
I/O-free arithmetic behind that: it hashes, builds proofs and verifies them, over ``bytes`` and
``int`` only, so the store, the gRPC layer and the witnesses all share one audited implementation.

Hashing is exactly RFC 6962 §2.1 (kept unchanged in RFC 9162 §2.1.1) with SHA-256:

* leaf hash ``SHA-256(0x00 ‖ data)`` and interior node ``SHA-256(0x01 ‖ left ‖ right)``: the
  distinct prefixes make a leaf impossible to pass off as an interior node (second preimages);
* the root of the empty tree is ``SHA-256("")`` (:data:`EMPTY_ROOT`);
* a list of ``n > 1`` leaves splits at ``k``, the largest power of two below ``n``; so the tree is
  a row of perfect subtrees, biggest first, and appending never changes an existing perfect one.

Three layers, from the specification to production use:

1. :func:`root_from_leaf_hashes`, :func:`inclusion_proof` and :func:`consistency_proof` take the
   whole list of leaf hashes and follow RFC 6962 §2.1.1/§2.1.2 (``PATH`` and ``SUBPROOF``)
   literally. They cost O(n) hashes each: the reference, used for tests and small logs.
2. :func:`inclusion_proof_from` and :func:`consistency_proof_from` run the same recursion but ask a
   callable ``hash_range(lo, hi)`` for the hash of each sibling subtree. They need only O(log n)
   calls, and every call names a *node range* of the tree (see :func:`is_node_range`), which a
   store answers from stored perfect-subtree hashes with :func:`hash_range_from_nodes`.
3. :class:`CompactRange` is the O(log n) frontier a node keeps to append leaves and obtain the new
   root cheaply; :meth:`CompactRange.append` also reports the perfect subtrees each leaf completes,
   which is exactly what a store must persist to answer ``hash_range``. :class:`MemoryTree` is the
   in-memory store built that way.

The verifiers :func:`verify_inclusion` and :func:`verify_consistency` follow RFC 9162 §2.1.3.2 and
§2.1.4.2 step by step. They return ``None`` on success and raise
:class:`~federation.errors.VerificationError` for every failure, with ``reason`` one of
``BAD_INDEX``, ``BAD_SIZE``, ``INCLUSION_PROOF_INVALID`` or ``CONSISTENCY_PROOF_INVALID``; they
never let a ``ValueError`` or ``IndexError`` escape, because their input comes from peers.

Note what a proof does *not* prove: an inclusion or consistency proof binds leaves to a root, not
the tree size to the root. The same hashes can be a valid proof for two different sizes whose
trees have the same shape along the path (e.g. leaf 0 in trees of sizes 3 and 4). The size is
bound to the root by the signed checkpoint, so callers must take ``size`` and ``root`` from one
verified checkpoint, never from separate sources.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from federation.errors import ValidationError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "CompactRange",
    "HashRange",
    "MemoryTree",
    "NodeLookup",
    "SubtreeNode",
    "consistency_proof",
    "consistency_proof_from",
    "hash_range_from_nodes",
    "inclusion_proof",
    "inclusion_proof_from",
    "is_node_range",
    "leaf_hash",
    "node_hash",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE: Final = 32
"""Length in bytes of every hash in the tree (SHA-256)."""

EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
"""Root of the tree with no leaves: ``SHA-256("")`` (RFC 6962 §2.1)."""

_LEAF_PREFIX: Final = b"\x00"
_NODE_PREFIX: Final = b"\x01"

HashRange = Callable[[int, int], bytes]
"""``hash_range(lo, hi)`` returns MTH of leaves ``[lo, hi)``; called only for node ranges."""

NodeLookup = Callable[[int, int], bytes]
"""``get_node(level, index)`` returns the hash of the perfect subtree over leaves
``[index * 2**level, (index + 1) * 2**level)``; level 0 is the leaf hashes themselves."""


# --------------------------------------------------------------------------------------------
# Hashing (RFC 6962 §2.1)
# --------------------------------------------------------------------------------------------


def leaf_hash(data: bytes) -> bytes:
    """Hash one log entry as a leaf: ``SHA-256(0x00 ‖ data)``.

    The ``0x00`` prefix keeps a leaf from colliding with an interior node whose children happen
    to concatenate to ``data``.
    """
    return hashlib.sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """Hash two children into their parent: ``SHA-256(0x01 ‖ left ‖ right)``."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """Largest power of two strictly below ``n`` (``n >= 2``): where RFC 6962 splits a list."""
    return 1 << ((n - 1).bit_length() - 1)


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH of a list of leaf hashes (RFC 6962 §2.1), in O(n) hashes and no recursion.

    Works level by level: hash adjacent pairs and carry an unpaired last node up unchanged. That
    gives the same tree as the RFC's recursive split at the largest power of two (each level's
    pairs are the perfect subtrees, and the carried node is the right-hand remainder), without
    the O(n log n) list copying a literal recursive version would do on a million leaves.
    """
    if not hashes:
        return EMPTY_ROOT
    level = list(hashes)
    while len(level) > 1:
        paired = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            paired.append(level[-1])
        level = paired
    return level[0]


# --------------------------------------------------------------------------------------------
# Proof generation over the whole list (RFC 6962 §2.1.1 and §2.1.2): the reference
# --------------------------------------------------------------------------------------------


def _check_leaf_count(leaf_hashes: Sequence[bytes], size: int) -> None:
    if size < 0 or size > len(leaf_hashes):
        raise ValidationError(
            f"tree size {size} is outside 0..{len(leaf_hashes)} (the number of leaves known)",
            reason="BAD_SIZE",
        )


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int, size: int) -> list[bytes]:
    """Audit path ``PATH(index, D[size])`` (RFC 6962 §2.1.1), over the first ``size`` leaves.

    ``leaf_hashes`` may be longer than ``size``: a log answers proofs for any past tree size.
    The result lists sibling hashes from the leaf up to the root. O(size) hashes; use
    :func:`inclusion_proof_from` when the leaves are in a store.

    Raises :class:`ValidationError` (``BAD_SIZE``/``BAD_INDEX``) if the request does not fit.
    """
    _check_leaf_count(leaf_hashes, size)
    if not 0 <= index < size:
        raise ValidationError(
            f"leaf index {index} is outside 0..{size - 1} for tree size {size}", reason="BAD_INDEX"
        )
    return _path(index, leaf_hashes[:size])


def _path(m: int, d: Sequence[bytes]) -> list[bytes]:
    """RFC 6962 ``PATH(m, D[n])``, transcribed: the recursion is at most 64 levels deep."""
    n = len(d)
    if n == 1:
        return []
    k = _split(n)
    if m < k:
        return [*_path(m, d[:k]), root_from_leaf_hashes(d[k:])]
    return [*_path(m - k, d[k:]), root_from_leaf_hashes(d[:k])]


def audit_paths(leaf_hashes: Sequence[bytes]) -> tuple[bytes, list[list[bytes]]]:
    """The root of ``leaf_hashes`` and the audit path of every leaf, in one pass.

    Equal to :func:`root_from_leaf_hashes` and :func:`inclusion_proof` for each index (leaf level
    first), in O(n log n) hashes where calling :func:`inclusion_proof` n times is O(n²). For a
    small tree whose every leaf needs its proof, such as a batch of receipts (PROTOCOL.md §7.5).
    """
    if not leaf_hashes:
        raise ValidationError("a tree of no leaves has no audit paths", reason="BAD_SIZE")
    paths: list[list[bytes]] = [[] for _ in leaf_hashes]

    def subtree(lo: int, hi: int) -> bytes:
        if hi - lo == 1:
            return leaf_hashes[lo]
        k = _split(hi - lo)
        left, right = subtree(lo, lo + k), subtree(lo + k, hi)
        for i in range(lo, lo + k):
            paths[i].append(right)
        for i in range(lo + k, hi):
            paths[i].append(left)
        return node_hash(left, right)

    return subtree(0, len(leaf_hashes)), paths


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof ``PROOF(old_size, D[new_size])`` (RFC 6962 §2.1.2).

    Empty when ``old_size`` is 0 or equals ``new_size``: there is nothing to prove, and
    :func:`verify_consistency` demands an empty proof in exactly those cases. O(new_size) hashes;
    use :func:`consistency_proof_from` when the leaves are in a store.

    Raises :class:`ValidationError` (``BAD_SIZE``) unless ``0 <= old_size <= new_size <=
    len(leaf_hashes)``.
    """
    _check_leaf_count(leaf_hashes, new_size)
    if not 0 <= old_size <= new_size:
        raise ValidationError(
            f"old size {old_size} is outside 0..{new_size} (the new size)", reason="BAD_SIZE"
        )
    if old_size in (0, new_size):
        return []
    return _subproof(old_size, leaf_hashes[:new_size], True)


def _subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    """RFC 6962 ``SUBPROOF(m, D[n], b)``, transcribed."""
    n = len(d)
    if m == n:
        return [] if b else [root_from_leaf_hashes(d)]
    k = _split(n)
    if m <= k:
        return [*_subproof(m, d[:k], b), root_from_leaf_hashes(d[k:])]
    return [*_subproof(m - k, d[k:], False), root_from_leaf_hashes(d[:k])]


# --------------------------------------------------------------------------------------------
# Proof generation from stored subtree hashes: for big logs
# --------------------------------------------------------------------------------------------


def is_node_range(lo: int, hi: int) -> bool:
    """Whether leaves ``[lo, hi)`` form a subtree of the tree of size ``hi``.

    These are the only ranges the RFC 6962 recursion ever hashes: ``lo`` is a multiple of the
    smallest power of two ``2**k >= hi - lo``. Such a range is either one perfect subtree (its
    length is ``2**k``) or the right edge of a tree, whose hash folds from the perfect subtrees
    of the binary digits of its length. Arbitrary ranges are not tree nodes and have no stored
    hash, so :func:`hash_range_from_nodes` refuses them.
    """
    if not 0 <= lo < hi:
        return False
    width = 1 << (hi - lo - 1).bit_length()
    return lo % width == 0


def hash_range_from_nodes(get_node: NodeLookup, lo: int, hi: int) -> bytes:
    """MTH of the node range ``[lo, hi)`` from stored perfect-subtree hashes.

    A store that persists every :class:`SubtreeNode` reported by :meth:`CompactRange.append`
    (about ``2n`` hashes for ``n`` leaves) passes its lookup here and gets the ``hash_range``
    that :func:`inclusion_proof_from` and :func:`consistency_proof_from` need. Cost: at most
    ``log2(hi - lo) + 1`` lookups and one fewer hashes.

    Raises :class:`ValidationError` (``BAD_RANGE``) if ``[lo, hi)`` is not a node range.
    """
    if not is_node_range(lo, hi):
        raise ValidationError(f"[{lo}, {hi}) is not a subtree of the log", reason="BAD_RANGE")
    parts: list[bytes] = []
    pos = lo
    for level in range((hi - lo).bit_length() - 1, -1, -1):
        if (hi - lo) >> level & 1:
            parts.append(get_node(level, pos >> level))
            pos += 1 << level
    root = parts[-1]
    for left in reversed(parts[:-1]):
        root = node_hash(left, root)
    return root


def inclusion_proof_from(hash_range: HashRange, index: int, size: int) -> list[bytes]:
    """Audit path for leaf ``index`` in the tree of ``size``, asking ``hash_range`` for siblings.

    Same output as :func:`inclusion_proof` on the full list, but it needs only one
    ``hash_range`` call per tree level (``ceil(log2(size))`` at most), each on a node range:
    with :func:`hash_range_from_nodes` that is O(log² n) lookups and hashes in the worst case
    and nothing proportional to the log size.

    Raises :class:`ValidationError` (``BAD_INDEX``) unless ``0 <= index < size``.
    """
    if not 0 <= index < size:
        raise ValidationError(
            f"leaf index {index} is outside 0..{size - 1} for tree size {size}", reason="BAD_INDEX"
        )
    siblings: list[bytes] = []  # collected from the root down; the proof lists them leaf-up
    lo, hi = 0, size
    while hi - lo > 1:
        mid = lo + _split(hi - lo)
        if index < mid:
            siblings.append(hash_range(mid, hi))
            hi = mid
        else:
            siblings.append(hash_range(lo, mid))
            lo = mid
    siblings.reverse()
    return siblings


def consistency_proof_from(hash_range: HashRange, old_size: int, new_size: int) -> list[bytes]:
    """Consistency proof from ``old_size`` to ``new_size``, asking ``hash_range`` for subtrees.

    Same output as :func:`consistency_proof` on the full list, with O(log n) ``hash_range`` calls
    on node ranges. Empty when ``old_size`` is 0 or equals ``new_size``.

    Raises :class:`ValidationError` (``BAD_SIZE``) unless ``0 <= old_size <= new_size``.
    """
    if not 0 <= old_size <= new_size:
        raise ValidationError(
            f"old size {old_size} is outside 0..{new_size} (the new size)", reason="BAD_SIZE"
        )
    if old_size in (0, new_size):
        return []
    # SUBPROOF(m, D[lo:hi], b) walked iteratively from the top, collecting from the root down.
    hashes: list[bytes] = []
    m, lo, hi, b = old_size, 0, new_size, True
    while m != hi - lo:
        k = _split(hi - lo)
        if m <= k:
            hashes.append(hash_range(lo + k, hi))
            hi = lo + k
        else:
            hashes.append(hash_range(lo, lo + k))
            m, lo, b = m - k, lo + k, False
    if not b:
        hashes.append(hash_range(lo, hi))
    hashes.reverse()
    return hashes


# --------------------------------------------------------------------------------------------
# Incremental structures
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SubtreeNode:
    """A completed perfect subtree: leaves ``[index << level, (index + 1) << level)``."""

    level: int
    index: int
    hash: bytes


class CompactRange:
    """The frontier of an append-only log: the roots of the perfect subtrees covering it.

    A tree of ``size`` leaves is a row of perfect subtrees, one per set bit of ``size``, biggest
    first (the RFC 6962 split). Appending a leaf is binary increment: it merges the trailing
    subtrees of equal height, so it costs at most ``log2(size) + 1`` hashes (amortised under 2)
    and the state is ``popcount(size) <= 64`` hashes. The root folds those hashes from the right
    in O(log n). A node stores ``(size, hashes)`` next to its log so that the next checkpoint
    needs neither the old leaves nor a full recomputation.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        """Start an empty frontier (size 0, root :data:`EMPTY_ROOT`)."""
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Rebuild a frontier saved as ``(size, hashes)``; checks the shape, not the content.

        Raises :class:`ValidationError` (``BAD_SIZE``) if there is not exactly one 32-byte hash
        per set bit of ``size``; the content itself can only be checked against a root.
        """
        if size < 0 or len(hashes) != size.bit_count():
            raise ValidationError(
                f"a frontier of size {size} needs {max(size, 0).bit_count()} hashes, "
                f"got {len(hashes)}",
                reason="BAD_SIZE",
            )
        if any(len(h) != HASH_SIZE for h in hashes):
            raise ValidationError(f"frontier hashes must be {HASH_SIZE} bytes", reason="BAD_SIZE")
        frontier = cls()
        frontier._size = size
        frontier._hashes = [bytes(h) for h in hashes]
        return frontier

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    @property
    def hashes(self) -> tuple[bytes, ...]:
        """Roots of the perfect subtrees, biggest (leftmost) first: the state to persist."""
        return tuple(self._hashes)

    def copy(self) -> CompactRange:
        """An independent frontier at the same state (to try appends before committing them)."""
        return CompactRange.from_state(self._size, self._hashes)

    def append(self, leaf: bytes) -> list[SubtreeNode]:
        """Append one leaf *hash* and return the perfect subtrees it completed.

        The list starts with the leaf itself at level 0 and goes up; a store that persists these
        nodes can later answer any ``hash_range`` with :func:`hash_range_from_nodes`.
        """
        if len(leaf) != HASH_SIZE:
            raise ValidationError(
                f"a leaf hash must be {HASH_SIZE} bytes, got {len(leaf)}", reason="BAD_SIZE"
            )
        h = bytes(leaf)
        position = self._size
        completed = [SubtreeNode(0, position, h)]
        level = 0
        while position >> level & 1:  # the trailing subtree has the same height: merge
            h = node_hash(self._hashes.pop(), h)
            level += 1
            completed.append(SubtreeNode(level, position >> level, h))
        self._hashes.append(h)
        self._size += 1
        return completed

    def extend(self, leaves: Iterable[bytes]) -> list[SubtreeNode]:
        """Append many leaf hashes in order; returns every completed subtree, in order."""
        completed: list[SubtreeNode] = []
        for leaf in leaves:
            completed.extend(self.append(leaf))
        return completed

    def root(self) -> bytes:
        """MTH of the leaves appended so far, in ``popcount(size) - 1`` hashes."""
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = node_hash(left, root)
        return root

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size}, root={self.root().hex()})"


class MemoryTree:
    """In-memory append-only log that keeps every perfect-subtree hash.

    The reference implementation of the storage side: :meth:`append` persists what
    :meth:`CompactRange.append` reports, and :meth:`hash_range` answers through
    :func:`hash_range_from_nodes`. Roots of any past size and proofs then cost O(log² n)
    lookups and hashes instead of O(n) rehashing. Each level is one ``bytearray`` of packed
    hashes, so a million leaves take about 64 MB (2n hashes of 32 bytes) rather than the
    ~130 MB of separate ``bytes`` objects. A database store does the same with a table keyed by
    ``(level, index)``.
    """

    __slots__ = ("_frontier", "_levels")

    def __init__(self, leaf_hashes: Iterable[bytes] = ()) -> None:
        """Start empty, or with ``leaf_hashes`` appended in order."""
        self._frontier = CompactRange()
        self._levels: list[bytearray] = []
        for leaf in leaf_hashes:
            self.append(leaf)

    @property
    def size(self) -> int:
        """Number of leaves in the log."""
        return self._frontier.size

    @property
    def frontier(self) -> CompactRange:
        """A copy of the current frontier (what a node checkpoints)."""
        return self._frontier.copy()

    def append(self, leaf: bytes) -> None:
        """Append one leaf hash; O(log n) worst case, amortised O(1) hashes."""
        for node in self._frontier.append(leaf):
            if node.level == len(self._levels):
                self._levels.append(bytearray())
            self._levels[node.level] += node.hash

    def node(self, level: int, index: int) -> bytes:
        """Hash of the completed perfect subtree ``(level, index)``.

        Raises :class:`ValidationError` (``BAD_RANGE``) if that subtree is not complete yet.
        """
        if not (0 <= level < len(self._levels) and 0 <= index < self.size >> level):
            raise ValidationError(
                f"no complete subtree at level {level}, index {index} in a log of {self.size}",
                reason="BAD_RANGE",
            )
        start = index * HASH_SIZE
        return bytes(self._levels[level][start : start + HASH_SIZE])

    def hash_range(self, lo: int, hi: int) -> bytes:
        """MTH of the node range ``[lo, hi)`` (``hi <= size``): the callable the provers need."""
        if hi > self.size:
            raise ValidationError(
                f"[{lo}, {hi}) goes beyond the {self.size} leaves of the log", reason="BAD_RANGE"
            )
        return hash_range_from_nodes(self.node, lo, hi)

    def root(self, size: int | None = None) -> bytes:
        """Root of the tree of the first ``size`` leaves (default: all of them)."""
        size = self.size if size is None else size
        if not 0 <= size <= self.size:
            raise ValidationError(f"tree size {size} is outside 0..{self.size}", reason="BAD_SIZE")
        if size == self.size:
            return self._frontier.root()
        return EMPTY_ROOT if size == 0 else self.hash_range(0, size)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path for leaf ``index`` in the tree of ``size`` (default: the whole log)."""
        size = self.size if size is None else size
        if size > self.size:
            raise ValidationError(
                f"tree size {size} is beyond the {self.size} leaves of the log", reason="BAD_SIZE"
            )
        return inclusion_proof_from(self.hash_range, index, size)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """Consistency proof from ``old_size`` to ``new_size`` (default: the whole log)."""
        new_size = self.size if new_size is None else new_size
        if new_size > self.size:
            raise ValidationError(
                f"tree size {new_size} is beyond the {self.size} leaves of the log",
                reason="BAD_SIZE",
            )
        return consistency_proof_from(self.hash_range, old_size, new_size)


# --------------------------------------------------------------------------------------------
# Verification (RFC 9162 §2.1.3.2 and §2.1.4.2)
# --------------------------------------------------------------------------------------------


def _check_hash(value: bytes, what: str, reason: str) -> None:
    if len(value) != HASH_SIZE:
        raise VerificationError(
            f"{what} is {len(value)} bytes, a hash is {HASH_SIZE}", reason=reason
        )


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that the leaf hash ``leaf`` is entry ``index`` of the tree of ``size`` with ``root``.

    Follows RFC 9162 §2.1.3.2: walk ``fn`` (the index) and ``sn`` (the last index) up the tree,
    putting each proof hash on the left when the path is a right child or on the right border.
    The iteration fails as soon as the proof is longer than the path (``sn`` reached 0) and the
    end requires ``sn == 0``, so a truncated or extended proof never verifies.

    Raises :class:`VerificationError` with reason ``BAD_SIZE`` (negative size), ``BAD_INDEX``
    (index outside ``0..size-1``) or ``INCLUSION_PROOF_INVALID`` (wrong hash length, wrong proof
    length, or the computed root differs).
    """
    reason = "INCLUSION_PROOF_INVALID"
    if size < 0:
        raise VerificationError(f"tree size {size} is negative", reason="BAD_SIZE")
    # Step 1: the index must fall inside the tree (this also rejects every size-0 tree).
    if not 0 <= index < size:
        raise VerificationError(
            f"leaf index {index} is outside 0..{size - 1} for tree size {size}",
            reason="BAD_INDEX",
        )
    _check_hash(leaf, "the leaf hash", reason)
    _check_hash(root, "the root", reason)
    for i, p in enumerate(proof):
        _check_hash(p, f"proof hash {i}", reason)
    # Steps 2-3.
    fn, sn = index, size - 1
    r = bytes(leaf)
    # Step 4.
    for p in proof:
        if sn == 0:
            raise VerificationError(
                f"the inclusion proof has more than the path's hashes for index {index} "
                f"in a tree of {size}",
                reason=reason,
            )
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn != 0 and not fn & 1:  # on the right border: skip levels with no sibling
                fn >>= 1
                sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    # Step 5.
    if sn != 0:
        raise VerificationError(
            f"the inclusion proof is too short for index {index} in a tree of {size}",
            reason=reason,
        )
    if r != root:
        raise VerificationError(
            f"the inclusion proof for index {index} does not lead to the root of the tree "
            f"of {size}",
            reason=reason,
        )


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree ``(old_size, old_root)`` is a prefix of ``(new_size, new_root)``.

    Special cases first, then RFC 9162 §2.1.4.2 for ``0 < old_size < new_size``:

    * ``old_size == new_size``: the proof must be empty and the roots equal (for size 0 both must
      be :data:`EMPTY_ROOT`);
    * ``old_size == 0``: every tree extends the empty tree, but only with an empty proof, and the
      old root must be :data:`EMPTY_ROOT` (a size-0 checkpoint with any other root is bogus);
    * otherwise the proof rebuilds both roots from shared hashes, and must be exactly as long as
      the path (the same ``sn`` checks as inclusion), so any change to it fails.

    Raises :class:`VerificationError` with reason ``BAD_SIZE`` (negative sizes or a shrinking
    tree) or ``CONSISTENCY_PROOF_INVALID``.
    """
    reason = "CONSISTENCY_PROOF_INVALID"
    if old_size < 0 or new_size < 0:
        raise VerificationError(
            f"tree sizes must not be negative (old {old_size}, new {new_size})", reason="BAD_SIZE"
        )
    if old_size > new_size:
        raise VerificationError(
            f"the tree shrank from {old_size} to {new_size}: an append-only log never does",
            reason="BAD_SIZE",
        )
    _check_hash(old_root, "the old root", reason)
    _check_hash(new_root, "the new root", reason)
    for i, c in enumerate(proof):
        _check_hash(c, f"proof hash {i}", reason)

    if old_size in (0, new_size):
        if proof:
            raise VerificationError(
                f"a consistency proof from {old_size} to {new_size} must be empty, "
                f"got {len(proof)} hashes",
                reason=reason,
            )
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise VerificationError("a tree of size 0 must have the empty root", reason=reason)
        if old_size == new_size and old_root != new_root:
            raise VerificationError(
                f"two different roots for the same tree size {new_size}", reason=reason
            )
        return

    # Step 1.
    if not proof:
        raise VerificationError(
            f"an empty consistency proof cannot link {old_size} to {new_size}", reason=reason
        )
    path = list(proof)
    # Step 2: a power-of-two old tree is itself a node of the new tree; its root starts the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # Step 3.
    fn, sn = old_size - 1, new_size - 1
    # Step 4.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # Step 5.
    fr = sr = path[0]
    # Step 6.
    for c in path[1:]:
        if sn == 0:
            raise VerificationError(
                f"the consistency proof from {old_size} to {new_size} is too long", reason=reason
            )
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            while fn != 0 and not fn & 1:  # on the right border: skip levels with no sibling
                fn >>= 1
                sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    # Step 7.
    if sn != 0:
        raise VerificationError(
            f"the consistency proof from {old_size} to {new_size} is too short", reason=reason
        )
    if fr != old_root:
        raise VerificationError(
            f"the consistency proof does not rebuild the old root of size {old_size}",
            reason=reason,
        )
    if sr != new_root:
        raise VerificationError(
            f"the consistency proof does not rebuild the new root of size {new_size}",
            reason=reason,
        )
