"""Batch receipts (docs/PROTOCOL.md §7.5): one signature over an RFC 6962 tree of receipt bodies.

Each receipt of a batch must verify alone, with the same checks as a receipt signed alone, and
every way of moving a body out of, into or between batches, or of bending the head, is refused
with the reason a sender and ``log verify`` report.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

import pytest

from cccfed.v1 import envelope_pb2, federation_pb2
from federation import envelope as envmod
from federation.crypto import CTX_RECEIPT, CTX_RECEIPT_BATCH, Signer
from federation.envelope import (
    Opened,
    Policy,
    open_envelope,
    receipt_body,
    seal,
    sign_receipts,
    verify_receipt,
)
from federation.errors import VerificationError
from federation.manifest import TrustedManifest
from federation.merkle import leaf_hash
from federation.message_log import Keyring, verify_receipt_signature

SH, JS, ZJ = "310000", "320000", "330000"


@pytest.fixture(scope="module")
def sh(signer_for: Callable[..., Signer]) -> Signer:
    return signer_for(SH)


@pytest.fixture(scope="module")
def js(signer_for: Callable[..., Signer]) -> Signer:
    return signer_for(JS)


@pytest.fixture(scope="module")
def zj(signer_for: Callable[..., Signer]) -> Signer:
    return signer_for(ZJ)


@pytest.fixture(scope="module")
def envelopes(sh: Signer, now: datetime) -> list[bytes]:
    return [
        seal(
            sh,
            sender_node=SH,
            recipient_node=JS,
            payload=federation_pb2.Ping(note=f"n{i}"),
            now=now,
        )
        for i in range(7)
    ]


@pytest.fixture(scope="module")
def opened(
    envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> list[Opened]:
    return [
        open_envelope(e, trusted_manifest, self_node=JS, peer_node=SH, now=now, policy=Policy())
        for e in envelopes
    ]


def bodies(signer: Signer, opened: list[Opened], at: datetime, receiver: str = JS) -> list[bytes]:
    return [receipt_body(signer, o, receiver_node=receiver, received_at=at) for o in opened]


def check(receipt: bytes, envelope: bytes, manifest: TrustedManifest, now: datetime) -> None:
    verify_receipt(receipt, envelope, manifest, expected_receiver=JS, at=now)


def reason(receipt: bytes, envelope: bytes, manifest: TrustedManifest, now: datetime) -> str:
    with pytest.raises(VerificationError) as ei:
        check(receipt, envelope, manifest, now)
    return ei.value.reason


def parsed(receipt: bytes) -> envelope_pb2.Receipt:
    return envelope_pb2.Receipt.FromString(receipt)


def head_of(receipt: bytes) -> envelope_pb2.ReceiptBatchHead:
    return envelope_pb2.ReceiptBatchHead.FromString(parsed(receipt).batch.head)


def with_head(
    receipt: bytes,
    signer: Signer,
    changes: dict[str, object],
    context: bytes = CTX_RECEIPT_BATCH,
) -> bytes:
    """The receipt with its head changed and signed again, properly, by ``signer``."""
    r = parsed(receipt)
    head = envelope_pb2.ReceiptBatchHead.FromString(r.batch.head)
    for k, v in changes.items():
        setattr(head, k, v)
    r.batch.head = head.SerializeToString(deterministic=True)
    r.signature = signer.sign(context, r.batch.head)
    return r.SerializeToString(deterministic=True)


# --- signing and verifying ------------------------------------------------------------------


def test_one_body_gets_a_receipt_of_its_own(
    js: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    [receipt] = sign_receipts(js, JS, bodies(js, opened[:1], now))
    assert not parsed(receipt).HasField("batch")
    check(receipt, envelopes[0], trusted_manifest, now)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 7])
def test_every_receipt_of_a_batch_verifies_alone(
    n: int,
    js: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    federation_dir: object,
    now: datetime,
) -> None:
    at = now + timedelta(seconds=1)
    receipts = sign_receipts(js, JS, bodies(js, opened[:n], at))
    assert len(receipts) == n
    assert len({parsed(r).signature for r in receipts}) == 1  # one signature for all
    assert len({parsed(r).batch.head for r in receipts}) == 1
    for i, (r, e) in enumerate(zip(receipts, envelopes, strict=False)):
        assert parsed(r).batch.leaf_index == i
        assert head_of(r).tree_size == n and head_of(r).receiver_node == JS
        vr = verify_receipt(
            r, e, trusted_manifest, expected_receiver=JS, at=now, max_skew=timedelta(minutes=5)
        )
        assert vr.received_at == at and vr.body.message_id == opened[i].message_id


def test_log_verification_accepts_batch_receipts_and_refuses_a_moved_body(
    js: Signer, opened: list[Opened], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    ring = Keyring(keys=dict(trusted_manifest.keys))
    receipts = sign_receipts(js, JS, bodies(js, opened[:3], now))
    for r in receipts:
        assert verify_receipt_signature(r, ring, now).receiver_node == JS
    moved = parsed(receipts[0])
    moved.batch.leaf_index = 1
    with pytest.raises(VerificationError) as ei:
        verify_receipt_signature(moved.SerializeToString(), ring, now)
    assert ei.value.reason == "BAD_SIGNATURE"


# --- refusals -------------------------------------------------------------------------------


@pytest.fixture
def batch(js: Signer, opened: list[Opened], now: datetime) -> list[bytes]:
    return sign_receipts(js, JS, bodies(js, opened[:5], now))


def test_another_leaf_index_is_refused(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for index in (1, 4, 5, 2**63):
        r = parsed(batch[0])
        r.batch.leaf_index = index
        assert reason(r.SerializeToString(), envelopes[0], trusted_manifest, now) == "BAD_SIGNATURE"


@pytest.mark.parametrize("how", ["flip", "drop", "extend", "swap"])
def test_a_bent_audit_path_is_refused(
    how: str,
    batch: list[bytes],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    r = parsed(batch[2])
    path = list(r.batch.inclusion_path)
    if how == "flip":
        path[0] = bytes([path[0][0] ^ 1]) + path[0][1:]
    elif how == "drop":
        path.pop()
    elif how == "extend":
        path.append(path[-1])
    else:
        path.reverse()
    del r.batch.inclusion_path[:]
    r.batch.inclusion_path.extend(path)
    assert reason(r.SerializeToString(), envelopes[2], trusted_manifest, now) == "BAD_SIGNATURE"


def test_a_body_with_another_batchs_proof_is_refused(
    js: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    first = sign_receipts(js, JS, bodies(js, opened[:3], now))
    later = sign_receipts(js, JS, bodies(js, opened[:3], now + timedelta(seconds=9)))
    r = parsed(first[1])
    r.batch.CopyFrom(parsed(later[1]).batch)
    r.signature = parsed(later[1]).signature
    assert reason(r.SerializeToString(), envelopes[1], trusted_manifest, now) == "BAD_SIGNATURE"


def test_an_altered_body_is_refused(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    r = parsed(batch[0])
    body = envelope_pb2.ReceiptBody.FromString(r.body)
    body.received_at.seconds += 86_400  # a day later: a longer reply period
    r.body = body.SerializeToString(deterministic=True)
    assert reason(r.SerializeToString(), envelopes[0], trusted_manifest, now) == "BAD_SIGNATURE"


@pytest.mark.parametrize("field", ["tree_size", "root_hash"])
def test_a_head_changed_after_signing_is_refused(
    field: str,
    batch: list[bytes],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    r = parsed(batch[0])
    head = envelope_pb2.ReceiptBatchHead.FromString(r.batch.head)
    if field == "tree_size":
        head.tree_size = 6
    else:
        head.root_hash = bytes(32)
    r.batch.head = head.SerializeToString(deterministic=True)
    assert reason(r.SerializeToString(), envelopes[0], trusted_manifest, now) == "BAD_SIGNATURE"


def test_a_bad_signature_is_refused_even_after_the_head_verified(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Verified heads are remembered by (head, signature): another signature is checked anew."""
    check(batch[0], envelopes[0], trusted_manifest, now)
    r = parsed(batch[1])
    sig = bytearray(r.signature)
    sig[-1] ^= 1
    r.signature = bytes(sig)
    assert reason(r.SerializeToString(), envelopes[1], trusted_manifest, now) == "BAD_SIGNATURE"
    check(batch[1], envelopes[1], trusted_manifest, now)


