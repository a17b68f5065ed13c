"""Prometheus metrics of a node, served on ``[node] metrics_listen`` (see ``docs/METRICS.md``).

Two kinds of series:

* **Events**, counted where they happen through the methods of :class:`NodeMetrics`
  (:meth:`~NodeMetrics.received`, :meth:`~NodeMetrics.delivered`,
  :meth:`~NodeMetrics.send_failed`, :meth:`~NodeMetrics.rejection`). They live in this process
  and start from zero when it starts.
* **State**, read at scrape time by :class:`StateCollector` from the store (through the node's
  read-only engine) and from what the node holds in memory: outbox depth and age, obligations,
  the witnessed logs per origin, certificate and manifest expiry, health, the store writer. A
  store that cannot be read gives ``cccfed_store_up 0`` instead of a failed scrape, so the other
  series (health, certificates) are still there when they matter most.

Every :class:`NodeMetrics` has its own :class:`~prometheus_client.CollectorRegistry` (never the
global one): several nodes can live in one process, as they do in the tests. A
:class:`NodeMetrics` always exists on a node, so code paths call its methods unconditionally;
only the HTTP endpoint is optional.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIServer

from cryptography import x509
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import and_, case, func, select
from sqlalchemy.engine import Connection

from federation.errors import ConfigError
from federation.periods import shanghai_date
from node.store.ops import OUTBOX, QUEUED, RETRY, SENDING, STATES

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger(__name__)

#: Buckets of the delivery latency histogram, in seconds: from a loopback round trip to a day
#: spent waiting in the outbox for a peer that was down.
LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    900.0,
    3600.0,
    4 * 3600.0,
    24 * 3600.0,
)

#: Outbox states of a message still being tried (``failed`` waits for the operator instead).
PENDING_STATES = (QUEUED, SENDING, RETRY)

#: ``check`` label values of ``cccfed_health_problem``.
HEALTH_CHECKS = ("store", "manifest", "tls_certificate", "signing_certificate")

SECONDS_PER_DAY = 86400.0


class NodeMetrics:
    """The metrics of one node: event counters plus the scrape-time :class:`StateCollector`.

    Call sites (each call is cheap and thread-safe):

    * ``received(peer, kind)`` — an envelope was accepted and committed (``Node.on_received``);
    * ``delivered(peer, kind, seconds)`` — a verified receipt for a message we queued was
      stored; ``seconds`` from queueing to that commit;
    * ``send_failed(peer, reason, transient)`` — one delivery attempt failed;
    * ``rejection(reason)`` — this node refused a call or an envelope (``Node.metrics_rejection``).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        self.registry = CollectorRegistry(auto_describe=True)
        self._received = Counter(
            "cccfed_messages_received",
            "Envelopes this node accepted and committed (each answered with a signed receipt), "
            "per sending member and payload kind. A redelivery of a message already held counts "
            "again.",
            ["peer", "kind"],
            registry=self.registry,
        )
        self._receipts = Counter(
            "cccfed_receipts_stored",
            "Verified receipts stored for messages this node sent through its outbox (the "
            "message is then delivered), per receiving member and payload kind.",
            ["peer", "kind"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "cccfed_delivery_latency_seconds",
            "Seconds from a message being queued in the outbox to its verified receipt being "
            "stored, per receiving member (includes time spent waiting for a peer that was down).",
            ["peer"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._send_failures = Counter(
            "cccfed_send_failures",
            "Failed delivery attempts per receiving member and reason; class is 'transient' "
            "(retried with backoff) or 'permanent' (the message is marked failed and waits for "
            "the operator: cccfed outbox).",
            ["peer", "reason", "class"],
            registry=self.registry,
        )
        self._due_mismatch = Counter(
            "cccfed_due_date_mismatches",
            "Requests a member accepted while counting another reply due date than this node: "
            "the two nodes' holiday calendars differ (compare cccfed calendar show YEAR).",
            ["peer"],
            registry=self.registry,
        )
        self._rejections = Counter(
            "cccfed_rejections",
            "Calls and envelopes this node refused, per machine-readable reason (e.g. "
            "BAD_SIGNATURE, REVOKED_KEY, UNKNOWN_PEER, CLOCK_SKEW, OVERSIZE).",
            ["reason"],
            registry=self.registry,
        )
        self.state = StateCollector(node)
        self.registry.register(self.state)
        self.port = 0
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    # --- events -----------------------------------------------------------------------------

    def received(self, peer: str, kind: str) -> None:
        """An envelope from ``peer`` of payload ``kind`` was accepted and committed."""
        self._received.labels(peer=peer, kind=kind).inc()

    def delivered(self, peer: str, kind: str, seconds: float) -> None:
        """A verified receipt from ``peer`` was stored for a message we queued ``seconds`` ago."""
        self._receipts.labels(peer=peer, kind=kind).inc()
        self._latency.labels(peer=peer).observe(max(0.0, seconds))

    def due_date_mismatch(self, peer: str) -> None:
        """``peer`` accepted a request counting another due date than ours (calendars differ)."""
        self._due_mismatch.labels(peer=peer).inc()

    def send_failed(self, peer: str, reason: str, transient: bool) -> None:
        """A delivery attempt to ``peer`` failed for ``reason`` (retried if ``transient``)."""
        self._send_failures.labels(
            peer=peer, reason=reason, **{"class": "transient" if transient else "permanent"}
        ).inc()

    def rejection(self, reason: str) -> None:
        """This node refused a call or an envelope for ``reason``."""
        self._rejections.labels(reason=reason).inc()

    # --- the endpoint -----------------------------------------------------------------------

    def serve(self, listen: str) -> int:
        """Serve ``/metrics`` on ``listen`` ("host:port", port 0: any free port) in a daemon
        thread; returns the bound port. A port in use is a :class:`ConfigError` naming the key.
        """
        cfg = self.node.cfg
        host, _, port = listen.rpartition(":")
        host = host.removeprefix("[").removesuffix("]")
        try:
            httpd, thread = start_http_server(int(port), addr=host, registry=self.registry)
        except (OSError, ValueError) as e:
            detail = getattr(e, "strerror", None) or str(e)
            raise ConfigError(
                f"{cfg.path}: [node] metrics_listen: cannot listen on {listen}: {detail} "
                "(in use by another process?)",
                reason="METRICS_LISTEN",
            ) from e
        self._httpd, self._thread = httpd, thread
        self.port = int(httpd.server_port)
        log.info("metrics of node %s on http://%s:%d/metrics", self.node.code, host, self.port)
        return self.port

    def close(self) -> None:
        """Stop the endpoint (blocks up to half a second; idempotent)."""
        httpd, thread = self._httpd, self._thread
        self._httpd = self._thread = None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()
        if thread is not None:
            thread.join(timeout=5)


def seconds_since_queued(envelope: bytes, now: datetime) -> float:
    """Seconds from when ``envelope`` was sealed and queued (its signed ``created_at``, the
    instant ``Node.enqueue_in`` stores as the outbox row's ``created_at``) to ``now``: the
    ``seconds`` of :meth:`NodeMetrics.delivered`."""
    from federation.envelope import header_of

    created = header_of(envelope).created_at.ToDatetime(tzinfo=UTC)
    return (now - created).total_seconds()


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector:
    """Series computed at scrape time from the store and the node's memory."""

    def __init__(self, node: Node) -> None:
        self.node = node
        sign_cert = x509.load_pem_x509_certificate(node.cfg.sign_cert.read_bytes())
        self._sign_not_after = sign_cert.not_valid_after_utc
        self._tls_cache: tuple[bytes, datetime] | None = None

    def describe(self) -> Iterable[Metric]:
        return []  # computed at scrape time; nothing to describe in advance

    def collect(self) -> Iterator[Metric]:
        node = self.node
        now = node.clock()
        info = _gauge(
            "cccfed_node_info", "This node: its member code and replica name.", ["node", "replica"]
        )
        info.add_metric([node.code, node.replica], 1)
        yield info
        tm = node.trust.current
        serial = _gauge("cccfed_manifest_serial", "Serial of the federation manifest in force.")
        serial.add_metric([], tm.serial)
        yield serial
        yield from self._certificates(now)
        yield from self._health()
        yield CounterMetricFamily(
            "cccfed_store_commits",
            "Transactions committed by this process's store writer (group commit).",
            value=node.writer.commits,
        )
        yield CounterMetricFamily(
            "cccfed_store_jobs",
            "Write jobs run by this process's store writer.",
            value=node.writer.jobs,
        )
        up = _gauge(
            "cccfed_store_up",
            "1 if the store could be read for this scrape, 0 if not (the store-based series are "
            "then missing).",
        )
        try:
            with node.reader.connect() as conn:
                families = [
                    *self._outbox(conn, now),
                    *self._obligations(conn, now),
                    *self._logs(conn),
                ]
        except Exception as e:  # noqa: BLE001 - a store down must not fail the whole scrape
            log.warning(
                "metrics: store not readable: %s", f"{type(e).__name__}: {e}".splitlines()[0]
            )
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families

    # --- memory -------------------------------------------------------------------------------

    def _tls_not_after(self) -> datetime:
        pem = self.node.tls.current.cert_pem
        if self._tls_cache is None or self._tls_cache[0] != pem:
            self._tls_cache = (pem, x509.load_pem_x509_certificate(pem).not_valid_after_utc)
        return self._tls_cache[1]

    def _certificates(self, now: datetime) -> Iterator[Metric]:
        node = self.node
        certs = _gauge(
            "cccfed_certificate_expiry_days",
            "Days until a certificate of this node expires (negative once expired): 'tls' (the "
            "TLS certificate served and presented now), 'signing' (the key that signs envelopes "
            "and receipts), 'ca' (the federation CA).",
            ["certificate"],
        )
        for name, not_after in (
            ("tls", self._tls_not_after()),
            ("signing", self._sign_not_after),
            ("ca", node.ca.not_valid_after_utc),
        ):
            certs.add_metric([name], (not_after - now).total_seconds() / SECONDS_PER_DAY)
        yield certs
        manifest = _gauge(
            "cccfed_manifest_expiry_days",
            "Days until the federation manifest in force expires (negative once expired: the "
            "node then reports NOT_SERVING).",
        )
        manifest.add_metric(
            [], (node.trust.current.expires_at - now).total_seconds() / SECONDS_PER_DAY
        )
        yield manifest

    def _health(self) -> Iterator[Metric]:
        node = self.node
        serving = _gauge(
            "cccfed_health_serving",
            "1 if the gRPC health service reports SERVING, 0 if NOT_SERVING (the reasons are in "
            "cccfed_health_problem and in the node log at ERROR).",
        )
        serving.add_metric([], 1 if node.serving else 0)
        yield serving
        problem = _gauge(
            "cccfed_health_problem",
            "1 for each check that currently makes the node NOT_SERVING: store (unreachable), "
            "manifest (expired), tls_certificate / signing_certificate (the one in use is "
            "expired, revoked or not listed).",
            ["check"],
        )
        failing = {check for check, _ in node.health_findings}
        for check in HEALTH_CHECKS:
            problem.add_metric([check], 1 if check in failing else 0)
        yield problem

    # --- store --------------------------------------------------------------------------------

    def _peers(self) -> list[str]:
        return sorted(c for c in self.node.trust.current.members if c != self.node.code)

    def _outbox(self, conn: Connection, now: datetime) -> Iterator[Metric]:
        depth = _gauge(
            "cccfed_outbox_messages",
            "Messages in this node's outbox per receiving member and state: queued (waiting for "
            "a first attempt), sending (an attempt in flight), retry (waiting for the next "
            "attempt after a transient failure), delivered (verified receipt stored), failed "
            "(permanently refused: waits for the operator, see cccfed outbox).",
            ["peer", "state"],
        )
        counts: dict[tuple[str, str], int] = {(p, s): 0 for p in self._peers() for s in STATES}
        rows = conn.execute(
            select(OUTBOX.c.recipient_node, OUTBOX.c.state, func.count()).group_by(
                OUTBOX.c.recipient_node, OUTBOX.c.state
            )
        ).all()
        for peer, state, n in rows:
            counts[(peer, state)] = int(n)
        for (peer, state), n in sorted(counts.items()):
            depth.add_metric([peer, state], n)
        yield depth
        age = _gauge(
            "cccfed_outbox_oldest_undelivered_age_seconds",
            "Age in seconds of the oldest message to this member that is still being tried "
            "(queued, sending or retry); 0 when none is waiting. Failed messages are counted in "
            'cccfed_outbox_messages{state="failed"} instead.',
            ["peer"],
        )
        oldest: dict[str, float] = dict.fromkeys(self._peers(), 0.0)
        rows = conn.execute(
            select(OUTBOX.c.recipient_node, func.min(OUTBOX.c.created_at))
            .where(OUTBOX.c.state.in_(PENDING_STATES))
            .group_by(OUTBOX.c.recipient_node)
        ).all()
        for peer, created in rows:
            if created is not None:
                oldest[peer] = max(0.0, (now - created).total_seconds())
        for peer, seconds in sorted(oldest.items()):
            age.add_metric([peer], seconds)
        yield age

    def _obligations(self, conn: Connection, now: datetime) -> Iterator[Metric]:
        from federation.requests import RequestStatus
        from node.assistance import REQUESTS

        r = REQUESTS
        soon_days = max(self.node.cfg.reminder_days, default=0)
        soon = (shanghai_date(now) + timedelta(days=soon_days)).isoformat()
        counterpart = case(
            (r.c.role == "responder", r.c.requester_node), else_=r.c.responder_node
        ).label("counterpart")
        overdue_now = r.c.due_ends_at <= now
        rows = conn.execute(
            select(
                r.c.role,
                counterpart,
                func.count(),
                func.sum(case((overdue_now, 1), else_=0)),
                func.sum(case((and_(~overdue_now, r.c.due_date <= soon), 1), else_=0)),
            )
            .where(
                r.c.status.in_([RequestStatus.DELIVERED.value, RequestStatus.ACCEPTED.value]),
                r.c.due_date.is_not(None),
                r.c.due_ends_at.is_not(None),
            )
            .group_by(r.c.role, counterpart)
        ).all()
        labels = ["direction", "counterpart"]
        families = {
            "open": _gauge(
                "cccfed_obligations_open",
                "Open requests with a reply due date (the 15-day reply obligation), as cccfed "
                "obligations lists them: direction 'owed' (this node must reply to counterpart) or "
                "'awaiting' (counterpart must reply to this node).",
                labels,
            ),
            "due_soon": _gauge(
                "cccfed_obligations_due_soon",
                "Open obligations not yet overdue whose due date is within the largest "
                "[obligations] reminder_days (default 3 days).",
                labels,
            ),
            "overdue": _gauge(
                "cccfed_obligations_overdue",
                "Open obligations past 24:00 Asia/Shanghai of their due date (cccfed obligations "
                "--report gives the escalation report).",
                labels,
            ),
        }
        values: dict[tuple[str, str], tuple[int, int, int]] = {
            (d, p): (0, 0, 0) for d in ("owed", "awaiting") for p in self._peers()
        }
        for role, peer, total, overdue, due_soon in rows:
            direction = "owed" if role == "responder" else "awaiting"
            values[(direction, peer)] = (int(total), int(due_soon or 0), int(overdue or 0))
        for (direction, peer), (total, due_soon, overdue) in sorted(values.items()):
            families["open"].add_metric([direction, peer], total)
            families["due_soon"].add_metric([direction, peer], due_soon)
            families["overdue"].add_metric([direction, peer], overdue)
        yield from families.values()

    def _logs(self, conn: Connection) -> Iterator[Metric]:
        from node.recognition import (
            CHECKPOINTS,
            COSIGNATURES,
            STORED_COSIGNATURES,
            frozen_origins,
        )

        node = self.node
        members = sorted(node.trust.current.members)
        size = _gauge(
            "cccfed_log_size",
            "Entries of each member's inspection-result log held here: the size of the latest "
            "checkpoint accepted (for this node's own log, the latest it signed).",
            ["origin"],
        )
        accepted = _gauge(
            "cccfed_log_checkpoint_timestamp_seconds",
            "Unix time at which the latest checkpoint of each log was stored here (0: none yet).",
            ["origin"],
        )
        recognized = _gauge(
            "cccfed_log_recognized_size",
            "Entries of each log recognised by the whole quorum (every other member cosigned a "
            "checkpoint covering them); cccfed_log_size minus this is what still waits for "
            "cosignatures.",
            ["origin"],
        )
        frozen_g = _gauge(
            "cccfed_origin_frozen",
            "1 if the origin was caught signing two conflicting checkpoints (equivocation): "
            "recognition of its results is frozen. See cccfed result checkpoints.",
            ["origin"],
        )
        frozen = frozen_origins(conn)
        for origin in sorted(set(members) | frozen):
            latest = conn.execute(
                select(CHECKPOINTS.c.size, CHECKPOINTS.c.stored_at)
                .where(CHECKPOINTS.c.origin == origin)
                .order_by(CHECKPOINTS.c.size.desc())
                .limit(1)
            ).first()
            size.add_metric([origin], 0 if latest is None else int(latest.size))
            accepted.add_metric([origin], 0 if latest is None else latest.stored_at.timestamp())
            covered: list[int] = []
            for witness in members:
                if witness == origin:
                    continue
                hit = conn.execute(
                    select(COSIGNATURES.c.size)
                    .select_from(STORED_COSIGNATURES)
                    .where(COSIGNATURES.c.origin == origin, COSIGNATURES.c.witness == witness)
                    .order_by(COSIGNATURES.c.size.desc())
                    .limit(1)
                ).first()
                covered.append(0 if hit is None else int(hit.size))
            recognized.add_metric([origin], min(covered, default=0))
            frozen_g.add_metric([origin], 1 if origin in frozen else 0)
        yield from (size, accepted, recognized, frozen_g)
        reconciled = _gauge(
            "cccfed_reconcile_last_success_timestamp_seconds",
            "Unix time of the last reconciliation round with each peer that completed (answer "
            "received and applied) in this process; 0 if none yet since start.",
            ["peer"],
        )
        last = dict(node.recognition.last_reconciled)
        for peer in self._peers():
            at = last.get(peer)
            reconciled.add_metric([peer], 0 if at is None else at.timestamp())
        yield reconciled


__all__ = [
    "HEALTH_CHECKS",
    "LATENCY_BUCKETS",
    "NodeMetrics",
    "StateCollector",
    "seconds_since_queued",
]
