"""The gRPC edge of a node (grpc.aio): mutual TLS, peer identity, envelope intake, health.

Order of checks for every call:
1. TLS (grpc core): the client must present a certificate chaining to the federation CA.
2. :class:`PeerIdentityInterceptor`: that exact certificate must be listed in the manifest for a
   member, unrevoked and valid; it names the calling node (UNAUTHENTICATED otherwise).
3. The servicer hands the request *bytes* to :func:`federation.envelope.open_envelope`, which
   verifies them exactly as received, then commits through the inbox and only then answers with
   the signed receipt. Every refusal carries a status and a machine-readable reason and happens
   before any state change.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from sqlalchemy.engine import Connection

from cccfed.v1 import federation_pb2
from federation.envelope import Opened, open_envelope
from federation.errors import ConfigError, FederationError
from node.client import server_options
from node.faults import failpoint
from node.status import code_for, error_trailers
from node.store.ops import PendingReceipt, inbox_accept

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger(__name__)

#: Refusals that depend only on when a message is checked; an exact redelivery of bytes
#: accepted earlier still gets its original receipt.
TIME_BOUND_REASONS = frozenset({"CLOCK_SKEW", "EXPIRED_KEY", "REVOKED_KEY"})

#: Most envelopes one DeliverBatch call may carry (the size limit applies to the whole call too).
MAX_BATCH_ITEMS = 256

CURRENT_PEER: contextvars.ContextVar[str] = contextvars.ContextVar("cccfed_peer")
HEALTH_PREFIX = "/grpc.health.v1.Health/"


async def abort(
    context: grpc.aio.ServicerContext[Any, Any], err: FederationError, message_id: str = ""
) -> None:
    code = code_for(err)
    await context.abort(
        code, str(err), trailing_metadata=error_trailers(code, err.reason, str(err), message_id)
    )


def peer_certificate_pem(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    pems = context.auth_context().get("x509_pem_cert") or []
    return bytes(pems[0]) if pems else None


def pem_to_der(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


class PeerIdentityInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Turns the verified TLS peer certificate into a member code, or refuses the call."""

    def __init__(self, node: Node) -> None:
        self.node = node
        # (certificate PEM, manifest serial) -> (member, not valid after): a peer's identity is
        # resolved once per manifest, not per call; a new manifest (e.g. a revocation) misses.
        self._known: dict[tuple[bytes, int], tuple[str, datetime]] = {}

    def identify(self, context: grpc.aio.ServicerContext[Any, Any]) -> str:
        node = self.node
        pem = peer_certificate_pem(context)
        if pem is None:
            raise FederationError("no client certificate", reason="NO_PEER_CERTIFICATE")
        tm = node.trust.current
        now = node.clock()
        hit = self._known.get((pem, tm.serial))
        if hit is not None and now < hit[1]:
            return hit[0]
        info = tm.peer_for_tls_cert(pem_to_der(pem), now)
        if len(self._known) > 1024:
            self._known.clear()
        self._known[(pem, tm.serial)] = (info.member, info.not_after)
        return info.member

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if (
            handler is None
            or handler.unary_unary is None
            or details.method.startswith(HEALTH_PREFIX)
        ):
            return handler
        inner = handler.unary_unary
        node = self.node
        interceptor = self

        async def identified(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                member = interceptor.identify(context)
            except FederationError as e:
                node.metrics_rejection(e.reason)
                log.warning("refused call %s: %s", details.method, e.diagnostics())
                await abort(context, e)
                raise  # unreachable: abort raises
            token = CURRENT_PEER.set(member)
            try:
                return await inner(request, context)
            finally:
                CURRENT_PEER.reset(token)

        return grpc.unary_unary_rpc_method_handler(
            identified,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _identity(b: bytes) -> bytes:
    return b


#: Full gRPC service name -> the node's short service key (``Node.kinds_for``, outbox rows).
SERVICE_KEYS = {
    "cccfed.v1.FederationService": "federation",
    "cccfed.v1.AssistanceService": "assistance",
    "cccfed.v1.ExpertExchangeService": "expert_exchange",
    "cccfed.v1.RecognitionService": "recognition",
}


class Refused(FederationError):
    """One envelope's refusal, with its message id when it could be read."""

    def __init__(self, err: FederationError, message_id: str) -> None:
        super().__init__(str(err), reason=err.reason)
        self.message_id = message_id


def _open(node: Node, service: str, raw: bytes, peer: str) -> Opened:
    return open_envelope(
        raw,
        node.trust.current,
        self_node=node.code,
        peer_node=peer,
        now=node.clock(),
        policy=node.policy,
        allowed_kinds=node.kinds_for(service),
    )


def _inbox_job(
    node: Node, opened: Opened, *, batch: bool = False
) -> Callable[[Connection], bytes | PendingReceipt]:
    apply = node.handler_for(opened.kind)

    def job(s: Connection) -> bytes | PendingReceipt:
        return inbox_accept(
            s,
            opened,
            signer=node.signer,
            self_node=node.code,
            now=node.clock(),
            apply=apply,
            batch=batch,
        )

    return job


def _receipt_of(result: bytes | PendingReceipt) -> bytes:
    """The receipt bytes of a committed inbox job (a batch receipt is signed by then)."""
    return result.receipt if isinstance(result, PendingReceipt) else result


async def _refused(node: Node, e: FederationError, raw: bytes, peer: str, message_id: str) -> bytes:
    """A refusal: the original receipt for an exact redelivery refused only for its timing,
    else count and log it and raise :class:`Refused`."""
    if e.reason in TIME_BOUND_REASONS:
        original = await asyncio.to_thread(node.receipt_for_redelivery, raw, peer)
        if original is not None:
            return original
    node.metrics_rejection(e.reason)
    log.info(
        "refused envelope from %s: %s",
        peer,
        e.diagnostics(),
        extra={"message_id": message_id, "peer": peer, "reason": e.reason},
    )
    raise Refused(e, message_id) from e


async def accept_envelope(node: Node, service: str, raw: bytes, peer: str) -> bytes:
    """Verify ``raw`` exactly as received, commit it once and return the signed receipt.

    Raises :class:`FederationError` (nothing stored) for a refusal, after counting and logging
    it. An exact redelivery of bytes accepted earlier gets the original receipt, also when the
    refusal depends only on when it is checked (:data:`TIME_BOUND_REASONS`).
    """
    message_id = ""
    try:
        opened = _open(node, service, raw, peer)
        message_id = opened.message_id
        receipt = _receipt_of(await node.writer.run(_inbox_job(node, opened)))
    except FederationError as e:
        return await _refused(node, e, raw, peer, message_id)
    failpoint("after_receive_commit")
    node.on_received(opened)
    return receipt


async def accept_envelopes(
    node: Node, items: list[tuple[str, bytes]], peer: str, *, batch_receipts: bool = False
) -> list[bytes | FederationError]:
    """:func:`accept_envelope` for several (full gRPC service name, envelope) items at once.

    Each item gets exactly the outcome it would get alone: its receipt, or its refusal. The
    accepted ones go to the store writer together, so they share one transaction and one
    fsync (a failing one is re-run alone by the writer and fails alone); every receipt is
    signed after the checks, before the commit, and answered only after the commit. With
    ``batch_receipts`` (the sender said it verifies them), the receipts of the messages
    committed together share one signature (docs/PROTOCOL.md §7.5); else each is signed alone.
    """
    out: list[bytes | FederationError | None] = [None] * len(items)
    opened: list[tuple[int, Opened]] = []
    failed: list[tuple[int, FederationError, str]] = []  # (index, error, message id)
    for i, (name, raw) in enumerate(items):
        service = SERVICE_KEYS.get(name)
        if service is None:
            node.metrics_rejection("UNSUPPORTED_KIND")
            out[i] = FederationError(
                f"DeliverBatch: unknown service {name!r}", reason="UNSUPPORTED_KIND"
            )
            continue
        try:
            opened.append((i, _open(node, service, raw, peer)))
        except FederationError as e:
            failed.append((i, e, ""))
    results = await node.writer.run_many(
        [_inbox_job(node, o, batch=batch_receipts) for _, o in opened]
    )
    for (i, o), result in zip(opened, results, strict=True):
        if isinstance(result, FederationError):
            failed.append((i, result, o.message_id))
        elif isinstance(result, BaseException):
            raise result
        else:
            failpoint("after_receive_commit")
            node.on_received(o)
            out[i] = _receipt_of(result)
    for i, err, message_id in failed:
        try:
            out[i] = await _refused(node, err, items[i][1], peer, message_id)
        except Refused as r:
            out[i] = r
    return [x for x in out if x is not None]


class EnvelopeIntake:
    """Receives envelopes for one service: verify bytes, commit once, answer with the receipt."""

    def __init__(self, node: Node, service: str) -> None:
        self.node = node
        self.service = service

    async def __call__(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        try:
            return await accept_envelope(self.node, self.service, raw, CURRENT_PEER.get())
        except FederationError as e:
            await abort(context, e, e.message_id if isinstance(e, Refused) else "")
            raise


class BatchIntake:
    """``DeliverBatch``: every item is handled as :func:`accept_envelope` would handle it alone.

    Items are verified in order and handed to the store writer together (:func:`accept_envelopes`),
    so they commit in one transaction (one fsync for the batch); every receipt is answered only
    after its message is committed.
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, raw: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        node = self.node
        peer = CURRENT_PEER.get()
        try:
            request = federation_pb2.DeliverBatchRequest.FromString(raw)
        except DecodeError as e:
            err = FederationError(
                f"DeliverBatch: not a DeliverBatchRequest: {e}", reason="MALFORMED"
            )
            node.metrics_rejection(err.reason)
            await abort(context, err)
            raise
        if not request.items or len(request.items) > MAX_BATCH_ITEMS:
            err = FederationError(
                f"DeliverBatch: {len(request.items)} items (1 to {MAX_BATCH_ITEMS} allowed)",
                reason="INVALID",
            )
            node.metrics_rejection(err.reason)
            await abort(context, err)
            raise err

        results = await accept_envelopes(
            node,
            [(item.service, item.envelope) for item in request.items],
            peer,
            batch_receipts=request.batch_receipts,
        )
        outcomes = [
            federation_pb2.BatchOutcome(receipt=r)
            if isinstance(r, bytes)
            else federation_pb2.BatchOutcome(
                error=federation_pb2.BatchError(
                    code=code_for(r).value[0],
                    reason=r.reason,
                    message=str(r),
                    message_id=r.message_id if isinstance(r, Refused) else "",
                )
            )
            for r in results
        ]
        return federation_pb2.DeliverBatchResponse(outcomes=outcomes).SerializeToString()


def build_server(node: Node) -> tuple[grpc.aio.Server, health.aio.HealthServicer]:
    opts = server_options(node.cfg.limits.max_message_bytes)
    server = grpc.aio.server(interceptors=[PeerIdentityInterceptor(node)], options=opts)

    def rpc(fn: Any) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(
            fn, request_deserializer=_identity, response_serializer=_identity
        )

    async def manifest(_req: bytes, _ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        return node.trust.current.raw

    async def reconcile(req: bytes, ctx: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        def answer() -> bytes:
            with node.reader.connect() as conn:
                return node.recognition.answer(conn, req)

        try:
            return await asyncio.to_thread(answer)
        except FederationError as e:
            node.metrics_rejection(e.reason)
            log.info("refused Reconcile from %s: %s", CURRENT_PEER.get(), e.diagnostics())
            await abort(ctx, e)
            raise

    handlers = {
        "cccfed.v1.FederationService": {
            "Ping": rpc(EnvelopeIntake(node, "federation")),
            "GetManifest": rpc(manifest),
            "DeliverBatch": rpc(BatchIntake(node)),
        },
        "cccfed.v1.AssistanceService": {"Deliver": rpc(EnvelopeIntake(node, "assistance"))},
        "cccfed.v1.ExpertExchangeService": {
            "Deliver": rpc(EnvelopeIntake(node, "expert_exchange"))
        },
        "cccfed.v1.RecognitionService": {
            "Deliver": rpc(EnvelopeIntake(node, "recognition")),
            "Reconcile": rpc(reconcile),
        },
    }
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler(name, methods) for name, methods in handlers.items()]
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)

    ident = node.tls.current
    served = {"stamp": ident.stamp}

    def fetch_tls() -> grpc.ServerCertificateConfiguration | None:
        # Runs before each new handshake: serve renewed files without a restart.
        new = node.tls.refresh(force=True)  # handshakes are rare: look every time
        if new.stamp == served["stamp"]:
            return None
        served["stamp"] = new.stamp
        return grpc.ssl_server_certificate_configuration(
            [(new.key_pem, new.cert_pem)], root_certificates=new.ca_pem
        )

    creds = grpc.dynamic_ssl_server_credentials(
        grpc.ssl_server_certificate_configuration(
            [(ident.key_pem, ident.cert_pem)], root_certificates=ident.ca_pem
        ),
        fetch_tls,
        require_client_authentication=True,
    )
    try:
        port = server.add_secure_port(node.cfg.listen, creds)
    except RuntimeError as e:
        raise ConfigError(
            f"{node.cfg.path}: [node] listen: cannot listen on {node.cfg.listen} "
            "(in use by another process?)",
            reason="LISTEN",
        ) from e
    node.bound_port = port
    return server, health_servicer


SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
