"""Hostile peers on the wire: real envelopes, real keys, real mutual TLS, real SQLite stores.

Each test is one row (or more) of ``docs/SECURITY.md`` that the tests of ``tests/grpc`` and
``tests/unit`` do not already cover. A refusal is checked for its gRPC status and its
machine-readable reason, and for leaving every table of the receiver's store and its
message-log head as they were (:func:`tests.security.conftest.snapshot`).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import uuid
from collections.abc import Callable, Iterator

import grpc
import pytest
from sqlalchemy import select

from cccfed.v1 import assistance_pb2, federation_pb2, recognition_pb2
from federation.checkpoint import make_checkpoint
from federation.envelope import header_of, seal
from federation.errors import ValidationError
from federation.merkle import MemoryTree, leaf_hash
from node.assistance import BULLETINS, REQUESTS
from node.runtime import Node
from tests.assistance_harness import example_data
from tests.grpc.conftest import (
    AH,
    ASSISTANCE,
    JS,
    SH,
    ZJ,
    Cluster,
    Federation,
    LoopRunner,
    Outcome,
    health_check,
    ping_envelope,
    raw_call,
    utcnow,
)
from tests.security.conftest import snapshot

C = grpc.StatusCode
RECOGNITION = "/cccfed.v1.RecognitionService/Deliver"
RECONCILE = "/cccfed.v1.RecognitionService/Reconcile"
EXCHANGE = "/cccfed.v1.ExpertExchangeService/Deliver"


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS, ZJ, AH))


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner) -> Iterator[Cluster]:
    """310000, 320000 and 330000 serving; 340000 is a member that is never started."""
    with Cluster(fed, runner, [SH, JS, ZJ]) as c:
        yield c


def refused_unchanged(
    cluster: Cluster,
    receiver: str,
    data: bytes,
    code: grpc.StatusCode,
    reason: str,
    *,
    client: str = JS,
    method: str = ASSISTANCE,
) -> Outcome:
    """The call fails with exactly (code, reason), and no table of the receiver changes."""
    engine = cluster[receiver].engine
    before = snapshot(engine)
    out = cluster.call(receiver, data, client=client, method=method)
    assert (out.code, out.reason) == (code, reason), out.details
    after = snapshot(engine)
    assert before.changed_tables(after) == [], "a refused call changed the store"
    assert before.head == after.head, "a refused call moved the message-log head"
    return out


def signed_as(fed: Federation, sender: str, recipient: str, payload: bytes, kind: str) -> bytes:
    """An envelope with a raw payload of any kind, sealed with ``sender``'s real signing key."""
    return seal(
        fed.signer(sender),
        sender_node=sender,
        recipient_node=recipient,
        payload=payload,
        kind=kind,
        now=utcnow(),
    )


async def _until(check: Callable[[], bool], attempts: int = 400) -> None:
    """Poll ``check`` every 50 ms, for 20 s at most."""
    for _ in range(attempts):
        if check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


# --- replay ----------------------------------------------------------------------------------


def test_envelope_replayed_by_its_recipient_to_a_third_node_is_sender_mismatch(
    cluster: Cluster, fed: Federation
) -> None:
    """320000's envelope, accepted by 310000, which then replays it to 330000 as itself."""
    env = ping_envelope(fed.signer(JS), JS, SH)
    assert cluster.call(SH, env, client=JS).code is C.OK
    refused_unchanged(
        cluster, ZJ, env, C.PERMISSION_DENIED, "SENDER_MISMATCH", client=SH, method=ASSISTANCE
    )


# --- unknown kinds and payloads that do not parse ---------------------------------------------


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        (ASSISTANCE, "cccfed.v1.Evil"),
        (ASSISTANCE, "cccfed.v2.Request"),
        (ASSISTANCE, ""),
        (ASSISTANCE, "cccfed.v1.CheckpointNote"),
        (RECOGNITION, "cccfed.v1.Request"),
        (EXCHANGE, "cccfed.v1.Bulletin"),
    ],
    ids=["made-up", "other-version", "empty", "recognition-kind", "assistance-kind", "bulletin"],
)
def test_kind_not_carried_by_the_service_is_unsupported_kind(
    cluster: Cluster, fed: Federation, method: str, kind: str
) -> None:
    env = signed_as(fed, JS, SH, b"\x0a\x01x", kind)
    refused_unchanged(cluster, SH, env, C.UNIMPLEMENTED, "UNSUPPORTED_KIND", method=method)


