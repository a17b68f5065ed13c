"""Calls to peer nodes: one long-lived mutual-TLS channel per peer, deadlines on every call.

Envelopes go out and receipts come back as exact bytes (identity serializers), so the receipt we
verify and store is byte-for-byte what the peer signed. Every receipt is verified against the
manifest before anyone sees it. :meth:`PeerPool.call_with_retry` retries only what
:func:`node.status.is_transient` calls transient, with tenacity's capped, jittered exponential
backoff; long-horizon delivery belongs to the outbox worker instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from cccfed.v1 import federation_pb2
from federation.envelope import VerifiedReceipt, verify_receipt
from node.status import RemoteError, from_rpc_error, is_transient
from node.trust import ManifestHolder, TlsFiles

T = TypeVar("T")

SERVICES = {
    "federation": "/cccfed.v1.FederationService/Ping",
    "assistance": "/cccfed.v1.AssistanceService/Deliver",
    "expert_exchange": "/cccfed.v1.ExpertExchangeService/Deliver",
    "recognition": "/cccfed.v1.RecognitionService/Deliver",
}


#: Short service key -> fully qualified gRPC service name (``BatchItem.service``).
SERVICE_NAMES = {key: method.split("/")[1] for key, method in SERVICES.items()}
DELIVER_BATCH = "/cccfed.v1.FederationService/DeliverBatch"


_CODES = {c.value[0]: c for c in grpc.StatusCode}


def _identity(b: bytes) -> bytes:
    return b


def channel_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    limit = max_message_bytes + 64 * 1024  # room for framing; our own OVERSIZE check is exact
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # Fail fast when a peer is down; the outbox decides when to try again.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 2_000),
        ("grpc.enable_retries", 0),
    ]


def server_options(max_message_bytes: int) -> list[tuple[str, Any]]:
    limit = max_message_bytes + 64 * 1024
    return [
        ("grpc.max_send_message_length", limit),
        ("grpc.max_receive_message_length", limit),
        # Accept the clients' keepalive pings (every 30 s, also when idle) instead of answering
        # them with GOAWAY "too_many_pings".
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 20_000),
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # A second process must not silently share the port (gRPC enables SO_REUSEPORT).
        ("grpc.so_reuseport", 0),
    ]


@dataclass(frozen=True)
class PingResult:
    receipt: VerifiedReceipt
    rtt_seconds: float


class PeerPool:
    """One channel per peer, rebuilt when the endpoint or our own TLS identity changes."""

    def __init__(
        self,
        *,
        self_node: str,
        trust: ManifestHolder,
        tls: TlsFiles,
        timeout: float,
        max_message_bytes: int,
        clock: Callable[[], datetime],
        endpoints: dict[str, str] | None = None,
        max_skew: timedelta | None = None,
    ) -> None:
        self.self_node = self_node
        #: Local endpoint overrides (config ``[peers]``); the manifest's endpoint otherwise.
        self.endpoints = dict(endpoints or {})
        #: Tolerance for a receipt's ``received_at`` (see ``verify_receipt``); None: unchecked.
        self.max_skew = max_skew
        self.trust = trust
        self.tls = tls
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self._channels: dict[
            str, tuple[grpc.aio.Channel, tuple[str, str | None], tuple[float, float]]
        ] = {}
        self._closing: list[grpc.aio.Channel] = []

    def channel(self, peer: str) -> grpc.aio.Channel:
        tm = self.trust.current
        member = tm.member(peer)
        endpoint = self.endpoints.get(peer, member.endpoint)
        # Verify the server as *this member* (its certificates' member name), not as whoever
        # answers at the endpoint's host; None for certificates issued before that name.
        tls_name = tm.tls_name(peer, self.clock())
        ident = self.tls.refresh()
        cached = self._channels.get(peer)
        if cached and cached[1] == (endpoint, tls_name) and cached[2] == ident.stamp:
            return cached[0]
        if cached:
            # Let calls in flight finish on the old channel; new calls use the new identity.
            self._closing.append(cached[0])
        creds = grpc.ssl_channel_credentials(
            root_certificates=ident.ca_pem,
            private_key=ident.key_pem,
            certificate_chain=ident.cert_pem,
        )
        options = channel_options(self.max_message_bytes)
        if tls_name is not None:
            options.append(("grpc.ssl_target_name_override", tls_name))
        ch = grpc.aio.secure_channel(endpoint, creds, options=options)
        self._channels[peer] = (ch, (endpoint, tls_name), ident.stamp)
        return ch

    async def close(self) -> None:
        for ch, _, _ in self._channels.values():
            await ch.close(grace=None)
        for ch in self._closing:
            await ch.close(grace=None)
        self._channels.clear()

    async def deliver(self, peer: str, service: str, envelope: bytes) -> bytes:
        """Send one envelope once; returns the receipt bytes (not yet verified)."""
        method = SERVICES[service]
        call = self.channel(peer).unary_unary(
            method, request_serializer=_identity, response_deserializer=_identity
        )
        try:
            result: bytes = await call(envelope, timeout=self.timeout, wait_for_ready=False)
        except grpc.RpcError as e:
            raise from_rpc_error(peer, e) from e
        return result

    async def deliver_batch(
        self, peer: str, items: list[tuple[str, bytes]]
    ) -> list[bytes | RemoteError]:
        """Send several (service key, envelope) items in one ``DeliverBatch`` call.

        Returns, per item in order, the receipt bytes (not yet verified) or the item's own
        refusal as a :class:`RemoteError` with the code and reason it would have had alone.
        A failure of the call itself (peer down, identity, size) raises :class:`RemoteError`.
        """
        call = self.channel(peer).unary_unary(
            DELIVER_BATCH, request_serializer=_identity, response_deserializer=_identity
        )
        request = federation_pb2.DeliverBatchRequest(
            items=[
                federation_pb2.BatchItem(service=SERVICE_NAMES[service], envelope=envelope)
                for service, envelope in items
            ],
            batch_receipts=True,  # verify_receipt checks them (docs/PROTOCOL.md §7.5)
        )
        try:
            raw: bytes = await call(
                request.SerializeToString(), timeout=self.timeout, wait_for_ready=False
            )
        except grpc.RpcError as e:
            raise from_rpc_error(peer, e) from e
        try:
            answer = federation_pb2.DeliverBatchResponse.FromString(raw)
        except DecodeError as e:
            raise RemoteError(
                peer, grpc.StatusCode.INTERNAL, "MALFORMED", f"batch answer: {e}"
            ) from e
        if len(answer.outcomes) != len(items):
            raise RemoteError(
                peer,
                grpc.StatusCode.INTERNAL,
                "MALFORMED",
                f"batch answer has {len(answer.outcomes)} outcomes for {len(items)} items",
            )
        out: list[bytes | RemoteError] = []
        for o in answer.outcomes:
            if o.WhichOneof("outcome") == "receipt":
                out.append(o.receipt)
            else:
                code = _CODES.get(o.error.code, grpc.StatusCode.UNKNOWN)
                out.append(RemoteError(peer, code, o.error.reason or code.name, o.error.message))
        return out

    async def deliver_verified(self, peer: str, service: str, envelope: bytes) -> VerifiedReceipt:
        receipt = await self.deliver(peer, service, envelope)
        return verify_receipt(
            receipt,
            envelope,
            self.trust.current,
            expected_receiver=peer,
            at=self.clock(),
            max_skew=self.max_skew,
        )

    async def ping(self, peer: str, envelope: bytes) -> PingResult:
        start = time.perf_counter()
        receipt = await self.deliver_verified(peer, "federation", envelope)
        return PingResult(receipt, time.perf_counter() - start)

    async def get_manifest(self, peer: str, known_serial: int) -> bytes:
        stub = self.channel(peer).unary_unary(
            "/cccfed.v1.FederationService/GetManifest",
            request_serializer=federation_pb2.GetManifestRequest.SerializeToString,
            response_deserializer=_identity,
        )
        try:
            raw: bytes = await stub(
                federation_pb2.GetManifestRequest(known_serial=known_serial), timeout=self.timeout
            )
        except grpc.RpcError as e:
            raise from_rpc_error(peer, e) from e
        return raw  # verified by ManifestHolder.adopt before any use

    async def reconcile(self, peer: str, request: bytes) -> bytes:
        """One ``Reconcile`` round trip; the answer's bytes are verified by the caller."""
        stub = self.channel(peer).unary_unary(
            "/cccfed.v1.RecognitionService/Reconcile",
            request_serializer=_identity,
            response_deserializer=_identity,
        )
        try:
            raw: bytes = await stub(request, timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(peer, e) from e
        return raw

    async def health(self, peer: str) -> tuple[str, float]:
        """(SERVING | NOT_SERVING | …, round trip seconds) of a peer's overall health."""
        stub = health_pb2_grpc.HealthStub(self.channel(peer))
        start = time.perf_counter()
        try:
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.timeout)
        except grpc.RpcError as e:
            raise from_rpc_error(peer, e) from e
        return health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status), (
            time.perf_counter() - start
        )

    async def call_with_retry(
        self, fn: Callable[[], Any], *, attempts: int = 4, initial: float = 0.2, cap: float = 2.0
    ) -> Any:
        """Retry ``fn`` (a coroutine factory) on transient errors only; re-raise the last."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception(is_transient),
            wait=wait_random_exponential(multiplier=initial, max=cap),
            stop=stop_after_attempt(attempts),
            reraise=True,
        ):
            with attempt:
                return await fn()
        raise AssertionError("unreachable")  # pragma: no cover


__all__ = ["SERVICES", "PeerPool", "PingResult", "RemoteError"]
