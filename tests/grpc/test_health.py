"""Health of a real node: every reason it reports NOT_SERVING, seen by a real gRPC health check.

For each reason — the store unreachable, the manifest expired (or invalid at start), the node's
own TLS or signing certificate expired or revoked — the test checks the three places an operator
looks: the standard gRPC health service (``NOT_SERVING`` for the server and every service), the
node log (an ERROR line with the reason), and the metrics (``cccfed_health_serving 0`` and the
failing ``cccfed_health_problem`` check). Where the cause can go away (store back, a renewed
certificate), the node returns to SERVING by itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import NullPool

from federation.crypto import serial_hex
from federation.errors import FederationError
from node import pki
from node.runtime import Node
from tests.grpc.conftest import (
    JS,
    SH,
    Cluster,
    Federation,
    LoopRunner,
    health_check,
    utcnow,
)
from tests.grpc.test_metrics import OffsetClock, eventually, scrape

C = grpc.StatusCode
QUIET = 3600.0
SERVICES = (
    "",
    "cccfed.v1.FederationService",
    "cccfed.v1.AssistanceService",
    "cccfed.v1.ExpertExchangeService",
    "cccfed.v1.RecognitionService",
)
PG_URL = os.environ.get("CCCFED_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def start(
    c: Cluster,
    code: str,
    *,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> Node:
    """Start ``code`` with metrics on a free port and no housekeeping unless asked."""

    async def run() -> Node:
        settings: dict[str, Any] = {
            "metrics_listen": "127.0.0.1:0",
            "manifest_refresh_seconds": QUIET,
            **overrides,
        }
        cfg = dataclasses.replace(c.fed.config(code), **settings)
        node = Node(cfg) if clock is None else Node(cfg, clock=clock)
        c.nodes[code] = node
        await node.start()
        return node

    return c.run(run())


def statuses(c: Cluster, code: str) -> set[str]:
    """What the health service of ``code`` answers, for the server and each service."""
    fed = c.fed
    out = set()
    for svc in SERVICES:
        status, name = c.run(health_check(fed.endpoint(code), fed.ca_pem, fed.tls(JS), service=svc))
        assert status is C.OK
        out.add(name)
    return out


def assert_serving(c: Cluster, node: Node) -> None:
    assert statuses(c, node.code) == {"SERVING"}
    got = scrape(node)
    assert got.value("cccfed_health_serving") == 1
    assert sum(got.labelled("cccfed_health_problem").values()) == 0


def assert_not_serving(
    c: Cluster, node: Node, check: str, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    """NOT_SERVING everywhere, the reason logged at ERROR, the failing check in the metrics."""
    assert statuses(c, node.code) == {"NOT_SERVING"}
    errors = [
        r
        for r in caplog.records
        if r.name == "node.runtime" and r.levelno == logging.ERROR and "NOT_SERVING" in r.message
    ]
    assert any(words in r.message and getattr(r, "check", "") == check for r in errors), [
        r.message for r in errors
    ]
    got = scrape(node)
    assert got.value("cccfed_health_serving") == 0
    failing = {dict(k)["check"] for k, v in got.labelled("cccfed_health_problem").items() if v}
    assert failing == {check}


# --- the store ------------------------------------------------------------------------------------


class TcpRelay:
    """A loopback TCP relay to one address that can be cut (listener and every link closed)
    and restored on the same port: the network between a node and its database."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._listener: socket.socket | None = None
        self._links: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind(("127.0.0.1", self.port))
        ls.listen(16)
        self.port = ls.getsockname()[1]
        self._listener = ls
        threading.Thread(target=self._accept, args=(ls,), daemon=True).start()

    def _accept(self, ls: socket.socket) -> None:
        while True:
            try:
                client, _ = ls.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._links += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        ls, self._listener = self._listener, None
        if ls is not None:
            with contextlib.suppress(OSError):
                ls.shutdown(socket.SHUT_RDWR)  # wakes the accept() blocked on it
            ls.close()
        with self._lock:
            links, self._links = self._links, []
        for s in links:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@pytest.fixture