@pytest.mark.parametrize(
    ("method", "kind"),
    [
        (ASSISTANCE, "cccfed.v1.Request"),
        (ASSISTANCE, "cccfed.v1.RequestAccepted"),
        (ASSISTANCE, "cccfed.v1.Bulletin"),
        (EXCHANGE, "cccfed.v1.ExchangeRequest"),
        (RECOGNITION, "cccfed.v1.CheckpointNote"),
        (RECOGNITION, "cccfed.v1.EquivocationEvidence"),
    ],
    ids=["request", "accepted", "bulletin", "exchange-request", "checkpoint-note", "evidence"],
)
def test_payload_that_does_not_parse_as_its_kind_is_malformed(
    cluster: Cluster, fed: Federation, method: str, kind: str
) -> None:
    """Signed, hashed and addressed correctly; only the payload bytes are not the message."""
    env = signed_as(fed, JS, SH, b"\xff\xff\xff\xff", kind)
    refused_unchanged(cluster, SH, env, C.INVALID_ARGUMENT, "MALFORMED", method=method)


@pytest.mark.parametrize("depth", [200, 100_000])
def test_deeply_nested_payload_is_malformed(cluster: Cluster, fed: Federation, depth: int) -> None:
    """Unknown group fields nested ``depth`` deep (wire type 3): the parser's depth limit."""
    start, end = b"\xbb\x3e", b"\xbc\x3e"  # field 999, start group / end group
    payload = start * depth + end * depth
    env = signed_as(fed, JS, SH, payload, "cccfed.v1.Request")
    refused_unchanged(cluster, SH, env, C.INVALID_ARGUMENT, "MALFORMED")


# --- injection through text fields -------------------------------------------------------------

SQL_TEXT = "x'); DROP TABLE inbox; DELETE FROM message_log; -- \" OR 1=1 %_ \\"


def test_sql_metacharacters_in_text_fields_are_stored_verbatim(
    cluster: Cluster, fed: Federation
) -> None:
    """A bulletin whose title and body are SQL: accepted as text, every table intact."""
    node = cluster[SH]
    before = snapshot(node.engine)
    bulletin_id = str(uuid.uuid4())
    bulletin = assistance_pb2.Bulletin(
        bulletin_id=bulletin_id, title=SQL_TEXT, body=SQL_TEXT + "\n" + SQL_TEXT
    )
    env = seal(
        fed.signer(JS),
        sender_node=JS,
        recipient_node=SH,
        payload=bulletin,
        now=utcnow(),
        correlation_id=bulletin_id,
    )
    out = cluster.call(SH, env, client=JS, method=ASSISTANCE)
    assert out.code is C.OK, out.details
    after = snapshot(node.engine)
    assert set(after.counts) == set(before.counts)  # no table dropped
    assert after.counts["inbox"] == before.counts["inbox"] + 1
    assert after.counts["message_log"] == before.counts["message_log"] + 2
    assert after.counts["bulletins"] == before.counts["bulletins"] + 1
    with node.engine.connect() as conn:
        row = conn.execute(
            select(BULLETINS.c.title, BULLETINS.c.bulletin).where(
                BULLETINS.c.bulletin_id == bulletin_id
            )
        ).one()
    assert row.title == SQL_TEXT
    assert assistance_pb2.Bulletin.FromString(bytes(row.bulletin)).body == bulletin.body


# --- wrong party ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def delivered_request(cluster: Cluster) -> str:
    """A request from 310000 to Suzhou (320000), sent by 310000's worker and held by 320000."""
    sh: Node = cluster[SH]
    js: Node = cluster[JS]
    request = sh.assistance.parse_new(example_data())
    rid: str = cluster.run(sh.run_and_send(lambda conn: sh.assistance.create(conn, request)))

    def held() -> bool:
        with js.engine.connect() as conn:
            q = select(REQUESTS.c.request_id).where(REQUESTS.c.request_id == rid)
            return conn.execute(q).first() is not None

    cluster.run(_until(held))
    return rid


def test_event_from_a_node_that_is_not_a_party_is_wrong_party(
    cluster: Cluster, fed: Federation, delivered_request: str
) -> None:
    """330000 withdraws 310000's request at 320000 (properly signed as 330000)."""
    rid = delivered_request
    event = assistance_pb2.RequestWithdrawn(request_id=rid, reason="not mine", index=1, seen=0)
    env = seal(
        fed.signer(ZJ),
        sender_node=ZJ,
        recipient_node=JS,
        recipient_bureau="320500",
        payload=event,
        now=utcnow(),
        correlation_id=rid,
    )
    refused_unchanged(cluster, JS, env, C.FAILED_PRECONDITION, "WRONG_PARTY", client=ZJ)


