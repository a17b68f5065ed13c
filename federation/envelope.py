"""Sealing and opening signed envelopes and receipts (pure: bytes, a manifest and a clock value).

The receiver verifies the bytes it received — the header is carried as bytes precisely so that
nobody ever needs to re-serialise it to check a signature — and only then parses the payload.
Every refusal is a :class:`VerificationError` with one of the reasons listed in
``docs/PROTOCOL.md`` §6 (envelopes) and §7.3 (receipts), raised before any state changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError, Message

from cccfed.v1 import envelope_pb2
from federation.crypto import CTX_ENVELOPE, CTX_RECEIPT, CTX_RECEIPT_BATCH, Signer, sha256, verify
from federation.errors import VerificationError
from federation.ids import uuid7
from federation.manifest import TrustedManifest
from federation.merkle import audit_paths, leaf_hash, verify_inclusion
from federation.timestamps import set_datetime, to_datetime

PROTOCOL_VERSION = 1


@dataclass(frozen=True)
class Policy:
    """Limits a receiver applies to every envelope."""

    max_envelope_bytes: int = 4 * 1024 * 1024
    # Allowed lead of the sender's clock over ours (created_at in the future).
    max_clock_skew: timedelta = timedelta(minutes=5)
    # Allowed age of created_at. Long, because a message may wait in the sender's outbox while
    # the recipient is down; replay within it is stopped by the persistent seen-id record.
    max_message_age: timedelta = timedelta(days=30)


@dataclass(frozen=True)
class Opened:
    """An envelope that passed every check, with the exact bytes it arrived as."""

    envelope_bytes: bytes
    envelope: envelope_pb2.Envelope
    header: envelope_pb2.Header

    @property
    def message_id(self) -> str:
        return self.header.message_id

    @property
    def kind(self) -> str:
        return self.header.kind

    @property
    def payload(self) -> bytes:
        return self.envelope.payload

    @property
    def created_at(self) -> datetime:
        return to_datetime(self.header.created_at)

    def parse(self, message: Message) -> None:
        """Parse the payload into ``message`` (whose full name must equal the header kind)."""
        if message.DESCRIPTOR.full_name != self.kind:
            raise VerificationError(
                f"payload kind {self.kind} is not {message.DESCRIPTOR.full_name}",
                reason="UNSUPPORTED_KIND",
            )
        try:
            message.ParseFromString(self.payload)
        except DecodeError as e:
            raise VerificationError("payload is malformed", reason="MALFORMED") from e


def kind_of(message: Message) -> str:
    return str(message.DESCRIPTOR.full_name)


def seal(
    signer: Signer,
    *,
    sender_node: str,
    recipient_node: str,
    payload: Message | bytes,
    kind: str | None = None,
    now: datetime,
    sender_bureau: str = "",
    recipient_bureau: str = "",
    message_id: str | None = None,
    correlation_id: str = "",
) -> bytes:
    """Build, sign and serialize an envelope; returns the exact bytes to store and send."""
    if isinstance(payload, Message):
        kind = kind or kind_of(payload)
        payload_bytes = payload.SerializeToString(deterministic=True)
    else:
        if kind is None:
            raise ValueError("kind is required for a raw payload")
        payload_bytes = payload
    header = envelope_pb2.Header(
        version=PROTOCOL_VERSION,
        message_id=message_id or uuid7(now),
        correlation_id=correlation_id,
        kind=kind,
        sender_node=sender_node,
        sender_bureau=sender_bureau or sender_node,
        recipient_node=recipient_node,
        recipient_bureau=recipient_bureau or recipient_node,
        signing_key_id=signer.key_id,
        payload_sha256=sha256(payload_bytes),
    )
    set_datetime(header.created_at, now.astimezone(UTC))
    header_bytes = header.SerializeToString(deterministic=True)
    env = envelope_pb2.Envelope(
        header=header_bytes,
        payload=payload_bytes,
        signature=signer.sign(CTX_ENVELOPE, header_bytes),
    )
    return env.SerializeToString(deterministic=True)


def _parse(message: Message, data: bytes, what: str) -> None:
    try:
        message.ParseFromString(data)
    except DecodeError as e:
        raise VerificationError(f"{what} is malformed", reason="MALFORMED") from e


#: The canonical text form of a UUID, exactly as ``str(uuid.UUID(...))`` writes it.
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _valid_uuid(value: str) -> bool:
    return _CANONICAL_UUID.fullmatch(value) is not None


def open_envelope(
    envelope_bytes: bytes,
    manifest: TrustedManifest,
    *,
    self_node: str,
    peer_node: str,
    now: datetime,
    policy: Policy,
    allowed_kinds: frozenset[str] | None = None,
) -> Opened:
    """Verify an envelope exactly as received. Raises VerificationError; changes nothing.

    ``peer_node`` is the node identity proven by the TLS handshake (or, offline, the sender the
    log recorded).
    """
    # 1. Size first: nothing else is worth doing on an oversize message.
    if len(envelope_bytes) > policy.max_envelope_bytes:
        raise VerificationError(
            f"envelope of {len(envelope_bytes)} bytes exceeds {policy.max_envelope_bytes}",
            reason="OVERSIZE",
        )
    # 2. Structure: the envelope and its header must parse; the header is kept as bytes.
    env = envelope_pb2.Envelope()
    _parse(env, envelope_bytes, "envelope")
    header = envelope_pb2.Header()
    _parse(header, env.header, "envelope header")
    if header.version != PROTOCOL_VERSION:
        raise VerificationError(
            f"protocol version {header.version} is not supported", reason="UNSUPPORTED_VERSION"
        )
    if not _valid_uuid(header.message_id):
        raise VerificationError("message_id is not a canonical UUID", reason="MALFORMED")
    # 3. The key must be listed, not revoked, valid now, and belong to the claimed sender.
    key = manifest.signing_key(header.signing_key_id, now)
    if key.member != header.sender_node:
        raise VerificationError(
            f"signing key belongs to {key.member}, not to sender {header.sender_node}",
            reason="KEY_SENDER_MISMATCH",
        )
    # 4. The signed sender must be the node the TLS handshake proved.
    if header.sender_node != peer_node:
        raise VerificationError(
            f"envelope signed as {header.sender_node} arrived from {peer_node}",
            reason="SENDER_MISMATCH",
        )
    # 5. Signature over the header bytes as received.
    verify(key.public_key, env.signature, CTX_ENVELOPE, env.header, what="envelope signature")
    # 6. The payload is the one the header committed to.
    if sha256(env.payload) != header.payload_sha256:
        raise VerificationError("payload does not match its hash", reason="PAYLOAD_HASH_MISMATCH")
    # 7. Addressed to us, and to a bureau we serve.
    if header.recipient_node != self_node:
        raise VerificationError(
            f"envelope is for {header.recipient_node}, this node is {self_node}",
            reason="WRONG_RECIPIENT",
        )
    bureau = header.recipient_bureau or header.recipient_node
    if manifest.bureau_to_node.get(bureau) != self_node:
        raise VerificationError(
            f"bureau {bureau} is not served by node {self_node}", reason="WRONG_RECIPIENT"
        )
    if manifest.bureau_to_node.get(header.sender_bureau or header.sender_node) != peer_node:
        raise VerificationError(
            f"sender bureau {header.sender_bureau} is not under {peer_node}",
            reason="SENDER_MISMATCH",
        )
    # 8. Freshness: the sender's clock may lead ours by the skew; age is bounded by policy.
    try:
        created = to_datetime(header.created_at)
    except (ValueError, OverflowError) as e:
        raise VerificationError("created_at is not a valid timestamp", reason="MALFORMED") from e
    if created > now + policy.max_clock_skew:
        raise VerificationError(
            f"created_at {created.isoformat()} is ahead of this node's clock by more than "
            f"{policy.max_clock_skew}",
            reason="CLOCK_SKEW",
        )
    if created < now - policy.max_message_age:
        raise VerificationError(
            f"created_at {created.isoformat()} is older than {policy.max_message_age}",
            reason="CLOCK_SKEW",
        )
    # 9. The kind must be one this service carries.
    if allowed_kinds is not None and header.kind not in allowed_kinds:
        raise VerificationError(
            f"kind {header.kind} is not carried by this service", reason="UNSUPPORTED_KIND"
        )
    return Opened(envelope_bytes=envelope_bytes, envelope=env, header=header)


def receipt_body(
    signer: Signer,
    opened: Opened,
    *,
    receiver_node: str,
    received_at: datetime,
    envelope_sha256: bytes | None = None,
) -> bytes:
    """The serialized ReceiptBody for a committed envelope (to sign alone or in a batch).

    ``envelope_sha256``, if the caller has already hashed ``opened.envelope_bytes``, saves
    hashing them again.
    """
    body = envelope_pb2.ReceiptBody(
        version=PROTOCOL_VERSION,
        message_id=opened.message_id,
        header_sha256=sha256(opened.envelope.header),
        envelope_sha256=envelope_sha256 or sha256(opened.envelope_bytes),
        receiver_node=receiver_node,
        sender_node=opened.header.sender_node,
        signing_key_id=signer.key_id,
        status=envelope_pb2.RECEIPT_STATUS_ACCEPTED,
    )
    set_datetime(body.received_at, received_at.astimezone(UTC))
    return body.SerializeToString(deterministic=True)


def make_receipt(
    signer: Signer,
    opened: Opened,
    *,
    receiver_node: str,
    received_at: datetime,
    envelope_sha256: bytes | None = None,
) -> bytes:
    """Sign a receipt for a committed envelope; returns the Receipt bytes to store and send."""
    body = receipt_body(
        signer,
        opened,
        receiver_node=receiver_node,
        received_at=received_at,
        envelope_sha256=envelope_sha256,
    )
    return sign_receipts(signer, receiver_node, [body])[0]


def sign_receipts(signer: Signer, receiver_node: str, bodies: list[bytes]) -> list[bytes]:
    """Sign the receipt bodies of one transaction; returns each Receipt's bytes, in order.

    One body gets a receipt of its own (``CTX_RECEIPT`` over the body). Several share one
    signature (docs/PROTOCOL.md §7.5): over ``CTX_RECEIPT_BATCH`` and a ReceiptBatchHead that
    holds the RFC 6962 root of their leaf hashes; each receipt carries the head and its audit
    path, so it can be checked alone, years later, like any other receipt.
    """
    if len(bodies) == 1:
        body = bodies[0]
        return [
            envelope_pb2.Receipt(
                body=body, signature=signer.sign(CTX_RECEIPT, body)
            ).SerializeToString(deterministic=True)
        ]
    root, paths = audit_paths([leaf_hash(b) for b in bodies])
    head = envelope_pb2.ReceiptBatchHead(
        version=PROTOCOL_VERSION,
        receiver_node=receiver_node,
        signing_key_id=signer.key_id,
        tree_size=len(bodies),
        root_hash=root,
    ).SerializeToString(deterministic=True)
    signature = signer.sign(CTX_RECEIPT_BATCH, head)
    return [
        envelope_pb2.Receipt(
            body=body,
            signature=signature,
            batch=envelope_pb2.ReceiptBatchProof(head=head, leaf_index=i, inclusion_path=path),
        ).SerializeToString(deterministic=True)
        for i, (body, path) in enumerate(zip(bodies, paths, strict=True))
    ]


#: (head bytes, signature) pairs whose batch signature verified. The head names the signing
#: key id (a certificate fingerprint), and callers resolve the key from that id, so a pair that
#: verified once always verifies; the validity and revocation of the key at the time asked
#: about is checked by the caller every time, before this. Bounded; oldest out first.
_VERIFIED_HEADS: dict[tuple[bytes, bytes], None] = {}
_VERIFIED_HEADS_MAX = 1024


def check_receipt_signature(
    receipt: envelope_pb2.Receipt,
    body: envelope_pb2.ReceiptBody,
    public_key: ec.EllipticCurvePublicKey,
) -> None:
    """Check that ``public_key`` signed ``receipt.body``, alone or in a batch (§7.5).

    ``public_key`` must be the key of ``body.signing_key_id``. Raises VerificationError:
    ``BAD_SIGNATURE`` (no valid signature covers the body), ``MALFORMED``,
    ``UNSUPPORTED_VERSION`` or ``RECEIPT_SIGNER_MISMATCH`` (the head names another signer).
    """
    if not receipt.HasField("batch"):
        verify(public_key, receipt.signature, CTX_RECEIPT, receipt.body, what="receipt signature")
        return
    proof = receipt.batch
    head = envelope_pb2.ReceiptBatchHead()
    _parse(head, proof.head, "receipt batch head")
    if head.version != PROTOCOL_VERSION:
        raise VerificationError(
            f"receipt batch version {head.version} is not supported", reason="UNSUPPORTED_VERSION"
        )
    if head.signing_key_id != body.signing_key_id or head.receiver_node != body.receiver_node:
        raise VerificationError(
            "receipt batch head names another signer than its receipt",
            reason="RECEIPT_SIGNER_MISMATCH",
        )
    if head.tree_size < 2:
        raise VerificationError("a receipt batch has at least 2 receipts", reason="MALFORMED")
    try:
        verify_inclusion(
            leaf_hash(receipt.body),
            proof.leaf_index,
            head.tree_size,
            list(proof.inclusion_path),
            head.root_hash,
        )
    except VerificationError as e:
        raise VerificationError(
            f"receipt is not in its signed batch: {e}", reason="BAD_SIGNATURE"
        ) from e
    seen = (proof.head, receipt.signature)
    if seen in _VERIFIED_HEADS:
        return
    verify(public_key, receipt.signature, CTX_RECEIPT_BATCH, proof.head, what="receipt signature")
    if len(_VERIFIED_HEADS) >= _VERIFIED_HEADS_MAX:
        # pop with a default: another thread (a CLI verifying logs) may have evicted it first
        _VERIFIED_HEADS.pop(next(iter(_VERIFIED_HEADS), seen), None)
    _VERIFIED_HEADS[seen] = None


@dataclass(frozen=True)
class VerifiedReceipt:
    receipt_bytes: bytes
    body: envelope_pb2.ReceiptBody
    #: When the receiver committed the envelope (the receipt's signed ``received_at``).
    received_at: datetime
    #: When the envelope it covers was sealed (its signed ``created_at``).
    created_at: datetime | None = None


def verify_receipt(
    receipt_bytes: bytes,
    envelope_bytes: bytes,
    manifest: TrustedManifest,
    *,
    expected_receiver: str,
    at: datetime,
    max_skew: timedelta | None = None,
) -> VerifiedReceipt:
    """Check that a receipt is signed by ``expected_receiver`` and covers exactly our envelope.

    With ``max_skew`` (a sender checking a receipt it has just been given, ``at`` = now), the
    receiver's ``received_at`` must also be plausible: not before the envelope's ``created_at``
    and not after ``at``, each with that tolerance (``RECEIPT_TIME``). The reply period runs
    from ``received_at`` on both sides, so a receipt dated ahead would lengthen it silently.
    """
    receipt = envelope_pb2.Receipt()
    _parse(receipt, receipt_bytes, "receipt")
    body = envelope_pb2.ReceiptBody()
    _parse(body, receipt.body, "receipt body")
    if body.version != PROTOCOL_VERSION:
        raise VerificationError(
            f"receipt version {body.version} is not supported", reason="UNSUPPORTED_VERSION"
        )
    key = manifest.signing_key(body.signing_key_id, at)
    if key.member != expected_receiver or body.receiver_node != expected_receiver:
        raise VerificationError(
            f"receipt signed by {key.member} for {body.receiver_node}, "
            f"expected {expected_receiver}",
            reason="RECEIPT_SIGNER_MISMATCH",
        )
    check_receipt_signature(receipt, body, key.public_key)
    try:
        received = to_datetime(body.received_at)
    except (ValueError, OverflowError) as e:
        raise VerificationError("received_at is not a valid timestamp", reason="MALFORMED") from e
    env = envelope_pb2.Envelope()
    _parse(env, envelope_bytes, "envelope")
    if body.envelope_sha256 != sha256(envelope_bytes) or body.header_sha256 != sha256(env.header):
        raise VerificationError(
            "receipt does not cover the envelope that was sent", reason="RECEIPT_MISMATCH"
        )
    header = envelope_pb2.Header()
    _parse(header, env.header, "envelope header")
    if body.message_id != header.message_id or body.sender_node != header.sender_node:
        raise VerificationError(
            "receipt names another message or sender", reason="RECEIPT_MISMATCH"
        )
    if body.status != envelope_pb2.RECEIPT_STATUS_ACCEPTED:
        raise VerificationError(f"receipt status {body.status} is not ACCEPTED", reason="MALFORMED")
    try:
        created: datetime | None = to_datetime(header.created_at)
    except (ValueError, OverflowError):
        created = None
    if max_skew is not None:
        if created is None:
            raise VerificationError("created_at is not a valid timestamp", reason="MALFORMED")
        if received < created - max_skew or received > at + max_skew:
            raise VerificationError(
                f"receipt says received at {received.isoformat()}, implausible for a message "
                f"created at {created.isoformat()} and answered by {at.isoformat()} "
                f"(tolerance {max_skew.total_seconds():.0f} s)",
                reason="RECEIPT_TIME",
            )
    return VerifiedReceipt(
        receipt_bytes=receipt_bytes, body=body, received_at=received, created_at=created
    )


def header_of(envelope_bytes: bytes) -> envelope_pb2.Header:
    """Parse the header of envelope bytes without verifying anything (for logs and listings)."""
    env = envelope_pb2.Envelope()
    _parse(env, envelope_bytes, "envelope")
    header = envelope_pb2.Header()
    _parse(header, env.header, "envelope header")
    return header
