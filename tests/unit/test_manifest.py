"""federation.manifest: verifying the signed manifest against the CA, and the lookups on it."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cccfed.v1 import manifest_pb2
from federation import divisions
from federation.crypto import CTX_ENVELOPE, CTX_MANIFEST, fingerprint
from federation.errors import VerificationError
from federation.manifest import (
    MANIFEST_VERSION,
    TrustedManifest,
    cert_der,
    load_manifest,
    node_uri,
)
from node import pki

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"


# --------------------------------------------------------------------------------------------
# helpers


def node_cert(root: Path, code: str, name: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (pki.FederationDir(root).node_dir(code) / name).read_bytes()
    )


def body_of(signed: bytes) -> manifest_pb2.Manifest:
    sm = manifest_pb2.SignedManifest()
    sm.ParseFromString(signed)
    m = manifest_pb2.Manifest()
    m.ParseFromString(sm.manifest)
    return m


@pytest.fixture(scope="module")
def signed_bytes(federation_dir: Path) -> bytes:
    return (federation_dir / "manifest.bin").read_bytes()


@pytest.fixture(scope="module")
def ca(federation_dir: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    return pki.FederationDir(federation_dir).ca()


@pytest.fixture(scope="module")
def ca_cert(ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate]) -> x509.Certificate:
    return ca[1]


@pytest.fixture(scope="module")
def resign(federation_dir: Path) -> Callable[[manifest_pb2.Manifest], bytes]:
    """Sign a (modified) manifest body with the real federation CA key."""
    ca_key, _ = pki.FederationDir(federation_dir).ca()
    return lambda m: pki.sign_manifest(ca_key, m)


@pytest.fixture(scope="module")
def revoked_dir(
    federation_dir: Path, tmp_path_factory: pytest.TempPathFactory, now: datetime
) -> Path:
    """A copy of the federation in which Zhejiang's TLS certificate is revoked."""
    root = tmp_path_factory.mktemp("revoked") / "fed"
    shutil.copytree(federation_dir, root)
    pki.revoke(root, format(node_cert(root, ZJ, "tls.crt").serial_number, "x"), now=now)
    return root


# --------------------------------------------------------------------------------------------
# a valid manifest


def test_valid_manifest_loads(
    trusted_manifest: TrustedManifest, signed_bytes: bytes, now: datetime, federation_dir: Path
) -> None:
    tm = trusted_manifest
    assert tm.raw == signed_bytes
    assert tm.manifest.version == MANIFEST_VERSION
    assert tm.manifest.federation_id == pki.FEDERATION_ID
    assert tm.serial == 1
    assert tm.expires_at == now + timedelta(days=pki.MANIFEST_DAYS)
    assert not tm.is_expired(now)
    assert sorted(tm.members) == [SH, JS, ZJ, AH]
    assert tm.revoked == {}
    assert len(tm.keys) == 8
    for code in (SH, JS, ZJ, AH):
        mem = tm.member(code)
        assert mem.code == code
        assert mem.name == divisions.PROVINCES[code].name_en
        assert mem.endpoint.startswith("127.0.0.1:")
        assert [b[0] for b in mem.bureaus] == [b.code for b in divisions.bureaus_under(code)]
        purposes = sorted(k.purpose for k in tm.keys.values() if k.member == code)
        assert purposes == ["signing", "tls"]
        tls = cert_der(node_cert(federation_dir, code, "tls.crt"))
        key_id = fingerprint(cert_der(node_cert(federation_dir, code, "sign.crt")))
        assert tm.own_certificate_status(code, tls, key_id, now) == []
    assert len({m.endpoint for m in tm.members.values()}) == 4


def test_key_infos_match_the_node_certificates(
    federation_dir: Path, trusted_manifest: TrustedManifest
) -> None:
    for code in (SH, JS, ZJ, AH):
        for name, purpose in (("tls.crt", "tls"), ("sign.crt", "signing")):
            cert = node_cert(federation_dir, code, name)
            info = trusted_manifest.keys[fingerprint(cert_der(cert))]
            assert info.member == code
            assert info.purpose == purpose
            assert info.cert == cert
            assert info.serial == format(cert.serial_number, "x")
            assert info.not_before == cert.not_valid_before_utc
            assert info.not_after == cert.not_valid_after_utc
            assert info.public_key == cert.public_key()


