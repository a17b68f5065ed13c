"""Development and operations PKI for a federation: CA, node certificates, signed manifest.

Layout written by :func:`init_federation` (private keys mode 0600)::

    DIR/ca/ca.crt, ca.key            federation root CA (signs certificates and manifests)
    DIR/federation.json              CA-side state: members, endpoints, serial, revocations
    DIR/manifest.bin, manifest.json  the signed manifest, and a readable copy
    DIR/nodes/<code>/tls.crt, tls.key     TLS identity (SAN urn:cccfed:node:<code>)
    DIR/nodes/<code>/sign.crt, sign.key   the separate envelope/receipt signing key
    DIR/nodes/<code>/node.toml            a ready node configuration

Authentication (TLS) and signing keys are never the same key, as in X-Road.
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cccfed.v1 import manifest_pb2
from federation import divisions
from federation.crypto import CTX_MANIFEST, fingerprint, serial_hex
from federation.errors import ConfigError, ValidationError
from federation.manifest import MANIFEST_VERSION, node_tls_name, node_uri

DEFAULT_NODES = ("310000", "320000", "330000", "340000")
FEDERATION_ID = "yrd-ccc-exemption"
CA_DAYS = 3650
LEAF_DAYS = 397
MANIFEST_DAYS = 30


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write, fsync and rename into place, with ``mode`` set before any byte is written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_private(path: Path, data: bytes) -> None:
    """Write a secret atomically with mode 0600 from the start (never world-readable)."""
    _write_atomic(path, data, 0o600)


def write_public(path: Path, data: bytes) -> None:
    _write_atomic(path, data, 0o644)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "CN"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "YRD CCC Exemption Federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def make_ca(
    now: datetime, days: int = CA_DAYS
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _new_key()
    name = _name("cccfed federation root CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def issue_cert(
    ca_key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    code: str,
    purpose: str,
    now: datetime,
    *,
    days: int = LEAF_DAYS,
    key: ec.EllipticCurvePrivateKey | None = None,
    not_before: datetime | None = None,
    hosts: tuple[str, ...] = (),
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """Issue a node certificate. ``purpose`` is "tls" (server+client auth) or "signing".

    A TLS certificate names the node (``urn:cccfed:node:<code>``), ``localhost``/``127.0.0.1``
    for local runs, and each of ``hosts`` (the endpoint's host name or address), so that peers'
    host-name verification passes wherever the node is reachable.
    """
    key = key or _new_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(f"cccfed node {code} {purpose}"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or (now - timedelta(minutes=5)))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
    )
    if purpose == "tls":
        names: list[x509.GeneralName] = [
            x509.UniformResourceIdentifier(node_uri(code)),
            x509.DNSName(node_tls_name(code)),
            x509.DNSName("localhost"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
        ]
        for host in hosts:
            if host in ("localhost", "127.0.0.1"):
                continue
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        builder = builder.add_extension(
            x509.SubjectAlternativeName(names),
            critical=False,
        ).add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        usage = dict(digital_signature=True, key_agreement=True)
    elif purpose == "signing":
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(node_uri(code))]),
            critical=False,
        )
        usage = dict(digital_signature=True, content_commitment=True)
    else:
        raise ValueError(purpose)
    flags = dict(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    flags.update(usage)
    builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    return key, builder.sign(ca_key, hashes.SHA256())


def cert_ref(cert: x509.Certificate) -> manifest_pb2.CertificateRef:
    der = cert.public_bytes(serialization.Encoding.DER)
    ref = manifest_pb2.CertificateRef(sha256=fingerprint(der), serial=serial_hex(cert), der=der)
    ref.not_before.FromDatetime(cert.not_valid_before_utc)
    ref.not_after.FromDatetime(cert.not_valid_after_utc)
    return ref


def sign_manifest(ca_key: ec.EllipticCurvePrivateKey, manifest: manifest_pb2.Manifest) -> bytes:
    body = manifest.SerializeToString(deterministic=True)
    sig = ca_key.sign(CTX_MANIFEST + body, ec.ECDSA(hashes.SHA256()))
    return manifest_pb2.SignedManifest(manifest=body, signature=sig).SerializeToString(
        deterministic=True
    )


@dataclass
class FederationDir:
    """The CA side of a federation directory: state, certificates, manifest issuance."""

    root: Path

    @property
    def state_path(self) -> Path:
        return self.root / "federation.json"

    def node_dir(self, code: str) -> Path:
        return self.root / "nodes" / code

    def load_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(
                f"{self.state_path}: not a federation directory (run `cccfed pki init`)"
            ) from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{self.state_path}: not valid JSON: {e}") from e
        return state

    def save_state(self, state: dict[str, Any]) -> None:
        write_public(
            self.state_path, json.dumps(state, ensure_ascii=False, indent=2).encode("utf-8")
        )

    def ca(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = serialization.load_pem_private_key(
            (self.root / "ca" / "ca.key").read_bytes(), password=None
        )
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"{self.root / 'ca' / 'ca.key'}: not an EC private key")
        cert = x509.load_pem_x509_certificate((self.root / "ca" / "ca.crt").read_bytes())
        return key, cert

    def issue_manifest(self, state: dict[str, Any], now: datetime) -> manifest_pb2.Manifest:
        """Re-sign the manifest from the state and every certificate the state lists."""
        ca_key, _ = self.ca()
        state["serial"] = int(state.get("serial", 0)) + 1
        m = manifest_pb2.Manifest(
            version=MANIFEST_VERSION, federation_id=state["federation_id"], serial=state["serial"]
        )
        m.issued_at.FromDatetime(now)
        m.expires_at.FromDatetime(now + timedelta(days=int(state.get("manifest_days", 30))))
        for code, member in sorted(state["members"].items()):
            mem = m.members.add(
                code=code,
                name=member["name"],
                name_zh=member["name_zh"],
                endpoint=member["endpoint"],
            )
            for pem_text in member["tls_certs"]:
                mem.tls_certificates.append(
                    cert_ref(x509.load_pem_x509_certificate(pem_text.encode()))
                )
            for pem_text in member["signing_certs"]:
                mem.signing_certificates.append(
                    cert_ref(x509.load_pem_x509_certificate(pem_text.encode()))
                )
            for b in member["bureaus"]:
                mem.bureaus.add(code=b["code"], name=b["name"], name_zh=b["name_zh"])
        for r in state.get("revoked", []):
            rev = m.revoked.add(serial=r["serial"], reason=r.get("reason", ""))
            rev.revoked_at.FromDatetime(datetime.fromisoformat(r["revoked_at"]))
        signed = sign_manifest(ca_key, m)
        write_public(self.root / "manifest.bin", signed)
        write_public(self.root / "manifest.json", _manifest_json(m).encode("utf-8"))
        self.save_state(state)
        return m


def _manifest_json(m: manifest_pb2.Manifest) -> str:
    from google.protobuf.json_format import MessageToDict

    d = MessageToDict(m, preserving_proto_field_name=True)
    for mem in d.get("members", []):
        for key in ("tls_certificates", "signing_certificates"):
            for ref in mem.get(key, []):
                ref.pop("der", None)
    return json.dumps(d, ensure_ascii=False, indent=2) + "\n"


def _validate_codes(nodes: list[str]) -> None:
    if not nodes:
        raise ValidationError("--nodes: at least one province code is needed", reason="NO_NODES")
    seen: set[str] = set()
    for code in nodes:
        if code not in divisions.PROVINCES:
            raise ValidationError(
                f"--nodes: {code} is not a Yangtze River Delta province code "
                f"({', '.join(sorted(divisions.PROVINCES))})",
                reason="NOT_IN_DELTA",
            )
        if code in seen:
            raise ValidationError(f"--nodes: {code} given twice", reason="DUPLICATE_NODE")
        seen.add(code)


def node_toml(code: str, listen: str, *, store_url: str = "sqlite:///store.db") -> str:
    return f"""# cccfed node configuration for {code}; relative paths are relative to this file.
[node]
code = "{code}"
listen = "{listen}"
store_url = "{store_url}"

[tls]
ca_cert = "../../ca/ca.crt"
cert = "tls.crt"
key = "tls.key"

[signing]
cert = "sign.crt"
key = "sign.key"

[manifest]
path = "../../manifest.bin"

[obligations]
# reminders this many days before a reply is due (and once it is overdue)
reminder_days = [3, 1]

[limits]
max_message_bytes = 4194304
max_clock_skew_seconds = 300
max_message_age_seconds = 2592000
call_timeout_seconds = 10
"""


def init_federation(
    root: Path,
    nodes: list[str] | None = None,
    *,
    host: str = "127.0.0.1",
    base_port: int = 50051,
    ports: dict[str, int] | None = None,
    now: datetime | None = None,
    manifest_days: int = MANIFEST_DAYS,
) -> manifest_pb2.Manifest:
    """Create a new federation directory: CA, per-node keys and certificates, signed manifest."""
    now = now or datetime.now(UTC)
    nodes = list(DEFAULT_NODES if nodes is None else nodes)
    _validate_codes(nodes)
    fed = FederationDir(root)
    if fed.state_path.exists():
        raise ValidationError(
            f"{root} already holds a federation (federation.json exists); choose another --dir",
            reason="EXISTS",
        )
    ca_key, ca_cert = make_ca(now)
    write_private(root / "ca" / "ca.key", _key_pem(ca_key))
    write_public(root / "ca" / "ca.crt", _cert_pem(ca_cert))
    state: dict[str, Any] = {
        "federation_id": FEDERATION_ID,
        "serial": 0,
        "manifest_days": manifest_days,
        "members": {},
        "revoked": [],
    }
    for i, code in enumerate(nodes):
        port = (ports or {}).get(code, base_port + i)
        d = fed.node_dir(code)
        tls_key, tls_cert = issue_cert(ca_key, ca_cert, code, "tls", now, hosts=(host,))
        sig_key, sig_cert = issue_cert(ca_key, ca_cert, code, "signing", now)
        write_private(d / "tls.key", _key_pem(tls_key))
        write_public(d / "tls.crt", _cert_pem(tls_cert))
        write_private(d / "sign.key", _key_pem(sig_key))
        write_public(d / "sign.crt", _cert_pem(sig_cert))
        write_public(d / "node.toml", node_toml(code, f"{host}:{port}").encode())
        prov = divisions.PROVINCES[code]
        state["members"][code] = {
            "name": prov.name_en,
            "name_zh": prov.place_zh,
            "endpoint": f"{host}:{port}",
            "tls_certs": [_cert_pem(tls_cert).decode()],
            "signing_certs": [_cert_pem(sig_cert).decode()],
            "bureaus": [
                {"code": b.code, "name": b.name_en, "name_zh": b.place_zh}
                for b in divisions.bureaus_under(code)
            ],
        }
    return fed.issue_manifest(state, now)


def _find_serial(state: dict[str, Any], serial: str) -> str | None:
    for code, member in state["members"].items():
        for pem_text in member["tls_certs"] + member["signing_certs"]:
            if serial_hex(x509.load_pem_x509_certificate(pem_text.encode())) == serial:
                return str(code)
    return None


def revoke(root: Path, serial: str, *, reason: str = "", now: datetime | None = None) -> int:
    """Revoke a certificate by serial (hex) and sign a new manifest; returns the new serial."""
    now = now or datetime.now(UTC)
    fed = FederationDir(root)
    state = fed.load_state()
    serial = serial.lower().removeprefix("0x").lstrip("0") or "0"
    if _find_serial(state, serial) is None:
        raise ValidationError(
            f"--serial {serial}: no certificate with this serial is listed in the manifest",
            reason="UNKNOWN_SERIAL",
        )
    if any(r["serial"] == serial for r in state["revoked"]):
        raise ValidationError(f"--serial {serial}: already revoked", reason="ALREADY_REVOKED")
    state["revoked"].append(
        {"serial": serial, "reason": reason or "revoked", "revoked_at": now.isoformat()}
    )
    return int(fed.issue_manifest(state, now).serial)


def renew(root: Path, code: str, *, now: datetime | None = None) -> tuple[str, int]:
    """Issue a new TLS certificate for ``code``; returns (new serial, new manifest serial).

    The new certificate is added to the manifest *before* the key files are replaced, so peers
    already trust it when the node starts presenting it; the old one stays listed until expiry.
    """
    now = now or datetime.now(UTC)
    fed = FederationDir(root)
    state = fed.load_state()
    if code not in state["members"]:
        raise ValidationError(
            f"--node {code}: not a member of this federation", reason="UNKNOWN_NODE"
        )
    ca_key, ca_cert = fed.ca()
    host = str(state["members"][code]["endpoint"]).rpartition(":")[0]
    key, cert = issue_cert(ca_key, ca_cert, code, "tls", now, hosts=(host,))
    state["members"][code]["tls_certs"].append(_cert_pem(cert).decode())
    manifest = fed.issue_manifest(state, now)
    d = fed.node_dir(code)
    # Key first, then certificate (each replaced atomically): a reader that sees the new
    # certificate finds its key; one that sees the new key with the old certificate keeps the
    # old pair until both match (node.trust.TlsFiles).
    write_private(d / "tls.key", _key_pem(key))
    write_public(d / "tls.crt", _cert_pem(cert))
    return serial_hex(cert), int(manifest.serial)
