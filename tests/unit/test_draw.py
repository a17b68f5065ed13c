"""federation.draw: commitments, reveals, the seed, the draw and its record.

Known answers are computed here with hashlib directly (an independent restatement of the
construction), so a change of context string or byte order in the module is caught. Hypothesis
checks the draw's invariants: right size, no repeats, tiers respected, order within a tier
irrelevant.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from federation.draw import (
    DrawRecord,
    check_draw,
    check_reveal,
    commit,
    draw,
    new_value,
    seed,
    verify_draw,
)
from federation.errors import FederationError, ValidationError, VerificationError

H = bytes(range(32))
P = bytes(range(32, 64))


def value(n: int) -> bytes:
    return hashlib.sha256(b"test value %d" % n).digest()


def reference_draw(draw_seed: bytes, tiers: list[list[str]], k: int) -> list[str]:
    out: list[str] = []
    for tier in tiers:
        key = {
            e: hashlib.sha256(b"cccfed.v1.draw-rank\x00" + draw_seed + e.encode()).digest()
            for e in tier
        }
        out.extend(sorted(tier, key=lambda e: key[e]))
    return out[:k]


def record(tiers: tuple[tuple[str, ...], ...], k: int, h: bytes = H, p: bytes = P) -> DrawRecord:
    result = tuple(draw(seed(h, p), tiers, k))
    return DrawRecord("req-1", commit(h), h, p, tiers, k, result)


# --------------------------------------------------------------------------------------------
# Commitments


def test_commit_is_sha256_of_the_context_and_the_value() -> None:
    assert commit(H) == hashlib.sha256(b"cccfed.v1.draw-commit\x00" + H).digest()
    assert commit(H) != hashlib.sha256(H).digest()
    assert len(commit(H)) == 32


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_values_must_be_32_bytes(length: int) -> None:
    with pytest.raises(ValidationError) as e:
        commit(b"\x01" * length)
    assert e.value.reason == "DRAW_VALUE"
    with pytest.raises(ValidationError):
        seed(b"\x01" * length, P)


def test_matching_reveal_is_accepted() -> None:
    check_reveal(commit(H), H)


def test_reveal_that_does_not_match_its_commitment_is_refused() -> None:
    with pytest.raises(VerificationError) as e:
        check_reveal(commit(H), P)
    assert e.value.reason == "REVEAL_MISMATCH"
    assert isinstance(e.value, FederationError)
    flipped = bytes([H[0] ^ 1]) + H[1:]
    with pytest.raises(VerificationError):
        check_reveal(commit(H), flipped)


@pytest.mark.parametrize(
    ("commitment", "revealed"), [(commit(H)[:31], H), (commit(H), H[:31]), (b"", b"")]
)
def test_reveal_of_wrong_length_is_a_mismatch_not_a_crash(
    commitment: bytes, revealed: bytes
) -> None:
    with pytest.raises(VerificationError) as e:
        check_reveal(commitment, revealed)
    assert e.value.reason == "REVEAL_MISMATCH"


def test_new_value_takes_injected_randomness() -> None:
    assert new_value(lambda n: b"\x07" * n) == b"\x07" * 32
    assert new_value() != new_value()
    with pytest.raises(ValidationError):
        new_value(lambda n: b"\x07" * (n - 1))


# --------------------------------------------------------------------------------------------
# Seed and draw


def test_seed_is_domain_separated_and_ordered() -> None:
    assert seed(H, P) == hashlib.sha256(b"cccfed.v1.draw-seed\x00" + H + P).digest()
    assert seed(H, P) != seed(P, H)
    assert seed(H, P) != hashlib.sha256(H + P).digest()


def test_draw_matches_the_reference_construction() -> None:
    tiers = [["JS-3", "JS-1", "JS-2"], ["JS-9", "JS-7"]]
    for k in range(6):
        assert draw(seed(H, P), tiers, k) == reference_draw(seed(H, P), tiers, k)


def test_earlier_tiers_are_exhausted_first() -> None:
    tiers = [["A", "B"], ["C", "D", "E"], ["F"]]
    for n in range(30):
        result = draw(seed(value(n), P), tiers, 3)
        assert set(result[:2]) == {"A", "B"}
        assert result[2] in {"C", "D", "E"}


def test_within_a_tier_every_candidate_gets_drawn_for_some_seed() -> None:
    tiers = [["A", "B", "C", "D"]]
    firsts = Counter(draw(seed(value(n), P), tiers, 1)[0] for n in range(200))
    assert set(firsts) == {"A", "B", "C", "D"}
    assert min(firsts.values()) > 25  # roughly even: 50 each expected


@pytest.mark.parametrize(
    ("tiers", "k", "reason"),
    [
        ([["A"], ["A"]], 1, "DRAW_TIERS"),
        ([["A"], []], 1, "DRAW_TIERS"),
        (["AB"], 1, "DRAW_TIERS"),
        ([[""]], 1, "DRAW_TIERS"),
        ([["A", "B"]], 3, "DRAW_K"),
        ([["A"]], -1, "DRAW_K"),
    ],
)
def test_malformed_draws_are_refused(tiers: list[list[str]], k: int, reason: str) -> None:
    with pytest.raises(ValidationError) as e:
        draw(seed(H, P), tiers, k)
    assert e.value.reason == reason


def test_draw_needs_a_full_seed() -> None:
    with pytest.raises(ValidationError) as e:
        draw(H[:16], [["A"]], 1)
    assert e.value.reason == "DRAW_SEED"


ids = st.text(alphabet="ABCDEFGH0123456789-", min_size=1, max_size=6)


@settings(max_examples=200, deadline=None)
@given(
    tiers=st.lists(
        st.lists(ids, min_size=1, max_size=5, unique=True), min_size=1, max_size=4
    ).filter(lambda ts: len({e for t in ts for e in t}) == sum(len(t) for t in ts)),
    data=st.data(),
)
def test_draw_invariants(tiers: list[list[str]], data: st.DataObject) -> None:
    total = sum(len(t) for t in tiers)
    k = data.draw(st.integers(0, total))
    s = seed(data.draw(st.binary(min_size=32, max_size=32)), P)
    result = draw(s, tiers, k)
    assert len(result) == k == len(set(result))
    # Tier by tier: a candidate of a later tier only once every earlier one is drawn.
    position = {e: i for i, t in enumerate(tiers) for e in t}
    assert [position[e] for e in result] == sorted(position[e] for e in result)
    if result:
        for earlier in tiers[: position[result[-1]]]:
            assert set(earlier) <= set(result)
    shuffled = [list(reversed(t)) for t in tiers]
    assert draw(s, shuffled, k) == result


# --------------------------------------------------------------------------------------------
# The record


TIERS = (("JS-1", "JS-2", "JS-3", "JS-4", "JS-5", "JS-6", "JS-7", "JS-8"),)


def test_draw_recomputed_from_the_record_equals_the_stored_result() -> None:
    rec = record(TIERS, 3)
    assert verify_draw(rec)
    check_draw(rec)
    assert rec.result == tuple(reference_draw(seed(H, P), [list(TIERS[0])], 3))


def test_record_round_trips_through_json_form() -> None:
    rec = record((("A",), ("B", "C")), 2)
    assert DrawRecord.from_dict(rec.to_dict()) == rec
    assert verify_draw(DrawRecord.from_dict(rec.to_dict()))


def test_changing_either_value_changes_the_draw() -> None:
    original = record(TIERS, 3)
    other_host = record(TIERS, 3, h=value(1))
    other_provider = record(TIERS, 3, p=value(2))
    assert other_host.result != original.result
    assert other_provider.result != original.result
    # ...and the stored result no longer verifies against a changed value.
    assert not verify_draw(dataclasses.replace(original, provider_value=value(2)))
    assert not verify_draw(
        dataclasses.replace(original, host_value=value(1), host_commitment=commit(value(1)))
    )


def test_record_with_a_host_value_that_does_not_open_the_commitment_fails() -> None:
    rec = dataclasses.replace(record(TIERS, 3), host_value=value(1))
    assert not verify_draw(rec)
    with pytest.raises(VerificationError) as e:
        check_draw(rec)
    assert e.value.reason == "REVEAL_MISMATCH"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"result": ("JS-1", "JS-2", "X")}, "DRAW_MISMATCH"),
        ({"k": 2}, "DRAW_MISMATCH"),
        (
            {"tiers": (("JS-1", "JS-2"), ("JS-3", "JS-4", "JS-5", "JS-6", "JS-7", "JS-8"))},
            "DRAW_MISMATCH",
        ),
        ({"k": 9}, "DRAW_MALFORMED"),
        ({"provider_value": b"short"}, "DRAW_MALFORMED"),
    ],
)
def test_tampered_records_fail(change: dict[str, object], reason: str) -> None:
    original = record(TIERS, 3)
    rec = dataclasses.replace(original, **change)  # type: ignore[arg-type]
    assert not verify_draw(rec)
    with pytest.raises(VerificationError) as e:
        check_draw(rec)
    assert e.value.reason == reason


@pytest.mark.parametrize(
    "data",
    [
        {},
        {"request_id": 1},
        {**record(TIERS, 1).to_dict(), "host_value": "zz"},
        {**record(TIERS, 1).to_dict(), "tiers": "AB"},
    ],
)
def test_record_from_garbage_is_a_validation_error(data: dict[str, object]) -> None:
    with pytest.raises(ValidationError) as e:
        DrawRecord.from_dict(data)
    assert e.value.reason == "INVALID_RECORD"
