"""Hypothesis fuzzing of everything a hostile party can hand a node as bytes.

The inputs are random bytes and *mutations of valid inputs* (bit flips, byte changes, deletions,
insertions, truncations and splices of a valid, really signed envelope, receipt, request file,
inspection-result file, expert registry, holiday schedule or log bundle), because random bytes
alone rarely get past the first parse. Whatever comes in, the outcome must be either acceptance
or a :class:`FederationError` with a reason code — never another exception, never a hang (every
example has a deadline and every call a gRPC deadline) — and a refusal on a path that could
write must leave every table of the store and its log head as they were.

Complements the property tests of ``tests/unit`` (random bytes and single-byte changes to
``open_envelope``, checkpoint notes, canonical inspection records).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cccfed.v1 import envelope_pb2, federation_pb2
from federation.crypto import Signer
from federation.envelope import Policy, make_receipt, open_envelope, seal, verify_receipt
from federation.errors import FederationError, VerificationError
from federation.experts import parse_registry_csv, parse_registry_json
from federation.holidays import parse_schedule
from federation.manifest import TrustedManifest
from node.cli_requests import _load_file
from node.logbundle import export_bundle, verify_bundle
from node.runtime import Node
from node.status import reason_from_metadata
from tests.assistance_harness import EXAMPLE_REQUEST, HOLIDAYS_2027, ROOT, write
from tests.grpc.conftest import (
    ASSISTANCE,
    CALL_TIMEOUT,
    JS,
    SH,
    Cluster,
    Federation,
    LoopRunner,
    channel_credentials,
    utcnow,
)
from tests.security.conftest import Snapshot, snapshot

EXAMPLE_RESULT = ROOT / "docs" / "examples" / "inspection-result.toml"
EXPERTS_CSV = ROOT / "docs" / "examples" / "experts.csv"
EXPERTS_JSON = ROOT / "tests" / "data" / "experts" / "registry.json"
RECOGNITION = "/cccfed.v1.RecognitionService/Deliver"
EXCHANGE = "/cccfed.v1.ExpertExchangeService/Deliver"

REASON = re.compile(r"[A-Z][A-Z0-9_]*[A-Z0-9]")
C = grpc.StatusCode

#: Pure functions: fast, many examples; a slow example is a hang in the making.
PURE = settings(max_examples=300, deadline=timedelta(seconds=2))
#: Paths through a store or a real server: fewer examples, a deadline per example all the same.
STORED = settings(
    max_examples=250,
    deadline=timedelta(seconds=5),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def assert_clear(e: FederationError) -> None:
    assert REASON.fullmatch(e.reason), f"{type(e).__name__} without a reason code: {e!r}"
    assert str(e), "a refusal needs a message for people"
    event(f"refused {e.reason}")  # --hypothesis-show-statistics shows how deep the inputs got


# --- mutations ---------------------------------------------------------------------------------

OPS = ("flip", "byte", "delete", "insert", "truncate", "splice", "duplicate")


@st.composite
def mutated(draw: st.DrawFn, base: bytes, donors: tuple[bytes, ...] = ()) -> bytes:
    """``base`` after one to four mutations; splices take slices of ``base`` or a donor."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4), label="mutations")):
        op = draw(st.sampled_from(OPS), label="op")
        n = len(data)
        at = draw(st.integers(0, n), label="at")
        if op == "flip" and n:
            data[min(at, n - 1)] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and n:
            data[min(at, n - 1)] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 64))]
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif op == "truncate":
            del data[at:]
        elif op in ("splice", "duplicate"):
            donor = bytes(data) if op == "duplicate" else draw(st.sampled_from((base, *donors)))
            start = draw(st.integers(0, len(donor)))
            end = draw(st.integers(start, min(len(donor), start + 256)))
            data[at:at] = donor[start:end]
    return bytes(data)


def hostile(base: bytes, donors: tuple[bytes, ...] = (), max_random: int = 600) -> Any:
    """Mostly mutations of ``base``, sometimes plain random bytes."""
    return st.one_of(
        mutated(base, donors),
        mutated(base, donors),
        mutated(base, donors),
        st.binary(max_size=max_random),
    )


# --- envelopes and receipts, pure ----------------------------------------------------------------

POLICY = Policy()


