"""Shared fixtures: one development federation per test session, and loaders for its parts.

The federation is created once with ``node.pki.init_federation`` at :data:`NOW` (the real UTC
time, captured once), so certificates (valid from NOW − 5 min to NOW + 397 days) and the
manifest (expires NOW + 30 days) are all valid at NOW. Tests that need to change the directory
(revoke, renew) must work on a copy (``shutil.copytree``), never on the session directory.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography import x509

from federation.crypto import Signer
from federation.manifest import TrustedManifest, load_manifest
from node import pki

#: The fixed "current time" of the whole test session (whole seconds, UTC).
NOW = datetime.now(UTC).replace(microsecond=0)

#: The four provincial nodes of the session federation.
NODES = ("310000", "320000", "330000", "340000")

#: Ports written into endpoints and node.toml files (nothing listens on them in unit tests).
BASE_PORT = 47151


def load_signer(root: Path, code: str) -> Signer:
    """The envelope/receipt signer of node ``code`` in federation directory ``root``."""
    d = pki.FederationDir(root).node_dir(code)
    return Signer.from_pem((d / "sign.key").read_bytes(), (d / "sign.crt").read_bytes())


def load_ca_cert(root: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((root / "ca" / "ca.crt").read_bytes())


def load_trusted_manifest(
    root: Path, *, now: datetime = NOW, min_serial: int = 0
) -> TrustedManifest:
    """Verify and index ``root/manifest.bin`` against ``root/ca/ca.crt``."""
    return load_manifest(
        (root / "manifest.bin").read_bytes(), load_ca_cert(root), now=now, min_serial=min_serial
    )


@pytest.fixture(scope="session")
def now() -> datetime:
    return NOW


@pytest.fixture(scope="session")
def federation_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A federation of the four Delta provinces, created once; treat it as read-only."""
    root = tmp_path_factory.mktemp("federation") / "fed"
    pki.init_federation(root, list(NODES), base_port=BASE_PORT, now=NOW)
    return root


@pytest.fixture(scope="session")
def trusted_manifest(federation_dir: Path) -> TrustedManifest:
    """The session federation's manifest, verified at NOW. Do not mutate."""
    return load_trusted_manifest(federation_dir)


@pytest.fixture(scope="session")
def signer_for(federation_dir: Path) -> Callable[..., Signer]:
    """``signer_for(code, root=None)``: a node's signer (of the session federation by default)."""
    cache: dict[tuple[Path, str], Signer] = {}

    def get(code: str, root: Path | None = None) -> Signer:
        k = (root or federation_dir, code)
        if k not in cache:
            cache[k] = load_signer(*k)
        return cache[k]

    return get


@pytest.fixture(scope="session")
def load_trusted(federation_dir: Path) -> Callable[..., TrustedManifest]:
    """``load_trusted(root=None, *, now=NOW, min_serial=0)``: verify a directory's manifest."""

    def load(
        root: Path | None = None, *, now: datetime = NOW, min_serial: int = 0
    ) -> TrustedManifest:
        return load_trusted_manifest(root or federation_dir, now=now, min_serial=min_serial)

    return load
