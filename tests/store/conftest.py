"""Store fixtures: every store test runs on SQLite (a tmp file) and on PostgreSQL.

PostgreSQL isolation: each test gets its own schema ``t_<uuid hex>`` on the shared test database,
selected by ``search_path`` through the URL (``?options=-csearch_path%3D…``, which psycopg passes
to libpq), and dropped afterwards. If the server is unreachable the PostgreSQL tests *fail*
(a setup error), they are never skipped: CI must not pass silently without PostgreSQL.
Set ``CCCFED_TEST_PG_URL`` to use another server.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from federation.crypto import Signer
from federation.message_log import Keyring
from node.store.db import make_engine, migrate

PG_URL = os.environ.get("CCCFED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[Engine]:
    """An engine on the test database itself (creates and drops the per-test schemas)."""
    engine = create_engine(PG_URL, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        pytest.fail(
            f"PostgreSQL at {PG_URL} is unreachable ({e.orig}); the PostgreSQL store tests "
            "need it and are not skipped",
            pytrace=False,
        )
    yield engine
    engine.dispose()


@pytest.fixture
def pg_schema_factory(pg_admin: Engine) -> Iterator[Callable[[], tuple[str, str]]]:
    """``new()``: create a fresh schema, returns ``(schema name, URL of connections using it)``.

    Every schema made is dropped at teardown.
    """
    made: list[str] = []

    def new() -> tuple[str, str]:
        name = f"t_{uuid.uuid4().hex}"
        with pg_admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{name}"'))
        made.append(name)
        sep = "&" if "?" in PG_URL else "?"
        return name, f"{PG_URL}{sep}options=-csearch_path%3D{name}"

    yield new
    for name in made:
        with pg_admin.begin() as conn:
            # Never hang on a connection a failed test left open in a transaction.
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """An empty store: a new SQLite file, or a new private PostgreSQL schema."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    factory: Callable[[], tuple[str, str]] = request.getfixturevalue("pg_schema_factory")
    yield factory()[1]


@pytest.fixture
def bare_engine(store_url: str) -> Iterator[Engine]:
    """An engine on the empty (unmigrated) store."""
    engine = make_engine(store_url)
    yield engine
    engine.dispose()


@pytest.fixture
def engine(bare_engine: Engine) -> Engine:
    """An engine on a store migrated to the head revision."""
    migrate(bare_engine)
    return bare_engine


@pytest.fixture
def other_engine(store_url: str, engine: Engine) -> Iterator[Engine]:
    """A second, independent engine on the same store (another process's view)."""
    other = make_engine(store_url)
    yield other
    other.dispose()


# --- the session federation --------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca_cert(federation_dir: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate((federation_dir / "ca" / "ca.crt").read_bytes())


@pytest.fixture(scope="session")
def manifest_bytes(federation_dir: Path) -> bytes:
    """The session federation's signed manifest (serial 1), exactly as issued."""
    return (federation_dir / "manifest.bin").read_bytes()


@pytest.fixture(scope="session")
def keyring(manifest_bytes: bytes, ca_cert: x509.Certificate) -> Keyring:
    return Keyring.from_manifests([manifest_bytes], ca_cert)


@pytest.fixture(scope="session")
def sh(signer_for: Callable[..., Signer]) -> Signer:
    """Shanghai's signer: the node whose store the tests build."""
    return signer_for("310000")


@pytest.fixture(scope="session")
def js(signer_for: Callable[..., Signer]) -> Signer:
    """Jiangsu's signer: the peer."""
    return signer_for("320000")
