"""``cccfed store backup|restore``: an online backup of a serving node, restored after more traffic.

The real-process test: two ``node serve`` processes exchange requests, bulletins and inspection
results; Shanghai's store is backed up with ``cccfed store backup`` while Jiangsu keeps sending
to it; more traffic follows; Shanghai is stopped (a restore is refused while it runs, and while
anything holds its store open), restored and restarted. Then ``cccfed log verify`` passes on both
nodes, one ``cccfed reconcile`` converges the recognition logs (results Jiangsu published after
the backup come back), and everything Shanghai held when the backup started is there again.
What is *not* recovered, as ``docs/OPERATIONS.md`` states, is checked too: an assistance message
Shanghai received after the backup is missing, and Jiangsu, holding its receipt, does not send it
again (its outbox row stays ``delivered``).

The other tests drive each refusal of the two commands on stores made in this process: each
prints one line ``cccfed: error: … [REASON]``, exits 1 and changes nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy.engine import Connection

from node import pki
from node.cli import main
from node.config import load_config
from node.demo import example_result
from node.local import free_ports
from node.recognition import ENTRIES
from node.runtime import Node
from node.store.ops import INBOX, LOG, OUTBOX
from tests.assistance_harness import accept, act, deliver_all, new_request, node_at, read
from tests.federation.conftest import Cli, Federation, MakeFed, wait_until

SH, JS = "310000", "320000"
ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "docs" / "examples" / "assistance-request.toml"


def snapshot(url: str) -> dict[str, Any]:
    """What a store holds, by identity: every message it logged, accepted, queued, every request
    (status, events seen) and every inspection-result log entry."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return {
                "log": {
                    int(r.seq): bytes(r.record_hash)
                    for r in c.execute(select(LOG.c.seq, LOG.c.record_hash))
                },
                "inbox": {str(r[0]) for r in c.execute(select(INBOX.c.message_id))},
                "outbox": {str(r[0]) for r in c.execute(select(OUTBOX.c.message_id))},
                "requests": {
                    str(r[0]): str(r[1])
                    for r in c.execute(text("SELECT request_id, status FROM requests"))
                },
                "events": {
                    str(r[0]) for r in c.execute(text("SELECT message_id FROM request_events"))
                },
                "bulletins": {
                    str(r[0]) for r in c.execute(text("SELECT bulletin_id FROM bulletins"))
                },
                "entries": {
                    (str(r.origin), int(r.idx), str(r.record_id))
                    for r in c.execute(select(ENTRIES.c.origin, ENTRIES.c.idx, ENTRIES.c.record_id))
                },
            }
    finally:
        engine.dispose()


def contains(after: dict[str, Any], before: dict[str, Any]) -> None:
    for key, held in before.items():
        if isinstance(held, dict):
            missing = {k: v for k, v in held.items() if after[key].get(k) != v}
            if key == "requests":  # a request may have moved on since; it must still be there
                missing = {k: v for k, v in held.items() if k not in after[key]}
        else:
            missing = held - after[key]
        assert not missing, f"{key}: lost {missing}"


