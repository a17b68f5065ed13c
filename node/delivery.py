"""The outbox delivery worker: claims due messages, sends them, stores verified receipts.

Each attempt is one call with a deadline. The outcome decides the row's next state:
- a receipt that verifies → ``delivered`` (the receipt and the receiver's receive time stored);
- a transient failure (:func:`node.status.is_transient`) → ``retry`` at a time from tenacity's
  capped, jittered exponential backoff for that attempt number;
- anything else (a permanent refusal, or a receipt that does not verify) → ``failed`` with the
  reason, for the operator; other messages are not held up.
State lives in the store, so the schedule survives restarts; a row left ``sending`` by a crash is
released at start-up (or, on a shared database, when its lease expires) and sent again — the
receiver's inbox answers a resend with the original receipt.

Messages to one peer travel in ``DeliverBatch`` calls (docs/PROTOCOL.md §6.3, ADR 0004): a lane
per peer keeps up to :data:`CALLS_PER_PEER` calls in flight and packs whatever is waiting into
the next one (no waiting to fill a batch, so a lone message leaves at once). Every item keeps its
own outcome, receipt, retry schedule and failure reason, exactly as if it had gone alone. A peer
that does not know ``DeliverBatch`` (UNIMPLEMENTED) is sent one call per message instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import grpc
from sqlalchemy.engine import Connection
from tenacity import RetryCallState, wait_random_exponential

from federation.envelope import VerifiedReceipt, verify_receipt
from federation.errors import FederationError, VerificationError
from node.faults import failpoint
from node.status import RemoteError, is_transient
from node.store.ops import (
    Claimed,
    outbox_claim,
    outbox_delivered,
    outbox_failed,
    outbox_release_own,
    outbox_retry_later,
)

if TYPE_CHECKING:
    from node.runtime import Node

log = logging.getLogger(__name__)


def backoff_seconds(attempt: int, initial: float, cap: float) -> float:
    """tenacity's full-jitter exponential wait for ``attempt`` (1-based), capped."""
    state = RetryCallState(retry_object=None, fn=None, args=(), kwargs={})  # type: ignore[arg-type]
    state.attempt_number = max(1, attempt)
    return float(wait_random_exponential(multiplier=initial, max=cap)(state))


#: Calls in flight to one peer at once; further messages wait and leave together in the next.
CALLS_PER_PEER = 4
#: Most messages in one DeliverBatch call (the receiver accepts up to 256).
BATCH_ITEMS = 64


@dataclass
class _Lane:
    """Messages waiting for one peer, and how to send them."""

    queue: deque[Claimed] = field(default_factory=deque)
    calls: int = 0
    batch: bool = True  # False once the peer answered DeliverBatch with UNIMPLEMENTED