@pytest.fixture(scope="module")
def sealed(signer_for: Callable[..., Signer], now: datetime) -> tuple[bytes, bytes]:
    """Two valid, really signed envelopes from 310000 to 320000 (a base and a donor)."""
    sh = signer_for(SH)
    base = seal(
        sh,
        sender_node=SH,
        sender_bureau="310115",
        recipient_node=JS,
        recipient_bureau="320500",
        payload=federation_pb2.Ping(note="来自上海浦东的 ping"),
        now=now,
        correlation_id=str(uuid.uuid4()),
    )
    donor = seal(
        sh, sender_node=SH, recipient_node=JS, payload=federation_pb2.Ping(note="x"), now=now
    )
    return base, donor


def _parts(data: bytes) -> tuple[bytes, bytes, bytes]:
    env = envelope_pb2.Envelope.FromString(data)
    return env.header, env.payload, env.signature


@PURE
@given(data=st.data())
def test_fuzzed_envelopes_are_refused_with_a_reason_or_mean_the_same(
    data: st.DataObject,
    sealed: tuple[bytes, bytes],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    base, donor = sealed
    raw = data.draw(hostile(base, (donor,)), label="envelope")
    try:
        opened = open_envelope(
            raw, trusted_manifest, self_node=JS, peer_node=SH, now=now, policy=POLICY
        )
    except VerificationError as e:
        assert_clear(e)
        return
    # Accepted: then it can only be the signed content itself (e.g. an unknown outer field).
    assert (opened.envelope.header, opened.payload, opened.envelope.signature) in (
        _parts(base),
        _parts(donor),
    )


@pytest.fixture(scope="module")
def receipt(
    sealed: tuple[bytes, bytes],
    signer_for: Callable[..., Signer],
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> bytes:
    """320000's real receipt for the base envelope."""
    opened = open_envelope(
        sealed[0], trusted_manifest, self_node=JS, peer_node=SH, now=now, policy=POLICY
    )
    return make_receipt(signer_for(JS), opened, receiver_node=JS, received_at=now)


@PURE
@given(data=st.data())
def test_fuzzed_receipts_are_refused_with_a_reason_or_mean_the_same(
    data: st.DataObject,
    sealed: tuple[bytes, bytes],
    receipt: bytes,
    trusted_manifest: TrustedManifest,
    now: datetime,
) -> None:
    base, _ = sealed
    raw = data.draw(hostile(receipt), label="receipt")
    try:
        vr = verify_receipt(raw, base, trusted_manifest, expected_receiver=JS, at=now)
    except VerificationError as e:
        assert_clear(e)
        return
    original = envelope_pb2.Receipt.FromString(receipt)
    assert vr.body == envelope_pb2.ReceiptBody.FromString(original.body)


# --- files, pure -------------------------------------------------------------------------------


@PURE
@given(data=st.data())
def test_fuzzed_expert_registries_are_refused_with_a_reason(data: st.DataObject) -> None:
    which = data.draw(st.sampled_from(["csv", "json"]), label="format")
    base = (EXPERTS_CSV if which == "csv" else EXPERTS_JSON).read_bytes()
    raw = data.draw(hostile(base), label="registry")
    parse = parse_registry_csv if which == "csv" else parse_registry_json
    try:
        parse(raw, f"experts.{which}")
    except FederationError as e:
        assert_clear(e)


@PURE
@given(data=st.data())
def test_fuzzed_holiday_schedules_are_refused_with_a_reason(data: st.DataObject) -> None:
    raw = data.draw(hostile(HOLIDAYS_2027.read_bytes()), label="schedule")
    try:
        parse_schedule(raw, filename="holidays-2027.json")
    except FederationError as e:
        assert_clear(e)


# --- files through a real node store ---------------------------------------------------------


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS))