@pytest.mark.slow
def test_online_backup_then_restore_loses_nothing_held_at_backup_time(
    federation: MakeFed, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fed = federation([SH, JS])
    procs = {c: fed.node(c).start() for c in (SH, JS)}
    c = Cli(capsys, fed)
    sh_url = load_config(fed.config(SH)).store_url

    def publish(code: str, n: int) -> str:
        data = example_result(code, n)
        path = tmp_path / f"result-{code}-{n}.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        assert c.json(code, "result", "publish", str(path))
        return str(data["record_id"])

    def recognized(code: str, ids: list[str]) -> Callable[[], bool]:
        def check() -> bool:
            rows = {r["record_id"]: r for r in c.json(code, "result", "list")}
            return all(i in rows and rows[i]["status"] == "recognized" for i in ids)

        return check

    def status(code: str, rid: str) -> str:
        rc, out, _ = c.run(code, "request", "show", rid, "--json")
        return str(json.loads(out)["status"]) if rc == 0 else "absent"

    def new(code: str, **fields: str) -> str:
        data = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
        data.update(fields)
        path = tmp_path / f"request-{code}-{len(list(tmp_path.glob('request-*')))}.json"
        path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        return str(c.json(code, "request", "new", str(path))["request_id"])

    # --- traffic before the backup ----------------------------------------------------------
    results = [publish(SH, 0), publish(JS, 0)]
    asked = new(SH)  # Shanghai asks Suzhou
    owed = new(JS, requesting_bureau="320500", target_bureau="310115")  # Suzhou asks Pudong
    wait_until(lambda: status(JS, asked) == "delivered", 30, "request delivered to Jiangsu")
    wait_until(lambda: status(SH, owed) == "delivered", 30, "request delivered to Shanghai")
    accepted = c.json(
        JS, "request", "accept", asked, "--contact-name", "李强", "--contact-phone", "0512-65221000"
    )
    assert accepted["status"] == "accepted"
    wait_until(lambda: status(SH, asked) == "accepted", 30, "acceptance reached Shanghai")
    for code in (SH, JS):
        wait_until(recognized(code, results), 60, f"{code}: results recognised")
    before = snapshot(sh_url)
    assert before["requests"] == {asked: "accepted", owed: "delivered"}

    # --- online backup while Jiangsu keeps sending bulletins to Shanghai --------------------
    stop = threading.Event()
    sent: list[str] = []

    def keep_sending() -> None:  # separate processes, as an operator's commands would be
        while not stop.is_set():
            res = run_cli(
                fed, JS, "bulletin", "send", "--title", f"通报 {len(sent)}", "--body", "x"
            )
            sent.append(str(json.loads(res)["bulletin_id"]))

    sender = threading.Thread(target=keep_sending)
    backup = tmp_path / "sh-backup.db"
    sender.start()
    try:
        wait_until(lambda: len(sent) >= 2, 60, "bulletins flowing")
        done = c.json(SH, "store", "backup", str(backup))
        wait_until(lambda: len(sent) >= 4, 60, "bulletins still flowing")
    finally:
        stop.set()
        sender.join(60)
    assert done["backup"] == str(backup) and done["log_seq"] >= len(before["log"])
    in_backup = snapshot(f"sqlite:///{backup}")
    contains(in_backup, before)

    # --- more traffic after the backup -----------------------------------------------------
    later = publish(JS, 1)  # recognition: comes back by reconciliation
    own_later = publish(SH, 1)  # Shanghai's own result: recovered from the peers' copies
    lost = new(JS, requesting_bureau="320500", target_bureau="310104")  # assistance: does not
    wait_until(lambda: status(SH, lost) == "delivered", 30, "late request delivered")
    wait_until(recognized(SH, [later, own_later]), 60, "late results recognised on Shanghai")
    lost_mid = next(
        r.message_id
        for r in fed.outbox_rows(JS)
        if r.kind == "cccfed.v1.Request" and r.conversation == lost
    )

    # --- restore is refused while the node runs ----------------------------------------------
    sh_store = Path(sh_url.removeprefix("sqlite:///"))
    rc, out, err = c.run(SH, "store", "restore", str(backup))
    assert (rc, out) == (1, "")
    assert err.startswith("cccfed: error: node 310000 is running") and "[NODE_RUNNING]" in err
    assert len(err.strip().splitlines()) == 1
    assert procs[SH].terminate() == 0
    for e in fed.engines.values():
        e.dispose()
    assert not Path(f"{sh_store}.bak").exists()
    digest = hashlib.sha256(sh_store.read_bytes()).hexdigest()  # stopped: one file

    # ... and while another process holds the stopped node's store open.
    holder = sqlite3.connect(sh_store)
    holder.execute("SELECT count(*) FROM requests").fetchone()
    try:
        rc, _, err = c.run(SH, "store", "restore", str(backup))
    finally:
        holder.close()
    assert rc == 1 and "[STORE_IN_USE]" in err and len(err.strip().splitlines()) == 1
    assert hashlib.sha256(sh_store.read_bytes()).hexdigest() == digest

    # --- restore and restart ----------------------------------------------------------------
    restored = c.json(SH, "store", "restore", str(backup))
    assert restored["kept"] == f"{sh_store}.bak" and Path(restored["kept"]).exists()
    assert restored["log_seq"] == done["log_seq"]
    procs[SH].start()
    for code in (SH, JS):
        assert c.json(code, "log", "verify")["ok"] is True

    # Reconciliation brings back what Jiangsu published after the backup, and what Shanghai
    # itself published: Jiangsu witnessed it, so it holds Shanghai's signed checkpoint.
    rc, out, err = c.run(SH, "reconcile", "--json")
    assert rc == 0, err
    first = {line["origin"]: line["status"] for line in json.loads(out)[JS]}
    assert first == {SH: "behind", JS: "behind"}, first
    again = {line["origin"]: line["status"] for line in c.json(SH, "reconcile")[JS]}
    assert again == {SH: "converged", JS: "converged"}
    sizes = {
        code: {r["origin"]: r["size"] for r in c.json(code, "result", "checkpoint")}
        for code in (SH, JS)
    }
    assert sizes[SH] == sizes[JS] == {SH: 2, JS: 2}
    wait_until(
        recognized(SH, [*results, later, own_later]), 60, "every result recognised on Shanghai"
    )
    # Publishing again continues Shanghai's log: no fork, no equivocation anywhere.
    nxt = publish(SH, 2)
    wait_until(recognized(JS, [nxt]), 60, "the next result recognised on Jiangsu")
    for code in (SH, JS):
        sizes_now = {r["origin"]: r["size"] for r in c.json(code, "result", "checkpoint")}
        assert sizes_now[SH] == 3

    # Everything Shanghai held when the backup started is there, unchanged.
    after = snapshot(sh_url)
    contains(after, before)
    contains(after, in_backup)
    assert after["requests"][asked] == "accepted" and after["requests"][owed] == "delivered"
    for code in (SH, JS):
        assert c.json(code, "log", "verify")["ok"] is True

    # Not recovered (docs/OPERATIONS.md): the request Shanghai received after the backup.
    # Jiangsu holds Shanghai's receipt for it and does not send it again.
    assert status(SH, lost) == "absent"
    assert lost_mid not in after["inbox"]
    time.sleep(2)
    row = next(r for r in fed.outbox_rows(JS) if r.message_id == lost_mid)
    assert row.state == "delivered" and row.receipt is not None
    assert status(JS, lost) == "delivered"
    for code in (SH, JS):
        assert procs[code].terminate() == 0


def run_cli(fed: Federation, code: str, *argv: str) -> str:
    """``cccfed … --json`` as its own process; returns its output."""
    res = subprocess.run(
        [sys.executable, "-m", "node.cli", *argv, "--config", str(fed.config(code)), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


# --- refusals ----------------------------------------------------------------------------------


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Shanghai and Jiangsu with some traffic in their stores (in-process, no servers)."""
    codes = [SH, JS]
    root = tmp_path / "fed"
    pki.init_federation(root, codes, ports=dict(zip(codes, free_ports(2), strict=True)))
    nodes = {c: node_at(root, c, root / "nodes" / c / "store.db") for c in codes}
    rid = new_request(nodes[SH])
    assert deliver_all(nodes[SH], nodes[JS]) == []
    act(nodes[JS], rid, accept())
    assert deliver_all(nodes[SH], nodes[JS]) == []
    for node in nodes.values():
        node.close()
    yield {"root": root, "rid": rid}


def config(root: Path, code: str) -> Path:
    return root / "nodes" / code / "node.toml"


def store_of(root: Path, code: str) -> Path:
    return root / "nodes" / code / "store.db"


def refused(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str, unchanged: list[Path]
) -> str:
    digests = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in unchanged if p.exists()}
    listing = {p.parent: sorted(x.name for x in p.parent.iterdir()) for p in unchanged}
    capsys.readouterr()
    rc = main(argv)
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("cccfed: error: "), err
    assert lines[0].endswith(f"[{reason}]"), err
    assert "Traceback" not in err
    for path, digest in digests.items():
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, path
    for folder, names in listing.items():
        assert sorted(x.name for x in folder.iterdir()) == names, folder
    return lines[0]


def backup_of(root: Path, code: str, out: Path, capsys: pytest.CaptureFixture[str]) -> Path:
    assert main(["store", "backup", str(out), "--config", str(config(root, code))]) == 0
    capsys.readouterr()
    return out


def with_store_url(root: Path, code: str, url: str) -> str:
    """A copy of ``code``'s configuration beside it, with another ``store_url``."""
    src = config(root, code)
    path = src.with_name(f"store-{abs(hash(url))}.toml")
    path.write_text(
        "".join(
            f"store_url = {json.dumps(url)}\n" if line.startswith("store_url =") else line
            for line in src.read_text(encoding="utf-8").splitlines(keepends=True)
        ),
        encoding="utf-8",
    )
    return str(path)


def pg_config(root: Path) -> str:
    return with_store_url(root, SH, "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def test_backup_refusals(
    stores: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = stores["root"]
    cfg = str(config(root, SH))
    taken = backup_of(root, SH, tmp_path / "taken.db", capsys)
    line = refused(
        capsys,
        ["store", "backup", str(tmp_path / "x.db"), "--config", pg_config(root)],
        "POSTGRESQL_STORE",
        [tmp_path / "x.db"],
    )
    assert "pg_dump" in line and not (tmp_path / "x.db").exists()
    refused(capsys, ["store", "backup", str(taken), "--config", cfg], "EXISTS", [taken])
    refused(
        capsys,
        ["store", "backup", str(tmp_path / "no" / "b.db"), "--config", cfg],
        "NOT_FOUND",
        [taken],
    )
    js_cfg = str(config(root, JS))
    js_store = store_of(root, JS)
    js_store.rename(tmp_path / "moved.db")
    out = tmp_path / "b.db"
    refused(capsys, ["store", "backup", str(out), "--config", js_cfg], "NOT_FOUND", [taken])
    # The configured store is not a database, or not a cccfed store.
    js_store.write_bytes(b"not a database" * 400)
    refused(capsys, ["store", "backup", str(out), "--config", js_cfg], "BACKUP_FAILED", [js_store])
    js_store.unlink()
    with contextlib.closing(sqlite3.connect(js_store)) as con:
        con.execute("CREATE TABLE t (x)")
    refused(capsys, ["store", "backup", str(out), "--config", js_cfg], "NOT_A_STORE", [js_store])
    # A store URL that is no file.
    memory = with_store_url(root, JS, "sqlite://")
    line = refused(capsys, ["store", "backup", str(out), "--config", memory], "STORE_COMMAND", [])
    assert "not a SQLite file" in line
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".b.db")]  # no partial left


def test_restore_refusals(
    stores: dict[str, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = stores["root"]
    cfg = str(config(root, SH))
    store = store_of(root, SH)
    keep = [store]
    good = backup_of(root, SH, tmp_path / "good.db", capsys)

    def restore(path: Path, reason: str, conf: str = cfg) -> str:
        return refused(capsys, ["store", "restore", str(path), "--config", conf], reason, keep)

    assert "pg_restore" in restore(good, "POSTGRESQL_STORE", pg_config(root))
    assert "not a SQLite file" in restore(
        good, "STORE_COMMAND", with_store_url(root, SH, "sqlite://")
    )
    gone = str(tmp_path / "no" / "such" / "store.db")
    restore(good, "NOT_FOUND", with_store_url(root, SH, f"sqlite:///{gone}"))
    restore(tmp_path / "missing.db", "NOT_FOUND")
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database at all" * 100)
    restore(junk, "NOT_A_STORE")
    truncated = tmp_path / "truncated.db"
    truncated.write_bytes(good.read_bytes()[: 3 * 4096 + 100])
    restore(truncated, "NOT_A_STORE")
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as con:
        con.execute("CREATE TABLE t (x)")
    restore(other, "NOT_A_STORE")

    def altered(name: str, sql: str) -> Path:
        path = tmp_path / name
        path.write_bytes(good.read_bytes())
        con = sqlite3.connect(path)
        con.executescript(sql)
        con.commit()
        con.close()
        return path

    damaged = altered(
        "damaged.db",
        "PRAGMA writable_schema=ON; UPDATE sqlite_master SET sql = "
        "'CREATE INDEX ix_message_log_message_id ON message_log (record_hash)' "
        "WHERE name = 'ix_message_log_message_id'",
    )
    assert "missing from index" in restore(damaged, "STORE_DAMAGED")
    future = altered("future.db", "UPDATE alembic_version SET version_num = '9999'")
    assert "9999" in restore(future, "UNKNOWN_MIGRATION")
    tampered = altered(
        "tampered.db", "UPDATE message_log SET record_hash = zeroblob(32) WHERE seq = 2"
    )
    restore(tampered, "LOG_INVALID")
    truncated_log = altered(
        "short.db", "DELETE FROM message_log WHERE seq = (SELECT max(seq) FROM message_log)"
    )
    restore(truncated_log, "LOG_INVALID")
    js_backup = backup_of(root, JS, tmp_path / "jiangsu.db", capsys)
    assert "node 310000's" in restore(js_backup, "LOG_INVALID")

    # The node is running (its address answers) / something holds the store open.
    listen = load_config(config(root, SH)).listen
    host, _, port = listen.rpartition(":")
    with socket.socket() as s:
        s.bind((host, int(port)))
        s.listen()
        restore(good, "NODE_RUNNING")
    holder = sqlite3.connect(store)
    holder.execute("SELECT count(*) FROM outbox").fetchone()
    try:
        restore(good, "STORE_IN_USE")
    finally:
        holder.close()

    # An earlier restore's .bak is never overwritten.
    capsys.readouterr()
    assert main(["store", "restore", str(good), "--config", cfg]) == 0
    bak = Path(f"{store}.bak")
    assert bak.exists()
    keep = [store, bak]
    restore(good, "EXISTS")

    # A restored store is the backup's content; the kept .bak is the replaced store.
    def held(url: str) -> Any:
        return snapshot(url)

    assert held(f"sqlite:///{store}") == held(f"sqlite:///{good}")
    assert held(f"sqlite:///{bak}")["requests"] == {stores["rid"]: "accepted"}
    node = Node(load_config(config(root, SH)))
    try:
        assert read(node, _request_ids) == [stores["rid"]]
    finally:
        node.close()


def _request_ids(conn: Connection) -> list[str]:
    return [str(r[0]) for r in conn.execute(text("SELECT request_id FROM requests"))]
