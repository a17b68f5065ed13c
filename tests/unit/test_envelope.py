"""federation.envelope: sealing, opening and receipts; every refusal has its specific reason."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given, settings
from hypothesis import strategies as st

from cccfed.v1 import envelope_pb2, federation_pb2
from federation.crypto import CTX_ENVELOPE, CTX_RECEIPT, Signer, sha256
from federation.envelope import (
    PROTOCOL_VERSION,
    Opened,
    Policy,
    kind_of,
    make_receipt,
    open_envelope,
    seal,
    verify_receipt,
)
from federation.errors import VerificationError
from federation.manifest import TrustedManifest
from node import pki

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"
POLICY = Policy()
PING = federation_pb2.Ping(note="ping from 310000")
PING_KIND = kind_of(PING)


# --------------------------------------------------------------------------------------------
# helpers


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
def env(sh: Signer, now: datetime) -> bytes:
    """A valid Ping from Shanghai to Jiangsu, created at NOW."""
    return seal(sh, sender_node=SH, recipient_node=JS, payload=PING, now=now)


def open_as_js(
    data: bytes,
    manifest: TrustedManifest,
    now: datetime,
    *,
    peer: str = SH,
    policy: Policy = POLICY,
    allowed_kinds: frozenset[str] | None = None,
) -> Opened:
    return open_envelope(
        data,
        manifest,
        self_node=JS,
        peer_node=peer,
        now=now,
        policy=policy,
        allowed_kinds=allowed_kinds,
    )


EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def parts(data: bytes) -> tuple[envelope_pb2.Envelope, envelope_pb2.Header]:
    e = envelope_pb2.Envelope()
    e.ParseFromString(data)
    h = envelope_pb2.Header()
    h.ParseFromString(e.header)
    return e, h


def rebuild(
    data: bytes,
    *,
    header: bytes | None = None,
    payload: bytes | None = None,
    signature: bytes | None = None,
) -> bytes:
    """The same envelope with some of its three byte fields replaced (no re-signing)."""
    e, _ = parts(data)
    return envelope_pb2.Envelope(
        header=e.header if header is None else header,
        payload=e.payload if payload is None else payload,
        signature=e.signature if signature is None else signature,
    ).SerializeToString(deterministic=True)


def signed(signer: Signer, header: envelope_pb2.Header, payload: bytes) -> bytes:
    """Sign an arbitrary header properly (for headers ``seal`` would never produce)."""
    hb = header.SerializeToString(deterministic=True)
    return envelope_pb2.Envelope(
        header=hb, payload=payload, signature=signer.sign(CTX_ENVELOPE, hb)
    ).SerializeToString(deterministic=True)


def flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def reason_of(excinfo: pytest.ExceptionInfo[VerificationError]) -> str:
    return excinfo.value.reason


# --------------------------------------------------------------------------------------------
# round trip


def test_round_trip(env: bytes, trusted_manifest: TrustedManifest, now: datetime) -> None:
    opened = open_as_js(env, trusted_manifest, now)
    assert opened.envelope_bytes == env
    assert opened.kind == "cccfed.v1.Ping"
    assert opened.header.version == PROTOCOL_VERSION
    assert opened.header.sender_node == SH
    assert opened.header.sender_bureau == SH
    assert opened.header.recipient_node == JS
    assert opened.header.recipient_bureau == JS
    assert opened.created_at == now
    assert str(uuid.UUID(opened.message_id)) == opened.message_id
    # A fresh id is a version 7 UUID whose timestamp is the created_at millisecond (ids.py).
    assert uuid.UUID(opened.message_id).version == 7
    assert uuid.UUID(opened.message_id).int >> 80 == (now - EPOCH) // timedelta(milliseconds=1)
    assert opened.header.payload_sha256 == sha256(opened.payload)
    ping = federation_pb2.Ping()
    opened.parse(ping)
    assert ping == PING


def test_seal_keeps_given_ids_and_bureaus(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    mid, cid = str(uuid.uuid4()), str(uuid.uuid4())
    data = seal(
        sh,
        sender_node=SH,
        sender_bureau="310115",
        recipient_node=JS,
        recipient_bureau="320500",
        payload=PING,
        now=now,
        message_id=mid,
        correlation_id=cid,
    )
    opened = open_as_js(data, trusted_manifest, now)
    assert opened.message_id == mid
    assert opened.header.correlation_id == cid
    assert opened.header.sender_bureau == "310115"
    assert opened.header.recipient_bureau == "320500"
    assert opened.header.signing_key_id == sh.key_id


def test_seal_raw_payload_needs_kind(sh: Signer, now: datetime) -> None:
    with pytest.raises(ValueError, match="kind"):
        seal(sh, sender_node=SH, recipient_node=JS, payload=b"raw", now=now)


def test_seal_is_deterministic_apart_from_the_signature(sh: Signer, now: datetime) -> None:
    mid = str(uuid.uuid4())
    a, b = (
        seal(sh, sender_node=SH, recipient_node=JS, payload=PING, now=now, message_id=mid)
        for _ in range(2)
    )
    assert parts(a)[0].header == parts(b)[0].header
    assert parts(a)[0].payload == parts(b)[0].payload


# --------------------------------------------------------------------------------------------
# tampering


def test_header_byte_in_signed_field_is_bad_signature(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, h = parts(env)
    # The last header byte belongs to payload_sha256: the header still parses, the key is known.
    assert e.header.endswith(h.payload_sha256)
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, header=flip(e.header, len(e.header) - 1)), trusted_manifest, now)
    assert reason_of(ei) == "BAD_SIGNATURE"


def test_header_byte_in_created_at_is_bad_signature(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, h = parts(env)
    ts = h.created_at.SerializeToString()
    i = e.header.index(ts)
    assert ts[0] == 0x08  # seconds varint follows
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, header=flip(e.header, i + 1)), trusted_manifest, now)
    assert reason_of(ei) == "BAD_SIGNATURE"


def test_header_byte_breaking_structure_is_malformed(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, _ = parts(env)
    assert e.header[0] == 0x08  # field 1 (version), varint
    # 0x08 ^ 0x07 = 0x0f: field 1 with wire type 7, which does not exist.
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, header=flip(e.header, 0, 0x07)), trusted_manifest, now)
    assert reason_of(ei) == "MALFORMED"


def test_header_byte_in_key_id_is_unknown_key(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, h = parts(env)
    i = e.header.index(h.signing_key_id.encode())
    assert chr(e.header[i]) in "0123456789abcdef"
    tampered = bytearray(e.header)
    tampered[i] = ord("0") if tampered[i] != ord("0") else ord("1")
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, header=bytes(tampered)), trusted_manifest, now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_key_id_replaced_is_unknown_key(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    _, h = parts(seal(sh, sender_node=SH, recipient_node=JS, payload=PING, now=now))
    h.signing_key_id = "00" * 32
    with pytest.raises(VerificationError) as ei:
        open_as_js(signed(sh, h, PING.SerializeToString()), trusted_manifest, now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_payload_byte_is_hash_mismatch(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, _ = parts(env)
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, payload=flip(e.payload, len(e.payload) - 1)), trusted_manifest, now)
    assert reason_of(ei) == "PAYLOAD_HASH_MISMATCH"


def test_payload_extended_is_hash_mismatch(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, _ = parts(env)
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, payload=e.payload + b"\x00"), trusted_manifest, now)
    assert reason_of(ei) == "PAYLOAD_HASH_MISMATCH"


@pytest.mark.parametrize("where", ["first", "last", "empty", "other_envelope"])
def test_signature_tampered_is_bad_signature(
    where: str, env: bytes, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    e, _ = parts(env)
    sig = {
        "first": flip(e.signature, 0),  # breaks the DER structure
        "last": flip(e.signature, len(e.signature) - 1),  # a valid DER, wrong value
        "empty": b"",
        "other_envelope": parts(seal(sh, sender_node=SH, recipient_node=JS, payload=PING, now=now))[
            0
        ].signature,
    }[where]
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, signature=sig), trusted_manifest, now)
    assert reason_of(ei) == "BAD_SIGNATURE"


def test_signature_with_wrong_context_is_bad_signature(
    env: bytes, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """A receipt-context signature over the same header bytes is not an envelope signature."""
    e, _ = parts(env)
    with pytest.raises(VerificationError) as ei:
        open_as_js(rebuild(env, signature=sh.sign(CTX_RECEIPT, e.header)), trusted_manifest, now)
    assert reason_of(ei) == "BAD_SIGNATURE"


# --------------------------------------------------------------------------------------------
# identities and addressing


def test_key_of_another_member_is_key_sender_mismatch(
    zj: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = seal(zj, sender_node=SH, recipient_node=JS, payload=PING, now=now)
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now, peer=SH)
    assert reason_of(ei) == "KEY_SENDER_MISMATCH"


def test_tls_key_cannot_sign_envelopes(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    d = pki.FederationDir(federation_dir).node_dir(SH)
    tls_signer = Signer.from_pem((d / "tls.key").read_bytes(), (d / "tls.crt").read_bytes())
    assert tls_signer.key_id in trusted_manifest.keys  # listed, but as a TLS certificate
    data = seal(tls_signer, sender_node=SH, recipient_node=JS, payload=PING, now=now)
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_sender_not_tls_peer_is_sender_mismatch(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(env, trusted_manifest, now, peer=ZJ)
    assert reason_of(ei) == "SENDER_MISMATCH"


def test_sender_bureau_of_another_province_is_sender_mismatch(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = seal(
        sh, sender_node=SH, sender_bureau="330100", recipient_node=JS, payload=PING, now=now
    )
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "SENDER_MISMATCH"


def test_wrong_recipient_node(sh: Signer, trusted_manifest: TrustedManifest, now: datetime) -> None:
    data = seal(sh, sender_node=SH, recipient_node=ZJ, payload=PING, now=now)
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "WRONG_RECIPIENT"


@pytest.mark.parametrize(
    "bureau",
    [
        "330100",  # Hangzhou: a city of Zhejiang, not Jiangsu
        "341300",  # Suzhou (宿州), Anhui — not Suzhou (苏州) 320500
        "310000",  # another province's own code
        "320581",  # Changshu: a county under Suzhou, not a federation address
        "999999",
    ],
)
def test_recipient_bureau_not_under_recipient_is_wrong_recipient(
    bureau: str, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = seal(
        sh, sender_node=SH, recipient_node=JS, recipient_bureau=bureau, payload=PING, now=now
    )
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "WRONG_RECIPIENT"


@pytest.mark.parametrize("bureau", ["320500", "320100", "321300", "320000"])
def test_recipient_bureau_under_recipient_is_accepted(
    bureau: str, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = seal(
        sh, sender_node=SH, recipient_node=JS, recipient_bureau=bureau, payload=PING, now=now
    )
    assert open_as_js(data, trusted_manifest, now).header.recipient_bureau == bureau


def test_key_issued_by_ca_but_not_listed_is_unknown_key(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    ca_key, ca_cert = pki.FederationDir(federation_dir).ca()
    key, cert = pki.issue_cert(ca_key, ca_cert, SH, "signing", now)
    rogue = Signer.from_pem(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        cert.public_bytes(serialization.Encoding.PEM),
    )
    data = seal(rogue, sender_node=SH, recipient_node=JS, payload=PING, now=now)
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_revoked_key_is_refused(
    federation_dir: Path,
    tmp_path: Path,
    env: bytes,
    load_trusted: Callable[..., TrustedManifest],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    _, h = parts(env)
    serial = trusted_manifest.keys[h.signing_key_id].serial
    pki.revoke(root, serial, reason="key compromise", now=now)
    revoked = load_trusted(root)
    assert revoked.serial == trusted_manifest.serial + 1
    with pytest.raises(VerificationError) as ei:
        open_as_js(env, revoked, now)
    assert reason_of(ei) == "REVOKED_KEY"
    # The session federation is untouched.
    assert load_trusted().serial == trusted_manifest.serial
    assert open_as_js(env, trusted_manifest, now).envelope_bytes == env


def test_expired_signing_key_is_refused(
    env: bytes, trusted_manifest: TrustedManifest, sh: Signer
) -> None:
    key = trusted_manifest.keys[sh.key_id]
    later = key.not_after + timedelta(seconds=1)
    with pytest.raises(VerificationError) as ei:
        open_as_js(env, trusted_manifest, later, policy=Policy(max_message_age=timedelta(days=999)))
    assert reason_of(ei) == "EXPIRED_KEY"


# --------------------------------------------------------------------------------------------
# freshness


def _at(sh: Signer, created: datetime) -> bytes:
    return seal(sh, sender_node=SH, recipient_node=JS, payload=PING, now=created)


@pytest.mark.parametrize(
    "offset",
    [
        POLICY.max_clock_skew + timedelta(microseconds=1),
        POLICY.max_clock_skew + timedelta(hours=1),
        -POLICY.max_message_age - timedelta(microseconds=1),
        -POLICY.max_message_age - timedelta(days=1),
    ],
    ids=["ahead-by-1us", "ahead-by-1h", "older-by-1us", "older-by-1d"],
)
def test_created_at_out_of_bounds_is_clock_skew(
    offset: timedelta, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(_at(sh, now + offset), trusted_manifest, now)
    assert reason_of(ei) == "CLOCK_SKEW"


@pytest.mark.parametrize(
    "offset",
    [
        POLICY.max_clock_skew,
        POLICY.max_clock_skew - timedelta(microseconds=1),
        timedelta(0),
        -POLICY.max_message_age + timedelta(microseconds=1),
        -POLICY.max_message_age,
    ],
    ids=["ahead-by-skew", "ahead-just-inside", "now", "old-just-inside", "old-by-max-age"],
)
def test_created_at_inside_bounds_is_accepted(
    offset: timedelta, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    opened = open_as_js(_at(sh, now + offset), trusted_manifest, now)
    assert opened.created_at == now + offset


def test_clock_skew_follows_the_policy(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = _at(sh, now + timedelta(seconds=10))
    strict = Policy(max_clock_skew=timedelta(seconds=5), max_message_age=timedelta(seconds=5))
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now, policy=strict)
    assert reason_of(ei) == "CLOCK_SKEW"
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now + timedelta(seconds=16), policy=strict)
    assert reason_of(ei) == "CLOCK_SKEW"
    assert open_as_js(data, trusted_manifest, now + timedelta(seconds=12), policy=strict)


def test_created_at_in_another_timezone_is_normalised(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    from zoneinfo import ZoneInfo

    local = now.astimezone(ZoneInfo("Asia/Shanghai"))
    assert open_as_js(_at(sh, local), trusted_manifest, now).created_at == now


@pytest.mark.parametrize(
    ("seconds", "nanos"), [(2**62, 0), (-(2**62), 0), (0, -1), (0, 1_000_000_000)]
)
def test_invalid_created_at_timestamp_is_malformed(
    seconds: int, nanos: int, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    _, h = parts(_at(sh, now))
    h.created_at.seconds = seconds
    h.created_at.nanos = nanos
    data = signed(sh, h, PING.SerializeToString(deterministic=True))
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "MALFORMED"


# --------------------------------------------------------------------------------------------
# structure, version, size, kind


def test_unsupported_version(sh: Signer, trusted_manifest: TrustedManifest, now: datetime) -> None:
    _, h = parts(_at(sh, now))
    for version in (0, 2):
        h.version = version
        with pytest.raises(VerificationError) as ei:
            open_as_js(signed(sh, h, PING.SerializeToString()), trusted_manifest, now)
        assert reason_of(ei) == "UNSUPPORTED_VERSION"


def test_oversize(env: bytes, trusted_manifest: TrustedManifest, now: datetime) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(env, trusted_manifest, now, policy=Policy(max_envelope_bytes=len(env) - 1))
    assert reason_of(ei) == "OVERSIZE"
    # Exactly at the limit is fine.
    assert open_as_js(env, trusted_manifest, now, policy=Policy(max_envelope_bytes=len(env)))


def test_oversize_is_checked_before_parsing(
    trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(b"\xff" * 101, trusted_manifest, now, policy=Policy(max_envelope_bytes=100))
    assert reason_of(ei) == "OVERSIZE"


@pytest.mark.parametrize(
    "data",
    [
        b"\xff",
        b"\x0a\x05abc",  # header field longer than the data
        b"\x0f",  # invalid wire type
        envelope_pb2.Envelope(header=b"\xff\xff\xff", signature=b"x").SerializeToString(),
        envelope_pb2.Envelope(header=b"\x12\x02\xff\xfe").SerializeToString(),  # bad UTF-8
    ],
    ids=["garbage", "truncated", "wire-type", "header-garbage", "header-utf8"],
)
def test_malformed_bytes(data: bytes, trusted_manifest: TrustedManifest, now: datetime) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(data, trusted_manifest, now)
    assert reason_of(ei) == "MALFORMED"


def test_empty_bytes_are_refused(trusted_manifest: TrustedManifest, now: datetime) -> None:
    # An empty envelope parses to an empty header: version 0.
    with pytest.raises(VerificationError) as ei:
        open_as_js(b"", trusted_manifest, now)
    assert reason_of(ei) == "UNSUPPORTED_VERSION"


@pytest.mark.parametrize(
    "message_id",
    [
        "not-a-uuid",
        "",
        "6F1C9A7E-3B2D-4E5F-8A9B-0C1D2E3F4A5B",
        "{" + str(uuid.UUID(int=1)) + "}",
        uuid.UUID(int=1).hex,
        "urn:uuid:" + str(uuid.UUID(int=1)),
    ],
    ids=["text", "empty", "upper", "braces", "hex", "urn"],
)
def test_non_uuid_message_id_is_malformed(
    message_id: str, sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    _, h = parts(_at(sh, now))
    h.message_id = message_id
    with pytest.raises(VerificationError) as ei:
        open_as_js(signed(sh, h, PING.SerializeToString()), trusted_manifest, now)
    assert reason_of(ei) == "MALFORMED"


def test_kind_not_allowed(env: bytes, trusted_manifest: TrustedManifest, now: datetime) -> None:
    with pytest.raises(VerificationError) as ei:
        open_as_js(
            env,
            trusted_manifest,
            now,
            allowed_kinds=frozenset({kind_of(federation_pb2.GetManifestRequest())}),
        )
    assert reason_of(ei) == "UNSUPPORTED_KIND"
    with pytest.raises(VerificationError) as ei:
        open_as_js(env, trusted_manifest, now, allowed_kinds=frozenset())
    assert reason_of(ei) == "UNSUPPORTED_KIND"
    assert open_as_js(env, trusted_manifest, now, allowed_kinds=frozenset({PING_KIND}))


def test_parse_with_wrong_message_type(
    env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    opened = open_as_js(env, trusted_manifest, now)
    with pytest.raises(VerificationError) as ei:
        opened.parse(federation_pb2.GetManifestRequest())
    assert reason_of(ei) == "UNSUPPORTED_KIND"


def test_parse_malformed_payload(
    sh: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    data = seal(sh, sender_node=SH, recipient_node=JS, payload=b"\xff", kind=PING_KIND, now=now)
    opened = open_as_js(data, trusted_manifest, now)  # the hash matches: the envelope is fine
    with pytest.raises(VerificationError) as ei:
        opened.parse(federation_pb2.Ping())
    assert reason_of(ei) == "MALFORMED"


# --------------------------------------------------------------------------------------------
# receipts


@pytest.fixture(scope="module")
def opened(env: bytes, trusted_manifest: TrustedManifest, now: datetime) -> Opened:
    return open_as_js(env, trusted_manifest, now)


def test_receipt_round_trip(
    opened: Opened, env: bytes, js: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    received_at = now + timedelta(seconds=2)
    receipt = make_receipt(js, opened, receiver_node=JS, received_at=received_at)
    vr = verify_receipt(receipt, env, trusted_manifest, expected_receiver=JS, at=now)
    assert vr.receipt_bytes == receipt
    assert vr.received_at == received_at
    assert vr.body.message_id == opened.message_id
    assert vr.body.sender_node == SH
    assert vr.body.receiver_node == JS
    assert vr.body.header_sha256 == sha256(opened.envelope.header)
    assert vr.body.envelope_sha256 == sha256(env)
    assert vr.body.status == envelope_pb2.RECEIPT_STATUS_ACCEPTED


def test_receipt_from_another_node(
    opened: Opened, env: bytes, zj: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for claimed in (ZJ, JS):  # honest about being Zhejiang, or claiming to be Jiangsu
        receipt = make_receipt(zj, opened, receiver_node=claimed, received_at=now)
        with pytest.raises(VerificationError) as ei:
            verify_receipt(receipt, env, trusted_manifest, expected_receiver=JS, at=now)
        assert reason_of(ei) == "RECEIPT_SIGNER_MISMATCH"


def test_receipt_naming_another_receiver(
    opened: Opened, env: bytes, js: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    receipt = make_receipt(js, opened, receiver_node=ZJ, received_at=now)
    with pytest.raises(VerificationError) as ei:
        verify_receipt(receipt, env, trusted_manifest, expected_receiver=JS, at=now)
    assert reason_of(ei) == "RECEIPT_SIGNER_MISMATCH"


def test_receipt_for_another_envelope(
    opened: Opened,
    sh: Signer,
    js: Signer,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    receipt = make_receipt(js, opened, receiver_node=JS, received_at=now)
    other = _at(sh, now)
    with pytest.raises(VerificationError) as ei:
        verify_receipt(receipt, other, trusted_manifest, expected_receiver=JS, at=now)
    assert reason_of(ei) == "RECEIPT_MISMATCH"


def test_receipt_for_same_header_other_envelope_bytes(
    opened: Opened, env: bytes, js: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    """Same header, different payload bytes: the envelope hash no longer matches."""
    receipt = make_receipt(js, opened, receiver_node=JS, received_at=now)
    other = rebuild(env, payload=b"")
    with pytest.raises(VerificationError) as ei:
        verify_receipt(receipt, other, trusted_manifest, expected_receiver=JS, at=now)
    assert reason_of(ei) == "RECEIPT_MISMATCH"


@pytest.mark.parametrize("part", ["signature", "body"])
def test_receipt_tampered(
    part: str,
    opened: Opened,
    env: bytes,
    js: Signer,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    r = envelope_pb2.Receipt()
    r.ParseFromString(make_receipt(js, opened, receiver_node=JS, received_at=now))
    if part == "signature":
        r.signature = flip(r.signature, len(r.signature) - 1)
    else:
        body = envelope_pb2.ReceiptBody()
        body.ParseFromString(r.body)
        body.received_at.seconds -= 3600  # backdate the receive time
        r.body = body.SerializeToString(deterministic=True)
    with pytest.raises(VerificationError) as ei:
        verify_receipt(r.SerializeToString(), env, trusted_manifest, expected_receiver=JS, at=now)
    assert reason_of(ei) == "BAD_SIGNATURE"


def test_receipt_malformed(env: bytes, trusted_manifest: TrustedManifest, now: datetime) -> None:
    for data in (b"\xff", envelope_pb2.Receipt(body=b"\xff\xff").SerializeToString()):
        with pytest.raises(VerificationError) as ei:
            verify_receipt(data, env, trusted_manifest, expected_receiver=JS, at=now)
        assert reason_of(ei) == "MALFORMED"


def test_receipt_unknown_key(
    opened: Opened, env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    r = envelope_pb2.Receipt()
    body = envelope_pb2.ReceiptBody(version=PROTOCOL_VERSION, signing_key_id="ab" * 32)
    r.body = body.SerializeToString()
    with pytest.raises(VerificationError) as ei:
        verify_receipt(r.SerializeToString(), env, trusted_manifest, expected_receiver=JS, at=now)
    assert reason_of(ei) == "UNKNOWN_KEY"


def test_receipt_with_invalid_received_at_is_malformed(
    opened: Opened, env: bytes, js: Signer, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    r = envelope_pb2.Receipt()
    r.ParseFromString(make_receipt(js, opened, receiver_node=JS, received_at=now))
    body = envelope_pb2.ReceiptBody()
    body.ParseFromString(r.body)
    body.received_at.seconds = 2**62
    r.body = body.SerializeToString(deterministic=True)
    r.signature = js.sign(CTX_RECEIPT, r.body)
    with pytest.raises(VerificationError) as ei:
        vr = verify_receipt(
            r.SerializeToString(), env, trusted_manifest, expected_receiver=JS, at=now
        )
        _ = vr.received_at
    assert reason_of(ei) == "MALFORMED"


# --------------------------------------------------------------------------------------------
# property tests: nothing but VerificationError ever escapes

FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(data=st.binary(max_size=600))
def test_random_bytes_only_raise_verification_error(
    data: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    try:
        open_as_js(data, trusted_manifest, now)
    except VerificationError:
        return
    raise AssertionError("random bytes opened as a valid envelope")


@FUZZ
@given(data=st.data())
def test_single_byte_mutation_fails_or_means_the_same(
    data: st.DataObject, env: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    index = data.draw(st.integers(0, len(env) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != env[index]), label="value")
    mutated = bytearray(env)
    mutated[index] = value
    try:
        opened = open_as_js(bytes(mutated), trusted_manifest, now)
    except VerificationError as e:
        assert e.reason.isupper()
        return
    original, _ = parts(env)
    assert opened.envelope.header == original.header
    assert opened.envelope.payload == original.payload
    assert opened.envelope.signature == original.signature


SKEW = timedelta(minutes=5)


@pytest.mark.parametrize(
    ("received", "at", "ok"),
    [
        (timedelta(seconds=2), timedelta(seconds=3), True),
        (-SKEW, timedelta(seconds=3), True),  # receiver's clock behind, within the tolerance
        (timedelta(minutes=4), timedelta(seconds=3), True),  # ahead, within the tolerance
        (-SKEW - timedelta(seconds=1), timedelta(seconds=3), False),  # before it was created
        (timedelta(days=10), timedelta(seconds=3), False),  # dated ahead: a longer reply period
        (timedelta(days=10), timedelta(days=20), True),  # an original receipt, resent later
    ],
    ids=[
        "normal",
        "behind-in-tolerance",
        "ahead-in-tolerance",
        "before-created",
        "postdated",
        "redelivered-later",
    ],
)
def test_receipt_received_at_must_be_plausible(
    opened: Opened,
    env: bytes,
    js: Signer,
    trusted_manifest: TrustedManifest,
    now: datetime,
    received: timedelta,
    at: timedelta,
    ok: bool,
) -> None:
    receipt = make_receipt(js, opened, receiver_node=JS, received_at=now + received)
    check_at = now + at
    if ok:
        vr = verify_receipt(
            receipt, env, trusted_manifest, expected_receiver=JS, at=check_at, max_skew=SKEW
        )
        assert vr.received_at == now + received
        return
    with pytest.raises(VerificationError) as e:
        verify_receipt(
            receipt, env, trusted_manifest, expected_receiver=JS, at=check_at, max_skew=SKEW
        )
    assert reason_of(e) == "RECEIPT_TIME"
    # Without a tolerance (offline re-verification of old records) it is not judged.
    verify_receipt(receipt, env, trusted_manifest, expected_receiver=JS, at=check_at)


def _canonical_by_uuid_module(value: str) -> bool:
    """The message-id rule as first written: what ``str(uuid.UUID(value))`` gives back."""
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False


@given(
    st.one_of(
        st.uuids().map(str),
        st.uuids().map(lambda u: str(u).upper()),
        st.tuples(st.uuids(), st.integers(0, 35)).map(  # one character in upper case
            lambda t: str(t[0])[: t[1]] + str(t[0])[t[1]].upper() + str(t[0])[t[1] + 1 :]
        ),
        st.uuids().map(lambda u: "{" + str(u) + "}"),
        st.uuids().map(lambda u: u.hex),
        st.uuids().map(lambda u: "urn:uuid:" + str(u)),
        st.uuids().map(lambda u: str(u) + "\n"),
        st.text(alphabet="0123456789abcdefABCDEF-{}", max_size=40),
        st.text(max_size=40),
    )
)
def test_message_id_check_accepts_exactly_canonical_uuids(value: str) -> None:
    from federation.envelope import _valid_uuid

    assert _valid_uuid(value) == _canonical_by_uuid_module(value)
