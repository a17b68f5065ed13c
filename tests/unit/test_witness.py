"""Tests for federation.witness: the witness state machine, fork evidence, recognition.

The logs are MemoryTrees over short byte strings; checkpoints are signed with the session
federation's keys (tests/conftest.py). The issue's required scenario is
:func:`test_witness_that_saw_one_checkpoint_detects_the_conflicting_one`.
"""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.checkpoint import (
    cosign,
    format_body,
    make_checkpoint,
    parse_body,
    parse_checkpoint,
    verified_cosigners,
)
from federation.crypto import Signer
from federation.errors import ValidationError, VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import EMPTY_ROOT, MemoryTree, leaf_hash
from federation.witness import (
    Decision,
    Equivocation,
    Outcome,
    WitnessState,
    accept_evidence,
    default_quorum,
    prefix_proof,
    prefix_root,
    recognized,
    verify_equivocation,
    witness_update,
)
from node import pki

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
FAST = settings(max_examples=150, deadline=None)

SignerFor = Callable[..., Signer]


class Log:
    """An origin's log in memory, able to sign checkpoints and answer proofs."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.tree = MemoryTree(leaf_hash(e) for e in entries)

    def checkpoint(self, signer: Signer, origin: str, size: int, now: datetime) -> bytes:
        return make_checkpoint(signer, origin, size, self.tree.root(size), now=now)

    def proof(self, old: int, new: int) -> list[bytes]:
        return self.tree.consistency_proof(old, new)

    def prefix(self, old: int, new: int) -> list[bytes]:
        return prefix_proof(self.tree.hash_range, old, new)


def entries(n: int, tag: bytes = b"") -> list[bytes]:
    return [b"result-%d%s" % (i, tag) for i in range(n)]


def forked(n: int, shared: int) -> Log:
    """A log that agrees with ``Log(entries(...))`` on the first ``shared`` entries only."""
    return Log(entries(shared) + entries(n, b"-forged")[shared:])


def bad_signature(signed: bytes) -> bytes:
    """The same note with one bit of the origin's DER signature flipped."""
    parsed = parse_checkpoint(signed)
    return replace(
        parsed, signature=parsed.signature[:-1] + bytes([parsed.signature[-1] ^ 1])
    ).to_bytes()


@pytest.fixture(scope="module")
def sh(signer_for: SignerFor) -> Signer:
    return signer_for(SH)


@pytest.fixture(scope="module")
def update(
    trusted_manifest: TrustedManifest, now: datetime
) -> Callable[[WitnessState, bytes, Sequence[bytes]], tuple[WitnessState, Decision]]:
    def run(
        state: WitnessState, signed: bytes, proof: Sequence[bytes]
    ) -> tuple[WitnessState, Decision]:
        return witness_update(state, signed, proof, trusted_manifest, at=now)

    return run


Update = Callable[[WitnessState, bytes, Sequence[bytes]], tuple[WitnessState, Decision]]


# --------------------------------------------------------------------------------------------
# Accepting a growing log
# --------------------------------------------------------------------------------------------


def test_growing_log_is_accepted_step_by_step(sh: Signer, update: Update, now: datetime) -> None:
    log = Log(entries(13))
    state = WitnessState()
    last = 0
    for size in (0, 1, 3, 4, 8, 13):
        signed = log.checkpoint(sh, SH, size, now)
        state, d = update(state, signed, log.proof(last, size) if last else [])
        assert d.outcome is Outcome.ACCEPTED, d.message
        assert (d.reason, d.origin, d.latest_size, d.cosign) == ("ACCEPTED", SH, size, True)
        assert d.checkpoint is not None and d.checkpoint.size == size
        assert state.latest[SH] == signed
        assert state.frontier() == {SH: (size, log.tree.root(size))}
        last = size
    assert state.frozen == frozenset() and state.evidence == ()


def test_first_checkpoint_needs_an_empty_proof(sh: Signer, update: Update, now: datetime) -> None:
    log = Log(entries(5))
    state, d = update(WitnessState(), log.checkpoint(sh, SH, 5, now), log.proof(1, 5))
    assert (d.outcome, d.reason) == (Outcome.REFUSED, "CONSISTENCY_PROOF_INVALID")
    assert state == WitnessState()


