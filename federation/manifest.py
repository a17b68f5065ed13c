"""The federation manifest: verification and lookups (pure; bytes in, answers out).

A node trusts exactly one thing configured out of band: the federation CA certificate. Every
other fact — who the members are, their endpoints, which TLS and signing certificates they may use,
which certificates are revoked, which bureaus sit under which province — comes from a
:class:`SignedManifest` that verifies against that CA. Verification steps are numbered below.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from cccfed.v1 import manifest_pb2
from federation.crypto import CTX_MANIFEST, ec_public_key, fingerprint, serial_hex, verify
from federation.errors import VerificationError

MANIFEST_VERSION = 1
NODE_URI_PREFIX = "urn:cccfed:node:"


def node_uri(code: str) -> str:
    return NODE_URI_PREFIX + code


def node_tls_name(code: str) -> str:
    """The DNS name in every TLS certificate issued to member ``code`` and to no other member.

    Clients verify the server's certificate against this name (not the endpoint's host), so a
    connection that reaches another member's server fails in the TLS handshake, before any
    envelope leaves (docs/PROTOCOL.md §3.1).
    """
    return f"{code}.node.cccfed"


@dataclass(frozen=True)
class KeyInfo:
    """A certificate listed in the manifest, resolved to its owner and public key."""

    member: str
    sha256: str
    serial: str
    not_before: datetime
    not_after: datetime
    cert: x509.Certificate
    purpose: str  # "tls" | "signing"

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return ec_public_key(self.cert)


@dataclass(frozen=True)
class MemberInfo:
    code: str
    name: str
    name_zh: str
    endpoint: str
    bureaus: tuple[tuple[str, str, str], ...]  # (code, name, name_zh)


@dataclass
class TrustedManifest:
    """A manifest whose signature verified, indexed for the questions a node asks of it."""

    raw: bytes  # the SignedManifest bytes as received, kept for re-distribution
    manifest: manifest_pb2.Manifest
    members: dict[str, MemberInfo] = field(default_factory=dict)
    keys: dict[str, KeyInfo] = field(default_factory=dict)
    revoked: dict[str, str] = field(default_factory=dict)  # serial -> reason
    bureau_to_node: dict[str, str] = field(default_factory=dict)

    @property
    def serial(self) -> int:
        return int(self.manifest.serial)

    @property
    def expires_at(self) -> datetime:
        return self.manifest.expires_at.ToDatetime(tzinfo=UTC)

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at

    def member(self, code: str) -> MemberInfo:
        try:
            return self.members[code]
        except KeyError:
            raise VerificationError(
                f"{code} is not a member of the federation", reason="UNKNOWN_NODE"
            ) from None

    def node_for_bureau(self, bureau: str) -> str:
        """The provincial node that serves ``bureau`` (a province, city or district code)."""
        try:
            return self.bureau_to_node[bureau]
        except KeyError:
            raise VerificationError(
                f"bureau {bureau} is not listed under any member of the federation",
                reason="UNKNOWN_BUREAU",
            ) from None

    def _usable(self, info: KeyInfo, at: datetime, what: str) -> KeyInfo:
        if info.serial in self.revoked:
            raise VerificationError(
                f"{what} certificate {info.serial} of {info.member} is revoked "
                f"({self.revoked[info.serial]})",
                reason="REVOKED_KEY" if info.purpose == "signing" else "REVOKED_PEER",
            )
        if not info.not_before <= at < info.not_after:
            raise VerificationError(
                f"{what} certificate {info.serial} of {info.member} is not valid at "
                f"{at.isoformat()}",
                reason="EXPIRED_KEY" if info.purpose == "signing" else "EXPIRED_PEER",
            )
        return info

    def tls_name(self, code: str, at: datetime) -> str | None:
        """:func:`node_tls_name` of ``code`` if every usable TLS certificate listed for it
        carries that name (certificates issued before the name existed do not), else None."""
        name = node_tls_name(code)
        usable = [
            k
            for k in self.keys.values()
            if k.member == code
            and k.purpose == "tls"
            and k.serial not in self.revoked
            and k.not_before <= at < k.not_after
        ]
        if not usable or not all(name in _san_dns(k.cert) for k in usable):
            return None
        return name

    def signing_key(self, key_id: str, at: datetime) -> KeyInfo:
        """Resolve a signing key id; unknown, revoked and out-of-validity keys are refused."""
        info = self.keys.get(key_id)
        if info is None or info.purpose != "signing":
            raise VerificationError(f"signing key {key_id[:16]}… is unknown", reason="UNKNOWN_KEY")
        return self._usable(info, at, "signing")

    def peer_for_tls_cert(self, cert_der: bytes, at: datetime) -> KeyInfo:
        """The member a verified TLS peer certificate belongs to.

        The TLS stack has already checked the chain to the CA; this pins the exact certificate,
        so a certificate from the right CA that the manifest does not list is still refused.
        """
        info = self.keys.get(fingerprint(cert_der))
        if info is None or info.purpose != "tls":
            raise VerificationError(
                "peer TLS certificate is not listed in the federation manifest",
                reason="UNKNOWN_PEER",
            )
        info = self._usable(info, at, "TLS")
        uris = _san_uris(info.cert)
        if node_uri(info.member) not in uris:
            raise VerificationError(
                f"peer TLS certificate does not name {node_uri(info.member)}",
                reason="UNKNOWN_PEER",
            )
        return info

    def own_certificate_status(
        self, code: str, tls_cert_der: bytes, signing_key_id: str, at: datetime
    ) -> list[str]:
        """Problems with the certificates ``code`` is actually using (empty when all is well).

        Only the certificates in use count: a superseded certificate that stays listed after a
        renewal, or is revoked later, does not make a healthy node unhealthy.
        """
        problems = []
        for what in ("TLS", "signing"):
            try:
                if what == "TLS":
                    info = self.peer_for_tls_cert(tls_cert_der, at)
                else:
                    info = self.signing_key(signing_key_id, at)
            except VerificationError as e:
                problems.append(f"{what} certificate in use: {e} [{e.reason}]")
                continue
            if info.member != code:
                problems.append(f"{what} certificate in use belongs to {info.member}, not {code}")
        return problems


def _san_dns(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.DNSName))


def _san_uris(cert: x509.Certificate) -> list[str]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []
    return list(san.value.get_values_for_type(x509.UniformResourceIdentifier))


def load_manifest(
    signed_bytes: bytes,
    ca_cert: x509.Certificate,
    *,
    now: datetime | None,
    min_serial: int = 0,
) -> TrustedManifest:
    """Verify a SignedManifest against the federation CA and index it.

    Steps:
    1. Parse the outer SignedManifest (malformed → MANIFEST_MALFORMED).
    2. Verify the CA signature over the *received* manifest bytes (never re-serialised).
    3. Parse the inner Manifest; check version, serial not older than ``min_serial`` (rollback),
       and not expired at ``now`` (``None`` skips the expiry check: historic manifests kept to
       verify old signatures offline).
    4. For every listed certificate: check that the DER hashes to the listed fingerprint and that
       the CA issued it; validity is taken from the certificate itself. Build the indexes.
    """
    # 1.
    signed = manifest_pb2.SignedManifest()
    try:
        signed.ParseFromString(signed_bytes)
    except DecodeError as e:
        raise VerificationError(
            "manifest is not a SignedManifest", reason="MANIFEST_MALFORMED"
        ) from e
    # 2.
    verify(
        ec_public_key(ca_cert),
        signed.signature,
        CTX_MANIFEST,
        signed.manifest,
        reason="MANIFEST_BAD_SIGNATURE",
        what="manifest signature",
    )
    # 3.
    m = manifest_pb2.Manifest()
    try:
        m.ParseFromString(signed.manifest)
    except DecodeError as e:
        raise VerificationError("manifest body is malformed", reason="MANIFEST_MALFORMED") from e
    if m.version != MANIFEST_VERSION:
        raise VerificationError(
            f"manifest version {m.version} is not supported", reason="MANIFEST_VERSION"
        )
    if m.serial < min_serial:
        raise VerificationError(
            f"manifest serial {m.serial} is older than the one held ({min_serial})",
            reason="MANIFEST_ROLLBACK",
        )
    tm = TrustedManifest(raw=signed_bytes, manifest=m)
    if now is not None and tm.is_expired(now):
        raise VerificationError(
            f"manifest serial {m.serial} expired at {tm.expires_at.isoformat()}",
            reason="MANIFEST_EXPIRED",
        )
    # 4.
    for r in m.revoked:
        tm.revoked[r.serial] = r.reason or "revoked"
    for mem in m.members:
        if mem.code in tm.members:
            raise VerificationError(f"member {mem.code} listed twice", reason="MANIFEST_MALFORMED")
        bureaus = tuple((b.code, b.name, b.name_zh) for b in mem.bureaus)
        tm.members[mem.code] = MemberInfo(mem.code, mem.name, mem.name_zh, mem.endpoint, bureaus)
        for code, _, _ in bureaus:
            if code in tm.bureau_to_node:
                raise VerificationError(
                    f"bureau {code} listed under two members", reason="MANIFEST_MALFORMED"
                )
            tm.bureau_to_node[code] = mem.code
        tm.bureau_to_node.setdefault(mem.code, mem.code)
        for purpose, refs in (("tls", mem.tls_certificates), ("signing", mem.signing_certificates)):
            for ref in refs:
                tm.keys[ref.sha256] = _key_info(mem.code, purpose, ref, ca_cert)
    return tm


def _key_info(
    member: str, purpose: str, ref: manifest_pb2.CertificateRef, ca: x509.Certificate
) -> KeyInfo:
    if fingerprint(ref.der) != ref.sha256:
        raise VerificationError(
            f"{purpose} certificate of {member}: DER does not match fingerprint",
            reason="MANIFEST_MALFORMED",
        )
    try:
        cert = x509.load_der_x509_certificate(ref.der)
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as e:
        raise VerificationError(
            f"{purpose} certificate of {member} was not issued by the federation CA",
            reason="MANIFEST_MALFORMED",
        ) from e
    return KeyInfo(
        member=member,
        sha256=ref.sha256,
        serial=serial_hex(cert),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        cert=cert,
        purpose=purpose,
    )


def cert_der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)
