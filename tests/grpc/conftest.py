"""In-process gRPC fixtures: real mutual TLS, certificates made fresh by ``node.pki``.

Every test module gets federations of its own (CA, certificates, signed manifest made in
``tmp_path_factory`` on free ports) and one event loop (:class:`LoopRunner`) that its nodes live
in. A :class:`Cluster` starts real :class:`node.runtime.Node` objects — gRPC server over TLS,
delivery worker, housekeeping, one SQLite store per node — and always stops them. Tests drive
coroutines with ``cluster.run(...)``; the nodes serve whenever the loop runs.

Tests that change trust (revocation, renewal, manifest reload) make a federation of their own
with ``new_federation``; tests that only read trust share a module cluster.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import socket
import ssl
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select
from sqlalchemy.engine import Engine

from cccfed.v1 import federation_pb2
from federation.crypto import Signer, fingerprint, serial_hex
from federation.envelope import seal
from federation.manifest import TrustedManifest, load_manifest
from node import pki
from node.config import NodeConfig, load_config
from node.local import free_ports
from node.runtime import Node
from node.status import reason_from_metadata
from node.store.ops import INBOX, LOG

T = TypeVar("T")

SH, JS, ZJ, AH = "310000", "320000", "330000", "340000"

PING = "/cccfed.v1.FederationService/Ping"
GET_MANIFEST = "/cccfed.v1.FederationService/GetManifest"
ASSISTANCE = "/cccfed.v1.AssistanceService/Deliver"

#: Deadline of every raw test call (a hang fails the test instead of the whole run).
CALL_TIMEOUT = 10.0


def utcnow() -> datetime:
    return datetime.now(UTC)


def _identity(b: bytes) -> bytes:
    return b


def key_to_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def pem_fingerprint(cert_pem: bytes) -> str:
    """Lowercase hex SHA-256 of a PEM certificate's DER (the manifest's certificate id)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return fingerprint(cert.public_bytes(serialization.Encoding.DER))


# --- federations ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsPair:
    """A TLS client identity as PEM bytes."""

    key_pem: bytes
    cert_pem: bytes

    @property
    def serial(self) -> str:
        return serial_hex(x509.load_pem_x509_certificate(self.cert_pem))

    @property
    def sha256(self) -> str:
        return pem_fingerprint(self.cert_pem)


@dataclass(frozen=True)
class Federation:
    """A federation directory made by ``node.pki.init_federation``, with readers for its parts."""

    root: Path
    codes: tuple[str, ...]

    @property
    def fed_dir(self) -> pki.FederationDir:
        return pki.FederationDir(self.root)

    @property
    def ca_path(self) -> Path:
        return self.root / "ca" / "ca.crt"

    @property
    def ca_pem(self) -> bytes:
        return self.ca_path.read_bytes()

    @property
    def ca_cert(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.ca_pem)

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.bin"

    def node_dir(self, code: str) -> Path:
        return self.root / "nodes" / code

    def config(self, code: str) -> NodeConfig:
        return load_config(self.node_dir(code) / "node.toml")

    def endpoint(self, code: str) -> str:
        return self.config(code).listen

    def tls(self, code: str) -> TlsPair:
        """The node's TLS identity as its files hold it now."""
        d = self.node_dir(code)
        return TlsPair((d / "tls.key").read_bytes(), (d / "tls.crt").read_bytes())

    def sign_cert(self, code: str) -> x509.Certificate:
        return x509.load_pem_x509_certificate((self.node_dir(code) / "sign.crt").read_bytes())

    def signer(self, code: str) -> Signer:
        d = self.node_dir(code)
        return Signer.from_pem((d / "sign.key").read_bytes(), (d / "sign.crt").read_bytes())

    def unlisted_tls(self, code: str) -> TlsPair:
        """A valid TLS certificate for ``code`` from the federation CA, not in the manifest."""
        key, cert = pki.issue_cert(*self.fed_dir.ca(), code, "tls", utcnow())
        return TlsPair(key_to_pem(key), cert_to_pem(cert))

    def unlisted_signer(self, code: str) -> Signer:
        """A signing key for ``code`` certified by the federation CA, not in the manifest."""
        key, cert = pki.issue_cert(*self.fed_dir.ca(), code, "signing", utcnow())
        return Signer.from_pem(key_to_pem(key), cert_to_pem(cert))

    def trusted(self) -> TrustedManifest:
        return load_manifest(self.manifest_path.read_bytes(), self.ca_cert, now=utcnow())


