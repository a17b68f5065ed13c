"""node.pki: federation directory layout, certificates, revocation and renewal."""

from __future__ import annotations

import json
import shutil
import stat
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from federation.crypto import fingerprint
from federation.errors import ValidationError
from federation.manifest import TrustedManifest, cert_der
from node import pki

CODES = ("310000", "320000", "330000", "340000")
SH, JS = "310000", "320000"


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def serial_of(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@pytest.fixture
def fed_copy(federation_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the session federation that a test may change."""
    root = tmp_path / "fed"
    shutil.copytree(federation_dir, root)
    return root


# --------------------------------------------------------------------------------------------
# layout and files


def test_layout(federation_dir: Path) -> None:
    expected = [
        "ca/ca.crt",
        "ca/ca.key",
        "federation.json",
        "manifest.bin",
        "manifest.json",
    ]
    for code in CODES:
        expected += [
            f"nodes/{code}/{n}" for n in ("tls.crt", "tls.key", "sign.crt", "sign.key", "node.toml")
        ]
    for rel in expected:
        assert (federation_dir / rel).is_file(), rel
    files = sorted(str(p.relative_to(federation_dir)) for p in federation_dir.rglob("*"))
    assert not [f for f in files if ".tmp-" in f or f.endswith(".new")]


def test_private_keys_are_0600(federation_dir: Path) -> None:
    keys = sorted(federation_dir.rglob("*.key"))
    assert len(keys) == 1 + 2 * len(CODES)
    for path in keys:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_public_files_are_readable(federation_dir: Path) -> None:
    for path in [*federation_dir.rglob("*.crt"), federation_dir / "manifest.bin"]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o644, path


def test_ca_certificate(federation_dir: Path, now: datetime) -> None:
    ca_key, ca_cert = pki.FederationDir(federation_dir).ca()
    assert ca_cert.public_key() == ca_key.public_key()
    bc = ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca is True
    assert ca_cert.subject == ca_cert.issuer
    assert ca_cert.not_valid_before_utc <= now < ca_cert.not_valid_after_utc


@pytest.mark.parametrize("code", CODES)
def test_tls_certificate(code: str, federation_dir: Path, now: datetime) -> None:
    d = federation_dir / "nodes" / code
    cert = load_cert(d / "tls.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:cccfed:node:{code}"]
    assert san.get_values_for_type(x509.DNSName) == [f"{code}.node.cccfed", "localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.public_key() == load_key(d / "tls.key").public_key()
    _, ca_cert = pki.FederationDir(federation_dir).ca()
    cert.verify_directly_issued_by(ca_cert)
    assert cert.not_valid_before_utc == now - timedelta(minutes=5)
    assert cert.not_valid_after_utc == now + timedelta(days=pki.LEAF_DAYS)


@pytest.mark.parametrize("code", CODES)
def test_signing_certificate_is_separate(code: str, federation_dir: Path) -> None:
    d = federation_dir / "nodes" / code
    tls, sign = load_cert(d / "tls.crt"), load_cert(d / "sign.crt")
    assert cert_der(tls) != cert_der(sign)
    assert tls.serial_number != sign.serial_number
    assert tls.public_key() != sign.public_key()
    sign_key = load_key(d / "sign.key")
    assert sign.public_key() == sign_key.public_key()
    assert sign_key.public_key() != load_key(d / "tls.key").public_key()
    _, ca_cert = pki.FederationDir(federation_dir).ca()
    sign.verify_directly_issued_by(ca_cert)
    ku = sign.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature
    assert ku.content_commitment
    # A signing certificate is not usable as a TLS server/client certificate.
    with pytest.raises(x509.ExtensionNotFound):
        sign.extensions.get_extension_for_class(x509.ExtendedKeyUsage)


def test_manifest_lists_every_node_certificate(
    federation_dir: Path, trusted_manifest: TrustedManifest
) -> None:
    for i, code in enumerate(CODES):
        d = federation_dir / "nodes" / code
        for name, purpose in (("tls.crt", "tls"), ("sign.crt", "signing")):
            info = trusted_manifest.keys[fingerprint(cert_der(load_cert(d / name)))]
            assert (info.member, info.purpose) == (code, purpose)
        endpoint = trusted_manifest.member(code).endpoint
        host, port = endpoint.rsplit(":", 1)
        assert host == "127.0.0.1"
        assert f'listen = "{endpoint}"' in (d / "node.toml").read_text()
        if i:
            prev = int(trusted_manifest.member(CODES[i - 1]).endpoint.rsplit(":", 1)[1])
            assert int(port) == prev + 1


def test_manifest_json_is_readable_copy(
    federation_dir: Path, trusted_manifest: TrustedManifest
) -> None:
    doc = json.loads((federation_dir / "manifest.json").read_text(encoding="utf-8"))
    assert int(doc["serial"]) == trusted_manifest.serial
    assert [m["code"] for m in doc["members"]] == list(CODES)
    for m in doc["members"]:
        for ref in m["tls_certificates"] + m["signing_certificates"]:
            assert "der" not in ref
            assert ref["sha256"] in trusted_manifest.keys


# --------------------------------------------------------------------------------------------
# init_federation refusals


def test_init_refuses_existing_federation(tmp_path: Path, now: datetime) -> None:
    root = tmp_path / "fed"
    pki.init_federation(root, [SH], base_port=47300, now=now)
    before = (root / "manifest.bin").read_bytes()
    with pytest.raises(ValidationError) as ei:
        pki.init_federation(root, [SH], base_port=47300, now=now)
    assert ei.value.reason == "EXISTS"
    assert str(root) in str(ei.value)
    assert (root / "manifest.bin").read_bytes() == before


@pytest.mark.parametrize(
    ("nodes", "reason"),
    [
        (["110000"], "NOT_IN_DELTA"),  # Beijing
        ([SH, "110000"], "NOT_IN_DELTA"),
        (["320500"], "NOT_IN_DELTA"),  # a city, not a province
        (["32000"], "NOT_IN_DELTA"),
        ([SH, JS, SH], "DUPLICATE_NODE"),
    ],
)
def test_init_refuses_bad_codes(
    nodes: list[str], reason: str, tmp_path: Path, now: datetime
) -> None:
    root = tmp_path / "fed"
    with pytest.raises(ValidationError) as ei:
        pki.init_federation(root, nodes, base_port=47300, now=now)
    assert ei.value.reason == reason
    assert not root.exists()  # refused before writing anything


def test_init_with_explicit_ports(
    tmp_path: Path, now: datetime, load_trusted: Callable[..., TrustedManifest]
) -> None:
    root = tmp_path / "fed"
    m = pki.init_federation(
        root, [JS, SH], host="localhost", ports={SH: 6001}, base_port=7000, now=now
    )
    assert m.serial == 1
    tm = load_trusted(root)
    assert tm.member(SH).endpoint == "localhost:6001"
    assert tm.member(JS).endpoint == "localhost:7000"
    assert sorted(tm.members) == [SH, JS]


# --------------------------------------------------------------------------------------------
# revoke


def test_revoke_bumps_serial(
    fed_copy: Path, load_trusted: Callable[..., TrustedManifest], now: datetime
) -> None:
    before = load_trusted(fed_copy).serial
    serial = serial_of(load_cert(fed_copy / "nodes" / SH / "sign.crt"))
    assert pki.revoke(fed_copy, serial, reason="key compromise", now=now) == before + 1
    tm = load_trusted(fed_copy, min_serial=before + 1)
    assert tm.serial == before + 1
    assert tm.revoked == {serial: "key compromise"}
    state = json.loads((fed_copy / "federation.json").read_text())
    assert state["serial"] == before + 1
    assert [r["serial"] for r in state["revoked"]] == [serial]
    # A second revocation bumps again and keeps the first.
    other = serial_of(load_cert(fed_copy / "nodes" / JS / "tls.crt"))
    assert pki.revoke(fed_copy, other, now=now) == before + 2
    assert set(load_trusted(fed_copy).revoked) == {serial, other}


def test_revoke_accepts_prefixed_uppercase_serial(
    fed_copy: Path, load_trusted: Callable[..., TrustedManifest], now: datetime
) -> None:
    serial = serial_of(load_cert(fed_copy / "nodes" / SH / "tls.crt"))
    pki.revoke(fed_copy, "0x" + serial.upper(), now=now)
    assert serial in load_trusted(fed_copy).revoked


def test_revoke_refuses_unknown_serial(fed_copy: Path, now: datetime) -> None:
    _, ca_cert = pki.FederationDir(fed_copy).ca()
    before = (fed_copy / "manifest.bin").read_bytes()
    for serial in ("deadbeef", serial_of(ca_cert)):
        with pytest.raises(ValidationError) as ei:
            pki.revoke(fed_copy, serial, now=now)
        assert ei.value.reason == "UNKNOWN_SERIAL"
    assert (fed_copy / "manifest.bin").read_bytes() == before


def test_revoke_refuses_already_revoked(
    fed_copy: Path, load_trusted: Callable[..., TrustedManifest], now: datetime
) -> None:
    serial = serial_of(load_cert(fed_copy / "nodes" / SH / "tls.crt"))
    new_serial = pki.revoke(fed_copy, serial, now=now)
    for again in (serial, "0x" + serial.upper()):
        with pytest.raises(ValidationError) as ei:
            pki.revoke(fed_copy, again, now=now)
        assert ei.value.reason == "ALREADY_REVOKED"
    assert load_trusted(fed_copy).serial == new_serial


# --------------------------------------------------------------------------------------------
# renew


def test_renew_replaces_tls_identity(
    fed_copy: Path, load_trusted: Callable[..., TrustedManifest], now: datetime
) -> None:
    d = fed_copy / "nodes" / JS
    old_cert, old_key = load_cert(d / "tls.crt"), load_key(d / "tls.key")
    old_sign = (d / "sign.crt").read_bytes()
    before = load_trusted(fed_copy).serial

    new_serial, manifest_serial = pki.renew(fed_copy, JS, now=now + timedelta(hours=1))

    assert manifest_serial == before + 1
    new_cert, new_key = load_cert(d / "tls.crt"), load_key(d / "tls.key")
    assert serial_of(new_cert) == new_serial != serial_of(old_cert)
    assert new_cert.public_key() == new_key.public_key()
    assert new_key.public_key() != old_key.public_key()
    assert stat.S_IMODE((d / "tls.key").stat().st_mode) == 0o600
    assert (d / "sign.crt").read_bytes() == old_sign
    assert not list(d.glob("*.new"))
    assert not list(d.glob(".tmp-*"))
    san = new_cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"urn:cccfed:node:{JS}"]

    tm = load_trusted(fed_copy, min_serial=manifest_serial)
    listed = [
        ref.sha256 for mem in tm.manifest.members if mem.code == JS for ref in mem.tls_certificates
    ]
    assert listed == [fingerprint(cert_der(old_cert)), fingerprint(cert_der(new_cert))]
    # Both the old and the new certificate identify Jiangsu to peers.
    assert tm.peer_for_tls_cert(cert_der(old_cert), now).member == JS
    assert tm.peer_for_tls_cert(cert_der(new_cert), now + timedelta(hours=1)).member == JS


def test_renew_refuses_unknown_node(fed_copy: Path, now: datetime) -> None:
    with pytest.raises(ValidationError) as ei:
        pki.renew(fed_copy, "110000", now=now)
    assert ei.value.reason == "UNKNOWN_NODE"


def test_operations_on_a_non_federation_dir(tmp_path: Path) -> None:
    from federation.errors import ConfigError

    with pytest.raises(ConfigError) as ei:
        pki.revoke(tmp_path, "1")
    assert str(tmp_path / "federation.json") in str(ei.value)
