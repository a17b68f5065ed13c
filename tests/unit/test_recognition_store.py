"""Recognition in the store: publishing, witnessing, quorum, refusals, one-round catch-up.

Four in-process :class:`node.runtime.Node` objects (every member, so the default quorum is real)
on SQLite files; notes and cosignatures travel through the simulated transport of
``tests/assistance_harness.py`` (the real intake, inbox and receipt handling). Reconciliation is
driven through :meth:`Recognition.answer` / :meth:`Recognition.apply_answer`, the two halves the
``Reconcile`` RPC joins.
"""

from __future__ import annotations

import asyncio
import copy
import shutil
import tomllib
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, select

from cccfed.v1 import recognition_pb2 as pb
from federation.checkpoint import make_checkpoint
from federation.errors import FederationError
from federation.merkle import MemoryTree, leaf_hash
from node import pki
from node.local import free_ports
from node.recognition import CHECKPOINTS, ENTRIES, EQUIVOCATIONS, frontiers
from node.runtime import Node
from tests.assistance_harness import AH, ROOT, SH, ZJ, deliver_all, node_at, read, receive, write

JS = "320000"
CODES = (SH, JS, ZJ, AH)
BUREAU = {SH: "310115", JS: "320500", ZJ: "330100", AH: "340100"}
EXAMPLE = ROOT / "docs" / "examples" / "inspection-result.toml"
Four = dict[str, Node]


