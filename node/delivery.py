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
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from sqlalchemy.engine import Connection
from tenacity import RetryCallState, wait_random_exponential

from federation.errors import FederationError, VerificationError
from node.faults import failpoint
from node.status import is_transient
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


class DeliveryWorker:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.inflight: set[asyncio.Task[None]] = set()
        self.delivered = 0
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
                free = dl.concurrency - len(self.inflight)
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
                for c in claimed:
                    t = asyncio.create_task(self._deliver(c))
                    self.inflight.add(t)
                    t.add_done_callback(self._done)
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
        """Start delivering rows this process committed already claimed (see enqueue).

        They may exceed ``concurrency`` briefly; the claim loop then waits for free slots.
        """
        for c in rows:
            t = asyncio.create_task(self._deliver(c))
            self.inflight.add(t)
            t.add_done_callback(self._done)

    def _done(self, t: asyncio.Task[None]) -> None:
        self.inflight.discard(t)
        self.node.outbox_wakeup.set()  # a slot is free

    async def _deliver(self, c: Claimed) -> None:
        node = self.node
        dl = node.cfg.delivery
        failpoint("after_claim")
        try:
            vr = await node.peers.deliver_verified(c.recipient_node, c.service, c.envelope)
        except FederationError as e:
            error = str(e)
            if is_transient(e):
                delay = backoff_seconds(c.attempts, dl.retry_initial_seconds, dl.retry_max_seconds)
                next_at = node.clock() + timedelta(seconds=delay)
                log.info(
                    "message %s to %s: attempt %d failed (%s); next in %.1fs",
                    c.message_id,
                    c.recipient_node,
                    c.attempts,
                    e.reason,
                    delay,
                )
                await node.writer.run(
                    lambda s: outbox_retry_later(s, row_id=c.id, error=error, next_at=next_at)
                )
            else:
                reason = e.reason if not isinstance(e, VerificationError) else f"RECEIPT:{e.reason}"
                log.error(
                    "message %s to %s failed permanently: %s",
                    c.message_id,
                    c.recipient_node,
                    e.diagnostics(),
                )
                await node.writer.run(
                    lambda s: outbox_failed(s, row_id=c.id, reason=reason, error=error)
                )
            return
        for cb in node.receipt_callbacks:
            cb(c.message_id)
        failpoint("after_send")
        hook = node.registry.delivered_hooks.get(c.kind)

        def record(s: Connection) -> None:
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

        await node.writer.run(record)
        self.delivered += 1
        for cb in node.delivered_callbacks:
            cb(c.message_id)
