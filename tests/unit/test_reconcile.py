"""Tests for federation.reconcile: planning, verified pulls, wire estimates.

Checkpoints here are unsigned bodies (:func:`parse_body`): signatures are test_checkpoint's
business, and verify_pulled takes a checkpoint whose signature the caller already checked. One
test goes through the witness to show what becomes of a fork between different sizes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.checkpoint import (
    Checkpoint,
    cosign,
    format_body,
    make_checkpoint,
    parse_body,
    parse_checkpoint,
)
from federation.crypto import Signer
from federation.errors import ValidationError, VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import EMPTY_ROOT, CompactRange, MemoryTree, leaf_hash
from federation.reconcile import (
    Action,
    ActionKind,
    Frontier,
    estimate_wire_bytes,
    plan,
    signed_checkpoint_bytes,
    verify_pulled,
)
from federation.witness import Outcome, WitnessState, prefix_proof, witness_update

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
ORIGINS = (SH, JS, ZJ)
FAST = settings(max_examples=120, deadline=None)

Logs = dict[str, list[bytes]]


def tree(entries: Sequence[bytes]) -> MemoryTree:
    return MemoryTree(leaf_hash(e) for e in entries)


def compact(entries: Sequence[bytes]) -> CompactRange:
    frontier = CompactRange()
    frontier.extend(leaf_hash(e) for e in entries)
    return frontier


def checkpoint(origin: str, entries: Sequence[bytes]) -> Checkpoint:
    """The (already verified, in real life) checkpoint of a log holding ``entries``."""
    return parse_body(format_body(origin, len(entries), tree(entries).root(), timestamp=1))


def frontier_of(logs: Mapping[str, Sequence[bytes]]) -> dict[str, tuple[int, bytes]]:
    return {origin: (len(es), tree(es).root()) for origin, es in logs.items()}


def pull_all(mine: Logs, theirs: Mapping[str, Sequence[bytes]]) -> list[Action]:
    """One side's half of a round: plan, then pull and verify every PULL; returns the plan."""
    actions = plan(frontier_of(mine), frontier_of(theirs))
    for a in actions:
        if a.kind is not ActionKind.PULL:
            continue
        source = theirs[a.origin]
        held = mine.get(a.origin, [])
        pulled = verify_pulled(
            source[a.start : a.end],
            compact(held),
            a.my_root,
            checkpoint(a.origin, source),
            tree(source).consistency_proof(a.start, a.end),
        )
        assert pulled.frontier.size == a.end
        assert pulled.leaf_hashes == tuple(leaf_hash(e) for e in source[a.start : a.end])
        mine[a.origin] = [*held, *source[a.start : a.end]]
    return actions


# --------------------------------------------------------------------------------------------
# One round converges
# --------------------------------------------------------------------------------------------


@st.composite
def prefix_pair(draw: st.DrawFn) -> tuple[Logs, Logs]:
    """Two members' copies of three logs; per origin one copy is a prefix of the other."""
    a: Logs = {}
    b: Logs = {}
    for origin in ORIGINS:
        full = draw(st.lists(st.binary(max_size=24), max_size=40))
        ka = draw(st.integers(0, len(full)))
        kb = draw(st.integers(0, len(full)))
        for side, k in ((a, ka), (b, kb)):
            if k or draw(st.booleans()):  # an empty log may also be absent
                side[origin] = full[:k]
    return a, b


@FAST
@given(prefix_pair())
def test_prefix_logs_converge_in_one_round(pair: tuple[Logs, Logs]) -> None:
    a, b = pair
    # Both sides serve what they held when the round started.
    a0, b0 = {o: list(es) for o, es in a.items()}, {o: list(es) for o, es in b.items()}
    plan_a, plan_b = pull_all(a, b0), pull_all(b, a0)
    # Each side's plan is the mirror of the other's.
    mirror = {ActionKind.PULL: ActionKind.BEHIND, ActionKind.BEHIND: ActionKind.PULL}
    for x, y in zip(plan_a, plan_b, strict=True):
        assert (x.origin, x.count) == (y.origin, y.count)
        assert y.kind == mirror.get(x.kind, x.kind)
        assert x.kind is not ActionKind.FORKED
    # After one round both hold every log in full.
    assert all(x.kind is ActionKind.CONVERGED for x in plan(frontier_of(a), frontier_of(b)))
    for origin in ORIGINS:
        assert a.get(origin, []) == b.get(origin, [])