def result_data(code: str, n: int = 0, **overrides: Any) -> dict[str, Any]:
    """The example record, moved to province ``code`` (its own inspectors, another place of use)."""
    data = copy.deepcopy(tomllib.loads(EXAMPLE.read_text(encoding="utf-8")))
    bureau = BUREAU[code]
    data["record_id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"cccfed-test/{code}/{n}"))
    data["inspecting_bureau"] = bureau
    data["inspectors"] = [dict(i, bureau=bureau) for i in data["inspectors"][:2]]
    if code == JS:
        data["other_findings"]["used_elsewhere"][0]["bureau"] = "310115"
    data["inspected_on"] = data["inspected_on"] + timedelta(days=n)
    data["confirmation"]["signed_on"] = data["inspected_on"]
    data.update(overrides)
    return data


def publish(node: Node, n: int = 0, **overrides: Any) -> str:
    result = node.recognition.parse_new(result_data(node.code, n, **overrides))
    write(node, lambda c: node.recognition.publish(c, result))
    return result.record_id


def results(node: Node, **kw: Any) -> list[dict[str, Any]]:
    return read(node, lambda c: node.recognition.results(c, **kw))


def count(node: Node, table: Any) -> int:
    return int(
        read(node, lambda c: c.execute(select(func.count()).select_from(table)).scalar_one())
    )


def reconcile(node: Node, peer: Node) -> list[dict[str, Any]]:
    """One round: ``node`` sends its frontiers, ``peer`` answers, ``node`` applies."""
    mine = read(node, frontiers)
    req = read(node, node.recognition.request).SerializeToString()
    answer = read(peer, lambda c: peer.recognition.answer(c, req))
    return write(node, lambda c: node.recognition.apply_answer(c, peer.code, answer, mine))


@pytest.fixture(scope="module")
def fed_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("recognition-store") / "fed"
    pki.init_federation(root, list(CODES), ports=dict(zip(CODES, free_ports(4), strict=True)))
    return root


@pytest.fixture
def nodes(fed_root: Path, tmp_path: Path) -> Iterator[Four]:
    templates = fed_root.parent / "templates"
    templates.mkdir(exist_ok=True)
    made: Four = {}
    for code in CODES:
        template = templates / f"{code}.db"
        if not template.exists():
            node_at(fed_root, code, template).close()
        store = tmp_path / f"{code}.db"
        shutil.copyfile(template, store)
        made[code] = node_at(fed_root, code, store)
    yield made
    for node in made.values():
        node.close()


def test_published_results_are_recognized_by_every_other_member(nodes: Four) -> None:
    ids = {code: publish(nodes[code]) for code in CODES}
    assert deliver_all(*nodes.values()) == []
    for node in nodes.values():
        rows = {r["record_id"]: r for r in results(node)}
        assert set(rows) == set(ids.values())
        for code, rid in ids.items():
            assert rows[rid]["status"] == "recognized"
            assert rows[rid]["recognized_by"] == sorted(c for c in CODES if c != code)
    shown = read(nodes[ZJ], lambda c: nodes[ZJ].recognition.show(c, ids[SH]))
    assert shown["inclusion_proof"]["tree_size"] == 1
    assert shown["recognized_by"] == [JS, ZJ, AH]


def test_pending_until_the_quorum_cosigns(nodes: Four) -> None:
    sh, js = nodes[SH], nodes[JS]
    rid = publish(sh)
    assert deliver_all(sh, js) == []
    row = results(sh)[0]
    assert row["record_id"] == rid
    assert (row["status"], row["recognized_by"]) == ("pending", [JS])
    assert results(sh, status="recognized") == []


def test_publish_refusals_change_nothing(nodes: Four) -> None:
    sh = nodes[SH]
    with pytest.raises(FederationError) as e:
        sh.recognition.parse_new(result_data(ZJ))
    assert e.value.reason == "NOT_OWN_RESULT"
    publish(sh)
    with pytest.raises(FederationError) as e:
        publish(sh)
    assert e.value.reason == "DUPLICATE_RECORD"
    with pytest.raises(FederationError) as e:
        publish(sh, 1, supersedes=str(uuid.uuid4()))
    assert e.value.reason == "UNKNOWN_RECORD"
    assert count(sh, ENTRIES) == 1 and count(sh, CHECKPOINTS) == 1


def test_correction_supersedes_and_conflict_is_flagged(nodes: Four) -> None:
    sh = nodes[SH]
    first = publish(sh)
    publish(sh, 5, supersedes=first, inspected_on=result_data(SH)["inspected_on"])
    assert {r["status"] for r in results(sh)} == {"pending"}
    data = result_data(SH, 9)
    data["inspected_on"] = result_data(SH)["inspected_on"]
    data["confirmation"]["signed_on"] = data["inspected_on"]
    write(sh, lambda c: sh.recognition.publish(c, sh.recognition.parse_new(data)))
    assert len(results(sh, status="conflict")) == 3


def _note_of(origin: Node) -> pb.CheckpointNote:
    rows = read(
        origin,
        lambda c: c.exec_driver_sql(
            "SELECT envelope FROM outbox WHERE kind = 'cccfed.v1.CheckpointNote' ORDER BY id"
        ).all(),
    )
    from cccfed.v1 import envelope_pb2

    env = envelope_pb2.Envelope.FromString(bytes(rows[0].envelope))
    return pb.CheckpointNote.FromString(env.payload)


def test_relayed_entry_with_an_altered_byte_is_refused(nodes: Four) -> None:
    sh, js, zj = nodes[SH], nodes[JS], nodes[ZJ]
    publish(sh)
    note = _note_of(sh)
    entry = bytearray(note.entries[0])
    entry[-3] ^= 0x01
    del note.entries[:]
    note.entries.append(bytes(entry))
    with pytest.raises(FederationError) as e:
        receive(zj, JS, js.seal(ZJ, note), "recognition")
    assert e.value.reason in ("ENTRY_MISMATCH", "ENTRY_MALFORMED")
    assert count(zj, ENTRIES) == 0 and count(zj, CHECKPOINTS) == 0


def test_checkpoint_signed_by_a_revoked_key_is_refused(
    nodes: Four, fed_root: Path, tmp_path: Path
) -> None:
    sh, js, zj = nodes[SH], nodes[JS], nodes[ZJ]
    publish(sh)
    note = _note_of(sh)
    copy_root = tmp_path / "fed"
    shutil.copytree(fed_root, copy_root)
    serial = x509.load_pem_x509_certificate(sh.cfg.sign_cert.read_bytes()).serial_number
    pki.revoke(copy_root, f"{serial:x}", reason="key compromise")
    raw = (copy_root / "manifest.bin").read_bytes()
    assert zj.trust.adopt(raw, zj.clock()) is not None
    with pytest.raises(FederationError) as e:
        receive(zj, JS, js.seal(ZJ, note), "recognition")
    assert e.value.reason == "REVOKED_KEY"
    assert count(zj, ENTRIES) == 0


def test_offline_node_converges_in_one_round(nodes: Four) -> None:
    sh, js, zj, ah = (nodes[c] for c in CODES)
    ids = [publish(sh, n) for n in range(3)] + [publish(zj)]
    assert deliver_all(sh, js, zj) == []  # Anhui is offline: its notes stay queued
    lines = reconcile(ah, js)
    assert {(x["origin"], x["status"]) for x in lines} == {(SH, "behind"), (ZJ, "behind")}
    assert read(ah, frontiers) == read(js, frontiers)
    assert {r["record_id"] for r in results(ah)} == set(ids)
    again = reconcile(ah, js)
    assert {x["status"] for x in again} == {"converged"}


def test_equivocation_found_by_reconciling_is_kept_frozen_and_broadcast(nodes: Four) -> None:
    sh, js, zj, ah = (nodes[c] for c in CODES)
    data_a = result_data(SH, 0)
    data_b = result_data(SH, 1)
    note_for = {}
    for target, data in ((js, data_a), (zj, data_b)):
        entry = sh.recognition.parse_new(data).to_canonical_bytes()
        tree = MemoryTree()
        tree.append(leaf_hash(entry))
        signed = make_checkpoint(sh.signer, SH, 1, tree.root(), now=sh.clock())
        note_for[target.code] = pb.CheckpointNote(
            signed_checkpoint=signed, old_size=0, entries=[entry], consistency_proof=[]
        )
        receive(target, SH, sh.seal(target.code, note_for[target.code]), "recognition")
    lines = reconcile(js, zj)
    assert [x["status"] for x in lines if x["origin"] == SH] == ["forked"]
    assert count(js, EQUIVOCATIONS) == 1
    assert {r["status"] for r in results(js)} == {"frozen"}
    assert deliver_all(js, ah) == []
    assert count(ah, EQUIVOCATIONS) == 1
    with pytest.raises(FederationError) as e:
        receive(ah, SH, sh.seal(AH, note_for[JS]), "recognition")
    assert e.value.reason == "ORIGIN_FROZEN"


@pytest.mark.parametrize(
    ("request_bytes", "reason"),
    [
        (b"\xff\xff", "MALFORMED"),
        (
            pb.ReconcileRequest(
                frontiers=[pb.LogFrontier(origin=SH, size=1, root=b"short")]
            ).SerializeToString(),
            "FRONTIER_MALFORMED",
        ),
        (
            pb.ReconcileRequest(
                frontiers=[pb.LogFrontier(origin=SH, size=0, root=b"\0" * 32)] * 2
            ).SerializeToString(),
            "FRONTIER_MALFORMED",
        ),
    ],
)
def test_bad_reconcile_requests_are_refused(nodes: Four, request_bytes: bytes, reason: str) -> None:
    js = nodes[JS]
    with pytest.raises(FederationError) as e:
        read(js, lambda c: js.recognition.answer(c, request_bytes))
    assert e.value.reason == reason


def test_cosignature_relayed_by_another_member_is_refused(nodes: Four) -> None:
    sh, js, zj, ah = (nodes[c] for c in CODES)
    publish(sh)
    assert deliver_all(sh, js) == []
    rows = read(
        js,
        lambda c: c.exec_driver_sql(
            "SELECT envelope FROM outbox WHERE kind = 'cccfed.v1.CheckpointCosignature'"
        ).all(),
    )
    from cccfed.v1 import envelope_pb2

    msg = pb.CheckpointCosignature.FromString(
        envelope_pb2.Envelope.FromString(bytes(rows[0].envelope)).payload
    )
    with pytest.raises(FederationError) as e:
        receive(ah, ZJ, zj.seal(AH, msg), "recognition")
    assert e.value.reason == "COSIGNER_MISMATCH"


def _serve_capped(caller: Node, peer: Node, max_bytes: int, answers: list[bytes]) -> None:
    """Route ``caller``'s ``Reconcile`` calls to ``peer``'s answer with a small size limit."""

    async def call(code: str, raw: bytes) -> bytes:
        assert code == peer.code
        answer = read(peer, lambda c: peer.recognition.answer(c, raw, max_bytes=max_bytes))
        answers.append(answer)
        return answer

    caller.peers.reconcile = call  # type: ignore[method-assign,assignment]


def _entry_bytes(node: Node) -> int:
    return len(node.recognition.parse_new(result_data(node.code, 9)).to_canonical_bytes())


def test_capped_answer_stops_at_a_stored_checkpoint_and_the_caller_asks_again(
    nodes: Four,
) -> None:
    sh, ah = nodes[SH], nodes[AH]
    ids = [publish(sh, n) for n in range(5)]
    max_bytes = 2500 + int(2.5 * _entry_bytes(sh))
    answers: list[bytes] = []
    _serve_capped(ah, sh, max_bytes, answers)
    lines = asyncio.run(ah.recognition.reconcile(SH))
    assert [(x["origin"], x["status"], x["count"]) for x in lines] == [(SH, "behind", 5)]
    assert len(answers) == 3 and all(len(a) <= max_bytes for a in answers)
    assert list(pb.ReconcileResponse.FromString(answers[-1]).more) == []
    assert read(ah, frontiers) == read(sh, frontiers)
    assert [r["record_id"] for r in results(ah)] == ids
    answers.clear()
    again = asyncio.run(ah.recognition.reconcile(SH))
    assert [x["status"] for x in again] == ["converged"] and len(answers) == 1


def test_answer_that_fits_is_one_round_trip(nodes: Four) -> None:
    sh, ah = nodes[SH], nodes[AH]
    for n in range(5):
        publish(sh, n)
    answers: list[bytes] = []
    _serve_capped(ah, sh, ah.cfg.limits.max_message_bytes, answers)
    lines = asyncio.run(ah.recognition.reconcile(SH))
    assert [(x["origin"], x["status"]) for x in lines] == [(SH, "behind")]
    assert len(answers) == 1


def test_answer_too_small_for_any_entry_defers_the_origin(nodes: Four) -> None:
    sh, ah = nodes[SH], nodes[AH]
    publish(sh)
    req = read(ah, ah.recognition.request).SerializeToString()
    raw = read(sh, lambda c: sh.recognition.answer(c, req, max_bytes=4000))
    resp = pb.ReconcileResponse.FromString(raw)
    assert list(resp.more) == [SH] and [n.entries for n in resp.updates] == []
    answers: list[bytes] = []
    _serve_capped(ah, sh, 4000, answers)
    lines = asyncio.run(ah.recognition.reconcile(SH))
    assert lines == [{"origin": SH, "status": "refused", "reason": "ANSWER_TOO_LARGE"}]
    assert len(answers) == 1 and count(ah, ENTRIES) == 0


def test_witness_without_an_intermediate_checkpoint_defers(nodes: Four) -> None:
    """A witness that pulled many entries at once holds only the final checkpoint: it cannot
    cut the catch-up (no signed root to verify a part against) and says so in ``more``."""
    sh, js, ah = nodes[SH], nodes[JS], nodes[AH]
    for n in range(3):
        publish(sh, n)
    reconcile(js, sh)  # one checkpoint of size 3 at Jiangsu
    max_bytes = 2500 + int(1.5 * _entry_bytes(sh))
    req = read(ah, ah.recognition.request).SerializeToString()
    resp = pb.ReconcileResponse.FromString(
        read(js, lambda c: js.recognition.answer(c, req, max_bytes=max_bytes))
    )
    assert list(resp.more) == [SH] and not any(n.entries for n in resp.updates)
    resp = pb.ReconcileResponse.FromString(
        read(sh, lambda c: sh.recognition.answer(c, req, max_bytes=max_bytes))
    )
    assert list(resp.more) == [SH] and [len(n.entries) for n in resp.updates] == [1]


def test_answer_overtaken_by_the_notes_it_carries_is_converged(nodes: Four) -> None:
    sh, js, ah = nodes[SH], nodes[JS], nodes[AH]
    publish(sh)
    assert deliver_all(sh, js) == []
    mine = read(ah, frontiers)
    req = read(ah, ah.recognition.request).SerializeToString()
    answer = read(js, lambda c: js.recognition.answer(c, req))
    assert deliver_all(sh, ah) == []  # the note arrives while the answer is on its way
    lines = write(ah, lambda c: ah.recognition.apply_answer(c, JS, answer, mine))
    assert [(x["origin"], x["status"]) for x in lines if x["origin"] == SH] == [(SH, "converged")]
    assert count(ah, ENTRIES) == 1


def test_entries_with_an_unchanged_checkpoint_from_our_size_are_refused(nodes: Four) -> None:
    sh, js, ah = nodes[SH], nodes[JS], nodes[AH]
    publish(sh)
    assert deliver_all(sh, js, ah) == []
    note = _note_of(sh)
    note.old_size = 1  # claims to start where Anhui is, with an entry that is not in the tree
    with pytest.raises(FederationError) as e:
        write(ah, lambda c: ah.recognition.accept_note(c, note, source=JS, now=ah.clock()))
    assert e.value.reason == "ENTRY_MISMATCH"
    assert count(ah, ENTRIES) == 1


def _restore_from(nodes: Four, code: str, backup: Path, fed_root: Path) -> Node:
    """Close ``code``'s node, put ``backup`` in place of its store and open it again."""
    old = nodes[code]
    store = Path(str(old.engine.url.database))
    old.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{store}{suffix}").unlink(missing_ok=True)
    shutil.copyfile(backup, store)
    nodes[code] = node_at(fed_root, code, store)
    return nodes[code]


def _backup(node: Node, out: Path) -> Path:
    import sqlite3

    src = sqlite3.connect(str(node.engine.url.database))
    dst = sqlite3.connect(str(out))
    with dst:
        src.backup(dst)
    src.close()
    dst.close()
    return out


def test_restored_node_recovers_its_own_later_results_from_a_peer(
    nodes: Four, fed_root: Path, tmp_path: Path
) -> None:
    """Results published after the backup come back, verified, from a peer that witnessed them;
    the next publication continues the log instead of forking it."""
    sh = nodes[SH]
    first = publish(sh, 0)
    assert deliver_all(*nodes.values()) == []
    backup = _backup(sh, tmp_path / "sh-backup.db")
    later = [publish(sh, 1), publish(sh, 2)]
    assert deliver_all(*nodes.values()) == []
    sh = _restore_from(nodes, SH, backup, fed_root)
    assert read(sh, frontiers)[SH][0] == 1  # the store is back at the backup

    lines = reconcile(sh, nodes[JS])

    assert {(x["origin"], x["status"], x.get("pulled")) for x in lines if x["origin"] == SH} == {
        (SH, "behind", 2)
    }
    assert read(sh, frontiers)[SH] == read(nodes[JS], frontiers)[SH]
    assert {r["record_id"] for r in results(sh, origin=SH)} == {first, *later}
    nxt = publish(sh, 3)  # continues at size 3: no fork
    assert deliver_all(*nodes.values()) == []
    for node in nodes.values():
        assert count(node, EQUIVOCATIONS) == 0
        assert read(node, frontiers)[SH][0] == 4
        mine = {r["record_id"]: r["status"] for r in results(node, origin=SH)}
        assert mine[nxt] == "recognized"


def test_restored_node_that_publishes_before_reconciling_forks_and_is_caught(
    nodes: Four, fed_root: Path, tmp_path: Path
) -> None:
    """The trap the runbook warns about: a result published at a size the peers already hold
    with another root is a fork of our own log, refused as NOT_OURS here and equivocation
    there."""
    sh = nodes[SH]
    publish(sh, 0)
    assert deliver_all(*nodes.values()) == []
    backup = _backup(sh, tmp_path / "sh-backup.db")
    publish(sh, 1)
    assert deliver_all(*nodes.values()) == []
    sh = _restore_from(nodes, SH, backup, fed_root)
    publish(sh, 7)  # size 2 again, another root
    lines = reconcile(sh, nodes[JS])
    assert [(x["status"], x.get("reason")) for x in lines if x["origin"] == SH] == [
        ("refused", "NOT_OURS")
    ]
    deliver_all(*nodes.values())
    assert count(nodes[JS], EQUIVOCATIONS) == 1


def test_restored_node_refuses_altered_own_entries(
    nodes: Four, fed_root: Path, tmp_path: Path
) -> None:
    """Our own entries coming back are verified against our signed checkpoint like any pulled
    entries: one altered byte and nothing is stored."""
    sh = nodes[SH]
    publish(sh, 0)
    assert deliver_all(*nodes.values()) == []
    backup = _backup(sh, tmp_path / "sh-backup.db")
    publish(sh, 1)
    assert deliver_all(*nodes.values()) == []
    sh = _restore_from(nodes, SH, backup, fed_root)
    js = nodes[JS]
    mine = read(sh, frontiers)
    req = read(sh, sh.recognition.request).SerializeToString()
    answer = pb.ReconcileResponse.FromString(read(js, lambda c: js.recognition.answer(c, req)))
    (own,) = [
        u
        for u in answer.updates
        if u.entries and SH in bytes(u.signed_checkpoint).decode("utf-8", "replace")
    ]
    data = bytearray(own.entries[0])
    data[len(data) // 2] ^= 1
    own.entries[0] = bytes(data)
    before = count(sh, ENTRIES)
    with pytest.raises(FederationError) as e:
        write(sh, lambda c: sh.recognition.apply_answer(c, JS, answer.SerializeToString(), mine))
    assert e.value.reason in {"ENTRY_MISMATCH", "ENTRY_MALFORMED"}
    assert count(sh, ENTRIES) == before
    assert read(sh, frontiers)[SH] == mine[SH]