def pg_schema() -> Iterator[tuple[Engine, str]]:
    """A fresh schema on the test PostgreSQL: (admin engine, schema name); dropped afterwards."""
    admin = create_engine(PG_URL, poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as e:
        pytest.fail(f"PostgreSQL at {PG_URL} is unreachable ({e.orig})", pytrace=False)
    name = f"t_{uuid.uuid4().hex}"
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{name}"'))
    try:
        yield admin, name
    finally:
        with admin.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = '10s'"))
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        admin.dispose()


@pytest.mark.postgres
def test_store_unreachable_is_not_serving_until_it_is_back(
    new_federation: Callable[..., Federation],
    runner: LoopRunner,
    pg_schema: tuple[Engine, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    admin, schema = pg_schema
    pg = admin.url
    relay = TcpRelay((pg.host or "127.0.0.1", pg.port or 5432))
    relay.start()
    url = (
        f"postgresql+psycopg://{pg.username}@127.0.0.1:{relay.port}/{pg.database}"
        f"?options=-csearch_path%3D{schema}"
    )
    fed = new_federation((SH, JS))
    try:
        with Cluster(fed, runner) as c:
            node = start(c, SH, store_url=url)
            assert_serving(c, node)
            assert c.run(node.update_health()) == []

            relay.cut()  # the database host goes away
            with caplog.at_level(logging.ERROR, logger="node.runtime"):
                problems = c.run(node.update_health())
            assert len(problems) == 1 and problems[0].startswith("store unreachable: ")
            assert_not_serving(c, node, "store", "store unreachable", caplog)
            assert scrape(node).value("cccfed_store_up") == 0

            relay.start()  # back on the same address: the node serves again by itself
            assert c.run(node.update_health()) == []
            assert_serving(c, node)
            assert scrape(node).value("cccfed_store_up") == 1
    finally:
        relay.cut()


# --- the manifest ---------------------------------------------------------------------------------


def test_expired_manifest_is_not_serving(
    new_federation: Callable[..., Federation],
    runner: LoopRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fed = new_federation((SH, JS))
    clock = OffsetClock()
    with Cluster(fed, runner) as c:
        node = start(c, SH, clock=clock)
        assert_serving(c, node)
        expires = node.trust.current.expires_at
        clock.offset = expires + timedelta(minutes=1) - datetime.now(UTC)
        with caplog.at_level(logging.ERROR, logger="node.runtime"):
            problems = c.run(node.update_health())
        assert problems == [
            f"manifest serial {node.trust.current.serial} expired at {expires.isoformat()}"
        ]
        assert_not_serving(c, node, "manifest", "expired at", caplog)
        assert scrape(node).value("cccfed_manifest_expiry_days") < 0
        # A newer manifest written by the federation operator is adopted: serving again.
        fed.fed_dir.issue_manifest(fed.fed_dir.load_state(), clock())
        assert node.trust.refresh_from_file(clock()) is not None
        assert c.run(node.update_health()) == []
        assert_serving(c, node)


@pytest.mark.parametrize("damage", ["corrupt", "expired"])
def test_invalid_manifest_at_start_refuses_to_serve(
    new_federation: Callable[..., Federation], runner: LoopRunner, damage: str
) -> None:
    fed = new_federation((SH, JS))
    clock = OffsetClock()
    if damage == "corrupt":
        raw = bytearray(fed.manifest_path.read_bytes())
        raw[-1] ^= 1  # the signature's last byte
        pki.write_public(fed.manifest_path, bytes(raw))
        reason = "MANIFEST_BAD_SIGNATURE"
    else:
        clock.offset = fed.trusted().expires_at - datetime.now(UTC) + timedelta(seconds=1)
        reason = "MANIFEST_EXPIRED"
    with Cluster(fed, runner) as c, pytest.raises(FederationError) as ei:
        start(c, SH, clock=clock)
    assert ei.value.reason == reason
    # Nothing answers on the node's address.
    status, _ = c.run(health_check(fed.endpoint(SH), fed.ca_pem, fed.tls(JS)))
    assert status is C.UNAVAILABLE


def test_invalid_manifest_file_while_serving_keeps_the_one_in_force(
    new_federation: Callable[..., Federation],
    runner: LoopRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner) as c:
        node = start(c, SH)
        serial = node.trust.current.serial
        raw = bytearray(fed.manifest_path.read_bytes())
        raw[-1] ^= 1
        pki.write_public(fed.manifest_path, bytes(raw))
        with caplog.at_level(logging.WARNING, logger="node.trust"):
            assert node.trust.refresh_from_file(node.clock()) is None
        assert any("MANIFEST_BAD_SIGNATURE" in r.message for r in caplog.records)
        assert node.trust.current.serial == serial
        assert c.run(node.update_health()) == []
        assert_serving(c, node)


# --- own certificates -----------------------------------------------------------------------------


def short_lived_identity(fed: Federation, code: str, purpose: str, days: int) -> None:
    """Give ``code`` a new ``purpose`` certificate valid ``days`` days, listed in a new manifest
    and installed in its files (as ``cccfed pki renew`` does, with a short validity)."""
    fd = fed.fed_dir
    state = fd.load_state()
    ca_key, ca_cert = fd.ca()
    key, cert = pki.issue_cert(
        ca_key, ca_cert, code, purpose, utcnow(), days=days, hosts=("127.0.0.1",)
    )
    pem = cert.public_bytes(serialization.Encoding.PEM)
    state["members"][code]["tls_certs" if purpose == "tls" else "signing_certs"].append(
        pem.decode()
    )
    fd.issue_manifest(state, utcnow())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    base = "tls" if purpose == "tls" else "sign"
    pki.write_private(fed.node_dir(code) / f"{base}.key", key_pem)
    pki.write_public(fed.node_dir(code) / f"{base}.crt", pem)


@pytest.mark.parametrize(
    ("purpose", "check", "reason"),
    [("tls", "tls_certificate", "EXPIRED_PEER"), ("signing", "signing_certificate", "EXPIRED_KEY")],
)
def test_own_certificate_expired_is_not_serving(
    new_federation: Callable[..., Federation],
    runner: LoopRunner,
    caplog: pytest.LogCaptureFixture,
    purpose: str,
    check: str,
    reason: str,
) -> None:
    fed = new_federation((SH, JS))
    short_lived_identity(fed, SH, purpose, days=1)
    clock = OffsetClock()
    with Cluster(fed, runner) as c:
        node = start(c, SH, clock=clock)
        assert_serving(c, node)
        assert scrape(node).value("cccfed_certificate_expiry_days", certificate=purpose) < 1
        clock.offset = timedelta(days=2)  # the manifest (30 days) is still valid
        with caplog.at_level(logging.ERROR, logger="node.runtime"):
            problems = c.run(node.update_health())
        assert len(problems) == 1 and f"[{reason}]" in problems[0], problems
        assert_not_serving(c, node, check, f"[{reason}]", caplog)
        assert scrape(node).value("cccfed_certificate_expiry_days", certificate=purpose) < 0


@pytest.mark.parametrize(
    ("purpose", "check", "reason"),
    [("tls", "tls_certificate", "REVOKED_PEER"), ("signing", "signing_certificate", "REVOKED_KEY")],
)
def test_own_certificate_revoked_is_noticed_by_the_running_node(
    new_federation: Callable[..., Federation],
    runner: LoopRunner,
    caplog: pytest.LogCaptureFixture,
    purpose: str,
    check: str,
    reason: str,
) -> None:
    """The federation operator revokes the certificate the node uses; the node's own
    housekeeping adopts the new manifest file and turns NOT_SERVING, with no call from the test."""
    fed = new_federation((SH, JS))
    with Cluster(fed, runner) as c:
        node = start(c, SH, manifest_refresh_seconds=0.2)
        assert_serving(c, node)
        serial = fed.tls(SH).serial if purpose == "tls" else serial_hex(fed.sign_cert(SH))
        with caplog.at_level(logging.ERROR, logger="node.runtime"):
            revoked_serial = pki.revoke(fed.root, serial, reason="key compromise")

            eventually(c, lambda: node.serving is False)
        assert node.trust.current.serial == revoked_serial
        assert any(f"[{reason}]" in p for p in node.health_problems())
        assert_not_serving(c, node, check, f"[{reason}]", caplog)
