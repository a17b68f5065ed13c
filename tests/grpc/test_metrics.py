"""The Prometheus endpoint of real nodes: real messages over mutual TLS, scraped over HTTP.

Nodes are started with ``[node] metrics_listen = "127.0.0.1:0"``; every test scrapes
``/metrics`` with urllib and parses the exposition with ``prometheus_client.parser``, then
compares the numbers with what the store and the node hold. Counters and outbox counts are
compared as differences, so the tests of the module do not depend on each other's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import functools
import io
import json
import logging
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from cccfed.v1 import federation_pb2
from cccfed.v1 import recognition_pb2 as rpb
from federation import inspection
from federation.checkpoint import make_checkpoint
from federation.envelope import header_of, seal
from federation.errors import ConfigError
from federation.merkle import MemoryTree, leaf_hash
from node import pki
from node.local import free_ports
from node.logs import JsonFormatter
from node.metrics import seconds_since_queued
from node.runtime import Node
from node.store.ops import OUTBOX, QUEUED, RETRY, SENDING
from tests.assistance_harness import ROOT, example_data
from tests.grpc.conftest import JS, SH, ZJ, Cluster, Federation, LoopRunner, ping_envelope

C = grpc.StatusCode
RECOGNITION = "/cccfed.v1.RecognitionService/Deliver"
PING_KIND = "cccfed.v1.Ping"
METRICS_DOC = ROOT / "docs" / "METRICS.md"
#: No housekeeping rounds during the tests: they decide when health and manifests are looked at.
QUIET = 3600.0

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


class OffsetClock:
    """The real UTC time plus an offset the test may move (``Node(cfg, clock=...)``)."""

    def __init__(self) -> None:
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclasses.dataclass
class Scrape:
    families: dict[str, Any]
    samples: Samples
    text: str

    def value(self, name: str, **labels: str) -> float:
        """The sample ``name`` with exactly these labels (0.0 if absent)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def labelled(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {lab: v for (n, lab), v in self.samples.items() if n == name}


def scrape(node: Node) -> Scrape:
    assert node.metrics_port, "the node does not serve metrics"
    url = f"http://127.0.0.1:{node.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode("utf-8")
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples: Samples = {}
    for fam in families.values():
        for s in fam.samples:
            samples[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return Scrape(families, samples, text)


def start_node(
    cluster: Cluster,
    code: str,
    *,
    clock: Callable[[], datetime] | None = None,
    **overrides: Any,
) -> Node:
    """Start ``code`` like ``Cluster.start``, serving metrics on a free port."""

    async def start() -> Node:
        settings: dict[str, Any] = {
            "metrics_listen": "127.0.0.1:0",
            "manifest_refresh_seconds": QUIET,
            **overrides,
        }
        cfg = dataclasses.replace(cluster.fed.config(code), **settings)
        node = Node(cfg) if clock is None else Node(cfg, clock=clock)
        cluster.nodes[code] = node  # registered first: a half-started node is still stopped
        await node.start()
        return node

    return cluster.run(start())


@contextlib.contextmanager
def json_log(logger: str) -> Iterator[list[dict[str, Any]]]:
    """The records of ``logger`` inside the block, as the JSON formatter writes them."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setFormatter(JsonFormatter("test"))
    target = logging.getLogger(logger)
    target.addHandler(handler)
    out: list[dict[str, Any]] = []
    try:
        yield out
    finally:
        target.removeHandler(handler)
        out.extend(json.loads(line) for line in buf.getvalue().splitlines())


def eventually(cluster: Cluster, check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Let the nodes run until ``check()`` holds."""

    async def poll() -> None:
        deadline = time.monotonic() + timeout
        while not check():
            assert time.monotonic() < deadline, "condition not reached in time"
            await asyncio.sleep(0.05)

    cluster.run(poll(), timeout + 5)


def outbox_states(node: Node, peer: str) -> dict[str, int]:
    with node.reader.connect() as conn:
        rows = conn.execute(select(OUTBOX.c.state).where(OUTBOX.c.recipient_node == peer)).scalars()
        out: dict[str, int] = {}
        for state in rows:
            out[state] = out.get(state, 0) + 1
        return out


# --- the federation: 310000 and 320000 serving, 330000 down --------------------------------------


@pytest.fixture(scope="module")
def fed(new_federation: Callable[..., Federation]) -> Federation:
    return new_federation((SH, JS, ZJ))


@pytest.fixture(scope="module")
def sh_clock() -> OffsetClock:
    return OffsetClock()


@pytest.fixture(scope="module")
def cluster(fed: Federation, runner: LoopRunner, sh_clock: OffsetClock) -> Iterator[Cluster]:
    with Cluster(fed, runner) as c:
        start_node(c, SH, clock=sh_clock)
        start_node(c, JS)
        yield c


@pytest.fixture
def clock_reset(sh_clock: OffsetClock) -> Iterator[OffsetClock]:
    yield sh_clock
    sh_clock.offset = timedelta(0)


# --- the endpoint -------------------------------------------------------------------------------


def test_every_family_is_served_with_help_and_documented(cluster: Cluster) -> None:
    got = scrape(cluster[SH])
    ours = {name for name in got.families if name.startswith("cccfed_")}
    expected = {
        "cccfed_node_info",
        "cccfed_manifest_serial",
        "cccfed_certificate_expiry_days",
        "cccfed_manifest_expiry_days",
        "cccfed_health_serving",
        "cccfed_health_problem",
        "cccfed_store_commits",
        "cccfed_store_jobs",
        "cccfed_store_up",
        "cccfed_outbox_messages",
        "cccfed_outbox_oldest_undelivered_age_seconds",
        "cccfed_obligations_open",
        "cccfed_obligations_due_soon",
        "cccfed_obligations_overdue",
        "cccfed_log_size",
        "cccfed_log_checkpoint_timestamp_seconds",
        "cccfed_log_recognized_size",
        "cccfed_origin_frozen",
        "cccfed_reconcile_last_success_timestamp_seconds",
        "cccfed_messages_received",
        "cccfed_receipts_stored",
        "cccfed_delivery_latency_seconds",
        "cccfed_send_failures",
        "cccfed_due_date_mismatches",
        "cccfed_rejections",
    }
    assert ours == expected
    for name in ours:
        assert len(got.families[name].documentation) > 20, name
    # Only this node's registry: nothing of the process-global default registry.
    assert not any(name.startswith(("python_", "process_")) for name in got.families)
    assert got.value("cccfed_node_info", node=SH, replica=cluster[SH].replica) == 1
    assert scrape(cluster[JS]).value("cccfed_node_info", node=JS, replica=cluster[JS].replica) == 1
    # docs/METRICS.md documents every family, and nothing that does not exist.
    documented = set(re.findall(r"`(cccfed_[a-z_]+)`", METRICS_DOC.read_text(encoding="utf-8")))
    exposed = {re.sub(r"_(total|bucket|count|sum|created)$", "", n) for n in documented}
    assert expected <= exposed, expected - exposed
    assert exposed <= expected | {"cccfed_delivery_latency_seconds"}, exposed - expected


def test_health_store_and_manifest_series(cluster: Cluster) -> None:
    node = cluster[SH]
    got = scrape(node)
    assert got.value("cccfed_health_serving") == 1
    assert got.labelled("cccfed_health_problem") == {
        frozenset({("check", c)}): 0.0
        for c in ("store", "manifest", "tls_certificate", "signing_certificate")
    }
    assert got.value("cccfed_store_up") == 1
    assert got.value("cccfed_manifest_serial") == node.trust.current.serial
    assert got.value("cccfed_store_commits_total") == node.writer.commits > 0
    assert got.value("cccfed_store_jobs_total") == node.writer.jobs >= node.writer.commits


def test_certificate_and_manifest_expiry_in_days(cluster: Cluster, fed: Federation) -> None:
    got = scrape(cluster[SH])
    now = datetime.now(UTC)

    def days(pem_path: Path) -> float:
        cert = x509.load_pem_x509_certificate(pem_path.read_bytes())
        return (cert.not_valid_after_utc - now).total_seconds() / 86400

    d = fed.node_dir(SH)
    expected = {
        "tls": days(d / "tls.crt"),
        "signing": days(d / "sign.crt"),
        "ca": days(fed.ca_path),
    }
    for name, value in expected.items():
        assert got.value("cccfed_certificate_expiry_days", certificate=name) == pytest.approx(
            value, abs=0.01
        ), name
    assert expected["tls"] == pytest.approx(pki.LEAF_DAYS, abs=0.1)
    manifest_days = (fed.trusted().expires_at - now).total_seconds() / 86400
    assert got.value("cccfed_manifest_expiry_days") == pytest.approx(manifest_days, abs=0.01)
    assert 29 < manifest_days <= 30


# --- outbox, receipts, received ------------------------------------------------------------------


def test_delivered_messages_are_counted_on_both_sides(cluster: Cluster) -> None:
    sh, js = cluster[SH], cluster[JS]
    before_sh, before_js = scrape(sh), scrape(js)
    delivered0 = outbox_states(sh, JS).get("delivered", 0)

    async def send() -> None:
        for i in range(3):
            await sh.enqueue(JS, "federation", federation_pb2.Ping(note=f"metrics {i}"))

    cluster.run(send())
    eventually(cluster, lambda: outbox_states(sh, JS).get("delivered", 0) == delivered0 + 3)

    got = scrape(sh)
    state = "cccfed_outbox_messages"
    assert got.value(state, peer=JS, state="delivered") == delivered0 + 3
    assert (
        got.value(state, peer=JS, state="delivered")
        - before_sh.value(state, peer=JS, state="delivered")
        == 3
    )
    for pending in (QUEUED, SENDING, RETRY, "failed"):
        assert got.value(state, peer=JS, state=pending) == outbox_states(sh, JS).get(pending, 0)
    assert got.value("cccfed_outbox_oldest_undelivered_age_seconds", peer=JS) == 0
    # The delivery worker counts each first verified receipt and its latency since queueing.
    stored = "cccfed_receipts_stored_total"
    assert (
        got.value(stored, peer=JS, kind=PING_KIND)
        - before_sh.value(stored, peer=JS, kind=PING_KIND)
        == 3
    )
    h = "cccfed_delivery_latency_seconds"
    assert got.value(f"{h}_count", peer=JS) - before_sh.value(f"{h}_count", peer=JS) == 3
    assert 0 < got.value(f"{h}_sum", peer=JS) - before_sh.value(f"{h}_sum", peer=JS) < 30
    received = "cccfed_messages_received_total"
    after_js = scrape(js)
    assert (
        after_js.value(received, peer=SH, kind=PING_KIND)
        - before_js.value(received, peer=SH, kind=PING_KIND)
        == 3
    )


def test_messages_waiting_for_a_peer_that_is_down(cluster: Cluster) -> None:
    sh = cluster[SH]
    t0 = time.monotonic()
    cluster.run(sh.enqueue(ZJ, "federation", federation_pb2.Ping(note="to a node that is down")))
    # Let the worker try (and fail: nothing listens) and time pass.
    eventually(cluster, lambda: outbox_states(sh, ZJ).get(RETRY, 0) >= 1)
    cluster.run(asyncio.sleep(1.2))
    got = scrape(sh)
    failures = got.labelled("cccfed_send_failures_total")
    assert any(
        dict(k)["peer"] == ZJ and dict(k)["class"] == "transient" and v >= 1
        for k, v in failures.items()
    ), failures
    elapsed = time.monotonic() - t0
    states = outbox_states(sh, ZJ)
    waiting = sum(states.get(s, 0) for s in (QUEUED, SENDING, RETRY))
    assert waiting >= 1
    assert (
        sum(got.value("cccfed_outbox_messages", peer=ZJ, state=s) for s in (QUEUED, SENDING, RETRY))
        == waiting
    )
    assert got.value("cccfed_outbox_messages", peer=ZJ, state="delivered") == 0
    age = got.value("cccfed_outbox_oldest_undelivered_age_seconds", peer=ZJ)
    assert age >= 1.2  # at least as old as this test made it...
    with sh.reader.connect() as conn:
        oldest = conn.execute(
            select(OUTBOX.c.created_at)
            .where(OUTBOX.c.recipient_node == ZJ, OUTBOX.c.state.in_((QUEUED, SENDING, RETRY)))
            .order_by(OUTBOX.c.created_at)
            .limit(1)
        ).scalar_one()
    # ...and exactly as old as the oldest waiting row (earlier tests may have queued to ZJ).
    assert age == pytest.approx((datetime.now(UTC) - oldest).total_seconds(), abs=1.0)
    if oldest >= datetime.now(UTC) - timedelta(seconds=elapsed + 1):
        assert age <= elapsed + 1


def test_permanently_refused_message_is_failed_and_the_refusal_counted(cluster: Cluster) -> None:
    sh, js = cluster[SH], cluster[JS]
    failed0 = outbox_states(sh, JS).get("failed", 0)
    refused0 = dict(js.rejections)
    # A Ping is not a kind the assistance service carries: the receiver refuses it for good.
    cluster.run(sh.enqueue(JS, "assistance", federation_pb2.Ping(note="wrong service")))
    eventually(cluster, lambda: outbox_states(sh, JS).get("failed", 0) == failed0 + 1)
    got_sh, got_js = scrape(sh), scrape(js)
    assert got_sh.value("cccfed_outbox_messages", peer=JS, state="failed") == failed0 + 1
    f = "cccfed_send_failures_total"
    assert got_sh.value(f, peer=JS, reason="UNSUPPORTED_KIND", **{"class": "permanent"}) >= 1
    new = {r: n - refused0.get(r, 0) for r, n in js.rejections.items() if n != refused0.get(r, 0)}
    assert sum(new.values()) == 1, new
    (reason,) = new
    assert got_js.value("cccfed_rejections_total", reason=reason) == js.rejections[reason]


def test_refused_envelope_counts_its_reason(cluster: Cluster, fed: Federation) -> None:
    js = cluster[JS]
    before = scrape(js).value("cccfed_rejections_total", reason="BAD_SIGNATURE")
    env = bytearray(ping_envelope(fed.signer(SH), SH, JS))
    env[-1] ^= 1  # the last byte belongs to the signature
    cluster.refused(JS, bytes(env), C.INVALID_ARGUMENT, "BAD_SIGNATURE", client=SH)
    got = scrape(js)
    assert got.value("cccfed_rejections_total", reason="BAD_SIGNATURE") == before + 1
    assert (
        got.value("cccfed_rejections_total", reason="BAD_SIGNATURE")
        == js.rejections["BAD_SIGNATURE"]
    )


def test_event_methods_for_the_delivery_worker(cluster: Cluster) -> None:
    """The calls the delivery worker makes (``NodeMetrics.delivered`` / ``send_failed``)."""
    js = cluster[JS]
    kind = "cccfed.v1.TestOnly"
    sealed = ping_envelope(cluster.fed.signer(JS), JS, ZJ, now=datetime.now(UTC))
    later = datetime.now(UTC) + timedelta(seconds=0.3)
    assert seconds_since_queued(sealed, later) == pytest.approx(0.3, abs=0.05)
    js.metrics.delivered(ZJ, kind, seconds_since_queued(sealed, later))
    js.metrics.delivered(ZJ, kind, 7200.0)
    js.metrics.delivered(ZJ, kind, -1.0)  # clocks may step: never a negative latency
    js.metrics.send_failed(ZJ, "UNAVAILABLE", transient=True)
    js.metrics.send_failed(ZJ, "UNAVAILABLE", transient=True)
    js.metrics.send_failed(ZJ, "WRONG_RECIPIENT", transient=False)
    got = scrape(js)
    assert got.value("cccfed_receipts_stored_total", peer=ZJ, kind=kind) == 3
    h = "cccfed_delivery_latency_seconds"
    assert got.value(f"{h}_count", peer=ZJ) == 3
    assert got.value(f"{h}_sum", peer=ZJ) == pytest.approx(7200.3)
    assert got.value(f"{h}_bucket", peer=ZJ, le="0.005") == 1
    assert got.value(f"{h}_bucket", peer=ZJ, le="0.5") == 2
    assert got.value(f"{h}_bucket", peer=ZJ, le="3600.0") == 2
    assert got.value(f"{h}_bucket", peer=ZJ, le="14400.0") == 3
    f = "cccfed_send_failures_total"
    assert got.value(f, peer=ZJ, reason="UNAVAILABLE", **{"class": "transient"}) == 2
    assert got.value(f, peer=ZJ, reason="WRONG_RECIPIENT", **{"class": "permanent"}) == 1


# --- obligations ---------------------------------------------------------------------------------


def obligation_counts(node: Node) -> dict[tuple[str, str], tuple[int, int]]:
    """(direction, counterpart) -> (open, overdue), as ``cccfed obligations`` computes them."""
    with node.reader.connect() as conn:
        obs = node.assistance.obligations(conn, node.clock())
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for ob in obs:
        total, overdue = out.get((ob["direction"], ob["counterpart"]), (0, 0))
        out[(ob["direction"], ob["counterpart"])] = (total + 1, overdue + int(ob["overdue"]))
    return out


def assert_obligations_match(node: Node) -> Scrape:
    got = scrape(node)
    expected = obligation_counts(node)
    for (direction, peer), (total, overdue) in expected.items():
        assert got.value("cccfed_obligations_open", direction=direction, counterpart=peer) == total
        assert (
            got.value("cccfed_obligations_overdue", direction=direction, counterpart=peer)
            == overdue
        )
    for labels, value in got.labelled("cccfed_obligations_open").items():
        key = (dict(labels)["direction"], dict(labels)["counterpart"])
        assert value == expected.get(key, (0, 0))[0], key
    return got


def test_obligations_open_due_soon_and_overdue(cluster: Cluster, clock_reset: OffsetClock) -> None:
    sh, js = cluster[SH], cluster[JS]
    request = sh.assistance.parse_new(example_data())
    rid = cluster.run(sh.run_and_send(lambda conn: sh.assistance.create(conn, request)))

    def due_on(node: Node) -> Any:
        with node.reader.connect() as conn:
            return next(
                (
                    o
                    for o in node.assistance.obligations(conn, node.clock())
                    if o["request_id"] == rid
                ),
                None,
            )

    eventually(cluster, lambda: due_on(sh) is not None and due_on(js) is not None)
    ours = due_on(sh)
    assert (ours["direction"], ours["counterpart"]) == ("awaiting", JS)
    got = assert_obligations_match(sh)
    assert got.value("cccfed_obligations_open", direction="awaiting", counterpart=JS) >= 1
    theirs = assert_obligations_match(js)
    assert theirs.value("cccfed_obligations_open", direction="owed", counterpart=SH) >= 1

    # One day before the end of the period: due soon, not overdue.
    open0 = got.value("cccfed_obligations_open", direction="awaiting", counterpart=JS)
    clock_reset.offset = ours["due_ends_at"] - timedelta(hours=12) - datetime.now(UTC)
    soon = assert_obligations_match(sh)
    assert soon.value("cccfed_obligations_due_soon", direction="awaiting", counterpart=JS) >= 1
    assert soon.value("cccfed_obligations_overdue", direction="awaiting", counterpart=JS) == 0
    # An hour after it: overdue, still open.
    clock_reset.offset = ours["due_ends_at"] + timedelta(hours=1) - datetime.now(UTC)
    late = assert_obligations_match(sh)
    assert late.value("cccfed_obligations_overdue", direction="awaiting", counterpart=JS) >= 1
    assert late.value("cccfed_obligations_open", direction="awaiting", counterpart=JS) == open0
    assert late.value("cccfed_obligations_due_soon", direction="awaiting", counterpart=JS) == 0


# --- logs per origin: equivocation of a member that is down ---------------------------------------

BUREAU = {SH: "310115", JS: "320500", ZJ: "330100"}
EXAMPLE_RESULT = ROOT / "docs" / "examples" / "inspection-result.toml"


def result_data(code: str, n: int = 0) -> dict[str, Any]:
    """The example inspection record, moved to province ``code``."""
    data = copy.deepcopy(tomllib.loads(EXAMPLE_RESULT.read_text(encoding="utf-8")))
    bureau = BUREAU[code]
    data["record_id"] = str(uuid.uuid4())
    data["inspecting_bureau"] = bureau
    data["inspectors"] = [dict(i, bureau=bureau) for i in data["inspectors"][:2]]
    if code == JS:
        data["other_findings"]["used_elsewhere"][0]["bureau"] = "310115"
    data["inspected_on"] = data["inspected_on"] + timedelta(days=n)
    data["confirmation"]["signed_on"] = data["inspected_on"]
    return data


def test_equivocating_origin_is_frozen(cluster: Cluster, fed: Federation) -> None:
    """330000 (down) signs two different logs of size 1; 320000 gets both and freezes it."""
    js = cluster[JS]
    before = scrape(js)
    assert before.value("cccfed_origin_frozen", origin=ZJ) == 0
    signer = fed.signer(ZJ)
    for n in (0, 1):
        record = inspection.parse_result(result_data(ZJ, n), today=datetime.now(UTC).date())
        data = record.to_canonical_bytes()
        tree = MemoryTree()
        tree.append(leaf_hash(data))
        signed = make_checkpoint(signer, ZJ, 1, tree.root(), now=datetime.now(UTC))
        note = rpb.CheckpointNote(signed_checkpoint=signed, old_size=0, entries=[data])
        env = seal(signer, sender_node=ZJ, recipient_node=JS, payload=note, now=datetime.now(UTC))
        with json_log("node.recognition") as lines:
            out = cluster.call(JS, env, client=ZJ, method=RECOGNITION)
        assert out.code is C.OK, out.details
        if n == 0:
            got = scrape(js)
            assert got.value("cccfed_log_size", origin=ZJ) == 1
            stored = got.value("cccfed_log_checkpoint_timestamp_seconds", origin=ZJ)
            assert stored == pytest.approx(time.time(), abs=30)
            assert got.value("cccfed_origin_frozen", origin=ZJ) == 0
    # The ERROR line names the message that revealed it (JSON logs: its message_id).
    (alarm,) = [r for r in lines if r["msg"].startswith("EQUIVOCATION: 330000")]
    assert alarm["level"] == "ERROR"
    assert alarm["message_id"] == header_of(env).message_id
    got = scrape(js)
    assert got.value("cccfed_origin_frozen", origin=ZJ) == 1
    assert got.value("cccfed_origin_frozen", origin=SH) == 0
    assert got.value("cccfed_log_size", origin=ZJ) == 1  # the first one accepted stays
    received = "cccfed_messages_received_total"
    kind = "cccfed.v1.CheckpointNote"
    assert got.value(received, peer=ZJ, kind=kind) - before.value(received, peer=ZJ, kind=kind) == 2
    # 320000 tells 310000, which keeps the evidence and freezes 330000 too.
    eventually(cluster, lambda: scrape(cluster[SH]).value("cccfed_origin_frozen", origin=ZJ) == 1)


# --- logs per origin: publishing, recognition, reconciliation -------------------------------------


def test_log_size_recognition_and_reconciliation(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH, JS))
    with Cluster(fed, runner) as c:
        sh, js = start_node(c, SH), start_node(c, JS)
        got = scrape(sh)
        for origin in (SH, JS):
            assert got.value("cccfed_log_size", origin=origin) == 0
            assert got.value("cccfed_log_recognized_size", origin=origin) == 0
        assert got.value("cccfed_reconcile_last_success_timestamp_seconds", peer=JS) == 0

        for n in (0, 1):
            result = sh.recognition.parse_new(result_data(SH, n))
            c.run(sh.run_and_send(functools.partial(sh.recognition.publish, result=result)))
        # 320000 witnesses both checkpoints and sends its cosignatures back.
        eventually(c, lambda: scrape(sh).value("cccfed_log_recognized_size", origin=SH) == 2)
        got, theirs = scrape(sh), scrape(js)
        assert got.value("cccfed_log_size", origin=SH) == 2
        assert theirs.value("cccfed_log_size", origin=SH) == 2
        assert theirs.value("cccfed_log_recognized_size", origin=SH) == 2
        with sh.reader.connect() as conn:
            statuses = {r["status"] for r in sh.recognition.results(conn, origin=SH)}
        assert statuses == {"recognized"}

        t0 = time.time()
        lines = c.run(sh.recognition.reconcile(JS))
        assert {x["origin"]: x["status"] for x in lines}[SH] in ("ahead", "converged")
        at = scrape(sh).value("cccfed_reconcile_last_success_timestamp_seconds", peer=JS)
        assert t0 - 1 <= at <= time.time() + 1
        assert scrape(js).value("cccfed_reconcile_last_success_timestamp_seconds", peer=SH) == 0


# --- the endpoint's life: port 0, stop, port in use -----------------------------------------------


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_endpoint_stops_with_the_node_and_a_busy_port_is_a_config_error(
    new_federation: Callable[..., Federation], runner: LoopRunner
) -> None:
    fed = new_federation((SH,))
    with Cluster(fed, runner) as c:
        node = start_node(c, SH)
        port = node.metrics_port
        assert port and _listening(port)
        c.stop(SH)
        assert not _listening(port)

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = busy.getsockname()[1]
            with pytest.raises(ConfigError) as ei:
                start_node(c, SH, metrics_listen=f"127.0.0.1:{taken}")
            c.stop(SH)
        err = ei.value
        assert err.reason == "METRICS_LISTEN"
        text = err.diagnostics()
        assert "\n" not in text
        assert f"[node] metrics_listen: cannot listen on 127.0.0.1:{taken}" in text
        assert str(fed.node_dir(SH) / "node.toml") in text
        # Nothing was left serving: the gRPC port is free again for a normal start.
        assert not _listening(int(fed.endpoint(SH).rpartition(":")[2]))
        node = start_node(c, SH)
        assert scrape(node).value("cccfed_health_serving") == 1


def _config_with(fed: Federation, code: str, name: str, **node_keys: str) -> Path:
    """A copy of ``code``'s node.toml (same folder) with extra ``[node]`` keys."""
    src = fed.node_dir(code) / "node.toml"
    text = src.read_text(encoding="utf-8")
    for key, value in node_keys.items():
        line = f'{key} = "{value}"'
        text, n = re.subn(rf"(?m)^{key} = .*$", line, text, count=1)
        if not n:
            text = text.replace("[node]\n", f"[node]\n{line}\n", 1)
    dst = src.with_name(name)
    dst.write_text(text, encoding="utf-8")
    return dst


def test_node_serve_process_json_logs_and_metrics(
    new_federation: Callable[..., Federation], tmp_path: Path
) -> None:
    """``cccfed node serve`` as a process: JSON log lines, metrics served, a busy port refused."""
    fed = new_federation((SH,))
    (mport,) = free_ports(1)
    cfg = _config_with(
        fed, SH, "metrics.toml", metrics_listen=f"127.0.0.1:{mport}", log_format="json"
    )
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(cfg)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 60
            while "serving on port" not in log_path.read_text(encoding="utf-8"):
                assert proc.poll() is None, log_path.read_text(encoding="utf-8")
                assert time.monotonic() < deadline, "the node did not start"
                time.sleep(0.1)
            with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10) as r:
                text = r.read().decode("utf-8")
            fams = {f.name: f for f in text_string_to_metric_families(text)}
            assert fams["cccfed_health_serving"].samples[0].value == 1

            # Same config, same metrics port: the second process refuses in one line.
            other = _config_with(
                fed, SH, "clash.toml", metrics_listen=f"127.0.0.1:{mport}", listen="127.0.0.1:0"
            )
            clash = subprocess.run(
                [sys.executable, "-m", "node.cli", "node", "serve", "--config", str(other)],
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    assert clash.returncode == 1, clash.stderr
    errors = [line for line in clash.stderr.splitlines() if line.startswith("cccfed: error:")]
    assert errors == [
        f"cccfed: error: {other}: [node] metrics_listen: cannot listen on 127.0.0.1:{mport}: "
        "Address already in use (in use by another process?) [METRICS_LISTEN]"
    ], clash.stderr
    lines = log_path.read_text(encoding="utf-8").splitlines()
    assert lines
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    for rec in records:
        assert rec["node"] == SH
        assert {"ts", "level", "logger", "msg"} <= rec.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", rec["ts"])
    assert any(r["logger"] == "node.runtime" and "serving on port" in r["msg"] for r in records)
    assert any("shutting down" in r["msg"] for r in records)