def test_a_cached_head_still_needs_a_valid_key(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """The key's validity is checked before the cache: a verified head does not outlive it."""
    check(batch[0], envelopes[0], trusted_manifest, now)
    key = trusted_manifest.keys[head_of(batch[0]).signing_key_id]
    late = key.not_after + timedelta(days=1)
    assert reason(batch[0], envelopes[0], trusted_manifest, late) == "EXPIRED_KEY"


def test_the_cache_of_verified_heads_is_bounded(
    js: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    for k in range(envmod._VERIFIED_HEADS_MAX + 5):
        r = sign_receipts(js, JS, bodies(js, opened[:2], now + timedelta(microseconds=k)))
        check(r[0], envelopes[0], trusted_manifest, now)
    assert len(envmod._VERIFIED_HEADS) == envmod._VERIFIED_HEADS_MAX


def test_a_head_signed_in_the_single_receipt_context_is_refused(
    js: Signer,
    batch: list[bytes],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    r = with_head(batch[0], js, {}, context=CTX_RECEIPT)
    assert reason(r, envelopes[0], trusted_manifest, now) == "BAD_SIGNATURE"


def test_a_batch_signature_without_its_proof_is_refused(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    r = parsed(batch[0])
    r.ClearField("batch")
    assert reason(r.SerializeToString(), envelopes[0], trusted_manifest, now) == "BAD_SIGNATURE"


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"receiver_node": ZJ}, "RECEIPT_SIGNER_MISMATCH"),
        ({"signing_key_id": "ab" * 32}, "RECEIPT_SIGNER_MISMATCH"),
        ({"version": 2}, "UNSUPPORTED_VERSION"),
    ],
)
def test_a_signed_head_that_disagrees_with_its_body_is_refused(
    changes: dict[str, object],
    why: str,
    js: Signer,
    batch: list[bytes],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    assert reason(with_head(batch[0], js, changes), envelopes[0], trusted_manifest, now) == why


def test_a_signed_head_of_one_leaf_is_refused(
    js: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    [body] = bodies(js, opened[:1], now)
    head = envelope_pb2.ReceiptBatchHead(
        version=1,
        receiver_node=JS,
        signing_key_id=js.key_id,
        tree_size=1,
        root_hash=leaf_hash(body),
    ).SerializeToString(deterministic=True)
    r = envelope_pb2.Receipt(
        body=body,
        signature=js.sign(CTX_RECEIPT_BATCH, head),
        batch=envelope_pb2.ReceiptBatchProof(head=head, leaf_index=0),
    ).SerializeToString(deterministic=True)
    assert reason(r, envelopes[0], trusted_manifest, now) == "MALFORMED"


def test_a_malformed_head_is_refused(
    batch: list[bytes], envelopes: list[bytes], trusted_manifest: TrustedManifest, now: datetime
) -> None:
    r = parsed(batch[0])
    r.batch.head = b"\xff\xff\xff"
    assert reason(r.SerializeToString(), envelopes[0], trusted_manifest, now) == "MALFORMED"


def test_a_batch_signed_by_another_member_is_refused(
    zj: Signer,
    opened: list[Opened],
    envelopes: list[bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    for claimed in (ZJ, JS):  # honest about being Zhejiang, or claiming to be Jiangsu
        receipts = sign_receipts(zj, claimed, bodies(zj, opened[:2], now, receiver=claimed))
        assert reason(receipts[0], envelopes[0], trusted_manifest, now) == "RECEIPT_SIGNER_MISMATCH"