@pytest.fixture(scope="module")
def sh_node(fed: Federation, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """310000 on its own SQLite store (not serving: the files are what is fuzzed here)."""
    import dataclasses

    store = tmp_path_factory.mktemp("fuzz-store") / "sh.db"
    node = Node(dataclasses.replace(fed.config(SH), store_url=f"sqlite:///{store}"))
    yield node
    node.close()


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-files")


def _fuzz_file(
    node: Node, scratch: Path, name: str, raw: bytes, job: Callable[[dict[str, Any], Any], Any]
) -> None:
    """Write ``raw`` as file ``name``, load it as the CLI does and run ``job`` in one write
    transaction; a refusal must leave the store as it was."""
    path = scratch / name
    path.write_bytes(raw)
    before: Snapshot = snapshot(node.engine)
    try:
        data = _load_file(str(path))
        write(node, lambda conn: job(data, conn))
    except FederationError as e:
        assert_clear(e)
        after = snapshot(node.engine)
        assert before.changed_tables(after) == [] and before.head == after.head


@STORED
@given(data=st.data())
def test_fuzzed_request_files_are_refused_cleanly_and_change_nothing(
    data: st.DataObject, sh_node: Node, scratch: Path
) -> None:
    name = data.draw(st.sampled_from(["request.toml", "request.json"]), label="name")
    base = EXAMPLE_REQUEST.read_bytes()
    if name.endswith(".json"):
        import json
        import tomllib

        base = json.dumps(tomllib.loads(base.decode()), ensure_ascii=False).encode()
    raw = data.draw(hostile(base), label="file")
    node = sh_node

    def job(doc: dict[str, Any], conn: Any) -> Any:
        request = node.assistance.parse_new(doc)
        return node.assistance.create(conn, request, send=False)

    _fuzz_file(node, scratch, name, raw, job)


@STORED
@given(data=st.data())
def test_fuzzed_result_files_are_refused_cleanly_and_change_nothing(
    data: st.DataObject, sh_node: Node, scratch: Path
) -> None:
    raw = data.draw(hostile(EXAMPLE_RESULT.read_bytes()), label="file")
    node = sh_node

    def job(doc: dict[str, Any], conn: Any) -> Any:
        return node.recognition.publish(conn, node.recognition.parse_new(doc))

    _fuzz_file(node, scratch, "result.toml", raw, job)


# --- over real mutual TLS ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner) -> Iterator[Cluster]:
    with Cluster(fed, runner, [SH, JS]) as c:
        yield c


def quiesce(cluster: Cluster, timeout: float = 30.0) -> None:
    """Wait until no node has anything left to deliver, so that only the calls of a test can
    change a store while it compares snapshots."""
    from sqlalchemy import func, select

    from node.store.ops import OUTBOX, QUEUED, RETRY, SENDING

    def pending() -> int:
        total = 0
        for node in cluster.nodes.values():
            with node.engine.connect() as conn:
                q = select(func.count()).where(OUTBOX.c.state.in_([QUEUED, SENDING, RETRY]))
                total += int(conn.execute(q.select_from(OUTBOX)).scalar_one())
        return total

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while pending():
            assert loop.time() < deadline, "the cluster did not go quiet"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.2)  # a delivery's last commit on the receiving side

    cluster.run(wait())


class Caller:
    """One long-lived mTLS channel from 310000 to 320000 (a fresh handshake per call is slow)."""

    def __init__(self, cluster: Cluster, fed: Federation) -> None:
        self.cluster = cluster

        async def open_channel() -> grpc.aio.Channel:
            return grpc.aio.secure_channel(
                fed.endpoint(JS), channel_credentials(fed.ca_pem, fed.tls(SH))
            )

        self.channel = cluster.run(open_channel())

    def call(self, method: str, data: bytes) -> tuple[grpc.StatusCode, str]:
        async def go() -> tuple[grpc.StatusCode, str]:
            fn = self.channel.unary_unary(
                method, request_serializer=lambda b: b, response_deserializer=lambda b: b
            )
            try:
                await fn(data, timeout=CALL_TIMEOUT)
            except grpc.aio.AioRpcError as e:
                return e.code(), reason_from_metadata(e.trailing_metadata())
            return C.OK, ""

        return self.cluster.run(go())

    def close(self) -> None:
        self.cluster.run(self.channel.close())


@pytest.fixture(scope="module")
def caller(cluster: Cluster, fed: Federation) -> Iterator[Caller]:
    c = Caller(cluster, fed)
    yield c
    c.close()


def _over_the_wire(
    cluster: Cluster, caller: Caller, method: str, raw: bytes
) -> tuple[grpc.StatusCode, str]:
    """Send ``raw`` to 320000; a refusal has a cccfed reason and changes nothing there."""
    engine = cluster[JS].engine
    before = snapshot(engine)
    code, reason = caller.call(method, raw)
    assert code is not C.UNKNOWN, "an unexpected exception on the server"
    event(f"{code.name} {reason}")
    if code is C.OK:  # a mutation that is still a valid message; let what it caused settle
        quiesce(cluster)
        return code, reason
    assert REASON.fullmatch(reason), (code, reason)
    after = snapshot(engine)
    assert before.changed_tables(after) == [] and before.head == after.head
    return code, reason


@pytest.fixture(scope="module")
def wire_envelopes(fed: Federation) -> tuple[bytes, bytes]:
    """Two valid envelopes from 310000 to 320000, sealed once (the examples must not differ
    in anything but what Hypothesis draws)."""
    return tuple(  # type: ignore[return-value]
        seal(
            fed.signer(SH),
            sender_node=SH,
            recipient_node=JS,
            payload=federation_pb2.Ping(note=note),
            now=utcnow(),
        )
        for note in ("fuzz", "donor")
    )


