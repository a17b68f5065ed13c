"""Envelope intake through a real TLS server: every refusal, the idempotent inbox, ping, health.

Every refusal is checked for its exact gRPC status, its machine-readable reason and for leaving
the receiver's inbox and message log untouched (``Cluster.refused``).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import grpc
import pytest
from sqlalchemy import select

from cccfed.v1 import envelope_pb2, federation_pb2
from federation.crypto import CTX_ENVELOPE, sha256
from federation.envelope import PROTOCOL_VERSION, header_of, seal, verify_receipt
from federation.errors import ValidationError
from node import pki
from node.logbundle import verify_store
from node.status import RemoteError, is_transient
from node.store.ops import INBOX
from tests.grpc.conftest import (
    AH,
    ASSISTANCE,
    JS,
    SH,
    ZJ,
    Cluster,
    Federation,
    LoopRunner,
    health_check,
    ping_envelope,
    raw_call,
    rows,
    utcnow,
)

C = grpc.StatusCode


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS, ZJ, AH))


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner) -> Iterator[Cluster]:
    """310000 and 320000 serving for the whole module; 330000 is started by one test, 340000
    never (the peer that is down)."""
    with Cluster(fed, runner, [SH, JS]) as c:
        yield c


def _envelope(data: bytes) -> envelope_pb2.Envelope:
    env = envelope_pb2.Envelope()
    env.ParseFromString(data)
    return env


# --- size -------------------------------------------------------------------------------------


def sized_ping(fed: Federation, size: int) -> bytes:
    """A valid 320000 → 310000 Ping envelope of exactly ``size`` bytes (note padding)."""
    signer, mid, now = fed.signer(JS), str(uuid.uuid4()), utcnow()
    pad = size - len(ping_envelope(signer, JS, SH, note="", message_id=mid, now=now))
    for _ in range(100):  # ECDSA signatures vary by a byte or two; converge on the exact size
        env = ping_envelope(signer, JS, SH, note="x" * pad, message_id=mid, now=now)
        if len(env) == size:
            return env
        pad += size - len(env)
    raise AssertionError(f"could not build an envelope of exactly {size} bytes")


def test_envelope_of_exactly_the_limit_is_accepted(cluster: Cluster, fed: Federation) -> None:
    limit = cluster[SH].cfg.limits.max_message_bytes
    before = rows(cluster[SH].engine)
    out = cluster.call(SH, sized_ping(fed, limit))
    assert out.code is C.OK, out.details
    assert rows(cluster[SH].engine) == (before[0] + 1, before[1] + 2)


def test_envelope_just_over_the_limit_is_oversize(cluster: Cluster, fed: Federation) -> None:
    limit = cluster[SH].cfg.limits.max_message_bytes
    env = sized_ping(fed, limit + 1)
    cluster.refused(SH, env, C.RESOURCE_EXHAUSTED, "OVERSIZE")


def test_envelope_far_over_the_grpc_limit_is_refused_by_the_transport(
    cluster: Cluster, fed: Federation
) -> None:
    """Beyond the server's gRPC receive limit the core refuses it: no reason, nothing stored."""
    limit = cluster[SH].cfg.limits.max_message_bytes
    env = ping_envelope(fed.signer(JS), JS, SH, note="x" * (limit + 1024 * 1024))
    out = cluster.refused(SH, env, C.RESOURCE_EXHAUSTED, "")
    assert "larger than max" in out.details


# --- every other refusal ----------------------------------------------------------------------


def test_bad_signature(cluster: Cluster, fed: Federation) -> None:
    """A well-formed signature, by the right key, over other bytes."""
    env = _envelope(ping_envelope(fed.signer(JS), JS, SH))
    env.signature = fed.signer(JS).sign(CTX_ENVELOPE, env.header + b"!")
    cluster.refused(SH, env.SerializeToString(), C.INVALID_ARGUMENT, "BAD_SIGNATURE")


