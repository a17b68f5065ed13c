"""``cccfed store backup|restore``: a consistent copy of a node's SQLite store; putting one back.

``store backup OUT`` copies the store with SQLite's online backup API
(:meth:`sqlite3.Connection.backup`) from one read snapshot: the copy is consistent even while
the node runs and writes (in WAL mode the reader does not block the node's writer). It is
written beside ``OUT`` under a temporary name, checked (``PRAGMA integrity_check``, a cccfed store
at a migration this software knows), made a single self-contained file (rollback journal, no
``-wal`` beside it), flushed to disk and only then given its name. An existing ``OUT`` is never
overwritten. A PostgreSQL store is backed up with the database's own tools (``pg_dump`` or
continuous archiving / point-in-time recovery): the command says so and does nothing.

``store restore BACKUP`` (SQLite only) puts a backup in place of the node's store:

1. it refuses while the node serves (its listen address accepts connections);
2. it copies the backup beside the store and checks the copy: a SQLite database, intact, a
   cccfed store (its tables, an Alembic revision this software knows — an older one is migrated
   when the node starts) whose message log verifies as *this* node's log (the hash chain, every
   signature, the log head), as ``cccfed log verify`` does;
3. it refuses when any process holds the store open (an exclusive lock on it cannot be taken: a
   serving node always holds it open, and so does a ``cccfed`` command while it runs); an
   existing ``STORE.bak`` is never overwritten;
4. the store it replaces is kept as ``STORE.bak`` (with its ``-wal``/``-shm`` if any, as
   ``STORE.bak-wal``/``STORE.bak-shm``), and the checked copy is renamed into place.

Every refusal is one line (``cccfed: error: … [REASON]``) and changes nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from federation.errors import FederationError, ValidationError
from node import output
from node.config import NodeConfig, load_config

Add = Callable[..., argparse.ArgumentParser]

SQLITE_MAGIC = b"SQLite format 3\x00"
#: Tables every cccfed store has had since its first migration.
CORE_TABLES = frozenset({"inbox", "outbox", "message_log", "log_head", "manifests"})
PG_HINT = {
    "store backup": "back it up with the database's own tools: pg_dump, or continuous WAL "
    "archiving with base backups for point-in-time recovery (docs/OPERATIONS.md)",
    "store restore": "restore it with the database's own tools: pg_restore of a pg_dump, or "
    "point-in-time recovery from the WAL archive (docs/OPERATIONS.md)",
}


class StoreCommandError(ValidationError):
    reason = "STORE_COMMAND"


@dataclass(frozen=True)
class StoreInfo:
    """What a checked store file holds."""

    path: Path
    size: int
    revision: str
    log_seq: int
    requests: int


# --- helpers -----------------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> NodeConfig:
    from node.cli import _config_path

    return load_config(_config_path(args))


def _sqlite_path(cfg: NodeConfig, what: str) -> Path:
    """The store's file; a PostgreSQL store is refused with a pointer to its own tools."""
    url = cfg.store_url
    if url.startswith("postgresql"):
        raise StoreCommandError(
            f"{what}: the store of node {cfg.code} is PostgreSQL; {PG_HINT[what]}",
            reason="POSTGRESQL_STORE",
        )
    rest = url.removeprefix("sqlite:///")
    if rest == url or not rest or rest.startswith(":memory:"):
        raise StoreCommandError(f"{what}: store_url {url!r} is not a SQLite file")
    return Path(rest.split("?", 1)[0])


def _uri(path: Path, mode: str) -> str:
    return f"{path.resolve().as_uri()}?mode={mode}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sidecars(path: Path) -> list[Path]:
    return [Path(f"{path}{s}") for s in ("-wal", "-shm", "-journal")]


def _remove(path: Path) -> None:
    for p in (path, *_sidecars(path)):
        p.unlink(missing_ok=True)


@contextlib.contextmanager
def _connect(uri: str, *, timeout: float = 30.0) -> Iterator[sqlite3.Connection]:
    con = sqlite3.connect(uri, uri=True, timeout=timeout, isolation_level=None)
    try:
        yield con
    finally:
        con.close()


def _known_revisions() -> set[str]:
    from alembic.script import ScriptDirectory

    from node.store.db import alembic_config

    script = ScriptDirectory.from_config(alembic_config())
    return {r.revision for r in script.walk_revisions()}