@STORED
@given(data=st.data())
def test_fuzzed_envelopes_over_mtls_are_refused_cleanly_and_change_nothing(
    data: st.DataObject, cluster: Cluster, caller: Caller, wire_envelopes: tuple[bytes, bytes]
) -> None:
    base, donor = wire_envelopes
    raw = data.draw(hostile(base, (donor,)), label="envelope")
    method = data.draw(st.sampled_from([ASSISTANCE, RECOGNITION, EXCHANGE, _PING]))
    _over_the_wire(cluster, caller, method, raw)


_PING = "/cccfed.v1.FederationService/Ping"

#: Every kind a Deliver method carries, with a valid payload to mutate (from a real node).
KINDS = {
    ASSISTANCE: (
        "cccfed.v1.Request",
        "cccfed.v1.RequestAccepted",
        "cccfed.v1.RequestDeclined",
        "cccfed.v1.RequestWithdrawn",
        "cccfed.v1.ProgressReport",
        "cccfed.v1.ExtensionRequested",
        "cccfed.v1.ExtensionDecided",
        "cccfed.v1.Reply",
        "cccfed.v1.RequestClosed",
        "cccfed.v1.Bulletin",
        "cccfed.v1.BulletinRead",
    ),
    EXCHANGE: (
        "cccfed.v1.ExchangeRequest",
        "cccfed.v1.ExchangeProposed",
        "cccfed.v1.ExchangeDeclined",
        "cccfed.v1.ExchangeConfirmed",
        "cccfed.v1.ExchangeCancelled",
    ),
    RECOGNITION: (
        "cccfed.v1.CheckpointNote",
        "cccfed.v1.CheckpointCosignature",
        "cccfed.v1.EquivocationEvidence",
    ),
}


@pytest.fixture(scope="module")
def payload_bases(cluster: Cluster) -> dict[str, bytes]:
    """Real payloads to mutate: a Request as 310000's node builds it, and the CheckpointNote
    310000's node queued when it published the example inspection result."""
    import tomllib

    from sqlalchemy import select

    from node.store.ops import OUTBOX
    from tests.assistance_harness import example_data

    sh = cluster[SH]
    request = sh.assistance.parse_new(example_data())
    result = sh.recognition.parse_new(tomllib.loads(EXAMPLE_RESULT.read_text(encoding="utf-8")))
    cluster.run(sh.run_and_send(lambda conn: sh.recognition.publish(conn, result)))
    with sh.engine.connect() as conn:
        env = conn.execute(
            select(OUTBOX.c.envelope).where(OUTBOX.c.kind == "cccfed.v1.CheckpointNote")
        ).first()
    assert env is not None
    quiesce(cluster)  # the note, then the cosignature it causes, delivered before any snapshot
    return {
        "cccfed.v1.Request": request.to_message().SerializeToString(deterministic=True),
        "cccfed.v1.CheckpointNote": envelope_pb2.Envelope.FromString(bytes(env.envelope)).payload,
    }


@STORED
@given(data=st.data())
def test_fuzzed_payloads_of_every_kind_are_refused_cleanly_and_change_nothing(
    data: st.DataObject,
    cluster: Cluster,
    caller: Caller,
    fed: Federation,
    payload_bases: dict[str, bytes],
) -> None:
    """Properly signed envelopes whose payload is hostile: the handlers must refuse cleanly."""
    method = data.draw(st.sampled_from(sorted(KINDS)), label="service")
    kind = data.draw(st.sampled_from(KINDS[method]), label="kind")
    base = data.draw(st.sampled_from(sorted(payload_bases)), label="base")
    payload = data.draw(hostile(payload_bases[base], max_random=300), label="payload")
    env = seal(
        fed.signer(SH),
        sender_node=SH,
        recipient_node=JS,
        recipient_bureau="320500",
        sender_bureau="310115",
        payload=payload,
        kind=kind,
        now=utcnow(),
        correlation_id=str(uuid.uuid4()),
    )
    _over_the_wire(cluster, caller, method, env)


# --- log bundles ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle_bytes(cluster: Cluster, fed: Federation, scratch: Path) -> bytes:
    """310000's real log after a Ping to 320000, exported as a bundle."""
    sh = cluster[SH]
    cluster.run(sh.ping(JS))
    out = scratch / "log.zip"
    export_bundle(sh.engine, fed.ca_pem, sh.signer, SH, out, since=None, until=None)
    verify_bundle(out)
    return out.read_bytes()


