"""The hash-chained message log: record construction and offline verification (pure).

A node keeps every envelope and receipt it sent or received as the exact bytes, each wrapped in
a ``cccfed.v1.LogRecord`` whose ``prev_hash`` is the hash of the record before it. Altering,
dropping or reordering any record breaks the chain at that record; every envelope and receipt
signature is re-checked against the manifests the node held. Used by ``cccfed log verify`` (from
the store) and ``cccfed log verify-bundle`` (from an exported bundle, with no node and no store).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from google.protobuf.message import DecodeError

from cccfed.v1 import envelope_pb2, log_pb2, manifest_pb2
from federation.crypto import CTX_ENVELOPE, ec_public_key, sha256, verify
from federation.envelope import check_receipt_signature
from federation.errors import VerificationError
from federation.manifest import KeyInfo, load_manifest
from federation.timestamps import set_datetime

CTX_LOG = b"cccfed.v1.log\x00"
GENESIS = bytes(32)

SENT = log_pb2.LOG_DIRECTION_SENT
RECEIVED = log_pb2.LOG_DIRECTION_RECEIVED
ENVELOPE = log_pb2.LOG_RECORD_TYPE_ENVELOPE
RECEIPT = log_pb2.LOG_RECORD_TYPE_RECEIPT


class LogVerificationError(VerificationError):
    """A log record fails; ``seq`` names the first bad record."""

    reason = "LOG_INVALID"

    def __init__(self, seq: int, message: str) -> None:
        super().__init__(f"record {seq}: {message}")
        self.seq = seq


def record_hash(record_bytes: bytes) -> bytes:
    return sha256(CTX_LOG + record_bytes)


def make_record(
    *,
    seq: int,
    prev_hash: bytes,
    recorded_at: datetime,
    direction: int,
    rtype: int,
    message_id: str,
    peer_node: str,
    data: bytes,
) -> tuple[bytes, bytes]:
    """Serialize a log record; returns (record bytes, record hash)."""
    rec = log_pb2.LogRecord(
        seq=seq,
        prev_hash=prev_hash,
        direction=direction,  # type: ignore[arg-type]
        type=rtype,  # type: ignore[arg-type]
        message_id=message_id,
        peer_node=peer_node,
        data=data,
    )
    set_datetime(rec.recorded_at, recorded_at.astimezone(UTC))
    raw = rec.SerializeToString(deterministic=True)
    return raw, record_hash(raw)


@dataclass
class Keyring:
    """Every signing key any accepted manifest listed, with the time it was revoked (if ever)."""

    keys: dict[str, KeyInfo] = field(default_factory=dict)
    revoked_at: dict[str, datetime] = field(default_factory=dict)  # serial -> instant

    @classmethod
    def from_manifests(cls, signed_manifests: Iterable[bytes], ca: x509.Certificate) -> Keyring:
        ring = cls()
        for raw in signed_manifests:
            tm = load_manifest(raw, ca, now=None)
            for key_id, info in tm.keys.items():
                if info.purpose == "signing":
                    ring.keys[key_id] = info
            for r in tm.manifest.revoked:
                try:
                    at = r.revoked_at.ToDatetime(tzinfo=UTC)
                except (ValueError, OverflowError) as e:
                    raise VerificationError(
                        f"manifest {tm.serial}: revocation of {r.serial} has an invalid time",
                        reason="MANIFEST_MALFORMED",
                    ) from e
                prev = ring.revoked_at.get(r.serial)
                ring.revoked_at[r.serial] = at if prev is None else min(prev, at)
        return ring

    def check(self, key_id: str, signer: str, at: datetime) -> KeyInfo:
        info = self.keys.get(key_id)
        if info is None:
            raise VerificationError(f"signing key {key_id[:16]}… is unknown", reason="UNKNOWN_KEY")
        if info.member != signer:
            raise VerificationError(
                f"key of {info.member} used to sign as {signer}", reason="KEY_SENDER_MISMATCH"
            )
        revoked = self.revoked_at.get(info.serial)
        if revoked is not None and at >= revoked:
            raise VerificationError(
                f"key {info.serial} was revoked at {revoked.isoformat()}", reason="REVOKED_KEY"
            )
        if not info.not_before <= at < info.not_after:
            raise VerificationError(f"key {info.serial} not valid at {at}", reason="EXPIRED_KEY")
        return info


@dataclass(frozen=True)
class ChainReport:
    records: int
    envelopes: int
    receipts: int
    last_seq: int
    last_hash: bytes


def verify_envelope_signature(data: bytes, ring: Keyring, at: datetime) -> envelope_pb2.Header:
    env = envelope_pb2.Envelope()
    header = envelope_pb2.Header()
    try:
        env.ParseFromString(data)
        header.ParseFromString(env.header)
    except DecodeError as e:
        raise VerificationError("envelope is malformed", reason="MALFORMED") from e
    key = ring.check(header.signing_key_id, header.sender_node, at)
    verify(ec_public_key(key.cert), env.signature, CTX_ENVELOPE, env.header)
    if sha256(env.payload) != header.payload_sha256:
        raise VerificationError("payload does not match its hash", reason="PAYLOAD_HASH_MISMATCH")
    return header


def verify_receipt_signature(data: bytes, ring: Keyring, at: datetime) -> envelope_pb2.ReceiptBody:
    receipt = envelope_pb2.Receipt()
    body = envelope_pb2.ReceiptBody()
    try:
        receipt.ParseFromString(data)
        body.ParseFromString(receipt.body)
    except DecodeError as e:
        raise VerificationError("receipt is malformed", reason="MALFORMED") from e
    key = ring.check(body.signing_key_id, body.receiver_node, at)
    check_receipt_signature(receipt, body, ec_public_key(key.cert))
    return body


def verify_chain(
    records: Iterable[tuple[int, bytes, bytes]],
    ring: Keyring,
    *,
    self_node: str | None = None,
    prev_hash: bytes = GENESIS,
    first_seq: int = 1,
) -> ChainReport:
    """Verify ``(seq, record bytes, stored hash)`` triples in order.

    For each record: (1) the stored hash is the hash of the bytes; (2) sequence numbers are
    contiguous and the record names the previous record's hash; (3) the record's own seq matches;
    (4) the envelope or receipt inside verifies against the keyring at the time it was recorded,
    and its signer is the party the record's direction implies.
    Raises :class:`LogVerificationError` naming the first bad record.
    """
    expected_seq = first_seq
    n = envelopes = receipts = 0
    last_hash = prev_hash
    for seq, raw, stored in records:
        if seq != expected_seq:
            raise LogVerificationError(seq, f"expected record {expected_seq} (missing records)")
        if record_hash(raw) != stored:
            raise LogVerificationError(seq, "stored hash does not match the record bytes")
        rec = log_pb2.LogRecord()
        try:
            rec.ParseFromString(raw)
        except DecodeError:
            raise LogVerificationError(seq, "record bytes do not parse") from None
        if rec.seq != seq:
            raise LogVerificationError(seq, f"record says it is number {rec.seq}")
        if rec.prev_hash != last_hash:
            raise LogVerificationError(seq, "chain broken: previous hash does not match")
        try:
            at = rec.recorded_at.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError):
            raise LogVerificationError(seq, "recorded_at is not a valid timestamp") from None
        try:
            if rec.type == ENVELOPE:
                header = verify_envelope_signature(rec.data, ring, at)
                if header.message_id != rec.message_id:
                    raise VerificationError("message id differs from the envelope's")
                sender = self_node if rec.direction == SENT else rec.peer_node
                if self_node is not None and header.sender_node != sender:
                    raise VerificationError(f"envelope sender {header.sender_node} ≠ {sender}")
                envelopes += 1
            elif rec.type == RECEIPT:
                body = verify_receipt_signature(rec.data, ring, at)
                if body.message_id != rec.message_id:
                    raise VerificationError("message id differs from the receipt's")
                signer = rec.peer_node if rec.direction == RECEIVED else self_node
                if self_node is not None and body.receiver_node != signer:
                    raise VerificationError(f"receipt signer {body.receiver_node} ≠ {signer}")
                receipts += 1
            else:
                raise VerificationError(f"unknown record type {rec.type}")
        except VerificationError as e:
            raise LogVerificationError(seq, f"{e} [{e.reason}]") from e
        last_hash = stored
        expected_seq += 1
        n += 1
    return ChainReport(n, envelopes, receipts, expected_seq - 1, last_hash)


def manifest_serial(signed: bytes) -> int:
    outer = manifest_pb2.SignedManifest.FromString(signed)
    return int(manifest_pb2.Manifest.FromString(outer.manifest).serial)