def make_federation(root: Path, codes: Sequence[str]) -> Federation:
    codes = list(codes)
    pki.init_federation(root, codes, ports=dict(zip(codes, free_ports(len(codes)), strict=True)))
    return Federation(root, tuple(codes))


def foreign_tls(code: str) -> TlsPair:
    """A well-formed TLS identity for ``code`` from a CA that is not the federation's."""
    now = utcnow()
    ca_key, ca_cert = pki.make_ca(now)
    key, cert = pki.issue_cert(ca_key, ca_cert, code, "tls", now)
    return TlsPair(key_to_pem(key), cert_to_pem(cert))


# --- envelopes -----------------------------------------------------------------------------------


def ping_envelope(
    signer: Signer,
    sender: str,
    recipient: str,
    *,
    note: str = "test ping",
    now: datetime | None = None,
    message_id: str | None = None,
    sender_bureau: str = "",
    recipient_bureau: str = "",
) -> bytes:
    """A Ping envelope sealed exactly as a node would seal it."""
    return seal(
        signer,
        sender_node=sender,
        recipient_node=recipient,
        payload=federation_pb2.Ping(note=note),
        now=now or utcnow(),
        message_id=message_id,
        sender_bureau=sender_bureau,
        recipient_bureau=recipient_bureau,
    )


# --- raw calls -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What a raw call came back with: the status, the machine-readable reason, the bytes."""

    code: grpc.StatusCode
    reason: str
    details: str
    response: bytes | None = None


def channel_credentials(ca_pem: bytes, client: TlsPair | None) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=ca_pem)
    return grpc.ssl_channel_credentials(
        root_certificates=ca_pem, private_key=client.key_pem, certificate_chain=client.cert_pem
    )


async def raw_call(
    endpoint: str,
    ca_pem: bytes,
    client: TlsPair | None,
    data: bytes,
    *,
    method: str = PING,
    options: Sequence[tuple[str, Any]] = (),
    deadline: float = CALL_TIMEOUT,
) -> Outcome:
    """One unary call on a fresh channel with identity serializers; never raises RpcError."""
    creds = channel_credentials(ca_pem, client)
    async with grpc.aio.secure_channel(endpoint, creds, options=list(options)) as ch:
        call = ch.unary_unary(method, request_serializer=_identity, response_deserializer=_identity)
        try:
            resp: bytes = await call(data, timeout=deadline)
        except grpc.aio.AioRpcError as e:
            return Outcome(e.code(), reason_from_metadata(e.trailing_metadata()), e.details() or "")
    return Outcome(grpc.StatusCode.OK, "", "", resp)


async def health_check(
    endpoint: str, ca_pem: bytes, client: TlsPair, *, service: str = "", deadline: float = 5.0
) -> tuple[grpc.StatusCode, str]:
    """(status code, serving status name) of the standard health service."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with grpc.aio.secure_channel(endpoint, channel_credentials(ca_pem, client)) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        try:
            resp = await stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=deadline
            )
        except grpc.aio.AioRpcError as e:
            return e.code(), ""
    return grpc.StatusCode.OK, str(health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status))


def presented_cert_sha256(endpoint: str, ca_path: Path, client_dir: Path) -> str:
    """SHA-256 (hex) of the certificate a server presents to a brand-new TLS connection."""
    host, _, port = endpoint.rpartition(":")
    ctx = ssl.create_default_context(cafile=str(ca_path))
    ctx.load_cert_chain(str(client_dir / "tls.crt"), str(client_dir / "tls.key"))
    ctx.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=5) as sock,
        ctx.wrap_socket(sock, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def rows(engine: Engine) -> tuple[int, int]:
    """(inbox rows, message log rows) of a node's store."""
    with engine.connect() as conn:
        inbox = conn.execute(select(func.count()).select_from(INBOX)).scalar_one()
        log = conn.execute(select(func.count()).select_from(LOG)).scalar_one()
    return int(inbox), int(log)


