"""Signing primitives: ECDSA P-256 with SHA-256, domain-separated by a context string.

Every signature in the protocol is made over ``context || data`` where ``context`` is a fixed
ASCII string ending in a NUL byte, one per purpose (envelope, receipt, manifest, checkpoint…), so a
signature made for one purpose can never be replayed as another.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from federation.errors import VerificationError

CTX_ENVELOPE = b"cccfed.v1.envelope\x00"
CTX_RECEIPT = b"cccfed.v1.receipt\x00"
CTX_RECEIPT_BATCH = b"cccfed.v1.receipt-batch\x00"
CTX_MANIFEST = b"cccfed.v1.manifest\x00"
CTX_CHECKPOINT = b"cccfed.v1.checkpoint\x00"
CTX_COSIGNATURE = b"cccfed.v1.cosignature\x00"

#: The one signature algorithm, built once (constructing it per call shows in profiles).
_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def fingerprint(cert_der: bytes) -> str:
    """Key id / certificate id: lowercase hex SHA-256 of the certificate DER."""
    return hashlib.sha256(cert_der).hexdigest()


def serial_hex(cert: x509.Certificate) -> str:
    return format(cert.serial_number, "x")


@dataclass(frozen=True)
class Signer:
    """A private signing key with the id of its certificate."""

    key: ec.EllipticCurvePrivateKey
    key_id: str

    def sign(self, context: bytes, data: bytes) -> bytes:
        return self.key.sign(context + data, _ECDSA_SHA256)

    @classmethod
    def from_pem(cls, key_pem: bytes, cert_pem: bytes) -> Signer:
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise VerificationError("signing key is not an EC key", reason="BAD_KEY")
        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.public_key() != key.public_key():
            raise VerificationError(
                "signing key does not match its certificate", reason="KEY_CERT_MISMATCH"
            )
        return cls(key=key, key_id=fingerprint(cert.public_bytes(serialization.Encoding.DER)))


def verify(
    public_key: ec.EllipticCurvePublicKey,
    signature: bytes,
    context: bytes,
    data: bytes,
    *,
    reason: str = "BAD_SIGNATURE",
    what: str = "signature",
) -> None:
    """Raise :class:`VerificationError` unless ``signature`` is valid over ``context || data``."""
    try:
        public_key.verify(signature, context + data, _ECDSA_SHA256)
    except InvalidSignature as e:
        raise VerificationError(f"{what} does not verify", reason=reason) from e
    except (ValueError, TypeError) as e:  # malformed DER signature
        raise VerificationError(f"{what} is malformed", reason=reason) from e


def ec_public_key(cert: x509.Certificate) -> ec.EllipticCurvePublicKey:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise VerificationError("certificate key is not an EC key", reason="BAD_KEY")
    return key
