"""What a running node trusts right now: the manifest and its own TLS identity, reloadable.

The manifest is re-read when its file changes (and adopted from peers when they hold a newer
one); a new manifest must verify against the federation CA and may never go back in serial.
TLS key files are re-read when they change, so ``cccfed pki renew`` takes effect for new
connections without a restart.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from federation.errors import ConfigError, VerificationError
from federation.manifest import TrustedManifest, load_manifest

log = logging.getLogger(__name__)


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {what}: {e.strerror}", reason="CONFIG_FILE") from e


def load_ca(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(_read(path, "CA certificate"))
    except ValueError as e:
        raise ConfigError(f"{path}: not a PEM certificate", reason="CONFIG_FILE") from e


class ManifestHolder:
    """Holds the current :class:`TrustedManifest`; thread-safe swaps."""

    def __init__(self, path: Path, ca: x509.Certificate, now: datetime) -> None:
        self.path = path
        self.ca = ca
        self._lock = threading.Lock()
        self._mtime = 0.0
        raw = _read(path, "manifest")
        self._current = load_manifest(raw, ca, now=now)
        self._mtime = path.stat().st_mtime

    @property
    def current(self) -> TrustedManifest:
        return self._current

    def adopt(self, raw: bytes, now: datetime) -> TrustedManifest | None:
        """Adopt ``raw`` if it verifies and is newer; returns the new manifest or None."""
        tm = load_manifest(raw, self.ca, now=now, min_serial=self._current.serial)
        if tm.serial == self._current.serial and tm.raw != self._current.raw:
            log.error(
                "two different manifests carry serial %d: keeping the one held; tell the "
                "federation operator",
                tm.serial,
            )
        with self._lock:
            if tm.serial <= self._current.serial:
                return None
            self._current = tm
        log.info("manifest serial %d adopted", tm.serial)
        return tm

    def refresh_from_file(self, now: datetime) -> TrustedManifest | None:
        try:
            mtime = self.path.stat().st_mtime
        except OSError:
            return None
        if mtime == self._mtime:
            return None
        self._mtime = mtime
        try:
            return self.adopt(self.path.read_bytes(), now)
        except VerificationError as e:
            log.warning("manifest file %s refused: %s", self.path, e.diagnostics())
            return None


@dataclass(frozen=True)
class TlsIdentity:
    key_pem: bytes
    cert_pem: bytes
    ca_pem: bytes
    stamp: tuple[float, float]


class TlsFiles:
    """The node's TLS key and certificate, re-read when either file changes."""

    #: How often the files are looked at (a stat per call would cost more than the call).
    CHECK_SECONDS = 1.0

    def __init__(self, cert: Path, key: Path, ca: Path) -> None:
        self.cert_path, self.key_path, self.ca_path = cert, key, ca
        self._current = self._load()
        self._checked = time.monotonic()

    def _stamp(self) -> tuple[float, float]:
        return (os.stat(self.cert_path).st_mtime, os.stat(self.key_path).st_mtime)

    def _load(self) -> TlsIdentity:
        stamp = self._stamp()
        key_pem = _read(self.key_path, "TLS key")
        cert_pem = _read(self.cert_path, "TLS certificate")
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate(cert_pem)
        except ValueError as e:
            raise ConfigError(f"{self.cert_path}: unreadable TLS key or certificate") from e
        if cert.public_key() != key.public_key():
            # Caught mid-rotation (key replaced, certificate not yet): keep the old pair.
            raise ConfigError(f"{self.cert_path}: TLS key and certificate do not match")
        return TlsIdentity(key_pem, cert_pem, _read(self.ca_path, "CA certificate"), stamp)

    @property
    def current(self) -> TlsIdentity:
        return self._current

    def refresh(self, *, force: bool = False) -> TlsIdentity:
        """The current identity, re-read first if the files changed and form a valid pair.

        Server and client each compare ``stamp`` with what they last used, so one consumer
        noticing the change never hides it from the other.
        """
        now = time.monotonic()
        if not force and now - self._checked < self.CHECK_SECONDS:
            return self._current
        self._checked = now
        try:
            if self._stamp() != self._current.stamp:
                self._current = self._load()
                log.info("TLS certificate reloaded from %s", self.cert_path)
        except (OSError, ConfigError) as e:
            log.warning("TLS files not reloaded yet: %s", e)
        return self._current