# --- event loop and running nodes ----------------------------------------------------------------


class LoopRunner:
    """One event loop for a test module; nodes started in it serve whenever it runs."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def close(self) -> None:
        pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
        for t in pending:
            t.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()


@dataclass
class Cluster:
    """Running nodes of one federation; a context manager that always stops them."""

    fed: Federation
    runner: LoopRunner
    start_codes: Sequence[str] = ()
    #: Override of the housekeeping interval (manifest refresh from file and peers).
    manifest_refresh_seconds: float | None = None
    nodes: dict[str, Node] = field(default_factory=dict)

    def __enter__(self) -> Cluster:
        try:
            for code in self.start_codes:
                self.start(code)
        except BaseException:
            self.stop_all()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    def __getitem__(self, code: str) -> Node:
        return self.nodes[code]

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        return self.runner.run(coro, timeout)

    def start(self, code: str) -> Node:
        async def start() -> Node:
            cfg = self.fed.config(code)
            if self.manifest_refresh_seconds is not None:
                cfg = dataclasses.replace(
                    cfg, manifest_refresh_seconds=self.manifest_refresh_seconds
                )
            node = Node(cfg)
            self.nodes[code] = node  # registered first: a half-started node is still stopped
            await node.start()
            return node

        return self.run(start())

    def stop(self, code: str) -> None:
        node = self.nodes.pop(code)
        self.run(node.stop(grace=0))

    def stop_all(self) -> None:
        errors: list[BaseException] = []
        for code in list(self.nodes):
            try:
                self.stop(code)
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]

    # --- calls as a given client identity -------------------------------------------------------

    def call(
        self,
        receiver: str,
        data: bytes,
        *,
        client: TlsPair | str | None = JS,
        method: str = PING,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Outcome:
        """A raw call to ``receiver``; ``client`` is a member code (its files) or an identity."""
        ident = self.fed.tls(client) if isinstance(client, str) else client
        return self.run(
            raw_call(
                self.fed.endpoint(receiver),
                self.fed.ca_pem,
                ident,
                data,
                method=method,
                options=options,
            )
        )

    def refused(
        self,
        receiver: str,
        data: bytes,
        code: grpc.StatusCode,
        reason: str,
        *,
        client: TlsPair | str | None = JS,
        method: str = PING,
        options: Sequence[tuple[str, Any]] = (),
    ) -> Outcome:
        """Assert the call fails with exactly ``code`` and ``reason`` and stores nothing."""
        node = self.nodes[receiver]
        before = rows(node.engine)
        counted = node.rejections.get(reason, 0)
        out = self.call(receiver, data, client=client, method=method, options=options)
        assert (out.code, out.reason) == (code, reason), out.details
        assert rows(node.engine) == before, "a refused call changed the store"
        if reason:  # refusals made by the node itself are counted under their reason
            assert node.rejections.get(reason, 0) == counted + 1
        return out


# --- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopRunner]:
    r = LoopRunner()
    try:
        yield r
    finally:
        r.close()


@pytest.fixture(scope="module")
def new_federation(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Federation]:
    """``new_federation(codes=(SH, JS, ZJ))``: a fresh federation directory on free ports."""

    def make(codes: Sequence[str] = (SH, JS, ZJ)) -> Federation:
        return make_federation(tmp_path_factory.mktemp("fed") / "fed", codes)

    return make