def test_resubmission_is_idempotent(sh: Signer, update: Update, now: datetime) -> None:
    log = Log(entries(5))
    first = log.checkpoint(sh, SH, 5, now)
    state, _ = update(WitnessState(), first, [])
    later = log.checkpoint(sh, SH, 5, now + timedelta(minutes=5))  # same tree head, new time
    for again in (first, later):
        new_state, d = update(state, again, [])
        assert (d.outcome, d.reason, d.cosign, d.latest_size) == (
            Outcome.UNCHANGED,
            "UNCHANGED",
            True,
            5,
        )
        assert new_state is state
    assert state.latest[SH] == first


def test_rollback_is_refused_and_changes_nothing(sh: Signer, update: Update, now: datetime) -> None:
    log = Log(entries(8))
    state, _ = update(WitnessState(), log.checkpoint(sh, SH, 8, now), [])
    for proof in ([], log.proof(5, 8), log.prefix(5, 8)):  # a consistent old one is just stale
        new_state, d = update(state, log.checkpoint(sh, SH, 5, now), proof)
        assert (d.outcome, d.reason, d.latest_size, d.cosign) == (
            Outcome.REFUSED,
            "ROLLBACK",
            8,
            False,
        )
        assert new_state is state


def test_bad_proof_is_refused_without_freezing(sh: Signer, update: Update, now: datetime) -> None:
    """A relay can garble a proof; that must not let it freeze an honest origin."""
    log = Log(entries(8))
    state, _ = update(WitnessState(), log.checkpoint(sh, SH, 5, now), [])
    new = log.checkpoint(sh, SH, 8, now)
    good = log.proof(5, 8)
    bad_proofs = [
        [],
        good[:-1],
        [*good, good[0]],
        [bytes(32)] * len(good),
        [good[0][:31], *good[1:]],
        log.proof(4, 8),
        log.prefix(4, 8),
        [bytes(32)] * 100,
    ]
    for proof in bad_proofs:
        new_state, d = update(state, new, proof)
        assert (d.outcome, d.reason, d.latest_size) == (
            Outcome.REFUSED,
            "CONSISTENCY_PROOF_INVALID",
            5,
        )
        assert new_state is state
    state, d = update(state, new, good)
    assert d.outcome is Outcome.ACCEPTED


def test_badly_signed_checkpoints_are_refused(
    sh: Signer, signer_for: SignerFor, update: Update, now: datetime
) -> None:
    log = Log(entries(5))
    good = log.checkpoint(sh, SH, 5, now)
    cases = {
        "CHECKPOINT_MALFORMED": good[:-1],
        "CHECKPOINT_BAD_SIGNATURE": good.replace(b"\ntime ", b"\ntime 1"),
        "CHECKPOINT_SIGNER_MISMATCH": log.checkpoint(signer_for(JS), SH, 5, now),
    }
    for reason, data in cases.items():
        state, d = update(WitnessState(), data, [])
        assert (d.outcome, d.reason, d.origin, d.checkpoint) == (
            Outcome.REFUSED,
            reason,
            None,
            None,
        )
        assert state == WitnessState()


def test_state_is_immutable() -> None:
    state = WitnessState(latest={SH: b"x"})
    with pytest.raises(TypeError):
        state.latest[SH] = b"y"  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Equivocation
# --------------------------------------------------------------------------------------------