def test_event_for_an_unknown_request_is_unknown_request(cluster: Cluster, fed: Federation) -> None:
    rid = str(uuid.uuid4())
    event = assistance_pb2.RequestWithdrawn(request_id=rid, reason="?", index=1, seen=0)
    env = seal(fed.signer(ZJ), sender_node=ZJ, recipient_node=JS, payload=event, now=utcnow())
    refused_unchanged(cluster, JS, env, C.FAILED_PRECONDITION, "UNKNOWN_REQUEST", client=ZJ)


# --- hostile inspection-result entries ---------------------------------------------------------


def _note_with_entry(fed: Federation, origin: str, recipient: str, entry: bytes) -> bytes:
    """A CheckpointNote of a one-entry log, signed by ``origin``'s real key (a hostile origin)."""
    tree = MemoryTree()
    tree.append(leaf_hash(entry))
    signed = make_checkpoint(fed.signer(origin), origin, 1, tree.root(), now=utcnow())
    note = recognition_pb2.CheckpointNote(
        signed_checkpoint=signed, old_size=0, entries=[entry], consistency_proof=[]
    )
    return seal(
        fed.signer(origin),
        sender_node=origin,
        recipient_node=recipient,
        payload=note,
        now=utcnow(),
        correlation_id=f"log/{origin}",
    )


@pytest.mark.parametrize(
    "entry",
    [
        b"[" * 100_000,
        b'{"format":"cccfed.inspection-result/1","x":' + b"[" * 100_000,
        b"\xff\xfe not UTF-8",
        b'{"format":"cccfed.inspection-result/1"}',
    ],
    ids=["nested-array", "nested-in-record", "not-utf8", "empty-record"],
)
def test_witness_refuses_a_signed_entry_that_is_not_a_record(
    cluster: Cluster, fed: Federation, entry: bytes
) -> None:
    """A member signs a checkpoint over garbage it appended itself: ENTRY_MALFORMED, not a crash."""
    env = _note_with_entry(fed, SH, JS, entry)
    refused_unchanged(
        cluster, JS, env, C.FAILED_PRECONDITION, "ENTRY_MALFORMED", client=SH, method=RECOGNITION
    )


# --- Reconcile: an unsigned request ------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_bytes", "code", "reason"),
    [
        (b"\xff\xff\xff", C.INVALID_ARGUMENT, "MALFORMED"),
        (
            recognition_pb2.ReconcileRequest(
                frontiers=[recognition_pb2.LogFrontier(origin=SH, size=2**63, root=b"\0" * 32)]
            ).SerializeToString(),
            C.FAILED_PRECONDITION,
            "FRONTIER_MALFORMED",
        ),
        (
            recognition_pb2.ReconcileRequest(
                frontiers=[recognition_pb2.LogFrontier(origin=SH, size=1, root=b"\0" * 31)]
            ).SerializeToString(),
            C.FAILED_PRECONDITION,
            "FRONTIER_MALFORMED",
        ),
    ],
    ids=["garbage", "size-over-max", "short-root"],
)
def test_malformed_reconcile_request_is_refused(
    cluster: Cluster, request_bytes: bytes, code: grpc.StatusCode, reason: str
) -> None:
    refused_unchanged(cluster, SH, request_bytes, code, reason, method=RECONCILE)


def test_reconcile_claiming_huge_frontiers_gets_a_small_answer_and_changes_nothing(
    cluster: Cluster,
) -> None:
    """A caller that claims to be 2^62 entries ahead on every log is sent checkpoints only."""
    frontiers = [
        recognition_pb2.LogFrontier(origin=code, size=2**62, root=bytes([n]) * 32)
        for n, code in enumerate(sorted((SH, JS, ZJ, AH, "999999")), start=1)
    ]
    request = recognition_pb2.ReconcileRequest(frontiers=frontiers).SerializeToString()
    engine = cluster[SH].engine
    before = snapshot(engine)
    out = cluster.call(SH, request, client=JS, method=RECONCILE)
    assert out.code is C.OK and out.response is not None, out.details
    answer = recognition_pb2.ReconcileResponse.FromString(out.response)
    assert all(not note.entries for note in answer.updates)
    assert len(out.response) < 64 * 1024
    assert snapshot(engine) == before


