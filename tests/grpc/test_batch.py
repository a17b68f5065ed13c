"""DeliverBatch through a real TLS server: each item is answered exactly as it would be alone.

Every item keeps its own receipt or refusal (same status code and reason as the unary call);
only the accepted items are stored; a refused call stores nothing; a redelivered batch gets the
original receipts. The delivery worker falls back to one call per message for a peer that does
not know DeliverBatch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from sqlalchemy import func, select

from cccfed.v1 import envelope_pb2, federation_pb2
from federation.crypto import CTX_ENVELOPE
from federation.envelope import header_of, verify_receipt
from node.client import channel_options
from node.logbundle import verify_store
from node.runtime import Node
from node.server import EnvelopeIntake, PeerIdentityInterceptor
from node.status import RemoteError
from node.store.ops import INBOX, OUTBOX
from tests.grpc.conftest import (
    AH,
    JS,
    SH,
    ZJ,
    Cluster,
    Federation,
    LoopRunner,
    ping_envelope,
    rows,
    utcnow,
)

C = grpc.StatusCode
BATCH = "/cccfed.v1.FederationService/DeliverBatch"
FED_SERVICE = "cccfed.v1.FederationService"


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS, ZJ, AH))


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner) -> Iterator[Cluster]:
    with Cluster(fed, runner, [SH, JS]) as c:
        yield c


def batch(*items: tuple[str, bytes], batch_receipts: bool = False) -> bytes:
    return federation_pb2.DeliverBatchRequest(
        items=[federation_pb2.BatchItem(service=s, envelope=e) for s, e in items],
        batch_receipts=batch_receipts,
    ).SerializeToString()


def answer(out: Any) -> list[federation_pb2.BatchOutcome]:
    assert out.code is C.OK, out.details
    return list(federation_pb2.DeliverBatchResponse.FromString(out.response).outcomes)


def refusal(o: federation_pb2.BatchOutcome) -> tuple[grpc.StatusCode, str]:
    assert o.WhichOneof("outcome") == "error", o
    return {c.value[0]: c for c in C}[o.error.code], o.error.reason


def test_mixed_batch_gives_each_item_its_own_outcome(cluster: Cluster, fed: Federation) -> None:
    node = cluster[SH]
    signer = fed.signer(JS)
    good = ping_envelope(signer, JS, SH, note="good")
    tampered = envelope_pb2.Envelope.FromString(ping_envelope(signer, JS, SH))
    tampered.signature = signer.sign(CTX_ENVELOPE, tampered.header + b"!")
    future = ping_envelope(signer, JS, SH, now=utcnow() + timedelta(hours=1))
    elsewhere = ping_envelope(signer, JS, ZJ)
    good2 = ping_envelope(signer, JS, SH, note="good too")
    before = rows(node.engine)
    counted = dict(node.rejections)

    out = answer(
        cluster.call(
            SH,
            batch(
                (FED_SERVICE, good),
                (FED_SERVICE, tampered.SerializeToString()),
                ("cccfed.v1.AssistanceService", ping_envelope(signer, JS, SH)),
                (FED_SERVICE, future),
                (FED_SERVICE, elsewhere),
                ("cccfed.v1.NoSuchService", ping_envelope(signer, JS, SH)),
                (FED_SERVICE, b"\xff\xff\xff"),
                (FED_SERVICE, good2),
            ),
            method=BATCH,
        )
    )

    assert len(out) == 8
    for i, env in ((0, good), (7, good2)):
        assert out[i].WhichOneof("outcome") == "receipt"
        vr = verify_receipt(out[i].receipt, env, fed.trusted(), expected_receiver=SH, at=utcnow())
        assert vr.body.message_id == header_of(env).message_id
    assert refusal(out[1]) == (C.INVALID_ARGUMENT, "BAD_SIGNATURE")
    assert refusal(out[2]) == (C.UNIMPLEMENTED, "UNSUPPORTED_KIND")
    assert refusal(out[3]) == (C.FAILED_PRECONDITION, "CLOCK_SKEW")
    assert refusal(out[4]) == (C.FAILED_PRECONDITION, "WRONG_RECIPIENT")
    assert refusal(out[5]) == (C.UNIMPLEMENTED, "UNSUPPORTED_KIND")
    assert "NoSuchService" in out[5].error.message
    assert refusal(out[6]) == (C.INVALID_ARGUMENT, "MALFORMED")
    # Only the two good items are stored: 2 inbox rows, each with envelope + receipt logged.
    assert rows(node.engine) == (before[0] + 2, before[1] + 4)
    for reason, n in (("BAD_SIGNATURE", 1), ("UNSUPPORTED_KIND", 2), ("CLOCK_SKEW", 1)):
        assert node.rejections.get(reason, 0) == counted.get(reason, 0) + n


def test_redelivered_batch_gets_the_original_receipts_and_stores_nothing(
    cluster: Cluster, fed: Federation
) -> None:
    node = cluster[SH]
    envs = [ping_envelope(fed.signer(JS), JS, SH, note=f"n{i}") for i in range(5)]
    req = batch(*((FED_SERVICE, e) for e in envs))
    first = answer(cluster.call(SH, req, method=BATCH))
    after_first = rows(node.engine)
    second = answer(cluster.call(SH, req, method=BATCH))
    assert [o.receipt for o in first] == [o.receipt for o in second]
    assert all(o.receipt for o in first)
    assert rows(node.engine) == after_first


def test_same_id_other_bytes_in_a_batch_is_a_duplicate_conflict(
    cluster: Cluster, fed: Federation
) -> None:
    mid = str(uuid.uuid4())
    first = ping_envelope(fed.signer(JS), JS, SH, message_id=mid, note="first")
    other = ping_envelope(fed.signer(JS), JS, SH, message_id=mid, note="second")
    out = answer(cluster.call(SH, batch((FED_SERVICE, first), (FED_SERVICE, other)), method=BATCH))
    assert out[0].WhichOneof("outcome") == "receipt"
    assert refusal(out[1]) == (C.ALREADY_EXISTS, "DUPLICATE_CONFLICT")
    assert out[1].error.message_id == mid


def test_batch_receipts_share_one_signature_and_cover_only_accepted_items(
    cluster: Cluster, fed: Federation
) -> None:
    """A sender that asks for them gets the receipts of the items committed together under one
    signature (PROTOCOL.md §7.5); refused items have no leaf in the signed tree."""
    node = cluster[SH]
    signer = fed.signer(JS)
    good = [ping_envelope(signer, JS, SH, note=f"b{i}") for i in range(4)]
    tampered = envelope_pb2.Envelope.FromString(ping_envelope(signer, JS, SH))
    tampered.signature = signer.sign(CTX_ENVELOPE, tampered.header + b"!")
    items = [(FED_SERVICE, e) for e in good[:2]]
    items += [(FED_SERVICE, b"\xff\xff"), (FED_SERVICE, tampered.SerializeToString())]
    items += [(FED_SERVICE, e) for e in good[2:]]
    out = answer(cluster.call(SH, batch(*items, batch_receipts=True), method=BATCH))

    assert refusal(out[2]) == (C.INVALID_ARGUMENT, "MALFORMED")
    assert refusal(out[3]) == (C.INVALID_ARGUMENT, "BAD_SIGNATURE")
    receipts = [out[i].receipt for i in (0, 1, 4, 5)]
    proofs = [envelope_pb2.Receipt.FromString(r) for r in receipts]
    assert all(p.HasField("batch") for p in proofs)
    assert len({p.batch.head for p in proofs}) == 1 and len({p.signature for p in proofs}) == 1
    head = envelope_pb2.ReceiptBatchHead.FromString(proofs[0].batch.head)
    assert head.tree_size == 4 and head.receiver_node == SH  # the four accepted, no more
    assert sorted(p.batch.leaf_index for p in proofs) == [0, 1, 2, 3]
    for r, env in zip(receipts, good, strict=True):
        verify_receipt(r, env, fed.trusted(), expected_receiver=SH, at=utcnow())
    with node.engine.connect() as conn:
        mids = [header_of(e).message_id for e in good]
        q = select(INBOX.c.message_id, INBOX.c.receipt).where(INBOX.c.message_id.in_(mids))
        stored = {str(m): bytes(r) for m, r in conn.execute(q)}
    assert [stored[m] for m in mids] == receipts  # what was answered is what is kept
    assert verify_store(node.engine, node.ca, node.code).receipts > 0  # log verify passes
    # A redelivery gets the same batch receipts back, whatever it asks for.
    again = answer(cluster.call(SH, batch(*((FED_SERVICE, e) for e in good)), method=BATCH))
    assert [o.receipt for o in again] == receipts


def test_a_conflict_found_in_the_store_leaves_no_leaf_for_it(
    cluster: Cluster, fed: Federation
) -> None:
    """A refusal found while storing (here the same id with other bytes, in one transaction)
    makes the writer run each item alone: the others get receipts signed alone, which verify,
    and the conflicting message is in no signed tree."""
    signer = fed.signer(JS)
    first = ping_envelope(signer, JS, SH, note="first")
    other = ping_envelope(signer, JS, SH, note="other")
    conflict = ping_envelope(signer, JS, SH, message_id=header_of(first).message_id, note="x")
    req = batch(
        (FED_SERVICE, first), (FED_SERVICE, other), (FED_SERVICE, conflict), batch_receipts=True
    )
    out = answer(cluster.call(SH, req, method=BATCH))
    assert refusal(out[2]) == (C.ALREADY_EXISTS, "DUPLICATE_CONFLICT")
    for o, env in ((out[0], first), (out[1], other)):
        verify_receipt(o.receipt, env, fed.trusted(), expected_receiver=SH, at=utcnow())
        assert not envelope_pb2.Receipt.FromString(o.receipt).HasField("batch")


def test_without_the_flag_every_receipt_is_signed_alone(cluster: Cluster, fed: Federation) -> None:
    envs = [ping_envelope(fed.signer(JS), JS, SH, note=f"a{i}") for i in range(3)]
    out = answer(cluster.call(SH, batch(*((FED_SERVICE, e) for e in envs)), method=BATCH))
    for o, env in zip(out, envs, strict=True):
        assert not envelope_pb2.Receipt.FromString(o.receipt).HasField("batch")
        verify_receipt(o.receipt, env, fed.trusted(), expected_receiver=SH, at=utcnow())
    assert len({envelope_pb2.Receipt.FromString(o.receipt).signature for o in out}) == 3


def test_the_same_message_twice_in_a_flagged_batch_gets_one_receipt(
    cluster: Cluster, fed: Federation
) -> None:
    """The second copy is a redelivery of a message accepted in the same, uncommitted
    transaction: it gets the same receipt, and the message is stored once."""
    node = cluster[SH]
    env = ping_envelope(fed.signer(JS), JS, SH, note="twice")
    other = ping_envelope(fed.signer(JS), JS, SH, note="once")
    before = rows(node.engine)
    out = answer(
        cluster.call(
            SH,
            batch(
                (FED_SERVICE, env), (FED_SERVICE, other), (FED_SERVICE, env), batch_receipts=True
            ),
            method=BATCH,
        )
    )
    assert out[0].receipt == out[2].receipt
    verify_receipt(out[2].receipt, env, fed.trusted(), expected_receiver=SH, at=utcnow())
    assert rows(node.engine) == (before[0] + 2, before[1] + 4)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\xff\xff\xff\xff", "MALFORMED"),
        (federation_pb2.DeliverBatchRequest().SerializeToString(), "INVALID"),
    ],
    ids=["garbage", "empty"],
)
def test_a_malformed_or_empty_batch_is_refused_whole(
    cluster: Cluster, data: bytes, reason: str
) -> None:
    cluster.refused(SH, data, C.INVALID_ARGUMENT, reason, method=BATCH)


def test_too_many_items_is_refused_whole(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    data = batch(*([(FED_SERVICE, env)] * 257))
    out = cluster.refused(SH, data, C.INVALID_ARGUMENT, "INVALID", method=BATCH)
    assert "257 items" in out.details


def test_batch_over_the_transport_limit_is_refused_by_grpc(
    cluster: Cluster, fed: Federation
) -> None:
    limit = cluster[SH].cfg.limits.max_message_bytes
    env = ping_envelope(fed.signer(JS), JS, SH, note="x" * (limit // 2))
    out = cluster.refused(
        SH, batch(*([(FED_SERVICE, env)] * 3)), C.RESOURCE_EXHAUSTED, "", method=BATCH
    )
    assert "larger than max" in out.details


def test_unlisted_client_certificate_is_refused_before_any_item(
    cluster: Cluster, fed: Federation
) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    cluster.refused(
        SH,
        batch((FED_SERVICE, env)),
        C.UNAUTHENTICATED,
        "UNKNOWN_PEER",
        client=fed.unlisted_tls(JS),
        method=BATCH,
    )


def test_peer_pool_maps_item_refusals_to_remote_errors(cluster: Cluster, fed: Federation) -> None:
    sender = cluster[JS]
    good = ping_envelope(fed.signer(JS), JS, SH)
    late = ping_envelope(fed.signer(JS), JS, SH, now=utcnow() + timedelta(hours=1))
    out = cluster.run(sender.peers.deliver_batch(SH, [("federation", good), ("federation", late)]))
    assert isinstance(out[0], bytes)
    verify_receipt(out[0], good, fed.trusted(), expected_receiver=SH, at=utcnow())
    assert isinstance(out[1], RemoteError)
    assert (out[1].code, out[1].reason) == (C.FAILED_PRECONDITION, "CLOCK_SKEW")


def _outbox_states(node: Node) -> dict[str, int]:
    with node.engine.connect() as conn:
        q = select(OUTBOX.c.state, func.count()).group_by(OUTBOX.c.state)
        return {str(s): int(n) for s, n in conn.execute(q)}


def test_worker_sends_many_messages_in_fewer_calls(cluster: Cluster) -> None:
    sender = cluster[JS]
    calls0, delivered0 = sender.worker.calls, sender.worker.delivered

    async def burst() -> None:
        await asyncio.gather(
            *(
                sender.enqueue(SH, "federation", federation_pb2.Ping(note=f"b{i}"))
                for i in range(60)
            )
        )
        deadline = time.monotonic() + 30
        while sender.worker.delivered < delivered0 + 60:
            assert time.monotonic() < deadline, "burst not delivered"
            await asyncio.sleep(0.05)

    cluster.run(burst())
    assert sender.worker.delivered == delivered0 + 60
    assert sender.worker.calls - calls0 < 60  # several messages shared calls
    assert _outbox_states(sender).get("delivered", 0) >= 60


def test_queued_messages_get_time_ordered_ids(cluster: Cluster) -> None:
    """Message ids are version 7 UUIDs stamped with the node clock's millisecond (federation/
    ids.py), so a later message's id sorts after an earlier one's, as text and in the index."""
    sender = cluster[JS]

    async def queue() -> list[str]:
        mids = []
        for i in range(5):
            mid, _row = await sender.enqueue(SH, "federation", federation_pb2.Ping(note=f"t{i}"))
            mids.append(mid)
            await asyncio.sleep(0.003)  # the next one in a later millisecond
        return mids

    mids = cluster.run(queue())
    assert mids == sorted(mids) and len(set(mids)) == 5
    with sender.engine.connect() as conn:
        q = select(OUTBOX.c.message_id, OUTBOX.c.envelope).where(OUTBOX.c.message_id.in_(mids))
        envelopes = {r.message_id: bytes(r.envelope) for r in conn.execute(q)}
    for mid in mids:
        u = uuid.UUID(mid)
        assert u.version == 7
        created = header_of(envelopes[mid]).created_at
        assert u.int >> 80 == created.seconds * 1000 + created.nanos // 1_000_000


def test_worker_falls_back_to_one_call_per_message_for_a_peer_without_batch(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """A receiver that only serves the unary Ping (an older node): messages still arrive."""
    fed = new_federation((SH, JS))

    async def scenario() -> tuple[int, bool, dict[str, int]]:
        old = Node(fed.config(SH))  # its store, keys and trust; a server without DeliverBatch
        server = grpc.aio.server(
            interceptors=[PeerIdentityInterceptor(old)],
            options=channel_options(old.cfg.limits.max_message_bytes),
        )
        server.add_generic_rpc_handlers(
            [
                grpc.method_handlers_generic_handler(
                    FED_SERVICE,
                    {
                        "Ping": grpc.unary_unary_rpc_method_handler(
                            EnvelopeIntake(old, "federation"),
                            request_deserializer=lambda b: b,
                            response_serializer=lambda b: b,
                        )
                    },
                )
            ]
        )
        ident = old.tls.current
        port = server.add_secure_port(
            "127.0.0.1:0",
            grpc.ssl_server_credentials(
                [(ident.key_pem, ident.cert_pem)],
                root_certificates=ident.ca_pem,
                require_client_auth=True,
            ),
        )
        await server.start()
        cfg = dataclasses.replace(fed.config(JS), peer_endpoints={SH: f"127.0.0.1:{port}"})
        sender = Node(cfg)
        await sender.start()
        try:
            await asyncio.gather(
                *(
                    sender.enqueue(SH, "federation", federation_pb2.Ping(note=f"o{i}"))
                    for i in range(10)
                )
            )
            deadline = time.monotonic() + 30
            while sender.worker.delivered < 10:
                assert time.monotonic() < deadline, "not delivered through the fallback"
                await asyncio.sleep(0.05)
            inbox = rows(old.engine)[0]
            return inbox, sender.worker.lanes[SH].batch, _outbox_states(sender)
        finally:
            await sender.stop(grace=0)
            await server.stop(0)
            old.close()

    inbox, batching, states = runner.run(scenario())
    assert inbox == 10
    assert batching is False
    assert states == {"delivered": 10}


def test_batch_off_sends_one_call_per_message(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    """``[delivery] batch = false``: the same messages, one Ping call each."""
    fed = new_federation((SH, JS))

    async def scenario() -> tuple[int, int, dict[str, int]]:
        receiver = Node(fed.config(SH))
        await receiver.start()
        base = fed.config(JS)
        sender = Node(
            dataclasses.replace(base, delivery=dataclasses.replace(base.delivery, batch=False))
        )
        await sender.start()
        try:
            await asyncio.gather(
                *(
                    sender.enqueue(SH, "federation", federation_pb2.Ping(note=f"u{i}"))
                    for i in range(12)
                )
            )
            deadline = time.monotonic() + 30
            while sender.worker.delivered < 12:
                assert time.monotonic() < deadline, "not delivered one by one"
                await asyncio.sleep(0.05)
            return sender.worker.calls, rows(receiver.engine)[0], _outbox_states(sender)
        finally:
            await sender.stop(grace=0)
            await receiver.stop(grace=0)

    calls, inbox, states = runner.run(scenario())
    assert calls == 12 and inbox == 12 and states == {"delivered": 12}
