"""Tests for federation.merkle: RFC 6962 vectors, every rejection path, and properties.

Expected hashes are never computed here by the code under test: they come from
tests/data/merkle/, copied from transparency-dev/merkle (proof/verify_test.go, rfc6962_test.go and
testdata/, which carry the certificate-transparency RFC 6962 reference vectors); see the
"source" fields in those files. The properties then compare the production paths (level-wise root,
CompactRange, MemoryTree, hash_range provers) with a literal transcription of RFC 6962's MTH.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.errors import ValidationError, VerificationError
from federation.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    CompactRange,
    MemoryTree,
    audit_paths,
    consistency_proof,
    consistency_proof_from,
    hash_range_from_nodes,
    inclusion_proof,
    inclusion_proof_from,
    is_node_range,
    leaf_hash,
    node_hash,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

DATA = Path(__file__).resolve().parent.parent / "data" / "merkle"
VECTORS: dict[str, Any] = json.loads((DATA / "verify_test_vectors.json").read_text())
TESTDATA: dict[str, Any] = json.loads((DATA / "transparency_dev_testdata.json").read_text())

LEAF_DATA = [bytes.fromhex(x) for x in VECTORS["leaves"]]
LEAF_HASHES = [leaf_hash(d) for d in LEAF_DATA]
ROOTS = [bytes.fromhex(x) for x in VECTORS["roots"]]  # ROOTS[n - 1] is the root of size n
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")

FAST = settings(max_examples=150, deadline=None)


def mth(d: Sequence[bytes]) -> bytes:
    """Independent oracle: RFC 6962 §2.1 MTH transcribed literally (recursive split)."""
    n = len(d)
    if n == 0:
        return EMPTY_ROOT
    if n == 1:
        return d[0]
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(d[:k]), mth(d[k:]))


@cache
def synthetic_leaves(n: int) -> tuple[bytes, ...]:
    """Deterministic, distinct leaf hashes for property tests (cached: sizes repeat a lot)."""
    return tuple(leaf_hash(b"entry %d" % i) for i in range(n))


def flip(h: bytes, bit: int) -> bytes:
    """``h`` with one bit inverted."""
    b = bytearray(h)
    b[bit // 8] ^= 1 << (bit % 8)
    return bytes(b)


def inclusion_len(index: int, size: int) -> int:
    """Proof length the tree shape demands, with a hash_range that returns placeholders."""
    return len(inclusion_proof_from(lambda lo, hi: b"", index, size))


def consistency_len(old: int, new: int) -> int:
    """Consistency proof length the two tree shapes demand."""
    return len(consistency_proof_from(lambda lo, hi: b"", old, new))


def rejects_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> str:
    """Run verify_inclusion expecting a failure; return its reason."""
    with pytest.raises(VerificationError) as err:
        verify_inclusion(leaf, index, size, proof, root)
    return err.value.reason


def rejects_consistency(
    old: int, new: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> str:
    """Run verify_consistency expecting a failure; return its reason."""
    with pytest.raises(VerificationError) as err:
        verify_consistency(old, new, old_root, new_root, proof)
    return err.value.reason


# ---------------------------------------------------------------------------------------------
# Reference vectors
# ---------------------------------------------------------------------------------------------


def test_hasher_vectors() -> None:
    hv = VECTORS["hasher"]
    assert (
        EMPTY_ROOT == bytes.fromhex(hv["empty_root"]) == bytes.fromhex(VECTORS["empty_tree_hash"])
    )
    assert leaf_hash(b"") == bytes.fromhex(hv["empty_leaf"])
    assert leaf_hash(b"L123456") == bytes.fromhex(hv["leaf_L123456"])
    assert node_hash(b"N123", b"N456") == bytes.fromhex(hv["node_N123_N456"])
    # The empty tree is not the tree of one empty leaf, and leaf/node domains are separated.
    assert root_from_leaf_hashes([]) != root_from_leaf_hashes([leaf_hash(b"")])
    a, b = leaf_hash(b"Hello"), leaf_hash(b"World")
    assert node_hash(a, b) != leaf_hash(a + b)
    assert node_hash(a, b) != node_hash(b, a)


@pytest.mark.parametrize("size", range(1, 9))
def test_reference_roots(size: int) -> None:
    expected = ROOTS[size - 1]
    assert root_from_leaf_hashes(LEAF_HASHES[:size]) == expected
    assert mth(LEAF_HASHES[:size]) == expected
    frontier = CompactRange()
    frontier.extend(LEAF_HASHES[:size])
    assert frontier.root() == expected
    tree = MemoryTree(LEAF_HASHES)
    assert tree.root(size) == expected


def test_empty_tree_root() -> None:
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT
    assert MemoryTree().root() == EMPTY_ROOT
    assert MemoryTree(LEAF_HASHES).root(0) == EMPTY_ROOT


@pytest.mark.parametrize("case", VECTORS["inclusion"], ids=lambda c: f"{c['leaf'] - 1}/{c['size']}")
def test_reference_inclusion(case: dict[str, Any]) -> None:
    index, size = case["leaf"] - 1, case["size"]
    expected = [bytes.fromhex(h) for h in case["proof"]]
    root = ROOTS[size - 1]
    assert inclusion_proof(LEAF_HASHES, index, size) == expected
    assert MemoryTree(LEAF_HASHES).inclusion_proof(index, size) == expected
    verify_inclusion(LEAF_HASHES[index], index, size, expected, root)
    # The corruptions of transparency-dev's corruptInclusionProof, all of which must fail.
    leaf = LEAF_HASHES[index]
    probes: list[tuple[bytes, int, int, list[bytes], bytes]] = [
        (leaf, index - 1, size, expected, root),
        (leaf, index + 1, size, expected, root),
        (leaf, index ^ 2, size, expected, root),
        (leaf, index, size * 2, expected, root),
        (leaf, index, size // 2, expected, root),
        (b"WrongLeaf", index, size, expected, root),
        (leaf, index, size, expected, EMPTY_ROOT),
        (leaf, index, size, expected, SOME_HASH),
        (leaf, index, size, [*expected, b""], root),
        (leaf, index, size, [*expected, root], root),
        (leaf, index, size, [b"", *expected], root),
        (leaf, index, size, [root, *expected], root),
    ]
    for i in range(len(expected)):
        wrong = list(expected)
        wrong[i] = bytes([wrong[i][0] ^ 8]) + wrong[i][1:]
        probes.append((leaf, index, size, wrong, root))
    if expected:
        probes.append((leaf, index, size, expected[:-1], root))
    if len(expected) > 1:
        probes.append((leaf, index, size, [expected[0], SOME_HASH, *expected[1:]], root))
    for probe in probes:
        rejects_inclusion(*probe)


@pytest.mark.parametrize("case", VECTORS["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_reference_consistency(case: dict[str, Any]) -> None:
    old, new = case["size1"], case["size2"]
    expected = [bytes.fromhex(h) for h in case["proof"]]
    r1, r2 = ROOTS[old - 1], ROOTS[new - 1]
    assert consistency_proof(LEAF_HASHES, old, new) == expected
    assert MemoryTree(LEAF_HASHES).consistency_proof(old, new) == expected
    verify_consistency(old, new, r1, r2, expected)
    if not expected:
        return
    # The corruptions of transparency-dev's corruptConsistencyProof, all of which must fail.
    probes: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (old - 1, new, r1, r2, expected),
        (old + 1, new, r1, r2, expected),
        (old ^ 2, new, r1, r2, expected),
        (old, new * 2, r1, r2, expected),
        (old, new // 2, r1, r2, expected),
        (old, new, b"WrongRoot", r2, expected),
        (old, new, r1, b"WrongRoot", expected),
        (old, new, r2, r1, expected),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*expected, b""]),
        (old, new, r1, r2, [*expected, r1]),
        (old, new, r1, r2, [*expected, r2]),
        (old, new, r1, r2, [b"", *expected]),
        (old, new, r1, r2, [r1, *expected]),
        (old, new, r1, r2, [r2, *expected]),
        (old, new, r1, r2, [expected[0], *expected]),
        (old, new, r1, r2, expected[:-1]),
    ]
    for i in range(len(expected)):
        wrong = list(expected)
        wrong[i] = bytes([wrong[i][0] ^ 16]) + wrong[i][1:]
        probes.append((old, new, r1, r2, wrong))
    for probe in probes:
        rejects_consistency(*probe)


def _b64_list(proof: list[str] | None) -> list[bytes]:
    return [base64.b64decode(p) for p in proof or []]


@pytest.mark.parametrize("case", TESTDATA["inclusion"], ids=lambda c: c["file"])
def test_transparency_dev_inclusion_files(case: dict[str, Any]) -> None:
    args = (
        base64.b64decode(case["leafHash"]),
        case["leafIdx"],
        case["treeSize"],
        _b64_list(case["proof"]),
        base64.b64decode(case["root"]),
    )
    if case["wantErr"]:
        rejects_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("case", TESTDATA["consistency"], ids=lambda c: c["file"])
def test_transparency_dev_consistency_files(case: dict[str, Any]) -> None:
    args = (
        case["size1"],
        case["size2"],
        base64.b64decode(case["root1"]),
        base64.b64decode(case["root2"]),
        _b64_list(case["proof"]),
    )
    if case["wantErr"]:
        rejects_consistency(*args)
    else:
        verify_consistency(*args)


def test_testdata_leaf_hashes_match_vector_leaves() -> None:
    """The base64 files and the hex vectors describe the same tree."""
    happy = [c for c in TESTDATA["inclusion"] if not c["wantErr"]]
    assert len(happy) == 5
    for case in happy:
        assert LEAF_HASHES[case["leafIdx"]] == base64.b64decode(case["leafHash"])
        assert ROOTS[case["treeSize"] - 1] == base64.b64decode(case["root"])


# ---------------------------------------------------------------------------------------------
# Edge cases and every rejection path of the verifiers
# ---------------------------------------------------------------------------------------------


def test_one_leaf_tree() -> None:
    h = leaf_hash(b"data")
    assert root_from_leaf_hashes([h]) == h
    assert inclusion_proof([h], 0, 1) == []
    verify_inclusion(h, 0, 1, [], h)
    assert rejects_inclusion(h, 0, 1, [], EMPTY_ROOT) == "INCLUSION_PROOF_INVALID"
    assert rejects_inclusion(b"", 0, 1, [], h) == "INCLUSION_PROOF_INVALID"
    assert rejects_inclusion(h, 0, 1, [], b"") == "INCLUSION_PROOF_INVALID"
    assert rejects_inclusion(h, 0, 1, [h], h) == "INCLUSION_PROOF_INVALID"
    assert consistency_proof([h], 0, 1) == []
    assert consistency_proof([h], 1, 1) == []
    verify_consistency(1, 1, h, h, [])
    verify_consistency(0, 1, EMPTY_ROOT, h, [])


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 0), (2, 1), (1, 1), (-1, 5), (5, 5)])
def test_inclusion_bad_index(index: int, size: int) -> None:
    for leaf, root in [(SOME_HASH, EMPTY_ROOT), (SOME_HASH, SOME_HASH), (b"", b"")]:
        assert rejects_inclusion(leaf, index, size, [], root) == "BAD_INDEX"


def test_inclusion_negative_size() -> None:
    assert rejects_inclusion(SOME_HASH, 0, -1, [], SOME_HASH) == "BAD_SIZE"


def test_inclusion_rejects_malformed_hashes() -> None:
    proof = inclusion_proof(LEAF_HASHES, 5, 8)
    for bad in (b"", proof[1][:-1], proof[1] + b"\x00"):
        wrong = [proof[0], bad, proof[2]]
        assert rejects_inclusion(LEAF_HASHES[5], 5, 8, wrong, ROOTS[7]) == "INCLUSION_PROOF_INVALID"
    assert (
        rejects_inclusion(LEAF_HASHES[5], 5, 8, proof, ROOTS[7][:-1]) == "INCLUSION_PROOF_INVALID"
    )


def test_rejections_say_what_is_wrong() -> None:
    """The one-line diagnostics name the problem, not just "failed"."""
    leaf, proof, root = LEAF_HASHES[5], inclusion_proof(LEAF_HASHES, 5, 8), ROOTS[7]
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: verify_inclusion(leaf, 5, 8, [*proof, root], root), "more than the path"),
        (lambda: verify_inclusion(leaf, 5, 8, proof[:-1], root), "too short"),
        (lambda: verify_inclusion(leaf, 5, 8, proof, ROOTS[6]), "does not lead to the root"),
        (lambda: verify_inclusion(leaf, 8, 8, proof, root), "outside 0..7"),
    ]
    cproof = consistency_proof(LEAF_HASHES, 6, 8)
    cases += [
        (lambda: verify_consistency(6, 8, ROOTS[5], root, [*cproof, root]), "too long"),
        (lambda: verify_consistency(6, 8, ROOTS[5], root, cproof[:-1]), "too short"),
        (lambda: verify_consistency(6, 8, ROOTS[4], root, cproof), "old root"),
        (lambda: verify_consistency(6, 8, ROOTS[5], ROOTS[6], cproof), "new root"),
        (lambda: verify_consistency(8, 6, root, ROOTS[5], []), "shrank"),
        (lambda: verify_consistency(6, 8, ROOTS[5], root, []), "empty consistency proof"),
    ]
    for call, words in cases:
        with pytest.raises(VerificationError) as err:
            call()
        assert words in str(err.value)
        assert err.value.reason in err.value.diagnostics()


def test_inclusion_proof_does_not_bind_the_size() -> None:
    """Documented limitation (RFC 6962): leaf 0's path has the same shape in trees of 3 and 4.

    So the same hashes verify for both sizes against the size-4 root; the signed checkpoint is
    what binds size and root together. The test keeps that fact visible to callers.
    """
    tree = MemoryTree(synthetic_leaves(4))
    proof = tree.inclusion_proof(0, 4)
    verify_inclusion(tree.node(0, 0), 0, 4, proof, tree.root())
    verify_inclusion(tree.node(0, 0), 0, 3, proof, tree.root())


def test_consistency_special_cases() -> None:
    """transparency-dev TestVerifyConsistency, adapted: roots are 32 bytes, size 0 is empty."""
    r1, r2 = leaf_hash(b"don't care 1"), leaf_hash(b"don't care 2")
    ok: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, []),
        (0, 1, EMPTY_ROOT, r2, []),
        (0, 5, EMPTY_ROOT, r1, []),
        (1, 1, r2, r2, []),
        (7, 7, r1, r1, []),
    ]
    for args in ok:
        verify_consistency(*args)
    bad_proof = [
        (0, 0, r1, r2, []),  # different roots for one size
        (1, 1, r1, r2, []),
        (0, 0, r1, r1, []),  # size 0 must have the empty root
        (0, 3, r1, r2, []),
        (1, 2, r1, r2, []),  # empty proof between different sizes
        (1, 1, EMPTY_ROOT, r2, []),
        (0, 0, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),  # equal roots but a proof
        (0, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (1, 1, EMPTY_ROOT, EMPTY_ROOT, [EMPTY_ROOT]),
        (0, 0, b"", b"", []),  # malformed hashes
        (3, 3, r1[:31], r1[:31], []),
        (3, 5, r1, r2, [r1[:16]]),
    ]
    for args in bad_proof:
        assert rejects_consistency(*args) == "CONSISTENCY_PROOF_INVALID", args
    bad_size: list[tuple[int, int, bytes, bytes, list[bytes]]] = [
        (1, 0, r1, r2, []),
        (2, 1, r1, r2, []),
        (-1, 3, r1, r2, []),
        (0, -1, r1, r2, []),
    ]
    for args in bad_size:
        assert rejects_consistency(*args) == "BAD_SIZE", args


# ---------------------------------------------------------------------------------------------
# Provers: bad requests and agreement between the two paths
# ---------------------------------------------------------------------------------------------


def test_prover_rejects_bad_requests() -> None:
    leaves = synthetic_leaves(10)
    for index, size in [(0, 0), (10, 10), (-1, 5), (3, 3)]:
        with pytest.raises(ValidationError) as err:
            inclusion_proof(leaves, index, size)
        assert err.value.reason == "BAD_INDEX"
        with pytest.raises(ValidationError) as err:
            inclusion_proof_from(MemoryTree(leaves).hash_range, index, size)
        assert err.value.reason == "BAD_INDEX"
    for size in (11, -1):
        with pytest.raises(ValidationError) as err:
            inclusion_proof(leaves, 0, size)
        assert err.value.reason == "BAD_SIZE"
    for old, new in [(5, 4), (-1, 3), (0, 11), (3, 11)]:
        with pytest.raises(ValidationError) as err:
            consistency_proof(leaves, old, new)
        assert err.value.reason == "BAD_SIZE"
    tree = MemoryTree(leaves)
    calls: list[Callable[[], object]] = [
        lambda: tree.inclusion_proof(0, 11),
        lambda: tree.consistency_proof(3, 11),
        lambda: tree.consistency_proof(4, 3),
        lambda: tree.root(11),
        lambda: tree.root(-1),
    ]
    for call in calls:
        with pytest.raises(ValidationError) as err:
            call()
        assert err.value.reason == "BAD_SIZE"


def test_hash_range_refuses_ranges_that_are_not_nodes() -> None:
    tree = MemoryTree(synthetic_leaves(16))
    for lo, hi in [(1, 3), (2, 5), (0, 0), (3, 2), (-2, 2), (4, 9), (8, 17)]:
        with pytest.raises(ValidationError) as err:
            tree.hash_range(lo, hi)
        assert err.value.reason == "BAD_RANGE"
    with pytest.raises(ValidationError):
        tree.node(0, 16)
    with pytest.raises(ValidationError):
        tree.node(5, 0)
    with pytest.raises(ValidationError):
        tree.node(-1, 0)
    assert is_node_range(4, 7)
    assert is_node_range(8, 16)
    assert not is_node_range(4, 9)


def test_every_node_range_matches_mth() -> None:
    leaves = synthetic_leaves(40)
    tree = MemoryTree(leaves)
    for lo in range(40):
        for hi in range(lo + 1, 41):
            if is_node_range(lo, hi):
                assert tree.hash_range(lo, hi) == mth(leaves[lo:hi])
                assert hash_range_from_nodes(tree.node, lo, hi) == mth(leaves[lo:hi])


def test_all_proofs_agree_exhaustively_for_small_trees() -> None:
    """Up to 33 leaves, every proof of both kinds from both paths, and each verifies."""
    leaves = synthetic_leaves(33)
    tree = MemoryTree(leaves)
    roots = [mth(leaves[:n]) for n in range(34)]
    for size in range(1, 34):
        for index in range(size):
            proof = inclusion_proof(leaves, index, size)
            assert tree.inclusion_proof(index, size) == proof
            assert len(proof) == inclusion_len(index, size)
            verify_inclusion(leaves[index], index, size, proof, roots[size])
    for new in range(34):
        for old in range(new + 1):
            proof = consistency_proof(leaves, old, new)
            assert tree.consistency_proof(old, new) == proof
            verify_consistency(old, new, roots[old], roots[new], proof)


# ---------------------------------------------------------------------------------------------
# CompactRange and MemoryTree
# ---------------------------------------------------------------------------------------------


def test_compact_range_root_equals_mth_for_every_size() -> None:
    leaves = synthetic_leaves(300)
    frontier = CompactRange()
    assert frontier.root() == EMPTY_ROOT
    for n, leaf in enumerate(leaves, start=1):
        nodes = frontier.append(leaf)
        assert frontier.size == n
        assert len(frontier.hashes) == n.bit_count()
        assert frontier.root() == mth(leaves[:n])
        # Reported nodes: the leaf first, then each completed perfect subtree, with its hash.
        assert nodes[0].level == 0
        assert nodes[0].index == n - 1
        for node in nodes:
            start = node.index << node.level
            assert start + (1 << node.level) == n
            assert node.hash == mth(leaves[start:n])


def test_compact_range_state_round_trip() -> None:
    leaves = synthetic_leaves(77)
    frontier = CompactRange()
    frontier.extend(leaves[:50])
    restored = CompactRange.from_state(frontier.size, frontier.hashes)
    copy = frontier.copy()
    frontier.extend(leaves[50:])
    restored.extend(leaves[50:])
    assert restored.root() == frontier.root() == mth(leaves)
    assert copy.size == 50
    assert copy.root() == mth(leaves[:50])
    assert "size=77" in repr(restored)


@pytest.mark.parametrize(
    ("size", "hashes"),
    [
        (3, [SOME_HASH]),
        (0, [SOME_HASH]),
        (4, []),
        (-1, []),
        (3, [SOME_HASH, SOME_HASH[:31]]),
    ],
)
def test_compact_range_rejects_bad_state(size: int, hashes: list[bytes]) -> None:
    with pytest.raises(ValidationError) as err:
        CompactRange.from_state(size, hashes)
    assert err.value.reason == "BAD_SIZE"


def test_compact_range_rejects_bad_leaf() -> None:
    frontier = CompactRange()
    with pytest.raises(ValidationError):
        frontier.append(b"not a hash")
    assert frontier.size == 0  # nothing changed


def test_memory_tree_larger_log() -> None:
    """A log of 2**13 + 5 leaves: past roots and proofs from stored nodes match the reference."""
    n = 2**13 + 5
    leaves = synthetic_leaves(n)
    tree = MemoryTree(leaves)
    assert tree.size == n
    assert tree.root() == root_from_leaf_hashes(leaves) == tree.frontier.root()
    for size, index in [(n, 0), (n, n - 1), (n, 4097), (5000, 4999), (4096, 1234), (3, 2)]:
        proof = tree.inclusion_proof(index, size)
        assert proof == inclusion_proof(leaves, index, size)
        verify_inclusion(leaves[index], index, size, proof, tree.root(size))
    for old, new in [(1, n), (4096, n), (4097, n), (n - 1, n), (1000, 5000)]:
        proof = tree.consistency_proof(old, new)
        assert proof == consistency_proof(leaves, old, new)
        verify_consistency(old, new, tree.root(old), tree.root(new), proof)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(1, 300))
    return size, draw(st.integers(0, size - 1))


@st.composite
def tree_sizes(draw: st.DrawFn) -> tuple[int, int]:
    new = draw(st.integers(1, 300))
    return draw(st.integers(0, new)), new


@FAST
@given(tree_and_index(), st.data())
def test_inclusion_property(params: tuple[int, int], data: st.DataObject) -> None:
    size, index = params
    leaves = synthetic_leaves(size)
    root = mth(leaves)
    leaf = leaves[index]
    proof = inclusion_proof(leaves, index, size)
    assert inclusion_proof_from(MemoryTree(leaves).hash_range, index, size) == proof
    assert inclusion_proof_from(lambda lo, hi: mth(leaves[lo:hi]), index, size) == proof
    verify_inclusion(leaf, index, size, proof, root)

    # Any single flipped bit, in any proof hash, the leaf or the root.
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1))
        wrong = list(proof)
        wrong[i] = flip(wrong[i], bit)
        assert rejects_inclusion(leaf, index, size, wrong, root) == "INCLUSION_PROOF_INVALID"
    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1))
    rejects_inclusion(flip(leaf, bit), index, size, proof, root)
    rejects_inclusion(leaf, index, size, proof, flip(root, bit))
    # Truncated, extended at either end, or with an element dropped in the middle.
    extra = data.draw(st.sampled_from([root, leaf, SOME_HASH, *proof]))
    rejects_inclusion(leaf, index, size, [*proof, extra], root)
    rejects_inclusion(leaf, index, size, [extra, *proof], root)
    if proof:
        rejects_inclusion(leaf, index, size, proof[:-1], root)
        rejects_inclusion(leaf, index, size, proof[1:], root)
    # Any other index in the same tree, or one outside it.
    other = data.draw(st.integers(-3, size + 3).filter(lambda j: j != index))
    reason = rejects_inclusion(leaf, other, size, proof, root)
    assert reason == ("BAD_INDEX" if not 0 <= other < size else "INCLUSION_PROOF_INVALID")
    # Another size can only pass if the path has exactly the same shape (see the limitation test).
    for other_size in {size - 1, size + 1, size * 2, size // 2, data.draw(st.integers(0, 600))}:
        if other_size == size:
            continue
        try:
            verify_inclusion(leaf, index, other_size, proof, root)
        except VerificationError:
            continue
        assert inclusion_len(index, other_size) == len(proof)


@FAST
@given(tree_sizes(), st.data())
def test_consistency_property(sizes: tuple[int, int], data: st.DataObject) -> None:
    old, new = sizes
    leaves = synthetic_leaves(new)
    old_root, new_root = mth(leaves[:old]), mth(leaves)
    proof = consistency_proof(leaves, old, new)
    assert consistency_proof_from(MemoryTree(leaves).hash_range, old, new) == proof
    assert consistency_proof_from(lambda lo, hi: mth(leaves[lo:hi]), old, new) == proof
    verify_consistency(old, new, old_root, new_root, proof)

    bit = data.draw(st.integers(0, HASH_SIZE * 8 - 1))
    if proof:
        i = data.draw(st.integers(0, len(proof) - 1))
        wrong = list(proof)
        wrong[i] = flip(wrong[i], bit)
        assert rejects_consistency(old, new, old_root, new_root, wrong) == (
            "CONSISTENCY_PROOF_INVALID"
        )
        rejects_consistency(old, new, old_root, new_root, proof[:-1])
        rejects_consistency(old, new, old_root, new_root, proof[1:])
    rejects_consistency(old, new, flip(old_root, bit), new_root, proof)
    if not (old == 0 and new > 0):  # the empty tree is a prefix of every tree
        rejects_consistency(old, new, old_root, flip(new_root, bit), proof)
    if old_root != new_root:
        rejects_consistency(old, new, new_root, old_root, proof)
    extra = data.draw(st.sampled_from([old_root, new_root, SOME_HASH, *proof]))
    rejects_consistency(old, new, old_root, new_root, [*proof, extra])
    rejects_consistency(old, new, old_root, new_root, [extra, *proof])
    # Other sizes can only pass where both tree shapes demand the very same proof length.
    candidates = {
        (old - 1, new),
        (old + 1, new),
        (old, new - 1),
        (old, new + 1),
        (old, new * 2),
        (old // 2, new),
        (data.draw(st.integers(0, 300)), data.draw(st.integers(0, 600))),
    }
    for o, n in candidates:
        if (o, n) == (old, new):
            continue
        try:
            verify_consistency(o, n, old_root, new_root, proof)
        except VerificationError as err:
            if not 0 <= o <= n:
                assert err.reason == "BAD_SIZE"
            continue
        assert 0 <= o <= n
        assert consistency_len(o, n) == len(proof)


@FAST
@given(st.lists(st.binary(max_size=40), max_size=40))
def test_roots_agree_on_arbitrary_leaves(data: list[bytes]) -> None:
    hashes = [leaf_hash(d) for d in data]
    frontier = CompactRange()
    frontier.extend(hashes)
    expected = mth(hashes)
    assert root_from_leaf_hashes(hashes) == expected
    assert frontier.root() == expected
    assert MemoryTree(hashes).root() == expected


hashes_or_junk = st.one_of(
    st.binary(min_size=HASH_SIZE, max_size=HASH_SIZE), st.binary(max_size=40)
)


@settings(max_examples=300, deadline=None)
@given(
    st.integers(-(2**70), 2**70),
    st.integers(-(2**70), 2**70),
    hashes_or_junk,
    hashes_or_junk,
    st.lists(hashes_or_junk, max_size=80),
)
def test_verifiers_only_raise_verification_error(
    a: int, b: int, h1: bytes, h2: bytes, proof: list[bytes]
) -> None:
    """Peer-supplied garbage fails only with VerificationError, never ValueError/IndexError."""
    calls: list[Callable[[], None]] = [
        lambda: verify_inclusion(h1, a, b, proof, h2),
        lambda: verify_consistency(a, b, h1, h2, proof),
        lambda: verify_consistency(abs(a) % 64, abs(b) % 64, h1, h2, proof),
    ]
    for call in calls:
        try:
            call()
        except VerificationError as err:
            assert err.reason in {
                "BAD_INDEX",
                "BAD_SIZE",
                "INCLUSION_PROOF_INVALID",
                "CONSISTENCY_PROOF_INVALID",
            }


# --- every audit path at once (batch receipts) ----------------------------------------------------


@given(st.integers(min_value=1, max_value=70))
def test_audit_paths_are_rfc_6962_inclusion_proofs(n: int) -> None:
    leaves = [leaf_hash(i.to_bytes(4, "big")) for i in range(n)]
    root, paths = audit_paths(leaves)
    assert root == root_from_leaf_hashes(leaves)
    assert paths == [inclusion_proof(leaves, i, n) for i in range(n)]


def test_audit_paths_of_nothing_is_an_error() -> None:
    with pytest.raises(ValidationError):
        audit_paths([])