def _check(path: Path, what: str) -> StoreInfo:
    """A cccfed store, intact, at a known migration; raises StoreCommandError otherwise."""
    with path.open("rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise StoreCommandError(f"{what}: not a SQLite database", reason="NOT_A_STORE")
    try:
        with _connect(_uri(path, "ro")) as con:
            problems = [r[0] for r in con.execute("PRAGMA integrity_check").fetchall()]
            if problems != ["ok"]:
                raise StoreCommandError(f"{what}: damaged ({problems[0]})", reason="STORE_DAMAGED")
            tables = {
                r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
            if "alembic_version" not in tables or not tables >= CORE_TABLES:
                raise StoreCommandError(
                    f"{what}: not a cccfed store (no migration record or message log)",
                    reason="NOT_A_STORE",
                )
            revs = [r[0] for r in con.execute("SELECT version_num FROM alembic_version")]
            known = _known_revisions()
            if len(revs) != 1 or revs[0] not in known:
                raise StoreCommandError(
                    f"{what}: a cccfed store at migration {', '.join(revs) or 'none'}, which this "
                    f"software does not know (it knows {min(known)}–{max(known)})",
                    reason="UNKNOWN_MIGRATION",
                )
            head = con.execute("SELECT seq FROM log_head WHERE id = 1").fetchone()
            n = (
                con.execute("SELECT count(*) FROM requests").fetchone()
                if "requests" in tables
                else None
            )
    except sqlite3.DatabaseError as e:
        raise StoreCommandError(
            f"{what}: cannot be read as a store: {e}", reason="NOT_A_STORE"
        ) from e
    return StoreInfo(
        path, path.stat().st_size, revs[0], int(head[0]) if head else 0, int(n[0]) if n else 0
    )


def _listen_probe(listen: str) -> tuple[str, int] | None:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):  # noqa: S104 - a wildcard listener answers on loopback
        host = "127.0.0.1"
    try:
        return host, int(port)
    except ValueError:
        return None


def _refuse_if_serving(cfg: NodeConfig) -> None:
    """Refuse when the node's listen address accepts connections (no side effect)."""
    probe = _listen_probe(cfg.listen)
    if probe is None:
        return
    try:
        with socket.create_connection(probe, timeout=0.5):
            pass
    except OSError:
        return
    raise StoreCommandError(
        f"node {cfg.code} is running (its address {cfg.listen} accepts connections); "
        "stop it before restoring",
        reason="NODE_RUNNING",
    )


def _refuse_if_open(path: Path) -> None:
    """Refuse when any process holds the store open (a serving node always does).

    Taking the exclusive lock succeeds only when no other connection has the WAL-mode store
    open; releasing it checkpoints the WAL into the file, so the store is then one file.
    """
    if not path.exists():
        return
    try:
        with _connect(_uri(path, "rw"), timeout=0.2) as con:
            con.execute("PRAGMA locking_mode=EXCLUSIVE")
            con.execute("BEGIN EXCLUSIVE")
            con.execute("ROLLBACK")
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            raise StoreCommandError(
                f"the store {path} is in use by another process (a running node or a cccfed "
                "command); stop it before restoring",
                reason="STORE_IN_USE",
            ) from e
        raise StoreCommandError(f"the store {path} cannot be opened: {e}") from e


def _copy(src: Path, dst: Path) -> None:
    """A consistent copy of the database ``src`` into the new file ``dst`` (online backup API),
    as one self-contained file (rollback journal), flushed to disk."""
    with _connect(_uri(src, "ro")) as s, _connect(_uri(dst, "rwc")) as d:
        s.backup(d)
        d.execute("PRAGMA journal_mode=DELETE")
    _fsync(dst)


# --- commands ----------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace) -> int:
    cfg = _config(args)
    path = _sqlite_path(cfg, "store backup")
    out = Path(args.out)
    if out.exists() or out.is_symlink():
        raise StoreCommandError(
            f"{out} already exists; a backup never overwrites a file: choose a new name",
            reason="EXISTS",
        )
    if not out.parent.is_dir():
        raise StoreCommandError(f"{out.parent}: no such directory", reason="NOT_FOUND")
    if not path.is_file():
        raise StoreCommandError(
            f"node {cfg.code} has no store at {path} (nothing to back up)", reason="NOT_FOUND"
        )
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        try:
            _copy(path, tmp)
        except sqlite3.Error as e:
            raise StoreCommandError(f"store backup: {path}: {e}", reason="BACKUP_FAILED") from e
        info = _check(tmp, f"store backup of {path}")
        try:
            os.link(tmp, out)  # never replaces a file that appeared meanwhile
        except FileExistsError:
            raise StoreCommandError(f"{out} already exists", reason="EXISTS") from None
        _fsync(out.parent)
    finally:
        _remove(tmp)
    data = {
        "node": cfg.code,
        "store": str(path),
        "backup": str(out),
        "bytes": info.size,
        "migration": info.revision,
        "log_seq": info.log_seq,
        "requests": info.requests,
    }
    _say(
        args,
        data,
        f"node {cfg.code}: store backed up to {out} ({info.size:,} bytes, migration "
        f"{info.revision}, message log up to seq {info.log_seq}, {info.requests} requests)",
    )
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    from node.logbundle import verify_store
    from node.store.db import make_engine, reader
    from node.trust import load_ca

    cfg = _config(args)
    path = _sqlite_path(cfg, "store restore")
    backup = Path(args.backup)
    if not backup.is_file():
        raise StoreCommandError(f"{backup}: no such file", reason="NOT_FOUND")
    with backup.open("rb") as f:
        if f.read(16) != SQLITE_MAGIC:
            raise StoreCommandError(f"{backup}: not a SQLite database", reason="NOT_A_STORE")
    _refuse_if_serving(cfg)
    bak = Path(f"{path}.bak")
    if any(p.exists() for p in (bak, *_sidecars(bak))):
        raise StoreCommandError(
            f"{bak} already exists (an earlier restore kept it); move it away first",
            reason="EXISTS",
        )
    if not path.parent.is_dir():
        raise StoreCommandError(f"{path.parent}: no such directory", reason="NOT_FOUND")
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.restoring")
    try:
        try:
            _copy(backup, tmp)
        except sqlite3.Error as e:
            raise StoreCommandError(f"{backup}: cannot be read: {e}", reason="NOT_A_STORE") from e
        info = _check(tmp, str(backup))
        engine = reader(make_engine(f"sqlite:///{tmp}"))
        try:
            log = verify_store(engine, load_ca(cfg.ca_cert), cfg.code)
        except FederationError as e:
            raise StoreCommandError(
                f"{backup}: its message log does not verify as node {cfg.code}'s: "
                f"{e.diagnostics()}",
                reason="LOG_INVALID",
            ) from e
        finally:
            engine.dispose()
        _refuse_if_serving(cfg)  # again, right before the swap
        _refuse_if_open(path)
        if path.exists():
            for old, new in zip((path, *_sidecars(path)), (bak, *_sidecars(bak)), strict=True):
                if old.exists():
                    os.replace(old, new)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        _remove(tmp)
    data = {
        "node": cfg.code,
        "store": str(path),
        "restored_from": str(backup),
        "kept": str(bak) if bak.exists() else None,
        "migration": info.revision,
        "log_seq": info.log_seq,
        "log_records": log.records,
        "requests": info.requests,
    }
    kept = f"; the replaced store is kept as {bak}" if bak.exists() else ""
    _say(
        args,
        data,
        f"node {cfg.code}: store restored from {backup} (migration {info.revision}, message log "
        f"verified up to seq {log.last_seq}){kept}. Start the node, then run `cccfed log "
        "verify` and `cccfed reconcile` (docs/OPERATIONS.md)",
    )
    return 0


def _say(args: argparse.Namespace, data: dict[str, Any], text: str) -> None:
    if getattr(args, "json", False):
        output.emit_json(data)
    else:
        print(text)


# --- parser ------------------------------------------------------------------------------------


def register(sub: Any, add: Add) -> None:
    st = sub.add_parser("store", help="back up and restore the node's store").add_subparsers(
        dest="sub", required=True
    )
    sp = add(
        st,
        "backup",
        cmd_backup,
        "consistent online copy of the SQLite store (safe while the node runs)",
        config=True,
    )
    sp.add_argument("out", help="the backup file to write (must not exist)")
    sp = add(
        st,
        "restore",
        cmd_restore,
        "replace the SQLite store with a checked backup (the node must be stopped)",
        config=True,
    )
    sp.add_argument("backup", help="a file written by `cccfed store backup`")


__all__ = ["register"]