def test_garbage_signature(cluster: Cluster, fed: Federation) -> None:
    env = _envelope(ping_envelope(fed.signer(JS), JS, SH))
    env.signature = b"\x30\x03\x02\x01\x00"
    cluster.refused(SH, env.SerializeToString(), C.INVALID_ARGUMENT, "BAD_SIGNATURE")


def test_payload_hash_mismatch(cluster: Cluster, fed: Federation) -> None:
    env = _envelope(ping_envelope(fed.signer(JS), JS, SH, note="original"))
    env.payload = federation_pb2.Ping(note="tampered").SerializeToString()
    cluster.refused(SH, env.SerializeToString(), C.INVALID_ARGUMENT, "PAYLOAD_HASH_MISMATCH")


def test_wrong_recipient_node(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, ZJ)
    cluster.refused(SH, env, C.FAILED_PRECONDITION, "WRONG_RECIPIENT")


def test_wrong_recipient_bureau(cluster: Cluster, fed: Federation) -> None:
    """Addressed to node 310000 but to Nanjing's bureau, which 320000 serves."""
    env = ping_envelope(fed.signer(JS), JS, SH, recipient_bureau="320100")
    cluster.refused(SH, env, C.FAILED_PRECONDITION, "WRONG_RECIPIENT")


def test_clock_skew_in_the_future(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH, now=utcnow() + timedelta(hours=1))
    cluster.refused(SH, env, C.FAILED_PRECONDITION, "CLOCK_SKEW")


def test_too_old(cluster: Cluster, fed: Federation) -> None:
    max_age = cluster[SH].cfg.limits.max_message_age_seconds
    env = ping_envelope(fed.signer(JS), JS, SH, now=utcnow() - timedelta(seconds=max_age + 60))
    cluster.refused(SH, env, C.FAILED_PRECONDITION, "CLOCK_SKEW")


def test_small_lead_within_the_skew_is_accepted(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH, now=utcnow() + timedelta(seconds=60))
    assert cluster.call(SH, env).code is C.OK


def test_unsupported_kind_on_assistance_service(cluster: Cluster, fed: Federation) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH)
    cluster.refused(SH, env, C.UNIMPLEMENTED, "UNSUPPORTED_KIND", method=ASSISTANCE)


@pytest.mark.parametrize(
    "data",
    [b"\xff\xff\xff\xff", envelope_pb2.Envelope(header=b"\xff\xff").SerializeToString()],
    ids=["envelope", "header"],
)
def test_malformed_bytes(cluster: Cluster, data: bytes) -> None:
    cluster.refused(SH, data, C.INVALID_ARGUMENT, "MALFORMED")


@pytest.mark.parametrize("message_id", ["not-a-uuid", str(uuid.uuid4()).upper()])
def test_non_canonical_message_id_is_malformed(
    cluster: Cluster, fed: Federation, message_id: str
) -> None:
    env = ping_envelope(fed.signer(JS), JS, SH, message_id=message_id)
    cluster.refused(SH, env, C.INVALID_ARGUMENT, "MALFORMED")


def test_unsupported_version(cluster: Cluster, fed: Federation) -> None:
    """Properly signed, but protocol version 2."""
    signer = fed.signer(JS)
    payload = federation_pb2.Ping(note="v2").SerializeToString()
    header = envelope_pb2.Header(
        version=PROTOCOL_VERSION + 1,
        message_id=str(uuid.uuid4()),
        kind="cccfed.v1.Ping",
        sender_node=JS,
        sender_bureau=JS,
        recipient_node=SH,
        recipient_bureau=SH,
        signing_key_id=signer.key_id,
        payload_sha256=sha256(payload),
    )
    header.created_at.FromDatetime(utcnow())
    hb = header.SerializeToString(deterministic=True)
    env = envelope_pb2.Envelope(header=hb, payload=payload, signature=signer.sign(CTX_ENVELOPE, hb))
    cluster.refused(SH, env.SerializeToString(), C.UNIMPLEMENTED, "UNSUPPORTED_VERSION")


def test_unknown_signing_key(cluster: Cluster, fed: Federation) -> None:
    """A key certified by the federation CA but not listed in the manifest."""
    env = ping_envelope(fed.unlisted_signer(JS), JS, SH)
    cluster.refused(SH, env, C.PERMISSION_DENIED, "UNKNOWN_KEY")