@pytest.mark.parametrize(
    ("bureau", "node"),
    [
        ("320500", JS),  # Suzhou 苏州
        ("341300", AH),  # Suzhou 宿州
        ("321200", JS),  # Taizhou 泰州
        ("331000", ZJ),  # Taizhou 台州
        ("310115", SH),  # Pudong New Area
        ("310151", SH),  # Chongming District
        ("330100", ZJ),
        (SH, SH),
        (JS, JS),
        (ZJ, ZJ),
        (AH, AH),
    ],
)
def test_node_for_bureau(bureau: str, node: str, trusted_manifest: TrustedManifest) -> None:
    assert trusted_manifest.node_for_bureau(bureau) == node


@pytest.mark.parametrize("bureau", ["320581", "110000", "341400", "310230", "", "32050"])
def test_node_for_unknown_bureau(bureau: str, trusted_manifest: TrustedManifest) -> None:
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.node_for_bureau(bureau)
    assert ei.value.reason == "UNKNOWN_BUREAU"


def test_every_delta_bureau_is_routed(trusted_manifest: TrustedManifest) -> None:
    for code, b in divisions.BUREAUS.items():
        assert trusted_manifest.node_for_bureau(code) == b.province
    assert len(trusted_manifest.bureau_to_node) == len(divisions.BUREAUS)


def test_unknown_member(trusted_manifest: TrustedManifest) -> None:
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.member("110000")
    assert ei.value.reason == "UNKNOWN_NODE"


# --------------------------------------------------------------------------------------------
# signature, structure, expiry, rollback