def test_plan_per_origin() -> None:
    r = tree([b"x", b"y"]).root()
    other = tree([b"x", b"z"]).root()
    r5 = tree([b"x"] * 5).root()
    mine: Frontier = {SH: (2, r), JS: (2, r), ZJ: (5, r5), AH: (0, EMPTY_ROOT)}
    theirs: Frontier = {SH: (2, r), JS: (2, other), ZJ: (2, r), "350000": (5, r5)}
    actions = {a.origin: a for a in plan(mine, theirs)}
    assert [a.origin for a in plan(mine, theirs)] == sorted(actions)
    assert actions[SH].kind is ActionKind.CONVERGED
    assert actions[JS].kind is ActionKind.FORKED
    assert (actions[ZJ].kind, actions[ZJ].count) == (ActionKind.BEHIND, 3)
    assert actions[AH].kind is ActionKind.CONVERGED  # empty and absent are the same tree
    new = actions["350000"]
    assert (new.kind, new.start, new.end, new.count) == (ActionKind.PULL, 0, 5, 5)
    assert new.my_root == EMPTY_ROOT and new.their_root == r5


@pytest.mark.parametrize(
    "bad",
    [(-1, EMPTY_ROOT), (1, b"\x00" * 31), (0, b"\x00" * 32), (2**63, EMPTY_ROOT)],
)
def test_malformed_frontiers(bad: tuple[int, bytes]) -> None:
    for mine, theirs in (({SH: bad}, {}), ({}, {SH: bad})):
        with pytest.raises(VerificationError) as ei:
            plan(mine, theirs)
        assert ei.value.reason == "FRONTIER_MALFORMED"


# --------------------------------------------------------------------------------------------
# Pulls are verified
# --------------------------------------------------------------------------------------------


@FAST
@given(st.lists(st.binary(min_size=1, max_size=24), min_size=1, max_size=40), st.data())
def test_altered_relayed_entry_is_refused(entries: list[bytes], data: st.DataObject) -> None:
    k = data.draw(st.integers(0, len(entries) - 1))
    i = data.draw(st.integers(k, len(entries) - 1))
    pos = data.draw(st.integers(0, len(entries[i]) - 1))
    flip = data.draw(st.integers(1, 255))
    pulled = list(entries[k:])
    e = pulled[i - k]
    pulled[i - k] = e[:pos] + bytes([e[pos] ^ flip]) + e[pos + 1 :]
    mine = compact(entries[:k])
    with pytest.raises(VerificationError) as ei:
        verify_pulled(
            pulled,
            mine,
            mine.root(),
            checkpoint(SH, entries),
            tree(entries).consistency_proof(k, len(entries)),
        )
    assert ei.value.reason == "ENTRY_MISMATCH"


def test_pull_refusals() -> None:
    entries = [b"e%d" % i for i in range(9)]
    k = 4
    mine, good = compact(entries[:k]), entries[k:]
    cp = checkpoint(SH, entries)
    proof = tree(entries).consistency_proof(k, 9)
    cases: list[tuple[str, list[bytes], bytes, Checkpoint, list[bytes]]] = [
        ("ENTRY_MISMATCH", good[:-1], mine.root(), cp, proof),
        ("ENTRY_MISMATCH", [*good, b"extra"], mine.root(), cp, proof),
        ("ENTRY_MISMATCH", [good[1], good[0], *good[2:]], mine.root(), cp, proof),
        ("ENTRY_MISMATCH", [good[0], good[0], *good[2:]], mine.root(), cp, proof),
        ("ENTRY_MISMATCH", [*good[:-1], good[-1] + b"\x00"], mine.root(), cp, proof),
        ("CONSISTENCY_PROOF_INVALID", good, mine.root(), cp, []),
        ("CONSISTENCY_PROOF_INVALID", good, mine.root(), cp, [bytes(32)] * len(proof)),
        ("FRONTIER_MISMATCH", good, tree(entries[:3]).root(), cp, proof),
        ("BAD_SIZE", [], mine.root(), checkpoint(SH, entries[:3]), []),
    ]
    for reason, pulled, my_root, target, p in cases:
        with pytest.raises(VerificationError) as ei:
            verify_pulled(pulled, mine, my_root, target, p)
        assert ei.value.reason == reason
    # The control: the honest pull passes and leaves my frontier untouched.
    result = verify_pulled(good, mine, mine.root(), cp, proof)
    assert result.frontier.root() == cp.root and mine.size == k
    assert {(n.level, n.index) for n in result.nodes} >= {(0, 4), (2, 1), (3, 0), (0, 8)}
    # Nothing to pull is a valid, empty pull.
    same = verify_pulled([], mine, mine.root(), checkpoint(SH, entries[:k]), [])
    assert same.frontier.root() == mine.root() and same.leaf_hashes == ()