@STORED
@given(data=st.data())
def test_fuzzed_log_bundles_are_refused_with_a_reason(
    data: st.DataObject, bundle_bytes: bytes, scratch: Path
) -> None:
    raw = data.draw(hostile(bundle_bytes), label="bundle")
    path = scratch / "fuzzed.zip"
    path.write_bytes(raw)
    try:
        verify_bundle(path)
    except VerificationError as e:
        assert_clear(e)


# --- DeliverBatch and Reconcile answers -------------------------------------------------------

BATCH = "/cccfed.v1.FederationService/DeliverBatch"


def _call_raw(caller: Caller, method: str, data: bytes) -> tuple[grpc.StatusCode, str, bytes]:
    async def go() -> tuple[grpc.StatusCode, str, bytes]:
        fn = caller.channel.unary_unary(
            method, request_serializer=lambda b: b, response_deserializer=lambda b: b
        )
        try:
            resp: bytes = await fn(data, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as e:
            return e.code(), reason_from_metadata(e.trailing_metadata()), b""
        return C.OK, "", resp

    return caller.cluster.run(go())


@STORED
@given(data=st.data())
def test_fuzzed_batches_get_a_reason_per_item_or_for_the_call_and_change_nothing(
    data: st.DataObject, cluster: Cluster, caller: Caller, wire_envelopes: tuple[bytes, bytes]
) -> None:
    """Mutated DeliverBatch requests (over mTLS): the call is refused with a reason, or each item
    gets a receipt or a refusal with a reason; nothing changes unless an item was accepted."""
    base_env, donor = wire_envelopes
    base = federation_pb2.DeliverBatchRequest(
        items=[
            federation_pb2.BatchItem(service="cccfed.v1.FederationService", envelope=base_env),
            federation_pb2.BatchItem(service="cccfed.v1.RecognitionService", envelope=donor),
        ]
    ).SerializeToString()
    raw = data.draw(hostile(base, (donor,)), label="batch")
    engine = cluster[JS].engine
    before = snapshot(engine)
    code, reason, resp = _call_raw(caller, BATCH, raw)
    assert code is not C.UNKNOWN, "an unexpected exception on the server"
    if code is not C.OK:
        assert REASON.fullmatch(reason), (code, reason)
        after = snapshot(engine)
        assert before.changed_tables(after) == [] and before.head == after.head
        event(f"call {code.name} {reason}")
        return
    request = federation_pb2.DeliverBatchRequest.FromString(raw)
    outcomes = federation_pb2.DeliverBatchResponse.FromString(resp).outcomes
    assert len(outcomes) == len(request.items)
    for o in outcomes:
        if o.WhichOneof("outcome") == "error":
            assert REASON.fullmatch(o.error.reason), o.error
            event(f"item {o.error.reason}")
        else:
            assert o.WhichOneof("outcome") == "receipt"
            event("item receipt")
    quiesce(cluster)


@pytest.fixture(scope="module")
def reconcile_answer(cluster: Cluster) -> bytes:
    """A real Reconcile answer from 320000 carrying its whole log (two published results)."""
    from cccfed.v1 import recognition_pb2
    from tests.unit.test_recognition_store import result_data

    js = cluster[JS]
    for n in (1, 2):
        result = js.recognition.parse_new(result_data(JS, n))

        def publish(c: Any, r: Any = result) -> dict[str, Any]:
            return js.recognition.publish(c, r)

        cluster.run(js.run_and_send(publish))
    quiesce(cluster)

    def answer() -> bytes:
        with js.reader.connect() as conn:
            return js.recognition.answer(
                conn, recognition_pb2.ReconcileRequest().SerializeToString()
            )

    return answer()


@STORED
@given(data=st.data())
def test_fuzzed_reconcile_answers_are_refused_with_a_reason_and_change_nothing(
    data: st.DataObject, cluster: Cluster, reconcile_answer: bytes
) -> None:
    """A hostile peer's Reconcile answer, mutated: applying it either succeeds or raises a
    FederationError with a reason, and a refusal leaves the caller's store as it was."""
    from node.recognition import frontiers

    sh = cluster[SH]
    raw = data.draw(hostile(reconcile_answer), label="answer")
    with sh.reader.connect() as conn:
        mine = frontiers(conn)
    before = snapshot(sh.engine)
    try:
        cluster.run(sh.writer.run(lambda c: sh.recognition.apply_answer(c, JS, raw, mine)))
    except FederationError as e:
        assert_clear(e)
        after = snapshot(sh.engine)
        assert before.changed_tables(after) == [] and before.head == after.head
        return
    event("applied")
    quiesce(cluster)