def test_revoked_signing_key(new_federation: Callable[..., Federation], runner: LoopRunner) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner, [SH]) as c:
        node = c[SH]
        assert c.call(SH, ping_envelope(fed.signer(JS), JS, SH)).code is C.OK
        serial = format(fed.sign_cert(JS).serial_number, "x")
        new_serial = pki.revoke(fed.root, serial, reason="key compromise")
        assert node.trust.refresh_from_file(node.clock()) is not None
        assert node.trust.current.serial == new_serial
        env = ping_envelope(fed.signer(JS), JS, SH)
        c.refused(SH, env, C.PERMISSION_DENIED, "REVOKED_KEY")


# --- idempotent inbox -------------------------------------------------------------------------


def test_redelivery_returns_the_same_receipt_and_stores_once(
    cluster: Cluster, fed: Federation
) -> None:
    node = cluster[SH]
    env = ping_envelope(fed.signer(JS), JS, SH)
    mid = header_of(env).message_id
    inbox0, log0 = rows(node.engine)

    first = cluster.call(SH, env)
    second = cluster.call(SH, env)

    assert first.code is C.OK and second.code is C.OK
    assert first.response is not None and first.response == second.response
    assert rows(node.engine) == (inbox0 + 1, log0 + 2)  # envelope received + receipt sent
    vr = verify_receipt(first.response, env, fed.trusted(), expected_receiver=SH, at=utcnow())
    assert vr.body.message_id == mid and vr.body.sender_node == JS
    with node.engine.connect() as conn:
        row = conn.execute(
            select(INBOX.c.received_at, INBOX.c.receipt).where(INBOX.c.message_id == mid)
        ).one()
    assert vr.received_at == row.received_at
    assert bytes(row.receipt) == first.response


def test_same_message_id_with_other_bytes_is_duplicate_conflict(
    cluster: Cluster, fed: Federation
) -> None:
    mid = str(uuid.uuid4())
    first = ping_envelope(fed.signer(JS), JS, SH, message_id=mid, note="first")
    assert cluster.call(SH, first).code is C.OK
    other = ping_envelope(fed.signer(JS), JS, SH, message_id=mid, note="second")
    cluster.refused(SH, other, C.ALREADY_EXISTS, "DUPLICATE_CONFLICT")


# --- a real round trip ------------------------------------------------------------------------


def test_ping_between_nodes_is_signed_by_the_peer_and_both_logs_verify(
    cluster: Cluster,
) -> None:
    a, b = cluster[SH], cluster[JS]
    b_inbox0, b_log0 = rows(b.engine)
    a_log0 = rows(a.engine)[1]

    mid, res = cluster.run(a.ping(JS))

    body = res.receipt.body
    assert (body.receiver_node, body.sender_node, body.message_id) == (JS, SH, mid)
    assert body.signing_key_id == b.signer.key_id != a.signer.key_id
    assert rows(b.engine) == (b_inbox0 + 1, b_log0 + 2)
    assert rows(a.engine)[1] == a_log0 + 2  # envelope sent + receipt received
    for node in (a, b):
        result = verify_store(node.engine, node.ca, node.code)
        assert result.records == rows(node.engine)[1]
        assert result.envelopes >= 1 and result.receipts >= 1


# --- health -----------------------------------------------------------------------------------


def test_health_serving_then_unreachable_after_stop(cluster: Cluster, fed: Federation) -> None:
    cluster.start(ZJ)
    try:
        endpoint, ca = fed.endpoint(ZJ), fed.ca_pem
        assert cluster.run(health_check(endpoint, ca, fed.tls(JS))) == (C.OK, "SERVING")
        assert cluster.run(
            health_check(endpoint, ca, fed.tls(JS), service="cccfed.v1.FederationService")
        ) == (C.OK, "SERVING")
    finally:
        cluster.stop(ZJ)
    code, _ = cluster.run(health_check(endpoint, ca, fed.tls(JS)))
    assert code is C.UNAVAILABLE
    env = ping_envelope(fed.signer(JS), JS, ZJ)
    out = cluster.run(raw_call(endpoint, ca, fed.tls(JS), env, deadline=5))
    assert out.code is C.UNAVAILABLE