class DeliveryWorker:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.inflight: set[asyncio.Task[None]] = set()
        #: Messages handed to a lane and not yet finished (the claim loop's slots).
        self.pending = 0
        self.lanes: dict[str, _Lane] = {}
        self.delivered = 0
        #: RPCs made (a DeliverBatch call counts once).
        self.calls = 0
        self.stopping = False
        self.running = False

    def stop(self) -> None:
        """Ask the loop to finish (a flag, not only cancellation: Python 3.11's wait_for can
        swallow a cancellation that races with the event it waits for)."""
        self.stopping = True
        self.node.outbox_wakeup.set()

    async def run(self) -> None:
        node = self.node
        dl = node.cfg.delivery
        self.running = True
        released = await node.writer.run(
            lambda s: outbox_release_own(s, replica=node.replica, now=node.clock())
        )
        if released:
            log.info("released %d message(s) left in flight by the previous run", released)
        try:
            while not self.stopping:
                # Clear before looking, so a message queued while we look wakes us again.
                node.outbox_wakeup.clear()
                free = dl.concurrency - self.pending
                claimed: list[Claimed] = []
                if free > 0:
                    try:
                        claimed = await node.writer.run(
                            functools.partial(
                                outbox_claim,
                                replica=node.replica,
                                now=node.clock(),
                                limit=free,
                                lease=timedelta(seconds=dl.lease_seconds),
                            )
                        )
                    except FederationError as e:
                        log.warning("outbox claim failed: %s", e.diagnostics())
                self.dispatch(claimed)
                if not claimed:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(dl.poll_seconds):
                            await node.outbox_wakeup.wait()
        finally:
            self.running = False
            for t in list(self.inflight):
                t.cancel()
            if self.inflight:
                await asyncio.gather(*self.inflight, return_exceptions=True)

    def dispatch(self, rows: list[Claimed]) -> None:
        """Start delivering claimed rows (from the claim loop, or committed already claimed by
        ``Node.run_and_send``). They may exceed ``concurrency`` briefly; the claim loop then
        waits for free slots."""
        touched: dict[str, _Lane] = {}
        for c in rows:
            lane = self.lanes.get(c.recipient_node)
            if lane is None:
                lane = self.lanes[c.recipient_node] = _Lane(batch=self.node.cfg.delivery.batch)
            lane.queue.append(c)
            self.pending += 1
            touched[c.recipient_node] = lane
        for peer, lane in touched.items():
            self._pump(peer, lane)

    def _pump(self, peer: str, lane: _Lane) -> None:
        budget = self.node.cfg.limits.max_message_bytes
        while lane.queue and lane.calls < CALLS_PER_PEER and not self.stopping:
            batch = [lane.queue.popleft()]
            size = len(batch[0].envelope)
            while (
                lane.queue
                and len(batch) < BATCH_ITEMS
                and size + len(lane.queue[0].envelope) + 64 <= budget
            ):
                c = lane.queue.popleft()
                batch.append(c)
                size += len(c.envelope) + 64  # per-item framing, generously
            lane.calls += 1
            t = asyncio.create_task(self._deliver(peer, lane, batch))
            self.inflight.add(t)
            t.add_done_callback(functools.partial(self._done, peer, lane, len(batch)))

    def _done(self, peer: str, lane: _Lane, n: int, t: asyncio.Task[None]) -> None:
        self.inflight.discard(t)
        lane.calls -= 1
        self.pending -= n
        if not t.cancelled() and t.exception() is not None:
            log.error("delivery to %s failed unexpectedly", peer, exc_info=t.exception())
        self._pump(peer, lane)
        self.node.outbox_wakeup.set()  # slots are free

    async def _send(self, peer: str, lane: _Lane, batch: list[Claimed]) -> list[bytes | Exception]:
        """One call (or one per message for a peer without DeliverBatch); outcome per item."""
        peers = self.node.peers
        if lane.batch:
            self.calls += 1
            try:
                return list(
                    await peers.deliver_batch(peer, [(c.service, c.envelope) for c in batch])
                )
            except RemoteError as e:
                if not (e.code == grpc.StatusCode.UNIMPLEMENTED and e.reason == "UNIMPLEMENTED"):
                    return [e] * len(batch)
                log.info("%s does not know DeliverBatch: one call per message from now on", peer)
                lane.batch = False
            except FederationError as e:
                return [e] * len(batch)

        async def alone(c: Claimed) -> bytes | Exception:
            try:
                return await peers.deliver(peer, c.service, c.envelope)
            except FederationError as e:
                return e

        self.calls += len(batch)
        return list(await asyncio.gather(*(alone(c) for c in batch)))

    async def _deliver(self, peer: str, lane: _Lane, batch: list[Claimed]) -> None:
        node = self.node
        for _ in batch:  # fail points count messages, not calls
            failpoint("after_claim")
        outcomes = await self._send(peer, lane, batch)
        jobs: list[Callable[[Connection], bool]] = []
        done: list[tuple[int, Claimed]] = []  # (index of its record job, row)
        created_at: dict[int, datetime] = {}  # record job index -> the message's created_at
        for c, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, bytes):
                try:
                    vr = verify_receipt(
                        outcome,
                        c.envelope,
                        node.trust.current,
                        expected_receiver=peer,
                        at=node.clock(),
                        max_skew=node.policy.max_clock_skew,
                    )
                except FederationError as e:
                    jobs.append(self._refused(c, e))
                    continue
                for cb in node.receipt_callbacks:
                    cb(c.message_id)
                if vr.created_at is not None:
                    created_at[len(jobs)] = vr.created_at
                done.append((len(jobs), c))
                jobs.append(self._record(c, vr))
            elif isinstance(outcome, FederationError):
                jobs.append(self._refused(c, outcome))
            else:  # pragma: no cover - _send returns bytes or FederationError only
                raise outcome
        for _ in done:
            failpoint("after_send")
        # One writer job per message (a failure stays with its message); the writer commits
        # them together.
        results = await node.writer.run_many(jobs)
        for r in results:
            if isinstance(r, BaseException):
                log.error("storing a delivery outcome for %s failed: %s", peer, r)
        now = node.clock()
        for i, c in done:
            if isinstance(results[i], BaseException):
                continue  # not stored: the row stays claimed and is sent again after its lease
            self.delivered += 1
            if results[i] is True:  # the first verified receipt for this row
                sent = created_at.get(i)
                waited = (now - sent).total_seconds() if sent is not None else 0.0
                node.metrics.delivered(peer, c.kind, waited)
            for cb in node.delivered_callbacks:
                cb(c.message_id)

    def _record(self, c: Claimed, vr: VerifiedReceipt) -> Callable[[Connection], bool]:
        node = self.node
        hook = node.registry.delivered_hooks.get(c.kind)

        def record(s: Connection) -> bool:
            first = outbox_delivered(
                s,
                row_id=c.id,
                message_id=c.message_id,
                recipient=c.recipient_node,
                receipt=vr.receipt_bytes,
                received_at=vr.received_at,
                now=node.clock(),
            )
            if first and hook is not None:
                hook(s, c, vr)  # the domain learns of the receipt in the same transaction
            return first

        return record

    def _refused(self, c: Claimed, e: FederationError) -> Callable[[Connection], bool]:
        node = self.node
        dl = node.cfg.delivery
        error = str(e)
        transient = is_transient(e)
        reason = e.reason if not isinstance(e, VerificationError) else f"RECEIPT:{e.reason}"
        node.metrics.send_failed(c.recipient_node, reason, transient=transient)
        if transient:
            delay = backoff_seconds(c.attempts, dl.retry_initial_seconds, dl.retry_max_seconds)
            next_at = node.clock() + timedelta(seconds=delay)
            log.info(
                "message %s to %s: attempt %d failed (%s); next in %.1fs",
                c.message_id,
                c.recipient_node,
                c.attempts,
                e.reason,
                delay,
                extra={"message_id": c.message_id, "peer": c.recipient_node, "reason": e.reason},
            )

            def retry(s: Connection) -> bool:
                outbox_retry_later(s, row_id=c.id, error=error, next_at=next_at)
                return False

            return retry
        log.error(
            "message %s to %s failed permanently: %s",
            c.message_id,
            c.recipient_node,
            e.diagnostics(),
            extra={"message_id": c.message_id, "peer": c.recipient_node, "reason": reason},
        )

        def failed(s: Connection) -> bool:
            outbox_failed(s, row_id=c.id, reason=reason, error=error)
            return False

        return failed
