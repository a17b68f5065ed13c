"""A running node: wiring of configuration, keys, manifest, store, server, client and worker.

:class:`Node` is used three ways: ``cccfed node serve`` (server, delivery worker and manifest
refresh all running), the CLI's one-shot commands (store, keys and peers only), and tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf.message import DecodeError, Message
from sqlalchemy.engine import Connection

from cccfed.v1 import federation_pb2
from federation.crypto import Signer
from federation.envelope import Opened, Policy, VerifiedReceipt, kind_of, seal
from federation.errors import ConfigError, FederationError, ValidationError
from federation.ids import uuid7
from node.client import PeerPool, PingResult
from node.config import NodeConfig
from node.logs import message_context
from node.store.db import Writer, make_engine, migrate, reader
from node.store.ops import Apply, Claimed, outbox_enqueue, outbox_unclaim, record_manifest
from node.trust import ManifestHolder, TlsFiles, load_ca

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
SWITCH_INTERVAL = 0.0005
#: How often a serving node produces due reminders (the sweep is idempotent).
REMINDER_SWEEP_SECONDS = 60.0
#: How often a serving node reconciles its logs with every peer (catch-up after an outage).
RECONCILE_SECONDS = 60.0
DeliveredHook = Callable[[Connection, Claimed, VerifiedReceipt], None]
T = TypeVar("T")


def system_clock() -> datetime:
    return datetime.now(UTC)


def _check_ping(_conn: Connection, opened: Opened, _now: datetime) -> None:
    """A Ping changes nothing, but its payload must be a Ping (else ``MALFORMED``)."""
    try:
        federation_pb2.Ping.FromString(opened.envelope.payload)
    except DecodeError as e:
        raise ValidationError(f"payload is not a cccfed.v1.Ping: {e}", reason="MALFORMED") from e


@dataclass
class Registry:
    """Which payload kinds each service carries, and how each kind changes local state."""

    kinds: dict[str, set[str]] = field(
        default_factory=lambda: {
            "federation": {"cccfed.v1.Ping"},
            "assistance": set(),
            "expert_exchange": set(),
            "recognition": set(),
        }
    )
    handlers: dict[str, Apply] = field(default_factory=dict)
    #: kind -> called in the transaction that stores a verified receipt for a sent message
    delivered_hooks: dict[str, DeliveredHook] = field(default_factory=dict)

    def register(
        self,
        service: str,
        kind: str,
        apply: Apply | None = None,
        on_delivered: DeliveredHook | None = None,
    ) -> None:
        self.kinds[service].add(kind)
        if apply is not None:
            self.handlers[kind] = apply
        if on_delivered is not None:
            self.delivered_hooks[kind] = on_delivered


class Node:
    def __init__(
        self, cfg: NodeConfig, *, clock: Clock = system_clock, migrate_store: bool = True
    ) -> None:
        self.cfg = cfg
        self.code = cfg.code
        self.clock = clock
        self.replica = cfg.replica or f"{socket.gethostname()}:{cfg.code}"
        self.policy = Policy(
            max_envelope_bytes=cfg.limits.max_message_bytes,
            max_clock_skew=timedelta(seconds=cfg.limits.max_clock_skew_seconds),
            max_message_age=timedelta(seconds=cfg.limits.max_message_age_seconds),
        )
        try:
            self.signer = Signer.from_pem(cfg.sign_key.read_bytes(), cfg.sign_cert.read_bytes())
        except OSError as e:
            raise ConfigError(f"{e.filename}: cannot read signing key: {e.strerror}") from e
        self.ca = load_ca(cfg.ca_cert)
        self.trust = ManifestHolder(cfg.manifest, self.ca, clock())
        self.trust.current.member(self.code)  # we must be a member ourselves
        self.tls = TlsFiles(cfg.tls_cert, cfg.tls_key, cfg.ca_cert)
        self.engine = make_engine(cfg.store_url)
        if migrate_store:
            migrate(self.engine)
        self.reader = reader(self.engine)
        self.writer = Writer(self.engine)
        self.registry = Registry()
        self.registry.register("federation", "cccfed.v1.Ping", _check_ping)
        self.peers = PeerPool(
            self_node=self.code,
            trust=self.trust,
            tls=self.tls,
            timeout=cfg.limits.call_timeout_seconds,
            max_message_bytes=cfg.limits.max_message_bytes,
            clock=clock,
            endpoints=cfg.peer_endpoints,
            max_skew=self.policy.max_clock_skew,
        )
        self.bound_port = 0
        self.outbox_wakeup = asyncio.Event()
        self.rejections: dict[str, int] = {}
        #: What the health service says (None: not checked yet) and why: (check, problem) pairs,
        #: ``check`` one of :data:`node.metrics.HEALTH_CHECKS`.
        self.serving: bool | None = None
        self.health_findings: list[tuple[str, str]] = []
        self._health_logged: tuple[frozenset[str], float] | None = None
        from node.metrics import NodeMetrics

        #: Prometheus metrics; served on ``[node] metrics_listen`` by :meth:`start`.
        self.metrics = NodeMetrics(self)
        self._received_callbacks: list[Callable[[Opened], None]] = []
        #: Called with the message id when a verified receipt arrives (before it is stored).
        self.receipt_callbacks: list[Callable[[str], None]] = []
        #: Called with the message id after a verified receipt is committed.
        self.delivered_callbacks: list[Callable[[str], None]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._server: Any = None
        self._stopping = False
        self._health: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Port of the metrics endpoint (0: not serving metrics).
        self.metrics_port = 0
        self._record_manifest()
        from node.assistance import Assistance

        self.assistance = Assistance(self, reminder_days=cfg.reminder_days)
        from node.exchange import ExpertExchange

        self.exchange = ExpertExchange(self)
        from node.recognition import Recognition

        self.recognition = Recognition(self)
        #: Seconds between automatic reconciliation rounds with every peer (0: never).
        self.reconcile_interval = RECONCILE_SECONDS

    # --- registry -------------------------------------------------------------------------

    def kinds_for(self, service: str) -> frozenset[str]:
        return frozenset(self.registry.kinds.get(service, ()))

    def handler_for(self, kind: str) -> Apply | None:
        return self.registry.handlers.get(kind)

    def on_received(self, opened: Opened) -> None:
        """An envelope was accepted and committed (called by the server after each)."""
        peer = opened.header.sender_node
        self.metrics.received(peer, opened.kind)
        log.debug(
            "received %s from %s",
            opened.kind,
            peer,
            extra={"message_id": opened.message_id, "peer": peer, "kind": opened.kind},
        )
        with message_context(opened.message_id):
            for cb in self._received_callbacks:
                cb(opened)

    def metrics_rejection(self, reason: str) -> None:
        """Count a refused call or envelope under its machine-readable reason."""
        self.rejections[reason] = self.rejections.get(reason, 0) + 1
        self.metrics.rejection(reason)

    # --- sending --------------------------------------------------------------------------

    def seal(
        self,
        recipient_node: str,
        payload: Message,
        *,
        recipient_bureau: str = "",
        sender_bureau: str = "",
        correlation_id: str = "",
        message_id: str | None = None,
        now: datetime | None = None,
    ) -> bytes:
        tm = self.trust.current
        tm.member(recipient_node)
        if sender_bureau and tm.node_for_bureau(sender_bureau) != self.code:
            raise ValidationError(
                f"bureau {sender_bureau} is not served by this node ({self.code})",
                reason="SENDER_MISMATCH",
            )
        if recipient_bureau and tm.node_for_bureau(recipient_bureau) != recipient_node:
            raise ValidationError(
                f"bureau {recipient_bureau} is served by {tm.node_for_bureau(recipient_bureau)}, "
                f"not by {recipient_node}",
                reason="WRONG_RECIPIENT",
            )
        env = seal(
            self.signer,
            sender_node=self.code,
            recipient_node=recipient_node,
            payload=payload,
            now=self.clock() if now is None else now,
            sender_bureau=sender_bureau,
            recipient_bureau=recipient_bureau,
            correlation_id=correlation_id,
            message_id=message_id,
        )
        if len(env) > self.policy.max_envelope_bytes:
            raise ValidationError(
                f"message of {len(env)} bytes exceeds the limit of "
                f"{self.policy.max_envelope_bytes}",
                reason="OVERSIZE",
            )
        return env

    def enqueue_in(
        self,
        s: Connection,
        recipient_node: str,
        service: str,
        payload: Message,
        **kw: Any,
    ) -> tuple[str, int]:
        """Seal and queue a message inside a caller's transaction; returns (message id, row)."""
        claim = kw.pop("claim", False)
        if claim and not s.info.get("cccfed_dispatch", False):
            # Nobody hands this row to the worker after the commit (a message queued by the
            # handler of a received one, in the intake's transaction): committed claimed, it
            # would wait for its lease to expire. Leave it queued and wake the worker instead.
            claim = False
            self._wake_worker()
        conversation = kw.get("correlation_id", "")
        # One instant for the id, the signed created_at and the row (ids.py: the id's
        # millisecond is the envelope's).
        now = kw["now"] = self.clock()
        mid = kw["message_id"] = kw.get("message_id") or uuid7(now)
        env = self.seal(recipient_node, payload, **kw)
        lease = timedelta(seconds=self.cfg.delivery.lease_seconds)
        row = outbox_enqueue(
            s,
            env,
            message_id=mid,
            recipient_node=recipient_node,
            service=service,
            kind=kind_of(payload),
            now=now,
            claim_for=self.replica if claim else None,
            lease=lease if claim else None,
            conversation=conversation,
        )
        if claim and s.info.pop("cccfed_enqueued_claimed", False):
            s.info.setdefault("cccfed_claimed", []).append(
                Claimed(row, mid, recipient_node, service, kind_of(payload), env, 1, conversation)
            )
        return mid, row

    async def enqueue(
        self, recipient_node: str, service: str, payload: Message, **kw: Any
    ) -> tuple[str, int]:
        """Seal and queue one message; a running node starts delivering it at once."""
        return await self.run_and_send(
            lambda s: self.enqueue_in(s, recipient_node, service, payload, claim=True, **kw)
        )

    def _wake_worker(self) -> None:
        """Wake the delivery worker's claim loop (from any thread; no-op if not serving)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.outbox_wakeup.set)

    async def run_and_send(self, job: Callable[[Connection], T]) -> T:
        """Run a write job that queues messages (``enqueue_in(..., claim=True)``); after it
        commits, hand them straight to the delivery worker instead of a separate claim."""
        worker = getattr(self, "worker", None)
        if worker is None or not worker.running:
            # No worker here (a CLI process): leave the rows for the node's worker to claim.
            def unclaimed(s: Connection) -> T:
                result = job(s)
                for c in s.info.pop("cccfed_claimed", []):
                    outbox_unclaim(s, row_id=c.id, now=self.clock())
                return result

            return await self.writer.run(unclaimed)

        def claimed(s: Connection) -> tuple[T, list[Claimed]]:
            s.info.pop("cccfed_claimed", None)
            s.info["cccfed_dispatch"] = True  # rows claimed in job are dispatched below
            try:
                result = job(s)
            finally:
                s.info.pop("cccfed_dispatch", None)
            return result, s.info.pop("cccfed_claimed", [])

        result, rows = await self.writer.run(claimed)
        worker.dispatch(rows)
        return result

    async def ping(self, target: str) -> tuple[str, PingResult]:
        """A signed round trip, logged like any other exchange; returns (message id, result)."""
        from cccfed.v1 import federation_pb2
        from federation import message_log as mlog
        from federation.envelope import header_of
        from node.store.ops import append_log

        env = self.seal(target, federation_pb2.Ping(note=f"ping from {self.code}"))
        mid = header_of(env).message_id
        res: PingResult = await self.peers.call_with_retry(lambda: self.peers.ping(target, env))
        now = self.clock()

        def log_exchange(s: Connection) -> None:
            append_log(
                s,
                direction=mlog.SENT,
                rtype=mlog.ENVELOPE,
                message_id=mid,
                peer_node=target,
                data=env,
                at=now,
            )
            append_log(
                s,
                direction=mlog.RECEIVED,
                rtype=mlog.RECEIPT,
                message_id=mid,
                peer_node=target,
                data=res.receipt.receipt_bytes,
                at=now,
            )

        await self.writer.run(log_exchange)
        log.debug("ping to %s answered", target, extra={"message_id": mid, "peer": target})
        return mid, res

    # --- manifest ---------------------------------------------------------------------------

    def _record_manifest(self) -> None:
        # Never go back to an older manifest than one accepted before (a stale file on disk).
        from sqlalchemy import select

        from node.store.ops import MANIFESTS

        with self.reader.connect() as conn:
            newest = conn.execute(
                select(MANIFESTS.c.signed).order_by(MANIFESTS.c.serial.desc()).limit(1)
            ).first()
        if newest is not None:
            try:
                self.trust.adopt(bytes(newest.signed), self.clock())
            except FederationError as e:
                log.warning("stored manifest not re-adopted: %s", e.diagnostics())
        tm = self.trust.current
        self.writer.submit(
            lambda s: record_manifest(s, serial=tm.serial, signed=tm.raw, now=self.clock())
        ).result()

    async def refresh_manifest(self) -> None:
        """Adopt a newer manifest from the file or from any peer that has one."""
        if self.trust.refresh_from_file(self.clock()) is not None:
            await self.writer.run(self._record)
        for code in list(self.trust.current.members):
            if code == self.code:
                continue
            try:
                raw = await self.peers.get_manifest(code, self.trust.current.serial)
                if self.trust.adopt(raw, self.clock()) is not None:
                    await self.writer.run(self._record)
            except FederationError as e:
                log.debug("manifest from %s not taken: %s", code, e)

    def _record(self, s: Connection) -> bool:
        tm = self.trust.current
        return record_manifest(s, serial=tm.serial, signed=tm.raw, now=self.clock())

    def receipt_for_redelivery(self, raw: bytes, peer: str) -> bytes | None:
        from federation.envelope import header_of
        from node.store.ops import inbox_receipt_for_exact

        try:
            mid = header_of(raw).message_id
        except FederationError:
            return None
        with self.reader.connect() as conn:
            return inbox_receipt_for_exact(conn, message_id=mid, envelope=raw, sender_node=peer)

    def sweep_reminders(self, now: datetime, conn: Connection) -> list[dict[str, Any]]:
        return self.assistance.sweep(conn, now)

    def health_problems(self) -> list[str]:
        """Why this node should not serve (empty when healthy)."""
        return [problem for _, problem in self.health_check()]

    def health_check(self) -> list[tuple[str, str]]:
        """``(check, problem)`` for each reason not to serve; ``check`` names what failed:
        ``manifest`` (expired), ``tls_certificate`` / ``signing_certificate`` (the one in use
        is expired, revoked or not listed for us), ``store`` (unreachable)."""
        now = self.clock()
        found: list[tuple[str, str]] = []
        tm = self.trust.current
        if tm.is_expired(now):
            found.append(
                ("manifest", f"manifest serial {tm.serial} expired at {tm.expires_at.isoformat()}")
            )
        tls_der = x509.load_pem_x509_certificate(
            self.tls.refresh(force=True).cert_pem
        ).public_bytes(serialization.Encoding.DER)
        for problem in tm.own_certificate_status(self.code, tls_der, self.signer.key_id, now):
            check = "tls_certificate" if problem.startswith("TLS") else "signing_certificate"
            found.append((check, problem))
        try:
            with self.reader.connect() as conn:
                conn.exec_driver_sql("SELECT 1")
        except Exception as e:  # noqa: BLE001 - any store failure means NOT_SERVING
            detail = str(getattr(e, "orig", None) or e).strip().splitlines()
            found.append(
                ("store", f"store unreachable: {type(e).__name__}: {detail[0] if detail else ''}")
            )
        return found

    # --- serving ----------------------------------------------------------------------------

    async def start(self) -> None:
        from node.delivery import DeliveryWorker
        from node.server import build_server

        # The event loop (gRPC) and the store writer share the GIL; at the default 5 ms switch
        # interval a busy writer delays every waiting RPC by up to 5 ms per hand-over.
        sys.setswitchinterval(SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        if self.engine.dialect.name == "sqlite":
            # SQLite commits on the loop itself (see node.store.db.Writer); PostgreSQL keeps
            # the writer thread, so that network round trips never hold up the loop.
            self.writer.attach(self._loop)
        if self.cfg.metrics_listen:
            # First, so that a port in use stops the start before anything serves.
            self.metrics_port = self.metrics.serve(self.cfg.metrics_listen)
        try:
            self._server, self._health = build_server(self)
            await self._server.start()
            await self._update_health()
        except BaseException:
            self.writer.detach()
            await asyncio.to_thread(self.metrics.close)
            raise
        self.worker = DeliveryWorker(self)
        self._tasks = [
            asyncio.create_task(self.worker.run(), name="delivery"),
            asyncio.create_task(self._housekeeping(), name="housekeeping"),
        ]
        log.info("node %s serving on port %d", self.code, self.bound_port)

    #: While NOT_SERVING, the reasons are logged again at this interval (and at every change).
    HEALTH_RELOG_SECONDS = 300.0

    async def update_health(self) -> list[str]:
        """Check health now, set the gRPC health status and return the problems found."""
        await self._update_health()
        return [problem for _, problem in self.health_findings]

    async def _update_health(self) -> None:
        from node.server import NOT_SERVING, SERVING

        findings = await asyncio.to_thread(self.health_check)
        problems = frozenset(p for _, p in findings)
        logged = self._health_logged
        if problems and (
            logged is None
            or logged[0] != problems
            or time.monotonic() - logged[1] >= self.HEALTH_RELOG_SECONDS
        ):
            for check, p in findings:
                log.error("NOT_SERVING: %s", p, extra={"check": check})
            self._health_logged = (problems, time.monotonic())
        elif not problems and self.serving is False:
            log.info("SERVING again: every health check passes")
        if not problems:
            self._health_logged = None
        self.health_findings = findings
        self.serving = not problems
        status = NOT_SERVING if problems else SERVING
        await self._health.set("", status)
        for svc in (
            "cccfed.v1.FederationService",
            "cccfed.v1.AssistanceService",
            "cccfed.v1.ExpertExchangeService",
            "cccfed.v1.RecognitionService",
        ):
            await self._health.set(svc, status)

    async def _housekeeping(self) -> None:
        last_sweep = 0.0
        last_reconcile = time.monotonic()
        while not self._stopping:
            await asyncio.sleep(self.cfg.manifest_refresh_seconds)
            if self.reconcile_interval and (
                time.monotonic() - last_reconcile >= self.reconcile_interval
            ):
                last_reconcile = time.monotonic()
                try:
                    await self.recognition.reconcile_all()
                except Exception:  # a failed round is retried at the next interval
                    log.exception("housekeeping: reconciliation failed")
            if time.monotonic() - last_sweep >= REMINDER_SWEEP_SECONDS:
                last_sweep = time.monotonic()
                try:
                    await self.writer.run(functools.partial(self.sweep_reminders, self.clock()))
                except Exception:  # a failed sweep is retried at the next round
                    log.exception("housekeeping: reminder sweep failed")
            try:
                await self.refresh_manifest()
            except Exception:
                log.exception("housekeeping: manifest refresh failed")
            try:
                await self._update_health()
            except Exception:
                log.exception("housekeeping: health update failed")

    async def stop(self, grace: float = 5.0) -> None:
        if self._health is not None:
            await self._health.enter_graceful_shutdown()
        self._stopping = True
        if hasattr(self, "worker"):
            self.worker.stop()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._server is not None:
            await self._server.stop(grace)
        await asyncio.to_thread(self.metrics.close)
        await self.peers.close()
        self.writer.detach()
        self.writer.close()
        self.engine.dispose()

    def close(self) -> None:
        """Release store resources of a node that never started serving."""
        self.writer.close()
        self.engine.dispose()


async def serve(
    cfg: NodeConfig,
    *,
    ready: Callable[[Node], None] | None = None,
    early_stop: Callable[[], bool] | None = None,
) -> None:
    """Run a node until SIGTERM or SIGINT, then shut down gracefully.

    The handlers are installed first: a signal during start-up lets the start finish and then
    stops the node cleanly, instead of killing it half-started. ``early_stop`` says whether
    such a signal already came before the event loop ran (``cccfed node serve`` catches them
    from the moment it has read its configuration)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if early_stop is not None and early_stop():
        stop.set()
    node = Node(cfg)
    await node.start()
    if ready:
        ready(node)
    await stop.wait()
    log.info("node %s shutting down", node.code)
    await node.stop()