# --- the client edge: what is retried ---------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "transient"),
    [
        (C.UNAVAILABLE, "UNAVAILABLE", True),
        (C.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", True),
        (C.UNAVAILABLE, "STORE", True),
        # a peer may not have adopted the manifest listing a renewed certificate or key yet
        (C.PERMISSION_DENIED, "UNKNOWN_KEY", True),
        (C.INVALID_ARGUMENT, "BAD_SIGNATURE", False),
        (C.RESOURCE_EXHAUSTED, "OVERSIZE", False),
        (C.ALREADY_EXISTS, "DUPLICATE_CONFLICT", False),
        (C.UNAUTHENTICATED, "UNKNOWN_PEER", True),
        (C.PERMISSION_DENIED, "REVOKED_KEY", False),
        (C.FAILED_PRECONDITION, "WRONG_RECIPIENT", False),
    ],
)
def test_is_transient(code: grpc.StatusCode, reason: str, transient: bool) -> None:
    assert is_transient(RemoteError(JS, code, reason, "x")) is transient


def test_is_transient_only_for_remote_errors() -> None:
    from federation.errors import VerificationError

    assert not is_transient(VerificationError("x", reason="UNAVAILABLE"))
    assert not is_transient(TimeoutError())


def test_call_with_retry_retries_a_peer_that_is_down(cluster: Cluster, fed: Federation) -> None:
    node = cluster[SH]
    env = node.seal(AH, federation_pb2.Ping(note="anyone there?"))
    attempts = 0

    async def attempt() -> object:
        nonlocal attempts
        attempts += 1
        return await node.peers.ping(AH, env)

    with pytest.raises(RemoteError) as ei:
        cluster.run(node.peers.call_with_retry(attempt, attempts=3, initial=0.01, cap=0.05))
    assert attempts == 3
    assert ei.value.code is C.UNAVAILABLE and is_transient(ei.value)


def test_call_with_retry_does_not_retry_a_permanent_refusal(
    cluster: Cluster, fed: Federation
) -> None:
    node, peer = cluster[SH], cluster[JS]
    # sealed for Zhejiang, sent to Jiangsu: refused for good (WRONG_RECIPIENT)
    env = ping_envelope(fed.signer(SH), SH, ZJ)
    before = rows(peer.engine)
    attempts = 0

    async def attempt() -> object:
        nonlocal attempts
        attempts += 1
        return await node.peers.ping(JS, env)

    with pytest.raises(RemoteError) as ei:
        cluster.run(node.peers.call_with_retry(attempt, attempts=3, initial=0.01, cap=0.05))
    assert attempts == 1
    assert (ei.value.code, ei.value.reason) == (C.FAILED_PRECONDITION, "WRONG_RECIPIENT")
    assert rows(peer.engine) == before


def test_envelope_over_the_transport_limit_is_not_retried(
    cluster: Cluster, fed: Federation
) -> None:
    node = cluster[SH]
    limit = node.cfg.limits.max_message_bytes
    big = federation_pb2.Ping(note="x" * (limit + 1024 * 1024))
    # The node refuses to seal it at all ...
    with pytest.raises(ValidationError) as refused:
        node.seal(JS, big)
    assert refused.value.reason == "OVERSIZE"
    # ... and one sealed by hand is refused by the transport once, never retried.
    env = seal(node.signer, sender_node=SH, recipient_node=JS, payload=big, now=node.clock())
    attempts = 0

    async def attempt() -> object:
        nonlocal attempts
        attempts += 1
        return await node.peers.ping(JS, env)

    with pytest.raises(RemoteError) as ei:
        cluster.run(node.peers.call_with_retry(attempt, attempts=3, initial=0.01, cap=0.05))
    assert ei.value.code is C.RESOURCE_EXHAUSTED
    assert attempts == 1