def test_fork_between_sizes_shows_as_a_failed_pull_then_the_witness_convicts(
    signer_for: Callable[..., Signer], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Frontiers (5, a) and (7, b) look like "pull two"; the proof fails, the witness decides."""
    sh = signer_for(SH)
    honest = [b"e%d" % i for i in range(5)]
    fork = honest[:2] + [b"f%d" % i for i in range(2, 7)]
    x = make_checkpoint(sh, SH, 5, tree(honest).root(), now=now)
    y = make_checkpoint(sh, SH, 7, tree(fork).root(), now=now)
    state, d = witness_update(WitnessState(), x, [], trusted_manifest, at=now)
    assert d.outcome is Outcome.ACCEPTED

    (action,) = plan(state.frontier(), {SH: (7, tree(fork).root())})
    assert (action.kind, action.start, action.end) == (ActionKind.PULL, 5, 7)
    y_cp = parse_checkpoint(y).checkpoint
    with pytest.raises(VerificationError) as ei:
        verify_pulled(
            fork[5:], compact(honest), action.my_root, y_cp, tree(fork).consistency_proof(5, 7)
        )
    assert ei.value.reason == "CONSISTENCY_PROOF_INVALID"

    state, d = witness_update(
        state, y, prefix_proof(tree(fork).hash_range, 5, 7), trusted_manifest, at=now
    )
    assert d.outcome is Outcome.EQUIVOCATION and state.frozen == {SH}


# --------------------------------------------------------------------------------------------
# Wire estimates
# --------------------------------------------------------------------------------------------


def test_signed_checkpoint_size_bound_is_tight(
    signer_for: Callable[..., Signer], now: datetime
) -> None:
    for size in (0, 7, 1_000_000, 2**40):
        root = EMPTY_ROOT if size == 0 else tree([b"x"]).root()
        signed = parse_checkpoint(make_checkpoint(signer_for(SH), SH, size, root, now=now))
        cosigs = [cosign(signer_for(c), c, signed.checkpoint, now=now) for c in (JS, ZJ, AH)]
        for n in (0, 3):
            actual = len(signed.with_cosignatures(cosigs[:n]).to_bytes())
            bound = signed_checkpoint_bytes(size, cosignatures=n)
            assert actual <= bound <= actual + 4 * (n + 1)  # DER signatures are 70-72 bytes


def test_estimate_counts_each_part() -> None:
    note = signed_checkpoint_bytes(7)
    est = estimate_wire_bytes(4, [100, 200], old_size=5)
    assert est.frontier_bytes == 2 * 4 * (1 + 2 + note)
    assert est.proof_hashes == len(tree([b"x"] * 7).consistency_proof(5, 7)) == 4
    assert est.pull_request_bytes == (1 + 1 + 6) + 2 + 1 + 1
    assert est.pull_response_bytes == (1 + 1 + 100) + (1 + 2 + 200) + 4 * (1 + 1 + 32)
    assert est.total == est.frontier_bytes + est.pull_request_bytes + est.pull_response_bytes
    assert estimate_wire_bytes(4, []).pull_response_bytes == 0
    assert estimate_wire_bytes(4, [100] * 3).total < estimate_wire_bytes(4, [100] * 4).total
    with pytest.raises(ValidationError):
        estimate_wire_bytes(-1, [])