def test_witness_that_saw_one_checkpoint_detects_the_conflicting_one(
    sh: Signer, update: Update, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Node A saw checkpoint X, node B saw the conflicting Y; shown Y, A keeps both and freezes."""
    x = Log(entries(5)).checkpoint(sh, SH, 5, now)
    y = forked(5, shared=3).checkpoint(sh, SH, 5, now)
    a, d = update(WitnessState(), x, [])
    assert d.outcome is Outcome.ACCEPTED
    b, d = update(WitnessState(), y, [])
    assert d.outcome is Outcome.ACCEPTED

    a, d = update(a, y, [])
    assert (d.outcome, d.reason, d.cosign) == (Outcome.EQUIVOCATION, "EQUIVOCATION", False)
    assert d.evidence == Equivocation(SH, x, y, ())
    assert a.frozen == {SH} and a.evidence == (d.evidence,)
    assert a.latest[SH] == x  # what A accepted stays what it accepted

    b, d = update(b, x, [])
    assert d.evidence == Equivocation(SH, y, x, ())
    assert b.frozen == {SH}

    # Evidence verifies offline, as an object and from its wire form.
    small, large = verify_equivocation(a.evidence[0], trusted_manifest)
    assert small.root != large.root and small.size == large.size == 5
    assert verify_equivocation(a.evidence[0].to_bytes(), trusted_manifest)[0].origin == SH


def test_frozen_origin_accepts_nothing_more(
    sh: Signer, signer_for: SignerFor, update: Update, now: datetime
) -> None:
    log = Log(entries(9))
    state, _ = update(WitnessState(), log.checkpoint(sh, SH, 5, now), [])
    state, d = update(state, forked(5, 2).checkpoint(sh, SH, 5, now), [])
    assert d.outcome is Outcome.EQUIVOCATION
    new_state, d = update(state, log.checkpoint(sh, SH, 9, now), log.proof(5, 9))
    assert (d.outcome, d.reason) == (Outcome.REFUSED, "ORIGIN_FROZEN")
    assert new_state is state
    # Other origins are not affected.
    js = Log(entries(3, b"-js"))
    state, d = update(state, js.checkpoint(signer_for(JS), JS, 3, now), [])
    assert d.outcome is Outcome.ACCEPTED and state.frozen == {SH}


@pytest.mark.parametrize(
    ("old", "new", "shared"),
    [(5, 7, 3), (4, 7, 3), (1, 2, 0), (2, 3, 0), (3, 8, 2), (6, 13, 5), (8, 9, 0), (7, 16, 6)],
)
def test_larger_checkpoint_that_does_not_extend_is_equivocation(
    old: int,
    new: int,
    shared: int,
    sh: Signer,
    update: Update,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    honest, fork = Log(entries(new)), forked(new, shared)
    x = honest.checkpoint(sh, SH, old, now)
    y = fork.checkpoint(sh, SH, new, now)
    a, _ = update(WitnessState(), x, [])

    # The fork's own consistency proof (a prefix proof when old is not a power of two) convicts.
    proof = fork.prefix(old, new)
    assert (proof == fork.proof(old, new)) == (old & (old - 1) != 0)
    frozen, d = update(a, y, proof)
    assert d.outcome is Outcome.EQUIVOCATION, d.message
    assert d.evidence == Equivocation(SH, x, y, tuple(proof))
    assert frozen.frozen == {SH}
    small, large = verify_equivocation(d.evidence.to_bytes(), trusted_manifest)
    assert (small.size, large.size) == (old, new)

    if old & (old - 1) == 0:
        # RFC 6962 omits the old subtree for a power of two, so the plain proof proves nothing.
        same, d = update(a, y, fork.proof(old, new))
        assert (d.outcome, d.reason) == (Outcome.REFUSED, "CONSISTENCY_PROOF_INVALID")
        assert same is a


def test_smaller_checkpoint_proven_not_to_be_a_prefix_is_equivocation(
    sh: Signer, update: Update, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    honest, fork = Log(entries(7)), forked(7, 3)
    b, _ = update(WitnessState(), fork.checkpoint(sh, SH, 7, now), [])
    x = honest.checkpoint(sh, SH, 5, now)
    _, d = update(b, x, [])
    assert d.reason == "ROLLBACK"
    frozen, d = update(b, x, fork.prefix(5, 7))
    assert d.outcome is Outcome.EQUIVOCATION
    assert frozen.frozen == {SH}
    assert d.evidence is not None
    assert verify_equivocation(d.evidence, trusted_manifest)[0].size == 5


# --------------------------------------------------------------------------------------------
# Evidence: offline checks, refusals, gossip
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def evidence(sh: Signer, now: datetime) -> Equivocation:
    return Equivocation(
        SH,
        Log(entries(5)).checkpoint(sh, SH, 5, now),
        forked(7, 2).checkpoint(sh, SH, 7, now),
        tuple(forked(7, 2).prefix(5, 7)),
    )


def test_evidence_verifies_long_after_with_the_signing_time(
    evidence: Equivocation, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Keys expire; evidence is judged by key validity when the checkpoints were signed."""
    with pytest.raises(VerificationError) as ei:
        verify_equivocation(evidence, trusted_manifest, at=now + timedelta(days=800))
    assert ei.value.reason == "EXPIRED_KEY"
    assert verify_equivocation(evidence, trusted_manifest)[1].size == 7


def test_evidence_round_trips(evidence: Equivocation) -> None:
    data = evidence.to_bytes()
    assert data.startswith(b"cccfed.v1 equivocation\n")
    assert Equivocation.from_bytes(data) == evidence


def test_consistent_pairs_are_not_equivocation(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    log = Log(entries(7))
    five, seven = log.checkpoint(sh, SH, 5, now), log.checkpoint(sh, SH, 7, now)
    later_five = log.checkpoint(sh, SH, 5, now + timedelta(seconds=1))
    zero = log.checkpoint(sh, SH, 0, now)
    fork = forked(7, 2)
    cases = [
        Equivocation(SH, five, seven, tuple(log.proof(5, 7))),
        Equivocation(SH, five, seven, tuple(log.prefix(5, 7))),
        Equivocation(SH, five, later_five, ()),
        Equivocation(SH, zero, seven, ()),
        Equivocation(SH, five, seven, ()),
        Equivocation(SH, five, fork.checkpoint(sh, SH, 7, now), (bytes(32),) * 3),
        Equivocation(SH, five, fork.checkpoint(sh, SH, 7, now), tuple(log.prefix(5, 7))),
    ]
    for ev in cases:
        with pytest.raises(VerificationError) as ei:
            verify_equivocation(ev, trusted_manifest)
        assert ei.value.reason == "NOT_EQUIVOCATION"


def test_evidence_across_origins_or_with_bad_signatures_is_refused(
    evidence: Equivocation,
    signer_for: SignerFor,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    js = Log(entries(5)).checkpoint(signer_for(JS), JS, 5, now)
    cases = {
        "NOT_EQUIVOCATION": Equivocation(SH, evidence.first, js, ()),
        "CHECKPOINT_BAD_SIGNATURE": Equivocation(
            SH, evidence.first, bad_signature(evidence.second), evidence.proof
        ),
        "CHECKPOINT_MALFORMED": Equivocation(SH, evidence.first, b"junk", evidence.proof),
    }
    for reason, ev in cases.items():
        with pytest.raises(VerificationError) as ei:
            verify_equivocation(ev, trusted_manifest)
        assert ei.value.reason == reason
    # The origin named by the record must be the checkpoints' origin.
    with pytest.raises(VerificationError) as ei:
        verify_equivocation(
            Equivocation(JS, evidence.first, evidence.second, evidence.proof), trusted_manifest
        )
    assert ei.value.reason == "NOT_EQUIVOCATION"


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"cccfed.v1 equivocation\n",
        b"cccfed.v1 equivocation\nAAAA\n",
        b"cccfed.v1 equivocation\n!!!!\nAAAA\n",
        b"cccfed.v1 equivocation\nAAB=\nAAAA\n",  # non-canonical padding bits
        b"cccfed.v1 equivocation\nAAAA\nAAAA",
        b"cccfed.v2 equivocation\nAAAA\nAAAA\n",
        b"cccfed.v1 equivocation\n" + b"AAAA\n" * 80,
    ],
)
def test_malformed_evidence(data: bytes, trusted_manifest: TrustedManifest) -> None:
    with pytest.raises(VerificationError) as ei:
        verify_equivocation(data, trusted_manifest)
    assert ei.value.reason == "EQUIVOCATION_MALFORMED"


def test_absurd_times_are_malformed_not_a_crash(
    sh: Signer, evidence: Equivocation, trusted_manifest: TrustedManifest
) -> None:
    """Evidence is checked at each checkpoint's own time, read before any signature check."""
    body = format_body(SH, 0, EMPTY_ROOT, timestamp=1).replace(b"time 1", b"time 9000000000000")
    forged = body + b"\n" + evidence.first.partition(b"\n\n")[2]
    with pytest.raises(VerificationError) as ei:
        verify_equivocation(Equivocation(SH, evidence.first, forged, ()), trusted_manifest)
    assert ei.value.reason == "CHECKPOINT_MALFORMED"


def test_evidence_parse_needs_a_valid_first_checkpoint() -> None:
    data = b"cccfed.v1 equivocation\n" + base64.b64encode(b"x") + b"\nAAAA\n"
    with pytest.raises(VerificationError) as ei:
        Equivocation.from_bytes(data)
    assert ei.value.reason == "CHECKPOINT_MALFORMED"


def test_evidence_told_to_a_member_that_saw_neither_checkpoint(
    evidence: Equivocation, trusted_manifest: TrustedManifest, sh: Signer, now: datetime
) -> None:
    state = WitnessState()
    frozen, d = accept_evidence(state, evidence.to_bytes(), trusted_manifest)
    assert (d.outcome, d.origin, d.evidence) == (Outcome.EQUIVOCATION, SH, evidence)
    assert frozen.frozen == {SH} and frozen.evidence == (evidence,)
    again, d = accept_evidence(frozen, evidence, trusted_manifest)
    assert (d.outcome, d.reason) == (Outcome.REFUSED, "ORIGIN_FROZEN")
    assert again is frozen
    bogus = Equivocation(SH, evidence.first, evidence.first, ())
    same, d = accept_evidence(state, bogus, trusted_manifest)
    assert (d.outcome, d.reason) == (Outcome.REFUSED, "NOT_EQUIVOCATION")
    assert same is state
    same, d = accept_evidence(state, b"junk", trusted_manifest)
    assert d.reason == "EQUIVOCATION_MALFORMED"


def test_evidence_signed_by_a_since_revoked_key_no_longer_convicts(
    federation_dir: Path,
    tmp_path: Path,
    evidence: Equivocation,
    sh: Signer,
    load_trusted: Callable[..., TrustedManifest],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    pki.revoke(root, trusted_manifest.keys[sh.key_id].serial, reason="stolen", now=now)
    with pytest.raises(VerificationError) as ei:
        verify_equivocation(evidence, load_trusted(root))
    assert ei.value.reason == "REVOKED_KEY"


# --------------------------------------------------------------------------------------------
# Prefix proofs (properties)
# --------------------------------------------------------------------------------------------


@st.composite
def tree_pair(draw: st.DrawFn) -> tuple[int, int, int]:
    """(old, new, fork index) with 0 < old < new and the fork inside the first old entries."""
    new = draw(st.integers(2, 70))
    old = draw(st.integers(1, new - 1))
    return old, new, draw(st.integers(0, old - 1))


@FAST
@given(tree_pair())
def test_prefix_root_is_the_prefix_or_proves_the_fork(sizes: tuple[int, int, int]) -> None:
    old, new, fork_at = sizes
    honest, fork = Log(entries(new)), forked(new, fork_at)
    p = honest.prefix(old, new)
    assert prefix_root(old, new, honest.tree.root(), p) == honest.tree.root(old)
    q = fork.prefix(old, new)
    assert prefix_root(old, new, fork.tree.root(), q) != honest.tree.root(old)
    # Every hash of a prefix proof feeds the new root: change any one and it proves nothing.
    for i in range(len(p)):
        changed = [*p[:i], leaf_hash(p[i]), *p[i + 1 :]]
        with pytest.raises(VerificationError):
            prefix_root(old, new, honest.tree.root(), changed)


def test_prefix_proof_sizes() -> None:
    log = Log(entries(4))
    for old, new in ((0, 4), (4, 4), (5, 4)):
        with pytest.raises(ValidationError):
            log.prefix(old, new)
        with pytest.raises(VerificationError) as ei:
            prefix_root(old, new, log.tree.root(), [log.tree.root()])
        assert ei.value.reason == "BAD_SIZE"
    with pytest.raises(VerificationError):
        prefix_root(1, 4, log.tree.root(), [])


# --------------------------------------------------------------------------------------------
# Recognition
# --------------------------------------------------------------------------------------------


def test_recognized_needs_coverage_and_the_quorum(trusted_manifest: TrustedManifest) -> None:
    cp = parse_body(format_body(SH, 5, Log(entries(5)).tree.root(), timestamp=1))
    quorum = default_quorum(trusted_manifest, SH)
    assert quorum == {JS, ZJ, AH}
    assert recognized(4, cp, {JS, ZJ, AH}, quorum)
    assert not recognized(4, cp, {JS, ZJ}, quorum)
    assert not recognized(4, cp, {JS, ZJ, SH, "999999"}, quorum)  # only quorum members count
    assert not recognized(5, cp, {JS, ZJ, AH}, quorum)
    assert not recognized(-1, cp, {JS, ZJ, AH}, quorum)
    assert recognized(0, cp, {JS, ZJ}, quorum, threshold=2)
    assert not recognized(0, cp, {JS, ZJ, AH}, quorum, frozen={SH})
    assert recognized(0, cp, set(), set())  # a federation of one
    for threshold in (-1, 4):
        with pytest.raises(ValidationError):
            recognized(0, cp, {JS}, quorum, threshold=threshold)


def test_recognition_end_to_end(
    sh: Signer, signer_for: SignerFor, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """SH publishes; each other member witnesses and cosigns; the entry becomes recognised."""
    log = Log(entries(3))
    signed = parse_checkpoint(log.checkpoint(sh, SH, 3, now))
    cosignatures = []
    for code in (JS, ZJ, AH):
        _, d = witness_update(WitnessState(), signed.to_bytes(), [], trusted_manifest, at=now)
        assert d.cosign and d.checkpoint is not None
        cosignatures.append(cosign(signer_for(code), code, d.checkpoint, now=now))
        cosigned = parse_checkpoint(signed.with_cosignatures(cosignatures).to_bytes())
        cosigners = verified_cosigners(cosigned, trusted_manifest, at=now)
        quorum = default_quorum(trusted_manifest, SH)
        assert recognized(2, cosigned.checkpoint, cosigners, quorum) == (code == AH)