# --- transport downgrade and floods ------------------------------------------------------------


def _tls_handshake(endpoint: str, fed: Federation, version: ssl.TLSVersion) -> str | None:
    """Handshake with a member's own client certificate, offering only ``version``.

    Returns None if it succeeds, otherwise the OpenSSL reason of the failure.
    """
    host, _, port = endpoint.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=str(fed.ca_path))
    d = fed.node_dir(JS)
    ctx.load_cert_chain(str(d / "tls.crt"), str(d / "tls.key"))
    ctx.set_alpn_protocols(["h2"])
    ctx.set_ciphers("ALL:@SECLEVEL=0")  # let this client offer old versions at all
    ctx.minimum_version = version
    ctx.maximum_version = version
    try:
        with (
            socket.create_connection((host, int(port)), timeout=5) as sock,
            ctx.wrap_socket(sock, server_hostname=host),
        ):
            return None
    except ssl.SSLError as e:
        return str(e.reason)


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_tls_older_than_1_2_is_refused_by_the_server(cluster: Cluster, fed: Federation) -> None:
    endpoint = fed.endpoint(SH)
    assert _tls_handshake(endpoint, fed, ssl.TLSVersion.TLSv1_2) is None  # the control
    for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
        reason = _tls_handshake(endpoint, fed, version)
        assert reason is not None
        # The client did offer the old version (it did not refuse locally); the server ended
        # the handshake, with an alert or by closing the connection.
        assert reason != "NO_PROTOCOLS_AVAILABLE", reason
        assert "ALERT" in reason or reason == "UNEXPECTED_EOF_WHILE_READING", reason


def test_plaintext_call_is_refused(cluster: Cluster, fed: Federation) -> None:
    engine = cluster[SH].engine
    before = snapshot(engine)

    async def call() -> grpc.StatusCode:
        async with grpc.aio.insecure_channel(fed.endpoint(SH)) as ch:
            fn = ch.unary_unary(
                ASSISTANCE, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                await fn(ping_envelope(fed.signer(JS), JS, SH), timeout=5)
            except grpc.aio.AioRpcError as e:
                return e.code()
        return C.OK

    assert cluster.run(call()) is C.UNAVAILABLE
    assert snapshot(engine) == before


def test_flood_of_malformed_calls_is_refused_and_the_node_keeps_serving(
    cluster: Cluster, fed: Federation
) -> None:
    """200 concurrent calls of garbage: each refused with its reason, nothing stored."""
    node = cluster[SH]
    before = snapshot(node.engine)
    endpoint, ca, ident = fed.endpoint(SH), fed.ca_pem, fed.tls(JS)

    async def flood() -> list[Outcome]:
        calls = [
            raw_call(endpoint, ca, ident, bytes([0xFF, n % 256, 0xFF]), method=ASSISTANCE)
            for n in range(200)
        ]
        return list(await asyncio.gather(*calls))

    outcomes = cluster.run(flood(), timeout=120)
    assert {(o.code, o.reason) for o in outcomes} == {(C.INVALID_ARGUMENT, "MALFORMED")}
    assert snapshot(node.engine) == before
    assert cluster.run(health_check(endpoint, ca, ident)) == (C.OK, "SERVING")
    env = ping_envelope(fed.signer(JS), JS, SH)
    assert cluster.call(SH, env).code is C.OK
    assert header_of(env).kind == "cccfed.v1.Ping"


def test_ping_payload_that_is_not_a_ping_is_malformed(cluster: Cluster, fed: Federation) -> None:
    """A correctly signed Ping envelope whose payload does not parse as a Ping is refused."""
    env = signed_as(fed, JS, SH, b"\xff\xff not a Ping", "cccfed.v1.Ping")
    cluster.refused(SH, env, C.INVALID_ARGUMENT, "MALFORMED")


def test_node_does_not_seal_for_a_bureau_it_does_not_serve(cluster: Cluster) -> None:
    """The sending side refuses to claim another node's bureau as sender (PROTOCOL.md §4.3)."""
    with pytest.raises(ValidationError) as ei:
        cluster[JS].seal(SH, federation_pb2.Ping(note="x"), sender_bureau="310115")
    assert ei.value.reason == "SENDER_MISMATCH"
    env = cluster[JS].seal(SH, federation_pb2.Ping(note="x"), sender_bureau="320500")
    assert cluster.call(SH, env).code is C.OK