def test_signed_by_another_ca(
    signed_bytes: bytes, ca_cert: x509.Certificate, now: datetime
) -> None:
    other_key, other_cert = pki.make_ca(now)
    forged = pki.sign_manifest(other_key, body_of(signed_bytes))
    with pytest.raises(VerificationError) as ei:
        load_manifest(forged, ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_BAD_SIGNATURE"
    # ...and the genuine manifest does not verify against the other CA either.
    with pytest.raises(VerificationError) as ei:
        load_manifest(signed_bytes, other_cert, now=now)
    assert ei.value.reason == "MANIFEST_BAD_SIGNATURE"


def test_tampered_manifest_byte(
    signed_bytes: bytes, ca_cert: x509.Certificate, now: datetime
) -> None:
    sm = manifest_pb2.SignedManifest()
    sm.ParseFromString(signed_bytes)
    start = signed_bytes.index(sm.manifest)
    for offset in (0, len(sm.manifest) // 2, len(sm.manifest) - 1):
        tampered = bytearray(signed_bytes)
        tampered[start + offset] ^= 0x01
        with pytest.raises(VerificationError) as ei:
            load_manifest(bytes(tampered), ca_cert, now=now)
        assert ei.value.reason == "MANIFEST_BAD_SIGNATURE", offset


def test_tampered_manifest_signature(
    signed_bytes: bytes, ca_cert: x509.Certificate, now: datetime
) -> None:
    sm = manifest_pb2.SignedManifest()
    sm.ParseFromString(signed_bytes)
    for sig in (sm.signature[:-1] + bytes([sm.signature[-1] ^ 1]), b"", b"\x30\x00"):
        bad = manifest_pb2.SignedManifest(manifest=sm.manifest, signature=sig)
        with pytest.raises(VerificationError) as ei:
            load_manifest(bad.SerializeToString(), ca_cert, now=now)
        assert ei.value.reason == "MANIFEST_BAD_SIGNATURE"


def test_manifest_signature_with_wrong_context(
    signed_bytes: bytes, ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], now: datetime
) -> None:
    ca_key, ca_cert = ca
    sm = manifest_pb2.SignedManifest()
    sm.ParseFromString(signed_bytes)
    sm.signature = ca_key.sign(CTX_ENVELOPE + sm.manifest, ec.ECDSA(hashes.SHA256()))
    with pytest.raises(VerificationError) as ei:
        load_manifest(sm.SerializeToString(), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_BAD_SIGNATURE"


def test_malformed_manifest(
    ca: tuple[ec.EllipticCurvePrivateKey, x509.Certificate], now: datetime
) -> None:
    ca_key, ca_cert = ca
    with pytest.raises(VerificationError) as ei:
        load_manifest(b"\xff\xff", ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"
    # A correctly signed body that is not a Manifest.
    body = b"\xff\xff"
    sig = ca_key.sign(CTX_MANIFEST + body, ec.ECDSA(hashes.SHA256()))
    signed = manifest_pb2.SignedManifest(manifest=body, signature=sig).SerializeToString()
    with pytest.raises(VerificationError) as ei:
        load_manifest(signed, ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"


def test_expired_manifest(
    trusted_manifest: TrustedManifest, signed_bytes: bytes, ca_cert: x509.Certificate
) -> None:
    expires = trusted_manifest.expires_at
    for at in (expires, expires + timedelta(days=1)):
        with pytest.raises(VerificationError) as ei:
            load_manifest(signed_bytes, ca_cert, now=at)
        assert ei.value.reason == "MANIFEST_EXPIRED"
    ok = load_manifest(signed_bytes, ca_cert, now=expires - timedelta(microseconds=1))
    assert ok.serial == trusted_manifest.serial


def test_rollback(
    trusted_manifest: TrustedManifest, signed_bytes: bytes, ca_cert: x509.Certificate, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        load_manifest(signed_bytes, ca_cert, now=now, min_serial=trusted_manifest.serial + 1)
    assert ei.value.reason == "MANIFEST_ROLLBACK"
    same = load_manifest(signed_bytes, ca_cert, now=now, min_serial=trusted_manifest.serial)
    assert same.serial == trusted_manifest.serial


def test_unsupported_manifest_version(
    signed_bytes: bytes,
    ca_cert: x509.Certificate,
    resign: Callable[[manifest_pb2.Manifest], bytes],
    now: datetime,
) -> None:
    m = body_of(signed_bytes)
    m.version = MANIFEST_VERSION + 1
    with pytest.raises(VerificationError) as ei:
        load_manifest(resign(m), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_VERSION"


def test_listed_certificate_not_from_the_ca(
    signed_bytes: bytes,
    ca_cert: x509.Certificate,
    resign: Callable[[manifest_pb2.Manifest], bytes],
    now: datetime,
) -> None:
    other_key, other_cert = pki.make_ca(now)
    _, stranger = pki.issue_cert(other_key, other_cert, JS, "signing", now)
    m = body_of(signed_bytes)
    m.members[1].signing_certificates.append(pki.cert_ref(stranger))
    with pytest.raises(VerificationError) as ei:
        load_manifest(resign(m), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"


def test_listed_fingerprint_not_matching_der(
    signed_bytes: bytes,
    ca_cert: x509.Certificate,
    resign: Callable[[manifest_pb2.Manifest], bytes],
    now: datetime,
) -> None:
    m = body_of(signed_bytes)
    ref = m.members[0].signing_certificates[0]
    ref.sha256 = m.members[1].signing_certificates[0].sha256
    with pytest.raises(VerificationError) as ei:
        load_manifest(resign(m), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"


def test_member_or_bureau_listed_twice(
    signed_bytes: bytes,
    ca_cert: x509.Certificate,
    resign: Callable[[manifest_pb2.Manifest], bytes],
    now: datetime,
) -> None:
    m = body_of(signed_bytes)
    m.members.add().CopyFrom(m.members[0])
    with pytest.raises(VerificationError) as ei:
        load_manifest(resign(m), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"

    m = body_of(signed_bytes)
    assert m.members[1].code == JS
    m.members[2].bureaus.add(code="320500", name="Suzhou", name_zh="苏州市")
    with pytest.raises(VerificationError) as ei:
        load_manifest(resign(m), ca_cert, now=now)
    assert ei.value.reason == "MANIFEST_MALFORMED"


# --------------------------------------------------------------------------------------------
# TLS peers and signing keys


def test_peer_for_listed_tls_cert(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for code in (SH, JS, ZJ, AH):
        cert = node_cert(federation_dir, code, "tls.crt")
        info = trusted_manifest.peer_for_tls_cert(cert_der(cert), now)
        assert info.member == code
        assert info.purpose == "tls"
        assert node_uri(code) == f"urn:cccfed:node:{code}"


def test_peer_for_unlisted_cert_from_same_ca(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    ca_key, ca_cert = pki.FederationDir(federation_dir).ca()
    _, cert = pki.issue_cert(ca_key, ca_cert, JS, "tls", now)
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.peer_for_tls_cert(cert_der(cert), now)
    assert ei.value.reason == "UNKNOWN_PEER"


def test_signing_cert_is_not_a_tls_peer(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    cert = node_cert(federation_dir, JS, "sign.crt")
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.peer_for_tls_cert(cert_der(cert), now)
    assert ei.value.reason == "UNKNOWN_PEER"


@pytest.mark.parametrize("data", [b"", b"\x30\x00", b"not a certificate"])
def test_peer_for_garbage_cert(
    data: bytes, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.peer_for_tls_cert(data, now)
    assert ei.value.reason == "UNKNOWN_PEER"


def test_peer_outside_validity(federation_dir: Path, trusted_manifest: TrustedManifest) -> None:
    cert = node_cert(federation_dir, JS, "tls.crt")
    for at in (
        cert.not_valid_after_utc,
        cert.not_valid_before_utc - timedelta(seconds=1),
    ):
        with pytest.raises(VerificationError) as ei:
            trusted_manifest.peer_for_tls_cert(cert_der(cert), at)
        assert ei.value.reason == "EXPIRED_PEER"


def test_revoked_peer(
    revoked_dir: Path,
    load_trusted: Callable[..., TrustedManifest],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    tm = load_trusted(revoked_dir)
    assert tm.serial == trusted_manifest.serial + 1
    cert = node_cert(revoked_dir, ZJ, "tls.crt")
    serial = format(cert.serial_number, "x")
    assert serial in tm.revoked
    with pytest.raises(VerificationError) as ei:
        tm.peer_for_tls_cert(cert_der(cert), now)
    assert ei.value.reason == "REVOKED_PEER"
    zj_key = fingerprint(cert_der(node_cert(revoked_dir, ZJ, "sign.crt")))
    [problem] = tm.own_certificate_status(ZJ, cert_der(cert), zj_key, now)
    assert "TLS certificate in use" in problem and "REVOKED_PEER" in problem
    # Other members and Zhejiang's signing key are unaffected.
    assert tm.peer_for_tls_cert(cert_der(node_cert(revoked_dir, JS, "tls.crt")), now).member == JS
    sign = node_cert(revoked_dir, ZJ, "sign.crt")
    assert tm.signing_key(fingerprint(cert_der(sign)), now).member == ZJ
    # The session manifest still trusts the certificate.
    assert trusted_manifest.peer_for_tls_cert(cert_der(cert), now).member == ZJ


def test_signing_key_lookup(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    cert = node_cert(federation_dir, AH, "sign.crt")
    info = trusted_manifest.signing_key(fingerprint(cert_der(cert)), now)
    assert info.member == AH
    assert info.purpose == "signing"


def test_tls_fingerprint_is_not_a_signing_key(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    for code in (SH, JS, ZJ, AH):
        tls = node_cert(federation_dir, code, "tls.crt")
        key_id = fingerprint(tls.public_bytes(serialization.Encoding.DER))
        assert key_id in trusted_manifest.keys
        with pytest.raises(VerificationError) as ei:
            trusted_manifest.signing_key(key_id, now)
        assert ei.value.reason == "UNKNOWN_KEY"


@pytest.mark.parametrize("key_id", ["", "00" * 32, "not hex", "AB" * 32])
def test_unknown_signing_key(key_id: str, trusted_manifest: TrustedManifest, now: datetime) -> None:
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.signing_key(key_id, now)
    assert ei.value.reason == "UNKNOWN_KEY"


def test_signing_key_fingerprint_is_lowercase_only(
    federation_dir: Path, trusted_manifest: TrustedManifest, now: datetime
) -> None:
    key_id = fingerprint(cert_der(node_cert(federation_dir, SH, "sign.crt")))
    assert key_id == key_id.lower()
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.signing_key(key_id.upper(), now)
    assert ei.value.reason == "UNKNOWN_KEY"


def test_expired_signing_key(federation_dir: Path, trusted_manifest: TrustedManifest) -> None:
    cert = node_cert(federation_dir, SH, "sign.crt")
    with pytest.raises(VerificationError) as ei:
        trusted_manifest.signing_key(fingerprint(cert_der(cert)), cert.not_valid_after_utc)
    assert ei.value.reason == "EXPIRED_KEY"
    tls = cert_der(node_cert(federation_dir, SH, "tls.crt"))
    problems = trusted_manifest.own_certificate_status(
        SH, tls, fingerprint(cert_der(cert)), cert.not_valid_after_utc
    )
    assert any("EXPIRED_KEY" in p for p in problems)
